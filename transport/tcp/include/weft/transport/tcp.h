// The TCP transport: the link interface (weft/fabric/link.h) framed over a socket. A write
// travels as a 24-byte header (operation, immediate, region key, length, offset) and its bytes,
// which the receiver reads straight into the region when they are large and through a staging
// buffer when they are small; a message travels the same way into a receive slot. Both ends
// open with an 8-byte hello, so a stray peer is refused at once.
#pragma once

#include <memory>

#include "weft/fabric/link.h"

namespace weft {

struct TcpTransportOptions {
  int socket_buffer_bytes = 4 << 20;  // SO_SNDBUF and SO_RCVBUF; 0: the kernel's default
  int handshake_timeout_ms = 2'000;   // a peer that connects and says nothing is dropped after this
};

std::unique_ptr<Transport> make_tcp_transport(TcpTransportOptions options = {});

}  // namespace weft
