// Consumer groups' membership, as Kafka's classic group protocol runs it: members join, one of
// them (the leader) computes the assignment, everyone syncs to receive their part, heartbeats
// keep the session, a leave or a missed session starts a rebalance. Protocol-agnostic: the
// coordinator never reads the members' metadata or assignments (the client leader assigns).
//
// States (Kafka's names): Empty -> PreparingRebalance -> CompletingRebalance -> Stable, back to
// PreparingRebalance on any membership change, Empty again (next generation) when the last member
// left. The next tick() forgets a group that is Empty with no member id outstanding (its committed
// offsets live in the offset store, which the Kafka listener consults to describe and list such
// a group, as Kafka keeps an Empty group only while it has offsets); "Dead" is what describe()
// says of a group the coordinator does not know. Each join costs the same whatever the group's
// size (support counts per protocol, a count of waiting joins). A rebalance completes when every
// known member has rejoined (and every member id handed out with kMemberIdRequired has been used
// or has expired) or when the largest rebalance timeout of the members passes: dynamic members
// that did not rejoin are removed, static ones stay until their session ends. Members that got
// the new generation but do not sync within the rebalance timeout are removed too (Kafka 3.x).
// A rebalance of an Empty group first waits `initial_rebalance_delay_ms` for more members
// (group.initial.rebalance.delay.ms), again by the same delay while new members keep arriving,
// never beyond the first member's rebalance timeout (Kafka's InitialDelayedJoin); 0 disables it.
//
// Sessions: a heartbeat, join, sync or allowed commit keeps a member's session; a member whose
// join or sync waits keeps it meanwhile (a new member's first join at most 5 minutes, Kafka's
// NewMemberJoinTimeoutMs). tick() removes members whose session ended.
//
// Replies that must wait (join during a rebalance, sync before the leader's assignment) are
// completions called later, from join(), sync(), leave() or tick() on the caller's thread, once
// the coordinator's state is consistent (a completion may call the coordinator again). Every
// completion is called exactly once: when the member is removed meanwhile with kUnknownMemberId
// (kFencedInstanceId when a newer instance of a static member took its place), a waiting sync
// with kRebalanceInProgress when a rebalance starts, a join or sync that the same member's next
// one replaces with kRebalanceInProgress. A completion must not throw (that terminates).
//
// Thread contract: one thread drives a coordinator (the Kafka listener's event loop); nothing is
// locked. Time comes in as `now_ms` (monotonic milliseconds) so tests drive the clock.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace weft {

// The outcomes, named after the Kafka errors they become on the wire.
enum class GroupError : std::uint8_t {
  kNone,
  kUnknownMemberId,           // the member is not (or no longer) in the group
  kIllegalGeneration,         // the generation is not the group's current one
  kRebalanceInProgress,       // heartbeat/sync/commit while the group rebalances: rejoin
  kInconsistentGroupProtocol, // protocol type differs or no protocol all members support
  kInvalidSessionTimeout,     // outside [min_session_timeout_ms, max_session_timeout_ms]
  kMemberIdRequired,          // a new member got its id in this reply and must join again with it
  kGroupMaxSizeReached,
  kFencedInstanceId,          // a static member (group instance id) replaced by a newer one
  kInvalidGroupId,            // empty group id
  kGroupIdNotFound,
  kNonEmptyGroup,
  kCoordinatorNotAvailable,   // the coordinator was shut down
  kNotCoordinator,            // another node coordinates this group (a cluster): ask FindCoordinator again
};
std::string_view group_error_name(GroupError error) noexcept;

struct GroupProtocol {
  std::string name;      // e.g. "range", "roundrobin", "cooperative-sticky"
  std::string metadata;  // opaque bytes
};

struct JoinGroupRequest {
  std::string group_id;
  std::string member_id;                         // empty: a new member
  std::optional<std::string> group_instance_id;  // static membership (KIP-345)
  std::string client_id;
  std::string client_host;
  std::string protocol_type;  // e.g. "consumer"; every member must use the same
  std::vector<GroupProtocol> protocols;  // in the member's order of preference
  std::int32_t session_timeout_ms = 10'000;
  std::int32_t rebalance_timeout_ms = -1;  // -1: the session timeout (JoinGroup v0)
  // JoinGroup v4+: a new member first gets kMemberIdRequired with its new id and joins again.
  bool require_known_member_id = false;
};

struct JoinGroupMember {
  std::string member_id;
  std::optional<std::string> group_instance_id;
  std::string metadata;  // this member's metadata for the chosen protocol
};

struct JoinGroupResult {
  GroupError error = GroupError::kNone;
  std::int32_t generation = -1;
  std::string protocol_type;
  std::string protocol_name;  // chosen: supported by all, most preferred by the votes of all
  std::string leader_id;
  std::string member_id;      // this member's id (set with kMemberIdRequired too)
  std::vector<JoinGroupMember> members;  // every member: for the leader only, empty otherwise
};

