// A scripted HTTP server on 127.0.0.1 for the etcd adapter's tests: accepts connections one after
// another on a thread and hands each to a handler, which reads requests and writes whatever bytes
// the test wants (answers etcd would never give included).
#pragma once

#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <arpa/inet.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <thread>

#include "../../storage/src/http_client.h"

namespace weft::test {

class ScriptedServer {
 public:
  explicit ScriptedServer(std::function<void(int fd, int connection)> handler) : handler_(std::move(handler)) {
    listener_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t size = sizeof(address);
    EXPECT_EQ(::bind(listener_, reinterpret_cast<sockaddr*>(&address), sizeof(address)), 0);
    EXPECT_EQ(::listen(listener_, 8), 0);
    EXPECT_EQ(::getsockname(listener_, reinterpret_cast<sockaddr*>(&address), &size), 0);
    port_ = ntohs(address.sin_port);
    thread_ = std::thread([this] {
      for (int connection = 0;; ++connection) {
        const int fd = ::accept4(listener_, nullptr, nullptr, SOCK_CLOEXEC);
        if (fd < 0) return;  // shut down
        connections_.fetch_add(1, std::memory_order_relaxed);
        handler_(fd, connection);
        ::close(fd);
      }
    });
  }
  ~ScriptedServer() {
    ::shutdown(listener_, SHUT_RDWR);  // wakes accept()
    thread_.join();
    ::close(listener_);
  }

  storage::HttpEndpoint endpoint() const { return storage::HttpEndpoint{"127.0.0.1", port_, "127.0.0.1:" + std::to_string(port_)}; }
  int connections() const { return connections_.load(std::memory_order_relaxed); }

  // Reads one request (head and Content-Length body); its body, or nullopt when the peer closed.
  static std::optional<std::string> read_request(int fd) {
    std::string bytes;
    char chunk[4096];
    for (;;) {
      const std::size_t head_end = bytes.find("\r\n\r\n");
      if (head_end != std::string::npos) {
        const std::size_t at = bytes.find("Content-Length: ");
        const std::size_t length = at == std::string::npos ? 0 : std::stoul(bytes.substr(at + 16));
        if (bytes.size() >= head_end + 4 + length) return bytes.substr(head_end + 4, length);
      }
      const ssize_t n = ::recv(fd, chunk, sizeof(chunk), 0);
      if (n <= 0) return std::nullopt;
      bytes.append(chunk, static_cast<std::size_t>(n));
    }
  }
  // Writes what it can: false once the client has gone (a test that streams until it does).
  static bool write_while_read(int fd, std::string_view bytes) {
    while (!bytes.empty()) {
      const ssize_t n = ::send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL);
      if (n <= 0) return false;
      bytes.remove_prefix(static_cast<std::size_t>(n));
    }
    return true;
  }
  static void write(int fd, std::string_view bytes) {
    EXPECT_EQ(::send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL), static_cast<ssize_t>(bytes.size()));
  }

 private:
  std::function<void(int, int)> handler_;
  int listener_ = -1;
  std::uint16_t port_ = 0;
  std::atomic<int> connections_{0};
  std::thread thread_;
};

}  // namespace weft::test
