// The offset store: commits and fetches, merging, reopening, groups, deleting a group,
// forgetting a topic, argument checks, the file format byte by byte, and files that are damaged
// (every byte flipped, every truncation, a table of malformed files with valid CRCs).
#include "weft/fabric/offset_store.h"

#include <gtest/gtest.h>
#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <thread>
#include <vector>

#include "weft/fabric/crc32c.h"
#include "../temp_dir.h"

namespace weft {
namespace {

using test::TempDir;

std::unique_ptr<OffsetStore> open_store(const std::string& dir) {
  Result<std::unique_ptr<OffsetStore>> store = OffsetStore::open(dir);
  EXPECT_TRUE(store.ok()) << store.error().message;
  return store.ok() ? std::move(store).value() : nullptr;
}

CommittedOffset entry(std::string topic, std::uint32_t partition, std::int64_t offset, std::string metadata = "",
                      std::int64_t commit_time_ms = 1'700'000'000'000) {
  return CommittedOffset{std::move(topic), partition, Offset{offset}, std::move(metadata), commit_time_ms};
}

void expect_same(const CommittedOffset& got, const CommittedOffset& want) {
  EXPECT_EQ(got.topic, want.topic);
  EXPECT_EQ(got.partition, want.partition);
  EXPECT_EQ(got.offset, want.offset);
  EXPECT_EQ(got.metadata, want.metadata);
  EXPECT_EQ(got.commit_time_ms, want.commit_time_ms);
}

std::vector<std::byte> read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  const std::vector<char> chars{std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
  std::vector<std::byte> out(chars.size());
  std::memcpy(out.data(), chars.data(), chars.size());
  return out;
}

void write_bytes(const std::string& path, std::span<const std::byte> bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(out.good()) << path;
}

bool exists(const std::string& path) { return std::filesystem::exists(path); }

// Builds offsets files field by field, as the header documents them (little-endian), so tests
// pin the format independently of the store's encoder.
class FileBuilder {
 public:
  FileBuilder& magic(std::string_view m = "WEFTOFS1") { return text(m); }
  FileBuilder& u16(std::uint16_t v) { return le(v, 2); }
  FileBuilder& u32(std::uint32_t v) { return le(v, 4); }
  FileBuilder& i64(std::int64_t v) { return le(static_cast<std::uint64_t>(v), 8); }
  FileBuilder& text(std::string_view s) {
    for (const char c : s) bytes_.push_back(static_cast<std::byte>(c));
    return *this;
  }
  FileBuilder& entry(std::string_view topic, std::uint32_t partition, std::int64_t offset, std::int64_t time_ms,
                     std::string_view metadata) {
    u16(static_cast<std::uint16_t>(topic.size())).text(topic).u32(partition).i64(offset).i64(time_ms);
    return u16(static_cast<std::uint16_t>(metadata.size())).text(metadata);
  }
  // Appends the CRC-32C of everything so far.
  std::vector<std::byte> finish() const {
    std::vector<std::byte> out = bytes_;
    const std::uint32_t crc = crc32c(out);
    for (int i = 0; i < 4; ++i) out.push_back(static_cast<std::byte>((crc >> (8 * i)) & 0xff));
    return out;
  }
  // Without a CRC (for truncated headers).
  const std::vector<std::byte>& raw() const { return bytes_; }

