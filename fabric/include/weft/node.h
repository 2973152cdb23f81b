// The node: owns topics, their partitions and every partition's ring.
//
// The same Node runs embedded in an application (weft::Node::start) or inside weftd, which adds
// the Unix-socket admission of local clients (weft/fabric/local_server.h). Topics live in memory
// for now; the log store (segments on disk, the storage issue) and remote listeners (the Kafka
// protocol) plug in behind the same calls.
//
// Thread contract: every method may be called from any thread. A maintenance thread (started by
// start()) moves each ring's reuse limit, seals claims of dead producers, frees their slots and
// refreshes the counters that describe_topic() reports.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "weft/fabric/log_store.h"
#include "weft/fabric/offset_store.h"
#include "weft/fabric/replication.h"
#include "weft/fabric/result.h"
#include "weft/fabric/ring.h"
#include "weft/fabric/shared_memory.h"

namespace weft {

enum class FsyncPolicy : std::uint8_t { kNone, kInterval, kAlways };

// Per-topic settings. Retention, segments and fsync apply to partitions with a log (weftd unless
// --in-memory); a node without logs keeps only the rings.
struct TopicConfig {
  std::uint32_t partitions = 1;
  std::size_t ring_capacity_bytes = std::size_t{4} << 20;  // power of two, 64 KiB..1 GiB
  std::size_t max_batch_bytes = std::size_t{1} << 20;      // at most ring_capacity_bytes / 4
  std::int64_t retention_bytes = -1;                       // per partition; -1: unlimited
  std::int64_t retention_ms = 7LL * 24 * 3600 * 1000;      // -1: unlimited
  std::int64_t segment_bytes = std::int64_t{1} << 30;      // a log segment rolls at this size...
  std::int64_t segment_ms = 7LL * 24 * 3600 * 1000;        // ... or this age
  FsyncPolicy fsync = FsyncPolicy::kNone;
  std::int64_t fsync_interval_ms = 0;  // with kInterval
  // Attached consumers hold producers back (Aeron's flow control): nothing a live consumer has
  // not read is overwritten, and a stalled consumer stalls the producers. Off by default: a slow
  // consumer then never slows a producer and is lapped instead.
  bool consumer_flow_control = false;
  // A replicated partition takes acks=all writes only while at least this many replicas (the
  // leader counted) are in sync, as Kafka's min.insync.replicas; 1 lets the leader alone answer.
  std::uint32_t min_insync_replicas = 1;
  std::uint32_t producer_slots = 32;   // live producers per partition, at most 63
  std::uint32_t consumer_slots = 64;   // live consumers per partition, at most 4096
  // A cluster's topic (ClusterNode sets it): its rings take no local producer until this node's
  // role in the partition is known, so nothing is acknowledged from an unreplicated log that a
  // follower's truncation would cut. A node's own topics are open at once.
  bool replicated = false;
  // A cluster's topic: which topic of the name this copy is of ("<cluster>/<revision>", the
  // revision of the topic's key in the cluster's store), so a copy left from a topic deleted and
  // made again under its name is never taken for the new one. Kept in the topic's file like
  // `replicated`; "" for a node's own topics and for copies made before it was recorded.
  std::string cluster_topic_id;
};

// Sets one setting by its Kafka-style name (partitions, ring.capacity.bytes, max.batch.bytes,
// retention.bytes, retention.ms, segment.bytes, segment.ms, fsync = none|always|interval=<ms>,
// flow.control = none|consumers, min.insync.replicas, producer.slots, consumer.slots). The error says
// which key or value is wrong.
Result<void> set_topic_config(TopicConfig& config, std::string_view key, std::string_view value);
// Checks a whole config; the error names the offending setting and its limits.
Result<void> validate_topic_config(const TopicConfig& config);
// Kafka's rule: 1..249 characters of [A-Za-z0-9._-], and not "." or "..".
Result<void> validate_topic_name(std::string_view name);
std::string fsync_policy_name(const TopicConfig& config);

// What a partition's ring has seen, as of the last maintenance pass.
struct PartitionStats {
  std::uint32_t partition = 0;
  Offset start_offset;  // the earliest offset the ring still holds
  Offset end_offset;    // the next offset producers will be given (Kafka's log end offset)
  std::uint64_t records = 0;       // records published since the topic was created
  std::uint64_t bytes = 0;         // ring bytes they took, frame headers and padding included
  std::uint32_t producers = 0;     // attached producers
  std::uint32_t consumers = 0;     // attached consumers
  std::uint32_t lapped_consumers = 0;  // attached consumers that were lapped at least once
  std::uint64_t lapped_events = 0;     // laps the attached consumers have taken in total
  std::uint64_t back_pressure_events = 0;  // claims refused for lack of space (attached producers)
  std::uint64_t sealed_claims = 0;         // claims of dead producers sealed as aborted
  std::string memory;                      // how the ring memory is backed (hugepages or why not)
  Offset log_start_offset{-1};  // the earliest offset the partition's log holds (-1: no log)
  Offset log_end_offset{-1};    // the next offset the partition's log will hold (-1: no log)
  std::uint64_t log_bytes = 0;  // on disk
  std::string log_error;        // why the log takes no batches now (empty: it does)
};

struct TopicInfo {
  std::string name;
  std::uint64_t id = 0;  // unique per node run; a recreated topic gets a new id
  std::uint64_t rings_replaced = 0;  // see TopicIncarnation
  TopicConfig config;
  std::vector<PartitionStats> partitions;
};

// Which incarnation of a topic a cache holds: its id, and how many times a partition's ring was
// replaced since it was made (a replica cut back to its leader's epoch boundary, or restarted at
// its leader's log start, gets a fresh ring; the old one is retired).
struct TopicIncarnation {
  std::uint64_t id = 0;
  std::uint64_t rings_replaced = 0;
  bool operator==(const TopicIncarnation&) const = default;
};

// Opens a partition's durable log (in weftd: storage::SegmentLog in the data directory).
using OpenPartitionLog =
    std::function<Result<std::unique_ptr<PartitionLog>>(std::string_view topic, std::uint32_t partition, const TopicConfig& config)>;

// Removes the durable log of a partition whose log was never opened (a partition offline since
// its log was found corrupt at start) when its topic is deleted.
using RemovePartitionLog = std::function<Result<void>(std::string_view topic, std::uint32_t partition)>;

struct NodeOptions {
  // With a log, the maintenance pass drains every ring into it and producers may overwrite only
  // what it wrote (and synced, as the topic's fsync policy asks). Without one, rings only.
  OpenPartitionLog open_log;
  // With open_log: without it, deleting a topic with an offline partition fails (its log stays,
  // and would be found again by a topic made under the name). storage::use_segment_logs sets both.
  RemovePartitionLog remove_unopened_log;
  // Where topics and their settings are kept (one `<topic>.topic` file each), so a node that
  // starts again serves the topics it had, each partition carrying on from its log. Empty:
  // topics live in memory only.
  std::string metadata_dir;
  // Where consumer groups' committed offsets are kept (weft/fabric/offset_store.h). Empty: this
  // node takes no commits.
  std::string offsets_dir;
  // In a cluster, a group's coordinator may hold no replica of the topics it commits for: the
  // caller checks them against the cluster's topics and this node stores them unchecked.
  bool offsets_for_any_topic = false;
  TopicConfig default_topic;               // for topics created without their own config
  bool prefer_hugepages = true;            // rings in hugepages when the kernel has them reserved
  std::string hugetlbfs_dir;               // a hugetlbfs mount to use instead of memfd
  std::size_t ring_memory_budget_bytes = std::size_t{16} << 30;  // all rings of the node together
  std::size_t max_topics = 100'000;
  bool start_maintenance_thread = true;    // false: the caller runs maintain() (tests)
  // The maintenance thread comes back before the busiest ring's producers could use a quarter of
  // their free space, within these bounds.
  std::int64_t maintenance_min_interval_us = 50;
  std::int64_t maintenance_max_interval_us = 2'000;
  // How often each partition's log is checked against its topic's retention (Kafka's
  // log.retention.check.interval.ms, which defaults to 5 minutes).
  std::int64_t retention_check_interval_ms = 1'000;
  // After the log refuses a write (a full disk), how long before the node tries again.
  std::int64_t log_retry_interval_ms = 1'000;
};

// A partition's ring memory as handed to a client: mapped here (embedded) or passed as an fd.
struct PartitionMemory {
  std::shared_ptr<SharedMemory> memory;
  Ring ring;
  std::uint64_t topic_id = 0;
  std::uint32_t partition = 0;
};

// Where a partition takes records now: on this node, or (in a cluster) at the node leading it.
struct PartitionRoute {
  bool here = true;                 // this node leads the partition, or runs alone
  std::int32_t leader = -1;         // the leading node's id (-1: none now, or alone)
  std::int32_t leader_epoch = -1;
  std::string kafka_address;        // the leader's Kafka listener, HOST:PORT ("" when it has none)
};
// Answers partition_route; a cluster node installs one (ClusterNode). kUnavailable while the
// partition has no leader.
using PartitionRouter = std::function<Result<PartitionRoute>(std::string_view topic, std::uint32_t partition)>;

class Node {
 public:
  static Result<std::unique_ptr<Node>> start(NodeOptions options);
  ~Node();
  Node(const Node&) = delete;
  Node& operator=(const Node&) = delete;

