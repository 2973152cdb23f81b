// The Kafka listener's event loop: one thread, epoll, non-blocking sockets. It frames requests,
// hands them to the Broker one at a time per connection (Kafka answers each connection's requests
// in order), parks the ones that must wait and sends responses (sendfile for segment regions).
#include "weft/kafka/listener.h"

#include "weft/fabric/socket_address.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/prctl.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <bit>
#include <cerrno>
#include <cstring>
#include <mutex>
#include <thread>
#include <unordered_map>

#include "broker.h"
#include "weft/fabric/log.h"
#include "weft/fabric/record_batch.h"
#include "weft/fabric/thread_name.h"

namespace weft::kafka {

using detail::Broker;
using detail::OutChunk;
using detail::Outcome;
using detail::Parked;

namespace {

constexpr std::uint64_t kListenTag = 0;
constexpr std::uint64_t kWakeTag = 1;
constexpr std::size_t kReadChunk = 256 * 1024;
// A connection keeps a buffer up to this between requests, outside the budget for large frames
// (a client sending ~1 MB produces would otherwise fault a fresh buffer in for each).
constexpr std::size_t kKeptBuffer = 4 * kReadChunk;
constexpr std::size_t kMaxQueuedResponseBytes = std::size_t{8} << 20;  // stop reading requests past it
constexpr std::size_t kMinFrameBytes = 10;
constexpr std::size_t kMaxPipelined = 64;  // produces in flight per connection
constexpr int kMaxRequestsPerPass = 1024;   // taken from one connection's buffer before the others' turn
// A segment region goes out in sendfile calls of what the page cache holds of its next window,
// looked at in steps: what is not read in yet is read ahead while the loop serves other
// connections, instead of sendfile waiting on the disk inside the loop, and what is read in goes
// out meanwhile (the read and the send overlap, as inside a blocking sendfile).
constexpr std::size_t kSendfileWindow = std::size_t{1} << 20;
constexpr std::size_t kCacheCheckStep = std::size_t{128} << 10;
// A connection waiting on the disk looks again after 20 µs times the number waiting, at most
// 1 ms: one cold reader is sent to as soon as its pages arrive, and many do not keep the loop
// busy asking (about one look per 20 µs in all).
constexpr std::int64_t kDiskWaitCheckNs = 20'000;
constexpr std::int64_t kMaxDiskWaitCheckNs = 1'000'000;
constexpr std::int64_t kMaxDiskWaitNs = 50'000'000;  // then it sends anyway: pages the cache keeps dropping

struct Connection {
  std::uint64_t id = 0;
  UniqueFd fd;
  std::string peer;
  std::string host;
  std::vector<std::byte> in;
  std::size_t in_start = 0;  // first byte not yet taken by a request
  std::size_t in_end = 0;
  std::deque<OutChunk> out;
  std::size_t out_bytes = 0;
  // Requests taken and not yet answered, oldest first; responses leave in this order. Produces
  // waiting only for acknowledgements (their batches are in the ring already) let the next
  // Produce be taken behind them, so a client's pipelined batches reach the log together;
  // anything else waits for the queue to drain. A request that still needs its frame (a produce
  // waiting for ring space, a fetch, a group join) keeps it in `in` and stops the reading.
  struct Pending {
    std::unique_ptr<Parked> parked;   // null once answered
    std::vector<OutChunk> response;   // ready, waiting for the ones before it
    bool ready = false;
    bool no_response = false;         // acks=0
    std::size_t frame_bytes = 0;      // still in `in` (only the last one may keep its frame)
    std::int16_t api_key = 0;
    std::int16_t error = 0;
    std::int64_t arrived_ns = 0;
  };
  std::deque<Pending> pending;
  bool blocked() const noexcept { return !pending.empty() && pending.back().frame_bytes > 0; }
  bool busy() const noexcept { return !pending.empty(); }
  std::int64_t last_active_ms = 0;
  std::int64_t last_sent_ms = 0;  // when the socket last took response bytes (or they began to wait)
  std::uint32_t events = 0;  // registered with epoll
  std::int64_t disk_wait_since_ns = 0;  // the front file region is being read ahead (0: not waiting)
  std::int64_t disk_check_at_ns = 0;     // when the wait looks again
  // A frame larger than the base buffer (kReadChunk) is read into a buffer grown to its size,
  // with the excess taken from the listener's budget first (max_buffered_request_bytes): what
  // this connection holds of it, and whether it waits for some to be given back.
  std::size_t reserved = 0;
  bool waiting_for_memory = false;
};

// Whether a whole frame waits in the connection's buffer for the requests before it: reading
// more would only grow the buffer.
bool whole_frame_buffered(const Connection& c) {
  if (c.in_end - c.in_start < 4) return false;
  return c.in_end - c.in_start >= std::size_t{static_cast<std::uint32_t>(wire::load_be32(c.in.data() + c.in_start))} + 4;
}

std::int64_t now_ms() { return monotonic_ns() / 1'000'000; }

// Whether every page of [offset, offset + length) is in the page cache, by cachestat(2) (Linux
// 6.5), which leaves the file's read-ahead state alone (a RWF_NOWAIT read would start a small
// read of its own and reset it). A kernel without it says yes: sendfile then behaves as it
// always did. The numbers are the kernel's ABI (the same on every architecture); Debian 12's
// headers predate them.
bool in_page_cache(int file, std::uint64_t offset, std::uint64_t length) {
  struct Range {
    std::uint64_t offset, length;
  } range{offset, length};
  struct Stat {
    std::uint64_t cached, dirty, writeback, evicted, recently_evicted;
  } stat{};
  constexpr long kCachestat = 451;
  static std::atomic<bool> missing{false};
  if (missing.load(std::memory_order_relaxed)) return true;  // relaxed: a hint, set once
  if (::syscall(kCachestat, file, &range, &stat, 0) != 0) {
    if (errno == ENOSYS) missing.store(true, std::memory_order_relaxed);
    return true;
  }
  static const auto page = static_cast<std::uint64_t>(::sysconf(_SC_PAGESIZE));  // what cachestat counts in
  const std::uint64_t pages = (offset + length + page - 1) / page - offset / page;
  return stat.cached >= pages;
}

// How much of [offset, offset + length) from its start is in the page cache, in whole steps.
std::uint64_t cached_prefix(int file, std::uint64_t offset, std::uint64_t length) {
  std::uint64_t ready = 0;
  while (ready < length) {
    const std::uint64_t step = std::min<std::uint64_t>(kCacheCheckStep, length - ready);
    if (!in_page_cache(file, offset + ready, step)) break;
    ready += step;
  }
  return ready;
}

// Of the next `window` bytes of a file chunk, how many from where it stands the page cache
// holds, with the read-ahead sending it asks for. What an earlier look found cached is not asked
// again: a socket that takes less than a window per wake-up would otherwise cost eight
// cachestat calls each time.
std::size_t cached_window(OutChunk& chunk, std::size_t window) {
  const int file = chunk.file->get();
  if (!chunk.ahead_advised) {
    // A consumer of a backlog asks for the stretch after this region next: the disk reads it
    // while this one is sent and consumed (an old backlog, or one written with O_DIRECT, is not
    // in the page cache). Advice
    // only: failure changes nothing. At most 4 MiB: the advice allocates the pages, in the loop.
    const std::uint64_t from = chunk.file_offset + chunk.file_bytes;
    const std::uint64_t to = std::min<std::uint64_t>(chunk.readable_end, from + std::min<std::uint64_t>(2 * std::uint64_t{chunk.file_bytes}, 4u << 20));
    if (to > from) (void)::posix_fadvise(file, static_cast<off_t>(from), static_cast<off_t>(to - from), POSIX_FADV_WILLNEED);
    chunk.ahead_advised = true;
  }
  const std::uint64_t at = chunk.file_offset + chunk.sent;
  std::uint64_t cached_to = std::max<std::uint64_t>(chunk.cached_to, at);
  if (cached_to < at + window) cached_to += cached_prefix(file, cached_to, at + window - cached_to);
  chunk.cached_to = cached_to;
  const auto ready = static_cast<std::size_t>(std::min<std::uint64_t>(cached_to - at, window));
  if (ready < window && chunk.advised_to < at + window) {
    // Read the rest in now, and the window after it: it is then on its way while this is sent.
    const std::uint64_t to = std::min<std::uint64_t>(chunk.file_offset + chunk.file_bytes, at + 2 * kSendfileWindow);
    (void)::posix_fadvise(file, static_cast<off_t>(at + ready), static_cast<off_t>(to - at - ready), POSIX_FADV_WILLNEED);
    chunk.advised_to = to;
  }
  return ready;
}

std::size_t latency_bucket(std::int64_t micros) {
  if (micros <= 0) return 0;
  const auto b = static_cast<std::size_t>(std::bit_width(static_cast<std::uint64_t>(micros)));
  return std::min<std::size_t>(b, 23);
}

}  // namespace

struct KafkaListener::Impl {
  Node& node;
  KafkaListenerOptions options;
  UniqueFd listen_fd;
  UniqueFd epoll_fd;
  UniqueFd wake_fd;
  UniqueFd spare_fd = spare_descriptor();  // see shed_waiting_connection
  std::uint16_t port = 0;
  std::unique_ptr<Broker> broker;
  std::unordered_map<std::uint64_t, std::unique_ptr<Connection>> connections;
  std::uint64_t next_id = 2;
  std::atomic<bool> stopping{false};
  std::thread thread;
  mutable std::mutex stats_mutex;  // the loop publishes; stats() and groups() copy
  KafkaListenerStats stats;
  std::vector<GroupListing> groups_snapshot;
  std::int64_t last_tick_ms = 0;
  std::int64_t last_idle_check_ms = 0;
  std::int64_t disk_waiters = 0;  // connections whose disk_wait_since_ns is set
  // Connections that stopped taking requests at the per-pass cap with whole ones still in their
  // buffer: no socket event will come for those, so the next pass takes them up.
  std::vector<std::uint64_t> more_buffered;
  // Large frames' buffers past the base, over all connections (Connection::reserved), and the
  // connections waiting for some of it.
  std::size_t reserved_bytes = 0;
  std::vector<std::uint64_t> memory_waiters;
  // Warnings a client causes at will (the statistics count every one).
  LogRateLimit bad_request_logs{20};
  LogRateLimit refusal_logs{5};

