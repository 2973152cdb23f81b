// Structured logs in logfmt (ts=... level=info msg="..." key=value), one line per event on
// stderr: readable by people, parseable by log shippers. Thread-safe; not for hot paths.
#pragma once

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

}  // namespace weft
