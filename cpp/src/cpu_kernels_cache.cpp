// CPU cache operations: write_kv_cache (scatter new K/V rows into their slots; into an FP8 cache
// each value divided by its scale and rounded to e4m3) and copy_blocks. Caches of the model's dtype
// take bytes as they are, so every dtype is supported.
#include <cstring>
#include <stdexcept>
#include <string>

#include "cpu_dtype.h"
#include "cpu_thread_pool.h"
#include "pagedcore/kernels.h"
#include "pagedcore/supported.h"
#include "pagedcore/types.h"

namespace pagedcore {

namespace {

// Calls fn(t, h, row) for every written (token, KV head): row = the element offset of its cache row.
template <typename Fn>
void for_each_cache_row(const WriteKVCacheArgs& a, Fn&& fn) {
  cpu::parallel_for(a.num_tokens, [&](int64_t t) {
    const int32_t slot = a.slot_mapping[t];
    if (slot == kPaddingSlot) return;
    const int64_t block = slot / a.block_size;
    const int64_t offset = slot % a.block_size;
    for (int h = 0; h < a.num_kv_heads; ++h) {
      fn(t, h, ((block * a.num_kv_heads + h) * a.block_size + offset) * a.head_dim);
    }
  });
}

// Rows of T quantized into an FP8 cache: stored = e4m3(x / scale).
template <typename T>
void write_fp8_rows(const WriteKVCacheArgs& a) {
  for_each_cache_row(a, [&](int64_t t, int h, int64_t row) {
    const T* k = static_cast<const T*>(a.k) + t * a.k_stride_token + h * a.k_stride_head;
    const T* v = static_cast<const T*>(a.v) + t * a.v_stride_token + h * a.v_stride_head;
    auto* k_out = static_cast<cpu::Float8E4M3*>(a.k_cache) + row;
    auto* v_out = static_cast<cpu::Float8E4M3*>(a.v_cache) + row;
    for (int d = 0; d < a.head_dim; ++d) {
      k_out[d] = cpu::from_float<cpu::Float8E4M3>(cpu::to_float(k[d]) / a.k_scale);
      v_out[d] = cpu::from_float<cpu::Float8E4M3>(cpu::to_float(v[d]) / a.v_scale);
    }
  });
}

}  // namespace

void write_kv_cache_cpu(const WriteKVCacheArgs& a) {
  check_write_kv_cache_args(a);
  check_cache_dtype(a.dtype, a.cache_dtype, "write_kv_cache");
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
  if (a.cache_dtype == DType::kFloat8E4M3) {
    check_cpu_dtype(a.dtype, "write_kv_cache into an FP8 cache");
    if (a.dtype == DType::kFloat32) write_fp8_rows<float>(a);
    else write_fp8_rows<cpu::BFloat16>(a);
    return;
  }
  for_each_cache_row(a, [&](int64_t t, int h, int64_t row) {
    std::memcpy(static_cast<char*>(a.k_cache) + row * elem,
                static_cast<const char*>(a.k) + (t * a.k_stride_token + h * a.k_stride_head) * elem, row_bytes);
    std::memcpy(static_cast<char*>(a.v_cache) + row * elem,
                static_cast<const char*>(a.v) + (t * a.v_stride_token + h * a.v_stride_head) * elem, row_bytes);
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
