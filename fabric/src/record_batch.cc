#include "weft/fabric/record_batch.h"

#include <algorithm>
#include <cstring>
#include <string>

#include "weft/fabric/crc32c.h"

#if defined(__x86_64__)
#include <nmmintrin.h>
#endif

namespace weft {
namespace wire {

namespace {
// Reads an unsigned LEB128 of at most `max_bytes`; the last byte may not carry bits past `bits`.
std::size_t decode_unsigned(const std::byte* p, const std::byte* end, std::uint64_t& out, std::size_t max_bytes,
                            unsigned bits) noexcept {
  std::uint64_t value = 0;
  for (std::size_t i = 0; i < max_bytes; ++i) {
    if (p + i >= end) return 0;  // truncated
    const auto b = static_cast<std::uint64_t>(p[i]);
    const unsigned shift = static_cast<unsigned>(7 * i);
    if (i == max_bytes - 1 && (b >> (bits - shift)) != 0) return 0;  // overflows the type
    value |= (b & 0x7F) << shift;
    if ((b & 0x80) == 0) {
      out = value;
      return i + 1;
    }
  }
  return 0;  // too long
}
}  // namespace

std::size_t decode_varint_slow(const std::byte* p, const std::byte* end, std::int32_t& value) noexcept {
  std::uint64_t raw = 0;
  const std::size_t n = decode_unsigned(p, end, raw, 5, 32);
  if (n == 0) return 0;
  const auto u = static_cast<std::uint32_t>(raw);
  value = static_cast<std::int32_t>((u >> 1) ^ (~(u & 1) + 1));
  return n;
}

std::size_t decode_varlong_slow(const std::byte* p, const std::byte* end, std::int64_t& value) noexcept {
  std::uint64_t raw = 0;
  const std::size_t n = decode_unsigned(p, end, raw, 10, 64);
  if (n == 0) return 0;
  value = static_cast<std::int64_t>((raw >> 1) ^ (~(raw & 1) + 1));
  return n;
}

}  // namespace wire

namespace {

[[gnu::always_inline]] inline std::size_t nullable_bytes(const OptionalBytes& b) noexcept {
  if (!b) return wire::varint_bytes(-1);
  const auto n = static_cast<std::int32_t>(b->size());
  return wire::varint_bytes(n) + b->size();
}

[[gnu::always_inline]] inline std::byte* put_nullable(std::byte* p, const OptionalBytes& b) noexcept {
  if (!b) return p + wire::encode_varint(-1, p);
  p += wire::encode_varint(static_cast<std::int32_t>(b->size()), p);
  if (!b->empty()) std::memcpy(p, b->data(), b->size());
  return p + b->size();
}

[[gnu::always_inline]] inline std::size_t record_body_bytes(const RecordInput& r, std::int32_t offset_delta, std::int64_t timestamp_delta) noexcept {
  std::size_t n = 1;  // attributes
  n += wire::varlong_bytes(timestamp_delta);
  n += wire::varint_bytes(offset_delta);
  n += nullable_bytes(r.key);
  n += nullable_bytes(r.value);
  n += wire::varint_bytes(static_cast<std::int32_t>(r.headers.size()));
  for (const RecordHeader& h : r.headers) {
    n += wire::varint_bytes(static_cast<std::int32_t>(h.key.size())) + h.key.size();
    n += nullable_bytes(h.value);
  }
  return n;
}

}  // namespace

std::size_t encoded_record_bytes(const RecordInput& record, std::int32_t offset_delta,
                                 std::int64_t timestamp_delta) noexcept {
  const std::size_t body = record_body_bytes(record, offset_delta, timestamp_delta);
  return wire::varint_bytes(static_cast<std::int32_t>(body)) + body;
}

namespace {

// The header fields a batch's options decide (all but lengths, counts, timestamps and the CRC).
[[gnu::always_inline]] inline void write_fixed_header(std::byte* h, const BatchOptions& options) noexcept {
  wire::store_be64(h + batch_field::kBaseOffset, 0);
  wire::store_be32(h + batch_field::kPartitionLeaderEpoch, options.partition_leader_epoch);
  h[batch_field::kMagic] = static_cast<std::byte>(kBatchMagicV2);
  wire::store_be16(h + batch_field::kAttributes, options.attributes);
  wire::store_be64(h + batch_field::kProducerId, options.producer_id);
  wire::store_be16(h + batch_field::kProducerEpoch, options.producer_epoch);
  wire::store_be32(h + batch_field::kBaseSequence, options.base_sequence);
}

// The header fields that wait for the batch's end: lengths, counts, timestamps (all but the CRC).
[[gnu::always_inline]] inline void seal_fields(std::byte* h, std::size_t size, std::int32_t records, std::int64_t base_timestamp,
                                               std::int64_t max_timestamp) noexcept {
  wire::store_be32(h + batch_field::kBatchLength, static_cast<std::int32_t>(size - kBatchLogOverhead));
  wire::store_be32(h + batch_field::kLastOffsetDelta, records > 0 ? records - 1 : 0);
  wire::store_be64(h + batch_field::kBaseTimestamp, base_timestamp);
  wire::store_be64(h + batch_field::kMaxTimestamp, max_timestamp);
  wire::store_be32(h + batch_field::kRecordCount, records);
}

// The CRC of a batch of `size` bytes, read from the batch itself.
[[gnu::always_inline]] inline std::uint32_t batch_crc(const std::byte* h, std::size_t size) noexcept {
  return crc32c_extend(0, h + batch_field::kAttributes, size - batch_field::kAttributes);
}

// Completes a batch of `size` bytes and `records` records: lengths, counts, timestamps, CRC.
[[gnu::always_inline]] inline void seal_header(std::byte* h, std::size_t size, std::int32_t records,
                                               std::int64_t base_timestamp, std::int64_t max_timestamp) noexcept {
  seal_fields(h, size, records, base_timestamp, max_timestamp);
  wire::store_be32(h + batch_field::kCrc, static_cast<std::int32_t>(batch_crc(h, size)));
}

// Writes one record (its length prefix first) whose body takes `body` bytes; returns its end.
[[gnu::always_inline]] inline std::byte* write_record(std::byte* p, const RecordInput& r, std::size_t body,
                                                      std::int32_t offset_delta, std::int64_t timestamp_delta) noexcept {
  p += wire::encode_varint(static_cast<std::int32_t>(body), p);
  *p++ = std::byte{0};  // record attributes: unused in v2
  p += wire::encode_varlong(timestamp_delta, p);
  p += wire::encode_varint(offset_delta, p);
  p = put_nullable(p, r.key);
  p = put_nullable(p, r.value);
  p += wire::encode_varint(static_cast<std::int32_t>(r.headers.size()), p);
  for (const RecordHeader& h : r.headers) {
    p += wire::encode_varint(static_cast<std::int32_t>(h.key.size()), p);
    std::memcpy(p, h.key.data(), h.key.size());
    p += h.key.size();
    p = put_nullable(p, h.value);
  }
  return p;
}

}  // namespace

BatchBuilder::BatchBuilder(std::span<std::byte> out, const BatchOptions& options) noexcept
    : out_(out), used_(kBatchHeaderBytes) {
  WEFT_CHECK(out.size() >= kBatchHeaderBytes, "a batch buffer must hold at least the 61-byte header");
  write_fixed_header(out_.data(), options);
}

bool BatchBuilder::append(const RecordInput& r) noexcept {
  // The first record sets the base timestamp, but only once it is known to fit.
  const std::int64_t base_timestamp = record_count_ == 0 ? r.timestamp_ms : base_timestamp_;
  const std::int64_t ts_delta = r.timestamp_ms - base_timestamp;
  const std::size_t body = record_body_bytes(r, record_count_, ts_delta);
  const std::size_t total = wire::varint_bytes(static_cast<std::int32_t>(body)) + body;
  if (total > out_.size() - used_) return false;
  if (record_count_ == 0) {
    base_timestamp_ = r.timestamp_ms;
    max_timestamp_ = r.timestamp_ms;
  }
  write_record(out_.data() + used_, r, body, record_count_, ts_delta);
  used_ += total;
  ++record_count_;
  if (r.timestamp_ms > max_timestamp_) max_timestamp_ = r.timestamp_ms;
  return true;
}

std::span<std::byte> BatchBuilder::finish() noexcept {
  seal_header(out_.data(), used_, record_count_, base_timestamp_, max_timestamp_);
  return out_.first(used_);
}

#if defined(__x86_64__)
namespace {

// The running CRC register (not inverted) over the bytes of a zigzag varint, from the value.
__attribute__((target("sse4.2"))) inline std::uint32_t crc_varint(std::uint32_t c, std::int32_t value) noexcept {
  auto v = (static_cast<std::uint32_t>(value) << 1) ^ static_cast<std::uint32_t>(value >> 31);
  while (v >= 0x80) {
    c = _mm_crc32_u8(c, static_cast<std::uint8_t>(v | 0x80));
    v >>= 7;
  }
  return _mm_crc32_u8(c, static_cast<std::uint8_t>(v));
}

// ... over bytes in memory the encoder did not just write (the caller's key and value).
inline std::uint32_t crc_bytes(std::uint32_t c, std::span<const std::byte> bytes) noexcept {
  return ~crc32c_extend(~c, bytes.data(), bytes.size());
}

__attribute__((target("sse4.2"))) inline std::uint32_t crc_nullable(std::uint32_t c, const OptionalBytes& b) noexcept {
  if (!b) return crc_varint(c, -1);
  return crc_bytes(crc_varint(c, static_cast<std::int32_t>(b->size())), *b);
}

// The CRC of a one-record batch (attributes to its end), from what encode_single_record_batch
// writes rather than from the bytes it wrote: read back at once, those bytes wait for the narrower
// stores that wrote them (the first load of the CRC was three quarters of its time in the ring
// benchmark's producer).
__attribute__((target("sse4.2"))) std::uint32_t single_record_batch_crc(const RecordInput& r, std::size_t body,
                                                                        const BatchOptions& o) noexcept {
  std::uint32_t c = ~0u;
  c = _mm_crc32_u16(c, __builtin_bswap16(static_cast<std::uint16_t>(o.attributes)));
  c = _mm_crc32_u32(c, 0);  // lastOffsetDelta
  const std::uint64_t timestamp = __builtin_bswap64(static_cast<std::uint64_t>(r.timestamp_ms));
  std::uint64_t c64 = _mm_crc32_u64(c, timestamp);  // base timestamp
  c64 = _mm_crc32_u64(c64, timestamp);             // max timestamp
  c64 = _mm_crc32_u64(c64, __builtin_bswap64(static_cast<std::uint64_t>(o.producer_id)));
  c = static_cast<std::uint32_t>(c64);
  c = _mm_crc32_u16(c, __builtin_bswap16(static_cast<std::uint16_t>(o.producer_epoch)));
  c = _mm_crc32_u32(c, __builtin_bswap32(static_cast<std::uint32_t>(o.base_sequence)));
  c = _mm_crc32_u32(c, __builtin_bswap32(1u));  // record count
  c = crc_varint(c, static_cast<std::int32_t>(body));
  c = _mm_crc32_u8(c, 0);  // record attributes
  c = _mm_crc32_u8(c, 0);  // timestampDelta 0
  c = _mm_crc32_u8(c, 0);  // offsetDelta 0
  c = crc_nullable(c, r.key);
  c = crc_nullable(c, r.value);
  c = crc_varint(c, static_cast<std::int32_t>(r.headers.size()));
  for (const RecordHeader& h : r.headers) {
    c = crc_bytes(crc_varint(c, static_cast<std::int32_t>(h.key.size())), std::as_bytes(std::span(h.key.data(), h.key.size())));
    c = crc_nullable(c, h.value);
  }
  return ~c;
}

}  // namespace
#endif

std::span<std::byte> encode_single_record_batch(std::span<std::byte> out, const RecordInput& r,
                                                const BatchOptions& options) noexcept {
  const std::size_t body = record_body_bytes(r, 0, 0);
  const std::size_t total = kBatchHeaderBytes + wire::varint_bytes(static_cast<std::int32_t>(body)) + body;
  if (total > out.size()) return {};
  std::byte* h = out.data();
  write_fixed_header(h, options);
  write_record(h + kBatchHeaderBytes, r, body, 0, 0);
  seal_fields(h, total, 1, r.timestamp_ms, r.timestamp_ms);
#if defined(__x86_64__)
  const std::uint32_t crc = crc32c_hardware() ? single_record_batch_crc(r, body, options) : batch_crc(h, total);
#else
  const std::uint32_t crc = batch_crc(h, total);
#endif
  wire::store_be32(h + batch_field::kCrc, static_cast<std::int32_t>(crc));
  return out.first(total);
}

void stamp_base_offset(std::span<std::byte> batch, Offset base) noexcept {
  wire::store_be64(batch.data() + batch_field::kBaseOffset, base.value);
}

void stamp_partition_leader_epoch(std::span<std::byte> batch, std::int32_t epoch) noexcept {
  wire::store_be32(batch.data() + batch_field::kPartitionLeaderEpoch, epoch);
}

// ---- decoding ------------------------------------------------------------------------------

Offset BatchView::base_offset() const noexcept { return Offset{wire::load_be64(bytes_.data())}; }
std::int32_t BatchView::last_offset_delta() const noexcept {
  return wire::load_be32(bytes_.data() + batch_field::kLastOffsetDelta);
}
std::int32_t BatchView::partition_leader_epoch() const noexcept {
  return wire::load_be32(bytes_.data() + batch_field::kPartitionLeaderEpoch);
}
std::int16_t BatchView::attributes() const noexcept { return wire::load_be16(bytes_.data() + batch_field::kAttributes); }
std::uint32_t BatchView::stored_crc() const noexcept {
  return static_cast<std::uint32_t>(wire::load_be32(bytes_.data() + batch_field::kCrc));
}
std::int64_t BatchView::base_timestamp() const noexcept { return wire::load_be64(bytes_.data() + batch_field::kBaseTimestamp); }
std::int64_t BatchView::max_timestamp() const noexcept { return wire::load_be64(bytes_.data() + batch_field::kMaxTimestamp); }
std::int64_t BatchView::producer_id() const noexcept { return wire::load_be64(bytes_.data() + batch_field::kProducerId); }
std::int16_t BatchView::producer_epoch() const noexcept { return wire::load_be16(bytes_.data() + batch_field::kProducerEpoch); }
std::int32_t BatchView::base_sequence() const noexcept { return wire::load_be32(bytes_.data() + batch_field::kBaseSequence); }
std::int32_t BatchView::record_count() const noexcept { return wire::load_be32(bytes_.data() + batch_field::kRecordCount); }

Result<BatchView> BatchView::parse(std::span<const std::byte> bytes) { return parse_impl(bytes, true); }
Result<BatchView> BatchView::parse_trusted(std::span<const std::byte> bytes) { return parse_impl(bytes, false); }

namespace {

Error corrupt(std::string what) { return Error{Errc::kCorrupt, "record batch: " + std::move(what)}; }

// Checks one record's fields lie inside [p, end) and end exactly there.
Result<void> validate_record(const std::byte* p, const std::byte* end, std::int32_t index,
                             std::int32_t last_offset_delta, std::int32_t& previous_delta) {
  auto where = [&] { return "record " + std::to_string(index) + ": "; };
  if (p >= end) return corrupt(where() + "empty");
  ++p;  // attributes
  std::int64_t ts_delta = 0;
  std::size_t n = wire::decode_varlong(p, end, ts_delta);
  if (n == 0) return corrupt(where() + "malformed timestampDelta");
  p += n;
  std::int32_t offset_delta = 0;
  n = wire::decode_varint(p, end, offset_delta);
  if (n == 0) return corrupt(where() + "malformed offsetDelta");
  p += n;
  if (offset_delta <= previous_delta || offset_delta > last_offset_delta)
    return corrupt(where() + "offsetDelta " + std::to_string(offset_delta) + " out of order or past lastOffsetDelta " +
                   std::to_string(last_offset_delta));
  previous_delta = offset_delta;
  for (const char* field : {"key", "value"}) {
    std::int32_t len = 0;
    n = wire::decode_varint(p, end, len);
    if (n == 0) return corrupt(where() + "malformed " + field + " length");
    p += n;
    if (len < -1 || len > end - p)
      return corrupt(where() + field + " length " + std::to_string(len) + " exceeds the record");
    if (len > 0) p += len;
  }
  std::int32_t header_count = 0;
  n = wire::decode_varint(p, end, header_count);
  if (n == 0 || header_count < 0) return corrupt(where() + "malformed header count");
  p += n;
  for (std::int32_t h = 0; h < header_count; ++h) {
    std::int32_t len = 0;
    n = wire::decode_varint(p, end, len);
    if (n == 0 || len < 0 || len > end - p - static_cast<std::ptrdiff_t>(n))
      return corrupt(where() + "header " + std::to_string(h) + " key length invalid");
    p += n + static_cast<std::size_t>(len);
    n = wire::decode_varint(p, end, len);
    if (n == 0 || len < -1 || len > end - p - static_cast<std::ptrdiff_t>(n))
      return corrupt(where() + "header " + std::to_string(h) + " value length invalid");
    p += n;
    if (len > 0) p += len;
  }
  if (p != end) return corrupt(where() + std::to_string(end - p) + " bytes left inside the record");
  return ok();
}

}  // namespace

namespace {

// Decodes one record whose body (after its length prefix) spans exactly [p, end), checking
// every field against `end`. False on any fault; validate_record() then says which.
[[gnu::always_inline]] inline bool decode_record(const std::byte* p, const std::byte* end, std::int32_t last_offset_delta,
                          std::int32_t& previous_delta, std::int64_t base_timestamp, Offset base_offset,
                          RecordView& out) noexcept {
  if (p >= end) return false;
  out.attributes = static_cast<std::int8_t>(*p++);
  std::int64_t ts_delta = 0;
  std::size_t n = wire::decode_varlong(p, end, ts_delta);
  if (n == 0) return false;
  p += n;
  std::int32_t offset_delta = 0;
  n = wire::decode_varint(p, end, offset_delta);
  if (n == 0 || offset_delta <= previous_delta || offset_delta > last_offset_delta) return false;
  p += n;
  previous_delta = offset_delta;
  for (OptionalBytes* field : {&out.key, &out.value}) {
    std::int32_t len = 0;
    n = wire::decode_varint(p, end, len);
    if (n == 0) return false;
    p += n;
    if (len < -1 || len > end - p) return false;
    if (len < 0) {
      field->reset();
    } else {
      *field = std::span<const std::byte>(p, static_cast<std::size_t>(len));
      p += len;
    }
  }
  n = wire::decode_varint(p, end, out.header_count);
  if (n == 0 || out.header_count < 0) return false;
  p += n;
  const std::byte* headers = p;
  for (std::int32_t h = 0; h < out.header_count; ++h) {
    std::int32_t len = 0;
    n = wire::decode_varint(p, end, len);
    if (n == 0 || len < 0 || len > end - p - static_cast<std::ptrdiff_t>(n)) return false;
    p += n + static_cast<std::size_t>(len);
    n = wire::decode_varint(p, end, len);
    if (n == 0 || len < -1 || len > end - p - static_cast<std::ptrdiff_t>(n)) return false;
    p += n + static_cast<std::size_t>(std::max(len, 0));
  }
  if (p != end) return false;
  out.headers_bytes = std::span<const std::byte>(headers, static_cast<std::size_t>(end - headers));
  // Both sums come from the wire and may overflow: wrap as Kafka's Java does, never signed overflow.
  out.timestamp_ms =
      static_cast<std::int64_t>(static_cast<std::uint64_t>(base_timestamp) + static_cast<std::uint64_t>(ts_delta));
  out.offset = Offset{static_cast<std::int64_t>(static_cast<std::uint64_t>(base_offset.value) +
                                                static_cast<std::uint64_t>(offset_delta))};
  return true;
}

// Reads record `index` at `p` (its length prefix first): advances `p` past it, or explains why not.
Result<void> next_record(const std::byte*& p, const std::byte* end, std::int32_t index, std::int32_t last_delta,
                         std::int32_t& previous_delta, std::int64_t base_timestamp, Offset base_offset,
                         RecordView& out) {
  std::int32_t length = 0;
  const std::size_t n = wire::decode_varint(p, end, length);
  if (n == 0) return corrupt("record " + std::to_string(index) + ": malformed length");
  if (length < 0 || length > end - p - static_cast<std::ptrdiff_t>(n))
    return corrupt("record " + std::to_string(index) + ": length " + std::to_string(length) + " runs past the batch");
  const std::byte* body = p + n;
  const std::int32_t before = previous_delta;
  if (!decode_record(body, body + length, last_delta, previous_delta, base_timestamp, base_offset, out)) [[unlikely]] {
    previous_delta = before;
    WEFT_TRY_VOID(validate_record(body, body + length, index, last_delta, previous_delta));
    return corrupt("record " + std::to_string(index) + ": malformed");
  }
  p = body + length;
  return ok();
}

}  // namespace

bool decode_single_record_batch(std::span<const std::byte> bytes, RecordView& out) noexcept {
  if (bytes.size() < kBatchHeaderBytes) return false;
  const std::byte* h = bytes.data();
  const std::int32_t batch_length = wire::load_be32(h + batch_field::kBatchLength);
  if (batch_length < static_cast<std::int32_t>(kBatchHeaderBytes - kBatchLogOverhead) ||
      kBatchLogOverhead + static_cast<std::size_t>(batch_length) > bytes.size())
    return false;
  if (static_cast<std::int8_t>(h[batch_field::kMagic]) != kBatchMagicV2 ||
      (wire::load_be16(h + batch_field::kAttributes) & batch_attr::kCompressionMask) != 0 ||
      wire::load_be32(h + batch_field::kRecordCount) != 1 || wire::load_be32(h + batch_field::kLastOffsetDelta) != 0)
    return false;
  const std::byte* end = h + kBatchLogOverhead + batch_length;
  const std::byte* p = h + kBatchHeaderBytes;
  std::int32_t length = 0;
  const std::size_t n = wire::decode_varint(p, end, length);
  if (n == 0 || length != end - p - static_cast<std::ptrdiff_t>(n)) return false;
  std::int32_t previous_delta = -1;
  return decode_record(p + n, end, 0, previous_delta, wire::load_be64(h + batch_field::kBaseTimestamp),
                       Offset{wire::load_be64(h + batch_field::kBaseOffset)}, out);
}

Result<BatchView> BatchView::parse_header(std::span<const std::byte> bytes, bool check_crc) {
  if (bytes.size() < kBatchHeaderBytes)
    return corrupt("truncated: " + std::to_string(bytes.size()) + " bytes, the header needs 61");
  const std::byte* h = bytes.data();
  const std::int32_t batch_length = wire::load_be32(h + batch_field::kBatchLength);
  if (batch_length < static_cast<std::int32_t>(kBatchHeaderBytes - kBatchLogOverhead))
    return corrupt("batchLength " + std::to_string(batch_length) + " is below the minimum 49");
  const std::size_t total = kBatchLogOverhead + static_cast<std::size_t>(batch_length);
  if (total > bytes.size())
    return corrupt("batchLength " + std::to_string(batch_length) + " runs past the " + std::to_string(bytes.size()) +
                   " bytes given");
  const auto magic = static_cast<std::int8_t>(h[batch_field::kMagic]);
  if (magic != kBatchMagicV2) return corrupt("magic " + std::to_string(magic) + ", only 2 is supported");
  if (check_crc) {
    const std::uint32_t computed = crc32c_extend(0, h + batch_field::kAttributes, total - batch_field::kAttributes);
    const auto stored = static_cast<std::uint32_t>(wire::load_be32(h + batch_field::kCrc));
    if (computed != stored)
      return corrupt("CRC-32C mismatch: stored " + std::to_string(stored) + ", computed " + std::to_string(computed));
  }
  BatchView view(bytes.first(total));
  const std::int32_t count = view.record_count();
  const std::int32_t last_delta = view.last_offset_delta();
  if (count < 0) return corrupt("negative record count " + std::to_string(count));
  if (last_delta < 0 || (count > 0 && last_delta < count - 1))
    return corrupt("lastOffsetDelta " + std::to_string(last_delta) + " cannot hold " + std::to_string(count) +
                   " records");
  const int codec = view.attributes() & batch_attr::kCompressionMask;
  if (codec > static_cast<int>(Compression::kZstd)) return corrupt("unknown compression codec " + std::to_string(codec));
  // Each record takes at least one byte, so a count that cannot fit is refused before walking.
  if (codec == 0 && static_cast<std::size_t>(count) > total - kBatchHeaderBytes)
    return corrupt("record count " + std::to_string(count) + " cannot fit in " +
                   std::to_string(total - kBatchHeaderBytes) + " bytes");
  return view;
}

Result<BatchView> BatchView::parse_impl(std::span<const std::byte> bytes, bool check_crc) {
  WEFT_TRY(BatchView view, parse_header(bytes, check_crc));
  if (view.compression() != Compression::kNone) return view;  // validated when decompressed
  // The one-pass reader checks every record; the walk that explains a fault runs only on one.
  RecordReader reader(view);
  RecordView scratch;
  while (reader.next(scratch)) {
  }
  if (reader.failed()) [[unlikely]]
    return reader.error();
  return view;
}

BatchView::Iterator BatchView::begin() const noexcept {
  if (compression() != Compression::kNone || record_count() == 0) return end();
  return Iterator(this, record_count(), bytes_.data() + kBatchHeaderBytes);
}

BatchView::Iterator::Iterator(const BatchView* batch, std::int32_t remaining, const std::byte* cursor) noexcept
    : batch_(batch), remaining_(remaining), cursor_(cursor) {
  if (remaining_ > 0) decode();
}

BatchView::Iterator& BatchView::Iterator::operator++() noexcept {
  if (--remaining_ > 0) decode();
  return *this;
}

// Decodes the record at cursor_. After parse() these checks only repeat what passed; they stay
// because a view from parse_header(), or ring memory a producer overwrites meanwhile, can hold
// anything: a record that does not decode ends the iteration, inside the batch.
void BatchView::Iterator::decode() noexcept {
  const std::byte* end = batch_->bytes_.data() + batch_->bytes_.size();
  std::int32_t length = 0;
  const std::size_t n = wire::decode_varint(cursor_, end, length);
  const std::byte* body = cursor_ + n;
  std::int32_t previous_delta = -1;  // order was checked by parse()
  if (n == 0 || length < 0 || length > end - body ||
      !decode_record(body, body + length, INT32_MAX, previous_delta, batch_->base_timestamp(), batch_->base_offset(),
                     current_)) [[unlikely]] {
    remaining_ = 0;
    current_ = RecordView{};
    return;
  }
  cursor_ = body + length;
}

RecordReader::RecordReader(const BatchView& batch) noexcept
    : batch_(batch),
      base_timestamp_(batch.base_timestamp()),
      base_offset_(batch.base_offset()),
      last_offset_delta_(batch.last_offset_delta()),
      begin_(batch.bytes().data() + kBatchHeaderBytes),
      cursor_(begin_),
      end_(batch.bytes().data() + batch.bytes().size()),
      remaining_(batch.compression() == Compression::kNone ? batch.record_count() : 0),
      // An uncompressed batch of no records must end at its header.
      failed_(remaining_ == 0 && batch.compression() == Compression::kNone && cursor_ != end_) {}

RecordReader::RecordReader(const BatchView& batch, std::span<const std::byte> records) noexcept
    : batch_(batch),
      base_timestamp_(batch.base_timestamp()),
      base_offset_(batch.base_offset()),
      last_offset_delta_(batch.last_offset_delta()),
      begin_(records.data()),
      cursor_(begin_),
      end_(records.data() + records.size()),
      remaining_(batch.record_count()),
      failed_(remaining_ == 0 && cursor_ != end_) {}

bool RecordReader::next(RecordView& out) noexcept {
  if (remaining_ <= 0) return false;
  std::int32_t length = 0;
  const std::size_t n = wire::decode_varint(cursor_, end_, length);
  const std::byte* body = cursor_ + n;
  if (n == 0 || length < 0 || length > end_ - body ||
      !decode_record(body, body + length, last_offset_delta_, previous_delta_, base_timestamp_, base_offset_, out)) [[unlikely]] {
    failed_ = true;
    remaining_ = 0;
    return false;
  }
  cursor_ = body + length;
  if (--remaining_ == 0 && cursor_ != end_) failed_ = true;  // bytes after the last record: corrupt
  return true;
}

Error RecordReader::error() const {
  if (!failed_) return Error{Errc::kOk, {}};
  // Walks the records again, explaining the first fault (the header passed parse_header()).
  const std::byte* p = begin_;
  const std::int32_t count = batch_.record_count();
  std::int32_t previous_delta = -1;
  RecordView scratch;
  for (std::int32_t i = 0; i < count; ++i)
    if (Result<void> record = next_record(p, end_, i, batch_.last_offset_delta(), previous_delta, 0, Offset{0}, scratch);
        !record.ok())
      return std::move(record).error();
  if (p != end_) return corrupt(std::to_string(end_ - p) + " trailing bytes after the last record");
  return Error{Errc::kCorrupt, "record batch: malformed"};
}

}  // namespace weft
