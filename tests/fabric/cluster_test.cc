// The control plane on the in-memory metadata store: registration, the controller election,
// replica assignment across racks, leader election with epochs when a leader leaves, dies or
// drains, in-sync set commits, reassignment, and a store that goes away.
#include "weft/fabric/cluster.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "weft/cluster_node.h"
#include "weft/fabric/metadata_store.h"

namespace weft::test {
namespace {

// A store that can be made unreachable, as etcd behind a cut link.
class FlakyStore final : public MetadataStore {
 public:
  explicit FlakyStore(std::shared_ptr<MetadataStore> inner) : inner_(std::move(inner)) {}
  bool down = false;
  std::chrono::milliseconds write_delay{0};
  Error gone() const { return Error{Errc::kUnavailable, "the store is unreachable (test)"}; }
  Result<std::int64_t> put(std::string_view k, std::string_view v, std::int64_t lease) override {
    if (down) return gone();
    return inner_->put(k, v, lease);
  }
  Result<std::optional<KeyValue>> get(std::string_view k) override {
    if (down) return gone();
    return inner_->get(k);
  }
  Result<RangeResult> list(std::string_view p) override {
    if (down) return gone();
    return inner_->list(p);
  }
  Result<bool> compare_and_put(std::string_view k, std::int64_t r, std::string_view v, std::int64_t lease, const WriteGuard* guard) override {
    if (down) return gone();
    std::this_thread::sleep_for(write_delay);  // an etcd whose disk syncs slowly
    return inner_->compare_and_put(k, r, v, lease, guard);
  }
  Result<bool> erase(std::string_view k, std::int64_t r, const WriteGuard* guard) override {
    if (down) return gone();
    return inner_->erase(k, r, guard);
  }
  Result<std::int64_t> grant_lease(std::int64_t ttl) override {
    if (down) return gone();
    return inner_->grant_lease(ttl);
  }
  Result<void> keep_alive(std::int64_t lease) override {
    if (down) return gone();
    return inner_->keep_alive(lease);
  }
  Result<void> revoke_lease(std::int64_t lease) override {
    if (down) return gone();
    return inner_->revoke_lease(lease);
  }
  Result<std::unique_ptr<MetadataWatch>> watch(std::string_view p, std::int64_t from) override {
    if (down) return gone();
    return inner_->watch(p, from);
  }

 private:
  std::shared_ptr<MetadataStore> inner_;
};

NodeRecord node(NodeId id, std::string rack = "") {
  NodeRecord n;
  n.id = id;
  n.replication_address = "127.0.0.1:" + std::to_string(9100 + id);
  n.kafka_address = "127.0.0.1:" + std::to_string(9200 + id);
  n.rack = std::move(rack);
  return n;
}

class ClusterTest : public testing::Test {
 protected:
  ClusterMember& join(NodeId id, std::string rack = "", std::int64_t rebalance_ms = 0) {
    ClusterOptions o;
    o.cluster = "test";
    o.self = node(id, std::move(rack));
    o.lease_ttl_s = 1;
    o.leader_rebalance_interval_ms = rebalance_ms;
    auto m = ClusterMember::join(store_, o);
    EXPECT_TRUE(m.ok()) << m.error().message;
    members_.push_back(std::move(m.value()));
    return *members_.back();
  }

  // Runs every member until `done` or 10 s.
  bool run_until(const std::function<bool()>& done, int timeout_ms = 10'000) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
    while (!done()) {
      if (std::chrono::steady_clock::now() > deadline) return false;
      for (auto& m : members_) {
        if (m != nullptr) m->run_once(5);
      }
    }
    return true;
  }

  // Nodes 1..`nodes`, a controller among them, and topic "t" of one partition on two of them,
  // known to every member: its state.
  PartitionState topic_t_on(NodeId nodes) {
    for (NodeId id = 1; id <= nodes; ++id) join(id);
    EXPECT_TRUE(run_until([&] { return controller() != nullptr; }));
    EXPECT_TRUE(members_[0]->create_topic(TopicRecord{"t", 1, 2, ""}).ok());
    EXPECT_TRUE(run_until([&] {
      return std::all_of(members_.begin(), members_.end(), [](const auto& m) { return m->partitions().size() == 1; });
    }));
    return members_[0]->partitions().at(PartitionId{"t", 0});
  }
  ClusterMember& member(NodeId id) { return *members_[static_cast<std::size_t>(id - 1)]; }

