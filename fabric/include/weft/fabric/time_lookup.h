// Kafka's lookup by time in a partition's ring: the first record whose timestamp is at or after
// a time (ListOffsets, a consumer's seek by timestamp). The log's time index answers for what
// the log holds (PartitionLog::offset_for_timestamp); this walks what only the ring holds.
#pragma once

#include <cstdint>
#include <optional>

#include "weft/fabric/compression.h"
#include "weft/fabric/log_store.h"
#include "weft/fabric/result.h"
#include "weft/fabric/ring.h"

namespace weft {

// Walks `consumer` forward from its position, batch by batch by their max timestamp, then
// through the records of the first batch late enough (inflated when compressed: the batch is
// copied out first, since producers may overwrite ring memory while it is read). A lapped walk
// starts again from the oldest batch, a batch overwritten while read is looked for again.
// nullopt: no batch the ring holds is that late. The consumer is left past the batch found (or
// at the ring's end); seek it to the answer. At most `max_batches` batches are looked at.
// Errors: kCorrupt for a frame the ring cannot read.
Result<std::optional<TimedOffset>> find_in_ring_by_timestamp(Consumer& consumer, std::int64_t timestamp_ms, Decompressor& decompressor,
                                                             std::size_t max_batches);

}  // namespace weft
