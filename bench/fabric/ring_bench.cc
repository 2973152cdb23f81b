// The ring's per-operation costs on one thread (claim + encode + commit; poll), and the
// cross-thread hand-off with a cache-line ping-pong baseline from the same run.
#include <benchmark/benchmark.h>

#include <atomic>
#include <cstring>
#include <thread>
#include <vector>

#include "baselines.h"
#include "weft/fabric/ring.h"
#include "weft/fabric/shared_memory.h"

namespace {

using namespace weft;

struct BenchRing {
  SharedMemory memory;
  Ring ring;
  explicit BenchRing(std::size_t capacity) : memory(make(capacity)), ring(Ring::format(memory.bytes(), config(capacity)).value()) {}
  static RingConfig config(std::size_t capacity) {
    RingConfig c;
    c.capacity_bytes = capacity;
    return c;
  }
  static SharedMemory make(std::size_t capacity) {
    ShmOptions o;
    o.size_bytes = Ring::required_bytes(config(capacity));
    return SharedMemory::create(o).value();
  }
};

void BM_ClaimEncodeCommit(benchmark::State& state) {
  BenchRing r(1u << 20);
  Producer producer = Producer::attach(r.ring, static_cast<ProducerMode>(state.range(0))).value();
  Consumer consumer = Consumer::attach(r.ring).value();
  RingOwner owner(r.ring);
  std::vector<std::byte> value(64, std::byte{3});
  RecordInput record{std::nullopt, std::span<const std::byte>(value), 0, {}};
  const std::size_t bytes = single_record_batch_bytes(record);
  std::uint64_t n = 0;
  for (auto _ : state) {
    Claim claim;
    if (producer.try_claim(bytes, 1, claim) != ClaimStatus::kOk) {
      state.PauseTiming();
      owner.advance_reuse_limit(owner.scan());  // stands in for the log writer
      state.ResumeTiming();
      continue;
    }
    BatchBuilder builder(claim.batch);
    (void)builder.append(record);
    (void)producer.commit(claim, builder.finish().size());
    ++n;
  }
  state.SetItemsProcessed(static_cast<std::int64_t>(n));
  state.SetLabel(state.range(0) == 0 ? "shared" : "exclusive");
}

void BM_Poll(benchmark::State& state) {
  BenchRing r(64u << 20);
  Producer producer = Producer::attach(r.ring).value();
  std::vector<std::byte> value(64, std::byte{3});
  RecordInput record{std::nullopt, std::span<const std::byte>(value), 0, {}};
  while (producer.offer_record(record) == ClaimStatus::kOk) {
  }
  Consumer consumer = Consumer::attach(r.ring).value();
  std::uint64_t n = 0;
  RingBatch batch;
  for (auto _ : state) {
    if (consumer.poll(batch) != PollStatus::kOk) {
      state.PauseTiming();
      (void)consumer.seek(Offset{0});
      state.ResumeTiming();
      continue;
    }
    benchmark::DoNotOptimize(batch.bytes.data());
    ++n;
  }
  state.SetItemsProcessed(static_cast<std::int64_t>(n));
}

// One-way hand-off through the ring between two pinned threads, record by record (ping-pong
// over two rings), beside a bare cache-line ping-pong measured just before.
void BM_RingPingPongOneWay(benchmark::State& state) {
  const double baseline = bench::pingpong_one_way_ns(0, 1, 100'000);
  BenchRing ping(1u << 20), pong(1u << 20);
  std::atomic<bool> stop{false};
  std::thread echo([&] {
    bench::pin_to_cpu(1);
    Consumer in = Consumer::attach(ping.ring).value();
    Producer out = Producer::attach(pong.ring, ProducerMode::kExclusive).value();
    RingOwner owner(ping.ring);
    RingBatch batch;
    while (!stop.load(std::memory_order_relaxed)) {
      if (in.poll(batch) != PollStatus::kOk) continue;
      // Echo every record: a refused offer would leave the other side waiting for ever.
      while (out.offer(batch.bytes) != ClaimStatus::kOk && !stop.load(std::memory_order_relaxed)) {
      }
      owner.advance_reuse_limit({in.position(), in.next_offset()});
    }
  });
  bench::pin_to_cpu(0);
  Producer out = Producer::attach(ping.ring, ProducerMode::kExclusive).value();
  Consumer in = Consumer::attach(pong.ring).value();
  RingOwner owner(pong.ring);
  std::vector<std::byte> value(64, std::byte{3});
  RecordInput record{std::nullopt, std::span<const std::byte>(value), 0, {}};
  RingBatch batch;
  const std::int64_t start = monotonic_ns();
  for (auto _ : state) {
    while (out.offer_record(record) != ClaimStatus::kOk) {
    }
    // Bounded: a lost echo ends the benchmark with an error instead of spinning for ever.
    const std::int64_t give_up = monotonic_ns() + 1'000'000'000;
    while (in.poll(batch) != PollStatus::kOk) {
      if (monotonic_ns() > give_up) {
        state.SkipWithError("no echo within a second");
        break;
      }
    }
    owner.advance_reuse_limit({in.position(), in.next_offset()});
  }
  const double elapsed_ns = static_cast<double>(monotonic_ns() - start);
  stop.store(true);
  echo.join();
  bench::unpin();
  state.counters["pingpong_one_way_ns"] = baseline;
  state.counters["ring_one_way_ns"] = elapsed_ns / (2.0 * static_cast<double>(state.iterations()));
  state.SetLabel(bench::topology());
}

BENCHMARK(BM_ClaimEncodeCommit)->Arg(0)->Arg(1);
BENCHMARK(BM_Poll);
BENCHMARK(BM_RingPingPongOneWay)->UseRealTime();

}  // namespace

BENCHMARK_MAIN();
