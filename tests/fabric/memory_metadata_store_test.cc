// The in-memory metadata store: the conformance suite, then what is its own (a bounded history
// that compacts like etcd's, watches that outlive the store's handle, revisions that start as
// etcd's do and move once per change).
#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <vector>

#include "weft/fabric/metadata_store.h"
#include "metadata_store_conformance.h"

namespace weft::test {

struct MemoryBackend {
  static void set_up_suite() {}
  static void tear_down_suite() {}
  static std::shared_ptr<MetadataStore> open(std::string*) { return make_memory_metadata_store(); }
  static std::shared_ptr<MetadataStore> open_peer(const std::shared_ptr<MetadataStore>& store) { return store; }
};

INSTANTIATE_TYPED_TEST_SUITE_P(Memory, MetadataStoreConformance, ::testing::Types<MemoryBackend>);

namespace {

constexpr int kMoreThanTheHistory = 10'001;

TEST(MemoryMetadataStore, RevisionsStartAtOneAndMoveOncePerChange) {
  // Given
  std::shared_ptr<MetadataStore> store = make_memory_metadata_store();
  Result<RangeResult> empty = store->list("");
  ASSERT_TRUE(empty.ok());
  // Expect
  EXPECT_EQ(empty->revision, 1);
  EXPECT_EQ(store->put("a", "1").value(), 2);
  EXPECT_FALSE(store->compare_and_put("a", 99, "x").value());  // refused: no change, no revision
  EXPECT_FALSE(store->erase("missing").value());
  EXPECT_EQ(store->put("b", "1").value(), 3);
  // A lease's end deletes all its keys at one revision.
  const std::int64_t lease = store->grant_lease(60).value();
  EXPECT_EQ(store->put("c", "1", lease).value(), 4);
  EXPECT_EQ(store->put("d", "1", lease).value(), 5);
  ASSERT_TRUE(store->revoke_lease(lease).ok());
  EXPECT_EQ(store->list("")->revision, 6);
  // A lease without keys ends without a change.
  ASSERT_TRUE(store->revoke_lease(store->grant_lease(60).value()).ok());
  EXPECT_EQ(store->list("")->revision, 6);
}

TEST(MemoryMetadataStore, WatchFromARevisionOlderThanTheHistoryIsOutOfRange) {
  // Given
  std::shared_ptr<MetadataStore> store = make_memory_metadata_store();
  const std::int64_t first = store->put("k", "0").value();
  for (int i = 1; i < kMoreThanTheHistory; ++i) ASSERT_TRUE(store->put("k", std::to_string(i)).ok());
  // Expect
  Result<std::unique_ptr<MetadataWatch>> old = store->watch("", first);
  ASSERT_FALSE(old.ok());
  EXPECT_EQ(old.error().code, Errc::kOutOfRange) << old.error().message;
  Result<RangeResult> now = store->list("");
  ASSERT_TRUE(now.ok());
  Result<std::unique_ptr<MetadataWatch>> recent = store->watch("", now->revision);
  ASSERT_TRUE(recent.ok()) << recent.error().message;
  std::vector<WatchEvent> events;
  ASSERT_TRUE((*recent)->next(events, 0).ok());
  ASSERT_EQ(events.size(), 1U);
  EXPECT_EQ(events[0].kv.value, std::to_string(kMoreThanTheHistory - 1));
}

TEST(MemoryMetadataStore, WatchThatFallsBehindTheHistoryEndsOutOfRange) {
  // Given: a watch nobody reads while more changes than the history holds go by.
  std::shared_ptr<MetadataStore> store = make_memory_metadata_store();
  Result<std::unique_ptr<MetadataWatch>> watch = store->watch("", 0);
  ASSERT_TRUE(watch.ok());
  for (int i = 0; i < kMoreThanTheHistory; ++i) ASSERT_TRUE(store->put("k", std::to_string(i)).ok());
  // Expect
  std::vector<WatchEvent> events;
  Result<void> next = (*watch)->next(events, 0);
  ASSERT_FALSE(next.ok());
  EXPECT_EQ(next.error().code, Errc::kOutOfRange) << next.error().message;
  EXPECT_TRUE(events.empty());
}

TEST(MemoryMetadataStore, WatchOutlivesTheStoreHandle) {
  // Given
  std::shared_ptr<MetadataStore> store = make_memory_metadata_store();
  ASSERT_TRUE(store->put("a", "1").ok());
  Result<std::unique_ptr<MetadataWatch>> watch = store->watch("", 1);
  ASSERT_TRUE(watch.ok());
  store.reset();
  // Expect
  std::vector<WatchEvent> events;
  ASSERT_TRUE((*watch)->next(events, 0).ok());
  ASSERT_EQ(events.size(), 1U);
  EXPECT_EQ(events[0].kv.key, "a");
  EXPECT_EQ((*watch)->fd(), -1);
}

TEST(MemoryMetadataStore, WatchFromANegativeRevisionIsInvalid) {
  // Expect
  Result<std::unique_ptr<MetadataWatch>> watch = make_memory_metadata_store()->watch("", -1);
  ASSERT_FALSE(watch.ok());
  EXPECT_EQ(watch.error().code, Errc::kInvalidArgument);
}

}  // namespace
}  // namespace weft::test
