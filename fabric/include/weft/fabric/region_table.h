// The regions a software transport (tcp, loopback) lets peers write into, looked up by key on
// every received write without a lock. Registration is rare and takes a mutex; a key carries a
// generation, so a stale key never reaches a slot that was reused for another region, and a
// per-table secret, so a peer that was never given a key cannot guess one.
#pragma once

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <span>

#include "weft/fabric/link.h"
#include "weft/fabric/result.h"

namespace weft {

class RegionTable {
 public:
  static constexpr std::uint32_t kSlots = 1024;

  RegionTable();

  Result<LocalRegion> add(std::span<std::byte> bytes);
  Result<void> remove(std::uint32_t key);
  // Where `length` bytes at `offset` of region `key` go, or nullptr when the key is unknown or
  // the range leaves the region.
  std::byte* find(std::uint32_t key, std::uint64_t offset, std::uint64_t length) const noexcept;

 private:
  struct Slot {
    std::atomic<std::uint32_t> key{0};  // 0: free
    std::atomic<std::byte*> base{nullptr};
    std::atomic<std::uint64_t> length{0};
    std::uint32_t generation = 0;  // under mutex_
  };
  std::mutex mutex_;
  std::array<Slot, kSlots> slots_;
  std::uint32_t secret_ = 0;  // set once, before any key is handed out
};

}  // namespace weft
