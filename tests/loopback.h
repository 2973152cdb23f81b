// One request to a server on 127.0.0.1 from a test, with every read bounded (5 s).
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <string>

namespace weft::test {

struct ExchangeOptions {
  bool one_kafka_frame = false;  // read one size-prefixed Kafka frame, not until the peer closes
  bool close_write = false;      // half-close after sending (a client that stops mid-request)
};

// Sends `request` to 127.0.0.1:port and returns what came back (a Kafka frame with its size).
inline std::string loopback_exchange(std::uint16_t port, const std::string& request, ExchangeOptions o = {}) {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  timeval timeout{5, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  std::string response;
  if (connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0 &&
      (request.empty() || send(fd, request.data(), request.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(request.size()))) {
    if (o.close_write) shutdown(fd, SHUT_WR);
    char buffer[4096];
    std::size_t want = o.one_kafka_frame ? 4 : SIZE_MAX;
    while (response.size() < want) {
      const ssize_t got = recv(fd, buffer, sizeof buffer, 0);
      if (got <= 0) break;
      response.append(buffer, static_cast<std::size_t>(got));
      if (o.one_kafka_frame && want == 4 && response.size() >= 4) {
        const auto* b = reinterpret_cast<const unsigned char*>(response.data());
        want = 4 + (std::size_t{b[0]} << 24 | std::size_t{b[1]} << 16 | std::size_t{b[2]} << 8 | std::size_t{b[3]});
      }
    }
  }
  close(fd);
  return response;
}

}  // namespace weft::test
