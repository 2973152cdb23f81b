#include "weft/node.h"

#include "weft/fabric/log.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <fstream>

#include <algorithm>
#include <atomic>
#include <bit>
#include <charconv>
#include <condition_variable>
#include <deque>
#include <map>
#include <mutex>
#include <optional>
#include <shared_mutex>
#include <thread>

namespace weft {
namespace {

constexpr std::size_t kMinRing = std::size_t{64} << 10;
constexpr std::size_t kMaxRing = std::size_t{1} << 30;
constexpr std::int64_t kSealEveryNs = 20'000'000;     // a stalled claim is looked at this often
constexpr std::int64_t kReclaimEveryNs = 1'000'000'000;

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
  if (c.fsync == FsyncPolicy::kInterval && c.fsync_interval_ms <= 0)
    return Error{Errc::kInvalidArgument, "fsync=interval needs a positive interval in milliseconds"};
  if (c.producer_slots < 1 || c.producer_slots > 63) return Error{Errc::kInvalidArgument, "producer.slots must be between 1 and 63"};
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
                                             "retention.ms, fsync, flow.control, producer.slots, consumer.slots)"};
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

struct Node::Partition {
  Partition(std::shared_ptr<SharedMemory> m, Ring r) : memory(std::move(m)), ring(r), owner(r) {}
  std::shared_ptr<SharedMemory> memory;
  Ring ring;
  RingOwner owner;  // the maintenance pass alone uses it (under State::maintain_mutex)
  Ring::Mark created_at{};
  std::int64_t last_seal_ns = 0;
  std::int64_t last_reclaim_ns = 0;
  std::uint64_t sealed = 0;
  std::deque<Ring::Mark> checkpoints;  // frontiers of earlier passes, oldest first (maintenance only)
  PartitionStats stats;  // under State::stats_mutex
  // The log writer (maintenance only): a consumer that reads every batch into the log.
  std::unique_ptr<PartitionLog> log;
  std::optional<Consumer> writer;
  std::uint64_t durable_position = 0;  // producers may overwrite only what lies before it
  std::uint64_t unsynced_position = 0;  // written to the log, not yet synced
  std::int64_t last_sync_ns = 0;
  std::string log_error;
};

struct Node::Topic {
  std::string name;
  std::uint64_t id = 0;
  TopicConfig config;
  std::vector<std::unique_ptr<Partition>> partitions;
  std::size_t ring_bytes = 0;  // what create_topic added to State::ring_bytes; delete takes back as much
};

struct Node::State {
  mutable std::shared_mutex topics_mutex;
  std::map<std::string, std::shared_ptr<Topic>, std::less<>> topics;
  std::uint64_t next_id = 1;
  std::size_t ring_bytes = 0;
  std::mutex maintain_mutex;
  mutable std::mutex stats_mutex;
  std::mutex wake_mutex;
  std::condition_variable wake;
  bool stopping = false;
  std::thread thread;
};

Node::Node(NodeOptions options) : options_(std::move(options)), state_(std::make_unique<State>()) {}

Node::~Node() { stop(); }

Result<std::unique_ptr<Node>> Node::start(NodeOptions options) {
  WEFT_TRY_VOID(validate_topic_config(options.default_topic));
  if (options.maintenance_min_interval_us <= 0 || options.maintenance_max_interval_us < options.maintenance_min_interval_us)
    return Error{Errc::kInvalidArgument, "maintenance intervals must be positive and min <= max"};
  std::unique_ptr<Node> node(new Node(std::move(options)));
  if (!node->options_.metadata_dir.empty()) WEFT_TRY_VOID(node->load_topics());
  if (node->options_.start_maintenance_thread) {
    Node* self = node.get();
    node->state_->thread = std::thread([self] {
      const std::int64_t min_us = self->options_.maintenance_min_interval_us;
      const std::int64_t max_us = self->options_.maintenance_max_interval_us;
      std::int64_t interval = max_us;
      std::int64_t last_pass = monotonic_ns();
      std::unique_lock lock(self->state_->wake_mutex);
      while (!self->state_->stopping) {
        lock.unlock();
        const double used = self->maintain_pass();
        const std::int64_t now = monotonic_ns();
        const auto elapsed_us = static_cast<double>(now - last_pass) / 1000.0;
        last_pass = now;
        // Come back before the busiest ring's producers have used a quarter of their free space,
        // and no sooner: every wakeup of this thread takes a cpu from a producer or a consumer.
        const double next = used > 0 ? elapsed_us * 0.25 / used : static_cast<double>(max_us);
        interval = std::clamp(static_cast<std::int64_t>(next), min_us, max_us);
        lock.lock();
        self->state_->wake.wait_for(lock, std::chrono::microseconds(interval), [self] { return self->state_->stopping; });
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

std::size_t Node::ring_memory_bytes() const {
  std::shared_lock lock(state_->topics_mutex);
  return state_->ring_bytes;
}

Result<TopicInfo> Node::create_topic(std::string_view name, const TopicConfig& config) {
  return create_topic_impl(name, config, !options_.metadata_dir.empty());
}

Result<TopicInfo> Node::create_topic_impl(std::string_view name, const TopicConfig& config, bool save) {
  WEFT_TRY_VOID(validate_topic_name(name));
  WEFT_TRY_VOID(validate_topic_config(config));
  RingConfig ring_config;
  ring_config.capacity_bytes = config.ring_capacity_bytes;
  // A frame is its 16-byte header and the batch, padded to 8: exactly what max.batch.bytes allows.
  ring_config.max_frame_bytes =
      std::min((config.max_batch_bytes + ring_layout::kFrameHeaderBytes + ring_layout::kFrameAlign - 1) & ~(ring_layout::kFrameAlign - 1),
               config.ring_capacity_bytes / 2);
  ring_config.producer_slots = config.producer_slots;
  ring_config.consumer_slots = config.consumer_slots;
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
  for (std::uint32_t p = 0; p < config.partitions; ++p) {
    ShmOptions shm;
    // The name only labels the mapping (memfd names stop at 249 bytes, hugetlbfs file names at 255),
    // so a long topic name is cut rather than refused.
    shm.name = "weft-" + topic->name.substr(0, 200) + "-" + std::to_string(p);
    shm.size_bytes = ring_bytes;
    shm.prefer_hugepages = options_.prefer_hugepages;
    shm.hugetlbfs_dir = options_.hugetlbfs_dir;
    Result<SharedMemory> memory = SharedMemory::create(shm);
    if (!memory.ok()) return Error{memory.error().code, "topic '" + topic->name + "' partition " + std::to_string(p) + ": " + memory.error().message};
    auto shared = std::make_shared<SharedMemory>(std::move(*memory));
    std::unique_ptr<PartitionLog> log;
    RingConfig partition_config = ring_config;
    if (options_.open_log) {
      Result<std::unique_ptr<PartitionLog>> opened = options_.open_log(topic->name, p, config);
      if (!opened.ok())
        return Error{opened.error().code, "topic '" + topic->name + "' partition " + std::to_string(p) + " log: " + opened.error().message};
      log = std::move(*opened);
      partition_config.initial_offset = log->next_offset();  // the ring carries on where the log ends
    }
    WEFT_TRY(Ring ring, Ring::format(shared->bytes(), partition_config));
    auto partition = std::make_unique<Partition>(shared, ring);
    if (log) {
      WEFT_TRY(Consumer writer, Consumer::attach(ring, StartAt::kEarliest));
      partition->writer.emplace(std::move(writer));
      partition->log = std::move(log);
      partition->durable_position = ring.reuse_limit().position.value;
    }
    partition->created_at = ring.reuse_limit();
    partition->stats.partition = p;
    partition->stats.memory = shared->describe();
    topic->partitions.push_back(std::move(partition));
  }
  std::unique_lock lock(state_->topics_mutex);
  if (state_->topics.contains(name)) return Error{Errc::kAlreadyExists, "topic '" + std::string(name) + "' already exists"};
  // Checked again: another create may have taken the budget or the last topic while the rings were made.
  if (state_->topics.size() >= options_.max_topics)
    return Error{Errc::kResourceExhausted, "the node holds its maximum of " + std::to_string(options_.max_topics) + " topics"};
  topic->ring_bytes = ring_bytes * config.partitions;
  if (state_->ring_bytes + topic->ring_bytes > options_.ring_memory_budget_bytes)
    return Error{Errc::kResourceExhausted, "topic '" + std::string(name) + "' needs " + std::to_string(topic->ring_bytes) +
                                               " bytes of ring memory; the node's budget has " +
                                               std::to_string(options_.ring_memory_budget_bytes - state_->ring_bytes) + " left"};
  if (save) WEFT_TRY_VOID(save_topic(topic->name, config));
  topic->id = state_->next_id++;
  state_->ring_bytes += topic->ring_bytes;
  state_->topics.emplace(topic->name, topic);
  lock.unlock();
  return describe_topic(name);
}

Result<void> Node::delete_topic(std::string_view name) {
  std::shared_ptr<Topic> topic;
  {
    std::unique_lock lock(state_->topics_mutex);
    auto it = state_->topics.find(name);
    if (it == state_->topics.end()) return Error{Errc::kNotFound, "topic '" + std::string(name) + "' does not exist"};
    topic = it->second;
    state_->topics.erase(it);
    state_->ring_bytes -= topic->ring_bytes;
  }
  // The maintenance pass may still hold the topic; the last reference unmaps its rings here or there.
  std::lock_guard guard(state_->maintain_mutex);
  Result<void> removed;
  if (!options_.metadata_dir.empty()) {
    const std::string path = options_.metadata_dir + "/" + topic->name + ".topic";
    if (::unlink(path.c_str()) != 0 && errno != ENOENT) removed = os_error(Errc::kIo, "removing " + path, errno);
  }
  for (const auto& p : topic->partitions)
    if (p->log)
      if (Result<void> r = p->log->remove(); !r.ok() && removed.ok()) removed = r;
  topic.reset();
  return removed;
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
  {
    std::shared_lock lock(state_->topics_mutex);
    auto it = state_->topics.find(name);
    if (it == state_->topics.end()) return Error{Errc::kNotFound, "topic '" + std::string(name) + "' does not exist"};
    topic = it->second;
  }
  TopicInfo info;
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

void Node::drain_to_log(Partition& p, const TopicConfig& config, std::int64_t now) {
  if (!p.log_error.empty()) return;  // stopped: producers fill the ring and are back-pressured
  Consumer& writer = *p.writer;
  RingBatch batch;
  bool appended = false;
  // Bounded per pass (a ring's worth), so one busy partition cannot starve the others.
  for (std::size_t bytes = 0; bytes < p.ring.capacity_bytes();) {
    const PollStatus status = writer.poll(batch);
    if (status == PollStatus::kEmpty) break;
    if (status != PollStatus::kOk) {
      // The limit never passes the writer, so a lap or a corrupt frame is a bug or a hostile
      // client: stop taking this partition's batches rather than persist a gap silently.
      p.log_error = status == PollStatus::kLapped ? "the log writer was lapped" : "a corrupt frame in the ring";
      log(LogLevel::kError, "partition log stopped", {{"reason", p.log_error}, {"offset", std::to_string(writer.next_offset().value)}});
      return;
    }
    if (Result<void> written = p.log->append(batch.bytes); !written.ok()) {
      p.log_error = written.error().message;
      log(LogLevel::kError, "partition log stopped", {{"reason", p.log_error}, {"offset", std::to_string(batch.base_offset.value)}});
      return;
    }
    bytes += batch.bytes.size();
    appended = true;
  }
  if (appended) {
    if (Result<void> flushed = p.log->flush(); !flushed.ok()) {
      p.log_error = flushed.error().message;
      log(LogLevel::kError, "partition log stopped", {{"reason", p.log_error}});
      return;
    }
  }
  const std::uint64_t written = writer.position().value;
  if (config.fsync == FsyncPolicy::kNone) {
    p.durable_position = written;  // in the page cache is all this topic asks
    return;
  }
  if (appended) p.unsynced_position = written;
  const bool due = config.fsync == FsyncPolicy::kAlways || now - p.last_sync_ns >= config.fsync_interval_ms * 1'000'000;
  if (p.unsynced_position > p.durable_position && due) {
    // One fdatasync for everything appended since the last: producers waiting on durability
    // are released together (group commit).
    if (Result<void> synced = p.log->sync(); !synced.ok()) {
      p.log_error = synced.error().message;
      log(LogLevel::kError, "partition log stopped", {{"reason", p.log_error}});
      return;
    }
    p.last_sync_ns = now;
    p.durable_position = p.unsynced_position;
  }
}

Result<void> Node::save_topic(const std::string& name, const TopicConfig& c) const {
  // Settings by name, one per line, as set_topic_config reads them; written aside, synced and
  // renamed into place, so a crash leaves the old file or the new one.
  std::string text = "partitions=" + std::to_string(c.partitions) + "\nring.capacity.bytes=" + std::to_string(c.ring_capacity_bytes) +
                     "\nmax.batch.bytes=" + std::to_string(c.max_batch_bytes) + "\nretention.bytes=" + std::to_string(c.retention_bytes) +
                     "\nretention.ms=" + std::to_string(c.retention_ms) + "\nfsync=" + fsync_policy_name(c) +
                     "\nflow.control=" + (c.consumer_flow_control ? "consumers" : "none") +
                     "\nproducer.slots=" + std::to_string(c.producer_slots) + "\nconsumer.slots=" + std::to_string(c.consumer_slots) + "\n";
  const std::string path = options_.metadata_dir + "/" + name + ".topic";
  const std::string temp = path + ".tmp";
  UniqueFd fd(::open(temp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
  if (!fd.valid()) return os_error(Errc::kIo, "writing " + temp, errno);
  if (write(fd.get(), text.data(), text.size()) != static_cast<ssize_t>(text.size()) || fdatasync(fd.get()) != 0)
    return os_error(Errc::kIo, "writing " + temp, errno);
  if (::rename(temp.c_str(), path.c_str()) != 0) return os_error(Errc::kIo, "renaming " + temp, errno);
  return ok();
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
  for (const std::string& name : names) {
    // A topic that cannot be read or recovered is logged and left out; the others serve.
    std::ifstream in(dir + "/" + name + ".topic");
    TopicConfig config = options_.default_topic;
    std::string line;
    Result<void> parsed;
    while (parsed.ok() && std::getline(in, line)) {
      const std::size_t eq = line.find('=');
      if (line.empty()) continue;
      parsed = eq == std::string::npos ? Result<void>(Error{Errc::kCorrupt, "a line without '=': " + line})
                                       : set_topic_config(config, line.substr(0, eq), line.substr(eq + 1));
    }
    Result<TopicInfo> created = parsed.ok() ? create_topic_impl(name, config, false) : Result<TopicInfo>(parsed.error());
    if (created.ok()) {
      log(LogLevel::kInfo, "topic recovered", {{"topic", name}, {"partitions", std::to_string(config.partitions)}});
    } else {
      log(LogLevel::kError, "topic not served", {{"topic", name}, {"reason", created.error().message}});
    }
  }
  return ok();
}

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
  const std::int64_t now = monotonic_ns();
  for (const auto& topic : topics) {
    for (const auto& p : topic->partitions) {
      const std::uint64_t keep = p->ring.capacity_bytes() / 2;
      const Ring::Mark limit = p->ring.reuse_limit();
      const std::uint64_t tail = p->ring.tail_position().value;
      const auto& d = p->ring.control().descriptor;

      // Frame boundaries come from the consumers when there are any: every frame before a
      // consumer's published position was committed, aborted or padding when it walked past,
      // and the frame at that position is checked here. Walking the frames again would cost the
      // node as much as a consumer's reading does. With no consumer to ask, the node walks.
      std::uint64_t slowest = UINT64_MAX, fastest = 0;
      bool attaching = false;  // a consumer that took its slot and has not said where it starts
      for (std::uint32_t i = 0; i < d.consumer_slots; ++i) {
        const ring_layout::ConsumerSlot& slot = p->ring.consumer_slots()[i];
        // Acquire: pairs with the consumer's release of its position (R5 in ring.cc).
        if (slot.owner.load(std::memory_order_acquire) == 0) continue;
        const std::uint64_t position = slot.position.load(std::memory_order_acquire);
        if (position == ring_layout::kNoClaim) {
          attaching = true;
          continue;
        }
        slowest = std::min(slowest, position);
        fastest = std::max(fastest, position);
      }
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
        for (std::uint32_t i = 0; i < d.producer_slots && !dead; ++i) {
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

      if (p->log) drain_to_log(*p, topic->config, now);

      // Nothing else holds producers back but the ring itself (and the log, below): the older
      // half stays readable (earliest, seeks, slow readers) and the newer half is free for
      // claims. Past boundaries are kept as checkpoints, so moving the limit needs no walk.
      if (p->checkpoints.empty() ||
          (frontier.position.value > p->checkpoints.back().position.value &&
           frontier.position.value - p->checkpoints.back().position.value >= keep / 256))
        p->checkpoints.push_back(frontier);
      const std::uint64_t ahead = std::max(tail, frontier.position.value);
      std::uint64_t target = ahead > keep ? ahead - keep : 0;
      target = std::min(target, frontier.position.value);
      if (p->log) target = std::min(target, p->durable_position);  // never past what is not in the log
      if (topic->config.consumer_flow_control) {
        target = std::min(target, slowest);
        // It read the limit to start from: moving it now could lap it before its first read.
        if (attaching) target = limit.position.value;
      }
      if (target > limit.position.value) {
        std::optional<Ring::Mark> release;
        while (!p->checkpoints.empty() && p->checkpoints.front().position.value <= target) {
          release = p->checkpoints.front();
          p->checkpoints.pop_front();
        }
        if (topic->config.consumer_flow_control && slowest == target)
          if (std::optional<Ring::Mark> at = p->owner.committed_frame_at(Position{slowest}); at) release = at;
        const std::uint64_t free_space = limit.position.value + p->ring.capacity_bytes() - std::min(tail, limit.position.value + p->ring.capacity_bytes());
        if (release && (release->position.value + keep / 16 >= target || free_space >= keep / 4)) {
          if (release->position.value > limit.position.value) p->owner.advance_reuse_limit(*release);
        } else if (free_space < keep / 4) {
          // Producers are about to run out of space and no known boundary is near the target
          // (passes too far apart, or the consumers read everything between two passes): walk.
          p->owner.release_to(Position{target});
        }
      }
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
      if (p->log) {
        s.log_end_offset = p->log->next_offset();
        s.log_error = p->log_error;
      }
      for (std::uint32_t i = 0; i < d.producer_slots; ++i) {
        // Relaxed: statistics, each word written by its producer alone.
        const ring_layout::ProducerSlot& slot = p->ring.producer_slots()[i];
        if (slot.owner.load(std::memory_order_relaxed) == 0) continue;
        ++s.producers;
        s.back_pressure_events += slot.back_pressure_events.load(std::memory_order_relaxed);
      }
      for (std::uint32_t i = 0; i < d.consumer_slots; ++i) {
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
  return used;
}

}  // namespace weft
