// Three nodes in one process, each a Node with segment logs, a ClusterNode over TCP links and a
// shared metadata store: a replicated topic is created once and lands on every replica; a
// leader's acknowledged records (below the high watermark) survive its crash, again and again,
// with none duplicated; a drained node hands its leaderships over before it leaves; a replica's
// topic made slowly holds no other partition's replication, nor takes a role of a partition
// moved away meanwhile; and a topic deleted (and made again) leaves nothing of itself on any
// replica, even one that was down meanwhile.
#include "weft/cluster_node.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "../held_logs.h"
#include "forwarding_log.h"
#include "../temp_dir.h"
#include "test_batches.h"
#include "weft/fabric/record_batch.h"
#include "weft/storage/segment_log.h"
#include "weft/transport/tcp.h"

namespace weft::test {
namespace {

using Clock = std::chrono::steady_clock;

struct Member {
  NodeId id = 0;
  std::unique_ptr<TempDir> dir = std::make_unique<TempDir>();
  std::unique_ptr<Node> node;
  std::unique_ptr<ClusterNode> cluster;
};

class ClusterNodeTest : public testing::Test {
 protected:
  // `wrap_logs`: around the node's log opener (a test's held or failing disk); `dir`: the data
  // directory of a node that ran before.
  void start(NodeId id, const std::function<OpenPartitionLog(OpenPartitionLog)>& wrap_logs = {}, std::unique_ptr<TempDir> dir = nullptr) {
    Member m;
    m.id = id;
    if (dir != nullptr) m.dir = std::move(dir);
    NodeOptions o;
    storage::use_segment_logs(o, m.dir->path() + "/data");
    o.metadata_dir = m.dir->path() + "/topics";  // as weftd keeps them: topics come back after a restart
    if (wrap_logs) o.open_log = wrap_logs(std::move(o.open_log));
    o.maintenance_max_interval_us = 500;
    m.node = Node::start(std::move(o)).value();
    ClusterNodeOptions c;
    c.cluster.cluster = "test";
    c.cluster.self.id = id;
    c.cluster.self.kafka_address = "127.0.0.1:" + std::to_string(19000 + id);
    c.cluster.lease_ttl_s = 1;
    c.replication_listen = "127.0.0.1:0";
    c.replication.replica_lag_max_ms = 2'000;
    auto started = ClusterNode::start(*m.node, *transport_, store_, c);
    ASSERT_TRUE(started.ok()) << started.error().message;
    m.cluster = std::move(started.value());
    members_.push_back(std::move(m));
  }

  // A crash as the cluster sees it: no drain; returns once its lease ran out (1 s). Its data
  // directory stays.
  void crash(NodeId id) {
    Member* m = by_id(id);
    ASSERT_NE(m, nullptr);
    m->cluster.reset();
    m->node.reset();
    ASSERT_TRUE(eventually([&] { return !read_cluster(*store_, "test").value().nodes.contains(id); }));
  }
  // Starts a crashed node again on its data directory.
  void restart(NodeId id) {
    auto crashed = std::find_if(members_.begin(), members_.end(), [&](const Member& m) { return m.id == id && m.node == nullptr; });
    ASSERT_NE(crashed, members_.end());
    std::unique_ptr<TempDir> dir = std::move(crashed->dir);
    members_.erase(crashed);
    start(id, {}, std::move(dir));
  }

  // Whether every live member's copy of "orders" has `partitions` partitions, all empty (a topic
  // just made).
  bool orders_empty_on_all(std::uint32_t partitions = 1) {
    for (Member& m : members_) {
      if (m.node == nullptr) continue;
      Result<TopicInfo> info = m.node->describe_topic("orders");
      if (!info.ok() || info->partitions.size() != partitions) return false;
      for (const PartitionStats& p : info->partitions)
        if (p.end_offset != Offset{0} || p.log_end_offset != Offset{0}) return false;
    }
    return true;
  }
  // The end offsets of every live member's copy of "orders", for failure messages.
  std::string orders_ends() {
    std::string out;
    for (Member& m : members_) {
      if (m.node == nullptr) continue;
      out += " node " + std::to_string(m.id) + ":";
      if (Result<TopicInfo> info = m.node->describe_topic("orders"); info.ok())
        for (const PartitionStats& p : info->partitions) out += " " + std::to_string(p.end_offset.value);
    }
    return out;
  }

  // Expects every live member's log of "orders" `partition` to hold one batch below `end`, at
  // offset 0, with `fill`'s values and none of `stale`'s.
  void expect_only_the_new_batch(std::uint32_t partition, Offset end, std::byte fill, std::byte stale) {
    const std::vector<std::byte> fresh_value(100, fill);
    const std::vector<std::byte> stale_value(100, stale);
    for (Member& m : members_) {
      if (m.node == nullptr) continue;
      const std::vector<std::vector<std::byte>> held = log_batches(m, partition, end);
      ASSERT_EQ(held.size(), 1u) << "node " << m.id;
      EXPECT_EQ(BatchView::parse(held[0]).value().base_offset(), Offset{0}) << "node " << m.id;
      EXPECT_NE(std::search(held[0].begin(), held[0].end(), fresh_value.begin(), fresh_value.end()), held[0].end()) << "node " << m.id;
      EXPECT_EQ(std::search(held[0].begin(), held[0].end(), stale_value.begin(), stale_value.end()), held[0].end())
          << "node " << m.id << " holds a record of the deleted topic";
    }
  }

