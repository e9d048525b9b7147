// Merge of partial online-softmax results in the log2 domain. Decode attention merges twice with it:
// the CTA's warps (through shared memory) and the splits of a (sequence, KV head) (through the
// workspace). A part covers some keys of one query row: m_i, the max of its scaled scores
// (-INFINITY: no keys), l_i = sum exp2(s - m_i) and o_i = sum exp2(s - m_i) v (one thread's two
// adjacent output columns). The merge holds
//   m = max_i m_i,  l = sum_i l_i exp2(m_i - m),  o = sum_i o_i exp2(m_i - m);
// the row's output is o / l and its log-sum-exp m + log2(l).
#pragma once

#include <cuda_runtime.h>

#include <cmath>

namespace pagedcore::cuda {

struct SoftmaxMerge {
  float m = -INFINITY;
  float l = 0.f;
  float o0 = 0.f;  // column 2t
  float o1 = 0.f;  // column 2t + 1

  // Two passes, for kParts parts that can be read twice (shared memory): part i has m_i at
  // m_parts[i * stride], l_i at l_parts[i * stride] and o_i at o_parts + i * o_stride (2 floats,
  // 8-byte aligned).
  // Every part's max first, then every part at that max: one exp2 per part. A part with
  // m_i = -INFINITY must have l_i = 0 and o_i = 0 (it then adds nothing).
  template <int kParts>
  __device__ __forceinline__ void add_parts(const float* m_parts, const float* l_parts, const float* o_parts,
                                            int stride, int o_stride) {
#pragma unroll
    for (int i = 0; i < kParts; ++i) m = fmaxf(m, m_parts[i * stride]);
    if (m == -INFINITY) return;
#pragma unroll
    for (int i = 0; i < kParts; ++i) {
      const float scale = exp2f(m_parts[i * stride] - m);
      l += l_parts[i * stride] * scale;
      const float2 o_i = *reinterpret_cast<const float2*>(o_parts + i * o_stride);
      o0 += o_i.x * scale;
      o1 += o_i.y * scale;
    }
  }

  // One pass, for parts read once (each split's partial comes in one round of loads): the sums are
  // rescaled whenever the max moves. A normalized part (o_i divided by its l_i) enters as (its lse,
  // 1, o_i). Parts with m_i = -INFINITY are skipped.
  __device__ __forceinline__ void add(float m_i, float l_i, float2 o_i) {
    if (m_i == -INFINITY) return;
    const float new_max = fmaxf(m, m_i);
    const float rescale = exp2f(m - new_max);  // 0 until something was added
    const float w = exp2f(m_i - new_max);
    l = l * rescale + w * l_i;
    o0 = o0 * rescale + w * o_i.x;
    o1 = o1 * rescale + w * o_i.y;
    m = new_max;
  }

  // 1 / l, or 0 when no part had keys (o is 0 then).
  __device__ __forceinline__ float inv_sum() const { return l > 0.f ? 1.f / l : 0.f; }
  // The merged log-sum-exp (log2 domain); -INFINITY when no part had keys.
  __device__ __forceinline__ float lse() const { return l > 0.f ? m + log2f(l) : -INFINITY; }
};

}  // namespace pagedcore::cuda
