// Kafka's classic group membership (kafka.coordinator.group.GroupCoordinator, GroupMetadata and
// DelayedJoin/InitialDelayedJoin/DelayedSync of Kafka 2.x-3.x), kept in memory. Kafka's delayed
// operations become deadlines that tick() checks; its purgatory's "try to complete now" is
// try_complete_join(). Where weft departs from Kafka, the comment at the place says so.
//
// Completions are never called while the state changes: every public call gathers them in a
// local Completions, which calls them when the call returns, once the state is consistent.
#include "weft/fabric/group_coordinator.h"

#include <algorithm>
#include <chrono>
#include <map>
#include <random>
#include <set>
#include <type_traits>
#include <utility>
#include <variant>

#include "weft/fabric/offset_store.h"
#include "weft/fabric/result.h"

namespace weft {
namespace {

using JoinDone = GroupCoordinator::JoinDone;
using SyncDone = GroupCoordinator::SyncDone;

// How long a new member's first join may wait for its join phase (Kafka's NewMemberJoinTimeoutMs):
// a client that gave up and joined again as someone new must not linger as a defunct member.
constexpr std::int64_t kNewMemberJoinTimeoutMs = 5 * 60 * 1000;

// Kafka's Dead is not a state here: a group that is Empty is forgotten at the next tick, and
// describe() of a group that does not exist answers "Dead" as Kafka does.
enum class GroupState : std::uint8_t { kEmpty, kPreparingRebalance, kCompletingRebalance, kStable };

std::string_view state_name(GroupState state) noexcept {
  switch (state) {
    case GroupState::kEmpty: return "Empty";
    case GroupState::kPreparingRebalance: return "PreparingRebalance";
    case GroupState::kCompletingRebalance: return "CompletingRebalance";
    case GroupState::kStable: return "Stable";
    default: return "Dead";
  }
}

struct Member {
  std::string id;
  std::optional<std::string> instance_id;
  std::string client_id;
  std::string client_host;
  std::vector<GroupProtocol> protocols;  // the member's preference order, names unique
  std::int32_t session_timeout_ms = 0;
  std::int32_t rebalance_timeout_ms = 0;
  std::uint64_t seq = 0;          // order of joining the group: listing order, leader succession
  bool is_new = true;             // no join phase has completed for it yet
  std::int64_t joined_ms = 0;     // when it was added
  std::int64_t last_seen_ms = 0;  // its last heartbeat, join, sync or commit
  std::string assignment;         // its part of the last assignment
  JoinDone awaiting_join;         // set while its join waits for the join phase to complete
  SyncDone awaiting_sync;         // set while its sync waits for the leader's assignment
};

constexpr std::size_t kMaxMemberIdPrefixBytes = 255;

// Group ids name the offsets' files too: the offset store's rules (length, characters) hold here.
bool valid_group_id(std::string_view id) { return validate_group_id(id).ok(); }

struct Group {
  GroupState state = GroupState::kEmpty;
  std::int32_t generation = 0;
  std::string protocol_type;                // set by the first member, kept while Empty
  std::optional<std::string> protocol_name; // chosen for the generation; none while Empty
  std::string leader_id;                    // empty: no members
  std::map<std::string, Member, std::less<>> members;
  std::map<std::string, std::string, std::less<>> static_members;   // group instance id -> member id
  std::map<std::string, std::int64_t, std::less<>> pending_members; // member id -> expiry (kMemberIdRequired sent)
  std::set<std::string, std::less<>> pending_sync;  // members that have not synced in this generation
  // Counts kept as members change, so that a join costs the same in a group of any size (a
  // group of N members forms with N joins: counting them on each join made that N²).
  std::size_t awaiting_joins = 0;  // members whose join waits (Member::awaiting_join set)
  std::map<std::string, std::size_t, std::less<>> protocol_support;  // protocol name -> members listing it
  // PreparingRebalance: when the join phase completes even if members are missing.
  std::optional<std::int64_t> join_deadline_ms;
  // The join deadline is Kafka's InitialDelayedJoin: it never completes early, and is extended
  // (by initial_delay_ms, while initial_remaining_ms lasts) when new members arrived meanwhile.
  bool initial_delay = false;
  bool new_member_added = false;
  std::int32_t initial_delay_ms = 0;
  std::int32_t initial_remaining_ms = 0;
  // CompletingRebalance/Stable: members still in pending_sync by then are removed (Kafka's DelayedSync).
  std::optional<std::int64_t> sync_deadline_ms;
  std::uint64_t next_seq = 0;
};

struct JoinCall {
  JoinDone done;
  JoinGroupResult result;
};
struct SyncCall {
  SyncDone done;
  SyncGroupResult result;
};

// Completions gathered during one public call. They run, in the order gathered, when this object
// is destroyed at the end of that call: after the coordinator's state is consistent, and even if
// the call is left by an exception (std::bad_alloc). A completion must not throw.
class Completions {
 public:
  Completions() = default;
  Completions(const Completions&) = delete;
  Completions& operator=(const Completions&) = delete;
  ~Completions() { run(); }

  void add(JoinDone done, JoinGroupResult result) { calls_.emplace_back(JoinCall{std::move(done), std::move(result)}); }
  void add(SyncDone done, SyncGroupResult result) { calls_.emplace_back(SyncCall{std::move(done), std::move(result)}); }

 private:
  void run() noexcept {
    // Indexing, not iterators: nothing adds to calls_ meanwhile, but this stays safe if it did.
    for (std::size_t i = 0; i < calls_.size(); ++i) {
      std::visit([](auto& call) { call.done(std::move(call.result)); }, calls_[i]);
    }
    calls_.clear();
  }

