// Replication of partitions between nodes over links (weft/fabric/link.h).
//
// A partition has one leader and followers. A follower opens a link to the leader's node (one
// link per pair of nodes carries every partition between them), gives it a landing region and
// says from which offset, and under which last leader epoch, its log continues. The leader
// checks that against its leader-epoch history (Kafka's OffsetsForLeaderEpoch rule): a
// follower whose log diverged is told where to truncate first. Then the leader pushes whole
// batches into the region with one write each (an RDMA WRITE_WITH_IMM where the link is RDMA;
// the immediate names the partition's stream), the follower checks and appends them to its own
// log and reports its log end, its durable end and the region bytes it has freed (flow
// control). The high watermark is the lowest durable end in the in-sync set; the leader sends
// it to the followers as it moves. A follower that does not catch up within
// `replica_lag_max_ms` is proposed out of the in-sync set, and one that catches up back in; the
// caller commits such changes to the cluster metadata and then applies them (set_isr), so the
// high watermark never counts on a set the metadata does not hold.
//
// The replicator is driven by one thread (run_once); it never blocks beyond its wait.
#pragma once

#include <atomic>
#include <compare>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "weft/fabric/link.h"
#include "weft/fabric/log_store.h"
#include "weft/fabric/result.h"
#include "weft/fabric/types.h"

namespace weft {

using NodeId = std::int32_t;

struct PartitionId {
  std::string topic;
  std::uint32_t partition = 0;
  auto operator<=>(const PartitionId&) const = default;
};
// "topic/partition", for logs and errors.
std::string to_string(const PartitionId& partition);

// Kafka's leader-epoch cache: where each leader epoch of a replica's log starts.
class EpochHistory {
 public:
  using Entry = EpochStart;
  // Records that `epoch` starts at `start`; ignored unless it is above the last epoch.
  void assign(std::int32_t epoch, Offset start);
  std::int32_t last_epoch() const noexcept { return entries_.empty() ? -1 : entries_.back().epoch; }
  // The largest epoch at or below `epoch` known here and where it ends here (the start of the
  // next epoch, or `log_end` for the last one). {-1, log start} when none is that low.
  std::pair<std::int32_t, Offset> end_of(std::int32_t epoch, Offset log_end) const noexcept;
  // Forgets epochs that start at or after `end` (the log was truncated there).
  void truncate_to(Offset end);
  const std::vector<Entry>& entries() const noexcept { return entries_; }
  // Takes a saved history (epochs rising, starts not falling) for entries before `log_end`;
  // false, changing nothing, when it is not well formed.
  bool restore(std::vector<Entry> entries, Offset log_end);

 private:
  std::vector<Entry> entries_;
};

// Keeps bytes that a push points at (a leader's ring) from being reused until the push
// completes: the replicator keeps it with the write and lets it go on kWriteDone. Releasing is
// one store; what it holds (a hold slot, the memory's mapping) lives as long as the hold does.
class PushHold {
 public:
  static constexpr std::uint64_t kFree = ~std::uint64_t{0};
  PushHold() = default;
  // `slot` holds a ring position while this lives; kFree is stored back on release.
  explicit PushHold(std::shared_ptr<std::atomic<std::uint64_t>> slot) noexcept : slot_(std::move(slot)) {}
  PushHold(PushHold&& other) noexcept = default;
  PushHold& operator=(PushHold&& other) noexcept {
    if (this != &other) {
      release();
      slot_ = std::move(other.slot_);
    }
    return *this;
  }
  PushHold(const PushHold&) = delete;
  PushHold& operator=(const PushHold&) = delete;
  ~PushHold() { release(); }
  void release() noexcept {
    // Release: the reader of the slot (the node's pass, under its log lock) may reuse the space
    // once it sees kFree, after everything this thread did with the bytes.
    if (slot_) slot_->store(kFree, std::memory_order_release);
    slot_.reset();
  }
  explicit operator bool() const noexcept { return slot_ != nullptr; }