  Member* by_id(NodeId id) {
    for (Member& m : members_) {
      if (m.id == id && m.cluster != nullptr) return &m;
    }
    return nullptr;
  }
  Member& any() {
    for (Member& m : members_) {
      if (m.cluster != nullptr) return m;
    }
    return members_.front();
  }

  // Whether every member replicates `topic`'s partition 0, a leader elected and `isr` replicas in sync.
  bool replicated_on_all(const char* topic, std::size_t isr) {
    for (Member& m : members_) {
      auto view = m.cluster->partition(topic, 0);
      if (!view || view->leader < 0 || !view->replica_here || view->isr.size() != isr) return false;
    }
    return true;
  }

  // Nodes 1 and 2 (their log openers wrapped) and "orders" replicated on both, five batches
  // acknowledged; returns the small topic settings it used.
  TopicConfig two_nodes_replicating_orders(const std::function<OpenPartitionLog(OpenPartitionLog)>& wrap_logs) {
    for (NodeId id : {1, 2}) start(id, wrap_logs);
    TopicConfig config;
    config.ring_capacity_bytes = std::size_t{1} << 20;
    config.max_batch_bytes = 64 * 1024;
    EXPECT_TRUE(any().cluster->create_topic("orders", 1, 2, config).ok());
    EXPECT_TRUE(eventually([&] { return replicated_on_all("orders", 2); }));
    (void)produce_acked(0, 5, std::byte{1});
    return config;
  }

  // Nodes 1 and 2 with no controller among them (the store says node 99 is, for good), and
  // "orders" of `partitions` partitions replicated on both, its record and states (`state`: node
  // 1 leading at epoch 1) written by hand as a controller would. Returns its settings.
  TopicConfig orders_by_hand_on_two_nodes(std::uint32_t partitions, PartitionState& state) {
    TopicConfig config;
    config.ring_capacity_bytes = std::size_t{1} << 20;
    config.max_batch_bytes = 64 * 1024;
    EXPECT_TRUE(store_->put("/weft/test/controller", "99").ok());
    for (NodeId id : {1, 2}) start(id);
    EXPECT_TRUE(create_cluster_topic(*store_, "test", TopicRecord{"orders", partitions, 2, topic_config_text(config)}).ok());
    state.replicas = {1, 2};
    state.leader = 1;
    state.leader_epoch = 1;
    state.isr = {1, 2};
    state.topic_id = read_cluster(*store_, "test").value().topics.at("orders").id;
    for (std::uint32_t p = 0; p < partitions; ++p)
      EXPECT_TRUE(store_->put("/weft/test/partitions/orders/" + std::to_string(p), encode_partition(state)).ok());
    return config;
  }

