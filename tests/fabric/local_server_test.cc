// Local admission: the node's Unix socket. Who is admitted (SO_PEERCRED against the allow list),
// what malformed requests do (close their connection, never the server), one server per path,
// stale sockets, and clients in other processes producing and consuming through it, including a
// producer SIGKILLed with a claim open. Every child is stopped and reaped by its PID; every loop
// is bounded in count and time.
#include <gtest/gtest.h>
#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "children.h"
#include "client_fixture.h"
#include "weft/client.h"
#include "weft/consumer.h"
#include "weft/fabric/local_protocol.h"
#include "weft/fabric/local_server.h"
#include "weft/fabric/log.h"
#include "weft/node.h"
#include "weft/producer.h"

namespace weft {
namespace {

using test::bytes_of;
using test::text_of;
using Clock = std::chrono::steady_clock;

constexpr uid_t kNobody = 65534;

// Exit codes children report with.
enum ChildExit : int {
  kChildOk = 0,
  kChildSetuidFailed = 20,
  kChildConnectFailed = 21,
  kChildProducerFailed = 22,
  kChildSendFailed = 23,
  kChildPipeFailed = 24,
  kChildUnexpected = 25,
};

using test::Children;

// A pipe whose ends close with it.
struct Pipe {
  UniqueFd read_end;
  UniqueFd write_end;
  static Pipe make() {
    int fds[2] = {-1, -1};
    EXPECT_EQ(pipe2(fds, O_CLOEXEC), 0) << std::strerror(errno);
    return Pipe{UniqueFd(fds[0]), UniqueFd(fds[1])};
  }
};

bool write_all(int fd, const void* data, std::size_t n) {
  const auto* p = static_cast<const char*>(data);
  while (n > 0) {
    const ssize_t w = write(fd, p, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return false;
    p += w;
    n -= static_cast<std::size_t>(w);
  }
  return true;
}

// Reads exactly n bytes within `timeout`; false on timeout, EOF or error.
bool read_all(int fd, void* data, std::size_t n, std::chrono::milliseconds timeout) {
  auto* p = static_cast<char*>(data);
  const auto deadline = Clock::now() + timeout;
  while (n > 0) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
    if (left <= 0) return false;
    pollfd pfd{fd, POLLIN, 0};
    if (poll(&pfd, 1, static_cast<int>(left)) <= 0) continue;
    const ssize_t r = read(fd, p, n);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return false;
    p += r;
    n -= static_cast<std::size_t>(r);
  }
  return true;
}

// Polls `done` every millisecond until it holds or `timeout` passes.
bool eventually(const std::function<bool()>& done, std::chrono::milliseconds timeout = std::chrono::seconds(5)) {
  const auto deadline = Clock::now() + timeout;
  while (!done()) {
    if (Clock::now() > deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return true;
}

// Drops supplementary groups, then gid, then uid (in that order: after setuid nothing else may).
bool become(uid_t uid) { return setgroups(0, nullptr) == 0 && setgid(uid) == 0 && setuid(uid) == 0; }

// The outcome of Client::connect in a child, reported through a pipe: the code, then the message.
void report(int fd, const Result<std::shared_ptr<Client>>& connected) {
  const auto code = static_cast<std::uint8_t>(connected.ok() ? Errc::kOk : connected.error().code);
  const std::string message = connected.ok() ? std::string() : connected.error().message;
  const auto length = static_cast<std::uint32_t>(message.size());
  (void)(write_all(fd, &code, 1) && write_all(fd, &length, 4) && write_all(fd, message.data(), message.size()));
}

struct Reported {
  Errc code = Errc::kInternal;
  std::string message;
};

std::optional<Reported> read_report(int fd) {
  std::uint8_t code = 0;
  std::uint32_t length = 0;
  if (!read_all(fd, &code, 1, std::chrono::seconds(10)) || !read_all(fd, &length, 4, std::chrono::seconds(1)) || length > 4096)
    return std::nullopt;
  std::string message(length, '\0');
  if (!read_all(fd, message.data(), length, std::chrono::seconds(1))) return std::nullopt;
  return Reported{static_cast<Errc>(code), message};
}

// ---- raw protocol ------------------------------------------------------------------------------

UniqueFd connect_raw(const std::string& path) {
  UniqueFd fd(socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0));
  EXPECT_TRUE(fd.valid()) << std::strerror(errno);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, path.data(), path.size());
  EXPECT_EQ(connect(fd.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)), 0) << std::strerror(errno);
  return fd;
}

// Sends one datagram with `fd_count` descriptors attached.
bool send_raw(int socket_fd, const std::vector<std::byte>& bytes, int fd_count = 0) {
  iovec iov{const_cast<std::byte*>(bytes.data()), bytes.size()};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * 2)] = {};
  int fds[2] = {-1, -1};
  if (fd_count > 0) {
    for (int i = 0; i < fd_count; ++i) fds[i] = eventfd(0, EFD_CLOEXEC);
    msg.msg_control = control;
    msg.msg_controllen = CMSG_SPACE(sizeof(int) * static_cast<std::size_t>(fd_count));
    cmsghdr* c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * static_cast<std::size_t>(fd_count));
    std::memcpy(CMSG_DATA(c), fds, sizeof(int) * static_cast<std::size_t>(fd_count));
  }
  const ssize_t n = sendmsg(socket_fd, &msg, MSG_NOSIGNAL);
  for (int i = 0; i < fd_count; ++i) close(fds[i]);
  EXPECT_EQ(n, static_cast<ssize_t>(bytes.size())) << std::strerror(errno);
  return n == static_cast<ssize_t>(bytes.size());
}

// What came back on a raw connection: the error reply (if any) and whether the server closed it.
struct RawOutcome {
  std::optional<Errc> reply;
  std::string message;
  bool closed = false;
};

RawOutcome read_until_closed(int fd, std::chrono::milliseconds timeout = std::chrono::seconds(5)) {
  RawOutcome out;
  const auto deadline = Clock::now() + timeout;
  std::vector<std::byte> buffer(local::kMaxMessageBytes);
  while (Clock::now() < deadline) {
    pollfd pfd{fd, POLLIN, 0};
    if (poll(&pfd, 1, 10) <= 0) continue;
    const ssize_t n = recv(fd, buffer.data(), buffer.size(), 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      out.closed = true;
      break;
    }
    std::span<const std::byte> payload;
    Result<local::Header> header = local::parse_header(std::span<const std::byte>(buffer.data(), static_cast<std::size_t>(n)), payload);
    if (!header.ok() || payload.empty()) continue;
    local::Reader r(payload);
    const auto code = static_cast<Errc>(r.u8());
    if (code == Errc::kOk) continue;  // the answer to an earlier, good request
    out.reply = code;
    out.message = r.str(64 * 1024);
  }
  return out;
}

std::vector<std::byte> message(std::uint16_t type, const std::function<void(local::Writer&)>& body = {}) {
  std::vector<std::byte> out;
  local::begin_message(out, type, 7);
  local::Writer w(out);
  if (body) body(w);
  local::finish_message(out);
  return out;
}

