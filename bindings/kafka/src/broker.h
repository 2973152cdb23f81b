// Inside the Kafka listener: the Broker answers requests (one API at a time, per Kafka's message
// schemas) against the node; the event loop (listener.cc) moves bytes. Both run on the loop
// thread only.
#pragma once

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <set>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "weft/fabric/compression.h"
#include "weft/fabric/group_coordinator.h"
#include "weft/fabric/log.h"
#include "weft/fabric/ring.h"
#include "weft/fabric/serial_worker.h"
#include "weft/fabric/shared_memory.h"
#include "weft/cluster_node.h"
#include "weft/kafka/listener.h"
#include "weft/kafka/wire.h"
#include "weft/node.h"

namespace weft::kafka::detail {

// One piece of a response: bytes, or a region of a segment file sent with sendfile.
struct OutChunk {
  std::string bytes;
  std::shared_ptr<UniqueFd> file;
  std::uint64_t file_offset = 0;
  std::size_t file_bytes = 0;
  std::size_t sent = 0;
  // The listener's read-ahead (cached_window): the segment's written bytes bound it; the stretch after
  // the region is advised once, and the region itself up to `advised_to`; the page cache was
  // found to hold it up to `cached_to`.
  std::uint64_t readable_end = 0;
  bool ahead_advised = false;
  std::uint64_t advised_to = 0;
  std::uint64_t cached_to = 0;
  std::size_t size() const noexcept { return file ? file_bytes : bytes.size(); }
};

// A response frame under construction: the size is patched in when it is finished.
class Frame {
 public:
  explicit Frame(const RequestHeader& header);
  Writer w;
  // The next `length` bytes of the frame come from `file` at `offset` (after a records length);
  // the file holds `readable_end` bytes.
  void file_region(std::shared_ptr<UniqueFd> file, std::uint64_t offset, std::size_t length, std::uint64_t readable_end);
  std::vector<OutChunk> finish();

 private:
  std::vector<OutChunk> chunks_;
  std::size_t total_ = 0;
};

// Idempotent producers: the last batches of one producer id on one partition (Kafka keeps 5),
// in place (no allocation beyond the map's node: a node may hold hundreds of thousands).
struct ProducerSequences {
  struct Appended {
    std::int32_t first_sequence;
    std::int32_t last_sequence;
    Offset base_offset;
  };
  static constexpr std::size_t kKept = 5;
  std::array<Appended, kKept> recent{};  // a ring of `count`, the newest at `newest`
  std::uint8_t count = 0;
  std::uint8_t newest = 0;
  std::int16_t epoch = -1;
  std::uint64_t last_use = 0;     // the broker's use clock: the least recently used go first
  std::int64_t last_used_ms = 0;  // producer_id_expiration_ms counts from here

  bool empty() const noexcept { return count == 0; }
  const Appended& back() const noexcept { return recent[newest]; }
  const Appended& at(std::size_t age) const noexcept { return recent[(newest + kKept - age) % kKept]; }  // 0: newest
  void push(const Appended& a) noexcept {
    newest = static_cast<std::uint8_t>(count == 0 ? 0 : (newest + 1) % kKept);
    recent[newest] = a;
    if (count < kKept) ++count;
  }
  void clear() noexcept { count = 0; }
};

struct PartitionState {
  PartitionMemory memory;
  std::optional<Producer> producer;
  std::optional<Consumer> reader;  // the tail reader for fetches (moved by seek when needed)
  std::int64_t reader_used_ms = 0;
  std::unordered_map<std::int64_t, ProducerSequences> producers;
  // `producers` holds every producer whose batches the ring held when it was first needed (one
  // walk), and all this broker appended since: an id not in it is new, with no walk of its own.
  bool producers_learned = false;
  std::int32_t leader_epoch = -1;  // in a cluster: the epoch `producers` was learned under
};

struct TopicState {
  std::string name;
  std::uint64_t id = 0;
  TopicIncarnation incarnation;  // as the node said when it was cached
  TopicConfig config;
  bool has_log = false;
  std::vector<std::unique_ptr<PartitionState>> partitions;
  // From the node's last maintenance pass, refreshed now and then: where each log starts.
  std::vector<Offset> log_start;
  std::int64_t log_start_refreshed_ms = 0;
};

// Work a request hands off the listener's thread (to its SerialWorker), which waits for it
// parked: the worker runs `run`, then sets `done` (release); the listener reads the outcome once
// it sees `done` (acquire).
struct OffLoopJob {
  virtual ~OffLoopJob() = default;
  virtual void run(Node& node) = 0;
  std::atomic<bool> done{false};
};

// An OffsetCommit whose offsets are being written (the offset store fsyncs; a cluster's mirror
// writes to etcd).
struct CommitJob final : OffLoopJob {
  void run(Node& node) override { result = node.commit_offsets(group, commits); }
  std::string group;
  std::vector<CommittedOffset> commits;
  Result<void> result;
  // The response, built on the listener's thread once done.
  struct Part {
    std::int32_t partition;
    std::int16_t error = 0;
  };
  std::vector<std::pair<std::string, std::vector<Part>>> topics;
  std::vector<std::pair<std::size_t, std::size_t>> slots;  // (topic, part) of each commit
};

// Work done off the loop, answered on it: CreateTopics and DeleteTopics (a topic's rings and
// files cost about 8 ms to make here, a cluster's a write to etcd, so a request naming hundreds
// held every connection for seconds) and OffsetFetch (a cluster's read from etcd; a single
// node's store waits for a commit's fsync). `work` runs on a worker; `respond` on the listener's
// thread once done (it may touch the broker's caches).
struct DeferredJob final : OffLoopJob {
  void run(Node&) override { work(); }
  std::function<void()> work;
  std::function<std::vector<OutChunk>(std::int16_t& first_error)> respond;
};

// A request that waits: a produce for its acknowledgements (or ring space), a fetch for data,
// a group join or sync for the other members, an offset commit, an offset fetch or a topic
// admin request for a worker.
struct Parked {
  enum class Kind : std::uint8_t { kProduce, kFetch, kGroup, kCommit, kDeferred };
  Kind kind = Kind::kProduce;
  RequestHeader header;  // client_id cleared: it pointed into the request's frame
  std::int64_t arrived_ns = 0;
  std::int64_t deadline_ns = 0;

