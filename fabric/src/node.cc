#include "weft/node.h"

#include "weft/fabric/file.h"
#include "weft/fabric/log.h"
#include "weft/fabric/record_batch.h"
#include "weft/fabric/thread_name.h"
#include "node_test_hooks.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <ctime>

#include <algorithm>
#include <array>
#include <atomic>
#include <bit>
#include <charconv>
#include <cstring>
#include <condition_variable>
#include <deque>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <shared_mutex>
#include <thread>

#include <tbb/parallel_for.h>

namespace weft {
namespace {

constexpr std::size_t kMinRing = std::size_t{64} << 10;
constexpr std::size_t kMaxRing = std::size_t{1} << 30;
constexpr std::int64_t kSealEveryNs = 20'000'000;     // a stalled claim is looked at this often
constexpr std::int64_t kReclaimEveryNs = 1'000'000'000;
constexpr std::int64_t kAckWaitIntervalUs = 10;  // between passes while producers wait on the log
// Between passes while a replica of a busy partition is served here: the replication thread is
// woken by them (records to push, a durable end to report). Those paths also ask for a pass
// when they act (hurry), so this is the backstop, kept lazy: three nodes on two cores passing
// every 10 µs starved the very threads that move the records (acks=all p50 1.3 ms → 0.6 ms).
constexpr std::int64_t kReplicaPaceIntervalUs = 250;

// Runs fn(0..n-1) on oneTBB's workers: recovering a partition's log is a scan of its segments,
// so a node with many partitions starts in the time of its largest few, not of all of them.
template <class Fn>
void for_each_in_parallel(std::size_t n, const Fn& fn) {
#if defined(__SANITIZE_THREAD__)
  for (std::size_t i = 0; i < n; ++i) fn(i);  // TSan cannot see oneTBB's own (uninstrumented) synchronisation
#else
  tbb::parallel_for(std::size_t{0}, n, [&](std::size_t i) { fn(i); });
#endif
}

template <class Int>
Result<Int> parse_int(std::string_view key, std::string_view text) {
  Int value{};
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc{} || end != text.data() + text.size())
    return Error{Errc::kInvalidArgument, "topic config " + std::string(key) + ": '" + std::string(text) + "' is not a whole number in range"};
  return value;
}

}  // namespace

Result<void> validate_topic_name(std::string_view name) {
  if (name.empty() || name.size() > 249)
    return Error{Errc::kInvalidArgument, "topic name must be 1 to 249 characters long"};
  if (name == "." || name == "..") return Error{Errc::kInvalidArgument, "topic name cannot be '.' or '..'"};
  for (const char c : name) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
                    c == '_' || c == '-';
    if (!ok) return Error{Errc::kInvalidArgument, "topic name '" + std::string(name) + "' may hold only letters, digits, '.', '_' and '-'"};
  }
  return ok();
}

