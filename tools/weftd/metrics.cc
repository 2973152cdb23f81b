#include "metrics.h"

#include "weft/fabric/socket_address.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <exception>
#include <map>
#include <set>
#include <thread>
#include <tuple>
#include <utility>
#include <vector>

#include "weft/fabric/log.h"
#include "weft/fabric/ring.h"
#include "weft/fabric/shared_memory.h"
#include "weft/fabric/thread_name.h"
#include "weft/kafka/wire.h"

namespace weft::weftd {
namespace {

// ---- the page ---------------------------------------------------------------------------------

using Label = std::pair<std::string_view, std::string_view>;

// The length of the well-formed UTF-8 sequence at `i` (RFC 3629: no overlongs, no surrogates,
// nothing above U+10FFFF), or 0.
std::size_t utf8_sequence(std::string_view s, std::size_t i) {
  const auto byte = [&](std::size_t k) { return static_cast<unsigned char>(s[k]); };
  const unsigned char c = byte(i);
  std::size_t n = 0;
  unsigned char lo = 0x80, hi = 0xBF;  // the second byte's range
  if (c >= 0xC2 && c <= 0xDF) n = 2;
  else if (c == 0xE0) n = 3, lo = 0xA0;
  else if (c >= 0xE1 && c <= 0xEF) n = 3, hi = c == 0xED ? 0x9F : 0xBF;
  else if (c == 0xF0) n = 4, lo = 0x90;
  else if (c >= 0xF1 && c <= 0xF3) n = 4;
  else if (c == 0xF4) n = 4, hi = 0x8F;
  else return 0;
  if (i + n > s.size() || byte(i + 1) < lo || byte(i + 1) > hi) return 0;
  for (std::size_t k = 2; k < n; ++k)
    if (byte(i + k) < 0x80 || byte(i + k) > 0xBF) return 0;
  return n;
}

// Seconds from whole microseconds, exactly: "0.000512", "4.194304", "0".
std::string seconds_from_micros(std::uint64_t micros) {
  std::string out = std::to_string(micros / 1'000'000);
  std::uint64_t fraction = micros % 1'000'000;
  if (fraction == 0) return out;
  char digits[8];
  std::snprintf(digits, sizeof digits, "%06llu", static_cast<unsigned long long>(fraction));
  std::string_view f(digits, 6);
  while (f.back() == '0') f.remove_suffix(1);
  out += '.';
  out += f;
  return out;
}

class Page {
 public:
  // A family's HELP and TYPE lines; its samples must follow before the next family.
  void family(std::string_view name, std::string_view type, std::string_view help) {
    out_ += "# HELP ";
    out_ += name;
    out_ += ' ';
    for (const char c : help) {
      if (c == '\\') out_ += "\\\\";
      else if (c == '\n') out_ += "\\n";
      else out_ += c;
    }
    out_ += "\n# TYPE ";
    out_ += name;
    out_ += ' ';
    out_ += type;
    out_ += '\n';
  }
  void sample(std::string_view name, std::initializer_list<Label> labels, std::string_view value) {
    out_ += name;
    if (labels.size() > 0) {
      out_ += '{';
      bool first = true;
      for (const auto& [key, v] : labels) {
        if (!first) out_ += ',';
        first = false;
        out_ += key;
        out_ += "=\"";
        out_ += escape_label_value(v);
        out_ += '"';
      }
      out_ += '}';
    }
    out_ += ' ';
    out_ += value;
    out_ += '\n';
  }
  std::string take() { return std::move(out_); }

