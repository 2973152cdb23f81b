#include "weft/storage/segment.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <new>
#include <optional>

#include "weft/fabric/log.h"
#include "weft/fabric/record_batch.h"

namespace weft::storage {
namespace {

// Kafka keeps segments under 2 GiB so positions fit the index's int32.
constexpr std::uint64_t kMaxSegmentBytes = std::uint64_t{INT32_MAX};
// A batch length beyond this in a file is corruption, not data (Kafka's message.max.bytes is 1 MiB).
constexpr std::uint64_t kMaxBatchBytes = std::uint64_t{64} << 20;
// Smaller flushes (a durable acknowledgement's few batches) are not worth splitting three ways.
constexpr std::size_t kDirectMinBytes = 64 * 1024;

// The alignment O_DIRECT needs for this file: statx's report where the kernel gives one, else a
// page (which every file system that takes O_DIRECT accepts). 0: the file cannot do direct I/O.
std::size_t direct_alignment(int fd) {
#if defined(STATX_DIOALIGN)
  struct statx sx{};
  if (::statx(fd, "", AT_EMPTY_PATH, STATX_DIOALIGN, &sx) == 0 && (sx.stx_mask & STATX_DIOALIGN) != 0) {
    if (sx.stx_dio_offset_align == 0) return 0;
    return std::max<std::size_t>({4096, sx.stx_dio_mem_align, sx.stx_dio_offset_align});
  }
#else
  (void)fd;
#endif
  return 4096;
}

// 0, or the errno of the write that failed.
int pwrite_all(int fd, std::span<const std::byte> bytes, std::uint64_t at) {
  while (!bytes.empty()) {
    const ssize_t n = pwrite(fd, bytes.data(), bytes.size(), static_cast<off_t>(at));
    if (n < 0) {
      if (errno == EINTR) continue;
      return errno;
    }
    if (n == 0) return EIO;
    bytes = bytes.subspan(static_cast<std::size_t>(n));
    at += static_cast<std::uint64_t>(n);
  }
  return 0;
}

Result<void> write_all(int fd, std::span<const std::byte> bytes, std::uint64_t at, const std::string& what) {
  if (const int error = pwrite_all(fd, bytes, at); error != 0) {
    const Errc code = error == ENOSPC || error == EDQUOT ? Errc::kResourceExhausted : (error == EINVAL ? Errc::kInvalidArgument : Errc::kIo);
    return os_error(code, "writing " + what, error);
  }
  return ok();
}

// Reads exactly bytes.size() bytes, or fewer only at the end of the file.
Result<std::size_t> read_at(int fd, std::span<std::byte> bytes, std::uint64_t at, const std::string& what) {
  std::size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t n = pread(fd, bytes.data() + done, bytes.size() - done, static_cast<off_t>(at + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      return os_error(Errc::kIo, "reading " + what, errno);
    }
    if (n == 0) break;
    done += static_cast<std::size_t>(n);
  }
  return done;
}

// The fields of a batch header needed to walk a log without its records.
struct BatchHeader {
  Offset base;
  std::uint64_t total_bytes = 0;  // the whole batch, log overhead included
  std::int32_t last_offset_delta = 0;
  std::int64_t max_timestamp = 0;
};

BatchHeader header_of(const std::byte* p) {
  BatchHeader h;
  h.base = Offset{wire::load_be64(p + batch_field::kBaseOffset)};
  h.total_bytes = kBatchLogOverhead + static_cast<std::uint32_t>(wire::load_be32(p + batch_field::kBatchLength));
  h.last_offset_delta = wire::load_be32(p + batch_field::kLastOffsetDelta);
  h.max_timestamp = wire::load_be64(p + batch_field::kMaxTimestamp);
  return h;
}

void put_be32(std::byte* p, std::int32_t v) { wire::store_be32(p, v); }

// One past the last offset a segment based at `base` can hold: its indexes' relative offsets
// are 32-bit, as in Kafka (saturating at the top of the offset range).
Offset index_end(Offset base) { return Offset{base.value > INT64_MAX - INT32_MAX - 1 ? INT64_MAX : base.value + INT32_MAX + 1}; }

// The offsets a walk of a segment's batches allows next: from `after` (the batch before ended
// just below it) to below `next` (the segment's end); and, when set, where the first batch
// walked must end (the offset of the index entry the walk starts from).
struct OffsetWindow {
  Offset after;
  Offset next;
  Offset first_last{-1};
};

// Why the header at `position` cannot be where it is, or nothing when it can: a length below a
// header's or above any batch's, offsets outside the segment or not after the batch before. A
// header's base offset and length lie outside the batch's CRC, and a segment opened trusted (from
// its indexes) was not read through, so lookups check every header they walk: a damaged file is
// an error, never a walk that stands still, goes back or serves records under other offsets.
std::optional<Error> misplaced(const BatchHeader& h, const OffsetWindow& w, std::uint64_t position, const std::string& path) {
  const char* why = nullptr;
  if (h.total_bytes < kBatchHeaderBytes || h.total_bytes > kMaxBatchBytes) {
    why = "a length no batch has";
  } else if (h.last_offset_delta < 0) {
    why = "a negative last offset delta";
  } else if (h.base < w.after) {
    why = "a base offset not after the batch before it";
  } else if (h.base.value > w.next.value - 1 - h.last_offset_delta) {  // last >= next, without overflow
    why = "offsets past the segment's end";
  } else if (w.first_last.value >= 0 && h.base + h.last_offset_delta != w.first_last) {
    why = "a last offset other than its index entry's";
  }
  if (why == nullptr) return std::nullopt;
  return Error{Errc::kCorrupt, path + ": the batch header at byte " + std::to_string(position) + " has " + why + " (base offset " +
                                   std::to_string(h.base.value) + "; the segment is damaged)"};
}

// Walks batch headers from `position` (a batch start) to `end`, returning the position of the
// first batch `wanted` accepts; nothing when none does. Every header walked must fit `window`,
// which moves past each (kCorrupt otherwise).
Result<std::optional<std::uint64_t>> first_header_from(int fd, const std::string& path, std::uint64_t position, std::uint64_t end,
                                                       OffsetWindow window, const std::function<bool(const BatchHeader&)>& wanted) {
  std::byte header[kBatchHeaderBytes];
  while (position < end) {
    WEFT_TRY(const std::size_t got, read_at(fd, header, position, path));
    if (got < kBatchHeaderBytes) break;
    const BatchHeader h = header_of(header);
    if (std::optional<Error> bad = misplaced(h, window, position, path)) return *bad;
    if (wanted(h)) return std::optional<std::uint64_t>(position);
    window.after = h.base + h.last_offset_delta + 1;
    window.first_last = Offset{-1};
    position += h.total_bytes;
  }
  return std::optional<std::uint64_t>();
}

}  // namespace

std::string segment_file_name(Offset base, std::string_view extension) {
  char name[32];
  std::snprintf(name, sizeof(name), "%020lld", static_cast<long long>(base.value));
  return std::string(name) + std::string(extension);
}

Result<void> Segment::open_files(const std::string& dir, bool create) {
  log_path_ = dir + "/" + segment_file_name(base_, ".log");
  index_path_ = dir + "/" + segment_file_name(base_, ".index");
  time_index_path_ = dir + "/" + segment_file_name(base_, ".timeindex");
  const int log_flags = O_RDWR | O_CLOEXEC | (create ? O_CREAT | O_EXCL : 0);
  log_ = UniqueFd(::open(log_path_.c_str(), log_flags, 0644));
  if (!log_.valid())
    return os_error(errno == EEXIST ? Errc::kAlreadyExists : (errno == ENOENT ? Errc::kNotFound : Errc::kIo), "opening " + log_path_, errno);
  // Something else standing at a segment's path (a FIFO or a device put there by hand) would
  // block a read for good or fail it later: refused here, by name.
  auto is_regular = [](const UniqueFd& file) {
    struct stat st {};
    return fstat(file.get(), &st) == 0 && S_ISREG(st.st_mode);
  };
  auto not_a_file = [&]() {
    if (create) ::unlink(log_path_.c_str());
    return Error{Errc::kCorrupt, "a file of " + log_path_ + "'s segment is not a regular file; move it away to serve this partition"};
  };
  if (!is_regular(log_)) return not_a_file();
  if (options_.direct_io) {
    direct_alignment_ = direct_alignment(log_.get());
    if (direct_alignment_ > 0 && direct_alignment_ <= (std::size_t{1} << 16))
      direct_ = UniqueFd(::open(log_path_.c_str(), O_WRONLY | O_DIRECT | O_CLOEXEC));  // refused: buffered only
    if (!direct_.valid()) direct_alignment_ = 4096;
  }
  // The indexes are derived data: rebuilt from the log whenever a segment is opened.
  // A segment being created that cannot get its indexes is removed again: left behind, its
  // empty .log would make every retry fail with "exists".
  auto undo = [&](const std::string& path, int error) {
    if (create) ::unlink(log_path_.c_str());
    return os_error(error == ENOSPC ? Errc::kResourceExhausted : Errc::kIo, "opening " + path, error);
  };
  // Never O_TRUNC: ext4 flushes a file cut to zero and written again when it is closed
  // (auto_da_alloc), which cost a restart of 1 000 partitions 2 s of waiting. A rebuilt index
  // is written over the old one and cut to its length (recover()); a new segment's are cut
  // below (stale files a crash left between two unlinks).
  const int index_flags = O_RDWR | O_CREAT | O_CLOEXEC;
  index_file_ = UniqueFd(::open(index_path_.c_str(), index_flags, 0644));
  if (!index_file_.valid()) return undo(index_path_, errno);
  time_index_file_ = UniqueFd(::open(time_index_path_.c_str(), index_flags, 0644));
  if (!time_index_file_.valid()) return undo(time_index_path_, errno);
  if (!is_regular(index_file_) || !is_regular(time_index_file_)) return not_a_file();
  if (create && (ftruncate(index_file_.get(), 0) != 0 || ftruncate(time_index_file_.get(), 0) != 0)) return undo(index_path_, errno);
  return ok();
}

Result<Segment> Segment::create(const std::string& dir, Offset base, const SegmentOptions& options) {
  if (base.value < 0) return Error{Errc::kInvalidArgument, "segment base offset must not be negative"};
  Segment s(base, options);
  WEFT_TRY_VOID(s.open_files(dir, true));
  return s;
}

Result<Segment> Segment::open(const std::string& dir, Offset base, bool last, SegmentRecovery* recovery,
                              const SegmentOptions& options, bool unsynced) {
  if (base.value < 0) return Error{Errc::kInvalidArgument, "segment base offset must not be negative"};
  Segment s(base, options);
  WEFT_TRY_VOID(s.open_files(dir, false));
  SegmentRecovery local;
  WEFT_TRY_VOID(s.recover(last, unsynced, recovery != nullptr ? *recovery : local));
  return s;
}

Result<std::vector<UniqueFd>> Segment::handles_to_sync(bool log) {
  std::vector<UniqueFd> handles;
  for (const UniqueFd* file : {log ? &log_ : nullptr, &index_file_, &time_index_file_}) {
    if (file == nullptr || !file->valid()) continue;
    UniqueFd copy(::fcntl(file->get(), F_DUPFD_CLOEXEC, 0));
    if (copy.valid()) {
      handles.push_back(std::move(copy));
    } else if (::fdatasync(file->get()) != 0) {
      return os_error(Errc::kIo, "fdatasync of a closed segment's file, " + log_path_ + " or its index", errno);
    }
  }
  indexes_durable_ = true;
  if (log) read_back_unsynced_ = false;
  return handles;
}

Result<Segment> Segment::open_trusted(const std::string& dir, Offset base, SegmentRecovery* recovery, const SegmentOptions& options) {
  if (base.value < 0) return Error{Errc::kInvalidArgument, "segment base offset must not be negative"};
  Segment s(base, options);
  WEFT_TRY_VOID(s.open_files(dir, false));
  if (!s.load_indexes()) return open(dir, base, false, recovery, options);
  if (recovery != nullptr) recovery->trusted = true;
  s.indexes_durable_ = true;
  return s;
}

bool Segment::load_indexes() {
  struct stat st{};
  if (fstat(log_.get(), &st) != 0) return false;
  const auto file_bytes = static_cast<std::uint64_t>(st.st_size);
  if (file_bytes > kMaxSegmentBytes) return false;
  auto read_file = [](int fd, std::size_t entry) -> std::optional<std::vector<std::byte>> {
    struct stat f{};
    if (fstat(fd, &f) != 0 || f.st_size < 0 || static_cast<std::size_t>(f.st_size) % entry != 0 || f.st_size > (off_t{1} << 30))
      return std::nullopt;
    std::vector<std::byte> bytes(static_cast<std::size_t>(f.st_size));
    Result<std::size_t> got = read_at(fd, bytes, 0, "");
    if (!got.ok() || *got != bytes.size()) return std::nullopt;
    return bytes;
  };
  const std::optional<std::vector<std::byte>> index = read_file(index_file_.get(), 8);
  const std::optional<std::vector<std::byte>> times = read_file(time_index_file_.get(), 12);
  if (!index || !times) return false;
  // The first batch makes an entry in both; no more entries than batches fit in the log.
  if (index->empty() != times->empty() || index->size() / 8 > file_bytes / kBatchHeaderBytes + 1) return false;
  // Kafka's sanity checks: entries in order, inside the log.
  for (std::size_t i = 0; i < index->size(); i += 8) {
    const IndexEntry e{wire::load_be32(index->data() + i), wire::load_be32(index->data() + i + 4)};
    if (e.relative_offset < 0 || e.position < 0 || static_cast<std::uint64_t>(e.position) >= file_bytes) return false;
    if (!index_.empty() && (e.relative_offset <= index_.back().relative_offset || e.position <= index_.back().position)) return false;
    index_.push_back(e);
  }
  for (std::size_t i = 0; i < times->size(); i += 12) {
    const TimeIndexEntry e{wire::load_be64(times->data() + i), wire::load_be32(times->data() + i + 8)};
    if (e.relative_offset < 0 || (!index_.empty() && e.relative_offset > index_.back().relative_offset)) return false;
    if (!time_index_.empty() && (e.timestamp <= time_index_.back().timestamp || e.relative_offset < time_index_.back().relative_offset))
      return false;
    time_index_.push_back(e);
  }
  // The batches from the last indexed one to the end, header by header: they give the next
  // offset and the largest timestamp, and re-add the last entries exactly as appends made them.
  // The largest timestamp up to the last indexed batch is the time index's last entry (an entry
  // is added whenever an indexed batch finds the maximum grown).
  max_timestamp_ = time_index_.empty() ? -1 : time_index_.back().timestamp;
  std::uint64_t position = 0;
  if (!index_.empty()) {
    position = static_cast<std::uint64_t>(index_.back().position);
    if (!time_index_.empty() && time_index_.back().relative_offset == index_.back().relative_offset) time_index_.pop_back();
    index_.pop_back();
    next_ = Offset{base_.value + (index_.empty() ? 0 : index_.back().relative_offset + 1)};  // a lower bound
    bytes_since_index_ = options_.index_interval_bytes;
  }
  index_written_ = index_.size();
  time_index_written_ = time_index_.size();
  std::byte header[kBatchHeaderBytes];
  while (position < file_bytes) {
    Result<std::size_t> got = read_at(log_.get(), header, position, log_path_);
    if (!got.ok() || *got < kBatchHeaderBytes) return false;
    const BatchHeader h = header_of(header);
    // The checks of a lookup's walk, up to what the indexes can hold (the header's base is read
    // from the file, outside the CRC, and may be anything).
    if (h.total_bytes > file_bytes - position || misplaced(h, OffsetWindow{next_, index_end(base_)}, position, log_path_)) return false;
    const Offset last = h.base + h.last_offset_delta;
    note_batch(position, last, h.max_timestamp, h.total_bytes);
    position += h.total_bytes;
  }
  if (position != file_bytes) return false;
  filling_at_ = written_ = size_ = file_bytes;
  written_next_ = next_;
  // An entry the walk added (an index file cut short) goes to the file now.
  return write_indexes().ok();
}

Result<void> Segment::sync_indexes() {
  WEFT_TRY_VOID(flush());
  if (fdatasync(index_file_.get()) != 0) return os_error(Errc::kIo, "fdatasync " + index_path_, errno);
  if (fdatasync(time_index_file_.get()) != 0) return os_error(Errc::kIo, "fdatasync " + time_index_path_, errno);
  indexes_durable_ = true;
  return ok();
}

void Segment::note_batch(std::uint64_t position, Offset last, std::int64_t max_timestamp, std::size_t bytes) {
  max_timestamp_ = std::max(max_timestamp_, max_timestamp);
  // Kafka's rule: an index entry once index_interval_bytes of log have gone by since the last
  // one, naming the batch's last offset and its start; the time index grows with it when the
  // largest timestamp so far moved.
  if (index_.empty() || bytes_since_index_ >= options_.index_interval_bytes) {
    const auto relative = static_cast<std::int32_t>(last.value - base_.value);
    index_.push_back(IndexEntry{relative, static_cast<std::int32_t>(position)});
    if (time_index_.empty() || max_timestamp_ > time_index_.back().timestamp)
      time_index_.push_back(TimeIndexEntry{max_timestamp_, relative});
    bytes_since_index_ = 0;
  }
  bytes_since_index_ += bytes;
  next_ = Offset{last.value + 1};
  size_ = position + bytes;
}

Result<void> Segment::write_indexes() {
  if (index_written_ < index_.size()) {
    std::vector<std::byte> bytes((index_.size() - index_written_) * 8);
    for (std::size_t i = index_written_; i < index_.size(); ++i) {
      std::byte* p = bytes.data() + (i - index_written_) * 8;
      put_be32(p, index_[i].relative_offset);
      put_be32(p + 4, index_[i].position);
    }
    WEFT_TRY_VOID(write_all(index_file_.get(), bytes, index_written_ * 8, index_path_));
    index_written_ = index_.size();
  }
  if (time_index_written_ < time_index_.size()) {
    std::vector<std::byte> bytes((time_index_.size() - time_index_written_) * 12);
    for (std::size_t i = time_index_written_; i < time_index_.size(); ++i) {
      std::byte* p = bytes.data() + (i - time_index_written_) * 12;
      wire::store_be64(p, time_index_[i].timestamp);
      put_be32(p + 8, time_index_[i].relative_offset);
    }
    WEFT_TRY_VOID(write_all(time_index_file_.get(), bytes, time_index_written_ * 12, time_index_path_));
    time_index_written_ = time_index_.size();
  }
  return ok();
}

Segment::Segment(Offset base, const SegmentOptions& options) : options_(options), base_(base), next_(base), written_next_(base) {
  buffers_.resize(1);
}

Segment::Segment(Segment&&) noexcept = default;

Result<void> Segment::append(std::span<const std::byte> batch) { return append(batch, -1); }

Result<void> Segment::append(std::span<const std::byte> batch, std::int32_t leader_epoch) {
  WEFT_TRY(const BatchView view, BatchView::parse_header(batch, false));
  const Offset base = view.base_offset();
  if (base < next_)
    return Error{Errc::kInvalidArgument, "batch at offset " + std::to_string(base.value) + " is behind the segment's next offset " +
                                             std::to_string(next_.value)};
  if (view.last_offset() >= index_end(base_))
    return Error{Errc::kResourceExhausted, "offsets beyond 2^31 past the segment's base: roll to a new segment"};
  if (size_ + batch.size() > kMaxSegmentBytes)
    return Error{Errc::kResourceExhausted, "segment " + log_path_ + " would pass 2 GiB: roll to a new segment"};
  // The buffer starts writing before it would overflow, never after taking the batch: an
  // append that fails took nothing, so the caller can offer the same batch again.
  WriteBuffer* filling = &buffers_[filling_];
  if (!filling->empty() && filling->size() + batch.size() > options_.write_buffer_bytes) {
    WEFT_TRY_VOID(start_writes(false));
    filling = &buffers_[filling_];
  }
  const std::uint64_t position = size_;
  if (filling->empty()) {
    filling->reset(size_, direct_alignment_);
    filling_at_ = size_;
  }
  const std::span<std::byte> kept = filling->append(batch);
  log_synced_ = false;
  ++appends_;
  if (leader_epoch >= 0 && view.partition_leader_epoch() < 0) stamp_partition_leader_epoch(kept, leader_epoch);
  note_batch(position, view.last_offset(), view.max_timestamp(), batch.size());
  recent_[recent_count_++ % kRecentBoundaries] = Boundary{size_, next_};
  return ok();
}

Segment::~Segment() {
  if (log_.valid()) (void)flush();
}

Segment::Boundary Segment::boundary_at_or_before(std::uint64_t end) const {
  if (end >= size_) return Boundary{size_, next_};
  const std::size_t known = std::min(recent_count_, kRecentBoundaries);
  for (std::size_t i = 1; i <= known; ++i) {
    const Boundary& b = recent_[(recent_count_ - i) % kRecentBoundaries];
    if (b.end <= end) return b;
  }
  // Further back than the circle reaches: the end of the last write started (a lower boundary
  // only delays what written_bytes() shows).
  if (!flights_.empty()) return Boundary{flights_.back().boundary, flights_.back().next};
  return Boundary{written_, written_next_};
}

Error Segment::flight_error(const Flight& flight) const {
  const int error = flight.error;
  const Errc code = error == ENOSPC || error == EDQUOT ? Errc::kResourceExhausted : Errc::kIo;
  return os_error(code, "writing " + log_path_ + " at byte " + std::to_string(flight.begin), error);
}

void Segment::write_range(std::size_t buffer, std::uint64_t begin, std::uint64_t end, bool direct) {
  if (begin == end) return;
  Flight flight;
  flight.begin = begin;
  flight.end = end;
  const Boundary b = boundary_at_or_before(end);
  flight.boundary = std::max(b.end, flights_.empty() ? written_ : flights_.back().boundary);
  flight.next = flight.boundary == b.end ? b.next : (flights_.empty() ? written_next_ : flights_.back().next);
  flight.buffer = buffer;
  flight.direct = direct;
  flight.tag = next_tag_++;
  const std::span<const std::byte> bytes = buffers_[buffer].range(begin, end);
  direct = direct && direct_.valid();  // a completion may have turned the segment buffered
  if (direct && !io_ring_ && !io_ring_refused_ && options_.io_uring) {
    std::string why;
    io_ring_ = IoRing::create(static_cast<unsigned>(2 * options_.write_buffers), &why);
    if (!io_ring_) {
      io_ring_refused_ = true;
      log(LogLevel::kWarn, "io_uring refused: writing segments with pwrite", {{"reason", why}, {"file", log_path_}});
    }
  }
  flights_.push_back(flight);
  if (direct && io_ring_ && io_ring_->write(direct_.get(), bytes, begin, flight.tag)) return;
  // Small writes through the page cache go at once: io_uring would hand them to a worker thread.
  const int error = pwrite_all(direct ? direct_.get() : log_.get(), bytes, begin);
  finish(flights_.back(), error == 0 ? static_cast<std::int32_t>(bytes.size()) : -error);
}

void Segment::finish(Flight& flight, std::int32_t result) {
  const std::uint64_t length = flight.end - flight.begin;
  if (result >= 0 && static_cast<std::uint64_t>(result) == length) {
    flight.state = Flight::State::kDone;
    return;
  }
  if (result == -EINVAL && flight.direct) direct_ = UniqueFd();  // the file system refuses after all: buffered from now on
  const bool again = result >= 0 || result == -EINVAL || result == -EAGAIN || result == -EINTR;
  if (!again) {
    flight.state = Flight::State::kFailed;
    flight.error = -result;
    return;
  }
  // A short write, or one to do through the page cache: the rest at once.
  const std::uint64_t done = result > 0 ? static_cast<std::uint64_t>(result) : 0;
  const int error = pwrite_all(log_.get(), buffers_[flight.buffer].range(flight.begin + done, flight.end), flight.begin + done);
  flight.state = error == 0 ? Flight::State::kDone : Flight::State::kFailed;
  flight.error = error;
}

void Segment::collect(bool wait) {
  if (io_ring_ && io_ring_->in_flight() > 0) {
    IoCompletion done[16];
    const std::size_t got = io_ring_->reap(done, wait);
    for (std::size_t i = 0; i < got; ++i)
      for (Flight& flight : flights_)
        if (flight.tag == done[i].tag) finish(flight, done[i].result);
  }
  advance_written();
}

void Segment::wait_for_writes() {
  for (;;) {
    bool waiting = false;
    for (const Flight& flight : flights_) waiting = waiting || flight.state == Flight::State::kInFlight;
    if (!waiting) return;
    // A flight in flight is in the ring until it completes (reap waits it out, never gives up).
    WEFT_CHECK(io_ring_ && io_ring_->in_flight() > 0, "a segment write in flight without its ring");
    collect(true);
  }
}

void Segment::advance_written() {
  std::size_t done = 0;
  while (done < flights_.size() && flights_[done].state == Flight::State::kDone) {
    written_ = flights_[done].boundary;
    written_next_ = flights_[done].next;
    ++done;
  }
  if (done > 0) flights_.erase(flights_.begin(), flights_.begin() + static_cast<std::ptrdiff_t>(done));
}

Result<void> Segment::retry_failed() {
  for (Flight& flight : flights_) {
    if (flight.state != Flight::State::kFailed) continue;
    const int fd = flight.direct && direct_.valid() ? direct_.get() : log_.get();
    const int error = pwrite_all(fd, buffers_[flight.buffer].range(flight.begin, flight.end), flight.begin);
    finish(flight, error == 0 ? static_cast<std::int32_t>(flight.end - flight.begin) : -error);
    if (flight.state == Flight::State::kFailed) {
      advance_written();
      return flight_error(flight);
    }
  }
  advance_written();
  return ok();
}

Result<std::size_t> Segment::free_buffer() {
  for (;;) {
    for (std::size_t i = 0; i < buffers_.size(); ++i) {
      if (i == filling_) continue;
      bool busy = false;
      for (const Flight& flight : flights_) busy = busy || flight.buffer == i;
      if (!busy) return i;
    }
    if (buffers_.size() < std::max<std::size_t>(options_.write_buffers, 1) + 1) {
      buffers_.emplace_back();
      return buffers_.size() - 1;
    }
    // Every buffer waits on the disk. A failed write holds its buffer until a flush retries it.
    for (const Flight& flight : flights_)
      if (flight.state == Flight::State::kFailed) return flight_error(flight);
    collect(true);
  }
}

Result<void> Segment::start_writes(bool whole) {
  const std::uint64_t at = filling_at_;
  const std::uint64_t end = size_;
  if (at == end) return ok();
  const std::uint64_t mask = direct_alignment_ - 1;
  const std::uint64_t first = (at + mask) & ~mask;  // whole blocks [first, last) go direct
  const std::uint64_t last = end & ~mask;
  if (!direct_.valid() || end - at < kDirectMinBytes || last <= first) {
    // All through the page cache, at once; on failure the bytes stay in the buffer.
    write_range(filling_, at, end, false);
    if (flights_.back().state == Flight::State::kFailed) {
      const Error error = flight_error(flights_.back());
      flights_.pop_back();
      return error;
    }
    buffers_[filling_].reset(end, direct_alignment_);
    filling_at_ = end;
    advance_written();
    return ok();
  }
  // The buffer that takes the appends next (for a partial hand-off, with the ragged tail).
  WEFT_TRY(const std::size_t next, free_buffer());
  // The ragged ends go through the page cache, the blocks between straight from the buffer (its
  // layout puts them at aligned addresses). The two never share a page, so a direct write
  // forces no write-back of a dirty page.
  if (first > at) {
    write_range(filling_, at, first, false);
    if (flights_.back().state == Flight::State::kFailed) {
      const Error error = flight_error(flights_.back());
      flights_.pop_back();
      return error;
    }
  }
  write_range(filling_, first, last, true);
  if (whole) write_range(filling_, last, end, false);
  const std::size_t handed = filling_;
  filling_ = next;
  if (whole) {
    buffers_[next].reset(end, direct_alignment_);
    filling_at_ = end;
  } else {
    buffers_[next].reset(last, direct_alignment_);
    buffers_[next].append(buffers_[handed].range(last, end));
    filling_at_ = last;
  }
  advance_written();
  return ok();
}

Result<void> Segment::submit(bool more_coming) {
  WEFT_TRY_VOID(start_writes(!more_coming));
  collect(false);
  return write_indexes();
}

Result<void> Segment::poll_writes() {
  collect(false);
  for (const Flight& flight : flights_)
    if (flight.state == Flight::State::kFailed) return flight_error(flight);
  return ok();
}

Result<void> Segment::flush() {
  // Writes in flight finish first (an error returned below leaves none behind), then failed
  // writes are tried again: they come before whatever the filling buffer holds.
  wait_for_writes();
  WEFT_TRY_VOID(retry_failed());
  WEFT_TRY_VOID(start_writes(true));
  wait_for_writes();
  WEFT_TRY_VOID(retry_failed());
  return write_indexes();
}

void Segment::seal() noexcept {
  (void)flush();  // on failure the failed writes stay for a later flush, with pwrite
  wait_for_writes();
  io_ring_.reset();
  direct_ = UniqueFd();
}
void WriteBuffer::Free::operator()(std::byte* p) const noexcept { std::free(p); }

void WriteBuffer::reset(std::uint64_t file_offset, std::size_t alignment) {
  alignment_ = alignment;
  file_offset_ = file_offset;
  pad_ = static_cast<std::size_t>(file_offset % alignment);
  size_ = 0;
}

std::span<std::byte> WriteBuffer::append(std::span<const std::byte> bytes) {
  if (bytes.empty()) return {};
  const std::size_t needed = pad_ + size_ + bytes.size();
  if (needed > capacity_) {
    // Grows by doubling, aligned, keeping the pad so addresses stay congruent to file offsets.
    std::size_t capacity = std::max<std::size_t>(capacity_ * 2, std::size_t{1} << 20);
    while (capacity < needed) capacity *= 2;
    capacity = (capacity + alignment_ - 1) / alignment_ * alignment_;
    auto* raw = static_cast<std::byte*>(std::aligned_alloc(alignment_, capacity));
    if (raw == nullptr) throw std::bad_alloc();
    std::unique_ptr<std::byte[], Free> grown(raw);
    if (size_ > 0) std::memcpy(grown.get() + pad_, storage_.get() + pad_, size_);
    storage_ = std::move(grown);
    capacity_ = capacity;
  }
  std::byte* at = storage_.get() + pad_ + size_;
  std::memcpy(at, bytes.data(), bytes.size());
  size_ += bytes.size();
  return {at, bytes.size()};
}

Result<void> Segment::sync() {
  WEFT_TRY_VOID(flush());
  // The log alone: the indexes are rebuilt from it whenever a segment is opened, so syncing
  // them would triple the cost of every durable acknowledgement for nothing.
  if (fdatasync(log_.get()) != 0) return os_error(Errc::kIo, "fdatasync " + log_path_, errno);
  log_synced_ = true;
  read_back_unsynced_ = false;
  return ok();
}

Result<Segment::SyncTicket> Segment::begin_sync() {
  WEFT_TRY_VOID(flush());
  SyncTicket ticket{UniqueFd(::fcntl(log_.get(), F_DUPFD_CLOEXEC, 0)), appends_};
  if (!ticket.file.valid()) WEFT_TRY_VOID(sync());
  return ticket;
}

void Segment::end_sync(std::uint64_t covered) noexcept {
  if (covered != appends_) return;  // appended to meanwhile: the next sync covers it
  log_synced_ = true;
  read_back_unsynced_ = false;
}

namespace {

// Where a walk over a log file stopped, and why (no problem: at the end of the file).
struct Walk {
  std::uint64_t position = 0;
  std::string problem;
};

// Walks the batches of a log file from its start, checking each one's length, CRC and offset
// order, and that its last offset is at most `max_last`, calling `on_batch` for each good one;
// stops at the first bad one.
Result<Walk> walk_batches(int fd, const std::string& path, std::uint64_t file_bytes, Offset next, Offset max_last,
                          const std::function<void(std::uint64_t, const BatchView&, std::uint64_t)>& on_batch) {
  // The file is read in windows of up to 256 KiB, each batch checked in place; a batch that
  // runs past a window starts the next one (which grows to hold it). Small at first: a
  // starting node opens thousands of small segments. (Two preads per batch cost a restart with
  // 1 000 partitions of one-record batches about 2 s.)
  std::vector<std::byte> buffer(std::min<std::uint64_t>(file_bytes, std::uint64_t{256} << 10));
  std::uint64_t window_at = 0;  // file position of buffer[0]
  std::size_t window_bytes = 0;
  Walk w;
  while (w.position < file_bytes) {
    const std::uint64_t left = file_bytes - w.position;
    if (left < kBatchHeaderBytes) {
      w.problem = "a batch header cut short (" + std::to_string(left) + " bytes)";
      break;
    }
    auto in_window = [&](std::uint64_t bytes) { return w.position + bytes <= window_at + window_bytes; };
    auto load = [&](std::uint64_t at_least) -> Result<void> {
      if (at_least > buffer.size()) buffer.resize(static_cast<std::size_t>(at_least));
      const std::size_t want = static_cast<std::size_t>(std::min<std::uint64_t>(buffer.size(), file_bytes - w.position));
      WEFT_TRY(window_bytes, read_at(fd, std::span(buffer.data(), want), w.position, path));
      window_at = w.position;
      return ok();
    };
    if (!in_window(kBatchHeaderBytes)) WEFT_TRY_VOID(load(kBatchHeaderBytes));
    if (!in_window(kBatchHeaderBytes)) {
      w.problem = "a batch header cut short";
      break;
    }
    const BatchHeader h = header_of(buffer.data() + (w.position - window_at));
    if (h.total_bytes < kBatchHeaderBytes || h.total_bytes > kMaxBatchBytes) {
      w.problem = "a batch length of " + std::to_string(h.total_bytes) + " bytes";
      break;
    }
    if (h.total_bytes > left) {
      w.problem = "a batch of " + std::to_string(h.total_bytes) + " bytes with " + std::to_string(left) + " left in the file";
      break;
    }
    if (!in_window(h.total_bytes)) WEFT_TRY_VOID(load(h.total_bytes));
    if (!in_window(h.total_bytes)) {
      w.problem = "a batch cut short";
      break;
    }
    const std::span<const std::byte> bytes(buffer.data() + (w.position - window_at), static_cast<std::size_t>(h.total_bytes));
    Result<BatchView> view = BatchView::parse(bytes);
    if (!view.ok()) {
      w.problem = view.error().message;
      break;
    }
    if (view->base_offset() < next) {
      w.problem = "offset " + std::to_string(view->base_offset().value) + " after " + std::to_string(next.value - 1);
      break;
    }
    // baseOffset lies outside the CRC: a flipped bit there passes every other check.
    if (view->base_offset() > max_last - view->last_offset_delta()) {
      w.problem = "offsets " + std::to_string(view->base_offset().value) + " + " + std::to_string(view->last_offset_delta()) +
                  " past " + std::to_string(max_last.value);
      break;
    }
    on_batch(w.position, *view, h.total_bytes);
    next = view->last_offset() + 1;
    w.position += h.total_bytes;
  }
  return w;
}

}  // namespace

namespace {

// Whether the log file from `position` (where a walk stopped) ends early, as a crash leaves
// writes that never reached the disk: a batch cut short by the file's end, a whole page of
// zeros under the batch there, or the batch running into zeros that last to the file's end
// (write-back goes a page at a time; when the zero pages begin inside the batch's header, its
// length reads as nonsense). Anything else (a batch whose bytes are all there and wrong) is damage.
Result<bool> ends_early(int fd, const std::string& path, std::uint64_t position, std::uint64_t file_bytes) {
  constexpr std::uint64_t kPage = 4096;
  const std::uint64_t left = file_bytes - position;
  if (left < kBatchHeaderBytes) return true;
  std::byte header[kBatchHeaderBytes];
  WEFT_TRY(const std::size_t got, read_at(fd, header, position, path));
  if (got < sizeof header) return true;
  const BatchHeader h = header_of(header);
  const bool sane = h.total_bytes >= kBatchHeaderBytes && h.total_bytes <= kMaxBatchBytes;
  if (sane && h.total_bytes > left) return true;
  // Write-back and direct writes in flight need not reach the disk in order: a whole page of
  // zeros under the bad batch (under its header, when its length is nonsense) is a write that
  // never landed, whatever came after it (which no sync can have covered either).
  const std::uint64_t extent_end = std::min(file_bytes, position + (sane ? h.total_bytes : kBatchHeaderBytes));
  std::vector<std::byte> page(kPage);
  for (std::uint64_t at = position / kPage * kPage; at < extent_end && at + kPage <= file_bytes; at += kPage) {
    WEFT_TRY(const std::size_t n, read_at(fd, page, at, path));
    if (n == kPage && std::all_of(page.begin(), page.end(), [](std::byte b) { return b == std::byte{0}; })) return true;
  }
  // Where the zeros that run to the end of the file begin.
  std::uint64_t zeros_from = position;
  std::vector<std::byte> window(static_cast<std::size_t>(std::min<std::uint64_t>(left, std::uint64_t{64} << 10)));
  for (std::uint64_t at = position; at < file_bytes;) {
    const auto want = static_cast<std::size_t>(std::min<std::uint64_t>(window.size(), file_bytes - at));
    WEFT_TRY(const std::size_t n, read_at(fd, std::span(window.data(), want), at, path));
    if (n == 0) break;
    for (std::size_t i = n; i > 0; --i)
      if (window[i - 1] != std::byte{0}) {
        zeros_from = at + i;
        break;
      }
    at += n;
  }
  if (zeros_from == position) return true;
  const std::uint64_t first_zero_page = (zeros_from + kPage - 1) / kPage * kPage;
  if (first_zero_page < position + kBatchHeaderBytes) return true;
  return sane && first_zero_page < position + h.total_bytes;
}

}  // namespace

Result<void> Segment::recover(bool last, bool unsynced, SegmentRecovery& recovery) {
  struct stat st{};
  if (fstat(log_.get(), &st) != 0) return os_error(Errc::kIo, "stat " + log_path_, errno);
  const auto file_bytes = static_cast<std::uint64_t>(st.st_size);
  const Offset max_last = index_end(base_) - 1;
  WEFT_TRY(const Walk w, walk_batches(log_.get(), log_path_, file_bytes, next_, max_last,
                                      [&](std::uint64_t position, const BatchView& view, std::uint64_t bytes) {
                                        note_batch(position, view.last_offset(), view.max_timestamp(), bytes);
                                        ++recovery.batches;
                                        if (const std::int32_t epoch = view.partition_leader_epoch(); epoch >= 0)
                                          (void)add_epoch(recovery.epochs, EpochStart{epoch, view.base_offset()});
                                      }));
  recovery.valid_bytes = w.position;
  if (!w.problem.empty()) {
    bool cut = last;
    if (!cut && unsynced) {
      WEFT_TRY(cut, ends_early(log_.get(), log_path_, w.position, file_bytes));
    }
    if (!cut)
      return Error{Errc::kCorrupt, log_path_ + ": " + w.problem + " at byte " + std::to_string(w.position) +
                                       " of a segment that is not the last: its data cannot be trusted"};
    // The active segment of a node that stopped mid-write, or a closed one whose last writes a
    // crash kept from the disk: cut the torn tail.
    if (ftruncate(log_.get(), static_cast<off_t>(w.position)) != 0) return os_error(Errc::kIo, "truncating " + log_path_, errno);
    recovery.truncated_bytes = file_bytes - w.position;
    recovery.truncated_from = next_;
    recovery.reason = w.problem;
  }
  size_ = w.position;
  filling_at_ = written_ = size_;
  written_next_ = next_;
  recovery.index_rebuilt = true;
  // What it holds may be only in the page cache (a process killed, a node stopped while a closed
  // segment's sync was under way): synced before anything counts it durable.
  log_synced_ = size_ == 0;
  read_back_unsynced_ = size_ != 0;
  WEFT_TRY_VOID(write_indexes());
  if (ftruncate(index_file_.get(), static_cast<off_t>(index_.size() * 8)) != 0 ||
      ftruncate(time_index_file_.get(), static_cast<off_t>(time_index_.size() * 12)) != 0)
    return os_error(Errc::kIo, "cutting the rebuilt indexes of " + log_path_, errno);
  return ok();
}

Result<LogScan> scan_log(const std::string& path, const std::function<void(std::uint64_t, const BatchView&)>& on_batch) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) return os_error(errno == ENOENT ? Errc::kNotFound : Errc::kIo, "opening " + path, errno);
  struct stat st{};
  if (fstat(fd.get(), &st) != 0) return os_error(Errc::kIo, "stat " + path, errno);
  LogScan scan;
  scan.file_bytes = static_cast<std::uint64_t>(st.st_size);
  WEFT_TRY(const Walk w, walk_batches(fd.get(), path, scan.file_bytes, Offset{0}, Offset{INT64_MAX - 1},
                                      [&](std::uint64_t position, const BatchView& view, std::uint64_t) {
                                        if (scan.batches++ == 0) scan.first = view.base_offset();
                                        scan.next = view.last_offset() + 1;
                                        if (on_batch) on_batch(position, view);
                                      }));
  scan.valid_bytes = w.position;
  scan.problem = w.problem;
  return scan;
}

