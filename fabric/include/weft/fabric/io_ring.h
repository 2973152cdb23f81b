// A small io_uring for file reads and writes: queue one, submit it, collect completions. No
// threads of its own and no registered buffers (a non-root user's RLIMIT_MEMLOCK is 8 MiB); its
// value is overlap: the kernel writes one buffer while a segment fills the next, or reads the
// next stretch of a log while a consumer decodes the last.
//
// Thread contract: one thread at a time (its owner). liburing stays out of this header.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>

namespace weft {

struct IoCompletion {
  // Which request: the tag given to write() or read().
  std::uint64_t tag = 0;
  std::int32_t result = 0;  // bytes moved, or -errno
};

class IoRing {
 public:
  // A ring with room for `entries` writes in flight; null where io_uring is refused (a seccomp
  // profile, io_uring_disabled, an old kernel), with the reason in `why`.
  static std::unique_ptr<IoRing> create(unsigned entries, std::string* why);
  ~IoRing();
  IoRing(const IoRing&) = delete;
  IoRing& operator=(const IoRing&) = delete;

  // Queues a write of `bytes` at `offset` and submits it; false when the ring refuses it (no
  // room, or the submit failed): the caller writes it itself. The bytes must stay put until the
  // write completes.
  bool write(int fd, std::span<const std::byte> bytes, std::uint64_t offset, std::uint64_t tag);
  // The same for a read into `into`.
  bool read(int fd, std::span<std::byte> into, std::uint64_t offset, std::uint64_t tag);
  // Fills `out` with finished writes, waiting for at least one if `wait` (and any are in
  // flight); returns how many.
  std::size_t reap(std::span<IoCompletion> out, bool wait);
  std::size_t in_flight() const noexcept { return in_flight_; }

 private:
  IoRing();
  bool submit_queued(void* queued);  // an io_uring_sqe*
  struct Impl;
  std::unique_ptr<Impl> impl_;
  std::size_t in_flight_ = 0;
};

}  // namespace weft
