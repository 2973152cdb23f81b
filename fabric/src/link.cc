#include "weft/fabric/link.h"

#include <poll.h>
#include <sys/random.h>

#include <chrono>
#include <string>

#include "weft/fabric/region_table.h"

namespace weft {

bool Link::wait(int timeout_ms) const noexcept {
  pollfd fd{event_fd(), POLLIN, 0};
  return ::poll(&fd, 1, timeout_ms) > 0;
}

std::string_view post_status_name(PostStatus status) noexcept {
  switch (status) {
    case PostStatus::kOk: return "ok";
    case PostStatus::kQueueFull: return "queue full";
    case PostStatus::kInvalid: return "invalid";
    case PostStatus::kPeerGone: return "peer gone";
  }
  return "unknown";
}

// A key is ((generation ^ secret) << 10) | slot. Generations count up, so a stale key never
// reaches a slot reused for another region; the secret (random per table) keeps keys from being
// guessed by a peer that was never given one: a write with a wrong key ends its link, and a blind
// guess is right once in 4 million. The masked generation is never 0, so neither is a key.
RegionTable::RegionTable() {
  std::uint32_t random = 0;
  if (::getrandom(&random, sizeof random, 0) != static_cast<ssize_t>(sizeof random)) {
    random = static_cast<std::uint32_t>(std::chrono::steady_clock::now().time_since_epoch().count());  // still not a constant
  }
  secret_ = random & 0x3fffff;
}

Result<LocalRegion> RegionTable::add(std::span<std::byte> bytes) {
  if (bytes.empty()) return Error{Errc::kInvalidArgument, "cannot register an empty region"};
  std::lock_guard lock(mutex_);
  for (std::uint32_t i = 0; i < kSlots; ++i) {
    Slot& slot = slots_[i];
    if (slot.key.load(std::memory_order_relaxed) != 0) continue;
    do slot.generation = (slot.generation + 1) & 0x3fffff;
    while (((slot.generation ^ secret_) & 0x3fffff) == 0);
    const std::uint32_t key = (((slot.generation ^ secret_) & 0x3fffff) << 10) | i;
    slot.base.store(bytes.data(), std::memory_order_relaxed);
    slot.length.store(bytes.size(), std::memory_order_relaxed);
    slot.key.store(key, std::memory_order_release);  // publishes base and length with the key
    LocalRegion region;
    region.bytes = bytes;
    region.descriptor.address = reinterpret_cast<std::uintptr_t>(bytes.data());
    region.descriptor.length = bytes.size();
    region.descriptor.key = key;
    return region;
  }
  return Error{Errc::kResourceExhausted, "every one of the " + std::to_string(kSlots) + " region slots is in use"};
}

Result<void> RegionTable::remove(std::uint32_t key) {
  std::lock_guard lock(mutex_);
  Slot& slot = slots_[key & (kSlots - 1)];
  if (key == 0 || slot.key.load(std::memory_order_relaxed) != key) {
    return Error{Errc::kNotFound, "no region is registered with key " + std::to_string(key)};
  }
  slot.key.store(0, std::memory_order_release);
  return ok();
}

std::byte* RegionTable::find(std::uint32_t key, std::uint64_t offset, std::uint64_t length) const noexcept {
  if (key == 0) return nullptr;
  const Slot& slot = slots_[key & (kSlots - 1)];
  if (slot.key.load(std::memory_order_acquire) != key) return nullptr;  // pairs with add's release
  // Acquire: the key's re-check below cannot move above these loads (free on x86).
  std::byte* base = slot.base.load(std::memory_order_acquire);
  const std::uint64_t size = slot.length.load(std::memory_order_acquire);
  // Re-checked after reading: a slot reused meanwhile has another key.
  if (slot.key.load(std::memory_order_relaxed) != key) return nullptr;
  if (offset > size || length > size - offset) return nullptr;
  return base + offset;
}

}  // namespace weft
