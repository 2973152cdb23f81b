// The segment: Kafka's file names and index layouts, appends, lookups by offset and time,
// reading whole batches, and recovery (torn tails cut in the last segment, corruption refused
// elsewhere, indexes rebuilt).
#include "weft/storage/segment.h"

#include <gtest/gtest.h>
#include <fcntl.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "weft/fabric/record_batch.h"
#include "../io_uring_allowed.h"
#include "../temp_dir.h"
#include "test_batches.h"

namespace weft::storage {
namespace {

using test::TempDir;

using test::make_batch;

struct Written {
  std::vector<std::int64_t> bases;
  std::vector<int> counts;
};

// 300 batches of 1..5 records, with a gap of 3 offsets after every 50th (an aborted claim).
Written fill(Segment& s) {
  Written w;
  std::int64_t offset = s.next_offset().value;
  for (int i = 0; i < 300; ++i) {
    const int n = 1 + i % 5;
    const std::vector<std::byte> batch = make_batch(offset, n, 1'000'000 + offset * 10);
    EXPECT_TRUE(s.append(batch).ok());
    w.bases.push_back(offset);
    w.counts.push_back(n);
    offset += n + (i % 50 == 49 ? 3 : 0);
  }
  return w;
}

std::int64_t base_at(Segment& s, std::uint64_t position) {
  std::vector<std::byte> buffer(1 << 16);
  Result<std::size_t> got = s.read(position, buffer);
  EXPECT_TRUE(got.ok());
  return got.ok() && *got > 0 ? wire::load_be64(buffer.data()) : -1;
}

TEST(Segment, FilesAreNamedByBaseOffsetAsKafkaNamesThem) {
  EXPECT_EQ(segment_file_name(Offset{0}, ".log"), "00000000000000000000.log");
  EXPECT_EQ(segment_file_name(Offset{1234567}, ".timeindex"), "00000000000001234567.timeindex");
  TempDir dir;
  Result<Segment> s = Segment::create(dir.path(), Offset{42});
  ASSERT_TRUE(s.ok()) << s.error().message;
  for (const char* ext : {".log", ".index", ".timeindex"})
    EXPECT_TRUE(std::filesystem::exists(dir.path() + "/00000000000000000042" + ext)) << ext;
  EXPECT_EQ(Segment::create(dir.path(), Offset{42}).error().code, Errc::kAlreadyExists);
  EXPECT_EQ(Segment::open(dir.path(), Offset{7}, true).error().code, Errc::kNotFound);
}

TEST(Segment, FindsEveryOffsetAndSkipsGaps) {
  TempDir dir;
  Segment s = Segment::create(dir.path(), Offset{1000}).value();
  const Written w = fill(s);
  for (std::size_t i = 0; i < w.bases.size(); ++i) {
    for (int k = 0; k < w.counts[i]; ++k) {
      Result<std::uint64_t> at = s.find(Offset{w.bases[i] + k});
      ASSERT_TRUE(at.ok()) << at.error().message;
      EXPECT_EQ(base_at(s, *at), w.bases[i]);
    }
  }
  EXPECT_EQ(s.find(Offset{999}).error().code, Errc::kOutOfRange);
  EXPECT_EQ(s.find(s.next_offset()).error().code, Errc::kOutOfRange);
  // An offset an aborted claim skipped lies in no batch: the next batch is where reading goes on.
  const std::int64_t gap = w.bases[49] + w.counts[49];
  Result<std::uint64_t> after_gap = s.find(Offset{gap});
  ASSERT_TRUE(after_gap.ok());
  EXPECT_EQ(base_at(s, *after_gap), w.bases[50]);
  // Appending behind the end is refused.
  EXPECT_EQ(s.append(make_batch(1000, 1, 0)).error().code, Errc::kInvalidArgument);
}

TEST(Segment, IndexesFollowKafkasLayoutAndInterval) {
  TempDir dir;
  Segment s = Segment::create(dir.path(), Offset{0}).value();
  (void)fill(s);
  ASSERT_GT(s.index().size(), 5u);
  // Entries about every 4 KiB of log, increasing in both fields.
  for (std::size_t i = 1; i < s.index().size(); ++i) {
    EXPECT_GT(s.index()[i].relative_offset, s.index()[i - 1].relative_offset);
    const auto gap = s.index()[i].position - s.index()[i - 1].position;
    EXPECT_GE(gap, 4096);
    EXPECT_LT(gap, 4096 + 1024);
  }
  // The index file (written with the log, at flush): 8 bytes an entry, big-endian relative
  // offset then position.
  ASSERT_TRUE(s.flush().ok());
  std::ifstream in(dir.path() + "/00000000000000000000.index", std::ios::binary);
  std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  ASSERT_EQ(bytes.size(), s.index().size() * 8);
  const auto* p = reinterpret_cast<const std::byte*>(bytes.data());
  EXPECT_EQ(wire::load_be32(p + 8), s.index()[1].relative_offset);
  EXPECT_EQ(wire::load_be32(p + 12), s.index()[1].position);
  std::ifstream tin(dir.path() + "/00000000000000000000.timeindex", std::ios::binary);
  std::vector<char> tbytes((std::istreambuf_iterator<char>(tin)), std::istreambuf_iterator<char>());
  EXPECT_EQ(tbytes.size(), s.time_index().size() * 12);
}

TEST(Segment, FindsByTimeTheFirstBatchAtOrAfterIt) {
  TempDir dir;
  Segment s = Segment::create(dir.path(), Offset{0}).value();
  const Written w = fill(s);
  // Timestamps are 1'000'000 + offset * 10 + i within a batch: the batch holding offset o has
  // a max timestamp of at least 1'000'000 + o * 10.
  const std::size_t i = 137;
  Result<std::uint64_t> at = s.find_time(1'000'000 + w.bases[i] * 10);
  ASSERT_TRUE(at.ok()) << at.error().message;
  EXPECT_EQ(base_at(s, *at), w.bases[i]);
  Result<std::uint64_t> first = s.find_time(0);
  ASSERT_TRUE(first.ok());
  EXPECT_EQ(*first, 0u);
  EXPECT_EQ(s.find_time(1'000'000'000'000).error().code, Errc::kOutOfRange);
}

TEST(Segment, ReadsWholeBatchesOnly) {
  TempDir dir;
  Segment s = Segment::create(dir.path(), Offset{0}).value();
  (void)fill(s);
  std::vector<std::byte> buffer(1000);
  Result<std::size_t> got = s.read(0, buffer);
  ASSERT_TRUE(got.ok());
  ASSERT_GT(*got, 0u);
  // Every batch in what came back parses with its CRC, and nothing is cut.
  std::size_t at = 0;
  while (at < *got) {
    const std::size_t total = kBatchLogOverhead + static_cast<std::uint32_t>(wire::load_be32(buffer.data() + at + batch_field::kBatchLength));
    ASSERT_LE(at + total, *got);
    EXPECT_TRUE(BatchView::parse(std::span<const std::byte>(buffer.data() + at, total)).ok());
    at += total;
  }
  std::vector<std::byte> tiny(10);
  EXPECT_EQ(s.read(0, tiny).error().code, Errc::kResourceExhausted);  // the first batch does not fit
  EXPECT_EQ(s.read(s.size_bytes(), buffer).value(), 0u);
}

TEST(Segment, ReopensToTheSameStateAndRebuildsIndexes) {
  TempDir dir;
  Offset next;
  std::uint64_t size = 0;
  std::vector<IndexEntry> index;
  {
    Segment s = Segment::create(dir.path(), Offset{500}).value();
    (void)fill(s);
    ASSERT_TRUE(s.sync().ok());
    next = s.next_offset();
    size = s.size_bytes();
    index = s.index();
  }
  std::filesystem::remove(dir.path() + "/00000000000000000500.index");  // a lost index
  SegmentRecovery recovery;
  Result<Segment> s = Segment::open(dir.path(), Offset{500}, true, &recovery);
  ASSERT_TRUE(s.ok()) << s.error().message;
  EXPECT_EQ(s->next_offset(), next);
  EXPECT_EQ(s->size_bytes(), size);
  EXPECT_EQ(recovery.batches, 300u);
  EXPECT_EQ(recovery.truncated_bytes, 0u);
  EXPECT_TRUE(recovery.index_rebuilt);
  ASSERT_EQ(s->index().size(), index.size());
  for (std::size_t i = 0; i < index.size(); ++i) EXPECT_EQ(s->index()[i].position, index[i].position);
  EXPECT_EQ(std::filesystem::file_size(dir.path() + "/00000000000000000500.index"), index.size() * 8);
  // And it carries on where it stopped.
  EXPECT_TRUE(s->append(make_batch(next.value, 2, 5)).ok());
}

TEST(Segment, ATornTailOfTheLastSegmentIsCutAndReported) {
  TempDir dir;
  std::uint64_t size = 0;
  Written w;
  {
    Segment s = Segment::create(dir.path(), Offset{0}).value();
    w = fill(s);
    size = s.size_bytes();
  }
  const std::string log = dir.path() + "/00000000000000000000.log";
  // Every cut inside the last batch leaves the batches before it and nothing else.
  const std::size_t last_bytes = make_batch(0, w.counts.back(), 0).size();
  for (const std::uint64_t cut : {std::uint64_t{1}, std::uint64_t{12}, std::uint64_t{61}, std::uint64_t{last_bytes - 1}}) {
    SCOPED_TRACE(cut);
    ASSERT_EQ(truncate(log.c_str(), static_cast<off_t>(size - cut)), 0);
    SegmentRecovery recovery;
    Result<Segment> s = Segment::open(dir.path(), Offset{0}, true, &recovery);
    ASSERT_TRUE(s.ok()) << s.error().message;
    EXPECT_EQ(s->next_offset(), Offset{w.bases.back()});
    EXPECT_EQ(recovery.truncated_from, Offset{w.bases.back()});
    EXPECT_EQ(recovery.truncated_bytes, last_bytes - cut);
    EXPECT_FALSE(recovery.reason.empty());
    EXPECT_EQ(std::filesystem::file_size(log), size - last_bytes);
    // Restore the whole last batch for the next cut.
    ASSERT_TRUE(s->append(make_batch(w.bases.back(), w.counts.back(), 1'000'000 + w.bases.back() * 10)).ok());
  }
}

// A closed segment at base 0 in `dir`, filled; `middle` gets batch 150's file position.
Written closed_filled_segment(const std::string& dir, std::uint64_t& middle) {
  Segment s = Segment::create(dir, Offset{0}).value();
  Written w = fill(s);
  middle = s.find(Offset{w.bases[150]}).value();
  EXPECT_TRUE(s.sync().ok());
  EXPECT_TRUE(s.sync_indexes().ok());
  return w;
}

TEST(Segment, CorruptionInAClosedSegmentIsRefusedAndInTheLastIsCut) {
  TempDir dir;
  std::uint64_t middle = 0;
  const Written w = closed_filled_segment(dir.path(), middle);
  const std::string log = dir.path() + "/00000000000000000000.log";
  {
    // One flipped byte in a record of batch 150 (past its header, so only the CRC notices).
    const int fd = ::open(log.c_str(), O_RDWR);
    std::byte b{};
    ASSERT_EQ(pread(fd, &b, 1, static_cast<off_t>(middle + 70)), 1);
    b ^= std::byte{0x10};
    ASSERT_EQ(pwrite(fd, &b, 1, static_cast<off_t>(middle + 70)), 1);
    close(fd);
  }
  Result<Segment> closed = Segment::open(dir.path(), Offset{0}, false);
  ASSERT_FALSE(closed.ok());
  EXPECT_EQ(closed.error().code, Errc::kCorrupt);
  EXPECT_NE(closed.error().message.find("not the last"), std::string::npos) << closed.error().message;

  SegmentRecovery recovery;
  Result<Segment> last = Segment::open(dir.path(), Offset{0}, true, &recovery);
  ASSERT_TRUE(last.ok()) << last.error().message;
  // Batch 149 ends before the gap that precedes batch 150: offsets from its end on were cut.
  EXPECT_EQ(last->next_offset(), Offset{w.bases[149] + w.counts[149]});
  EXPECT_EQ(recovery.truncated_from, Offset{w.bases[149] + w.counts[149]});
  EXPECT_NE(recovery.reason.find("CRC"), std::string::npos) << recovery.reason;
}

TEST(Segment, ABaseOffsetPastWhatTheSegmentCanIndexIsCutNotAddedUp) {
  // Given a segment whose batch 150 has its baseOffset (outside the CRC) overwritten with a
  // value whose last offset would pass INT64_MAX, or merely lie past base + 2^31 (the indexes'
  // 32-bit relative offsets); found by segment_fuzzer (the sum overflowed in find()).
  for (const std::int64_t bad_base : {std::int64_t{INT64_MAX}, std::int64_t{INT64_MAX - 2}, std::int64_t{1} << 32}) {
    SCOPED_TRACE(bad_base);
    TempDir dir;
    std::uint64_t middle = 0;
    const Written w = closed_filled_segment(dir.path(), middle);
    const std::string log = dir.path() + "/00000000000000000000.log";
    {
      const int fd = ::open(log.c_str(), O_RDWR);
      std::byte field[8];
      wire::store_be64(field, bad_base);
      ASSERT_EQ(pwrite(fd, field, 8, static_cast<off_t>(middle)), 8);
      close(fd);
    }
    // Expect: a closed segment is refused and the last one is cut before the batch. (The
    // trusted open reads no batch below its last index entry, by design; segment_fuzzer covers
    // the headers it does read.)
    Result<Segment> closed = Segment::open(dir.path(), Offset{0}, false);
    ASSERT_FALSE(closed.ok());
    EXPECT_EQ(closed.error().code, Errc::kCorrupt);
    SegmentRecovery recovery;
    Result<Segment> last = Segment::open(dir.path(), Offset{0}, true, &recovery);
    ASSERT_TRUE(last.ok()) << last.error().message;
    EXPECT_EQ(last->next_offset(), Offset{w.bases[149] + w.counts[149]});
    EXPECT_NE(recovery.reason.find("past"), std::string::npos) << recovery.reason;
    // And every offset before the cut is still found.
    EXPECT_TRUE(last->find(Offset{w.bases[149]}).ok());
  }
}

// Offset sums of values from a file wrap rather than overflow: constant evaluation refuses
// undefined behaviour, so these would not compile if they overflowed.
static_assert((Offset{INT64_MAX} + 1).value == INT64_MIN);
static_assert((Offset{INT64_MIN} - 1).value == INT64_MAX);
static_assert(Offset{INT64_MIN} - Offset{1} == INT64_MAX);

TEST(Segment, GarbageInTheFileIsCutNeverRead) {
  TempDir dir;
  { (void)Segment::create(dir.path(), Offset{0}).value(); }
  const std::string log = dir.path() + "/00000000000000000000.log";
  for (const std::size_t garbage : {std::size_t{5}, std::size_t{61}, std::size_t{4096}}) {
    SCOPED_TRACE(garbage);
    std::ofstream(log, std::ios::binary | std::ios::trunc) << std::string(garbage, '\xff');
    SegmentRecovery recovery;
    Result<Segment> s = Segment::open(dir.path(), Offset{0}, true, &recovery);
    ASSERT_TRUE(s.ok()) << s.error().message;
    EXPECT_EQ(s->size_bytes(), 0u);
    EXPECT_EQ(recovery.truncated_bytes, garbage);
  }
}

using test::io_uring_allowed;

TEST(Segment, DirectUringPwriteAndBufferedWritesLeaveTheSameFile) {
  // Given the same batches written three ways (whole blocks with O_DIRECT through io_uring, the
  // same with pwrite, everything through the page cache), flushed and submitted at ragged
  // places (small flushes stay buffered, large ones split three ways, a submit for more to come
  // keeps its ragged tail back)
  TempDir dir;
  struct Mode {
    const char* name;
    bool direct;
    bool uring;
  };
  std::vector<std::string> files;
  for (const Mode mode : {Mode{"uring", true, true}, Mode{"pwrite", true, false}, Mode{"buffered", false, false}}) {
    SCOPED_TRACE(mode.name);
    const std::string sub = dir.path() + "/" + mode.name;
    std::filesystem::create_directories(sub);
    SegmentOptions options;
    options.direct_io = mode.direct;
    options.io_uring = mode.uring;
    options.write_buffer_bytes = 300 * 1024;
    options.write_buffers = 2;
    auto segment = Segment::create(sub, Offset{0}, options).value();
    std::int64_t offset = 0;
    for (int i = 0; i < 2000; ++i) {
      const int records = 1 + i % 7;
      const std::vector<std::byte> batch = make_batch(offset, records, 1'700'000'000'000 + offset, 37 + static_cast<std::size_t>(i % 13) * 29);
      ASSERT_TRUE(segment.append(batch).ok());
      offset += records;
      if (i % 97 == 0 || i % 331 == 0) {
        ASSERT_TRUE(segment.flush().ok());
      }
      if (i % 89 == 0) {
        ASSERT_TRUE(segment.submit(i % 2 == 0).ok());
      }
    }
    ASSERT_TRUE(segment.sync().ok());
    EXPECT_EQ(segment.written_bytes(), segment.size_bytes());
    EXPECT_EQ(segment.written_next_offset(), Offset{offset});
    if (mode.uring && io_uring_allowed()) {
      EXPECT_TRUE(segment.writes_with_io_uring()) << "io_uring allowed but not used";
    }
    if (!mode.uring) {
      EXPECT_FALSE(segment.writes_with_io_uring());
    }
    // Expect every batch readable through the segment's own lookups
    EXPECT_EQ(segment.find(Offset{offset - 1}).ok(), true);
    files.push_back(sub + "/" + segment_file_name(Offset{0}, ".log"));
  }
  auto read_all = [](const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), {});
  };
  // Expect identical bytes, and a reopened segment that finds nothing to cut
  const std::string uring_bytes = read_all(files[0]);
  EXPECT_GT(uring_bytes.size(), std::size_t{1} << 20);
  EXPECT_EQ(uring_bytes, read_all(files[1]));
  EXPECT_EQ(uring_bytes, read_all(files[2]));
  SegmentRecovery recovery;
  auto reopened = Segment::open(dir.path() + "/uring", Offset{0}, true, &recovery).value();
  EXPECT_EQ(recovery.truncated_bytes, 0u);
  EXPECT_EQ(recovery.batches, 2000u);
}

