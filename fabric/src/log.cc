#include "weft/fabric/log.h"

#include <atomic>
#include <cstdio>
#include <ctime>
#include <mutex>
#include <utility>

namespace weft {
namespace {

std::atomic<LogLevel> g_level{LogLevel::kInfo};
std::mutex g_mutex;

// Quotes a value when logfmt needs it (spaces, '=', quotes, control characters).
void append_value(std::string& out, std::string_view v) {
  bool quote = v.empty();
  for (const char c : v)
    if (c == ' ' || c == '=' || c == '"' || c == '\\' || static_cast<unsigned char>(c) < 0x20) quote = true;
  if (!quote) {
    out += v;
    return;
  }
  out += '"';
  for (const char c : v) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (c == '\n') {
      out += "\\n";
    } else if (static_cast<unsigned char>(c) < 0x20) {
      out += '?';
    } else {
      out += c;
    }
  }
  out += '"';
}

const char* level_name(LogLevel level) {
  switch (level) {
    case LogLevel::kDebug: return "debug";
    case LogLevel::kInfo: return "info";
    case LogLevel::kWarn: return "warn";
    case LogLevel::kError: return "error";
  }
  return "info";
}

}  // namespace

void set_log_level(LogLevel level) noexcept { g_level.store(level, std::memory_order_relaxed); }

Result<LogLevel> parse_log_level(std::string_view name) {
  if (name == "debug") return LogLevel::kDebug;
  if (name == "info") return LogLevel::kInfo;
  if (name == "warn") return LogLevel::kWarn;
  if (name == "error") return LogLevel::kError;
  return Error{Errc::kInvalidArgument, "log level must be debug, info, warn or error, not '" + std::string(name) + "'"};
}

void log(LogLevel level, std::string_view message, std::initializer_list<LogField> fields) {
  // Relaxed: the level is a setting, not a synchronisation point.
  if (level < g_level.load(std::memory_order_relaxed)) return;
  timespec ts{};
  clock_gettime(CLOCK_REALTIME, &ts);
  tm utc{};
  gmtime_r(&ts.tv_sec, &utc);
  char stamp[64];
  std::snprintf(stamp, sizeof(stamp), "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ", utc.tm_year + 1900, utc.tm_mon + 1,
                utc.tm_mday, utc.tm_hour, utc.tm_min, utc.tm_sec, ts.tv_nsec / 1'000'000);
  std::string line = "ts=";
  line += stamp;
  line += " level=";
  line += level_name(level);
  line += " msg=";
  append_value(line, message);
  for (const auto& [key, value] : fields) {
    line += ' ';
    line += key;
    line += '=';
    append_value(line, value);
  }
  line += '\n';
  std::lock_guard lock(g_mutex);
  std::fwrite(line.data(), 1, line.size(), stderr);
}

bool LogRateLimit::allow(std::int64_t now_ms, std::uint64_t& held_back) noexcept {
  if (second_start_ms_ == INT64_MIN || now_ms - second_start_ms_ >= 1000) {
    second_start_ms_ = now_ms;
    in_second_ = 0;
  }
  if (in_second_ >= per_second_) {
    ++held_back_;
    return false;
  }
  ++in_second_;
  held_back = held_back_;
  held_back_ = 0;
  return true;
}

std::uint64_t LogRateLimit::take_held_back(std::int64_t now_ms) noexcept {
  if (held_back_ == 0 || now_ms - second_start_ms_ < 1000) return 0;
  return std::exchange(held_back_, 0);
}

}  // namespace weft
