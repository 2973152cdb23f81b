// What an acknowledgement is worth when things go wrong under the node:
//  - Crash: a node killed (SIGKILL) at a random point keeps every record it acknowledged at
//    acks=all with fsync=always, intact and at its offset, across many restarts of one log.
//  - A full disk: producers get kResourceExhausted ("out of disk space") instead of hanging, the
//    node keeps serving what it holds, and acknowledgements resume when space returns.
//  - A failed fdatasync: that partition's log stops for good (kIo) while what it acknowledged
//    stays readable and the node's other topics carry on.
//  - A 4 KiB-sector disk: large flushes go out with O_DIRECT in whole blocks, and the log reads
//    back whole through restarts.
//  - A disk whose write-back fails: a rolled segment's background sync fails, and the log takes
//    nothing more and never again says a sync succeeded (kDataLoss); under a node (fsync none,
//    where only that sync runs, and an interval), producers waiting on acks=all are told, and
//    nothing is acknowledged after it.
//
// The crash test runs its node in a child that is this test binary again (exec'd, not merely
// forked: the node's oneTBB pool and maintenance thread must not be inherited half-alive). The
// child reports each acknowledged record through a pipe; the parent kills it and checks the log.
// The full-disk, sector and failing-disk tests need root (mount, losetup) and skip with the
// reason without it.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <compare>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <set>
#include <span>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "../io_uring_allowed.h"
#include "../temp_dir.h"
#include "forwarding_log.h"
#include "test_batches.h"
#include "../fabric/children.h"
#include "weft/client.h"
#include "weft/consumer.h"
#include "weft/node.h"
#include "weft/producer.h"
#include "weft/fabric/record_batch.h"
#include "weft/storage/segment_log.h"

extern char** environ;

