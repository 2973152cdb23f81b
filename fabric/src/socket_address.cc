#include "weft/fabric/socket_address.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <sys/socket.h>

#include <cerrno>
#include <charconv>
#include <cstring>

namespace weft {

std::uint16_t SocketAddress::port() const noexcept {
  if (family() == AF_INET) return ntohs(reinterpret_cast<const sockaddr_in*>(&storage)->sin_port);
  if (family() == AF_INET6) return ntohs(reinterpret_cast<const sockaddr_in6*>(&storage)->sin6_port);
  return 0;
}

std::string SocketAddress::to_string() const {
  char host[INET6_ADDRSTRLEN] = {};
  if (family() == AF_INET) {
    inet_ntop(AF_INET, &reinterpret_cast<const sockaddr_in*>(&storage)->sin_addr, host, sizeof host);
    return std::string(host) + ":" + std::to_string(port());
  }
  if (family() == AF_INET6) {
    inet_ntop(AF_INET6, &reinterpret_cast<const sockaddr_in6*>(&storage)->sin6_addr, host, sizeof host);
    return "[" + std::string(host) + "]:" + std::to_string(port());
  }
  return "?";
}

Result<SocketAddress> parse_socket_address(std::string_view text, std::string_view what) {
  const std::size_t colon = text.rfind(':');
  if (colon == std::string_view::npos || colon == 0 || colon + 1 == text.size()) {
    return Error{Errc::kInvalidArgument, std::string(what) + " must be HOST:PORT, not '" + std::string(text) + "'"};
  }
  std::string_view host = text.substr(0, colon);
  const std::string_view port_text = text.substr(colon + 1);
  unsigned port = 0;
  const auto [end, ec] = std::from_chars(port_text.data(), port_text.data() + port_text.size(), port);
  if (ec != std::errc{} || end != port_text.data() + port_text.size() || port > 65535) {
    return Error{Errc::kInvalidArgument, std::string(what) + ": '" + std::string(port_text) + "' is not a port (0..65535)"};
  }
  if (host.size() > 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  return socket_address(host, static_cast<std::uint16_t>(port), what);
}

Result<SocketAddress> socket_address(std::string_view host, std::uint16_t port, std::string_view what) {
  const std::string name = host == "localhost" ? "127.0.0.1" : std::string(host);
  SocketAddress address;
  auto* v4 = reinterpret_cast<sockaddr_in*>(&address.storage);
  auto* v6 = reinterpret_cast<sockaddr_in6*>(&address.storage);
  if (inet_pton(AF_INET, name.c_str(), &v4->sin_addr) == 1) {
    v4->sin_family = AF_INET;
    v4->sin_port = htons(port);
    address.length = sizeof(sockaddr_in);
  } else if (inet_pton(AF_INET6, name.c_str(), &v6->sin6_addr) == 1) {
    v6->sin6_family = AF_INET6;
    v6->sin6_port = htons(port);
    address.length = sizeof(sockaddr_in6);
  } else {
    return Error{Errc::kInvalidArgument,
                 std::string(what) + ": '" + std::string(host) + "' is not an IPv4 address, an IPv6 address or localhost"};
  }
  return address;
}

Result<UniqueFd> listen_tcp(const SocketAddress& address, int backlog, std::string_view what, std::string_view hint) {
  UniqueFd fd(::socket(address.family(), SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  const std::string where = address.to_string();
  if (!fd.valid()) return os_error(Errc::kIo, std::string(what) + " " + where + ": socket", errno);
  const int one = 1;
  setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (::bind(fd.get(), address.get(), address.length) != 0) {
    const int e = errno;
    if (e == EADDRINUSE) return Error{Errc::kIo, std::string(what) + " " + where + " is in use; " + std::string(hint)};
    return os_error(Errc::kIo, std::string(what) + " " + where + ": bind", e);
  }
  if (::listen(fd.get(), backlog) != 0) return os_error(Errc::kIo, std::string(what) + " " + where + ": listen", errno);
  return fd;
}

Result<SocketAddress> local_address(int fd) {
  SocketAddress address;
  address.length = sizeof address.storage;
  if (getsockname(fd, address.get(), &address.length) != 0) return os_error(Errc::kIo, "getsockname", errno);
  return address;
}

UniqueFd spare_descriptor() { return UniqueFd(::open("/dev/null", O_RDONLY | O_CLOEXEC)); }

bool shed_waiting_connection(int listen_fd, UniqueFd& spare) {
  spare = UniqueFd();
  const UniqueFd dropped(::accept4(listen_fd, nullptr, nullptr, SOCK_CLOEXEC));
  spare = spare_descriptor();
  return dropped.valid();
}

}  // namespace weft
