#include "weft/fabric/ring.h"

#include <linux/futex.h>
#include <linux/membarrier.h>
#include <sched.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <cerrno>
#include <climits>
#include <cstdio>
#include <cstring>
#include <string>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace weft {

using namespace ring_layout;

namespace {

constexpr std::size_t kMinCapacity = 4096;
constexpr std::size_t kMinFrame = kFrameHeaderBytes + kBatchHeaderBytes + 8;
constexpr std::size_t kDefaultMaxFrameCeiling = std::size_t{1} << 30;
// A spinning reader that finds nothing right after a batch waits about kStreamingBackoffNs
// before it looks again, so a streaming producer writes whole lines instead of handing each
// line over; if it still finds nothing the stream is idle and it watches tightly, so a record
// that comes later than that is seen at once. weft-ring-bench, one-record batches: 9.8 M
// records/s waiting 150 ns, 12.8 M waiting 1.2 µs, p50 latency unchanged (docs/performance.md).
constexpr std::int64_t kStreamingBackoffNs = 1'200;
// While frames come faster than one every kFastStreamFrameNs the reader itself is what holds the
// writer back (each look takes a line the writer is filling), so the pause doubles, up to
// kStreamingBackoffNs << kMaxPauseShift (19 µs); a slower stream halves it back. One-record
// batches unpaced: 14–18 M records/s → 20–25 M; paced at 1 and 4 M/s the p50 stays ~0.8 µs.
constexpr std::int64_t kFastStreamFrameNs = 80;
constexpr std::uint32_t kMaxPauseShift = 4;
// A poll gives up (kEmpty) after skipping this many padding or aborted frames in a row, so a
// process rewriting frames ahead of a reader cannot keep it inside one call.
constexpr int kMaxSkipsPerPoll = 4096;
// Parked readers wake at least this often even if no producer wakes them.
constexpr std::int64_t kParkSliceNs = 100'000'000;
// Polls (each after a pause) a parking reader makes before it parks: a few microseconds.
constexpr std::uint32_t kPollsBeforePark = 512;
constexpr std::int64_t kUnsafeParkSliceNs = 1'000'000;
// How long a starting consumer waits for a flow-controlled owner's window to close.
constexpr std::int64_t kFlowMoveWaitNs = 1'000'000'000;

inline void cpu_relax() noexcept {
#if defined(__x86_64__)
  _mm_pause();
#else
  std::atomic_signal_fence(std::memory_order_seq_cst);
#endif
}

// The seqlock-style fences that pair a reader's frame reads with a producer's claim. TSan
// models no standalone fence (GCC refuses them under -fsanitize=thread); the paths TSan runs
// never race a reader with an overwrite, so there they compile to compiler barriers.
inline void frame_reads_done() noexcept {
#if defined(__SANITIZE_THREAD__)
  std::atomic_signal_fence(std::memory_order_acquire);
#else
  std::atomic_thread_fence(std::memory_order_acquire);
#endif
}
inline void claim_before_frame_writes() noexcept {
#if defined(__SANITIZE_THREAD__)
  std::atomic_signal_fence(std::memory_order_release);
#else
  std::atomic_thread_fence(std::memory_order_release);
#endif
}

// Pauses that take about kStreamingBackoffNs on this processor: a pause costs ~5 ns on some
// cores and ~40 ns on others, so the count is measured once rather than fixed.
std::uint32_t streaming_backoff_pauses() noexcept {
  static const std::uint32_t pauses = [] {
    constexpr int kProbe = 2048;
    const std::int64_t start = monotonic_ns();
    for (int i = 0; i < kProbe; ++i) cpu_relax();
    const std::int64_t elapsed = std::max<std::int64_t>(monotonic_ns() - start, 1);
    const std::int64_t count = kStreamingBackoffNs * kProbe / elapsed;
    return static_cast<std::uint32_t>(std::clamp<std::int64_t>(count, 8, 8192));
  }();
  return pauses;
}

// now + timeout, saturating instead of overflowing for "wait for ever".
std::int64_t deadline_after(std::int64_t timeout_ns) noexcept {
  const std::int64_t now = monotonic_ns();
  return timeout_ns > INT64_MAX - now ? INT64_MAX : now + timeout_ns;
}

constexpr std::uint64_t align_frame(std::uint64_t n) { return (n + kFrameAlign - 1) & ~(kFrameAlign - 1); }
constexpr bool is_power_of_two(std::uint64_t n) { return n != 0 && (n & (n - 1)) == 0; }

std::size_t data_offset_for(std::uint32_t producer_slots, std::uint32_t consumer_slots) {
  const std::size_t control = sizeof(RingControl) + (std::size_t{producer_slots} + consumer_slots) * kNoShare;
  return (control + kDataAlign - 1) / kDataAlign * kDataAlign;
}

inline FrameHeader* frame_at(std::byte* data, std::uint64_t mask, std::uint64_t position) noexcept {
  return reinterpret_cast<FrameHeader*>(data + (position & mask));
}

// Padding a claim of `frame` bytes at `position` needs so that the frame does not wrap.
inline std::uint64_t padding_for(std::uint64_t position, std::uint64_t frame, std::uint64_t capacity,
                                 std::uint64_t mask) noexcept {
  const std::uint64_t index = position & mask;
  return index + frame > capacity ? capacity - index : 0;
}

// ---- 16-byte words --------------------------------------------------------------------------

__extension__ typedef unsigned __int128 U128;

inline U128 pack(std::uint64_t position, std::int64_t offset) noexcept {
  return (U128{static_cast<std::uint64_t>(offset)} << 64) | position;
}

// Compare-and-swap of a PositionPair. __sync builtins inline `lock cmpxchg16b` (the __atomic
// ones call libatomic, whose lock fallback would not work across processes) and are a full
// barrier: what the caller wrote before is visible before the swap, what it writes after is
// not visible before it. On failure `position` and `offset` receive the current value.
inline bool pair_cas(PositionPair& pair, std::uint64_t& position, std::int64_t& offset, std::uint64_t new_position,
                     std::int64_t new_offset) noexcept {
  auto* word = reinterpret_cast<U128*>(&pair);
  const U128 expected = pack(position, offset);
  const U128 previous = __sync_val_compare_and_swap(word, expected, pack(new_position, new_offset));
  if (previous == expected) return true;
  position = static_cast<std::uint64_t>(previous);
  offset = static_cast<std::int64_t>(static_cast<std::uint64_t>(previous >> 64));
  return false;
}

// An atomic 16-byte read: a compare-and-swap that (almost always) fails returns the value; in
// the rare case it matches, it writes the same value back. For rarely taken paths only.
inline Ring::Mark pair_load(PositionPair& pair) noexcept {
  std::uint64_t position = 0;
  std::int64_t offset = 0;
  pair_cas(pair, position, offset, 0, 0);
  return Ring::Mark{Position{position}, Offset{offset}};
}

// The position half alone, for the hot paths. Acquire: pairs with the full barrier of the
// compare-and-swap that stored it.
inline std::uint64_t load_position(PositionPair& pair) noexcept {
  return std::atomic_ref<std::uint64_t>(pair.position).load(std::memory_order_acquire);
}

// ---- futex and membarrier -------------------------------------------------------------------

long futex(std::atomic<std::uint32_t>* word, int op, std::uint32_t value, const timespec* timeout) noexcept {
  // Shared (not FUTEX_PRIVATE): the word lives in memory mapped by several processes.
  return syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(word), op, value, timeout, nullptr, 0);
}

void wake_all(WakeLine& wake) noexcept {
  wake.futex_sequence.fetch_add(1, std::memory_order_release);  // a waiter about to sleep sees it changed
  futex(&wake.futex_sequence, FUTEX_WAKE, INT_MAX, nullptr);
}

// For rare events (a sealed claim, a retired ring): wakes every sleeper unconditionally rather
// than reason about the wake_needed flag.
void wake_every_reader(WakeLine& wake) noexcept {
  wake.wake_needed.store(0, std::memory_order_relaxed);  // the wake below covers whoever set it
  wake_all(wake);
}

bool membarrier_global_supported() noexcept {
#if defined(__SANITIZE_THREAD__)
  return false;  // TSan cannot see membarrier; use the fence protocol it understands
#else
  const long mask = syscall(SYS_membarrier, MEMBARRIER_CMD_QUERY, 0, 0);
  return mask > 0 && (mask & MEMBARRIER_CMD_GLOBAL_EXPEDITED) != 0;
#endif
}

bool register_membarrier() noexcept {
  static const bool registered = syscall(SYS_membarrier, MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED, 0, 0) == 0;
  return registered;
}

// ---- process identity -----------------------------------------------------------------------

enum class Liveness { kAlive, kDead, kUnknown };

