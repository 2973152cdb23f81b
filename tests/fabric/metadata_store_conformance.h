// The conformance suite every MetadataStore implementation passes (fabric/include/weft/fabric/
// metadata_store.h): a typed test suite, instantiated once per implementation with a Backend:
//
//   struct Backend {
//     static void set_up_suite();     // once per suite: start a server, or nothing
//     static void tear_down_suite();
//     // A client of the suite's store; nullptr and the reason to skip when there is none.
//     static std::shared_ptr<MetadataStore> open(std::string* skip_reason);
//     // Another client of the same store as `store` (a second node's connection).
//     static std::shared_ptr<MetadataStore> open_peer(const std::shared_ptr<MetadataStore>& store);
//   };
//
//   INSTANTIATE_TYPED_TEST_SUITE_P(Memory, MetadataStoreConformance, ::testing::Types<Backend>);
//   (in namespace weft::test)
//
// Each test keeps to its own key prefix, so one store serves the whole suite; revisions are
// compared, never predicted (a lease left by an earlier test may expire meanwhile). Every wait
// is bounded: 5 s for anything a store does in the background.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <latch>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "weft/fabric/metadata_store.h"

namespace weft::test {

using namespace std::chrono_literals;

// Events from `watch` until there are `count`, or `limit` passed; an error is a test failure.
inline std::vector<WatchEvent> collect_events(MetadataWatch& watch, std::size_t count,
                                              std::chrono::milliseconds limit = 5s) {
  std::vector<WatchEvent> events;
  const auto deadline = std::chrono::steady_clock::now() + limit;
  while (events.size() < count && std::chrono::steady_clock::now() < deadline) {
    Result<void> next = watch.next(events, 100);
    if (!next.ok()) {
      ADD_FAILURE() << "watch: " << next.error().message;
      break;
    }
  }
  return events;
}

// Whether `condition` held within `limit`, checked every 50 ms.
template <class Condition>
bool eventually(Condition condition, std::chrono::milliseconds limit = 5s) {
  const auto deadline = std::chrono::steady_clock::now() + limit;
  for (;;) {
    if (condition()) return true;
    if (std::chrono::steady_clock::now() >= deadline) return false;
    std::this_thread::sleep_for(50ms);
  }
}

template <class Backend>
class MetadataStoreConformance : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { Backend::set_up_suite(); }
  static void TearDownTestSuite() { Backend::tear_down_suite(); }

  void SetUp() override {
    std::string skip_reason;
    store_ = Backend::open(&skip_reason);
    if (store_ == nullptr) GTEST_SKIP() << skip_reason;
    const ::testing::TestInfo* info = ::testing::UnitTest::GetInstance()->current_test_info();
    prefix_ = std::string("/weft-test/") + info->test_suite_name() + "/" + info->name() + "/";
  }

  std::string key(std::string_view name) const { return prefix_ + std::string(name); }
  MetadataStore& store() { return *store_; }

  // The value at `k`, nullopt when there is none (a failed read is a test failure).
  std::optional<KeyValue> read(MetadataStore& s, const std::string& k) {
    Result<std::optional<KeyValue>> got = s.get(k);
    EXPECT_TRUE(got.ok()) << got.error().message;
    return got.ok() ? *got : std::nullopt;
  }
  std::optional<KeyValue> read(const std::string& k) { return read(*store_, k); }

  std::int64_t put_ok(const std::string& k, std::string_view v, std::int64_t lease = 0) {
    Result<std::int64_t> r = store_->put(k, v, lease);
    EXPECT_TRUE(r.ok()) << r.error().message;
    return r.ok() ? *r : -1;
  }

  std::int64_t lease_ok(std::int64_t ttl_seconds) {
    Result<std::int64_t> lease = store_->grant_lease(ttl_seconds);
    EXPECT_TRUE(lease.ok()) << lease.error().message;
    return lease.ok() ? *lease : 0;
  }

  std::unique_ptr<MetadataWatch> watch_ok(MetadataStore& s, std::string_view prefix, std::int64_t from) {
    Result<std::unique_ptr<MetadataWatch>> w = s.watch(prefix, from);
    EXPECT_TRUE(w.ok()) << w.error().message;
    return w.ok() ? std::move(w).value() : nullptr;
  }

