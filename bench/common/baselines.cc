#include "baselines.h"

#include <sched.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <signal.h>
#include <unistd.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <fstream>
#include <memory>
#include <thread>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace weft::bench {
namespace {

using Clock = std::chrono::steady_clock;

// Tells the compiler the memory behind `p` is read, so copies into it are not elided.
inline void keep(const void* p) { asm volatile("" : : "r"(p) : "memory"); }

std::string read_first_line(const char* path) {
  std::ifstream in(path);
  std::string line;
  std::getline(in, line);
  return line;
}

}  // namespace

namespace {
// The affinity the process started with, so unpin() gives back exactly that.
const cpu_set_t kStartAffinity = [] {
  cpu_set_t set;
  CPU_ZERO(&set);
  sched_getaffinity(0, sizeof set, &set);
  return set;
}();
}  // namespace

bool pin_to_cpu(int cpu) noexcept {
  if (cpu < 0) return false;
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(static_cast<std::size_t>(cpu), &set);
  return sched_setaffinity(0, sizeof set, &set) == 0;
}

void unpin() noexcept { sched_setaffinity(0, sizeof kStartAffinity, &kStartAffinity); }

int cpu_count() noexcept { return static_cast<int>(sysconf(_SC_NPROCESSORS_ONLN)); }

double memcpy_gb_per_sec(std::size_t buffer_bytes, double seconds) {
  std::vector<char> source(buffer_bytes, 1);
  std::vector<char> destination(buffer_bytes, 0);
  std::memcpy(destination.data(), source.data(), buffer_bytes);  // fault everything in first
  std::uint64_t copied = 0;
  const auto start = Clock::now();
  const auto until = start + std::chrono::duration<double>(seconds);
  auto now = start;
  do {
    std::memcpy(destination.data(), source.data(), buffer_bytes);
    keep(destination.data());
    copied += buffer_bytes;
    now = Clock::now();
  } while (now < until);
  return static_cast<double>(copied) / std::chrono::duration<double>(now - start).count() / 1e9;
}

double tcp_loopback_gb_per_sec(double seconds) {
  const int listener = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (listener < 0) return -1;
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t length = sizeof address;
  if (::bind(listener, reinterpret_cast<sockaddr*>(&address), sizeof address) != 0 || ::listen(listener, 1) != 0 ||
      ::getsockname(listener, reinterpret_cast<sockaddr*>(&address), &length) != 0) {
    ::close(listener);
    return -1;
  }
  const int sender = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (sender < 0 || ::connect(sender, reinterpret_cast<sockaddr*>(&address), sizeof address) != 0) {
    ::close(listener);
    if (sender >= 0) ::close(sender);
    return -1;
  }
  const int receiver = ::accept(listener, nullptr, nullptr);
  ::close(listener);
  if (receiver < 0) {
    ::close(sender);
    return -1;
  }
  std::atomic<std::uint64_t> received{0};
  std::thread reader([&] {
    std::vector<char> buffer(std::size_t{256} << 10);
    for (;;) {
      const ssize_t got = ::recv(receiver, buffer.data(), buffer.size(), 0);
      if (got <= 0) return;
      received.fetch_add(static_cast<std::uint64_t>(got), std::memory_order_relaxed);
    }
  });
  std::vector<char> block(std::size_t{256} << 10, 7);
  const auto start = Clock::now();
  const auto until = start + std::chrono::duration<double>(seconds);
  while (Clock::now() < until)
    if (::send(sender, block.data(), block.size(), MSG_NOSIGNAL) < 0) break;
  ::shutdown(sender, SHUT_WR);
  reader.join();
  const double elapsed = std::chrono::duration<double>(Clock::now() - start).count();
  ::close(sender);
  ::close(receiver);
  return static_cast<double>(received.load()) / elapsed / 1e9;
}