std::uint64_t Segment::readable_end() {
  // Lookups want everything appended: flush it. If the disk is full the buffer stays, and what
  // is in the file still serves (the node's readers never ask for more than it wrote).
  (void)flush();
  return written_bytes();
}

Result<std::uint64_t> Segment::find(Offset offset) {
  const std::uint64_t end = readable_end();
  if (offset < base_ || offset >= next_)
    return Error{Errc::kOutOfRange, "offset " + std::to_string(offset.value) + " is not in segment [" + std::to_string(base_.value) + ", " +
                                        std::to_string(next_.value) + ")"};
  // The last index entry whose last offset lies before the target: its batch ends before it.
  std::uint64_t position = 0;
  const auto relative = static_cast<std::int32_t>(offset.value - base_.value);
  auto it = std::lower_bound(index_.begin(), index_.end(), relative,
                             [](const IndexEntry& e, std::int32_t r) { return e.relative_offset < r; });
  // The entry's batch must end where the entry says, after the entry before.
  OffsetWindow window{base_, next_};
  if (it != index_.begin()) {
    position = static_cast<std::uint64_t>(std::prev(it)->position);
    window.first_last = base_ + std::prev(it)->relative_offset;
    if (std::prev(it) != index_.begin()) window.after = base_ + std::prev(std::prev(it))->relative_offset + 1;
  }
  WEFT_TRY(const std::optional<std::uint64_t> found,
           first_header_from(log_.get(), log_path_, position, end, window,
                             [&](const BatchHeader& h) { return h.base + h.last_offset_delta >= offset; }));
  if (found) return *found;
  if (end < size_)
    return Error{Errc::kUnavailable, "offset " + std::to_string(offset.value) + " of " + log_path_ + " is not written yet (the disk is full)"};
  return Error{Errc::kCorrupt, "segment " + log_path_ + " ends before its next offset " + std::to_string(next_.value)};
}