  std::shared_ptr<MetadataStore> store_;
  std::string prefix_;
};

TYPED_TEST_SUITE_P(MetadataStoreConformance);

TYPED_TEST_P(MetadataStoreConformance, PutThenGetReturnsTheValueAndItsRevisions) {
  // Given
  const std::string k = this->key("k");
  const std::int64_t first = this->put_ok(k, "one");
  const std::int64_t second = this->put_ok(k, "two");
  // Expect
  EXPECT_GT(first, 0);
  EXPECT_GT(second, first);
  const std::optional<KeyValue> kv = this->read(k);
  ASSERT_TRUE(kv.has_value());
  EXPECT_EQ(kv->key, k);
  EXPECT_EQ(kv->value, "two");
  EXPECT_EQ(kv->create_revision, first);
  EXPECT_EQ(kv->mod_revision, second);
  EXPECT_EQ(kv->lease, 0);
  EXPECT_FALSE(this->read(this->key("missing")).has_value());
}

TYPED_TEST_P(MetadataStoreConformance, ListReturnsTheKeysUnderAPrefixInKeyOrder) {
  // Given: three keys under the prefix, put out of order, and a sibling that only shares its
  // text up to the prefix's last '/'.
  const std::int64_t c = this->put_ok(this->key("c"), "3");
  this->put_ok(this->key("a"), "1");
  this->put_ok(this->key("b"), "2");
  this->put_ok(this->prefix_.substr(0, this->prefix_.size() - 1) + "x", "outside");
  // Expect
  Result<RangeResult> all = this->store().list(this->prefix_);
  ASSERT_TRUE(all.ok()) << all.error().message;
  ASSERT_EQ(all->kvs.size(), 3U);
  EXPECT_EQ(all->kvs[0].key, this->key("a"));
  EXPECT_EQ(all->kvs[1].key, this->key("b"));
  EXPECT_EQ(all->kvs[2].key, this->key("c"));
  EXPECT_EQ(all->kvs[2].value, "3");
  EXPECT_EQ(all->kvs[2].mod_revision, c);
  EXPECT_GE(all->revision, all->kvs[1].mod_revision);
  Result<RangeResult> one = this->store().list(this->key("b"));
  ASSERT_TRUE(one.ok()) << one.error().message;
  ASSERT_EQ(one->kvs.size(), 1U);
  EXPECT_EQ(one->kvs[0].value, "2");
  Result<RangeResult> none = this->store().list(this->key("nothing/"));
  ASSERT_TRUE(none.ok()) << none.error().message;
  EXPECT_TRUE(none->kvs.empty());
  EXPECT_GE(none->revision, all->revision);
}

TYPED_TEST_P(MetadataStoreConformance, EmptyPrefixListsEveryKeyInOrder) {
  // Given
  this->put_ok(this->key("k"), "v");
  // Expect
  Result<RangeResult> all = this->store().list("");
  ASSERT_TRUE(all.ok()) << all.error().message;
  EXPECT_TRUE(std::is_sorted(all->kvs.begin(), all->kvs.end(),
                             [](const KeyValue& a, const KeyValue& b) { return a.key < b.key; }));
  EXPECT_TRUE(std::any_of(all->kvs.begin(), all->kvs.end(), [&](const KeyValue& kv) { return kv.key == this->key("k"); }));
}

TYPED_TEST_P(MetadataStoreConformance, BinaryKeysAndValuesRoundTrip) {
  // Given: every byte value in a value, NUL and 0xff in keys, and a prefix ending in 0xff
  // (whose range ends at the byte before it, incremented).
  std::string value;
  for (int b = 0; b < 256; ++b) value.push_back(static_cast<char>(b));
  const std::string nul_key = this->key(std::string("n\0ul", 4));
  this->put_ok(nul_key, value);
  this->put_ok(this->key("z\xfe"), "below");
  this->put_ok(this->key("z\xff"), "ff");
  this->put_ok(this->key("z\xff\x01"), "ff-01");
  this->put_ok(this->key("{"), "above");  // '{' is 'z' + 1
  // Expect
  const std::optional<KeyValue> kv = this->read(nul_key);
  ASSERT_TRUE(kv.has_value());
  EXPECT_EQ(kv->key, nul_key);
  EXPECT_EQ(kv->value, value);
  Result<RangeResult> ff = this->store().list(this->key("z\xff"));
  ASSERT_TRUE(ff.ok()) << ff.error().message;
  ASSERT_EQ(ff->kvs.size(), 2U);
  EXPECT_EQ(ff->kvs[0].value, "ff");
  EXPECT_EQ(ff->kvs[1].value, "ff-01");
}