// Reads the state letter and starttime (field 22) of /proc/<pid>/stat.
Liveness read_proc_stat(std::uint64_t pid, char& state, std::uint64_t& start_time) noexcept {
  char path[64];
  std::snprintf(path, sizeof path, "/proc/%llu/stat", static_cast<unsigned long long>(pid));
  FILE* f = std::fopen(path, "re");
  if (f == nullptr) return errno == ENOENT || errno == ESRCH ? Liveness::kDead : Liveness::kUnknown;
  char buf[1024];
  const std::size_t n = std::fread(buf, 1, sizeof buf - 1, f);
  std::fclose(f);
  buf[n] = '\0';
  const char* p = std::strrchr(buf, ')');  // the command name may hold spaces and ')'
  if (p == nullptr || p[1] == '\0') return Liveness::kUnknown;
  p += 2;
  state = *p;
  // Fields after the name start at 3 (state); starttime is field 22.
  for (int field = 3; field < 22; ++field) {
    p = std::strchr(p, ' ');
    if (p == nullptr) return Liveness::kUnknown;
    ++p;
  }
  start_time = std::strtoull(p, nullptr, 10);
  return Liveness::kAlive;
}

// This process's owner word, read once per process (a forked child reads its own).
std::uint64_t self_owner_cached() noexcept {
  // Relaxed: each a value computed the same way by any thread; a race computes it twice.
  static std::atomic<std::uint64_t> cached_pid{0};
  static std::atomic<std::uint64_t> cached_owner{0};
  const auto pid = static_cast<std::uint64_t>(getpid());
  if (cached_pid.load(std::memory_order_acquire) == pid) return cached_owner.load(std::memory_order_relaxed);
  const std::uint64_t owner = slot_owner(pid, process_start_time(pid));
  cached_owner.store(owner, std::memory_order_relaxed);
  cached_pid.store(pid, std::memory_order_release);  // pairs with the acquire above: owner first
  return owner;
}

// Only a certain death counts: a producer whose liveness cannot be read is treated as alive,
// since sealing a live producer's claim would lose a batch it was told was accepted.
Liveness liveness(std::uint64_t owner) noexcept {
  // This process's own slots (a node's log writer, every pass's reclaim): alive, without reading
  // /proc (1 000 partitions made that 1 000 file reads a second).
  if (owner_pid(owner) == static_cast<std::uint64_t>(getpid()) && owner == self_owner_cached()) return Liveness::kAlive;
  char state = 0;
  std::uint64_t start = 0;
  const Liveness read = read_proc_stat(owner_pid(owner), state, start);
  if (read != Liveness::kAlive) return read;
  if (state == 'Z' || state == 'X') return Liveness::kDead;  // killed, not yet reaped
  return start == owner_start_time(owner) ? Liveness::kAlive : Liveness::kDead;  // else the pid was reused
}

std::uint64_t self_owner() noexcept {
  const auto pid = static_cast<std::uint64_t>(getpid());
  return slot_owner(pid, process_start_time(pid));
}

// Takes a free slot for this process in one step (owner and start time together).
template <class Slot>
Slot* take_slot(Slot* slots, std::uint32_t count) noexcept {
  const std::uint64_t me = self_owner();
  for (std::uint32_t i = 0; i < count; ++i) {
    std::uint64_t expected = 0;
    // Acquires the slot after its previous owner's release when it let go. seq_cst: a consumer's
    // slot is part of its start's Dekker pair with the owner (wait_out_flow_controlled_move).
    if (slots[i].owner.compare_exchange_strong(expected, me, std::memory_order_seq_cst)) return &slots[i];
  }
  return nullptr;
}

// ---- frames ---------------------------------------------------------------------------------

enum class ReadKind { kNotReady, kCommitted, kAborted, kPadding, kCorrupt };

struct FrameRead {
  ReadKind kind = ReadKind::kNotReady;
  std::uint32_t frame_bytes = 0;
  std::uint32_t records = 0;
  const std::byte* batch = nullptr;  // committed only
  std::int32_t batch_length = 0;     // committed only
  Offset base_offset;                // committed only: as stamped in the batch
};

// Reads the frame at `position` if its state is tagged with that position. Other processes
// write these bytes, so every length is checked before it is used to address memory.
FrameRead read_frame_at(std::byte* data, std::uint64_t capacity, std::uint64_t position) noexcept {
  FrameRead r;
  const std::uint64_t index = position & (capacity - 1);
  FrameHeader* h = reinterpret_cast<FrameHeader*>(data + index);
  // A1 acquire: pairs with R1 (commit/abort), R3 (padding) and R4 (seal).
  const std::uint64_t state = h->state.load(std::memory_order_acquire);
  if (state == frame_state(position, kFramePadding)) {
    r.kind = ReadKind::kPadding;
    r.frame_bytes = static_cast<std::uint32_t>(capacity - index);
    return r;
  }
  const bool committed = state == frame_state(position, kFrameCommitted);
  if (!committed && state != frame_state(position, kFrameAborted)) return r;
  r.kind = ReadKind::kCorrupt;
  if (index + (committed ? kMinFrame : kFrameHeaderBytes) > capacity) return r;
  r.frame_bytes = h->frame_bytes;
  r.records = h->record_count;
  if (r.frame_bytes < kFrameHeaderBytes || r.frame_bytes % kFrameAlign != 0 || index + r.frame_bytes > capacity ||
      r.records == 0)
    return r;
  if (committed) {
    r.batch = reinterpret_cast<const std::byte*>(h + 1);
    r.batch_length = wire::load_be32(r.batch + batch_field::kBatchLength);
    r.base_offset = Offset{wire::load_be64(r.batch + batch_field::kBaseOffset)};
    if (r.batch_length < static_cast<std::int32_t>(kBatchHeaderBytes - kBatchLogOverhead) ||
        static_cast<std::uint64_t>(r.batch_length) + kBatchLogOverhead > r.frame_bytes - kFrameHeaderBytes)
      return r;
  }
  r.kind = committed ? ReadKind::kCommitted : ReadKind::kAborted;
  return r;
}

// True when producers may have overwritten the frame at `position` (the ring lapped it).
bool lapped_past(Ring ring, std::uint64_t position) noexcept {
  // Seqlock-style reader: the frame reads before this fence cannot drift past the checks after
  // it. Pairs with the full barrier of the claim (cmpxchg16b, or the release fence of an
  // exclusive claim): a reader that saw a byte of a newer lap sees the claim that wrote it.
  frame_reads_done();
  RingControl& c = ring.control();
  // Fast path: no claim can reach data at or after the reuse limit.
  if (load_position(c.reuse.limit) <= position) return false;
  return load_position(c.claim.tail) > position + ring.capacity_bytes();
}

// Walks readable frames from the reuse limit to the one holding `target` (or the first
// unreadable frame). Restarts from the new limit if the limit passes the walk.
Ring::Mark walk(Ring ring, Offset target) noexcept {
  Ring::Mark mark = ring.reuse_limit();
  std::uint64_t position = mark.position.value;
  Offset offset = mark.offset;
  const std::uint64_t capacity = ring.capacity_bytes();
  for (std::uint64_t steps = 0; steps < capacity / kFrameAlign + 1 && offset < target; ++steps) {
    const FrameRead f = read_frame_at(ring.data(), capacity, position);
    if (f.kind == ReadKind::kNotReady || f.kind == ReadKind::kCorrupt) break;
    if (lapped_past(ring, position)) {  // what was read may be from a newer lap: start again
      mark = ring.reuse_limit();
      position = mark.position.value;
      offset = mark.offset;
      continue;
    }
    if (f.kind == ReadKind::kCommitted && f.base_offset != offset) break;  // not the frame expected
    if (offset + f.records > target) break;  // this frame holds the target
    position += f.frame_bytes;
    offset += f.records;
  }
  return Ring::Mark{Position{position}, offset};
}

}  // namespace

// ---- process helpers ------------------------------------------------------------------------

