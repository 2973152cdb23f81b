#include "weft/fabric/cluster.h"

#include <algorithm>
#include <array>
#include <charconv>
#include <chrono>
#include <set>
#include <thread>

#include <sys/random.h>

#include "weft/fabric/log.h"
#include "weft/fabric/ring.h"
#include "weft/node.h"

namespace weft {
namespace {

std::int64_t now_ms() noexcept { return monotonic_ns() / 1'000'000; }

// `key=value` fields separated by spaces; a value runs to the next space.
std::map<std::string, std::string, std::less<>> fields_of(std::string_view text) {
  std::map<std::string, std::string, std::less<>> out;
  std::size_t at = 0;
  while (at < text.size()) {
    while (at < text.size() && text[at] == ' ') ++at;
    const std::size_t end = std::min(text.find(' ', at), text.size());
    const std::string_view field = text.substr(at, end - at);
    const std::size_t eq = field.find('=');
    if (eq != std::string_view::npos) out.emplace(std::string(field.substr(0, eq)), std::string(field.substr(eq + 1)));
    at = end;
  }
  return out;
}

template <class T>
bool parse_number(std::string_view text, T& out) {
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), out);
  return ec == std::errc{} && end == text.data() + text.size();
}

bool parse_ids(std::string_view text, std::vector<NodeId>& out) {
  out.clear();
  if (text.empty()) return true;
  std::size_t at = 0;
  while (at <= text.size()) {
    const std::size_t end = std::min(text.find(',', at), text.size());
    NodeId id = 0;
    if (!parse_number(text.substr(at, end - at), id)) return false;
    out.push_back(id);
    at = end + 1;
  }
  return true;
}

std::string ids_text(const std::vector<NodeId>& ids) {
  std::string out;
  for (NodeId id : ids) {
    if (!out.empty()) out += ',';
    out += std::to_string(id);
  }
  return out;
}

bool contains(const std::vector<NodeId>& ids, NodeId id) { return std::find(ids.begin(), ids.end(), id) != ids.end(); }

// 128 random bits as 32 hex digits (Kafka's topic ids are as wide).
std::string fresh_topic_id() {
  std::array<std::uint8_t, 16> bits{};
  if (::getrandom(bits.data(), bits.size(), 0) != static_cast<ssize_t>(bits.size())) {
    // No entropy answered (it always does once booted): the clock, still never a constant.
    const auto now = static_cast<std::uint64_t>(std::chrono::system_clock::now().time_since_epoch().count());
    for (std::size_t i = 0; i < bits.size(); ++i) bits[i] = static_cast<std::uint8_t>(now >> (8 * (i % 8)) ^ i);
  }
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  for (std::uint8_t b : bits) {
    out += kHex[b >> 4];
    out += kHex[b & 15];
  }
  return out;
}

}  // namespace

std::string encode_node(const NodeRecord& n) {
  return "replication=" + n.replication_address + " kafka=" + n.kafka_address + " rack=" + n.rack + " draining=" + (n.draining ? "1" : "0") +
         " metrics=" + n.metrics_address;
}

Result<NodeRecord> decode_node(NodeId id, std::string_view text) {
  auto f = fields_of(text);
  NodeRecord n;
  n.id = id;
  n.replication_address = f["replication"];
  n.kafka_address = f["kafka"];
  n.rack = f["rack"];
  n.draining = f["draining"] == "1";
  n.metrics_address = f["metrics"];
  if (n.replication_address.empty()) return Error{Errc::kCorrupt, "node " + std::to_string(id) + " has no replication address"};
  return n;
}

std::string encode_topic(const TopicRecord& t) {
  return "partitions=" + std::to_string(t.partitions) + " replication=" + std::to_string(t.replication_factor) + " config=" + t.config +
         (t.id.empty() ? "" : " id=" + t.id) + (t.min_insync_replicas == 1 ? "" : " min_isr=" + std::to_string(t.min_insync_replicas));
}

Result<TopicRecord> decode_topic(std::string_view name, std::string_view text) {
  auto f = fields_of(text);
  TopicRecord t;
  t.name = std::string(name);
  t.config = f["config"];
  t.id = f["id"];
  const bool min_isr_read =
      f["min_isr"].empty() || (parse_number(f["min_isr"], t.min_insync_replicas) && t.min_insync_replicas > 0 && t.min_insync_replicas <= 64);
  if (!parse_number(f["partitions"], t.partitions) || !parse_number(f["replication"], t.replication_factor) || t.partitions == 0 ||
      t.replication_factor == 0 || !min_isr_read) {
    return Error{Errc::kCorrupt, "topic " + std::string(name) + ": unreadable record '" + std::string(text) + "'"};
  }
  return t;
}

std::string encode_partition(const PartitionState& s) {
  return "replicas=" + ids_text(s.replicas) + " leader=" + std::to_string(s.leader) + " epoch=" + std::to_string(s.leader_epoch) +
         " isr=" + ids_text(s.isr) + (s.topic_id.empty() ? "" : " topic=" + s.topic_id);
}

Result<PartitionState> decode_partition(std::string_view text) {
  auto f = fields_of(text);
  PartitionState s;
  if (!parse_ids(f["replicas"], s.replicas) || !parse_number(f["leader"], s.leader) || !parse_number(f["epoch"], s.leader_epoch) ||
      !parse_ids(f["isr"], s.isr) || s.replicas.empty()) {
    return Error{Errc::kCorrupt, "unreadable partition state '" + std::string(text) + "'"};
  }
  if (auto topic = f.find("topic"); topic != f.end()) s.topic_id = topic->second;  // absent in states written before it
  return s;
}

