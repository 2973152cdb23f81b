// Runs the real weftd and weft binaries: a node started by the test (stopped by pid), topics,
// produce and consume through the CLI, the daemon's config and refusals, and weft perf.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/un.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <string>
#include <thread>

#include "../loopback.h"
#include "process.h"
#include "weft/fabric/record_batch.h"
#include "weft/storage/segment.h"

namespace {

using weft::test::Background;
using weft::test::Output;
using weft::test::read_file;
using weft::test::run;

bool can_connect(const std::string& path) {
  const int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, path.c_str(), sizeof(addr.sun_path) - 1);
  const bool ok = connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
  close(fd);
  return ok;
}

std::set<std::string> lines_of(const std::string& text) {
  std::set<std::string> lines;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) lines.insert(line);
  return lines;
}

class Cli : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/weft-cli-test-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    socket_ = dir_ + "/weftd.sock";
  }
  void TearDown() override {
    node_.reset();
    std::system(("rm -rf " + dir_).c_str());
  }
  // Starts weftd and waits (bounded) until it accepts connections.
  void start_node(std::vector<std::string> extra = {}) {
    std::vector<std::string> args{WEFTD_PATH, "--socket", socket_, "--data-dir", dir_ + "/data", "--log-level", "debug", "--kafka-listen", "127.0.0.1:0",
                                  "--metrics-listen", "127.0.0.1:0"};
    args.insert(args.end(), extra.begin(), extra.end());
    node_ = std::make_unique<Background>(args, dir_ + "/weftd.log");
    for (int i = 0; i < 500 && !can_connect(socket_); ++i) {
      ASSERT_TRUE(node_->running()) << "weftd exited: " << read_file(dir_ + "/weftd.log");
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    ASSERT_TRUE(can_connect(socket_)) << read_file(dir_ + "/weftd.log");
  }
  Output weft(std::vector<std::string> args, const std::string& input = {}) {
    args.insert(args.begin(), {WEFT_PATH, "--socket", socket_});
    return run(args, input);
  }
  std::string dir_;
  std::string socket_;
  std::unique_ptr<Background> node_;
};

TEST_F(Cli, TopicLifecycleProduceAndConsume) {
  start_node();
  Output created = weft({"topic", "create", "events", "--partitions", "3"});
  ASSERT_EQ(created.exit_code, 0) << created.err;
  EXPECT_NE(created.out.find("created topic events with 3 partitions"), std::string::npos);
  Output listed = weft({"topic", "list"});
  EXPECT_EQ(listed.exit_code, 0);
  EXPECT_EQ(listed.out, "events\n");

  const std::string input = "alice:signed in\nbob:clicked buy\nno key here\ncarol:left\n";
  Output produced = weft({"produce", "events", "--key-sep", ":"}, input);
  ASSERT_EQ(produced.exit_code, 0) << produced.err;
  EXPECT_NE(produced.err.find("sent 4 records"), std::string::npos);

  Output consumed = weft({"consume", "events", "--from", "earliest", "--count", "4", "--timeout-ms", "5000", "--format", "key-value"});
  ASSERT_EQ(consumed.exit_code, 0) << consumed.err;
  EXPECT_EQ(lines_of(consumed.out), (std::set<std::string>{"alice\tsigned in", "bob\tclicked buy", "\tno key here", "carol\tleft"}));

  Output json = weft({"consume", "events", "--from", "earliest", "--count", "4", "--timeout-ms", "5000", "--format", "json"});
  ASSERT_EQ(json.exit_code, 0) << json.err;
  EXPECT_NE(json.out.find("\"key\":\"alice\",\"value\":\"signed in\""), std::string::npos);
  EXPECT_NE(json.out.find("\"key\":null,\"value\":\"no key here\""), std::string::npos);

  Output described = weft({"topic", "describe", "events"});
  ASSERT_EQ(described.exit_code, 0);
  EXPECT_NE(described.out.find("partitions 3"), std::string::npos);

  Output status = weft({"status"});
  ASSERT_EQ(status.exit_code, 0);
  EXPECT_NE(status.out.find("events"), std::string::npos);

  Output deleted = weft({"topic", "delete", "events"});
  EXPECT_EQ(deleted.exit_code, 0);
  EXPECT_EQ(weft({"topic", "list"}).out, "");
}

TEST_F(Cli, AGroupCarriesOnWhereItsLastConsumerStoppedAcrossRestarts) {
  start_node();
  ASSERT_EQ(weft({"topic", "create", "jobs", "--partitions", "1"}).exit_code, 0);
  ASSERT_EQ(weft({"produce", "jobs"}, "a\nb\nc\nd\ne\n").exit_code, 0);
  // Given a group that read three records from the start
  Output first = weft({"consume", "jobs", "--group", "billing", "--from", "earliest", "--count", "3", "--timeout-ms", "5000"});
  ASSERT_EQ(first.exit_code, 0) << first.err;
  EXPECT_EQ(first.out, "a\nb\nc\n");
  // When the node restarts
  EXPECT_EQ(node_->stop(SIGTERM), 0);
  start_node();
  // Expect the group to carry on at the fourth, and another group to start afresh
  Output second = weft({"consume", "jobs", "--group", "billing", "--from", "earliest", "--count", "2", "--timeout-ms", "5000"});
  ASSERT_EQ(second.exit_code, 0) << second.err;
  EXPECT_EQ(second.out, "d\ne\n");
  Output other = weft({"consume", "jobs", "--group", "audit", "--from", "earliest", "--count", "1", "--timeout-ms", "5000"});
  EXPECT_EQ(other.out, "a\n");
}

