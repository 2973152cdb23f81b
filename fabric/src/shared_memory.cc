#include "weft/fabric/shared_memory.h"

#include <fcntl.h>
#include <linux/magic.h>
#include <linux/memfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>

namespace weft {
namespace {

constexpr std::size_t kHugePage = 2u << 20;
constexpr std::size_t kSmallPage = 4096;

std::size_t round_up(std::size_t n, std::size_t unit) { return (n + unit - 1) / unit * unit; }

struct Mapped {
  UniqueFd fd;
  std::byte* data = nullptr;
};

// Faults every 4 KiB page of a mapping in now, one touch a page, so the hot path takes no fault:
// a write for memory just made (its pages allocated here), a read for memory a peer may be
// writing. Not MAP_POPULATE: that holds the process's mmap lock across the whole range (20–50 ms
// for 4 MiB on this busy VM), and any other thread's mmap, munmap or mprotect (malloc growing a
// heap) waits behind it; a cluster node's replication thread stalled that way, acks=all with it,
// while topics were made. A fault holds its VMA's lock (or the mmap lock) for that page alone.
void fault_in(std::byte* data, std::size_t size, bool write) noexcept {
  volatile std::byte* const pages = data;
  for (std::size_t at = 0; at < size; at += kSmallPage) {
    if (write) {
      pages[at] = std::byte{0};  // fresh memory: it reads zero anyway
    } else {
      (void)pages[at];
    }
  }
}

Result<Mapped> map_memfd(const ShmOptions& options, std::size_t size, bool huge) {
  unsigned flags = MFD_CLOEXEC | MFD_ALLOW_SEALING;
  if (huge) flags |= MFD_HUGETLB | MFD_HUGE_2MB;
  UniqueFd fd(memfd_create(options.name.c_str(), flags));
  if (!fd.valid()) return os_error(Errc::kResourceExhausted, "memfd_create", errno);
  if (ftruncate(fd.get(), static_cast<off_t>(size)) != 0)
    return os_error(Errc::kResourceExhausted, "ftruncate(" + std::to_string(size) + ")", errno);
  // Hugetlb pages are reserved here, so mmap fails (ENOMEM) rather than a later touch raising SIGBUS.
  // Never MAP_NORESERVE for hugetlb. 4 KiB pages are faulted in now to keep faults off the hot path.
  void* p = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd.get(), 0);
  if (p == MAP_FAILED) return os_error(Errc::kResourceExhausted, "mmap of " + std::to_string(size) + " bytes", errno);
  if (!huge) fault_in(static_cast<std::byte*>(p), size, true);
  // Seal the size so a peer cannot shrink the memory under us (its touch would SIGBUS us).
  if (fcntl(fd.get(), F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) != 0) {
    const int e = errno;
    munmap(p, size);
    return os_error(Errc::kInternal, "sealing the shared memory", e);
  }
  return Mapped{std::move(fd), static_cast<std::byte*>(p)};
}

Result<Mapped> map_hugetlbfs(const std::string& path, std::size_t size) {
  UniqueFd fd(open(path.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600));
  if (!fd.valid()) return os_error(Errc::kFailedPrecondition, "open " + path, errno);
  if (ftruncate(fd.get(), static_cast<off_t>(size)) != 0) {
    const int e = errno;
    unlink(path.c_str());
    return os_error(Errc::kResourceExhausted, "ftruncate " + path, e);
  }
  void* p = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd.get(), 0);
  if (p == MAP_FAILED) {
    const int e = errno;
    unlink(path.c_str());
    return os_error(Errc::kResourceExhausted, "mmap " + path, e);
  }
  return Mapped{std::move(fd), static_cast<std::byte*>(p)};
}

}  // namespace

UniqueFd& UniqueFd::operator=(UniqueFd&& other) noexcept {
  if (this != &other) {
    if (fd_ >= 0) close(fd_);
    fd_ = other.release();
  }
  return *this;
}

UniqueFd::~UniqueFd() {
  if (fd_ >= 0) close(fd_);
}

std::string_view backing_name(ShmBacking backing) noexcept {
  switch (backing) {
    case ShmBacking::kHugeTlbMemfd: return "hugetlb memfd (2 MiB pages)";
    case ShmBacking::kHugeTlbFsFile: return "hugetlbfs file (2 MiB pages)";
    case ShmBacking::kMemfd: return "memfd (4 KiB pages, pre-faulted)";
    default: return "unknown";
  }
}

