// A node cut off from its cluster by its network link: node 3 runs in a network namespace the
// test makes, joined to the others by a veth pair. As a follower, setting the veth down takes it
// out of the in-sync sets while acks=all writes go on, and after the link comes back it catches
// up and rejoins them with every record. As a leader, it takes acks=1 writes while cut off that
// no one else has; when it returns it truncates that divergent tail to the new leader's epoch
// boundary (Kafka's leader-epoch rule) and holds exactly the new leader's log. Needs root and iproute2 (skipped, saying why, otherwise);
// the namespace and the veth are the test's own and are removed at the end; every process is
// stopped by pid; every wait is bounded.
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "../etcd_server.h"
#include "../temp_dir.h"
#include "../tools/process.h"
#include "weft/fabric/cluster.h"
#include "weft/storage/etcd_metadata_store.h"

namespace {

using Clock = std::chrono::steady_clock;
using weft::test::Background;
using weft::test::Output;
using weft::test::read_file;
using weft::test::run;
using weft::test::tail;
using weft::test::TempDir;

constexpr const char* kIp = "/usr/sbin/ip";
constexpr const char* kKcat = "/usr/bin/kcat";
constexpr int kNodes = 3;
constexpr int kPartitions = 3;

class NodeCutOff : public ::testing::Test {
 protected:
  void SetUp() override {
    if (geteuid() != 0) GTEST_SKIP() << "network namespaces need root";
    if (access(kIp, X_OK) != 0) GTEST_SKIP() << kIp << " not found (Debian package iproute2)";
    if (access(kKcat, X_OK) != 0) GTEST_SKIP() << "kcat not found (Debian package kcat)";
    if (!weft::test::etcd_installed()) GTEST_SKIP() << "etcd: /usr/bin/etcd not found (Debian package etcd-server)";
    // Names and a /30 of our own, from the pid, so parallel runs do not meet.
    const int tag = static_cast<int>(getpid() % 10000);
    ns_ = "weft-cut-" + std::to_string(tag);
    host_veth_ = "wcut" + std::to_string(tag) + "a";
    ns_veth_ = "wcut" + std::to_string(tag) + "b";
    const int subnet = static_cast<int>(getpid() % 60) * 4;
    host_ip_ = "10.213." + std::to_string(getpid() / 60 % 250) + "." + std::to_string(subnet + 1);
    ns_ip_ = "10.213." + std::to_string(getpid() / 60 % 250) + "." + std::to_string(subnet + 2);
    const std::vector<std::vector<std::string>> setup = {
        {kIp, "netns", "add", ns_},
        {kIp, "link", "add", host_veth_, "type", "veth", "peer", "name", ns_veth_},
        {kIp, "link", "set", ns_veth_, "netns", ns_},
        {kIp, "addr", "add", host_ip_ + "/30", "dev", host_veth_},
        {kIp, "link", "set", host_veth_, "up"},
        {kIp, "netns", "exec", ns_, kIp, "addr", "add", ns_ip_ + "/30", "dev", ns_veth_},
        {kIp, "netns", "exec", ns_, kIp, "link", "set", ns_veth_, "up"},
        {kIp, "netns", "exec", ns_, kIp, "link", "set", "lo", "up"},
    };
    made_ = true;
    for (const auto& command : setup) {
      Output o = run(command);
      if (o.exit_code != 0) GTEST_SKIP() << "cannot make the test's network namespace (" << command[1] << " " << command[2] << "): " << o.err;
    }
    weft::test::EtcdServerOptions etcd_options;
    etcd_options.also_listen_on = {host_ip_};
    ASSERT_EQ(etcd_.start(dir_.path() + "/etcd", etcd_options), "");
    etcd_endpoint_ = "http://" + host_ip_ + ":" + std::to_string(etcd_.client_port());
    auto store = weft::storage::open_etcd_metadata_store(etcd_.endpoint());
    ASSERT_TRUE(store.ok()) << store.error().message;
    store_ = std::move(*store);
    // Every listener on a port picked here (one left to the kernel could take another node's).
    const std::vector<std::uint16_t> ports = weft::test::free_ports(3 * kNodes);
    ASSERT_EQ(ports.size(), static_cast<std::size_t>(3 * kNodes));
    for (int i = 0; i < kNodes; ++i) {
      kafka_port_[i] = ports[static_cast<std::size_t>(i)];
      metrics_port_[i] = ports[static_cast<std::size_t>(kNodes + i)];
      replication_port_[i] = ports[static_cast<std::size_t>(2 * kNodes + i)];
    }
  }

