// The codecs of compressed Kafka record batches, in the formats Kafka clients write them.
//
// A batch whose attributes name a codec (record_batch.h, Compression) carries its records
// section (the bytes after the 61-byte header) compressed; weft stores such batches exactly as
// they come and decompresses only to read their records (TopicConsumer does it for you):
//
//   gzip    an RFC 1952 gzip stream (concatenated members are read one after another)
//   snappy  xerial framing, as Kafka's Java producer writes it: magic 82 'SNAPPY' 00, a 4-byte
//           version and a 4-byte compatible version, then blocks each prefixed by its length
//           (4 bytes, big-endian); or one raw snappy block, as librdkafka may write it. The
//           magic tells which.
//   lz4     the LZ4 frame format (not raw LZ4 blocks); concatenated frames are read in turn
//   zstd    zstd frames, with or without the content size in their header
//
// Every fault (corrupt or truncated input, output past the caller's limit) is Errc::kCorrupt,
// never a crash or a read outside the input: these bytes come from remote clients.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string_view>
#include <vector>

#include "weft/fabric/record_batch.h"
#include "weft/fabric/result.h"

namespace weft {

// Decompressed bytes allowed per batch unless the caller says otherwise: a batch that inflates
// past it is a decompression bomb, not data (Kafka's own batches stay under message.max.bytes,
// 1 MiB by default, before compression).
inline constexpr std::size_t kDefaultMaxDecompressedBytes = std::size_t{64} << 20;

// The codec's name as Kafka spells it in compression.type ("none", "gzip", ...); "unknown"
// for a value outside the enum.
std::string_view compression_name(Compression codec) noexcept;

// Decompresses records sections, reusing its codecs' contexts and windows from one call to the
// next (a context per codec, made at its first use). Not thread-safe: one per thread, as a
// TopicConsumer keeps one. Movable.
class Decompressor {
 public:
  Decompressor() noexcept;
  Decompressor(Decompressor&&) noexcept;
  Decompressor& operator=(Decompressor&&) noexcept;
  ~Decompressor();

  // Decompresses `in` (a compressed records section) into `out`, which is resized to exactly
  // the decompressed bytes; its capacity is kept, so a reused vector stops allocating once it
  // has held the largest batch. Output past `max_out_bytes` is kCorrupt, found before more
  // than max_out_bytes + 1 bytes are written. kNone copies. `in` must not change during the
  // call (copy bytes that others may be writing, such as ring memory, first) and must not
  // overlap `out`. On failure `out` holds nothing usable.
  [[nodiscard]] Result<void> decompress(Compression codec, std::span<const std::byte> in, std::vector<std::byte>& out,
                                        std::size_t max_out_bytes = kDefaultMaxDecompressedBytes);

 private:
  struct Contexts;
  std::unique_ptr<Contexts> contexts_;
};

// One decompression with contexts made for it (a Decompressor reuses them).
[[nodiscard]] Result<void> decompress_records(Compression codec, std::span<const std::byte> in, std::vector<std::byte>& out,
                                              std::size_t max_out_bytes = kDefaultMaxDecompressedBytes);

// ---- compressing (tests and tools build the batches Kafka clients would send) ---------------

enum class SnappyFraming : std::uint8_t {
  kXerial,  // Kafka's Java producer (blocks of 32 KiB)
  kRaw,     // one raw snappy block
};

struct CompressOptions {
  SnappyFraming snappy_framing = SnappyFraming::kXerial;
  // lz4 and zstd frames state the decompressed size in their header (librdkafka's lz4 does;
  // Kafka's Java producer writes neither size).
  bool declare_size = false;
  int level = 0;  // 0: the codec's default
};

// Compresses `in` into `out` (resized to the compressed bytes) in the formats listed above:
// gzip as one member, lz4 as one frame of independent 64 KiB blocks (as Kafka's Java producer
// writes it), zstd as one frame. kNone copies. kInvalidArgument for an unknown codec or an input
// the codec cannot take (over 4 GiB); kInternal if a library fails.
[[nodiscard]] Result<void> compress_records(Compression codec, std::span<const std::byte> in, std::vector<std::byte>& out,
                                            const CompressOptions& options = {});

// Writes into `out` the batch `batch` (an uncompressed RecordBatch v2, as BatchBuilder writes
// it) with its records section compressed by `codec`: the header is kept but for attributes
// (which name the codec), batchLength and the CRC-32C, which are recomputed. kInvalidArgument
// if `batch` is not a valid uncompressed batch.
[[nodiscard]] Result<void> compress_batch(Compression codec, std::span<const std::byte> batch, std::vector<std::byte>& out,
                                          const CompressOptions& options = {});

}  // namespace weft
