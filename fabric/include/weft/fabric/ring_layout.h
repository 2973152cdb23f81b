// The partition ring's shared-memory contract, alone: every process that maps a ring agrees on
// exactly these bytes. Change nothing here without bumping kRingVersion.
//
//   [RingControl][ProducerSlot x P][ConsumerSlot x C][pad to 4 KiB][data: capacity bytes]
//
// Frames in the data area are 8-byte aligned: a 16-byte FrameHeader, then one RecordBatch v2.
// A frame's state word holds its own free-running position with its kind in the low 3 bits,
// so a frame left from an earlier lap can never match the position a reader expects.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "weft/fabric/types.h"

namespace weft::ring_layout {

inline constexpr std::uint64_t kRingMagic = 0x474E495254464557ull;  // "WEFTRING" in memory order
inline constexpr std::uint32_t kRingVersion = 6;
inline constexpr std::size_t kFrameAlign = 8;
inline constexpr std::size_t kFrameHeaderBytes = 16;
inline constexpr std::size_t kDataAlign = 4096;

// Low 3 bits of a frame's state word; the rest is the frame's position.
enum FrameKind : std::uint64_t {
  kFrameClaimed = 1,    // space and offsets taken; the batch is being written
  kFrameCommitted = 2,  // the batch is readable
  kFrameAborted = 3,    // offsets taken but no data: readers skip record_count offsets
  kFramePadding = 4,    // fills the end of the ring so no frame wraps; extends to the end
};
inline constexpr std::uint64_t kKindMask = 7;

constexpr std::uint64_t frame_state(std::uint64_t position, FrameKind kind) { return position | kind; }

enum WakeProtocol : std::uint32_t {
  kWakeFence = 1,       // producers fence (seq_cst) between commit and checking for parked readers
  kWakeMembarrier = 2,  // parked readers run membarrier(GLOBAL_EXPEDITED); producers only stop the compiler
};

struct FrameHeader {
  std::atomic<std::uint64_t> state;  // position | FrameKind
  std::uint32_t frame_bytes;         // header + batch + padding to 8; written before the state
  std::uint32_t record_count;        // offsets this frame takes
};
static_assert(sizeof(FrameHeader) == kFrameHeaderBytes);
static_assert(offsetof(FrameHeader, frame_bytes) == 8 && offsetof(FrameHeader, record_count) == 12);

// Written once by Ring::format, read-only afterwards.
struct alignas(kNoShare) Descriptor {
  std::uint64_t magic;
  std::uint32_t version;
  std::uint32_t wake_protocol;
  std::uint64_t capacity_bytes;     // power of two
  std::uint64_t data_offset;        // from the start of the ring memory
  std::uint32_t max_frame_bytes;    // at most capacity / 2, so a claim with padding fits
  std::uint32_t producer_slots;
  std::uint32_t consumer_slots;
  std::uint32_t reserved;
  std::int64_t initial_offset;
};

// A (position, offset) pair moved as one 16-byte word with cmpxchg16b. The claim word (the
// tail producers take next) is written by producers; the reuse limit by the owner only.
struct alignas(16) PositionPair {
  std::uint64_t position;
  std::uint64_t offset;  // an int64 Kafka offset, stored as its two's complement
};

struct alignas(kNoShare) ClaimLine {
  PositionPair tail;
};

// Producers may overwrite data only behind `limit.position`, where the frame of offset
// `limit.offset` starts. Written by the owner.
struct alignas(kNoShare) ReuseLine {
  PositionPair limit;
  // Odd while a flow-controlled owner is between looking at the consumer slots and moving the
  // limit: a consumer that starts then waits for the move, so it never starts behind it. In the
  // line's second 64 bytes: written every flow-controlled pass, it must not invalidate the
  // limit's bytes that every consumer reads on every poll.
  alignas(64) std::atomic<std::uint64_t> flow_moves;
};

struct alignas(kNoShare) WakeLine {
  std::atomic<std::uint32_t> futex_sequence;  // bumped by producers that wake parked readers
  std::atomic<std::uint32_t> parked;          // readers about to sleep or asleep (a statistic)
  // Set by each reader about to sleep; the first commit after it clears it and wakes them all,
  // so only that commit pays the futex call, however many readers sleep.
  std::atomic<std::uint32_t> wake_needed;
};

// Bit i (i < 63): producer slot i holds the ring. Bit 63: that holder is exclusive. Setting and
// clearing a slot's own bit is idempotent, so the owner can undo a dead producer's share safely.
// leader_epoch fences producers in a cluster: a producer claims only while it equals the value
// it saw when it attached, so a node that stops leading (or leads at a new epoch) stops every
// producer of the old one at its next claim. Written by the owner only; read on every claim, and
// written rarely, so the line stays in every producer's cache.
struct alignas(kNoShare) ModeLine {
  std::atomic<std::uint64_t> producers;
  std::atomic<std::int32_t> leader_epoch;  // >= 0: this node leads at that epoch; or one below
};
inline constexpr std::int32_t kNotReplicated = -2;  // a node alone: producers are fenced only by kRetired
inline constexpr std::int32_t kFollowing = -1;      // only the replica's own writer may attach
inline constexpr std::int32_t kRetired = -3;        // nothing more comes here: a truncation replaced the ring, or its topic was deleted
inline constexpr std::uint64_t kExclusiveProducer = 1ull << 63;
inline constexpr std::uint32_t kMaxProducerSlots = 63;
inline constexpr std::uint32_t kMaxConsumerSlots = 4096;

// Where the partition's log stands, published by the node's log writer to producers that wait
// for acknowledgements. Written by the owner only.
struct alignas(kNoShare) LogLine {
  std::atomic<std::int64_t> written_offset;  // every offset below it is in the log; kNoLog: no log
  std::atomic<std::int64_t> durable_offset;  // ... and as durable as the topic's fsync policy asks
  std::atomic<std::uint32_t> futex_sequence;  // bumped when either moves while a producer waits
  std::atomic<std::uint32_t> waiters;         // producers waiting on futex_sequence
  std::atomic<std::uint32_t> error;           // an Errc: why the log takes nothing now (0: it does)
  // The high watermark in a cluster: every in-sync replica holds the offsets below it (acks=all
  // waits for it too). kNoLog: the partition is not replicated.
  std::atomic<std::int64_t> replicated_offset;
};
inline constexpr std::int64_t kNoLog = -1;

struct alignas(kNoShare) RingControl {
  Descriptor descriptor;
  ClaimLine claim;
  ReuseLine reuse;
  WakeLine wake;
  ModeLine mode;
  LogLine log;
};

// Who holds a slot, in one word so it is published in one step: the pid in the low 22 bits
// (Linux's pid_max ceiling) and the process start time (clock ticks since boot, from
// /proc/<pid>/stat) above, which tells a reused pid from the original. 0 = free.
inline constexpr unsigned kPidBits = 22;
constexpr std::uint64_t slot_owner(std::uint64_t pid, std::uint64_t start_time) {
  return (start_time << kPidBits) | pid;
}
constexpr std::uint64_t owner_pid(std::uint64_t owner) { return owner & ((1ull << kPidBits) - 1); }
constexpr std::uint64_t owner_start_time(std::uint64_t owner) { return owner >> kPidBits; }

// One per attached producer, written by that producer only (its own line pair).
struct alignas(kNoShare) ProducerSlot {
  std::atomic<std::uint64_t> owner;
  // The claim being attempted or last made: written before each compare-and-swap, so a claim
  // that succeeded is always named here, even if the producer dies right after.
  std::atomic<std::uint64_t> pending_position;
  std::atomic<std::uint32_t> pending_frame_bytes;
  std::atomic<std::uint32_t> pending_records;
  std::atomic<std::uint64_t> back_pressure_events;
};

// One per attached consumer, written by that consumer only.
struct alignas(kNoShare) ConsumerSlot {
  std::atomic<std::uint64_t> owner;
  std::atomic<std::uint64_t> position;  // frames before it are no longer read; kNoClaim: none
  std::atomic<std::int64_t> next_offset;
  std::atomic<std::uint64_t> lapped_count;
};

inline constexpr std::uint64_t kNoClaim = ~0ull;

static_assert(sizeof(Descriptor) == kNoShare);
static_assert(offsetof(Descriptor, magic) == 0 && offsetof(Descriptor, version) == 8 &&
              offsetof(Descriptor, wake_protocol) == 12 && offsetof(Descriptor, capacity_bytes) == 16 &&
              offsetof(Descriptor, data_offset) == 24 && offsetof(Descriptor, max_frame_bytes) == 32 &&
              offsetof(Descriptor, producer_slots) == 36 && offsetof(Descriptor, consumer_slots) == 40 &&
              offsetof(Descriptor, initial_offset) == 48);
static_assert(offsetof(WakeLine, futex_sequence) == 0 && offsetof(WakeLine, parked) == 4 &&
              offsetof(WakeLine, wake_needed) == 8);
static_assert(offsetof(ModeLine, producers) == 0 && offsetof(ModeLine, leader_epoch) == 8);
static_assert(offsetof(ProducerSlot, owner) == 0 && offsetof(ProducerSlot, pending_frame_bytes) == 16);
static_assert(offsetof(ConsumerSlot, owner) == 0 && offsetof(ConsumerSlot, lapped_count) == 24);
static_assert(std::is_standard_layout_v<RingControl> && std::is_standard_layout_v<ProducerSlot> &&
              std::is_standard_layout_v<ConsumerSlot> && std::is_standard_layout_v<FrameHeader>);
static_assert(offsetof(RingControl, claim) == 128);
static_assert(offsetof(RingControl, reuse) == 256);
static_assert(offsetof(ReuseLine, flow_moves) == 64 && sizeof(ReuseLine) == kNoShare);
static_assert(offsetof(RingControl, wake) == 384);
static_assert(offsetof(RingControl, mode) == 512);
static_assert(offsetof(RingControl, log) == 640);
static_assert(offsetof(LogLine, written_offset) == 0 && offsetof(LogLine, durable_offset) == 8 &&
              offsetof(LogLine, futex_sequence) == 16 && offsetof(LogLine, waiters) == 20 && offsetof(LogLine, error) == 24 &&
              offsetof(LogLine, replicated_offset) == 32);
static_assert(sizeof(RingControl) == 768);
static_assert(sizeof(PositionPair) == 16 && offsetof(PositionPair, offset) == 8);
static_assert(sizeof(ProducerSlot) == kNoShare && sizeof(ConsumerSlot) == kNoShare);
static_assert(offsetof(ProducerSlot, pending_position) == 8 && offsetof(ProducerSlot, pending_records) == 20);
static_assert(offsetof(ProducerSlot, back_pressure_events) == 24);
static_assert(offsetof(ConsumerSlot, position) == 8 && offsetof(ConsumerSlot, next_offset) == 16);
static_assert(std::atomic<std::uint64_t>::is_always_lock_free && std::atomic<std::uint32_t>::is_always_lock_free &&
              std::atomic<std::int64_t>::is_always_lock_free && std::atomic<std::int32_t>::is_always_lock_free);
static_assert(sizeof(std::atomic<std::uint64_t>) == 8 && sizeof(std::atomic<std::uint32_t>) == 4);

}  // namespace weft::ring_layout