std::size_t free_hugepages() noexcept {
  std::ifstream in("/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages");
  std::size_t n = 0;
  return (in >> n) ? n : 0;
}

Result<SharedMemory> SharedMemory::create(const ShmOptions& options) {
  if (options.size_bytes == 0) return Error{Errc::kInvalidArgument, "shared memory: size must be positive"};
  SharedMemory shm;
  if (options.prefer_hugepages) {
    const std::size_t size = round_up(options.size_bytes, kHugePage);
    Result<Mapped> mapped = options.hugetlbfs_dir.empty()
                                ? map_memfd(options, size, true)
                                : map_hugetlbfs(options.hugetlbfs_dir + "/" + options.name, size);
    if (mapped.ok()) {
      shm.fd_ = std::move(mapped->fd);
      shm.data_ = mapped->data;
      shm.size_ = size;
      shm.page_bytes_ = kHugePage;
      if (options.hugetlbfs_dir.empty()) {
        shm.backing_ = ShmBacking::kHugeTlbMemfd;
      } else {
        shm.backing_ = ShmBacking::kHugeTlbFsFile;
        shm.unlink_path_ = options.hugetlbfs_dir + "/" + options.name;
      }
      return shm;
    }
    shm.fallback_reason_ = mapped.error().message + " (free 2 MiB hugepages: " + std::to_string(free_hugepages()) +
                           "; reserve with: echo N > /proc/sys/vm/nr_hugepages)";
  } else {
    shm.fallback_reason_ = "hugepages not requested";
  }
  const std::size_t size = round_up(options.size_bytes, kSmallPage);
  WEFT_TRY(Mapped mapped, map_memfd(options, size, false));
  shm.fd_ = std::move(mapped.fd);
  shm.data_ = mapped.data;
  shm.size_ = size;
  shm.page_bytes_ = kSmallPage;
  shm.backing_ = ShmBacking::kMemfd;
  return shm;
}

Result<SharedMemory> SharedMemory::map(UniqueFd fd, std::size_t expected_bytes) {
  struct stat st {};
  if (fstat(fd.get(), &st) != 0) return os_error(Errc::kInvalidArgument, "fstat of shared memory fd", errno);
  if (st.st_size <= 0) return Error{Errc::kInvalidArgument, "shared memory fd has size 0"};
  if (expected_bytes != 0 && static_cast<std::uint64_t>(st.st_size) != expected_bytes)
    return Error{Errc::kCorrupt, "shared memory is " + std::to_string(st.st_size) + " bytes, " + std::to_string(expected_bytes) + " expected"};
  // Memory that can still shrink could be cut under this mapping by a peer (a touch past the new
  // end raises SIGBUS): a memfd must carry F_SEAL_SHRINK. One made without sealing, or a tmpfs
  // file, reports F_SEAL_SEAL alone and could be cut; only hugetlbfs files, which take no seals,
  // are accepted as they are.
  struct statfs fs {};
  const bool huge = fstatfs(fd.get(), &fs) == 0 && fs.f_type == HUGETLBFS_MAGIC;
  const int seals = fcntl(fd.get(), F_GET_SEALS);
  if (!huge && (seals < 0 || (seals & F_SEAL_SHRINK) == 0))
    return Error{Errc::kFailedPrecondition, "shared memory fd is not sealed against shrinking (F_SEAL_SHRINK)"};
  const auto size = static_cast<std::size_t>(st.st_size);
  void* p = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd.get(), 0);
  if (p == MAP_FAILED) return os_error(Errc::kResourceExhausted, "mmap of received shared memory", errno);
  if (!huge) fault_in(static_cast<std::byte*>(p), size, false);
  SharedMemory shm;
  shm.fd_ = std::move(fd);
  shm.data_ = static_cast<std::byte*>(p);
  shm.size_ = size;
  shm.page_bytes_ = huge ? kHugePage : kSmallPage;
  shm.backing_ = huge ? ShmBacking::kHugeTlbMemfd : ShmBacking::kMemfd;
  return shm;
}

