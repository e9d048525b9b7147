// CPU cache operations: write_kv_cache (scatter new K/V rows into their slots) and copy_blocks.
// Both move bytes only, so every dtype is supported.
#include <cstring>
#include <stdexcept>
#include <string>

#include "cpu_thread_pool.h"
#include "pagedcore/kernels.h"
#include "pagedcore/types.h"

namespace pagedcore {

void write_kv_cache_cpu(const WriteKVCacheArgs& a) {
  check_write_kv_cache_args(a);
  const int64_t elem = dtype_bytes(a.dtype);
  const int64_t row_bytes = a.head_dim * elem;
  const int64_t num_slots = a.num_blocks * a.block_size;
  for (int t = 0; t < a.num_tokens; ++t) {
    const int32_t slot = a.slot_mapping[t];
    if (slot != kPaddingSlot && (slot < 0 || slot >= num_slots)) {
      throw std::out_of_range("slot_mapping[" + std::to_string(t) + "] = " + std::to_string(slot) +
                              " is outside the cache (" + std::to_string(num_slots) + " slots; -1 skips)");
    }
  }
  cpu::parallel_for(a.num_tokens, [&](int64_t t) {
    const int32_t slot = a.slot_mapping[t];
    if (slot == kPaddingSlot) return;
    const int64_t block = slot / a.block_size;
    const int64_t offset = slot % a.block_size;
    for (int h = 0; h < a.num_kv_heads; ++h) {
      const int64_t dst = ((block * a.num_kv_heads + h) * a.block_size + offset) * a.head_dim;
      std::memcpy(static_cast<char*>(a.k_cache) + dst * elem,
                  static_cast<const char*>(a.k) + (t * a.k_stride_token + h * a.k_stride_head) * elem, row_bytes);
      std::memcpy(static_cast<char*>(a.v_cache) + dst * elem,
                  static_cast<const char*>(a.v) + (t * a.v_stride_token + h * a.v_stride_head) * elem, row_bytes);
    }
  });
}

void copy_blocks_cpu(void* const* caches, int num_caches, int64_t num_blocks, int64_t block_bytes,
                     const int32_t* pairs, int num_pairs) {
  for (int p = 0; p < num_pairs; ++p) {
    for (int side = 0; side < 2; ++side) {
      const int32_t id = pairs[2 * p + side];
      if (id < 0 || id >= num_blocks) {
        throw std::out_of_range("copy_blocks: block id " + std::to_string(id) + " outside [0, " +
                                std::to_string(num_blocks) + ")");
      }
    }
  }
  cpu::parallel_for(static_cast<int64_t>(num_caches) * num_pairs, [&](int64_t i) {
    char* base = static_cast<char*>(caches[i / num_pairs]);
    const int32_t* pair = pairs + 2 * (i % num_pairs);
    std::memcpy(base + pair[1] * block_bytes, base + pair[0] * block_bytes, block_bytes);
  });
}

}  // namespace pagedcore
