// weft-cluster-bench: the replication issue's numbers on one machine, in one process — three
// nodes (each a Node with segment logs in its own folder, a ClusterNode, TCP links on loopback
// ports, an in-memory metadata store), against one node alone, in the same run.
//
//   1. single node: a producer offers 1 KiB-record batches into the partition's ring as fast as
//      it can; done when the log holds all of them (acks=1 on a node without replicas).
//   2. replication factor 3: the same on the leader; done when the high watermark (the in-sync
//      set's durable end) passes the last record (acks=all).
//   3. acks=all latency: one 1 KiB record at a time, paced at --rate records/s; each record's
//      latency runs from its commit to the leader's high watermark passing it. After each commit
//      the producer pokes the replicator and the log writer, as the Kafka listener does.
//   4. failover: the leader is dropped without a word (its lease runs out); the time until a new
//      leader acknowledges a write with acks=all.
//
// Each throughput phase also reports the process's cpu time (every thread: the nodes' and the
// producer's) per GB moved, steadier than MB/s on a shared host.
//
// Usage: weft-cluster-bench [--mib N] [--rate R] [--seconds S] [--batch-records N]
//                           [--log-writes direct|buffered]
#include <sys/prctl.h>
#include <sys/resource.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "weft/cluster_node.h"
#include "weft/fabric/histogram.h"
#include "weft/fabric/log.h"
#include "weft/fabric/record_batch.h"
#include "weft/storage/segment_log.h"
#include "weft/transport/tcp.h"

namespace weft {
namespace {

using Clock = std::chrono::steady_clock;

struct Settings {
  std::size_t mib = 512;
  double rate = 10'000;
  double seconds = 5;
  int batch_records = 16;
  bool direct_io = true;  // the library's default; weftd writes through the page cache by default
};

// The process's user and system cpu time so far, in seconds.
double cpu_seconds() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  auto seconds = [](const timeval& t) { return static_cast<double>(t.tv_sec) + static_cast<double>(t.tv_usec) / 1e6; };
  return seconds(usage.ru_utime) + seconds(usage.ru_stime);
}

std::vector<std::byte> batch_of(int records) {
  std::vector<std::byte> value(1024, std::byte{0x5a});
  std::vector<std::byte> out(kBatchHeaderBytes + static_cast<std::size_t>(records) * 1100);
  BatchBuilder builder(out);
  for (int i = 0; i < records; ++i) {
    RecordInput r;
    r.value = std::span<const std::byte>(value);
    r.timestamp_ms = 1'700'000'000'000;
    (void)builder.append(r);
  }
  out.resize(builder.finish().size());
  return out;
}

std::string temp_dir() {
  char pattern[] = "/tmp/weft-cluster-bench-XXXXXX";
  const char* made = mkdtemp(pattern);
  return made != nullptr ? made : "/tmp";
}

struct BenchNode {
  std::string dir = temp_dir();
  std::unique_ptr<Node> node;
  std::unique_ptr<ClusterNode> cluster;
  ~BenchNode() {
    cluster.reset();
    node.reset();
    std::error_code ignored;
    std::filesystem::remove_all(dir, ignored);
  }
};

std::unique_ptr<BenchNode> start_node(const Settings& s) {
  auto n = std::make_unique<BenchNode>();
  NodeOptions o;
  storage::SegmentOptions segments;
  segments.direct_io = s.direct_io;
  storage::use_segment_logs(o, n->dir + "/data", segments);
  o.maintenance_max_interval_us = 200;
  n->node = Node::start(std::move(o)).value();
  return n;
}

TopicConfig topic_config() {
  TopicConfig c;
  c.ring_capacity_bytes = std::size_t{16} << 20;
  c.max_batch_bytes = std::size_t{1} << 20;
  return c;
}

// Offers `batch` until the ring takes it; returns its base offset.
Offset offer(Producer& producer, std::span<const std::byte> batch) {
  Offset base{-1};
  while (producer.offer(batch, &base) == ClaimStatus::kBackPressured) std::this_thread::yield();
  return base;
}

struct Throughput {
  double bytes_per_second = 0;
  double cpu_seconds_per_gb = 0;
};

Throughput single_node(const Settings& s, const std::vector<std::byte>& batch) {
  auto n = start_node(s);
  (void)n->node->create_topic("bench", topic_config());
  PartitionMemory memory = n->node->open_partition("bench", 0).value();
  Producer producer = Producer::attach(memory.ring).value();
  const std::size_t batches = s.mib * (std::size_t{1} << 20) / batch.size();
  const auto start = Clock::now();
  const double cpu_start = cpu_seconds();
  Offset last{0};
  for (std::size_t i = 0; i < batches; ++i) last = offer(producer, batch) + s.batch_records;
  while (read_log_progress(memory.ring).written < last) std::this_thread::sleep_for(std::chrono::microseconds(50));
  const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
  const double bytes = static_cast<double>(batches * batch.size());
  return Throughput{bytes / seconds, (cpu_seconds() - cpu_start) / (bytes / 1e9)};
}

struct Cluster {
  std::shared_ptr<MetadataStore> store = make_memory_metadata_store();
  std::unique_ptr<Transport> transport = make_tcp_transport();
  std::vector<std::unique_ptr<BenchNode>> nodes;

