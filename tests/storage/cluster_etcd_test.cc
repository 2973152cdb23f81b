// The cluster's control plane (weft/fabric/cluster.h) on a real etcd: three members elect one
// controller, a topic's partitions get replicas and leaders, a member that dies without a word
// (its lease runs out) loses its leaderships to in-sync replicas with a new epoch, and an etcd
// that stops freezes the view until it returns. Skipped, saying why, where etcd is missing.
#include <gtest/gtest.h>

#include <chrono>
#include <cstdio>
#include <functional>
#include <memory>
#include <vector>

#include "../etcd_server.h"
#include "../temp_dir.h"
#include "weft/fabric/cluster.h"
#include "weft/storage/etcd_metadata_store.h"

namespace weft::test {
namespace {

using Clock = std::chrono::steady_clock;

class ClusterOnEtcd : public testing::Test {
 protected:
  void SetUp() override {
    if (!etcd_installed()) GTEST_SKIP() << "etcd: /usr/bin/etcd not found (Debian package etcd-server; scripts/setup.sh installs it)";
    const std::string problem = etcd_.start(dir_.path() + "/etcd");
    ASSERT_EQ(problem, "");
  }

  ClusterMember& join(NodeId id) {
    storage::EtcdOptions options;
    options.request_timeout_ms = 500;
    auto store = storage::open_etcd_metadata_store(etcd_.endpoint(), options);
    EXPECT_TRUE(store.ok());
    ClusterOptions o;
    o.cluster = "etcd-test";
    o.self.id = id;
    o.self.replication_address = "127.0.0.1:" + std::to_string(9300 + id);
    o.lease_ttl_s = 1;
    auto m = ClusterMember::join(std::shared_ptr<MetadataStore>(std::move(store).value()), o);
    EXPECT_TRUE(m.ok()) << m.error().message;
    members_.push_back(std::move(m.value()));
    return *members_.back();
  }

  bool run_until(const std::function<bool()>& done, int timeout_ms = 20'000) {
    const auto deadline = Clock::now() + std::chrono::milliseconds(timeout_ms);
    while (!done()) {
      if (Clock::now() > deadline) return false;
      for (auto& m : members_) {
        if (m != nullptr) m->run_once(10);
      }
    }
    return true;
  }

  TempDir dir_;
  EtcdServer etcd_;
  std::vector<std::unique_ptr<ClusterMember>> members_;
};

TEST_F(ClusterOnEtcd, ALeaderThatDiesIsReplacedAndTheViewSurvivesAnEtcdOutage) {
  join(1);
  join(2);
  join(3);
  auto controllers = [&] {
    int n = 0;
    for (auto& m : members_) n += m != nullptr && m->is_controller() ? 1 : 0;
    return n;
  };
  ASSERT_TRUE(run_until([&] { return controllers() == 1; }));
  ASSERT_TRUE(members_[0]->create_topic(TopicRecord{"orders", 3, 3, ""}).ok());
  ASSERT_TRUE(run_until([&] {
    for (auto& m : members_) {
      if (m->partitions().size() != 3) return false;
    }
    return true;
  }));
  const PartitionId p{"orders", 0};
  const PartitionState before = members_[0]->partitions().at(p);
  // The leader of orders/0 dies without a word (the controller, too, if it was that node).
  const auto killed_at = Clock::now();
  for (auto& m : members_) {
    if (m->self() == before.leader) m.reset();
  }
  ClusterMember* survivor = members_[0] != nullptr ? members_[0].get() : members_[1].get();
  ASSERT_TRUE(run_until([&] {
    auto now = survivor->partitions();
    return now.at(p).leader >= 0 && now.at(p).leader != before.leader && controllers() == 1;
  }));
  const auto elected_ms = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - killed_at).count();
  std::printf("weft: a new leader for orders/0 after %lld ms (lease TTL 1 s)\n", static_cast<long long>(elected_ms));
  RecordProperty("leader_failover_ms", static_cast<int>(elected_ms));
  const PartitionState after = survivor->partitions().at(p);
  EXPECT_EQ(after.leader_epoch, before.leader_epoch + 1);
  EXPECT_EQ(std::count(after.isr.begin(), after.isr.end(), before.leader), 0);

  // etcd goes away: the members keep their view and say the store is unreachable...
  etcd_.stop();
  ASSERT_TRUE(run_until([&] { return !survivor->store_reachable(); }));
  EXPECT_EQ(survivor->partitions().size(), 3u);
  // ... and heal when it comes back (same data, same ports).
  ASSERT_EQ(etcd_.start(dir_.path() + "/etcd"), "");
  ASSERT_TRUE(run_until([&] { return survivor->store_reachable() && controllers() == 1; }));
  ASSERT_TRUE(survivor->create_topic(TopicRecord{"after", 1, 2, ""}).ok());
  ASSERT_TRUE(run_until([&] { return survivor->partitions().size() == 4; }));
}

}  // namespace
}  // namespace weft::test