TYPED_TEST_P(MetadataStoreConformance, EmptyKeyIsInvalid) {
  // Expect
  Result<std::int64_t> put = this->store().put("", "v");
  ASSERT_FALSE(put.ok());
  EXPECT_EQ(put.error().code, Errc::kInvalidArgument);
  Result<std::optional<KeyValue>> got = this->store().get("");
  ASSERT_FALSE(got.ok());
  EXPECT_EQ(got.error().code, Errc::kInvalidArgument);
}

TYPED_TEST_P(MetadataStoreConformance, RevisionMovesWithEveryChange) {
  // Given
  Result<RangeResult> before = this->store().list(this->prefix_);
  ASSERT_TRUE(before.ok()) << before.error().message;
  const std::int64_t put = this->put_ok(this->key("a"), "1");
  Result<bool> erased = this->store().erase(this->key("a"));
  ASSERT_TRUE(erased.ok()) << erased.error().message;
  Result<RangeResult> after_erase = this->store().list(this->prefix_);
  ASSERT_TRUE(after_erase.ok()) << after_erase.error().message;
  const std::int64_t next = this->put_ok(this->key("b"), "1");
  // Expect
  EXPECT_GT(put, before->revision);
  EXPECT_GT(after_erase->revision, put);
  EXPECT_GT(next, after_erase->revision);
}

TYPED_TEST_P(MetadataStoreConformance, CompareAndPutWithZeroCreatesOnlyWhenAbsent) {
  // Given
  const std::string k = this->key("k");
  Result<bool> first = this->store().compare_and_put(k, 0, "first");
  Result<bool> second = this->store().compare_and_put(k, 0, "second");
  // Expect
  ASSERT_TRUE(first.ok()) << first.error().message;
  ASSERT_TRUE(second.ok()) << second.error().message;
  EXPECT_TRUE(*first);
  EXPECT_FALSE(*second);
  const std::optional<KeyValue> kv = this->read(k);
  ASSERT_TRUE(kv.has_value());
  EXPECT_EQ(kv->value, "first");
}

TYPED_TEST_P(MetadataStoreConformance, CompareAndPutWritesOnlyAtTheExpectedModRevision) {
  // Given
  const std::string k = this->key("k");
  const std::int64_t written = this->put_ok(k, "a");
  Result<bool> swapped = this->store().compare_and_put(k, written, "b");
  Result<bool> stale = this->store().compare_and_put(k, written, "c");
  Result<bool> absent = this->store().compare_and_put(this->key("absent"), written, "d");
  // Expect
  ASSERT_TRUE(swapped.ok()) << swapped.error().message;
  ASSERT_TRUE(stale.ok()) << stale.error().message;
  ASSERT_TRUE(absent.ok()) << absent.error().message;
  EXPECT_TRUE(*swapped);
  EXPECT_FALSE(*stale);
  EXPECT_FALSE(*absent);
  const std::optional<KeyValue> kv = this->read(k);
  ASSERT_TRUE(kv.has_value());
  EXPECT_EQ(kv->value, "b");
  EXPECT_GT(kv->mod_revision, written);
  EXPECT_EQ(kv->create_revision, written);
  EXPECT_FALSE(this->read(this->key("absent")).has_value());
}

TYPED_TEST_P(MetadataStoreConformance, EraseWithoutARevisionDeletesWhateverIsThere) {
  // Given
  const std::string k = this->key("k");
  this->put_ok(k, "v");
  Result<bool> erased = this->store().erase(k);
  Result<bool> again = this->store().erase(k);
  // Expect
  ASSERT_TRUE(erased.ok()) << erased.error().message;
  ASSERT_TRUE(again.ok()) << again.error().message;
  EXPECT_TRUE(*erased);
  EXPECT_FALSE(*again);
  EXPECT_FALSE(this->read(k).has_value());
}

