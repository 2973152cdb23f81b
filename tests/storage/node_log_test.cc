// The node with a log: every ring drained into segment files, producers allowed to overwrite
// only what the log holds (and, with fsync=always, what it synced), offsets carried on after a
// restart.
#include <fcntl.h>
#include <linux/fs.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <atomic>
#include <filesystem>
#include <mutex>
#include <future>
#include <functional>
#include <condition_variable>
#include <thread>
#include <fstream>
#include <string>
#include <vector>

#include "../temp_dir.h"
#include "forwarding_log.h"
#include "weft/client.h"
#include "weft/consumer.h"
#include "weft/fabric/record_batch.h"
#include "weft/node.h"
#include "weft/producer.h"
#include "weft/storage/segment_log.h"

namespace weft::storage {
namespace {

using test::TempDir;

NodeOptions logged_node(const std::string& data_dir) {
  NodeOptions options;
  options.prefer_hugepages = false;
  options.start_maintenance_thread = false;  // the test runs the passes
  options.open_log = [data_dir](std::string_view topic, std::uint32_t partition, const TopicConfig&) -> Result<std::unique_ptr<PartitionLog>> {
    SegmentLogOptions o;
    o.segment_bytes = 256 * 1024;
    WEFT_TRY(std::unique_ptr<SegmentLog> log,
             SegmentLog::open(data_dir + "/" + std::string(topic) + "-" + std::to_string(partition), Offset{0}, o));
    return std::unique_ptr<PartitionLog>(std::move(log));
  };
  return options;
}

// Kept whole: the tests stamp records in 2023, which a time retention would delete.
TopicSettings small(const char* fsync = "none") {
  return {{"partitions", "1"}, {"ring.capacity.bytes", "65536"}, {"max.batch.bytes", "8192"}, {"fsync", fsync}, {"retention.ms", "-1"}};
}

// A producer that a full ring answers at once (the test then runs a pass) instead of blocking.
TopicProducer producer_for_passes(const std::shared_ptr<Client>& client, const std::string& topic) {
  ProducerOptions options;
  options.max_block_ms = 0;
  return TopicProducer::create(client, topic, options).value();
}

// Sends `count` 100-byte records, running a maintenance pass whenever the ring is full.
std::int64_t send(Node& node, TopicProducer& producer, std::int64_t count) {
  std::vector<std::byte> value(100, std::byte{0x33});
  std::int64_t sent = 0;
  for (int attempts = 0; sent < count && attempts < 1'000'000; ++attempts) {
    RecordInput record;
    record.value = std::span<const std::byte>(value);
    record.timestamp_ms = 1'700'000'000'000 + sent;
    if (producer.send_to(0, record).ok()) ++sent;
    else node.maintain();
  }
  node.maintain();
  return sent;
}

TEST(NodeLog, EveryRecordReachesTheLogAndTheRingWaitsForIt) {
  // (The longest interval once overflowed a product in the pass, undefined behaviour that UBSan stops.)
  for (const char* fsync : {"none", "always", "interval=1", "interval=9223372036854775807"}) {
    SCOPED_TRACE(fsync);
    TempDir dir;
    std::int64_t total = 0;
    {
      auto node = Node::start(logged_node(dir.path())).value();
      auto client = Client::embedded(*node);
      ASSERT_TRUE(client->create_topic("events", small(fsync)).ok());
      ProducerOptions options;
      options.max_block_ms = 0;  // a full ring answers at once: the test then runs a pass
      TopicProducer producer = TopicProducer::create(client, "events", options).value();

      // Without a pass nothing is written, so producers stop at a ring's worth.
      std::vector<std::byte> value(100, std::byte{1});
      RecordInput record;
      record.value = std::span<const std::byte>(value);
      int before_full = 0;
      while (producer.send_to(0, record).ok() && before_full < 100'000) ++before_full;
      EXPECT_LT(before_full * 160, 65536);
      EXPECT_GT(before_full, 100);

      // With passes, ten rings' worth goes through and all of it is in the log.
      total = before_full + send(*node, producer, 4000);
      if (std::string(fsync) == "interval=1") {
        usleep(2000);
        node->maintain();
    }
    node->maintain();
    const PartitionStats s = node->describe_topic("events")->partitions[0];
    EXPECT_EQ(s.log_end_offset, Offset{total});
    EXPECT_TRUE(s.log_error.empty()) << s.log_error;
    EXPECT_EQ(s.consumers, 0u);  // the log writer is not counted as a client
    }
    // Every batch is in the segment files, readable by offset (read through and checked: no
    // recovery point lets closed segments open from their indexes). The node has stopped first:
    // its logs wait for their background syncs, which would otherwise write a point afterwards.
    std::filesystem::remove(dir.path() + "/events-0/recovery-point");
    SegmentLogRecovery recovery;
    auto log = SegmentLog::open(dir.path() + "/events-0", Offset{0}, {}, &recovery).value();
    EXPECT_EQ(log->next_offset(), Offset{total});
    EXPECT_EQ(recovery.batches, static_cast<std::uint64_t>(total));
    EXPECT_EQ(recovery.truncated_bytes, 0u);
  }
}

TEST(NodeLog, HurryRunsAPassNowAndThePassEventTellsAnEventLoop) {
  TempDir dir;
  // Given a node whose maintenance thread would otherwise come back only once a minute, an
  // eventfd registered as its pass event, and a record in the ring that nobody waits on yet
  NodeOptions options = logged_node(dir.path());
  options.start_maintenance_thread = true;
  options.maintenance_min_interval_us = 60'000'000;
  options.maintenance_max_interval_us = 60'000'000;
  auto node = Node::start(options).value();
  auto client = Client::embedded(*node);
  ASSERT_TRUE(client->create_topic("remote", small()).ok());
  const int event = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  ASSERT_GE(event, 0);
  node->set_pass_event(event);
  TopicProducer producer = TopicProducer::create(client, "remote", ProducerOptions{}).value();
  RecordInput record;
  const std::string value = "one";
  record.value = std::as_bytes(std::span(value.data(), value.size()));
  ASSERT_TRUE(producer.send_to(0, record).ok());
  PartitionMemory memory = node->open_partition("remote", 0).value();

  // When an event loop counts itself as a log waiter and hurries the node (as the Kafka listener
  // does for a produce that waits for its acknowledgement)
  add_log_waiter(memory.ring);
  node->hurry();

  // Expect the eventfd to be written within the bound (a minute's interval otherwise), and the
  // log to hold the record by then
  pollfd p{event, POLLIN, 0};
  Offset written{0};
  for (int i = 0; i < 100 && written < Offset{1}; ++i) {
    if (::poll(&p, 1, 100) == 1) {
      std::uint64_t count = 0;
      ASSERT_EQ(::read(event, &count, sizeof count), static_cast<ssize_t>(sizeof count));
      EXPECT_GE(count, 1u);
    }
    written = read_log_progress(memory.ring).written;
    if (written < Offset{1}) node->hurry();  // the first pass may run before the waiter counted
  }
  EXPECT_EQ(written, Offset{1});
  remove_log_waiter(memory.ring);
  node->set_pass_event(-1);
  node->stop();
  ::close(event);
}

TEST(NodeLog, ATailKeptBackForABusyPassIsWrittenWhenNoMoreComes) {
  TempDir dir;
  // Given a node whose log writer takes at most 4 MiB a pass, and a burst of records that ends
  // just past 4 MiB (so the pass that takes it thinks more is coming and keeps its ragged tail
  // for the next pass, and the next pass finds nothing new)
  NodeOptions node_options = logged_node(dir.path());
  node_options.open_log = open_segment_logs(dir.path() + "/data");
  auto node = Node::start(node_options).value();
  auto client = Client::embedded(*node);
  ASSERT_TRUE(client->create_topic("burst", TopicSettings{{"partitions", "1"}, {"ring.capacity.bytes", "16777216"},
                                                         {"max.batch.bytes", "65536"}, {"fsync", "none"}})
                  .ok());
  ProducerOptions producer_options;
  producer_options.acks = Acks::kLeader;
  producer_options.max_block_ms = 0;
  TopicProducer producer = TopicProducer::create(client, "burst", producer_options).value();
  // Large batches, so the last of the pass's 1 MiB write buffers holds more than the 64 KiB that
  // go direct (smaller ends are written through the page cache whatever comes next).
  const std::vector<std::byte> value(60'000, std::byte{0x33});
  RecordInput record;
  record.value = std::span<const std::byte>(value);
  // One record per batch, each the same size: just enough batches to pass 4 MiB with the last.
  std::vector<std::byte> scratch(65536);
  BatchBuilder builder(scratch);
  RecordInput stamped = record;
  stamped.timestamp_ms = 1;
  ASSERT_TRUE(builder.append(stamped));
  const std::size_t batch_bytes = builder.finish().size();
  const std::size_t batches = ((std::size_t{4} << 20) + batch_bytes - 1) / batch_bytes;
  SendResult last{};
  for (std::size_t i = 0; i < batches; ++i) {
    Result<SendResult> sent = producer.send_to(0, record);
    ASSERT_TRUE(sent.ok()) << sent.error().message;
    last = *sent;
  }
  // When the passes run (bounded: 2 000 of them, a millisecond apart)
  std::atomic<bool> acknowledged{false};
  std::thread passes([&] {
    for (int i = 0; i < 2000 && !acknowledged.load(); ++i) {
      node->maintain();
      usleep(1000);
    }
  });
  // Expect the last record acknowledged at acks=1 (in the log), not left waiting on a tail
  const Result<void> acked = producer.await(last, Acks::kLeader, 5'000);
  acknowledged = true;
  passes.join();
  EXPECT_TRUE(acked.ok()) << acked.error().message;
  EXPECT_EQ(node->describe_topic("burst")->partitions[0].log_end_offset, Offset{last.offset.value + 1});
}

// A node over `data_dir` takes `count` records into topic "events" (fsync as given), then stops.
void write_and_stop(const std::string& data_dir, const char* fsync, std::int64_t count) {
  auto node = Node::start(logged_node(data_dir)).value();
  auto client = Client::embedded(*node);
  ASSERT_TRUE(client->create_topic("events", small(fsync)).ok());
  ProducerOptions options;
  options.max_block_ms = 0;
  TopicProducer producer = TopicProducer::create(client, "events", options).value();
  EXPECT_EQ(send(*node, producer, count), count);
}

TEST(NodeLog, ARestartedNodeCarriesOnFromTheLogsEnd) {
  TempDir dir;
  write_and_stop(dir.path(), "none", 1000);
  auto node = Node::start(logged_node(dir.path())).value();
  auto client = Client::embedded(*node);
  ASSERT_TRUE(client->create_topic("events", small()).ok());
  TopicProducer producer = TopicProducer::create(client, "events").value();
  std::vector<std::byte> value(10, std::byte{2});
  RecordInput record;
  record.value = std::span<const std::byte>(value);
  Result<SendResult> sent = producer.send_to(0, record);
  ASSERT_TRUE(sent.ok());
  EXPECT_EQ(sent->offset, Offset{1000});
  node->maintain();
  EXPECT_EQ(node->describe_topic("events")->partitions[0].log_end_offset, Offset{1001});
}

TEST(NodeLog, AfterARestartWhatTheLogReadBackIsDurableOnlyOnceTheTopicsSyncHasCoveredIt) {
  TempDir dir;
  write_and_stop(dir.path(), "always", 1000);
  // Given a node started again over that log, whose segment it read back (after a kill, its
  // bytes could be in the page cache alone)
  auto node = Node::start(logged_node(dir.path())).value();
  auto client = Client::embedded(*node);
  ASSERT_TRUE(client->create_topic("events", small("always")).ok());
  Result<PartitionMemory> memory = node->open_partition("events", 0);
  ASSERT_TRUE(memory.ok());
  // Expect it written but not yet counted durable (replicas and acks=all rely on that)
  LogProgress progress = read_log_progress(memory->ring);
  EXPECT_EQ(progress.written, Offset{1000});
  EXPECT_LT(progress.durable, Offset{1000});
  // ... until the topic's next sync has covered it
  node->maintain();
  progress = read_log_progress(memory->ring);
  EXPECT_EQ(progress.durable, Offset{1000});
}

TEST(NodeLog, DeletingATopicDeletesItsLogs) {
  TempDir dir;
  auto node = Node::start(logged_node(dir.path())).value();
  auto client = Client::embedded(*node);
  ASSERT_TRUE(client->create_topic("gone", TopicSettings{{"partitions", "2"}, {"ring.capacity.bytes", "65536"}, {"max.batch.bytes", "8192"}}).ok());
  TopicProducer producer = TopicProducer::create(client, "gone").value();
  std::vector<std::byte> value(10, std::byte{2});
  RecordInput record;
  record.value = std::span<const std::byte>(value);
  ASSERT_TRUE(producer.send_to(1, record).ok());
  node->maintain();
  EXPECT_TRUE(std::filesystem::exists(dir.path() + "/gone-0"));
  EXPECT_TRUE(std::filesystem::exists(dir.path() + "/gone-1/00000000000000000000.log"));
  ASSERT_TRUE(client->delete_topic("gone").ok());
  EXPECT_FALSE(std::filesystem::exists(dir.path() + "/gone-0"));
  EXPECT_FALSE(std::filesystem::exists(dir.path() + "/gone-1"));
  // A new topic of the same name starts from offset 0.
  ASSERT_TRUE(client->create_topic("gone", 1).ok());
  TopicProducer again = TopicProducer::create(client, "gone").value();
  EXPECT_EQ(again.send_to(0, record)->offset, Offset{0});
}

// A segment log whose remove() waits while the test holds it (a delete under way).
struct RemovalGate {
  std::mutex mutex;
  std::condition_variable changed;
  int removals_entered = 0;
  int opened = 0;  // logs opened since the test last counted
  bool open = true;

  bool wait(const std::function<bool()>& done, std::chrono::milliseconds limit) {
    std::unique_lock lock(mutex);
    return changed.wait_for(lock, limit, done);
  }
  void set_open(bool now_open) {
    {
      std::lock_guard lock(mutex);
      open = now_open;
    }
    changed.notify_all();
  }
};

class HeldRemovalLog final : public test::ForwardingLog {
 public:
  HeldRemovalLog(std::unique_ptr<PartitionLog> inner, std::shared_ptr<RemovalGate> gate) : ForwardingLog(std::move(inner)), gate_(std::move(gate)) {}
  Result<void> remove() override {
    {
      std::unique_lock lock(gate_->mutex);
      ++gate_->removals_entered;
      gate_->changed.notify_all();
      gate_->changed.wait(lock, [&] { return gate_->open; });
    }
    return inner_->remove();
  }

 private:
  std::shared_ptr<RemovalGate> gate_;
};

TEST(NodeLog, ATopicMadeAgainWhileItsDeleteIsUnderWayStartsEmptyAndKeepsItsLog) {
  // Given a topic with records in its log, whose log's removal the test can hold
  TempDir dir;
  auto gate = std::make_shared<RemovalGate>();
  NodeOptions options = logged_node(dir.path());
  options.open_log = [inner = options.open_log, gate](std::string_view topic, std::uint32_t partition,
                                                      const TopicConfig& config) -> Result<std::unique_ptr<PartitionLog>> {
    WEFT_TRY(std::unique_ptr<PartitionLog> log, inner(topic, partition, config));
    {
      std::lock_guard lock(gate->mutex);
      ++gate->opened;
    }
    gate->changed.notify_all();
    return std::unique_ptr<PartitionLog>(std::make_unique<HeldRemovalLog>(std::move(log), gate));
  };
  auto node = Node::start(options).value();
  auto client = Client::embedded(*node);
  ASSERT_TRUE(client->create_topic("again", small()).ok());
  {
    TopicProducer producer = producer_for_passes(client, "again");
    ASSERT_EQ(send(*node, producer, 5), 5);
  }
  ASSERT_TRUE(std::filesystem::exists(dir.path() + "/again-0/00000000000000000000.log"));
  // When it is deleted, and made again while the delete waits to remove its log
  gate->set_open(false);
  {
    std::lock_guard lock(gate->mutex);
    gate->opened = 0;
  }
  auto deleting = std::async(std::launch::async, [&] { return client->delete_topic("again"); });
  struct OpenFirst {  // whatever fails below, the held delete ends before the node goes
    RemovalGate& gate;
    ~OpenFirst() { gate.set_open(true); }
  } open_first{*gate};
  ASSERT_TRUE(gate->wait([&] { return gate->removals_entered == 1; }, std::chrono::seconds(10)));
  auto creating = std::async(std::launch::async, [&] { return client->create_topic("again", small()); });
  // (a create that does not wait its turn opens the old folder now; one that does, never here)
  (void)gate->wait([&] { return gate->opened > 0; }, std::chrono::milliseconds(300));
  gate->set_open(true);
  ASSERT_EQ(deleting.wait_for(std::chrono::seconds(10)), std::future_status::ready);
  ASSERT_EQ(creating.wait_for(std::chrono::seconds(10)), std::future_status::ready);
  EXPECT_TRUE(deleting.get().ok());
  Result<TopicInfo> made = creating.get();
  ASSERT_TRUE(made.ok()) << made.error().message;
  // Expect the new topic to start at offset 0, with a log of its own that stays
  TopicProducer fresh = TopicProducer::create(client, "again").value();
  RecordInput record;
  std::vector<std::byte> value(10, std::byte{4});
  record.value = std::span<const std::byte>(value);
  Result<SendResult> sent = fresh.send_to(0, record);
  ASSERT_TRUE(sent.ok()) << sent.error().message;
  EXPECT_EQ(sent->offset, Offset{0}) << "the new topic took up the deleted one's log";
  node->maintain();
  EXPECT_TRUE(std::filesystem::exists(dir.path() + "/again-0/00000000000000000000.log")) << "the delete removed the new topic's log";
}

// A topic of `partitions` partitions in 64 KiB rings, kept whole (no time retention).
TopicSettings kept_partitions(std::uint32_t partitions) {
  return {{"partitions", std::to_string(partitions)}, {"ring.capacity.bytes", "65536"}, {"max.batch.bytes", "8192"}, {"retention.ms", "-1"}};
}

// A record of `value` (which must outlive it), stamped in 2023.
RecordInput record_of(std::span<const std::byte> value) {
  RecordInput record;
  record.value = value;
  record.timestamp_ms = 1'700'000'000'000;
  return record;
}

// Sends `record` three times to each of the topic's first `partitions` partitions, then runs a pass.
void send_three_to_each(Node& node, const std::shared_ptr<Client>& client, const std::string& topic, std::uint32_t partitions,
                        const RecordInput& record) {
  {
    TopicProducer producer = producer_for_passes(client, topic);
    for (std::uint32_t p = 0; p < partitions; ++p)
      for (int i = 0; i < 3; ++i) ASSERT_TRUE(producer.send_to(p, record).ok());
  }
  node.maintain();
}

// A segment log that notes, when it is removed, whether its topic's file was still there, and
// refuses the removal while the test says so.
struct Removals {
  std::mutex mutex;
  std::vector<bool> topic_file_there;  // at each removal, in order
  bool refuse_partition_1 = true;
};

class NotingRemovalLog final : public test::ForwardingLog {
 public:
  NotingRemovalLog(std::unique_ptr<PartitionLog> inner, std::uint32_t partition, std::string topic_file, std::shared_ptr<Removals> removals)
      : ForwardingLog(std::move(inner)), partition_(partition), topic_file_(std::move(topic_file)), removals_(std::move(removals)) {}
  Result<void> remove() override {
    std::lock_guard lock(removals_->mutex);
    removals_->topic_file_there.push_back(std::filesystem::exists(topic_file_));
    if (partition_ == 1 && removals_->refuse_partition_1) return Error{Errc::kIo, "removing the log: refused by the test"};
    return inner_->remove();
  }

 private:
  std::uint32_t partition_;
  std::string topic_file_;
  std::shared_ptr<Removals> removals_;
};

TEST(NodeLog, ADeleteRemovesTheLogsBeforeTheTopicsFileAndKeepsTheTopicWhileALogStays) {
  // Given a node that keeps its topics' files, and a topic of two partitions with records in
  // both logs, the second of which refuses to be removed
  TempDir dir;
  auto removals = std::make_shared<Removals>();
  NodeOptions options = logged_node(dir.path());
  options.metadata_dir = dir.path() + "/topics";
  options.open_log = [inner = options.open_log, removals, topics = options.metadata_dir](
                         std::string_view topic, std::uint32_t partition, const TopicConfig& config) -> Result<std::unique_ptr<PartitionLog>> {
    WEFT_TRY(std::unique_ptr<PartitionLog> log, inner(topic, partition, config));
    const std::string topic_file = topics + "/" + std::string(topic) + ".topic";
    return std::unique_ptr<PartitionLog>(std::make_unique<NotingRemovalLog>(std::move(log), partition, topic_file, removals));
  };
  const TopicSettings two = kept_partitions(2);
  const std::string topic_file = options.metadata_dir + "/held.topic";
  auto node = Node::start(options).value();
  auto client = Client::embedded(*node);
  ASSERT_TRUE(client->create_topic("held", two).ok());
  std::vector<std::byte> value(100, std::byte{0x44});
  const RecordInput record = record_of(value);
  ASSERT_NO_FATAL_FAILURE(send_three_to_each(*node, client, "held", 2, record));
  ASSERT_TRUE(std::filesystem::exists(topic_file));
  // When it is deleted
  const Result<void> deleted = client->delete_topic("held");
  // Expect the delete to fail, saying why; the logs removed while the topic's file was still
  // there; the first log gone; and the topic kept, its file and the log that stayed with it, so
  // that a topic made under the name cannot take that log up
  ASSERT_FALSE(deleted.ok());
  EXPECT_NE(deleted.error().message.find("refused by the test"), std::string::npos) << deleted.error().message;
  EXPECT_NE(deleted.error().message.find("delete it again"), std::string::npos) << deleted.error().message;
  EXPECT_EQ(removals->topic_file_there, (std::vector<bool>{true, true})) << "the topic's file went before its logs";
  EXPECT_FALSE(std::filesystem::exists(dir.path() + "/held-0"));
  EXPECT_TRUE(std::filesystem::exists(dir.path() + "/held-1/00000000000000000000.log"));
  EXPECT_TRUE(std::filesystem::exists(topic_file)) << "the file went while a log of the topic stayed";
  EXPECT_EQ(node->list_topics(), (std::vector<std::string>{"held"}));
  const Result<TopicInfo> taken = client->create_topic("held", two);
  ASSERT_FALSE(taken.ok());
  EXPECT_EQ(taken.error().code, Errc::kAlreadyExists);
  // And once the log can go, a delete again to remove the rest, and a topic made under the name
  // to start empty
  {
    std::lock_guard lock(removals->mutex);
    removals->refuse_partition_1 = false;
  }
  const Result<void> again = client->delete_topic("held");
  ASSERT_TRUE(again.ok()) << again.error().message;
  EXPECT_FALSE(std::filesystem::exists(topic_file));
  EXPECT_FALSE(std::filesystem::exists(dir.path() + "/held-1"));
  ASSERT_TRUE(client->create_topic("held", two).ok());
  TopicProducer fresh = TopicProducer::create(client, "held").value();
  for (std::uint32_t p = 0; p < 2; ++p) {
    const Result<SendResult> sent = fresh.send_to(p, record);
    ASSERT_TRUE(sent.ok()) << sent.error().message;
    EXPECT_EQ(sent->offset, Offset{0}) << "partition " << p << " took up the deleted topic's log";
  }
}

// A log that refuses appends, as a full disk does, while the test says so.
class FullDiskLog final : public test::ForwardingLog {
 public:
  FullDiskLog(std::unique_ptr<PartitionLog> inner, std::shared_ptr<std::atomic<bool>> full)
      : ForwardingLog(std::move(inner)), full_(std::move(full)) {}
  Result<void> append(std::span<const std::byte> batch) override {
    if (full_->load()) return Error{Errc::kResourceExhausted, "no space left on the test's disk"};
    return inner_->append(batch);
  }

 private:
  std::shared_ptr<std::atomic<bool>> full_;
};

TEST(NodeLog, WhileTheLogTakesNothingProducersNeverOverwriteWhatItHasNotTaken) {
  // Given a node whose passes the test runs, over a log that takes records until its disk fills,
  // and a ring of 64 KiB taking batches of up to 8 KiB
  TempDir dir;
  auto full = std::make_shared<std::atomic<bool>>(false);
  NodeOptions options = logged_node(dir.path());
  options.log_retry_interval_ms = 0;  // every pass tries the log again
  options.open_log = [inner = options.open_log, full](std::string_view topic, std::uint32_t partition,
                                                      const TopicConfig& config) -> Result<std::unique_ptr<PartitionLog>> {
    WEFT_TRY(std::unique_ptr<PartitionLog> log, inner(topic, partition, config));
    return std::unique_ptr<PartitionLog>(std::make_unique<FullDiskLog>(std::move(log), full));
  };
  auto node = Node::start(options).value();
  auto client = Client::embedded(*node);
  ASSERT_TRUE(client->create_topic("full", small()).ok());
  PartitionMemory memory = node->open_partition("full", 0).value();
  Producer producer = Producer::attach(memory.ring).value();
  auto value_of = [](std::int64_t i) { return "record-" + std::to_string(i) + std::string(90, '.'); };
  auto offer = [&](std::int64_t i) {
    const std::string value = value_of(i);
    RecordInput record;
    record.value = std::as_bytes(std::span(value.data(), value.size()));
    record.timestamp_ms = 1'700'000'000'000 + i;
    return producer.offer_record(record);
  };
  // A reader that keeps up with the producers, so the passes take their boundaries from it
  // (ahead of the log) rather than from a walk of their own
  Consumer reader = Consumer::attach(memory.ring, StartAt::kEarliest).value();
  auto read_all = [&] {
    RingBatch batch;
    for (int i = 0; i < 10'000 && reader.poll(batch) == PollStatus::kOk; ++i) {
    }
  };
  std::int64_t sent = 0;
  for (; sent < 100; ++sent) ASSERT_EQ(offer(sent), ClaimStatus::kOk);
  read_all();
  node->maintain();
  ASSERT_EQ(read_log_progress(memory.ring).written, Offset{100});

  // When the disk fills and producers keep offering, a pass after each refusal
  full->store(true);
  int refusals = 0;
  for (int i = 0; i < 20'000 && refusals < 100; ++i) {
    if (offer(sent) == ClaimStatus::kOk) {
      ++sent;
      read_all();
    } else {
      ++refusals;
      node->maintain();
    }
  }
  ASSERT_EQ(refusals, 100) << "the ring never filled";

  // Expect, once space returns, every record offered in the log, in order and intact: the ring
  // held producers back rather than let them overwrite what the log had not taken
  full->store(false);
  for (int i = 0; i < 1'000 && read_log_progress(memory.ring).written.value < sent; ++i) node->maintain();
  EXPECT_EQ(read_log_progress(memory.ring).error, Errc::kOk);
  ASSERT_EQ(read_log_progress(memory.ring).written, Offset{sent}) << "the log stopped: " << node->describe_topic("full")->partitions[0].log_error;
  TopicConsumer consumer = TopicConsumer::create(client).value();
  ASSERT_TRUE(consumer.assign("full", {0}, SeekTo::earliest()).ok());
  std::int64_t next = 0;
  for (int polls = 0; polls < 10'000 && next < sent; ++polls) {
    Result<PollResult> polled = consumer.poll(10);
    ASSERT_TRUE(polled.ok()) << polled.error().message;
    for (const ConsumedRecord& r : polled->records) {
      ASSERT_EQ(r.offset, Offset{next});
      ASSERT_TRUE(r.value.has_value());
      const std::string value(reinterpret_cast<const char*>(r.value->data()), r.value->size());
      ASSERT_EQ(value, value_of(next));
      ++next;
    }
  }
  EXPECT_EQ(next, sent);
}

// Marks a folder immutable (FS_IMMUTABLE_FL) while it lives: not even root may rename it or
// remove what it holds, so a real log's removal fails there.
class ImmutableFolder {
 public:
  explicit ImmutableFolder(const std::string& path) : fd_(::open(path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC)) {
    int flags = 0;
    if (fd_ < 0 || ::ioctl(fd_, FS_IOC_GETFLAGS, &flags) != 0) return;
    flags |= FS_IMMUTABLE_FL;
    set_ = ::ioctl(fd_, FS_IOC_SETFLAGS, &flags) == 0;
  }
  ~ImmutableFolder() { release(); }
  ImmutableFolder(const ImmutableFolder&) = delete;
  ImmutableFolder& operator=(const ImmutableFolder&) = delete;
  bool set() const { return set_; }
  void release() {
    int flags = 0;
    if (set_ && ::ioctl(fd_, FS_IOC_GETFLAGS, &flags) == 0) {
      flags &= ~FS_IMMUTABLE_FL;
      set_ = ::ioctl(fd_, FS_IOC_SETFLAGS, &flags) != 0;
    }
    if (!set_ && fd_ >= 0) {
      ::close(fd_);
      fd_ = -1;
    }
  }

 private:
  int fd_ = -1;
  bool set_ = false;
};

TEST(NodeLog, ADeleteWhoseLogFolderCannotGoKeepsTheTopicUntilADeleteAgainRemovesTheRest) {
  // Given a topic of three partitions with records in each segment log, the second log's
  // folder immutable (the file system refuses to rename it or remove what it holds)
  TempDir dir;
  NodeOptions options = logged_node(dir.path());
  options.metadata_dir = dir.path() + "/topics";
  const TopicSettings three = kept_partitions(3);
  auto node = Node::start(options).value();
  auto client = Client::embedded(*node);
  ASSERT_TRUE(client->create_topic("stuck", three).ok());
  std::vector<std::byte> value(100, std::byte{0x45});
  const RecordInput record = record_of(value);
  ASSERT_NO_FATAL_FAILURE(send_three_to_each(*node, client, "stuck", 3, record));
  ImmutableFolder immutable(dir.path() + "/stuck-1");
  if (!immutable.set()) GTEST_SKIP() << "this file system or user cannot mark a folder immutable (needs ext4 or the like, and CAP_LINUX_IMMUTABLE)";

  // When it is deleted
  const Result<void> deleted = client->delete_topic("stuck");

  // Expect the delete to fail with the system's reason; the first log gone, the second and third
  // there with their records, and the topic kept with its file
  ASSERT_FALSE(deleted.ok());
  EXPECT_EQ(deleted.error().code, Errc::kIo) << deleted.error().message;
  EXPECT_NE(deleted.error().message.find("stuck-1"), std::string::npos) << deleted.error().message;
  EXPECT_NE(deleted.error().message.find("delete it again"), std::string::npos) << deleted.error().message;
  EXPECT_FALSE(std::filesystem::exists(dir.path() + "/stuck-0"));
  EXPECT_TRUE(std::filesystem::exists(dir.path() + "/stuck-1/00000000000000000000.log"));
  EXPECT_TRUE(std::filesystem::exists(dir.path() + "/stuck-2/00000000000000000000.log"));
  EXPECT_TRUE(std::filesystem::exists(options.metadata_dir + "/stuck.topic"));
  EXPECT_EQ(node->list_topics(), (std::vector<std::string>{"stuck"}));
  // And the third partition, whose log the delete never reached, still taking records
  {
    TopicProducer producer = producer_for_passes(client, "stuck");
    const Result<SendResult> sent = producer.send_to(2, record);
    ASSERT_TRUE(sent.ok()) << sent.error().message;
    EXPECT_EQ(sent->offset, Offset{3});
  }
  node->maintain();

  // When the cause is gone and it is deleted again, expect the rest removed and a topic made
  // under the name to start empty
  immutable.release();
  const Result<void> again = client->delete_topic("stuck");
  ASSERT_TRUE(again.ok()) << again.error().message;
  EXPECT_FALSE(std::filesystem::exists(dir.path() + "/stuck-1"));
  EXPECT_FALSE(std::filesystem::exists(dir.path() + "/stuck-2"));
  EXPECT_FALSE(std::filesystem::exists(options.metadata_dir + "/stuck.topic"));
  ASSERT_TRUE(client->create_topic("stuck", three).ok());
  TopicProducer fresh = TopicProducer::create(client, "stuck").value();
  for (std::uint32_t p = 0; p < 3; ++p) {
    const Result<SendResult> sent = fresh.send_to(p, record);
    ASSERT_TRUE(sent.ok()) << sent.error().message;
    EXPECT_EQ(sent->offset, Offset{0}) << "partition " << p << " took up the deleted topic's log";
  }
}

TEST(NodeLog, ANodeStartedAgainServesItsTopicsFromWhereTheirLogsEnd) {
  TempDir dir;
  NodeOptions options = logged_node(dir.path());
  options.metadata_dir = dir.path() + "/topics";
  {
    auto node = Node::start(options).value();
    auto client = Client::embedded(*node);
    ASSERT_TRUE(client->create_topic("kept", TopicSettings{{"partitions", "2"}, {"ring.capacity.bytes", "65536"},
                                                          {"max.batch.bytes", "8192"}, {"fsync", "always"}}).ok());
    ASSERT_TRUE(client->create_topic("dropped", 1).ok());
    ASSERT_TRUE(client->delete_topic("dropped").ok());
    TopicProducer producer = producer_for_passes(client, "kept");
    EXPECT_EQ(send(*node, producer, 500), 500);
  }
  std::ofstream(dir.path() + "/topics/broken.topic") << "partitions=zero\n";
  auto node = Node::start(options).value();
  // The topic is back with its settings; the deleted and the unreadable ones are not.
  EXPECT_EQ(node->list_topics(), (std::vector<std::string>{"kept"}));
  Result<TopicInfo> info = node->describe_topic("kept");
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->config.partitions, 2u);
  EXPECT_EQ(info->config.fsync, FsyncPolicy::kAlways);
  EXPECT_EQ(info->config.ring_capacity_bytes, 65536u);
  EXPECT_EQ(info->partitions[0].end_offset, Offset{500});
  node->maintain();
  EXPECT_EQ(node->describe_topic("kept")->partitions[0].log_end_offset, Offset{500});
}

// Entries put by hand where the node keeps its files (FIFOs, which block a plain open for
// reading until a writer comes, and folders) never hold its start: each is skipped or refused by
// name, and the rest serves.
TEST(NodeLog, FifosAndFoldersWhereTheNodeKeepsItsFilesNeverHoldItsStart) {
  TempDir dir;
  NodeOptions options = logged_node(dir.path());
  options.metadata_dir = dir.path() + "/topics";
  options.offsets_dir = dir.path() + "/offsets";
  {
    auto node = Node::start(options).value();
    auto client = Client::embedded(*node);
    ASSERT_TRUE(client->create_topic("kept", small()).ok());
    TopicProducer producer = producer_for_passes(client, "kept");
    EXPECT_EQ(send(*node, producer, 300), 300);
    node->maintain();
  }
  const std::string partition = dir.path() + "/kept-0";
  std::filesystem::remove(partition + "/recovery-point");
  for (const std::string& fifo : {dir.path() + "/topics/stuck.topic", dir.path() + "/offsets/group.offsets",
                                  partition + "/recovery-point", partition + "/00000000000099999999.log"})
    ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0) << fifo;
  ASSERT_TRUE(std::filesystem::create_directory(partition + "/00000000000088888888.log"));
  {
    auto node = Node::start(options);
    ASSERT_TRUE(node.ok()) << node.error().message;
    EXPECT_EQ((*node)->list_topics(), (std::vector<std::string>{"kept"}));
    EXPECT_EQ((*node)->describe_topic("kept")->partitions[0].end_offset, Offset{300});
  }
  // A FIFO at a segment's index: that partition is refused, by name, instead of read forever.
  const std::string index = partition + "/00000000000000000000.index";
  ASSERT_EQ(::unlink(index.c_str()), 0);
  ASSERT_EQ(::mkfifo(index.c_str(), 0600), 0);
  SegmentLogOptions o;
  o.segment_bytes = 256 * 1024;
  Result<std::unique_ptr<SegmentLog>> log = SegmentLog::open(partition, Offset{0}, o);
  ASSERT_FALSE(log.ok());
  EXPECT_EQ(log.error().code, Errc::kCorrupt);
  EXPECT_NE(log.error().message.find("not a regular file"), std::string::npos) << log.error().message;
}

// A cluster's topic takes no local producer until the replicator stamps this node's role, from
// its creation and again after a restart (acks from an unreplicated log that a follower's
// truncation would cut); a node's own topic is open at once.
TEST(NodeLog, AClustersTopicIsFencedUntilItsRoleIsStampedAndAfterARestart) {
  TempDir dir;
  NodeOptions options = logged_node(dir.path());
  options.metadata_dir = dir.path() + "/topics";
  TopicConfig replicated;
  replicated.ring_capacity_bytes = 65536;
  replicated.max_batch_bytes = 8192;
  replicated.replicated = true;
  TopicConfig own = replicated;
  own.replicated = false;
  {
    auto node = Node::start(options).value();
    ASSERT_TRUE(node->create_topic("cluster", replicated).ok());
    ASSERT_TRUE(node->create_topic("own", own).ok());
    EXPECT_TRUE(Producer::attach(node->open_partition("own", 0)->ring).ok());
    const PartitionMemory fenced = node->open_partition("cluster", 0).value();
    Result<Producer> early = Producer::attach(fenced.ring);
    ASSERT_FALSE(early.ok());
    EXPECT_EQ(early.error().code, Errc::kFailedPrecondition);
    set_leader_epoch(fenced.ring, 1);  // the replicator's stamp when this node leads
    EXPECT_TRUE(Producer::attach(fenced.ring).ok());
  }
  auto node = Node::start(options).value();
  EXPECT_TRUE(node->describe_topic("cluster")->config.replicated);
  EXPECT_FALSE(Producer::attach(node->open_partition("cluster", 0)->ring).ok()) << "fenced again after a restart";
  EXPECT_TRUE(Producer::attach(node->open_partition("own", 0)->ring).ok());
  // Alone (no cluster ever routed here), the fenced partition will never get a leader: producers
  // asking where to write are told so at once. Its own topic routes here as before.
  Result<PartitionRoute> alone = node->partition_route("cluster", 0);
  ASSERT_FALSE(alone.ok());
  EXPECT_EQ(alone.error().code, Errc::kFailedPrecondition);
  EXPECT_TRUE(node->partition_route("own", 0).ok());
  // A cluster node whose router went (it is stopping) answers "here, wait" instead, as it did.
  node->set_partition_router([](std::string_view, std::uint32_t) -> Result<PartitionRoute> { return PartitionRoute{}; });
  node->set_partition_router({});
  EXPECT_TRUE(node->partition_route("cluster", 0).ok());
}

TEST(NodeLog, ALogThatCannotOpenFailsTheTopicClearly) {
  NodeOptions options;
  options.prefer_hugepages = false;
  options.start_maintenance_thread = false;
  options.open_log = [](std::string_view, std::uint32_t, const TopicConfig&) -> Result<std::unique_ptr<PartitionLog>> {
    return Error{Errc::kCorrupt, "segment 00000000000000000000.log: bad batch"};
  };
  auto node = Node::start(options).value();
  Result<TopicInfo> created = node->create_topic("broken", TopicConfig{});
  ASSERT_FALSE(created.ok());
  EXPECT_EQ(created.error().code, Errc::kCorrupt);
  EXPECT_NE(created.error().message.find("partition 0 log"), std::string::npos) << created.error().message;
  EXPECT_TRUE(node->list_topics().empty());
}

TEST(NodeLog, APartitionWhoseLogIsCorruptInsideStaysOfflineAndTheOthersServe) {
  TempDir dir;
  NodeOptions options;
  options.prefer_hugepages = false;
  options.start_maintenance_thread = false;
  options.open_log = open_segment_logs(dir.path() + "/data");
  options.metadata_dir = dir.path() + "/topics";
  const TopicSettings settings{{"partitions", "2"}, {"ring.capacity.bytes", "65536"}, {"max.batch.bytes", "8192"},
                               {"segment.bytes", "8192"}};
  {
    auto node = Node::start(options).value();
    auto client = Client::embedded(*node);
    ASSERT_TRUE(client->create_topic("mixed", settings).ok());
    TopicProducer producer = producer_for_passes(client, "mixed");
    std::vector<std::byte> value(100, std::byte{7});
    RecordInput record;
    record.value = std::span<const std::byte>(value);
    for (int i = 0; i < 400; ++i) {
      ASSERT_TRUE(producer.send_to(static_cast<std::uint32_t>(i % 2), record).ok());
      if (i % 50 == 49) node->maintain();
    }
    node->maintain();
  }
  // Given a byte flipped inside the first (closed) segment of partition 1, and no recovery
  // point vouching for it (the node died before moving it; below one, segments are opened from
  // their indexes and a flipped byte is found by the reader's CRC check instead)
  std::filesystem::remove(dir.path() + "/data/mixed-1/recovery-point");
  const std::string first = dir.path() + "/data/mixed-1/" + segment_file_name(Offset{0}, ".log");
  ASSERT_TRUE(std::filesystem::exists(dir.path() + "/data/mixed-1/" + segment_file_name(Offset{0}, ".log")));
  {
    std::fstream f(first, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(300);
    f.put('\x5A');
  }
  // When the node starts again
  auto node = Node::start(options).value();
  auto client = Client::embedded(*node);
  // Expect the topic served, partition 1 offline with the reason, partition 0 whole
  ASSERT_EQ(node->list_topics(), (std::vector<std::string>{"mixed"}));
  node->maintain();
  const TopicInfo info = node->describe_topic("mixed").value();
  EXPECT_TRUE(info.partitions[0].log_error.empty()) << info.partitions[0].log_error;
  EXPECT_NE(info.partitions[1].log_error.find("offline"), std::string::npos) << info.partitions[1].log_error;
  TopicProducer producer = TopicProducer::create(client, "mixed").value();
  std::vector<std::byte> value(10, std::byte{1});
  RecordInput record;
  record.value = std::span<const std::byte>(value);
  EXPECT_EQ(producer.send_to(0, record)->offset, Offset{200});
  const Result<SendResult> refused = producer.send_to(1, record);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.error().code, Errc::kUnavailable);
  EXPECT_NE(refused.error().message.find("offline"), std::string::npos) << refused.error().message;
  TopicConsumer consumer = TopicConsumer::create(client).value();
  EXPECT_TRUE(consumer.assign("mixed", {0}, SeekTo::earliest()).ok());
  const Result<void> unreadable = consumer.assign("mixed", {1}, SeekTo::earliest());
  ASSERT_FALSE(unreadable.ok());
  EXPECT_NE(unreadable.error().message.find("offline"), std::string::npos) << unreadable.error().message;
}

TEST(NodeLog, ATopicWithAnOfflinePartitionIsDeletedWholeAndMadeAgainEmpty) {
  // Given a topic of two partitions whose second partition's log is corrupt inside, offline
  // after a restart
  TempDir dir;
  NodeOptions options;
  options.prefer_hugepages = false;
  options.start_maintenance_thread = false;
  options.metadata_dir = dir.path() + "/topics";
  use_segment_logs(options, dir.path() + "/data");
  const TopicSettings settings{{"partitions", "2"}, {"ring.capacity.bytes", "65536"}, {"max.batch.bytes", "8192"}, {"segment.bytes", "8192"}};
  std::vector<std::byte> value(100, std::byte{7});
  RecordInput record;
  record.value = std::span<const std::byte>(value);
  {
    auto node = Node::start(options).value();
    auto client = Client::embedded(*node);
    ASSERT_TRUE(client->create_topic("mixed", settings).ok());
    TopicProducer producer = producer_for_passes(client, "mixed");
    for (int i = 0; i < 200; ++i) ASSERT_TRUE(producer.send_to(static_cast<std::uint32_t>(i % 2), record).ok());
    node->maintain();
  }
  std::filesystem::remove(dir.path() + "/data/mixed-1/recovery-point");
  {
    std::fstream f(dir.path() + "/data/mixed-1/" + segment_file_name(Offset{0}, ".log"), std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(300);
    f.put('\x5A');
  }
  // When a node that cannot remove a log it never opened deletes the topic
  NodeOptions without_remover = options;
  without_remover.remove_unopened_log = nullptr;
  {
    auto node = Node::start(without_remover).value();
    node->maintain();  // (a pass gathers the figures describe_topic answers with)
    ASSERT_NE(node->describe_topic("mixed").value().partitions[1].log_error.find("offline"), std::string::npos);
    // Expect a clear refusal, and the topic's file kept with the log that stayed
    const Result<void> refused = node->delete_topic("mixed");
    ASSERT_FALSE(refused.ok());
    EXPECT_NE(refused.error().message.find("partition 1's log never opened (offline)"), std::string::npos) << refused.error().message;
    EXPECT_TRUE(std::filesystem::exists(options.metadata_dir + "/mixed.topic"));
  }
  // When a node that can deletes it, and makes it again
  auto node = Node::start(options).value();
  auto client = Client::embedded(*node);
  node->maintain();
  ASSERT_NE(node->describe_topic("mixed").value().partitions[1].log_error.find("offline"), std::string::npos);
  const Result<void> deleted = client->delete_topic("mixed");
  ASSERT_TRUE(deleted.ok()) << deleted.error().message;
  EXPECT_FALSE(std::filesystem::exists(dir.path() + "/data/mixed-1")) << "the offline partition's log stayed";
  Result<TopicInfo> made = client->create_topic("mixed", settings);
  ASSERT_TRUE(made.ok()) << made.error().message;
  // Expect both partitions empty and taking writes from offset 0
  TopicProducer producer = TopicProducer::create(client, "mixed").value();
  for (std::uint32_t p = 0; p < 2; ++p) {
    const Result<SendResult> sent = producer.send_to(p, record);
    ASSERT_TRUE(sent.ok()) << "partition " << p << ": " << sent.error().message;
    EXPECT_EQ(sent->offset, Offset{0}) << "partition " << p;
  }
}

}  // namespace
}  // namespace weft::storage
