// Sending records to a topic through its partitions' rings.
//
//   auto producer = weft::TopicProducer::create(client, "clicks");
//   weft::RecordInput record;  record.key = ...; record.value = ...;
//   auto sent = producer->send(record);  // sent->partition, sent->offset
//
// The partition follows Kafka's default partitioner: murmur2 of the key, and for records without
// a key a sticky partition that changes after each sticky_batch_bytes. A send copies the record
// into the ring as a one-record RecordBatch v2 (no syscall, no lock, no allocation); send_batch
// puts many records in one batch; claim/commit writes a batch in place with no copy at all.
//
// Thread contract: one TopicProducer per thread (make one per thread; each holds its own
// producer slot per partition).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "weft/client.h"
#include "weft/fabric/record_batch.h"
#include "weft/fabric/ring.h"

namespace weft {

enum class Acks : std::int8_t {
  kNone = 0,    // sent: the record is in the ring
  kLeader = 1,  // in the partition's log (the page cache); a node without logs: the ring
  kAll = -1,    // in the log and as durable as the topic's fsync policy asks (always: synced,
                // group-committed; interval: at the next sync; none: as kLeader). Replicas
                // join in with the replication issue.
};

// Sends batches to a partition's leader on another node of a cluster, for a TopicProducer whose
// node follows that partition. weft::kafka::make_remote_producer() (weft/kafka/remote_producer.h)
// speaks the Kafka protocol to the leader's listener; tests plug in fakes.
class RemoteProducer {
 public:
  virtual ~RemoteProducer() = default;
  // Appends one RecordBatch v2 (offsets from 0) to `topic`/`partition` at the Kafka listener
  // `leader_address` (HOST:PORT); returns the offset the leader gave its first record, once
  // acknowledged at `acks` (kLeader or kAll). kAborted: that node does not lead the partition (any
  // more) and took nothing, so the caller asks for the route again and resends; any other error
  // leaves it unknown whether the batch is in the log.
  virtual Result<Offset> produce(const std::string& leader_address, std::string_view topic, std::uint32_t partition,
                                 std::span<const std::byte> batch, Acks acks, std::int64_t timeout_ms) = 0;
};

struct ProducerOptions {
  ProducerMode mode = ProducerMode::kShared;  // kExclusive: this is the only producer of the topic
  Acks acks = Acks::kLeader;
  std::int64_t max_block_ms = 60'000;  // how long a send waits for ring space (Kafka's max.block.ms)
  std::size_t sticky_batch_bytes = 16 * 1024;  // Kafka's batch.size, for keyless records
  WaitKind back_pressure_wait = WaitKind::kYield;  // how a send waits for space (kPark sleeps 50 µs)
  // In a cluster, where sends go for partitions another node leads: each such send waits for
  // the leader's answer (acks=all when `acks` is kAll, else the leader's log), so it returns the
  // offset; when the leader changes, sends follow it (back to this node's ring when it leads
  // again). Without one, such sends fail with kFailedPrecondition, naming the leader.
  std::shared_ptr<RemoteProducer> remote;
};

struct SendResult {
  std::uint32_t partition = 0;
  Offset offset;  // of the (first) record
  // A send into this node's ring: the ring's leader epoch then (await fails if it changes). A
  // send to another node's leader: the level it was acknowledged at, kNone for ring sends.
  std::int32_t leader_epoch = kAnyLeaderEpoch;
  Acks acknowledged = Acks::kNone;
};

// A batch claimed in a ring: write one RecordBatch v2 into `bytes` (BatchBuilder does it), then
// commit or abort it before the next send to that partition.
struct ZeroCopyBatch {
  std::span<std::byte> bytes;
  std::uint32_t partition = 0;
  Offset base_offset;  // -1 for a batch bound for another node's leader (known at commit)
  Claim claim;
  bool remote = false;  // `bytes` is the producer's own buffer, sent to the leader at commit
};