  Result<TopicInfo> create_topic(std::string_view name, const TopicConfig& config);
  Result<TopicInfo> create_topic(std::string_view name) { return create_topic(name, options_.default_topic); }
  // The rings stay mapped in clients that hold them; nothing new reaches them. When a log cannot
  // be removed the topic stays (an error says why; deleting it again retries what is left).
  Result<void> delete_topic(std::string_view name);
  std::vector<std::string> list_topics() const;
  Result<TopicInfo> describe_topic(std::string_view name) const;
  // Without describing it (one lookup): for caches that check every topic they hold when
  // topics_version() moves.
  std::optional<TopicIncarnation> topic_incarnation(std::string_view name) const;
  Result<PartitionMemory> open_partition(std::string_view topic, std::uint32_t partition) const;
  // For readers behind the ring: where `offset` (or kEarliestOffset) lies in the partition's log.
  // kUnsupported when the partition has no log; kOutOfRange before the log's start. The slice
  // holds no batch that reaches `until` (PartitionLog::slice).
  Result<LogSlice> open_log_slice(std::string_view topic, std::uint32_t partition, Offset offset, Offset until = kLogEnd) const;
  // The first offset in the partition's log with a timestamp at or after `timestamp_ms`
  // (kNotFound: none in the log; the ring may hold later ones). kUnsupported: no log.
  Result<TimedOffset> log_offset_for_timestamp(std::string_view topic, std::uint32_t partition, std::int64_t timestamp_ms) const;