  void TearDown() override {
    for (auto& n : nodes_) n.reset();  // SIGKILL and reaped, by pid
    etcd_.stop();
    if (made_) {
      (void)run({kIp, "link", "del", host_veth_});  // takes its peer along
      (void)run({kIp, "netns", "del", ns_});
    }
  }

  std::string address(int id) const { return (id == kNodes ? ns_ip_ : host_ip_); }
  std::string kafka(int id) const { return address(id) + ":" + std::to_string(kafka_port_[id - 1]); }

  void start_node(int id) {
    const std::string prefix = dir_.path() + "/node" + std::to_string(id);
    log_[id - 1] = prefix + ".log";
    std::vector<std::string> args;
    if (id == kNodes) args = {kIp, "netns", "exec", ns_};  // exec's the daemon: the pid is weftd's
    const std::vector<std::string> daemon = {WEFTD_PATH, "--node-id", std::to_string(id), "--etcd", etcd_endpoint_,
                                             "--data-dir", prefix + ".data", "--socket", prefix + ".sock",
                                             "--kafka-listen", kafka(id), "--replication-listen", address(id) + ":" + std::to_string(replication_port_[id - 1]),
                                             "--metrics-listen", address(id) + ":" + std::to_string(metrics_port_[id - 1]),
                                             "--lease-ttl-s", "1", "--replica-lag-max-ms", "1000", "--etcd-timeout-ms", "500"};
    args.insert(args.end(), daemon.begin(), daemon.end());
    nodes_[id - 1] = std::make_unique<Background>(args, log_[id - 1]);
    const auto deadline = Clock::now() + std::chrono::seconds(20);
    while (nodes_[id - 1]->running() && Clock::now() < deadline) {
      if (read_file(log_[id - 1]).find("msg=\"weftd ready\"") != std::string::npos) return;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    FAIL() << "node " << id << " not ready within 20 s:\n" << tail(read_file(log_[id - 1]));
  }

  std::optional<weft::ClusterSnapshot> snapshot() {
    auto s = weft::read_cluster(*store_, "weft");
    if (!s.ok()) return std::nullopt;
    return std::move(*s);
  }

  bool wait_until(const std::function<bool(const weft::ClusterSnapshot&)>& done, int timeout_ms) {
    const auto deadline = Clock::now() + std::chrono::milliseconds(timeout_ms);
    while (Clock::now() < deadline) {
      if (auto s = snapshot(); s && done(*s)) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return false;
  }

  // The partition's log end on node `id`, from its metrics page (-1: not there).
  long long log_end(int id, int partition) {
    const std::string page =
        weft::test::http_request(static_cast<std::uint16_t>(metrics_port_[id - 1]), "GET", "/metrics", {}, 2000, address(id));
    const std::string key = "weft_replica_log_end_offset{topic=\"" + topic_ + "\",partition=\"" + std::to_string(partition) + "\"} ";
    const std::size_t at = page.find(key);
    return at == std::string::npos ? -1 : std::atoll(page.c_str() + at + key.size());
  }

  // Lines from..from+count-1 to the partition, through `bootstrap` (nodes 1 and 2 by default);
  // `inside`: from within node 3's namespace.
  // Waits (bounded, 10 s) until the leader and node 3 both report `expected` as the partition's
  // log end on their metrics pages, then checks both.
  void expect_log_ends(int leader, int partition, long long expected) {
    long long leader_end = -1, node3_end = -1;
    const auto deadline = Clock::now() + std::chrono::seconds(10);
    while (Clock::now() < deadline) {
      leader_end = log_end(leader, partition);
      node3_end = log_end(kNodes, partition);
      if (leader_end == expected && node3_end == expected) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    EXPECT_EQ(leader_end, expected) << logs();
    EXPECT_EQ(node3_end, expected) << logs();
  }

  Output produce(int partition, int from, int count, const std::string& acks = "all", std::string bootstrap = {}, bool inside = false) {
    std::string lines;
    for (int i = from; i < from + count; ++i) lines += std::to_string(i) + "\n";
    if (bootstrap.empty()) bootstrap = kafka(1) + "," + kafka(2);
    std::vector<std::string> args;
    if (inside) args = {kIp, "netns", "exec", ns_};
    const std::vector<std::string> kcat = {kKcat, "-b", bootstrap, "-P", "-t", topic_, "-p", std::to_string(partition), "-X", "acks=" + acks,
                                           "-X", "message.timeout.ms=30000", "-X", "topic.metadata.refresh.interval.ms=500"};
    args.insert(args.end(), kcat.begin(), kcat.end());
    return run(args, lines, 60'000);
  }

  void start_cluster_with_topic(const std::string& topic) {
    topic_ = topic;
    for (int id = 1; id <= kNodes; ++id) ASSERT_NO_FATAL_FAILURE(start_node(id));
    ASSERT_TRUE(wait_until([](const weft::ClusterSnapshot& s) { return s.nodes.size() == kNodes; }, 20'000)) << logs();
    Output created = run({WEFT_PATH, "topic", "create", topic, "--partitions", std::to_string(kPartitions), "--replication-factor", "3",
                          "--etcd", etcd_.endpoint()});
    ASSERT_EQ(created.exit_code, 0) << created.err;
    ASSERT_TRUE(wait_until([&](const weft::ClusterSnapshot& s) { return all_in_sync(s); }, 30'000)) << logs();
  }

  bool all_in_sync(const weft::ClusterSnapshot& s) const {
    int full = 0;
    for (const auto& [id, p] : s.partitions) full += id.topic == topic_ && p.leader >= 0 && p.isr.size() == kNodes ? 1 : 0;
    return full == kPartitions;
  }

  void set_link(bool up) { ASSERT_EQ(run({kIp, "link", "set", host_veth_, up ? "up" : "down"}).exit_code, 0); }

  std::string logs() const {
    std::string out;
    for (int i = 0; i < kNodes; ++i) out += "--- node " + std::to_string(i + 1) + "\n" + tail(read_file(log_[i]), 2500);
    return out;
  }

  TempDir dir_;
  std::string topic_ = "cut";
  bool made_ = false;
  std::string ns_, host_veth_, ns_veth_, host_ip_, ns_ip_;
  weft::test::EtcdServer etcd_;
  std::string etcd_endpoint_;
  std::unique_ptr<weft::MetadataStore> store_;
  int kafka_port_[kNodes] = {};
  int metrics_port_[kNodes] = {};
  int replication_port_[kNodes] = {};
  std::string log_[kNodes];
  std::unique_ptr<Background> nodes_[kNodes];
};

bool contains(const std::vector<weft::NodeId>& ids, weft::NodeId id) { return std::find(ids.begin(), ids.end(), id) != ids.end(); }

TEST_F(NodeCutOff, LeavesTheInSyncSetAndCatchesUpWhenItsLinkReturns) {
  // Given a topic whose partitions have three in-sync replicas, and one that node 3 follows
  ASSERT_NO_FATAL_FAILURE(start_cluster_with_topic("cut"));
  int followed = -1;
  const weft::ClusterSnapshot before = *snapshot();
  for (const auto& [id, p] : before.partitions)
    if (id.topic == "cut" && p.leader != kNodes) followed = static_cast<int>(id.partition);
  ASSERT_GE(followed, 0);
  Output first = produce(followed, 0, 200);
  ASSERT_EQ(first.exit_code, 0) << first.err << logs();

  // When node 3's link goes down
  ASSERT_NO_FATAL_FAILURE(set_link(false));
  const auto cut_at = Clock::now();
  // Then it leaves the partition's in-sync set, and acks=all writes go on without it
  const weft::PartitionId watched{"cut", static_cast<std::uint32_t>(followed)};
  ASSERT_TRUE(wait_until([&](const weft::ClusterSnapshot& s) {
    auto p = s.partitions.find(watched);
    return p != s.partitions.end() && p->second.leader >= 0 && !contains(p->second.isr, kNodes);
  }, 20'000)) << logs();
  std::printf("node 3 left the in-sync set %lld ms after its link went down\n",
              static_cast<long long>(std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - cut_at).count()));
  Output second = produce(followed, 200, 300);
  ASSERT_EQ(second.exit_code, 0) << second.err << logs();

  // When the link comes back, it catches up and rejoins every in-sync set
  ASSERT_NO_FATAL_FAILURE(set_link(true));
  const auto back_at = Clock::now();
  ASSERT_TRUE(wait_until([&](const weft::ClusterSnapshot& s) { return all_in_sync(s); }, 40'000)) << logs();
  std::printf("node 3 back in every in-sync set %lld ms after its link returned\n",
              static_cast<long long>(std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - back_at).count()));
  // And it holds every record the leader does (500 records written in 2 batches of lines)
  expect_log_ends(snapshot()->partitions.at(watched).leader, followed, 500);
}

TEST_F(NodeCutOff, AnIsolatedLeadersDivergentTailIsTruncatedWhenItReturns) {
  // Given a partition node 3 leads, with records every replica holds
  ASSERT_NO_FATAL_FAILURE(start_cluster_with_topic("div"));
  int led = -1;
  const weft::ClusterSnapshot before = *snapshot();
  std::int32_t epoch = 0;
  for (const auto& [id, p] : before.partitions)
    if (id.topic == "div" && p.leader == kNodes) {
      led = static_cast<int>(id.partition);
      epoch = p.leader_epoch;
    }
  ASSERT_GE(led, 0) << "the controller gave node 3 no partition to lead";
  Output first = produce(led, 0, 100, "all", kafka(kNodes));
  ASSERT_EQ(first.exit_code, 0) << first.err << logs();

  // When node 3 is cut off, still takes acks=1 writes from a client beside it (it cannot know it
  // lost the lead), and the others elect a new leader that takes acks=all writes
  ASSERT_NO_FATAL_FAILURE(set_link(false));
  Output stale = produce(led, 1000, 50, "1", kafka(kNodes), true);
  ASSERT_EQ(stale.exit_code, 0) << stale.err << logs();
  const weft::PartitionId watched{"div", static_cast<std::uint32_t>(led)};
  ASSERT_TRUE(wait_until([&](const weft::ClusterSnapshot& s) {
    auto p = s.partitions.find(watched);
    return p != s.partitions.end() && p->second.leader >= 0 && p->second.leader != kNodes && p->second.leader_epoch > epoch;
  }, 20'000)) << logs();
  Output fresh = produce(led, 100, 70);
  ASSERT_EQ(fresh.exit_code, 0) << fresh.err << logs();

  // Then, back on the network, node 3 cuts its divergent tail at the new epoch's start and holds
  // exactly the new leader's log; the partition serves none of the stale records
  ASSERT_NO_FATAL_FAILURE(set_link(true));
  ASSERT_TRUE(wait_until([&](const weft::ClusterSnapshot& s) { return all_in_sync(s); }, 40'000)) << logs();
  expect_log_ends(snapshot()->partitions.at(watched).leader, led, 170);
  EXPECT_NE(read_file(log_[kNodes - 1]).find("replica truncated to its leader's epoch boundary"), std::string::npos) << logs();
  Output read = run({kKcat, "-b", kafka(1) + "," + kafka(2), "-C", "-t", "div", "-p", std::to_string(led), "-o", "beginning", "-c", "170", "-q",
                     "-X", "topic.metadata.refresh.interval.ms=500"},
                    {}, 30'000);
  ASSERT_EQ(read.exit_code, 0) << read.err;
  std::string expected;
  for (int i = 0; i < 170; ++i) expected += std::to_string(i) + "\n";
  EXPECT_EQ(read.out, expected);
}

}  // namespace