TEST_F(Cli, AGroupCommitsOnlyTheRecordsThatReachedStdout) {
  start_node();
  ASSERT_EQ(weft({"topic", "create", "jobs", "--partitions", "1"}).exit_code, 0);
  ASSERT_EQ(weft({"produce", "jobs"}, "a\nb\nc\nd\ne\n").exit_code, 0);
  // When a group's consumer prints to an output that takes nothing (a full disk)
  Output full = run({"/bin/sh", "-c",
                     std::string("exec ") + WEFT_PATH + " --socket " + socket_ +
                         " consume jobs --group billing --from earliest --count 5 --timeout-ms 5000 > /dev/full"});
  // Expect it to fail saying so (before, it went on, committed every record and exited 0)
  EXPECT_EQ(full.exit_code, 1) << full.err;
  EXPECT_NE(full.err.find("No space left on device"), std::string::npos) << full.err;
  // And the group to start again at the first record: nothing it did not deliver was committed
  Output again = weft({"consume", "jobs", "--group", "billing", "--from", "earliest", "--count", "1", "--timeout-ms", "5000"});
  ASSERT_EQ(again.exit_code, 0) << again.err;
  EXPECT_EQ(again.out, "a\n");
}

TEST_F(Cli, ConsumeFromOffsetTimestampAndLatest) {
  start_node();
  ASSERT_EQ(weft({"topic", "create", "log", "--partitions", "1"}).exit_code, 0);
  ASSERT_EQ(weft({"produce", "log"}, "one\ntwo\nthree\n").exit_code, 0);
  Output from_offset = weft({"consume", "log", "--from", "1", "--count", "2", "--timeout-ms", "5000"});
  EXPECT_EQ(from_offset.out, "two\nthree\n");
  // Every record so far is older than now + 1 minute: nothing until a new one arrives.
  const auto later = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch()).count() + 60'000;
  Output none = weft({"consume", "log", "--from", "@" + std::to_string(later), "--timeout-ms", "300"});
  EXPECT_EQ(none.exit_code, 0);
  EXPECT_EQ(none.out, "");
  Output from_time = weft({"consume", "log", "--from", "@0", "--count", "3", "--timeout-ms", "5000"});
  EXPECT_EQ(from_time.out, "one\ntwo\nthree\n");
  Output latest = weft({"consume", "log", "--from", "latest", "--timeout-ms", "300"});
  EXPECT_EQ(latest.out, "");
  // Asked for more than come before the timeout: what came is printed, and the exit says so.
  Output short_count = weft({"consume", "log", "--from", "earliest", "--count", "5", "--timeout-ms", "300"});
  EXPECT_EQ(short_count.out, "one\ntwo\nthree\n");
  EXPECT_EQ(short_count.exit_code, 4);
  EXPECT_NE(short_count.err.find("3 of the 5 records asked for"), std::string::npos) << short_count.err;
  Output from_file = weft({"produce", "log", "--file", "/dev/null"});
  EXPECT_EQ(from_file.exit_code, 0);
}

TEST_F(Cli, ErrorsSayWhatToDo) {
  start_node();
  Output no_topic = weft({"consume", "missing", "--timeout-ms", "100"});
  EXPECT_EQ(no_topic.exit_code, 3);
  EXPECT_NE(no_topic.err.find("topic 'missing' does not exist"), std::string::npos) << no_topic.err;
  ASSERT_EQ(weft({"topic", "create", "t"}).exit_code, 0);
  Output duplicate = weft({"topic", "create", "t"});
  EXPECT_NE(duplicate.exit_code, 0);
  EXPECT_NE(duplicate.err.find("already exists"), std::string::npos);
  Output bad_name = weft({"topic", "create", "bad/name"});
  EXPECT_EQ(bad_name.exit_code, 2);
  Output bad_config = weft({"topic", "create", "t2", "--config", "ring.capacity.bytes=1000"});
  EXPECT_EQ(bad_config.exit_code, 2);
  EXPECT_NE(bad_config.err.find("power of two"), std::string::npos) << bad_config.err;
  Output replicated = weft({"topic", "create", "t3", "--replication-factor", "3"});
  EXPECT_EQ(replicated.exit_code, 2);
  EXPECT_NE(replicated.err.find("needs a cluster"), std::string::npos) << replicated.err;
  Output bad_from = weft({"consume", "t", "--from", "yesterday"});
  EXPECT_EQ(bad_from.exit_code, 2);
  Output bad_group = weft({"consume", "t", "--group", "no/slash", "--timeout-ms", "100"});
  EXPECT_NE(bad_group.exit_code, 0);
  EXPECT_NE(bad_group.err.find("group"), std::string::npos) << bad_group.err;
  Output help = weft({"produce", "--help"});
  EXPECT_EQ(help.exit_code, 0);
  EXPECT_NE(help.out.find("--key-sep"), std::string::npos);

  Output no_node = run({WEFT_PATH, "--socket", dir_ + "/nobody.sock", "topic", "list"});
  EXPECT_EQ(no_node.exit_code, 4);
  EXPECT_NE(no_node.err.find("no weft node is running"), std::string::npos) << no_node.err;
}

TEST_F(Cli, DaemonRefusesADataDirectoryOfAnotherLayout) {
  std::filesystem::create_directories(dir_ + "/future");
  std::ofstream(dir_ + "/future/weft-data-version") << "weft data directory, layout 99\n";
  Output refused = run({WEFTD_PATH, "--socket", dir_ + "/future.sock", "--data-dir", dir_ + "/future", "--kafka-listen", "127.0.0.1:0"}, {}, 5000);
  EXPECT_EQ(refused.exit_code, 1);
  EXPECT_NE(refused.err.find("layout 99"), std::string::npos) << refused.err;
  EXPECT_NE(refused.err.find("another --data-dir"), std::string::npos) << refused.err;
}