  struct ProducePart {
    std::string topic;
    std::int32_t partition = 0;
    std::shared_ptr<TopicState> state;  // null: the topic or partition is unknown
    std::span<const std::byte> batch;   // in the connection's input buffer, kept until answered
    std::int16_t error = 0;
    std::string error_message;
    bool appended = false;
    bool validated = false;        // checked once; a retry for ring space only claims again
    std::int32_t records = 0;
    bool waiting_for_log = false;  // counted with add_log_waiter
    bool waiting_for_replicas = false;  // acks=all in a cluster: for the high watermark
    Offset base_offset{-1};
    Offset end_offset{-1};
  };
  std::int16_t acks = 1;
  std::vector<ProducePart> produce;

  struct FetchPart {
    std::string topic;
    std::int32_t partition = 0;
    std::int64_t offset = 0;
    std::int32_t max_bytes = 0;
  };
  std::int32_t min_bytes = 0;
  std::int32_t max_bytes = 0;
  std::vector<std::pair<std::string, std::vector<FetchPart>>> fetch;  // by topic, request order
  // fetch_progress() when the last look came short of min_bytes with every partition settled.
  std::optional<std::uint64_t> fetch_progress_seen;

  // Set by the coordinator's completion (maybe later, from another connection's request).
  std::shared_ptr<std::optional<std::vector<OutChunk>>> group_reply;
  std::shared_ptr<CommitJob> commit;
  std::shared_ptr<DeferredJob> deferred;
};

struct Request {
  RequestHeader header;
  std::span<const std::byte> body;
  std::int64_t arrived_ns = 0;
  std::string_view client_host;
};

// A request's header to answer it later, after its frame is gone (client_id points into it).
inline RequestHeader owned_header(const Request& r) {
  RequestHeader header = r.header;
  header.client_id = std::nullopt;
  return header;
}

struct Outcome {
  enum class Kind : std::uint8_t { kRespond, kParked, kNoResponse, kClose };
  Kind kind = Kind::kRespond;
  std::vector<OutChunk> response;
  std::unique_ptr<Parked> parked;
  std::string close_reason;
  std::int16_t error = 0;  // the first error code the response carries (for the statistics)
};

class Broker {
 public:
  Broker(Node& node, const KafkaListenerOptions& options, std::uint16_t bound_port);
  ~Broker();

  // An eventfd the listener's loop waits on: written when work done off its thread (an offset
  // commit) has an answer.
  void set_wake_event(int fd) noexcept { wake_fd_ = fd; }

  Outcome handle(const Request& request);
  // Tries a parked request again: kParked while it must still wait. `now_ns` is monotonic.
  Outcome resume(Parked& parked, std::int64_t now_ns);
  // Whether a parked request still reads its frame (a produce with batches not yet in the ring,
  // and every request but a produce, to keep the rule simple); if not, the frame may go.
  bool needs_frame(Parked& parked) const noexcept;
  // Gives up a parked request whose connection closed.
  void abandon(Parked& parked);
  // Timers: group sessions, caches.
  void tick(std::int64_t now_ns);
  std::optional<std::int64_t> next_group_deadline_ms() const { return groups_.next_deadline_ms(); }
  std::vector<GroupListing> groups() const { return groups_.list(); }
  std::uint64_t records_in() const noexcept { return records_in_; }
  std::uint64_t producer_ids() const noexcept { return producer_ids_; }
  std::uint64_t producer_ids_evicted() const noexcept { return producer_ids_evicted_; }

