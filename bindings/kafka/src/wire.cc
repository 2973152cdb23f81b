#include "weft/kafka/wire.h"

#include <array>
#include <limits>

#include "weft/fabric/record_batch.h"

namespace weft::kafka {

namespace {

// The versions served: the ranges current clients negotiate (librdkafka 2.x, the Java client,
// kafka-python, kafkajs), limited to what weft implements exactly. Fetch starts at v4, the first
// version that carries RecordBatch v2 (the only format weft stores), and stops at v12, the last
// that names topics (v13 uses topic ids). Produce is served from v0 because librdkafka compresses
// with gzip, snappy or lz4 only for a broker that lists Produce v0; a v0-v2 request carrying the
// old message formats (magic 0 or 1) is answered UNSUPPORTED_FOR_MESSAGE_FORMAT per partition.
constexpr std::array<ApiSupport, 18> kApis{{
    {ApiKey::kProduce, 0, 9, 9, "Produce"},
    {ApiKey::kFetch, 4, 12, 12, "Fetch"},
    {ApiKey::kListOffsets, 1, 6, 6, "ListOffsets"},
    {ApiKey::kMetadata, 0, 12, 9, "Metadata"},
    {ApiKey::kOffsetCommit, 0, 8, 8, "OffsetCommit"},
    {ApiKey::kOffsetFetch, 0, 8, 6, "OffsetFetch"},
    {ApiKey::kFindCoordinator, 0, 4, 3, "FindCoordinator"},
    {ApiKey::kJoinGroup, 0, 9, 6, "JoinGroup"},
    {ApiKey::kHeartbeat, 0, 4, 4, "Heartbeat"},
    {ApiKey::kLeaveGroup, 0, 5, 4, "LeaveGroup"},
    {ApiKey::kSyncGroup, 0, 5, 4, "SyncGroup"},
    {ApiKey::kDescribeGroups, 0, 5, 5, "DescribeGroups"},
    {ApiKey::kListGroups, 0, 4, 3, "ListGroups"},
    {ApiKey::kApiVersions, 0, 3, 3, "ApiVersions"},
    {ApiKey::kCreateTopics, 0, 7, 5, "CreateTopics"},
    {ApiKey::kDeleteTopics, 0, 6, 4, "DeleteTopics"},
    {ApiKey::kInitProducerId, 0, 4, 2, "InitProducerId"},
    {ApiKey::kDescribeConfigs, 0, 4, 4, "DescribeConfigs"},
}};

}  // namespace

std::span<const ApiSupport> supported_apis() noexcept { return kApis; }

const ApiSupport* find_api(std::int16_t key) noexcept {
  for (const ApiSupport& api : kApis)
    if (static_cast<std::int16_t>(api.key) == key) return &api;
  return nullptr;
}

std::string_view api_name(std::int16_t key) noexcept {
  const ApiSupport* api = find_api(key);
  return api != nullptr ? api->name : std::string_view("Unknown");
}

// ---- Reader ---------------------------------------------------------------------------------

void Reader::fail(std::string_view why) noexcept {
  if (!error_.empty()) return;
  try {
    error_ = std::string(why) + " at byte " + std::to_string(position_);
  } catch (...) {
    error_ = "malformed";
  }
}

const std::byte* Reader::take(std::size_t n, std::string_view what) noexcept {
  if (!error_.empty()) return nullptr;
  if (n > remaining()) {
    fail(std::string_view(what.empty() ? "truncated field" : what));
    return nullptr;
  }
  const std::byte* p = bytes_.data() + position_;
  position_ += n;
  return p;
}

std::int8_t Reader::i8() noexcept {
  const std::byte* p = take(1, "truncated int8");
  return p != nullptr ? static_cast<std::int8_t>(*p) : 0;
}
std::int16_t Reader::i16() noexcept {
  const std::byte* p = take(2, "truncated int16");
  return p != nullptr ? wire::load_be16(p) : 0;
}
std::int32_t Reader::i32() noexcept {
  const std::byte* p = take(4, "truncated int32");
  return p != nullptr ? wire::load_be32(p) : 0;
}
std::int64_t Reader::i64() noexcept {
  const std::byte* p = take(8, "truncated int64");
  return p != nullptr ? wire::load_be64(p) : 0;
}
std::string_view Reader::uuid() noexcept {
  const std::byte* p = take(16, "truncated uuid");
  return p != nullptr ? std::string_view(reinterpret_cast<const char*>(p), 16) : std::string_view();
}

std::uint32_t Reader::uvarint() noexcept {
  std::uint32_t value = 0;
  for (int shift = 0; shift < 35; shift += 7) {
    const std::byte* p = take(1, "truncated varint");
    if (p == nullptr) return 0;
    const auto b = static_cast<std::uint8_t>(*p);
    if (shift == 28 && (b & 0xf0) != 0) break;  // more than 32 bits
    value |= static_cast<std::uint32_t>(b & 0x7f) << shift;
    if ((b & 0x80) == 0) return value;
  }
  fail("varint longer than 5 bytes");
  return 0;
}

std::int32_t Reader::varint() noexcept {
  const std::uint32_t u = uvarint();
  return static_cast<std::int32_t>(u >> 1) ^ -static_cast<std::int32_t>(u & 1);
}

std::int32_t Reader::length(bool flexible, std::string_view what) noexcept {
  std::int64_t n = 0;
  if (flexible) {
    n = static_cast<std::int64_t>(uvarint()) - 1;
  } else {
    n = what == "bytes" ? i32() : i16();
  }
  if (!ok()) return 0;
  if (n < -1) {
    fail("negative length");
    return 0;
  }
  if (n > static_cast<std::int64_t>(remaining())) {
    fail("length past the end of the request");
    return 0;
  }
  return static_cast<std::int32_t>(n);
}

std::optional<std::string_view> Reader::nullable_string(bool flexible) noexcept {
  const std::int32_t n = length(flexible, "string");
  if (!ok() || n < 0) return std::nullopt;
  const std::byte* p = take(static_cast<std::size_t>(n), "truncated string");
  if (p == nullptr) return std::nullopt;
  return std::string_view(reinterpret_cast<const char*>(p), static_cast<std::size_t>(n));
}

std::string_view Reader::string(bool flexible) noexcept {
  const std::size_t at = position_;
  std::optional<std::string_view> s = nullable_string(flexible);
  if (!ok()) return {};
  if (!s) {
    position_ = at;
    fail("null string where none is allowed");
    return {};
  }
  return *s;
}

std::optional<std::span<const std::byte>> Reader::nullable_bytes(bool flexible) noexcept {
  const std::int32_t n = length(flexible, "bytes");
  if (!ok() || n < 0) return std::nullopt;
  const std::byte* p = take(static_cast<std::size_t>(n), "truncated bytes");
  if (p == nullptr) return std::nullopt;
  return std::span<const std::byte>(p, static_cast<std::size_t>(n));
}

std::span<const std::byte> Reader::bytes(bool flexible) noexcept {
  std::optional<std::span<const std::byte>> b = nullable_bytes(flexible);
  if (ok() && !b) fail("null bytes where none are allowed");
  return b.value_or(std::span<const std::byte>());
}

std::int32_t Reader::array(bool flexible, bool nullable, std::size_t min_element_bytes) noexcept {
  std::int64_t n = flexible ? static_cast<std::int64_t>(uvarint()) - 1 : i32();
  if (!ok()) return 0;
  if (n == -1 && nullable) return -1;
  if (n < 0) {
    fail(n == -1 ? "null array where none is allowed" : "negative array length");
    return 0;
  }
  if (min_element_bytes == 0) min_element_bytes = 1;
  if (static_cast<std::uint64_t>(n) > remaining() / min_element_bytes) {
    fail("array count larger than the request");
    return 0;
  }
  return static_cast<std::int32_t>(n);
}

void Reader::tagged_fields(bool flexible) noexcept {
  if (!flexible) return;
  const std::uint32_t count = uvarint();
  std::uint32_t previous_tag = 0;
  for (std::uint32_t i = 0; i < count && ok(); ++i) {
    const std::uint32_t tag = uvarint();
    if (i > 0 && tag <= previous_tag) {
      fail("tagged fields out of order");
      return;
    }
    previous_tag = tag;
    const std::uint32_t size = uvarint();
    take(size, "truncated tagged field");
  }
}

// ---- Writer ---------------------------------------------------------------------------------

void Writer::i16(std::int16_t v) {
  std::byte b[2];
  wire::store_be16(b, v);
  raw(b);
}
void Writer::i32(std::int32_t v) {
  std::byte b[4];
  wire::store_be32(b, v);
  raw(b);
}
void Writer::i64(std::int64_t v) {
  std::byte b[8];
  wire::store_be64(b, v);
  raw(b);
}
void Writer::uvarint(std::uint32_t v) {
  while (v >= 0x80) {
    out_.push_back(static_cast<char>((v & 0x7f) | 0x80));
    v >>= 7;
  }
  out_.push_back(static_cast<char>(v));
}
void Writer::uuid(std::string_view sixteen_bytes) {
  if (sixteen_bytes.size() == 16) out_.append(sixteen_bytes);
  else out_.append(16, '\0');
}
void Writer::string(std::string_view s, bool flexible) {
  // An int16 length holds no more: a longer string (one a flexible request brought) is cut
  // rather than written with a negative length that no client could read past.
  if (!flexible) s = s.substr(0, static_cast<std::size_t>(INT16_MAX));
  if (flexible) uvarint(static_cast<std::uint32_t>(s.size() + 1));
  else i16(static_cast<std::int16_t>(s.size()));
  out_.append(s);
}
void Writer::nullable_string(const std::optional<std::string_view>& s, bool flexible) {
  if (s) return string(*s, flexible);
  if (flexible) uvarint(0);
  else i16(-1);
}
void Writer::bytes(std::string_view b, bool flexible) {
  if (flexible) uvarint(static_cast<std::uint32_t>(b.size() + 1));
  else i32(static_cast<std::int32_t>(b.size()));
  out_.append(b);
}
void Writer::bytes(std::span<const std::byte> b, bool flexible) {
  bytes(std::string_view(reinterpret_cast<const char*>(b.data()), b.size()), flexible);
}
void Writer::array(std::size_t count, bool flexible) {
  if (flexible) uvarint(static_cast<std::uint32_t>(count + 1));
  else i32(static_cast<std::int32_t>(count));
}
void Writer::null_array(bool flexible) {
  if (flexible) uvarint(0);
  else i32(-1);
}
void Writer::records_length(std::size_t bytes, bool flexible) {
  if (flexible) uvarint(static_cast<std::uint32_t>(bytes + 1));
  else i32(static_cast<std::int32_t>(bytes));
}
void Writer::patch_i32(std::size_t at, std::int32_t v) {
  std::byte b[4];
  wire::store_be32(b, v);
  out_.replace(at, 4, reinterpret_cast<const char*>(b), 4);
}

// ---- Headers --------------------------------------------------------------------------------

RequestHeader read_request_header(Reader& reader) noexcept {
  RequestHeader h;
  h.api_key = reader.i16();
  h.api_version = reader.i16();
  h.correlation_id = reader.i32();
  h.client_id = reader.nullable_string(false);  // never compact, also in header v2
  const ApiSupport* api = find_api(h.api_key);
  h.flexible = api != nullptr && h.api_version >= api->flexible_from && h.api_version <= api->max_version;
  reader.tagged_fields(h.flexible);
  return h;
}

std::size_t begin_frame(Writer& writer, const RequestHeader& header) {
  const std::size_t start = writer.size();
  writer.i32(0);
  writer.i32(header.correlation_id);
  const bool api_versions = header.api_key == static_cast<std::int16_t>(ApiKey::kApiVersions);
  writer.tagged_fields(header.flexible && !api_versions);
  return start;
}

void finish_frame(Writer& writer, std::size_t frame_start, std::size_t extra) {
  writer.patch_i32(frame_start, static_cast<std::int32_t>(writer.size() - frame_start - 4 + extra));
}

}  // namespace weft::kafka
