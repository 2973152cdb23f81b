// The partition ring: the in-memory head of a partition's log, in shared memory, written and
// read in place by any number of processes.
//
// Roles are types:
//   Producer   claims space and offsets together in one atomic step, writes a RecordBatch v2 in
//              place and publishes it with one release store (try_claim / commit / abort), or
//              copies a whole batch (offer). Never blocks; back-pressure is a status.
//   Consumer   reads batches in place at its own position; reading removes nothing. A consumer
//              that the producers lapped is told the first offset it must read elsewhere.
//   RingOwner  the process that formatted the ring (later: the node). Moves the reuse limit that
//              lets producers overwrite space, and seals claims left open by dead producers.
//
// Thread contract: a Producer or Consumer object is used by one thread at a time; any number of
// them, in any processes, share a ring. RingOwner methods are called from one thread.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <vector>

#include "weft/fabric/record_batch.h"
#include "weft/fabric/result.h"
#include "weft/fabric/ring_layout.h"
#include "weft/fabric/types.h"

namespace weft {

struct RingConfig {
  std::size_t capacity_bytes = 1u << 20;  // power of two, at least 4 KiB
  std::size_t max_frame_bytes = 0;        // 0: capacity / 4; never more than capacity / 2
  std::uint32_t producer_slots = 16;      // at most 63
  std::uint32_t consumer_slots = 16;      // at most 4096
  Offset initial_offset{0};               // the log end offset the ring continues from
};

// A view of a formatted ring in memory the caller keeps mapped. Cheap to copy.
class Ring {
 public:
  // Bytes of memory a ring with this config needs.
  static std::size_t required_bytes(const RingConfig& config) noexcept;
  // Lays out a new ring in `memory` (zeroed by the caller or not: every word is written).
  static Result<Ring> format(std::span<std::byte> memory, const RingConfig& config);
  // Checks and opens a ring another process formatted; bad memory gets an error, never a crash.
  static Result<Ring> attach(std::span<std::byte> memory);

  // The descriptor's shape as checked at attach: every process that maps the ring can write its
  // memory, so nothing reads these fields there again (a forged count would walk past the slots).
  std::size_t capacity_bytes() const noexcept { return capacity_; }
  std::size_t max_batch_bytes() const noexcept;
  std::uint32_t max_frame_bytes() const noexcept { return max_frame_bytes_; }
  std::uint32_t producer_slot_count() const noexcept { return producer_slot_count_; }
  std::uint32_t consumer_slot_count() const noexcept { return consumer_slot_count_; }
  ring_layout::RingControl& control() const noexcept { return *control_; }
  std::byte* data() const noexcept { return data_; }
  ring_layout::ProducerSlot* producer_slots() const noexcept;
  ring_layout::ConsumerSlot* consumer_slots() const noexcept;

  // Position and offset that producers claim next (a snapshot; they move on).
  Position tail_position() const noexcept;
  // The reuse limit: producers may overwrite only data behind it. A frame boundary.
  struct Mark {
    Position position;
    Offset offset;
  };
  Mark reuse_limit() const noexcept;
  // The offset producers claim next: a snapshot, claimed but maybe not committed yet (Kafka's
  // log end offset as the node reports it).
  Offset claimed_offset() const noexcept;

