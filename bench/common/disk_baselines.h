// Same-run disk baselines for benchmarks of weft's NVMe-persisted logs: what the file system
// under a directory does for sequential writes, append + fdatasync round trips and sequential
// reads, measured with plain POSIX calls so log figures can be quoted as a ratio of them.
//
// Each call creates its own scratch file in `dir` (named `.weft-disk-baseline-<pid>-<n>`,
// created with O_EXCL), removes it before returning, and reports failure in `error` (the
// path and the errno text) rather than throwing. Calls are synchronous and may take seconds;
// they are safe to call from several threads at once, though the figures then share the disk.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace weft::bench {

// Sequential write throughput into a fresh file (allocating writes, as a log appends).
struct DiskWrite {
  double mb_per_sec = 0;       // 1e6 bytes per second, the closing fdatasync included
  std::uint64_t bytes = 0;     // written: total_bytes rounded up to whole blocks
  double seconds = 0;          // first write to the end of the fdatasync
  std::string mode;            // "O_DIRECT" or "buffered (O_DIRECT refused: <why>)"
  std::size_t alignment_bytes = 0;  // buffer, offset and length alignment used
  std::string alignment_source;     // "statx STATX_DIOALIGN" or "file system block size"
  std::string error;                // empty on success; then the figures above are unset
};

// Appends `block_bytes` blocks (rounded up to the alignment) with O_DIRECT from one aligned
// buffer until at least `total_bytes` are written, then fdatasyncs once. The alignment comes
// from statx STATX_DIOALIGN when the kernel reports it, else max(4096, file system block
// size). Where the file system refuses O_DIRECT (EINVAL), the same writes go through the page
// cache and `mode` says so; the fdatasync still makes the figure a disk figure.
[[nodiscard]] DiskWrite disk_sequential_write(const std::string& dir, std::uint64_t total_bytes,
                                              std::size_t block_bytes = std::size_t{1} << 20);

// Latency of one small durable append: pwrite at the end of the file, then fdatasync.
struct SyncLatency {
  std::uint64_t p50_ns = 0;   // nearest-rank percentiles over the samples
  std::uint64_t p99_ns = 0;
  std::uint64_t max_ns = 0;
  std::size_t samples = 0;
  double ops_per_sec = 0;     // samples over the wall time of the whole loop
  std::string error;          // empty on success
};

// `samples` rounds of a buffered pwrite of `write_bytes` at the current end of the file
// (nothing preallocated, so every round grows the file as a log segment does) followed by
// fdatasync; each round is one sample.
[[nodiscard]] SyncLatency disk_write_fdatasync_latency(const std::string& dir, std::size_t samples,
                                                       std::size_t write_bytes = 4096);

// Sequential read throughput from a file that is on the disk and not in the page cache.
struct DiskRead {
  double mb_per_sec = 0;      // 1e6 bytes per second
  std::uint64_t bytes = 0;    // read: total_bytes rounded up to whole blocks
  double seconds = 0;
  std::string mode;           // "O_DIRECT" or "buffered (O_DIRECT refused: <why>)"
  std::size_t alignment_bytes = 0;
  std::string alignment_source;
  std::string error;          // empty on success
};

// Writes a file of `total_bytes` (rounded up to whole blocks; buffered, then fdatasync, not
// timed), drops it from the page cache with posix_fadvise(DONTNEED), then times reading it
// back in `block_bytes` blocks with O_DIRECT. Where O_DIRECT is refused the reads are
// buffered and `mode` says so; on a memory file system such as tmpfs DONTNEED frees nothing,
// so the figure is then memory speed.
[[nodiscard]] DiskRead disk_sequential_read(const std::string& dir, std::uint64_t total_bytes,
                                            std::size_t block_bytes = std::size_t{1} << 20);

}  // namespace weft::bench
