#include "weft/fabric/crc32c.h"

#include <array>
#include <cstring>

#if defined(__x86_64__)
#include <immintrin.h>
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

// The instruction path from register c (not inverted) on; returns the finished CRC.
__attribute__((target("sse4.2"))) std::uint32_t instruction_from(std::uint64_t c, const std::uint8_t* p,
                                                                 std::size_t n) noexcept {
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

__attribute__((target("sse4.2"))) std::uint32_t instruction(std::uint32_t crc, const std::uint8_t* p,
                                                            std::size_t n) noexcept {
  return instruction_from(~crc, p, n);
}

// Folding with carry-less multiplies, for long buffers: 16-byte blocks are kept as polynomials
// congruent (mod P) to the bytes read so far, multiplied forward by x^distance and added to the
// blocks that distance later; the last 16 bytes are reduced with the crc32 instruction, so no
// Barrett step is needed. A 64-bit lane's bit i stands for x^(63-i) (reflected order), and
// clmul of two such lanes yields their product times x, hence the constants' x^(k-1).
struct FoldConstants {
  std::uint64_t low;   // multiplies a block's first 8 bytes: x^(distance + 64 - 1) mod P
  std::uint64_t high;  // multiplies its last 8 bytes: x^(distance - 1) mod P
};
constexpr FoldConstants fold_by(std::size_t distance_bits) {
  // x_power(k) in the 32-bit reflected form (bit 31 is x^0) sits in the lane's top 32 bits.
  auto x_power = [](std::size_t k) {
    std::uint32_t result = 1u << 31;
    std::uint32_t power = 1u << 30;
    for (; k != 0; k >>= 1) {
      if (k & 1) result = multiply_mod_p(power, result);
      power = multiply_mod_p(power, power);
    }
    return static_cast<std::uint64_t>(result) << 32;
  };
  return {x_power(distance_bits + 63), x_power(distance_bits - 1)};
}
constexpr FoldConstants kFold128 = fold_by(128);
constexpr FoldConstants kFold512 = fold_by(512);
constexpr FoldConstants kFold2048 = fold_by(2048);
constexpr FoldConstants kFold384 = fold_by(384);
constexpr FoldConstants kFold256 = fold_by(256);

#define WEFT_CLMUL_TARGET __attribute__((target("sse4.2,pclmul")))
#define WEFT_VPCLMUL_TARGET __attribute__((target("sse4.2,pclmul,avx512f,avx512vl,vpclmulqdq")))

WEFT_CLMUL_TARGET inline __m128i fold16(__m128i x, __m128i k, __m128i next) noexcept {
  return _mm_xor_si128(_mm_xor_si128(_mm_clmulepi64_si128(x, k, 0x00), _mm_clmulepi64_si128(x, k, 0x11)), next);
}
WEFT_CLMUL_TARGET inline __m128i constants(const FoldConstants& f) noexcept {
  return _mm_set_epi64x(static_cast<long long>(f.high), static_cast<long long>(f.low));
}
WEFT_CLMUL_TARGET inline __m128i load16(const std::uint8_t* p) noexcept {
  return _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
}
// The register after a folded block: the CRC of its 16 bytes (the start register is in them).
WEFT_CLMUL_TARGET inline std::uint64_t reduce(__m128i x) noexcept {
  const auto low = static_cast<std::uint64_t>(_mm_cvtsi128_si64(x));
  const auto high = static_cast<std::uint64_t>(_mm_extract_epi64(x, 1));
  return _mm_crc32_u64(_mm_crc32_u64(0, low), high);
}

WEFT_VPCLMUL_TARGET inline __m512i broadcast(const FoldConstants& f) noexcept {
  const auto low = static_cast<long long>(f.low);
  const auto high = static_cast<long long>(f.high);
  return _mm512_set_epi64(high, low, high, low, high, low, high, low);
}
WEFT_VPCLMUL_TARGET inline __m512i fold64(__m512i x, __m512i k, __m512i next) noexcept {
  // 0x96: a ^ b ^ c.
  return _mm512_ternarylogic_epi64(_mm512_clmulepi64_epi128(x, k, 0x00), _mm512_clmulepi64_epi128(x, k, 0x11), next, 0x96);
}

// Four 64-byte accumulators 256 bytes apart, each four 16-byte blocks; n >= 256.
WEFT_VPCLMUL_TARGET std::uint32_t folding512(std::uint32_t crc, const std::uint8_t* p, std::size_t n) noexcept {
  __m512i x0 = _mm512_xor_si512(_mm512_loadu_si512(p), _mm512_set_epi64(0, 0, 0, 0, 0, 0, 0, ~crc));
  __m512i x1 = _mm512_loadu_si512(p + 64), x2 = _mm512_loadu_si512(p + 128), x3 = _mm512_loadu_si512(p + 192);
  p += 256;
  n -= 256;
  const __m512i k2048 = broadcast(kFold2048);
  for (; n >= 256; p += 256, n -= 256) {
    x0 = fold64(x0, k2048, _mm512_loadu_si512(p));
    x1 = fold64(x1, k2048, _mm512_loadu_si512(p + 64));
    x2 = fold64(x2, k2048, _mm512_loadu_si512(p + 128));
    x3 = fold64(x3, k2048, _mm512_loadu_si512(p + 192));
  }
  const __m512i k512 = broadcast(kFold512);
  __m512i x = fold64(fold64(fold64(x0, k512, x1), k512, x2), k512, x3);
  for (; n >= 64; p += 64, n -= 64) x = fold64(x, k512, _mm512_loadu_si512(p));
  // The four 16-byte lanes, earliest first, each moved past the ones after it (the last one,
  // multiplied by 0, is added as it is).
  const __m512i to_end = _mm512_set_epi64(0, 0, static_cast<long long>(kFold128.high), static_cast<long long>(kFold128.low),
                                          static_cast<long long>(kFold256.high), static_cast<long long>(kFold256.low),
                                          static_cast<long long>(kFold384.high), static_cast<long long>(kFold384.low));
  alignas(64) std::uint64_t lanes[8];
  _mm512_store_si512(lanes, _mm512_ternarylogic_epi64(_mm512_clmulepi64_epi128(x, to_end, 0x00),
                                                      _mm512_clmulepi64_epi128(x, to_end, 0x11),
                                                      _mm512_maskz_mov_epi64(0xC0, x), 0x96));
  __m128i folded = _mm_set_epi64x(static_cast<long long>(lanes[1] ^ lanes[3] ^ lanes[5] ^ lanes[7]),
                                  static_cast<long long>(lanes[0] ^ lanes[2] ^ lanes[4] ^ lanes[6]));
  const __m128i k128 = constants(kFold128);
  for (; n >= 16; p += 16, n -= 16) folded = fold16(folded, k128, load16(p));
  return instruction_from(reduce(folded), p, n);
}

// Below this size the three crc32 lanes are as fast (crc32c_bench).
constexpr std::size_t kFolding512From = 256;

WEFT_VPCLMUL_TARGET std::uint32_t hardware_folding512(std::uint32_t crc, const std::uint8_t* p, std::size_t n) noexcept {
  return n >= kFolding512From ? folding512(crc, p, n) : instruction(crc, p, n);
}
#endif

using CrcFn = std::uint32_t (*)(std::uint32_t, const std::uint8_t*, std::size_t) noexcept;

CrcFn path_function(Crc32cPath path) noexcept {
  switch (path) {
#if defined(__x86_64__)
    case Crc32cPath::kFolding512:
      return __builtin_cpu_supports("sse4.2") && __builtin_cpu_supports("pclmul") &&
                     __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
                     __builtin_cpu_supports("vpclmulqdq")
                 ? &hardware_folding512
                 : nullptr;
    case Crc32cPath::kInstruction:
      return __builtin_cpu_supports("sse4.2") ? &instruction : nullptr;
#else
    case Crc32cPath::kFolding512:
    case Crc32cPath::kInstruction:
      return nullptr;
#endif
    case Crc32cPath::kPortable:
      return &portable;
  }
  return nullptr;
}

Crc32cPath choose() noexcept {
  for (Crc32cPath path : {Crc32cPath::kFolding512, Crc32cPath::kInstruction})
    if (path_function(path) != nullptr) return path;
  return Crc32cPath::kPortable;
}

const Crc32cPath kChosenPath = choose();
const CrcFn kChosen = path_function(kChosenPath);

}  // namespace