  std::vector<std::variant<JoinCall, SyncCall>> calls_;
};

JoinGroupResult join_error(GroupError error, std::string member_id) {
  JoinGroupResult result;
  result.error = error;
  result.member_id = std::move(member_id);
  return result;
}

SyncGroupResult sync_error(GroupError error) {
  SyncGroupResult result;
  result.error = error;
  return result;
}

// Later duplicates of a protocol name are dropped (JoinGroup's protocols are keyed by name).
std::vector<GroupProtocol> unique_protocols(std::vector<GroupProtocol> protocols) {
  std::vector<GroupProtocol> out;
  out.reserve(protocols.size());
  for (GroupProtocol& p : protocols) {
    const bool seen = std::any_of(out.begin(), out.end(), [&p](const GroupProtocol& q) { return q.name == p.name; });
    if (!seen) out.push_back(std::move(p));
  }
  return out;
}

bool supports(const Member& member, std::string_view protocol) {
  return std::any_of(member.protocols.begin(), member.protocols.end(),
                     [protocol](const GroupProtocol& p) { return p.name == protocol; });
}

// Same names and metadata in the same order (Kafka's MemberMetadata.matches).
bool same_protocols(const Member& member, const std::vector<GroupProtocol>& protocols) {
  return std::equal(member.protocols.begin(), member.protocols.end(), protocols.begin(), protocols.end(),
                    [](const GroupProtocol& a, const GroupProtocol& b) { return a.name == b.name && a.metadata == b.metadata; });
}

const std::string& metadata_for(const Member& member, std::string_view protocol) {
  static const std::string kNone;
  for (const GroupProtocol& p : member.protocols) {
    if (p.name == protocol) return p.metadata;
  }
  return kNone;
}

// The members in the order they joined the group.
template <class G>
auto in_join_order(G& group) {
  using Pointer = std::conditional_t<std::is_const_v<G>, const Member*, Member*>;
  std::vector<Pointer> out;
  out.reserve(group.members.size());
  for (auto& entry : group.members) out.push_back(&entry.second);
  std::sort(out.begin(), out.end(), [](const Member* a, const Member* b) { return a->seq < b->seq; });
  return out;
}

std::int32_t rebalance_timeout_ms(const Group& group) {
  std::int32_t timeout = 0;
  for (const auto& entry : group.members) timeout = std::max(timeout, entry.second.rebalance_timeout_ms);
  return timeout;
}

// Kafka's hasAllMembersJoined: every member rejoined and no member id handed out is still unused.
bool all_joined(const Group& group) { return group.pending_members.empty() && group.awaiting_joins == group.members.size(); }

// How many members list the protocol.
std::size_t support_of(const Group& group, std::string_view protocol) {
  const auto it = group.protocol_support.find(protocol);
  return it == group.protocol_support.end() ? 0 : it->second;
}

// Adds (or takes away) the member's protocols to the group's support counts.
void count_protocols(Group& group, const std::vector<GroupProtocol>& protocols, bool add) {
  for (const GroupProtocol& p : protocols) {
    if (add) {
      ++group.protocol_support[p.name];
    } else if (const auto it = group.protocol_support.find(p.name); it != group.protocol_support.end() && --it->second == 0) {
      group.protocol_support.erase(it);
    }
  }
}

void set_protocols(Group& group, Member& member, std::vector<GroupProtocol> protocols) {
  count_protocols(group, member.protocols, false);
  member.protocols = std::move(protocols);
  count_protocols(group, member.protocols, true);
}

void await_join(Group& group, Member& member, JoinDone done) {
  if (!member.awaiting_join) ++group.awaiting_joins;
  member.awaiting_join = std::move(done);
}

#ifndef NDEBUG
// The counts against a recount (debug builds, each tick).
bool counts_hold(const Group& group) {
  std::size_t awaiting = 0;
  std::map<std::string, std::size_t, std::less<>> support;
  for (const auto& [id, member] : group.members) {
    if (member.awaiting_join) ++awaiting;
    for (const GroupProtocol& p : member.protocols) ++support[p.name];
  }
  return awaiting == group.awaiting_joins && support == group.protocol_support;
}
#endif

// When the member's session ends, if it is running. A member waiting in a join or a sync keeps
// its session (Kafka's hasSatisfiedHeartbeat), except a new member, whose first join may wait
// kNewMemberJoinTimeoutMs.
std::optional<std::int64_t> session_deadline_ms(const Member& member) {
  if (member.awaiting_join && member.is_new) return member.joined_ms + kNewMemberJoinTimeoutMs;
  if (member.awaiting_join || member.awaiting_sync) return std::nullopt;
  return member.last_seen_ms + member.session_timeout_ms;
}

Member* find_member(Group& group, std::string_view member_id) {
  const auto it = group.members.find(member_id);
  return it == group.members.end() ? nullptr : &it->second;
}

// Kafka's validateCurrentMember: a given instance id must be mapped to this member id (else the
// caller is an older instance, fenced); otherwise the member id must be in the group.
std::optional<GroupError> validate_member(const Group& group, std::string_view member_id,
                                          const std::optional<std::string>& instance_id) {
  if (instance_id.has_value()) {
    const auto it = group.static_members.find(*instance_id);
    if (it == group.static_members.end()) return GroupError::kUnknownMemberId;
    if (it->second != member_id) return GroupError::kFencedInstanceId;
    return std::nullopt;
  }
  if (!group.members.contains(member_id)) return GroupError::kUnknownMemberId;
  return std::nullopt;
}

// Whether a member with these protocols may be in the group: the group's protocol type and one
// protocol every other member supports. `self` (a member rejoining, or the static member being
// replaced) is left out of the count; Kafka counts its old protocols too, which refuses a lone
// member that changes protocols.
bool protocols_fit(const Group& group, std::string_view protocol_type, const std::vector<GroupProtocol>& protocols,
                   std::string_view self) {
  if (group.members.empty()) return !protocol_type.empty() && !protocols.empty();
  if (protocol_type != group.protocol_type) return false;
  const auto me = group.members.find(self);
  const Member* const member = me == group.members.end() ? nullptr : &me->second;
  const std::size_t others = group.members.size() - (member != nullptr ? 1 : 0);
  return std::any_of(protocols.begin(), protocols.end(), [&](const GroupProtocol& p) {
    const std::size_t mine = member != nullptr && supports(*member, p.name) ? 1 : 0;
    return support_of(group, p.name) - mine == others;
  });
}

// Kafka's selectProtocol: each member votes for its most preferred protocol among those every
// member supports; most votes wins. Ties go to the protocol the leader prefers.
std::string select_protocol(const Group& group) {
  WEFT_CHECK(!group.members.empty(), "a protocol is selected for a group with members");
  const auto leader_it = group.members.find(group.leader_id);
  const Member& leader = leader_it != group.members.end() ? leader_it->second : *in_join_order(group).front();
  std::vector<const std::string*> candidates;  // in the leader's order of preference
  for (const GroupProtocol& p : leader.protocols) {
    if (support_of(group, p.name) == group.members.size()) candidates.push_back(&p.name);
  }
  WEFT_CHECK(!candidates.empty(), "every join checks that the members share a protocol");
  std::vector<std::size_t> votes(candidates.size(), 0);
  for (const auto& entry : group.members) {
    for (const GroupProtocol& p : entry.second.protocols) {
      const auto c = std::find_if(candidates.begin(), candidates.end(), [&p](const std::string* name) { return *name == p.name; });
      if (c != candidates.end()) {
        ++votes[static_cast<std::size_t>(c - candidates.begin())];
        break;
      }
    }
  }
  const auto best = std::max_element(votes.begin(), votes.end());  // the first of equals: the leader's preference
  return *candidates[static_cast<std::size_t>(best - votes.begin())];
}

std::vector<JoinGroupMember> member_list(const Group& group) {
  std::vector<JoinGroupMember> out;
  const std::string& protocol = group.protocol_name.has_value() ? *group.protocol_name : std::string();
  for (const Member* m : in_join_order(group)) out.push_back(JoinGroupMember{m->id, m->instance_id, metadata_for(*m, protocol)});
  return out;
}

// The current generation as a JoinGroup answer; only the leader is given the members.
JoinGroupResult generation_result(const Group& group, const Member& member) {
  JoinGroupResult result;
  result.generation = group.generation;
  result.protocol_type = group.protocol_type;
  result.protocol_name = group.protocol_name.value_or(std::string());
  result.leader_id = group.leader_id;
  result.member_id = member.id;
  if (member.id == group.leader_id) result.members = member_list(group);
  return result;
}

void complete_join(Group& group, Member& member, JoinGroupResult result, Completions& out) {
  if (!member.awaiting_join) return;
  out.add(std::move(member.awaiting_join), std::move(result));
  member.awaiting_join = nullptr;
  --group.awaiting_joins;
}

void complete_sync(Member& member, SyncGroupResult result, Completions& out) {
  if (!member.awaiting_sync) return;
  out.add(std::move(member.awaiting_sync), std::move(result));
  member.awaiting_sync = nullptr;
}

// Removes a member without starting a rebalance (Kafka's GroupMetadata.remove); a join or sync it
// has waiting is completed with `error`.
void remove_member(Group& group, const std::string& member_id, GroupError error, Completions& out) {
  const auto it = group.members.find(member_id);
  if (it == group.members.end()) return;
  Member& member = it->second;
  complete_join(group, member, join_error(error, std::string()), out);
  complete_sync(member, sync_error(error), out);
  count_protocols(group, member.protocols, false);
  if (member.instance_id.has_value()) {
    if (const auto s = group.static_members.find(*member.instance_id); s != group.static_members.end()) group.static_members.erase(s);
  }
  if (const auto p = group.pending_sync.find(member_id); p != group.pending_sync.end()) group.pending_sync.erase(p);
  const bool was_leader = group.leader_id == member_id;
  group.members.erase(it);
  if (was_leader) {
    // Kafka takes any remaining member; the earliest to join keeps the choice deterministic.
    const auto order = in_join_order(group);
    group.leader_id = order.empty() ? std::string() : order.front()->id;
  }
}

std::string uuid_like(std::mt19937_64& random) {
  std::uint64_t high = random();
  std::uint64_t low = random();
  high = (high & ~std::uint64_t{0xf000}) | 0x4000;  // version 4, as java.util.UUID.randomUUID
  low = (low & ~(std::uint64_t{3} << 62)) | (std::uint64_t{2} << 62);
  constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  out.reserve(36);
  for (int i = 0; i < 32; ++i) {
    const std::uint64_t word = i < 16 ? high : low;
    out.push_back(kHex[(word >> (60 - 4 * (i % 16))) & 0xf]);
    if (i == 7 || i == 11 || i == 15 || i == 19) out.push_back('-');
  }
  return out;
}

std::uint64_t random_seed() {
  try {
    std::random_device device;
    return (std::uint64_t{device()} << 32) ^ device();
  } catch (...) {
    // No entropy source: member ids need to be unique within a group, not unpredictable.
    return static_cast<std::uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count());
  }
}

}  // namespace

