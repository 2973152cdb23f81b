// The etcd metadata store against a real etcd (/usr/bin/etcd, started per test suite on free
// 127.0.0.1 ports): the conformance suite, then what is etcd's own (endpoints, an etcd that is
// not there, answers that never come, an etcd that stops and comes back, compaction, the
// watch's descriptor). Skipped, saying why, where etcd is not installed.
#include "weft/storage/etcd_metadata_store.h"

#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <arpa/inet.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "../etcd_server.h"
#include "scripted_server.h"
#include "../fabric/metadata_store_conformance.h"
#include "../temp_dir.h"

namespace weft::test {

constexpr const char* kNoEtcd = "etcd: /usr/bin/etcd not found (Debian package etcd-server; scripts/setup.sh installs it)";

// One etcd for a whole test suite; each test keeps to its own key prefix.
struct EtcdBackend {
  static inline std::unique_ptr<TempDir> dir;
  static inline std::unique_ptr<EtcdServer> server;
  static inline std::string problem;  // why the server did not start

  static void set_up_suite() {
    if (!etcd_installed()) return;
    dir = std::make_unique<TempDir>();
    server = std::make_unique<EtcdServer>();
    problem = server->start(dir->path() + "/etcd");
  }
  static void tear_down_suite() {
    server.reset();  // stops etcd before its folder goes
    dir.reset();
  }
  static std::shared_ptr<MetadataStore> open(std::string* skip_reason) {
    if (!etcd_installed()) {
      *skip_reason = kNoEtcd;
      return nullptr;
    }
    if (!problem.empty()) {
      ADD_FAILURE() << "etcd did not start: " << problem;
      *skip_reason = "etcd did not start";
      return nullptr;
    }
    Result<std::unique_ptr<MetadataStore>> store = storage::open_etcd_metadata_store(server->endpoint());
    EXPECT_TRUE(store.ok()) << store.error().message;
    if (!store.ok()) *skip_reason = store.error().message;
    return store.ok() ? std::shared_ptr<MetadataStore>(std::move(store).value()) : nullptr;
  }
  // A second connection to the same etcd, as another node would have.
  static std::shared_ptr<MetadataStore> open_peer(const std::shared_ptr<MetadataStore>&) {
    std::string ignored;
    return open(&ignored);
  }
};

INSTANTIATE_TYPED_TEST_SUITE_P(Etcd, MetadataStoreConformance, ::testing::Types<EtcdBackend>);

namespace {

using Clock = std::chrono::steady_clock;

// Tests that share the suite's etcd.
class EtcdMetadataStoreTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { EtcdBackend::set_up_suite(); }
  static void TearDownTestSuite() { EtcdBackend::tear_down_suite(); }

  void SetUp() override {
    std::string skip_reason;
    store_ = EtcdBackend::open(&skip_reason);
    if (store_ == nullptr) GTEST_SKIP() << skip_reason;
    prefix_ = std::string("/weft-test/EtcdMetadataStoreTest/") +
              ::testing::UnitTest::GetInstance()->current_test_info()->name() + "/";
  }