 private:
  FileBuilder& le(std::uint64_t v, int bytes) {
    for (int i = 0; i < bytes; ++i) bytes_.push_back(static_cast<std::byte>((v >> (8 * i)) & 0xff));
    return *this;
  }
  std::vector<std::byte> bytes_;
};

FileBuilder header(std::uint32_t count) { return std::move(FileBuilder().magic().u32(1).u32(count)); }

// Opens `dir` expecting every group but `bad` to load and `bad` to be reported as kCorrupt with
// its file named. Returns false (after failing) when it was not so, so loops can stop early.
bool expect_only_bad_reported(const std::string& dir, const std::string& bad, const std::string& what) {
  auto store = open_store(dir);
  if (store == nullptr) return false;
  const auto& problems = store->load_problems();
  EXPECT_EQ(problems.size(), 1u) << what;
  if (problems.size() != 1) return false;
  EXPECT_EQ(problems[0].group, bad) << what;
  EXPECT_EQ(problems[0].error.code, Errc::kCorrupt) << what << ": " << problems[0].error.message;
  EXPECT_NE(problems[0].error.message.find(dir + "/" + bad + ".offsets"), std::string::npos) << problems[0].error.message;
  EXPECT_EQ(store->groups(), std::vector<std::string>{"good"}) << what;
  EXPECT_FALSE(store->fetch(bad, "orders", 0).has_value()) << what;
  const auto kept = store->fetch("good", "orders", 0);
  EXPECT_TRUE(kept.has_value() && kept->offset == Offset{42}) << what;
  return problems[0].group == bad && problems[0].error.code == Errc::kCorrupt && kept.has_value();
}

// ---- commits and fetches ---------------------------------------------------------------------

TEST(OffsetStore, CommitThenFetchReturnsTheEntry) {
  // Given an empty store
  TempDir dir;
  auto store = open_store(dir.path());
  ASSERT_NE(store, nullptr);
  EXPECT_TRUE(store->load_problems().empty());
  EXPECT_TRUE(store->groups().empty());

  // When a group commits two partitions
  const std::vector<CommittedOffset> offsets = {entry("orders", 0, 17, "consumer-1", 1000), entry("orders", 3, 0, "", -1)};
  ASSERT_TRUE(store->commit("billing", offsets).ok());

  // Expect both back, and nothing for what was not committed
  auto p0 = store->fetch("billing", "orders", 0);
  ASSERT_TRUE(p0.has_value());
  expect_same(*p0, offsets[0]);
  auto p3 = store->fetch("billing", "orders", 3);
  ASSERT_TRUE(p3.has_value());
  expect_same(*p3, offsets[1]);
  EXPECT_FALSE(store->fetch("billing", "orders", 1).has_value());
  EXPECT_FALSE(store->fetch("billing", "clicks", 0).has_value());
  EXPECT_FALSE(store->fetch("other", "orders", 0).has_value());
  EXPECT_EQ(store->groups(), std::vector<std::string>{"billing"});
  EXPECT_TRUE(exists(dir.path() + "/billing.offsets"));
  EXPECT_FALSE(exists(dir.path() + "/billing.offsets.tmp"));
}

TEST(OffsetStore, CommitsToOneGroupMergeByPartition) {
  // Given a group with three partitions committed
  TempDir dir;
  auto store = open_store(dir.path());
  ASSERT_NE(store, nullptr);
  const std::vector<CommittedOffset> first = {entry("orders", 0, 10), entry("orders", 1, 11), entry("clicks", 0, 5)};
  ASSERT_TRUE(store->commit("g", first).ok());

  // When a second commit moves one of them and adds another, naming one partition twice
  const std::vector<CommittedOffset> second = {entry("orders", 1, 20, "a"), entry("orders", 2, 30), entry("orders", 1, 21, "b")};
  ASSERT_TRUE(store->commit("g", second).ok());

  // Expect the untouched entries kept, the moved one at its last value, ordered by topic then partition
  const std::vector<CommittedOffset> all = store->fetch_all("g");
  ASSERT_EQ(all.size(), 4u);
  expect_same(all[0], first[2]);
  expect_same(all[1], first[0]);
  expect_same(all[2], second[2]);
  expect_same(all[3], second[1]);
  EXPECT_TRUE(store->fetch_all("nobody").empty());
}

TEST(OffsetStore, CommitOfNothingChangesNothing) {
  TempDir dir;
  auto store = open_store(dir.path());
  ASSERT_NE(store, nullptr);
  EXPECT_TRUE(store->commit("g", {}).ok());
  EXPECT_TRUE(store->groups().empty());
  EXPECT_FALSE(exists(dir.path() + "/g.offsets"));
}

TEST(OffsetStore, EntriesSurviveReopen) {
  // Given a store with two groups committed, one of them twice
  TempDir dir;
  const std::string metadata(kMaxOffsetMetadataBytes, 'm');
  {
    auto store = open_store(dir.path());
    ASSERT_NE(store, nullptr);
    const std::vector<CommittedOffset> a = {entry("orders", 0, 1), entry("orders", 1, 2, metadata)};
    ASSERT_TRUE(store->commit("a", a).ok());
    const std::vector<CommittedOffset> a2 = {entry("orders", 0, 100, "", 77)};
    ASSERT_TRUE(store->commit("a", a2).ok());
    const std::vector<CommittedOffset> b = {entry("clicks", 4'000'000'000u, INT64_MAX, "x", INT64_MIN)};
    ASSERT_TRUE(store->commit("b", b).ok());
  }

  // When it is opened again
  auto store = open_store(dir.path());
  ASSERT_NE(store, nullptr);

  // Expect everything as last committed
  EXPECT_TRUE(store->load_problems().empty());
  EXPECT_EQ(store->groups(), (std::vector<std::string>{"a", "b"}));
  const std::vector<CommittedOffset> a = store->fetch_all("a");
  ASSERT_EQ(a.size(), 2u);
  expect_same(a[0], entry("orders", 0, 100, "", 77));
  expect_same(a[1], entry("orders", 1, 2, metadata));
  auto b = store->fetch("b", "clicks", 4'000'000'000u);
  ASSERT_TRUE(b.has_value());
  expect_same(*b, entry("clicks", 4'000'000'000u, INT64_MAX, "x", INT64_MIN));
}

TEST(OffsetStore, OpenCreatesTheDirectory) {
  TempDir dir;
  const std::string nested = dir.path() + "/offsets";
  {
    auto store = open_store(nested);
    ASSERT_NE(store, nullptr);
    EXPECT_EQ(store->dir(), nested);
    const std::vector<CommittedOffset> one = {entry("t", 0, 1)};
    ASSERT_TRUE(store->commit("g", one).ok());
  }
  auto store = open_store(nested);
  ASSERT_NE(store, nullptr);
  EXPECT_TRUE(store->fetch("g", "t", 0).has_value());

  // A missing parent is not created
  Result<std::unique_ptr<OffsetStore>> orphan = OffsetStore::open(dir.path() + "/no/such");
  ASSERT_FALSE(orphan.ok());
  EXPECT_EQ(orphan.error().code, Errc::kIo);
}

TEST(OffsetStore, GroupsAreKeptApart) {
  // Given three groups committing the same partition
  TempDir dir;
  auto store = open_store(dir.path());
  ASSERT_NE(store, nullptr);
  for (std::int64_t i = 0; i < 3; ++i) {
    const std::vector<CommittedOffset> one = {entry("orders", 0, 10 * i)};
    ASSERT_TRUE(store->commit("group-" + std::to_string(2 - i), one).ok());
  }

  // Expect each its own offset, and the groups listed in name order
  EXPECT_EQ(store->groups(), (std::vector<std::string>{"group-0", "group-1", "group-2"}));
  for (std::int64_t i = 0; i < 3; ++i) {
    auto got = store->fetch("group-" + std::to_string(2 - i), "orders", 0);
    ASSERT_TRUE(got.has_value());
    EXPECT_EQ(got->offset, Offset{10 * i});
  }
}

TEST(OffsetStore, DeleteGroupRemovesItAndItsFile) {
  // Given two groups
  TempDir dir;
  {
    auto store = open_store(dir.path());
    ASSERT_NE(store, nullptr);
    const std::vector<CommittedOffset> one = {entry("orders", 0, 1)};
    ASSERT_TRUE(store->commit("stay", one).ok());
    ASSERT_TRUE(store->commit("go", one).ok());

    // When one is deleted
    ASSERT_TRUE(store->delete_group("go").ok());

    // Expect it gone from memory and disk, the other kept; a second delete finds nothing
    EXPECT_EQ(store->groups(), std::vector<std::string>{"stay"});
    EXPECT_FALSE(store->fetch("go", "orders", 0).has_value());
    EXPECT_FALSE(exists(dir.path() + "/go.offsets"));
    const Result<void> again = store->delete_group("go");
    ASSERT_FALSE(again.ok());
    EXPECT_EQ(again.error().code, Errc::kNotFound);
    EXPECT_EQ(store->delete_group("bad/name").error().code, Errc::kInvalidArgument);

    // A deleted group can start again
    const std::vector<CommittedOffset> fresh = {entry("clicks", 1, 9)};
    ASSERT_TRUE(store->commit("go", fresh).ok());
    ASSERT_EQ(store->fetch_all("go").size(), 1u);
    ASSERT_TRUE(store->delete_group("go").ok());
  }
  auto store = open_store(dir.path());
  ASSERT_NE(store, nullptr);
  EXPECT_EQ(store->groups(), std::vector<std::string>{"stay"});
}

TEST(OffsetStore, ForgetTopicDropsItFromEveryGroup) {
  // Given groups with entries for a topic that is deleted and for one that stays
  TempDir dir;
  {
    auto store = open_store(dir.path());
    ASSERT_NE(store, nullptr);
    const std::vector<CommittedOffset> both = {entry("doomed", 0, 1), entry("doomed", 1, 2), entry("kept", 0, 3)};
    const std::vector<CommittedOffset> only_doomed = {entry("doomed", 5, 4)};
    const std::vector<CommittedOffset> only_kept = {entry("kept", 2, 5)};
    ASSERT_TRUE(store->commit("both", both).ok());
    ASSERT_TRUE(store->commit("only-doomed", only_doomed).ok());
    ASSERT_TRUE(store->commit("only-kept", only_kept).ok());

    // When the topic is forgotten
    ASSERT_TRUE(store->forget_topic("doomed").ok());
    // (again: nothing left to do; an invalid name is refused)
    ASSERT_TRUE(store->forget_topic("doomed").ok());
    EXPECT_EQ(store->forget_topic("").error().code, Errc::kInvalidArgument);
  }

  // Expect, after a reopen, no entry of it anywhere and the others untouched
  auto store = open_store(dir.path());
  ASSERT_NE(store, nullptr);
  EXPECT_EQ(store->groups(), (std::vector<std::string>{"both", "only-doomed", "only-kept"}));
  const std::vector<CommittedOffset> both = store->fetch_all("both");
  ASSERT_EQ(both.size(), 1u);
  expect_same(both[0], entry("kept", 0, 3));
  EXPECT_TRUE(store->fetch_all("only-doomed").empty());
  ASSERT_EQ(store->fetch_all("only-kept").size(), 1u);
}

// ---- arguments -------------------------------------------------------------------------------

TEST(OffsetStore, RejectsInvalidGroupIds) {
  TempDir dir;
  auto store = open_store(dir.path());
  ASSERT_NE(store, nullptr);
  const std::vector<CommittedOffset> one = {entry("orders", 0, 1)};
  const std::string bad[] = {"", ".", "..", "a/b", "../up", "a b", "tab\t", std::string("nul\0x", 5), "caf\xc3\xa9",
                             std::string(kMaxGroupIdBytes + 1, 'g')};
  for (const std::string& group : bad) {
    const Result<void> committed = store->commit(group, one);
    ASSERT_FALSE(committed.ok()) << group;
    EXPECT_EQ(committed.error().code, Errc::kInvalidArgument) << group;
    EXPECT_NE(committed.error().message.find("group id"), std::string::npos) << committed.error().message;
  }
  EXPECT_TRUE(store->groups().empty());
  const std::string good[] = {"a", "...", ".hidden", "Group_1.2-x", std::string(kMaxGroupIdBytes, 'g')};
  for (const std::string& group : good) EXPECT_TRUE(store->commit(group, one).ok()) << group;
  EXPECT_EQ(store->groups().size(), std::size(good));
}

TEST(OffsetStore, RejectsInvalidEntriesWhole) {
  // Given a group with one entry
  TempDir dir;
  auto store = open_store(dir.path());
  ASSERT_NE(store, nullptr);
  const std::vector<CommittedOffset> start = {entry("orders", 0, 5)};
  ASSERT_TRUE(store->commit("g", start).ok());

  // When commits hold one valid and one invalid entry
  const CommittedOffset bad[] = {entry("", 0, 1),
                                 entry(std::string(kMaxOffsetTopicBytes + 1, 't'), 0, 1),
                                 entry("a/b", 0, 1),
                                 entry("..", 0, 1),
                                 entry("orders", 1, -1),
                                 entry("orders", 1, INT64_MIN),
                                 entry("orders", 1, 1, std::string(kMaxOffsetMetadataBytes + 1, 'm'))};
  for (const CommittedOffset& e : bad) {
    const std::vector<CommittedOffset> offsets = {entry("orders", 0, 6), e};
    const Result<void> committed = store->commit("g", offsets);

    // Expect each refused whole
    ASSERT_FALSE(committed.ok()) << e.topic.substr(0, 10) << " " << e.offset.value;
    EXPECT_EQ(committed.error().code, Errc::kInvalidArgument);
    EXPECT_EQ(store->fetch("g", "orders", 0)->offset, Offset{5}) << committed.error().message;
  }
  EXPECT_EQ(store->fetch_all("g").size(), 1u);

  // And the limits themselves accepted
  const std::vector<CommittedOffset> limits = {entry(std::string(kMaxOffsetTopicBytes, 't'), 0, 0,
                                                     std::string(kMaxOffsetMetadataBytes, 'm'))};
  EXPECT_TRUE(store->commit("g", limits).ok());
}

// ---- the file --------------------------------------------------------------------------------

TEST(OffsetStoreFile, LayoutIsAsDocumented) {
  // Given a group with two entries on two topics
  TempDir dir;
  auto store = open_store(dir.path());
  ASSERT_NE(store, nullptr);
  const std::vector<CommittedOffset> offsets = {entry("orders", 7, 0x0102030405060708, "meta", -2),
                                                entry("a", 0x01020304, 1, "", 0)};
  ASSERT_TRUE(store->commit("g", offsets).ok());

  // Expect the file, byte for byte: header, entries by topic then partition, CRC-32C
  const std::vector<std::byte> want =
      header(2).entry("a", 0x01020304, 1, 0, "").entry("orders", 7, 0x0102030405060708, -2, "meta").finish();
  EXPECT_EQ(read_bytes(dir.path() + "/g.offsets"), want);
}

// Two groups on disk: "good" (orders/0 at 42) and "bad", whose file each case replaces.
class DamagedFile : public ::testing::Test {
 protected:
  void SetUp() override {
    auto store = open_store(dir_.path());
    ASSERT_NE(store, nullptr);
    const std::vector<CommittedOffset> good = {entry("orders", 0, 42)};
    ASSERT_TRUE(store->commit("good", good).ok());
    const std::vector<CommittedOffset> bad = {entry("orders", 0, 7, "m"), entry("orders", 1, 8)};
    ASSERT_TRUE(store->commit("bad", bad).ok());
    intact_ = read_bytes(bad_path());
    ASSERT_GT(intact_.size(), 20u);
    ASSERT_LT(intact_.size(), 200u);
  }
  std::string bad_path() const { return dir_.path() + "/bad.offsets"; }

  TempDir dir_;
  std::vector<std::byte> intact_;
};

TEST_F(DamagedFile, EveryFlippedByteIsReportedAndTheOtherGroupLoads) {
  for (std::size_t i = 0; i < intact_.size(); ++i) {
    std::vector<std::byte> damaged = intact_;
    damaged[i] ^= std::byte{0xff};
    write_bytes(bad_path(), damaged);
    if (!expect_only_bad_reported(dir_.path(), "bad", "byte " + std::to_string(i) + " flipped")) break;
  }
}

TEST_F(DamagedFile, EveryTruncationIsReportedAndTheOtherGroupLoads) {
  for (std::size_t size = 0; size < intact_.size(); ++size) {
    write_bytes(bad_path(), std::span(intact_).first(size));
    if (!expect_only_bad_reported(dir_.path(), "bad", "cut to " + std::to_string(size) + " bytes")) break;
  }
}

TEST_F(DamagedFile, MalformedFilesWithValidCrcsAreCorrupt) {
  struct Case {
    const char* what;
    std::vector<std::byte> bytes;
  };
  const std::string long_topic(kMaxOffsetTopicBytes + 1, 't');
  const std::string long_metadata(kMaxOffsetMetadataBytes + 1, 'm');
  const Case cases[] = {
      {"wrong magic", FileBuilder().magic("WEFTOFS2").u32(1).u32(0).finish()},
      {"wrong version", FileBuilder().magic().u32(2).u32(0).finish()},
      {"header cut short", FileBuilder().magic().u32(1).finish()},
      {"no CRC", header(0).raw()},
      {"more entries declared than present", header(2).entry("orders", 0, 1, 0, "").finish()},
      {"bytes after the entries", header(1).entry("orders", 0, 1, 0, "").entry("orders", 1, 1, 0, "").finish()},
      {"topic length past the end", header(1).u16(1000).text("orders").finish()},
      {"metadata length past the end", header(1).u16(6).text("orders").u32(0).i64(1).i64(0).u16(9).text("abc").finish()},
      {"entry cut inside the offset", header(1).u16(6).text("orders").u32(0).u32(1).finish()},
      {"empty topic", header(1).entry("", 0, 1, 0, "").finish()},
      {"topic too long", header(1).entry(long_topic, 0, 1, 0, "").finish()},
      {"topic with a slash", header(1).entry("a/b", 0, 1, 0, "").finish()},
      {"negative offset", header(1).entry("orders", 0, -1, 0, "").finish()},
      {"metadata too long", header(1).entry("orders", 0, 1, 0, long_metadata).finish()},
      {"a partition twice", header(2).entry("orders", 0, 1, 0, "").entry("orders", 0, 2, 0, "").finish()},
      {"huge count", header(0xffffffffu).entry("orders", 0, 1, 0, "").finish()},
  };
  for (const Case& c : cases) {
    write_bytes(bad_path(), c.bytes);
    if (!expect_only_bad_reported(dir_.path(), "bad", c.what)) break;
  }

  // And a well-formed file built the same way loads (the builder itself is right)
  write_bytes(bad_path(), header(1).entry("orders", 0, 7, 0, "").finish());
  auto store = open_store(dir_.path());
  ASSERT_NE(store, nullptr);
  EXPECT_TRUE(store->load_problems().empty());
  EXPECT_EQ(store->fetch("bad", "orders", 0)->offset, Offset{7});
}

TEST_F(DamagedFile, OversizedFileIsCorrupt) {
  // A sparse file one byte past the limit (no disk blocks spent)
  write_bytes(bad_path(), intact_);
  ASSERT_EQ(::truncate(bad_path().c_str(), static_cast<off_t>(kMaxOffsetsFileBytes + 1)), 0) << std::strerror(errno);
  expect_only_bad_reported(dir_.path(), "bad", "oversized");
}

TEST_F(DamagedFile, DirectoryInPlaceOfAFileIsReported) {
  ASSERT_EQ(::unlink(bad_path().c_str()), 0);
  ASSERT_TRUE(std::filesystem::create_directory(bad_path()));
  expect_only_bad_reported(dir_.path(), "bad", "a directory");
}

TEST_F(DamagedFile, GroupThatFailedToLoadTakesNoCommitsUntilDeleted) {
  // Given the bad group's file damaged
  std::vector<std::byte> damaged = intact_;
  damaged[10] ^= std::byte{1};
  write_bytes(bad_path(), damaged);
  auto store = open_store(dir_.path());
  ASSERT_NE(store, nullptr);
  ASSERT_EQ(store->load_problems().size(), 1u);

  // Expect a commit refused and the damaged file left as it was
  const std::vector<CommittedOffset> one = {entry("orders", 0, 9)};
  const Result<void> refused = store->commit("bad", one);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.error().code, Errc::kFailedPrecondition);
  EXPECT_EQ(read_bytes(bad_path()), damaged);

  // When the group is deleted, expect the file gone and commits taken again
  ASSERT_TRUE(store->delete_group("bad").ok());
  EXPECT_FALSE(exists(bad_path()));
  ASSERT_TRUE(store->commit("bad", one).ok());
  EXPECT_EQ(store->fetch("bad", "orders", 0)->offset, Offset{9});
  EXPECT_EQ(store->load_problems().size(), 1u);  // what open() found stays reported
}

TEST(OffsetStoreFile, LeftoverTempFilesAreRemovedAtOpen) {
  // Given a committed group, an unfinished commit of it and of a new group, and an unrelated file
  TempDir dir;
  {
    auto store = open_store(dir.path());
    ASSERT_NE(store, nullptr);
    const std::vector<CommittedOffset> one = {entry("orders", 0, 3)};
    ASSERT_TRUE(store->commit("g", one).ok());
  }
  const std::vector<std::byte> half = header(5).raw();
  write_bytes(dir.path() + "/g.offsets.tmp", half);
  write_bytes(dir.path() + "/new.offsets.tmp", half);
  write_bytes(dir.path() + "/notes.txt", half);

  // When the store is opened
  auto store = open_store(dir.path());
  ASSERT_NE(store, nullptr);

  // Expect the temporary files gone, the committed state loaded, the unrelated file kept
  EXPECT_FALSE(exists(dir.path() + "/g.offsets.tmp"));
  EXPECT_FALSE(exists(dir.path() + "/new.offsets.tmp"));
  EXPECT_TRUE(exists(dir.path() + "/notes.txt"));
  EXPECT_TRUE(store->load_problems().empty());
  EXPECT_EQ(store->groups(), std::vector<std::string>{"g"});
  EXPECT_EQ(store->fetch("g", "orders", 0)->offset, Offset{3});
}

// ---- threads ---------------------------------------------------------------------------------

TEST(OffsetStore, CommitsFromSeveralThreadsAllLand) {
  // Given four threads, each committing its own partition of one group 25 times
  TempDir dir;
  auto store = open_store(dir.path());
  ASSERT_NE(store, nullptr);
  constexpr std::uint32_t kThreads = 4;
  constexpr std::int64_t kCommits = 25;
  std::vector<std::thread> threads;
  std::vector<int> failures(kThreads, 0);
  for (std::uint32_t t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (std::int64_t i = 1; i <= kCommits; ++i) {
        const std::vector<CommittedOffset> one = {entry("orders", t, i)};
        if (!store->commit("g", one).ok()) ++failures[t];
        const auto seen = store->fetch("g", "orders", t);
        if (!seen || seen->offset != Offset{i}) ++failures[t];
      }
    });
  }
  for (std::thread& thread : threads) thread.join();

  // Expect every thread's last commit, in memory and after a reopen
  EXPECT_EQ(failures, std::vector<int>(kThreads, 0));
  store.reset();
  store = open_store(dir.path());
  ASSERT_NE(store, nullptr);
  const std::vector<CommittedOffset> all = store->fetch_all("g");
  ASSERT_EQ(all.size(), kThreads);
  for (const CommittedOffset& e : all) EXPECT_EQ(e.offset, Offset{kCommits});
}

}  // namespace
}  // namespace weft