  Impl(Node& n, KafkaListenerOptions o) : node(n), options(std::move(o)) {}

  void run();
  void accept_all();
  void on_event(Connection& c, std::uint32_t events);
  bool read_some(Connection& c);
  // Makes room to read the frame at the front of `c.in`: false when there is none (the frame is
  // whole, or waits for the budget).
  bool make_room(Connection& c);
  // Gives a connection's large-frame buffer and its share of the budget back.
  void release_buffer(Connection& c);
  void process(Connection& c);
  void answer(Connection& c, std::vector<OutChunk>& response, std::int16_t error, std::int16_t api_key, std::int64_t arrived_ns);
  void drain_pending(Connection& c, std::int64_t now_ns);
  bool flush(Connection& c);
  void update_interest(Connection& c);
  void close(Connection& c, std::string_view why, bool bad_request);
  void resume_parked(std::int64_t now_ns);
  void resume_disk_waits(std::int64_t now_ns);
};

void KafkaListener::Impl::run() {
  epoll_event events[64];
  while (!stopping.load(std::memory_order_relaxed)) {
    bool any_parked = false;
    std::int64_t next_disk_check_ns = INT64_MAX;
    for (auto& [id, c] : connections) {
      if (c->busy()) any_parked = true;
      if (c->disk_wait_since_ns != 0) next_disk_check_ns = std::min(next_disk_check_ns, c->disk_check_at_ns);
    }
    const bool any_disk_wait = next_disk_check_ns != INT64_MAX;
    timespec timeout{1, 0};
    if (any_parked || any_disk_wait) {
      std::int64_t ns = any_parked ? std::max<std::int64_t>(options.poll_interval_us, 10) * 1000 : kMaxDiskWaitCheckNs;
      if (any_disk_wait) ns = std::clamp<std::int64_t>(next_disk_check_ns - monotonic_ns(), 0, ns);
      timeout = {0, static_cast<long>(ns)};
    } else if (const auto deadline = broker->next_group_deadline_ms()) {
      // Groups' timers run on the tick, every 10 ms at most: a deadline that passed before the
      // next tick is due waits for it rather than spinning the loop with no timeout until then.
      const std::int64_t due = std::max(*deadline, last_tick_ms + 10);
      const std::int64_t wait = std::clamp<std::int64_t>(due - now_ms(), 0, 1000);
      timeout = {0, static_cast<long>(wait * 1'000'000)};
      if (wait >= 1000) timeout = {1, 0};
    }
    if (!more_buffered.empty()) timeout = {0, 0};
    const int n = epoll_pwait2(epoll_fd.get(), events, 64, &timeout, nullptr);
    if (n < 0 && errno != EINTR) {
      log(LogLevel::kError, "kafka: epoll failed; the listener stops", {{"error", std::strerror(errno)}});
      return;
    }
    for (int i = 0; i < std::max(n, 0); ++i) {
      const std::uint64_t tag = events[i].data.u64;
      if (tag == kListenTag) {
        accept_all();
      } else if (tag == kWakeTag) {
        std::uint64_t value = 0;
        (void)::read(wake_fd.get(), &value, sizeof value);
      } else {
        auto it = connections.find(tag);
        if (it != connections.end()) on_event(*it->second, events[i].events);
      }
    }
    for (const std::uint64_t id : std::exchange(more_buffered, {})) {
      auto it = connections.find(id);
      if (it == connections.end()) continue;
      process(*it->second);
      if (connections.find(id) != connections.end()) update_interest(*it->second);
    }
    const std::int64_t now_ns = monotonic_ns();
    const std::int64_t now = now_ns / 1'000'000;
    if (now - last_tick_ms >= 10) {
      broker->tick(now_ns);
      last_tick_ms = now;
    }
    resume_parked(now_ns);
    if (any_disk_wait) resume_disk_waits(monotonic_ns());
    if (now - last_idle_check_ms >= 1000) {
      last_idle_check_ms = now;
      if (const std::uint64_t held_back = bad_request_logs.take_held_back(now)) {
        log(LogLevel::kWarn, "kafka: connections closed for bad requests, not logged one by one", {{"count", std::to_string(held_back)}});
      }
      if (const std::uint64_t held_back = refusal_logs.take_held_back(now)) {
        log(LogLevel::kWarn, "kafka: connections refused at the connection limit, not logged one by one", {{"count", std::to_string(held_back)}});
      }
      std::vector<std::pair<Connection*, const char*>> idle;
      for (auto& [id, c] : connections) {
        if (!c->busy() && c->out.empty() && now - c->last_active_ms > options.idle_timeout_ms) idle.emplace_back(c.get(), "idle");
        // A client that stops reading its responses holds them (and the files they send from)
        // for as long as it stays: as long as an idle one, then.
        if (!c->out.empty() && now - c->last_sent_ms > options.idle_timeout_ms) idle.emplace_back(c.get(), "not reading its responses");
      }
      for (const auto& [c, why] : idle) {
        {
          std::lock_guard lock(stats_mutex);
          ++stats.connections_closed_idle;
        }
        close(*c, why, false);
      }
      std::vector<GroupListing> listed = broker->groups();
      std::lock_guard lock(stats_mutex);
      groups_snapshot = std::move(listed);
      stats.records_in = broker->records_in();
      stats.producer_ids = broker->producer_ids();
      stats.producer_ids_evicted = broker->producer_ids_evicted();
    }
  }
}

void KafkaListener::Impl::accept_all() {
  for (int i = 0; i < 256; ++i) {
    sockaddr_storage address{};
    socklen_t length = sizeof address;
    const int fd = ::accept4(listen_fd.get(), reinterpret_cast<sockaddr*>(&address), &length, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK) return;
      if (errno == EINTR || errno == ECONNABORTED) continue;
      if ((errno == EMFILE || errno == ENFILE) && spare_fd.valid()) {
        {  // counted before the peer can see its connection closed
          std::lock_guard lock(stats_mutex);
          ++stats.connections_refused;
        }
        const bool shed = shed_waiting_connection(listen_fd.get(), spare_fd);
        if (std::uint64_t held_back = 0; refusal_logs.allow(now_ms(), held_back)) {
          log(LogLevel::kWarn, "kafka: connection refused: weftd has no file descriptors left (raise its RLIMIT_NOFILE)",
              {{"not_logged_before", std::to_string(held_back)}});
        }
        if (shed) continue;
        return;
      }
      log(LogLevel::kWarn, "kafka: accept failed", {{"error", std::strerror(errno)}});
      return;
    }
    UniqueFd socket(fd);
    char host[INET6_ADDRSTRLEN] = "?";
    int peer_port = 0;
    if (address.ss_family == AF_INET) {
      const auto* a = reinterpret_cast<const sockaddr_in*>(&address);
      inet_ntop(AF_INET, &a->sin_addr, host, sizeof host);
      peer_port = ntohs(a->sin_port);
    } else if (address.ss_family == AF_INET6) {
      const auto* a = reinterpret_cast<const sockaddr_in6*>(&address);
      inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof host);
      peer_port = ntohs(a->sin6_port);
    }
    if (connections.size() >= options.max_connections) {
      {
        std::lock_guard lock(stats_mutex);
        ++stats.connections_refused;
      }
      if (std::uint64_t held_back = 0; refusal_logs.allow(now_ms(), held_back)) {
        log(LogLevel::kWarn, "kafka: connection refused: at the connection limit",
            {{"peer", std::string(host) + ":" + std::to_string(peer_port)}, {"max_connections", std::to_string(options.max_connections)},
             {"not_logged_before", std::to_string(held_back)}});
      }
      continue;  // closed by UniqueFd
    }
    const int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    auto c = std::make_unique<Connection>();
    c->id = next_id++;
    c->fd = std::move(socket);
    c->host = host;
    c->peer = std::string(host) + ":" + std::to_string(peer_port);
    c->last_active_ms = now_ms();
    epoll_event ev{};
    ev.events = EPOLLIN | EPOLLRDHUP;
    ev.data.u64 = c->id;
    if (epoll_ctl(epoll_fd.get(), EPOLL_CTL_ADD, fd, &ev) != 0) continue;
    c->events = ev.events;
    {
      std::lock_guard lock(stats_mutex);
      ++stats.connections_accepted;
      stats.connections_open = connections.size() + 1;
    }
    log(LogLevel::kDebug, "kafka: connection accepted", {{"peer", c->peer}});
    connections.emplace(c->id, std::move(c));
  }
}