std::vector<std::byte> hello(std::uint32_t version = local::kVersion) {
  return message(static_cast<std::uint16_t>(local::MessageType::kHello), [&](local::Writer& w) {
    w.u32(version);
    w.str("raw-test");
    w.u32(static_cast<std::uint32_t>(getpid()));
  });
}

// ---- the fixture --------------------------------------------------------------------------------

class LocalServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    set_log_level(LogLevel::kError);  // the refusals below are expected; their warnings are noise
    ASSERT_FALSE(dir_.path().empty());
    path_ = dir_.path() + "/weftd.sock";
    Result<std::unique_ptr<Node>> node = Node::start(test::test_node_options(true));
    ASSERT_TRUE(node.ok()) << node.error().message;
    node_ = std::move(node).value();
  }
  void TearDown() override {
    server_.reset();
    node_.reset();
    set_log_level(LogLevel::kInfo);
  }

  void serve(LocalServerOptions options = {}) {
    options.socket_path = path_;
    Result<std::unique_ptr<LocalServer>> server = LocalServer::start(*node_, options);
    ASSERT_TRUE(server.ok()) << server.error().message;
    server_ = std::move(server).value();
  }

  // A well-behaved client still gets served.
  void expect_serving() {
    Result<std::shared_ptr<Client>> client = Client::connect(path_);
    ASSERT_TRUE(client.ok()) << client.error().message;
    Result<std::vector<std::string>> topics = (*client)->list_topics();
    ASSERT_TRUE(topics.ok()) << topics.error().message;
    EXPECT_EQ(topics->size(), node_->list_topics().size());
  }

  test::TempDir dir_;
  std::string path_;
  std::unique_ptr<Node> node_;
  std::unique_ptr<LocalServer> server_;
  Children children_;
};

// Tests whose child processes start threads (a node, a client's reader) or keep pace with this
// process: ThreadSanitizer cannot follow a thread started after a threaded process forks, and
// slows the consumer here until the producers lap it. CMake runs them as a `multiproc` test of
// their own; the rest are `unit` and run under the sanitizers.
class LocalServerProcessTest : public LocalServerTest {};

// ---- admission ---------------------------------------------------------------------------------

TEST_F(LocalServerTest, AdmitsAClientOfTheNodesOwnUid) {
  serve();
  Result<std::shared_ptr<Client>> client = Client::connect(path_);
  ASSERT_TRUE(client.ok()) << client.error().message;
  ASSERT_TRUE((*client)->create_topic("mine", 1).ok());
  Result<NodeStatus> status = (*client)->status();
  ASSERT_TRUE(status.ok());
  EXPECT_EQ(status->connections, 1u);
  EXPECT_EQ(status->accepted, 1u);
  EXPECT_EQ(status->refused, 0u);
  EXPECT_EQ(server_->stats().accepted, 1u);
  EXPECT_EQ(server_->socket_path(), path_);
  struct stat st {};
  ASSERT_EQ(stat(path_.c_str(), &st), 0);
  EXPECT_TRUE(S_ISSOCK(st.st_mode));
  EXPECT_EQ(st.st_mode & 0777, 0660u);
}

TEST_F(LocalServerProcessTest, AdmitsItsOwnUidWhenNotRoot) {
  // As root every peer is admitted; run a node as an ordinary user to see its own uid admitted.
  if (geteuid() != 0) GTEST_SKIP() << "needs root to run a node as uid 65534";
  ASSERT_EQ(chown(dir_.path().c_str(), kNobody, kNobody), 0) << std::strerror(errno);
  Pipe result = Pipe::make();
  const std::string path = path_;
  const pid_t child = children_.spawn([&]() -> int {
    result.read_end = UniqueFd();
    if (!become(kNobody)) return kChildSetuidFailed;
    NodeOptions options = test::test_node_options(false);
    Result<std::unique_ptr<Node>> node = Node::start(options);
    if (!node.ok()) return kChildUnexpected;
    LocalServerOptions server_options;
    server_options.socket_path = path;
    Result<std::unique_ptr<LocalServer>> server = LocalServer::start(**node, server_options);
    if (!server.ok()) return kChildUnexpected;
    Result<std::shared_ptr<Client>> client = Client::connect(path);
    report(result.write_end.get(), client);
    if (!client.ok()) return kChildConnectFailed;
    return (*client)->list_topics().ok() && (*server)->stats().refused == 0 ? kChildOk : kChildUnexpected;
  });
  result.write_end = UniqueFd();
  const std::optional<Reported> reported = read_report(result.read_end.get());
  ASSERT_TRUE(reported.has_value());
  EXPECT_EQ(reported->code, Errc::kOk) << reported->message;
  EXPECT_EQ(children_.reap(child, std::chrono::seconds(10)), kChildOk);
}

TEST_F(LocalServerProcessTest, TheDefaultPlaceRefusesADirectoryLinkOrANodeOfAnotherUser) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root to act as uid 65534";
  // Given a root-owned directory, and links to it made by root and by another user
  const std::string real = dir_.path() + "/real", link = dir_.path() + "/link", own_link = dir_.path() + "/own-link";
  ASSERT_EQ(mkdir(real.c_str(), 0755), 0);
  ASSERT_EQ(symlink(real.c_str(), link.c_str()), 0);
  ASSERT_EQ(lchown(link.c_str(), kNobody, kNobody), 0) << std::strerror(errno);
  ASSERT_EQ(symlink(real.c_str(), own_link.c_str()), 0);
  // Expect the other user's link refused (before, the check followed it to the directory it
  // names and passed), root's taken
  const Result<void> planted = local::check_socket_directory(link + "/weftd.sock");
  ASSERT_FALSE(planted.ok());
  EXPECT_EQ(planted.error().code, Errc::kPermissionDenied);
  EXPECT_NE(planted.error().message.find("is a link that belongs to uid 65534"), std::string::npos) << planted.error().message;
  EXPECT_TRUE(local::check_socket_directory(own_link + "/weftd.sock").ok());

  // Given a node's socket that uid 65534 listens on at uid 65533's default place
  // ($XDG_RUNTIME_DIR/weft, here a shared, sticky directory)
  const std::string runtime = dir_.path() + "/runtime", shared = runtime + "/weft", path = shared + "/weftd.sock";
  ASSERT_EQ(chmod(dir_.path().c_str(), 0755), 0);  // the other users reach it
  ASSERT_EQ(mkdir(runtime.c_str(), 0755), 0);
  ASSERT_EQ(mkdir(shared.c_str(), 0777), 0);
  ASSERT_EQ(chmod(shared.c_str(), 01777), 0);
  Pipe ready = Pipe::make();
  const pid_t node = children_.spawn([&]() -> int {
    ready.read_end = UniqueFd();
    if (!become(kNobody)) return kChildSetuidFailed;
    umask(0);  // a socket every user may connect to
    const UniqueFd fd(socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0));
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::memcpy(addr.sun_path, path.data(), path.size());
    if (bind(fd.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof addr) != 0 || listen(fd.get(), 4) != 0) return kChildUnexpected;
    const char one = 1;
    (void)write_all(ready.write_end.get(), &one, 1);
    std::this_thread::sleep_for(std::chrono::seconds(10));  // stopped by PID before then
    return kChildOk;
  });
  ready.write_end = UniqueFd();
  char byte = 0;
  ASSERT_EQ(read(ready.read_end.get(), &byte, 1), 1) << "the other user's socket is not listening";
  // When a client of uid 65533 connects to its default place (no WEFT_SOCKET)
  Pipe result = Pipe::make();
  const pid_t client = children_.spawn([&]() -> int {
    result.read_end = UniqueFd();
    if (!become(kNobody - 1)) return kChildSetuidFailed;
    unsetenv("WEFT_SOCKET");
    setenv("XDG_RUNTIME_DIR", runtime.c_str(), 1);
    report(result.write_end.get(), Client::connect(""));
    return kChildOk;
  });
  result.write_end = UniqueFd();
  const std::optional<Reported> reported = read_report(result.read_end.get());
  EXPECT_EQ(children_.reap(client, std::chrono::seconds(10)), kChildOk);
  // Expect it refused, naming the node's uid (before, it spoke to whoever listened there)
  ASSERT_TRUE(reported.has_value());
  EXPECT_EQ(reported->code, Errc::kPermissionDenied) << reported->message;
  EXPECT_NE(reported->message.find("runs as uid 65534"), std::string::npos) << reported->message;
  EXPECT_EQ(children_.reap(node, std::chrono::milliseconds(10)), test::Children::kTimedOut);
}

