// The in-memory MetadataStore: etcd's model (one revision for the whole store, leases, watches
// from a revision over a bounded history) in one process, behind one mutex.
#include "weft/fabric/metadata_store.h"

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <map>
#include <mutex>
#include <set>
#include <utility>

namespace weft {
namespace {

using Clock = std::chrono::steady_clock;

// Events kept for watches from an earlier revision; older ones are compacted away, as etcd
// compacts its history, and a watch that wants them gets kOutOfRange.
constexpr std::size_t kHistoryEvents = 10000;

struct Lease {
  std::chrono::seconds ttl{};
  Clock::time_point expires_at;
  std::set<std::string, std::less<>> keys;
};

Error empty_key() { return Error{Errc::kInvalidArgument, "metadata store: a key cannot be empty"}; }

Error lease_ended(std::int64_t lease) {
  return Error{Errc::kNotFound, "metadata store: lease " + std::to_string(lease) + " has expired or was revoked"};
}

Error compacted(std::int64_t from_revision, std::int64_t compacted_revision) {
  return Error{Errc::kOutOfRange, "metadata store: revision " + std::to_string(from_revision) +
                                      " was compacted away (history starts after revision " +
                                      std::to_string(compacted_revision) + "); re-read, then watch again"};
}

// What the store and its watches share; a watch keeps it alive past the store's last handle.
// Every member is guarded by `mutex`; the functions below are called with it held.
struct State {
  std::mutex mutex;
  std::condition_variable changed;  // notified when the revision moves
  std::int64_t revision = 1;        // an empty etcd is at revision 1 too
  std::int64_t compacted = 0;       // history holds no event at or below this revision
  std::int64_t next_lease = 1;
  std::map<std::string, KeyValue, std::less<>> keys;
  std::map<std::int64_t, Lease> leases;
  std::deque<WatchEvent> history;  // in revision order

  void record(WatchEvent::Type type, const KeyValue& kv) {
    history.push_back(WatchEvent{type, kv});
    // Drop whole revisions (a lease's end deletes several keys at one revision).
    while (history.size() > kHistoryEvents) {
      compacted = history.front().kv.mod_revision;
      while (!history.empty() && history.front().kv.mod_revision == compacted) history.pop_front();
    }
  }

  void detach_from_lease(const KeyValue& kv) {
    if (kv.lease == 0) return;
    if (auto it = leases.find(kv.lease); it != leases.end()) it->second.keys.erase(kv.key);
  }

  // The lease, when not 0, exists: callers check.
  std::int64_t put(std::string_view key, std::string_view value, std::int64_t lease) {
    ++revision;
    auto it = keys.find(key);
    if (it == keys.end()) {
      it = keys.emplace(std::string(key), KeyValue{}).first;
      it->second.key = std::string(key);
      it->second.create_revision = revision;
    } else {
      detach_from_lease(it->second);
    }
    KeyValue& kv = it->second;
    kv.value = std::string(value);
    kv.mod_revision = revision;
    kv.lease = lease;
    if (lease != 0) {
      const auto held = leases.find(lease);
      WEFT_CHECK(held != leases.end(), "put with a lease the caller did not check");
      held->second.keys.insert(kv.key);
    }
    record(WatchEvent::Type::kPut, kv);
    changed.notify_all();
    return revision;
  }

  void erase(std::map<std::string, KeyValue, std::less<>>::iterator it) {
    ++revision;
    detach_from_lease(it->second);
    record(WatchEvent::Type::kDelete, KeyValue{it->first, {}, 0, revision, 0});
    keys.erase(it);
    changed.notify_all();
  }

  // Deletes the lease's keys at one revision, as etcd's revoke does in one transaction.
  void end_lease(std::map<std::int64_t, Lease>::iterator lease) {
    if (!lease->second.keys.empty()) {
      ++revision;
      for (const std::string& key : lease->second.keys) {
        record(WatchEvent::Type::kDelete, KeyValue{key, {}, 0, revision, 0});
        keys.erase(key);
      }
      changed.notify_all();
    }
    leases.erase(lease);
  }

  void expire_leases() {
    const Clock::time_point now = Clock::now();
    for (auto it = leases.begin(); it != leases.end();) {
      auto current = it++;
      if (current->second.expires_at <= now) end_lease(current);
    }
  }

  Clock::time_point next_expiry() const {
    Clock::time_point first = Clock::time_point::max();
    for (const auto& [id, lease] : leases) first = std::min(first, lease.expires_at);
    return first;
  }
};

class MemoryWatch final : public MetadataWatch {
 public:
  MemoryWatch(std::shared_ptr<State> state, std::string prefix, std::int64_t next_revision)
      : state_(std::move(state)), prefix_(std::move(prefix)), next_revision_(next_revision) {}

  Result<void> next(std::vector<WatchEvent>& out, int timeout_ms) override {
    const Clock::time_point deadline = Clock::now() + std::chrono::milliseconds(std::max(timeout_ms, 0));
    std::unique_lock lock(state_->mutex);
    for (;;) {
      state_->expire_leases();
      // A watch that fell more than the history behind has lost events: like etcd's, it ends.
      if (next_revision_ <= state_->compacted) return compacted(next_revision_, state_->compacted);
      const auto first = std::lower_bound(state_->history.begin(), state_->history.end(), next_revision_,
                                          [](const WatchEvent& e, std::int64_t r) { return e.kv.mod_revision < r; });
      bool found = false;
      for (auto it = first; it != state_->history.end(); ++it) {
        if (!it->kv.key.starts_with(prefix_)) continue;
        out.push_back(*it);
        found = true;
      }
      next_revision_ = state_->revision + 1;
      if (found || Clock::now() >= deadline) return ok();
      // Wake for a lease's end too: nobody else may call the store to expire it.
      state_->changed.wait_until(lock, std::min(deadline, state_->next_expiry()));
    }
  }

