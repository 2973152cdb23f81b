// Domain numbers as distinct types: a Position (bytes in a ring) is never an Offset
// (records in a partition), and neither is a bare integer.
#pragma once

#include <compare>
#include <cstddef>
#include <cstdint>
#include <type_traits>

namespace weft {

template <class Rep, class Tag>
struct Strong {
  Rep value{};

  constexpr Strong() = default;
  constexpr explicit Strong(Rep v) : value(v) {}
  constexpr auto operator<=>(const Strong&) const = default;

  // Moving by a count keeps the unit; the difference of two is a plain count. Computed in the
  // unsigned type, so values read from the wire or a file wrap (as Kafka's Java does) instead of
  // overflowing, which would be undefined; callers range-check what they accept.
  constexpr Strong operator+(Rep delta) const { return Strong{wrap(static_cast<U>(value) + static_cast<U>(delta))}; }
  constexpr Strong operator-(Rep delta) const { return Strong{wrap(static_cast<U>(value) - static_cast<U>(delta))}; }
  constexpr Strong& operator+=(Rep delta) {
    value = wrap(static_cast<U>(value) + static_cast<U>(delta));
    return *this;
  }
  constexpr Rep operator-(Strong other) const { return wrap(static_cast<U>(value) - static_cast<U>(other.value)); }

 private:
  using U = std::make_unsigned_t<Rep>;
  static constexpr Rep wrap(U v) { return static_cast<Rep>(v); }
};

// Kafka offsets count records from the start of a partition.
using Offset = Strong<std::int64_t, struct OffsetTag>;
// Free-running byte position in a ring; the index in the ring is position & (capacity - 1).
using Position = Strong<std::uint64_t, struct PositionTag>;

inline constexpr std::size_t kCacheLine = 64;
// Two lines: the adjacent-line prefetcher pulls pairs, so writers sharing a pair still collide.
inline constexpr std::size_t kNoShare = 128;

}  // namespace weft
