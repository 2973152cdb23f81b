// Shared helpers for ring tests: a ring in a fresh memfd, and records that carry who wrote them.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <optional>
#include <vector>

#include "weft/fabric/record_batch.h"
#include "weft/fabric/ring.h"
#include "weft/fabric/shared_memory.h"

namespace weft::test {

struct RingFixture {
  SharedMemory memory;
  Ring ring;

  static RingFixture make(const RingConfig& config) {
    ShmOptions options;
    options.name = "weft-test-ring";
    options.size_bytes = Ring::required_bytes(config);
    options.prefer_hugepages = false;  // tests must not drain the machine's hugepage pool
    Result<SharedMemory> memory = SharedMemory::create(options);
    EXPECT_TRUE(memory.ok()) << memory.error().message;
    Result<Ring> ring = Ring::format(memory->bytes(), config);
    EXPECT_TRUE(ring.ok()) << ring.error().message;
    return RingFixture{std::move(memory).value(), ring.value()};
  }
};

// The value of every test record: who produced it and its sequence number.
struct Stamp {
  std::uint32_t producer = 0;
  std::uint64_t sequence = 0;
};

inline std::vector<std::byte> stamp_bytes(Stamp stamp, std::size_t size = sizeof(Stamp)) {
  std::vector<std::byte> v(std::max(size, sizeof(Stamp)));
  std::memcpy(v.data(), &stamp.producer, sizeof stamp.producer);
  std::memcpy(v.data() + 4, &stamp.sequence, sizeof stamp.sequence);
  return v;
}

// Produces one record holding `stamp`; returns the status.
inline ClaimStatus produce(Producer& producer, Stamp stamp, Offset* base = nullptr) {
  const std::vector<std::byte> value = stamp_bytes(stamp);
  RecordInput record;
  record.value = std::span<const std::byte>(value);
  record.timestamp_ms = 1'700'000'000'000;
  return producer.offer_record(record, base);
}

// Decodes the stamps of every record of a ring batch (which must parse, CRC included).
inline std::vector<Stamp> stamps_of(const RingBatch& batch) {
  std::vector<Stamp> out;
  Result<BatchView> view = BatchView::parse(batch.bytes);
  EXPECT_TRUE(view.ok()) << view.error().message;
  if (!view.ok()) return out;
  EXPECT_EQ(view->base_offset(), batch.base_offset);
  for (const RecordView& r : *view) {
    Stamp s;
    EXPECT_TRUE(r.value.has_value());
    if (!r.value || r.value->size() < 12) continue;
    std::memcpy(&s.producer, r.value->data(), 4);
    std::memcpy(&s.sequence, r.value->data() + 4, 8);
    out.push_back(s);
  }
  return out;
}

}  // namespace weft::test
