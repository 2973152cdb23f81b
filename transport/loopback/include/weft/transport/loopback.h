// The loopback transport: the link interface inside one process. A write is copied into the
// peer's region while posting and both completions are queued at once, so tests of what runs
// over links (replication) are fast and deterministic. Addresses are names; listening on ""
// picks a fresh one. Every transport made from one network can reach the others' listeners.
#pragma once

#include <memory>

#include "weft/fabric/link.h"

namespace weft {

class LoopbackNetwork;
std::shared_ptr<LoopbackNetwork> make_loopback_network();
std::unique_ptr<Transport> make_loopback_transport(std::shared_ptr<LoopbackNetwork> network);

}  // namespace weft
