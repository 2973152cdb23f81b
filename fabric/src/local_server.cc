#include "weft/fabric/local_server.h"

#include <fcntl.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <exception>
#include <mutex>
#include <thread>
#include <unordered_map>

#include "weft/fabric/local_protocol.h"
#include "weft/fabric/log.h"
#include "weft/fabric/serial_worker.h"
#include "weft/fabric/socket_address.h"
#include "weft/fabric/thread_name.h"

namespace weft {
namespace {

using local::MessageType;

Result<void> make_parent_directory(const std::string& path) {
  const std::size_t slash = path.rfind('/');
  if (slash == std::string::npos || slash == 0) return ok();
  const std::string dir = path.substr(0, slash);
  std::string partial;
  for (std::size_t i = 1; i <= dir.size(); ++i) {
    if (i == dir.size() || dir[i] == '/') {
      partial = dir.substr(0, i);
      if (mkdir(partial.c_str(), 0755) != 0 && errno != EEXIST)
        return os_error(Errc::kIo, "creating the socket directory " + partial, errno);
    }
  }
  return ok();
}

sockaddr_un socket_address(const std::string& path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, path.data(), path.size());
  return addr;
}

struct Connection {
  UniqueFd fd;
  ucred peer{};
  bool greeted = false;  // a hello with the right pid came first
};

// A descriptor an answer carries, and what keeps it open until the answer is sent (a topic
// deleted meanwhile must not close its ring's fd; a log slice's file is opened for the answer).
struct Attachment {
  int fd = -1;
  std::shared_ptr<SharedMemory> memory;
  UniqueFd file;
};

}  // namespace

struct LocalServer::Impl {
  Node* node = nullptr;
  LocalServerOptions options;
  UniqueFd lock_fd;
  UniqueFd listen_fd;
  UniqueFd epoll_fd;
  UniqueFd stop_fd;
  std::thread thread;
  std::unordered_map<int, Connection> connections;
  std::atomic<bool> stopped{false};
  mutable std::mutex stats_mutex;
  LocalServerStats stats;
  std::int64_t started_ns = monotonic_ns();
  std::vector<std::byte> in;
  std::vector<std::byte> out;  // the loop's; each worker has its own
  UniqueFd spare_fd = spare_descriptor();  // see shed_waiting_connection

