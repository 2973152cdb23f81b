// Reading records from topics' partitions, in place in their rings.
//
//   auto consumer = weft::TopicConsumer::create(client);
//   consumer->assign("clicks", {}, weft::SeekTo::earliest());
//   auto polled = consumer->poll(100);
//   for (const weft::ConsumedRecord& r : polled->records) ...
//
// Records are views into the rings: no copy. They stay valid until the next poll unless the
// producers lap this consumer meanwhile (a consumer a whole ring behind); views_intact() says
// whether they were. Batches that Kafka clients compressed (gzip, snappy, lz4, zstd; stored as
// they came) are decompressed into the consumer's own buffers, reused from poll to poll: their
// records are views into those, valid until the next poll. One that does not decompress is
// skipped with a kCorrupt notice.
//
// A consumer behind the ring (a replay, a batch job, a lapped real-time reader) reads the
// partition's log instead: whole segment files, read with pread in large chunks and checked
// batch by batch (CRC included), then it carries on in the ring at the next offset, with no gap
// and no duplicate. Only where the node keeps no log (in memory only) is a lapped consumer told
// the offsets it missed (kLapped) and moved to the oldest intact batch.
//
// Thread contract: one TopicConsumer per thread.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "weft/client.h"
#include "weft/fabric/compression.h"
#include "weft/fabric/record_batch.h"
#include "weft/fabric/ring.h"

namespace weft {

struct SeekTo {
  enum class Kind : std::uint8_t { kEarliest, kLatest, kOffset, kTimestamp, kCommitted };
  Kind kind = Kind::kLatest;
  std::int64_t value = 0;
  Kind otherwise = Kind::kLatest;  // kCommitted: where to start without a usable commit
  static SeekTo earliest() { return {Kind::kEarliest, 0}; }
  static SeekTo latest() { return {Kind::kLatest, 0}; }
  static SeekTo offset(std::int64_t o) { return {Kind::kOffset, o}; }
  static SeekTo timestamp(std::int64_t unix_ms) { return {Kind::kTimestamp, unix_ms}; }
  // The consumer group's committed offset (ConsumerOptions::group); without one, or when it was
  // deleted by retention, `otherwise` (earliest or latest: Kafka's auto.offset.reset).
  static SeekTo committed(Kind otherwise = Kind::kLatest) { return {Kind::kCommitted, 0, otherwise}; }
};

struct ConsumerOptions {
  WaitKind wait = WaitKind::kPark;
  std::size_t max_poll_records = 500;
  // Check each batch's CRC-32C. Off by default for rings: the bytes were written in this host's
  // memory by an admitted producer and every length is checked anyway. Batches read from the
  // log are always checked.
  bool check_crcs = false;
  // Bytes per read from the log when behind the ring (grows for a larger batch).
  std::size_t log_read_bytes = std::size_t{1} << 20;
  // Decompressed bytes a compressed batch may hold: one that inflates past it is skipped as
  // corrupt (a decompression bomb). A poll also takes no further compressed batch once those it
  // took hold this much.
  std::size_t max_decompressed_bytes = kDefaultMaxDecompressedBytes;
  // The consumer group whose offsets commit() stores and SeekTo::committed() reads. Partitions
  // are assigned by the application (the Kafka protocol's group coordinator comes with it).
  std::string group;
};

struct ConsumedRecord {
  std::string_view topic;
  std::uint32_t partition = 0;
  Offset offset;
  std::int64_t timestamp_ms = 0;
  OptionalBytes key;
  OptionalBytes value;
  std::int32_t header_count = 0;
  std::span<const std::byte> headers_bytes;
  template <class Fn>
  void for_each_header(Fn&& fn) const {
    RecordView v;
    v.header_count = header_count;
    v.headers_bytes = headers_bytes;
    v.for_each_header(static_cast<Fn&&>(fn));
  }
};

struct PollNotice {
  enum class Kind : std::uint8_t {
    kLapped,   // offsets [from, to) were overwritten before this consumer read them
    kCorrupt,  // the batch at `from` failed validation and was skipped up to `to`
    kOutOfRange,  // offsets [from, to) were deleted by retention before this consumer read them
  };
  Kind kind = Kind::kLapped;
  std::string_view topic;
  std::uint32_t partition = 0;
  Offset from;
  Offset to;
};

struct PollResult {
  std::span<const ConsumedRecord> records;
  std::span<const PollNotice> notices;
};

class TopicConsumer {
 public:
  static Result<TopicConsumer> create(std::shared_ptr<Client> client, ConsumerOptions options = {});
  TopicConsumer(TopicConsumer&&) noexcept;
  TopicConsumer& operator=(TopicConsumer&&) noexcept;
  ~TopicConsumer();

  // Adds partitions of a topic (empty: all of them), each positioned at `start`. Earliest is
  // the log's start where the partition has a log; an offset before it is kOutOfRange (the
  // message names the earliest); a timestamp is looked up in the log's time index first.
  Result<void> assign(std::string_view topic, std::vector<std::uint32_t> partitions = {}, SeekTo start = SeekTo::latest());
  Result<void> seek(std::string_view topic, std::uint32_t partition, SeekTo to);
  // Waits up to `timeout_ms` (0: not at all) for records; returns at most max_poll_records.
  // kNotFound once for a partition whose topic was deleted (or made again under its name: that
  // is another topic), which is then no longer assigned.
  Result<PollResult> poll(std::int64_t timeout_ms);
  // True when nothing the last poll returned has been overwritten since.
  bool views_intact() const noexcept;
  // The next offset this consumer will read from a partition.
  Result<Offset> position(std::string_view topic, std::uint32_t partition) const;
  // Commits the position of every assigned partition for the group; durable when it returns.
  Result<void> commit();
  // Commits one partition's next offset to read.
  Result<void> commit(std::string_view topic, std::uint32_t partition, Offset next);
  // The group's committed offset of a partition (nothing when it has none).
  Result<std::optional<Offset>> committed(std::string_view topic, std::uint32_t partition) const;
  std::size_t assigned_partitions() const noexcept;

 private:
  struct State;
  explicit TopicConsumer(std::unique_ptr<State> state);
  Result<void> seek_to(std::string_view topic, std::uint32_t partition, SeekTo to);
  std::unique_ptr<State> state_;
};

}  // namespace weft
