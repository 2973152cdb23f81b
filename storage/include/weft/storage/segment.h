// One segment of a partition's log on disk, in Kafka's layout: `<base offset, 20 digits>.log`
// holds RecordBatch v2 bytes exactly as the ring carried them; `.index` maps offsets to file
// positions (8-byte entries: relative offset, position; both big-endian int32), one entry per
// ~index_interval_bytes of log; `.timeindex` maps timestamps to offsets (12-byte entries:
// timestamp int64, relative offset int32, big-endian), one entry whenever the maximum timestamp
// grows past an index interval.
//
// Thread contract: one thread at a time (appends grow the in-memory indexes that lookups read);
// SegmentLog serialises its segments' users.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "weft/fabric/io_ring.h"
#include "weft/fabric/log_store.h"
#include "weft/fabric/record_batch.h"
#include "weft/fabric/result.h"
#include "weft/fabric/shared_memory.h"
#include "weft/fabric/types.h"

namespace weft::storage {

// "00000000000000000042.log" for base 42 and extension ".log".
std::string segment_file_name(Offset base, std::string_view extension);
// Renames the three files of the segment at `base` in `dir` to their names + `suffix` (one that
// cannot be renamed is deleted in place; a missing one is skipped); returns the new paths.
Result<std::vector<std::string>> rename_segment_files_aside(const std::string& dir, Offset base, std::string_view suffix);

struct SegmentOptions {
  std::size_t index_interval_bytes = 4096;  // Kafka's index.interval.bytes
  std::size_t write_buffer_bytes = std::size_t{1} << 20;
  // Whole blocks of a large flush go to the disk with O_DIRECT, skipping the page cache's copy
  // (with the alignment statx reports for the file); the ragged ends of each flush are written
  // through the page cache. Where O_DIRECT is refused (tmpfs on older kernels), all is buffered.
  bool direct_io = true;
  // Direct writes go through io_uring, up to write_buffers of them in flight while appends fill
  // the next buffer (bench: `weft perf --data-dir`, docs/performance.md "Storage"); pwrite, one
  // at a time, where io_uring is refused or this is off.
  bool io_uring = true;
  std::size_t write_buffers = 4;
};

// Appended bytes not yet written, laid out so that the byte for file offset F sits at an address
// congruent to F modulo the alignment: whole blocks go to the file with O_DIRECT straight from it.
class WriteBuffer {
 public:
  // Empty; the next byte appended belongs at `file_offset`.
  void reset(std::uint64_t file_offset, std::size_t alignment);
  // Returns where the bytes now are (valid until the next append or reset).
  std::span<std::byte> append(std::span<const std::byte> bytes);
  bool empty() const noexcept { return size_ == 0; }
  std::size_t size() const noexcept { return size_; }
  const std::byte* data() const noexcept { return storage_.get() + pad_; }
  // The bytes for file offsets [begin, end), which must lie within what was appended.
  std::span<const std::byte> range(std::uint64_t begin, std::uint64_t end) const noexcept {
    return {data() + (begin - file_offset_), static_cast<std::size_t>(end - begin)};
  }

