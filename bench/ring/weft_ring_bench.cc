// weft-ring-bench: the partition ring end to end across two processes (a producer process and
// a consumer process, each pinned to its own core), beside baselines measured in the same run:
// memcpy over a buffer the size of the ring, a cache-line ping-pong between two processes,
// boost::lockfree::spsc_queue between two threads, and a raw stream of 4 KiB blocks between two
// processes on the same two cpus (what batches could move at best there).
//
//   weft-ring-bench [--records N] [--batch-run-records N] [--value-bytes B] [--batch-records K]
//                   [--rate R] [--latency-records N] [--capacity BYTES] [--wait spin|yield|park]
//                   [--shared | --exclusive] [--no-hugepages] [--cpus A,B] [--json]
#include <sched.h>
#include <sys/mman.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <boost/lockfree/spsc_queue.hpp>
#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "baselines.h"
#include "weft/fabric/histogram.h"
#include "weft/fabric/record_batch.h"
#include "weft/fabric/ring.h"
#include "weft/fabric/shared_memory.h"

namespace weft::bench {
namespace {

struct Options {
  std::uint64_t records = 20'000'000;
  std::uint64_t batch_run_records = 50'000'000;
  std::uint64_t latency_records = 300'000;
  std::uint64_t rate = 100'000;
  std::size_t value_bytes = 64;
  std::uint32_t batch_records = 64;
  std::size_t capacity = 8u << 20;
  WaitKind wait = WaitKind::kSpin;
  // One producer: it holds the ring exclusively (plain-store claims), as Aeron's exclusive
  // publication does; --shared measures the compare-and-swap path any number can share.
  ProducerMode mode = ProducerMode::kExclusive;
  bool hugepages = true;
  bool json = false;
  int cpu_producer = 0;
  int cpu_consumer = 1;
};

[[noreturn]] void usage(const char* message, int exit_code = 2) {
  std::fprintf(stderr,
               "weft-ring-bench: %s\n"
               "usage: weft-ring-bench [--records N] [--batch-run-records N] [--value-bytes B]\n"
               "         [--batch-records K] [--rate R] [--latency-records N] [--capacity BYTES]\n"
               "         [--wait spin|yield|park] [--shared | --exclusive] [--no-hugepages] [--cpus A,B] [--json]\n",
               message);
  std::exit(exit_code);
}

std::uint64_t parse_count(const char* flag, const char* text) {
  char* end = nullptr;
  const unsigned long long v = std::strtoull(text, &end, 10);
  std::uint64_t scale = 1;
  if (end != nullptr && (*end == 'k' || *end == 'K')) scale = 1000, ++end;
  if (end != nullptr && (*end == 'M' || *end == 'm')) scale = 1'000'000, ++end;
  if (end == text || (end != nullptr && *end != '\0')) usage((std::string(flag) + " takes a number").c_str());
  return v * scale;
}

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string_view a = argv[i];
    auto next = [&]() -> const char* {
      if (i + 1 >= argc) usage((std::string(a) + " needs a value").c_str());
      return argv[++i];
    };
    if (a == "--records") o.records = parse_count("--records", next());
    else if (a == "--batch-run-records") o.batch_run_records = parse_count("--batch-run-records", next());
    else if (a == "--latency-records") o.latency_records = parse_count("--latency-records", next());
    else if (a == "--rate") o.rate = parse_count("--rate", next());
    else if (a == "--value-bytes") o.value_bytes = parse_count("--value-bytes", next());
    else if (a == "--batch-records") o.batch_records = static_cast<std::uint32_t>(parse_count("--batch-records", next()));
    else if (a == "--capacity") o.capacity = parse_count("--capacity", next());
    else if (a == "--exclusive") o.mode = ProducerMode::kExclusive;
    else if (a == "--shared") o.mode = ProducerMode::kShared;
    else if (a == "--no-hugepages") o.hugepages = false;
    else if (a == "--json") o.json = true;
    else if (a == "--wait") {
      const std::string_view w = next();
      if (w == "spin") o.wait = WaitKind::kSpin;
      else if (w == "yield") o.wait = WaitKind::kYield;
      else if (w == "park") o.wait = WaitKind::kPark;
      else usage("--wait takes spin, yield or park");
    } else if (a == "--cpus") {
      if (std::sscanf(next(), "%d,%d", &o.cpu_producer, &o.cpu_consumer) != 2) usage("--cpus takes A,B");
    } else if (a == "--help" || a == "-h") {
      usage("one producer process and one consumer process on a shared-memory ring", 0);
    } else {
      usage(("unknown flag " + std::string(a)).c_str());
    }
  }
  if (o.value_bytes < 16) usage("--value-bytes must be at least 16 (sequence and send time)");
  if (o.batch_records == 0 || o.batch_records > 4096) usage("--batch-records must be 1..4096");
  if (o.records == 0 || o.rate == 0) usage("--records and --rate must be positive");
  return o;
}

