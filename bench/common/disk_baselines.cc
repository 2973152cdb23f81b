#include "disk_baselines.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <memory>
#include <system_error>
#include <utility>
#include <vector>

namespace weft::bench {
namespace {

using Clock = std::chrono::steady_clock;

// Sizes past this are a caller's mistake, and keeping below it keeps every offset inside off_t.
constexpr std::uint64_t kMaxFileBytes = std::uint64_t{1} << 50;
// A scratch name taken by another process (a stale file from a reused pid) moves on to the next.
constexpr int kMaxCreateAttempts = 64;
// Signals may interrupt a transfer; past this many in one call the run is not worth trusting.
constexpr int kMaxInterrupts = 100;
// Returned by the transfer helpers when a read finds the end of the file early.
constexpr int kEndOfFile = -1;

std::string errno_text(int error) {
  if (error == kEndOfFile) return "file ended early";
  return std::generic_category().message(error);
}

std::string os_error(const char* call, const std::string& path, int error) {
  return std::string(call) + " " + path + ": " + errno_text(error);
}

std::uint64_t round_up(std::uint64_t value, std::uint64_t multiple) {
  return (value + multiple - 1) / multiple * multiple;
}

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

class Fd {
 public:
  Fd() = default;
  explicit Fd(int fd) : fd_(fd) {}
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  ~Fd() { reset(-1); }
  void reset(int fd) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = fd;
  }
  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }

 private:
  int fd_ = -1;
};

// One file of ours in the measured directory: created under a name no other file has, open
// read-write (buffered), and unlinked when this goes away.
class ScratchFile {
 public:
  ScratchFile() = default;
  ScratchFile(const ScratchFile&) = delete;
  ScratchFile& operator=(const ScratchFile&) = delete;
  ~ScratchFile() {
    if (!path_.empty()) ::unlink(path_.c_str());
  }

  // Empty on success, else what went wrong.
  std::string create(const std::string& dir) {
    if (dir.empty()) return "no directory given";
    const std::string prefix =
        dir + (dir.back() == '/' ? "" : "/") + ".weft-disk-baseline-" + std::to_string(::getpid()) + "-";
    std::string path;
    int error = 0;
    for (int attempt = 0; attempt < kMaxCreateAttempts; ++attempt) {
      // Relaxed: the counter only has to hand out distinct numbers; nothing is published with it.
      path = prefix + std::to_string(next_number_.fetch_add(1, std::memory_order_relaxed));
      const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
      if (fd >= 0) {
        path_ = std::move(path);
        fd_.reset(fd);
        return {};
      }
      error = errno;
      if (error != EEXIST) break;
    }
    return os_error("create", path, error);
  }

  const std::string& path() const { return path_; }
  int fd() const { return fd_.get(); }

 private:
  static inline std::atomic<std::uint64_t> next_number_{0};
  std::string path_;
  Fd fd_;
};

// Returns 0, or the errno of the call that failed. Bounded: every round moves forward or fails.
int pwrite_all(int fd, const char* data, std::size_t size, std::uint64_t offset) {
  int interrupts = 0;
  while (size > 0) {
    const ssize_t written = ::pwrite(fd, data, size, static_cast<off_t>(offset));
    if (written < 0) {
      if (errno == EINTR && ++interrupts < kMaxInterrupts) continue;
      return errno;
    }
    if (written == 0) return EIO;
    data += written;
    size -= static_cast<std::size_t>(written);
    offset += static_cast<std::uint64_t>(written);
  }
  return 0;
}

// Returns 0, kEndOfFile, or the errno of the call that failed.
int pread_all(int fd, char* data, std::size_t size, std::uint64_t offset) {
  int interrupts = 0;
  while (size > 0) {
    const ssize_t got = ::pread(fd, data, size, static_cast<off_t>(offset));
    if (got < 0) {
      if (errno == EINTR && ++interrupts < kMaxInterrupts) continue;
      return errno;
    }
    if (got == 0) return kEndOfFile;
    data += got;
    size -= static_cast<std::size_t>(got);
    offset += static_cast<std::uint64_t>(got);
  }
  return 0;
}

struct Alignment {
  std::size_t bytes = 4096;
  const char* source = "file system block size";
  bool direct_io_unsupported = false;  // the kernel said so through statx
};

Alignment direct_io_alignment(int fd) {
  Alignment alignment;
#if defined(STATX_DIOALIGN)
  struct statx sx {};
  if (::statx(fd, "", AT_EMPTY_PATH, STATX_DIOALIGN, &sx) == 0 && (sx.stx_mask & STATX_DIOALIGN) != 0) {
    // Both zero: the file system supports no direct I/O on this file.
    if (sx.stx_dio_offset_align == 0) {
      alignment.direct_io_unsupported = true;
    } else {
      alignment.bytes = std::max<std::size_t>(sx.stx_dio_mem_align, sx.stx_dio_offset_align);
      alignment.source = "statx STATX_DIOALIGN";
      return alignment;
    }
  }
#endif
  struct stat st {};
  if (::fstat(fd, &st) == 0 && st.st_blksize > 0)
    alignment.bytes = std::max(alignment.bytes, static_cast<std::size_t>(st.st_blksize));
  struct statvfs vfs {};
  if (::fstatvfs(fd, &vfs) == 0 && vfs.f_bsize > 0)
    alignment.bytes = std::max(alignment.bytes, static_cast<std::size_t>(vfs.f_bsize));
  return alignment;
}

