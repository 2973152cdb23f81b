#include "weft/client.h"

#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <algorithm>
#include <mutex>

#include "weft/fabric/local_protocol.h"

namespace weft {
namespace {

using local::MessageType;

// `replication.factor` is not a TopicConfig setting but the node's to judge: weftd in a cluster
// takes as many replicas as it has live nodes, a node alone (`alone`, embedded) only 1.
Result<TopicConfig> apply_settings(TopicConfig config, const TopicSettings& settings, bool alone) {
  for (const auto& [key, value] : settings) {
    if (key == "replication.factor") {
      if (alone && value != "1")
        return Error{Errc::kInvalidArgument, "replication factor " + value + " needs a cluster; an embedded node runs alone"};
      continue;
    }
    WEFT_TRY_VOID(set_topic_config(config, key, value));
  }
  return config;
}

class EmbeddedClient final : public Client {
 public:
  explicit EmbeddedClient(Node& node) : node_(node) {}
  Result<TopicInfo> create_topic(std::string_view name, const TopicSettings& settings) override {
    WEFT_TRY(const TopicConfig config, apply_settings(node_.options().default_topic, settings, true));
    return node_.create_topic(name, config);
  }
  Result<void> delete_topic(std::string_view name) override { return node_.delete_topic(name); }
  Result<std::vector<std::string>> list_topics() override { return node_.list_topics(); }
  Result<TopicInfo> describe_topic(std::string_view name) override { return node_.describe_topic(name); }
  Result<NodeStatus> status() override {
    NodeStatus s;
    s.topics = static_cast<std::uint32_t>(node_.list_topics().size());
    s.ring_memory_bytes = node_.ring_memory_bytes();
    s.pid = static_cast<std::uint32_t>(getpid());
    s.embedded = true;
    return s;
  }
  Result<PartitionMemory> open_partition(std::string_view topic, std::uint32_t partition) override {
    return node_.open_partition(topic, partition);
  }
  Result<PartitionRoute> partition_route(std::string_view topic, std::uint32_t partition) override {
    return node_.partition_route(topic, partition);
  }
  Result<LogSlice> open_log_slice(std::string_view topic, std::uint32_t partition, Offset offset) override {
    return node_.open_log_slice(topic, partition, offset);
  }
  Result<Offset> log_offset_for_timestamp(std::string_view topic, std::uint32_t partition, std::int64_t timestamp_ms) override {
    WEFT_TRY(const TimedOffset found, node_.log_offset_for_timestamp(topic, partition, timestamp_ms));
    return found.offset;
  }
  Result<void> commit_offsets(std::string_view group, std::span<const CommittedOffset> offsets) override {
    return node_.commit_offsets(group, offsets);
  }
  Result<std::vector<CommittedOffset>> fetch_offsets(std::string_view group, std::string_view topic) override {
    return node_.fetch_offsets(group, topic);
  }
  bool is_embedded() const noexcept override { return true; }
  std::string describe() const override { return "embedded node"; }

 private:
  Node& node_;
};

class SocketClient final : public Client {
 public:
  SocketClient(UniqueFd fd, std::string path) : fd_(std::move(fd)), path_(std::move(path)) {}

  Result<void> hello() {
    std::vector<std::byte> body;
    local::Writer w(body);
    w.u32(local::kVersion);
    w.str("weft-client");
    w.u32(static_cast<std::uint32_t>(getpid()));
    WEFT_TRY_VOID(call(MessageType::kHello, body, nullptr));
    local::Reader r(response_body_);
    (void)r.u32();
    node_pid_ = r.u32();
    return r.finish("hello response");
  }

  Result<TopicInfo> create_topic(std::string_view name, const TopicSettings& settings) override {
    std::lock_guard lock(mutex_);
    // The node's defaults live in the node: settings travel as names and values, checked here
    // first so a typo is reported before the round trip.
    WEFT_TRY_VOID(apply_settings(TopicConfig{}, settings, false));
    std::vector<std::byte> body;
    local::Writer w(body);
    w.str(name);
    w.u32(static_cast<std::uint32_t>(settings.size()));
    for (const auto& [key, value] : settings) {
      w.str(key);
      w.str(value);
    }
    WEFT_TRY_VOID(call(MessageType::kCreateTopic, body, nullptr));
    local::Reader r(response_body_);
    TopicInfo info = local::read_topic_info(r);
    WEFT_TRY_VOID(r.finish("create topic response"));
    return info;
  }

