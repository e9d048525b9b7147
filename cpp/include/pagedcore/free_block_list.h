// An O(1) intrusive doubly linked FIFO of block ids. The links live in arrays indexed by
// block id, so pushing, popping and unlinking from the middle never allocate.
#pragma once

#include <cassert>
#include <optional>
#include <vector>

#include "pagedcore/types.h"

namespace pagedcore {

class FreeBlockList {
 public:
  explicit FreeBlockList(int capacity) : prev_(capacity, kNullBlock), next_(capacity, kNullBlock),
                                         linked_(capacity, false) {}

  int size() const { return size_; }
  bool empty() const { return size_ == 0; }
  bool contains(BlockId id) const { return linked_[id]; }
  std::optional<BlockId> front() const {
    return head_ == kNullBlock ? std::nullopt : std::optional<BlockId>(head_);
  }

  void push_back(BlockId id) {
    assert(!linked_[id]);
    prev_[id] = tail_;
    next_[id] = kNullBlock;
    if (tail_ != kNullBlock) next_[tail_] = id; else head_ = id;
    tail_ = id;
    linked_[id] = true;
    ++size_;
  }

  std::optional<BlockId> pop_front() {
    if (head_ == kNullBlock) return std::nullopt;
    BlockId id = head_;
    remove(id);
    return id;
  }

  void remove(BlockId id) {
    assert(linked_[id]);
    if (prev_[id] != kNullBlock) next_[prev_[id]] = next_[id]; else head_ = next_[id];
    if (next_[id] != kNullBlock) prev_[next_[id]] = prev_[id]; else tail_ = prev_[id];
    prev_[id] = next_[id] = kNullBlock;
    linked_[id] = false;
    --size_;
  }

  // Ids from front (next to be taken) to back; for tests and introspection.
  std::vector<BlockId> to_vector() const {
    std::vector<BlockId> out;
    out.reserve(size_);
    for (BlockId id = head_; id != kNullBlock; id = next_[id]) out.push_back(id);
    return out;
  }

 private:
  std::vector<BlockId> prev_;
  std::vector<BlockId> next_;
  std::vector<bool> linked_;
  BlockId head_ = kNullBlock;
  BlockId tail_ = kNullBlock;
  int size_ = 0;
};

}  // namespace pagedcore
