// The conformance suite every transport passes (weft/fabric/link.h): messages, ordering, small
// and large writes with gather lists, many regions, back-pressure, bad writes, a peer that
// closes or vanishes, and reconnection. A transport's test file instantiates it:
//
//   INSTANTIATE_TEST_SUITE_P(Tcp, LinkConformance, testing::Values(TransportCase{...}), case_name);
//
// Every wait is bounded: a link that never delivers fails the test within seconds.
#pragma once

#include <gtest/gtest.h>

#include <poll.h>

#include <array>
#include <chrono>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "weft/fabric/link.h"

namespace weft::test {

struct TransportCase {
  std::string name;
  // Each call makes one node's transport; all of them reach each other's listeners.
  std::function<std::unique_ptr<Transport>()> make;
  std::string listen_address;  // where a listener binds ("127.0.0.1:0", or "" for a fresh name)
};

inline std::string case_name(const testing::TestParamInfo<TransportCase>& info) { return info.param.name; }

// A string literal's or a live string's bytes (a view: never of a temporary).
inline std::span<const std::byte> bytes_of(std::string_view s) { return std::as_bytes(std::span(s.data(), s.size())); }

// Received messages copied out of their links (a message is valid only until the next poll).
inline std::vector<std::unique_ptr<std::vector<std::byte>>>& kept_messages() {
  static std::vector<std::unique_ptr<std::vector<std::byte>>> kept;
  return kept;
}

// Keeps a completion, with a copy of its message (valid in the link only until the next poll).
inline void record(std::vector<LinkCompletion>& seen, LinkCompletion c) {
  if (c.kind == LinkCompletion::Kind::kMessageReceived) {
    kept_messages().push_back(std::make_unique<std::vector<std::byte>>(c.message.begin(), c.message.end()));
    c.message = *kept_messages().back();
  }
  seen.push_back(c);
}

// Polls `link` into `seen` until `done()` or `timeout_ms`; also polls `other` (the peer, when
// both ends live in this thread) so that neither side's progress waits on the other.
inline bool pump_until(Link& link, std::vector<LinkCompletion>& seen, const std::function<bool()>& done, Link* other = nullptr,
                       std::vector<LinkCompletion>* other_seen = nullptr, int timeout_ms = 10'000) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  std::array<LinkCompletion, 64> batch;
  while (!done()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    bool any = false;
    std::size_t n = link.poll(batch);
    for (std::size_t i = 0; i < n; ++i) record(seen, batch[i]);
    any = n > 0;
    if (other != nullptr) {
      n = other->poll(batch);
      for (std::size_t i = 0; i < n; ++i) {
        if (other_seen != nullptr) record(*other_seen, batch[i]);
      }
      any = any || n > 0;
    }
    if (!any) link.wait(5);
  }
  return true;
}

inline std::size_t count_kind(const std::vector<LinkCompletion>& seen, LinkCompletion::Kind kind) {
  std::size_t n = 0;
  for (const LinkCompletion& c : seen) n += c.kind == kind ? 1 : 0;
  return n;
}

class LinkConformance : public testing::TestWithParam<TransportCase> {
 protected:
  void SetUp() override {
    server_transport = GetParam().make();
    client_transport = GetParam().make();
    auto listening = server_transport->listen(GetParam().listen_address);
    ASSERT_TRUE(listening.ok()) << listening.error().message;
    listener = std::move(listening.value());
    connect_pair();
  }