Result<void> validate_topic_config(const TopicConfig& c) {
  if (c.partitions < 1 || c.partitions > 10'000)
    return Error{Errc::kInvalidArgument, "partitions must be between 1 and 10000"};
  if (!std::has_single_bit(c.ring_capacity_bytes) || c.ring_capacity_bytes < kMinRing || c.ring_capacity_bytes > kMaxRing)
    return Error{Errc::kInvalidArgument, "ring.capacity.bytes must be a power of two from 65536 to 1073741824"};
  if (c.max_batch_bytes < 1024 || c.max_batch_bytes > c.ring_capacity_bytes / 4)
    return Error{Errc::kInvalidArgument, "max.batch.bytes must be between 1024 and a quarter of ring.capacity.bytes (" +
                                             std::to_string(c.ring_capacity_bytes / 4) + ")"};
  if (c.retention_bytes < -1 || c.retention_ms < -1)
    return Error{Errc::kInvalidArgument, "retention.bytes and retention.ms must be -1 (unlimited) or positive"};
  if (c.segment_bytes < 4096 || c.segment_bytes > INT32_MAX)
    return Error{Errc::kInvalidArgument, "segment.bytes must be between 4096 and 2147483647"};
  if (c.segment_ms < 1) return Error{Errc::kInvalidArgument, "segment.ms must be positive"};
  if (c.fsync == FsyncPolicy::kInterval && c.fsync_interval_ms <= 0)
    return Error{Errc::kInvalidArgument, "fsync=interval needs a positive interval in milliseconds"};
  if (c.producer_slots < 1 || c.producer_slots > 63) return Error{Errc::kInvalidArgument, "producer.slots must be between 1 and 63"};
  if (c.min_insync_replicas < 1 || c.min_insync_replicas > 64)
    return Error{Errc::kInvalidArgument, "min.insync.replicas must be between 1 and 64"};
  if (c.consumer_slots < 1 || c.consumer_slots > 4096)
    return Error{Errc::kInvalidArgument, "consumer.slots must be between 1 and 4096"};
  return ok();
}

Result<void> set_topic_config(TopicConfig& c, std::string_view key, std::string_view value) {
  if (key == "partitions") {
    WEFT_TRY(const auto v, parse_int<std::uint32_t>(key, value));
    c.partitions = v;
  } else if (key == "ring.capacity.bytes") {
    WEFT_TRY(const auto v, parse_int<std::size_t>(key, value));
    c.ring_capacity_bytes = v;
  } else if (key == "max.batch.bytes") {
    WEFT_TRY(const auto v, parse_int<std::size_t>(key, value));
    c.max_batch_bytes = v;
  } else if (key == "retention.bytes") {
    WEFT_TRY(const auto v, parse_int<std::int64_t>(key, value));
    c.retention_bytes = v;
  } else if (key == "retention.ms") {
    WEFT_TRY(const auto v, parse_int<std::int64_t>(key, value));
    c.retention_ms = v;
  } else if (key == "segment.bytes") {
    WEFT_TRY(const auto v, parse_int<std::int64_t>(key, value));
    c.segment_bytes = v;
  } else if (key == "segment.ms") {
    WEFT_TRY(const auto v, parse_int<std::int64_t>(key, value));
    c.segment_ms = v;
  } else if (key == "min.insync.replicas") {
    WEFT_TRY(const auto v, parse_int<std::uint32_t>(key, value));
    c.min_insync_replicas = v;
  } else if (key == "producer.slots") {
    WEFT_TRY(const auto v, parse_int<std::uint32_t>(key, value));
    c.producer_slots = v;
  } else if (key == "consumer.slots") {
    WEFT_TRY(const auto v, parse_int<std::uint32_t>(key, value));
    c.consumer_slots = v;
  } else if (key == "flow.control") {
    if (value == "none") c.consumer_flow_control = false;
    else if (value == "consumers") c.consumer_flow_control = true;
    else return Error{Errc::kInvalidArgument, "flow.control must be none or consumers"};
  } else if (key == "fsync") {
    if (value == "none") {
      c.fsync = FsyncPolicy::kNone;
    } else if (value == "always") {
      c.fsync = FsyncPolicy::kAlways;
    } else if (value.starts_with("interval=")) {
      WEFT_TRY(const auto v, parse_int<std::int64_t>(key, value.substr(9)));
      c.fsync = FsyncPolicy::kInterval;
      c.fsync_interval_ms = v;
    } else {
      return Error{Errc::kInvalidArgument, "fsync must be none, always or interval=<ms>"};
    }
  } else {
    return Error{Errc::kInvalidArgument, "unknown topic config '" + std::string(key) +
                                             "' (known: partitions, ring.capacity.bytes, max.batch.bytes, retention.bytes, "
                                             "retention.ms, segment.bytes, segment.ms, fsync, flow.control, min.insync.replicas, producer.slots, "
                                             "consumer.slots)"};
  }
  return ok();
}

std::string fsync_policy_name(const TopicConfig& c) {
  switch (c.fsync) {
    case FsyncPolicy::kNone: return "none";
    case FsyncPolicy::kAlways: return "always";
    case FsyncPolicy::kInterval: return "interval=" + std::to_string(c.fsync_interval_ms);
  }
  return "none";
}

// ---- state ----------------------------------------------------------------------------------

// Ring positions that replication writes point at (PushHold), one slot per write in flight: the
// reuse limit never passes the lowest. Holds share it, and through it the ring's mapping, so a
// write in flight keeps both after the ring is replaced or its topic deleted.
struct PushPins {
  explicit PushPins(std::shared_ptr<SharedMemory> m) : memory(std::move(m)) {
    for (auto& slot : slots) slot.store(PushHold::kFree, std::memory_order_relaxed);
  }
  std::uint64_t lowest() const noexcept {
    std::uint64_t low = PushHold::kFree;
    // Acquire: pairs with PushHold::release, so the space is reused only after the write's reads.
    for (const auto& slot : slots) low = std::min(low, slot.load(std::memory_order_acquire));
    return low;
  }
  std::shared_ptr<SharedMemory> memory;
  std::array<std::atomic<std::uint64_t>, 32> slots;  // taken under the partition's log_mutex
};

struct Node::Partition {
  Partition(std::shared_ptr<SharedMemory> m, Ring r) : memory(m), ring(r), owner(r), pins(std::make_shared<PushPins>(std::move(m))) {}
  std::shared_ptr<SharedMemory> memory;
  Ring ring;
  RingOwner owner;  // the maintenance pass alone uses it (under State::maintain_mutex)
  // The log writer's state below (writer, log_writes, written_*, ...) and the owner's moves: taken
  // by the maintenance pass for each partition it visits and by a follower's write_through, which
  // then waits on the disk without holding up every other partition's pass. Always after
  // State::maintain_mutex when both are held.
  std::mutex log_mutex;
  std::shared_ptr<PushPins> pins;  // replaced with the ring, under log_mutex
  Ring::Mark created_at{};
  std::int64_t last_seal_ns = 0;
  std::int64_t last_reclaim_ns = 0;
  std::uint64_t sealed = 0;
  std::deque<Ring::Mark> checkpoints;  // frontiers of earlier passes, oldest first (maintenance only)
  PartitionStats stats;  // under State::stats_mutex
  // The log writer (under log_mutex): a consumer that reads every batch into the log. The log
  // itself is set at creation and thread-safe, so readers behind the ring use it from any thread.
  std::unique_ptr<PartitionLog> log;
  std::optional<Consumer> writer;
  std::optional<RingBatch> refused;  // a batch the log did not take (a full disk): offered again
  bool unflushed = false;            // a flush failed: what the log took waits in its buffer
  // Passes whose writes the disk still holds (oldest first): the log's offset at the end of each
  // and the writer's ring offset and position there, for moving written_* when they finish.
  struct LogWrite {
    Offset log_next;
    Offset ring_next;
    std::uint64_t position = 0;
  };
  std::vector<LogWrite> log_writes;
  std::uint64_t written_position = 0;  // ring position up to which the log holds every batch...
  Offset written_offset{0};            // ... and the offset there
  std::uint64_t durable_position = 0;  // ... and synced as the topic asks: producers may reuse
  Offset durable_offset{0};            // what lies before it
  Offset published_written{-1};        // what producers were last told
  Offset published_durable{-1};
  std::int64_t last_sync_ns = 0;
  std::int64_t last_retention_ns = 0;
  // What a replicator here acts on, as of the last pass that told it: new batches, the log's
  // progress and room freed in the ring (under log_mutex).
  struct ReplicaNews {
    Offset claimed{-1};
    Offset written{-1};
    Offset durable{-1};
    std::uint64_t limit = 0;
    bool operator==(const ReplicaNews&) const = default;
  };
  ReplicaNews replica_news;
  Offset stats_written_offset{-1};  // written_offset when the log's figures were last read...
  std::int64_t log_stats_ns = 0;    // ... and when
  std::int64_t log_retry_at_ns = 0;
  std::string log_error;  // why the log takes nothing now (empty: it does)
  Errc log_error_code = Errc::kOk;
  bool log_stopped = false;  // for good: a failed sync or a broken ring; the topic must be recreated
  bool log_backlog = false;  // the last pass left batches to write
  std::atomic<int> replicas{0};  // Node::Replica views of it (the replication thread's)
  std::int64_t waited_claim = -1;      // the claim offset at the last pass...
  std::int64_t last_claim_seen_ns = 0;  // ... and when it last moved
  std::int64_t last_unseen_claim_ns = 0;  // when a pass last found claims its replicator had not acted on
  std::string offline;       // set: the log could not be trusted at recovery; nothing is served
};

struct Node::Topic {
  std::string name;
  std::uint64_t id = 0;
  TopicConfig config;
  std::vector<std::unique_ptr<Partition>> partitions;
  std::size_t ring_bytes = 0;  // what create_topic added to State::ring_bytes; delete takes back as much
  std::uint64_t rings_replaced = 0;  // under State::topics_mutex: rings a rewind replaced
  bool deleted = false;  // under State::maintain_mutex: a pass that took it before its delete leaves it be
};

struct Node::State {
  // Names a create or a delete is working on: another of the same name waits its turn, so a
  // create never opens the log folders that a delete of the name is still removing.
  std::mutex busy_names_mutex;
  std::condition_variable busy_names_changed;
  std::set<std::string, std::less<>> busy_names;  // guarded by busy_names_mutex
  // Creates take turns under it (before topics_mutex) for their budget and count check, the
  // topic's file and its insert: the file's syncs then hold no reader of the map.
  std::mutex topic_admin_mutex;
  mutable std::shared_mutex topics_mutex;
  std::map<std::string, std::shared_ptr<Topic>, std::less<>> topics;
  std::uint64_t next_id = 1;
  std::atomic<std::uint64_t> topics_version{0};  // moves on every create and delete
  std::size_t ring_bytes = 0;
  std::mutex maintain_mutex;
  mutable std::mutex stats_mutex;
  std::unique_ptr<OffsetStore> offsets;  // none without NodeOptions::offsets_dir
  // What the last pass saw, for the maintenance thread's pace and wake-ups. Relaxed atomics:
  // hints, written by any caller of maintain() and read by the thread outside the pass's lock.
  std::atomic<bool> ack_waiters{false};      // producers waiting
  std::atomic<bool> replica_waiters{false};  // ... or a busy partition with a replica here
  std::atomic<bool> replica_news{false};     // ... and something moved there that its replicator acts on
  std::mutex wake_mutex;
  std::condition_variable wake;
  bool stopping = false;
  bool hurry = false;        // a pass is wanted now (guarded by wake_mutex)
  std::atomic<int> pass_event{-1};  // an eventfd told after passes that found log waiters
  std::atomic<int> replication_event{-1};  // another (the replication thread's), told the same way
  std::mutex event_mutex;  // the event fds change and are written under it
  mutable std::mutex cluster_hooks_mutex;  // guards the two hooks a ClusterNode installs:
  PartitionRouter router;                    // empty: every partition is led here
  bool had_router = false;                   // a cluster node (its router goes before its threads stop)
  std::shared_ptr<OffsetMirror> offset_mirror;
  std::shared_ptr<OffsetMirror> mirror() const {
    std::lock_guard lock(cluster_hooks_mutex);
    return offset_mirror;
  }
  std::thread thread;
};

Node::Node(NodeOptions options) : options_(std::move(options)), state_(std::make_unique<State>()) {}

Node::~Node() { stop(); }

namespace {

RingConfig ring_config_for(const TopicConfig& config) {
  RingConfig ring_config;
  ring_config.capacity_bytes = config.ring_capacity_bytes;
  // A frame is its 16-byte header and the batch, padded to 8: exactly what max.batch.bytes allows.
  ring_config.max_frame_bytes =
      std::min((config.max_batch_bytes + ring_layout::kFrameHeaderBytes + ring_layout::kFrameAlign - 1) & ~(ring_layout::kFrameAlign - 1),
               config.ring_capacity_bytes / 2);
  ring_config.producer_slots = config.producer_slots;
  ring_config.consumer_slots = config.consumer_slots;
  return ring_config;
}

ShmOptions ring_memory_options(const NodeOptions& options, const std::string& topic, std::uint32_t partition, std::size_t bytes) {
  ShmOptions shm;
  // The name only labels the mapping (memfd names stop at 249 bytes, hugetlbfs file names at 255),
  // so a long topic name is cut rather than refused.
  shm.name = "weft-" + topic.substr(0, 200) + "-" + std::to_string(partition);
  shm.size_bytes = bytes;
  shm.prefer_hugepages = options.prefer_hugepages;
  shm.hugetlbfs_dir = options.hugetlbfs_dir;
  return shm;
}

}  // namespace

Result<std::unique_ptr<Node>> Node::start(NodeOptions options) {
  WEFT_TRY_VOID(validate_topic_config(options.default_topic));
  if (options.maintenance_min_interval_us <= 0 || options.maintenance_max_interval_us < options.maintenance_min_interval_us)
    return Error{Errc::kInvalidArgument, "maintenance intervals must be positive and min <= max"};
  std::unique_ptr<Node> node(new Node(std::move(options)));
  if (!node->options_.metadata_dir.empty()) WEFT_TRY_VOID(node->load_topics());
  if (!node->options_.offsets_dir.empty()) {
    WEFT_TRY(node->state_->offsets, OffsetStore::open(node->options_.offsets_dir));
    for (const OffsetLoadProblem& problem : node->state_->offsets->load_problems())
      log(LogLevel::kError, "consumer group offsets not loaded", {{"group", problem.group}, {"reason", problem.error.message}});
  }
  if (node->options_.start_maintenance_thread) {
    Node* self = node.get();
    node->state_->thread = std::thread([self] {
      name_this_thread("weft-maint");
      // The default 50 µs timer slack would double a short sleep: producers waiting on the
      // log are answered by this thread's next pass.
      prctl(PR_SET_TIMERSLACK, 1000UL, 0UL, 0UL, 0UL);
      const std::int64_t min_us = self->options_.maintenance_min_interval_us;
      const std::int64_t max_us = self->options_.maintenance_max_interval_us;
      std::int64_t interval = max_us;
      std::int64_t last_pass = monotonic_ns();
      std::unique_lock lock(self->state_->wake_mutex);
      while (!self->state_->stopping) {
        lock.unlock();
        const double used = self->maintain_pass();
        const bool ack_waiters = self->state_->ack_waiters.load(std::memory_order_relaxed);
        const bool replica_news = self->state_->replica_news.load(std::memory_order_relaxed);
        const bool replica_waiters = self->state_->replica_waiters.load(std::memory_order_relaxed);
        // Relaxed: the fd is set once, before the listener that set it waits on it.
        if (ack_waiters || replica_news) {
          // Under the mutex the setters take: once set_*_event returns, no write to the old fd
          // is under way or to come (its owner may close it, and the number be reused).
          std::lock_guard events(self->state_->event_mutex);
          const std::uint64_t one = 1;
          const int pass = self->state_->pass_event.load(std::memory_order_relaxed);
          const int replication = self->state_->replication_event.load(std::memory_order_relaxed);
          if (ack_waiters && pass >= 0) (void)!::write(pass, &one, sizeof one);
          // Only with news: three nodes on two cores woke their replicators at every paced pass
          // (every 250 µs while records flow), mostly for nothing.
          if (replica_news && replication >= 0) (void)!::write(replication, &one, sizeof one);
        }
        const std::int64_t now = monotonic_ns();
        const auto elapsed_us = static_cast<double>(now - last_pass) / 1000.0;
        last_pass = now;
        // Come back before the busiest ring's producers have used a quarter of their free space,
        // and no sooner: every wakeup of this thread takes a cpu from a producer or a consumer.
        const double next = used > 0 ? elapsed_us * 0.25 / used : static_cast<double>(max_us);
        interval = std::clamp(static_cast<std::int64_t>(next), min_us, max_us);
        // Producers waiting on acknowledgements: the next pass soon, whatever the rings' pace.
        if (ack_waiters) interval = std::min<std::int64_t>(interval, kAckWaitIntervalUs);
        if (replica_waiters) interval = std::min<std::int64_t>(interval, kReplicaPaceIntervalUs);
        lock.lock();
        self->state_->wake.wait_for(lock, std::chrono::microseconds(interval), [self] { return self->state_->stopping || self->state_->hurry; });
        self->state_->hurry = false;
      }
    });
  }
  return node;
}

void Node::stop() {
  {
    std::lock_guard lock(state_->wake_mutex);
    if (state_->stopping) return;
    state_->stopping = true;
  }
  state_->wake.notify_all();
  if (state_->thread.joinable()) state_->thread.join();
  maintain();  // a last pass: counters and limits as of the stop
}

void Node::hurry() {
  {
    std::lock_guard lock(state_->wake_mutex);
    state_->hurry = true;
  }
  state_->wake.notify_one();
}

void Node::set_pass_event(int event_fd) noexcept {
  std::lock_guard lock(state_->event_mutex);
  state_->pass_event.store(event_fd, std::memory_order_relaxed);
}
void Node::set_replication_event(int event_fd) noexcept {
  std::lock_guard lock(state_->event_mutex);
  state_->replication_event.store(event_fd, std::memory_order_relaxed);
}

std::uint64_t Node::topics_version() const noexcept {
  return state_->topics_version.load(std::memory_order_acquire);  // pairs with the release in create/delete
}

std::size_t Node::ring_memory_bytes() const {
  std::shared_lock lock(state_->topics_mutex);
  return state_->ring_bytes;
}

Result<TopicInfo> Node::create_topic(std::string_view name, const TopicConfig& config) {
  return create_topic_impl(name, config, !options_.metadata_dir.empty());
}

// Holds a topic name's turn (Node::State::busy_names) for a create or a delete.
class Node::NameTurn {
 public:
  NameTurn(State& state, std::string_view name) : state_(state), name_(name) {
    std::unique_lock lock(state_.busy_names_mutex);
    state_.busy_names_changed.wait(lock, [&] { return !state_.busy_names.contains(name_); });
    state_.busy_names.insert(name_);
  }
  ~NameTurn() {
    {
      std::lock_guard lock(state_.busy_names_mutex);
      state_.busy_names.erase(name_);
    }
    state_.busy_names_changed.notify_all();
  }
  NameTurn(const NameTurn&) = delete;
  NameTurn& operator=(const NameTurn&) = delete;

 private:
  State& state_;
  std::string name_;
};

Result<TopicInfo> Node::create_topic_impl(std::string_view name, const TopicConfig& config, bool save, bool recovering) {
  WEFT_TRY_VOID(validate_topic_name(name));
  WEFT_TRY_VOID(validate_topic_config(config));
  const NameTurn turn(*state_, name);
  const RingConfig ring_config = ring_config_for(config);
  const std::size_t ring_bytes = Ring::required_bytes(ring_config);
  {
    std::shared_lock lock(state_->topics_mutex);
    if (state_->topics.contains(name)) return Error{Errc::kAlreadyExists, "topic '" + std::string(name) + "' already exists"};
    if (state_->topics.size() >= options_.max_topics)
      return Error{Errc::kResourceExhausted, "the node holds its maximum of " + std::to_string(options_.max_topics) + " topics"};
    if (state_->ring_bytes + ring_bytes * config.partitions > options_.ring_memory_budget_bytes)
      return Error{Errc::kResourceExhausted,
                   "topic '" + std::string(name) + "' needs " + std::to_string(ring_bytes * config.partitions) +
                       " bytes of ring memory; the node's budget has " +
                       std::to_string(options_.ring_memory_budget_bytes - state_->ring_bytes) +
                       " left (use fewer partitions or a smaller ring.capacity.bytes)"};
  }
  // Rings are made outside the lock: hugepage reservation and zeroing take milliseconds.
  auto topic = std::make_shared<Topic>();
  topic->name = std::string(name);
  topic->config = config;
  // Logs first, all partitions at once (each recovers its folder); then the rings.
  std::vector<std::optional<Result<std::unique_ptr<PartitionLog>>>> logs(config.partitions);
  if (options_.open_log)
    for_each_in_parallel(config.partitions, [&](std::size_t p) { logs[p].emplace(options_.open_log(topic->name, static_cast<std::uint32_t>(p), config)); });
  for (std::uint32_t p = 0; p < config.partitions; ++p) {
    Result<SharedMemory> memory = SharedMemory::create(ring_memory_options(options_, topic->name, p, ring_bytes));
    if (!memory.ok()) return Error{memory.error().code, "topic '" + topic->name + "' partition " + std::to_string(p) + ": " + memory.error().message};
    auto shared = std::make_shared<SharedMemory>(std::move(*memory));
    std::unique_ptr<PartitionLog> log;
    RingConfig partition_config = ring_config;
    std::string offline;  // why this partition serves nothing
    if (options_.open_log) {
      Result<std::unique_ptr<PartitionLog>>& opened = *logs[p];
      if (!opened.ok()) {
        const std::string why = "topic '" + topic->name + "' partition " + std::to_string(p) + " log: " + opened.error().message;
        // A new topic must start whole. A recovered one with a log that cannot be trusted (a
        // corrupt batch inside a closed segment) keeps that partition offline, untouched for
        // an operator, and the others serve.
        if (!recovering || opened.error().code != Errc::kCorrupt) return Error{opened.error().code, why};
        offline = "offline: " + opened.error().message;
        weft::log(LogLevel::kError, "partition offline", {{"topic", topic->name}, {"partition", std::to_string(p)}, {"reason", opened.error().message}});
      } else {
        log = std::move(*opened);
        partition_config.initial_offset = log->next_offset();  // the ring carries on where the log ends
      }
    }
    WEFT_TRY(Ring ring, Ring::format(shared->bytes(), partition_config));
    // Fenced until the replicator stamps this node's role (see TopicConfig::replicated).
    if (config.replicated) set_leader_epoch(ring, ring_layout::kFollowing);
    auto partition = std::make_unique<Partition>(shared, ring);
    if (!offline.empty()) {
      // Producers are refused at attach (the ring says its log is corrupt); readers get the reason.
      partition->offline = offline;
      partition->log_error = offline;
      partition->log_error_code = Errc::kCorrupt;
      publish_log_progress(ring, LogProgress{Offset{0}, Offset{0}, Errc::kCorrupt});
    }
    if (log) {
      WEFT_TRY(Consumer writer, Consumer::attach(ring, StartAt::kEarliest));
      partition->writer.emplace(std::move(writer));
      partition->written_offset = log->next_offset();
      // What was read back above the recovery point may be only in the page cache (the process
      // was killed): durable once the topic's next sync, as its policy times it, has covered it.
      partition->durable_offset = log->synced_offset();
      partition->log = std::move(log);
      partition->written_position = partition->durable_position = ring.reuse_limit().position.value;
      partition->last_sync_ns = monotonic_ns();  // an fsync interval starts with the partition
      publish_log_progress(ring, LogProgress{partition->written_offset, partition->durable_offset, Errc::kOk});
    }
    partition->created_at = ring.reuse_limit();
    partition->stats.partition = p;
    partition->stats.memory = shared->describe();
    topic->partitions.push_back(std::move(partition));
  }
  std::lock_guard admin(state_->topic_admin_mutex);
  topic->ring_bytes = ring_bytes * config.partitions;
  {
    // Checked again: another create may have taken the budget or the last topic while the rings
    // were made (not the name: this create holds its turn). Creates wait for the admin lock;
    // a delete only gives budget back.
    std::shared_lock lock(state_->topics_mutex);
    if (state_->topics.size() >= options_.max_topics)
      return Error{Errc::kResourceExhausted, "the node holds its maximum of " + std::to_string(options_.max_topics) + " topics"};
    if (state_->ring_bytes + topic->ring_bytes > options_.ring_memory_budget_bytes)
      return Error{Errc::kResourceExhausted, "topic '" + std::string(name) + "' needs " + std::to_string(topic->ring_bytes) +
                                                 " bytes of ring memory; the node's budget has " +
                                                 std::to_string(options_.ring_memory_budget_bytes - state_->ring_bytes) + " left"};
  }
  if (save) WEFT_TRY_VOID(save_topic(topic->name, config));  // its syncs, with no reader waiting
  {
    std::unique_lock lock(state_->topics_mutex);
    topic->id = state_->next_id++;
    state_->ring_bytes += topic->ring_bytes;
    state_->topics.emplace(topic->name, topic);
    // Release: a reader that sees the new version finds the topic map changed under the mutex.
    state_->topics_version.fetch_add(1, std::memory_order_release);
  }
  return describe_topic(name);
}

Result<void> Node::delete_topic(std::string_view name) {
  // Until its file and logs are gone, a create of the name waits: it would write a file, and
  // open folders, that this delete then removes.
  const NameTurn turn(*state_, name);
  std::shared_ptr<Topic> topic;
  {
    std::unique_lock lock(state_->topics_mutex);
    auto it = state_->topics.find(name);
    if (it == state_->topics.end()) return Error{Errc::kNotFound, "topic '" + std::string(name) + "' does not exist"};
    topic = it->second;
    state_->topics.erase(it);
    state_->topics_version.fetch_add(1, std::memory_order_release);  // as in create_topic_impl
    // Its rings stay counted in the budget until its logs are gone: it may come back below.
  }
  // The maintenance pass may still hold the topic; the last reference unmaps its rings here or there.
  std::lock_guard guard(state_->maintain_mutex);
  // The logs first, then the topic's file: a log folder left without its topic would be taken
  // up, records and all, by a topic made again under the name (a crash between the two brings
  // the topic back instead, empty or with what stayed). The first failure stops the removals,
  // so the partitions after it stay whole.
  Result<void> removed;
  for (std::uint32_t i = 0; i < topic->partitions.size() && removed.ok(); ++i) {
    Partition& p = *topic->partitions[i];
    std::lock_guard partition_guard(p.log_mutex);  // a follower's write-through may be under way
    if (p.log) {
      removed = p.log->remove();
    } else if (options_.open_log) {  // offline: its log never opened, its files there all the same
      removed = options_.remove_unopened_log ? options_.remove_unopened_log(topic->name, i)
                                             : Error{Errc::kFailedPrecondition, "partition " + std::to_string(i) +
                                                         "'s log never opened (offline) and this node cannot remove it (NodeOptions::remove_unopened_log)"};
    }
  }
  {
    // The order maintain_mutex, then topics_mutex, is rewind_partition's too.
    std::unique_lock lock(state_->topics_mutex);
    if (!removed.ok()) {
      // The topic stays, its file too, until a delete again removes what is left: gone from the
      // node, the log that stayed would be taken up by a topic made again under the name. Its
      // partitions whose logs went take no more writes.
      state_->topics.emplace(topic->name, topic);
      state_->topics_version.fetch_add(1, std::memory_order_release);  // as in create_topic_impl
      return Error{removed.error().code, "topic '" + topic->name + "' stays, its logs partly removed; delete it again once the cause is gone: " +
                                             removed.error().message};
    }
    state_->ring_bytes -= topic->ring_bytes;
  }
  // Clients that hold its rings learn of it at their next claim, acknowledgement or empty poll
  // (they open the partition again and are told the topic is gone), rather than writing into
  // rings nothing reads any more.
  topic->deleted = true;
  for (const auto& p : topic->partitions) {
    std::lock_guard partition_guard(p->log_mutex);  // as above
    LogProgress gone = read_log_progress(p->ring);
    gone.error = Errc::kNotFound;
    publish_log_progress(p->ring, gone);
    retire_ring(p->ring);
  }
  if (!options_.metadata_dir.empty()) {
    const std::string path = options_.metadata_dir + "/" + topic->name + ".topic";
    if (::unlink(path.c_str()) != 0 && errno != ENOENT) removed = os_error(Errc::kIo, "removing " + path, errno);
  }
  // A topic created again under the name starts with no group positions, as in Kafka.
  if (state_->offsets)
    if (Result<void> r = state_->offsets->forget_topic(topic->name); !r.ok() && removed.ok()) removed = r;
  topic.reset();
  return removed;
}

void Node::set_offset_mirror(std::shared_ptr<OffsetMirror> mirror) {
  std::lock_guard lock(state_->cluster_hooks_mutex);
  state_->offset_mirror = std::move(mirror);
}

Result<void> Node::commit_offsets(std::string_view group, std::span<const CommittedOffset> offsets) {
  const std::shared_ptr<OffsetMirror> mirror = state_->mirror();
  if (!state_->offsets && !mirror)
    return Error{Errc::kFailedPrecondition, "this node keeps no committed offsets (run it with a data directory; NodeOptions::offsets_dir)"};
  if (!options_.offsets_for_any_topic) {
    std::shared_lock lock(state_->topics_mutex);
    for (const CommittedOffset& o : offsets) {
      auto it = state_->topics.find(o.topic);
      if (it == state_->topics.end()) return Error{Errc::kNotFound, "commit: topic '" + o.topic + "' does not exist"};
      if (o.partition >= it->second->partitions.size())
        return Error{Errc::kNotFound, "commit: topic '" + o.topic + "' has no partition " + std::to_string(o.partition)};
    }
  }
  std::vector<CommittedOffset> stamped(offsets.begin(), offsets.end());
  const std::int64_t now = wall_clock_ms();
  for (CommittedOffset& o : stamped) o.commit_time_ms = now;  // the node's clock, as Kafka's broker stamps commits
  // The cluster's copy first: what a commit answers for must outlive this node.
  if (mirror) {
    WEFT_TRY_VOID(mirror->commit(group, stamped));
  }
  if (!state_->offsets) return ok();
  return state_->offsets->commit(group, stamped);
}

Result<std::vector<CommittedOffset>> Node::fetch_offsets(std::string_view group, std::string_view topic) const {
  WEFT_TRY_VOID(validate_group_id(group));
  const std::shared_ptr<OffsetMirror> mirror = state_->mirror();
  std::vector<CommittedOffset> all;
  // The cluster's copy is the truth (another node may have coordinated the group since); this
  // node's own store answers for a group committed before the node joined a cluster.
  if (mirror) {
    WEFT_TRY(all, mirror->fetch(group));
  }
  if (all.empty() && state_->offsets) all = state_->offsets->fetch_all(group);
  if (!topic.empty()) std::erase_if(all, [&](const CommittedOffset& o) { return o.topic != topic; });
  return all;
}

Result<std::vector<std::vector<CommittedOffset>>> Node::fetch_offsets_of(std::span<const std::string> groups) const {
  std::vector<std::string> valid;
  for (const std::string& group : groups)
    if (validate_group_id(group).ok()) valid.push_back(group);
  std::vector<std::vector<CommittedOffset>> found(valid.size());
  if (const std::shared_ptr<OffsetMirror> mirror = state_->mirror()) {
    WEFT_TRY(found, mirror->fetch_groups(valid));
  }
  std::vector<std::vector<CommittedOffset>> out(groups.size());
  for (std::size_t i = 0, v = 0; i < groups.size(); ++i) {
    if (v == valid.size() || valid[v] != groups[i]) continue;  // an invalid id: none
    out[i] = std::move(found[v++]);
    // As fetch_offsets: this node's own store answers for a group the cluster has no copy of.
    if (out[i].empty() && state_->offsets) out[i] = state_->offsets->fetch_all(groups[i]);
  }
  return out;
}

std::vector<std::string> Node::list_groups() const {
  if (!state_->offsets) return {};
  return state_->offsets->groups();
}

Result<std::vector<std::string>> Node::groups_with_offsets() const {
  std::set<std::string> groups;
  if (state_->offsets)
    for (std::string& g : state_->offsets->groups()) groups.insert(std::move(g));
  if (const std::shared_ptr<OffsetMirror> mirror = state_->mirror()) {
    WEFT_TRY(std::vector<std::string> stored, mirror->groups());
    for (std::string& g : stored) groups.insert(std::move(g));
  }
  return std::vector<std::string>(groups.begin(), groups.end());
}

Result<std::vector<std::string>> Node::expire_offsets(std::int64_t now_ms, std::int64_t retention_ms,
                                                      const std::function<bool(std::string_view group)>& keep,
                                                      const std::function<bool(std::string_view group)>& shared) {
  const std::shared_ptr<OffsetMirror> mirror = state_->mirror();
  WEFT_TRY(const std::vector<std::string> listed, groups_with_offsets());
  std::vector<std::string> groups;
  for (const std::string& group : listed)
    if (validate_group_id(group).ok() && !(keep && keep(group))) groups.push_back(group);
  // The cluster's copies of them all in one read of its store, not one per group.
  std::vector<std::vector<CommittedOffset>> stored(groups.size());
  if (mirror) {
    WEFT_TRY(stored, mirror->fetch_groups(groups));
  }
  std::vector<std::string> expired;
  for (std::size_t i = 0; i < groups.size(); ++i) {
    const std::string& group = groups[i];
    // The newest commit of either copy: a group another node coordinates may commit there, and
    // this node's old copy then stays.
    std::vector<CommittedOffset> offsets = std::move(stored[i]);
    const std::size_t in_store = offsets.size();
    if (state_->offsets)
      for (CommittedOffset& o : state_->offsets->fetch_all(group)) offsets.push_back(std::move(o));
    const bool here = offsets.size() > in_store;
    std::int64_t newest = INT64_MIN;
    for (const CommittedOffset& o : offsets) newest = std::max(newest, o.commit_time_ms);
    if (!offsets.empty() && newest >= now_ms - retention_ms) continue;
    const bool from_store = in_store > 0 && shared && shared(group);
    if (!from_store && !here) continue;  // another node's group, in the store only: its sweep
    // The cluster's copy first, as commits write it: a failure leaves both.
    if (from_store) WEFT_TRY_VOID(mirror->delete_group(group));
    if (here) WEFT_TRY_VOID(state_->offsets->delete_group(group));
    expired.push_back(group);
  }
  return expired;
}

std::vector<std::string> Node::list_topics() const {
  std::shared_lock lock(state_->topics_mutex);
  std::vector<std::string> names;
  names.reserve(state_->topics.size());
  for (const auto& [name, topic] : state_->topics) names.push_back(name);
  return names;
}

Result<TopicInfo> Node::describe_topic(std::string_view name) const {
  std::shared_ptr<Topic> topic;
  TopicInfo info;
  {
    std::shared_lock lock(state_->topics_mutex);
    auto it = state_->topics.find(name);
    if (it == state_->topics.end()) return Error{Errc::kNotFound, "topic '" + std::string(name) + "' does not exist"};
    topic = it->second;
    info.rings_replaced = topic->rings_replaced;
  }
  info.name = topic->name;
  info.id = topic->id;
  info.config = topic->config;
  std::lock_guard lock(state_->stats_mutex);
  for (const auto& p : topic->partitions) {
    info.partitions.push_back(p->stats);
    // The log end offset is read live: tools expect it to move as soon as a send returns.
    PartitionStats& s = info.partitions.back();
    s.end_offset = Offset{static_cast<std::int64_t>(
        std::atomic_ref<std::uint64_t>(p->ring.control().claim.tail.offset).load(std::memory_order_relaxed))};
  }
  return info;
}

std::optional<TopicIncarnation> Node::topic_incarnation(std::string_view name) const {
  std::shared_lock lock(state_->topics_mutex);
  auto it = state_->topics.find(name);
  if (it == state_->topics.end()) return std::nullopt;
  return TopicIncarnation{it->second->id, it->second->rings_replaced};
}

Result<PartitionMemory> Node::open_partition(std::string_view name, std::uint32_t partition) const {
  std::shared_lock lock(state_->topics_mutex);
  auto it = state_->topics.find(name);
  if (it == state_->topics.end()) return Error{Errc::kNotFound, "topic '" + std::string(name) + "' does not exist"};
  const Topic& topic = *it->second;
  if (partition >= topic.partitions.size())
    return Error{Errc::kNotFound, "topic '" + topic.name + "' has " + std::to_string(topic.partitions.size()) +
                                      " partitions; there is no partition " + std::to_string(partition)};
  const Partition& p = *topic.partitions[partition];
  return PartitionMemory{p.memory, p.ring, topic.id, partition};
}

Result<PartitionRoute> Node::partition_route(std::string_view name, std::uint32_t partition) const {
  WEFT_TRY(const PartitionMemory memory, open_partition(name, partition));  // checks the topic and partition
  PartitionRouter router;
  bool had_router = false;
  {
    std::lock_guard lock(state_->cluster_hooks_mutex);
    router = state_->router;
    had_router = state_->had_router;
  }
  if (router) return router(name, partition);
  // Never a cluster here, yet the ring waits for a role from one (a cluster's topic file on a node
  // started alone): no leader will ever come, so producers are told now rather than time out.
  // (A cluster node between removing its router and stopping answers as before: wait.)
  if (!had_router && leader_epoch(memory.ring) == ring_layout::kFollowing)
    return Error{Errc::kFailedPrecondition, "topic '" + std::string(name) + "' partition " + std::to_string(partition) +
                                                " belongs to a cluster and this node runs without one: it takes no writes here "
                                                "(run the node in its cluster: weftd's --node-id and --etcd)"};
  return PartitionRoute{};
}

void Node::set_partition_router(PartitionRouter router) {
  std::lock_guard lock(state_->cluster_hooks_mutex);
  state_->had_router = state_->had_router || static_cast<bool>(router);
  state_->router = std::move(router);
}

void Node::log_failed(Partition& p, const Error& error, bool retry, std::int64_t now) {
  const bool first = p.log_error.empty();
  p.log_error = error.message;
  p.log_error_code = error.code == Errc::kOk ? Errc::kInternal : error.code;
  p.log_stopped = !retry;
  p.log_retry_at_ns = now + options_.log_retry_interval_ms * 1'000'000;
  if (first || !retry)
    log(LogLevel::kError, retry ? "partition log refused a write; producers get errors until it takes them again" : "partition log stopped",
        {{"reason", p.log_error}, {"written_offset", std::to_string(p.written_offset.value)}});
  // Producers waiting on acknowledgements get the error now; what the log holds still serves.
  publish_log_progress(p.ring, LogProgress{p.written_offset, p.durable_offset, p.log_error_code});
}

void Node::drain_to_log(Partition& p, const TopicConfig& config, std::int64_t now, bool wait) {
  if (p.log_stopped || (!p.log_error.empty() && now < p.log_retry_at_ns)) return;
  Consumer& writer = *p.writer;
  // Writes and flushes that fail (a full disk) are tried again: the ring keeps every batch the
  // log has not taken, since the reuse limit never passes written_position.
  bool took = false;
  if (p.refused) {
    if (Result<void> taken = p.log->append(p.refused->bytes); !taken.ok())
      return log_failed(p, taken.error(), taken.error().code != Errc::kDataLoss, now);
    p.refused.reset();
    took = true;
  }
  // Bounded per pass, so producers get space back (the limit moves at the end of a pass) while
  // the disk is busy with the rest, and one busy partition cannot starve the others.
  const std::size_t budget = std::min<std::size_t>(p.ring.capacity_bytes(), std::size_t{4} << 20);
  std::size_t bytes = 0;
  for (; bytes < budget;) {
    RingBatch batch;
    const PollStatus status = writer.poll(batch);
    if (status == PollStatus::kEmpty) break;
    if (status != PollStatus::kOk) {
      // The limit never passes the writer, so a lap or a corrupt frame is a bug or a hostile
      // client: stop taking this partition's batches rather than persist a gap silently.
      return log_failed(p, Error{Errc::kInternal, status == PollStatus::kLapped ? "the log writer was lapped" : "a corrupt frame in the ring"},
                        false, now);
    }
    if (Result<void> taken = p.log->append(batch.bytes); !taken.ok()) {
      p.refused = batch;
      if (took) (void)p.log->flush();  // what it did take this pass may still reach the file
      return log_failed(p, taken.error(), taken.error().code != Errc::kInvalidArgument && taken.error().code != Errc::kDataLoss, now);
    }
    bytes += batch.bytes.size();
    took = true;
  }
  p.log_backlog = bytes >= budget;  // more to write: the next pass comes at once
  // A pass that left more in the ring kept its ragged tail back for the next; if that one finds
  // nothing new, the tail goes now.
  const bool tail_kept = !took && !p.unflushed && !p.log_writes.empty();
  if (took || p.unflushed || tail_kept) {
    // The disk writes in the background (a later pass collects it); a retry after a failure
    // waits for everything, so the error is known now.
    if (Result<void> started = p.unflushed || wait ? p.log->flush() : p.log->submit(p.log_backlog); !started.ok()) {
      p.unflushed = true;
      return log_failed(p, started.error(), true, now);
    }
    const bool retried = p.unflushed;
    p.unflushed = false;
    if (took || retried) {
      const Partition::LogWrite checkpoint{p.log->next_offset(), writer.next_offset(), writer.position().value};
      // Bounded: past 64 passes in flight (a slow disk, passes every 10 µs) the newest stands for
      // them all, which only delays acknowledgements until it is written.
      if (p.log_writes.size() >= 64) {
        p.log_writes.back() = checkpoint;
      } else {
        p.log_writes.push_back(checkpoint);
      }
    }
  }
  const bool sync_due = config.fsync == FsyncPolicy::kAlways ||
                        (config.fsync == FsyncPolicy::kInterval && (now - p.last_sync_ns) / 1'000'000 >= config.fsync_interval_ms);  // no product to overflow
  const bool unsynced = !p.log_writes.empty() || p.written_offset > p.durable_offset;
  if (config.fsync != FsyncPolicy::kNone && sync_due && unsynced) {
    // Writes first: one that failed (a full disk) is retried later, like any write.
    if (Result<void> flushed = p.log->flush(); !flushed.ok()) {
      p.unflushed = true;
      return log_failed(p, flushed.error(), true, now);
    }
    // One fdatasync for everything written since the last: producers waiting on durability are
    // answered together (group commit). A failed fdatasync is not retried: the kernel may have
    // dropped the dirty pages it could not write, so a retry could report success falsely.
    if (Result<void> synced = p.log->sync(); !synced.ok()) return log_failed(p, synced.error(), false, now);
    p.last_sync_ns = now;
  }
  if (!p.log_writes.empty()) {
    Result<Offset> written = p.log->written_offset();
    if (!written.ok()) {
      p.unflushed = true;
      return log_failed(p, written.error(), true, now);
    }
    std::size_t done = 0;
    for (; done < p.log_writes.size() && p.log_writes[done].log_next <= *written; ++done) {
      p.written_offset = p.log_writes[done].ring_next;
      p.written_position = p.log_writes[done].position;
    }
    p.log_writes.erase(p.log_writes.begin(), p.log_writes.begin() + static_cast<std::ptrdiff_t>(done));
  }
  if (config.fsync == FsyncPolicy::kNone || (sync_due && unsynced)) {
    // In the page cache is all a `none` topic asks; the others were just synced.
    p.durable_position = p.written_position;
    p.durable_offset = p.written_offset;
  }
  if (!p.log_error.empty()) {
    log(LogLevel::kInfo, "partition log takes writes again", {{"written_offset", std::to_string(p.written_offset.value)}});
    p.log_error.clear();
    p.log_error_code = Errc::kOk;
    p.published_written = Offset{-1};  // publish, clearing the error
  }
  if (p.written_offset != p.published_written || p.durable_offset != p.published_durable) {
    publish_log_progress(p.ring, LogProgress{p.written_offset, p.durable_offset, Errc::kOk});
    p.published_written = p.written_offset;
    p.published_durable = p.durable_offset;
  }
}

Result<PartitionLog*> Node::partition_log(std::string_view name, std::uint32_t partition, std::shared_ptr<Topic>& keep) const {
  {
    std::shared_lock lock(state_->topics_mutex);
    auto it = state_->topics.find(name);
    if (it == state_->topics.end()) return Error{Errc::kNotFound, "topic '" + std::string(name) + "' does not exist"};
    keep = it->second;
  }
  if (partition >= keep->partitions.size())
    return Error{Errc::kNotFound, "topic '" + keep->name + "' has " + std::to_string(keep->partitions.size()) +
                                      " partitions; there is no partition " + std::to_string(partition)};
  const Partition& p = *keep->partitions[partition];
  if (!p.offline.empty())
    return Error{Errc::kUnavailable, "topic '" + keep->name + "' partition " + std::to_string(partition) + " is " + p.offline};
  PartitionLog* log = p.log.get();
  if (log == nullptr) return Error{Errc::kUnsupported, "topic '" + keep->name + "' has no log on this node (in memory only)"};
  return log;
}

Result<LogSlice> Node::open_log_slice(std::string_view topic, std::uint32_t partition, Offset offset, Offset until) const {
  std::shared_ptr<Topic> keep;
  WEFT_TRY(PartitionLog * log, partition_log(topic, partition, keep));
  return log->slice(offset, until);
}

Result<TimedOffset> Node::log_offset_for_timestamp(std::string_view topic, std::uint32_t partition, std::int64_t timestamp_ms) const {
  std::shared_ptr<Topic> keep;
  WEFT_TRY(PartitionLog * log, partition_log(topic, partition, keep));
  return log->offset_for_timestamp(timestamp_ms);
}

Result<void> Node::save_topic(const std::string& name, const TopicConfig& c) const {
  // Settings by name, one per line, as set_topic_config reads them; written aside, synced and
  // renamed into place, so a crash leaves the old file or the new one.
  std::string text = "partitions=" + std::to_string(c.partitions) + "\nring.capacity.bytes=" + std::to_string(c.ring_capacity_bytes) +
                     "\nmax.batch.bytes=" + std::to_string(c.max_batch_bytes) + "\nretention.bytes=" + std::to_string(c.retention_bytes) +
                     "\nretention.ms=" + std::to_string(c.retention_ms) + "\nsegment.bytes=" + std::to_string(c.segment_bytes) +
                     "\nsegment.ms=" + std::to_string(c.segment_ms) + "\nfsync=" + fsync_policy_name(c) +
                     "\nflow.control=" + (c.consumer_flow_control ? "consumers" : "none") +
                     "\nproducer.slots=" + std::to_string(c.producer_slots) + "\nconsumer.slots=" + std::to_string(c.consumer_slots) +
                     "\nreplicated=" + (c.replicated ? "true" : "false") + "\n" +
                     // Only when set: a file without it reads the same, in builds from before it too.
                     (c.min_insync_replicas == 1 ? std::string() : "min.insync.replicas=" + std::to_string(c.min_insync_replicas) + "\n") +
                     (c.cluster_topic_id.empty() ? std::string() : "cluster.topic.id=" + c.cluster_topic_id + "\n");
  return replace_file(options_.metadata_dir + "/" + name + ".topic", text);
}

Result<void> Node::load_topics() {
  const std::string& dir = options_.metadata_dir;
  if (mkdir(dir.c_str(), 0750) != 0 && errno != EEXIST) return os_error(Errc::kIo, "creating " + dir, errno);
  DIR* listing = opendir(dir.c_str());
  if (listing == nullptr) return os_error(Errc::kIo, "listing " + dir, errno);
  std::vector<std::string> names;
  while (const dirent* e = readdir(listing)) {
    const std::string file = e->d_name;
    if (file.size() > 6 && file.ends_with(".topic")) names.push_back(file.substr(0, file.size() - 6));
  }
  closedir(listing);
  std::sort(names.begin(), names.end());
  for_each_in_parallel(names.size(), [&](std::size_t i) {
    const std::string& name = names[i];
    // A topic that cannot be read or recovered is logged and left out; the others serve.
    // A topic's settings are a few short lines; anything larger is not a file the node wrote.
    constexpr std::size_t kMaxTopicFileBytes = 64 * 1024;
    const Result<std::string> text = read_small_file(dir + "/" + name + ".topic", kMaxTopicFileBytes);
    TopicConfig config = options_.default_topic;
    Result<void> parsed = text.ok() ? Result<void>() : Result<void>(text.error());
    std::string_view rest = text.ok() ? std::string_view(*text) : std::string_view();
    while (parsed.ok() && !rest.empty()) {
      const std::size_t eol = std::min(rest.find('\n'), rest.size());
      const std::string line(rest.substr(0, eol));
      rest.remove_prefix(std::min(eol + 1, rest.size()));
      const std::size_t eq = line.find('=');
      if (line.empty()) continue;
      if (eq == std::string::npos) {
        parsed = Error{Errc::kCorrupt, "a line without '=': " + line};
      } else if (line.compare(0, eq, "replicated") == 0) {
        // The node's own mark (a cluster's topic), kept in its file: not a setting clients give.
        config.replicated = line.substr(eq + 1) == "true";
      } else if (line.compare(0, eq, "cluster.topic.id") == 0) {
        config.cluster_topic_id = line.substr(eq + 1);
      } else {
        parsed = set_topic_config(config, line.substr(0, eq), line.substr(eq + 1));
      }
    }
    Result<TopicInfo> created = parsed.ok() ? create_topic_impl(name, config, false, true) : Result<TopicInfo>(parsed.error());
    if (created.ok()) {
      log(LogLevel::kInfo, "topic recovered", {{"topic", name}, {"partitions", std::to_string(config.partitions)}});
    } else {
      log(LogLevel::kError, "topic not served", {{"topic", name}, {"reason", created.error().message}});
    }
  });
  return ok();
}

namespace {
std::atomic<test_hooks::PassHook> after_consumer_scan_hook{nullptr};  // acquire/release: the hook's code is published with it
std::atomic<test_hooks::PassHook> after_second_consumer_look_hook{nullptr};  // as above
}  // namespace

void test_hooks::set_after_consumer_scan_hook(PassHook hook) noexcept { after_consumer_scan_hook.store(hook, std::memory_order_release); }
void test_hooks::set_after_second_consumer_look_hook(PassHook hook) noexcept { after_second_consumer_look_hook.store(hook, std::memory_order_release); }

bool Node::maintain() { return maintain_pass() > 0; }

double Node::maintain_pass() {
  std::vector<std::shared_ptr<Topic>> topics;
  {
    std::shared_lock lock(state_->topics_mutex);
    topics.reserve(state_->topics.size());
    for (const auto& [name, topic] : state_->topics) topics.push_back(topic);
  }
  std::lock_guard guard(state_->maintain_mutex);
  double used = 0;  // the largest share of a ring's free space taken since the last pass
  bool ack_waiters = false;
  bool replica_waiters = false;
  bool replica_news = false;
  const std::int64_t now = monotonic_ns();
  for (const auto& topic : topics) {
    if (topic->deleted) continue;  // its rings are retired; publishing progress there would hide why
    for (const auto& p : topic->partitions) {
      std::lock_guard partition_guard(p->log_mutex);
      const std::uint64_t keep = p->ring.capacity_bytes() / 2;
      const Ring::Mark limit = p->ring.reuse_limit();
      const std::uint64_t tail = p->ring.tail_position().value;

      // Frame boundaries come from the consumers when there are any: every frame before a
      // consumer's published position was committed, aborted or padding when it walked past,
      // and the frame at that position is checked here. Walking the frames again would cost the
      // node as much as a consumer's reading does. With no consumer to ask, the node walks.
      std::uint64_t slowest = UINT64_MAX, fastest = 0;
      bool attaching = false;  // a consumer that took its slot and has not said where it starts
      const auto scan_consumers = [&] {
        for (std::uint32_t i = 0; i < p->ring.consumer_slot_count(); ++i) {
          const ring_layout::ConsumerSlot& slot = p->ring.consumer_slots()[i];
          // Acquire: pairs with the consumer's release of its position (R5 in ring.cc). seq_cst:
          // under flow control, the look's half of the Dekker pair with a starting consumer
          // (RingOwner::FlowControlledMove); a plain load on x86, as acquire is.
          if (slot.owner.load(std::memory_order_seq_cst) == 0) continue;
          const std::uint64_t position = slot.position.load(std::memory_order_seq_cst);
          if (position == ring_layout::kNoClaim) {
            attaching = true;
            continue;
          }
          slowest = std::min(slowest, position);
          fastest = std::max(fastest, position);
        }
      };
      scan_consumers();
      if (const test_hooks::PassHook hook = after_consumer_scan_hook.load(std::memory_order_acquire); hook != nullptr) hook(topic->name, p->stats.partition);
      std::optional<Ring::Mark> hint;
      if (fastest > limit.position.value) hint = p->owner.committed_frame_at(Position{fastest});
      Ring::Mark frontier;
      if (hint) {
        frontier = *hint;
      } else {
        frontier = p->owner.scan();
        // A claim that stays open while the frontier stands still may belong to a dead producer.
        if (tail > frontier.position.value && now - p->last_seal_ns > kSealEveryNs) {
          p->last_seal_ns = now;
          const std::vector<SealedRange> sealed = p->owner.seal_dead_claims();
          p->sealed += sealed.size();
          if (!sealed.empty()) frontier = p->owner.scan();
        }
      }
      if (hint && now - p->last_seal_ns > kSealEveryNs * 5) {
        // Consumers walk for the node, so a claim they wait on is looked at here: a producer
        // whose last claim lies ahead of every consumer and whose process is gone.
        p->last_seal_ns = now;
        bool dead = false;
        for (std::uint32_t i = 0; i < p->ring.producer_slot_count() && !dead; ++i) {
          const ring_layout::ProducerSlot& slot = p->ring.producer_slots()[i];
          const std::uint64_t owner = slot.owner.load(std::memory_order_acquire);
          const std::uint64_t pending = slot.pending_position.load(std::memory_order_acquire);
          if (owner == 0 || pending == ring_layout::kNoClaim || pending < slowest) continue;
          dead = !process_alive(ring_layout::owner_pid(owner), ring_layout::owner_start_time(owner));
        }
        if (dead) p->sealed += p->owner.seal_dead_claims().size();
      }
      if (now - p->last_reclaim_ns > kReclaimEveryNs) {
        p->last_reclaim_ns = now;
        p->owner.reclaim_dead_slots();
      }

      if (p->log) {
        drain_to_log(*p, topic->config, now);
        // Producers waiting on the log: come back at once rather than at the ring's pace.
        // Producers waiting, and records arriving for them to wait on (a producer killed while
        // waiting leaves the count raised: after 10 ms without new records, the ring's pace).
        const auto claimed = static_cast<std::int64_t>(std::atomic_ref<std::uint64_t>(p->ring.control().claim.tail.offset).load(std::memory_order_relaxed));
        if (claimed != p->waited_claim) {
          p->waited_claim = claimed;
          p->last_claim_seen_ns = now;
        }
        const bool busy = now - p->last_claim_seen_ns < 10'000'000;
        if (log_waiters(p->ring) != 0 && busy) ack_waiters = true;
        // Relaxed: a hint for the pace, as log_waiters is. Only claims the replicator had not
        // acted on (a local producer's) keep the pass at the replication pace, for 10 ms as
        // above: a follower's appends and the leader's Kafka produces are written through by the
        // replication thread itself, and passing every 250 µs for them woke each node 4 000
        // times a second for nothing.
        if (Offset{claimed} != p->replica_news.claimed) p->last_unseen_claim_ns = now;
        if (p->replicas.load(std::memory_order_relaxed) > 0 && now - p->last_unseen_claim_ns < 10'000'000) replica_waiters = true;
        if (p->log_backlog) used = std::max(used, 1e9);
        if (!p->log_writes.empty()) ack_waiters = true;  // collect the disk's writes soon
        if (now - p->last_retention_ns >= options_.retention_check_interval_ms * 1'000'000 &&
            (topic->config.retention_bytes >= 0 || topic->config.retention_ms >= 0)) {
          p->last_retention_ns = now;
          // A replicated partition keeps what its high watermark has not passed: a follower far
          // behind must find it (else it restarts at the new log start, and the high watermark
          // could count records no replica holds).
          const Offset replicated = read_log_progress(p->ring).replicated;
          const Offset keep_from = replicated.value == ring_layout::kNoLog ? kLogEnd : replicated;
          Result<RetentionOutcome> kept = p->log->apply_retention(topic->config.retention_bytes, topic->config.retention_ms, wall_clock_ms(), keep_from);
          if (!kept.ok()) {
            log(LogLevel::kWarn, "retention failed", {{"topic", topic->name}, {"reason", kept.error().message}});
          } else if (kept->segments_deleted > 0) {
            log(LogLevel::kInfo, "retention deleted segments",
                {{"topic", topic->name}, {"partition", std::to_string(p->stats.partition)},
                 {"segments", std::to_string(kept->segments_deleted)}, {"bytes", std::to_string(kept->bytes_deleted)},
                 {"log_start_offset", std::to_string(kept->start_offset.value)}});
          }
        }
      }

      // Nothing else holds producers back but the ring itself (and the log, below): the older
      // half stays readable (earliest, seeks, slow readers) and the newer half is free for
      // claims. Past boundaries are kept as checkpoints, so moving the limit needs no walk.
      if (p->checkpoints.empty() ||
          (frontier.position.value > p->checkpoints.back().position.value &&
           frontier.position.value - p->checkpoints.back().position.value >= keep / 256))
        p->checkpoints.push_back(frontier);
      const std::uint64_t max_frame = p->ring.max_frame_bytes();
      const std::uint64_t ahead = std::max(tail, frontier.position.value);
      // Where the limit may go at most: bounds that protect records (the frontier, the log, a
      // flow-controlled consumer, a replication write in flight), which nothing moves it past.
      std::uint64_t ceiling = frontier.position.value;
      // Never past what is not in the log. The ring is memory like the page cache, so holding it
      // until a sync protects nothing more; only `always` does (it syncs every pass anyway), and
      // an interval policy's durability is what its acknowledgements wait for.
      if (p->log) ceiling = std::min(ceiling, topic->config.fsync == FsyncPolicy::kAlways ? p->durable_position : p->written_position);
      // Flow control: the second look and the limit's move in one window, which a consumer that
      // starts meanwhile waits out (design.md).
      std::optional<RingOwner::FlowControlledMove> flow_window;
      if (topic->config.consumer_flow_control) {
        // Looked at again just before the limit moves: a consumer that attached while this pass
        // drained the log (milliseconds: segment writes, rolls, retention) was not there at the
        // first look, and the limit would have passed the frames its first poll handed out.
        flow_window.emplace(p->owner);
        scan_consumers();
        if (const test_hooks::PassHook hook = after_second_consumer_look_hook.load(std::memory_order_acquire); hook != nullptr) hook(topic->name, p->stats.partition);
        ceiling = std::min(ceiling, slowest);
        // It read the limit to start from: moving it now could lap it before its first read.
        if (attaching) ceiling = limit.position.value;
      }
      // Nor past bytes a replication write in flight points at (held for microseconds: a link
      // completes a write once it no longer reads the bytes).
      const std::uint64_t pinned = p->pins->lowest();
      ceiling = std::min(ceiling, pinned);
      // Within it, the older half stays: the target the limit moves to.
      const std::uint64_t target = std::min(ahead > keep ? ahead - keep : 0, ceiling);
      if (target > limit.position.value) {
        std::optional<Ring::Mark> release;
        while (!p->checkpoints.empty() && p->checkpoints.front().position.value <= target) {
          release = p->checkpoints.front();
          p->checkpoints.pop_front();
        }
        if (topic->config.consumer_flow_control && slowest == target)
          if (std::optional<Ring::Mark> at = p->owner.committed_frame_at(Position{slowest}); at) release = at;
        const std::uint64_t free_space = limit.position.value + p->ring.capacity_bytes() - std::min(tail, limit.position.value + p->ring.capacity_bytes());
        // Producers are short of space below room for the largest claim and its padding at the
        // ring's end (Kafka clients send ~1 MB batches into a 4 MiB ring), or a quarter of the kept
        // half, whichever is more.
        const std::uint64_t low_water = std::min(keep, std::max<std::uint64_t>(keep / 4, 2 * max_frame));
        if (release && (release->position.value + keep / 16 >= target || free_space >= low_water)) {
          if (release->position.value > limit.position.value) p->owner.advance_reuse_limit(*release);
        } else if (free_space < low_water) {
          // Producers are about to run out of space and no known boundary is near the target
          // (passes too far apart, or the consumers read everything between two passes): walk.
          // The walk stops at the boundary before the target. When the largest claim still does
          // not fit (the target lies inside the oldest frame, a 1 MB batch say) producers would
          // wait for good, so it goes on to the boundary past the target, and the kept half loses
          // that frame, never anything the ceiling protects. Only then: a limit already at the
          // boundary before the target frees nothing either, and going on would cut into the kept
          // half at every idle pass.
          (void)p->owner.release_to(Position{target});
          if (!p->owner.room_for_largest_claim()) p->owner.release_to(Position{std::min(target + max_frame, ceiling)});
        }
      }
      flow_window.reset();
      const std::uint64_t claimed = tail - p->created_at.position.value;
      const std::uint64_t moved = claimed - std::min(claimed, p->stats.bytes);
      used = std::max(used, static_cast<double>(moved) / static_cast<double>(keep));

      PartitionStats s;
      s.partition = p->stats.partition;
      s.memory = p->stats.memory;
      // Claimed, not necessarily committed yet: the claim word is one read, the frontier a walk.
      const Offset claimed_offset{static_cast<std::int64_t>(
          std::atomic_ref<std::uint64_t>(p->ring.control().claim.tail.offset).load(std::memory_order_relaxed))};
      s.start_offset = p->ring.reuse_limit().offset;
      s.end_offset = claimed_offset;
      s.records = static_cast<std::uint64_t>(claimed_offset.value - p->created_at.offset.value);
      s.bytes = claimed;
      s.sealed_claims = p->sealed;
      // Relaxed: a hint for whom to wake, as log_waiters is.
      if (p->replicas.load(std::memory_order_relaxed) > 0) {
        const Partition::ReplicaNews seen{claimed_offset, p->written_offset, p->durable_offset, p->ring.reuse_limit().position.value};
        if (seen != p->replica_news) {
          p->replica_news = seen;
          replica_news = true;
        }
      }
      if (!p->offline.empty()) s.log_error = p->offline;
      if (p->log) {
        // The log's figures take its mutex and a walk over its segments: read when its writes
        // moved, or retention ran, else every 100 ms (a pass comes every 10 µs while producers wait).
        if (p->written_offset != p->stats_written_offset || now - p->log_stats_ns >= 100'000'000 || p->last_retention_ns == now) {
          s.log_start_offset = p->log->start_offset();
          s.log_end_offset = p->log->next_offset();
          s.log_bytes = p->log->size_bytes();
          p->stats_written_offset = p->written_offset;
          p->log_stats_ns = now;
        } else {
          s.log_start_offset = p->stats.log_start_offset;  // this thread alone writes p->stats
          s.log_end_offset = p->stats.log_end_offset;
          s.log_bytes = p->stats.log_bytes;
        }
        s.log_error = p->log_error;
      }
      for (std::uint32_t i = 0; i < p->ring.producer_slot_count(); ++i) {
        // Relaxed: statistics, each word written by its producer alone.
        const ring_layout::ProducerSlot& slot = p->ring.producer_slots()[i];
        if (slot.owner.load(std::memory_order_relaxed) == 0) continue;
        ++s.producers;
        s.back_pressure_events += slot.back_pressure_events.load(std::memory_order_relaxed);
      }
      for (std::uint32_t i = 0; i < p->ring.consumer_slot_count(); ++i) {
        const ring_layout::ConsumerSlot& slot = p->ring.consumer_slots()[i];
        if (slot.owner.load(std::memory_order_relaxed) == 0) continue;
        if (p->writer && &slot == p->writer->slot()) continue;  // the log writer is not a client
        ++s.consumers;
        const std::uint64_t laps = slot.lapped_count.load(std::memory_order_relaxed);
        if (laps > 0) ++s.lapped_consumers;
        s.lapped_events += laps;
      }
      std::lock_guard lock(state_->stats_mutex);
      p->stats = std::move(s);
    }
  }
  state_->ack_waiters.store(ack_waiters, std::memory_order_relaxed);
  state_->replica_waiters.store(replica_waiters, std::memory_order_relaxed);
  state_->replica_news.store(replica_news, std::memory_order_relaxed);
  return used;
}

// ---- replication ---------------------------------------------------------------------------

void Node::write_through(const std::shared_ptr<Topic>& topic, std::uint32_t index) {
  Partition& p = *topic->partitions[index];
  std::lock_guard guard(p.log_mutex);
  drain_to_log(p, topic->config, monotonic_ns(), true);
  // The replicator that called knows what it appended and wrote: no news for it in the next pass.
  // Claims still open (a local producer's, on a leader) are news once committed: the next pass
  // sees them, paced for the replicator, and writes them.
  p.replica_news.claimed = p.written_offset;
  p.replica_news.written = p.written_offset;
  p.replica_news.durable = p.durable_offset;
}

Result<Offset> Node::rewind_partition(const std::shared_ptr<Topic>& topic, std::uint32_t index, Offset end, bool reset) {
  Partition& p = *topic->partitions[index];
  std::lock_guard guard(state_->maintain_mutex);
  // A replica view that outlived its topic's delete: its rings are retired, its logs gone.
  if (topic->deleted) return Error{Errc::kNotFound, "topic '" + topic->name + "' was deleted"};
  std::lock_guard partition_guard(p.log_mutex);
  // Whatever the ring still holds goes to the log first, so that the cut sees all of it.
  for (int pass = 0; pass < 1'000; ++pass) {
    drain_to_log(p, topic->config, monotonic_ns());
    if (!p.log_backlog && !p.refused) break;
  }
  WEFT_TRY_VOID(p.log->flush());
  Offset next = end;
  if (reset) {
    WEFT_TRY_VOID(p.log->reset(end));
  } else {
    WEFT_TRY(next, p.log->truncate(end));
  }
  // A fresh ring from the new end. Readers of the old one keep it mapped (their shared_ptr), as
  // for a deleted topic, and see nothing new there.
  const RingConfig base_config = ring_config_for(topic->config);
  RingConfig config = base_config;
  config.initial_offset = next;
  WEFT_TRY(SharedMemory created, SharedMemory::create(ring_memory_options(options_, topic->name, index, Ring::required_bytes(config))));
  auto memory = std::make_shared<SharedMemory>(std::move(created));
  WEFT_TRY(Ring ring, Ring::format(memory->bytes(), config));
  WEFT_TRY(Consumer writer, Consumer::attach(ring, StartAt::kEarliest));
  // The new ring is fenced as the old one was (a follower's, nearly always); producers still on
  // the old one are fenced for good and open the partition again.
  set_leader_epoch(ring, leader_epoch(p.ring));
  publish_high_watermark(ring, read_log_progress(p.ring).replicated);
  retire_ring(p.ring);
  // The old log writer leaves its slot in the old ring while that is still mapped.
  const std::shared_ptr<SharedMemory> old_memory = p.memory;
  p.writer.reset();
  {
    // open_partition reads memory and ring under the topics mutex, describe_topic the ring under
    // the stats mutex (the order every path takes them in).
    std::unique_lock lock(state_->topics_mutex);
    std::lock_guard stats(state_->stats_mutex);
    p.memory = memory;
    p.ring = ring;
    ++topic->rings_replaced;
  }
  p.owner = RingOwner(ring);
  p.pins = std::make_shared<PushPins>(memory);  // writes in flight from the old ring keep theirs
  p.writer.emplace(std::move(writer));
  p.refused.reset();
  p.unflushed = false;
  p.log_writes.clear();
  p.checkpoints.clear();
  p.created_at = ring.reuse_limit();
  // Durable is what was (or what the log synced since, such as a cut segment), never more than
  // the new end: a cut that removes nothing must not make the unsynced tail durable, which the
  // leader's high watermark would count. The next due sync covers the rest.
  const Offset durable = topic->config.fsync == FsyncPolicy::kNone ? next : std::min(next, std::max(p.durable_offset, p.log->synced_offset()));
  p.written_offset = next;
  p.durable_offset = durable;
  p.written_position = p.durable_position = ring.reuse_limit().position.value;
  p.published_written = p.published_durable = Offset{-1};
  p.waited_claim = -1;
  p.log_backlog = false;
  publish_log_progress(ring, LogProgress{next, durable, Errc::kOk});
  {
    std::lock_guard lock(state_->stats_mutex);
    p.stats.memory = memory->describe();
    p.stats.bytes = 0;
  }
  // Release: a cache that sees the new version finds the new ring (as in create_topic_impl).
  state_->topics_version.fetch_add(1, std::memory_order_release);
  log(LogLevel::kInfo, reset ? "replica restarted at the leader's log start" : "replica truncated to its leader's epoch boundary",
      {{"topic", topic->name}, {"partition", std::to_string(index)}, {"end", std::to_string(next.value)}});
  return next;
}

// The replicator's view of one partition of this node (one thread uses it).
class Node::Replica final : public ReplicaLog {
 public:
  Replica(Node& node, std::shared_ptr<Topic> topic, std::uint32_t index) : node_(node), topic_(std::move(topic)), index_(index) {
    load_epochs();
    partition().replicas.fetch_add(1, std::memory_order_relaxed);  // a pace hint (see maintain_pass)
  }
  ~Replica() override { partition().replicas.fetch_sub(1, std::memory_order_relaxed); }
  Offset log_start() const override { return partition().log->start_offset(); }
  // The ring's end: what producers (or this follower) put there, on its way to the log.
  Offset log_end() const override { return partition().ring.claimed_offset(); }
  Offset durable_end() const override { return read_log_progress(partition().ring).durable; }

  // Only when producers claimed more since the last call: the replicator calls this every round.
  // A claim still open then is written by the node's next pass, which sees it as news.
  void write_through() override {
    const Offset claimed = partition().ring.claimed_offset();
    if (claimed == written_through_) return;
    written_through_ = claimed;
    node_.write_through(topic_, index_);
  }

  // Committed batches from the ring while it holds them (copied out, then checked against
  // producers reusing the space), else from the log. Reading the log's tail would make it
  // write its buffer early, so the ring serves the tail. Batches a producer wrote (epoch -1) get
  // the leader's epoch in the copy, as the log stamps its own.
  Result<std::size_t> read(Offset offset, std::span<std::byte> out) override {
    // A push's gathering with nothing in place: every batch copied, into one entry.
    std::span<const std::byte> piece;
    PushHold none;
    WEFT_TRY(const PushRead got, gather(offset, out, std::span(&piece, 1), none, false));
    return got.bytes;
  }

  Result<PushRead> read_for_push(Offset offset, std::span<std::byte> staging, std::span<std::span<const std::byte>> pieces,
                                 PushHold& hold) override {
    return gather(offset, staging, pieces, hold, true);
  }

 private:
  // read() as a gather list. With `in_place_allowed`, a batch of kInPlaceBytes or more goes in
  // place: its entry points into the ring, whose reuse limit a pin keeps behind it until the
  // write completes (one copy less per follower; RDMA writes from the registered ring the same
  // way). Other batches, and any that must be stamped with the epoch, are copied into
  // `staging`, runs of them into one entry.
  Result<PushRead> gather(Offset offset, std::span<std::byte> staging, std::span<std::span<const std::byte>> pieces, PushHold& hold,
                          bool in_place_allowed) {
    TailReader* reader = tail_reader_at(offset);
    auto from_the_log = [&]() -> Result<PushRead> {
      WEFT_TRY(const std::size_t got, from_log(offset, staging));
      return copied_push(staging, got, offset, pieces);
    };
    if (reader == nullptr) return from_the_log();
    Consumer& consumer = *reader->consumer;
    const std::int32_t epoch = partition().log->leader_epoch();
    PushRead r{0, 0, offset};
    std::size_t staged = 0;
    bool pin_refused = false;
    bool last_staged = false;  // the last gather entry is in staging (a copied batch may extend it)
    for (;;) {
      RingBatch batch;
      if (const PollStatus status = next_batch(*reader, batch); status != PollStatus::kOk) {
        if (status == PollStatus::kEmpty) break;
        reader->consumer.reset();
        if (r.bytes > 0) return r;
        hold.release();
        return from_the_log();
      }
      const std::size_t size = batch.bytes.size();
      if (size > staging.size() - r.bytes) {
        reader->held = batch;
        if (r.bytes == 0) return too_big(batch);
        break;
      }
      const bool stamped = epoch < 0 || wire::load_be32(batch.bytes.data() + batch_field::kPartitionLeaderEpoch) >= 0;
      const bool large = in_place_allowed && size >= kInPlaceBytes && stamped;
      if (large && !hold && !pin_refused) pin_refused = !pin(batch, hold);
      const bool in_place = large && hold;
      const bool extends = !in_place && last_staged;
      if (!extends && r.pieces == pieces.size()) {
        reader->held = batch;  // no gather entry left: the next push starts with it
        break;
      }
      if (in_place) {
        pieces[r.pieces++] = batch.bytes;
      } else {
        if (!copy_out(consumer, batch, staging.data() + staged, epoch)) {
          reader->consumer.reset();
          if (r.bytes > 0) return r;
          hold.release();
          return from_the_log();
        }
        std::span<const std::byte>& piece = extends ? pieces[r.pieces - 1] : pieces[r.pieces++];
        piece = std::span<const std::byte>(extends ? piece.data() : staging.data() + staged, (extends ? piece.size() : 0) + size);
        staged += size;
      }
      last_staged = !in_place;
      r.bytes += size;
      r.next = batch.base_offset + batch.records;
    }
    return r;
  }

 public:
  Result<std::size_t> append(std::span<const std::byte> batches) override {
    Partition& p = partition();
    if (!writer_) {
      Result<Producer> attached = Producer::attach_follower(p.ring);
      if (!attached.ok()) return Error{Errc::kFailedPrecondition, "a follower's ring: " + attached.error().message};
      writer_.emplace(std::move(attached.value()));
    }
    std::size_t taken = 0;
    while (taken < batches.size()) {
      WEFT_TRY(BatchView batch, BatchView::parse_header(batches.subspan(taken), false));
      const Offset base = batch.base_offset();
      const Offset next = p.ring.claimed_offset();
      if (base < next) {
        return Error{Errc::kFailedPrecondition, "the leader's batch at offset " + std::to_string(base.value) + " is behind this replica's end " +
                                                    std::to_string(next.value)};
      }
      if (base > next) {
        // Offsets the leader skipped (an aborted claim there): skipped here too, in one aborted claim.
        if (base - next > INT32_MAX) {
          return Error{Errc::kCorrupt, "the leader's batch at offset " + std::to_string(base.value) + " leaves a gap of " +
                                           std::to_string(base - next) + " offsets after this replica's end " + std::to_string(next.value)};
        }
        Claim gap;
        const ClaimStatus status = writer_->try_claim(kBatchHeaderBytes, static_cast<std::uint32_t>(base - next), gap);
        if (status == ClaimStatus::kBackPressured) break;
        if (status != ClaimStatus::kOk) return Error{Errc::kInternal, "replica: a gap of offsets could not be claimed"};
        writer_->abort(gap);
      }
      // In 64 bits: a hostile leader's INT32_MAX delta must not overflow (parse_header bounds it below).
      const auto records = static_cast<std::uint32_t>(std::int64_t{batch.last_offset_delta()} + 1);
      Claim claim;
      const ClaimStatus status = writer_->try_claim(batch.size_bytes(), records, claim);
      if (status == ClaimStatus::kBackPressured) break;  // the log writer frees room; offered again
      if (status != ClaimStatus::kOk) {
        return Error{Errc::kInvalidArgument, "the leader's batch at offset " + std::to_string(base.value) + " does not fit this replica's ring (" +
                                                 std::to_string(batch.size_bytes()) + " bytes)"};
      }
      std::memcpy(claim.batch.data(), batch.bytes().data(), batch.size_bytes());
      if (writer_->commit(claim, batch.size_bytes()) != CommitStatus::kOk) {
        return Error{Errc::kCorrupt, "the leader's batch at offset " + std::to_string(base.value) + " disagrees with its own header"};
      }
      taken += batch.size_bytes();
    }
    // The leader's high watermark waits for this replica's durable end: the batches go to the log
    // from this thread, waited for, so the replicator reports them at once — a hand-off to the
    // maintenance thread and back cost two wake-ups across busy cores (acks=all across three
    // processes: p50 508 -> 418 µs, p99 1 212 -> 885 µs with this, docs/performance.md). A ring
    // without room wants the maintenance pass, which moves the reuse limit and wakes the replicator.
    if (taken > 0) node_.write_through(topic_, index_);
    if (taken < batches.size()) node_.hurry();
    return taken;
  }

  Result<void> truncate(Offset end) override {
    writer_.reset();
    for (TailReader& r : readers_) r.clear();
    WEFT_TRY(Offset cut, node_.rewind_partition(topic_, index_, end, false));
    epochs_.truncate_to(cut);
    save_epochs(EpochSave::kNow);
    return ok();
  }

  Result<void> reset(Offset start) override {
    writer_.reset();
    for (TailReader& r : readers_) r.clear();
    WEFT_TRY(Offset cut, node_.rewind_partition(topic_, index_, start, true));
    epochs_.truncate_to(Offset{0});
    save_epochs(EpochSave::kNow);
    (void)cut;
    return ok();
  }

  EpochHistory& epochs() override { return epochs_; }

  void save_epochs(EpochSave how) override {
    Result<void> saved = partition().log->save_epochs(epochs_.entries(), how);
    // Not fatal: the log leaves no stale history behind, so the next start reads the log through.
    if (!saved.ok() && saved.error().code != Errc::kUnsupported)
      log(LogLevel::kWarn, "replica: the epoch history was not saved; the next start reads the log through",
          {{"topic", topic_->name}, {"partition", std::to_string(index_)}, {"error", saved.error().message}});
  }

  void stamp_leader_epoch(std::int32_t epoch) override {
    partition().log->set_leader_epoch(epoch);
    // Producers attached under another epoch stop at their next claim (and their acks=all waits
    // end): a follower's ring takes only its leader's batches, and a leader's producers must
    // attach again under the new epoch.
    set_leader_epoch(partition().ring, epoch >= 0 ? epoch : ring_layout::kFollowing);
    writer_.reset();
    if (epoch >= 0) return;  // a leader's ring is its producers'
    Result<Producer> attached = Producer::attach_follower(partition().ring);
    if (attached.ok()) writer_.emplace(std::move(attached.value()));
  }

  void publish_high_watermark(Offset hw) override { weft::publish_high_watermark(partition().ring, hw); }

 private:
  Partition& partition() const { return *topic_->partitions[index_]; }

  struct TailReader {
    std::optional<Consumer> consumer;
    std::optional<RingBatch> held;  // read from the ring, did not fit the last buffer
    std::uint64_t last_used = 0;
    void clear() noexcept {
      consumer.reset();
      held.reset();
      last_used = 0;
    }
  };

  // Below this a batch is copied into the push's staging rather than pointed at: the copy costs
  // less than a gather entry (8 to a write) and a pin.
  static constexpr std::size_t kInPlaceBytes = 16 * 1024;

  // The tail reader positioned at `offset`, one per follower stream (each reads at its own pace):
  // the one already there, else the least recently used, moved. nullptr when the ring no longer
  // holds `offset` (the log does).
  TailReader* tail_reader_at(Offset offset) {
    Partition& p = partition();
    if (reader_ring_ != p.ring.data()) {
      for (TailReader& r : readers_) r.clear();
      reader_ring_ = p.ring.data();
    }
    TailReader* reader = nullptr;
    for (TailReader& r : readers_) {
      if (r.consumer && ((r.held && r.held->base_offset == offset) || (!r.held && r.consumer->next_offset() == offset))) reader = &r;
    }
    if (reader == nullptr) {
      reader = &readers_[0];
      for (TailReader& r : readers_) {
        if (r.last_used < reader->last_used) reader = &r;
      }
      reader->held.reset();
      if (!reader->consumer) {
        Result<Consumer> attached = Consumer::attach(p.ring, StartAt::kLatest);
        if (!attached.ok()) return nullptr;
        reader->consumer.emplace(std::move(attached.value()));
      }
      if (reader->consumer->next_offset() != offset && !reader->consumer->seek(offset).ok()) return nullptr;
    }
    reader->last_used = ++reads_;
    return reader;
  }

  // The batch a read left over, else the ring's next.
  static PollStatus next_batch(TailReader& reader, RingBatch& batch) {
    if (!reader.held) return reader.consumer->poll(batch);
    batch = *reader.held;
    reader.held.reset();
    return PollStatus::kOk;
  }

  static Error too_big(const RingBatch& batch) {
    return Error{Errc::kResourceExhausted, "the batch at offset " + std::to_string(batch.base_offset.value) + " is larger than the buffer"};
  }

  // Copies `batch` to `to` and stamps the leader's epoch where a producer left none; false when
  // producers overwrote it meanwhile.
  static bool copy_out(const Consumer& consumer, const RingBatch& batch, std::byte* to, std::int32_t epoch) {
    std::memcpy(to, batch.bytes.data(), batch.bytes.size());
    if (!consumer.validate(batch)) return false;
    const std::span<std::byte> copy(to, batch.bytes.size());
    if (epoch >= 0 && wire::load_be32(copy.data() + batch_field::kPartitionLeaderEpoch) < 0) stamp_partition_leader_epoch(copy, epoch);
    return true;
  }

  // Keeps the reuse limit behind `batch` (at or behind it now, so never overwritten) until `hold`
  // lets go. Under the log lock, which every move of the limit takes; when the node's pass has
  // it, or no slot is free, the push copies instead.
  bool pin(const RingBatch& batch, PushHold& hold) {
    Partition& p = partition();
    std::unique_lock lock(p.log_mutex, std::try_to_lock);
    if (!lock.owns_lock() || p.ring.data() != reader_ring_ || p.ring.reuse_limit().position.value > batch.position.value) return false;
    for (auto& slot : p.pins->slots) {
      if (slot.load(std::memory_order_relaxed) != PushHold::kFree) continue;
      slot.store(batch.position.value, std::memory_order_relaxed);  // read by the pass under log_mutex
      hold = PushHold(std::shared_ptr<std::atomic<std::uint64_t>>(p.pins, &slot));
      return true;
    }
    return false;
  }

  Result<std::size_t> from_log(Offset offset, std::span<std::byte> out) {
    if (offset >= read_log_progress(partition().ring).written) return std::size_t{0};
    WEFT_TRY(std::size_t got, partition().log->read(offset, out));
    // Below what the log holds, nothing read means the next batch did not fit.
    if (got == 0) return Error{Errc::kResourceExhausted, "the batch at offset " + std::to_string(offset.value) + " is larger than the buffer"};
    return got;
  }

  // Where each epoch starts: from the log's saved history (Kafka's leader-epoch checkpoint),
  // else from the batches' partitionLeaderEpoch, reading the log through (a log from before the
  // history was kept, or whose history was lost), after which the history is saved — synced
  // with the log: a crash first leaves no file or the unreadable one, and the next start reads
  // the log through again.
  void load_epochs() {
    PartitionLog& partition_log = *partition().log;
    Result<std::vector<EpochStart>> saved = partition_log.load_epochs();
    const std::size_t saved_epochs = saved.ok() ? saved->size() : 0;
    if (saved.ok() && epochs_.restore(std::move(*saved), partition_log.next_offset())) {
      // Epochs past the log's end (a crash took their batches, or a leader wrote none) leave the
      // file at once: batches of other epochs may come to those offsets.
      if (epochs_.entries().size() < saved_epochs) save_epochs(EpochSave::kNow);
      return;
    }
    if (!saved.ok() && saved.error().code == Errc::kUnsupported) {
      scan_epochs(partition_log);
      return;
    }
    if (saved.ok() || saved.error().code != Errc::kNotFound)
      log(LogLevel::kWarn, "replica: the saved epoch history is unreadable; reading the log through",
          {{"topic", topic_->name}, {"partition", std::to_string(index_)},
           {"error", saved.ok() ? std::string("epochs out of order") : saved.error().message}});
    scan_epochs(partition_log);
    save_epochs(EpochSave::kWithTheLog);
  }

  void scan_epochs(PartitionLog& log) {
    std::vector<std::byte> chunk(std::size_t{1} << 20);
    Offset at = log.start_offset();
    const Offset end = log.next_offset();
    while (at < end) {
      Result<std::size_t> got = log.read(at, chunk);
      if (!got.ok() || *got == 0) break;
      for (std::size_t pos = 0; pos < *got;) {
        Result<BatchView> batch = BatchView::parse_header(std::span(chunk.data() + pos, *got - pos), false);
        if (!batch.ok()) return;
        if (batch->last_offset() < at) return;  // offsets that do not rise: the log's reads refuse those
        if (batch->partition_leader_epoch() >= 0) epochs_.assign(batch->partition_leader_epoch(), batch->base_offset());
        at = batch->last_offset() + 1;
        pos += batch->size_bytes();
      }
    }
  }

  Node& node_;
  std::shared_ptr<Topic> topic_;
  std::uint32_t index_;
  EpochHistory epochs_;
  std::optional<Producer> writer_;
  std::array<TailReader, 4> readers_;  // the leader's, one per follower stream
  const std::byte* reader_ring_ = nullptr;
  Offset written_through_{-1};  // the ring's claimed end at the last write_through()
  std::uint64_t reads_ = 0;
};

Result<std::unique_ptr<ReplicaLog>> Node::replica_log(std::string_view name, std::uint32_t partition) {
  std::shared_ptr<Topic> topic;
  WEFT_TRY(PartitionLog * log, partition_log(name, partition, topic));
  (void)log;
  return std::unique_ptr<ReplicaLog>(new Replica(*this, std::move(topic), partition));
}

}  // namespace weft
