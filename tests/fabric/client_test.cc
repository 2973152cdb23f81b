// The client API end to end: topics through a Client, TopicProducer (partitioners, batches,
// zero-copy claims, aborts, limits) and TopicConsumer (assignment, seeks, polls, lapping).
// Every test runs twice: on a node embedded in this process, and on the same node reached
// through a LocalServer on a Unix socket in a fresh temporary directory.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <functional>
#include <future>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "client_fixture.h"
#include "weft/client.h"
#include "weft/consumer.h"
#include "weft/fabric/local_server.h"
#include "weft/node.h"
#include "weft/producer.h"

namespace weft {
namespace {

using test::bytes_of;
using test::drain;
using test::Drained;
using test::text_of;

#define ASSERT_OK_AND_ASSIGN(lhs, expr) ASSERT_OK_AND_ASSIGN_IMPL(WEFT_CONCAT(result_, __LINE__), lhs, expr)
#define ASSERT_OK_AND_ASSIGN_IMPL(tmp, lhs, expr)    \
  auto tmp = (expr);                                 \
  ASSERT_TRUE(tmp.ok()) << tmp.error().message;      \
  lhs = std::move(tmp).value()

// ---- murmur2 and the key partitioner (no node needed) ----------------------------------------

TEST(Murmur2, MatchesKafkasTestVectors) {
  // Kafka's UtilsTest.testMurmur2.
  EXPECT_EQ(murmur2(bytes_of("21")), -973932308);
  EXPECT_EQ(murmur2(bytes_of("foobar")), -790332482);
  EXPECT_EQ(murmur2(bytes_of("a-little-bit-long-string")), -985981536);
  EXPECT_EQ(murmur2(bytes_of("a-little-bit-longer-string")), -1486304829);
  EXPECT_EQ(murmur2(bytes_of("lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8")), -58897971);
  const std::byte abc[] = {std::byte{'a'}, std::byte{'b'}, std::byte{'c'}};
  EXPECT_EQ(murmur2(abc), 479470107);
}

TEST(Murmur2, PartitionForKeyIsThePositiveHashModuloPartitions) {
  for (const char* key : {"21", "foobar", "a-little-bit-long-string", "x", "", "key-17"}) {
    const std::uint32_t hash = static_cast<std::uint32_t>(murmur2(bytes_of(key))) & 0x7fffffffu;
    for (std::uint32_t partitions : {1u, 2u, 3u, 7u, 100u}) EXPECT_EQ(partition_for_key(bytes_of(key), partitions), hash % partitions) << key;
  }
  // -973932308 & 0x7fffffff = 1173551340, which is 1173551340 % 7 = 6.
  EXPECT_EQ(partition_for_key(bytes_of("21"), 7), 1173551340u % 7);
}

// ---- the fixture --------------------------------------------------------------------------------

enum class Via { kEmbedded, kSocket };

class ClientTest : public ::testing::TestWithParam<Via> {
 protected:
  void SetUp() override {
    ASSERT_OK_AND_ASSIGN(node_, Node::start(test::test_node_options(true)));
    if (GetParam() == Via::kSocket) {
      ASSERT_FALSE(dir_.path().empty());
      LocalServerOptions options;
      options.socket_path = dir_.path() + "/weftd.sock";
      ASSERT_OK_AND_ASSIGN(server_, LocalServer::start(*node_, options));
      ASSERT_OK_AND_ASSIGN(client_, Client::connect(options.socket_path));
    } else {
      client_ = Client::embedded(*node_);
    }
  }
  void TearDown() override {
    client_.reset();
    server_.reset();
    node_.reset();
  }

  // A topic of small rings (64 KiB, batches up to 16 KiB) unless settings say otherwise.
  void create(const std::string& name, std::uint32_t partitions, TopicSettings more = {}) {
    TopicSettings settings = {{"partitions", std::to_string(partitions)}, {"ring.capacity.bytes", "65536"}, {"max.batch.bytes", "16384"}};
    settings.insert(settings.end(), more.begin(), more.end());
    Result<TopicInfo> created = client_->create_topic(name, settings);
    ASSERT_TRUE(created.ok()) << created.error().message;
  }