struct FreeDeleter {
  void operator()(char* p) const { std::free(p); }
};
using AlignedBuffer = std::unique_ptr<char, FreeDeleter>;

// `size` bytes aligned for direct I/O (and at least to a page), filled with a pattern that
// neither compresses nor reads as zeroes.
AlignedBuffer aligned_buffer(std::size_t size, std::size_t alignment) {
  void* memory = nullptr;
  if (::posix_memalign(&memory, std::bit_ceil(std::max<std::size_t>(alignment, 4096)), size) != 0) return nullptr;
  AlignedBuffer buffer(static_cast<char*>(memory));
  std::uint64_t state = 0x9E3779B97F4A7C15u;
  for (std::size_t i = 0; i < size; ++i) {
    state = state * 6364136223846793005u + 1442695040888963407u;
    buffer.get()[i] = static_cast<char>(state >> 56);
  }
  return buffer;
}

// The shape of a sequential run: whole aligned blocks covering at least the asked-for bytes.
struct Plan {
  Alignment alignment;
  std::size_t block_bytes = 0;
  std::uint64_t blocks = 0;
};

std::string plan_run(int fd, std::uint64_t total_bytes, std::size_t block_bytes, Plan& plan) {
  if (total_bytes == 0 || block_bytes == 0) return "total_bytes and block_bytes must be positive";
  if (total_bytes > kMaxFileBytes || block_bytes > kMaxFileBytes) return "total_bytes or block_bytes too large";
  plan.alignment = direct_io_alignment(fd);
  plan.block_bytes = static_cast<std::size_t>(round_up(block_bytes, plan.alignment.bytes));
  plan.blocks = (total_bytes + plan.block_bytes - 1) / plan.block_bytes;
  return {};
}

// Opens `path` again for direct I/O. Invalid with `refusal` set: the file system refused
// O_DIRECT (the reason in `refusal`). Invalid with `error` set: something else failed.
Fd open_direct(const std::string& path, int flags, const Alignment& alignment, std::string& refusal,
               std::string& error) {
  if (alignment.direct_io_unsupported) {
    refusal = "statx reports no direct I/O on this file";
    return Fd{};
  }
  const int fd = ::open(path.c_str(), flags | O_DIRECT | O_CLOEXEC);
  if (fd >= 0) return Fd{fd};
  if (errno == EINVAL)
    refusal = os_error("open", path, errno);
  else
    error = os_error("open O_DIRECT", path, errno);
  return Fd{};
}

std::string buffered_mode(const std::string& refusal) { return "buffered (O_DIRECT refused: " + refusal + ")"; }

}  // namespace

DiskWrite disk_sequential_write(const std::string& dir, std::uint64_t total_bytes, std::size_t block_bytes) {
  DiskWrite result;
  ScratchFile file;
  if (result.error = file.create(dir); !result.error.empty()) return result;
  Plan plan;
  if (result.error = plan_run(file.fd(), total_bytes, block_bytes, plan); !result.error.empty()) return result;
  std::string refusal;
  const Fd direct = open_direct(file.path(), O_WRONLY, plan.alignment, refusal, result.error);
  if (!result.error.empty()) return result;
  const AlignedBuffer buffer = aligned_buffer(plan.block_bytes, plan.alignment.bytes);
  if (!buffer) {
    result.error = "cannot allocate an aligned buffer of " + std::to_string(plan.block_bytes) + " bytes";
    return result;
  }

  // A file system may take the O_DIRECT open and refuse the first write instead: then the run
  // starts over through the page cache.
  int fd = direct.valid() ? direct.get() : file.fd();
  double seconds = 0;
  for (int pass = 0; pass < 2; ++pass) {
    int error = 0;
    std::uint64_t done = 0;  // blocks transferred
    const auto start = Clock::now();
    for (; done < plan.blocks; ++done)
      if (error = pwrite_all(fd, buffer.get(), plan.block_bytes, done * plan.block_bytes); error != 0) break;
    const char* failed_call = "pwrite";
    if (error == 0 && ::fdatasync(fd) != 0) {
      error = errno;
      failed_call = "fdatasync";
    }
    seconds = seconds_since(start);
    if (error == 0) break;
    if (error == EINVAL && done == 0 && fd == direct.get() && refusal.empty()) {
      refusal = os_error(failed_call, file.path(), error);
      fd = file.fd();
      if (::ftruncate(fd, 0) == 0) continue;  // drops whatever part of the block got through
      error = errno;
      failed_call = "ftruncate";
    }
    result.error = os_error(failed_call, file.path(), error);
    return result;
  }

  result.bytes = plan.blocks * plan.block_bytes;
  result.seconds = seconds;
  result.mb_per_sec = seconds > 0 ? static_cast<double>(result.bytes) / seconds / 1e6 : 0;
  result.mode = refusal.empty() ? "O_DIRECT" : buffered_mode(refusal);
  result.alignment_bytes = plan.alignment.bytes;
  result.alignment_source = plan.alignment.source;
  return result;
}

