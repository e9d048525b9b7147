// The prefix cache's hash -> block index: open addressing with linear probing over a fixed array
// sized for every block of the pool, so inserting and erasing never allocate or rehash inside a
// scheduler step, and a lookup or insert touches one run of adjacent slots. Several blocks may
// share a hash (collisions); callers confirm a hit with the block's full key.
#pragma once

#include <bit>
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <vector>

#include "pagedcore/types.h"

namespace pagedcore {

class BlockHashIndex {
 public:
  // Room for `capacity` entries at a load factor of at most 1/2.
  explicit BlockHashIndex(int capacity)
      : slots_(std::bit_ceil(static_cast<size_t>(capacity > 8 ? capacity : 8) * 2)),
        shift_(64 - std::countr_zero(slots_.size())),
        capacity_(capacity) {}

  int size() const { return size_; }

  void insert(uint64_t hash, BlockId id) {
    if (size_ >= capacity_) throw std::logic_error("BlockHashIndex: more entries than blocks");
    size_t i = home(hash);
    while (slots_[i].id != kNullBlock) i = next(i);
    slots_[i] = {hash, id};
    ++size_;
  }

  // Removes the entry (hash, id); it must be present.
  void erase(uint64_t hash, BlockId id) {
    size_t i = home(hash);
    while (!(slots_[i].id == id && slots_[i].hash == hash)) {
      if (slots_[i].id == kNullBlock) throw std::logic_error("BlockHashIndex: erase of an absent entry");
      i = next(i);
    }
    // Backward-shift deletion: pull later entries of the run into the hole when their home slot
    // does not lie (cyclically) between the hole and their position, so no tombstones remain.
    for (size_t j = next(i);; j = next(j)) {
      if (slots_[j].id == kNullBlock) break;
      const size_t k = home(slots_[j].hash);
      const bool k_in_hole_to_j = i <= j ? (i < k && k <= j) : (i < k || k <= j);
      if (!k_in_hole_to_j) {
        slots_[i] = slots_[j];
        i = j;
      }
    }
    slots_[i] = {0, kNullBlock};
    --size_;
  }

  // The first block with this hash for which accept(id) holds.
  template <typename Accept>
  std::optional<BlockId> find(uint64_t hash, Accept&& accept) const {
    for (size_t i = home(hash); slots_[i].id != kNullBlock; i = next(i)) {
      if (slots_[i].hash == hash && accept(slots_[i].id)) return slots_[i].id;
    }
    return std::nullopt;
  }

  // Calls fn(hash, id) for every entry (invariant checks).
  template <typename Fn>
  void for_each(Fn&& fn) const {
    for (const Slot& s : slots_) {
      if (s.id != kNullBlock) fn(s.hash, s.id);
    }
  }

 private:
  struct Slot {
    uint64_t hash = 0;
    BlockId id = kNullBlock;  // kNullBlock: empty
  };
  // Fibonacci hashing: prefix hashes truncated to a few bits (tests) still spread over the slots.
  size_t home(uint64_t hash) const { return static_cast<size_t>((hash * 0x9E3779B97F4A7C15ULL) >> shift_); }
  size_t next(size_t i) const { return (i + 1) & (slots_.size() - 1); }

  std::vector<Slot> slots_;  // [power of two >= 2 * capacity]
  int shift_;
  int capacity_;
  int size_ = 0;
};

}  // namespace pagedcore
