// The group coordinator, with the clock driven by hand: joins, syncs and the states between them,
// rebalances started by a new member, a session that ends, a rebalance timeout, a leave, the
// member-id-required handshake, protocol votes, static members fenced by their successor, the
// initial rebalance delay, commit checks, describe/list, and that every completion is called
// exactly once, destruction included.
#include "weft/fabric/group_coordinator.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <ostream>
#include <string>
#include <utility>
#include <vector>

namespace weft {

void PrintTo(GroupError error, std::ostream* os) { *os << group_error_name(error); }

namespace {

constexpr std::int64_t kT0 = 1'000'000;
constexpr std::int32_t kSessionMs = 10'000;
constexpr std::int32_t kRebalanceMs = 30'000;
const std::optional<std::string> kDynamic;  // no group instance id

GroupCoordinatorOptions no_initial_delay() {
  GroupCoordinatorOptions options;
  options.initial_rebalance_delay_ms = 0;
  return options;
}

JoinGroupRequest join_request(const std::string& client, std::string member_id = "",
                              std::vector<GroupProtocol> protocols = {}) {
  JoinGroupRequest r;
  r.group_id = "g";
  r.member_id = std::move(member_id);
  r.client_id = client;
  r.client_host = "/10.0.0.1";
  r.protocol_type = "consumer";
  r.protocols = protocols.empty() ? std::vector<GroupProtocol>{{"range", client + "-meta"}} : std::move(protocols);
  r.session_timeout_ms = kSessionMs;
  r.rebalance_timeout_ms = kRebalanceMs;
  return r;
}

SyncGroupRequest sync_request(std::string member_id, std::int32_t generation,
                              std::vector<std::pair<std::string, std::string>> assignments = {}) {
  SyncGroupRequest r;
  r.group_id = "g";
  r.member_id = std::move(member_id);
  r.generation = generation;
  r.assignments = std::move(assignments);
  return r;
}

// What a completion received, and how many times it was called. Shared with the completion so
// it outlives whichever of the test and the coordinator ends first.
struct JoinOutcome {
  int calls = 0;
  JoinGroupResult result;
};
struct SyncOutcome {
  int calls = 0;
  SyncGroupResult result;
};
using JoinProbe = std::shared_ptr<JoinOutcome>;
using SyncProbe = std::shared_ptr<SyncOutcome>;

JoinProbe join(GroupCoordinator& gc, JoinGroupRequest request, std::int64_t now_ms) {
  auto probe = std::make_shared<JoinOutcome>();
  gc.join(std::move(request), now_ms, [probe](JoinGroupResult result) {
    ++probe->calls;
    probe->result = std::move(result);
  });
  return probe;
}

SyncProbe sync(GroupCoordinator& gc, SyncGroupRequest request, std::int64_t now_ms) {
  auto probe = std::make_shared<SyncOutcome>();
  gc.sync(std::move(request), now_ms, [probe](SyncGroupResult result) {
    ++probe->calls;
    probe->result = std::move(result);
  });
  return probe;
}

std::vector<std::string> member_ids(const std::vector<JoinGroupMember>& members) {
  std::vector<std::string> out;
  for (const JoinGroupMember& m : members) out.push_back(m.member_id);
  return out;
}

// Two members, "a" (the leader) and "b", Stable in generation 2 with assignments "A" and "B".
struct Pair {
  std::string a;
  std::string b;
};

Pair stable_pair(GroupCoordinator& gc, std::int64_t now_ms) {
  const JoinProbe a = join(gc, join_request("a"), now_ms);
  EXPECT_EQ(a->calls, 1);
  EXPECT_EQ(a->result.generation, 1);
  EXPECT_EQ(sync(gc, sync_request(a->result.member_id, 1, {{a->result.member_id, "A1"}}), now_ms)->calls, 1);
  const JoinProbe b = join(gc, join_request("b"), now_ms);
  const JoinProbe a2 = join(gc, join_request("a", a->result.member_id), now_ms);
  EXPECT_EQ(a2->calls, 1);
  EXPECT_EQ(b->calls, 1);
  EXPECT_EQ(a2->result.generation, 2);
  const Pair pair{a->result.member_id, b->result.member_id};
  const SyncProbe sb = sync(gc, sync_request(pair.b, 2), now_ms);
  const SyncProbe sa = sync(gc, sync_request(pair.a, 2, {{pair.a, "A"}, {pair.b, "B"}}), now_ms);
  EXPECT_EQ(sa->result.assignment, "A");
  EXPECT_EQ(sb->result.assignment, "B");
  EXPECT_EQ(gc.describe("g").state, "Stable");
  return pair;
}

// ---- joins and syncs ---------------------------------------------------------------------------

TEST(GroupCoordinator, SingleMemberJoinsSyncsAndBecomesStable) {
  // Given a coordinator without an initial delay
  GroupCoordinator gc(no_initial_delay());
  EXPECT_EQ(gc.describe("g").state, "Dead");

  // When one member joins
  const JoinProbe joined = join(gc, join_request("client-1"), kT0);

  // Expect it to lead generation 1 at once, with its own metadata
  ASSERT_EQ(joined->calls, 1);
  const JoinGroupResult& j = joined->result;
  EXPECT_EQ(j.error, GroupError::kNone);
  EXPECT_EQ(j.generation, 1);
  EXPECT_EQ(j.protocol_type, "consumer");
  EXPECT_EQ(j.protocol_name, "range");
  EXPECT_TRUE(j.member_id.starts_with("client-1-")) << j.member_id;
  EXPECT_EQ(j.member_id.size(), std::string("client-1-").size() + 36);
  EXPECT_EQ(j.leader_id, j.member_id);
  ASSERT_EQ(j.members.size(), 1u);
  EXPECT_EQ(j.members[0].member_id, j.member_id);
  EXPECT_EQ(j.members[0].metadata, "client-1-meta");
  EXPECT_EQ(gc.describe("g").state, "CompletingRebalance");
  EXPECT_EQ(gc.heartbeat("g", 1, j.member_id, kDynamic, kT0 + 1), GroupError::kNone);

  // When it syncs with its assignment
  const SyncProbe synced = sync(gc, sync_request(j.member_id, 1, {{j.member_id, "partitions"}}), kT0 + 2);

  // Expect its assignment back and a Stable group
  ASSERT_EQ(synced->calls, 1);
  EXPECT_EQ(synced->result.error, GroupError::kNone);
  EXPECT_EQ(synced->result.assignment, "partitions");
  EXPECT_EQ(synced->result.protocol_type, "consumer");
  EXPECT_EQ(synced->result.protocol_name, "range");
  EXPECT_EQ(gc.describe("g").state, "Stable");
  EXPECT_EQ(gc.heartbeat("g", 1, j.member_id, kDynamic, kT0 + 3), GroupError::kNone);

  // And a later sync in Stable answers at once with the same assignment
  const SyncProbe again = sync(gc, sync_request(j.member_id, 1), kT0 + 4);
  EXPECT_EQ(again->calls, 1);
  EXPECT_EQ(again->result.assignment, "partitions");
}

TEST(GroupCoordinator, SecondMemberTriggersRebalanceThatBothComplete) {
  // Given a Stable group of one
  GroupCoordinator gc(no_initial_delay());
  const JoinProbe a = join(gc, join_request("a"), kT0);
  const std::string a_id = a->result.member_id;
  ASSERT_EQ(sync(gc, sync_request(a_id, 1, {{a_id, "all"}}), kT0)->calls, 1);

  // When a second member joins
  const JoinProbe b = join(gc, join_request("b"), kT0 + 100);

  // Expect it to wait, and the first to learn of the rebalance from its heartbeat
  EXPECT_EQ(b->calls, 0);
  EXPECT_EQ(gc.describe("g").state, "PreparingRebalance");
  EXPECT_EQ(gc.heartbeat("g", 1, a_id, kDynamic, kT0 + 200), GroupError::kRebalanceInProgress);
  EXPECT_EQ(sync(gc, sync_request(a_id, 1), kT0 + 200)->result.error, GroupError::kRebalanceInProgress);
  EXPECT_EQ(gc.check_commit("g", 1, a_id, kDynamic, kT0 + 200), GroupError::kNone);  // the old generation may still commit

  // When the first rejoins
  const JoinProbe a2 = join(gc, join_request("a", a_id), kT0 + 300);

  // Expect both in generation 2, the first still leading with everyone's metadata
  ASSERT_EQ(a2->calls, 1);
  ASSERT_EQ(b->calls, 1);
  const std::string b_id = b->result.member_id;
  EXPECT_EQ(a2->result.generation, 2);
  EXPECT_EQ(b->result.generation, 2);
  EXPECT_EQ(a2->result.leader_id, a_id);
  EXPECT_EQ(b->result.leader_id, a_id);
  EXPECT_EQ(member_ids(a2->result.members), (std::vector<std::string>{a_id, b_id}));
  EXPECT_EQ(a2->result.members[1].metadata, "b-meta");
  EXPECT_TRUE(b->result.members.empty());
  EXPECT_EQ(gc.check_commit("g", 2, b_id, kDynamic, kT0 + 300), GroupError::kRebalanceInProgress);

  // When the follower syncs first, then the leader with the assignment
  const SyncProbe sb = sync(gc, sync_request(b_id, 2), kT0 + 400);
  EXPECT_EQ(sb->calls, 0);
  const SyncProbe sa = sync(gc, sync_request(a_id, 2, {{a_id, "p0"}, {b_id, "p1"}}), kT0 + 500);

  // Expect each to receive its own part
  ASSERT_EQ(sa->calls, 1);
  ASSERT_EQ(sb->calls, 1);
  EXPECT_EQ(sa->result.assignment, "p0");
  EXPECT_EQ(sb->result.assignment, "p1");
  EXPECT_EQ(gc.describe("g").state, "Stable");
  EXPECT_EQ(gc.heartbeat("g", 2, b_id, kDynamic, kT0 + 600), GroupError::kNone);
  EXPECT_EQ(gc.heartbeat("g", 1, b_id, kDynamic, kT0 + 600), GroupError::kIllegalGeneration);
  EXPECT_EQ(gc.check_commit("g", 2, b_id, kDynamic, kT0 + 600), GroupError::kNone);
}

TEST(GroupCoordinator, FollowerRejoiningStableWithSameMetadataGetsCurrentGeneration) {
  // Given a Stable pair
  GroupCoordinator gc(no_initial_delay());
  const Pair pair = stable_pair(gc, kT0);

  // When the follower rejoins with unchanged metadata
  const JoinProbe b = join(gc, join_request("b", pair.b), kT0 + 10);

  // Expect the current generation at once and no rebalance
  ASSERT_EQ(b->calls, 1);
  EXPECT_EQ(b->result.error, GroupError::kNone);
  EXPECT_EQ(b->result.generation, 2);
  EXPECT_EQ(b->result.leader_id, pair.a);
  EXPECT_TRUE(b->result.members.empty());
  EXPECT_EQ(gc.describe("g").state, "Stable");

  // When the leader rejoins, even unchanged
  const JoinProbe a = join(gc, join_request("a", pair.a), kT0 + 20);

  // Expect a rebalance
  EXPECT_EQ(a->calls, 0);
  EXPECT_EQ(gc.describe("g").state, "PreparingRebalance");
}

TEST(GroupCoordinator, RejoinInCompletingRebalanceWithSameMetadataRepeatsTheAnswer) {
  // Given a group that completed its join phase but not its sync
  GroupCoordinator gc(no_initial_delay());
  const JoinProbe a = join(gc, join_request("a"), kT0);
  ASSERT_EQ(gc.describe("g").state, "CompletingRebalance");

  // When the leader joins again with the same metadata (it lost the answer)
  const JoinProbe again = join(gc, join_request("a", a->result.member_id), kT0 + 10);

  // Expect the same generation, with the members for the leader
  ASSERT_EQ(again->calls, 1);
  EXPECT_EQ(again->result.generation, 1);
  EXPECT_EQ(member_ids(again->result.members), std::vector<std::string>{a->result.member_id});
  EXPECT_EQ(gc.describe("g").state, "CompletingRebalance");

  // When it joins with other metadata
  const JoinProbe changed = join(gc, join_request("a", a->result.member_id, {{"range", "new"}}), kT0 + 20);

  // Expect a new generation
  ASSERT_EQ(changed->calls, 1);
  EXPECT_EQ(changed->result.generation, 2);
  EXPECT_EQ(changed->result.members[0].metadata, "new");
}

TEST(GroupCoordinator, MemberIdRequiredHandshake) {
  // Given a coordinator
  GroupCoordinator gc(no_initial_delay());

  // When a JoinGroup v4+ member joins without an id
  JoinGroupRequest first = join_request("client-a");
  first.require_known_member_id = true;
  const JoinProbe given = join(gc, first, kT0);

  // Expect its new id, and no member yet
  ASSERT_EQ(given->calls, 1);
  EXPECT_EQ(given->result.error, GroupError::kMemberIdRequired);
  EXPECT_TRUE(given->result.member_id.starts_with("client-a-")) << given->result.member_id;
  EXPECT_EQ(gc.group_count(), 1u);
  EXPECT_EQ(gc.describe("g").state, "Empty");
  EXPECT_TRUE(gc.describe("g").members.empty());
  EXPECT_EQ(gc.next_deadline_ms(), kT0 + kSessionMs);  // the id expires unless used
  EXPECT_EQ(gc.heartbeat("g", 0, given->result.member_id, kDynamic, kT0), GroupError::kUnknownMemberId);

  // When it joins again with that id
  JoinGroupRequest second = join_request("client-a", given->result.member_id);
  second.require_known_member_id = true;
  const JoinProbe joined = join(gc, second, kT0 + 10);

  // Expect it in the group under that id
  ASSERT_EQ(joined->calls, 1);
  EXPECT_EQ(joined->result.error, GroupError::kNone);
  EXPECT_EQ(joined->result.member_id, given->result.member_id);
  EXPECT_EQ(joined->result.generation, 1);

  // And an id the coordinator never gave is refused
  const JoinProbe stranger = join(gc, join_request("x", "x-made-up"), kT0 + 20);
  EXPECT_EQ(stranger->result.error, GroupError::kUnknownMemberId);
  JoinGroupRequest other_group = join_request("x", "x-made-up");
  other_group.group_id = "nowhere";
  EXPECT_EQ(join(gc, other_group, kT0 + 20)->result.error, GroupError::kUnknownMemberId);
  EXPECT_EQ(gc.group_count(), 1u);
}

TEST(GroupCoordinator, UnusedMemberIdExpiresAfterTheSessionTimeout) {
  // Given a member id handed out with kMemberIdRequired
  GroupCoordinator gc(no_initial_delay());
  JoinGroupRequest first = join_request("a");
  first.require_known_member_id = true;
  const std::string id = join(gc, first, kT0)->result.member_id;

  // When its session timeout passes without a join
  gc.tick(kT0 + kSessionMs - 1);
  gc.tick(kT0 + kSessionMs);

  // Expect the id to be unknown, and the group it was the only join of gone with it (else every
  // first join of a fresh group id would be held for good)
  EXPECT_EQ(gc.next_deadline_ms(), std::nullopt);
  EXPECT_EQ(gc.group_count(), 0u);
  EXPECT_EQ(join(gc, join_request("a", id), kT0 + kSessionMs + 1)->result.error, GroupError::kUnknownMemberId);
}

TEST(GroupCoordinator, GroupIdsFollowTheOffsetStoresRulesAndLongClientIdsMakeShortMemberIds) {
  GroupCoordinator gc(no_initial_delay());
  // A group id longer than an offsets file's name may be, or with a '/', is refused everywhere
  for (const std::string& bad : {std::string(40'000, 'g'), std::string("a/b"), std::string("..")}) {
    JoinGroupRequest r = join_request("a");
    r.group_id = bad;
    EXPECT_EQ(join(gc, r, kT0)->result.error, GroupError::kInvalidGroupId) << bad.substr(0, 20);
    EXPECT_EQ(gc.heartbeat(bad, 1, "m", kDynamic, kT0), GroupError::kInvalidGroupId);
  }
  EXPECT_EQ(gc.group_count(), 0u);
  // A client id of 32 767 bytes gives a member id that fits the responses' int16 strings
  JoinGroupRequest r = join_request(std::string(32'767, 'c'));
  r.require_known_member_id = true;
  const std::string id = join(gc, r, kT0)->result.member_id;
  EXPECT_LT(id.size(), 300u);
  EXPECT_TRUE(id.starts_with(std::string(255, 'c') + "-")) << id.substr(0, 300);
}

TEST(GroupCoordinator, JoinPhaseWaitsForMembersGivenAnId) {
  // Given a Stable pair and a third member holding a fresh id
  GroupCoordinator gc(no_initial_delay());
  const Pair pair = stable_pair(gc, kT0);
  JoinGroupRequest c_first = join_request("c");
  c_first.require_known_member_id = true;
  const std::string c_id = join(gc, c_first, kT0 + 10)->result.member_id;

  // When both members rejoin (the leader's join starts a rebalance)
  const JoinProbe a = join(gc, join_request("a", pair.a), kT0 + 20);
  const JoinProbe b = join(gc, join_request("b", pair.b), kT0 + 30);

  // Expect the join phase to wait for the member with the fresh id
  EXPECT_EQ(a->calls, 0);
  EXPECT_EQ(b->calls, 0);

  // When it joins
  const JoinProbe c = join(gc, join_request("c", c_id), kT0 + 40);

  // Expect all three in generation 3
  ASSERT_EQ(c->calls, 1);
  ASSERT_EQ(a->calls, 1);
  EXPECT_EQ(c->result.generation, 3);
  EXPECT_EQ(member_ids(a->result.members), (std::vector<std::string>{pair.a, pair.b, c_id}));
}

// ---- sessions, timeouts, leaves ----------------------------------------------------------------

TEST(GroupCoordinator, SessionExpiryRemovesMemberAndRebalances) {
  // Given a Stable pair where only the leader heartbeats
  GroupCoordinator gc(no_initial_delay());
  const Pair pair = stable_pair(gc, kT0);
  EXPECT_EQ(gc.heartbeat("g", 2, pair.a, kDynamic, kT0 + 5'000), GroupError::kNone);
  EXPECT_EQ(gc.next_deadline_ms(), kT0 + kSessionMs);  // b's session

  // When b's session passes
  gc.tick(kT0 + kSessionMs - 1);
  EXPECT_EQ(gc.describe("g").members.size(), 2u);
  gc.tick(kT0 + kSessionMs);

  // Expect b gone and a told to rejoin
  EXPECT_EQ(gc.describe("g").state, "PreparingRebalance");
  EXPECT_EQ(gc.describe("g").members.size(), 1u);
  EXPECT_EQ(gc.heartbeat("g", 2, pair.b, kDynamic, kT0 + kSessionMs), GroupError::kUnknownMemberId);
  EXPECT_EQ(gc.heartbeat("g", 2, pair.a, kDynamic, kT0 + kSessionMs), GroupError::kRebalanceInProgress);

  // When a rejoins
  const JoinProbe a = join(gc, join_request("a", pair.a), kT0 + kSessionMs + 1);

  // Expect generation 3 with a alone
  ASSERT_EQ(a->calls, 1);
  EXPECT_EQ(a->result.generation, 3);
  EXPECT_EQ(member_ids(a->result.members), std::vector<std::string>{pair.a});

  // And when a's session passes too, the group empties and that tick forgets it: membership is
  // all the coordinator keeps (committed offsets are the offset store's)
  gc.tick(kT0 + kSessionMs + 1 + kSessionMs);
  EXPECT_EQ(gc.describe("g").state, "Dead");
  EXPECT_EQ(gc.group_count(), 0u);
  EXPECT_EQ(gc.next_deadline_ms(), std::nullopt);
  // What it remembers: the type, for listing the group while it has offsets, and when it emptied
  ASSERT_TRUE(gc.forgotten("g").has_value());
  EXPECT_EQ(gc.forgotten("g")->protocol_type, "consumer");
  EXPECT_EQ(gc.forgotten("g")->emptied_ms, kT0 + kSessionMs + 1 + kSessionMs);
  // ... kept through a join that only got a member id and never came back
  JoinGroupRequest asks_for_id = join_request("d");
  asks_for_id.require_known_member_id = true;
  EXPECT_EQ(join(gc, asks_for_id, kT0 + 2 * kSessionMs + 2)->result.error, GroupError::kMemberIdRequired);
  gc.tick(kT0 + 3 * kSessionMs + 2);
  EXPECT_EQ(gc.group_count(), 0u);
  ASSERT_TRUE(gc.forgotten("g").has_value());

  // And the id names a new group to the next member, from the first generation
  const JoinProbe again = join(gc, join_request("c"), kT0 + 4 * kSessionMs);
  ASSERT_EQ(again->calls, 1);
  EXPECT_EQ(again->result.generation, 1);
  EXPECT_FALSE(gc.forgotten("g").has_value());
  EXPECT_EQ(join(gc, join_request("a", pair.a), kT0 + 4 * kSessionMs)->result.error, GroupError::kUnknownMemberId);
}

TEST(GroupCoordinator, RebalanceTimeoutRemovesMemberThatNeverRejoined) {
  // Given a Stable pair whose leader rejoins (starting a rebalance) while b only heartbeats
  GroupCoordinator gc(no_initial_delay());
  const Pair pair = stable_pair(gc, kT0);
  const JoinProbe a = join(gc, join_request("a", pair.a), kT0 + 1'000);
  ASSERT_EQ(gc.next_deadline_ms(), kT0 + kSessionMs);  // b's session, before the phase ends

  // When time passes beyond a's session, b heartbeating all along (bounded: 5 steps of 5 s)
  std::int64_t now = kT0 + 1'000;
  for (int step = 0; step < 5; ++step) {
    now += 5'000;
    EXPECT_EQ(gc.heartbeat("g", 2, pair.b, kDynamic, now), GroupError::kRebalanceInProgress);
    gc.tick(now);
  }

  // Expect a, waiting in its join, still a member, and the phase still open
  EXPECT_EQ(a->calls, 0);
  EXPECT_EQ(gc.describe("g").members.size(), 2u);
  EXPECT_EQ(gc.next_deadline_ms(), kT0 + 1'000 + kRebalanceMs);

  // When the rebalance timeout passes
  gc.tick(kT0 + 1'000 + kRebalanceMs);

  // Expect b removed and a alone in generation 3
  ASSERT_EQ(a->calls, 1);
  EXPECT_EQ(a->result.generation, 3);
  EXPECT_EQ(member_ids(a->result.members), std::vector<std::string>{pair.a});
  EXPECT_EQ(gc.heartbeat("g", 2, pair.b, kDynamic, kT0 + 1'000 + kRebalanceMs), GroupError::kUnknownMemberId);
}

TEST(GroupCoordinator, MemberThatNeverSyncsIsRemovedAtTheRebalanceTimeout) {
  // Given a pair past its join phase where b syncs and waits, and the leader only heartbeats
  GroupCoordinator gc(no_initial_delay());
  const JoinProbe a = join(gc, join_request("a"), kT0);
  ASSERT_EQ(sync(gc, sync_request(a->result.member_id, 1, {}), kT0)->calls, 1);
  const JoinProbe b = join(gc, join_request("b"), kT0);
  const JoinProbe a2 = join(gc, join_request("a", a->result.member_id), kT0);
  ASSERT_EQ(b->calls, 1);
  ASSERT_EQ(a2->calls, 1);
  const SyncProbe sb = sync(gc, sync_request(b->result.member_id, 2), kT0 + 1);

  // When the rebalance timeout passes without the leader's sync (it heartbeats: 5 steps of 5 s)
  for (std::int64_t t = kT0 + 5'000; t < kT0 + kRebalanceMs; t += 5'000) {
    EXPECT_EQ(gc.heartbeat("g", 2, a->result.member_id, kDynamic, t), GroupError::kNone);
    gc.tick(t);
  }
  gc.tick(kT0 + kRebalanceMs - 1);
  EXPECT_EQ(sb->calls, 0);
  gc.tick(kT0 + kRebalanceMs);

  // Expect the leader removed and b told to rejoin
  ASSERT_EQ(sb->calls, 1);
  EXPECT_EQ(sb->result.error, GroupError::kRebalanceInProgress);
  const GroupDescription d = gc.describe("g");
  EXPECT_EQ(d.state, "PreparingRebalance");
  ASSERT_EQ(d.members.size(), 1u);
  EXPECT_EQ(d.members[0].member_id, b->result.member_id);
}

TEST(GroupCoordinator, LeaveRemovesMembersAndRebalances) {
  // Given a Stable pair
  GroupCoordinator gc(no_initial_delay());
  const Pair pair = stable_pair(gc, kT0);

  // When b leaves, along with an id nobody has
  const std::vector<GroupError> errors = gc.leave("g", {{pair.b, kDynamic}, {"nobody", kDynamic}}, kT0 + 10);

  // Expect one outcome each, and a rebalance that a completes alone
  EXPECT_EQ(errors, (std::vector<GroupError>{GroupError::kNone, GroupError::kUnknownMemberId}));
  EXPECT_EQ(gc.describe("g").state, "PreparingRebalance");
  const JoinProbe a = join(gc, join_request("a", pair.a), kT0 + 20);
  ASSERT_EQ(a->calls, 1);
  EXPECT_EQ(a->result.generation, 3);
  EXPECT_EQ(gc.leave("elsewhere", {{pair.a, kDynamic}}, kT0 + 30), std::vector<GroupError>{GroupError::kUnknownMemberId});
  EXPECT_EQ(gc.leave("", {{pair.a, kDynamic}}, kT0 + 30), std::vector<GroupError>{GroupError::kInvalidGroupId});

  // When the last member leaves
  EXPECT_EQ(gc.leave("g", {{pair.a, kDynamic}}, kT0 + 40), std::vector<GroupError>{GroupError::kNone});

  // Expect an Empty group in the next generation, until the next tick forgets it
  EXPECT_EQ(gc.describe("g").state, "Empty");
  EXPECT_EQ(gc.describe("g").generation, 4);
  EXPECT_EQ(gc.check_commit("g", -1, "", kDynamic, kT0 + 50), GroupError::kNone);
  gc.tick(kT0 + 60);
  EXPECT_EQ(gc.describe("g").state, "Dead");
  EXPECT_EQ(gc.group_count(), 0u);
  EXPECT_EQ(gc.check_commit("g", -1, "", kDynamic, kT0 + 70), GroupError::kNone);
  EXPECT_EQ(gc.check_commit("g", 4, pair.b, kDynamic, kT0 + 70), GroupError::kIllegalGeneration);
}

TEST(GroupCoordinator, LeaveCompletesTheLeaversWaitingJoin) {
  // Given a Stable pair and a third member whose join waits in the rebalance it started
  GroupCoordinator gc(no_initial_delay());
  const Pair pair = stable_pair(gc, kT0);
  JoinGroupRequest c_first = join_request("c");
  c_first.require_known_member_id = true;
  const std::string c_id = join(gc, c_first, kT0)->result.member_id;
  const JoinProbe c = join(gc, join_request("c", c_id), kT0 + 10);
  ASSERT_EQ(c->calls, 0);

  // When it leaves
  EXPECT_EQ(gc.leave("g", {{c_id, kDynamic}}, kT0 + 20), std::vector<GroupError>{GroupError::kNone});

  // Expect its join answered kUnknownMemberId, once, and the others unaffected
  ASSERT_EQ(c->calls, 1);
  EXPECT_EQ(c->result.error, GroupError::kUnknownMemberId);
  const JoinProbe a = join(gc, join_request("a", pair.a), kT0 + 30);
  const JoinProbe b = join(gc, join_request("b", pair.b), kT0 + 30);
  ASSERT_EQ(a->calls, 1);
  EXPECT_EQ(member_ids(a->result.members), (std::vector<std::string>{pair.a, pair.b}));
  EXPECT_EQ(c->calls, 1);
}

// ---- protocols and arguments -------------------------------------------------------------------

TEST(GroupCoordinator, ProtocolChosenByVoteAmongThoseAllSupport) {
  // Given three members joining in one phase (the initial delay gathers them)
  GroupCoordinatorOptions options;
  options.initial_rebalance_delay_ms = 100;
  GroupCoordinator gc(options);
  const JoinProbe a = join(gc, join_request("a", "", {{"range", "a-r"}, {"roundrobin", "a-rr"}, {"sticky", "a-s"}}), kT0);
  const JoinProbe b = join(gc, join_request("b", "", {{"roundrobin", "b-rr"}, {"range", "b-r"}}), kT0 + 1);
  const JoinProbe c = join(gc, join_request("c", "", {{"sticky", "c-s"}, {"roundrobin", "c-rr"}, {"range", "c-r"}}), kT0 + 2);

  // When a member supporting none of the common protocols joins, or another protocol type
  const JoinProbe d = join(gc, join_request("d", "", {{"sticky", "d-s"}}), kT0 + 3);
  JoinGroupRequest connect = join_request("e");
  connect.protocol_type = "connect";
  const JoinProbe e = join(gc, connect, kT0 + 3);

  // Expect both refused at once
  EXPECT_EQ(d->result.error, GroupError::kInconsistentGroupProtocol);
  EXPECT_EQ(e->result.error, GroupError::kInconsistentGroupProtocol);

  // When the delay passes (twice: members kept arriving during the first)
  for (std::int64_t t = kT0; t <= kT0 + 1'000 && a->calls == 0; t += 50) gc.tick(t);

  // Expect "roundrobin": a votes range, b and c (sticky is not common) vote roundrobin
  ASSERT_EQ(a->calls, 1);
  EXPECT_EQ(a->result.protocol_name, "roundrobin");
  EXPECT_EQ(b->result.protocol_name, "roundrobin");
  EXPECT_EQ(c->result.protocol_name, "roundrobin");
  ASSERT_EQ(a->result.members.size(), 3u);
  EXPECT_EQ(a->result.members[0].metadata, "a-rr");
  EXPECT_EQ(a->result.members[1].metadata, "b-rr");
  EXPECT_EQ(a->result.members[2].metadata, "c-rr");
}

TEST(GroupCoordinator, ProtocolVoteTieGoesToTheLeadersPreference) {
  // Given two members preferring different common protocols, joining in one phase
  GroupCoordinatorOptions options;
  options.initial_rebalance_delay_ms = 100;
  GroupCoordinator gc(options);
  const JoinProbe a = join(gc, join_request("a", "", {{"range", "a-r"}, {"roundrobin", "a-rr"}}), kT0);
  const JoinProbe b = join(gc, join_request("b", "", {{"roundrobin", "b-rr"}, {"range", "b-r"}}), kT0);

  // When the join phase completes
  for (std::int64_t t = kT0; t <= kT0 + 1'000 && a->calls == 0; t += 50) gc.tick(t);

  // Expect the leader's (a's) favourite
  ASSERT_EQ(b->calls, 1);
  EXPECT_EQ(b->result.leader_id, a->result.member_id);
  EXPECT_EQ(b->result.protocol_name, "range");
}

TEST(GroupCoordinator, AMembersProtocolsCountAsItsLatestJoinListsThem) {
  // Given a and b, both listing range and roundrobin, Stable
  GroupCoordinator gc(no_initial_delay());
  const std::vector<GroupProtocol> both{{"range", "r"}, {"roundrobin", "rr"}};
  const JoinProbe a = join(gc, join_request("a", "", both), kT0);
  const JoinProbe b = join(gc, join_request("b", "", both), kT0);
  const JoinProbe a2 = join(gc, join_request("a", a->result.member_id, both), kT0);
  ASSERT_EQ(b->calls, 1);
  ASSERT_EQ(a2->result.generation, 2);
  const std::string ida = a->result.member_id;
  const std::string idb = b->result.member_id;

  // When b rejoins listing roundrobin only
  const JoinProbe b3 = join(gc, join_request("b", idb, {{"roundrobin", "rr"}}), kT0 + 10);

  // Expect a newcomer listing range only refused (b no longer supports it), one listing
  // roundrobin only let in
  EXPECT_EQ(join(gc, join_request("c", "", {{"range", "r"}}), kT0 + 10)->result.error, GroupError::kInconsistentGroupProtocol);
  const JoinProbe d = join(gc, join_request("d", "", {{"roundrobin", "rr"}}), kT0 + 10);
  const JoinProbe a3 = join(gc, join_request("a", ida, both), kT0 + 10);
  ASSERT_EQ(a3->calls, 1);
  EXPECT_EQ(a3->result.error, GroupError::kNone);
  EXPECT_EQ(a3->result.protocol_name, "roundrobin");
  EXPECT_EQ(b3->result.generation, 3);
  EXPECT_EQ(d->result.generation, 3);

  // When b and d leave
  EXPECT_EQ(gc.leave("g", {{idb, kDynamic}, {d->result.member_id, kDynamic}}, kT0 + 20),
            (std::vector<GroupError>{GroupError::kNone, GroupError::kNone}));

  // Expect range-only members fit again (a, the one left, lists it) and win the vote
  const JoinProbe e = join(gc, join_request("e", "", {{"range", "r"}}), kT0 + 20);
  const JoinProbe a4 = join(gc, join_request("a", ida, both), kT0 + 20);
  ASSERT_EQ(a4->calls, 1);
  ASSERT_EQ(e->calls, 1);
  EXPECT_EQ(e->result.error, GroupError::kNone);
  EXPECT_EQ(a4->result.protocol_name, "range");
}

TEST(GroupCoordinator, AGroupOfThousandsFormsInOneJoinPhaseAndRebalancesOnTheLastRejoin) {
  // Given 3 000 members joining within the initial delay
  GroupCoordinatorOptions options;
  options.initial_rebalance_delay_ms = 100;
  GroupCoordinator gc(options);
  constexpr std::size_t kMembers = 3'000;
  std::vector<JoinProbe> joins;
  for (std::size_t i = 0; i < kMembers; ++i) joins.push_back(join(gc, join_request("m" + std::to_string(i)), kT0));

  // When the delay passes (twice: members kept arriving during the first)
  std::int64_t now = kT0;
  for (; now <= kT0 + 1'000 && joins[0]->calls == 0; now += 50) gc.tick(now);

  // Expect one generation of all of them, the first to join leading and given every member
  std::vector<std::string> ids;
  for (const JoinProbe& j : joins) {
    ASSERT_EQ(j->calls, 1);
    ASSERT_EQ(j->result.generation, 1);
    ids.push_back(j->result.member_id);
  }
  EXPECT_EQ(joins[0]->result.leader_id, ids[0]);
  ASSERT_EQ(joins[0]->result.members.size(), kMembers);
  EXPECT_EQ(joins[1]->result.members.size(), 0u);
  const SyncProbe leader_sync = sync(gc, sync_request(ids[0], 1, {{ids[0], "x"}}), now);
  for (std::size_t i = 1; i < kMembers; ++i) sync(gc, sync_request(ids[i], 1), now);
  EXPECT_EQ(leader_sync->result.assignment, "x");
  EXPECT_EQ(gc.describe("g").state, "Stable");

  // When the last member leaves and the others rejoin
  EXPECT_EQ(gc.leave("g", {{ids.back(), kDynamic}}, now + 100), std::vector<GroupError>{GroupError::kNone});
  ids.pop_back();
  std::vector<JoinProbe> rejoins;
  for (std::size_t i = 0; i + 1 < ids.size(); ++i) rejoins.push_back(join(gc, join_request("m", ids[i]), now + 200));

  // Expect the join phase to complete on the last rejoin, not before
  for (const JoinProbe& j : rejoins) ASSERT_EQ(j->calls, 0);
  rejoins.push_back(join(gc, join_request("m", ids.back()), now + 200));
  for (const JoinProbe& j : rejoins) {
    ASSERT_EQ(j->calls, 1);
    EXPECT_EQ(j->result.generation, 2);
  }
  EXPECT_EQ(rejoins[0]->result.members.size(), kMembers - 1);
  gc.tick(now + 300);  // debug builds recount the group's counts here
}

TEST(GroupCoordinator, JoinArgumentsAreChecked) {
  GroupCoordinator gc(no_initial_delay());

  // Session timeouts outside [6 s, 30 min]
  JoinGroupRequest r = join_request("a");
  r.session_timeout_ms = 5'999;
  EXPECT_EQ(join(gc, r, kT0)->result.error, GroupError::kInvalidSessionTimeout);
  r.session_timeout_ms = 1'800'001;
  EXPECT_EQ(join(gc, r, kT0)->result.error, GroupError::kInvalidSessionTimeout);

  // An empty group id, an empty protocol type, no protocols
  JoinGroupRequest no_group = join_request("a");
  no_group.group_id = "";
  EXPECT_EQ(join(gc, no_group, kT0)->result.error, GroupError::kInvalidGroupId);
  JoinGroupRequest no_type = join_request("a");
  no_type.protocol_type = "";
  EXPECT_EQ(join(gc, no_type, kT0)->result.error, GroupError::kInconsistentGroupProtocol);
  JoinGroupRequest no_protocols = join_request("a");
  no_protocols.protocols.clear();
  EXPECT_EQ(join(gc, no_protocols, kT0)->result.error, GroupError::kInconsistentGroupProtocol);

  // Expect no group left behind by refused joins
  EXPECT_EQ(gc.group_count(), 0u);

  // The limits themselves are accepted
  r.session_timeout_ms = 6'000;
  EXPECT_EQ(join(gc, r, kT0)->result.error, GroupError::kNone);
}

TEST(GroupCoordinator, GroupMaxSizeRefusesExtraMembers) {
  // Given a group limited to two members, both in
  GroupCoordinatorOptions options = no_initial_delay();
  options.max_group_size = 2;
  GroupCoordinator gc(options);
  const Pair pair = stable_pair(gc, kT0);

  // When a third joins
  const JoinProbe c = join(gc, join_request("c"), kT0 + 10);

  // Expect it refused, with no member id, and the group undisturbed
  ASSERT_EQ(c->calls, 1);
  EXPECT_EQ(c->result.error, GroupError::kGroupMaxSizeReached);
  EXPECT_EQ(c->result.member_id, "");
  EXPECT_EQ(gc.describe("g").state, "Stable");
  EXPECT_EQ(gc.heartbeat("g", 2, pair.b, kDynamic, kT0 + 10), GroupError::kNone);
}

// ---- static members ------------------------------------------------------------------------------

TEST(GroupCoordinator, StaticMemberReplacementFencesTheOldMemberId) {
  // Given a Stable group of one static member
  GroupCoordinator gc(no_initial_delay());
  const std::optional<std::string> instance = "instance-1";
  JoinGroupRequest first = join_request("a");
  first.group_instance_id = instance;
  first.require_known_member_id = true;  // static members are never asked to rejoin with an id
  const JoinProbe a = join(gc, first, kT0);
  ASSERT_EQ(a->result.error, GroupError::kNone);
  const std::string old_id = a->result.member_id;
  EXPECT_TRUE(old_id.starts_with("instance-1-")) << old_id;
  ASSERT_EQ(sync(gc, sync_request(old_id, 1, {{old_id, "mine"}}), kT0)->calls, 1);

  // When a new instance with the same instance id joins without a member id
  JoinGroupRequest restarted = join_request("a");
  restarted.group_instance_id = instance;
  restarted.client_host = "/10.0.0.2";
  const JoinProbe a2 = join(gc, restarted, kT0 + 100);

  // Expect a new id in the same generation, no rebalance, and the old leader id in the answer
  ASSERT_EQ(a2->calls, 1);
  EXPECT_EQ(a2->result.error, GroupError::kNone);
  const std::string new_id = a2->result.member_id;
  EXPECT_NE(new_id, old_id);
  EXPECT_EQ(a2->result.generation, 1);
  EXPECT_EQ(a2->result.leader_id, old_id);
  EXPECT_EQ(gc.describe("g").state, "Stable");
  EXPECT_EQ(gc.describe("g").members[0].client_host, "/10.0.0.2");

  // And the old id fenced everywhere, the new one keeping the assignment
  EXPECT_EQ(gc.heartbeat("g", 1, old_id, instance, kT0 + 200), GroupError::kFencedInstanceId);
  EXPECT_EQ(sync(gc, sync_request(old_id, 1), kT0 + 200)->result.error, GroupError::kUnknownMemberId);
  SyncGroupRequest old_sync = sync_request(old_id, 1);
  old_sync.group_instance_id = instance;
  EXPECT_EQ(sync(gc, old_sync, kT0 + 200)->result.error, GroupError::kFencedInstanceId);
  EXPECT_EQ(gc.check_commit("g", 1, old_id, instance, kT0 + 200), GroupError::kFencedInstanceId);
  EXPECT_EQ(join(gc, [&] {
              JoinGroupRequest r = join_request("a", old_id);
              r.group_instance_id = instance;
              return r;
            }(), kT0 + 200)->result.error,
            GroupError::kFencedInstanceId);
  EXPECT_EQ(gc.heartbeat("g", 1, new_id, instance, kT0 + 200), GroupError::kNone);
  SyncGroupRequest new_sync = sync_request(new_id, 1);
  new_sync.group_instance_id = instance;
  const SyncProbe s = sync(gc, new_sync, kT0 + 200);
  EXPECT_EQ(s->result.error, GroupError::kNone);
  EXPECT_EQ(s->result.assignment, "mine");

  // And a leave by instance id alone removes it
  EXPECT_EQ(gc.leave("g", {{"", instance}}, kT0 + 300), std::vector<GroupError>{GroupError::kNone});
  EXPECT_EQ(gc.describe("g").state, "Empty");
}

TEST(GroupCoordinator, StaticMemberReplacedDuringRebalanceFencesTheWaitingJoin) {
  // Given a static leader and a dynamic member, rebalancing, the leader's join waiting
  GroupCoordinator gc(no_initial_delay());
  const std::optional<std::string> instance = "instance-1";
  JoinGroupRequest a_first = join_request("a");
  a_first.group_instance_id = instance;
  const std::string a_id = join(gc, a_first, kT0)->result.member_id;
  ASSERT_EQ(sync(gc, sync_request(a_id, 1), kT0)->calls, 1);
  const JoinProbe b = join(gc, join_request("b"), kT0 + 10);
  JoinGroupRequest a_rejoin = join_request("a", a_id);
  a_rejoin.group_instance_id = instance;
  a_rejoin.protocols = {{"range", "other"}};
  const JoinProbe a_waiting = join(gc, a_rejoin, kT0 + 20);
  const std::string b_id = b->result.member_id;
  ASSERT_EQ(b->calls, 1);  // both joined: generation 2
  ASSERT_EQ(a_waiting->calls, 1);

  // When the leader rejoins with other metadata (its join now waits for b's), then a new
  // instance replaces it
  JoinGroupRequest a_changed = a_rejoin;
  a_changed.protocols = {{"range", "changed"}};
  const JoinProbe a_old = join(gc, a_changed, kT0 + 30);
  ASSERT_EQ(a_old->calls, 0);
  JoinGroupRequest replacement = join_request("a");
  replacement.group_instance_id = instance;
  const JoinProbe a_new = join(gc, replacement, kT0 + 40);

  // Expect the old join fenced and the new one waiting in its place
  ASSERT_EQ(a_old->calls, 1);
  EXPECT_EQ(a_old->result.error, GroupError::kFencedInstanceId);
  EXPECT_EQ(a_new->calls, 0);

  // When b rejoins
  const JoinProbe b2 = join(gc, join_request("b", b_id), kT0 + 50);

  // Expect the new id to lead generation 3
  ASSERT_EQ(a_new->calls, 1);
  ASSERT_EQ(b2->calls, 1);
  EXPECT_EQ(a_new->result.generation, 3);
  EXPECT_NE(a_new->result.member_id, a_id);
  EXPECT_EQ(a_new->result.leader_id, a_new->result.member_id);
  EXPECT_EQ(member_ids(a_new->result.members), (std::vector<std::string>{a_new->result.member_id, b_id}));
  EXPECT_EQ(a_old->calls, 1);
}

TEST(GroupCoordinator, StaticLeaderMissingAJoinPhaseStaysButLosesTheLead) {
  // Given a static leader a and a dynamic b, Stable in generation 2
  GroupCoordinator gc(no_initial_delay());
  const std::optional<std::string> instance = "instance-1";
  JoinGroupRequest a_join = join_request("a");
  a_join.group_instance_id = instance;
  const std::string a_id = join(gc, a_join, kT0)->result.member_id;
  ASSERT_EQ(sync(gc, sync_request(a_id, 1), kT0)->calls, 1);
  const JoinProbe b = join(gc, join_request("b"), kT0);
  a_join.member_id = a_id;
  ASSERT_EQ(join(gc, a_join, kT0)->result.generation, 2);
  const std::string b_id = b->result.member_id;
  SyncGroupRequest a_sync = sync_request(a_id, 2, {});
  a_sync.group_instance_id = instance;
  ASSERT_EQ(sync(gc, sync_request(b_id, 2), kT0)->calls, 0);
  ASSERT_EQ(sync(gc, a_sync, kT0)->calls, 1);

  // When b rejoins with new metadata and a only heartbeats until the rebalance timeout
  const JoinProbe b2 = join(gc, join_request("b", b_id, {{"range", "b2"}}), kT0);
  for (std::int64_t t = kT0 + 5'000; t < kT0 + kRebalanceMs; t += 5'000) {
    EXPECT_EQ(gc.heartbeat("g", 2, a_id, instance, t), GroupError::kRebalanceInProgress);
    gc.tick(t);
  }
  gc.tick(kT0 + kRebalanceMs);

  // Expect a kept (static members wait for their session) and b leading generation 3
  ASSERT_EQ(b2->calls, 1);
  EXPECT_EQ(b2->result.generation, 3);
  EXPECT_EQ(b2->result.leader_id, b_id);
  EXPECT_EQ(member_ids(b2->result.members), (std::vector<std::string>{a_id, b_id}));
  EXPECT_EQ(gc.heartbeat("g", 2, a_id, instance, kT0 + kRebalanceMs), GroupError::kIllegalGeneration);

  // When a catches up and both later rejoin
  const JoinProbe a3 = join(gc, a_join, kT0 + kRebalanceMs + 1);
  ASSERT_EQ(a3->calls, 1);  // the generation it missed, at once
  EXPECT_EQ(a3->result.generation, 3);
  EXPECT_EQ(a3->result.leader_id, b_id);
  a_sync.generation = 3;
  const SyncProbe sa = sync(gc, a_sync, kT0 + kRebalanceMs + 2);
  EXPECT_EQ(sync(gc, sync_request(b_id, 3, {{a_id, "A"}, {b_id, "B"}}), kT0 + kRebalanceMs + 3)->calls, 1);
  ASSERT_EQ(sa->calls, 1);
  EXPECT_EQ(sa->result.assignment, "A");
  const JoinProbe b4 = join(gc, join_request("b", b_id, {{"range", "b2"}}), kT0 + kRebalanceMs + 4);
  const JoinProbe a4 = join(gc, a_join, kT0 + kRebalanceMs + 5);

  // Expect b, which rejoined, to keep the lead although a joined the group first
  ASSERT_EQ(b4->calls, 1);
  EXPECT_EQ(b4->result.generation, 4);
  EXPECT_EQ(b4->result.leader_id, b_id);
  EXPECT_EQ(a4->result.leader_id, b_id);
  EXPECT_TRUE(a4->result.members.empty());
}

// ---- sync errors ---------------------------------------------------------------------------------

TEST(GroupCoordinator, SyncRefusals) {
  // Given a group past its join phase
  GroupCoordinator gc(no_initial_delay());
  const std::string id = join(gc, join_request("a"), kT0)->result.member_id;

  // Expect each refusal at once
  EXPECT_EQ(sync(gc, sync_request("stranger", 1), kT0)->result.error, GroupError::kUnknownMemberId);
  SyncGroupRequest elsewhere = sync_request(id, 1);
  elsewhere.group_id = "elsewhere";
  EXPECT_EQ(sync(gc, elsewhere, kT0)->result.error, GroupError::kUnknownMemberId);
  SyncGroupRequest no_group = sync_request(id, 1);
  no_group.group_id = "";
  EXPECT_EQ(sync(gc, no_group, kT0)->result.error, GroupError::kInvalidGroupId);
  EXPECT_EQ(sync(gc, sync_request(id, 0), kT0)->result.error, GroupError::kIllegalGeneration);
  EXPECT_EQ(sync(gc, sync_request(id, 2), kT0)->result.error, GroupError::kIllegalGeneration);
  SyncGroupRequest wrong_type = sync_request(id, 1);
  wrong_type.protocol_type = "connect";
  EXPECT_EQ(sync(gc, wrong_type, kT0)->result.error, GroupError::kInconsistentGroupProtocol);
  SyncGroupRequest wrong_name = sync_request(id, 1);
  wrong_name.protocol_name = "roundrobin";
  EXPECT_EQ(sync(gc, wrong_name, kT0)->result.error, GroupError::kInconsistentGroupProtocol);

  // And the matching one goes through
  SyncGroupRequest right = sync_request(id, 1, {{id, "x"}});
  right.protocol_type = "consumer";
  right.protocol_name = "range";
  EXPECT_EQ(sync(gc, right, kT0)->result.error, GroupError::kNone);
}

// ---- the initial delay ---------------------------------------------------------------------------

TEST(GroupCoordinator, InitialRebalanceDelayIsHonouredAndExtendedForNewArrivals) {
  // Given the default 3 s initial delay
  GroupCoordinator gc;

  // When one member joins a new group
  const JoinProbe a = join(gc, join_request("a"), kT0);

  // Expect the join to wait for the delay, not for the other members
  EXPECT_EQ(a->calls, 0);
  EXPECT_EQ(gc.describe("g").state, "PreparingRebalance");
  EXPECT_EQ(gc.next_deadline_ms(), kT0 + 3'000);

  // When a second member arrives during the delay
  const JoinProbe b = join(gc, join_request("b"), kT0 + 1'000);
  gc.tick(kT0 + 2'999);
  EXPECT_EQ(a->calls, 0);
  gc.tick(kT0 + 3'000);

  // Expect the delay extended once more (Kafka's InitialDelayedJoin)
  EXPECT_EQ(a->calls, 0);
  EXPECT_EQ(gc.next_deadline_ms(), kT0 + 6'000);
  gc.tick(kT0 + 5'999);
  EXPECT_EQ(b->calls, 0);
  gc.tick(kT0 + 6'000);

  // Expect both in generation 1
  ASSERT_EQ(a->calls, 1);
  ASSERT_EQ(b->calls, 1);
  EXPECT_EQ(a->result.generation, 1);
  EXPECT_EQ(member_ids(a->result.members), (std::vector<std::string>{a->result.member_id, b->result.member_id}));
}

TEST(GroupCoordinator, InitialDelayIsNotExtendedBeyondTheRebalanceTimeout) {
  // Given a rebalance timeout of 4 s and a 3 s initial delay
  GroupCoordinator gc;
  JoinGroupRequest r = join_request("a");
  r.rebalance_timeout_ms = 4'000;
  const JoinProbe a = join(gc, r, kT0);

  // When members keep arriving
  JoinGroupRequest rb = join_request("b");
  rb.rebalance_timeout_ms = 4'000;
  const JoinProbe b = join(gc, rb, kT0 + 10);
  gc.tick(kT0 + 3'000);  // extended by min(3 s, 1 s left)
  EXPECT_EQ(gc.next_deadline_ms(), kT0 + 4'000);
  JoinGroupRequest rc = join_request("c");
  rc.rebalance_timeout_ms = 4'000;
  const JoinProbe c = join(gc, rc, kT0 + 3'500);
  gc.tick(kT0 + 4'000);

  // Expect the phase complete at the rebalance timeout anyway
  ASSERT_EQ(c->calls, 1);
  EXPECT_EQ(c->result.generation, 1);
  EXPECT_EQ(a->result.members.size(), 3u);
}

// ---- exactly-once completions --------------------------------------------------------------------

TEST(GroupCoordinator, RebalanceAnswersWaitingSyncsWithRebalanceInProgress) {
  // Given a pair past its join phase with the follower's sync waiting
  GroupCoordinator gc(no_initial_delay());
  const JoinProbe a = join(gc, join_request("a"), kT0);
  ASSERT_EQ(sync(gc, sync_request(a->result.member_id, 1), kT0)->calls, 1);
  const JoinProbe b = join(gc, join_request("b"), kT0);
  const JoinProbe a2 = join(gc, join_request("a", a->result.member_id), kT0);
  const SyncProbe sb = sync(gc, sync_request(b->result.member_id, 2), kT0 + 1);
  ASSERT_EQ(sb->calls, 0);

  // When a third member joins
  const JoinProbe c = join(gc, join_request("c"), kT0 + 2);

  // Expect the waiting sync answered once with kRebalanceInProgress
  ASSERT_EQ(sb->calls, 1);
  EXPECT_EQ(sb->result.error, GroupError::kRebalanceInProgress);
  EXPECT_EQ(c->calls, 0);

  // And a later leader sync for the old generation changes nothing
  EXPECT_EQ(sync(gc, sync_request(a->result.member_id, 2, {}), kT0 + 3)->result.error, GroupError::kRebalanceInProgress);
  EXPECT_EQ(sb->calls, 1);
}

TEST(GroupCoordinator, SupersededJoinAndSyncAreAnsweredOnce) {
  // Given a leader past its join phase, and b holding a fresh id (which holds the next phase open)
  GroupCoordinator gc(no_initial_delay());
  const std::string id = join(gc, join_request("a"), kT0)->result.member_id;
  JoinGroupRequest b_first = join_request("b");
  b_first.require_known_member_id = true;
  const std::string b_id = join(gc, b_first, kT0)->result.member_id;

  // When the leader joins twice with new metadata while the phase is open
  const JoinProbe j1 = join(gc, join_request("a", id, {{"range", "v2"}}), kT0 + 1);
  const JoinProbe j2 = join(gc, join_request("a", id, {{"range", "v2"}}), kT0 + 2);

  // Expect the first answered as superseded, once; the second waiting
  ASSERT_EQ(j1->calls, 1);
  EXPECT_EQ(j1->result.error, GroupError::kRebalanceInProgress);
  EXPECT_EQ(j2->calls, 0);

  // When b joins
  const JoinProbe b = join(gc, join_request("b", b_id), kT0 + 3);
  ASSERT_EQ(b->calls, 1);
  ASSERT_EQ(j2->calls, 1);
  EXPECT_EQ(j2->result.generation, 2);
  EXPECT_EQ(j1->calls, 1);

  // When b syncs twice before the leader
  const SyncProbe s1 = sync(gc, sync_request(b_id, 2), kT0 + 4);
  const SyncProbe s2 = sync(gc, sync_request(b_id, 2), kT0 + 5);

  // Expect the first answered as superseded, the second with the assignment
  ASSERT_EQ(s1->calls, 1);
  EXPECT_EQ(s1->result.error, GroupError::kRebalanceInProgress);
  EXPECT_EQ(s2->calls, 0);
  EXPECT_EQ(sync(gc, sync_request(id, 2, {{b_id, "b-part"}}), kT0 + 6)->calls, 1);
  ASSERT_EQ(s2->calls, 1);
  EXPECT_EQ(s2->result.assignment, "b-part");
  EXPECT_EQ(s1->calls, 1);
}

TEST(GroupCoordinator, DestructionCompletesEveryWaitingCallOnce) {
  // Given a waiting join in one group and a waiting sync in another
  auto gc = std::make_unique<GroupCoordinator>();
  const JoinProbe waiting_join = join(*gc, join_request("a"), kT0);  // the initial delay holds it
  JoinGroupRequest other = join_request("b");
  other.group_id = "other";
  const JoinProbe b = join(*gc, other, kT0);
  gc->tick(kT0 + 3'000);
  ASSERT_EQ(b->calls, 1);
  ASSERT_EQ(waiting_join->calls, 1);  // same deadline; both completed
  const JoinProbe c = join(*gc, [] {
    JoinGroupRequest r = join_request("c");
    r.group_id = "other";
    return r;
  }(), kT0 + 3'001);
  const JoinProbe b2 = join(*gc, [&] {
    JoinGroupRequest r = join_request("b", b->result.member_id);
    r.group_id = "other";
    return r;
  }(), kT0 + 3'002);
  ASSERT_EQ(c->calls, 1);
  SyncGroupRequest s = sync_request(c->result.member_id, 2);
  s.group_id = "other";
  const SyncProbe waiting_sync = sync(*gc, s, kT0 + 3'003);
  ASSERT_EQ(waiting_sync->calls, 0);
  const JoinProbe new_join = join(*gc, join_request("d"), kT0 + 3'004);
  ASSERT_EQ(new_join->calls, 0);

  // When the coordinator is destroyed
  gc.reset();

  // Expect each waiting call answered once with kCoordinatorNotAvailable, the others untouched
  ASSERT_EQ(waiting_sync->calls, 1);
  EXPECT_EQ(waiting_sync->result.error, GroupError::kCoordinatorNotAvailable);
  ASSERT_EQ(new_join->calls, 1);
  EXPECT_EQ(new_join->result.error, GroupError::kCoordinatorNotAvailable);
  EXPECT_EQ(waiting_join->calls, 1);
  EXPECT_EQ(b->calls, 1);
  EXPECT_EQ(b2->calls, 1);
  EXPECT_EQ(c->calls, 1);
}

TEST(GroupCoordinator, EveryCompletionIsCalledExactlyOnceThroughAChurningGroup) {
  // Given members joining, syncing, leaving and expiring, every completion counted
  auto gc = std::make_unique<GroupCoordinator>(no_initial_delay());
  std::vector<JoinProbe> joins;
  std::vector<SyncProbe> syncs;
  std::vector<std::string> ids;
  std::int64_t now = kT0;
  for (int round = 0; round < 6; ++round) {
    now += 1'000;
    joins.push_back(join(*gc, join_request("m" + std::to_string(round)), now));
    // Everyone known rejoins; the leader syncs with an assignment for all
    for (const std::string& id : ids) joins.push_back(join(*gc, join_request("x", id), now));
    const JoinGroupResult& last = joins.back()->result;
    if (joins.back()->calls == 1 && last.error == GroupError::kNone) {
      ids.clear();
      for (const JoinProbe& j : joins) {
        if (j->calls == 1 && j->result.generation == last.generation && j->result.error == GroupError::kNone)
          ids.push_back(j->result.member_id);
      }
      for (const std::string& id : ids) syncs.push_back(sync(*gc, sync_request(id, last.generation, {{id, "x"}}), now));
    }
    if (round % 2 == 1 && !ids.empty()) {
      EXPECT_EQ(gc->leave("g", {{ids.back(), kDynamic}}, now), std::vector<GroupError>{GroupError::kNone});
      ids.pop_back();
    }
  }
  // A newcomer waits in the rebalance while the others stop heartbeating and expire
  const std::int32_t generation = gc->describe("g").generation;
  joins.push_back(join(*gc, join_request("late"), now));
  for (const std::string& id : ids) syncs.push_back(sync(*gc, sync_request(id, generation), now));
  gc->tick(now + kSessionMs);
  EXPECT_EQ(joins.back()->calls, 1);
  EXPECT_EQ(gc->describe("g").members.size(), 1u);
  // One more starts a join phase that the destruction interrupts ("late" never rejoins)
  joins.push_back(join(*gc, join_request("last"), now + kSessionMs));
  EXPECT_EQ(joins.back()->calls, 0);

  // When the coordinator is destroyed
  gc.reset();

  // Expect every completion called exactly once
  for (std::size_t i = 0; i < joins.size(); ++i) EXPECT_EQ(joins[i]->calls, 1) << "join " << i;
  for (std::size_t i = 0; i < syncs.size(); ++i) EXPECT_EQ(syncs[i]->calls, 1) << "sync " << i;
}

TEST(GroupCoordinator, SessionExpiryAnswersNothingTwiceAndKeepsWaitingSyncsAlive) {
  // Given a pair past its join phase where the follower's sync waits beyond its session
  GroupCoordinator gc(no_initial_delay());
  const JoinProbe a = join(gc, join_request("a"), kT0);
  ASSERT_EQ(sync(gc, sync_request(a->result.member_id, 1), kT0)->calls, 1);
  const JoinProbe b = join(gc, join_request("b"), kT0);
  const JoinProbe a2 = join(gc, join_request("a", a->result.member_id), kT0);
  const SyncProbe sb = sync(gc, sync_request(b->result.member_id, 2), kT0);
  EXPECT_EQ(gc.heartbeat("g", 2, a->result.member_id, kDynamic, kT0 + 9'000), GroupError::kNone);

  // When b's session would have ended (it waits in its sync, so it does not) and the leader syncs
  gc.tick(kT0 + kSessionMs + 1);
  ASSERT_EQ(sb->calls, 0);
  const SyncProbe sa = sync(gc, sync_request(a->result.member_id, 2, {{b->result.member_id, "b"}}), kT0 + kSessionMs + 2);

  // Expect b served, its session counted from its answer
  ASSERT_EQ(sb->calls, 1);
  EXPECT_EQ(sb->result.assignment, "b");
  EXPECT_EQ(gc.describe("g").members.size(), 2u);
  EXPECT_EQ(gc.heartbeat("g", 2, a->result.member_id, kDynamic, kT0 + 15'000), GroupError::kNone);
  gc.tick(kT0 + kSessionMs + 2 + kSessionMs);
  EXPECT_EQ(gc.describe("g").members.size(), 1u);  // b stopped heartbeating after its answer; a did not
  EXPECT_EQ(sb->calls, 1);
  EXPECT_EQ(sa->calls, 1);
}

// ---- commits ---------------------------------------------------------------------------------------

TEST(GroupCoordinator, CheckCommitRules) {
  GroupCoordinator gc(no_initial_delay());

  // A group the coordinator does not know: only commits from outside group management
  EXPECT_EQ(gc.check_commit("g", -1, "", kDynamic, kT0), GroupError::kNone);
  EXPECT_EQ(gc.check_commit("g", 3, "", kDynamic, kT0), GroupError::kIllegalGeneration);
  EXPECT_EQ(gc.check_commit("g", -1, "someone", kDynamic, kT0), GroupError::kUnknownMemberId);
  EXPECT_EQ(gc.check_commit("", -1, "", kDynamic, kT0), GroupError::kInvalidGroupId);
  EXPECT_EQ(gc.group_count(), 0u);

  // A group with a member past its join phase
  const std::string id = join(gc, join_request("a"), kT0)->result.member_id;
  EXPECT_EQ(gc.check_commit("g", -1, "", kDynamic, kT0), GroupError::kUnknownMemberId);
  EXPECT_EQ(gc.check_commit("g", 1, id, kDynamic, kT0), GroupError::kRebalanceInProgress);
  EXPECT_EQ(gc.check_commit("g", 1, "stranger", kDynamic, kT0), GroupError::kUnknownMemberId);
  EXPECT_EQ(gc.check_commit("g", 0, id, kDynamic, kT0), GroupError::kIllegalGeneration);
  EXPECT_EQ(gc.check_commit("g", 1, id, std::optional<std::string>("not-static"), kT0), GroupError::kUnknownMemberId);

  // Stable
  ASSERT_EQ(sync(gc, sync_request(id, 1), kT0)->calls, 1);
  EXPECT_EQ(gc.check_commit("g", 1, id, kDynamic, kT0), GroupError::kNone);
  EXPECT_EQ(gc.check_commit("g", 2, id, kDynamic, kT0), GroupError::kIllegalGeneration);

  // A commit keeps the session like a heartbeat
  EXPECT_EQ(gc.check_commit("g", 1, id, kDynamic, kT0 + 9'000), GroupError::kNone);
  gc.tick(kT0 + kSessionMs);
  EXPECT_EQ(gc.describe("g").members.size(), 1u);

  // Empty again: commits from outside group management are allowed
  EXPECT_EQ(gc.leave("g", {{id, kDynamic}}, kT0 + kSessionMs), std::vector<GroupError>{GroupError::kNone});
  EXPECT_EQ(gc.check_commit("g", -1, "", kDynamic, kT0 + kSessionMs), GroupError::kNone);
  EXPECT_EQ(gc.check_commit("g", 1, id, kDynamic, kT0 + kSessionMs), GroupError::kUnknownMemberId);
}

// ---- describe, list, names -----------------------------------------------------------------------

TEST(GroupCoordinator, DescribeAndList) {
  GroupCoordinator gc(no_initial_delay());

  // An unknown group is Dead, without error
  const GroupDescription unknown = gc.describe("nope");
  EXPECT_EQ(unknown.error, GroupError::kNone);
  EXPECT_EQ(unknown.group_id, "nope");
  EXPECT_EQ(unknown.state, "Dead");
  EXPECT_TRUE(unknown.members.empty());
  EXPECT_TRUE(gc.list().empty());
  EXPECT_EQ(gc.next_deadline_ms(), std::nullopt);

  // A Stable group shows its protocol, metadata and assignments
  const Pair pair = stable_pair(gc, kT0);
  const GroupDescription d = gc.describe("g");
  EXPECT_EQ(d.state, "Stable");
  EXPECT_EQ(d.protocol_type, "consumer");
  EXPECT_EQ(d.protocol_name, "range");
  EXPECT_EQ(d.generation, 2);
  ASSERT_EQ(d.members.size(), 2u);
  EXPECT_EQ(d.members[0].member_id, pair.a);
  EXPECT_EQ(d.members[0].client_id, "a");
  EXPECT_EQ(d.members[0].client_host, "/10.0.0.1");
  EXPECT_EQ(d.members[0].metadata, "a-meta");
  EXPECT_EQ(d.members[0].assignment, "A");
  EXPECT_EQ(d.members[1].assignment, "B");
  EXPECT_FALSE(d.members[1].group_instance_id.has_value());

  // A rebalancing group shows its members without protocol, metadata or assignments
  JoinGroupRequest other = join_request("c");
  other.group_id = "another";
  other.protocol_type = "connect";
  join(gc, other, kT0);
  join(gc, join_request("a", pair.a), kT0 + 1);
  const GroupDescription rebalancing = gc.describe("g");
  EXPECT_EQ(rebalancing.state, "PreparingRebalance");
  EXPECT_EQ(rebalancing.protocol_name, "");
  ASSERT_EQ(rebalancing.members.size(), 2u);
  EXPECT_EQ(rebalancing.members[0].metadata, "");
  EXPECT_EQ(rebalancing.members[0].assignment, "");

  // list() names every group, in id order
  const std::vector<GroupListing> listed = gc.list();
  ASSERT_EQ(listed.size(), 2u);
  EXPECT_EQ(listed[0].group_id, "another");
  EXPECT_EQ(listed[0].protocol_type, "connect");
  EXPECT_EQ(listed[0].state, "CompletingRebalance");
  EXPECT_EQ(listed[1].group_id, "g");
  EXPECT_EQ(listed[1].state, "PreparingRebalance");
  EXPECT_EQ(gc.group_count(), 2u);
}

TEST(GroupCoordinator, ErrorNamesAreKafkas) {
  EXPECT_EQ(group_error_name(GroupError::kNone), "NONE");
  EXPECT_EQ(group_error_name(GroupError::kUnknownMemberId), "UNKNOWN_MEMBER_ID");
  EXPECT_EQ(group_error_name(GroupError::kIllegalGeneration), "ILLEGAL_GENERATION");
  EXPECT_EQ(group_error_name(GroupError::kRebalanceInProgress), "REBALANCE_IN_PROGRESS");
  EXPECT_EQ(group_error_name(GroupError::kInconsistentGroupProtocol), "INCONSISTENT_GROUP_PROTOCOL");
  EXPECT_EQ(group_error_name(GroupError::kInvalidSessionTimeout), "INVALID_SESSION_TIMEOUT");
  EXPECT_EQ(group_error_name(GroupError::kMemberIdRequired), "MEMBER_ID_REQUIRED");
  EXPECT_EQ(group_error_name(GroupError::kGroupMaxSizeReached), "GROUP_MAX_SIZE_REACHED");
  EXPECT_EQ(group_error_name(GroupError::kFencedInstanceId), "FENCED_INSTANCE_ID");
  EXPECT_EQ(group_error_name(GroupError::kInvalidGroupId), "INVALID_GROUP_ID");
  EXPECT_EQ(group_error_name(GroupError::kGroupIdNotFound), "GROUP_ID_NOT_FOUND");
  EXPECT_EQ(group_error_name(GroupError::kNonEmptyGroup), "NON_EMPTY_GROUP");
  EXPECT_EQ(group_error_name(GroupError::kCoordinatorNotAvailable), "COORDINATOR_NOT_AVAILABLE");
}

}  // namespace
}  // namespace weft