TEST_F(LocalServerTest, RefusesAnUnlistedUidClearlyAndKeepsServing) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root to setuid() a child to 65534";
  // Given a socket any user can reach, and no allow list
  ASSERT_EQ(chmod(dir_.path().c_str(), 0755), 0);
  LocalServerOptions options;
  options.socket_mode = 0666;
  serve(options);

  // When a process of another uid connects
  Pipe result = Pipe::make();
  const std::string path = path_;
  const pid_t child = children_.spawn([&]() -> int {
    result.read_end = UniqueFd();
    if (!become(kNobody)) return kChildSetuidFailed;
    report(result.write_end.get(), Client::connect(path));
    return kChildOk;
  });
  result.write_end = UniqueFd();
  const std::optional<Reported> reported = read_report(result.read_end.get());
  EXPECT_EQ(children_.reap(child, std::chrono::seconds(10)), kChildOk);

  // Expect a refusal that says who was refused and how to admit them
  ASSERT_TRUE(reported.has_value());
  EXPECT_EQ(reported->code, Errc::kPermissionDenied) << errc_name(reported->code) << ": " << reported->message;
  EXPECT_NE(reported->message.find("uid 65534"), std::string::npos) << reported->message;
  EXPECT_NE(reported->message.find("allow_uids"), std::string::npos) << reported->message;
  EXPECT_TRUE(eventually([&] { return server_->stats().refused == 1; }));
  EXPECT_EQ(server_->stats().accepted, 0u);

  // And the server still serves the node's own users
  expect_serving();
}

TEST_F(LocalServerTest, ASocketFileModeThatShutsAUserOutIsReportedAsSuch) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root to setuid() a child to 65534";
  ASSERT_EQ(chmod(dir_.path().c_str(), 0755), 0);
  serve();  // 0660: uid 65534 may not even open the socket
  Pipe result = Pipe::make();
  const std::string path = path_;
  const pid_t child = children_.spawn([&]() -> int {
    result.read_end = UniqueFd();
    if (!become(kNobody)) return kChildSetuidFailed;
    report(result.write_end.get(), Client::connect(path));
    return kChildOk;
  });
  result.write_end = UniqueFd();
  const std::optional<Reported> reported = read_report(result.read_end.get());
  EXPECT_EQ(children_.reap(child, std::chrono::seconds(10)), kChildOk);
  ASSERT_TRUE(reported.has_value());
  EXPECT_EQ(reported->code, Errc::kPermissionDenied) << reported->message;
  EXPECT_NE(reported->message.find("mode"), std::string::npos) << reported->message;
  expect_serving();
}

TEST_F(LocalServerTest, AdmitsAListedUidThatThenProduces) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root to setuid() a child to 65534";
  // Given uid 65534 on the allow list
  ASSERT_EQ(chmod(dir_.path().c_str(), 0755), 0);
  LocalServerOptions options;
  options.socket_mode = 0666;
  options.allow_uids = {kNobody};
  serve(options);
  ASSERT_TRUE(node_->create_topic("shared").ok());
  Result<TopicConsumer> consumer = TopicConsumer::create(Client::embedded(*node_));
  ASSERT_TRUE(consumer.ok());
  ASSERT_TRUE(consumer->assign("shared", {}, SeekTo::earliest()).ok());

  // When a process of that uid connects and produces through the ring it was handed
  const std::string path = path_;
  const pid_t child = children_.spawn([&]() -> int {
    if (!become(kNobody)) return kChildSetuidFailed;
    Result<std::shared_ptr<Client>> client = Client::connect(path);
    if (!client.ok()) return kChildConnectFailed;
    Result<TopicProducer> producer = TopicProducer::create(*client, "shared");
    if (!producer.ok()) return kChildProducerFailed;
    for (int i = 0; i < 5; ++i) {
      const std::string value = "from-nobody-" + std::to_string(i);
      RecordInput record;
      record.value = bytes_of(value);
      if (!producer->send(record).ok()) return kChildSendFailed;
    }
    return kChildOk;
  });

  // Expect it admitted and its records in the partition
  EXPECT_EQ(children_.reap(child, std::chrono::seconds(10)), kChildOk);
  const test::Drained got = test::drain(*consumer, 5);
  ASSERT_EQ(got.records.size(), 5u);
  for (int i = 0; i < 5; ++i) EXPECT_EQ(got.records[static_cast<std::size_t>(i)].value, "from-nobody-" + std::to_string(i));
  EXPECT_EQ(server_->stats().refused, 0u);
  EXPECT_EQ(server_->stats().accepted, 1u);
}

// One reply on a raw connection: its code and message (kOk with an empty message for a good one).
std::pair<Errc, std::string> read_reply(int fd) {
  std::vector<std::byte> buffer(local::kMaxMessageBytes);
  pollfd pfd{fd, POLLIN, 0};
  if (poll(&pfd, 1, 5000) <= 0) return {Errc::kUnavailable, "no reply within 5 s"};
  const ssize_t n = recv(fd, buffer.data(), buffer.size(), 0);
  if (n <= 0) return {Errc::kAborted, "closed"};
  std::span<const std::byte> payload;
  Result<local::Header> header = local::parse_header(std::span<const std::byte>(buffer.data(), static_cast<std::size_t>(n)), payload);
  if (!header.ok() || payload.empty()) return {Errc::kCorrupt, "unparseable reply"};
  local::Reader r(payload);
  const auto code = static_cast<Errc>(r.u8());
  return {code, code == Errc::kOk ? std::string() : r.str(64 * 1024)};
}

