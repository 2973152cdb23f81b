// libFuzzer target for a segment's files as a restarted node finds them: whatever a crash, a
// full disk or another program left. Each input is
//
//   u8 mode | u16 index bytes | u16 time-index bytes (little-endian) | index | time index | log
//
// written as one segment's three files; mode picks how it is opened: as the active (last)
// segment, whose torn or corrupt tail is cut off; as an older one, where any fault is an error;
// as an older one not yet synced, whose tail may end early; or trusted, from its indexes. What opens is then read through: every batch, offset and
// timestamp lookups. Any crash, leak, out-of-bounds access, hang or undefined behaviour is a bug;
// an error is the expected answer to a bad file.
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>

#include "fuzz_files.h"
#include "weft/fabric/log.h"
#include "weft/storage/segment.h"

namespace {

constexpr weft::Offset kBase{1000};

std::uint64_t touch(std::span<const std::byte> bytes) {
  std::uint64_t sum = 0;
  for (std::byte b : bytes) sum += std::to_integer<std::uint8_t>(b);
  return sum;
}

void read_through(weft::storage::Segment& segment) {
  volatile std::uint64_t sink = 0;
  std::uint64_t position = 0;
  // Bounded: each step moves past one whole batch of at least 61 bytes.
  for (int batches = 0; batches < 100'000; ++batches) {
    weft::Result<std::vector<std::byte>> batch = segment.read_batch(position);
    if (!batch.ok() || batch->empty()) break;
    sink = sink + touch(*batch);
    position += batch->size();
  }
  std::byte scratch[4096];
  if (weft::Result<std::size_t> got = segment.read(0, scratch); got.ok()) sink = sink + touch(std::span(scratch, *got));
  const std::int64_t span = segment.next_offset() - segment.base_offset();
  for (std::int64_t k : {std::int64_t{0}, span / 2, span - 1, span}) {
    if (weft::Result<std::uint64_t> at = segment.find(segment.base_offset() + k); at.ok()) sink = sink + *at;
  }
  for (std::int64_t ts : {INT64_MIN, std::int64_t{0}, std::int64_t{1'700'000'000'000}, INT64_MAX}) {
    if (weft::Result<std::uint64_t> at = segment.find_time(ts); at.ok()) sink = sink + *at;
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static const weft::fuzz::ScratchDir dir("/dev/shm/weft-segment-fuzz-");  // tmpfs: no disk I/O per input
  weft::set_log_level(weft::LogLevel::kError);  // a bad file is logged: most inputs have one
  if (size < 5) return 0;
  const std::uint8_t mode = data[0] % 4;
  std::size_t index_bytes = static_cast<std::size_t>(data[1]) | static_cast<std::size_t>(data[2]) << 8;
  std::size_t time_bytes = static_cast<std::size_t>(data[3]) | static_cast<std::size_t>(data[4]) << 8;
  std::span<const std::uint8_t> rest(data + 5, size - 5);
  index_bytes = std::min(index_bytes, rest.size());
  const std::span<const std::uint8_t> index = rest.first(index_bytes);
  rest = rest.subspan(index_bytes);
  time_bytes = std::min(time_bytes, rest.size());
  const std::span<const std::uint8_t> time_index = rest.first(time_bytes);
  const std::span<const std::uint8_t> log = rest.subspan(time_bytes);

  const std::string log_path = dir.path() + "/" + weft::storage::segment_file_name(kBase, ".log");
  const std::string index_path = dir.path() + "/" + weft::storage::segment_file_name(kBase, ".index");
  const std::string time_path = dir.path() + "/" + weft::storage::segment_file_name(kBase, ".timeindex");
  weft::fuzz::write_file(log_path, {log});
  weft::fuzz::write_file(index_path, {index});
  weft::fuzz::write_file(time_path, {time_index});

  weft::storage::SegmentOptions options;
  options.direct_io = false;  // tmpfs
  options.io_uring = false;
  options.index_interval_bytes = 256;
  weft::storage::SegmentRecovery recovery;
  weft::Result<weft::storage::Segment> segment =
      mode == 0   ? weft::storage::Segment::open(dir.path(), kBase, true, &recovery, options)
      : mode == 1 ? weft::storage::Segment::open(dir.path(), kBase, false, &recovery, options)
      : mode == 2 ? weft::storage::Segment::open(dir.path(), kBase, false, &recovery, options, true)  // closed, not yet synced
                  : weft::storage::Segment::open_trusted(dir.path(), kBase, &recovery, options);
  if (segment.ok()) read_through(*segment);
  ::unlink(log_path.c_str());
  ::unlink(index_path.c_str());
  ::unlink(time_path.c_str());
  return 0;
}