std::string_view group_error_name(GroupError error) noexcept {
  switch (error) {
    case GroupError::kNone: return "NONE";
    case GroupError::kUnknownMemberId: return "UNKNOWN_MEMBER_ID";
    case GroupError::kIllegalGeneration: return "ILLEGAL_GENERATION";
    case GroupError::kRebalanceInProgress: return "REBALANCE_IN_PROGRESS";
    case GroupError::kInconsistentGroupProtocol: return "INCONSISTENT_GROUP_PROTOCOL";
    case GroupError::kInvalidSessionTimeout: return "INVALID_SESSION_TIMEOUT";
    case GroupError::kMemberIdRequired: return "MEMBER_ID_REQUIRED";
    case GroupError::kGroupMaxSizeReached: return "GROUP_MAX_SIZE_REACHED";
    case GroupError::kFencedInstanceId: return "FENCED_INSTANCE_ID";
    case GroupError::kInvalidGroupId: return "INVALID_GROUP_ID";
    case GroupError::kGroupIdNotFound: return "GROUP_ID_NOT_FOUND";
    case GroupError::kNonEmptyGroup: return "NON_EMPTY_GROUP";
    case GroupError::kCoordinatorNotAvailable: return "COORDINATOR_NOT_AVAILABLE";
    case GroupError::kNotCoordinator: return "NOT_COORDINATOR";
    default: return "UNKNOWN_GROUP_ERROR";
  }
}

struct GroupCoordinator::State {
  GroupCoordinatorOptions options;
  std::map<std::string, Group, std::less<>> groups;
  std::map<std::string, GroupCoordinator::ForgottenGroup, std::less<>> forgotten_groups;
  std::mt19937_64 random{random_seed()};

  Group* find(std::string_view group_id) {
    const auto it = groups.find(group_id);
    return it == groups.end() ? nullptr : &it->second;
  }
  const Group* find(std::string_view group_id) const {
    const auto it = groups.find(group_id);
    return it == groups.end() ? nullptr : &it->second;
  }

