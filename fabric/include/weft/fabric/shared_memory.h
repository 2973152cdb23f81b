// Shared memory for rings: hugepages when the kernel has them reserved, else 4 KiB pages that are
// faulted in up front. The choice is reported (backing(), fallback_reason()), never silent.
// A mapping can be handed to another process as a file descriptor over a Unix socket.
#pragma once

#include <cstddef>
#include <span>
#include <string>
#include <string_view>

#include "weft/fabric/result.h"

namespace weft {

// Owns one file descriptor; closes it on destruction.
class UniqueFd {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) noexcept : fd_(fd) {}
  UniqueFd(UniqueFd&& other) noexcept : fd_(other.release()) {}
  UniqueFd& operator=(UniqueFd&& other) noexcept;
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;
  ~UniqueFd();

  int get() const noexcept { return fd_; }
  bool valid() const noexcept { return fd_ >= 0; }
  int release() noexcept {
    const int fd = fd_;
    fd_ = -1;
    return fd;
  }

 private:
  int fd_ = -1;
};

enum class ShmBacking : unsigned char {
  kHugeTlbMemfd,   // memfd_create(MFD_HUGETLB): 2 MiB pages, reserved at mmap
  kHugeTlbFsFile,  // a file in a hugetlbfs mount, reopenable by path
  kMemfd,          // plain memfd, 4 KiB pages faulted in at creation (the fallback)
};
std::string_view backing_name(ShmBacking backing) noexcept;

struct ShmOptions {
  std::string name = "weft";     // shown in /proc/<pid>/maps
  std::size_t size_bytes = 0;    // rounded up to whole pages of the chosen backing
  bool prefer_hugepages = true;
  std::string hugetlbfs_dir;     // non-empty: create `name` in this hugetlbfs mount instead of a memfd
};

// One shared mapping. Move-only; unmaps and closes on destruction.
class SharedMemory {
 public:
  static Result<SharedMemory> create(const ShmOptions& options);
  // Maps memory another process created (an fd received with receive_fd, or inherited): a memfd
  // sealed against shrinking, or a hugetlbfs file (which takes no seals). `expected_bytes`, when
  // not 0, is the size it must have, checked before anything is mapped or faulted in.
  static Result<SharedMemory> map(UniqueFd fd, std::size_t expected_bytes = 0);

  SharedMemory(SharedMemory&& other) noexcept;
  SharedMemory& operator=(SharedMemory&& other) noexcept;
  SharedMemory(const SharedMemory&) = delete;
  SharedMemory& operator=(const SharedMemory&) = delete;
  ~SharedMemory();

  std::byte* data() const noexcept { return data_; }
  std::size_t size() const noexcept { return size_; }
  std::span<std::byte> bytes() const noexcept { return {data_, size_}; }
  int fd() const noexcept { return fd_.get(); }
  ShmBacking backing() const noexcept { return backing_; }
  std::size_t page_bytes() const noexcept { return page_bytes_; }
  // Why hugepages were not used, when they were asked for and the fallback was taken.
  const std::string& fallback_reason() const noexcept { return fallback_reason_; }
  // One line for logs and reports: backing, size, and the fallback reason if any.
  std::string describe() const;

 private:
  SharedMemory() = default;
  void release() noexcept;
  UniqueFd fd_;
  std::byte* data_ = nullptr;
  std::size_t size_ = 0;
  std::size_t page_bytes_ = 0;
  ShmBacking backing_ = ShmBacking::kMemfd;
  std::string fallback_reason_;
  std::string unlink_path_;  // hugetlbfs file this object created
};

// Sends `fd` with a small payload over a connected AF_UNIX socket (SCM_RIGHTS).
Result<void> send_fd(int socket_fd, int fd, std::span<const std::byte> payload);
// Receives one fd and up to payload.size() bytes; `received` is set to the bytes read.
Result<UniqueFd> receive_fd(int socket_fd, std::span<std::byte> payload, std::size_t& received);

// Free 2 MiB hugepages in the kernel's pool (0 when none or unreadable).
std::size_t free_hugepages() noexcept;

}  // namespace weft