  // `writes`: both ends accept the other's writes (the suite writes both ways; one test checks a
  // write before the server does).
  void connect_pair(bool writes = true) {
    auto connected = client_transport->connect(listener->address(), 5'000);
    ASSERT_TRUE(connected.ok()) << connected.error().message;
    client = std::move(connected.value());
    server = accept_one();
    ASSERT_NE(server, nullptr);
    client->accept_writes();
    if (writes) server->accept_writes();
  }

  std::unique_ptr<Link> accept_one() {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    while (std::chrono::steady_clock::now() < deadline) {
      auto accepted = listener->accept();
      if (accepted.ok()) return std::move(accepted.value());
      EXPECT_EQ(accepted.error().code, Errc::kUnavailable) << accepted.error().message;
      if (accepted.error().code != Errc::kUnavailable) return nullptr;
      pollfd p{listener->event_fd(), POLLIN, 0};
      ::poll(&p, 1, 10);
    }
    ADD_FAILURE() << "no link was accepted within 5 s";
    return nullptr;
  }

  // Registers `bytes` on the server and returns the descriptor the client writes with.
  RegionDescriptor server_region(std::span<std::byte> bytes) {
    auto region = server_transport->register_region(bytes);
    EXPECT_TRUE(region.ok()) << region.error().message;
    return region.ok() ? region->descriptor : RegionDescriptor{};
  }

  // Posts a write, polling both ends while the queue is full.
  void write(const RegionDescriptor& remote, std::uint64_t offset, std::span<const std::span<const std::byte>> gather,
             std::uint32_t immediate, std::uint64_t context) {
    for (int attempt = 0; attempt < 100'000; ++attempt) {
      const PostStatus status = client->post_write(remote, offset, gather, immediate, context);
      if (status == PostStatus::kOk) return;
      ASSERT_EQ(status, PostStatus::kQueueFull) << post_status_name(status) << ": " << client->error().message;
      drain_both();
    }
    FAIL() << "the queue never drained";
  }

  void drain_both() {
    std::array<LinkCompletion, 64> batch;
    const std::size_t n = client->poll(batch);
    for (std::size_t i = 0; i < n; ++i) record(client_seen, batch[i]);
    const std::size_t m = server->poll(batch);
    for (std::size_t i = 0; i < m; ++i) record(server_seen, batch[i]);
    if (n == 0 && m == 0) client->wait(1);
  }

  bool server_until(const std::function<bool()>& done, int timeout_ms = 10'000) {
    return pump_until(*server, server_seen, done, client.get(), &client_seen, timeout_ms);
  }
  bool client_until(const std::function<bool()>& done, int timeout_ms = 10'000) {
    return pump_until(*client, client_seen, done, server.get(), &server_seen, timeout_ms);
  }

  std::unique_ptr<Transport> server_transport;
  std::unique_ptr<Transport> client_transport;
  std::unique_ptr<LinkListener> listener;
  std::unique_ptr<Link> client;
  std::unique_ptr<Link> server;
  std::vector<LinkCompletion> client_seen;
  std::vector<LinkCompletion> server_seen;
};

TEST_P(LinkConformance, MessagesTravelBothWaysAndCompleteWithTheirContext) {
  ASSERT_EQ(client->post_send(bytes_of("ping"), 7), PostStatus::kOk);
  ASSERT_TRUE(server_until([&] { return count_kind(server_seen, LinkCompletion::Kind::kMessageReceived) == 1; }));
  const LinkCompletion& ping = server_seen.back();
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(ping.message.data()), ping.message.size()), "ping");
  ASSERT_EQ(server->post_send(bytes_of("pong!"), 9), PostStatus::kOk);
  ASSERT_TRUE(client_until([&] { return count_kind(client_seen, LinkCompletion::Kind::kMessageReceived) == 1; }));
  ASSERT_TRUE(client_until([&] { return count_kind(client_seen, LinkCompletion::Kind::kSendDone) == 1; }));
  for (const LinkCompletion& c : client_seen) {
    if (c.kind == LinkCompletion::Kind::kSendDone) {
      EXPECT_EQ(c.context, 7u);
      EXPECT_FALSE(c.flushed);
    }
    if (c.kind == LinkCompletion::Kind::kMessageReceived) {
      EXPECT_EQ(c.message.size(), 5u);
    }
  }
  // An empty message is a message too.
  ASSERT_EQ(client->post_send({}, 1), PostStatus::kOk);
  ASSERT_TRUE(server_until([&] { return count_kind(server_seen, LinkCompletion::Kind::kMessageReceived) == 2; }));
  EXPECT_TRUE(server_seen.back().message.empty());
  EXPECT_TRUE(client->connected());
  EXPECT_EQ(client->error().code, Errc::kOk);
}