 private:
  struct Free {
    void operator()(std::byte* p) const noexcept;
  };
  std::unique_ptr<std::byte[], Free> storage_;
  std::size_t capacity_ = 0;
  std::uint64_t file_offset_ = 0;  // of the first byte
  std::size_t pad_ = 0;  // file_offset % alignment: where the first byte sits
  std::size_t size_ = 0;
  std::size_t alignment_ = 4096;
};

// What opening an existing segment found and did.
struct SegmentRecovery {
  std::uint64_t batches = 0;
  std::uint64_t valid_bytes = 0;
  std::uint64_t truncated_bytes = 0;  // a torn or corrupt tail cut off (last or unsynced segment only)
  Offset truncated_from{-1};          // the offset where the cut began, when known
  bool index_rebuilt = false;
  bool trusted = false;  // below the log's recovery point: opened from its indexes, not read through
  std::string reason;  // why the tail was cut, for the log
  // Read through: where each higher partitionLeaderEpoch than the batch before's begins.
  std::vector<EpochStart> epochs;
};

struct IndexEntry {
  std::int32_t relative_offset = 0;
  std::int32_t position = 0;
};

struct TimeIndexEntry {
  std::int64_t timestamp = 0;
  std::int32_t relative_offset = 0;
};

class Segment {
 public:
  // A new, empty segment in `dir` (which must exist); refuses to overwrite an existing one.
  static Result<Segment> create(const std::string& dir, Offset base, const SegmentOptions& options = {});
  // An existing segment. Every batch's length and CRC is checked and the indexes are rebuilt
  // from the log. In the last (active) segment a torn or corrupt tail is cut off and reported;
  // in any other segment it is an error (kCorrupt): its data cannot be trusted. Except, with
  // `unsynced` (a closed segment that may not have reached the disk whole before a crash), a
  // tail that ends early — a batch cut short by the file's end, or zeros to the end — is cut as
  // in the last segment: what a crash leaves of writes that were never synced.
  static Result<Segment> open(const std::string& dir, Offset base, bool last, SegmentRecovery* recovery = nullptr,
                              const SegmentOptions& options = {}, bool unsynced = false);
  // A closed segment known to be whole (synced, with its indexes, before the log's recovery
  // point moved past it): opened from its index files and the batch headers after their last
  // entry, without reading the log through. Indexes that do not hold together fall back to
  // open()'s full check.
  static Result<Segment> open_trusted(const std::string& dir, Offset base, SegmentRecovery* recovery = nullptr,
                                      const SegmentOptions& options = {});

  Segment(Segment&&) noexcept;
  // Not assignable: the segment assigned over might have writes in flight from its buffers.
  Segment& operator=(Segment&&) = delete;
  // Writes what is still buffered, as closing a file does; flush() first to see errors.
  ~Segment();

  // Appends one validated batch whose baseOffset is at least next_offset() (offsets an aborted
  // claim skipped leave a gap, as in the ring). Appends gather in a buffer; a full buffer's
  // whole blocks start writing (in the background, with io_uring) and the next buffer fills. An
  // append that fails took nothing.
  Result<void> append(std::span<const std::byte> batch);
  // As append(); a batch whose partitionLeaderEpoch is -1 (a producer's) gets `leader_epoch` in
  // the copy the segment keeps (outside the CRC: nothing else changes).
  Result<void> append(std::span<const std::byte> batch, std::int32_t leader_epoch);
  // Starts writing everything appended, without waiting for the direct writes in flight;
  // written_bytes() and written_next_offset() follow them as they finish. With `more_coming`,
  // only whole blocks: the ragged tail waits for the next appends rather than going through the
  // page cache (where, on ext4, it would wait for the direct writes in flight).
  Result<void> submit(bool more_coming = false);
  // Everything appended is in the file (the page cache, or the disk for direct writes). A write
  // that fails (a full disk) is kept and tried again by the next flush.
  Result<void> flush();
  // Collects finished writes without waiting; an error: a write failed (flush() retries it).
  Result<void> poll_writes();
  // flush(), then fdatasync of the log (the indexes are derived: rebuilt on open).
  Result<void> sync();
  // The same sync in two steps, so its fdatasync can run off the caller's lock: begin_sync()
  // flushes and returns a duplicate of the log's handle with the appends it covers; once that
  // handle is synced, end_sync(covered) counts the segment synced unless it took more meanwhile.
  // A handle that cannot be duplicated (no descriptors left) is synced here instead: the ticket's
  // file is then invalid and the segment already counted synced.
  struct SyncTicket {
    UniqueFd file;
    std::uint64_t appends = 0;
  };
  Result<SyncTicket> begin_sync();
  void end_sync(std::uint64_t covered) noexcept;
  // fdatasync of both index files, for a segment about to be trusted (open_trusted).
  Result<void> sync_indexes();
  // Its index files are on disk as they are in memory (synced, or loaded by open_trusted).
  bool indexes_durable() const noexcept { return indexes_durable_; }
  // Nothing appended since the log file was last synced, or opened trusted (below the recovery
  // point); a segment read back at open may hold what only the page cache has.
  bool log_synced() const noexcept { return log_synced_; }
  // Read back at open, and neither synced nor handed to a sync since.
  bool read_back_unsynced() const noexcept { return read_back_unsynced_; }
  // Handles of its files for a sync elsewhere (duplicates: they outlive the segment): the log
  // (with `log`) and the two indexes, whose sync it then counts as done. A file that cannot be
  // duplicated (no descriptors left) is synced here instead; an error if that fails.
  Result<std::vector<UniqueFd>> handles_to_sync(bool log);

