// Small files the node keeps beside its data (topic settings, the data layout, recovery points).
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

#include "weft/fabric/result.h"

namespace weft {

// Replaces the file at `path` with `content`: written aside (`path`.tmp), fdatasync'd, renamed
// into place and the folder synced, so a crash at any point leaves the old file or the new one,
// whole. kResourceExhausted when the disk is full, else kIo.
Result<void> replace_file(const std::string& path, std::string_view content);

// The whole of a small file the node wrote itself. Never blocks on what stands at `path` in its
// place (a FIFO, a device): kNotFound when nothing is there, kCorrupt when it is not a regular
// file or holds more than `max_bytes`, else kIo.
Result<std::string> read_small_file(const std::string& path, std::size_t max_bytes);

// Makes creations, renames and unlinks in `dir` durable. kIo when it cannot.
Result<void> sync_directory(const std::string& dir);

}  // namespace weft
