// Small shared vocabulary types of the pagedcore core.
#pragma once

#include <cstdint>

namespace pagedcore {

using BlockId = int32_t;  // index of a physical KV block in the pool, 0..num_blocks-1
using SeqId = int64_t;    // caller-chosen sequence id

// Named "no block" sentinel for intrusive list links; public APIs return std::optional instead.
inline constexpr BlockId kNullBlock = -1;

// Slot value meaning "this token has no KV slot" (padding) in a slot mapping.
inline constexpr int32_t kPaddingSlot = -1;

// One copy-on-write (or swap) instruction for the cache kernels: copy block `src` into `dst`.
struct BlockCopy {
  BlockId src;
  BlockId dst;
  bool operator==(const BlockCopy& other) const { return src == other.src && dst == other.dst; }
};

}  // namespace pagedcore
