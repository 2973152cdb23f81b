// The weft CLI's commands, each a function that returns the process exit code.
#pragma once

#include <algorithm>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace weft::cli {

struct PerfOptions {
  std::string socket;       // empty: an embedded node in this process
  bool use_socket = false;  // --socket given: run against that weftd
  std::uint32_t producers = 1;
  std::uint32_t consumers = 1;
  std::uint32_t partitions = 1;
  std::uint32_t record_size = 64;  // value bytes
  std::uint64_t records = 10'000'000;  // per producer, throughput run
  double duration_s = 0;               // > 0: run the throughput phase this long instead
  std::uint64_t rate = 0;              // records/s per producer in the throughput run; 0: flat out
  std::uint64_t latency_records = 200'000;  // per producer, paced run
  std::uint64_t latency_rate = 100'000;     // records/s per producer in the paced run
  std::uint32_t batch_records = 1;
  std::string acks = "1";
  std::string wait = "spin";
  bool threads = false;  // producers and consumers as threads of this process, not processes
  bool exclusive = true;  // one producer per partition claims with plain stores
  bool json = false;
  bool hugepages = true;
  std::uint64_t ring_bytes = std::uint64_t{64} << 20;
  std::string compression = "none";  // over --bootstrap: librdkafka's compression.type for the produce runs
  bool ring_bytes_given = false;  // --ring-bytes given: over --bootstrap, the perf topics' ring (else the node's default)
  bool baselines = true;
  bool flow_control = true;  // consumers hold producers back, so nothing is lost to laps
  // With a data directory the embedded node keeps logs there (a folder per run, removed after),
  // and the run adds the disk's baselines, an acknowledgement run and a catch-up read.
  std::string data_dir;
  std::string fsync = "none";         // the perf topic's fsync policy
  bool io_uring = true;               // the log's direct writes through io_uring (else pwrite)
  std::string log_writes = "direct";  // or "buffered": through the page cache (weftd's log_writes)
  std::uint64_t bytes = 0;            // > 0: log bytes to write in the throughput run (sets --records)
  std::uint64_t ack_records = 2'000;  // per producer in the acknowledgement run (send, then wait)
};

// "4G", "512M", "64k" or a plain number of bytes; 0 when the text is not one.
std::uint64_t parse_size(const std::string& text);

// The perf topics' max.batch.bytes for a ring of `ring_bytes`: the largest a ring takes (a
// quarter of itself), up to the 1 MiB that Kafka clients' batches reach.
inline std::uint64_t perf_max_batch_bytes(std::uint64_t ring_bytes) { return std::min<std::uint64_t>(ring_bytes / 4, std::uint64_t{1} << 20); }

int run_perf(const PerfOptions& options);

// The commands over the Kafka protocol (--bootstrap), through librdkafka.
struct RemoteOptions {
  std::string bootstrap;  // HOST:PORT[,HOST:PORT...]
  std::vector<std::pair<std::string, std::string>> client_settings;  // -X KEY=VALUE, for every librdkafka client
};
int run_remote_produce(const RemoteOptions& o, const std::string& topic, const std::string& key_sep, const std::string& acks,
                       const std::string& file, std::int64_t partition);
struct RemoteConsume {
  std::string topic;
  std::string from = "latest";  // earliest, latest, OFFSET or @UNIX_MS
  std::int64_t count = -1;
  std::int64_t timeout_ms = -1;
  std::string group;
  std::string format = "value";
  std::int64_t partition = -1;
};
int run_remote_consume(const RemoteOptions& o, const RemoteConsume& c);
int run_remote_perf(const RemoteOptions& o, const PerfOptions& p);

// The commands on a cluster's metadata in etcd (weft/fabric/cluster.h).
struct ClusterCliOptions {
  std::string etcd;              // http://HOST:PORT; default $WEFT_ETCD
  std::string cluster = "weft";  // the cluster's name (its key prefix)
  std::int64_t timeout_ms = 2'000;
};
int run_cluster_status(const ClusterCliOptions& o);
int run_cluster_topic_create(const ClusterCliOptions& o, const std::string& name, std::uint32_t partitions, std::uint32_t replication_factor,
                             const std::vector<std::pair<std::string, std::string>>& settings);
int run_cluster_topic_delete(const ClusterCliOptions& o, const std::string& name);
int run_cluster_topic_list(const ClusterCliOptions& o);
int run_partition_reassign(const ClusterCliOptions& o, const std::string& topic, std::uint32_t partition, const std::vector<std::int32_t>& replicas);

}  // namespace weft::cli
