#include "weft/storage/segment_log.h"

#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <filesystem>

#include "weft/fabric/record_batch.h"

namespace weft::storage {

Result<std::unique_ptr<SegmentLog>> SegmentLog::open(const std::string& dir, Offset start, SegmentLogOptions options,
                                                     SegmentLogRecovery* recovery) {
  if (options.segment_bytes < kBatchHeaderBytes || options.segment_bytes > std::uint64_t{INT32_MAX})
    return Error{Errc::kInvalidArgument, "segment.bytes must be between 61 and 2147483647"};
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return Error{Errc::kIo, "creating " + dir + ": " + ec.message()};
  // Segments by base offset, from their 20-digit names; anything else in the folder is left be.
  std::vector<std::int64_t> bases;
  for (const auto& entry : std::filesystem::directory_iterator(dir, ec)) {
    const std::string name = entry.path().filename().string();
    if (name.size() != 24 || !name.ends_with(".log")) continue;
    std::int64_t base = 0;
    const auto [end, parse_error] = std::from_chars(name.data(), name.data() + 20, base);
    if (parse_error != std::errc{} || end != name.data() + 20 || base < 0) continue;
    bases.push_back(base);
  }
  if (ec) return Error{Errc::kIo, "listing " + dir + ": " + ec.message()};
  std::sort(bases.begin(), bases.end());
  std::unique_ptr<SegmentLog> log(new SegmentLog(dir, options));
  SegmentLogRecovery local;
  SegmentLogRecovery& found = recovery != nullptr ? *recovery : local;
  for (std::size_t i = 0; i < bases.size(); ++i) {
    const bool last = i + 1 == bases.size();
    SegmentRecovery r;
    WEFT_TRY(Segment segment, Segment::open(dir, Offset{bases[i]}, last, &r, options.segment));
    if (!log->segments_.empty() && segment.base_offset() < log->segments_.back()->next_offset())
      return Error{Errc::kCorrupt, segment.log_path() + " starts at offset " + std::to_string(bases[i]) +
                                       ", inside the segment before it (which ends at " +
                                       std::to_string(log->segments_.back()->next_offset().value) + ")"};
    ++found.segments;
    found.batches += r.batches;
    if (r.truncated_bytes > 0) {
      found.truncated_bytes = r.truncated_bytes;
      found.truncated_from = r.truncated_from;
      found.reason = r.reason;
    }
    log->segments_.push_back(std::make_unique<Segment>(std::move(segment)));
  }
  if (log->segments_.empty()) {
    WEFT_TRY(Segment first, Segment::create(dir, start, options.segment));
    log->segments_.push_back(std::make_unique<Segment>(std::move(first)));
  }
  return log;
}

Result<void> SegmentLog::append(std::span<const std::byte> batch) {
  std::lock_guard lock(mutex_);
  if (removed_) return Error{Errc::kFailedPrecondition, "the log at " + dir_ + " was removed with its topic"};
  Segment* active = segments_.back().get();
  if (active->size_bytes() > 0 && active->size_bytes() + batch.size() > options_.segment_bytes) {
    // Roll: the new segment is named by the offset this batch starts at.
    if (batch.size() < kBatchHeaderBytes) return Error{Errc::kInvalidArgument, "a batch shorter than its header"};
    const Offset base{wire::load_be64(batch.data() + batch_field::kBaseOffset)};
    if (base < active->next_offset())
      return Error{Errc::kInvalidArgument, "batch at offset " + std::to_string(base.value) + " is behind the log's next offset " +
                                               std::to_string(active->next_offset().value)};
    WEFT_TRY_VOID(active->sync());  // a closed segment is complete on disk before the next begins
    WEFT_TRY(Segment next, Segment::create(dir_, base, options_.segment));
    segments_.push_back(std::make_unique<Segment>(std::move(next)));
    active = segments_.back().get();
  }
  return active->append(batch);
}

Result<void> SegmentLog::flush() {
  std::lock_guard lock(mutex_);
  return segments_.back()->flush();
}

Result<void> SegmentLog::sync() {
  std::lock_guard lock(mutex_);
  return segments_.back()->sync();
}

Result<void> SegmentLog::remove() {
  std::lock_guard lock(mutex_);
  removed_ = true;
  segments_.resize(1);  // keep one (closed below) so the other calls stay well defined
  std::error_code ec;
  std::filesystem::remove_all(dir_, ec);
  if (ec) return Error{Errc::kIo, "removing " + dir_ + ": " + ec.message()};
  return ok();
}

Offset SegmentLog::start_offset() const {
  std::lock_guard lock(mutex_);
  return segments_.front()->base_offset();
}

Offset SegmentLog::next_offset() const {
  std::lock_guard lock(mutex_);
  return segments_.back()->next_offset();
}

std::size_t SegmentLog::segment_count() const {
  std::lock_guard lock(mutex_);
  return segments_.size();
}

Result<std::size_t> SegmentLog::read(Offset offset, std::span<std::byte> out) const {
  std::lock_guard lock(mutex_);
  Segment* segment = nullptr;
  {
    if (offset < segments_.front()->base_offset())
      return Error{Errc::kOutOfRange, "offset " + std::to_string(offset.value) + " is before the log's start, " +
                                          std::to_string(segments_.front()->base_offset().value)};
    if (offset > segments_.back()->next_offset())
      return Error{Errc::kOutOfRange, "offset " + std::to_string(offset.value) + " is past the log's end, " +
                                          std::to_string(segments_.back()->next_offset().value)};
    // The last segment whose base is at or before the offset; an offset in the gap at a
    // segment's end (skipped by an aborted claim) goes on in the next segment.
    auto it = std::upper_bound(segments_.begin(), segments_.end(), offset,
                               [](Offset o, const std::unique_ptr<Segment>& s) { return o < s->base_offset(); });
    --it;
    if (offset >= (*it)->next_offset() && std::next(it) != segments_.end()) ++it;
    segment = it->get();
  }
  if (offset >= segment->next_offset()) return std::size_t{0};  // the end of the log: nothing yet
  WEFT_TRY(const std::uint64_t position, segment->find(std::max(offset, segment->base_offset())));
  return segment->read(position, out);
}

}  // namespace weft::storage