TYPED_TEST_P(MetadataStoreConformance, EraseWithARevisionDeletesOnlyThatVersion) {
  // Given
  const std::string k = this->key("k");
  const std::int64_t old_version = this->put_ok(k, "old");
  const std::int64_t new_version = this->put_ok(k, "new");
  Result<bool> stale = this->store().erase(k, old_version);
  // Expect
  ASSERT_TRUE(stale.ok()) << stale.error().message;
  EXPECT_FALSE(*stale);
  ASSERT_TRUE(this->read(k).has_value());
  Result<bool> current = this->store().erase(k, new_version);
  ASSERT_TRUE(current.ok()) << current.error().message;
  EXPECT_TRUE(*current);
  EXPECT_FALSE(this->read(k).has_value());
}

TYPED_TEST_P(MetadataStoreConformance, GuardedWritesNeedTheGuardKeyAsItWasCreated) {
  // Given a controller key created by an election, and a guard naming it as created then
  const std::string controller = this->key("controller");
  const std::string k = this->key("state");
  Result<std::int64_t> lease = this->store().grant_lease(30);
  ASSERT_TRUE(lease.ok()) << lease.error().message;
  ASSERT_TRUE(this->store().compare_and_put(controller, 0, "a", *lease).value());
  const std::optional<KeyValue> elected = this->read(controller);
  ASSERT_TRUE(elected.has_value());
  const WriteGuard mine{controller, elected->create_revision};
  // Expect guarded writes and deletes to go through while it holds
  Result<bool> created = this->store().compare_and_put(k, 0, "one", 0, &mine);
  ASSERT_TRUE(created.ok()) << created.error().message;
  EXPECT_TRUE(*created);
  const std::int64_t one = this->read(k)->mod_revision;
  EXPECT_TRUE(this->store().compare_and_put(k, one, "two", 0, &mine).value());
  EXPECT_FALSE(this->store().compare_and_put(k, one, "stale", 0, &mine).value()) << "the key's own revision still counts";
  this->put_ok(this->key("extra"), "x");
  EXPECT_TRUE(this->store().erase(this->key("extra"), 0, &mine).value());
  EXPECT_FALSE(this->store().erase(this->key("extra"), 0, &mine).value()) << "nothing left to delete";
  // When the election ends and another one creates the key again (same value, even)
  ASSERT_TRUE(this->store().revoke_lease(*lease).ok());
  Result<std::int64_t> again = this->store().grant_lease(30);
  ASSERT_TRUE(again.ok());
  ASSERT_TRUE(this->store().compare_and_put(controller, 0, "a", *again).value());
  // Expect the old guard to hold nothing: no write, no delete
  const std::int64_t two = this->read(k)->mod_revision;
  Result<bool> fenced = this->store().compare_and_put(k, two, "from the old controller", 0, &mine);
  ASSERT_TRUE(fenced.ok()) << fenced.error().message;
  EXPECT_FALSE(*fenced);
  Result<bool> fenced_delete = this->store().erase(k, 0, &mine);
  ASSERT_TRUE(fenced_delete.ok()) << fenced_delete.error().message;
  EXPECT_FALSE(*fenced_delete);
  EXPECT_EQ(this->read(k)->value, "two");
  // And a guard on a key that does not exist holds nothing either
  const WriteGuard nobody{this->key("nobody"), 1};
  EXPECT_FALSE(this->store().compare_and_put(this->key("other"), 0, "x", 0, &nobody).value());
  EXPECT_TRUE(this->store().revoke_lease(*again).ok());
}

TYPED_TEST_P(MetadataStoreConformance, GrantRefusesATtlBelowOneSecond) {
  // Expect
  Result<std::int64_t> lease = this->store().grant_lease(0);
  ASSERT_FALSE(lease.ok());
  EXPECT_EQ(lease.error().code, Errc::kInvalidArgument);
}

TYPED_TEST_P(MetadataStoreConformance, LeasedKeyVanishesWhenItsLeaseExpires) {
  // Given
  const std::string k = this->key("k");
  const std::int64_t lease = this->lease_ok(1);
  ASSERT_NE(lease, 0);
  this->put_ok(k, "v", lease);
  const std::optional<KeyValue> kv = this->read(k);
  ASSERT_TRUE(kv.has_value());
  EXPECT_EQ(kv->lease, lease);
  // Expect: gone within 5 s, and the lease with it.
  EXPECT_TRUE(eventually([&] { return !this->read(k).has_value(); }));
  Result<void> kept = this->store().keep_alive(lease);
  ASSERT_FALSE(kept.ok());
  EXPECT_EQ(kept.error().code, Errc::kNotFound) << kept.error().message;
}