  // Where producers of the partition write now (here, without a router). kNotFound: no such
  // topic or partition. kFailedPrecondition: a cluster's partition (its ring fenced until a role
  // comes) on a node that never had a router, so no leader will come.
  Result<PartitionRoute> partition_route(std::string_view topic, std::uint32_t partition) const;
  // Installs (or, empty, removes) the cluster's answer to partition_route.
  void set_partition_router(PartitionRouter router);

  // In a cluster, where committed offsets live beyond this node (ClusterNode installs it): commits
  // go there first, fetches read from there, so a group's next coordinator has them. Empty: none.
  void set_offset_mirror(std::shared_ptr<OffsetMirror> mirror);

  // Consumer groups' committed offsets, durable when the call returns. Every entry must name an
  // existing topic and partition (kNotFound otherwise, nothing committed).
  Result<void> commit_offsets(std::string_view group, std::span<const CommittedOffset> offsets);
  // A group's committed offsets for one topic (empty topic: every topic), by topic and partition.
  Result<std::vector<CommittedOffset>> fetch_offsets(std::string_view group, std::string_view topic) const;
  // fetch_offsets(group, "") of each distinct group, in the order given (invalid ids get none),
  // with one read of a cluster's store for them all (a metrics scrape) instead of one per group.
  Result<std::vector<std::vector<CommittedOffset>>> fetch_offsets_of(std::span<const std::string> groups) const;
  // The groups that have committed offsets here, in name order (none without an offset store).
  std::vector<std::string> list_groups() const;
  // The groups with committed offsets here or in the cluster's store (one range read), in name
  // order. Errors: the store's.
  Result<std::vector<std::string>> groups_with_offsets() const;
  // Kafka's offsets.retention.minutes: deletes the offsets of every group whose newest commit
  // (here or in the cluster's store) is older than `retention_ms` before `now_ms` (wall clock),
  // except those `keep` names (groups with members: Kafka expires a group's offsets only once it
  // is Empty). This node's copy goes; the cluster's store's too for a group `shared` names (the
  // groups this node coordinates). Returns the groups whose offsets went; the first failure
  // stops the sweep.
  Result<std::vector<std::string>> expire_offsets(std::int64_t now_ms, std::int64_t retention_ms,
                                                  const std::function<bool(std::string_view group)>& keep,
                                                  const std::function<bool(std::string_view group)>& shared);

