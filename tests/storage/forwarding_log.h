// A PartitionLog that hands every call to the log it wraps: tests derive from it and override
// the one call they change (a sync that fails, a removal held until the test lets it go).
#pragma once

#include <memory>
#include <utility>

#include "weft/fabric/log_store.h"

namespace weft::test {

class ForwardingLog : public PartitionLog {
 public:
  explicit ForwardingLog(std::unique_ptr<PartitionLog> inner) : inner_(std::move(inner)) {}

  Result<void> append(std::span<const std::byte> batch) override { return inner_->append(batch); }
  Result<void> flush() override { return inner_->flush(); }
  Result<void> sync() override { return inner_->sync(); }
  Result<void> submit(bool more_coming) override { return inner_->submit(more_coming); }
  Result<Offset> written_offset() override { return inner_->written_offset(); }
  Offset synced_offset() const override { return inner_->synced_offset(); }
  Result<void> remove() override { return inner_->remove(); }
  Offset start_offset() const override { return inner_->start_offset(); }
  Offset next_offset() const override { return inner_->next_offset(); }
  Result<std::size_t> read(Offset offset, std::span<std::byte> out) const override { return inner_->read(offset, out); }
  Result<LogSlice> slice(Offset offset, Offset until) override { return inner_->slice(offset, until); }
  Result<TimedOffset> offset_for_timestamp(std::int64_t timestamp_ms) override { return inner_->offset_for_timestamp(timestamp_ms); }
  Result<RetentionOutcome> apply_retention(std::int64_t max_bytes, std::int64_t max_age_ms, std::int64_t now_ms, Offset keep_from) override {
    return inner_->apply_retention(max_bytes, max_age_ms, now_ms, keep_from);
  }
  std::uint64_t size_bytes() const override { return inner_->size_bytes(); }
  Result<Offset> truncate(Offset end) override { return inner_->truncate(end); }
  Result<void> save_epochs(std::span<const EpochStart> epochs, EpochSave how) override { return inner_->save_epochs(epochs, how); }
  Result<std::vector<EpochStart>> load_epochs() const override { return inner_->load_epochs(); }
  Result<void> reset(Offset start) override { return inner_->reset(start); }

 protected:
  std::unique_ptr<PartitionLog> inner_;
};

}  // namespace weft::test
