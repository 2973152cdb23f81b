#include "weft/fabric/log.h"

#include <gtest/gtest.h>

namespace weft {
namespace {

TEST(LogRateLimit, LetsThroughSoManyASecondAndCountsTheRestIntoTheNextLine) {
  LogRateLimit limit(3);
  std::uint64_t held_back = 99;
  for (int i = 0; i < 3; ++i) {
    EXPECT_TRUE(limit.allow(1'000 + i, held_back));
    EXPECT_EQ(held_back, 0u);
  }
  for (int i = 0; i < 10; ++i) EXPECT_FALSE(limit.allow(1'500, held_back));
  EXPECT_FALSE(limit.allow(1'999, held_back));
  // The next second: the eleven held back ride on its first line, and none after it.
  EXPECT_TRUE(limit.allow(2'000, held_back));
  EXPECT_EQ(held_back, 11u);
  EXPECT_TRUE(limit.allow(2'001, held_back));
  EXPECT_EQ(held_back, 0u);
}

TEST(LogRateLimit, ThoseHeldBackAreTakenForASummaryOnceTheirSecondIsOver) {
  LogRateLimit limit(1);
  std::uint64_t held_back = 0;
  EXPECT_TRUE(limit.allow(0, held_back));
  for (int i = 0; i < 5; ++i) EXPECT_FALSE(limit.allow(10, held_back));
  EXPECT_EQ(limit.take_held_back(500), 0u) << "not while the second lasts";
  EXPECT_EQ(limit.take_held_back(1'000), 5u);
  EXPECT_EQ(limit.take_held_back(3'000), 0u);
  EXPECT_TRUE(limit.allow(3'000, held_back));
  EXPECT_EQ(held_back, 0u) << "counted once";
}

TEST(LogRateLimit, ZeroLetsNothingThrough) {
  LogRateLimit limit(0);
  std::uint64_t held_back = 0;
  EXPECT_FALSE(limit.allow(0, held_back));
  EXPECT_FALSE(limit.allow(5'000, held_back));
}

}  // namespace
}  // namespace weft
