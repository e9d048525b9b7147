// The fixed pool of physical KV blocks: reference counts, the two free lists and the
// prefix-cache hash map. It knows nothing of sequences; BlockTables builds on it.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "pagedcore/block_hash_index.h"
#include "pagedcore/free_block_list.h"
#include "pagedcore/types.h"

namespace pagedcore {

// The identity under which a full block is cached. A lookup matches a block only if every field
// is equal, so two blocks whose hashes collide are never confused. A key views the caller's token
// ids and extra key for the length of one call; cache_block copies them into the pool's own
// storage (one flat array of every block's tokens), so caching a block allocates nothing.
struct BlockKey {
  uint64_t hash = 0;                 // chained hash (already truncated to the pool's hash_bits)
  uint64_t parent_cache_id = 0;      // cache_id of the parent block; 0 for a sequence's first block
  std::span<const int32_t> tokens;   // [block_size] token ids the block holds
  std::string_view extra_key;        // e.g. a per-request cache salt
};

class BlockPool {
 public:
  // hash_bits < 64 truncates prefix hashes (tests use it to force collisions).
  BlockPool(int num_blocks, int block_size, int hash_bits = 64);

  int num_blocks() const { return static_cast<int>(ref_counts_.size()); }
  int block_size() const { return block_size_; }
  uint64_t hash_mask() const { return hash_mask_; }

  // Blocks an allocation can take: never-cached free blocks plus evictable cached ones.
  int num_free_blocks() const { return uncached_free_.size() + cached_free_.size(); }
  int num_cached_free_blocks() const { return cached_free_.size(); }
  int num_used_blocks() const { return num_blocks() - num_free_blocks(); }
  int num_cached_blocks() const { return cache_.size(); }  // in use or free

  // Takes a never-cached free block first, else evicts the least recently freed cached block.
  // The block comes back with ref count 1 and no cache key. nullopt when the pool is exhausted.
  std::optional<BlockId> allocate();

  // Adds a reference to a block in use (fork).
  void retain(BlockId id);

  // Drops a reference; at zero the block goes to the back of the cached LRU list if it holds a
  // cache key, else to the never-cached free list.
  void release(BlockId id);

  // Finds a cached block equal to `key` (hash, parent, tokens and extra key all compared).
  std::optional<BlockId> find_cached(const BlockKey& key) const;

  // Takes a reference to a block found by find_cached, reviving it from the LRU list if free.
  void acquire_cached(BlockId id);

  // Forgets every cached block: all must be free (nothing holds a reference). Returns false, and
  // changes nothing, while any block is in use.
  bool reset_prefix_cache();

  // Registers a full block in use under `key`; returns the block's new cache_id (never 0).
  uint64_t cache_block(BlockId id, const BlockKey& key);

  int ref_count(BlockId id) const { check_id(id); return ref_counts_[id]; }
  bool is_cached(BlockId id) const { check_id(id); return cache_ids_[id] != 0; }
  uint64_t cache_id(BlockId id) const { check_id(id); return cache_ids_[id]; }

  // Free lists from next-taken to last-taken; for tests and introspection.
  std::vector<BlockId> uncached_free_blocks() const { return uncached_free_.to_vector(); }
  std::vector<BlockId> cached_free_blocks() const { return cached_free_.to_vector(); }

  // Checks the pool's own invariants (list membership, ref counts, hash map); throws
  // std::logic_error describing the first violation.
  void check_invariants() const;

 private:
  void evict(BlockId id);
  std::span<const int32_t> tokens_of(BlockId id) const {
    return {block_tokens_.data() + static_cast<size_t>(id) * block_size_, static_cast<size_t>(block_size_)};
  }
  void check_id(BlockId id) const;  // throws std::invalid_argument outside [0, num_blocks)

  int block_size_;
  uint64_t hash_mask_;
  std::vector<int32_t> ref_counts_;   // [num_blocks]
  std::vector<uint64_t> cache_ids_;   // [num_blocks], 0 = not cached
  // Cache keys, meaningful where cache_ids_ != 0:
  std::vector<uint64_t> hashes_;          // [num_blocks]
  std::vector<uint64_t> parent_ids_;      // [num_blocks] parent cache_id
  std::vector<int32_t> block_tokens_;     // [num_blocks, block_size] token ids
  std::vector<std::string> extra_keys_;   // [num_blocks]
  FreeBlockList uncached_free_;       // ref 0, no cache key
  FreeBlockList cached_free_;         // ref 0, cache key kept; LRU order (front = evict next)
  BlockHashIndex cache_;              // hash -> cached blocks
  uint64_t next_cache_id_ = 1;
};

}  // namespace pagedcore
