// Same-run baselines every weft benchmark quotes its figures against: memory bandwidth, a
// cache-line hand-off between two processes, and the machine's topology.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace weft::bench {

// Pins the calling thread to `cpu`; false when the kernel refuses (then it runs unpinned).
bool pin_to_cpu(int cpu) noexcept;
// Gives the calling thread back the cpus the process started with.
void unpin() noexcept;
int cpu_count() noexcept;

// memcpy bandwidth over `buffer_bytes` (source and destination each), in GB/s (1e9 bytes).
double memcpy_gb_per_sec(std::size_t buffer_bytes, double seconds);

// One TCP stream over loopback (127.0.0.1), a sender and a receiver thread moving 256 KiB
// writes for `seconds`: the ceiling for anything served over TCP on this host, in GB/s. -1 when
// the sockets cannot be set up.
double tcp_loopback_gb_per_sec(double seconds);

// One-way cache-line hand-off between two processes pinned to `cpu_a` and `cpu_b`: the median
// over batches of round trips, divided by two, in ns.
double pingpong_one_way_ns(int cpu_a, int cpu_b, std::uint64_t round_trips);

// "2 cores, SMT siblings: no, NUMA nodes: 1, Intel Xeon ..." for reports.
std::string topology();

}  // namespace weft::bench