  test::TempDir dir_;
  std::unique_ptr<Node> node_;
  std::unique_ptr<LocalServer> server_;
  std::shared_ptr<Client> client_;
};

std::string via_name(const ::testing::TestParamInfo<Via>& info) { return info.param == Via::kEmbedded ? "Embedded" : "Socket"; }

// The record views `value`, which must outlive it (string literals do).
RecordInput value_record(std::string_view value, std::int64_t ts = 0) {
  RecordInput r;
  r.value = bytes_of(value);
  r.timestamp_ms = ts;
  return r;
}

std::vector<std::int64_t> offsets_of(const Drained& d) {
  std::vector<std::int64_t> out;
  for (const test::Got& g : d.records) out.push_back(g.offset);
  return out;
}

std::vector<std::int64_t> range(std::int64_t from, std::int64_t to) {
  std::vector<std::int64_t> out;
  for (std::int64_t i = from; i < to; ++i) out.push_back(i);
  return out;
}

// ---- topics through the client ------------------------------------------------------------------

TEST_P(ClientTest, ManagesTopics) {
  // Given a client; when topics are created with settings
  Result<TopicInfo> created = client_->create_topic("events", TopicSettings{{"partitions", "3"}, {"ring.capacity.bytes", "65536"}, {"max.batch.bytes", "16384"}, {"fsync", "interval=100"}});
  ASSERT_TRUE(created.ok()) << created.error().message;
  ASSERT_TRUE(client_->create_topic("two", 2).ok());

  // Expect them as created, listed and described, over either path
  EXPECT_EQ(created->name, "events");
  EXPECT_EQ(created->config.partitions, 3u);
  EXPECT_EQ(created->config.ring_capacity_bytes, 65536u);
  EXPECT_EQ(created->config.fsync, FsyncPolicy::kInterval);
  EXPECT_EQ(created->config.fsync_interval_ms, 100);
  EXPECT_EQ(created->partitions.size(), 3u);
  ASSERT_OK_AND_ASSIGN(const std::vector<std::string> names, client_->list_topics());
  EXPECT_EQ(names, (std::vector<std::string>{"events", "two"}));
  ASSERT_OK_AND_ASSIGN(const TopicInfo described, client_->describe_topic("two"));
  EXPECT_EQ(described.config.partitions, 2u);
  EXPECT_EQ(described.config.ring_capacity_bytes, node_->options().default_topic.ring_capacity_bytes);
  EXPECT_EQ(described.partitions.size(), 2u);
  EXPECT_FALSE(described.partitions[1].memory.empty());

  // And errors keep their codes across the socket
  EXPECT_EQ(client_->create_topic("events", 1).error().code, Errc::kAlreadyExists);
  EXPECT_EQ(client_->create_topic("bad name", 1).error().code, Errc::kInvalidArgument);
  EXPECT_EQ(client_->create_topic("t", TopicSettings{{"no.such", "1"}}).error().code, Errc::kInvalidArgument);
  EXPECT_EQ(client_->create_topic("t", TopicSettings{{"partitions", "zero"}}).error().code, Errc::kInvalidArgument);
  EXPECT_EQ(client_->create_topic("t", TopicSettings{{"ring.capacity.bytes", "1000"}}).error().code, Errc::kInvalidArgument);
  EXPECT_EQ(client_->describe_topic("nope").error().code, Errc::kNotFound);
  EXPECT_EQ(client_->open_partition("events", 3).error().code, Errc::kNotFound);
  ASSERT_TRUE(client_->delete_topic("events").ok());
  EXPECT_EQ(client_->delete_topic("events").error().code, Errc::kNotFound);
  EXPECT_EQ(client_->describe_topic("events").error().code, Errc::kNotFound);
  ASSERT_OK_AND_ASSIGN(const std::vector<std::string> after, client_->list_topics());
  EXPECT_EQ(after, (std::vector<std::string>{"two"}));
}

TEST_P(ClientTest, ReportsStatusAndWhatItIs) {
  create("s", 1);
  ASSERT_OK_AND_ASSIGN(const NodeStatus status, client_->status());
  EXPECT_EQ(status.topics, 1u);
  EXPECT_EQ(status.ring_memory_bytes, node_->ring_memory_bytes());
  EXPECT_EQ(status.pid, static_cast<std::uint32_t>(getpid()));
  if (GetParam() == Via::kEmbedded) {
    EXPECT_TRUE(client_->is_embedded());
    EXPECT_TRUE(status.embedded);
    EXPECT_EQ(client_->describe(), "embedded node");
  } else {
    EXPECT_FALSE(client_->is_embedded());
    EXPECT_FALSE(status.embedded);
    EXPECT_EQ(status.connections, 1u);
    EXPECT_EQ(status.accepted, 1u);
    EXPECT_GE(status.requests, 2u);  // hello, create, status
    EXPECT_EQ(status.bad_requests, 0u);
    EXPECT_NE(client_->describe().find(server_->socket_path()), std::string::npos) << client_->describe();
  }
}

// ---- producer ----------------------------------------------------------------------------------

TEST_P(ClientTest, KeyedRecordsGoToTheirMurmur2Partition) {
  // Given a topic of six partitions
  create("keyed", 6);
  ASSERT_OK_AND_ASSIGN(TopicProducer producer, TopicProducer::create(client_, "keyed"));
  EXPECT_EQ(producer.partitions(), 6u);
  EXPECT_EQ(producer.topic(), "keyed");

  // When keyed records are sent
  std::map<std::uint32_t, std::int64_t> next;  // per partition
  std::map<std::string, std::uint32_t> partition_of;
  for (int i = 0; i < 60; ++i) {
    const std::string key = "key-" + std::to_string(i);
    const std::string value = "value-" + std::to_string(i);
    RecordInput record = value_record(value, 1'700'000'000'000 + i);
    record.key = bytes_of(key);
    const std::uint32_t expected = partition_for_key(bytes_of(key), 6);
    EXPECT_EQ(producer.partition_for(record.key), expected);
    ASSERT_OK_AND_ASSIGN(const SendResult sent, producer.send(record));
    // Expect the partition Kafka's default partitioner picks, with offsets counting up in each
    EXPECT_EQ(sent.partition, expected) << key;
    EXPECT_EQ(sent.offset.value, next[expected]++) << key;
    partition_of[key] = expected;
  }
  EXPECT_GT(next.size(), 3u);  // sixty keys spread over most of the partitions

  // And a consumer of every partition finds each record where it was sent
  ASSERT_OK_AND_ASSIGN(TopicConsumer consumer, TopicConsumer::create(client_));
  ASSERT_TRUE(consumer.assign("keyed", {}, SeekTo::earliest()).ok());
  EXPECT_EQ(consumer.assigned_partitions(), 6u);
  const Drained got = drain(consumer, 60);
  ASSERT_EQ(got.records.size(), 60u);
  EXPECT_TRUE(got.notices.empty());
  std::map<std::uint32_t, std::int64_t> seen;
  for (const test::Got& r : got.records) {
    EXPECT_EQ(r.partition, partition_of[r.key]) << r.key;
    EXPECT_EQ(r.offset, seen[r.partition]++) << r.key;  // in order within a partition
    EXPECT_EQ(r.value, "value-" + r.key.substr(4));
  }
  for (const auto& [p, n] : next) {
    ASSERT_OK_AND_ASSIGN(const Offset position, consumer.position("keyed", p));
    EXPECT_EQ(position.value, n);
  }
}

TEST_P(ClientTest, KeylessRecordsStickToAPartitionForABatchOfBytesThenMove) {
  // Given a producer whose sticky batch is 1 KiB
  create("sticky", 4);
  ProducerOptions options;
  options.sticky_batch_bytes = 1024;
  ASSERT_OK_AND_ASSIGN(TopicProducer producer, TopicProducer::create(client_, "sticky", options));
  const std::string value(100, 'v');
  const RecordInput record = value_record(value);
  const std::size_t per_record = single_record_batch_bytes(record);
  const std::size_t run = (1024 + per_record - 1) / per_record;  // records until the batch is full
  ASSERT_GT(run, 1u);

  // When keyless records are sent, expect runs of `run` records, each on another partition
  std::vector<std::uint32_t> partitions;
  for (std::size_t i = 0; i < run * 6; ++i) {
    const std::uint32_t predicted = producer.partition_for(std::nullopt);
    ASSERT_OK_AND_ASSIGN(const SendResult sent, producer.send(record));
    EXPECT_EQ(sent.partition, predicted);
    partitions.push_back(sent.partition);
  }
  for (std::size_t r = 0; r < 6; ++r) {
    for (std::size_t i = 1; i < run; ++i)
      EXPECT_EQ(partitions[r * run + i], partitions[r * run]) << "run " << r << " record " << i;
    if (r > 0) {
      EXPECT_NE(partitions[r * run], partitions[(r - 1) * run]) << "run " << r;
    }
  }
  // Keyed records in between neither move nor count toward the sticky batch.
  const std::uint32_t sticky = producer.partition_for(std::nullopt);
  RecordInput keyed = record;
  keyed.key = bytes_of("some-key");
  for (int i = 0; i < 20; ++i) ASSERT_TRUE(producer.send(keyed).ok());
  EXPECT_EQ(producer.partition_for(std::nullopt), sticky);
}

TEST_P(ClientTest, SendToAndSendBatchGiveConsecutiveOffsets) {
  create("batches", 3);
  ASSERT_OK_AND_ASSIGN(TopicProducer producer, TopicProducer::create(client_, "batches"));

  // send_to puts records on the partition asked for
  for (int i = 0; i < 2; ++i) {
    ASSERT_OK_AND_ASSIGN(const SendResult sent, producer.send_to(2, value_record("single-" + std::to_string(i), 5)));
    EXPECT_EQ(sent.partition, 2u);
    EXPECT_EQ(sent.offset, Offset{i});
  }
  EXPECT_EQ(producer.send_to(3, value_record("x")).error().code, Errc::kInvalidArgument);

  // send_batch puts records in one batch with consecutive offsets
  std::vector<std::string> values;
  for (int i = 0; i < 5; ++i) values.push_back("batched-" + std::to_string(i));
  std::vector<RecordInput> records;
  for (int i = 0; i < 5; ++i) records.push_back(value_record(values[static_cast<std::size_t>(i)], 100 + i));
  ASSERT_OK_AND_ASSIGN(const SendResult first, producer.send_batch(2, records));
  EXPECT_EQ(first.partition, 2u);
  EXPECT_EQ(first.offset, Offset{2});
  ASSERT_OK_AND_ASSIGN(const SendResult second, producer.send_batch(2, records));
  EXPECT_EQ(second.offset, Offset{7});
  EXPECT_EQ(producer.send_batch(2, std::span<const RecordInput>{}).error().code, Errc::kInvalidArgument);
  EXPECT_EQ(producer.stats().records, 12u);
  EXPECT_EQ(producer.stats().batches, 4u);
  EXPECT_TRUE(producer.flush().ok());

  ASSERT_OK_AND_ASSIGN(TopicConsumer consumer, TopicConsumer::create(client_));
  ASSERT_TRUE(consumer.assign("batches", {2}, SeekTo::earliest()).ok());
  const Drained got = drain(consumer, 12);
  ASSERT_EQ(offsets_of(got), range(0, 12));
  EXPECT_EQ(got.records[0].value, "single-0");
  EXPECT_EQ(got.records[0].timestamp_ms, 5);
  for (int i = 0; i < 10; ++i) {
    EXPECT_EQ(got.records[static_cast<std::size_t>(2 + i)].value, values[static_cast<std::size_t>(i % 5)]);
    EXPECT_EQ(got.records[static_cast<std::size_t>(2 + i)].timestamp_ms, 100 + i % 5);
  }
}

TEST_P(ClientTest, ClaimAndCommitWriteABatchInPlace) {
  create("zero-copy", 2);
  ASSERT_OK_AND_ASSIGN(TopicProducer producer, TopicProducer::create(client_, "zero-copy"));
  ASSERT_TRUE(producer.send_to(1, value_record("before")).ok());

  // Given a claim sized exactly for three records
  const std::string values[3] = {"alpha", "beta", "gamma"};
  RecordInput records[3];
  std::size_t bytes = kBatchHeaderBytes;
  for (int i = 0; i < 3; ++i) {
    records[i] = value_record(values[i], 1000 + i);
    bytes += encoded_record_bytes(records[i], i, i);
  }
  ASSERT_OK_AND_ASSIGN(ZeroCopyBatch batch, producer.claim(1, bytes, 3));
  EXPECT_EQ(batch.partition, 1u);
  EXPECT_EQ(batch.base_offset, Offset{1});
  EXPECT_EQ(batch.bytes.size(), bytes);
  // While it is open, the partition takes no other claim or send
  EXPECT_EQ(producer.claim(1, bytes, 3).error().code, Errc::kInvalidArgument);
  EXPECT_EQ(producer.send_to(1, value_record("x")).error().code, Errc::kFailedPrecondition);
  EXPECT_TRUE(producer.send_to(0, value_record("other partition")).ok());

  // When the batch is built in the ring and committed
  BatchBuilder builder(batch.bytes);
  for (const RecordInput& r : records) ASSERT_TRUE(builder.append(r));
  const std::size_t used = builder.finish().size();
  EXPECT_EQ(used, bytes);
  ASSERT_OK_AND_ASSIGN(const SendResult sent, producer.commit(batch, used));
  EXPECT_EQ(sent.offset, Offset{1});
  EXPECT_EQ(producer.commit(batch, used).error().code, Errc::kFailedPrecondition);  // once only

  // And a larger claim may be committed shorter
  ASSERT_OK_AND_ASSIGN(ZeroCopyBatch roomy, producer.claim(1, 4096, 1));
  BatchBuilder small(roomy.bytes);
  ASSERT_TRUE(small.append(value_record("short", 2000)));
  ASSERT_OK_AND_ASSIGN(const SendResult short_sent, producer.commit(roomy, small.finish().size()));
  EXPECT_EQ(short_sent.offset, Offset{4});

  // And a batch that disagrees with its claim is refused and its offsets skipped
  ASSERT_OK_AND_ASSIGN(ZeroCopyBatch wrong, producer.claim(1, 4096, 2));
  BatchBuilder one(wrong.bytes);
  ASSERT_TRUE(one.append(value_record("lonely")));
  EXPECT_EQ(producer.commit(wrong, one.finish().size()).error().code, Errc::kInvalidArgument);
  ASSERT_OK_AND_ASSIGN(const SendResult after, producer.send_to(1, value_record("after")));
  EXPECT_EQ(after.offset, Offset{7});

  // Expect consumers to read it all in place
  ASSERT_OK_AND_ASSIGN(TopicConsumer consumer, TopicConsumer::create(client_));
  ASSERT_TRUE(consumer.assign("zero-copy", {1}, SeekTo::earliest()).ok());
  const Drained got = drain(consumer, 6);
  ASSERT_EQ(offsets_of(got), (std::vector<std::int64_t>{0, 1, 2, 3, 4, 7}));
  EXPECT_TRUE(got.notices.empty());
  EXPECT_EQ(got.records[1].value, "alpha");
  EXPECT_EQ(got.records[2].value, "beta");
  EXPECT_EQ(got.records[3].value, "gamma");
  EXPECT_EQ(got.records[3].timestamp_ms, 1002);
  EXPECT_EQ(got.records[4].value, "short");
  EXPECT_EQ(got.records[5].value, "after");
}

// ---- a cluster's follower: producers follow the partition's leader ------------------------------

// Stands in for the leader on another node: takes batches, numbers them from 100.
class FakeLeader final : public RemoteProducer {
 public:
  struct Call {
    std::string address;
    std::string topic;
    std::uint32_t partition = 0;
    std::int32_t records = 0;
    std::string bytes;
    Acks acks = Acks::kNone;
  };
  Result<Offset> produce(const std::string& leader_address, std::string_view topic, std::uint32_t partition, std::span<const std::byte> batch,
                         Acks acks, std::int64_t) override {
    if (refuse_next) {
      refuse_next = false;
      if (on_refuse) on_refuse();
      return Error{Errc::kAborted, "not the leader now"};
    }
    Result<BatchView> view = BatchView::parse(batch);
    if (!view.ok()) return view.error();
    calls.push_back({leader_address, std::string(topic), partition, view->record_count(),
                     std::string(reinterpret_cast<const char*>(batch.data()), batch.size()), acks});
    const Offset base = next;
    next = next + view->record_count();
    return base;
  }
  std::vector<Call> calls;
  Offset next{100};
  bool refuse_next = false;
  std::function<void()> on_refuse;
};

TEST_P(ClientTest, ProducersOnAFollowersRingSendToTheLeaderAndComeBackWhenItLeadsAgain) {
  create("routed", 1);
  // Given a node that says another node leads the partition while its ring is fenced
  bool led_here = true;
  node_->set_partition_router([&](std::string_view, std::uint32_t) -> Result<PartitionRoute> {
    if (led_here) return PartitionRoute{};
    return PartitionRoute{false, 7, 3, "10.0.0.7:9092"};
  });
  ASSERT_OK_AND_ASSIGN(const PartitionMemory memory, node_->open_partition("routed", 0));
  auto leader = std::make_shared<FakeLeader>();
  ProducerOptions options;
  options.remote = leader;
  ASSERT_OK_AND_ASSIGN(TopicProducer producer, TopicProducer::create(client_, "routed", options));
  ASSERT_OK_AND_ASSIGN(const SendResult in_ring, producer.send_to(0, value_record("here")));
  EXPECT_EQ(in_ring.offset, Offset{0});
  EXPECT_EQ(in_ring.acknowledged, Acks::kNone);

  // When the node starts to follow (the replicator fences the ring)
  led_here = false;
  set_leader_epoch(memory.ring, ring_layout::kFollowing);

  // Then sends go to the leader, each answered with the leader's offset
  ASSERT_OK_AND_ASSIGN(const SendResult away, producer.send_to(0, value_record("there")));
  EXPECT_EQ(away.offset, Offset{100});
  EXPECT_EQ(away.acknowledged, Acks::kLeader);
  ASSERT_EQ(leader->calls.size(), 1u);
  EXPECT_EQ(leader->calls[0].address, "10.0.0.7:9092");
  EXPECT_EQ(leader->calls[0].topic, "routed");
  EXPECT_EQ(leader->calls[0].records, 1);
  EXPECT_NE(leader->calls[0].bytes.find("there"), std::string::npos);
  EXPECT_EQ(producer.stats().remote_batches, 1u);
  EXPECT_EQ(producer.stats().reroutes, 1u);
  // And a send acknowledged by the leader's log cannot be awaited at acks=all afterwards
  EXPECT_TRUE(producer.await(away, Acks::kLeader).ok());
  EXPECT_EQ(producer.await(away, Acks::kAll).error().code, Errc::kFailedPrecondition);
  // And the record sent into the ring before the fence is not acknowledged as if it had survived
  EXPECT_EQ(producer.await(in_ring, Acks::kLeader, 100).error().code, Errc::kAborted);
  EXPECT_EQ(producer.flush(100).error().code, Errc::kAborted);
  EXPECT_TRUE(producer.flush(100).ok());  // said once

  // And batches and zero-copy claims go there too, whole
  const RecordInput pair[2] = {value_record("b1"), value_record("b2")};
  ASSERT_OK_AND_ASSIGN(const SendResult batch, producer.send_batch(0, pair));
  EXPECT_EQ(batch.offset, Offset{101});
  ASSERT_OK_AND_ASSIGN(ZeroCopyBatch claimed, producer.claim(0, 512, 1));
  EXPECT_TRUE(claimed.remote);
  // While it is open, nothing else is written where it is being built (as with a ring's claim)
  EXPECT_EQ(producer.send_to(0, value_record("meanwhile")).error().code, Errc::kFailedPrecondition);
  EXPECT_EQ(producer.claim(0, 512, 1).error().code, Errc::kInvalidArgument);
  BatchBuilder builder(claimed.bytes);
  ASSERT_TRUE(builder.append(value_record("in place", 5)));
  ASSERT_OK_AND_ASSIGN(const SendResult committed, producer.commit(claimed, builder.finish().size()));
  EXPECT_EQ(committed.offset, Offset{103});
  ASSERT_EQ(leader->calls.size(), 3u);
  EXPECT_EQ(leader->calls[1].records, 2);
  EXPECT_NE(leader->calls[2].bytes.find("in place"), std::string::npos);
  ASSERT_OK_AND_ASSIGN(ZeroCopyBatch dropped, producer.claim(0, 512, 1));
  producer.abort(dropped);
  EXPECT_EQ(producer.commit(dropped, 100).error().code, Errc::kFailedPrecondition);

  // And a producer with no remote route names the leader instead
  ASSERT_OK_AND_ASSIGN(TopicProducer stranded, TopicProducer::create(client_, "routed"));
  Result<SendResult> refused = stranded.send_to(0, value_record("nowhere"));
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.error().code, Errc::kFailedPrecondition);
  EXPECT_NE(refused.error().message.find("led by node 7"), std::string::npos) << refused.error().message;

