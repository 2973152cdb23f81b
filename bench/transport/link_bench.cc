// The link interface over TCP against the socket it runs on, and replication on top of it.
//
//   RawTcpStream/N        baseline: N-byte send() calls on a loopback TCP socket, a thread recv()s
//   TcpLinkWrite/N        post_write of N bytes into a registered region, a thread polls the peer
//   Replication/R         a leader pushes 1 KiB-record batches to R-1 followers (each replicator
//                         on its own thread, in-memory logs); bytes/s counts the leader's log once
//
// Quote TcpLinkWrite and Replication as ratios of RawTcpStream from the same run.
#include <arpa/inet.h>
#include <benchmark/benchmark.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <thread>
#include <vector>

#include "weft/fabric/record_batch.h"
#include "weft/fabric/replication.h"
#include "weft/transport/tcp.h"

namespace weft {
namespace {

constexpr std::size_t kBytesPerIteration = std::size_t{256} << 20;

void RawTcpStream(benchmark::State& state) {
  const auto chunk = static_cast<std::size_t>(state.range(0));
  const int listener = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t length = sizeof address;
  ::bind(listener, reinterpret_cast<sockaddr*>(&address), sizeof address);
  ::listen(listener, 1);
  getsockname(listener, reinterpret_cast<sockaddr*>(&address), &length);
  const int sender = ::socket(AF_INET, SOCK_STREAM, 0);
  ::connect(sender, reinterpret_cast<sockaddr*>(&address), sizeof address);
  const int receiver = ::accept(listener, nullptr, nullptr);
  const int one = 1, buffer = 4 << 20;
  for (int fd : {sender, receiver}) {
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &buffer, sizeof buffer);
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &buffer, sizeof buffer);
  }
  std::vector<std::byte> out(chunk, std::byte{1});
  for (auto _ : state) {
    std::thread reader([&] {
      std::vector<std::byte> in(std::size_t{1} << 20);
      std::size_t got = 0;
      while (got < kBytesPerIteration) {
        const ssize_t n = ::recv(receiver, in.data(), in.size(), 0);
        if (n <= 0) break;
        got += static_cast<std::size_t>(n);
      }
    });
    for (std::size_t sent = 0; sent < kBytesPerIteration;) {
      const ssize_t n = ::send(sender, out.data(), std::min(chunk, kBytesPerIteration - sent), MSG_NOSIGNAL);
      if (n <= 0) break;
      sent += static_cast<std::size_t>(n);
    }
    reader.join();
  }
  state.SetBytesProcessed(state.iterations() * static_cast<std::int64_t>(kBytesPerIteration));
  ::close(sender);
  ::close(receiver);
  ::close(listener);
}
BENCHMARK(RawTcpStream)->Arg(4 << 10)->Arg(64 << 10)->Arg(1 << 20)->UseRealTime()->Unit(benchmark::kMillisecond);