  static bool eventually(const std::function<bool()>& done, int timeout_ms = 20'000) {
    const auto deadline = Clock::now() + std::chrono::milliseconds(timeout_ms);
    while (!done()) {
      if (Clock::now() > deadline) return false;
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    return true;
  }

  // Produces `batches` batches of 4 records on the partition's leader (a local producer on its
  // ring) and waits until the high watermark covers them: Kafka's acks=all. Returns the end.
  Offset produce_acked(std::uint32_t partition, int batches, std::byte fill) {
    const NodeId leader = any().cluster->partition("orders", partition)->leader;
    Member* m = by_id(leader);
    EXPECT_NE(m, nullptr);
    if (m == nullptr) return Offset{-1};
    // The new leader's replication thread may not have taken the role yet (its follower's
    // writer still holds the ring), or takes it after we attached to a ring not yet stamped with
    // its epoch (the claim is then fenced): a Kafka producer would retry on NOT_LEADER the same way.
    Offset last{-1};
    ClaimStatus status = ClaimStatus::kFenced;
    for (int attempt = 0; attempt < 20 && status == ClaimStatus::kFenced; ++attempt) {
      std::optional<Producer> attached;
      EXPECT_TRUE(eventually([&] {
        Result<PartitionMemory> memory = m->node->open_partition("orders", partition);
        if (!memory.ok()) return false;  // the topic is not created here yet
        Result<Producer> p = Producer::attach(memory->ring);
        if (p.ok()) attached.emplace(std::move(p.value()));
        return attached.has_value();
      }));
      if (!attached) return Offset{-1};
      for (int i = 0; i < batches; ++i) {
        const std::vector<std::byte> batch = make_batch(0, 4, 1'700'000'000'000 + i, 100, fill);
        status = ClaimStatus::kBackPressured;
        for (int tries = 0; tries < 20'000 && status == ClaimStatus::kBackPressured; ++tries) {
          status = attached->offer(batch, &last);
          if (status == ClaimStatus::kBackPressured) std::this_thread::sleep_for(std::chrono::microseconds(100));
        }
        if (status == ClaimStatus::kFenced) break;
        EXPECT_EQ(status, ClaimStatus::kOk);
      }
    }
    EXPECT_EQ(status, ClaimStatus::kOk);
    const Offset end = last + 4;
    EXPECT_TRUE(eventually([&] {
      auto view = m->cluster->partition("orders", partition);
      return view && view->high_watermark >= end;
    })) << "acks=all: the high watermark never reached " << end.value;
    return end;
  }

  // Every batch the node's log holds below `end`, as bytes.
  static std::vector<std::vector<std::byte>> log_batches(Member& m, std::uint32_t partition, Offset end) {
    std::vector<std::vector<std::byte>> out;
    auto replica = m.node->replica_log("orders", partition).value();
    std::vector<std::byte> chunk(std::size_t{1} << 20);
    Offset at = replica->log_start();
    for (int rounds = 0; rounds < 10'000 && at < end; ++rounds) {
      Result<std::size_t> got = replica->read(at, chunk);
      if (!got.ok() || *got == 0) break;
      for (std::size_t pos = 0; pos < *got && at < end;) {
        const BatchView b = BatchView::parse(std::span(chunk.data() + pos, *got - pos)).value();
        out.emplace_back(b.bytes().begin(), b.bytes().end());
        at = b.last_offset() + 1;
        pos += b.size_bytes();
      }
    }
    return out;
  }

  std::shared_ptr<MetadataStore> store_ = make_memory_metadata_store();
  std::unique_ptr<Transport> transport_ = make_tcp_transport();
  std::vector<Member> members_;
};

TEST_F(ClusterNodeTest, AcknowledgedRecordsSurviveLeaderCrashesAndNoneIsDuplicated) {
  for (NodeId id : {1, 2, 3}) start(id);
  TopicConfig config;
  config.ring_capacity_bytes = std::size_t{1} << 20;
  config.max_batch_bytes = 64 * 1024;
  ASSERT_TRUE(any().cluster->create_topic("orders", 1, 3, config).ok());
  ASSERT_TRUE(eventually([&] { return replicated_on_all("orders", 3); }));
  Offset acked = produce_acked(0, 50, std::byte{1});
  std::vector<std::vector<std::byte>> reference = log_batches(*by_id(any().cluster->partition("orders", 0)->leader), 0, acked);
  // Kill the leader twice; each time a new leader takes over, every acknowledged batch is there
  // once, and it takes new writes.
  for (int round = 0; round < 2; ++round) {
    const auto view = any().cluster->partition("orders", 0).value();
    Member* leader = by_id(view.leader);
    ASSERT_NE(leader, nullptr);
    const auto killed_at = Clock::now();
    leader->cluster.reset();  // a crash as the cluster sees it: no drain, the lease runs out
    leader->node.reset();
    ASSERT_TRUE(eventually([&] {
      auto now = any().cluster->partition("orders", 0);
      return now && now->leader >= 0 && now->leader != view.leader && now->leader_epoch > view.leader_epoch && by_id(now->leader) != nullptr;
    })) << "no new leader after the crash of node " << view.leader;
    const Offset more = produce_acked(0, 10, std::byte{static_cast<unsigned char>(2 + round)});
    const auto served_ms = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - killed_at).count();
    std::printf("weft: round %d: node %d crashed; node %d leads at epoch %d and acknowledged new writes %lld ms later\n", round, view.leader,
                any().cluster->partition("orders", 0)->leader, any().cluster->partition("orders", 0)->leader_epoch,
                static_cast<long long>(served_ms));
    Member& now_leader = *by_id(any().cluster->partition("orders", 0)->leader);
    std::vector<std::vector<std::byte>> held = log_batches(now_leader, 0, more);
    ASSERT_GE(held.size(), reference.size());
    for (std::size_t i = 0; i < reference.size(); ++i) {
      // The same records at the same offsets (the epoch stamp may differ only where the batch was
      // re-stamped by no one: leaders stamp their own producers' batches only).
      ASSERT_EQ(held[i], reference[i]) << "acknowledged batch " << i << " differs after round " << round;
    }
    std::int64_t expected = 0;
    for (const auto& b : held) {
      const BatchView v = BatchView::parse(b).value();
      ASSERT_EQ(v.base_offset().value, expected) << "a gap or a duplicate";
      expected = v.last_offset().value + 1;
    }
    reference = held;
    acked = more;
    // The crashed node comes back empty-handed only in the next round's arithmetic: it stays down.
  }
}

TEST_F(ClusterNodeTest, AReplicasTopicMadeSlowlyHoldsNoOtherPartitionsReplication) {
  // Given two nodes whose logs of topics named "slow..." open only when the test lets them (a
  // slow disk), and a topic replicated on both
  auto held = std::make_shared<HeldLogs>();
  HeldLogs::LetGoAtEnd let_go_at_end{*held};  // before the nodes stop, whatever fails
  const TopicConfig config = two_nodes_replicating_orders(HeldLogs::wrapper(held));
  // When a topic is made whose logs the disk holds, on both nodes
  ASSERT_TRUE(any().cluster->create_topic("slow", 1, 2, config).ok());
  ASSERT_TRUE(held->wait_entered(1));
  // Expect the other topic's records still replicated and acknowledged (acks=all) meanwhile,
  // its follower kept in the in-sync set
  const Offset end = produce_acked(0, 20, std::byte{2});
  EXPECT_EQ(end, Offset{100});
  EXPECT_EQ(any().cluster->partition("orders", 0)->isr.size(), 2u);
  // And the held topic replicated on both once its logs open
  held->let_go();
  EXPECT_TRUE(eventually([&] { return replicated_on_all("slow", 2); }));
}

// Logs of topics named "burst..." whose every epoch history save takes 40 ms, as file system
// calls do on a journal that other threads' syncs keep busy; counts the saves.
struct SlowSaves {
  std::atomic<int> saves{0};

  class Log : public ForwardingLog {
   public:
    Log(std::unique_ptr<PartitionLog> inner, std::shared_ptr<SlowSaves> counts) : ForwardingLog(std::move(inner)), counts_(std::move(counts)) {}
    Result<void> save_epochs(std::span<const EpochStart> epochs, EpochSave how) override {
      std::this_thread::sleep_for(std::chrono::milliseconds(40));
      counts_->saves.fetch_add(1);
      return ForwardingLog::save_epochs(epochs, how);
    }