TEST(Segment, WrittenBytesFollowFinishedWritesAndStopAtBatchBoundaries) {
  // Given a segment with small buffers, so several direct writes are in flight at once, and
  // batches that straddle block boundaries
  TempDir dir;
  SegmentOptions options;
  options.write_buffer_bytes = 128 * 1024;
  options.write_buffers = 3;
  auto segment = Segment::create(dir.path(), Offset{0}, options).value();
  std::map<std::uint64_t, std::int64_t> next_at_end;  // every batch's end -> the offset after it
  next_at_end[0] = 0;
  std::uint64_t last_written = 0;
  std::int64_t offset = 0;
  for (int i = 0; i < 3000; ++i) {
    const int records = 1 + i % 4;
    const std::vector<std::byte> batch = make_batch(offset, records, 1'700'000'000'000 + offset, 200 + static_cast<std::size_t>(i % 11) * 97);
    ASSERT_TRUE(segment.append(batch).ok());
    offset += records + (i % 100 == 99 ? 2 : 0);  // an aborted claim's gap now and then
    next_at_end[segment.size_bytes()] = segment.next_offset().value;
    if (i % 50 == 0) {
      ASSERT_TRUE(segment.submit(i % 100 != 0).ok());
    }
    if (i % 7 == 0) {
      ASSERT_TRUE(segment.poll_writes().ok());
    }
    // Expect what is shown as written never to go back, never to pass what was appended, and to
    // end where a batch ends, with the offset after that batch
    const std::uint64_t written = segment.written_bytes();
    ASSERT_GE(written, last_written);
    ASSERT_LE(written, segment.size_bytes());
    auto at = next_at_end.find(written);
    ASSERT_NE(at, next_at_end.end()) << "written_bytes " << written << " is inside a batch";
    ASSERT_EQ(segment.written_next_offset().value, at->second);
    last_written = written;
  }
  // ... and after a flush, everything
  ASSERT_TRUE(segment.flush().ok());
  EXPECT_EQ(segment.written_bytes(), segment.size_bytes());
  EXPECT_EQ(segment.written_next_offset(), segment.next_offset());
  EXPECT_FALSE(segment.writes_in_flight());
  EXPECT_GT(last_written, 0u) << "no write finished before the flush: nothing was tested";
}

}  // namespace
}  // namespace weft::storage
