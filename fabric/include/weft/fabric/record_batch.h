// Kafka RecordBatch v2, encoded and decoded exactly as Kafka lays it out. The same bytes travel
// from a producer's claim in a ring to segment files, followers and Kafka consumers.
//
// Layout (big-endian): baseOffset i64 | batchLength i32 | partitionLeaderEpoch i32 | magic i8 |
// crc u32 | attributes i16 | lastOffsetDelta i32 | baseTimestamp i64 | maxTimestamp i64 |
// producerId i64 | producerEpoch i16 | baseSequence i32 | recordCount i32 | records...
// The CRC-32C covers attributes..end, so baseOffset and partitionLeaderEpoch can be stamped by
// whoever assigns them without recomputing it.
#pragma once

#include <bit>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string_view>

#include "weft/fabric/result.h"
#include "weft/fabric/types.h"

namespace weft {

namespace batch_field {
inline constexpr std::size_t kBaseOffset = 0;
inline constexpr std::size_t kBatchLength = 8;
inline constexpr std::size_t kPartitionLeaderEpoch = 12;
inline constexpr std::size_t kMagic = 16;
inline constexpr std::size_t kCrc = 17;
inline constexpr std::size_t kAttributes = 21;
inline constexpr std::size_t kLastOffsetDelta = 23;
inline constexpr std::size_t kBaseTimestamp = 27;
inline constexpr std::size_t kMaxTimestamp = 35;
inline constexpr std::size_t kProducerId = 43;
inline constexpr std::size_t kProducerEpoch = 51;
inline constexpr std::size_t kBaseSequence = 53;
inline constexpr std::size_t kRecordCount = 57;
inline constexpr std::size_t kRecords = 61;
}  // namespace batch_field

inline constexpr std::size_t kBatchHeaderBytes = batch_field::kRecords;  // 61
// baseOffset and batchLength precede what batchLength counts (Kafka's LOG_OVERHEAD).
inline constexpr std::size_t kBatchLogOverhead = 12;
inline constexpr std::int8_t kBatchMagicV2 = 2;

enum class Compression : std::uint8_t { kNone = 0, kGzip = 1, kSnappy = 2, kLz4 = 3, kZstd = 4 };

// Attribute bits of a batch.
namespace batch_attr {
inline constexpr std::int16_t kCompressionMask = 0x07;
inline constexpr std::int16_t kLogAppendTime = 0x08;
inline constexpr std::int16_t kTransactional = 0x10;
inline constexpr std::int16_t kControl = 0x20;
inline constexpr std::int16_t kDeleteHorizon = 0x40;
}  // namespace batch_attr

using OptionalBytes = std::optional<std::span<const std::byte>>;

struct RecordHeader {
  std::string_view key;  // Kafka header keys are non-null strings
  OptionalBytes value;
};

struct RecordInput {
  OptionalBytes key;
  OptionalBytes value;
  std::int64_t timestamp_ms = 0;  // 0: TopicProducer stamps its wall clock (Kafka's CreateTime)
  std::span<const RecordHeader> headers;
};

struct BatchOptions {
  std::int16_t attributes = 0;  // carried as given (compress_batch() in compression.h compresses)
  std::int32_t partition_leader_epoch = -1;
  std::int64_t producer_id = -1;
  std::int16_t producer_epoch = -1;
  std::int32_t base_sequence = -1;
};

// Bytes one record takes inside a batch, its length prefix included.
std::size_t encoded_record_bytes(const RecordInput& record, std::int32_t offset_delta,
                                 std::int64_t timestamp_delta) noexcept;

// Bytes of a batch holding just this record (the common single-record claim).
inline std::size_t single_record_batch_bytes(const RecordInput& record) noexcept {
  return kBatchHeaderBytes + encoded_record_bytes(record, 0, 0);
}

// Writes a batch into caller-owned memory (for example a ring claim) with no allocation.
// Not thread-safe; one builder per batch.
class BatchBuilder {
 public:
  explicit BatchBuilder(std::span<std::byte> out, const BatchOptions& options = {}) noexcept;

  // Appends a record; returns false, leaving the batch as it was, when it does not fit.
  bool append(const RecordInput& record) noexcept;

