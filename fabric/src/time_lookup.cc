#include "weft/fabric/time_lookup.h"

#include <string>
#include <vector>

#include "weft/fabric/record_batch.h"

namespace weft {

Result<std::optional<TimedOffset>> find_in_ring_by_timestamp(Consumer& consumer, std::int64_t timestamp_ms, Decompressor& decompressor,
                                                             std::size_t max_batches) {
  RingBatch batch;
  std::vector<std::byte> copy;
  std::vector<std::byte> inflated;
  for (std::size_t steps = 0; steps < max_batches; ++steps) {
    const PollStatus status = consumer.poll(batch);
    if (status == PollStatus::kEmpty) return std::optional<TimedOffset>();
    if (status == PollStatus::kLapped) {
      consumer.rejoin();
      continue;
    }
    if (status != PollStatus::kOk) return Error{Errc::kCorrupt, "a frame of the ring does not read while looking up a time"};
    Result<BatchView> header = BatchView::parse_header(batch.bytes, false);
    if (!header.ok() || header->max_timestamp() < timestamp_ms) continue;
    copy.assign(batch.bytes.begin(), batch.bytes.end());
    if (!consumer.validate(batch)) {  // overwritten while copied: look again from the oldest
      consumer.rejoin();
      continue;
    }
    Result<BatchView> view = BatchView::parse_header(copy, false);
    if (!view.ok()) continue;
    TimedOffset found{view->last_offset(), view->max_timestamp(), view->partition_leader_epoch()};
    bool readable = true;
    if (view->compression() != Compression::kNone)
      readable = decompressor.decompress(view->compression(), std::span<const std::byte>(copy).subspan(kBatchHeaderBytes), inflated).ok();
    if (readable) {
      RecordReader reader = view->compression() != Compression::kNone ? RecordReader(*view, inflated) : RecordReader(*view);
      RecordView r;
      while (reader.next(r))
        if (r.timestamp_ms >= timestamp_ms) {
          found = TimedOffset{r.offset, r.timestamp_ms, view->partition_leader_epoch()};
          break;
        }
    } else {
      found = TimedOffset{view->base_offset(), view->max_timestamp(), view->partition_leader_epoch()};  // its records are unreadable: the batch's start
    }
    return std::optional<TimedOffset>(found);
  }
  return std::optional<TimedOffset>();
}

}  // namespace weft