void KafkaListener::Impl::on_event(Connection& c, std::uint32_t events) {
  if ((events & (EPOLLERR | EPOLLHUP)) != 0) {
    close(c, "connection reset", false);
    return;
  }
  if ((events & EPOLLOUT) != 0) {
    if (!flush(c)) return;
    if (!c.blocked()) process(c);  // responses drained: requests waiting in the buffer go on
    if (connections.find(c.id) == connections.end()) return;
  }
  if ((events & (EPOLLIN | EPOLLRDHUP)) != 0 && !c.blocked() && c.pending.size() < kMaxPipelined && !c.waiting_for_memory &&
      !whole_frame_buffered(c)) {
    if (!read_some(c)) return;
    process(c);
  } else if ((events & EPOLLRDHUP) != 0) {
    close(c, "peer closed", false);  // a client with requests waiting went away
    return;
  }
  auto it = connections.find(c.id);
  if (it != connections.end()) update_interest(c);
}

bool KafkaListener::Impl::make_room(Connection& c) {
  if (c.in.size() - c.in_end >= kReadChunk / 4) return true;
  if (c.in_start == c.in_end) {
    c.in_start = c.in_end = 0;
  } else if (c.in_start > 0 && (c.in_start > c.in.size() / 2 || c.in.size() >= kReadChunk)) {
    // The frame moves to the front before the buffer grows, so it grows to the frame's size.
    std::memmove(c.in.data(), c.in.data() + c.in_start, c.in_end - c.in_start);
    c.in_end -= c.in_start;
    c.in_start = 0;
  }
  if (c.in.size() - c.in_end >= kReadChunk / 4) return true;
  // The buffer doubles as a large frame's bytes come, never to the size a peer declares before
  // sending it.
  std::size_t grown = std::max(c.in.size() * 2, kReadChunk);
  if (grown > kKeptBuffer && c.in_end - c.in_start >= 4) {
    const auto size = static_cast<std::uint32_t>(wire::load_be32(c.in.data() + c.in_start));
    if (size > options.max_request_bytes) return false;  // process() closes the connection
    const std::size_t frame = std::size_t{size} + 4;   // at the front (moved above)
    if (frame <= c.in.size()) return c.in_end < c.in.size();
    if (frame > kKeptBuffer) {
      // Past what every connection keeps: the excess comes out of the budget, whole, before a
      // byte of it is read, so a frame begun is always finished (no connection holds part of
      // the budget while it waits for more).
      const std::size_t excess = frame - kKeptBuffer;
      if (excess > c.reserved) {
        if (reserved_bytes + (excess - c.reserved) > options.max_buffered_request_bytes) {
          if (!c.waiting_for_memory) memory_waiters.push_back(c.id);
          c.waiting_for_memory = true;
          std::lock_guard lock(stats_mutex);
          ++stats.request_memory_waits;
          return false;
        }
        reserved_bytes += excess - c.reserved;
        c.reserved = excess;
      }
    }
    grown = std::min(grown, std::max(frame, kKeptBuffer));
  }
  if (grown > c.in.size()) c.in.resize(grown);
  return c.in_end < c.in.size();
}

