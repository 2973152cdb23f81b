#include "weft/producer.h"

#include <sched.h>
#include <time.h>

#include <algorithm>
#include <optional>

namespace weft {

std::int32_t murmur2(std::span<const std::byte> bytes) noexcept {
  // Kafka's Utils.murmur2: 32-bit MurmurHash2 over little-endian 4-byte words, seed 0x9747b28c.
  constexpr std::uint32_t m = 0x5bd1e995;
  constexpr int r = 24;
  const auto length = static_cast<std::uint32_t>(bytes.size());
  std::uint32_t h = 0x9747b28c ^ length;
  const std::size_t words = bytes.size() / 4;
  auto at = [&](std::size_t i) { return static_cast<std::uint32_t>(bytes[i]); };
  for (std::size_t i = 0; i < words; ++i) {
    std::uint32_t k = at(4 * i) | (at(4 * i + 1) << 8) | (at(4 * i + 2) << 16) | (at(4 * i + 3) << 24);
    k *= m;
    k ^= k >> r;
    k *= m;
    h *= m;
    h ^= k;
  }
  const std::size_t tail = words * 4;
  switch (bytes.size() % 4) {
    case 3: h ^= at(tail + 2) << 16; [[fallthrough]];
    case 2: h ^= at(tail + 1) << 8; [[fallthrough]];
    case 1:
      h ^= at(tail);
      h *= m;
      break;
    default: break;
  }
  h ^= h >> 13;
  h *= m;
  h ^= h >> 15;
  return static_cast<std::int32_t>(h);
}

std::uint32_t partition_for_key(std::span<const std::byte> key, std::uint32_t partitions) noexcept {
  return (static_cast<std::uint32_t>(murmur2(key)) & 0x7fffffffu) % partitions;
}

namespace {

constexpr std::int32_t kRoutedHere = -1;  // PartitionProducer::routed_to: this node's ring

struct PartitionProducer {
  PartitionMemory memory;
  std::optional<Producer> producer;  // attached at the first send, so idle partitions hold no slot
  Offset sent_end{0};                // the offset after the last record sent here (flush waits for it)
  std::int32_t sent_epoch = kAnyLeaderEpoch;  // the ring's leader epoch for those sends
  std::optional<PartitionRoute> remote;       // another node leads: sends go to it (none: ask)
  std::int32_t routed_to = kRoutedHere;       // where sends went last (a change counts as a reroute)
};

// Acknowledgement levels in order of strength (kAll is -1 on the wire).
int strength(Acks acks) noexcept { return acks == Acks::kAll ? 2 : static_cast<int>(acks); }

std::uint64_t seed_from_clock() noexcept {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<std::uint64_t>(ts.tv_nsec) * 0x9E3779B97F4A7C15ull + 1;
}

}  // namespace

struct TopicProducer::State {
  std::shared_ptr<Client> client;
  std::string topic;
  ProducerOptions options;
  std::vector<PartitionProducer> partitions;
  std::size_t max_batch_bytes = 0;
  std::uint32_t sticky = 0;
  std::size_t sticky_bytes = 0;
  std::uint64_t random = 0;
  ProducerStats stats;
  std::vector<std::byte> remote_batch;  // a batch bound for another node's leader, encoded here
  bool remote_claim_open = false;       // remote_batch is a claim the caller is writing
};

TopicProducer::TopicProducer(std::unique_ptr<State> state) : state_(std::move(state)) {}
TopicProducer::TopicProducer(TopicProducer&&) noexcept = default;
TopicProducer& TopicProducer::operator=(TopicProducer&&) noexcept = default;
TopicProducer::~TopicProducer() = default;

Result<TopicProducer> TopicProducer::create(std::shared_ptr<Client> client, std::string_view topic, ProducerOptions options) {
  if (!client) return Error{Errc::kInvalidArgument, "producer: no client"};
  if (options.max_block_ms < 0) return Error{Errc::kInvalidArgument, "producer: max_block_ms must not be negative"};
  WEFT_TRY(const TopicInfo info, client->describe_topic(topic));
  auto state = std::make_unique<State>();
  state->client = std::move(client);
  state->topic = info.name;
  state->options = options;
  state->random = seed_from_clock();
  for (std::uint32_t p = 0; p < info.config.partitions; ++p) {
    WEFT_TRY(PartitionMemory memory, state->client->open_partition(topic, p));
    state->max_batch_bytes = memory.ring.max_batch_bytes();
    state->partitions.emplace_back().memory = std::move(memory);
  }
  state->sticky = static_cast<std::uint32_t>(state->random % state->partitions.size());
  return TopicProducer(std::move(state));
}

std::uint32_t TopicProducer::partitions() const noexcept { return static_cast<std::uint32_t>(state_->partitions.size()); }
const std::string& TopicProducer::topic() const noexcept { return state_->topic; }
ProducerStats TopicProducer::stats() const noexcept { return state_->stats; }
std::size_t TopicProducer::max_batch_bytes() const noexcept { return state_->max_batch_bytes; }

std::uint32_t TopicProducer::partition_for(const OptionalBytes& key) noexcept {
  const auto n = static_cast<std::uint32_t>(state_->partitions.size());
  if (key) return partition_for_key(*key, n);
  return state_->sticky;
}

Result<Producer*> TopicProducer::ring_producer(std::uint32_t partition) {
  if (partition >= state_->partitions.size())
    return Error{Errc::kInvalidArgument, "topic '" + state_->topic + "' has " + std::to_string(state_->partitions.size()) +
                                             " partitions; there is no partition " + std::to_string(partition)};
  PartitionProducer& p = state_->partitions[partition];
  if (p.producer) [[likely]]
    return &*p.producer;
  // Sent to another node's leader until this node's ring opens to producers again.
  if (p.remote && leader_epoch(p.memory.ring) == ring_layout::kFollowing) return nullptr;
  return attach_or_route(partition);
}

Result<Producer*> TopicProducer::attach_or_route(std::uint32_t partition) {
  State& s = *state_;
  PartitionProducer& p = s.partitions[partition];
  const std::string where = "topic '" + s.topic + "' partition " + std::to_string(partition);
  const std::int64_t deadline = monotonic_ns() + std::min<std::int64_t>(s.options.max_block_ms, std::int64_t{1} << 40) * 1'000'000;
  for (;;) {
    // The node retired the ring: a replica's truncation moved the partition to a new one, or
    // the topic was deleted. A producer stays with the topic it was made for (as a consumer
    // does): one made again under the name is another, whose offsets its sends and
    // acknowledgements must not be taken for.
    if (leader_epoch(p.memory.ring) == ring_layout::kRetired) {
      Result<PartitionMemory> reopened = s.client->open_partition(s.topic, partition);
      if (!reopened.ok() && reopened.error().code != Errc::kNotFound) return std::move(reopened).error();
      if (!reopened.ok() || reopened->topic_id != p.memory.topic_id)
        return Error{Errc::kNotFound, "topic '" + s.topic + "' was deleted" +
                                          std::string(reopened.ok() ? " (a topic made again under its name is another: make a producer for it)" : "")};
      p.memory = std::move(*reopened);
    }
    if (read_log_progress(p.memory.ring).error == Errc::kCorrupt)
      return Error{Errc::kUnavailable, where + " is offline: its log failed its checks at the node's start (see the node's log)"};
    Result<Producer> attached = Producer::attach(p.memory.ring, s.options.mode);
    if (attached.ok()) {
      p.producer.emplace(std::move(*attached));
      if (p.routed_to != kRoutedHere) ++s.stats.reroutes;
      p.routed_to = kRoutedHere;
      p.remote.reset();
      return &*p.producer;
    }
    const std::int32_t epoch = leader_epoch(p.memory.ring);
    if (epoch != ring_layout::kFollowing && epoch != ring_layout::kRetired)
      return Error{attached.error().code, where + ": " + attached.error().message};
    // This node follows the partition: produce where its leader is.
    Result<PartitionRoute> route = s.client->partition_route(s.topic, partition);
    if (!route.ok() && route.error().code == Errc::kFailedPrecondition) return route.error();  // no leader will come
    if (route.ok() && !route->here) {
      if (!s.options.remote)
        return Error{Errc::kFailedPrecondition, where + " is led by node " + std::to_string(route->leader) +
                                                    (route->kafka_address.empty() ? "" : " (Kafka listener " + route->kafka_address + ")") +
                                                    "; this producer has no route there: set ProducerOptions::remote "
                                                    "(weft::kafka::make_remote_producer()) or produce on the leader's host"};
      if (route->kafka_address.empty())
        return Error{Errc::kUnavailable, where + " is led by node " + std::to_string(route->leader) + ", which has no Kafka listener to produce to"};
      if (p.routed_to != route->leader) ++s.stats.reroutes;
      p.routed_to = route->leader;
      p.remote = std::move(*route);
      return nullptr;
    }
    // Led here but the node has not opened the ring yet, or no leader now: an election is
    // under way, which takes up to a lease's time.
    if (monotonic_ns() >= deadline)
      return Error{Errc::kUnavailable, where + ": no leader took it within max_block_ms=" + std::to_string(s.options.max_block_ms) +
                                           (route.ok() ? std::string() : " (" + route.error().message + ")")};
    const timespec pause{0, 2'000'000};
    nanosleep(&pause, nullptr);
  }
}

Result<void> TopicProducer::wait_for_space(std::uint32_t partition, std::int64_t& deadline_ns) {
  // Back-pressure is the slow path: the node frees space as it persists (or, with no log store,
  // as the ring moves on); wait for it without burning the core the node may need.
  ++state_->stats.back_pressure_waits;
  const std::int64_t now = monotonic_ns();
  // Saturating: max_block_ms of INT64_MAX means "wait as long as it takes".
  if (deadline_ns == 0) deadline_ns = now + std::min<std::int64_t>(state_->options.max_block_ms, std::int64_t{1} << 40) * 1'000'000;
  // A log that stopped (a full disk) holds the ring full: say so rather than time out.
  if (read_log_progress(state_->partitions[partition].memory.ring).error != Errc::kOk) return log_stopped_error(partition);
  if (now >= deadline_ns)
    return Error{Errc::kUnavailable, "topic '" + state_->topic + "' partition " + std::to_string(partition) +
                                         ": no ring space within max_block_ms=" + std::to_string(state_->options.max_block_ms) +
                                         " (is the node running and keeping up?)"};
  switch (state_->options.back_pressure_wait) {
    case WaitKind::kSpin: break;
    case WaitKind::kYield: sched_yield(); break;
    case WaitKind::kPark: {
      const timespec pause{0, 50'000};
      nanosleep(&pause, nullptr);
      break;
    }
  }
  return ok();
}

namespace {

// The common case of send and send_to, inlined into both: an attached partition with space.
[[gnu::always_inline]] inline bool send_fast(std::vector<PartitionProducer>& partitions, ProducerStats& stats,
                                             std::uint32_t partition, const RecordInput& record, SendResult& sent) noexcept {
  if (partition >= partitions.size()) [[unlikely]]
    return false;
  PartitionProducer& p = partitions[partition];
  if (!p.producer || p.producer->offer_record(record, &sent.offset) != ClaimStatus::kOk) [[unlikely]]
    return false;
  sent.partition = partition;
  sent.leader_epoch = p.producer->leader_epoch();
  p.sent_end = Offset{sent.offset.value + 1};
  p.sent_epoch = sent.leader_epoch;
  ++stats.records;
  ++stats.batches;
  return true;
}

SendResult ring_sent(std::uint32_t partition, Offset base, const Producer& producer) noexcept {
  SendResult sent{partition, base};
  sent.leader_epoch = producer.leader_epoch();
  return sent;
}

}  // namespace

namespace {

// Kafka's CreateTime: a record sent without a timestamp gets the producer's clock, so time
// retention and time lookups see when it was sent (not 1970, which retention deletes at once).
const RecordInput& stamped(const RecordInput& record, RecordInput& copy) noexcept {
  if (record.timestamp_ms != 0) [[likely]]
    return record;
  copy = record;
  copy.timestamp_ms = wall_clock_ms();
  return copy;
}

}  // namespace

Result<SendResult> TopicProducer::send(const RecordInput& unstamped) {
  RecordInput copy;
  const RecordInput& record = stamped(unstamped, copy);
  State& s = *state_;
  const std::uint32_t partition = record.key ? partition_for_key(*record.key, static_cast<std::uint32_t>(s.partitions.size())) : s.sticky;
  SendResult fast;
  Result<SendResult> sent = send_fast(s.partitions, s.stats, partition, record, fast) ? Result<SendResult>(fast) : send_slow(partition, record);
  if (!record.key && sent.ok()) {
    // Kafka's sticky partitioner: keyless records stay on one partition for a batch's worth of
    // bytes, then move to another chosen at random. The byte count is approximate on purpose.
    s.sticky_bytes += kBatchHeaderBytes + (record.value ? record.value->size() : 0);
    if (s.sticky_bytes >= s.options.sticky_batch_bytes && s.partitions.size() > 1) [[unlikely]] {
      s.sticky_bytes = 0;
      s.random ^= s.random << 13;
      s.random ^= s.random >> 7;
      s.random ^= s.random << 17;
      const auto n = static_cast<std::uint32_t>(s.partitions.size());
      s.sticky = (s.sticky + 1 + static_cast<std::uint32_t>(s.random % (n - 1))) % n;
    }
  }
  return sent;
}

Result<SendResult> TopicProducer::send_to(std::uint32_t partition, const RecordInput& unstamped) {
  RecordInput copy;
  const RecordInput& record = stamped(unstamped, copy);
  SendResult sent;
  if (send_fast(state_->partitions, state_->stats, partition, record, sent)) [[likely]]
    return sent;
  return send_slow(partition, record);
}

Result<SendResult> TopicProducer::send_slow(std::uint32_t partition, const RecordInput& record) {
  std::int64_t deadline = 0;
  for (int reroutes = 0;; ++reroutes) {
    WEFT_TRY(Producer * producer, ring_producer(partition));
    if (producer == nullptr) {
      // As a ring refuses a send while a claim is open: the claim is being written in this buffer.
      if (state_->remote_claim_open)
        return Error{Errc::kFailedPrecondition, "partition " + std::to_string(partition) + " has a claim open; commit or abort it first"};
      std::vector<std::byte>& buffer = state_->remote_batch;
      buffer.resize(single_record_batch_bytes(record));
      Result<SendResult> sent = send_encoded(partition, encode_single_record_batch(buffer, record));
      if (sent.ok()) {
        ++state_->stats.records;
        ++state_->stats.batches;
      }
      return sent;
    }
    Offset base;
    switch (producer->offer_record(record, &base)) {
      case ClaimStatus::kOk:
        ++state_->stats.records;
        ++state_->stats.batches;
        state_->partitions[partition].sent_end = Offset{base.value + 1};
        state_->partitions[partition].sent_epoch = producer->leader_epoch();
        return ring_sent(partition, base, *producer);
      case ClaimStatus::kBackPressured: WEFT_TRY_VOID(wait_for_space(partition, deadline)); break;
      case ClaimStatus::kFenced:
        // Leadership moved since this producer attached: attach again, or send to the leader.
        state_->partitions[partition].producer.reset();
        if (reroutes > 1'000) return Error{Errc::kUnavailable, "topic '" + state_->topic + "': leadership keeps moving"};
        break;
      case ClaimStatus::kTooLarge:
        return Error{Errc::kInvalidArgument, "a record of " + std::to_string(single_record_batch_bytes(record)) +
                                                 " bytes exceeds topic '" + state_->topic + "' max.batch.bytes of " +
                                                 std::to_string(state_->max_batch_bytes)};
      case ClaimStatus::kInvalid:
        return Error{Errc::kFailedPrecondition, "partition " + std::to_string(partition) + " has a claim open; commit or abort it first"};
    }
  }
}

Result<SendResult> TopicProducer::send_encoded(std::uint32_t partition, std::span<const std::byte> batch) {
  std::int64_t deadline = 0;
  const std::int64_t reroute_deadline = monotonic_ns() + std::min<std::int64_t>(state_->options.max_block_ms, std::int64_t{1} << 40) * 1'000'000;
  for (;;) {
    WEFT_TRY(Producer * producer, ring_producer(partition));
    if (producer == nullptr) {
      Result<SendResult> sent = send_remote(partition, batch);
      // kAborted: that node no longer leads and took nothing; ask again (this node's metadata
      // may trail the election for a moment) and resend.
      if (sent.ok() || sent.error().code != Errc::kAborted || monotonic_ns() >= reroute_deadline) return sent;
      const timespec pause{0, 5'000'000};
      nanosleep(&pause, nullptr);
      continue;
    }
    Offset base;
    switch (producer->offer(batch, &base)) {
      case ClaimStatus::kOk: {
        const auto records = static_cast<std::uint32_t>(wire::load_be32(batch.data() + batch_field::kRecordCount));
        state_->partitions[partition].sent_end = Offset{base.value + records};
        state_->partitions[partition].sent_epoch = producer->leader_epoch();
        return ring_sent(partition, base, *producer);
      }
      case ClaimStatus::kBackPressured: WEFT_TRY_VOID(wait_for_space(partition, deadline)); break;
      case ClaimStatus::kFenced: state_->partitions[partition].producer.reset(); break;
      case ClaimStatus::kTooLarge:
        return Error{Errc::kInvalidArgument, "a batch of " + std::to_string(batch.size()) + " bytes exceeds topic '" + state_->topic +
                                                 "' max.batch.bytes of " + std::to_string(state_->max_batch_bytes)};
      case ClaimStatus::kInvalid: return Error{Errc::kFailedPrecondition, "partition " + std::to_string(partition) + " has a claim open"};
    }
  }
}

Result<SendResult> TopicProducer::send_remote(std::uint32_t partition, std::span<const std::byte> batch) {
  State& s = *state_;
  PartitionProducer& p = s.partitions[partition];
  const Acks acks = s.options.acks == Acks::kAll ? Acks::kAll : Acks::kLeader;
  Result<Offset> base = s.options.remote->produce(p.remote->kafka_address, s.topic, partition, batch, acks, s.options.max_block_ms);
  if (!base.ok()) {
    const std::string where = "topic '" + s.topic + "' partition " + std::to_string(partition) + " at its leader, node " +
                              std::to_string(p.remote->leader) + " (" + p.remote->kafka_address + "): ";
    if (base.error().code == Errc::kAborted) p.remote.reset();  // asked again on the next send
    return Error{base.error().code, where + base.error().message};
  }
  ++s.stats.remote_batches;
  SendResult sent{partition, *base};
  sent.acknowledged = acks;
  return sent;
}

Result<SendResult> TopicProducer::send_batch(std::uint32_t partition, std::span<const RecordInput> records) {
  if (records.empty()) return Error{Errc::kInvalidArgument, "send_batch: no records"};
  std::size_t bytes = kBatchHeaderBytes;
  // Records without a timestamp get the producer's clock (see stamped()).
  const std::int64_t now_ms = wall_clock_ms();
  auto time_of = [&](const RecordInput& r) { return r.timestamp_ms != 0 ? r.timestamp_ms : now_ms; };
  const std::int64_t base_ts = time_of(records.front());
  for (std::size_t i = 0; i < records.size(); ++i)
    bytes += encoded_record_bytes(records[i], static_cast<std::int32_t>(i), time_of(records[i]) - base_ts);
  WEFT_TRY(ZeroCopyBatch batch, claim(partition, bytes, static_cast<std::uint32_t>(records.size())));
  BatchBuilder builder(batch.bytes);
  for (const RecordInput& r : records) {
    RecordInput copy;
    const RecordInput& record = r.timestamp_ms != 0 ? r : (copy = r, copy.timestamp_ms = now_ms, copy);
    if (!builder.append(record)) {
      abort(batch);
      return Error{Errc::kInternal, "send_batch: a record did not fit the size computed for it"};
    }
  }
  const std::size_t used = builder.finish().size();
  return commit(batch, used);
}

Result<ZeroCopyBatch> TopicProducer::claim(std::uint32_t partition, std::size_t batch_bytes, std::uint32_t records) {
  std::int64_t deadline = 0;
  ZeroCopyBatch batch;
  batch.partition = partition;
  for (int reroutes = 0;; ++reroutes) {
    WEFT_TRY(Producer * producer, ring_producer(partition));
    if (producer == nullptr) {
      // Another node leads: the batch is written here and sent at commit.
      if (records == 0 || batch_bytes < kBatchHeaderBytes || state_->remote_claim_open)
        return Error{Errc::kInvalidArgument, "claim: zero records, fewer bytes than a batch header, or a claim still open"};
      if (batch_bytes > state_->max_batch_bytes)
        return Error{Errc::kInvalidArgument, "a batch of " + std::to_string(batch_bytes) + " bytes exceeds topic '" + state_->topic +
                                                 "' max.batch.bytes of " + std::to_string(state_->max_batch_bytes)};
      state_->remote_batch.resize(batch_bytes);
      batch.bytes = state_->remote_batch;
      batch.base_offset = Offset{-1};
      batch.claim.records = records;
      batch.remote = true;
      state_->remote_claim_open = true;
      return batch;
    }
    switch (producer->try_claim(batch_bytes, records, batch.claim)) {
      case ClaimStatus::kOk:
        batch.bytes = batch.claim.batch;
        batch.base_offset = batch.claim.base_offset;
        return batch;
      case ClaimStatus::kBackPressured: WEFT_TRY_VOID(wait_for_space(partition, deadline)); break;
      case ClaimStatus::kFenced:
        state_->partitions[partition].producer.reset();
        if (reroutes > 1'000) return Error{Errc::kUnavailable, "topic '" + state_->topic + "': leadership keeps moving"};
        break;
      case ClaimStatus::kTooLarge:
        return Error{Errc::kInvalidArgument, "a batch of " + std::to_string(batch_bytes) + " bytes exceeds topic '" +
                                                 state_->topic + "' max.batch.bytes of " + std::to_string(state_->max_batch_bytes)};
      case ClaimStatus::kInvalid:
        return Error{Errc::kInvalidArgument, "claim: zero records, fewer bytes than a batch header, or a claim still open"};
    }
  }
}

Result<SendResult> TopicProducer::commit(ZeroCopyBatch& batch, std::size_t used_bytes) {
  if (batch.remote) {
    const bool consistent = batch.partition < state_->partitions.size() && used_bytes >= kBatchHeaderBytes &&
                            used_bytes <= batch.bytes.size() && batch.bytes.data() == state_->remote_batch.data() &&
                            wire::load_be32(batch.bytes.data() + batch_field::kRecordCount) == static_cast<std::int32_t>(batch.claim.records);
    batch.remote = false;  // committed or refused: not again
    state_->remote_claim_open = false;
    if (!consistent) return Error{Errc::kInvalidArgument, "commit: the batch does not match its claim (record count or length)"};
    WEFT_TRY(SendResult sent, send_encoded(batch.partition, batch.bytes.first(used_bytes)));
    state_->stats.records += batch.claim.records;
    ++state_->stats.batches;
    return sent;
  }
  if (batch.partition >= state_->partitions.size() || !state_->partitions[batch.partition].producer)
    return Error{Errc::kFailedPrecondition, "commit: the claim is not open (committed or aborted already)"};
  Producer& producer = *state_->partitions[batch.partition].producer;
  switch (producer.commit(batch.claim, used_bytes)) {
    case CommitStatus::kOk:
      state_->stats.records += batch.claim.records;
      ++state_->stats.batches;
      state_->partitions[batch.partition].sent_end = Offset{batch.base_offset.value + batch.claim.records};
      state_->partitions[batch.partition].sent_epoch = producer.leader_epoch();
      return ring_sent(batch.partition, batch.base_offset, producer);
    case CommitStatus::kMalformed:
      return Error{Errc::kInvalidArgument, "commit: the batch header does not match the claim (record count, length or magic); the claim was aborted"};
    case CommitStatus::kNotOpen: break;
  }
  return Error{Errc::kFailedPrecondition, "commit: the claim is not open (committed or aborted already)"};
}

void TopicProducer::abort(ZeroCopyBatch& batch) {
  if (batch.remote) {
    batch.remote = false;  // nothing left here
    state_->remote_claim_open = false;
    return;
  }
  if (batch.partition >= state_->partitions.size()) return;
  if (std::optional<Producer>& producer = state_->partitions[batch.partition].producer) producer->abort(batch.claim);
}

namespace {

std::int64_t deadline_after(std::int64_t timeout_ms) {
  return monotonic_ns() + std::clamp<std::int64_t>(timeout_ms, 0, std::int64_t{1} << 40) * 1'000'000;
}

}  // namespace

Result<void> TopicProducer::wait_for_log(std::uint32_t partition, Offset end, Acks acks, std::int64_t deadline_ns, std::int32_t epoch) {
  if (acks == Acks::kNone) return ok();  // in the ring when send returned
  const Ring& ring = state_->partitions[partition].memory.ring;
  const std::string where = "topic '" + state_->topic + "' partition " + std::to_string(partition);
  switch (weft::wait_for_log(ring, end, acks == Acks::kAll, deadline_ns, epoch)) {
    case AckStatus::kOk:
    case AckStatus::kNoLog: return ok();
    case AckStatus::kTimeout:
      return Error{Errc::kUnavailable, where + ": not acknowledged in time (is the node running and its disk keeping up?" +
                                           (read_log_progress(ring).replicated.value != ring_layout::kNoLog ? " are the in-sync replicas?)" : ")")};
    case AckStatus::kFenced:
      if (read_log_progress(ring).error == Errc::kNotFound) break;  // the topic was deleted
      return Error{Errc::kAborted, where + ": leadership moved off this node before the records were acknowledged; they may or "
                                           "may not be in the log (Kafka's NOT_LEADER_OR_FOLLOWER)"};
    case AckStatus::kLogError: break;
  }
  return log_stopped_error(partition);
}

Error TopicProducer::log_stopped_error(std::uint32_t partition) const {
  const Errc code = read_log_progress(state_->partitions[partition].memory.ring).error;
  const std::string where = "topic '" + state_->topic + "' partition " + std::to_string(partition) + ": ";
  if (code == Errc::kResourceExhausted)
    return Error{code, where + "the log is out of disk space; the node keeps what it has, retries, and takes records again when space returns"};
  if (code == Errc::kNotFound) return Error{code, where + "the topic was deleted; records not acknowledged by then went with it"};
  return Error{code, where + "the log stopped taking records (" + std::string(errc_name(code)) + "); see the node's log"};
}

Result<void> TopicProducer::await(const SendResult& sent, Acks acks, std::int64_t timeout_ms) {
  if (sent.partition >= state_->partitions.size())
    return Error{Errc::kInvalidArgument, "await: topic '" + state_->topic + "' has no partition " + std::to_string(sent.partition)};
  if (sent.acknowledged != Acks::kNone) {
    // Answered by another node's leader when it was sent, at the producer's acks level.
    if (strength(sent.acknowledged) >= strength(acks)) return ok();
    return Error{Errc::kFailedPrecondition, "await: the record went to the partition's leader on another node with acks=1; "
                                            "await it at acks=all by producing with ProducerOptions::acks = Acks::kAll"};
  }
  // A batch reaches the log whole, so the first record's offset stands for all of them.
  return wait_for_log(sent.partition, Offset{sent.offset.value + 1}, acks, deadline_after(timeout_ms), sent.leader_epoch);
}

Result<void> TopicProducer::flush(std::int64_t timeout_ms) {
  const std::int64_t deadline = deadline_after(timeout_ms);
  for (std::uint32_t p = 0; p < state_->partitions.size(); ++p) {
    PartitionProducer& partition = state_->partitions[p];
    if (partition.sent_end.value == 0) continue;
    Result<void> acknowledged = wait_for_log(p, partition.sent_end, state_->options.acks, deadline, partition.sent_epoch);
    // Said once: a later flush waits only for what is sent after it.
    if (!acknowledged.ok() && acknowledged.error().code == Errc::kAborted) partition.sent_end = Offset{0};
    WEFT_TRY_VOID(acknowledged);
  }
  return ok();
}

}  // namespace weft
