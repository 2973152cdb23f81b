// Kafka clients against weftd's Kafka listener: kcat (librdkafka's command line), confluent-kafka
// (librdkafka from Python) and kafka-python (its own protocol code). Each test starts its own
// weftd on a free port in its own directory and stops it by pid. The Python scripts in compat/
// check their own results and exit non-zero with a FAIL line; a client that is not installed
// skips its test with the Debian package to install.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "../temp_dir.h"
#include "../tools/process.h"

namespace {

using weft::test::Background;
using weft::test::can_connect;
using weft::test::read_file;
using weft::test::tail;
using weft::test::Output;
using weft::test::run;
using weft::test::TempDir;

// Debian's interpreter: the one that sees python3-confluent-kafka and python3-kafka (a pyenv
// python3 first in PATH does not).
constexpr const char* kPython = "/usr/bin/python3";
constexpr const char* kReadyLine = "msg=\"kafka listener ready\"";
constexpr int kReadyTimeoutMs = 20'000;
constexpr int kKcatTimeoutMs = 30'000;
// The scripts bound themselves at 60 s; this is the backstop.
constexpr int kScriptTimeoutMs = 120'000;

// A TCP port that was free a moment ago: bound on 127.0.0.1:0, read, released. Another process
// may take it before weftd does, so start_node() tries again with a new one if weftd exits.
int free_port() {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr);
  socklen_t len = sizeof(addr);
  const bool ok = bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0 &&
                  getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0;
  close(fd);
  return ok ? ntohs(addr.sin_port) : -1;
}

std::set<std::string> lines_of(const std::string& text) {
  std::set<std::string> lines;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) lines.insert(line);
  return lines;
}

// `name` as found in PATH (run() executes a path, it does not search), or empty.
std::string find_in_path(const std::string& name) {
  const char* path = std::getenv("PATH");
  std::istringstream dirs(path != nullptr ? path : "/usr/local/bin:/usr/bin:/bin");
  std::string dir;
  while (std::getline(dirs, dir, ':')) {
    const std::string candidate = (dir.empty() ? "." : dir) + "/" + name;
    if (access(candidate.c_str(), X_OK) == 0) return candidate;
  }
  return {};
}