// What the consumer process reports back, in memory shared across the fork.
struct Report {
  std::atomic<std::uint32_t> consumer_ready;
  std::atomic<std::uint32_t> go;
  std::atomic<std::int64_t> start_ns;
  std::uint64_t records = 0;
  std::uint64_t errors = 0;
  std::uint64_t lapped = 0;
  std::uint64_t checksum = 0;
  std::int64_t last_ns = 0;
  LatencyHistogram latency;
};

struct RunResult {
  double seconds = 0;
  std::uint64_t records = 0;
  std::uint64_t errors = 0;
  std::uint64_t back_pressured = 0;
  LatencyHistogram latency;
  std::string backing;  // how this run's ring memory was backed, and why not hugepages if not
};

struct Run {
  std::uint64_t records;
  std::uint32_t batch_records;
  bool paced;
};

// Consumer process: reads every batch, checks each record's sequence, sums every value word,
// and (paced) records now - send time. It frees ring space behind itself, standing in for the
// node's log writer.
void consume(Ring ring, const Options& o, const Run& run, Report& report) {
  if (!pin_to_cpu(o.cpu_consumer)) std::fprintf(stderr, "weft-ring-bench: could not pin the consumer to cpu %d\n", o.cpu_consumer);
  Result<Consumer> attached = Consumer::attach(ring);
  if (!attached.ok()) {
    std::fprintf(stderr, "consumer: %s\n", attached.error().message.c_str());
    _exit(3);
  }
  Consumer& consumer = *attached;
  RingOwner owner(ring);
  const std::uint64_t release_every = ring.capacity_bytes() / 8;
  std::uint64_t released = 0;
  report.consumer_ready.store(1, std::memory_order_release);
  std::uint64_t expected = 0;
  std::uint64_t checksum = 0;
  // Bounded: ten seconds with nothing to read means the producer is gone.
  std::int64_t idle_since = 0;  // when the current run of empty waits began; 0: not idle
  RingBatch batch;
  while (expected < run.records) {
    const PollStatus status = consumer.wait(batch, o.wait, 1'000'000'000);
    if (status == PollStatus::kEmpty) {  // each empty wait lasted a second
      if (idle_since == 0) idle_since = monotonic_ns();
      else if (monotonic_ns() - idle_since > 10'000'000'000) break;
      continue;
    }
    idle_since = 0;
    if (status != PollStatus::kOk) {
      ++report.lapped;
      break;
    }
    const std::int64_t now = run.paced ? monotonic_ns() : 0;
    // Reads one record: its sequence, a sum over every value word, and (paced) its latency.
    auto take = [&](const RecordView& r) {
      if (!r.value || r.value->size() < 16) {
        ++report.errors;
        return;
      }
      const std::byte* v = r.value->data();
      std::uint64_t sequence;
      std::memcpy(&sequence, v, 8);
      if (sequence != expected) ++report.errors;
      expected = sequence + 1;
      for (std::size_t i = 0; i + 8 <= r.value->size(); i += 8) {
        std::uint64_t word;
        std::memcpy(&word, v + i, 8);
        checksum += word;
      }
      if (run.paced) {
        std::int64_t sent;
        std::memcpy(&sent, v + 8, 8);
        report.latency.record(static_cast<std::uint64_t>(std::max<std::int64_t>(now - sent, 0)));
      }
    };
    // Every length is checked as the records are decoded, in one pass. The CRC is not
    // re-checked: the producer computed it over these very bytes in shared memory.
    RecordView r;
    if (batch.records == 1) {
      if (decode_single_record_batch(batch.bytes, r))
        take(r);
      else
        ++report.errors;
    } else if (Result<BatchView> view = BatchView::parse_header(batch.bytes, false); view.ok()) {
      RecordReader reader(*view);
      while (reader.next(r)) take(r);
      if (reader.failed()) ++report.errors;
    } else {
      ++report.errors;
    }
    if (!consumer.validate(batch)) ++report.errors;
    if (consumer.position().value - released >= release_every) {
      owner.advance_reuse_limit({consumer.position(), consumer.next_offset()});
      released = consumer.position().value;
    }
  }
  report.last_ns = monotonic_ns();
  report.records = expected;
  report.checksum = checksum;
}

// Producer (this process): claims, encodes `batch_records` records in place, commits.
RunResult run_once(const Options& o, const Run& run) {
  ShmOptions shm_options;
  shm_options.name = "weft-ring-bench";
  RingConfig config;
  config.capacity_bytes = o.capacity;
  config.max_frame_bytes = std::min<std::size_t>(o.capacity / 4, 1u << 20);
  shm_options.size_bytes = Ring::required_bytes(config);
  shm_options.prefer_hugepages = o.hugepages;
  Result<SharedMemory> memory = SharedMemory::create(shm_options);
  if (!memory.ok()) {
    std::fprintf(stderr, "weft-ring-bench: %s\n", memory.error().message.c_str());
    std::exit(1);
  }
  Result<Ring> ring = Ring::format(memory->bytes(), config);
  if (!ring.ok()) {
    std::fprintf(stderr, "weft-ring-bench: %s\n", ring.error().message.c_str());
    std::exit(1);
  }
  std::vector<std::byte> value(o.value_bytes, std::byte{0x5A});
  RecordInput record;
  record.value = std::span<const std::byte>(value);
  record.timestamp_ms = 1'700'000'000'000;
  // Every record has the same size, so every batch does too.
  std::size_t batch_bytes = kBatchHeaderBytes;
  for (std::uint32_t i = 0; i < run.batch_records; ++i)
    batch_bytes += encoded_record_bytes(record, static_cast<std::int32_t>(i), 0);
  if (batch_bytes > ring->max_batch_bytes()) {
    std::fprintf(stderr, "weft-ring-bench: a batch of %zu bytes exceeds the ring's limit of %zu; use a larger --capacity\n",
                 batch_bytes, ring->max_batch_bytes());
    std::exit(2);
  }

  void* shared = mmap(nullptr, sizeof(Report), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (shared == MAP_FAILED) std::exit(1);
  auto* report = new (shared) Report{};

  const pid_t child = fork();
  if (child < 0) {
    std::perror("weft-ring-bench: fork");
    std::exit(1);
  }
  if (child == 0) {
    consume(*ring, o, run, *report);
    _exit(0);
  }
  // Every exit from here on stops the consumer process first, by its pid.
  auto fail = [child](const char* what) {
    std::fprintf(stderr, "weft-ring-bench: %s\n", what);
    kill(child, SIGKILL);
    waitpid(child, nullptr, 0);
    std::exit(1);
  };
  if (!pin_to_cpu(o.cpu_producer)) std::fprintf(stderr, "weft-ring-bench: could not pin the producer to cpu %d\n", o.cpu_producer);
  Result<Producer> attached = Producer::attach(*ring, o.mode);
  if (!attached.ok()) fail(attached.error().message.c_str());
  Producer& producer = *attached;
  const std::int64_t ready_by = monotonic_ns() + 30'000'000'000;
  while (report->consumer_ready.load(std::memory_order_acquire) == 0) {
    if (monotonic_ns() > ready_by) fail("the consumer process did not start within 30 s");
    if (waitpid(child, nullptr, WNOHANG) == child) {
      std::fprintf(stderr, "weft-ring-bench: the consumer process failed to start\n");
      std::exit(1);
    }
    sched_yield();
  }
  const std::int64_t interval_ns = 1'000'000'000 / static_cast<std::int64_t>(o.rate);

  const std::int64_t start = monotonic_ns();
  std::uint64_t back_pressured = 0;
  std::uint64_t sequence = 0;
  while (sequence < run.records) {
    const auto in_batch = static_cast<std::uint32_t>(std::min<std::uint64_t>(run.batch_records, run.records - sequence));
    std::size_t bytes = batch_bytes;
    if (in_batch != run.batch_records) {
      bytes = kBatchHeaderBytes;
      for (std::uint32_t i = 0; i < in_batch; ++i) bytes += encoded_record_bytes(record, static_cast<std::int32_t>(i), 0);
    }
    std::int64_t send_ns = 0;
    if (run.paced) {
      // Latency is measured from the scheduled send time, so a stalled producer shows up.
      send_ns = start + static_cast<std::int64_t>(sequence) * interval_ns;
      while (monotonic_ns() < send_ns) {
      }
    }
    Claim claim;
    ClaimStatus status;
    std::uint64_t waits = 0;
    while ((status = producer.try_claim(bytes, in_batch, claim)) == ClaimStatus::kBackPressured) {
      ++back_pressured;
      // Bounded: if the consumer stopped freeing space (it died or gave up), stop too.
      if (++waits % (1u << 20) == 0 && waitpid(child, nullptr, WNOHANG) == child) {
        std::fprintf(stderr, "weft-ring-bench: the consumer process exited early\n");
        std::exit(1);
      }
    }
    if (status != ClaimStatus::kOk) fail("a claim failed for a reason other than back-pressure");
    if (in_batch == 1) {  // the one-pass encoder for one-record batches
      std::memcpy(value.data(), &sequence, 8);
      std::memcpy(value.data() + 8, &send_ns, 8);
      ++sequence;
      (void)producer.commit(claim, encode_single_record_batch(claim.batch, record).size());
      continue;
    }
    BatchBuilder builder(claim.batch);
    for (std::uint32_t i = 0; i < in_batch; ++i) {
      std::memcpy(value.data(), &sequence, 8);
      std::memcpy(value.data() + 8, &send_ns, 8);
      (void)builder.append(record);
      ++sequence;
    }
    (void)producer.commit(claim, builder.finish().size());
  }
  int status = 0;
  waitpid(child, &status, 0);
  RunResult result;
  result.backing = memory->describe();
  result.seconds = static_cast<double>(report->last_ns - start) / 1e9;
  result.records = report->records;
  result.errors = report->errors + report->lapped + (WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : 1);
  result.back_pressured = back_pressured;
  result.latency = report->latency;
  if (result.records != run.records) ++result.errors;
  munmap(shared, sizeof(Report));
  return result;
}

// boost::lockfree::spsc_queue moving 64-byte items between two pinned threads of one process.
double spsc_items_per_sec(const Options& o, std::uint64_t items) {
  struct Item {
    std::uint64_t words[8];
  };
  static_assert(sizeof(Item) == 64);
  auto queue = std::make_unique<boost::lockfree::spsc_queue<Item, boost::lockfree::capacity<65536>>>();
  std::uint64_t sum = 0;
  std::thread consumer([&] {
    pin_to_cpu(o.cpu_consumer);
    Item item{};
    for (std::uint64_t received = 0; received < items;) {
      if (queue->pop(item)) {
        sum += item.words[0];
        ++received;
      }
    }
  });
  pin_to_cpu(o.cpu_producer);
  const auto start = std::chrono::steady_clock::now();
  Item item{};
  for (std::uint64_t i = 0; i < items; ++i) {
    item.words[0] = i;
    while (!queue->push(item)) {
    }
  }
  consumer.join();
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  static std::atomic<std::uint64_t> sink;
  sink.store(sum, std::memory_order_relaxed);  // the sums cannot be elided
  return static_cast<double>(items) / seconds;
}

int main_impl(int argc, char** argv) {
  const Options o = parse(argc, argv);
  if (bench::cpu_count() < 2) std::fprintf(stderr, "weft-ring-bench: fewer than 2 cpus; figures mean little\n");

  // Baselines and runs on the same cores: memcpy on the producer's.
  if (!pin_to_cpu(o.cpu_producer)) std::fprintf(stderr, "weft-ring-bench: could not pin to cpu %d\n", o.cpu_producer);
  if (!o.json) std::printf("weft-ring-bench: %s\n\n", topology().c_str());
  const double memcpy_gbs = memcpy_gb_per_sec(o.capacity, 0.3);
  const double pingpong_ns = pingpong_one_way_ns(o.cpu_producer, o.cpu_consumer, 200'000);
  const double spsc = spsc_items_per_sec(o, std::min<std::uint64_t>(o.records, 20'000'000));
  const double stream_gbs = cross_core_stream_gb_per_sec(o.cpu_producer, o.cpu_consumer, o.capacity, 0.3);

  const RunResult single = run_once(o, Run{o.records, 1, false});
  const RunResult batched = run_once(o, Run{o.batch_run_records, o.batch_records, false});
  const RunResult paced = run_once(o, Run{o.latency_records, 1, true});

  const double single_rps = static_cast<double>(single.records) / single.seconds;
  const double single_mbs = single_rps * static_cast<double>(o.value_bytes) / 1e6;
  const double batched_rps = static_cast<double>(batched.records) / batched.seconds;
  const double batched_mbs = batched_rps * static_cast<double>(o.value_bytes) / 1e6;
  const LatencyHistogram& h = paced.latency;
  const std::uint64_t errors = single.errors + batched.errors + paced.errors;
  // Measured again after the runs: the hypervisor may move the two cpus meanwhile, and then
  // this run's figures belong to two machines.
  const double pingpong_after_ns = pingpong_one_way_ns(o.cpu_producer, o.cpu_consumer, 200'000);
  const std::string placement =
      pingpong_ns <= 0 ? std::string("ping-pong failed; ratios against it are void") : placement_warning(pingpong_ns, pingpong_after_ns);

  if (o.json) {
    std::printf(
        "{\"records_per_sec\": %.0f, \"mb_per_sec\": %.1f, "
        "\"batch\": {\"records_per_batch\": %u, \"records_per_sec\": %.0f, \"value_mb_per_sec\": %.1f, "
        "\"memcpy_ratio\": %.3f, \"stream_ratio\": %.3f}, "
        "\"latency_ns\": {\"rate\": %" PRIu64 ", \"count\": %" PRIu64 ", \"p50\": %" PRIu64 ", \"p90\": %" PRIu64
        ", \"p99\": %" PRIu64 ", \"p999\": %" PRIu64 ", \"max\": %" PRIu64 "}, "
        "\"baseline\": {\"memcpy_gb_per_sec\": %.2f, \"pingpong_one_way_ns\": %.1f, \"pingpong_after_ns\": %.1f, "
        "\"spsc_queue_items_per_sec\": %.0f, \"cross_core_stream_gb_per_sec\": %.2f}, "
        "\"ratios\": {\"records_vs_spsc_queue\": %.2f, \"p50_vs_pingpong\": %.2f}, "
        "\"config\": {\"value_bytes\": %zu, \"capacity_bytes\": %zu, \"producer\": \"%s\", \"wait\": \"%s\", "
        "\"ring_memory\": \"%s\"}, "
        "\"warning\": \"%s\", \"errors\": %" PRIu64 "}\n",
        single_rps, single_mbs, o.batch_records, batched_rps, batched_mbs, batched_mbs / (memcpy_gbs * 1000.0),
        batched_mbs / (stream_gbs * 1000.0), o.rate,
        h.count(), h.percentile(0.50), h.percentile(0.90), h.percentile(0.99), h.percentile(0.999), h.max(), memcpy_gbs,
        pingpong_ns, pingpong_after_ns, spsc, stream_gbs, single_rps / spsc, static_cast<double>(h.percentile(0.50)) / pingpong_ns, o.value_bytes,
        o.capacity, o.mode == ProducerMode::kExclusive ? "exclusive" : "shared",
        o.wait == WaitKind::kSpin ? "spin" : o.wait == WaitKind::kYield ? "yield" : "park", single.backing.c_str(),
        placement.c_str(), errors);
  } else {
    std::printf("ring memory: %s\n\n", single.backing.c_str());
    std::printf("baselines (same run, cpus %d -> %d)\n", o.cpu_producer, o.cpu_consumer);
    std::printf("  memcpy over %zu MiB            %10.2f GB/s\n", o.capacity >> 20, memcpy_gbs);
    std::printf("  cache-line ping-pong one-way  %10.1f ns (%.1f ns after the runs)\n", pingpong_ns, pingpong_after_ns);
    if (!placement.empty()) std::printf("  warning: %s\n", placement.c_str());
    std::printf("  boost spsc_queue, 64 B items  %10.2f M items/s\n", spsc / 1e6);
    std::printf("  cross-core stream, 4 KiB      %10.2f GB/s (raw bytes, one release store a block)\n\n", stream_gbs);
    std::printf("ring, %zu-byte values, %s producer, %s consumer\n", o.value_bytes,
                o.mode == ProducerMode::kExclusive ? "exclusive" : "shared",
                o.wait == WaitKind::kSpin ? "spinning" : o.wait == WaitKind::kYield ? "yielding" : "parked");
    std::printf("  1 record/batch, unpaced       %10.2f M records/s  %8.1f MB/s   %.2fx spsc_queue\n", single_rps / 1e6,
                single_mbs, single_rps / spsc);
    std::printf("  %u records/batch, unpaced     %10.2f M records/s  %8.1f MB/s   %.0f%% of memcpy, %.0f%% of the stream\n",
                o.batch_records, batched_rps / 1e6, batched_mbs, 100.0 * batched_mbs / (memcpy_gbs * 1000.0),
                100.0 * batched_mbs / (stream_gbs * 1000.0));
    std::printf("  latency at %" PRIu64 " records/s (%" PRIu64 " records), one-way:\n", o.rate, h.count());
    std::printf("    p50 %" PRIu64 " ns (%.1fx ping-pong)  p90 %" PRIu64 " ns  p99 %" PRIu64 " ns  p99.9 %" PRIu64
                " ns  max %" PRIu64 " ns\n",
                h.percentile(0.5), static_cast<double>(h.percentile(0.5)) / pingpong_ns, h.percentile(0.9),
                h.percentile(0.99), h.percentile(0.999), h.max());
    std::printf("  producer back-pressured claims: %" PRIu64 " / %" PRIu64 " / %" PRIu64 "\n", single.back_pressured,
                batched.back_pressured, paced.back_pressured);
    std::printf("  errors (lost, out of order, lapped): %" PRIu64 "\n", errors);
  }
  return errors == 0 ? 0 : 1;
}

}  // namespace
}  // namespace weft::bench

int main(int argc, char** argv) { return weft::bench::main_impl(argc, argv); }