void KafkaListener::Impl::release_buffer(Connection& c) {
  std::vector<std::byte>().swap(c.in);
  c.in_start = c.in_end = 0;
  if (c.reserved == 0) return;
  reserved_bytes -= c.reserved;
  c.reserved = 0;
  // Those waiting try again (their sockets still hold the bytes, so epoll reports them at once).
  for (const std::uint64_t id : std::exchange(memory_waiters, {})) {
    auto it = connections.find(id);
    if (it == connections.end()) continue;
    it->second->waiting_for_memory = false;
    update_interest(*it->second);
  }
}

bool KafkaListener::Impl::read_some(Connection& c) {
  std::size_t taken = 0;
  for (int i = 0; i < 16; ++i) {  // bounded: other connections get their turn
    if (whole_frame_buffered(c) || !make_room(c)) break;
    const ssize_t got = ::recv(c.fd.get(), c.in.data() + c.in_end, c.in.size() - c.in_end, 0);
    if (got > 0) {
      c.in_end += static_cast<std::size_t>(got);
      taken += static_cast<std::size_t>(got);
      // A whole frame (or one over the limit): let process() have it before reading more.
      if (whole_frame_buffered(c) || (c.in_end - c.in_start >= 4 && static_cast<std::uint32_t>(wire::load_be32(c.in.data() + c.in_start)) > options.max_request_bytes)) break;
      continue;
    }
    if (got == 0) {
      close(c, "peer closed", false);
      return false;
    }
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) break;
    close(c, std::string("read failed: ") + std::strerror(errno), false);
    return false;
  }
  if (taken > 0) {
    c.last_active_ms = now_ms();
    std::lock_guard lock(stats_mutex);
    stats.bytes_in += taken;
  }
  return true;
}

