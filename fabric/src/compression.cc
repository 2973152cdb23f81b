#include "weft/fabric/compression.h"

#define ZLIB_CONST  // next_in is `const Bytef*`: the input is never written
#include <lz4frame.h>
#include <snappy.h>
#include <zlib.h>
#include <zstd.h>

#include <algorithm>
#include <climits>
#include <cstring>
#include <limits>
#include <string>

#include "weft/fabric/crc32c.h"

namespace weft {

std::string_view compression_name(Compression codec) noexcept {
  switch (codec) {
    case Compression::kNone: return "none";
    case Compression::kGzip: return "gzip";
    case Compression::kSnappy: return "snappy";
    case Compression::kLz4: return "lz4";
    case Compression::kZstd: return "zstd";
    default: return "unknown";
  }
}

namespace {

// xerial snappy-java's stream header: magic, then version and compatible version (1 and 1,
// 4 bytes each, big-endian), then blocks of [length: 4 bytes big-endian][raw snappy block].
constexpr unsigned char kXerialMagic[8] = {0x82, 'S', 'N', 'A', 'P', 'P', 'Y', 0x00};
constexpr std::size_t kXerialHeaderBytes = 16;
constexpr std::int32_t kXerialVersion = 1;
constexpr std::size_t kXerialBlockBytes = std::size_t{32} << 10;  // snappy-java's default block

// The first output buffer when the stream does not state its size, and the smallest growth.
constexpr std::size_t kMinOutputBytes = std::size_t{4} << 10;
// A size a stream states is believed up to this many times its compressed bytes: past it the
// buffer grows as bytes come, so a forged size costs no more than the bytes it really holds.
constexpr std::size_t kTrustedRatio = 64;
// A snappy element of n bytes writes at most 64 / 3 n bytes (a 3-byte copy of 64), so a block
// that claims more than this many times its size is forged or damaged.
constexpr std::size_t kSnappyMaxRatio = 32;

Error corrupt(Compression codec, std::string what) {
  return Error{Errc::kCorrupt, std::string(compression_name(codec)) + " records: " + std::move(what)};
}

Error too_large(Compression codec, std::size_t max_out_bytes) {
  return corrupt(codec, "decompress to more than " + std::to_string(max_out_bytes) +
                            " bytes, the limit per batch (a decompression bomb, or a limit set too low)");
}

const char* as_chars(const std::byte* p) noexcept { return reinterpret_cast<const char*>(p); }
char* as_chars(std::byte* p) noexcept { return reinterpret_cast<char*>(p); }

std::uint32_t load_be32u(const std::byte* p) noexcept { return static_cast<std::uint32_t>(wire::load_be32(p)); }

std::size_t times(std::size_t bytes, std::size_t ratio) noexcept { return bytes > SIZE_MAX / ratio ? SIZE_MAX : bytes * ratio; }

// The output of one streaming decompression: `out`, grown by doubling up to max_out_bytes + 1
// (a stream that fills that last byte is over the limit). `expected` is the size the stream
// states (0: none), untrusted: it only sizes the first buffer, and within kTrustedRatio.
class Output {
 public:
  Output(std::vector<std::byte>& out, std::size_t max_out_bytes, std::size_t in_bytes, std::size_t expected)
      : out_(out), limit_(max_out_bytes == SIZE_MAX ? SIZE_MAX : max_out_bytes + 1) {
    const std::size_t guess = expected != 0 ? std::min(expected, times(in_bytes, kTrustedRatio)) : times(in_bytes, 4);
    // One byte over the expected size lets the stream's end be seen without growing; a reused
    // buffer keeps its size when larger (growing it again would zero it again).
    out_.resize(std::min(limit_, std::max({kMinOutputBytes, out_.size(), std::min(guess, limit_ - 1) + 1})));
  }
  std::byte* at(std::size_t offset) noexcept { return out_.data() + offset; }
  std::size_t size() const noexcept { return out_.size(); }
  bool over_limit(std::size_t produced) const noexcept { return produced == limit_; }
  // Room for more output after `produced` bytes; false when the limit is reached.
  bool make_room(std::size_t produced) {
    if (produced < out_.size()) return true;
    if (out_.size() == limit_) return false;
    out_.resize(std::min(limit_, std::max(kMinOutputBytes, out_.size() > limit_ / 2 ? limit_ : out_.size() * 2)));
    return true;
  }
  void finish(std::size_t produced) { out_.resize(produced); }