TEST_F(LocalServerTest, AClientInAnotherPidNamespaceIsRefusedItsRings) {
  // Given a topic, and a client whose hello names a pid that is not its pid here (as a client in
  // another PID namespace would: its slots would look dead to the node)
  serve();
  ASSERT_TRUE(node_->create_topic("t").ok());
  UniqueFd fd = connect_raw(path_);
  ASSERT_TRUE(send_raw(fd.get(), message(static_cast<std::uint16_t>(local::MessageType::kHello), [](local::Writer& w) {
    w.u32(local::kVersion);
    w.str("elsewhere");
    w.u32(static_cast<std::uint32_t>(getpid()) + 1);
  })));
  // Expect the hello refused with the reason, and no ring handed out afterwards
  const auto [hello_code, hello_message] = read_reply(fd.get());
  EXPECT_EQ(hello_code, Errc::kPermissionDenied) << hello_message;
  EXPECT_NE(hello_message.find("PID namespace"), std::string::npos) << hello_message;
  ASSERT_TRUE(send_raw(fd.get(), message(static_cast<std::uint16_t>(local::MessageType::kOpenPartition), [](local::Writer& w) {
    w.str("t");
    w.u32(0);
  })));
  const auto [open_code, open_message] = read_reply(fd.get());
  EXPECT_EQ(open_code, Errc::kFailedPrecondition) << open_message;
  EXPECT_NE(open_message.find("hello"), std::string::npos) << open_message;
  expect_serving();
}

// A node whose topics are made through a store that answers slowly (a cluster's etcd): each
// creation is held until the test lets it go.
struct HeldCreations {
  std::mutex mutex;
  std::condition_variable changed;
  int entered = 0;
  bool released = false;
  bool wait_entered(int n) {
    std::unique_lock lock(mutex);
    return changed.wait_for(lock, std::chrono::seconds(5), [&] { return entered >= n; });
  }
  void release(bool released_now = true) {
    {
      std::lock_guard lock(mutex);
      released = released_now;
    }
    changed.notify_all();
  }
};

TEST_F(LocalServerTest, ATopicMadeSlowlyHoldsNoOtherClient) {
  // (a node that keeps committed offsets)
  NodeOptions node_options = test::test_node_options(true);
  node_options.offsets_dir = dir_.path() + "/offsets";
  Result<std::unique_ptr<Node>> with_log = Node::start(node_options);
  ASSERT_TRUE(with_log.ok()) << with_log.error().message;
  node_ = std::move(with_log).value();
  HeldCreations held;
  LocalServerOptions options;
  options.create_topic = [&](const std::string& name, const TopicConfig& config, std::uint32_t) -> Result<TopicInfo> {
    std::unique_lock lock(held.mutex);
    ++held.entered;
    held.changed.notify_all();
    held.changed.wait(lock, [&] { return held.released; });
    return node_->create_topic(name, config);
  };
  serve(options);
  // Whatever fails below, the server (whose worker may wait in the hook) stops before `held` goes.
  struct StopFirst {
    HeldCreations& held;
    std::unique_ptr<LocalServer>& server;
    ~StopFirst() {
      held.release();
      server.reset();
    }
  } stop_first{held, server_};
  ASSERT_TRUE(node_->create_topic("ready").ok());
  const auto create = [](const std::string& name) {
    return message(static_cast<std::uint16_t>(local::MessageType::kCreateTopic), [&](local::Writer& w) {
      w.str(name);
      w.u32(0);
    });
  };
  // Given a client whose topic is being made
  UniqueFd admin = connect_raw(path_);
  ASSERT_TRUE(send_raw(admin.get(), hello()));
  ASSERT_EQ(read_reply(admin.get()).first, Errc::kOk);
  ASSERT_TRUE(send_raw(admin.get(), create("slow")));
  ASSERT_TRUE(held.wait_entered(1));
  // When another client asks for a ring meanwhile, expect it served
  UniqueFd other = connect_raw(path_);
  ASSERT_TRUE(send_raw(other.get(), hello()));
  EXPECT_EQ(read_reply(other.get()).first, Errc::kOk);
  ASSERT_TRUE(send_raw(other.get(), message(static_cast<std::uint16_t>(local::MessageType::kOpenPartition), [](local::Writer& w) {
    w.str("ready");
    w.u32(0);
  })));
  const auto [open_code, open_message] = read_reply(other.get());
  EXPECT_EQ(open_code, Errc::kOk) << open_message;
  // and a consumer's offset commit and fetch answered (by the offsets' worker)
  {
    Result<std::shared_ptr<Client>> consumer = Client::connect(path_);
    ASSERT_TRUE(consumer.ok()) << consumer.error().message;
    CommittedOffset committed;
    committed.topic = "ready";
    committed.offset = Offset{5};
    const Result<void> commit = (*consumer)->commit_offsets("readers", std::span(&committed, 1));
    const Result<std::vector<CommittedOffset>> fetched = (*consumer)->fetch_offsets("readers", "ready");
    ASSERT_TRUE(commit.ok()) << commit.error().message;
    ASSERT_TRUE(fetched.ok()) << fetched.error().message;
    ASSERT_EQ(fetched->size(), 1u);
    EXPECT_EQ((*fetched)[0].offset, Offset{5});
  }
  // And the first answered once its topic is made
  held.release();
  const auto [created_code, created_message] = read_reply(admin.get());
  EXPECT_EQ(created_code, Errc::kOk) << created_message;
  EXPECT_TRUE(node_->describe_topic("slow").ok());
  // And a client that leaves while its topic is made is forgotten, the others served
  held.release(false);
  ASSERT_TRUE(send_raw(admin.get(), create("slow2")));
  ASSERT_TRUE(held.wait_entered(2));
  admin = UniqueFd();
  held.release();
  EXPECT_TRUE(eventually([&] { return node_->describe_topic("slow2").ok(); }));
  EXPECT_TRUE(eventually([&] { return server_->stats().connections == 1; })) << server_->stats().connections << " connections";
  expect_serving();
}

