#include "pagedcore/block_pool.h"

#include <algorithm>

#include <stdexcept>
#include <string>

#include "pagedcore/supported.h"

namespace pagedcore {

BlockPool::BlockPool(int num_blocks, int block_size, int hash_bits)
    : block_size_(block_size),
      ref_counts_(num_blocks > 0 ? num_blocks : 0, 0),
      cache_ids_(num_blocks > 0 ? num_blocks : 0, 0),
      hashes_(num_blocks > 0 ? num_blocks : 0, 0),
      parent_ids_(num_blocks > 0 ? num_blocks : 0, 0),
      extra_keys_(num_blocks > 0 ? num_blocks : 0),
      uncached_free_(num_blocks > 0 ? num_blocks : 0),
      cached_free_(num_blocks > 0 ? num_blocks : 0),
      cache_(num_blocks > 0 ? num_blocks : 0) {
  check_block_size(block_size);
  if (num_blocks <= 0) {
    throw std::invalid_argument("num_blocks must be positive, got " + std::to_string(num_blocks));
  }
  if (hash_bits < 0 || hash_bits > 64) {
    throw std::invalid_argument("hash_bits must be in [0, 64], got " + std::to_string(hash_bits));
  }
  hash_mask_ = hash_bits == 64 ? ~0ULL : ((1ULL << hash_bits) - 1);
  block_tokens_.assign(static_cast<size_t>(num_blocks) * block_size, 0);  // sizes checked above
  for (BlockId id = 0; id < num_blocks; ++id) uncached_free_.push_back(id);
}

std::optional<BlockId> BlockPool::allocate() {
  std::optional<BlockId> id = uncached_free_.pop_front();
  if (!id) {
    id = cached_free_.pop_front();
    if (!id) return std::nullopt;
    evict(*id);
  }
  ref_counts_[*id] = 1;
  return id;
}

void BlockPool::evict(BlockId id) {
  cache_.erase(hashes_[id], id);
  cache_ids_[id] = 0;
  extra_keys_[id].clear();
}

void BlockPool::check_id(BlockId id) const {
  if (id < 0 || id >= num_blocks()) {
    throw std::invalid_argument("block id " + std::to_string(id) + " outside the pool [0, " +
                                std::to_string(num_blocks()) + ")");
  }
}

void BlockPool::retain(BlockId id) {
  check_id(id);
  if (ref_counts_[id] <= 0) throw std::invalid_argument("retain of free block " + std::to_string(id));
  ++ref_counts_[id];
}

void BlockPool::release(BlockId id) {
  check_id(id);
  if (ref_counts_[id] <= 0) throw std::invalid_argument("release of free block " + std::to_string(id));
  if (--ref_counts_[id] == 0) {
    if (cache_ids_[id] != 0) cached_free_.push_back(id); else uncached_free_.push_back(id);
  }
}

std::optional<BlockId> BlockPool::find_cached(const BlockKey& key) const {
  // The hash only narrows the search; equality of the whole key is what allows sharing.
  return cache_.find(key.hash, [&](BlockId id) {
    return parent_ids_[id] == key.parent_cache_id && std::ranges::equal(tokens_of(id), key.tokens) &&
           extra_keys_[id] == key.extra_key;
  });
}

void BlockPool::acquire_cached(BlockId id) {
  check_id(id);
  if (cache_ids_[id] == 0) throw std::invalid_argument("acquire_cached of uncached block " + std::to_string(id));
  if (ref_counts_[id] == 0) cached_free_.remove(id);
  ++ref_counts_[id];
}

uint64_t BlockPool::cache_block(BlockId id, const BlockKey& key) {
  check_id(id);
  if (ref_counts_[id] <= 0) throw std::invalid_argument("cache_block of free block " + std::to_string(id));
  if (cache_ids_[id] != 0) throw std::invalid_argument("cache_block of already cached block " + std::to_string(id));
  if (static_cast<int>(key.tokens.size()) != block_size_) {
    throw std::invalid_argument("cache_block needs exactly block_size (" + std::to_string(block_size_) +
                                ") token ids, got " + std::to_string(key.tokens.size()));
  }
  hashes_[id] = key.hash & hash_mask_;
  parent_ids_[id] = key.parent_cache_id;
  std::ranges::copy(key.tokens, block_tokens_.begin() + static_cast<ptrdiff_t>(id) * block_size_);
  extra_keys_[id].assign(key.extra_key);
  cache_.insert(hashes_[id], id);
  cache_ids_[id] = next_cache_id_++;
  return cache_ids_[id];
}

bool BlockPool::reset_prefix_cache() {
  if (num_used_blocks() != 0) return false;
  // Least recently freed first, so the never-cached list keeps the order the LRU list had.
  while (std::optional<BlockId> id = cached_free_.pop_front()) {
    evict(*id);
    uncached_free_.push_back(*id);
  }
  return true;
}

void BlockPool::check_invariants() const {
  auto fail = [](const std::string& what) { throw std::logic_error("block pool invariant: " + what); };
  int in_use = 0;
  for (BlockId id = 0; id < num_blocks(); ++id) {
    const bool in_uncached = uncached_free_.contains(id);
    const bool in_cached = cached_free_.contains(id);
    const std::string b = "block " + std::to_string(id);
    if (ref_counts_[id] < 0) fail(b + " has negative ref count");
    if (ref_counts_[id] > 0) {
      ++in_use;
      if (in_uncached || in_cached) fail(b + " is in use and on a free list");
    } else {
      if (in_uncached == in_cached) fail(b + " is free but not on exactly one free list");
      if (in_cached != (cache_ids_[id] != 0)) fail(b + " is on the wrong free list");
    }
  }
  if (in_use + uncached_free_.size() + cached_free_.size() != num_blocks()) {
    fail("free + cached-free + in-use != num_blocks");
  }
  size_t num_cached = 0;
  for (BlockId id = 0; id < num_blocks(); ++id) num_cached += cache_ids_[id] != 0;
  if (static_cast<int>(num_cached) != cache_.size()) fail("hash map size differs from the number of cached blocks");
  cache_.for_each([&](uint64_t hash, BlockId id) {
    if (cache_ids_[id] == 0 || hashes_[id] != hash) fail("hash map entry for a block not cached under it");
  });
}

}  // namespace pagedcore