  // Kafka's generateMemberId: the instance id (static members) or client id, '-', a random UUID.
  // The prefix is cut short: a client id may take 32 767 bytes, and the member id goes back to
  // every member in strings of at most that many.
  std::string new_member_id(const Group& group, std::string_view prefix) {
    prefix = prefix.substr(0, kMaxMemberIdPrefixBytes);
    std::string id;
    do {
      id = std::string(prefix) + "-" + uuid_like(random);
    } while (group.members.contains(id) || group.pending_members.contains(id));
    return id;
  }

  // Kafka's acceptJoiningMember (group.max.size).
  bool accepts(const Group& group, std::string_view member_id) const {
    const auto max = static_cast<std::size_t>(options.max_group_size);
    const auto it = group.members.find(member_id);
    const bool known = it != group.members.end();
    switch (group.state) {
      case GroupState::kEmpty: return true;
      // Counting the members that rejoined lets the last ones to rejoin be turned away when
      // new members filled the group meanwhile.
      case GroupState::kPreparingRebalance: return (known && it->second.awaiting_join) || group.awaiting_joins < max;
      case GroupState::kCompletingRebalance:
      case GroupState::kStable: return known || group.members.size() < max;
      default: return false;
    }
  }

  // ---- the join phase -------------------------------------------------------------------------

  void maybe_prepare_rebalance(Group& group, std::int64_t now_ms, Completions& out) {
    if (group.state != GroupState::kPreparingRebalance) prepare_rebalance(group, now_ms, out);
  }

  void prepare_rebalance(Group& group, std::int64_t now_ms, Completions& out) {
    if (group.state == GroupState::kCompletingRebalance) {
      // Syncs waiting for the leader's assignment will never get it: their members rejoin.
      for (auto& entry : group.members) {
        Member& member = entry.second;
        member.assignment.clear();
        if (member.awaiting_sync) {
          complete_sync(member, sync_error(GroupError::kRebalanceInProgress), out);
          member.last_seen_ms = now_ms;
        }
      }
    }
    group.pending_sync.clear();
    group.sync_deadline_ms.reset();
    // A delay of 0 means none: the join phase may then complete as soon as everyone joined,
    // where Kafka would still wait for its (zero) timer.
    if (group.state == GroupState::kEmpty && options.initial_rebalance_delay_ms > 0) {
      group.initial_delay = true;
      group.new_member_added = false;
      group.initial_delay_ms = options.initial_rebalance_delay_ms;
      group.initial_remaining_ms = std::max(rebalance_timeout_ms(group) - options.initial_rebalance_delay_ms, 0);
      group.join_deadline_ms = now_ms + options.initial_rebalance_delay_ms;
    } else {
      group.initial_delay = false;
      group.join_deadline_ms = now_ms + rebalance_timeout_ms(group);
    }
    group.state = GroupState::kPreparingRebalance;
    try_complete_join(group, now_ms, out);
  }

  void try_complete_join(Group& group, std::int64_t now_ms, Completions& out) {
    if (group.state == GroupState::kPreparingRebalance && !group.initial_delay && all_joined(group))
      complete_join_phase(group, now_ms, out);
  }

  // Kafka's onCompleteJoin: dynamic members that did not rejoin are removed (static ones keep
  // their place until their session ends), the next generation starts, and every waiting join
  // is answered.
  void complete_join_phase(Group& group, std::int64_t now_ms, Completions& out) {
    std::vector<std::string> missing;
    for (const auto& [id, member] : group.members) {
      if (!member.awaiting_join && !member.instance_id.has_value()) missing.push_back(id);
    }
    for (const std::string& id : missing) remove_member(group, id, GroupError::kUnknownMemberId, out);

    if (!group.members.empty()) {
      const Member* leader = find_member(group, group.leader_id);
      if (leader == nullptr || !leader->awaiting_join) {
        const auto order = in_join_order(group);
        const auto joined = std::find_if(order.begin(), order.end(), [](const Member* m) { return static_cast<bool>(m->awaiting_join); });
        if (joined == order.end()) {
          // Only static members that did not rejoin are left: wait another rebalance timeout
          // (their sessions end meanwhile unless they heartbeat).
          group.initial_delay = false;
          group.join_deadline_ms = now_ms + rebalance_timeout_ms(group);
          return;
        }
        group.leader_id = (*joined)->id;
      }
    }

    ++group.generation;
    group.join_deadline_ms.reset();
    group.initial_delay = false;
    group.new_member_added = false;
    group.pending_sync.clear();
    if (group.members.empty()) {
      group.state = GroupState::kEmpty;
      group.protocol_name.reset();
      return;
    }
    group.protocol_name = select_protocol(group);
    group.state = GroupState::kCompletingRebalance;
    for (Member* member : in_join_order(group)) {
      complete_join(group, *member, generation_result(group, *member), out);
      member->last_seen_ms = now_ms;
      member->is_new = false;
      group.pending_sync.insert(member->id);
    }
    group.sync_deadline_ms = now_ms + rebalance_timeout_ms(group);
  }

  // ---- joins ----------------------------------------------------------------------------------

  void join(JoinGroupRequest request, std::int64_t now_ms, JoinDone done, Completions& out) {
    if (!valid_group_id(request.group_id)) return out.add(std::move(done), join_error(GroupError::kInvalidGroupId, request.member_id));
    if (request.session_timeout_ms < options.min_session_timeout_ms || request.session_timeout_ms > options.max_session_timeout_ms)
      return out.add(std::move(done), join_error(GroupError::kInvalidSessionTimeout, request.member_id));
    if (request.rebalance_timeout_ms < 0) request.rebalance_timeout_ms = request.session_timeout_ms;
    request.protocols = unique_protocols(std::move(request.protocols));

    auto it = groups.find(request.group_id);
    const bool created = it == groups.end();
    if (created) {
      // A member id given for a group that does not exist is stale.
      if (!request.member_id.empty()) return out.add(std::move(done), join_error(GroupError::kUnknownMemberId, request.member_id));
      it = groups.emplace(request.group_id, Group{}).first;
    }
    Group& group = it->second;

    if (!accepts(group, request.member_id)) {
      remove_member(group, request.member_id, GroupError::kUnknownMemberId, out);
      if (const auto p = group.pending_members.find(request.member_id); p != group.pending_members.end()) group.pending_members.erase(p);
      out.add(std::move(done), join_error(GroupError::kGroupMaxSizeReached, std::string()));
    } else if (request.member_id.empty()) {
      join_new_member(group, std::move(request), now_ms, std::move(done), out);
    } else {
      join_known_member(group, std::move(request), now_ms, std::move(done), out);
    }
    if (group.state == GroupState::kPreparingRebalance) try_complete_join(group, now_ms, out);
    // A member in it again: the group is no longer one the coordinator forgot (a refused join
    // or one only given a member id leaves that memory as it was).
    if (!group.members.empty())
      if (const auto f = forgotten_groups.find(it->first); f != forgotten_groups.end()) forgotten_groups.erase(f);

    // A refused first join leaves nothing behind.
    if (created && group.state == GroupState::kEmpty && group.members.empty() && group.pending_members.empty() &&
        group.generation == 0)
      groups.erase(it);
  }

