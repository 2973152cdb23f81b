// `weft cluster status`, `weft topic create|delete|list --etcd` and `weft partition reassign`:
// the cluster's metadata read and written in etcd (weft/fabric/cluster.h), and each leader's
// replication lag read from its Prometheus page (the node record names it).
#include <algorithm>
#include <cstdio>
#include <map>
#include <string>
#include <vector>

#include "commands.h"
#include "status_metrics.h"
#include "weft/fabric/cluster.h"
#include "weft/node.h"
#include "weft/storage/etcd_metadata_store.h"

namespace weft::cli {
namespace {

int fail(const Error& e, const std::string& doing) {
  std::fprintf(stderr, "weft: %s: %s\n", doing.c_str(), e.message.c_str());
  switch (e.code) {
    case Errc::kInvalidArgument: return 2;
    case Errc::kNotFound: return 3;
    case Errc::kUnavailable: return 4;
    default: return 1;
  }
}

Result<std::unique_ptr<MetadataStore>> open_store(const ClusterCliOptions& o) {
  if (o.etcd.empty())
    return Error{Errc::kInvalidArgument, "give the cluster's etcd with --etcd http://HOST:PORT (or set WEFT_ETCD)"};
  return storage::open_etcd_metadata_store(o.etcd, storage::EtcdOptions{static_cast<int>(o.timeout_ms)});
}

std::string ids(const std::vector<NodeId>& list) {
  std::string out;
  for (const NodeId id : list) out += (out.empty() ? "" : ",") + std::to_string(id);
  return out.empty() ? "-" : out;
}

// Lag per follower and the high watermark, from the leader's page: (topic, partition) -> values.
struct LeaderView {
  std::int64_t high_watermark = -1;
  std::map<NodeId, std::int64_t> follower_lag;
};
using PageViews = std::map<std::pair<std::string, std::uint32_t>, LeaderView>;

std::optional<PageViews> scrape(const std::string& address, std::int64_t timeout_ms) {
  if (address.empty()) return std::nullopt;
  Result<std::string> page = fetch_metrics_page(address, timeout_ms);
  if (!page.ok()) return std::nullopt;
  PageViews out;
  for (const MetricSample& s : parse_metrics_text(*page)) {
    const bool hw = s.name == "weft_replica_high_watermark";
    const bool lag = s.name == "weft_replica_follower_lag_records";
    if (!hw && !lag) continue;
    const std::string partition(s.label("partition"));
    const auto key = std::make_pair(std::string(s.label("topic")), static_cast<std::uint32_t>(std::strtoul(partition.c_str(), nullptr, 10)));
    if (hw) out[key].high_watermark = static_cast<std::int64_t>(s.value);
    else out[key].follower_lag[static_cast<NodeId>(std::strtol(std::string(s.label("follower")).c_str(), nullptr, 10))] = static_cast<std::int64_t>(s.value);
  }
  return out;
}

}  // namespace

int run_cluster_status(const ClusterCliOptions& o) {
  Result<std::unique_ptr<MetadataStore>> store = open_store(o);
  if (!store.ok()) return fail(store.error(), "opening the cluster's metadata");
  Result<ClusterSnapshot> cluster = read_cluster(**store, o.cluster);
  if (!cluster.ok()) return fail(cluster.error(), "reading cluster '" + o.cluster + "' from " + o.etcd);
  const ClusterSnapshot& c = *cluster;
  std::printf("cluster %s (etcd %s): %zu live nodes, controller %s\n\n", o.cluster.c_str(), o.etcd.c_str(), c.nodes.size(),
              c.controller >= 0 ? std::to_string(c.controller).c_str() : "none");
  std::printf("%-6s %-8s %-22s %-22s %-22s %s\n", "NODE", "RACK", "KAFKA", "REPLICATION", "METRICS", "STATE");
  std::map<NodeId, std::optional<PageViews>> pages;
  for (const auto& [id, n] : c.nodes) {
    std::printf("%-6d %-8s %-22s %-22s %-22s %s\n", id, n.rack.empty() ? "-" : n.rack.c_str(), n.kafka_address.empty() ? "-" : n.kafka_address.c_str(),
                n.replication_address.c_str(), n.metrics_address.empty() ? "-" : n.metrics_address.c_str(),
                n.draining ? "draining" : (id == c.controller ? "live, controller" : "live"));
  }
  std::printf("\n%-24s %-5s %-7s %-6s %-10s %-10s %-12s %s\n", "TOPIC", "PART", "LEADER", "EPOCH", "REPLICAS", "ISR", "HW", "FOLLOWER LAG (records)");
  std::size_t under = 0, offline = 0;
  for (const auto& [id, state] : c.partitions) {
    if (state.leader < 0) ++offline;
    else if (state.isr.size() < state.replicas.size()) ++under;
    std::string hw = "?";
    std::string lag = state.leader < 0 ? "offline" : "?";
    auto leader = c.nodes.find(state.leader);
    if (leader != c.nodes.end()) {
      auto page = pages.find(state.leader);
      if (page == pages.end()) page = pages.emplace(state.leader, scrape(leader->second.metrics_address, o.timeout_ms)).first;
      if (page->second) {
        if (auto view = page->second->find({id.topic, id.partition}); view != page->second->end()) {
          hw = std::to_string(view->second.high_watermark);
          lag.clear();
          for (const auto& [follower, records] : view->second.follower_lag)
            lag += (lag.empty() ? "" : " ") + std::to_string(follower) + ":" + std::to_string(records);
          if (lag.empty()) lag = "-";
        }
      } else if (leader->second.metrics_address.empty()) {
        lag = "? (leader has no metrics_listen)";
      } else {
        lag = "? (leader's metrics unreachable)";
      }
    }
    std::printf("%-24s %-5u %-7s %-6d %-10s %-10s %-12s %s\n", id.topic.c_str(), id.partition,
                state.leader >= 0 ? std::to_string(state.leader).c_str() : "none", state.leader_epoch, ids(state.replicas).c_str(),
                ids(state.isr).c_str(), hw.c_str(), lag.c_str());
  }
  for (const auto& [id, target] : c.reassignments)
    std::printf("reassigning %s to replicas %s\n", to_string(id).c_str(), ids(target).c_str());
  std::printf("\n%zu partitions in %zu topics: %zu under-replicated, %zu offline\n", c.partitions.size(), c.topics.size(), under, offline);
  return offline > 0 ? 6 : 0;
}

int run_cluster_topic_create(const ClusterCliOptions& o, const std::string& name, std::uint32_t partitions, std::uint32_t replication_factor,
                             const std::vector<std::pair<std::string, std::string>>& settings) {
  Result<void> valid = validate_topic_name(name);
  if (!valid.ok()) return fail(valid.error(), "creating topic '" + name + "'");
  TopicConfig config;
  std::string text;
  for (const auto& [key, value] : settings) {
    if (Result<void> set = set_topic_config(config, key, value); !set.ok()) return fail(set.error(), "creating topic '" + name + "'");
    if (key == "min.insync.replicas") continue;  // a field of the record's own (nodes from before it refuse it in the text)
    text += (text.empty() ? "" : ",") + key + "=" + value;
  }
  if (partitions == 0) partitions = 1;
  if (replication_factor == 0) replication_factor = 1;
  config.partitions = partitions;
  if (Result<void> checked = validate_topic_config(config); !checked.ok()) return fail(checked.error(), "creating topic '" + name + "'");
  Result<std::unique_ptr<MetadataStore>> store = open_store(o);
  if (!store.ok()) return fail(store.error(), "opening the cluster's metadata");
  Result<ClusterSnapshot> cluster = read_cluster(**store, o.cluster);
  if (!cluster.ok()) return fail(cluster.error(), "reading cluster '" + o.cluster + "'");
  if (cluster->nodes.size() < replication_factor)
    return fail(Error{Errc::kInvalidArgument, "replication factor " + std::to_string(replication_factor) + " needs that many live nodes; cluster '" +
                                                  o.cluster + "' has " + std::to_string(cluster->nodes.size())},
                "creating topic '" + name + "'");
  // Only the settings given travel: each replica's node fills the rest from its own defaults.
  Result<void> created =
      create_cluster_topic(**store, o.cluster, TopicRecord{name, partitions, replication_factor, text, {}, config.min_insync_replicas});
  if (!created.ok()) return fail(created.error(), "creating topic '" + name + "'");
  std::printf("created topic %s with %u partitions, %u replicas each (the controller assigns them)\n", name.c_str(), partitions, replication_factor);
  return 0;
}

int run_cluster_topic_delete(const ClusterCliOptions& o, const std::string& name) {
  Result<std::unique_ptr<MetadataStore>> store = open_store(o);
  if (!store.ok()) return fail(store.error(), "opening the cluster's metadata");
  if (Result<void> deleted = delete_cluster_topic(**store, o.cluster, name); !deleted.ok()) return fail(deleted.error(), "deleting topic '" + name + "'");
  std::printf("deleted topic %s (every replica's node drops its copy)\n", name.c_str());
  return 0;
}

int run_cluster_topic_list(const ClusterCliOptions& o) {
  Result<std::unique_ptr<MetadataStore>> store = open_store(o);
  if (!store.ok()) return fail(store.error(), "opening the cluster's metadata");
  Result<ClusterSnapshot> cluster = read_cluster(**store, o.cluster);
  if (!cluster.ok()) return fail(cluster.error(), "reading cluster '" + o.cluster + "'");
  for (const auto& [name, t] : cluster->topics) std::printf("%s\tpartitions=%u replication=%u\n", name.c_str(), t.partitions, t.replication_factor);
  return 0;
}

int run_partition_reassign(const ClusterCliOptions& o, const std::string& topic, std::uint32_t partition, const std::vector<NodeId>& replicas) {
  Result<std::unique_ptr<MetadataStore>> store = open_store(o);
  if (!store.ok()) return fail(store.error(), "opening the cluster's metadata");
  const PartitionId id{topic, partition};
  if (Result<void> asked = reassign_partition(**store, o.cluster, id, replicas); !asked.ok())
    return fail(asked.error(), "reassigning " + to_string(id));
  std::printf("reassigning %s to replicas %s: new replicas catch up, then the old ones leave (see weft cluster status)\n",
              to_string(id).c_str(), ids(replicas).c_str());
  return 0;
}

}  // namespace weft::cli
