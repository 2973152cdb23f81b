// RecordBatch v2 batches for the storage tests: `records` records of `value_bytes` bytes each
// (all `fill`), timestamps from `first_ts` up by one, stamped with base offset `base`.
#pragma once

#include <gtest/gtest.h>

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "weft/fabric/record_batch.h"

namespace weft::test {

inline std::vector<std::byte> make_batch(std::int64_t base, int records, std::int64_t first_ts, std::size_t value_bytes = 100,
                                         std::byte fill = std::byte{0x61}) {
  std::vector<std::byte> out(kBatchHeaderBytes + static_cast<std::size_t>(records) * (value_bytes + 32));
  const std::vector<std::byte> value(value_bytes, fill);
  BatchBuilder builder(out);
  for (int i = 0; i < records; ++i) {
    RecordInput r;
    r.value = std::span<const std::byte>(value);
    r.timestamp_ms = first_ts + i;
    EXPECT_TRUE(builder.append(r));
  }
  std::span<std::byte> batch = builder.finish();
  stamp_base_offset(batch, Offset{base});
  out.resize(batch.size());
  return out;
}

}  // namespace weft::test
