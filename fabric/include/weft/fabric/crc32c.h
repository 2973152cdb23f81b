// CRC-32C (Castagnoli), as Kafka's RecordBatch v2 uses it. Chosen at run time by what the
// processor has: AVX-512 carry-less multiply folding for long buffers (VPCLMULQDQ) with the
// SSE4.2 crc32 instruction for short ones and tails, or the instruction alone, or a
// table-driven version. (128-bit PCLMULQDQ folding alone was slower than the instruction's
// three lanes, 8 against 22 GB/s, so it is not offered.)
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

namespace weft {

// Continues a CRC: pass the previous result as `crc` (0 to start).
std::uint32_t crc32c_extend(std::uint32_t crc, const void* data, std::size_t size) noexcept;

inline std::uint32_t crc32c(std::span<const std::byte> bytes) noexcept {
  return crc32c_extend(0, bytes.data(), bytes.size());
}

// The portable implementation, exposed so tests and benches compare both paths.
std::uint32_t crc32c_extend_portable(std::uint32_t crc, const void* data, std::size_t size) noexcept;
// True when the SSE4.2 path is in use.
bool crc32c_hardware() noexcept;

// Every implementation, fastest first; tests and benches run each one the processor has.
enum class Crc32cPath { kFolding512, kInstruction, kPortable };
Crc32cPath crc32c_chosen_path() noexcept;
bool crc32c_path_available(Crc32cPath path) noexcept;
// As crc32c_extend on `path` (on the chosen path if this processor lacks it).
std::uint32_t crc32c_extend_on(Crc32cPath path, std::uint32_t crc, const void* data, std::size_t size) noexcept;
const char* crc32c_path_name(Crc32cPath path) noexcept;

}  // namespace weft
