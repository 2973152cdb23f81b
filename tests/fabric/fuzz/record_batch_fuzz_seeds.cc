// Writes a seed corpus for record_batch_fuzzer into DIR: well-formed batches of several shapes
// (one record, many, null and empty keys and values, headers, large fields, a leader epoch and
// producer fields), each uncompressed and compressed with every codec in the framings clients
// use, so the fuzzer starts from every decoder's happy path.
//
// usage: record_batch_fuzz_seeds DIR
#include <cstdio>
#include <string>
#include <string_view>
#include <vector>

#include "weft/fabric/compression.h"
#include "weft/fabric/record_batch.h"

namespace {

// Views of string literals or of strings that outlive the batches.
std::span<const std::byte> bytes_of(std::string_view s) { return std::as_bytes(std::span(s.data(), s.size())); }

bool write_file(const std::string& path, std::span<const std::byte> bytes) {
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (f == nullptr) return false;
  const bool ok = std::fwrite(bytes.data(), 1, bytes.size(), f) == bytes.size();
  return std::fclose(f) == 0 && ok;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s DIR\n", argv[0]);
    return 2;
  }
  const std::string dir = argv[1];
  const std::string text = "GET /index.html 200 1532 \"Mozilla/5.0\" session=8c1f user=42 ";
  const std::string big(5000, 'x');
  const std::vector<weft::RecordHeader> headers = {{"trace-id", bytes_of("abc123")}, {"empty", std::nullopt}};

  struct Shape {
    const char* name;
    std::vector<weft::RecordInput> records;
    weft::BatchOptions options;
  };
  std::vector<Shape> shapes;
  shapes.push_back({"one", {{std::nullopt, bytes_of(text), 1'700'000'000'000, {}}}, {}});
  shapes.push_back({"keyed-headers", {{bytes_of("user-42"), bytes_of(text), 1'700'000'000'001, headers}}, {}});
  shapes.push_back({"null-and-empty", {{std::nullopt, std::nullopt, 1, {}}, {bytes_of(""), bytes_of(""), 2, {}}}, {}});
  shapes.push_back({"large-fields", {{bytes_of(big), bytes_of(big), 1'700'000'000'000, headers}}, {}});
  Shape many{"many", {}, {}};
  for (int i = 0; i < 64; ++i)
    many.records.push_back({bytes_of(std::string_view(text).substr(0, static_cast<std::size_t>(i % 9))), bytes_of(text), 1'700'000'000'000 + i, {}});
  shapes.push_back(many);
  weft::BatchOptions producer;
  producer.partition_leader_epoch = 7;
  producer.producer_id = 1234;
  producer.producer_epoch = 3;
  producer.base_sequence = 99;
  shapes.push_back({"idempotent", {{bytes_of("k"), bytes_of(text), 1'700'000'000'000, {}}, {bytes_of("k"), bytes_of(text), 1'700'000'000'005, {}}}, producer});

  int written = 0;
  for (const Shape& shape : shapes) {
    std::vector<std::byte> buffer(1 << 16);
    weft::BatchBuilder builder(buffer, shape.options);
    for (const weft::RecordInput& r : shape.records)
      if (!builder.append(r)) return 1;
    const std::span<std::byte> batch = builder.finish();
    if (!write_file(dir + "/" + shape.name + "-none", batch)) return 1;
    ++written;
    struct Codec {
      const char* name;
      weft::Compression codec;
      weft::CompressOptions options;
    };
    weft::CompressOptions raw_snappy;
    raw_snappy.snappy_framing = weft::SnappyFraming::kRaw;
    weft::CompressOptions sized;
    sized.declare_size = true;
    const Codec codecs[] = {{"gzip", weft::Compression::kGzip, {}},
                            {"snappy-xerial", weft::Compression::kSnappy, {}},
                            {"snappy-raw", weft::Compression::kSnappy, raw_snappy},
                            {"lz4", weft::Compression::kLz4, {}},
                            {"lz4-sized", weft::Compression::kLz4, sized},
                            {"zstd", weft::Compression::kZstd, {}},
                            {"zstd-sized", weft::Compression::kZstd, sized}};
    for (const Codec& c : codecs) {
      std::vector<std::byte> compressed;
      if (!weft::compress_batch(c.codec, batch, compressed, c.options).ok()) return 1;
      if (!write_file(dir + "/" + shape.name + "-" + c.name, compressed)) return 1;
      ++written;
    }
  }
  std::printf("record_batch_fuzz_seeds: %d seeds in %s\n", written, dir.c_str());
  return 0;
}
