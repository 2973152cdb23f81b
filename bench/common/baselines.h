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

// Bytes streamed from one process to another through shared memory, pinned to `cpu_a` (writer)
// and `cpu_b` (reader), for `seconds`: the writer copies 4 KiB blocks into a ring of
// `buffer_bytes` and publishes each with one release store; the reader waits for it, reads
// every 8-byte word and frees the block. No format, no checks: the ceiling, on these two cpus,
// for any ring that hands over bytes in batches, in GB/s. -1 when it cannot be set up.
double cross_core_stream_gb_per_sec(int cpu_a, int cpu_b, std::size_t buffer_bytes, double seconds);

// What a run's ping-pong, measured before its runs and again after them, says about the two
// cpus' placement: empty when both are cross-core figures within 1.5x of each other, else why
// the run's ratios cannot be set beside another run's (on a VM the hypervisor may put both cpus
// on one physical core, or move them apart, between or during runs). Either figure <= 0: not
// measured, and not judged.
std::string placement_warning(double pingpong_before_ns, double pingpong_after_ns);

// "2 cores, SMT siblings: no, NUMA nodes: 1, Intel Xeon ..." for reports.
std::string topology();

}  // namespace weft::bench