 private:
  ring_layout::RingControl* control_ = nullptr;
  std::byte* data_ = nullptr;
  std::size_t capacity_ = 0;
  std::uint64_t mask_ = 0;
  std::uint32_t max_frame_bytes_ = 0;
  std::uint32_t producer_slot_count_ = 0;
  std::uint32_t consumer_slot_count_ = 0;
  bool membarrier_wake_ = false;  // the descriptor's wake protocol
  friend class Producer;
  friend class Consumer;
  friend class RingOwner;
};

enum class ClaimStatus : std::uint8_t {
  kOk,
  kBackPressured,  // the space needed is not behind the reuse limit yet: retry later
  kTooLarge,       // more than max_batch_bytes(); will never fit
  kInvalid,        // zero records, a batch shorter than its header, or a claim still open
  kFenced,         // the node stopped leading the partition, or leads it at a new epoch, since
                   // this producer attached: detach, and ask the node where to produce now
};

enum class CommitStatus : std::uint8_t {
  kOk,
  kMalformed,  // the batch header disagrees with the claim; the claim was aborted instead
  kNotOpen,    // not this producer's open claim (committed or aborted already)
};

// Space and offsets taken by try_claim. Write one RecordBatch v2 into `batch`, then commit.
struct Claim {
  std::span<std::byte> batch;
  Offset base_offset;
  Position position;  // of the frame
  std::uint32_t records = 0;
};

// Readies this process for its first producer: the wake protocol's one-time registration with
// the kernel (membarrier) waits for an RCU grace period, ~10 ms here, which would otherwise fall
// on the first attach (an event loop's first Produce). Any thread; later calls cost nothing.
void prepare_producers() noexcept;

enum class ProducerMode : std::uint8_t {
  kShared,     // any number of producers; claims with a 16-byte compare-and-swap
  kExclusive,  // the only producer; claims with plain stores
};

class Producer {
 public:
  // kFailedPrecondition when the ring's node follows the partition's leader (or replaced the ring).
  static Result<Producer> attach(Ring ring, ProducerMode mode = ProducerMode::kShared);
  // The follower's own writer, on a ring its node fenced with set_leader_epoch(kFollowing):
  // exclusive when it can be, shared while fenced producers that have not noticed yet are still
  // attached (they claim nothing more).
  static Result<Producer> attach_follower(Ring ring);
  Producer(Producer&& other) noexcept;
  Producer& operator=(Producer&&) = delete;
  Producer(const Producer&) = delete;
  Producer& operator=(const Producer&) = delete;
  ~Producer();

  // Takes frame space for `batch_bytes` and `records` consecutive offsets. Never blocks.
  // One claim at a time: commit or abort it before the next (kInvalid otherwise), which lets
  // the owner tell a dead producer's claim from a live one's.
  [[nodiscard]] ClaimStatus try_claim(std::size_t batch_bytes, std::uint32_t records, Claim& claim) noexcept;
  // Publishes the batch written in claim.batch, whose first `used_bytes` bytes hold it (a claim
  // may be committed shorter than it was taken). Stamps baseOffset; the CRC stays valid.
  [[nodiscard]] CommitStatus commit(Claim& claim, std::size_t used_bytes) noexcept;
  [[nodiscard]] CommitStatus commit(Claim& claim) noexcept { return commit(claim, claim.batch.size()); }
  // Gives the claim up: readers skip its offsets. Destroying a Producer aborts its open claim.
  void abort(Claim& claim) noexcept;

  // Copies a complete batch in (claim, copy, commit). Sets `base` on success.
  [[nodiscard]] ClaimStatus offer(std::span<const std::byte> batch, Offset* base = nullptr) noexcept;
  // Encodes one record in place as a single-record batch (claim, build, commit).
  [[nodiscard]] ClaimStatus offer_record(const RecordInput& record, Offset* base = nullptr) noexcept;

  std::uint64_t back_pressure_events() const noexcept;
  ProducerMode mode() const noexcept { return mode_; }
  // The ring's leader epoch when this producer attached; its claims are fenced once it changes.
  std::int32_t leader_epoch() const noexcept { return epoch_; }