std::int64_t monotonic_ns() noexcept {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<std::int64_t>(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
}

std::int64_t wall_clock_ms() noexcept {
  timespec ts{};
  clock_gettime(CLOCK_REALTIME, &ts);
  return static_cast<std::int64_t>(ts.tv_sec) * 1000 + ts.tv_nsec / 1'000'000;
}

std::uint64_t process_start_time(std::uint64_t pid) noexcept {
  char state = 0;
  std::uint64_t start = 0;
  return read_proc_stat(pid, state, start) == Liveness::kAlive ? start : 0;
}

bool process_alive(std::uint64_t pid, std::uint64_t start_time) noexcept {
  return liveness(slot_owner(pid, start_time)) != Liveness::kDead;
}

// ---- Ring -----------------------------------------------------------------------------------

std::size_t Ring::required_bytes(const RingConfig& config) noexcept {
  return data_offset_for(config.producer_slots, config.consumer_slots) + config.capacity_bytes;
}

Result<Ring> Ring::format(std::span<std::byte> memory, const RingConfig& config) {
  if (!is_power_of_two(config.capacity_bytes) || config.capacity_bytes < kMinCapacity ||
      config.capacity_bytes > (std::size_t{1} << 40))
    return Error{Errc::kInvalidArgument, "ring: capacity " + std::to_string(config.capacity_bytes) +
                                             " must be a power of two from 4 KiB to 1 TiB"};
  std::size_t max_frame = config.max_frame_bytes != 0
                              ? config.max_frame_bytes
                              : std::min(config.capacity_bytes / 4, kDefaultMaxFrameCeiling);
  max_frame &= ~(kFrameAlign - 1);
  if (max_frame < kMinFrame || max_frame > config.capacity_bytes / 2 || max_frame > UINT32_MAX)
    return Error{Errc::kInvalidArgument, "ring: max frame " + std::to_string(max_frame) + " must be between " +
                                             std::to_string(kMinFrame) + " and capacity / 2 (at most 4 GiB)"};
  if (config.producer_slots == 0 || config.producer_slots > kMaxProducerSlots || config.consumer_slots == 0 ||
      config.consumer_slots > kMaxConsumerSlots)
    return Error{Errc::kInvalidArgument, "ring: producer slots must be 1..63 and consumer slots 1..4096"};
  if (config.initial_offset < Offset{0})
    return Error{Errc::kInvalidArgument, "ring: the initial offset cannot be negative"};
  const std::size_t data_offset = data_offset_for(config.producer_slots, config.consumer_slots);
  if (memory.size() < data_offset + config.capacity_bytes)
    return Error{Errc::kInvalidArgument, "ring: needs " + std::to_string(data_offset + config.capacity_bytes) +
                                             " bytes, given " + std::to_string(memory.size())};
  if (reinterpret_cast<std::uintptr_t>(memory.data()) % kDataAlign != 0)
    return Error{Errc::kInvalidArgument, "ring: memory must be 4 KiB aligned"};

  // Zero everything: a frame left by an earlier ring in this memory could carry the very
  // position tags the new ring will expect.
  std::memset(memory.data(), 0, data_offset + config.capacity_bytes);
  auto* control = reinterpret_cast<RingControl*>(memory.data());
  Descriptor& d = control->descriptor;
  d.version = kRingVersion;
  d.wake_protocol = membarrier_global_supported() ? kWakeMembarrier : kWakeFence;
  d.capacity_bytes = config.capacity_bytes;
  d.data_offset = data_offset;
  d.max_frame_bytes = static_cast<std::uint32_t>(max_frame);
  d.producer_slots = config.producer_slots;
  d.consumer_slots = config.consumer_slots;
  d.initial_offset = config.initial_offset.value;
  control->claim.tail = PositionPair{0, static_cast<std::uint64_t>(config.initial_offset.value)};
  control->reuse.limit = PositionPair{0, static_cast<std::uint64_t>(config.initial_offset.value)};
  control->log.written_offset.store(kNoLog, std::memory_order_relaxed);
  control->log.durable_offset.store(kNoLog, std::memory_order_relaxed);
  control->log.replicated_offset.store(kNoLog, std::memory_order_relaxed);
  control->mode.leader_epoch.store(kNotReplicated, std::memory_order_relaxed);
  auto* producers = reinterpret_cast<ProducerSlot*>(memory.data() + sizeof(RingControl));
  for (std::uint32_t i = 0; i < config.producer_slots; ++i)
    producers[i].pending_position.store(kNoClaim, std::memory_order_relaxed);
  auto* consumers = reinterpret_cast<ConsumerSlot*>(producers + config.producer_slots);
  for (std::uint32_t i = 0; i < config.consumer_slots; ++i)
    consumers[i].position.store(kNoClaim, std::memory_order_relaxed);
  // Release: a process that sees the magic sees the whole layout.
  std::atomic_ref<std::uint64_t>(d.magic).store(kRingMagic, std::memory_order_release);
  return attach(memory);
}

Result<Ring> Ring::attach(std::span<std::byte> memory) {
  if (memory.size() < sizeof(RingControl) + kNoShare * 2)
    return Error{Errc::kInvalidArgument, "ring: memory of " + std::to_string(memory.size()) + " bytes is too small"};
  auto* control = reinterpret_cast<RingControl*>(memory.data());
  // Acquire: pairs with the release of the magic in format().
  if (std::atomic_ref<const std::uint64_t>(control->descriptor.magic).load(std::memory_order_acquire) != kRingMagic)
    return Error{Errc::kCorrupt, "ring: bad magic, this memory holds no weft ring"};
  // One copy, checked and then cached: another process may rewrite the shared one meanwhile.
  Descriptor d;
  std::memcpy(static_cast<void*>(&d), &control->descriptor, sizeof d);
  if (d.version != kRingVersion)
    return Error{Errc::kFailedPrecondition,
                 "ring: layout version " + std::to_string(d.version) + ", this build reads " + std::to_string(kRingVersion)};
  if (!is_power_of_two(d.capacity_bytes) || d.capacity_bytes < kMinCapacity || d.producer_slots == 0 ||
      d.consumer_slots == 0 || d.producer_slots > kMaxProducerSlots || d.consumer_slots > kMaxConsumerSlots ||
      d.data_offset != data_offset_for(d.producer_slots, d.consumer_slots) || d.max_frame_bytes < kMinFrame ||
      d.max_frame_bytes > d.capacity_bytes / 2 || d.max_frame_bytes % kFrameAlign != 0 ||
      (d.wake_protocol != kWakeFence && d.wake_protocol != kWakeMembarrier))
    return Error{Errc::kCorrupt, "ring: descriptor fields are inconsistent"};
  if (memory.size() < d.data_offset + d.capacity_bytes)
    return Error{Errc::kCorrupt, "ring: capacity runs past the memory given"};
  Ring ring;
  ring.control_ = control;
  ring.data_ = memory.data() + d.data_offset;
  ring.capacity_ = d.capacity_bytes;
  ring.mask_ = d.capacity_bytes - 1;
  ring.max_frame_bytes_ = d.max_frame_bytes;
  ring.producer_slot_count_ = d.producer_slots;
  ring.consumer_slot_count_ = d.consumer_slots;
  ring.membarrier_wake_ = d.wake_protocol == kWakeMembarrier;
  return ring;
}

std::size_t Ring::max_batch_bytes() const noexcept { return max_frame_bytes_ - kFrameHeaderBytes; }

ProducerSlot* Ring::producer_slots() const noexcept {
  return reinterpret_cast<ProducerSlot*>(reinterpret_cast<std::byte*>(control_) + sizeof(RingControl));
}

ConsumerSlot* Ring::consumer_slots() const noexcept {
  return reinterpret_cast<ConsumerSlot*>(producer_slots() + producer_slot_count_);
}

Position Ring::tail_position() const noexcept { return Position{load_position(control_->claim.tail)}; }

Ring::Mark Ring::reuse_limit() const noexcept { return pair_load(control_->reuse.limit); }

Offset Ring::claimed_offset() const noexcept {
  // Relaxed: a snapshot of one half of the claim word; nothing is read through it.
  return Offset{static_cast<std::int64_t>(std::atomic_ref<std::uint64_t>(control_->claim.tail.offset).load(std::memory_order_relaxed))};
}

// ---- Producer -------------------------------------------------------------------------------

Result<Producer> Producer::attach(Ring ring, ProducerMode mode) {
  // Acquire: pairs with set_leader_epoch; a producer admitted here claims under this epoch.
  const std::int32_t epoch = ring.control().mode.leader_epoch.load(std::memory_order_acquire);
  if (epoch == kFollowing)
    return Error{Errc::kFailedPrecondition, "ring: this node follows the partition's leader; produce to the leader"};
  if (epoch == kRetired) return Error{Errc::kFailedPrecondition, "ring: the node replaced this ring; open the partition again"};
  return attach_as(ring, mode, epoch);
}

Result<Producer> Producer::attach_follower(Ring ring) {
  const std::int32_t epoch = ring.control().mode.leader_epoch.load(std::memory_order_acquire);  // as in attach
  if (epoch != kFollowing) return Error{Errc::kFailedPrecondition, "ring: the node does not follow this partition"};
  Result<Producer> exclusive = attach_as(ring, ProducerMode::kExclusive, epoch);
  if (exclusive.ok()) return exclusive;
  return attach_as(ring, ProducerMode::kShared, epoch);
}

Result<Producer> Producer::attach_as(Ring ring, ProducerMode mode, std::int32_t epoch) {
  RingControl& c = ring.control();
  ProducerSlot* slot = take_slot(ring.producer_slots(), ring.producer_slot_count());
  if (slot == nullptr)
    return Error{Errc::kResourceExhausted,
                 "ring: all " + std::to_string(ring.producer_slot_count()) + " producer slots are taken"};
  // Relaxed: the owner reads these only for a dead slot, and only after our first claim's
  // full barrier has published them.
  slot->pending_position.store(kNoClaim, std::memory_order_relaxed);
  const std::uint64_t bit = 1ull << (slot - ring.producer_slots());
  std::atomic<std::uint64_t>& producers = c.mode.producers;
  std::uint64_t seen = producers.load(std::memory_order_relaxed);
  bool admitted = false;
  if (mode == ProducerMode::kExclusive) {
    seen = 0;
    // acq_rel: sees every earlier producer's detach, and publishes this one's arrival.
    admitted = producers.compare_exchange_strong(seen, kExclusiveProducer | bit, std::memory_order_acq_rel);
  } else {
    while ((seen & kExclusiveProducer) == 0 &&
           !producers.compare_exchange_weak(seen, seen | bit, std::memory_order_acq_rel)) {
    }
    admitted = (seen & kExclusiveProducer) == 0;
  }
  if (!admitted) {
    slot->owner.store(0, std::memory_order_release);
    return Error{Errc::kFailedPrecondition,
                 (seen & kExclusiveProducer) != 0
                     ? std::string("ring: an exclusive producer holds the ring (a single-writer producer, or, in a cluster, this "
                                   "node follows the partition's leader: produce to the leader)")
                     : "ring: cannot hold the ring exclusively while " +
                           std::to_string(std::popcount(seen)) + " other producer(s) are attached"};
  }
  const bool membarrier_protocol = ring.membarrier_wake_;
  return Producer(ring, mode, slot, membarrier_protocol && register_membarrier(), epoch);
}

void prepare_producers() noexcept {
  if (membarrier_global_supported()) (void)register_membarrier();
}

Producer::Producer(Ring ring, ProducerMode mode, ProducerSlot* slot, bool membarrier_registered, std::int32_t epoch) noexcept
    : ring_(ring), mode_(mode), slot_(slot), fence_before_wake_check_(!membarrier_registered), epoch_(epoch) {
  const Ring::Mark tail = pair_load(ring_.control_->claim.tail);
  guess_position_ = tail.position.value;
  guess_offset_ = tail.offset.value;
  cached_reuse_limit_ = load_position(ring_.control_->reuse.limit);
}

Producer::Producer(Producer&& other) noexcept
    : ring_(other.ring_),
      mode_(other.mode_),
      slot_(std::exchange(other.slot_, nullptr)),
      cached_reuse_limit_(other.cached_reuse_limit_),
      guess_position_(other.guess_position_),
      guess_offset_(other.guess_offset_),
      fence_before_wake_check_(other.fence_before_wake_check_),
      claim_open_(other.claim_open_),
      epoch_(other.epoch_),
      open_claim_(other.open_claim_) {}

Producer::~Producer() {
  if (slot_ == nullptr) return;
  if (claim_open_) abort(open_claim_);  // never leave readers waiting on a claim nobody owns
  slot_->pending_position.store(kNoClaim, std::memory_order_relaxed);
  const std::uint64_t bit = 1ull << (slot_ - ring_.producer_slots());
  // Clearing our own bits is idempotent, so the owner repeating it for a half-detached dead
  // producer changes nothing. acq_rel: orders our claims before the detach.
  ring_.control_->mode.producers.fetch_and(~(bit | (mode_ == ProducerMode::kExclusive ? kExclusiveProducer : 0)),
                                           std::memory_order_acq_rel);
  // Release: the next owner of the slot sees this producer's last writes to it.
  slot_->owner.store(0, std::memory_order_release);
}

ClaimStatus Producer::try_claim(std::size_t batch_bytes, std::uint32_t records, Claim& claim) noexcept {
  if (records == 0 || batch_bytes < kBatchHeaderBytes || claim_open_) return ClaimStatus::kInvalid;
  // Relaxed: a claim racing the fence lands in a ring whose node follows now; the follower cuts
  // it off at its leader's epoch boundary, and acks=all waits re-check the epoch, so none is
  // acknowledged.
  if (ring_.control_->mode.leader_epoch.load(std::memory_order_relaxed) != epoch_) [[unlikely]]
    return ClaimStatus::kFenced;
  const std::uint32_t max_frame = ring_.max_frame_bytes_;
  if (batch_bytes > max_frame) return ClaimStatus::kTooLarge;
  const std::uint64_t frame = align_frame(kFrameHeaderBytes + batch_bytes);
  if (frame > max_frame) return ClaimStatus::kTooLarge;
  const std::uint64_t capacity = ring_.capacity_;
  PositionPair& tail = ring_.control_->claim.tail;
  std::uint64_t position = guess_position_;
  std::int64_t offset = guess_offset_;
  std::uint64_t padding = 0;
  std::uint64_t end = 0;
  for (;;) {
    padding = padding_for(position, frame, capacity, ring_.mask_);
    end = position + padding + frame;
    if (end > cached_reuse_limit_ + capacity) [[unlikely]] {
      // A2 acquire (in load_position): pairs with R2 in advance_reuse_limit; whatever freed
      // the space (the log writer) is done with it.
      cached_reuse_limit_ = load_position(ring_.control_->reuse.limit);
      if (end > cached_reuse_limit_ + capacity) {
        // Relaxed: a statistic this producer alone writes.
        slot_->back_pressure_events.store(slot_->back_pressure_events.load(std::memory_order_relaxed) + 1,
                                          std::memory_order_relaxed);
        return ClaimStatus::kBackPressured;
      }
    }
    // Relaxed: made visible by the full barrier of the claim below, before the claim itself.
    slot_->pending_position.store(position, std::memory_order_relaxed);
    slot_->pending_frame_bytes.store(static_cast<std::uint32_t>(frame), std::memory_order_relaxed);
    slot_->pending_records.store(records, std::memory_order_relaxed);
    if (mode_ == ProducerMode::kExclusive) {
      // The only writer of the claim word: plain stores, offset first (only the owner reads
      // it), then the position with release, then a release fence so that a reader that sees
      // any frame byte written below also sees the new tail (seqlock writer).
      std::atomic_ref<std::uint64_t>(tail.offset)
          .store(static_cast<std::uint64_t>(offset) + records, std::memory_order_relaxed);
      std::atomic_ref<std::uint64_t>(tail.position).store(end, std::memory_order_release);
      claim_before_frame_writes();
      break;
    }
    if (pair_cas(tail, position, offset, end, offset + records)) break;
    // Lost the race: `position` and `offset` now hold the current tail; try again from there.
  }
  guess_position_ = end;
  guess_offset_ = offset + records;

  if (padding != 0) {
    // R3 release: the padding is readable at once; pairs with A1 in read_frame_at.
    frame_at(ring_.data_, ring_.mask_, position)->state.store(frame_state(position, kFramePadding),
                                                              std::memory_order_release);
  }
  const std::uint64_t frame_position = position + padding;
  FrameHeader* header = frame_at(ring_.data_, ring_.mask_, frame_position);
  header->frame_bytes = static_cast<std::uint32_t>(frame);
  header->record_count = records;
  // Relaxed: "claimed" is read only by the owner, to learn the frame of a dead producer.
  header->state.store(frame_state(frame_position, kFrameClaimed), std::memory_order_relaxed);
  // Both copies from one value: copying `claim` after writing its fields one by one read them
  // back before those stores reached the cache (half of this function's time in the ring benchmark).
  const Claim made{std::span<std::byte>(reinterpret_cast<std::byte*>(header + 1), batch_bytes), Offset{offset}, Position{frame_position},
                   records};
  claim = made;
  open_claim_ = made;
  claim_open_ = true;
  return ClaimStatus::kOk;
}

CommitStatus Producer::commit(Claim& claim, std::size_t used_bytes) noexcept {
  if (!claim_open_ || claim.position != open_claim_.position) return CommitStatus::kNotOpen;
  const std::byte* b = claim.batch.data();
  const auto records = static_cast<std::int32_t>(claim.records);
  // The header must agree with the claim, or readers would walk off the frame or the offsets.
  const bool consistent =
      used_bytes >= kBatchHeaderBytes && used_bytes <= open_claim_.batch.size() &&
      wire::load_be32(b + batch_field::kBatchLength) == static_cast<std::int32_t>(used_bytes - kBatchLogOverhead) &&
      static_cast<std::int8_t>(b[batch_field::kMagic]) == kBatchMagicV2 &&
      wire::load_be32(b + batch_field::kRecordCount) == records &&
      wire::load_be32(b + batch_field::kLastOffsetDelta) == records - 1 && claim.records == open_claim_.records;
  if (!consistent) [[unlikely]] {
    abort(claim);
    return CommitStatus::kMalformed;
  }
  stamp_base_offset(open_claim_.batch, open_claim_.base_offset);
  // On a replicated partition's leader the batch carries the epoch this producer attached under
  // (Kafka's broker overwrites the client's value the same way): a claim is fenced once the epoch
  // moves, so that is the epoch it was written at. A client's own value (librdkafka sends 0) would
  // otherwise reach followers' epoch histories as an epoch nobody led, and a later divergence check
  // would cut acknowledged records. Single nodes and a follower's writer keep what was written.
  // Outside the CRC, so the batch stays valid.
  if (epoch_ >= 0) wire::store_be32(open_claim_.batch.data() + batch_field::kPartitionLeaderEpoch, epoch_);
  claim_open_ = false;
  FrameHeader* header = frame_at(ring_.data_, ring_.mask_, open_claim_.position.value);
  // R1 release: publishes the batch; pairs with A1 in read_frame_at.
  header->state.store(frame_state(open_claim_.position.value, kFrameCommitted), std::memory_order_release);
  wake_parked_readers();
  return CommitStatus::kOk;
}

void Producer::abort(Claim& claim) noexcept {
  if (!claim_open_ || claim.position != open_claim_.position) return;
  claim_open_ = false;
  FrameHeader* header = frame_at(ring_.data_, ring_.mask_, open_claim_.position.value);
  // R1 release (abort): readers skip the record_count offsets written at claim time.
  header->state.store(frame_state(open_claim_.position.value, kFrameAborted), std::memory_order_release);
  wake_parked_readers();
}

void Producer::wake_parked_readers() noexcept {
  WakeLine& wake = ring_.control_->wake;
  std::uint32_t needed = 0;
  if (fence_before_wake_check_) {
    // seq_cst read-modify-write: either it reads a parker's flag, or the parker's exchange reads
    // from it and the parker's re-check then sees this commit (Dekker, without a fence).
    needed = wake.wake_needed.fetch_add(0, std::memory_order_seq_cst);
  } else {
    // Compiler barrier only: a parking reader's membarrier(GLOBAL_EXPEDITED) runs the hardware
    // barrier on this core for us, so the hot path pays nothing.
    std::atomic_signal_fence(std::memory_order_seq_cst);
    needed = wake.wake_needed.load(std::memory_order_relaxed);
  }
  // Only the first commit after readers park wakes them: the exchange lets one producer through.
  // acq_rel: orders this commit before the sequence bump the sleepers re-read.
  if (needed != 0 && wake.wake_needed.exchange(0, std::memory_order_acq_rel) != 0) [[unlikely]]
    wake_all(wake);
}

ClaimStatus Producer::offer(std::span<const std::byte> batch, Offset* base) noexcept {
  if (batch.size() < kBatchHeaderBytes) return ClaimStatus::kInvalid;
  const std::int32_t records = wire::load_be32(batch.data() + batch_field::kRecordCount);
  if (records <= 0) return ClaimStatus::kInvalid;
  Claim claim;
  const ClaimStatus status = try_claim(batch.size(), static_cast<std::uint32_t>(records), claim);
  if (status != ClaimStatus::kOk) return status;
  std::memcpy(claim.batch.data(), batch.data(), batch.size());
  if (commit(claim) != CommitStatus::kOk) return ClaimStatus::kInvalid;
  if (base != nullptr) *base = claim.base_offset;
  return ClaimStatus::kOk;
}

ClaimStatus Producer::offer_record(const RecordInput& record, Offset* base) noexcept {
  Claim claim;
  const ClaimStatus status = try_claim(single_record_batch_bytes(record), 1, claim);
  if (status != ClaimStatus::kOk) return status;
  // Sized exactly for this record above, so the encoding fits.
  (void)commit(claim, encode_single_record_batch(claim.batch, record).size());
  if (base != nullptr) *base = claim.base_offset;
  return ClaimStatus::kOk;
}

std::uint64_t Producer::back_pressure_events() const noexcept {
  return slot_->back_pressure_events.load(std::memory_order_relaxed);
}

// ---- Consumer -------------------------------------------------------------------------------

Result<Consumer> Consumer::attach(Ring ring, StartAt start) {
  ConsumerSlot* slot = take_slot(ring.consumer_slots(), ring.consumer_slot_count());
  if (slot == nullptr)
    return Error{Errc::kResourceExhausted,
                 "ring: all " + std::to_string(ring.consumer_slot_count()) + " consumer slots are taken"};
  Consumer consumer(ring, slot);
  consumer.wait_out_flow_controlled_move();
  const Ring::Mark mark = start == StartAt::kLatest ? walk(ring, Offset{INT64_MAX}) : ring.reuse_limit();
  consumer.position_ = mark.position.value;
  consumer.next_offset_ = mark.offset;
  consumer.publish_position(consumer.position_);
  return consumer;
}

Consumer::Consumer(Ring ring, ConsumerSlot* slot) noexcept : ring_(ring), slot_(slot) {}

Consumer::Consumer(Consumer&& other) noexcept
    : ring_(other.ring_),
      slot_(std::exchange(other.slot_, nullptr)),
      position_(other.position_),
      next_offset_(other.next_offset_),
      lapped_offset_(other.lapped_offset_),
      skip_below_(other.skip_below_),
      aborted_skipped_(other.aborted_skipped_),
      frames_read_(other.frames_read_),
      frames_at_pause_(other.frames_at_pause_),
      last_pause_ns_(other.last_pause_ns_),
      pause_shift_(other.pause_shift_),
      data_since_pause_(other.data_since_pause_),
      hold_(other.hold_),
      lapped_(other.lapped_),
      caught_up_(other.caught_up_) {}

Consumer::~Consumer() {
  if (slot_ == nullptr) return;
  slot_->position.store(kNoClaim, std::memory_order_relaxed);  // holds nothing back any more
  slot_->owner.store(0, std::memory_order_release);            // frees the slot
}

void Consumer::publish_position(std::uint64_t in_use_from) noexcept {
  // Relaxed: a statistic; this consumer alone writes its slot.
  slot_->next_offset.store(next_offset_.value, std::memory_order_relaxed);
  // R5 release: this consumer is done with every frame before `in_use_from` (the batch it
  // hands out now is still being read); pairs with A5 in RingOwner::slowest_consumer.
  slot_->position.store(std::min(in_use_from, hold_), std::memory_order_release);
}

void Consumer::wait_out_flow_controlled_move() noexcept {
  // Says "starting" first: a flow-controlled owner that sees it holds the limit where it is.
  // seq_cst, as the load after it: this consumer's half of the Dekker pair with
  // FlowControlledMove (all four accesses in one total order): either the owner's look at the
  // slots sees "starting", or the load below sees its window open.
  slot_->position.store(kNoClaim, std::memory_order_seq_cst);
  const std::atomic<std::uint64_t>& moves = ring_.control().reuse.flow_moves;
  // A6 (seq_cst, so acquire too): pairs with R6; once the window reads closed, the limit read
  // next is at least the one the owner set inside it.
  if ((moves.load(std::memory_order_seq_cst) & 1) == 0) return;
  // Windows last microseconds. Bounded all the same: an owner that died inside one never
  // closes it, and then nothing moves the limit either.
  const std::int64_t give_up_at = monotonic_ns() + kFlowMoveWaitNs;
  while ((moves.load(std::memory_order_acquire) & 1) != 0 && monotonic_ns() < give_up_at) sched_yield();
}

bool Consumer::overwritten(std::uint64_t position) const noexcept { return lapped_past(ring_, position); }

bool Consumer::validate(const RingBatch& batch) const noexcept { return !overwritten(batch.position.value); }

PollStatus Consumer::mark_lapped() noexcept {
  lapped_ = true;
  lapped_offset_ = next_offset_;
  // Relaxed: a statistic this consumer alone writes.
  slot_->lapped_count.store(slot_->lapped_count.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
  return PollStatus::kLapped;
}

PollStatus Consumer::poll(RingBatch& out) noexcept {
  if (lapped_) return PollStatus::kLapped;
  return read_frame(out);
}

PollStatus Consumer::read_frame(RingBatch& out) noexcept {
  const std::uint64_t started_at = position_;
  for (int skips = 0; skips < kMaxSkipsPerPoll; ++skips) {
    const std::uint64_t position = position_;
    const FrameRead f = read_frame_at(ring_.data_, ring_.capacity_, position);
    if (f.kind == ReadKind::kNotReady) {
      if (overwritten(position)) return mark_lapped();
      // Skipped padding or aborted frames: say so, or flow control would wait on them forever.
      if (position != started_at) publish_position(position);
      return PollStatus::kEmpty;
    }
    // What was just read may be torn if producers lapped this reader meanwhile.
    if (overwritten(position)) [[unlikely]]
      return mark_lapped();
    if (f.kind == ReadKind::kCorrupt) [[unlikely]]
      return PollStatus::kCorrupt;
    if (f.kind == ReadKind::kPadding) {
      position_ = position + f.frame_bytes;
      continue;
    }
    if (f.kind == ReadKind::kCommitted && f.base_offset != next_offset_) [[unlikely]]
      return PollStatus::kCorrupt;  // a stale or forged frame: never deliver it as this offset
    position_ = position + f.frame_bytes;
    const Offset base = next_offset_;
    next_offset_ += f.records;
    if (f.kind == ReadKind::kAborted) {
      aborted_skipped_ += f.records;
      continue;
    }
    if (next_offset_ <= skip_below_) continue;  // wholly before a seek target
    out.base_offset = base;
    out.records = f.records;
    out.bytes = std::span<const std::byte>(f.batch, static_cast<std::size_t>(f.batch_length) + kBatchLogOverhead);
    out.position = Position{position};
    publish_position(position);
    ++frames_read_;
    return PollStatus::kOk;
  }
  if (position_ != started_at) publish_position(position_);
  return PollStatus::kEmpty;
}

void Consumer::pause_after_data() noexcept {
  // The stream's pace since the last pause (frames over the time since): faster than one frame
  // every kFastStreamFrameNs doubles the pause, slower halves it.
  const std::int64_t now = monotonic_ns();
  const auto frames = static_cast<std::int64_t>(frames_read_ - frames_at_pause_);
  frames_at_pause_ = frames_read_;
  data_since_pause_ = false;
  if (frames * kFastStreamFrameNs >= now - last_pause_ns_) {
    if (pause_shift_ < kMaxPauseShift) ++pause_shift_;
  } else if (pause_shift_ > 0) {
    --pause_shift_;
  }
  last_pause_ns_ = now;
  for (std::uint32_t i = streaming_backoff_pauses() << pause_shift_; i > 0; --i) cpu_relax();
}

PollStatus Consumer::wait(RingBatch& out, WaitKind kind, std::int64_t timeout_ns) noexcept {
  bool paused = false;
  if (caught_up_) {
    caught_up_ = false;
    pause_after_data();
    paused = true;
  }
  PollStatus status = poll(out);
  if (status != PollStatus::kEmpty) {
    data_since_pause_ = true;
    return status;
  }
  // Nothing even after a pause: the stream stopped or slowed, and the next record must be seen
  // as soon as it comes.
  if (paused) pause_shift_ = 0;
  if (kind == WaitKind::kPark) {
    // Spin a few microseconds first: a reader of a busy stream then never parks, so neither it
    // (membarrier) nor the producers (futex wake after each commit) pay for parking.
    for (std::uint32_t looks = 0; looks < kPollsBeforePark; ++looks) {
      cpu_relax();
      status = poll(out);
      if (status != PollStatus::kEmpty) {
        data_since_pause_ = true;
        return status;
      }
    }
    return park(out, deadline_after(timeout_ns));
  }
  // The clock is read every 64 looks only (the timeout counts from the first of those reads):
  // a streaming reader finds data long before that.
  std::int64_t deadline = 0;
  for (std::uint32_t looks = 1;; ++looks) {
    paused = false;
    if (kind == WaitKind::kYield) {
      sched_yield();
    } else if (data_since_pause_) {
      pause_after_data();
      paused = true;
    } else {
      cpu_relax();
    }
    status = poll(out);
    if (status != PollStatus::kEmpty) {
      data_since_pause_ = true;
      return status;
    }
    if (paused) pause_shift_ = 0;
    if (looks % 64 == 0) {
      if (deadline == 0) deadline = deadline_after(timeout_ns);
      // A retired ring takes nothing more: back to the caller, who reads on in its successor.
      if (monotonic_ns() >= deadline || leader_epoch(ring_) == kRetired) return PollStatus::kEmpty;
    }
  }
}

PollStatus Consumer::park(RingBatch& out, std::int64_t deadline_ns) noexcept {
  WakeLine& wake = ring_.control_->wake;
  const bool membarrier_protocol = ring_.membarrier_wake_;
  for (;;) {
    wake.parked.fetch_add(1, std::memory_order_relaxed);  // a statistic
    // Acquire, and before the flag is set: a producer that clears the flag bumps the sequence
    // after this read, so the futex_wait below returns at once and the flag is set again. (Read
    // after the flag, a clear-and-bump could fall between the two, and a later commit would
    // find the flag clear and leave this reader asleep.)
    const std::uint32_t sequence = wake.futex_sequence.load(std::memory_order_acquire);
    // seq_cst: the reader's half of the Dekker pair with wake_parked_readers (see there).
    wake.wake_needed.exchange(1, std::memory_order_seq_cst);
    std::int64_t slice = kParkSliceNs;
    if (membarrier_protocol) {
      // Makes every registered producer's commit visible before the re-check, and our
      // wake_needed flag visible to every later check of theirs (the heavy half of an
      // asymmetric fence).
      if (syscall(SYS_membarrier, MEMBARRIER_CMD_GLOBAL_EXPEDITED, 0, 0) != 0) slice = kUnsafeParkSliceNs;
    }  // else: the seq_cst exchange above pairs with the producers' read-modify-write
    PollStatus status = poll(out);
    const std::int64_t now = monotonic_ns();
    if (status != PollStatus::kEmpty || now >= deadline_ns || leader_epoch(ring_) == kRetired) {
      wake.parked.fetch_sub(1, std::memory_order_relaxed);
      return status;
    }
    const std::int64_t wait_ns = std::min(deadline_ns - now, slice);
    timespec timeout{static_cast<time_t>(wait_ns / 1'000'000'000), static_cast<long>(wait_ns % 1'000'000'000)};
    futex(&wake.futex_sequence, FUTEX_WAIT, sequence, &timeout);
    wake.parked.fetch_sub(1, std::memory_order_relaxed);
    status = poll(out);
    // A retired ring takes nothing more: back to the caller, who reads on in its successor.
    if (status != PollStatus::kEmpty || monotonic_ns() >= deadline_ns || leader_epoch(ring_) == kRetired) return status;
  }
}

Offset Consumer::rejoin() noexcept {
  hold_ = ~0ull;
  wait_out_flow_controlled_move();
  const Ring::Mark mark = ring_.reuse_limit();
  position_ = mark.position.value;
  next_offset_ = mark.offset;
  skip_below_ = Offset{-1};
  lapped_ = false;
  publish_position(position_);
  return mark.offset;
}

Result<void> Consumer::seek(Offset offset) {
  // Relaxed: this consumer alone writes its slot.
  const std::uint64_t published = slot_->position.load(std::memory_order_relaxed);
  wait_out_flow_controlled_move();
  const Ring::Mark limit = ring_.reuse_limit();
  if (offset < limit.offset) {
    // Stays where it was. Release: as R5 (what it held is held again; no pass moved past it
    // meanwhile, since every pass that looked saw it starting or there).
    slot_->position.store(published, std::memory_order_release);
    return Error{Errc::kOutOfRange, "ring: offset " + std::to_string(offset.value) +
                                        " is no longer in the ring; the earliest is " + std::to_string(limit.offset.value)};
  }
  const Ring::Mark mark = walk(ring_, offset);
  hold_ = ~0ull;
  position_ = mark.position.value;
  next_offset_ = mark.offset;
  skip_below_ = offset;
  lapped_ = false;
  publish_position(position_);
  return ok();
}

// ---- RingOwner ------------------------------------------------------------------------------

RingOwner::RingOwner(Ring ring) noexcept : ring_(ring) {
  const Ring::Mark mark = ring_.reuse_limit();
  frontier_position_ = mark.position.value;
  frontier_offset_ = mark.offset;
}

Ring::Mark RingOwner::scan() noexcept {
  // The frontier never stays behind the reuse limit (whoever moved the limit read that far),
  // so nothing it walks can have been overwritten.
  if (load_position(ring_.control_->reuse.limit) > frontier_position_) {
    const Ring::Mark limit = ring_.reuse_limit();
    frontier_position_ = limit.position.value;
    frontier_offset_ = limit.offset;
  }
  const std::uint64_t capacity = ring_.capacity_;
  const std::uint64_t tail = ring_.tail_position().value;
  for (std::uint64_t steps = 0; steps < capacity / kFrameAlign + 1 && frontier_position_ < tail; ++steps) {
    const FrameRead f = read_frame_at(ring_.data_, capacity, frontier_position_);
    if (f.kind == ReadKind::kNotReady || f.kind == ReadKind::kCorrupt) break;
    if (f.kind == ReadKind::kCommitted && f.base_offset != frontier_offset_) break;
    if (frontier_position_ + f.frame_bytes > tail) break;  // a forged length: never pass the tail
    frontier_position_ += f.frame_bytes;
    frontier_offset_ += f.records;
  }
  return Ring::Mark{Position{frontier_position_}, frontier_offset_};
}

bool RingOwner::advance_reuse_limit(Ring::Mark mark) noexcept {
  PositionPair& limit = ring_.control_->reuse.limit;
  std::uint64_t position = load_position(limit);
  std::int64_t offset = static_cast<std::int64_t>(std::atomic_ref<std::uint64_t>(limit.offset).load(std::memory_order_relaxed));
  // Never backwards, never past what producers have claimed (the claim word is shared memory,
  // so this is checked, not assumed).
  if (mark.position.value < position || mark.position > ring_.tail_position()) return false;
  // R2: the full barrier of the swap orders whatever this process read before (as a log
  // writer, the frames it persisted) before producers may overwrite; pairs with A2 in try_claim.
  while (!pair_cas(limit, position, offset, mark.position.value, mark.offset.value)) {
  }
  return true;
}

Ring::Mark RingOwner::release_to(Position position) noexcept {
  const Ring::Mark current = ring_.reuse_limit();
  if (position <= current.position) return current;
  const Ring::Mark frontier = scan();
  // Walk frame by frame from the limit; stop at the last boundary not past `position`.
  std::uint64_t at = current.position.value;
  Offset offset = current.offset;
  for (std::uint64_t steps = 0; steps < ring_.capacity_ / kFrameAlign + 1 && at < frontier.position.value; ++steps) {
    const FrameRead f = read_frame_at(ring_.data_, ring_.capacity_, at);
    if (f.kind == ReadKind::kNotReady || f.kind == ReadKind::kCorrupt) break;
    if (at + f.frame_bytes > position.value) break;
    at += f.frame_bytes;
    offset += f.records;
  }
  const Ring::Mark mark{Position{at}, offset};
  (void)advance_reuse_limit(mark);
  return ring_.reuse_limit();
}

RingOwner::FlowControlledMove::FlowControlledMove(RingOwner& owner) noexcept
    : moves_(owner.ring_.control_->reuse.flow_moves) {
  // seq_cst: the owner's half of the Dekker pair with Consumer::wait_out_flow_controlled_move;
  // its look at the slots that follows reads them seq_cst too.
  moves_.fetch_add(1, std::memory_order_seq_cst);
}

RingOwner::FlowControlledMove::~FlowControlledMove() {
  // R6 release: the limit stored inside the window is seen by a consumer that reads it closed.
  moves_.store(moves_.load(std::memory_order_relaxed) + 1, std::memory_order_release);
}

Position RingOwner::slowest_consumer() const noexcept {
  std::uint64_t slowest = ring_.tail_position().value;
  ConsumerSlot* consumers = ring_.consumer_slots();
  for (std::uint32_t i = 0; i < ring_.consumer_slot_count_; ++i) {
    if (consumers[i].owner.load(std::memory_order_acquire) == 0) continue;
    // A5 acquire: pairs with R5 in Consumer::publish_position.
    slowest = std::min(slowest, consumers[i].position.load(std::memory_order_acquire));
  }
  return Position{slowest};
}

bool RingOwner::room_for_largest_claim() const noexcept {
  const std::uint64_t tail = ring_.tail_position().value;
  const std::uint64_t frame = ring_.max_frame_bytes_;
  const std::uint64_t end = tail + padding_for(tail, frame, ring_.capacity_, ring_.mask_) + frame;
  return end <= ring_.reuse_limit().position.value + ring_.capacity_;
}

std::optional<Ring::Mark> RingOwner::committed_frame_at(Position position) const noexcept {
  if (position.value % kFrameAlign != 0 || position > ring_.tail_position()) return std::nullopt;
  const FrameRead f = read_frame_at(ring_.data_, ring_.capacity_, position.value);
  if (f.kind != ReadKind::kCommitted || lapped_past(ring_, position.value)) return std::nullopt;
  return Ring::Mark{position, f.base_offset};
}

std::vector<SealedRange> RingOwner::seal_dead_claims() {
  std::vector<SealedRange> sealed;
  // Each pass seals at most one claim; the slots bound how many can be open at once.
  const std::uint32_t max_passes = ring_.producer_slot_count_ * 2 + 2;
  for (std::uint32_t pass = 0; pass < max_passes; ++pass) {
    scan();
    SealedRange range;
    if (!seal_at_frontier(range)) break;
    sealed.push_back(range);
  }
  if (!sealed.empty()) wake_every_reader(ring_.control_->wake);
  return sealed;
}

bool RingOwner::seal_at_frontier(SealedRange& sealed) {
  const std::uint64_t frontier = frontier_position_;
  const std::uint64_t tail = ring_.tail_position().value;
  if (frontier >= tail) return false;
  const std::uint64_t capacity = ring_.capacity_;
  const std::uint64_t mask = ring_.mask_;
  const std::uint32_t max_frame = ring_.max_frame_bytes_;
  ProducerSlot* slots = ring_.producer_slots();
  const std::uint32_t slot_count = ring_.producer_slot_count_;

  // A frame boundary is real if a claim ended there: the tail, a frame tagged with its own
  // position, or a claim some producer named.
  auto boundary = [&](std::uint64_t position) {
    if (position == tail) return true;
    const std::uint64_t state = frame_at(ring_.data_, mask, position)->state.load(std::memory_order_acquire);
    if ((state & ~kKindMask) == position && (state & kKindMask) >= kFrameClaimed && (state & kKindMask) <= kFramePadding)
      return true;
    for (std::uint32_t i = 0; i < slot_count; ++i)
      if (slots[i].owner.load(std::memory_order_acquire) != 0 &&
          slots[i].pending_position.load(std::memory_order_relaxed) == position)
        return true;
    return false;
  };

  struct Candidate {
    std::uint64_t claim_position;
    std::uint64_t frame_bytes;
    std::uint32_t records;
    std::uint64_t pid;
  };
  Candidate candidates[kMaxProducerSlots];
  std::size_t found = 0;
  for (std::uint32_t i = 0; i < slot_count; ++i) {
    const std::uint64_t owner = slots[i].owner.load(std::memory_order_acquire);
    if (owner == 0) continue;
    const std::uint64_t claim_position = slots[i].pending_position.load(std::memory_order_relaxed);
    if (claim_position == kNoClaim) continue;
    const std::uint64_t frame_bytes = slots[i].pending_frame_bytes.load(std::memory_order_relaxed);
    if (frame_bytes < kFrameHeaderBytes || frame_bytes > max_frame || frame_bytes % kFrameAlign != 0) continue;
    const std::uint64_t padding = padding_for(claim_position, frame_bytes, capacity, mask);
    if (claim_position != frontier && claim_position + padding != frontier) continue;
    if (liveness(owner) != Liveness::kDead) return false;  // a live producer holds or is taking this claim
    candidates[found++] = {claim_position, frame_bytes, slots[i].pending_records.load(std::memory_order_relaxed),
                           owner_pid(owner)};
  }

  for (std::size_t c = 0; c < found; ++c) {
    Candidate cand = candidates[c];
    const std::uint64_t padding = padding_for(cand.claim_position, cand.frame_bytes, capacity, mask);
    const std::uint64_t frame_position = cand.claim_position + padding;
    FrameHeader* header = frame_at(ring_.data_, mask, frame_position);
    if (header->state.load(std::memory_order_acquire) == frame_state(frame_position, kFrameClaimed) &&
        header->frame_bytes == cand.frame_bytes) {
      cand.records = header->record_count;  // the producer stamped its frame before dying
    }
    const std::uint64_t end = frame_position + cand.frame_bytes;
    if (cand.records == 0 || end > tail || !boundary(end)) continue;
    if (padding != 0 && frontier == cand.claim_position) {
      // R3 (seal): as the producer would have published it.
      frame_at(ring_.data_, mask, frontier)->state.store(frame_state(frontier, kFramePadding), std::memory_order_release);
    }
    header->frame_bytes = static_cast<std::uint32_t>(cand.frame_bytes);
    header->record_count = cand.records;
    // R4 release: the aborted range is readable (skippable); pairs with A1 in read_frame_at.
    header->state.store(frame_state(frame_position, kFrameAborted), std::memory_order_release);
    sealed = SealedRange{frontier_offset_, cand.records, cand.pid};
    return true;
  }
  return false;
}

std::size_t RingOwner::reclaim_dead_slots() {
  scan();
  std::size_t freed = 0;
  const std::uint64_t capacity = ring_.capacity_;
  const std::uint64_t tail = ring_.tail_position().value;
  ProducerSlot* producers = ring_.producer_slots();
  std::atomic<std::uint64_t>& mode = ring_.control_->mode.producers;
  for (std::uint32_t i = 0; i < ring_.producer_slot_count_; ++i) {
    ProducerSlot& s = producers[i];
    const std::uint64_t owner = s.owner.load(std::memory_order_acquire);
    if (owner == 0 || liveness(owner) != Liveness::kDead) continue;
    const std::uint64_t claim = s.pending_position.load(std::memory_order_relaxed);
    if (claim != kNoClaim && claim < tail) {
      const std::uint64_t frame = s.pending_frame_bytes.load(std::memory_order_relaxed);
      const std::uint64_t end = claim + padding_for(claim, frame, capacity, ring_.mask_) + frame;
      if (end > frontier_position_) continue;  // its claim is not sealed yet
    }
    // Undo the dead producer's share of the mode word: its bit, and exclusivity if it held it.
    const std::uint64_t bit = 1ull << i;
    std::uint64_t seen = mode.load(std::memory_order_relaxed);
    while ((seen & bit) != 0) {
      const std::uint64_t cleared = seen & ~bit & ((seen & ~kExclusiveProducer) == bit ? ~kExclusiveProducer : ~0ull);
      if (mode.compare_exchange_weak(seen, cleared, std::memory_order_acq_rel)) break;
    }
    s.pending_position.store(kNoClaim, std::memory_order_relaxed);
    // CAS, not store: frees the slot only if it still belongs to the dead process.
    std::uint64_t expected = owner;
    if (s.owner.compare_exchange_strong(expected, 0, std::memory_order_acq_rel)) ++freed;
  }
  ConsumerSlot* consumers = ring_.consumer_slots();
  for (std::uint32_t i = 0; i < ring_.consumer_slot_count_; ++i) {
    ConsumerSlot& s = consumers[i];
    const std::uint64_t owner = s.owner.load(std::memory_order_acquire);
    if (owner == 0 || liveness(owner) != Liveness::kDead) continue;
    s.position.store(kNoClaim, std::memory_order_relaxed);
    std::uint64_t expected = owner;
    if (s.owner.compare_exchange_strong(expected, 0, std::memory_order_acq_rel)) ++freed;
  }
  return freed;
}

// ---- the log's progress ------------------------------------------------------------------------

namespace {

// Wakes producers asleep in wait_for_log after the owner changed what they wait on.
void wake_log_waiters(ring_layout::LogLine& line) noexcept {
  // A seq_cst read-modify-write (a full barrier TSan can see, unlike a fence) pairs with the
  // waiter's seq_cst increment before it re-reads the offsets: either it sees the new values or
  // this sees it waiting (Dekker's pattern). fetch_add on the sequence: the log writer and the
  // replicator publish from different threads.
  if (line.waiters.fetch_add(0, std::memory_order_seq_cst) != 0) {
    line.futex_sequence.fetch_add(1, std::memory_order_release);
    futex(&line.futex_sequence, FUTEX_WAKE, INT_MAX, nullptr);
  }
}

}  // namespace

void publish_log_progress(const Ring& ring, const LogProgress& progress) noexcept {
  ring_layout::LogLine& line = ring.control().log;
  // Release: a producer that sees an offset here sees the log state behind it (nothing else to
  // see in this memory, but the order costs nothing on x86 and states the intent).
  line.error.store(static_cast<std::uint32_t>(progress.error), std::memory_order_release);
  line.written_offset.store(progress.written.value, std::memory_order_release);
  line.durable_offset.store(progress.durable.value, std::memory_order_release);
  wake_log_waiters(line);
}

LogProgress read_log_progress(const Ring& ring) noexcept {
  const ring_layout::LogLine& line = ring.control().log;
  LogProgress p;
  // Acquire: pairs with publish_log_progress and publish_high_watermark.
  p.written = Offset{line.written_offset.load(std::memory_order_acquire)};
  p.durable = Offset{line.durable_offset.load(std::memory_order_acquire)};
  p.error = static_cast<Errc>(line.error.load(std::memory_order_acquire));
  p.replicated = Offset{line.replicated_offset.load(std::memory_order_acquire)};
  return p;
}


void publish_high_watermark(const Ring& ring, Offset high_watermark) noexcept {
  ring_layout::LogLine& line = ring.control().log;
  // Release: pairs with read_log_progress.
  line.replicated_offset.store(high_watermark.value, std::memory_order_release);
  wake_log_waiters(line);
}

void set_leader_epoch(const Ring& ring, std::int32_t epoch) noexcept {
  // seq_cst: ordered before the owner's next look at which producers are attached (a follower
  // attaching its own writer), and before the wake-up below.
  ring.control().mode.leader_epoch.store(epoch, std::memory_order_seq_cst);
  wake_log_waiters(ring.control().log);
}

std::int32_t leader_epoch(const Ring& ring) noexcept {
  return ring.control().mode.leader_epoch.load(std::memory_order_acquire);  // pairs with set_leader_epoch
}

void retire_ring(const Ring& ring) noexcept {
  set_leader_epoch(ring, kRetired);
  wake_every_reader(ring.control().wake);
}

std::uint32_t log_waiters(const Ring& ring) noexcept {
  return ring.control().log.waiters.load(std::memory_order_relaxed);  // a hint for the writer's pace
}

void add_log_waiter(const Ring& ring) noexcept {
  ring.control().log.waiters.fetch_add(1, std::memory_order_seq_cst);  // as wait_for_log counts itself
}

void remove_log_waiter(const Ring& ring) noexcept {
  ring.control().log.waiters.fetch_sub(1, std::memory_order_relaxed);  // only a hint to the owner
}

namespace {

// Waits until `check` has an answer: spinning a little (the writer answers within a maintenance
// pass, tens of µs), then sleeping on the log line's futex (an fdatasync or a replication round
// takes hundreds); kTimeout at the deadline.
template <class Check>
AckStatus wait_on_log_line(const Ring& ring, std::int64_t deadline_ns, Check check) noexcept {
  ring_layout::LogLine& line = ring.control().log;
  for (int i = 0; i < 256; ++i) {
    if (const std::optional<AckStatus> status = check()) return *status;
    cpu_relax();
  }
  for (;;) {
    const std::int64_t now = monotonic_ns();
    if (now >= deadline_ns) return AckStatus::kTimeout;
    const std::uint32_t sequence = line.futex_sequence.load(std::memory_order_acquire);
    line.waiters.fetch_add(1, std::memory_order_seq_cst);
    const std::optional<AckStatus> status = check();
    if (!status) {
      // Bounded sleeps: a writer in another process that dies must not leave us asleep.
      const std::int64_t wait_ns = std::min<std::int64_t>(deadline_ns - now, 10'000'000);
      const timespec timeout{0, static_cast<long>(wait_ns)};
      futex(&line.futex_sequence, FUTEX_WAIT, sequence, &timeout);
    }
    line.waiters.fetch_sub(1, std::memory_order_relaxed);
    if (status) return *status;
  }
}

}  // namespace

AckStatus wait_for_log(const Ring& ring, Offset end, bool durable, std::int64_t deadline_ns, std::int32_t epoch) noexcept {
  return wait_on_log_line(ring, deadline_ns, [&]() -> std::optional<AckStatus> {
    // The epoch first: offsets reached after a leader change may hold another leader's records.
    if (epoch != kAnyLeaderEpoch && leader_epoch(ring) != epoch) return AckStatus::kFenced;
    const LogProgress p = read_log_progress(ring);
    if (p.written.value == ring_layout::kNoLog) return AckStatus::kNoLog;
    const bool replicated = !durable || p.replicated.value == ring_layout::kNoLog || p.replicated >= end;
    if ((durable ? p.durable : p.written) >= end && replicated) return AckStatus::kOk;
    if (p.error != Errc::kOk) return AckStatus::kLogError;
    return std::nullopt;
  });
}

Offset visible_end(const Ring& ring) noexcept {
  if (leader_epoch(ring) == ring_layout::kNotReplicated) return Offset{INT64_MAX};
  const Offset hw = read_log_progress(ring).replicated;
  return hw.value == ring_layout::kNoLog ? Offset{0} : hw;
}

bool wait_for_visible(const Ring& ring, Offset end, std::int64_t deadline_ns) noexcept {
  return wait_on_log_line(ring, deadline_ns, [&]() -> std::optional<AckStatus> {
    if (visible_end(ring) >= end) return AckStatus::kOk;
    if (leader_epoch(ring) == kRetired) return AckStatus::kFenced;  // its high watermark moves no more
    return std::nullopt;
  }) == AckStatus::kOk;
}

}  // namespace weft
