// The placement verdict that weft-ring-bench and weft perf print beside their ratios.
#include <gtest/gtest.h>

#include "baselines.h"

namespace {

using weft::bench::cpu_count;
using weft::bench::cross_core_stream_gb_per_sec;
using weft::bench::placement_warning;

TEST(Baselines, OnePlacementThroughoutIsNotWarnedAbout) {
  EXPECT_EQ(placement_warning(49.0, 51.0), "");
  EXPECT_EQ(placement_warning(195.0, 210.0), "");
  EXPECT_EQ(placement_warning(100.0, 150.0), "");  // 1.5x: still one placement
}

TEST(Baselines, APlacementThatMovedDuringTheRunIsWarnedAboutEitherWay) {
  const std::string apart = placement_warning(49.0, 204.0);
  EXPECT_NE(apart.find("49 ns before the runs, 204 ns after"), std::string::npos) << apart;
  EXPECT_NE(placement_warning(200.0, 50.0).find("placement changed"), std::string::npos);
}

TEST(Baselines, ASharedCoreIsWarnedAboutInEitherReading) {
  EXPECT_NE(placement_warning(13.0, 50.0).find("shared a physical core"), std::string::npos);
  EXPECT_NE(placement_warning(50.0, 25.0).find("shared a physical core"), std::string::npos);
  EXPECT_NE(placement_warning(13.0, 0.0).find("shared a physical core"), std::string::npos);
}

TEST(Baselines, AReadingNotTakenIsNotJudged) {
  EXPECT_EQ(placement_warning(50.0, 0.0), "");
  EXPECT_EQ(placement_warning(0.0, 200.0), "");
}

TEST(Baselines, TheCrossCoreStreamMovesBytesBetweenTwoProcesses) {
  // Given a short run between the first two cpus (the same cpu when there is only one)
  const int other = cpu_count() > 1 ? 1 : 0;
  // Expect: a rate, not the -1 of a run that could not be set up or whose reader stopped
  const double gbs = cross_core_stream_gb_per_sec(0, other, std::size_t{1} << 20, 0.05);
  EXPECT_GT(gbs, 0.0);
}

}  // namespace
