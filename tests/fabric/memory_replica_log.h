// An in-memory ReplicaLog (weft/fabric/replication.h) for replication tests: whole batches in a
// vector, a durable end that follows the log end or moves only on sync().
#pragma once

#include <algorithm>
#include <cstring>
#include <vector>

#include "../storage/test_batches.h"
#include "weft/fabric/record_batch.h"
#include "weft/fabric/replication.h"

namespace weft::test {

class MemoryReplicaLog final : public ReplicaLog {
 public:
  explicit MemoryReplicaLog(Offset start = Offset{0}, bool auto_sync = true) : start_(start), end_(start), durable_(start), auto_sync_(auto_sync) {}

  // A leader's producer: appends a batch of `records` records stamped with `epoch`.
  void produce(int records, std::int32_t epoch, std::byte fill = std::byte{0x61}, std::size_t value_bytes = 100) {
    std::vector<std::byte> batch = make_batch(end_.value, records, 1'700'000'000'000, value_bytes, fill);
    stamp_partition_leader_epoch(batch, epoch);
    if (epoch > epochs_.last_epoch()) epochs_.assign(epoch, end_);
    end_ += records;
    batches_.push_back(std::move(batch));
    if (auto_sync_) durable_ = end_;
  }
  void sync() { durable_ = end_; }

  Offset log_start() const override { return start_; }
  Offset log_end() const override { return end_; }
  Offset durable_end() const override { return durable_; }

  Result<std::size_t> read(Offset offset, std::span<std::byte> out) override {
    if (offset < start_) return Error{Errc::kOutOfRange, "before the log's start"};
    std::size_t copied = 0;
    for (const auto& b : batches_) {
      const BatchView view = BatchView::parse_trusted(b).value();
      if (view.last_offset() < offset) continue;
      if (copied + b.size() > out.size()) {
        if (copied == 0) return Error{Errc::kResourceExhausted, "the next batch is larger than the buffer"};
        break;
      }
      std::memcpy(out.data() + copied, b.data(), b.size());
      copied += b.size();
    }
    return copied;
  }

  Result<std::size_t> append(std::span<const std::byte> bytes) override {
    for (std::size_t at = 0; at < bytes.size();) {
      WEFT_TRY(BatchView view, BatchView::parse(bytes.subspan(at)));
      if (view.base_offset() < end_) return Error{Errc::kInvalidArgument, "append below the log's end"};
      batches_.emplace_back(view.bytes().begin(), view.bytes().end());
      end_ = view.last_offset() + 1;
      at += view.size_bytes();
    }
    ++appends_;
    if (auto_sync_) durable_ = end_;
    return bytes.size();
  }

  Result<void> truncate(Offset end) override {
    while (!batches_.empty() && BatchView::parse_trusted(batches_.back()).value().last_offset() >= end) {
      end_ = BatchView::parse_trusted(batches_.back()).value().base_offset();
      batches_.pop_back();
    }
    if (batches_.empty()) end_ = std::max(start_, std::min(end_, end));
    durable_ = std::min(durable_, end_);
    ++truncations_;
    return ok();
  }

  Result<void> reset(Offset start) override {
    batches_.clear();
    start_ = end_ = durable_ = start;
    ++resets_;
    return ok();
  }

  // Retention: drops batches wholly below `start`.
  void drop_before(Offset start) {
    while (!batches_.empty() && BatchView::parse_trusted(batches_.front()).value().last_offset() < start) batches_.erase(batches_.begin());
    start_ = batches_.empty() ? end_ : BatchView::parse_trusted(batches_.front()).value().base_offset();
  }

  EpochHistory& epochs() override { return epochs_; }
  const std::vector<std::vector<std::byte>>& batches() const { return batches_; }
  int truncations() const { return truncations_; }
  int resets() const { return resets_; }

 private:
  std::vector<std::vector<std::byte>> batches_;
  Offset start_, end_, durable_;
  bool auto_sync_;
  EpochHistory epochs_;
  int appends_ = 0;
  int truncations_ = 0;
  int resets_ = 0;
};

}  // namespace weft::test