 private:
  static Result<Producer> attach_as(Ring ring, ProducerMode mode, std::int32_t epoch);
  Producer(Ring ring, ProducerMode mode, ring_layout::ProducerSlot* slot, bool register_membarrier, std::int32_t epoch) noexcept;
  void wake_parked_readers() noexcept;
  Ring ring_;
  ProducerMode mode_;
  ring_layout::ProducerSlot* slot_;
  std::uint64_t cached_reuse_limit_ = 0;  // re-read only when it says "full"
  std::uint64_t guess_position_ = 0;      // last tail seen, the first compare-and-swap's guess
  std::int64_t guess_offset_ = 0;
  bool fence_before_wake_check_;
  bool claim_open_ = false;
  std::int32_t epoch_;
  Claim open_claim_;
};

// A batch in the ring, viewed in place.
struct RingBatch {
  Offset base_offset;
  std::uint32_t records = 0;
  std::span<const std::byte> bytes;  // one RecordBatch v2
  Position position;
};

enum class PollStatus : std::uint8_t {
  kOk,
  kEmpty,    // nothing committed at this position yet
  kLapped,   // producers overwrote data this consumer had not read; see lapped_offset()
  kCorrupt,  // a frame header written by another process makes no sense
};

enum class WaitKind : std::uint8_t {
  kSpin,   // pause loop; lowest latency, burns a core
  kYield,  // sched_yield between polls
  kPark,   // sleep on a futex until a producer commits
};

enum class StartAt : std::uint8_t { kEarliest, kLatest };

class Consumer {
 public:
  static Result<Consumer> attach(Ring ring, StartAt start = StartAt::kEarliest);
  Consumer(Consumer&& other) noexcept;
  Consumer& operator=(Consumer&&) = delete;
  Consumer(const Consumer&) = delete;
  Consumer& operator=(const Consumer&) = delete;
  ~Consumer();

  // Returns the next committed batch, skipping padding and aborted ranges. Never blocks.
  // The view is read in place: once the reuse limit passes it, producers may overwrite it.
  // Call validate(view) after reading it: false means what was read may be torn, and the
  // batch must be read again from the log.
  [[nodiscard]] PollStatus poll(RingBatch& out) noexcept;
  // As poll(), waiting up to `timeout_ns` in the chosen way. kEmpty on timeout.
  [[nodiscard]] PollStatus wait(RingBatch& out, WaitKind kind, std::int64_t timeout_ns) noexcept;
  // True when `batch` (returned by this consumer) had not been overwritten when this returns.
  [[nodiscard]] bool validate(const RingBatch& batch) const noexcept;

  // After kLapped: the first offset this consumer has not read intact (read it from the log).
  Offset lapped_offset() const noexcept { return lapped_offset_; }
  // After kLapped: moves to the oldest intact frame; returns its offset. Offsets in
  // [lapped_offset(), returned) must be read from the segment files.
  Offset rejoin() noexcept;
  // Positions at the batch holding `offset`, walking from the reuse limit. kOutOfRange (with the
  // earliest offset in the message) when the ring no longer holds it.
  Result<void> seek(Offset offset);
  // Steps back to `batch`, which this consumer returned (its latest, or an earlier one it has
  // walked on from), so the next poll returns it again: a seek without the walk. A batch
  // overwritten since reads as lapped.
  void unread(const RingBatch& batch) noexcept {
    position_ = batch.position.value;
    next_offset_ = batch.base_offset;
  }

  // Keeps the published position at `position` (a batch this consumer handed out whose view is
  // still in use) while later batches are read: under consumer flow control producers then leave
  // it intact. rejoin(), seek() and release_hold() end it.
  void hold(Position position) noexcept { hold_ = position.value; }
  void release_hold() noexcept { hold_ = ~0ull; }
  // Says the last look found nothing right after data: the next wait() first pauses as a
  // streaming reader does, rather than looking at once at a frame a producer is writing.
  void mark_caught_up() noexcept { caught_up_ = true; }

  Offset next_offset() const noexcept { return next_offset_; }
  Position position() const noexcept { return Position{position_}; }
  const ring_layout::ConsumerSlot* slot() const noexcept { return slot_; }
  std::uint64_t aborted_records_skipped() const noexcept { return aborted_skipped_; }