TEST_F(LocalServerTest, NoDescriptorGoesToAClientThatHasNotReadItsEarlierResponses) {
  if (!local::kernel_reports_unread_bytes()) GTEST_SKIP() << "this kernel does not report a Unix socket's unread bytes (SIOCOUTQ), which the check needs";
  // Given a client that asks for a partition's ring twice without reading the first answer
  serve();
  ASSERT_TRUE(node_->create_topic("t").ok());
  UniqueFd fd = connect_raw(path_);
  ASSERT_TRUE(send_raw(fd.get(), hello()));
  EXPECT_EQ(read_reply(fd.get()).first, Errc::kOk);
  const auto open = message(static_cast<std::uint16_t>(local::MessageType::kOpenPartition), [](local::Writer& w) {
    w.str("t");
    w.u32(0);
  });
  ASSERT_TRUE(send_raw(fd.get(), open));
  ASSERT_TRUE(eventually([&] { return server_->stats().requests >= 2; }));
  ASSERT_TRUE(send_raw(fd.get(), open));
  // (read nothing before the node has decided on the second: reading the first would let it through)
  EXPECT_TRUE(eventually([&] { return server_->stats().withheld_descriptors == 1; })) << "the second request got its ring";
  // Expect the first answered with the ring and the second refused with the reason
  const auto [first_code, first_message] = read_reply(fd.get());
  EXPECT_EQ(first_code, Errc::kOk) << first_message;
  const auto [second_code, second_message] = read_reply(fd.get());
  EXPECT_EQ(second_code, Errc::kResourceExhausted) << second_message;
  EXPECT_NE(second_message.find("read them first"), std::string::npos) << second_message;
  // And, read up, the client served again
  ASSERT_TRUE(send_raw(fd.get(), open));
  EXPECT_EQ(read_reply(fd.get()).first, Errc::kOk);
  expect_serving();
}

TEST_F(LocalServerTest, AdmitsAUserThroughASupplementaryGroup) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root to give a child uid 65534 and a supplementary group";
  // Given gid 4242 on the allow list, and a process of uid 65534 whose primary group is 65534
  // and which belongs to 4242 only as a supplementary group
  constexpr gid_t kGroup = 4242;
  ASSERT_EQ(chmod(dir_.path().c_str(), 0755), 0);
  LocalServerOptions options;
  options.socket_mode = 0666;
  options.allow_gids = {kGroup};
  serve(options);
  Pipe result = Pipe::make();
  const std::string path = path_;
  const pid_t child = children_.spawn([&]() -> int {
    result.read_end = UniqueFd();
    const gid_t groups[] = {kGroup};
    if (setgroups(1, groups) != 0 || setgid(kNobody) != 0 || setuid(kNobody) != 0) return kChildSetuidFailed;
    report(result.write_end.get(), Client::connect(path));
    return kChildOk;
  });
  result.write_end = UniqueFd();
  const std::optional<Reported> reported = read_report(result.read_end.get());
  EXPECT_EQ(children_.reap(child, std::chrono::seconds(10)), kChildOk);
  // Expect it admitted
  ASSERT_TRUE(reported.has_value());
  EXPECT_EQ(reported->code, Errc::kOk) << reported->message;
  EXPECT_EQ(server_->stats().refused, 0u);
}

TEST_F(LocalServerTest, ConnectionsBeyondTheLimitAreRefusedWithAReason) {
  LocalServerOptions options;
  options.max_connections = 1;
  options.reserved_connections = 0;  // this test's uid is the node's own: no slots kept for it
  serve(options);
  Result<std::shared_ptr<Client>> first = Client::connect(path_);
  ASSERT_TRUE(first.ok()) << first.error().message;

  Result<std::shared_ptr<Client>> second = Client::connect(path_);

  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.error().code, Errc::kResourceExhausted) << errc_name(second.error().code) << ": " << second.error().message;
  EXPECT_NE(second.error().message.find("maximum of 1"), std::string::npos) << second.error().message;
  EXPECT_TRUE((*first)->list_topics().ok());
  first->reset();
  EXPECT_TRUE(eventually([&] { return server_->stats().connections == 0; }));
  expect_serving();
}

TEST_F(LocalServerTest, RootAndTheNodesOwnUidHaveSlotsKeptPastTheLimit) {
  // Given a limit of one and two slots kept for the operator (this test runs as the node's uid)
  LocalServerOptions options;
  options.max_connections = 1;
  options.reserved_connections = 2;
  serve(options);
  std::vector<std::shared_ptr<Client>> clients;
  for (int i = 0; i < 3; ++i) {
    Result<std::shared_ptr<Client>> c = Client::connect(path_);
    ASSERT_TRUE(c.ok()) << "connection " << i << ": " << c.error().message;
    clients.push_back(*c);
  }
  // Expect the operator's three admitted and a fourth refused
  Result<std::shared_ptr<Client>> fourth = Client::connect(path_);
  ASSERT_FALSE(fourth.ok());
  EXPECT_EQ(fourth.error().code, Errc::kResourceExhausted);
  EXPECT_TRUE(clients.back()->list_topics().ok());
}

// ---- malformed requests ----------------------------------------------------------------------

struct BadRequest {
  const char* name;
  std::function<std::vector<std::byte>()> bytes;
  int fds = 0;
  std::optional<Errc> reply;  // the error the server answers with, when it can
};

std::vector<std::byte> with_header(std::uint32_t magic, std::uint16_t version, std::uint16_t type, std::uint32_t payload_bytes,
                                   std::size_t carried) {
  std::vector<std::byte> out;
  local::Writer w(out);
  w.u32(magic);
  w.u16(version);
  w.u16(type);
  w.u32(9);
  w.u32(payload_bytes);
  out.resize(out.size() + carried, std::byte{0x5a});
  return out;
}