SyncLatency disk_write_fdatasync_latency(const std::string& dir, std::size_t samples, std::size_t write_bytes) {
  SyncLatency result;
  if (samples == 0 || write_bytes == 0) {
    result.error = "samples and write_bytes must be positive";
    return result;
  }
  if (write_bytes > kMaxFileBytes || samples > kMaxFileBytes / write_bytes) {
    result.error = "samples * write_bytes too large";
    return result;
  }
  ScratchFile file;
  if (result.error = file.create(dir); !result.error.empty()) return result;
  const std::vector<char> data(write_bytes, 'w');
  std::vector<std::uint64_t> latency_ns(samples);

  const auto start = Clock::now();
  for (std::size_t i = 0; i < samples; ++i) {
    const auto before = Clock::now();
    if (const int error = pwrite_all(file.fd(), data.data(), write_bytes, std::uint64_t{i} * write_bytes); error != 0) {
      result.error = os_error("pwrite", file.path(), error);
      return result;
    }
    if (::fdatasync(file.fd()) != 0) {
      result.error = os_error("fdatasync", file.path(), errno);
      return result;
    }
    latency_ns[i] = static_cast<std::uint64_t>(std::chrono::nanoseconds(Clock::now() - before).count());
  }
  const double seconds = seconds_since(start);

  std::sort(latency_ns.begin(), latency_ns.end());
  const auto nearest_rank = [&](std::size_t percent) {
    const std::size_t rank = (samples * percent + 99) / 100;  // ceil(samples * percent / 100), >= 1
    return latency_ns[rank - 1];
  };
  result.p50_ns = nearest_rank(50);
  result.p99_ns = nearest_rank(99);
  result.max_ns = latency_ns.back();
  result.samples = samples;
  result.ops_per_sec = seconds > 0 ? static_cast<double>(samples) / seconds : 0;
  return result;
}

DiskRead disk_sequential_read(const std::string& dir, std::uint64_t total_bytes, std::size_t block_bytes) {
  DiskRead result;
  ScratchFile file;
  if (result.error = file.create(dir); !result.error.empty()) return result;
  Plan plan;
  if (result.error = plan_run(file.fd(), total_bytes, block_bytes, plan); !result.error.empty()) return result;
  const AlignedBuffer buffer = aligned_buffer(plan.block_bytes, plan.alignment.bytes);
  if (!buffer) {
    result.error = "cannot allocate an aligned buffer of " + std::to_string(plan.block_bytes) + " bytes";
    return result;
  }

  // The file to read: written through the page cache, on the disk, then out of the cache.
  for (std::uint64_t block = 0; block < plan.blocks; ++block) {
    if (const int error = pwrite_all(file.fd(), buffer.get(), plan.block_bytes, block * plan.block_bytes); error != 0) {
      result.error = os_error("pwrite", file.path(), error);
      return result;
    }
  }
  if (::fdatasync(file.fd()) != 0) {
    result.error = os_error("fdatasync", file.path(), errno);
    return result;
  }
  // Returns the error number itself rather than setting errno.
  if (const int error = ::posix_fadvise(file.fd(), 0, 0, POSIX_FADV_DONTNEED); error != 0) {
    result.error = os_error("posix_fadvise DONTNEED", file.path(), error);
    return result;
  }

  std::string refusal;
  const Fd direct = open_direct(file.path(), O_RDONLY, plan.alignment, refusal, result.error);
  if (!result.error.empty()) return result;

  // As for writes: a refused first O_DIRECT read starts the run over through the page cache.
  int fd = direct.valid() ? direct.get() : file.fd();
  double seconds = 0;
  for (int pass = 0; pass < 2; ++pass) {
    int error = 0;
    std::uint64_t done = 0;  // blocks transferred
    const auto start = Clock::now();
    for (; done < plan.blocks; ++done)
      if (error = pread_all(fd, buffer.get(), plan.block_bytes, done * plan.block_bytes); error != 0) break;
    seconds = seconds_since(start);
    if (error == 0) break;
    if (error == EINVAL && done == 0 && fd == direct.get() && refusal.empty()) {
      refusal = os_error("pread", file.path(), error);
      fd = file.fd();
      continue;
    }
    result.error = os_error("pread", file.path(), error);
    return result;
  }

  result.bytes = plan.blocks * plan.block_bytes;
  result.seconds = seconds;
  result.mb_per_sec = seconds > 0 ? static_cast<double>(result.bytes) / seconds / 1e6 : 0;
  result.mode = refusal.empty() ? "O_DIRECT" : buffered_mode(refusal);
  result.alignment_bytes = plan.alignment.bytes;
  result.alignment_source = plan.alignment.source;
  return result;
}

}  // namespace weft::bench
