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

struct PartitionProducer {
  PartitionMemory memory;
  std::optional<Producer> producer;  // attached at the first send, so idle partitions hold no slot
  Offset sent_end{0};                // the offset after the last record sent here (flush waits for it)
};

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
    state->partitions.push_back(PartitionProducer{std::move(memory), std::nullopt});
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
  if (!p.producer) [[unlikely]] {
    if (read_log_progress(p.memory.ring).error == Errc::kCorrupt)
      return Error{Errc::kUnavailable, "topic '" + state_->topic + "' partition " + std::to_string(partition) +
                                           " is offline: its log failed its checks at the node's start (see the node's log)"};
    Result<Producer> attached = Producer::attach(p.memory.ring, state_->options.mode);
    if (!attached.ok())
      return Error{attached.error().code, "topic '" + state_->topic + "' partition " + std::to_string(partition) + ": " + attached.error().message};
    p.producer.emplace(std::move(*attached));
  }
  return &*p.producer;
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
                                             std::uint32_t partition, const RecordInput& record, Offset& base) noexcept {
  if (partition >= partitions.size()) [[unlikely]]
    return false;
  std::optional<Producer>& producer = partitions[partition].producer;
  if (!producer || producer->offer_record(record, &base) != ClaimStatus::kOk) [[unlikely]]
    return false;
  partitions[partition].sent_end = Offset{base.value + 1};
  ++stats.records;
  ++stats.batches;
  return true;
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
  Offset base;
  Result<SendResult> sent = send_fast(s.partitions, s.stats, partition, record, base) ? Result<SendResult>(SendResult{partition, base})
                                                                                     : send_slow(partition, record);
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
  Offset base;
  if (send_fast(state_->partitions, state_->stats, partition, record, base)) [[likely]]
    return SendResult{partition, base};
  return send_slow(partition, record);
}

Result<SendResult> TopicProducer::send_slow(std::uint32_t partition, const RecordInput& record) {
  WEFT_TRY(Producer* producer, ring_producer(partition));
  std::int64_t deadline = 0;
  for (;;) {
    Offset base;
    switch (producer->offer_record(record, &base)) {
      case ClaimStatus::kOk:
        ++state_->stats.records;
        ++state_->stats.batches;
        state_->partitions[partition].sent_end = Offset{base.value + 1};
        return SendResult{partition, base};
      case ClaimStatus::kBackPressured: WEFT_TRY_VOID(wait_for_space(partition, deadline)); break;
      case ClaimStatus::kTooLarge:
        return Error{Errc::kInvalidArgument, "a record of " + std::to_string(single_record_batch_bytes(record)) +
                                                 " bytes exceeds topic '" + state_->topic + "' max.batch.bytes of " +
                                                 std::to_string(state_->max_batch_bytes)};
      case ClaimStatus::kInvalid:
        return Error{Errc::kFailedPrecondition, "partition " + std::to_string(partition) + " has a claim open; commit or abort it first"};
    }
  }
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
  WEFT_TRY(Producer* producer, ring_producer(partition));
  std::int64_t deadline = 0;
  ZeroCopyBatch batch;
  batch.partition = partition;
  for (;;) {
    switch (producer->try_claim(batch_bytes, records, batch.claim)) {
      case ClaimStatus::kOk:
        batch.bytes = batch.claim.batch;
        batch.base_offset = batch.claim.base_offset;
        return batch;
      case ClaimStatus::kBackPressured: WEFT_TRY_VOID(wait_for_space(partition, deadline)); break;
      case ClaimStatus::kTooLarge:
        return Error{Errc::kInvalidArgument, "a batch of " + std::to_string(batch_bytes) + " bytes exceeds topic '" +
                                                 state_->topic + "' max.batch.bytes of " + std::to_string(state_->max_batch_bytes)};
      case ClaimStatus::kInvalid:
        return Error{Errc::kInvalidArgument, "claim: zero records, fewer bytes than a batch header, or a claim still open"};
    }
  }
}

Result<SendResult> TopicProducer::commit(ZeroCopyBatch& batch, std::size_t used_bytes) {
  WEFT_TRY(Producer* producer, ring_producer(batch.partition));
  switch (producer->commit(batch.claim, used_bytes)) {
    case CommitStatus::kOk:
      state_->stats.records += batch.claim.records;
      ++state_->stats.batches;
      state_->partitions[batch.partition].sent_end = Offset{batch.base_offset.value + batch.claim.records};
      return SendResult{batch.partition, batch.base_offset};
    case CommitStatus::kMalformed:
      return Error{Errc::kInvalidArgument, "commit: the batch header does not match the claim (record count, length or magic); the claim was aborted"};
    case CommitStatus::kNotOpen: break;
  }
  return Error{Errc::kFailedPrecondition, "commit: the claim is not open (committed or aborted already)"};
}

void TopicProducer::abort(ZeroCopyBatch& batch) {
  if (Result<Producer*> producer = ring_producer(batch.partition); producer.ok()) (*producer)->abort(batch.claim);
}

namespace {

std::int64_t deadline_after(std::int64_t timeout_ms) {
  return monotonic_ns() + std::clamp<std::int64_t>(timeout_ms, 0, std::int64_t{1} << 40) * 1'000'000;
}

}  // namespace

Result<void> TopicProducer::wait_for_log(std::uint32_t partition, Offset end, Acks acks, std::int64_t deadline_ns) {
  if (acks == Acks::kNone) return ok();  // in the ring when send returned
  const Ring& ring = state_->partitions[partition].memory.ring;
  switch (weft::wait_for_log(ring, end, acks == Acks::kAll, deadline_ns)) {
    case AckStatus::kOk:
    case AckStatus::kNoLog: return ok();
    case AckStatus::kTimeout:
      return Error{Errc::kUnavailable, "topic '" + state_->topic + "' partition " + std::to_string(partition) +
                                           ": not acknowledged in time (is the node running and its disk keeping up?)"};
    case AckStatus::kLogError: break;
  }
  return log_stopped_error(partition);
}

Error TopicProducer::log_stopped_error(std::uint32_t partition) const {
  const Errc code = read_log_progress(state_->partitions[partition].memory.ring).error;
  const std::string where = "topic '" + state_->topic + "' partition " + std::to_string(partition) + ": ";
  if (code == Errc::kResourceExhausted)
    return Error{code, where + "the log is out of disk space; the node keeps what it has, retries, and takes records again when space returns"};
  return Error{code, where + "the log stopped taking records (" + std::string(errc_name(code)) + "); see the node's log"};
}

Result<void> TopicProducer::await(const SendResult& sent, Acks acks, std::int64_t timeout_ms) {
  if (sent.partition >= state_->partitions.size())
    return Error{Errc::kInvalidArgument, "await: topic '" + state_->topic + "' has no partition " + std::to_string(sent.partition)};
  // A batch reaches the log whole, so the first record's offset stands for all of them.
  return wait_for_log(sent.partition, Offset{sent.offset.value + 1}, acks, deadline_after(timeout_ms));
}

Result<void> TopicProducer::flush(std::int64_t timeout_ms) {
  const std::int64_t deadline = deadline_after(timeout_ms);
  for (std::uint32_t p = 0; p < state_->partitions.size(); ++p) {
    const PartitionProducer& partition = state_->partitions[p];
    if (!partition.producer || partition.sent_end.value == 0) continue;
    WEFT_TRY_VOID(wait_for_log(p, partition.sent_end, state_->options.acks, deadline));
  }
  return ok();
}

}  // namespace weft
