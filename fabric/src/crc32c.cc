#include "weft/fabric/crc32c.h"

#include <array>
#include <cstring>

#if defined(__x86_64__)
#include <nmmintrin.h>
#endif

namespace weft {
namespace {

constexpr std::uint32_t kPolynomial = 0x82F63B78u;  // CRC-32C, reflected

// Slicing-by-8 tables: table[k][b] is the CRC of byte b followed by k zero bytes.
constexpr std::array<std::array<std::uint32_t, 256>, 8> make_tables() {
  std::array<std::array<std::uint32_t, 256>, 8> t{};
  for (std::uint32_t b = 0; b < 256; ++b) {
    std::uint32_t c = b;
    for (int i = 0; i < 8; ++i) c = (c >> 1) ^ ((c & 1u) ? kPolynomial : 0u);
    t[0][b] = c;
  }
  for (std::size_t k = 1; k < 8; ++k)
    for (std::uint32_t b = 0; b < 256; ++b) t[k][b] = (t[k - 1][b] >> 8) ^ t[0][t[k - 1][b] & 0xFFu];
  return t;
}
constexpr auto kTables = make_tables();

std::uint32_t portable(std::uint32_t crc, const std::uint8_t* p, std::size_t n) noexcept {
  crc = ~crc;
  while (n >= 8) {
    std::uint64_t word;
    std::memcpy(&word, p, 8);  // little-endian hosts only, as everywhere in weft
    word ^= crc;
    crc = kTables[7][word & 0xFF] ^ kTables[6][(word >> 8) & 0xFF] ^ kTables[5][(word >> 16) & 0xFF] ^
          kTables[4][(word >> 24) & 0xFF] ^ kTables[3][(word >> 32) & 0xFF] ^
          kTables[2][(word >> 40) & 0xFF] ^ kTables[1][(word >> 48) & 0xFF] ^ kTables[0][word >> 56];
    p += 8;
    n -= 8;
  }
  while (n--) crc = (crc >> 8) ^ kTables[0][(crc ^ *p++) & 0xFFu];
  return ~crc;
}

// Multiplies two polynomials modulo the CRC polynomial (reflected bit order).
constexpr std::uint32_t multiply_mod_p(std::uint32_t a, std::uint32_t b) {
  std::uint32_t product = 0;
  for (std::uint32_t bit = 1u << 31; bit != 0; bit >>= 1) {
    if (a & bit) product ^= b;
    b = (b & 1u) ? (b >> 1) ^ kPolynomial : b >> 1;
  }
  return product;
}

// x^(8 * bytes) mod P: the operator that appends `bytes` zero bytes to a CRC register.
constexpr std::uint32_t zeros_operator(std::size_t bytes) {
  std::uint32_t result = 1u << 31;  // x^0
  std::uint32_t power = 1u << 30;   // x^1
  for (std::size_t bits = bytes * 8; bits != 0; bits >>= 1) {
    if (bits & 1) result = multiply_mod_p(power, result);
    power = multiply_mod_p(power, power);
  }
  return result;
}

// Byte tables applying a zeros operator to a register in four lookups.
using ShiftTable = std::array<std::array<std::uint32_t, 256>, 4>;
constexpr ShiftTable make_shift_table(std::size_t bytes) {
  const std::uint32_t op = zeros_operator(bytes);
  ShiftTable t{};
  for (std::uint32_t k = 0; k < 4; ++k)
    for (std::uint32_t b = 0; b < 256; ++b) t[k][b] = multiply_mod_p(op, b << (8 * k));
  return t;
}

inline std::uint32_t shift(const ShiftTable& t, std::uint32_t crc) noexcept {
  return t[0][crc & 0xFF] ^ t[1][(crc >> 8) & 0xFF] ^ t[2][(crc >> 16) & 0xFF] ^ t[3][crc >> 24];
}

// Three independent lanes hide the crc32 instruction's 3-cycle latency; lanes are joined by
// shifting the earlier ones past the later ones (CRC is linear).
constexpr std::size_t kLane = 256;
const ShiftTable kShiftLane = make_shift_table(kLane);
const ShiftTable kShiftTwoLanes = make_shift_table(2 * kLane);
// Short lanes for batches of one or a few records (about 100 to 700 bytes).
constexpr std::size_t kShortLane = 32;
const ShiftTable kShiftShortLane = make_shift_table(kShortLane);
const ShiftTable kShiftTwoShortLanes = make_shift_table(2 * kShortLane);

#if defined(__x86_64__)
// Consumes whole blocks of three `Lane`-byte lanes from p/n into the register c.
template <std::size_t Lane>
__attribute__((target("sse4.2"))) inline void three_lanes(std::uint64_t& c, const std::uint8_t*& p, std::size_t& n,
                                                         const ShiftTable& shift_one, const ShiftTable& shift_two) noexcept {
  while (n >= 3 * Lane) {
    std::uint64_t b = 0;
    std::uint64_t d = 0;
    for (std::size_t i = 0; i < Lane; i += 8) {
      std::uint64_t w0, w1, w2;
      std::memcpy(&w0, p + i, 8);
      std::memcpy(&w1, p + Lane + i, 8);
      std::memcpy(&w2, p + 2 * Lane + i, 8);
      c = _mm_crc32_u64(c, w0);
      b = _mm_crc32_u64(b, w1);
      d = _mm_crc32_u64(d, w2);
    }
    c = shift(shift_two, static_cast<std::uint32_t>(c)) ^ shift(shift_one, static_cast<std::uint32_t>(b)) ^ d;
    p += 3 * Lane;
    n -= 3 * Lane;
  }
}

__attribute__((target("sse4.2"))) std::uint32_t hardware(std::uint32_t crc, const std::uint8_t* p,
                                                         std::size_t n) noexcept {
  std::uint64_t c = ~crc;
  three_lanes<kLane>(c, p, n, kShiftLane, kShiftTwoLanes);
  three_lanes<kShortLane>(c, p, n, kShiftShortLane, kShiftTwoShortLanes);
  while (n >= 8) {
    std::uint64_t word;
    std::memcpy(&word, p, 8);
    c = _mm_crc32_u64(c, word);
    p += 8;
    n -= 8;
  }
  auto c32 = static_cast<std::uint32_t>(c);
  if (n >= 4) {
    std::uint32_t word;
    std::memcpy(&word, p, 4);
    c32 = _mm_crc32_u32(c32, word);
    p += 4;
    n -= 4;
  }
  while (n--) c32 = _mm_crc32_u8(c32, *p++);
  return ~c32;
}
#endif

using CrcFn = std::uint32_t (*)(std::uint32_t, const std::uint8_t*, std::size_t) noexcept;

CrcFn choose() noexcept {
#if defined(__x86_64__)
  if (__builtin_cpu_supports("sse4.2")) return &hardware;
#endif
  return &portable;
}

const CrcFn kChosen = choose();

}  // namespace

std::uint32_t crc32c_extend(std::uint32_t crc, const void* data, std::size_t size) noexcept {
  return kChosen(crc, static_cast<const std::uint8_t*>(data), size);
}

std::uint32_t crc32c_extend_portable(std::uint32_t crc, const void* data, std::size_t size) noexcept {
  return portable(crc, static_cast<const std::uint8_t*>(data), size);
}

bool crc32c_hardware() noexcept { return kChosen != &portable; }

}  // namespace weft