TEST_F(Cli, DaemonRefusesASecondNodeAndStopsCleanly) {
  start_node();
  Output same_socket = run({WEFTD_PATH, "--socket", socket_, "--data-dir", dir_ + "/other", "--kafka-listen", "127.0.0.1:0"}, {}, 5000);
  EXPECT_EQ(same_socket.exit_code, 1);
  EXPECT_NE(same_socket.err.find("another weft node"), std::string::npos) << same_socket.err;
  Output same_data = run({WEFTD_PATH, "--socket", dir_ + "/other.sock", "--data-dir", dir_ + "/data", "--kafka-listen", "127.0.0.1:0"}, {}, 5000);
  EXPECT_EQ(same_data.exit_code, 1);
  EXPECT_NE(same_data.err.find("data directory"), std::string::npos) << same_data.err;
  EXPECT_EQ(node_->stop(SIGTERM, 5000), 0);
  const std::string log = read_file(dir_ + "/weftd.log");
  EXPECT_NE(log.find("msg=\"weftd ready\""), std::string::npos) << log;
  EXPECT_NE(log.find("msg=\"weftd stopped\""), std::string::npos) << log;
  // The socket is gone, so the next node starts on the same path.
  start_node();
}

TEST_F(Cli, TopicsAndTheirOffsetsSurviveARestart) {
  start_node();
  ASSERT_EQ(weft({"topic", "create", "kept", "--partitions", "1"}).exit_code, 0);
  ASSERT_EQ(weft({"produce", "kept"}, "a\nb\nc\n").exit_code, 0);
  EXPECT_EQ(node_->stop(SIGTERM), 0);
  // The log holds the three records, in Kafka's layout, where weft dump can read them.
  Output dumped = run({WEFT_PATH, "dump", dir_ + "/data/kept-0"});
  EXPECT_EQ(dumped.exit_code, 0) << dumped.out;
  // (one batch when the three lines arrive together: weft produce batches what is ready)
  EXPECT_NE(dumped.out.find("offsets 0..2"), std::string::npos) << dumped.out;
  EXPECT_NE(dumped.out.find("every CRC ok"), std::string::npos) << dumped.out;
  start_node();
  EXPECT_EQ(weft({"topic", "list"}).out, "kept\n");
  ASSERT_EQ(weft({"produce", "kept"}, "d\n").exit_code, 0);
  Output consumed = weft({"consume", "kept", "--from", "3", "--count", "1", "--timeout-ms", "5000", "--format", "json"});
  EXPECT_NE(consumed.out.find("\"offset\":3"), std::string::npos) << consumed.out << consumed.err;
  // Records from before the restart are read from the log, then the ring carries on.
  Output everything = weft({"consume", "kept", "--from", "earliest", "--count", "4", "--timeout-ms", "5000"});
  EXPECT_EQ(everything.out, "a\nb\nc\nd\n") << everything.err;
}

TEST_F(Cli, LogsWrittenEitherWayServeAndSurviveARestart) {
  start_node();  // the page cache, by default
  ASSERT_EQ(weft({"topic", "create", "paged", "--partitions", "1"}).exit_code, 0);
  // More than one 64 KiB flush, which direct writes would send around the page cache.
  std::string lines;
  for (int i = 0; i < 3000; ++i) lines += "record " + std::to_string(i) + " " + std::string(90, 'x') + "\n";
  ASSERT_EQ(weft({"produce", "paged", "--acks", "all"}, lines).exit_code, 0);
  EXPECT_EQ(node_->stop(SIGTERM), 0);
  EXPECT_NE(read_file(dir_ + "/weftd.log").find("buffered writes"), std::string::npos) << read_file(dir_ + "/weftd.log");
  // The same files, read back by a node that writes directly: the layout does not depend on it.
  start_node({"--log-writes", "direct"});
  ASSERT_EQ(weft({"produce", "paged"}, lines).exit_code, 0);
  Output everything = weft({"consume", "paged", "--from", "earliest", "--count", "6000", "--timeout-ms", "5000"});
  EXPECT_EQ(everything.out, lines + lines) << everything.err;
  EXPECT_EQ(node_->stop(SIGTERM), 0);
  EXPECT_NE(read_file(dir_ + "/weftd.log").find("direct writes"), std::string::npos) << read_file(dir_ + "/weftd.log");

  Output refused = run({WEFTD_PATH, "--socket", dir_ + "/x.sock", "--data-dir", dir_ + "/x", "--log-writes", "sideways"}, {}, 5000);
  EXPECT_EQ(refused.exit_code, 1);
  EXPECT_NE(refused.err.find("log_writes must be direct or buffered, not 'sideways'"), std::string::npos) << refused.err;
}

TEST_F(Cli, DaemonAloneSaysWhyAClustersTopicTakesNoWrites) {
  start_node();
  ASSERT_EQ(weft({"topic", "create", "shared", "--partitions", "1"}).exit_code, 0);
  EXPECT_EQ(node_->stop(SIGTERM), 0);
  // As a cluster node leaves its topic file: the mark that fences the rings until a role comes.
  std::ofstream(dir_ + "/data/topics/shared.topic", std::ios::app) << "replicated=true\n";
  start_node();
  // At once, not after max_block_ms: no leader will come.
  Output refused = weft({"produce", "shared"}, "a\n");
  EXPECT_NE(refused.exit_code, 0) << refused.out << refused.err;
  EXPECT_NE(refused.err.find("belongs to a cluster and this node runs without one"), std::string::npos) << refused.err;
  EXPECT_EQ(node_->stop(SIGTERM), 0);
  const std::string log = read_file(dir_ + "/weftd.log");
  EXPECT_NE(log.find("msg=\"a cluster's topic on a node started without a cluster"), std::string::npos) << log;
  EXPECT_NE(log.find("topic=shared"), std::string::npos) << log;
}