  std::shared_ptr<MetadataStore> store_;
  std::string prefix_;
};

TEST(EtcdMetadataStore, OpenRefusesEndpointsItCannotUse) {
  struct Case {
    const char* endpoint;
    Errc code;
  };
  const Case cases[] = {
      {"", Errc::kInvalidArgument},
      {"127.0.0.1", Errc::kInvalidArgument},
      {"127.0.0.1:", Errc::kInvalidArgument},
      {"127.0.0.1:0", Errc::kInvalidArgument},
      {"127.0.0.1:65536", Errc::kInvalidArgument},
      {"127.0.0.1:23x9", Errc::kInvalidArgument},
      {":2379", Errc::kInvalidArgument},
      {"http://127.0.0.1:2379/v3", Errc::kInvalidArgument},
      {"[::1:2379", Errc::kInvalidArgument},
      {"https://127.0.0.1:2379", Errc::kUnsupported},
  };
  for (const Case& c : cases) {
    Result<std::unique_ptr<MetadataStore>> store = storage::open_etcd_metadata_store(c.endpoint);
    ASSERT_FALSE(store.ok()) << c.endpoint;
    EXPECT_EQ(store.error().code, c.code) << c.endpoint << ": " << store.error().message;
  }
  for (const char* good : {"http://127.0.0.1:2379", "127.0.0.1:2379", "localhost:2379/", "[::1]:2379"})
    EXPECT_TRUE(storage::open_etcd_metadata_store(good).ok()) << good;
  Result<std::unique_ptr<MetadataStore>> no_timeout = storage::open_etcd_metadata_store("127.0.0.1:2379", {0});
  ASSERT_FALSE(no_timeout.ok());
  EXPECT_EQ(no_timeout.error().code, Errc::kInvalidArgument);
}

TEST(EtcdMetadataStore, NothingListeningIsUnavailableAndNamesTheEndpoint) {
  // Given: a port nobody listens on.
  const std::vector<std::uint16_t> ports = free_ports(1);
  ASSERT_EQ(ports.size(), 1U);
  const std::string endpoint = "127.0.0.1:" + std::to_string(ports[0]);
  Result<std::unique_ptr<MetadataStore>> store = storage::open_etcd_metadata_store(endpoint, {300});
  ASSERT_TRUE(store.ok()) << store.error().message;  // connects on the first call
  // Expect
  Result<std::optional<KeyValue>> got = (*store)->get("/k");
  ASSERT_FALSE(got.ok());
  EXPECT_EQ(got.error().code, Errc::kUnavailable);
  EXPECT_NE(got.error().message.find(endpoint), std::string::npos) << got.error().message;
  Result<std::unique_ptr<MetadataWatch>> watch = (*store)->watch("/", 0);
  ASSERT_FALSE(watch.ok());
  EXPECT_EQ(watch.error().code, Errc::kUnavailable) << watch.error().message;
}

TEST(EtcdMetadataStore, ServerThatNeverAnswersIsUnavailableWithinTheTimeout) {
  // Given: a socket that listens (the kernel completes connections) but never reads or answers.
  const int listener = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  ASSERT_GE(listener, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t size = sizeof(address);
  ASSERT_EQ(::bind(listener, reinterpret_cast<sockaddr*>(&address), sizeof(address)), 0);
  ASSERT_EQ(::listen(listener, 8), 0);
  ASSERT_EQ(::getsockname(listener, reinterpret_cast<sockaddr*>(&address), &size), 0);
  const std::string endpoint = "127.0.0.1:" + std::to_string(ntohs(address.sin_port));
  Result<std::unique_ptr<MetadataStore>> store = storage::open_etcd_metadata_store(endpoint, {300});
  ASSERT_TRUE(store.ok()) << store.error().message;
  // Expect: unavailable, back well before the 5 s bound (the timeout is 300 ms).
  const auto start = Clock::now();
  Result<std::int64_t> put = (*store)->put("/k", "v");
  EXPECT_LT(Clock::now() - start, std::chrono::seconds(5));
  ASSERT_FALSE(put.ok());
  EXPECT_EQ(put.error().code, Errc::kUnavailable);
  EXPECT_NE(put.error().message.find("300 ms"), std::string::npos) << put.error().message;
  ::close(listener);
}

TEST(EtcdMetadataStore, AnErrorNestedTooDeepToPrintIsAnErrorNotACrash) {
  // Given something on etcd's port that answers with an error value 100 000 arrays deep
  const std::string nested = "{\"error\":" + std::string(100'000, '[') + std::string(100'000, ']') + "}";
  ScriptedServer server([&](int fd, int) {
    while (ScriptedServer::read_request(fd))
      ScriptedServer::write(fd, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: " + std::to_string(nested.size()) + "\r\n\r\n" + nested);
  });
  Result<std::unique_ptr<MetadataStore>> store = storage::open_etcd_metadata_store(server.endpoint().name, {2000});
  ASSERT_TRUE(store.ok()) << store.error().message;
  // Expect the keep-alive to fail, saying the answer had no message (before, printing the value
  // overflowed the stack and took the node down)
  const Result<void> renewed = (*store)->keep_alive(1);
  ASSERT_FALSE(renewed.ok());
  EXPECT_NE(renewed.error().message.find("without a message"), std::string::npos) << renewed.error().message.substr(0, 300);
}

TEST(EtcdMetadataStore, AWatchLineThatNeverEndsEndsTheWatchWithBoundedMemory) {
  // Given something on etcd's port that confirms a watch, then streams 80 MiB with no line's end
  ScriptedServer server([](int fd, int) {
    if (!ScriptedServer::read_request(fd)) return;
    const std::string created = "{\"result\":{\"created\":true}}\n";
    char size[32];
    std::snprintf(size, sizeof size, "%zx\r\n", created.size());
    (void)ScriptedServer::write_while_read(fd, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n" +
                                                   std::string(size) + created + "\r\n");
    const std::string chunk(std::size_t{1} << 20, 'x');
    std::snprintf(size, sizeof size, "%zx\r\n", chunk.size());
    for (int i = 0; i < 80 && ScriptedServer::write_while_read(fd, std::string(size) + chunk + "\r\n"); ++i) {
    }
  });
  Result<std::unique_ptr<MetadataStore>> store = storage::open_etcd_metadata_store(server.endpoint().name, {2000});
  ASSERT_TRUE(store.ok()) << store.error().message;
  Result<std::unique_ptr<MetadataWatch>> watch = (*store)->watch("/k", 0);
  // Expect the watch to end once the line passes 64 MiB (before, it kept every byte, for ever):
  // at its start when the bytes came with etcd's confirmation, else at a next()
  std::optional<Error> ended;
  if (!watch.ok()) ended = watch.error();
  for (int i = 0; i < 200 && !ended; ++i) {
    std::vector<WatchEvent> events;
    if (Result<void> next = (*watch)->next(events, 100); !next.ok()) ended = next.error();
  }
  ASSERT_TRUE(ended.has_value()) << "the watch took 80 MiB without a line's end";
  EXPECT_EQ(ended->code, Errc::kCorrupt) << ended->message;
  EXPECT_NE(ended->message.find("longer than"), std::string::npos) << ended->message;
}

TEST(EtcdMetadataStore, CallsFailUnavailableWhileEtcdIsStoppedAndWorkOnceItIsBack) {
  if (!etcd_installed()) GTEST_SKIP() << kNoEtcd;
  // Given: an etcd of this test's own, a value in it, a watch on it; then etcd stops.
  TempDir dir;
  EtcdServer server;
  const std::string problem = server.start(dir.path() + "/etcd");
  ASSERT_TRUE(problem.empty()) << problem;
  Result<std::unique_ptr<MetadataStore>> opened = storage::open_etcd_metadata_store(server.endpoint(), {1000});
  ASSERT_TRUE(opened.ok()) << opened.error().message;
  MetadataStore& store = **opened;
  ASSERT_TRUE(store.put("/k", "before").ok());
  Result<std::unique_ptr<MetadataWatch>> watch = store.watch("/", 0);
  ASSERT_TRUE(watch.ok()) << watch.error().message;
  server.stop();
  // Expect: calls fail unavailable, not hang; the watch ends unavailable.
  const auto start = Clock::now();
  Result<std::optional<KeyValue>> got = store.get("/k");
  ASSERT_FALSE(got.ok());
  EXPECT_EQ(got.error().code, Errc::kUnavailable) << got.error().message;
  Result<std::int64_t> put = store.put("/k", "during");
  ASSERT_FALSE(put.ok());
  EXPECT_EQ(put.error().code, Errc::kUnavailable) << put.error().message;
  EXPECT_LT(Clock::now() - start, std::chrono::seconds(5));
  std::vector<WatchEvent> events;
  Result<void> next = ok();
  const auto deadline = Clock::now() + std::chrono::seconds(5);
  while (next.ok() && Clock::now() < deadline) next = (*watch)->next(events, 200);
  ASSERT_FALSE(next.ok());
  EXPECT_EQ(next.error().code, Errc::kUnavailable) << next.error().message;
  EXPECT_TRUE(events.empty());
  // Expect: the same store object works again once etcd is back (same port, same data).
  const std::string restarted = server.start(dir.path() + "/etcd");
  ASSERT_TRUE(restarted.empty()) << restarted;
  got = store.get("/k");
  ASSERT_TRUE(got.ok()) << got.error().message;
  ASSERT_TRUE(got->has_value());
  EXPECT_EQ((*got)->value, "before");
}

TEST_F(EtcdMetadataStoreTest, WatchFromACompactedRevisionIsOutOfRange) {
  // Given: three versions of a key, then etcd compacts all but the last.
  const std::string k = prefix_ + "k";
  Result<std::int64_t> first = store_->put(k, "1");
  ASSERT_TRUE(first.ok()) << first.error().message;
  ASSERT_TRUE(store_->put(k, "2").ok());
  Result<std::int64_t> last = store_->put(k, "3");
  ASSERT_TRUE(last.ok());
  const std::string compacted = http_request(EtcdBackend::server->client_port(), "POST", "/v3/kv/compaction",
                                             "{\"revision\":\"" + std::to_string(*last) + "\",\"physical\":true}");
  ASSERT_NE(compacted.find("header"), std::string::npos) << compacted;
  // Expect: kOutOfRange, from watch() or from next().
  Result<std::unique_ptr<MetadataWatch>> watch = store_->watch(prefix_, *first);
  Error error{Errc::kOk, {}};
  if (!watch.ok()) {
    error = watch.error();
  } else {
    std::vector<WatchEvent> events;
    const auto deadline = Clock::now() + std::chrono::seconds(5);
    Result<void> next = ok();
    while (next.ok() && Clock::now() < deadline) next = (*watch)->next(events, 100);
    if (!next.ok()) error = next.error();
    EXPECT_TRUE(events.empty());
  }
  EXPECT_EQ(error.code, Errc::kOutOfRange) << error.message;
  // A watch from the compaction point on works.
  Result<std::unique_ptr<MetadataWatch>> current = store_->watch(prefix_, *last);
  ASSERT_TRUE(current.ok()) << current.error().message;
  const std::vector<WatchEvent> events = collect_events(**current, 1);
  ASSERT_EQ(events.size(), 1U);
  EXPECT_EQ(events[0].kv.value, "3");
}

TEST_F(EtcdMetadataStoreTest, WatchDescriptorIsReadableWhenEventsWait) {
  // Given
  Result<std::unique_ptr<MetadataWatch>> watch = store_->watch(prefix_, 0);
  ASSERT_TRUE(watch.ok()) << watch.error().message;
  const int fd = (*watch)->fd();
  ASSERT_GE(fd, 0);
  ASSERT_TRUE(store_->put(prefix_ + "k", "v").ok());
  // Expect
  pollfd p{fd, POLLIN, 0};
  ASSERT_EQ(::poll(&p, 1, 5000), 1);
  std::vector<WatchEvent> events;
  // The event may come in more than one TCP segment: a bounded wait for the rest.
  ASSERT_TRUE((*watch)->next(events, 5000).ok());
  ASSERT_EQ(events.size(), 1U);
  EXPECT_EQ(events[0].kv.key, prefix_ + "k");
}

TEST_F(EtcdMetadataStoreTest, ManyKeysInOneList) {
  // Given: enough keys for an answer of several TCP segments.
  const std::string value(1000, 'v');
  for (int i = 0; i < 300; ++i) {
    char name[16];
    std::snprintf(name, sizeof(name), "%04d", i);
    ASSERT_TRUE(store_->put(prefix_ + name, value).ok());
  }
  // Expect
  Result<RangeResult> all = store_->list(prefix_);
  ASSERT_TRUE(all.ok()) << all.error().message;
  ASSERT_EQ(all->kvs.size(), 300U);
  EXPECT_EQ(all->kvs[299].key, prefix_ + "0299");
  EXPECT_EQ(all->kvs[299].value, value);
}

}  // namespace
}  // namespace weft::test