 private:
  std::shared_ptr<std::atomic<std::uint64_t>> slot_;
};

// What ReplicaLog::read_for_push gathered: `pieces` entries of the gather list, `bytes` in all,
// whole batches up to `next` (exclusive).
struct PushRead {
  std::size_t bytes = 0;
  std::size_t pieces = 0;
  Offset next{0};
};

// One replica of a partition's log as replication sees it: the node's ring and segment log
// together, or an in-memory log in tests. Used by the replicator's thread only.
class ReplicaLog {
 public:
  virtual ~ReplicaLog() = default;
  virtual Offset log_start() const = 0;
  virtual Offset log_end() const = 0;      // the offset the next batch gets
  virtual Offset durable_end() const = 0;  // below it, every batch is synced as the topic asks
  // Leader: copies whole batches, from the one holding `offset`, into `out`; returns the bytes
  // (0: nothing there yet). kResourceExhausted: the next batch is larger than `out`.
  virtual Result<std::size_t> read(Offset offset, std::span<std::byte> out) = 0;
  // Leader: what read() gives, as a gather list for one push of at most staging.size() bytes.
  // A log may point entries at batches where it keeps them (large batches in its ring), held
  // from reuse by `hold` until the push completes, and copy the rest into `staging`. This one
  // copies everything (read() into staging).
  virtual Result<PushRead> read_for_push(Offset offset, std::span<std::byte> staging,
                                         std::span<std::span<const std::byte>> pieces, PushHold& hold);
  // Follower: appends batches (RecordBatch v2, offsets stamped, CRC checked) that start at or
  // after log_end(); returns the bytes taken, whole batches, fewer than given when the log has
  // no room now (the rest is offered again later).
  virtual Result<std::size_t> append(std::span<const std::byte> batches) = 0;
  // Follower: drops every batch at or after `end` (a divergent suffix).
  virtual Result<void> truncate(Offset end) = 0;
  // Follower: drops the whole log and continues at `start` (the leader no longer holds where
  // this log ends: retention deleted it).
  virtual Result<void> reset(Offset start) = 0;
  virtual EpochHistory& epochs() = 0;
  // Keeps epochs() as it is now (the replicator calls it after changing it, with kWithTheLog:
  // an epoch added at the log's end), so a restart finds it without reading the log through.
  virtual void save_epochs(EpochSave how) { (void)how; }
  // Batches produced here from now on carry `epoch` in their partitionLeaderEpoch (-1: this
  // replica follows, and its batches keep their leader's). The replicator calls it on lead()
  // and follow().
  virtual void stamp_leader_epoch(std::int32_t epoch) { (void)epoch; }
  // The high watermark as this replica knows it, for producers here that wait for acks=all.
  virtual void publish_high_watermark(Offset hw) { (void)hw; }
  // Leader: writes the batches produced since the last call to the log now, from the
  // replicator's thread, which then sees its own durable end move without a hand-off to
  // another thread. The replicator calls it after each round of pushes.
  virtual void write_through() {}

 protected:
  // A push of the `got` bytes read into `staging` from `offset`: one gather entry.
  static PushRead copied_push(std::span<const std::byte> staging, std::size_t got, Offset offset,
                              std::span<std::span<const std::byte>> pieces);
};

struct ReplicationOptions {
  std::size_t region_bytes = std::size_t{8} << 20;      // a follower's landing region per partition
  std::size_t max_write_bytes = std::size_t{1} << 20;   // one push; at least the largest batch
  std::size_t writes_in_flight = 4;                     // pushes per follower before their completions
  std::int64_t replica_lag_max_ms = 10'000;             // Kafka's replica.lag.time.max.ms
  std::int64_t retry_backoff_ms = 100;                  // before reconnecting or following again
  int connect_timeout_ms = 1'000;
  // Links other nodes opened to this one; more are closed at once. Peers are the cluster's
  // nodes, a few links each (the replication port's own limit, not a cluster's size limit).
  std::size_t max_incoming_links = 256;
  // The cluster's shared secret: every link begins with each side proving it knows it (an
  // HMAC-SHA-256 challenge and answer both ways), and carries nothing before, so a process that
  // can reach the port but lacks it can neither follow a partition (reading its records, or
  // reporting progress it never made, which would move the high watermark past records no
  // replica holds) nor pose as the leader a follower connected to. Empty: the same handshake
  // with an empty key, which proves nothing (a cluster on loopback or a trusted network).
  std::string secret;
  int handshake_timeout_ms = 5'000;  // a link whose handshake is not done by then is closed
};

// A change to a partition's in-sync set that the leader wants committed.
struct IsrProposal {
  PartitionId partition;
  std::int32_t leader_epoch = 0;
  std::vector<NodeId> isr;
  std::string reason;
  std::vector<NodeId> based_on;  // the set it changes: commit only if the metadata still holds it
  std::uint64_t sequence = 0;     // names it in proposal_settled
};

struct ReplicaStatus {
  PartitionId partition;
  bool leader = false;
  std::int32_t leader_epoch = 0;
  NodeId leader_id = -1;
  Offset log_end{0};
  Offset high_watermark{0};
  std::vector<NodeId> isr;  // leader only
  struct Follower {
    NodeId id = -1;
    bool connected = false;
    Offset log_end{0};
    Offset durable_end{0};
    std::int64_t lag_ms = 0;  // since it was last caught up
  };
  std::vector<Follower> followers;  // leader only
  std::string state;                // follower: streaming, connecting, refused: <why>, ...
};

class Replicator {
 public:
  // Listens for followers on `listen_address` (a transport address; port 0 picks one).
  static Result<std::unique_ptr<Replicator>> start(Transport& transport, NodeId self, std::string_view listen_address,
                                                   ReplicationOptions options = {});
  ~Replicator();
  Replicator(const Replicator&) = delete;
  Replicator& operator=(const Replicator&) = delete;