Result<std::uint64_t> Segment::find_time(std::int64_t timestamp_ms) {
  const std::uint64_t end = readable_end();
  std::uint64_t position = 0;
  auto it = std::lower_bound(time_index_.begin(), time_index_.end(), timestamp_ms,
                             [](const TimeIndexEntry& e, std::int64_t t) { return e.timestamp < t; });
  if (it != time_index_.begin()) {
    // Batches up to that entry's offset all have smaller timestamps: start after them.
    Result<std::uint64_t> at = find(Offset{base_.value + std::prev(it)->relative_offset});
    if (at.ok()) position = *at;
  }
  WEFT_TRY(const std::optional<std::uint64_t> found,
           first_header_from(log_.get(), log_path_, position, end, OffsetWindow{base_, next_},
                             [&](const BatchHeader& h) { return h.max_timestamp >= timestamp_ms; }));
  if (found) return *found;
  return Error{Errc::kOutOfRange, "no batch in " + log_path_ + " has a timestamp at or after " + std::to_string(timestamp_ms)};
}

Result<std::size_t> Segment::read(std::uint64_t position, std::span<std::byte> out) {
  const std::uint64_t end = readable_end();
  if (position >= end) return std::size_t{0};
  const std::size_t want = static_cast<std::size_t>(std::min<std::uint64_t>(out.size(), end - position));
  WEFT_TRY(const std::size_t got, read_at(log_.get(), out.first(want), position, log_path_));
  std::size_t whole = 0;
  OffsetWindow window{base_, next_};
  while (got - whole >= kBatchHeaderBytes) {
    const BatchHeader h = header_of(out.data() + whole);
    // A damaged header ends what this read returns; the read that starts at it is the error.
    if (std::optional<Error> bad = misplaced(h, window, position + whole, log_path_)) {
      if (whole == 0) return *bad;
      break;
    }
    if (h.total_bytes > got - whole) break;
    window.after = h.base + h.last_offset_delta + 1;
    whole += static_cast<std::size_t>(h.total_bytes);
  }
  if (whole == 0 && got > 0)
    return Error{Errc::kResourceExhausted, "the batch at byte " + std::to_string(position) + " of " + log_path_ + " is larger than the " +
                                             std::to_string(out.size()) + "-byte buffer"};
  return whole;
}

