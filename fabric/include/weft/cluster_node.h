// A node in a cluster: the glue between a Node (its rings and logs), a Replicator (the data
// path between nodes) and a ClusterMember (the metadata). weftd runs one in cluster mode; tests
// run several in one process.
//
// Two threads: the control thread renews the lease and follows the metadata (a store call may
// take its whole timeout when the store is away); the replication thread applies the roles it
// hands over — creating the topic locally, leading or following each replica — runs the
// replicator, and hands in-sync set proposals back for the control thread to commit. Losing the
// store stalls the control thread only: replication of healthy partitions goes on.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "weft/fabric/cluster.h"
#include "weft/fabric/link.h"
#include "weft/fabric/metadata_store.h"
#include "weft/fabric/replication.h"
#include "weft/fabric/result.h"
#include "weft/node.h"

namespace weft {

struct ClusterNodeOptions {
  ClusterOptions cluster;           // cluster name, this node's record (id, addresses, rack), lease
  std::string replication_listen;   // the transport address followers open links to
  ReplicationOptions replication;
};

// What clients of a partition need to know (Kafka's Metadata, produce and fetch routing).
struct PartitionView {
  NodeId leader = -1;
  std::int32_t leader_epoch = 0;
  std::vector<NodeId> replicas;
  std::vector<NodeId> isr;
  std::uint32_t isr_size = 0;  // the in-sync set's, even in a view without the sets
  Offset high_watermark{0};  // known only where this node is a replica (0 elsewhere)
  bool replica_here = false;
};

class ClusterNode {
 public:
  // Registers with the cluster and starts both threads. `node`, `transport` and `store` must
  // outlive it. The replication listener's address (port 0 resolved) goes into this node's record.
  static Result<std::unique_ptr<ClusterNode>> start(Node& node, Transport& transport, std::shared_ptr<MetadataStore> store,
                                                    ClusterNodeOptions options);
  // Stops both threads (without handing leaderships over: call drain() first for that).
  ~ClusterNode();
  ClusterNode(const ClusterNode&) = delete;
  ClusterNode& operator=(const ClusterNode&) = delete;

  NodeId id() const noexcept;
  const std::string& replication_address() const noexcept;

  // A topic for the whole cluster: the controller assigns its replicas and every replica's node
  // creates it locally with `config` (partitions and replication factor from here).
  // kFailedPrecondition when fewer nodes are registered (in the store) than the factor.
  Result<void> create_topic(std::string_view name, std::uint32_t partitions, std::uint32_t replication_factor, const TopicConfig& config);
  Result<void> delete_topic(std::string_view name);

  // An eventfd written whenever a high watermark here moves (acks=all producers and fetches at
  // the high watermark wait on it); -1: none. The fd must outlive the ClusterNode or be unset.
  void set_high_watermark_event(int fd);

  // Records were committed to a partition this node leads: the replication thread pushes them now
  // rather than after the node's next pass. Any thread; a write to an eventfd.
  void records_committed();

  // Snapshots, safe from any thread.
  std::optional<PartitionView> partition(std::string_view topic, std::uint32_t partition) const;
  // As partition() without the replica and in-sync lists (left empty): what routing a produce or
  // fetch needs, with no copy of them on every look at a waiting request.
  std::optional<PartitionView> leadership(std::string_view topic, std::uint32_t partition) const;
  std::vector<NodeRecord> nodes() const;
  std::vector<TopicRecord> topics() const;
  std::optional<TopicRecord> topic(std::string_view name) const;
  // The node Kafka clients of a consumer group go to (FindCoordinator): one of the live nodes
  // with a Kafka address, by a hash of the group id, so every node names the same one. -1: none.
  NodeId group_coordinator(std::string_view group) const;
  NodeId controller() const;
  bool store_reachable() const;
  std::vector<ReplicaStatus> replicas() const;
  // In-sync set changes this node committed as a leader (Kafka's IsrShrinksPerSec and
  // IsrExpandsPerSec, as totals).
  struct IsrChanges {
    std::uint64_t shrinks = 0;
    std::uint64_t expands = 0;
  };
  IsrChanges isr_changes() const;

  // A clean shutdown's first step: leadership moves to other in-sync replicas; returns once this
  // node leads nothing another live in-sync replica could take (or `timeout_ms` passed:
  // kUnavailable, saying how many it still leads).
  Result<void> drain(int timeout_ms);

 private:
  struct Impl;
  explicit ClusterNode(std::unique_ptr<Impl> impl);
  std::optional<PartitionView> view_of(std::string_view topic, std::uint32_t partition, bool with_sets) const;
  std::unique_ptr<Impl> impl_;
};

// "key=value,key=value" (a cluster topic record's settings) into a TopicConfig, from `base`.
Result<TopicConfig> topic_config_from_text(std::string_view text, TopicConfig base);
std::string topic_config_text(const TopicConfig& config);
// A cluster topic record's settings (its text and the fields kept apart) into a TopicConfig.
Result<TopicConfig> topic_config_of(const TopicRecord& record, TopicConfig base);

}  // namespace weft
