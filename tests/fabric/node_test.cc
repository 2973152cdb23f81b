// The node: topic lifecycle, names and configs, the ring memory budget, the counters a
// maintenance pass reports, and the reuse limit that keeps the older half of each ring readable.
// Maintenance runs by hand (NodeOptions::start_maintenance_thread = false) unless a test says so.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <filesystem>
#include <thread>
#include <optional>
#include <string>
#include <vector>

#include "../temp_dir.h"
#include "client_fixture.h"
#include "weft/client.h"
#include "weft/consumer.h"
#include "weft/node.h"
#include "weft/producer.h"

namespace weft {
namespace {

using test::bytes_of;
using test::test_node_options;
using test::text_of;

std::unique_ptr<Node> start_node(NodeOptions options) {
  Result<std::unique_ptr<Node>> node = Node::start(std::move(options));
  EXPECT_TRUE(node.ok()) << node.error().message;
  return node.ok() ? std::move(node).value() : nullptr;
}

TopicConfig small_topic(std::uint32_t partitions = 1) {
  TopicConfig config;
  config.partitions = partitions;
  config.ring_capacity_bytes = 64 << 10;
  config.max_batch_bytes = 16 << 10;
  config.producer_slots = 4;
  config.consumer_slots = 4;
  return config;
}

// Sends `count` records to partition 0, each value the decimal text of its expected offset;
// with maintenance by hand, runs a pass whenever the ring pushes back. Returns refusals seen.
std::uint64_t send_numbered(Node& node, TopicProducer& producer, std::int64_t first, std::int64_t count,
                            std::size_t value_bytes = 200) {
  std::uint64_t refusals = 0;
  for (std::int64_t i = 0; i < count;) {
    std::string value = std::to_string(first + i);
    value.resize(std::max(value.size(), value_bytes), '.');
    RecordInput record;
    record.value = bytes_of(value);
    Result<SendResult> sent = producer.send_to(0, record);
    if (sent.ok()) {
      EXPECT_EQ(sent->offset.value, first + i);
      ++i;
      continue;
    }
    EXPECT_EQ(sent.error().code, Errc::kUnavailable) << sent.error().message;
    if (sent.error().code != Errc::kUnavailable || ++refusals > 100'000) break;
    node.maintain();
  }
  return refusals;
}

// A producer of `topic` that the ring refuses at once when it is full (the tests run the passes).
Result<TopicProducer> never_waiting_producer(const std::shared_ptr<Client>& client, const std::string& topic) {
  ProducerOptions options;
  options.max_block_ms = 0;
  return TopicProducer::create(client, topic, options);
}

// Sends `record` to partition 0 until the ring refuses it (at most 10 000 times); returns that
// refusal (or the last send), with the sends that went through counted in `sent`.
Result<SendResult> send_until_refused(TopicProducer& producer, const RecordInput& record, int& sent) {
  sent = 0;
  Result<SendResult> last = producer.send_to(0, record);
  for (; last.ok() && sent < 10'000; last = producer.send_to(0, record)) ++sent;
  return last;
}

// ---- topics ----------------------------------------------------------------------------------

TEST(NodeTopics, CreateListDescribeAndDelete) {
  // Given a node with no topics
  auto node = start_node(test_node_options(false));
  ASSERT_NE(node, nullptr);
  EXPECT_TRUE(node->list_topics().empty());
  EXPECT_EQ(node->ring_memory_bytes(), 0u);

  // When two topics are created
  Result<TopicInfo> orders = node->create_topic("orders", small_topic(3));
  ASSERT_TRUE(orders.ok()) << orders.error().message;
  Result<TopicInfo> clicks = node->create_topic("clicks");
  ASSERT_TRUE(clicks.ok()) << clicks.error().message;

  // Expect them listed (in name order) and described with their config and partitions
  EXPECT_EQ(node->list_topics(), (std::vector<std::string>{"clicks", "orders"}));
  EXPECT_EQ(orders->name, "orders");
  EXPECT_NE(orders->id, clicks->id);
  Result<TopicInfo> described = node->describe_topic("orders");
  ASSERT_TRUE(described.ok()) << described.error().message;
  EXPECT_EQ(described->id, orders->id);
  EXPECT_EQ(node->topic_incarnation("orders"), (TopicIncarnation{orders->id, 0}));
  EXPECT_EQ(node->topic_incarnation("nope"), std::nullopt);
  EXPECT_EQ(described->config.partitions, 3u);
  EXPECT_EQ(described->config.ring_capacity_bytes, std::size_t{64} << 10);
  ASSERT_EQ(described->partitions.size(), 3u);
  for (std::uint32_t p = 0; p < 3; ++p) {
    const PartitionStats& s = described->partitions[p];
    EXPECT_EQ(s.partition, p);
    EXPECT_EQ(s.start_offset, Offset{0});
    EXPECT_EQ(s.end_offset, Offset{0});
    EXPECT_EQ(s.records, 0u);
    EXPECT_FALSE(s.memory.empty());
  }
  // The default topic takes the node's defaults.
  EXPECT_EQ(clicks->config.ring_capacity_bytes, node->options().default_topic.ring_capacity_bytes);
  EXPECT_GT(node->ring_memory_bytes(), 4 * (std::size_t{64} << 10));
  Result<PartitionMemory> opened = node->open_partition("orders", 2);
  ASSERT_TRUE(opened.ok()) << opened.error().message;
  EXPECT_EQ(opened->partition, 2u);
  EXPECT_EQ(opened->topic_id, orders->id);
  EXPECT_EQ(node->open_partition("orders", 3).error().code, Errc::kNotFound);
  EXPECT_EQ(node->open_partition("nope", 0).error().code, Errc::kNotFound);

  // When one is deleted
  ASSERT_TRUE(node->delete_topic("orders").ok());

  // Expect it gone, the other kept, and a second delete refused
  EXPECT_EQ(node->list_topics(), (std::vector<std::string>{"clicks"}));
  EXPECT_EQ(node->describe_topic("orders").error().code, Errc::kNotFound);
  EXPECT_EQ(node->topic_incarnation("orders"), std::nullopt);
  EXPECT_EQ(node->delete_topic("orders").error().code, Errc::kNotFound);

  // And a topic created again under the name is a new topic
  Result<TopicInfo> again = node->create_topic("orders", small_topic(1));
  ASSERT_TRUE(again.ok()) << again.error().message;
  EXPECT_NE(again->id, orders->id);
  EXPECT_EQ(node->topic_incarnation("orders"), (TopicIncarnation{again->id, 0}));
  EXPECT_EQ(again->partitions.size(), 1u);
}

TEST(NodeTopics, DuplicateNameIsRefused) {
  auto node = start_node(test_node_options(false));
  ASSERT_NE(node, nullptr);
  ASSERT_TRUE(node->create_topic("dup", small_topic()).ok());
  const std::size_t used = node->ring_memory_bytes();

  Result<TopicInfo> second = node->create_topic("dup", small_topic(2));

  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.error().code, Errc::kAlreadyExists);
  EXPECT_NE(second.error().message.find("dup"), std::string::npos) << second.error().message;
  EXPECT_EQ(node->ring_memory_bytes(), used);
  EXPECT_EQ(node->describe_topic("dup")->partitions.size(), 1u);
}

TEST(NodeTopics, ATopicsFileFollowsCreatesAndDeletesOfItsNameFromManyThreads) {
  // Given a node that keeps its topics in files, and four threads that create and delete one name
  test::TempDir dir;
  ASSERT_FALSE(dir.path().empty());
  NodeOptions options = test_node_options(false);
  options.metadata_dir = dir.path();
  bool exists = false;
  {
    auto node = start_node(options);
    ASSERT_NE(node, nullptr);
    std::vector<std::thread> threads;
    std::atomic<int> created{0};
    for (int t = 0; t < 4; ++t)
      threads.emplace_back([&, t] {
        for (int i = 0; i < 100; ++i) {
          if ((i + t) % 2 == 0) {
            if (node->create_topic("churn", small_topic()).ok()) created.fetch_add(1);
          } else {
            (void)node->delete_topic("churn");
          }
        }
      });
    for (std::thread& t : threads) t.join();
    EXPECT_GT(created.load(), 0);
    // Expect the file there exactly when the topic is (a delete's removal of the file never
    // takes the file of a create that came after it)
    exists = node->describe_topic("churn").ok();
    EXPECT_EQ(std::filesystem::exists(dir.path() + "/churn.topic"), exists);
  }
  // And a node started again from the files to agree
  auto again = start_node(options);
  ASSERT_NE(again, nullptr);
  EXPECT_EQ(again->describe_topic("churn").ok(), exists);
}

TEST(NodeTopics, NamesFollowKafkasRule) {
  auto node = start_node(test_node_options(false));
  ASSERT_NE(node, nullptr);
  const std::vector<std::string> good = {"a", "Z", "0", "orders", "a.b_c-D9", "...", "-", "_", std::string(249, 'x')};
  for (const std::string& name : good) {
    EXPECT_TRUE(validate_topic_name(name).ok()) << name;
    Result<TopicInfo> created = node->create_topic(name, small_topic());
    EXPECT_TRUE(created.ok()) << name << ": " << created.error().message;
  }
  const std::vector<std::string> bad = {"",    ".",   "..",       std::string(250, 'x'), "a b", "a/b", "a\\b",
                                        "a:b", "a*b", "caf\xc3\xa9", std::string("a\0b", 3), "a\nb", "topic!"};
  for (const std::string& name : bad) {
    const Result<void> valid = validate_topic_name(name);
    EXPECT_FALSE(valid.ok()) << "'" << name << "'";
    if (!valid.ok()) {
      EXPECT_EQ(valid.error().code, Errc::kInvalidArgument);
      EXPECT_FALSE(valid.error().message.empty());
    }
    Result<TopicInfo> created = node->create_topic(name, small_topic());
    EXPECT_FALSE(created.ok()) << "'" << name << "'";
    if (!created.ok()) {
      EXPECT_EQ(created.error().code, Errc::kInvalidArgument);
    }
  }
  EXPECT_EQ(node->list_topics().size(), good.size());
}

TEST(NodeTopics, TopicCountIsBounded) {
  NodeOptions options = test_node_options(false);
  options.max_topics = 2;
  auto node = start_node(options);
  ASSERT_NE(node, nullptr);
  ASSERT_TRUE(node->create_topic("one", small_topic()).ok());
  ASSERT_TRUE(node->create_topic("two", small_topic()).ok());

  Result<TopicInfo> third = node->create_topic("three", small_topic());

  ASSERT_FALSE(third.ok());
  EXPECT_EQ(third.error().code, Errc::kResourceExhausted);
  ASSERT_TRUE(node->delete_topic("one").ok());
  EXPECT_TRUE(node->create_topic("three", small_topic()).ok());
}

// ---- configs ---------------------------------------------------------------------------------

TEST(NodeConfig, SetTopicConfigParsesEveryKey) {
  TopicConfig c;
  ASSERT_TRUE(set_topic_config(c, "partitions", "12").ok());
  ASSERT_TRUE(set_topic_config(c, "ring.capacity.bytes", "131072").ok());
  ASSERT_TRUE(set_topic_config(c, "max.batch.bytes", "32768").ok());
  ASSERT_TRUE(set_topic_config(c, "retention.bytes", "-1").ok());
  ASSERT_TRUE(set_topic_config(c, "retention.ms", "60000").ok());
  ASSERT_TRUE(set_topic_config(c, "producer.slots", "8").ok());
  ASSERT_TRUE(set_topic_config(c, "consumer.slots", "100").ok());
  // The cluster's mark is the node's to set, not a client's: a topic marked by hand would stay
  // fenced with no replicator to open it.
  EXPECT_FALSE(set_topic_config(c, "replicated", "true").ok());
  EXPECT_FALSE(c.replicated);
  EXPECT_EQ(c.partitions, 12u);
  EXPECT_EQ(c.ring_capacity_bytes, 131072u);
  EXPECT_EQ(c.max_batch_bytes, 32768u);
  EXPECT_EQ(c.retention_bytes, -1);
  EXPECT_EQ(c.retention_ms, 60000);
  EXPECT_EQ(c.producer_slots, 8u);
  EXPECT_EQ(c.consumer_slots, 100u);
  EXPECT_TRUE(validate_topic_config(c).ok());

  ASSERT_TRUE(set_topic_config(c, "fsync", "always").ok());
  EXPECT_EQ(c.fsync, FsyncPolicy::kAlways);
  EXPECT_EQ(fsync_policy_name(c), "always");
  ASSERT_TRUE(set_topic_config(c, "fsync", "interval=250").ok());
  EXPECT_EQ(c.fsync, FsyncPolicy::kInterval);
  EXPECT_EQ(c.fsync_interval_ms, 250);
  EXPECT_EQ(fsync_policy_name(c), "interval=250");
  ASSERT_TRUE(set_topic_config(c, "fsync", "none").ok());
  EXPECT_EQ(c.fsync, FsyncPolicy::kNone);
  EXPECT_EQ(fsync_policy_name(c), "none");
}

TEST(NodeConfig, SetTopicConfigRefusesBadValuesAndUnknownKeys) {
  struct Case {
    const char* key;
    const char* value;
  };
  const Case cases[] = {
      {"partitions", "-1"},          {"partitions", "abc"},          {"partitions", ""},
      {"partitions", "4294967296"},  {"partitions", "12 "},          {"partitions", " 12"},
      {"ring.capacity.bytes", "1.5"}, {"ring.capacity.bytes", "0x10000"}, {"max.batch.bytes", "-5"},
      {"retention.ms", "9223372036854775808"}, {"producer.slots", "1e3"}, {"fsync", "sometimes"},
      {"fsync", "interval="},        {"fsync", "interval=x"},       {"fsync", ""},
      {"no.such.key", "1"},          {"", "1"},                     {"Partitions", "1"},
  };
  for (const Case& c : cases) {
    TopicConfig config;
    const TopicConfig before = config;
    const Result<void> set = set_topic_config(config, c.key, c.value);
    EXPECT_FALSE(set.ok()) << c.key << "=" << c.value;
    if (set.ok()) continue;
    EXPECT_EQ(set.error().code, Errc::kInvalidArgument);
    // The message names the key (or, for fsync, the allowed values).
    EXPECT_TRUE(set.error().message.find(c.key) != std::string::npos || set.error().message.find("fsync") != std::string::npos)
        << set.error().message;
    EXPECT_EQ(config.partitions, before.partitions);
  }
}

TEST(NodeConfig, ValidateTopicConfigRefusesValuesOutOfRange) {
  struct Case {
    const char* what;
    void (*change)(TopicConfig&);
  };
  const Case cases[] = {
      {"partitions", [](TopicConfig& c) { c.partitions = 0; }},
      {"partitions", [](TopicConfig& c) { c.partitions = 10'001; }},
      {"ring.capacity.bytes", [](TopicConfig& c) { c.ring_capacity_bytes = 100'000; }},
      {"ring.capacity.bytes", [](TopicConfig& c) { c.ring_capacity_bytes = 32 << 10; }},
      {"ring.capacity.bytes", [](TopicConfig& c) { c.ring_capacity_bytes = std::size_t{2} << 30; }},
      {"max.batch.bytes", [](TopicConfig& c) { c.max_batch_bytes = 1023; }},
      {"max.batch.bytes", [](TopicConfig& c) { c.max_batch_bytes = c.ring_capacity_bytes / 4 + 1; }},
      {"retention", [](TopicConfig& c) { c.retention_bytes = -2; }},
      {"retention", [](TopicConfig& c) { c.retention_ms = -7; }},
      {"fsync", [](TopicConfig& c) {
         c.fsync = FsyncPolicy::kInterval;
         c.fsync_interval_ms = 0;
       }},
      {"producer.slots", [](TopicConfig& c) { c.producer_slots = 0; }},
      {"producer.slots", [](TopicConfig& c) { c.producer_slots = 64; }},
      {"consumer.slots", [](TopicConfig& c) { c.consumer_slots = 0; }},
      {"consumer.slots", [](TopicConfig& c) { c.consumer_slots = 4097; }},
  };
  auto node = start_node(test_node_options(false));
  ASSERT_NE(node, nullptr);
  for (const Case& c : cases) {
    TopicConfig config;
    ASSERT_TRUE(validate_topic_config(config).ok());
    c.change(config);
    const Result<void> valid = validate_topic_config(config);
    EXPECT_FALSE(valid.ok()) << c.what;
    if (valid.ok()) continue;
    EXPECT_EQ(valid.error().code, Errc::kInvalidArgument);
    EXPECT_NE(valid.error().message.find(c.what), std::string::npos) << valid.error().message;
    EXPECT_EQ(node->create_topic("t", config).error().code, Errc::kInvalidArgument) << c.what;
  }
  EXPECT_TRUE(node->list_topics().empty());
  EXPECT_EQ(node->ring_memory_bytes(), 0u);
  // The edges themselves are allowed.
  TopicConfig edge;
  edge.ring_capacity_bytes = 64 << 10;
  edge.max_batch_bytes = 16 << 10;
  edge.producer_slots = 63;
  edge.consumer_slots = 4096;
  EXPECT_TRUE(validate_topic_config(edge).ok());
}

TEST(NodeConfig, StartRefusesBadDefaultsAndIntervals) {
  NodeOptions options = test_node_options(false);
  options.default_topic.partitions = 0;
  EXPECT_EQ(Node::start(options).error().code, Errc::kInvalidArgument);
  options = test_node_options(false);
  options.maintenance_min_interval_us = 0;
  EXPECT_EQ(Node::start(options).error().code, Errc::kInvalidArgument);
  options = test_node_options(false);
  options.maintenance_min_interval_us = 500;
  options.maintenance_max_interval_us = 100;
  EXPECT_EQ(Node::start(options).error().code, Errc::kInvalidArgument);
}

// ---- ring memory budget ------------------------------------------------------------------------

TEST(NodeBudget, TopicThatDoesNotFitTheRingMemoryBudgetIsRefused) {
  // Given a budget of three small rings
  const std::size_t ring_bytes = [] {
    RingConfig r;
    r.capacity_bytes = 64 << 10;
    r.producer_slots = 4;
    r.consumer_slots = 4;
    return Ring::required_bytes(r);
  }();
  NodeOptions options = test_node_options(false);
  options.ring_memory_budget_bytes = 3 * ring_bytes;
  auto node = start_node(options);
  ASSERT_NE(node, nullptr);
  ASSERT_TRUE(node->create_topic("two", small_topic(2)).ok());
  EXPECT_EQ(node->ring_memory_bytes(), 2 * ring_bytes);

  // When a topic needs more than is left
  Result<TopicInfo> refused = node->create_topic("also-two", small_topic(2));

  // Expect a refusal that says what it needs and what is left, and nothing taken
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.error().code, Errc::kResourceExhausted);
  EXPECT_NE(refused.error().message.find(std::to_string(2 * ring_bytes)), std::string::npos) << refused.error().message;
  EXPECT_NE(refused.error().message.find(std::to_string(ring_bytes)), std::string::npos) << refused.error().message;
  EXPECT_EQ(node->describe_topic("also-two").error().code, Errc::kNotFound);
  EXPECT_EQ(node->ring_memory_bytes(), 2 * ring_bytes);

  // And what fits still fits; deleting gives the memory back
  ASSERT_TRUE(node->create_topic("one", small_topic(1)).ok());
  EXPECT_EQ(node->create_topic("another", small_topic(1)).error().code, Errc::kResourceExhausted);
  ASSERT_TRUE(node->delete_topic("two").ok());
  EXPECT_EQ(node->ring_memory_bytes(), ring_bytes);
  EXPECT_TRUE(node->create_topic("also-two", small_topic(2)).ok());
  ASSERT_TRUE(node->delete_topic("one").ok());
  ASSERT_TRUE(node->delete_topic("also-two").ok());
  EXPECT_EQ(node->ring_memory_bytes(), 0u);
}

TEST(NodeBudget, ConcurrentCreatesNeverExceedTheBudget) {
  // Given a budget of one small ring, and eight threads that each create a topic at once
  const std::size_t ring_bytes = [] {
    RingConfig r;
    r.capacity_bytes = 64 << 10;
    r.producer_slots = 4;
    r.consumer_slots = 4;
    return Ring::required_bytes(r);
  }();
  NodeOptions options = test_node_options(false);
  options.ring_memory_budget_bytes = ring_bytes;
  auto node = start_node(options);
  ASSERT_NE(node, nullptr);
  constexpr int kThreads = 8;
  std::atomic<int> ready{0};
  std::atomic<int> created{0};
  std::atomic<int> refused{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      ready.fetch_add(1);
      while (ready.load() < kThreads) std::this_thread::yield();  // start together
      Result<TopicInfo> topic = node->create_topic("racer-" + std::to_string(t), small_topic());
      if (topic.ok()) {
        created.fetch_add(1);
      } else if (topic.error().code == Errc::kResourceExhausted) {
        refused.fetch_add(1);
      }
    });
  }
  for (std::thread& t : threads) t.join();

  // Expect exactly one to fit
  EXPECT_EQ(created.load(), 1);
  EXPECT_EQ(refused.load(), kThreads - 1);
  EXPECT_EQ(node->list_topics().size(), 1u);
  EXPECT_EQ(node->ring_memory_bytes(), ring_bytes);
}

TEST(NodeBudget, DeletingTopicsReturnsExactlyWhatCreatingThemTook) {
  // With hugepages, a ring's memory is rounded up to 2 MiB pages: the accounting must still
  // return to zero (one page at most is held, briefly; without hugepages the memfd fallback runs).
  NodeOptions options = test_node_options(false);
  options.prefer_hugepages = true;
  options.ring_memory_budget_bytes = std::size_t{64} << 20;
  auto node = start_node(options);
  ASSERT_NE(node, nullptr);
  for (int round = 0; round < 3; ++round) {
    ASSERT_TRUE(node->create_topic("huge", small_topic(1)).ok());
    ASSERT_TRUE(node->delete_topic("huge").ok());
    EXPECT_EQ(node->ring_memory_bytes(), 0u) << "round " << round;
  }
  EXPECT_TRUE(node->create_topic("after", small_topic(1)).ok());
}

// ---- counters -----------------------------------------------------------------------------------

TEST(NodeCounters, MaintenancePassCountsRecordsBytesProducersAndConsumers) {
  // Given a two-partition topic, a producer and a consumer of it
  auto node = start_node(test_node_options(false));
  ASSERT_NE(node, nullptr);
  ASSERT_TRUE(node->create_topic("counted", small_topic(2)).ok());
  auto client = Client::embedded(*node);
  Result<TopicProducer> created = TopicProducer::create(client, "counted");
  ASSERT_TRUE(created.ok()) << created.error().message;
  std::optional<TopicProducer> producer(std::move(*created));
  Result<TopicConsumer> made = TopicConsumer::create(client);
  ASSERT_TRUE(made.ok()) << made.error().message;
  std::optional<TopicConsumer> consumer(std::move(*made));
  ASSERT_TRUE(consumer->assign("counted", {}, SeekTo::earliest()).ok());

  // When 10 records go to partition 0 and 5 to partition 1, and a pass runs
  std::uint64_t frame_bytes[2] = {0, 0};
  for (int i = 0; i < 15; ++i) {
    const std::uint32_t partition = i < 10 ? 0 : 1;
    const std::string value = "value-" + std::to_string(i);
    RecordInput record;
    record.value = bytes_of(value);
    record.timestamp_ms = 1000 + i;
    ASSERT_TRUE(producer->send_to(partition, record).ok());
    frame_bytes[partition] += (16 + single_record_batch_bytes(record) + 7) / 8 * 8;
  }
  // The log end offset is live, before any pass.
  EXPECT_EQ(node->describe_topic("counted")->partitions[0].end_offset, Offset{10});
  node->maintain();

  // Expect each partition's counters to say so
  Result<TopicInfo> info = node->describe_topic("counted");
  ASSERT_TRUE(info.ok());
  ASSERT_EQ(info->partitions.size(), 2u);
  for (std::uint32_t p = 0; p < 2; ++p) {
    const PartitionStats& s = info->partitions[p];
    SCOPED_TRACE("partition " + std::to_string(p));
    EXPECT_EQ(s.records, p == 0 ? 10u : 5u);
    EXPECT_EQ(s.end_offset, Offset{p == 0 ? 10 : 5});
    EXPECT_EQ(s.start_offset, Offset{0});
    EXPECT_EQ(s.bytes, frame_bytes[p]);
    EXPECT_EQ(s.producers, 1u);
    EXPECT_EQ(s.consumers, 1u);
    EXPECT_EQ(s.lapped_consumers, 0u);
    EXPECT_EQ(s.lapped_events, 0u);
    EXPECT_EQ(s.back_pressure_events, 0u);
    EXPECT_EQ(s.sealed_claims, 0u);
  }

  // And once the producer and consumer are gone, the next pass no longer counts them
  producer.reset();
  consumer.reset();
  node->maintain();
  info = node->describe_topic("counted");
  for (const PartitionStats& s : info->partitions) {
    EXPECT_EQ(s.producers, 0u);
    EXPECT_EQ(s.consumers, 0u);
    EXPECT_GT(s.records, 0u);
  }
}

TEST(NodeCounters, BackPressureIsCountedAndAPassFreesSpace) {
  // Given a producer that never waits and no maintenance
  auto node = start_node(test_node_options(false));
  ASSERT_NE(node, nullptr);
  ASSERT_TRUE(node->create_topic("full", small_topic()).ok());
  auto client = Client::embedded(*node);
  Result<TopicProducer> producer = never_waiting_producer(client, "full");
  ASSERT_TRUE(producer.ok());

  // When it fills the ring
  const std::string value(200, 'v');
  RecordInput record;
  record.value = bytes_of(value);
  int sent = 0;
  const Result<SendResult> last = send_until_refused(*producer, record, sent);

  // Expect a refusal that says why, counted by the next pass
  ASSERT_FALSE(last.ok());
  EXPECT_EQ(last.error().code, Errc::kUnavailable);
  EXPECT_NE(last.error().message.find("max_block_ms"), std::string::npos) << last.error().message;
  EXPECT_GT(sent, 100);
  EXPECT_LT(static_cast<std::size_t>(sent) * value.size(), std::size_t{64} << 10);
  EXPECT_GE(producer->stats().back_pressure_waits, 1u);
  node->maintain();
  Result<TopicInfo> info = node->describe_topic("full");
  EXPECT_GE(info->partitions[0].back_pressure_events, 1u);
  EXPECT_EQ(info->partitions[0].records, static_cast<std::uint64_t>(sent));
  // The pass released the older half, so sends go through again.
  EXPECT_GT(info->partitions[0].start_offset, Offset{0});
  EXPECT_TRUE(producer->send_to(0, record).ok());
}

// ---- the reuse limit -------------------------------------------------------------------------

TEST(NodeReuseLimit, OlderHalfOfTheRingStaysReadableAndALaggardIsLapped) {
  // Given a 64 KiB ring, a consumer that never reads, and traffic of ten rings' worth
  auto node = start_node(test_node_options(false));
  ASSERT_NE(node, nullptr);
  ASSERT_TRUE(node->create_topic("busy", small_topic()).ok());
  auto client = Client::embedded(*node);
  Result<TopicConsumer> laggard = TopicConsumer::create(client);
  ASSERT_TRUE(laggard.ok());
  ASSERT_TRUE(laggard->assign("busy", {0}, SeekTo::earliest()).ok());
  Result<TopicProducer> producer = never_waiting_producer(client, "busy");
  ASSERT_TRUE(producer.ok());
  constexpr std::int64_t kRecords = 3000;  // ~270 bytes a frame: ~12 laps of 64 KiB
  EXPECT_GT(send_numbered(*node, *producer, 0, kRecords), 0u);
  node->maintain();

  // Expect the limit to trail the frontier by at least half the ring, and producers to have at
  // least an eighth of the ring free after a pass (the node releases to a known boundary)
  Result<PartitionMemory> memory = node->open_partition("busy", 0);
  ASSERT_TRUE(memory.ok());
  const Ring::Mark limit = memory->ring.reuse_limit();
  const std::uint64_t kept = memory->ring.tail_position().value - limit.position.value;
  const std::uint64_t half = memory->ring.capacity_bytes() / 2;
  EXPECT_GE(kept, half);
  EXPECT_LE(kept, memory->ring.capacity_bytes() - half / 4 + memory->ring.max_batch_bytes() + 16);
  Result<TopicInfo> info = node->describe_topic("busy");
  ASSERT_TRUE(info.ok());
  const PartitionStats s = info->partitions[0];
  EXPECT_EQ(s.start_offset, limit.offset);
  EXPECT_EQ(s.end_offset, Offset{kRecords});
  EXPECT_EQ(s.records, static_cast<std::uint64_t>(kRecords));
  EXPECT_GT(s.start_offset, Offset{0});
  EXPECT_GE(s.back_pressure_events, 1u);
  EXPECT_EQ(s.lapped_consumers, 0u);  // the laggard has not looked yet

  // And a consumer starting at earliest reads every record from the start offset on, intact
  Result<TopicConsumer> reader = TopicConsumer::create(client);
  ASSERT_TRUE(reader.ok());
  ASSERT_TRUE(reader->assign("busy", {0}, SeekTo::earliest()).ok());
  const test::Drained read = test::drain(*reader, static_cast<std::size_t>(kRecords - s.start_offset.value));
  EXPECT_TRUE(read.notices.empty());
  ASSERT_EQ(read.records.size(), static_cast<std::size_t>(kRecords - s.start_offset.value));
  for (std::size_t i = 0; i < read.records.size(); ++i) {
    const std::int64_t offset = s.start_offset.value + static_cast<std::int64_t>(i);
    ASSERT_EQ(read.records[i].offset, offset);
    ASSERT_EQ(read.records[i].value.substr(0, read.records[i].value.find('.')), std::to_string(offset));
  }
  EXPECT_TRUE(reader->views_intact());
  // An offset the ring no longer holds is out of range, and the message names the earliest.
  const Result<void> too_old = reader->seek("busy", 0, SeekTo::offset(s.start_offset.value - 1));
  ASSERT_FALSE(too_old.ok());
  EXPECT_EQ(too_old.error().code, Errc::kOutOfRange);
  EXPECT_NE(too_old.error().message.find(std::to_string(s.start_offset.value)), std::string::npos) << too_old.error().message;

  // And the laggard, far behind, is told it was lapped and continues from the earliest offset
  Result<PollResult> polled = laggard->poll(0);
  ASSERT_TRUE(polled.ok());
  ASSERT_EQ(polled->notices.size(), 1u);
  const PollNotice notice = polled->notices[0];
  EXPECT_EQ(notice.kind, PollNotice::Kind::kLapped);
  EXPECT_EQ(notice.topic, "busy");
  EXPECT_EQ(notice.partition, 0u);
  EXPECT_EQ(notice.from, Offset{0});
  EXPECT_EQ(notice.to, s.start_offset);
  ASSERT_FALSE(polled->records.empty());
  EXPECT_EQ(polled->records.front().offset, s.start_offset);
  node->maintain();
  info = node->describe_topic("busy");
  EXPECT_EQ(info->partitions[0].lapped_consumers, 1u);
  EXPECT_EQ(info->partitions[0].lapped_events, 1u);
  EXPECT_EQ(info->partitions[0].consumers, 2u);
}

TEST(NodeReuseLimit, PassesWithNothingNewKeepTheOlderHalfReadable) {
  // Given a 64 KiB ring (batches up to 16 KiB) that producers filled until it pushed back, and
  // one pass that freed space for them
  auto node = start_node(test_node_options(false));
  ASSERT_NE(node, nullptr);
  ASSERT_TRUE(node->create_topic("idle", small_topic()).ok());
  auto client = Client::embedded(*node);
  Result<TopicProducer> producer = never_waiting_producer(client, "idle");
  ASSERT_TRUE(producer.ok());
  const std::string value(200, 'v');
  RecordInput record;
  record.value = bytes_of(value);
  int sent = 0;
  ASSERT_FALSE(send_until_refused(*producer, record, sent).ok());
  node->maintain();
  Result<PartitionMemory> memory = node->open_partition("idle", 0);
  ASSERT_TRUE(memory.ok());
  const std::uint64_t half = memory->ring.capacity_bytes() / 2;
  const std::uint64_t tail = memory->ring.tail_position().value;
  const Ring::Mark after_first = memory->ring.reuse_limit();
  ASSERT_GE(tail - after_first.position.value, half);

  // When more passes run and nothing new is sent
  for (int pass = 0; pass < 3; ++pass) node->maintain();

  // Expect the limit where the first pass left it: the older half stays readable (a pass that
  // found free space just under its low-water mark used to walk a largest frame past it)
  EXPECT_EQ(memory->ring.reuse_limit().position, after_first.position);
  EXPECT_EQ(memory->ring.tail_position().value, tail);
}

TEST(NodeReuseLimit, MaintenanceThreadKeepsProducersMoving) {
  // Given a node with its own maintenance thread
  auto node = start_node(test_node_options(true));
  ASSERT_NE(node, nullptr);
  ASSERT_TRUE(node->create_topic("auto", small_topic()).ok());
  auto client = Client::embedded(*node);
  ProducerOptions options;
  options.max_block_ms = 10'000;
  Result<TopicProducer> producer = TopicProducer::create(client, "auto", options);
  ASSERT_TRUE(producer.ok());

  // When a producer sends ten rings' worth without ever running a pass itself
  const std::string value(500, 'x');
  RecordInput record;
  record.value = bytes_of(value);
  for (int i = 0; i < 1400; ++i) {
    Result<SendResult> sent = producer->send_to(0, record);
    ASSERT_TRUE(sent.ok()) << "record " << i << ": " << sent.error().message;
    ASSERT_EQ(sent->offset, Offset{i});
  }

  // Expect every send to have gone through; stop() is idempotent and the destructor follows it
  node->stop();
  node->stop();
  Result<TopicInfo> info = node->describe_topic("auto");
  EXPECT_EQ(info->partitions[0].records, 1400u);
  EXPECT_GT(info->partitions[0].start_offset, Offset{0});
}

TEST(NodeTopics, ADeletedTopicsRingStaysMappedForItsHoldersWhoAreToldTheTopicIsGone) {
  auto node = start_node(test_node_options(false));
  ASSERT_NE(node, nullptr);
  ASSERT_TRUE(node->create_topic("gone", small_topic()).ok());
  auto client = Client::embedded(*node);
  Result<TopicProducer> producer = TopicProducer::create(client, "gone");
  ASSERT_TRUE(producer.ok());
  RecordInput record;
  record.value = bytes_of("before");
  ASSERT_TRUE(producer->send(record).ok());

  ASSERT_TRUE(node->delete_topic("gone").ok());
  node->maintain();

  // The holder's memory stays mapped (nothing faults), and its next send says the topic is gone
  // rather than write where nothing reads any more
  record.value = bytes_of("after");
  Result<SendResult> sent = producer->send(record);
  ASSERT_FALSE(sent.ok());
  EXPECT_EQ(sent.error().code, Errc::kNotFound) << sent.error().message;
  // A topic created under the name starts from offset 0 in a ring of its own; to the holder it
  // is another topic
  ASSERT_TRUE(node->create_topic("gone", small_topic()).ok());
  Result<TopicProducer> fresh = TopicProducer::create(client, "gone");
  ASSERT_TRUE(fresh.ok());
  sent = fresh->send(record);
  ASSERT_TRUE(sent.ok());
  EXPECT_EQ(sent->offset, Offset{0});
  sent = producer->send(record);
  ASSERT_FALSE(sent.ok());
  EXPECT_EQ(sent.error().code, Errc::kNotFound) << sent.error().message;
}

}  // namespace
}  // namespace weft
