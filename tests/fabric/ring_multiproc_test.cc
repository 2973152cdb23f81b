// Producers and consumers in separate processes (fork) on one ring in shared memory, and
// producers SIGKILLed between claim and commit. Every child is stopped and reaped by its PID;
// every loop is bounded in count and time.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <set>
#include <thread>
#include <vector>

#include "children.h"
#include "ring_fixture.h"

namespace weft {
namespace {

using test::Children;
using test::RingFixture;
using test::Stamp;

using Clock = std::chrono::steady_clock;

// Exit codes children report with.
enum ChildExit : int { kChildOk = 0, kChildAttachFailed = 10, kChildOrder = 11, kChildTimeout = 12, kChildLapped = 13 };


int produce_in_child(Ring ring, std::uint32_t id, std::uint64_t count) {
  Result<Producer> producer = Producer::attach(ring);
  if (!producer.ok()) return kChildAttachFailed;
  const auto deadline = Clock::now() + std::chrono::seconds(60);
  for (std::uint64_t seq = 0; seq < count;) {
    if (test::produce(*producer, {id, seq}) == ClaimStatus::kOk)
      ++seq;
    else if (Clock::now() > deadline)
      return kChildTimeout;
    else
      sched_yield();
  }
  return kChildOk;
}

TEST(RingMultiProcess, ProducerAndConsumerProcessesAgreeOnEveryRecord) {
  RingConfig config;
  config.capacity_bytes = 256 << 10;
  RingFixture f = RingFixture::make(config);
  constexpr std::uint32_t kProducers = 3;
  constexpr std::uint32_t kConsumers = 2;
  constexpr std::uint64_t kPerProducer = 100'000;
  Children children;
  int consumer_ready[2];
  ASSERT_EQ(pipe(consumer_ready), 0);

  std::vector<pid_t> consumers;
  for (std::uint32_t c = 0; c < kConsumers; ++c) {
    consumers.push_back(children.spawn([&] {
      Result<Consumer> consumer = Consumer::attach(f.ring);
      if (!consumer.ok()) return int{kChildAttachFailed};
      const char ready = 'r';
      if (write(consumer_ready[1], &ready, 1) != 1) return int{kChildAttachFailed};
      std::vector<std::uint64_t> next(kProducers, 0);
      std::uint64_t seen = 0;
      const auto deadline = Clock::now() + std::chrono::seconds(60);
      RingBatch batch;
      while (seen < kProducers * kPerProducer) {
        if (Clock::now() > deadline) return int{kChildTimeout};
        const PollStatus status = consumer->wait(batch, WaitKind::kYield, 1'000'000);
        if (status == PollStatus::kEmpty) continue;
        if (status != PollStatus::kOk) return int{kChildLapped};
        for (const Stamp s : test::stamps_of(batch)) {
          if (s.producer >= kProducers || s.sequence != next[s.producer]) return int{kChildOrder};
          next[s.producer] = s.sequence + 1;
          ++seen;
        }
      }
      return int{kChildOk};
    }));
  }
  for (pid_t pid : consumers) ASSERT_GT(pid, 0);
  close(consumer_ready[1]);  // a read now ends (0) if every consumer died before it was ready
  for (std::uint32_t c = 0; c < kConsumers; ++c) {
    char ready = 0;
    ASSERT_EQ(read(consumer_ready[0], &ready, 1), 1) << "a consumer process failed to start";
  }
  close(consumer_ready[0]);
  std::vector<pid_t> producers;
  for (std::uint32_t p = 0; p < kProducers; ++p)
    producers.push_back(children.spawn([&, p] { return produce_in_child(f.ring, p, kPerProducer); }));

  // This process owns the ring: it frees space behind the slowest consumer process.
  RingOwner owner(f.ring);
  const auto deadline = Clock::now() + std::chrono::seconds(70);
  std::set<pid_t> running(consumers.begin(), consumers.end());
  while (!running.empty() && Clock::now() < deadline) {
    owner.release_to(owner.slowest_consumer());
    for (auto it = running.begin(); it != running.end();) {
      int status = 0;
      if (children.exited(*it, status)) {
        EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == kChildOk) << "consumer exit " << status;
        it = running.erase(it);
      } else {
        ++it;
      }
    }
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
  EXPECT_TRUE(running.empty()) << running.size() << " consumer process(es) did not finish in time";
  for (pid_t pid : producers) EXPECT_EQ(children.reap(pid, std::chrono::seconds(5)), kChildOk);
}

TEST(RingMultiProcess, ProducerKilledBetweenClaimAndCommitDoesNotBlockThePartition) {
  RingFixture f = RingFixture::make(RingConfig{});
  Consumer consumer = Consumer::attach(f.ring).value();
  RingOwner owner(f.ring);
  Children children;
  int claimed[2];
  ASSERT_EQ(pipe(claimed), 0);

  // Given a producer that commits 10 records, then claims 3 offsets and hangs before commit.
  const pid_t stuck = children.spawn([&] {
    Result<Producer> producer = Producer::attach(f.ring);
    if (!producer.ok()) return int{kChildAttachFailed};
    for (std::uint64_t i = 0; i < 10; ++i)
      if (test::produce(*producer, {0, i}) != ClaimStatus::kOk) return int{kChildOrder};
    Claim claim;
    if (producer->try_claim(300, 3, claim) != ClaimStatus::kOk) return int{kChildOrder};
    std::memset(claim.batch.data(), 0x5A, 100);  // half-written
    const char c = 'c';
    if (write(claimed[1], &c, 1) != 1) return int{kChildOrder};
    pause();  // until killed
    return int{kChildOk};
  });
  ASSERT_GT(stuck, 0);
  close(claimed[1]);  // a read now ends (0) if the child died before claiming
  char c = 0;
  ASSERT_EQ(read(claimed[0], &c, 1), 1) << "the producer process failed before its claim";
  close(claimed[0]);
  // And a live producer behind it.
  const pid_t live = children.spawn([&] { return produce_in_child(f.ring, 1, 100); });
  ASSERT_EQ(children.reap(live, std::chrono::seconds(30)), kChildOk);

  // Expect: readers stop at the open claim until the owner seals it.
  RingBatch batch;
  std::uint64_t from_stuck = 0;
  while (consumer.poll(batch) == PollStatus::kOk) from_stuck += test::stamps_of(batch).size();
  EXPECT_EQ(from_stuck, 10u);
  EXPECT_TRUE(owner.seal_dead_claims().empty()) << "a live producer's claim must not be sealed";

  // When the producer is SIGKILLed mid-claim,
  ASSERT_EQ(kill(stuck, SIGKILL), 0);
  EXPECT_EQ(children.reap(stuck, std::chrono::seconds(5)), -SIGKILL);
  const std::vector<SealedRange> sealed = owner.seal_dead_claims();
  ASSERT_EQ(sealed.size(), 1u);
  EXPECT_EQ(sealed[0].first, Offset{10});
  EXPECT_EQ(sealed[0].records, 3u);
  EXPECT_EQ(sealed[0].dead_pid, static_cast<std::uint64_t>(stuck));

  // then every record of the live producer follows the 3-offset gap, in order.
  std::uint64_t next = 0;
  Offset expected{13};
  while (consumer.poll(batch) == PollStatus::kOk) {
    EXPECT_EQ(batch.base_offset, expected);
    for (const Stamp s : test::stamps_of(batch)) EXPECT_EQ(s.sequence, next++);
    expected += batch.records;
  }
  EXPECT_EQ(next, 100u);
  EXPECT_EQ(consumer.aborted_records_skipped(), 3u);
  EXPECT_EQ(owner.reclaim_dead_slots(), 1u);  // the dead producer's slot is free again
}

TEST(RingMultiProcess, RepeatedKillsAtRandomPointsNeverLoseOrBlockOffsets) {
  RingConfig config;
  config.capacity_bytes = 64 << 10;
  config.producer_slots = 2;  // dead producers' slots must be reclaimed to go on
  RingFixture f = RingFixture::make(config);
  Consumer consumer = Consumer::attach(f.ring).value();
  RingOwner owner(f.ring);
  Children children;
  std::mt19937 random(12345);
  std::vector<std::uint64_t> next_sequence(21, 0);
  std::uint64_t delivered = 0;
  std::uint64_t sealed_records = 0;
  RingBatch batch;
  auto drain = [&] {
    for (int i = 0; i < 1'000'000; ++i) {
      const PollStatus status = consumer.poll(batch);
      if (status != PollStatus::kOk) {
        ASSERT_EQ(status, PollStatus::kEmpty);
        break;
      }
      for (const Stamp s : test::stamps_of(batch)) {
        ASSERT_LT(s.producer, next_sequence.size());
        EXPECT_EQ(s.sequence, next_sequence[s.producer]) << "producer " << s.producer;
        next_sequence[s.producer] = s.sequence + 1;
        ++delivered;
      }
    }
    owner.release_to(consumer.position());
  };

  for (std::uint32_t round = 0; round < 20; ++round) {
    // A child produces without end; it is SIGKILLed wherever it happens to be.
    // Wait (bounded) until the child has produced, so the kill lands while it is producing.
    const std::uint64_t tail_before = f.ring.tail_position().value;
    const pid_t child = children.spawn([&, round] { return produce_in_child(f.ring, round, UINT64_MAX); });
    ASSERT_GT(child, 0);
    const auto started_by = Clock::now() + std::chrono::seconds(10);
    while (f.ring.tail_position().value == tail_before && Clock::now() < started_by) drain();
    const auto run_until = Clock::now() + std::chrono::microseconds(50 + random() % 1000);
    while (Clock::now() < run_until) drain();
    ASSERT_EQ(kill(child, SIGKILL), 0);
    ASSERT_EQ(children.reap(child, std::chrono::seconds(5)), -SIGKILL);
    for (const SealedRange& r : owner.seal_dead_claims()) sealed_records += r.records;
    drain();
    owner.reclaim_dead_slots();
  }
  // A last producer exits cleanly; everything it wrote is read after all the kills.
  const pid_t last = children.spawn([&] { return produce_in_child(f.ring, 20, 1000); });
  const auto deadline = Clock::now() + std::chrono::seconds(30);
  while (next_sequence[20] < 1000 && Clock::now() < deadline) drain();
  EXPECT_EQ(children.reap(last, std::chrono::seconds(5)), kChildOk);
  EXPECT_EQ(next_sequence[20], 1000u);
  // Every offset taken was either delivered or sealed: nothing is lost or blocked.
  EXPECT_EQ(static_cast<std::uint64_t>(consumer.next_offset().value), delivered + sealed_records);
  EXPECT_EQ(consumer.aborted_records_skipped(), sealed_records);
  // How many kills landed mid-claim varies with load (4-12 of 20 in runs here); the
  // deterministic RingOwner tests in ring_test cover sealing whatever the count.
  RecordProperty("delivered", static_cast<int>(delivered));
  RecordProperty("sealed", static_cast<int>(sealed_records));
  std::printf("kills: 20, records delivered %llu, sealed by the owner %llu\n",
              static_cast<unsigned long long>(delivered), static_cast<unsigned long long>(sealed_records));
}

}  // namespace
}  // namespace weft