TEST_F(Cli, DaemonReadsTomlAndFlagsWin) {
  const std::string config = dir_ + "/weftd.toml";
  std::ofstream(config) << "socket = \"" << dir_ << "/from-file.sock\"\n"
                        << "data_dir = \"" << dir_ << "/data-file\"\n"
                        << "default_partitions = 4\n"
                        << "log_level = \"info\"\n"
                        << "kafka_listen = \"127.0.0.1:0\"\n"
                        << "metrics_listen = \"127.0.0.1:0\"\n";
  {
    Background node({WEFTD_PATH, "--config", config}, dir_ + "/a.log");
    for (int i = 0; i < 500 && !can_connect(dir_ + "/from-file.sock"); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
    ASSERT_TRUE(can_connect(dir_ + "/from-file.sock")) << read_file(dir_ + "/a.log");
    Output created = run({WEFT_PATH, "--socket", dir_ + "/from-file.sock", "topic", "create", "t"});
    EXPECT_NE(created.out.find("4 partitions"), std::string::npos) << created.out << created.err;
    EXPECT_EQ(node.stop(SIGTERM), 0);
  }
  // A flag overrides the file.
  start_node({"--config", config, "--default-partitions", "2"});
  Output created = weft({"topic", "create", "t"});
  EXPECT_NE(created.out.find("2 partitions"), std::string::npos) << created.out << created.err;

  std::ofstream(dir_ + "/bad.toml") << "sockett = \"/tmp/x\"\n";
  Output typo = run({WEFTD_PATH, "--config", dir_ + "/bad.toml"}, {}, 5000);
  EXPECT_EQ(typo.exit_code, 1);
  EXPECT_NE(typo.err.find("unknown key 'sockett'"), std::string::npos) << typo.err;
  std::ofstream(dir_ + "/broken.toml") << "socket = \n";
  Output broken = run({WEFTD_PATH, "--config", dir_ + "/broken.toml"}, {}, 5000);
  EXPECT_EQ(broken.exit_code, 1);
  EXPECT_NE(broken.err.find("line 1"), std::string::npos) << broken.err;
  // Ring files in a hugetlbfs mount take no seals: a local client could shrink one under the node.
  Output hugetlbfs = run({WEFTD_PATH, "--socket", dir_ + "/h.sock", "--data-dir", dir_ + "/h", "--hugetlbfs-dir", dir_}, {}, 5000);
  EXPECT_EQ(hugetlbfs.exit_code, 1);
  EXPECT_NE(hugetlbfs.err.find("hugetlbfs_dir: weftd cannot serve rings from hugetlbfs files"), std::string::npos) << hugetlbfs.err;
}

TEST_F(Cli, DaemonRefusesAReplicationSecretOthersMayReadOrAnEmptyOne) {
  // Refused before the node contacts etcd (none listens at this endpoint).
  const std::vector<std::string> cluster = {WEFTD_PATH, "--socket", dir_ + "/c.sock", "--data-dir", dir_ + "/c", "--node-id", "1",
                                            "--etcd", "http://127.0.0.1:9", "--kafka-listen", "127.0.0.1:0", "--metrics-listen", "off"};
  const auto with_secret = [&](const std::string& text, std::filesystem::perms mode) {
    const std::string path = dir_ + "/secret";
    std::filesystem::remove(path);
    std::ofstream(path) << text;
    std::filesystem::permissions(path, mode);
    std::vector<std::string> args = cluster;
    args.insert(args.end(), {"--replication-secret-file", path});
    return run(args, {}, 5000);
  };
  using std::filesystem::perms;
  const std::string good = "a secret of more than sixteen bytes\n";
  Output readable = with_secret(good, perms::owner_read | perms::owner_write | perms::group_read | perms::others_read);
  EXPECT_EQ(readable.exit_code, 1);
  EXPECT_NE(readable.err.find("has mode 0644, so other users may read or change it: chmod 600 it"), std::string::npos) << readable.err;
  Output group = with_secret(good, perms::owner_read | perms::group_read);
  EXPECT_EQ(group.exit_code, 1);
  EXPECT_NE(group.err.find("has mode 0440"), std::string::npos) << group.err;
  Output empty = with_secret("\n", perms::owner_read | perms::owner_write);
  EXPECT_EQ(empty.exit_code, 1);
  EXPECT_NE(empty.err.find("holds 0 bytes; a secret needs at least 16"), std::string::npos) << empty.err;
  Output short_one = with_secret("s3cret\n", perms::owner_read | perms::owner_write);
  EXPECT_EQ(short_one.exit_code, 1);
  EXPECT_NE(short_one.err.find("holds 6 bytes"), std::string::npos) << short_one.err;
  // Through a symbolic link (as secret stores mount them) the file it leads to is checked: taken
  // when it is good (the node then stops at its next check: a cluster node's Kafka listener needs
  // a port), refused when others may read it
  (void)with_secret(good, perms::owner_read | perms::owner_write);
  std::filesystem::remove(dir_ + "/linked");
  std::filesystem::create_symlink(dir_ + "/secret", dir_ + "/linked");
  std::vector<std::string> linked = cluster;
  linked.insert(linked.end(), {"--replication-secret-file", dir_ + "/linked"});
  Output through_link = run(linked, {}, 5000);
  EXPECT_EQ(through_link.exit_code, 1);
  EXPECT_NE(through_link.err.find("kafka_listen needs a port"), std::string::npos) << through_link.err;
  std::filesystem::permissions(dir_ + "/secret", perms::owner_read | perms::owner_write | perms::others_read);
  Output readable_through_link = run(linked, {}, 5000);
  EXPECT_EQ(readable_through_link.exit_code, 1);
  EXPECT_NE(readable_through_link.err.find("has mode 0604"), std::string::npos) << readable_through_link.err;
  // A node alone has no replication port: the key is refused, not ignored
  Output alone = run({WEFTD_PATH, "--socket", dir_ + "/a.sock", "--data-dir", dir_ + "/a", "--replication-secret-file", dir_ + "/secret"}, {}, 5000);
  EXPECT_EQ(alone.exit_code, 1);
  EXPECT_NE(alone.err.find("replication_secret_file is for a cluster node"), std::string::npos) << alone.err;
  std::vector<std::string> missing = cluster;
  missing.insert(missing.end(), {"--replication-secret-file", dir_ + "/no-such-file"});
  Output absent = run(missing, {}, 5000);
  EXPECT_EQ(absent.exit_code, 1);
  EXPECT_NE(absent.err.find("no-such-file"), std::string::npos) << absent.err;
}

TEST_F(Cli, DaemonWarnsOfAReplicationPortWithoutASecretUnlessOnlyLoopbackReachesIt) {
  // Each stops before it contacts etcd: a cluster node's Kafka listener needs a port.
  const auto start_listening_at = [&](const std::string& replication_listen) {
    return run({WEFTD_PATH, "--socket", dir_ + "/c.sock", "--data-dir", dir_ + "/c", "--node-id", "1", "--etcd", "http://127.0.0.1:9",
                "--kafka-listen", "127.0.0.1:0", "--metrics-listen", "off", "--replication-listen", replication_listen},
               {}, 5000);
  };
  const std::string warning = "give the cluster a secret with replication_secret_file";
  for (const char* reachable : {"0.0.0.0:0", "[::]:0", "192.0.2.7:0", "128.0.0.1:0", "node-a.example:0"}) {
    Output started = start_listening_at(reachable);
    EXPECT_EQ(started.exit_code, 1);
    EXPECT_NE(started.err.find(warning), std::string::npos) << reachable << ": " << started.err;
  }
  for (const char* loopback : {"127.0.0.1:0", "127.0.0.2:0", "[::1]:0", "localhost:0"}) {
    Output started = start_listening_at(loopback);
    EXPECT_EQ(started.exit_code, 1);
    EXPECT_NE(started.err.find("kafka_listen needs a port"), std::string::npos) << loopback << ": " << started.err;
    EXPECT_EQ(started.err.find(warning), std::string::npos) << loopback << ": " << started.err;
  }
}

TEST_F(Cli, DaemonRefusesToAdvertiseAKafkaListenerOnEveryAddressWithoutAHost) {
  // Given a Kafka listener on every address with no advertised address, or an advertised wildcard
  for (const std::vector<std::string>& flags : {std::vector<std::string>{"--kafka-listen", "0.0.0.0:0"},
                                                std::vector<std::string>{"--kafka-listen", "[::]:0"},
                                                std::vector<std::string>{"--kafka-listen", "0.0.0.0:0", "--kafka-advertise", "0.0.0.0:9092"}}) {
    std::vector<std::string> args{WEFTD_PATH, "--socket", dir_ + "/k.sock", "--data-dir", dir_ + "/k", "--metrics-listen", "off"};
    args.insert(args.end(), flags.begin(), flags.end());
    Output started = run(args, {}, 5000);
    // Expect a refusal naming the setting to give (before, it advertised 127.0.0.1: clients on
    // other hosts were sent to themselves)
    EXPECT_EQ(started.exit_code, 1) << flags[1];
    EXPECT_NE(started.err.find("kafka_advertise"), std::string::npos) << flags[1] << ": " << started.err;
  }
}

TEST_F(Cli, TheExampleConfigIsAcceptedAsItStands) {
  // Only the paths change (the example's are system paths); every other key is read from it.
  start_node({"--config", WEFTD_EXAMPLE_CONFIG});
  Output created = weft({"topic", "create", "t"});
  EXPECT_EQ(created.exit_code, 0) << created.err;
  EXPECT_EQ(node_->stop(SIGTERM), 0);
}

TEST_F(Cli, ProduceWhileConsuming) {
  start_node();
  ASSERT_EQ(weft({"topic", "create", "stream", "--partitions", "2"}).exit_code, 0);
  std::string input;
  for (int i = 0; i < 2000; ++i) input += "k" + std::to_string(i % 17) + "=" + std::to_string(i) + "\n";
  Output consumed;
  std::thread consumer([&] { consumed = weft({"consume", "stream", "--from", "earliest", "--count", "2000", "--timeout-ms", "10000"}); });
  Output produced = weft({"produce", "stream", "--key-sep", "="}, input);
  consumer.join();
  ASSERT_EQ(produced.exit_code, 0) << produced.err;
  ASSERT_EQ(consumed.exit_code, 0) << consumed.err;
  EXPECT_EQ(lines_of(consumed.out).size(), 2000u);
}

// The HOST:PORT a weftd log line `msg="<message>" ... listen=HOST:PORT` names (empty: none within 5 s).
std::string listen_address_in_log(const std::string& log_path, const std::string& message) {
  for (int i = 0; i < 500; ++i) {
    const std::string log = read_file(log_path);
    const std::size_t line = log.find("msg=\"" + message + "\"");
    const std::size_t eol = line == std::string::npos ? line : log.find('\n', line);
    const std::size_t at = line == std::string::npos ? line : log.find(" listen=", line);
    if (at != std::string::npos && at < eol) {
      const std::size_t start = at + 8;
      return log.substr(start, log.find_first_of(" \n", start) - start);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return {};
}

std::uint16_t port_of(const std::string& address) {
  return static_cast<std::uint16_t>(std::stoi(address.substr(address.rfind(':') + 1)));
}

std::string exchange(std::uint16_t port, const std::string& request, bool kafka_frame = false) {
  return weft::test::loopback_exchange(port, request, {.one_kafka_frame = kafka_frame});
}

// A Kafka ApiVersions v0 request (correlation id 7, client id "cli-test").
std::string api_versions_request() {
  const std::string body = std::string("\0\x12\0\0\0\0\0\x07\0\x08", 10) + "cli-test";
  return std::string("\0\0\0", 3) + static_cast<char>(body.size()) + body;
}

std::uint16_t free_port() {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t length = sizeof a;
  if (bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || getsockname(fd, reinterpret_cast<sockaddr*>(&a), &length) != 0) a.sin_port = 0;
  close(fd);
  return ntohs(a.sin_port);
}

TEST_F(Cli, DaemonServesPrometheusMetricsAndStatusSummarizesThem) {
  // Given weftd with its metrics and Kafka listener on free loopback ports (named in its log), a
  // topic with three records in partition 1, a group that read one of them, and one Kafka request
  start_node();
  const std::string log = dir_ + "/weftd.log";
  const std::string metrics = listen_address_in_log(log, "metrics ready");
  const std::string kafka = listen_address_in_log(log, "kafka listener ready");
  ASSERT_FALSE(metrics.empty()) << read_file(log);
  ASSERT_FALSE(kafka.empty()) << read_file(log);
  ASSERT_EQ(weft({"topic", "create", "events", "--partitions", "2"}).exit_code, 0);
  ASSERT_EQ(weft({"produce", "events", "--partition", "1"}, "a\nb\nc\n").exit_code, 0);
  Output read = weft({"consume", "events", "--group", "billing", "--from", "earliest", "--count", "1", "--timeout-ms", "5000"});
  ASSERT_EQ(read.out, "a\n") << read.err;
  ASSERT_GT(exchange(port_of(kafka), api_versions_request(), true).size(), 8u);

  // Expect the page over plain HTTP: partitions' end offsets, the group's lag, the Kafka counters
  const std::string response = exchange(port_of(metrics), "GET /metrics HTTP/1.1\r\nHost: " + metrics + "\r\nConnection: close\r\n\r\n");
  EXPECT_EQ(response.substr(0, response.find("\r\n")), "HTTP/1.1 200 OK") << response;
  EXPECT_NE(response.find("\r\nContent-Type: text/plain; version=0.0.4"), std::string::npos) << response;
  const std::set<std::string> page = lines_of(response);
  for (const std::string& line : std::vector<std::string>{
           "weft_topics 1", R"(weft_partition_end_offset{topic="events",partition="0"} 0)",
           R"(weft_partition_end_offset{topic="events",partition="1"} 3)",
           R"(weft_consumer_group_lag{group="billing",topic="events",partition="1"} 2)",
           "# TYPE weft_kafka_requests_total counter", R"(weft_kafka_requests_total{api="ApiVersions"} 1)",
           R"(weft_kafka_requests_total{api="Produce"} 0)", R"(weft_kafka_request_errors_total{api="ApiVersions"} 0)",
           "# TYPE weft_kafka_request_latency_seconds histogram",
           R"(weft_kafka_request_latency_seconds_count{api="ApiVersions"} 1)", "weft_kafka_connections_accepted_total 1"})
    EXPECT_EQ(page.count(line), 1u) << line << "\n" << response;
  const std::string missing = exchange(port_of(metrics), "GET /nope HTTP/1.1\r\n\r\n");
  EXPECT_EQ(missing.substr(0, missing.find("\r\n")), "HTTP/1.1 404 Not Found");

  // Expect weft status to add the Kafka listener's and the groups' summary
  Output status = weft({"status", "--metrics", metrics});
  ASSERT_EQ(status.exit_code, 0) << status.err;
  EXPECT_NE(status.out.find("events"), std::string::npos) << status.out;
  EXPECT_NE(status.out.find("metrics  http://" + metrics + "/metrics"), std::string::npos) << status.out;
  EXPECT_NE(status.out.find("(1 accepted, 0 refused)"), std::string::npos) << status.out;
  bool api_line = false, group_line = false;
  for (const std::string& line : lines_of(status.out)) {
    std::istringstream fields(line);
    std::string first, second, third;
    fields >> first >> second >> third;
    if (first == "ApiVersions") api_line = second == "1" && third == "0";  // requests, errors
    if (first == "billing") group_line = second == "Empty" && third == "2";  // offsets, no members (Kafka's Empty), lag
  }
  EXPECT_TRUE(api_line) << status.out;
  EXPECT_TRUE(group_line) << status.out;

  // Expect status as before, plus one line, where nothing serves metrics; nothing with off
  Output unreachable = weft({"status", "--metrics", "127.0.0.1:" + std::to_string(free_port())});
  EXPECT_EQ(unreachable.exit_code, 0) << unreachable.err;
  EXPECT_NE(unreachable.out.find("events"), std::string::npos) << unreachable.out;
  EXPECT_NE(unreachable.out.find("metrics  not reachable"), std::string::npos) << unreachable.out;
  Output off = weft({"status", "--metrics", "off"});
  EXPECT_EQ(off.exit_code, 0) << off.err;
  EXPECT_EQ(off.out.find("metrics"), std::string::npos) << off.out;
}

std::vector<std::byte> one_batch(std::int64_t base, int records) {
  std::vector<std::byte> out(4096);
  const std::string value = "dumped";
  weft::BatchBuilder builder(out);
  for (int i = 0; i < records; ++i) {
    weft::RecordInput r;
    r.value = std::as_bytes(std::span(value.data(), value.size()));
    r.timestamp_ms = 1'700'000'000'000 + i;
    EXPECT_TRUE(builder.append(r));
  }
  std::span<std::byte> batch = builder.finish();
  weft::stamp_base_offset(batch, weft::Offset{base});
  out.resize(batch.size());
  return out;
}

TEST_F(Cli, DumpPrintsBatchesAndRecordsAndChecksAFolder) {
  const std::string partition = dir_ + "/clicks-0";
  std::filesystem::create_directories(partition);
  {
    auto first = weft::storage::Segment::create(partition, weft::Offset{0}).value();
    ASSERT_TRUE(first.append(one_batch(0, 2)).ok());
    ASSERT_TRUE(first.append(one_batch(2, 3)).ok());
    auto second = weft::storage::Segment::create(partition, weft::Offset{5}).value();
    ASSERT_TRUE(second.append(one_batch(5, 1)).ok());
  }
  const std::string log = partition + "/00000000000000000000.log";
  Output file = run({WEFT_PATH, "dump", log, "--records"});
  ASSERT_EQ(file.exit_code, 0) << file.err;
  EXPECT_NE(file.out.find("2 batches, offsets 0..4"), std::string::npos) << file.out;
  EXPECT_NE(file.out.find("every CRC ok"), std::string::npos) << file.out;
  EXPECT_NE(file.out.find("offset 3  timestamp 1700000000001  key null  value 6 B"), std::string::npos) << file.out;
  Output folder = run({WEFT_PATH, "dump", partition});
  ASSERT_EQ(folder.exit_code, 0) << folder.out;
  EXPECT_NE(folder.out.find("00000000000000000005.log: 1 batches, offsets 5..5"), std::string::npos) << folder.out;

  // A flipped byte in a segment that is not the last: the folder is reported corrupt.
  {
    std::fstream f(log, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(70);
    f.put('\x7f');
  }
  Output corrupt = run({WEFT_PATH, "dump", partition});
  EXPECT_EQ(corrupt.exit_code, 1);
  EXPECT_NE(corrupt.out.find("CORRUPT"), std::string::npos) << corrupt.out;
  EXPECT_NE(corrupt.out.find("CRC"), std::string::npos) << corrupt.out;
}

TEST_F(Cli, PerfEmbeddedAndAgainstWeftd) {
  Output embedded = run({WEFT_PATH, "perf", "--records", "20000", "--latency-records", "2000", "--latency-rate", "20000", "--no-baselines", "--json"},
                        {}, 60'000);
  ASSERT_EQ(embedded.exit_code, 0) << embedded.out << embedded.err;
  EXPECT_NE(embedded.out.find("\"records_per_sec\":"), std::string::npos);
  EXPECT_NE(embedded.out.find("\"errors\":0}"), std::string::npos) << embedded.out;
  EXPECT_NE(embedded.out.find("\"lost\":0"), std::string::npos) << embedded.out;

  start_node();
  Output remote = weft({"perf", "--records", "20000", "--producers", "2", "--consumers", "2", "--partitions", "2", "--latency-records", "0",
                        "--no-baselines", "--json"});
  ASSERT_EQ(remote.exit_code, 0) << remote.out << remote.err;
  EXPECT_NE(remote.out.find("weftd at"), std::string::npos) << remote.out;
  EXPECT_NE(remote.out.find("\"errors\":0}"), std::string::npos) << remote.out;
  Output report = run({WEFT_PATH, "perf", "--records", "5000", "--latency-records", "500", "--latency-rate", "10000", "--threads", "--no-baselines"}, {}, 60'000);
  ASSERT_EQ(report.exit_code, 0) << report.out << report.err;
  EXPECT_NE(report.out.find("delivered (per consumer, slowest)"), std::string::npos) << report.out;
  EXPECT_NE(report.out.find("p99.9"), std::string::npos);
}

TEST_F(Cli, PerfOverKafkaRefusesTheSettingsOfLocalRunsInsteadOfIgnoringThem) {
  for (const std::vector<std::string>& local : {std::vector<std::string>{"--duration", "1"}, std::vector<std::string>{"--producers", "2"},
                                                std::vector<std::string>{"--bytes", "1G"}, std::vector<std::string>{"--no-flow-control"}}) {
    std::vector<std::string> args{WEFT_PATH, "perf", "--bootstrap", "127.0.0.1:9"};
    args.insert(args.end(), local.begin(), local.end());
    Output refused = run(args, {}, 5000);
    // Expect a refusal before anything runs (before, a --duration 1 run ran 10 million records)
    EXPECT_EQ(refused.exit_code, 2) << local[0];  // a usage error
    EXPECT_NE(refused.err.find(local[0] + " applies to runs on this host's node"), std::string::npos) << refused.err;
  }
}

TEST_F(Cli, PerfOverKafkaRunsEveryPhaseOnTopicsWithTheRingAsked) {
  start_node();
  const std::string kafka = listen_address_in_log(dir_ + "/weftd.log", "kafka listener ready");
  ASSERT_FALSE(kafka.empty()) << read_file(dir_ + "/weftd.log");
  Output perf = run({WEFT_PATH, "perf", "--bootstrap", kafka, "--records", "3000", "--latency-records", "300", "--latency-rate", "3000",
                     "--ring-bytes", "8388608", "--compression", "lz4", "--no-baselines", "--json"},
                    {}, 120'000);
  ASSERT_EQ(perf.exit_code, 0) << perf.out << perf.err;
  // The number right after `prefix` in the report (-1: no such text).
  auto number_after = [&](const std::string& prefix) -> long long {
    const std::size_t at = perf.out.find(prefix);
    return at == std::string::npos ? -1 : std::atoll(perf.out.c_str() + at + prefix.size());
  };
  EXPECT_EQ(number_after("\"ring_bytes\":"), 8388608) << perf.out;  // as the node describes the topic it made
  EXPECT_NE(perf.out.find("\"compression\":\"lz4\""), std::string::npos) << perf.out;
  EXPECT_EQ(number_after("\"produce\":{\"records\":"), 3000) << perf.out;
  EXPECT_NE(perf.out.find("\"failed\":0}"), std::string::npos) << perf.out;
  EXPECT_EQ(number_after("\"fetch\":{\"records\":"), 3000) << perf.out;
  // The bare client sends whole ~1 MB batches (at least the records asked), then reads at least
  // those back (its fetches also take the untimed batch it opened with).
  const long long wire_records = number_after("\"wire_produce\":{\"records\":");
  EXPECT_GE(wire_records, 3000) << perf.out;
  EXPECT_GE(number_after("\"wire_fetch\":{\"records\":"), wire_records) << perf.out;
  // The paced run's reader starts at the end, so it may miss the first records on a busy machine.
  EXPECT_GT(number_after("\"latency\":{\"records\":"), 0) << perf.out;
  // The ring is a topic config the node checks: one it refuses fails the run, and says why.
  Output refused = run({WEFT_PATH, "perf", "--bootstrap", kafka, "--records", "100", "--latency-records", "0", "--ring-bytes", "5000000",
                        "--no-baselines"},
                       {}, 60'000);
  EXPECT_NE(refused.exit_code, 0);
  EXPECT_NE(refused.err.find("ring.capacity.bytes must be a power of two"), std::string::npos) << refused.out << refused.err;
  // Rings too small for the runs' 1 MB batches are refused before anything runs.
  Output small = run({WEFT_PATH, "perf", "--bootstrap", kafka, "--records", "100", "--ring-bytes", "1048576", "--no-baselines"}, {}, 60'000);
  EXPECT_NE(small.exit_code, 0);
  EXPECT_NE(small.err.find("--ring-bytes must be at least 4194304"), std::string::npos) << small.out << small.err;
  // Compression is the Kafka client's: a local run says so rather than ignore it.
  Output local = run({WEFT_PATH, "perf", "--records", "100", "--compression", "zstd", "--no-baselines"}, {}, 60'000);
  EXPECT_NE(local.exit_code, 0);
  EXPECT_NE(local.err.find("--compression applies to Kafka clients"), std::string::npos) << local.out << local.err;
}

TEST_F(Cli, ProduceAndConsumeOverKafkaTakeLibrdkafkaSettingsAndRefuseBadOnes) {
  start_node();
  const std::string kafka = listen_address_in_log(dir_ + "/weftd.log", "kafka listener ready");
  ASSERT_FALSE(kafka.empty()) << read_file(dir_ + "/weftd.log");
  ASSERT_EQ(weft({"topic", "create", "wire", "--partitions", "1"}).exit_code, 0);
  // Settings reach the clients: lines go out and come back with them
  Output produced = weft({"produce", "wire", "--bootstrap", kafka, "-X", "linger.ms=0", "-X", "client.id=cli-test"}, "one\ntwo\nthree\n");
  ASSERT_EQ(produced.exit_code, 0) << produced.err;
  Output consumed = weft({"consume", "wire", "--bootstrap", kafka, "--from", "earliest", "--count", "3", "--timeout-ms", "20000", "-X",
                          "fetch.wait.max.ms=10", "-X", "max.partition.fetch.bytes=65536"});
  ASSERT_EQ(consumed.exit_code, 0) << consumed.err;
  EXPECT_EQ(consumed.out, "one\ntwo\nthree\n");
  // ... and override weft's own: a record above a message.max.bytes given here is refused by the client
  Output too_big = weft({"produce", "wire", "--bootstrap", kafka, "-X", "message.max.bytes=1000"}, std::string(3000, 'x') + "\n");
  EXPECT_NE(too_big.exit_code, 0);
  EXPECT_NE(too_big.err.find("too large"), std::string::npos) << too_big.err;
  // Bad settings are refused, naming the setting
  Output unknown = weft({"perf", "--bootstrap", kafka, "--records", "10", "-X", "no.such.setting=1"});
  EXPECT_NE(unknown.exit_code, 0);
  EXPECT_NE(unknown.err.find("no.such.setting=1"), std::string::npos) << unknown.err;
  Output shapeless = weft({"consume", "wire", "--bootstrap", kafka, "-X", "fetch.wait.max.ms"});
  EXPECT_EQ(shapeless.exit_code, 2);
  EXPECT_NE(shapeless.err.find("-X takes KEY=VALUE"), std::string::npos) << shapeless.err;
  Output local = weft({"consume", "wire", "--from", "earliest", "--count", "1", "-X", "fetch.wait.max.ms=10"});
  EXPECT_EQ(local.exit_code, 2);
  EXPECT_NE(local.err.find("give --bootstrap"), std::string::npos) << local.err;
}

}  // namespace
