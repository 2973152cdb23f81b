// A real etcd for tests: started from /usr/bin/etcd on free 127.0.0.1 ports with its data in a
// folder the test gives, ready once GET /health says so, and stopped by its PID (SIGTERM,
// SIGKILL after 5 s, reaped) when the test is done with it, however it ends. A member of a
// larger cluster is started with `wait_healthy = false` and checked with wait_healthy() once
// every member runs.
#pragma once

#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <arpa/inet.h>

#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <iterator>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

namespace weft::test {

inline constexpr const char* kEtcdBinary = "/usr/bin/etcd";

inline bool etcd_installed() { return ::access(kEtcdBinary, X_OK) == 0; }

// `count` TCP ports on 127.0.0.1, distinct, each free a moment ago (bound to port 0 together,
// then released). Empty on failure.
inline std::vector<std::uint16_t> free_ports(std::size_t count) {
  std::vector<int> sockets;
  std::vector<std::uint16_t> ports;
  for (std::size_t i = 0; i < count; ++i) {
    const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) break;
    sockets.push_back(fd);
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t size = sizeof(address);
    if (::bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) != 0 ||
        ::getsockname(fd, reinterpret_cast<sockaddr*>(&address), &size) != 0)
      break;
    ports.push_back(ntohs(address.sin_port));
  }
  for (const int fd : sockets) ::close(fd);
  if (ports.size() != count) ports.clear();
  return ports;
}

// One HTTP/1.0 request to `host` (an IPv4 address, 127.0.0.1 by default):`port`; the answer's
// body, or "" when the request failed or took longer than `timeout_ms`. HTTP/1.0 keeps the
// server from chunking: the body runs to the end of the connection. For test set-up only
// (health checks, etcd calls the port lacks, metrics pages).
inline std::string http_request(std::uint16_t port, std::string_view method, std::string_view path,
                                std::string_view body = {}, int timeout_ms = 2000, const std::string& host = "127.0.0.1") {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return {};
  const timeval timeout{timeout_ms / 1000, (timeout_ms % 1000) * 1000};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
  ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof(timeout));
  sockaddr_in address{};
  address.sin_family = AF_INET;
  if (::inet_pton(AF_INET, host.c_str(), &address.sin_addr) != 1) {
    ::close(fd);
    return {};
  }
  address.sin_port = htons(port);
  std::string answer;
  if (::connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) == 0) {
    std::string request = std::string(method) + " " + std::string(path) + " HTTP/1.0\r\nHost: 127.0.0.1\r\n";
    request += "Content-Type: application/json\r\nContent-Length: " + std::to_string(body.size()) + "\r\n\r\n";
    request += body;
    if (::send(fd, request.data(), request.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(request.size())) {
      char bytes[4096];
      ssize_t n = 0;
      while ((n = ::recv(fd, bytes, sizeof(bytes), 0)) > 0) answer.append(bytes, static_cast<std::size_t>(n));
      if (n < 0) answer.clear();  // timed out: the answer may be partial
    }
  }
  ::close(fd);
  const std::size_t head_end = answer.find("\r\n\r\n");
  return head_end == std::string::npos ? std::string() : answer.substr(head_end + 4);
}

struct EtcdServerOptions {
  std::string name = "weft-test";
  std::uint16_t client_port = 0;  // 0: a free port
  std::uint16_t peer_port = 0;    // 0: a free port
  // --initial-cluster; empty: this member alone, "<name>=http://127.0.0.1:<peer_port>".
  std::string initial_cluster;
  // Other local addresses (a veth's, say) where clients may reach it too, on the client port.
  std::vector<std::string> also_listen_on;
  bool wait_healthy = true;  // start() returns once GET /health answers true (up to 10 s)
  // Short raft timers: a one-member cluster elects itself at once, and etcd's least lease TTL
  // (1.5 election timeouts, rounded up to whole seconds) is 1 s instead of 2.
  std::vector<std::string> extra_args = {"--heartbeat-interval=50", "--election-timeout=500", "--logger=zap",
                                         "--log-level=warn", "--log-outputs=stderr"};
};

class EtcdServer {
 public:
  EtcdServer() = default;
  EtcdServer(const EtcdServer&) = delete;
  EtcdServer& operator=(const EtcdServer&) = delete;
  ~EtcdServer() { stop(); }

