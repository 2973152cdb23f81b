// What the client API adds to the bare ring, on one thread: a send through TopicProducer against
// Producer::offer_record, and a send plus poll through the API against the ring's own
// offer_record plus poll plus decode. Same ring size, same record, same run.
#include <benchmark/benchmark.h>

#include <vector>

#include "weft/client.h"
#include "weft/consumer.h"
#include "weft/fabric/ring.h"
#include "weft/fabric/shared_memory.h"
#include "weft/node.h"
#include "weft/producer.h"

namespace {

using namespace weft;

constexpr std::size_t kRing = std::size_t{4} << 20;

struct Fixture {
  std::unique_ptr<Node> node;
  std::shared_ptr<Client> client;
  Fixture() {
    NodeOptions options;
    options.start_maintenance_thread = false;  // the benchmark runs maintain() itself, off the clock
    options.prefer_hugepages = false;
    node = Node::start(options).value();
    client = Client::embedded(*node);
    (void)client->create_topic("bench", TopicSettings{{"partitions", "1"}, {"ring.capacity.bytes", std::to_string(kRing)}}).value();
  }
};

struct Record {
  std::vector<std::byte> value = std::vector<std::byte>(64, std::byte{7});
  RecordInput input{std::nullopt, std::span<const std::byte>(value), 1'700'000'000'000, {}};
};

void BM_RingOfferRecord(benchmark::State& state) {
  Fixture f;
  PartitionMemory memory = f.node->open_partition("bench", 0).value();
  Producer producer = Producer::attach(memory.ring, ProducerMode::kExclusive).value();
  Record r;
  std::uint64_t n = 0;
  for (auto _ : state) {
    if (producer.offer_record(r.input) != ClaimStatus::kOk) {
      state.PauseTiming();
      f.node->maintain();
      state.ResumeTiming();
      continue;
    }
    ++n;
  }
  state.SetItemsProcessed(static_cast<std::int64_t>(n));
}

void BM_TopicProducerSend(benchmark::State& state) {
  Fixture f;
  ProducerOptions options;
  options.mode = ProducerMode::kExclusive;
  TopicProducer producer = TopicProducer::create(f.client, "bench", options).value();
  Record r;
  std::uint64_t n = 0;
  for (auto _ : state) {
    if ((n & 4095) == 4095) {
      state.PauseTiming();
      f.node->maintain();
      state.ResumeTiming();
    }
    benchmark::DoNotOptimize(producer.send(r.input));
    ++n;
  }
  state.SetItemsProcessed(static_cast<std::int64_t>(n));
}

void BM_RingSendAndPoll(benchmark::State& state) {
  Fixture f;
  PartitionMemory memory = f.node->open_partition("bench", 0).value();
  Producer producer = Producer::attach(memory.ring, ProducerMode::kExclusive).value();
  Consumer consumer = Consumer::attach(memory.ring).value();
  Record r;
  std::uint64_t n = 0, sum = 0;
  for (auto _ : state) {
    if (producer.offer_record(r.input) != ClaimStatus::kOk) {
      state.PauseTiming();
      f.node->maintain();
      state.ResumeTiming();
      continue;
    }
    RingBatch batch;
    if (consumer.poll(batch) == PollStatus::kOk) {
      RecordView view;
      if (decode_single_record_batch(batch.bytes, view)) sum += view.value->size();
      benchmark::DoNotOptimize(consumer.validate(batch));
    }
    ++n;
  }
  benchmark::DoNotOptimize(sum);
  state.SetItemsProcessed(static_cast<std::int64_t>(n));
}

void BM_ClientSendAndPoll(benchmark::State& state) {
  Fixture f;
  ProducerOptions options;
  options.mode = ProducerMode::kExclusive;
  TopicProducer producer = TopicProducer::create(f.client, "bench", options).value();
  TopicConsumer consumer = TopicConsumer::create(f.client).value();
  (void)consumer.assign("bench", {}, SeekTo::earliest());
  Record r;
  std::uint64_t n = 0, sum = 0;
  for (auto _ : state) {
    if ((n & 4095) == 4095) {
      state.PauseTiming();
      f.node->maintain();
      state.ResumeTiming();
    }
    benchmark::DoNotOptimize(producer.send(r.input));
    Result<PollResult> polled = consumer.poll(0);
    for (const ConsumedRecord& rec : polled->records) sum += rec.value->size();
    ++n;
  }
  benchmark::DoNotOptimize(sum);
  state.SetItemsProcessed(static_cast<std::int64_t>(n));
}

// Reading in bulk, as a consumer that keeps up does: 256 records sent, then all read.
constexpr int kBurst = 256;

void BM_RingDrain(benchmark::State& state) {
  Fixture f;
  PartitionMemory memory = f.node->open_partition("bench", 0).value();
  Producer producer = Producer::attach(memory.ring, ProducerMode::kExclusive).value();
  Consumer consumer = Consumer::attach(memory.ring).value();
  Record r;
  std::uint64_t n = 0, sum = 0;
  for (auto _ : state) {
    state.PauseTiming();
    f.node->maintain();
    for (int i = 0; i < kBurst; ++i) (void)producer.offer_record(r.input);
    state.ResumeTiming();
    RingBatch batch;
    while (consumer.poll(batch) == PollStatus::kOk) {
      RecordView view;
      if (decode_single_record_batch(batch.bytes, view)) sum += view.value->size();
      ++n;
    }
    benchmark::DoNotOptimize(consumer.validate(batch));
  }
  benchmark::DoNotOptimize(sum);
  state.SetItemsProcessed(static_cast<std::int64_t>(n));
}

void BM_ClientDrain(benchmark::State& state) {
  Fixture f;
  PartitionMemory memory = f.node->open_partition("bench", 0).value();
  Producer producer = Producer::attach(memory.ring, ProducerMode::kExclusive).value();
  TopicConsumer consumer = TopicConsumer::create(f.client).value();
  (void)consumer.assign("bench", {}, SeekTo::earliest());
  Record r;
  std::uint64_t n = 0, sum = 0;
  for (auto _ : state) {
    state.PauseTiming();
    f.node->maintain();
    for (int i = 0; i < kBurst; ++i) (void)producer.offer_record(r.input);
    state.ResumeTiming();
    Result<PollResult> polled = consumer.poll(0);
    for (const ConsumedRecord& rec : polled->records) sum += rec.value->size();
    n += polled->records.size();
  }
  benchmark::DoNotOptimize(sum);
  state.SetItemsProcessed(static_cast<std::int64_t>(n));
}

BENCHMARK(BM_RingOfferRecord);
BENCHMARK(BM_TopicProducerSend);
BENCHMARK(BM_RingSendAndPoll);
BENCHMARK(BM_ClientSendAndPoll);
BENCHMARK(BM_RingDrain);
BENCHMARK(BM_ClientDrain);

}  // namespace

BENCHMARK_MAIN();
