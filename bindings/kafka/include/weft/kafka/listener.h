// The Kafka wire-protocol listener: remote clients (any Kafka client, kcat, Spark, Flink, Kafka
// Connect) produce to and fetch from a weft node's partitions, and use consumer groups, with
// Kafka's own protocol over TCP.
//
//   auto listener = weft::kafka::KafkaListener::start(node, options);
//
// Produce copies each client's RecordBatch v2 into the partition's ring as it came (validated,
// never re-encoded); Fetch serves the batches' bytes unchanged, from the ring for consumers at the
// tail and with sendfile from the segment files for the rest. Consumer groups run in a
// GroupCoordinator (weft/fabric/group_coordinator.h) and commit to the node's offset store.
//
// Threads: one event-loop thread serves every connection (epoll, non-blocking sockets); requests
// that must wait (long-polling fetches, acks, group joins) are parked, never block the loop.
// Each connection's requests are answered in order, one at a time, as Kafka brokers do.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "weft/fabric/group_coordinator.h"
#include "weft/fabric/result.h"

namespace weft {
class Node;
class ClusterNode;
}

namespace weft::kafka {

struct KafkaListenerOptions {
  std::string listen_host = "127.0.0.1";
  std::uint16_t listen_port = 9092;  // 0: any free port (see KafkaListener::port())
  // What Metadata tells clients to connect to (advertised.listeners). Empty / 0: the listen
  // address and the bound port.
  std::string advertised_host;
  std::uint16_t advertised_port = 0;
  std::int32_t node_id = 0;
  std::string cluster_id = "weft";
  std::size_t max_request_bytes = std::size_t{100} << 20;  // socket.request.max.bytes
  // Memory for requests larger than the 1 MiB each connection keeps, over all connections
  // (Kafka's queued.max.request.bytes, which Kafka leaves unbounded): a frame's excess is taken
  // whole before its bytes are read, and a connection that finds too little left is not read
  // until some comes back. At least max_request_bytes.
  std::size_t max_buffered_request_bytes = std::size_t{1} << 30;
  std::size_t max_connections = 1024;
  std::int64_t idle_timeout_ms = 600'000;  // connections.max.idle.ms
  bool auto_create_topics = true;          // auto.create.topics.enable
  // Idempotent producers' states (each a producer id's last five batches on one partition, about
  // 150 bytes): past this many over all partitions the least recently used are dropped, as
  // Redpanda's max_concurrent_producer_ids does, and a retry from a dropped producer is no longer
  // recognised as a duplicate. Those idle longer than the expiration are dropped too (Kafka's
  // producer.id.expiration.ms).
  std::size_t max_producer_ids = 200'000;
  std::int64_t producer_id_expiration_ms = 86'400'000;
  std::uint32_t default_partitions = 1;    // num.partitions, for auto-created topics
  GroupCoordinatorOptions groups;
  // Kafka's offsets.retention.minutes (7 days): a group without members whose newest commit is
  // older loses its committed offsets (here and in a cluster's store); <= 0 keeps them for good.
  // Looked for every offsets_retention_check_interval_ms (offsets.retention.check.interval.ms).
  std::int64_t offsets_retention_ms = 7 * 24 * 3'600'000LL;
  std::int64_t offsets_retention_check_interval_ms = 600'000;
  // In a cluster (weft/cluster_node.h): Metadata names the cluster's brokers, leaders and
  // in-sync sets; produce, fetch and ListOffsets go to leaders only (NOT_LEADER_OR_FOLLOWER
  // elsewhere); acks=all waits for the high watermark and fetches stop at it; topics are created
  // and deleted cluster-wide; each consumer group has one coordinator node. Null: a single node.
  // node_id is then the cluster node's id. Must outlive the listener.
  ClusterNode* cluster = nullptr;
  std::uint32_t default_replication_factor = 1;  // default.replication.factor (auto-created topics too)
  // How often parked fetches and unacknowledged produces look at the rings again (data written
  // by this listener wakes them at once; local shared-memory producers are seen on this tick).
  std::int64_t poll_interval_us = 200;
};

struct KafkaApiStats {
  std::uint64_t requests = 0;
  std::uint64_t errors = 0;  // responses carrying an error code (any partition or entry)
  // Latency from a request's arrival to its response being queued, in power-of-two microsecond
  // buckets: bucket i counts latencies below 2^i µs (the last one: everything above).
  std::array<std::uint64_t, 24> latency_us_log2{};
  std::uint64_t latency_us_sum = 0;
};

struct KafkaListenerStats {
  std::uint64_t connections_open = 0;
  std::uint64_t connections_accepted = 0;
  std::uint64_t connections_refused = 0;  // over max_connections, or no file descriptor left
  std::uint64_t connections_closed_bad_request = 0;  // malformed, oversized or unsupported frames
  std::uint64_t connections_closed_idle = 0;
  std::uint64_t request_memory_waits = 0;  // times a frame over 1 MiB found max_buffered_request_bytes short
  // Fetch responses whose segment region was not in the page cache: read ahead while the loop
  // served others, instead of sendfile waiting on the disk in it.
  std::uint64_t fetch_disk_waits = 0;
  std::uint64_t bytes_in = 0;
  std::uint64_t bytes_out = 0;
  std::uint64_t records_in = 0;
  std::uint64_t producer_ids = 0;          // idempotent producers' states held now
  std::uint64_t producer_ids_evicted = 0;  // dropped past max_producer_ids (expiry not counted)
  std::array<KafkaApiStats, 33> apis{};  // by API key (keys this listener serves are all below 33)
};

class KafkaListener {
 public:
  // Binds and starts the event loop. kIo when the address cannot be bound (in use: says so).
  static Result<std::unique_ptr<KafkaListener>> start(Node& node, KafkaListenerOptions options);
  ~KafkaListener();  // stop()
  KafkaListener(const KafkaListener&) = delete;
  KafkaListener& operator=(const KafkaListener&) = delete;

  // Stops accepting, closes every connection and joins the loop. Idempotent.
  void stop();
  std::uint16_t port() const noexcept;
  KafkaListenerStats stats() const;
  // The consumer groups' state, for metrics and `weft status`: group -> member count.
  std::vector<GroupListing> groups() const;

  struct Impl;

 private:
  explicit KafkaListener(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace weft::kafka