  // Completes lengths, counts, timestamps and the CRC; returns the batch (a prefix of `out`).
  // baseOffset is left 0 for the ring to stamp.
  std::span<std::byte> finish() noexcept;

  std::int32_t record_count() const noexcept { return record_count_; }
  std::size_t size_bytes() const noexcept { return used_; }

 private:
  std::span<std::byte> out_;
  std::size_t used_;
  std::int32_t record_count_ = 0;
  std::int64_t base_timestamp_ = 0;
  std::int64_t max_timestamp_ = 0;
};

// Encodes a batch of exactly one record into `out` in one pass (the common one-record claim,
// at about half the cost of BatchBuilder). Returns the batch, or an empty span if it does not
// fit. baseOffset is left 0 for the ring to stamp.
std::span<std::byte> encode_single_record_batch(std::span<std::byte> out, const RecordInput& record,
                                                const BatchOptions& options = {}) noexcept;

struct RecordView;
// Checks and decodes, in one pass, a batch that must hold exactly one uncompressed record at
// offset delta 0 (the common one-record claim): no CRC check, every length checked against the
// batch. False if it is not such a batch (a valid batch of another shape is read with
// parse_header() and a RecordReader) or is malformed (parse() then says why).
bool decode_single_record_batch(std::span<const std::byte> bytes, RecordView& out) noexcept;

// One record of a validated batch; views point into the batch bytes.
struct RecordView {
  Offset offset;
  std::int64_t timestamp_ms = 0;
  std::int8_t attributes = 0;
  OptionalBytes key;
  OptionalBytes value;
  std::int32_t header_count = 0;
  std::span<const std::byte> headers_bytes;  // the encoded headers, walk with for_each_header

  // Calls fn(RecordHeader) for each header.
  template <class Fn>
  void for_each_header(Fn&& fn) const;
};

// A RecordBatch v2 checked by parse() (every length and the CRC) or parse_header() (the header
// only). Iterating its records never reads outside the batch; after parse() it yields every
// record, after parse_header() it stops at the first one that does not decode (use a
// RecordReader to learn that it stopped).
class BatchView {
 public:
  // Validates the batch at the start of `bytes` (which may hold more after it).
  static Result<BatchView> parse(std::span<const std::byte> bytes);
  // As parse(), without the CRC: for bytes this process wrote or already verified.
  static Result<BatchView> parse_trusted(std::span<const std::byte> bytes);
  // Checks the header (and the CRC if asked) but not the records: read them with a
  // RecordReader, which checks each one as it decodes it (one pass instead of two).
  static Result<BatchView> parse_header(std::span<const std::byte> bytes, bool check_crc);

  std::span<const std::byte> bytes() const noexcept { return bytes_; }
  std::size_t size_bytes() const noexcept { return bytes_.size(); }
  Offset base_offset() const noexcept;
  Offset last_offset() const noexcept { return base_offset() + last_offset_delta(); }
  std::int32_t last_offset_delta() const noexcept;
  std::int32_t partition_leader_epoch() const noexcept;
  std::int16_t attributes() const noexcept;
  Compression compression() const noexcept {
    return static_cast<Compression>(attributes() & batch_attr::kCompressionMask);
  }
  std::uint32_t stored_crc() const noexcept;
  std::int64_t base_timestamp() const noexcept;
  std::int64_t max_timestamp() const noexcept;
  std::int64_t producer_id() const noexcept;
  std::int16_t producer_epoch() const noexcept;
  std::int32_t base_sequence() const noexcept;
  std::int32_t record_count() const noexcept;

  class Iterator {
   public:
    using value_type = RecordView;
    using difference_type = std::ptrdiff_t;
    Iterator() = default;
    const RecordView& operator*() const noexcept { return current_; }
    const RecordView* operator->() const noexcept { return &current_; }
    Iterator& operator++() noexcept;
    Iterator operator++(int) noexcept {
      Iterator copy = *this;
      ++*this;
      return copy;
    }
    bool operator==(const Iterator& other) const noexcept { return remaining_ == other.remaining_; }

