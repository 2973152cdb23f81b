// Structured logs in logfmt (ts=... level=info msg="..." key=value), one line per event on
// stderr: readable by people, parseable by log shippers. Thread-safe; not for hot paths.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <string>
#include <string_view>
#include <utility>

#include "weft/fabric/result.h"

namespace weft {

enum class LogLevel : unsigned char { kDebug, kInfo, kWarn, kError };

void set_log_level(LogLevel level) noexcept;
Result<LogLevel> parse_log_level(std::string_view name);

using LogField = std::pair<std::string_view, std::string>;
void log(LogLevel level, std::string_view message, std::initializer_list<LogField> fields = {});

// For lines a remote client can cause at will (a connection closed for a bad request, one refused
// at the limit): at most `per_second` a second, so a client cannot fill the disk with the node's
// log. Those held back are counted and the count goes out with the next line let through. One
// per thread (not synchronised).
class LogRateLimit {
 public:
  explicit LogRateLimit(std::uint32_t per_second) noexcept : per_second_(per_second) {}
  // Whether a line may go out at `now_ms` (a monotonic clock); if so, `held_back` gets how many
  // were held back since the last one that went.
  bool allow(std::int64_t now_ms, std::uint64_t& held_back) noexcept;
  // For a periodic summary: those held back, once their second is over (then counted afresh).
  std::uint64_t take_held_back(std::int64_t now_ms) noexcept;

 private:
  std::uint32_t per_second_;
  std::int64_t second_start_ms_ = INT64_MIN;
  std::uint32_t in_second_ = 0;
  std::uint64_t held_back_ = 0;
};

}  // namespace weft