  // Requests that may wait on the disk or on the cluster's store (a topic made through etcd,
  // offsets committed with an fsync) run on two workers, one for topics and one for offsets: no
  // client's ring, route or status waits behind one, and no consumer's commit behind a topic
  // being made. A connection whose request a worker runs is out of the epoll set until the
  // answer is sent: the loop neither reads nor closes it meanwhile, so its fd stays its own.
  UniqueFd finished_fd = UniqueFd(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));  // the workers wake the loop
  std::mutex finished_mutex;
  // fd, and whether it stays open. Reserved for every connection at start (each has at most one
  // request on a worker; up to 65 536), so handing one back does not allocate.
  std::vector<std::pair<int, bool>> finished;    // guarded by finished_mutex
  std::vector<std::pair<int, bool>> taken_back;  // the loop's copy
  std::unique_ptr<SerialWorker> topics_worker;   // after what they use: stop() ends them first anyway
  std::unique_ptr<SerialWorker> offsets_worker;

  SerialWorker* worker_for(std::uint16_t type) const {
    switch (static_cast<MessageType>(type)) {
      case MessageType::kCreateTopic:
      case MessageType::kDeleteTopic:
        return topics_worker.get();
      case MessageType::kCommitOffsets:
      case MessageType::kFetchOffsets:
        return offsets_worker.get();
      default:
        return nullptr;
    }
  }

  // Root, the node's own uid, a listed uid, or a listed gid among the peer's primary and
  // supplementary groups (SO_PEERGROUPS: membership in a `weft` group is the usual setup).
  bool allowed(int fd, const ucred& peer) const {
    if (peer.uid == 0 || peer.uid == geteuid()) return true;
    const auto listed_gid = [&](gid_t g) { return std::find(options.allow_gids.begin(), options.allow_gids.end(), g) != options.allow_gids.end(); };
    if (std::find(options.allow_uids.begin(), options.allow_uids.end(), peer.uid) != options.allow_uids.end() || listed_gid(peer.gid))
      return true;
    if (options.allow_gids.empty()) return false;
    gid_t groups[256];
    socklen_t len = sizeof(groups);
    if (getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, groups, &len) != 0) return false;
    return std::any_of(groups, groups + len / sizeof(gid_t), listed_gid);
  }

  void shed_connection() {
    count(&LocalServerStats::refused);  // before the peer can see its connection closed
    (void)shed_waiting_connection(listen_fd.get(), spare_fd);
    if (std::uint64_t held_back = 0; refusal_logs.allow(monotonic_ns() / 1'000'000, held_back))
      log(LogLevel::kWarn, "client refused", {{"reason", "weftd has no file descriptors left (raise its RLIMIT_NOFILE)"}, {"not_logged_before", std::to_string(held_back)}});
  }

  void count(std::uint64_t LocalServerStats::*field) {
    std::lock_guard lock(stats_mutex);
    ++(stats.*field);
  }

  void send_error(int fd, std::uint16_t type, std::uint32_t request_id, const Error& error) { send_error(fd, type, request_id, error, out); }
  void send_error(int fd, std::uint16_t type, std::uint32_t request_id, const Error& error, std::vector<std::byte>& buffer) {
    local::begin_message(buffer, static_cast<std::uint16_t>(type | local::kResponseBit), request_id);
    local::Writer w(buffer);
    w.u8(static_cast<std::uint8_t>(error.code));
    w.str(error.message);
    local::finish_message(buffer);
    (void)local::send_message(fd, buffer);  // the peer may be gone already; nothing to do then
  }

  LogRateLimit refusal_logs{5};  // a client refused may try again and again

  void accept_one() {
    UniqueFd fd(accept4(listen_fd.get(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC));
    if (!fd.valid()) {
      if (errno == EMFILE || errno == ENFILE) shed_connection();
      return;  // otherwise the peer left before we got to it
    }
    ucred peer{};
    socklen_t len = sizeof(peer);
    if (getsockopt(fd.get(), SOL_SOCKET, SO_PEERCRED, &peer, &len) != 0) return;
    const std::string who = "pid=" + std::to_string(peer.pid) + " uid=" + std::to_string(peer.uid) + " gid=" + std::to_string(peer.gid);
    if (!allowed(fd.get(), peer)) {
      count(&LocalServerStats::refused);
      if (std::uint64_t held_back = 0; refusal_logs.allow(monotonic_ns() / 1'000'000, held_back))
        log(LogLevel::kWarn, "client refused", {{"peer", who}, {"reason", "uid and gid not in the allow list"}, {"not_logged_before", std::to_string(held_back)}});
      send_error(fd.get(), 0, 0,
                 Error{Errc::kPermissionDenied, "weftd does not admit uid " + std::to_string(peer.uid) + " gid " +
                                                    std::to_string(peer.gid) + "; add it to allow_uids or allow_gids in weftd's config"});
      return;
    }
    const bool operator_uid = peer.uid == 0 || peer.uid == geteuid();
    if (connections.size() >= options.max_connections + (operator_uid ? options.reserved_connections : 0)) {
      count(&LocalServerStats::refused);
      if (std::uint64_t held_back = 0; refusal_logs.allow(monotonic_ns() / 1'000'000, held_back))
        log(LogLevel::kWarn, "client refused", {{"peer", who}, {"reason", "connection limit reached"}, {"not_logged_before", std::to_string(held_back)}});
      send_error(fd.get(), 0, 0, Error{Errc::kResourceExhausted, "weftd has its maximum of " + std::to_string(options.max_connections) + " local clients"});
      return;
    }
    epoll_event ev{};
    ev.events = EPOLLIN | EPOLLRDHUP;
    ev.data.fd = fd.get();
    if (epoll_ctl(epoll_fd.get(), EPOLL_CTL_ADD, fd.get(), &ev) != 0) return;
    // A response is one datagram, which the kernel caps at the socket's send buffer (208 KiB by
    // default): make room for the largest the protocol allows (FORCE needs CAP_NET_ADMIN; without
    // it the kernel caps the request at net.core.wmem_max).
    const int send_buffer = static_cast<int>(local::kMaxMessageBytes);
    if (setsockopt(fd.get(), SOL_SOCKET, SO_SNDBUFFORCE, &send_buffer, sizeof send_buffer) != 0)
      (void)setsockopt(fd.get(), SOL_SOCKET, SO_SNDBUF, &send_buffer, sizeof send_buffer);
    log(LogLevel::kDebug, "client admitted", {{"peer", who}});
    const int key = fd.get();
    connections.emplace(key, Connection{std::move(fd), peer});
    std::lock_guard lock(stats_mutex);
    ++stats.accepted;
    stats.connections = static_cast<std::uint32_t>(connections.size());
  }

  void close_connection(int fd) {
    epoll_ctl(epoll_fd.get(), EPOLL_CTL_DEL, fd, nullptr);
    connections.erase(fd);
    std::lock_guard lock(stats_mutex);
    stats.connections = static_cast<std::uint32_t>(connections.size());
  }

  // Serves one request; false closes the connection.
  bool serve(Connection& c) {
    UniqueFd stray;  // clients send no fds; one that does is refused and the fd closed
    const Result<void> received = local::receive_message(c.fd.get(), in, local::kMaxRequestBytes, &stray);
    if (!received.ok()) {
      if (received.error().code == Errc::kUnavailable) return true;  // a spurious wakeup
      if (received.error().code == Errc::kAborted) return false;      // the client left
      count(&LocalServerStats::bad_requests);
      log(LogLevel::kWarn, "closing client connection", {{"pid", std::to_string(c.peer.pid)}, {"reason", received.error().message}});
      return false;
    }
    std::span<const std::byte> payload;
    Result<local::Header> header = local::parse_header(in, payload);
    if (!header.ok() || stray.valid()) {
      count(&LocalServerStats::bad_requests);
      const std::string reason = header.ok() ? "a file descriptor was attached" : header.error().message;
      log(LogLevel::kWarn, "closing client connection", {{"pid", std::to_string(c.peer.pid)}, {"reason", reason}});
      // The header's own code (kUnsupported for another protocol version) tells the client what to do.
      send_error(c.fd.get(), header.ok() ? header->type : 0, header.ok() ? header->request_id : 0,
                 Error{header.ok() ? Errc::kInvalidArgument : header.error().code, reason});
      return false;
    }
    count(&LocalServerStats::requests);
    if (SerialWorker* worker = worker_for(header->type)) {
      epoll_ctl(epoll_fd.get(), EPOLL_CTL_DEL, c.fd.get(), nullptr);
      // &c: the map's node, which stays put while the loop leaves this connection alone.
      worker->add([this, &c, datagram = in] { answer_off_loop(c, datagram); });
      return true;
    }
    return answer(c, *header, payload, out);
  }

  // Runs one request and sends its answer; false when the request broke the protocol (the
  // connection closes). `buffer` is the calling thread's.
  bool answer(Connection& c, const local::Header& header, std::span<const std::byte> payload, std::vector<std::byte>& buffer) {
    const std::uint16_t type = header.type;
    local::Reader r(payload);
    local::begin_message(buffer, static_cast<std::uint16_t>(type | local::kResponseBit), header.request_id);
    local::Writer w(buffer);
    Attachment attached;
    Result<void> outcome = handle(c, type, r, w, attached);
    if (!outcome.ok()) {
      // Truncated fields, or bytes left after them: the request breaks the protocol, not a rule.
      const bool malformed = outcome.error().code == Errc::kInvalidArgument && (r.failed() || !r.at_end());
      send_error(c.fd.get(), type, header.request_id, outcome.error(), buffer);
      // Another protocol (an unknown request, a hello of another version) ends the connection;
      // a request the node cannot serve (a partition with no log) does not.
      const bool foreign = outcome.error().code == Errc::kUnsupported &&
                           (type == static_cast<std::uint16_t>(MessageType::kHello) || !local::known_message_type(type));
      if (malformed || foreign) {
        count(&LocalServerStats::bad_requests);
        log(LogLevel::kWarn, "closing client connection", {{"pid", std::to_string(c.peer.pid)}, {"reason", outcome.error().message}});
        return false;
      }
      return true;
    }
    if (attached.fd >= 0 && local::unread_sent_bytes(c.fd.get()) > 0) {
      // Descriptors in a socket's queue count against this process (and keep a deleted topic's
      // ring alive): none go to a client that has not read its earlier responses. weft's
      // client waits for each response, so only a broken one meets this. (Where the kernel
      // does not report unread bytes, the connection limit is the only bound.)
      count(&LocalServerStats::withheld_descriptors);
      send_error(c.fd.get(), type, header.request_id,
                 Error{Errc::kResourceExhausted, "weftd sends no descriptors to a client that has not read its earlier responses; read them first"}, buffer);
      return true;
    }
    local::finish_message(buffer);
    const bool sent = buffer.size() <= local::kMaxMessageBytes && local::send_message(c.fd.get(), buffer, attached.fd).ok();
    if (sent) return true;
    // Too large for the protocol or for the socket's send buffer (or the peer is gone, and this
    // fails too): an answer that says so beats a connection closed without a word.
    send_error(c.fd.get(), type, header.request_id,
               Error{Errc::kResourceExhausted,
                     "the response of " + std::to_string(buffer.size()) + " bytes is larger than weftd can send in one message (" +
                         (buffer.size() > local::kMaxMessageBytes ? std::to_string(local::kMaxMessageBytes) + " bytes at most"
                                                               : std::string("the socket's send buffer; raise net.core.wmem_max")) +
                         ")"},
               buffer);
    return true;
  }

  // On a worker: answers the request, then hands the connection back to the loop.
  void answer_off_loop(Connection& c, const std::vector<std::byte>& datagram) {
    thread_local std::vector<std::byte> buffer;  // each worker's own
    bool keep = false;
    try {
      std::span<const std::byte> payload;
      const Result<local::Header> header = local::parse_header(datagram, payload);  // checked on the loop
      keep = header.ok() && answer(c, *header, payload, buffer);
    } catch (const std::exception& e) {
      log(LogLevel::kError, "local client dropped: its request failed", {{"error", e.what()}});
    }
    std::lock_guard lock(finished_mutex);
    finished.emplace_back(c.fd.get(), keep);  // the worker then wakes the loop through finished_fd
  }

  // The loop takes back the connections the workers are done with.
  void take_back_finished() {
    std::uint64_t ignored = 0;
    (void)!read(finished_fd.get(), &ignored, sizeof ignored);
    {
      std::lock_guard lock(finished_mutex);
      taken_back.assign(finished.begin(), finished.end());  // keeps both reservations
      finished.clear();
    }
    for (const auto& [fd, keep] : taken_back) {
      epoll_event ev{};
      ev.events = EPOLLIN | EPOLLRDHUP;
      ev.data.fd = fd;
      if (!keep || epoll_ctl(epoll_fd.get(), EPOLL_CTL_ADD, fd, &ev) != 0) close_connection(fd);
    }
  }

  // Decodes and runs one request, writing the body after an ok byte.
  Result<void> handle(Connection& c, std::uint16_t type, local::Reader& r, local::Writer& w, Attachment& attached) {
    switch (static_cast<MessageType>(type)) {
      case MessageType::kHello: {
        const std::uint32_t client_version = r.u32();
        const std::string name = r.str(256);
        const std::uint32_t client_pid = r.u32();
        WEFT_TRY_VOID(r.finish("hello"));
        if (client_version != local::kVersion)
          return Error{Errc::kUnsupported, "client protocol " + std::to_string(client_version) + " is not weftd's " + std::to_string(local::kVersion)};
        // Rings know their producers by pid (a dead one's claim is sealed): a client whose pid
        // means something else here, in another PID namespace, would be taken for dead.
        if (client_pid != static_cast<std::uint32_t>(c.peer.pid))
          return Error{Errc::kPermissionDenied, "the client says it is pid " + std::to_string(client_pid) + " but is pid " +
                                                    std::to_string(c.peer.pid) + " here: weft clients must run in weftd's PID namespace"};
        c.greeted = true;
        w.u8(0);
        w.u32(local::kVersion);
        w.u32(static_cast<std::uint32_t>(getpid()));
        return ok();
      }
      case MessageType::kCreateTopic: {
        const std::string name = r.str(512);
        const std::uint32_t count = r.u32();
        if (count > 64) return Error{Errc::kInvalidArgument, "create topic: more than 64 settings"};
        TopicConfig config = node->options().default_topic;
        std::vector<std::pair<std::string, std::string>> settings;
        for (std::uint32_t i = 0; i < count && !r.failed(); ++i) {
          std::string key = r.str(256);
          std::string value = r.str(256);
          settings.emplace_back(std::move(key), std::move(value));
        }
        WEFT_TRY_VOID(r.finish("create topic"));
        std::uint32_t replication_factor = 0;
        for (const auto& [key, value] : settings) {
          if (key == "replication.factor") {
            char* end = nullptr;
            const unsigned long parsed = std::strtoul(value.c_str(), &end, 10);
            if (value.empty() || *end != '\0' || parsed < 1 || parsed > 64)
              return Error{Errc::kInvalidArgument, "replication.factor must be 1..64, not '" + value + "'"};
            replication_factor = static_cast<std::uint32_t>(parsed);
            continue;
          }
          WEFT_TRY_VOID(set_topic_config(config, key, value));
        }
        if (!options.create_topic && replication_factor > 1)
          return Error{Errc::kInvalidArgument, "replication factor " + std::to_string(replication_factor) +
                                                   " needs a cluster; this node runs alone (start weftd with --node-id and --etcd)"};
        WEFT_TRY(const TopicInfo info, options.create_topic ? options.create_topic(name, config, replication_factor) : node->create_topic(name, config));
        log(LogLevel::kInfo, "topic created", {{"topic", info.name}, {"partitions", std::to_string(info.config.partitions)}});
        w.u8(0);
        local::write_topic_info(w, info);
        return ok();
      }
      case MessageType::kDeleteTopic: {
        const std::string name = r.str(512);
        WEFT_TRY_VOID(r.finish("delete topic"));
        WEFT_TRY_VOID(options.delete_topic ? options.delete_topic(name) : node->delete_topic(name));
        log(LogLevel::kInfo, "topic deleted", {{"topic", name}});
        w.u8(0);
        return ok();
      }
      case MessageType::kListTopics: {
        WEFT_TRY_VOID(r.finish("list topics"));
        const std::vector<std::string> names = node->list_topics();
        w.u8(0);
        w.u32(static_cast<std::uint32_t>(names.size()));
        for (const std::string& n : names) w.str(n);
        return ok();
      }
      case MessageType::kDescribeTopic: {
        const std::string name = r.str(512);
        WEFT_TRY_VOID(r.finish("describe topic"));
        WEFT_TRY(const TopicInfo info, node->describe_topic(name));
        w.u8(0);
        local::write_topic_info(w, info);
        return ok();
      }
      case MessageType::kOpenPartition: {
        const std::string name = r.str(512);
        const std::uint32_t partition = r.u32();
        WEFT_TRY_VOID(r.finish("open partition"));
        if (!c.greeted) return Error{Errc::kFailedPrecondition, "open partition: say hello first (the client's pid is checked there)"};
        WEFT_TRY(const PartitionMemory memory, node->open_partition(name, partition));
        attached.memory = memory.memory;
        w.u8(0);
        w.u64(memory.topic_id);
        w.u32(memory.partition);
        w.u64(memory.memory->size());
        attached.fd = memory.memory->fd();
        return ok();
      }
      case MessageType::kPartitionRoute: {
        const std::string name = r.str(512);
        const std::uint32_t partition = r.u32();
        WEFT_TRY_VOID(r.finish("partition route"));
        WEFT_TRY(const PartitionRoute route, node->partition_route(name, partition));
        w.u8(0);
        w.u8(route.here ? 1 : 0);
        w.u32(static_cast<std::uint32_t>(route.leader));
        w.u32(static_cast<std::uint32_t>(route.leader_epoch));
        w.str(route.kafka_address);
        return ok();
      }
      case MessageType::kOpenLogSlice: {
        const std::string name = r.str(512);
        const std::uint32_t partition = r.u32();
        const Offset offset{r.i64()};
        WEFT_TRY_VOID(r.finish("open log slice"));
        if (!c.greeted) return Error{Errc::kFailedPrecondition, "open log slice: say hello first"};
        WEFT_TRY(LogSlice slice, node->open_log_slice(name, partition, offset));
        w.u8(0);
        w.u64(slice.position);
        w.u64(slice.end);
        w.i64(slice.offset.value);
        w.i64(slice.end_offset.value);
        attached.file = std::move(slice.file);
        attached.fd = attached.file.get();
        return ok();
      }
      case MessageType::kLogOffsetForTimestamp: {
        const std::string name = r.str(512);
        const std::uint32_t partition = r.u32();
        const std::int64_t timestamp = r.i64();
        WEFT_TRY_VOID(r.finish("log offset for timestamp"));
        WEFT_TRY(const TimedOffset found, node->log_offset_for_timestamp(name, partition, timestamp));
        w.u8(0);
        w.i64(found.offset.value);
        return ok();
      }
      case MessageType::kCommitOffsets: {
        const std::string group = r.str(512);
        const std::uint32_t count = r.u32();
        if (count > 1000) return Error{Errc::kInvalidArgument, "commit offsets: more than 1000 entries in one request"};
        std::vector<CommittedOffset> offsets;
        for (std::uint32_t i = 0; i < count && !r.failed(); ++i) {
          CommittedOffset o;
          o.topic = r.str(512);
          o.partition = r.u32();
          o.offset = Offset{r.i64()};
          o.metadata = r.str(64);
          offsets.push_back(std::move(o));
        }
        WEFT_TRY_VOID(r.finish("commit offsets"));
        WEFT_TRY_VOID(node->commit_offsets(group, offsets));
        w.u8(0);
        return ok();
      }
      case MessageType::kFetchOffsets: {
        const std::string group = r.str(512);
        const std::string topic = r.str(512);
        WEFT_TRY_VOID(r.finish("fetch offsets"));
        WEFT_TRY(const std::vector<CommittedOffset> offsets, node->fetch_offsets(group, topic));
        w.u8(0);
        w.u32(static_cast<std::uint32_t>(offsets.size()));
        for (const CommittedOffset& o : offsets) {
          w.str(o.topic);
          w.u32(o.partition);
          w.i64(o.offset.value);
          w.str(o.metadata);
          w.i64(o.commit_time_ms);
        }
        return ok();
      }
      case MessageType::kStatus: {
        WEFT_TRY_VOID(r.finish("status"));
        const LocalServerStats s = [this] {
          std::lock_guard lock(stats_mutex);
          return stats;
        }();
        w.u8(0);
        w.u32(static_cast<std::uint32_t>(node->list_topics().size()));
        w.u64(node->ring_memory_bytes());
        w.u64(static_cast<std::uint64_t>((monotonic_ns() - started_ns) / 1'000'000));
        w.u32(static_cast<std::uint32_t>(getpid()));
        w.u32(s.connections);
        w.u64(s.accepted);
        w.u64(s.refused);
        w.u64(s.bad_requests);
        w.u64(s.requests);
        return ok();
      }
    }
    return Error{Errc::kUnsupported, "unknown request type " + std::to_string(type)};
  }

  void run() {
    epoll_event events[64];
    while (!stopped.load(std::memory_order_relaxed)) {  // relaxed: stop_fd's wakeup orders it
      const int n = epoll_wait(epoll_fd.get(), events, 64, 1000);
      for (int i = 0; i < n; ++i) {
        const int fd = events[i].data.fd;
        if (fd == stop_fd.get()) return;
        if (fd == finished_fd.get()) {
          take_back_finished();
          continue;
        }
        if (fd == listen_fd.get()) {
          accept_one();
          continue;
        }
        auto it = connections.find(fd);
        if (it == connections.end()) continue;
        bool keep = false;
        try {
          keep = (events[i].events & EPOLLIN) != 0 && serve(it->second);
        } catch (const std::exception& e) {
          // Out of memory, or a filesystem error thrown below a request: that client goes, the
          // node and every other client stay.
          log(LogLevel::kError, "local client dropped: its request failed", {{"error", e.what()}});
        }
        if ((events[i].events & (EPOLLHUP | EPOLLERR)) != 0 && (events[i].events & EPOLLIN) == 0) keep = false;
        if (!keep) close_connection(fd);
      }
    }
  }
};