   private:
    friend class BatchView;
    Iterator(const BatchView* batch, std::int32_t remaining, const std::byte* cursor) noexcept;
    void decode() noexcept;
    const BatchView* batch_ = nullptr;
    std::int32_t remaining_ = 0;
    const std::byte* cursor_ = nullptr;
    RecordView current_;
  };

  // Records of an uncompressed batch; a compressed batch yields none (see compression()).
  Iterator begin() const noexcept;
  Iterator end() const noexcept { return Iterator(this, 0, nullptr); }

 private:
  static Result<BatchView> parse_impl(std::span<const std::byte> bytes, bool check_crc);
  explicit BatchView(std::span<const std::byte> bytes) : bytes_(bytes) {}
  std::span<const std::byte> bytes_;
};

// Decodes the records of a batch that parse_header() accepted, checking each one as it goes:
// never reads outside the batch, and stops at the first malformed record. A compressed batch
// yields no records and does not fail: its records are read once decompressed (compression.h),
// by a reader given them.
class RecordReader {
 public:
  explicit RecordReader(const BatchView& batch) noexcept;
  // Reads a compressed batch's records from `records`, its records section decompressed:
  // offsets, timestamps and the count come from the batch's header, and the views of the
  // records point into `records`, which must outlive them.
  RecordReader(const BatchView& batch, std::span<const std::byte> records) noexcept;
  // The next record; false at the end, or at a malformed record (then failed() is true, and
  // `out` holds nothing usable). Bytes left after the last record set failed() as it is read.
  bool next(RecordView& out) noexcept;
  bool failed() const noexcept { return failed_; }
  // What was malformed (builds the message; only for the failure path).
  Error error() const;

