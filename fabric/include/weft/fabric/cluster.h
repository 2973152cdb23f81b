// The cluster's control plane over the metadata store (weft/fabric/metadata_store.h): nodes
// register under leases, one of them is the controller (an election on one key), the
// controller assigns partition replicas across nodes and racks and elects leaders with epochs,
// and every node watches the partition states to learn what it leads and follows.
//
// Keys, under /weft/<cluster>/ (values are one line of `key=value` fields separated by spaces):
//   nodes/<id>                  a live node (leased): replication=, kafka=, rack=, draining=, metrics=
//   controller                  the controller's node id (leased)
//   topics/<name>               partitions=, replication=, config= (the topic's settings), id=
//   partitions/<topic>/<index>  replicas=, leader=, epoch=, isr=, topic= (TopicRecord::id):
//                               written by the controller, and
//                               by the leader for in-sync set changes (compare-and-swap on the
//                               key's revision, so neither overwrites the other unseen)
//   reassign/<topic>/<index>    replicas=: a reassignment the controller carries out
//
// Losing the store stops metadata changes only: a member keeps its last view and the data path
// of healthy partitions goes on.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "weft/fabric/metadata_store.h"
#include "weft/fabric/offset_store.h"
#include "weft/fabric/replication.h"
#include "weft/fabric/result.h"

namespace weft {

struct NodeRecord {
  NodeId id = -1;
  std::string replication_address;  // where followers open links to it
  std::string kafka_address;        // HOST:PORT Kafka clients connect to ("" if none)
  std::string rack;                 // replicas of a partition spread across racks first
  bool draining = false;            // shutting down: leadership moves off it
  std::string metrics_address;      // HOST:PORT of its Prometheus page ("" if none): `weft cluster status` reads lag there
};

struct TopicRecord {
  std::string name;
  std::uint32_t partitions = 1;
  std::uint32_t replication_factor = 1;
  std::string config;  // the topic's settings as `key=value,key=value` (set_topic_config names)
  // Which topic of the name it is (Kafka's topic id): 32 random hex digits given when it is made
  // (create_cluster_topic), so nothing of a topic deleted before under the name is taken for it.
  // It moves with the record (a store copied elsewhere keeps it). "" in records made before.
  std::string id{};
  // min.insync.replicas, a field of its own rather than in `config`: nodes from before it read a
  // record that carries it (they ignore a field they do not know, and refuse an unknown setting).
  std::uint32_t min_insync_replicas = 1;
};

struct PartitionState {
  std::vector<NodeId> replicas;  // the first is the preferred leader
  NodeId leader = -1;            // -1: offline (no in-sync replica is alive)
  std::int32_t leader_epoch = 0;
  std::vector<NodeId> isr;
  std::int64_t revision = 0;  // the store's mod revision of this state (compare-and-swap)
  // The TopicRecord::id of the topic this partition belongs to; "" in states written before it
  // was recorded (taken as the current topic's, and stamped with it).
  std::string topic_id{};
};

// The one-line forms stored under the keys above.
std::string encode_node(const NodeRecord& node);
Result<NodeRecord> decode_node(NodeId id, std::string_view text);
std::string encode_topic(const TopicRecord& topic);
Result<TopicRecord> decode_topic(std::string_view name, std::string_view text);
std::string encode_partition(const PartitionState& state);
Result<PartitionState> decode_partition(std::string_view text);

// Replicas for `partitions` new partitions with `replication_factor` each: spread over racks,
// then nodes, starting where the load is lowest (Kafka's rack-aware round robin, shifted per
// partition so leaders spread too). kInvalidArgument when fewer nodes than the factor live.
Result<std::vector<std::vector<NodeId>>> assign_replicas(const std::vector<NodeRecord>& nodes, std::uint32_t partitions,
                                                         std::uint32_t replication_factor, std::uint32_t first_partition = 0);

// The next leader for a partition whose leader is gone or draining: the first replica, in
// replica order, that is in the in-sync set and alive (and not draining, if any other is). -1:
// none (the partition goes offline; weft never elects a replica outside the set).
NodeId choose_leader(const PartitionState& state, const std::map<NodeId, NodeRecord>& live, NodeId avoid = -1);

// Topic records written straight to the store (any member, the CLI): the controller assigns
// the partitions. kAlreadyExists / kNotFound as the topic is or is not there. A record without
// an id is given a fresh one.
Result<void> create_cluster_topic(MetadataStore& store, std::string_view cluster, const TopicRecord& topic);
Result<void> delete_cluster_topic(MetadataStore& store, std::string_view cluster, std::string_view name);

// Everything under a cluster's keys, decoded (unreadable entries are skipped and logged).
struct ClusterSnapshot {
  std::map<NodeId, NodeRecord> nodes;  // live ones
  NodeId controller = -1;
  std::int64_t controller_since = 0;  // the controller key's create revision (its election)
  std::map<std::string, TopicRecord> topics;
  std::map<PartitionId, PartitionState> partitions;
  std::map<PartitionId, std::vector<NodeId>> reassignments;  // asked for, not yet carried out
};
ClusterSnapshot parse_cluster_snapshot(std::string_view prefix, const std::vector<KeyValue>& kvs);
// One read of the store (the CLI's `weft cluster status`).
Result<ClusterSnapshot> read_cluster(MetadataStore& store, std::string_view cluster);
// Asks the controller to move a partition's replicas to `replicas` (the first becomes the
// preferred leader): new replicas catch up first, then the old ones leave. Checked against the
// live nodes and the existing partitions.
// Consumer groups' committed offsets in the metadata store, one key per group and topic
// (`/weft-offsets/<cluster>/<group>/<topic>`, beside the watched cluster prefix: a line `partition offset commit_time_ms metadata-hex`
// per partition), each commit a compare-and-swap on its key. ClusterNode installs it on its node.
std::shared_ptr<OffsetMirror> make_store_offset_mirror(std::shared_ptr<MetadataStore> store, std::string cluster);
// Deletes every group's committed offsets of `topic` (the topic was deleted).
Result<void> forget_topic_offsets(MetadataStore& store, std::string_view cluster, std::string_view topic);
Result<void> reassign_partition(MetadataStore& store, std::string_view cluster, const PartitionId& partition,
                                const std::vector<NodeId>& replicas);

struct ClusterOptions {
  std::string cluster = "weft";
  NodeRecord self;
  std::int64_t lease_ttl_s = 2;  // a node that stops renewing is gone after this (etcd may round it up)
  // How often the controller hands leadership back to each partition's preferred (first) replica
  // when that one is live, not draining and in sync, so leaders spread again after failovers
  // (Kafka's auto.leader.rebalance). 0: never.
  std::int64_t leader_rebalance_interval_ms = 30'000;
};

// A partition role this node must take, from the latest partition states.
struct Assignment {
  PartitionId partition;
  PartitionState state;
  bool leader = false;  // else a follower of state.leader (or no role: not a replica any more)
  bool replica = true;
  std::string leader_address;  // the leader's replication address (followers)
};

class ClusterMember {
 public:
  // Registers this node (a leased key) and reads the cluster's state. kAlreadyExists when a
  // live node already holds this id.
  static Result<std::unique_ptr<ClusterMember>> join(std::shared_ptr<MetadataStore> store, ClusterOptions options);
  ~ClusterMember();
  ClusterMember(const ClusterMember&) = delete;
  ClusterMember& operator=(const ClusterMember&) = delete;

