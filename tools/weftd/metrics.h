// weftd's Prometheus metrics: what the node, its local server and its Kafka listener count,
// rendered in Prometheus' text exposition format 0.0.4, and the small HTTP/1.1 server that
// serves the page at /metrics (loopback by default: weftd's `metrics_listen`).
//
//   MetricsSources snapshot = collect_metrics(node, &local_server, kafka_listener, started_ns);
//   std::string page = render_metrics(snapshot);  // pure: tests feed it plain snapshots
//
// Every family is prefixed `weft_` and carries HELP and TYPE lines; label values are escaped as
// the format asks (backslash, double quote, newline) and invalid UTF-8 becomes U+FFFD, so a
// Kafka group id of any bytes cannot break a scrape. The Kafka listener's request latencies
// (power-of-two microsecond buckets) become one Prometheus histogram per API.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "weft/cluster_node.h"
#include "weft/fabric/group_coordinator.h"
#include "weft/fabric/local_server.h"
#include "weft/fabric/offset_store.h"
#include "weft/fabric/result.h"
#include "weft/kafka/listener.h"
#include "weft/node.h"

namespace weft::weftd {

// One consumer group's committed offsets (Node::fetch_offsets).
struct GroupOffsets {
  std::string group;
  std::vector<CommittedOffset> offsets;
};

// Plain copies of everything the page shows, taken at one scrape.
struct MetricsSources {
  std::uint32_t pid = 0;
  std::int64_t uptime_ms = 0;
  std::uint64_t ring_memory_bytes = 0;
  std::vector<TopicInfo> topics;
  std::optional<LocalServerStats> local;            // none: no local server
  std::optional<kafka::KafkaListenerStats> kafka;   // none: the Kafka listener is off
  std::vector<GroupListing> group_states;           // groups the Kafka listener's coordinator knows
  std::vector<GroupOffsets> group_offsets;          // groups with committed offsets, by group
  struct Cluster {
    NodeId node = -1;
    NodeId controller = -1;
    bool store_reachable = true;
    std::size_t live_nodes = 0;
    std::vector<ReplicaStatus> replicas;  // the partitions this node leads or follows
    ClusterNode::IsrChanges isr_changes;
  };
  std::optional<Cluster> cluster;                   // none: a single node
};

// Takes the snapshot: every topic's description, every group the listener knows or that has
// committed offsets in the node, and the servers' counters. Any thread; `local` and `kafka` may be
// null. `started_ns` is weftd's start on the monotonic clock (uptime).
MetricsSources collect_metrics(const Node& node, const LocalServer* local, const kafka::KafkaListener* kafka,
                               const ClusterNode* cluster, std::int64_t started_ns);

// The page, in the text exposition format 0.0.4. Consumer-group lag is the partition's end offset
// minus the committed offset, never below 0, for committed partitions of existing topics.
std::string render_metrics(const MetricsSources& sources);

// A label value as the format writes it between quotes (without the quotes).
std::string escape_label_value(std::string_view value);

// The first line and headers of an HTTP request, checked. `status` is 200 for a request this
// server answers with content (GET or HEAD of any path; the path decides 200 or 404 later), else
// 400 (malformed), 405 (another method) or 505 (not HTTP/1.x).
struct HttpRequestHead {
  int status = 400;
  bool head_only = false;  // HEAD: headers, no body
  std::string path;        // the target without its query string
};
HttpRequestHead parse_request_head(std::string_view head);

struct MetricsServerOptions {
  std::string host = "127.0.0.1";        // an IPv4 or IPv6 address, or localhost
  std::uint16_t port = 9644;             // 0: any free port (see port())
  std::size_t max_request_bytes = 8192;  // request line and headers; larger gets 431
  std::int64_t request_timeout_ms = 2'000;    // to receive the whole request head
  std::int64_t response_timeout_ms = 10'000;  // to send the whole page
};

// The HTTP/1.1 server: GET /metrics answers the page `render` builds, GET / a one-line hint,
// anything else 404; every response closes its connection. A request that is malformed,
// oversized or too slow is answered with an error and closed; nothing a client sends can stop the
// server.
//
// Threads: start() binds and starts one thread, which serves up to 32 connections at once, each
// on its own timeouts, so a client that stalls (or never reads its response) holds only its own
// connection; past 32, new ones wait in the listen backlog. `render` runs on that thread and must
// not throw across it (an exception is answered with 500). stop() returns within about 100 ms
// plus a render in progress; the destructor calls it.
class MetricsServer {
 public:
  using Render = std::function<std::string()>;
  // kInvalidArgument for a host that is no address; kIo when the address cannot be bound (in use: says so).
  static Result<std::unique_ptr<MetricsServer>> start(MetricsServerOptions options, Render render);
  ~MetricsServer();
  MetricsServer(const MetricsServer&) = delete;
  MetricsServer& operator=(const MetricsServer&) = delete;

  // Stops accepting, finishes or drops the connection in progress and joins the thread. Idempotent.
  void stop();
  std::uint16_t port() const noexcept;
  std::string listen_address() const;  // HOST:PORT as bound (an IPv6 host in brackets)

  struct Impl;

 private:
  explicit MetricsServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// weftd's metrics: starts a MetricsServer on host:port over collect_metrics() of these parts and
// logs `msg="metrics ready" listen=HOST:PORT`. The parts must outlive the server (stop it first).
Result<std::unique_ptr<MetricsServer>> start_node_metrics(const std::string& host, std::uint16_t port, const Node& node,
                                                          const LocalServer* local, const kafka::KafkaListener* kafka,
                                                          const ClusterNode* cluster, std::int64_t started_ns);

}  // namespace weft::weftd
