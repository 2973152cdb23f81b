// The Broker's topic cache, the frame builder, dispatch, and the APIs about topics and data:
// ApiVersions, Metadata, Produce, Fetch, ListOffsets, CreateTopics, DeleteTopics,
// DescribeConfigs, InitProducerId. Group APIs are in groups.cc.
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <map>

#include "broker.h"

#include "weft/fabric/time_lookup.h"
#include "weft/fabric/log.h"
#include "weft/fabric/record_batch.h"

namespace weft::kafka::detail {

namespace {

constexpr std::int32_t kNullAuthorizedOperations = INT32_MIN;
// Kafka's fetch.max.bytes default: the most one Fetch response holds.
constexpr std::int32_t kMaxFetchResponseBytes = 55 * 1024 * 1024;
constexpr int kMaxAutoCreationsPerRequest = 16;
// A cluster's auto-creations queued on the worker: a name is queued again after this long, and
// at most this many names are remembered (past it, clients are answered without queueing).
constexpr std::int64_t kAutoCreateRetryMs = 5'000;
constexpr std::size_t kMaxAutoCreating = 4'096;
constexpr int kMaxAutoCreationsQueued = 64;

std::int64_t monotonic_ms() noexcept { return monotonic_ns() / 1'000'000; }

}  // namespace

// ---- Frame ----------------------------------------------------------------------------------

Frame::Frame(const RequestHeader& header) { begin_frame(w, header); }

void Frame::file_region(std::shared_ptr<UniqueFd> file, std::uint64_t offset, std::size_t length, std::uint64_t readable_end) {
  total_ += w.size();
  chunks_.push_back(OutChunk{w.take(), nullptr, 0, 0, 0});
  w.buffer().clear();
  OutChunk region{{}, std::move(file), offset, length, 0};
  region.readable_end = readable_end;
  chunks_.push_back(std::move(region));
  total_ += length;
}

std::vector<OutChunk> Frame::finish() {
  total_ += w.size();
  if (w.size() > 0) chunks_.push_back(OutChunk{w.take(), nullptr, 0, 0, 0});
  std::string& first = chunks_.front().bytes;
  std::byte size[4];
  wire::store_be32(size, static_cast<std::int32_t>(total_ - 4));
  std::memcpy(first.data(), size, 4);
  return std::move(chunks_);
}

// ---- Broker ---------------------------------------------------------------------------------

namespace {

GroupCoordinatorOptions group_options(const KafkaListenerOptions& options) {
  GroupCoordinatorOptions groups = options.groups;
  if (ClusterNode* cluster = options.cluster) {
    // Unknown (no live node listed yet): this node answers, as FindCoordinator says.
    groups.owns_group = [cluster](std::string_view group) {
      const NodeId coordinator = cluster->group_coordinator(group);
      return coordinator < 0 || coordinator == cluster->id();
    };
  }
  return groups;
}

KafkaListenerOptions with_cluster_id(KafkaListenerOptions options) {
  if (options.cluster != nullptr) options.node_id = options.cluster->id();
  return options;
}

}  // namespace

Broker::Broker(Node& node, const KafkaListenerOptions& options, std::uint16_t bound_port)
    : node_(node), options_(with_cluster_id(options)), cluster_(options.cluster), groups_(group_options(options)) {
  advertised_host_ = options_.advertised_host.empty() ? options_.listen_host : options_.advertised_host;
  if (advertised_host_ == "0.0.0.0" || advertised_host_ == "::") advertised_host_ = "127.0.0.1";
  advertised_port_ = options_.advertised_port != 0 ? options_.advertised_port : bound_port;
  // Producer ids must not repeat across restarts (producer state is not kept): start from the
  // wall clock in milliseconds, times 1024 ids per millisecond of uptime.
  next_producer_id_ = wall_clock_ms() * 1024;
  started_ms_ = now_ms();
  prepare_producers();  // here, not at the loop's first Produce
}

Broker::~Broker() = default;

std::int64_t Broker::now_ms() const noexcept { return monotonic_ms(); }

std::shared_ptr<TopicState> Broker::topic(std::string_view name) {
  const std::uint64_t version = node_.topics_version();
  if (version != topics_version_) {
    // A topic was created or deleted, or a partition's ring replaced (a replica cut back): drop
    // cached topics that are gone, were recreated, or hold a retired ring, which would refuse
    // every Produce as a follower's (one lookup each: describing them copied every partition's
    // counters under the node's lock).
    topics_version_ = version;
    for (auto it = topics_.begin(); it != topics_.end();) {
      if (node_.topic_incarnation(it->first) != it->second->incarnation) it = topics_.erase(it);
      else ++it;
    }
  }
  auto it = topics_.find(name);
  if (it != topics_.end()) return it->second;
  // Described before the partitions are opened: a ring replaced meanwhile shows at the next check.
  Result<TopicInfo> info = node_.describe_topic(name);
  if (!info.ok()) return nullptr;
  auto state = std::make_shared<TopicState>();
  state->name = std::string(name);
  state->id = info->id;
  state->incarnation = TopicIncarnation{info->id, info->rings_replaced};
  state->config = info->config;
  state->has_log = static_cast<bool>(node_.options().open_log);  // every partition of such a node keeps one
  for (std::uint32_t p = 0; p < info->config.partitions; ++p) {
    Result<PartitionMemory> memory = node_.open_partition(name, p);
    if (!memory.ok()) {
      log(LogLevel::kWarn, "kafka: cannot open a partition", {{"topic", std::string(name)}, {"partition", std::to_string(p)}, {"error", memory.error().message}});
      return nullptr;
    }
    auto partition = std::make_unique<PartitionState>();
    partition->memory = std::move(*memory);
    state->partitions.push_back(std::move(partition));
    state->log_start.push_back(info->partitions[p].log_start_offset.value >= 0 ? info->partitions[p].log_start_offset
                                                                                : info->partitions[p].start_offset);
  }
  state->log_start_refreshed_ms = now_ms();
  topics_.emplace(state->name, state);
  return state;
}

std::shared_ptr<TopicState> Broker::topic_or_create(std::string_view name, bool allow_create, std::int16_t& error) {
  error = error::kNone;
  if (!validate_topic_name(name).ok()) {
    error = error::kInvalidTopicException;
    return nullptr;
  }
  if (std::shared_ptr<TopicState> t = topic(name)) return t;
  if (cluster_ != nullptr) {
    if (cluster_->topic(name)) {
      error = error::kNotLeaderOrFollower;  // the topic has no replica on this node
      return nullptr;
    }
    if (!allow_create || !options_.auto_create_topics) {
      error = error::kUnknownTopicOrPartition;
      return nullptr;
    }
    // Kafka's answer to an auto-created topic: LEADER_NOT_AVAILABLE until its leaders are elected
    // (or, with fewer live nodes than the default factor, until enough have joined).
    if (auto_creations_left_-- <= 0) {
      error = error::kLeaderNotAvailable;  // retriable: the client asks again, and its next request creates more
      return nullptr;
    }
    const std::uint32_t replication = std::max(options_.default_replication_factor, 1u);
    if (cluster_->nodes().size() < replication) {
      log(LogLevel::kWarn, "kafka: not auto-creating a topic: fewer live nodes than default_replication_factor",
          {{"topic", std::string(name)}, {"live", std::to_string(cluster_->nodes().size())}, {"replication", std::to_string(replication)}});
      error = error::kLeaderNotAvailable;
      return nullptr;
    }
    error = auto_create_off_loop(name, replication);
    return nullptr;
  }
  if (!allow_create || !options_.auto_create_topics) {
    error = error::kUnknownTopicOrPartition;
    return nullptr;
  }
  if (auto_create_attempted_ != nullptr) {
    // Answering a parked Metadata: its worker tried these (and logged why one failed); the
    // others were past the request's share.
    error = auto_create_attempted_->contains(name) ? error::kUnknownTopicOrPartition : error::kLeaderNotAvailable;
    return nullptr;
  }
  if (auto_creations_left_-- <= 0) {
    error = error::kLeaderNotAvailable;  // retriable: the client asks again, and its next request creates more
    return nullptr;
  }
  // A Produce's (a Metadata's were made before it was answered): the Produce is answered at
  // once, and the client's retry finds the topic.
  error = auto_create_off_loop(name, 1);
  return nullptr;
}

bool Broker::make_auto_topic(std::string_view name) {
  TopicConfig config = node_.options().default_topic;
  config.partitions = options_.default_partitions;
  Result<TopicInfo> created = node_.create_topic(name, config);
  if (created.ok())
    log(LogLevel::kInfo, "kafka: topic auto-created", {{"topic", std::string(name)}, {"partitions", std::to_string(config.partitions)}});
  else if (created.error().code != Errc::kAlreadyExists)
    log(LogLevel::kWarn, "kafka: auto-creating a topic failed", {{"topic", std::string(name)}, {"error", created.error().message}});
  return created.ok() || created.error().code == Errc::kAlreadyExists;
}

std::int16_t Broker::auto_create_off_loop(std::string_view name, std::uint32_t replication) {
  // Made on the topics' worker: a topic's rings, files and syncs take ~8 ms, and a cluster's
  // store two etcd round trips, each up to its 2 s timeout when etcd is slow; on the loop they
  // held every connection. A name is queued once at a time, and again only 5 s after it was last
  // queued (the creation failed, or a cluster's leaders are still not seen); a failure is
  // answered until then.
  const std::int64_t now = now_ms();
  if (auto it = auto_creating_.find(name); it != auto_creating_.end()) {
    const int state = it->second.state->load(std::memory_order_acquire);  // acquire: the worker's outcome
    if (state == AutoCreation::kQueued) return error::kLeaderNotAvailable;
    if (now - it->second.queued_ms < kAutoCreateRetryMs)
      return state == AutoCreation::kFailed ? error::kUnknownTopicOrPartition : error::kLeaderNotAvailable;
  }
  if (auto_creating_.size() >= kMaxAutoCreating) {
    std::erase_if(auto_creating_, [now](const auto& entry) {
      return entry.second.state->load(std::memory_order_acquire) != AutoCreation::kQueued && now - entry.second.queued_ms >= kAutoCreateRetryMs;
    });
  }
  // Bounded: names remembered, and creations waiting on the worker (each may wait out etcd's
  // timeouts; CreateTopics and DeleteTopics queue behind them).
  if (auto_creating_.size() >= kMaxAutoCreating || auto_creations_queued_.load(std::memory_order_relaxed) >= kMaxAutoCreationsQueued)
    return error::kLeaderNotAvailable;  // the client retries; its topic is queued later
  auto state = std::make_shared<std::atomic<int>>(AutoCreation::kQueued);
  auto_creating_.insert_or_assign(std::string(name), AutoCreation{now, state});
  auto_creations_queued_.fetch_add(1, std::memory_order_relaxed);  // relaxed: a bound, not a hand-off
  // On the worker: cluster_ and node_ are safe from any thread; the rest is read-only here.
  worker(Worker::kTopics).add([this, state, topic = std::string(name), replication, partitions = options_.default_partitions] {
    bool failed = false;
    if (cluster_ == nullptr) {
      failed = !make_auto_topic(topic);
    } else {
      Result<void> created = cluster_->create_topic(topic, partitions, replication, node_.options().default_topic);
      failed = !created.ok() && created.error().code != Errc::kAlreadyExists;
      if (created.ok())
        log(LogLevel::kInfo, "kafka: cluster topic auto-created",
            {{"topic", topic}, {"partitions", std::to_string(partitions)}, {"replication", std::to_string(replication)}});
      else if (failed)
        log(LogLevel::kWarn, "kafka: auto-creating a cluster topic failed", {{"topic", topic}, {"error", created.error().message}});
    }
    state->store(failed ? AutoCreation::kFailed : AutoCreation::kDone, std::memory_order_release);  // release: pairs with the loop's acquire
    auto_creations_queued_.fetch_sub(1, std::memory_order_relaxed);
  });
  return error::kLeaderNotAvailable;
}

std::int16_t Broker::leader_error(std::string_view topic, std::int32_t partition, PartitionView* view) const {
  std::optional<PartitionView> state = partition >= 0 ? cluster_->leadership(topic, static_cast<std::uint32_t>(partition)) : std::nullopt;
  if (!state) {
    const std::optional<TopicRecord> record = cluster_->topic(topic);
    return record && partition >= 0 && static_cast<std::uint32_t>(partition) < record->partitions ? error::kLeaderNotAvailable
                                                                                                  : error::kUnknownTopicOrPartition;
  }
  if (view != nullptr) *view = *state;
  if (state->leader < 0) return error::kLeaderNotAvailable;
  if (state->leader != options_.node_id) return error::kNotLeaderOrFollower;
  return state->replica_here ? error::kNone : error::kLeaderNotAvailable;  // elected, not yet leading here
}

std::vector<Broker::BrokerAddress> Broker::brokers() const {
  std::vector<BrokerAddress> out;
  if (cluster_ != nullptr) {
    for (const NodeRecord& n : cluster_->nodes()) {
      if (n.id == options_.node_id) continue;  // this one from its own settings, below
      const std::size_t colon = n.kafka_address.rfind(':');
      if (colon == std::string::npos || colon == 0) continue;  // a node without a Kafka listener
      const int port = std::atoi(n.kafka_address.c_str() + colon + 1);
      std::string host = n.kafka_address.substr(0, colon);
      if (host.size() > 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
      if (port > 0 && port <= 65535) out.push_back({n.id, std::move(host), port, n.rack});
    }
  }
  out.push_back(self_address());
  std::sort(out.begin(), out.end(), [](const BrokerAddress& a, const BrokerAddress& b) { return a.id < b.id; });
  return out;
}

Offset Broker::log_start(TopicState& t, std::uint32_t partition) {
  const std::int64_t now = now_ms();
  if (now - t.log_start_refreshed_ms > 500) {
    Result<TopicInfo> info = node_.describe_topic(t.name);
    if (info.ok() && info->id == t.id) {
      for (std::size_t p = 0; p < t.log_start.size() && p < info->partitions.size(); ++p)
        t.log_start[p] = info->partitions[p].log_start_offset.value >= 0 ? info->partitions[p].log_start_offset : info->partitions[p].start_offset;
    }
    t.log_start_refreshed_ms = now;
  }
  return t.log_start[partition];
}

Offset Broker::earliest(TopicState& t, std::uint32_t partition) {
  if (t.has_log) {
    Result<LogSlice> slice = node_.open_log_slice(t.name, partition, kEarliestOffset);
    if (slice.ok()) {
      t.log_start[partition] = slice->offset;
      return slice->offset;
    }
  }
  if (!t.has_log) return t.partitions[partition]->memory.ring.reuse_limit().offset;
  return log_start(t, partition);
}

void Broker::tick(std::int64_t now_ns) {
  const std::int64_t now = now_ns / 1'000'000;
  groups_.tick(now);
  // Tail readers nobody fetched through for a while give their consumer slot back (and, under
  // consumer flow control, stop holding producers).
  for (auto& [name, t] : topics_)
    for (auto& p : t->partitions)
      if (p->reader && now - p->reader_used_ms > 5'000) p->reader.reset();
  // Committed offsets past their retention, on the offsets' worker (after the commits before it).
  // Kafka counts a group's retention from when it emptied: groups with members keep theirs, and
  // so do those that emptied within the retention. Membership is not kept across a restart, so
  // nothing expires before a whole retention has passed since this listener started (a group
  // whose consumers reconnect after a restart is not taken for an abandoned one).
  const std::int64_t retention = options_.offsets_retention_ms;
  if (retention > 0 && now - started_ms_ >= retention && now - last_offsets_expiry_ms_ >= options_.offsets_retention_check_interval_ms) {
    last_offsets_expiry_ms_ = now;
    auto active = std::make_shared<std::set<std::string, std::less<>>>();
    for (const GroupListing& g : groups_.list()) active->insert(g.group_id);
    for (std::string& g : groups_.forgotten_since(now - retention)) active->insert(std::move(g));
    worker(Worker::kOffsets).add([this, active, cluster = cluster_, self = options_.node_id, retention] {
      auto keep = [&](std::string_view group) { return active->contains(group); };
      auto mine = [&](std::string_view group) {
        const NodeId coordinator = cluster != nullptr ? cluster->group_coordinator(group) : -1;
        return coordinator < 0 || coordinator == self;
      };
      Result<std::vector<std::string>> expired = node_.expire_offsets(wall_clock_ms(), retention, keep, mine);
      if (!expired.ok()) {
        log(LogLevel::kWarn, "kafka: expiring committed offsets failed", {{"reason", expired.error().message}});
      } else if (!expired->empty()) {
        log(LogLevel::kInfo, "kafka: committed offsets expired", {{"groups", std::to_string(expired->size())}, {"first", expired->front()}});
      }
    });
  }
  // Idempotent producers idle past their expiration, looked for every minute at most.
  if (now - last_producer_expiry_ms_ >= std::clamp<std::int64_t>(options_.producer_id_expiration_ms / 10, 1, 60'000)) {
    last_producer_expiry_ms_ = now;
    trim_producers(now, std::nullopt);
  }
  // A producer the ring fenced (the node follows now, or leads at a new epoch) lets go of its
  // slot, so an idle partition's follower writes its ring alone. Every 100 ms.
  if (now - last_leadership_check_ms_ >= 100) {
    last_leadership_check_ms_ = now;
    for (auto& [name, t] : topics_)
      for (auto& p : t->partitions)
        if (p->producer && leader_epoch(p->memory.ring) != p->producer->leader_epoch()) p->producer.reset();
  }
}

// ---- Dispatch -------------------------------------------------------------------------------

Outcome Broker::handle(const Request& r) {
  const RequestHeader& h = r.header;
  auto_creations_left_ = kMaxAutoCreationsPerRequest;
  const ApiSupport* api = find_api(h.api_key);
  if (api == nullptr) {
    return Outcome{Outcome::Kind::kClose, {}, nullptr, "unknown API key " + std::to_string(h.api_key), 0};
  }
  if (api->key == ApiKey::kApiVersions) return api_versions(r);
  if (h.api_version < api->min_version || h.api_version > api->max_version) {
    // As Kafka does: only ApiVersions is answered in a version the broker does not serve.
    return Outcome{Outcome::Kind::kClose, {}, nullptr,
                   std::string(api->name) + " v" + std::to_string(h.api_version) + " is not served (v" + std::to_string(api->min_version) +
                       "..v" + std::to_string(api->max_version) + ")",
                   0};
  }
  Reader in(r.body);
  Outcome out;
  switch (api->key) {
    case ApiKey::kMetadata: out = metadata(r, in); break;
    case ApiKey::kProduce: out = produce(r, in); break;
    case ApiKey::kFetch: out = fetch(r, in); break;
    case ApiKey::kListOffsets: out = list_offsets(r, in); break;
    case ApiKey::kFindCoordinator: out = find_coordinator(r, in); break;
    case ApiKey::kJoinGroup: out = join_group(r, in); break;
    case ApiKey::kSyncGroup: out = sync_group(r, in); break;
    case ApiKey::kHeartbeat: out = heartbeat(r, in); break;
    case ApiKey::kLeaveGroup: out = leave_group(r, in); break;
    case ApiKey::kOffsetCommit: out = offset_commit(r, in); break;
    case ApiKey::kOffsetFetch: out = offset_fetch(r, in); break;
    case ApiKey::kListGroups: out = list_groups(r, in); break;
    case ApiKey::kDescribeGroups: out = describe_groups(r, in); break;
    case ApiKey::kCreateTopics: out = create_topics(r, in); break;
    case ApiKey::kDeleteTopics: out = delete_topics(r, in); break;
    case ApiKey::kDescribeConfigs: out = describe_configs(r, in); break;
    case ApiKey::kInitProducerId: out = init_producer_id(r, in); break;
    case ApiKey::kApiVersions: break;
  }
  if (!in.ok()) {
    if (out.parked) abandon(*out.parked);
    return Outcome{Outcome::Kind::kClose, {}, nullptr, "malformed " + std::string(api->name) + " v" + std::to_string(h.api_version) + " request: " + in.error(), 0};
  }
  return out;
}

// ---- ApiVersions ----------------------------------------------------------------------------

Outcome Broker::api_versions(const Request& r) {
  const RequestHeader& h = r.header;
  const ApiSupport* api = find_api(h.api_key);
  Outcome out;
  if (h.api_version > api->max_version || h.api_version < 0) {
    // Answered in v0 with UNSUPPORTED_VERSION and the ranges served, so the client retries lower.
    RequestHeader v0 = h;
    v0.flexible = false;
    Frame f(v0);
    f.w.i16(error::kUnsupportedVersion);
    f.w.array(supported_apis().size(), false);
    for (const ApiSupport& a : supported_apis()) {
      f.w.i16(static_cast<std::int16_t>(a.key));
      f.w.i16(a.min_version);
      f.w.i16(a.max_version);
    }
    out.response = f.finish();
    out.error = error::kUnsupportedVersion;
    return out;
  }
  const bool flex = h.flexible;
  if (flex) {
    // ClientSoftwareName and ClientSoftwareVersion (v3+): read to check the frame is whole.
    Reader in(r.body);
    (void)in.string(true);
    (void)in.string(true);
    in.tagged_fields(true);
    if (!in.ok()) return Outcome{Outcome::Kind::kClose, {}, nullptr, "malformed ApiVersions request: " + in.error(), 0};
  }
  Frame f(h);
  f.w.i16(error::kNone);
  f.w.array(supported_apis().size(), flex);
  for (const ApiSupport& a : supported_apis()) {
    f.w.i16(static_cast<std::int16_t>(a.key));
    f.w.i16(a.min_version);
    f.w.i16(a.max_version);
    f.w.tagged_fields(flex);
  }
  if (h.api_version >= 1) f.w.i32(0);  // throttle
  f.w.tagged_fields(flex);
  out.response = f.finish();
  return out;
}

// ---- Metadata -------------------------------------------------------------------------------

Outcome Broker::metadata(const Request& r, Reader& in, const std::set<std::string, std::less<>>* attempted) {
  const std::int16_t v = r.header.api_version;
  const bool flex = r.header.flexible;
  std::vector<std::optional<std::string_view>> names;
  const std::int32_t count = in.array(flex, v >= 1, 2);
  bool all = count < 0 || (v == 0 && count == 0);
  for (std::int32_t i = 0; i < std::max(count, 0) && in.ok(); ++i) {
    if (v >= 10) (void)in.uuid();
    names.push_back(v >= 10 ? in.nullable_string(flex) : std::optional<std::string_view>(in.string(flex)));
    in.tagged_fields(flex);
  }
  bool allow_auto_create = true;
  if (v >= 4) allow_auto_create = in.boolean();
  if (v >= 8 && v <= 10) (void)in.boolean();
  if (v >= 8) (void)in.boolean();
  in.tagged_fields(flex);
  if (!in.ok()) return {};

  // A single node's topics to auto-create (a cluster's are queued by topic_or_create): made on
  // the topics' worker, each ~8 ms of rings, files and syncs, then this request read again.
  if (attempted == nullptr && cluster_ == nullptr && !all && allow_auto_create && options_.auto_create_topics) {
    auto to_make = std::make_shared<std::set<std::string, std::less<>>>();
    for (const auto& name : names)
      if (name && to_make->size() < static_cast<std::size_t>(kMaxAutoCreationsPerRequest) && validate_topic_name(*name).ok() && !topic(*name))
        to_make->emplace(*name);
    if (!to_make->empty()) {
      auto body = std::make_shared<const std::string>(reinterpret_cast<const char*>(r.body.data()), r.body.size());
      auto respond = [this, to_make, body, header = owned_header(r), arrived_ns = r.arrived_ns](std::int16_t& first_error) {
        Request again{header, std::span(reinterpret_cast<const std::byte*>(body->data()), body->size()), arrived_ns, {}};
        Reader reread(again.body);
        Outcome out = metadata(again, reread, to_make.get());
        first_error = out.error;
        return std::move(out.response);
      };
      // On the worker: make_auto_topic touches node_ and options_ only (safe from any thread).
      auto make = [this, to_make] {
        for (const std::string& name : *to_make) make_auto_topic(name);
      };
      return defer(r, Worker::kTopics, true, std::move(respond), std::move(make));
    }
  }
  // Answering after the worker: topic_or_create answers for the names it tried.
  struct AttemptedScope {
    const std::set<std::string, std::less<>>*& slot;
    ~AttemptedScope() { slot = nullptr; }
  } attempted_scope{auto_create_attempted_};
  auto_create_attempted_ = attempted;

  struct PartitionEntry {
    std::int16_t error = 0;
    std::int32_t leader = -1;
    std::int32_t leader_epoch = 0;
    std::vector<std::int32_t> replicas;
    std::vector<std::int32_t> isr;
  };
  struct Entry {
    std::string name;
    std::int16_t error = 0;
    std::vector<PartitionEntry> partitions;
  };
  // A single node leads all it has; a cluster says what its metadata holds.
  auto describe = [&](std::string_view name, std::uint32_t partitions) {
    Entry e{std::string(name), 0, {}};
    for (std::uint32_t p = 0; p < partitions; ++p) {
      PartitionEntry pe;
      if (cluster_ == nullptr) {
        pe = {0, options_.node_id, 0, {options_.node_id}, {options_.node_id}};
      } else if (std::optional<PartitionView> view = cluster_->partition(name, p)) {
        pe = {view->leader < 0 ? error::kLeaderNotAvailable : error::kNone, view->leader, view->leader_epoch, view->replicas, view->isr};
      } else {
        pe.error = error::kLeaderNotAvailable;  // not assigned yet
      }
      e.partitions.push_back(std::move(pe));
    }
    return e;
  };
  std::vector<Entry> entries;
  if (all && cluster_ != nullptr) {
    for (const TopicRecord& t : cluster_->topics()) entries.push_back(describe(t.name, t.partitions));
  } else if (all) {
    for (const std::string& name : node_.list_topics()) {
      std::shared_ptr<TopicState> t = topic(name);
      if (t) entries.push_back(describe(name, static_cast<std::uint32_t>(t->partitions.size())));
    }
  } else {
    for (const auto& name : names) {
      if (!name) {
        entries.push_back({"", error::kUnknownTopicId, {}});
        continue;
      }
      std::int16_t err = 0;
      if (cluster_ != nullptr) {
        if (std::optional<TopicRecord> record = cluster_->topic(*name)) {
          entries.push_back(describe(*name, record->partitions));
          continue;
        }
      }
      std::shared_ptr<TopicState> t = topic_or_create(*name, allow_auto_create, err);
      if (t) entries.push_back(describe(*name, static_cast<std::uint32_t>(t->partitions.size())));
      else entries.push_back({std::string(*name), err, {}});
    }
  }
  const std::vector<BrokerAddress> listed = brokers();
  // Admin requests go to the controller, so it must be a listed broker.
  std::int32_t controller = options_.node_id;
  if (cluster_ != nullptr) {
    const NodeId c = cluster_->controller();
    if (std::any_of(listed.begin(), listed.end(), [&](const BrokerAddress& b) { return b.id == c; })) controller = c;
  }

  Outcome out;
  Frame f(r.header);
  Writer& w = f.w;
  if (v >= 3) w.i32(0);
  w.array(listed.size(), flex);
  for (const BrokerAddress& b : listed) {
    w.i32(b.id);
    w.string(b.host, flex);
    w.i32(b.port);
    if (v >= 1) w.nullable_string(b.rack.empty() ? std::nullopt : std::optional<std::string_view>(b.rack), flex);
    w.tagged_fields(flex);
  }
  if (v >= 2) w.nullable_string(options_.cluster_id, flex);
  if (v >= 1) w.i32(controller);
  w.array(entries.size(), flex);
  for (const Entry& e : entries) {
    w.i16(e.error);
    if (e.error != 0 && out.error == 0) out.error = e.error;
    w.string(e.name, flex);
    if (v >= 10) w.uuid({});  // weft has no topic ids on the wire: the zero UUID means none
    if (v >= 1) w.boolean(false);
    w.array(e.partitions.size(), flex);
    for (std::size_t p = 0; p < e.partitions.size(); ++p) {
      const PartitionEntry& pe = e.partitions[p];
      w.i16(pe.error);
      w.i32(static_cast<std::int32_t>(p));
      w.i32(pe.leader);
      if (v >= 7) w.i32(pe.leader_epoch);
      w.array(pe.replicas.size(), flex);
      for (const std::int32_t replica : pe.replicas) w.i32(replica);
      w.array(pe.isr.size(), flex);
      for (const std::int32_t replica : pe.isr) w.i32(replica);
      if (v >= 5) {
        // Offline replicas: assigned to nodes that are not live.
        std::vector<std::int32_t> offline;
        for (const std::int32_t replica : pe.replicas)
          if (std::none_of(listed.begin(), listed.end(), [&](const BrokerAddress& b) { return b.id == replica; })) offline.push_back(replica);
        w.array(offline.size(), flex);
        for (const std::int32_t replica : offline) w.i32(replica);
      }
      w.tagged_fields(flex);
    }
    if (v >= 8) w.i32(kNullAuthorizedOperations);
    w.tagged_fields(flex);
  }
  if (v >= 8 && v <= 10) w.i32(kNullAuthorizedOperations);
  w.tagged_fields(flex);
  out.response = f.finish();
  return out;
}

// ---- Produce --------------------------------------------------------------------------------

namespace {

std::int32_t next_sequence(std::int32_t s) noexcept { return s == INT32_MAX ? 0 : s + 1; }

// What Kafka's Produce refuses by the request's version before looking at a batch: v3 and later
// carry RecordBatch v2 only (INVALID_RECORD), and zstd needs v7 (KIP-110). Older versions with an
// older format get UNSUPPORTED_FOR_MESSAGE_FORMAT from append: weft stores v2 batches only.
std::int16_t refused_for_version(std::int16_t version, std::span<const std::byte> records, std::string& why) {
  if (records.size() <= batch_field::kMagic) return error::kNone;  // too short: append says so
  const bool v2 = records[batch_field::kMagic] == std::byte{kBatchMagicV2};
  if (version >= 3 && !v2) {
    why = "Produce v3 and later carry RecordBatch v2 only";
    return error::kInvalidRecord;
  }
  if (version < 7 && v2 && records.size() >= kBatchHeaderBytes &&
      (wire::load_be16(records.data() + batch_field::kAttributes) & batch_attr::kCompressionMask) == static_cast<std::int16_t>(Compression::kZstd)) {
    why = "zstd needs Produce v7 or later";
    return error::kUnsupportedCompressionType;
  }
  return error::kNone;
}

}  // namespace

Outcome Broker::produce(const Request& r, Reader& in) {
  const bool flex = r.header.flexible;
  auto parked = std::make_unique<Parked>();
  parked->kind = Parked::Kind::kProduce;
  parked->header = r.header;
  parked->arrived_ns = r.arrived_ns;
  const std::optional<std::string_view> transactional_id = r.header.api_version >= 3 ? in.nullable_string(flex) : std::nullopt;
  parked->acks = in.i16();
  const std::int32_t timeout_ms = in.i32();
  const std::int32_t topics = in.array(flex, false, 2);
  for (std::int32_t t = 0; t < topics && in.ok(); ++t) {
    const std::string_view name = in.string(flex);
    std::int16_t topic_error = 0;
    std::shared_ptr<TopicState> state = topic_or_create(name, true, topic_error);
    const std::int32_t partitions = in.array(flex, false, 4);
    for (std::int32_t p = 0; p < partitions && in.ok(); ++p) {
      Parked::ProducePart part;
      part.topic = std::string(name);
      part.partition = in.i32();
      const std::optional<std::span<const std::byte>> records = in.nullable_bytes(flex);
      in.tagged_fields(flex);
      if (!in.ok()) break;
      PartitionView view;
      const std::int16_t routed = cluster_ != nullptr ? leader_error(name, part.partition, &view) : error::kNone;
      if (routed != error::kNone) {
        part.error = routed;
      } else if (!state) {
        part.error = cluster_ != nullptr ? error::kLeaderNotAvailable : topic_error;  // leading, the local copy not made yet
      } else if (part.partition < 0 || static_cast<std::size_t>(part.partition) >= state->partitions.size()) {
        part.error = error::kUnknownTopicOrPartition;
      } else if (!records || records->empty()) {
        part.error = error::kInvalidRecord;
        part.error_message = "no records";
      } else if (const std::int16_t refused = refused_for_version(r.header.api_version, *records, part.error_message); refused != 0) {
        part.error = refused;
      } else if (parked->acks == -1 && cluster_ != nullptr && view.isr_size < state->config.min_insync_replicas) {
        // Kafka's min.insync.replicas: acks=all is refused, before anything is appended, while
        // fewer replicas are in sync than the topic asks.
        part.error = error::kNotEnoughReplicas;
        part.error_message = std::to_string(view.isr_size) + " replica(s) in sync; the topic's min.insync.replicas is " +
                             std::to_string(state->config.min_insync_replicas);
      } else {
        part.state = state;
        part.batch = *records;
        PartitionState& ps = *state->partitions[static_cast<std::size_t>(part.partition)];
        if (cluster_ != nullptr && ps.leader_epoch != view.leader_epoch) {
          // Led anew: other leaders may have taken batches since, so producer state is learned again.
          producer_ids_ -= std::min(producer_ids_, ps.producers.size());
          ps.producers.clear();
          ps.producers_learned = false;
          ps.leader_epoch = view.leader_epoch;
        }
      }
      parked->produce.push_back(std::move(part));
    }
    in.tagged_fields(flex);
  }
  in.tagged_fields(flex);
  if (!in.ok()) return {};
  if (parked->acks != 0 && parked->acks != 1 && parked->acks != -1) {
    for (auto& part : parked->produce) part.error = error::kInvalidRequiredAcks;
  } else if (transactional_id) {
    for (auto& part : parked->produce) {
      part.error = error::kInvalidTxnState;
      part.error_message = "weft does not support transactions";
    }
  }
  bool appended = false;
  for (auto& part : parked->produce)
    if (part.error == 0 && part.state) {
      append(part);
      appended = appended || part.appended;
    }
  if (appended && cluster_ != nullptr) {
    // The followers get the records now, and the replication thread writes the leader's own log
    // after pushing them: acks=all waits for no pass of the node's (a hand-off to one more
    // thread per record). acks=1 waits for the log alone, which the next pass writes now.
    cluster_->records_committed();
    if (parked->acks != -1) node_.hurry();
  }
  parked->deadline_ns = r.arrived_ns + std::int64_t{std::max(timeout_ms, 0)} * 1'000'000;
  // acks=0 gets no response at all, as in Kafka; a batch waiting for ring space is still
  // appended when space comes (parked like any produce), not dropped.
  Outcome out = resume(*parked, r.arrived_ns);
  if (out.kind == Outcome::Kind::kParked) out.parked = std::move(parked);
  return out;
}

Result<void> Broker::check_compressed_records(const BatchView& batch) {
  Result<void> inflated = decompressor_.decompress(batch.compression(), batch.bytes().subspan(kBatchHeaderBytes), inflated_);
  if (inflated.ok()) {
    RecordReader reader(batch, inflated_);
    RecordView record;
    std::int32_t count = 0;
    while (reader.next(record)) ++count;
    if (reader.failed()) inflated = reader.error();
    else if (count != batch.record_count())
      inflated = Error{Errc::kCorrupt, "the batch holds " + std::to_string(count) + " records; its header says " + std::to_string(batch.record_count())};
  }
  // A bomb's worth of buffer is not kept for the small batches after it.
  if (inflated_.capacity() > (std::size_t{4} << 20)) std::vector<std::byte>().swap(inflated_);
  return inflated;
}

void Broker::append(Parked::ProducePart& part) {
  PartitionState& p = *part.state->partitions[static_cast<std::size_t>(part.partition)];
  const std::span<const std::byte> bytes = part.batch;
  if (!part.validated) {
    // One RecordBatch v2, whole, as Kafka requires of Produce v3+.
    if (bytes.size() < kBatchHeaderBytes || bytes[batch_field::kMagic] != std::byte{kBatchMagicV2}) {
      part.error = bytes.size() > batch_field::kMagic && bytes[batch_field::kMagic] != std::byte{kBatchMagicV2} ? error::kUnsupportedForMessageFormat
                                                                                                              : error::kCorruptMessage;
      part.error_message = "not a RecordBatch v2";
      return;
    }
    const std::int64_t batch_length = wire::load_be32(bytes.data() + batch_field::kBatchLength);
    if (batch_length + static_cast<std::int64_t>(kBatchLogOverhead) != static_cast<std::int64_t>(bytes.size())) {
      part.error = error::kInvalidRecord;
      part.error_message = "the records must be exactly one batch";
      return;
    }
    // The CRC once, and every record; a compressed batch's records once inflated, as Kafka's
    // validator does: a batch no consumer could decode is refused here, never stored.
    Result<BatchView> batch = BatchView::parse_header(bytes, false);
    if (batch.ok()) batch = batch->compression() == Compression::kNone ? BatchView::parse(bytes) : BatchView::parse_header(bytes, true);
    if (batch.ok() && batch->compression() != Compression::kNone) {
      if (Result<void> inflated = check_compressed_records(*batch); !inflated.ok()) batch = std::move(inflated).error();
    }
    if (!batch.ok()) {
      part.error = error::kCorruptMessage;
      part.error_message = batch.error().message;
      return;
    }
    part.records = batch->record_count();
    if (part.records <= 0 || batch->last_offset_delta() != part.records - 1) {
      part.error = error::kInvalidRecord;
      part.error_message = "record count and last offset delta disagree";
      return;
    }
    if ((batch->attributes() & (batch_attr::kTransactional | batch_attr::kControl)) != 0) {
      part.error = error::kInvalidTxnState;
      part.error_message = "weft does not support transactions";
      return;
    }
    if (bytes.size() > p.memory.ring.max_batch_bytes()) {
      part.error = error::kMessageTooLarge;
      part.error_message = "batch of " + std::to_string(bytes.size()) + " bytes; the topic takes at most " + std::to_string(p.memory.ring.max_batch_bytes());
      return;
    }
    part.validated = true;
  }
  const std::int32_t records = part.records;
  // Idempotence: duplicates get the offset they had, gaps are refused (Kafka's rules).
  const std::int64_t producer_id = wire::load_be64(bytes.data() + batch_field::kProducerId);
  const std::int16_t epoch = wire::load_be16(bytes.data() + batch_field::kProducerEpoch);
  ProducerSequences* sequences = nullptr;
  const std::int32_t first_sequence = wire::load_be32(bytes.data() + batch_field::kBaseSequence);
  const std::int32_t last_sequence = first_sequence < 0 ? -1 : static_cast<std::int32_t>((std::int64_t{first_sequence} + records - 1) % (std::int64_t{INT32_MAX} + 1));
  if (producer_id >= 0 && first_sequence >= 0) {
    if (!p.producers_learned) learn_producers(p);
    sequences = &producer_state(p, producer_id);
    if (sequences->epoch >= 0 && epoch < sequences->epoch) {
      part.error = error::kInvalidProducerEpoch;
      part.error_message = "producer epoch " + std::to_string(epoch) + " is older than " + std::to_string(sequences->epoch);
      return;
    }
    if (sequences->epoch >= 0 && epoch == sequences->epoch && !sequences->empty()) {
      for (std::size_t age = 0; age < sequences->count; ++age) {
        const ProducerSequences::Appended& a = sequences->at(age);
        if (a.first_sequence == first_sequence && a.last_sequence == last_sequence) {
          part.appended = true;  // a retry of a batch already appended: its offset, no error
          part.base_offset = a.base_offset;
          part.end_offset = a.base_offset + records;
          return;
        }
      }
      if (first_sequence != next_sequence(sequences->back().last_sequence)) {
        part.error = error::kOutOfOrderSequenceNumber;
        part.error_message = "expected sequence " + std::to_string(next_sequence(sequences->back().last_sequence)) + ", got " + std::to_string(first_sequence);
        return;
      }
    } else if (sequences->epoch >= 0 && epoch > sequences->epoch && first_sequence != 0) {
      part.error = error::kOutOfOrderSequenceNumber;
      part.error_message = "a new producer epoch must start at sequence 0";
      return;
    }
    // An unknown producer (its state was never here, or this node restarted) starts where it says.
  }
  // A fenced ring: the client asks Metadata for the leader, unless the ring is a deleted topic's,
  // retired with kNotFound on its log line (a batch that waited for ring space across the delete
  // lands here too): that topic is unknown now, not led elsewhere.
  const auto fenced = [&](std::string why) {
    const bool deleted = read_log_progress(p.memory.ring).error == Errc::kNotFound;
    part.error = deleted ? error::kUnknownTopicOrPartition : error::kNotLeaderOrFollower;
    part.error_message = deleted ? "the topic was deleted" : std::move(why);
  };
  if (!p.producer) {
    Result<Producer> producer = Producer::attach(p.memory.ring, ProducerMode::kShared);
    if (!producer.ok()) {
      const std::int32_t fence = leader_epoch(p.memory.ring);
      if (fence == ring_layout::kFollowing || fence == ring_layout::kRetired) {
        fenced(producer.error().message);
      } else {
        part.error = error::kKafkaStorageError;
        part.error_message = producer.error().message;
      }
      return;
    }
    p.producer.emplace(std::move(*producer));
  }
  Claim claim;
  const ClaimStatus status = p.producer->try_claim(bytes.size(), static_cast<std::uint32_t>(records), claim);
  if (status == ClaimStatus::kBackPressured) return;  // tried again from resume()
  if (status == ClaimStatus::kFenced) {
    p.producer.reset();  // leadership moved since it attached (or the topic went)
    fenced("leadership of the partition moved");
    return;
  }
  if (status != ClaimStatus::kOk) {
    part.error = status == ClaimStatus::kTooLarge ? error::kMessageTooLarge : error::kInvalidRecord;
    return;
  }
  std::memcpy(claim.batch.data(), bytes.data(), bytes.size());
  // The epoch Metadata reports for a single node (outside the CRC); a replicated partition's ring
  // stamps its leader epoch at commit instead.
  stamp_partition_leader_epoch(claim.batch, 0);
  if (p.producer->commit(claim) != CommitStatus::kOk) {
    part.error = error::kCorruptMessage;
    return;
  }
  part.appended = true;
  part.base_offset = claim.base_offset;
  part.end_offset = claim.base_offset + records;
  records_in_ += static_cast<std::uint64_t>(records);
  if (sequences != nullptr) {
    // A new epoch's sequences start again at 0: the old epoch's batches are no duplicates of them.
    if (epoch != sequences->epoch) sequences->clear();
    sequences->epoch = epoch;
    sequences->push({first_sequence, last_sequence, claim.base_offset});
  }
}

void Broker::learn_producers(PartitionState& p) {
  p.producers_learned = true;
  Result<Consumer> walker = Consumer::attach(p.memory.ring, StartAt::kEarliest);
  if (!walker.ok()) return;
  RingBatch batch;
  // Bounded by what the ring holds; a walk overtaken by producers keeps what it found. Once per
  // partition and leadership: a new producer id after it costs no walk of its own.
  for (int i = 0; i < 1'000'000 && walker->poll(batch) == PollStatus::kOk; ++i) {
    const std::byte* header = batch.bytes.data();
    if (batch.bytes.size() < kBatchHeaderBytes) continue;
    const std::int64_t producer_id = wire::load_be64(header + batch_field::kProducerId);
    const std::int16_t epoch = wire::load_be16(header + batch_field::kProducerEpoch);
    const std::int32_t first = wire::load_be32(header + batch_field::kBaseSequence);
    const std::int32_t delta = wire::load_be32(header + batch_field::kLastOffsetDelta);
    if (producer_id < 0 || first < 0 || delta < 0 || !walker->validate(batch)) continue;
    ProducerSequences& sequences = producer_state(p, producer_id);
    if (epoch < sequences.epoch) continue;
    if (epoch > sequences.epoch) sequences.clear();
    sequences.epoch = epoch;
    sequences.push({first, static_cast<std::int32_t>((std::int64_t{first} + delta) % (std::int64_t{INT32_MAX} + 1)), batch.base_offset});
  }
}

ProducerSequences& Broker::producer_state(PartitionState& p, std::int64_t producer_id) {
  auto [it, made] = p.producers.try_emplace(producer_id);
  it->second.last_use = ++producer_use_clock_;
  it->second.last_used_ms = now_ms();
  if (made && ++producer_ids_ > options_.max_producer_ids) {
    // Down to seven eighths at once, so the walk over every state comes once per cap/8 new ids.
    trim_producers(it->second.last_used_ms, options_.max_producer_ids - options_.max_producer_ids / 8);
  }
  return it->second;  // the newest use: never the one evicted (the cap is at least 1)
}

void Broker::trim_producers(std::int64_t now, std::optional<std::size_t> to_keep) {
  const std::int64_t expired_before = now - options_.producer_id_expiration_ms;
  std::vector<std::uint64_t> uses;
  std::size_t held = 0;
  for (auto& [name, t] : topics_)
    for (auto& p : t->partitions) {
      std::erase_if(p->producers, [&](const auto& entry) { return entry.second.last_used_ms < expired_before; });
      held += p->producers.size();
      if (to_keep)
        for (const auto& entry : p->producers) uses.push_back(entry.second.last_use);
    }
  if (to_keep && held > *to_keep) {
    // Uses are unique (one clock): everything older than the cut goes, and `to_keep` stay.
    const auto cut = uses.begin() + static_cast<std::ptrdiff_t>(held - *to_keep);
    std::nth_element(uses.begin(), cut, uses.end());
    const std::uint64_t oldest_kept = *cut;
    for (auto& [name, t] : topics_)
      for (auto& p : t->partitions) {
        const std::size_t evicted = std::erase_if(p->producers, [&](const auto& entry) { return entry.second.last_use < oldest_kept; });
        held -= evicted;
        producer_ids_evicted_ += evicted;
      }
  }
  producer_ids_ = held;
}

bool Broker::produce_done(Parked& parked, std::int64_t now_ns) {
  bool done = true;
  for (auto& part : parked.produce) {
    if (part.error != 0 || !part.state) continue;
    if (!part.appended) append(part);
    if (part.error != 0) continue;
    if (!part.appended) {
      done = false;  // no ring space yet
      continue;
    }
    if (parked.acks == 0) continue;  // in the ring is all acks=0 waits for
    if (cluster_ != nullptr && parked.acks == -1) {
      // acks=all in a cluster: the in-sync set holds it once the high watermark passes it.
      PartitionView view;
      part.error = leader_error(part.topic, part.partition, &view);
      part.waiting_for_replicas = part.error == error::kNone && view.high_watermark < part.end_offset;
      if (part.error != error::kNone) part.error_message = "leadership moved while the batch waited for the in-sync replicas";
      if (part.error == error::kNone && !part.waiting_for_replicas && view.isr_size < part.state->config.min_insync_replicas) {
        // In the log of every replica in sync, but the set shrank below the topic's minimum
        // meanwhile: Kafka's answer, which the producer retries.
        part.error = error::kNotEnoughReplicasAfterAppend;
        part.error_message = "the in-sync set shrank to " + std::to_string(view.isr_size) + " below min.insync.replicas while the batch waited";
      }
      if (part.waiting_for_replicas) done = false;
      continue;
    }
    const Ring& ring = part.state->partitions[static_cast<std::size_t>(part.partition)]->memory.ring;
    const LogProgress progress = read_log_progress(ring);
    bool acknowledged = progress.written.value == ring_layout::kNoLog || (parked.acks == -1 ? progress.durable : progress.written) >= part.end_offset;
    if (!acknowledged && progress.error == Errc::kNotFound) {
      part.error = error::kUnknownTopicOrPartition;  // deleted while the batch waited
      part.error_message = "the topic was deleted before the batch reached its log";
      acknowledged = true;
    } else if (!acknowledged && progress.error != Errc::kOk) {
      part.error = error::kKafkaStorageError;
      part.error_message = std::string("the partition's log takes no writes: ") + std::string(errc_name(progress.error));
      acknowledged = true;
    }
    if (acknowledged) {
      if (part.waiting_for_log) remove_log_waiter(ring);
      part.waiting_for_log = false;
      continue;
    }
    if (!part.waiting_for_log) {
      add_log_waiter(ring);
      node_.hurry();  // the node's next pass writes the log now; its pass event wakes the loop
    }
    part.waiting_for_log = true;
    done = false;
  }
  if (!done && now_ns >= parked.deadline_ns) {
    for (auto& part : parked.produce) {
      if (part.waiting_for_log) remove_log_waiter(part.state->partitions[static_cast<std::size_t>(part.partition)]->memory.ring);
      if (part.error == 0 && (!part.appended || part.waiting_for_log || part.waiting_for_replicas)) part.error = error::kRequestTimedOut;
      part.waiting_for_log = false;
      part.waiting_for_replicas = false;
    }
    return true;
  }
  return done;
}

std::vector<OutChunk> Broker::produce_response(Parked& parked) {
  const std::int16_t v = parked.header.api_version;
  const bool flex = parked.header.flexible;
  Frame f(parked.header);
  Writer& w = f.w;
  // Group the partitions by topic, in request order.
  std::vector<std::pair<std::string, std::vector<const Parked::ProducePart*>>> by_topic;
  for (const auto& part : parked.produce) {
    if (by_topic.empty() || by_topic.back().first != part.topic) by_topic.push_back({part.topic, {}});
    by_topic.back().second.push_back(&part);
  }
  w.array(by_topic.size(), flex);
  for (const auto& [name, parts] : by_topic) {
    w.string(name, flex);
    w.array(parts.size(), flex);
    for (const Parked::ProducePart* part : parts) {
      w.i32(part->partition);
      w.i16(part->error);
      w.i64(part->error == 0 ? part->base_offset.value : -1);
      if (v >= 2) w.i64(-1);  // log append time: -1 for CreateTime topics
      if (v >= 5) w.i64(part->state && part->error == 0 ? log_start(*part->state, static_cast<std::uint32_t>(part->partition)).value : -1);
      if (v >= 8) {
        w.array(0, flex);
        w.nullable_string(part->error_message.empty() ? std::nullopt : std::optional<std::string_view>(part->error_message), flex);
      }
      w.tagged_fields(flex);
      if (part->error != 0)
        log(LogLevel::kDebug, "kafka: produce refused", {{"topic", name}, {"partition", std::to_string(part->partition)}, {"error", std::to_string(part->error)}, {"why", part->error_message}});
    }
    w.tagged_fields(flex);
  }
  if (v >= 1) w.i32(0);  // throttle
  w.tagged_fields(flex);
  return f.finish();
}

// ---- Fetch ----------------------------------------------------------------------------------

Outcome Broker::fetch(const Request& r, Reader& in) {
  const std::int16_t v = r.header.api_version;
  const bool flex = r.header.flexible;
  auto parked = std::make_unique<Parked>();
  parked->kind = Parked::Kind::kFetch;
  parked->header = r.header;
  parked->arrived_ns = r.arrived_ns;
  (void)in.i32();  // replica id: -1 for consumers
  const std::int32_t max_wait_ms = in.i32();
  parked->min_bytes = in.i32();
  // Kafka's fetch.max.bytes: a response holds at most this much, whatever the client asks.
  parked->max_bytes = std::min(v >= 3 ? in.i32() : INT32_MAX, kMaxFetchResponseBytes);
  if (v >= 4) (void)in.i8();  // isolation level: no transactions, so read_committed reads the same
  if (v >= 7) {
    (void)in.i32();  // session id: sessions are not kept; answering 0 makes clients send full fetches
    (void)in.i32();
  }
  // A partition named twice is fetched once, with the last entry's fields at the first one's
  // place, as Kafka's map of them does (each entry read again would copy the ring again).
  std::map<std::pair<std::string_view, std::int32_t>, std::pair<std::size_t, std::size_t>> seen;
  const std::int32_t topics = in.array(flex, false, 2);
  for (std::int32_t t = 0; t < topics && in.ok(); ++t) {
    const std::string_view name = in.string(flex);
    parked->fetch.push_back({std::string(name), {}});
    const std::int32_t partitions = in.array(flex, false, 16);
    for (std::int32_t p = 0; p < partitions && in.ok(); ++p) {
      Parked::FetchPart part;
      part.topic = std::string(name);
      part.partition = in.i32();
      if (v >= 9) (void)in.i32();
      part.offset = in.i64();
      if (v >= 12) (void)in.i32();
      if (v >= 5) (void)in.i64();
      part.max_bytes = in.i32();
      in.tagged_fields(flex);
      const std::pair<std::size_t, std::size_t> at{parked->fetch.size() - 1, parked->fetch.back().second.size()};
      if (const auto [it, added] = seen.try_emplace({name, part.partition}, at); !added) {
        Parked::FetchPart& first = parked->fetch[it->second.first].second[it->second.second];
        first.offset = part.offset;
        first.max_bytes = part.max_bytes;
      } else {
        parked->fetch.back().second.push_back(std::move(part));
      }
    }
    in.tagged_fields(flex);
  }
  std::erase_if(parked->fetch, [](const auto& topic) { return topic.second.empty(); });  // as the map leaves them
  if (v >= 7) {
    const std::int32_t forgotten = in.array(flex, false, 2);
    for (std::int32_t i = 0; i < forgotten && in.ok(); ++i) {
      (void)in.string(flex);
      const std::int32_t n = in.array(flex, false, 4);
      for (std::int32_t j = 0; j < n && in.ok(); ++j) (void)in.i32();
      in.tagged_fields(flex);
    }
  }
  if (v >= 11) (void)in.string(flex);
  in.tagged_fields(flex);
  if (!in.ok()) return {};
  parked->deadline_ns = r.arrived_ns + std::int64_t{std::clamp(max_wait_ms, 0, 300'000)} * 1'000'000;
  Outcome out = resume(*parked, r.arrived_ns);
  if (out.kind == Outcome::Kind::kParked) out.parked = std::move(parked);
  return out;
}

Broker::PartitionRead Broker::read_partition(TopicState& t, std::uint32_t partition, std::int64_t offset, std::size_t max_bytes, bool first,
                                             std::optional<Offset> visible) {
  PartitionRead read;
  PartitionState& p = *t.partitions[partition];
  const Ring& ring = p.memory.ring;
  const Offset end = ring.claimed_offset();
  // A cluster serves up to its high watermark only: what every in-sync replica holds.
  const Offset limit = visible ? std::min(*visible, end) : end;
  read.high_watermark = limit;
  read.log_start = t.has_log ? log_start(t, partition) : ring.reuse_limit().offset;
  if (offset > end.value || offset < 0) {
    read.error = error::kOffsetOutOfRange;
    read.settled = true;
    return read;
  }
  // A limit of 0 still gives the first batch of the response whole (KIP-74), as Kafka does.
  if (offset >= limit.value || (max_bytes == 0 && !first)) {
    read.settled = true;
    return read;
  }
  const Offset ring_start = ring.reuse_limit().offset;
  if (offset >= ring_start.value) {
    // From the ring: the tail reader continues where the last fetch stopped, or seeks.
    if (!p.reader) {
      Result<Consumer> reader = Consumer::attach(ring, StartAt::kLatest);
      if (reader.ok()) p.reader.emplace(std::move(*reader));
    }
    if (p.reader) {
      p.reader_used_ms = now_ms();
      bool positioned = p.reader->next_offset().value == offset;
      if (!positioned) positioned = p.reader->seek(Offset{offset}).ok();
      if (positioned) {
        RingBatch batch;
        bool torn = false;
        for (int i = 0; i < 100'000; ++i) {
          const PollStatus status = p.reader->poll(batch);
          if (status != PollStatus::kOk) {
            if (status == PollStatus::kLapped) torn = true;
            // Nothing more committed: settled if it read up to what was claimed when it began.
            read.settled = status == PollStatus::kEmpty && p.reader->next_offset() >= end;
            break;
          }
          // A batch not taken is given back: the next fetch starts at it. (A seek would walk from
          // the ring's reuse limit, and a parked fetch looks again on every listener wake-up.)
          if (batch.base_offset.value + batch.records > limit.value) {
            p.reader->unread(batch);  // reaches the high watermark: a later fetch
            read.settled = true;
            break;
          }
          if (!read.bytes.empty() && read.bytes.size() + batch.bytes.size() > max_bytes) {
            p.reader->unread(batch);
            read.settled = true;  // as full as its limit lets it be
            break;
          }
          if (read.bytes.empty() && batch.bytes.size() > max_bytes && !first) {
            p.reader->unread(batch);
            read.settled = true;
            break;
          }
          if (!read.first_batch) read.first_batch = batch;
          read.bytes.append(reinterpret_cast<const char*>(batch.bytes.data()), batch.bytes.size());
          if (!p.reader->validate(batch)) {
            torn = true;
            break;
          }
          if (read.bytes.size() >= max_bytes) {
            read.settled = true;
            break;
          }
        }
        if (!torn) {
          // Batches committed while this fetch read are in the answer: the high watermark covers them.
          if (!visible && p.reader->next_offset() > read.high_watermark) read.high_watermark = p.reader->next_offset();
          return read;
        }
        // Producers overwrote what was read: serve it from the log instead.
        read.bytes.clear();
        read.first_batch.reset();
        p.reader.reset();
      }
    }
  }
  if (!t.has_log) {
    read.error = error::kOffsetOutOfRange;  // lapped: the ring no longer holds it and there is no log
    return read;
  }
  // The log may hold batches past the high watermark: the slice stops before the first of them.
  Result<LogSlice> slice = node_.open_log_slice(t.name, partition, Offset{offset}, visible ? limit : kLogEnd);
  if (!slice.ok()) {
    read.error = slice.error().code == Errc::kOutOfRange ? error::kOffsetOutOfRange : error::kKafkaStorageError;
    if (read.error == error::kKafkaStorageError)
      log(LogLevel::kWarn, "kafka: reading a log failed", {{"topic", t.name}, {"partition", std::to_string(partition)}, {"error", slice.error().message}});
    return read;
  }
  if (slice->end <= slice->position) return read;
  const std::uint64_t slice_end = slice->end;
  std::size_t length = static_cast<std::size_t>(std::min<std::uint64_t>(slice_end - slice->position, max_bytes));
  // The first batch goes whole even past the limits (KIP-74), so a large batch never stalls.
  std::byte header[kBatchLogOverhead];
  if (::pread(slice->file.get(), header, sizeof header, static_cast<off_t>(slice->position)) == static_cast<ssize_t>(sizeof header)) {
    const std::uint64_t first_batch = static_cast<std::uint32_t>(wire::load_be32(header + batch_field::kBatchLength)) + std::uint64_t{kBatchLogOverhead};
    if (first_batch > length && first_batch <= slice_end - slice->position) {
      if (!first) return read;
      length = static_cast<std::size_t>(first_batch);
    }
  }
  // Read-ahead is the listener's, when it sends the region: a parked fetch reads again on every
  // look and may never be sent.
  read.file = std::make_shared<UniqueFd>(std::move(slice->file));
  read.file_offset = slice->position;
  read.file_bytes = length;
  read.file_readable_end = slice->end;
  return read;
}

std::uint64_t Broker::fetch_progress(const Parked& parked) {
  std::uint64_t sum = 0;
  auto mix = [&sum](std::uint64_t v) { sum = (sum ^ v) * 0x9E3779B97F4A7C15ull + 1; };
  for (const auto& [name, parts] : parked.fetch) {
    std::shared_ptr<TopicState> state = topic(name);
    mix(reinterpret_cast<std::uintptr_t>(state.get()));
    for (const Parked::FetchPart& part : parts) {
      if (cluster_ != nullptr) {
        PartitionView view;
        mix(static_cast<std::uint64_t>(leader_error(name, part.partition, &view)));
        mix(static_cast<std::uint64_t>(view.high_watermark.value));
      }
      if (state && part.partition >= 0 && static_cast<std::size_t>(part.partition) < state->partitions.size())
        mix(static_cast<std::uint64_t>(state->partitions[static_cast<std::size_t>(part.partition)]->memory.ring.claimed_offset().value));
    }
  }
  return sum;
}

std::optional<std::vector<OutChunk>> Broker::fetch_response(Parked& parked, bool force, std::int16_t& first_error) {
  const std::int16_t v = parked.header.api_version;
  const bool flex = parked.header.flexible;
  struct Read {
    std::int32_t partition;
    PartitionRead read;
  };
  std::vector<std::vector<Read>> reads(parked.fetch.size());
  std::size_t budget = static_cast<std::size_t>(std::max(parked.max_bytes, 0));
  std::size_t total = 0;
  bool any_error = false;
  bool all_settled = true;
  // Taken before the reads: whatever is claimed after it moves it.
  const std::uint64_t progress = force ? 0 : fetch_progress(parked);
  for (std::size_t t = 0; t < parked.fetch.size(); ++t) {
    const auto& [name, parts] = parked.fetch[t];
    std::shared_ptr<TopicState> state = topic(name);
    for (const Parked::FetchPart& part : parts) {
      Read r{part.partition, {}};
      std::optional<Offset> visible;
      if (cluster_ != nullptr) {
        PartitionView view;
        r.read.error = leader_error(name, part.partition, &view);
        visible = view.high_watermark;
      }
      if (r.read.error != error::kNone) {
        // Not served here: the client asks Metadata again and goes to the leader.
      } else if (!state || part.partition < 0 || static_cast<std::size_t>(part.partition) >= state->partitions.size()) {
        r.read.error = cluster_ != nullptr ? error::kLeaderNotAvailable : error::kUnknownTopicOrPartition;
      } else {
        const std::size_t limit = std::min(budget, static_cast<std::size_t>(std::max(part.max_bytes, 0)));
        r.read = read_partition(*state, static_cast<std::uint32_t>(part.partition), part.offset, limit, total == 0, visible);
        budget -= std::min(budget, r.read.size());
        total += r.read.size();
      }
      if (r.read.error != 0) {
        any_error = true;
        if (first_error == 0) first_error = r.read.error;
      }
      all_settled = all_settled && (r.read.settled || r.read.error != 0);
      reads[t].push_back(std::move(r));
    }
  }
  // As Kafka: a fetch of no partitions, or with min_bytes 0, is answered at once.
  const bool enough = parked.fetch.empty() || total >= static_cast<std::size_t>(std::max(parked.min_bytes, 0));
  if (!force && !any_error && !enough) {
    if (all_settled) parked.fetch_progress_seen = progress;
    else parked.fetch_progress_seen.reset();
    // Not enough yet: give back what the readers took, so the next look starts at the same place.
    for (std::size_t t = 0; t < parked.fetch.size(); ++t) {
      if (total == 0) break;
      std::shared_ptr<TopicState> state = topic(parked.fetch[t].first);
      for (std::size_t i = 0; state && i < reads[t].size(); ++i) {
        const auto& part = parked.fetch[t].second[i];
        // Only the ring's reads are given back (a segment file's are not read yet).
        if (!reads[t][i].read.first_batch) continue;
        PartitionState& p = *state->partitions[static_cast<std::size_t>(part.partition)];
        if (p.reader) p.reader->unread(*reads[t][i].read.first_batch);
      }
    }
    return std::nullopt;
  }
  Frame f(parked.header);
  Writer& w = f.w;
  w.i32(0);  // throttle
  if (v >= 7) {
    w.i16(0);
    w.i32(0);  // session id: none
  }
  w.array(parked.fetch.size(), flex);
  for (std::size_t t = 0; t < parked.fetch.size(); ++t) {
    w.string(parked.fetch[t].first, flex);
    w.array(reads[t].size(), flex);
    for (Read& r : reads[t]) {
      w.i32(r.partition);
      w.i16(r.read.error);
      w.i64(r.read.high_watermark.value);
      w.i64(r.read.high_watermark.value);  // last stable offset: no transactions
      if (v >= 5) w.i64(r.read.log_start.value);
      w.null_array(flex);  // aborted transactions: none
      if (v >= 11) w.i32(-1);
      w.records_length(r.read.size(), flex);
      if (r.read.file) f.file_region(std::move(r.read.file), r.read.file_offset, r.read.file_bytes, r.read.file_readable_end);
      else w.raw(r.read.bytes);
      w.tagged_fields(flex);
    }
    w.tagged_fields(flex);
  }
  w.tagged_fields(flex);
  return f.finish();
}

// ---- Parked requests ------------------------------------------------------------------------

Outcome Broker::resume(Parked& parked, std::int64_t now_ns) {
  Outcome out;
  switch (parked.kind) {
    case Parked::Kind::kProduce:
      if (!produce_done(parked, now_ns)) {
        out.kind = Outcome::Kind::kParked;
        return out;
      }
      if (parked.acks == 0) {
        // Kafka closes the connection of an acks=0 producer whose batch failed: the client hears
        // of it no other way, and asks Metadata again (a moved leader) when it reconnects.
        for (const auto& part : parked.produce)
          if (part.error != 0) {
            out.kind = Outcome::Kind::kClose;
            out.close_reason = "an acks=0 batch for " + part.topic + "-" + std::to_string(part.partition) +
                               " was refused (error " + std::to_string(part.error) + ")";
            return out;
          }
        out.kind = Outcome::Kind::kNoResponse;
        return out;
      }
      out.response = produce_response(parked);
      for (const auto& part : parked.produce)
        if (part.error != 0) {
          out.error = part.error;
          break;
        }
      return out;
    case Parked::Kind::kFetch: {
      const bool expired = now_ns >= parked.deadline_ns;
      // Nothing claimed and no high watermark moved since a look that read all there was: the
      // same look again would find the same (and copy it again, every listener pass).
      if (!expired && parked.fetch_progress_seen && fetch_progress(parked) == *parked.fetch_progress_seen) {
        out.kind = Outcome::Kind::kParked;
        return out;
      }
      std::optional<std::vector<OutChunk>> response = fetch_response(parked, expired, out.error);
      if (!response) {
        out.kind = Outcome::Kind::kParked;
        return out;
      }
      out.response = std::move(*response);
      return out;
    }
    case Parked::Kind::kCommit:
      if (!parked.commit->done.load(std::memory_order_acquire)) {  // acquire: pairs with the committer's release
        out.kind = Outcome::Kind::kParked;
        return out;
      }
      out.response = offset_commit_response(parked.header, *parked.commit, out.error);
      return out;
    case Parked::Kind::kDeferred:
      if (!parked.deferred->done.load(std::memory_order_acquire)) {  // acquire: pairs with the worker's release
        out.kind = Outcome::Kind::kParked;
        return out;
      }
      out.response = parked.deferred->respond(out.error);
      return out;
    case Parked::Kind::kGroup:
      if (!parked.group_reply || !*parked.group_reply) {
        out.kind = Outcome::Kind::kParked;
        return out;
      }
      out.response = std::move(**parked.group_reply);
      return out;
  }
  return out;
}

bool Broker::needs_frame(Parked& parked) const noexcept {
  if (parked.kind != Parked::Kind::kProduce) return true;
  for (Parked::ProducePart& part : parked.produce) {
    if (part.error == 0 && part.state && !part.appended) return true;
    part.batch = {};  // appended or refused: never read again
  }
  return false;
}

void Broker::abandon(Parked& parked) {
  for (auto& part : parked.produce) {
    if (part.waiting_for_log) remove_log_waiter(part.state->partitions[static_cast<std::size_t>(part.partition)]->memory.ring);
    part.waiting_for_log = false;
  }
  // A group join or sync completes later into a reply nobody reads; the member's session then
  // expires as Kafka's would.
}

// ---- ListOffsets ----------------------------------------------------------------------------

Outcome Broker::list_offsets(const Request& r, Reader& in) {
  const std::int16_t v = r.header.api_version;
  const bool flex = r.header.flexible;
  (void)in.i32();           // replica id
  if (v >= 2) (void)in.i8();  // isolation level
  struct Part {
    std::int32_t partition;
    std::int16_t error = 0;
    std::int64_t timestamp = -1;
    std::int64_t offset = -1;
    std::int32_t leader_epoch = -1;  // unknown, as Kafka answers when it has none
  };
  std::vector<std::pair<std::string, std::vector<Part>>> topics;
  const std::int32_t n = in.array(flex, false, 2);
  for (std::int32_t t = 0; t < n && in.ok(); ++t) {
    const std::string_view name = in.string(flex);
    std::shared_ptr<TopicState> state = topic(name);
    topics.push_back({std::string(name), {}});
    const std::int32_t parts = in.array(flex, false, 12);
    for (std::int32_t i = 0; i < parts && in.ok(); ++i) {
      Part part{in.i32()};
      if (v >= 4) (void)in.i32();
      const std::int64_t timestamp = in.i64();
      in.tagged_fields(flex);
      if (!in.ok()) break;
      PartitionView view;
      if (cluster_ != nullptr) part.error = leader_error(name, part.partition, &view);
      if (part.error != error::kNone) {
        // Another node leads it (or none does yet): the client asks Metadata again.
      } else if (!state || part.partition < 0 || static_cast<std::size_t>(part.partition) >= state->partitions.size()) {
        part.error = cluster_ != nullptr ? error::kLeaderNotAvailable : error::kUnknownTopicOrPartition;
      } else {
        const auto p = static_cast<std::uint32_t>(part.partition);
        // A node alone leads every partition at epoch 0, as its Metadata says; a cluster's
        // earliest offset may lie in any earlier leader's epoch, which the broker does not know.
        const std::int32_t epoch_alone = cluster_ != nullptr ? -1 : 0;
        if (timestamp == -1) {
          // Latest: the high watermark in a cluster (what consumers may read), the ring's end alone.
          const Offset end = state->partitions[p]->memory.ring.claimed_offset();
          part.offset = (cluster_ != nullptr ? std::min(end, view.high_watermark) : end).value;
          part.leader_epoch = cluster_ != nullptr ? view.leader_epoch : 0;
        } else if (timestamp == -2) {
          part.offset = earliest(*state, p).value;
          part.leader_epoch = epoch_alone;
        } else if (timestamp < 0) {
          part.error = error::kInvalidTimestamp;  // -3 (max timestamp) and -4 come with v7 and v8
        } else {
          Result<TimedOffset> found = state->has_log ? node_.log_offset_for_timestamp(name, p, timestamp)
                                                     : Result<TimedOffset>(Error{Errc::kNotFound, "no log"});
          const Ring& ring = state->partitions[p]->memory.ring;
          const Offset written = read_log_progress(ring).written;
          // In a cluster what the log does not hold yet is past the high watermark: not answered.
          const bool ring_may_answer = cluster_ == nullptr || !state->has_log || written < view.high_watermark;
          if (!found.ok() && found.error().code == Errc::kNotFound && ring_may_answer) {
            // What the log does not hold yet (or a node without logs): the ring, from the log's
            // end. On the loop: one look at each batch header, a ring's worth at most.
            if (Result<Consumer> walker = Consumer::attach(ring, StartAt::kEarliest); walker.ok()) {
              if (state->has_log && written.value != ring_layout::kNoLog) (void)walker->seek(written);  // else from the oldest
              Result<std::optional<TimedOffset>> in_ring = find_in_ring_by_timestamp(*walker, timestamp, decompressor_, ring.capacity_bytes());
              if (in_ring.ok() && in_ring->has_value()) found = **in_ring;
            }
          }
          // A cluster answers only what consumers may read: a record past the high watermark is
          // not found yet (Kafka's lastFetchableOffset).
          if (found.ok() && (cluster_ == nullptr || found->offset < view.high_watermark)) {
            part.offset = found->offset.value;
            part.timestamp = found->timestamp_ms;  // the record's own, as Kafka answers
            part.leader_epoch = found->leader_epoch >= 0 ? found->leader_epoch : epoch_alone;  // its batch's
          } else if (!found.ok() && found.error().code != Errc::kNotFound) {
            part.error = error::kKafkaStorageError;
          }
        }
      }
      topics.back().second.push_back(part);
    }
    in.tagged_fields(flex);
  }
  in.tagged_fields(flex);
  if (!in.ok()) return {};
  Outcome out;
  Frame f(r.header);
  Writer& w = f.w;
  if (v >= 2) w.i32(0);
  w.array(topics.size(), flex);
  for (const auto& [name, parts] : topics) {
    w.string(name, flex);
    w.array(parts.size(), flex);
    for (const Part& part : parts) {
      w.i32(part.partition);
      w.i16(part.error);
      if (part.error != 0 && out.error == 0) out.error = part.error;
      w.i64(part.timestamp);
      w.i64(part.offset);
      if (v >= 4) w.i32(part.leader_epoch);
      w.tagged_fields(flex);
    }
    w.tagged_fields(flex);
  }
  w.tagged_fields(flex);
  out.response = f.finish();
  return out;
}

// ---- CreateTopics / DeleteTopics -------------------------------------------------------------

namespace {

// Kafka topic configs: the ones weft keeps under its own names, and the ones that describe what
// weft does anyway (accepted, nothing to store).
std::optional<std::string_view> weft_config_name(std::string_view kafka) {
  if (kafka == "retention.ms" || kafka == "retention.bytes" || kafka == "segment.bytes" || kafka == "segment.ms" || kafka == "min.insync.replicas")
    return kafka;
  if (kafka == "max.message.bytes") return std::string_view("max.batch.bytes");
  return std::nullopt;
}

bool accepted_as_is(std::string_view name, std::string_view value) {
  if (name == "cleanup.policy") return value == "delete";
  if (name == "compression.type") return value == "producer";
  if (name == "message.timestamp.type") return value == "CreateTime";
  return name == "unclean.leader.election.enable" || name == "message.downconversion.enable" ||
         name == "index.interval.bytes" || name == "segment.index.bytes" || name == "file.delete.delay.ms" ||
         name == "flush.messages" || name == "flush.ms" || name == "preallocate";
}

}  // namespace

Outcome Broker::create_topics(const Request& r, Reader& in) {
  const std::int16_t v = r.header.api_version;
  const bool flex = r.header.flexible;
  struct Entry {
    std::string name;
    std::int32_t partitions = -1;
    std::int16_t replication = -1;
    std::int16_t error = 0;
    std::string message;
    TopicConfig config;
    bool create = false;  // valid: the worker creates it
  };
  auto shared_entries = std::make_shared<std::vector<Entry>>();
  std::vector<Entry>& entries = *shared_entries;
  const std::int32_t n = in.array(flex, false, 2);
  for (std::int32_t i = 0; i < n && in.ok(); ++i) {
    Entry e;
    e.config = node_.options().default_topic;
    e.name = std::string(in.string(flex));
    e.partitions = in.i32();
    e.replication = in.i16();
    const std::int32_t assignments = in.array(flex, false, 4);
    for (std::int32_t a = 0; a < assignments && in.ok(); ++a) {
      (void)in.i32();
      const std::int32_t brokers = in.array(flex, false, 4);
      for (std::int32_t b = 0; b < brokers && in.ok(); ++b)
        if (const std::int32_t broker = in.i32(); (cluster_ != nullptr || broker != options_.node_id) && e.error == 0) {
          e.error = error::kInvalidReplicaAssignment;
          e.message = cluster_ != nullptr ? "weft's controller assigns replicas; leave the assignment out (weft partition reassign moves them)"
                                          : "this cluster has one broker, " + std::to_string(options_.node_id);
        }
      in.tagged_fields(flex);
    }
    if (assignments > 0 && e.partitions == -1) e.partitions = assignments;
    const std::int32_t configs = in.array(flex, false, 2);
    for (std::int32_t c = 0; c < configs && in.ok(); ++c) {
      const std::string_view key = in.string(flex);
      const std::optional<std::string_view> value = in.nullable_string(flex);
      in.tagged_fields(flex);
      if (!value || e.error != 0 || accepted_as_is(key, *value)) continue;
      const std::string_view ours = weft_config_name(key).value_or(key);
      if (ours == "partitions") continue;
      Result<void> set = set_topic_config(e.config, ours, *value);
      if (!set.ok()) {
        e.error = error::kInvalidConfig;
        e.message = set.error().message;
      }
    }
    in.tagged_fields(flex);
    entries.push_back(std::move(e));
  }
  (void)in.i32();  // timeout: the request waits until its topics are made, however long
  const bool validate_only = v >= 1 && in.boolean();
  in.tagged_fields(flex);
  if (!in.ok()) return {};

  for (Entry& e : entries) {
    if (e.error != 0) continue;
    if (!validate_topic_name(e.name).ok()) {
      e.error = error::kInvalidTopicException;
      e.message = validate_topic_name(e.name).error().message;
    } else if (e.partitions == 0 || e.partitions < -1) {
      e.error = error::kInvalidPartitions;
      e.message = "a topic needs at least one partition";
    } else if (cluster_ == nullptr && e.replication != -1 && e.replication != 1) {
      e.error = error::kInvalidReplicationFactor;
      e.message = "replication factor " + std::to_string(e.replication) + " needs that many brokers; this cluster has one";
    } else if (cluster_ != nullptr) {
      // The controller assigns the replicas; topics_ learns the topic when a replica lands here.
      if (e.replication == -1) e.replication = static_cast<std::int16_t>(std::max(options_.default_replication_factor, 1u));
      e.config.partitions = e.partitions == -1 ? options_.default_partitions : static_cast<std::uint32_t>(e.partitions);
      Result<void> valid = validate_topic_config(e.config);
      if (!valid.ok()) {
        e.error = error::kInvalidConfig;
        e.message = valid.error().message;
      } else if (e.replication < 1) {
        e.error = error::kInvalidReplicationFactor;
        e.message = "replication factor " + std::to_string(e.replication) + " is not at least 1";
      } else if (cluster_->topic(e.name)) {
        e.error = error::kTopicAlreadyExists;
        e.message = "topic '" + e.name + "' already exists";
      } else {
        e.create = !validate_only;
      }
    } else {
      e.config.partitions = e.partitions == -1 ? options_.default_partitions : static_cast<std::uint32_t>(e.partitions);
      Result<void> valid = validate_topic_config(e.config);
      if (!valid.ok()) {
        e.error = error::kInvalidConfig;
        e.message = valid.error().message;
      } else if (topic(e.name)) {
        e.error = error::kTopicAlreadyExists;
        e.message = "topic '" + e.name + "' already exists";
      } else {
        e.create = !validate_only;
      }
    }
  }

  auto respond = [this, header = owned_header(r), v, flex, shared_entries](std::int16_t& first_error) {
    Frame f(header);
    Writer& w = f.w;
    if (v >= 2) w.i32(0);
    w.array(shared_entries->size(), flex);
    for (const Entry& e : *shared_entries) {
      w.string(e.name, flex);
      if (v >= 7) w.uuid({});
      w.i16(e.error);
      if (e.error != 0 && first_error == 0) first_error = e.error;
      if (v >= 1) w.nullable_string(e.error != 0 ? std::optional<std::string_view>(e.message) : std::nullopt, flex);
      if (v >= 5) {
        w.i32(e.error == 0 ? static_cast<std::int32_t>(e.config.partitions) : -1);
        w.i16(e.error == 0 ? (cluster_ != nullptr ? e.replication : std::int16_t{1}) : std::int16_t{-1});
        w.array(0, flex);  // configs: DescribeConfigs lists them
      }
      w.tagged_fields(flex);
    }
    w.tagged_fields(flex);
    return f.finish();
  };
  const bool any = std::any_of(entries.begin(), entries.end(), [](const Entry& e) { return e.create; });
  // On the worker: node_ and cluster_ are safe from any thread; nothing else of the broker's is touched.
  return defer(r, Worker::kTopics, any, std::move(respond), [this, shared_entries] {
    for (Entry& e : *shared_entries) {
      if (!e.create) continue;
      if (cluster_ != nullptr) {
        Result<void> created = cluster_->create_topic(e.name, e.config.partitions, static_cast<std::uint32_t>(e.replication), e.config);
        if (!created.ok()) {
          // kFailedPrecondition: fewer live nodes than the factor (the store's count, not this
          // node's view of it, which trails a node that just joined).
          e.error = created.error().code == Errc::kAlreadyExists        ? error::kTopicAlreadyExists
                    : created.error().code == Errc::kFailedPrecondition ? error::kInvalidReplicationFactor
                    : created.error().code == Errc::kInvalidArgument    ? error::kInvalidConfig
                                                                        : error::kUnknownServerError;
          e.message = created.error().message;
        } else {
          log(LogLevel::kInfo, "kafka: cluster topic created",
              {{"topic", e.name}, {"partitions", std::to_string(e.config.partitions)}, {"replication", std::to_string(e.replication)}});
        }
        continue;
      }
      Result<TopicInfo> created = node_.create_topic(e.name, e.config);
      if (!created.ok()) {
        e.error = created.error().code == Errc::kAlreadyExists      ? error::kTopicAlreadyExists
                  : created.error().code == Errc::kInvalidArgument ? error::kInvalidConfig
                                                                    : error::kPolicyViolation;
        e.message = created.error().message;
      } else {
        log(LogLevel::kInfo, "kafka: topic created", {{"topic", e.name}, {"partitions", std::to_string(e.config.partitions)}});
      }
    }
  });
}

Outcome Broker::defer(const Request& r, Worker which, bool any_work, std::function<std::vector<OutChunk>(std::int16_t&)> respond,
                      std::function<void()> work) {
  if (!any_work) {
    Outcome out;
    out.response = respond(out.error);
    return out;
  }
  auto job = std::make_shared<DeferredJob>();
  job->respond = std::move(respond);
  job->work = std::move(work);
  return park_for(r, which, std::move(job));
}

Outcome Broker::delete_topics(const Request& r, Reader& in) {
  const std::int16_t v = r.header.api_version;
  const bool flex = r.header.flexible;
  struct Entry {
    std::optional<std::string> name;
    std::string id;
    std::int16_t error = 0;
    std::string message;
  };
  auto shared_entries = std::make_shared<std::vector<Entry>>();
  std::vector<Entry>& entries = *shared_entries;
  if (v >= 6) {
    const std::int32_t n = in.array(flex, false, 17);
    for (std::int32_t i = 0; i < n && in.ok(); ++i) {
      Entry e;
      if (const auto name = in.nullable_string(flex)) e.name = std::string(*name);
      e.id = std::string(in.uuid());
      in.tagged_fields(flex);
      entries.push_back(std::move(e));
    }
  } else {
    const std::int32_t n = in.array(flex, false, 2);
    for (std::int32_t i = 0; i < n && in.ok(); ++i) entries.push_back(Entry{std::string(in.string(flex)), {}, 0, {}});
  }
  (void)in.i32();  // timeout
  in.tagged_fields(flex);
  if (!in.ok()) return {};
  for (Entry& e : entries) {
    if (!e.name) e.error = error::kUnknownTopicId;  // weft names topics; it has no topic ids
  }
  auto respond = [this, header = owned_header(r), v, flex, shared_entries](std::int16_t& first_error) {
    Frame f(header);
    Writer& w = f.w;
    if (v >= 1) w.i32(0);
    w.array(shared_entries->size(), flex);
    for (const Entry& e : *shared_entries) {
      if (e.name && e.error == 0) topics_.erase(*e.name);  // on the listener's thread: its cache
      if (v >= 6) w.nullable_string(e.name ? std::optional<std::string_view>(*e.name) : std::nullopt, flex);
      else w.string(e.name.value_or(""), flex);
      if (v >= 6) w.uuid(e.id);
      w.i16(e.error);
      if (e.error != 0 && first_error == 0) first_error = e.error;
      if (v >= 5) w.nullable_string(e.error != 0 ? std::optional<std::string_view>(e.message) : std::nullopt, flex);
      w.tagged_fields(flex);
    }
    w.tagged_fields(flex);
    return f.finish();
  };
  const bool any = std::any_of(entries.begin(), entries.end(), [](const Entry& e) { return e.error == 0; });
  // On the worker (a deletion waits for the node's pass and removes files): node_ and cluster_ only.
  return defer(r, Worker::kTopics, any, std::move(respond), [this, shared_entries] {
    for (Entry& e : *shared_entries) {
      if (e.error != 0) continue;
      // In a cluster every replica's node deletes its copy when the controller drops the topic.
      Result<void> deleted = cluster_ != nullptr ? cluster_->delete_topic(*e.name) : node_.delete_topic(*e.name);
      if (!deleted.ok()) {
        e.error = deleted.error().code == Errc::kNotFound ? error::kUnknownTopicOrPartition : error::kUnknownServerError;
        e.message = deleted.error().message;
      } else {
        log(LogLevel::kInfo, "kafka: topic deleted", {{"topic", *e.name}});
      }
    }
  });
}

// ---- DescribeConfigs ------------------------------------------------------------------------

namespace {

struct ConfigEntry {
  std::string name;
  std::string value;
  bool is_default;
  std::int8_t type;  // ConfigType: 1 boolean, 2 string, 3 int, 5 long
};

constexpr std::int8_t kResourceTopic = 2;
constexpr std::int8_t kResourceBroker = 4;
constexpr std::int8_t kSourceDynamicTopic = 1;
constexpr std::int8_t kSourceStaticBroker = 4;
constexpr std::int8_t kSourceDefault = 5;

std::vector<ConfigEntry> topic_configs(const TopicConfig& c, const TopicConfig& defaults) {
  return {
      {"retention.ms", std::to_string(c.retention_ms), c.retention_ms == defaults.retention_ms, 5},
      {"retention.bytes", std::to_string(c.retention_bytes), c.retention_bytes == defaults.retention_bytes, 5},
      {"segment.bytes", std::to_string(c.segment_bytes), c.segment_bytes == defaults.segment_bytes, 3},
      {"segment.ms", std::to_string(c.segment_ms), c.segment_ms == defaults.segment_ms, 5},
      {"max.message.bytes", std::to_string(c.max_batch_bytes), c.max_batch_bytes == defaults.max_batch_bytes, 3},
      {"cleanup.policy", "delete", true, 2},
      {"compression.type", "producer", true, 2},
      {"message.timestamp.type", "CreateTime", true, 2},
      {"min.insync.replicas", std::to_string(c.min_insync_replicas), c.min_insync_replicas == defaults.min_insync_replicas, 3},
      {"ring.capacity.bytes", std::to_string(c.ring_capacity_bytes), c.ring_capacity_bytes == defaults.ring_capacity_bytes, 5},
      {"fsync", fsync_policy_name(c), fsync_policy_name(c) == fsync_policy_name(defaults), 2},
      {"flow.control", c.consumer_flow_control ? "consumers" : "none", c.consumer_flow_control == defaults.consumer_flow_control, 2},
  };
}

}  // namespace

Outcome Broker::describe_configs(const Request& r, Reader& in) {
  const std::int16_t v = r.header.api_version;
  const bool flex = r.header.flexible;
  struct Resource {
    std::int8_t type;
    std::string name;
    std::optional<std::vector<std::string>> keys;
  };
  std::vector<Resource> resources;
  const std::int32_t n = in.array(flex, false, 4);
  for (std::int32_t i = 0; i < n && in.ok(); ++i) {
    Resource res;
    res.type = in.i8();
    res.name = std::string(in.string(flex));
    const std::int32_t keys = in.array(flex, true, 1);
    if (keys >= 0) {
      res.keys.emplace();
      for (std::int32_t k = 0; k < keys && in.ok(); ++k) res.keys->push_back(std::string(in.string(flex)));
    }
    in.tagged_fields(flex);
    resources.push_back(std::move(res));
  }
  if (v >= 1) (void)in.boolean();
  if (v >= 3) (void)in.boolean();
  in.tagged_fields(flex);
  if (!in.ok()) return {};

  Outcome out;
  Frame f(r.header);
  Writer& w = f.w;
  w.i32(0);
  w.array(resources.size(), flex);
  for (const Resource& res : resources) {
    std::int16_t err = 0;
    std::string message;
    std::vector<ConfigEntry> configs;
    std::int8_t source = kSourceDynamicTopic;
    if (res.type == kResourceTopic) {
      std::shared_ptr<TopicState> t = topic(res.name);
      // A cluster's node answers for any topic from its record, as every Kafka broker does from
      // its metadata (clients ask the least loaded node): it holds a copy only of its replicas.
      std::optional<TopicRecord> record = !t && cluster_ != nullptr ? cluster_->topic(res.name) : std::nullopt;
      if (t) {
        configs = topic_configs(t->config, node_.options().default_topic);
      } else if (record) {
        Result<TopicConfig> recorded = topic_config_of(*record, node_.options().default_topic);
        if (recorded.ok()) {
          configs = topic_configs(*recorded, node_.options().default_topic);
        } else {
          err = error::kUnknownServerError;
          message = "topic '" + res.name + "': its cluster record's settings do not read: " + recorded.error().message;
        }
      } else {
        err = error::kUnknownTopicOrPartition;
        message = "topic '" + res.name + "' does not exist";
      }
    } else if (res.type == kResourceBroker) {
      source = kSourceStaticBroker;
      configs = {
          {"broker.id", std::to_string(options_.node_id), false, 3},
          {"num.partitions", std::to_string(options_.default_partitions), false, 3},
          {"auto.create.topics.enable", options_.auto_create_topics ? "true" : "false", false, 1},
          {"socket.request.max.bytes", std::to_string(options_.max_request_bytes), false, 3},
          {"connections.max.idle.ms", std::to_string(options_.idle_timeout_ms), false, 5},
          {"group.initial.rebalance.delay.ms", std::to_string(options_.groups.initial_rebalance_delay_ms), false, 3},
          {"group.min.session.timeout.ms", std::to_string(options_.groups.min_session_timeout_ms), false, 3},
          {"group.max.session.timeout.ms", std::to_string(options_.groups.max_session_timeout_ms), false, 3},
      };
    } else {
      err = error::kInvalidRequest;
      message = "resource type " + std::to_string(res.type) + " has no configs here (topics: 2, brokers: 4)";
    }
    if (res.keys) {
      std::erase_if(configs, [&](const ConfigEntry& c) { return std::find(res.keys->begin(), res.keys->end(), c.name) == res.keys->end(); });
    }
    w.i16(err);
    if (err != 0 && out.error == 0) out.error = err;
    w.nullable_string(err != 0 ? std::optional<std::string_view>(message) : std::nullopt, flex);
    w.i8(res.type);
    w.string(res.name, flex);
    w.array(configs.size(), flex);
    for (const ConfigEntry& c : configs) {
      w.string(c.name, flex);
      w.nullable_string(c.value, flex);
      w.boolean(res.type == kResourceBroker);  // read only: brokers take settings from their config file
      if (v == 0) w.boolean(c.is_default);
      if (v >= 1) w.i8(c.is_default && res.type == kResourceTopic ? kSourceDefault : source);
      w.boolean(false);  // sensitive
      if (v >= 1) w.array(0, flex);  // synonyms
      if (v >= 3) {
        w.i8(c.type);
        w.nullable_string(std::nullopt, flex);
      }
      w.tagged_fields(flex);
    }
    w.tagged_fields(flex);
  }
  w.tagged_fields(flex);
  out.response = f.finish();
  return out;
}

// ---- InitProducerId -------------------------------------------------------------------------

Outcome Broker::init_producer_id(const Request& r, Reader& in) {
  const std::int16_t v = r.header.api_version;
  const bool flex = r.header.flexible;
  const std::optional<std::string_view> transactional_id = in.nullable_string(flex);
  (void)in.i32();  // transaction timeout
  if (v >= 3) {
    // The id and epoch a producer had (KIP-360): only a transactional producer keeps them, and
    // transactions are not served.
    (void)in.i64();
    (void)in.i16();
  }
  std::int64_t producer_id = -1;
  std::int16_t epoch = -1;
  in.tagged_fields(flex);
  if (!in.ok()) return {};
  Outcome out;
  std::int16_t err = 0;
  if (transactional_id) {
    err = error::kInvalidTxnState;  // non-retriable: the client learns at once that transactions are not served
    if (std::uint64_t held_back = 0; transactional_refusal_logs_.allow(now_ms(), held_back)) {
      log(LogLevel::kInfo, "kafka: refused a transactional producer (not supported)",
          {{"transactional_id", std::string(*transactional_id)}, {"not_logged_before", std::to_string(held_back)}});
    }
  } else {
    // A producer without a transactional id gets a new id whatever it names, as from Kafka's
    // coordinator: bumping the epoch of the id it names would let any client fence any other
    // idempotent producer by naming its id.
    producer_id = next_producer_id_++;
    epoch = 0;
  }
  Frame f(r.header);
  f.w.i32(0);
  f.w.i16(err);
  f.w.i64(producer_id);
  f.w.i16(epoch);
  f.w.tagged_fields(flex);
  out.error = err;
  out.response = f.finish();
  return out;
}

}  // namespace weft::kafka::detail
