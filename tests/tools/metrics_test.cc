// weftd's Prometheus page (tools/weftd/metrics.h) and weft status's reading of it
// (tools/weft/status_metrics.h): the rendering of plain snapshots line by line, the HTTP request
// check against a table of malformed heads, the server over loopback, and a node with its Kafka
// listener scraped end to end.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <limits>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "../loopback.h"
#include "weft/client.h"
#include "weft/fabric/shared_memory.h"
#include "weft/kafka/listener.h"
#include "weft/node.h"
#include "weft/producer.h"
#include "weftd/metrics.h"
#include "weft/status_metrics.h"

namespace {

using weft::weftd::MetricsSources;

std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) lines.push_back(line);
  return lines;
}

bool has_line(const std::string& page, const std::string& line) {
  const std::vector<std::string> lines = lines_of(page);
  return std::find(lines.begin(), lines.end(), line) != lines.end();
}

std::vector<std::string> lines_starting(const std::string& page, const std::string& prefix) {
  std::vector<std::string> out;
  for (const std::string& l : lines_of(page))
    if (l.rfind(prefix, 0) == 0) out.push_back(l);
  return out;
}

weft::PartitionStats partition(std::uint32_t id, std::int64_t start, std::int64_t end) {
  weft::PartitionStats p;
  p.partition = id;
  p.start_offset = weft::Offset{start};
  p.end_offset = weft::Offset{end};
  p.records = static_cast<std::uint64_t>(end);
  p.bytes = static_cast<std::uint64_t>(end) * 64;
  return p;
}

// A node with one topic of two partitions (one with a log), a local server, a Kafka listener that
// answered three Produce requests, and two groups.
MetricsSources small_snapshot() {
  MetricsSources s;
  s.pid = 4242;
  s.uptime_ms = 1500;
  s.ring_memory_bytes = 8 << 20;
  weft::TopicInfo t;
  t.name = "clicks";
  t.partitions.push_back(partition(0, 0, 10));
  t.partitions[0].producers = 1;
  t.partitions[0].consumers = 2;
  t.partitions[0].back_pressure_events = 3;
  t.partitions[0].log_start_offset = weft::Offset{0};
  t.partitions[0].log_end_offset = weft::Offset{10};
  t.partitions[0].log_bytes = 1000;
  t.partitions.push_back(partition(1, 0, 5));  // no log
  s.topics.push_back(t);
  s.local = weft::LocalServerStats{.accepted = 5, .refused = 1, .bad_requests = 0, .requests = 40, .connections = 2};
  weft::kafka::KafkaListenerStats k;
  k.connections_open = 1;
  k.connections_accepted = 3;
  k.bytes_in = 300;
  k.bytes_out = 200;
  k.records_in = 12;
  weft::kafka::KafkaApiStats& produce = k.apis[0];
  produce.requests = 3;
  produce.errors = 1;
  produce.latency_us_log2[1] = 1;   // below 2 us
  produce.latency_us_log2[3] = 1;   // below 8 us
  produce.latency_us_log2[23] = 1;  // above every bound
  produce.latency_us_sum = 5'000'006;
  s.kafka = k;
  s.group_states.push_back({"billing", "consumer", "Stable"});
  s.group_states.push_back({"odd\"group\\\nname", "consumer", "Empty"});
  weft::CommittedOffset billing0;
  billing0.topic = "clicks";
  billing0.partition = 0;
  billing0.offset = weft::Offset{4};
  weft::CommittedOffset billing1 = billing0;
  billing1.partition = 1;
  billing1.offset = weft::Offset{7};  // past the end (the end is a snapshot): lag 0, not -2
  weft::CommittedOffset gone = billing0;
  gone.topic = "deleted";
  s.group_offsets.push_back({"billing", {billing0, billing1, gone}});
  return s;
}

TEST(RenderMetrics, NodeAndLocalServerCounters) {
  // Given a snapshot
  const std::string page = weft::weftd::render_metrics(small_snapshot());
  // Expect the node's and the local server's series with their HELP and TYPE lines
  for (const std::string line : {"# HELP weft_topics Topics on the node.", "# TYPE weft_topics gauge", "weft_topics 1",
                                 "weft_node_info{pid=\"4242\"} 1", "weft_uptime_seconds 1.5", "weft_partitions 2",
                                 "weft_ring_memory_bytes 8388608", "weft_local_clients 2", "# TYPE weft_local_clients_accepted_total counter",
                                 "weft_local_clients_accepted_total 5", "weft_local_clients_refused_total 1",
                                 "weft_local_requests_total 40", "weft_local_bad_requests_total 0"})
    EXPECT_TRUE(has_line(page, line)) << line << "\n" << page;
}

