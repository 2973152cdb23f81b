// Kafka's wire primitives: big-endian integers, (compact) strings and arrays, unsigned varints,
// tagged fields, and the request and response headers. Field layouts follow Apache Kafka's
// message schemas (clients/src/main/resources/common/message/*.json); "flexible" versions use
// compact lengths (unsigned varint of length + 1) and end every struct with tagged fields.
//
// Reader never reads outside its bytes: a short or malformed field sets a sticky failure (the
// first one is kept, with where it happened), later reads return empty values, and the caller
// checks ok() once at the end of a request. Array counts are checked against the bytes left, so
// a hostile count cannot make the caller allocate more than the request's own size.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>

namespace weft::kafka {

enum class ApiKey : std::int16_t {
  kProduce = 0,
  kFetch = 1,
  kListOffsets = 2,
  kMetadata = 3,
  kOffsetCommit = 8,
  kOffsetFetch = 9,
  kFindCoordinator = 10,
  kJoinGroup = 11,
  kHeartbeat = 12,
  kLeaveGroup = 13,
  kSyncGroup = 14,
  kDescribeGroups = 15,
  kListGroups = 16,
  kApiVersions = 18,
  kCreateTopics = 19,
  kDeleteTopics = 20,
  kInitProducerId = 22,
  kDescribeConfigs = 32,
};

// An API this listener serves and its versions; requests from `flexible_from` on use the
// flexible encoding (request header v2, response header v1).
struct ApiSupport {
  ApiKey key;
  std::int16_t min_version;
  std::int16_t max_version;
  std::int16_t flexible_from;
  std::string_view name;
};
std::span<const ApiSupport> supported_apis() noexcept;
const ApiSupport* find_api(std::int16_t key) noexcept;
std::string_view api_name(std::int16_t key) noexcept;  // "Unknown" for keys not served

// Kafka's error codes (org.apache.kafka.common.protocol.Errors) that this listener returns.
namespace error {
inline constexpr std::int16_t kUnknownServerError = -1;
inline constexpr std::int16_t kNone = 0;
inline constexpr std::int16_t kOffsetOutOfRange = 1;
inline constexpr std::int16_t kCorruptMessage = 2;
inline constexpr std::int16_t kUnknownTopicOrPartition = 3;
inline constexpr std::int16_t kLeaderNotAvailable = 5;
inline constexpr std::int16_t kNotLeaderOrFollower = 6;
inline constexpr std::int16_t kRequestTimedOut = 7;
inline constexpr std::int16_t kMessageTooLarge = 10;
inline constexpr std::int16_t kOffsetMetadataTooLarge = 12;
inline constexpr std::int16_t kCoordinatorNotAvailable = 15;
inline constexpr std::int16_t kNotCoordinator = 16;
inline constexpr std::int16_t kInvalidTopicException = 17;
inline constexpr std::int16_t kRecordListTooLarge = 18;
inline constexpr std::int16_t kNotEnoughReplicas = 19;
inline constexpr std::int16_t kNotEnoughReplicasAfterAppend = 20;
inline constexpr std::int16_t kInvalidRequiredAcks = 21;
inline constexpr std::int16_t kIllegalGeneration = 22;
inline constexpr std::int16_t kInconsistentGroupProtocol = 23;
inline constexpr std::int16_t kInvalidGroupId = 24;
inline constexpr std::int16_t kUnknownMemberId = 25;
inline constexpr std::int16_t kInvalidSessionTimeout = 26;
inline constexpr std::int16_t kRebalanceInProgress = 27;
inline constexpr std::int16_t kInvalidTimestamp = 32;
inline constexpr std::int16_t kUnsupportedVersion = 35;
inline constexpr std::int16_t kTopicAlreadyExists = 36;
inline constexpr std::int16_t kInvalidPartitions = 37;
inline constexpr std::int16_t kInvalidReplicationFactor = 38;
inline constexpr std::int16_t kInvalidReplicaAssignment = 39;
inline constexpr std::int16_t kInvalidConfig = 40;
inline constexpr std::int16_t kInvalidRequest = 42;
inline constexpr std::int16_t kUnsupportedForMessageFormat = 43;
inline constexpr std::int16_t kPolicyViolation = 44;
inline constexpr std::int16_t kOutOfOrderSequenceNumber = 45;
inline constexpr std::int16_t kDuplicateSequenceNumber = 46;
inline constexpr std::int16_t kInvalidProducerEpoch = 47;
inline constexpr std::int16_t kInvalidTxnState = 48;
inline constexpr std::int16_t kKafkaStorageError = 56;
inline constexpr std::int16_t kUnknownProducerId = 59;
inline constexpr std::int16_t kNonEmptyGroup = 68;
inline constexpr std::int16_t kGroupIdNotFound = 69;
inline constexpr std::int16_t kUnsupportedCompressionType = 76;
inline constexpr std::int16_t kMemberIdRequired = 79;
inline constexpr std::int16_t kGroupMaxSizeReached = 81;
inline constexpr std::int16_t kFencedInstanceId = 82;
inline constexpr std::int16_t kInvalidRecord = 87;
inline constexpr std::int16_t kUnknownTopicId = 100;
}  // namespace error

class Reader {
 public:
  explicit Reader(std::span<const std::byte> bytes) noexcept : bytes_(bytes) {}

