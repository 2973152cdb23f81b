// `weft status`'s summary of weftd's Prometheus page (tools/weftd/metrics.h): the Kafka listener's
// requests, errors and latency per API, its connections and bytes, and each consumer group's lag.
// The page is fetched over HTTP from weftd's metrics_listen; parsing and summing are separate so
// tests run them on a rendered page.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "weft/fabric/result.h"

namespace weft::cli {

// One sample line of a page in the text exposition format 0.0.4.
struct MetricSample {
  std::string name;
  std::vector<std::pair<std::string, std::string>> labels;  // values unescaped
  double value = 0;
  std::string_view label(std::string_view key) const noexcept;  // empty when absent
};

// Comments and lines that do not parse are skipped (a summary, not a validator).
std::vector<MetricSample> parse_metrics_text(std::string_view text);

// Prometheus' histogram_quantile over cumulative buckets (upper bound, count) in increasing order,
// +Inf last: linear within the bucket the rank falls in; the highest finite bound when it falls in
// +Inf; 0 without observations.
double histogram_quantile(double q, std::span<const std::pair<double, double>> buckets);

struct KafkaApiSummary {
  std::string api;
  std::uint64_t requests = 0;
  std::uint64_t errors = 0;
  double p50_seconds = 0;
  double p99_seconds = 0;
};

struct GroupSummary {
  std::string group;
  std::string state;  // empty: the Kafka coordinator does not know it (offsets only)
  std::uint64_t lag = 0;
  std::uint32_t partitions = 0;  // committed partitions whose lag is known
};

struct MetricsSummary {
  std::optional<std::uint32_t> pid;  // weft_node_info
  bool kafka = false;                // the page has the Kafka listener's families
  std::uint64_t connections = 0;
  std::uint64_t accepted = 0;
  std::uint64_t refused = 0;
  std::uint64_t bytes_in = 0;
  std::uint64_t bytes_out = 0;
  std::uint64_t records_in = 0;
  std::vector<KafkaApiSummary> apis;  // APIs that served requests, in page order
  std::vector<GroupSummary> groups;   // in name order
};

MetricsSummary summarize_metrics(std::span<const MetricSample> samples);

// GET http://ADDRESS/metrics (ADDRESS is HOST:PORT, an IPv6 host in brackets), bounded by
// `timeout_ms` in all. kUnavailable when nothing answers there, kCorrupt for a response that is
// not a whole 200, kInvalidArgument for an address that is not HOST:PORT.
Result<std::string> fetch_metrics_page(const std::string& address, std::int64_t timeout_ms);

// The lines `weft status` prints after the node's own: the summary of the page at `address`, or
// one line saying it was not reachable (or belongs to another weftd than `node_pid`).
void print_status_metrics(const std::string& address, std::uint32_t node_pid);

}  // namespace weft::cli