TEST(RenderMetrics, PartitionSeriesAndLogSeriesOnlyWhereALogIs) {
  const std::string page = weft::weftd::render_metrics(small_snapshot());
  for (const std::string line : {"# TYPE weft_partition_end_offset gauge", "weft_partition_end_offset{topic=\"clicks\",partition=\"0\"} 10",
                                 "weft_partition_end_offset{topic=\"clicks\",partition=\"1\"} 5",
                                 "weft_partition_start_offset{topic=\"clicks\",partition=\"0\"} 0",
                                 "# TYPE weft_partition_records_total counter", "weft_partition_records_total{topic=\"clicks\",partition=\"0\"} 10",
                                 "weft_partition_producers{topic=\"clicks\",partition=\"0\"} 1",
                                 "weft_partition_consumers{topic=\"clicks\",partition=\"0\"} 2",
                                 "weft_partition_lapped_consumers{topic=\"clicks\",partition=\"0\"} 0",
                                 "weft_partition_back_pressure_events_total{topic=\"clicks\",partition=\"0\"} 3",
                                 "weft_partition_log_end_offset{topic=\"clicks\",partition=\"0\"} 10",
                                 "weft_partition_log_start_offset{topic=\"clicks\",partition=\"0\"} 0",
                                 "weft_partition_log_bytes{topic=\"clicks\",partition=\"0\"} 1000",
                                 "weft_partition_log_error{topic=\"clicks\",partition=\"0\"} 0"})
    EXPECT_TRUE(has_line(page, line)) << line << "\n" << page;
  // Expect no log series for the partition without one
  EXPECT_TRUE(lines_starting(page, "weft_partition_log_end_offset{topic=\"clicks\",partition=\"1\"}").empty());
  EXPECT_TRUE(lines_starting(page, "weft_partition_log_error{topic=\"clicks\",partition=\"1\"}").empty());
}

TEST(RenderMetrics, KafkaCountersForEveryServedApi) {
  const std::string page = weft::weftd::render_metrics(small_snapshot());
  for (const std::string line : {"# TYPE weft_kafka_requests_total counter", "weft_kafka_requests_total{api=\"Produce\"} 3",
                                 "weft_kafka_request_errors_total{api=\"Produce\"} 1",
                                 // An API that served nothing yet has its series from the start.
                                 "weft_kafka_requests_total{api=\"Fetch\"} 0", "weft_kafka_requests_total{api=\"ApiVersions\"} 0",
                                 "# TYPE weft_kafka_connections gauge", "weft_kafka_connections 1",
                                 "weft_kafka_connections_accepted_total 3", "weft_kafka_connections_refused_total 0",
                                 "weft_kafka_connections_closed_bad_request_total 0", "weft_kafka_connections_closed_idle_total 0",
                                 "weft_kafka_fetch_disk_waits_total 0",
                                 "weft_kafka_bytes_in_total 300", "weft_kafka_bytes_out_total 200", "weft_kafka_records_in_total 12"})
    EXPECT_TRUE(has_line(page, line)) << line << "\n" << page;
  EXPECT_TRUE(lines_starting(page, "weft_kafka_requests_total{api=\"Unknown\"}").empty());
}

