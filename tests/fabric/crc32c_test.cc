// CRC-32C: published check values, the SSE4.2 and table paths against each other and against a
// bit-at-a-time reference, and chaining with crc32c_extend.
#include "weft/fabric/crc32c.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <random>
#include <span>
#include <string_view>
#include <vector>

namespace weft {
namespace {

// The definition itself, one bit at a time: shares no table or instruction with the library.
std::uint32_t reference_crc32c_from(std::uint32_t start, const std::byte* p, std::size_t n) {
  std::uint32_t crc = ~start;
  for (std::size_t i = 0; i < n; ++i) {
    crc ^= std::to_integer<std::uint32_t>(p[i]);
    for (int bit = 0; bit < 8; ++bit) crc = (crc >> 1) ^ ((crc & 1u) != 0 ? 0x82F63B78u : 0u);
  }
  return ~crc;
}

std::uint32_t reference_crc32c(const std::byte* p, std::size_t n) { return reference_crc32c_from(0, p, n); }

std::vector<std::byte> bytes_of(std::string_view s) {
  std::vector<std::byte> out(s.size());
  for (std::size_t i = 0; i < s.size(); ++i) out[i] = static_cast<std::byte>(s[i]);
  return out;
}

std::vector<std::byte> random_bytes(std::size_t n, std::uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> byte(0, 255);
  std::vector<std::byte> out(n);
  for (std::byte& b : out) b = static_cast<std::byte>(byte(rng));
  return out;
}

void record_path() {
  const char* path = crc32c_path_name(crc32c_chosen_path());
  ::testing::Test::RecordProperty("crc32c_path", path);
  std::printf("crc32c: the chosen path is %s\n", path);
}

constexpr std::array kAllPaths = {Crc32cPath::kFolding512, Crc32cPath::kInstruction,
                                  Crc32cPath::kPortable};

// The paths this processor has; the others are named so a run shows what it did not cover.
std::vector<Crc32cPath> available_paths() {
  std::vector<Crc32cPath> paths;
  for (Crc32cPath path : kAllPaths) {
    if (crc32c_path_available(path))
      paths.push_back(path);
    else
      std::printf("crc32c: this processor lacks the %s path; not tested here\n", crc32c_path_name(path));
  }
  return paths;
}

struct CheckValue {
  const char* name;
  std::vector<std::byte> input;
  std::uint32_t expected;
};

std::vector<CheckValue> check_values() {
  std::vector<CheckValue> v;
  v.push_back({"empty", {}, 0x00000000u});
  v.push_back({"123456789", bytes_of("123456789"), 0xE3069283u});
  // RFC 3720 (iSCSI) appendix B.4.
  v.push_back({"32 zeros", std::vector<std::byte>(32, std::byte{0x00}), 0x8A9136AAu});
  v.push_back({"32 0xFF", std::vector<std::byte>(32, std::byte{0xFF}), 0x62A8AB43u});
  std::vector<std::byte> ascending(32), descending(32);
  for (std::size_t i = 0; i < 32; ++i) {
    ascending[i] = static_cast<std::byte>(i);
    descending[i] = static_cast<std::byte>(31 - i);
  }
  v.push_back({"32 ascending 0..31", ascending, 0x46DD794Eu});
  v.push_back({"32 descending 31..0", descending, 0x113FDB5Cu});
  return v;
}

TEST(Crc32c, MatchesPublishedCheckValues) {
  record_path();
  for (const CheckValue& c : check_values()) {
    SCOPED_TRACE(c.name);
    // Expect: every path gives the published value.
    EXPECT_EQ(crc32c(c.input), c.expected);
    EXPECT_EQ(crc32c_extend(0, c.input.data(), c.input.size()), c.expected);
    EXPECT_EQ(crc32c_extend_portable(0, c.input.data(), c.input.size()), c.expected);
    EXPECT_EQ(reference_crc32c(c.input.data(), c.input.size()), c.expected);
  }
}

TEST(Crc32c, HardwareAndPortablePathsAgreeAtEveryLengthAndAlignment) {
  record_path();
  // Given: random bytes, read at every offset 0..15 from a 64-byte-aligned start.
  constexpr std::size_t kMaxLength = 300;
  constexpr std::size_t kMaxOffset = 15;
  const std::vector<std::byte> source = random_bytes(kMaxLength + kMaxOffset, 0xC0FFEEu);
  alignas(64) std::array<std::byte, kMaxLength + kMaxOffset + 64> buffer{};
  std::copy(source.begin(), source.end(), buffer.begin());

  for (std::size_t offset = 0; offset <= kMaxOffset; ++offset) {
    for (std::size_t length = 0; length <= kMaxLength; ++length) {
      const std::byte* p = buffer.data() + offset;
      const std::uint32_t reference = reference_crc32c(p, length);
      // Expect: the chosen path, the portable path and the reference agree.
      ASSERT_EQ(crc32c_extend(0, p, length), reference) << "offset " << offset << " length " << length;
      ASSERT_EQ(crc32c_extend_portable(0, p, length), reference) << "offset " << offset << " length " << length;
    }
  }
}

TEST(Crc32c, HardwareAndPortablePathsAgreeOnLongBuffers) {
  // Given: lengths around multiples of 256 and 768 bytes (where a multi-lane loop would switch
  // on or off) and larger, at every offset 0..15.
  const std::vector<std::size_t> lengths = {255,  256,  257,  511,  512,  513,  767,  768,  769,  775,  776,
                                            1023, 1024, 1535, 1536, 1537, 2303, 2304, 2305, 2311, 4096, 65'539};
  constexpr std::size_t kMaxOffset = 15;
  const std::vector<std::byte> source = random_bytes(65'539 + kMaxOffset, 0xBADC0DEu);
  for (std::size_t offset = 0; offset <= kMaxOffset; ++offset) {
    for (std::size_t length : lengths) {
      const std::byte* p = source.data() + offset;
      const std::uint32_t reference = reference_crc32c(p, length);
      // Expect
      ASSERT_EQ(crc32c_extend(0, p, length), reference) << "offset " << offset << " length " << length;
      ASSERT_EQ(crc32c_extend_portable(0, p, length), reference) << "offset " << offset << " length " << length;
      ASSERT_EQ(crc32c_extend(0x12345678u, p, length), crc32c_extend_portable(0x12345678u, p, length))
          << "offset " << offset << " length " << length;
    }
  }
}

TEST(Crc32c, EveryPathAgreesWithTheReferenceOnLongBuffersAtEveryAlignment) {
  // Given: lengths on and around each folding loop's strides (16, 64 and 256 bytes) and its
  // thresholds, read at offsets 0..63 from a 64-byte-aligned start, from a non-zero CRC too.
  std::vector<std::size_t> lengths;
  for (std::size_t base : {64u, 256u, 511u, 512u, 513u, 1024u, 4096u, 65'536u})
    for (std::size_t delta = 0; delta <= 33; ++delta) lengths.push_back(base + delta);
  constexpr std::size_t kMaxOffset = 63;
  const std::vector<std::byte> source = random_bytes(65'536 + 33 + kMaxOffset, 0x5EED5u);
  std::vector<std::byte> aligned(source.size() + 64);
  std::byte* start = aligned.data() + (64 - reinterpret_cast<std::uintptr_t>(aligned.data()) % 64) % 64;
  std::copy(source.begin(), source.end(), start);

  const std::vector<Crc32cPath> paths = available_paths();
  ASSERT_FALSE(paths.empty());
  for (std::size_t length : lengths) {
    for (std::size_t offset = 0; offset <= kMaxOffset; offset += (length > 5000 ? 21 : 1)) {
      const std::byte* p = start + offset;
      const std::uint32_t reference = reference_crc32c(p, length);
      const std::uint32_t continued = reference_crc32c_from(0xDEADBEEFu, p, length);
      for (Crc32cPath path : paths) {
        // Expect: each path gives the definition's value, from 0 and from a running CRC.
        ASSERT_EQ(crc32c_extend_on(path, 0, p, length), reference)
            << crc32c_path_name(path) << " offset " << offset << " length " << length;
        ASSERT_EQ(crc32c_extend_on(path, 0xDEADBEEFu, p, length), continued)
            << crc32c_path_name(path) << " offset " << offset << " length " << length;
      }
    }
  }
}

TEST(Crc32c, EveryPathAgreesOnShortBuffersAndPatternsThatFoldToZero) {
  // Given: every length up to 300, and long buffers of zeros and of 0xFF, whose folded blocks
  // cancel or repeat (a wrong constant that survives random data rarely survives these).
  const std::vector<std::byte> random = random_bytes(300, 99);
  for (Crc32cPath path : available_paths()) {
    for (std::size_t length = 0; length <= random.size(); ++length)
      ASSERT_EQ(crc32c_extend_on(path, 7, random.data(), length), reference_crc32c_from(7, random.data(), length))
          << crc32c_path_name(path) << " length " << length;
    for (std::byte fill : {std::byte{0x00}, std::byte{0xFF}}) {
      const std::vector<std::byte> flat(3000, fill);
      ASSERT_EQ(crc32c_extend_on(path, 0, flat.data(), flat.size()), reference_crc32c(flat.data(), flat.size()))
          << crc32c_path_name(path);
    }
  }
}

TEST(Crc32c, PathsAgreeWhenContinuingFromANonZeroCrc) {
  // Given: a running CRC that is not 0, so the pre- and post-inversion are exercised.
  const std::vector<std::byte> data = random_bytes(257, 7);
  for (std::uint32_t start : {0x00000001u, 0xFFFFFFFFu, 0xDEADBEEFu, 0x80000000u}) {
    for (std::size_t length = 0; length <= data.size(); ++length) {
      // Expect
      ASSERT_EQ(crc32c_extend(start, data.data(), length), crc32c_extend_portable(start, data.data(), length))
          << "start " << start << " length " << length;
    }
  }
}

TEST(Crc32c, ExtendChainedOverAnySplitEqualsOneShot) {
  // Given
  const std::vector<std::byte> data = random_bytes(2000, 42);
  const std::uint32_t whole = crc32c(data);
  ASSERT_EQ(whole, reference_crc32c(data.data(), data.size()));

  for (std::size_t split = 0; split <= data.size(); ++split) {
    const std::byte* p = data.data();
    // Expect: two pieces, on both paths, give the one-shot value.
    const std::uint32_t head = crc32c_extend(0, p, split);
    EXPECT_EQ(crc32c_extend(head, p + split, data.size() - split), whole) << "split " << split;
    const std::uint32_t head_portable = crc32c_extend_portable(0, p, split);
    EXPECT_EQ(crc32c_extend_portable(head_portable, p + split, data.size() - split), whole) << "split " << split;
  }
}

TEST(Crc32c, ExtendOneByteAtATimeEqualsOneShot) {
  // Given
  const std::vector<std::byte> data = random_bytes(100, 3);
  std::uint32_t crc = 0;
  std::uint32_t crc_portable = 0;
  for (const std::byte& b : data) {
    crc = crc32c_extend(crc, &b, 1);
    crc_portable = crc32c_extend_portable(crc_portable, &b, 1);
  }
  // Expect
  EXPECT_EQ(crc, crc32c(data));
  EXPECT_EQ(crc_portable, crc32c(data));
}

TEST(Crc32c, ExtendByAnEmptyBufferKeepsTheCrc) {
  const std::vector<std::byte> data = bytes_of("123456789");
  const std::uint32_t crc = crc32c(data);
  // Expect: no bytes, no change, on both paths.
  EXPECT_EQ(crc32c_extend(crc, data.data(), 0), crc);
  EXPECT_EQ(crc32c_extend_portable(crc, data.data(), 0), crc);
}

TEST(Crc32c, UsesTheInstructionWhereTheProcessorHasIt) {
#if defined(__x86_64__)
  EXPECT_EQ(crc32c_hardware(), __builtin_cpu_supports("sse4.2") != 0);
  // Expect: the fastest path the processor has is the one chosen.
  const bool vpclmul = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
                       __builtin_cpu_supports("vpclmulqdq") && __builtin_cpu_supports("pclmul") &&
                       __builtin_cpu_supports("sse4.2");
  const Crc32cPath expected = vpclmul                            ? Crc32cPath::kFolding512
                              : __builtin_cpu_supports("sse4.2") ? Crc32cPath::kInstruction
                                                                 : Crc32cPath::kPortable;
  EXPECT_EQ(crc32c_chosen_path(), expected);
#else
  EXPECT_FALSE(crc32c_hardware());
  EXPECT_EQ(crc32c_chosen_path(), Crc32cPath::kPortable);
#endif
  EXPECT_TRUE(crc32c_path_available(Crc32cPath::kPortable));
}

}  // namespace
}  // namespace weft