  void start(int count, const Settings& s) {
    for (int id = 1; id <= count; ++id) {
      auto n = start_node(s);
      ClusterNodeOptions c;
      c.cluster.cluster = "bench";
      c.cluster.self.id = id;
      c.cluster.lease_ttl_s = 1;
      c.replication_listen = "127.0.0.1:0";
      n->cluster = ClusterNode::start(*n->node, *transport, store, c).value();
      nodes.push_back(std::move(n));
    }
  }
  BenchNode* live() {
    for (auto& n : nodes) {
      if (n->cluster) return n.get();
    }
    return nullptr;
  }
  BenchNode* leader_of(const char* topic) {
    auto view = live()->cluster->partition(topic, 0);
    if (!view) return nullptr;
    for (auto& n : nodes) {
      if (n->cluster && n->cluster->id() == view->leader) return n.get();
    }
    return nullptr;
  }
  // Waits until every replica is in sync and the leader can be written; returns its producer.
  std::optional<Producer> ready(const char* topic, std::size_t replicas) {
    const auto deadline = Clock::now() + std::chrono::seconds(20);
    while (Clock::now() < deadline) {
      BenchNode* leader = leader_of(topic);
      if (leader != nullptr) {
        auto view = leader->cluster->partition(topic, 0);
        Result<PartitionMemory> memory = leader->node->open_partition(topic, 0);
        if (view && view->isr.size() == replicas && view->replica_here && memory.ok()) {
          Result<Producer> p = Producer::attach(memory->ring);
          if (p.ok()) return std::move(p.value());
        }
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    return std::nullopt;
  }
  Offset high_watermark(BenchNode& leader, const char* topic) {
    auto view = leader.cluster->partition(topic, 0);
    return view ? view->high_watermark : Offset{0};
  }
};

}  // namespace
}  // namespace weft

int main(int argc, char** argv) {
  using namespace weft;
  // The waits below sleep a few microseconds; the default 50 us timer slack would blur them.
  (void)prctl(PR_SET_TIMERSLACK, 1UL, 0UL, 0UL, 0UL);
  Settings s;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i];
    if (flag == "--mib") s.mib = std::strtoull(argv[i + 1], nullptr, 10);
    else if (flag == "--rate") s.rate = std::strtod(argv[i + 1], nullptr);
    else if (flag == "--seconds") s.seconds = std::strtod(argv[i + 1], nullptr);
    else if (flag == "--batch-records") s.batch_records = std::max(1, std::atoi(argv[i + 1]));
    else if (flag == "--log-writes") s.direct_io = std::string(argv[i + 1]) != "buffered";
  }
  set_log_level(LogLevel::kWarn);
  const std::vector<std::byte> batch = batch_of(s.batch_records);
  std::printf("weft-cluster-bench: %zu MiB of 1 KiB records in %d-record batches (%zu bytes each), %s log writes\n", s.mib,
              s.batch_records, batch.size(), s.direct_io ? "direct" : "buffered");

  const Throughput alone = single_node(s, batch);
  std::printf("  single node, log written (acks=1)        %8.1f MB/s, %.2f cpu-s per GB\n", alone.bytes_per_second / 1e6,
              alone.cpu_seconds_per_gb);

  Cluster cluster;
  cluster.start(3, s);
  TopicConfig config = topic_config();
  (void)cluster.live()->cluster->create_topic("bench", 1, 3, config);
  std::optional<Producer> producer = cluster.ready("bench", 3);
  if (!producer) {
    std::printf("  replication factor 3: the partition never had 3 in-sync replicas\n");
    return 1;
  }
  BenchNode* leader = cluster.leader_of("bench");
  const std::size_t batches = s.mib * (std::size_t{1} << 20) / batch.size();
  auto start = Clock::now();
  const double cpu_start = cpu_seconds();
  Offset last{0};
  for (std::size_t i = 0; i < batches; ++i) last = offer(*producer, batch) + s.batch_records;
  while (cluster.high_watermark(*leader, "bench") < last) std::this_thread::sleep_for(std::chrono::microseconds(50));
  const double bytes = static_cast<double>(batches * batch.size());
  const double replicated = bytes / std::chrono::duration<double>(Clock::now() - start).count();
  std::printf("  replication factor 3, acks=all            %8.1f MB/s  (%.2f of a single node), %.2f cpu-s per GB\n", replicated / 1e6,
              replicated / alone.bytes_per_second, (cpu_seconds() - cpu_start) / (bytes / 1e9));
  producer.reset();

  // acks=all latency at a paced rate, one record per batch.
  (void)cluster.live()->cluster->create_topic("paced", 1, 3, config);
  std::optional<Producer> paced = cluster.ready("paced", 3);
  BenchNode* paced_leader = cluster.leader_of("paced");
  if (!paced || paced_leader == nullptr) return 1;
  const std::vector<std::byte> one = batch_of(1);
  LatencyHistogram latency;
  const auto records = static_cast<std::size_t>(s.rate * s.seconds);
  const auto interval = std::chrono::nanoseconds(static_cast<std::int64_t>(1e9 / s.rate));
  auto next = Clock::now();
  for (std::size_t i = 0; i < records; ++i) {
    next += interval;
    while (Clock::now() < next) std::this_thread::sleep_for(std::chrono::microseconds(20));
    const auto sent = Clock::now();
    const Offset end = offer(*paced, one) + 1;
    // As the Kafka listener does after an append: the followers and the leader's log now.
    paced_leader->cluster->records_committed();
    paced_leader->node->hurry();
    // A short sleep, not a spin: on two cores a spinning waiter would take the CPU the nodes'
    // threads need (a Kafka client's acks=all waits parked, too).
    while (cluster.high_watermark(*paced_leader, "paced") < end) std::this_thread::sleep_for(std::chrono::microseconds(5));
    latency.record(static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - sent).count()));
  }
  std::printf("  acks=all latency at %.0f records/s, %zu records: p50 %.0f us, p99 %.0f us, p99.9 %.0f us, max %.0f us\n", s.rate, records,
              static_cast<double>(latency.percentile(0.50)) / 1e3, static_cast<double>(latency.percentile(0.99)) / 1e3,
              static_cast<double>(latency.percentile(0.999)) / 1e3, static_cast<double>(latency.percentile(1.0)) / 1e3);
  paced.reset();

  // Failover: the leader of "bench" goes without a word.
  const NodeId old_leader = leader->cluster->id();
  const auto killed = Clock::now();
  leader->cluster.reset();
  leader->node.reset();
  std::optional<Producer> after = cluster.ready("bench", 2);
  BenchNode* new_leader = cluster.leader_of("bench");
  if (!after || new_leader == nullptr) {
    std::printf("  failover: no new leader within 20 s\n");
    return 1;
  }
  const Offset end = offer(*after, one) + 1;
  while (cluster.high_watermark(*new_leader, "bench") < end) std::this_thread::sleep_for(std::chrono::microseconds(50));
  std::printf("  failover: node %d dropped; node %d acknowledged a write (acks=all) %.0f ms later (lease TTL 1 s)\n", old_leader,
              new_leader->cluster->id(), std::chrono::duration<double, std::milli>(Clock::now() - killed).count());
  after.reset();
  return 0;
}