SharedMemory::SharedMemory(SharedMemory&& other) noexcept
    : fd_(std::move(other.fd_)),
      data_(std::exchange(other.data_, nullptr)),
      size_(std::exchange(other.size_, 0)),
      page_bytes_(other.page_bytes_),
      backing_(other.backing_),
      fallback_reason_(std::move(other.fallback_reason_)),
      unlink_path_(std::move(other.unlink_path_)) {
  other.unlink_path_.clear();
}

SharedMemory& SharedMemory::operator=(SharedMemory&& other) noexcept {
  if (this != &other) {
    release();
    fd_ = std::move(other.fd_);
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
    page_bytes_ = other.page_bytes_;
    backing_ = other.backing_;
    fallback_reason_ = std::move(other.fallback_reason_);
    unlink_path_ = std::exchange(other.unlink_path_, {});
  }
  return *this;
}

SharedMemory::~SharedMemory() { release(); }

void SharedMemory::release() noexcept {
  if (data_ != nullptr) munmap(data_, size_);
  data_ = nullptr;
  size_ = 0;
  if (!unlink_path_.empty()) unlink(unlink_path_.c_str());
  unlink_path_.clear();
  fd_ = UniqueFd();
}

std::string SharedMemory::describe() const {
  std::string s = std::string(backing_name(backing_)) + ", " + std::to_string(size_ >> 10) + " KiB";
  if (!fallback_reason_.empty()) s += "; hugepages not used: " + fallback_reason_;
  return s;
}

Result<void> send_fd(int socket_fd, int fd, std::span<const std::byte> payload) {
  std::byte dummy{0};
  iovec iov{};
  iov.iov_base = payload.empty() ? &dummy : const_cast<std::byte*>(payload.data());
  iov.iov_len = payload.empty() ? 1 : payload.size();
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))] = {};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof(control);
  cmsghdr* cmsg = CMSG_FIRSTHDR(&msg);
  cmsg->cmsg_level = SOL_SOCKET;
  cmsg->cmsg_type = SCM_RIGHTS;
  cmsg->cmsg_len = CMSG_LEN(sizeof(int));
  std::memcpy(CMSG_DATA(cmsg), &fd, sizeof(int));
  ssize_t n;
  do n = sendmsg(socket_fd, &msg, MSG_NOSIGNAL);
  while (n < 0 && errno == EINTR);
  if (n < 0) return os_error(Errc::kUnavailable, "sendmsg(SCM_RIGHTS)", errno);
  return ok();
}

Result<UniqueFd> receive_fd(int socket_fd, std::span<std::byte> payload, std::size_t& received) {
  std::byte dummy{0};
  iovec iov{};
  iov.iov_base = payload.empty() ? &dummy : payload.data();
  iov.iov_len = payload.empty() ? 1 : payload.size();
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))] = {};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof(control);
  ssize_t n;
  do n = recvmsg(socket_fd, &msg, MSG_CMSG_CLOEXEC);
  while (n < 0 && errno == EINTR);
  if (n < 0) return os_error(Errc::kUnavailable, "recvmsg(SCM_RIGHTS)", errno);
  if (n == 0) return Error{Errc::kUnavailable, "recvmsg(SCM_RIGHTS): peer closed the socket"};
  received = payload.empty() ? 0 : static_cast<std::size_t>(n);
  // Own every descriptor the kernel installed (CMSG_SPACE padding fits two), so that a peer
  // sending more than one, or a truncated message, leaks none into this process.
  UniqueFd first;
  std::size_t fd_count = 0;
  for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    for (std::size_t i = 0; i < (c->cmsg_len - CMSG_LEN(0)) / sizeof(int); ++i) {
      int fd = -1;
      std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
      UniqueFd owned(fd);
      if (fd_count++ == 0) first = std::move(owned);
    }
  }
  if ((msg.msg_flags & MSG_CTRUNC) != 0) return Error{Errc::kInvalidArgument, "recvmsg: control data truncated"};
  if (fd_count == 0) return Error{Errc::kInvalidArgument, "recvmsg: the message carried no file descriptor"};
  if (fd_count > 1)
    return Error{Errc::kInvalidArgument,
                 "recvmsg: expected one file descriptor, received " + std::to_string(fd_count)};
  return first;
}

}  // namespace weft
