// SharedMemory: the backing chosen and reported, two mappings of one memfd, and handing the fd to
// a forked process over a Unix socket. Every child is waited for by PID, within a bound.
#include "weft/fabric/shared_memory.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>

namespace weft {
namespace {

constexpr std::size_t kSmallPage = 4096;
constexpr std::size_t kHugePage = 2u << 20;

std::byte pattern_byte(std::size_t i, std::uint8_t seed) {
  return static_cast<std::byte>((i * 131 + seed) & 0xFFu);
}

void fill_pattern(std::span<std::byte> bytes, std::uint8_t seed) {
  for (std::size_t i = 0; i < bytes.size(); ++i) bytes[i] = pattern_byte(i, seed);
}

// Index of the first byte that differs from the pattern, or bytes.size().
std::size_t first_mismatch(std::span<const std::byte> bytes, std::uint8_t seed) {
  for (std::size_t i = 0; i < bytes.size(); ++i)
    if (bytes[i] != pattern_byte(i, seed)) return i;
  return bytes.size();
}

bool all_zero(std::span<const std::byte> bytes) {
  for (std::byte b : bytes)
    if (b != std::byte{0}) return false;
  return true;
}

ShmOptions small_options(std::size_t size_bytes, bool prefer_hugepages) {
  ShmOptions options;
  options.name = "weft-shm-test";
  options.size_bytes = size_bytes;
  options.prefer_hugepages = prefer_hugepages;
  return options;
}

// A connected AF_UNIX stream pair, closed on destruction.
struct SocketPair {
  UniqueFd a;
  UniqueFd b;
};
SocketPair socket_pair() {
  int sv[2] = {-1, -1};
  EXPECT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0) << std::strerror(errno);
  return SocketPair{UniqueFd(sv[0]), UniqueFd(sv[1])};
}

std::size_t open_fd_count() {
  std::size_t n = 0;
  for (const auto& entry : std::filesystem::directory_iterator("/proc/self/fd")) {
    (void)entry;
    ++n;
  }
  return n;
}

// Waits for `pid` at most `bound`, then kills it; returns the wait status (or -1 if waitpid failed).
int wait_bounded(pid_t pid, std::chrono::seconds bound) {
  const auto deadline = std::chrono::steady_clock::now() + bound;
  int status = 0;
  for (;;) {
    const pid_t r = waitpid(pid, &status, WNOHANG);
    if (r == pid) return status;
    if (r < 0 && errno != EINTR) return -1;
    if (std::chrono::steady_clock::now() >= deadline) {
      ADD_FAILURE() << "child " << pid << " still running after " << bound.count() << " s; killing it";
      kill(pid, SIGKILL);
      while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
      }
      return status;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
}

TEST(SharedMemory, CreateWithoutHugepagesGivesAMemfdAndSaysWhy) {
  // Given
  Result<SharedMemory> shm = SharedMemory::create(small_options(5000, false));

  // Expect: 4 KiB pages, the size rounded up to whole pages, zeroed and writable.
  ASSERT_TRUE(shm.ok()) << shm.error().message;
  EXPECT_EQ(shm->backing(), ShmBacking::kMemfd);
  EXPECT_FALSE(shm->fallback_reason().empty());
  EXPECT_NE(shm->describe().find("memfd"), std::string::npos) << shm->describe();
  EXPECT_EQ(shm->page_bytes(), kSmallPage);
  EXPECT_EQ(shm->size(), 2 * kSmallPage);
  ASSERT_NE(shm->data(), nullptr);
  EXPECT_GE(shm->fd(), 0);
  EXPECT_EQ(shm->bytes().size(), shm->size());
  EXPECT_TRUE(all_zero(shm->bytes()));
  fill_pattern(shm->bytes(), 1);
  EXPECT_EQ(first_mismatch(shm->bytes(), 1), shm->size());
}

TEST(SharedMemory, CreateWithHugepagesGivesHugetlbOrAReportedFallback) {
  // Given: the machine may or may not have 2 MiB pages reserved; both outcomes are valid.
  Result<SharedMemory> shm = SharedMemory::create(small_options(1u << 20, true));
  ASSERT_TRUE(shm.ok()) << shm.error().message;
  const std::string description = shm->describe();
  std::printf("shared memory with hugepages preferred: %s (free 2 MiB hugepages: %zu)\n", description.c_str(),
              free_hugepages());
  RecordProperty("backing", std::string(backing_name(shm->backing())));
  RecordProperty("fallback_reason", shm->fallback_reason());

  // Expect
  if (shm->backing() == ShmBacking::kHugeTlbMemfd) {
    EXPECT_TRUE(shm->fallback_reason().empty()) << shm->fallback_reason();
    EXPECT_EQ(shm->page_bytes(), kHugePage);
    EXPECT_EQ(shm->size(), kHugePage);
  } else {
    EXPECT_EQ(shm->backing(), ShmBacking::kMemfd);
    EXPECT_NE(shm->fallback_reason().find("hugepages"), std::string::npos) << shm->fallback_reason();
    EXPECT_NE(description.find(shm->fallback_reason()), std::string::npos) << description;
    EXPECT_EQ(shm->page_bytes(), kSmallPage);
    EXPECT_EQ(shm->size(), std::size_t{1} << 20);
  }
  // Expect: the whole mapping is usable either way.
  fill_pattern(shm->bytes(), 2);
  EXPECT_EQ(first_mismatch(shm->bytes(), 2), shm->size());
}

TEST(SharedMemory, HugetlbfsFileIsCreatedReopenableAndRemoved) {
  if (geteuid() != 0) GTEST_SKIP() << "hugetlbfs: mounting one for the test needs root";
  // Given: a child in a private mount namespace, with a hugetlbfs of its own (gone with it).
  std::fflush(stdout);
  const pid_t pid = fork();
  ASSERT_GE(pid, 0) << std::strerror(errno);
  if (pid == 0) {
    alarm(30);
    if (unshare(CLONE_NEWNS) != 0) _exit(20);
    if (mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0) _exit(21);
    char dir[] = "/tmp/weft-hugetlbfs-XXXXXX";
    if (mkdtemp(dir) == nullptr) _exit(22);
    const int mounted = mount("nodev", dir, "hugetlbfs", 0, "pagesize=2M");
    int code = 0;
    if (mounted == 0) {
      ShmOptions options;
      options.name = "ring";
      options.size_bytes = 4096;
      options.hugetlbfs_dir = dir;
      const std::string path = std::string(dir) + "/ring";
      {
        Result<SharedMemory> shm = SharedMemory::create(options);
        if (!shm.ok()) {
          code = 23;
        } else if (shm->backing() == ShmBacking::kHugeTlbFsFile) {
          // Expect: a file another process could open by path and map, 2 MiB pages, removed after.
          std::memset(shm->data(), 0x5A, 64);
          if (shm->size() != (2u << 20) || !std::filesystem::exists(path)) code = 24;
          UniqueFd reopened(open(path.c_str(), O_RDWR | O_CLOEXEC));
          Result<SharedMemory> again = SharedMemory::map(std::move(reopened));
          if (code == 0 && (!again.ok() || again->size() != shm->size() || again->data()[63] != std::byte{0x5A}))
            code = 28;
        } else if (shm->backing() != ShmBacking::kMemfd || shm->fallback_reason().empty()) {
          code = 25;  // without free hugepages the fallback must say why
        }
      }
      if (code == 0 && std::filesystem::exists(path)) code = 26;
      umount(dir);
    } else {
      code = 27;  // no hugetlbfs in this kernel: reported below, not a failure of the code
    }
    rmdir(dir);
    _exit(code);
  }
  const int status = wait_bounded(pid, std::chrono::seconds(30));
  ASSERT_TRUE(WIFEXITED(status)) << "child status " << status;
  if (WEXITSTATUS(status) == 27) GTEST_SKIP() << "hugetlbfs: the kernel refused the mount";
  EXPECT_EQ(WEXITSTATUS(status), 0)
      << "20-22 setup, 23 create, 24 file or size, 25 fallback, 26 not removed, 28 reopened file not mappable";
}

TEST(SharedMemory, CreateRejectsSizeZero) {
  for (bool huge : {false, true}) {
    // Given
    Result<SharedMemory> shm = SharedMemory::create(small_options(0, huge));
    // Expect
    ASSERT_FALSE(shm.ok());
    EXPECT_EQ(shm.error().code, Errc::kInvalidArgument) << shm.error().message;
  }
}

TEST(SharedMemory, WritesThroughOneMappingAreVisibleThroughASecondMapping) {
  // Given: the same memfd mapped twice.
  Result<SharedMemory> first = SharedMemory::create(small_options(64 * 1024, false));
  ASSERT_TRUE(first.ok()) << first.error().message;
  const int dup_fd = dup(first->fd());
  ASSERT_GE(dup_fd, 0) << std::strerror(errno);
  Result<SharedMemory> second = SharedMemory::map(UniqueFd(dup_fd));
  ASSERT_TRUE(second.ok()) << second.error().message;
  ASSERT_EQ(second->size(), first->size());
  EXPECT_EQ(second->backing(), ShmBacking::kMemfd);
  EXPECT_NE(second->data(), first->data());

  // When / Expect: each side sees what the other wrote.
  fill_pattern(first->bytes(), 3);
  EXPECT_EQ(first_mismatch(second->bytes(), 3), second->size());
  fill_pattern(second->bytes().subspan(4096, 4096), 4);
  EXPECT_EQ(first_mismatch(first->bytes().subspan(4096, 4096), 4), 4096u);
}

// Kilobytes of the mapping that starts at `start` with page table entries present (Rss in
// /proc/self/smaps), or -1 when no mapping starts there.
long resident_kib(const void* start) {
  std::ifstream smaps("/proc/self/smaps");
  std::ostringstream hex;
  hex << std::hex << reinterpret_cast<std::uintptr_t>(start) << '-';
  bool in_mapping = false;
  for (std::string line; std::getline(smaps, line);) {
    if (line.rfind(hex.str(), 0) == 0) {
      in_mapping = true;
    } else if (in_mapping && line.rfind("Rss:", 0) == 0) {
      return std::stol(line.substr(4));
    }
  }
  return -1;
}

TEST(SharedMemory, EveryPageOfA4KiBMappingIsFaultedInBeforeItIsHandedOut) {
  // Given 4 KiB pages (no hugepages asked for), made here and mapped again as a peer maps them
  constexpr std::size_t kBytes = std::size_t{1} << 20;
  Result<SharedMemory> made = SharedMemory::create(small_options(kBytes, false));
  ASSERT_TRUE(made.ok()) << made.error().message;
  const int dup_fd = dup(made->fd());
  ASSERT_GE(dup_fd, 0) << std::strerror(errno);
  Result<SharedMemory> mapped = SharedMemory::map(UniqueFd(dup_fd));
  ASSERT_TRUE(mapped.ok()) << mapped.error().message;
  // Expect every page present in both mappings already: the hot path takes no page fault
  EXPECT_EQ(resident_kib(made->data()), static_cast<long>(kBytes / 1024));
  EXPECT_EQ(resident_kib(mapped->data()), static_cast<long>(kBytes / 1024));
}

TEST(SharedMemory, CreatedMemoryCannotBeResizedByAPeer) {
  // Given
  Result<SharedMemory> shm = SharedMemory::create(small_options(8192, false));
  ASSERT_TRUE(shm.ok()) << shm.error().message;

  // Expect: the size is sealed, so no holder of the fd can shrink it under a mapping.
  const int shrink = ftruncate(shm->fd(), 4096);
  const int shrink_errno = errno;
  EXPECT_NE(shrink, 0);
  EXPECT_EQ(shrink_errno, EPERM) << std::strerror(shrink_errno);
  EXPECT_NE(ftruncate(shm->fd(), 16384), 0);
  EXPECT_EQ(shm->size(), 8192u);
}

TEST(SharedMemory, MapRejectsAnFdOfSizeZero) {
  // Given: a memfd that was never sized.
  const int fd = memfd_create("weft-empty", MFD_CLOEXEC);
  ASSERT_GE(fd, 0) << std::strerror(errno);

  // Expect
  Result<SharedMemory> shm = SharedMemory::map(UniqueFd(fd));
  ASSERT_FALSE(shm.ok());
  EXPECT_EQ(shm.error().code, Errc::kInvalidArgument) << shm.error().message;
  EXPECT_NE(shm.error().message.find("size 0"), std::string::npos) << shm.error().message;
}

TEST(SharedMemory, MapRefusesAMemfdThatCouldStillShrink) {
  // Given: memory from a peer that did not seal its size.
  UniqueFd fd(memfd_create("weft-unsealed", MFD_CLOEXEC | MFD_ALLOW_SEALING));
  ASSERT_TRUE(fd.valid());
  ASSERT_EQ(ftruncate(fd.get(), 4096), 0);
  // Expect
  Result<SharedMemory> mapped = SharedMemory::map(std::move(fd));
  ASSERT_FALSE(mapped.ok());
  EXPECT_EQ(mapped.error().code, Errc::kFailedPrecondition);
  EXPECT_NE(mapped.error().message.find("F_SEAL_SHRINK"), std::string::npos);
}

TEST(SharedMemory, MapRejectsAnInvalidFd) {
  // Expect: an error, not a crash.
  Result<SharedMemory> shm = SharedMemory::map(UniqueFd());
  ASSERT_FALSE(shm.ok());
  EXPECT_EQ(shm.error().code, Errc::kInvalidArgument) << shm.error().message;
}

TEST(SharedMemory, MoveTransfersTheMapping) {
  // Given
  Result<SharedMemory> created = SharedMemory::create(small_options(4096, false));
  ASSERT_TRUE(created.ok()) << created.error().message;
  SharedMemory a = std::move(created.value());
  std::byte* const data = a.data();
  fill_pattern(a.bytes(), 5);

  // When
  SharedMemory b = std::move(a);
  Result<SharedMemory> other = SharedMemory::create(small_options(4096, false));
  ASSERT_TRUE(other.ok()) << other.error().message;
  SharedMemory c = std::move(other.value());
  c = std::move(b);

  // Expect: one owner of the mapping at a time.
  EXPECT_EQ(a.data(), nullptr);  // NOLINT(bugprone-use-after-move): checking the moved-from state
  EXPECT_EQ(b.data(), nullptr);  // NOLINT(bugprone-use-after-move)
  EXPECT_EQ(c.data(), data);
  EXPECT_EQ(first_mismatch(c.bytes(), 5), c.size());
}

TEST(SendFd, ReceivedFdMapsTheSameMemoryAndCarriesThePayload) {
  // Given
  Result<SharedMemory> shm = SharedMemory::create(small_options(16384, false));
  ASSERT_TRUE(shm.ok()) << shm.error().message;
  SocketPair sockets = socket_pair();
  const std::string payload = "ring:partition-7";

  // When
  ASSERT_TRUE(send_fd(sockets.a.get(), shm->fd(), std::as_bytes(std::span(payload))).ok());
  std::byte received_payload[64] = {};
  std::size_t received = 0;
  Result<UniqueFd> fd = receive_fd(sockets.b.get(), received_payload, received);

  // Expect
  ASSERT_TRUE(fd.ok()) << fd.error().message;
  ASSERT_EQ(received, payload.size());
  EXPECT_EQ(std::memcmp(received_payload, payload.data(), payload.size()), 0);
  Result<SharedMemory> mapped = SharedMemory::map(std::move(fd.value()));
  ASSERT_TRUE(mapped.ok()) << mapped.error().message;
  ASSERT_EQ(mapped->size(), shm->size());
  fill_pattern(mapped->bytes(), 6);
  EXPECT_EQ(first_mismatch(shm->bytes(), 6), shm->size());
}

TEST(SendFd, WorksWithAnEmptyPayload) {
  // Given
  Result<SharedMemory> shm = SharedMemory::create(small_options(4096, false));
  ASSERT_TRUE(shm.ok()) << shm.error().message;
  SocketPair sockets = socket_pair();

  // When
  ASSERT_TRUE(send_fd(sockets.a.get(), shm->fd(), {}).ok());
  std::size_t received = 99;
  Result<UniqueFd> fd = receive_fd(sockets.b.get(), {}, received);

  // Expect
  ASSERT_TRUE(fd.ok()) << fd.error().message;
  EXPECT_EQ(received, 0u);
  EXPECT_TRUE(fd->valid());
}

TEST(SendFd, ChildProcessMapsTheReceivedFdAndWritesAPattern) {
  // Given: memory the parent created and marked, and a socket to a forked child.
  Result<SharedMemory> shm = SharedMemory::create(small_options(256 * 1024, false));
  ASSERT_TRUE(shm.ok()) << shm.error().message;
  const std::size_t size = shm->size();
  fill_pattern(shm->bytes().first(4096), 7);  // the parent's mark, which the child checks
  SocketPair sockets = socket_pair();
  const std::string payload = "size=" + std::to_string(size);

  std::fflush(stdout);
  const pid_t pid = fork();
  ASSERT_GE(pid, 0) << std::strerror(errno);
  if (pid == 0) {
    // Child: never returns into the test framework; the exit code names the failed step.
    alarm(30);  // a child that never hears from the parent dies rather than lingering
    sockets.a = UniqueFd();
    std::byte got[64] = {};
    std::size_t received = 0;
    Result<UniqueFd> fd = receive_fd(sockets.b.get(), got, received);
    if (!fd.ok()) _exit(10);
    if (received != payload.size() || std::memcmp(got, payload.data(), received) != 0) _exit(11);
    Result<SharedMemory> mapped = SharedMemory::map(std::move(fd.value()));
    if (!mapped.ok()) _exit(12);
    if (mapped->size() != size) _exit(13);
    if (first_mismatch(mapped->bytes().first(4096), 7) != 4096) _exit(14);
    fill_pattern(mapped->bytes(), 8);
    _exit(0);
  }

  // When
  sockets.b = UniqueFd();
  const Result<void> sent = send_fd(sockets.a.get(), shm->fd(), std::as_bytes(std::span(payload)));
  const int status = wait_bounded(pid, std::chrono::seconds(30));

  // Expect
  ASSERT_TRUE(sent.ok()) << sent.error().message;
  ASSERT_TRUE(WIFEXITED(status)) << "child status " << status;
  ASSERT_EQ(WEXITSTATUS(status), 0) << "10 receive, 11 payload, 12 map, 13 size, 14 parent's mark";
  EXPECT_EQ(first_mismatch(shm->bytes(), 8), size);
}

TEST(ReceiveFd, MessageWithoutAnFdIsAnErrorNotACrash) {
  // Given: plain bytes, no SCM_RIGHTS.
  SocketPair sockets = socket_pair();
  const char text[] = "no fd here";
  ASSERT_EQ(write(sockets.a.get(), text, sizeof text), static_cast<ssize_t>(sizeof text));

  // When
  std::byte got[64] = {};
  std::size_t received = 0;
  Result<UniqueFd> fd = receive_fd(sockets.b.get(), got, received);

  // Expect
  ASSERT_FALSE(fd.ok());
  EXPECT_EQ(fd.error().code, Errc::kInvalidArgument) << fd.error().message;
  EXPECT_NE(fd.error().message.find("no file descriptor"), std::string::npos) << fd.error().message;
  EXPECT_EQ(received, sizeof text);
}

TEST(ReceiveFd, ClosedPeerIsUnavailable) {
  // Given
  SocketPair sockets = socket_pair();
  sockets.a = UniqueFd();

  // When
  std::byte got[8] = {};
  std::size_t received = 0;
  Result<UniqueFd> fd = receive_fd(sockets.b.get(), got, received);

  // Expect
  ASSERT_FALSE(fd.ok());
  EXPECT_EQ(fd.error().code, Errc::kUnavailable) << fd.error().message;
}

TEST(ReceiveFd, MoreFdsThanExpectedAreRefusedWithoutLeakingAny) {
  // Two fit in the receiver's control buffer (CMSG_SPACE padding); three also truncate it.
  for (std::size_t count : {std::size_t{2}, std::size_t{3}}) {
    SCOPED_TRACE(std::to_string(count) + " descriptors");
    // Given: a peer that sends several descriptors in one message.
    SocketPair sockets = socket_pair();
    Result<SharedMemory> shm = SharedMemory::create(small_options(4096, false));
    ASSERT_TRUE(shm.ok()) << shm.error().message;
    const int fds[3] = {shm->fd(), shm->fd(), shm->fd()};
    const std::size_t fd_bytes = count * sizeof(int);
    char byte = 'x';
    iovec iov{&byte, 1};
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof fds)] = {};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control;
    msg.msg_controllen = CMSG_SPACE(fd_bytes);
    cmsghdr* cmsg = CMSG_FIRSTHDR(&msg);
    cmsg->cmsg_level = SOL_SOCKET;
    cmsg->cmsg_type = SCM_RIGHTS;
    cmsg->cmsg_len = CMSG_LEN(fd_bytes);
    std::memcpy(CMSG_DATA(cmsg), fds, fd_bytes);
    ASSERT_EQ(sendmsg(sockets.a.get(), &msg, 0), 1) << std::strerror(errno);
    const std::size_t fds_before = open_fd_count();

    // When
    std::byte got[8] = {};
    std::size_t received = 0;
    Result<UniqueFd> fd = receive_fd(sockets.b.get(), got, received);

    // Expect: an error, and no descriptor left open in this process.
    ASSERT_FALSE(fd.ok());
    EXPECT_EQ(fd.error().code, Errc::kInvalidArgument) << fd.error().message;
    EXPECT_EQ(open_fd_count(), fds_before);
  }
}

}  // namespace
}  // namespace weft
