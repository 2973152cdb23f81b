// Replication between replicators over the loopback and the TCP transports: followers copy
// the leader's log byte for byte, the high watermark follows the in-sync set's durable ends,
// lagging followers leave the set and return, divergent logs are truncated to the leader's
// epoch boundary, and links that end are opened again.
#include "weft/fabric/replication.h"

#include <gtest/gtest.h>
#include <malloc.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <fstream>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "memory_replica_log.h"
#include "weft/fabric/hmac_sha256.h"
#include "weft/transport/loopback.h"
#include "weft/transport/tcp.h"

namespace weft::test {
namespace {

struct Case {
  std::string name;
  bool tcp = false;
};

class ReplicationTest : public testing::TestWithParam<Case> {
 protected:
  void SetUp() override {
    if (GetParam().tcp) {
      transport_ = make_tcp_transport();
    } else {
      transport_ = make_loopback_transport(make_loopback_network());
    }
  }

  Replicator& start(NodeId id, ReplicationOptions options = small_options()) {
    auto r = Replicator::start(*transport_, id, GetParam().tcp ? "127.0.0.1:0" : "", options);
    EXPECT_TRUE(r.ok()) << r.error().message;
    nodes_.push_back(std::move(r.value()));
    return *nodes_.back();
  }

  // A small region and small writes, so that the region wraps many times in every test.
  static ReplicationOptions small_options() {
    ReplicationOptions o;
    o.region_bytes = 256 * 1024;
    o.max_write_bytes = 64 * 1024;
    o.writes_in_flight = 3;
    o.replica_lag_max_ms = 400;
    o.retry_backoff_ms = 20;
    return o;
  }

  // Runs every live replicator (all in this thread) until `done` or 15 s.
  bool run_until(const std::function<bool()>& done, const std::vector<Replicator*>& paused = {}, int timeout_ms = 15'000) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
    while (!done()) {
      if (std::chrono::steady_clock::now() > deadline) return false;
      for (auto& n : nodes_) {
        if (n == nullptr || std::find(paused.begin(), paused.end(), n.get()) != paused.end()) continue;
        n->run_once(0);
      }
    }
    return true;
  }

  // Applies the leader's in-sync set proposals, as the controller would after committing them.
  void commit_proposals(Replicator& leader, std::vector<IsrProposal>* seen = nullptr) {
    for (IsrProposal& p : leader.take_isr_proposals()) {
      leader.set_isr(p.partition, p.leader_epoch, p.isr);
      if (seen != nullptr) seen->push_back(p);
    }
  }

  // Nodes 1, 2 and 3, with node 1 leading kP at epoch 1 and the others following it.
  bool three_replicas();

  // A listener for a hand-made leader that replicators connect to.
  std::unique_ptr<LinkListener> listen_as_leader() {
    auto listening = transport_->listen(GetParam().tcp ? "127.0.0.1:0" : "fake-leader");
    EXPECT_TRUE(listening.ok()) << listening.error().message;
    return listening.ok() ? std::move(listening.value()) : nullptr;
  }
  // Node 2 with records of its own in logs_[1], following kP from node 1 at `listener`'s address.
  Replicator& follow_hand_made_leader(LinkListener& listener, const ReplicationOptions& options = small_options());
  // The next link a replicator opened to `listener` (running them all meanwhile), or nothing
  // after 15 s.
  std::unique_ptr<Link> accept_from(LinkListener& listener) {
    std::unique_ptr<Link> link;
    EXPECT_TRUE(run_until([&] {
      auto accepted = listener.accept();
      if (accepted.ok()) link = std::move(accepted.value());
      return link != nullptr;
    })) << "no replicator connected";
    return link;
  }

