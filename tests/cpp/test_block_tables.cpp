// Deterministic scenarios for BlockTables: exact block ids, ref counts, eviction order, prefix
// cache hits and misses, fork and copy-on-write. Invariants are checked after every operation.
#include <gtest/gtest.h>

#include <numeric>
#include <stdexcept>
#include <vector>

#include "pagedcore/block_tables.h"

namespace pagedcore {
namespace {

std::vector<int32_t> iota(int n, int start = 100) {
  std::vector<int32_t> v(n);
  std::iota(v.begin(), v.end(), start);
  return v;
}

class Tables : public ::testing::Test {
 protected:
  // 8 blocks of 4 tokens.
  BlockTables t{8, 4};
  std::vector<BlockCopy> copies;

  bool append(SeqId s, const std::vector<int32_t>& tokens) {
    bool ok = t.append(s, tokens, copies);
    t.check_invariants();
    return ok;
  }
};

TEST_F(Tables, AppendAllocatesAtBlockBoundaries) {
  t.add_sequence(1);
  ASSERT_TRUE(append(1, iota(3)));
  EXPECT_EQ(t.blocks(1), (std::vector<BlockId>{0}));
  ASSERT_TRUE(append(1, iota(1)));
  EXPECT_EQ(t.blocks(1), (std::vector<BlockId>{0}));
  ASSERT_TRUE(append(1, iota(1)));
  EXPECT_EQ(t.blocks(1), (std::vector<BlockId>{0, 1}));
  EXPECT_EQ(t.num_tokens(1), 5);
  EXPECT_EQ(t.slot(1, 0), 0);
  EXPECT_EQ(t.slot(1, 3), 3);
  EXPECT_EQ(t.slot(1, 4), 4);  // block 1, offset 0
  EXPECT_THROW(t.slot(1, 5), std::out_of_range);
  EXPECT_TRUE(copies.empty());
}

TEST_F(Tables, OutOfBlocksLeavesStateUntouched) {
  t.add_sequence(1);
  ASSERT_TRUE(append(1, iota(30)));  // 8 blocks
  EXPECT_EQ(t.stats().num_free_blocks, 0);
  ASSERT_TRUE(append(1, iota(2)));   // fills the last block
  EXPECT_EQ(t.num_blocks_needed(1, 1), 1);
  EXPECT_FALSE(t.can_append(1, 1));
  EXPECT_FALSE(append(1, iota(1)));
  EXPECT_EQ(t.num_tokens(1), 32);
  EXPECT_EQ(t.blocks(1).size(), 8u);
  t.add_sequence(2);
  EXPECT_FALSE(append(2, iota(1)));
  EXPECT_EQ(t.num_tokens(2), 0);
}

TEST_F(Tables, FreeReleasesTailFirstAndCachedBlocksAreEvictedInThatOrder) {
  t.add_sequence(1);
  ASSERT_TRUE(append(1, iota(10)));  // blocks 0, 1 full (cached), block 2 partial
  EXPECT_TRUE(t.pool().is_cached(0));
  EXPECT_TRUE(t.pool().is_cached(1));
  EXPECT_FALSE(t.pool().is_cached(2));
  t.free(1);
  t.check_invariants();
  EXPECT_EQ(t.pool().cached_free_blocks(), (std::vector<BlockId>{1, 0}));
  EXPECT_EQ(t.pool().uncached_free_blocks(), (std::vector<BlockId>{3, 4, 5, 6, 7, 2}));
  // Filling the pool takes the never-cached blocks first, then evicts 1 (the tail) before 0.
  t.add_sequence(2);
  ASSERT_TRUE(append(2, iota(24, 5000)));
  EXPECT_EQ(t.blocks(2), (std::vector<BlockId>{3, 4, 5, 6, 7, 2}));
  ASSERT_TRUE(append(2, iota(1, 9000)));
  EXPECT_EQ(t.blocks(2).back(), 1);
  EXPECT_EQ(t.pool().cached_free_blocks(), (std::vector<BlockId>{0}));
}

TEST_F(Tables, PrefixHitSharesBlocksAndIsCappedBeforeTheLastPromptToken) {
  const auto prompt = iota(10);
  t.add_sequence(1);
  ASSERT_TRUE(append(1, prompt));
  t.add_sequence(2);
  EXPECT_EQ(t.cached_prefix_length(prompt), 8);
  EXPECT_EQ(t.match_prefix(2, prompt), 8);
  t.check_invariants();
  EXPECT_EQ(t.blocks(2), (std::vector<BlockId>{0, 1}));
  EXPECT_EQ(t.pool().ref_count(0), 2);
  EXPECT_EQ(t.pool().ref_count(1), 2);
  ASSERT_TRUE(append(2, {prompt.begin() + 8, prompt.end()}));
  EXPECT_EQ(t.blocks(2), (std::vector<BlockId>{0, 1, 3}));

  // A prompt of exactly two blocks can reuse only the first: its last token must be computed.
  const std::vector<int32_t> two_blocks(prompt.begin(), prompt.begin() + 8);
  t.add_sequence(3);
  EXPECT_EQ(t.match_prefix(3, two_blocks), 4);
  EXPECT_EQ(t.blocks(3), (std::vector<BlockId>{0}));
  t.check_invariants();

  const PoolStats st = t.stats();
  EXPECT_EQ(st.num_prefix_queries, 2);
  EXPECT_EQ(st.num_prefix_query_tokens, 18);
  EXPECT_EQ(st.num_prefix_hit_tokens, 12);
}

TEST_F(Tables, HitOnAFreedSequenceRevivesItsCachedBlocks) {
  const auto prompt = iota(9);
  t.add_sequence(1);
  ASSERT_TRUE(append(1, prompt));
  t.free(1);
  EXPECT_EQ(t.stats().num_used_blocks, 0);
  t.add_sequence(2);
  EXPECT_EQ(t.match_prefix(2, prompt), 8);
  EXPECT_EQ(t.blocks(2), (std::vector<BlockId>{0, 1}));
  EXPECT_EQ(t.stats().num_cached_free_blocks, 0);
  t.check_invariants();
}

TEST_F(Tables, HashesChainTheParentSoSameTokensElsewhereDoNotHit) {
  std::vector<int32_t> a = iota(4, 1);
  std::vector<int32_t> b = iota(4, 50);
  std::vector<int32_t> ab = a;
  ab.insert(ab.end(), b.begin(), b.end());
  t.add_sequence(1);
  ASSERT_TRUE(append(1, ab));
  // b's tokens as a first block: the same tokens but another parent.
  std::vector<int32_t> b_first = b;
  b_first.push_back(7);
  EXPECT_EQ(t.cached_prefix_length(b_first), 0);
  ab.push_back(7);
  EXPECT_EQ(t.cached_prefix_length(ab), 8);
}

TEST_F(Tables, ExtraKeySeparatesCaches) {
  const auto prompt = iota(9);
  t.add_sequence(1, "salt-a");
  ASSERT_TRUE(append(1, prompt));
  EXPECT_EQ(t.cached_prefix_length(prompt, "salt-a"), 8);
  EXPECT_EQ(t.cached_prefix_length(prompt, "salt-b"), 0);
  EXPECT_EQ(t.cached_prefix_length(prompt), 0);
  t.add_sequence(2, "salt-b");
  EXPECT_EQ(t.match_prefix(2, prompt), 0);
}

TEST(TablesCollision, ForcedHashCollisionsNeverShareKV) {
  // hash_bits = 0: every block hashes to 0, so only the token comparison tells blocks apart.
  BlockTables t(8, 4, true, /*hash_bits=*/0);
  std::vector<BlockCopy> copies;
  const auto a = iota(9, 1), b = iota(9, 500);
  t.add_sequence(1);
  ASSERT_TRUE(t.append(1, a, copies));
  t.add_sequence(2);
  EXPECT_EQ(t.match_prefix(2, b), 0);
  ASSERT_TRUE(t.append(2, b, copies));
  t.check_invariants();
  // Same first block, different second block: only the first is shared.
  auto c = a;
  c[5] = 12345;
  t.add_sequence(3);
  EXPECT_EQ(t.match_prefix(3, c), 4);
  EXPECT_EQ(t.blocks(3), (std::vector<BlockId>{0}));
  // b's second block under a's first block as parent: equal tokens, different chain -> no hit.
  std::vector<int32_t> d(a.begin(), a.begin() + 4);
  d.insert(d.end(), b.begin() + 4, b.begin() + 8);
  d.push_back(0);
  t.add_sequence(4);
  EXPECT_EQ(t.match_prefix(4, d), 4);
  t.check_invariants();
}

TEST_F(Tables, DisabledPrefixCachingNeverCachesOrHits) {
  BlockTables off(8, 4, /*enable_prefix_caching=*/false);
  const auto prompt = iota(9);
  off.add_sequence(1);
  ASSERT_TRUE(off.append(1, prompt, copies));
  EXPECT_FALSE(off.pool().is_cached(0));
  off.free(1);
  EXPECT_EQ(off.stats().num_cached_free_blocks, 0);
  off.add_sequence(2);
  EXPECT_EQ(off.match_prefix(2, prompt), 0);
  EXPECT_TRUE(off.unregistered_tokens(2).empty());  // nothing is ever hashed: no token is kept
  off.check_invariants();
}

TEST_F(Tables, OnlyTheTokensOfUnregisteredBlocksAreKept) {
  // A prompt appended in pieces that straddle block boundaries registers the same blocks as one
  // append of it (another sequence finds all of them), and the tables keep only the partial block.
  const auto prompt = iota(19);  // 4 full blocks of 4 and 3 tokens
  t.add_sequence(1);
  size_t at = 0;
  for (size_t piece : {3u, 6u, 1u, 5u, 4u}) {
    ASSERT_TRUE(append(1, std::vector<int32_t>(prompt.begin() + at, prompt.begin() + at + piece)));
    at += piece;
    EXPECT_EQ(t.num_registered_blocks(1), static_cast<int>(at / 4));
    EXPECT_EQ(t.unregistered_tokens(1), std::vector<int32_t>(prompt.begin() + at / 4 * 4, prompt.begin() + at));
    t.check_invariants();
  }
  t.add_sequence(2);
  EXPECT_EQ(t.cached_prefix_length(prompt), 16);
  std::vector<int32_t> longer = prompt;
  longer.push_back(7);  // the 4 full blocks, and the 5th block's first tokens left to compute
  EXPECT_EQ(t.match_prefix(2, longer), 16);
  EXPECT_TRUE(t.unregistered_tokens(2).empty());

  // Deferred appends keep their tokens until register_deferred takes their blocks.
  for (int32_t token : {900, 901, 902, 903, 904, 905}) {
    ASSERT_TRUE(t.append(1, std::vector<int32_t>{token}, copies, Registration::kDeferred));
  }
  EXPECT_EQ(t.num_registered_blocks(1), 4);
  EXPECT_EQ(t.unregistered_tokens(1), (std::vector<int32_t>{116, 117, 118, 900, 901, 902, 903, 904, 905}));
  t.check_invariants();
  EXPECT_EQ(t.register_deferred(8), 2);
  EXPECT_EQ(t.unregistered_tokens(1), (std::vector<int32_t>{905}));
  // A pending token's placeholder is kept, and resolved in place.
  ASSERT_TRUE(t.append_pending(1, copies));
  t.resolve_pending(1, 906);
  EXPECT_EQ(t.unregistered_tokens(1), (std::vector<int32_t>{905, 906}));
  t.check_invariants();
}

TEST_F(Tables, ForkSharesEveryBlockAndCopyOnWriteGivesTheWriterAPrivateBlock) {
  t.add_sequence(1);
  ASSERT_TRUE(append(1, iota(6)));  // blocks 0 (full), 1 (2 of 4)
  t.fork(1, 2);
  t.check_invariants();
  EXPECT_EQ(t.blocks(2), (std::vector<BlockId>{0, 1}));
  EXPECT_EQ(t.pool().ref_count(0), 2);
  EXPECT_EQ(t.pool().ref_count(1), 2);
  EXPECT_EQ(t.num_blocks_needed(2, 1), 1);

  ASSERT_TRUE(append(2, {77}));
  EXPECT_EQ(copies, (std::vector<BlockCopy>{{1, 2}}));
  EXPECT_EQ(t.blocks(2), (std::vector<BlockId>{0, 2}));
  EXPECT_EQ(t.pool().ref_count(1), 1);
  EXPECT_EQ(t.pool().ref_count(2), 1);
  EXPECT_EQ(t.unregistered_tokens(2), (std::vector<int32_t>{104, 105, 77}));  // block 0 is registered

  copies.clear();
  ASSERT_TRUE(append(1, {88}));  // block 1 is now private to sequence 1: written in place
  EXPECT_TRUE(copies.empty());
  EXPECT_EQ(t.blocks(1), (std::vector<BlockId>{0, 1}));
  EXPECT_EQ(t.unregistered_tokens(1), (std::vector<int32_t>{104, 105, 88}));

  // Appending the token that fills a shared partial block copies it too.
  t.fork(1, 3);
  ASSERT_TRUE(append(1, {1}));
  EXPECT_EQ(copies, (std::vector<BlockCopy>{{1, 3}}));
  // A full shared block is never copied: appending at a boundary just allocates a new block.
  copies.clear();
  t.fork(1, 4);
  ASSERT_TRUE(append(4, {2}));
  EXPECT_TRUE(copies.empty());
  EXPECT_EQ(t.blocks(4), (std::vector<BlockId>{0, 3, 4}));
  t.free(4);
  t.free(1);
  t.free(2);
  t.free(3);
  t.check_invariants();
  EXPECT_EQ(t.stats().num_used_blocks, 0);
}

TEST_F(Tables, CopyOnWriteWithoutAFreeBlockFailsCleanly) {
  t.add_sequence(1);
  ASSERT_TRUE(append(1, iota(30)));  // all 8 blocks, last one half full
  t.fork(1, 2);
  EXPECT_EQ(t.num_blocks_needed(2, 1), 1);
  EXPECT_FALSE(append(2, {5}));
  EXPECT_EQ(t.num_tokens(2), 30);
  EXPECT_EQ(t.pool().ref_count(7), 2);
}

TEST_F(Tables, IdenticalPromptsComputedTogetherStayFindable) {
  const auto prompt = iota(9);
  t.add_sequence(1);
  t.add_sequence(2);
  EXPECT_EQ(t.match_prefix(1, prompt), 0);
  EXPECT_EQ(t.match_prefix(2, prompt), 0);
  ASSERT_TRUE(append(1, prompt));
  ASSERT_TRUE(append(2, prompt));  // twins of 1's blocks: not cached a second time
  EXPECT_FALSE(t.pool().is_cached(t.blocks(2)[0]));
  t.free(1);
  auto longer = prompt;
  longer.insert(longer.end(), {1, 2, 3, 4});
  ASSERT_TRUE(append(2, {1, 2, 3}));  // fills 2's third block, chained through 1's blocks
  t.add_sequence(3);
  EXPECT_EQ(t.match_prefix(3, longer), 12);
  EXPECT_EQ(t.blocks(3)[2], t.blocks(2)[2]);
  t.check_invariants();
}

std::vector<int32_t> plus(std::vector<int32_t> v, int32_t next) {
  v.push_back(next);
  return v;
}

// Blocks filled by generated tokens wait for register_deferred (oldest sequence first, within its
// budget), except that free() registers a sequence's own before releasing them.
TEST_F(Tables, DeferredRegistrationWaitsForRegisterDeferredOldestFirstAndFreeRegistersItsOwn) {
  t.add_sequence(1);
  t.add_sequence(2);
  ASSERT_TRUE(t.append(1, iota(4, 100), copies, Registration::kDeferred));
  ASSERT_TRUE(t.append(2, iota(4, 200), copies, Registration::kDeferred));
  t.check_invariants();
  EXPECT_EQ(t.num_deferred_blocks(), 2);
  EXPECT_EQ(t.cached_prefix_length(plus(iota(4, 100), 9)), 0);
  EXPECT_EQ(t.register_deferred(1), 1);
  EXPECT_EQ(t.cached_prefix_length(plus(iota(4, 100), 9)), 4);
  EXPECT_EQ(t.cached_prefix_length(plus(iota(4, 200), 9)), 0);
  EXPECT_EQ(t.num_deferred_blocks(), 1);
  t.check_invariants();
  t.free(2);
  EXPECT_EQ(t.cached_prefix_length(plus(iota(4, 200), 9)), 4);
  EXPECT_EQ(t.num_deferred_blocks(), 0);
  EXPECT_EQ(t.register_deferred(8), 0);  // sequence 2's entry is skipped
  t.check_invariants();

  // A pending token's block: registered neither at append_pending nor at resolve_pending, but by
  // register_deferred; a fork taken in between registers through the same blocks.
  t.add_sequence(3);
  ASSERT_TRUE(append(3, iota(3, 300)));
  ASSERT_TRUE(t.append_pending(3, copies));
  t.resolve_pending(3, 303);
  t.fork(3, 4);
  t.check_invariants();
  EXPECT_EQ(t.cached_prefix_length(plus(iota(4, 300), 9)), 0);
  EXPECT_EQ(t.register_deferred(8), 2);  // the parent's block, which the child then finds cached
  EXPECT_EQ(t.cached_prefix_length(plus(iota(4, 300), 9)), 4);
  EXPECT_EQ(t.num_deferred_blocks(), 0);
  t.check_invariants();
}

// Found in review: a freed sequence's queue entry came back to life when its id was reused (the
// scheduler re-adds a preempted sequence under its id): the backlog was counted twice and the
// reused sequence jumped ahead of older ones.
TEST_F(Tables, AReusedSequenceIdQueuesBehindOlderSequences) {
  t.add_sequence(1);
  t.add_sequence(2);
  ASSERT_TRUE(t.append(2, iota(4, 100), copies, Registration::kDeferred));
  ASSERT_TRUE(t.append(1, iota(4, 200), copies, Registration::kDeferred));
  t.free(1);  // registers its own; its entry is stale
  t.add_sequence(1);
  ASSERT_TRUE(t.append(1, iota(4, 300), copies, Registration::kDeferred));
  t.check_invariants();
  EXPECT_EQ(t.num_deferred_blocks(), 2);
  EXPECT_EQ(t.register_deferred(1), 1);
  EXPECT_EQ(t.cached_prefix_length(plus(iota(4, 100), 9)), 4);  // sequence 2, the older entry, first
  EXPECT_EQ(t.cached_prefix_length(plus(iota(4, 300), 9)), 0);
  t.check_invariants();
}

TEST_F(Tables, MisuseIsRefusedWithClearErrors) {
  t.add_sequence(1);
  EXPECT_THROW(t.add_sequence(1), std::invalid_argument);
  EXPECT_THROW(t.free(9), std::invalid_argument);
  EXPECT_THROW(t.fork(9, 10), std::invalid_argument);
  EXPECT_THROW(t.fork(1, 1), std::invalid_argument);
  ASSERT_TRUE(append(1, iota(2)));
  EXPECT_THROW(t.match_prefix(1, iota(9)), std::invalid_argument);
}

}  // namespace
}  // namespace pagedcore
