// Domain numbers as distinct types: a Position (bytes in a ring) is never an Offset
// (records in a partition), and neither is a bare integer.
#pragma once

#include <compare>
#include <cstddef>
#include <cstdint>

namespace weft {

template <class Rep, class Tag>
struct Strong {
  Rep value{};

  constexpr Strong() = default;
  constexpr explicit Strong(Rep v) : value(v) {}
  constexpr auto operator<=>(const Strong&) const = default;

  // Moving by a count keeps the unit; the difference of two is a plain count.
  constexpr Strong operator+(Rep delta) const { return Strong{static_cast<Rep>(value + delta)}; }
  constexpr Strong operator-(Rep delta) const { return Strong{static_cast<Rep>(value - delta)}; }
  constexpr Strong& operator+=(Rep delta) {
    value = static_cast<Rep>(value + delta);
    return *this;
  }
  constexpr Rep operator-(Strong other) const { return static_cast<Rep>(value - other.value); }
};

// Kafka offsets count records from the start of a partition.
using Offset = Strong<std::int64_t, struct OffsetTag>;
// Free-running byte position in a ring; the index in the ring is position & (capacity - 1).
using Position = Strong<std::uint64_t, struct PositionTag>;

inline constexpr std::size_t kCacheLine = 64;
// Two lines: the adjacent-line prefetcher pulls pairs, so writers sharing a pair still collide.
inline constexpr std::size_t kNoShare = 128;

}  // namespace weft