LocalServer::LocalServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

LocalServer::~LocalServer() { stop(); }

const std::string& LocalServer::socket_path() const noexcept { return impl_->options.socket_path; }

LocalServerStats LocalServer::stats() const {
  std::lock_guard lock(impl_->stats_mutex);
  return impl_->stats;
}

Result<std::unique_ptr<LocalServer>> LocalServer::start(Node& node, LocalServerOptions options) {
  if (options.socket_path.empty()) options.socket_path = local::default_socket_path();
  const std::string& path = options.socket_path;
  if (path.size() >= sizeof(sockaddr_un{}.sun_path))
    return Error{Errc::kInvalidArgument, "socket path '" + path + "' is longer than the " +
                                             std::to_string(sizeof(sockaddr_un{}.sun_path) - 1) + " bytes a Unix socket allows"};
  auto impl = std::make_unique<Impl>();
  impl->node = &node;
  impl->options = options;
  WEFT_TRY_VOID(make_parent_directory(path));
  WEFT_TRY_VOID(local::check_socket_directory(path));
  // The lock file serialises nodes starting on one path, so a stale socket is removed safely.
  const std::string lock_path = path + ".lock";
  impl->lock_fd = UniqueFd(open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600));
  if (!impl->lock_fd.valid()) return os_error(Errc::kIo, "opening " + lock_path, errno);
  if (flock(impl->lock_fd.get(), LOCK_EX | LOCK_NB) != 0)
    return Error{Errc::kAlreadyExists, "another weft node holds " + lock_path + "; stop it first or use another --socket"};
  const sockaddr_un addr = socket_address(path);
  struct stat st{};
  if (lstat(path.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode))
      return Error{Errc::kAlreadyExists, path + " exists and is not a socket; remove it or use another --socket"};
    UniqueFd probe(socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0));
    if (connect(probe.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) == 0)
      return Error{Errc::kAlreadyExists, "another weft node is listening on " + path};
    unlink(path.c_str());  // stale: its node is gone
  }
  impl->listen_fd = UniqueFd(socket(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!impl->listen_fd.valid()) return os_error(Errc::kIo, "socket(AF_UNIX)", errno);
  if (bind(impl->listen_fd.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) != 0)
    return os_error(Errc::kIo, "binding " + path, errno);
  if (chmod(path.c_str(), options.socket_mode) != 0) return os_error(Errc::kIo, "chmod " + path, errno);
  if (listen(impl->listen_fd.get(), 128) != 0) return os_error(Errc::kIo, "listen on " + path, errno);
  impl->epoll_fd = UniqueFd(epoll_create1(EPOLL_CLOEXEC));
  impl->stop_fd = UniqueFd(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!impl->epoll_fd.valid() || !impl->stop_fd.valid()) return os_error(Errc::kIo, "epoll/eventfd", errno);
  if (!impl->finished_fd.valid()) return os_error(Errc::kIo, "eventfd", errno);
  for (const int fd : {impl->listen_fd.get(), impl->stop_fd.get(), impl->finished_fd.get()}) {
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.fd = fd;
    if (epoll_ctl(impl->epoll_fd.get(), EPOLL_CTL_ADD, fd, &ev) != 0) return os_error(Errc::kIo, "epoll_ctl", errno);
  }
  if (!local::kernel_reports_unread_bytes())
    log(LogLevel::kWarn, "this kernel does not report a local socket's unread bytes",
        {{"effect", "a client that never reads its responses can hold descriptors until max_connections bounds it"}});
  const std::size_t most_connections = std::min<std::size_t>(options.max_connections + options.reserved_connections, 65'536);
  impl->finished.reserve(most_connections);
  impl->taken_back.reserve(most_connections);
  Impl* raw = impl.get();
  // Owned before the threads start: if one cannot start, stop() ends those that did.
  std::unique_ptr<LocalServer> server(new LocalServer(std::move(impl)));
  raw->topics_worker = std::make_unique<SerialWorker>("weft-local-adm", raw->finished_fd.get());
  raw->offsets_worker = std::make_unique<SerialWorker>("weft-local-ofs", raw->finished_fd.get());
  raw->thread = std::thread([raw] {
    name_this_thread("weft-local");
    raw->run();
  });
  return server;
}

void LocalServer::stop() {
  if (!impl_ || impl_->stopped.exchange(true)) return;
  const std::uint64_t one = 1;
  if (write(impl_->stop_fd.get(), &one, sizeof(one)) < 0) {
    // eventfd writes fail only on overflow; the epoll timeout still ends the loop.
  }
  if (impl_->thread.joinable()) impl_->thread.join();
  impl_->topics_worker.reset();  // a request under way finishes first; those queued are dropped
  impl_->offsets_worker.reset();
  impl_->connections.clear();
  unlink(impl_->options.socket_path.c_str());
  impl_->listen_fd = UniqueFd();
  // The lock file stays (removing it would race a node starting now); its lock goes with the fd.
  impl_->lock_fd = UniqueFd();
}

}  // namespace weft
