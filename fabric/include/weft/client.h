// A client's handle on a node: embedded in this process, or weftd on this host reached over its
// Unix socket. Producers and consumers (weft/producer.h, weft/consumer.h) work the same on both:
// they read and write the partitions' rings in shared memory; this handle only manages topics and
// hands out ring memory.
//
// Thread contract: a Client may be shared by threads; its calls are control-plane (a request to
// the node each), never on the send or poll path.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "weft/fabric/result.h"
#include "weft/node.h"

namespace weft {

// Topic settings by name (see set_topic_config); the node's defaults fill in the rest.
using TopicSettings = std::vector<std::pair<std::string, std::string>>;

struct NodeStatus {
  std::uint32_t topics = 0;
  std::uint64_t ring_memory_bytes = 0;
  std::uint64_t uptime_ms = 0;
  std::uint32_t pid = 0;
  std::uint32_t connections = 0;  // local clients connected now (0 when embedded)
  std::uint64_t accepted = 0;
  std::uint64_t refused = 0;
  std::uint64_t bad_requests = 0;
  std::uint64_t requests = 0;
  bool embedded = false;
};

class Client {
 public:
  // Connects to weftd on this host (empty path: local::default_socket_path()). The error says
  // whether no node is running there or this user is not admitted.
  static Result<std::shared_ptr<Client>> connect(std::string socket_path = {});
  // A client of a node in this process; the node must outlive the client and everything made
  // from it.
  static std::shared_ptr<Client> embedded(Node& node);

  virtual ~Client() = default;
  virtual Result<TopicInfo> create_topic(std::string_view name, const TopicSettings& settings) = 0;
  Result<TopicInfo> create_topic(std::string_view name, std::uint32_t partitions) {
    return create_topic(name, TopicSettings{{"partitions", std::to_string(partitions)}});
  }
  virtual Result<void> delete_topic(std::string_view name) = 0;
  virtual Result<std::vector<std::string>> list_topics() = 0;
  virtual Result<TopicInfo> describe_topic(std::string_view name) = 0;
  virtual Result<NodeStatus> status() = 0;
  // Maps one partition's ring into this process.
  virtual Result<PartitionMemory> open_partition(std::string_view topic, std::uint32_t partition) = 0;
  // Where producers of the partition write now (Node::partition_route): here, or in a cluster
  // at the leader's Kafka listener when another node leads it. kFailedPrecondition: a cluster's
  // partition on a node running without its cluster (no leader will come).
  virtual Result<PartitionRoute> partition_route(std::string_view topic, std::uint32_t partition) = 0;
  // For consumers behind the ring (Node::open_log_slice): a segment file to read from.
  virtual Result<LogSlice> open_log_slice(std::string_view topic, std::uint32_t partition, Offset offset) = 0;
  virtual Result<Offset> log_offset_for_timestamp(std::string_view topic, std::uint32_t partition, std::int64_t timestamp_ms) = 0;
  // Consumer groups' committed offsets (Node::commit_offsets / fetch_offsets). Over the socket a
  // commit of many partitions travels in parts of up to 48 KiB, each durable on its own.
  virtual Result<void> commit_offsets(std::string_view group, std::span<const CommittedOffset> offsets) = 0;
  virtual Result<std::vector<CommittedOffset>> fetch_offsets(std::string_view group, std::string_view topic) = 0;
  virtual bool is_embedded() const noexcept = 0;
  virtual std::string describe() const = 0;  // "embedded node" or "weftd at PATH (pid N)"
};

}  // namespace weft