  // When leadership comes back (the leader refuses, this node leads at a new epoch)
  leader->refuse_next = true;
  leader->on_refuse = [&] {
    led_here = true;
    set_leader_epoch(memory.ring, 4);
  };
  ASSERT_OK_AND_ASSIGN(const SendResult back, producer.send_to(0, value_record("home")));
  // Then the record lands in this node's ring again, after what it held
  EXPECT_EQ(back.offset, Offset{1});
  EXPECT_EQ(back.acknowledged, Acks::kNone);
  EXPECT_EQ(back.leader_epoch, 4);
  EXPECT_EQ(leader->calls.size(), 3u);
  EXPECT_EQ(producer.stats().reroutes, 2u);
  ASSERT_OK_AND_ASSIGN(const SendResult fast, producer.send_to(0, value_record("fast path")));
  EXPECT_EQ(fast.offset, Offset{2});
  node_->set_partition_router({});
}

TEST_P(ClientTest, ConsumersOfAReplicatedPartitionReadOnlyBelowTheHighWatermark) {
  create("replicated", 2);
  // Given partition 0 replicated (its node leads it at epoch 1) with a high watermark of 2, and
  // partition 1 on this node alone
  ASSERT_OK_AND_ASSIGN(const PartitionMemory memory, node_->open_partition("replicated", 0));
  set_leader_epoch(memory.ring, 1);
  publish_high_watermark(memory.ring, Offset{2});
  ASSERT_OK_AND_ASSIGN(TopicProducer producer, TopicProducer::create(client_, "replicated"));
  for (const char* v : {"r0", "r1", "r2", "r3", "r4"}) ASSERT_TRUE(producer.send_to(0, value_record(v)).ok());
  const RecordInput pair[2] = {value_record("r5"), value_record("r6")};
  ASSERT_TRUE(producer.send_batch(0, pair).ok());
  ASSERT_TRUE(producer.send_to(1, value_record("alone")).ok());
  ASSERT_OK_AND_ASSIGN(TopicConsumer consumer, TopicConsumer::create(client_));
  ASSERT_TRUE(consumer.assign("replicated", {0, 1}, SeekTo::earliest()).ok());

  // When it polls, it sees partition 0 below the high watermark only, and partition 1 whole
  Drained got = drain(consumer, 3, std::chrono::milliseconds(2'000));
  std::set<std::string> values;
  for (const test::Got& g : got.records) values.insert(g.value);
  EXPECT_EQ(values, (std::set<std::string>{"r0", "r1", "alone"}));
  ASSERT_OK_AND_ASSIGN(PollResult none, consumer.poll(0));
  EXPECT_TRUE(none.records.empty());

  // When the high watermark passes part of a batch, the batch still waits (batches are whole)
  publish_high_watermark(memory.ring, Offset{6});
  got = drain(consumer, 3, std::chrono::milliseconds(2'000));
  EXPECT_EQ(offsets_of(got), (std::vector<std::int64_t>{2, 3, 4}));

  // And a poll waiting for it is woken when it passes the rest
  std::thread replicas([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    publish_high_watermark(memory.ring, Offset{7});
  });
  ASSERT_OK_AND_ASSIGN(TopicConsumer one, TopicConsumer::create(client_));
  ASSERT_TRUE(one.assign("replicated", {0}, SeekTo::offset(5)).ok());
  ASSERT_OK_AND_ASSIGN(PollResult woken, one.poll(10'000));
  replicas.join();
  ASSERT_EQ(woken.records.size(), 2u);
  EXPECT_EQ(woken.records[0].offset, Offset{5});
  EXPECT_EQ(woken.records[1].offset, Offset{6});
  got = drain(consumer, 2, std::chrono::milliseconds(2'000));
  EXPECT_EQ(offsets_of(got), (std::vector<std::int64_t>{5, 6}));
}

TEST_P(ClientTest, AbortLeavesAGapThatConsumersSkip) {
  create("aborts", 1);
  ASSERT_OK_AND_ASSIGN(TopicProducer producer, TopicProducer::create(client_, "aborts"));
  ASSERT_OK_AND_ASSIGN(TopicConsumer consumer, TopicConsumer::create(client_));
  ASSERT_TRUE(consumer.assign("aborts", {}, SeekTo::earliest()).ok());
  ASSERT_TRUE(producer.send(value_record("a")).ok());
  ASSERT_TRUE(producer.send(value_record("b")).ok());

  // Given a claim of three records that is given up
  ASSERT_OK_AND_ASSIGN(ZeroCopyBatch batch, producer.claim(0, 512, 3));
  EXPECT_EQ(batch.base_offset, Offset{2});
  producer.abort(batch);
  producer.abort(batch);  // a second abort changes nothing
  EXPECT_EQ(producer.commit(batch, 100).error().code, Errc::kFailedPrecondition);

  // When more records follow
  ASSERT_OK_AND_ASSIGN(const SendResult c, producer.send(value_record("c")));
  EXPECT_EQ(c.offset, Offset{5});
  ASSERT_TRUE(producer.send(value_record("d")).ok());

  // Expect the consumer to skip the gap without a notice
  const Drained got = drain(consumer, 4);
  EXPECT_EQ(offsets_of(got), (std::vector<std::int64_t>{0, 1, 5, 6}));
  EXPECT_TRUE(got.notices.empty());
  ASSERT_OK_AND_ASSIGN(const Offset position, consumer.position("aborts", 0));
  EXPECT_EQ(position, Offset{7});

  // And a seek into the gap lands on the first record after it
  ASSERT_TRUE(consumer.seek("aborts", 0, SeekTo::offset(3)).ok());
  EXPECT_EQ(offsets_of(drain(consumer, 2)), (std::vector<std::int64_t>{5, 6}));
}

TEST_P(ClientTest, DestroyingAProducerAbortsItsOpenClaim) {
  create("abandoned", 1);
  ASSERT_OK_AND_ASSIGN(TopicConsumer consumer, TopicConsumer::create(client_));
  ASSERT_TRUE(consumer.assign("abandoned", {}, SeekTo::earliest()).ok());
  {
    ASSERT_OK_AND_ASSIGN(TopicProducer producer, TopicProducer::create(client_, "abandoned"));
    ASSERT_OK_AND_ASSIGN(ZeroCopyBatch batch, producer.claim(0, 256, 2));
    (void)batch;
  }
  ASSERT_OK_AND_ASSIGN(TopicProducer producer, TopicProducer::create(client_, "abandoned"));
  ASSERT_OK_AND_ASSIGN(const SendResult sent, producer.send(value_record("next")));
  EXPECT_EQ(sent.offset, Offset{2});
  EXPECT_EQ(offsets_of(drain(consumer, 1)), (std::vector<std::int64_t>{2}));
}

TEST_P(ClientTest, RecordsLargerThanTheTopicAllowsAreRefused) {
  create("limits", 1);
  ASSERT_OK_AND_ASSIGN(TopicProducer producer, TopicProducer::create(client_, "limits"));
  // The topic's max.batch.bytes is the limit, exactly.
  EXPECT_EQ(producer.max_batch_bytes(), 16384u);
  std::string value;
  for (std::size_t n = 16'000; n < 16'384 && value.empty(); ++n)
    if (single_record_batch_bytes(value_record(std::string(n, 'f'))) == 16384) value.assign(n, 'f');
  ASSERT_FALSE(value.empty());
  ASSERT_TRUE(producer.send(value_record(value)).ok());

  // One byte more is refused, saying which limit
  value.push_back('+');
  Result<SendResult> refused = producer.send(value_record(value));
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.error().code, Errc::kInvalidArgument);
  EXPECT_NE(refused.error().message.find("max.batch.bytes"), std::string::npos) << refused.error().message;
  EXPECT_NE(refused.error().message.find("16384"), std::string::npos) << refused.error().message;
  EXPECT_EQ(producer.claim(0, 16385, 1).error().code, Errc::kInvalidArgument);
  EXPECT_EQ(producer.claim(0, std::size_t{1} << 30, 1).error().code, Errc::kInvalidArgument);
  EXPECT_EQ(producer.claim(0, 10, 1).error().code, Errc::kInvalidArgument);   // shorter than a header
  EXPECT_EQ(producer.claim(0, 1000, 0).error().code, Errc::kInvalidArgument);  // no records
  const std::string hundred(100, 'm');
  std::vector<RecordInput> many(200, value_record(hundred));
  EXPECT_EQ(producer.send_batch(0, many).error().code, Errc::kInvalidArgument);

  // And the producer carries on
  ASSERT_OK_AND_ASSIGN(const SendResult sent, producer.send(value_record("small")));
  EXPECT_EQ(sent.offset, Offset{1});
}

TEST_P(ClientTest, AnExclusiveProducerHoldsThePartitionAlone) {
  create("exclusive", 1);
  ProducerOptions exclusive;
  exclusive.mode = ProducerMode::kExclusive;
  std::optional<TopicProducer> only;
  {
    ASSERT_OK_AND_ASSIGN(TopicProducer made, TopicProducer::create(client_, "exclusive", exclusive));
    only.emplace(std::move(made));
  }
  ASSERT_OK_AND_ASSIGN(TopicProducer shared, TopicProducer::create(client_, "exclusive"));
  ASSERT_OK_AND_ASSIGN(const SendResult first, only->send(value_record("mine")));
  EXPECT_EQ(first.offset, Offset{0});

  // While it holds the partition, a shared producer is refused, saying why
  Result<SendResult> refused = shared.send(value_record("theirs"));
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.error().code, Errc::kFailedPrecondition);
  EXPECT_NE(refused.error().message.find("exclusive"), std::string::npos) << refused.error().message;

  // Once it is gone, the partition is shared again
  only.reset();
  ASSERT_OK_AND_ASSIGN(const SendResult next, shared.send(value_record("theirs")));
  EXPECT_EQ(next.offset, Offset{1});
}

// ---- consumer ----------------------------------------------------------------------------------

TEST_P(ClientTest, AssignChecksTopicsAndPartitions) {
  create("assigned", 3);
  ASSERT_OK_AND_ASSIGN(TopicConsumer consumer, TopicConsumer::create(client_));
  EXPECT_EQ(consumer.poll(0).error().code, Errc::kFailedPrecondition);  // nothing assigned yet
  EXPECT_EQ(consumer.assign("missing").error().code, Errc::kNotFound);
  EXPECT_EQ(consumer.assign("assigned", {3}).error().code, Errc::kInvalidArgument);
  EXPECT_EQ(consumer.seek("assigned", 0, SeekTo::earliest()).error().code, Errc::kFailedPrecondition);
  ASSERT_TRUE(consumer.assign("assigned", {1}).ok());
  EXPECT_EQ(consumer.assigned_partitions(), 1u);
  ASSERT_TRUE(consumer.assign("assigned").ok());  // all: the one held already is kept
  EXPECT_EQ(consumer.assigned_partitions(), 3u);
  EXPECT_EQ(consumer.position("assigned", 7).error().code, Errc::kFailedPrecondition);
  // A start the partition cannot give leaves nothing assigned.
  create("other", 1);
  const Result<void> too_far = consumer.assign("other", {}, SeekTo::offset(5));
  ASSERT_FALSE(too_far.ok());
  EXPECT_EQ(too_far.error().code, Errc::kOutOfRange);
  EXPECT_EQ(consumer.assigned_partitions(), 3u);
  EXPECT_EQ(consumer.position("other", 0).error().code, Errc::kFailedPrecondition);
  ConsumerOptions none;
  none.max_poll_records = 0;
  EXPECT_EQ(TopicConsumer::create(client_, none).error().code, Errc::kInvalidArgument);
  EXPECT_EQ(TopicConsumer::create(nullptr).error().code, Errc::kInvalidArgument);
  EXPECT_EQ(TopicProducer::create(client_, "missing").error().code, Errc::kNotFound);
}

TEST_P(ClientTest, SeeksToEarliestLatestAndOffsets) {
  create("seeks", 1);
  ASSERT_OK_AND_ASSIGN(TopicProducer producer, TopicProducer::create(client_, "seeks"));
  for (int i = 0; i < 10; ++i) ASSERT_TRUE(producer.send(value_record("r" + std::to_string(i))).ok());
  ASSERT_OK_AND_ASSIGN(TopicConsumer consumer, TopicConsumer::create(client_));

  // Earliest: every record
  ASSERT_TRUE(consumer.assign("seeks", {}, SeekTo::earliest()).ok());
  Drained got = drain(consumer, 10);
  EXPECT_EQ(offsets_of(got), range(0, 10));
  EXPECT_EQ(got.records[9].value, "r9");

  // Latest: only what comes next
  ASSERT_TRUE(consumer.seek("seeks", 0, SeekTo::latest()).ok());
  EXPECT_TRUE(drain(consumer, 0).records.empty());
  ASSERT_TRUE(producer.send(value_record("r10")).ok());
  EXPECT_EQ(offsets_of(drain(consumer, 1)), (std::vector<std::int64_t>{10}));

  // An offset: from there on
  ASSERT_TRUE(consumer.seek("seeks", 0, SeekTo::offset(4)).ok());
  ASSERT_OK_AND_ASSIGN(const Offset at, consumer.position("seeks", 0));
  EXPECT_EQ(at, Offset{4});
  got = drain(consumer, 7);
  EXPECT_EQ(offsets_of(got), range(4, 11));
  EXPECT_EQ(got.records[0].value, "r4");

  // The log end offset itself: nothing yet, then the next record
  ASSERT_TRUE(consumer.seek("seeks", 0, SeekTo::offset(11)).ok());
  EXPECT_TRUE(drain(consumer, 0).records.empty());
  ASSERT_TRUE(producer.send(value_record("r11")).ok());
  EXPECT_EQ(offsets_of(drain(consumer, 1)), (std::vector<std::int64_t>{11}));

  // Beyond the end, or before the start: out of range, and the position is kept
  const Result<void> beyond = consumer.seek("seeks", 0, SeekTo::offset(13));
  ASSERT_FALSE(beyond.ok());
  EXPECT_EQ(beyond.error().code, Errc::kOutOfRange);
  EXPECT_NE(beyond.error().message.find("12"), std::string::npos) << beyond.error().message;
  EXPECT_EQ(consumer.seek("seeks", 0, SeekTo::offset(-1)).error().code, Errc::kOutOfRange);
  ASSERT_OK_AND_ASSIGN(const Offset kept, consumer.position("seeks", 0));
  EXPECT_EQ(kept, Offset{12});
}

TEST_P(ClientTest, SeekIntoTheMiddleOfABatchStartsAtThatOffset) {
  create("mid-batch", 1);
  ASSERT_OK_AND_ASSIGN(TopicProducer producer, TopicProducer::create(client_, "mid-batch"));
  std::vector<std::string> values;
  for (int i = 0; i < 10; ++i) values.push_back("b" + std::to_string(i));
  std::vector<RecordInput> records;
  for (int i = 0; i < 10; ++i) records.push_back(value_record(values[static_cast<std::size_t>(i)], 100 * (i + 1)));
  ASSERT_TRUE(producer.send_batch(0, records).ok());
  ASSERT_OK_AND_ASSIGN(TopicConsumer consumer, TopicConsumer::create(client_));
  ASSERT_TRUE(consumer.assign("mid-batch", {}, SeekTo::offset(4)).ok());
  // Its position, and so what a commit before the first poll saves, is where it was moved to, not
  // the batch's start (before: 0, and a restart read records 0-3 again)
  EXPECT_EQ(consumer.position("mid-batch", 0).value(), Offset{4});

  // Kafka's consumers never return records before the position they were moved to.
  const Drained got = drain(consumer, 6);
  EXPECT_EQ(offsets_of(got), range(4, 10));
  ASSERT_FALSE(got.records.empty());
  EXPECT_EQ(got.records[0].value, "b4");

  // Likewise for a timestamp inside the batch: the first record at or after it.
  ASSERT_TRUE(consumer.seek("mid-batch", 0, SeekTo::timestamp(450)).ok());
  EXPECT_EQ(consumer.position("mid-batch", 0).value(), Offset{4});
  const Drained by_time = drain(consumer, 6);
  EXPECT_EQ(offsets_of(by_time), range(4, 10));
  ASSERT_FALSE(by_time.records.empty());
  EXPECT_EQ(by_time.records[0].timestamp_ms, 500);
}

TEST_P(ClientTest, SeekToTimestampFindsTheFirstRecordAtOrAfterIt) {
  create("times", 1);
  ASSERT_OK_AND_ASSIGN(TopicProducer producer, TopicProducer::create(client_, "times"));
  for (int i = 0; i < 10; ++i) ASSERT_TRUE(producer.send(value_record("t" + std::to_string(i), 1000 * (i + 1))).ok());
  ASSERT_OK_AND_ASSIGN(TopicConsumer consumer, TopicConsumer::create(client_));
  ASSERT_TRUE(consumer.assign("times", {}, SeekTo::timestamp(3500)).ok());

  // Between two records: the later one
  Drained got = drain(consumer, 6);
  ASSERT_FALSE(got.records.empty());
  EXPECT_EQ(got.records[0].offset, 3);
  EXPECT_EQ(got.records[0].timestamp_ms, 4000);
  EXPECT_EQ(offsets_of(got), range(3, 10));

  // Exactly a record's timestamp: that record
  ASSERT_TRUE(consumer.seek("times", 0, SeekTo::timestamp(3000)).ok());
  got = drain(consumer, 8);
  ASSERT_FALSE(got.records.empty());
  EXPECT_EQ(got.records[0].offset, 2);

  // Before every record: the first
  ASSERT_TRUE(consumer.seek("times", 0, SeekTo::timestamp(0)).ok());
  EXPECT_EQ(offsets_of(drain(consumer, 10)), range(0, 10));

  // After every record: nothing until a later one arrives
  ASSERT_TRUE(consumer.seek("times", 0, SeekTo::timestamp(20'000)).ok());
  EXPECT_TRUE(drain(consumer, 0).records.empty());
  ASSERT_TRUE(producer.send(value_record("late", 30'000)).ok());
  got = drain(consumer, 1);
  ASSERT_EQ(got.records.size(), 1u);
  EXPECT_EQ(got.records[0].offset, 10);
  EXPECT_EQ(got.records[0].value, "late");
}

TEST_P(ClientTest, PolledViewsCarryKeyValueAndHeadersIntact) {
  create("views", 1);
  ASSERT_OK_AND_ASSIGN(TopicProducer producer, TopicProducer::create(client_, "views"));
  ASSERT_OK_AND_ASSIGN(TopicConsumer consumer, TopicConsumer::create(client_));
  ASSERT_TRUE(consumer.assign("views", {}, SeekTo::earliest()).ok());

  // Given records with keys, values and headers, and with each of them absent or empty
  const std::string binary("\x00\x01\xff\x7f", 4);
  const RecordHeader headers[] = {{"trace-id", bytes_of("abc123")}, {"nothing", std::nullopt}, {"", bytes_of("")}, {"bin", bytes_of(binary)}};
  RecordInput full;
  full.key = bytes_of("the-key");
  full.value = bytes_of("the-value");
  full.timestamp_ms = 1'700'000'000'123;
  full.headers = headers;
  RecordInput nulls;  // no key, no value, no headers
  nulls.timestamp_ms = 7;
  RecordInput empties;
  empties.key = bytes_of("");
  empties.value = bytes_of("");
  ASSERT_TRUE(producer.send_to(0, full).ok());
  ASSERT_TRUE(producer.send_to(0, nulls).ok());
  ASSERT_TRUE(producer.send_to(0, empties).ok());
  const RecordInput in_batch[] = {full, nulls};
  ASSERT_TRUE(producer.send_batch(0, in_batch).ok());

  // When they are polled
  ASSERT_OK_AND_ASSIGN(const PollResult polled, consumer.poll(1000));

  // Expect every field as sent, for single records and batched ones alike
  ASSERT_EQ(polled.records.size(), 5u);
  EXPECT_TRUE(polled.notices.empty());
  for (std::size_t i : {0u, 3u}) {
    const ConsumedRecord& r = polled.records[i];
    EXPECT_EQ(r.topic, "views");
    EXPECT_EQ(r.partition, 0u);
    EXPECT_EQ(r.offset, Offset{static_cast<std::int64_t>(i)});
    EXPECT_EQ(text_of(r.key), "the-key");
    EXPECT_EQ(text_of(r.value), "the-value");
    EXPECT_EQ(r.timestamp_ms, 1'700'000'000'123);
    ASSERT_EQ(r.header_count, 4);
    std::vector<std::pair<std::string, std::string>> seen;
    r.for_each_header([&](const RecordHeader& h) { seen.emplace_back(std::string(h.key), text_of(h.value)); });
    EXPECT_EQ(seen, (std::vector<std::pair<std::string, std::string>>{{"trace-id", "abc123"}, {"nothing", "<null>"}, {"", ""}, {"bin", binary}}));
  }
  for (std::size_t i : {1u, 4u}) {
    const ConsumedRecord& r = polled.records[i];
    EXPECT_FALSE(r.key.has_value());
    EXPECT_FALSE(r.value.has_value());
    EXPECT_EQ(r.header_count, 0);
    EXPECT_EQ(r.timestamp_ms, 7);
  }
  EXPECT_TRUE(polled.records[2].key.has_value());
  EXPECT_TRUE(polled.records[2].value.has_value());
  EXPECT_EQ(polled.records[2].key->size(), 0u);
  EXPECT_EQ(polled.records[2].value->size(), 0u);
  EXPECT_TRUE(consumer.views_intact());
}

TEST_P(ClientTest, PollReturnsAtMostMaxPollRecords) {
  create("capped", 1);
  ASSERT_OK_AND_ASSIGN(TopicProducer producer, TopicProducer::create(client_, "capped"));
  for (int i = 0; i < 10; ++i) ASSERT_TRUE(producer.send(value_record("s" + std::to_string(i))).ok());
  std::vector<std::string> values;
  for (int i = 0; i < 10; ++i) values.push_back("m" + std::to_string(i));
  std::vector<RecordInput> batch;
  for (const std::string& v : values) batch.push_back(value_record(v));
  ASSERT_TRUE(producer.send_batch(0, batch).ok());  // offsets 10..19 in one batch

  ConsumerOptions options;
  options.max_poll_records = 3;
  ASSERT_OK_AND_ASSIGN(TopicConsumer consumer, TopicConsumer::create(client_, options));
  ASSERT_TRUE(consumer.assign("capped", {}, SeekTo::earliest()).ok());
  std::vector<std::int64_t> offsets;
  std::vector<std::string> seen;
  for (int polls = 0; polls < 50 && offsets.size() < 20; ++polls) {
    ASSERT_OK_AND_ASSIGN(const PollResult polled, consumer.poll(100));
    EXPECT_LE(polled.records.size(), 3u) << "poll " << polls;
    EXPECT_TRUE(polled.notices.empty());
    for (const ConsumedRecord& r : polled.records) {
      offsets.push_back(r.offset.value);
      seen.push_back(text_of(r.value));
    }
    EXPECT_TRUE(consumer.views_intact());
    // The position is the next record a poll returns, also inside a batch cut short.
    ASSERT_OK_AND_ASSIGN(const Offset at, consumer.position("capped", 0));
    EXPECT_EQ(at.value, offsets.empty() ? 0 : offsets.back() + 1);
  }
  EXPECT_EQ(offsets, range(0, 20));
  ASSERT_EQ(seen.size(), 20u);
  EXPECT_EQ(seen[10], "m0");
  EXPECT_EQ(seen[19], "m9");
  ASSERT_OK_AND_ASSIGN(const Offset position, consumer.position("capped", 0));
  EXPECT_EQ(position, Offset{20});
}

TEST_P(ClientTest, PollWithNothingToReadReturnsEmpty) {
  create("quiet", 2);
  ASSERT_OK_AND_ASSIGN(TopicConsumer consumer, TopicConsumer::create(client_));
  ASSERT_TRUE(consumer.assign("quiet", {}, SeekTo::earliest()).ok());
  for (const std::int64_t timeout_ms : {0, 0, 5, 20}) {
    ASSERT_OK_AND_ASSIGN(const PollResult polled, consumer.poll(timeout_ms));
    EXPECT_TRUE(polled.records.empty());
    EXPECT_TRUE(polled.notices.empty());
  }
  EXPECT_TRUE(consumer.views_intact());
}

TEST_P(ClientTest, ProducersAndConsumersOfADeletedTopicAreToldAndItsPartitionIsUnassigned) {
  for (const WaitKind wait : {WaitKind::kPark, WaitKind::kSpin, WaitKind::kYield}) {
    const std::string topic = "doomed-" + std::to_string(static_cast<int>(wait));
    SCOPED_TRACE(topic);
    // Given a producer of a topic and a consumer that read what it sent, then waits for more in
    // a poll of up to a minute (parked, spinning or yielding)
    create(topic, 1);
    ASSERT_OK_AND_ASSIGN(TopicProducer producer, TopicProducer::create(client_, topic));
    ASSERT_TRUE(producer.send_to(0, value_record("before")).ok());
    ConsumerOptions options;
    options.wait = wait;
    ASSERT_OK_AND_ASSIGN(TopicConsumer consumer, TopicConsumer::create(client_, options));
    ASSERT_TRUE(consumer.assign(topic, {0}, SeekTo::earliest()).ok());
    ASSERT_EQ(test::drain(consumer, 1).records.size(), 1u);
    auto waiting = std::async(std::launch::async, [&] { return consumer.poll(60'000); });
    std::this_thread::sleep_for(std::chrono::milliseconds(50));  // most likely waiting by then

    // When the topic is deleted
    ASSERT_TRUE(client_->delete_topic(topic).ok());

    // Expect the poll to end with the news and the partition no longer assigned
    ASSERT_EQ(waiting.wait_for(std::chrono::seconds(30)), std::future_status::ready) << "the consumer waited on through the delete";
    const Result<PollResult> polled = waiting.get();
    ASSERT_FALSE(polled.ok());
    EXPECT_EQ(polled.error().code, Errc::kNotFound);
    EXPECT_NE(polled.error().message.find("was deleted"), std::string::npos) << polled.error().message;
    EXPECT_EQ(consumer.assigned_partitions(), 0u);
    // And the producer's next send to fail rather than go into a ring nothing reads
    const Result<SendResult> sent = producer.send_to(0, value_record("after"));
    ASSERT_FALSE(sent.ok());
    EXPECT_EQ(sent.error().code, Errc::kNotFound) << sent.error().message;
  }
}

TEST_P(ClientTest, ATopicMadeAgainUnderItsNameIsAnotherToTheConsumersAndProducersOfTheFirst) {
  // Given a producer and a consumer of a topic, and the consumer's other partition
  create("again", 1);
  create("kept", 1);
  ASSERT_OK_AND_ASSIGN(TopicProducer producer, TopicProducer::create(client_, "again"));
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(producer.send_to(0, value_record("old")).ok());
  ASSERT_OK_AND_ASSIGN(TopicConsumer consumer, TopicConsumer::create(client_));
  ASSERT_TRUE(consumer.assign("again", {0}, SeekTo::earliest()).ok());
  ASSERT_TRUE(consumer.assign("kept", {0}, SeekTo::earliest()).ok());
  ASSERT_EQ(test::drain(consumer, 3).records.size(), 3u);

  // When the topic is deleted and made again under its name
  ASSERT_TRUE(client_->delete_topic("again").ok());
  create("again", 1);

  // Expect the consumer told the topic it read is gone, and left with its other partition
  std::optional<Error> told;
  for (int polls = 0; polls < 100 && !told; ++polls) {
    Result<PollResult> polled = consumer.poll(10);
    if (!polled.ok()) told = polled.error();
  }
  ASSERT_TRUE(told.has_value()) << "no poll said the topic was deleted";
  EXPECT_EQ(told->code, Errc::kNotFound);
  EXPECT_NE(told->message.find("made again"), std::string::npos) << told->message;
  EXPECT_EQ(consumer.assigned_partitions(), 1u);
  ASSERT_TRUE(consumer.poll(0).ok());
  // And the producer told so too (its acknowledgements must not be taken from the new topic's
  // offsets), while a producer made for the new topic sends from its first offset
  const Result<SendResult> sent = producer.send_to(0, value_record("new"));
  ASSERT_FALSE(sent.ok());
  EXPECT_EQ(sent.error().code, Errc::kNotFound);
  EXPECT_NE(sent.error().message.find("made again"), std::string::npos) << sent.error().message;
  ASSERT_OK_AND_ASSIGN(TopicProducer fresh, TopicProducer::create(client_, "again"));
  const Result<SendResult> first = fresh.send_to(0, value_record("new"));
  ASSERT_TRUE(first.ok()) << first.error().message;
  EXPECT_EQ(first->offset, Offset{0});
}

TEST_P(ClientTest, ALappedConsumerIsToldWhatItMissedAndContinues) {
  // Given a 64 KiB ring and a consumer that reads nothing while ~280 KiB are sent
  create("lapping", 1);
  ASSERT_OK_AND_ASSIGN(TopicConsumer consumer, TopicConsumer::create(client_));
  ASSERT_TRUE(consumer.assign("lapping", {}, SeekTo::earliest()).ok());
  ASSERT_OK_AND_ASSIGN(TopicProducer producer, TopicProducer::create(client_, "lapping"));
  constexpr int kRecords = 1000;
  for (int i = 0; i < kRecords; ++i) {
    std::string value = std::to_string(i);
    value.resize(200, '.');
    ASSERT_TRUE(producer.send(value_record(value)).ok()) << i;
  }

  // When it polls
  const Drained got = drain(consumer, 0);

  // Expect one lapped notice naming the offsets it missed, then every later record, intact
  ASSERT_EQ(got.notices.size(), 1u);
  const PollNotice& notice = got.notices[0];
  EXPECT_EQ(notice.kind, PollNotice::Kind::kLapped);
  EXPECT_EQ(notice.topic, "lapping");
  EXPECT_EQ(notice.partition, 0u);
  EXPECT_EQ(notice.from, Offset{0});
  EXPECT_GT(notice.to, Offset{0});
  EXPECT_LT(notice.to, Offset{kRecords});
  EXPECT_EQ(offsets_of(got), range(notice.to.value, kRecords));
  for (const test::Got& r : got.records) ASSERT_EQ(r.value.substr(0, r.value.find('.')), std::to_string(r.offset));
  // The node kept about half the ring readable.
  EXPECT_GT(got.records.size() * 200, std::size_t{20} << 10);
}

TEST_P(ClientTest, ViewsIntactTurnsFalseOnceProducersOverwriteThem) {
  create("overwrite", 1);
  ASSERT_OK_AND_ASSIGN(TopicProducer producer, TopicProducer::create(client_, "overwrite"));
  ASSERT_OK_AND_ASSIGN(TopicConsumer consumer, TopicConsumer::create(client_));
  ASSERT_TRUE(consumer.assign("overwrite", {}, SeekTo::earliest()).ok());
  const std::string value(200, 'o');
  for (int i = 0; i < 10; ++i) ASSERT_TRUE(producer.send(value_record(value)).ok());

  // Given views of the first ten records
  ASSERT_OK_AND_ASSIGN(const PollResult polled, consumer.poll(1000));
  ASSERT_EQ(polled.records.size(), 10u);
  EXPECT_TRUE(consumer.views_intact());

  // When producers lap them
  for (int i = 0; i < 1000; ++i) ASSERT_TRUE(producer.send(value_record(value)).ok());

  // Expect the views reported as no longer intact, and the next poll to report the lap
  EXPECT_FALSE(consumer.views_intact());
  ASSERT_OK_AND_ASSIGN(const PollResult next, consumer.poll(0));
  ASSERT_FALSE(next.notices.empty());
  EXPECT_EQ(next.notices[0].kind, PollNotice::Kind::kLapped);
  EXPECT_EQ(next.notices[0].from, Offset{10});
  ASSERT_FALSE(next.records.empty());
  EXPECT_EQ(next.records[0].offset, next.notices[0].to);
  EXPECT_TRUE(consumer.views_intact());
}

TEST_P(ClientTest, AMalformedBatchIsSkippedWithACorruptNotice) {
  create("corrupt", 1);
  ASSERT_OK_AND_ASSIGN(TopicProducer producer, TopicProducer::create(client_, "corrupt"));
  ASSERT_OK_AND_ASSIGN(TopicConsumer consumer, TopicConsumer::create(client_));
  ASSERT_TRUE(consumer.assign("corrupt", {}, SeekTo::earliest()).ok());
  ASSERT_TRUE(producer.send(value_record("good-0")).ok());

  // Given a committed batch whose header is consistent but whose record does not decode
  const RecordInput record = value_record("will-be-mangled");
  ASSERT_OK_AND_ASSIGN(ZeroCopyBatch batch, producer.claim(0, single_record_batch_bytes(record), 1));
  const std::size_t used = encode_single_record_batch(batch.bytes, record).size();
  ASSERT_GT(used, 0u);
  batch.bytes[kBatchHeaderBytes] = std::byte{0x7e};  // the record's length: far past the batch
  ASSERT_TRUE(producer.commit(batch, used).ok());
  ASSERT_TRUE(producer.send(value_record("good-2")).ok());

  // Expect the good records, and a notice for the bad one's offsets
  const Drained got = drain(consumer, 0);
  EXPECT_EQ(offsets_of(got), (std::vector<std::int64_t>{0, 2}));
  ASSERT_EQ(got.notices.size(), 1u);
  EXPECT_EQ(got.notices[0].kind, PollNotice::Kind::kCorrupt);
  EXPECT_EQ(got.notices[0].from, Offset{1});
  EXPECT_EQ(got.notices[0].to, Offset{2});
}

TEST_P(ClientTest, OneConsumerReadsManyPartitionsFairly) {
  create("fair", 3);
  ASSERT_OK_AND_ASSIGN(TopicProducer producer, TopicProducer::create(client_, "fair"));
  for (std::uint32_t p = 0; p < 3; ++p)
    for (int i = 0; i < 100; ++i) ASSERT_TRUE(producer.send_to(p, value_record(std::to_string(p))).ok());
  ConsumerOptions options;
  options.max_poll_records = 50;
  ASSERT_OK_AND_ASSIGN(TopicConsumer consumer, TopicConsumer::create(client_, options));
  ASSERT_TRUE(consumer.assign("fair", {}, SeekTo::earliest()).ok());
  std::map<std::uint32_t, std::int64_t> next;
  std::set<std::uint32_t> in_first_polls;
  for (int polls = 0; polls < 100 && next[0] + next[1] + next[2] < 300; ++polls) {
    ASSERT_OK_AND_ASSIGN(const PollResult polled, consumer.poll(100));
    for (const ConsumedRecord& r : polled.records) {
      EXPECT_EQ(r.offset.value, next[r.partition]++);
      EXPECT_EQ(text_of(r.value), std::to_string(r.partition));
      if (polls < 3) in_first_polls.insert(r.partition);
    }
  }
  EXPECT_EQ(next[0] + next[1] + next[2], 300);
  EXPECT_EQ(in_first_polls.size(), 3u);  // no partition waits for another to drain
}

INSTANTIATE_TEST_SUITE_P(Client, ClientTest, ::testing::Values(Via::kEmbedded, Via::kSocket), via_name);

}  // namespace
}  // namespace weft