// Why the Python client `module` cannot be used, or nothing when it can.
std::optional<std::string> missing_python_module(const std::string& module, const std::string& package) {
  if (access(kPython, X_OK) != 0) return std::string(kPython) + " not found (Debian package python3)";
  const Output imported = run({kPython, "-c", "import " + module}, {}, 20'000);
  if (imported.exit_code != 0)
    return std::string(kPython) + " cannot import " + module + " (Debian package " + package + "): " + imported.err;
  return std::nullopt;
}

class KafkaCompat : public ::testing::Test {
 protected:
  void TearDown() override { stop_node(); }

  // Starts weftd with its Kafka listener on a free port and waits (bounded) until it logs that
  // the listener is ready and a connection to the port succeeds. "{port}" in `extra` becomes the port.
  void start_node(const std::vector<std::string>& extra = {}) {
    log_path_ = dir_.path() + "/weftd.log";
    for (int attempt = 0; attempt < 3; ++attempt) {
      port_ = free_port();
      ASSERT_GT(port_, 0) << "no free TCP port on 127.0.0.1";
      bootstrap_ = "127.0.0.1:" + std::to_string(port_);
      std::vector<std::string> args{WEFTD_PATH,
                                    "--data-dir", dir_.path() + "/data",
                                    "--socket", dir_.path() + "/weftd.sock",
                                    "--kafka-listen", bootstrap_,
                                    "--kafka-initial-rebalance-delay-ms", "0"};
      for (std::string arg : extra) {
        if (const std::size_t at = arg.find("{port}"); at != std::string::npos) arg.replace(at, 6, std::to_string(port_));
        args.push_back(std::move(arg));
      }
      node_ = std::make_unique<Background>(args, log_path_);
      const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(kReadyTimeoutMs);
      while (node_->running() && std::chrono::steady_clock::now() < deadline) {
        if (read_file(log_path_).find(kReadyLine) != std::string::npos && can_connect(port_)) return;
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
      }
      // Still running: it is slow or stuck, and another port will not help.
      if (node_->running()) break;
    }
    const std::string state = node_->running() ? "still running" : "exited with code " + std::to_string(node_->exit_code());
    node_.reset();  // stops it; TearDown has nothing more to report
    FAIL() << "weftd's Kafka listener on " << bootstrap_ << " not ready (no " << kReadyLine << " in its log and a connection) within "
           << kReadyTimeoutMs << " ms; weftd " << state << ". Its log:\n"
           << tail(read_file(log_path_));
  }

  // SIGTERM, a bounded wait, then SIGKILL (Background::stop); a clean stop exits 0.
  void stop_node() {
    if (!node_) return;
    if (!node_->running()) {
      ADD_FAILURE() << "weftd exited during the test, code " << node_->exit_code() << ". Its log:\n" << tail(read_file(log_path_));
      node_.reset();
      return;
    }
    const int exit_code = node_->stop(SIGTERM, 10'000);
    EXPECT_EQ(exit_code, 0) << "weftd did not exit 0 within 10 s of SIGTERM (-1: killed). Its log:\n" << tail(read_file(log_path_));
    node_.reset();
  }

  Output kcat(std::vector<std::string> args, const std::string& input = {}) {
    args.insert(args.begin(), {kcat_, "-b", bootstrap_});
    return run(args, input, kKcatTimeoutMs);
  }

  // Runs compat/<script> BOOTSTRAP compat with Debian's python, unbuffered so that a script cut
  // off at its bound still shows how far it got, and writing no bytecode into the source tree.
  Output script(const std::string& name) {
    return run({kPython, "-u", "-B", std::string(KAFKA_COMPAT_SCRIPTS_DIR) + "/" + name, bootstrap_, "compat"}, {}, kScriptTimeoutMs);
  }

  // Skips the test when kcat is not installed.
  bool find_kcat() {
    kcat_ = find_in_path("kcat");
    return !kcat_.empty();
  }

  // What a failed client run printed, and the end of weftd's log beside it.
  std::string report(const Output& o) const {
    return "exit code " + std::to_string(o.exit_code) + " (-1: killed at its deadline or by a signal)\n--- stdout\n" + o.out +
           "--- stderr\n" + o.err + "--- weftd log (end)\n" + tail(read_file(log_path_));
  }

  TempDir dir_;
  std::string log_path_;
  int port_ = -1;
  std::string bootstrap_;
  std::string kcat_;
  std::unique_ptr<Background> node_;
};

TEST_F(KafkaCompat, KcatListsTheBrokerAndReadsKeyedLinesBackFromAnyOffset) {
  if (!find_kcat()) GTEST_SKIP() << "kcat not found in PATH (Debian package kcat)";
  ASSERT_NO_FATAL_FAILURE(start_node());
  // Given keyed lines produced in two runs (two batches) to a topic that does not exist yet
  Output first = kcat({"-P", "-t", "lines", "-K:"}, "alice:signed in\nbob:clicked buy\n");
  ASSERT_EQ(first.exit_code, 0) << report(first);
  Output second = kcat({"-P", "-t", "lines", "-K:"}, "carol:left\ndave:paid\n");
  ASSERT_EQ(second.exit_code, 0) << report(second);

  // Expect the metadata to show node 0 as the one broker and controller, leading the
  // auto-created topic's one partition
  Output listed = kcat({"-L"});
  ASSERT_EQ(listed.exit_code, 0) << report(listed);
  EXPECT_NE(listed.out.find(" 1 brokers:\n  broker 0 at " + bootstrap_ + " (controller)\n"), std::string::npos) << report(listed);
  EXPECT_NE(listed.out.find("  topic \"lines\" with 1 partitions:\n    partition 0, leader 0, replicas: 0, isrs: 0\n"), std::string::npos)
      << report(listed);

  // and the lines to come back with their keys, in order: from the beginning, from offset 2
  // (the second batch), from offset 1 (inside the first batch) and the last one
  Output all = kcat({"-C", "-t", "lines", "-o", "beginning", "-e", "-f", "%k=%s\n"});
  EXPECT_EQ(all.exit_code, 0) << report(all);
  EXPECT_EQ(all.out, "alice=signed in\nbob=clicked buy\ncarol=left\ndave=paid\n") << report(all);
  Output from_two = kcat({"-C", "-t", "lines", "-p", "0", "-o", "2", "-e", "-f", "%o %k=%s\n"});
  EXPECT_EQ(from_two.exit_code, 0) << report(from_two);
  EXPECT_EQ(from_two.out, "2 carol=left\n3 dave=paid\n") << report(from_two);
  Output from_one = kcat({"-C", "-t", "lines", "-p", "0", "-o", "1", "-e", "-f", "%o %k=%s\n"});
  EXPECT_EQ(from_one.out, "1 bob=clicked buy\n2 carol=left\n3 dave=paid\n") << report(from_one);
  Output last = kcat({"-C", "-t", "lines", "-p", "0", "-o", "-1", "-e", "-f", "%o %k=%s\n"});
  EXPECT_EQ(last.out, "3 dave=paid\n") << report(last);
}

TEST_F(KafkaCompat, KcatCompressesWithEveryCodecAndWeftReadsTheRecords) {
  if (!find_kcat()) GTEST_SKIP() << "kcat not found in PATH (Debian package kcat)";
  ASSERT_NO_FATAL_FAILURE(start_node());
  std::string lines, want;
  for (int i = 0; i < 100; ++i) {
    lines += "k" + std::to_string(i) + ":" + std::string(80, 'v') + std::to_string(i) + "\n";
    want += "k" + std::to_string(i) + "\t" + std::string(80, 'v') + std::to_string(i) + "\n";
  }
  for (const std::string codec : {"gzip", "snappy", "lz4", "zstd"}) {
    // librdkafka compresses only for a broker whose versions allow the codec (gzip, snappy and
    // lz4 need Produce v0 listed, zstd v7); otherwise it sends the batch plain, silently.
    Output produced = kcat({"-P", "-t", "z-" + codec, "-K:", "-z", codec, "-X", "linger.ms=100"}, lines);
    ASSERT_EQ(produced.exit_code, 0) << codec << "\n" << report(produced);
    Output dumped = run({WEFT_PATH, "dump", dir_.path() + "/data/z-" + codec + "-0"}, {}, kKcatTimeoutMs);
    Output batches = run({WEFT_PATH, "dump", dir_.path() + "/data/z-" + codec + "-0/00000000000000000000.log"}, {}, kKcatTimeoutMs);
    EXPECT_NE(batches.out.find("(compressed)"), std::string::npos) << codec << ": no compressed batch\n" << batches.out << dumped.out;
    // weft's own consumer (shared memory) decompresses them.
    Output read = run({WEFT_PATH, "--socket", dir_.path() + "/weftd.sock", "consume", "z-" + codec, "--from", "earliest", "--count", "100",
                       "--format", "key-value", "--timeout-ms", "5000"},
                      {}, kKcatTimeoutMs);
    EXPECT_EQ(read.exit_code, 0) << codec << "\n" << report(read);
    EXPECT_EQ(read.out, want) << codec;
  }
}

TEST_F(KafkaCompat, KcatIsToldTheAdvertisedAddressForBrokerZero) {
  if (!find_kcat()) GTEST_SKIP() << "kcat not found in PATH (Debian package kcat)";
  // Given a listener that advertises another name for itself than the address it listens on
  ASSERT_NO_FATAL_FAILURE(start_node({"--kafka-advertise", "localhost:{port}"}));
  // Expect the metadata, fetched through the listen address, to name broker 0 by the advertised one
  Output listed = kcat({"-L"});
  ASSERT_EQ(listed.exit_code, 0) << report(listed);
  EXPECT_NE(listed.out.find("  broker 0 at localhost:" + std::to_string(port_) + " (controller)\n"), std::string::npos) << report(listed);
}

TEST_F(KafkaCompat, KcatAutoCreatesATopicWithTheDefaultPartitionCount) {
  if (!find_kcat()) GTEST_SKIP() << "kcat not found in PATH (Debian package kcat)";
  ASSERT_NO_FATAL_FAILURE(start_node({"--default-partitions", "3"}));
  // Given keyed lines produced to a topic that does not exist yet
  std::string input;
  std::set<std::string> want;
  for (int i = 0; i < 30; ++i) {
    input += "k" + std::to_string(i) + ":v" + std::to_string(i) + "\n";
    want.insert("k" + std::to_string(i) + "=v" + std::to_string(i));
  }
  Output produced = kcat({"-P", "-t", "spread", "-K:"}, input);
  ASSERT_EQ(produced.exit_code, 0) << report(produced);
  // Expect the topic to have been created with the node's --default-partitions
  Output listed = kcat({"-L", "-t", "spread"});
  ASSERT_EQ(listed.exit_code, 0) << report(listed);
  EXPECT_NE(listed.out.find("  topic \"spread\" with 3 partitions:\n"), std::string::npos) << report(listed);
  for (const char* partition : {"partition 0, leader 0", "partition 1, leader 0", "partition 2, leader 0"})
    EXPECT_NE(listed.out.find(partition), std::string::npos) << partition << "\n" << report(listed);
  // and every line to come back once across them
  Output consumed = kcat({"-C", "-t", "spread", "-o", "beginning", "-e", "-f", "%k=%s\n"});
  EXPECT_EQ(consumed.exit_code, 0) << report(consumed);
  EXPECT_EQ(lines_of(consumed.out), want) << report(consumed);
  EXPECT_EQ(std::count(consumed.out.begin(), consumed.out.end(), '\n'), 30) << report(consumed);
}

TEST_F(KafkaCompat, KcatAskingForAnUnknownTopicCreatesNothingWhenAutoCreateIsOff) {
  if (!find_kcat()) GTEST_SKIP() << "kcat not found in PATH (Debian package kcat)";
  ASSERT_NO_FATAL_FAILURE(start_node({"--kafka-auto-create-topics", "false"}));
  // Given a metadata request for a topic nobody created (librdkafka asks for it to be created)
  Output asked = kcat({"-L", "-t", "absent"});
  // Expect it refused as unknown, and still absent afterwards
  EXPECT_NE(asked.out.find("  topic \"absent\" with 0 partitions: Broker: Unknown topic or partition\n"), std::string::npos)
      << report(asked);
  Output listed = kcat({"-L"});
  ASSERT_EQ(listed.exit_code, 0) << report(listed);
  EXPECT_EQ(listed.out.find("absent"), std::string::npos) << report(listed);
}

TEST_F(KafkaCompat, ConfluentKafkaAdminProducersCompressionAndConsumer) {
  if (auto why = missing_python_module("confluent_kafka", "python3-confluent-kafka")) GTEST_SKIP() << *why;
  ASSERT_NO_FATAL_FAILURE(start_node());
  Output ran = script("confluent_producer_consumer.py");
  EXPECT_EQ(ran.exit_code, 0) << report(ran);
}

TEST_F(KafkaCompat, ConfluentKafkaConsumerGroupRebalancesCommitsAndResumes) {
  if (auto why = missing_python_module("confluent_kafka", "python3-confluent-kafka")) GTEST_SKIP() << *why;
  ASSERT_NO_FATAL_FAILURE(start_node());
  Output ran = script("confluent_group.py");
  EXPECT_EQ(ran.exit_code, 0) << report(ran);
}

TEST_F(KafkaCompat, KafkaPythonProducerAndGroupConsumer) {
  if (auto why = missing_python_module("kafka", "python3-kafka")) GTEST_SKIP() << *why;
  ASSERT_NO_FATAL_FAILURE(start_node());
  Output ran = script("kafka_python_clients.py");
  EXPECT_EQ(ran.exit_code, 0) << report(ran);
}

}  // namespace