void KafkaListener::Impl::process(Connection& c) {
  const std::uint64_t id = c.id;
  int taken = 0;
  for (; !c.blocked() && c.pending.size() < kMaxPipelined && c.out_bytes < kMaxQueuedResponseBytes; ++taken) {
    const std::size_t available = c.in_end - c.in_start;
    if (taken == kMaxRequestsPerPass) {
      // Other connections get their turn; this one goes on in the next pass.
      if (available >= 4) more_buffered.push_back(id);
      break;
    }
    if (available < 4) break;
    const auto size = static_cast<std::uint32_t>(wire::load_be32(c.in.data() + c.in_start));
    if (size > options.max_request_bytes) {
      close(c, "request of " + std::to_string(size) + " bytes is larger than the limit of " + std::to_string(options.max_request_bytes), true);
      return;
    }
    if (size < kMinFrameBytes) {
      close(c, "frame of " + std::to_string(size) + " bytes is shorter than a request header", true);
      return;
    }
    if (available < std::size_t{size} + 4) break;
    const std::int16_t api_key = wire::load_be16(c.in.data() + c.in_start + 4);
    // Behind requests still waiting, only a Produce is taken (it only appends).
    if (c.busy() && (api_key != static_cast<std::int16_t>(ApiKey::kProduce) || c.pending.back().api_key != api_key)) break;
    detail::Request request;
    request.arrived_ns = monotonic_ns();
    request.client_host = c.host;
    Reader reader(std::span<const std::byte>(c.in.data() + c.in_start + 4, size));
    request.header = read_request_header(reader);
    if (!reader.ok()) {
      close(c, "malformed request header: " + reader.error(), true);
      return;
    }
    request.body = reader.rest();
    Outcome outcome = broker->handle(request);
    if (connections.find(id) == connections.end()) return;
    if (outcome.kind == Outcome::Kind::kClose) {
      close(c, outcome.close_reason, true);  // logged there, with the peer
      return;
    }
    const std::size_t frame_bytes = std::size_t{size} + 4;
    if (outcome.kind == Outcome::Kind::kParked) {
      outcome.parked->header.client_id = std::nullopt;  // pointed into the frame
      Connection::Pending p;
      p.api_key = request.header.api_key;
      p.arrived_ns = request.arrived_ns;
      // A produce whose batches are all in the ring needs its frame no more.
      const bool keeps_frame = broker->needs_frame(*outcome.parked);
      p.parked = std::move(outcome.parked);
      if (keeps_frame) {
        p.frame_bytes = frame_bytes;
        c.pending.push_back(std::move(p));
        break;
      }
      c.pending.push_back(std::move(p));
      c.in_start += frame_bytes;
      continue;
    }
    if (c.busy()) {
      Connection::Pending p;
      p.api_key = request.header.api_key;
      p.arrived_ns = request.arrived_ns;
      p.ready = true;
      p.no_response = outcome.kind == Outcome::Kind::kNoResponse;
      p.response = std::move(outcome.response);
      p.error = outcome.error;
      c.pending.push_back(std::move(p));
    } else if (outcome.kind == Outcome::Kind::kRespond) {
      answer(c, outcome.response, outcome.error, request.header.api_key, request.arrived_ns);
    }
    c.in_start += frame_bytes;
  }
  if (c.in_start == c.in_end && !c.blocked()) {
    c.in_start = c.in_end = 0;
    // A large request's buffer is not kept for the small ones after it.
    if (c.in.size() > kKeptBuffer) release_buffer(c);
  }
  flush(c);
}

