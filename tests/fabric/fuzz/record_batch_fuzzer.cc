// libFuzzer target for record batches from outside the process: each input is one RecordBatch
// v2 as a Kafka client, a follower's leader or a segment file would hand it over. It goes
// through every reader a node or consumer uses on such bytes: the full check (CRC included) and
// its record iterator, the header check with the one-pass RecordReader (so mutations need not
// fix the CRC to reach the records), the one-record decoder, and, for a batch whose attributes
// name a codec, that codec's decompressor followed by a RecordReader over what it gave. Every
// byte of every view handed out is read, so a view past the input is an ASan report. Any crash,
// leak, out-of-bounds read or undefined behaviour is a bug; errors are the expected answer.
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "weft/fabric/compression.h"
#include "weft/fabric/record_batch.h"

namespace {

// Reads every byte a view covers (ASan checks each load); the sum keeps the loads.
std::uint64_t touch(std::span<const std::byte> bytes) noexcept {
  std::uint64_t sum = 0;
  for (std::byte b : bytes) sum += std::to_integer<std::uint8_t>(b);
  return sum;
}

std::uint64_t touch(const weft::RecordView& r) {
  std::uint64_t sum = static_cast<std::uint64_t>(r.offset.value) + static_cast<std::uint64_t>(r.timestamp_ms);
  if (r.key) sum += touch(*r.key);
  if (r.value) sum += touch(*r.value);
  sum += touch(r.headers_bytes);
  r.for_each_header([&](const weft::RecordHeader& h) {
    sum += touch(std::as_bytes(std::span(h.key.data(), h.key.size())));
    if (h.value) sum += touch(*h.value);
  });
  return sum;
}

std::uint64_t read_all(weft::RecordReader& reader) {
  std::uint64_t sum = 0;
  weft::RecordView r;
  // Bounded by the batch: a reader stops at its record count or its first malformed record.
  while (reader.next(r)) sum += touch(r);
  if (reader.failed()) sum += reader.error().message.size();
  return sum;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static weft::Decompressor decompressor;  // reused, as a consumer reuses its own
  static std::vector<std::byte> inflated;
  const std::span<const std::byte> bytes(reinterpret_cast<const std::byte*>(data), size);
  volatile std::uint64_t sink = 0;

  if (weft::Result<weft::BatchView> full = weft::BatchView::parse(bytes); full.ok()) {
    for (const weft::RecordView& r : *full) sink = sink + touch(r);
  } else {
    sink = sink + full.error().message.size();
  }
  if (weft::Result<weft::BatchView> trusted = weft::BatchView::parse_trusted(bytes); trusted.ok()) {
    for (const weft::RecordView& r : *trusted) sink = sink + touch(r);
  }
  if (weft::Result<weft::BatchView> header = weft::BatchView::parse_header(bytes, false); header.ok()) {
    if (header->compression() == weft::Compression::kNone) {
      weft::RecordReader reader(*header);
      sink = sink + read_all(reader);
    } else {
      const std::span<const std::byte> section = header->bytes().subspan(weft::kBatchHeaderBytes);
      // A small ceiling: an input that inflates past it is a bomb, refused without the memory.
      if (decompressor.decompress(header->compression(), section, inflated, std::size_t{4} << 20).ok()) {
        weft::RecordReader reader(*header, inflated);
        sink = sink + read_all(reader);
      }
    }
  }
  weft::RecordView single;
  if (weft::decode_single_record_batch(bytes, single)) sink = sink + touch(single);
  return 0;
}
