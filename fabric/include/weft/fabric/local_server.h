// Admission of local clients: a Unix socket where weftd checks each peer's credentials
// (SO_PEERCRED) and hands admitted clients the rings' memory as file descriptors. One thread,
// one epoll set, and two workers (topics; offsets) for requests that may wait on the disk or
// the cluster's store (the create_topic and delete_topic hooks run on the first); a bounded number of connections; a
// malformed request closes its connection.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "weft/fabric/result.h"
#include "weft/node.h"

namespace weft {

struct LocalServerOptions {
  std::string socket_path;  // empty: local::default_socket_path()
  mode_t socket_mode = 0660;
  // Who may connect besides root and the node's own uid; a peer is admitted when its uid or gid
  // is listed.
  std::vector<uid_t> allow_uids;
  std::vector<gid_t> allow_gids;
  std::size_t max_connections = 1024;
  // Connections past max_connections kept for root and the node's own uid: an operator can still
  // run `weft status` or `weft topic` when other clients (a leaking one) took every slot.
  std::size_t reserved_connections = 4;
  // In a cluster, topics are created and deleted for the whole cluster (weftd sets these from its
  // ClusterNode); null: on this node. A create request's `replication.factor` setting goes to
  // create_topic (0 when not given); without the hook only 1 is accepted.
  std::function<Result<TopicInfo>(const std::string& name, const TopicConfig& config, std::uint32_t replication_factor)> create_topic;
  std::function<Result<void>(const std::string& name)> delete_topic;
};

struct LocalServerStats {
  std::uint64_t accepted = 0;
  std::uint64_t refused = 0;       // credentials not allowed, or too many connections
  std::uint64_t bad_requests = 0;  // malformed, oversized or unknown requests (the connection closed)
  std::uint64_t requests = 0;
  std::uint64_t withheld_descriptors = 0;  // rings or files refused to a client with responses unread
  std::uint32_t connections = 0;
};

class LocalServer {
 public:
  // Binds the socket and starts serving. Refuses a path where another node is listening; a
  // stale socket file left by a dead node is replaced.
  static Result<std::unique_ptr<LocalServer>> start(Node& node, LocalServerOptions options);
  ~LocalServer();
  LocalServer(const LocalServer&) = delete;
  LocalServer& operator=(const LocalServer&) = delete;

  // Stops accepting, closes every connection and removes the socket file. Idempotent.
  void stop();
  const std::string& socket_path() const noexcept;
  LocalServerStats stats() const;

 private:
  struct Impl;
  explicit LocalServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace weft