// Kafka's murmur2 (seed 0x9747b28c), as its default partitioner computes it.
std::int32_t murmur2(std::span<const std::byte> bytes) noexcept;
// Kafka's partition for a key: (murmur2(key) & 0x7fffffff) % partitions.
std::uint32_t partition_for_key(std::span<const std::byte> key, std::uint32_t partitions) noexcept;

struct ProducerStats {
  std::uint64_t records = 0;
  std::uint64_t batches = 0;
  std::uint64_t back_pressure_waits = 0;  // sends that found their ring full and waited
  std::uint64_t remote_batches = 0;       // sent to another node that leads the partition
  std::uint64_t reroutes = 0;             // times a partition's route changed (a leader moved)
};

class TopicProducer {
 public:
  static Result<TopicProducer> create(std::shared_ptr<Client> client, std::string_view topic, ProducerOptions options = {});
  TopicProducer(TopicProducer&&) noexcept;
  TopicProducer& operator=(TopicProducer&&) noexcept;
  ~TopicProducer();

  // kNotFound once the topic is deleted, also when one is made again under its name: a producer
  // stays with the topic it was made for.
  Result<SendResult> send(const RecordInput& record);
  Result<SendResult> send_to(std::uint32_t partition, const RecordInput& record);
  // All records in one batch, with consecutive offsets from the result's offset.
  Result<SendResult> send_batch(std::uint32_t partition, std::span<const RecordInput> records);
  // Claims space for a batch of `records` records in at most `batch_bytes` bytes.
  Result<ZeroCopyBatch> claim(std::uint32_t partition, std::size_t batch_bytes, std::uint32_t records);
  // Publishes a claimed batch whose first `used_bytes` bytes hold it.
  Result<SendResult> commit(ZeroCopyBatch& batch, std::size_t used_bytes);
  void abort(ZeroCopyBatch& batch);
  // Waits until every send so far is acknowledged at the producer's acks level.
  Result<void> flush(std::int64_t timeout_ms = 60'000);
  // Waits until one send is acknowledged at `acks`. kUnavailable after the timeout; when the
  // partition's log stopped taking records, its reason (kResourceExhausted: out of disk space,
  // the node retries; kIo: see the node's log); kAborted when leadership moved off this node
  // first (the records may or may not survive; Kafka's NOT_LEADER_OR_FOLLOWER). In a cluster,
  // kAll waits for the high watermark.
  Result<void> await(const SendResult& sent, Acks acks, std::int64_t timeout_ms = 60'000);

  // The partition the default partitioner chooses (for a keyless record, the sticky partition).
  std::uint32_t partition_for(const OptionalBytes& key) noexcept;
  std::uint32_t partitions() const noexcept;
  const std::string& topic() const noexcept;
  ProducerStats stats() const noexcept;
  std::size_t max_batch_bytes() const noexcept;

 private:
  struct State;
  explicit TopicProducer(std::unique_ptr<State> state);
  // The partition's ring producer; nullptr when another node leads it (send_remote).
  Result<Producer*> ring_producer(std::uint32_t partition);
  Result<Producer*> attach_or_route(std::uint32_t partition);
  Result<SendResult> send_slow(std::uint32_t partition, const RecordInput& record);
  // One encoded batch, to the ring or to the leader, whichever leads now.
  Result<SendResult> send_encoded(std::uint32_t partition, std::span<const std::byte> batch);
  Result<SendResult> send_remote(std::uint32_t partition, std::span<const std::byte> batch);
  Result<void> wait_for_space(std::uint32_t partition, std::int64_t& deadline_ns);
  Result<void> wait_for_log(std::uint32_t partition, Offset end, Acks acks, std::int64_t deadline_ns, std::int32_t epoch);
  Error log_stopped_error(std::uint32_t partition) const;
  std::unique_ptr<State> state_;
};

}  // namespace weft
