// BlockHashIndex against a std::multimap model: random inserts and erases with hashes drawn from
// a few values (long collision runs) and from the full range, including runs that wrap around
// the end of the slot array; every entry stays findable and nothing else is.
#include <gtest/gtest.h>

#include <map>
#include <random>
#include <set>
#include <utility>
#include <vector>

#include "pagedcore/block_hash_index.h"

namespace pagedcore {
namespace {

void expect_same(const BlockHashIndex& index, const std::multimap<uint64_t, BlockId>& model,
                 const std::vector<uint64_t>& hashes_seen) {
  ASSERT_EQ(index.size(), static_cast<int>(model.size()));
  for (uint64_t h : hashes_seen) {
    std::set<BlockId> expected, found;
    for (auto [it, end] = model.equal_range(h); it != end; ++it) expected.insert(it->second);
    index.find(h, [&](BlockId id) {
      found.insert(id);
      return false;  // keep scanning: collect every entry of this hash
    });
    EXPECT_EQ(found, expected) << "hash " << h;
  }
  std::multimap<uint64_t, BlockId> listed;
  index.for_each([&](uint64_t h, BlockId id) { listed.emplace(h, id); });
  using Entries = std::multiset<std::pair<uint64_t, BlockId>>;
  EXPECT_EQ(Entries(listed.begin(), listed.end()), Entries(model.begin(), model.end()));
}

class BlockHashIndexModel : public ::testing::TestWithParam<uint64_t> {};

TEST_P(BlockHashIndexModel, MatchesAMultimapUnderRandomInsertsAndErases) {
  const uint64_t hash_range = GetParam();  // 0: the full 64-bit range
  constexpr int kCapacity = 37;
  BlockHashIndex index(kCapacity);
  std::multimap<uint64_t, BlockId> model;
  std::vector<BlockId> free_ids;
  for (BlockId id = kCapacity - 1; id >= 0; --id) free_ids.push_back(id);
  std::mt19937_64 rng(hash_range * 7919 + 1);
  std::vector<uint64_t> hashes_seen;
  for (int op = 0; op < 4000; ++op) {
    const bool insert = !free_ids.empty() && (model.empty() || rng() % 3 != 0);
    if (insert) {
      const uint64_t h = hash_range ? rng() % hash_range : rng();
      const BlockId id = free_ids.back();
      free_ids.pop_back();
      index.insert(h, id);
      model.emplace(h, id);
      hashes_seen.push_back(h);
    } else {
      auto it = std::next(model.begin(), static_cast<long>(rng() % model.size()));
      index.erase(it->first, it->second);
      free_ids.push_back(it->second);
      model.erase(it);
    }
    if (op % 97 == 0 || model.size() == kCapacity) expect_same(index, model, hashes_seen);
  }
  expect_same(index, model, hashes_seen);
}

INSTANTIATE_TEST_SUITE_P(HashRanges, BlockHashIndexModel, ::testing::Values(1, 3, 40, 0));

TEST(BlockHashIndex, FindStopsAtTheFirstAcceptedBlockAndRefusesOverflow) {
  BlockHashIndex index(2);
  index.insert(5, 0);
  index.insert(5, 1);
  EXPECT_EQ(index.find(5, [](BlockId id) { return id == 1; }), 1);
  EXPECT_EQ(index.find(5, [](BlockId) { return false; }), std::nullopt);
  EXPECT_EQ(index.find(6, [](BlockId) { return true; }), std::nullopt);
  EXPECT_THROW(index.insert(7, 2), std::logic_error);
  EXPECT_THROW(index.erase(5, 9), std::logic_error);
}

}  // namespace
}  // namespace pagedcore