TEST_F(LocalServerTest, MalformedRequestsCloseOnlyTheirOwnConnection) {
  serve();
  ASSERT_TRUE(node_->create_topic("kept").ok());
  constexpr auto kList = static_cast<std::uint16_t>(local::MessageType::kListTopics);
  constexpr auto kDescribe = static_cast<std::uint16_t>(local::MessageType::kDescribeTopic);
  constexpr auto kCreate = static_cast<std::uint16_t>(local::MessageType::kCreateTopic);
  const std::vector<BadRequest> cases = {
      {"short datagram", [] { return std::vector<std::byte>(5, std::byte{1}); }, 0, Errc::kInvalidArgument},
      {"bad magic", [&] { return with_header(0xdeadbeef, local::kVersion, kList, 0, 0); }, 0, Errc::kInvalidArgument},
      {"wrong version", [&] { return with_header(local::kMagic, local::kVersion + 1, kList, 0, 0); }, 0, Errc::kUnsupported},
      {"payload longer than carried", [&] { return with_header(local::kMagic, local::kVersion, kList, 10, 4); }, 0, Errc::kInvalidArgument},
      {"payload shorter than carried", [&] { return with_header(local::kMagic, local::kVersion, kList, 1, 4); }, 0, Errc::kInvalidArgument},
      {"unknown type", [&] { return with_header(local::kMagic, local::kVersion, 99, 0, 0); }, 0, Errc::kUnsupported},
      {"a response sent as a request", [&] { return with_header(local::kMagic, local::kVersion, kList | local::kResponseBit, 0, 0); }, 0,
       Errc::kUnsupported},
      {"hello of another protocol version", [] { return hello(local::kVersion + 1); }, 0, Errc::kUnsupported},
      {"truncated string", [&] { return message(kDescribe, [](local::Writer& w) { w.u32(100); w.u8(1); w.u8(2); w.u8(3); }); }, 0,
       Errc::kInvalidArgument},
      {"truncated integer", [&] { return message(kCreate, [](local::Writer& w) { w.str("t"); w.u16(1); }); }, 0, Errc::kInvalidArgument},
      {"string longer than allowed", [&] { return message(kDescribe, [](local::Writer& w) { w.str(std::string(600, 'x')); }); }, 0,
       Errc::kInvalidArgument},
      {"trailing bytes", [&] { return message(kList, [](local::Writer& w) { w.u32(0); }); }, 0, Errc::kInvalidArgument},
      {"too many settings", [&] {
         return message(kCreate, [](local::Writer& w) {
           w.str("t");
           w.u32(1000);
           w.str("partitions");
           w.str("1");
         });
       }, 0, Errc::kInvalidArgument},
      {"oversized datagram", [] {
         std::vector<std::byte> out = hello();
         out.resize(local::kMaxRequestBytes + 4096, std::byte{0});
         return out;
       }, 0, std::nullopt},  // cut off by the kernel: not a request the server can answer
      {"a file descriptor attached", [] { return hello(); }, 1, Errc::kInvalidArgument},
      {"two file descriptors attached", [] { return hello(); }, 2, std::nullopt},
  };
  for (const BadRequest& c : cases) {
    SCOPED_TRACE(c.name);
    const std::uint64_t bad_before = server_->stats().bad_requests;
    // Given a connection that first sends a good request
    UniqueFd fd = connect_raw(path_);
    ASSERT_TRUE(send_raw(fd.get(), hello()));

    // When it sends the malformed one
    ASSERT_TRUE(send_raw(fd.get(), c.bytes(), c.fds));

    // Expect an error reply where the server can give one, the connection closed and counted
    const RawOutcome outcome = read_until_closed(fd.get());
    EXPECT_TRUE(outcome.closed);
    EXPECT_EQ(outcome.reply, c.reply) << outcome.message;
    if (outcome.reply) {
      EXPECT_FALSE(outcome.message.empty());
    }
    EXPECT_TRUE(eventually([&] { return server_->stats().bad_requests == bad_before + 1; }))
        << server_->stats().bad_requests << " after " << bad_before;
    EXPECT_TRUE(eventually([&] { return server_->stats().connections == 0; }));
    // And the server serves the next client
    expect_serving();
  }
  EXPECT_EQ(node_->list_topics(), (std::vector<std::string>{"kept"}));
}

TEST_F(LocalServerTest, ThousandsOfMutatedRequestsNeverCrashOrWedgeTheServer) {
  // Given valid requests of every type, mutated at random (bytes flipped, cut short, grown)
  serve();
  ASSERT_TRUE(node_->create_topic("fuzzed").ok());
  constexpr auto type = [](local::MessageType t) { return static_cast<std::uint16_t>(t); };
  const std::vector<std::vector<std::byte>> seeds = {
      hello(),
      message(type(local::MessageType::kListTopics)),
      message(type(local::MessageType::kStatus)),
      message(type(local::MessageType::kDescribeTopic), [](local::Writer& w) { w.str("fuzzed"); }),
      message(type(local::MessageType::kOpenPartition), [](local::Writer& w) {
        w.str("fuzzed");
        w.u32(0);
      }),
      message(type(local::MessageType::kCreateTopic), [](local::Writer& w) {
        w.str("made-by-fuzz");
        w.u32(1);
        w.str("partitions");
        w.str("2");
      }),
      message(type(local::MessageType::kDeleteTopic), [](local::Writer& w) { w.str("made-by-fuzz"); }),
  };
  std::mt19937_64 random(20261126);
  const auto give_up = Clock::now() + std::chrono::seconds(30);
  int sent = 0;
  // When they arrive on a few connections, each reopened when the server closes it
  for (int connection = 0; connection < 400 && Clock::now() < give_up; ++connection) {
    UniqueFd fd = connect_raw(path_);
    ASSERT_TRUE(fd.valid());
    (void)send_raw(fd.get(), hello());
    for (int i = 0; i < 100; ++i, ++sent) {
      std::vector<std::byte> bytes = seeds[random() % seeds.size()];
      switch (random() % 4) {
        case 0: bytes[random() % bytes.size()] ^= static_cast<std::byte>(1u << (random() % 8)); break;
        case 1: bytes.resize(random() % bytes.size()); break;
        case 2: bytes.resize(bytes.size() + random() % 64, static_cast<std::byte>(random())); break;
        default:
          for (int k = 0; k < 4; ++k) bytes[random() % bytes.size()] = static_cast<std::byte>(random());
      }
      if (bytes.empty()) bytes.push_back(std::byte{0});
      if (send(fd.get(), bytes.data(), bytes.size(), MSG_NOSIGNAL) < 0) break;  // closed on us
      // Drain whatever came back, without waiting for it.
      std::byte reply[4096];
      while (recv(fd.get(), reply, sizeof(reply), MSG_DONTWAIT) > 0) {
      }
    }
  }
  // Expect the server alive, serving, and the node's topics intact (once it has seen every
  // connection end: a topic made or deleted on its worker must not land between the two lists)
  EXPECT_GT(sent, 1000);
  EXPECT_TRUE(eventually([&] { return server_->stats().connections == 0; })) << server_->stats().connections << " left";
  expect_serving();
  EXPECT_TRUE(node_->describe_topic("fuzzed").ok());
  EXPECT_TRUE(eventually([&] { return server_->stats().connections <= 1; }));
}

TEST_F(LocalServerTest, ARequestCutShortByAClosedConnectionIsCountedAndForgotten) {
  serve();
  // Half a message: the header announces 64 payload bytes, 32 arrive, then the client is gone.
  UniqueFd fd = connect_raw(path_);
  ASSERT_TRUE(send_raw(fd.get(), with_header(local::kMagic, local::kVersion, 4, 64, 32)));
  fd = UniqueFd();
  EXPECT_TRUE(eventually([&] { return server_->stats().bad_requests == 1; }));
  EXPECT_TRUE(eventually([&] { return server_->stats().connections == 0; }));
  expect_serving();
}

TEST_F(LocalServerTest, ClientsThatLeaveWithoutARequestAreForgotten) {
  serve();
  for (int i = 0; i < 20; ++i) {
    UniqueFd fd = connect_raw(path_);  // connects, then closes at once
  }
  {
    // A zero-length datagram reads like the end of the connection.
    UniqueFd fd = connect_raw(path_);
    ASSERT_EQ(send(fd.get(), "", 0, MSG_NOSIGNAL), 0);
    EXPECT_TRUE(read_until_closed(fd.get()).closed);
  }
  EXPECT_TRUE(eventually([&] { return server_->stats().accepted == 21 && server_->stats().connections == 0; }))
      << server_->stats().accepted << " accepted, " << server_->stats().connections << " open";
  EXPECT_EQ(server_->stats().bad_requests, 0u);
  EXPECT_EQ(server_->stats().requests, 0u);
  expect_serving();
}

