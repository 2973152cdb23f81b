// The port through which the node keeps a partition's log: declared here, implemented by
// storage/ (segment files on a local disk), so the core builds and tests without a disk.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "weft/fabric/result.h"
#include "weft/fabric/shared_memory.h"
#include "weft/fabric/types.h"

namespace weft {

// The first record at or after a time: its offset and its own timestamp (ListOffsets answers both).
struct TimedOffset {
  Offset offset;
  std::int64_t timestamp_ms = -1;
  std::int32_t leader_epoch = -1;  // the batch's stamped partition leader epoch (-1: none)
};

// A stretch of one segment file for a reader behind the ring to read itself (pread): the batch
// holding the wanted offset starts at `position`, whole batches follow up to `end`.
struct LogSlice {
  UniqueFd file;               // the segment's log file, opened read-only for the reader
  std::uint64_t position = 0;  // where the batch holding `offset` (or the next batch) starts
  std::uint64_t end = 0;       // bytes written so far; the next slice starts past this segment
  Offset offset{0};            // the offset asked for (the log's start, for kEarliestOffset)
  // Every batch in [position, end) ends below this (the segment's next offset when sliced): a
  // reader's check on base offsets, which the batches' CRC does not cover.
  Offset end_offset{INT64_MAX};
};
inline constexpr Offset kEarliestOffset{-2};
inline constexpr Offset kLogEnd{INT64_MAX};  // a slice bound: up to what the log holds

// What a retention pass deleted.
struct RetentionOutcome {
  std::uint32_t segments_deleted = 0;
  std::uint64_t bytes_deleted = 0;
  Offset start_offset{0};  // the log's start afterwards
};

// Where a leader epoch starts in a replicated partition's log (Kafka's leader-epoch cache).
struct EpochStart {
  std::int32_t epoch = 0;
  Offset start{0};
  bool operator==(const EpochStart&) const = default;
};

// Adds `e` to an epoch history as a replica does: ignored unless its epoch is above the last
// one; an epoch that began where the last one did replaces it (that one held no batch). True
// when the history changed.
inline bool add_epoch(std::vector<EpochStart>& history, EpochStart e) {
  if (!history.empty() && e.epoch <= history.back().epoch) return false;
  if (!history.empty() && history.back().start == e.start) history.pop_back();
  history.push_back(e);
  return true;
}

// When save_epochs makes a history durable.
enum class EpochSave : std::uint8_t {
  // Before it returns: for a history cut back (a truncation, a reset), since a stale file would
  // name epochs at offsets the log has since filled with other epochs' batches.
  kNow,
  // Before the log vouches for any batch of the new epoch without reading it at its next opening
  // (a segment log's recovery point); the batches it does read name their epochs themselves. For
  // a history that grew by an epoch starting at the log's end: a new role's fdatasyncs stay off
  // the replication thread.
  kWithTheLog,
};

class PartitionLog {
 public:
  virtual ~PartitionLog() = default;
  // Appends one batch (RecordBatch v2, baseOffset stamped) at or after next_offset().
  virtual Result<void> append(std::span<const std::byte> batch) = 0;
  // Batches appended from now on whose partitionLeaderEpoch is -1 (as producers write them) get
  // `epoch` in the log's copy: a replicated partition's leader stamps its epoch (Kafka's rule:
  // the broker, not the client, sets it). -1: batches are kept as they come (a follower's
  // carry their leader's).
  // Relaxed: the epoch changes only with the partition's role, and a batch drained during the
  // change is stamped with either (the follower's divergence check sorts out the old leader's).
  void set_leader_epoch(std::int32_t epoch) noexcept { leader_epoch_.store(epoch, std::memory_order_relaxed); }
  std::int32_t leader_epoch() const noexcept { return leader_epoch_.load(std::memory_order_relaxed); }
  // Hands everything appended so far to the operating system (appends may be buffered):
  // after it, a crash of this process loses nothing, a crash of the machine may.
  virtual Result<void> flush() = 0;
  // Makes everything appended so far durable (flushes first).
  virtual Result<void> sync() = 0;
  // Starts writing everything appended so far without waiting for it; written_offset() follows
  // the writes as they finish. With `more_coming` (the caller appends more at once) the log may
  // keep a ragged tail back for the next write. A log that writes synchronously flushes.
  virtual Result<void> submit(bool more_coming = false) {
    (void)more_coming;
    return flush();
  }
  // The offset below which every appended record is written (as after flush()), collecting
  // finished writes without waiting. An error: a write failed, and flush() tries it again.
  virtual Result<Offset> written_offset() { return next_offset(); }
  // The offset below which every record is known to be on disk, not only in the page cache:
  // all of them after sync(); after a restart, what the log could vouch for when it opened.
  virtual Offset synced_offset() const { return next_offset(); }
  // Deletes the log's files (its topic was deleted); the log takes nothing afterwards. It may
  // finish after returning, on a thread of its own, once the log is destroyed (storage::SegmentLog).
  virtual Result<void> remove() = 0;
  // The earliest offset the log holds, and the one the next batch gets.
  virtual Offset start_offset() const = 0;
  virtual Offset next_offset() const = 0;
  // Copies whole batches, starting with the one that holds `offset` (or the next batch, if an
  // aborted claim skipped it), into `out`; returns the bytes copied (0: nothing from there yet).
  // kOutOfRange before start_offset() or past next_offset(); kResourceExhausted when that first
  // batch is larger than `out`.
  virtual Result<std::size_t> read(Offset offset, std::span<std::byte> out) const = 0;
  // Where `offset` (or kEarliestOffset) lies, as a file the caller reads. kOutOfRange before
  // start_offset() (the message names it); at next_offset() an empty slice. The slice stops
  // before the first batch whose last offset is at or after `until` (a replicated partition's
  // high watermark: what followers do not all hold yet is not served); kLogEnd: no bound.
  virtual Result<LogSlice> slice(Offset offset, Offset until) = 0;
  // The first record whose timestamp is at or after `timestamp_ms`, in the first batch whose max
  // timestamp is (the time index, then a scan; a compressed batch's records are read inflated);
  // kNotFound when no batch is that late.
  virtual Result<TimedOffset> offset_for_timestamp(std::int64_t timestamp_ms) = 0;
  // Deletes whole closed segments, oldest first, while the log holds more than `max_bytes` or
  // their newest record is older than `max_age_ms` before `now_ms` (-1: no limit). The active
  // segment stays, as in Kafka, and so does every segment holding an offset at or past
  // `keep_from` (a replicated partition's high watermark: what not every in-sync replica holds
  // yet is never deleted, as Kafka bounds retention by it; kLogEnd: no bound).
  virtual Result<RetentionOutcome> apply_retention(std::int64_t max_bytes, std::int64_t max_age_ms, std::int64_t now_ms,
                                                   Offset keep_from) = 0;
  // Bytes the log holds on disk.
  virtual std::uint64_t size_bytes() const = 0;
  // Drops every batch at or after `end` — whole batches: one that holds `end` goes too — and
  // makes the cut durable; returns the log's next offset afterwards. A replica's divergent
  // suffix goes this way (Kafka's leader-epoch truncation). An `end` at or before the log's
  // start empties it, and it continues at `end`; past the log's end nothing changes.
  virtual Result<Offset> truncate(Offset end) {
    (void)end;
    return Error{Errc::kUnsupported, "this log cannot be truncated"};
  }
  // A replica's epoch history, kept beside the log (Kafka's leader-epoch checkpoint) so a node
  // that starts learns it without reading its log through. save_epochs replaces what was saved,
  // durable as `how` says; when it fails, nothing stale is left to load. load_epochs: what was
  // saved, with the epochs of batches the log read through at its opening that it names not
  // (a crash came before their kWithTheLog save was synced); kNotFound when nothing was saved,
  // kCorrupt when the file fails its checks. kUnsupported: this log keeps none.
  virtual Result<void> save_epochs(std::span<const EpochStart> epochs, EpochSave how) {
    (void)epochs;
    (void)how;
    return Error{Errc::kUnsupported, "this log keeps no epoch history"};
  }
  virtual Result<std::vector<EpochStart>> load_epochs() const { return Error{Errc::kUnsupported, "this log keeps no epoch history"}; }
  // Drops the whole log; it continues at `start` (a replica whose leader no longer holds where
  // this log ends).
  virtual Result<void> reset(Offset start) {
    (void)start;
    return Error{Errc::kUnsupported, "this log cannot be reset"};
  }

 private:
  std::atomic<std::int32_t> leader_epoch_{-1};  // set by the replication thread, read by the log writer
};

}  // namespace weft
