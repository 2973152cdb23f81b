// Three weftd processes in one cluster, their metadata in an etcd the test starts, Kafka clients
// against them: an acks=all producer and a consumer group member carry on while the partition's
// leader is SIGKILLed again and again (every acknowledged record is there once), and a leader
// stopped with SIGTERM hands its leadership over before it exits. Every process is stopped by
// pid; every wait is bounded. Skipped, saying why, without etcd, kcat or confluent-kafka.
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "../etcd_server.h"
#include "../temp_dir.h"
#include "../tools/process.h"
#include "kafka_client.h"
#include "weft/fabric/cluster.h"
#include "weft/storage/etcd_metadata_store.h"

namespace {

using Clock = std::chrono::steady_clock;
using weft::test::Background;
using weft::test::can_connect;
using weft::test::read_file;
using weft::test::tail;
using weft::test::Output;
using weft::test::run;
using weft::test::TempDir;

constexpr const char* kPython = "/usr/bin/python3";
constexpr int kNodes = 3;

class KafkaCluster : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!weft::test::etcd_installed()) GTEST_SKIP() << "etcd: /usr/bin/etcd not found (Debian package etcd-server; scripts/setup.sh installs it)";
    ASSERT_EQ(etcd_.start(dir_.path() + "/etcd"), "");
    auto store = weft::storage::open_etcd_metadata_store(etcd_.endpoint());
    ASSERT_TRUE(store.ok()) << store.error().message;
    store_ = std::move(*store);
    // Every listener on a port picked here: a replication listener left to the kernel's choice
    // once took another node's Kafka port, free between this pick and that node's start.
    const std::vector<std::uint16_t> ports = weft::test::free_ports(3 * kNodes);
    ASSERT_EQ(ports.size(), static_cast<std::size_t>(3 * kNodes));
    for (int i = 0; i < kNodes; ++i) {
      nodes_[i].kafka_port = ports[static_cast<std::size_t>(i)];
      nodes_[i].metrics_port = ports[static_cast<std::size_t>(kNodes + i)];
      nodes_[i].replication_port = ports[static_cast<std::size_t>(2 * kNodes + i)];
    }
  }

  void TearDown() override {
    for (Node& n : nodes_) n.process.reset();  // SIGKILL and reaped, by pid
    etcd_.stop();
  }

  struct Node {
    int kafka_port = 0;
    int metrics_port = 0;
    int replication_port = 0;
    int starts = 0;
    std::string log_path;
    std::unique_ptr<Background> process;
  };

  std::string bootstrap() const {
    std::string out;
    for (const Node& n : nodes_) out += (out.empty() ? "" : ",") + std::string("127.0.0.1:") + std::to_string(n.kafka_port);
    return out;
  }

  // Node ids are 1..3; its data directory survives restarts.
  void start_node(int id) {
    Node& n = nodes_[id - 1];
    n.log_path = dir_.path() + "/node" + std::to_string(id) + "." + std::to_string(++n.starts) + ".log";
    const std::string prefix = dir_.path() + "/node" + std::to_string(id);
    // The nodes share a replication secret, so every link here begins with the handshake.
    const std::string secret = dir_.path() + "/replication.secret";
    if (!std::filesystem::exists(secret)) {
      std::ofstream(secret) << "the test cluster's secret\n";
      std::filesystem::permissions(secret, std::filesystem::perms::owner_read | std::filesystem::perms::owner_write);
    }
    n.process = std::make_unique<Background>(
        std::vector<std::string>{WEFTD_PATH, "--node-id", std::to_string(id), "--etcd", etcd_.endpoint(), "--data-dir", prefix + ".data",
                                 "--socket", prefix + ".sock", "--kafka-listen", "127.0.0.1:" + std::to_string(n.kafka_port),
                                 "--metrics-listen", "127.0.0.1:" + std::to_string(n.metrics_port),
                                 "--replication-listen", "127.0.0.1:" + std::to_string(n.replication_port), "--replication-secret-file", secret,
                                 "--default-replication-factor", "3", "--lease-ttl-s", "1", "--kafka-initial-rebalance-delay-ms", "0",
                                 "--log-level", "info"},
        n.log_path);
    const auto deadline = Clock::now() + std::chrono::seconds(20);
    while (n.process->running() && Clock::now() < deadline) {
      if (read_file(n.log_path).find("msg=\"weftd ready\"") != std::string::npos && can_connect(n.kafka_port)) return;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    FAIL() << "weftd node " << id << " not ready within 20 s; its log:\n" << tail(read_file(n.log_path));
  }

  void start_cluster() {
    for (int id = 1; id <= kNodes; ++id) ASSERT_NO_FATAL_FAILURE(start_node(id));
    // Every node registered, so topics get all their replicas.
    const auto deadline = Clock::now() + std::chrono::seconds(20);
    for (;;) {
      auto nodes = store_->list("/weft/weft/nodes/");
      if (nodes.ok() && nodes->kvs.size() == static_cast<std::size_t>(kNodes)) return;
      ASSERT_LT(Clock::now(), deadline) << "not every node registered in etcd within 20 s\n" << logs();
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  }

  // The partition's state in etcd, as the controller wrote it.
  std::optional<weft::PartitionState> partition(const std::string& topic) {
    auto got = store_->get("/weft/weft/partitions/" + topic + "/0");
    if (!got.ok() || !got->has_value()) return std::nullopt;
    auto state = weft::decode_partition((*got)->value);
    if (!state.ok()) return std::nullopt;
    return *state;
  }

  // Waits (bounded) until `ready` holds for the partition's state; the last state seen.
  std::optional<weft::PartitionState> wait_for(const std::string& topic, const std::function<bool(const weft::PartitionState&)>& ready,
                                               int timeout_ms) {
    const auto deadline = Clock::now() + std::chrono::milliseconds(timeout_ms);
    std::optional<weft::PartitionState> state;
    while (Clock::now() < deadline) {
      state = partition(topic);
      if (state && ready(*state)) return state;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return std::nullopt;
  }

  std::string logs() const {
    std::string out;
    for (int i = 0; i < kNodes; ++i) out += "--- node " + std::to_string(i + 1) + " (" + nodes_[i].log_path + ")\n" + tail(read_file(nodes_[i].log_path), 3000);
    return out;
  }

  TempDir dir_;
  weft::test::EtcdServer etcd_;
  std::unique_ptr<weft::MetadataStore> store_;
  Node nodes_[kNodes];
};

bool full_isr(const weft::PartitionState& s) { return s.leader >= 0 && s.isr.size() == static_cast<std::size_t>(kNodes); }

TEST_F(KafkaCluster, AcknowledgedRecordsSurviveRepeatedLeaderKills) {
  if (access(kPython, X_OK) != 0 || run({kPython, "-c", "import confluent_kafka"}).exit_code != 0)
    GTEST_SKIP() << kPython << " cannot import confluent_kafka (Debian package python3-confluent-kafka)";
  ASSERT_NO_FATAL_FAILURE(start_cluster());

  // Given a client producing with acks=all and a group member consuming, on a topic with three replicas
  const std::string stop_file = dir_.path() + "/stop";
  const std::string client_log = dir_.path() + "/client.log";
  Background client({kPython, "-u", "-B", std::string(KAFKA_COMPAT_SCRIPTS_DIR) + "/cluster_failover.py", bootstrap(), "failover", stop_file},
                    client_log);
  const auto ready_by = Clock::now() + std::chrono::seconds(60);
  while (read_file(client_log).find("READY") == std::string::npos && client.running() && Clock::now() < ready_by)
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  ASSERT_NE(read_file(client_log).find("READY"), std::string::npos) << tail(read_file(client_log)) << logs();

  // When the leader is SIGKILLed three times, each time after the killed one came back in sync
  for (int round = 0; round < 3; ++round) {
    std::optional<weft::PartitionState> before = wait_for("failover", full_isr, 30'000);
    ASSERT_TRUE(before) << "round " << round << ": no full in-sync set within 30 s\n" << logs();
    std::this_thread::sleep_for(std::chrono::milliseconds(700));  // records flow under this leader
    const weft::NodeId killed = before->leader;
    ASSERT_GE(killed, 1);
    ASSERT_LE(killed, kNodes);
    const auto kill_time = Clock::now();
    nodes_[killed - 1].process->stop(SIGKILL);
    std::optional<weft::PartitionState> after = wait_for(
        "failover", [&](const weft::PartitionState& s) { return s.leader >= 0 && s.leader != killed; }, 15'000);
    ASSERT_TRUE(after) << "round " << round << ": no new leader within 15 s of killing node " << killed << "\n" << logs();
    EXPECT_GT(after->leader_epoch, before->leader_epoch);
    std::printf("round %d: killed leader %d, node %d leads at epoch %d after %lld ms\n", round, killed, after->leader,
                after->leader_epoch,
                static_cast<long long>(std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - kill_time).count()));
    ASSERT_NO_FATAL_FAILURE(start_node(killed));
  }
  ASSERT_TRUE(wait_for("failover", full_isr, 30'000)) << logs();

  // Then every acknowledged record is in the partition once, and the group member saw them all
  { std::ofstream(stop_file) << "stop\n"; }
  const auto done_by = Clock::now() + std::chrono::seconds(200);
  while (client.running() && Clock::now() < done_by) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  const int exit_code = client.running() ? client.stop(SIGKILL) : client.exit_code();
  const std::string out = read_file(client_log);
  EXPECT_EQ(exit_code, 0) << tail(out) << logs();
  ASSERT_NE(out.find("\nOK "), std::string::npos) << tail(out);
  std::printf("%s", out.substr(out.rfind("OK ")).c_str());

  // And the group's committed offset outlives its coordinator: with the node that took the last
  // commit (the group member's, as it closed) SIGKILLed and another with it, a new member of the
  // group asks the one left and is told that offset, one past every record
  const long long sent = std::stoll(out.substr(out.rfind("OK sent=") + 8));
  weft::test::KafkaClient asking(static_cast<std::uint16_t>(nodes_[0].kafka_port));
  weft::kafka::Writer find;
  find.string("failover-group", false);
  std::optional<std::string> found = asking.call(10, 0, false, find.buffer());  // FindCoordinator v0
  ASSERT_TRUE(found) << logs();
  weft::kafka::Reader r(weft::test::as_bytes(*found));
  ASSERT_EQ(r.i16(), 0);
  const int coordinator = r.i32();
  ASSERT_GE(coordinator, 1);
  ASSERT_LE(coordinator, kNodes);
  const int kept = coordinator == kNodes ? 1 : kNodes;
  for (int id = 1; id <= kNodes; ++id)
    if (id != kept) nodes_[id - 1].process->stop(SIGKILL);
  const std::string survivor = "127.0.0.1:" + std::to_string(nodes_[kept - 1].kafka_port);
  Output asked = run({kPython, "-u", "-B", std::string(KAFKA_COMPAT_SCRIPTS_DIR) + "/cluster_failover.py", "--committed", survivor, "failover",
                      "failover-group"},
                     {}, 90'000);
  ASSERT_EQ(asked.exit_code, 0) << asked.out << asked.err << logs();
  const std::size_t at = asked.out.rfind("COMMITTED ");
  ASSERT_NE(at, std::string::npos) << asked.out;
  EXPECT_EQ(std::stoll(asked.out.substr(at + 10)), sent) << asked.out;
}

TEST_F(KafkaCluster, CleanShutdownMovesLeadershipBeforeExit) {
  const std::string kcat = access("/usr/bin/kcat", X_OK) == 0 ? "/usr/bin/kcat" : "";
  if (kcat.empty()) GTEST_SKIP() << "kcat not found (Debian package kcat)";
  ASSERT_NO_FATAL_FAILURE(start_cluster());
  // Given a topic with three in-sync replicas and records acknowledged by all of them
  const std::string lines = "one\ntwo\nthree\n";
  Output produced = run({kcat, "-b", bootstrap(), "-P", "-t", "drained", "-X", "acks=all", "-X", "message.timeout.ms=20000"}, lines, 30'000);
  ASSERT_EQ(produced.exit_code, 0) << produced.err << logs();
  std::optional<weft::PartitionState> before = wait_for("drained", full_isr, 30'000);
  ASSERT_TRUE(before) << logs();

  // When its leader gets SIGTERM
  const weft::NodeId leader = before->leader;
  const int exit_code = nodes_[leader - 1].process->stop(SIGTERM, 20'000);

  // Then it exits cleanly, having handed leadership to another in-sync replica first
  EXPECT_EQ(exit_code, 0) << tail(read_file(nodes_[leader - 1].log_path));
  const std::string leader_log = read_file(nodes_[leader - 1].log_path);
  EXPECT_NE(leader_log.find("msg=\"cluster: leadership moved off this node\""), std::string::npos) << tail(leader_log);
  std::optional<weft::PartitionState> after = partition("drained");
  ASSERT_TRUE(after);
  EXPECT_NE(after->leader, leader);
  EXPECT_GE(after->leader, 1);
  EXPECT_GT(after->leader_epoch, before->leader_epoch);
  // And the records are served by the new leader
  std::string others;
  for (int id = 1; id <= kNodes; ++id)
    if (id != leader) others += (others.empty() ? "" : ",") + std::string("127.0.0.1:") + std::to_string(nodes_[id - 1].kafka_port);
  Output consumed = run({kcat, "-b", others, "-C", "-t", "drained", "-o", "beginning", "-c", "3", "-q"}, {}, 30'000);
  EXPECT_EQ(consumed.exit_code, 0) << consumed.err << logs();
  EXPECT_EQ(consumed.out, lines);
}

TEST_F(KafkaCluster, CliCreatesReassignsAndReportsReplicatedTopics) {
  ASSERT_NO_FATAL_FAILURE(start_cluster());
  auto weft = [&](std::vector<std::string> args) {
    args.insert(args.begin(), WEFT_PATH);
    args.insert(args.end(), {"--etcd", etcd_.endpoint()});
    return run(args, {}, 30'000);
  };
  // A topic with two partitions of two replicas each, created in etcd
  Output created = weft({"topic", "create", "ops", "--partitions", "2", "--replication-factor", "2"});
  ASSERT_EQ(created.exit_code, 0) << created.out << created.err;
  auto two_in_sync = [](const weft::PartitionState& s) { return s.leader >= 0 && s.isr.size() == 2; };
  ASSERT_TRUE(wait_for("ops", two_in_sync, 20'000)) << logs();
  // More replicas than live nodes is refused, saying why
  Output too_many = weft({"topic", "create", "wide", "--replication-factor", "4"});
  EXPECT_EQ(too_many.exit_code, 2);
  EXPECT_NE(too_many.err.find("needs that many live nodes"), std::string::npos) << too_many.err;
  Output listed = weft({"topic", "list"});
  EXPECT_EQ(listed.exit_code, 0);
  EXPECT_NE(listed.out.find("ops\tpartitions=2 replication=2"), std::string::npos) << listed.out;

  // Reassigning partition 0 to all three nodes: the controller carries it out
  Output reassigned = weft({"partition", "reassign", "ops", "0", "--replicas", "3,1,2"});
  ASSERT_EQ(reassigned.exit_code, 0) << reassigned.err;
  ASSERT_TRUE(wait_for("ops", [](const weft::PartitionState& s) { return s.replicas == std::vector<weft::NodeId>{3, 1, 2} && s.isr.size() == 3; },
                       20'000))
      << logs();
  Output unknown = weft({"partition", "reassign", "ops", "0", "--replicas", "1,7"});
  EXPECT_EQ(unknown.exit_code, 2);
  EXPECT_NE(unknown.err.find("node 7 is not a live node"), std::string::npos) << unknown.err;

  // Status names every node, the controller, and each partition's leader, in-sync set and lag
  // (read from the leader's metrics page, which knows a follower's lag once that follower's
  // stream reached the leader the reassignment may just have made: asked again, bounded, until then)
  Output status;
  for (int attempt = 0; attempt < 100; ++attempt) {
    status = weft({"cluster", "status"});
    if (status.exit_code != 0 || status.out.find('?') == std::string::npos) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  EXPECT_EQ(status.exit_code, 0) << status.err;
  EXPECT_NE(status.out.find("3 live nodes"), std::string::npos) << status.out;
  EXPECT_NE(status.out.find("0 under-replicated, 0 offline"), std::string::npos) << status.out;
  std::istringstream lines(status.out);
  std::string line;
  int partition_lines = 0;
  while (std::getline(lines, line)) {
    if (!line.starts_with("ops ")) continue;
    ++partition_lines;
    EXPECT_EQ(line.find('?'), std::string::npos) << "lag unknown: " << line;
  }
  EXPECT_EQ(partition_lines, 2) << status.out;

  // Through a node's local socket too: the topic is the cluster's, with the factor asked for
  Output via_socket = run({WEFT_PATH, "--socket", dir_.path() + "/node2.sock", "topic", "create", "local", "--partitions", "2",
                           "--replication-factor", "3"},
                          {}, 30'000);
  ASSERT_EQ(via_socket.exit_code, 0) << via_socket.out << via_socket.err;
  ASSERT_TRUE(wait_for("local", full_isr, 20'000)) << logs();
  Output too_wide = run({WEFT_PATH, "--socket", dir_.path() + "/node2.sock", "topic", "create", "wider", "--replication-factor", "4"}, {}, 30'000);
  EXPECT_NE(too_wide.exit_code, 0);
  EXPECT_NE(too_wide.err.find("needs that many live nodes"), std::string::npos) << too_wide.err;

  // Local producers on every node write to both partitions, whichever node leads each: the
  // client library sends to the leader's listener where it does not lead here
  std::set<std::string> sent;
  for (int node = 1; node <= kNodes; ++node) {
    for (int partition = 0; partition < 2; ++partition) {
      std::string input;
      for (int i = 0; i < 10; ++i) {
        const std::string value = "n" + std::to_string(node) + "p" + std::to_string(partition) + "r" + std::to_string(i);
        input += value + "\n";
        sent.insert(value);
      }
      Output produced = run({WEFT_PATH, "--socket", dir_.path() + "/node" + std::to_string(node) + ".sock", "produce", "local", "--partition",
                             std::to_string(partition), "--acks", "all"},
                            input, 30'000);
      ASSERT_EQ(produced.exit_code, 0) << "node " << node << " partition " << partition << ": " << produced.err;
    }
  }
  Output consumed = run({WEFT_PATH, "consume", "local", "--bootstrap", bootstrap(), "--from", "earliest", "--count", "60", "--timeout-ms", "20000"}, {},
                        40'000);
  ASSERT_EQ(consumed.exit_code, 0) << consumed.err;
  std::istringstream got_lines(consumed.out);
  std::multiset<std::string> got;
  for (std::string value; std::getline(got_lines, value);) got.insert(value);
  EXPECT_EQ(got, std::multiset<std::string>(sent.begin(), sent.end()));
  // Over the network too, fewer records than --count before the timeout is an error (exit 4).
  Output short_count = run({WEFT_PATH, "consume", "local", "--bootstrap", bootstrap(), "--from", "earliest", "--count", "61", "--timeout-ms", "1000"},
                           {}, 40'000);
  EXPECT_EQ(short_count.exit_code, 4) << short_count.err;
  EXPECT_NE(short_count.err.find("60 of the 61 records asked for"), std::string::npos) << short_count.err;

  Output deleted = weft({"topic", "delete", "ops"});
  EXPECT_EQ(deleted.exit_code, 0) << deleted.err;
  auto record = store_->get("/weft/weft/topics/ops");
  ASSERT_TRUE(record.ok());
  EXPECT_FALSE(record->has_value()) << "the topic's record is still in etcd";
}

}  // namespace