namespace weft::storage {
namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;
using std::chrono::seconds;

using test::TempDir;

std::int64_t wall_ms() {
  return std::chrono::duration_cast<milliseconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

// ---- recognisable records ---------------------------------------------------------------------

// Who sent a record: the run (one child process of the crash test), the producer in it, and the
// producer's sequence number. A value carries its id, so the log tells what each record should be.
struct RecordId {
  std::uint32_t run = 0;
  std::uint32_t producer = 0;
  std::uint64_t seq = 0;
  auto operator<=>(const RecordId&) const = default;
};
constexpr std::size_t kIdBytes = 16;

std::uint64_t splitmix64(std::uint64_t& state) {
  std::uint64_t z = (state += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

// The id, then 8..263 bytes derived from it: a byte changed, lost or moved anywhere shows.
std::vector<std::byte> value_for(const RecordId& id) {
  std::uint64_t state = (std::uint64_t{id.run} << 48) ^ (std::uint64_t{id.producer} << 40) ^ id.seq;
  const std::size_t payload = 8 + static_cast<std::size_t>(splitmix64(state) % 256);
  std::vector<std::byte> value(kIdBytes + payload);
  std::memcpy(value.data(), &id.run, 4);
  std::memcpy(value.data() + 4, &id.producer, 4);
  std::memcpy(value.data() + 8, &id.seq, 8);
  for (std::size_t i = kIdBytes; i < value.size(); i += 8) {
    const std::uint64_t word = splitmix64(state);
    std::memcpy(value.data() + i, &word, std::min<std::size_t>(8, value.size() - i));
  }
  return value;
}

// The id of a value that is exactly value_for(id); nothing for anything else.
std::optional<RecordId> id_of(std::span<const std::byte> value) {
  if (value.size() < kIdBytes) return std::nullopt;
  RecordId id;
  std::memcpy(&id.run, value.data(), 4);
  std::memcpy(&id.producer, value.data() + 4, 4);
  std::memcpy(&id.seq, value.data() + 8, 8);
  const std::vector<std::byte> expected = value_for(id);
  if (!std::equal(value.begin(), value.end(), expected.begin(), expected.end())) return std::nullopt;
  return id;
}

std::string id_text(const RecordId& id) {
  return "run " + std::to_string(id.run) + " producer " + std::to_string(id.producer) + " seq " + std::to_string(id.seq);
}

struct CopiedRecord {
  std::int64_t offset = 0;
  std::vector<std::byte> value;
};

// Reads one partition from the earliest offset (the log, then the ring) until `end`, copying
// each record; fails the test on a poll error or notice. Bounded by 200,000 polls and 30 s.
std::vector<CopiedRecord> read_from_earliest(const std::shared_ptr<Client>& client, const std::string& topic, std::uint32_t partition,
                                             std::int64_t end) {
  std::vector<CopiedRecord> records;
  ConsumerOptions options;
  options.check_crcs = true;
  Result<TopicConsumer> consumer = TopicConsumer::create(client, options);
  if (!consumer.ok()) {
    ADD_FAILURE() << "consumer: " << consumer.error().message;
    return records;
  }
  if (Result<void> assigned = consumer->assign(topic, {partition}, SeekTo::earliest()); !assigned.ok()) {
    ADD_FAILURE() << "assign " << topic << " partition " << partition << ": " << assigned.error().message;
    return records;
  }
  std::int64_t next = 0;
  const auto deadline = Clock::now() + seconds(30);
  for (int polls = 0; next < end && polls < 200'000 && Clock::now() < deadline; ++polls) {
    Result<PollResult> polled = consumer->poll(10);
    if (!polled.ok()) {
      ADD_FAILURE() << "poll of " << topic << " partition " << partition << " at offset " << next << ": " << polled.error().message;
      break;
    }
    for (const PollNotice& n : polled->notices)
      ADD_FAILURE() << "notice of kind " << static_cast<int>(n.kind) << " for offsets [" << n.from.value << ", " << n.to.value << ")";
    for (const ConsumedRecord& r : polled->records) {
      if (r.offset.value >= end) break;
      next = r.offset.value + 1;
      CopiedRecord copy;
      copy.offset = r.offset.value;
      if (r.value) copy.value.assign(r.value->begin(), r.value->end());
      records.push_back(std::move(copy));
    }
  }
  EXPECT_GE(next, end) << topic << " partition " << partition << ": read up to offset " << next << " of " << end;
  return records;
}

// Every record of [0, end) present, in order, each exactly value_for({run, 0, offset}).
void expect_sequence(const std::vector<CopiedRecord>& records, std::int64_t end, std::uint32_t run) {
  ASSERT_EQ(static_cast<std::int64_t>(records.size()), end);
  for (std::int64_t i = 0; i < end; ++i) {
    const CopiedRecord& r = records[static_cast<std::size_t>(i)];
    ASSERT_EQ(r.offset, i) << "offsets are not contiguous from 0";
    const std::optional<RecordId> id = id_of(r.value);
    ASSERT_TRUE(id.has_value()) << "offset " << i << ": the value is not the one sent";
    ASSERT_EQ(*id, (RecordId{run, 0, static_cast<std::uint64_t>(i)})) << "offset " << i << " holds " << id_text(*id);
  }
}

// ---- 1. a node killed at random points ------------------------------------------------------

constexpr const char* kChildDirEnv = "WEFT_DURABILITY_CHILD_DIR";
constexpr const char* kChildFdEnv = "WEFT_DURABILITY_CHILD_FD";
constexpr const char* kChildRunEnv = "WEFT_DURABILITY_CHILD_RUN";
constexpr const char* kSeedEnv = "WEFT_DURABILITY_SEED";
constexpr const char* kChildTest = "DurabilityChild.DISABLED_ProducesUntilKilled";
constexpr const char* kCrashTopic = "crash";
constexpr std::uint32_t kCrashPartitions = 2;
constexpr std::uint32_t kCrashProducers = 3;  // 0 and 1 await each send; 2 sends batches, then flushes
constexpr int kCrashRuns = 40;
constexpr auto kCrashBudget = seconds(150);

// One line of the child's report. offset -1: the child is ready (node up, topic there).
struct AckMessage {
  std::int64_t offset = -1;
  std::uint64_t seq = 0;
  std::uint32_t run = 0;
  std::uint32_t producer = 0;
  std::uint32_t partition = 0;
  std::uint32_t unused = 0;
};
static_assert(sizeof(AckMessage) == 32 && sizeof(AckMessage) <= PIPE_BUF, "one write() each, never interleaved");

NodeOptions crash_node_options(const std::string& dir) {
  NodeOptions options;
  options.prefer_hugepages = false;
  options.open_log = open_segment_logs(dir + "/data");
  options.metadata_dir = dir + "/topics";
  return options;
}

// 64 KiB segments: the log rolls every few hundred records, so kills land around rolls too.
TopicSettings crash_topic() {
  return {{"partitions", std::to_string(kCrashPartitions)}, {"ring.capacity.bytes", "262144"}, {"max.batch.bytes", "16384"},
          {"segment.bytes", "65536"}, {"retention.ms", "-1"}, {"fsync", "always"}};
}

std::uint32_t crash_partition(std::uint32_t producer, std::uint64_t seq) {
  return static_cast<std::uint32_t>((seq / 5 + producer) % kCrashPartitions);
}

[[noreturn]] void child_fails(const std::string& why) {
  std::fprintf(stderr, "durability child %d: %s\n", static_cast<int>(getpid()), why.c_str());
  std::_Exit(3);
}

void report(int fd, const AckMessage& message) {
  for (int attempt = 0; attempt < 100; ++attempt) {
    const ssize_t n = write(fd, &message, sizeof(message));
    if (n == static_cast<ssize_t>(sizeof(message))) return;
    if (n < 0 && errno == EINTR) continue;
    break;
  }
  std::_Exit(4);  // the parent is gone: nobody is counting on this child
}

// The crash test's child (run only through kChildTest with the environment the parent sets):
// an embedded node on the parent's directory, producers sending and waiting for acks=all, each
// acknowledgement reported to the parent, until the parent kills it (or 60 s pass).
TEST(DurabilityChild, DISABLED_ProducesUntilKilled) {
  const char* dir = std::getenv(kChildDirEnv);
  const char* fd_text = std::getenv(kChildFdEnv);
  const char* run_text = std::getenv(kChildRunEnv);
  if (dir == nullptr || fd_text == nullptr || run_text == nullptr) GTEST_SKIP() << "runs only as the crash test's child";
  const int fd = std::atoi(fd_text);
  const auto run = static_cast<std::uint32_t>(std::strtoul(run_text, nullptr, 10));

  Result<std::unique_ptr<Node>> node = Node::start(crash_node_options(dir));
  if (!node.ok()) child_fails("node start: " + node.error().message);
  std::shared_ptr<Client> client = Client::embedded(**node);
  const std::vector<std::string> topics = (*node)->list_topics();
  if (std::find(topics.begin(), topics.end(), kCrashTopic) == topics.end()) {
    if (Result<TopicInfo> created = client->create_topic(kCrashTopic, crash_topic()); !created.ok())
      child_fails("create_topic: " + created.error().message);
  }
  std::vector<TopicProducer> producers;
  for (std::uint32_t p = 0; p < kCrashProducers; ++p) {
    ProducerOptions options;
    options.acks = Acks::kAll;
    options.max_block_ms = 30'000;
    Result<TopicProducer> producer = TopicProducer::create(client, kCrashTopic, options);
    if (!producer.ok()) child_fails("producer: " + producer.error().message);
    producers.push_back(std::move(*producer));
  }
  report(fd, AckMessage{});

  const auto stop_at = Clock::now() + seconds(60);
  std::vector<std::thread> threads;
  for (std::uint32_t p = 0; p < kCrashProducers; ++p) {
    threads.emplace_back([&, p] {
      TopicProducer& producer = producers[p];
      std::uint64_t seq = 0;
      for (int rounds = 0; rounds < 1'000'000 && Clock::now() < stop_at; ++rounds) {
        // Batching producers send 1..7 records, then flush; the others await each send.
        const std::uint64_t count = p == 2 ? 1 + seq % 7 : 1;
        std::vector<AckMessage> acks;
        for (std::uint64_t i = 0; i < count; ++i, ++seq) {
          const RecordId id{run, p, seq};
          const std::vector<std::byte> value = value_for(id);
          RecordInput record;
          record.value = std::span<const std::byte>(value);
          record.timestamp_ms = wall_ms();
          const std::uint32_t partition = crash_partition(p, seq);
          Result<SendResult> sent = producer.send_to(partition, record);
          if (!sent.ok()) child_fails("send: " + sent.error().message);
          acks.push_back(AckMessage{sent->offset.value, seq, run, p, partition, 0});
          if (p != 2) {
            if (Result<void> acked = producer.await(*sent, Acks::kAll, 30'000); !acked.ok()) child_fails("await: " + acked.error().message);
          }
        }
        if (p == 2) {
          if (Result<void> flushed = producer.flush(30'000); !flushed.ok()) child_fails("flush: " + flushed.error().message);
        }
        for (const AckMessage& ack : acks) report(fd, ack);
      }
    });
  }
  for (std::thread& t : threads) t.join();
  std::_Exit(0);  // not killed within 60 s: the parent is gone or stuck; skip the node's teardown
}

// Reads a child's reports from its pipe as they come.
class AckReader {
 public:
  explicit AckReader(UniqueFd fd) : fd_(std::move(fd)) {}

  // Reads until `deadline`, until the child is ready (when `until_ready`), or until the pipe's
  // end (then false: the child is gone).
  bool read_until(Clock::time_point deadline, bool until_ready) {
    for (int rounds = 0; rounds < 1'000'000; ++rounds) {
      if (until_ready && ready_) return true;
      const auto left = std::chrono::duration_cast<milliseconds>(deadline - Clock::now()).count();
      if (left <= 0) return true;
      pollfd p{fd_.get(), POLLIN, 0};
      const int polled = ::poll(&p, 1, static_cast<int>(std::min<std::int64_t>(left, 100)));
      if (polled < 0 && errno != EINTR) return false;
      if (polled <= 0) continue;
      char chunk[16384];
      const ssize_t n = ::read(fd_.get(), chunk, sizeof(chunk));
      if (n == 0) return false;
      if (n < 0) {
        if (errno == EINTR || errno == EAGAIN) continue;
        return false;
      }
      buffer_.insert(buffer_.end(), chunk, chunk + n);
      std::size_t used = 0;
      for (; buffer_.size() - used >= sizeof(AckMessage); used += sizeof(AckMessage)) {
        AckMessage m;
        std::memcpy(&m, buffer_.data() + used, sizeof(m));
        if (m.offset < 0) {
          ready_ = true;
          ready_at_ = Clock::now();
        } else {
          acks_.push_back(m);
        }
      }
      buffer_.erase(buffer_.begin(), buffer_.begin() + static_cast<std::ptrdiff_t>(used));
    }
    return true;
  }

  bool ready() const { return ready_; }
  Clock::time_point ready_at() const { return ready_at_; }
  const std::vector<AckMessage>& acks() const { return acks_; }
  std::size_t torn_bytes() const { return buffer_.size(); }

 private:
  UniqueFd fd_;
  std::vector<char> buffer_;
  std::vector<AckMessage> acks_;
  bool ready_ = false;
  Clock::time_point ready_at_{};
};

// Opens the directory as a restarted node does and checks every acknowledged record is there,
// intact, at the offset it was acknowledged at; that each partition's offsets run from 0 with no
// gap; that every record in the log (acknowledged or not) is one that was sent, once, and each
// producer's records of a partition are in the order it sent them. Returns the records found.
std::uint64_t expect_acknowledged_records_survive(const std::string& dir, const std::vector<AckMessage>& acked) {
  Result<std::unique_ptr<Node>> node = Node::start(crash_node_options(dir));
  if (!node.ok()) {
    ADD_FAILURE() << "restart: " << node.error().message;
    return 0;
  }
  std::shared_ptr<Client> client = Client::embedded(**node);
  Result<TopicInfo> info = client->describe_topic(kCrashTopic);
  if (!info.ok()) {
    ADD_FAILURE() << "the topic is gone after the restart: " << info.error().message;
    return 0;
  }
  std::vector<std::vector<RecordId>> found(kCrashPartitions);
  std::set<RecordId> seen;
  std::uint64_t total = 0;
  for (std::uint32_t partition = 0; partition < kCrashPartitions; ++partition) {
    const std::int64_t end = info->partitions[partition].end_offset.value;
    const std::vector<CopiedRecord> records = read_from_earliest(client, kCrashTopic, partition, end);
    std::map<std::pair<std::uint32_t, std::uint32_t>, std::uint64_t> next_seq;  // (run, producer) -> lowest next seq
    for (std::size_t i = 0; i < records.size(); ++i) {
      const CopiedRecord& r = records[i];
      if (r.offset != static_cast<std::int64_t>(i)) {
        ADD_FAILURE() << "partition " << partition << ": offset " << r.offset << " where " << i << " was due (a gap)";
        return total;
      }
      const std::optional<RecordId> id = id_of(r.value);
      if (!id) {
        ADD_FAILURE() << "partition " << partition << " offset " << r.offset << ": a value that was never sent (" << r.value.size() << " bytes)";
        return total;
      }
      if (!seen.insert(*id).second) ADD_FAILURE() << "partition " << partition << " offset " << r.offset << ": " << id_text(*id) << " twice";
      std::uint64_t& next = next_seq[{id->run, id->producer}];
      if (id->seq < next)
        ADD_FAILURE() << "partition " << partition << " offset " << r.offset << ": " << id_text(*id) << " after a later record of its producer";
      next = id->seq + 1;
      found[partition].push_back(*id);
    }
    total += records.size();
  }
  std::uint64_t missing = 0;
  for (const AckMessage& a : acked) {
    const RecordId want{a.run, a.producer, a.seq};
    if (a.partition >= kCrashPartitions || a.offset < 0 || static_cast<std::uint64_t>(a.offset) >= found[a.partition].size()) {
      if (++missing <= 5)
        ADD_FAILURE() << "acknowledged " << id_text(want) << " at partition " << a.partition << " offset " << a.offset
                      << " is lost: the partition ends at " << (a.partition < kCrashPartitions ? found[a.partition].size() : 0);
      continue;
    }
    const RecordId& got = found[a.partition][static_cast<std::size_t>(a.offset)];
    if (got != want && ++missing <= 5)
      ADD_FAILURE() << "partition " << a.partition << " offset " << a.offset << " holds " << id_text(got) << ", acknowledged as "
                    << id_text(want);
  }
  EXPECT_EQ(missing, 0u) << "acknowledged records lost or moved, of " << acked.size();
  return total;
}

TEST(Crash, EveryAcknowledgedRecordSurvivesAKillAtARandomPoint) {
  TempDir dir;
  ASSERT_FALSE(dir.path().empty());
  std::uint64_t seed = std::random_device{}();
  if (const char* fixed = std::getenv(kSeedEnv)) seed = std::strtoull(fixed, nullptr, 10);
  std::printf("[ crash    ] seed %llu (set %s=%llu to repeat the kill points)\n", static_cast<unsigned long long>(seed), kSeedEnv,
              static_cast<unsigned long long>(seed));
  std::mt19937_64 random(seed);
  std::uniform_int_distribution<int> delay_ms(5, 200);

  std::error_code ec;
  const std::string exe = std::filesystem::read_symlink("/proc/self/exe", ec).string();
  ASSERT_FALSE(ec) << "readlink /proc/self/exe: " << ec.message();
  // The child's environment: this one without gtest's settings (sharding would filter the
  // child's one test away), and where to work and report.
  std::vector<std::string> base_env;
  for (char** e = environ; *e != nullptr; ++e) {
    const std::string entry = *e;
    if (!entry.starts_with("GTEST_") && !entry.starts_with("WEFT_DURABILITY_CHILD_")) base_env.push_back(entry);
  }
  const std::string filter = std::string("--gtest_filter=") + kChildTest;

  test::Children children;
  std::vector<AckMessage> acked;  // every run's, all still owed by the log
  const auto started = Clock::now();
  int runs = 0;
  for (int run = 0; run < kCrashRuns && Clock::now() - started < kCrashBudget; ++run, ++runs) {
    SCOPED_TRACE("run " + std::to_string(run));
    // Given a child with a node on the shared directory, producing and reporting acks
    int fds[2];
    ASSERT_EQ(pipe2(fds, O_CLOEXEC), 0) << std::strerror(errno);
    UniqueFd read_end(fds[0]);
    UniqueFd write_end(fds[1]);
    UniqueFd null_out(::open("/dev/null", O_WRONLY | O_CLOEXEC));
    ASSERT_TRUE(null_out.valid());
    std::vector<std::string> env = base_env;
    env.push_back(std::string(kChildDirEnv) + "=" + dir.path());
    env.push_back(std::string(kChildFdEnv) + "=" + std::to_string(write_end.get()));
    env.push_back(std::string(kChildRunEnv) + "=" + std::to_string(run));
    std::vector<char*> envp;
    for (std::string& e : env) envp.push_back(e.data());
    envp.push_back(nullptr);
    std::string arg0 = exe, arg1 = filter, arg2 = "--gtest_also_run_disabled_tests", arg3 = "--gtest_brief=1";
    char* argv[] = {arg0.data(), arg1.data(), arg2.data(), arg3.data(), nullptr};
    const int child_fd = write_end.get();
    const int null_fd = null_out.get();
    // Between fork and exec only async-signal-safe calls: everything above was prepared before.
    const pid_t pid = children.spawn([&] {
      if (dup2(null_fd, STDOUT_FILENO) < 0 || fcntl(child_fd, F_SETFD, 0) != 0) return 126;
      execve(argv[0], argv, envp.data());
      return 127;
    });
    ASSERT_GT(pid, 0);
    write_end = UniqueFd();  // the child holds the only write end: its death ends the pipe
    null_out = UniqueFd();

    AckReader reader(std::move(read_end));
    bool open = reader.read_until(Clock::now() + seconds(60), true);
    int status = 0;
    if (!reader.ready()) {
      const int result = children.reap(pid, seconds(5));
      FAIL() << "the child did not get ready (exit " << result << "; its stderr above says why)";
    }
    // When it is killed at a random point after that
    const int delay = delay_ms(random);
    if (open) open = reader.read_until(reader.ready_at() + milliseconds(delay), false);
    if (children.exited(pid, status)) {
      FAIL() << "the child stopped on its own before the kill (status " << status << "; its stderr above says why)";
    }
    kill(pid, SIGKILL);
    const int result = children.reap(pid, seconds(10));
    EXPECT_EQ(result, -SIGKILL) << "the child ended otherwise than by the kill";
    // Every ack it reported before dying
    const auto drain_deadline = Clock::now() + seconds(10);
    for (int rounds = 0; open && rounds < 1000 && Clock::now() < drain_deadline; ++rounds) open = reader.read_until(drain_deadline, false);
    EXPECT_FALSE(open) << "the pipe did not end after the child died";
    EXPECT_EQ(reader.torn_bytes(), 0u) << "a report cut short";
    acked.insert(acked.end(), reader.acks().begin(), reader.acks().end());

    // Expect every acknowledgement so far (this run's and every earlier one's) kept by the log
    const std::uint64_t in_log = expect_acknowledged_records_survive(dir.path(), acked);
    std::printf("[ crash    ] run %d: killed %d ms after ready, %zu acks (%zu in all), %llu records in the log\n", run, delay,
                reader.acks().size(), acked.size(), static_cast<unsigned long long>(in_log));
    if (HasFailure()) break;  // later runs would only repeat the first loss
  }
  std::printf("[ crash    ] %d runs, %zu acknowledged records checked, %.1f s\n", runs, acked.size(),
              std::chrono::duration<double>(Clock::now() - started).count());
  EXPECT_GT(acked.size(), 0u) << "no run got a record acknowledged before its kill: the test tested nothing";
}

// ---- 2. a full disk -------------------------------------------------------------------------

// A tmpfs of `bytes` mounted on a new directory for one test, unmounted however the test ends.
class TmpfsMount {
 public:
  explicit TmpfsMount(std::size_t bytes) {
    char pattern[] = "/tmp/weft-enospc-XXXXXX";
    if (mkdtemp(pattern) == nullptr) {
      why_not_ = std::string("mkdtemp: ") + std::strerror(errno);
      return;
    }
    path_ = pattern;
    const std::string options = "size=" + std::to_string(bytes) + ",mode=0700";
    if (::mount("tmpfs", path_.c_str(), "tmpfs", MS_NOSUID | MS_NODEV, options.c_str()) != 0) {
      why_not_ = std::string("mount -t tmpfs -o ") + options + " " + path_ + " failed: " + std::strerror(errno) +
                 " (the test needs root or CAP_SYS_ADMIN)";
      return;
    }
    mounted_ = true;
  }
  ~TmpfsMount() {
    if (mounted_ && ::umount2(path_.c_str(), 0) != 0) ::umount2(path_.c_str(), MNT_DETACH);  // a file still open: lazily
    if (!path_.empty()) ::rmdir(path_.c_str());
  }
  TmpfsMount(const TmpfsMount&) = delete;
  TmpfsMount& operator=(const TmpfsMount&) = delete;

  bool mounted() const { return mounted_; }
  const std::string& why_not() const { return why_not_; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  std::string why_not_;
  bool mounted_ = false;
};

// Writes a file of `bytes` (real pages, not a hole); false if the disk took less.
bool write_filler(const std::string& path, std::size_t bytes) {
  UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
  if (!fd.valid()) return false;
  const std::vector<char> chunk(64 * 1024, 'F');
  std::size_t written = 0;
  for (int rounds = 0; written < bytes && rounds < 1'000'000; ++rounds) {
    const ssize_t n = ::write(fd.get(), chunk.data(), std::min(chunk.size(), bytes - written));
    if (n <= 0) return false;
    written += static_cast<std::size_t>(n);
  }
  return written == bytes;
}

// Waits (bounded: 10 s) until describe_topic's log_error of partition 0 satisfies `wanted`.
template <class Wanted>
std::string wait_for_log_error(Client& client, const std::string& topic, Wanted wanted) {
  std::string error;
  const auto deadline = Clock::now() + seconds(10);
  for (int rounds = 0; rounds < 10'000 && Clock::now() < deadline; ++rounds) {
    Result<TopicInfo> info = client.describe_topic(topic);
    if (info.ok()) {
      error = info->partitions[0].log_error;
      if (wanted(error)) return error;
    }
    std::this_thread::sleep_for(milliseconds(1));
  }
  return error;
}

// A node logging on the test's small disk, retrying a refused write every 20 ms.
NodeOptions full_disk_node(const std::string& disk, const std::string& metadata) {
  NodeOptions options;
  options.prefer_hugepages = false;
  options.open_log = open_segment_logs(disk + "/data");
  options.metadata_dir = metadata + "/topics";
  options.log_retry_interval_ms = 20;
  return options;
}

TEST(FullDisk, ProducersAreToldTheDiskIsFullAndAcknowledgementsResumeWhenSpaceReturns) {
  constexpr std::size_t kDiskBytes = std::size_t{4} << 20;
  constexpr std::size_t kFreeBytes = 1280 * 1024;  // past one 1 MiB segment: the log rolls before it fills the disk
  constexpr std::uint32_t kRun = 7;
  TmpfsMount disk(kDiskBytes);  // first: unmounted after everything below let go of its files
  if (!disk.mounted()) GTEST_SKIP() << "full disk: " << disk.why_not();
  TempDir metadata;
  // Given a disk with little space left and a node logging a topic there
  const std::string filler = disk.path() + "/filler";
  ASSERT_TRUE(write_filler(filler, kDiskBytes - kFreeBytes)) << "could not fill the tmpfs";
  Result<std::unique_ptr<Node>> node = Node::start(full_disk_node(disk.path(), metadata.path()));
  ASSERT_TRUE(node.ok()) << node.error().message;
  std::shared_ptr<Client> client = Client::embedded(**node);
  const std::string topic = "full";
  ASSERT_TRUE(client->create_topic(topic, TopicSettings{{"partitions", "1"}, {"ring.capacity.bytes", "65536"}, {"max.batch.bytes", "8192"},
                                                        {"segment.bytes", "1048576"}, {"retention.ms", "-1"}})
                  .ok());
  ProducerOptions producer_options;
  producer_options.acks = Acks::kLeader;
  producer_options.max_block_ms = 10'000;
  Result<TopicProducer> producer = TopicProducer::create(client, topic, producer_options);
  ASSERT_TRUE(producer.ok()) << producer.error().message;

  // Sends records with values value_for({kRun, 0, seq}) (so offset == seq), 16 at a time, each
  // group flushed; returns the first error. `acked` counts records whose flush succeeded.
  std::uint64_t seq = 0;
  std::uint64_t acked = 0;
  auto produce = [&](std::uint64_t up_to) -> Result<void> {
    const auto deadline = Clock::now() + seconds(60);
    for (int rounds = 0; seq < up_to && rounds < 100'000 && Clock::now() < deadline; ++rounds) {
      for (int i = 0; i < 16 && seq < up_to; ++i) {
        const std::vector<std::byte> value = value_for(RecordId{kRun, 0, seq});
        RecordInput record;
        record.value = std::span<const std::byte>(value);
        record.timestamp_ms = wall_ms();
        Result<SendResult> sent = producer->send_to(0, record);
        if (!sent.ok()) return std::move(sent).error();
        if (sent->offset.value != static_cast<std::int64_t>(seq))
          return Error{Errc::kInternal, "offset " + std::to_string(sent->offset.value) + " for seq " + std::to_string(seq)};
        ++seq;
      }
      WEFT_TRY_VOID(producer->flush(10'000));
      acked = seq;
    }
    return ok();
  };

  // When producers keep sending (bounded: 20,000 records hold 2.5 times the space left)
  Result<void> refused = produce(20'000);

  // Expect a clear "out of disk space", not a time-out or a hang
  ASSERT_FALSE(refused.ok()) << "20,000 records fit in " << kFreeBytes << " bytes?";
  EXPECT_EQ(refused.error().code, Errc::kResourceExhausted) << refused.error().message;
  EXPECT_NE(refused.error().message.find("disk space"), std::string::npos) << refused.error().message;
  EXPECT_GT(acked, 1000u) << "the disk filled sooner than expected";
  std::printf("[ enospc   ] %llu records acknowledged, %llu sent before the disk was full: %s\n", static_cast<unsigned long long>(acked),
              static_cast<unsigned long long>(seq), refused.error().message.c_str());
  // ... and the node says why its log takes nothing
  const std::string full_error = wait_for_log_error(*client, topic, [](const std::string& e) { return !e.empty(); });
  EXPECT_FALSE(full_error.empty()) << "describe_topic shows no log_error while the disk is full";
  // ... and keeps serving: a consumer from the start reads every acknowledged record intact.
  // (Lookups in the active segment serve what is in the file when the flush they start with
  // fails: the records asked for were acknowledged, so they are there.)
  {
    SCOPED_TRACE("reading while the disk is full");
    const std::vector<CopiedRecord> records = read_from_earliest(client, topic, 0, static_cast<std::int64_t>(acked));
    expect_sequence(records, static_cast<std::int64_t>(acked), kRun);
  }
  // ... and a producer that fills the ring meanwhile (the ring keeps what the log has not
  // taken) is refused with the same reason, rather than left waiting max_block_ms (10 s, then
  // kUnavailable). Bounded: 2,000 records are several 64 KiB rings' worth.
  {
    Result<SendResult> blocked = Error{Errc::kInternal, "not sent"};
    for (int i = 0; i < 2000; ++i) {
      const std::vector<std::byte> value = value_for(RecordId{kRun, 0, seq});
      RecordInput record;
      record.value = std::span<const std::byte>(value);
      record.timestamp_ms = wall_ms();
      blocked = producer->send_to(0, record);
      if (!blocked.ok()) break;
      ASSERT_EQ(blocked->offset.value, static_cast<std::int64_t>(seq));
      ++seq;
    }
    ASSERT_FALSE(blocked.ok()) << "2,000 records fit a 64 KiB ring whose log takes nothing?";
    EXPECT_EQ(blocked.error().code, Errc::kResourceExhausted) << blocked.error().message;
    EXPECT_NE(blocked.error().message.find("disk space"), std::string::npos) << blocked.error().message;
  }

  // When space returns
  ASSERT_EQ(::unlink(filler.c_str()), 0) << std::strerror(errno);

  // Expect (within 10 s) everything sent so far acknowledged, and the log error gone
  Result<void> resumed = Error{Errc::kUnavailable, "not tried"};
  const auto deadline = Clock::now() + seconds(10);
  for (int rounds = 0; rounds < 1000 && !resumed.ok() && Clock::now() < deadline; ++rounds) {
    resumed = producer->flush(100);
    if (!resumed.ok() && resumed.error().code == Errc::kResourceExhausted) std::this_thread::sleep_for(milliseconds(10));
  }
  ASSERT_TRUE(resumed.ok()) << "records sent before the disk filled were never acknowledged: " << resumed.error().message;
  acked = seq;
  const std::string cleared = wait_for_log_error(*client, topic, [](const std::string& e) { return e.empty(); });
  EXPECT_TRUE(cleared.empty()) << "log_error still set after space returned: " << cleared;
  // ... and new records acknowledged as before
  const std::uint64_t target = seq + 2000;
  Result<void> after = produce(target);
  ASSERT_TRUE(after.ok()) << after.error().message;
  EXPECT_EQ(acked, target);
  // ... and every acknowledged record, from before the disk filled and after, readable in order
  const std::vector<CopiedRecord> records = read_from_earliest(client, topic, 0, static_cast<std::int64_t>(acked));
  expect_sequence(records, static_cast<std::int64_t>(acked), kRun);
}

TEST(FullDisk, WithFsyncAlwaysAndLargeWritesTheLogRetriesRatherThanStops) {
  constexpr std::size_t kDiskBytes = std::size_t{8} << 20;
  constexpr std::size_t kFreeBytes = std::size_t{2} << 20;
  TmpfsMount disk(kDiskBytes);
  if (!disk.mounted()) GTEST_SKIP() << "full disk: " << disk.why_not();
  TempDir metadata;
  // Given a node logging an fsync=always topic on a disk with 2 MiB left, and producers sending
  // records large enough that each pass's writes go direct, in the background
  const std::string filler = disk.path() + "/filler";
  ASSERT_TRUE(write_filler(filler, kDiskBytes - kFreeBytes)) << "could not fill the tmpfs";
  Result<std::unique_ptr<Node>> node = Node::start(full_disk_node(disk.path(), metadata.path()));
  ASSERT_TRUE(node.ok()) << node.error().message;
  std::shared_ptr<Client> client = Client::embedded(**node);
  ASSERT_TRUE(client->create_topic("big", TopicSettings{{"partitions", "1"}, {"ring.capacity.bytes", "8388608"},
                                                       {"max.batch.bytes", "131072"}, {"fsync", "always"}, {"retention.ms", "-1"}})
                  .ok());
  ProducerOptions producer_options;
  producer_options.acks = Acks::kAll;
  producer_options.max_block_ms = 10'000;
  TopicProducer producer = TopicProducer::create(client, "big", producer_options).value();
  const std::vector<std::byte> value(60'000, std::byte{0x44});
  RecordInput record;
  record.value = std::span<const std::byte>(value);

  // When they keep sending, 8 records (480 KB) between acknowledgements (bounded: 200 records,
  // 12 MB, six times the space left)
  Result<void> refused = ok();
  for (int i = 0; i < 200 && refused.ok(); ++i) {
    Result<SendResult> sent = producer.send_to(0, record);
    if (!sent.ok()) refused = std::move(sent).error();
    if (refused.ok() && i % 8 == 7) refused = producer.flush(10'000);
  }

  // Expect "out of disk space", retried: not a log stopped for good
  ASSERT_FALSE(refused.ok()) << "12 MB fit in 2 MiB?";
  EXPECT_EQ(refused.error().code, Errc::kResourceExhausted) << refused.error().message;
  const std::string full_error = wait_for_log_error(*client, "big", [](const std::string& e) { return !e.empty(); });
  EXPECT_FALSE(full_error.empty());
  // ... and when space returns, everything sent acknowledged (within 10 s)
  ASSERT_EQ(::unlink(filler.c_str()), 0) << std::strerror(errno);
  Result<void> resumed = Error{Errc::kUnavailable, "not tried"};
  const auto deadline = Clock::now() + seconds(10);
  for (int rounds = 0; rounds < 1000 && !resumed.ok() && Clock::now() < deadline; ++rounds) {
    resumed = producer.flush(100);
    if (!resumed.ok() && resumed.error().code == Errc::kResourceExhausted) std::this_thread::sleep_for(milliseconds(10));
  }
  EXPECT_TRUE(resumed.ok()) << "the log stopped for good after a full disk: " << resumed.error().message;
}

// One batch of `records` records of `value_bytes` each, at `base`.
std::vector<std::byte> batch_at(std::int64_t base, int records, std::size_t value_bytes) {
  return test::make_batch(base, records, 1'700'000'000'000 + base, value_bytes, std::byte{0x5a});
}

TEST(FullDisk, DirectWritesInFlightThatFailAreKeptAndWrittenWhenSpaceReturns) {
  constexpr std::size_t kDiskBytes = std::size_t{8} << 20;
  constexpr std::size_t kFreeBytes = std::size_t{3} << 20;
  TmpfsMount disk(kDiskBytes);
  if (!disk.mounted()) GTEST_SKIP() << "full disk: " << disk.why_not();
  // Given a segment writing large flushes in the background (io_uring where allowed) on a disk
  // with 3 MiB left
  const std::string filler = disk.path() + "/filler";
  ASSERT_TRUE(write_filler(filler, kDiskBytes - kFreeBytes)) << "could not fill the tmpfs";
  SegmentOptions options;
  options.write_buffer_bytes = 256 * 1024;
  options.write_buffers = 3;
  Segment segment = Segment::create(disk.path(), Offset{0}, options).value();

  // When batches keep coming (bounded: 8 MiB of them, more than the disk holds)
  std::int64_t offset = 0;
  std::optional<Error> refused;
  for (int i = 0; i < 512 && !refused; ++i) {
    const std::vector<std::byte> batch = batch_at(offset, 16, 1000);
    Result<void> step = segment.append(batch);
    if (step.ok()) offset += 16;
    if (step.ok() && i % 8 == 7) step = segment.submit(i % 16 == 7);
    if (step.ok()) step = segment.poll_writes();
    if (!step.ok()) refused = step.error();
  }

  // Expect a clear "disk full", a flush that fails the same way, and what is shown as written
  // ending at a batch inside the file
  ASSERT_TRUE(refused.has_value()) << "8 MiB of batches fit in 3 MiB?";
  EXPECT_EQ(refused->code, Errc::kResourceExhausted) << refused->message;
  Result<void> flushed = segment.flush();
  ASSERT_FALSE(flushed.ok());
  EXPECT_EQ(flushed.error().code, Errc::kResourceExhausted) << flushed.error().message;
  EXPECT_LT(segment.written_bytes(), segment.size_bytes());
  EXPECT_LE(segment.written_next_offset(), segment.next_offset());
  if (test::io_uring_allowed()) {
    EXPECT_TRUE(segment.writes_with_io_uring()) << "io_uring allowed but not used: the background writes were not tested";
  }
  std::printf("[ enospc   ] refused after %lld records: %s; %llu of %llu bytes written\n", static_cast<long long>(offset),
              refused->message.c_str(), static_cast<unsigned long long>(segment.written_bytes()),
              static_cast<unsigned long long>(segment.size_bytes()));

  // When space returns
  ASSERT_EQ(::unlink(filler.c_str()), 0) << std::strerror(errno);

  // Expect the kept writes to go out with the next flush, and appends to carry on
  ASSERT_TRUE(segment.flush().ok());
  EXPECT_EQ(segment.written_bytes(), segment.size_bytes());
  for (int i = 0; i < 16; ++i) {
    ASSERT_TRUE(segment.append(batch_at(offset, 16, 1000)).ok());
    offset += 16;
  }
  ASSERT_TRUE(segment.sync().ok());
  // ... and the file, reopened, to hold every batch appended, in order, nothing cut
  SegmentRecovery recovery;
  Segment reopened = Segment::open(disk.path(), Offset{0}, true, &recovery).value();
  EXPECT_EQ(recovery.truncated_bytes, 0u) << recovery.reason;
  EXPECT_EQ(reopened.next_offset(), Offset{offset});
  EXPECT_EQ(recovery.batches, static_cast<std::uint64_t>(offset / 16));
}

// ---- 3. a failed fdatasync ------------------------------------------------------------------

// A real log whose sync() fails with EIO from its (good_syncs + 1)th call on; everything else
// goes to the log it wraps.
class FailingSyncLog final : public test::ForwardingLog {
 public:
  FailingSyncLog(std::unique_ptr<PartitionLog> log, int good_syncs, std::shared_ptr<std::atomic<int>> syncs)
      : ForwardingLog(std::move(log)), good_syncs_(good_syncs), syncs_(std::move(syncs)) {}

  Result<void> sync() override {
    // Relaxed: a count the test reads after the node acted on it; no data rides on it.
    if (syncs_->fetch_add(1, std::memory_order_relaxed) >= good_syncs_) return Error{Errc::kIo, "injected EIO"};
    return inner_->sync();
  }

 private:
  int good_syncs_;
  std::shared_ptr<std::atomic<int>> syncs_;
};

// Sends value_for({run, 0, seq}) for seq from `first`, awaiting acks=all after each, until
// `count` are acknowledged or one fails (its error returned). `acked` counts the successes.
Result<void> send_and_await(TopicProducer& producer, std::uint32_t run, std::uint64_t first, std::uint64_t count, std::uint64_t& acked) {
  for (std::uint64_t seq = first; seq < first + count; ++seq) {
    const std::vector<std::byte> value = value_for(RecordId{run, 0, seq});
    RecordInput record;
    record.value = std::span<const std::byte>(value);
    record.timestamp_ms = wall_ms();
    WEFT_TRY(const SendResult sent, producer.send_to(0, record));
    if (sent.offset.value != static_cast<std::int64_t>(seq))
      return Error{Errc::kInternal, "offset " + std::to_string(sent.offset.value) + " for seq " + std::to_string(seq)};
    WEFT_TRY_VOID(producer.await(sent, Acks::kAll, 10'000));
    ++acked;
  }
  return ok();
}

constexpr int kGoodSyncs = 5;  // the sixth fdatasync of the doomed log fails

TEST(FailedSync, StopsThatPartitionsLogWithKIoWhileTheNodeAndOtherTopicsCarryOn) {
  constexpr std::uint32_t kRun = 9;
  TempDir dir;
  // Given a node whose topic "doomed" has a log that fails its sixth fdatasync (EIO)
  auto syncs = std::make_shared<std::atomic<int>>(0);
  NodeOptions options;
  options.prefer_hugepages = false;
  options.log_retry_interval_ms = 20;  // a retry would show within the test's waits
  options.open_log = [real = open_segment_logs(dir.path() + "/data"), syncs](std::string_view topic, std::uint32_t partition,
                                                                            const TopicConfig& config) -> Result<std::unique_ptr<PartitionLog>> {
    WEFT_TRY(std::unique_ptr<PartitionLog> log, real(topic, partition, config));
    if (topic != "doomed") return log;
    return std::unique_ptr<PartitionLog>(std::make_unique<FailingSyncLog>(std::move(log), kGoodSyncs, syncs));
  };
  Result<std::unique_ptr<Node>> node = Node::start(options);
  ASSERT_TRUE(node.ok()) << node.error().message;
  std::shared_ptr<Client> client = Client::embedded(**node);
  const TopicSettings always{{"partitions", "1"}, {"ring.capacity.bytes", "65536"}, {"max.batch.bytes", "8192"}, {"fsync", "always"}};
  ASSERT_TRUE(client->create_topic("doomed", always).ok());
  ASSERT_TRUE(client->create_topic("healthy", always).ok());
  ProducerOptions producer_options;
  producer_options.acks = Acks::kAll;
  TopicProducer doomed = TopicProducer::create(client, "doomed", producer_options).value();

  // When a producer sends and awaits durability, one record at a time (bounded: 1,000)
  std::uint64_t acked = 0;
  Result<void> failed = send_and_await(doomed, kRun, 0, 1000, acked);

  // Expect kIo saying the log stopped, after no more acknowledgements than syncs that succeeded
  ASSERT_FALSE(failed.ok()) << "1,000 records acknowledged past a failed fdatasync";
  EXPECT_EQ(failed.error().code, Errc::kIo) << failed.error().message;
  EXPECT_NE(failed.error().message.find("log stopped"), std::string::npos) << failed.error().message;
  EXPECT_GE(acked, 1u);
  EXPECT_LE(acked, static_cast<std::uint64_t>(kGoodSyncs)) << "a record acknowledged durable without a successful fdatasync";
  // ... and the node's description says why
  const std::string stopped = wait_for_log_error(*client, "doomed", [](const std::string& e) { return !e.empty(); });
  EXPECT_NE(stopped.find("injected EIO"), std::string::npos) << "log_error: " << stopped;
  // ... and a later record is refused at once with the same code, at either level
  {
    const std::vector<std::byte> value = value_for(RecordId{kRun, 1, 0});
    RecordInput record;
    record.value = std::span<const std::byte>(value);
    Result<SendResult> sent = doomed.send_to(0, record);
    ASSERT_TRUE(sent.ok()) << sent.error().message;
    const Result<void> durable = doomed.await(*sent, Acks::kAll, 10'000);
    ASSERT_FALSE(durable.ok());
    EXPECT_EQ(durable.error().code, Errc::kIo) << durable.error().message;
    const Result<void> written = doomed.await(*sent, Acks::kLeader, 10'000);
    ASSERT_FALSE(written.ok());
    EXPECT_EQ(written.error().code, Errc::kIo) << written.error().message;
  }
  // ... and the failed fdatasync is never retried (the kernel may have dropped the pages)
  std::this_thread::sleep_for(milliseconds(200));  // ten retry intervals
  EXPECT_EQ(syncs->load(std::memory_order_relaxed), kGoodSyncs + 1) << "the node called fdatasync again after it failed";

  // ... and every acknowledged record stays readable
  {
    SCOPED_TRACE("doomed");
    const std::vector<CopiedRecord> records = read_from_earliest(client, "doomed", 0, static_cast<std::int64_t>(acked));
    expect_sequence(records, static_cast<std::int64_t>(acked), kRun);
  }
  // ... and the node's other topic is acknowledged and read as ever
  {
    SCOPED_TRACE("healthy");
    TopicProducer healthy = TopicProducer::create(client, "healthy", producer_options).value();
    std::uint64_t healthy_acked = 0;
    const Result<void> sent = send_and_await(healthy, kRun, 0, 200, healthy_acked);
    ASSERT_TRUE(sent.ok()) << sent.error().message;
    const std::vector<CopiedRecord> records = read_from_earliest(client, "healthy", 0, 200);
    expect_sequence(records, 200, kRun);
    Result<TopicInfo> info = client->describe_topic("healthy");
    ASSERT_TRUE(info.ok());
    EXPECT_TRUE(info->partitions[0].log_error.empty()) << info->partitions[0].log_error;
  }
  // ... and a new topic can still be created and written
  ASSERT_TRUE(client->create_topic("later", always).ok());
  TopicProducer later = TopicProducer::create(client, "later", producer_options).value();
  std::uint64_t later_acked = 0;
  const Result<void> later_sent = send_and_await(later, kRun, 0, 10, later_acked);
  EXPECT_TRUE(later_sent.ok()) << later_sent.error().message;
}

// ---- 4. a 4 KiB-sector disk -----------------------------------------------------------------

// `name` on PATH or in /sbin, /usr/sbin (where losetup and mkfs live); empty if absent.
std::string find_tool(const std::string& name) {
  std::string dirs = std::getenv("PATH") != nullptr ? std::getenv("PATH") : "";
  dirs += ":/sbin:/usr/sbin";
  std::size_t from = 0;
  for (int parts = 0; parts < 256 && from <= dirs.size(); ++parts) {
    const std::size_t colon = std::min(dirs.find(':', from), dirs.size());
    const std::string candidate = dirs.substr(from, colon - from) + "/" + name;
    if (colon > from && ::access(candidate.c_str(), X_OK) == 0) return candidate;
    from = colon + 1;
  }
  return {};
}

// Runs `argv` (argv[0] a path) to its end or for at most `timeout` (then SIGKILL), reaped by its
// PID. Returns its exit code (or -signal, or Children::kTimedOut) and its stdout and stderr.
int run_tool(const std::vector<std::string>& argv, std::string& output, milliseconds timeout) {
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0) {
    output = std::string("pipe2: ") + std::strerror(errno);
    return -1;
  }
  UniqueFd read_end(fds[0]);
  UniqueFd write_end(fds[1]);
  std::vector<std::string> args = argv;
  std::vector<char*> args_p;
  for (std::string& a : args) args_p.push_back(a.data());
  args_p.push_back(nullptr);
  const int out_fd = write_end.get();
  test::Children children;
  const pid_t pid = children.spawn([&] {
    if (dup2(out_fd, STDOUT_FILENO) < 0 || dup2(out_fd, STDERR_FILENO) < 0) return 126;
    execve(args_p[0], args_p.data(), environ);
    return 127;
  });
  write_end = UniqueFd();
  if (pid <= 0) return -1;
  const auto deadline = Clock::now() + timeout;
  for (int rounds = 0; rounds < 100'000 && Clock::now() < deadline; ++rounds) {
    pollfd p{read_end.get(), POLLIN, 0};
    if (::poll(&p, 1, 50) <= 0) continue;
    char chunk[4096];
    const ssize_t n = ::read(read_end.get(), chunk, sizeof(chunk));
    if (n == 0) break;
    if (n > 0) output.append(chunk, static_cast<std::size_t>(n));
  }
  const auto left = std::chrono::duration_cast<milliseconds>(deadline - Clock::now());
  return children.reap(pid, std::max(left, milliseconds(100)));
}

// An ext4 file system on a loop device with `sector_bytes` logical sectors, over a sparse file
// in `image_dir`, made with `mkfs_options` and mounted for one test; unmounted, detached and
// deleted however the test ends.
class LoopDisk {
 public:
  LoopDisk(std::size_t bytes, std::uint32_t sector_bytes, const std::string& image_dir = "/tmp",
           const std::vector<std::string>& mkfs_options = {}) {
    const std::string losetup = find_tool("losetup");
    const std::string mkfs = find_tool("mkfs.ext4");
    if (losetup.empty() || mkfs.empty()) {
      why_not_ = "losetup or mkfs.ext4 not found (PATH, /sbin, /usr/sbin)";
      return;
    }
    losetup_ = losetup;
    std::string image = image_dir + "/weft-sector-XXXXXX";
    const int fd = mkstemp(image.data());
    if (fd < 0) {
      why_not_ = std::string("mkstemp: ") + std::strerror(errno);
      return;
    }
    image_ = image;
    const bool sized = ftruncate(fd, static_cast<off_t>(bytes)) == 0;
    ::close(fd);
    if (!sized) {
      why_not_ = std::string("ftruncate: ") + std::strerror(errno);
      return;
    }
    std::string out;
    int code = run_tool({losetup, "--find", "--show", "--sector-size", std::to_string(sector_bytes), image_}, out, seconds(30));
    if (code != 0) {
      why_not_ = "losetup --sector-size " + std::to_string(sector_bytes) + " failed (" + std::to_string(code) + "): " + out;
      return;
    }
    device_ = out.substr(0, out.find('\n'));
    out.clear();
    std::vector<std::string> mkfs_argv{mkfs, "-q", "-F"};
    mkfs_argv.insert(mkfs_argv.end(), mkfs_options.begin(), mkfs_options.end());
    mkfs_argv.push_back(device_);
    code = run_tool(mkfs_argv, out, seconds(60));
    if (code != 0) {
      why_not_ = "mkfs.ext4 " + device_ + " failed (" + std::to_string(code) + "): " + out;
      return;
    }
    char dir[] = "/tmp/weft-sector-mnt-XXXXXX";
    if (mkdtemp(dir) == nullptr) {
      why_not_ = std::string("mkdtemp: ") + std::strerror(errno);
      return;
    }
    path_ = dir;
    if (::mount(device_.c_str(), path_.c_str(), "ext4", MS_NOSUID | MS_NODEV, nullptr) != 0) {
      why_not_ = "mount " + device_ + " " + path_ + " failed: " + std::strerror(errno);
      return;
    }
    mounted_ = true;
    std::ifstream sysfs("/sys/block/" + device_.substr(device_.rfind('/') + 1) + "/queue/logical_block_size");
    sysfs >> logical_block_bytes_;
  }
  ~LoopDisk() {
    if (mounted_ && ::umount2(path_.c_str(), 0) != 0) ::umount2(path_.c_str(), MNT_DETACH);
    if (!path_.empty()) ::rmdir(path_.c_str());
    if (!device_.empty()) {
      std::string out;
      if (run_tool({losetup_, "-d", device_}, out, seconds(30)) != 0) std::fprintf(stderr, "losetup -d %s: %s\n", device_.c_str(), out.c_str());
    }
    if (!image_.empty()) ::unlink(image_.c_str());
  }
  LoopDisk(const LoopDisk&) = delete;
  LoopDisk& operator=(const LoopDisk&) = delete;

  bool mounted() const { return mounted_; }
  const std::string& why_not() const { return why_not_; }
  const std::string& path() const { return path_; }
  std::uint32_t logical_block_bytes() const { return logical_block_bytes_; }

 private:
  std::string losetup_;
  std::string image_;
  std::string device_;
  std::string path_;
  std::string why_not_;
  bool mounted_ = false;
  std::uint32_t logical_block_bytes_ = 0;
};

TEST(SectorDisk, ALogOnA4KiBSectorDiskReadsBackWholeThroughRestarts) {
  constexpr std::uint32_t kRun = 11;
  constexpr int kRounds = 3;
  constexpr std::uint32_t kBatchRecords = 32;
  constexpr int kBatches = 200;  // ~1 MiB a round: the log rolls, flushes pass 64 KiB and go direct
  constexpr int kSingles = 50;
  LoopDisk disk(std::size_t{256} << 20, 4096);
  if (!disk.mounted()) GTEST_SKIP() << "4 KiB-sector disk: " << disk.why_not();
  EXPECT_EQ(disk.logical_block_bytes(), 4096u) << "the loop device does not have 4 KiB sectors";
  const std::string topic = "sectors";
  NodeOptions options = crash_node_options(disk.path());
  std::int64_t sent = 0;  // one partition: offsets 0..sent-1, each value_for({kRun, 0, offset})
  for (int round = 0; round <= kRounds; ++round) {
    SCOPED_TRACE("node start " + std::to_string(round));
    // Given a node started on the disk (again), with what the earlier rounds sent
    Result<std::unique_ptr<Node>> node = Node::start(options);
    ASSERT_TRUE(node.ok()) << node.error().message;
    std::shared_ptr<Client> client = Client::embedded(**node);
    if (round == 0) {
      ASSERT_TRUE(client->create_topic(topic, TopicSettings{{"partitions", "1"}, {"ring.capacity.bytes", "1048576"}, {"max.batch.bytes", "65536"},
                                                            {"segment.bytes", "1048576"}, {"retention.ms", "-1"}, {"fsync", "always"}})
                      .ok());
    }
    // Expect every record sent before, intact, from offset 0
    const std::vector<CopiedRecord> records = read_from_earliest(client, topic, 0, sent);
    expect_sequence(records, sent, kRun);
    if (round == kRounds) break;

    // When batches stream in without waiting (large flushes), then single sends await acks=all
    ProducerOptions producer_options;
    producer_options.acks = Acks::kAll;
    TopicProducer producer = TopicProducer::create(client, topic, producer_options).value();
    for (int b = 0; b < kBatches; ++b) {
      std::vector<std::vector<std::byte>> values;
      std::vector<RecordInput> batch(kBatchRecords);
      for (std::uint32_t i = 0; i < kBatchRecords; ++i) values.push_back(value_for(RecordId{kRun, 0, static_cast<std::uint64_t>(sent) + i}));
      for (std::uint32_t i = 0; i < kBatchRecords; ++i) {
        batch[i].value = std::span<const std::byte>(values[i]);
        batch[i].timestamp_ms = wall_ms();
      }
      Result<SendResult> put = producer.send_batch(0, batch);
      ASSERT_TRUE(put.ok()) << put.error().message;
      ASSERT_EQ(put->offset.value, sent);
      sent += kBatchRecords;
    }
    const Result<void> flushed = producer.flush(30'000);
    ASSERT_TRUE(flushed.ok()) << flushed.error().message;
    std::uint64_t acked = 0;
    const Result<void> singles = send_and_await(producer, kRun, static_cast<std::uint64_t>(sent), kSingles, acked);
    ASSERT_TRUE(singles.ok()) << singles.error().message;
    sent += kSingles;
  }
  // ... and the segments open clean: nothing cut, every batch there
  SegmentLogRecovery recovery;
  Result<std::unique_ptr<SegmentLog>> log = SegmentLog::open(disk.path() + "/data/" + topic + "-0", Offset{0}, {}, &recovery);
  ASSERT_TRUE(log.ok()) << log.error().message;
  EXPECT_EQ((*log)->next_offset().value, sent);
  EXPECT_EQ(recovery.truncated_bytes, 0u) << recovery.reason;
  EXPECT_GT(recovery.segments, 1u) << "the log never rolled";
}

// ---- 5. a disk whose write-back fails ------------------------------------------------------

// ext4 without a journal on a loop device whose image lies in a tmpfs far smaller than the file
// system: writes into the page cache succeed, and their write-back fails once the tmpfs is full
// (the loop device answers with I/O errors), as a failing disk's would. The rolled segments'
// fdatasync, on the syncer thread, is where the log learns it.
TEST(FailingDisk, ARolledSegmentWhoseSyncFailsStopsTheLogAndNoLaterSyncSucceeds) {
  TmpfsMount backing(std::size_t{40} << 20);
  if (!backing.mounted()) GTEST_SKIP() << "failing disk: " << backing.why_not();
  LoopDisk disk(std::size_t{256} << 20, 512, backing.path(), {"-O", "^has_journal", "-E", "lazy_itable_init=1"});
  if (!disk.mounted()) GTEST_SKIP() << "failing disk: " << disk.why_not();
  SegmentLogOptions options;
  options.segment_bytes = std::uint64_t{4} << 20;
  options.segment.direct_io = false;  // through the page cache: the failure comes with the syncs
  Result<std::unique_ptr<SegmentLog>> opened = SegmentLog::open(disk.path() + "/log", Offset{0}, options);
  ASSERT_TRUE(opened.ok()) << opened.error().message;
  SegmentLog& log = **opened;

  // When batches go on past what the disk can hold (bounded: 2 048 batches of ~60 KiB, 120 MiB,
  // where the tmpfs under the disk takes 40 MiB, then 10 s more for the syncs to finish)
  Result<void> refused = ok();
  std::int64_t next = 0;
  auto append_one = [&] {
    const std::vector<std::byte> batch = test::make_batch(next, 60, wall_ms(), 1000, std::byte{0x5a});
    refused = log.append(batch);
    if (refused.ok()) next += 60;
  };
  for (int i = 0; i < 2048 && refused.ok(); ++i) append_one();
  const auto deadline = Clock::now() + seconds(10);
  while (refused.ok() && Clock::now() < deadline) {
    std::this_thread::sleep_for(milliseconds(10));
    append_one();
  }

  // Expect the log to stop with kDataLoss, saying which sync failed
  ASSERT_FALSE(refused.ok()) << next << " records appended and synced in the background on a disk that cannot hold them";
  EXPECT_EQ(refused.error().code, Errc::kDataLoss) << refused.error().message;
  EXPECT_NE(refused.error().message.find("fdatasync"), std::string::npos) << refused.error().message;
  std::printf("[ failing  ] %lld records appended before the log stopped: %s\n", static_cast<long long>(next), refused.error().message.c_str());
  // ... and every sync from now on fails too: the kernel reports a write-back error to each open
  // file once (the syncer took that report, a first sync of the active segment takes its own), so
  // only the log's memory of it keeps a caller (the node acknowledging acks=all) from hearing
  // that everything appended is durable
  for (int attempt = 0; attempt < 3; ++attempt) {
    const Result<void> synced = log.sync();
    ASSERT_FALSE(synced.ok()) << "sync " << attempt << " succeeded after the disk lost a closed segment's writes";
    EXPECT_EQ(synced.error().code, Errc::kDataLoss) << synced.error().message;
  }
  // ... and so does every later append
  const Result<void> later = log.append(test::make_batch(next, 1, wall_ms()));
  ASSERT_FALSE(later.ok());
  EXPECT_EQ(later.error().code, Errc::kDataLoss) << later.error().message;
}


// The same disk under a node: producers waiting on acks=all are told the log stopped, with the
// disk's error, and nothing is acknowledged after it. `fsync` picks who meets the failure first:
// with `none` only the syncer syncs (rolled segments), so the log learns it there and refuses
// the next append (kDataLoss); with an interval the node's own sync of the active segment may
// fail first (kIo), or the syncer's (kDataLoss).
void expect_a_node_on_a_failing_disk_to_stop(const char* fsync, const std::vector<Errc>& codes, const std::string& cause) {
  constexpr std::uint32_t kRun = 12;
  TmpfsMount backing(std::size_t{40} << 20);
  if (!backing.mounted()) GTEST_SKIP() << "failing disk: " << backing.why_not();
  LoopDisk disk(std::size_t{256} << 20, 512, backing.path(), {"-O", "^has_journal", "-E", "lazy_itable_init=1"});
  if (!disk.mounted()) GTEST_SKIP() << "failing disk: " << disk.why_not();
  TempDir healthy_dir;
  // Given a node whose topic "doomed" logs, through the page cache, on that disk, and whose topic
  // "healthy" logs on a good one, both with this fsync policy
  NodeOptions options;
  options.prefer_hugepages = false;
  options.log_retry_interval_ms = 20;
  options.metadata_dir = healthy_dir.path() + "/topics";
  SegmentOptions buffered;
  buffered.direct_io = false;
  options.open_log = [failing = open_segment_logs(disk.path() + "/data", buffered), good = open_segment_logs(healthy_dir.path() + "/data")](
                         std::string_view topic, std::uint32_t partition, const TopicConfig& config) {
    return topic == "doomed" ? failing(topic, partition, config) : good(topic, partition, config);
  };
  Result<std::unique_ptr<Node>> node = Node::start(options);
  ASSERT_TRUE(node.ok()) << node.error().message;
  std::shared_ptr<Client> client = Client::embedded(**node);
  const TopicSettings settings{{"partitions", "1"},          {"ring.capacity.bytes", "4194304"}, {"max.batch.bytes", "262144"},
                               {"segment.bytes", "4194304"}, {"retention.ms", "-1"},            {"fsync", fsync}};
  ASSERT_TRUE(client->create_topic("doomed", settings).ok());
  ASSERT_TRUE(client->create_topic("healthy", settings).ok());
  ProducerOptions producer_options;
  producer_options.acks = Acks::kAll;
  TopicProducer doomed = TopicProducer::create(client, "doomed", producer_options).value();

  // When ~64 KiB batches go on past what the disk can hold, awaited every 2 MiB (bounded: 2 048
  // batches, 128 MiB, where the tmpfs under the disk takes 40 MiB, or 60 s)
  const std::vector<std::byte> value(1000, std::byte{0x6b});
  std::vector<RecordInput> batch(64);
  for (RecordInput& record : batch) record.value = std::span<const std::byte>(value);
  Result<void> failed = ok();
  std::int64_t acknowledged_end = 0;
  const auto deadline = Clock::now() + seconds(60);
  for (int b = 0; b < 2048 && failed.ok() && Clock::now() < deadline; ++b) {
    for (RecordInput& record : batch) record.timestamp_ms = wall_ms();
    Result<SendResult> sent = doomed.send_batch(0, batch);
    if (!sent.ok()) {
      failed = sent.error();
      break;
    }
    if (b % 32 != 31) continue;
    failed = doomed.await(*sent, Acks::kAll, 10'000);
    if (failed.ok()) acknowledged_end = sent->offset.value + static_cast<std::int64_t>(batch.size());
  }

  // Expect the producer told that the log stopped, with the disk's error (not a time-out, not a
  // hang), after some acknowledgements
  ASSERT_FALSE(failed.ok()) << acknowledged_end << " records acknowledged durable on a disk that cannot hold them";
  EXPECT_NE(std::find(codes.begin(), codes.end(), failed.error().code), codes.end()) << failed.error().message;
  EXPECT_NE(failed.error().message.find("log stopped"), std::string::npos) << failed.error().message;
  EXPECT_GT(acknowledged_end, 0);
  // ... and the node's description names the failed sync
  const std::string stopped = wait_for_log_error(*client, "doomed", [](const std::string& e) { return !e.empty(); });
  EXPECT_NE(stopped.find(cause), std::string::npos) << "log_error: " << stopped;
  std::printf("[ failing  ] fsync=%s: %lld records acknowledged before the log stopped: %s\n", fsync,
              static_cast<long long>(acknowledged_end), stopped.c_str());
  // ... and no record is acknowledged any more: not at acks=all, not at acks=1, not after the
  // node's retry interval has passed many times
  std::this_thread::sleep_for(milliseconds(200));
  for (int attempt = 0; attempt < 3; ++attempt) {
    Result<SendResult> sent = doomed.send_to(0, batch[0]);
    if (!sent.ok()) continue;  // refused at once is as good
    const Result<void> durable = doomed.await(*sent, Acks::kAll, 10'000);
    ASSERT_FALSE(durable.ok()) << "a record acknowledged durable after the log's sync failed";
    EXPECT_NE(durable.error().code, Errc::kUnavailable) << "a time-out, where the log's error was due: " << durable.error().message;
    const Result<void> written = doomed.await(*sent, Acks::kLeader, 10'000);
    EXPECT_FALSE(written.ok()) << "a record acknowledged written after the log stopped";
  }
  // ... and the node's other topic is acknowledged and read as ever
  TopicProducer healthy = TopicProducer::create(client, "healthy", producer_options).value();
  std::uint64_t healthy_acked = 0;
  const Result<void> sent = send_and_await(healthy, kRun, 0, 200, healthy_acked);
  ASSERT_TRUE(sent.ok()) << sent.error().message;
  expect_sequence(read_from_earliest(client, "healthy", 0, 200), 200, kRun);
}

TEST(FailingDisk, ANodeThatSyncsNothingItselfLearnsFromTheRolledSegmentsSyncAndAcknowledgesNothingMore) {
  expect_a_node_on_a_failing_disk_to_stop("none", {Errc::kDataLoss}, "fdatasync of a closed segment");
}

TEST(FailingDisk, ANodeWhoseIntervalSyncsFailAnswersProducersWithTheErrorAndAcknowledgesNothingMore) {
  expect_a_node_on_a_failing_disk_to_stop("interval=20", {Errc::kIo, Errc::kDataLoss}, "fdatasync");
}

}  // namespace
}  // namespace weft::storage
