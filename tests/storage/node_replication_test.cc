// Two nodes with segment logs replicate a partition through their rings and logs: the leader's
// log stamps its epoch, the follower's ring takes the leader's batches with their own offsets
// (so local consumers on the follower read them from shared memory), the high watermark
// follows, a node that led and diverged is cut back to its new leader's epoch boundary and gets
// a fresh ring from there, and a follower far behind catches up from the leader's segments.
#include <gtest/gtest.h>

#include <array>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "../temp_dir.h"
#include "test_batches.h"
#include "weft/client.h"
#include "weft/consumer.h"
#include "weft/fabric/record_batch.h"
#include "weft/fabric/replication.h"
#include "weft/node.h"
#include "weft/storage/segment_log.h"
#include "weft/transport/loopback.h"

namespace weft::test {
namespace {

const PartitionId kP{"events", 0};

struct TestNode {
  explicit TestNode(NodeId node_id, bool maintenance_thread = true) : id(node_id), with_maintenance_thread(maintenance_thread) { start(); }
  // Stops the node and starts it again on its folder, its partition's log opened again (the
  // replicator must have forgotten the partition).
  void restart() {
    replica.reset();
    node.reset();
    start();
  }
  void start() {
    NodeOptions o;
    o.open_log = storage::open_segment_logs(dir.path() + "/data");
    o.maintenance_max_interval_us = 500;
    o.start_maintenance_thread = with_maintenance_thread;
    node = Node::start(std::move(o)).value();
    TopicConfig config;
    config.ring_capacity_bytes = std::size_t{1} << 20;
    config.max_batch_bytes = 64 * 1024;
    EXPECT_TRUE(node->create_topic(kP.topic, config).ok());
    replica = node->replica_log(kP.topic, 0).value();
  }
  // A local producer on this node's partition (the ring as it is now).
  // `client_epoch`: the partitionLeaderEpoch the producer writes (Kafka clients write 0 or -1).
  void produce(int batches, int records, std::byte fill, std::int32_t client_epoch = -1) {
    PartitionMemory memory = node->open_partition(kP.topic, 0).value();
    Producer producer = Producer::attach(memory.ring).value();
    for (int i = 0; i < batches; ++i) {
      std::vector<std::byte> batch = make_batch(0, records, 1'700'000'000'000 + i, 200, fill);
      stamp_partition_leader_epoch(batch, client_epoch);
      ClaimStatus status = ClaimStatus::kBackPressured;
      for (int tries = 0; tries < 10'000 && status == ClaimStatus::kBackPressured; ++tries) {
        status = producer.offer(batch);
        if (status == ClaimStatus::kBackPressured) std::this_thread::sleep_for(std::chrono::microseconds(200));
      }
      ASSERT_EQ(status, ClaimStatus::kOk);
    }
  }
  // Every batch the log holds, as bytes.
  std::vector<std::vector<std::byte>> log_batches() {
    std::vector<std::vector<std::byte>> out;
    std::vector<std::byte> chunk(std::size_t{1} << 20);
    Offset at = replica->log_start();
    for (int rounds = 0; rounds < 10'000; ++rounds) {
      Result<std::size_t> got = replica->read(at, chunk);
      if (!got.ok() || *got == 0) break;
      for (std::size_t pos = 0; pos < *got;) {
        const BatchView b = BatchView::parse(std::span(chunk.data() + pos, *got - pos)).value();
        out.emplace_back(b.bytes().begin(), b.bytes().end());
        at = b.last_offset() + 1;
        pos += b.size_bytes();
      }
    }
    return out;
  }
  NodeId id;
  bool with_maintenance_thread;
  TempDir dir;
  std::unique_ptr<Node> node;
  std::unique_ptr<ReplicaLog> replica;
  std::unique_ptr<Replicator> replicator;
};

class NodeReplication : public testing::Test {
 protected:
  void SetUp() override {
    for (NodeId id : {1, 2}) {
      nodes_.push_back(std::make_unique<TestNode>(id));
      nodes_.back()->replicator = Replicator::start(*transport_, id, "node-" + std::to_string(id)).value();
    }
  }
  bool run_until(const std::function<bool()>& done, int timeout_ms = 20'000) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
    while (!done()) {
      if (std::chrono::steady_clock::now() > deadline) return false;
      for (auto& n : nodes_) n->replicator->run_once(1);
    }
    return true;
  }
  // Node `i` again with no maintenance thread, so whatever moves on it is its replicator's
  // doing; it listens at a new address, which this returns.
  std::string without_maintenance_thread(std::size_t i) {
    const NodeId id = nodes_[i]->id;
    const std::string address = "node-" + std::to_string(id) + "b";
    nodes_[i] = std::make_unique<TestNode>(id, false);
    nodes_[i]->replicator = Replicator::start(*transport_, id, address).value();
    return address;
  }
  TestNode& a() { return *nodes_[0]; }
  TestNode& b() { return *nodes_[1]; }