  void join_new_member(Group& group, JoinGroupRequest request, std::int64_t now_ms, JoinDone done, Completions& out) {
    std::string replaced;  // the member id a known static member had so far
    if (request.group_instance_id.has_value()) {
      if (const auto s = group.static_members.find(*request.group_instance_id); s != group.static_members.end()) replaced = s->second;
    }
    if (!protocols_fit(group, request.protocol_type, request.protocols, replaced))
      return out.add(std::move(done), join_error(GroupError::kInconsistentGroupProtocol, std::string()));

    std::string id = new_member_id(group, request.group_instance_id.has_value() ? *request.group_instance_id : request.client_id);
    if (!replaced.empty()) return replace_static_member(group, replaced, std::move(id), std::move(request), now_ms, std::move(done), out);
    if (!request.group_instance_id.has_value() && request.require_known_member_id) {
      // JoinGroup v4+: the member joins again with this id; until then it holds the join phase.
      group.pending_members[id] = now_ms + request.session_timeout_ms;
      return out.add(std::move(done), join_error(GroupError::kMemberIdRequired, std::move(id)));
    }
    add_member(group, std::move(id), std::move(request), now_ms, std::move(done), out);
  }

  void join_known_member(Group& group, JoinGroupRequest request, std::int64_t now_ms, JoinDone done, Completions& out) {
    const std::string id = request.member_id;
    if (!protocols_fit(group, request.protocol_type, request.protocols, id))
      return out.add(std::move(done), join_error(GroupError::kInconsistentGroupProtocol, id));
    if (group.pending_members.contains(id)) {
      // Static members never get kMemberIdRequired, so this one mixes identities (Kafka throws).
      if (request.group_instance_id.has_value()) return out.add(std::move(done), join_error(GroupError::kUnknownMemberId, id));
      return add_member(group, id, std::move(request), now_ms, std::move(done), out);
    }
    if (const auto error = validate_member(group, id, request.group_instance_id))
      return out.add(std::move(done), join_error(*error, id));

    Member& member = group.members.find(id)->second;
    member.last_seen_ms = now_ms;
    switch (group.state) {
      case GroupState::kPreparingRebalance:
        update_member(group, member, std::move(request), std::move(done), out);
        break;
      case GroupState::kCompletingRebalance:
        // The same metadata: it probably missed the join answer, which it gets again.
        if (same_protocols(member, request.protocols)) return out.add(std::move(done), generation_result(group, member));
        update_member(group, member, std::move(request), std::move(done), out);
        prepare_rebalance(group, now_ms, out);
        break;
      case GroupState::kStable:
        // The leader rejoins to have the assignment recomputed (e.g. topics changed); a follower
        // with unchanged metadata just gets the current generation to sync with.
        if (id != group.leader_id && same_protocols(member, request.protocols)) {
          JoinGroupResult result = generation_result(group, member);
          return out.add(std::move(done), std::move(result));
        }
        update_member(group, member, std::move(request), std::move(done), out);
        prepare_rebalance(group, now_ms, out);
        break;
      default:  // an Empty group has no members
        out.add(std::move(done), join_error(GroupError::kUnknownMemberId, id));
        break;
    }
  }

  // A join of a member that is in the group: it waits for the join phase.
  static void update_member(Group& group, Member& member, JoinGroupRequest request, JoinDone done, Completions& out) {
    // Its earlier join, if one still waits, is superseded; its client no longer waits for it.
    complete_join(group, member, join_error(GroupError::kRebalanceInProgress, member.id), out);
    set_protocols(group, member, std::move(request.protocols));
    member.session_timeout_ms = request.session_timeout_ms;
    member.rebalance_timeout_ms = request.rebalance_timeout_ms;
    await_join(group, member, std::move(done));
  }

  void add_member(Group& group, std::string id, JoinGroupRequest request, std::int64_t now_ms, JoinDone done, Completions& out) {
    Member member;
    member.id = id;
    member.instance_id = std::move(request.group_instance_id);
    member.client_id = std::move(request.client_id);
    member.client_host = std::move(request.client_host);
    member.protocols = std::move(request.protocols);
    member.session_timeout_ms = request.session_timeout_ms;
    member.rebalance_timeout_ms = request.rebalance_timeout_ms;
    member.seq = group.next_seq++;
    member.joined_ms = now_ms;
    member.last_seen_ms = now_ms;
    member.awaiting_join = std::move(done);
    ++group.awaiting_joins;
    count_protocols(group, member.protocols, true);

    // New members during a new group's initial delay extend it.
    if (group.state == GroupState::kPreparingRebalance && group.generation == 0) group.new_member_added = true;
    if (group.members.empty()) group.protocol_type = std::move(request.protocol_type);
    if (member.instance_id.has_value()) group.static_members[*member.instance_id] = id;
    if (group.leader_id.empty()) group.leader_id = id;
    if (const auto p = group.pending_members.find(id); p != group.pending_members.end()) group.pending_members.erase(p);
    group.members.emplace(std::move(id), std::move(member));
    maybe_prepare_rebalance(group, now_ms, out);
  }