 private:
  Consumer(Ring ring, ring_layout::ConsumerSlot* slot) noexcept;
  bool overwritten(std::uint64_t position) const noexcept;
  PollStatus read_frame(RingBatch& out) noexcept;
  PollStatus mark_lapped() noexcept;
  PollStatus park(RingBatch& out, std::int64_t deadline_ns) noexcept;
  void pause_after_data() noexcept;
  void publish_position(std::uint64_t in_use_from) noexcept;
  void wait_out_flow_controlled_move() noexcept;
  Ring ring_;
  ring_layout::ConsumerSlot* slot_;
  std::uint64_t position_ = 0;
  Offset next_offset_;
  Offset lapped_offset_;
  Offset skip_below_{-1};  // seek() into the middle of a batch still delivers it whole
  std::uint64_t aborted_skipped_ = 0;
  // The pause a spinning reader takes on catching up right after data (ring.cc says why).
  std::uint64_t frames_read_ = 0;      // batches delivered, for the stream's pace
  std::uint64_t frames_at_pause_ = 0;  // frames_read_ at the last pause
  std::int64_t last_pause_ns_ = 0;
  std::uint32_t pause_shift_ = 0;      // the pause is the base pause << this
  bool data_since_pause_ = false;
  std::uint64_t hold_ = ~0ull;  // published positions never pass it
  bool lapped_ = false;
  bool caught_up_ = false;
};

struct SealedRange {
  Offset first;
  std::uint32_t records = 0;
  std::uint64_t dead_pid = 0;
};

class RingOwner {
 public:
  explicit RingOwner(Ring ring) noexcept;

  // Walks committed, aborted and padding frames from the frontier; returns the first position
  // (and its offset) that is not yet readable.
  Ring::Mark scan() noexcept;
  // Lets producers overwrite data behind `mark`, which must be a frame boundary at or behind the
  // frontier (as a consumer's position is). Refuses (false) to move backwards or past the tail.
  bool advance_reuse_limit(Ring::Mark mark) noexcept;
  // As advance_reuse_limit, to the frame boundary at `position` (found by walking from the
  // current limit); returns the mark reached, which stops short at the frontier.
  Ring::Mark release_to(Position position) noexcept;
  // The lowest position any live attached consumer has published (the tail when there is none).
  Position slowest_consumer() const noexcept;
  // True when a claim of the largest frame, with the padding it may need at the ring's end,
  // fits behind the reuse limit now: no producer can be waiting for space the node holds back.
  bool room_for_largest_claim() const noexcept;
  // The mark of the committed frame that starts at `position` (a consumer's published position,
  // say), or nothing when none does. Lets the owner use a boundary a consumer walked to instead
  // of walking the frames itself.
  std::optional<Ring::Mark> committed_frame_at(Position position) const noexcept;
  // Flow control's window (consumer flow control, design.md): the owner looks at the consumer
  // slots and moves the limit inside one. A consumer that starts meanwhile (attach, seek,
  // rejoin) waits for the window to close and starts from the limit it left; one that started
  // before is in the slots the owner reads. So a move never passes a consumer it did not see.
  class FlowControlledMove {
   public:
    explicit FlowControlledMove(RingOwner& owner) noexcept;
    ~FlowControlledMove();
    FlowControlledMove(const FlowControlledMove&) = delete;
    FlowControlledMove& operator=(const FlowControlledMove&) = delete;

   private:
    std::atomic<std::uint64_t>& moves_;
  };
  // Seals claims whose producer died between claim and commit, so readers move past them.
  std::vector<SealedRange> seal_dead_claims();
  // Frees slots of producers and consumers that died, once their claims are sealed.
  std::size_t reclaim_dead_slots();

