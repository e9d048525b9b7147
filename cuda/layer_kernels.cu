// CUDA versions of the fused layer kernels (pagedcore/layer_kernels.h): float16 and bfloat16,
// computed in float. Rows whose size and pointers allow it move 16 bytes per thread access.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "cuda_check.cuh"
#include "pagedcore/layer_kernels.h"
#include "pagedcore/supported.h"

namespace pagedcore {
namespace {

__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T>
__device__ __forceinline__ T round_to(float x);
template <>
__device__ __forceinline__ __half round_to<__half>(float x) { return __float2half_rn(x); }
template <>
__device__ __forceinline__ __nv_bfloat16 round_to<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

template <typename T, int N>
struct alignas(sizeof(T) * N) Vec {
  T v[N];
};

// Sum over the CTA; every thread gets the result. scratch: [32] floats of shared memory.
__device__ __forceinline__ float block_sum(float value, float* scratch) {
  for (int offset = 16; offset > 0; offset >>= 1) value += __shfl_xor_sync(0xffffffffu, value, offset);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) scratch[warp] = value;
  __syncthreads();
  const int num_warps = blockDim.x / 32;
  value = lane < num_warps ? scratch[lane] : 0.0f;
  for (int offset = 16; offset > 0; offset >>= 1) value += __shfl_xor_sync(0xffffffffu, value, offset);
  return value;
}

// Grid: num_tokens CTAs, one row each; N elements per access. out may alias x (no __restrict__).
// x: [num_tokens, hidden] rows x_stride apart; residual, out: [num_tokens, hidden]; weight: [hidden].
template <typename T, int N>
__global__ void add_rms_norm_kernel(const T* x, int64_t x_stride, T* __restrict__ residual,
                                    const T* __restrict__ weight, T* out, int hidden, float eps) {
  __shared__ float scratch[32];
  using V = Vec<T, N>;
  const int64_t token = blockIdx.x;
  const V* x_row = reinterpret_cast<const V*>(x + token * x_stride);
  V* res_row = residual != nullptr ? reinterpret_cast<V*>(residual + token * hidden) : nullptr;
  const V* in_row = res_row != nullptr ? res_row : x_row;  // what is normalized
  const int num_vecs = hidden / N;
  float sum_squares = 0.0f;
  for (int i = threadIdx.x; i < num_vecs; i += blockDim.x) {
    V value = x_row[i];
    if (res_row != nullptr) {
      const V old = res_row[i];
#pragma unroll
      for (int j = 0; j < N; ++j) value.v[j] = round_to<T>(to_float(value.v[j]) + to_float(old.v[j]));
      res_row[i] = value;
    }
#pragma unroll
    for (int j = 0; j < N; ++j) sum_squares += to_float(value.v[j]) * to_float(value.v[j]);
  }
  const float inv_rms = rsqrtf(block_sum(sum_squares, scratch) / static_cast<float>(hidden) + eps);
  V* out_row = reinterpret_cast<V*>(out + token * hidden);
  const V* w = reinterpret_cast<const V*>(weight);
  for (int i = threadIdx.x; i < num_vecs; i += blockDim.x) {
    V value = in_row[i];  // this thread's own elements: written above, or x (which out may alias)
    const V scale = w[i];
#pragma unroll
    for (int j = 0; j < N; ++j) {
      const float normalized = to_float(round_to<T>(to_float(value.v[j]) * inv_rms));
      value.v[j] = round_to<T>(to_float(scale.v[j]) * normalized);
    }
    out_row[i] = value;
  }
}

// Grid (num_tokens, ceil(intermediate / N / blockDim)); x: [num_tokens, 2 * intermediate] rows
// x_stride apart; out: [num_tokens, intermediate].
template <typename T, int N>
__global__ void silu_and_mul_kernel(const T* __restrict__ x, int64_t x_stride, T* __restrict__ out,
                                    int intermediate) {
  using V = Vec<T, N>;
  const int64_t token = blockIdx.x;
  const int i = blockIdx.y * blockDim.x + threadIdx.x;
  if (i >= intermediate / N) return;
  const V gate = reinterpret_cast<const V*>(x + token * x_stride)[i];
  const V up = reinterpret_cast<const V*>(x + token * x_stride + intermediate)[i];
  V result;
#pragma unroll
  for (int j = 0; j < N; ++j) {
    const float g = to_float(gate.v[j]);
    const float activated = to_float(round_to<T>(g / (1.0f + expf(-g))));
    result.v[j] = round_to<T>(activated * to_float(up.v[j]));
  }
  reinterpret_cast<V*>(out + token * intermediate)[i] = result;
}

inline constexpr int kRopeWarps = 4;
inline constexpr int kMaxPairsPerLane = kMaxRopeHeadDim / 2 / 32;

// Grid (num_tokens, ceil((num_heads + num_kv_heads) / kRopeWarps)) CTAs of kRopeWarps warps; each
// warp takes one head row (q heads, then k heads), lane l holding pairs l, l + 32, ... in
// registers, so a decode batch still puts many independent rows in flight. In place on q and k.
template <typename T>
__global__ void __launch_bounds__(kRopeWarps * 32)
    qk_norm_rope_kernel(T* q, int64_t q_stride_token, int64_t q_stride_head, T* k, int64_t k_stride_token,
                        int64_t k_stride_head, const int32_t* __restrict__ positions, const float* __restrict__ cos,
                        const float* __restrict__ sin, int64_t rope_stride, const T* __restrict__ q_norm_weight,
                        const T* __restrict__ k_norm_weight, int num_heads, int num_kv_heads, int head_dim,
                        float eps) {
  const int64_t token = blockIdx.x;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int half = head_dim / 2;
  const float* cos_row = cos + positions[token] * rope_stride;
  const float* sin_row = sin + positions[token] * rope_stride;
  {
    const int head = blockIdx.y * kRopeWarps + warp;
    if (head >= num_heads + num_kv_heads) return;
    const bool is_q = head < num_heads;
    T* row = is_q ? q + token * q_stride_token + head * q_stride_head
                  : k + token * k_stride_token + (head - num_heads) * k_stride_head;
    const T* norm_weight = is_q ? q_norm_weight : k_norm_weight;
    float a[kMaxPairsPerLane], b[kMaxPairsPerLane];
    float sum_squares = 0.0f;
#pragma unroll
    for (int p = 0; p < kMaxPairsPerLane; ++p) {
      const int i = lane + 32 * p;
      a[p] = i < half ? to_float(row[i]) : 0.0f;
      b[p] = i < half ? to_float(row[i + half]) : 0.0f;
      sum_squares += a[p] * a[p] + b[p] * b[p];
    }
    if (norm_weight != nullptr) {
      for (int offset = 16; offset > 0; offset >>= 1) sum_squares += __shfl_xor_sync(0xffffffffu, sum_squares, offset);
      const float inv_rms = rsqrtf(sum_squares / static_cast<float>(head_dim) + eps);
#pragma unroll
      for (int p = 0; p < kMaxPairsPerLane; ++p) {
        const int i = lane + 32 * p;
        if (i >= half) continue;
        a[p] = to_float(round_to<T>(to_float(norm_weight[i]) * to_float(round_to<T>(a[p] * inv_rms))));
        b[p] = to_float(round_to<T>(to_float(norm_weight[i + half]) * to_float(round_to<T>(b[p] * inv_rms))));
      }
    }
#pragma unroll
    for (int p = 0; p < kMaxPairsPerLane; ++p) {
      const int i = lane + 32 * p;
      if (i >= half) continue;
      const float c = cos_row[i], s = sin_row[i];
      row[i] = round_to<T>(a[p] * c - b[p] * s);
      row[i + half] = round_to<T>(b[p] * c + a[p] * s);
    }
  }
}

// Calls fn(T{}) for the CUDA element type of `dtype`.
template <typename Fn>
void dispatch_cuda(DType dtype, const std::string& op, Fn&& fn) {
  check_cuda_dtype(dtype, op);
  static_assert(kSupportedCudaDTypes.size() == 2, "one case below per entry of kSupportedCudaDTypes");
  if (dtype == DType::kFloat16) fn(__half{});
  else fn(__nv_bfloat16{});
}

// 16-byte accesses need every row start 16-byte aligned.
bool rows_aligned(const void* base, int64_t stride_elements, int elem_bytes) {
  return reinterpret_cast<uintptr_t>(base) % 16 == 0 && (stride_elements * elem_bytes) % 16 == 0;
}

int threads_for(int num_vecs) { return std::clamp((num_vecs + 31) / 32 * 32, 32, 1024); }

}  // namespace

