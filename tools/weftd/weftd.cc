// weftd: the weft node daemon. Runs a node and admits local clients over its Unix socket.
//
// Settings come from built-in defaults, then the TOML file given with --config, then flags; every
// key of the file has a flag of the same name (underscores become dashes).
#include <arpa/inet.h>
#include <fcntl.h>
#include <pwd.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <algorithm>
#include <chrono>
#include <iterator>
#include <string>
#include <thread>
#include <toml++/toml.h>
#include <vector>

#include "weft/cluster_node.h"
#include "weft/fabric/file.h"
#include "weft/fabric/local_protocol.h"
#include "weft/fabric/local_server.h"
#include "weft/fabric/log.h"
#include "weft/kafka/listener.h"
#include "weft/node.h"
#include "weft/storage/etcd_metadata_store.h"
#include "weft/storage/segment_log.h"
#include "weft/transport/tcp.h"
#include "metrics.h"

namespace {

using namespace weft;

struct Settings {
  std::string socket = local::default_socket_path();
  std::string socket_mode = "0660";
  std::string data_dir;
  std::vector<std::int64_t> allow_uids;
  std::vector<std::int64_t> allow_gids;
  std::int64_t max_connections = 1024;
  std::string log_level = "info";
  bool hugepages = true;
  std::string hugetlbfs_dir;
  std::int64_t ring_memory_budget = std::int64_t{16} << 30;
  std::int64_t default_partitions = 1;
  std::int64_t default_ring_capacity = std::int64_t{4} << 20;
  std::string fsync = "none";
  bool in_memory = false;
  // How segments reach the disk: "buffered" (through the page cache, as Kafka writes: acks=1 and a
  // replica's acknowledgement come once the kernel holds the bytes) or "direct" (the whole blocks
  // of large flushes with O_DIRECT, which their acknowledgements then wait for). docs/design.md.
  std::string log_writes = "buffered";
  // The Kafka wire-protocol listener (bindings/kafka).
  bool kafka = true;
  std::string kafka_listen = "127.0.0.1:9092";
  std::string kafka_advertise;  // empty: the listen address
  std::int64_t kafka_max_request_bytes = std::int64_t{100} << 20;
  std::int64_t kafka_max_connections = 1024;
  std::int64_t kafka_idle_timeout_ms = 600'000;
  std::int64_t kafka_max_producer_ids = 200'000;
  std::int64_t kafka_max_buffered_request_bytes = std::int64_t{1} << 30;
  std::int64_t kafka_producer_id_expiration_ms = 86'400'000;
  std::int64_t offsets_retention_minutes = 10'080;  // Kafka's offsets.retention.minutes; <= 0: for good
  bool kafka_auto_create_topics = true;
  std::int64_t kafka_initial_rebalance_delay_ms = 3'000;
  std::string metrics_listen = "127.0.0.1:9644";  // Prometheus metrics over HTTP (metrics.h); "" or "off": none
  // Cluster mode (weft/cluster_node.h): both node_id and etcd, or neither (a single node).
  std::int64_t node_id = -1;
  std::string etcd;                                  // the metadata store's endpoint, http://HOST:PORT
  std::string cluster = "weft";                      // several clusters may share one etcd
  std::string rack;
  std::string replication_listen = "127.0.0.1:0";    // followers' links; port 0: any (published in etcd)
  std::string replication_secret_file;               // the cluster's shared secret (ReplicationOptions::secret); "": none
  std::int64_t default_replication_factor = 1;       // Kafka's default.replication.factor
  std::int64_t replica_lag_max_ms = 10'000;          // Kafka's replica.lag.time.max.ms
  std::int64_t drain_timeout_ms = 10'000;            // SIGTERM: how long leadership may take to move
  std::int64_t etcd_timeout_ms = 2'000;              // each etcd call
  // A node that stops renewing is gone after this; failover takes about this long. etcd rounds
  // it up to 1.5 of its election timeouts (with etcd's default of 1 s: 2 s).
  std::int64_t lease_ttl_s = 2;
  std::int64_t leader_rebalance_interval_ms = 30'000;  // leadership back to preferred replicas; 0: never
};

// "HOST:PORT" (an IPv6 host in brackets) into its parts.
Result<std::pair<std::string, std::uint16_t>> parse_host_port(const std::string& key, const std::string& text) {
  const std::size_t colon = text.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == text.size())
    return Error{Errc::kInvalidArgument, key + " must be HOST:PORT, not '" + text + "'"};
  std::string host = text.substr(0, colon);
  if (host.size() > 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  char* end = nullptr;
  const unsigned long port = std::strtoul(text.c_str() + colon + 1, &end, 10);
  if (*end != '\0' || port > 65535) return Error{Errc::kInvalidArgument, key + ": '" + text.substr(colon + 1) + "' is not a port (0..65535)"};
  return std::pair<std::string, std::uint16_t>{host, static_cast<std::uint16_t>(port)};
}

std::string default_data_dir() {
  if (geteuid() == 0) return "/var/lib/weft";
  if (const char* xdg = std::getenv("XDG_DATA_HOME"); xdg != nullptr && *xdg != '\0') return std::string(xdg) + "/weft";
  if (const char* home = std::getenv("HOME"); home != nullptr && *home != '\0') return std::string(home) + "/.local/share/weft";
  return "/tmp/weft-" + std::to_string(geteuid()) + "/data";
}

// Reads the TOML file into `s`; unknown keys are errors (a typo must not pass silently).
Result<void> load_config(const std::string& path, Settings& s) {
  toml::table t;
  try {
    t = toml::parse_file(path);
  } catch (const toml::parse_error& e) {
    return Error{Errc::kInvalidArgument, path + ": " + std::string(e.description()) + " at line " +
                                             std::to_string(e.source().begin.line)};
  }
  for (const auto& [key, node] : t) {
    const std::string k(key.str());
    auto want_string = [&](std::string& out) -> Result<void> {
      if (auto v = node.value<std::string>()) {
        out = *v;
        return ok();
      }
      return Error{Errc::kInvalidArgument, path + ": " + k + " must be a string"};
    };
    auto want_int = [&](std::int64_t& out) -> Result<void> {
      if (auto v = node.value<std::int64_t>()) {
        out = *v;
        return ok();
      }
      return Error{Errc::kInvalidArgument, path + ": " + k + " must be an integer"};
    };
    auto want_ints = [&](std::vector<std::int64_t>& out) -> Result<void> {
      const toml::array* a = node.as_array();
      if (a == nullptr) return Error{Errc::kInvalidArgument, path + ": " + k + " must be an array of integers"};
      out.clear();
      for (const auto& e : *a) {
        auto v = e.value<std::int64_t>();
        if (!v) return Error{Errc::kInvalidArgument, path + ": " + k + " must hold integers only"};
        out.push_back(*v);
      }
      return ok();
    };
    Result<void> r;
    if (k == "socket") r = want_string(s.socket);
    else if (k == "socket_mode") r = want_string(s.socket_mode);
    else if (k == "data_dir") r = want_string(s.data_dir);
    else if (k == "allow_uids") r = want_ints(s.allow_uids);
    else if (k == "allow_gids") r = want_ints(s.allow_gids);
    else if (k == "max_connections") r = want_int(s.max_connections);
    else if (k == "log_level") r = want_string(s.log_level);
    else if (k == "hugepages") {
      if (auto v = node.value<bool>()) s.hugepages = *v;
      else r = Error{Errc::kInvalidArgument, path + ": hugepages must be true or false"};
    } else if (k == "hugetlbfs_dir") r = want_string(s.hugetlbfs_dir);
    else if (k == "ring_memory_budget") r = want_int(s.ring_memory_budget);
    else if (k == "default_partitions") r = want_int(s.default_partitions);
    else if (k == "default_ring_capacity") r = want_int(s.default_ring_capacity);
    else if (k == "fsync") r = want_string(s.fsync);
    else if (k == "log_writes") r = want_string(s.log_writes);
    else if (k == "in_memory") {
      if (auto v = node.value<bool>()) s.in_memory = *v;
      else r = Error{Errc::kInvalidArgument, path + ": in_memory must be true or false"};
    } else if (k == "kafka" || k == "kafka_auto_create_topics") {
      bool& out = k == "kafka" ? s.kafka : s.kafka_auto_create_topics;
      if (auto v = node.value<bool>()) out = *v;
      else r = Error{Errc::kInvalidArgument, path + ": " + k + " must be true or false"};
    } else if (k == "kafka_listen") r = want_string(s.kafka_listen);
    else if (k == "kafka_advertise") r = want_string(s.kafka_advertise);
    else if (k == "kafka_max_request_bytes") r = want_int(s.kafka_max_request_bytes);
    else if (k == "kafka_max_connections") r = want_int(s.kafka_max_connections);
    else if (k == "kafka_idle_timeout_ms") r = want_int(s.kafka_idle_timeout_ms);
    else if (k == "kafka_max_producer_ids") r = want_int(s.kafka_max_producer_ids);
    else if (k == "kafka_max_buffered_request_bytes") r = want_int(s.kafka_max_buffered_request_bytes);
    else if (k == "kafka_producer_id_expiration_ms") r = want_int(s.kafka_producer_id_expiration_ms);
    else if (k == "offsets_retention_minutes") r = want_int(s.offsets_retention_minutes);
    else if (k == "kafka_initial_rebalance_delay_ms") r = want_int(s.kafka_initial_rebalance_delay_ms);
    else if (k == "metrics_listen") r = want_string(s.metrics_listen);
    else if (k == "node_id") r = want_int(s.node_id);
    else if (k == "etcd") r = want_string(s.etcd);
    else if (k == "cluster") r = want_string(s.cluster);
    else if (k == "rack") r = want_string(s.rack);
    else if (k == "replication_listen") r = want_string(s.replication_listen);
    else if (k == "replication_secret_file") r = want_string(s.replication_secret_file);
    else if (k == "default_replication_factor") r = want_int(s.default_replication_factor);
    else if (k == "replica_lag_max_ms") r = want_int(s.replica_lag_max_ms);
    else if (k == "drain_timeout_ms") r = want_int(s.drain_timeout_ms);
    else if (k == "etcd_timeout_ms") r = want_int(s.etcd_timeout_ms);
    else if (k == "lease_ttl_s") r = want_int(s.lease_ttl_s);
    else if (k == "leader_rebalance_interval_ms") r = want_int(s.leader_rebalance_interval_ms);
    else r = Error{Errc::kInvalidArgument, path + ": unknown key '" + k + "' (see weftd --help for the keys)"};
    WEFT_TRY_VOID(r);
  }
  return ok();
}

// Whether `host` is this machine's loopback (127.0.0.0/8, ::1, localhost), which no other
// machine reaches.
bool is_loopback_host(const std::string& host) {
  if (host == "localhost") return true;
  in_addr v4{};
  if (::inet_pton(AF_INET, host.c_str(), &v4) == 1) return (ntohl(v4.s_addr) >> 24) == 127;
  in6_addr v6{};
  return ::inet_pton(AF_INET6, host.c_str(), &v6) == 1 && IN6_IS_ADDR_LOOPBACK(&v6);
}

// Whether `host` is the address of every interface (0.0.0.0, ::, and their other spellings),
// which names no host a client can be sent to.
bool is_unspecified_host(const std::string& host) {
  in_addr v4{};
  if (::inet_pton(AF_INET, host.c_str(), &v4) == 1) return v4.s_addr == htonl(INADDR_ANY);
  in6_addr v6{};
  if (::inet_pton(AF_INET6, host.c_str(), &v6) != 1) return false;
  return IN6_IS_ADDR_UNSPECIFIED(&v6) || (IN6_IS_ADDR_V4MAPPED(&v6) && v6.s6_addr[12] == 0 && v6.s6_addr[13] == 0 && v6.s6_addr[14] == 0 && v6.s6_addr[15] == 0);
}

// The cluster's replication secret from its file: refused unless the file is a regular file of
// weftd's user that no other user may read or write (a secret others can read proves nothing),
// holding 16 bytes to 4 KiB. A final line break is not part of it (`echo ... > file`). The
// checks are made on the file opened, not on its name, so a symbolic link is followed (secret
// stores such as Kubernetes' mount their files so) and the file it leads to is checked.
Result<std::string> read_replication_secret(const std::string& path) {
  const std::string key = "replication_secret_file " + path;
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY));
  if (!fd.valid()) return Error{Errc::kInvalidArgument, key + ": " + std::strerror(errno)};
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) return Error{Errc::kInvalidArgument, key + ": " + std::strerror(errno)};
  if (!S_ISREG(st.st_mode)) return Error{Errc::kInvalidArgument, key + " is not a regular file"};
  if (st.st_uid != ::geteuid()) return Error{Errc::kInvalidArgument, key + " belongs to another user than weftd's"};
  if ((st.st_mode & 077) != 0) {
    char mode[8];
    std::snprintf(mode, sizeof mode, "%04o", static_cast<unsigned>(st.st_mode & 07777));
    return Error{Errc::kInvalidArgument, key + " has mode " + mode + ", so other users may read or change it: chmod 600 it"};
  }
  std::string secret(4097, '\0');
  const ssize_t got = ::read(fd.get(), secret.data(), secret.size());
  if (got < 0) return Error{Errc::kInvalidArgument, key + ": " + std::strerror(errno)};
  if (got > 4096) return Error{Errc::kInvalidArgument, key + " is larger than 4 KiB"};
  secret.resize(static_cast<std::size_t>(got));
  while (!secret.empty() && (secret.back() == '\n' || secret.back() == '\r')) secret.pop_back();
  if (secret.size() < 16) return Error{Errc::kInvalidArgument, key + " holds " + std::to_string(secret.size()) + " bytes; a secret needs at least 16"};
  return secret;
}

