// Single-threaded behaviour of the partition ring: layout checks, claims, offsets, wrap-around,
// back-pressure, aborts, lapping, seeks and producer modes.
#include <gtest/gtest.h>

#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "ring_fixture.h"

namespace weft {
namespace {

using test::produce;
using test::RingFixture;
using test::Stamp;
using test::stamps_of;

RingConfig small_ring(std::size_t capacity = 4096) {
  RingConfig config;
  config.capacity_bytes = capacity;
  config.producer_slots = 4;
  config.consumer_slots = 4;
  return config;
}

// Reads every available batch; returns the stamps in order.
std::vector<Stamp> drain(Consumer& consumer) {
  std::vector<Stamp> out;
  RingBatch batch;
  for (int i = 0; i < 100000 && consumer.poll(batch) == PollStatus::kOk; ++i)
    for (Stamp s : stamps_of(batch)) out.push_back(s);
  return out;
}

TEST(RingLayout, FormatRejectsBadConfigs) {
  std::vector<std::byte> memory(1 << 20);
  auto* aligned = reinterpret_cast<std::byte*>((reinterpret_cast<std::uintptr_t>(memory.data()) + 4095) & ~4095ull);
  std::span<std::byte> span(aligned, (1 << 19));
  RingConfig config = small_ring();
  config.capacity_bytes = 5000;
  EXPECT_EQ(Ring::format(span, config).error().code, Errc::kInvalidArgument);
  config.capacity_bytes = 2048;
  EXPECT_EQ(Ring::format(span, config).error().code, Errc::kInvalidArgument);
  config = small_ring();
  config.max_frame_bytes = 4096;  // more than capacity / 2
  EXPECT_EQ(Ring::format(span, config).error().code, Errc::kInvalidArgument);
  config = small_ring(1 << 20);  // larger than the memory given
  EXPECT_EQ(Ring::format(span, config).error().code, Errc::kInvalidArgument);
  config = small_ring();
  config.producer_slots = 0;
  EXPECT_EQ(Ring::format(span, config).error().code, Errc::kInvalidArgument);
  EXPECT_EQ(Ring::format(span.subspan(8), small_ring()).error().code, Errc::kInvalidArgument);  // misaligned
}

TEST(RingLayout, AttachRejectsMemoryThatHoldsNoRing) {
  RingFixture f = RingFixture::make(small_ring());
  std::span<std::byte> bytes = f.memory.bytes();
  EXPECT_TRUE(Ring::attach(bytes).ok());
  EXPECT_EQ(Ring::attach(bytes.first(64)).error().code, Errc::kInvalidArgument);

  auto& descriptor = f.ring.control().descriptor;
  descriptor.capacity_bytes = 12345;  // not a power of two
  EXPECT_EQ(Ring::attach(bytes).error().code, Errc::kCorrupt);
  descriptor.capacity_bytes = 4096;
  descriptor.version = 99;
  EXPECT_EQ(Ring::attach(bytes).error().code, Errc::kFailedPrecondition);
  descriptor.version = ring_layout::kRingVersion;
  descriptor.data_offset = 64;
  EXPECT_EQ(Ring::attach(bytes).error().code, Errc::kCorrupt);
  std::memset(bytes.data(), 0, 4096);
  Result<Ring> zeroed = Ring::attach(bytes);
  ASSERT_FALSE(zeroed.ok());
  EXPECT_EQ(zeroed.error().code, Errc::kCorrupt);
  EXPECT_NE(zeroed.error().message.find("magic"), std::string::npos);
}

TEST(RingLayout, ADescriptorRewrittenAfterAttachIsNeverReadAgain) {
  RingFixture f = RingFixture::make(small_ring());
  RingOwner owner(f.ring);
  Producer producer = Producer::attach(f.ring).value();
  Consumer consumer = Consumer::attach(f.ring).value();
  ASSERT_EQ(produce(producer, {1, 0}), ClaimStatus::kOk);
  // Given a client that maps the ring (read-write, as every client does) and rewrites its shape
  auto& descriptor = f.ring.control().descriptor;
  const std::uint32_t producer_slots = descriptor.producer_slots, consumer_slots = descriptor.consumer_slots;
  descriptor.producer_slots = 0xFFFFFFFF;
  descriptor.consumer_slots = 0xFFFFFFFF;
  descriptor.max_frame_bytes = 0xFFFFFFF0;
  // When the owner passes over the ring, and producers and consumers attach and work
  EXPECT_TRUE(owner.seal_dead_claims().empty());
  EXPECT_EQ(owner.reclaim_dead_slots(), 0u);
  (void)owner.scan();
  Producer second = Producer::attach(f.ring).value();
  ASSERT_EQ(produce(second, {2, 0}), ClaimStatus::kOk);
  Claim claim;
  EXPECT_EQ(second.try_claim(f.ring.capacity_bytes(), 1, claim), ClaimStatus::kTooLarge) << "the forged frame size was taken";
  Consumer late = Consumer::attach(f.ring).value();
  // Expect every count to be the one checked at attach (before, the owner and every attach walked
  // 4 billion slots past the mapping), and the records read as written
  EXPECT_EQ(f.ring.producer_slot_count(), producer_slots);
  EXPECT_EQ(f.ring.consumer_slot_count(), consumer_slots);
  RingBatch batch;
  ASSERT_EQ(consumer.poll(batch), PollStatus::kOk);
  EXPECT_EQ(batch.base_offset, Offset{0});
  ASSERT_EQ(consumer.poll(batch), PollStatus::kOk);
  EXPECT_EQ(batch.base_offset, Offset{1});
  // And a ring attached again after the rewrite is refused, as bad memory always is
  EXPECT_EQ(Ring::attach(f.memory.bytes()).error().code, Errc::kCorrupt);
}

TEST(Ring, CommittedBatchIsReadInPlaceWithItsOffsetStamped) {
  RingConfig config = small_ring();
  config.initial_offset = Offset{1000};
  RingFixture f = RingFixture::make(config);
  Producer producer = Producer::attach(f.ring).value();
  Consumer consumer = Consumer::attach(f.ring).value();
  RingBatch batch;
  EXPECT_EQ(consumer.poll(batch), PollStatus::kEmpty);

  Offset base;
  ASSERT_EQ(produce(producer, {7, 1}, &base), ClaimStatus::kOk);
  EXPECT_EQ(base, Offset{1000});
  ASSERT_EQ(consumer.poll(batch), PollStatus::kOk);
  EXPECT_EQ(batch.base_offset, Offset{1000});
  EXPECT_EQ(batch.records, 1u);
  EXPECT_GE(reinterpret_cast<std::uintptr_t>(batch.bytes.data()), reinterpret_cast<std::uintptr_t>(f.ring.data()));
  const std::vector<Stamp> stamps = stamps_of(batch);  // the CRC holds after stamping the offset
  ASSERT_EQ(stamps.size(), 1u);
  EXPECT_EQ(stamps[0].producer, 7u);
  EXPECT_EQ(consumer.next_offset(), Offset{1001});
  EXPECT_EQ(consumer.poll(batch), PollStatus::kEmpty);
}

TEST(Ring, OffsetsCountRecordsAcrossMultiRecordBatches) {
  RingFixture f = RingFixture::make(small_ring(1 << 16));
  Producer producer = Producer::attach(f.ring).value();
  Consumer consumer = Consumer::attach(f.ring).value();
  std::int64_t expected = 0;
  for (std::uint32_t records = 1; records <= 5; ++records) {
    std::vector<std::byte> buffer(1024);
    BatchBuilder builder(buffer);
    std::vector<std::vector<std::byte>> values;
    for (std::uint32_t i = 0; i < records; ++i) values.push_back(test::stamp_bytes({records, i}));
    for (auto& v : values) ASSERT_TRUE(builder.append(RecordInput{std::nullopt, std::span<const std::byte>(v), 5, {}}));
    Offset base;
    ASSERT_EQ(producer.offer(builder.finish(), &base), ClaimStatus::kOk);
    EXPECT_EQ(base, Offset{expected});
    RingBatch batch;
    ASSERT_EQ(consumer.poll(batch), PollStatus::kOk);
    EXPECT_EQ(batch.base_offset, Offset{expected});
    EXPECT_EQ(batch.records, records);
    Result<BatchView> view = BatchView::parse(batch.bytes);
    ASSERT_TRUE(view.ok());
    std::int64_t next = expected;
    for (const RecordView& r : *view) EXPECT_EQ(r.offset, Offset{next++});
    expected += records;
  }
  EXPECT_EQ(consumer.next_offset(), Offset{expected});
}

TEST(Ring, WrapsAroundWithPaddingAndNeverReadsAStaleLap) {
  RingFixture f = RingFixture::make(small_ring(4096));
  Producer producer = Producer::attach(f.ring).value();
  Consumer consumer = Consumer::attach(f.ring).value();
  RingOwner owner(f.ring);
  std::uint64_t next_sequence = 0;
  std::uint64_t produced = 0;
  // Ten laps of a 4 KiB ring in odd-sized frames, so the wrap falls at different places.
  for (int round = 0; round < 400; ++round) {
    const std::size_t value_size = 12 + static_cast<std::size_t>(round % 37);
    std::vector<std::byte> value = test::stamp_bytes({1, produced}, value_size);
    RecordInput record;
    record.value = std::span<const std::byte>(value);
    ASSERT_EQ(producer.offer_record(record), ClaimStatus::kOk) << "round " << round;
    ++produced;
    RingBatch batch;
    ASSERT_EQ(consumer.poll(batch), PollStatus::kOk);
    for (Stamp s : stamps_of(batch)) EXPECT_EQ(s.sequence, next_sequence++);
    // Nothing else is there: the bytes ahead are an earlier lap's.
    ASSERT_EQ(consumer.poll(batch), PollStatus::kEmpty);
    owner.advance_reuse_limit({consumer.position(), consumer.next_offset()});
  }
  EXPECT_EQ(next_sequence, produced);
  EXPECT_GT(f.ring.tail_position().value, 10u * 4096);
}

TEST(Ring, ProducersAreBackPressuredByTheReuseLimit) {
  RingFixture f = RingFixture::make(small_ring(4096));
  Producer producer = Producer::attach(f.ring).value();
  Consumer consumer = Consumer::attach(f.ring).value();
  RingOwner owner(f.ring);
  int accepted = 0;
  ClaimStatus status = ClaimStatus::kOk;
  for (int i = 0; i < 1000 && status == ClaimStatus::kOk; ++i) {
    status = produce(producer, {1, static_cast<std::uint64_t>(i)});
    if (status == ClaimStatus::kOk) ++accepted;
  }
  EXPECT_EQ(status, ClaimStatus::kBackPressured);
  EXPECT_GT(accepted, 10);
  EXPECT_EQ(producer.back_pressure_events(), 1u);
  EXPECT_EQ(produce(producer, {1, 9999}), ClaimStatus::kBackPressured);
  // Every accepted record is intact: nothing was overwritten.
  EXPECT_EQ(static_cast<int>(drain(consumer).size()), accepted);
  owner.advance_reuse_limit({consumer.position(), consumer.next_offset()});
  EXPECT_EQ(produce(producer, {1, 10000}), ClaimStatus::kOk);
}

TEST(Ring, RejectsClaimsThatCanNeverFit) {
  RingFixture f = RingFixture::make(small_ring(4096));
  Producer producer = Producer::attach(f.ring).value();
  Claim claim;
  EXPECT_EQ(producer.try_claim(f.ring.max_batch_bytes() + 1, 1, claim), ClaimStatus::kTooLarge);
  EXPECT_EQ(producer.try_claim(100, 0, claim), ClaimStatus::kInvalid);
  EXPECT_EQ(producer.try_claim(10, 1, claim), ClaimStatus::kInvalid);
  // A copied batch that is shorter than its header, or holds no records, is refused.
  std::vector<std::byte> short_batch(kBatchHeaderBytes - 1);
  EXPECT_EQ(producer.offer(short_batch), ClaimStatus::kInvalid);
  std::vector<std::byte> empty(kBatchHeaderBytes);
  EXPECT_EQ(producer.offer(BatchBuilder(empty).finish()), ClaimStatus::kInvalid);
  ASSERT_EQ(producer.try_claim(f.ring.max_batch_bytes(), 1, claim), ClaimStatus::kOk);
  Claim second;
  EXPECT_EQ(producer.try_claim(100, 1, second), ClaimStatus::kInvalid);  // one open claim at a time
  producer.abort(claim);
  EXPECT_EQ(producer.try_claim(100, 1, second), ClaimStatus::kOk);
  producer.abort(second);
}

TEST(Ring, AbortedClaimsAreSkippedAndTheirOffsetsLeftAsAGap) {
  RingFixture f = RingFixture::make(small_ring());
  Producer producer = Producer::attach(f.ring).value();
  Consumer consumer = Consumer::attach(f.ring).value();
  ASSERT_EQ(produce(producer, {1, 0}), ClaimStatus::kOk);
  Claim claim;
  ASSERT_EQ(producer.try_claim(200, 3, claim), ClaimStatus::kOk);
  EXPECT_EQ(claim.base_offset, Offset{1});
  producer.abort(claim);
  Offset base;
  ASSERT_EQ(produce(producer, {1, 1}, &base), ClaimStatus::kOk);
  EXPECT_EQ(base, Offset{4});
  RingBatch batch;
  ASSERT_EQ(consumer.poll(batch), PollStatus::kOk);
  EXPECT_EQ(batch.base_offset, Offset{0});
  ASSERT_EQ(consumer.poll(batch), PollStatus::kOk);
  EXPECT_EQ(batch.base_offset, Offset{4});
  EXPECT_EQ(consumer.aborted_records_skipped(), 3u);
}

TEST(Ring, CommitOfAMalformedBatchAbortsIt) {
  RingFixture f = RingFixture::make(small_ring());
  Producer producer = Producer::attach(f.ring).value();
  Consumer consumer = Consumer::attach(f.ring).value();
  Claim claim;
  ASSERT_EQ(producer.try_claim(100, 2, claim), ClaimStatus::kOk);
  std::memset(claim.batch.data(), 0xAB, claim.batch.size());  // not a batch at all
  EXPECT_EQ(producer.commit(claim), CommitStatus::kMalformed);
  // A batch that says one record where two were claimed is refused too.
  std::vector<std::byte> value = test::stamp_bytes({1, 1});
  RecordInput record{std::nullopt, std::span<const std::byte>(value), 0, {}};
  ASSERT_EQ(producer.try_claim(single_record_batch_bytes(record), 2, claim), ClaimStatus::kOk);
  BatchBuilder builder(claim.batch);
  ASSERT_TRUE(builder.append(record));
  EXPECT_EQ(producer.commit(claim, builder.finish().size()), CommitStatus::kMalformed);
  RingBatch batch;
  EXPECT_EQ(consumer.poll(batch), PollStatus::kEmpty);
  EXPECT_EQ(consumer.next_offset(), Offset{4});
  EXPECT_EQ(consumer.aborted_records_skipped(), 4u);
}

TEST(Ring, ClaimMayBeCommittedShorterThanTaken) {
  RingFixture f = RingFixture::make(small_ring());
  Producer producer = Producer::attach(f.ring).value();
  Consumer consumer = Consumer::attach(f.ring).value();
  Claim claim;
  ASSERT_EQ(producer.try_claim(500, 1, claim), ClaimStatus::kOk);
  std::vector<std::byte> value = test::stamp_bytes({3, 3});
  BatchBuilder builder(claim.batch);
  ASSERT_TRUE(builder.append(RecordInput{std::nullopt, std::span<const std::byte>(value), 0, {}}));
  const std::size_t used = builder.finish().size();
  ASSERT_EQ(producer.commit(claim, used), CommitStatus::kOk);
  ASSERT_EQ(produce(producer, {3, 4}), ClaimStatus::kOk);
  RingBatch batch;
  ASSERT_EQ(consumer.poll(batch), PollStatus::kOk);
  EXPECT_EQ(batch.bytes.size(), used);
  EXPECT_EQ(stamps_of(batch)[0].sequence, 3u);
  ASSERT_EQ(consumer.poll(batch), PollStatus::kOk);
  EXPECT_EQ(stamps_of(batch)[0].sequence, 4u);
}

TEST(Ring, LappedConsumerIsToldTheFirstOffsetItMissed) {
  RingFixture f = RingFixture::make(small_ring(4096));
  Producer producer = Producer::attach(f.ring).value();
  Consumer slow = Consumer::attach(f.ring).value();
  Consumer fast = Consumer::attach(f.ring).value();
  RingOwner owner(f.ring);
  for (std::uint64_t i = 0; i < 3; ++i) ASSERT_EQ(produce(producer, {1, i}), ClaimStatus::kOk);
  RingBatch batch;
  ASSERT_EQ(slow.poll(batch), PollStatus::kOk);  // slow reads offset 0 only
  // The log writer (here: `fast`) persists everything, so space is freed past `slow`.
  for (std::uint64_t i = 3; i < 200; ++i) {
    drain(fast);
    owner.advance_reuse_limit({fast.position(), fast.next_offset()});
    ASSERT_EQ(produce(producer, {1, i}), ClaimStatus::kOk);
  }
  EXPECT_EQ(slow.poll(batch), PollStatus::kLapped);
  EXPECT_EQ(slow.lapped_offset(), Offset{1});
  EXPECT_EQ(slow.poll(batch), PollStatus::kLapped);  // stays lapped until it rejoins
  const Offset rejoined = slow.rejoin();
  EXPECT_GT(rejoined, Offset{1});
  // From the rejoin point on, every batch is intact and contiguous.
  Offset expected = rejoined;
  while (slow.poll(batch) == PollStatus::kOk) {
    EXPECT_EQ(batch.base_offset, expected);
    EXPECT_EQ(stamps_of(batch)[0].sequence, static_cast<std::uint64_t>(expected.value));
    expected += 1;
  }
  EXPECT_EQ(expected, Offset{200});
}

TEST(Ring, ViewOverwrittenWhileHeldFailsValidation) {
  RingFixture f = RingFixture::make(small_ring(4096));
  Producer producer = Producer::attach(f.ring).value();
  Consumer consumer = Consumer::attach(f.ring).value();
  Consumer writer = Consumer::attach(f.ring).value();  // stands in for the log writer
  RingOwner owner(f.ring);
  ASSERT_EQ(produce(producer, {1, 0}), ClaimStatus::kOk);
  RingBatch held;
  ASSERT_EQ(consumer.poll(held), PollStatus::kOk);
  EXPECT_TRUE(consumer.validate(held));
  for (std::uint64_t i = 1; i < 100; ++i) {
    drain(writer);
    owner.advance_reuse_limit({writer.position(), writer.next_offset()});
    ASSERT_EQ(produce(producer, {1, i}), ClaimStatus::kOk);
  }
  EXPECT_FALSE(consumer.validate(held));  // the reader must read offset 0 again from the log
  RingBatch next;
  EXPECT_EQ(consumer.poll(next), PollStatus::kLapped);
  EXPECT_EQ(consumer.lapped_offset(), held.base_offset + 1);
}

TEST(Ring, SeekFindsTheBatchHoldingAnOffset) {
  RingFixture f = RingFixture::make(small_ring(1 << 16));
  Producer producer = Producer::attach(f.ring).value();
  for (std::uint64_t i = 0; i < 10; ++i) {
    std::vector<std::byte> buffer(512);
    BatchBuilder builder(buffer);
    std::vector<std::byte> a = test::stamp_bytes({1, 2 * i}), b = test::stamp_bytes({1, 2 * i + 1});
    ASSERT_TRUE(builder.append(RecordInput{std::nullopt, std::span<const std::byte>(a), 0, {}}));
    ASSERT_TRUE(builder.append(RecordInput{std::nullopt, std::span<const std::byte>(b), 0, {}}));
    ASSERT_EQ(producer.offer(builder.finish()), ClaimStatus::kOk);
  }
  Consumer consumer = Consumer::attach(f.ring).value();
  ASSERT_TRUE(consumer.seek(Offset{7}).ok());  // the batch [6, 7]
  RingBatch batch;
  ASSERT_EQ(consumer.poll(batch), PollStatus::kOk);
  EXPECT_EQ(batch.base_offset, Offset{6});
  ASSERT_TRUE(consumer.seek(Offset{18}).ok());
  ASSERT_EQ(consumer.poll(batch), PollStatus::kOk);
  EXPECT_EQ(batch.base_offset, Offset{18});
  EXPECT_EQ(consumer.poll(batch), PollStatus::kEmpty);
  // Past the end: waits there, and skips nothing that comes.
  ASSERT_TRUE(consumer.seek(Offset{20}).ok());
  EXPECT_EQ(consumer.poll(batch), PollStatus::kEmpty);
  ASSERT_EQ(produce(producer, {1, 20}), ClaimStatus::kOk);
  ASSERT_EQ(consumer.poll(batch), PollStatus::kOk);
  EXPECT_EQ(batch.base_offset, Offset{20});

  RingOwner owner(f.ring);
  owner.advance_reuse_limit(owner.scan());
  Result<void> gone = consumer.seek(Offset{3});
  ASSERT_FALSE(gone.ok());
  EXPECT_EQ(gone.error().code, Errc::kOutOfRange);
  EXPECT_NE(gone.error().message.find("earliest is 21"), std::string::npos) << gone.error().message;
}

TEST(Ring, UnreadGivesBackBatchesWithoutAWalkAndALappedOneReadsAsLapped) {
  RingFixture f = RingFixture::make(small_ring(1 << 16));
  Producer producer = Producer::attach(f.ring).value();
  for (std::uint64_t i = 0; i < 4; ++i) ASSERT_EQ(produce(producer, {1, i}), ClaimStatus::kOk);
  Consumer consumer = Consumer::attach(f.ring).value();
  RingBatch first, second, again;
  ASSERT_EQ(consumer.poll(first), PollStatus::kOk);
  ASSERT_EQ(consumer.poll(second), PollStatus::kOk);
  consumer.unread(second);  // the latest
  EXPECT_EQ(consumer.next_offset(), Offset{1});
  ASSERT_EQ(consumer.poll(again), PollStatus::kOk);
  EXPECT_EQ(again.base_offset, Offset{1});
  EXPECT_EQ(again.position.value, second.position.value);
  consumer.unread(first);  // an earlier one: everything after it comes again, in order
  for (std::int64_t expected = 0; expected < 4; ++expected) {
    ASSERT_EQ(consumer.poll(again), PollStatus::kOk);
    EXPECT_EQ(again.base_offset, Offset{expected});
  }
  EXPECT_EQ(consumer.poll(again), PollStatus::kEmpty);

  // Given back, then overwritten: the next poll says lapped, never hands out the new bytes as it.
  consumer.unread(first);
  RingOwner owner(f.ring);
  for (std::uint64_t i = 4; i < 2'000; ++i) {
    owner.advance_reuse_limit(owner.scan());
    ASSERT_EQ(produce(producer, {1, i}), ClaimStatus::kOk);
  }
  EXPECT_EQ(consumer.poll(again), PollStatus::kLapped);
  EXPECT_EQ(consumer.lapped_offset(), Offset{0});
}

TEST(Ring, LatestConsumerStartsAfterWhatIsCommitted) {
  RingFixture f = RingFixture::make(small_ring());
  Producer producer = Producer::attach(f.ring).value();
  for (std::uint64_t i = 0; i < 5; ++i) ASSERT_EQ(produce(producer, {1, i}), ClaimStatus::kOk);
  Consumer latest = Consumer::attach(f.ring, StartAt::kLatest).value();
  Consumer earliest = Consumer::attach(f.ring, StartAt::kEarliest).value();
  EXPECT_EQ(latest.next_offset(), Offset{5});
  EXPECT_EQ(earliest.next_offset(), Offset{0});
  ASSERT_EQ(produce(producer, {1, 5}), ClaimStatus::kOk);
  RingBatch batch;
  ASSERT_EQ(latest.poll(batch), PollStatus::kOk);
  EXPECT_EQ(batch.base_offset, Offset{5});
}

TEST(Ring, ExclusiveAndSharedProducersExcludeEachOther) {
  RingFixture f = RingFixture::make(small_ring());
  {
    Producer shared = Producer::attach(f.ring).value();
    Result<Producer> exclusive = Producer::attach(f.ring, ProducerMode::kExclusive);
    ASSERT_FALSE(exclusive.ok());
    EXPECT_EQ(exclusive.error().code, Errc::kFailedPrecondition);
  }
  Producer exclusive = Producer::attach(f.ring, ProducerMode::kExclusive).value();
  EXPECT_EQ(Producer::attach(f.ring).error().code, Errc::kFailedPrecondition);
  EXPECT_EQ(Producer::attach(f.ring, ProducerMode::kExclusive).error().code, Errc::kFailedPrecondition);
  Consumer consumer = Consumer::attach(f.ring).value();
  for (std::uint64_t i = 0; i < 3; ++i) ASSERT_EQ(produce(exclusive, {2, i}), ClaimStatus::kOk);
  EXPECT_EQ(drain(consumer).size(), 3u);
  EXPECT_EQ(consumer.next_offset(), Offset{3});
}

TEST(Ring, ProducersAreFencedWhenTheLeaderEpochChanges) {
  RingFixture f = RingFixture::make(small_ring());
  EXPECT_EQ(leader_epoch(f.ring), ring_layout::kNotReplicated);
  Producer alone = Producer::attach(f.ring).value();
  EXPECT_EQ(alone.leader_epoch(), ring_layout::kNotReplicated);
  ASSERT_EQ(produce(alone, {1, 0}), ClaimStatus::kOk);

  // When the node leads at an epoch, producers of before stop; new ones claim under it
  set_leader_epoch(f.ring, 3);
  EXPECT_EQ(produce(alone, {1, 1}), ClaimStatus::kFenced);
  Producer leading = Producer::attach(f.ring).value();
  EXPECT_EQ(leading.leader_epoch(), 3);
  ASSERT_EQ(produce(leading, {2, 0}), ClaimStatus::kOk);

  // When it follows: nobody attaches but its own writer, which gets the ring alone once the
  // fenced producers are gone, and shares it (with them claiming nothing) while they are not
  set_leader_epoch(f.ring, ring_layout::kFollowing);
  EXPECT_EQ(produce(leading, {2, 1}), ClaimStatus::kFenced);
  Result<Producer> refused = Producer::attach(f.ring);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.error().code, Errc::kFailedPrecondition);
  EXPECT_NE(refused.error().message.find("follows"), std::string::npos);
  {
    Producer follower = Producer::attach_follower(f.ring).value();
    EXPECT_EQ(follower.mode(), ProducerMode::kShared);
    ASSERT_EQ(produce(follower, {3, 0}), ClaimStatus::kOk);
  }
  {
    Producer detached_one = std::move(alone);  // the fenced producers let go
    Producer detached_two = std::move(leading);
  }
  Producer follower = Producer::attach_follower(f.ring).value();
  EXPECT_EQ(follower.mode(), ProducerMode::kExclusive);
  ASSERT_EQ(produce(follower, {3, 1}), ClaimStatus::kOk);
  Consumer consumer = Consumer::attach(f.ring).value();
  EXPECT_EQ(drain(consumer).size(), 4u);  // nothing a fenced producer tried got in