TEST_F(LocalServerTest, AResponseLargerThanTheDefaultSocketBufferArrivesWhole) {
  // Given 900 topics with the longest names Kafka allows: a list of them is ~228 KiB, more than
  // the 208 KiB a Unix datagram may carry by default
  serve();
  TopicConfig small;
  small.ring_capacity_bytes = 64 << 10;
  small.max_batch_bytes = 16 << 10;
  small.producer_slots = 1;
  small.consumer_slots = 1;
  for (int i = 0; i < 900; ++i) {
    std::string name = std::to_string(i);
    name.resize(249, 'n');
    ASSERT_TRUE(node_->create_topic(name, small).ok()) << i;
  }
  Result<std::shared_ptr<Client>> client = Client::connect(path_);
  ASSERT_TRUE(client.ok()) << client.error().message;

  // When a client lists them over the socket
  Result<std::vector<std::string>> topics = (*client)->list_topics();

  // Expect the whole list, and the connection still serving
  ASSERT_TRUE(topics.ok()) << topics.error().message;
  EXPECT_EQ(topics->size(), 900u);
  EXPECT_TRUE((*client)->status().ok());
  EXPECT_EQ(server_->stats().bad_requests, 0u);
}

// ---- one server per path -----------------------------------------------------------------------

TEST_F(LocalServerTest, ASecondServerOnTheSamePathIsRefused) {
  serve();
  LocalServerOptions options;
  options.socket_path = path_;
  Result<std::unique_ptr<LocalServer>> second = LocalServer::start(*node_, options);
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.error().code, Errc::kAlreadyExists);
  EXPECT_NE(second.error().message.find(path_), std::string::npos) << second.error().message;
  // The first keeps its socket and serves on.
  expect_serving();
}

TEST_F(LocalServerTest, AStaleSocketFileIsReplaced) {
  // Given the socket of a server that is gone
  serve();
  server_.reset();
  Result<std::shared_ptr<Client>> nobody_home = Client::connect(path_);
  ASSERT_FALSE(nobody_home.ok());
  EXPECT_EQ(nobody_home.error().code, Errc::kUnavailable);
  EXPECT_NE(nobody_home.error().message.find("no weft node"), std::string::npos) << nobody_home.error().message;
  serve();
  expect_serving();
  server_.reset();

  // And a socket file bound by a process that never listened (or died without cleaning up)
  {
    UniqueFd stale(socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0));
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::memcpy(addr.sun_path, path_.data(), path_.size());
    ASSERT_EQ(bind(stale.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)), 0) << std::strerror(errno);
  }
  struct stat st {};
  ASSERT_EQ(lstat(path_.c_str(), &st), 0);
  ASSERT_TRUE(S_ISSOCK(st.st_mode));

  // Expect a new server to take the path over
  serve();
  expect_serving();
}

TEST_F(LocalServerTest, APathHoldingSomethingElseIsLeftAlone) {
  {
    UniqueFd file(open(path_.c_str(), O_CREAT | O_WRONLY | O_CLOEXEC, 0600));
    ASSERT_TRUE(file.valid());
  }
  LocalServerOptions options;
  options.socket_path = path_;
  Result<std::unique_ptr<LocalServer>> server = LocalServer::start(*node_, options);
  ASSERT_FALSE(server.ok());
  EXPECT_EQ(server.error().code, Errc::kAlreadyExists);
  EXPECT_NE(server.error().message.find("not a socket"), std::string::npos) << server.error().message;
  struct stat st {};
  ASSERT_EQ(lstat(path_.c_str(), &st), 0);
  EXPECT_TRUE(S_ISREG(st.st_mode));

  options.socket_path = dir_.path() + "/" + std::string(120, 's') + ".sock";
  server = LocalServer::start(*node_, options);
  ASSERT_FALSE(server.ok());
  EXPECT_EQ(server.error().code, Errc::kInvalidArgument);
}

// ---- processes through the socket ------------------------------------------------------------

struct Stamped {
  std::uint32_t producer = 0;
  std::uint64_t sequence = 0;
};

std::string stamp(std::uint32_t producer, std::uint64_t sequence) {
  return std::to_string(producer) + ":" + std::to_string(sequence);
}

std::optional<Stamped> parse_stamp(const std::string& value) {
  const std::size_t colon = value.find(':');
  if (colon == std::string::npos) return std::nullopt;
  return Stamped{static_cast<std::uint32_t>(std::stoul(value.substr(0, colon))), std::stoull(value.substr(colon + 1))};
}

// Connects over the socket and sends `count` stamped records from `first`; keyless (sticky).
int produce_over_socket(const std::string& path, const std::string& topic, std::uint32_t id, std::uint64_t first, std::uint64_t count) {
  Result<std::shared_ptr<Client>> client = Client::connect(path);
  if (!client.ok()) return kChildConnectFailed;
  ProducerOptions options;
  options.sticky_batch_bytes = 2048;
  options.max_block_ms = 20'000;
  Result<TopicProducer> producer = TopicProducer::create(*client, topic, options);
  if (!producer.ok()) return kChildProducerFailed;
  for (std::uint64_t seq = first; seq < first + count; ++seq) {
    const std::string value = stamp(id, seq);
    RecordInput record;
    record.value = bytes_of(value);
    if (!producer->send(record).ok()) return kChildSendFailed;
  }
  return kChildOk;
}

