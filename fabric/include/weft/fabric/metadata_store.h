// The port through which nodes keep the cluster's metadata (membership, the controller,
// partition assignments, leaders, epochs, in-sync sets): declared here, implemented by storage/
// (etcd's v3 API) and by an in-memory store for tests and single-process clusters.
//
// The calls follow etcd's model: a flat ordered key space, a store-wide revision that every
// change moves, leases that delete their keys when not kept alive, compare-and-swap on a key's
// mod revision, and watches from a revision on. Control plane only: nothing here is on a data
// path, and losing the store stops metadata changes, never the data of healthy partitions.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "weft/fabric/result.h"

namespace weft {

struct KeyValue {
  std::string key;
  std::string value;
  std::int64_t create_revision = 0;
  std::int64_t mod_revision = 0;  // the revision of the change that wrote this value
  std::int64_t lease = 0;         // 0: none
};

struct WatchEvent {
  enum class Type : std::uint8_t { kPut, kDelete };
  Type type = Type::kPut;
  KeyValue kv;  // for a delete: the key and the revision of the delete
};

// A stream of changes under a prefix, in revision order (the events of one revision in the
// order they were made), opened by MetadataStore::watch. One owner at a time; it may outlive the
// store object that opened it (the memory store's watch keeps the store alive, etcd's has its
// own connection).
class MetadataWatch {
 public:
  virtual ~MetadataWatch() = default;
  // Waits up to `timeout_ms` (0: do not wait) for events and appends them to `out`. kUnavailable
  // when the store is unreachable (the watch is then dead: open a new one from the last revision
  // seen); kOutOfRange when the start revision was compacted away (re-read, then watch again).
  virtual Result<void> next(std::vector<WatchEvent>& out, int timeout_ms) = 0;
  // Readable when next() may have events without waiting (-1: poll next() instead).
  virtual int fd() const noexcept { return -1; }
};

// A range read: the values and the store's revision they were read at (watch from revision+1).
struct RangeResult {
  std::vector<KeyValue> kvs;
  std::int64_t revision = 0;
};

// A condition a write needs besides its own: `key` exists, created at `create_revision` (the
// controller's election key as this node created it: a controller that lost its lease, and so
// the key, writes nothing more — Kafka's controller-epoch fencing, as etcd's elections do it).
struct WriteGuard {
  std::string key;
  std::int64_t create_revision = 0;
};

// A client of the store. Thread-safe: any thread may call any method.
class MetadataStore {
 public:
  virtual ~MetadataStore() = default;

  // Every call: kInvalidArgument for an empty key; kUnavailable when the store cannot be reached
  // in time (retry the call); kNotFound for a lease that has ended.

  // Sets `key`; with a lease, the key is deleted when the lease ends. Returns the new revision.
  virtual Result<std::int64_t> put(std::string_view key, std::string_view value, std::int64_t lease = 0) = 0;
  virtual Result<std::optional<KeyValue>> get(std::string_view key) = 0;
  // Every key that starts with `prefix`, in key order.
  virtual Result<RangeResult> list(std::string_view prefix) = 0;
  // Writes `value` only when `key`'s mod revision is `expected_mod_revision` (0: the key must not
  // exist) and the guard, if any, holds. Returns whether it was written; the caller re-reads and
  // retries when not.
  virtual Result<bool> compare_and_put(std::string_view key, std::int64_t expected_mod_revision, std::string_view value,
                                       std::int64_t lease = 0, const WriteGuard* guard = nullptr) = 0;
  // Deletes `key` only when its mod revision is `expected_mod_revision` (0: whatever it is) and
  // the guard, if any, holds. Returns whether a key was deleted.
  virtual Result<bool> erase(std::string_view key, std::int64_t expected_mod_revision = 0, const WriteGuard* guard = nullptr) = 0;

  // A lease of `ttl_seconds` (at least 1); keys put with it vanish when it expires or is revoked,
  // all at one revision. It expires no sooner than its TTL after the last renewal (etcd rounds a
  // short TTL up to its minimum, about 1.5 times the election timeout).
  virtual Result<std::int64_t> grant_lease(std::int64_t ttl_seconds) = 0;
  // Renews the lease for its whole TTL. kNotFound when it has already expired.
  virtual Result<void> keep_alive(std::int64_t lease) = 0;
  // Ends the lease now and deletes its keys. kNotFound when it has already ended.
  virtual Result<void> revoke_lease(std::int64_t lease) = 0;

  // Changes to keys starting with `prefix` from `from_revision` on (0: from now, that is every
  // change made after this call returns). kOutOfRange, from here or from the first next(), when
  // `from_revision` was compacted away.
  virtual Result<std::unique_ptr<MetadataWatch>> watch(std::string_view prefix, std::int64_t from_revision) = 0;
};

// An in-memory store with etcd's semantics (revisions, leases expiring on a clock, watches),
// shareable between the nodes of one process: tests and embedded clusters without etcd.
// Thread-safe. Leases expire in real time, their TTL after the last renewal (seen by the next
// call, or by a watch waiting in next()). The last 10000 events are kept for watches from an
// earlier revision; older revisions count as compacted.
std::shared_ptr<MetadataStore> make_memory_metadata_store();

}  // namespace weft
