// A bare Kafka wire client for the listener's tests: frames requests by hand (weft::kafka::Writer),
// reads responses whole, and tells when the listener closed the connection. Every wait is
// bounded.
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <string_view>

#include "weft/fabric/record_batch.h"
#include "weft/kafka/wire.h"

namespace weft::test {

inline std::span<const std::byte> as_bytes(std::string_view s) { return std::as_bytes(std::span(s.data(), s.size())); }

// A request frame: size, header v1 (v2 when flexible: + empty tagged fields), body.
inline std::string kafka_frame(std::int16_t key, std::int16_t version, std::int32_t correlation, bool flexible, const std::string& body,
                               std::string_view client_id = "weft-test") {
  kafka::Writer w;
  w.i32(0);
  w.i16(key);
  w.i16(version);
  w.i32(correlation);
  w.string(client_id, false);
  w.tagged_fields(flexible);
  w.raw(body);
  w.patch_i32(0, static_cast<std::int32_t>(w.size() - 4));
  return w.take();
}

class KafkaClient {
 public:
  explicit KafkaClient(std::uint16_t port) {
    fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::connect(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
      ::close(fd_);
      fd_ = -1;
    }
    const int one = 1;
    if (fd_ >= 0) setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  }
  ~KafkaClient() {
    if (fd_ >= 0) ::close(fd_);
  }
  KafkaClient(const KafkaClient&) = delete;
  KafkaClient& operator=(const KafkaClient&) = delete;
  bool connected() const { return fd_ >= 0; }

  bool send_raw(std::string_view bytes) {
    std::size_t sent = 0;
    while (sent < bytes.size()) {
      const ssize_t n = ::send(fd_, bytes.data() + sent, bytes.size() - sent, MSG_NOSIGNAL);
      if (n <= 0) return false;
      sent += static_cast<std::size_t>(n);
    }
    return true;
  }

  // The next response frame without its size prefix; nothing on timeout or close.
  std::optional<std::string> read_frame(int timeout_ms = 10'000) {
    std::string size_bytes;
    if (!read_exactly(4, size_bytes, timeout_ms)) return std::nullopt;
    const auto size = static_cast<std::uint32_t>(wire::load_be32(reinterpret_cast<const std::byte*>(size_bytes.data())));
    if (size > (64u << 20)) return std::nullopt;
    std::string body;
    if (!read_exactly(size, body, timeout_ms)) return std::nullopt;
    return body;
  }

  // Sends one request and returns its response body (after the correlation id and, for
  // flexible versions other than ApiVersions, the header's tagged fields).
  std::optional<std::string> call(std::int16_t key, std::int16_t version, bool flexible, const std::string& body, int timeout_ms = 10'000) {
    const std::int32_t correlation = ++correlation_;
    if (!send_raw(kafka_frame(key, version, correlation, flexible, body))) return std::nullopt;
    std::optional<std::string> frame = read_frame(timeout_ms);
    if (!frame || frame->size() < 4) return std::nullopt;
    if (wire::load_be32(reinterpret_cast<const std::byte*>(frame->data())) != correlation) return std::nullopt;
    std::size_t skip = 4;
    if (flexible && key != static_cast<std::int16_t>(kafka::ApiKey::kApiVersions)) {
      if (frame->size() < 5 || (*frame)[4] != 0) return std::nullopt;  // an empty tagged-field set
      skip = 5;
    }
    return frame->substr(skip);
  }

  // True when the listener closed the connection (EOF or reset) within the time.
  bool closed_by_peer(int timeout_ms = 5'000) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
    char buf[4096];
    while (std::chrono::steady_clock::now() < deadline) {
      pollfd p{fd_, POLLIN, 0};
      if (::poll(&p, 1, 50) <= 0) continue;
      const ssize_t n = ::recv(fd_, buf, sizeof buf, 0);
      if (n <= 0) return true;
    }
    return false;
  }

 private:
  bool read_exactly(std::size_t n, std::string& out, int timeout_ms) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
    out.resize(n);
    std::size_t got = 0;
    while (got < n) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now()).count();
      pollfd p{fd_, POLLIN, 0};
      if (::poll(&p, 1, static_cast<int>(std::max<std::int64_t>(left, 0))) <= 0) {  // a timeout of 0 still looks once
        if (left <= 0) return false;
        continue;
      }
      const ssize_t r = ::recv(fd_, out.data() + got, n - got, 0);
      if (r <= 0) return false;
      got += static_cast<std::size_t>(r);
    }
    return true;
  }
  int fd_ = -1;
  std::int32_t correlation_ = 0;
};

}  // namespace weft::test
