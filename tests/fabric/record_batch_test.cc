// RecordBatch v2: builder/parser round trips, the Kafka byte layout written out by hand, zigzag
// varints at their boundaries, and a table of malformed batches that parse() must refuse.
//
// Every parse() here reads a heap buffer of exactly the bytes under test, so the asan preset
// reports any read past the end.
#include "weft/fabric/record_batch.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <optional>
#include <ostream>
#include <random>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "weft/fabric/crc32c.h"

namespace weft {
namespace {

using Bytes = std::vector<std::byte>;
using OptBytes = std::optional<Bytes>;

// ---- helpers -------------------------------------------------------------------------------

Bytes hex(std::initializer_list<unsigned> values) {
  Bytes out;
  out.reserve(values.size());
  for (unsigned v : values) out.push_back(static_cast<std::byte>(v));
  return out;
}

Bytes bytes_of(std::string_view s) {
  Bytes out(s.size());
  for (std::size_t i = 0; i < s.size(); ++i) out[i] = static_cast<std::byte>(s[i]);
  return out;
}

// A heap copy of exactly the given bytes: AddressSanitizer flags any read past its end.
class HeapBytes {
 public:
  // Not inlined: GCC 12 at -O2 otherwise reports a false stringop-overflow on the copy.
  [[gnu::noinline]] explicit HeapBytes(std::span<const std::byte> bytes)
      : size_(bytes.size()), data_(std::make_unique<std::byte[]>(bytes.size())) {
    if (!bytes.empty()) std::memcpy(data_.get(), bytes.data(), bytes.size());
  }
  std::span<const std::byte> span() const { return {data_.get(), size_}; }
  const std::byte* begin() const { return data_.get(); }
  const std::byte* end() const { return data_.get() + size_; }

