// Consumer groups' committed offsets, kept durably: one checkpoint file per group in a directory,
// rewritten whole on every commit (written aside, synced, renamed into place, directory synced),
// so a crash leaves either the old file or the new one.
//
// File `<dir>/<group>.offsets`, all integers little-endian:
//
//   magic           8 bytes  "WEFTOFS1"
//   version         u32      1
//   entry count     u32
//   entries, each:  topic length u16 (1..249), topic bytes,
//                   partition u32, offset i64 (>= 0), commit_time_ms i64,
//                   metadata length u16 (0..4096), metadata bytes
//   crc             u32      CRC-32C (weft::crc32c) of every byte before it
//
// A file is at most 64 MiB. Reading checks every length against the bytes that are there, the
// magic, the version and the CRC, that the count matches the entries exactly, and that no
// (topic, partition) appears twice; anything else is kCorrupt with a message naming the file.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "weft/fabric/result.h"
#include "weft/fabric/types.h"

namespace weft {

// Group ids become file names: 1..243 characters of [A-Za-z0-9._-], not "." or "..". (Kafka
// allows 249; 243 leaves room for the ".offsets.tmp" suffix within the 255-byte file name limit.)
inline constexpr std::size_t kMaxGroupIdBytes = 243;
inline constexpr std::size_t kMaxOffsetTopicBytes = 249;
inline constexpr std::size_t kMaxOffsetMetadataBytes = 4096;
inline constexpr std::size_t kMaxOffsetsFileBytes = std::size_t{64} << 20;

// The position a consumer group has committed for one partition.
struct CommittedOffset {
  std::string topic;            // 1..249 characters of [A-Za-z0-9._-], not "." or ".."
  std::uint32_t partition = 0;
  Offset offset;                // the next record the group will read; >= 0
  std::string metadata;         // opaque to the store, at most 4096 bytes
  std::int64_t commit_time_ms = 0;  // stored as given
};

// A group whose file was found at open() but not loaded, and why (kCorrupt or kIo, naming the file).
struct OffsetLoadProblem {
  std::string group;
  Error error;
};

// Validates a group id as the store does; the error says what is wrong.
Result<void> validate_group_id(std::string_view group);
// Validates a commit as OffsetStore::commit does (the group id and every entry): kInvalidArgument.
Result<void> validate_commit(std::string_view group, std::span<const CommittedOffset> offsets);

// Where a cluster keeps consumer groups' committed offsets beyond one node, so that a group's
// next coordinator finds them (ClusterNode keeps them in the metadata store). Thread-safe.
class OffsetMirror {
 public:
  virtual ~OffsetMirror() = default;
  // Replaces the given (topic, partition) entries of `group`; durable and shared on return.
  virtual Result<void> commit(std::string_view group, std::span<const CommittedOffset> offsets) = 0;
  // The group's entries ordered by topic, then partition (empty for a group never committed).
  virtual Result<std::vector<CommittedOffset>> fetch(std::string_view group) = 0;
  // fetch() of each group (distinct, valid ids), in the order given; a mirror that can read
  // them all at once (one range of the store, for a metrics scrape) does.
  virtual Result<std::vector<std::vector<CommittedOffset>>> fetch_groups(std::span<const std::string> groups) {
    std::vector<std::vector<CommittedOffset>> out;
    out.reserve(groups.size());
    for (const std::string& group : groups) {
      WEFT_TRY(std::vector<CommittedOffset> offsets, fetch(group));
      out.push_back(std::move(offsets));
    }
    return out;
  }
  // Every group with offsets here, in name order.
  virtual Result<std::vector<std::string>> groups() = 0;
  // Removes every entry of the group (none there is no error).
  virtual Result<void> delete_group(std::string_view group) = 0;
};

// Lifecycle: open() loads every group's file; the object then serves from memory and writes
// through to disk. Thread contract: every method may be called from any thread; one mutex
// serializes them, and it is held across the file writes and syncs of a commit, so readers
// wait for a commit in progress. The directory belongs to one OffsetStore at a time.
//
// Durability: commit(), delete_group() and forget_topic() return once the change is on stable
// storage. When one fails after its file was renamed into place (only the directory sync
// failed), memory follows the file and whether the change survives a machine crash is unknown.
//
// A group whose file could not be loaded (see load_problems()) is left on disk untouched: fetch()
// finds nothing for it, commit() to it is kFailedPrecondition, and delete_group() removes the file,
// after which the group can be committed to afresh.
class OffsetStore {
 public:
  // Opens `dir`, creating it (not its parents) when missing; removes leftover `*.offsets.tmp`
  // files and loads every `<group>.offsets` file. A file that cannot be read or fails its checks
  // is logged and reported by load_problems(); the other groups load. Errors: kIo when the
  // directory cannot be created, listed or opened.
  static Result<std::unique_ptr<OffsetStore>> open(std::string dir);

  OffsetStore(const OffsetStore&) = delete;
  OffsetStore& operator=(const OffsetStore&) = delete;
  ~OffsetStore();

  // Replaces the given (topic, partition) entries of `group`, creating the group; its other
  // entries stay. When a (topic, partition) appears more than once, the last one counts. All or
  // nothing: an invalid entry (kInvalidArgument), a group file that would pass 64 MiB
  // (kResourceExhausted), a full disk (kResourceExhausted) or another failed write (kIo) leaves
  // the group as it was. Committing no entries changes nothing.
  Result<void> commit(std::string_view group, std::span<const CommittedOffset> offsets);

  std::optional<CommittedOffset> fetch(std::string_view group, std::string_view topic, std::uint32_t partition) const;
  // The group's entries ordered by topic, then partition (empty for an unknown group).
  std::vector<CommittedOffset> fetch_all(std::string_view group) const;
  // The groups with offsets in memory (loaded at open or committed since), in name order.
  std::vector<std::string> groups() const;

  // Removes the group and its file (also a file that failed to load). kNotFound when there is neither.
  Result<void> delete_group(std::string_view group);
  // Drops every entry of `topic` (the topic was deleted) in every group; a group left with no
  // entries stays, empty. Stops at the first group whose file cannot be rewritten; calling again
  // finishes the job.
  Result<void> forget_topic(std::string_view topic);

  // The files open() found but could not load, by group name order. Fixed at open().
  const std::vector<OffsetLoadProblem>& load_problems() const noexcept;

  const std::string& dir() const noexcept;

 private:
  struct State;
  explicit OffsetStore(std::unique_ptr<State> state);
  std::unique_ptr<State> state_;
};

}  // namespace weft