void TcpLinkWrite(benchmark::State& state) {
  const auto chunk = static_cast<std::size_t>(state.range(0));
  auto transport = make_tcp_transport();
  auto listener = transport->listen("127.0.0.1:0").value();
  auto client = transport->connect(listener->address(), 1'000).value();
  std::unique_ptr<Link> server;
  while (server == nullptr) {
    auto accepted = listener->accept();
    if (accepted.ok()) server = std::move(accepted.value());
  }
  server->accept_writes();
  std::vector<std::byte> region(std::size_t{64} << 20);
  const RegionDescriptor remote = transport->register_region(region).value().descriptor;
  std::vector<std::byte> source(chunk, std::byte{1});
  const std::span<const std::byte> gather[1] = {source};
  const std::size_t writes = kBytesPerIteration / chunk;
  std::array<LinkCompletion, 64> batch;
  for (auto _ : state) {
    std::atomic<bool> failed{false};
    std::thread reader([&] {
      std::array<LinkCompletion, 64> in;
      std::size_t got = 0;
      while (got < writes && !failed.load(std::memory_order_relaxed)) {
        const std::size_t n = server->poll(in);
        for (std::size_t i = 0; i < n; ++i) got += in[i].kind == LinkCompletion::Kind::kWriteReceived ? 1u : 0u;
        if (n == 0) server->wait(10);
      }
    });
    std::uint64_t offset = 0;
    std::size_t done = 0;
    auto collect = [&] {
      const std::size_t n = client->poll(batch);
      for (std::size_t i = 0; i < n; ++i) done += batch[i].kind == LinkCompletion::Kind::kWriteDone ? 1u : 0u;
      return n;
    };
    for (std::size_t posted = 0; posted < writes;) {
      const PostStatus status = client->post_write(remote, offset, gather, 0, 0);
      if (status == PostStatus::kOk) {
        ++posted;
        offset = offset + 2 * chunk > region.size() ? 0 : offset + chunk;
        continue;
      }
      if (status != PostStatus::kQueueFull) {
        failed = true;
        state.SkipWithError("post_write failed");
        break;
      }
      if (collect() == 0) client->wait(1);
    }
    // The link sends only while it is polled: poll until every write is done.
    while (done < writes && !failed.load(std::memory_order_relaxed)) {
      if (collect() == 0) client->wait(1);
    }
    reader.join();
  }
  state.SetBytesProcessed(state.iterations() * static_cast<std::int64_t>(writes * chunk));
}
BENCHMARK(TcpLinkWrite)->Arg(4 << 10)->Arg(64 << 10)->Arg(1 << 20)->UseRealTime()->Unit(benchmark::kMillisecond);

// A leader's log of 1 KiB-record batches (16 records each), read by replication.
class BenchLog final : public ReplicaLog {
 public:
  explicit BenchLog(std::size_t batches) {
    std::vector<std::byte> value(1024, std::byte{0x5a});
    std::vector<std::byte> one(64 << 10);
    BatchBuilder builder(one);
    for (int i = 0; i < 16; ++i) {
      RecordInput r;
      r.value = std::span<const std::byte>(value);
      r.timestamp_ms = 1;
      (void)builder.append(r);
    }
    const std::span<std::byte> built = builder.finish();
    batch_bytes_ = built.size();
    bytes_.resize(batch_bytes_ * batches);
    for (std::size_t b = 0; b < batches; ++b) {
      std::memcpy(bytes_.data() + b * batch_bytes_, built.data(), batch_bytes_);
      stamp_base_offset(std::span(bytes_.data() + b * batch_bytes_, batch_bytes_), Offset{static_cast<std::int64_t>(b * 16)});
      stamp_partition_leader_epoch(std::span(bytes_.data() + b * batch_bytes_, batch_bytes_), 1);
    }
    end_ = Offset{static_cast<std::int64_t>(batches * 16)};
  }
  BenchLog() = default;  // a follower's: counts what it takes
  Offset log_start() const override { return Offset{0}; }
  Offset log_end() const override { return end_; }
  Offset durable_end() const override { return end_; }
  Result<std::size_t> read(Offset offset, std::span<std::byte> out) override {
    const std::size_t first = static_cast<std::size_t>(offset.value / 16) * batch_bytes_;
    const std::size_t n = std::min(out.size() / batch_bytes_ * batch_bytes_, bytes_.size() - first);
    if (n == 0 && first < bytes_.size()) return Error{Errc::kResourceExhausted, "the next batch is larger than the buffer"};
    std::memcpy(out.data(), bytes_.data() + first, n);
    return n;
  }
  Result<std::size_t> append(std::span<const std::byte> batches) override {
    for (std::size_t at = 0; at < batches.size();) {
      WEFT_TRY(BatchView view, BatchView::parse_header(batches.subspan(at), false));
      end_ = view.last_offset() + 1;
      at += view.size_bytes();
    }
    return batches.size();
  }
  Result<void> truncate(Offset end) override {
    end_ = std::min(end_, end);
    return ok();
  }
  Result<void> reset(Offset start) override {
    end_ = start;
    return ok();
  }
  EpochHistory& epochs() override { return epochs_; }
  std::size_t bytes() const { return bytes_.size(); }

 private:
  std::vector<std::byte> bytes_;
  std::size_t batch_bytes_ = 0;
  Offset end_{0};
  EpochHistory epochs_;
};

void Replication(benchmark::State& state) {
  const auto replicas = static_cast<NodeId>(state.range(0));
  auto transport = make_tcp_transport();
  const std::size_t batches = kBytesPerIteration / (16 * 1100);
  BenchLog leader_log(batches);
  std::size_t moved = 0;
  for (auto _ : state) {
    state.PauseTiming();
    std::vector<std::unique_ptr<Replicator>> nodes;
    std::vector<std::unique_ptr<BenchLog>> logs;
    std::vector<NodeId> ids;
    for (NodeId id = 1; id <= replicas; ++id) {
      nodes.push_back(Replicator::start(*transport, id, "127.0.0.1:0").value());
      ids.push_back(id);
    }
    const PartitionId p{"bench", 0};
    (void)nodes[0]->lead(p, &leader_log, 1, ids, ids);
    for (NodeId id = 2; id <= replicas; ++id) {
      logs.push_back(std::make_unique<BenchLog>());
      (void)nodes[static_cast<std::size_t>(id - 1)]->follow(p, logs.back().get(), 1, 1, nodes[0]->address());
    }
    state.ResumeTiming();
    // The leader's thread alone reads its high watermark (a replicator is one thread's).
    std::atomic<bool> done{false};
    std::atomic<bool> finished{false};
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    std::vector<std::thread> threads;
    threads.emplace_back([&, r = nodes[0].get()] {
      while (!done.load(std::memory_order_relaxed)) {
        r->run_once(1);
        if (r->high_watermark(p).value_or(Offset{0}) >= leader_log.log_end()) finished = true;
        if (finished || std::chrono::steady_clock::now() > deadline) done = true;
      }
    });
    for (std::size_t i = 1; i < nodes.size(); ++i) {
      threads.emplace_back([&, r = nodes[i].get()] {
        while (!done.load(std::memory_order_relaxed)) r->run_once(1);
      });
    }
    for (auto& t : threads) t.join();
    if (!finished) state.SkipWithError("replication did not finish in 60 s");
    moved += leader_log.bytes();
  }
  state.SetBytesProcessed(static_cast<std::int64_t>(moved));
}
BENCHMARK(Replication)->Arg(2)->Arg(3)->UseRealTime()->Unit(benchmark::kMillisecond)->Iterations(3);

}  // namespace
}  // namespace weft

BENCHMARK_MAIN();
