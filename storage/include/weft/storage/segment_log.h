// A partition's log on a local disk: a folder of segments (weft/storage/segment.h) that rolls
// to a new segment by size and by age, and drops its oldest segments by retention. Implements
// the node's PartitionLog port.
//
// Thread contract: any thread; calls are serialised by one mutex (a read holds it for its pread,
// which is fine for the node's log writer and catch-up reads; cold reads at line rate will want
// their own file handles). sync() holds it to start its fdatasyncs and to count what they
// covered, not across them (unless a file's handle cannot be duplicated: no descriptors left).
#pragma once

#include <cstdint>
#include <cstddef>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "weft/fabric/log_store.h"
#include "weft/node.h"
#include "weft/storage/segment.h"

namespace weft::storage {

struct SegmentLogOptions {
  std::uint64_t segment_bytes = std::uint64_t{1} << 30;  // Kafka's segment.bytes
  std::int64_t segment_ms = 7LL * 24 * 3600 * 1000;       // Kafka's segment.ms: roll a segment this old
  SegmentOptions segment;
  // How long the files of a segment taken out of the log (retention, truncation) stay on disk,
  // renamed, before they are deleted: a reader that opened one (a fetch being sent) finishes
  // first and never pays for the deletion. Kafka's file.delete.delay.ms.
  std::int64_t file_delete_delay_ms = 60'000;
};

// What opening a partition folder found (for the node's log).
struct SegmentLogRecovery {
  std::uint32_t segments = 0;
  std::uint32_t trusted_segments = 0;  // closed before the recovery point: not read through
  Offset recovery_point{-1};           // from the folder's recovery-point file (-1: none)
  std::uint64_t batches = 0;
  std::uint64_t truncated_bytes = 0;
  Offset truncated_from{-1};
  std::string reason;
};

class SegmentLog final : public PartitionLog {
 public:
  // Opens (or creates) the folder `dir` for a log that starts at `start` when empty. Segments
  // that closed before the folder's recovery point (`recovery-point`: moved to each new
  // segment's base once the one before is synced with its indexes) are opened from their
  // indexes; every other segment is read through and checked: a torn tail of the last one is
  // cut, and so is a tail that ends early (a crash kept its writes from the disk) in a closed
  // one the point does not vouch for, the segments after it then dropped, as Kafka does; a bad
  // batch in any other is an error (kCorrupt): the partition cannot be served.
  static Result<std::unique_ptr<SegmentLog>> open(const std::string& dir, Offset start, SegmentLogOptions options = {},
                                                  SegmentLogRecovery* recovery = nullptr);
  // Waits for the sync of its last closed segment, so that the next start trusts it (a removed
  // log does not wait).
  ~SegmentLog() override;
  // What a log and the process's syncer thread share about the syncs of its closed segments
  // (defined in segment_log.cc).
  struct ClosedSegmentSyncs;

  Result<void> append(std::span<const std::byte> batch) override;
  Result<void> flush() override;
  Result<void> sync() override;
  Result<void> submit(bool more_coming = false) override;
  Result<Offset> written_offset() override;
  Offset synced_offset() const override;
  // Renames the folder to `<dir>.<16 hex digits>-delete` at once (a topic made again under the
  // name starts empty); the process's deleter thread deletes it once this log is destroyed (at
  // most a minute later), as Kafka does. The last close of a large log's files waits on its
  // writeback and on the disk's discards: the caller (a node's replication thread, the
  // maintenance pass) does not. Where the rename fails the folder goes at once, here.
  Result<void> remove() override;
  Offset start_offset() const override;
  Offset next_offset() const override;
  Result<std::size_t> read(Offset offset, std::span<std::byte> out) const override;
  Result<LogSlice> slice(Offset offset, Offset until) override;
  Result<TimedOffset> offset_for_timestamp(std::int64_t timestamp_ms) override;
  Result<RetentionOutcome> apply_retention(std::int64_t max_bytes, std::int64_t max_age_ms, std::int64_t now_ms, Offset keep_from) override;
  std::uint64_t size_bytes() const override;
  Result<Offset> truncate(Offset end) override;
  Result<void> reset(Offset start) override;
  // In `leader-epoch-checkpoint`: a header line, the count, then `epoch start` per line. A
  // kWithTheLog save makes no file system call: the process's syncer thread writes and syncs it
  // before it next moves the recovery point. load_epochs answers from memory: the newest save, or
  // the file as it was at opening with the epochs of the batches read through then.
  Result<void> save_epochs(std::span<const EpochStart> epochs, EpochSave how) override;
  Result<std::vector<EpochStart>> load_epochs() const override;

  std::size_t segment_count() const;
  const std::string& dir() const noexcept { return dir_; }

 private:
  SegmentLog(std::string dir, SegmentLogOptions options);
  // The segment holding `offset` (or the next batch after it); null past the end. Under mutex_.
  Segment* segment_for(Offset offset) const;
  // Deletes every segment and starts an empty one at `start`. Under mutex_.
  Result<void> restart_at(Offset start);
  // At a roll: the closed segment is synced by the syncer thread, which then moves the
  // recovery point to `point`. Under mutex_.
  void sync_closed_segment(Offset point);
  // The syncs under way no longer move the recovery point (the segments change). Under mutex_.
  void cancel_closed_segment_syncs();
  // Drops the epoch history's entries that begin at or past `end` (the log was cut there).
  void forget_epochs_from(Offset end);
  // Takes `segment`'s files out of the log, to be deleted by the deleter thread. Under mutex_.
  Result<void> retire(Segment& segment);
  // After a failed cut or restart: the log takes nothing more; returns the error to report.
  Error stop_after(Error error);
  std::string dir_;
  SegmentLogOptions options_;
  // Expires once this log is destroyed, its segments' files closed (declared before segments_, so
  // destroyed after them): a removed folder's deletion waits for it.
  std::shared_ptr<const void> open_files_ = std::make_shared<const char>(0);
  std::shared_ptr<ClosedSegmentSyncs> closed_syncs_;
  std::mutex sync_mutex_;     // one sync() at a time; taken before mutex_, never under it
  mutable std::mutex mutex_;  // every call: segments are single-threaded
  std::vector<std::shared_ptr<Segment>> segments_;  // shared: a sync off the lock keeps its own alive
  bool removed_ = false;
  std::string refusal_;  // why a removed or stopped log takes nothing
  std::int64_t active_since_ms_ = -1;  // wall time of the active segment's first batch (-1: empty)
};

// Deletes retired segments' files now, without their delay, and waits up to `timeout_ms` for
// them and the folders of removed logs to be deleted; false if some remain (their logs are still
// open, or the disk is slow). For tools and tests that clean up after.
bool wait_for_log_deletions(int timeout_ms);

// The node's OpenPartitionLog for logs kept under `data_dir`: one folder `<topic>-<partition>`
// (folders of logs removed by an earlier run that stopped first are deleted, in the background,
// when this is called)
// per partition, segments rolled by the topic's segment.bytes and segment.ms. A torn tail cut
// at recovery is logged with its offsets. `segment` sets how segments write (buffers, O_DIRECT,
// io_uring).
OpenPartitionLog open_segment_logs(std::string data_dir, SegmentOptions segment = {});

// The node's RemovePartitionLog for those logs: a partition's folder taken away (renamed aside,
// deleted in the background) when its topic is deleted and its log was never opened.
RemovePartitionLog remove_segment_logs(std::string data_dir);

// Both of the above, set in `options`: a node whose logs live under `data_dir`.
void use_segment_logs(NodeOptions& options, const std::string& data_dir, SegmentOptions segment = {});

}  // namespace weft::storage