TEST_F(LocalServerProcessTest, ProducerProcessesAndAConsumerAgreeOnEveryRecord) {
  // Given a two-partition topic, a consumer here, and three producer processes
  serve();
  ASSERT_TRUE(node_->create_topic("multi", [] {
    TopicConfig c;
    c.partitions = 2;
    c.ring_capacity_bytes = std::size_t{1} << 20;
    c.max_batch_bytes = 64 << 10;
    return c;
  }()).ok());
  Result<TopicConsumer> consumer = TopicConsumer::create(Client::embedded(*node_));
  ASSERT_TRUE(consumer.ok());
  ASSERT_TRUE(consumer->assign("multi", {}, SeekTo::earliest()).ok());
  constexpr std::uint32_t kProducers = 3;
  constexpr std::uint64_t kPerProducer = 3000;
  Pipe start = Pipe::make();
  std::vector<pid_t> pids;
  const std::string path = path_;
  for (std::uint32_t id = 0; id < kProducers; ++id) {
    pids.push_back(children_.spawn([&, id]() -> int {
      start.write_end = UniqueFd();
      char go = 0;
      if (!read_all(start.read_end.get(), &go, 1, std::chrono::seconds(10))) return kChildPipeFailed;
      return produce_over_socket(path, "multi", id, 0, kPerProducer);
    }));
  }
  start.read_end = UniqueFd();

  // When they all send at once
  const char go[kProducers] = {};
  ASSERT_TRUE(write_all(start.write_end.get(), go, sizeof go));
  const test::Drained got = test::drain(*consumer, kProducers * kPerProducer, std::chrono::seconds(20));
  for (const pid_t pid : pids) EXPECT_EQ(children_.reap(pid, std::chrono::seconds(20)), kChildOk);

  // Expect every record once, each producer's in its order, and each partition's offsets contiguous
  EXPECT_TRUE(got.notices.empty());
  ASSERT_EQ(got.records.size(), kProducers * kPerProducer);
  std::map<std::uint32_t, std::int64_t> next_offset;
  std::map<std::pair<std::uint32_t, std::uint32_t>, std::int64_t> last_seq;  // (producer, partition)
  std::map<std::uint32_t, std::uint64_t> per_producer;
  std::map<std::uint32_t, std::uint64_t> seq_sum;
  for (const test::Got& r : got.records) {
    ASSERT_EQ(r.offset, next_offset[r.partition]++) << "partition " << r.partition;
    const std::optional<Stamped> s = parse_stamp(r.value);
    ASSERT_TRUE(s.has_value()) << r.value;
    ASSERT_LT(s->producer, kProducers);
    auto [it, fresh] = last_seq.try_emplace({s->producer, r.partition}, -1);
    ASSERT_GT(static_cast<std::int64_t>(s->sequence), it->second) << r.value;
    it->second = static_cast<std::int64_t>(s->sequence);
    ++per_producer[s->producer];
    seq_sum[s->producer] += s->sequence;
  }
  for (std::uint32_t id = 0; id < kProducers; ++id) {
    EXPECT_EQ(per_producer[id], kPerProducer) << "producer " << id;
    EXPECT_EQ(seq_sum[id], kPerProducer * (kPerProducer - 1) / 2) << "producer " << id;  // each sequence once
  }
  EXPECT_EQ(next_offset[0] + next_offset[1], static_cast<std::int64_t>(kProducers * kPerProducer));
  EXPECT_GT(next_offset[0], 0);
  EXPECT_GT(next_offset[1], 0);
  EXPECT_TRUE(eventually([&] { return server_->stats().connections == 0; }));
  EXPECT_EQ(server_->stats().accepted, kProducers);
  EXPECT_EQ(server_->stats().bad_requests, 0u);
}

TEST_F(LocalServerTest, AProducerKilledWithAClaimOpenDoesNotBlockThePartition) {
  // Given a consumer, and a producer process that sent ten records and then claimed two offsets
  serve();
  ASSERT_TRUE(node_->create_topic("killed", [] {
    TopicConfig c;
    c.ring_capacity_bytes = std::size_t{1} << 20;
    c.max_batch_bytes = 64 << 10;
    return c;
  }()).ok());
  Result<TopicConsumer> consumer = TopicConsumer::create(Client::embedded(*node_));
  ASSERT_TRUE(consumer.ok());
  ASSERT_TRUE(consumer->assign("killed", {}, SeekTo::earliest()).ok());
  const std::string path = path_;
  Pipe claimed = Pipe::make();
  const pid_t doomed = children_.spawn([&]() -> int {
    claimed.read_end = UniqueFd();
    if (const int sent = produce_over_socket(path, "killed", 0, 0, 10); sent != kChildOk) return sent;
    Result<std::shared_ptr<Client>> client = Client::connect(path);
    if (!client.ok()) return kChildConnectFailed;
    Result<TopicProducer> producer = TopicProducer::create(*client, "killed");
    if (!producer.ok()) return kChildProducerFailed;
    Result<ZeroCopyBatch> batch = producer->claim(0, 512, 2);
    if (!batch.ok()) return kChildSendFailed;
    const std::int64_t base = batch->base_offset.value;
    if (!write_all(claimed.write_end.get(), &base, sizeof base)) return kChildPipeFailed;
    for (int i = 0; i < 60'000; ++i) usleep(1000);  // holds the claim until killed (60 s at most)
    return kChildUnexpected;
  });
  claimed.write_end = UniqueFd();
  std::int64_t claim_base = -1;
  ASSERT_TRUE(read_all(claimed.read_end.get(), &claim_base, sizeof claim_base, std::chrono::seconds(10)));
  EXPECT_EQ(claim_base, 10);

  // And a live producer process that sends half its records, then the rest on a signal
  constexpr std::uint64_t kLive = 4000;
  Pipe go = Pipe::make();
  Pipe halfway = Pipe::make();
  const pid_t live = children_.spawn([&]() -> int {
    go.write_end = UniqueFd();
    halfway.read_end = UniqueFd();
    if (const int sent = produce_over_socket(path, "killed", 1, 0, kLive / 2); sent != kChildOk) return sent;
    const char half = 'h';
    char next = 0;
    if (!write_all(halfway.write_end.get(), &half, 1) || !read_all(go.read_end.get(), &next, 1, std::chrono::seconds(10)))
      return kChildPipeFailed;
    return produce_over_socket(path, "killed", 1, kLive / 2, kLive / 2);
  });
  go.read_end = UniqueFd();
  halfway.write_end = UniqueFd();
  char half = 0;
  ASSERT_TRUE(read_all(halfway.read_end.get(), &half, 1, std::chrono::seconds(10)));
  // Nothing past the open claim is readable yet.
  const test::Drained before = test::drain(*consumer, 0);
  EXPECT_EQ(before.records.size(), 10u);

  // When the claiming producer is SIGKILLed while the other keeps sending
  ASSERT_EQ(kill(doomed, SIGKILL), 0);
  EXPECT_EQ(children_.reap(doomed, std::chrono::seconds(5)), -SIGKILL);
  const char more = 'g';
  ASSERT_TRUE(write_all(go.write_end.get(), &more, 1));

  // Expect the node to seal the dead claim, and the consumer to read all of the live producer's
  // records, skipping the two offsets the dead one took
  std::vector<test::Got> records;
  const auto deadline = Clock::now() + std::chrono::seconds(20);
  while (records.size() < kLive && Clock::now() < deadline) {
    node_->maintain();
    const test::Drained got = test::drain(*consumer, kLive - records.size(), std::chrono::milliseconds(100));
    EXPECT_TRUE(got.notices.empty());
    records.insert(records.end(), got.records.begin(), got.records.end());
  }
  EXPECT_EQ(children_.reap(live, std::chrono::seconds(20)), kChildOk);
  ASSERT_EQ(records.size(), kLive);
  for (std::size_t i = 0; i < records.size(); ++i) {
    ASSERT_EQ(records[i].offset, 12 + static_cast<std::int64_t>(i));
    ASSERT_EQ(records[i].value, stamp(1, i));
  }
  node_->maintain();
  Result<TopicInfo> info = node_->describe_topic("killed");
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->partitions[0].sealed_claims, 1u);
  EXPECT_EQ(info->partitions[0].end_offset, Offset{12 + static_cast<std::int64_t>(kLive)});
}

}  // namespace
}  // namespace weft