 private:
  bool seal_at_frontier(SealedRange& sealed);
  Ring ring_;
  std::uint64_t frontier_position_ = 0;
  Offset frontier_offset_;
};

// The partition's log as its writer (the node) publishes it in the ring, for producers that wait
// for acknowledgements in any process.
struct LogProgress {
  Offset written{ring_layout::kNoLog};  // offsets below it are in the log; kNoLog: no log
  Offset durable{ring_layout::kNoLog};  // ... and synced as the topic's fsync policy asks
  Errc error = Errc::kOk;               // why the log takes nothing now
  Offset replicated{ring_layout::kNoLog};  // the high watermark in a cluster; kNoLog: not replicated
};
// Owner side: publishes progress and wakes the producers waiting on it.
void publish_log_progress(const Ring& ring, const LogProgress& progress) noexcept;
LogProgress read_log_progress(const Ring& ring) noexcept;
// Owner side, in a cluster: publishes the partition's high watermark and wakes acks=all waiters.
void publish_high_watermark(const Ring& ring, Offset high_watermark) noexcept;
// Owner side: fences every producer attached under another epoch (ring_layout::kFollowing,
// kRetired, or the epoch this node now leads at) and wakes their waiters to see it.
void set_leader_epoch(const Ring& ring, std::int32_t epoch) noexcept;
std::int32_t leader_epoch(const Ring& ring) noexcept;
// Owner side: nothing more comes to this ring (the node replaced it, or deleted its topic).
// Fences its producers (kRetired) and wakes its parked readers, so both open the partition again.
void retire_ring(const Ring& ring) noexcept;
// Producers waiting now (the owner writes the log sooner while there are any).
std::uint32_t log_waiters(const Ring& ring) noexcept;
// Counts a waiter that polls read_log_progress instead of sleeping in wait_for_log (an event
// loop answering remote producers), so the owner hurries for it too. Pair every add with a remove.
void add_log_waiter(const Ring& ring) noexcept;
void remove_log_waiter(const Ring& ring) noexcept;
enum class AckStatus : std::uint8_t {
  kOk,        // every offset below `end` is written (durably, when asked)
  kNoLog,     // the partition has no log: the ring is all there is
  kLogError,  // the log takes nothing now; read_log_progress().error says why
  kTimeout,
  kFenced,    // the ring's leader epoch is no longer `epoch`: whether the records survive the
              // leader change is unknown (Kafka's NOT_LEADER_OR_FOLLOWER on a pending produce)
};
inline constexpr std::int32_t kAnyLeaderEpoch = INT32_MIN;
// Waits (spinning briefly, then on a futex) until the log holds every offset below `end`; with
// `durable`, synced and, in a cluster, below the high watermark. A producer passes the epoch it
// sent under (Producer::leader_epoch()).
AckStatus wait_for_log(const Ring& ring, Offset end, bool durable, std::int64_t deadline_ns,
                       std::int32_t epoch = kAnyLeaderEpoch) noexcept;

// What local readers of the partition may read: offsets below the high watermark in a cluster
// (none while it is not known yet), everything (INT64_MAX) on a node alone. Kafka's rule:
// consumers never see what the in-sync replicas do not all hold.
Offset visible_end(const Ring& ring) noexcept;
// Waits until visible_end(ring) >= end; false at the deadline, or at once for a retired ring.
bool wait_for_visible(const Ring& ring, Offset end, std::int64_t deadline_ns) noexcept;

// False only when the process (pid, start_time) is certainly gone: exited, a zombie, or its pid
// reused. Slots are owned by pid, so producers and the owner must share a PID namespace.
bool process_alive(std::uint64_t pid, std::uint64_t start_time) noexcept;
// Start time of `pid` in clock ticks since boot, from /proc (0 when unknown).
std::uint64_t process_start_time(std::uint64_t pid) noexcept;
// CLOCK_MONOTONIC in nanoseconds (vDSO: no syscall).
std::int64_t monotonic_ns() noexcept;
// CLOCK_REALTIME in milliseconds (vDSO): Kafka timestamps, retention, segment age.
std::int64_t wall_clock_ms() noexcept;

}  // namespace weft