TYPED_TEST_P(MetadataStoreConformance, KeepAliveKeepsALeasedKey) {
  // Given: a 1 s lease renewed every 200 ms for 2.5 s, over twice its TTL.
  const std::string k = this->key("k");
  const std::int64_t lease = this->lease_ok(1);
  ASSERT_NE(lease, 0);
  this->put_ok(k, "v", lease);
  const auto until = std::chrono::steady_clock::now() + 2500ms;
  while (std::chrono::steady_clock::now() < until) {
    Result<void> kept = this->store().keep_alive(lease);
    ASSERT_TRUE(kept.ok()) << kept.error().message;
    std::this_thread::sleep_for(200ms);
  }
  // Expect
  EXPECT_TRUE(this->read(k).has_value());
  EXPECT_TRUE(this->store().revoke_lease(lease).ok());
}

TYPED_TEST_P(MetadataStoreConformance, RevokeDeletesTheLeasesKeysAtOnce) {
  // Given
  const std::int64_t lease = this->lease_ok(60);
  ASSERT_NE(lease, 0);
  const std::int64_t put = this->put_ok(this->key("a"), "1", lease);
  this->put_ok(this->key("b"), "2", lease);
  this->put_ok(this->key("c"), "3");
  Result<void> revoked = this->store().revoke_lease(lease);
  // Expect
  ASSERT_TRUE(revoked.ok()) << revoked.error().message;
  Result<RangeResult> left = this->store().list(this->prefix_);
  ASSERT_TRUE(left.ok()) << left.error().message;
  ASSERT_EQ(left->kvs.size(), 1U);
  EXPECT_EQ(left->kvs[0].key, this->key("c"));
  EXPECT_GT(left->revision, put);
  Result<void> kept = this->store().keep_alive(lease);
  ASSERT_FALSE(kept.ok());
  EXPECT_EQ(kept.error().code, Errc::kNotFound) << kept.error().message;
  Result<void> again = this->store().revoke_lease(lease);
  ASSERT_FALSE(again.ok());
  EXPECT_EQ(again.error().code, Errc::kNotFound) << again.error().message;
  Result<std::int64_t> late_put = this->store().put(this->key("d"), "4", lease);
  ASSERT_FALSE(late_put.ok());
  EXPECT_EQ(late_put.error().code, Errc::kNotFound) << late_put.error().message;
}

TYPED_TEST_P(MetadataStoreConformance, WatchFromARevisionSeesTheChangesSinceInOrder) {
  // Given: changes under the prefix and one beside it, then a watch from the first.
  const std::int64_t first = this->put_ok(this->key("a"), "1");
  this->put_ok(this->prefix_.substr(0, this->prefix_.size() - 1) + "x", "outside");
  const std::int64_t second = this->put_ok(this->key("b"), "2");
  ASSERT_TRUE(this->store().erase(this->key("a")).ok());
  std::unique_ptr<MetadataWatch> watch = this->watch_ok(this->store(), this->prefix_, first);
  ASSERT_NE(watch, nullptr);
  // Expect
  const std::vector<WatchEvent> events = collect_events(*watch, 3);
  ASSERT_EQ(events.size(), 3U);
  EXPECT_EQ(events[0].type, WatchEvent::Type::kPut);
  EXPECT_EQ(events[0].kv.key, this->key("a"));
  EXPECT_EQ(events[0].kv.value, "1");
  EXPECT_EQ(events[0].kv.mod_revision, first);
  EXPECT_EQ(events[1].type, WatchEvent::Type::kPut);
  EXPECT_EQ(events[1].kv.key, this->key("b"));
  EXPECT_EQ(events[1].kv.mod_revision, second);
  EXPECT_EQ(events[2].type, WatchEvent::Type::kDelete);
  EXPECT_EQ(events[2].kv.key, this->key("a"));
  EXPECT_GT(events[2].kv.mod_revision, second);
}