Result<std::vector<std::vector<NodeId>>> assign_replicas(const std::vector<NodeRecord>& nodes, std::uint32_t partitions,
                                                         std::uint32_t replication_factor, std::uint32_t first_partition) {
  std::vector<NodeRecord> usable;
  for (const NodeRecord& n : nodes) {
    if (!n.draining) usable.push_back(n);
  }
  if (replication_factor == 0 || usable.size() < replication_factor) {
    return Error{Errc::kInvalidArgument, "replication factor " + std::to_string(replication_factor) + " needs as many live nodes; " +
                                             std::to_string(usable.size()) + " are live"};
  }
  // Interleave racks (a1 b1 c1 a2 b2 ...), so consecutive picks land on different racks.
  std::map<std::string, std::vector<NodeId>> by_rack;
  for (const NodeRecord& n : usable) by_rack[n.rack].push_back(n.id);
  for (auto& [rack, ids] : by_rack) std::sort(ids.begin(), ids.end());
  std::vector<NodeId> order;
  for (std::size_t i = 0; order.size() < usable.size(); ++i) {
    for (auto& [rack, ids] : by_rack) {
      if (i < ids.size()) order.push_back(ids[i]);
    }
  }
  std::map<NodeId, std::string> rack_of;
  for (const NodeRecord& node : usable) rack_of[node.id] = node.rack;
  std::vector<std::vector<NodeId>> out;
  const std::size_t n = order.size();
  for (std::uint32_t p = 0; p < partitions; ++p) {
    const std::size_t index = first_partition + p;
    // The leader moves one node per partition; followers are picked from a shift that changes
    // each lap (so a node's partitions do not all share the same followers), taking the next
    // node on a rack not yet used while there is one.
    std::vector<NodeId> replicas{order[index % n]};
    std::set<std::string> racks{rack_of[replicas[0]]};
    const std::size_t shift = 1 + (index / n) % (n > 1 ? n - 1 : 1);
    std::size_t cursor = index % n;
    while (replicas.size() < replication_factor) {
      cursor = (cursor + shift) % n;
      std::size_t pick = n;
      for (std::size_t k = 0; k < n && pick == n; ++k) {
        const NodeId id = order[(cursor + k) % n];
        if (!contains(replicas, id) && !racks.contains(rack_of[id])) pick = (cursor + k) % n;
      }
      for (std::size_t k = 0; k < n && pick == n; ++k) {
        if (!contains(replicas, order[(cursor + k) % n])) pick = (cursor + k) % n;
      }
      replicas.push_back(order[pick]);
      racks.insert(rack_of[order[pick]]);
    }
    out.push_back(std::move(replicas));
  }
  return out;
}

NodeId choose_leader(const PartitionState& state, const std::map<NodeId, NodeRecord>& live, NodeId avoid) {
  NodeId fallback = -1;
  for (NodeId id : state.replicas) {
    if (id == avoid || !contains(state.isr, id)) continue;
    auto n = live.find(id);
    if (n == live.end()) continue;
    if (!n->second.draining) return id;
    if (fallback < 0) fallback = id;
  }
  return fallback;
}

struct ClusterMember::Impl {
  std::shared_ptr<MetadataStore> store;
  ClusterOptions options;
  std::string prefix;
  std::int64_t lease = 0;
  std::int64_t last_keepalive_ms = 0;
  bool reachable = true;
  std::string error;
  std::unique_ptr<MetadataWatch> watch;
  std::int64_t revision = 0;
  bool dirty = true;
  std::int64_t last_reload_ms = 0;
  std::int64_t last_rebalance_ms = 0;

  std::map<NodeId, NodeRecord> nodes;
  std::map<std::string, TopicRecord> topics;
  std::map<PartitionId, PartitionState> partitions;
  std::map<PartitionId, std::vector<NodeId>> reassignments;
  NodeId controller = -1;
  WriteGuard controller_guard;  // this node's election, while it is the controller
  std::map<PartitionId, Assignment> given;  // the roles last handed out
  std::vector<Assignment> pending;

  std::string key(std::string_view rest) const { return prefix + std::string(rest); }
  std::string node_key(NodeId id) const { return key("nodes/" + std::to_string(id)); }
  std::string partition_key(const PartitionId& p) const { return key("partitions/" + p.topic + "/" + std::to_string(p.partition)); }

  void failed(const Error& e) {
    if (reachable) log(LogLevel::kWarn, "cluster: the metadata store is unreachable; metadata is frozen", {{"error", e.message}});
    reachable = false;
    error = e.message;
  }
  void succeeded() {
    if (!reachable) log(LogLevel::kInfo, "cluster: the metadata store is reachable again", {});
    reachable = true;
    error.clear();
  }

  Result<void> register_self() {
    WEFT_TRY(lease, store->grant_lease(options.lease_ttl_s));
    WEFT_TRY(bool created, store->compare_and_put(node_key(options.self.id), 0, encode_node(options.self), lease));
    if (!created) {
      (void)store->revoke_lease(lease);
      return Error{Errc::kAlreadyExists, "node id " + std::to_string(options.self.id) + " is already registered by a live node"};
    }
    last_keepalive_ms = now_ms();
    return ok();
  }

