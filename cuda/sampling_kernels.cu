// The fused sampling pass on CUDA (pagedcore/sampling.h): one block per row reads the row once,
// keeping a running logsumexp of the raw logits and the best noisy score with its id.
#include <cuda_runtime.h>

#include <cmath>

#include "cuda_check.cuh"
#include "pagedcore/philox.h"
#include "pagedcore/sampling.h"

namespace pagedcore {
namespace {

constexpr int kThreads = 1024;

struct Best {
  float score;
  int id;
};

struct LogSumExp {
  float max;
  float sum;  // of exp(x - max)
};

__device__ __forceinline__ Best better(Best a, Best b) {
  return (b.score > a.score || (b.score == a.score && b.id < a.id)) ? b : a;
}

__device__ __forceinline__ LogSumExp merge(LogSumExp a, LogSumExp b) {
  if (a.max == -INFINITY) return b;
  if (b.max == -INFINITY) return a;
  const float m = fmaxf(a.max, b.max);
  return {m, a.sum * __expf(a.max - m) + b.sum * __expf(b.max - m)};
}

__device__ __forceinline__ void add(LogSumExp& acc, float x) {
  if (x == -INFINITY) return;
  if (x > acc.max) {
    acc.sum = acc.sum * __expf(acc.max - x) + 1.0f;  // exp(-inf) = 0 the first time
    acc.max = x;
  } else {
    acc.sum += __expf(x - acc.max);
  }
}

__global__ void __launch_bounds__(kThreads)
    sample_tokens_kernel(int vocab_size, const float* __restrict__ scores, int64_t scores_stride,
                         const float* __restrict__ raw, int64_t raw_stride, const float* __restrict__ inv_temperature,
                         const int64_t* __restrict__ noise, const int32_t* __restrict__ allowed,
                         int64_t allowed_stride, const int32_t* __restrict__ allowed_rows,
                         int64_t* __restrict__ token_ids, float* __restrict__ logprobs) {
  const int r = blockIdx.x;
  const float* row_scores = scores + r * scores_stride;
  const float* row_raw = raw + r * raw_stride;
  const bool same = row_scores == row_raw;
  const float scale = inv_temperature[r];
  const uint64_t key = static_cast<uint64_t>(noise[3 * r]);
  const uint32_t salt = static_cast<uint32_t>(noise[3 * r + 1]);
  const uint64_t offset = static_cast<uint64_t>(noise[3 * r + 2]);
  const int32_t* mask = allowed != nullptr && allowed_rows[r] >= 0 ? allowed + allowed_rows[r] * allowed_stride : nullptr;
  Best best{-INFINITY, 0x7fffffff};
  LogSumExp lse{-INFINITY, 0.0f};
  for (int group = threadIdx.x; group * 4 < vocab_size; group += kThreads) {
    Philox4 bits{};
    if (scale != 0.0f) {
      bits = philox4x32_10(static_cast<uint32_t>(group), salt, static_cast<uint32_t>(offset),
                           static_cast<uint32_t>(offset >> 32), static_cast<uint32_t>(key),
                           static_cast<uint32_t>(key >> 32));
    }
#pragma unroll
    for (int lane = 0; lane < 4; ++lane) {
      const int v = group * 4 + lane;
      if (v >= vocab_size) break;
      const float s = row_scores[v];
      add(lse, same ? s : row_raw[v]);
      if (mask != nullptr && !((static_cast<uint32_t>(mask[v >> 5]) >> (v & 31)) & 1u)) continue;
      // __fmul_rn: no fused multiply-add, so the score rounds as the CPU's does.
      const float score = scale != 0.0f ? __fmul_rn(s, scale) - logf(-logf(philox_uniform(bits.x[lane]))) : s;
      best = better(best, {score, v});
    }
  }
  for (int delta = 16; delta > 0; delta /= 2) {
    const Best other{__shfl_xor_sync(0xffffffffu, best.score, delta), __shfl_xor_sync(0xffffffffu, best.id, delta)};
    best = better(best, other);
    const LogSumExp more{__shfl_xor_sync(0xffffffffu, lse.max, delta), __shfl_xor_sync(0xffffffffu, lse.sum, delta)};
    lse = merge(lse, more);
  }
  __shared__ Best warp_best[kThreads / 32];
  __shared__ LogSumExp warp_lse[kThreads / 32];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) warp_best[warp] = best, warp_lse[warp] = lse;
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int w = 1; w < kThreads / 32; ++w) {
      best = better(best, warp_best[w]);
      lse = merge(lse, warp_lse[w]);
    }
    const int id = best.id == 0x7fffffff ? 0 : best.id;  // every score -inf: id 0, as torch.argmax
    token_ids[r] = id;
    logprobs[r] = row_raw[id] - (lse.max + logf(lse.sum));
  }
}

}  // namespace

void sample_tokens_cuda(const SampleTokensArgs& a, cudaStream_t stream) {
  check_sample_tokens_args(a);
  if (a.num_rows == 0) return;
  sample_tokens_kernel<<<a.num_rows, kThreads, 0, stream>>>(a.vocab_size, a.scores, a.scores_stride, a.raw,
                                                             a.raw_stride, a.inv_temperature, a.noise, a.allowed,
                                                             a.allowed_stride, a.allowed_rows, a.token_ids,
                                                             a.logprobs);
  PAGEDCORE_CUDA_CHECK(cudaGetLastError());
}

}  // namespace pagedcore