TEST(RenderMetrics, LatencyIsAHistogramWithCumulativeBucketsAndInf) {
  const std::string page = weft::weftd::render_metrics(small_snapshot());
  EXPECT_TRUE(has_line(page, "# TYPE weft_kafka_request_latency_seconds histogram"));
  const std::vector<std::string> expected = {
      R"(weft_kafka_request_latency_seconds_bucket{api="Produce",le="0.000001"} 0)",
      R"(weft_kafka_request_latency_seconds_bucket{api="Produce",le="0.000002"} 1)",
      R"(weft_kafka_request_latency_seconds_bucket{api="Produce",le="0.000004"} 1)",
      R"(weft_kafka_request_latency_seconds_bucket{api="Produce",le="0.000008"} 2)",
      R"(weft_kafka_request_latency_seconds_bucket{api="Produce",le="0.000016"} 2)",
      R"(weft_kafka_request_latency_seconds_bucket{api="Produce",le="0.000032"} 2)",
      R"(weft_kafka_request_latency_seconds_bucket{api="Produce",le="0.000064"} 2)",
      R"(weft_kafka_request_latency_seconds_bucket{api="Produce",le="0.000128"} 2)",
      R"(weft_kafka_request_latency_seconds_bucket{api="Produce",le="0.000256"} 2)",
      R"(weft_kafka_request_latency_seconds_bucket{api="Produce",le="0.000512"} 2)",
      R"(weft_kafka_request_latency_seconds_bucket{api="Produce",le="0.001024"} 2)",
      R"(weft_kafka_request_latency_seconds_bucket{api="Produce",le="0.002048"} 2)",
      R"(weft_kafka_request_latency_seconds_bucket{api="Produce",le="0.004096"} 2)",
      R"(weft_kafka_request_latency_seconds_bucket{api="Produce",le="0.008192"} 2)",
      R"(weft_kafka_request_latency_seconds_bucket{api="Produce",le="0.016384"} 2)",
      R"(weft_kafka_request_latency_seconds_bucket{api="Produce",le="0.032768"} 2)",
      R"(weft_kafka_request_latency_seconds_bucket{api="Produce",le="0.065536"} 2)",
      R"(weft_kafka_request_latency_seconds_bucket{api="Produce",le="0.131072"} 2)",
      R"(weft_kafka_request_latency_seconds_bucket{api="Produce",le="0.262144"} 2)",
      R"(weft_kafka_request_latency_seconds_bucket{api="Produce",le="0.524288"} 2)",
      R"(weft_kafka_request_latency_seconds_bucket{api="Produce",le="1.048576"} 2)",
      R"(weft_kafka_request_latency_seconds_bucket{api="Produce",le="2.097152"} 2)",
      R"(weft_kafka_request_latency_seconds_bucket{api="Produce",le="4.194304"} 2)",
      R"(weft_kafka_request_latency_seconds_bucket{api="Produce",le="+Inf"} 3)",
  };
  EXPECT_EQ(lines_starting(page, R"(weft_kafka_request_latency_seconds_bucket{api="Produce",)"), expected);
  EXPECT_TRUE(has_line(page, R"(weft_kafka_request_latency_seconds_sum{api="Produce"} 5.000006)"));
  EXPECT_TRUE(has_line(page, R"(weft_kafka_request_latency_seconds_count{api="Produce"} 3)"));
  // An API that served nothing has no histogram yet.
  EXPECT_TRUE(lines_starting(page, R"(weft_kafka_request_latency_seconds_bucket{api="Fetch",)").empty());
}

TEST(RenderMetrics, RequestsToKeysNotServedAreSummedAsUnknown) {
  MetricsSources s = small_snapshot();
  s.kafka->apis[4].requests = 2;  // LeaderAndIsr: not served
  s.kafka->apis[5].requests = 1;
  s.kafka->apis[5].latency_us_log2[0] = 1;
  const std::string page = weft::weftd::render_metrics(s);
  EXPECT_TRUE(has_line(page, R"(weft_kafka_requests_total{api="Unknown"} 3)")) << page;
  EXPECT_TRUE(has_line(page, R"(weft_kafka_request_latency_seconds_bucket{api="Unknown",le="+Inf"} 1)")) << page;
}

TEST(RenderMetrics, GroupsStateCommittedOffsetsAndLagNeverBelowZero) {
  const std::string page = weft::weftd::render_metrics(small_snapshot());
  for (const std::string line : {R"(weft_consumer_group_state{group="billing",state="Stable"} 1)",
                                 R"(weft_consumer_group_committed_offset{group="billing",topic="clicks",partition="0"} 4)",
                                 R"(weft_consumer_group_committed_offset{group="billing",topic="clicks",partition="1"} 7)",
                                 R"(weft_consumer_group_committed_offset{group="billing",topic="deleted",partition="0"} 4)",
                                 R"(weft_consumer_group_lag{group="billing",topic="clicks",partition="0"} 6)",
                                 R"(weft_consumer_group_lag{group="billing",topic="clicks",partition="1"} 0)"})
    EXPECT_TRUE(has_line(page, line)) << line << "\n" << page;
  // Expect no lag for a topic the snapshot does not have
  EXPECT_TRUE(lines_starting(page, R"(weft_consumer_group_lag{group="billing",topic="deleted")").empty());
}