 private:
  Outcome api_versions(const Request& r);
  // A single node's auto-created topics are made on the topics' worker, the request parked
  // meanwhile; then the request is read again and answered with `attempted` (the names tried)
  // set, so a creation that failed is answered, never tried again on the loop.
  Outcome metadata(const Request& r, Reader& in, const std::set<std::string, std::less<>>* attempted = nullptr);
  Outcome produce(const Request& r, Reader& in);
  Outcome fetch(const Request& r, Reader& in);
  Outcome list_offsets(const Request& r, Reader& in);
  Outcome find_coordinator(const Request& r, Reader& in);
  Outcome join_group(const Request& r, Reader& in);
  Outcome sync_group(const Request& r, Reader& in);
  Outcome heartbeat(const Request& r, Reader& in);
  Outcome leave_group(const Request& r, Reader& in);
  Outcome offset_commit(const Request& r, Reader& in);
  std::vector<OutChunk> offset_commit_response(const RequestHeader& header, CommitJob& job, std::int16_t& first_error);
  Outcome offset_fetch(const Request& r, Reader& in);
  Outcome list_groups(const Request& r, Reader& in);
  Outcome describe_groups(const Request& r, Reader& in);
  Outcome create_topics(const Request& r, Reader& in);
  Outcome delete_topics(const Request& r, Reader& in);
  // Answers at once when there is no `work`, else runs it on `worker` and answers after.
  enum class Worker : std::uint8_t { kOffsets, kTopics };
  Outcome defer(const Request& r, Worker worker, bool any_work, std::function<std::vector<OutChunk>(std::int16_t& first_error)> respond,
                std::function<void()> work);
  Outcome describe_configs(const Request& r, Reader& in);
  Outcome init_producer_id(const Request& r, Reader& in);

  // Produce.
  void append(Parked::ProducePart& part);
  // Inflates a compressed batch's records and reads every one: kCorrupt with the reason if any
  // does not decode or the count is not the header's.
  Result<void> check_compressed_records(const BatchView& batch);
  // Every producer's last batches in the partition's ring, read once when first needed (and again
  // after a leader change): they may have written through another leader or before a restart,
  // and a retry of those batches must not land twice.
  void learn_producers(PartitionState& partition);
  // The producer's state on the partition, made when new; marks it used. Evicts the least
  // recently used producers (all partitions) past options_.max_producer_ids.
  ProducerSequences& producer_state(PartitionState& partition, std::int64_t producer_id);
  // Drops producers idle past producer_id_expiration_ms; with `to_keep`, also the least recently
  // used until that many are left. Recounts producer_ids_.
  void trim_producers(std::int64_t now_ms, std::optional<std::size_t> to_keep);
  bool produce_done(Parked& parked, std::int64_t now_ns);
  std::vector<OutChunk> produce_response(Parked& parked);
  // Fetch: builds the response when enough is there (or `force`); nothing otherwise.
  std::optional<std::vector<OutChunk>> fetch_response(Parked& parked, bool force, std::int16_t& first_error);
  // What a parked fetch's partitions have to offer, as one number: their claimed ends and high
  // watermarks. Cheap (no reads), so a parked fetch looks again only when it moved.
  std::uint64_t fetch_progress(const Parked& parked);
  struct PartitionRead {
    std::int16_t error = 0;
    std::string bytes;                 // from the ring
    std::shared_ptr<UniqueFd> file;    // or from a segment file
    std::uint64_t file_offset = 0;
    std::size_t file_bytes = 0;
    std::uint64_t file_readable_end = 0;  // the segment's written bytes
    Offset high_watermark{-1};
    Offset log_start{-1};
    std::optional<RingBatch> first_batch;  // the first batch read from the ring: given back by unread()
    // A later look finds more only once a producer claims more or the high watermark moves (it
    // read all that was committed, or all it may take); a log's read is never settled.
    bool settled = false;
    std::size_t size() const noexcept { return file ? file_bytes : bytes.size(); }
  };
  // `visible`: the high watermark in a cluster (nothing at or past it is served); the ring's end
  // on a single node.
  PartitionRead read_partition(TopicState& topic, std::uint32_t partition, std::int64_t offset, std::size_t max_bytes, bool first,
                               std::optional<Offset> visible);

