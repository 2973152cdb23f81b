// A partition's log of segments: rolling by size, reading across segments and gaps, reopening,
// a torn tail cut in the last segment and corruption refused in the others.
#include "weft/storage/segment_log.h"

#include <gtest/gtest.h>
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <future>
#include <iterator>
#include <mutex>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "weft/fabric/record_batch.h"
#include "../../storage/src/segment_log_test_hooks.h"
#include "../descriptors_used_up.h"
#include "../temp_dir.h"
#include "test_batches.h"

namespace weft::storage {
namespace {

// A partition's folder inside a fresh temporary directory.
class TempDir : public test::TempDir {
 public:
  std::string partition() const { return path() + "/events-0"; }
};

std::vector<std::byte> batch_at(std::int64_t base, int records) {
  return test::make_batch(base, records, 1'700'000'000'000 + base, 120, std::byte{0x42});
}

SegmentLogOptions small_segments() {
  SegmentLogOptions o;
  o.segment_bytes = 16 * 1024;
  return o;
}

// Appends batches of 1..4 records from `from`, with a 2-offset gap after every 40th batch.
std::int64_t fill(SegmentLog& log, std::int64_t from, int batches) {
  std::int64_t offset = from;
  for (int i = 0; i < batches; ++i) {
    const int n = 1 + i % 4;
    EXPECT_TRUE(log.append(batch_at(offset, n)).ok());
    offset += n + (i % 40 == 39 ? 2 : 0);
  }
  return offset;
}

std::int64_t first_base(const SegmentLog& log, Offset offset) {
  std::vector<std::byte> out(64 * 1024);
  Result<std::size_t> got = log.read(offset, out);
  EXPECT_TRUE(got.ok()) << got.error().message;
  return got.ok() && *got > 0 ? wire::load_be64(out.data()) : -1;
}

TEST(SegmentLog, RollsBySizeAndReadsEveryOffsetAcrossSegments) {
  TempDir dir;
  auto log = SegmentLog::open(dir.partition(), Offset{100}, small_segments()).value();
  EXPECT_EQ(log->start_offset(), Offset{100});
  const std::int64_t end = fill(*log, 100, 400);
  EXPECT_EQ(log->next_offset(), Offset{end - 2});  // the last gap is not an offset yet
  EXPECT_GE(log->segment_count(), 8u);
  // Each segment stays within segment.bytes and is named by its first batch's offset.
  for (const auto& entry : std::filesystem::directory_iterator(dir.partition())) {
    if (entry.path().extension() == ".log") {
      EXPECT_LE(entry.file_size(), 16u * 1024);
    }
  }
  // Every offset reads back from the batch that holds it (or, in a gap, the next one).
  for (std::int64_t o = 100; o < log->next_offset().value; ++o) {
    const std::int64_t base = first_base(*log, Offset{o});
    ASSERT_GE(base, 0) << o;
    EXPECT_LE(base, o + 2) << o;
    EXPECT_GE(base + 4, o) << o;
  }
  std::vector<std::byte> out(4096);
  EXPECT_EQ(log->read(Offset{99}, out).error().code, Errc::kOutOfRange);
  EXPECT_EQ(log->read(log->next_offset(), out).value(), 0u);  // the end: nothing yet
  EXPECT_EQ(log->read(Offset{log->next_offset().value + 1}, out).error().code, Errc::kOutOfRange);
}

// The folders under `dir` whose names end in "-delete" (removed logs not yet deleted).
std::vector<std::string> doomed_folders(const std::string& dir) {
  std::vector<std::string> found;
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(dir, ec))
    if (entry.path().filename().string().ends_with("-delete")) found.push_back(entry.path().string());
  return found;
}

// Waits (bounded: 10 s) until no removed log's folder is left under `dir`.
bool doomed_folders_gone(const std::string& dir) { return wait_for_log_deletions(10'000) && doomed_folders(dir).empty(); }

TEST(SegmentLog, ARemovedLogLeavesItsPlaceAtOnceAndIsDeletedOnceItsFilesAreClosed) {
  TempDir dir;
  auto log = SegmentLog::open(dir.partition(), Offset{0}, small_segments()).value();
  fill(*log, 0, 400);  // several segments
  ASSERT_TRUE(log->flush().ok());
  ASSERT_GT(log->segment_count(), 2u);
  ASSERT_TRUE(log->remove().ok());
  // The name is free at once: a log opened there now starts empty.
  EXPECT_FALSE(std::filesystem::exists(dir.partition()));
  auto again = SegmentLog::open(dir.partition(), Offset{0}, small_segments()).value();
  EXPECT_EQ(again->next_offset(), Offset{0});
  // The removed log's files wait for it to close them (well past the deleter's 10 ms looks); then
  // its folder goes.
  const std::vector<std::string> doomed = doomed_folders(dir.path());
  ASSERT_EQ(doomed.size(), 1u);
  EXPECT_FALSE(wait_for_log_deletions(200));
  EXPECT_TRUE(std::filesystem::exists(doomed[0] + "/00000000000000000000.log"));
  EXPECT_EQ(log->append(batch_at(0, 1)).error().code, Errc::kFailedPrecondition);  // a removed log takes nothing
  log.reset();
  EXPECT_TRUE(doomed_folders_gone(dir.path()));
  EXPECT_TRUE(std::filesystem::exists(dir.partition()));
}

TEST(SegmentLog, FoldersOfRemovedLogsThatOutlivedTheirProcessGoAtTheNextStart) {
  TempDir dir;
  const std::string leftover = dir.path() + "/events-0.00c0ffee1a2b3c4d-delete";
  std::filesystem::create_directories(leftover);
  std::ofstream(leftover + "/00000000000000000000.log") << "whatever a crash left";
  // What is not a removed log's folder stays: partitions (of a topic named like one too), files,
  // and other folders that merely end in "-delete".
  for (const char* kept : {"/events-1", "/to-be-delete-0", "/to-delete", "/x.1234-delete"}) std::filesystem::create_directories(dir.path() + kept);
  std::ofstream(dir.path() + "/notes.00c0ffee1a2b3c4d-delete") << "a file";
  const OpenPartitionLog open_log = open_segment_logs(dir.path());
  EXPECT_TRUE(wait_for_log_deletions(10'000));
  EXPECT_FALSE(std::filesystem::exists(leftover));
  for (const char* kept : {"/events-1", "/to-be-delete-0", "/to-delete", "/x.1234-delete", "/notes.00c0ffee1a2b3c4d-delete"})
    EXPECT_TRUE(std::filesystem::exists(dir.path() + kept)) << kept;
  TopicConfig config;
  auto opened = open_log("events", 0, config);
  ASSERT_TRUE(opened.ok()) << opened.error().message;
  EXPECT_TRUE(std::filesystem::exists(dir.partition()));
}

TEST(SegmentLog, ALogOfTheLongestTopicNameIsRenamedAsideToo) {
  TempDir dir;
  // Kafka takes topic names of up to 249 characters: with "-<partition>" the folder's name is at
  // NAME_MAX, and the removal's suffix must cut it rather than fail the rename.
  const std::string folder = dir.path() + "/" + std::string(249, 't') + "-12345";
  auto log = SegmentLog::open(folder, Offset{0}, small_segments()).value();
  fill(*log, 0, 10);
  ASSERT_TRUE(log->remove().ok());
  EXPECT_FALSE(std::filesystem::exists(folder));
  EXPECT_EQ(doomed_folders(dir.path()).size(), 1u);  // renamed aside, not deleted in place
  log.reset();
  EXPECT_TRUE(doomed_folders_gone(dir.path()));
}

// The files in the partition's folder whose names end in "-delete" (retired segments' files not
// yet deleted), by name.
std::vector<std::string> retired_files(const TempDir& dir) {
  std::vector<std::string> found;
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(dir.partition(), ec))
    if (entry.path().filename().string().ends_with("-delete")) found.push_back(entry.path().filename().string());
  std::sort(found.begin(), found.end());
  return found;
}

TEST(SegmentLog, RetentionTakesSegmentsOutAtOnceAndDeletesTheirFilesLaterOffTheCallersThread) {
  TempDir dir;
  SegmentLogOptions options = small_segments();
  options.file_delete_delay_ms = 60'000;
  auto log = SegmentLog::open(dir.partition(), Offset{0}, options).value();
  fill(*log, 0, 400);
  ASSERT_TRUE(log->sync().ok());
  const std::size_t before = log->segment_count();
  ASSERT_GE(before, 8u);
  // Given a reader in the middle of the oldest segment
  Result<LogSlice> reading = log->slice(Offset{0}, kLogEnd);
  ASSERT_TRUE(reading.ok()) << reading.error().message;
  // When retention keeps about half the log
  const Result<RetentionOutcome> kept = log->apply_retention(static_cast<std::int64_t>(log->size_bytes() / 2), -1, 0, kLogEnd);
  ASSERT_TRUE(kept.ok()) << kept.error().message;
  ASSERT_GE(kept->segments_deleted, 3u);
  // Expect the log to start later at once, its first offsets out of range
  EXPECT_EQ(log->segment_count(), before - kept->segments_deleted);
  EXPECT_EQ(log->start_offset(), kept->start_offset);
  std::vector<std::byte> out(4096);
  EXPECT_EQ(log->read(Offset{0}, out).error().code, Errc::kOutOfRange);
  // And the deleted segments' files renamed aside (three each), never read as segments again
  const std::vector<std::string> retired = retired_files(dir);
  EXPECT_EQ(retired.size(), 3u * kept->segments_deleted);
  // <20 digits>.<log|index|timeindex>.<16 hex digits>-delete
  auto retired_name = [](const std::string& name) {
    const std::size_t kind_end = name.find('.', 21);
    if (name.size() < 21 || kind_end == std::string::npos || !name.ends_with("-delete")) return false;
    const std::string kind = name.substr(20, kind_end - 20);
    const std::string nonce = name.substr(kind_end + 1, name.size() - kind_end - 1 - 7);
    return std::all_of(name.begin(), name.begin() + 20, [](char c) { return c >= '0' && c <= '9'; }) &&
           (kind == ".log" || kind == ".index" || kind == ".timeindex") && nonce.size() == 16 &&
           std::all_of(nonce.begin(), nonce.end(), [](char c) { return std::isxdigit(static_cast<unsigned char>(c)) != 0; });
  };
  for (const std::string& name : retired) EXPECT_TRUE(retired_name(name)) << name;
  EXPECT_FALSE(std::filesystem::exists(dir.partition() + "/00000000000000000000.log"));
  // And the reader reading on through what it opened
  std::vector<std::byte> bytes(reading->end - reading->position);
  ASSERT_EQ(::pread(reading->file.get(), bytes.data(), bytes.size(), static_cast<off_t>(reading->position)), static_cast<ssize_t>(bytes.size()));
  EXPECT_EQ(BatchView::parse(bytes).value().base_offset(), Offset{0});
  // And the files deleted by the deleter once their delay is over (here: waived by the wait)
  EXPECT_TRUE(wait_for_log_deletions(10'000));
  EXPECT_TRUE(retired_files(dir).empty());
  // And a log reopened from the folder is the retained part alone
  const Offset next = log->next_offset();
  log.reset();
  auto again = SegmentLog::open(dir.partition(), Offset{0}, options).value();
  EXPECT_EQ(again->start_offset(), kept->start_offset);
  EXPECT_EQ(again->next_offset(), next);
}

TEST(SegmentLog, RetentionNeverDeletesASegmentHoldingRecordsAtOrPastItsBound) {
  // Given a log of many segments, and a bound (a high watermark) inside the fourth
  TempDir dir;
  auto log = SegmentLog::open(dir.partition(), Offset{0}, small_segments()).value();
  fill(*log, 0, 400);
  ASSERT_GE(log->segment_count(), 8u);
  std::vector<Offset> bases;  // each segment's base, from its file's name (<20 digits>.log)
  for (const auto& entry : std::filesystem::directory_iterator(dir.partition())) {
    const std::string name = entry.path().filename().string();
    if (name.size() == 24 && name.ends_with(".log")) bases.push_back(Offset{std::stoll(name.substr(0, 20))});
  }
  std::sort(bases.begin(), bases.end());
  ASSERT_EQ(bases.size(), log->segment_count());
  ASSERT_GE(bases.size(), 5u);
  const Offset bound{bases[3].value + 1};

  // When retention would keep nothing (0 bytes)
  const Result<RetentionOutcome> kept = log->apply_retention(0, -1, 0, bound);
  ASSERT_TRUE(kept.ok()) << kept.error().message;

  // Expect only the three segments wholly below the bound gone: the one holding it stays
  EXPECT_EQ(kept->segments_deleted, 3u);
  EXPECT_EQ(log->start_offset(), bases[3]);
  // And a bound at a segment's base lets the segment before it go
  EXPECT_EQ(log->apply_retention(0, -1, 0, bases[4]).value().segments_deleted, 1u);
  EXPECT_EQ(log->start_offset(), bases[4]);
}

TEST(SegmentLog, ATruncationsAndAResetsSegmentsAreRetiredTooAndTheirOffsetsWrittenAgainBesideThem) {
  TempDir dir;
  SegmentLogOptions options = small_segments();
  options.file_delete_delay_ms = 60'000;
  auto log = SegmentLog::open(dir.partition(), Offset{0}, options).value();
  const std::int64_t end = fill(*log, 0, 400);
  ASSERT_TRUE(log->sync().ok());
  const std::size_t before = log->segment_count();
  const Offset cut = log->truncate(Offset{end / 2}).value();
  const std::size_t dropped = before - log->segment_count();
  ASSERT_GE(dropped, 2u);
  EXPECT_EQ(retired_files(dir).size(), 3u * dropped);
  // The same offsets again, into new segments of the same names: no clash with the retired files
  const std::int64_t refilled = fill(*log, cut.value, 200);
  ASSERT_TRUE(log->sync().ok());
  ASSERT_GE(log->segment_count(), before - dropped + 2);
  const Offset cut_again = log->truncate(Offset{cut.value + (refilled - cut.value) / 2}).value();
  EXPECT_LT(cut_again.value, refilled);
  const std::size_t retired_before_reset = retired_files(dir).size();
  EXPECT_GT(retired_before_reset, 3u * dropped);
  ASSERT_TRUE(log->reset(Offset{90'000}).ok());
  EXPECT_GT(retired_files(dir).size(), retired_before_reset);
  ASSERT_TRUE(log->append(batch_at(90'000, 3)).ok());
  ASSERT_TRUE(log->sync().ok());
  log.reset();
  // Files retired by a process that stopped before deleting them are ignored when the folder
  // opens again, and then deleted; other files that end like them are left be.
  const std::string foreign = dir.partition() + "/notes.00c0ffee1a2b3c4d-delete";
  std::ofstream(foreign) << "not a segment's";
  auto again = SegmentLog::open(dir.partition(), Offset{0}, options).value();
  EXPECT_EQ(again->start_offset(), Offset{90'000});
  EXPECT_EQ(again->next_offset(), Offset{90'003});
  EXPECT_TRUE(wait_for_log_deletions(10'000));
  EXPECT_EQ(retired_files(dir), std::vector<std::string>{"notes.00c0ffee1a2b3c4d-delete"});
}

TEST(SegmentLog, ReopensWhereItStoppedAndCarriesOn) {
  TempDir dir;
  Offset next;
  std::size_t segments = 0;
  {
    auto log = SegmentLog::open(dir.partition(), Offset{0}, small_segments()).value();
    (void)fill(*log, 0, 200);
    ASSERT_TRUE(log->sync().ok());
    next = log->next_offset();
    segments = log->segment_count();
  }
  SegmentLogRecovery recovery;
  auto log = SegmentLog::open(dir.partition(), Offset{0}, small_segments(), &recovery);
  ASSERT_TRUE(log.ok()) << log.error().message;
  EXPECT_EQ((*log)->next_offset(), next);
  EXPECT_EQ((*log)->segment_count(), segments);
  EXPECT_EQ(recovery.segments, segments);
  // Every closed segment was synced before the recovery point moved past it: only the last is
  // read through
  EXPECT_EQ(recovery.trusted_segments, segments - 1);
  EXPECT_GT(recovery.batches, 0u);
  EXPECT_LT(recovery.batches, 200u);
  EXPECT_EQ(recovery.truncated_bytes, 0u);
  EXPECT_TRUE((*log)->append(batch_at(next.value, 3)).ok());
  EXPECT_EQ(first_base(**log, next), next.value);
}

TEST(SegmentLog, KeepsAReplicasEpochHistoryBesideItAndRefusesAMangledOne) {
  TempDir dir;
  const std::string path = dir.partition() + "/leader-epoch-checkpoint";
  {
    auto log = SegmentLog::open(dir.partition(), Offset{0}, small_segments()).value();
    EXPECT_EQ(log->load_epochs().error().code, Errc::kNotFound);
    const std::vector<EpochStart> history = {{1, Offset{0}}, {4, Offset{120}}, {7, Offset{120'000'000'000}}};
    ASSERT_TRUE(log->save_epochs(history, EpochSave::kNow).ok());
    EXPECT_EQ(log->load_epochs().value(), history);
    ASSERT_TRUE(log->save_epochs({}, EpochSave::kNow).ok());  // a reset replica
    EXPECT_TRUE(log->load_epochs().value().empty());
    ASSERT_TRUE(log->save_epochs(history, EpochSave::kNow).ok());
  }
  // It survives the log's reopening
  ASSERT_EQ(SegmentLog::open(dir.partition(), Offset{0}, small_segments()).value()->load_epochs().value().size(), 3u);
  // And a file that is not exactly what it wrote is refused at the opening, never half read
  for (const std::string& mangled : {std::string("weft-leader-epochs 2\n0\n"), std::string("weft-leader-epochs 1\n2\n1 0\n"),
                                     std::string("weft-leader-epochs 1\n1\n1 0\n2 5\n"), std::string("weft-leader-epochs 1\n1\n1 x\n"),
                                     std::string("weft-leader-epochs 1\n1\n1 0"), std::string("weft-leader-epochs 1\n99999999999\n"),
                                     std::string("")}) {
    std::ofstream(path, std::ios::binary | std::ios::trunc) << mangled;
    auto log = SegmentLog::open(dir.partition(), Offset{0}, small_segments()).value();
    Result<std::vector<EpochStart>> loaded = log->load_epochs();
    ASSERT_FALSE(loaded.ok()) << mangled;
    EXPECT_EQ(loaded.error().code, Errc::kCorrupt) << mangled;
  }
}

TEST(SegmentLog, ATornLastSegmentIsCutAndACorruptEarlierOneRefused) {
  TempDir dir;
  std::vector<std::filesystem::path> logs;
  {
    auto log = SegmentLog::open(dir.partition(), Offset{0}, small_segments()).value();
    (void)fill(*log, 0, 200);
  }
  for (const auto& entry : std::filesystem::directory_iterator(dir.partition()))
    if (entry.path().extension() == ".log") logs.push_back(entry.path());
  std::sort(logs.begin(), logs.end());
  ASSERT_GE(logs.size(), 3u);
  // A torn tail in the last segment: cut, reported, the rest served.
  std::filesystem::resize_file(logs.back(), std::filesystem::file_size(logs.back()) - 7);
  SegmentLogRecovery recovery;
  auto torn = SegmentLog::open(dir.partition(), Offset{0}, small_segments(), &recovery);
  ASSERT_TRUE(torn.ok()) << torn.error().message;
  EXPECT_GT(recovery.truncated_bytes, 0u);
  EXPECT_GE(recovery.truncated_from.value, 0);
  EXPECT_EQ((*torn)->next_offset(), recovery.truncated_from);
  torn->reset();
  // A flipped byte in an earlier segment that no recovery point vouches for (a crash before it
  // moved): the partition cannot be opened, and says where.
  std::filesystem::remove(dir.partition() + "/recovery-point");
  {
    const int fd = ::open(logs[1].c_str(), O_RDWR);
    std::byte b{};
    ASSERT_EQ(pread(fd, &b, 1, 100), 1);
    b ^= std::byte{1};
    ASSERT_EQ(pwrite(fd, &b, 1, 100), 1);
    close(fd);
  }
  auto corrupt = SegmentLog::open(dir.partition(), Offset{0}, small_segments());
  ASSERT_FALSE(corrupt.ok());
  EXPECT_EQ(corrupt.error().code, Errc::kCorrupt);
  EXPECT_NE(corrupt.error().message.find(logs[1].filename().string()), std::string::npos) << corrupt.error().message;
}

// A closed segment is synced after the roll, in the background: a crash before that sync ends
// may leave it short, or with zeros where its last batches were, while later segments hold data.
TEST(SegmentLog, AClosedSegmentThatACrashLeftShortIsCutAndTheSegmentsAfterItDropped) {
  enum class Lost { kTail, kZerosToTheEnd, kAPageWithDataAfterIt };
  for (const Lost lost : {Lost::kTail, Lost::kZerosToTheEnd, Lost::kAPageWithDataAfterIt}) {
    SCOPED_TRACE(static_cast<int>(lost));
    TempDir dir;
    std::vector<std::filesystem::path> logs;
    {
      auto log = SegmentLog::open(dir.partition(), Offset{0}, small_segments()).value();
      (void)fill(*log, 0, 300);
    }
    for (const auto& entry : std::filesystem::directory_iterator(dir.partition()))
      if (entry.path().extension() == ".log") logs.push_back(entry.path());
    std::sort(logs.begin(), logs.end());
    ASSERT_GE(logs.size(), 5u);
    // The point had not moved past the third segment when the machine stopped
    const std::string third = logs[2].filename().string();
    std::filesystem::remove(dir.partition() + "/recovery-point");
    const std::uintmax_t size = std::filesystem::file_size(logs[2]);
    if (lost == Lost::kTail) {
      std::filesystem::resize_file(logs[2], size - 700);
    } else {
      // Its last pages never written: they read as zeros (write-back goes a page at a time), or
      // one page in its middle (write-back and direct writes need not land in order)
      const std::uintmax_t from = lost == Lost::kZerosToTheEnd ? (size - 1000) / 4096 * 4096 : 4096;
      const std::uintmax_t to = lost == Lost::kZerosToTheEnd ? size : 2 * 4096;
      ASSERT_GT(size, 3 * 4096u);
      const int fd = ::open(logs[2].c_str(), O_RDWR);
      const std::vector<char> blank(to - from, 0);
      ASSERT_EQ(pwrite(fd, blank.data(), blank.size(), static_cast<off_t>(from)), static_cast<ssize_t>(blank.size()));
      close(fd);
    }
    SegmentLogRecovery recovery;
    auto log = SegmentLog::open(dir.partition(), Offset{0}, small_segments(), &recovery);
    ASSERT_TRUE(log.ok()) << log.error().message;
    // Expect the third segment cut where its data ends, the last one now, and the rest dropped
    EXPECT_EQ((*log)->segment_count(), 3u);
    EXPECT_GT(recovery.truncated_bytes, 0u);
    EXPECT_EQ((*log)->next_offset(), recovery.truncated_from);
    EXPECT_NE(recovery.reason.find("later segments were dropped"), std::string::npos) << recovery.reason;
    for (std::size_t i = 3; i < logs.size(); ++i) EXPECT_FALSE(std::filesystem::exists(logs[i])) << logs[i];
    EXPECT_TRUE(std::filesystem::exists(logs[2])) << third;
    // And every offset before the cut read back, and appends going on from it
    for (std::int64_t o = 0; o < recovery.truncated_from.value; o += 5) EXPECT_GE(first_base(**log, Offset{o}), 0) << o;
    ASSERT_TRUE((*log)->append(batch_at(recovery.truncated_from.value, 2)).ok());
    EXPECT_TRUE(wait_for_log_deletions(10'000));
  }
}

// The segments of a log's folder, by base: each one's .log file.
std::vector<std::filesystem::path> segment_logs(const TempDir& dir) {
  std::vector<std::filesystem::path> logs;
  for (const auto& entry : std::filesystem::directory_iterator(dir.partition()))
    if (entry.path().extension() == ".log") logs.push_back(entry.path());
  std::sort(logs.begin(), logs.end());
  return logs;
}

std::int64_t base_of(const std::filesystem::path& log) { return std::stoll(log.filename().string().substr(0, 20)); }

TEST(SegmentLog, ARollStartsTheNextSegmentWhereTheClosedOneEndsAcrossAGap) {
  // Given batches with three offsets skipped after each (aborted claims), so every roll falls
  // on a gap
  TempDir dir;
  std::vector<std::int64_t> batch_bases;
  std::int64_t end = 0;
  {
    auto log = SegmentLog::open(dir.partition(), Offset{0}, small_segments()).value();
    std::int64_t offset = 0;
    for (int i = 0; i < 300; ++i) {
      ASSERT_TRUE(log->append(batch_at(offset, 2)).ok());
      batch_bases.push_back(offset);
      end = offset + 2;
      offset += 5;
    }
    ASSERT_GE(log->segment_count(), 5u);
    // Expect each segment after the first named by where the one before ends (a batch's end),
    // not by the batch that opened it
    for (const std::filesystem::path& p : segment_logs(dir)) {
      const std::int64_t base = base_of(p);
      if (base == 0) continue;
      EXPECT_EQ((base - 2) % 5, 0) << p;  // the end of the batch at base - 2
    }
    // And an offset in a gap at a roll read as the next batch, as any gap is
    const std::int64_t roll = base_of(segment_logs(dir)[1]);
    EXPECT_EQ(first_base(*log, Offset{roll}), roll + 3);
    EXPECT_EQ(log->next_offset(), Offset{end});
  }
  // When the log is opened again with no recovery point (a crash before any closed segment's
  // sync ended), expect nothing cut: the segments meet
  std::filesystem::remove(dir.partition() + "/recovery-point");
  SegmentLogRecovery recovery;
  auto log = SegmentLog::open(dir.partition(), Offset{0}, small_segments(), &recovery).value();
  EXPECT_EQ(recovery.truncated_bytes, 0u) << recovery.reason;
  EXPECT_EQ(log->next_offset(), Offset{end});
  for (const std::int64_t base : batch_bases) ASSERT_EQ(first_base(*log, Offset{base}), base);
}

TEST(SegmentLog, AClosedSegmentACrashLeftShortAtABatchBoundaryIsCutAndTheSegmentsAfterItDropped) {
  // Given a log of several segments whose third lost its last batch in a crash, its file ending
  // at the batch before (write-back extends a file a batch write at a time), and no recovery
  // point past it
  TempDir dir;
  {
    auto log = SegmentLog::open(dir.partition(), Offset{0}, small_segments()).value();
    (void)fill(*log, 0, 300);
  }
  const std::vector<std::filesystem::path> logs = segment_logs(dir);
  ASSERT_GE(logs.size(), 5u);
  std::filesystem::remove(dir.partition() + "/recovery-point");
  std::uintmax_t last_start = 0;
  std::int64_t last_base = -1;
  {
    std::ifstream in(logs[2], std::ios::binary);
    const std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    for (std::size_t pos = 0; pos + kBatchHeaderBytes <= bytes.size();) {
      const auto* p = reinterpret_cast<const std::byte*>(bytes.data() + pos);
      last_start = pos;
      last_base = static_cast<std::int64_t>(wire::load_be64(p));
      pos += static_cast<std::uint32_t>(wire::load_be32(p + batch_field::kBatchLength)) + kBatchLogOverhead;
    }
  }
  ASSERT_GT(last_start, 0u);
  std::filesystem::resize_file(logs[2], last_start);

  // When it opens
  SegmentLogRecovery recovery;
  auto log = SegmentLog::open(dir.partition(), Offset{0}, small_segments(), &recovery);
  ASSERT_TRUE(log.ok()) << log.error().message;

  // Expect the log to end where the third segment now ends, the later segments dropped (before,
  // they were served after a hole nothing would fill)
  EXPECT_EQ((*log)->segment_count(), 3u);
  EXPECT_EQ((*log)->next_offset(), Offset{last_base});
  EXPECT_EQ(recovery.truncated_from, Offset{last_base});
  EXPECT_NE(recovery.reason.find("last batches were lost"), std::string::npos) << recovery.reason;
  EXPECT_NE(recovery.reason.find("later segments were dropped"), std::string::npos) << recovery.reason;
  for (std::size_t i = 3; i < logs.size(); ++i) EXPECT_FALSE(std::filesystem::exists(logs[i])) << logs[i];
  // And appends going on from the cut
  ASSERT_TRUE((*log)->append(batch_at(last_base, 2)).ok());
  EXPECT_TRUE(wait_for_log_deletions(10'000));
}

TEST(SegmentLog, AClosedSegmentWhoseLostPagesBeginInsideABatchHeaderIsCutThere) {
  TempDir dir;
  // Given a closed segment in which a batch's header straddles a page boundary (it starts 10
  // bytes before one: its base offset lies before it, half its length field after) ...
  std::vector<std::byte> filler;
  for (std::size_t value = 3'900; value < 4'200 && filler.size() != 4'086; ++value)
    filler = test::make_batch(0, 1, 1'700'000'000'000, value, std::byte{0x42});
  ASSERT_EQ(filler.size(), 4'086u);
  std::string first;
  {
    SegmentLogOptions options;
    options.segment_bytes = 12 * 1024;
    auto log = SegmentLog::open(dir.partition(), Offset{0}, options).value();
    ASSERT_TRUE(log->append(filler).ok());
    std::int64_t next = 1;
    while (log->segment_count() < 2) {
      ASSERT_TRUE(log->append(batch_at(next, 2)).ok());
      next += 2;
    }
    ASSERT_TRUE(log->append(batch_at(next, 2)).ok());
    first = log->dir() + "/00000000000000000000.log";
  }
  // ... and a machine that stopped before the pages from that boundary on reached the disk
  // (they read as zeros) and before the recovery point moved past the segment
  std::filesystem::remove(dir.partition() + "/recovery-point");
  const std::uintmax_t size = std::filesystem::file_size(first);
  const int fd = ::open(first.c_str(), O_RDWR);
  ASSERT_GE(fd, 0);
  const std::vector<char> blank(size - 4'096, 0);
  ASSERT_EQ(pwrite(fd, blank.data(), blank.size(), 4'096), static_cast<ssize_t>(blank.size()));
  ::close(fd);
  // When it opens again
  SegmentLogRecovery recovery;
  auto log = SegmentLog::open(dir.partition(), Offset{0}, small_segments(), &recovery);
  // Expect that segment cut before the torn batch, not refused as damaged, and what followed dropped
  ASSERT_TRUE(log.ok()) << log.error().message;
  EXPECT_EQ((*log)->segment_count(), 1u);
  EXPECT_EQ((*log)->next_offset(), Offset{1});
  EXPECT_EQ(std::filesystem::file_size(first), 4'086u);
  EXPECT_TRUE(wait_for_log_deletions(10'000));
}

// Batches whose timestamps go up and down, so the time index keeps maxima between its entries.
std::int64_t fill_unordered_times(SegmentLog& log, std::int64_t from, int batches) {
  std::int64_t offset = from;
  for (int i = 0; i < batches; ++i) {
    const int n = 1 + i % 4;
    const std::int64_t ts = 1'700'000'000'000 + (i * 7919) % 1000 * 10;
    const std::vector<std::byte> batch = test::make_batch(offset, n, ts, 120, std::byte{0x42});
    EXPECT_TRUE(log.append(batch).ok());
    offset += n + (i % 40 == 39 ? 2 : 0);
  }
  return offset;
}

TEST(SegmentLog, SegmentsBeforeTheRecoveryPointOpenFromTheirIndexesAndAnswerAsAFullCheckDoes) {
  TempDir dir;
  // Given a log of many closed segments (timestamps up and down), closed cleanly
  {
    auto log = SegmentLog::open(dir.partition(), Offset{0}, small_segments()).value();
    (void)fill_unordered_times(*log, 0, 600);
    ASSERT_TRUE(log->sync().ok());
  }
  // When it is opened twice: as it is (closed segments trusted), and with no recovery point
  SegmentLogRecovery trusted_recovery, full_recovery;
  auto trusted = SegmentLog::open(dir.partition(), Offset{0}, small_segments(), &trusted_recovery).value();
  const std::string copy = dir.path() + "/copy-0";
  std::filesystem::copy(dir.partition(), copy);
  std::filesystem::remove(copy + "/recovery-point");
  auto full = SegmentLog::open(copy, Offset{0}, small_segments(), &full_recovery).value();

  // Expect every closed segment opened from its indexes in the first, none in the second
  ASSERT_GE(trusted->segment_count(), 8u);
  EXPECT_EQ(trusted_recovery.trusted_segments, trusted->segment_count() - 1);
  EXPECT_EQ(full_recovery.trusted_segments, 0u);
  // ... and both answering alike: ends, sizes, every offset, and lookups by time
  EXPECT_EQ(trusted->next_offset(), full->next_offset());
  EXPECT_EQ(trusted->size_bytes(), full->size_bytes());
  for (std::int64_t o = 0; o < full->next_offset().value; ++o) ASSERT_EQ(first_base(*trusted, Offset{o}), first_base(*full, Offset{o})) << o;
  for (std::int64_t t = 1'700'000'000'000 - 5; t < 1'700'000'000'000 + 10'010; t += 7) {
    Result<TimedOffset> a = trusted->offset_for_timestamp(t);
    Result<TimedOffset> b = full->offset_for_timestamp(t);
    ASSERT_EQ(a.ok(), b.ok()) << t;
    if (a.ok()) {
      ASSERT_EQ(a->offset, b->offset) << t;
      ASSERT_EQ(a->timestamp_ms, b->timestamp_ms) << t;
    }
  }
  // ... and a recovery point that names no segment's base, or is not one at all, trusted for
  // nothing (a file left behind by a log deleted halfway, or garbage)
  const std::string point = std::string(std::istreambuf_iterator<char>(std::ifstream(dir.partition() + "/recovery-point").rdbuf()), {});
  for (const std::string& text : {std::string("1 7 00000000\n"), std::string("garbage"), std::string("")}) {
    std::ofstream(copy + "/recovery-point", std::ios::trunc) << text;
    SegmentLogRecovery r;
    auto reopened = SegmentLog::open(copy, Offset{0}, small_segments(), &r).value();
    EXPECT_EQ(r.trusted_segments, 0u) << text;
    EXPECT_EQ(reopened->next_offset(), full->next_offset());
  }
  EXPECT_FALSE(point.empty());
  // ... and index files that do not hold together (cut short, garbage) checked in full instead
  std::vector<std::filesystem::path> indexes;
  for (const auto& entry : std::filesystem::directory_iterator(dir.partition()))
    if (entry.path().extension() == ".index") indexes.push_back(entry.path());
  std::sort(indexes.begin(), indexes.end());
  trusted.reset();
  std::filesystem::resize_file(indexes[1], std::filesystem::file_size(indexes[1]) - 3);
  {
    std::fstream f(indexes[2], std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(0);
    f.write("\x7f\xff\xff\xff\x7f\xff\xff\xff", 8);
  }
  SegmentLogRecovery damaged_recovery;
  auto damaged = SegmentLog::open(dir.partition(), Offset{0}, small_segments(), &damaged_recovery).value();
  EXPECT_EQ(damaged_recovery.trusted_segments, damaged->segment_count() - 3);
  for (std::int64_t o = 0; o < full->next_offset().value; ++o) ASSERT_EQ(first_base(*damaged, Offset{o}), first_base(*full, Offset{o})) << o;
}

// A batch's base offset and length lie outside its CRC, and a segment before the recovery point
// opens from its indexes without being read through: a header damaged there must make lookups
// and reads fail with kCorrupt, never stand still, go back, or serve other records under the
// offsets asked for (Kafka Fetch and replication read through these calls).
TEST(SegmentLog, ADamagedHeaderInATrustedSegmentIsAnErrorNeverAnotherAnswer) {
  TempDir dir;
  {
    auto log = SegmentLog::open(dir.partition(), Offset{0}, small_segments()).value();
    (void)fill(*log, 0, 600);
    ASSERT_TRUE(log->sync().ok());
  }
  auto intact = SegmentLog::open(dir.partition(), Offset{0}, small_segments()).value();
  const std::int64_t end = intact->next_offset().value;
  std::vector<std::filesystem::path> segments;
  for (const auto& entry : std::filesystem::directory_iterator(dir.partition()))
    if (entry.path().extension() == ".log") segments.push_back(entry.path().filename());
  std::sort(segments.begin(), segments.end());
  ASSERT_GE(segments.size(), 3u);
  // Batch starts in the second segment (the first of its batches, one in the middle).
  const std::string second = dir.partition() + "/" + segments[1].string();
  const std::vector<std::uint64_t> starts = test::batch_starts(second);
  ASSERT_GE(starts.size(), 10u);

  struct Damage {
    const char* what;
    std::uint64_t field;  // byte in the header
    std::vector<std::uint8_t> bytes;
  };
  const std::vector<Damage> damages = {
      {"base offset 0 (behind the batch before)", batch_field::kBaseOffset, {0, 0, 0, 0, 0, 0, 0, 0}},
      {"base offset far past the segment", batch_field::kBaseOffset, {0, 0, 0x10, 0, 0, 0, 0, 0}},
      {"base offset INT64_MAX", batch_field::kBaseOffset, {0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}},
      {"batch length -12 (a walk that stands still)", batch_field::kBatchLength, {0xff, 0xff, 0xff, 0xf4}},
      {"batch length 0", batch_field::kBatchLength, {0, 0, 0, 0}},
  };
  for (const std::uint64_t start : {starts[0], starts[starts.size() / 2]}) {
    for (const Damage& d : damages) {
      SCOPED_TRACE(std::string(d.what) + " at byte " + std::to_string(start));
      const std::string copy = dir.path() + "/damaged-0";
      std::filesystem::remove_all(copy);
      std::filesystem::copy(dir.partition(), copy);
      {
        std::fstream f(copy + "/" + segments[1].string(), std::ios::in | std::ios::out | std::ios::binary);
        f.seekp(static_cast<std::streamoff>(start + d.field));
        f.write(reinterpret_cast<const char*>(d.bytes.data()), static_cast<std::streamsize>(d.bytes.size()));
      }
      SegmentLogRecovery recovery;
      auto damaged = SegmentLog::open(copy, Offset{0}, small_segments(), &recovery).value();
      ASSERT_GE(recovery.trusted_segments, 2u) << "the damaged segment opened trusted";
      int refused = 0;
      std::vector<std::byte> want(64 * 1024), got(64 * 1024);
      for (std::int64_t o = 0; o < end; ++o) {
        Result<std::size_t> a = intact->read(Offset{o}, want);
        Result<std::size_t> b = damaged->read(Offset{o}, got);
        ASSERT_TRUE(a.ok()) << o;
        if (!b.ok()) {
          ASSERT_EQ(b.error().code, Errc::kCorrupt) << o << ": " << b.error().message;
          ++refused;
          continue;
        }
        // What it serves is what the intact log serves there, whole batches, perhaps fewer.
        ASSERT_GT(*b, 0u) << o;
        ASSERT_LE(*b, *a) << o;
        ASSERT_TRUE(std::equal(got.begin(), got.begin() + static_cast<std::ptrdiff_t>(*b), want.begin())) << o;
      }
      EXPECT_GT(refused, 0) << "the damage was noticed";
      for (std::int64_t o = 0; o < end; o += 7) {
        // Bounded or not: a bound is found by the same checked walk as a start.
        for (const Offset until : {kLogEnd, Offset{o + 37}}) {
          Result<LogSlice> slice = damaged->slice(Offset{o}, until);
          Result<LogSlice> good = intact->slice(Offset{o}, until);
          ASSERT_TRUE(good.ok());
          if (slice.ok()) {
            ASSERT_EQ(slice->position, good->position) << o;
            ASSERT_EQ(slice->end, good->end) << o;
          } else {
            ASSERT_EQ(slice.error().code, Errc::kCorrupt) << o;
          }
        }
      }
    }
  }
}

// A replicated partition's Kafka fetch serves its log only below the high watermark.
TEST(SegmentLog, ASliceBoundedByAnOffsetHoldsOnlyTheBatchesThatEndBelowIt) {
  TempDir dir;
  auto log = SegmentLog::open(dir.partition(), Offset{0}, small_segments()).value();
  const std::int64_t end = fill(*log, 0, 200);
  ASSERT_GE(log->segment_count(), 3u);
  int bounded = 0;
  for (std::int64_t o = 0; o < end; o += 5) {
    for (const std::int64_t until : {o, o + 1, o + 3, o + 9, o + 60, end, end + 5}) {
      SCOPED_TRACE("offset " + std::to_string(o) + " until " + std::to_string(until));
      Result<LogSlice> whole = log->slice(Offset{o}, kLogEnd);
      Result<LogSlice> slice = log->slice(Offset{o}, Offset{until});
      ASSERT_TRUE(slice.ok()) << slice.error().message;
      ASSERT_EQ(slice->position, whole->position);
      ASSERT_LE(slice->end, whole->end);
      if (until <= o) {
        EXPECT_EQ(slice->end, slice->position) << "nothing below the bound from there";
        continue;
      }
      // Every batch in the slice ends below the bound, and the one after it (in this segment) does not.
      std::vector<std::byte> bytes(whole->end - whole->position);
      ASSERT_EQ(::pread(whole->file.get(), bytes.data(), bytes.size(), static_cast<off_t>(whole->position)), static_cast<ssize_t>(bytes.size()));
      std::uint64_t at = 0;
      while (at < slice->end - slice->position) {
        const BatchView batch = BatchView::parse(std::span(bytes).subspan(at)).value();
        EXPECT_LT(batch.last_offset().value, until);
        EXPECT_LT(batch.last_offset(), slice->end_offset);
        at += batch.bytes().size();
      }
      ASSERT_EQ(at, slice->end - slice->position) << "the bound is a batch boundary";
      if (slice->end < whole->end) {
        ++bounded;
        EXPECT_EQ(slice->end_offset, Offset{until});
        EXPECT_GE(BatchView::parse(std::span(bytes).subspan(at)).value().last_offset().value, until);
      } else {
        EXPECT_EQ(slice->end_offset, whole->end_offset);
      }
    }
  }
  EXPECT_GT(bounded, 100) << "the bounds fell inside the slices";
}

TEST(SegmentLog, ReadsMayComeFromAnotherThreadWhileItAppends) {
  TempDir dir;
  auto log = SegmentLog::open(dir.partition(), Offset{0}, small_segments()).value();
  std::atomic<bool> done{false};
  std::thread reader([&] {
    std::vector<std::byte> out(64 * 1024);
    for (int i = 0; i < 100'000 && !done.load(); ++i) {
      const Offset next = log->next_offset();
      if (next.value == 0) continue;
      Result<std::size_t> got = log->read(Offset{next.value - 1}, out);
      ASSERT_TRUE(got.ok()) << got.error().message;
      ASSERT_GT(*got, 0u);
    }
  });
  (void)fill(*log, 0, 300);
  done.store(true);
  reader.join();
}

TEST(SegmentLog, RefusesSilentlyWrongSettings) {
  TempDir dir;
  SegmentLogOptions tiny;
  tiny.segment_bytes = 10;
  EXPECT_EQ(SegmentLog::open(dir.partition(), Offset{0}, tiny).error().code, Errc::kInvalidArgument);
}

// Truncation (a replica's divergent suffix): whole batches go, the cut survives a reopen, and
// appends go on from the new end.
TEST(SegmentLog, TruncatesInsideTheActiveSegmentAtABatchBoundary) {
  TempDir dir;
  SegmentLogOptions big;
  big.segment_bytes = 1 << 20;
  auto log = SegmentLog::open(dir.partition(), Offset{0}, big).value();
  for (int i = 0; i < 100; ++i) ASSERT_TRUE(log->append(batch_at(i * 10, 10)).ok());
  // 505 lies inside the batch at 500: that batch goes too.
  Result<Offset> cut = log->truncate(Offset{505});
  ASSERT_TRUE(cut.ok()) << cut.error().message;
  EXPECT_EQ(*cut, Offset{500});
  EXPECT_EQ(log->next_offset(), Offset{500});
  EXPECT_EQ(first_base(*log, Offset{490}), 490);
  std::vector<std::byte> out(4096);
  Result<std::size_t> at_cut = log->read(Offset{500}, out);
  EXPECT_TRUE(!at_cut.ok() || *at_cut == 0) << "nothing at the cut";
  // Past the end: nothing changes.
  EXPECT_EQ(log->truncate(Offset{9'000}).value(), Offset{500});
  ASSERT_TRUE(log->append(batch_at(500, 3)).ok());
  ASSERT_TRUE(log->sync().ok());
  log.reset();
  auto again = SegmentLog::open(dir.partition(), Offset{0}, big).value();
  EXPECT_EQ(again->next_offset(), Offset{503});
  EXPECT_EQ(first_base(*again, Offset{501}), 500);
  EXPECT_EQ(first_base(*again, Offset{0}), 0);
}

TEST(SegmentLog, TruncatesAcrossSegmentsAndReopensFromTheCut) {
  TempDir dir;
  auto log = SegmentLog::open(dir.partition(), Offset{0}, small_segments()).value();
  const std::int64_t end = fill(*log, 0, 400);
  ASSERT_GE(log->segment_count(), 8u);
  ASSERT_TRUE(log->sync().ok());
  const std::size_t before = log->segment_count();
  const Offset target{end / 3};
  Result<Offset> cut = log->truncate(target);
  ASSERT_TRUE(cut.ok()) << cut.error().message;
  EXPECT_LE(*cut, target);
  EXPECT_GE(*cut + 4, target) << "at most one batch more than asked";
  EXPECT_LT(log->segment_count(), before);
  // No segment file starts at or after the cut.
  for (const auto& entry : std::filesystem::directory_iterator(dir.partition())) {
    const std::string name = entry.path().filename().string();
    if (name.ends_with(".log")) {
      EXPECT_LT(std::stoll(name.substr(0, 20)), cut->value) << name;
    }
  }
  // The next append continues at the cut, in the segment it falls in, and everything reopens.
  ASSERT_TRUE(log->append(batch_at(cut->value, 2)).ok());
  ASSERT_TRUE(log->sync().ok());
  const Offset next = log->next_offset();
  log.reset();
  SegmentLogRecovery recovery;
  auto again = SegmentLog::open(dir.partition(), Offset{0}, small_segments(), &recovery).value();
  EXPECT_EQ(again->next_offset(), next);
  EXPECT_EQ(recovery.truncated_bytes, 0u) << "the cut was clean";
  for (std::int64_t o = 0; o < next.value; o += 7) EXPECT_GE(first_base(*again, Offset{o}), 0) << o;
}

TEST(SegmentLog, TruncatingToASegmentsBaseDropsThatSegment) {
  TempDir dir;
  auto log = SegmentLog::open(dir.partition(), Offset{0}, small_segments()).value();
  fill(*log, 0, 200);
  ASSERT_GE(log->segment_count(), 3u);
  // The base of the second segment: what the first segment holds ends right there.
  std::int64_t second_base = -1;
  std::vector<std::int64_t> bases;
  for (const auto& entry : std::filesystem::directory_iterator(dir.partition())) {
    const std::string name = entry.path().filename().string();
    if (name.ends_with(".log")) bases.push_back(std::stoll(name.substr(0, 20)));
  }
  std::sort(bases.begin(), bases.end());
  second_base = bases[1];
  EXPECT_EQ(log->truncate(Offset{second_base}).value(), Offset{second_base});
  EXPECT_EQ(log->segment_count(), 1u);
  ASSERT_TRUE(log->append(batch_at(second_base, 1)).ok()) << "the first segment takes appends again";
  EXPECT_EQ(log->next_offset(), Offset{second_base + 1});
}

TEST(SegmentLog, TruncatingBeforeTheStartOrResettingEmptiesTheLog) {
  TempDir dir;
  auto log = SegmentLog::open(dir.partition(), Offset{100}, small_segments()).value();
  fill(*log, 100, 100);
  EXPECT_EQ(log->truncate(Offset{50}).value(), Offset{50});
  EXPECT_EQ(log->start_offset(), Offset{50});
  EXPECT_EQ(log->next_offset(), Offset{50});
  EXPECT_EQ(log->segment_count(), 1u);
  // A reset moves the empty log to a later start (the leader's log starts there now).
  ASSERT_TRUE(log->append(batch_at(50, 5)).ok());
  ASSERT_TRUE(log->reset(Offset{7'000}).ok());
  EXPECT_EQ(log->start_offset(), Offset{7'000});
  EXPECT_EQ(log->next_offset(), Offset{7'000});
  ASSERT_TRUE(log->append(batch_at(7'000, 4)).ok());
  ASSERT_TRUE(log->sync().ok());
  log.reset();
  auto again = SegmentLog::open(dir.partition(), Offset{0}, small_segments()).value();
  EXPECT_EQ(again->start_offset(), Offset{7'000});
  EXPECT_EQ(again->next_offset(), Offset{7'004});
  EXPECT_EQ(again->reset(Offset{-1}).error().code, Errc::kInvalidArgument);
}

// ---- syncs held or failed at will: the background sync of closed segments, a log's own ---------

// What the hook does with the syncs of the logs under `dir`: hold each until released (at most
// ten seconds), then let it go on or fail it as a disk would (EIO).
enum class HeldSync { kThenPass, kThenFail };
// Whose syncs: the syncer thread's of closed segments, the fdatasyncs of SegmentLog::sync(), or
// the syncer's of an epoch history saved with the log.
enum class SyncsOf { kClosedSegments, kTheLogsOwnSync, kEpochHistory };
struct SyncControl {
  std::atomic<HeldSync> mode{HeldSync::kThenPass};
  std::atomic<bool> released{false};
  std::atomic<int> entered{0};
  std::string dir;  // set before the hook is
  std::mutex files_mutex;
  std::vector<std::string> files;  // the paths of every file the held syncs covered
};
SyncControl sync_control;

// Waits (bounded: ten seconds) until `done` holds.
template <typename Done>
bool wait_for(Done done) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (!done() && std::chrono::steady_clock::now() < deadline) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  return done();
}

int control_sync(const std::string& dir, std::span<const int> files) {
  if (dir.rfind(sync_control.dir, 0) != 0) return 0;
  {
    std::lock_guard lock(sync_control.files_mutex);
    for (const int fd : files) {
      std::error_code ec;
      const std::filesystem::path path = std::filesystem::read_symlink("/proc/self/fd/" + std::to_string(fd), ec);
      sync_control.files.push_back(ec ? "?" : path.string());
    }
  }
  sync_control.entered.fetch_add(1);
  (void)wait_for([] { return sync_control.released.load(); });
  return sync_control.mode.load() == HeldSync::kThenFail ? EIO : 0;
}

// Installs the hook for one test's folder; takes it away again, releasing what it holds.
// Declared after the log: it releases the held syncs before the log's destructor waits for them
// (even when an assertion ends the test early).
class ControlledSyncs {
 public:
  ControlledSyncs(const std::string& dir, HeldSync mode, SyncsOf whose = SyncsOf::kClosedSegments) : whose_(whose) {
    sync_control.dir = dir;
    sync_control.mode.store(mode);
    sync_control.released.store(false);
    sync_control.entered.store(0);
    {
      std::lock_guard lock(sync_control.files_mutex);
      sync_control.files.clear();
    }
    set_hook(&control_sync);
  }
  ~ControlledSyncs() {
    sync_control.released.store(true);
    set_hook(nullptr);
  }
  ControlledSyncs(const ControlledSyncs&) = delete;
  ControlledSyncs& operator=(const ControlledSyncs&) = delete;
  void release() { sync_control.released.store(true); }
  bool wait_until_entered() {
    return wait_for([] { return sync_control.entered.load() > 0; });
  }

 private:
  void set_hook(test_hooks::SyncHook hook) {
    switch (whose_) {
      case SyncsOf::kClosedSegments: test_hooks::set_closed_segment_sync_hook(hook); break;
      case SyncsOf::kTheLogsOwnSync: test_hooks::set_log_sync_hook(hook); break;
      case SyncsOf::kEpochHistory: test_hooks::set_epochs_sync_hook(hook); break;
    }
  }
  SyncsOf whose_;
};

// The offset the folder's recovery point names, or -1 without one.
std::int64_t recovery_point_in(const std::string& dir) {
  std::ifstream in(dir + "/recovery-point");
  std::string version;
  std::int64_t offset = -1;
  if (!(in >> version >> offset)) return -1;
  return offset;
}

TEST(SegmentLog, ASyncReturnsOnlyOnceTheBackgroundSyncOfAClosedSegmentHasEnded) {
  TempDir dir;
  auto log = SegmentLog::open(dir.partition(), Offset{0}, small_segments()).value();
  ControlledSyncs syncs(dir.path(), HeldSync::kThenPass);
  // Given a roll whose background sync is held
  (void)fill(*log, 0, 200);
  const Offset end = log->next_offset();
  ASSERT_GE(log->segment_count(), 2u);
  ASSERT_TRUE(syncs.wait_until_entered());
  // When the log is synced meanwhile
  std::atomic<bool> returned{false};
  Result<void> synced = ok();
  std::thread syncer([&] {
    synced = log->sync();
    returned.store(true);
  });
  // Expect the sync to wait for it: the background sync may have taken the disk's one report of
  // a failure, so the log's own fdatasync succeeding says nothing until that one has ended
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  EXPECT_FALSE(returned.load()) << "sync() returned while a closed segment's sync was still under way";
  EXPECT_EQ(recovery_point_in(dir.partition()), -1) << "the point moved before its segment was synced";
  syncs.release();
  syncer.join();
  EXPECT_TRUE(synced.ok()) << synced.error().message;
  log.reset();  // waits for every background sync
  // ... and the point then past the closed segments, all of them trusted at the next start
  EXPECT_GT(recovery_point_in(dir.partition()), 0);
  SegmentLogRecovery recovery;
  auto again = SegmentLog::open(dir.partition(), Offset{0}, small_segments(), &recovery).value();
  EXPECT_EQ(recovery.trusted_segments, again->segment_count() - 1);
  EXPECT_EQ(again->next_offset(), end);
}

TEST(SegmentLog, AFailedBackgroundSyncFailsTheLogsNextSyncThoughItsOwnFdatasyncSucceeds) {
  TempDir dir;
  auto log = SegmentLog::open(dir.partition(), Offset{0}, small_segments()).value();
  ControlledSyncs syncs(dir.path(), HeldSync::kThenFail);
  // Given rolls whose background syncs fail, as a disk's write-back of their pages would
  (void)fill(*log, 0, 200);
  ASSERT_GE(log->segment_count(), 2u);
  ASSERT_TRUE(syncs.wait_until_entered());
  // When the log is synced while the first of them is still under way (its own fdatasync of the
  // same files succeeds: here the disk is fine), and that one then fails
  Result<void> synced = ok();
  std::thread syncer([&] { synced = log->sync(); });
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  syncs.release();
  syncer.join();
  // Expect data loss reported, and nothing taken or acknowledged after it
  ASSERT_FALSE(synced.ok());
  EXPECT_EQ(synced.error().code, Errc::kDataLoss) << synced.error().message;
  EXPECT_NE(synced.error().message.find("fdatasync of a closed segment"), std::string::npos) << synced.error().message;
  Result<void> appended = log->append(batch_at(log->next_offset().value, 1));
  ASSERT_FALSE(appended.ok());
  EXPECT_EQ(appended.error().code, Errc::kDataLoss);
  EXPECT_EQ(log->sync().error().code, Errc::kDataLoss) << "a later sync succeeds over the lost pages";
  // ... and the recovery point never moved past the segment whose sync failed
  log.reset();
  EXPECT_EQ(recovery_point_in(dir.partition()), -1);
}

// The log's sync() on a thread of its own, for tests that hold its fdatasync: `returned` once
// it has, with its outcome in `synced`. Joined when destroyed.
struct SyncInThread {
  std::atomic<bool> returned{false};
  Result<void> synced = ok();
  std::jthread thread;
  void start(SegmentLog& log) {
    thread = std::jthread([this, &log] {
      synced = log.sync();
      returned.store(true);
    });
  }
};

TEST(SegmentLog, ItsOwnSyncHoldsNoReaderAndNoAppendWhileTheDiskWorks) {
  TempDir dir;
  auto log = SegmentLog::open(dir.partition(), Offset{0}).value();
  const std::int64_t end = fill(*log, 0, 20);
  SyncInThread syncer;  // joined after the hook below lets go, even when a check fails
  ControlledSyncs syncs(dir.path(), HeldSync::kThenPass, SyncsOf::kTheLogsOwnSync);
  // Given a sync of the log whose fdatasync the disk holds (fsync=always, a slow disk)
  syncer.start(*log);
  ASSERT_TRUE(syncs.wait_until_entered());
  // When readers (a Fetch behind the ring, ListOffsets) and the log writer call meanwhile
  std::future<void> calls = std::async(std::launch::async, [&] {
    EXPECT_EQ(log->next_offset(), Offset{end});
    EXPECT_EQ(log->synced_offset(), Offset{0});
    EXPECT_EQ(first_base(*log, Offset{0}), 0);
    Result<LogSlice> slice = log->slice(Offset{0}, kLogEnd);
    EXPECT_TRUE(slice.ok() && slice->position == 0) << (slice.ok() ? "" : slice.error().message);
    EXPECT_TRUE(log->offset_for_timestamp(1'700'000'000'000).ok());
    EXPECT_TRUE(log->append(batch_at(end, 1)).ok());
    EXPECT_TRUE(log->flush().ok());
  });
  // Expect every one of them to return while the sync still waits for the disk
  EXPECT_EQ(calls.wait_for(std::chrono::seconds(10)), std::future_status::ready) << "a call waited for the log's fdatasync";
  EXPECT_FALSE(syncer.returned.load());
  syncs.release();
  syncer.thread.join();
  calls.wait();
  ASSERT_TRUE(syncer.synced.ok()) << syncer.synced.error().message;
  // ... and the sync to vouch only for what it covered: the batch appended during it is not on
  // disk until the next one
  EXPECT_EQ(log->synced_offset(), Offset{0});
  ASSERT_TRUE(log->sync().ok());
  EXPECT_EQ(log->synced_offset(), Offset{end + 1});
}

// A second hold, for the syncer's syncs while the log's own are held by sync_control: released
// on its own, then passing or failing (EIO). Bounded: ten seconds.
struct SecondHold {
  std::atomic<bool> released{false};
  std::atomic<bool> fail{false};
  std::atomic<int> entered{0};
  std::string dir;
};
SecondHold second_hold;

int hold_closed_segment_sync(const std::string& dir, std::span<const int>) {
  if (dir.rfind(second_hold.dir, 0) != 0) return 0;
  second_hold.entered.fetch_add(1);
  (void)wait_for([] { return second_hold.released.load(); });
  return second_hold.fail.load() ? EIO : 0;
}

// Holds the syncer's syncs of logs under `dir` until release() (or the end of the test).
class HeldClosedSegmentSyncs {
 public:
  explicit HeldClosedSegmentSyncs(const std::string& dir) {
    second_hold.dir = dir;
    second_hold.released.store(false);
    second_hold.fail.store(false);
    second_hold.entered.store(0);
    test_hooks::set_closed_segment_sync_hook(&hold_closed_segment_sync);
  }
  ~HeldClosedSegmentSyncs() {
    second_hold.released.store(true);
    test_hooks::set_closed_segment_sync_hook(nullptr);
  }
  HeldClosedSegmentSyncs(const HeldClosedSegmentSyncs&) = delete;
  HeldClosedSegmentSyncs& operator=(const HeldClosedSegmentSyncs&) = delete;
  void release(bool fail) {
    second_hold.fail.store(fail);
    second_hold.released.store(true);
  }
};

// Appends one-record batches from `next` until the log has rolled to more than `segments`.
std::int64_t append_until_rolled(SegmentLog& log, std::int64_t next, std::size_t segments) {
  for (int i = 0; i < 1000 && log.segment_count() <= segments; ++i) next = fill(log, next, 1);
  return next;
}

TEST(SegmentLog, ASegmentRolledDuringItsOwnSyncIsVouchedForOnlyOnceTheSyncerHasSyncedItToo) {
  TempDir dir;
  auto log = SegmentLog::open(dir.partition(), Offset{0}, small_segments()).value();
  std::int64_t next = fill(*log, 0, 5);
  SyncInThread syncer;  // joined after both holds below let go, even when a check fails
  HeldClosedSegmentSyncs closed(dir.path());
  ControlledSyncs own(dir.path(), HeldSync::kThenPass, SyncsOf::kTheLogsOwnSync);
  // Given the log's own sync of its active segment, held by the disk
  syncer.start(*log);
  ASSERT_TRUE(own.wait_until_entered());
  // When the log rolls past that segment meanwhile (its sync handed to the syncer as well), and
  // the syncer's sync of it is still under way when the log's own ends
  next = append_until_rolled(*log, next, 1);
  ASSERT_GE(log->segment_count(), 2u);
  ASSERT_TRUE(wait_for([] { return second_hold.entered.load() > 0; }));
  own.release();
  // Expect the log's sync to wait for the syncer's: either may take the kernel's one report of an
  // error for the shared file
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  EXPECT_FALSE(syncer.returned.load()) << "sync() returned while the syncer's sync of the same file was under way";
  // ... and to fail when that one fails
  closed.release(true);
  syncer.thread.join();
  ASSERT_FALSE(syncer.synced.ok());
  EXPECT_EQ(syncer.synced.error().code, Errc::kDataLoss) << syncer.synced.error().message;
  log.reset();
  EXPECT_EQ(recovery_point_in(dir.partition()), -1);
}

TEST(SegmentLog, AFailedSyncOfItsOwnStopsTheLogForGood) {
  TempDir dir;
  auto log = SegmentLog::open(dir.partition(), Offset{0}).value();
  const std::int64_t end = fill(*log, 0, 20);
  ControlledSyncs syncs(dir.path(), HeldSync::kThenFail, SyncsOf::kTheLogsOwnSync);
  syncs.release();
  // Given a log whose fdatasync fails, as a disk's write-back of its pages would
  Result<void> synced = log->sync();
  // Expect the failure reported, nothing counted durable, and nothing taken or acknowledged after
  // it: the kernel may have dropped the pages, and a second fdatasync would succeed over them
  ASSERT_FALSE(synced.ok());
  EXPECT_EQ(synced.error().code, Errc::kIo) << synced.error().message;
  EXPECT_NE(synced.error().message.find("fdatasync"), std::string::npos) << synced.error().message;
  EXPECT_EQ(log->synced_offset(), Offset{0});
  Result<void> appended = log->append(batch_at(end, 1));
  ASSERT_FALSE(appended.ok());
  EXPECT_EQ(appended.error().code, Errc::kDataLoss);
  EXPECT_EQ(log->sync().error().code, Errc::kDataLoss) << "a later sync succeeds over the lost pages";
  // ... while what it holds is still read
  EXPECT_EQ(first_base(*log, Offset{0}), 0);
}

// Appends `batches` two-record batches from `next` carrying `epoch` in their partitionLeaderEpoch.
std::int64_t append_in_epoch(SegmentLog& log, std::int64_t next, int batches, std::int32_t epoch) {
  for (int i = 0; i < batches; ++i, next += 2) {
    std::vector<std::byte> batch = batch_at(next, 2);
    stamp_partition_leader_epoch(batch, epoch);
    EXPECT_TRUE(log.append(batch).ok());
  }
  return next;
}

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// Appends one batch at a time in `epoch` from `next` until the log has `segments` segments (at
// most 1 000 batches); returns the next offset.
std::int64_t roll_in_epoch(SegmentLog& log, std::int64_t next, std::size_t segments, std::int32_t epoch) {
  for (int i = 0; i < 1000 && log.segment_count() < segments; ++i) next = append_in_epoch(log, next, 1, epoch);
  EXPECT_EQ(log.segment_count(), segments);
  return next;
}

TEST(SegmentLog, AnEpochHistorySavedWithTheLogIsWrittenBeforeTheRecoveryPointPassesIt) {
  TempDir dir;
  const std::string history_file = dir.partition() + "/leader-epoch-checkpoint";
  auto log = SegmentLog::open(dir.partition(), Offset{0}, small_segments()).value();
  std::int64_t next = 0;
  {
    ControlledSyncs history(dir.path(), HeldSync::kThenPass, SyncsOf::kEpochHistory);
    // Given a history saved with the log (a new role: no file system call on the replication
    // thread), and answered from memory at once
    const std::vector<EpochStart> history_3 = {{3, Offset{0}}};
    ASSERT_TRUE(log->save_epochs(history_3, EpochSave::kWithTheLog).ok());
    EXPECT_EQ(log->load_epochs().value(), history_3);
    EXPECT_FALSE(std::filesystem::exists(history_file));
    // When the log rolls past batches of its epoch
    next = roll_in_epoch(*log, next, 2, 3);
    // Expect the syncer to write the history first, the point not yet moved while it does
    ASSERT_TRUE(history.wait_until_entered());
    EXPECT_EQ(recovery_point_in(dir.partition()), -1);
    history.release();
    ASSERT_TRUE(log->sync().ok());  // waits for the closed segment's sync
    const std::int64_t first_point = recovery_point_in(dir.partition());
    EXPECT_GT(first_point, 0);
    EXPECT_EQ(read_text(history_file), "weft-leader-epochs 1\n1\n3 0\n");
    // ... and not again at the next roll, nothing saved since
    next = roll_in_epoch(*log, next, 3, 3);
    ASSERT_TRUE(log->sync().ok());
    EXPECT_GT(recovery_point_in(dir.partition()), first_point);
    EXPECT_EQ(sync_control.entered.load(), 1);
    // ... nor after a save synced at once (a truncated history)
    ASSERT_TRUE(log->save_epochs(std::vector<EpochStart>{{3, Offset{0}}}, EpochSave::kNow).ok());
    next = roll_in_epoch(*log, next, 4, 3);
    ASSERT_TRUE(log->sync().ok());
    EXPECT_EQ(sync_control.entered.load(), 1);
  }
  EXPECT_EQ(log->load_epochs().value(), (std::vector<EpochStart>{{3, Offset{0}}}));
}

TEST(SegmentLog, AnEpochHistoryThatCouldNotBeSyncedKeepsTheRecoveryPointWhereItWasAndFailsNothingElse) {
  TempDir dir;
  auto log = SegmentLog::open(dir.partition(), Offset{0}, small_segments()).value();
  std::int64_t next = 0;
  {
    ControlledSyncs history(dir.path(), HeldSync::kThenFail, SyncsOf::kEpochHistory);
    history.release();
    // Given a history saved with the log whose sync fails
    ASSERT_TRUE(log->save_epochs(std::vector<EpochStart>{{3, Offset{0}}}, EpochSave::kWithTheLog).ok());
    next = roll_in_epoch(*log, next, 2, 3);
    // Expect the point left where it was, the log taking and syncing as before
    ASSERT_TRUE(log->sync().ok());
    EXPECT_EQ(sync_control.entered.load(), 1);
    EXPECT_EQ(recovery_point_in(dir.partition()), -1);
    next = append_in_epoch(*log, next, 1, 3);
  }
  // ... and the next roll syncs the history, then moves the point
  next = roll_in_epoch(*log, next, 3, 3);
  ASSERT_TRUE(log->sync().ok());
  EXPECT_GT(recovery_point_in(dir.partition()), 0);
}

std::string epoch_history_text(const std::vector<EpochStart>& epochs) {
  std::string text = "weft-leader-epochs 1\n" + std::to_string(epochs.size()) + "\n";
  for (const EpochStart& e : epochs) text += std::to_string(e.epoch) + " " + std::to_string(e.start.value) + "\n";
  return text;
}

// An empty log given epoch 1's history (synced) and its batches from offset 0 until it has
// `segments` segments, all but the last vouched for by the recovery point; returns the next offset.
std::int64_t epoch_1_vouched_for(SegmentLog& log, std::size_t segments) {
  EXPECT_TRUE(log.save_epochs(std::vector<EpochStart>{{1, Offset{0}}}, EpochSave::kNow).ok());
  const std::int64_t next = roll_in_epoch(log, 0, segments, 1);
  EXPECT_TRUE(log.sync().ok());
  return next;
}

TEST(SegmentLog, EpochsItsSavedHistoryLacksAreFoundInTheBatchesReadThroughAtItsOpening) {
  TempDir dir;
  const std::string history_file = dir.partition() + "/leader-epoch-checkpoint";
  std::int64_t epoch4 = 0, epoch6 = 0;
  {
    auto log = SegmentLog::open(dir.partition(), Offset{0}, small_segments()).value();
    // Given epoch 1's batches in segments the recovery point vouches for, its history synced
    std::int64_t next = epoch_1_vouched_for(*log, 3);
    // ... then epoch 4, epoch 5 led without a batch, and epoch 6, saved with the log, their
    // batches in the active segment
    epoch4 = next;
    ASSERT_TRUE(log->save_epochs(std::vector<EpochStart>{{1, Offset{0}}, {4, Offset{epoch4}}}, EpochSave::kWithTheLog).ok());
    next = append_in_epoch(*log, next, 3, 4);
    epoch6 = next;
    ASSERT_TRUE(log->save_epochs(std::vector<EpochStart>{{1, Offset{0}}, {4, Offset{epoch4}}, {5, Offset{epoch6}}}, EpochSave::kWithTheLog).ok());
    ASSERT_TRUE(log->save_epochs(std::vector<EpochStart>{{1, Offset{0}}, {4, Offset{epoch4}}, {6, Offset{epoch6}}}, EpochSave::kWithTheLog).ok());
    (void)append_in_epoch(*log, next, 3, 6);
    ASSERT_EQ(log->segment_count(), 3u);
    EXPECT_EQ(read_text(history_file), epoch_history_text({{1, Offset{0}}}));  // no roll: not written yet
  }
  const std::vector<EpochStart> whole = {{1, Offset{0}}, {4, Offset{epoch4}}, {6, Offset{epoch6}}};
  // When a crash left an older history than the last one saved (the saves after the sync never
  // reached the disk, or only one of them did)
  for (const std::vector<EpochStart>& left : {std::vector<EpochStart>{{1, Offset{0}}}, std::vector<EpochStart>{{1, Offset{0}}, {4, Offset{epoch4}}},
                                               std::vector<EpochStart>{{1, Offset{0}}, {4, Offset{epoch4}}, {5, Offset{epoch6}}}, whole}) {
    std::ofstream(history_file, std::ios::binary | std::ios::trunc) << epoch_history_text(left);
    SegmentLogRecovery recovery;
    auto log = SegmentLog::open(dir.partition(), Offset{0}, small_segments(), &recovery).value();
    ASSERT_EQ(recovery.trusted_segments, 2u);
    // Expect the epochs the batches read through at the opening name added as the replica added
    // them (epoch 5, which began where 6 did, held nothing)
    EXPECT_EQ(log->load_epochs().value(), whole) << epoch_history_text(left);
  }
  // ... and none of a suffix cut since
  std::ofstream(history_file, std::ios::binary | std::ios::trunc) << epoch_history_text({{1, Offset{0}}});
  auto log = SegmentLog::open(dir.partition(), Offset{0}, small_segments()).value();
  ASSERT_EQ(log->truncate(Offset{epoch6}).value(), Offset{epoch6});
  EXPECT_EQ(log->load_epochs().value(), (std::vector<EpochStart>{{1, Offset{0}}, {4, Offset{epoch4}}}));
  ASSERT_TRUE(log->reset(Offset{epoch4}).ok());
  EXPECT_EQ(log->load_epochs().value(), (std::vector<EpochStart>{{1, Offset{0}}}));
}

TEST(SegmentLog, EpochsFoundInTheBatchesReadThroughAreWrittenBeforeTheRecoveryPointPassesThem) {
  TempDir dir;
  const std::string history_file = dir.partition() + "/leader-epoch-checkpoint";
  std::int64_t next = 0, epoch7 = 0;
  {
    auto log = SegmentLog::open(dir.partition(), Offset{0}, small_segments()).value();
    next = epoch_1_vouched_for(*log, 2);
    // Given epoch 7 saved with the log, its batches in the active segment, and the log closed
    // before a roll wrote it
    epoch7 = next;
    ASSERT_TRUE(log->save_epochs(std::vector<EpochStart>{{1, Offset{0}}, {7, Offset{epoch7}}}, EpochSave::kWithTheLog).ok());
    next = append_in_epoch(*log, next, 3, 7);
  }
  ASSERT_EQ(read_text(history_file), epoch_history_text({{1, Offset{0}}}));
  const std::vector<EpochStart> whole = {{1, Offset{0}}, {7, Offset{epoch7}}};
  {
    // When it opens again (epoch 7 found in the batches read through) and rolls past them with
    // no save between (a follower carrying on in the same epoch)
    auto log = SegmentLog::open(dir.partition(), Offset{0}, small_segments()).value();
    ASSERT_EQ(log->load_epochs().value(), whole);
    next = roll_in_epoch(*log, next, 3, 7);
    ASSERT_TRUE(log->sync().ok());
  }
  // Expect the file to name epoch 7 once the recovery point has passed its first batch
  EXPECT_GT(recovery_point_in(dir.partition()), epoch7);
  EXPECT_EQ(read_text(history_file), epoch_history_text(whole));
  EXPECT_EQ(SegmentLog::open(dir.partition(), Offset{0}, small_segments()).value()->load_epochs().value(), whole);
}

TEST(SegmentLog, ATruncationWhileAClosedSegmentSyncsKeepsThatSyncFromMovingTheRecoveryPoint) {
  TempDir dir;
  auto log = SegmentLog::open(dir.partition(), Offset{0}, small_segments()).value();
  ControlledSyncs syncs(dir.path(), HeldSync::kThenPass);
  // Given a log whose first roll's sync (which would move the point to the new segment's base) is held
  std::int64_t end = fill(*log, 0, 100);
  while (log->segment_count() < 2) end = fill(*log, end, 1);
  ASSERT_TRUE(syncs.wait_until_entered());
  // When the log is cut inside its first segment meanwhile (a follower truncating to its new
  // leader's epoch boundary), and the held sync then ends
  const std::int64_t cut_at = first_base(*log, Offset{5});  // the batch holding offset 5 goes whole
  ASSERT_EQ(log->truncate(Offset{5}).value(), Offset{cut_at});
  syncs.release();
  log.reset();  // waits for every background sync
  // Expect no recovery point past the cut: it would vouch for segments that no longer hold what
  // it was written for
  EXPECT_LE(recovery_point_in(dir.partition()), 0);
}

TEST(SegmentLog, SegmentsReadBackAboveTheRecoveryPointCountAsSyncedOnlyOnceASyncHasCoveredThem) {
  TempDir dir;
  Offset end;
  {
    auto log = SegmentLog::open(dir.partition(), Offset{0}, small_segments()).value();
    (void)fill(*log, 0, 200);
    end = log->next_offset();
    ASSERT_GE(log->segment_count(), 3u);
  }
  // Given a log reopened with no recovery point (a node killed before any roll's sync ended):
  // every segment is read back, and its bytes may be in the page cache alone
  std::filesystem::remove(dir.partition() + "/recovery-point");
  auto log = SegmentLog::open(dir.partition(), Offset{0}, small_segments()).value();
  ASSERT_EQ(log->next_offset(), end);
  // Expect none of it counted as on disk
  EXPECT_EQ(log->synced_offset(), Offset{0});
  // ... until a sync, which covers every segment
  ASSERT_TRUE(log->sync().ok());
  EXPECT_EQ(log->synced_offset(), end);
}

TEST(SegmentLog, TheFirstRollAfterAReopenSyncsEverySegmentThatTheRecoveryPointWillPass) {
  TempDir dir;
  std::vector<std::string> logs;  // the segment files read back at the reopen
  {
    auto log = SegmentLog::open(dir.partition(), Offset{0}, small_segments()).value();
    (void)fill(*log, 0, 200);
    ASSERT_GE(log->segment_count(), 3u);
  }
  for (const auto& entry : std::filesystem::directory_iterator(dir.partition()))
    if (entry.path().extension() == ".log") logs.push_back(std::filesystem::canonical(entry.path()).string());
  std::filesystem::remove(dir.partition() + "/recovery-point");
  // Given a reopened log whose segments were all read back (no recovery point vouched for any)
  auto log = SegmentLog::open(dir.partition(), Offset{0}, small_segments()).value();
  const std::size_t before = log->segment_count();
  ControlledSyncs syncs(dir.path(), HeldSync::kThenPass);
  // When it rolls, its new recovery point to pass all of them
  std::int64_t next = log->next_offset().value;
  for (int i = 0; i < 1000 && log->segment_count() == before; ++i) next = fill(*log, next, 1);
  ASSERT_GT(log->segment_count(), before);
  ASSERT_TRUE(syncs.wait_until_entered());
  // Expect that roll's background sync to cover every one of their log files, not only the one
  // just closed: the point would vouch for the others too
  {
    std::lock_guard lock(sync_control.files_mutex);
    for (const std::string& file : logs)
      EXPECT_NE(std::find(sync_control.files.begin(), sync_control.files.end(), file), sync_control.files.end())
          << file << " is not in the sync that moves the point past it";
    sync_control.files.clear();
  }
  syncs.release();
  // ... and once only: the next roll's sync leaves them out (every roll syncing every earlier
  // segment again ran a busy log out of descriptors)
  sync_control.entered.store(0);
  const std::size_t rolled = log->segment_count();
  for (int i = 0; i < 1000 && log->segment_count() == rolled; ++i) next = fill(*log, next, 1);
  ASSERT_GT(log->segment_count(), rolled);
  ASSERT_TRUE(syncs.wait_until_entered());
  std::lock_guard lock(sync_control.files_mutex);
  EXPECT_FALSE(sync_control.files.empty());
  for (const std::string& file : logs)
    EXPECT_EQ(std::find(sync_control.files.begin(), sync_control.files.end(), file), sync_control.files.end())
        << file << " is synced again at a later roll";
}

TEST(SegmentLog, ABatchEndingTwoToThe31OffsetsPastTheSegmentsBaseStartsASegmentOfItsOwn) {
  TempDir dir;
  auto log = SegmentLog::open(dir.partition(), Offset{0}, small_segments()).value();
  // Given a segment at offset 0 with one batch in it
  ASSERT_TRUE(log->append(batch_at(0, 2)).ok());
  // When the next batch comes after a gap past what a segment's 32-bit index deltas reach (a
  // follower fetching from a leader whose log starts far ahead, say)
  constexpr std::int64_t kFar = (std::int64_t{1} << 31) + 5;
  const Result<void> far = log->append(batch_at(kFar, 3));
  // Expect a roll to a segment named by that offset, both readable, and the same after a reopen
  ASSERT_TRUE(far.ok()) << far.error().message;
  EXPECT_EQ(log->segment_count(), 2u);
  EXPECT_EQ(log->next_offset(), Offset{kFar + 3});
  EXPECT_EQ(first_base(*log, Offset{1}), 0);
  EXPECT_EQ(first_base(*log, Offset{kFar + 1}), kFar);
  log.reset();
  auto again = SegmentLog::open(dir.partition(), Offset{0}, small_segments()).value();
  EXPECT_EQ(again->next_offset(), Offset{kFar + 3});
  EXPECT_EQ(first_base(*again, Offset{kFar}), kFar);
  // And an empty log takes such a batch too: its empty segment gives way to one at that offset
  TempDir other;
  auto empty = SegmentLog::open(other.partition(), Offset{0}, small_segments()).value();
  const Result<void> first = empty->append(batch_at(3 * kFar, 1));
  ASSERT_TRUE(first.ok()) << first.error().message;
  EXPECT_EQ(empty->start_offset(), Offset{3 * kFar});
  EXPECT_EQ(empty->next_offset(), Offset{3 * kFar + 1});
  EXPECT_EQ(first_base(*empty, Offset{3 * kFar}), 3 * kFar);
}

TEST(SegmentLog, ARollWithNoDescriptorsLeftToHandTheSyncerSyncsTheClosedSegmentItself) {
  TempDir dir;
  auto log = SegmentLog::open(dir.partition(), Offset{0}, small_segments()).value();
  // Given a segment one batch short of a roll (the batches are all of one size)
  const std::size_t batch_bytes = batch_at(0, 1).size();
  const std::int64_t fit = static_cast<std::int64_t>(small_segments().segment_bytes / batch_bytes);
  for (std::int64_t i = 0; i < fit; ++i) ASSERT_TRUE(log->append(batch_at(i, 1)).ok());
  ASSERT_EQ(log->segment_count(), 1u);
  // ... in a process with only the three descriptors left that a new segment opens (a low
  // limit, so that filling it stays quick)
  test::DescriptorsUsedUp used_up(3);
  ASSERT_TRUE(used_up.ready());
  // When the next batch rolls the log (its syncer cannot be handed copies of the closed files)
  const Result<void> appended = log->append(batch_at(fit, 1));
  used_up.release();
  // Expect the roll done and the log still whole: the closed segment was synced in place
  ASSERT_TRUE(appended.ok()) << appended.error().message;
  EXPECT_EQ(log->segment_count(), 2u);
  const Result<void> synced = log->sync();
  EXPECT_TRUE(synced.ok()) << synced.error().message;
  EXPECT_TRUE(log->append(batch_at(fit + 1, 1)).ok());
}

}  // namespace
}  // namespace weft::storage