TEST(RenderMetrics, LabelValuesAreEscaped) {
  const std::string page = weft::weftd::render_metrics(small_snapshot());
  EXPECT_TRUE(has_line(page, R"(weft_consumer_group_state{group="odd\"group\\\nname",state="Empty"} 1)")) << page;
  EXPECT_EQ(weft::weftd::escape_label_value("a\"b\\c\nd"), R"(a\"b\\c\nd)");
  EXPECT_EQ(weft::weftd::escape_label_value("caf\xC3\xA9 \xE2\x82\xAC \xF0\x9F\x98\x80"), "caf\xC3\xA9 \xE2\x82\xAC \xF0\x9F\x98\x80");
  // Invalid UTF-8 (stray continuation, truncated, overlong, surrogate, above U+10FFFF) becomes U+FFFD per byte.
  const std::string r = "\xEF\xBF\xBD";
  EXPECT_EQ(weft::weftd::escape_label_value("a\xFF" "b"), "a" + r + "b");
  EXPECT_EQ(weft::weftd::escape_label_value("\x80"), r);
  EXPECT_EQ(weft::weftd::escape_label_value("x\xC3"), "x" + r);
  EXPECT_EQ(weft::weftd::escape_label_value("\xC0\xAF"), r + r);
  EXPECT_EQ(weft::weftd::escape_label_value("\xED\xA0\x80"), r + r + r);
  EXPECT_EQ(weft::weftd::escape_label_value("\xF4\x90\x80\x80"), r + r + r + r);
}

TEST(RenderMetrics, EveryFamilyIsOneBlockWithHelpAndTypeFirst) {
  // Given a full page and one without the Kafka listener
  MetricsSources off = small_snapshot();
  off.kafka.reset();
  for (const MetricsSources& s : {small_snapshot(), off}) {
    const std::string page = weft::weftd::render_metrics(s);
    std::vector<std::string> seen;
    std::string family, type;
    for (const std::string& line : lines_of(page)) {
      ASSERT_FALSE(line.empty());
      if (line.rfind("# HELP ", 0) == 0) {
        family = line.substr(7, line.find(' ', 7) - 7);
        EXPECT_EQ(std::count(seen.begin(), seen.end(), family), 0) << "family twice: " << family;
        seen.push_back(family);
        type.clear();
        continue;
      }
      if (line.rfind("# TYPE ", 0) == 0) {
        EXPECT_EQ(line.substr(7, family.size() + 1), family + " ") << line;
        type = line.substr(7 + family.size() + 1);
        continue;
      }
      // Expect each sample under its own family's TYPE line
      ASSERT_FALSE(type.empty()) << line;
      EXPECT_EQ(line.rfind("weft_", 0), 0u) << line;
      const std::string name = line.substr(0, line.find_first_of("{ "));
      if (type == "histogram")
        EXPECT_TRUE(name == family + "_bucket" || name == family + "_sum" || name == family + "_count") << line;
      else
        EXPECT_EQ(name, family) << line;
    }
    // Expect the Kafka families only while the listener runs
    EXPECT_EQ(page.find("weft_kafka_") != std::string::npos, s.kafka.has_value());
  }
}

// ---- weft status's reading of the page ----

TEST(StatusMetrics, SummarizesARenderedPage) {
  // Given the page of the small snapshot, parsed back
  const std::vector<weft::cli::MetricSample> samples = weft::cli::parse_metrics_text(weft::weftd::render_metrics(small_snapshot()));
  const weft::cli::MetricsSummary m = weft::cli::summarize_metrics(samples);
  // Expect the node, the listener's counters and only the APIs that served requests
  ASSERT_TRUE(m.pid.has_value());
  EXPECT_EQ(*m.pid, 4242u);
  EXPECT_TRUE(m.kafka);
  EXPECT_EQ(m.connections, 1u);
  EXPECT_EQ(m.accepted, 3u);
  EXPECT_EQ(m.bytes_in, 300u);
  EXPECT_EQ(m.bytes_out, 200u);
  EXPECT_EQ(m.records_in, 12u);
  ASSERT_EQ(m.apis.size(), 1u);
  EXPECT_EQ(m.apis[0].api, "Produce");
  EXPECT_EQ(m.apis[0].requests, 3u);
  EXPECT_EQ(m.apis[0].errors, 1u);
  // rank 1.5 falls in (4 us, 8 us] holding the second request: halfway, 6 us; p99 is in +Inf: the top bound
  EXPECT_NEAR(m.apis[0].p50_seconds, 6e-6, 1e-12);
  EXPECT_DOUBLE_EQ(m.apis[0].p99_seconds, 4.194304);
  // Expect each group with its state and summed lag, the escaped name read back whole
  ASSERT_EQ(m.groups.size(), 2u);
  EXPECT_EQ(m.groups[0].group, "billing");
  EXPECT_EQ(m.groups[0].state, "Stable");
  EXPECT_EQ(m.groups[0].lag, 6u);
  EXPECT_EQ(m.groups[0].partitions, 2u);
  EXPECT_EQ(m.groups[1].group, "odd\"group\\\nname");
  EXPECT_EQ(m.groups[1].state, "Empty");
}

