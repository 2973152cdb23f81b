// Writes a seed corpus for segment_fuzzer into DIR: real segments (written by Segment with small
// index intervals, synced with their indexes) in each of the fuzzer's four modes, whole and
// with a torn tail, so it starts from recovery's and the trusted open's happy paths.
//
// usage: segment_fuzz_seeds DIR
#include <cstdio>
#include <span>
#include <string>
#include <vector>

#include "fuzz_files.h"
#include "weft/fabric/record_batch.h"
#include "weft/storage/segment.h"

namespace {

constexpr weft::Offset kBase{1000};

// The fuzzer's input: mode, the two index sizes (u16, little-endian), then the three files.
void write_seed(const std::string& path, std::uint8_t mode, std::span<const std::uint8_t> index, std::span<const std::uint8_t> time,
                std::span<const std::uint8_t> log) {
  const std::uint8_t header[5] = {mode, static_cast<std::uint8_t>(index.size() & 0xFF), static_cast<std::uint8_t>(index.size() >> 8),
                                  static_cast<std::uint8_t>(time.size() & 0xFF), static_cast<std::uint8_t>(time.size() >> 8)};
  weft::fuzz::write_file(path, {header, index, time, log});
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s DIR\n", argv[0]);
    return 2;
  }
  const std::string out_dir = argv[1];
  int written = 0;
  for (int batches : {1, 8, 40}) {
    const weft::fuzz::ScratchDir scratch("/tmp/weft-segment-seeds-");
    const std::string& dir = scratch.path();
    weft::storage::SegmentOptions options;
    options.direct_io = false;
    options.io_uring = false;
    options.index_interval_bytes = 256;
    {
      weft::Result<weft::storage::Segment> segment = weft::storage::Segment::create(dir, kBase, options);
      if (!segment.ok()) return 1;
      const std::string value(120, 'v');
      std::int64_t offset = kBase.value;
      for (int b = 0; b < batches; ++b) {
        std::vector<std::byte> buffer(1 << 14);
        weft::BatchBuilder builder(buffer);
        const int records = 1 + b % 5;
        for (int r = 0; r < records; ++r)
          (void)builder.append({std::nullopt, std::as_bytes(std::span(value.data(), value.size())), 1'700'000'000'000 + b * 10 + r, {}});
        std::span<std::byte> batch = builder.finish();
        weft::stamp_base_offset(batch, weft::Offset{offset});
        offset += records + (b % 7 == 6 ? 3 : 0);  // now and then a gap, as an aborted claim leaves
        if (!segment->append(batch, 5).ok()) return 1;
      }
      if (!segment->sync().ok() || !segment->sync_indexes().ok()) return 1;
    }
    const std::vector<std::uint8_t> log = weft::fuzz::read_all(dir + "/" + weft::storage::segment_file_name(kBase, ".log"));
    const std::vector<std::uint8_t> index = weft::fuzz::read_all(dir + "/" + weft::storage::segment_file_name(kBase, ".index"));
    const std::vector<std::uint8_t> time = weft::fuzz::read_all(dir + "/" + weft::storage::segment_file_name(kBase, ".timeindex"));
    if (index.size() > 0xFFFF || time.size() > 0xFFFF) return 1;
    const std::span<const std::uint8_t> torn = std::span(log).first(log.size() - log.size() / 7);
    for (std::uint8_t mode = 0; mode < 4; ++mode) {
      const std::string name = out_dir + "/b" + std::to_string(batches) + "-m" + std::to_string(mode);
      write_seed(name, mode, index, time, log);
      write_seed(name + "-torn", mode, index, time, torn);
      written += 2;
    }
  }
  std::printf("segment_fuzz_seeds: %d seeds in %s\n", written, out_dir.c_str());
  return 0;
}
