// Host entry of CUDA paged attention: runs a plan's layer (AttentionPlan, kernel_args.cpp, validated
// the step): checks the layer's alignment, picks the launches for a mixed batch (decode kernel for
// 1-token rows, its split merge included; prefill kernel for the rest), and recommends split counts
// from the device's size.
#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

#include "attention_params.cuh"
#include "cuda_check.cuh"
#include "pagedcore/kernels.h"
#include "pagedcore/supported.h"

namespace pagedcore {
namespace {

void require_aligned(const void* ptr, int64_t stride_a, int64_t stride_b, const char* name) {
  if (reinterpret_cast<uintptr_t>(ptr) % 16 != 0 || stride_a % 8 != 0 || stride_b % 8 != 0) {
    throw std::invalid_argument(std::string(name) +
                                " must be 16-byte aligned with strides that are multiples of 8 elements "
                                "(CUDA kernels use 16-byte vector accesses)");
  }
}

}  // namespace

void paged_attention_cuda(const AttentionParams& p, cudaStream_t stream) {
  require_aligned(p.q, p.q_stride_token, p.q_stride_head, "q");
  require_aligned(p.out, p.out_stride_token, p.out_stride_head, "out");
  require_aligned(p.k_cache, 0, 0, "k_cache");
  require_aligned(p.v_cache, 0, 0, "v_cache");
  if (p.num_seqs == 0 || p.num_tokens == 0) return;
  if (!p.prefill_takes_decode_rows) cuda::launch_decode_attention(p, p.dtype, p.head_dim, stream);
  if (p.max_query_len > 1 || p.prefill_takes_decode_rows) cuda::launch_prefill_attention(p, p.dtype, p.head_dim, stream);
}

std::string cuda_decode_attention_path(DType dtype, int head_dim, int block_size) {
  check_block_size(block_size);
  check_head_size(head_dim);
  check_cuda_dtype(dtype, "paged_attention");
  int block_size_log2 = 0;
  while ((1 << block_size_log2) < block_size) ++block_size_log2;
  return cuda::decode_attention_uses_bulk_copies(dtype, head_dim, block_size_log2) ? "hopper" : "ampere";
}

int cuda_recommended_num_splits(int num_seqs, int num_kv_heads, int num_heads, int head_dim, DType dtype,
                                int max_context_len) {
  if (num_seqs <= 0 || num_kv_heads <= 0 || num_heads % num_kv_heads != 0) return 1;
  if (num_heads / num_kv_heads > kDecodeMaxGroupSize) return 1;
  constexpr int kMinTokensPerSplit = 128;  // 2 tiles per warp: below that, merging costs more than it saves
  const int max_splits = std::clamp((max_context_len + kMinTokensPerSplit - 1) / kMinTokensPerSplit, 1, kMaxAttentionSplits);
  const cuda::DecodeSlots slots = cuda::decode_attention_slots(dtype, head_dim);
  const int64_t ctas = static_cast<int64_t>(num_seqs) * num_kv_heads;
  // Fewest splits whose 4-warp CTAs fill the device's resident slots in whole waves (>= 85% busy).
  // (One wave of long splits is fine: 16 x 16384 runs faster at 2 splits, one wave, than at 4;
  // an earlier kernel, whose ramp was slower, preferred two waves. bench/RESULTS.md, W4.)
  int narrow = 1;
  double best_efficiency = 0;
  for (int s = 1; s <= max_splits; ++s) {
    const int64_t total = ctas * s;
    const int64_t waves = (total + slots.narrow - 1) / slots.narrow;
    const double efficiency = static_cast<double>(total) / (static_cast<double>(waves) * slots.narrow);
    if (efficiency >= 0.85) {
      narrow = s;
      break;
    }
    if (efficiency > best_efficiency + 1e-9) {
      best_efficiency = efficiency;
      narrow = s;
    }
  }
  if (ctas * narrow <= slots.wide) return narrow;  // the launch takes 8-warp CTAs anyway
  // A short launch (splits of at most kShortSplitTokens keys) does better as one wave of 8-warp
  // CTAs than as more splits of 4-warp ones (bench/RESULTS.md, W4: 8 x 4096).
  constexpr int kShortSplitTokens = 2048;
  for (int s = 1; s <= max_splits && ctas * s <= slots.wide; ++s) {
    const double efficiency = static_cast<double>(ctas * s) / static_cast<double>(slots.wide);
    if (efficiency >= 0.85 && max_context_len <= static_cast<int64_t>(s) * kShortSplitTokens) return s;
  }
  return narrow;
}

}  // namespace pagedcore