  Result<void> delete_topic(std::string_view name) override {
    std::lock_guard lock(mutex_);
    std::vector<std::byte> body;
    local::Writer(body).str(name);
    return call(MessageType::kDeleteTopic, body, nullptr);
  }

  Result<std::vector<std::string>> list_topics() override {
    std::lock_guard lock(mutex_);
    WEFT_TRY_VOID(call(MessageType::kListTopics, {}, nullptr));
    local::Reader r(response_body_);
    const std::uint32_t n = r.u32();
    std::vector<std::string> names;
    for (std::uint32_t i = 0; i < n && !r.failed(); ++i) names.push_back(r.str(512));
    WEFT_TRY_VOID(r.finish("list topics response"));
    return names;
  }

  Result<TopicInfo> describe_topic(std::string_view name) override {
    std::lock_guard lock(mutex_);
    std::vector<std::byte> body;
    local::Writer(body).str(name);
    WEFT_TRY_VOID(call(MessageType::kDescribeTopic, body, nullptr));
    local::Reader r(response_body_);
    TopicInfo info = local::read_topic_info(r);
    WEFT_TRY_VOID(r.finish("describe topic response"));
    return info;
  }

  Result<NodeStatus> status() override {
    std::lock_guard lock(mutex_);
    WEFT_TRY_VOID(call(MessageType::kStatus, {}, nullptr));
    local::Reader r(response_body_);
    NodeStatus s;
    s.topics = r.u32();
    s.ring_memory_bytes = r.u64();
    s.uptime_ms = r.u64();
    s.pid = r.u32();
    s.connections = r.u32();
    s.accepted = r.u64();
    s.refused = r.u64();
    s.bad_requests = r.u64();
    s.requests = r.u64();
    WEFT_TRY_VOID(r.finish("status response"));
    return s;
  }

  Result<PartitionMemory> open_partition(std::string_view topic, std::uint32_t partition) override {
    std::lock_guard lock(mutex_);
    std::vector<std::byte> body;
    local::Writer w(body);
    w.str(topic);
    w.u32(partition);
    UniqueFd fd;
    WEFT_TRY_VOID(call(MessageType::kOpenPartition, body, &fd));
    local::Reader r(response_body_);
    PartitionMemory memory;
    memory.topic_id = r.u64();
    memory.partition = r.u32();
    const std::uint64_t size = r.u64();
    WEFT_TRY_VOID(r.finish("open partition response"));
    if (!fd.valid()) return Error{Errc::kCorrupt, "weftd answered open partition without the ring's memory"};
    if (size == 0) return Error{Errc::kCorrupt, "weftd answered open partition with memory of 0 bytes"};
    // Its size checked before anything is mapped or faulted in: memory larger than said would cost
    // this process a touch of every page first.
    WEFT_TRY(SharedMemory mapped, SharedMemory::map(std::move(fd), size));
    memory.memory = std::make_shared<SharedMemory>(std::move(mapped));
    WEFT_TRY(memory.ring, Ring::attach(memory.memory->bytes()));
    return memory;
  }

  Result<PartitionRoute> partition_route(std::string_view topic, std::uint32_t partition) override {
    std::lock_guard lock(mutex_);
    std::vector<std::byte> body;
    local::Writer w(body);
    w.str(topic);
    w.u32(partition);
    WEFT_TRY_VOID(call(MessageType::kPartitionRoute, body, nullptr));
    local::Reader r(response_body_);
    PartitionRoute route;
    route.here = r.u8() != 0;
    route.leader = static_cast<std::int32_t>(r.u32());
    route.leader_epoch = static_cast<std::int32_t>(r.u32());
    route.kafka_address = r.str(512);
    WEFT_TRY_VOID(r.finish("partition route response"));
    return route;
  }

  Result<LogSlice> open_log_slice(std::string_view topic, std::uint32_t partition, Offset offset) override {
    std::lock_guard lock(mutex_);
    std::vector<std::byte> body;
    local::Writer w(body);
    w.str(topic);
    w.u32(partition);
    w.i64(offset.value);
    LogSlice slice;
    WEFT_TRY_VOID(call(MessageType::kOpenLogSlice, body, &slice.file));
    local::Reader r(response_body_);
    slice.position = r.u64();
    slice.end = r.u64();
    slice.offset = Offset{r.i64()};
    slice.end_offset = Offset{r.i64()};
    WEFT_TRY_VOID(r.finish("open log slice response"));
    if (!slice.file.valid()) return Error{Errc::kCorrupt, "weftd answered open log slice without the segment file"};
    if (slice.position > slice.end) return Error{Errc::kCorrupt, "weftd answered a log slice that ends before it starts"};
    return slice;
  }