  void keep_alive() {
    const std::int64_t now = now_ms();
    if (now - last_keepalive_ms < options.lease_ttl_s * 1000 / 3) return;
    Result<void> renewed = store->keep_alive(lease);
    if (renewed.ok()) {
      last_keepalive_ms = now;
      return;
    }
    if (renewed.error().code != Errc::kNotFound) return failed(renewed.error());
    // The lease ran out (the store was away longer than the TTL): register again.
    log(LogLevel::kWarn, "cluster: this node's lease expired; registering again", {});
    Result<std::int64_t> granted = store->grant_lease(options.lease_ttl_s);
    if (!granted.ok()) return failed(granted.error());
    lease = *granted;
    Result<std::int64_t> put = store->put(node_key(options.self.id), encode_node(options.self), lease);
    if (!put.ok()) return failed(put.error());
    last_keepalive_ms = now;
    dirty = true;
  }

  void reload() {
    Result<RangeResult> all = store->list(prefix);
    if (!all.ok()) return failed(all.error());
    succeeded();
    revision = all->revision;
    ClusterSnapshot snapshot = parse_cluster_snapshot(prefix, all->kvs);
    nodes = std::move(snapshot.nodes);
    topics = std::move(snapshot.topics);
    partitions = std::move(snapshot.partitions);
    reassignments = std::move(snapshot.reassignments);
    controller = snapshot.controller;
    if (controller == options.self.id) controller_guard = WriteGuard{key("controller"), snapshot.controller_since};
    dirty = false;
    last_reload_ms = now_ms();
    hand_out_roles();
  }

  void hand_out_roles() {
    const NodeId self = options.self.id;
    std::set<PartitionId> seen;
    for (const auto& [id, state] : partitions) {
      if (!contains(state.replicas, self)) continue;
      seen.insert(id);
      Assignment a;
      a.partition = id;
      a.state = state;
      a.leader = state.leader == self;
      if (auto n = nodes.find(state.leader); n != nodes.end()) a.leader_address = n->second.replication_address;
      auto before = given.find(id);
      const bool same = before != given.end() && before->second.leader == a.leader && before->second.replica &&
                        before->second.state.leader == state.leader && before->second.state.leader_epoch == state.leader_epoch &&
                        before->second.state.isr == state.isr && before->second.state.replicas == state.replicas &&
                        before->second.state.topic_id == state.topic_id && before->second.leader_address == a.leader_address;
      if (same) continue;
      given[id] = a;
      pending.push_back(a);
    }
    for (auto it = given.begin(); it != given.end();) {
      if (seen.contains(it->first)) {
        ++it;
        continue;
      }
      Assignment gone;
      gone.partition = it->first;
      gone.replica = false;
      pending.push_back(gone);
      it = given.erase(it);
    }
  }

  void stand_for_controller() {
    if (controller >= 0) return;
    Result<bool> won = store->compare_and_put(key("controller"), 0, std::to_string(options.self.id), lease);
    if (!won.ok()) return failed(won.error());
    dirty = true;
    if (!*won) return;
    // Every write as controller is guarded by the key as this election created it, so a
    // controller whose lease ran out (and whose key went with it) writes nothing more.
    Result<std::optional<KeyValue>> mine = store->get(key("controller"));
    if (!mine.ok()) return failed(mine.error());
    if (!*mine || (*mine)->value != std::to_string(options.self.id)) return;
    controller_guard = WriteGuard{key("controller"), (*mine)->create_revision};
    log(LogLevel::kInfo, "cluster: this node is the controller", {{"node", std::to_string(options.self.id)}});
    controller = options.self.id;
  }

  // Writes a partition state if nobody changed it since it was read; a lost race re-reads.
  bool write_state(const PartitionId& id, const PartitionState& state, const char* why) {
    // A pass after a node with hundreds of partitions died writes as many states, a round trip
    // each: the lease is renewed between them when due, or it would lapse during the pass.
    keep_alive();
    Result<bool> written = store->compare_and_put(partition_key(id), state.revision, encode_partition(state), 0, &controller_guard);
    dirty = true;
    if (!written.ok()) {
      failed(written.error());
      return false;
    }
    if (*written) {
      log(LogLevel::kInfo, "cluster: partition state changed",
          {{"partition", to_string(id)}, {"why", why}, {"leader", std::to_string(state.leader)}, {"epoch", std::to_string(state.leader_epoch)},
           {"isr", ids_text(state.isr)}, {"replicas", ids_text(state.replicas)}});
    }
    return *written;
  }

  // A commit's answer: whether the set is the metadata's now, and the revision from which the
  // metadata's states say so.
  struct IsrAnswer {
    bool committed = false;
    std::int64_t settled_from = 0;
  };

