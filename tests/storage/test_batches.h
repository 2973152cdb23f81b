// RecordBatch v2 batches for the storage tests: `records` records of `value_bytes` bytes each
// (all `fill`), timestamps from `first_ts` up by one, stamped with base offset `base`.
#pragma once

#include <gtest/gtest.h>

#include <cstddef>
#include <cstdint>
#include <fstream>
#include <iterator>
#include <span>
#include <string>
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

// Where each batch of a segment's log file starts, walked by the lengths its headers give.
inline std::vector<std::uint64_t> batch_starts(const std::string& log_file) {
  std::ifstream in(log_file, std::ios::binary);
  const std::vector<char> bytes{std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
  std::vector<std::uint64_t> starts;
  for (std::uint64_t at = 0; at + kBatchHeaderBytes <= bytes.size();) {
    starts.push_back(at);
    at += kBatchLogOverhead + static_cast<std::uint32_t>(wire::load_be32(reinterpret_cast<const std::byte*>(bytes.data()) + at + batch_field::kBatchLength));
  }
  return starts;
}

}  // namespace weft::test
