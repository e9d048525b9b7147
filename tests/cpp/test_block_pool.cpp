// Deterministic scenarios for BlockPool: exact block ids, ref counts and eviction order.
#include <gtest/gtest.h>

#include <stdexcept>
#include <string>
#include <vector>

#include "pagedcore/block_pool.h"
#include "pagedcore/supported.h"

namespace pagedcore {
namespace {

// A key that owns its tokens; it converts to the BlockKey view for the length of one call.
struct OwnedKey {
  uint64_t hash;
  std::vector<int32_t> tokens;
  uint64_t parent;
  std::string extra;
  operator BlockKey() const { return BlockKey{hash, parent, tokens, extra}; }  // NOLINT: implicit on purpose
};

OwnedKey key(uint64_t hash, std::vector<int32_t> tokens, uint64_t parent = 0, std::string extra = "") {
  return OwnedKey{hash, std::move(tokens), parent, std::move(extra)};
}

TEST(BlockPool, AllocatesInIdOrderAndReportsExhaustion) {
  BlockPool pool(4, 2);
  EXPECT_EQ(pool.allocate(), 0);
  EXPECT_EQ(pool.allocate(), 1);
  EXPECT_EQ(pool.allocate(), 2);
  EXPECT_EQ(pool.allocate(), 3);
  EXPECT_EQ(pool.allocate(), std::nullopt);
  EXPECT_EQ(pool.num_free_blocks(), 0);
  EXPECT_EQ(pool.num_used_blocks(), 4);
  pool.check_invariants();
}

TEST(BlockPool, ReleasedBlocksReturnToTheBackOfTheFreeList) {
  BlockPool pool(4, 2);
  pool.allocate();  // 0
  pool.allocate();  // 1
  pool.release(1);
  pool.release(0);
  EXPECT_EQ(pool.uncached_free_blocks(), (std::vector<BlockId>{2, 3, 1, 0}));
  pool.check_invariants();
}

TEST(BlockPool, RefCountsAndDoubleReleaseIsRefused) {
  BlockPool pool(2, 2);
  BlockId b = *pool.allocate();
  pool.retain(b);
  EXPECT_EQ(pool.ref_count(b), 2);
  pool.release(b);
  EXPECT_EQ(pool.ref_count(b), 1);
  pool.release(b);
  EXPECT_EQ(pool.ref_count(b), 0);
  EXPECT_THROW(pool.release(b), std::invalid_argument);
  EXPECT_THROW(pool.retain(b), std::invalid_argument);
  EXPECT_THROW(pool.release(7), std::invalid_argument);
  pool.check_invariants();
}

TEST(BlockPool, NeverCachedBlocksAreTakenBeforeCachedOnesThenLeastRecentlyFreed) {
  BlockPool pool(4, 2);
  for (int i = 0; i < 4; ++i) pool.allocate();
  pool.cache_block(0, key(10, {1, 2}));
  pool.cache_block(1, key(11, {3, 4}));
  pool.release(1);  // cached, freed first
  pool.release(2);  // never cached
  pool.release(0);  // cached, freed second
  EXPECT_EQ(pool.cached_free_blocks(), (std::vector<BlockId>{1, 0}));
  EXPECT_EQ(pool.num_cached_free_blocks(), 2);
  pool.check_invariants();
  EXPECT_EQ(pool.allocate(), 2);  // never-cached first
  EXPECT_EQ(pool.allocate(), 1);  // then the least recently freed cached block
  EXPECT_FALSE(pool.is_cached(1));
  EXPECT_EQ(pool.find_cached(key(11, {3, 4})), std::nullopt);  // evicted from the map too
  EXPECT_EQ(pool.find_cached(key(10, {1, 2})), 0);
  pool.check_invariants();
}

TEST(BlockPool, AcquiringAFreeCachedBlockRevivesIt) {
  BlockPool pool(2, 2);
  BlockId b = *pool.allocate();
  pool.cache_block(b, key(5, {9, 9}));
  pool.release(b);
  EXPECT_EQ(pool.find_cached(key(5, {9, 9})), b);
  pool.acquire_cached(b);
  EXPECT_EQ(pool.ref_count(b), 1);
  EXPECT_EQ(pool.num_cached_free_blocks(), 0);
  pool.check_invariants();
}

TEST(BlockPool, HashCollisionNeverMatchesDifferentContent) {
  BlockPool pool(4, 2);
  BlockId a = *pool.allocate();
  BlockId b = *pool.allocate();
  pool.cache_block(a, key(42, {1, 2}));
  pool.cache_block(b, key(42, {3, 4}));  // same hash, different tokens
  EXPECT_EQ(pool.find_cached(key(42, {1, 2})), a);
  EXPECT_EQ(pool.find_cached(key(42, {3, 4})), b);
  EXPECT_EQ(pool.find_cached(key(42, {5, 6})), std::nullopt);
  EXPECT_EQ(pool.find_cached(key(42, {1, 2}, /*parent=*/99)), std::nullopt);
  EXPECT_EQ(pool.find_cached(key(42, {1, 2}, 0, "salt")), std::nullopt);
  pool.check_invariants();
}

TEST(BlockPool, CacheIdsAreUniqueAndNeverReused) {
  BlockPool pool(1, 1);
  BlockId b = *pool.allocate();
  uint64_t first = pool.cache_block(b, key(1, {1}));
  pool.release(b);
  ASSERT_EQ(pool.allocate(), b);  // evicts
  uint64_t second = pool.cache_block(b, key(1, {1}));
  EXPECT_NE(first, second);
  EXPECT_NE(second, 0u);
}

TEST(BlockPool, RejectsUnsupportedBlockSizesNamingTheAllowedOnes) {
  for (int bad : {0, 3, 12, 48, 512, -16}) {
    try {
      BlockPool pool(4, bad);
      FAIL() << "block size " << bad << " accepted";
    } catch (const std::invalid_argument& e) {
      const std::string msg = e.what();
      EXPECT_NE(msg.find("unsupported block_size " + std::to_string(bad)), std::string::npos) << msg;
      EXPECT_NE(msg.find(supported_block_sizes_string()), std::string::npos) << msg;
    }
  }
  for (int good : kSupportedBlockSizes) EXPECT_NO_THROW(BlockPool(2, good));
  EXPECT_THROW(BlockPool(0, 16), std::invalid_argument);
  EXPECT_THROW(BlockPool(4, 16, 65), std::invalid_argument);
}

TEST(BlockPool, CacheBlockRejectsPartialBlocks) {
  BlockPool pool(2, 4);
  BlockId b = *pool.allocate();
  EXPECT_THROW(pool.cache_block(b, key(1, {1, 2})), std::invalid_argument);
}

}  // namespace
}  // namespace pagedcore

