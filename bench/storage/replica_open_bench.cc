// What a replica costs to open at a node's start: with its saved epoch history (Kafka's
// leader-epoch checkpoint) against reading its log through for the batches' epochs, beside the
// same run's raw read of the log's bytes (the disk baseline that the scan is bound by).
//
//   build/release/bench/replica_open_bench --benchmark_repetitions=3
#include <benchmark/benchmark.h>
#include <fcntl.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "weft/fabric/record_batch.h"
#include "weft/fabric/replication.h"
#include "weft/node.h"
#include "weft/storage/segment_log.h"

namespace {

constexpr std::size_t kLogBytes = std::size_t{256} << 20;

// One node with one partition whose log holds kLogBytes of 1 KiB records under epochs 1..4.
struct Fixture {
  Fixture() {
    char pattern[] = "/tmp/weft-replica-open-XXXXXX";
    dir = ::mkdtemp(pattern);
    weft::NodeOptions o;
    weft::storage::use_segment_logs(o, dir + "/data");
    o.prefer_hugepages = false;
    node = weft::Node::start(std::move(o)).value();
    weft::TopicConfig config;
    config.ring_capacity_bytes = std::size_t{16} << 20;
    config.max_batch_bytes = std::size_t{1} << 20;
    (void)node->create_topic("t", config).value();
    std::vector<std::byte> buffer(std::size_t{1} << 20);
    const std::string value(1024, 'v');
    weft::RecordInput record;
    record.value = std::as_bytes(std::span(value.data(), value.size()));
    record.timestamp_ms = 1'700'000'000'000;
    std::size_t written = 0;
    for (std::int32_t epoch = 1; epoch <= 4; ++epoch) {
      auto replica = node->replica_log("t", 0).value();
      replica->epochs().assign(epoch, replica->log_end());
      replica->stamp_leader_epoch(epoch);
      replica->save_epochs(weft::EpochSave::kWithTheLog);
      weft::PartitionMemory memory = node->open_partition("t", 0).value();
      weft::Producer producer = weft::Producer::attach(memory.ring).value();
      for (; written < kLogBytes * static_cast<std::size_t>(epoch) / 4; written += buffer.size()) {
        weft::BatchBuilder builder(buffer);
        while (builder.append(record)) {
        }
        const std::span<std::byte> batch = builder.finish();
        while (producer.offer(batch) == weft::ClaimStatus::kBackPressured) node->hurry();
      }
      while (weft::read_log_progress(memory.ring).written < memory.ring.claimed_offset()) node->hurry();
    }
    for (const auto& e : std::filesystem::recursive_directory_iterator(dir)) {
      if (e.path().filename() == "leader-epoch-checkpoint") checkpoint = e.path().string();
      if (e.path().extension() == ".log") segments.push_back(e.path().string());
    }
  }
  ~Fixture() {
    node.reset();
    std::filesystem::remove_all(dir);
  }
  std::string dir;
  std::string checkpoint;
  std::vector<std::string> segments;
  std::unique_ptr<weft::Node> node;
};

Fixture& fixture() {
  static Fixture f;
  return f;
}

void BM_ReplicaOpenFromSavedEpochs(benchmark::State& state) {
  Fixture& f = fixture();
  for (auto _ : state) {
    auto replica = f.node->replica_log("t", 0).value();
    benchmark::DoNotOptimize(replica->epochs().entries().size());
  }
}
BENCHMARK(BM_ReplicaOpenFromSavedEpochs)->Unit(benchmark::kMillisecond);

void BM_ReplicaOpenReadingTheLogThrough(benchmark::State& state) {
  Fixture& f = fixture();
  for (auto _ : state) {
    state.PauseTiming();
    std::filesystem::remove(f.checkpoint);
    state.ResumeTiming();
    auto replica = f.node->replica_log("t", 0).value();  // scans, then saves the history again
    if (replica->epochs().entries().size() != 4) state.SkipWithError("the scan found the wrong epochs");
  }
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations()) * static_cast<std::int64_t>(kLogBytes));
}
BENCHMARK(BM_ReplicaOpenReadingTheLogThrough)->Unit(benchmark::kMillisecond);

// Baseline: read the same segment files with pread in 1 MiB chunks (the page cache holds them,
// as it does for the scan).
void BM_RawReadOfTheLog(benchmark::State& state) {
  Fixture& f = fixture();
  std::vector<char> chunk(std::size_t{1} << 20);
  std::int64_t bytes = 0;
  for (auto _ : state) {
    for (const std::string& path : f.segments) {
      const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
      for (off_t at = 0;; at += static_cast<off_t>(chunk.size())) {
        const ssize_t n = ::pread(fd, chunk.data(), chunk.size(), at);
        if (n <= 0) break;
        bytes += n;
      }
      ::close(fd);
    }
  }
  state.SetBytesProcessed(bytes);
}
BENCHMARK(BM_RawReadOfTheLog)->Unit(benchmark::kMillisecond);

}  // namespace

BENCHMARK_MAIN();
