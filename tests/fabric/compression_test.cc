// Kafka's batch codecs (compression.h): round trips of every codec and framing, streams other
// encoders wrote (the gzip, lz4 and zstd tools; snappy-java's documented stream), malformed,
// mangled and truncated input, decompression bombs; compressed batches read back with a
// RecordReader; and TopicConsumer reading compressed batches from a ring and from a log.
//
// Inputs under test are heap vectors of exactly their bytes, so the asan preset reports any read
// past the end.
#include "weft/fabric/compression.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <optional>
#include <ostream>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "client_fixture.h"
#include "weft/client.h"
#include "weft/consumer.h"
#include "weft/fabric/crc32c.h"
#include "weft/fabric/log_store.h"
#include "weft/fabric/record_batch.h"
#include "weft/node.h"
#include "weft/producer.h"

namespace weft {
namespace {

using Bytes = std::vector<std::byte>;

Bytes hex(std::initializer_list<unsigned> values) {
  Bytes out;
  for (unsigned v : values) out.push_back(static_cast<std::byte>(v));
  return out;
}

Bytes bytes_of(std::string_view s) {
  Bytes out(s.size());
  if (!s.empty()) std::memcpy(out.data(), s.data(), s.size());
  return out;
}

std::string text_of(std::span<const std::byte> b) { return std::string(reinterpret_cast<const char*>(b.data()), b.size()); }

Bytes concat(const Bytes& a, const Bytes& b) {
  Bytes out(a);
  out.insert(out.end(), b.begin(), b.end());
  return out;
}

// Deterministic bytes: log-like text (compresses well) or noise (does not).
Bytes sample(std::size_t size, bool compressible, std::uint64_t seed = 1) {
  Bytes out(size);
  std::uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;
  static constexpr std::string_view kWords[] = {"user=", "click ", "page=/home ", "ts=1700000000 ", "id=42 ", "ok\n"};
  std::size_t i = 0;
  while (i < size) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    if (compressible) {
      for (char c : kWords[x % std::size(kWords)]) {
        if (i == size) break;
        out[i++] = static_cast<std::byte>(c);
      }
    } else {
      out[i++] = static_cast<std::byte>(x >> 24);
    }
  }
  return out;
}

Bytes compress(Compression codec, const Bytes& in, const CompressOptions& options = {}) {
  Bytes out;
  const Result<void> done = compress_records(codec, in, out, options);
  EXPECT_TRUE(done.ok()) << done.error().message;
  return Bytes(out.begin(), out.end());  // exactly its bytes: capacity == size
}

// ---- the codecs, each framing ----------------------------------------------------------------

struct Codec {
  const char* name;
  Compression codec;
  CompressOptions options;
};

const Codec kCodecs[] = {
    {"Gzip", Compression::kGzip, {}},
    {"SnappyXerial", Compression::kSnappy, {SnappyFraming::kXerial, false, 0}},
    {"SnappyRaw", Compression::kSnappy, {SnappyFraming::kRaw, false, 0}},
    {"Lz4", Compression::kLz4, {}},
    {"Lz4WithSize", Compression::kLz4, {SnappyFraming::kXerial, true, 0}},
    {"Zstd", Compression::kZstd, {}},
    {"ZstdWithSize", Compression::kZstd, {SnappyFraming::kXerial, true, 0}},
};

class CodecTest : public ::testing::TestWithParam<Codec> {};

TEST_P(CodecTest, RoundTripsEverySize) {
  const Codec& c = GetParam();
  Decompressor decompressor;  // reused across sizes, as a consumer does
  for (const std::size_t size : {std::size_t{0}, std::size_t{1}, std::size_t{100}, std::size_t{32768}, std::size_t{32769},
                                 std::size_t{70000}, std::size_t{300000}}) {
    for (const bool compressible : {true, false}) {
      // Given bytes compressed by the codec
      const Bytes in = sample(size, compressible, size);
      const Bytes packed = compress(c.codec, in, c.options);
      // Expect them back, exactly
      Bytes out;
      const Result<void> done = decompressor.decompress(c.codec, packed, out);
      ASSERT_TRUE(done.ok()) << size << ": " << done.error().message;
      EXPECT_EQ(out, in) << size << (compressible ? " compressible" : " noise");
    }
  }
}

TEST_P(CodecTest, EveryTruncationIsCorrupt) {
  const Codec& c = GetParam();
  const Bytes packed = compress(c.codec, sample(5000, true), c.options);
  const bool xerial = c.codec == Compression::kSnappy && c.options.snappy_framing == SnappyFraming::kXerial;
  Decompressor decompressor;
  for (std::size_t length = 0; length < packed.size(); ++length) {
    // Given the stream cut after `length` bytes
    const Bytes cut(packed.begin(), packed.begin() + static_cast<std::ptrdiff_t>(length));
    Bytes out;
    const Result<void> done = decompressor.decompress(c.codec, cut, out);
    if (xerial && length == 16) {
      // Expect a xerial header alone to be an empty stream (block boundaries are valid ends)
      EXPECT_TRUE(done.ok());
      EXPECT_TRUE(out.empty());
      continue;
    }
    // Expect every other cut to be reported, never read past
    ASSERT_FALSE(done.ok()) << "cut at " << length << " of " << packed.size();
    EXPECT_EQ(done.error().code, Errc::kCorrupt) << done.error().message;
  }
}

TEST_P(CodecTest, AMangledByteIsCorruptOrDecodesWithinTheLimit) {
  const Codec& c = GetParam();
  const Bytes packed = compress(c.codec, sample(3000, true), c.options);
  Decompressor decompressor;
  for (std::size_t at = 0; at < packed.size(); ++at) {
    for (const unsigned flip : {0x01u, 0x80u, 0xFFu}) {
      // Given one byte of the stream changed
      Bytes mangled = packed;
      mangled[at] ^= static_cast<std::byte>(flip);
      Bytes out;
      const Result<void> done = decompressor.decompress(c.codec, mangled, out, 1 << 16);
      // Expect a clean kCorrupt, or bytes (codecs without checksums may decode other bytes)
      if (!done.ok()) {
        EXPECT_EQ(done.error().code, Errc::kCorrupt) << done.error().message;
      } else {
        EXPECT_LE(out.size(), std::size_t{1} << 16);
      }
    }
  }
  // Expect the context to decode a good stream after all those failures
  Bytes out;
  ASSERT_TRUE(decompressor.decompress(c.codec, packed, out).ok());
  EXPECT_EQ(out, sample(3000, true));
}

TEST_P(CodecTest, OutputPastTheLimitIsCorrupt) {
  const Codec& c = GetParam();
  const Bytes zeros(std::size_t{1} << 20);
  const Bytes packed = compress(c.codec, zeros, c.options);
  Decompressor decompressor;
  Bytes out;
  // Expect exactly the limit to pass
  ASSERT_TRUE(decompressor.decompress(c.codec, packed, out, zeros.size()).ok());
  EXPECT_EQ(out.size(), zeros.size());
  // And one byte over it, or far over it, to be a bomb
  for (const std::size_t limit : {zeros.size() - 1, std::size_t{1} << 16, std::size_t{1}}) {
    const Result<void> done = decompressor.decompress(c.codec, packed, out, limit);
    ASSERT_FALSE(done.ok()) << limit;
    EXPECT_EQ(done.error().code, Errc::kCorrupt);
    EXPECT_NE(done.error().message.find("more than " + std::to_string(limit) + " bytes"), std::string::npos) << done.error().message;
    EXPECT_LE(out.capacity(), 2 * (zeros.size() + 1));  // sized by the limits asked, not by the stream
  }
}

TEST_P(CodecTest, TheDefaultLimitStopsADecompressionBomb) {
  const Codec& c = GetParam();
  // Given 64 MiB and one byte of zeros: a few KiB compressed, for most codecs
  const Bytes packed = compress(c.codec, Bytes(kDefaultMaxDecompressedBytes + 1), c.options);
  Bytes out;
  const Result<void> done = decompress_records(c.codec, packed, out);
  ASSERT_FALSE(done.ok());
  EXPECT_EQ(done.error().code, Errc::kCorrupt);
  EXPECT_NE(done.error().message.find(std::string(compression_name(c.codec)) + " records: decompress to more than"), std::string::npos)
      << done.error().message;
}

TEST_P(CodecTest, ACompressedBatchReadsBackItsRecords) {
  const Codec& c = GetParam();
  // Given a batch of records with keys, a null value and headers
  const std::string value(300, 'v');
  const Bytes abc = bytes_of("abc");
  const RecordHeader headers[] = {{"trace", abc}, {"empty", std::nullopt}};
  const Bytes k0 = bytes_of("k0"), k2 = bytes_of("k2"), v0 = bytes_of(value), v2 = bytes_of("two");
  RecordInput records[3];
  records[0].key = k0;
  records[0].value = v0;
  records[0].timestamp_ms = 1000;
  records[0].headers = headers;
  records[1].timestamp_ms = 1001;  // null key and value
  records[2].key = k2;
  records[2].value = v2;
  records[2].timestamp_ms = 999;
  Bytes plain(4096);
  BatchBuilder builder(plain, BatchOptions{0, 5, 77, 1, 3});
  for (const RecordInput& r : records) ASSERT_TRUE(builder.append(r));
  plain.resize(builder.finish().size());

  // When it is compressed
  Bytes packed;
  ASSERT_TRUE(compress_batch(c.codec, plain, packed, c.options).ok());
  stamp_base_offset(packed, Offset{100});

  // Expect a valid batch (the CRC over the new attributes and records) that names its codec
  Result<BatchView> view = BatchView::parse(packed);
  ASSERT_TRUE(view.ok()) << view.error().message;
  EXPECT_EQ(view->compression(), c.codec);
  EXPECT_EQ(view->record_count(), 3);
  EXPECT_EQ(view->last_offset(), Offset{102});
  EXPECT_EQ(view->producer_id(), 77);
  EXPECT_EQ(view->base_sequence(), 3);
  EXPECT_EQ(view->max_timestamp(), 1001);
  // And no records from the batch bytes themselves
  EXPECT_TRUE(view->begin() == view->end());
  RecordReader raw(*view);
  RecordView r;
  EXPECT_FALSE(raw.next(r));
  EXPECT_FALSE(raw.failed());

  // And every record from the decompressed records section
  Bytes section;
  ASSERT_TRUE(decompress_records(c.codec, view->bytes().subspan(kBatchHeaderBytes), section).ok());
  EXPECT_EQ(section, Bytes(plain.begin() + kBatchHeaderBytes, plain.end()));
  RecordReader reader(*view, section);
  ASSERT_TRUE(reader.next(r));
  EXPECT_EQ(r.offset, Offset{100});
  EXPECT_EQ(r.timestamp_ms, 1000);
  EXPECT_EQ(text_of(*r.key), "k0");
  EXPECT_EQ(text_of(*r.value), value);
  std::vector<std::pair<std::string, std::optional<std::string>>> got_headers;
  r.for_each_header([&](const RecordHeader& h) {
    got_headers.emplace_back(std::string(h.key), h.value ? std::optional(text_of(*h.value)) : std::nullopt);
  });
  EXPECT_EQ(got_headers, (std::vector<std::pair<std::string, std::optional<std::string>>>{{"trace", "abc"}, {"empty", std::nullopt}}));
  ASSERT_TRUE(reader.next(r));
  EXPECT_EQ(r.offset, Offset{101});
  EXPECT_FALSE(r.key.has_value());
  EXPECT_FALSE(r.value.has_value());
  ASSERT_TRUE(reader.next(r));
  EXPECT_EQ(r.offset, Offset{102});
  EXPECT_EQ(r.timestamp_ms, 999);
  EXPECT_EQ(text_of(*r.value), "two");
  EXPECT_FALSE(reader.next(r));
  EXPECT_FALSE(reader.failed());
}

std::string codec_name(const ::testing::TestParamInfo<Codec>& param) { return param.param.name; }
INSTANTIATE_TEST_SUITE_P(Compression, CodecTest, ::testing::ValuesIn(kCodecs), codec_name);

// ---- streams from other encoders ------------------------------------------------------------

TEST(Compression, ReadsStreamsOtherEncodersWrote) {
  struct Case {
    const char* what;
    Compression codec;
    Bytes stream;
    std::string text;
  };
  const Case cases[] = {
      // gzip -n -9 of "hello, kafka\n"
      {"gzip tool", Compression::kGzip,
       hex({0x1f, 0x8b, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0x03, 0xcb, 0x48, 0xcd, 0xc9, 0xc9, 0xd7, 0x51,
            0xc8, 0x4e, 0x4c, 0xcb, 0x4e, 0xe4, 0x02, 0x00, 0xda, 0x2a, 0x43, 0x98, 0x0d, 0x00, 0x00, 0x00}),
       "hello, kafka\n"},
      // lz4 tool: a frame with a content checksum
      {"lz4 tool", Compression::kLz4,
       hex({0x04, 0x22, 0x4d, 0x18, 0x64, 0x40, 0xa7, 0x0d, 0x00, 0x00, 0x80, 0x68, 0x65, 0x6c, 0x6c, 0x6f,
            0x2c, 0x20, 0x6b, 0x61, 0x66, 0x6b, 0x61, 0x0a, 0x00, 0x00, 0x00, 0x00, 0x29, 0xfa, 0x04, 0x29}),
       "hello, kafka\n"},
      // lz4 --content-size
      {"lz4 tool, content size", Compression::kLz4,
       hex({0x04, 0x22, 0x4d, 0x18, 0x6c, 0x40, 0x0d, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xce, 0x0d, 0x00, 0x00, 0x80,
            0x68, 0x65, 0x6c, 0x6c, 0x6f, 0x2c, 0x20, 0x6b, 0x61, 0x66, 0x6b, 0x61, 0x0a, 0x00, 0x00, 0x00, 0x00, 0x29, 0xfa, 0x04, 0x29}),
       "hello, kafka\n"},
      // zstd tool: content size and checksum
      {"zstd tool", Compression::kZstd,
       hex({0x28, 0xb5, 0x2f, 0xfd, 0x24, 0x0d, 0x69, 0x00, 0x00, 0x68, 0x65, 0x6c, 0x6c,
            0x6f, 0x2c, 0x20, 0x6b, 0x61, 0x66, 0x6b, 0x61, 0x0a, 0x5b, 0x96, 0xdd, 0x6d}),
       "hello, kafka\n"},
      // zstd --no-content-size (as a streaming producer writes it)
      {"zstd tool, no content size", Compression::kZstd,
       hex({0x28, 0xb5, 0x2f, 0xfd, 0x04, 0x00, 0x69, 0x00, 0x00, 0x68, 0x65, 0x6c, 0x6c,
            0x6f, 0x2c, 0x20, 0x6b, 0x61, 0x66, 0x6b, 0x61, 0x0a, 0x5b, 0x96, 0xdd, 0x6d}),
       "hello, kafka\n"},
      // snappy-java's SnappyOutputStream of "foobar\n", as its documentation shows it
      {"xerial snappy-java", Compression::kSnappy,
       hex({0x82, 0x53, 0x4e, 0x41, 0x50, 0x50, 0x59, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00,
            0x01, 0x00, 0x00, 0x00, 0x09, 0x07, 0x18, 0x66, 0x6f, 0x6f, 0x62, 0x61, 0x72, 0x0a}),
       "foobar\n"},
      // the same block raw
      {"raw snappy", Compression::kSnappy, hex({0x07, 0x18, 0x66, 0x6f, 0x6f, 0x62, 0x61, 0x72, 0x0a}), "foobar\n"},
  };
  for (const Case& c : cases) {
    Bytes out;
    const Result<void> done = decompress_records(c.codec, c.stream, out);
    ASSERT_TRUE(done.ok()) << c.what << ": " << done.error().message;
    EXPECT_EQ(text_of(out), c.text) << c.what;
  }
}

TEST(Compression, ReadsConcatenatedGzipMembersAndLz4AndZstdFrames) {
  for (const Compression codec : {Compression::kGzip, Compression::kLz4, Compression::kZstd}) {
    // Given two streams one after the other
    const Bytes a = sample(1000, true, 1), b = sample(2000, false, 2);
    const Bytes both = concat(compress(codec, a), compress(codec, b));
    // Expect both streams' bytes in order
    Bytes out;
    const Result<void> done = decompress_records(codec, both, out);
    ASSERT_TRUE(done.ok()) << compression_name(codec) << ": " << done.error().message;
    EXPECT_EQ(out, concat(a, b)) << compression_name(codec);
  }
}

TEST(Compression, MalformedInputIsCorrupt) {
  const Bytes gzip = compress(Compression::kGzip, sample(500, true));
  Bytes bad_gzip_crc = gzip;
  bad_gzip_crc[gzip.size() - 6] ^= std::byte{0x01};  // the trailer's CRC-32
  Bytes bad_gzip_size = gzip;
  bad_gzip_size[gzip.size() - 1] ^= std::byte{0x01};  // the trailer's ISIZE
  const Bytes xerial_header = hex({0x82, 'S', 'N', 'A', 'P', 'P', 'Y', 0, 0, 0, 0, 1, 0, 0, 0, 1});
  struct Case {
    const char* what;
    Compression codec;
    Bytes stream;
  };
  const Case cases[] = {
      {"gzip: empty", Compression::kGzip, {}},
      {"gzip: not a gzip header", Compression::kGzip, bytes_of("hello, this is not gzip")},
      {"gzip: a zlib stream, not gzip", Compression::kGzip, hex({0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01})},
      {"gzip: bad CRC", Compression::kGzip, bad_gzip_crc},
      {"gzip: bad ISIZE", Compression::kGzip, bad_gzip_size},
      {"gzip: garbage after the member", Compression::kGzip, concat(gzip, bytes_of("trailing"))},
      {"snappy: empty", Compression::kSnappy, {}},
      {"snappy: raw length past the input", Compression::kSnappy, hex({0x40, 0x00, 0x61})},
      {"snappy: raw length varint too long", Compression::kSnappy, hex({0xff, 0xff, 0xff, 0xff, 0xff, 0xff})},
      {"snappy: raw copy before the start", Compression::kSnappy, hex({0x08, 0x01, 0x05})},
      {"snappy: raw block claiming 32 MiB", Compression::kSnappy, hex({0x80, 0x80, 0x80, 0x10, 0x00, 0x61})},
      {"snappy: xerial block claiming 32 MiB", Compression::kSnappy, concat(xerial_header, hex({0, 0, 0, 6, 0x80, 0x80, 0x80, 0x10, 0x00, 0x61}))},
      {"snappy: xerial header cut", Compression::kSnappy, hex({0x82, 'S', 'N', 'A', 'P', 'P', 'Y', 0, 0, 0})},
      {"snappy: xerial block length cut", Compression::kSnappy, concat(xerial_header, hex({0x00, 0x00}))},
      {"snappy: xerial block past the input", Compression::kSnappy, concat(xerial_header, hex({0xff, 0xff, 0xff, 0xff, 0x07, 0x18}))},
      {"snappy: xerial empty block", Compression::kSnappy, concat(xerial_header, hex({0x00, 0x00, 0x00, 0x00}))},
      {"snappy: xerial block not snappy", Compression::kSnappy, concat(xerial_header, hex({0x00, 0x00, 0x00, 0x02, 0x20, 0x00}))},
      {"lz4: empty", Compression::kLz4, {}},
      {"lz4: raw block, not a frame", Compression::kLz4, hex({0x50, 'h', 'e', 'l', 'l', 'o'})},
      {"lz4: legacy frame magic", Compression::kLz4, hex({0x02, 0x21, 0x4c, 0x18, 0x00, 0x00, 0x00, 0x00})},
      {"lz4: bad header checksum", Compression::kLz4, hex({0x04, 0x22, 0x4d, 0x18, 0x64, 0x40, 0x00, 0x00, 0x00, 0x00, 0x00})},
      {"zstd: empty", Compression::kZstd, {}},
      {"zstd: bad magic", Compression::kZstd, hex({0x28, 0xb5, 0x2f, 0xfe, 0x00, 0x00, 0x00})},
      {"zstd: gzip bytes", Compression::kZstd, gzip},
      {"unknown codec 5", static_cast<Compression>(5), gzip},
      {"unknown codec 7", static_cast<Compression>(7), gzip},
  };
  Decompressor decompressor;
  for (const Case& c : cases) {
    Bytes out;
    const Result<void> done = decompressor.decompress(c.codec, c.stream, out);
    ASSERT_FALSE(done.ok()) << c.what;
    EXPECT_EQ(done.error().code, Errc::kCorrupt) << c.what << ": " << done.error().message;
    EXPECT_FALSE(done.error().message.empty()) << c.what;
  }
}

TEST(Compression, AStatedSizeIsNotBelievedPastWhatTheInputCanHold) {
  // Given a gzip stream whose trailer claims 64 MiB (a forged or damaged ISIZE)
  Bytes gzip = compress(Compression::kGzip, sample(1000, true));
  for (std::size_t i = gzip.size() - 4; i < gzip.size(); ++i) gzip[i] = std::byte{0xFF};
  gzip[gzip.size() - 1] = std::byte{0x03};
  // Expect it refused without a buffer anywhere near that size
  Bytes out;
  EXPECT_EQ(decompress_records(Compression::kGzip, gzip, out).error().code, Errc::kCorrupt);
  EXPECT_LT(out.capacity(), std::size_t{1} << 20);
}

TEST(Compression, NoneCopiesWithinTheLimit) {
  const Bytes in = bytes_of("plain records");
  Bytes out;
  ASSERT_TRUE(decompress_records(Compression::kNone, in, out).ok());
  EXPECT_EQ(out, in);
  EXPECT_EQ(decompress_records(Compression::kNone, in, out, 3).error().code, Errc::kCorrupt);
}

TEST(Compression, NamesAreKafkas) {
  EXPECT_EQ(compression_name(Compression::kNone), "none");
  EXPECT_EQ(compression_name(Compression::kGzip), "gzip");
  EXPECT_EQ(compression_name(Compression::kSnappy), "snappy");
  EXPECT_EQ(compression_name(Compression::kLz4), "lz4");
  EXPECT_EQ(compression_name(Compression::kZstd), "zstd");
  EXPECT_EQ(compression_name(static_cast<Compression>(6)), "unknown");
}

TEST(Compression, JavaStyleFramesStateNoSize) {
  // Kafka's Java producer writes lz4 and zstd frames without the decompressed size; a reader
  // must not depend on it. Given frames from the default options
  const Bytes in = sample(100000, true);
  const Bytes lz4 = compress(Compression::kLz4, in);
  const Bytes zstd = compress(Compression::kZstd, in);
  // Expect the lz4 frame's FLG byte without its content-size bit, and zstd to report no size
  EXPECT_EQ(static_cast<unsigned>(lz4[4]) & 0x08u, 0u);
  EXPECT_EQ(static_cast<unsigned>(lz4[4]) & 0x20u, 0x20u);  // independent blocks, as Kafka writes
  Bytes sized;
  ASSERT_TRUE(compress_records(Compression::kLz4, in, sized, {SnappyFraming::kXerial, true, 0}).ok());
  EXPECT_EQ(static_cast<unsigned>(sized[4]) & 0x08u, 0x08u);
  // (the zstd frame header descriptor: Frame_Content_Size_flag and Single_Segment_flag)
  EXPECT_EQ(static_cast<unsigned>(zstd[4]) >> 6, 0u);
  EXPECT_EQ(static_cast<unsigned>(zstd[4]) & 0x20u, 0u);  // not single-segment, so no size at all
}

TEST(Compression, CompressBatchRefusesWhatIsNotAPlainBatch) {
  Bytes plain(256);
  BatchBuilder builder(plain);
  const Bytes v = bytes_of("x");
  RecordInput r;
  r.value = v;
  ASSERT_TRUE(builder.append(r));
  plain.resize(builder.finish().size());
  Bytes packed;
  ASSERT_TRUE(compress_batch(Compression::kZstd, plain, packed).ok());
  Bytes again;
  EXPECT_EQ(compress_batch(Compression::kGzip, packed, again).error().code, Errc::kInvalidArgument);  // compressed already
  EXPECT_EQ(compress_batch(Compression::kGzip, Bytes(plain.begin(), plain.begin() + 30), again).error().code, Errc::kInvalidArgument);
  EXPECT_EQ(compress_batch(static_cast<Compression>(5), plain, again).error().code, Errc::kInvalidArgument);
}

TEST(CompressedBatch, MalformedDecompressedRecordsFailTheReader) {
  // Given a valid compressed batch of two records
  Bytes plain(256);
  BatchBuilder builder(plain);
  const Bytes v = bytes_of("value");
  RecordInput r;
  r.value = v;
  ASSERT_TRUE(builder.append(r));
  ASSERT_TRUE(builder.append(r));
  plain.resize(builder.finish().size());
  Bytes packed;
  ASSERT_TRUE(compress_batch(Compression::kLz4, plain, packed).ok());
  Result<BatchView> view = BatchView::parse(packed);
  ASSERT_TRUE(view.ok());
  const Bytes section(plain.begin() + kBatchHeaderBytes, plain.end());
  RecordView got;

  // Expect a byte after the last record to fail the reader, and say so
  const Bytes longer = concat(section, hex({0x00}));
  RecordReader trailing(*view, longer);
  while (trailing.next(got)) {
  }
  EXPECT_TRUE(trailing.failed());
  EXPECT_NE(trailing.error().message.find("trailing"), std::string::npos) << trailing.error().message;

  // And records cut short to fail at the second record
  const Bytes shorter(section.begin(), section.end() - 2);
  RecordReader cut(*view, shorter);
  EXPECT_TRUE(cut.next(got));
  EXPECT_FALSE(cut.next(got));
  EXPECT_TRUE(cut.failed());
  EXPECT_EQ(cut.error().code, Errc::kCorrupt);
  EXPECT_NE(cut.error().message.find("record 1"), std::string::npos) << cut.error().message;

  // And nothing at all for two records to fail at once
  RecordReader empty(*view, std::span<const std::byte>());
  EXPECT_FALSE(empty.next(got));
  EXPECT_TRUE(empty.failed());
}

// ---- TopicConsumer ---------------------------------------------------------------------------

using test::TempDir;

// A partition log in memory (a memfd), as much of one as consumers behind the ring need: the
// node drains the ring into it, and slices of it are read like segment files.
class MemoryLog final : public PartitionLog {
 public:
  MemoryLog() : fd_(memfd_create("weft-compression-test-log", MFD_CLOEXEC)) {}
  Result<void> append(std::span<const std::byte> batch) override {
    std::lock_guard lock(mutex_);
    if (pwrite(fd_.get(), batch.data(), batch.size(), static_cast<off_t>(size_)) != static_cast<ssize_t>(batch.size()))
      return Error{Errc::kIo, "memfd write failed"};
    const Offset base{wire::load_be64(batch.data() + batch_field::kBaseOffset)};
    const Offset last = base + wire::load_be32(batch.data() + batch_field::kLastOffsetDelta);
    batches_.push_back({base, last, size_});
    size_ += batch.size();
    next_ = last + 1;
    return ok();
  }
  Result<void> flush() override { return ok(); }
  Result<void> sync() override { return ok(); }
  Result<void> remove() override { return ok(); }
  Offset start_offset() const override {
    std::lock_guard lock(mutex_);
    return batches_.empty() ? next_ : batches_.front().base;
  }
  Offset next_offset() const override {
    std::lock_guard lock(mutex_);
    return next_;
  }
  Result<std::size_t> read(Offset, std::span<std::byte>) const override { return Error{Errc::kUnsupported, "not in this test"}; }
  Result<LogSlice> slice(Offset offset, Offset until) override {
    std::lock_guard lock(mutex_);
    const Offset start = batches_.empty() ? next_ : batches_.front().base;
    if (offset == kEarliestOffset) offset = start;
    if (offset < start) return Error{Errc::kOutOfRange, "before the log's start"};
    LogSlice slice;
    slice.offset = offset;
    slice.position = size_;
    for (const Entry& e : batches_)
      if (e.last >= offset) {
        slice.position = e.position;
        break;
      }
    slice.end = size_;
    for (const Entry& e : batches_)
      if (e.last >= until) {
        slice.end = std::max(slice.position, e.position);
        break;
      }
    slice.file = UniqueFd(open(("/proc/self/fd/" + std::to_string(fd_.get())).c_str(), O_RDONLY | O_CLOEXEC));
    if (!slice.file.valid()) return Error{Errc::kIo, "reopening the memfd"};
    return slice;
  }
  Result<TimedOffset> offset_for_timestamp(std::int64_t) override { return Error{Errc::kNotFound, "no time index in this test"}; }
  Result<RetentionOutcome> apply_retention(std::int64_t, std::int64_t, std::int64_t, Offset) override {
    return RetentionOutcome{0, 0, start_offset()};
  }
  std::uint64_t size_bytes() const override {
    std::lock_guard lock(mutex_);
    return size_;
  }