TEST(StatusMetrics, ParserSkipsWhatDoesNotParse) {
  const std::vector<weft::cli::MetricSample> samples = weft::cli::parse_metrics_text(
      "# HELP x y\nok 1\nbad{a=\"1\" 2\nbad{a=1} 3\nbad 1x\n{a=\"1\"} 4\nnovalue\nwith_ts{a=\"\"} 5 1700000000000\r\ninf +Inf\n");
  ASSERT_EQ(samples.size(), 3u);
  EXPECT_EQ(samples[0].name, "ok");
  EXPECT_EQ(samples[1].name, "with_ts");
  EXPECT_EQ(samples[1].value, 5);
  EXPECT_EQ(samples[1].labels.size(), 1u);
  EXPECT_EQ(samples[2].name, "inf");
}

TEST(StatusMetrics, HistogramQuantileFollowsPrometheus) {
  const double inf = std::numeric_limits<double>::infinity();
  const std::vector<std::pair<double, double>> none = {{1, 0}, {2, 0}, {inf, 0}};
  EXPECT_EQ(weft::cli::histogram_quantile(0.5, none), 0);
  const std::vector<std::pair<double, double>> even = {{1, 10}, {2, 20}, {inf, 20}};
  EXPECT_DOUBLE_EQ(weft::cli::histogram_quantile(0.25, even), 0.5);
  EXPECT_DOUBLE_EQ(weft::cli::histogram_quantile(0.75, even), 1.5);
  EXPECT_DOUBLE_EQ(weft::cli::histogram_quantile(1.0, even), 2);
}

TEST(StatusMetrics, AnAddressWhereNothingListensIsUnavailable) {
  // Given a port that was free a moment ago
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  socklen_t length = sizeof a;
  getsockname(fd, reinterpret_cast<sockaddr*>(&a), &length);
  close(fd);
  weft::Result<std::string> page = weft::cli::fetch_metrics_page("127.0.0.1:" + std::to_string(ntohs(a.sin_port)), 2000);
  ASSERT_FALSE(page.ok());
  EXPECT_EQ(page.error().code, weft::Errc::kUnavailable);
  EXPECT_EQ(weft::cli::fetch_metrics_page("no-port", 100).error().code, weft::Errc::kInvalidArgument);
}

// ---- the HTTP request check ----

TEST(ParseRequestHead, AcceptsGetAndHead) {
  struct Case {
    std::string head;
    int status;
    std::string path;
    bool head_only;
  };
  for (const Case& c : std::vector<Case>{
           {"GET /metrics HTTP/1.1\r\nHost: localhost:9644\r\nAccept: */*\r\n\r\n", 200, "/metrics", false},
           {"GET /metrics?name[]=x HTTP/1.0\r\n\r\n", 200, "/metrics", false},
           {"GET / HTTP/1.1\n\n", 200, "/", false},
           {"HEAD /metrics HTTP/1.1\r\n\r\n", 200, "/metrics", true},
           {"GET http://node:9644/metrics HTTP/1.1\r\n\r\n", 200, "/metrics", false},
           {"GET /nope HTTP/1.1\r\nX-Empty:\r\n\r\n", 200, "/nope", false},
           {"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n", 405, "/metrics", false},
           {"GET /metrics HTTP/2.0\r\n\r\n", 505, "/metrics", false},
       }) {
    const weft::weftd::HttpRequestHead h = weft::weftd::parse_request_head(c.head);
    EXPECT_EQ(h.status, c.status) << c.head;
    EXPECT_EQ(h.path, c.path) << c.head;
    EXPECT_EQ(h.head_only, c.head_only) << c.head;
  }
}

TEST(ParseRequestHead, RefusesMalformedHeads) {
  static constexpr char kNulInHeader[] = "GET /metrics HTTP/1.1\r\nX: a\0b\r\n\r\n";
  for (const std::string& head : std::vector<std::string>{
           "", "\r\n\r\n", "GET\r\n\r\n", "GET /metrics\r\n\r\n", "GET  /metrics HTTP/1.1\r\n\r\n",
           "GET /metrics HTTP/1.1 extra\r\n\r\n", "GET /met rics HTTP/1.1\r\n\r\n", "G(T /metrics HTTP/1.1\r\n\r\n",
           "GET metrics HTTP/1.1\r\n\r\n", "GET * HTTP/1.1\r\n\r\n", "GET /metrics HTTQ/1.1\r\n\r\n", "GET /metrics HTTP/1\r\n\r\n",
           "GET /metrics HTTP/1.1\r\nNoColon\r\n\r\n", "GET /metrics HTTP/1.1\r\n: no name\r\n\r\n",
           "GET /metrics HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n", "GET /metrics HTTP/1.1\r\nBad Name: x\r\n\r\n",
           "GET /\x01 HTTP/1.1\r\n\r\n", "GET /\xC3\xA9 HTTP/1.1\r\n\r\n", "GET /metrics HTTP/1.1\r\nX: a\x01" "b\r\n\r\n",
           std::string(kNulInHeader, sizeof kNulInHeader - 1), std::string(8192, 'A')}) {
    EXPECT_EQ(weft::weftd::parse_request_head(head).status, 400) << head;
  }
}