 private:
  std::shared_ptr<State> state_;
  std::string prefix_;
  std::int64_t next_revision_;
};

class MemoryMetadataStore final : public MetadataStore {
 public:
  Result<std::int64_t> put(std::string_view key, std::string_view value, std::int64_t lease) override {
    if (key.empty()) return empty_key();
    std::lock_guard lock(state_->mutex);
    state_->expire_leases();
    if (lease != 0 && !state_->leases.contains(lease)) return lease_ended(lease);
    return state_->put(key, value, lease);
  }

  Result<std::optional<KeyValue>> get(std::string_view key) override {
    if (key.empty()) return empty_key();
    std::lock_guard lock(state_->mutex);
    state_->expire_leases();
    const auto it = state_->keys.find(key);
    if (it == state_->keys.end()) return std::optional<KeyValue>();
    return std::optional<KeyValue>(it->second);
  }

  Result<RangeResult> list(std::string_view prefix) override {
    std::lock_guard lock(state_->mutex);
    state_->expire_leases();
    RangeResult range;
    for (auto it = state_->keys.lower_bound(prefix); it != state_->keys.end() && it->first.starts_with(prefix); ++it)
      range.kvs.push_back(it->second);
    range.revision = state_->revision;
    return range;
  }

  // Under the state's mutex.
  bool holds(const WriteGuard* guard) const {
    if (guard == nullptr) return true;
    const auto it = state_->keys.find(guard->key);
    return it != state_->keys.end() && it->second.create_revision == guard->create_revision;
  }

  Result<bool> compare_and_put(std::string_view key, std::int64_t expected_mod_revision, std::string_view value,
                               std::int64_t lease, const WriteGuard* guard) override {
    if (key.empty()) return empty_key();
    std::lock_guard lock(state_->mutex);
    state_->expire_leases();
    if (!holds(guard)) return false;
    const auto it = state_->keys.find(key);
    const std::int64_t current = it == state_->keys.end() ? 0 : it->second.mod_revision;
    if (current != expected_mod_revision) return false;
    if (lease != 0 && !state_->leases.contains(lease)) return lease_ended(lease);
    state_->put(key, value, lease);
    return true;
  }

  Result<bool> erase(std::string_view key, std::int64_t expected_mod_revision, const WriteGuard* guard) override {
    if (key.empty()) return empty_key();
    std::lock_guard lock(state_->mutex);
    state_->expire_leases();
    if (!holds(guard)) return false;
    const auto it = state_->keys.find(key);
    if (it == state_->keys.end()) return false;
    if (expected_mod_revision != 0 && it->second.mod_revision != expected_mod_revision) return false;
    state_->erase(it);
    return true;
  }

  Result<std::int64_t> grant_lease(std::int64_t ttl_seconds) override {
    if (ttl_seconds < 1)
      return Error{Errc::kInvalidArgument,
                   "metadata store: a lease lasts at least 1 s (asked for " + std::to_string(ttl_seconds) + " s)"};
    std::lock_guard lock(state_->mutex);
    state_->expire_leases();
    const std::int64_t id = state_->next_lease++;
    Lease& lease = state_->leases[id];
    lease.ttl = std::chrono::seconds(ttl_seconds);
    lease.expires_at = Clock::now() + lease.ttl;
    return id;
  }

  Result<void> keep_alive(std::int64_t lease) override {
    std::lock_guard lock(state_->mutex);
    state_->expire_leases();
    const auto it = state_->leases.find(lease);
    if (it == state_->leases.end()) return lease_ended(lease);
    it->second.expires_at = Clock::now() + it->second.ttl;
    return ok();
  }

  Result<void> revoke_lease(std::int64_t lease) override {
    std::lock_guard lock(state_->mutex);
    state_->expire_leases();
    const auto it = state_->leases.find(lease);
    if (it == state_->leases.end()) return lease_ended(lease);
    state_->end_lease(it);
    return ok();
  }

  Result<std::unique_ptr<MetadataWatch>> watch(std::string_view prefix, std::int64_t from_revision) override {
    if (from_revision < 0)
      return Error{Errc::kInvalidArgument, "metadata store: cannot watch from revision " + std::to_string(from_revision)};
    std::lock_guard lock(state_->mutex);
    state_->expire_leases();
    if (from_revision != 0 && from_revision <= state_->compacted) return compacted(from_revision, state_->compacted);
    const std::int64_t start = from_revision == 0 ? state_->revision + 1 : from_revision;
    return std::unique_ptr<MetadataWatch>(std::make_unique<MemoryWatch>(state_, std::string(prefix), start));
  }

 private:
  std::shared_ptr<State> state_ = std::make_shared<State>();
};

}  // namespace

std::shared_ptr<MetadataStore> make_memory_metadata_store() { return std::make_shared<MemoryMetadataStore>(); }

}  // namespace weft