  // commit_isr's checks and write, given the partition's state as read (none: it went). An error
  // is no answer: the write may have been made. `write` false only looks whether it was.
  Result<IsrAnswer> try_commit_isr(const PartitionId& partition, const std::optional<KeyValue>& kv, std::int32_t epoch,
                                   const std::vector<NodeId>& isr, const std::vector<NodeId>& based_on, const std::string& topic_id,
                                   bool write) {
    if (!kv) return IsrAnswer{false, 0};
    const IsrAnswer refused{false, kv->mod_revision};
    Result<PartitionState> decoded = decode_partition(kv->value);
    if (!decoded.ok()) return refused;  // the controller writes it again
    PartitionState& state = *decoded;
    if (state.leader_epoch != epoch || state.leader != options.self.id) return refused;
    if (!topic_id.empty() && !state.topic_id.empty() && state.topic_id != topic_id) return refused;  // the name's next topic
    std::vector<NodeId> held = state.isr;
    std::vector<NodeId> expected = based_on;
    std::vector<NodeId> wanted = isr;
    std::sort(held.begin(), held.end());
    std::sort(expected.begin(), expected.end());
    std::sort(wanted.begin(), wanted.end());
    if (held == wanted && held != expected) return IsrAnswer{true, kv->mod_revision};  // made already: an earlier try's answer was lost
    if (!write) {
      // Looking after a try went unanswered: a state as it was may still take that try's write,
      // in flight in the store. The same state written again at its revision fences it off
      // (that write can no longer match), and only then is the proposal refused.
      if (held != expected) return refused;
      WEFT_TRY(const bool fenced, store->compare_and_put(partition_key(partition), kv->mod_revision, kv->value));
      if (!fenced) return Error{Errc::kUnavailable, "the partition's state changed while it was looked at"};  // look again
      return IsrAnswer{false, kv->mod_revision + 1};
    }
    // A proposal made against another set (the controller dropped a dead node meanwhile) is stale.
    if (!based_on.empty() && held != expected) return refused;
    for (NodeId id : isr) {
      if (!contains(state.replicas, id)) return refused;  // a reassignment dropped it
    }
    state.isr = isr;
    WEFT_TRY(const bool written, store->compare_and_put(partition_key(partition), kv->mod_revision, encode_partition(state)));
    // Written: that state on. Not: another write came between (maybe this proposal's own earlier
    // try, landing late), so only states after the one read say how it ended.
    return IsrAnswer{written, kv->mod_revision + 1};
  }

  void controller_duties() {
    const std::int64_t now = now_ms();
    const bool rebalance = options.leader_rebalance_interval_ms > 0 && now - last_rebalance_ms >= options.leader_rebalance_interval_ms;
    if (rebalance) last_rebalance_ms = now;
    std::vector<NodeRecord> live;
    for (const auto& [id, n] : nodes) live.push_back(n);
    // New topics (or new partitions of one): assign their replicas.
    for (const auto& [name, topic] : topics) {
      for (std::uint32_t p = 0; p < topic.partitions; ++p) {
        const PartitionId id{name, p};
        if (partitions.contains(id)) continue;  // one of a deleted topic of this name goes below first
        Result<std::vector<std::vector<NodeId>>> replicas = assign_replicas(live, 1, topic.replication_factor, p);
        if (!replicas.ok()) {
          log(LogLevel::kWarn, "cluster: a partition cannot be assigned yet", {{"partition", to_string(id)}, {"error", replicas.error().message}});
          break;
        }
        PartitionState s;
        s.replicas = replicas->front();
        s.leader = s.replicas.front();
        s.leader_epoch = 1;
        s.isr = s.replicas;
        s.topic_id = topic.id;
        write_state(id, s, "new partition");
      }
    }
    for (auto& [id, state] : partitions) {
      // Partitions of deleted topics go, and so do those of a topic deleted and made again under
      // its name before this pass saw it gone (the new one's are assigned afresh on the next).
      auto topic = topics.find(id.topic);
      if (topic == topics.end() || (!state.topic_id.empty() && state.topic_id != topic->second.id)) {
        (void)store->erase(partition_key(id), state.revision, &controller_guard);
        (void)store->erase(key("reassign/" + id.topic + "/" + std::to_string(id.partition)), 0, &controller_guard);
        dirty = true;
        continue;
      }
      PartitionState next = state;
      next.topic_id = topic->second.id;  // a state from before the field: stamped
      // Dead replicas leave the in-sync set (the last one stays, so that it can come back).
      std::vector<NodeId> alive_isr;
      for (NodeId r : next.isr) {
        if (nodes.contains(r)) alive_isr.push_back(r);
      }
      if (alive_isr.empty() && !next.isr.empty()) alive_isr.push_back(next.leader >= 0 ? next.leader : next.isr.front());
      next.isr = alive_isr;
      // A leader that is gone or draining is replaced by an in-sync replica.
      auto leader = nodes.find(next.leader);
      const bool leader_gone = next.leader < 0 || leader == nodes.end();
      const bool leader_draining = !leader_gone && leader->second.draining;
      if (leader_gone || leader_draining) {
        const NodeId chosen = choose_leader(next, nodes, leader_draining ? next.leader : -1);
        if (chosen >= 0 && chosen != next.leader) {
          next.leader = chosen;
          ++next.leader_epoch;
        } else if (leader_gone && next.leader >= 0) {
          next.leader = -1;  // offline until an in-sync replica returns
          ++next.leader_epoch;
        }
      }
      // Reassignment, Kafka's way: add the new replicas, wait until they are in sync, then drop
      // the old ones (moving the leadership if it was on one). The request goes once the state
      // says it is done, so a lost compare-and-swap only retries it.
      if (auto target = reassignments.find(id); target != reassignments.end() && state.replicas == target->second) {
        (void)store->erase(key("reassign/" + id.topic + "/" + std::to_string(id.partition)), 0, &controller_guard);
        dirty = true;
      } else if (target != reassignments.end()) {
        std::vector<NodeId> all = next.replicas;
        for (NodeId r : target->second) {
          if (!contains(all, r)) all.push_back(r);
        }
        const bool all_in_sync = std::all_of(target->second.begin(), target->second.end(), [&](NodeId r) { return contains(next.isr, r); });
        if (!all_in_sync) {
          next.replicas = all;
        } else {
          next.replicas = target->second;
          std::vector<NodeId> isr;
          for (NodeId r : next.isr) {
            if (contains(target->second, r)) isr.push_back(r);
          }
          next.isr = isr;
          if (!contains(next.replicas, next.leader)) {
            next.leader = choose_leader(next, nodes);
            ++next.leader_epoch;
          }
        }
      }
      const char* why = leader_gone ? "leader gone" : leader_draining ? "leader draining" : "replicas changed";
      // The preferred replica back in sync: leadership returns to it (never while anything else
      // about the partition changes in this pass).
      if (rebalance && next.leader >= 0 && next.leader == state.leader && next.replicas == state.replicas && !next.replicas.empty() &&
          next.leader != next.replicas.front() && !reassignments.contains(id)) {
        const NodeId preferred = next.replicas.front();
        auto p = nodes.find(preferred);
        if (p != nodes.end() && !p->second.draining && contains(next.isr, preferred)) {
          next.leader = preferred;
          ++next.leader_epoch;
          why = "preferred leader back";
        }
      }
      if (next.replicas != state.replicas || next.leader != state.leader || next.leader_epoch != state.leader_epoch || next.isr != state.isr ||
          next.topic_id != state.topic_id) {
        write_state(id, next, why);
      }
    }
  }
};

