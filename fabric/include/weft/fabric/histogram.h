// A log-linear histogram of non-negative integers (latencies in ns): 32 sub-buckets per power
// of two, so any percentile is within about 3% of the true value. Recording is a few
// instructions with no allocation or lock; one writer at a time, merged by the reader.
#pragma once

#include <array>
#include <bit>
#include <cstdint>

namespace weft {

class LatencyHistogram {
 public:
  static constexpr int kSubBucketBits = 5;
  static constexpr int kSubBuckets = 1 << kSubBucketBits;
  static constexpr int kBuckets = (64 - kSubBucketBits + 1) * kSubBuckets;

  void record(std::uint64_t value) noexcept {
    ++counts_[static_cast<std::size_t>(index_of(value))];
    ++total_;
    if (value > max_) max_ = value;
    if (value < min_) min_ = value;
    sum_ += value;
  }

  void merge(const LatencyHistogram& other) noexcept {
    for (int i = 0; i < kBuckets; ++i) counts_[static_cast<std::size_t>(i)] += other.counts_[static_cast<std::size_t>(i)];
    total_ += other.total_;
    sum_ += other.sum_;
    if (other.max_ > max_) max_ = other.max_;
    if (other.min_ < min_) min_ = other.min_;
  }

  // The smallest recorded bucket's upper bound at or above the given fraction (0..1) of values.
  std::uint64_t percentile(double fraction) const noexcept {
    if (total_ == 0) return 0;
    auto rank = static_cast<std::uint64_t>(fraction * static_cast<double>(total_));
    if (rank >= total_) rank = total_ - 1;
    std::uint64_t seen = 0;
    for (int i = 0; i < kBuckets; ++i) {
      seen += counts_[static_cast<std::size_t>(i)];
      if (seen > rank) {
        const std::uint64_t upper = upper_bound_of(i);
        return upper < max_ ? upper : max_;
      }
    }
    return max_;
  }

  std::uint64_t count() const noexcept { return total_; }
  std::uint64_t max() const noexcept { return max_; }
  std::uint64_t min() const noexcept { return total_ == 0 ? 0 : min_; }
  double mean() const noexcept { return total_ == 0 ? 0.0 : static_cast<double>(sum_) / static_cast<double>(total_); }

 private:
  static int index_of(std::uint64_t v) noexcept {
    if (v < kSubBuckets) return static_cast<int>(v);
    const int msb = 63 - std::countl_zero(v);
    const int shift = msb - kSubBucketBits;
    const auto sub = static_cast<int>((v >> shift) & (kSubBuckets - 1));
    return (shift + 1) * kSubBuckets + sub;
  }
  static std::uint64_t upper_bound_of(int index) noexcept {
    if (index < kSubBuckets) return static_cast<std::uint64_t>(index);
    const int shift = index / kSubBuckets - 1;
    const auto sub = static_cast<std::uint64_t>(index % kSubBuckets);
    return ((std::uint64_t{kSubBuckets} + sub + 1) << shift) - 1;
  }

  std::array<std::uint64_t, kBuckets> counts_{};
  std::uint64_t total_ = 0;
  std::uint64_t sum_ = 0;
  std::uint64_t max_ = 0;
  std::uint64_t min_ = ~std::uint64_t{0};
};

}  // namespace weft