void add_rms_norm_cuda(const AddRMSNormArgs& a, cudaStream_t stream) {
  check_add_rms_norm_args(a);
  if (a.num_tokens == 0) return;
  dispatch_cuda(a.dtype, "add_rms_norm", [&](auto tag) {
    using T = decltype(tag);
    constexpr int kVec = 16 / sizeof(T);
    const T* x = static_cast<const T*>(a.x);
    T* residual = static_cast<T*>(a.residual);
    T* out = static_cast<T*>(a.out);
    const T* weight = static_cast<const T*>(a.weight);
    const bool vectorized = a.hidden_size % kVec == 0 && rows_aligned(x, a.x_stride_token, sizeof(T)) &&
                            rows_aligned(out, a.hidden_size, sizeof(T)) && rows_aligned(weight, 0, sizeof(T)) &&
                            (residual == nullptr || rows_aligned(residual, a.hidden_size, sizeof(T)));
    if (vectorized) {
      add_rms_norm_kernel<T, kVec><<<a.num_tokens, threads_for(a.hidden_size / kVec), 0, stream>>>(
          x, a.x_stride_token, residual, weight, out, a.hidden_size, a.eps);
    } else {
      add_rms_norm_kernel<T, 1><<<a.num_tokens, threads_for(a.hidden_size), 0, stream>>>(
          x, a.x_stride_token, residual, weight, out, a.hidden_size, a.eps);
    }
    PAGEDCORE_CUDA_CHECK_LAUNCH();
  });
}