 private:
  std::string out_;
};

std::string num(std::uint64_t v) { return std::to_string(v); }
std::string num(std::int64_t v) { return std::to_string(v); }

// A per-partition family: how to read its value (nothing: this partition has no such series).
struct PartitionFamily {
  std::string_view name;
  std::string_view type;
  std::string_view help;
  std::optional<std::string> (*value)(const PartitionStats&);
};

bool has_log(const PartitionStats& p) { return p.log_end_offset.value >= 0; }

constexpr PartitionFamily kPartitionFamilies[] = {
    {"weft_partition_start_offset", "gauge", "The earliest offset the partition's ring still holds.",
     [](const PartitionStats& p) -> std::optional<std::string> { return num(p.start_offset.value); }},
    {"weft_partition_end_offset", "gauge", "The next offset producers will be given (Kafka's log end offset).",
     [](const PartitionStats& p) -> std::optional<std::string> { return num(p.end_offset.value); }},
    {"weft_partition_records_total", "counter", "Records published to the partition's ring on this node since it was made (at the node's start, or anew after a replica's truncation).",
     [](const PartitionStats& p) -> std::optional<std::string> { return num(p.records); }},
    {"weft_partition_bytes_total", "counter", "Ring bytes those records took, frame headers and padding included.",
     [](const PartitionStats& p) -> std::optional<std::string> { return num(p.bytes); }},
    {"weft_partition_producers", "gauge", "Producers attached to the partition's ring.",
     [](const PartitionStats& p) -> std::optional<std::string> { return num(std::uint64_t{p.producers}); }},
    {"weft_partition_consumers", "gauge", "Consumers attached to the partition's ring.",
     [](const PartitionStats& p) -> std::optional<std::string> { return num(std::uint64_t{p.consumers}); }},
    {"weft_partition_lapped_consumers", "gauge", "Attached consumers that producers lapped at least once.",
     [](const PartitionStats& p) -> std::optional<std::string> { return num(std::uint64_t{p.lapped_consumers}); }},
    {"weft_partition_back_pressure_events_total", "counter",
     "Claims refused for lack of ring space, summed over the attached producers (it drops when one detaches).",
     [](const PartitionStats& p) -> std::optional<std::string> { return num(p.back_pressure_events); }},
    {"weft_partition_sealed_claims_total", "counter", "Claims of dead producers sealed as aborted ranges.",
     [](const PartitionStats& p) -> std::optional<std::string> { return num(p.sealed_claims); }},
    {"weft_partition_log_start_offset", "gauge", "The earliest offset the partition's log holds (partitions with a log).",
     [](const PartitionStats& p) -> std::optional<std::string> {
       if (!has_log(p)) return std::nullopt;
       return num(p.log_start_offset.value);
     }},
    {"weft_partition_log_end_offset", "gauge", "The next offset the partition's log will hold (partitions with a log).",
     [](const PartitionStats& p) -> std::optional<std::string> {
       if (!has_log(p)) return std::nullopt;
       return num(p.log_end_offset.value);
     }},
    {"weft_partition_log_bytes", "gauge", "Bytes of the partition's log on disk (partitions with a log).",
     [](const PartitionStats& p) -> std::optional<std::string> {
       if (!has_log(p)) return std::nullopt;
       return num(p.log_bytes);
     }},
    {"weft_partition_log_error", "gauge",
     "1 while the partition's log takes no batches (a full disk, a failed sync, offline since start): weft topic describe says why.",
     [](const PartitionStats& p) -> std::optional<std::string> {
       if (!has_log(p) && p.log_error.empty()) return std::nullopt;
       return std::string(p.log_error.empty() ? "0" : "1");
     }},
};

void render_node(Page& page, const MetricsSources& s) {
  page.family("weft_node_info", "gauge", "The weftd process serving this page (weft status checks the pid against its node's).");
  const std::string pid = std::to_string(s.pid);
  page.sample("weft_node_info", {{"pid", pid}}, "1");
  page.family("weft_uptime_seconds", "gauge", "Seconds since weftd started.");
  page.sample("weft_uptime_seconds", {}, seconds_from_micros(static_cast<std::uint64_t>(std::max<std::int64_t>(s.uptime_ms, 0)) * 1000));
  page.family("weft_topics", "gauge", "Topics on the node.");
  page.sample("weft_topics", {}, num(std::uint64_t{s.topics.size()}));
  std::uint64_t partitions = 0;
  for (const TopicInfo& t : s.topics) partitions += t.partitions.size();
  page.family("weft_partitions", "gauge", "Partitions of all topics on the node.");
  page.sample("weft_partitions", {}, num(partitions));
  page.family("weft_ring_memory_bytes", "gauge", "Ring memory all topics take (counted against ring_memory_budget).");
  page.sample("weft_ring_memory_bytes", {}, num(s.ring_memory_bytes));
  if (!s.local) return;
  const LocalServerStats& l = *s.local;
  page.family("weft_local_clients", "gauge", "Local clients connected over the Unix socket now.");
  page.sample("weft_local_clients", {}, num(std::uint64_t{l.connections}));
  page.family("weft_local_clients_accepted_total", "counter", "Local clients admitted.");
  page.sample("weft_local_clients_accepted_total", {}, num(l.accepted));
  page.family("weft_local_clients_refused_total", "counter", "Local clients refused (credentials not allowed, or too many).");
  page.sample("weft_local_clients_refused_total", {}, num(l.refused));
  page.family("weft_local_requests_total", "counter", "Requests local clients sent over the Unix socket.");
  page.sample("weft_local_requests_total", {}, num(l.requests));
  page.family("weft_local_bad_requests_total", "counter", "Malformed, oversized or unknown local requests (each closed its connection).");
  page.sample("weft_local_bad_requests_total", {}, num(l.bad_requests));
  page.family("weft_local_descriptors_withheld_total", "counter",
              "Rings or log files not sent to a local client that had not read its earlier responses.");
  page.sample("weft_local_descriptors_withheld_total", {}, num(l.withheld_descriptors));
}

void render_partitions(Page& page, const MetricsSources& s) {
  for (const PartitionFamily& f : kPartitionFamilies) {
    page.family(f.name, f.type, f.help);
    for (const TopicInfo& t : s.topics)
      for (const PartitionStats& p : t.partitions)
        if (std::optional<std::string> v = f.value(p)) page.sample(f.name, {{"topic", t.name}, {"partition", std::to_string(p.partition)}}, *v);
  }
}

void render_kafka(Page& page, const kafka::KafkaListenerStats& k) {
  // Every API the listener serves has its counters from the start (a counter that appears at its
  // first increment loses that increment to rate()); its 26-line histogram appears with its first
  // request (most clients use a handful of the APIs). Other keys are summed as "Unknown".
  std::vector<std::pair<std::string_view, kafka::KafkaApiStats>> apis;
  for (const kafka::ApiSupport& api : kafka::supported_apis()) {
    const auto key = static_cast<std::size_t>(api.key);
    apis.emplace_back(api.name, key < k.apis.size() ? k.apis[key] : kafka::KafkaApiStats{});
  }
  kafka::KafkaApiStats unknown;
  for (std::size_t key = 0; key < k.apis.size(); ++key) {
    if (kafka::find_api(static_cast<std::int16_t>(key)) != nullptr) continue;
    const kafka::KafkaApiStats& a = k.apis[key];
    unknown.requests += a.requests;
    unknown.errors += a.errors;
    unknown.latency_us_sum += a.latency_us_sum;
    for (std::size_t i = 0; i < a.latency_us_log2.size(); ++i) unknown.latency_us_log2[i] += a.latency_us_log2[i];
  }
  if (unknown.requests > 0) apis.emplace_back("Unknown", unknown);

  page.family("weft_kafka_requests_total", "counter", "Kafka requests answered, by API.");
  for (const auto& [name, a] : apis) page.sample("weft_kafka_requests_total", {{"api", name}}, num(a.requests));
  page.family("weft_kafka_request_errors_total", "counter", "Kafka responses that carried an error code (in any partition or entry), by API.");
  for (const auto& [name, a] : apis) page.sample("weft_kafka_request_errors_total", {{"api", name}}, num(a.errors));
  // The listener's bucket i counts latencies below 2^i us, measured in whole microseconds; the
  // last bucket counts everything above, so it is only in +Inf.
  page.family("weft_kafka_request_latency_seconds", "histogram", "Time from a Kafka request's arrival to its response being queued, by API.");
  constexpr std::size_t kBuckets = std::tuple_size_v<decltype(kafka::KafkaApiStats::latency_us_log2)>;
  for (const auto& [name, a] : apis) {
    if (a.requests == 0) continue;
    std::uint64_t cumulative = 0;
    for (std::size_t i = 0; i + 1 < kBuckets; ++i) {
      cumulative += a.latency_us_log2[i];
      page.sample("weft_kafka_request_latency_seconds_bucket", {{"api", name}, {"le", seconds_from_micros(std::uint64_t{1} << i)}}, num(cumulative));
    }
    cumulative += a.latency_us_log2[kBuckets - 1];
    page.sample("weft_kafka_request_latency_seconds_bucket", {{"api", name}, {"le", "+Inf"}}, num(cumulative));
    page.sample("weft_kafka_request_latency_seconds_sum", {{"api", name}}, seconds_from_micros(a.latency_us_sum));
    page.sample("weft_kafka_request_latency_seconds_count", {{"api", name}}, num(cumulative));
  }

  const std::pair<std::string_view, std::string_view> families[] = {
      {"weft_kafka_connections_accepted_total", "Kafka connections accepted."},
      {"weft_kafka_connections_refused_total", "Kafka connections refused (over kafka_max_connections)."},
      {"weft_kafka_connections_closed_bad_request_total", "Kafka connections closed for a malformed, oversized or unsupported request."},
      {"weft_kafka_connections_closed_idle_total", "Kafka connections closed after kafka_idle_timeout_ms without a request."},
      {"weft_kafka_request_memory_waits_total", "Times a Kafka request over 1 MiB found kafka_max_buffered_request_bytes short and waited."},
      {"weft_kafka_fetch_disk_waits_total", "Fetch responses whose segment region was read ahead before sending (not in the page cache)."},
      {"weft_kafka_bytes_in_total", "Bytes received from Kafka clients."},
      {"weft_kafka_bytes_out_total", "Bytes sent to Kafka clients."},
      {"weft_kafka_records_in_total", "Records Kafka clients produced."},
      {"weft_kafka_producer_ids_evicted_total", "Idempotent producers' states dropped past kafka_max_producer_ids (least recently used first)."},
  };
  const std::uint64_t values[] = {k.connections_accepted, k.connections_refused, k.connections_closed_bad_request,
                                  k.connections_closed_idle, k.request_memory_waits, k.fetch_disk_waits, k.bytes_in, k.bytes_out, k.records_in, k.producer_ids_evicted};
  page.family("weft_kafka_connections", "gauge", "Kafka connections open now.");
  page.sample("weft_kafka_connections", {}, num(k.connections_open));
  page.family("weft_kafka_producer_ids", "gauge", "Idempotent producers' states the Kafka listener holds (one per producer id and partition).");
  page.sample("weft_kafka_producer_ids", {}, num(k.producer_ids));
  for (std::size_t i = 0; i < std::size(families); ++i) {
    page.family(families[i].first, "counter", families[i].second);
    page.sample(families[i].first, {}, num(values[i]));
  }
}

void render_groups(Page& page, const MetricsSources& s) {
  page.family("weft_consumer_group_state", "gauge", "1 for each consumer group the Kafka coordinator knows, labelled with its state.");
  for (const GroupListing& g : s.group_states) page.sample("weft_consumer_group_state", {{"group", g.group_id}, {"state", g.state}}, "1");

  std::map<std::pair<std::string_view, std::uint32_t>, std::int64_t> end_offsets;
  for (const TopicInfo& t : s.topics)
    for (const PartitionStats& p : t.partitions) end_offsets[{t.name, p.partition}] = p.end_offset.value;
  page.family("weft_consumer_group_committed_offset", "gauge", "The next offset the group will read, as it committed it.");
  for (const GroupOffsets& g : s.group_offsets)
    for (const CommittedOffset& o : g.offsets)
      page.sample("weft_consumer_group_committed_offset", {{"group", g.group}, {"topic", o.topic}, {"partition", std::to_string(o.partition)}},
                  num(o.offset.value));
  page.family("weft_consumer_group_lag", "gauge", "Records the group has yet to read: the partition's end offset minus the committed offset, at least 0.");
  for (const GroupOffsets& g : s.group_offsets)
    for (const CommittedOffset& o : g.offsets) {
      auto end = end_offsets.find({o.topic, o.partition});
      if (end == end_offsets.end()) continue;  // the topic went after the commit was read
      page.sample("weft_consumer_group_lag", {{"group", g.group}, {"topic", o.topic}, {"partition", std::to_string(o.partition)}},
                  num(std::max<std::int64_t>(end->second - o.offset.value, 0)));
    }
}

void render_cluster(Page& page, const MetricsSources::Cluster& c) {
  page.family("weft_cluster_node", "gauge", "This node's id in its cluster.");
  page.sample("weft_cluster_node", {}, std::to_string(c.node));
  page.family("weft_cluster_controller", "gauge", "The controller's node id as this node last saw it (-1: none).");
  page.sample("weft_cluster_controller", {}, std::to_string(c.controller));
  page.family("weft_cluster_live_nodes", "gauge", "Nodes registered in the metadata store.");
  page.sample("weft_cluster_live_nodes", {}, num(static_cast<std::uint64_t>(c.live_nodes)));
  page.family("weft_cluster_store_reachable", "gauge", "1 while the metadata store (etcd) answers; 0: metadata frozen, data path running.");
  page.sample("weft_cluster_store_reachable", {}, c.store_reachable ? "1" : "0");
  page.family("weft_cluster_isr_shrinks_total", "counter", "In-sync set shrinks this node committed as a leader.");
  page.sample("weft_cluster_isr_shrinks_total", {}, num(c.isr_changes.shrinks));
  page.family("weft_cluster_isr_expands_total", "counter", "In-sync set expansions this node committed as a leader.");
  page.sample("weft_cluster_isr_expands_total", {}, num(c.isr_changes.expands));

  auto each = [&](const char* name, const char* help, auto value) {
    page.family(name, "gauge", help);
    for (const ReplicaStatus& r : c.replicas)
      page.sample(name, {{"topic", r.partition.topic}, {"partition", std::to_string(r.partition.partition)}}, value(r));
  };
  each("weft_replica_leader", "1 where this node leads the partition, 0 where it follows.", [](const ReplicaStatus& r) { return std::string(r.leader ? "1" : "0"); });
  each("weft_replica_leader_epoch", "The partition's leader epoch as this replica knows it.", [](const ReplicaStatus& r) { return std::to_string(r.leader_epoch); });
  each("weft_replica_log_end_offset", "This replica's log end.", [](const ReplicaStatus& r) { return std::to_string(r.log_end.value); });
  each("weft_replica_high_watermark", "The partition's high watermark as this replica knows it: what consumers may read.",
       [](const ReplicaStatus& r) { return std::to_string(r.high_watermark.value); });
  page.family("weft_replica_in_sync_replicas", "gauge", "Size of the partition's in-sync set (leaders only).");
  for (const ReplicaStatus& r : c.replicas)
    if (r.leader)
      page.sample("weft_replica_in_sync_replicas", {{"topic", r.partition.topic}, {"partition", std::to_string(r.partition.partition)}},
                  num(static_cast<std::uint64_t>(r.isr.size())));
  auto followers = [&](const char* name, const char* help, auto value) {
    page.family(name, "gauge", help);
    for (const ReplicaStatus& r : c.replicas)
      for (const ReplicaStatus::Follower& f : r.followers)
        page.sample(name, {{"topic", r.partition.topic}, {"partition", std::to_string(r.partition.partition)}, {"follower", std::to_string(f.id)}},
                    value(r, f));
  };
  followers("weft_replica_follower_lag_records", "Records a follower lacks: the leader's log end minus the follower's (leaders only).",
            [](const ReplicaStatus& r, const ReplicaStatus::Follower& f) { return std::to_string(std::max<std::int64_t>(r.log_end.value - f.log_end.value, 0)); });
  followers("weft_replica_follower_lag_seconds", "Seconds since a follower last held the leader's whole log (leaders only).",
            [](const ReplicaStatus&, const ReplicaStatus::Follower& f) { return seconds_from_micros(static_cast<std::uint64_t>(std::max<std::int64_t>(f.lag_ms, 0)) * 1000); });
  followers("weft_replica_follower_connected", "1 while a follower's link to the leader is up (leaders only).",
            [](const ReplicaStatus&, const ReplicaStatus::Follower& f) { return std::string(f.connected ? "1" : "0"); });
}

// ---- HTTP -------------------------------------------------------------------------------------

constexpr int kPollSliceMs = 100;  // how promptly the thread sees stop()
constexpr std::string_view kMetricsContentType = "text/plain; version=0.0.4; charset=utf-8";

bool is_tchar(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
         std::string_view("!#$%&'*+-.^_`|~").find(c) != std::string_view::npos;
}

std::string_view reason_phrase(int status) {
  switch (status) {
    case 200: return "OK";
    case 400: return "Bad Request";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 505: return "HTTP Version Not Supported";
    default: return "Error";
  }
}

std::int64_t now_ms() { return monotonic_ns() / 1'000'000; }

}  // namespace

std::string escape_label_value(std::string_view value) {
  std::string out;
  out.reserve(value.size());
  for (std::size_t i = 0; i < value.size();) {
    const char c = value[i];
    if (static_cast<unsigned char>(c) < 0x80) {
      if (c == '\\') out += "\\\\";
      else if (c == '"') out += "\\\"";
      else if (c == '\n') out += "\\n";
      else out += c;
      ++i;
    } else if (const std::size_t n = utf8_sequence(value, i); n > 0) {
      out.append(value.substr(i, n));
      i += n;
    } else {
      out += "\xEF\xBF\xBD";  // U+FFFD: the format is UTF-8, and one bad byte would fail the whole scrape
      ++i;
    }
  }
  return out;
}

std::string render_metrics(const MetricsSources& sources) {
  Page page;
  render_node(page, sources);
  render_partitions(page, sources);
  if (sources.kafka) render_kafka(page, *sources.kafka);
  render_groups(page, sources);
  if (sources.cluster) render_cluster(page, *sources.cluster);
  return page.take();
}

MetricsSources collect_metrics(const Node& node, const LocalServer* local, const kafka::KafkaListener* kafka,
                               const ClusterNode* cluster, std::int64_t started_ns) {
  MetricsSources s;
  s.pid = static_cast<std::uint32_t>(getpid());
  s.uptime_ms = (monotonic_ns() - started_ns) / 1'000'000;
  s.ring_memory_bytes = node.ring_memory_bytes();
  for (const std::string& name : node.list_topics())
    if (Result<TopicInfo> info = node.describe_topic(name); info.ok()) s.topics.push_back(std::move(*info));  // else deleted meanwhile
  if (local != nullptr) s.local = local->stats();
  std::vector<std::string> listed = node.list_groups();
  std::set<std::string> groups(listed.begin(), listed.end());
  if (kafka != nullptr) {
    s.kafka = kafka->stats();
    s.group_states = kafka->groups();
    std::sort(s.group_states.begin(), s.group_states.end(),
              [](const GroupListing& a, const GroupListing& b) { return a.group_id < b.group_id; });
    for (const GroupListing& g : s.group_states) groups.insert(g.group_id);
  }
  // One read of a cluster's store for every group (a Kafka group id the offset store cannot hold
  // has none); when the store cannot be read, this scrape shows no group's offsets.
  const std::vector<std::string> group_list(groups.begin(), groups.end());
  if (Result<std::vector<std::vector<CommittedOffset>>> offsets = node.fetch_offsets_of(group_list); offsets.ok())
    for (std::size_t i = 0; i < group_list.size(); ++i)
      if (!(*offsets)[i].empty()) s.group_offsets.push_back({group_list[i], std::move((*offsets)[i])});
  if (kafka != nullptr && cluster == nullptr) {
    // The coordinator forgets a group once it empties; with offsets it is Empty, as Kafka says.
    std::set<std::string_view> stated;
    for (const GroupListing& g : s.group_states) stated.insert(g.group_id);
    std::vector<GroupListing> emptied;
    for (const auto& g : s.group_offsets)
      if (!stated.contains(g.group)) emptied.push_back(GroupListing{g.group, "", "Empty"});
    s.group_states.insert(s.group_states.end(), emptied.begin(), emptied.end());
    std::sort(s.group_states.begin(), s.group_states.end(),
              [](const GroupListing& a, const GroupListing& b) { return a.group_id < b.group_id; });
  }
  if (cluster != nullptr) {
    MetricsSources::Cluster c;
    c.node = cluster->id();
    c.controller = cluster->controller();
    c.store_reachable = cluster->store_reachable();
    c.live_nodes = cluster->nodes().size();
    c.replicas = cluster->replicas();
    c.isr_changes = cluster->isr_changes();
    s.cluster = std::move(c);
  }
  return s;
}

HttpRequestHead parse_request_head(std::string_view head) {
  HttpRequestHead out;
  std::size_t line_end = head.find('\n');
  std::string_view line = head.substr(0, line_end);
  if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
  // METHOD SP TARGET SP VERSION, single spaces (RFC 9112 3).
  const std::size_t sp1 = line.find(' ');
  const std::size_t sp2 = sp1 == std::string_view::npos ? sp1 : line.find(' ', sp1 + 1);
  if (sp2 == std::string_view::npos || line.find(' ', sp2 + 1) != std::string_view::npos) return out;
  const std::string_view method = line.substr(0, sp1);
  std::string_view target = line.substr(sp1 + 1, sp2 - sp1 - 1);
  const std::string_view version = line.substr(sp2 + 1);
  if (method.empty() || !std::all_of(method.begin(), method.end(), is_tchar)) return out;
  if (target.empty() || std::any_of(target.begin(), target.end(), [](char c) {
        return static_cast<unsigned char>(c) <= 0x20 || static_cast<unsigned char>(c) >= 0x7f;
      }))
    return out;
  const bool http_version = version.size() == 8 && version.substr(0, 5) == "HTTP/" && version[6] == '.' &&
                            version[5] >= '0' && version[5] <= '9' && version[7] >= '0' && version[7] <= '9';
  if (!http_version) return out;
  // Headers: `name: value` lines; their values do not matter here, their shape does.
  while (line_end != std::string_view::npos && line_end + 1 < head.size()) {
    const std::size_t start = line_end + 1;
    line_end = head.find('\n', start);
    std::string_view header = head.substr(start, line_end == std::string_view::npos ? std::string_view::npos : line_end - start);
    if (!header.empty() && header.back() == '\r') header.remove_suffix(1);
    if (header.empty()) break;  // the blank line that ends the head
    const std::size_t colon = header.find(':');
    if (colon == 0 || colon == std::string_view::npos) return out;
    const std::string_view name = header.substr(0, colon);
    if (!std::all_of(name.begin(), name.end(), is_tchar)) return out;  // also obsolete line folding
    if (std::any_of(header.begin() + static_cast<std::ptrdiff_t>(colon), header.end(), [](char c) {
          return (static_cast<unsigned char>(c) < 0x20 && c != '\t') || c == 0x7f;
        }))
      return out;
  }
  if (target.front() != '/') {
    // Absolute form (a proxy's): http://host[:port]/path.
    const std::size_t scheme = target.find("://");
    if (scheme == std::string_view::npos) return out;
    const std::size_t slash = target.find('/', scheme + 3);
    target = slash == std::string_view::npos ? std::string_view("/") : target.substr(slash);
  }
  out.path = std::string(target.substr(0, target.find_first_of("?#")));
  if (version[5] != '1') {
    out.status = 505;
    return out;
  }
  if (method == "GET" || method == "HEAD") {
    out.status = 200;
    out.head_only = method == "HEAD";
  } else {
    out.status = 405;
  }
  return out;
}

// At most this many connections at once: a client that stalls holds its own connection until
// its timeout, never another's; past the cap, new ones wait in the listen backlog.
constexpr std::size_t kMaxConnections = 32;
constexpr std::int64_t kLingerMs = 200;  // reading what a client still sends after its response

struct MetricsServer::Impl {
  // One client's exchange: its request head read, then the response sent, then what it still
  // sends read and dropped until it closes (a close with unread bytes would reset the connection
  // and could lose the response on its way).
  struct Connection {
    enum class Phase { kReading, kWriting, kLingering };
    UniqueFd fd;
    Phase phase = Phase::kReading;
    std::string request;
    std::string response;
    std::size_t sent = 0;
    std::int64_t deadline_ms = 0;  // of the phase under way
  };