   private:
    std::shared_ptr<SlowSaves> counts_;
  };

  static std::function<OpenPartitionLog(OpenPartitionLog)> wrapper(std::shared_ptr<SlowSaves> counts) {
    return [counts](OpenPartitionLog inner) -> OpenPartitionLog {
      return [counts, inner](std::string_view topic, std::uint32_t partition, const TopicConfig& config) -> Result<std::unique_ptr<PartitionLog>> {
        WEFT_TRY(std::unique_ptr<PartitionLog> log, inner(topic, partition, config));
        if (!topic.starts_with("burst")) return log;
        return std::unique_ptr<PartitionLog>(std::make_unique<Log>(std::move(log), counts));
      };
    };
  }
};

TEST_F(ClusterNodeTest, ABurstOfNewRolesTakesTurnsWithTheReplicationOfThePartitionsAlreadyServed) {
  // Given two nodes whose logs of topics named "burst..." take 40 ms per epoch history save, and
  // a topic replicated on both
  auto slow = std::make_shared<SlowSaves>();
  const TopicConfig config = two_nodes_replicating_orders(SlowSaves::wrapper(slow));
  // When a topic of 40 partitions replicated on both is made: 120 roles' saves, 2.4 s of them on
  // each node's replication thread
  ASSERT_TRUE(any().cluster->create_topic("burst", 40, 2, config).ok());
  ASSERT_TRUE(eventually([&] { return slow->saves.load() >= 1; }));
  // Expect the other topic's writes acknowledged (acks=all) while the roles are being taken, not
  // once they all are
  const Offset end = produce_acked(0, 1, std::byte{2});
  const int saves_at_ack = slow->saves.load();
  EXPECT_EQ(end, Offset{24});
  ASSERT_TRUE(eventually([&] {
    for (Member& m : members_) {
      const std::vector<ReplicaStatus> roles = m.cluster->replicas();
      if (std::count_if(roles.begin(), roles.end(), [](const ReplicaStatus& r) { return r.partition.topic == "burst"; }) != 40) return false;
    }
    return true;
  }));
  const int saves_in_all = slow->saves.load();
  EXPECT_LT(saves_at_ack, saves_in_all / 2) << "acknowledged after " << saves_at_ack << " of the burst's " << saves_in_all << " saves";
}

// Refuses the opening of logs of topics named "flaky..." the first `refusals` times (a disk that
// said no), noting when each attempt came.
struct FlakyLogs {
  int refusals = 1;
  std::atomic<int> attempts{0};
  std::mutex mutex;
  std::vector<std::chrono::steady_clock::time_point> attempted_at;