  // Starts etcd with its data in `data_dir` (etcd makes it; an existing one is reopened) and its
  // output in `data_dir`.log. "" once it runs (and answers /health, unless told not to wait),
  // else what went wrong, with the end of its log. Again after stop(): same ports, same data.
  std::string start(const std::string& data_dir, EtcdServerOptions options = {}) {
    if (pid_ > 0) return "etcd is already running (pid " + std::to_string(pid_) + ")";
    if (options.client_port == 0) options.client_port = client_port_;
    if (options.peer_port == 0) options.peer_port = peer_port_;
    if (options.client_port == 0 || options.peer_port == 0) {
      const std::vector<std::uint16_t> ports = free_ports(2);
      if (ports.empty()) return "no free port on 127.0.0.1: " + std::string(std::strerror(errno));
      if (options.client_port == 0) options.client_port = ports[0];
      if (options.peer_port == 0) options.peer_port = ports[1];
    }
    client_port_ = options.client_port;
    peer_port_ = options.peer_port;
    log_path_ = data_dir + ".log";
    const std::string client_url = "http://127.0.0.1:" + std::to_string(client_port_);
    std::string client_urls = client_url;
    for (const std::string& host : options.also_listen_on) client_urls += ",http://" + host + ":" + std::to_string(client_port_);
    const std::string peer_url = "http://127.0.0.1:" + std::to_string(peer_port_);
    if (options.initial_cluster.empty()) options.initial_cluster = options.name + "=" + peer_url;
    std::vector<std::string> args = {kEtcdBinary,
                                     "--name=" + options.name,
                                     "--data-dir=" + data_dir,
                                     "--listen-client-urls=" + client_urls,
                                     "--advertise-client-urls=" + client_url,
                                     "--listen-peer-urls=" + peer_url,
                                     "--initial-advertise-peer-urls=" + peer_url,
                                     "--initial-cluster=" + options.initial_cluster,
                                     "--initial-cluster-state=new"};
    args.insert(args.end(), options.extra_args.begin(), options.extra_args.end());
    // Everything the child needs is made before fork: after it, only async-signal-safe calls.
    std::vector<char*> argv;
    for (std::string& arg : args) argv.push_back(arg.data());
    argv.push_back(nullptr);
    const int log = ::open(log_path_.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (log < 0) return "opening " + log_path_ + ": " + std::strerror(errno);
    const int null = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
    const pid_t parent = ::getpid();
    const pid_t pid = ::fork();
    if (pid == 0) {
      // Dies with the test process, even one killed by a ctest timeout.
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (::getppid() != parent) _exit(127);
      if (null >= 0) ::dup2(null, STDIN_FILENO);
      ::dup2(log, STDOUT_FILENO);
      ::dup2(log, STDERR_FILENO);
      ::execv(kEtcdBinary, argv.data());
      _exit(127);
    }
    const int fork_errno = errno;
    ::close(log);
    if (null >= 0) ::close(null);
    if (pid < 0) return "fork: " + std::string(std::strerror(fork_errno));
    pid_ = pid;
    if (!options.wait_healthy) return {};
    std::string problem = wait_healthy(std::chrono::seconds(10));
    if (!problem.empty()) stop();
    return problem;
  }

  // "" once GET /health answers true within `limit`, else why not.
  std::string wait_healthy(std::chrono::milliseconds limit) {
    const auto deadline = std::chrono::steady_clock::now() + limit;
    for (;;) {
      if (pid_ <= 0) return "etcd is not running";
      int status = 0;
      if (::waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        return "etcd exited (status " + std::to_string(status) + ") before it was healthy; its log:\n" + log_tail();
      }
      if (http_request(client_port_, "GET", "/health", {}, 500).find("\"health\":\"true\"") != std::string::npos) return {};
      if (std::chrono::steady_clock::now() >= deadline)
        return "etcd not healthy within " + std::to_string(limit.count()) + " ms; its log:\n" + log_tail();
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  }

  // SIGTERM, SIGKILL after 5 s, reaped. Does nothing when it is not running.
  void stop() {
    if (pid_ <= 0) return;
    ::kill(pid_, SIGTERM);
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    while (::waitpid(pid_, nullptr, WNOHANG) == 0) {
      if (std::chrono::steady_clock::now() >= deadline) {
        ::kill(pid_, SIGKILL);
        ::waitpid(pid_, nullptr, 0);
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    pid_ = -1;
  }

  bool running() const noexcept { return pid_ > 0; }
  pid_t pid() const noexcept { return pid_; }
  std::uint16_t client_port() const noexcept { return client_port_; }
  std::uint16_t peer_port() const noexcept { return peer_port_; }
  std::string endpoint() const { return "http://127.0.0.1:" + std::to_string(client_port_); }

  // The last 4 KiB of etcd's output.
  std::string log_tail() const {
    std::ifstream in(log_path_, std::ios::binary);
    const std::string text{std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
    return text.size() > 4096 ? text.substr(text.size() - 4096) : text;
  }

 private:
  pid_t pid_ = -1;
  std::uint16_t client_port_ = 0;
  std::uint16_t peer_port_ = 0;
  std::string log_path_;
};

}  // namespace weft::test
