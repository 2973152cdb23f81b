// Small files the node keeps beside its data (topic settings, the data layout, recovery points).
#pragma once

#include <string>
#include <string_view>

#include "weft/fabric/result.h"

namespace weft {

// Replaces the file at `path` with `content`: written aside (`path`.tmp), fdatasync'd, renamed
// into place and the folder synced, so a crash at any point leaves the old file or the new one,
// whole. kResourceExhausted when the disk is full, else kIo.
Result<void> replace_file(const std::string& path, std::string_view content);

}  // namespace weft
