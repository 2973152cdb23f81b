// How `weft consume` prints a record (--format value | key-value | json), shared by the local
// (shared-memory) and the remote (Kafka protocol) paths.
#pragma once

#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <cerrno>
#include <optional>
#include <string>
#include <string_view>

namespace weft::cli {

inline void json_string(std::string& out, std::string_view s) {
  out += '"';
  for (const char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          char esc[8];
          std::snprintf(esc, sizeof(esc), "\\u%04x", static_cast<unsigned>(static_cast<unsigned char>(c)));
          out += esc;
        } else {
          out += c;
        }
    }
  }
  out += '"';
}

struct PrintedRecord {
  std::string_view topic;
  std::uint32_t partition = 0;
  std::int64_t offset = 0;
  std::int64_t timestamp_ms = 0;
  std::optional<std::string_view> key;    // nullopt: a null key
  std::optional<std::string_view> value;  // nullopt: a null value
};

// Appends the record as one line (with its newline) in `format`.
inline void format_record(std::string& line, std::string_view format, const PrintedRecord& r) {
  if (format == "value") {
    line += r.value.value_or("");
  } else if (format == "key-value") {
    line += r.key.value_or("");
    line += '\t';
    line += r.value.value_or("");
  } else {
    line += "{\"topic\":";
    json_string(line, r.topic);
    line += ",\"partition\":" + std::to_string(r.partition) + ",\"offset\":" + std::to_string(r.offset) +
            ",\"timestamp\":" + std::to_string(r.timestamp_ms) + ",\"key\":";
    if (r.key) json_string(line, *r.key);
    else line += "null";
    line += ",\"value\":";
    if (r.value) json_string(line, *r.value);
    else line += "null";
    line += '}';
  }
  line += '\n';
}

// `weft consume --count N` that stopped at its timeout with fewer, locally or over the network:
// says so and returns exit status 4 (as for anything unavailable now), so a script that asked for
// N records does not take fewer for all of them.
inline int consumed_too_few(std::int64_t printed, std::int64_t count, std::int64_t timeout_ms) {
  std::fprintf(stderr, "weft: consuming: %lld of the %lld records asked for (--count) arrived before %lld ms passed without one (--timeout-ms)\n",
               static_cast<long long>(printed), static_cast<long long>(count), static_cast<long long>(timeout_ms));
  return 4;
}

// `weft consume --count N` stopped by SIGINT or SIGTERM with fewer: says so, and returns the
// status a shell gives a process those signals end (a supervisor's stop is not a success).
inline int interrupted_with_too_few(std::int64_t printed, std::int64_t count, int signal) {
  std::fprintf(stderr, "weft: consuming: interrupted after %lld of the %lld records asked for (--count)\n", static_cast<long long>(printed),
               static_cast<long long>(count));
  return 128 + signal;
}

// Flushes the records printed so far; false (with the error) when they did not all reach stdout
// (its reader went away, a full disk): a group's offsets are committed only for records flushed.
inline bool flush_records(int& error) {
  errno = 0;
  if (std::fflush(stdout) == 0 && std::ferror(stdout) == 0) return true;
  if (error == 0) error = errno != 0 ? errno : EIO;  // a failed write_record's said it first
  return false;
}

// Writes one printed record; false (with the error) when stdout refused it. The error is kept
// here: a flush after a write that failed inside fwrite has nothing left to say why.
inline bool write_record(const std::string& line, int& error) {
  errno = 0;
  if (std::fwrite(line.data(), 1, line.size(), stdout) == line.size()) return true;
  if (error == 0) error = errno != 0 ? errno : EIO;
  return false;
}

// The exit status once stdout failed: quiet for a reader that went away (`| head`), as a shell
// reports a process SIGPIPE ended; said otherwise.
inline int records_not_written(int error, std::int64_t printed) {
  if (error == EPIPE) return 128 + SIGPIPE;
  std::fprintf(stderr, "weft: consuming: writing the records failed after %lld of them: %s (a group's offsets cover only what was written)\n",
               static_cast<long long>(printed), std::strerror(error));
  return 1;
}

}  // namespace weft::cli
