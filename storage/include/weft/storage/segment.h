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

#include "weft/fabric/record_batch.h"
#include "weft/fabric/result.h"
#include "weft/fabric/shared_memory.h"
#include "weft/fabric/types.h"

namespace weft::storage {

// "00000000000000000042.log" for base 42 and extension ".log".
std::string segment_file_name(Offset base, std::string_view extension);

struct SegmentOptions {
  std::size_t index_interval_bytes = 4096;  // Kafka's index.interval.bytes
  std::size_t write_buffer_bytes = std::size_t{1} << 20;
  // Whole blocks of a large flush go to the disk with O_DIRECT, skipping the page cache's copy
  // (with the alignment statx reports for the file); the ragged ends of each flush are written
  // through the page cache. Where O_DIRECT is refused (tmpfs on older kernels), all is buffered.
  bool direct_io = true;
};

// Appended bytes not yet written, laid out so that the byte for file offset F sits at an address
// congruent to F modulo the alignment: whole blocks go to the file with O_DIRECT straight from it.
class WriteBuffer {
 public:
  // Empty; the next byte appended belongs at `file_offset`.
  void reset(std::uint64_t file_offset, std::size_t alignment);
  void append(std::span<const std::byte> bytes);
  bool empty() const noexcept { return size_ == 0; }
  std::size_t size() const noexcept { return size_; }
  const std::byte* data() const noexcept { return storage_.get() + pad_; }

 private:
  struct Free {
    void operator()(std::byte* p) const noexcept;
  };
  std::unique_ptr<std::byte[], Free> storage_;
  std::size_t capacity_ = 0;
  std::size_t pad_ = 0;  // file_offset % alignment: where the first byte sits
  std::size_t size_ = 0;
  std::size_t alignment_ = 4096;
};

// What opening an existing segment found and did.
struct SegmentRecovery {
  std::uint64_t batches = 0;
  std::uint64_t valid_bytes = 0;
  std::uint64_t truncated_bytes = 0;  // a torn or corrupt tail cut off (last segment only)
  Offset truncated_from{-1};          // the offset where the cut began, when known
  bool index_rebuilt = false;
  std::string reason;  // why the tail was cut, for the log
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
  // in any other segment it is an error (kCorrupt): its data cannot be trusted.
  static Result<Segment> open(const std::string& dir, Offset base, bool last, SegmentRecovery* recovery = nullptr,
                              const SegmentOptions& options = {});

  Segment(Segment&&) noexcept = default;
  Segment& operator=(Segment&&) noexcept = default;
  // Writes what is still buffered, as closing a file does; flush() first to see errors.
  ~Segment();

  // Appends one validated batch whose baseOffset is at least next_offset() (offsets an aborted
  // claim skipped leave a gap, as in the ring). Appends gather in a buffer (one write per
  // write_buffer_bytes, not one per batch); flush() hands them to the page cache. An append
  // that fails took nothing; a flush that fails (a full disk) keeps the buffer for the next one.
  Result<void> append(std::span<const std::byte> batch);
  Result<void> flush();
  // flush(), then fdatasync of the log (the indexes are derived: rebuilt on open).
  Result<void> sync();

  // The file position of the first batch whose last offset is at or after `offset` (the batch
  // that holds it, or the next one when an aborted claim skipped it): an index lookup, then a
  // scan of batch headers. kOutOfRange outside [base_offset(), next_offset()).
  Result<std::uint64_t> find(Offset offset);
  // The position of the first batch whose max timestamp is at or after `timestamp_ms`
  // (time index, then a scan); kOutOfRange when none is.
  Result<std::uint64_t> find_time(std::int64_t timestamp_ms);
  // Reads whole batches starting at `position` into `out` (up to its size); returns the bytes
  // read, always a whole number of batches (0 at the end). Lookups and reads flush first; when
  // that fails (a full disk) they serve what is in the file.
  Result<std::size_t> read(std::uint64_t position, std::span<std::byte> out);
  // The one batch at `position`, whole, whatever its size.
  Result<std::vector<std::byte>> read_batch(std::uint64_t position);
  // Deletes the segment's three files (retention, or its topic was deleted).
  Result<void> remove_files();
  // A closed segment takes no more appends: its direct-write handle is closed (a log of many
  // segments would otherwise hold one more descriptor each).
  void seal() noexcept { direct_ = UniqueFd(); }

  Offset base_offset() const noexcept { return base_; }
  Offset next_offset() const noexcept { return next_; }
  std::uint64_t size_bytes() const noexcept { return size_; }
  // Bytes in the file (the rest of size_bytes() waits in the write buffer).
  std::uint64_t written_bytes() const noexcept { return size_ - pending_.size(); }
  std::int64_t max_timestamp() const noexcept { return max_timestamp_; }
  const std::vector<IndexEntry>& index() const noexcept { return index_; }
  const std::vector<TimeIndexEntry>& time_index() const noexcept { return time_index_; }
  const std::string& log_path() const noexcept { return log_path_; }

 private:
  Segment(Offset base, const SegmentOptions& options) : options_(options), base_(base), next_(base) {}
  Result<void> open_files(const std::string& dir, bool create);
  Result<void> recover(bool last, SegmentRecovery& recovery);
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
  WriteBuffer pending_;                 // appended, not yet written; starts at size_ - pending_.size()
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
