// Many producer and consumer threads on one small ring: per-producer order, no loss, no
// duplicates. Bounded in records and in wall time; run under TSan by the tsan preset.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <thread>
#include <vector>

#include "ring_fixture.h"

namespace weft {
namespace {

using test::RingFixture;
using test::Stamp;

constexpr auto kDeadline = std::chrono::seconds(90);

std::uint64_t records_per_producer() {
  // Sanitizer builds run slower; WEFT_STRESS_RECORDS scales the test without editing it.
  if (const char* env = std::getenv("WEFT_STRESS_RECORDS")) return std::strtoull(env, nullptr, 10);
#if defined(__SANITIZE_THREAD__) || defined(__SANITIZE_ADDRESS__)
  return 20'000;
#else
  return 200'000;
#endif
}

struct Outcome {
  std::uint64_t records = 0;
  std::uint64_t order_errors = 0;
  bool timed_out = false;
};

// Reads until every producer's last record arrived; checks each producer's sequence is 0,1,2...
Outcome consume_all(Consumer& consumer, std::uint32_t producers, std::uint64_t per_producer, WaitKind wait,
                    std::chrono::steady_clock::time_point deadline) {
  Outcome outcome;
  std::vector<std::uint64_t> next(producers, 0);
  const std::uint64_t total = per_producer * producers;
  RingBatch batch;
  while (outcome.records < total) {
    if (std::chrono::steady_clock::now() > deadline) {
      outcome.timed_out = true;
      break;
    }
    const PollStatus status = consumer.wait(batch, wait, 1'000'000);
    if (status == PollStatus::kEmpty) continue;
    if (status != PollStatus::kOk) {
      ++outcome.order_errors;  // this test never frees unread space: lapping is a bug
      break;
    }
    for (const Stamp s : test::stamps_of(batch)) {
      if (s.producer >= producers || s.sequence != next[s.producer]) ++outcome.order_errors;
      if (s.producer < producers) next[s.producer] = s.sequence + 1;
      ++outcome.records;
    }
    if (!consumer.validate(batch)) ++outcome.order_errors;
  }
  return outcome;
}

void run_stress(std::uint32_t producers, std::uint32_t consumers, ProducerMode mode, WaitKind wait) {
  RingConfig config;
  config.capacity_bytes = 64 << 10;  // small: many laps and back-pressure
  RingFixture f = RingFixture::make(config);
  const std::uint64_t per_producer = records_per_producer();
  const auto deadline = std::chrono::steady_clock::now() + kDeadline;
  std::atomic<bool> start{false};
  std::atomic<std::uint32_t> consumers_attached{0};
  std::atomic<std::uint32_t> producers_done{0};
  std::atomic<bool> stop_owner{false};
  std::vector<Outcome> outcomes(consumers);

  // The owner frees space only behind the slowest consumer, so nothing unread is overwritten.
  std::thread owner_thread([&] {
    RingOwner owner(f.ring);
    while (!stop_owner.load(std::memory_order_acquire) && std::chrono::steady_clock::now() < deadline) {
      owner.release_to(owner.slowest_consumer());
      std::this_thread::yield();
    }
  });
  std::vector<std::thread> threads;
  for (std::uint32_t c = 0; c < consumers; ++c) {
    threads.emplace_back([&, c] {
      // Attach before producers start so every consumer sees every record from offset 0.
      Consumer consumer = Consumer::attach(f.ring).value();
      consumers_attached.fetch_add(1);
      while (!start.load(std::memory_order_acquire)) std::this_thread::yield();
      outcomes[c] = consume_all(consumer, producers, per_producer, wait, deadline);
    });
  }
  std::atomic<std::uint64_t> back_pressured{0};
  for (std::uint32_t p = 0; p < producers; ++p) {
    threads.emplace_back([&, p] {
      Producer producer = Producer::attach(f.ring, mode).value();
      while (!start.load(std::memory_order_acquire)) std::this_thread::yield();
      for (std::uint64_t seq = 0; seq < per_producer && std::chrono::steady_clock::now() < deadline;) {
        const ClaimStatus status = test::produce(producer, {p, seq});
        if (status == ClaimStatus::kOk) {
          ++seq;
        } else {
          ASSERT_EQ(status, ClaimStatus::kBackPressured);
          back_pressured.fetch_add(1, std::memory_order_relaxed);
          std::this_thread::yield();
        }
      }
      producers_done.fetch_add(1);
    });
  }
  // Consumers must hold a slot before the first record exists; the owner sees them by then.
  while (consumers_attached.load() < consumers) std::this_thread::yield();
  std::this_thread::sleep_for(std::chrono::milliseconds(5));
  start.store(true, std::memory_order_release);
  for (std::thread& t : threads) t.join();
  stop_owner.store(true, std::memory_order_release);
  owner_thread.join();

  for (std::uint32_t c = 0; c < consumers; ++c) {
    EXPECT_FALSE(outcomes[c].timed_out) << "consumer " << c << " hit the deadline";
    EXPECT_EQ(outcomes[c].order_errors, 0u) << "consumer " << c;
    EXPECT_EQ(outcomes[c].records, per_producer * producers) << "consumer " << c;
  }
  ::testing::Test::RecordProperty("back_pressured_claims", static_cast<int>(back_pressured.load()));
}

TEST(RingStress, ThreeSharedProducersTwoSpinningConsumers) {
  run_stress(3, 2, ProducerMode::kShared, WaitKind::kSpin);
}

TEST(RingStress, ExclusiveProducerThreeYieldingConsumers) {
  run_stress(1, 3, ProducerMode::kExclusive, WaitKind::kYield);
}

TEST(RingStress, TwoProducersTwoParkedConsumers) {
  run_stress(2, 2, ProducerMode::kShared, WaitKind::kPark);
}

}  // namespace
}  // namespace weft