ClusterMember::ClusterMember(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
ClusterMember::~ClusterMember() = default;

Result<std::unique_ptr<ClusterMember>> ClusterMember::join(std::shared_ptr<MetadataStore> store, ClusterOptions options) {
  if (store == nullptr) return Error{Errc::kInvalidArgument, "cluster: no metadata store"};
  if (options.self.id < 0) return Error{Errc::kInvalidArgument, "cluster: a node id must be 0 or more"};
  if (options.self.replication_address.empty()) return Error{Errc::kInvalidArgument, "cluster: the node needs a replication address"};
  if (options.cluster.empty() || options.cluster.find('/') != std::string::npos) {
    return Error{Errc::kInvalidArgument, "cluster: the cluster name must be non-empty without '/'"};
  }
  auto impl = std::make_unique<Impl>();
  impl->store = std::move(store);
  impl->options = std::move(options);
  impl->prefix = "/weft/" + impl->options.cluster + "/";
  WEFT_TRY_VOID(impl->register_self());
  impl->reload();
  if (!impl->reachable) return Error{Errc::kUnavailable, "cluster: " + impl->error};
  return std::unique_ptr<ClusterMember>(new ClusterMember(std::move(impl)));
}

void ClusterMember::run_once(int timeout_ms) {
  Impl& i = *impl_;
  i.keep_alive();
  if (i.watch == nullptr) {
    Result<std::unique_ptr<MetadataWatch>> w = i.store->watch(i.prefix, i.revision + 1);
    if (w.ok()) {
      i.watch = std::move(w.value());
    } else {
      i.failed(w.error());
      i.dirty = true;
    }
  }
  if (!i.dirty && i.watch != nullptr) {
    std::vector<WatchEvent> events;
    Result<void> got = i.watch->next(events, timeout_ms);
    if (!got.ok()) {
      i.watch.reset();
      i.dirty = true;
      if (got.error().code != Errc::kOutOfRange) i.failed(got.error());
    } else {
      // Events the last read already reflects change nothing.
      for (const WatchEvent& e : events) i.dirty = i.dirty || e.kv.mod_revision > i.revision;
    }
  } else if (i.watch == nullptr && timeout_ms > 0) {
    std::this_thread::sleep_for(std::chrono::milliseconds(std::min(timeout_ms, 100)));
  }
  // A periodic re-read as well: cheap at this size, and it heals a watch that missed something.
  if (i.dirty || now_ms() - i.last_reload_ms > 1'000) i.reload();
  if (!i.reachable) return;
  i.stand_for_controller();
  if (i.controller == i.options.self.id) {
    if (i.dirty) i.reload();
    i.controller_duties();
  }
}

NodeId ClusterMember::self() const noexcept { return impl_->options.self.id; }
bool ClusterMember::is_controller() const noexcept { return impl_->controller == impl_->options.self.id; }
NodeId ClusterMember::controller() const noexcept { return impl_->controller; }
bool ClusterMember::store_reachable() const noexcept { return impl_->reachable; }
const std::string& ClusterMember::store_error() const noexcept { return impl_->error; }
std::map<NodeId, NodeRecord> ClusterMember::nodes() const { return impl_->nodes; }
std::map<std::string, TopicRecord> ClusterMember::topics() const { return impl_->topics; }
std::map<PartitionId, PartitionState> ClusterMember::partitions() const { return impl_->partitions; }
std::vector<Assignment> ClusterMember::take_assignments() { return std::exchange(impl_->pending, {}); }

Result<void> create_cluster_topic(MetadataStore& store, std::string_view cluster, const TopicRecord& topic) {
  WEFT_TRY_VOID(validate_topic_name(topic.name));
  if (topic.partitions == 0 || topic.replication_factor == 0) {
    return Error{Errc::kInvalidArgument, "a topic needs at least one partition and one replica"};
  }
  const std::string key = "/weft/" + std::string(cluster) + "/topics/" + topic.name;
  TopicRecord record = topic;
  if (record.id.empty()) record.id = fresh_topic_id();
  WEFT_TRY(bool created, store.compare_and_put(key, 0, encode_topic(record)));
  if (!created) return Error{Errc::kAlreadyExists, "topic " + topic.name + " already exists"};
  return ok();
}

Result<void> delete_cluster_topic(MetadataStore& store, std::string_view cluster, std::string_view name) {
  WEFT_TRY(bool erased, store.erase("/weft/" + std::string(cluster) + "/topics/" + std::string(name)));
  if (!erased) return Error{Errc::kNotFound, "topic " + std::string(name) + " does not exist"};
  return ok();
}

Result<void> ClusterMember::create_topic(const TopicRecord& topic) {
  WEFT_TRY_VOID(create_cluster_topic(*impl_->store, impl_->options.cluster, topic));
  impl_->dirty = true;
  return ok();
}

Result<void> ClusterMember::delete_topic(std::string_view name) {
  WEFT_TRY_VOID(delete_cluster_topic(*impl_->store, impl_->options.cluster, name));
  impl_->dirty = true;
  return ok();
}

Result<bool> ClusterMember::commit_isr(const PartitionId& partition, std::int32_t epoch, const std::vector<NodeId>& isr,
                                       const std::vector<NodeId>& based_on, const std::string& topic_id, std::int64_t* settled_from,
                                       bool tried_before) {
  impl_->keep_alive();  // when due: a burst of commits takes two round trips each
  WEFT_TRY(std::optional<KeyValue> kv, impl_->store->get(impl_->partition_key(partition)));
  WEFT_TRY(const Impl::IsrAnswer answer, impl_->try_commit_isr(partition, kv, epoch, isr, based_on, topic_id, !tried_before));
  if (settled_from != nullptr) *settled_from = answer.settled_from;
  // Answered either way: the leader waits for a state from `settled_from` on, which the next read
  // of the metadata hands out as a role even when it equals the one last given (the controller
  // put the set back before the next read: a node that was briefly away, or a refusal by a state
  // equal to an earlier one), else the leader would wait for good, never proposing again. The
  // entry stays, marked, so a partition that no longer names this node is still told "gone".
  if (auto given = impl_->given.find(partition); given != impl_->given.end()) given->second.replica = false;
  impl_->dirty = true;
  return answer.committed;
}

namespace {

Result<void> check_reassignment(const std::map<NodeId, NodeRecord>& nodes, const std::map<PartitionId, PartitionState>& partitions,
                                const PartitionId& partition, const std::vector<NodeId>& replicas) {
  if (replicas.empty()) return Error{Errc::kInvalidArgument, "a reassignment needs at least one replica"};
  std::set<NodeId> unique(replicas.begin(), replicas.end());
  if (unique.size() != replicas.size()) return Error{Errc::kInvalidArgument, "a replica is named twice"};
  for (NodeId r : replicas) {
    if (!nodes.contains(r)) return Error{Errc::kInvalidArgument, "node " + std::to_string(r) + " is not a live node"};
  }
  if (!partitions.contains(partition)) return Error{Errc::kNotFound, "partition " + to_string(partition) + " does not exist"};
  return ok();
}

std::string reassign_key(std::string_view prefix, const PartitionId& partition) {
  return std::string(prefix) + "reassign/" + partition.topic + "/" + std::to_string(partition.partition);
}

}  // namespace

Result<void> ClusterMember::reassign(const PartitionId& partition, const std::vector<NodeId>& replicas) {
  WEFT_TRY_VOID(check_reassignment(impl_->nodes, impl_->partitions, partition, replicas));
  WEFT_TRY(std::int64_t revision, impl_->store->put(reassign_key(impl_->prefix, partition), "replicas=" + ids_text(replicas)));
  (void)revision;
  impl_->dirty = true;
  return ok();
}

// ---- committed offsets in the metadata store -----------------------------------------------------

namespace {

constexpr std::size_t kMaxOffsetValueBytes = std::size_t{1} << 20;  // well inside etcd's 1.5 MiB request

// Beside the cluster's prefix, not under it: the members watch that one, and a commit is not a
// change to the cluster's shape.
std::string offsets_prefix(std::string_view cluster) { return "/weft-offsets/" + std::string(cluster) + "/"; }

std::string hex_of(std::string_view bytes) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out;
  out.reserve(bytes.size() * 2);
  for (const char c : bytes) {
    const auto b = static_cast<unsigned char>(c);
    out.push_back(kDigits[b >> 4]);
    out.push_back(kDigits[b & 15]);
  }
  return out;
}

std::optional<std::string> bytes_of_hex(std::string_view hex) {
  if (hex.size() % 2 != 0) return std::nullopt;
  auto digit = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
  };
  std::string out;
  out.reserve(hex.size() / 2);
  for (std::size_t i = 0; i < hex.size(); i += 2) {
    const int high = digit(hex[i]), low = digit(hex[i + 1]);
    if (high < 0 || low < 0) return std::nullopt;
    out.push_back(static_cast<char>(high * 16 + low));
  }
  return out;
}

// One key's value: `partition offset commit_time_ms metadata-hex` per line, by partition.
std::string encode_topic_offsets(const std::map<std::uint32_t, CommittedOffset>& partitions) {
  std::string out;
  for (const auto& [partition, o] : partitions)
    out += std::to_string(partition) + " " + std::to_string(o.offset.value) + " " + std::to_string(o.commit_time_ms) + " " + hex_of(o.metadata) + "\n";
  return out;
}

std::optional<std::map<std::uint32_t, CommittedOffset>> decode_topic_offsets(std::string_view topic, std::string_view text) {
  std::map<std::uint32_t, CommittedOffset> out;
  while (!text.empty()) {
    const std::size_t eol = text.find('\n');
    if (eol == std::string_view::npos) return std::nullopt;
    std::string_view line = text.substr(0, eol);
    text.remove_prefix(eol + 1);
    std::string_view fields[4];
    for (int i = 0; i < 4; ++i) {
      const std::size_t space = i < 3 ? line.find(' ') : line.size();
      if (space == std::string_view::npos) return std::nullopt;
      fields[i] = line.substr(0, space);
      line.remove_prefix(std::min(line.size(), space + (i < 3 ? 1 : 0)));
    }
    CommittedOffset o;
    o.topic = std::string(topic);
    std::optional<std::string> metadata = bytes_of_hex(fields[3]);
    if (!parse_number(fields[0], o.partition) || !parse_number(fields[1], o.offset.value) || !parse_number(fields[2], o.commit_time_ms) ||
        !metadata || o.offset < Offset{0})
      return std::nullopt;
    o.metadata = std::move(*metadata);
    out.insert_or_assign(o.partition, std::move(o));
  }
  return out;
}

class StoreOffsetMirror final : public OffsetMirror {
 public:
  StoreOffsetMirror(std::shared_ptr<MetadataStore> store, std::string cluster)
      : store_(std::move(store)), prefix_(offsets_prefix(cluster)) {}

  Result<void> commit(std::string_view group, std::span<const CommittedOffset> offsets) override {
    WEFT_TRY_VOID(validate_commit(group, offsets));
    std::map<std::string, std::vector<const CommittedOffset*>> by_topic;
    for (const CommittedOffset& o : offsets) by_topic[o.topic].push_back(&o);
    for (const auto& [topic, entries] : by_topic) {
      const std::string key = prefix_ + std::string(group) + "/" + topic;
      // A compare-and-swap on the key, so a commit racing another (a coordinator handing over)
      // loses nothing the other wrote.
      for (int attempt = 0;; ++attempt) {
        WEFT_TRY(const std::optional<KeyValue> now, store_->get(key));
        std::map<std::uint32_t, CommittedOffset> partitions;
        if (now) {
          std::optional<std::map<std::uint32_t, CommittedOffset>> known = decode_topic_offsets(topic, now->value);
          if (known) partitions = std::move(*known);
          else log(LogLevel::kWarn, "cluster: committed offsets in the store are unreadable; replaced", {{"key", key}});
        }
        for (const CommittedOffset* o : entries) partitions.insert_or_assign(o->partition, *o);
        const std::string value = encode_topic_offsets(partitions);
        if (value.size() > kMaxOffsetValueBytes)
          return Error{Errc::kResourceExhausted, "committed offsets of group '" + std::string(group) + "' for topic '" + topic + "' would take " +
                                                     std::to_string(value.size()) + " bytes in the metadata store (at most " +
                                                     std::to_string(kMaxOffsetValueBytes) + ")"};
        WEFT_TRY(const bool written, store_->compare_and_put(key, now ? now->mod_revision : 0, value));
        if (written) break;
        if (attempt >= 16) return Error{Errc::kUnavailable, "committed offsets of group '" + std::string(group) + "': the store kept changing under the commit"};
      }
    }
    return ok();
  }

  Result<std::vector<CommittedOffset>> fetch(std::string_view group) override {
    const std::string group_prefix = prefix_ + std::string(group) + "/";
    WEFT_TRY(const RangeResult found, store_->list(group_prefix));
    std::vector<CommittedOffset> out;
    for (const KeyValue& kv : found.kvs) {
      const std::string_view topic = std::string_view(kv.key).substr(group_prefix.size());
      std::optional<std::map<std::uint32_t, CommittedOffset>> partitions = decode_topic_offsets(topic, kv.value);
      if (!partitions) {
        log(LogLevel::kWarn, "cluster: committed offsets in the store are unreadable; left out", {{"key", kv.key}});
        continue;
      }
      for (auto& [partition, o] : *partitions) out.push_back(std::move(o));
    }
    return out;  // keys come in order, so topics do; partitions are ordered within each
  }

  // One range read over every group's offsets when more than one is asked for.
  Result<std::vector<std::vector<CommittedOffset>>> fetch_groups(std::span<const std::string> groups) override {
    if (groups.size() <= 1) return OffsetMirror::fetch_groups(groups);
    std::map<std::string_view, std::size_t> wanted;  // group -> index in `groups`
    for (std::size_t i = 0; i < groups.size(); ++i) wanted.emplace(groups[i], i);
    WEFT_TRY(const RangeResult found, store_->list(prefix_));
    std::vector<std::vector<CommittedOffset>> out(groups.size());
    for (const KeyValue& kv : found.kvs) {
      const std::string_view rest = std::string_view(kv.key).substr(prefix_.size());
      const std::size_t slash = rest.find('/');  // group ids hold no '/'
      if (slash == std::string_view::npos) continue;
      const auto it = wanted.find(rest.substr(0, slash));
      if (it == wanted.end()) continue;
      std::optional<std::map<std::uint32_t, CommittedOffset>> partitions = decode_topic_offsets(rest.substr(slash + 1), kv.value);
      if (!partitions) {
        log(LogLevel::kWarn, "cluster: committed offsets in the store are unreadable; left out", {{"key", kv.key}});
        continue;
      }
      for (auto& [partition, o] : *partitions) out[it->second].push_back(std::move(o));
    }
    return out;  // keys come in order: within a group, topics do, and partitions within each
  }

  Result<std::vector<std::string>> groups() override {
    WEFT_TRY(const RangeResult found, store_->list(prefix_));
    std::vector<std::string> out;
    for (const KeyValue& kv : found.kvs) {
      const std::string_view rest = std::string_view(kv.key).substr(prefix_.size());
      const std::string_view group = rest.substr(0, rest.find('/'));  // group ids hold no '/'
      if (out.empty() || out.back() != group) out.emplace_back(group);
    }
    return out;
  }

  Result<void> delete_group(std::string_view group) override {
    WEFT_TRY(const RangeResult found, store_->list(prefix_ + std::string(group) + "/"));
    for (const KeyValue& kv : found.kvs) {
      WEFT_TRY(const bool erased, store_->erase(kv.key));
      (void)erased;
    }
    return ok();
  }

 private:
  std::shared_ptr<MetadataStore> store_;
  std::string prefix_;
};

}  // namespace