  // Kafka's updateStaticMemberAndRebalance: the static member continues under a new member id;
  // the old id is fenced (its waiting join or sync is answered kFencedInstanceId).
  void replace_static_member(Group& group, std::string old_id, std::string new_id, JoinGroupRequest request, std::int64_t now_ms,
                             JoinDone done, Completions& out) {
    const std::string previous_leader = group.leader_id;
    auto node = group.members.extract(old_id);
    WEFT_CHECK(!node.empty(), "a static member's id is in the group");
    Member& old = node.mapped();
    complete_join(group, old, join_error(GroupError::kFencedInstanceId, old_id), out);
    complete_sync(old, sync_error(GroupError::kFencedInstanceId), out);
    node.key() = new_id;
    old.id = new_id;
    set_protocols(group, old, std::move(request.protocols));
    old.session_timeout_ms = request.session_timeout_ms;
    old.rebalance_timeout_ms = request.rebalance_timeout_ms;
    old.client_id = std::move(request.client_id);  // the new instance may run elsewhere
    old.client_host = std::move(request.client_host);
    old.last_seen_ms = now_ms;
    if (group.leader_id == old_id) group.leader_id = new_id;
    if (const auto p = group.pending_sync.find(old_id); p != group.pending_sync.end()) {
      group.pending_sync.erase(p);
      group.pending_sync.insert(new_id);
    }
    group.static_members[*request.group_instance_id] = new_id;
    Member& member = group.members.insert(std::move(node)).position->second;

    switch (group.state) {
      case GroupState::kStable:
        if (group.protocol_name == select_protocol(group)) {
          // Nothing to reassign: it syncs to get its old assignment. The old leader id is
          // returned so that a replaced leader does not compute an assignment a Stable group
          // would not distribute.
          JoinGroupResult result = generation_result(group, member);
          result.leader_id = previous_leader;
          result.members.clear();
          return out.add(std::move(done), std::move(result));
        }
        await_join(group, member, std::move(done));
        prepare_rebalance(group, now_ms, out);
        break;
      case GroupState::kCompletingRebalance:
        // The leader may have assigned to the old id: rebalance so the assignment names the new one.
        await_join(group, member, std::move(done));
        prepare_rebalance(group, now_ms, out);
        break;
      case GroupState::kPreparingRebalance:
        await_join(group, member, std::move(done));
        break;
      default:
        WEFT_CHECK(false, "a group with a static member is not Empty");
    }
  }

  // ---- syncs, heartbeats, leaves, commits -----------------------------------------------------

  void sync(SyncGroupRequest request, std::int64_t now_ms, SyncDone done, Completions& out) {
    if (!valid_group_id(request.group_id)) return out.add(std::move(done), sync_error(GroupError::kInvalidGroupId));
    Group* group = find(request.group_id);
    if (group == nullptr) return out.add(std::move(done), sync_error(GroupError::kUnknownMemberId));
    if (const auto error = validate_member(*group, request.member_id, request.group_instance_id))
      return out.add(std::move(done), sync_error(*error));
    if (request.generation != group->generation) return out.add(std::move(done), sync_error(GroupError::kIllegalGeneration));
    if ((request.protocol_type.has_value() && *request.protocol_type != group->protocol_type) ||
        (request.protocol_name.has_value() && group->protocol_name != request.protocol_name))
      return out.add(std::move(done), sync_error(GroupError::kInconsistentGroupProtocol));

    Member& member = group->members.find(request.member_id)->second;
    switch (group->state) {
      case GroupState::kPreparingRebalance:
        return out.add(std::move(done), sync_error(GroupError::kRebalanceInProgress));
      case GroupState::kCompletingRebalance: {
        member.last_seen_ms = now_ms;
        complete_sync(member, sync_error(GroupError::kRebalanceInProgress), out);  // superseded
        member.awaiting_sync = std::move(done);
        if (const auto p = group->pending_sync.find(member.id); p != group->pending_sync.end()) group->pending_sync.erase(p);
        if (member.id != group->leader_id) return;
        // Later entries for a member win; members the leader left out get an empty assignment.
        std::map<std::string, std::string, std::less<>> assignments;
        for (auto& [id, bytes] : request.assignments) assignments[id] = std::move(bytes);
        for (Member* m : in_join_order(*group)) {
          const auto a = assignments.find(m->id);
          m->assignment = a == assignments.end() ? std::string() : std::move(a->second);
          SyncGroupResult result;
          result.protocol_type = group->protocol_type;
          result.protocol_name = group->protocol_name.value_or(std::string());
          result.assignment = m->assignment;
          if (m->awaiting_sync) m->last_seen_ms = now_ms;
          complete_sync(*m, std::move(result), out);
        }
        group->state = GroupState::kStable;
        return;
      }
      case GroupState::kStable: {
        member.last_seen_ms = now_ms;
        if (const auto p = group->pending_sync.find(member.id); p != group->pending_sync.end()) group->pending_sync.erase(p);
        SyncGroupResult result;
        result.protocol_type = group->protocol_type;
        result.protocol_name = group->protocol_name.value_or(std::string());
        result.assignment = member.assignment;
        return out.add(std::move(done), std::move(result));
      }
      default:  // an Empty group has no members
        return out.add(std::move(done), sync_error(GroupError::kUnknownMemberId));
    }
  }

  GroupError heartbeat(std::string_view group_id, std::int32_t generation, std::string_view member_id,
                       const std::optional<std::string>& instance_id, std::int64_t now_ms) {
    if (!valid_group_id(group_id)) return GroupError::kInvalidGroupId;
    Group* group = find(group_id);
    if (group == nullptr) return GroupError::kUnknownMemberId;
    if (const auto error = validate_member(*group, member_id, instance_id)) return *error;
    if (generation != group->generation) return GroupError::kIllegalGeneration;
    find_member(*group, member_id)->last_seen_ms = now_ms;
    switch (group->state) {
      case GroupState::kPreparingRebalance: return GroupError::kRebalanceInProgress;
      // A member heartbeats between its join answer and its sync: that is normal (Kafka 2.x+).
      case GroupState::kCompletingRebalance:
      case GroupState::kStable: return GroupError::kNone;
      default: return GroupError::kUnknownMemberId;  // an Empty group has no members
    }
  }