TEST_P(LinkConformance, SmallWritesLandInOrderWithTheirImmediates) {
  std::vector<std::byte> region(std::size_t{4} << 20);
  const RegionDescriptor remote = server_region(region);
  constexpr std::uint32_t kWrites = 20'000;
  std::uint64_t offset = 0;
  std::vector<std::uint64_t> offsets;
  for (std::uint32_t i = 0; i < kWrites; ++i) {
    const std::size_t size = 1 + (i * 37) % 200;
    // Each write's source is its own slice of a pattern buffer that does not change.
    static std::vector<std::byte> pattern = [] {
      std::vector<std::byte> p(1 << 16);
      for (std::size_t k = 0; k < p.size(); ++k) p[k] = static_cast<std::byte>((k * 131 + 7) & 0xff);
      return p;
    }();
    const std::span<const std::byte> piece(pattern.data() + (i % 1000), size);
    offsets.push_back(offset);
    write(remote, offset, std::span(&piece, 1), i, i);
    offset += size;
  }
  ASSERT_TRUE(server_until([&] { return count_kind(server_seen, LinkCompletion::Kind::kWriteReceived) == kWrites; }, 30'000));
  std::uint32_t expected = 0;
  for (const LinkCompletion& c : server_seen) {
    if (c.kind != LinkCompletion::Kind::kWriteReceived) continue;
    ASSERT_EQ(c.immediate, expected) << "writes arrived out of order";
    ASSERT_EQ(c.length, 1 + (expected * 37) % 200);
    ++expected;
  }
  // Every write's bytes are where it was aimed.
  for (std::uint32_t i = 0; i < kWrites; i += 997) {
    const std::size_t size = 1 + (i * 37) % 200;
    for (std::size_t k = 0; k < size; ++k) {
      ASSERT_EQ(region[offsets[i] + k], static_cast<std::byte>((((i % 1000) + k) * 131 + 7) & 0xff)) << "write " << i;
    }
  }
  ASSERT_TRUE(client_until([&] { return count_kind(client_seen, LinkCompletion::Kind::kWriteDone) == kWrites; }));
}

TEST_P(LinkConformance, LargeGatheredWritesArriveWhole) {
  constexpr std::size_t kRegionBytes = std::size_t{4} << 20;
  constexpr int kRegions = 4;
  std::vector<std::vector<std::byte>> regions(kRegions, std::vector<std::byte>(kRegionBytes));
  std::vector<RegionDescriptor> remotes;
  for (auto& r : regions) remotes.push_back(server_region(r));
  // Three pieces of different sizes from three buffers, per write.
  std::vector<std::vector<std::byte>> sources;
  for (int w = 0; w < kRegions; ++w) {
    for (std::size_t piece : {std::size_t{1} << 20, std::size_t{3} << 19, (std::size_t{1} << 20) + 12345}) {
      std::vector<std::byte> s(piece);
      for (std::size_t k = 0; k < s.size(); ++k) s[k] = static_cast<std::byte>((k + static_cast<std::size_t>(w) * 17 + piece) & 0xff);
      sources.push_back(std::move(s));
    }
  }
  for (int w = 0; w < kRegions; ++w) {
    const std::span<const std::byte> gather[3] = {sources[static_cast<std::size_t>(w) * 3], sources[static_cast<std::size_t>(w) * 3 + 1],
                                                  sources[static_cast<std::size_t>(w) * 3 + 2]};
    write(remotes[static_cast<std::size_t>(w)], 100, gather, 1000u + static_cast<std::uint32_t>(w), static_cast<std::uint64_t>(w));
  }
  // A write of no bytes carries its immediate alone.
  write(remotes[0], 0, {}, 4242, 99);
  ASSERT_TRUE(server_until([&] { return count_kind(server_seen, LinkCompletion::Kind::kWriteReceived) == kRegions + 1; }, 30'000));
  for (int w = 0; w < kRegions; ++w) {
    std::size_t at = 100;
    for (int p = 0; p < 3; ++p) {
      const auto& s = sources[static_cast<std::size_t>(w * 3 + p)];
      ASSERT_EQ(std::memcmp(regions[static_cast<std::size_t>(w)].data() + at, s.data(), s.size()), 0) << "write " << w << " piece " << p;
      at += s.size();
    }
  }
  EXPECT_EQ(server_seen.back().immediate, 4242u);
  EXPECT_EQ(server_seen.back().length, 0u);
}

TEST_P(LinkConformance, ManyRegionsTakeTheirOwnWrites) {
  constexpr int kRegions = 200;
  std::vector<std::vector<std::byte>> regions(kRegions, std::vector<std::byte>(4096));
  std::vector<RegionDescriptor> remotes;
  for (auto& r : regions) remotes.push_back(server_region(r));
  // The descriptors travel to the writer as messages, as a replication protocol sends them.
  constexpr std::size_t kPerMessage = kLinkMaxMessageBytes / sizeof(RegionDescriptor);
  for (std::size_t first = 0; first < remotes.size(); first += kPerMessage) {
    const std::size_t n = std::min(kPerMessage, remotes.size() - first);
    ASSERT_EQ(server->post_send(std::as_bytes(std::span(remotes.data() + first, n)), first), PostStatus::kOk);
  }
  std::vector<RegionDescriptor> received;
  ASSERT_TRUE(client_until([&] {
    received.clear();
    for (const LinkCompletion& c : client_seen) {
      if (c.kind != LinkCompletion::Kind::kMessageReceived) continue;
      const std::size_t n = c.message.size() / sizeof(RegionDescriptor);
      const std::size_t old = received.size();
      received.resize(old + n);
      std::memcpy(received.data() + old, c.message.data(), n * sizeof(RegionDescriptor));
    }
    return received.size() == kRegions;
  }));
  std::vector<std::array<std::byte, 64>> sources(kRegions);
  for (int r = 0; r < kRegions; ++r) {
    sources[static_cast<std::size_t>(r)].fill(static_cast<std::byte>(r));
    const std::span<const std::byte> piece = sources[static_cast<std::size_t>(r)];
    write(received[static_cast<std::size_t>(r)], 4096 - 64, std::span(&piece, 1), static_cast<std::uint32_t>(r), 0);
  }
  ASSERT_TRUE(server_until([&] { return count_kind(server_seen, LinkCompletion::Kind::kWriteReceived) == kRegions; }));
  for (int r = 0; r < kRegions; ++r) {
    EXPECT_EQ(regions[static_cast<std::size_t>(r)][4096 - 64], static_cast<std::byte>(r));
    EXPECT_EQ(regions[static_cast<std::size_t>(r)][4095], static_cast<std::byte>(r));
    EXPECT_EQ(regions[static_cast<std::size_t>(r)][0], std::byte{0});
  }
}

TEST_P(LinkConformance, MessagesAndWritesKeepOneOrder) {
  std::vector<std::byte> region(1 << 20);
  const RegionDescriptor remote = server_region(region);
  std::vector<std::uint32_t> tags(1000);
  for (std::uint32_t i = 0; i < 1000; ++i) {
    tags[i] = i;
    if (i % 2 == 0) {
      for (int attempt = 0; attempt < 100'000; ++attempt) {
        const PostStatus status = client->post_send(std::as_bytes(std::span(&tags[i], 1)), i);
        if (status == PostStatus::kOk) break;
        ASSERT_EQ(status, PostStatus::kQueueFull);
        drain_both();
      }
    } else {
      const std::span<const std::byte> piece = std::as_bytes(std::span(&tags[i], 1));
      write(remote, i * 4, std::span(&piece, 1), i, i);
    }
  }
  ASSERT_TRUE(server_until([&] {
    return count_kind(server_seen, LinkCompletion::Kind::kWriteReceived) + count_kind(server_seen, LinkCompletion::Kind::kMessageReceived) == 1000;
  }));
  std::uint32_t expected = 0;
  for (const LinkCompletion& c : server_seen) {
    if (c.kind == LinkCompletion::Kind::kMessageReceived) {
      std::uint32_t tag = 0;
      ASSERT_EQ(c.message.size(), 4u);
      std::memcpy(&tag, c.message.data(), 4);
      ASSERT_EQ(tag, expected++);
    } else if (c.kind == LinkCompletion::Kind::kWriteReceived) {
      ASSERT_EQ(c.immediate, expected++);
    }
  }
}

TEST_P(LinkConformance, TheQueueFillsUntilCompletionsArePolled) {
  std::string message(kLinkMaxMessageBytes, 'x');
  std::size_t posted = 0;
  PostStatus status = PostStatus::kOk;
  while (posted <= kLinkQueueDepth && (status = client->post_send(bytes_of(message), posted)) == PostStatus::kOk) ++posted;
  EXPECT_EQ(status, PostStatus::kQueueFull);
  EXPECT_EQ(posted, kLinkQueueDepth) << "the queue holds exactly kLinkQueueDepth operations";
  ASSERT_TRUE(client_until([&] { return count_kind(client_seen, LinkCompletion::Kind::kSendDone) == kLinkQueueDepth; }));
  EXPECT_EQ(client->post_send(bytes_of(message), 0), PostStatus::kOk);
  ASSERT_TRUE(server_until([&] { return count_kind(server_seen, LinkCompletion::Kind::kMessageReceived) == kLinkQueueDepth + 1; }));
}

TEST_P(LinkConformance, BadPostsAreRefusedAndTheLinkLives) {
  std::vector<std::byte> region(4096);
  const RegionDescriptor remote = server_region(region);
  std::string message(kLinkMaxMessageBytes + 1, 'x');
  EXPECT_EQ(client->post_send(bytes_of(message), 0), PostStatus::kInvalid);
  std::vector<std::span<const std::byte>> gather(kLinkMaxGather + 1, bytes_of("ab"));
  EXPECT_EQ(client->post_write(remote, 0, gather, 0, 0), PostStatus::kInvalid);
  const std::span<const std::byte> piece = bytes_of("abcdef");
  EXPECT_EQ(client->post_write(remote, 4093, std::span(&piece, 1), 0, 0), PostStatus::kInvalid) << "past the descriptor's length";
  EXPECT_EQ(client->post_write(RegionDescriptor{}, 0, std::span(&piece, 1), 0, 0), PostStatus::kInvalid) << "no key";
  ASSERT_EQ(client->post_send(bytes_of("still here"), 0), PostStatus::kOk);
  ASSERT_TRUE(server_until([&] { return count_kind(server_seen, LinkCompletion::Kind::kMessageReceived) == 1; }));
}

TEST_P(LinkConformance, AWriteOutsideEveryRegionEndsTheLinkNotTheNode) {
  std::vector<std::byte> region(4096);
  RegionDescriptor forged = server_region(region);
  forged.length = 1 << 20;  // the writer claims more than was registered
  const std::span<const std::byte> piece = bytes_of("overflow");
  ASSERT_EQ(client->post_write(forged, 8192, std::span(&piece, 1), 1, 1), PostStatus::kOk);
  ASSERT_TRUE(server_until([&] { return count_kind(server_seen, LinkCompletion::Kind::kPeerGone) == 1; }));
  EXPECT_EQ(server->error().code, Errc::kCorrupt) << server->error().message;
  EXPECT_EQ(count_kind(server_seen, LinkCompletion::Kind::kWriteReceived), 0u);
  ASSERT_TRUE(client_until([&] { return count_kind(client_seen, LinkCompletion::Kind::kPeerGone) == 1; }));
  EXPECT_FALSE(client->connected());
  // The node goes on: a new link works.
  client_seen.clear();
  server_seen.clear();
  connect_pair();
  ASSERT_EQ(client->post_send(bytes_of("again"), 0), PostStatus::kOk);
  ASSERT_TRUE(server_until([&] { return count_kind(server_seen, LinkCompletion::Kind::kMessageReceived) == 1; }));
}

TEST_P(LinkConformance, AWriteBeforeThePeerAcceptsWritesEndsTheLinkAndLandsNowhere) {
  // Given a fresh link whose server side has not accepted writes
  client_seen.clear();
  server_seen.clear();
  client->close();
  server->close();
  connect_pair(false);
  std::vector<std::byte> region(4096, std::byte{0});
  const RegionDescriptor remote = server_region(region);
  // When the client writes into a region it was given
  const std::span<const std::byte> piece = bytes_of("too early");
  ASSERT_EQ(client->post_write(remote, 0, std::span(&piece, 1), 1, 1), PostStatus::kOk);
  // Expect the link ended with nothing landed
  ASSERT_TRUE(server_until([&] { return count_kind(server_seen, LinkCompletion::Kind::kPeerGone) == 1; }));
  EXPECT_EQ(server->error().code, Errc::kPermissionDenied) << server->error().message;
  EXPECT_EQ(count_kind(server_seen, LinkCompletion::Kind::kWriteReceived), 0u);
  EXPECT_TRUE(std::all_of(region.begin(), region.end(), [](std::byte b) { return b == std::byte{0}; }));
  ASSERT_TRUE(client_until([&] { return count_kind(client_seen, LinkCompletion::Kind::kPeerGone) == 1; }));
}

TEST_P(LinkConformance, AWriteToADeregisteredRegionEndsTheLink) {
  std::vector<std::byte> region(4096);
  const RegionDescriptor remote = server_region(region);
  ASSERT_TRUE(server_transport->deregister_region(remote.key).ok());
  EXPECT_EQ(server_transport->deregister_region(remote.key).error().code, Errc::kNotFound);
  const std::span<const std::byte> piece = bytes_of("late");
  ASSERT_EQ(client->post_write(remote, 0, std::span(&piece, 1), 1, 1), PostStatus::kOk);
  ASSERT_TRUE(server_until([&] { return count_kind(server_seen, LinkCompletion::Kind::kPeerGone) == 1; }));
  EXPECT_EQ(server->error().code, Errc::kCorrupt);
  EXPECT_EQ(region[0], std::byte{0});
}

TEST_P(LinkConformance, APeerThatClosesIsSeenAndLaterPostsFail) {
  client->close();
  EXPECT_FALSE(client->connected());
  ASSERT_TRUE(server_until([&] { return count_kind(server_seen, LinkCompletion::Kind::kPeerGone) == 1; }));
  EXPECT_FALSE(server->connected());
  EXPECT_NE(server->error().code, Errc::kOk);
  EXPECT_FALSE(server->error().message.empty());
  EXPECT_EQ(server->post_send(bytes_of("anyone?"), 0), PostStatus::kPeerGone);
  ASSERT_TRUE(client_until([&] { return count_kind(client_seen, LinkCompletion::Kind::kPeerGone) == 1; }));
  // kPeerGone comes once, and last.
  std::array<LinkCompletion, 8> more;
  EXPECT_EQ(server->poll(more), 0u);
}

TEST_P(LinkConformance, APeerThatVanishesMidStreamIsSeen) {
  std::vector<std::byte> region(std::size_t{8} << 20);
  const RegionDescriptor remote = server_region(region);
  std::vector<std::byte> big(std::size_t{8} << 20, std::byte{1});
  const std::span<const std::byte> piece = big;
  ASSERT_EQ(client->post_write(remote, 0, std::span(&piece, 1), 1, 1), PostStatus::kOk);
  client.reset();  // no close(): the object and its socket are simply gone
  ASSERT_TRUE(server_until([&] { return count_kind(server_seen, LinkCompletion::Kind::kPeerGone) == 1; }, 10'000));
  EXPECT_FALSE(server->connected());
}

TEST_P(LinkConformance, OutstandingWritesCompleteAsFlushedWhenTheLinkEnds) {
  std::vector<std::byte> region(std::size_t{8} << 20);
  const RegionDescriptor remote = server_region(region);
  std::vector<std::byte> big(std::size_t{8} << 20, std::byte{1});
  const std::span<const std::byte> piece = big;
  for (int i = 0; i < 8; ++i) {
    ASSERT_EQ(client->post_write(remote, 0, std::span(&piece, 1), 1, static_cast<std::uint64_t>(i)), PostStatus::kOk);
  }
  server.reset();
  std::vector<LinkCompletion> seen;
  ASSERT_TRUE(pump_until(*client, seen, [&] { return count_kind(seen, LinkCompletion::Kind::kPeerGone) == 1; }));
  // Every write completed (done or flushed), before kPeerGone.
  EXPECT_EQ(count_kind(seen, LinkCompletion::Kind::kWriteDone), 8u);
  EXPECT_EQ(seen.back().kind, LinkCompletion::Kind::kPeerGone);
}

TEST_P(LinkConformance, APeerReconnectsAfterTheLinkEnds) {
  for (int round = 0; round < 3; ++round) {
    client->close();
    client_seen.clear();
    server_seen.clear();
    connect_pair();
    ASSERT_EQ(client->post_send(bytes_of("round"), 0), PostStatus::kOk);
    ASSERT_TRUE(server_until([&] { return count_kind(server_seen, LinkCompletion::Kind::kMessageReceived) == 1; })) << round;
  }
}

TEST_P(LinkConformance, TheEventFdWakesAWaiter) {
  std::array<LinkCompletion, 8> batch;
  while (server->poll(batch) > 0) {
  }
  EXPECT_FALSE(server->wait(20)) << "nothing to do yet";
  ASSERT_EQ(client->post_send(bytes_of("wake"), 0), PostStatus::kOk);
  std::array<LinkCompletion, 8> mine;
  (void)client->poll(mine);  // lets a socket transport put the bytes on the wire
  EXPECT_TRUE(server->wait(5'000));
  ASSERT_TRUE(server_until([&] { return count_kind(server_seen, LinkCompletion::Kind::kMessageReceived) == 1; }));
}

}  // namespace weft::test
