#include "weft/transport/tcp.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <thread>

#include "../descriptors_used_up.h"
#include "link_conformance.h"
#include "weft/fabric/socket_address.h"

namespace weft::test {
namespace {

INSTANTIATE_TEST_SUITE_P(Tcp, LinkConformance,
                         testing::Values(TransportCase{"Tcp", [] { return make_tcp_transport(); }, "127.0.0.1:0"}), case_name);

// A plain socket connected to `address`, for peers that do not speak the link protocol.
int raw_connect(const std::string& address) {
  auto where = parse_socket_address(address, "test");
  if (!where.ok()) return -1;
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (::connect(fd, where->get(), where->length) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

class TcpLinkTest : public testing::Test {
 protected:
  void SetUp() override {
    TcpTransportOptions options;
    options.handshake_timeout_ms = 300;
    transport = make_tcp_transport(options);
    auto listening = transport->listen("127.0.0.1:0");
    ASSERT_TRUE(listening.ok()) << listening.error().message;
    listener = std::move(listening.value());
  }
  Result<std::unique_ptr<Link>> accept_within(int timeout_ms) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
    while (true) {
      auto accepted = listener->accept();
      if (accepted.ok() || accepted.error().code != Errc::kUnavailable || accepted.error().message != "no peer is waiting" ||
          std::chrono::steady_clock::now() > deadline) {
        return accepted;
      }
      pollfd p{listener->event_fd(), POLLIN, 0};
      ::poll(&p, 1, 10);
    }
  }
  // A peer that speaks the hello by hand, then whatever the test sends on `fd`.
  std::unique_ptr<Link> accept_hand_made_peer(int& fd) {
    fd = raw_connect(listener->address());
    if (fd < 0) return nullptr;
    const char hello[8] = {'W', 'E', 'F', 'T', 'L', 'N', 'K', '2'};
    if (::send(fd, hello, sizeof hello, MSG_NOSIGNAL) != 8) return nullptr;
    auto accepted = accept_within(5'000);
    EXPECT_TRUE(accepted.ok()) << accepted.error().message;
    return accepted.ok() ? std::move(accepted.value()) : nullptr;
  }
  std::unique_ptr<Transport> transport;
  std::unique_ptr<LinkListener> listener;
};

TEST_F(TcpLinkTest, AStrangerIsRefusedAtAcceptAndTheListenerGoesOn) {
  const int fd = raw_connect(listener->address());
  ASSERT_GE(fd, 0);
  const std::string http = "GET / HTTP/1.1\r\n\r\n";
  ASSERT_EQ(::send(fd, http.data(), http.size(), MSG_NOSIGNAL), static_cast<ssize_t>(http.size()));
  auto refused = accept_within(5'000);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.error().code, Errc::kCorrupt);
  EXPECT_NE(refused.error().message.find("not a weft link"), std::string::npos) << refused.error().message;
  ::close(fd);
  auto client = transport->connect(listener->address(), 1'000);
  ASSERT_TRUE(client.ok()) << client.error().message;
  EXPECT_TRUE(accept_within(5'000).ok());
}

TEST_F(TcpLinkTest, ANodeOfAnotherLinkProtocolIsRefusedSayingSoOnBothSides) {
  // A listener refuses a peer of version 1 at accept
  const int fd = raw_connect(listener->address());
  ASSERT_GE(fd, 0);
  const char old_hello[8] = {'W', 'E', 'F', 'T', 'L', 'N', 'K', '1'};
  ASSERT_EQ(::send(fd, old_hello, sizeof old_hello, MSG_NOSIGNAL), 8);
  auto refused = accept_within(5'000);
  ASSERT_FALSE(refused.ok());
  EXPECT_NE(refused.error().message.find("speaks weft link protocol 1, this node 2: every node of a cluster must run the same weft release"),
            std::string::npos)
      << refused.error().message;
  ::close(fd);
  // A link to a listener of version 1 ends at its first poll
  const int server = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  ASSERT_GE(server, 0);
  sockaddr_in at{};
  at.sin_family = AF_INET;
  at.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t length = sizeof at;
  ASSERT_EQ(::bind(server, reinterpret_cast<sockaddr*>(&at), sizeof at), 0);
  ASSERT_EQ(::listen(server, 1), 0);
  ASSERT_EQ(::getsockname(server, reinterpret_cast<sockaddr*>(&at), &length), 0);
  auto link = transport->connect("127.0.0.1:" + std::to_string(ntohs(at.sin_port)), 1'000);
  const int peer = ::accept4(server, nullptr, nullptr, SOCK_CLOEXEC);
  ASSERT_GE(peer, 0);
  ASSERT_EQ(::send(peer, old_hello, sizeof old_hello, MSG_NOSIGNAL), 8);
  ASSERT_TRUE(link.ok()) << link.error().message;
  std::array<LinkCompletion, 8> batch;
  bool gone = false;
  for (int i = 0; i < 500 && !gone; ++i) {
    for (std::size_t n = (*link)->poll(batch), k = 0; k < n; ++k) gone = gone || batch[k].kind == LinkCompletion::Kind::kPeerGone;
    if (!gone) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ASSERT_TRUE(gone);
  EXPECT_NE((*link)->error().message.find("speaks weft link protocol 1, this node 2"), std::string::npos) << (*link)->error().message;
  ::close(peer);
  ::close(server);
}

TEST_F(TcpLinkTest, ASilentPeerIsDroppedAfterTheHandshakeTimeout) {
  const int fd = raw_connect(listener->address());
  ASSERT_GE(fd, 0);
  auto dropped = accept_within(5'000);
  ASSERT_FALSE(dropped.ok());
  EXPECT_NE(dropped.error().message.find("timed out"), std::string::npos) << dropped.error().message;
  ::close(fd);
}

TEST_F(TcpLinkTest, SilentPeersDoNotHoldTheListenerFromAPeerThatSpeaks) {
  // Given a listener whose handshakes may take 10 s, and 20 peers that connect and say nothing
  // (port scans, health checks)
  TcpTransportOptions options;
  options.handshake_timeout_ms = 10'000;
  auto patient = make_tcp_transport(options);
  auto listening = patient->listen("127.0.0.1:0");
  ASSERT_TRUE(listening.ok()) << listening.error().message;
  listener = std::move(listening.value());
  std::vector<int> silent;
  for (int i = 0; i < 20; ++i) silent.push_back(raw_connect(listener->address()));
  // When a node connects after them, expect its link handed out at once: accept() never waits
  // on a peer's hello (it once waited each silent peer's timeout out in turn, stalling the
  // replication thread that calls it)
  auto client = patient->connect(listener->address(), 1'000);
  ASSERT_TRUE(client.ok()) << client.error().message;
  auto accepted = accept_within(5'000);
  EXPECT_TRUE(accepted.ok()) << accepted.error().message;
  for (const int fd : silent) ::close(fd);
}

TEST_F(TcpLinkTest, AFullHandshakeTableStillTimesItsSilentPeersOutWhileNewcomersKeepComing) {
  // Given 64 peers that connect and say nothing, taken into the handshake (the table is full)
  std::vector<int> silent;
  for (int i = 0; i < 64; ++i) silent.push_back(raw_connect(listener->address()));
  for (int i = 0; i < 10; ++i) (void)listener->accept();
  // When newcomers keep arriving (a scanner, a health check reconnecting), one before every
  // accept(), and a node connects after the silent peers' timeout (300 ms) has passed
  bool node_connected = false, node_accepted = false;
  std::unique_ptr<Link> client;
  const auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < 300 && !node_accepted; ++i) {
    const int newcomer = raw_connect(listener->address());
    if (newcomer >= 0) ::close(newcomer);
    if (!node_connected && std::chrono::steady_clock::now() - start > std::chrono::milliseconds(600)) {
      auto connected = transport->connect(listener->address(), 1'000);
      ASSERT_TRUE(connected.ok()) << connected.error().message;
      client = std::move(connected.value());
      node_connected = true;
    }
    Result<std::unique_ptr<Link>> accepted = listener->accept();
    node_accepted = accepted.ok();
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  // Expect the node's link handed out (before, every accept() returned at the first newcomer it
  // refused, so the silent peers never timed out and the port stayed closed to nodes)
  EXPECT_TRUE(node_connected);
  EXPECT_TRUE(node_accepted);
  for (const int fd : silent) ::close(fd);
}

TEST_F(TcpLinkTest, OutOfDescriptorsAWaitingPeerIsClosedSoTheListenerStopsWakingItsCaller) {
  // Given a peer waiting to be accepted, and a process with no descriptor left
  const int peer = raw_connect(listener->address());
  ASSERT_GE(peer, 0);
  DescriptorsUsedUp used_up(0);
  ASSERT_TRUE(used_up.ready());
  // When the listener is asked to accept
  Result<std::unique_ptr<Link>> accepted = listener->accept();
  pollfd readable{listener->event_fd(), POLLIN, 0};
  const int still_readable = ::poll(&readable, 1, 0);
  used_up.release();
  // Expect it to say so, and to have closed the peer's connection, so that the listener is no
  // longer readable (before, the connection stayed queued: the replication thread, woken by the
  // listener, spun on a failing accept for as long as descriptors ran short)
  ASSERT_FALSE(accepted.ok());
  EXPECT_EQ(accepted.error().code, Errc::kResourceExhausted) << accepted.error().message;
  EXPECT_EQ(still_readable, 0);
  char byte = 0;
  EXPECT_EQ(::recv(peer, &byte, 1, 0), 0) << "the peer's connection was closed";
  ::close(peer);
}

TEST_F(TcpLinkTest, AWriteStillArrivingWhenItsRegionIsWithdrawnEndsTheLinkAndLandsNowhere) {
  auto region = std::make_unique<std::vector<std::byte>>(std::size_t{1} << 20);
  auto registered = transport->register_region(*region);
  ASSERT_TRUE(registered.ok());
  int fd = -1;
  std::unique_ptr<Link> link = accept_hand_made_peer(fd);
  ASSERT_NE(link, nullptr);
  link->accept_writes();
  // A 512 KiB write, of which the first 64 KiB arrive and are taken
  unsigned char header[24] = {1};  // a write
  const std::uint32_t key = registered->descriptor.key, length = 512 << 10;
  std::memcpy(header + 8, &key, 4);
  std::memcpy(header + 12, &length, 4);
  ASSERT_EQ(::send(fd, header, sizeof header, MSG_NOSIGNAL), 24);
  const std::vector<unsigned char> piece(64 << 10, 0x5a);
  ASSERT_EQ(::send(fd, piece.data(), piece.size(), MSG_NOSIGNAL), static_cast<ssize_t>(piece.size()));
  std::vector<LinkCompletion> seen;
  ASSERT_TRUE(pump_until(*link, seen, [&] { return (*region)[(64 << 10) - 1] == std::byte{0x5a}; }));
  // When the region is withdrawn and its memory freed, and the rest of the write arrives
  ASSERT_TRUE(transport->deregister_region(key).ok());
  region.reset();
  for (int i = 0; i < 7; ++i) ASSERT_EQ(::send(fd, piece.data(), piece.size(), MSG_NOSIGNAL), static_cast<ssize_t>(piece.size()));
  // Expect the link ended (under AddressSanitizer: and no byte written into the freed memory)
  ASSERT_TRUE(pump_until(*link, seen, [&] { return count_kind(seen, LinkCompletion::Kind::kPeerGone) == 1; }));
  EXPECT_EQ(count_kind(seen, LinkCompletion::Kind::kWriteReceived), 0u);
  EXPECT_NE(link->error().message.find("after it was withdrawn"), std::string::npos) << link->error().message;
  ::close(fd);
}

TEST_F(TcpLinkTest, AMalformedFrameEndsTheLink) {
  int fd = -1;
  std::unique_ptr<Link> link = accept_hand_made_peer(fd);
  ASSERT_NE(link, nullptr);
  unsigned char frame[24] = {9};  // operation 9 does not exist
  ASSERT_EQ(::send(fd, frame, sizeof frame, MSG_NOSIGNAL), 24);
  std::vector<LinkCompletion> seen;
  ASSERT_TRUE(pump_until(*link, seen, [&] { return count_kind(seen, LinkCompletion::Kind::kPeerGone) == 1; }));
  EXPECT_EQ(link->error().code, Errc::kCorrupt);
  EXPECT_NE(link->error().message.find("malformed frame"), std::string::npos) << link->error().message;
  ::close(fd);
}

TEST_F(TcpLinkTest, AnOversizedMessageEndsTheLink) {
  int fd = -1;
  std::unique_ptr<Link> link = accept_hand_made_peer(fd);
  ASSERT_NE(link, nullptr);
  unsigned char frame[24] = {2};  // a message...
  const std::uint32_t length = 1 << 30;  // ... claiming a gigabyte
  std::memcpy(frame + 12, &length, 4);
  ASSERT_EQ(::send(fd, frame, sizeof frame, MSG_NOSIGNAL), 24);
  std::vector<LinkCompletion> seen;
  ASSERT_TRUE(pump_until(*link, seen, [&] { return count_kind(seen, LinkCompletion::Kind::kPeerGone) == 1; }));
  EXPECT_EQ(link->error().code, Errc::kCorrupt);
  ::close(fd);
}

TEST_F(TcpLinkTest, APeerProcessKilledMidWriteIsSeen) {
  std::vector<std::byte> region(std::size_t{64} << 20);
  auto registered = transport->register_region(region);
  ASSERT_TRUE(registered.ok());
  const RegionDescriptor remote = registered->descriptor;
  const std::string address = listener->address();
  const pid_t child = fork();
  if (child == 0) {
    // The writer: starts a 64 MiB write, of which the socket takes a few MiB, and dies (SIGKILL).
    auto peer = make_tcp_transport();
    auto link = peer->connect(address, 2'000);
    if (!link.ok()) _exit(2);
    std::vector<std::byte> big(std::size_t{64} << 20, std::byte{7});
    const std::span<const std::byte> piece = big;
    if (link.value()->post_write(remote, 0, std::span(&piece, 1), 1, 1) != PostStatus::kOk) _exit(3);
    raise(SIGKILL);
    _exit(4);
  }
  ASSERT_GT(child, 0);
  auto accepted = accept_within(5'000);
  ASSERT_TRUE(accepted.ok()) << accepted.error().message;
  std::unique_ptr<Link> link = std::move(accepted.value());
  link->accept_writes();  // before its first poll: the write is read then
  std::vector<LinkCompletion> seen;
  const bool gone = pump_until(*link, seen, [&] { return count_kind(seen, LinkCompletion::Kind::kPeerGone) == 1; }, nullptr, nullptr, 20'000);
  if (!gone) kill(child, SIGKILL);
  int status = 0;
  ASSERT_EQ(waitpid(child, &status, 0), child);
  ASSERT_TRUE(gone);
  EXPECT_EQ(count_kind(seen, LinkCompletion::Kind::kWriteReceived), 0u) << "a torn write is never reported as landed";
  EXPECT_FALSE(link->error().message.empty());
  EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL) << "the writer died as planned";
}

// A write completes when it is posted: what the socket does not take at once is copied, so a
// peer that stops reading holds none of the writer's memory (a leader writes from its ring and
// lets the space go on completion). The peer still gets the bytes as they were when posted.
TEST_F(TcpLinkTest, AWriteCompletesAsPostedAndItsSourceMayChangeBeforeThePeerReads) {
  std::vector<std::byte> region(std::size_t{16} << 20);
  auto registered = transport->register_region(region);
  ASSERT_TRUE(registered.ok());
  auto connected = transport->connect(listener->address(), 2'000);
  ASSERT_TRUE(connected.ok()) << connected.error().message;
  std::unique_ptr<Link> writer = std::move(connected.value());
  auto accepted = accept_within(5'000);
  ASSERT_TRUE(accepted.ok()) << accepted.error().message;
  std::unique_ptr<Link> reader = std::move(accepted.value());
  reader->accept_writes();

  std::vector<std::byte> source(region.size(), std::byte{0x5a});  // far more than a socket buffer
  const std::span<const std::byte> pieces[2] = {std::span(source).first(source.size() / 2), std::span(source).subspan(source.size() / 2)};
  ASSERT_EQ(writer->post_write(registered->descriptor, 0, pieces, 7, 42), PostStatus::kOk);
  std::array<LinkCompletion, 8> done;
  ASSERT_EQ(writer->poll(done), 1u) << "completed before the peer read a byte";
  EXPECT_EQ(done[0].kind, LinkCompletion::Kind::kWriteDone);
  EXPECT_EQ(done[0].context, 42u);
  EXPECT_FALSE(done[0].flushed);
  std::fill(source.begin(), source.end(), std::byte{0});

  std::vector<LinkCompletion> seen;
  ASSERT_TRUE(pump_until(*reader, seen, [&] { return count_kind(seen, LinkCompletion::Kind::kWriteReceived) == 1; }, writer.get()));
  EXPECT_EQ(seen.back().immediate, 7u);
  EXPECT_EQ(seen.back().length, region.size());
  EXPECT_EQ(std::count(region.begin(), region.end(), std::byte{0x5a}), static_cast<std::ptrdiff_t>(region.size()));
}

TEST(TcpTransport, AddressesAreCheckedAndPortsReported) {
  auto transport = make_tcp_transport();
  EXPECT_EQ(transport->listen("nonsense").error().code, Errc::kInvalidArgument);
  EXPECT_EQ(transport->listen("example.com:1").error().code, Errc::kInvalidArgument) << "no DNS";
  auto listener = transport->listen("127.0.0.1:0");
  ASSERT_TRUE(listener.ok());
  EXPECT_NE(listener.value()->address(), "127.0.0.1:0");
  EXPECT_EQ(transport->listen(listener.value()->address()).error().code, Errc::kIo) << "in use";
  // Nothing listens on a port we just closed.
  std::string closed;
  {
    auto other = transport->listen("127.0.0.1:0");
    ASSERT_TRUE(other.ok());
    closed = other.value()->address();
  }
  auto refused = transport->connect(closed, 1'000);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.error().code, Errc::kUnavailable);
}

}  // namespace
}  // namespace weft::test