void KafkaListener::Impl::answer(Connection& c, std::vector<OutChunk>& response, std::int16_t error, std::int16_t api_key, std::int64_t arrived_ns) {
  if (c.out.empty()) c.last_sent_ms = now_ms();  // the client's time to read starts now
  std::size_t bytes = 0;
  for (OutChunk& chunk : response) {
    bytes += chunk.size();
    c.out.push_back(std::move(chunk));
  }
  c.out_bytes += bytes;
  const std::int64_t micros = (monotonic_ns() - arrived_ns) / 1000;
  std::lock_guard lock(stats_mutex);
  if (api_key >= 0 && static_cast<std::size_t>(api_key) < stats.apis.size()) {
    KafkaApiStats& s = stats.apis[static_cast<std::size_t>(api_key)];
    ++s.requests;
    if (error != 0) ++s.errors;
    ++s.latency_us_log2[latency_bucket(micros)];
    s.latency_us_sum += static_cast<std::uint64_t>(std::max<std::int64_t>(micros, 0));
  }
}

// Looks at every waiting request of the connection, then answers from the front while ready.
void KafkaListener::Impl::drain_pending(Connection& c, std::int64_t now_ns) {
  for (Connection::Pending& p : c.pending) {
    if (p.ready) continue;
    Outcome outcome = broker->resume(*p.parked, now_ns);
    if (outcome.kind == Outcome::Kind::kParked) continue;
    p.ready = true;
    p.no_response = outcome.kind == Outcome::Kind::kNoResponse;
    p.response = std::move(outcome.response);
    p.error = outcome.error;
    p.parked.reset();
  }
  while (!c.pending.empty() && c.pending.front().ready) {
    Connection::Pending& p = c.pending.front();
    if (!p.no_response) answer(c, p.response, p.error, p.api_key, p.arrived_ns);
    c.in_start += p.frame_bytes;
    c.pending.pop_front();
  }
}

void KafkaListener::Impl::resume_parked(std::int64_t now_ns) {
  // Every waiting request looks again on each loop pass, so one appended by this pass is seen now.
  std::vector<std::uint64_t> ids;
  for (auto& [id, c] : connections)
    if (c->busy()) ids.push_back(id);
  for (std::uint64_t id : ids) {
    auto it = connections.find(id);
    if (it == connections.end()) continue;
    Connection& c = *it->second;
    const std::size_t before = c.pending.size();
    drain_pending(c, now_ns);
    if (c.pending.size() == before) continue;
    process(c);
    if (connections.find(id) != connections.end()) update_interest(c);
  }
}

