// Kernel API of the dense per-layer operations that surround attention, each fused into one pass
// so that a decoder layer launches a handful of kernels instead of dozens of elementwise ones:
//   add_rms_norm      residual add + RMSNorm (+ weight), the two norms of every layer and the final one
//   silu_and_mul      the gated MLP's activation: silu(gate) * up
//   qk_norm_rope      optional per-head RMSNorm of q and k (Qwen3) + rotary embedding, in place
//
// Rounding follows HF transformers' module order in the element type (a norm's float result is
// rounded to the element type before the weight multiplies it; silu's result before `* up`), so
// a fused layer differs from the unfused torch ops only in the order of the float reductions.
// Pointers, sizes and strides (in elements) as in pagedcore/kernels.h; CUDA entry points take a stream.
#pragma once

#include <cstdint>

#include "pagedcore/kernels.h"

namespace pagedcore {

// ---- add_rms_norm ---------------------------------------------------------------------------------
// With a residual: residual = x + residual (rounded to the element type), then
// out = weight * round(residual * rsqrt(mean(residual^2) + eps)). Without: the same over x.
// out may alias x (in place); residual must not alias x or out.
struct AddRMSNormArgs {
  DType dtype;
  int num_tokens;
  int hidden_size;
  const void* x;           // [num_tokens, hidden_size], rows x_stride_token apart, last dim contiguous
  int64_t x_stride_token;
  void* residual;          // [num_tokens, hidden_size] contiguous, updated in place; nullptr = no add
  const void* weight;      // [hidden_size]
  void* out;               // [num_tokens, hidden_size] contiguous
  float eps;
};

// ---- silu_and_mul ---------------------------------------------------------------------------------
// out[t, i] = round(round(silu(gate[t, i])) * up[t, i]) where gate = x[t, :intermediate],
// up = x[t, intermediate:].
struct SiluAndMulArgs {
  DType dtype;
  int num_tokens;
  int intermediate_size;
  const void* x;           // [num_tokens, 2 * intermediate_size], rows x_stride_token apart
  int64_t x_stride_token;
  void* out;               // [num_tokens, intermediate_size] contiguous
};

// ---- qk_norm_rope ---------------------------------------------------------------------------------
// In place on q and k (typically strided views of one fused qkv projection): for every head row,
// first (when the norm weight is given) row = round(norm_weight * round(row * rsqrt(mean(row^2) + eps))),
// then the rotary embedding in the GPT-NeoX / HF layout (halves i and i + head_dim / 2 rotate as a
// pair): (a, b) -> (a cos - b sin, b cos + a sin), computed in float from the rounded row.
struct QKNormRopeArgs {
  DType dtype;
  int num_tokens;
  int num_heads;           // query heads
  int num_kv_heads;        // key heads
  int head_dim;            // even, <= kMaxRopeHeadDim
  void* q;                 // [num_tokens, num_heads, head_dim], last dim contiguous
  int64_t q_stride_token;
  int64_t q_stride_head;
  void* k;                 // [num_tokens, num_kv_heads, head_dim], last dim contiguous
  int64_t k_stride_token;
  int64_t k_stride_head;
  const int32_t* positions;  // [num_tokens], each in [0, max_position)
  const float* cos;        // [max_position, rope_stride]: cos of pair i's angle at [pos, i], i < head_dim / 2
  const float* sin;        // [max_position, rope_stride], as cos
  int64_t rope_stride;     // elements between positions of cos / sin (>= head_dim / 2)
  int64_t max_position;    // rows of cos / sin (CPU checks positions against it)
  const void* q_norm_weight;  // [head_dim] or nullptr (no q norm)
  const void* k_norm_weight;  // [head_dim] or nullptr (no k norm)
  float eps;
};

inline constexpr int kMaxRopeHeadDim = 512;

// Throw std::invalid_argument naming the limit. Shared by CPU and CUDA.
void check_add_rms_norm_args(const AddRMSNormArgs& args);
void check_silu_and_mul_args(const SiluAndMulArgs& args);
void check_qk_norm_rope_args(const QKNormRopeArgs& args);

void add_rms_norm_cpu(const AddRMSNormArgs& args);
void silu_and_mul_cpu(const SiluAndMulArgs& args);
void qk_norm_rope_cpu(const QKNormRopeArgs& args);

void add_rms_norm_cuda(const AddRMSNormArgs& args, cudaStream_t stream);
void silu_and_mul_cuda(const SiluAndMulArgs& args, cudaStream_t stream);
void qk_norm_rope_cuda(const QKNormRopeArgs& args, cudaStream_t stream);

}  // namespace pagedcore