  std::int8_t i8() noexcept;
  std::int16_t i16() noexcept;
  std::int32_t i32() noexcept;
  std::int64_t i64() noexcept;
  bool boolean() noexcept { return i8() != 0; }
  std::uint32_t uvarint() noexcept;
  std::int32_t varint() noexcept;  // zigzag
  std::string_view uuid() noexcept;  // 16 raw bytes

  // STRING / COMPACT_STRING; a null where none is allowed fails.
  std::string_view string(bool flexible) noexcept;
  std::optional<std::string_view> nullable_string(bool flexible) noexcept;
  // BYTES / COMPACT_BYTES, and their nullable forms (records are nullable bytes).
  std::span<const std::byte> bytes(bool flexible) noexcept;
  std::optional<std::span<const std::byte>> nullable_bytes(bool flexible) noexcept;
  // An array's element count (-1: null, allowed only when `nullable`). Each element takes at
  // least `min_element_bytes`, so a count the bytes left cannot hold fails here.
  std::int32_t array(bool flexible, bool nullable = false, std::size_t min_element_bytes = 1) noexcept;
  // Skips a struct's tagged fields (flexible versions only; does nothing otherwise).
  void tagged_fields(bool flexible) noexcept;

  bool ok() const noexcept { return error_.empty(); }
  const std::string& error() const noexcept { return error_; }
  void fail(std::string_view why) noexcept;
  std::size_t position() const noexcept { return position_; }
  std::size_t remaining() const noexcept { return bytes_.size() - position_; }
  std::span<const std::byte> rest() const noexcept { return bytes_.subspan(position_); }

 private:
  const std::byte* take(std::size_t n, std::string_view what) noexcept;
  std::int32_t length(bool flexible, std::string_view what) noexcept;  // -1: null
  std::span<const std::byte> bytes_;
  std::size_t position_ = 0;
  std::string error_;
};

class Writer {
 public:
  void i8(std::int8_t v) { out_.push_back(static_cast<char>(v)); }
  void i16(std::int16_t v);
  void i32(std::int32_t v);
  void i64(std::int64_t v);
  void boolean(bool v) { i8(v ? 1 : 0); }
  void uvarint(std::uint32_t v);
  void uuid(std::string_view sixteen_bytes);  // zeros when empty
  void string(std::string_view s, bool flexible);
  void nullable_string(const std::optional<std::string_view>& s, bool flexible);
  void bytes(std::span<const std::byte> b, bool flexible);
  void bytes(std::string_view b, bool flexible);
  void array(std::size_t count, bool flexible);
  void null_array(bool flexible);
  // Length prefix of a records field whose bytes are sent after this buffer (nullable bytes).
  void records_length(std::size_t bytes, bool flexible);
  // An empty set of tagged fields, in flexible versions.
  void tagged_fields(bool flexible) {
    if (flexible) uvarint(0);
  }
  void raw(std::span<const std::byte> b) { out_.append(reinterpret_cast<const char*>(b.data()), b.size()); }
  void raw(std::string_view s) { out_.append(s); }

  // Patches a big-endian i32 written earlier at `at` (a size, once it is known).
  void patch_i32(std::size_t at, std::int32_t v);
  std::size_t size() const noexcept { return out_.size(); }
  std::string& buffer() noexcept { return out_; }
  std::string take() { return std::move(out_); }

 private:
  std::string out_;
};

struct RequestHeader {
  std::int16_t api_key = 0;
  std::int16_t api_version = 0;
  std::int32_t correlation_id = 0;
  std::optional<std::string_view> client_id;
  bool flexible = false;  // the body (and the response) use the flexible encoding
};

// Parses a request's header (v1, or v2 for flexible versions of known APIs; unknown APIs and
// versions are parsed as v1, enough to answer them). The reader is left at the body.
RequestHeader read_request_header(Reader& reader) noexcept;

// Starts a response frame: a size placeholder, the correlation id and (for flexible versions
// other than ApiVersions, whose response header is always v0) an empty tagged-field set.
// finish_frame() fills in the size; `extra` counts bytes sent after the buffer (file regions).
std::size_t begin_frame(Writer& writer, const RequestHeader& header);
void finish_frame(Writer& writer, std::size_t frame_start, std::size_t extra = 0);

}  // namespace weft::kafka