void KafkaListener::Impl::resume_disk_waits(std::int64_t now_ns) {
  std::vector<std::uint64_t> ids;
  for (auto& [id, c] : connections)
    if (c->disk_wait_since_ns != 0 && c->disk_check_at_ns <= now_ns) ids.push_back(id);
  for (std::uint64_t id : ids) {
    auto it = connections.find(id);
    if (it == connections.end()) continue;
    Connection& c = *it->second;
    if (!flush(c)) continue;  // closed
    if (!c.blocked()) process(c);  // as after EPOLLOUT: requests waiting in the buffer go on
    if (connections.find(id) != connections.end()) update_interest(c);
  }
}

bool KafkaListener::Impl::flush(Connection& c) {
  std::size_t sent_total = 0;
  while (!c.out.empty()) {
    OutChunk& chunk = c.out.front();
    ssize_t sent = 0;
    if (chunk.file) {
      const int file = chunk.file->get();
      const std::size_t window = std::min(chunk.file_bytes - chunk.sent, kSendfileWindow);
      const std::uint64_t at = chunk.file_offset + chunk.sent;
      std::size_t ready = cached_window(chunk, window);
      if (window > 0 && ready == 0) {
        const std::int64_t now = monotonic_ns();
        if (c.disk_wait_since_ns == 0) {
          c.disk_wait_since_ns = now;
          ++disk_waiters;
          std::lock_guard lock(stats_mutex);
          ++stats.fetch_disk_waits;
        }
        c.disk_check_at_ns = now + std::min(kDiskWaitCheckNs * disk_waiters, kMaxDiskWaitCheckNs);
        if (now - c.disk_wait_since_ns < kMaxDiskWaitNs) break;  // resume_disk_waits looks again
        ready = window;  // waited long enough: the disk, then
      }
      if (c.disk_wait_since_ns != 0) {
        c.disk_wait_since_ns = 0;
        --disk_waiters;
      }
      off_t offset = static_cast<off_t>(at);
      sent = ::sendfile(c.fd.get(), file, &offset, ready);
      if (sent == 0 && chunk.sent < chunk.file_bytes) {
        // The file is shorter than the region (truncated meanwhile): the frame cannot be finished.
        close(c, "a segment file ended early while it was being sent", false);
        return false;
      }
    } else {
      // Gather the memory chunks at the front into one send.
      iovec iov[16];
      int count = 0;
      for (auto it = c.out.begin(); it != c.out.end() && count < 16 && !it->file; ++it, ++count) {
        iov[count].iov_base = it->bytes.data() + it->sent;
        iov[count].iov_len = it->bytes.size() - it->sent;
      }
      msghdr message{};
      message.msg_iov = iov;
      message.msg_iovlen = static_cast<std::size_t>(count);
      sent = ::sendmsg(c.fd.get(), &message, MSG_NOSIGNAL);
    }
    if (sent < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) break;
      close(c, std::string("write failed: ") + std::strerror(errno), false);
      return false;
    }
    auto left = static_cast<std::size_t>(sent);
    sent_total += left;
    while (left > 0 && !c.out.empty()) {
      OutChunk& front = c.out.front();
      const std::size_t rest = front.size() - front.sent;
      if (left >= rest) {
        left -= rest;
        c.out_bytes -= front.size();
        c.out.pop_front();
      } else {
        front.sent += left;
        left = 0;
      }
    }
    while (!c.out.empty() && c.out.front().size() == 0) c.out.pop_front();  // nothing to send in it
  }
  if (sent_total > 0) {
    c.last_active_ms = c.last_sent_ms = now_ms();
    std::lock_guard lock(stats_mutex);
    stats.bytes_out += sent_total;
  }
  return true;
}

void KafkaListener::Impl::update_interest(Connection& c) {
  std::uint32_t want = EPOLLRDHUP;
  if (!c.blocked() && c.pending.size() < kMaxPipelined && c.out_bytes < kMaxQueuedResponseBytes && !c.waiting_for_memory && !whole_frame_buffered(c))
    want |= EPOLLIN;
  if (!c.out.empty() && c.disk_wait_since_ns == 0) want |= EPOLLOUT;  // not while the disk is read
  if (want == c.events) return;
  epoll_event ev{};
  ev.events = want;
  ev.data.u64 = c.id;
  if (epoll_ctl(epoll_fd.get(), EPOLL_CTL_MOD, c.fd.get(), &ev) == 0) c.events = want;
}

void KafkaListener::Impl::close(Connection& c, std::string_view why, bool bad_request) {
  for (Connection::Pending& p : c.pending)
    if (p.parked) broker->abandon(*p.parked);
  if (c.disk_wait_since_ns != 0) --disk_waiters;
  epoll_ctl(epoll_fd.get(), EPOLL_CTL_DEL, c.fd.get(), nullptr);
  if (c.waiting_for_memory) std::erase(memory_waiters, c.id);
  release_buffer(c);
  if (!bad_request) {
    log(LogLevel::kDebug, "kafka: connection closed", {{"peer", c.peer}, {"reason", std::string(why)}});
  } else if (std::uint64_t held_back = 0; bad_request_logs.allow(now_ms(), held_back)) {
    log(LogLevel::kWarn, "kafka: connection closed", {{"peer", c.peer}, {"reason", std::string(why)}, {"not_logged_before", std::to_string(held_back)}});
  }
  const std::uint64_t id = c.id;
  connections.erase(id);  // destroys c
  std::lock_guard lock(stats_mutex);
  stats.connections_open = connections.size();
  if (bad_request) ++stats.connections_closed_bad_request;
}

