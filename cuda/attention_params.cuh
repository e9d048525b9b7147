// Parameters shared by the paged attention kernels (decode with its split merge, prefill) and their
// launchers. AttentionPlan (kernel_args.cpp) fills them once per step, and run() per layer.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "pagedcore/kernels.h"

namespace pagedcore::cuda {

// The kernels' parameters are the plan's (pagedcore/kernels.h): step, layer and derived fields.
using AttentionKernelParams = AttentionParams;
using pagedcore::kDecodeMaxGroupSize;

// Query rows (token x head pairs) per prefill CTA.
inline constexpr int kPrefillRowsPerCta = 64;

// dtype: the model's (q and out); p.cache_dtype says what the caches hold (dtype, or FP8 e4m3).
void launch_decode_attention(const AttentionKernelParams& p, DType dtype, int head_dim, cudaStream_t stream);
void launch_prefill_attention(const AttentionKernelParams& p, DType dtype, int head_dim, cudaStream_t stream);
// The FP8-cache instantiations (decode_attention_fp8.cu, prefill_attention_fp8.cu).
void launch_decode_attention_fp8(const AttentionKernelParams& p, DType dtype, int head_dim, cudaStream_t stream);
void launch_prefill_attention_fp8(const AttentionKernelParams& p, DType dtype, int head_dim, cudaStream_t stream);
// Decode CTAs resident on the current device at once for launches over blocks of 8+ tokens: the
// narrow variant (4 warps, fewer where shared memory is small), and the 8-warp one that a launch
// takes when its whole grid fits in one wave of those (wide = 0: none fits this device).
struct DecodeSlots {
  int64_t narrow;
  int64_t wide;
};
// cache_dtype: what the caches hold (the model's 16-bit dtype, or FP8 e4m3).
DecodeSlots decode_attention_slots(DType cache_dtype, int head_dim);
DecodeSlots decode_attention_slots_fp8(int head_dim);
// Whether decode launches of this shape take the Hopper path (bulk copies) on the current device.
bool decode_attention_uses_bulk_copies(DType dtype, int head_dim, int block_size_log2);

}  // namespace pagedcore::cuda