 private:
  std::size_t size_;
  std::unique_ptr<std::byte[]> data_;
};

// Big-endian accessors written here, not taken from wire::, so the tests do not trust the code under test.
void put_be16(Bytes& b, std::size_t at, std::uint16_t v) {
  b.at(at) = static_cast<std::byte>(v >> 8);
  b.at(at + 1) = static_cast<std::byte>(v);
}
void put_be32(Bytes& b, std::size_t at, std::uint32_t v) {
  for (std::size_t i = 0; i < 4; ++i) b.at(at + i) = static_cast<std::byte>(v >> (24 - 8 * i));
}
std::uint32_t get_be32(const Bytes& b, std::size_t at) {
  std::uint32_t v = 0;
  for (std::size_t i = 0; i < 4; ++i) v = (v << 8) | std::to_integer<std::uint32_t>(b.at(at + i));
  return v;
}
void put_be32s(Bytes& b, std::size_t at, std::int32_t v) { put_be32(b, at, static_cast<std::uint32_t>(v)); }

// Recomputes the CRC-32C over attributes..end and stores it big-endian at offset 17.
void resign(Bytes& batch, std::size_t end) {
  const std::uint32_t crc = crc32c(std::span<const std::byte>(batch).subspan(21, end - 21));
  put_be32(batch, 17, crc);
}
void resign(Bytes& batch) { resign(batch, batch.size()); }

struct OwnedHeader {
  std::string key;
  OptBytes value;
  bool operator==(const OwnedHeader&) const = default;
};

struct OwnedRecord {
  OptBytes key;
  OptBytes value;
  std::int64_t timestamp_ms = 0;
  std::vector<OwnedHeader> headers;
};

OptionalBytes view_of(const OptBytes& b) {
  if (!b) return std::nullopt;
  return std::span<const std::byte>(*b);
}

OptBytes copy_of(const OptionalBytes& b) {
  if (!b) return std::nullopt;
  return Bytes(b->begin(), b->end());
}

// Builds a batch of `records` in a buffer of exactly the size encoded_record_bytes() predicts.
Bytes build(const std::vector<OwnedRecord>& records, const BatchOptions& options = {}) {
  std::vector<std::vector<RecordHeader>> headers(records.size());
  std::vector<RecordInput> inputs(records.size());
  std::size_t expected_size = kBatchHeaderBytes;
  for (std::size_t i = 0; i < records.size(); ++i) {
    for (const OwnedHeader& h : records[i].headers) headers[i].push_back(RecordHeader{h.key, view_of(h.value)});
    inputs[i] = RecordInput{view_of(records[i].key), view_of(records[i].value), records[i].timestamp_ms,
                            std::span<const RecordHeader>(headers[i])};
    expected_size += encoded_record_bytes(inputs[i], static_cast<std::int32_t>(i),
                                          records[i].timestamp_ms - records[0].timestamp_ms);
  }
  Bytes out(expected_size);
  BatchBuilder builder(out, options);
  for (std::size_t i = 0; i < inputs.size(); ++i) EXPECT_TRUE(builder.append(inputs[i])) << "record " << i;
  EXPECT_EQ(builder.record_count(), static_cast<std::int32_t>(records.size()));
  EXPECT_EQ(builder.size_bytes(), expected_size);
  const std::span<std::byte> batch = builder.finish();
  EXPECT_EQ(batch.data(), out.data());
  EXPECT_EQ(batch.size(), expected_size);
  return out;
}

std::vector<OwnedHeader> headers_of(const RecordView& r) {
  std::vector<OwnedHeader> out;
  r.for_each_header([&](const RecordHeader& h) { out.push_back(OwnedHeader{std::string(h.key), copy_of(h.value)}); });
  return out;
}

bool inside(std::span<const std::byte> part, std::span<const std::byte> whole) {
  return part.data() >= whole.data() && part.data() + part.size() <= whole.data() + whole.size();
}

// Checks every header field and every record of `view` against what was built.
void expect_batch_holds(const BatchView& view, const std::vector<OwnedRecord>& records, Offset base,
                        const BatchOptions& options = {}) {
  const auto n = static_cast<std::int32_t>(records.size());
  std::int64_t max_ts = records.empty() ? 0 : records[0].timestamp_ms;
  for (const OwnedRecord& r : records) max_ts = std::max(max_ts, r.timestamp_ms);

  EXPECT_EQ(view.base_offset().value, base.value);
  EXPECT_EQ(view.record_count(), n);
  EXPECT_EQ(view.last_offset_delta(), n > 0 ? n - 1 : 0);
  EXPECT_EQ(view.last_offset().value, base.value + (n > 0 ? n - 1 : 0));
  EXPECT_EQ(view.attributes(), options.attributes);
  EXPECT_EQ(view.compression(), Compression::kNone);
  EXPECT_EQ(view.partition_leader_epoch(), options.partition_leader_epoch);
  EXPECT_EQ(view.producer_id(), options.producer_id);
  EXPECT_EQ(view.producer_epoch(), options.producer_epoch);
  EXPECT_EQ(view.base_sequence(), options.base_sequence);
  EXPECT_EQ(view.base_timestamp(), records.empty() ? 0 : records[0].timestamp_ms);
  EXPECT_EQ(view.max_timestamp(), max_ts);
  EXPECT_EQ(view.bytes()[batch_field::kMagic], std::byte{2});
  EXPECT_EQ(view.stored_crc(), crc32c(view.bytes().subspan(batch_field::kAttributes)));

  std::size_t i = 0;
  for (const RecordView& r : view) {
    if (i >= records.size()) {
      ADD_FAILURE() << "iteration yields more than " << records.size() << " records";
      break;
    }
    SCOPED_TRACE("record " + std::to_string(i));
    const OwnedRecord& want = records[i];
    EXPECT_EQ(r.offset.value, base.value + static_cast<std::int64_t>(i));
    EXPECT_EQ(r.timestamp_ms, want.timestamp_ms);
    EXPECT_EQ(r.attributes, 0);
    EXPECT_EQ(copy_of(r.key), want.key);
    EXPECT_EQ(copy_of(r.value), want.value);
    if (r.key) {
      EXPECT_TRUE(inside(*r.key, view.bytes()));
    }
    if (r.value) {
      EXPECT_TRUE(inside(*r.value, view.bytes()));
    }
    EXPECT_TRUE(inside(r.headers_bytes, view.bytes()));
    EXPECT_EQ(r.header_count, static_cast<std::int32_t>(want.headers.size()));
    EXPECT_EQ(headers_of(r), want.headers);
    ++i;
  }
  EXPECT_EQ(i, records.size());
}

void expect_mentions(const Error& error, std::string_view mention) {
  EXPECT_EQ(error.code, Errc::kCorrupt) << errc_name(error.code) << ": " << error.message;
  EXPECT_NE(error.message.find(mention), std::string::npos)
      << "message \"" << error.message << "\" does not mention \"" << mention << "\"";
}

// Parses an exact heap copy of `bytes` and returns the error it must give.
Error parse_error(const Bytes& bytes) {
  const HeapBytes heap(bytes);
  Result<BatchView> parsed = BatchView::parse(heap.span());
  if (parsed.ok()) {
    ADD_FAILURE() << "parse accepted " << bytes.size() << " malformed bytes";
    return Error{Errc::kOk, {}};
  }
  return parsed.error();
}

OwnedRecord record(std::string_view key, std::string_view value, std::int64_t timestamp_ms = 0,
                   std::vector<OwnedHeader> headers = {}) {
  return OwnedRecord{bytes_of(key), bytes_of(value), timestamp_ms, std::move(headers)};
}

// ---- (a) round trips -----------------------------------------------------------------------

TEST(RecordBatch, RoundTripsNullAndEmptyKeysAndValues) {
  // Given
  std::vector<OwnedRecord> records;
  records.push_back(OwnedRecord{std::nullopt, bytes_of("null key"), 10, {}});
  records.push_back(OwnedRecord{Bytes{}, bytes_of("empty key"), 11, {}});
  records.push_back(OwnedRecord{bytes_of("null value"), std::nullopt, 12, {}});
  records.push_back(OwnedRecord{bytes_of("empty value"), Bytes{}, 13, {}});
  records.push_back(OwnedRecord{std::nullopt, std::nullopt, 14, {}});
  records.push_back(OwnedRecord{Bytes{}, Bytes{}, 15, {}});
  const Bytes batch = build(records);
  const HeapBytes heap(batch);

  // Expect
  Result<BatchView> view = BatchView::parse(heap.span());
  ASSERT_TRUE(view.ok()) << view.error().message;
  EXPECT_EQ(view->size_bytes(), batch.size());
  expect_batch_holds(*view, records, Offset{0});
}

TEST(RecordBatch, RoundTripsHeadersIncludingNullAndEmptyValues) {
  // Given
  std::vector<OwnedHeader> headers = {
      {"trace-id", bytes_of("abc123")},
      {"null-value", std::nullopt},
      {"empty-value", Bytes{}},
      {"", bytes_of("empty key")},
      {"large", Bytes(300, std::byte{0x5A})},  // a two-byte length varint
  };
  std::vector<OwnedRecord> records = {record("k1", "v1", 100, headers), record("k2", "v2", 101, {}),
                                      record("k3", "v3", 102, {{"only", std::nullopt}})};
  const Bytes batch = build(records);
  const HeapBytes heap(batch);

  // Expect
  Result<BatchView> view = BatchView::parse(heap.span());
  ASSERT_TRUE(view.ok()) << view.error().message;
  expect_batch_holds(*view, records, Offset{0});
}

TEST(RecordBatch, RoundTripsNegativeAndLargeTimestampDeltas) {
  // Given: deltas below and far above the first record's timestamp.
  constexpr std::int64_t kBase = 1'700'000'000'000;
  std::vector<OwnedRecord> records = {
      record("a", "1", kBase),
      record("b", "2", kBase - 1),
      record("c", "3", kBase - 1'000'000'000'000),
      record("d", "4", kBase + (std::int64_t{1} << 40)),
      record("e", "5", kBase + 1),
      record("f", "6", -kBase),  // before the epoch
  };
  const Bytes batch = build(records);
  const HeapBytes heap(batch);

  // Expect: maxTimestamp is the largest, not the last.
  Result<BatchView> view = BatchView::parse(heap.span());
  ASSERT_TRUE(view.ok()) << view.error().message;
  EXPECT_EQ(view->max_timestamp(), kBase + (std::int64_t{1} << 40));
  expect_batch_holds(*view, records, Offset{0});
}

TEST(RecordBatch, RoundTripsTimestampDeltasAtTheLimitsOfInt64) {
  // Given: a base of 0, so the deltas are the extremes of a varlong.
  constexpr std::int64_t kMin = std::numeric_limits<std::int64_t>::min();
  constexpr std::int64_t kMax = std::numeric_limits<std::int64_t>::max();
  std::vector<OwnedRecord> records = {record("a", "1", 0), record("b", "2", kMax), record("c", "3", kMin)};
  const Bytes batch = build(records);
  const HeapBytes heap(batch);

  // Expect
  Result<BatchView> view = BatchView::parse(heap.span());
  ASSERT_TRUE(view.ok()) << view.error().message;
  EXPECT_EQ(view->max_timestamp(), kMax);
  expect_batch_holds(*view, records, Offset{0});
}

TEST(RecordBatch, RoundTripsManyRecordsWithStampedOffsets) {
  // Given: 3000 records of random shape (offset deltas past one varint byte, lengths past two).
  std::mt19937 rng(2024);
  auto uniform = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  auto random_bytes = [&](int max_len) -> OptBytes {
    if (uniform(0, 9) == 0) return std::nullopt;
    Bytes b(static_cast<std::size_t>(uniform(0, max_len)));
    for (std::byte& x : b) x = static_cast<std::byte>(uniform(0, 255));
    return b;
  };
  std::vector<OwnedRecord> records(3000);
  for (OwnedRecord& r : records) {
    r.key = random_bytes(40);
    r.value = random_bytes(uniform(0, 20) == 0 ? 20'000 : 200);
    r.timestamp_ms = 1'700'000'000'000 + uniform(-100'000, 100'000);
    const int header_count = uniform(0, 3);
    for (int h = 0; h < header_count; ++h)
      r.headers.push_back(OwnedHeader{"h" + std::to_string(uniform(0, 999)), random_bytes(30)});
  }
  const BatchOptions options{batch_attr::kTransactional, 5, 123456789, 3, 1000};
  Bytes batch = build(records, options);

  // When: the ring stamps the base offset and the leader epoch (outside the CRC).
  stamp_base_offset(batch, Offset{1'000'000'000'000});
  stamp_partition_leader_epoch(batch, 42);
  const HeapBytes heap(batch);

  // Expect
  Result<BatchView> view = BatchView::parse(heap.span());
  ASSERT_TRUE(view.ok()) << view.error().message;
  BatchOptions stamped = options;
  stamped.partition_leader_epoch = 42;
  expect_batch_holds(*view, records, Offset{1'000'000'000'000}, stamped);
  EXPECT_EQ(view->last_offset().value, 1'000'000'000'000 + 2999);
}

TEST(RecordBatch, RoundTripsARecordWithAThreeByteValueLength) {
  // Given
  std::vector<OwnedRecord> records = {OwnedRecord{bytes_of("big"), Bytes(70'000, std::byte{0x11}), 5, {}}};
  const Bytes batch = build(records);
  const HeapBytes heap(batch);

  // Expect
  EXPECT_EQ(batch.size(), single_record_batch_bytes(RecordInput{view_of(records[0].key), view_of(records[0].value),
                                                                5, {}}));
  Result<BatchView> view = BatchView::parse(heap.span());
  ASSERT_TRUE(view.ok()) << view.error().message;
  expect_batch_holds(*view, records, Offset{0});
}

TEST(RecordBatch, RoundTripsAnEmptyBatch) {
  // Given
  const Bytes batch = build({});
  const HeapBytes heap(batch);

  // Expect: a bare 61-byte header with no records.
  EXPECT_EQ(batch.size(), kBatchHeaderBytes);
  Result<BatchView> view = BatchView::parse(heap.span());
  ASSERT_TRUE(view.ok()) << view.error().message;
  expect_batch_holds(*view, {}, Offset{0});
  EXPECT_TRUE(view->begin() == view->end());
}

TEST(RecordBatch, StampingBaseOffsetAndLeaderEpochKeepsTheCrcValid) {
  // Given
  Bytes batch = build({record("k", "v", 1), record("k", "v", 2)});
  const std::uint32_t crc_before = get_be32(batch, batch_field::kCrc);

  // When
  stamp_base_offset(batch, Offset{-1});  // every byte of the field changes
  stamp_partition_leader_epoch(batch, std::numeric_limits<std::int32_t>::max());
  const HeapBytes heap(batch);

  // Expect
  EXPECT_EQ(get_be32(batch, batch_field::kCrc), crc_before);
  Result<BatchView> view = BatchView::parse(heap.span());
  ASSERT_TRUE(view.ok()) << view.error().message;
  EXPECT_EQ(view->base_offset().value, -1);
  EXPECT_EQ(view->partition_leader_epoch(), std::numeric_limits<std::int32_t>::max());
  std::vector<std::int64_t> offsets;
  for (auto it = view->begin(); it != view->end(); it++) offsets.push_back(it->offset.value);
  EXPECT_EQ(offsets, (std::vector<std::int64_t>{-1, 0}));
}

TEST(BatchBuilder, RefusedAppendLeavesTheBatchAsItWas) {
  // Given: one record that fits exactly, then a second that cannot.
  const Bytes key = bytes_of("key");
  const Bytes value = bytes_of("value");
  const RecordInput first{std::span<const std::byte>(key), std::span<const std::byte>(value), 1000, {}};
  const RecordInput second{std::span<const std::byte>(key), std::span<const std::byte>(value), 9999, {}};
  Bytes alone(single_record_batch_bytes(first));
  Bytes refused(single_record_batch_bytes(first));
  BatchBuilder alone_builder(alone);
  BatchBuilder refused_builder(refused);
  ASSERT_TRUE(alone_builder.append(first));
  ASSERT_TRUE(refused_builder.append(first));

  // When
  EXPECT_FALSE(refused_builder.append(second));

  // Expect: the same bytes as a batch that never saw the second record.
  EXPECT_EQ(refused_builder.record_count(), 1);
  const std::span<std::byte> a = alone_builder.finish();
  const std::span<std::byte> b = refused_builder.finish();
  EXPECT_TRUE(std::ranges::equal(a, b));
}

TEST(BatchBuilder, RefusedFirstAppendLeavesAnEmptyBatchUntouched) {
  // Given: room for the header only.
  Bytes untouched(kBatchHeaderBytes);
  Bytes refused(kBatchHeaderBytes);
  BatchBuilder untouched_builder(untouched);
  BatchBuilder refused_builder(refused);
  const Bytes value = bytes_of("does not fit");
  const RecordInput big{std::nullopt, std::span<const std::byte>(value), 1'700'000'000'000, {}};

  // When
  EXPECT_FALSE(refused_builder.append(big));

  // Expect: no trace of the refused record, its timestamp included.
  EXPECT_EQ(refused_builder.record_count(), 0);
  EXPECT_EQ(refused_builder.size_bytes(), kBatchHeaderBytes);
  const std::span<std::byte> a = untouched_builder.finish();
  const std::span<std::byte> b = refused_builder.finish();
  EXPECT_TRUE(std::ranges::equal(a, b));
  const HeapBytes heap(refused);
  Result<BatchView> view = BatchView::parse(heap.span());
  ASSERT_TRUE(view.ok()) << view.error().message;
  EXPECT_EQ(view->base_timestamp(), 0);
  EXPECT_EQ(view->max_timestamp(), 0);
}

TEST(RecordBatch, ParseReturnsExactlyTheBatchWhenMoreBytesFollow) {
  // Given: two batches back to back, as in a segment or a ring.
  const Bytes first = build({record("a", "1", 1), record("b", "2", 2)});
  const Bytes second = build({record("c", "3", 3)});
  Bytes both = first;
  both.insert(both.end(), second.begin(), second.end());
  const HeapBytes heap(both);

  // Expect: the first view ends where the second batch starts.
  Result<BatchView> view = BatchView::parse(heap.span());
  ASSERT_TRUE(view.ok()) << view.error().message;
  EXPECT_EQ(view->bytes().data(), heap.begin());
  EXPECT_EQ(view->size_bytes(), first.size());
  expect_batch_holds(*view, {record("a", "1", 1), record("b", "2", 2)}, Offset{0});

  Result<BatchView> next = BatchView::parse(heap.span().subspan(view->size_bytes()));
  ASSERT_TRUE(next.ok()) << next.error().message;
  EXPECT_EQ(next->size_bytes(), second.size());
  expect_batch_holds(*next, {record("c", "3", 3)}, Offset{0});
}

TEST(RecordBatch, CompressedBatchParsesAndYieldsNoRecords) {
  for (std::int16_t codec = 1; codec <= 4; ++codec) {
    SCOPED_TRACE("codec " + std::to_string(codec));
    // Given: a compressed payload that is not valid records, under a valid CRC.
    BatchOptions options;
    options.attributes = codec;
    Bytes batch = build({}, options);
    std::mt19937 rng(static_cast<std::mt19937::result_type>(codec));
    for (int i = 0; i < 37; ++i) batch.push_back(static_cast<std::byte>(rng() & 0xFFu));
    put_be32s(batch, batch_field::kBatchLength, static_cast<std::int32_t>(batch.size() - kBatchLogOverhead));
    put_be32s(batch, batch_field::kRecordCount, 5);
    put_be32s(batch, batch_field::kLastOffsetDelta, 4);
    resign(batch);
    const HeapBytes heap(batch);

    // Expect
    Result<BatchView> view = BatchView::parse(heap.span());
    ASSERT_TRUE(view.ok()) << view.error().message;
    EXPECT_EQ(view->compression(), static_cast<Compression>(codec));
    EXPECT_EQ(view->record_count(), 5);
    EXPECT_EQ(view->size_bytes(), batch.size());
    int yielded = 0;
    for (const RecordView& r : *view) {
      (void)r;
      ++yielded;
    }
    EXPECT_EQ(yielded, 0);
    EXPECT_TRUE(view->begin() == view->end());
  }
}

TEST(RecordBatch, ParseTrustedSkipsOnlyTheCrc) {
  // Given: a good batch with a wrong CRC.
  Bytes batch = build({record("k", "v", 1)});
  batch[batch_field::kCrc] ^= std::byte{0xFF};
  const HeapBytes heap(batch);

  // Expect: parse() refuses it, parse_trusted() accepts it.
  expect_mentions(parse_error(batch), "CRC");
  Result<BatchView> trusted = BatchView::parse_trusted(heap.span());
  ASSERT_TRUE(trusted.ok()) << trusted.error().message;
  EXPECT_NE(trusted->stored_crc(), crc32c(trusted->bytes().subspan(batch_field::kAttributes)));
  ASSERT_EQ(trusted->record_count(), 1);
  EXPECT_EQ(copy_of(trusted->begin()->key), bytes_of("k"));
  EXPECT_EQ(copy_of(trusted->begin()->value), bytes_of("v"));

  // Expect: the structure is still checked.
  Bytes short_batch = batch;
  short_batch.pop_back();
  const HeapBytes short_heap(short_batch);
  Result<BatchView> refused = BatchView::parse_trusted(short_heap.span());
  ASSERT_FALSE(refused.ok());
  expect_mentions(refused.error(), "runs past");
}

TEST(RecordBatch, RecordTimestampsAndOffsetsThatOverflowWrapAsInKafka) {
  // Given: a valid batch whose baseTimestamp and baseOffset sit at the top of int64, so that
  // base + delta overflows (Kafka's Java long arithmetic wraps; C++ must not overflow).
  constexpr std::int64_t kMax = std::numeric_limits<std::int64_t>::max();
  constexpr std::int64_t kMin = std::numeric_limits<std::int64_t>::min();
  Bytes batch = build({record("a", "1", 0), record("b", "2", 10)});
  for (std::size_t i = 0; i < 8; ++i)
    batch[batch_field::kBaseTimestamp + i] = static_cast<std::byte>(static_cast<std::uint64_t>(kMax - 5) >> (56 - 8 * i));
  resign(batch);
  stamp_base_offset(batch, Offset{kMax});
  const HeapBytes heap(batch);

  // Expect: parse accepts it (the CRC and the structure are valid) and iteration is defined.
  Result<BatchView> view = BatchView::parse(heap.span());
  ASSERT_TRUE(view.ok()) << view.error().message;
  std::vector<std::int64_t> timestamps;
  std::vector<std::int64_t> offsets;
  for (const RecordView& r : *view) {
    timestamps.push_back(r.timestamp_ms);
    offsets.push_back(r.offset.value);
  }
  EXPECT_EQ(timestamps, (std::vector<std::int64_t>{kMax - 5, kMin + 4}));
  EXPECT_EQ(offsets, (std::vector<std::int64_t>{kMax, kMin}));
}

// ---- (b) the Kafka byte layout, written out by hand -----------------------------------------

TEST(RecordBatch, EncodesOneRecordExactlyAsTheKafkaSpec) {
  // Given
  const Bytes key = bytes_of("key");
  const Bytes value = bytes_of("value");
  const Bytes header_value = bytes_of("x");
  const RecordHeader header{"h", std::span<const std::byte>(header_value)};
  const RecordInput input{std::span<const std::byte>(key), std::span<const std::byte>(value), 1'700'000'000'000,
                          std::span<const RecordHeader>(&header, 1)};
  BatchOptions options;
  options.attributes = batch_attr::kTransactional;
  options.partition_leader_epoch = 7;
  options.producer_id = 0x0102030405060708;
  options.producer_epoch = 0x0A0B;
  options.base_sequence = 0x11121314;
  Bytes out(single_record_batch_bytes(input));
  BatchBuilder builder(out, options);
  ASSERT_TRUE(builder.append(input));
  const std::span<std::byte> built = builder.finish();
  stamp_base_offset(built, Offset{100});

  // Expect
  Bytes expected = hex({
      0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x64,  // baseOffset 100
      0x00, 0x00, 0x00, 0x44,                          // batchLength 68 = 80 - 12
      0x00, 0x00, 0x00, 0x07,                          // partitionLeaderEpoch 7
      0x02,                                            // magic 2
      0x00, 0x00, 0x00, 0x00,                          // crc, filled in below
      0x00, 0x10,                                      // attributes: transactional, no compression
      0x00, 0x00, 0x00, 0x00,                          // lastOffsetDelta 0
      0x00, 0x00, 0x01, 0x8B, 0xCF, 0xE5, 0x68, 0x00,  // baseTimestamp 1700000000000
      0x00, 0x00, 0x01, 0x8B, 0xCF, 0xE5, 0x68, 0x00,  // maxTimestamp 1700000000000
      0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08,  // producerId
      0x0A, 0x0B,                                      // producerEpoch
      0x11, 0x12, 0x13, 0x14,                          // baseSequence
      0x00, 0x00, 0x00, 0x01,                          // records count 1
      // record
      0x24,              // length 18 (zigzag 36)
      0x00,              // attributes
      0x00,              // timestampDelta 0
      0x00,              // offsetDelta 0
      0x06,              // keyLength 3
      0x6B, 0x65, 0x79,  // "key"
      0x0A,              // valueLength 5
      0x76, 0x61, 0x6C, 0x75, 0x65,  // "value"
      0x02,              // headers count 1
      0x02, 0x68,        // header keyLength 1, "h"
      0x02, 0x78,        // header valueLength 1, "x"
  });
  ASSERT_EQ(expected.size(), 80u);
  put_be32(expected, 17, crc32c(std::span<const std::byte>(expected).subspan(21)));
  EXPECT_EQ(Bytes(built.begin(), built.end()), expected);
}

TEST(RecordBatch, EncodesMultiByteAndNegativeVarintsExactlyAsTheKafkaSpec) {
  // Given: three records: a null value; a negative timestamp delta, a null key, a 64-byte value
  // and a header with a null value; a large timestamp delta and an empty key.
  const Bytes a = bytes_of("a");
  const Bytes v64(64, std::byte{0x76});
  const Bytes z = bytes_of("z");
  const RecordHeader null_header{"h", std::nullopt};
  const RecordInput r0{std::span<const std::byte>(a), std::nullopt, 1000, {}};
  const RecordInput r1{std::nullopt, std::span<const std::byte>(v64), 700, std::span<const RecordHeader>(&null_header, 1)};
  const RecordInput r2{std::span<const std::byte>(), std::span<const std::byte>(z), 101'000, {}};
  Bytes out(4096);
  BatchBuilder builder(out);
  ASSERT_TRUE(builder.append(r0));
  ASSERT_TRUE(builder.append(r1));
  ASSERT_TRUE(builder.append(r2));
  const std::span<std::byte> built = builder.finish();

  // Expect
  Bytes expected = hex({
      0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,  // baseOffset 0 (left for the ring)
      0x00, 0x00, 0x00, 0x90,                          // batchLength 144 = 156 - 12
      0xFF, 0xFF, 0xFF, 0xFF,                          // partitionLeaderEpoch -1
      0x02,                                            // magic 2
      0x00, 0x00, 0x00, 0x00,                          // crc, filled in below
      0x00, 0x00,                                      // attributes 0
      0x00, 0x00, 0x00, 0x02,                          // lastOffsetDelta 2
      0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x03, 0xE8,  // baseTimestamp 1000
      0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x8A, 0x88,  // maxTimestamp 101000
      0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,  // producerId -1
      0xFF, 0xFF,                                      // producerEpoch -1
      0xFF, 0xFF, 0xFF, 0xFF,                          // baseSequence -1
      0x00, 0x00, 0x00, 0x03,                          // records count 3
      // record 0 (8 bytes)
      0x0E,        // length 7
      0x00,        // attributes
      0x00,        // timestampDelta 0
      0x00,        // offsetDelta 0
      0x02, 0x61,  // keyLength 1, "a"
      0x01,        // valueLength -1 (null)
      0x00,        // headers count 0
      // record 1 (77 bytes)
      0x96, 0x01,  // length 75 (zigzag 150)
      0x00,        // attributes
      0xD7, 0x04,  // timestampDelta -300 (zigzag 599)
      0x02,        // offsetDelta 1
      0x01,        // keyLength -1 (null)
      0x80, 0x01,  // valueLength 64 (zigzag 128)
  });
  expected.insert(expected.end(), 64, std::byte{0x76});  // the value, 64 x 'v'
  const Bytes tail = hex({
      0x02,        // headers count 1
      0x02, 0x68,  // header keyLength 1, "h"
      0x01,        // header valueLength -1 (null)
      // record 2 (10 bytes)
      0x12,              // length 9
      0x00,              // attributes
      0xC0, 0x9A, 0x0C,  // timestampDelta 100000 (zigzag 200000)
      0x04,              // offsetDelta 2
      0x00,              // keyLength 0 (empty)
      0x02, 0x7A,        // valueLength 1, "z"
      0x00,              // headers count 0
  });
  expected.insert(expected.end(), tail.begin(), tail.end());
  ASSERT_EQ(expected.size(), 156u);
  put_be32(expected, 17, crc32c(std::span<const std::byte>(expected).subspan(21)));
  EXPECT_EQ(Bytes(built.begin(), built.end()), expected);

  // Expect: the hand-written bytes decode to the inputs.
  const HeapBytes heap(expected);
  Result<BatchView> view = BatchView::parse(heap.span());
  ASSERT_TRUE(view.ok()) << view.error().message;
  expect_batch_holds(*view,
                     {OwnedRecord{a, std::nullopt, 1000, {}},
                      OwnedRecord{std::nullopt, v64, 700, {{"h", std::nullopt}}},
                      OwnedRecord{Bytes{}, z, 101'000, {}}},
                     Offset{0});
}

// ---- (c) zigzag varints --------------------------------------------------------------------

struct VarintCase {
  std::int64_t value;
  Bytes encoded;
};

std::vector<VarintCase> varint_cases() {
  return {
      {0, hex({0x00})},
      {-1, hex({0x01})},
      {1, hex({0x02})},
      {63, hex({0x7E})},
      {-64, hex({0x7F})},
      {64, hex({0x80, 0x01})},
      {-65, hex({0x81, 0x01})},
      {8191, hex({0xFE, 0x7F})},
      {8192, hex({0x80, 0x80, 0x01})},
      {std::numeric_limits<std::int32_t>::max(), hex({0xFE, 0xFF, 0xFF, 0xFF, 0x0F})},
      {std::numeric_limits<std::int32_t>::min(), hex({0xFF, 0xFF, 0xFF, 0xFF, 0x0F})},
  };
}

std::vector<VarintCase> varlong_only_cases() {
  return {
      {std::int64_t{1} << 31, hex({0x80, 0x80, 0x80, 0x80, 0x10})},
      {std::numeric_limits<std::int64_t>::max(), hex({0xFE, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x01})},
      {std::numeric_limits<std::int64_t>::min(), hex({0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x01})},
  };
}

TEST(Varint, EncodesAndDecodesBoundariesWithExactBytes) {
  for (const VarintCase& c : varint_cases()) {
    const auto value = static_cast<std::int32_t>(c.value);
    SCOPED_TRACE("value " + std::to_string(value));
    // Given
    std::byte out[16] = {};
    // Expect: the bytes, the predicted size, and the value back from an exact buffer.
    const std::size_t n = wire::encode_varint(value, out);
    EXPECT_EQ(Bytes(out, out + n), c.encoded);
    EXPECT_EQ(wire::varint_bytes(value), c.encoded.size());
    const HeapBytes heap(c.encoded);
    std::int32_t decoded = 0;
    EXPECT_EQ(wire::decode_varint(heap.begin(), heap.end(), decoded), c.encoded.size());
    EXPECT_EQ(decoded, value);
  }
}

TEST(Varlong, EncodesAndDecodesBoundariesWithExactBytes) {
  std::vector<VarintCase> cases = varint_cases();
  for (VarintCase& c : varlong_only_cases()) cases.push_back(c);
  for (const VarintCase& c : cases) {
    SCOPED_TRACE("value " + std::to_string(c.value));
    // Given
    std::byte out[16] = {};
    // Expect
    const std::size_t n = wire::encode_varlong(c.value, out);
    EXPECT_EQ(Bytes(out, out + n), c.encoded);
    EXPECT_EQ(wire::varlong_bytes(c.value), c.encoded.size());
    const HeapBytes heap(c.encoded);
    std::int64_t decoded = 0;
    EXPECT_EQ(wire::decode_varlong(heap.begin(), heap.end(), decoded), c.encoded.size());
    EXPECT_EQ(decoded, c.value);
  }
}

TEST(Varint, DecodeConsumesOnlyItsOwnBytes) {
  // Given: an encoding followed by more bytes.
  const Bytes bytes = hex({0x80, 0x01, 0xFF, 0xFF});
  const HeapBytes heap(bytes);
  std::int32_t v32 = 0;
  std::int64_t v64 = 0;
  // Expect
  EXPECT_EQ(wire::decode_varint(heap.begin(), heap.end(), v32), 2u);
  EXPECT_EQ(v32, 64);
  EXPECT_EQ(wire::decode_varlong(heap.begin(), heap.end(), v64), 2u);
  EXPECT_EQ(v64, 64);
}

TEST(Varint, RoundTripsEveryPowerOfTwoNeighbourhood) {
  for (int k = 0; k < 31; ++k) {
    const std::int32_t p = std::int32_t{1} << k;
    for (std::int32_t v : {p - 1, p, p + 1, -p, -p - 1, -p + 1}) {
      std::byte out[8] = {};
      const std::size_t n = wire::encode_varint(v, out);
      ASSERT_EQ(n, wire::varint_bytes(v)) << v;
      const HeapBytes heap(std::span<const std::byte>(out, n));
      std::int32_t decoded = 0;
      ASSERT_EQ(wire::decode_varint(heap.begin(), heap.end(), decoded), n) << v;
      ASSERT_EQ(decoded, v);
    }
  }
}

TEST(Varlong, RoundTripsEveryPowerOfTwoNeighbourhood) {
  for (int k = 0; k < 63; ++k) {
    const std::int64_t p = std::int64_t{1} << k;
    for (std::int64_t v : {p - 1, p, p + 1, -p, -p - 1, -p + 1}) {
      std::byte out[16] = {};
      const std::size_t n = wire::encode_varlong(v, out);
      ASSERT_EQ(n, wire::varlong_bytes(v)) << v;
      const HeapBytes heap(std::span<const std::byte>(out, n));
      std::int64_t decoded = 0;
      ASSERT_EQ(wire::decode_varlong(heap.begin(), heap.end(), decoded), n) << v;
      ASSERT_EQ(decoded, v);
    }
  }
}

TEST(Varint, RejectsEveryTruncation) {
  for (const VarintCase& c : varint_cases()) {
    for (std::size_t len = 0; len < c.encoded.size(); ++len) {
      // Given: a strict prefix, in a buffer that ends where it ends.
      const HeapBytes heap(std::span<const std::byte>(c.encoded).first(len));
      std::int32_t decoded = 0;
      // Expect
      EXPECT_EQ(wire::decode_varint(heap.begin(), heap.end(), decoded), 0u) << c.value << " cut to " << len;
    }
  }
}

TEST(Varlong, RejectsEveryTruncation) {
  std::vector<VarintCase> cases = varint_cases();
  for (VarintCase& c : varlong_only_cases()) cases.push_back(c);
  for (const VarintCase& c : cases) {
    for (std::size_t len = 0; len < c.encoded.size(); ++len) {
      const HeapBytes heap(std::span<const std::byte>(c.encoded).first(len));
      std::int64_t decoded = 0;
      EXPECT_EQ(wire::decode_varlong(heap.begin(), heap.end(), decoded), 0u) << c.value << " cut to " << len;
    }
  }
}

TEST(Varint, RejectsEncodingsLongerThanFiveBytes) {
  // Given: six bytes (the value 0, padded with continuation bits).
  const Bytes bytes = hex({0x80, 0x80, 0x80, 0x80, 0x80, 0x00});
  const HeapBytes heap(bytes);
  std::int32_t decoded = 0;
  // Expect
  EXPECT_EQ(wire::decode_varint(heap.begin(), heap.end(), decoded), 0u);
}

TEST(Varlong, RejectsEncodingsLongerThanTenBytes) {
  // Given: eleven bytes.
  const Bytes bytes = hex({0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x00});
  const HeapBytes heap(bytes);
  std::int64_t decoded = 0;
  // Expect
  EXPECT_EQ(wire::decode_varlong(heap.begin(), heap.end(), decoded), 0u);
}

TEST(Varint, RejectsFiveByteEncodingsThatOverflow32Bits) {
  for (const Bytes& bytes : {hex({0xFF, 0xFF, 0xFF, 0xFF, 0x1F}), hex({0x80, 0x80, 0x80, 0x80, 0x10}),
                             hex({0xFF, 0xFF, 0xFF, 0xFF, 0x7F})}) {
    const HeapBytes heap(bytes);
    std::int32_t decoded = 0;
    // Expect
    EXPECT_EQ(wire::decode_varint(heap.begin(), heap.end(), decoded), 0u);
  }
}

TEST(Varlong, RejectsTenByteEncodingsThatOverflow64Bits) {
  for (const Bytes& bytes : {hex({0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x02}),
                             hex({0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x7F})}) {
    const HeapBytes heap(bytes);
    std::int64_t decoded = 0;
    // Expect
    EXPECT_EQ(wire::decode_varlong(heap.begin(), heap.end(), decoded), 0u);
  }
}

// ---- (d) malformed batches -----------------------------------------------------------------

// One record, 80 bytes: [61] length 18, [62] attributes, [63] timestampDelta, [64] offsetDelta,
// [65] keyLength 3, [66..68] key, [69] valueLength 5, [70..74] value, [75] header count 1,
// [76] header keyLength 1, [77] header key, [78] header valueLength 1, [79] header value.
Bytes one_record_batch() { return build({record("key", "value", 1'700'000'000'000, {{"h", bytes_of("x")}})}); }

// Three records of 9 bytes at [61], [70], [79]; their offsetDeltas at [64], [73], [82]. 88 bytes.
Bytes three_record_batch() { return build({record("k", "v", 1), record("k", "v", 2), record("k", "v", 3)}); }

struct MalformedCase {
  std::string name;
  Bytes (*base)();
  void (*mutate)(Bytes&);
  std::string mention;
};

void set_batch_length(Bytes& b, std::int32_t v) { put_be32s(b, batch_field::kBatchLength, v); }

std::vector<MalformedCase> malformed_cases() {
  return {
      {"BatchLength48", one_record_batch, [](Bytes& b) { set_batch_length(b, 48); }, "below the minimum 49"},
      {"BatchLength0", one_record_batch, [](Bytes& b) { set_batch_length(b, 0); }, "below the minimum 49"},
      {"BatchLengthNegative", one_record_batch, [](Bytes& b) { set_batch_length(b, -1); }, "below the minimum 49"},
      {"BatchLengthInt32Min", one_record_batch,
       [](Bytes& b) { set_batch_length(b, std::numeric_limits<std::int32_t>::min()); }, "below the minimum 49"},
      {"BatchLengthOnePastBuffer", one_record_batch, [](Bytes& b) { set_batch_length(b, 69); }, "runs past"},
      {"BatchLengthInt32Max", one_record_batch,
       [](Bytes& b) { set_batch_length(b, std::numeric_limits<std::int32_t>::max()); }, "runs past"},
      {"Magic0", one_record_batch, [](Bytes& b) { b[batch_field::kMagic] = std::byte{0}; }, "magic 0"},
      {"Magic1", one_record_batch, [](Bytes& b) { b[batch_field::kMagic] = std::byte{1}; }, "magic 1"},
      {"Magic3", one_record_batch, [](Bytes& b) { b[batch_field::kMagic] = std::byte{3}; }, "magic 3"},
      {"MagicNegative", one_record_batch, [](Bytes& b) { b[batch_field::kMagic] = std::byte{0xFF}; }, "magic -1"},
      {"RecordCountNegative", one_record_batch, [](Bytes& b) { put_be32s(b, batch_field::kRecordCount, -1); },
       "negative record count"},
      {"RecordCountInt32Min", one_record_batch,
       [](Bytes& b) { put_be32s(b, batch_field::kRecordCount, std::numeric_limits<std::int32_t>::min()); },
       "negative record count"},
      {"RecordCountLargerThanTheBytes", one_record_batch,
       [](Bytes& b) {
         put_be32s(b, batch_field::kRecordCount, 1000);
         put_be32s(b, batch_field::kLastOffsetDelta, 999);
       },
       "record count 1000 cannot fit"},
      {"RecordCountInt32Max", one_record_batch,
       [](Bytes& b) {
         put_be32s(b, batch_field::kRecordCount, std::numeric_limits<std::int32_t>::max());
         put_be32s(b, batch_field::kLastOffsetDelta, std::numeric_limits<std::int32_t>::max());
       },
       "cannot fit"},
      {"RecordCountOneMoreThanTheRecords", three_record_batch,
       [](Bytes& b) {
         put_be32s(b, batch_field::kRecordCount, 4);
         put_be32s(b, batch_field::kLastOffsetDelta, 3);
       },
       "record 3: malformed length"},
      {"RecordCountOneFewerThanTheRecords", three_record_batch,
       [](Bytes& b) { put_be32s(b, batch_field::kRecordCount, 2); }, "9 trailing bytes"},
      {"LastOffsetDeltaTooSmall", three_record_batch,
       [](Bytes& b) { put_be32s(b, batch_field::kLastOffsetDelta, 1); }, "lastOffsetDelta 1 cannot hold 3"},
      {"LastOffsetDeltaNegative", one_record_batch,
       [](Bytes& b) { put_be32s(b, batch_field::kLastOffsetDelta, -1); }, "lastOffsetDelta -1"},
      {"CompressionCodec5", one_record_batch, [](Bytes& b) { put_be16(b, batch_field::kAttributes, 5); },
       "unknown compression codec 5"},
      {"CompressionCodec6", one_record_batch, [](Bytes& b) { put_be16(b, batch_field::kAttributes, 0x16); },
       "unknown compression codec 6"},
      {"CompressionCodec7", one_record_batch, [](Bytes& b) { put_be16(b, batch_field::kAttributes, 7); },
       "unknown compression codec 7"},
      {"RecordLengthPastTheBatch", one_record_batch, [](Bytes& b) { b[61] = std::byte{0x26}; },  // 19
       "record 0: length 19 runs past the batch"},
      {"RecordLengthNegative", one_record_batch, [](Bytes& b) { b[61] = std::byte{0x01}; },  // -1
       "record 0: length -1 runs past the batch"},
      {"RecordLengthZero", one_record_batch, [](Bytes& b) { b[61] = std::byte{0x00}; }, "record 0: empty"},
      {"RecordLengthShortOfItsFields", one_record_batch, [](Bytes& b) { b[61] = std::byte{0x10}; },  // 8
       "record 0: value length 5 exceeds the record"},
      {"TimestampDeltaTooLong", one_record_batch,
       [](Bytes& b) { std::fill(b.begin() + 63, b.begin() + 75, std::byte{0x80}); }, "malformed timestampDelta"},
      {"OffsetDeltaPastLastOffsetDelta", one_record_batch, [](Bytes& b) { b[64] = std::byte{0x02}; },
       "offsetDelta 1 out of order or past lastOffsetDelta 0"},
      {"OffsetDeltaNegative", one_record_batch, [](Bytes& b) { b[64] = std::byte{0x01}; }, "offsetDelta -1 out of order"},
      {"OffsetDeltaRepeated", three_record_batch, [](Bytes& b) { b[73] = std::byte{0x00}; },
       "record 1: offsetDelta 0 out of order"},
      {"OffsetDeltasSwapped", three_record_batch,
       [](Bytes& b) {
         b[73] = std::byte{0x04};  // record 1 claims delta 2
         b[82] = std::byte{0x02};  // record 2 claims delta 1
       },
       "record 2: offsetDelta 1 out of order"},
      {"KeyLengthPastTheRecord", one_record_batch, [](Bytes& b) { b[65] = std::byte{0x20}; },  // 16
       "record 0: key length 16 exceeds the record"},
      {"KeyLengthBelowMinusOne", one_record_batch, [](Bytes& b) { b[65] = std::byte{0x03}; },  // -2
       "record 0: key length -2"},
      {"ValueLengthPastTheRecord", one_record_batch, [](Bytes& b) { b[69] = std::byte{0x16}; },  // 11
       "record 0: value length 11 exceeds the record"},
      {"HeaderCountNegative", one_record_batch, [](Bytes& b) { b[75] = std::byte{0x01}; },
       "record 0: malformed header count"},
      {"HeaderKeyNull", one_record_batch, [](Bytes& b) { b[76] = std::byte{0x01}; }, "header 0 key length invalid"},
      {"HeaderKeyLengthPastTheRecord", one_record_batch, [](Bytes& b) { b[76] = std::byte{0x08}; },  // 4
       "header 0 key length invalid"},
      {"HeaderValueLengthPastTheRecord", one_record_batch, [](Bytes& b) { b[78] = std::byte{0x04}; },  // 2
       "header 0 value length invalid"},
      {"HeaderCountPastTheRecord", one_record_batch, [](Bytes& b) { b[75] = std::byte{0x04}; },  // 2
       "header 1 key length invalid"},
      {"BytesLeftInsideTheRecord", one_record_batch, [](Bytes& b) { b[75] = std::byte{0x00}; },  // 0 headers
       "record 0: 4 bytes left inside the record"},
      {"TrailingBytesAfterTheLastRecord", one_record_batch,
       [](Bytes& b) {
         b.push_back(std::byte{0x00});
         b.push_back(std::byte{0x00});
         set_batch_length(b, static_cast<std::int32_t>(b.size() - kBatchLogOverhead));
       },
       "2 trailing bytes after the last record"},
  };
}

void PrintTo(const MalformedCase& c, std::ostream* os) { *os << c.name; }

class MalformedBatch : public ::testing::TestWithParam<MalformedCase> {};

TEST_P(MalformedBatch, IsRejectedAsCorruptWithAMessageNamingTheProblem) {
  // Given: a valid batch, broken in one way and re-signed so that the CRC still matches.
  const MalformedCase& c = GetParam();
  Bytes batch = c.base();
  {
    const HeapBytes heap(batch);
    ASSERT_TRUE(BatchView::parse(heap.span()).ok()) << "the base batch must be valid";
  }
  c.mutate(batch);
  resign(batch);

  // Expect
  expect_mentions(parse_error(batch), c.mention);
}

INSTANTIATE_TEST_SUITE_P(RecordBatch, MalformedBatch, ::testing::ValuesIn(malformed_cases()),
                         [](const ::testing::TestParamInfo<MalformedCase>& param_info) { return param_info.param.name; });

TEST(RecordBatch, RejectsATruncatedHeaderAtEveryLength) {
  const Bytes batch = one_record_batch();
  for (std::size_t len = 0; len < kBatchHeaderBytes; ++len) {
    SCOPED_TRACE("length " + std::to_string(len));
    // Given
    const Bytes cut(batch.begin(), batch.begin() + static_cast<std::ptrdiff_t>(len));
    // Expect
    expect_mentions(parse_error(cut), "truncated: " + std::to_string(len) + " bytes");
  }
}

TEST(RecordBatch, RejectsATruncatedBatchAtEveryByteOfItsRecords) {
  const Bytes batch = three_record_batch();
  for (std::size_t len = kBatchHeaderBytes; len < batch.size(); ++len) {
    SCOPED_TRACE("length " + std::to_string(len));
    // Given
    const Bytes cut(batch.begin(), batch.begin() + static_cast<std::ptrdiff_t>(len));
    // Expect
    expect_mentions(parse_error(cut), "runs past the " + std::to_string(len) + " bytes given");
  }
}

TEST(RecordBatch, RejectsAFlippedByteAnywhereTheCrcCovers) {
  const Bytes batch = build({record("key", "value", 5, {{"h", bytes_of("x")}, {"n", std::nullopt}}),
                             record("", "v", -5, {}), OwnedRecord{std::nullopt, std::nullopt, 6, {}}});
  // The stored CRC itself [17..20], then attributes [21] to the end.
  for (std::size_t at = batch_field::kCrc; at < batch.size(); ++at) {
    for (std::byte mask : {std::byte{0x01}, std::byte{0x80}, std::byte{0xFF}}) {
      SCOPED_TRACE("byte " + std::to_string(at) + " mask " + std::to_string(std::to_integer<int>(mask)));
      // Given
      Bytes flipped = batch;
      flipped[at] ^= mask;
      // Expect
      expect_mentions(parse_error(flipped), "CRC-32C mismatch");
    }
  }
}

TEST(RecordBatch, ParseOfRandomlyMutatedResignedBatchesStaysInsideTheBatch) {
  // Given: a batch with every kind of field, mutated at random and re-signed so that the
  // structural checks (not the CRC) meet the damage. Deterministic and bounded.
  const Bytes batch = build({record("key", "value", 5, {{"h", bytes_of("x")}, {"n", std::nullopt}}),
                             record("", "v", -5, {}), OwnedRecord{std::nullopt, std::nullopt, 6, {}},
                             record("k", std::string(150, 'v'), 1'000'000, {{"", Bytes{}}})});
  std::mt19937 rng(99);
  auto uniform = [&](std::size_t lo, std::size_t hi) {
    return std::uniform_int_distribution<std::size_t>(lo, hi)(rng);
  };
  int accepted = 0;
  int rejected = 0;
  for (int iteration = 0; iteration < 20'000; ++iteration) {
    Bytes mutant = batch;
    const std::size_t edits = uniform(1, 3);
    for (std::size_t e = 0; e < edits; ++e)
      mutant[uniform(batch_field::kBatchLength, mutant.size() - 1)] = static_cast<std::byte>(uniform(0, 255));
    if (uniform(0, 7) == 0) mutant.resize(uniform(kBatchHeaderBytes, batch.size() + 8));
    const std::int64_t total = std::int64_t{kBatchLogOverhead} + static_cast<std::int32_t>(get_be32(mutant, 8));
    if (total >= static_cast<std::int64_t>(kBatchHeaderBytes) && total <= static_cast<std::int64_t>(mutant.size()))
      resign(mutant, static_cast<std::size_t>(total));

    const HeapBytes heap(mutant);
    Result<BatchView> view = BatchView::parse(heap.span());
    // The one-pass reader agrees with the full parse, and stays inside the batch too.
    if (Result<BatchView> header = BatchView::parse_header(heap.span(), true); header.ok()) {
      RecordReader reader(*header);
      RecordView r;
      std::int32_t read = 0;
      while (reader.next(r)) {
        ++read;
        if (r.value) {
          ASSERT_TRUE(inside(*r.value, header->bytes()));
        }
        ASSERT_TRUE(inside(r.headers_bytes, header->bytes()));
      }
      ASSERT_EQ(reader.failed(), !view.ok());
      if (reader.failed()) {
        EXPECT_EQ(reader.error().code, Errc::kCorrupt);
      } else if (header->compression() == Compression::kNone) {
        EXPECT_EQ(read, header->record_count());
      }
    } else {
      ASSERT_FALSE(view.ok());
    }
    if (!view.ok()) {
      ASSERT_EQ(view.error().code, Errc::kCorrupt) << view.error().message;
      ++rejected;
      continue;
    }
    ++accepted;
    // Expect: everything an accepted batch hands out lies inside it.
    ASSERT_TRUE(inside(view->bytes(), heap.span()));
    std::int32_t yielded = 0;
    for (const RecordView& r : *view) {
      if (r.key) {
        ASSERT_TRUE(inside(*r.key, view->bytes()));
      }
      if (r.value) {
        ASSERT_TRUE(inside(*r.value, view->bytes()));
      }
      ASSERT_TRUE(inside(r.headers_bytes, view->bytes()));
      std::int32_t headers = 0;
      r.for_each_header([&](const RecordHeader& h) {
        ++headers;
        EXPECT_TRUE(inside(std::span<const std::byte>(reinterpret_cast<const std::byte*>(h.key.data()), h.key.size()),
                           r.headers_bytes));
        if (h.value) {
          EXPECT_TRUE(inside(*h.value, r.headers_bytes));
        }
      });
      ASSERT_EQ(headers, r.header_count);
      ++yielded;
    }
    ASSERT_EQ(yielded, view->compression() == Compression::kNone ? view->record_count() : 0);
  }
  RecordProperty("accepted", accepted);
  RecordProperty("rejected", rejected);
  // Expect: the mutations reached both outcomes.
  EXPECT_GT(accepted, 0);
  EXPECT_GT(rejected, 0);
}

TEST(RecordBatch, SingleRecordEncoderWritesWhatTheBuilderWrites) {
  const std::vector<OwnedRecord> records = {record("key", "value", 5, {{"h", bytes_of("x")}, {"n", std::nullopt}}),
                                            OwnedRecord{std::nullopt, std::nullopt, -7, {}},
                                            record("", std::string(300, 'v'), 1'700'000'000'000, {}),
                                            record(std::string(5000, 'k'), std::string(70, 'v'), 3, {{std::string(400, 'h'), bytes_of("y")}})};
  for (const OwnedRecord& owned : records) {
    std::vector<RecordHeader> headers;
    for (const OwnedHeader& h : owned.headers) headers.push_back(RecordHeader{h.key, view_of(h.value)});
    const RecordInput input{view_of(owned.key), view_of(owned.value), owned.timestamp_ms,
                            std::span<const RecordHeader>(headers)};
    BatchOptions options;
    options.producer_id = 42;
    options.base_sequence = 7;
    options.producer_epoch = 3;
    options.attributes = 0x10;  // carried as given (the CRC covers it)
    const Bytes expected = build({owned}, options);
    Bytes single(8192);
    const std::span<std::byte> got = encode_single_record_batch(single, input, options);
    ASSERT_EQ(got.size(), expected.size());
    EXPECT_TRUE(std::equal(got.begin(), got.end(), expected.begin()));
    EXPECT_TRUE(BatchView::parse(got).ok());
    // Expect: a buffer one byte short is refused, not overrun.
    Bytes tight(expected.size() - 1);
    EXPECT_TRUE(encode_single_record_batch(tight, input, options).empty());
  }
}

// The one-record encoder's CRC gathers pieces of 1 to 8 bytes into words: every alignment of
// the key, the value and the headers against those words must give the builder's bytes.
TEST(RecordBatch, SingleRecordEncoderAgreesWithTheBuilderForEveryShortShape) {
  std::vector<std::optional<std::string>> keys = {std::nullopt};
  for (const int n : {0, 1, 3, 7, 8, 9, 13, 64, 65, 200}) keys.emplace_back(std::string(static_cast<std::size_t>(n), 'k'));
  std::vector<std::optional<std::string>> values = {std::nullopt};
  for (int n = 0; n <= 80; ++n) values.emplace_back(std::string(static_cast<std::size_t>(n), static_cast<char>('a' + n % 26)));
  for (const int n : {100, 127, 128, 1000, 20000}) values.emplace_back(std::string(static_cast<std::size_t>(n), 'v'));
  int checked = 0;
  for (const auto& key : keys) {
    for (const auto& value : values) {
      for (const bool with_headers : {false, true}) {
        OwnedRecord owned{key ? OptBytes(bytes_of(*key)) : std::nullopt, value ? OptBytes(bytes_of(*value)) : std::nullopt,
                          1'700'000'000'123, {}};
        if (with_headers) owned.headers = {{"trace", bytes_of("abcdefghij")}, {"", std::nullopt}, {std::string(70, 'h'), bytes_of("")}};
        std::vector<RecordHeader> headers;
        for (const OwnedHeader& h : owned.headers) headers.push_back(RecordHeader{h.key, view_of(h.value)});
        const RecordInput input{view_of(owned.key), view_of(owned.value), owned.timestamp_ms, std::span<const RecordHeader>(headers)};
        BatchOptions options;
        options.producer_id = 0x0102030405060708;
        options.base_sequence = 77;
        options.producer_epoch = 9;
        const Bytes expected = build({owned}, options);
        Bytes single(expected.size() + 64);
        const std::span<std::byte> got = encode_single_record_batch(single, input, options);
        const std::string shape = "key " + (key ? std::to_string(key->size()) : "null") + ", value " +
                                  (value ? std::to_string(value->size()) : "null") + (with_headers ? ", headers" : "");
        ASSERT_EQ(got.size(), expected.size()) << shape;
        ASSERT_TRUE(std::equal(got.begin(), got.end(), expected.begin())) << shape;
        ++checked;
      }
    }
  }
  EXPECT_EQ(checked, 11 * 87 * 2);
}

TEST(RecordBatch, SingleRecordDecoderAgreesWithParse) {
  // Given: one-record batches, and batches it must refuse.
  const Bytes one = build({record("key", "value", 5, {{"h", bytes_of("x")}})});
  const Bytes two = build({record("a", "b", 1, {}), record("c", "d", 2, {})});
  RecordView r;
  // Expect
  ASSERT_TRUE(decode_single_record_batch(one, r));
  Result<BatchView> full = BatchView::parse(one);
  ASSERT_TRUE(full.ok());
  const RecordView expected = *full->begin();
  EXPECT_EQ(r.offset, expected.offset);
  EXPECT_EQ(r.timestamp_ms, expected.timestamp_ms);
  EXPECT_EQ(r.value->data(), expected.value->data());
  EXPECT_EQ(r.header_count, 1);
  EXPECT_FALSE(decode_single_record_batch(two, r));
  for (std::size_t cut = 0; cut < one.size(); ++cut)
    EXPECT_FALSE(decode_single_record_batch(std::span<const std::byte>(one).first(cut), r)) << cut;
  Bytes trailing = one;
  put_be32(trailing, 8, get_be32(trailing, 8) + 1);  // batchLength claims one byte more
  trailing.push_back(std::byte{0});
  EXPECT_FALSE(decode_single_record_batch(trailing, r));
}

TEST(RecordReader, ReadsWhatTheIteratorReadsInOnePass) {
  const Bytes batch = build({record("key", "value", 5, {{"h", bytes_of("x")}, {"n", std::nullopt}}),
                             record("", "v", -5, {}), OwnedRecord{std::nullopt, std::nullopt, 6, {}}});
  Result<BatchView> full = BatchView::parse(batch);
  Result<BatchView> header = BatchView::parse_header(batch, false);
  ASSERT_TRUE(full.ok());
  ASSERT_TRUE(header.ok());
  RecordReader reader(*header);
  RecordView r;
  for (const RecordView& expected : *full) {
    ASSERT_TRUE(reader.next(r));
    EXPECT_EQ(r.offset, expected.offset);
    EXPECT_EQ(r.timestamp_ms, expected.timestamp_ms);
    EXPECT_EQ(r.key.has_value(), expected.key.has_value());
    EXPECT_EQ(r.value.has_value(), expected.value.has_value());
    if (r.value) {
      EXPECT_EQ(r.value->data(), expected.value->data());
    }
    EXPECT_EQ(r.header_count, expected.header_count);
    EXPECT_EQ(r.headers_bytes.size(), expected.headers_bytes.size());
  }
  EXPECT_FALSE(reader.next(r));
  EXPECT_FALSE(reader.failed());
}

}  // namespace
}  // namespace weft
