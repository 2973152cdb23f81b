// The client path under concurrency, for TSan and for the maintenance thread's boundary hints:
// producer threads and consumer threads on one node whose maintenance thread moves the reuse
// limits while they run. With flow control nothing may be lost; without it, what a consumer
// receives must still be intact and in order, and what it misses must be reported.
#include <gtest/gtest.h>

#include <atomic>
#include <cstring>
#include <thread>
#include <vector>

#include "client_fixture.h"

namespace weft {
namespace {

constexpr int kProducers = 2;
constexpr int kConsumers = 2;
#if defined(__SANITIZE_THREAD__)
constexpr std::uint64_t kPerProducer = 20'000;
#else
constexpr std::uint64_t kPerProducer = 200'000;
#endif

struct Outcome {
  std::uint64_t received = 0;
  std::uint64_t missed = 0;        // offsets reported lapped or corrupt
  std::uint64_t out_of_order = 0;  // a producer's sequence went backwards within a partition
  std::uint64_t malformed = 0;
};

Outcome run(bool flow_control, WaitKind wait) {
  auto node = Node::start(test::test_node_options(true)).value();
  auto client = Client::embedded(*node);
  // A small ring, so producers lap it many times over and the limit moves constantly.
  (void)client->create_topic("stress", TopicSettings{{"partitions", "2"}, {"ring.capacity.bytes", "65536"},
                                                    {"max.batch.bytes", "8192"},
                                                    {"flow.control", flow_control ? "consumers" : "none"}}).value();
  std::atomic<int> ready{0};
  std::vector<Outcome> outcomes(kConsumers);
  std::vector<std::thread> threads;
  const std::uint64_t total = kProducers * kPerProducer;
  for (int c = 0; c < kConsumers; ++c) {
    threads.emplace_back([&, c] {
      ConsumerOptions options;
      options.wait = wait;
      options.max_poll_records = 64;
      TopicConsumer consumer = TopicConsumer::create(client, options).value();
      EXPECT_TRUE(consumer.assign("stress", {}, SeekTo::earliest()).ok());
      ready.fetch_add(1);
      Outcome& o = outcomes[static_cast<std::size_t>(c)];
      std::uint64_t last[kProducers][2] = {};
      const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(120);
      while (o.received + o.missed < total && std::chrono::steady_clock::now() < give_up) {
        Result<PollResult> polled = consumer.poll(10);
        if (!polled.ok()) break;
        for (const PollNotice& n : polled->notices) o.missed += static_cast<std::uint64_t>(n.to.value - n.from.value);
        // Tallied aside first: without flow control a slow reader's views may be overwritten
        // while it reads them, and then views_intact() says so and the poll counts as missed.
        Outcome seen;
        std::uint64_t next[kProducers][2];
        std::memcpy(next, last, sizeof(last));
        for (const ConsumedRecord& r : polled->records) {
          if (!r.value || r.value->size() != 16) {
            ++seen.malformed;
            continue;
          }
          std::uint64_t producer = 0, sequence = 0;
          std::memcpy(&producer, r.value->data(), 8);
          std::memcpy(&sequence, r.value->data() + 8, 8);
          if (producer >= kProducers || r.partition > 1) {
            ++seen.malformed;
            continue;
          }
          if (sequence + 1 <= next[producer][r.partition]) ++seen.out_of_order;
          next[producer][r.partition] = sequence + 1;
          ++seen.received;
        }
        if (consumer.views_intact()) {
          o.received += seen.received;
          o.out_of_order += seen.out_of_order;
          o.malformed += seen.malformed;
          std::memcpy(last, next, sizeof(last));
        } else {
          EXPECT_FALSE(flow_control) << "flow control must keep a poll's views intact until the next poll";
          o.missed += polled->records.size();
          for (auto& partitions : last)
            for (auto& l : partitions) l = 0;  // order restarts after a loss
        }
      }
    });
  }
  while (ready.load() < kConsumers) std::this_thread::yield();
  for (int p = 0; p < kProducers; ++p) {
    threads.emplace_back([&, p] {
      TopicProducer producer = TopicProducer::create(client, "stress").value();
      std::byte value[16];
      const std::uint64_t id = static_cast<std::uint64_t>(p);
      std::memcpy(value, &id, 8);
      for (std::uint64_t i = 0; i < kPerProducer; ++i) {
        std::memcpy(value + 8, &i, 8);
        RecordInput record;
        record.value = std::span<const std::byte>(value, 16);
        if (!producer.send_to(static_cast<std::uint32_t>(i % 2), record).ok()) {
          ADD_FAILURE() << "send failed at " << i;
          return;
        }
      }
    });
  }
  for (std::thread& t : threads) t.join();
  Outcome sum;
  for (const Outcome& o : outcomes) {
    EXPECT_EQ(o.received + o.missed, total);
    sum.received += o.received;
    sum.missed += o.missed;
    sum.out_of_order += o.out_of_order;
    sum.malformed += o.malformed;
  }
  return sum;
}

TEST(ClientStress, WithFlowControlEveryConsumerGetsEveryRecordInOrder) {
  for (WaitKind wait : {WaitKind::kSpin, WaitKind::kPark}) {
    const Outcome o = run(true, wait);
    EXPECT_EQ(o.missed, 0u);
    EXPECT_EQ(o.received, kConsumers * kProducers * kPerProducer);
    EXPECT_EQ(o.out_of_order, 0u);
    EXPECT_EQ(o.malformed, 0u);
  }
}

TEST(ClientStress, WithoutFlowControlWhatArrivesIsIntactAndWhatIsMissedIsReported) {
#if defined(__SANITIZE_THREAD__)
  // Lapped readers read bytes a producer may be overwriting and then find out (the seqlock
  // pattern the ring documents); TSan sees the race and not the check after it.
  GTEST_SKIP() << "lapping is a benign, checked race by design; run in the release and asan builds";
#endif
  const Outcome o = run(false, WaitKind::kYield);
  EXPECT_EQ(o.out_of_order, 0u);
  EXPECT_EQ(o.malformed, 0u);
  EXPECT_GT(o.received, 0u);
}

}  // namespace
}  // namespace weft