TYPED_TEST_P(MetadataStoreConformance, WatchFromNowSeesOnlyLaterChanges) {
  // Given
  this->put_ok(this->key("old"), "0");
  std::unique_ptr<MetadataWatch> watch = this->watch_ok(this->store(), this->prefix_, 0);
  ASSERT_NE(watch, nullptr);
  const std::int64_t put = this->put_ok(this->key("new"), "1");
  ASSERT_TRUE(this->store().erase(this->key("new")).ok());
  // Expect
  std::vector<WatchEvent> events = collect_events(*watch, 2);
  ASSERT_EQ(events.size(), 2U);
  EXPECT_EQ(events[0].type, WatchEvent::Type::kPut);
  EXPECT_EQ(events[0].kv.key, this->key("new"));
  EXPECT_EQ(events[0].kv.mod_revision, put);
  EXPECT_EQ(events[1].type, WatchEvent::Type::kDelete);
  EXPECT_EQ(events[1].kv.key, this->key("new"));
  events.clear();
  Result<void> more = watch->next(events, 0);
  ASSERT_TRUE(more.ok()) << more.error().message;
  EXPECT_TRUE(events.empty());
}

TYPED_TEST_P(MetadataStoreConformance, WatchWithTimeoutZeroReturnsPromptlyWithNothing) {
  // Given
  std::unique_ptr<MetadataWatch> watch = this->watch_ok(this->store(), this->prefix_, 0);
  ASSERT_NE(watch, nullptr);
  std::vector<WatchEvent> events;
  // Expect: no wait (bounded at 1 s, far above any poll), no events.
  const auto start = std::chrono::steady_clock::now();
  Result<void> next = watch->next(events, 0);
  EXPECT_LT(std::chrono::steady_clock::now() - start, 1s);
  ASSERT_TRUE(next.ok()) << next.error().message;
  EXPECT_TRUE(events.empty());
}

TYPED_TEST_P(MetadataStoreConformance, WatchSeesTheDeleteOfAnExpiredLease) {
  // Given: nobody calls the store while the lease runs out; the watch alone must see it.
  const std::string k = this->key("k");
  const std::int64_t lease = this->lease_ok(1);
  ASSERT_NE(lease, 0);
  const std::int64_t put = this->put_ok(k, "v", lease);
  std::unique_ptr<MetadataWatch> watch = this->watch_ok(this->store(), this->prefix_, put + 1);
  ASSERT_NE(watch, nullptr);
  // Expect
  const std::vector<WatchEvent> events = collect_events(*watch, 1);
  ASSERT_EQ(events.size(), 1U);
  EXPECT_EQ(events[0].type, WatchEvent::Type::kDelete);
  EXPECT_EQ(events[0].kv.key, k);
  EXPECT_GT(events[0].kv.mod_revision, put);
}

TYPED_TEST_P(MetadataStoreConformance, ElectionHasOneWinnerAndTheOtherTakesOverWhenItsLeaseEnds) {
  // Given: two contenders, each with its own client and lease, racing for the controller key.
  std::shared_ptr<MetadataStore> a = this->store_;
  std::shared_ptr<MetadataStore> b = TypeParam::open_peer(a);
  ASSERT_NE(b, nullptr);
  const std::string controller = this->key("controller");
  Result<std::int64_t> lease_a = a->grant_lease(30);
  Result<std::int64_t> lease_b = b->grant_lease(30);
  ASSERT_TRUE(lease_a.ok() && lease_b.ok());
  Result<bool> a_won = a->compare_and_put(controller, 0, "a", *lease_a);
  Result<bool> b_won = b->compare_and_put(controller, 0, "b", *lease_b);
  ASSERT_TRUE(a_won.ok()) << a_won.error().message;
  ASSERT_TRUE(b_won.ok()) << b_won.error().message;
  EXPECT_TRUE(*a_won);
  EXPECT_FALSE(*b_won);
  // The loser reads who holds it and watches from just after that read.
  Result<RangeResult> seen = b->list(controller);
  ASSERT_TRUE(seen.ok()) << seen.error().message;
  ASSERT_EQ(seen->kvs.size(), 1U);
  EXPECT_EQ(seen->kvs[0].value, "a");
  EXPECT_EQ(seen->kvs[0].lease, *lease_a);
  std::unique_ptr<MetadataWatch> watch = this->watch_ok(*b, controller, seen->revision + 1);
  ASSERT_NE(watch, nullptr);
  // When: the winner's lease ends (it stopped, or lost the store).
  ASSERT_TRUE(a->revoke_lease(*lease_a).ok());
  // Expect: the loser sees the delete, then wins.
  const std::vector<WatchEvent> events = collect_events(*watch, 1);
  ASSERT_EQ(events.size(), 1U);
  EXPECT_EQ(events[0].type, WatchEvent::Type::kDelete);
  EXPECT_EQ(events[0].kv.key, controller);
  Result<bool> b_takes_over = b->compare_and_put(controller, 0, "b", *lease_b);
  ASSERT_TRUE(b_takes_over.ok()) << b_takes_over.error().message;
  EXPECT_TRUE(*b_takes_over);
  const std::optional<KeyValue> holder = this->read(*a, controller);
  ASSERT_TRUE(holder.has_value());
  EXPECT_EQ(holder->value, "b");
  EXPECT_EQ(holder->lease, *lease_b);
  EXPECT_TRUE(b->revoke_lease(*lease_b).ok());
}

