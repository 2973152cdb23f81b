// libFuzzer target for the small checkpoint files a restarted node reads besides its segments:
// a consumer group's committed offsets (`<group>.offsets`, fabric/offset_store.h) and a
// partition's leader-epoch history (`leader-epoch-checkpoint`, read by SegmentLog and taken by
// EpochHistory::restore). Each input is
//
//   u8 mode | file bytes
//
// mode bit 0 picks the file: 0 offsets, 1 epoch history. For offsets, bit 7 appends the CRC-32C
// of the bytes given, so inputs get past the checksum to the entries. The file is then loaded
// and used as a node would: fetch, commit and delete for a group; restore and the epoch
// look-ups for a history. Any crash, leak, out-of-bounds access, hang or undefined behaviour is
// a bug; an error is the expected answer to a bad file, and a group that failed to load must
// take no commits until deleted.
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <span>
#include <string>
#include <vector>

#include "fuzz_files.h"
#include "weft/fabric/crc32c.h"
#include "weft/fabric/log.h"
#include "weft/fabric/offset_store.h"
#include "weft/fabric/replication.h"
#include "weft/storage/segment_log.h"

namespace {

void offsets_file(const std::string& dir, std::span<const std::uint8_t> file, bool append_crc) {
  std::uint8_t crc[4] = {};
  if (append_crc) {
    const std::uint32_t value = weft::crc32c(std::as_bytes(file));
    for (int i = 0; i < 4; ++i) crc[i] = static_cast<std::uint8_t>(value >> (8 * i));
  }
  weft::fuzz::write_file(dir + "/g.offsets", {file, append_crc ? std::span<const std::uint8_t>(crc) : std::span<const std::uint8_t>()});
  weft::Result<std::unique_ptr<weft::OffsetStore>> store = weft::OffsetStore::open(dir);
  if (!store.ok()) return;  // only a directory that cannot be listed; not this input's doing
  weft::OffsetStore& s = **store;
  const bool refused = !s.load_problems().empty();
  for (const weft::CommittedOffset& e : s.fetch_all("g")) {
    if (!s.fetch("g", e.topic, e.partition)) __builtin_trap();  // listed, so found
  }
  weft::CommittedOffset next;
  next.topic = "t";
  next.partition = 7;
  next.offset = weft::Offset{42};
  const weft::Result<void> committed = s.commit("g", std::span(&next, 1));
  if (refused == committed.ok()) __builtin_trap();  // a group that failed to load takes no commits
  if (committed.ok() && (!s.fetch("g", "t", 7) || s.fetch("g", "t", 7)->offset != weft::Offset{42})) __builtin_trap();
  (void)s.delete_group("g");
  if (!s.commit("g", std::span(&next, 1)).ok()) __builtin_trap();  // deleted: committed to afresh
}

void epoch_history(const std::string& dir, std::span<const std::uint8_t> file) {
  const std::string log_dir = dir + "/p-0";
  std::filesystem::create_directory(log_dir);
  weft::fuzz::write_file(log_dir + "/leader-epoch-checkpoint", {file});
  weft::Result<std::unique_ptr<weft::storage::SegmentLog>> log = weft::storage::SegmentLog::open(log_dir, weft::Offset{0});
  if (!log.ok()) __builtin_trap();  // an empty log opens whatever its epoch file holds
  weft::Result<std::vector<weft::EpochStart>> loaded = (*log)->load_epochs();
  if (!loaded.ok()) return;
  for (const weft::Offset log_end : {weft::Offset{0}, weft::Offset{1'000}, weft::Offset{INT64_MAX}}) {
    weft::EpochHistory history;
    if (!history.restore(*loaded, log_end)) continue;
    volatile std::uint64_t sink = 0;  // unsigned: a sum that may wrap
    for (const std::int32_t epoch : {INT32_MIN, -1, 0, 1, 5, INT32_MAX})
      sink = sink + static_cast<std::uint64_t>(history.end_of(epoch, log_end).second.value);
    history.truncate_to(weft::Offset{500});
    history.assign(INT32_MAX, weft::Offset{600});
    sink = sink + static_cast<std::uint64_t>(history.last_epoch());
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 1) return 0;
  const std::uint8_t mode = data[0];
  const std::span<const std::uint8_t> file(data + 1, size - 1);
  weft::set_log_level(weft::LogLevel::kError);  // a bad file is logged: every input has one
  const weft::fuzz::ScratchDir dir("/dev/shm/weft-checkpoint-fuzz-");  // a fresh one per input: the stores leave files
  if ((mode & 1) == 0) {
    offsets_file(dir.path(), file, (mode & 0x80) != 0);
  } else {
    epoch_history(dir.path(), file);
  }
  return 0;
}