  // Cluster mode (options_.cluster). 0 when this node leads the partition and serves it, else
  // the Kafka error that sends the client elsewhere; `view` gets the partition's state.
  std::int16_t leader_error(std::string_view topic, std::int32_t partition, PartitionView* view = nullptr) const;
  struct BrokerAddress {
    std::int32_t id;
    std::string host;
    std::int32_t port;
    std::string rack;
  };
  // The brokers Metadata lists: the cluster's nodes with a Kafka address (this one always).
  std::vector<BrokerAddress> brokers() const;
  BrokerAddress self_address() const { return {options_.node_id, advertised_host_, advertised_port_, {}}; }

  // Topics: a cache of the node's topics with their rings mapped, checked against the node's
  // topics version on every lookup.
  std::shared_ptr<TopicState> topic(std::string_view name);
  // As topic(), creating it when auto-creation is on and `allow_create`. `error` says why not.
  std::shared_ptr<TopicState> topic_or_create(std::string_view name, bool allow_create, std::int16_t& error);
  Offset log_start(TopicState& topic, std::uint32_t partition);
  Offset earliest(TopicState& topic, std::uint32_t partition);

  std::int16_t group_code(GroupError error) const noexcept;
  std::int64_t now_ms() const noexcept;

  Node& node_;
  KafkaListenerOptions options_;
  ClusterNode* cluster_ = nullptr;
  std::string advertised_host_;
  std::int32_t advertised_port_ = 0;
  GroupCoordinator groups_;
  std::map<std::string, std::shared_ptr<TopicState>, std::less<>> topics_;
  std::uint64_t topics_version_ = ~0ull;
  std::int64_t next_producer_id_ = 0;
  std::int64_t last_leadership_check_ms_ = 0;
  std::uint64_t records_in_ = 0;
  // Idempotent producers' states over every partition (a count that may include states of topics
  // dropped since; trim_producers() recounts), the use clock, and what eviction dropped.
  std::size_t producer_ids_ = 0;
  std::uint64_t producer_use_clock_ = 0;
  std::uint64_t producer_ids_evicted_ = 0;
  std::int64_t last_producer_expiry_ms_ = 0;
  std::int64_t last_offsets_expiry_ms_ = 0;
  std::int64_t started_ms_ = 0;  // when the listener started (the loop's clock)
  // Run jobs in the order they came, so the listener never waits on a disk, on etcd or on
  // topic creation: one for offset commits and fetches (in order, so a fetch sees the commits
  // before it), one for topic admin, so a CreateTopics of many topics (or one held by the
  // cluster's store) holds no group's offsets. Started by their first job.
  // Auto-creations queued on the topics' worker and not yet run (the worker's jobs count it
  // down: declared before the workers, so it outlives their last job).
  std::atomic<int> auto_creations_queued_{0};
  std::unique_ptr<SerialWorker> offsets_worker_;
  std::unique_ptr<SerialWorker> topics_worker_;
  // Parks a request until `job` is done on its worker.
  Outcome park_for(const Request& r, std::shared_ptr<CommitJob> job);
  Outcome park_for(const Request& r, Worker worker, std::shared_ptr<DeferredJob> job);
  SerialWorker& worker(Worker which);
  Outcome run_off_loop(const Request& r, SerialWorker& worker, std::shared_ptr<OffLoopJob> job, Parked::Kind kind);
  // A compressed batch's records, inflated to check them before they are stored.
  Decompressor decompressor_;
  std::vector<std::byte> inflated_;
  int wake_fd_ = -1;
  LogRateLimit transactional_refusal_logs_{5};  // a client may ask again and again
  // Topics one request may still create: each costs the topics' worker its rings' memory and
  // files (about 8 ms here), or etcd round trips, so a request naming thousands would hold every
  // CreateTopics and DeleteTopics behind it that long.
  int auto_creations_left_ = 0;
  // While a parked Metadata is answered: the names its worker tried to create (null otherwise).
  const std::set<std::string, std::less<>>* auto_create_attempted_ = nullptr;
  // Topics auto-created on the topics' worker without a request waiting for them (a cluster's,
  // and a single node's asked for by a Produce), by name: when each was last queued, and how it
  // went (the worker stores, the loop reads). Answers the error to give the client.
  struct AutoCreation {
    enum : int { kQueued, kDone, kFailed };
    std::int64_t queued_ms = 0;
    std::shared_ptr<std::atomic<int>> state;
  };
  std::map<std::string, AutoCreation, std::less<>> auto_creating_;
  // Queues `name`'s creation (in the cluster's store, or on this node) and answers what the
  // client gets meanwhile: LEADER_NOT_AVAILABLE, which it retries.
  std::int16_t auto_create_off_loop(std::string_view name, std::uint32_t replication);
  // Makes a single node's auto-created topic with the default settings, logging what happened;
  // false if it failed. On the topics' worker.
  bool make_auto_topic(std::string_view name);
};

}  // namespace weft::kafka::detail