namespace pagedcore {
namespace {

TEST(BlockPool, ResetPrefixCacheForgetsEveryCachedBlockOnlyWhenNoneIsInUse) {
  BlockPool pool(4, 2);
  const BlockId a = *pool.allocate();  // 0
  const BlockId b = *pool.allocate();  // 1
  pool.cache_block(a, key(10, {1, 2}));
  pool.cache_block(b, key(11, {3, 4}));
  pool.release(b);
  EXPECT_FALSE(pool.reset_prefix_cache());  // block a is still in use: nothing changes
  EXPECT_EQ(pool.find_cached(key(11, {3, 4})), b);
  pool.release(a);
  EXPECT_EQ(pool.cached_free_blocks(), (std::vector<BlockId>{1, 0}));
  EXPECT_TRUE(pool.reset_prefix_cache());
  EXPECT_EQ(pool.num_cached_blocks(), 0);
  EXPECT_EQ(pool.cached_free_blocks(), (std::vector<BlockId>{}));
  EXPECT_EQ(pool.uncached_free_blocks(), (std::vector<BlockId>{2, 3, 1, 0}));  // LRU order kept
  EXPECT_EQ(pool.find_cached(key(10, {1, 2})), std::nullopt);
  EXPECT_FALSE(pool.is_cached(a));
  pool.check_invariants();
}

}  // namespace
}  // namespace pagedcore