struct SyncGroupRequest {
  std::string group_id;
  std::int32_t generation = -1;
  std::string member_id;
  std::optional<std::string> group_instance_id;
  std::optional<std::string> protocol_type;  // v5+: checked when given
  std::optional<std::string> protocol_name;
  std::vector<std::pair<std::string, std::string>> assignments;  // leader only: member id -> bytes
};

struct SyncGroupResult {
  GroupError error = GroupError::kNone;
  std::string protocol_type;
  std::string protocol_name;
  std::string assignment;  // this member's part of the leader's assignment (empty when none)
};

struct LeavingMember {
  std::string member_id;  // may be empty when group_instance_id is given
  std::optional<std::string> group_instance_id;
};

struct GroupListing {
  std::string group_id;
  std::string protocol_type;
  std::string state;  // "Empty", "PreparingRebalance", "CompletingRebalance", "Stable", "Dead"
};

struct GroupMemberDescription {
  std::string member_id;
  std::optional<std::string> group_instance_id;
  std::string client_id;
  std::string client_host;
  std::string metadata;    // for the chosen protocol
  std::string assignment;  // from the last completed sync
};

struct GroupDescription {
  GroupError error = GroupError::kNone;  // kGroupIdNotFound is not used: an unknown group is "Dead"
  std::string group_id;
  std::string state;
  std::string protocol_type;
  std::string protocol_name;
  std::int32_t generation = 0;
  std::vector<GroupMemberDescription> members;
};

struct GroupCoordinatorOptions {
  std::int32_t min_session_timeout_ms = 6'000;       // group.min.session.timeout.ms
  std::int32_t max_session_timeout_ms = 1'800'000;   // group.max.session.timeout.ms
  std::int32_t initial_rebalance_delay_ms = 3'000;   // group.initial.rebalance.delay.ms
  std::uint32_t max_group_size = 0x7fffffff;         // group.max.size
  // In a cluster, whether this node coordinates a group (null: every group). Requests for
  // another node's group get kNotCoordinator.
  std::function<bool(std::string_view group_id)> owns_group;
};

class GroupCoordinator {
 public:
  using JoinDone = std::function<void(JoinGroupResult)>;
  using SyncDone = std::function<void(SyncGroupResult)>;

  explicit GroupCoordinator(GroupCoordinatorOptions options = {});
  ~GroupCoordinator();  // completes every pending join and sync with kCoordinatorNotAvailable
  GroupCoordinator(const GroupCoordinator&) = delete;
  GroupCoordinator& operator=(const GroupCoordinator&) = delete;

  void join(JoinGroupRequest request, std::int64_t now_ms, JoinDone done);
  void sync(SyncGroupRequest request, std::int64_t now_ms, SyncDone done);
  // Keeps the member's session; kRebalanceInProgress tells a stable member to rejoin.
  GroupError heartbeat(std::string_view group_id, std::int32_t generation, std::string_view member_id,
                       const std::optional<std::string>& group_instance_id, std::int64_t now_ms);
  // Removes members; one outcome per member, in order (kUnknownMemberId for one not in the group).
  std::vector<GroupError> leave(std::string_view group_id, const std::vector<LeavingMember>& members, std::int64_t now_ms);
  // Whether an offset commit from this member may proceed: generation -1 with an empty member id
  // is a commit from outside group management (assign()), allowed when the group has no members
  // or is unknown (the check creates no group). A member's allowed commit keeps its session.
  GroupError check_commit(std::string_view group_id, std::int32_t generation, std::string_view member_id,
                          const std::optional<std::string>& group_instance_id, std::int64_t now_ms);
  // Expires sessions and rebalance timeouts that passed by `now_ms`; calls completions.
  void tick(std::int64_t now_ms);
  // When tick() next has something to do (nothing: no timer is running).
  std::optional<std::int64_t> next_deadline_ms() const;

  std::vector<GroupListing> list() const;
  GroupDescription describe(std::string_view group_id) const;
  // Groups the coordinator knows, members included (for metrics).
  std::size_t group_count() const noexcept;
  // Whether this coordinator answers for the group (GroupCoordinatorOptions::owns_group).
  bool coordinates(std::string_view group_id) const;
  // What the coordinator remembers of a group it forgot once it emptied: its protocol type (Kafka
  // keeps an Empty group's type while it has offsets, and clients list groups by it) and when it
  // emptied (Kafka's offsets retention counts from then). Until a member joins it again; at most
  // kMaxForgottenGroups are remembered (past it the memory starts again empty).
  struct ForgottenGroup {
    std::string protocol_type;
    std::int64_t emptied_ms = 0;  // the now_ms of the tick that forgot it
  };
  std::optional<ForgottenGroup> forgotten(std::string_view group_id) const;
  // The forgotten groups that emptied at or after `since_ms`.
  std::vector<std::string> forgotten_since(std::int64_t since_ms) const;
  static constexpr std::size_t kMaxForgottenGroups = 100'000;

 private:
  struct State;
  std::unique_ptr<State> state_;
};

}  // namespace weft