void silu_and_mul_cuda(const SiluAndMulArgs& a, cudaStream_t stream) {
  check_silu_and_mul_args(a);
  if (a.num_tokens == 0) return;
  dispatch_cuda(a.dtype, "silu_and_mul", [&](auto tag) {
    using T = decltype(tag);
    constexpr int kVec = 16 / sizeof(T);
    constexpr int kThreads = 256;
    const T* x = static_cast<const T*>(a.x);
    T* out = static_cast<T*>(a.out);
    const bool vectorized = a.intermediate_size % kVec == 0 && rows_aligned(x, a.x_stride_token, sizeof(T)) &&
                            rows_aligned(out, a.intermediate_size, sizeof(T));
    const int vec = vectorized ? kVec : 1;
    const dim3 grid(a.num_tokens, (a.intermediate_size / vec + kThreads - 1) / kThreads);
    if (vectorized) {
      silu_and_mul_kernel<T, kVec><<<grid, kThreads, 0, stream>>>(x, a.x_stride_token, out, a.intermediate_size);
    } else {
      silu_and_mul_kernel<T, 1><<<grid, kThreads, 0, stream>>>(x, a.x_stride_token, out, a.intermediate_size);
    }
    PAGEDCORE_CUDA_CHECK_LAUNCH();
  });
}

void qk_norm_rope_cuda(const QKNormRopeArgs& a, cudaStream_t stream) {
  check_qk_norm_rope_args(a);
  if (a.num_tokens == 0) return;
  dispatch_cuda(a.dtype, "qk_norm_rope", [&](auto tag) {
    using T = decltype(tag);
    const dim3 grid(a.num_tokens, (a.num_heads + a.num_kv_heads + kRopeWarps - 1) / kRopeWarps);
    qk_norm_rope_kernel<T><<<grid, kRopeWarps * 32, 0, stream>>>(
        static_cast<T*>(a.q), a.q_stride_token, a.q_stride_head, static_cast<T*>(a.k), a.k_stride_token,
        a.k_stride_head, a.positions, a.cos, a.sin, a.rope_stride, static_cast<const T*>(a.q_norm_weight),
        static_cast<const T*>(a.k_norm_weight), a.num_heads, a.num_kv_heads, a.head_dim, a.eps);
    PAGEDCORE_CUDA_CHECK_LAUNCH();
  });
}

}  // namespace pagedcore