// ---- the server over loopback ----

std::string exchange(std::uint16_t port, const std::string& request, bool close_write = false) {
  return weft::test::loopback_exchange(port, request, {.close_write = close_write});
}

std::string status_line(const std::string& response) { return response.substr(0, response.find("\r\n")); }

std::string body_of(const std::string& response) {
  const std::size_t at = response.find("\r\n\r\n");
  return at == std::string::npos ? std::string() : response.substr(at + 4);
}

std::unique_ptr<weft::weftd::MetricsServer> start_server(weft::weftd::MetricsServer::Render render, std::int64_t request_timeout_ms = 300) {
  weft::weftd::MetricsServerOptions options;
  options.port = 0;
  options.request_timeout_ms = request_timeout_ms;
  auto server = weft::weftd::MetricsServer::start(options, std::move(render));
  EXPECT_TRUE(server.ok()) << server.error().message;
  return std::move(server).value();
}

TEST(MetricsServer, ServesThePageTheHintAnd404) {
  // Given a server on any free loopback port
  auto server = start_server([] { return std::string("weft_test 1\n"); });
  ASSERT_NE(server->port(), 0);
  EXPECT_EQ(server->listen_address(), "127.0.0.1:" + std::to_string(server->port()));
  // Expect the page with its content type, closed after
  const std::string page = exchange(server->port(), "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
  EXPECT_EQ(status_line(page), "HTTP/1.1 200 OK");
  EXPECT_NE(page.find("\r\nContent-Type: text/plain; version=0.0.4"), std::string::npos) << page;
  EXPECT_NE(page.find("\r\nContent-Length: 12\r\n"), std::string::npos) << page;
  EXPECT_NE(page.find("\r\nConnection: close\r\n"), std::string::npos) << page;
  EXPECT_EQ(body_of(page), "weft_test 1\n");
  const std::string head = exchange(server->port(), "HEAD /metrics HTTP/1.1\r\n\r\n");
  EXPECT_EQ(status_line(head), "HTTP/1.1 200 OK");
  EXPECT_EQ(body_of(head), "");
  const std::string hint = exchange(server->port(), "GET / HTTP/1.0\r\n\r\n");
  EXPECT_EQ(status_line(hint), "HTTP/1.1 200 OK");
  EXPECT_NE(body_of(hint).find("/metrics"), std::string::npos);
  EXPECT_EQ(status_line(exchange(server->port(), "GET /favicon.ico HTTP/1.1\r\n\r\n")), "HTTP/1.1 404 Not Found");
  const std::string post = exchange(server->port(), "POST /metrics HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello");
  EXPECT_EQ(status_line(post), "HTTP/1.1 405 Method Not Allowed");
  EXPECT_NE(post.find("\r\nAllow: GET, HEAD\r\n"), std::string::npos);
}

TEST(MetricsServer, BadRequestsGetAnErrorAndTheServerCarriesOn) {
  auto server = start_server([] { return std::string("weft_test 1\n"); });
  // A malformed request, a head over 8 KiB, a silent client, one that leaves half-way, one that
  // connects and goes, binary noise
  EXPECT_EQ(status_line(exchange(server->port(), "hello\r\n\r\n")), "HTTP/1.1 400 Bad Request");
  EXPECT_EQ(status_line(exchange(server->port(), "GET /metrics HTTP/1.1\r\nX: " + std::string(9000, 'a'))),
            "HTTP/1.1 431 Request Header Fields Too Large");
  EXPECT_EQ(status_line(exchange(server->port(), "GET /metrics HTTP/1.1\r\nX: " + std::string(8200, 'a') + "\r\n\r\n")),
            "HTTP/1.1 431 Request Header Fields Too Large");
  EXPECT_EQ(status_line(exchange(server->port(), "GET /metrics HTTP/1.1\r\n")), "HTTP/1.1 408 Request Timeout");
  EXPECT_EQ(status_line(exchange(server->port(), "GET /metr", true)), "HTTP/1.1 400 Bad Request");
  EXPECT_EQ(exchange(server->port(), "", true), "");
  std::string noise(4000, '\0');
  for (std::size_t i = 0; i < noise.size(); ++i) noise[i] = static_cast<char>((i * 131 + 7) % 256);
  noise += "\r\n\r\n";
  EXPECT_EQ(status_line(exchange(server->port(), noise)), "HTTP/1.1 400 Bad Request");
  // Expect it to serve as before
  EXPECT_EQ(body_of(exchange(server->port(), "GET /metrics HTTP/1.1\r\n\r\n")), "weft_test 1\n");
  server->stop();
  server->stop();  // idempotent
}

// A client connected to the server on loopback that has sent `request` (and then nothing, nor
// reads more than its 4 KiB receive buffer holds).
weft::UniqueFd stalled_client(std::uint16_t port, const std::string& request) {
  weft::UniqueFd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  const int small = 4096;
  EXPECT_EQ(::setsockopt(fd.get(), SOL_SOCKET, SO_RCVBUF, &small, sizeof small), 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  EXPECT_EQ(::connect(fd.get(), reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  if (!request.empty()) {
    EXPECT_EQ(::send(fd.get(), request.data(), request.size(), MSG_NOSIGNAL), static_cast<ssize_t>(request.size()));
  }
  return fd;
}

TEST(MetricsServer, ClientsThatStallHoldNoOtherScrape) {
  // Given a server whose clients have 30 s to send their request, and two clients connected: one
  // silent, one half-way through its request
  auto server = start_server([] { return std::string("weft_test 1\n"); }, 30'000);
  const weft::UniqueFd silent = stalled_client(server->port(), "");
  const weft::UniqueFd half = stalled_client(server->port(), "GET /metr");
  // Expect a scrape answered meanwhile
  EXPECT_EQ(body_of(exchange(server->port(), "GET /metrics HTTP/1.1\r\n\r\n")), "weft_test 1\n");
  // ... while the two still wait for their answers (their timeout has not passed)
  pollfd waiting[2] = {{silent.get(), POLLIN, 0}, {half.get(), POLLIN, 0}};
  EXPECT_EQ(::poll(waiting, 2, 0), 0);
}

TEST(MetricsServer, AClientThatReadsNoneOfItsPageHoldsNoOtherScrape) {
  // Given a page of 8 MiB, more than the sockets between them buffer, and a client that asked
  // for it and reads nothing
  const std::string page = "weft_test 1\n" + std::string(std::size_t{8} << 20, '#');
  auto server = start_server([&page] { return page; });
  const weft::UniqueFd unread = stalled_client(server->port(), "GET /metrics HTTP/1.1\r\n\r\n");
  std::this_thread::sleep_for(std::chrono::milliseconds(100));  // the server is sending it its page
  // Expect another scrape answered, whole, meanwhile
  const std::string answered = exchange(server->port(), "GET /metrics HTTP/1.1\r\n\r\n");
  EXPECT_EQ(status_line(answered), "HTTP/1.1 200 OK");
  EXPECT_EQ(body_of(answered).size(), page.size());
}

TEST(MetricsServer, ARenderThatThrowsIsA500) {
  auto server = start_server([]() -> std::string { throw std::runtime_error("no page"); });
  EXPECT_EQ(status_line(exchange(server->port(), "GET /metrics HTTP/1.1\r\n\r\n")), "HTTP/1.1 500 Internal Server Error");
  EXPECT_EQ(status_line(exchange(server->port(), "GET / HTTP/1.1\r\n\r\n")), "HTTP/1.1 200 OK");
}

TEST(MetricsServer, RefusesAnAddressInUseAndOneThatIsNone) {
  auto first = start_server([] { return std::string(); });
  weft::weftd::MetricsServerOptions same;
  same.port = first->port();
  auto second = weft::weftd::MetricsServer::start(same, [] { return std::string(); });
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.error().code, weft::Errc::kIo);
  EXPECT_NE(second.error().message.find("in use"), std::string::npos) << second.error().message;
  EXPECT_NE(second.error().message.find("--metrics-listen"), std::string::npos) << second.error().message;
  weft::weftd::MetricsServerOptions bad;
  bad.host = "not-an-address";
  auto third = weft::weftd::MetricsServer::start(bad, [] { return std::string(); });
  ASSERT_FALSE(third.ok());
  EXPECT_EQ(third.error().code, weft::Errc::kInvalidArgument);
}

// ---- a node scraped end to end ----

std::string kafka_round_trip(std::uint16_t port, const std::string& request) {
  return weft::test::loopback_exchange(port, request, {.one_kafka_frame = true});
}

// An ApiVersions v0 request, answered by any Kafka listener.
std::string api_versions_request() {
  const std::string client = "test";
  std::string body;
  auto i16 = [&](int v) {
    body += static_cast<char>((v >> 8) & 0xff);
    body += static_cast<char>(v & 0xff);
  };
  i16(18);  // ApiVersions
  i16(0);   // v0
  body += std::string("\0\0\0\7", 4);  // correlation id
  i16(static_cast<int>(client.size()));
  body += client;
  const auto n = static_cast<std::uint32_t>(body.size());
  return std::string{static_cast<char>(n >> 24), static_cast<char>((n >> 16) & 0xff), static_cast<char>((n >> 8) & 0xff),
                     static_cast<char>(n & 0xff)} + body;
}

TEST(NodeMetrics, ANodeItsListenerAndItsGroupsScrapedOverHttp) {
  // Given a node with a topic of two records, a group that committed offset 1, and a Kafka
  // listener that answered one ApiVersions request
  char tmpl[] = "/tmp/weft-metrics-test-XXXXXX";
  ASSERT_NE(mkdtemp(tmpl), nullptr);
  const std::string dir = tmpl;
  const std::int64_t started = weft::monotonic_ns();
  {
    weft::NodeOptions options;
    options.offsets_dir = dir + "/offsets";
    options.prefer_hugepages = false;
    auto node = weft::Node::start(options);
    ASSERT_TRUE(node.ok()) << node.error().message;
    weft::TopicConfig config;
    config.ring_capacity_bytes = 1 << 16;
    config.max_batch_bytes = 1 << 14;
    ASSERT_TRUE((*node)->create_topic("orders", config).ok());
    {
      auto producer = weft::TopicProducer::create(weft::Client::embedded(**node), "orders");
      ASSERT_TRUE(producer.ok()) << producer.error().message;
      const std::string value = "v";
      weft::RecordInput r;
      r.value = std::as_bytes(std::span(value.data(), value.size()));
      ASSERT_TRUE(producer->send_to(0, r).ok());
      ASSERT_TRUE(producer->send_to(0, r).ok());
    }
    weft::CommittedOffset committed;
    committed.topic = "orders";
    committed.partition = 0;
    committed.offset = weft::Offset{1};
    ASSERT_TRUE((*node)->commit_offsets("audit", std::span(&committed, 1)).ok());
    weft::kafka::KafkaListenerOptions kafka_options;
    kafka_options.listen_port = 0;
    auto listener = weft::kafka::KafkaListener::start(**node, kafka_options);
    ASSERT_TRUE(listener.ok()) << listener.error().message;
    ASSERT_GT(kafka_round_trip((*listener)->port(), api_versions_request()).size(), 8u);

    auto metrics = weft::weftd::start_node_metrics("127.0.0.1", 0, **node, nullptr, listener->get(), nullptr, started);
    ASSERT_TRUE(metrics.ok()) << metrics.error().message;
    // Expect the partition, the group's lag and the Kafka counters on the page
    const std::string page = body_of(exchange((*metrics)->port(), "GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n"));
    for (const std::string& line : std::vector<std::string>{R"(weft_partition_end_offset{topic="orders",partition="0"} 2)",
                                   R"(weft_consumer_group_committed_offset{group="audit",topic="orders",partition="0"} 1)",
                                   R"(weft_consumer_group_lag{group="audit",topic="orders",partition="0"} 1)",
                                   R"(weft_kafka_requests_total{api="ApiVersions"} 1)", "weft_kafka_connections_accepted_total 1",
                                   "weft_topics 1", "weft_node_info{pid=\"" + std::to_string(getpid()) + "\"} 1"})
      EXPECT_TRUE(has_line(page, line)) << line << "\n" << page;
    // Expect weft status's summary to read it
    weft::Result<std::string> fetched = weft::cli::fetch_metrics_page((*metrics)->listen_address(), 2000);
    ASSERT_TRUE(fetched.ok()) << fetched.error().message;
    const weft::cli::MetricsSummary m = weft::cli::summarize_metrics(weft::cli::parse_metrics_text(*fetched));
    ASSERT_EQ(m.apis.size(), 1u);
    EXPECT_EQ(m.apis[0].api, "ApiVersions");
    ASSERT_EQ(m.groups.size(), 1u);
    EXPECT_EQ(m.groups[0].lag, 1u);
    (*metrics)->stop();
    (*listener)->stop();
  }
  std::filesystem::remove_all(dir);
}

}  // namespace