  std::unique_ptr<Transport> transport_;
  std::vector<std::unique_ptr<Replicator>> nodes_;
  MemoryReplicaLog logs_[3];
};

const PartitionId kP{"events", 3};

bool ReplicationTest::three_replicas() {
  Replicator& n1 = start(1);
  Replicator& n2 = start(2);
  Replicator& n3 = start(3);
  return n1.lead(kP, &logs_[0], 1, {1, 2, 3}, {1, 2, 3}).ok() && n2.follow(kP, &logs_[1], 1, 1, n1.address()).ok() &&
         n3.follow(kP, &logs_[2], 1, 1, n1.address()).ok();
}

Replicator& ReplicationTest::follow_hand_made_leader(LinkListener& listener, const ReplicationOptions& options) {
  for (int i = 0; i < 5; ++i) logs_[1].produce(10, 1);
  Replicator& follower = start(2, options);
  EXPECT_TRUE(follower.follow(kP, &logs_[1], 1, 1, listener.address()).ok());
  return follower;
}

bool same_log(const MemoryReplicaLog& a, const MemoryReplicaLog& b) { return a.log_end() == b.log_end() && a.batches() == b.batches(); }

TEST_P(ReplicationTest, FollowersCopyTheLeaderByteForByteAndTheHighWatermarkFollows) {
  ASSERT_TRUE(three_replicas());
  Replicator &n1 = *nodes_[0], &n2 = *nodes_[1], &n3 = *nodes_[2];
  MemoryReplicaLog &l1 = logs_[0], &l2 = logs_[1], &l3 = logs_[2];
  // Batches of different sizes (some near a write's size) arrive while followers copy.
  for (int round = 0; round < 50; ++round) {
    for (int i = 0; i < 20; ++i) l1.produce(1 + (round * 7 + i) % 40, 1, std::byte{static_cast<unsigned char>(round)}, 50 + static_cast<std::size_t>(i * 97 % 1200));
    n1.run_once(0);
    n2.run_once(0);
    n3.run_once(0);
  }
  ASSERT_TRUE(run_until([&] { return same_log(l1, l2) && same_log(l1, l3) && n1.high_watermark(kP) == l1.log_end(); }))
      << "leader " << l1.log_end().value << ", followers " << l2.log_end().value << " and " << l3.log_end().value << ", hw "
      << n1.high_watermark(kP)->value;
  ASSERT_TRUE(run_until([&] { return n2.high_watermark(kP) == l1.log_end() && n3.high_watermark(kP) == l1.log_end(); }));
  EXPECT_EQ(l2.epochs().last_epoch(), 1) << "followers learn the epoch from the batches";
  std::vector<ReplicaStatus> status = n1.status();
  ASSERT_EQ(status.size(), 1u);
  EXPECT_TRUE(status[0].leader);
  EXPECT_EQ(status[0].followers.size(), 2u);
}

TEST_P(ReplicationTest, TheHighWatermarkWaitsForEveryInSyncReplicasDurableEnd) {
  Replicator& n1 = start(1);
  Replicator& n2 = start(2);
  MemoryReplicaLog l1;
  MemoryReplicaLog l2(Offset{0}, /*auto_sync=*/false);
  ASSERT_TRUE(n1.lead(kP, &l1, 1, {1, 2}, {1, 2}).ok());
  ASSERT_TRUE(n2.follow(kP, &l2, 1, 1, n1.address()).ok());
  l1.produce(10, 1);
  ASSERT_TRUE(run_until([&] { return l2.log_end() == Offset{10}; }));
  for (int i = 0; i < 20; ++i) {
    n1.run_once(0);
    n2.run_once(0);
  }
  EXPECT_EQ(n1.high_watermark(kP), Offset{0}) << "written on the follower is not durable there";
  l2.sync();
  ASSERT_TRUE(run_until([&] { return n1.high_watermark(kP) == Offset{10}; }));
}

TEST_P(ReplicationTest, ALaggingFollowerLeavesTheInSyncSetAndComesBack) {
  ASSERT_TRUE(three_replicas());
  Replicator &n1 = *nodes_[0], &n3 = *nodes_[2];
  MemoryReplicaLog &l1 = logs_[0], &l2 = logs_[1], &l3 = logs_[2];
  l1.produce(5, 1);
  ASSERT_TRUE(run_until([&] { return n1.high_watermark(kP) == Offset{5}; }));
  // (A follower slow to connect on a busy machine may have been proposed out meanwhile: such a
  // proposal is answered with the whole set, so the ones below are this test's.)
  for (const IsrProposal& p : n1.take_isr_proposals()) n1.set_isr(kP, p.leader_epoch, {1, 2, 3});
  // Node 3 stops taking part (its thread is stuck): the high watermark stops with it...
  l1.produce(5, 1);
  std::vector<IsrProposal> seen;
  ASSERT_TRUE(run_until([&] { return l2.log_end() == Offset{10}; }, {&n3}));
  EXPECT_EQ(n1.high_watermark(kP), Offset{5});
  // ... until the leader proposes it out of the set and the proposal is committed.
  ASSERT_TRUE(run_until(
      [&] {
        commit_proposals(n1, &seen);
        return !seen.empty();
      },
      {&n3}));
  EXPECT_EQ(seen.back().isr, (std::vector<NodeId>{1, 2}));
  EXPECT_NE(seen.back().reason.find("node 3"), std::string::npos) << seen.back().reason;
  ASSERT_TRUE(run_until([&] { return n1.high_watermark(kP) == Offset{10}; }, {&n3}));
  // Node 3 comes back, catches up, and is proposed back in.
  seen.clear();
  ASSERT_TRUE(run_until([&] {
    commit_proposals(n1, &seen);
    return !seen.empty() && seen.back().isr == std::vector<NodeId>{1, 2, 3};
  }));
  EXPECT_TRUE(same_log(l1, l3));
}

TEST_P(ReplicationTest, AProposedMemberCountsInTheHighWatermarkUntilAStateFromAfterTheCommitsAnswerComes) {
  // Given a leader whose in-sync set is itself alone (metadata revision 4), and a follower that
  // writes but syncs only when told
  Replicator& n1 = start(1);
  Replicator& n2 = start(2);
  MemoryReplicaLog& l1 = logs_[0];
  MemoryReplicaLog l2(Offset{0}, /*auto_sync=*/false);
  ASSERT_TRUE(n1.lead(kP, &l1, 1, {1, 2}, {1}, 4).ok());
  ASSERT_TRUE(n2.follow(kP, &l2, 1, 1, n1.address()).ok());
  l1.produce(10, 1);
  ASSERT_TRUE(run_until([&] { return l2.log_end() == Offset{10}; }));
  l2.sync();
  // When the caught-up follower is proposed into the set
  std::vector<IsrProposal> proposed;
  ASSERT_TRUE(run_until([&] {
    for (IsrProposal& p : n1.take_isr_proposals()) proposed.push_back(std::move(p));
    return !proposed.empty();
  }));
  ASSERT_EQ(proposed.back().isr, (std::vector<NodeId>{1, 2}));
  // and a state from before the commit's answer is applied (a role queued before the commit, or
  // the metadata as read when the commit's answer was lost: revision 5, the set without node 2),
  // while records arrive that node 2 writes and does not sync
  n1.set_isr(kP, 1, {1}, 5);
  l1.produce(10, 1);
  ASSERT_TRUE(run_until([&] { return l2.log_end() == Offset{20}; }));
  for (int i = 0; i < 20; ++i) n1.run_once(0);
  // Expect node 2 still counted: the high watermark waits for its durable end (before, the
  // stale state ended the proposal, and the high watermark passed records that a replica the
  // metadata may already hold in sync does not have durably)
  EXPECT_EQ(n1.high_watermark(kP), Offset{10});
  // And once the commit is answered (states from revision 7 on say so), a state from before it
  // still changes nothing, and the committed state ends the proposal
  n1.proposal_settled(kP, 1, proposed.back().sequence, 7);
  n1.set_isr(kP, 1, {1}, 6);
  for (int i = 0; i < 5; ++i) n1.run_once(0);
  EXPECT_EQ(n1.high_watermark(kP), Offset{10});
  n1.set_isr(kP, 1, {1, 2}, 7);
  l2.sync();
  ASSERT_TRUE(run_until([&] { return n1.high_watermark(kP) == Offset{20}; }));
  // And a state older than the one applied is ignored
  n1.set_isr(kP, 1, {1}, 6);
  std::vector<ReplicaStatus> status = n1.status();
  ASSERT_EQ(status.size(), 1u);
  EXPECT_EQ(status[0].isr, (std::vector<NodeId>{1, 2}));
}

TEST_P(ReplicationTest, ADivergentFollowerIsTruncatedToTheLeadersEpochBoundary) {
  Replicator& n1 = start(1);
  Replicator& n2 = start(2);
  // Both had epoch 1 up to offset 100. Node 2, then leader, appended 50 more under epoch 1 that
  // never reached node 1; node 1 became leader at epoch 2 and took other batches from 100.
  MemoryReplicaLog l1, l2;
  for (int i = 0; i < 10; ++i) {
    l1.produce(10, 1, std::byte{1});
    l2.produce(10, 1, std::byte{1});
  }
  l2.produce(25, 1, std::byte{0xee});
  l2.produce(25, 1, std::byte{0xee});
  ASSERT_TRUE(n1.lead(kP, &l1, 2, {1, 2}, {1}).ok());
  l1.produce(30, 2, std::byte{2});
  l1.produce(30, 2, std::byte{2});
  ASSERT_TRUE(n2.follow(kP, &l2, 2, 1, n1.address()).ok());
  ASSERT_TRUE(run_until([&] { return same_log(l1, l2); })) << "follower ends at " << l2.log_end().value;
  EXPECT_GE(l2.truncations(), 1);
  EXPECT_EQ(l2.epochs().last_epoch(), 2);
  ASSERT_EQ(l2.epochs().entries().size(), 2u);
  EXPECT_EQ(l2.epochs().entries()[1].start, Offset{100});
  for (const auto& b : l2.batches()) EXPECT_NE(b.back(), std::byte{0xee}) << "no byte of the divergent suffix is left";
}

TEST_P(ReplicationTest, AFollowerWithAnUnknownLaterEpochTruncatesToTheLastCommonOne) {
  Replicator& n1 = start(1);
  Replicator& n2 = start(2);
  MemoryReplicaLog l1, l2;
  l1.produce(10, 1);
  l2.produce(10, 1);
  l2.produce(10, 2);  // epoch 2 existed only on node 2
  ASSERT_TRUE(n1.lead(kP, &l1, 3, {1, 2}, {1}).ok());
  l1.produce(7, 3);
  ASSERT_TRUE(n2.follow(kP, &l2, 3, 1, n1.address()).ok());
  ASSERT_TRUE(run_until([&] { return same_log(l1, l2); })) << "follower ends at " << l2.log_end().value;
  EXPECT_EQ(l2.log_end(), Offset{17});
}

TEST_P(ReplicationTest, AFollowerBehindTheLeadersLogStartStartsAgainThere) {
  Replicator& n1 = start(1);
  Replicator& n2 = start(2);
  MemoryReplicaLog l1, l2;
  for (int i = 0; i < 10; ++i) l1.produce(10, 1);
  l2.produce(10, 1);
  l1.drop_before(Offset{50});  // retention removed what the follower needs next
  ASSERT_TRUE(n1.lead(kP, &l1, 2, {1, 2}, {1}).ok());
  ASSERT_TRUE(n2.follow(kP, &l2, 2, 1, n1.address()).ok());
  ASSERT_TRUE(run_until([&] { return same_log(l1, l2); }));
  EXPECT_EQ(l2.resets(), 1);
  EXPECT_EQ(l2.log_start(), Offset{50});
}

TEST_P(ReplicationTest, AFollowerOfANodeThatDoesNotLeadIsRefusedUntilItDoes) {
  Replicator& n1 = start(1);
  Replicator& n2 = start(2);
  MemoryReplicaLog l1, l2;
  ASSERT_TRUE(n2.follow(kP, &l2, 1, 1, n1.address()).ok());
  ASSERT_TRUE(run_until([&] {
    const auto s = n2.status();
    return !s.empty() && s[0].state.find("does not lead") != std::string::npos;
  }));
  ASSERT_TRUE(n1.lead(kP, &l1, 1, {1, 2}, {1, 2}).ok());
  l1.produce(3, 1);
  ASSERT_TRUE(run_until([&] { return same_log(l1, l2); }));
  // A follower on another epoch is refused too, and says why.
  MemoryReplicaLog l3;
  Replicator& n3 = start(3);
  ASSERT_TRUE(n3.follow(kP, &l3, 7, 1, n1.address()).ok());
  ASSERT_TRUE(run_until([&] {
    const auto s = n3.status();
    return !s.empty() && s[0].state.find("epoch 7") != std::string::npos;
  }));
}

TEST_P(ReplicationTest, AFollowerCarriesOnAfterTheLeadersNodeRestarts) {
  ReplicationOptions options = small_options();
  nodes_.push_back(nullptr);
  auto first = Replicator::start(*transport_, 1, GetParam().tcp ? "127.0.0.1:0" : "leader-1", options);
  ASSERT_TRUE(first.ok());
  const std::string address = first.value()->address();
  nodes_[0] = std::move(first.value());
  Replicator& n2 = start(2);
  MemoryReplicaLog l1, l2;
  ASSERT_TRUE(nodes_[0]->lead(kP, &l1, 1, {1, 2}, {1, 2}).ok());
  ASSERT_TRUE(n2.follow(kP, &l2, 1, 1, address).ok());
  l1.produce(20, 1);
  ASSERT_TRUE(run_until([&] { return same_log(l1, l2); }));
  nodes_[0].reset();  // the leader's process goes; its log stays on disk
  l1.produce(20, 1);
  ASSERT_TRUE(run_until([&] {
    const auto s = n2.status();
    return !s.empty() && s[0].state != "streaming";
  }));
  auto again = Replicator::start(*transport_, 1, address, options);
  ASSERT_TRUE(again.ok()) << again.error().message;
  nodes_[0] = std::move(again.value());
  ASSERT_TRUE(nodes_[0]->lead(kP, &l1, 1, {1, 2}, {1, 2}).ok());
  ASSERT_TRUE(run_until([&] { return same_log(l1, l2); }));
}

TEST_P(ReplicationTest, APromotedFollowerLeadsFromWhereItIs) {
  ASSERT_TRUE(three_replicas());
  Replicator &n1 = *nodes_[0], &n2 = *nodes_[1], &n3 = *nodes_[2];
  MemoryReplicaLog &l1 = logs_[0], &l2 = logs_[1], &l3 = logs_[2];
  l1.produce(40, 1);
  ASSERT_TRUE(run_until([&] { return n2.high_watermark(kP) == Offset{40} && n3.high_watermark(kP) == Offset{40}; }));
  // Node 1 fails; node 2 leads at epoch 2, node 3 follows it; the old leader's log is left alone.
  n1.forget(kP);
  ASSERT_TRUE(n2.lead(kP, &l2, 2, {1, 2, 3}, {2, 3}).ok());
  EXPECT_EQ(n2.high_watermark(kP), Offset{40}) << "a promoted follower keeps the high watermark it learned";
  ASSERT_TRUE(n3.follow(kP, &l3, 2, 2, n2.address()).ok());
  l2.produce(15, 2);
  ASSERT_TRUE(run_until([&] { return same_log(l2, l3) && n2.high_watermark(kP) == Offset{55}; }));
}

std::string follow_state(Replicator& r, const PartitionId& partition) {
  for (const ReplicaStatus& s : r.status())
    if (s.partition == partition) return s.state;
  return "";
}

TEST_P(ReplicationTest, ALandingRegionLeftBehindGoesOnceItsLeaderAnswersTheUnfollowWhileTheLinkStaysUp) {
  // Given node 2 following two partitions of node 1 (one keeps their link up throughout)
  Replicator& n1 = start(1);
  Replicator& n2 = start(2);
  const PartitionId kOther{"events", 4};
  MemoryReplicaLog other_leader, other_follower;
  ASSERT_TRUE(n1.lead(kP, &logs_[0], 1, {1, 2}, {1, 2}).ok());
  ASSERT_TRUE(n1.lead(kOther, &other_leader, 1, {1, 2}, {1, 2}).ok());
  ASSERT_TRUE(n2.follow(kOther, &other_follower, 1, 1, n1.address()).ok());
  // When node 2 follows kP anew more times than the transport has region slots (each role
  // change of a partition makes a new landing region and leaves the last one behind)
  for (int round = 0; round < 1100; ++round) {
    const Result<void> followed = n2.follow(kP, &logs_[1], 1, 1, n1.address());
    // Expect every follow to get its region (before, the regions left behind stayed registered
    // while the link was up, and the 1 023rd follow failed: the partition unfollowed for good)
    ASSERT_TRUE(followed.ok()) << "round " << round << ": " << followed.error().message;
    ASSERT_TRUE(run_until([&] { return follow_state(n2, kP) == "streaming"; }, {}, 5'000)) << "round " << round << ": " << follow_state(n2, kP);
  }
  // And the partitions replicate as before
  logs_[0].produce(10, 1);
  other_leader.produce(5, 1);
  ASSERT_TRUE(run_until([&] { return logs_[1].log_end() == Offset{10} && other_follower.log_end() == Offset{5}; }));
}

TEST_P(ReplicationTest, WritesThatEndExactlyAtTheRegionsEndWrapAndGoOn) {
  // Batches of one size B, writes of 2B into a region of 8B: every fourth write ends exactly at
  // the region's end, and the next must start it again (a stall here once stopped the stream).
  MemoryReplicaLog probe;
  probe.produce(3, 1);
  const std::size_t b = probe.batches().front().size();
  ReplicationOptions o = small_options();
  o.region_bytes = 8 * b;
  o.max_write_bytes = 2 * b;
  Replicator& n1 = start(1, o);
  Replicator& n2 = start(2, o);
  MemoryReplicaLog l1, l2;
  ASSERT_TRUE(n1.lead(kP, &l1, 1, {1, 2}, {1, 2}).ok());
  ASSERT_TRUE(n2.follow(kP, &l2, 1, 1, n1.address()).ok());
  for (int i = 0; i < 200; ++i) l1.produce(3, 1);
  ASSERT_TRUE(run_until([&] { return same_log(l1, l2) && n1.high_watermark(kP) == l1.log_end(); }))
      << "the follower stopped at " << l2.log_end().value << " of " << l1.log_end().value;
}

INSTANTIATE_TEST_SUITE_P(Transports, ReplicationTest, testing::Values(Case{"Loopback", false}, Case{"Tcp", true}),
                         [](const testing::TestParamInfo<Case>& param) { return param.param.name; });

// Delegates to another transport, except that a connect to `silent` hangs until released (a
// leader whose SYNs go unanswered, its link cut), then fails.
class SilentPeerTransport final : public Transport {
 public:
  SilentPeerTransport(Transport& inner, std::string silent) : inner_(inner), silent_(std::move(silent)) {}
  std::string_view name() const noexcept override { return inner_.name(); }
  Result<LocalRegion> register_region(std::span<std::byte> bytes) override { return inner_.register_region(bytes); }
  Result<void> deregister_region(std::uint32_t key) override { return inner_.deregister_region(key); }
  Result<std::unique_ptr<LinkListener>> listen(std::string_view address) override { return inner_.listen(address); }
  Result<std::unique_ptr<Link>> connect(std::string_view address, int timeout_ms) override {
    if (address != silent_) return inner_.connect(address, timeout_ms);
    std::unique_lock lock(mutex_);
    ++attempts_;
    released_cv_.wait_for(lock, std::chrono::seconds(30), [&] { return released_; });
    return Error{Errc::kUnavailable, "link connect to " + silent_ + " timed out"};
  }
  void release() {
    std::lock_guard lock(mutex_);
    released_ = true;
    released_cv_.notify_all();
  }
  int attempts() {
    std::lock_guard lock(mutex_);
    return attempts_;
  }

 private:
  Transport& inner_;
  std::string silent_;
  std::mutex mutex_;
  std::condition_variable released_cv_;
  bool released_ = false;
  int attempts_ = 0;
};

// Delegates to another transport, except that the first control message of type `full_for` a
// link is asked to send meets a full queue (as under a follower that reads slower than its leader
// pushes), once per link: the caller must send it later.
class FullQueueTransport final : public Transport {
 public:
  FullQueueTransport(Transport& inner, std::uint8_t full_for) : inner_(inner), full_for_(full_for) {}
  std::string_view name() const noexcept override { return inner_.name(); }
  Result<LocalRegion> register_region(std::span<std::byte> bytes) override { return inner_.register_region(bytes); }
  Result<void> deregister_region(std::uint32_t key) override { return inner_.deregister_region(key); }
  Result<std::unique_ptr<LinkListener>> listen(std::string_view address) override {
    WEFT_TRY(std::unique_ptr<LinkListener> listener, inner_.listen(address));
    return std::unique_ptr<LinkListener>(std::make_unique<Listener>(std::move(listener), *this));
  }
  Result<std::unique_ptr<Link>> connect(std::string_view address, int timeout_ms) override {
    WEFT_TRY(std::unique_ptr<Link> link, inner_.connect(address, timeout_ms));
    return std::unique_ptr<Link>(std::make_unique<Wrapped>(std::move(link), *this));
  }
  int refused() const { return refused_.load(); }

 private:
  class Wrapped final : public Link {
   public:
    Wrapped(std::unique_ptr<Link> inner, FullQueueTransport& t) : inner_(std::move(inner)), t_(t) {}
    PostStatus post_write(const RegionDescriptor& remote, std::uint64_t offset, std::span<const std::span<const std::byte>> gather,
                          std::uint32_t immediate, std::uint64_t context) override {
      return inner_->post_write(remote, offset, gather, immediate, context);
    }
    PostStatus post_send(std::span<const std::byte> message, std::uint64_t context) override {
      if (!refused_once_ && !message.empty() && static_cast<std::uint8_t>(message[0]) == t_.full_for_) {
        refused_once_ = true;
        ++t_.refused_;
        return PostStatus::kQueueFull;
      }
      return inner_->post_send(message, context);
    }
    std::size_t poll(std::span<LinkCompletion> out) override { return inner_->poll(out); }
    int event_fd() const noexcept override { return inner_->event_fd(); }
    bool connected() const noexcept override { return inner_->connected(); }
    const Error& error() const noexcept override { return inner_->error(); }
    const std::string& peer_address() const noexcept override { return inner_->peer_address(); }
    void close() noexcept override { inner_->close(); }
    void accept_writes() noexcept override { inner_->accept_writes(); }

   private:
    std::unique_ptr<Link> inner_;
    FullQueueTransport& t_;
    bool refused_once_ = false;
  };
  class Listener final : public LinkListener {
   public:
    Listener(std::unique_ptr<LinkListener> inner, FullQueueTransport& t) : inner_(std::move(inner)), t_(t) {}
    Result<std::unique_ptr<Link>> accept() override {
      WEFT_TRY(std::unique_ptr<Link> link, inner_->accept());
      return std::unique_ptr<Link>(std::make_unique<Wrapped>(std::move(link), t_));
    }
    int event_fd() const noexcept override { return inner_->event_fd(); }
    const std::string& address() const noexcept override { return inner_->address(); }

   private:
    std::unique_ptr<LinkListener> inner_;
    FullQueueTransport& t_;
  };
  Transport& inner_;
  std::uint8_t full_for_;
  std::atomic<int> refused_{0};
};

TEST_P(ReplicationTest, ALeadersAnswerThatMeetsAFullQueueIsSentOnceTheQueueHasRoom) {
  for (const std::uint8_t answer : {std::uint8_t{3} /* accepted */, std::uint8_t{12} /* unfollowed */}) {
    // Given a leader whose link's queue is full when it first answers with `answer`
    FullQueueTransport full(*transport_, answer);
    std::unique_ptr<Replicator> leader = Replicator::start(full, 1, GetParam().tcp ? "127.0.0.1:0" : "", small_options()).value();
    std::unique_ptr<Replicator> follower = Replicator::start(*transport_, 2, GetParam().tcp ? "127.0.0.1:0" : "", small_options()).value();
    MemoryReplicaLog leader_log, follower_log;
    ASSERT_TRUE(leader->lead(kP, &leader_log, 1, {1, 2}, {1, 2}).ok());
    ASSERT_TRUE(follower->follow(kP, &follower_log, 1, 1, leader->address()).ok());
    leader_log.produce(10, 1);
    auto run = [&](const std::function<bool()>& done) {
      for (int i = 0; i < 20'000 && !done(); ++i) {
        leader->run_once(0);
        follower->run_once(0);
      }
      return done();
    };
    if (answer == 12) {
      ASSERT_TRUE(run([&] { return follower_log.log_end() == Offset{10}; }));
      ASSERT_TRUE(follower->follow(kP, &follower_log, 1, 1, leader->address()).ok());  // follows anew: the last region is unfollowed
    }
    // Expect the follower to stream and copy the leader's records (before, the answer was lost,
    // and the follower waited for it for good)
    EXPECT_TRUE(run([&] { return follow_state(*follower, kP) == "streaming"; })) << follow_state(*follower, kP);
    leader_log.produce(5, 1);
    EXPECT_TRUE(run([&] { return follower_log.log_end() == Offset{15}; })) << follower_log.log_end().value;
    EXPECT_EQ(full.refused(), 1);
  }
}

// A peer that speaks the replication messages by hand (their layouts: replication.cc).
template <class... T>
std::vector<std::byte> message(const T&... fields) {
  std::vector<std::byte> out;
  auto put = [&](const auto& v) {
    const auto* b = reinterpret_cast<const std::byte*>(&v);
    out.insert(out.end(), b, b + sizeof v);
  };
  (put(fields), ...);
  return out;
}

// The handshake that opens every link, by hand: the proofs are HMAC-SHA-256 under the secret of
// a label, the two nonces and a node id.
using Nonce = std::array<std::byte, 16>;
constexpr std::uint8_t kChallenge = 9, kHello = 10, kWelcome = 11;
Sha256Digest proof(std::string_view secret, std::string_view label, const Nonce& first, const Nonce& second, NodeId node) {
  std::vector<std::byte> text(reinterpret_cast<const std::byte*>(label.data()), reinterpret_cast<const std::byte*>(label.data()) + label.size());
  const std::vector<std::byte> rest = message(first, second, node);
  text.insert(text.end(), rest.begin(), rest.end());
  return hmac_sha256(std::as_bytes(std::span(secret.data(), secret.size())), text);
}
Nonce nonce_of(std::uint8_t fill) {
  Nonce n;
  n.fill(std::byte{fill});
  return n;
}

// Polls `link` (running `others` meanwhile) until a message of `type` comes; its bytes, or
// nothing when the link ended or 5 s passed.
std::optional<std::vector<std::byte>> await_message(Link& link, std::uint8_t type, const std::function<void()>& others) {
  std::array<LinkCompletion, 64> batch;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while (std::chrono::steady_clock::now() < deadline) {
    others();
    for (std::size_t n = link.poll(batch), i = 0; i < n; ++i) {
      if (batch[i].kind == LinkCompletion::Kind::kPeerGone) return std::nullopt;
      if (batch[i].kind == LinkCompletion::Kind::kMessageReceived && !batch[i].message.empty() && batch[i].message[0] == std::byte{type})
        return std::vector<std::byte>(batch[i].message.begin(), batch[i].message.end());
    }
  }
  return std::nullopt;
}

// As a hand-made leader on a link a replicator opened: sends `challenge` and reads the hello that
// answers it (nothing when none came within 5 s or the link ended).
struct Hello {
  NodeId node = -1;
  Nonce nonce{};
  Sha256Digest proof{};
};
std::optional<Hello> challenge_and_read_hello(Link& link, const Nonce& challenge, const std::function<void()>& run_follower) {
  if (link.post_send(message(kChallenge, challenge), 0) != PostStatus::kOk) return std::nullopt;
  const std::optional<std::vector<std::byte>> bytes = await_message(link, kHello, run_follower);
  Hello hello;
  if (!bytes || bytes->size() != 1 + sizeof hello.node + sizeof hello.nonce + sizeof hello.proof) return std::nullopt;
  std::memcpy(&hello.node, bytes->data() + 1, sizeof hello.node);
  std::memcpy(hello.nonce.data(), bytes->data() + 1 + sizeof hello.node, hello.nonce.size());
  std::memcpy(hello.proof.data(), bytes->data() + 1 + sizeof hello.node + sizeof hello.nonce, hello.proof.size());
  return hello;
}

// As follower `self` on a link it opened to a replicator: answers its challenge, checks its
// welcome. True once it is done.
bool handshake_as_follower(Link& link, NodeId self, std::string_view secret, const std::function<void()>& run_leader) {
  const std::optional<std::vector<std::byte>> challenge = await_message(link, kChallenge, run_leader);
  if (!challenge || challenge->size() != 1 + sizeof(Nonce)) return false;
  Nonce leader_nonce;
  std::memcpy(leader_nonce.data(), challenge->data() + 1, leader_nonce.size());
  const Nonce mine = nonce_of(0x5a);
  if (link.post_send(message(kHello, self, mine, proof(secret, "weft follower", leader_nonce, mine, self)), 0) != PostStatus::kOk) return false;
  const std::optional<std::vector<std::byte>> welcome = await_message(link, kWelcome, run_leader);
  if (!welcome || welcome->size() != 1 + sizeof(NodeId) + sizeof(Sha256Digest)) return false;
  NodeId leader = -1;
  Sha256Digest given;
  std::memcpy(&leader, welcome->data() + 1, sizeof leader);
  std::memcpy(given.data(), welcome->data() + 1 + sizeof leader, given.size());
  return same_digest(given, proof(secret, "weft leader", mine, leader_nonce, leader));
}

TEST_P(ReplicationTest, AFollowerCanNeitherPileUpStreamsNorClaimMoreThanItWasSent) {
  // Given a leader of kP for replicas 1 and 2, with more in its log than one landing region holds
  ReplicationOptions options = small_options();
  Replicator& leader = start(1, options);
  ASSERT_TRUE(leader.lead(kP, &logs_[0], 1, {1, 2}, {1, 2}).ok());
  for (int i = 0; i < 40; ++i) logs_[0].produce(50, 1);  // ~200 KiB
  // and a peer that proved to be node 2, over a link of its own, with a region of one write
  auto link = transport_->connect(leader.address(), 2'000);
  ASSERT_TRUE(link.ok()) << link.error().message;
  ASSERT_TRUE(handshake_as_follower(**link, 2, options.secret, [&] { leader.run_once(0); }));
  (*link)->accept_writes();
  std::vector<std::byte> landing(options.max_write_bytes);
  auto region = transport_->register_region(landing);
  ASSERT_TRUE(region.ok());
  // When it asks to follow 200 times over the one link, under 200 stream ids
  for (std::uint16_t stream = 1; stream <= 200; ++stream) {
    std::vector<std::byte> follow = message(std::uint8_t{1}, stream, NodeId{2}, std::int32_t{1}, kP.partition, std::int64_t{0}, std::int32_t{-1},
                                            region->descriptor, static_cast<std::uint16_t>(kP.topic.size()));
    for (const char c : kP.topic) follow.push_back(static_cast<std::byte>(c));
    while ((*link)->post_send(follow, stream) == PostStatus::kQueueFull) {
      leader.run_once(0);
      std::array<LinkCompletion, 64> batch;
      (void)(*link)->poll(batch);
    }
  }
  std::set<std::uint32_t> written_streams;
  std::array<LinkCompletion, 64> batch;
  ASSERT_TRUE(run_until([&] {
    for (std::size_t n = (*link)->poll(batch), i = 0; i < n; ++i)
      if (batch[i].kind == LinkCompletion::Kind::kWriteReceived) written_streams.insert(batch[i].immediate & 0xffff);
    return written_streams.contains(200);
  }));
  // Expect one stream, the last asked for, to be pushed to (each once held buffers of its own)
  EXPECT_EQ(written_streams, std::set<std::uint32_t>{200});
  // And when it reports the whole log as its own, durable, having been sent one write's worth,
  // expect the high watermark to stay within what was sent, not at the leader's end
  const std::vector<std::byte> progress = message(std::uint8_t{2}, std::uint16_t{200}, logs_[0].log_end().value, logs_[0].log_end().value, std::uint64_t{0});
  ASSERT_EQ((*link)->post_send(progress, 1000), PostStatus::kOk);
  for (int i = 0; i < 200; ++i) {
    leader.run_once(0);
    (void)(*link)->poll(batch);
  }
  const std::optional<Offset> hw = leader.high_watermark(kP);
  ASSERT_TRUE(hw.has_value());
  EXPECT_LT(*hw, logs_[0].log_end()) << "the leader counted records the follower was never sent";
  (*link)->close();
}

TEST_P(ReplicationTest, AFollowerTakesALeadersTruncationOnlyWholeAndInAnswerToItsFollow) {
  // Given a follower with records of its own, following a hand-made leader
  std::unique_ptr<LinkListener> listener = listen_as_leader();
  ASSERT_NE(listener, nullptr);
  Replicator& follower = follow_hand_made_leader(*listener);
  const Offset own_end = logs_[1].log_end();
  std::unique_ptr<Link> leader = accept_from(*listener);
  ASSERT_NE(leader, nullptr);
  std::array<LinkCompletion, 64> batch;
  std::optional<std::uint16_t> stream;
  // (the handshake, as a leader: challenge, hello, welcome)
  const Nonce challenge = nonce_of(0xc3);
  const std::optional<Hello> hello = challenge_and_read_hello(*leader, challenge, [&] { follower.run_once(0); });
  ASSERT_TRUE(hello.has_value());
  ASSERT_EQ(leader->post_send(message(kWelcome, NodeId{1}, proof("", "weft leader", hello->nonce, challenge, NodeId{1})), 0), PostStatus::kOk);
  ASSERT_TRUE(run_until([&] {
    for (std::size_t n = leader->poll(batch), i = 0; i < n; ++i) {
      if (batch[i].kind == LinkCompletion::Kind::kMessageReceived && batch[i].message.size() >= 3 && batch[i].message[0] == std::byte{1}) {
        std::uint16_t id = 0;
        std::memcpy(&id, batch[i].message.data() + 1, 2);
        stream = id;
      }
    }
    return stream.has_value();
  })) << "no follow request came";
  // When the leader answers with a Diverging cut short (no epoch, no offset), which read as
  // zeros once truncated the whole log
  ASSERT_EQ(leader->post_send(message(std::uint8_t{4}, *stream), 1), PostStatus::kOk);
  for (int i = 0; i < 200; ++i) {
    follower.run_once(0);
    (void)leader->poll(batch);
  }
  // Expect the follower's log untouched; and a whole one, in answer to the follow, taken
  EXPECT_EQ(logs_[1].log_end(), own_end);
  ASSERT_EQ(leader->post_send(message(std::uint8_t{4}, *stream, std::int32_t{1}, std::int64_t{20}), 2), PostStatus::kOk);
  EXPECT_TRUE(run_until([&] {
    (void)leader->poll(batch);
    return logs_[1].log_end() == Offset{20};
  }, {}, 5'000)) << "the follower's log ends at " << logs_[1].log_end().value;
  leader->close();
}

// Links hand-made peers opened to a replicator, and which of them it has ended.
struct PeerLinks {
  Transport& transport;
  std::string address;
  std::vector<std::unique_ptr<Link>> links{};
  std::vector<bool> gone{};

  ~PeerLinks() {
    for (auto& l : links) l->close();
  }
  Link* connect() {
    auto link = transport.connect(address, 2'000);
    EXPECT_TRUE(link.ok()) << link.error().message;
    if (!link.ok()) return nullptr;
    links.push_back(std::move(link.value()));
    gone.push_back(false);
    return links.back().get();
  }
  std::ptrdiff_t count_gone() {
    std::array<LinkCompletion, 64> batch;
    for (std::size_t p = 0; p < links.size(); ++p) {
      if (gone[p]) continue;
      for (std::size_t n = links[p]->poll(batch), i = 0; i < n; ++i) gone[p] = gone[p] || batch[i].kind == LinkCompletion::Kind::kPeerGone;
    }
    return std::count(gone.begin(), gone.end(), true);
  }
};

TEST_P(ReplicationTest, LinksPastTheLimitAreClosedAndAPlaceIsFreedWhenOneEnds) {
  // Given a node that takes at most three links from other nodes
  ReplicationOptions options = small_options();
  options.max_incoming_links = 3;
  Replicator& node = start(1, options);
  PeerLinks peers{*transport_, node.address()};
  // When four connect, expect one of them closed by the node
  for (int i = 0; i < 4; ++i) ASSERT_NE(peers.connect(), nullptr);
  ASSERT_TRUE(run_until([&] { return peers.count_gone() == 1; }, {}, 5'000)) << peers.count_gone() << " of 4 links closed";
  // and the other three kept (each would have been closed by now, had it been refused)
  for (int i = 0; i < 200; ++i) node.run_once(0);
  EXPECT_EQ(peers.count_gone(), 1);
  EXPECT_EQ(node.incoming_links(), 3u);
  // When one of those ends and two more connect, expect one of the two taken, the other closed
  const auto kept = static_cast<std::size_t>(std::find(peers.gone.begin(), peers.gone.end(), false) - peers.gone.begin());
  peers.links[kept]->close();
  peers.gone[kept] = true;
  ASSERT_TRUE(run_until([&] { return node.incoming_links() == 2; }, {}, 5'000)) << "the ended link kept its place";
  ASSERT_NE(peers.connect(), nullptr);
  ASSERT_NE(peers.connect(), nullptr);
  ASSERT_TRUE(run_until([&] { return peers.count_gone() == 3; }, {}, 5'000)) << peers.count_gone() << " of 6 links ended";
  for (int i = 0; i < 200; ++i) node.run_once(0);
  EXPECT_EQ(peers.count_gone(), 3);
  EXPECT_TRUE(!peers.gone[4] || !peers.gone[5]) << "neither link took the freed place";
  EXPECT_EQ(node.incoming_links(), 3u);
}

TEST_P(ReplicationTest, NodesThatShareTheSecretReplicateAndANodeWithoutItGetsNothing) {
  // Given a leader and a follower that share the cluster's secret, and a follower with another
  ReplicationOptions shared = small_options();
  shared.secret = "correct horse battery staple";
  ReplicationOptions other = shared;
  other.secret = "correct horse battery stapler";
  Replicator& leader = start(1, shared);
  Replicator& good = start(2, shared);
  Replicator& bad = start(3, other);
  ASSERT_TRUE(leader.lead(kP, &logs_[0], 1, {1, 2, 3}, {1, 2}).ok());
  for (int i = 0; i < 5; ++i) logs_[0].produce(10, 1);
  ASSERT_TRUE(good.follow(kP, &logs_[1], 1, 1, leader.address()).ok());
  ASSERT_TRUE(bad.follow(kP, &logs_[2], 1, 1, leader.address()).ok());
  // Expect the first to copy the log, and the second to get nothing, its status saying why
  ASSERT_TRUE(run_until([&] { return same_log(logs_[0], logs_[1]); }));
  std::string state;
  EXPECT_TRUE(run_until([&] {
    for (const ReplicaStatus& r : bad.status())
      if (r.partition == kP) state = r.state;
    return state.find("handshake") != std::string::npos;
  }, {}, 5'000)) << "the refused follower's state: " << state;
  EXPECT_EQ(logs_[2].log_end(), Offset{0});
}

// Polls a hand-made peer's link (running `run` meanwhile) until the replicator ends it: true;
// false if a completion `forbidden` picks came first, or 5 s passed.
bool ended_before(Link& link, const std::function<void()>& run, const std::function<bool(const LinkCompletion&)>& forbidden) {
  std::array<LinkCompletion, 64> batch;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while (std::chrono::steady_clock::now() < deadline) {
    run();
    const std::size_t n = link.poll(batch);
    for (std::size_t i = 0; i < n; ++i) {
      if (batch[i].kind == LinkCompletion::Kind::kPeerGone) return true;
      if (forbidden(batch[i])) return false;
    }
    if (n == 0 && !link.connected()) return true;  // its end was already polled (a failed handshake_as_follower)
  }
  return false;
}

// ... before anything but the handshake's messages was sent to it (a write, an accept, a high
// watermark...).
bool ended_with_nothing_sent(Link& link, const std::function<void()>& run) {
  return ended_before(link, run, [](const LinkCompletion& c) {
    if (c.kind == LinkCompletion::Kind::kWriteReceived) return true;
    return c.kind == LinkCompletion::Kind::kMessageReceived && !c.message.empty() && c.message[0] != std::byte{kChallenge} &&
           c.message[0] != std::byte{kWelcome};
  });
}

// ... before a follower sent its follow (message 1) on it.
bool ended_without_follow(Link& link, const std::function<void()>& run) {
  return ended_before(link, run, [](const LinkCompletion& c) {
    return c.kind == LinkCompletion::Kind::kMessageReceived && !c.message.empty() && c.message[0] == std::byte{1};
  });
}

TEST_P(ReplicationTest, APeerThatSkipsFailsOrStallsTheHandshakeOrClaimsAnotherNodeIsClosedWithNothingSent) {
  // Given a leader of kP for nodes 1, 2 and 3 with records in its log, 2 in its in-sync set, and a
  // secret
  ReplicationOptions options = small_options();
  options.secret = "s3cret";
  options.handshake_timeout_ms = 300;
  Replicator& leader = start(1, options);
  ASSERT_TRUE(leader.lead(kP, &logs_[0], 1, {1, 2, 3}, {1, 2}).ok());
  for (int i = 0; i < 5; ++i) logs_[0].produce(10, 1);
  std::vector<std::byte> landing(options.max_write_bytes);
  auto region = transport_->register_region(landing);
  ASSERT_TRUE(region.ok());
  const auto follow_as = [&](NodeId node) {
    std::vector<std::byte> follow = message(std::uint8_t{1}, std::uint16_t{1}, node, std::int32_t{1}, kP.partition, std::int64_t{0}, std::int32_t{-1},
                                            region->descriptor, static_cast<std::uint16_t>(kP.topic.size()));
    for (const char c : kP.topic) follow.push_back(static_cast<std::byte>(c));
    return follow;
  };
  const auto run_leader = [&] { leader.run_once(0); };
  const auto connect = [&] {
    auto link = transport_->connect(leader.address(), 2'000);
    EXPECT_TRUE(link.ok()) << link.error().message;
    return link.ok() ? std::move(link.value()) : nullptr;
  };
  // When a peer asks to follow, and reports node 2 has the whole log, without the handshake
  std::unique_ptr<Link> skipper = connect();
  ASSERT_NE(skipper, nullptr);
  ASSERT_EQ(skipper->post_send(follow_as(2), 0), PostStatus::kOk);
  const std::int64_t end = logs_[0].log_end().value;
  ASSERT_EQ(skipper->post_send(message(std::uint8_t{2}, std::uint16_t{1}, end, end, std::uint64_t{0}), 1), PostStatus::kOk);
  EXPECT_TRUE(ended_with_nothing_sent(*skipper, run_leader)) << "a follow before the handshake";
  // When a peer answers the challenge without the secret
  std::unique_ptr<Link> guesser = connect();
  ASSERT_NE(guesser, nullptr);
  EXPECT_FALSE(handshake_as_follower(*guesser, 2, "guess", run_leader));
  EXPECT_TRUE(ended_with_nothing_sent(*guesser, run_leader)) << "a wrong proof";
  // When a peer says nothing
  std::unique_ptr<Link> silent = connect();
  ASSERT_NE(silent, nullptr);
  EXPECT_TRUE(ended_with_nothing_sent(*silent, run_leader)) << "a silent peer kept its link";
  // When a peer proves to be node 2 and asks to follow as node 3
  std::unique_ptr<Link> impostor = connect();
  ASSERT_NE(impostor, nullptr);
  ASSERT_TRUE(handshake_as_follower(*impostor, 2, options.secret, run_leader));
  ASSERT_EQ(impostor->post_send(follow_as(3), 0), PostStatus::kOk);
  EXPECT_TRUE(ended_with_nothing_sent(*impostor, run_leader)) << "a follow as another node";
  // Expect every one closed with nothing sent (above), and the high watermark where it was
  EXPECT_EQ(leader.high_watermark(kP), std::optional<Offset>(Offset{0})) << "a peer's report moved the high watermark";
  // And a peer that proves to be node 2 and follows as node 2 to be served
  std::unique_ptr<Link> honest = connect();
  ASSERT_NE(honest, nullptr);
  ASSERT_TRUE(handshake_as_follower(*honest, 2, options.secret, run_leader));
  honest->accept_writes();
  ASSERT_EQ(honest->post_send(follow_as(2), 0), PostStatus::kOk);
  EXPECT_TRUE(await_message(*honest, 3, run_leader).has_value()) << "the honest follower was not accepted";
  for (Link* l : {skipper.get(), guesser.get(), silent.get(), impostor.get(), honest.get()}) l->close();
}

TEST_P(ReplicationTest, AFollowerTakesNothingFromALeaderBeforeItsProofAndNoReplayedProof) {
  // Given a follower of a hand-made leader, both with a secret
  ReplicationOptions options = small_options();
  options.secret = "s3cret";
  std::unique_ptr<LinkListener> listener = listen_as_leader();
  ASSERT_NE(listener, nullptr);
  Replicator& follower = follow_hand_made_leader(*listener, options);
  const Offset own_end = logs_[1].log_end();
  const auto run_follower = [&] { follower.run_once(0); };
  // When a leader proves itself on a first link
  std::unique_ptr<Link> first = accept_from(*listener);
  ASSERT_NE(first, nullptr);
  const Nonce challenge = nonce_of(0x11);
  const std::optional<Hello> hello = challenge_and_read_hello(*first, challenge, run_follower);
  ASSERT_TRUE(hello.has_value());
  EXPECT_EQ(hello->node, 2);
  EXPECT_TRUE(same_digest(hello->proof, proof(options.secret, "weft follower", challenge, hello->nonce, NodeId{2})));
  const std::vector<std::byte> welcome = message(kWelcome, NodeId{1}, proof(options.secret, "weft leader", hello->nonce, challenge, NodeId{1}));
  ASSERT_EQ(first->post_send(welcome, 1), PostStatus::kOk);
  // Expect its follow
  EXPECT_TRUE(await_message(*first, 1, run_follower).has_value()) << "no follow after a proper handshake";
  first->close();
  // When someone who recorded that welcome opens the next link with it, and a Diverging that
  // would cut the follower's log
  std::unique_ptr<Link> second = accept_from(*listener);
  ASSERT_NE(second, nullptr);
  ASSERT_EQ(second->post_send(welcome, 0), PostStatus::kOk);
  ASSERT_EQ(second->post_send(message(std::uint8_t{4}, std::uint16_t{1}, std::int32_t{1}, std::int64_t{0}), 1), PostStatus::kOk);
  // Expect the link ended by the follower, no follow sent, its log untouched
  EXPECT_TRUE(ended_without_follow(*second, run_follower)) << "a recorded welcome before any challenge";
  EXPECT_EQ(logs_[1].log_end(), own_end);
  // When the next link's "leader" challenges as the first did and answers the hello with the
  // recorded welcome (the follower's nonce is new)
  std::unique_ptr<Link> third = accept_from(*listener);
  ASSERT_NE(third, nullptr);
  ASSERT_TRUE(challenge_and_read_hello(*third, challenge, run_follower).has_value());
  ASSERT_EQ(third->post_send(welcome, 1), PostStatus::kOk);
  EXPECT_TRUE(ended_without_follow(*third, run_follower)) << "a replayed welcome";
  EXPECT_EQ(logs_[1].log_end(), own_end);
}

TEST_P(ReplicationTest, AFollowerEndsALinkWhoseLeaderNeverChallengesOrProvesToBeAnotherNode) {
  // Given a follower of node 1 at a hand-made leader's address, both with the secret, and
  // records of its own
  ReplicationOptions options = small_options();
  options.secret = "s3cret";
  options.handshake_timeout_ms = 300;
  std::unique_ptr<LinkListener> listener = listen_as_leader();
  ASSERT_NE(listener, nullptr);
  Replicator& follower = follow_hand_made_leader(*listener, options);
  const Offset own_end = logs_[1].log_end();
  const auto run_follower = [&] { follower.run_once(0); };
  const auto state = [&] {
    for (const ReplicaStatus& r : follower.status())
      if (r.partition == kP) return r.state;
    return std::string("not followed");
  };
  // When the leader takes the link and never challenges
  std::unique_ptr<Link> mute = accept_from(*listener);
  ASSERT_NE(mute, nullptr);
  // Expect the follower to end it once its handshake time is out, having sent nothing, and say why
  EXPECT_TRUE(ended_before(*mute, run_follower, [](const LinkCompletion& c) { return c.kind == LinkCompletion::Kind::kMessageReceived; }))
      << "the follower spoke first, or kept a link whose leader never challenged";
  EXPECT_NE(state().find("did not end in time"), std::string::npos) << state();
  // When the next link's leader challenges, and answers the hello with node 5's valid proof
  std::unique_ptr<Link> other = accept_from(*listener);
  ASSERT_NE(other, nullptr);
  const Nonce challenge = nonce_of(0x77);
  const std::optional<Hello> hello = challenge_and_read_hello(*other, challenge, run_follower);
  ASSERT_TRUE(hello.has_value());
  const auto welcomed = std::chrono::steady_clock::now();
  ASSERT_EQ(other->post_send(message(kWelcome, NodeId{5}, proof(options.secret, "weft leader", hello->nonce, challenge, NodeId{5})), 1), PostStatus::kOk);
  // Expect the link ended with no follow sent, the log untouched, and the status naming both nodes
  EXPECT_TRUE(ended_without_follow(*other, run_follower)) << "a follow sent to node 5 at node 1's address";
  EXPECT_EQ(logs_[1].log_end(), own_end);
  EXPECT_NE(state().find("node 5 answered at the address of node 1"), std::string::npos) << state();
  // And the next link opened only after the back-off of a second failed handshake in a row
  // (2 x 20 ms; 1 ms of slack for the follower's whole-millisecond clock), not at once
  ASSERT_NE(accept_from(*listener), nullptr);
  EXPECT_GE(std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - welcomed).count(), 2 * small_options().retry_backoff_ms - 1)
      << "a handshake the follower failed itself was not counted";
}

TEST_P(ReplicationTest, StrangersInTheHandshakeHoldAtMostSixteenPlacesAndNeitherKeepANodeOutNorStay) {
  // Given a node with a secret and a link from a peer that proved itself
  ReplicationOptions options = small_options();
  options.secret = "s3cret";
  options.handshake_timeout_ms = 3'000;
  Replicator& node = start(1, options);
  const auto run_node = [&] { node.run_once(0); };
  PeerLinks peers{*transport_, node.address()};
  Link* member = peers.connect();
  ASSERT_NE(member, nullptr);
  ASSERT_TRUE(handshake_as_follower(*member, 2, options.secret, run_node));
  // When 20 strangers connect and say nothing
  PeerLinks strangers{*transport_, node.address()};
  for (int i = 0; i < 20; ++i) ASSERT_NE(strangers.connect(), nullptr);
  // Expect the 4 newest refused at once and 16 kept (each would have been closed by now, had it
  // lost its place), beside the member's link
  ASSERT_TRUE(run_until([&] { return strangers.count_gone() == 4; }, {}, 2'000)) << strangers.count_gone() << " of 20 strangers closed";
  for (int i = 0; i < 200; ++i) run_node();
  EXPECT_EQ(strangers.count_gone(), 4);
  EXPECT_EQ(std::vector<bool>(strangers.gone.begin() + 16, strangers.gone.end()), std::vector<bool>(4, true))
      << "a stranger of the first 16 lost its place to a newer one within its first 100 ms";
  EXPECT_EQ(node.incoming_links(), 17u);
  // And, once they held their places 100 ms, a node's new link taken in place of the oldest
  const auto held_from = std::chrono::steady_clock::now();
  ASSERT_TRUE(run_until([&] { return std::chrono::steady_clock::now() - held_from > std::chrono::milliseconds(150); }));
  Link* newcomer = peers.connect();
  ASSERT_NE(newcomer, nullptr);
  EXPECT_TRUE(handshake_as_follower(*newcomer, 3, options.secret, run_node)) << "strangers kept a node's link out";
  EXPECT_EQ(strangers.count_gone(), 5);
  EXPECT_TRUE(strangers.gone[0]) << "not the oldest stranger lost its place";
  // And once their handshake time is up, every stranger closed and the nodes' links kept
  EXPECT_TRUE(run_until([&] { return strangers.count_gone() == 20; }, {}, 10'000)) << strangers.count_gone() << " of 20 strangers closed";
  EXPECT_EQ(peers.count_gone(), 0) << "a node's link was closed with the strangers";
  EXPECT_TRUE(run_until([&] { return node.incoming_links() == 2; }, {}, 2'000)) << node.incoming_links() << " links kept";
}

TEST(ReplicatorLinks, ALeaderThatDoesNotAnswerStallsNoOtherPartition) {
  std::unique_ptr<Transport> base = make_loopback_transport(make_loopback_network());
  SilentPeerTransport transport(*base, "silent");
  ReplicationOptions options;
  options.retry_backoff_ms = 20;
  std::unique_ptr<Replicator> leader = Replicator::start(*base, 1, "", options).value();
  std::unique_ptr<Replicator> follower = Replicator::start(transport, 2, "", options).value();
  MemoryReplicaLog led, followed, orphaned;
  const PartitionId other{"events", 4};
  // Given a follower of two partitions: one led by a live node, one by a node that never answers
  ASSERT_TRUE(leader->lead(kP, &led, 1, {1, 2}, {1, 2}).ok());
  ASSERT_TRUE(follower->follow(other, &orphaned, 1, 3, "silent").ok());
  ASSERT_TRUE(follower->follow(kP, &followed, 1, 1, leader->address()).ok());
  for (int i = 0; i < 40; ++i) led.produce(5, 1);
  // When the connect to the silent one hangs, the other partition is copied all the same
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(15);
  bool copied = false;
  while (!copied && std::chrono::steady_clock::now() < deadline) {
    leader->run_once(0);
    follower->run_once(0);
    copied = same_log(led, followed) && leader->high_watermark(kP) == led.log_end();
  }
  EXPECT_TRUE(copied) << "the follower stopped at " << followed.log_end().value << " of " << led.log_end().value;
  // (The connect runs on a thread of its own, which a busy machine may start late: waited for,
  // bounded.)
  for (int i = 0; i < 5'000 && transport.attempts() == 0; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  EXPECT_EQ(transport.attempts(), 1) << "one connect to the silent leader, still under way";
  transport.release();  // the connect's thread ends; the replicators may go
  follower.reset();
  leader.reset();
}

TEST(ReplicatorLinks, AFollowerWhoseHandshakesFailConnectsLessAndLessOftenUntilOneSucceeds) {
  // Given a follower of node 1 at a hand-made leader's address, retrying after 20 ms
  std::unique_ptr<Transport> transport = make_loopback_transport(make_loopback_network());
  ReplicationOptions options;
  options.retry_backoff_ms = 20;
  options.secret = "s3cret";
  std::unique_ptr<LinkListener> listener = transport->listen("fake-leader").value();
  std::unique_ptr<Replicator> follower = Replicator::start(*transport, 2, "", options).value();
  MemoryReplicaLog log;
  ASSERT_TRUE(follower->follow(kP, &log, 1, 1, listener->address()).ok());
  const auto run_follower = [&] { follower->run_once(0); };
  using Clock = std::chrono::steady_clock;
  // The follower's next link, and when it was taken (before the follower could see the last one end).
  const auto next_link = [&](Clock::time_point& taken) -> std::unique_ptr<Link> {
    const auto deadline = Clock::now() + std::chrono::seconds(15);
    while (Clock::now() < deadline) {
      run_follower();
      if (auto accepted = listener->accept(); accepted.ok()) {
        taken = Clock::now();
        return std::move(accepted.value());
      }
    }
    return nullptr;
  };
  const auto ms = [](Clock::duration d) { return std::chrono::duration_cast<std::chrono::milliseconds>(d).count(); };
  // When the leader ends seven links in a row before the handshake is done
  // Expect each connect after the first to wait at least twice as long as the one before: 20,
  // 40, ..., 1280 ms (1 ms of slack: the follower's clock counts whole milliseconds)
  Clock::time_point previous, taken;
  for (int failures = 0; failures < 7; ++failures) {
    std::unique_ptr<Link> link = next_link(taken);
    ASSERT_NE(link, nullptr) << "no link after " << failures << " failed handshakes";
    if (failures > 0) {
      EXPECT_GE(ms(taken - previous), (20 << (failures - 1)) - 1) << "after " << failures << " failed handshakes";
    }
    previous = taken;
    link->close();
  }
  // When the next link's handshake succeeds, and the leader ends it and the one after in their handshake
  std::unique_ptr<Link> proven = next_link(taken);
  ASSERT_NE(proven, nullptr);
  EXPECT_GE(ms(taken - previous), 1280 - 1);
  const Nonce challenge = nonce_of(0x42);
  const std::optional<Hello> hello = challenge_and_read_hello(*proven, challenge, run_follower);
  ASSERT_TRUE(hello.has_value());
  ASSERT_EQ(proven->post_send(message(kWelcome, NodeId{1}, proof(options.secret, "weft leader", hello->nonce, challenge, NodeId{1})), 1), PostStatus::kOk);
  ASSERT_TRUE(await_message(*proven, 1, run_follower).has_value()) << "no follow after a proper handshake";
  proven->close();
  std::unique_ptr<Link> failing = next_link(previous);
  ASSERT_NE(failing, nullptr);
  failing->close();
  // Expect the count of failures to start again: the next connect after about 20 ms, far sooner
  // than the 2 560 ms an eighth failure in a row would wait
  std::unique_ptr<Link> again = next_link(taken);
  ASSERT_NE(again, nullptr);
  EXPECT_LT(ms(taken - previous), 1'500) << "the failures before the proper handshake still counted";
  again->close();
}

TEST(EpochHistory, AnswersWhereAnEpochEnds) {
  EpochHistory h;
  h.assign(1, Offset{0});
  h.assign(3, Offset{100});
  h.assign(2, Offset{150});  // not above the last: ignored
  h.assign(5, Offset{200});
  EXPECT_EQ(h.end_of(1, Offset{300}), std::make_pair(1, Offset{100}));
  EXPECT_EQ(h.end_of(2, Offset{300}), std::make_pair(1, Offset{100})) << "the largest epoch at or below";
  EXPECT_EQ(h.end_of(3, Offset{300}), std::make_pair(3, Offset{200}));
  EXPECT_EQ(h.end_of(9, Offset{300}), std::make_pair(5, Offset{300}));
  EXPECT_EQ(h.end_of(0, Offset{300}).first, -1);
  h.truncate_to(Offset{150});
  EXPECT_EQ(h.last_epoch(), 3);
  h.assign(4, Offset{150});
  h.assign(6, Offset{150});  // epoch 4 had no batches: replaced
  ASSERT_EQ(h.entries().size(), 3u);
  EXPECT_EQ(h.entries().back().epoch, 6);
}

// This process's resident memory (/proc/self/statm: pages), in bytes.
std::size_t resident_bytes() {
  std::ifstream statm("/proc/self/statm");
  std::size_t total_pages = 0, resident_pages = 0;
  statm >> total_pages >> resident_pages;
  return resident_pages * static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
}

TEST(Replication, AFollowedPartitionsLandingRegionTakesNoMemoryBeforeWritesLandInIt) {
  // Given a replicator with the default regions (8 MiB per followed partition), each from fresh
  // pages: glibc would otherwise reuse memory that earlier tests freed, resident already (the
  // sanitizers' allocators ignore this, and map such blocks afresh anyway)
  (void)::mallopt(M_MMAP_THRESHOLD, 1 << 20);
  auto transport = make_loopback_transport(make_loopback_network());
  const ReplicationOptions options;
  std::unique_ptr<Replicator> follower = Replicator::start(*transport, 2, "", options).value();
  std::array<MemoryReplicaLog, 16> logs;
  // When it follows 16 partitions (a topic made: new roles on the replication thread)
  const std::size_t before = resident_bytes();
  for (std::uint32_t p = 0; p < logs.size(); ++p) ASSERT_TRUE(follower->follow(PartitionId{"wide", p}, &logs[p], 1, 1, "node-1").ok());
  // Expect their regions not faulted in (zeroing them cost ~10 ms a role here, everything else waiting)
  const std::size_t grown = resident_bytes() - std::min(before, resident_bytes());
  EXPECT_LT(grown, logs.size() * options.region_bytes / 4) << grown / 1024 << " KiB resident after following " << logs.size() << " partitions";
}

}  // namespace
}  // namespace weft::test
