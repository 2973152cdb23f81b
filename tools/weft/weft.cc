// weft: the command-line tool. Topics, producing and consuming lines, node status, and perf.
#include <poll.h>
#include <signal.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <atomic>
#include <algorithm>
#include <charconv>
#include <deque>
#include <filesystem>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <map>
#include <string>
#include <vector>

#include "commands.h"
#include "format.h"
#include "status_metrics.h"
#include "weft/client.h"
#include "weft/consumer.h"
#include "weft/fabric/compression.h"
#include "weft/fabric/local_protocol.h"
#include "weft/kafka/remote_producer.h"
#include "weft/producer.h"
#include "weft/storage/segment.h"

namespace {

using namespace weft;

std::atomic<int> g_interrupted{0};  // the signal that asked to stop (0: none)

int report(const Error& e, std::string_view doing) {
  std::fprintf(stderr, "weft: %.*s: %s\n", static_cast<int>(doing.size()), doing.data(), e.message.c_str());
  switch (e.code) {
    case Errc::kInvalidArgument: return 2;
    case Errc::kNotFound: return 3;
    case Errc::kUnavailable: return 4;
    case Errc::kPermissionDenied: return 5;
    default: return 1;
  }
}

std::string human_bytes(std::uint64_t b) {
  char out[32];
  if (b >= (std::uint64_t{1} << 30)) std::snprintf(out, sizeof(out), "%.1f GiB", static_cast<double>(b) / (1 << 30));
  else if (b >= (1u << 20)) std::snprintf(out, sizeof(out), "%.1f MiB", static_cast<double>(b) / (1 << 20));
  else if (b >= (1u << 10)) std::snprintf(out, sizeof(out), "%.1f KiB", static_cast<double>(b) / (1 << 10));
  else std::snprintf(out, sizeof(out), "%llu B", static_cast<unsigned long long>(b));
  return out;
}

std::string_view as_text(const OptionalBytes& b) {
  if (!b) return {};
  return {reinterpret_cast<const char*>(b->data()), b->size()};
}

Result<std::shared_ptr<Client>> connect_to(const std::string& socket) { return Client::connect(socket); }

void print_topic(const TopicInfo& info) {
  std::printf("topic %s  partitions %u  ring %s  max batch %s  retention.ms %lld  retention.bytes %lld  fsync %s\n",
              info.name.c_str(), info.config.partitions, human_bytes(info.config.ring_capacity_bytes).c_str(),
              human_bytes(info.config.max_batch_bytes).c_str(), static_cast<long long>(info.config.retention_ms),
              static_cast<long long>(info.config.retention_bytes), fsync_policy_name(info.config).c_str());
  std::printf("%9s %12s %12s %12s %10s %9s %9s %7s %13s %6s  %s\n", "partition", "start", "end", "records", "bytes",
              "producers", "consumers", "lapped", "backpressure", "sealed", "memory");
  for (const PartitionStats& p : info.partitions)
    std::printf("%9u %12lld %12lld %12llu %10s %9u %9u %7u %13llu %6llu  %s\n", p.partition,
                static_cast<long long>(p.start_offset.value), static_cast<long long>(p.end_offset.value),
                static_cast<unsigned long long>(p.records), human_bytes(p.bytes).c_str(), p.producers, p.consumers,
                p.lapped_consumers, static_cast<unsigned long long>(p.back_pressure_events),
                static_cast<unsigned long long>(p.sealed_claims), p.memory.c_str());
  // The ring's window above; the log's below, where the node keeps one.
  if (info.partitions.empty() || info.partitions.front().log_end_offset.value < 0) return;
  std::printf("\n%9s %12s %12s %10s  %s\n", "partition", "log start", "log end", "log bytes", "log");
  for (const PartitionStats& p : info.partitions)
    std::printf("%9u %12lld %12lld %10s  %s\n", p.partition, static_cast<long long>(p.log_start_offset.value),
                static_cast<long long>(p.log_end_offset.value), human_bytes(p.log_bytes).c_str(),
                p.log_error.empty() ? "ok" : p.log_error.c_str());
}

// weft dump: reads segment files without changing them (storage::scan_log checks every length,
// CRC and offset). A folder's segments are checked in offset order; only the last may end torn.
int run_dump(const std::string& path, bool records) {
  namespace fs = std::filesystem;
  auto dump_file = [&](const std::string& file, bool print_batches) -> Result<storage::LogScan> {
    if (print_batches) std::printf("%12s %14s %14s %8s %10s %15s  %s\n", "position", "base offset", "last offset", "records", "bytes", "max timestamp", "crc");
    return storage::scan_log(file, [&](std::uint64_t position, const BatchView& b) {
      if (!print_batches) return;
      std::printf("%12llu %14lld %14lld %8d %10zu %15lld  ok%s\n", static_cast<unsigned long long>(position),
                  static_cast<long long>(b.base_offset().value), static_cast<long long>(b.last_offset().value), b.record_count(),
                  b.size_bytes(), static_cast<long long>(b.max_timestamp()),
                  (b.attributes() & batch_attr::kCompressionMask) != 0 ? " (compressed)" : "");
      if (!records) return;
      auto print = [](const RecordView& r) {
        std::printf("%12s offset %lld  timestamp %lld  key %s  value %s\n", "", static_cast<long long>(r.offset.value),
                    static_cast<long long>(r.timestamp_ms), r.key ? (std::to_string(r.key->size()) + " B").c_str() : "null",
                    r.value ? (std::to_string(r.value->size()) + " B").c_str() : "null");
      };
      if (b.compression() == Compression::kNone) {
        for (const RecordView& r : b) print(r);
        return;
      }
      // A batch a Kafka client compressed: its records once decompressed.
      std::vector<std::byte> inflated;
      if (Result<void> d = decompress_records(b.compression(), b.bytes().subspan(kBatchHeaderBytes), inflated, kDefaultMaxDecompressedBytes); !d.ok()) {
        std::printf("%12s records not readable: %s\n", "", d.error().message.c_str());
        return;
      }
      RecordReader reader(b, inflated);
      RecordView r;
      while (reader.next(r)) print(r);
      if (reader.failed()) std::printf("%12s records not readable: %s\n", "", reader.error().message.c_str());
    });
  };
  auto summary = [](const std::string& file, const storage::LogScan& scan) {
    std::printf("%s: %llu batches", file.c_str(), static_cast<unsigned long long>(scan.batches));
    if (scan.batches > 0) std::printf(", offsets %lld..%lld", static_cast<long long>(scan.first.value), static_cast<long long>(scan.next.value - 1));
    std::printf(", %s", human_bytes(scan.valid_bytes).c_str());
    if (scan.problem.empty()) std::printf(", every CRC ok\n");
    else std::printf("; then at byte %llu: %s\n", static_cast<unsigned long long>(scan.valid_bytes), scan.problem.c_str());
  };
  if (!fs::is_directory(path)) {
    Result<storage::LogScan> scan = dump_file(path, true);
    if (!scan.ok()) return report(scan.error(), "reading " + path);
    summary(path, *scan);
    return scan->problem.empty() ? 0 : 1;
  }
  std::vector<std::string> logs;
  for (const auto& entry : fs::directory_iterator(path))
    if (entry.path().extension() == ".log") logs.push_back(entry.path().string());
  std::sort(logs.begin(), logs.end());  // 20-digit names sort by base offset
  int status = 0;
  Offset expected{-1};
  for (std::size_t i = 0; i < logs.size(); ++i) {
    Result<storage::LogScan> scan = dump_file(logs[i], false);
    if (!scan.ok()) return report(scan.error(), "reading " + logs[i]);
    summary(logs[i], *scan);
    const bool last = i + 1 == logs.size();
    if (!scan->problem.empty()) {
      std::printf("  %s\n", last ? "the last segment ends torn: weftd cuts this tail when it starts"
                                   : "CORRUPT: not the last segment, so weftd will refuse this partition");
      if (!last) status = 1;
    }
    if (expected.value >= 0 && scan->batches > 0 && scan->first < expected) {
      std::printf("  CORRUPT: its offsets overlap the segment before it\n");
      status = 1;
    }
    if (scan->batches > 0) expected = scan->next;
  }
  if (logs.empty()) std::printf("%s: no segments\n", path.c_str());
  return status;
}

}  // namespace