  ClusterMember* controller() {
    for (auto& m : members_) {
      if (m != nullptr && m->is_controller()) return m.get();
    }
    return nullptr;
  }

  std::shared_ptr<FlakyStore> store_ = std::make_shared<FlakyStore>(make_memory_metadata_store());
  std::vector<std::unique_ptr<ClusterMember>> members_;
};

TEST(ClusterRecords, RoundTripAndRefuseGarbage) {
  NodeRecord n = node(4, "rack-b");
  n.draining = true;
  Result<NodeRecord> back = decode_node(4, encode_node(n));
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(back->replication_address, n.replication_address);
  EXPECT_EQ(back->kafka_address, n.kafka_address);
  EXPECT_EQ(back->rack, "rack-b");
  EXPECT_TRUE(back->draining);
  EXPECT_FALSE(decode_node(4, "kafka=x").ok());

  PartitionState s{{3, 1, 2}, 1, 7, {1, 3}, 0, "0123456789abcdef0123456789abcdef"};
  Result<PartitionState> state = decode_partition(encode_partition(s));
  ASSERT_TRUE(state.ok());
  EXPECT_EQ(state->replicas, s.replicas);
  EXPECT_EQ(state->leader, 1);
  EXPECT_EQ(state->leader_epoch, 7);
  EXPECT_EQ(state->isr, s.isr);
  EXPECT_EQ(state->topic_id, s.topic_id);
  // A state written before the topic's id was recorded reads as "" (taken as the current topic's).
  EXPECT_EQ(decode_partition("replicas=1 leader=1 epoch=1 isr=1").value().topic_id, "");
  for (const char* bad : {"", "replicas= leader=1 epoch=1 isr=1", "replicas=1,x leader=1 epoch=1 isr=1", "replicas=1 leader=one epoch=1 isr=1"}) {
    EXPECT_FALSE(decode_partition(bad).ok()) << bad;
  }

  TopicRecord t{"clicks", 12, 3, "retention.ms=1000,segment.bytes=1048576"};
  Result<TopicRecord> topic = decode_topic("clicks", encode_topic(t));
  ASSERT_TRUE(topic.ok());
  EXPECT_EQ(topic->partitions, 12u);
  EXPECT_EQ(topic->replication_factor, 3u);
  EXPECT_EQ(topic->config, t.config);
  EXPECT_EQ(topic->id, "");  // a record made before records had ids
  t.id = "00112233445566778899aabbccddeeff";
  EXPECT_EQ(decode_topic("clicks", encode_topic(t)).value().id, t.id);
  EXPECT_FALSE(decode_topic("clicks", "partitions=0 replication=1").ok());
  // min.insync.replicas is a field of its own, never in the settings text (which nodes from
  // before it refuse whole), and a record without it reads as 1
  EXPECT_EQ(topic->min_insync_replicas, 1u);
  t.min_insync_replicas = 2;
  EXPECT_EQ(encode_topic(t).find("min.insync"), std::string::npos) << encode_topic(t);
  EXPECT_EQ(decode_topic("clicks", encode_topic(t)).value().min_insync_replicas, 2u);
  EXPECT_EQ(topic_config_of(decode_topic("clicks", encode_topic(t)).value(), TopicConfig{}).value().min_insync_replicas, 2u);
  EXPECT_FALSE(decode_topic("clicks", "partitions=1 replication=1 min_isr=0").ok());
  EXPECT_FALSE(decode_topic("clicks", "partitions=1 replication=1 min_isr=two").ok());
}

TEST(AssignReplicas, SpreadsRacksFirstAndLeadersEvenly) {
  std::vector<NodeRecord> nodes = {node(1, "a"), node(2, "a"), node(3, "b"), node(4, "b"), node(5, "c"), node(6, "c")};
  Result<std::vector<std::vector<NodeId>>> assigned = assign_replicas(nodes, 60, 3);
  ASSERT_TRUE(assigned.ok());
  std::map<NodeId, int> leaders, replicas;
  std::map<NodeId, std::string> rack_of;
  for (const NodeRecord& n : nodes) rack_of[n.id] = n.rack;
  for (const auto& r : *assigned) {
    ASSERT_EQ(r.size(), 3u);
    std::set<std::string> racks;
    for (NodeId id : r) {
      racks.insert(rack_of[id]);
      ++replicas[id];
    }
    EXPECT_EQ(racks.size(), 3u) << "every replica on its own rack";
    ++leaders[r.front()];
  }
  for (const auto& [id, count] : leaders) EXPECT_EQ(count, 10) << "node " << id;
  for (const auto& [id, count] : replicas) EXPECT_NEAR(count, 30, 3) << "node " << id;

  EXPECT_EQ(assign_replicas({node(1), node(2)}, 1, 3).error().code, Errc::kInvalidArgument);
  NodeRecord draining = node(3);
  draining.draining = true;
  EXPECT_FALSE(assign_replicas({node(1), node(2), draining}, 1, 3).ok()) << "a draining node takes no new replicas";
}

TEST(ChooseLeader, TakesTheFirstLiveInSyncReplica) {
  std::map<NodeId, NodeRecord> live = {{2, node(2)}, {3, node(3)}};
  EXPECT_EQ(choose_leader(PartitionState{{1, 2, 3}, 1, 1, {1, 2, 3}, 0}, live), 2);
  EXPECT_EQ(choose_leader(PartitionState{{1, 2, 3}, 1, 1, {1, 3}, 0}, live), 3) << "never outside the in-sync set";
  EXPECT_EQ(choose_leader(PartitionState{{1, 2, 3}, 1, 1, {1}, 0}, live), -1);
  live[2].draining = true;
  EXPECT_EQ(choose_leader(PartitionState{{1, 2, 3}, 1, 1, {1, 2, 3}, 0}, live), 3) << "draining nodes last";
  EXPECT_EQ(choose_leader(PartitionState{{1, 2}, 1, 1, {1, 2}, 0}, live), 2) << "... but better than none";
}

TEST_F(ClusterTest, OneControllerAssignsReplicasAndEveryNodeLearnsItsRoles) {
  ClusterMember& a = join(1);
  ClusterMember& b = join(2);
  ClusterMember& c = join(3);
  ASSERT_TRUE(run_until([&] { return controller() != nullptr && a.controller() == b.controller() && b.controller() == c.controller(); }));
  int controllers = 0;
  for (auto& m : members_) controllers += m->is_controller() ? 1 : 0;
  EXPECT_EQ(controllers, 1);
  ASSERT_TRUE(b.create_topic(TopicRecord{"clicks", 6, 3, "retention.ms=60000"}).ok());
  EXPECT_EQ(b.create_topic(TopicRecord{"clicks", 6, 3, ""}).error().code, Errc::kAlreadyExists);
  ASSERT_TRUE(run_until([&] { return a.partitions().size() == 6 && b.partitions().size() == 6 && c.partitions().size() == 6; }));
  std::map<NodeId, int> led;
  for (const auto& [id, s] : a.partitions()) {
    EXPECT_EQ(s.replicas.size(), 3u);
    EXPECT_EQ(s.leader_epoch, 1);
    EXPECT_EQ(s.isr.size(), 3u);
    ++led[s.leader];
  }
  EXPECT_EQ(led.size(), 3u) << "leaders spread";
  // Every node was handed a role for each of the six partitions.
  for (auto& m : members_) {
    std::vector<Assignment> roles = m->take_assignments();
    ASSERT_EQ(roles.size(), 6u) << "node " << m->self();
    for (const Assignment& r : roles) {
      EXPECT_TRUE(r.replica);
      EXPECT_EQ(r.leader, r.state.leader == m->self());
      EXPECT_EQ(r.leader_address, node(r.state.leader).replication_address);
    }
  }
  EXPECT_EQ(a.topics().at("clicks").config, "retention.ms=60000");
}

TEST_F(ClusterTest, ASecondNodeWithTheSameIdIsRefused) {
  join(1);
  ClusterOptions o;
  o.cluster = "test";
  o.self = node(1);
  auto again = ClusterMember::join(store_, o);
  ASSERT_FALSE(again.ok());
  EXPECT_EQ(again.error().code, Errc::kAlreadyExists);
}

TEST_F(ClusterTest, ADeadLeaderIsReplacedFromTheInSyncSetWithANewEpoch) {
  join(1);
  join(2);
  join(3);
  ASSERT_TRUE(run_until([&] { return controller() != nullptr; }));
  ASSERT_TRUE(members_[0]->create_topic(TopicRecord{"t", 3, 3, ""}).ok());
  ASSERT_TRUE(run_until([&] {
    return members_[0]->partitions().size() == 3 && members_[1]->partitions().size() == 3 && members_[2]->partitions().size() == 3;
  }));
  // The node that leads partition 0 dies: no leave, its lease runs out.
  const NodeId dead = members_[0]->partitions().at(PartitionId{"t", 0}).leader;
  for (auto& m : members_) {
    if (m->self() == dead) m.reset();
  }
  ClusterMember* survivor = members_[0] != nullptr ? members_[0].get() : members_[1].get();
  ASSERT_TRUE(run_until([&] {
    for (const auto& [id, s] : survivor->partitions()) {
      if (s.leader == dead || s.leader < 0 || std::count(s.isr.begin(), s.isr.end(), dead) > 0) return false;
    }
    return true;
  }));
  const PartitionState s = survivor->partitions().at(PartitionId{"t", 0});
  EXPECT_EQ(s.leader_epoch, 2);
  EXPECT_EQ(s.isr.size(), 2u);
  EXPECT_EQ(s.replicas.size(), 3u) << "the dead node stays a replica; it comes back as a follower";
  EXPECT_EQ(survivor->nodes().size(), 2u);
}

TEST_F(ClusterTest, LeadershipReturnsToThePreferredReplicaOnceItIsInSyncAgain) {
  join(1, "", 20);
  join(2, "", 20);
  ASSERT_TRUE(run_until([&] { return controller() != nullptr; }));
  ASSERT_TRUE(members_[0]->create_topic(TopicRecord{"t", 1, 2, ""}).ok());
  const PartitionId p{"t", 0};
  ASSERT_TRUE(run_until([&] { return members_[0]->partitions().size() == 1 && members_[1]->partitions().size() == 1; }));
  const NodeId preferred = members_[0]->partitions().at(p).replicas.front();
  const NodeId other = preferred == 1 ? 2 : 1;
  ASSERT_EQ(members_[0]->partitions().at(p).leader, preferred);
  // The preferred leader leaves cleanly: the other replica leads, alone in the in-sync set.
  ClusterMember& leaving = *members_[static_cast<std::size_t>(preferred - 1)];
  ASSERT_TRUE(leaving.drain().ok());
  ClusterMember& staying = *members_[static_cast<std::size_t>(other - 1)];
  ASSERT_TRUE(run_until([&] { return staying.partitions().at(p).leader == other; }));
  leaving.leave();
  members_[static_cast<std::size_t>(preferred - 1)].reset();
  ASSERT_TRUE(run_until([&] { return staying.partitions().at(p).isr == std::vector<NodeId>{other}; }));
  // It comes back: while it is out of the in-sync set, the leadership stays...
  join(preferred, "", 20);
  ASSERT_TRUE(run_until([&] { return members_.back()->partitions().size() == 1; }));
  for (int i = 0; i < 20; ++i)
    for (auto& m : members_)
      if (m != nullptr) m->run_once(5);
  PartitionState now = staying.partitions().at(p);
  EXPECT_EQ(now.leader, other) << "a replica out of sync never leads";
  // ... and once its leader takes it back into the set, the leadership returns to it.
  ASSERT_TRUE(staying.commit_isr(p, now.leader_epoch, {1, 2}, now.isr).value());
  ASSERT_TRUE(run_until([&] { return staying.partitions().at(p).leader == preferred; }));
  EXPECT_EQ(staying.partitions().at(p).leader_epoch, now.leader_epoch + 1);
}

TEST_F(ClusterTest, TheControllerRoleMovesWhenTheControllerLeaves) {
  join(1);
  join(2);
  ASSERT_TRUE(run_until([&] { return controller() != nullptr; }));
  const NodeId first = controller()->self();
  for (auto& m : members_) {
    if (m->self() == first) {
      m->leave();
      m.reset();
    }
  }
  ASSERT_TRUE(run_until([&] { return controller() != nullptr; }));
  EXPECT_NE(controller()->self(), first);
}

TEST_F(ClusterTest, AControllerPassLongerThanTheLeaseRenewsTheLeaseOnTheWay) {
  ClusterMember& one = join(1);
  ASSERT_TRUE(run_until([&] { return controller() != nullptr; }));
  Result<std::unique_ptr<MetadataWatch>> registrations = store_->watch("/weft/test/nodes/", 0);
  ASSERT_TRUE(registrations.ok()) << registrations.error().message;
  // Given a store that takes 10 ms a write, and a topic of 250 partitions: the controller's pass
  // writes 250 states, 2.5 s against a lease of 1 s
  store_->write_delay = std::chrono::milliseconds(10);
  ASSERT_TRUE(create_cluster_topic(*store_, "test", TopicRecord{"wide", 250, 1, ""}).ok());
  // When the pass runs
  ASSERT_TRUE(run_until([&] { return one.partitions().size() == 250; }, 30'000));
  // Expect the node's registration never to have gone (before, its lease lapsed during the pass:
  // its key vanished, and its leaderships would have failed over while it was alive)
  std::vector<WatchEvent> events;
  ASSERT_TRUE((*registrations)->next(events, 0).ok());
  for (const WatchEvent& e : events) EXPECT_NE(e.type, WatchEvent::Type::kDelete) << e.kv.key << " went";
  EXPECT_EQ(controller(), &one);
}

TEST_F(ClusterTest, ADrainingNodeHandsOverItsLeadershipsFirst) {
  join(1);
  join(2);
  join(3);
  ASSERT_TRUE(run_until([&] { return controller() != nullptr; }));
  ASSERT_TRUE(members_[2]->create_topic(TopicRecord{"t", 6, 2, ""}).ok());
  ASSERT_TRUE(run_until([&] { return members_[0]->partitions().size() == 6 && members_[0]->partitions_led() > 0; }));
  ASSERT_TRUE(members_[0]->drain().ok());
  ASSERT_TRUE(run_until([&] { return members_[0]->partitions_led() == 0; }));
  for (const auto& [id, s] : members_[1]->partitions()) EXPECT_NE(s.leader, 1);
  members_[0]->leave();
}

TEST_F(ClusterTest, ALeaderCommitsInSyncSetChangesAtItsEpochOnly) {
  const PartitionState s = topic_t_on(2);
  const PartitionId p{"t", 0};
  ClusterMember& leader = member(s.leader);
  ClusterMember& follower = member(s.leader == 1 ? 2 : 1);
  EXPECT_FALSE(follower.commit_isr(p, s.leader_epoch, {follower.self()}).value()) << "only the leader commits";
  EXPECT_FALSE(leader.commit_isr(p, s.leader_epoch + 1, {leader.self()}).value()) << "a stale or future epoch is refused";
  ASSERT_TRUE(leader.commit_isr(p, s.leader_epoch, {leader.self()}).value());
  ASSERT_TRUE(run_until([&] { return follower.partitions().at(p).isr == std::vector<NodeId>{leader.self()}; }));
  (void)follower.take_assignments();
  ASSERT_TRUE(leader.commit_isr(p, s.leader_epoch, {1, 2}).value());
  ASSERT_TRUE(run_until([&] { return follower.partitions().at(p).isr.size() == 2; }));
  std::vector<Assignment> roles = follower.take_assignments();
  ASSERT_FALSE(roles.empty()) << "a changed in-sync set is a changed role";
  EXPECT_EQ(roles.back().state.isr.size(), 2u);
}

TEST_F(ClusterTest, ACommitTriedAgainAfterItsAnswerWasLostIsAnsweredAsMadeWithTheRevisionThatSaysSo) {
  const PartitionState s = topic_t_on(2);
  const PartitionId p{"t", 0};
  ClusterMember& leader = s.leader == 1 ? *members_[0] : *members_[1];
  // Given a commit made, whose answer said where states reflect it
  std::int64_t first = -1;
  ASSERT_TRUE(leader.commit_isr(p, s.leader_epoch, {leader.self()}, s.isr, "", &first).value());
  std::optional<KeyValue> written = store_->get("/weft/test/partitions/t/0").value();
  ASSERT_TRUE(written.has_value());
  EXPECT_GT(first, s.revision) << "past the state it changed";
  EXPECT_LE(first, written->mod_revision) << "the state written, and later ones";
  // When it is tried again (its answer was lost: a timeout after etcd applied it)
  std::int64_t again = -1;
  // Expect it answered as made, from the state that holds it (before, it was refused as stale,
  // and the leader handed the set from before it, ending its proposal wrongly)
  EXPECT_TRUE(leader.commit_isr(p, s.leader_epoch, {leader.self()}, s.isr, "", &again).value());
  EXPECT_EQ(again, written->mod_revision);
  // And a refusal says from where the state that refused it stands
  std::int64_t refused = -1;
  EXPECT_FALSE(leader.commit_isr(p, s.leader_epoch, {1, 2}, {1, 2}, "", &refused).value());
  EXPECT_EQ(refused, written->mod_revision);
  // And a look after an unanswered try, at a state as the try found it, fences that try off (its
  // write, maybe still in the store, can no longer match) before it answers "not made"
  std::int64_t looked = -1;
  EXPECT_FALSE(leader.commit_isr(p, s.leader_epoch, {1, 2}, {leader.self()}, "", &looked, /*tried_before=*/true).value());
  EXPECT_EQ(looked, written->mod_revision + 1);
  EXPECT_FALSE(store_->compare_and_put("/weft/test/partitions/t/0", written->mod_revision, "late", 0, nullptr).value())
      << "the unanswered try's write could still land";
  EXPECT_EQ(decode_partition(store_->get("/weft/test/partitions/t/0").value()->value).value().isr, std::vector<NodeId>{leader.self()});
}

TEST_F(ClusterTest, ALeaderWhoseCommitWasRefusedIsToldItsRoleIsGoneWhenThePartitionDropsIt) {
  const PartitionState s = topic_t_on(3);
  const PartitionId p{"t", 0};
  ClusterMember& leader = member(s.leader);
  (void)leader.take_assignments();
  // Given the leader's in-sync proposal refused (made against a set the metadata does not hold)
  std::int64_t settled_from = -1;
  ASSERT_FALSE(leader.commit_isr(p, s.leader_epoch, {s.leader}, {s.leader, 99}, s.topic_id, &settled_from).value());
  // When the partition then moves to the two other nodes in one write (a reassignment's last step)
  PartitionState moved = s;
  moved.replicas.clear();
  for (NodeId id : {1, 2, 3})
    if (id != s.leader) moved.replicas.push_back(id);
  moved.isr = moved.replicas;
  moved.leader = moved.replicas.front();
  ++moved.leader_epoch;
  ASSERT_TRUE(store_->compare_and_put("/weft/test/partitions/t/0", s.revision, encode_partition(moved), 0, nullptr).value());
  // Expect the old leader told its role is gone (before, the refusal forgot what it had been
  // given, so no "gone" came: it led on, unreplicated, and its proposal waited for good)
  std::vector<Assignment> roles;
  ASSERT_TRUE(run_until([&] {
    for (Assignment& a : leader.take_assignments()) roles.push_back(std::move(a));
    return std::any_of(roles.begin(), roles.end(), [&](const Assignment& a) { return a.partition == p && !a.replica; });
  }, 3'000)) << "no 'gone' role for the partition";
}

TEST_F(ClusterTest, ALeaderIsHandedTheStateAfterItsCommitEvenWhenItIsTheOneItHadBefore) {
  const PartitionState s = topic_t_on(2);
  const PartitionId p{"t", 0};
  ASSERT_EQ(s.isr.size(), 2u);
  ClusterMember& leader = s.leader == 1 ? *members_[0] : *members_[1];
  (void)leader.take_assignments();
  // The leader commits a set, and before it reads the store again the set is put back (as the
  // controller does for a node whose registration lapsed): the state it then reads is the one it
  // was given before its commit, and it must still be handed it, or it waits for good.
  ASSERT_TRUE(leader.commit_isr(p, s.leader_epoch, {leader.self()}, s.isr).value());
  const std::string key = "/weft/test/partitions/t/0";
  Result<std::optional<KeyValue>> committed = store_->get(key);
  ASSERT_TRUE(committed.ok() && committed->has_value());
  ASSERT_TRUE(store_->compare_and_put(key, (*committed)->mod_revision, encode_partition(s), 0, nullptr).value());
  std::vector<Assignment> roles;
  ASSERT_TRUE(run_until([&] {
    for (Assignment& a : leader.take_assignments()) roles.push_back(std::move(a));
    return !roles.empty();
  }, 3'000)) << "no role followed the leader's commit";
  EXPECT_EQ(roles.back().partition, p);
  EXPECT_EQ(roles.back().state.isr.size(), 2u);
  EXPECT_TRUE(roles.back().leader);
}

TEST_F(ClusterTest, AReassignmentAddsReplicasThenDropsTheOldOnesOnceInSync) {
  join(1);
  join(2);
  join(3);
  ASSERT_TRUE(run_until([&] { return controller() != nullptr; }));
  ASSERT_TRUE(members_[0]->create_topic(TopicRecord{"t", 1, 2, ""}).ok());
  const PartitionId p{"t", 0};
  ASSERT_TRUE(run_until([&] { return members_[0]->partitions().size() == 1; }));
  const PartitionState before = members_[0]->partitions().at(p);
  NodeId outsider = 1;
  while (std::count(before.replicas.begin(), before.replicas.end(), outsider) > 0) ++outsider;
  const NodeId kept = before.replicas[1];  // a follower stays; the leader goes
  EXPECT_EQ(members_[0]->reassign(p, {outsider, outsider}).error().code, Errc::kInvalidArgument);
  EXPECT_EQ(members_[0]->reassign(p, {9}).error().code, Errc::kInvalidArgument);
  ASSERT_TRUE(members_[0]->reassign(p, {kept, outsider}).ok());
  ASSERT_TRUE(run_until([&] { return members_[0]->partitions().at(p).replicas.size() == 3; }));
  // The new replica catches up; its leader commits it into the in-sync set.
  ClusterMember* leader = nullptr;
  for (auto& m : members_) {
    if (m->self() == before.leader) leader = m.get();
  }
  ASSERT_TRUE(leader->commit_isr(p, before.leader_epoch, {before.leader, kept, outsider}).value());
  ASSERT_TRUE(run_until([&] { return members_[0]->partitions().at(p).replicas.size() == 2; }));
  const PartitionState after = members_[0]->partitions().at(p);
  EXPECT_EQ(after.replicas, (std::vector<NodeId>{kept, outsider}));
  EXPECT_EQ(after.leader, kept) << "leadership moved off the dropped replica";
  EXPECT_EQ(after.leader_epoch, before.leader_epoch + 1);
}

TEST_F(ClusterTest, AnUnreachableStoreFreezesTheViewAndHeals) {
  join(1);
  join(2);
  ASSERT_TRUE(run_until([&] { return controller() != nullptr; }));
  ASSERT_TRUE(members_[0]->create_topic(TopicRecord{"t", 2, 2, ""}).ok());
  ASSERT_TRUE(run_until([&] { return members_[1]->partitions().size() == 2; }));
  store_->down = true;
  ASSERT_TRUE(run_until([&] { return !members_[0]->store_reachable() && !members_[1]->store_reachable(); }));
  EXPECT_EQ(members_[1]->partitions().size(), 2u) << "the last view stays";
  EXPECT_NE(members_[1]->store_error().find("unreachable"), std::string::npos);
  EXPECT_EQ(members_[1]->create_topic(TopicRecord{"u", 1, 1, ""}).error().code, Errc::kUnavailable);
  store_->down = false;
  ASSERT_TRUE(run_until([&] { return members_[0]->store_reachable() && members_[1]->store_reachable(); }));
  ASSERT_TRUE(members_[1]->create_topic(TopicRecord{"u", 1, 1, ""}).ok());
  ASSERT_TRUE(run_until([&] { return members_[0]->partitions().size() == 3; }));
}

TEST_F(ClusterTest, ATopicMadeAgainUnderItsNameGetsPartitionsOfItsOwn) {
  // Given a topic replicated on two nodes, its roles taken
  join(1);
  join(2);
  ASSERT_TRUE(run_until([&] { return controller() != nullptr; }));
  ASSERT_TRUE(members_[0]->create_topic(TopicRecord{"t", 1, 2, ""}).ok());
  const PartitionId p{"t", 0};
  ASSERT_TRUE(run_until([&] { return members_[0]->partitions().size() == 1 && members_[1]->partitions().size() == 1; }));
  const PartitionState old = members_[0]->partitions().at(p);
  const std::string old_topic = members_[0]->topics().at("t").id;
  EXPECT_EQ(old_topic.size(), 32u);
  EXPECT_EQ(old.topic_id, old_topic);
  ClusterMember& leader = old.leader == 1 ? *members_[0] : *members_[1];
  (void)leader.take_assignments();
  // When it is deleted and made again before any member (the controller too) ran in between
  ASSERT_TRUE(members_[1]->delete_topic("t").ok());
  ASSERT_TRUE(members_[1]->create_topic(TopicRecord{"t", 1, 2, ""}).ok());
  // Expect the old partition state replaced by one of the new topic's, the old leader handed the
  // new role (its state at epoch 1 as before, but of another topic)
  ASSERT_TRUE(run_until([&] {
    auto now = members_[0]->partitions();
    auto topic = members_[0]->topics();
    return now.contains(p) && topic.contains("t") && topic.at("t").id != old_topic && now.at(p).topic_id == topic.at("t").id;
  })) << "the deleted topic's partition state was kept for the new one";
  const PartitionState fresh = members_[0]->partitions().at(p);
  EXPECT_EQ(fresh.leader_epoch, 1);
  std::vector<Assignment> roles;
  ASSERT_TRUE(run_until([&] {
    for (Assignment& a : leader.take_assignments()) roles.push_back(std::move(a));
    return !roles.empty() && roles.back().replica && roles.back().state.topic_id == fresh.topic_id;
  }, 3'000)) << "no role of the new topic was handed out";
  // And a leader of the old topic at the same epoch unable to change its in-sync set, where the
  // new topic's leader can
  ClusterMember& new_leader = fresh.leader == 1 ? *members_[0] : *members_[1];
  EXPECT_FALSE(new_leader.commit_isr(p, fresh.leader_epoch, {fresh.leader}, {}, old_topic).value()) << "an old topic's leader changed the new one's set";
  EXPECT_TRUE(new_leader.commit_isr(p, fresh.leader_epoch, {fresh.leader}, {}, fresh.topic_id).value());
}

TEST_F(ClusterTest, StatesWrittenBeforeTopicIdsAreKeptAndStampedWithTheirTopicsId) {
  // Given a store that an earlier version wrote: a topic whose record has no id and whose
  // partition state has no topic id, and a topic whose record has an id but whose state has
  // none, both at leader epoch 3
  const std::string prefix = "/weft/test/";
  const std::string id = "0123456789abcdef0123456789abcdef";
  PartitionState before;
  before.replicas = {1};
  before.leader = 1;
  before.leader_epoch = 3;
  before.isr = {1};
  ASSERT_TRUE(store_->put(prefix + "topics/old", encode_topic(TopicRecord{"old", 1, 1, ""}), 0).ok());
  ASSERT_TRUE(store_->put(prefix + "partitions/old/0", encode_partition(before), 0).ok());
  ASSERT_TRUE(store_->put(prefix + "topics/mixed", encode_topic(TopicRecord{"mixed", 1, 1, "", id}), 0).ok());
  ASSERT_TRUE(store_->put(prefix + "partitions/mixed/0", encode_partition(before), 0).ok());
  // When a node of this version joins and becomes the controller
  join(1);
  ASSERT_TRUE(run_until([&] { return controller() != nullptr; }));
  // Expect both states kept at their epoch (not taken for a deleted topic's and made afresh),
  // the second stamped with its record's id, and a role of each handed out
  const PartitionId old{"old", 0}, mixed{"mixed", 0};
  ASSERT_TRUE(run_until([&] {
    const auto now = members_[0]->partitions();
    return now.contains(old) && now.contains(mixed) && now.at(mixed).topic_id == id;
  })) << "a state from before topic ids was not stamped";
  for (const PartitionId& p : {old, mixed}) EXPECT_EQ(members_[0]->partitions().at(p).leader_epoch, 3) << p.topic;
  EXPECT_EQ(members_[0]->partitions().at(old).topic_id, "");
  std::map<std::string, Assignment> roles;
  ASSERT_TRUE(run_until([&] {
    for (Assignment& a : members_[0]->take_assignments()) roles[a.partition.topic] = std::move(a);
    return roles.contains("old") && roles.contains("mixed") && roles.at("mixed").state.topic_id == id;
  }, 3'000)) << "no role of a topic from before ids was handed out";
  EXPECT_TRUE(roles.at("old").replica && roles.at("old").leader);
  EXPECT_EQ(roles.at("old").state.leader_epoch, 3);
  EXPECT_TRUE(roles.at("mixed").replica && roles.at("mixed").leader);
}

TEST_F(ClusterTest, DeletingATopicRemovesItsPartitionsAndRoles) {
  join(1);
  ASSERT_TRUE(run_until([&] { return controller() != nullptr; }));
  ASSERT_TRUE(members_[0]->create_topic(TopicRecord{"t", 2, 1, ""}).ok());
  ASSERT_TRUE(run_until([&] { return members_[0]->partitions().size() == 2; }));
  (void)members_[0]->take_assignments();
  ASSERT_TRUE(members_[0]->delete_topic("t").ok());
  EXPECT_EQ(members_[0]->delete_topic("t").error().code, Errc::kNotFound);
  ASSERT_TRUE(run_until([&] { return members_[0]->partitions().empty(); }));
  std::vector<Assignment> roles = members_[0]->take_assignments();
  ASSERT_EQ(roles.size(), 2u);
  EXPECT_FALSE(roles[0].replica);
}

}  // namespace
}  // namespace weft::test