// ---- KafkaListener --------------------------------------------------------------------------

Result<std::unique_ptr<KafkaListener>> KafkaListener::start(Node& node, KafkaListenerOptions options) {
  if (options.max_request_bytes < 1024 || options.max_request_bytes > (std::size_t{1} << 30))
    return Error{Errc::kInvalidArgument, "kafka max request bytes must be within 1 KiB..1 GiB"};
  if (options.max_connections == 0) return Error{Errc::kInvalidArgument, "kafka max connections must be at least 1"};
  if (options.max_buffered_request_bytes < options.max_request_bytes)
    return Error{Errc::kInvalidArgument, "kafka max buffered request bytes must be at least the max request bytes"};
  if (options.default_partitions == 0) return Error{Errc::kInvalidArgument, "kafka default partitions must be at least 1"};
  if (options.max_producer_ids == 0 || options.producer_id_expiration_ms < 1)
    return Error{Errc::kInvalidArgument, "kafka max producer ids and producer id expiration must be at least 1"};
  auto impl = std::make_unique<Impl>(node, std::move(options));
  const KafkaListenerOptions& o = impl->options;

  WEFT_TRY(const SocketAddress address, socket_address(o.listen_host, o.listen_port, "kafka listen address"));
  WEFT_TRY(impl->listen_fd, listen_tcp(address, 1024, "kafka listen address", "stop what listens there or pass --kafka-listen HOST:PORT"));
  WEFT_TRY(const SocketAddress bound, local_address(impl->listen_fd.get()));
  impl->port = bound.port();

  impl->epoll_fd = UniqueFd(epoll_create1(EPOLL_CLOEXEC));
  impl->wake_fd = UniqueFd(eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
  if (!impl->epoll_fd.valid() || !impl->wake_fd.valid()) return os_error(Errc::kIo, "kafka listener epoll", errno);
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.u64 = kListenTag;
  epoll_ctl(impl->epoll_fd.get(), EPOLL_CTL_ADD, impl->listen_fd.get(), &ev);
  ev.data.u64 = kWakeTag;
  epoll_ctl(impl->epoll_fd.get(), EPOLL_CTL_ADD, impl->wake_fd.get(), &ev);

  impl->broker = std::make_unique<Broker>(node, impl->options, impl->port);
  impl->broker->set_wake_event(impl->wake_fd.get());
  node.set_pass_event(impl->wake_fd.get());  // produces waiting on the log are answered after each pass
  // acks=all and fetches at the high watermark are answered as it moves.
  if (options.cluster != nullptr) options.cluster->set_high_watermark_event(impl->wake_fd.get());
  Impl* raw = impl.get();
  impl->thread = std::thread([raw] {
    name_this_thread("weft-kafka");
    // The default 50 µs timer slack would stretch the short looks at a region being read in.
    prctl(PR_SET_TIMERSLACK, 1000UL, 0UL, 0UL, 0UL);
    raw->run();
  });
  log(LogLevel::kInfo, "kafka listener ready",
      {{"listen", o.listen_host + ":" + std::to_string(impl->port)},
       {"advertise", (o.advertised_host.empty() ? o.listen_host : o.advertised_host) + ":" +
                         std::to_string(o.advertised_port != 0 ? o.advertised_port : impl->port)}});
  return std::unique_ptr<KafkaListener>(new KafkaListener(std::move(impl)));
}

KafkaListener::KafkaListener(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

KafkaListener::~KafkaListener() { stop(); }

void KafkaListener::stop() {
  if (!impl_ || impl_->stopping.exchange(true)) return;
  impl_->node.set_pass_event(-1);
  if (impl_->options.cluster != nullptr) impl_->options.cluster->set_high_watermark_event(-1);
  const std::uint64_t one = 1;
  (void)::write(impl_->wake_fd.get(), &one, sizeof one);
  if (impl_->thread.joinable()) impl_->thread.join();
  // Parked requests are abandoned (their log waiters counted off); connections close.
  for (auto& [id, c] : impl_->connections)
    for (Connection::Pending& p : c->pending)
      if (p.parked) impl_->broker->abandon(*p.parked);
  impl_->connections.clear();
  impl_->broker.reset();
}

std::uint16_t KafkaListener::port() const noexcept { return impl_->port; }

KafkaListenerStats KafkaListener::stats() const {
  std::lock_guard lock(impl_->stats_mutex);
  return impl_->stats;
}

std::vector<GroupListing> KafkaListener::groups() const {
  std::lock_guard lock(impl_->stats_mutex);
  return impl_->groups_snapshot;
}

}  // namespace weft::kafka
