// Names the calling thread (at most 15 characters, the kernel's limit; longer names are cut) so
// `top -H`, `perf` and debuggers tell weft's threads apart: weft-maint (the node's log writer and
// ring owner), weft-replica and weft-control (a cluster node), weft-kafka with weft-kafka-adm
// and weft-kafka-ofs, weft-local with weft-local-adm and weft-local-ofs, weft-metrics,
// weft-connect.
#pragma once

namespace weft {

void name_this_thread(const char* name) noexcept;

}  // namespace weft