  static std::function<OpenPartitionLog(OpenPartitionLog)> wrapper(std::shared_ptr<FlakyLogs> flaky) {
    return [flaky](OpenPartitionLog inner) -> OpenPartitionLog {
      return [flaky, inner](std::string_view topic, std::uint32_t partition, const TopicConfig& config) -> Result<std::unique_ptr<PartitionLog>> {
        if (topic.starts_with("flaky")) {
          {
            std::lock_guard lock(flaky->mutex);
            flaky->attempted_at.push_back(std::chrono::steady_clock::now());
          }
          if (flaky->attempts.fetch_add(1) < flaky->refusals) return Error{Errc::kIo, "the test's disk refused"};
        }
        return inner(topic, partition, config);
      };
    };
  }
  // The time between attempt `i` and the one before it.
  std::chrono::milliseconds gap_before(std::size_t i) {
    std::lock_guard lock(mutex);
    return std::chrono::duration_cast<std::chrono::milliseconds>(attempted_at.at(i) - attempted_at.at(i - 1));
  }
};

TEST_F(ClusterNodeTest, AReplicasTopicThatCouldNotBeMadeIsTriedAgainLessAndLessOften) {
  // Given two nodes, the first of which fails its first two tries at a "flaky..." topic's log
  auto flaky = std::make_shared<FlakyLogs>();
  flaky->refusals = 2;
  start(1, FlakyLogs::wrapper(flaky));
  start(2);
  TopicConfig config;
  config.ring_capacity_bytes = std::size_t{1} << 20;
  config.max_batch_bytes = 64 * 1024;
  // When such a topic is made, replicated on both
  ASSERT_TRUE(any().cluster->create_topic("flaky", 1, 2, config).ok());
  ASSERT_TRUE(eventually([&] { return flaky->attempts.load() >= 1; }));
  // Expect no second try for a second (not one per replication pass), a third no sooner than two
  // seconds after that, then the topic made there and replicated on both
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  EXPECT_EQ(flaky->attempts.load(), 1);
  EXPECT_TRUE(eventually([&] { return replicated_on_all("flaky", 2); }));
  EXPECT_TRUE(eventually([&] {
    for (Member& m : members_) {
      const std::vector<ReplicaStatus> roles = m.cluster->replicas();
      if (std::none_of(roles.begin(), roles.end(), [](const ReplicaStatus& r) { return r.partition.topic == "flaky"; })) return false;
    }
    return true;
  }));
  ASSERT_EQ(flaky->attempts.load(), 3);
  EXPECT_GE(flaky->gap_before(1), std::chrono::seconds(1));
  EXPECT_GE(flaky->gap_before(2), std::chrono::seconds(2));
}

TEST_F(ClusterNodeTest, AReplicaMovedAwayWhileItsTopicIsBeingMadeTakesNoRoleOnceItIsMade) {
  // Given three nodes, the third of which opens logs of topics named "slow..." only when the test
  // lets it, and a topic replicated on all three whose local copy the third is making
  auto held = std::make_shared<HeldLogs>();
  HeldLogs::LetGoAtEnd let_go_at_end{*held};
  start(1);
  start(2);
  start(3, HeldLogs::wrapper(held));
  TopicConfig config;
  config.ring_capacity_bytes = std::size_t{1} << 20;
  config.max_batch_bytes = 64 * 1024;
  ASSERT_TRUE(any().cluster->create_topic("slow", 1, 3, config).ok());
  ASSERT_TRUE(held->wait_entered(1));
  ASSERT_TRUE(eventually([&] {  // its role, with a leader elected, waits on the third node
    auto view = by_id(3)->cluster->partition("slow", 0);
    return view && view->leader >= 0;
  }));
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  // When the partition is moved off the third node meanwhile, and the making then ends
  ASSERT_TRUE(reassign_partition(*store_, "test", PartitionId{"slow", 0}, {1, 2}).ok());
  ASSERT_TRUE(eventually([&] {
    auto view = by_id(3)->cluster->partition("slow", 0);
    return view && view->replicas.size() == 2 && !view->replica_here;
  }));
  held->let_go();
  ASSERT_TRUE(eventually([&] { return by_id(3)->node->describe_topic("slow").ok(); }));
  std::this_thread::sleep_for(std::chrono::milliseconds(300));  // passes in which a stale role would be taken
  // Expect no role of it taken there: the assignment that moved it replaced the one waiting
  for (const ReplicaStatus& r : by_id(3)->cluster->replicas())
    EXPECT_NE(r.partition.topic, "slow") << "node 3 took a role of a partition moved off it (epoch " << r.leader_epoch << ")";
}

TEST_F(ClusterNodeTest, ATopicDeletedAndMadeAgainAtOnceStartsEmptyOnEveryReplica) {
  // Given a topic replicated on two nodes, 20 records acknowledged
  const TopicConfig config = two_nodes_replicating_orders({});
  // When it is deleted and made again under its name at once (a script's `weft topic delete`
  // then `weft topic create`), before the controller has removed the deleted one's partitions
  ASSERT_TRUE(any().cluster->delete_topic("orders").ok());
  ASSERT_TRUE(any().cluster->create_topic("orders", 1, 2, config).ok());
  // Expect every replica's copy to be the new topic's, empty, and its first write at offset 0
  EXPECT_TRUE(eventually([&] { return orders_empty_on_all() && replicated_on_all("orders", 2); }, 10'000))
      << "a replica kept the deleted topic's log; end offsets:" << orders_ends();
  const Offset end = produce_acked(0, 1, std::byte{9});
  EXPECT_EQ(end, Offset{4});
  expect_only_the_new_batch(0, end, std::byte{9}, std::byte{1});
}

TEST_F(ClusterNodeTest, ATopicWhoseBatchesCannotFitOneReplicationWriteIsRefused) {
  start(1, {});
  TopicConfig config;
  config.ring_capacity_bytes = std::size_t{16} << 20;
  config.max_batch_bytes = (std::size_t{1} << 20) + 4096;  // past the 1 MiB write
  // Expect the create refused, saying why (before, it was made, and its first batch over 1 MiB
  // stopped every follower's stream for good)
  const Result<void> refused = any().cluster->create_topic("huge", 1, 1, config);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.error().code, Errc::kInvalidArgument);
  EXPECT_NE(refused.error().message.find("replication write"), std::string::npos) << refused.error().message;
  config.max_batch_bytes = std::size_t{1} << 20;
  EXPECT_TRUE(any().cluster->create_topic("large", 1, 1, config).ok());
}

TEST_F(ClusterNodeTest, ANodeKeepsItsCopyOfATopicTheStoreLacksAndMakesNoWritesToIt) {
  // Given a topic replicated on two nodes, the second of which crashes
  two_nodes_replicating_orders({});
  crash(2);
  // When the topic is gone from the store meanwhile (deleted, or a store restored from an older
  // backup: the node cannot tell), and the node comes back on its data directory
  ASSERT_TRUE(by_id(1)->cluster->delete_topic("orders").ok());
  ASSERT_TRUE(eventually([&] { return read_cluster(*store_, "test").value().partitions.empty(); }));
  restart(2);
  // Expect its copy kept, records and all (deleting it would lose a topic the store only forgot)
  std::this_thread::sleep_for(std::chrono::milliseconds(300));  // passes of its replication thread
  Result<TopicInfo> kept = by_id(2)->node->describe_topic("orders");
  ASSERT_TRUE(kept.ok()) << kept.error().message;
  EXPECT_EQ(kept->partitions[0].log_end_offset, Offset{20});
  // And no producer there taking writes: no role of it will come
  Result<PartitionMemory> memory = by_id(2)->node->open_partition("orders", 0);
  ASSERT_TRUE(memory.ok());
  Result<Producer> producer = Producer::attach(memory->ring);  // refused, or fenced at its claim
  Offset at{-1};
  EXPECT_TRUE(!producer.ok() || producer->offer(make_batch(0, 1, 1'700'000'000'000), &at) == ClaimStatus::kFenced)
      << "a write landed at " << at.value;
}

TEST_F(ClusterNodeTest, ATopicMadeAgainWhileAReplicaWasDownIsNotServedFromItsOldCopy) {
  // Given a topic of two partitions replicated on two nodes, records acknowledged on both
  // partitions, and the second node crashed
  for (NodeId id : {1, 2}) start(id);
  TopicConfig config;
  config.ring_capacity_bytes = std::size_t{1} << 20;
  config.max_batch_bytes = 64 * 1024;
  ASSERT_TRUE(any().cluster->create_topic("orders", 2, 2, config).ok());
  ASSERT_TRUE(eventually([&] {
    for (Member& m : members_)
      for (std::uint32_t p = 0; p < 2; ++p)
        if (auto view = m.cluster->partition("orders", p); !view || view->leader < 0 || !view->replica_here || view->isr.size() != 2) return false;
    return true;
  }));
  for (std::uint32_t p = 0; p < 2; ++p) produce_acked(p, 5, std::byte{1});
  crash(2);
  // When the topic is deleted and made again under its name meanwhile (assigned once the node is
  // back, as it needs two live nodes: so the node with the old copy leads one of its partitions),
  // and the node comes back on its data directory
  ASSERT_TRUE(by_id(1)->cluster->delete_topic("orders").ok());
  ASSERT_TRUE(eventually([&] { return read_cluster(*store_, "test").value().partitions.empty(); }));
  // (written to the store as it is: ClusterNode::create_topic refuses a factor the live nodes lack)
  ASSERT_TRUE(create_cluster_topic(*store_, "test", TopicRecord{"orders", 2, 2, topic_config_text(config)}).ok());
  restart(2);
  // Expect both copies the new topic's, and its first writes at offset 0 on both nodes
  EXPECT_TRUE(eventually([&] {
    if (!orders_empty_on_all(2)) return false;
    for (Member& m : members_)
      for (std::uint32_t p = 0; p < 2; ++p)
        if (auto view = m.cluster->partition("orders", p); !view || view->leader < 0 || !view->replica_here || view->isr.size() != 2) return false;
    return true;
  }, 10'000)) << "a replica kept the deleted topic's log; end offsets:" << orders_ends();
  for (std::uint32_t p = 0; p < 2; ++p) {
    const Offset end = produce_acked(p, 1, std::byte{9});
    EXPECT_EQ(end, Offset{4}) << "partition " << p;
    expect_only_the_new_batch(p, end, std::byte{9}, std::byte{1});
  }
}

TEST_F(ClusterNodeTest, ALateStateOfADeletedTopicsPartitionLeavesTheRolesOfTheTopicMadeAgainUnderItsName) {
  // Given two nodes, neither of them the controller (the store says another is), and a topic of
  // two partitions replicated on both, its states written as a controller would
  PartitionState state;
  ASSERT_NO_FATAL_FAILURE(orders_by_hand_on_two_nodes(2, state));
  const auto both_partitions_replicated = [&] {
    for (Member& m : members_)
      for (std::uint32_t p = 0; p < 2; ++p)
        if (auto view = m.cluster->partition("orders", p); !view || view->leader != 1 || !view->replica_here || view->isr.size() != 2) return false;
    return true;
  };
  ASSERT_TRUE(eventually(both_partitions_replicated));
  for (std::uint32_t p = 0; p < 2; ++p) produce_acked(p, 2, std::byte{1});
  // When a state of a third partition of an earlier topic of the name comes after them (a
  // deleted topic's, which its controller had not yet removed)
  PartitionState stale = state;
  stale.topic_id = "ffffffffffffffffffffffffffffffff";
  ASSERT_TRUE(store_->put("/weft/test/partitions/orders/2", encode_partition(stale)).ok());
  ASSERT_TRUE(eventually([&] {
    for (Member& m : members_)
      if (!m.cluster->partition("orders", 2)) return false;
    return true;
  })) << "the late state never reached the nodes";
  std::this_thread::sleep_for(std::chrono::milliseconds(300));  // passes of their replication threads
  // Expect every role of the topic kept on both nodes and none of the stale partition taken, and
  // acks=all writes to both partitions going on
  for (Member& m : members_) {
    std::set<std::uint32_t> held;
    for (const ReplicaStatus& r : m.cluster->replicas())
      if (r.partition.topic == "orders") held.insert(r.partition.partition);
    EXPECT_EQ(held, (std::set<std::uint32_t>{0, 1})) << "node " << m.id;
  }
  EXPECT_TRUE(both_partitions_replicated());
  for (std::uint32_t p = 0; p < 2; ++p) EXPECT_EQ(produce_acked(p, 1, std::byte{2}), Offset{12}) << "partition " << p;
}

TEST_F(ClusterNodeTest, ACopyOfATopicDeletedAndMadeAgainWithoutThisNodeGoesWhenItComesBack) {
  // Given a topic replicated on two nodes, records acknowledged, and the second node crashed
  const TopicConfig config = two_nodes_replicating_orders({});
  const std::string copy = members_.back().dir->path() + "/data/orders-0";
  ASSERT_TRUE(std::filesystem::exists(copy));
  crash(2);
  // When the topic is deleted and made again meanwhile on the first node alone, and the second
  // comes back on its data directory
  ASSERT_TRUE(by_id(1)->cluster->delete_topic("orders").ok());
  ASSERT_TRUE(eventually([&] { return read_cluster(*store_, "test").value().partitions.empty(); }));
  ASSERT_TRUE(by_id(1)->cluster->create_topic("orders", 1, 1, config).ok());
  ASSERT_TRUE(eventually([&] {
    auto view = by_id(1)->cluster->partition("orders", 0);
    return view && view->leader == 1;
  }));
  restart(2);
  // Expect its copy of the deleted topic gone, its log with it (no role of the new topic comes
  // to it to replace the copy)
  // (The topic leaves the node's list before its logs go, so both are waited for.)
  EXPECT_TRUE(eventually([&] { return !by_id(2)->node->describe_topic("orders").ok() && !std::filesystem::exists(copy); }, 10'000))
      << "the copy of the deleted topic, or its log, stayed";
}

TEST_F(ClusterNodeTest, ACopyWhoseRolesALateStateDroppedGoesWhenTheTopicMadeAgainLeavesThisNodeOut) {
  // Given two nodes, neither of them the controller (the store says another is), and a topic
  // replicated on both, its state written as a controller would
  PartitionState old;
  const TopicConfig config = orders_by_hand_on_two_nodes(1, old);
  ASSERT_FALSE(old.topic_id.empty());
  const std::string state_key = "/weft/test/partitions/orders/0";
  ASSERT_TRUE(eventually([&] { return replicated_on_all("orders", 2); }));
  produce_acked(0, 2, std::byte{1});
  const std::string copy = by_id(2)->dir->path() + "/data/orders-0";
  ASSERT_TRUE(std::filesystem::exists(copy));
  // When the topic is made again under its name (its new record), a late state of the old
  // topic's partition comes (an in-sync set its leader committed; the second node lets go of its
  // role), and then the new topic's state, on the first node alone
  const std::string fresh_id = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
  ASSERT_TRUE(store_->put("/weft/test/topics/orders", encode_topic(TopicRecord{"orders", 1, 1, topic_config_text(config), fresh_id})).ok());
  ASSERT_TRUE(eventually([&] {
    for (Member& m : members_)
      if (auto record = m.cluster->topic("orders"); !record || record->id != fresh_id) return false;
    return true;
  }));
  PartitionState late = old;
  late.isr = {1};
  ASSERT_TRUE(store_->put(state_key, encode_partition(late)).ok());
  ASSERT_TRUE(eventually([&] {
    auto view = by_id(2)->cluster->partition("orders", 0);
    return view && view->isr.size() == 1;
  }));
  std::this_thread::sleep_for(std::chrono::milliseconds(300));  // passes of the replication threads
  PartitionState fresh;
  fresh.replicas = {1};
  fresh.leader = 1;
  fresh.leader_epoch = 1;
  fresh.isr = {1};
  fresh.topic_id = fresh_id;
  ASSERT_TRUE(store_->put(state_key, encode_partition(fresh)).ok());
  // Expect the second node's copy gone, its log with it, and the first node's replaced by an
  // empty copy of the new topic
  // (The topic leaves the node's list before its logs go, so both are waited for.)
  EXPECT_TRUE(eventually([&] { return !by_id(2)->node->describe_topic("orders").ok() && !std::filesystem::exists(copy); }, 10'000))
      << "the copy of the deleted topic, or its log, stayed";
  EXPECT_TRUE(eventually([&] {
    Result<TopicInfo> info = by_id(1)->node->describe_topic("orders");
    return info.ok() && info->config.cluster_topic_id == "test/" + fresh_id && info->partitions[0].end_offset == Offset{0};
  }, 10'000));
}

TEST_F(ClusterNodeTest, ADrainedNodeHandsItsLeadershipsOverBeforeItLeaves) {
  for (NodeId id : {1, 2, 3}) start(id);
  TopicConfig config;
  config.ring_capacity_bytes = std::size_t{1} << 20;
  config.max_batch_bytes = 64 * 1024;
  ASSERT_TRUE(any().cluster->create_topic("orders", 3, 2, config).ok());
  ASSERT_TRUE(eventually([&] {
    for (std::uint32_t p = 0; p < 3; ++p) {
      auto view = any().cluster->partition("orders", p);
      if (!view || view->leader < 0 || view->isr.size() != 2) return false;
    }
    return true;
  }));
  for (std::uint32_t p = 0; p < 3; ++p) produce_acked(p, 5, std::byte{7});
  Member& leaving = *by_id(any().cluster->partition("orders", 0)->leader);
  ASSERT_TRUE(leaving.cluster->drain(10'000).ok());
  for (std::uint32_t p = 0; p < 3; ++p) EXPECT_NE(leaving.cluster->partition("orders", p)->leader, leaving.id);
  const NodeId gone = leaving.id;
  leaving.cluster.reset();
  leaving.node.reset();
  // Its registration went at once (no lease to wait for), and the partitions it led still serve.
  ASSERT_TRUE(eventually([&] {
    for (const NodeRecord& n : any().cluster->nodes()) {
      if (n.id == gone) return false;
    }
    return true;
  }, 3'000));
  for (std::uint32_t p = 0; p < 3; ++p) produce_acked(p, 3, std::byte{8});
}


TEST_F(ClusterNodeTest, CommittedOffsetsOutliveTheNodeThatTookTheCommit) {
  start(1);
  start(2);
  ASSERT_TRUE(eventually([&] { return any().cluster->nodes().size() == 2; }));
  TopicConfig config;
  config.ring_capacity_bytes = std::size_t{1} << 20;
  config.max_batch_bytes = 64 * 1024;
  Result<void> created = any().cluster->create_topic("orders", 2, 2, config);
  ASSERT_TRUE(created.ok()) << created.error().message;
  ASSERT_TRUE(eventually([&] { return by_id(1)->node->open_partition("orders", 1).ok() && by_id(2)->node->open_partition("orders", 1).ok(); }));
  auto offsets_of = [](Member& m) {
    Result<std::vector<CommittedOffset>> got = m.node->fetch_offsets("billing", "");
    EXPECT_TRUE(got.ok()) << got.error().message;
    std::vector<std::pair<std::int64_t, std::string>> out;
    if (got.ok())
      for (const CommittedOffset& o : *got) out.emplace_back(o.offset.value, o.topic + "/" + std::to_string(o.partition) + "/" + o.metadata);
    return out;
  };
  // Given a commit taken by node 1 (its metadata with bytes a text format must carry)
  const std::string binary("m\0 \n\xff", 5);
  const std::vector<CommittedOffset> first = {{"orders", 0, Offset{42}, binary, 0}, {"orders", 1, Offset{7}, "", 0}};
  ASSERT_TRUE(by_id(1)->node->commit_offsets("billing", first).ok());
  // Expect node 2, with no copy of its own, to answer with it
  const std::vector<std::pair<std::int64_t, std::string>> expected = {{42, "orders/0/" + binary}, {7, "orders/1/"}};
  EXPECT_EQ(offsets_of(*by_id(2)), expected);
  // And a later commit through node 2 to change only the partition it names
  const std::vector<CommittedOffset> second = {{"orders", 0, Offset{50}, "", 0}};
  ASSERT_TRUE(by_id(2)->node->commit_offsets("billing", second).ok());
  const std::vector<std::pair<std::int64_t, std::string>> merged = {{50, "orders/0/"}, {7, "orders/1/"}};
  EXPECT_EQ(offsets_of(*by_id(1)), merged);
  // And many groups read at once (a metrics scrape: one read of the store) to give each its own,
  // a group whose id starts with another's kept apart, invalid and unknown ids given none
  const std::vector<CommittedOffset> eu = {{"orders", 1, Offset{3}, "eu", 0}};
  ASSERT_TRUE(by_id(2)->node->commit_offsets("billing-eu", eu).ok());
  const std::vector<std::string> groups = {"billing-eu", "billing", "bad/group", "never"};
  Result<std::vector<std::vector<CommittedOffset>>> many = by_id(1)->node->fetch_offsets_of(groups);
  ASSERT_TRUE(many.ok()) << many.error().message;
  ASSERT_EQ(many->size(), 4u);
  ASSERT_EQ((*many)[0].size(), 1u);
  EXPECT_EQ((*many)[0][0].offset, Offset{3});
  EXPECT_EQ((*many)[0][0].metadata, "eu");
  ASSERT_EQ((*many)[1].size(), 2u);
  EXPECT_EQ((*many)[1][0].offset, Offset{50});
  EXPECT_EQ((*many)[1][1].offset, Offset{7});
  EXPECT_TRUE((*many)[2].empty());
  EXPECT_TRUE((*many)[3].empty());
  // And a bad commit to write nothing anywhere
  const std::vector<CommittedOffset> bad = {{"orders", 0, Offset{-5}, "", 0}};
  EXPECT_EQ(by_id(1)->node->commit_offsets("billing", bad).error().code, Errc::kInvalidArgument);
  EXPECT_EQ(by_id(1)->node->commit_offsets("bad/group", second).error().code, Errc::kInvalidArgument);

  // When a week and a day have passed, the coordinator of billing-eu (node 2 here) sweeps with
  // billing kept (it has members)
  constexpr std::int64_t kWeek = 7 * 86'400'000LL;
  const std::int64_t later = wall_clock_ms() + kWeek + 86'400'000LL;
  auto keep_billing = [](std::string_view g) { return g == "billing"; };
  auto all_mine = [](std::string_view) { return true; };
  Result<std::vector<std::string>> expired = by_id(2)->node->expire_offsets(later, kWeek, keep_billing, all_mine);
  ASSERT_TRUE(expired.ok()) << expired.error().message;
  // Expect billing-eu's offsets gone from the store (node 1 sees none) and billing's kept
  EXPECT_EQ(*expired, std::vector<std::string>{"billing-eu"});
  EXPECT_TRUE(by_id(1)->node->fetch_offsets("billing-eu", "").value().empty());
  EXPECT_EQ(offsets_of(*by_id(1)), merged);
  // And a node that does not coordinate a group leaves the store's copy to the one that does
  // (these nodes keep no copy of their own: no offsets_dir)
  auto none_mine = [](std::string_view) { return false; };
  expired = by_id(1)->node->expire_offsets(later, kWeek, {}, none_mine);
  ASSERT_TRUE(expired.ok()) << expired.error().message;
  EXPECT_TRUE(expired->empty());
  EXPECT_EQ(offsets_of(*by_id(1)), merged);
  // And nothing younger than the retention goes
  expired = by_id(2)->node->expire_offsets(wall_clock_ms(), kWeek, {}, all_mine);
  ASSERT_TRUE(expired.ok());
  EXPECT_TRUE(expired->empty());
  EXPECT_EQ(offsets_of(*by_id(2)), merged);

  // When node 1 is gone for good, node 2 still has every committed offset
  Member& one = *by_id(1);
  one.cluster.reset();
  one.node.reset();
  EXPECT_EQ(offsets_of(*by_id(2)), merged);
  // And deleting the topic deletes its groups' offsets (a topic made again starts with none)
  ASSERT_TRUE(by_id(2)->cluster->delete_topic("orders").ok());
  EXPECT_TRUE(offsets_of(*by_id(2)).empty());
}
}  // namespace
}  // namespace weft::test
