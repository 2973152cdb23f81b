// CRC-32C (Castagnoli), as Kafka's RecordBatch v2 uses it. The SSE4.2 instruction is chosen
// at run time where the processor has it; a table-driven version serves elsewhere.
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

}  // namespace weft