std::shared_ptr<OffsetMirror> make_store_offset_mirror(std::shared_ptr<MetadataStore> store, std::string cluster) {
  return std::make_shared<StoreOffsetMirror>(std::move(store), std::move(cluster));
}

Result<void> forget_topic_offsets(MetadataStore& store, std::string_view cluster, std::string_view topic) {
  const std::string prefix = offsets_prefix(cluster);
  WEFT_TRY(const RangeResult all, store.list(prefix));
  const std::string suffix = "/" + std::string(topic);
  for (const KeyValue& kv : all.kvs) {
    if (!kv.key.ends_with(suffix) || kv.key.find('/', prefix.size()) != kv.key.size() - suffix.size()) continue;
    WEFT_TRY(const bool erased, store.erase(kv.key));
    (void)erased;
  }
  return ok();
}

ClusterSnapshot parse_cluster_snapshot(std::string_view prefix, const std::vector<KeyValue>& kvs) {
  ClusterSnapshot out;
  for (const KeyValue& kv : kvs) {
    if (!kv.key.starts_with(prefix)) continue;
    const std::string_view rest = std::string_view(kv.key).substr(prefix.size());
    auto after = [&](std::string_view head) { return rest.substr(head.size()); };
    if (rest == "controller") {
      (void)parse_number(kv.value, out.controller);
      out.controller_since = kv.create_revision;
    } else if (rest.starts_with("nodes/")) {
      NodeId id = 0;
      if (!parse_number(after("nodes/"), id)) continue;
      if (Result<NodeRecord> n = decode_node(id, kv.value); n.ok()) out.nodes[id] = *n;
    } else if (rest.starts_with("topics/")) {
      if (Result<TopicRecord> t = decode_topic(after("topics/"), kv.value); t.ok()) out.topics[t->name] = *t;
    } else if (rest.starts_with("partitions/") || rest.starts_with("reassign/")) {
      const bool is_reassign = rest.starts_with("reassign/");
      const std::string_view path = after(is_reassign ? "reassign/" : "partitions/");
      const std::size_t slash = path.rfind('/');
      PartitionId id;
      if (slash == std::string_view::npos || !parse_number(path.substr(slash + 1), id.partition)) continue;
      id.topic = std::string(path.substr(0, slash));
      if (is_reassign) {
        std::vector<NodeId> target;
        if (parse_ids(fields_of(kv.value)["replicas"], target) && !target.empty()) out.reassignments[id] = target;
      } else if (Result<PartitionState> s = decode_partition(kv.value); s.ok()) {
        s->revision = kv.mod_revision;
        out.partitions[id] = *s;
      } else {
        log(LogLevel::kError, "cluster: an unreadable partition state is ignored", {{"partition", to_string(id)}, {"error", s.error().message}});
      }
    }
  }
  return out;
}