  // The file position of the first batch whose last offset is at or after `offset` (the batch
  // that holds it, or the next one when an aborted claim skipped it): an index lookup, then a
  // scan of batch headers. kOutOfRange outside [base_offset(), next_offset()).
  Result<std::uint64_t> find(Offset offset);
  // The position of the first batch whose max timestamp is at or after `timestamp_ms`
  // (time index, then a scan); kOutOfRange when none is.
  Result<std::uint64_t> find_time(std::int64_t timestamp_ms);
  // Reads whole batches starting at `position` into `out` (up to its size); returns the bytes
  // read, always a whole number of batches (0 at the end; kResourceExhausted when the first batch
  // does not fit in `out`). Lookups and reads flush first; when that fails (a full disk) they
  // serve what is in the file.
  Result<std::size_t> read(std::uint64_t position, std::span<std::byte> out);
  // The one batch at `position`, whole, whatever its size.
  Result<std::vector<std::byte>> read_batch(std::uint64_t position);
  // Takes the segment's three files out of the log (retention, a truncation, a reset): appends
  // stop, and each file is renamed to its name + `suffix`. A rename is cheap whatever the size;
  // freeing a large file's blocks is not (up to a second per GiB on a discard mount), so that is
  // left to whoever deletes the renamed files. Returns their paths.
  Result<std::vector<std::string>> retire_files(std::string_view suffix);
  // A closed segment takes no more appends: its direct-write handle is closed (a log of many
  // segments would otherwise hold one more descriptor each).
  void seal() noexcept;

  Offset base_offset() const noexcept { return base_; }
  Offset next_offset() const noexcept { return next_; }
  std::uint64_t size_bytes() const noexcept { return size_; }
  // Bytes in the file, up to a batch boundary (the rest of size_bytes() is buffered or being
  // written), and the offset that follows them.
  std::uint64_t written_bytes() const noexcept { return written_; }
  Offset written_next_offset() const noexcept { return written_next_; }
  bool writes_in_flight() const noexcept { return !flights_.empty(); }
  // Whether direct writes go through io_uring (false before the first, or where it is refused).
  bool writes_with_io_uring() const noexcept { return io_ring_ != nullptr; }
  std::int64_t max_timestamp() const noexcept { return max_timestamp_; }
  const std::vector<IndexEntry>& index() const noexcept { return index_; }
  const std::vector<TimeIndexEntry>& time_index() const noexcept { return time_index_; }
  const std::string& log_path() const noexcept { return log_path_; }

 private:
  // A write handed to the kernel (or done, waiting for an earlier one to finish): file bytes
  // [begin, end) from buffers_[buffer]. Flights are contiguous and kept oldest first.
  struct Flight {
    enum class State : unsigned char { kInFlight, kDone, kFailed };
    std::uint64_t begin = 0;
    std::uint64_t end = 0;
    std::uint64_t boundary = 0;  // the last batch boundary at or before end...
    Offset next{0};              // ... and the offset after it
    std::uint64_t tag = 0;
    std::size_t buffer = 0;
    bool direct = false;
    State state = State::kInFlight;
    int error = 0;
  };
  // A batch's end and the offset after it, for finding the boundary a write ends after.
  struct Boundary {
    std::uint64_t end = 0;
    Offset next{0};
  };
  static constexpr std::size_t kRecentBoundaries = 64;