double pingpong_one_way_ns(int cpu_a, int cpu_b, std::uint64_t round_trips) {
  struct alignas(128) Line {
    std::atomic<std::uint64_t> ping;
    char pad[120];
    std::atomic<std::uint64_t> pong;
  };
  void* memory = mmap(nullptr, sizeof(Line), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (memory == MAP_FAILED) return -1;
  auto* line = new (memory) Line{};
  constexpr int kBatches = 9;
  const std::uint64_t per_batch = std::max<std::uint64_t>(round_trips / kBatches, 1000);
  const std::uint64_t total = per_batch * kBatches;
  const pid_t parent = getpid();
  const pid_t child = fork();
  if (child < 0) {
    munmap(memory, sizeof(Line));
    return -1;
  }
  if (child == 0) {
    pin_to_cpu(cpu_b);
    for (std::uint64_t i = 1; i <= total; ++i) {
      // Acquire/release: each side hands the line over with one store the other spins on.
      for (std::uint32_t spins = 0; line->ping.load(std::memory_order_acquire) != i; ++spins) {
#if defined(__x86_64__)
        _mm_pause();
#endif
        if (spins == (1u << 24)) {
          if (getppid() != parent) _exit(1);  // the parent is gone: stop spinning
          spins = 0;
        }
      }
      line->pong.store(i, std::memory_order_release);
    }
    _exit(0);
  }
  pin_to_cpu(cpu_a);
  // Bounded: no pong 30 s after the start means the child is gone.
  const auto give_up = [start = Clock::now()] { return Clock::now() - start > std::chrono::seconds(30); };
  std::vector<double> batch_ns;
  std::uint64_t i = 0;
  for (int b = 0; b < kBatches; ++b) {
    const auto start = Clock::now();
    for (std::uint64_t k = 0; k < per_batch; ++k) {
      ++i;
      line->ping.store(i, std::memory_order_release);
      for (std::uint32_t spins = 0; line->pong.load(std::memory_order_acquire) != i; ++spins) {
#if defined(__x86_64__)
        _mm_pause();
#endif
        if (spins == (1u << 24)) {
          if (give_up()) {
            kill(child, SIGKILL);
            waitpid(child, nullptr, 0);
            munmap(memory, sizeof(Line));
            return -1;
          }
          spins = 0;
        }
      }
    }
    batch_ns.push_back(std::chrono::duration<double, std::nano>(Clock::now() - start).count() /
                       static_cast<double>(per_batch));
  }
  int status = 0;
  waitpid(child, &status, 0);
  munmap(memory, sizeof(Line));
  std::sort(batch_ns.begin(), batch_ns.end());
  return batch_ns[batch_ns.size() / 2] / 2.0;
}

double cross_core_stream_gb_per_sec(int cpu_a, int cpu_b, std::size_t buffer_bytes, double seconds) {
  constexpr std::size_t kBlock = 4096;
  struct alignas(64) Control {
    std::atomic<std::uint64_t> head;  // bytes published by the writer
    char pad1[56];
    std::atomic<std::uint64_t> tail;  // bytes freed by the reader
    char pad2[56];
    std::atomic<std::uint32_t> stop;
  };
  const std::size_t ring_bytes = std::max(buffer_bytes / kBlock, std::size_t{2}) * kBlock;
  const std::size_t mapped = sizeof(Control) + ring_bytes;
  void* memory = mmap(nullptr, mapped, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (memory == MAP_FAILED) return -1;
  std::memset(memory, 0, mapped);  // faulted in before the clock starts
  auto* control = new (memory) Control{};
  auto* ring = static_cast<char*>(memory) + sizeof(Control);
  const pid_t parent = getpid();
  const pid_t child = fork();
  if (child < 0) {
    munmap(memory, mapped);
    return -1;
  }
  if (child == 0) {
    pin_to_cpu(cpu_b);
    std::uint64_t position = 0;
    std::uint64_t sum = 0;
    for (std::uint32_t spins = 0;;) {
      // Acquire: the block's bytes were written before the writer's release of `head`.
      const std::uint64_t head = control->head.load(std::memory_order_acquire);
      if (head == position) {
        if (control->stop.load(std::memory_order_acquire) != 0) break;
#if defined(__x86_64__)
        _mm_pause();
#endif
        if (++spins == (1u << 24)) {
          if (getppid() != parent) _exit(1);  // the writer is gone: stop spinning
          spins = 0;
        }
        continue;
      }
      for (; position < head; position += kBlock) {
        const char* block = ring + position % ring_bytes;
        for (std::size_t i = 0; i < kBlock; i += 8) {
          std::uint64_t word;
          std::memcpy(&word, block + i, 8);
          sum += word;
        }
      }
      // Release: the reads of the freed blocks happen before the writer may reuse them.
      control->tail.store(position, std::memory_order_release);
    }
    _exit(sum == 1 ? 2 : 0);  // the sum is used, so the reads are not elided
  }
  pin_to_cpu(cpu_a);
  std::vector<char> source(std::size_t{1} << 20, 7);
  const auto give_up = [start = Clock::now()] { return Clock::now() - start > std::chrono::seconds(30); };
  std::uint64_t position = 0;
  bool failed = false;
  const auto start = Clock::now();
  const auto until = start + std::chrono::duration<double>(seconds);
  for (std::uint64_t blocks = 0; !failed; ++blocks) {
    if (blocks % 64 == 0 && Clock::now() >= until) break;
    // Acquire: pairs with the reader's release of `tail`.
    for (std::uint32_t spins = 0; position + kBlock - control->tail.load(std::memory_order_acquire) > ring_bytes; ++spins) {
#if defined(__x86_64__)
      _mm_pause();
#endif
      if (spins == (1u << 20)) {
        spins = 0;
        if (give_up()) {  // the reader is gone or stuck
          failed = true;
          break;
        }
      }
    }
    if (failed) break;
    std::memcpy(ring + position % ring_bytes, source.data() + position % source.size(), kBlock);
    position += kBlock;
    control->head.store(position, std::memory_order_release);  // publishes the block
  }
  // Counted once the reader has taken every block.
  while (!failed && control->tail.load(std::memory_order_acquire) != position) {
    if (give_up()) failed = true;
  }
  const double elapsed = std::chrono::duration<double>(Clock::now() - start).count();
  control->stop.store(1, std::memory_order_release);
  if (failed) kill(child, SIGKILL);
  waitpid(child, nullptr, 0);
  munmap(memory, mapped);
  return failed ? -1 : static_cast<double>(position) / elapsed / 1e9;
}

std::string placement_warning(double pingpong_before_ns, double pingpong_after_ns) {
  // A hand-off far below any cross-core figure: the two cpus shared a physical core.
  constexpr double kSameCoreNs = 30.0;
  auto figure = [](double ns) { return std::to_string(static_cast<long long>(ns + 0.5)) + " ns"; };
  for (const double ns : {pingpong_before_ns, pingpong_after_ns})
    if (ns > 0 && ns < kSameCoreNs) return "ping-pong " + figure(ns) + ": the two cpus likely shared a physical core; ratios not comparable";
  if (pingpong_before_ns <= 0 || pingpong_after_ns <= 0) return {};
  const double ratio = std::max(pingpong_before_ns, pingpong_after_ns) / std::min(pingpong_before_ns, pingpong_after_ns);
  if (ratio > 1.5)
    return "ping-pong " + figure(pingpong_before_ns) + " before the runs, " + figure(pingpong_after_ns) +
           " after: the cpus' placement changed during the run; compare only runs that saw one placement";
  return {};
}

std::string topology() {
  std::string model;
  std::ifstream cpuinfo("/proc/cpuinfo");
  for (std::string line; std::getline(cpuinfo, line);) {
    if (line.rfind("model name", 0) == 0) {
      model = line.substr(line.find(':') + 2);
      break;
    }
  }
  const std::string siblings = read_first_line("/sys/devices/system/cpu/cpu0/topology/thread_siblings_list");
  const bool smt = siblings.find_first_of(",-") != std::string::npos;
  int nodes = 0;
  for (int n = 0; n < 64; ++n) {
    std::ifstream node("/sys/devices/system/node/node" + std::to_string(n) + "/cpulist");
    if (node) ++nodes;
  }
  return std::to_string(cpu_count()) + " cpus, SMT siblings: " + (smt ? "yes" : "no") +
         ", NUMA nodes: " + std::to_string(std::max(nodes, 1)) + ", " + model;
}

}  // namespace weft::bench