Result<ClusterSnapshot> read_cluster(MetadataStore& store, std::string_view cluster) {
  const std::string prefix = "/weft/" + std::string(cluster) + "/";
  WEFT_TRY(RangeResult all, store.list(prefix));
  return parse_cluster_snapshot(prefix, all.kvs);
}

Result<void> reassign_partition(MetadataStore& store, std::string_view cluster, const PartitionId& partition,
                                const std::vector<NodeId>& replicas) {
  WEFT_TRY(ClusterSnapshot now, read_cluster(store, cluster));
  WEFT_TRY_VOID(check_reassignment(now.nodes, now.partitions, partition, replicas));
  WEFT_TRY(std::int64_t revision, store.put(reassign_key("/weft/" + std::string(cluster) + "/", partition), "replicas=" + ids_text(replicas)));
  (void)revision;
  return ok();
}

Result<void> ClusterMember::drain() {
  impl_->options.self.draining = true;
  WEFT_TRY(std::int64_t revision, impl_->store->put(impl_->node_key(impl_->options.self.id), encode_node(impl_->options.self), impl_->lease));
  (void)revision;
  impl_->dirty = true;
  return ok();
}

std::size_t ClusterMember::partitions_led() const {
  std::size_t n = 0;
  for (const auto& [id, state] : impl_->partitions) n += state.leader == impl_->options.self.id ? 1u : 0u;
  return n;
}

void ClusterMember::leave() {
  if (impl_->lease != 0) (void)impl_->store->revoke_lease(impl_->lease);
  impl_->lease = 0;
}

}  // namespace weft
