// The port through which the node keeps a partition's log: declared here, implemented by
// storage/ (segment files on a local disk), so the core builds and tests without a disk.
#pragma once

#include <cstddef>
#include <span>

#include "weft/fabric/result.h"
#include "weft/fabric/types.h"

namespace weft {

class PartitionLog {
 public:
  virtual ~PartitionLog() = default;
  // Appends one batch (RecordBatch v2, baseOffset stamped) at or after next_offset().
  virtual Result<void> append(std::span<const std::byte> batch) = 0;
  // Hands everything appended so far to the operating system (appends may be buffered):
  // after it, a crash of this process loses nothing, a crash of the machine may.
  virtual Result<void> flush() = 0;
  // Makes everything appended so far durable (flushes first).
  virtual Result<void> sync() = 0;
  // Deletes the log's files (its topic was deleted); the log takes nothing afterwards.
  virtual Result<void> remove() = 0;
  // The earliest offset the log holds, and the one the next batch gets.
  virtual Offset start_offset() const = 0;
  virtual Offset next_offset() const = 0;
  // Copies whole batches, starting with the one that holds `offset` (or the next batch, if an
  // aborted claim skipped it), into `out`; returns the bytes copied (0: nothing from there yet).
  // kOutOfRange before start_offset() or past next_offset().
  virtual Result<std::size_t> read(Offset offset, std::span<std::byte> out) const = 0;
};

}  // namespace weft