  // Kafka's removeMemberAndUpdateGroup: the member's waiting calls are answered
  // kUnknownMemberId, and the others rebalance.
  void remove_member_and_rebalance(Group& group, const std::string& member_id, std::int64_t now_ms, Completions& out) {
    remove_member(group, member_id, GroupError::kUnknownMemberId, out);
    switch (group.state) {
      case GroupState::kStable:
      case GroupState::kCompletingRebalance: prepare_rebalance(group, now_ms, out); break;
      case GroupState::kPreparingRebalance: try_complete_join(group, now_ms, out); break;
      default: break;
    }
  }

  GroupError leave_one(Group& group, const LeavingMember& leaving, std::int64_t now_ms, Completions& out) {
    if (leaving.member_id.empty()) {
      // An administrative removal names the static member by its instance id alone.
      if (!leaving.group_instance_id.has_value()) return GroupError::kUnknownMemberId;
      const auto s = group.static_members.find(*leaving.group_instance_id);
      if (s == group.static_members.end()) return GroupError::kUnknownMemberId;
      const std::string id = s->second;
      remove_member_and_rebalance(group, id, now_ms, out);
      return GroupError::kNone;
    }
    if (const auto p = group.pending_members.find(leaving.member_id); p != group.pending_members.end()) {
      group.pending_members.erase(p);
      try_complete_join(group, now_ms, out);
      return GroupError::kNone;
    }
    if (const auto error = validate_member(group, leaving.member_id, leaving.group_instance_id)) return *error;
    remove_member_and_rebalance(group, leaving.member_id, now_ms, out);
    return GroupError::kNone;
  }

  GroupError check_commit(std::string_view group_id, std::int32_t generation, std::string_view member_id,
                          const std::optional<std::string>& instance_id, std::int64_t now_ms) {
    // Kafka accepts commits to the empty group id for old clients; weft stores no such group.
    if (!valid_group_id(group_id)) return GroupError::kInvalidGroupId;
    const bool as_member = generation >= 0 || !member_id.empty() || instance_id.has_value();
    Group* group = find(group_id);
    if (group == nullptr) {
      if (generation >= 0) return GroupError::kIllegalGeneration;
      return as_member ? GroupError::kUnknownMemberId : GroupError::kNone;
    }
    if (!as_member) return group->members.empty() ? GroupError::kNone : GroupError::kUnknownMemberId;
    if (const auto error = validate_member(*group, member_id, instance_id)) return *error;
    if (generation != group->generation) return GroupError::kIllegalGeneration;
    switch (group->state) {
      // During PreparingRebalance the previous generation still commits (its heartbeats say rejoin).
      case GroupState::kPreparingRebalance:
      case GroupState::kStable:
        find_member(*group, member_id)->last_seen_ms = now_ms;
        return GroupError::kNone;
      // It has its new generation but not its assignment yet.
      case GroupState::kCompletingRebalance: return GroupError::kRebalanceInProgress;
      default: return GroupError::kUnknownMemberId;  // an Empty group has no members
    }
  }

  // ---- timers ---------------------------------------------------------------------------------

  void tick(Group& group, std::int64_t now_ms, Completions& out) {
    std::vector<std::string> expired;
    for (const auto& [id, deadline_ms] : group.pending_members) {
      if (deadline_ms <= now_ms) expired.push_back(id);
    }
    for (const std::string& id : expired) group.pending_members.erase(group.pending_members.find(id));
    if (!expired.empty()) try_complete_join(group, now_ms, out);

    // The join phase before sessions: a new member whose first join has waited as long as the
    // phase lasts gets its answer rather than removal.
    if (group.state == GroupState::kPreparingRebalance && group.join_deadline_ms.has_value() && *group.join_deadline_ms <= now_ms) {
      if (group.initial_delay && group.new_member_added && group.initial_remaining_ms != 0) {
        // Kafka's InitialDelayedJoin: members kept arriving, so wait again, within the rebalance timeout.
        const std::int32_t delay_ms = std::min(options.initial_rebalance_delay_ms, group.initial_remaining_ms);
        group.initial_remaining_ms = std::max(group.initial_remaining_ms - group.initial_delay_ms, 0);
        group.initial_delay_ms = delay_ms;
        group.new_member_added = false;
        group.join_deadline_ms = now_ms + delay_ms;
      } else {
        complete_join_phase(group, now_ms, out);
      }
    }

    if ((group.state == GroupState::kCompletingRebalance || group.state == GroupState::kStable) &&
        group.sync_deadline_ms.has_value() && *group.sync_deadline_ms <= now_ms) {
      group.sync_deadline_ms.reset();
      if (!group.pending_sync.empty()) {
        // Kafka's DelayedSync: members that got the generation but never synced are gone.
        const std::vector<std::string> silent(group.pending_sync.begin(), group.pending_sync.end());
        for (const std::string& id : silent) remove_member(group, id, GroupError::kUnknownMemberId, out);
        prepare_rebalance(group, now_ms, out);
      }
    }

    expired.clear();
    for (const auto& [id, member] : group.members) {
      const auto deadline_ms = session_deadline_ms(member);
      if (deadline_ms.has_value() && *deadline_ms <= now_ms) expired.push_back(id);
    }
    for (const std::string& id : expired) {
      // Each removal may complete a join phase, which removes or refreshes others: look again.
      const Member* member = find_member(group, id);
      if (member == nullptr) continue;
      const auto deadline_ms = session_deadline_ms(*member);
      if (deadline_ms.has_value() && *deadline_ms <= now_ms) remove_member_and_rebalance(group, id, now_ms, out);
    }
  }

  std::optional<std::int64_t> next_deadline_ms(const Group& group) const {
    std::optional<std::int64_t> next;
    const auto consider = [&next](std::int64_t t) {
      if (!next.has_value() || t < *next) next = t;
    };
    for (const auto& entry : group.pending_members) consider(entry.second);
    if (group.state == GroupState::kPreparingRebalance && group.join_deadline_ms.has_value()) consider(*group.join_deadline_ms);
    if ((group.state == GroupState::kCompletingRebalance || group.state == GroupState::kStable) &&
        group.sync_deadline_ms.has_value() && !group.pending_sync.empty())
      consider(*group.sync_deadline_ms);
    for (const auto& entry : group.members) {
      if (const auto t = session_deadline_ms(entry.second)) consider(*t);
    }
    return next;
  }
};

GroupCoordinator::GroupCoordinator(GroupCoordinatorOptions options) : state_(std::make_unique<State>()) {
  state_->options = options;
}