Result<std::vector<std::byte>> Segment::read_batch(std::uint64_t position) {
  const std::uint64_t end = readable_end();
  std::byte header[kBatchHeaderBytes];
  WEFT_TRY(const std::size_t got, read_at(log_.get(), header, position, log_path_));
  if (got < kBatchHeaderBytes) return Error{Errc::kOutOfRange, "no batch at byte " + std::to_string(position) + " of " + log_path_};
  const BatchHeader h = header_of(header);
  if (h.total_bytes < kBatchHeaderBytes || position + h.total_bytes > end)
    return Error{Errc::kCorrupt, "the batch at byte " + std::to_string(position) + " of " + log_path_ + " runs past the segment"};
  std::vector<std::byte> batch(h.total_bytes);
  WEFT_TRY(const std::size_t whole, read_at(log_.get(), batch, position, log_path_));
  if (whole != batch.size()) return Error{Errc::kCorrupt, log_path_ + " ended inside the batch at byte " + std::to_string(position)};
  return batch;
}

Result<std::vector<std::string>> Segment::retire_files(std::string_view suffix) {
  // Nothing more reaches these files: writes in flight finish, the rest is dropped.
  wait_for_writes();
  flights_.clear();
  buffers_[filling_].reset(size_, direct_alignment_);
  filling_at_ = size_;
  return rename_segment_files_aside(std::filesystem::path(log_path_).parent_path().string(), base_, suffix);
}

Result<std::vector<std::string>> rename_segment_files_aside(const std::string& dir, Offset base, std::string_view suffix) {
  std::vector<std::string> renamed;
  for (const char* kind : {".log", ".index", ".timeindex"}) {
    const std::string path = dir + "/" + segment_file_name(base, kind);
    std::string aside = path + std::string(suffix);
    if (::rename(path.c_str(), aside.c_str()) == 0) {
      renamed.push_back(std::move(aside));
    } else if (errno != ENOENT && ::unlink(path.c_str()) != 0 && errno != ENOENT) {
      return os_error(Errc::kIo, "deleting " + path, errno);  // not renamed: deleted here, as it was
    }
  }
  return renamed;
}

}  // namespace weft::storage