 private:
  std::vector<std::byte>& out_;
  std::size_t limit_;
};

struct InflateStream {
  z_stream zs{};
  bool ready = false;
  InflateStream() = default;
  InflateStream(const InflateStream&) = delete;
  InflateStream& operator=(const InflateStream&) = delete;
  ~InflateStream() {
    if (ready) inflateEnd(&zs);
  }
};
struct Lz4Free {
  void operator()(LZ4F_dctx* d) const noexcept { LZ4F_freeDecompressionContext(d); }
};
struct ZstdFree {
  void operator()(ZSTD_DCtx* d) const noexcept { ZSTD_freeDCtx(d); }
};

}  // namespace

// Each context is made at its codec's first use and kept (with its window and buffers) for the
// next batch. Never moved once made: a z_stream's state points back at it.
struct Decompressor::Contexts {
  InflateStream gzip;
  std::unique_ptr<LZ4F_dctx, Lz4Free> lz4;
  std::unique_ptr<ZSTD_DCtx, ZstdFree> zstd;
};

namespace {

Result<void> inflate_gzip(InflateStream& stream, std::span<const std::byte> in, std::vector<std::byte>& out,
                          std::size_t max_out_bytes) {
  constexpr Compression kCodec = Compression::kGzip;
  z_stream& zs = stream.zs;
  if (!stream.ready) {
    // 15 + 16: a 32 KiB window and a gzip header and trailer (RFC 1952), as Kafka writes.
    if (inflateInit2(&zs, 15 + 16) != Z_OK) return Error{Errc::kResourceExhausted, "gzip records: inflateInit2 failed"};
    stream.ready = true;
  } else if (inflateReset(&zs) != Z_OK) {
    return Error{Errc::kInternal, "gzip records: inflateReset failed"};
  }
  if (in.size() > UINT_MAX) return corrupt(kCodec, "input of " + std::to_string(in.size()) + " bytes is larger than any batch");
  // The trailer's ISIZE (the last member's size mod 2^32) as the first guess.
  const std::size_t expected =
      in.size() >= 18 ? (static_cast<std::size_t>(in[in.size() - 4]) | static_cast<std::size_t>(in[in.size() - 3]) << 8 |
                         static_cast<std::size_t>(in[in.size() - 2]) << 16 | static_cast<std::size_t>(in[in.size() - 1]) << 24)
                      : 0;
  Output output(out, max_out_bytes, in.size(), expected);
  zs.next_in = reinterpret_cast<const Bytef*>(in.data());
  zs.avail_in = static_cast<uInt>(in.size());
  std::size_t produced = 0;
  for (;;) {
    if (!output.make_room(produced)) return too_large(kCodec, max_out_bytes);
    const auto room = static_cast<uInt>(std::min<std::size_t>(output.size() - produced, UINT_MAX));
    zs.next_out = reinterpret_cast<Bytef*>(output.at(produced));
    zs.avail_out = room;
    const int rc = inflate(&zs, Z_NO_FLUSH);
    produced += room - zs.avail_out;
    if (output.over_limit(produced)) return too_large(kCodec, max_out_bytes);
    if (rc == Z_STREAM_END) {
      if (zs.avail_in == 0) break;
      // Another member follows (gzip streams may be concatenated; Java's GZIPInputStream reads on).
      if (inflateReset(&zs) != Z_OK) return Error{Errc::kInternal, "gzip records: inflateReset failed"};
      continue;
    }
    if (rc == Z_OK) continue;
    if (rc == Z_BUF_ERROR && zs.avail_out == 0) continue;  // needs room: grown at the top
    if (rc == Z_BUF_ERROR && zs.avail_in == 0)
      return corrupt(kCodec, "truncated: the stream ends after " + std::to_string(in.size()) + " bytes without its trailer");
    return corrupt(kCodec, zs.msg != nullptr ? zs.msg : "inflate failed with code " + std::to_string(rc));
  }
  output.finish(produced);
  return ok();
}

// One raw snappy block of `in` into `dst` (sized by snappy::GetUncompressedLength).
Result<void> unsnappy_block(const std::byte* in, std::size_t size, std::byte* dst, std::size_t length) {
  char empty = 0;
  if (!snappy::RawUncompress(as_chars(in), size, length == 0 ? &empty : as_chars(dst)))
    return corrupt(Compression::kSnappy, "a block of " + std::to_string(size) + " bytes does not decompress");
  return ok();
}

Result<void> unsnappy(std::span<const std::byte> in, std::vector<std::byte>& out, std::size_t max_out_bytes) {
  constexpr Compression kCodec = Compression::kSnappy;
  const bool xerial = in.size() >= sizeof kXerialMagic && std::memcmp(in.data(), kXerialMagic, sizeof kXerialMagic) == 0;
  if (!xerial) {  // one raw block, its decompressed length first
    std::size_t length = 0;
    if (!snappy::GetUncompressedLength(as_chars(in.data()), in.size(), &length))
      return corrupt(kCodec, "not a snappy block (no xerial header, and no valid length at the start)");
    if (length > max_out_bytes) return too_large(kCodec, max_out_bytes);
    if (length > times(in.size(), kSnappyMaxRatio))
      return corrupt(kCodec, "a block of " + std::to_string(in.size()) + " bytes claims " + std::to_string(length) + " bytes decompressed");
    out.resize(length);
    return unsnappy_block(in.data(), in.size(), out.data(), length);
  }
  if (in.size() < kXerialHeaderBytes) return corrupt(kCodec, "truncated xerial header (" + std::to_string(in.size()) + " bytes)");
  // Two passes: every block's length and decompressed length are checked (and the total
  // bounded) before the output is sized once and filled.
  std::size_t total = 0;
  for (std::size_t at = kXerialHeaderBytes; at < in.size();) {
    if (in.size() - at < 4) return corrupt(kCodec, "truncated xerial block length at byte " + std::to_string(at));
    const std::uint32_t block = load_be32u(in.data() + at);
    at += 4;
    if (block > in.size() - at)
      return corrupt(kCodec, "xerial block of " + std::to_string(block) + " bytes at byte " + std::to_string(at - 4) +
                                 " runs past the " + std::to_string(in.size()) + " bytes given");
    std::size_t length = 0;
    if (!snappy::GetUncompressedLength(as_chars(in.data() + at), block, &length))
      return corrupt(kCodec, "xerial block at byte " + std::to_string(at - 4) + " has no valid length");
    if (length > max_out_bytes - total) return too_large(kCodec, max_out_bytes);
    if (length > times(block, kSnappyMaxRatio))
      return corrupt(kCodec, "xerial block at byte " + std::to_string(at - 4) + " of " + std::to_string(block) + " bytes claims " +
                                 std::to_string(length) + " bytes decompressed");
    total += length;
    at += block;
  }
  out.resize(total);
  std::size_t produced = 0;
  for (std::size_t at = kXerialHeaderBytes; at < in.size();) {
    const std::uint32_t block = load_be32u(in.data() + at);
    at += 4;
    std::size_t length = 0;
    (void)snappy::GetUncompressedLength(as_chars(in.data() + at), block, &length);  // as checked above
    WEFT_TRY_VOID(unsnappy_block(in.data() + at, block, out.data() + produced, length));
    produced += length;
    at += block;
  }
  return ok();
}

Result<void> unlz4(LZ4F_dctx* dctx, std::span<const std::byte> in, std::vector<std::byte>& out, std::size_t max_out_bytes) {
  constexpr Compression kCodec = Compression::kLz4;
  LZ4F_resetDecompressionContext(dctx);  // after an error the context is undefined until reset
  LZ4F_frameInfo_t info{};
  std::size_t consumed = in.size();
  const std::size_t header = LZ4F_getFrameInfo(dctx, &info, in.data(), &consumed);
  if (LZ4F_isError(header)) return corrupt(kCodec, std::string("frame header: ") + LZ4F_getErrorName(header));
  Output output(out, max_out_bytes, in.size(), static_cast<std::size_t>(info.contentSize));
  std::size_t produced = 0;
  for (;;) {
    if (!output.make_room(produced)) return too_large(kCodec, max_out_bytes);
    std::size_t dst = output.size() - produced;
    std::size_t src = in.size() - consumed;
    const std::size_t hint = LZ4F_decompress(dctx, output.at(produced), &dst, in.data() + consumed, &src, nullptr);
    if (LZ4F_isError(hint)) return corrupt(kCodec, LZ4F_getErrorName(hint));
    produced += dst;
    consumed += src;
    if (output.over_limit(produced)) return too_large(kCodec, max_out_bytes);
    if (hint == 0) {
      if (consumed == in.size()) break;
      continue;  // a frame ended and another follows: the context starts it
    }
    if (produced < output.size() && consumed == in.size())
      return corrupt(kCodec, "truncated: the frame ends after " + std::to_string(in.size()) + " bytes");
    if (dst == 0 && src == 0 && produced < output.size()) return corrupt(kCodec, "the decoder makes no progress");
  }
  output.finish(produced);
  return ok();
}

Result<void> unzstd(ZSTD_DCtx* dctx, std::span<const std::byte> in, std::vector<std::byte>& out, std::size_t max_out_bytes) {
  constexpr Compression kCodec = Compression::kZstd;
  ZSTD_DCtx_reset(dctx, ZSTD_reset_session_only);
  const unsigned long long declared = ZSTD_getFrameContentSize(in.data(), in.size());
  const std::size_t expected = declared < ZSTD_CONTENTSIZE_ERROR ? static_cast<std::size_t>(std::min<unsigned long long>(declared, SIZE_MAX)) : 0;
  Output output(out, max_out_bytes, in.size(), expected);
  ZSTD_inBuffer input{in.data(), in.size(), 0};
  std::size_t produced = 0;
  for (;;) {
    if (!output.make_room(produced)) return too_large(kCodec, max_out_bytes);
    ZSTD_outBuffer buffer{output.at(0), output.size(), produced};
    const std::size_t read_before = input.pos;
    const std::size_t left = ZSTD_decompressStream(dctx, &buffer, &input);
    if (ZSTD_isError(left)) return corrupt(kCodec, ZSTD_getErrorName(left));
    const bool progress = buffer.pos != produced || input.pos != read_before;
    produced = buffer.pos;
    if (output.over_limit(produced)) return too_large(kCodec, max_out_bytes);
    if (left == 0 && input.pos == input.size) break;  // every frame decoded and flushed
    if (produced < output.size() && input.pos == input.size)
      return corrupt(kCodec, "truncated: the frame ends after " + std::to_string(in.size()) + " bytes");
    if (!progress && produced < output.size()) return corrupt(kCodec, "the decoder makes no progress");
  }
  output.finish(produced);
  return ok();
}

}  // namespace

Decompressor::Decompressor() noexcept = default;
Decompressor::Decompressor(Decompressor&&) noexcept = default;
Decompressor& Decompressor::operator=(Decompressor&&) noexcept = default;
Decompressor::~Decompressor() = default;

Result<void> Decompressor::decompress(Compression codec, std::span<const std::byte> in, std::vector<std::byte>& out,
                                      std::size_t max_out_bytes) {
  if (!contexts_) contexts_ = std::make_unique<Contexts>();
  Contexts& c = *contexts_;
  switch (codec) {
    case Compression::kNone:
      if (in.size() > max_out_bytes) return too_large(codec, max_out_bytes);
      out.assign(in.begin(), in.end());
      return ok();
    case Compression::kGzip: return inflate_gzip(c.gzip, in, out, max_out_bytes);
    case Compression::kSnappy: return unsnappy(in, out, max_out_bytes);
    case Compression::kLz4:
      if (!c.lz4) {
        LZ4F_dctx* dctx = nullptr;
        if (LZ4F_isError(LZ4F_createDecompressionContext(&dctx, LZ4F_VERSION)))
          return Error{Errc::kResourceExhausted, "lz4 records: cannot make a decompression context"};
        c.lz4.reset(dctx);
      }
      return unlz4(c.lz4.get(), in, out, max_out_bytes);
    case Compression::kZstd:
      if (!c.zstd) {
        c.zstd.reset(ZSTD_createDCtx());
        if (!c.zstd) return Error{Errc::kResourceExhausted, "zstd records: cannot make a decompression context"};
      }
      return unzstd(c.zstd.get(), in, out, max_out_bytes);
    default: return corrupt(codec, "unknown compression codec " + std::to_string(static_cast<int>(codec)));
  }
}

Result<void> decompress_records(Compression codec, std::span<const std::byte> in, std::vector<std::byte>& out,
                                std::size_t max_out_bytes) {
  Decompressor decompressor;
  return decompressor.decompress(codec, in, out, max_out_bytes);
}

// ---- compressing ----------------------------------------------------------------------------

namespace {

Error library_failed(Compression codec, std::string what) {
  return Error{Errc::kInternal, std::string(compression_name(codec)) + " compression: " + std::move(what)};
}

Result<void> deflate_gzip(std::span<const std::byte> in, std::vector<std::byte>& out, int level) {
  constexpr Compression kCodec = Compression::kGzip;
  struct Stream {
    z_stream zs{};
    bool ready = false;
    ~Stream() {
      if (ready) deflateEnd(&zs);
    }
  } stream;
  if (deflateInit2(&stream.zs, level != 0 ? level : Z_DEFAULT_COMPRESSION, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) != Z_OK)
    return library_failed(kCodec, "deflateInit2 refused level " + std::to_string(level));
  stream.ready = true;
  const uLong bound = deflateBound(&stream.zs, static_cast<uLong>(in.size()));  // the gzip header and trailer included
  if (bound > UINT_MAX) return Error{Errc::kInvalidArgument, "gzip compression: input too large"};
  out.resize(bound);
  stream.zs.next_in = reinterpret_cast<const Bytef*>(in.data());
  stream.zs.avail_in = static_cast<uInt>(in.size());
  stream.zs.next_out = reinterpret_cast<Bytef*>(out.data());
  stream.zs.avail_out = static_cast<uInt>(out.size());
  if (const int rc = deflate(&stream.zs, Z_FINISH); rc != Z_STREAM_END) return library_failed(kCodec, "deflate returned " + std::to_string(rc));
  out.resize(stream.zs.total_out);
  return ok();
}

void snappy_raw(const std::byte* in, std::size_t size, std::vector<std::byte>& out, std::size_t at) {
  out.resize(at + snappy::MaxCompressedLength(size));
  std::size_t written = 0;
  snappy::RawCompress(as_chars(in), size, as_chars(out.data() + at), &written);
  out.resize(at + written);
}

Result<void> compress_snappy(std::span<const std::byte> in, std::vector<std::byte>& out, SnappyFraming framing) {
  if (in.size() > UINT32_MAX) return Error{Errc::kInvalidArgument, "snappy compression: input too large"};
  out.clear();
  if (framing == SnappyFraming::kRaw) {
    snappy_raw(in.data(), in.size(), out, 0);
    return ok();
  }
  out.resize(kXerialHeaderBytes);
  std::memcpy(out.data(), kXerialMagic, sizeof kXerialMagic);
  wire::store_be32(out.data() + 8, kXerialVersion);
  wire::store_be32(out.data() + 12, kXerialVersion);  // the oldest version that reads it
  for (std::size_t at = 0; at < in.size(); at += kXerialBlockBytes) {
    const std::size_t length_at = out.size();
    snappy_raw(in.data() + at, std::min(kXerialBlockBytes, in.size() - at), out, length_at + 4);
    wire::store_be32(out.data() + length_at, static_cast<std::int32_t>(out.size() - length_at - 4));
  }
  return ok();
}

Result<void> compress_lz4(std::span<const std::byte> in, std::vector<std::byte>& out, const CompressOptions& options) {
  LZ4F_preferences_t prefs{};
  prefs.frameInfo.blockSizeID = LZ4F_max64KB;
  prefs.frameInfo.blockMode = LZ4F_blockIndependent;
  prefs.frameInfo.contentSize = options.declare_size ? in.size() : 0;
  prefs.compressionLevel = options.level;
  out.resize(LZ4F_compressFrameBound(in.size(), &prefs));
  const std::size_t written = LZ4F_compressFrame(out.data(), out.size(), in.data(), in.size(), &prefs);
  if (LZ4F_isError(written)) return library_failed(Compression::kLz4, LZ4F_getErrorName(written));
  out.resize(written);
  return ok();
}

Result<void> compress_zstd(std::span<const std::byte> in, std::vector<std::byte>& out, const CompressOptions& options) {
  constexpr Compression kCodec = Compression::kZstd;
  const std::unique_ptr<ZSTD_CCtx, decltype(&ZSTD_freeCCtx)> cctx(ZSTD_createCCtx(), &ZSTD_freeCCtx);
  if (!cctx) return library_failed(kCodec, "cannot make a context");
  if (ZSTD_isError(ZSTD_CCtx_setParameter(cctx.get(), ZSTD_c_compressionLevel, options.level != 0 ? options.level : ZSTD_CLEVEL_DEFAULT)) ||
      ZSTD_isError(ZSTD_CCtx_setParameter(cctx.get(), ZSTD_c_contentSizeFlag, options.declare_size ? 1 : 0)))
    return library_failed(kCodec, "level " + std::to_string(options.level) + " refused");
  out.resize(ZSTD_compressBound(in.size()));
  const std::size_t written = ZSTD_compress2(cctx.get(), out.data(), out.size(), in.data(), in.size());
  if (ZSTD_isError(written)) return library_failed(kCodec, ZSTD_getErrorName(written));
  out.resize(written);
  return ok();
}

}  // namespace

Result<void> compress_records(Compression codec, std::span<const std::byte> in, std::vector<std::byte>& out,
                              const CompressOptions& options) {
  switch (codec) {
    case Compression::kNone: out.assign(in.begin(), in.end()); return ok();
    case Compression::kGzip: return deflate_gzip(in, out, options.level);
    case Compression::kSnappy: return compress_snappy(in, out, options.snappy_framing);
    case Compression::kLz4: return compress_lz4(in, out, options);
    case Compression::kZstd: return compress_zstd(in, out, options);
    default: return Error{Errc::kInvalidArgument, "unknown compression codec " + std::to_string(static_cast<int>(codec))};
  }
}

Result<void> compress_batch(Compression codec, std::span<const std::byte> batch, std::vector<std::byte>& out,
                            const CompressOptions& options) {
  Result<BatchView> view = BatchView::parse_trusted(batch);
  if (!view.ok()) return Error{Errc::kInvalidArgument, "compress_batch: " + view.error().message};
  if (view->compression() != Compression::kNone)
    return Error{Errc::kInvalidArgument, "compress_batch: the batch is compressed already (" +
                                             std::string(compression_name(view->compression())) + ")"};
  if (compression_name(codec) == "unknown")
    return Error{Errc::kInvalidArgument, "compress_batch: unknown compression codec " + std::to_string(static_cast<int>(codec))};
  std::vector<std::byte> records;
  WEFT_TRY_VOID(compress_records(codec, view->bytes().subspan(kBatchHeaderBytes), records, options));
  const std::size_t total = kBatchHeaderBytes + records.size();
  if (total - kBatchLogOverhead > static_cast<std::size_t>(std::numeric_limits<std::int32_t>::max()))
    return Error{Errc::kInvalidArgument, "compress_batch: the compressed batch is over 2 GiB"};
  out.resize(total);
  std::memcpy(out.data(), view->bytes().data(), kBatchHeaderBytes);
  if (!records.empty()) std::memcpy(out.data() + kBatchHeaderBytes, records.data(), records.size());
  const auto attributes = static_cast<std::int16_t>((view->attributes() & ~batch_attr::kCompressionMask) | static_cast<std::int16_t>(codec));
  wire::store_be16(out.data() + batch_field::kAttributes, attributes);
  wire::store_be32(out.data() + batch_field::kBatchLength, static_cast<std::int32_t>(total - kBatchLogOverhead));
  const std::uint32_t crc = crc32c_extend(0, out.data() + batch_field::kAttributes, total - batch_field::kAttributes);
  wire::store_be32(out.data() + batch_field::kCrc, static_cast<std::int32_t>(crc));
  return ok();
}

}  // namespace weft