  Result<Offset> log_offset_for_timestamp(std::string_view topic, std::uint32_t partition, std::int64_t timestamp_ms) override {
    std::lock_guard lock(mutex_);
    std::vector<std::byte> body;
    local::Writer w(body);
    w.str(topic);
    w.u32(partition);
    w.i64(timestamp_ms);
    WEFT_TRY_VOID(call(MessageType::kLogOffsetForTimestamp, body, nullptr));
    local::Reader r(response_body_);
    const Offset offset{r.i64()};
    WEFT_TRY_VOID(r.finish("log offset for timestamp response"));
    return offset;
  }

  Result<void> commit_offsets(std::string_view group, std::span<const CommittedOffset> offsets) override {
    std::lock_guard lock(mutex_);
    // Parts by encoded size, each well inside the node's 64 KiB request limit.
    constexpr std::size_t kPartBytes = 48 * 1024;
    for (std::size_t from = 0; from < offsets.size();) {
      std::vector<std::byte> entries;
      local::Writer e(entries);
      std::uint32_t count = 0;
      for (; from < offsets.size() && entries.size() < kPartBytes && count < 1000; ++from, ++count) {
        const CommittedOffset& o = offsets[from];
        if (o.metadata.size() > 64) return Error{Errc::kInvalidArgument, "commit: metadata over the socket is limited to 64 bytes"};
        e.str(o.topic);
        e.u32(o.partition);
        e.i64(o.offset.value);
        e.str(o.metadata);
      }
      std::vector<std::byte> body;
      local::Writer w(body);
      w.str(group);
      w.u32(count);
      body.insert(body.end(), entries.begin(), entries.end());
      WEFT_TRY_VOID(call(MessageType::kCommitOffsets, body, nullptr));
    }
    return ok();
  }

  Result<std::vector<CommittedOffset>> fetch_offsets(std::string_view group, std::string_view topic) override {
    std::lock_guard lock(mutex_);
    std::vector<std::byte> body;
    local::Writer w(body);
    w.str(group);
    w.str(topic);
    WEFT_TRY_VOID(call(MessageType::kFetchOffsets, body, nullptr));
    local::Reader r(response_body_);
    const std::uint32_t n = r.u32();
    std::vector<CommittedOffset> offsets;
    for (std::uint32_t i = 0; i < n && i < 100'000 && !r.failed(); ++i) {
      CommittedOffset o;
      o.topic = r.str(512);
      o.partition = r.u32();
      o.offset = Offset{r.i64()};
      o.metadata = r.str(4096);
      o.commit_time_ms = r.i64();
      offsets.push_back(std::move(o));
    }
    WEFT_TRY_VOID(r.finish("fetch offsets response"));
    return offsets;
  }

  bool is_embedded() const noexcept override { return false; }
  std::string describe() const override { return "weftd at " + path_ + " (pid " + std::to_string(node_pid_) + ")"; }

