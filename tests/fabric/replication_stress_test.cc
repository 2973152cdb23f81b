// Replication with every replicator on its own thread (as each node runs its own), over TCP,
// while the leader's log grows: 3 replicas end byte-for-byte equal and the high watermark
// reaches the end. Clean under ThreadSanitizer: replicators share nothing but the transport.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <thread>

#include "memory_replica_log.h"
#include "weft/fabric/replication.h"
#include "weft/transport/tcp.h"

namespace weft::test {
namespace {

TEST(ReplicationStress, ThreeThreadsThreeReplicasOneLog) {
  auto transport = make_tcp_transport();
  ReplicationOptions options;
  options.region_bytes = 512 * 1024;
  options.max_write_bytes = 128 * 1024;
  options.replica_lag_max_ms = 60'000;  // this test is about bytes, not the in-sync set
  std::vector<std::unique_ptr<Replicator>> nodes;
  for (NodeId id = 1; id <= 3; ++id) nodes.push_back(Replicator::start(*transport, id, "127.0.0.1:0", options).value());
  const PartitionId p{"stress", 0};
  MemoryReplicaLog logs[3];
  ASSERT_TRUE(nodes[0]->lead(p, &logs[0], 1, {1, 2, 3}, {1, 2, 3}).ok());
  ASSERT_TRUE(nodes[1]->follow(p, &logs[1], 1, 1, nodes[0]->address()).ok());
  ASSERT_TRUE(nodes[2]->follow(p, &logs[2], 1, 1, nodes[0]->address()).ok());

  constexpr int kBatches = 3'000;
  std::atomic<bool> done{false};
  std::atomic<bool> finished{false};
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
  std::thread leader([&] {
    int produced = 0;
    while (!done.load()) {
      // The leader's thread alone touches its log: the producer runs between rounds.
      for (int i = 0; i < 8 && produced < kBatches; ++i, ++produced) {
        logs[0].produce(1 + produced % 30, 1, std::byte{static_cast<unsigned char>(produced)}, 20 + static_cast<std::size_t>(produced % 900));
      }
      nodes[0]->run_once(produced < kBatches ? 0 : 1);
      if (produced == kBatches && nodes[0]->high_watermark(p) == logs[0].log_end()) finished = true;
      if (finished.load() || std::chrono::steady_clock::now() > deadline) done = true;
    }
  });
  std::thread f1([&] {
    while (!done.load()) nodes[1]->run_once(1);
  });
  std::thread f2([&] {
    while (!done.load()) nodes[2]->run_once(1);
  });
  leader.join();
  f1.join();
  f2.join();
  ASSERT_TRUE(finished.load()) << "the high watermark did not reach the leader's end in 120 s";
  EXPECT_EQ(logs[1].batches(), logs[0].batches());
  EXPECT_EQ(logs[2].batches(), logs[0].batches());
  EXPECT_EQ(logs[0].batches().size(), static_cast<std::size_t>(kBatches));
}

}  // namespace
}  // namespace weft::test
