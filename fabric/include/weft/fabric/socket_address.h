// "HOST:PORT" for the node's sockets: numeric IPv4, bracketed IPv6 or localhost (no DNS on
// the paths that use it, so a lookup never stalls a node).
#pragma once

#include <netinet/in.h>
#include <sys/socket.h>

#include <cstdint>
#include <string>
#include <string_view>

#include "weft/fabric/result.h"
#include "weft/fabric/shared_memory.h"

namespace weft {

struct SocketAddress {
  sockaddr_storage storage{};
  socklen_t length = 0;
  int family() const noexcept { return storage.ss_family; }
  const sockaddr* get() const noexcept { return reinterpret_cast<const sockaddr*>(&storage); }
  sockaddr* get() noexcept { return reinterpret_cast<sockaddr*>(&storage); }
  std::uint16_t port() const noexcept;
  std::string to_string() const;  // HOST:PORT, IPv6 in brackets
};

// `what` names the setting in the error ("replication listen address").
Result<SocketAddress> parse_socket_address(std::string_view text, std::string_view what);
// The same from a host (numeric IPv4 or IPv6 without brackets, or localhost) and a port.
Result<SocketAddress> socket_address(std::string_view host, std::uint16_t port, std::string_view what);
// A non-blocking TCP socket listening at `address` (SO_REUSEADDR). An address in use is
// kIo saying "<what> HOST:PORT is in use; <hint>".
Result<UniqueFd> listen_tcp(const SocketAddress& address, int backlog, std::string_view what, std::string_view hint);

// Out of descriptors, accept() fails with EMFILE and leaves the listener readable: an event loop
// would wake again at once, for ever. A server keeps `spare` open (spare_descriptor()) and, when
// accept() says EMFILE or ENFILE, calls this: it gives the spare up, takes the waiting connection,
// closes it and opens the spare again. False when no connection was taken.
UniqueFd spare_descriptor();
bool shed_waiting_connection(int listen_fd, UniqueFd& spare);
// The local address of a bound socket.
Result<SocketAddress> local_address(int fd);

}  // namespace weft