Result<void> make_directories(const std::string& dir) {
  for (std::size_t i = 1; i <= dir.size(); ++i) {
    if (i == dir.size() || dir[i] == '/') {
      const std::string partial = dir.substr(0, i);
      if (mkdir(partial.c_str(), 0750) != 0 && errno != EEXIST) return os_error(Errc::kIo, "creating " + partial, errno);
    }
  }
  return ok();
}

int fail(const Error& e) {
  log(LogLevel::kError, "weftd cannot start", {{"error", e.message}});
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"weftd: the weft node daemon. Serves topics to producers and consumers on this host over shared memory.\n"
               "Every config-file key also works as a flag (--data-dir for data_dir, ...); flags win."};
  std::string config_path;
  Settings flags;
  app.add_option("--config", config_path, "TOML config file")->check(CLI::ExistingFile);
  app.add_option("--socket", flags.socket, "Unix socket where local clients connect (socket)");
  app.add_option("--socket-mode", flags.socket_mode, "file mode of the socket, octal (socket_mode)");
  app.add_option("--data-dir", flags.data_dir, "node data directory; one node per directory (data_dir)");
  app.add_option("--allow-uid", flags.allow_uids, "uids admitted besides root and weftd's own (allow_uids)");
  app.add_option("--allow-gid", flags.allow_gids, "gids admitted (allow_gids)");
  app.add_option("--max-connections", flags.max_connections, "local clients at once (max_connections)");
  app.add_option("--log-level", flags.log_level, "debug, info, warn or error (log_level)");
  app.add_flag("--hugepages,!--no-hugepages", flags.hugepages, "rings in hugepages when reserved (hugepages)");
  app.add_option("--hugetlbfs-dir", flags.hugetlbfs_dir, "refused: rings come from sealed hugetlb memfds (hugetlbfs_dir; embedded nodes only)");
  app.add_option("--ring-memory-budget", flags.ring_memory_budget, "bytes of ring memory for all topics (ring_memory_budget)");
  app.add_option("--default-partitions", flags.default_partitions, "partitions of a topic created without a count (default_partitions)");
  app.add_option("--default-ring-capacity", flags.default_ring_capacity, "ring bytes per partition, a power of two (default_ring_capacity)");
  app.add_option("--fsync", flags.fsync, "fsync policy of new topics: none, always, interval=<ms> (fsync)");
  app.add_option("--log-writes", flags.log_writes, "buffered (through the page cache, as Kafka; the default) or direct (large flushes' whole blocks with O_DIRECT) (log_writes)");
  app.add_flag("--in-memory", flags.in_memory, "keep no logs on disk: rings only, nothing survives a restart (in_memory)");
  app.add_flag("--kafka,!--no-kafka", flags.kafka, "serve Kafka clients over TCP (kafka)");
  app.add_option("--kafka-listen", flags.kafka_listen, "HOST:PORT of the Kafka listener, default 127.0.0.1:9092 (kafka_listen)");
  app.add_option("--kafka-advertise", flags.kafka_advertise, "HOST:PORT Kafka clients are told to connect to; default: the listen address (kafka_advertise)");
  app.add_option("--kafka-max-request-bytes", flags.kafka_max_request_bytes, "largest Kafka request; a larger one closes its connection (kafka_max_request_bytes)");
  app.add_option("--kafka-max-connections", flags.kafka_max_connections, "Kafka connections at once (kafka_max_connections)");
  app.add_option("--kafka-idle-timeout-ms", flags.kafka_idle_timeout_ms, "idle Kafka connections close after this (kafka_idle_timeout_ms)");
  app.add_option("--kafka-max-buffered-request-bytes", flags.kafka_max_buffered_request_bytes,
                 "memory for requests over 1 MiB, all connections together; at least the max request bytes (kafka_max_buffered_request_bytes)");
  app.add_option("--kafka-max-producer-ids", flags.kafka_max_producer_ids,
                 "idempotent producers' states kept over all partitions; past it the least recently used go (kafka_max_producer_ids)");
  app.add_option("--kafka-producer-id-expiration-ms", flags.kafka_producer_id_expiration_ms,
                 "an idempotent producer's state goes after this long unused, as Kafka's producer.id.expiration.ms (kafka_producer_id_expiration_ms)");
  app.add_option("--offsets-retention-minutes", flags.offsets_retention_minutes,
                 "a consumer group without members loses its committed offsets this long after its last commit, as Kafka's "
                 "offsets.retention.minutes; 0 keeps them (offsets_retention_minutes)");
  app.add_option("--kafka-auto-create-topics", flags.kafka_auto_create_topics, "create unknown topics on Metadata and Produce, true or false (kafka_auto_create_topics)");
  app.add_option("--kafka-initial-rebalance-delay-ms", flags.kafka_initial_rebalance_delay_ms, "a new consumer group's first rebalance waits this long for more members (kafka_initial_rebalance_delay_ms)");
  app.add_option("--metrics-listen", flags.metrics_listen, "HOST:PORT serving Prometheus metrics at /metrics, default 127.0.0.1:9644; off: none (metrics_listen)");
  app.add_option("--node-id", flags.node_id, "this node's id in a cluster, unique, >= 0; with --etcd (node_id)");
  app.add_option("--etcd", flags.etcd, "etcd endpoint holding the cluster's metadata, e.g. http://127.0.0.1:2379; with --node-id (etcd)");
  app.add_option("--cluster", flags.cluster, "cluster name: the key prefix in etcd, default weft (cluster)");
  app.add_option("--rack", flags.rack, "this node's rack: a partition's replicas spread over racks first (rack)");
  app.add_option("--replication-listen", flags.replication_listen, "HOST:PORT other nodes replicate from; port 0: any, published in etcd (replication_listen)");
  app.add_option("--replication-secret-file", flags.replication_secret_file,
                 "a file (mode 0600 or stricter) holding the secret every node of the cluster shares: a link to the replication port "
                 "carries nothing until its peer proves it knows it (replication_secret_file)");
  app.add_option("--default-replication-factor", flags.default_replication_factor, "replicas of a topic created without a factor, auto-created ones too (default_replication_factor)");
  app.add_option("--replica-lag-max-ms", flags.replica_lag_max_ms, "a follower this far behind leaves the in-sync set (replica_lag_max_ms)");
  app.add_option("--drain-timeout-ms", flags.drain_timeout_ms, "on SIGTERM, how long to wait for leadership to move off this node (drain_timeout_ms)");
  app.add_option("--etcd-timeout-ms", flags.etcd_timeout_ms, "bound on each etcd call (etcd_timeout_ms)");
  app.add_option("--lease-ttl-s", flags.lease_ttl_s, "seconds after which a silent node is declared gone and its partitions fail over (lease_ttl_s)");
  app.add_option("--leader-rebalance-interval-ms", flags.leader_rebalance_interval_ms,
                 "how often leadership goes back to each partition's preferred replica once it is in sync again; 0: never (leader_rebalance_interval_ms)");
  CLI11_PARSE(app, argc, argv);

  // Defaults, then the file, then every flag given on the command line.
  Settings s;
  if (!config_path.empty())
    if (Result<void> loaded = load_config(config_path, s); !loaded.ok()) return fail(loaded.error());
  auto given = [&](const char* name) { return app.count(name) > 0; };
  if (given("--socket")) s.socket = flags.socket;
  if (given("--socket-mode")) s.socket_mode = flags.socket_mode;
  if (given("--data-dir")) s.data_dir = flags.data_dir;
  if (given("--allow-uid")) s.allow_uids = flags.allow_uids;
  if (given("--allow-gid")) s.allow_gids = flags.allow_gids;
  if (given("--max-connections")) s.max_connections = flags.max_connections;
  if (given("--log-level")) s.log_level = flags.log_level;
  if (given("--hugepages") || given("--no-hugepages")) s.hugepages = flags.hugepages;
  if (given("--hugetlbfs-dir")) s.hugetlbfs_dir = flags.hugetlbfs_dir;
  if (given("--ring-memory-budget")) s.ring_memory_budget = flags.ring_memory_budget;
  if (given("--default-partitions")) s.default_partitions = flags.default_partitions;
  if (given("--default-ring-capacity")) s.default_ring_capacity = flags.default_ring_capacity;
  if (given("--fsync")) s.fsync = flags.fsync;
  if (given("--in-memory")) s.in_memory = flags.in_memory;
  if (given("--log-writes")) s.log_writes = flags.log_writes;
  if (given("--kafka") || given("--no-kafka")) s.kafka = flags.kafka;
  if (given("--kafka-listen")) s.kafka_listen = flags.kafka_listen;
  if (given("--kafka-advertise")) s.kafka_advertise = flags.kafka_advertise;
  if (given("--kafka-max-request-bytes")) s.kafka_max_request_bytes = flags.kafka_max_request_bytes;
  if (given("--kafka-max-connections")) s.kafka_max_connections = flags.kafka_max_connections;
  if (given("--kafka-idle-timeout-ms")) s.kafka_idle_timeout_ms = flags.kafka_idle_timeout_ms;
  if (given("--kafka-max-producer-ids")) s.kafka_max_producer_ids = flags.kafka_max_producer_ids;
  if (given("--kafka-max-buffered-request-bytes")) s.kafka_max_buffered_request_bytes = flags.kafka_max_buffered_request_bytes;
  if (given("--kafka-producer-id-expiration-ms")) s.kafka_producer_id_expiration_ms = flags.kafka_producer_id_expiration_ms;
  if (given("--offsets-retention-minutes")) s.offsets_retention_minutes = flags.offsets_retention_minutes;
  if (given("--kafka-auto-create-topics")) s.kafka_auto_create_topics = flags.kafka_auto_create_topics;
  if (given("--kafka-initial-rebalance-delay-ms")) s.kafka_initial_rebalance_delay_ms = flags.kafka_initial_rebalance_delay_ms;
  if (given("--metrics-listen")) s.metrics_listen = flags.metrics_listen;
  if (given("--node-id")) s.node_id = flags.node_id;
  if (given("--etcd")) s.etcd = flags.etcd;
  if (given("--cluster")) s.cluster = flags.cluster;
  if (given("--rack")) s.rack = flags.rack;
  if (given("--replication-listen")) s.replication_listen = flags.replication_listen;
  if (given("--replication-secret-file")) s.replication_secret_file = flags.replication_secret_file;
  if (given("--default-replication-factor")) s.default_replication_factor = flags.default_replication_factor;
  if (given("--replica-lag-max-ms")) s.replica_lag_max_ms = flags.replica_lag_max_ms;
  if (given("--drain-timeout-ms")) s.drain_timeout_ms = flags.drain_timeout_ms;
  if (given("--etcd-timeout-ms")) s.etcd_timeout_ms = flags.etcd_timeout_ms;
  if (given("--lease-ttl-s")) s.lease_ttl_s = flags.lease_ttl_s;
  if (given("--leader-rebalance-interval-ms")) s.leader_rebalance_interval_ms = flags.leader_rebalance_interval_ms;
  if (s.data_dir.empty()) s.data_dir = default_data_dir();

  Result<LogLevel> level = parse_log_level(s.log_level);
  if (!level.ok()) return fail(level.error());
  set_log_level(*level);

  if (s.log_writes != "direct" && s.log_writes != "buffered")
    return fail(Error{Errc::kInvalidArgument, "log_writes must be direct or buffered, not '" + s.log_writes + "'"});
  const bool direct_writes = s.log_writes == "direct";

  NodeOptions options;
  const std::string data_dir = s.data_dir;
  if (!s.in_memory) {
    // Each partition's log: <data_dir>/<topic>-<partition>/, segments in Kafka's layout. A topic
    // created again after a restart carries on from its log's end.
    storage::SegmentOptions segments;
    segments.direct_io = direct_writes;
    storage::use_segment_logs(options, data_dir, segments);
    options.metadata_dir = data_dir + "/topics";    // topics come back after a restart
    options.offsets_dir = data_dir + "/offsets";    // and consumer groups' committed offsets
  }
  options.prefer_hugepages = s.hugepages;
  // weftd hands every ring to local clients, and a hugetlbfs file takes no seals: any client
  // could shrink it under the node's mapping, whose next touch would kill the node with SIGBUS.
  if (!s.hugetlbfs_dir.empty())
    return fail(Error{Errc::kInvalidArgument, "hugetlbfs_dir: weftd cannot serve rings from hugetlbfs files, which a local client could shrink "
                                              "under the node; leave it empty (hugepages come from sealed hugetlb memfds, hugepages = true)"});
  if (s.ring_memory_budget <= 0) return fail(Error{Errc::kInvalidArgument, "ring_memory_budget must be positive"});
  options.ring_memory_budget_bytes = static_cast<std::size_t>(s.ring_memory_budget);
  for (const auto& [key, value] : {std::pair<const char*, std::string>{"partitions", std::to_string(s.default_partitions)},
                                   {"ring.capacity.bytes", std::to_string(s.default_ring_capacity)},
                                   {"fsync", s.fsync}})
    if (Result<void> set = set_topic_config(options.default_topic, key, value); !set.ok()) return fail(set.error());
  if (Result<void> valid = validate_topic_config(options.default_topic); !valid.ok()) return fail(valid.error());

  const bool clustered = !s.etcd.empty() || s.node_id >= 0;
  std::string replication_secret;
  if (!clustered && !s.replication_secret_file.empty())
    return fail(Error{Errc::kInvalidArgument, "replication_secret_file is for a cluster node (with --node-id and --etcd); this node runs alone"});
  if (clustered) {
    if (s.etcd.empty() || s.node_id < 0 || s.node_id > INT32_MAX)
      return fail(Error{Errc::kInvalidArgument, "a cluster node needs both --node-id (0.." + std::to_string(INT32_MAX) + ") and --etcd URL; a single node needs neither"});
    if (s.in_memory) return fail(Error{Errc::kInvalidArgument, "a cluster node keeps logs (followers catch up from them): drop in_memory"});
    if (!s.kafka) return fail(Error{Errc::kInvalidArgument, "a cluster node serves Kafka clients (they follow leaders through it): drop --no-kafka"});
    if (s.cluster.empty() || s.cluster.find('/') != std::string::npos) return fail(Error{Errc::kInvalidArgument, "cluster must be a name without '/'"});
    if (s.default_replication_factor < 1 || s.replica_lag_max_ms < 1 || s.drain_timeout_ms < 0 || s.etcd_timeout_ms < 1 || s.lease_ttl_s < 1 || s.lease_ttl_s > 3600)
      return fail(Error{Errc::kInvalidArgument, "cluster limits: default_replication_factor >= 1, replica_lag_max_ms >= 1, drain_timeout_ms >= 0, etcd_timeout_ms >= 1, lease_ttl_s 1..3600"});
    Result<std::pair<std::string, std::uint16_t>> replication_at = parse_host_port("replication_listen", s.replication_listen);
    if (!replication_at.ok()) return fail(replication_at.error());
    if (s.replication_secret_file.empty()) {
      if (!is_loopback_host(replication_at->first))
        log(LogLevel::kWarn, "the replication port takes any peer that reaches it (who can follow partitions and report progress); give the "
                             "cluster a secret with replication_secret_file", {{"replication_listen", s.replication_listen}});
    } else {
      Result<std::string> secret = read_replication_secret(s.replication_secret_file);
      if (!secret.ok()) return fail(secret.error());
      replication_secret = std::move(*secret);
    }
    options.offsets_for_any_topic = true;  // a group's coordinator may hold no replica of its topics
  }

  LocalServerOptions server_options;
  server_options.socket_path = s.socket;
  char* mode_end = nullptr;
  const unsigned long mode = std::strtoul(s.socket_mode.c_str(), &mode_end, 8);
  if (s.socket_mode.empty() || *mode_end != '\0' || mode > 0777)
    return fail(Error{Errc::kInvalidArgument, "socket_mode must be an octal file mode such as 0660, not '" + s.socket_mode + "'"});
  server_options.socket_mode = static_cast<mode_t>(mode);
  // Checked, not cast: 4294967296 would wrap to 0 and admit root's group.
  for (const std::int64_t uid : s.allow_uids) {
    if (uid < 0 || uid >= std::int64_t{UINT32_MAX}) return fail(Error{Errc::kInvalidArgument, "allow_uids: " + std::to_string(uid) + " is not a uid"});
    server_options.allow_uids.push_back(static_cast<uid_t>(uid));
  }
  for (const std::int64_t gid : s.allow_gids) {
    if (gid < 0 || gid >= std::int64_t{UINT32_MAX}) return fail(Error{Errc::kInvalidArgument, "allow_gids: " + std::to_string(gid) + " is not a gid"});
    server_options.allow_gids.push_back(static_cast<gid_t>(gid));
  }
  if (s.max_connections < 1) return fail(Error{Errc::kInvalidArgument, "max_connections must be at least 1"});
  server_options.max_connections = static_cast<std::size_t>(s.max_connections);

  kafka::KafkaListenerOptions kafka_options;
  if (s.kafka) {
    Result<std::pair<std::string, std::uint16_t>> listen = parse_host_port("kafka_listen", s.kafka_listen);
    if (!listen.ok()) return fail(listen.error());
    kafka_options.listen_host = listen->first;
    kafka_options.listen_port = listen->second;
    if (!s.kafka_advertise.empty()) {
      Result<std::pair<std::string, std::uint16_t>> advertise = parse_host_port("kafka_advertise", s.kafka_advertise);
      if (!advertise.ok()) return fail(advertise.error());
      if (is_unspecified_host(advertise->first))
        return fail(Error{Errc::kInvalidArgument, "kafka_advertise " + s.kafka_advertise + " names no host clients can reach: give this node's address"});
      kafka_options.advertised_host = advertise->first;
      kafka_options.advertised_port = advertise->second;
    } else if (is_unspecified_host(listen->first)) {
      // Clients reach a node where Metadata says it is: advertising localhost to other hosts sends
      // their produces and fetches to themselves (Kafka refuses this setting too).
      return fail(Error{Errc::kInvalidArgument, "kafka_listen " + s.kafka_listen +
                                                    " listens on every address: set kafka_advertise HOST:PORT (--kafka-advertise) to the address "
                                                    "clients on other hosts reach this node at"});
    }
    if (s.kafka_max_request_bytes < 1024 || s.kafka_max_connections < 1 || s.kafka_idle_timeout_ms < 1 || s.kafka_initial_rebalance_delay_ms < 0 ||
        s.kafka_max_producer_ids < 1 || s.kafka_producer_id_expiration_ms < 1 || s.kafka_max_buffered_request_bytes < s.kafka_max_request_bytes)
      return fail(Error{Errc::kInvalidArgument, "kafka limits: max request bytes >= 1024, max connections >= 1, idle timeout >= 1 ms, rebalance delay >= 0, "
                                                 "max producer ids >= 1, producer id expiration >= 1 ms, max buffered request bytes >= max request bytes"});
    kafka_options.max_request_bytes = static_cast<std::size_t>(s.kafka_max_request_bytes);
    kafka_options.max_connections = static_cast<std::size_t>(s.kafka_max_connections);
    kafka_options.idle_timeout_ms = s.kafka_idle_timeout_ms;
    kafka_options.max_producer_ids = static_cast<std::size_t>(s.kafka_max_producer_ids);
    kafka_options.max_buffered_request_bytes = static_cast<std::size_t>(s.kafka_max_buffered_request_bytes);
    kafka_options.producer_id_expiration_ms = s.kafka_producer_id_expiration_ms;
    // Minutes to milliseconds, capped so the product cannot overflow (a century is for good anyway).
    kafka_options.offsets_retention_ms = std::min<std::int64_t>(s.offsets_retention_minutes, 60LL * 24 * 365 * 100) * 60'000;
    kafka_options.auto_create_topics = s.kafka_auto_create_topics;
    kafka_options.default_partitions = static_cast<std::uint32_t>(std::max<std::int64_t>(s.default_partitions, 1));
    kafka_options.groups.initial_rebalance_delay_ms = static_cast<std::int32_t>(std::min<std::int64_t>(s.kafka_initial_rebalance_delay_ms, INT32_MAX));
    kafka_options.default_replication_factor = static_cast<std::uint32_t>(std::min<std::int64_t>(s.default_replication_factor, 64));
    if (clustered && kafka_options.listen_port == 0)
      return fail(Error{Errc::kInvalidArgument, "a cluster node's kafka_listen needs a port: the other nodes tell clients where it is"});
  }

  std::pair<std::string, std::uint16_t> metrics_listen;  // an empty host: no metrics
  if (!s.metrics_listen.empty() && s.metrics_listen != "off") {
    Result<std::pair<std::string, std::uint16_t>> parsed = parse_host_port("metrics_listen", s.metrics_listen);
    if (!parsed.ok()) return fail(parsed.error());
    metrics_listen = *parsed;
  }

  // Every partition's ring is an open memfd and every client a socket: take all the descriptors
  // the hard limit allows (a soft limit of 1024 would cap the node near a thousand partitions).
  if (rlimit files{}; getrlimit(RLIMIT_NOFILE, &files) == 0 && files.rlim_cur < files.rlim_max) {
    files.rlim_cur = files.rlim_max;
    (void)setrlimit(RLIMIT_NOFILE, &files);
  }

  // One node per data directory: the lock lives as long as this process.
  if (Result<void> made = make_directories(s.data_dir); !made.ok()) return fail(made.error());
  const std::string lock_path = s.data_dir + "/weftd.lock";
  const int lock_fd = open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0640);
  if (lock_fd < 0) return fail(os_error(Errc::kIo, "opening " + lock_path, errno));
  if (flock(lock_fd, LOCK_EX | LOCK_NB) != 0)
    return fail(Error{Errc::kAlreadyExists, "another weftd uses the data directory " + s.data_dir + "; stop it or pass another --data-dir"});
  // The data directory's format: a directory written by another version is refused whole
  // rather than half-read. One without the file (an empty one, or from before it) is this one.
  if (!s.in_memory) {
    const std::string version_path = s.data_dir + "/weft-data-version";
    const std::string expected = "weft data directory, layout 1\n";
    Result<std::string> found = read_small_file(version_path, 4096);
    if (!found.ok() && found.error().code != Errc::kNotFound) return fail(std::move(found).error());
    if (found.ok() && *found != expected)
      return fail(Error{Errc::kFailedPrecondition, "the data directory " + s.data_dir + " has layout '" +
                                                       found->substr(0, found->find('\n')) + "' (in " + version_path +
                                                       "); this weftd reads '" + expected.substr(0, expected.size() - 1) +
                                                       "'. Use the weftd that wrote it, or another --data-dir"});
    if (!found.ok()) {
      // A crash leaves no file or the whole one.
      if (Result<void> written = replace_file(version_path, expected); !written.ok()) return fail(std::move(written).error());
    }
  }
  const std::string pid_text = std::to_string(getpid()) + "\n";
  if (ftruncate(lock_fd, 0) == 0 && write(lock_fd, pid_text.data(), pid_text.size()) < 0) {
    // The pid in the lock file is a courtesy for operators; the lock is what counts.
  }

  // Signals are taken synchronously by this thread alone; every thread started after this
  // inherits the mask.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  signal(SIGPIPE, SIG_IGN);

  const std::int64_t started = monotonic_ns();
  Result<std::unique_ptr<Node>> node = Node::start(options);
  if (!node.ok()) return fail(node.error());
  if (!clustered) {
    // A cluster's topic keeps its rings fenced until a replicator gives this node a role, which
    // no replicator will without a cluster: say so once, not only in each refused produce.
    for (const std::string& name : (*node)->list_topics()) {
      if (Result<TopicInfo> info = (*node)->describe_topic(name); info.ok() && info->config.replicated)
        log(LogLevel::kWarn, "a cluster's topic on a node started without a cluster: it takes no writes here; start weftd with its --node-id and --etcd",
            {{"topic", name}});
    }
  }
  // Cluster mode: the replication transport, the metadata store and the cluster node, before the
  // Kafka listener that routes clients by them and the local server whose topic calls go to it
  // (declared after it, so on every way out the server goes first).
  std::unique_ptr<Transport> transport;
  std::unique_ptr<ClusterNode> cluster;
  std::unique_ptr<LocalServer> local_server;
  if (clustered) {
    transport = make_tcp_transport();
    Result<std::unique_ptr<MetadataStore>> store = storage::open_etcd_metadata_store(s.etcd, storage::EtcdOptions{static_cast<int>(std::min<std::int64_t>(s.etcd_timeout_ms, INT32_MAX))});
    if (!store.ok()) return fail(store.error());
    ClusterNodeOptions cluster_options;
    cluster_options.cluster.cluster = s.cluster;
    cluster_options.cluster.self.id = static_cast<NodeId>(s.node_id);
    cluster_options.cluster.self.rack = s.rack;
    cluster_options.cluster.lease_ttl_s = s.lease_ttl_s;
    cluster_options.cluster.leader_rebalance_interval_ms = std::max<std::int64_t>(s.leader_rebalance_interval_ms, 0);
    const std::string advertised_host = kafka_options.advertised_host.empty() ? kafka_options.listen_host : kafka_options.advertised_host;
    const std::uint16_t advertised_port = kafka_options.advertised_port != 0 ? kafka_options.advertised_port : kafka_options.listen_port;
    const bool v6 = advertised_host.find(':') != std::string::npos;
    cluster_options.cluster.self.kafka_address = (v6 ? "[" + advertised_host + "]" : advertised_host) + ":" + std::to_string(advertised_port);
    // Where `weft cluster status` reads this node's replication lag (a fixed port only); on every
    // address, at the host clients reach the node at (localhost would send another host's look to
    // its own node).
    if (!metrics_listen.first.empty() && metrics_listen.second != 0) {
      const bool everywhere = is_unspecified_host(metrics_listen.first);
      const std::string& host = everywhere ? advertised_host : metrics_listen.first;
      cluster_options.cluster.self.metrics_address =
          (host.find(':') != std::string::npos ? "[" + host + "]" : host) + ":" + std::to_string(metrics_listen.second);
    }
    cluster_options.replication_listen = s.replication_listen;
    cluster_options.replication.replica_lag_max_ms = s.replica_lag_max_ms;
    cluster_options.replication.secret = replication_secret;
    Result<std::unique_ptr<ClusterNode>> joined =
        ClusterNode::start(**node, *transport, std::shared_ptr<MetadataStore>(std::move(*store)), std::move(cluster_options));
    if (!joined.ok()) return fail(joined.error());
    cluster = std::move(*joined);
    kafka_options.cluster = cluster.get();
    // Local clients' topics are the cluster's too: the controller assigns them, and the call
    // returns once this node holds its replicas (if it is one), bounded by 5 s.
    ClusterNode* members = cluster.get();
    Node* here = node->get();
    const std::uint32_t default_factor = static_cast<std::uint32_t>(std::min<std::int64_t>(s.default_replication_factor, 64));
    server_options.create_topic = [members, here, default_factor](const std::string& name, const TopicConfig& config,
                                                                  std::uint32_t factor) -> Result<TopicInfo> {
      WEFT_TRY_VOID(members->create_topic(name, config.partitions, factor == 0 ? default_factor : factor, config));
      const std::int64_t deadline = monotonic_ns() + 5'000'000'000;
      while (monotonic_ns() < deadline) {
        if (Result<TopicInfo> info = here->describe_topic(name); info.ok()) return info;
        bool replica_here = false;
        bool assigned = true;
        for (std::uint32_t p = 0; p < config.partitions; ++p) {
          const std::optional<PartitionView> view = members->partition(name, p);
          assigned = assigned && view.has_value();
          replica_here = replica_here || (view && std::find(view->replicas.begin(), view->replicas.end(), members->id()) != view->replicas.end());
        }
        if (assigned && !replica_here) break;  // its replicas are on other nodes
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
      }
      TopicInfo info;  // created in the cluster, with no replica here (yet)
      info.name = name;
      info.config = config;
      return info;
    };
    server_options.delete_topic = [members](const std::string& name) { return members->delete_topic(name); };
  }
  {
    Result<std::unique_ptr<LocalServer>> started_server = LocalServer::start(**node, server_options);
    if (!started_server.ok()) return fail(started_server.error());
    local_server = std::move(*started_server);
  }
  std::unique_ptr<kafka::KafkaListener> kafka_listener;
  if (s.kafka) {
    Result<std::unique_ptr<kafka::KafkaListener>> started_listener = kafka::KafkaListener::start(**node, kafka_options);
    if (!started_listener.ok()) return fail(started_listener.error());
    kafka_listener = std::move(*started_listener);
  }
  std::unique_ptr<weftd::MetricsServer> metrics;
  if (!metrics_listen.first.empty()) {
    Result<std::unique_ptr<weftd::MetricsServer>> started_metrics = weftd::start_node_metrics(
        metrics_listen.first, metrics_listen.second, **node, local_server.get(), kafka_listener.get(), cluster.get(), started);
    if (!started_metrics.ok()) return fail(started_metrics.error());
    metrics = std::move(*started_metrics);
  }
  char elapsed[32];
  std::snprintf(elapsed, sizeof(elapsed), "%.1f", static_cast<double>(monotonic_ns() - started) / 1e6);
  log(LogLevel::kInfo, "weftd ready",
      {{"pid", std::to_string(getpid())}, {"socket", s.socket}, {"data_dir", s.data_dir},
       {"hugepages", s.hugepages ? "preferred" : "off"}, {"free_hugepages", std::to_string(free_hugepages())},
       {"default_partitions", std::to_string(s.default_partitions)}, {"logs", s.in_memory ? "none (in memory)" : "on disk, " + s.log_writes + " writes"},
       {"cluster", clustered ? s.cluster + " node " + std::to_string(s.node_id) + " via " + s.etcd : "none (single node)"},
       {"replication", cluster ? cluster->replication_address() : "-"}, {"startup_ms", elapsed}});

  int received = 0;
  for (;;) {
    if (sigwait(&signals, &received) != 0) continue;
    if (received == SIGHUP) {
      log(LogLevel::kInfo, "SIGHUP ignored: settings are read at start; restart weftd to change them");
      continue;
    }
    break;
  }
  log(LogLevel::kInfo, "weftd stopping", {{"signal", received == SIGTERM ? "SIGTERM" : "SIGINT"}});
  // Drain: no new clients or requests, then a last maintenance pass so counters and limits are
  // final. Clients keep their mapped rings; with no log store yet there is nothing to flush.
  if (cluster) {
    // A clean shutdown hands its leaderships to other in-sync replicas first, so clients move
    // over without waiting for this node's lease to run out.
    const std::int64_t drain_started = monotonic_ns();
    Result<void> drained = cluster->drain(static_cast<int>(std::min<std::int64_t>(s.drain_timeout_ms, INT32_MAX)));
    char drain_ms[32];
    std::snprintf(drain_ms, sizeof(drain_ms), "%.1f", static_cast<double>(monotonic_ns() - drain_started) / 1e6);
    if (drained.ok()) log(LogLevel::kInfo, "cluster: leadership moved off this node", {{"ms", drain_ms}});
    else log(LogLevel::kWarn, "cluster: leaving with partitions still led here", {{"error", drained.error().message}, {"ms", drain_ms}});
  }
  const LocalServerStats stats = local_server->stats();
  if (metrics) metrics->stop();
  if (kafka_listener) kafka_listener->stop();
  local_server->stop();  // its topic calls go through the cluster node
  cluster.reset();  // after the listener and the server that route by it, before the node whose logs it replicates
  (*node)->stop();
  log(LogLevel::kInfo, "weftd stopped",
      {{"clients_accepted", std::to_string(stats.accepted)}, {"clients_refused", std::to_string(stats.refused)},
       {"bad_requests", std::to_string(stats.bad_requests)}});
  close(lock_fd);
  return 0;
}