 private:
  // One request, one response; the response body (after the ok byte) lands in response_body_.
  Result<void> call(MessageType type, std::span<const std::byte> body, UniqueFd* fd) {
    const std::uint32_t id = ++request_id_;
    local::begin_message(buffer_, static_cast<std::uint16_t>(type), id);
    buffer_.insert(buffer_.end(), body.begin(), body.end());
    local::finish_message(buffer_);
    // A node that refused this client said why before closing: a failed send still reads that.
    const Result<void> sent = local::send_message(fd_.get(), buffer_);
    UniqueFd received_fd;
    std::span<const std::byte> payload;
    local::Header header;
    // Replies to requests that timed out earlier may still arrive: skip them (bounded), so one
    // slow answer does not put every later call out of step. Id 0 is a refusal at accept.
    for (int stale = 0;; ++stale) {
      received_fd = UniqueFd();
      Result<void> received = local::receive_message(fd_.get(), buffer_, local::kMaxMessageBytes, &received_fd);
      if (!received.ok() && received.error().code == Errc::kAborted) {
        // A node that closes a connection with our request unread (a refusal at accept) makes
        // the kernel report ECONNRESET first, ahead of the reply it queued before closing.
        received = local::receive_message(fd_.get(), buffer_, local::kMaxMessageBytes, &received_fd);
      }
      if (!sent.ok() && !received.ok())
        return Error{Errc::kUnavailable, "weftd at " + path_ + " is gone (" + sent.error().message + ")"};
      if (!received.ok()) {
        if (received.error().code == Errc::kAborted)
          return Error{Errc::kUnavailable, "weftd at " + path_ + " closed the connection; is it still running?"};
        return received;
      }
      WEFT_TRY(header, local::parse_header(buffer_, payload));
      if (header.request_id == id || header.request_id == 0 || stale >= 64) break;
    }
    if (payload.empty()) return Error{Errc::kCorrupt, "weftd answered with an empty message"};
    local::Reader r(payload);
    const auto code = static_cast<Errc>(r.u8());
    if (code != Errc::kOk) {
      std::string message = r.str(64 * 1024);
      return Error{code, message.empty() ? std::string("weftd refused the request") : std::move(message)};
    }
    if (!sent.ok()) return Error{Errc::kUnavailable, "weftd at " + path_ + " closed the connection"};
    if (header.type != (static_cast<std::uint16_t>(type) | local::kResponseBit) || header.request_id != id)
      return Error{Errc::kCorrupt, "weftd answered a different request"};
    response_body_.assign(payload.begin() + 1, payload.end());
    if (fd != nullptr) *fd = std::move(received_fd);
    return ok();
  }

  std::mutex mutex_;
  UniqueFd fd_;
  std::string path_;
  std::uint32_t request_id_ = 0;
  std::uint32_t node_pid_ = 0;
  std::vector<std::byte> buffer_;
  std::vector<std::byte> response_body_;
};

}  // namespace

Result<std::shared_ptr<Client>> Client::connect(std::string socket_path) {
  // The built-in default only: WEFT_SOCKET names a place as --socket does, the user's choice.
  const char* named = std::getenv("WEFT_SOCKET");
  const bool default_path = socket_path.empty();
  const bool builtin_path = default_path && (named == nullptr || *named == '\0');
  if (default_path) {
    // The default path may be the shared /tmp fallback, where another user could plant a socket.
    socket_path = local::default_socket_path();
    if (Result<void> trusted = local::check_socket_directory(socket_path); !trusted.ok() && trusted.error().code != Errc::kNotFound)
      return std::move(trusted).error();
  }
  sockaddr_un addr{};
  if (socket_path.size() >= sizeof(addr.sun_path))
    return Error{Errc::kInvalidArgument, "socket path '" + socket_path + "' is too long for a Unix socket"};
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, socket_path.data(), socket_path.size());
  UniqueFd fd(socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0));
  if (!fd.valid()) return os_error(Errc::kIo, "socket(AF_UNIX)", errno);
  if (::connect(fd.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) != 0) {
    const int error = errno;
    if (error == ENOENT || error == ECONNREFUSED)
      return Error{Errc::kUnavailable, "no weft node is running at " + socket_path + " (start one with `weftd`, or pass --socket PATH)"};
    if (error == EACCES)
      return Error{Errc::kPermissionDenied, "not allowed to open " + socket_path + " (check its file mode and weftd's socket_mode)"};
    return os_error(Errc::kUnavailable, "connecting to " + socket_path, error);
  }
  if (builtin_path) {
    // And whoever listens there must be this user or root: a node another user started at the
    // default place would get this user's records.
    ucred server{};
    socklen_t size = sizeof server;
    if (getsockopt(fd.get(), SOL_SOCKET, SO_PEERCRED, &server, &size) != 0) return os_error(Errc::kIo, "SO_PEERCRED of " + socket_path, errno);
    if (server.uid != geteuid() && server.uid != 0)
      return Error{Errc::kPermissionDenied, "the node at " + socket_path + " runs as uid " + std::to_string(server.uid) +
                                                ", not as this user or root: refusing it (pass --socket PATH to use it anyway)"};
  }
  // A receive that outlives a hung node fails instead of blocking the caller forever.
  timeval timeout{30, 0};
  setsockopt(fd.get(), SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
  auto client = std::make_shared<SocketClient>(std::move(fd), socket_path);
  WEFT_TRY_VOID(client->hello());
  return std::shared_ptr<Client>(std::move(client));
}

std::shared_ptr<Client> Client::embedded(Node& node) { return std::make_shared<EmbeddedClient>(node); }

}  // namespace weft
