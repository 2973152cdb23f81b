// The io_uring wrapper: refused set-ups fail cleanly, writes and reads complete with their
// tags, and a ring going away waits for what it holds.
#include "weft/fabric/io_ring.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <set>
#include <string>
#include <vector>

#include "../io_uring_allowed.h"
#include "../temp_dir.h"

namespace weft {
namespace {

using test::io_uring_allowed;

TEST(IoRing, ARefusedSetUpReturnsNothingAndSaysWhy) {
  // Given a ring the kernel refuses (no entries)
  std::string why;
  // Expect no ring, no crash, and the reason
  EXPECT_EQ(IoRing::create(0, &why), nullptr);
  EXPECT_NE(why.find("io_uring_queue_init"), std::string::npos) << why;
  EXPECT_EQ(IoRing::create(0, nullptr), nullptr);
}

TEST(IoRing, WritesAndReadsCompleteWithTheirTags) {
  if (!io_uring_allowed()) GTEST_SKIP() << "io_uring: disabled by /proc/sys/kernel/io_uring_disabled";
  test::TempDir dir;
  const std::string path = dir.path() + "/data";
  const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  ASSERT_GE(fd, 0) << std::strerror(errno);
  std::string why;
  std::unique_ptr<IoRing> ring = IoRing::create(8, &why);
  if (!ring) GTEST_SKIP() << "io_uring refused here: " << why;
  // Given four 64 KiB writes in flight at once
  std::vector<std::vector<std::byte>> blocks;
  for (int i = 0; i < 4; ++i) blocks.emplace_back(65536, std::byte(0x10 + i));
  for (std::uint64_t i = 0; i < 4; ++i) ASSERT_TRUE(ring->write(fd, blocks[i], i * 65536, 100 + i));
  // Expect each completed once, whole, with its tag (bounded: 4 reaps of at least one each)
  std::set<std::uint64_t> tags;
  IoCompletion done[4];
  for (int round = 0; round < 4 && tags.size() < 4; ++round) {
    const std::size_t got = ring->reap(done, true);
    for (std::size_t i = 0; i < got; ++i) {
      EXPECT_EQ(done[i].result, 65536);
      tags.insert(done[i].tag);
    }
  }
  EXPECT_EQ(tags, (std::set<std::uint64_t>{100, 101, 102, 103}));
  EXPECT_EQ(ring->in_flight(), 0u);
  // ... and a read of the third block back, left in flight when the ring goes away (it waits)
  std::vector<std::byte> back(65536);
  ASSERT_TRUE(ring->read(fd, back, 2 * 65536, 7));
  ring.reset();
  EXPECT_EQ(back, blocks[2]);
  ::close(fd);
}

}  // namespace
}  // namespace weft