std::uint32_t crc32c_extend(std::uint32_t crc, const void* data, std::size_t size) noexcept {
  return kChosen(crc, static_cast<const std::uint8_t*>(data), size);
}

std::uint32_t crc32c_extend_portable(std::uint32_t crc, const void* data, std::size_t size) noexcept {
  return portable(crc, static_cast<const std::uint8_t*>(data), size);
}

bool crc32c_hardware() noexcept { return kChosenPath != Crc32cPath::kPortable; }

Crc32cPath crc32c_chosen_path() noexcept { return kChosenPath; }

bool crc32c_path_available(Crc32cPath path) noexcept { return path_function(path) != nullptr; }

std::uint32_t crc32c_extend_on(Crc32cPath path, std::uint32_t crc, const void* data, std::size_t size) noexcept {
  const CrcFn fn = path_function(path);
  return (fn != nullptr ? fn : kChosen)(crc, static_cast<const std::uint8_t*>(data), size);
}

const char* crc32c_path_name(Crc32cPath path) noexcept {
  switch (path) {
    case Crc32cPath::kFolding512: return "vpclmulqdq";
    case Crc32cPath::kInstruction: return "sse4.2";
    case Crc32cPath::kPortable: return "portable";
  }
  return "unknown";
}

}  // namespace weft
