// weft perf: producers and consumers on one topic, end to end through the client API, with the
// same run's baselines (memcpy, cache-line ping-pong) so figures from a noisy machine compare.
//
// Two phases: a throughput run (flat out, or at --rate) and a paced latency run, each on a fresh
// topic. Values carry a sequence number, the producer's id and its send time (CLOCK_MONOTONIC);
// consumers check per-producer order on every partition and record one-way latency.
//
// With --data-dir the node keeps logs: the run first measures the disk itself (sequential
// O_DIRECT writes and reads, 4 KiB write + fdatasync), then after the throughput run reads the
// whole log back from cold segments (catch-up), and with --acks 1|all adds an acknowledgement
// run where every producer sends one record at a time and waits for it (group commit shows as
// throughput growing with producers).
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <charconv>
#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <new>
#include <string>
#include <thread>
#include <vector>

#include "baselines.h"
#include "commands.h"
#include "disk_baselines.h"
#include "weft/client.h"
#include "weft/consumer.h"
#include "weft/fabric/histogram.h"
#include "weft/fabric/local_server.h"
#include "weft/fabric/log.h"
#include "weft/node.h"
#include "weft/producer.h"
#include "weft/storage/segment_log.h"

namespace weft::cli {
namespace {

constexpr std::uint32_t kMaxProducers = 64;
constexpr std::uint32_t kMaxConsumers = 64;
constexpr std::uint32_t kMaxPartitions = 1024;
constexpr std::int64_t kIdleLimitNs = 10'000'000'000;  // a consumer that sees nothing this long gives up

// Lives in MAP_SHARED memory so forked producers and consumers report to the parent.
struct Board {
  std::atomic<std::uint32_t> consumers_ready;
  std::atomic<std::uint32_t> producers_done;
  std::atomic<std::uint64_t> total_sent;  // set once every producer is done (duration mode)
  struct alignas(128) ProducerReport {
    std::atomic<std::uint64_t> sent;
    std::int64_t start_ns;
    std::int64_t end_ns;
    std::uint64_t back_pressure_waits;
    std::uint64_t errors;
    LatencyHistogram ack_latency;  // the acknowledgement run: send to acknowledged
  } producers[kMaxProducers];
  struct alignas(128) ConsumerReport {
    std::atomic<std::uint64_t> received;
    std::int64_t start_ns;
    std::int64_t last_ns;
    std::uint64_t errors;  // out of order, duplicate, malformed
    std::uint64_t lapped;  // records lost to laps
    std::uint64_t notices;
    LatencyHistogram latency;
  } consumers[kMaxConsumers];
  std::atomic<std::uint64_t> partition_records[kMaxPartitions];
};

struct Phase {
  std::string name;
  std::uint64_t records;  // per producer; 0 with duration
  double duration_s;
  std::uint64_t rate;  // per producer; 0: flat out
  std::uint32_t batch_records;
  bool measure_latency;
  bool wait_each = false;  // send one record, wait for its acknowledgement, repeat
  bool catch_up = false;   // afterwards, read the whole log back from cold segments
  bool keep_topic = false;       // leave the topic for a later phase (PhaseResult::topic)
  std::string background_topic{};  // meanwhile, a batch reader replays this topic from its start
};

struct PhaseResult {
  double send_rps = 0;      // all producers together
  double deliver_rps = 0;   // per consumer, the slowest
  double mb_per_sec = 0;    // value bytes, at deliver_rps
  std::uint64_t sent = 0;
  std::uint64_t received_min = 0;
  std::uint64_t errors = 0;
  std::uint64_t lost = 0;
  std::uint64_t back_pressure_waits = 0;
  LatencyHistogram latency;
  LatencyHistogram ack_latency;
  std::vector<std::uint64_t> partition_records;
  std::string memory;  // how the topic's rings were backed
  std::uint64_t log_bytes = 0;          // the topic's logs at the end of the phase
  double log_mb_per_sec = 0;            // log bytes over the producers' span (all acknowledged)
  double catch_up_mb_per_sec = 0;       // log bytes read back from cold segments
  double catch_up_records_per_sec = 0;
  std::uint64_t catch_up_records = 0;
  std::string topic;
  double background_mb_per_sec = 0;  // what the batch reader replayed meanwhile
};

WaitKind wait_kind(const std::string& w) {
  return w == "spin" ? WaitKind::kSpin : (w == "yield" ? WaitKind::kYield : WaitKind::kPark);
}

// Producers take the first cpus, consumers the rest; when there are more of them than cpus,
// consumers share the cpus producers do not use (so adding consumers measures what they cost a
// producer through the ring, not through the scheduler), and producers share among themselves.
int cpu_for(const PerfOptions& o, bool producer, std::uint32_t index) {
  const auto cpus = static_cast<std::uint32_t>(std::max(bench::cpu_count(), 1));
  if (cpus == 1) return 0;
  const std::uint32_t producer_cpus = std::min(o.producers, o.consumers > 0 ? cpus - 1 : cpus);
  if (producer) return static_cast<int>(index % producer_cpus);
  const std::uint32_t consumer_cpus = cpus - producer_cpus;
  return static_cast<int>(producer_cpus + index % consumer_cpus);
}

void run_producer(const PerfOptions& o, const Phase& phase, std::shared_ptr<Client> client, const std::string& topic,
                  std::uint32_t id, Board& board) {
  bench::pin_to_cpu(cpu_for(o, true, id));
  Board::ProducerReport& me = board.producers[id];
  ProducerOptions options;
  options.mode = o.exclusive && o.producers == 1 ? ProducerMode::kExclusive : ProducerMode::kShared;
  options.acks = o.acks == "0" ? Acks::kNone : (o.acks == "1" ? Acks::kLeader : Acks::kAll);
  options.back_pressure_wait = WaitKind::kYield;
  Result<TopicProducer> producer = TopicProducer::create(std::move(client), topic, options);
  if (!producer.ok()) {
    std::fprintf(stderr, "weft perf: producer %u: %s\n", id, producer.error().message.c_str());
    ++me.errors;
    board.producers_done.fetch_add(1, std::memory_order_acq_rel);
    return;
  }
  // Start together with the consumers, so none misses the first records' timing.
  const std::int64_t ready_by = monotonic_ns() + 30'000'000'000;
  while (board.consumers_ready.load(std::memory_order_acquire) < o.consumers && monotonic_ns() < ready_by) sched_yield();

  std::vector<std::byte> value(o.record_size, std::byte{0x5A});
  std::vector<RecordInput> batch(phase.batch_records);
  // Now, so retention (a week by default) keeps what the run writes.
  const std::int64_t wall_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                                   std::chrono::system_clock::now().time_since_epoch()).count();
  const std::int64_t interval_ns = phase.rate > 0 ? 1'000'000'000 / static_cast<std::int64_t>(phase.rate) : 0;
  const std::int64_t start = monotonic_ns();
  const std::int64_t stop_at = phase.duration_s > 0 ? start + static_cast<std::int64_t>(phase.duration_s * 1e9) : INT64_MAX;
  me.start_ns = start;
  std::uint64_t sequence = 0;
  std::uint64_t since_publish = 0;
  std::vector<std::uint64_t> per_partition(producer->partitions(), 0);
  const std::uint64_t limit = phase.records > 0 ? phase.records : UINT64_MAX;
  while (sequence < limit) {
    if ((sequence & 1023) == 0 && monotonic_ns() >= stop_at) break;
    std::int64_t send_ns;
    if (interval_ns > 0) {
      const std::int64_t due = start + static_cast<std::int64_t>(sequence) * interval_ns;
      do send_ns = monotonic_ns();
      while (send_ns < due);
    } else {
      send_ns = phase.measure_latency ? monotonic_ns() : 0;
    }
    if (phase.wait_each) send_ns = monotonic_ns();
    std::memcpy(value.data(), &sequence, 8);
    std::memcpy(value.data() + 8, &send_ns, 8);
    RecordInput record;
    record.value = std::span<const std::byte>(value);
    record.timestamp_ms = wall_ms;
    std::uint64_t in_batch = 1;
    Result<SendResult> sent = phase.batch_records <= 1 ? producer->send(record) : Result<SendResult>(SendResult{});
    if (phase.wait_each && sent.ok()) {
      if (Result<void> acked = producer->await(*sent, options.acks, 30'000); !acked.ok()) sent = acked.error();
      else me.ack_latency.record(static_cast<std::uint64_t>(monotonic_ns() - send_ns));
    }
    if (phase.batch_records > 1) {
      // A batch's values must differ, so each record gets its own copy of the value buffer.
      in_batch = std::min<std::uint64_t>(phase.batch_records, limit - sequence);
      static thread_local std::vector<std::vector<std::byte>> values;
      values.resize(in_batch, value);
      for (std::uint64_t i = 0; i < in_batch; ++i) {
        const std::uint64_t seq = sequence + i;
        std::memcpy(values[i].data(), &seq, 8);
        std::memcpy(values[i].data() + 8, &send_ns, 8);
        batch[i] = record;
        batch[i].value = std::span<const std::byte>(values[i]);
      }
      sent = producer->send_batch(producer->partition_for(std::nullopt), std::span(batch.data(), in_batch));
    }
    if (!sent.ok()) {
      std::fprintf(stderr, "weft perf: producer %u: %s\n", id, sent.error().message.c_str());
      ++me.errors;
      break;
    }
    per_partition[sent->partition] += in_batch;
    sequence += in_batch;
    since_publish += in_batch;
    if (since_publish >= 4096) {
      me.sent.store(sequence, std::memory_order_relaxed);  // progress only
      since_publish = 0;
    }
  }
  if (Result<void> flushed = producer->flush(); !flushed.ok()) {
    std::fprintf(stderr, "weft perf: producer %u: %s\n", id, flushed.error().message.c_str());
    ++me.errors;
  }
  me.end_ns = monotonic_ns();
  for (std::size_t p = 0; p < per_partition.size() && p < kMaxPartitions; ++p)
    board.partition_records[p].fetch_add(per_partition[p], std::memory_order_relaxed);
  me.back_pressure_waits = producer->stats().back_pressure_waits;
  me.sent.store(sequence, std::memory_order_release);
  board.producers_done.fetch_add(1, std::memory_order_acq_rel);
}

void run_consumer(const PerfOptions& o, const Phase& phase, std::shared_ptr<Client> client, const std::string& topic,
                  std::uint32_t id, Board& board) {
  bench::pin_to_cpu(cpu_for(o, false, id));
  Board::ConsumerReport& me = board.consumers[id];
  ConsumerOptions options;
  options.wait = wait_kind(o.wait);
  Result<TopicConsumer> consumer = TopicConsumer::create(std::move(client), options);
  if (consumer.ok()) {
    if (Result<void> a = consumer->assign(topic, {}, SeekTo::earliest()); !a.ok()) consumer = a.error();
  }
  if (!consumer.ok()) {
    std::fprintf(stderr, "weft perf: consumer %u: %s\n", id, consumer.error().message.c_str());
    ++me.errors;
    board.consumers_ready.fetch_add(1, std::memory_order_acq_rel);
    return;
  }
  // Per producer and partition, the next sequence expected can only grow.
  std::vector<std::uint64_t> last(static_cast<std::size_t>(o.producers) * o.partitions, 0);
  std::vector<std::uint64_t> seen_any(last.size(), 0);
  board.consumers_ready.fetch_add(1, std::memory_order_acq_rel);
  me.start_ns = monotonic_ns();
  const std::uint64_t expected_fixed = phase.records > 0 ? phase.records * o.producers : 0;
  std::uint64_t received = 0;
  std::int64_t idle_since = monotonic_ns();
  for (;;) {
    std::uint64_t target = expected_fixed;
    if (target == 0 && board.producers_done.load(std::memory_order_acquire) == o.producers)
      target = board.total_sent.load(std::memory_order_acquire);
    if (target != 0 && received + me.lapped >= target) break;
    Result<PollResult> polled = consumer->poll(100);
    if (!polled.ok()) {
      ++me.errors;
      break;
    }
    const std::int64_t now = phase.measure_latency ? monotonic_ns() : 0;
    for (const PollNotice& n : polled->notices) {
      ++me.notices;
      me.lapped += static_cast<std::uint64_t>(n.to.value - n.from.value);
    }
    for (const ConsumedRecord& r : polled->records) {
      if (!r.value || r.value->size() < 16) {
        ++me.errors;
        continue;
      }
      std::uint64_t sequence;
      std::int64_t sent;
      std::memcpy(&sequence, r.value->data(), 8);
      std::memcpy(&sent, r.value->data() + 8, 8);
      (void)sent;
      if (phase.measure_latency) me.latency.record(static_cast<std::uint64_t>(std::max<std::int64_t>(now - sent, 0)));
      // One producer in this build per (sequence space); with several producers their
      // sequences interleave within a partition, so order is checked per producer only when
      // there is one.
      if (o.producers == 1) {
        const std::size_t k = r.partition;
        if (seen_any[k] != 0 && sequence < last[k]) ++me.errors;
        last[k] = sequence + 1;
        seen_any[k] = 1;
      }
    }
    received += polled->records.size();
    if (!polled->records.empty()) {
      me.last_ns = monotonic_ns();
      me.received.store(received, std::memory_order_relaxed);
      idle_since = me.last_ns;
    } else if (monotonic_ns() - idle_since > kIdleLimitNs) {
      std::fprintf(stderr, "weft perf: consumer %u: nothing for 10 s after %" PRIu64 " records; giving up\n", id, received);
      ++me.errors;
      break;
    }
  }
  me.received.store(received, std::memory_order_release);
}

std::string format_count(double v) {
  char out[32];
  if (v >= 1e6) std::snprintf(out, sizeof(out), "%.2f M", v / 1e6);
  else if (v >= 1e3) std::snprintf(out, sizeof(out), "%.1f k", v / 1e3);
  else std::snprintf(out, sizeof(out), "%.0f", v);
  return out;
}

// Reads the whole topic back from the start, from segment files out of the page cache (dropped
// first, so the disk is read), as a batch job or a replay would.
Result<void> catch_up(const PerfOptions& o, const std::shared_ptr<Client>& client, const std::string& topic, PhaseResult& r) {
  std::error_code ec;
  for (const auto& entry : std::filesystem::recursive_directory_iterator(o.data_dir, ec)) {
    if (!entry.is_regular_file() || entry.path().extension() != ".log") continue;
    const int fd = ::open(entry.path().c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) continue;
    fdatasync(fd);  // dirty pages cannot be dropped
    posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    close(fd);
  }
  ConsumerOptions options;
  options.max_poll_records = 4096;
  options.log_read_bytes = std::size_t{4} << 20;
  WEFT_TRY(TopicConsumer consumer, TopicConsumer::create(client, options));
  WEFT_TRY_VOID(consumer.assign(topic, {}, SeekTo::earliest()));
  const std::int64_t start = monotonic_ns();
  std::uint64_t got = 0;
  for (std::int64_t idle_since = start; got < r.sent && monotonic_ns() - idle_since < kIdleLimitNs;) {
    WEFT_TRY(const PollResult polled, consumer.poll(100));
    if (!polled.records.empty()) idle_since = monotonic_ns();
    got += polled.records.size();
  }
  const double seconds = static_cast<double>(monotonic_ns() - start) / 1e9;
  r.catch_up_records = got;
  r.catch_up_records_per_sec = static_cast<double>(got) / seconds;
  r.catch_up_mb_per_sec = static_cast<double>(r.log_bytes) / 1e6 / seconds;
  if (got < r.sent) ++r.errors;
  return ok();
}

// Runs one phase on a fresh topic; producers and consumers are processes (or threads).
Result<PhaseResult> run_phase(const PerfOptions& o, const Phase& phase, const std::shared_ptr<Client>& client,
                              const std::string& socket_for_children, bool progress) {
  const std::string topic = "weft-perf-" + std::to_string(getpid()) + "-" + phase.name;
  TopicSettings settings{{"partitions", std::to_string(o.partitions)},
                         {"ring.capacity.bytes", std::to_string(o.ring_bytes)},
                         {"max.batch.bytes", std::to_string(perf_max_batch_bytes(o.ring_bytes))},
                         {"flow.control", o.flow_control ? "consumers" : "none"},
                         {"fsync", o.fsync}};
  WEFT_TRY(const TopicInfo info, client->create_topic(topic, settings));
  void* shared = mmap(nullptr, sizeof(Board), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (shared == MAP_FAILED) return os_error(Errc::kResourceExhausted, "mmap for the perf board", errno);
  auto* board = new (shared) Board{};

  // Children connect on their own (a connection is per process); threads share the client.
  auto child_client = [&]() -> std::shared_ptr<Client> {
    if (o.threads) return client;
    Result<std::shared_ptr<Client>> c = Client::connect(socket_for_children);
    if (!c.ok()) {
      std::fprintf(stderr, "weft perf: %s\n", c.error().message.c_str());
      _exit(3);
    }
    return *c;
  };
  std::vector<pid_t> children;
  std::vector<std::thread> threads;
  auto start_role = [&](bool producer, std::uint32_t id) {
    if (o.threads) {
      threads.emplace_back([&, producer, id] {
        if (producer) run_producer(o, phase, client, topic, id, *board);
        else run_consumer(o, phase, client, topic, id, *board);
      });
      return true;
    }
    const pid_t pid = fork();
    if (pid < 0) return false;
    if (pid == 0) {
      if (producer) run_producer(o, phase, child_client(), topic, id, *board);
      else run_consumer(o, phase, child_client(), topic, id, *board);
      _exit(0);
    }
    children.push_back(pid);
    return true;
  };
  // A batch job replaying an old topic from its start, over and over, while this phase runs.
  std::atomic<bool> background_stop{false};
  std::atomic<std::uint64_t> background_bytes{0};
  std::int64_t background_ns = 0;
  std::thread background;
  if (!phase.background_topic.empty()) {
    background = std::thread([&] {
      const std::int64_t began_ns = monotonic_ns();
      ConsumerOptions options;
      options.max_poll_records = 4096;
      options.log_read_bytes = std::size_t{4} << 20;
      while (!background_stop.load(std::memory_order_relaxed)) {
        Result<TopicConsumer> replay = TopicConsumer::create(client, options);
        if (!replay.ok() || !replay->assign(phase.background_topic, {}, SeekTo::earliest()).ok()) break;
        for (int empty = 0; empty < 3 && !background_stop.load(std::memory_order_relaxed);) {
          Result<PollResult> polled = replay->poll(10);
          if (!polled.ok()) break;
          if (polled->records.empty()) ++empty;
          for (const ConsumedRecord& rec : polled->records)
            background_bytes.fetch_add(rec.value ? rec.value->size() : 0, std::memory_order_relaxed);
        }
      }
      background_ns = monotonic_ns() - began_ns;
    });
  }
  bool started = true;
  for (std::uint32_t c = 0; c < o.consumers && started; ++c) started = start_role(false, c);
  for (std::uint32_t p = 0; p < o.producers && started; ++p) started = start_role(true, p);

  // Progress on a terminal, and the total for consumers in duration mode.
  const std::int64_t began = monotonic_ns();
  const std::int64_t give_up = began + 600'000'000'000;  // bounded: ten minutes at most
  bool total_published = false;
  std::uint64_t failed_children = 0;
  for (;;) {
    std::uint32_t alive = 0;
    if (o.threads) {
      alive = board->producers_done.load(std::memory_order_acquire) < o.producers ? 1 : 0;
    } else {
      for (pid_t& pid : children) {
        if (pid <= 0) continue;
        int status = 0;
        if (waitpid(pid, &status, WNOHANG) == pid) {
          pid = -1;
          if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
            // A child that could not connect, or crashed, reported nothing: count it.
            std::fprintf(stderr, "weft perf: a %s process %s\n", phase.name.c_str(),
                         WIFEXITED(status) ? ("exited with status " + std::to_string(WEXITSTATUS(status))).c_str() : "was killed by a signal");
            ++failed_children;
          }
        } else {
          ++alive;
        }
      }
    }
    if (!total_published && board->producers_done.load(std::memory_order_acquire) == o.producers) {
      std::uint64_t total = 0;
      for (std::uint32_t p = 0; p < o.producers; ++p) total += board->producers[p].sent.load(std::memory_order_acquire);
      board->total_sent.store(total, std::memory_order_release);
      total_published = true;
    }
    if ((o.threads && total_published) || (!o.threads && alive == 0) || !started) break;
    if (monotonic_ns() > give_up) {
      std::fprintf(stderr, "weft perf: the %s phase ran past ten minutes; stopping it\n", phase.name.c_str());
      break;
    }
    if (progress) {
      std::uint64_t sent = 0, received = 0;
      for (std::uint32_t p = 0; p < o.producers; ++p) sent += board->producers[p].sent.load(std::memory_order_relaxed);
      for (std::uint32_t c = 0; c < o.consumers; ++c) received += board->consumers[c].received.load(std::memory_order_relaxed);
      const double secs = static_cast<double>(monotonic_ns() - began) / 1e9;
      std::fprintf(stderr, "\r  %-10s %6.1f s   sent %10s   received %10s (all consumers)   ", phase.name.c_str(), secs,
                   format_count(static_cast<double>(sent)).c_str(), format_count(static_cast<double>(received)).c_str());
    }
    usleep(o.threads ? 20'000 : 100'000);
  }
  for (std::thread& t : threads) t.join();
  background_stop.store(true, std::memory_order_relaxed);
  if (background.joinable()) background.join();
  for (pid_t pid : children)
    if (pid > 0) {
      kill(pid, SIGKILL);
      waitpid(pid, nullptr, 0);
    }
  if (progress) std::fprintf(stderr, "\r%100s\r", "");

  PhaseResult r;
  r.errors += failed_children;
  if (background_ns > 0) r.background_mb_per_sec = static_cast<double>(background_bytes.load()) / 1e6 / (static_cast<double>(background_ns) / 1e9);
  if (!info.partitions.empty()) r.memory = info.partitions.front().memory;
  std::int64_t first_start = INT64_MAX, last_end = 0;
  for (std::uint32_t p = 0; p < o.producers; ++p) {
    const Board::ProducerReport& pr = board->producers[p];
    r.sent += pr.sent.load(std::memory_order_acquire);
    r.errors += pr.errors;
    r.back_pressure_waits += pr.back_pressure_waits;
    first_start = std::min(first_start, pr.start_ns);
    last_end = std::max(last_end, pr.end_ns);
  }
  if (last_end > first_start) r.send_rps = static_cast<double>(r.sent) / (static_cast<double>(last_end - first_start) / 1e9);
  r.received_min = UINT64_MAX;
  r.deliver_rps = o.consumers > 0 ? 1e300 : 0;
  for (std::uint32_t c = 0; c < o.consumers; ++c) {
    const Board::ConsumerReport& cr = board->consumers[c];
    const std::uint64_t got = cr.received.load(std::memory_order_acquire);
    r.received_min = std::min(r.received_min, got);
    r.errors += cr.errors;
    r.lost = std::max(r.lost, r.sent > got ? r.sent - got : 0);
    const std::int64_t span = cr.last_ns - first_start;
    const double rps = span > 0 ? static_cast<double>(got) / (static_cast<double>(span) / 1e9) : 0;
    r.deliver_rps = std::min(r.deliver_rps, rps);
    r.latency.merge(cr.latency);
  }
  if (o.consumers == 0) {
    r.received_min = 0;
    r.deliver_rps = r.send_rps;
  }
  r.mb_per_sec = r.deliver_rps * o.record_size / 1e6;
  for (std::uint32_t p = 0; p < o.partitions && p < kMaxPartitions; ++p)
    r.partition_records.push_back(board->partition_records[p].load(std::memory_order_relaxed));
  for (std::uint32_t p = 0; p < o.producers; ++p) r.ack_latency.merge(board->producers[p].ack_latency);
  munmap(shared, sizeof(Board));
  if (Result<TopicInfo> described = client->describe_topic(topic); described.ok()) {
    for (const PartitionStats& s : described->partitions) r.log_bytes += s.log_bytes;
    if (last_end > first_start) r.log_mb_per_sec = static_cast<double>(r.log_bytes) / 1e6 / (static_cast<double>(last_end - first_start) / 1e9);
  }
  if (phase.catch_up && r.log_bytes > 0) WEFT_TRY_VOID(catch_up(o, client, topic, r));
  if (phase.keep_topic) r.topic = topic;
  else (void)client->delete_topic(topic);
  return r;
}

}  // namespace

std::uint64_t parse_size(const std::string& text) {
  std::uint64_t value = 0;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc{} || end == text.data()) return 0;
  const std::string_view unit(end, static_cast<std::size_t>(text.data() + text.size() - end));
  if (unit.empty()) return value;
  if (unit == "k" || unit == "K") return value << 10;
  if (unit == "m" || unit == "M") return value << 20;
  if (unit == "g" || unit == "G") return value << 30;
  return 0;
}

int run_perf(const PerfOptions& in) {
  PerfOptions o = in;
  if (o.producers > kMaxProducers || o.consumers > kMaxConsumers || o.partitions > kMaxPartitions) {
    std::fprintf(stderr, "weft perf: at most %u producers, %u consumers and %u partitions\n", kMaxProducers, kMaxConsumers, kMaxPartitions);
    return 2;
  }
  if (o.records == 0 && o.duration_s <= 0) {
    std::fprintf(stderr, "weft perf: give --records N or --duration S\n");
    return 2;
  }
  if (o.duration_s > 0) o.records = 0;
  set_log_level(LogLevel::kWarn);  // the embedded node's info lines would break the report

  // The node: a running weftd (--socket), or one embedded here that child processes reach over
  // a private socket, exactly as they would reach weftd.
  std::unique_ptr<Node> node;
  std::unique_ptr<LocalServer> server;
  std::shared_ptr<Client> client;
  std::string socket = o.socket;
  std::string node_description;
  char temp_dir[] = "/tmp/weft-perf-XXXXXX";
  bool made_temp = false;
  std::string log_dir;  // removed at the end
  if (!o.data_dir.empty() && o.use_socket) {
    std::fprintf(stderr, "weft perf: --data-dir is for the embedded node; a running weftd keeps its logs in its own\n");
    return 2;
  }
  if (o.bytes > 0) {
    // A one-record batch takes its 61-byte header, ~10 bytes of record framing and the value.
    o.records = std::max<std::uint64_t>(1, o.bytes / (o.record_size + 71) / o.producers);
    o.duration_s = 0;
  }
  if (o.use_socket) {
    Result<std::shared_ptr<Client>> c = Client::connect(socket);
    if (!c.ok()) {
      std::fprintf(stderr, "weft perf: %s\n", c.error().message.c_str());
      return 4;
    }
    client = *c;
    node_description = client->describe();
  } else {
    NodeOptions options;
    options.prefer_hugepages = o.hugepages;
    if (!o.data_dir.empty()) {
      log_dir = o.data_dir + "/weft-perf-" + std::to_string(getpid());
      storage::SegmentOptions segment;
      segment.io_uring = o.io_uring;
      segment.direct_io = o.log_writes == "direct";
      storage::use_segment_logs(options, log_dir, segment);
    }
    Result<std::unique_ptr<Node>> started = Node::start(options);
    if (!started.ok()) {
      std::fprintf(stderr, "weft perf: %s\n", started.error().message.c_str());
      return 1;
    }
    node = std::move(*started);
    client = Client::embedded(*node);
    if (!o.threads) {
      if (mkdtemp(temp_dir) == nullptr) {
        std::perror("weft perf: mkdtemp");
        return 1;
      }
      made_temp = true;
      socket = std::string(temp_dir) + "/weftd.sock";
      LocalServerOptions so;
      so.socket_path = socket;
      so.socket_mode = 0600;
      Result<std::unique_ptr<LocalServer>> s = LocalServer::start(*node, so);
      if (!s.ok()) {
        std::fprintf(stderr, "weft perf: %s\n", s.error().message.c_str());
        return 1;
      }
      server = std::move(*s);
    }
    node_description = "embedded node";
  }
  const bool progress = !o.json && isatty(STDERR_FILENO) != 0;

  double memcpy_gbs = 0, pingpong_ns = 0;
  if (o.baselines) {
    memcpy_gbs = bench::memcpy_gb_per_sec(std::size_t{64} << 20, 0.3);
    if (bench::cpu_count() >= 2) pingpong_ns = bench::pingpong_one_way_ns(0, 1, 200'000);
  }
  // The disk under the data directory, measured in this run before the node writes to it.
  const bool logged = !o.data_dir.empty();
  bench::DiskWrite disk_write;
  bench::DiskRead disk_read;
  bench::SyncLatency disk_sync;
  if (logged && o.baselines) {
    if (progress) std::fprintf(stderr, "  measuring the disk under %s ...", o.data_dir.c_str());
    disk_write = bench::disk_sequential_write(o.data_dir, std::uint64_t{1} << 30);
    disk_read = bench::disk_sequential_read(o.data_dir, std::uint64_t{1} << 30);
    disk_sync = bench::disk_write_fdatasync_latency(o.data_dir, 2000);
    if (progress) std::fprintf(stderr, "\r%100s\r", "");
    for (const std::string* error : {&disk_write.error, &disk_read.error, &disk_sync.error})
      if (!error->empty()) std::fprintf(stderr, "weft perf: disk baseline: %s\n", error->c_str());
  }

  Phase throughput{"throughput", o.records, o.duration_s, o.rate, o.batch_records, o.rate > 0};
  throughput.catch_up = logged;
  throughput.keep_topic = logged;  // replayed by a batch reader during the second latency run
  Result<PhaseResult> t = run_phase(o, throughput, client, socket, progress);
  Result<PhaseResult> l = PhaseResult{};
  const bool run_latency = o.latency_records > 0 && o.consumers > 0;
  if (t.ok() && run_latency) {
    Phase latency{"latency", o.latency_records, 0, o.latency_rate, 1, true};
    l = run_phase(o, latency, client, socket, progress);
  }
  // The same latency run while a batch job replays the throughput run's log at full speed.
  Result<PhaseResult> lb = PhaseResult{};
  if (t.ok() && l.ok() && run_latency && logged && !t->topic.empty()) {
    Phase latency{"latency-replay", o.latency_records, 0, o.latency_rate, 1, true};
    latency.background_topic = t->topic;
    lb = run_phase(o, latency, client, socket, progress);
  }
  if (t.ok() && !t->topic.empty()) (void)client->delete_topic(t->topic);
  if (!lb.ok()) {
    std::fprintf(stderr, "weft perf: %s\n", lb.error().message.c_str());
    return 1;
  }
  // Acknowledgements: each producer sends one record and waits for it, over and over.
  Result<PhaseResult> a = PhaseResult{};
  const bool run_acks = logged && o.acks != "0" && o.ack_records > 0;
  if (t.ok() && l.ok() && run_acks) {
    Phase acks{"acks", o.ack_records, 5.0, 0, 1, false};  // at most 5 s: with interval=MS each wait takes up to MS
    acks.wait_each = true;
    PerfOptions quiet = o;
    quiet.consumers = 0;
    a = run_phase(quiet, acks, client, socket, progress);
  }
  const std::string memory = t.ok() ? t->memory : std::string();  // hugepages, or why not
  server.reset();
  if (node) node->stop();
  if (made_temp) rmdir(temp_dir);
  if (!log_dir.empty()) {
    // The runs' topics were deleted: their folders go on the storage's deleter thread first.
    (void)storage::wait_for_log_deletions(10'000);
    std::error_code ec;
    std::filesystem::remove_all(log_dir, ec);
    if (ec) std::fprintf(stderr, "weft perf: %s stays: %s\n", log_dir.c_str(), ec.message().c_str());
  }
  // Again after the runs (an embedded node stopped by now): the hypervisor may move the two cpus meanwhile.
  const double pingpong_after_ns = o.baselines && bench::cpu_count() >= 2 ? bench::pingpong_one_way_ns(0, 1, 200'000) : 0;
  if (!t.ok() || !l.ok() || !a.ok()) {
    std::fprintf(stderr, "weft perf: %s\n", (!t.ok() ? t.error() : (!l.ok() ? l.error() : a.error())).message.c_str());
    return 1;
  }
  const PhaseResult& ar = *a;
  const PhaseResult& tr = *t;
  const PhaseResult& lr = *l;
  const LatencyHistogram& h = run_latency ? lr.latency : tr.latency;
  const std::uint64_t errors = tr.errors + lr.errors + ar.errors + lb->errors;
  const LatencyHistogram& replayed = lb->latency;
  const LatencyHistogram& acked = ar.ack_latency;
  const double ack_rps = ar.send_rps;
  const double write_ratio = disk_write.mb_per_sec > 0 ? tr.log_mb_per_sec / disk_write.mb_per_sec : 0;
  const double read_ratio = disk_read.mb_per_sec > 0 ? tr.catch_up_mb_per_sec / disk_read.mb_per_sec : 0;
  const double ack_ratio = disk_sync.p99_ns > 0 ? static_cast<double>(acked.percentile(0.99)) / static_cast<double>(disk_sync.p99_ns) : 0;
  const double p50 = static_cast<double>(h.percentile(0.5));
  const double memcpy_ratio = memcpy_gbs > 0 ? tr.mb_per_sec / 1e3 / memcpy_gbs : 0;
  const double pingpong_ratio = pingpong_ns > 0 ? p50 / pingpong_ns : 0;
  std::string warning = bench::placement_warning(pingpong_ns, pingpong_after_ns);
  if (bench::cpu_count() < static_cast<int>(o.producers + o.consumers))
    warning += std::string(warning.empty() ? "" : "; ") + "fewer cpus than producers and consumers: they share cpus";

  if (o.json) {
    std::printf("{\"records_per_sec\":%.0f,\"send_records_per_sec\":%.0f,\"mb_per_sec\":%.1f,", tr.deliver_rps, tr.send_rps, tr.mb_per_sec);
    std::printf("\"latency_ns\":{\"rate\":%" PRIu64 ",\"count\":%" PRIu64 ",\"p50\":%" PRIu64 ",\"p90\":%" PRIu64 ",\"p99\":%" PRIu64
                ",\"p999\":%" PRIu64 ",\"max\":%" PRIu64 "},",
                run_latency ? o.latency_rate : o.rate, h.count(), h.percentile(0.5), h.percentile(0.9), h.percentile(0.99),
                h.percentile(0.999), h.max());
    std::printf("\"baseline\":{\"memcpy_gb_per_sec\":%.2f,\"pingpong_one_way_ns\":%.1f,\"pingpong_after_ns\":%.1f", memcpy_gbs, pingpong_ns,
                pingpong_after_ns);
    if (logged)
      std::printf(",\"disk_write_mb_per_sec\":%.1f,\"disk_read_mb_per_sec\":%.1f,\"fdatasync_p50_ns\":%" PRIu64 ",\"fdatasync_p99_ns\":%" PRIu64,
                  disk_write.mb_per_sec, disk_read.mb_per_sec, disk_sync.p50_ns, disk_sync.p99_ns);
    std::printf("},");
    if (logged && replayed.count() > 0)
      std::printf("\"latency_during_replay_ns\":{\"p50\":%" PRIu64 ",\"p99\":%" PRIu64 ",\"p999\":%" PRIu64 ",\"replay_mb_per_sec\":%.1f},",
                  replayed.percentile(0.5), replayed.percentile(0.99), replayed.percentile(0.999), lb->background_mb_per_sec);
    if (logged) {
      std::printf("\"log\":{\"fsync\":\"%s\",\"writes\":\"%s\",\"bytes\":%" PRIu64 ",\"produce_mb_per_sec\":%.1f,\"produce_vs_disk_write\":%.3f,"
                  "\"catch_up_mb_per_sec\":%.1f,\"catch_up_records_per_sec\":%.0f,\"catch_up_vs_disk_read\":%.3f},",
                  o.fsync.c_str(), o.log_writes == "buffered" ? "buffered" : o.io_uring ? "io_uring" : "pwrite", tr.log_bytes, tr.log_mb_per_sec, write_ratio, tr.catch_up_mb_per_sec, tr.catch_up_records_per_sec, read_ratio);
      if (run_acks)
        std::printf("\"acks_run\":{\"acks\":\"%s\",\"records_per_sec\":%.0f,\"p50_ns\":%" PRIu64 ",\"p99_ns\":%" PRIu64 ",\"max_ns\":%" PRIu64
                    ",\"p99_vs_fdatasync_p99\":%.2f},",
                    o.acks.c_str(), ack_rps, acked.percentile(0.5), acked.percentile(0.99), acked.max(), ack_ratio);
    }
    std::printf("\"ratios\":{\"throughput_vs_memcpy\":%.3f,\"p50_vs_pingpong\":%.2f},", memcpy_ratio, pingpong_ratio);
    std::printf("\"partitions\":[");
    for (std::size_t p = 0; p < tr.partition_records.size(); ++p)
      std::printf("%s{\"partition\":%zu,\"records\":%" PRIu64 "}", p ? "," : "", p, tr.partition_records[p]);
    std::printf("],\"config\":{\"producers\":%u,\"consumers\":%u,\"partitions\":%u,\"record_size\":%u,\"records\":%" PRIu64
                ",\"duration_s\":%.1f,\"batch_records\":%u,\"acks\":\"%s\",\"wait\":\"%s\",\"mode\":\"%s\",\"node\":\"%s\",\"ring_bytes\":%" PRIu64
                ",\"ring_memory\":\"%s\",\"flow_control\":%s},",
                o.producers, o.consumers, o.partitions, o.record_size, o.records, o.duration_s, o.batch_records, o.acks.c_str(),
                o.wait.c_str(), o.threads ? "threads" : "processes", node_description.c_str(), o.ring_bytes, memory.c_str(),
                o.flow_control ? "true" : "false");
    std::printf("\"sent\":%" PRIu64 ",\"lost\":%" PRIu64 ",\"back_pressure_waits\":%" PRIu64 ",\"warning\":\"%s\",\"errors\":%" PRIu64 "}\n",
                tr.sent, tr.lost, tr.back_pressure_waits, warning.c_str(), errors);
    return errors == 0 ? 0 : 1;
  }
  std::printf("weft perf: %u producer%s, %u consumer%s (%s, %s), %u partition%s, %u-byte values, acks=%s, %s\n", o.producers,
              o.producers == 1 ? "" : "s", o.consumers, o.consumers == 1 ? "" : "s", o.threads ? "threads" : "processes",
              o.wait.c_str(), o.partitions, o.partitions == 1 ? "" : "s", o.record_size, o.acks.c_str(), node_description.c_str());
  std::printf("flow:       %s\n", o.flow_control ? "consumers hold producers back (flow.control=consumers)"
                                                  : "none: a consumer that falls a ring behind is lapped");
  std::printf("machine:    %s\n", bench::topology().c_str());
  if (!memory.empty()) std::printf("ring memory: %s per partition\n", memory.c_str());
  std::printf("\n%-34s %14s %12s\n", "", "records/s", "MB/s");
  std::printf("%-34s %14s %12.1f\n", "sent (all producers)", format_count(tr.send_rps).c_str(), tr.send_rps * o.record_size / 1e6);
  std::printf("%-34s %14s %12.1f\n", "delivered (per consumer, slowest)", format_count(tr.deliver_rps).c_str(), tr.mb_per_sec);
  if (run_latency || o.rate > 0) {
    std::printf("\nlatency, one-way, at %s records/s per producer (%" PRIu64 " records):\n",
                format_count(static_cast<double>(run_latency ? o.latency_rate : o.rate)).c_str(), h.count());
    std::printf("  p50 %" PRIu64 " ns   p90 %" PRIu64 " ns   p99 %" PRIu64 " ns   p99.9 %" PRIu64 " ns   max %" PRIu64 " ns\n",
                h.percentile(0.5), h.percentile(0.9), h.percentile(0.99), h.percentile(0.999), h.max());
  }
  if (o.partitions > 1) {
    std::printf("\nper partition (share of records sent):");
    for (std::size_t p = 0; p < tr.partition_records.size(); ++p)
      std::printf("%s p%zu %.1f%%", p % 8 == 0 ? "\n " : "", p,
                  tr.sent ? 100.0 * static_cast<double>(tr.partition_records[p]) / static_cast<double>(tr.sent) : 0.0);
    std::printf("\n");
  }
  if (logged) {
    std::printf("\nlog (fsync=%s, %s) in %s:\n", o.fsync.c_str(),
                o.log_writes == "buffered" ? "buffered writes" : o.io_uring ? "direct writes with io_uring where allowed" : "direct writes with pwrite",
                o.data_dir.c_str());
    std::printf("  produced into the log          %8.1f MB/s   (%.2f GB, every record acknowledged at acks=%s)\n", tr.log_mb_per_sec,
                static_cast<double>(tr.log_bytes) / 1e9, o.acks.c_str());
    std::printf("  catch-up read from segments    %8.1f MB/s   %s records/s, page cache dropped first\n", tr.catch_up_mb_per_sec,
                format_count(tr.catch_up_records_per_sec).c_str());
    if (replayed.count() > 0)
      std::printf("  latency while a batch job replays the log (%.0f MB/s):\n    p50 %" PRIu64 " ns   p99 %" PRIu64 " ns   p99.9 %" PRIu64
                  " ns   (without: p50 %" PRIu64 ", p99 %" PRIu64 ")\n",
                  lb->background_mb_per_sec, replayed.percentile(0.5), replayed.percentile(0.99), replayed.percentile(0.999),
                  h.percentile(0.5), h.percentile(0.99));
    if (run_acks) {
      std::printf("  send, then wait (acks=%s)      %8s records/s with %u producer%s\n", o.acks.c_str(), format_count(ack_rps).c_str(),
                  o.producers, o.producers == 1 ? "" : "s");
      std::printf("    acknowledged in  p50 %" PRIu64 " ns   p99 %" PRIu64 " ns   max %" PRIu64 " ns\n", acked.percentile(0.5),
                  acked.percentile(0.99), acked.max());
    }
  }
  if (o.baselines) {
    std::printf("\nbaselines (same run):\n");
    if (logged) {
      std::printf("  disk sequential write        %8.1f MB/s    log produce = %.0f%% of it (%s)\n", disk_write.mb_per_sec,
                  write_ratio * 100, disk_write.mode.c_str());
      std::printf("  disk sequential read         %8.1f MB/s    catch-up = %.0f%% of it (%s)\n", disk_read.mb_per_sec, read_ratio * 100,
                  disk_read.mode.c_str());
      std::printf("  4 KiB write + fdatasync      p50 %" PRIu64 " ns, p99 %" PRIu64 " ns%s\n", disk_sync.p50_ns, disk_sync.p99_ns,
                  run_acks ? (" (ack p99 = " + std::to_string(ack_ratio).substr(0, 4) + "x it)").c_str() : "");
    }
    std::printf("  memcpy                       %8.2f GB/s    delivered = %.0f%% of it\n", memcpy_gbs, memcpy_ratio * 100);
    if (pingpong_ns > 0) {
      std::printf("  cache-line ping-pong one-way %8.1f ns      p50 = %.1fx it", pingpong_ns, pingpong_ratio);
      if (pingpong_after_ns > 0) std::printf(" (%.1f ns after the runs)", pingpong_after_ns);
      std::printf("\n");
    }
  }
  std::printf("\nsent %" PRIu64 ", lost to laps %" PRIu64 ", back-pressure waits %" PRIu64 ", errors %" PRIu64 "\n", tr.sent, tr.lost,
              tr.back_pressure_waits, errors);
  if (!warning.empty()) std::printf("warning: %s\n", warning.c_str());
  return errors == 0 ? 0 : 1;
}

}  // namespace weft::cli
