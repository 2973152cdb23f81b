// Writes a seed corpus for checkpoint_fuzzer into DIR: offsets files written by OffsetStore
// itself (as they are, and without their CRC for the mode that appends it) and epoch histories
// written by SegmentLog, so the fuzzer starts from the loaders' happy paths.
//
// usage: checkpoint_fuzz_seeds DIR
#include <algorithm>
#include <cstdio>
#include <span>
#include <string>
#include <vector>

#include "fuzz_files.h"
#include "weft/fabric/offset_store.h"
#include "weft/storage/segment_log.h"

namespace {

// mode, then the file without its last `drop_tail` bytes.
void write_seed(const std::string& path, std::uint8_t mode, std::span<const std::uint8_t> file, std::size_t drop_tail = 0) {
  weft::fuzz::write_file(path, {std::span(&mode, 1), file.first(file.size() - std::min(drop_tail, file.size()))});
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s DIR\n", argv[0]);
    return 2;
  }
  const std::string out_dir = argv[1];
  const weft::fuzz::ScratchDir scratch_dir("/tmp/weft-checkpoint-seeds-");
  const std::string& scratch = scratch_dir.path();
  int written = 0;
  // Offsets: groups of 0, 1 and 3 entries, one with metadata.
  for (int entries : {0, 1, 3}) {
    const std::string dir = scratch + "/offsets-" + std::to_string(entries);
    auto store = weft::OffsetStore::open(dir);
    if (!store.ok()) return 1;
    std::vector<weft::CommittedOffset> commit;
    for (int i = 0; i < entries; ++i) {
      weft::CommittedOffset e;
      e.topic = "topic-" + std::to_string(i);
      e.partition = static_cast<std::uint32_t>(i);
      e.offset = weft::Offset{1000 * i};
      e.metadata = i == 1 ? "consumer-metadata" : "";
      e.commit_time_ms = 1'700'000'000'000 + i;
      commit.push_back(e);
    }
    if (entries == 0) {
      // An empty group file: committed, then its one entry dropped with its topic.
      weft::CommittedOffset e;
      e.topic = "gone";
      commit.push_back(e);
    }
    if (!(*store)->commit("g", commit).ok()) return 1;
    if (entries == 0 && !(*store)->forget_topic("gone").ok()) return 1;
    const std::vector<std::uint8_t> file = weft::fuzz::read_all(dir + "/g.offsets");
    if (file.empty()) return 1;
    write_seed(out_dir + "/offsets-" + std::to_string(entries), 0x00, file);
    write_seed(out_dir + "/offsets-crc-appended-" + std::to_string(entries), 0x80, file, 4);
    written += 2;
  }
  // Epoch histories: none, one epoch, several.
  const std::vector<std::vector<weft::EpochStart>> histories = {
      {}, {{1, weft::Offset{0}}}, {{0, weft::Offset{0}}, {3, weft::Offset{100}}, {4, weft::Offset{100}}, {9, weft::Offset{2500}}}};
  for (std::size_t h = 0; h < histories.size(); ++h) {
    const std::string dir = scratch + "/epochs-" + std::to_string(h);
    auto log = weft::storage::SegmentLog::open(dir, weft::Offset{0});
    if (!log.ok() || !(*log)->save_epochs(histories[h], weft::EpochSave::kNow).ok()) return 1;
    write_seed(out_dir + "/epochs-" + std::to_string(h), 0x01, weft::fuzz::read_all(dir + "/leader-epoch-checkpoint"));
    ++written;
  }
  std::printf("checkpoint_fuzz_seeds: %d seeds in %s\n", written, out_dir.c_str());
  return written == 9 ? 0 : 1;
}
