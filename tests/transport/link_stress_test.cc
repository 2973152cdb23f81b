// Links driven from two threads at once (each end by its own thread, as nodes do), with regions
// registered and removed by a third while writes land: the order and bytes of 100 000 writes
// survive, and the lock-free region lookup stays clean under ThreadSanitizer.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <thread>
#include <vector>

#include "weft/transport/loopback.h"
#include "weft/transport/tcp.h"

namespace weft::test {
namespace {

struct StressCase {
  std::string name;
  bool tcp;
};

class LinkStress : public testing::TestWithParam<StressCase> {};

TEST_P(LinkStress, TwoThreadsTwoEndsAndRegionsComingAndGoing) {
  std::unique_ptr<Transport> server_transport, client_transport;
  std::string address;
  if (GetParam().tcp) {
    server_transport = make_tcp_transport();
    client_transport = make_tcp_transport();
    address = "127.0.0.1:0";
  } else {
    auto network = make_loopback_network();
    server_transport = make_loopback_transport(network);
    client_transport = make_loopback_transport(network);
  }
  auto listener = server_transport->listen(address).value();
  auto client = client_transport->connect(listener->address(), 2'000).value();
  std::unique_ptr<Link> server;
  for (int i = 0; i < 500 && server == nullptr; ++i) {
    auto accepted = listener->accept();
    if (accepted.ok()) server = std::move(accepted.value());
    else std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  ASSERT_NE(server, nullptr);
  server->accept_writes();

  constexpr std::uint32_t kWrites = 100'000;
  constexpr std::size_t kSlot = 64;
  std::vector<std::byte> region(kSlot * 1024);
  const RegionDescriptor remote = server_transport->register_region(region).value().descriptor;

  // A third thread registers and removes other regions the whole time.
  std::atomic<bool> stop{false};
  std::thread churn([&] {
    std::vector<std::byte> other(4096);
    while (!stop.load(std::memory_order_relaxed)) {
      auto r = server_transport->register_region(other);
      if (r.ok()) (void)server_transport->deregister_region(r->descriptor.key);
    }
  });

  // The receiver checks each write's immediate and bytes as it lands (the sender waits for the
  // receiver's message every 512 writes, so a slot is not rewritten before it is checked).
  std::atomic<std::uint32_t> checked{0};
  std::atomic<bool> failed{false};
  std::thread receiver([&] {
    std::array<LinkCompletion, 64> batch;
    std::uint32_t expected = 0;
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    while (expected < kWrites && std::chrono::steady_clock::now() < deadline && !failed.load()) {
      const std::size_t n = server->poll(batch);
      for (std::size_t i = 0; i < n; ++i) {
        if (batch[i].kind != LinkCompletion::Kind::kWriteReceived) continue;
        std::uint32_t stamped = 0;
        std::memcpy(&stamped, region.data() + (expected % 1024) * kSlot, sizeof stamped);
        if (batch[i].immediate != expected || stamped != expected) failed = true;
        ++expected;
        if (expected % 512 == 0) {
          while (server->post_send({}, 0) == PostStatus::kQueueFull) (void)server->poll(std::span(batch).first(0));
        }
      }
      if (n == 0) server->wait(1);
    }
    checked = expected;
  });

  std::array<LinkCompletion, 64> batch;
  std::vector<std::array<std::uint32_t, kSlot / 4>> sources(1024);
  std::uint32_t acked_rounds = 0;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  for (std::uint32_t i = 0; i < kWrites && std::chrono::steady_clock::now() < deadline && !failed.load();) {
    if (i / 512 > acked_rounds + 1) {  // at most two rounds ahead of the receiver
      const std::size_t n = client->poll(batch);
      for (std::size_t k = 0; k < n; ++k) acked_rounds += batch[k].kind == LinkCompletion::Kind::kMessageReceived ? 1u : 0u;
      if (n == 0) client->wait(1);
      continue;
    }
    auto& source = sources[i % 1024];
    source.fill(i);
    const std::span<const std::byte> piece = std::as_bytes(std::span(source));
    const PostStatus status = client->post_write(remote, (i % 1024) * kSlot, std::span(&piece, 1), i, i);
    if (status == PostStatus::kOk) {
      ++i;
    } else {
      ASSERT_EQ(status, PostStatus::kQueueFull);
      const std::size_t n = client->poll(batch);
      for (std::size_t k = 0; k < n; ++k) acked_rounds += batch[k].kind == LinkCompletion::Kind::kMessageReceived ? 1u : 0u;
    }
  }
  // Keep the sender's end moving until the receiver has everything.
  while (checked.load() == 0 && std::chrono::steady_clock::now() < deadline && !failed.load()) {
    if (client->poll(batch) == 0) client->wait(1);
  }
  receiver.join();
  stop = true;
  churn.join();
  EXPECT_FALSE(failed.load()) << "a write arrived out of order or with the wrong bytes";
  EXPECT_EQ(checked.load(), kWrites);
}

INSTANTIATE_TEST_SUITE_P(Transports, LinkStress, testing::Values(StressCase{"Loopback", false}, StressCase{"Tcp", true}),
                         [](const testing::TestParamInfo<StressCase>& param) { return param.param.name; });

}  // namespace
}  // namespace weft::test