  MetricsServerOptions options;
  Render render;
  UniqueFd listen_fd;
  std::uint16_t port = 0;
  std::atomic<bool> stopping{false};
  std::thread thread;
  std::vector<Connection> connections;

  void run();
  void accept_all();
  // Moves `c` on as far as it can without waiting; false once it is done (to be closed).
  bool advance(Connection& c);
  bool read_request(Connection& c);
  void answer(Connection& c, const std::string& head);
  void respond(Connection& c, int status, std::string_view content_type, const std::string& body, bool head_only,
               std::string_view extra_headers = {});
  bool write_response(Connection& c);
  bool linger(Connection& c);
  bool stop_requested() const noexcept {
    return stopping.load(std::memory_order_relaxed);  // a flag looked at every slice; join() orders the rest
  }
};

void MetricsServer::Impl::run() {
  // Reserved once: the loop's own bookkeeping never allocates (an allocation failure there would
  // end the process; a connection's is caught below).
  std::vector<pollfd> polled;
  polled.reserve(kMaxConnections + 1);
  connections.reserve(kMaxConnections);
  while (!stop_requested()) {
    const std::int64_t now = now_ms();
    polled.clear();
    const bool room = connections.size() < kMaxConnections;
    polled.push_back(pollfd{room ? listen_fd.get() : -1, POLLIN, 0});  // a negative fd is skipped
    std::int64_t wait_ms = kPollSliceMs;
    for (const Connection& c : connections) {
      polled.push_back(pollfd{c.fd.get(), static_cast<short>(c.phase == Connection::Phase::kWriting ? POLLOUT : POLLIN), 0});
      wait_ms = std::min(wait_ms, std::max<std::int64_t>(c.deadline_ms - now, 0));
    }
    if (::poll(polled.data(), polled.size(), static_cast<int>(wait_ms)) < 0 && errno != EINTR) {
      log(LogLevel::kWarn, "metrics: poll failed", {{"error", std::strerror(errno)}});
      std::this_thread::sleep_for(std::chrono::milliseconds(kPollSliceMs));
      continue;
    }
    // Every connection is moved on (a deadline passes whether or not its socket is ready), then
    // those done are closed, then new ones taken.
    std::size_t kept = 0;
    for (std::size_t i = 0; i < connections.size(); ++i) {
      if (stop_requested()) break;  // at most one render in progress holds stop()
      bool open = false;
      try {
        open = advance(connections[i]);
      } catch (const std::exception& e) {
        // Only allocation can throw here; the connection is dropped, the server carries on.
        log(LogLevel::kWarn, "metrics: request dropped", {{"error", e.what()}});
      }
      if (open) {
        if (kept != i) connections[kept] = std::move(connections[i]);
        ++kept;
      }
    }
    connections.resize(kept);
    if (room && (polled[0].revents & POLLIN) != 0) accept_all();
  }
  connections.clear();
}

void MetricsServer::Impl::accept_all() {
  while (connections.size() < kMaxConnections) {
    const int fd = ::accept4(listen_fd.get(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
        // Out of descriptors: the connection waits in the backlog; try again a slice later, not in a spin.
        log(LogLevel::kWarn, "metrics: accept failed", {{"error", std::strerror(errno)}});
        std::this_thread::sleep_for(std::chrono::milliseconds(kPollSliceMs));
      }
      return;  // EAGAIN (none left, or the client went), ECONNABORTED, EINTR
    }
    Connection c;
    c.fd = UniqueFd(fd);
    c.deadline_ms = now_ms() + options.request_timeout_ms;
    connections.push_back(std::move(c));
  }
}

bool MetricsServer::Impl::advance(Connection& c) {
  switch (c.phase) {
    case Connection::Phase::kReading: return read_request(c);
    case Connection::Phase::kWriting: return write_response(c);
    case Connection::Phase::kLingering: return linger(c);
  }
  return false;
}

bool MetricsServer::Impl::read_request(Connection& c) {
  char buffer[4096];
  for (;;) {
    // Never more than one byte past the limit, so a head that ends beyond it is told apart.
    const std::size_t room = options.max_request_bytes + 1 - std::min(c.request.size(), options.max_request_bytes);
    const ssize_t got = ::recv(c.fd.get(), buffer, std::min(sizeof buffer, room), 0);
    if (got < 0) {
      if (errno == EINTR) continue;
      if (errno != EAGAIN && errno != EWOULDBLOCK) return false;  // reset by the client
      if (now_ms() < c.deadline_ms) return true;
      respond(c, 408, "text/plain", "request not received in time\n", false);
      return write_response(c);
    }
    if (got == 0) {
      if (c.request.empty()) return false;  // connected and went (a port check)
      respond(c, 400, "text/plain", "incomplete request\n", false);
      return write_response(c);
    }
    const std::size_t searched_from = c.request.size() >= 3 ? c.request.size() - 3 : 0;
    c.request.append(buffer, static_cast<std::size_t>(got));
    // The head ends at the first empty line: CRLF CRLF, or bare LFs, which RFC 9112 lets a server accept.
    const std::size_t crlf = c.request.find("\r\n\r\n", searched_from);
    const std::size_t lf = c.request.find("\n\n", searched_from);
    const std::size_t head_end = std::min(crlf == std::string::npos ? crlf : crlf + 4, lf == std::string::npos ? lf : lf + 2);
    if ((head_end == std::string::npos && c.request.size() > options.max_request_bytes) ||
        (head_end != std::string::npos && head_end > options.max_request_bytes)) {
      respond(c, 431, "text/plain", "request head over " + std::to_string(options.max_request_bytes) + " bytes\n", false);
      return write_response(c);
    }
    if (head_end != std::string::npos) {
      answer(c, c.request.substr(0, head_end));
      return write_response(c);
    }
  }
}

void MetricsServer::Impl::answer(Connection& c, const std::string& request_head) {
  const HttpRequestHead head = parse_request_head(request_head);
  if (head.status == 405) return respond(c, 405, "text/plain", "only GET and HEAD\n", false, "Allow: GET, HEAD\r\n");
  if (head.status != 200) return respond(c, head.status, "text/plain", std::string(reason_phrase(head.status)) + "\n", false);
  if (head.path == "/") return respond(c, 200, "text/plain", "weftd: Prometheus metrics at /metrics\n", head.head_only);
  if (head.path != "/metrics") return respond(c, 404, "text/plain", "not found; weftd serves /metrics\n", head.head_only);
  std::string page;
  try {
    page = render();
  } catch (const std::exception& e) {
    log(LogLevel::kWarn, "metrics: the page could not be built", {{"error", e.what()}});
    return respond(c, 500, "text/plain", "the page could not be built\n", head.head_only);
  }
  respond(c, 200, kMetricsContentType, page, head.head_only);
}

void MetricsServer::Impl::respond(Connection& c, int status, std::string_view content_type, const std::string& body, bool head_only,
                                  std::string_view extra_headers) {
  c.response = "HTTP/1.1 " + std::to_string(status) + " " + std::string(reason_phrase(status)) + "\r\nContent-Type: ";
  c.response += content_type;
  c.response += "\r\nContent-Length: " + std::to_string(body.size()) + "\r\nConnection: close\r\n";
  c.response += extra_headers;
  c.response += "\r\n";
  if (!head_only) c.response += body;
  c.request.clear();
  c.request.shrink_to_fit();
  c.sent = 0;
  c.phase = Connection::Phase::kWriting;
  c.deadline_ms = now_ms() + options.response_timeout_ms;
}

bool MetricsServer::Impl::write_response(Connection& c) {
  while (c.sent < c.response.size()) {
    const ssize_t put = ::send(c.fd.get(), c.response.data() + c.sent, c.response.size() - c.sent, MSG_NOSIGNAL);
    if (put > 0) {
      c.sent += static_cast<std::size_t>(put);
      continue;
    }
    if (put < 0 && errno == EINTR) continue;
    if (put < 0 && errno != EAGAIN && errno != EWOULDBLOCK) return false;  // the client went
    return now_ms() < c.deadline_ms;  // a client that reads too slowly is dropped at the deadline
  }
  // Close after the client has what was sent, reading what it still sends, briefly.
  ::shutdown(c.fd.get(), SHUT_WR);
  c.response.clear();
  c.response.shrink_to_fit();
  c.phase = Connection::Phase::kLingering;
  c.deadline_ms = now_ms() + kLingerMs;
  return linger(c);
}

bool MetricsServer::Impl::linger(Connection& c) {
  char sink[1024];
  for (int reads = 0; reads < 64; ++reads) {
    const ssize_t got = ::recv(c.fd.get(), sink, sizeof sink, 0);
    if (got == 0) return false;
    if (got < 0 && errno == EINTR) continue;
    if (got < 0) return (errno == EAGAIN || errno == EWOULDBLOCK) && now_ms() < c.deadline_ms;
  }
  return now_ms() < c.deadline_ms;
}

MetricsServer::MetricsServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

MetricsServer::~MetricsServer() { stop(); }

Result<std::unique_ptr<MetricsServer>> MetricsServer::start(MetricsServerOptions options, Render render) {
  if (options.max_request_bytes < 64) return Error{Errc::kInvalidArgument, "metrics: max request bytes must be at least 64"};
  auto impl = std::make_unique<Impl>();
  impl->options = std::move(options);
  impl->render = std::move(render);
  const MetricsServerOptions& o = impl->options;

  WEFT_TRY(const SocketAddress address, socket_address(o.host, o.port, "metrics listen address"));
  WEFT_TRY(impl->listen_fd, listen_tcp(address, 64, "metrics listen address", "stop what listens there or pass --metrics-listen HOST:PORT (or off)"));
  WEFT_TRY(const SocketAddress bound, local_address(impl->listen_fd.get()));
  impl->port = bound.port();
  const std::string host = o.host == "localhost" ? "127.0.0.1" : o.host;
  impl->options.host = host;
  Impl* raw = impl.get();
  impl->thread = std::thread([raw] {
    name_this_thread("weft-metrics");
    raw->run();
  });
  return std::unique_ptr<MetricsServer>(new MetricsServer(std::move(impl)));
}

void MetricsServer::stop() {
  // Relaxed: the thread polls the flag each slice and join() orders the rest; the exchange lets
  // only the first stop() join.
  if (!impl_ || impl_->stopping.exchange(true, std::memory_order_relaxed)) return;
  if (impl_->thread.joinable()) impl_->thread.join();
  impl_->listen_fd = UniqueFd();
}

std::uint16_t MetricsServer::port() const noexcept { return impl_->port; }

std::string MetricsServer::listen_address() const {
  const std::string& host = impl_->options.host;
  return (host.find(':') != std::string::npos ? "[" + host + "]" : host) + ":" + std::to_string(impl_->port);
}

Result<std::unique_ptr<MetricsServer>> start_node_metrics(const std::string& host, std::uint16_t port, const Node& node,
                                                          const LocalServer* local, const kafka::KafkaListener* kafka,
                                                          const ClusterNode* cluster, std::int64_t started_ns) {
  MetricsServerOptions options;
  options.host = host;
  options.port = port;
  Result<std::unique_ptr<MetricsServer>> server =
      MetricsServer::start(std::move(options), [&node, local, kafka, cluster, started_ns] {
        return render_metrics(collect_metrics(node, local, kafka, cluster, started_ns));
      });
  if (server.ok()) log(LogLevel::kInfo, "metrics ready", {{"listen", (*server)->listen_address()}, {"path", "/metrics"}});
  return server;
}

}  // namespace weft::weftd