  const std::string& address() const noexcept;
  NodeId self() const noexcept;

  // Leads `partition` from `epoch` on (which starts at the log's end). `replicas` may follow;
  // `isr` is the in-sync set the metadata holds (this node included).
  // `revision`: the metadata's revision of that state (-1: unknown).
  Result<void> lead(const PartitionId& partition, ReplicaLog* log, std::int32_t epoch, std::vector<NodeId> replicas,
                    std::vector<NodeId> isr, std::int64_t revision = -1);
  // Follows `leader` (reached at `leader_address`) for `partition` at `epoch`.
  Result<void> follow(const PartitionId& partition, ReplicaLog* log, std::int32_t epoch, NodeId leader,
                      std::string leader_address);
  // Stops leading or following `partition` (its log may then be dropped).
  void forget(const PartitionId& partition);
  // The in-sync set the metadata holds for a partition led here, as of `revision` (-1: unknown,
  // taken as the answer to any proposal). A state older than the one applied is ignored. While
  // an expansion is proposed, its members are counted in the high watermark (KIP-497) until a
  // state holds them, or a state at or past the revision its outcome was settled at comes
  // (proposal_settled): one from before the outcome, which may lack them while the metadata
  // already holds them, never stops them counting.
  void set_isr(const PartitionId& partition, std::int32_t epoch, std::vector<NodeId> isr, std::int64_t revision = -1);
  // The proposal `sequence` was committed or refused, and states from `from_revision` on say so.
  void proposal_settled(const PartitionId& partition, std::int32_t epoch, std::uint64_t sequence, std::int64_t from_revision);
  // The replicas the metadata now names (a reassignment adds or drops some) for a partition led
  // here; a dropped replica's stream ends.
  void set_replicas(const PartitionId& partition, std::int32_t epoch, std::vector<NodeId> replicas);
  // In-sync set changes wanted since the last call (at most one outstanding per partition).
  std::vector<IsrProposal> take_isr_proposals();
  // Below it, every record is durable on every in-sync replica (a follower learns it from its
  // leader). nullopt: the partition is neither led nor followed here.
  std::optional<Offset> high_watermark(const PartitionId& partition) const;
  std::vector<ReplicaStatus> status() const;
  // Links other nodes opened to this one and not yet seen to end (at most max_incoming_links).
  std::size_t incoming_links() const noexcept;

  // One round: accepts links, polls them, pushes new batches, reports progress, checks lag and
  // reconnects. Waits up to `timeout_ms` for something to happen when there is nothing to do.
  void run_once(int timeout_ms);
  // An eventfd the wait also watches (and drains): the node's log progress, so new batches and
  // durable ends are seen at once rather than at the next timeout. -1: none.
  void set_wake_fd(int fd) noexcept;

 private:
  struct Impl;
  explicit Replicator(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace weft