int main(int argc, char** argv) {
  signal(SIGPIPE, SIG_IGN);
  CLI::App app{"weft: manage topics, produce and consume records, and measure a weft node.\n"
               "Talks to weftd on this host through its Unix socket (see --socket); produce, consume and perf also\n"
               "reach a node over the network through its Kafka listener (see --bootstrap)."};
  app.require_subcommand(1);
  app.fallthrough();  // --socket works after a subcommand too (subcommands inherit this)
  std::string socket = local::default_socket_path();
  app.add_option("--socket", socket, "weftd's Unix socket (default: $WEFT_SOCKET or weftd's default, " + socket + ")");
  std::string bootstrap;  // produce, consume and perf over the Kafka protocol instead
  std::vector<std::string> client_settings;  // -X KEY=VALUE for the librdkafka clients, as kcat has it
  auto client_settings_flag = [&](CLI::App* command) {
    command->add_option("-X", client_settings,
                        "with --bootstrap: a librdkafka setting KEY=VALUE for the Kafka clients, overriding weft's (repeatable; "
                        "e.g. -X max.partition.fetch.bytes=8388608)");
  };
  // The cluster commands read and write the cluster's metadata in etcd.
  cli::ClusterCliOptions cluster_options;
  if (const char* etcd = std::getenv("WEFT_ETCD"); etcd != nullptr) cluster_options.etcd = etcd;
  auto cluster_flags = [&](CLI::App* command, const std::string& what) {
    command->add_option("--etcd", cluster_options.etcd, "the cluster's etcd, http://HOST:PORT (default: $WEFT_ETCD): " + what);
    command->add_option("--cluster", cluster_options.cluster, "the cluster's name in etcd (weftd's cluster)")->capture_default_str();
  };

  // ---- topic ----
  CLI::App* topic = app.add_subcommand("topic", "create, list, describe and delete topics");
  topic->require_subcommand(1);
  CLI::App* create = topic->add_subcommand("create", "create a topic");
  std::string topic_name;
  std::uint32_t partitions = 0;
  std::vector<std::string> config_pairs;
  create->add_option("NAME", topic_name, "topic name: letters, digits, '.', '_' and '-'")->required();
  create->add_option("--partitions,-p", partitions, "partitions (default: the node's default_partitions)");
  create->add_option("--config,-c", config_pairs,
                     "KEY=VALUE settings: ring.capacity.bytes, max.batch.bytes, retention.ms, retention.bytes, fsync, "
                     "flow.control, producer.slots, consumer.slots");
  std::uint32_t replication_factor = 0;
  create->add_option("--replication-factor,-r", replication_factor,
                     "replicas of each partition, on as many nodes (a cluster: through its etcd with --etcd, or a cluster node's socket)")
      ->check(CLI::Range(1, 64));
  cluster_flags(create, "create the topic in the cluster, its replicas assigned by the controller");
  CLI::App* list = topic->add_subcommand("list", "list topics");
  cluster_flags(list, "list the cluster's topics");
  CLI::App* describe = topic->add_subcommand("describe", "show a topic's settings and per-partition counters");
  describe->add_option("NAME", topic_name, "topic name")->required();
  CLI::App* remove = topic->add_subcommand("delete", "delete a topic and its records");
  remove->add_option("NAME", topic_name, "topic name")->required();
  cluster_flags(remove, "delete the topic from the whole cluster");

  // ---- cluster, partition ----
  CLI::App* cluster = app.add_subcommand("cluster", "a cluster of weftd nodes (their metadata in etcd)");
  cluster->require_subcommand(1);
  CLI::App* cluster_status = cluster->add_subcommand("status", "nodes, controller, and every partition's leader, replicas, in-sync set and lag");
  cluster_flags(cluster_status, "read the cluster there");
  CLI::App* partition_cmd = app.add_subcommand("partition", "a cluster's partitions");
  partition_cmd->require_subcommand(1);
  CLI::App* reassign = partition_cmd->add_subcommand("reassign", "move a partition's replicas to other nodes (the first is the preferred leader)");
  std::uint32_t reassign_partition = 0;
  std::vector<std::int32_t> reassign_replicas;
  reassign->add_option("TOPIC", topic_name, "topic")->required();
  reassign->add_option("PARTITION", reassign_partition, "partition index")->required();
  reassign->add_option("--replicas", reassign_replicas, "node ids, comma-separated, e.g. 2,3,4")->required()->delimiter(',');
  cluster_flags(reassign, "the cluster's controller carries it out");

  // ---- produce ----
  CLI::App* produce = app.add_subcommand("produce", "send lines from stdin (or --file) as records, one per line");
  std::string key_sep;
  std::string acks = "1";
  std::string file;
  std::int64_t partition = -1;
  produce->add_option("TOPIC", topic_name, "topic to send to")->required();
  produce->add_option("--bootstrap", bootstrap, "HOST:PORT of a node's Kafka listener (or any Kafka broker): send over the network");
  produce->add_option("--key-sep", key_sep, "split each line at the first occurrence: key before it, value after");
  produce->add_option("--acks", acks, "0, 1 or all: what each send waits for")->check(CLI::IsMember({"0", "1", "all", "-1"}));
  produce->add_option("--file,-f", file, "read lines from this file instead of stdin")->check(CLI::ExistingFile);
  produce->add_option("--partition", partition, "send every record to this partition (default: Kafka's partitioner)");
  client_settings_flag(produce);

  // ---- consume ----
  CLI::App* consume = app.add_subcommand("consume", "print records of a topic, one per line");
  std::string from = "latest";
  std::int64_t count = -1;
  std::int64_t timeout_ms = -1;
  std::string group;
  std::string format = "value";
  std::string wait = "park";
  consume->add_option("TOPIC", topic_name, "topic to read")->required();
  consume->add_option("--bootstrap", bootstrap, "HOST:PORT of a node's Kafka listener (or any Kafka broker): read over the network");
  consume->add_option("--from", from, "earliest, latest, an OFFSET, or @UNIX_MS (first record at or after that time)");
  consume->add_option("--count,-n", count, "stop after this many records (exit status 4 when --timeout-ms passes first)");
  consume->add_option("--timeout-ms", timeout_ms, "stop after this long without a record (default: wait forever)");
  consume->add_option("--group,-g", group,
                      "consumer group: start at its committed offsets (--from earliest|latest where it has none) and commit what was printed");
  consume->add_option("--format", format, "value, key-value (key TAB value), or json")->check(CLI::IsMember({"value", "key-value", "json"}));
  consume->add_option("--partition", partition, "read only this partition (default: all)");
  client_settings_flag(consume);
  consume->add_option("--wait", wait, "spin, yield or park while waiting for records")->check(CLI::IsMember({"spin", "yield", "park"}));

  // ---- dump ----
  CLI::App* dump = app.add_subcommand("dump", "print a segment's batches (and records) and check them, or check a partition folder");
  std::string dump_path;
  bool dump_records = false;
  dump->add_option("PATH", dump_path, "a segment file (.log) or a partition folder")->required()->check(CLI::ExistingPath);
  dump->add_flag("--records", dump_records, "print every record too (offset, timestamp, key and value sizes)");

  // ---- status ----
  CLI::App* status = app.add_subcommand("status", "show the node and its topics at a glance");
  std::string metrics_address = "127.0.0.1:9644";
  status->add_option("--metrics", metrics_address,
                     "HOST:PORT of weftd's metrics (its metrics_listen) for the Kafka and consumer-group summary; off: skip it")
      ->capture_default_str();

  // ---- perf ----
  CLI::App* perf = app.add_subcommand("perf", "measure throughput and latency end to end, with same-run baselines");
  cli::PerfOptions po;
  perf->add_option("--producers", po.producers, "producer processes (or threads)")->check(CLI::Range(1, 64));
  perf->add_option("--consumers", po.consumers, "consumer processes (or threads), each reading every partition")->check(CLI::Range(0, 64));
  perf->add_option("--partitions", po.partitions, "partitions of the perf topic")->check(CLI::Range(1, 1024));
  perf->add_option("--record-size", po.record_size, "value bytes per record (at least 16)")->check(CLI::Range(16, 1 << 20));
  perf->add_option("--records", po.records, "records per producer in the throughput run");
  perf->add_option("--duration", po.duration_s, "seconds of throughput run instead of --records");
  perf->add_option("--rate", po.rate, "records/s per producer in the throughput run (default: flat out)");
  perf->add_option("--latency-records", po.latency_records, "records per producer in the paced latency run (0: skip)");
  perf->add_option("--latency-rate", po.latency_rate, "records/s per producer in the latency run");
  perf->add_option("--batch-records", po.batch_records, "records per batch (send_batch) in the throughput run")->check(CLI::Range(1, 4096));
  perf->add_option("--acks", po.acks, "0, 1 or all")->check(CLI::IsMember({"0", "1", "all", "-1"}));
  perf->add_option("--wait", po.wait, "how consumers wait: spin, yield or park")->check(CLI::IsMember({"spin", "yield", "park"}));
  perf->add_flag("--threads", po.threads, "run producers and consumers as threads of one process");
  perf->add_flag("!--shared", po.exclusive, "producers claim with compare-and-swap even when alone on a partition");
  CLI::Option* ring_bytes = perf->add_option("--ring-bytes", po.ring_bytes, "ring capacity per partition (power of two); with --bootstrap, of the perf topics (default: the node's)");
  perf->add_flag("!--no-hugepages", po.hugepages, "rings in 4 KiB pages (embedded node)");
  perf->add_flag("!--no-baselines", po.baselines, "skip the memcpy and ping-pong baselines");
  perf->add_flag("!--no-flow-control", po.flow_control, "let producers lap slow consumers (records lost to laps are counted)");
  perf->add_flag("--json", po.json, "print one JSON object instead of the report");
  perf->add_option("--compression", po.compression, "with --bootstrap: the producer's compression.type (none, gzip, snappy, lz4, zstd)")
      ->check(CLI::IsMember({"none", "gzip", "snappy", "lz4", "zstd"}));
  perf->add_option("--bootstrap", bootstrap,
                   "HOST:PORT of a node's Kafka listener: produce, fetch and paced-latency runs over the Kafka protocol (librdkafka)");
  client_settings_flag(perf);
  std::string perf_bytes;
  perf->add_option("--data-dir", po.data_dir, "keep the embedded node's logs here (and measure this disk); default: rings only")
      ->check(CLI::ExistingDirectory);
  perf->add_option("--fsync", po.fsync, "the perf topic's fsync policy: none, always or interval=MS");
  perf->add_option("--bytes", perf_bytes, "log bytes to write in the throughput run, e.g. 4G (sets --records)");
  perf->add_option("--ack-records", po.ack_records, "records per producer in the send-then-wait run (with --data-dir and --acks 1|all)");
  perf->add_option("--log-writes", po.log_writes, "the embedded node's log writes: direct (O_DIRECT) or buffered (the page cache), as weftd's log_writes")
      ->check(CLI::IsMember({"direct", "buffered"}));
  perf->add_flag("!--no-io-uring", po.io_uring, "write the log's direct writes with pwrite, one at a time (to compare with io_uring)");

  CLI11_PARSE(app, argc, argv);
  const std::string& sock = socket;

  if (!client_settings.empty() && bootstrap.empty())
    return report(Error{Errc::kInvalidArgument, "-X sets the Kafka clients' librdkafka settings: give --bootstrap HOST:PORT too"}, "starting");
  if (!bootstrap.empty()) {
    cli::RemoteOptions remote{bootstrap, {}};
    for (const std::string& setting : client_settings) {
      const std::size_t equals = setting.find('=');
      if (equals == std::string::npos || equals == 0)
        return report(Error{Errc::kInvalidArgument, "-X takes KEY=VALUE (a librdkafka setting), not '" + setting + "'"}, "starting");
      remote.client_settings.emplace_back(setting.substr(0, equals), setting.substr(equals + 1));
    }
    if (*perf) {
      // What the Kafka runs do not take is refused, not ignored (a --duration run that ran its
      // 10 million records instead looked like a measurement of something else).
      for (const char* local_only : {"--producers", "--consumers", "--duration", "--batch-records", "--wait", "--threads", "--shared",
                                     "--no-hugepages", "--no-flow-control", "--data-dir", "--fsync", "--bytes", "--ack-records", "--log-writes",
                                     "--no-io-uring"})
        if (perf->count(local_only) > 0)
          return report(Error{Errc::kInvalidArgument, std::string(local_only) + " applies to runs on this host's node, not with --bootstrap"}, "perf");
      po.ring_bytes_given = ring_bytes->count() > 0;
      // Kafka clients send batches of up to 1 MB (librdkafka's batch.size, the bare client's), and a
      // ring takes batches of at most a quarter of itself.
      if (po.ring_bytes_given && po.ring_bytes < (std::uint64_t{4} << 20))
        return report(Error{Errc::kInvalidArgument, "with --bootstrap, --ring-bytes must be at least 4194304: the runs send batches of up to 1 MB, "
                                                    "and a ring takes batches of a quarter of itself"},
                      "perf");
      return cli::run_remote_perf(remote, po);
    }
    if (*produce) return cli::run_remote_produce(remote, topic_name, key_sep, acks, file, partition);
    if (*consume) {
      if (from != "earliest" && from != "latest") {
        const bool at_time = !from.empty() && from[0] == '@';
        const std::string_view digits = at_time ? std::string_view(from).substr(1) : std::string_view(from);
        std::int64_t v = 0;
        const auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), v);
        if (digits.empty() || ec != std::errc{} || end != digits.data() + digits.size() || v < 0)
          return report(Error{Errc::kInvalidArgument, "--from takes earliest, latest, an offset or @UNIX_MS, not '" + from + "'"}, "consuming");
      }
      return cli::run_remote_consume(remote, cli::RemoteConsume{topic_name, from, count, timeout_ms, group, format, partition});
    }
  }

  if (*perf) {
    if (po.compression != "none")
      return report(Error{Errc::kInvalidArgument, "--compression applies to Kafka clients: give --bootstrap HOST:PORT too"}, "perf");
    po.use_socket = app.count("--socket") > 0;
    po.socket = socket;
    if (!perf_bytes.empty() && (po.bytes = cli::parse_size(perf_bytes)) == 0)
      return report(Error{Errc::kInvalidArgument, "--bytes takes a size such as 4G, 512M or 65536, not '" + perf_bytes + "'"}, "perf");
    {
      TopicConfig probe;  // the policy is checked here, before any baseline runs
      if (Result<void> fsync = set_topic_config(probe, "fsync", po.fsync); !fsync.ok()) return report(fsync.error(), "perf");
    }
    return cli::run_perf(po);
  }

  if (*dump) return run_dump(dump_path, dump_records);
  if (*cluster_status) return cli::run_cluster_status(cluster_options);
  if (*reassign) return cli::run_partition_reassign(cluster_options, topic_name, reassign_partition, reassign_replicas);
  const bool in_cluster = !cluster_options.etcd.empty() && (create->count("--etcd") > 0 || list->count("--etcd") > 0 || remove->count("--etcd") > 0 ||
                                                            std::getenv("WEFT_ETCD") != nullptr);
  if (*create && in_cluster) {
    std::vector<std::pair<std::string, std::string>> settings;
    for (const std::string& pair : config_pairs) {
      const std::size_t eq = pair.find('=');
      if (eq == std::string::npos || eq == 0)
        return report(Error{Errc::kInvalidArgument, "--config takes KEY=VALUE, not '" + pair + "'"}, "creating the topic");
      settings.emplace_back(pair.substr(0, eq), pair.substr(eq + 1));
    }
    return cli::run_cluster_topic_create(cluster_options, topic_name, partitions, replication_factor, settings);
  }
  if (*list && in_cluster) return cli::run_cluster_topic_list(cluster_options);
  if (*remove && in_cluster) return cli::run_cluster_topic_delete(cluster_options, topic_name);

  Result<std::shared_ptr<Client>> client = connect_to(sock);
  if (!client.ok()) return report(client.error(), "connecting to weftd");

  if (*create) {
    TopicSettings settings;
    if (partitions > 0) settings.emplace_back("partitions", std::to_string(partitions));
    // weftd in a cluster creates it cluster-wide with this factor (its default without one).
    if (replication_factor > 0) settings.emplace_back("replication.factor", std::to_string(replication_factor));
    for (const std::string& pair : config_pairs) {
      const std::size_t eq = pair.find('=');
      if (eq == std::string::npos || eq == 0)
        return report(Error{Errc::kInvalidArgument, "--config takes KEY=VALUE, not '" + pair + "'"}, "creating the topic");
      settings.emplace_back(pair.substr(0, eq), pair.substr(eq + 1));
    }
    Result<TopicInfo> info = (*client)->create_topic(topic_name, settings);
    if (!info.ok()) return report(info.error(), "creating topic '" + topic_name + "'");
    std::printf("created topic %s with %u partitions\n", info->name.c_str(), info->config.partitions);
    return 0;
  }
  if (*list) {
    Result<std::vector<std::string>> names = (*client)->list_topics();
    if (!names.ok()) return report(names.error(), "listing topics");
    for (const std::string& n : *names) std::printf("%s\n", n.c_str());
    return 0;
  }
  if (*describe) {
    Result<TopicInfo> info = (*client)->describe_topic(topic_name);
    if (!info.ok()) return report(info.error(), "describing topic '" + topic_name + "'");
    print_topic(*info);
    return 0;
  }
  if (*remove) {
    if (Result<void> deleted = (*client)->delete_topic(topic_name); !deleted.ok())
      return report(deleted.error(), "deleting topic '" + topic_name + "'");
    std::printf("deleted topic %s\n", topic_name.c_str());
    return 0;
  }
  if (*status) {
    Result<NodeStatus> s = (*client)->status();
    if (!s.ok()) return report(s.error(), "reading node status");
    std::printf("node     %s, up %.1f s\n", (*client)->describe().c_str(), static_cast<double>(s->uptime_ms) / 1000.0);
    std::printf("clients  %u connected, %llu admitted, %llu refused, %llu bad requests\n", s->connections,
                static_cast<unsigned long long>(s->accepted), static_cast<unsigned long long>(s->refused),
                static_cast<unsigned long long>(s->bad_requests));
    std::printf("topics   %u, ring memory %s\n", s->topics, human_bytes(s->ring_memory_bytes).c_str());
    Result<std::vector<std::string>> names = (*client)->list_topics();
    if (!names.ok()) return report(names.error(), "listing topics");
    if (!names->empty())
      std::printf("\n%-32s %10s %14s %10s %10s %8s\n", "topic", "partitions", "records", "producers", "consumers", "lapped");
    for (const std::string& n : *names) {
      Result<TopicInfo> info = (*client)->describe_topic(n);
      if (!info.ok()) continue;  // deleted meanwhile
      std::uint64_t records = 0;
      std::uint32_t producers = 0, consumers = 0, lapped = 0;
      for (const PartitionStats& p : info->partitions) {
        records += p.records;
        producers += p.producers;
        consumers += p.consumers;
        lapped += p.lapped_consumers;
      }
      std::printf("%-32s %10u %14llu %10u %10u %8u\n", n.c_str(), info->config.partitions,
                  static_cast<unsigned long long>(records), producers, consumers, lapped);
    }
    cli::print_status_metrics(metrics_address, s->pid);
    return 0;
  }
  if (*produce) {
    ProducerOptions options;
    options.acks = acks == "0" ? Acks::kNone : (acks == "1" ? Acks::kLeader : Acks::kAll);
    options.remote = kafka::make_remote_producer("weft-cli");  // in a cluster, partitions led elsewhere
    Result<TopicProducer> producer = TopicProducer::create(*client, topic_name, options);
    if (!producer.ok()) return report(producer.error(), "opening topic '" + topic_name + "'");
    if (partition >= 0 && static_cast<std::uint64_t>(partition) >= producer->partitions())
      return report(Error{Errc::kInvalidArgument, "topic '" + topic_name + "' has " + std::to_string(producer->partitions()) + " partitions"},
                    "producing");
    std::ifstream in_file;
    if (!file.empty()) in_file.open(file);
    std::istream& in = file.empty() ? std::cin : in_file;
    // Lines go out in batches, one per partition, sent when full, when the input has nothing
    // more ready (so typed lines go at once) and at the end: through a ring that is fewer batch
    // headers; to a leader on another node (a cluster node that follows the partition), fewer
    // round trips. Keyed lines take their key's partition, keyless ones one partition per batch
    // (Kafka's sticky partitioner), each line its own timestamp.
    struct Pending {
      std::deque<std::string> lines;  // a deque: the records' views stay put as it grows
      std::vector<RecordInput> records;
      std::size_t bytes = kBatchHeaderBytes;
      std::uint64_t first_line = 0;
    };
    std::vector<Pending> pending(producer->partitions());
    const std::size_t batch_limit = std::max<std::size_t>(producer->max_batch_bytes() / 2, kBatchHeaderBytes + 1);
    std::uint32_t keyless_partition = static_cast<std::uint32_t>(::getpid()) % producer->partitions();
    std::size_t keyless_bytes = 0;
    std::uint64_t sent = 0, line_number = 0;
    auto send_pending = [&](std::uint32_t p) -> Result<void> {
      Pending& batch = pending[p];
      if (batch.records.empty()) return ok();
      Result<SendResult> r = producer->send_batch(p, batch.records);
      if (!r.ok())
        return Error{r.error().code, "sending lines " + std::to_string(batch.first_line) + "-" +
                                         std::to_string(batch.first_line + batch.records.size() - 1) + ": " + r.error().message};
      sent += batch.records.size();
      batch = Pending{};
      return ok();
    };
    auto input_ready = [&] {
      if (in.rdbuf()->in_avail() > 0) return true;
      if (!file.empty()) return in.good();
      pollfd stdin_fd{0, POLLIN, 0};
      return ::poll(&stdin_fd, 1, 0) > 0;  // more to read now (or the end, which getline finds)
    };
    std::string line;
    while (std::getline(in, line)) {
      ++line_number;
      if (!line.empty() && line.back() == '\r') line.pop_back();
      const std::size_t at = key_sep.empty() ? std::string::npos : line.find(key_sep);
      const bool has_key = at != std::string::npos;
      const std::size_t value_from = has_key ? at + key_sep.size() : 0;
      const std::uint32_t target = partition >= 0 ? static_cast<std::uint32_t>(partition)
                                   : has_key      ? partition_for_key(std::as_bytes(std::span(line.data(), at)), producer->partitions())
                                                  : keyless_partition;
      // Room for the record at any place in the batch (its varints grow with its index).
      const std::size_t record_bytes = line.size() + 32;
      if (pending[target].bytes + record_bytes > batch_limit || pending[target].records.size() >= 512) {
        if (Result<void> s2 = send_pending(target); !s2.ok()) return report(s2.error(), "producing");
      }
      if (!has_key && partition < 0) {
        // Kafka's sticky partitioner: keyless records stay on one partition for a batch's worth
        // of bytes (the producer's sticky_batch_bytes), then move to the next.
        keyless_bytes += record_bytes;
        if (keyless_bytes >= ProducerOptions{}.sticky_batch_bytes) {
          keyless_bytes = 0;
          keyless_partition = (keyless_partition + 1) % producer->partitions();
        }
      }
      Pending& batch = pending[target];
      if (batch.records.empty()) batch.first_line = line_number;
      const std::string& kept = batch.lines.emplace_back(std::move(line));
      RecordInput record;
      if (has_key) record.key = std::as_bytes(std::span(kept.data(), at));
      record.value = std::as_bytes(std::span(kept.data() + value_from, kept.size() - value_from));
      timespec now{};
      clock_gettime(CLOCK_REALTIME, &now);
      record.timestamp_ms = static_cast<std::int64_t>(now.tv_sec) * 1000 + now.tv_nsec / 1'000'000;
      batch.records.push_back(record);
      batch.bytes += record_bytes;
      if (!input_ready()) {
        for (std::uint32_t p = 0; p < pending.size(); ++p)
          if (Result<void> s2 = send_pending(p); !s2.ok()) return report(s2.error(), "producing");
      }
    }
    for (std::uint32_t p = 0; p < pending.size(); ++p)
      if (Result<void> s2 = send_pending(p); !s2.ok()) return report(s2.error(), "producing");
    if (Result<void> flushed = producer->flush(); !flushed.ok()) return report(flushed.error(), "flushing");
    std::fprintf(stderr, "weft: sent %llu records to %s\n", static_cast<unsigned long long>(sent), topic_name.c_str());
    return 0;
  }
  if (*consume) {
    SeekTo start = SeekTo::latest();
    if (from == "earliest") {
      start = group.empty() ? SeekTo::earliest() : SeekTo::committed(SeekTo::Kind::kEarliest);
    } else if (from == "latest") {
      start = group.empty() ? SeekTo::latest() : SeekTo::committed(SeekTo::Kind::kLatest);
    } else {
      const bool at_time = !from.empty() && from[0] == '@';
      const std::string_view digits = at_time ? std::string_view(from).substr(1) : std::string_view(from);
      std::int64_t v = 0;
      const auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), v);
      if (digits.empty() || ec != std::errc{} || end != digits.data() + digits.size() || v < 0)
        return report(Error{Errc::kInvalidArgument, "--from takes earliest, latest, an offset or @UNIX_MS, not '" + from + "'"},
                      "consuming");
      start = at_time ? SeekTo::timestamp(v) : SeekTo::offset(v);
    }
    ConsumerOptions options;
    options.wait = wait == "spin" ? WaitKind::kSpin : (wait == "yield" ? WaitKind::kYield : WaitKind::kPark);
    options.group = group;
    Result<TopicConsumer> consumer = TopicConsumer::create(*client, options);
    if (!consumer.ok()) return report(consumer.error(), "consuming");
    std::vector<std::uint32_t> parts;
    if (partition >= 0) parts.push_back(static_cast<std::uint32_t>(partition));
    if (Result<void> a = consumer->assign(topic_name, parts, start); !a.ok()) return report(a.error(), "reading topic '" + topic_name + "'");
    struct sigaction sa{};
    sa.sa_handler = [](int signal) { g_interrupted.store(signal, std::memory_order_relaxed); };
    sigaction(SIGINT, &sa, nullptr);
    sigaction(SIGTERM, &sa, nullptr);
    std::int64_t printed = 0;
    std::int64_t idle_since = monotonic_ns();
    std::string line;
    // With a group, what was printed and flushed is committed (each partition's next offset):
    // every second, and at the end. Records written but not flushed are not.
    std::map<std::uint32_t, Offset> next_offsets;  // printed since the last flush
    std::map<std::uint32_t, Offset> flushed;       // flushed, not yet committed
    std::int64_t last_commit = monotonic_ns();
    int write_error = 0;
    auto flush = [&] {
      if (!cli::flush_records(write_error)) return false;
      for (const auto& [p, next] : next_offsets) flushed[p] = next;
      next_offsets.clear();
      return true;
    };
    auto commit = [&]() -> Result<void> {
      if (group.empty() || flushed.empty()) return ok();
      for (const auto& [p, next] : flushed) WEFT_TRY_VOID(consumer->commit(topic_name, p, next));
      flushed.clear();
      return ok();
    };
    while (!g_interrupted.load(std::memory_order_relaxed) && (count < 0 || printed < count)) {
      Result<PollResult> polled = consumer->poll(100);
      if (!polled.ok()) return report(polled.error(), "polling");
      for (const PollNotice& n : polled->notices)
        std::fprintf(stderr, "weft: partition %u: offsets %lld..%lld %s\n", n.partition, static_cast<long long>(n.from.value),
                     static_cast<long long>(n.to.value - 1),
                     n.kind == PollNotice::Kind::kLapped      ? "were overwritten before they were read (lapped)"
                     : n.kind == PollNotice::Kind::kOutOfRange ? "were deleted by retention before they were read"
                                                               : "failed validation and were skipped");
      for (const ConsumedRecord& r : polled->records) {
        if (count >= 0 && printed >= count) break;
        line.clear();
        cli::PrintedRecord printed_record{r.topic, r.partition, r.offset.value, r.timestamp_ms,
                                          r.key ? std::optional<std::string_view>(as_text(r.key)) : std::nullopt,
                                          r.value ? std::optional<std::string_view>(as_text(r.value)) : std::nullopt};
        cli::format_record(line, format, printed_record);
        if (!cli::write_record(line, write_error)) break;
        ++printed;
        if (!group.empty()) next_offsets[r.partition] = Offset{r.offset.value + 1};
      }
      if (write_error != 0) break;
      if (!polled->records.empty()) {
        if (!flush()) break;
        idle_since = monotonic_ns();
      }
      if (!group.empty() && monotonic_ns() - last_commit > 1'000'000'000) {
        if (Result<void> c = commit(); !c.ok()) return report(c.error(), "committing group '" + group + "'");
        last_commit = monotonic_ns();
      }
      if (polled->records.empty() && timeout_ms >= 0 &&
          monotonic_ns() - idle_since >= std::min<std::int64_t>(timeout_ms, std::int64_t{1} << 40) * 1'000'000)
        break;
    }
    const bool written = write_error == 0 && flush();
    if (Result<void> c = commit(); !c.ok()) return report(c.error(), "committing group '" + group + "'");
    if (!written) return cli::records_not_written(write_error, printed);
    // A script that asked for --count records must not take fewer for all of them.
    if (count >= 0 && printed < count)
      return g_interrupted.load(std::memory_order_relaxed) != 0 ? cli::interrupted_with_too_few(printed, count, g_interrupted.load())
                                                           : cli::consumed_too_few(printed, count, timeout_ms);
    return 0;
  }
  return 0;
}
