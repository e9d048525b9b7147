#include "pagedcore/block_pool.h"

#include <stdexcept>
#include <string>

#include "pagedcore/supported.h"

namespace pagedcore {

BlockPool::BlockPool(int num_blocks, int block_size, int hash_bits)
    : block_size_(block_size),
      ref_counts_(num_blocks > 0 ? num_blocks : 0, 0),
      cache_ids_(num_blocks > 0 ? num_blocks : 0, 0),
      keys_(num_blocks > 0 ? num_blocks : 0),
      uncached_free_(num_blocks > 0 ? num_blocks : 0),
      cached_free_(num_blocks > 0 ? num_blocks : 0) {
  check_block_size(block_size);
  if (num_blocks <= 0) {
    throw std::invalid_argument("num_blocks must be positive, got " + std::to_string(num_blocks));
  }
  if (hash_bits < 0 || hash_bits > 64) {
    throw std::invalid_argument("hash_bits must be in [0, 64], got " + std::to_string(hash_bits));
  }
  hash_mask_ = hash_bits == 64 ? ~0ULL : ((1ULL << hash_bits) - 1);
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
  auto [first, last] = cache_.equal_range(keys_[id].hash);
  for (auto it = first; it != last; ++it) {
    if (it->second == id) {
      cache_.erase(it);
      break;
    }
  }
  cache_ids_[id] = 0;
  keys_[id] = BlockKey{};
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
  auto [first, last] = cache_.equal_range(key.hash);
  for (auto it = first; it != last; ++it) {
    const BlockKey& held = keys_[it->second];
    // The hash only narrows the search; equality of the whole key is what allows sharing.
    if (held.parent_cache_id == key.parent_cache_id && held.tokens == key.tokens &&
        held.extra_key == key.extra_key) {
      return it->second;
    }
  }
  return std::nullopt;
}

void BlockPool::acquire_cached(BlockId id) {
  check_id(id);
  if (cache_ids_[id] == 0) throw std::invalid_argument("acquire_cached of uncached block " + std::to_string(id));
  if (ref_counts_[id] == 0) cached_free_.remove(id);
  ++ref_counts_[id];
}

uint64_t BlockPool::cache_block(BlockId id, BlockKey key) {
  check_id(id);
  if (ref_counts_[id] <= 0) throw std::invalid_argument("cache_block of free block " + std::to_string(id));
  if (cache_ids_[id] != 0) throw std::invalid_argument("cache_block of already cached block " + std::to_string(id));
  if (static_cast<int>(key.tokens.size()) != block_size_) {
    throw std::invalid_argument("cache_block needs exactly block_size (" + std::to_string(block_size_) +
                                ") token ids, got " + std::to_string(key.tokens.size()));
  }
  key.hash &= hash_mask_;
  cache_.emplace(key.hash, id);
  keys_[id] = std::move(key);
  cache_ids_[id] = next_cache_id_++;
  return cache_ids_[id];
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
  if (num_cached != cache_.size()) fail("hash map size differs from the number of cached blocks");
  for (const auto& [hash, id] : cache_) {
    if (cache_ids_[id] == 0 || keys_[id].hash != hash) fail("hash map entry for a block not cached under it");
    if (static_cast<int>(keys_[id].tokens.size()) != block_size_) fail("cached block key is not one full block");
  }
}

}  // namespace pagedcore
