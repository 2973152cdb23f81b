// The local control protocol between weftd and the clients on its host: one request, one
// response, each a single SOCK_SEQPACKET datagram (so a message arrives whole or not at all),
// little-endian, every length checked. OpenPartition's response carries the ring's memory fd
// (SCM_RIGHTS), OpenLogSlice's a read-only segment file for a reader behind the ring. The hot path never uses this socket: it only admits clients and hands out rings.
//
// Datagram: magic u32 'WEFT' | version u16 | type u16 | request_id u32 | payload_bytes u32 | payload
// A response has the request's type with kResponseBit set, then u8 errc (0: ok), then either the
// body or an error message string.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "weft/fabric/result.h"
#include "weft/fabric/shared_memory.h"
#include "weft/node.h"

namespace weft::local {

inline constexpr std::uint32_t kMagic = 0x54464557;  // "WEFT" read little-endian
inline constexpr std::uint16_t kVersion = 3;  // 3: OpenLogSlice answers the slice's end offset
inline constexpr std::size_t kHeaderBytes = 16;
inline constexpr std::size_t kMaxMessageBytes = std::size_t{1} << 20;  // a topic list of thousands fits
inline constexpr std::size_t kMaxRequestBytes = 64 * 1024;            // what the node accepts
inline constexpr std::uint16_t kResponseBit = 0x8000;

enum class MessageType : std::uint16_t {
  kHello = 1,
  kCreateTopic = 2,
  kDeleteTopic = 3,
  kListTopics = 4,
  kDescribeTopic = 5,
  kOpenPartition = 6,
  kStatus = 7,
  kOpenLogSlice = 8,            // topic, partition, offset -> position, end, offset, end offset + the segment's fd
  kLogOffsetForTimestamp = 9,   // topic, partition, timestamp -> offset
  kCommitOffsets = 10,          // group, [topic, partition, offset, metadata]
  kFetchOffsets = 11,           // group, topic -> [partition, offset, metadata]
  kPartitionRoute = 12,         // topic, partition -> here u8, leader u32, leader epoch u32, kafka address
};
inline constexpr bool known_message_type(std::uint16_t type) { return type >= 1 && type <= 12; }

struct Header {
  std::uint16_t type = 0;
  std::uint32_t request_id = 0;
};

// Appends fields to a message under construction.
class Writer {
 public:
  explicit Writer(std::vector<std::byte>& out) : out_(out) {}
  void u8(std::uint8_t v) { put(&v, 1); }
  void u16(std::uint16_t v) { put(&v, 2); }
  void u32(std::uint32_t v) { put(&v, 4); }
  void u64(std::uint64_t v) { put(&v, 8); }
  void i64(std::int64_t v) { put(&v, 8); }
  void str(std::string_view s);  // u32 length then bytes

 private:
  void put(const void* p, std::size_t n);
  std::vector<std::byte>& out_;
};

// Reads fields; any read past the end fails the reader and yields zeros, so decoders read
// straight through and check failed() once.
class Reader {
 public:
  explicit Reader(std::span<const std::byte> in) : in_(in) {}
  std::uint8_t u8() { return get<std::uint8_t>(); }
  std::uint16_t u16() { return get<std::uint16_t>(); }
  std::uint32_t u32() { return get<std::uint32_t>(); }
  std::uint64_t u64() { return get<std::uint64_t>(); }
  std::int64_t i64() { return get<std::int64_t>(); }
  std::string str(std::size_t max_bytes = 4096);
  bool failed() const noexcept { return failed_; }
  bool at_end() const noexcept { return at_ == in_.size(); }
  // Ok when every field was present and nothing trails them.
  Result<void> finish(std::string_view what) const;

 private:
  template <class T>
  T get() {
    T v{};
    if (failed_ || in_.size() - at_ < sizeof(T)) {
      failed_ = true;
      return T{};
    }
    std::memcpy(&v, in_.data() + at_, sizeof(T));
    at_ += sizeof(T);
    return v;
  }
  std::span<const std::byte> in_;
  std::size_t at_ = 0;
  bool failed_ = false;
};

// Starts a message: writes a header whose payload length finish_message fills in.
void begin_message(std::vector<std::byte>& out, std::uint16_t type, std::uint32_t request_id);
void finish_message(std::vector<std::byte>& out);
// Checks a received datagram's header; returns it and the payload.
Result<Header> parse_header(std::span<const std::byte> datagram, std::span<const std::byte>& payload);

void write_config(Writer& w, const TopicConfig& c);
TopicConfig read_config(Reader& r);
void write_topic_info(Writer& w, const TopicInfo& info);
TopicInfo read_topic_info(Reader& r);

// Sends one datagram, with `fd` attached when it is >= 0.
Result<void> send_message(int socket_fd, std::span<const std::byte> message, int fd = -1);
// Receives one datagram into `buffer` (resized to what arrived). A datagram larger than
// `max_bytes` is an error (its excess is discarded by the kernel), as is more than one fd.
// `fd` receives the attached descriptor, if any. kUnavailable: nothing to read yet (non-blocking);
// kAborted: the peer closed the connection or it failed.
Result<void> receive_message(int socket_fd, std::vector<std::byte>& buffer, std::size_t max_bytes, UniqueFd* fd);

// Bytes this end sent that the peer has not read yet (SIOCOUTQ), or -1 where the kernel does
// not say (some sandboxed kernels answer 0 or refuse): callers then go without the check.
int unread_sent_bytes(int socket_fd);
// Whether this kernel reports unread bytes on a local socket, probed once on a socket pair.
bool kernel_reports_unread_bytes();

// Where weftd listens unless told otherwise: $WEFT_SOCKET, else /run/weft/weftd.sock as root,
// else $XDG_RUNTIME_DIR/weft/weftd.sock, else /tmp/weft-<uid>/weftd.sock.
std::string default_socket_path();

// Refuses a socket whose directory another user could have planted it in: the directory (and
// the link, when it is one) must belong to this user or root, and be writable by nobody else
// unless it is sticky (as /tmp is).
Result<void> check_socket_directory(const std::string& socket_path);

}  // namespace weft::local