  // Renews the lease, applies watched changes, stands for controller when there is none, and,
  // as controller, assigns new topics, elects leaders for partitions whose leader left, and
  // carries out reassignments. Waits up to `timeout_ms` for a change.
  void run_once(int timeout_ms);

  NodeId self() const noexcept;
  bool is_controller() const noexcept;
  NodeId controller() const noexcept;  // -1: none known
  bool store_reachable() const noexcept;
  const std::string& store_error() const noexcept;  // the last failure ("" when reachable)

  std::map<NodeId, NodeRecord> nodes() const;
  std::map<std::string, TopicRecord> topics() const;
  std::map<PartitionId, PartitionState> partitions() const;
  // Roles that changed for this node since the last call (leader, follower, or none).
  std::vector<Assignment> take_assignments();

  // Topics: any member may create or delete; the controller assigns replicas.
  Result<void> create_topic(const TopicRecord& topic);
  Result<void> delete_topic(std::string_view name);
  // A leader's in-sync set change; false when the partition moved on (another epoch or a
  // concurrent change): the leader re-reads and proposes again if it still wants it.
  // `based_on`: the set the proposal changed; a metadata set that differs means the proposal is
  // stale (false). Empty: not checked.
  // `topic_id`: the TopicRecord::id the leader's role is of ("": not checked), so a leader of a
  // deleted topic never changes the set of a topic made again under its name.
  // True too when the metadata holds the set already (a commit whose answer was lost, tried
  // again). `settled_from`, when given and the call answers: the metadata's states from this
  // revision on reflect the answer (Replicator::proposal_settled). An error may leave the commit
  // made or not: call again with `tried_before`, which only looks whether it was (a leader that
  // proposed it may have moved on since; it proposes again if it still wants the change).
  Result<bool> commit_isr(const PartitionId& partition, std::int32_t epoch, const std::vector<NodeId>& isr,
                          const std::vector<NodeId>& based_on = {}, const std::string& topic_id = {},
                          std::int64_t* settled_from = nullptr, bool tried_before = false);
  Result<void> reassign(const PartitionId& partition, const std::vector<NodeId>& replicas);
  // Asks the controller to move every leadership off this node (a clean shutdown).
  Result<void> drain();
  // Partitions this node leads, from the latest view (drain waits for none).
  std::size_t partitions_led() const;
  // Deletes this node's registration at once (after drain, before exit).
  void leave();

 private:
  struct Impl;
  explicit ClusterMember(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace weft