  // And a ring the node replaced takes nobody at all
  set_leader_epoch(f.ring, ring_layout::kRetired);
  EXPECT_EQ(produce(follower, {3, 2}), ClaimStatus::kFenced);
  EXPECT_EQ(Producer::attach(f.ring).error().code, Errc::kFailedPrecondition);
  EXPECT_EQ(Producer::attach_follower(f.ring).error().code, Errc::kFailedPrecondition);
}

// Kafka's broker, not its client, sets a batch's partitionLeaderEpoch: a leading ring stamps the
// epoch its producer attached under over whatever the client wrote (librdkafka writes 0); a
// single node and a follower's writer keep what was written.
TEST(Ring, ALeadingRingStampsItsEpochOverTheClientsAndOthersKeepWhatWasWritten) {
  RingFixture f = RingFixture::make(small_ring());
  Consumer consumer = Consumer::attach(f.ring).value();
  auto offer_with_epoch = [](Producer& producer, std::int32_t client_epoch) {
    std::vector<std::byte> buffer(256);
    BatchBuilder builder(buffer);
    const std::vector<std::byte> value = test::stamp_bytes({1, 0});
    EXPECT_TRUE(builder.append(RecordInput{std::nullopt, std::span<const std::byte>(value), 0, {}}));
    std::span<std::byte> batch = builder.finish();
    stamp_partition_leader_epoch(batch, client_epoch);
    return producer.offer(batch);
  };
  auto next_epoch = [&] {
    RingBatch batch;
    EXPECT_EQ(consumer.poll(batch), PollStatus::kOk);
    return BatchView::parse(batch.bytes).value().partition_leader_epoch();
  };
  {
    Producer alone = Producer::attach(f.ring).value();  // a single node
    ASSERT_EQ(offer_with_epoch(alone, 0), ClaimStatus::kOk);
  }
  EXPECT_EQ(next_epoch(), 0);
  set_leader_epoch(f.ring, 4);
  {
    Producer leading = Producer::attach(f.ring).value();
    ASSERT_EQ(offer_with_epoch(leading, 0), ClaimStatus::kOk);
    ASSERT_EQ(offer_with_epoch(leading, -1), ClaimStatus::kOk);
  }
  EXPECT_EQ(next_epoch(), 4);
  EXPECT_EQ(next_epoch(), 4);
  set_leader_epoch(f.ring, ring_layout::kFollowing);
  Producer follower = Producer::attach_follower(f.ring).value();
  ASSERT_EQ(offer_with_epoch(follower, 2), ClaimStatus::kOk);  // its leader's batch, epoch 2
  EXPECT_EQ(next_epoch(), 2);
}

TEST(Ring, AcksAllWaitsForTheHighWatermarkAndEndsWhenFenced) {
  RingFixture f = RingFixture::make(small_ring());
  set_leader_epoch(f.ring, 1);
  publish_log_progress(f.ring, LogProgress{Offset{10}, Offset{10}, Errc::kOk});
  const auto soon = [] { return monotonic_ns() + 2'000'000; };
  // Not replicated: durable is enough
  EXPECT_EQ(wait_for_log(f.ring, Offset{10}, true, soon(), 1), AckStatus::kOk);
  // Replicated: acks=all waits for the high watermark as well, acks=1 does not
  publish_high_watermark(f.ring, Offset{6});
  EXPECT_EQ(read_log_progress(f.ring).replicated, Offset{6});
  EXPECT_EQ(wait_for_log(f.ring, Offset{6}, true, soon(), 1), AckStatus::kOk);
  EXPECT_EQ(wait_for_log(f.ring, Offset{7}, true, soon(), 1), AckStatus::kTimeout);
  EXPECT_EQ(wait_for_log(f.ring, Offset{10}, false, soon(), 1), AckStatus::kOk);
  // Under another epoch than the producer's: never acknowledged, whatever the offsets say
  EXPECT_EQ(wait_for_log(f.ring, Offset{6}, true, soon(), 2), AckStatus::kFenced);
  EXPECT_EQ(wait_for_log(f.ring, Offset{6}, true, soon()), AckStatus::kOk);  // any epoch

  // A waiter asleep on the high watermark is woken by it, and by a fence
  for (const bool fence : {false, true}) {
    std::atomic<bool> started{false};
    AckStatus status = AckStatus::kTimeout;
    std::thread waiter([&] {
      started.store(true);
      status = wait_for_log(f.ring, Offset{fence ? 20 : 9}, true, monotonic_ns() + 10'000'000'000, 1);  // bounded: 10 s
    });
    while (!started.load()) std::this_thread::yield();
    for (int i = 0; i < 10'000 && f.ring.control().log.waiters.load() == 0; ++i) std::this_thread::sleep_for(std::chrono::microseconds(100));
    if (fence) {
      set_leader_epoch(f.ring, ring_layout::kFollowing);
    } else {
      publish_high_watermark(f.ring, Offset{9});
    }
    waiter.join();
    EXPECT_EQ(status, fence ? AckStatus::kFenced : AckStatus::kOk);
  }
}

TEST(Ring, SlotsAreLimitedAndFreedOnDetach) {
  RingFixture f = RingFixture::make(small_ring());
  std::vector<Producer> producers;
  for (int i = 0; i < 4; ++i) producers.push_back(Producer::attach(f.ring).value());
  Result<Producer> fifth = Producer::attach(f.ring);
  ASSERT_FALSE(fifth.ok());
  EXPECT_EQ(fifth.error().code, Errc::kResourceExhausted);
  producers.pop_back();
  EXPECT_TRUE(Producer::attach(f.ring).ok());
}

TEST(Ring, ParkedConsumerIsWokenByACommit) {
  RingFixture f = RingFixture::make(small_ring());
  Producer producer = Producer::attach(f.ring).value();
  Consumer consumer = Consumer::attach(f.ring).value();
  std::atomic<bool> ready{false};
  PollStatus status = PollStatus::kEmpty;
  std::thread reader([&] {
    RingBatch batch;
    ready.store(true);
    status = consumer.wait(batch, WaitKind::kPark, 10'000'000'000);  // bounded: 10 s
  });
  while (!ready.load()) std::this_thread::yield();
  // Wait (bounded) until the reader has parked, so the commit must take the wake path.
  auto& wake = f.ring.control().wake;
  // (Its flag, not only its count: a commit between the two would find no flag, and the reader
  // would find the batch by its own poll.)
  for (int i = 0; i < 10'000 && (wake.parked.load() == 0 || wake.wake_needed.load() == 0); ++i)
    std::this_thread::sleep_for(std::chrono::microseconds(100));
  ASSERT_EQ(wake.parked.load(), 1u) << "the reader never parked";
  const std::uint32_t before = wake.futex_sequence.load();
  ASSERT_EQ(produce(producer, {1, 0}), ClaimStatus::kOk);
  reader.join();
  EXPECT_EQ(status, PollStatus::kOk);
  // The producer saw the parked reader and woke it (not the park slice running out).
  EXPECT_GT(wake.futex_sequence.load(), before);
  EXPECT_EQ(wake.parked.load(), 0u);
}

TEST(Ring, WaitTimesOutWhenNothingComes) {
  RingFixture f = RingFixture::make(small_ring());
  Consumer consumer = Consumer::attach(f.ring).value();
  RingBatch batch;
  for (WaitKind kind : {WaitKind::kSpin, WaitKind::kYield, WaitKind::kPark})
    EXPECT_EQ(consumer.wait(batch, kind, 2'000'000), PollStatus::kEmpty);
}

TEST(Ring, CorruptFrameHeaderIsReportedNotFollowed) {
  RingFixture f = RingFixture::make(small_ring());
  Producer producer = Producer::attach(f.ring).value();
  Consumer consumer = Consumer::attach(f.ring).value();
  ASSERT_EQ(produce(producer, {1, 0}), ClaimStatus::kOk);
  // A hostile process rewrites the frame length to run past the ring.
  auto* header = reinterpret_cast<ring_layout::FrameHeader*>(f.ring.data());
  header->frame_bytes = 1u << 30;
  RingBatch batch;
  EXPECT_EQ(consumer.poll(batch), PollStatus::kCorrupt);
  header->frame_bytes = 4;
  EXPECT_EQ(consumer.poll(batch), PollStatus::kCorrupt);
}

TEST(Ring, DestroyingAProducerAbortsItsOpenClaim) {
  RingFixture f = RingFixture::make(small_ring());
  Consumer consumer = Consumer::attach(f.ring).value();
  {
    Producer producer = Producer::attach(f.ring).value();
    Claim claim;
    ASSERT_EQ(producer.try_claim(200, 2, claim), ClaimStatus::kOk);
  }  // an early return with the claim open
  Producer next = Producer::attach(f.ring).value();
  Offset base;
  ASSERT_EQ(produce(next, {1, 0}, &base), ClaimStatus::kOk);
  EXPECT_EQ(base, Offset{2});
  RingBatch batch;
  ASSERT_EQ(consumer.poll(batch), PollStatus::kOk);
  EXPECT_EQ(batch.base_offset, Offset{2});
  EXPECT_EQ(consumer.aborted_records_skipped(), 2u);
}

TEST(Ring, CommitOrAbortOfAClaimNotOpenIsRefused) {
  RingFixture f = RingFixture::make(small_ring());
  Producer producer = Producer::attach(f.ring).value();
  Consumer consumer = Consumer::attach(f.ring).value();
  std::vector<std::byte> value = test::stamp_bytes({1, 0});
  RecordInput record{std::nullopt, std::span<const std::byte>(value), 0, {}};
  Claim claim;
  ASSERT_EQ(producer.try_claim(single_record_batch_bytes(record), 1, claim), ClaimStatus::kOk);
  BatchBuilder builder(claim.batch);
  ASSERT_TRUE(builder.append(record));
  const std::size_t used = builder.finish().size();
  ASSERT_EQ(producer.commit(claim, used), CommitStatus::kOk);
  EXPECT_EQ(producer.commit(claim, used), CommitStatus::kNotOpen);
  producer.abort(claim);  // ignored: it is committed
  RingBatch batch;
  ASSERT_EQ(consumer.poll(batch), PollStatus::kOk);
  EXPECT_EQ(consumer.aborted_records_skipped(), 0u);
}

TEST(Ring, StaleOrForgedFrameAheadIsNeverDeliveredAsNewData) {
  RingFixture f = RingFixture::make(small_ring());
  Producer producer = Producer::attach(f.ring).value();
  Consumer consumer = Consumer::attach(f.ring).value();
  ASSERT_EQ(produce(producer, {1, 0}), ClaimStatus::kOk);
  RingBatch batch;
  ASSERT_EQ(consumer.poll(batch), PollStatus::kOk);
  // Bytes left where the next frame will start happen to look like a committed frame tagged
  // with that very position, but carry another offset.
  const std::uint64_t next = consumer.position().value;
  std::byte* at = f.ring.data() + next;
  auto* header = reinterpret_cast<ring_layout::FrameHeader*>(at);
  header->frame_bytes = 128;
  header->record_count = 1;
  std::vector<std::byte> fake(96);
  BatchBuilder builder(fake);
  std::vector<std::byte> value = test::stamp_bytes({9, 9});
  ASSERT_TRUE(builder.append(RecordInput{std::nullopt, std::span<const std::byte>(value), 0, {}}));
  std::span<std::byte> bytes = builder.finish();
  stamp_base_offset(bytes, Offset{777});
  std::memcpy(at + ring_layout::kFrameHeaderBytes, bytes.data(), bytes.size());
  header->state.store(ring_layout::frame_state(next, ring_layout::kFrameCommitted));
  EXPECT_EQ(consumer.poll(batch), PollStatus::kCorrupt);
}

TEST(Ring, HostileTagsNearTheRingEndAreRefusedWithoutReadingPastIt) {
  RingFixture f = RingFixture::make(small_ring(4096));
  Producer producer = Producer::attach(f.ring).value();
  Consumer consumer = Consumer::attach(f.ring).value();
  // Move every position to just before the ring's end.
  while (f.ring.tail_position().value < 4096 - 200) {
    ASSERT_EQ(produce(producer, {1, 0}), ClaimStatus::kOk);
    RingBatch batch;
    ASSERT_EQ(consumer.poll(batch), PollStatus::kOk);
  }
  const std::uint64_t position = consumer.position().value;
  // A committed tag in the last 8 bytes: its header would run past the mapping.
  const std::uint64_t last = (position & ~4095ull) + 4096 - 8;
  auto* tag = reinterpret_cast<std::atomic<std::uint64_t>*>(f.ring.data() + (last & 4095));
  tag->store(ring_layout::frame_state(last, ring_layout::kFrameCommitted));
  // Walk the consumer there with forged padding-free frames is not needed: read it directly.
  auto* here = reinterpret_cast<ring_layout::FrameHeader*>(f.ring.data() + (position & 4095));
  here->frame_bytes = static_cast<std::uint32_t>(last - position);
  here->record_count = 1;
  here->state.store(ring_layout::frame_state(position, ring_layout::kFrameAborted));
  RingBatch batch;
  EXPECT_EQ(consumer.poll(batch), PollStatus::kCorrupt);
}

TEST(Ring, ReuseLimitNeverMovesBackwardsOrPastTheTail) {
  RingFixture f = RingFixture::make(small_ring());
  Producer producer = Producer::attach(f.ring).value();
  RingOwner owner(f.ring);
  for (std::uint64_t i = 0; i < 3; ++i) ASSERT_EQ(produce(producer, {1, i}), ClaimStatus::kOk);
  const Ring::Mark frontier = owner.scan();
  EXPECT_FALSE(owner.advance_reuse_limit({frontier.position + 8, frontier.offset}));
  EXPECT_TRUE(owner.advance_reuse_limit(frontier));
  EXPECT_FALSE(owner.advance_reuse_limit({Position{0}, Offset{0}}));
  EXPECT_EQ(f.ring.reuse_limit().position, frontier.position);
  EXPECT_EQ(f.ring.reuse_limit().offset, Offset{3});
}

TEST(RingOwner, ConsumersThatStartDuringAFlowControlledMoveStartFromTheLimitItLeaves) {
  // Given ten one-record batches, a consumer at the first, and the mark of the sixth
  RingFixture f = RingFixture::make(small_ring(1 << 16));
  Producer producer = Producer::attach(f.ring).value();
  for (std::uint64_t i = 0; i < 10; ++i) ASSERT_EQ(produce(producer, {1, i}), ClaimStatus::kOk);
  Consumer seeker = Consumer::attach(f.ring).value();
  Consumer lapped = Consumer::attach(f.ring).value();
  Ring::Mark sixth;
  {
    Consumer probe = Consumer::attach(f.ring).value();
    RingBatch batch;
    for (int i = 0; i < 5; ++i) ASSERT_EQ(probe.poll(batch), PollStatus::kOk);
    sixth = Ring::Mark{probe.position(), probe.next_offset()};
  }
  RingOwner owner(f.ring);

  // When consumers attach, seek and rejoin, each on a thread of its own, while the owner is
  // inside a move's window (after its look at the slots, so it saw none of this)
  std::optional<RingOwner::FlowControlledMove> window(std::in_place, owner);
  std::atomic<int> done{0};
  Offset attached_at, rejoined_at;
  Errc seek_code = Errc::kOk;
  std::string seek_message;
  {
    std::jthread attaching([&] {
      Consumer late = Consumer::attach(f.ring).value();
      attached_at = late.next_offset();
      ++done;
    });
    std::jthread seeking([&] {
      Result<void> back = seeker.seek(Offset{2});
      if (!back.ok()) {
        seek_code = back.error().code;
        seek_message = back.error().message;
      }
      ++done;
    });
    std::jthread rejoining([&] {
      rejoined_at = lapped.rejoin();
      ++done;
    });
    for (int i = 0; i < 50 && done == 0; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    EXPECT_EQ(done.load(), 0) << "a consumer started inside the window without waiting for it";
    ASSERT_TRUE(owner.advance_reuse_limit(sixth));
    window.reset();
  }  // joins

  // Expect each to start from the limit the move left, none behind it
  EXPECT_EQ(attached_at, Offset{5});
  EXPECT_EQ(seek_code, Errc::kOutOfRange);
  EXPECT_NE(seek_message.find("earliest is 5"), std::string::npos) << seek_message;
  EXPECT_EQ(rejoined_at, Offset{5});
  EXPECT_EQ(seeker.slot()->position.load(), 0u) << "a failed seek leaves the consumer where it was";
  EXPECT_EQ(lapped.slot()->position.load(), sixth.position.value);
}

// A pid that certainly belonged to a process that is gone.
std::uint64_t dead_pid() {
  const pid_t child = fork();
  if (child == 0) _exit(0);
  int status = 0;
  waitpid(child, &status, 0);
  return static_cast<std::uint64_t>(child);
}

TEST(RingOwner, ReclaimsAProducerThatDiedBeforeItsClaimReachedTheTail) {
  RingFixture f = RingFixture::make(small_ring());
  RingOwner owner(f.ring);
  // Given a dead exclusive producer that named a claim but never moved the tail.
  ring_layout::ProducerSlot& slot = f.ring.producer_slots()[0];
  slot.owner.store(ring_layout::slot_owner(dead_pid(), 1));
  slot.pending_position.store(0);
  slot.pending_frame_bytes.store(160);
  slot.pending_records.store(1);
  f.ring.control().mode.producers.store(ring_layout::kExclusiveProducer | 1);
  EXPECT_EQ(Producer::attach(f.ring).error().code, Errc::kFailedPrecondition);
  // Expect: nothing to seal, the slot and the exclusivity are released.
  EXPECT_TRUE(owner.seal_dead_claims().empty());
  EXPECT_EQ(owner.reclaim_dead_slots(), 1u);
  EXPECT_EQ(f.ring.control().mode.producers.load(), 0u);
  EXPECT_TRUE(Producer::attach(f.ring).ok());
}

// Makes the producer slot that names `claim_start` look owned by a process that died.
void mark_claimer_dead(Ring ring, std::uint64_t claim_start) {
  for (std::uint32_t i = 0; i < ring.producer_slot_count(); ++i) {
    ring_layout::ProducerSlot& slot = ring.producer_slots()[i];
    if (slot.owner.load() != 0 && slot.pending_position.load() == claim_start) {
      slot.owner.store(ring_layout::slot_owner(dead_pid(), 1));
      return;
    }
  }
  ADD_FAILURE() << "no slot names the claim at " << claim_start;
}

TEST(RingOwner, SealsAClaimWhoseProducerDiedBeforeStampingItsFrame) {
  RingFixture f = RingFixture::make(small_ring());
  Consumer consumer = Consumer::attach(f.ring).value();
  RingOwner owner(f.ring);
  Producer dying = Producer::attach(f.ring).value();
  ASSERT_EQ(produce(dying, {1, 0}), ClaimStatus::kOk);
  Claim claim;
  ASSERT_EQ(dying.try_claim(200, 3, claim), ClaimStatus::kOk);
  // Given: it died right after its compare-and-swap: only its slot names the claim.
  reinterpret_cast<ring_layout::FrameHeader*>(f.ring.data() + claim.position.value)->state.store(0);
  mark_claimer_dead(f.ring, claim.position.value);
  Producer live = Producer::attach(f.ring).value();
  ASSERT_EQ(produce(live, {2, 0}), ClaimStatus::kOk);
  RingBatch batch;
  ASSERT_EQ(consumer.poll(batch), PollStatus::kOk);
  ASSERT_EQ(consumer.poll(batch), PollStatus::kEmpty);  // stuck behind the open claim
  // Expect: sealed from the slot's record of it, and the live producer's record follows.
  const std::vector<SealedRange> sealed = owner.seal_dead_claims();
  ASSERT_EQ(sealed.size(), 1u);
  EXPECT_EQ(sealed[0].first, Offset{1});
  EXPECT_EQ(sealed[0].records, 3u);
  ASSERT_EQ(consumer.poll(batch), PollStatus::kOk);
  EXPECT_EQ(batch.base_offset, Offset{4});
  EXPECT_EQ(stamps_of(batch)[0].producer, 2u);
  EXPECT_EQ(owner.reclaim_dead_slots(), 1u);
}

TEST(RingOwner, SealsADeadClaimAtTheWrapAsPaddingAndAnAbortedFrame) {
  RingFixture f = RingFixture::make(small_ring(4096));
  Consumer consumer = Consumer::attach(f.ring).value();
  RingOwner owner(f.ring);
  Producer dying = Producer::attach(f.ring).value();
  RingBatch batch;
  // Bring the tail within 150 bytes of the ring's end, freeing space as a log writer would.
  while ((f.ring.tail_position().value & 4095) < 4096 - 150) {
    ASSERT_EQ(produce(dying, {1, 0}), ClaimStatus::kOk);
    ASSERT_EQ(consumer.poll(batch), PollStatus::kOk);
    owner.advance_reuse_limit({consumer.position(), consumer.next_offset()});
  }
  const std::uint64_t claim_start = f.ring.tail_position().value;
  const Offset first = consumer.next_offset();
  Claim claim;
  ASSERT_EQ(dying.try_claim(200, 2, claim), ClaimStatus::kOk);
  ASSERT_GT(claim.position.value, claim_start);  // the claim took padding to the ring's end
  // Given: it died before publishing even the padding.
  reinterpret_cast<std::atomic<std::uint64_t>*>(f.ring.data() + (claim_start & 4095))->store(0);
  reinterpret_cast<ring_layout::FrameHeader*>(f.ring.data() + (claim.position.value & 4095))->state.store(0);
  mark_claimer_dead(f.ring, claim_start);
  Producer live = Producer::attach(f.ring).value();
  ASSERT_EQ(produce(live, {2, 0}), ClaimStatus::kOk);
  ASSERT_EQ(consumer.poll(batch), PollStatus::kEmpty);
  // Expect: the padding and the frame are sealed; readers go past both.
  const std::vector<SealedRange> sealed = owner.seal_dead_claims();
  ASSERT_EQ(sealed.size(), 1u);
  EXPECT_EQ(sealed[0].first, first);
  EXPECT_EQ(sealed[0].records, 2u);
  ASSERT_EQ(consumer.poll(batch), PollStatus::kOk);
  EXPECT_EQ(batch.base_offset, first + 2);
  EXPECT_EQ(stamps_of(batch)[0].producer, 2u);
}

TEST(RingOwner, DoesNotFreeASlotWhoseOwnerIsAlive) {
  RingFixture f = RingFixture::make(small_ring());
  Producer producer = Producer::attach(f.ring).value();
  Consumer consumer = Consumer::attach(f.ring).value();
  RingOwner owner(f.ring);
  EXPECT_EQ(owner.reclaim_dead_slots(), 0u);
  EXPECT_TRUE(process_alive(static_cast<std::uint64_t>(getpid()), process_start_time(static_cast<std::uint64_t>(getpid()))));
  EXPECT_FALSE(process_alive(dead_pid(), 0));
}

}  // namespace
}  // namespace weft