 private:
  BatchView batch_;
  // The header fields every record needs, read once instead of per record.
  std::int64_t base_timestamp_;
  Offset base_offset_;
  std::int32_t last_offset_delta_;
  const std::byte* begin_;  // the records section read
  const std::byte* cursor_;
  const std::byte* end_;
  std::int32_t remaining_;
  std::int32_t previous_delta_ = -1;
  bool failed_ = false;
};

// Stamps the fields the ring assigns (outside the CRC).
void stamp_base_offset(std::span<std::byte> batch, Offset base) noexcept;
void stamp_partition_leader_epoch(std::span<std::byte> batch, std::int32_t epoch) noexcept;

namespace wire {
// Kafka's zigzag varints. decode_* return the bytes consumed, or 0 if malformed or truncated.
constexpr std::uint32_t zigzag32(std::int32_t v) {
  return (static_cast<std::uint32_t>(v) << 1) ^ static_cast<std::uint32_t>(v >> 31);
}
constexpr std::uint64_t zigzag64(std::int64_t v) {
  return (static_cast<std::uint64_t>(v) << 1) ^ static_cast<std::uint64_t>(v >> 63);
}
// Bytes of an unsigned LEB128: 7 bits a byte, at least one byte.
constexpr std::size_t unsigned_bytes(std::uint64_t v) {
  if (v < 0x80) [[likely]] return 1;
  if (v < 0x4000) return 2;
  return (static_cast<std::size_t>(std::bit_width(v)) + 6) / 7;
}
inline std::size_t encode_unsigned(std::uint64_t v, std::byte* out) noexcept {
  if (v < 0x80) [[likely]] {
    out[0] = static_cast<std::byte>(v);
    return 1;
  }
  if (v < 0x4000) {
    out[0] = static_cast<std::byte>(v | 0x80);
    out[1] = static_cast<std::byte>(v >> 7);
    return 2;
  }
  std::size_t n = 0;
  while (v >= 0x80) {
    out[n++] = static_cast<std::byte>(v | 0x80);
    v >>= 7;
  }
  out[n++] = static_cast<std::byte>(v);
  return n;
}
inline std::size_t encode_varint(std::int32_t value, std::byte* out) noexcept { return encode_unsigned(zigzag32(value), out); }
inline std::size_t encode_varlong(std::int64_t value, std::byte* out) noexcept { return encode_unsigned(zigzag64(value), out); }
constexpr std::size_t varint_bytes(std::int32_t value) { return unsigned_bytes(zigzag32(value)); }
constexpr std::size_t varlong_bytes(std::int64_t value) { return unsigned_bytes(zigzag64(value)); }

std::size_t decode_varint_slow(const std::byte* p, const std::byte* end, std::int32_t& value) noexcept;
std::size_t decode_varlong_slow(const std::byte* p, const std::byte* end, std::int64_t& value) noexcept;

// Values of one or two bytes (lengths under 8 KiB, small deltas) are the common case: they are
// decoded inline; longer ones, and every malformed or truncated one, take the slow path.
inline std::size_t decode_unsigned_short(const std::byte* p, const std::byte* end, std::uint32_t& raw) noexcept {
  if (p >= end) return 0;
  const auto b0 = static_cast<std::uint32_t>(p[0]);
  if ((b0 & 0x80u) == 0) [[likely]] {
    raw = b0;
    return 1;
  }
  if (end - p >= 2) {
    const auto b1 = static_cast<std::uint32_t>(p[1]);
    if ((b1 & 0x80u) == 0) {
      raw = (b0 & 0x7Fu) | (b1 << 7);
      return 2;
    }
  }
  return 0;
}
inline std::size_t decode_varint(const std::byte* p, const std::byte* end, std::int32_t& value) noexcept {
  std::uint32_t u = 0;
  if (const std::size_t n = decode_unsigned_short(p, end, u)) [[likely]] {
    value = static_cast<std::int32_t>((u >> 1) ^ (~(u & 1) + 1));
    return n;
  }
  return decode_varint_slow(p, end, value);
}
inline std::size_t decode_varlong(const std::byte* p, const std::byte* end, std::int64_t& value) noexcept {
  std::uint32_t u = 0;
  if (const std::size_t n = decode_unsigned_short(p, end, u)) [[likely]] {
    value = static_cast<std::int64_t>(u >> 1) ^ -static_cast<std::int64_t>(u & 1);
    return n;
  }
  return decode_varlong_slow(p, end, value);
}

// Big-endian fields, inline: the ring's reader and the batch encoders use them per frame.
inline std::int64_t load_be64(const std::byte* p) noexcept {
  std::uint64_t v;
  __builtin_memcpy(&v, p, 8);
  return static_cast<std::int64_t>(__builtin_bswap64(v));
}
inline std::int32_t load_be32(const std::byte* p) noexcept {
  std::uint32_t v;
  __builtin_memcpy(&v, p, 4);
  return static_cast<std::int32_t>(__builtin_bswap32(v));
}
inline std::int16_t load_be16(const std::byte* p) noexcept {
  std::uint16_t v;
  __builtin_memcpy(&v, p, 2);
  return static_cast<std::int16_t>(__builtin_bswap16(v));
}
inline void store_be64(std::byte* p, std::int64_t v) noexcept {
  const std::uint64_t b = __builtin_bswap64(static_cast<std::uint64_t>(v));
  __builtin_memcpy(p, &b, 8);
}
inline void store_be32(std::byte* p, std::int32_t v) noexcept {
  const std::uint32_t b = __builtin_bswap32(static_cast<std::uint32_t>(v));
  __builtin_memcpy(p, &b, 4);
}
inline void store_be16(std::byte* p, std::int16_t v) noexcept {
  const std::uint16_t b = __builtin_bswap16(static_cast<std::uint16_t>(v));
  __builtin_memcpy(p, &b, 2);
}
}  // namespace wire

template <class Fn>
void RecordView::for_each_header(Fn&& fn) const {
  const std::byte* p = headers_bytes.data();
  const std::byte* end = p + headers_bytes.size();
  for (std::int32_t i = 0; i < header_count; ++i) {
    std::int32_t key_len = 0;
    p += wire::decode_varint(p, end, key_len);
    RecordHeader header;
    header.key = std::string_view(reinterpret_cast<const char*>(p), static_cast<std::size_t>(key_len));
    p += key_len;
    std::int32_t value_len = 0;
    p += wire::decode_varint(p, end, value_len);
    if (value_len >= 0) {
      header.value = std::span<const std::byte>(p, static_cast<std::size_t>(value_len));
      p += value_len;
    }
    fn(header);
  }
}

}  // namespace weft