  Segment(Offset base, const SegmentOptions& options);
  Result<void> open_files(const std::string& dir, bool create);
  bool load_indexes();  // false: the index files do not hold together
  // Hands the filling buffer to the kernel: everything (`whole`), or its whole blocks only, the
  // ragged tail moving to the next buffer.
  Result<void> start_writes(bool whole);
  // Writes [begin, end) of buffer `buffer` now (pwrite) or in the background; records a flight.
  void write_range(std::size_t buffer, std::uint64_t begin, std::uint64_t end, bool direct);
  Result<std::size_t> free_buffer();  // waits for a write to finish when every buffer is busy
  void finish(Flight& flight, std::int32_t result);
  void collect(bool wait);
  void wait_for_writes();  // until no flight is in flight (failed ones stay)
  Result<void> retry_failed();
  void advance_written();
  Boundary boundary_at_or_before(std::uint64_t end) const;
  Error flight_error(const Flight& flight) const;
  Result<void> recover(bool last, bool unsynced, SegmentRecovery& recovery);
  Result<void> write_indexes();
  std::uint64_t readable_end();  // flushes if it can; the bytes in the file
  void note_batch(std::uint64_t position, Offset last, std::int64_t max_timestamp, std::size_t bytes);

  SegmentOptions options_;
  std::string log_path_, index_path_, time_index_path_;
  UniqueFd log_, index_file_, time_index_file_;
  Offset base_;
  Offset next_;
  std::uint64_t size_ = 0;
  std::uint64_t bytes_since_index_ = 0;
  std::int64_t max_timestamp_ = -1;
  std::vector<IndexEntry> index_;
  std::vector<TimeIndexEntry> time_index_;
  std::vector<WriteBuffer> buffers_;  // the filling one, and those the kernel may be writing from
  std::size_t filling_ = 0;            // appends go to buffers_[filling_], which starts at...
  std::uint64_t filling_at_ = 0;       // ... this file offset and ends at size_
  std::vector<Flight> flights_;
  std::uint64_t next_tag_ = 1;
  std::uint64_t written_ = 0;
  Offset written_next_;
  Boundary recent_[kRecentBoundaries];  // the last batches' ends, a circle
  std::size_t recent_count_ = 0;
  std::unique_ptr<IoRing> io_ring_;     // created at the first direct write; closed at seal()
  bool io_ring_refused_ = false;
  bool indexes_durable_ = false;
  bool log_synced_ = true;              // false from an append (or a read-back open) to the next sync
  std::uint64_t appends_ = 0;           // counts every append: what a sync off the lock covered
  bool read_back_unsynced_ = false;
  UniqueFd direct_;                     // the log opened with O_DIRECT (invalid: buffered only)
  std::size_t direct_alignment_ = 4096;
  std::size_t index_written_ = 0;       // entries already in the index file
  std::size_t time_index_written_ = 0;  // entries already in the time index file
};

// A read-only walk over a `.log` file, as `weft dump` makes: every batch's length, CRC and
// offset order checked, nothing changed. `on_batch` sees each good batch and its position; the
// walk stops at the first bad one, which `problem` describes (empty: the whole file is good).
struct LogScan {
  std::uint64_t batches = 0;
  std::uint64_t valid_bytes = 0;
  std::uint64_t file_bytes = 0;
  Offset first{-1};
  Offset next{-1};
  std::string problem;
};
Result<LogScan> scan_log(const std::string& path, const std::function<void(std::uint64_t, const BatchView&)>& on_batch = {});

}  // namespace weft::storage