  // One maintenance pass over every partition; returns true when any ring moved. Safe to call
  // beside the node's maintenance thread (passes take turns).
  bool maintain();
  // Stops the maintenance thread after a last pass. Idempotent; the destructor calls it.
  void stop();

  const NodeOptions& options() const noexcept { return options_; }
  std::size_t ring_memory_bytes() const;
  // Runs the next maintenance pass now rather than at the rings' pace: a producer that cannot
  // sleep in wait_for_log (an event loop answering remote producers) waits on the log.
  void hurry();
  // After each pass that found producers waiting on the log, writes 1 to `event_fd` (an eventfd
  // the caller polls with the rest of its sockets), so acknowledgements need no timer. -1: none.
  void set_pass_event(int event_fd) noexcept;
  // Another such eventfd, for the replication thread (replica_log counts it as a waiter on each
  // replicated partition's log, so passes tell it as records arrive).
  void set_replication_event(int event_fd) noexcept;
  // Moves whenever a topic is created or deleted (or a replica's ring is replaced): lets a cache
  // of topics (the Kafka listener's) check itself with one load.
  std::uint64_t topics_version() const noexcept;

  // A partition as replication sees it (weft/fabric/replication.h), for the replicator's thread.
  // As leader it reads what the log holds, and the log stamps the leader epoch into batches
  // produced here. As follower it appends the leader's batches into the ring with their own
  // offsets (holding the ring exclusively, so no local producer writes there meanwhile; the log
  // writer persists them as any other), and truncates: the log is cut and the partition gets a
  // fresh ring from the cut (clients attached to the old ring keep it, as for a deleted topic).
  // kUnsupported without a log.
  Result<std::unique_ptr<ReplicaLog>> replica_log(std::string_view topic, std::uint32_t partition);

 private:
  struct Partition;
  struct Topic;
  struct State;
  class NameTurn;
  explicit Node(NodeOptions options);
  double maintain_pass();
  Result<TopicInfo> create_topic_impl(std::string_view name, const TopicConfig& config, bool save, bool recovering = false);
  Result<void> save_topic(const std::string& name, const TopicConfig& config) const;
  Result<void> load_topics();  // the largest share of a ring's free space used since the last pass
  // Moves the ring's new batches into the log. `wait`: the writes are finished before it returns
  // (a follower's write-through), rather than collected by a later pass.
  void drain_to_log(Partition& partition, const TopicConfig& config, std::int64_t now, bool wait = false);
  void log_failed(Partition& partition, const Error& error, bool retry, std::int64_t now);
  Result<PartitionLog*> partition_log(std::string_view topic, std::uint32_t partition, std::shared_ptr<Topic>& keep) const;
  // Cuts a partition's log at `end` (or restarts it there, `reset`) and gives the partition a
  // fresh ring from the new end. Returns that end.
  Result<Offset> rewind_partition(const std::shared_ptr<Topic>& topic, std::uint32_t index, Offset end, bool reset);
  // A follower's appended batches written to its log from the caller's thread (see Replica::append).
  void write_through(const std::shared_ptr<Topic>& topic, std::uint32_t index);
  class Replica;
  NodeOptions options_;
  std::unique_ptr<State> state_;
};

}  // namespace weft
