// What a consumer group costs its coordinator per member: N members join in one join phase, the
// leader syncs an assignment and the others sync, then one leaves and the rest rejoin. The time
// per member should not grow with N (Kafka groups of thousands of members exist).
#include <benchmark/benchmark.h>

#include <string>
#include <vector>

#include "weft/fabric/group_coordinator.h"

namespace {

using namespace weft;

JoinGroupRequest join_request(std::string member_id, std::size_t i) {
  JoinGroupRequest r;
  r.group_id = "g";
  r.member_id = std::move(member_id);
  r.client_id = "consumer-" + std::to_string(i);
  r.client_host = "/10.0.0.1";
  r.protocol_type = "consumer";
  // What a Java consumer lists by default.
  r.protocols = {{"range", "subscription"}, {"cooperative-sticky", "subscription"}};
  r.session_timeout_ms = 45'000;
  r.rebalance_timeout_ms = 300'000;
  return r;
}

void BM_GroupFormsAndRebalances(benchmark::State& state) {
  const auto members = static_cast<std::size_t>(state.range(0));
  for (auto _ : state) {
    GroupCoordinatorOptions options;
    options.initial_rebalance_delay_ms = 3'000;
    GroupCoordinator gc(options);
    std::int64_t now = 1'000'000;
    std::vector<std::string> ids(members);
    for (std::size_t i = 0; i < members; ++i)
      gc.join(join_request("", i), now, [&ids, i](JoinGroupResult r) { ids[i] = std::move(r.member_id); });
    now += 3'000;
    gc.tick(now);
    now += 3'000;
    gc.tick(now);  // the delay was extended once: members kept arriving
    gc.sync(SyncGroupRequest{"g", 1, ids[0], std::nullopt, std::nullopt, std::nullopt, {{ids[0], "assignment"}}}, now, {});
    for (std::size_t i = 1; i < members; ++i) gc.sync(SyncGroupRequest{"g", 1, ids[i], std::nullopt, std::nullopt, std::nullopt, {}}, now, {});
    (void)gc.leave("g", {LeavingMember{ids.back(), std::nullopt}}, now);
    for (std::size_t i = 0; i + 1 < members; ++i) gc.join(join_request(ids[i], i), now, {});
    if (gc.describe("g").state != "CompletingRebalance") state.SkipWithError("the group did not rebalance");
  }
  state.SetItemsProcessed(state.iterations() * static_cast<std::int64_t>(members));
}
BENCHMARK(BM_GroupFormsAndRebalances)->Arg(100)->Arg(1'000)->Arg(10'000)->Arg(30'000)->Unit(benchmark::kMillisecond);

}  // namespace

BENCHMARK_MAIN();