  std::unique_ptr<Transport> transport_ = make_loopback_transport(make_loopback_network());
  std::vector<std::unique_ptr<TestNode>> nodes_;
};

TEST_F(NodeReplication, AFollowersRingAndLogTakeTheLeadersBatchesWithTheirOffsetsAndEpoch) {
  ASSERT_TRUE(a().replicator->lead(kP, a().replica.get(), 1, {1, 2}, {1, 2}).ok());
  ASSERT_TRUE(b().replicator->follow(kP, b().replica.get(), 1, 1, "node-1").ok());
  // A consumer on the follower's host, reading its ring from the start.
  PartitionMemory follower_ring = b().node->open_partition(kP.topic, 0).value();
  Consumer local = Consumer::attach(follower_ring.ring, StartAt::kEarliest).value();
  a().produce(300, 5, std::byte{0x11});
  const Offset end{1'500};
  ASSERT_TRUE(run_until([&] { return a().replicator->high_watermark(kP) == end; }))
      << "hw " << a().replicator->high_watermark(kP)->value << ", follower end " << b().replica->log_end().value;
  ASSERT_TRUE(run_until([&] { return b().replicator->high_watermark(kP) == end && b().replica->durable_end() == end; }));
  const auto leader = a().log_batches();
  const auto follower = b().log_batches();
  ASSERT_EQ(leader.size(), 300u);
  EXPECT_EQ(follower, leader) << "the follower's log holds the leader's bytes";
  EXPECT_EQ(BatchView::parse(leader.back()).value().partition_leader_epoch(), 1) << "the leader's log stamped its epoch";
  // The follower's local consumer read them all from shared memory.
  std::int64_t records = 0;
  RingBatch batch;
  for (int polls = 0; polls < 100'000 && records < 1'500; ++polls) {
    if (local.poll(batch) == PollStatus::kOk) records += BatchView::parse(batch.bytes).value().record_count();
  }
  EXPECT_EQ(records, 1'500);
}

// A follower writes what it appends to its log from the replicator's thread and reports it at
// once: its durable end, and so the leader's high watermark, never wait for its maintenance pass
// (here there is none). Its high watermark comes with the leader's next write, or alone once the
// stream is quiet.
TEST_F(NodeReplication, AFollowersAppendsAreDurableWithoutItsMaintenancePass) {
  (void)without_maintenance_thread(1);
  ASSERT_TRUE(a().replicator->lead(kP, a().replica.get(), 1, {1, 2}, {1, 2}).ok());
  ASSERT_TRUE(b().replicator->follow(kP, b().replica.get(), 1, 1, "node-1").ok());
  a().produce(20, 5, std::byte{0x22});
  const Offset end{100};
  ASSERT_TRUE(run_until([&] { return b().replica->durable_end() == end; })) << "follower durable end " << b().replica->durable_end().value;
  ASSERT_TRUE(run_until([&] { return a().replicator->high_watermark(kP) == end; }));
  ASSERT_TRUE(run_until([&] { return b().replicator->high_watermark(kP) == end; })) << "the quiet stream's high watermark";
  EXPECT_EQ(b().log_batches(), a().log_batches());
}

// The leader's replicator writes its own log after pushing new batches, so its durable end, and
// with the follower's the high watermark, moves without the leader's maintenance pass (here
// there is none): an acks=all produce waits on two threads fewer.
TEST_F(NodeReplication, ALeadersOwnLogIsWrittenByItsReplicatorWithoutItsMaintenancePass) {
  const std::string leader = without_maintenance_thread(0);
  ASSERT_TRUE(a().replicator->lead(kP, a().replica.get(), 1, {1, 2}, {1, 2}).ok());
  ASSERT_TRUE(b().replicator->follow(kP, b().replica.get(), 1, 1, leader).ok());
  a().produce(20, 5, std::byte{0x33});
  const Offset end{100};
  ASSERT_TRUE(run_until([&] { return a().replica->durable_end() == end; })) << "leader durable end " << a().replica->durable_end().value;
  ASSERT_TRUE(run_until([&] { return a().replicator->high_watermark(kP) == end; })) << "hw " << a().replicator->high_watermark(kP)->value;
  const auto written = a().log_batches();
  ASSERT_EQ(written.size(), 20u);
  EXPECT_EQ(b().log_batches(), written);
  // More batches later: written too (the replicator writes only when producers claimed more).
  a().produce(10, 5, std::byte{0x34});
  ASSERT_TRUE(run_until([&] { return a().replicator->high_watermark(kP) == Offset{150}; }));
  EXPECT_EQ(a().log_batches().size(), 30u);
}

// A client's partitionLeaderEpoch (librdkafka writes 0) never reaches a follower: the leader's
// ring stamps the epoch it leads at, so the follower's history names only epochs that were led
// (an epoch 0 learned from clients once made a divergence check cut acknowledged records).
TEST_F(NodeReplication, AClientsPartitionLeaderEpochNeverReachesAFollowersHistory) {
  ASSERT_TRUE(a().replicator->lead(kP, a().replica.get(), 3, {1, 2}, {1, 2}).ok());
  ASSERT_TRUE(b().replicator->follow(kP, b().replica.get(), 3, 1, "node-1").ok());
  a().produce(10, 2, std::byte{0x33}, 0);
  ASSERT_TRUE(run_until([&] { return b().replica->durable_end() == Offset{20}; }));
  for (const auto& batch : b().log_batches()) EXPECT_EQ(BatchView::parse(batch).value().partition_leader_epoch(), 3);
  ASSERT_EQ(b().replica->epochs().entries().size(), 1u);
  EXPECT_EQ(b().replica->epochs().entries().front().epoch, 3);
  EXPECT_EQ(b().replica->epochs().entries().front().start, Offset{0});
}

TEST_F(NodeReplication, ANodeThatLedAndDivergedIsCutBackToItsNewLeadersEpoch) {
  ASSERT_TRUE(a().replicator->lead(kP, a().replica.get(), 1, {1, 2}, {1, 2}).ok());
  ASSERT_TRUE(b().replicator->follow(kP, b().replica.get(), 1, 1, "node-1").ok());
  a().produce(100, 5, std::byte{0x11});
  ASSERT_TRUE(run_until([&] { return a().replicator->high_watermark(kP) == Offset{500}; }));
  // Node 2 stops following; node 1 takes 20 more batches that never reach it...
  b().replicator->forget(kP);
  a().produce(20, 5, std::byte{0xee});
  ASSERT_TRUE(run_until([&] { return read_log_progress(a().node->open_partition(kP.topic, 0)->ring).written == Offset{600}; }));
  // ... then node 2 leads at epoch 2 and takes its own batches, and node 1 follows it.
  a().replicator->forget(kP);
  ASSERT_TRUE(b().replicator->lead(kP, b().replica.get(), 2, {1, 2}, {2}).ok());
  b().produce(30, 3, std::byte{0x22});
  ASSERT_TRUE(a().replicator->follow(kP, a().replica.get(), 2, 2, "node-2").ok());
  ASSERT_TRUE(run_until([&] { return a().replica->log_end() == Offset{590} && a().replica->durable_end() == Offset{590}; }))
      << "node 1 ends at " << a().replica->log_end().value;
  const auto leader = b().log_batches();
  const auto follower = a().log_batches();
  EXPECT_EQ(follower, leader) << "no byte of node 1's divergent suffix is left";
  ASSERT_EQ(a().replica->epochs().entries().size(), 2u);
  EXPECT_EQ(a().replica->epochs().entries()[1].epoch, 2);
  EXPECT_EQ(a().replica->epochs().entries()[1].start, Offset{500});
  // The history is kept beside the log: a replica opened again takes it from there
  EXPECT_EQ(a().node->replica_log(kP.topic, 0).value()->epochs().entries(), a().replica->epochs().entries());
  // Node 1's new ring starts at the cut: a consumer from the earliest offset there sees only
  // the new leader's batches.
  PartitionMemory fresh = a().node->open_partition(kP.topic, 0).value();
  Consumer local = Consumer::attach(fresh.ring, StartAt::kEarliest).value();
  RingBatch batch;
  std::int64_t first = -1;
  for (int polls = 0; polls < 100'000 && first < 0; ++polls) {
    if (local.poll(batch) == PollStatus::kOk) first = BatchView::parse(batch.bytes).value().base_offset().value;
  }
  EXPECT_EQ(first, 500);
}

TEST(NodeReplicationDurability, ACutBackLeavesWhatWasNotSyncedUnsynced) {
  // Given a partition synced at most once an hour (its interval starts with it), ten records
  // written and none synced
  TempDir dir;
  NodeOptions o;
  o.open_log = storage::open_segment_logs(dir.path() + "/data");
  o.maintenance_max_interval_us = 500;
  std::unique_ptr<Node> node = Node::start(std::move(o)).value();
  TopicConfig config;
  config.ring_capacity_bytes = std::size_t{1} << 20;
  config.max_batch_bytes = 64 * 1024;
  config.fsync = FsyncPolicy::kInterval;
  config.fsync_interval_ms = 3'600'000;
  ASSERT_TRUE(node->create_topic("hourly", config).ok());
  std::unique_ptr<ReplicaLog> replica = node->replica_log("hourly", 0).value();
  PartitionMemory memory = node->open_partition("hourly", 0).value();
  Producer producer = Producer::attach(memory.ring).value();
  for (int i = 0; i < 2; ++i) ASSERT_EQ(producer.offer(make_batch(0, 5, 1'700'000'000'000 + i, 200, std::byte{1})), ClaimStatus::kOk);
  for (int i = 0; i < 2'000 && read_log_progress(memory.ring).written != Offset{10}; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  ASSERT_EQ(read_log_progress(memory.ring).written, Offset{10});
  EXPECT_EQ(replica->durable_end(), Offset{0});

  // When a truncation to the log's end cuts nothing (the leader knew no epoch past it)
  ASSERT_TRUE(replica->truncate(Offset{10}).ok());

  // Expect the ten still not durable (before, the rewind called them durable, and the leader's
  // high watermark counted records that were in this node's page cache only), passes after it too
  EXPECT_EQ(replica->durable_end(), Offset{0});
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  EXPECT_EQ(replica->durable_end(), Offset{0});

  // And a cut, which syncs the segment it cuts, leaves the new end durable
  ASSERT_TRUE(replica->truncate(Offset{5}).ok());
  EXPECT_EQ(replica->durable_end(), Offset{5});
}

TEST_F(NodeReplication, ALocalConsumerOfANodeCutBackReadsOnInItsNewRingFromTheNewLeader) {
  // Given node 1 leading, and a local consumer on node 1 that read all the in-sync replicas hold
  ASSERT_TRUE(a().replicator->lead(kP, a().replica.get(), 1, {1, 2}, {1, 2}).ok());
  ASSERT_TRUE(b().replicator->follow(kP, b().replica.get(), 1, 1, "node-1").ok());
  a().produce(100, 5, std::byte{0x11});
  ASSERT_TRUE(run_until([&] { return a().replicator->high_watermark(kP) == Offset{500}; }));
  std::shared_ptr<Client> client = Client::embedded(*a().node);
  TopicConsumer consumer = TopicConsumer::create(client).value();
  ASSERT_TRUE(consumer.assign(kP.topic, {0}, SeekTo::earliest()).ok());
  std::vector<std::pair<std::int64_t, std::byte>> read;  // each record's offset and first value byte
  std::optional<Error> failed;
  auto poll_some = [&] {
    Result<PollResult> polled = consumer.poll(0);
    if (!polled.ok()) {
      failed = polled.error();
      return;
    }
    for (const ConsumedRecord& r : polled->records)
      read.emplace_back(r.offset.value, r.value && !r.value->empty() ? r.value->front() : std::byte{0});
  };
  ASSERT_TRUE(run_until([&] {
    poll_some();
    return read.size() >= 500 || failed;
  }));
  ASSERT_FALSE(failed) << failed->message;

  // When node 1 takes 20 batches no other node gets (past the high watermark: the consumer sees
  // none), then node 2 leads at epoch 2 with 30 of its own and node 1 follows it, cut back to 500
  b().replicator->forget(kP);
  a().produce(20, 5, std::byte{0xee});
  ASSERT_TRUE(run_until([&] {
    poll_some();
    return read_log_progress(a().node->open_partition(kP.topic, 0)->ring).written == Offset{600};
  }));
  a().replicator->forget(kP);
  ASSERT_TRUE(b().replicator->lead(kP, b().replica.get(), 2, {1, 2}, {2}).ok());
  b().produce(30, 3, std::byte{0x22});
  ASSERT_TRUE(a().replicator->follow(kP, a().replica.get(), 2, 2, "node-2").ok());

  // Expect the consumer to read on in node 1's new ring: the new leader's records from 500, and
  // nothing of the suffix that was cut
  ASSERT_TRUE(run_until([&] {
    poll_some();
    return read.size() >= 590 || failed;
  })) << "the consumer read " << read.size() << " records and stopped (still on the ring the cut replaced?)";
  ASSERT_FALSE(failed) << failed->message;
  ASSERT_EQ(read.size(), 590u);
  for (std::size_t i = 0; i < read.size(); ++i) {
    ASSERT_EQ(read[i].first, static_cast<std::int64_t>(i));
    ASSERT_EQ(read[i].second, i < 500 ? std::byte{0x11} : std::byte{0x22}) << "offset " << i;
  }
}

TEST_F(NodeReplication, AFollowerFarBehindCatchesUpFromTheLeadersSegments) {
  // Landing regions far smaller than the backlog, so the leader reads its segments with only the
  // room left before each wrap of the region (where a batch that does not fit must say so).
  ReplicationOptions small;
  small.region_bytes = 256 * 1024;
  small.max_write_bytes = 64 * 1024;
  for (auto& n : nodes_) {
    n->replicator.reset();
    n->replicator = Replicator::start(*transport_, n->id, "small-" + std::to_string(n->id), small).value();
  }
  // Given a leader whose ring (1 MiB) long since dropped the start of its log (~3 MB of batches)
  ASSERT_TRUE(a().replicator->lead(kP, a().replica.get(), 1, {1, 2}, {1}).ok());
  a().produce(3'000, 5, std::byte{0x33});
  ASSERT_TRUE(run_until([&] { return read_log_progress(a().node->open_partition(kP.topic, 0)->ring).written == Offset{15'000}; }));
  ASSERT_GT(a().node->open_partition(kP.topic, 0)->ring.reuse_limit().offset.value, 0) << "the ring still holds the log's start";
  // When a follower starts from nothing
  ASSERT_TRUE(b().replicator->follow(kP, b().replica.get(), 1, 1, "small-1").ok());
  // Then it holds the leader's log, byte for byte
  ASSERT_TRUE(run_until([&] { return b().replica->log_end() == Offset{15'000} && b().replica->durable_end() == Offset{15'000}; }, 60'000))
      << "the follower ends at " << b().replica->log_end().value << " (" << (b().replicator->status().empty() ? std::string("no status") : b().replicator->status().front().state) << ")";
  EXPECT_EQ(b().log_batches(), a().log_batches());
}


// Large batches (which pushes point at in the leader's ring: see the pin test below) and small
// ones (copied) mixed in the same writes: the follower's log ends byte for byte as the leader's
// while producers lap the leader's ring several times.
TEST_F(NodeReplication, MixedLargeAndSmallBatchesReachTheFollowerByteForByteWhileTheLeadersRingLaps) {
  ASSERT_TRUE(a().replicator->lead(kP, a().replica.get(), 1, {1, 2}, {1, 2}).ok());
  ASSERT_TRUE(b().replicator->follow(kP, b().replica.get(), 1, 1, "node-1").ok());
  std::int64_t end = 0;
  for (int round = 0; round < 8; ++round) {
    a().produce(8, 150, static_cast<std::byte>(0x40 + round));  // ~35 KiB each, 280 KiB a round
    a().produce(20, 5, static_cast<std::byte>(0x60 + round));
    end += 8 * 150 + 20 * 5;
    ASSERT_TRUE(run_until([&] { return a().replicator->high_watermark(kP) == Offset{end}; }))
        << "round " << round << ": hw " << a().replicator->high_watermark(kP)->value;
  }
  ASSERT_GT(a().node->open_partition(kP.topic, 0)->ring.reuse_limit().offset.value, 0) << "the leader's ring was lapped";
  ASSERT_TRUE(run_until([&] { return b().replica->durable_end() == Offset{end}; }));
  const auto leader = a().log_batches();
  ASSERT_EQ(leader.size(), 8u * 28u);
  EXPECT_EQ(b().log_batches(), leader);
}

// A push points at large batches where the ring holds them; its pin keeps producers off those
// bytes (they are back-pressured instead) until it is released, however far the log has gone.
TEST_F(NodeReplication, APushsPinKeepsProducersOffTheBatchesItPointsAtUntilReleased) {
  TestNode& n = a();
  n.produce(2, 150, std::byte{0x41});
  n.produce(3, 5, std::byte{0x42});
  PartitionMemory memory = n.node->open_partition(kP.topic, 0).value();
  const std::span<const std::byte> ring_bytes = memory.memory->bytes();
  auto in_ring = [&](std::span<const std::byte> piece) {
    return piece.data() >= ring_bytes.data() && piece.data() + piece.size() <= ring_bytes.data() + ring_bytes.size();
  };
  std::vector<std::byte> staging(std::size_t{1} << 20);
  std::array<std::span<const std::byte>, kLinkMaxGather> pieces;
  PushHold hold;
  PushRead read;
  // The pin is not taken while the node's pass holds the log lock (the push copies then): ask again.
  for (int tries = 0; tries < 1'000 && !hold; ++tries) {
    Result<PushRead> got = n.replica->read_for_push(Offset{0}, staging, pieces, hold);
    ASSERT_TRUE(got.ok()) << got.error().message;
    read = *got;
    if (!hold) std::this_thread::sleep_for(std::chrono::microseconds(50));
  }
  ASSERT_TRUE(hold) << "a pin within 1 000 tries";
  ASSERT_EQ(read.next, Offset{315});
  ASSERT_EQ(read.pieces, 3u) << "two batches in place, three small ones copied into one entry";
  EXPECT_TRUE(in_ring(pieces[0]));
  EXPECT_TRUE(in_ring(pieces[1]));
  EXPECT_EQ(pieces[2].data(), staging.data());
  std::vector<std::byte> gathered;
  for (std::size_t i = 0; i < read.pieces; ++i) gathered.insert(gathered.end(), pieces[i].begin(), pieces[i].end());
  std::vector<std::byte> logged;
  for (const auto& batch : n.log_batches()) logged.insert(logged.end(), batch.begin(), batch.end());
  EXPECT_EQ(gathered, logged) << "the gather list is the log's bytes";
  EXPECT_EQ(read.bytes, logged.size());
  const std::vector<std::byte> pinned(pieces[0].begin(), pieces[0].end());

  // Producers fill the ring and stop at the pin, though the log writer took everything.
  Producer producer = Producer::attach(memory.ring).value();
  const std::vector<std::byte> big = make_batch(0, 150, 1'800'000'000'000, 200, std::byte{0x43});
  auto offer_until_held_back = [&](int& offered) {
    int held_back_ms = 0;
    for (int tries = 0; tries < 5'000 && held_back_ms < 200 && offered < 100; ++tries) {
      if (producer.offer(big) == ClaimStatus::kOk) {
        ++offered;
        held_back_ms = 0;
      } else {
        n.node->maintain();  // a pass now, not whenever a busy machine runs the node's thread
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
        ++held_back_ms;
      }
    }
  };
  int offered = 0;
  offer_until_held_back(offered);
  EXPECT_LE(offered, 32) << "a 1 MiB ring holds ~31 such batches: producers were held back at the pin";
  EXPECT_GT(offered, 20);
  EXPECT_EQ(std::vector<std::byte>(pieces[0].begin(), pieces[0].end()), pinned) << "the pinned batch is intact";

  // Released, the space is reused.
  hold.release();
  int more = 0;
  offer_until_held_back(more);
  EXPECT_GT(more, 10);
}

TEST_F(NodeReplication, AReplicaTakesItsSavedEpochHistoryAndReadsTheLogThroughOnlyWithoutOne) {
  ASSERT_TRUE(a().replicator->lead(kP, a().replica.get(), 3, {1}, {1}).ok());
  a().produce(40, 5, std::byte{0x33});
  ASSERT_TRUE(run_until([&] { return a().replica->durable_end() == Offset{200}; }));
  const std::vector<EpochStart> scanned = {{3, Offset{0}}};
  EXPECT_EQ(a().node->replica_log(kP.topic, 0).value()->epochs().entries(), scanned);
  a().replicator->forget(kP);

  // lead() saved it with the log, which wrote no file before a roll: a start reads the log through
  const std::string checkpoint = a().dir.path() + "/data/" + kP.topic + "-0/leader-epoch-checkpoint";
  a().restart();
  EXPECT_FALSE(std::filesystem::exists(checkpoint));
  EXPECT_EQ(a().replica->epochs().entries(), scanned);

  // A saved history is taken as it is (so a start reads no segment the recovery point vouches
  // for), less what lies past the log's end
  std::ofstream(checkpoint, std::ios::trunc) << "weft-leader-epochs 1\n3\n2 0\n3 100\n9 200\n";
  a().restart();
  const std::vector<EpochStart> saved = {{2, Offset{0}}, {3, Offset{100}}};
  EXPECT_EQ(a().replica->epochs().entries(), saved);
  {  // ... and the epoch past the end gone from the file at once: other epochs' batches may come there
    std::ifstream file(checkpoint);
    EXPECT_EQ(std::string(std::istreambuf_iterator<char>(file), {}), "weft-leader-epochs 1\n2\n2 0\n3 100\n");
  }

  // A mangled one, or none, and the log is read through
  for (const char* damage : {"weft-leader-epochs 1\n5\n", "weft-leader-epochs 1\n2\n4 0\n3 10\n", ""}) {
    if (*damage == '\0') {
      std::filesystem::remove(checkpoint);
    } else {
      std::ofstream(checkpoint, std::ios::trunc) << damage;
    }
    a().restart();
    EXPECT_EQ(a().replica->epochs().entries(), scanned) << damage;
  }
}
}  // namespace
}  // namespace weft::test