TYPED_TEST_P(MetadataStoreConformance, ConcurrentCompareAndPutLosesNoIncrement) {
  // Given: two clients, a thread each, each adding 1 to a counter 10 times by compare-and-put.
  std::shared_ptr<MetadataStore> stores[2] = {this->store_, TypeParam::open_peer(this->store_)};
  ASSERT_NE(stores[1], nullptr);
  const std::string counter = this->key("counter");
  this->put_ok(counter, "0");
  constexpr int kIncrements = 10;
  constexpr int kMaxAttempts = 1000;
  std::latch start(2);
  int failures[2] = {0, 0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 2; ++t) {
    threads.emplace_back([&, t] {
      MetadataStore& s = *stores[t];
      start.arrive_and_wait();
      int done = 0;
      for (int attempt = 0; attempt < kMaxAttempts && done < kIncrements; ++attempt) {
        Result<std::optional<KeyValue>> now = s.get(counter);
        if (!now.ok() || !now->has_value()) {
          ++failures[t];
          return;
        }
        const int value = std::stoi((*now)->value);
        Result<bool> swapped = s.compare_and_put(counter, (*now)->mod_revision, std::to_string(value + 1));
        if (!swapped.ok()) {
          ++failures[t];
          return;
        }
        if (*swapped) ++done;
      }
      if (done < kIncrements) ++failures[t];
    });
  }
  for (std::thread& thread : threads) thread.join();
  // Expect
  EXPECT_EQ(failures[0], 0);
  EXPECT_EQ(failures[1], 0);
  const std::optional<KeyValue> kv = this->read(counter);
  ASSERT_TRUE(kv.has_value());
  EXPECT_EQ(kv->value, std::to_string(2 * kIncrements));
}

REGISTER_TYPED_TEST_SUITE_P(MetadataStoreConformance, PutThenGetReturnsTheValueAndItsRevisions,
                            ListReturnsTheKeysUnderAPrefixInKeyOrder, EmptyPrefixListsEveryKeyInOrder,
                            BinaryKeysAndValuesRoundTrip, EmptyKeyIsInvalid, RevisionMovesWithEveryChange,
                            CompareAndPutWithZeroCreatesOnlyWhenAbsent, CompareAndPutWritesOnlyAtTheExpectedModRevision,
                            EraseWithoutARevisionDeletesWhateverIsThere, EraseWithARevisionDeletesOnlyThatVersion,
                            GuardedWritesNeedTheGuardKeyAsItWasCreated,
                            GrantRefusesATtlBelowOneSecond, LeasedKeyVanishesWhenItsLeaseExpires,
                            KeepAliveKeepsALeasedKey, RevokeDeletesTheLeasesKeysAtOnce,
                            WatchFromARevisionSeesTheChangesSinceInOrder, WatchFromNowSeesOnlyLaterChanges,
                            WatchWithTimeoutZeroReturnsPromptlyWithNothing, WatchSeesTheDeleteOfAnExpiredLease,
                            ElectionHasOneWinnerAndTheOtherTakesOverWhenItsLeaseEnds,
                            ConcurrentCompareAndPutLosesNoIncrement);

}  // namespace weft::test