 private:
  struct Entry {
    Offset base;
    Offset last;
    std::uint64_t position;
  };
  UniqueFd fd_;
  mutable std::mutex mutex_;
  std::vector<Entry> batches_;
  std::uint64_t size_ = 0;
  Offset next_{0};
};

// A record as the test wrote it or as a consumer read it (copied out of the poll's views).
struct Rec {
  std::int64_t offset = 0;
  std::int64_t timestamp_ms = 0;
  std::optional<std::string> key;
  std::optional<std::string> value;
  std::vector<std::pair<std::string, std::optional<std::string>>> headers;
  bool operator==(const Rec&) const = default;
};

std::ostream& operator<<(std::ostream& os, const Rec& r) {
  return os << "{offset " << r.offset << ", ts " << r.timestamp_ms << ", key " << r.key.value_or("<null>") << ", value "
            << r.value.value_or("<null>").substr(0, 40) << ", " << r.headers.size() << " headers}";
}

std::optional<std::string> copy(const OptionalBytes& b) { return b ? std::optional(text_of(*b)) : std::nullopt; }

struct Consumed {
  std::vector<Rec> records;
  std::vector<PollNotice> notices;
  std::vector<std::size_t> per_poll;  // records each poll returned
};

// Polls until `want` records arrived or 10 s passed; copies every record once the poll is over,
// so each view must still hold then.
Consumed consume(TopicConsumer& consumer, std::size_t want) {
  Consumed out;
  const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (out.records.size() < want && std::chrono::steady_clock::now() < end) {
    Result<PollResult> polled = consumer.poll(20);
    EXPECT_TRUE(polled.ok()) << polled.error().message;
    if (!polled.ok()) break;
    for (const ConsumedRecord& r : polled->records) {
      Rec rec{r.offset.value, r.timestamp_ms, copy(r.key), copy(r.value), {}};
      r.for_each_header([&](const RecordHeader& h) { rec.headers.emplace_back(std::string(h.key), copy(h.value)); });
      out.records.push_back(std::move(rec));
    }
    out.notices.insert(out.notices.end(), polled->notices.begin(), polled->notices.end());
    if (!polled->records.empty()) out.per_poll.push_back(polled->records.size());
  }
  return out;
}

// Records `first`.. of a batch: keys, values (every third null), headers, timestamps.
struct Owned {
  std::vector<Rec> recs;
  std::vector<Bytes> storage;
  std::vector<std::vector<RecordHeader>> headers;
  std::vector<RecordInput> inputs;
};

Owned make_records(std::int64_t first, std::size_t count, std::size_t value_bytes = 40, bool noisy = false) {
  Owned o;
  o.storage.reserve(count * 4);
  o.headers.reserve(count);
  for (std::size_t i = 0; i < count; ++i) {
    const std::int64_t offset = first + static_cast<std::int64_t>(i);
    Rec rec;
    rec.offset = offset;
    rec.timestamp_ms = 1'700'000'000'000 + offset;
    rec.key = "key-" + std::to_string(offset);
    if (offset % 3 != 1) {
      const Bytes v = sample(value_bytes, !noisy, static_cast<std::uint64_t>(offset) + 7);
      rec.value = "value-" + std::to_string(offset) + ":" + text_of(v);
    }
    if (offset % 2 == 0) rec.headers = {{"h", "hv-" + std::to_string(offset)}, {"null", std::nullopt}};
    o.recs.push_back(rec);
  }
  for (const Rec& rec : o.recs) {
    RecordInput in;
    in.timestamp_ms = rec.timestamp_ms;
    o.storage.push_back(bytes_of(*rec.key));
    in.key = o.storage.back();
    if (rec.value) {
      o.storage.push_back(bytes_of(*rec.value));
      in.value = o.storage.back();
    }
    std::vector<RecordHeader>& hs = o.headers.emplace_back();
    for (const auto& [k, v] : rec.headers) {
      RecordHeader h;
      h.key = k;  // views the Rec's string: o.recs is complete, so it stays in place
      if (v) {
        o.storage.push_back(bytes_of(*v));
        h.value = o.storage.back();
      }
      hs.push_back(h);
    }
    in.headers = hs;
    o.inputs.push_back(in);
  }
  return o;
}

// Writes `records` into the partition's ring as one batch compressed with `codec`, through a
// zero-copy claim: built plain, compressed, copied into the claim, committed.
Result<SendResult> send_compressed(TopicProducer& producer, std::uint32_t partition, std::span<const RecordInput> records,
                                   Compression codec, const CompressOptions& options = {}) {
  Bytes plain(std::size_t{4} << 20);
  BatchBuilder builder(plain);
  for (const RecordInput& r : records)
    if (!builder.append(r)) return Error{Errc::kInternal, "test batch too large"};
  plain.resize(builder.finish().size());
  Bytes packed;
  WEFT_TRY_VOID(compress_batch(codec, plain, packed, options));
  WEFT_TRY(ZeroCopyBatch claim, producer.claim(partition, packed.size(), static_cast<std::uint32_t>(records.size())));
  std::memcpy(claim.bytes.data(), packed.data(), packed.size());
  return producer.commit(claim, packed.size());
}

// Makes a compressed batch's records section undecodable (its first bytes, the codec's magic or
// length), keeping a valid CRC so only decompression fails.
Result<SendResult> send_undecodable(TopicProducer& producer, std::span<const RecordInput> records, Compression codec) {
  Bytes plain(std::size_t{1} << 20);
  BatchBuilder builder(plain);
  for (const RecordInput& r : records) (void)builder.append(r);
  plain.resize(builder.finish().size());
  Bytes packed;
  WEFT_TRY_VOID(compress_batch(codec, plain, packed));
  for (std::size_t i = 0; i < 4; ++i) packed[kBatchHeaderBytes + i] = std::byte{0xEE};
  const std::uint32_t crc = crc32c_extend(0, packed.data() + batch_field::kAttributes, packed.size() - batch_field::kAttributes);
  wire::store_be32(packed.data() + batch_field::kCrc, static_cast<std::int32_t>(crc));
  WEFT_TRY(ZeroCopyBatch claim, producer.claim(0, packed.size(), static_cast<std::uint32_t>(records.size())));
  std::memcpy(claim.bytes.data(), packed.data(), packed.size());
  return producer.commit(claim, packed.size());
}

#define ASSERT_OK_AND_ASSIGN(lhs, expr) ASSERT_OK_AND_ASSIGN_IMPL(WEFT_CONCAT(result_, __LINE__), lhs, expr)
#define ASSERT_OK_AND_ASSIGN_IMPL(tmp, lhs, expr) \
  auto tmp = (expr);                              \
  ASSERT_TRUE(tmp.ok()) << tmp.error().message;   \
  lhs = std::move(tmp).value()

class CompressedConsumeTest : public ::testing::Test {
 protected:
  void start(bool with_log) {
    NodeOptions options = test::test_node_options(true);
    if (with_log) options.open_log = [](std::string_view, std::uint32_t, const TopicConfig&) -> Result<std::unique_ptr<PartitionLog>> {
      return std::unique_ptr<PartitionLog>(std::make_unique<MemoryLog>());
    };
    ASSERT_OK_AND_ASSIGN(node_, Node::start(std::move(options)));
    client_ = Client::embedded(*node_);
  }
  void create(const std::string& name, TopicSettings more = {}) {
    TopicSettings settings = {{"partitions", "1"}, {"ring.capacity.bytes", "65536"}, {"max.batch.bytes", "16384"}};
    settings.insert(settings.end(), more.begin(), more.end());
    Result<TopicInfo> created = client_->create_topic(name, settings);
    ASSERT_TRUE(created.ok()) << created.error().message;
  }
  void TearDown() override {
    client_.reset();
    node_.reset();
  }
  std::unique_ptr<Node> node_;
  std::shared_ptr<Client> client_;
};

TEST_F(CompressedConsumeTest, ReadsEveryCodecsBatchesFromTheRing) {
  start(false);
  create("codecs");
  ASSERT_OK_AND_ASSIGN(TopicProducer producer, TopicProducer::create(client_, "codecs"));
  ASSERT_OK_AND_ASSIGN(TopicConsumer consumer, TopicConsumer::create(client_));
  ASSERT_TRUE(consumer.assign("codecs", {}, SeekTo::earliest()).ok());

  // Given, for each codec and framing, a batch of five records, each followed by a plain record
  std::vector<Rec> want;
  std::int64_t next = 0;
  for (const Codec& c : kCodecs) {
    const Owned batch = make_records(next, 5);
    ASSERT_OK_AND_ASSIGN(const SendResult sent, send_compressed(producer, 0, batch.inputs, c.codec, c.options));
    EXPECT_EQ(sent.offset, Offset{next}) << c.name;
    want.insert(want.end(), batch.recs.begin(), batch.recs.end());
    next += 5;
    const Owned plain = make_records(next, 1);
    ASSERT_TRUE(producer.send_to(0, plain.inputs[0]).ok());
    want.push_back(plain.recs[0]);
    ++next;
  }

  // Expect every record, with its offset, timestamp, key, value and headers, and no notice
  const Consumed got = consume(consumer, want.size());
  EXPECT_TRUE(got.notices.empty());
  ASSERT_EQ(got.records.size(), want.size());
  for (std::size_t i = 0; i < want.size(); ++i) EXPECT_EQ(got.records[i], want[i]) << i;
}

TEST_F(CompressedConsumeTest, ABatchCutByMaxPollRecordsCarriesOnInTheNextPoll) {
  start(false);
  create("cut");
  ASSERT_OK_AND_ASSIGN(TopicProducer producer, TopicProducer::create(client_, "cut"));
  ConsumerOptions options;
  options.max_poll_records = 3;
  ASSERT_OK_AND_ASSIGN(TopicConsumer consumer, TopicConsumer::create(client_, options));
  ASSERT_TRUE(consumer.assign("cut", {}, SeekTo::earliest()).ok());
  // Given two compressed batches of seven records
  const Owned first = make_records(0, 7), second = make_records(7, 7);
  ASSERT_TRUE(send_compressed(producer, 0, first.inputs, Compression::kZstd).ok());
  ASSERT_TRUE(send_compressed(producer, 0, second.inputs, Compression::kSnappy).ok());
  // Expect all fourteen in order, three at most per poll
  const Consumed got = consume(consumer, 14);
  ASSERT_EQ(got.records.size(), 14u);
  for (std::size_t i = 0; i < 7; ++i) {
    EXPECT_EQ(got.records[i], first.recs[i]);
    EXPECT_EQ(got.records[7 + i], second.recs[i]);
  }
  for (const std::size_t n : got.per_poll) EXPECT_LE(n, 3u);
  ASSERT_OK_AND_ASSIGN(const Offset position, consumer.position("cut", 0));
  EXPECT_EQ(position, Offset{14});
}

TEST_F(CompressedConsumeTest, ABatchThatDoesNotDecompressIsSkippedWithACorruptNotice) {
  start(false);
  create("undecodable");
  ASSERT_OK_AND_ASSIGN(TopicProducer producer, TopicProducer::create(client_, "undecodable"));
  ASSERT_OK_AND_ASSIGN(TopicConsumer consumer, TopicConsumer::create(client_));
  ASSERT_TRUE(consumer.assign("undecodable", {}, SeekTo::earliest()).ok());
  // Given a good compressed batch, one whose records do not decompress, and a good plain record
  const Owned good = make_records(0, 2), bad = make_records(2, 3), after = make_records(5, 1);
  ASSERT_TRUE(send_compressed(producer, 0, good.inputs, Compression::kGzip).ok());
  ASSERT_TRUE(send_undecodable(producer, bad.inputs, Compression::kGzip).ok());
  ASSERT_TRUE(producer.send_to(0, after.inputs[0]).ok());
  // Expect the good records, and a kCorrupt notice for the bad batch's offsets
  const Consumed got = consume(consumer, 3);
  ASSERT_EQ(got.records.size(), 3u);
  EXPECT_EQ(got.records[0], good.recs[0]);
  EXPECT_EQ(got.records[1], good.recs[1]);
  EXPECT_EQ(got.records[2], after.recs[0]);
  ASSERT_EQ(got.notices.size(), 1u);
  EXPECT_EQ(got.notices[0].kind, PollNotice::Kind::kCorrupt);
  EXPECT_EQ(got.notices[0].from, Offset{2});
  EXPECT_EQ(got.notices[0].to, Offset{5});
}

TEST_F(CompressedConsumeTest, ABatchThatInflatesPastTheLimitIsCorrupt) {
  start(false);
  create("bomb");
  ASSERT_OK_AND_ASSIGN(TopicProducer producer, TopicProducer::create(client_, "bomb"));
  ConsumerOptions strict;
  strict.max_decompressed_bytes = std::size_t{64} << 10;
  ASSERT_OK_AND_ASSIGN(TopicConsumer guarded, TopicConsumer::create(client_, strict));
  ASSERT_TRUE(guarded.assign("bomb", {}, SeekTo::earliest()).ok());
  ASSERT_OK_AND_ASSIGN(TopicConsumer trusting, TopicConsumer::create(client_));
  ASSERT_TRUE(trusting.assign("bomb", {}, SeekTo::earliest()).ok());
  // Given a zstd batch of a few hundred bytes holding 1 MiB of zeros, then a small record
  const Bytes zeros(std::size_t{1} << 20);
  RecordInput big;
  big.value = zeros;
  ASSERT_TRUE(send_compressed(producer, 0, std::span(&big, 1), Compression::kZstd).ok());
  const Owned small = make_records(1, 1);
  ASSERT_TRUE(producer.send_to(0, small.inputs[0]).ok());
  // Expect a consumer allowing 64 KiB per batch to skip it as corrupt
  const Consumed skipped = consume(guarded, 1);
  ASSERT_EQ(skipped.records.size(), 1u);
  EXPECT_EQ(skipped.records[0], small.recs[0]);
  ASSERT_EQ(skipped.notices.size(), 1u);
  EXPECT_EQ(skipped.notices[0].kind, PollNotice::Kind::kCorrupt);
  EXPECT_EQ(skipped.notices[0].from, Offset{0});
  // And one with the default 64 MiB to read the megabyte
  ASSERT_OK_AND_ASSIGN(const PollResult polled, trusting.poll(1000));
  ASSERT_FALSE(polled.records.empty());
  ASSERT_TRUE(polled.records[0].value.has_value());
  EXPECT_EQ(polled.records[0].value->size(), zeros.size());
  EXPECT_TRUE(std::ranges::all_of(*polled.records[0].value, [](std::byte b) { return b == std::byte{0}; }));
  // And a limit of zero refused
  ConsumerOptions zero;
  zero.max_decompressed_bytes = 0;
  EXPECT_EQ(TopicConsumer::create(client_, zero).error().code, Errc::kInvalidArgument);
}

TEST_F(CompressedConsumeTest, APollStopsTakingCompressedBatchesPastItsBudget) {
  start(false);
  create("budget");
  ASSERT_OK_AND_ASSIGN(TopicProducer producer, TopicProducer::create(client_, "budget"));
  ConsumerOptions options;
  options.max_decompressed_bytes = std::size_t{40} << 10;
  ASSERT_OK_AND_ASSIGN(TopicConsumer consumer, TopicConsumer::create(client_, options));
  ASSERT_TRUE(consumer.assign("budget", {}, SeekTo::earliest()).ok());
  // Given four batches of about 30 KiB each once decompressed (two values of 15 KB, one null)
  std::vector<Rec> want;
  for (std::int64_t b = 0; b < 4; ++b) {
    const Owned batch = make_records(b * 3, 3, 15'000);
    ASSERT_TRUE(send_compressed(producer, 0, batch.inputs, Compression::kLz4).ok());
    want.insert(want.end(), batch.recs.begin(), batch.recs.end());
  }
  // Expect every record, in polls of at most two batches (the one that reaches 40 KiB ends it)
  const Consumed got = consume(consumer, want.size());
  ASSERT_EQ(got.records.size(), want.size());
  for (std::size_t i = 0; i < want.size(); ++i) EXPECT_EQ(got.records[i], want[i]) << i;
  EXPECT_TRUE(got.notices.empty());
  for (const std::size_t n : got.per_poll) EXPECT_LE(n, 6u);
}

TEST_F(CompressedConsumeTest, SeekingToATimestampFindsARecordInsideACompressedBatch) {
  start(false);
  create("times");
  ASSERT_OK_AND_ASSIGN(TopicProducer producer, TopicProducer::create(client_, "times"));
  // Given ten records (timestamps base + offset) in one compressed batch
  const Owned batch = make_records(0, 10);
  ASSERT_TRUE(send_compressed(producer, 0, batch.inputs, Compression::kGzip).ok());
  // When a consumer seeks to the sixth record's time
  ASSERT_OK_AND_ASSIGN(TopicConsumer consumer, TopicConsumer::create(client_));
  ASSERT_TRUE(consumer.assign("times", {}, SeekTo::timestamp(batch.recs[5].timestamp_ms)).ok());
  // Expect reading to start at that record
  const Consumed got = consume(consumer, 5);
  ASSERT_EQ(got.records.size(), 5u);
  for (std::size_t i = 0; i < 5; ++i) EXPECT_EQ(got.records[i], batch.recs[5 + i]);
}

TEST_F(CompressedConsumeTest, ReadsCompressedBatchesBackFromTheLog) {
  start(true);
  create("logged");
  ASSERT_OK_AND_ASSIGN(TopicProducer producer, TopicProducer::create(client_, "logged"));
  // Given some 250 KiB of compressed batches, nearly incompressible, through a 64 KiB ring (so the
  // log alone holds the first), with one batch that does not decompress among them
  std::vector<Rec> want;
  std::int64_t next = 0;
  for (int b = 0; b < 40; ++b) {
    const Codec& c = kCodecs[static_cast<std::size_t>(b) % std::size(kCodecs)];
    const Owned batch = make_records(next, 10, 600, true);
    if (b == 17) {
      ASSERT_TRUE(send_undecodable(producer, batch.inputs, Compression::kZstd).ok());
    } else {
      ASSERT_OK_AND_ASSIGN(const SendResult sent, send_compressed(producer, 0, batch.inputs, c.codec, c.options));
      EXPECT_EQ(sent.offset, Offset{next});
      want.insert(want.end(), batch.recs.begin(), batch.recs.end());
    }
    next += 10;
  }
  // When a consumer reads from the earliest offset (the log's start)
  ConsumerOptions options;
  options.log_read_bytes = 16 << 10;  // several reads, batches cut by their ends
  options.max_poll_records = 64;
  ASSERT_OK_AND_ASSIGN(TopicConsumer consumer, TopicConsumer::create(client_, options));
  ASSERT_TRUE(consumer.assign("logged", {}, SeekTo::earliest()).ok());
  // Expect every good record in order, and the bad batch reported
  const Consumed got = consume(consumer, want.size());
  ASSERT_EQ(got.records.size(), want.size());
  for (std::size_t i = 0; i < want.size(); ++i) EXPECT_EQ(got.records[i], want[i]) << i;
  ASSERT_EQ(got.notices.size(), 1u);
  EXPECT_EQ(got.notices[0].kind, PollNotice::Kind::kCorrupt);
  EXPECT_EQ(got.notices[0].from, Offset{170});
  EXPECT_EQ(got.notices[0].to, Offset{180});
}

}  // namespace
}  // namespace weft