GroupCoordinator::~GroupCoordinator() {
  Completions out;  // declared first: runs last, once every group is gone
  for (auto& entry : state_->groups) {
    for (Member* member : in_join_order(entry.second)) {
      complete_join(entry.second, *member, join_error(GroupError::kCoordinatorNotAvailable, member->id), out);
      complete_sync(*member, sync_error(GroupError::kCoordinatorNotAvailable), out);
    }
  }
  state_->groups.clear();
}

void GroupCoordinator::join(JoinGroupRequest request, std::int64_t now_ms, JoinDone done) {
  Completions out;
  if (!done) done = [](JoinGroupResult) {};  // a waiting join is marked by its completion
  if (!coordinates(request.group_id)) return done(join_error(GroupError::kNotCoordinator, request.member_id));
  state_->join(std::move(request), now_ms, std::move(done), out);
}

void GroupCoordinator::sync(SyncGroupRequest request, std::int64_t now_ms, SyncDone done) {
  Completions out;
  if (!done) done = [](SyncGroupResult) {};
  if (!coordinates(request.group_id)) return done(sync_error(GroupError::kNotCoordinator));
  state_->sync(std::move(request), now_ms, std::move(done), out);
}

GroupError GroupCoordinator::heartbeat(std::string_view group_id, std::int32_t generation, std::string_view member_id,
                                       const std::optional<std::string>& group_instance_id, std::int64_t now_ms) {
  if (!coordinates(group_id)) return GroupError::kNotCoordinator;
  return state_->heartbeat(group_id, generation, member_id, group_instance_id, now_ms);
}

std::vector<GroupError> GroupCoordinator::leave(std::string_view group_id, const std::vector<LeavingMember>& members,
                                                std::int64_t now_ms) {
  Completions out;
  if (!valid_group_id(group_id)) return std::vector<GroupError>(members.size(), GroupError::kInvalidGroupId);
  if (!coordinates(group_id)) return std::vector<GroupError>(members.size(), GroupError::kNotCoordinator);
  Group* group = state_->find(group_id);
  if (group == nullptr) return std::vector<GroupError>(members.size(), GroupError::kUnknownMemberId);
  std::vector<GroupError> errors;
  errors.reserve(members.size());
  for (const LeavingMember& leaving : members) errors.push_back(state_->leave_one(*group, leaving, now_ms, out));
  return errors;
}

GroupError GroupCoordinator::check_commit(std::string_view group_id, std::int32_t generation, std::string_view member_id,
                                          const std::optional<std::string>& group_instance_id, std::int64_t now_ms) {
  if (!coordinates(group_id)) return GroupError::kNotCoordinator;
  return state_->check_commit(group_id, generation, member_id, group_instance_id, now_ms);
}

void GroupCoordinator::tick(std::int64_t now_ms) {
  Completions out;
  for (auto it = state_->groups.begin(); it != state_->groups.end();) {
    Group& group = it->second;
    state_->tick(group, now_ms, out);
#ifndef NDEBUG
    WEFT_CHECK(counts_hold(group), "a group's join and protocol counts match its members");
#endif
    // An Empty group is forgotten: membership is all the coordinator keeps, and committed offsets
    // live in the offset store, which the Kafka listener reads to describe and list a group that
    // has them (as Kafka keeps an Empty group only while it has offsets). Else every group id
    // ever joined, or asked for a member id, would be held for good.
    const bool empty = group.state == GroupState::kEmpty && group.members.empty() && group.pending_members.empty() &&
                       group.static_members.empty();
    if (empty && group.generation > 0) {
      if (state_->forgotten_groups.size() >= kMaxForgottenGroups) state_->forgotten_groups.clear();
      state_->forgotten_groups.insert_or_assign(it->first, ForgottenGroup{group.protocol_type, now_ms});
    }
    it = empty ? state_->groups.erase(it) : std::next(it);
  }
}

std::optional<std::int64_t> GroupCoordinator::next_deadline_ms() const {
  std::optional<std::int64_t> next;
  for (const auto& entry : state_->groups) {
    const auto t = state_->next_deadline_ms(entry.second);
    if (t.has_value() && (!next.has_value() || *t < *next)) next = t;
  }
  return next;
}

std::vector<GroupListing> GroupCoordinator::list() const {
  std::vector<GroupListing> out;
  out.reserve(state_->groups.size());
  for (const auto& [id, group] : state_->groups) {
    out.push_back(GroupListing{id, group.protocol_type, std::string(state_name(group.state))});
  }
  return out;
}

GroupDescription GroupCoordinator::describe(std::string_view group_id) const {
  GroupDescription out;
  out.group_id = std::string(group_id);
  const Group* group = state_->find(group_id);
  if (group == nullptr) {
    out.state = "Dead";
    return out;
  }
  out.state = std::string(state_name(group->state));
  out.protocol_type = group->protocol_type;
  out.generation = group->generation;
  // As Kafka: the protocol, metadata and assignments only once they are settled (Stable).
  const bool stable = group->state == GroupState::kStable;
  if (stable) out.protocol_name = group->protocol_name.value_or(std::string());
  for (const Member* member : in_join_order(*group)) {
    GroupMemberDescription d;
    d.member_id = member->id;
    d.group_instance_id = member->instance_id;
    d.client_id = member->client_id;
    d.client_host = member->client_host;
    if (stable) {
      d.metadata = metadata_for(*member, out.protocol_name);
      d.assignment = member->assignment;
    }
    out.members.push_back(std::move(d));
  }
  return out;
}

std::vector<std::string> GroupCoordinator::forgotten_since(std::int64_t since_ms) const {
  std::vector<std::string> out;
  for (const auto& [id, f] : state_->forgotten_groups)
    if (f.emptied_ms >= since_ms) out.push_back(id);
  return out;
}

std::optional<GroupCoordinator::ForgottenGroup> GroupCoordinator::forgotten(std::string_view group_id) const {
  const auto it = state_->forgotten_groups.find(group_id);
  if (it == state_->forgotten_groups.end()) return std::nullopt;
  return it->second;
}

bool GroupCoordinator::coordinates(std::string_view group_id) const { return !state_->options.owns_group || state_->options.owns_group(group_id); }

std::size_t GroupCoordinator::group_count() const noexcept { return state_->groups.size(); }

}  // namespace weft
