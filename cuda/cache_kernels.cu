// CUDA cache operations: write_kv_cache (scatter new K/V rows into their slots; into an FP8 cache
// each value divided by its scale and rounded to e4m3), copy_blocks (copy-on-write, every cache
// array in one launch) and swap_blocks (device <-> pinned host).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <stdexcept>
#include <string>
#include <tuple>

#include "cuda_check.cuh"
#include "pagedcore/kernels.h"
#include "pagedcore/kv_layout.h"
#include "pagedcore/supported.h"
#include "pagedcore/types.h"

namespace pagedcore {
namespace {

// Grid: num_tokens CTAs; each thread moves 16-byte chunks of (head, chunk) pairs of K and V, each
// to its position in cache order (pagedcore/kv_layout.h).
// k, v: [num_tokens, num_kv_heads, head_dim] strided; caches [num_blocks, num_kv_heads, block_size, head_dim].
__global__ void write_kv_cache_kernel(const char* __restrict__ k, const char* __restrict__ v,
                                      char* __restrict__ k_cache, char* __restrict__ v_cache,
                                      const int32_t* __restrict__ slot_mapping, int64_t k_stride_token,
                                      int64_t k_stride_head, int64_t v_stride_token, int64_t v_stride_head,
                                      int num_kv_heads, int head_dim, int block_size, int elem_bytes) {
  const int token = blockIdx.x;
  const int32_t slot = slot_mapping[token];
  if (slot == kPaddingSlot) return;
  const int64_t block = slot / block_size;
  const int64_t offset = slot % block_size;
  const int chunks_per_head = head_dim * elem_bytes / 16;
  for (int c = threadIdx.x; c < num_kv_heads * chunks_per_head; c += blockDim.x) {
    const int head = c / chunks_per_head;
    const int chunk = c % chunks_per_head;
    const int64_t dst = (((block * num_kv_heads + head) * block_size + offset) * head_dim) * elem_bytes +
                        kv_chunk_position(static_cast<int>(offset), chunk, chunks_per_head) * 16;
    const uint4 kv = *reinterpret_cast<const uint4*>(k + (token * k_stride_token + head * k_stride_head) * elem_bytes + chunk * 16);
    const uint4 vv = *reinterpret_cast<const uint4*>(v + (token * v_stride_token + head * v_stride_head) * elem_bytes + chunk * 16);
    *reinterpret_cast<uint4*>(k_cache + dst) = kv;
    *reinterpret_cast<uint4*>(v_cache + dst) = vv;
  }
}

__device__ __forceinline__ float2 to_float2(uint32_t word, __half) {
  return __half22float2(*reinterpret_cast<const __half2*>(&word));
}
__device__ __forceinline__ float2 to_float2(uint32_t word, __nv_bfloat16) {
  return __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&word));
}

// Eight T values (16 bytes) -> eight e4m3 bytes of x / scale: x / scale rounded to float (as torch
// divides), then to e4m3, nearest even, saturated to +-448; NaN stays NaN.
template <typename T>
__device__ __forceinline__ uint2 quantize8(uint4 values, float scale) {
  const uint32_t words[4] = {values.x, values.y, values.z, values.w};
  uint32_t out[2] = {0, 0};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 x = to_float2(words[i], T{});
    const float2 scaled = make_float2(__fdiv_rn(x.x, scale), __fdiv_rn(x.y, scale));
    const uint32_t pair = __nv_cvt_float2_to_fp8x2(scaled, __NV_SATFINITE, __NV_E4M3);
    out[i / 2] |= pair << (16 * (i % 2));
  }
  return make_uint2(out[0], out[1]);
}

// Grid: num_tokens CTAs; each thread quantizes 8-value pieces of (head, piece) pairs of K and V
// into an FP8 cache, each to its place in the FP8 cache order (kv_fp8_chunk_position).
template <typename T>
__global__ void write_fp8_kv_cache_kernel(const T* __restrict__ k, const T* __restrict__ v,
                                          uint8_t* __restrict__ k_cache, uint8_t* __restrict__ v_cache,
                                          const int32_t* __restrict__ slot_mapping, int64_t k_stride_token,
                                          int64_t k_stride_head, int64_t v_stride_token, int64_t v_stride_head,
                                          int num_kv_heads, int head_dim, int block_size, float k_scale, float v_scale) {
  const int token = blockIdx.x;
  const int32_t slot = slot_mapping[token];
  if (slot == kPaddingSlot) return;
  const int64_t block = slot / block_size;
  const int64_t offset = slot % block_size;
  const int pieces_per_head = head_dim / 8;  // two per 16-byte chunk of the cache row
  for (int c = threadIdx.x; c < num_kv_heads * pieces_per_head; c += blockDim.x) {
    const int head = c / pieces_per_head;
    const int piece = c % pieces_per_head;
    const int chunk = kv_fp8_chunk_position(static_cast<int>(offset), piece / 2, head_dim / 16);
    const int64_t dst = ((block * num_kv_heads + head) * block_size + offset) * head_dim + chunk * 16 + piece % 2 * 8;
    const uint4 kx = *reinterpret_cast<const uint4*>(k + token * k_stride_token + head * k_stride_head + piece * 8);
    const uint4 vx = *reinterpret_cast<const uint4*>(v + token * v_stride_token + head * v_stride_head + piece * 8);
    *reinterpret_cast<uint2*>(k_cache + dst) = quantize8<T>(kx, k_scale);
    *reinterpret_cast<uint2*>(v_cache + dst) = quantize8<T>(vx, v_scale);
  }
}

// Grid (num_pairs, num_caches); caches: [num_caches] base pointers, pairs: [num_pairs, 2].
__global__ void copy_blocks_kernel(void* const* __restrict__ caches, const int32_t* __restrict__ pairs,
                                   int64_t block_chunks) {
  char* base = static_cast<char*>(caches[blockIdx.y]);
  const int64_t src = pairs[2 * blockIdx.x] * block_chunks;
  const int64_t dst = pairs[2 * blockIdx.x + 1] * block_chunks;
  uint4* chunks = reinterpret_cast<uint4*>(base);
  for (int64_t i = threadIdx.x; i < block_chunks; i += blockDim.x) chunks[dst + i] = chunks[src + i];
}

}  // namespace

void write_kv_cache_cuda(const WriteKVCacheArgs& a, cudaStream_t stream) {
  check_write_kv_cache_args(a);
  check_cuda_dtype(a.dtype, "write_kv_cache");  // the attention kernels read no other dtype
  check_cache_dtype(a.dtype, a.cache_dtype, "write_kv_cache");
  const int elem = dtype_bytes(a.dtype);
  const int vec = 16 / elem;
  for (const auto& [ptr, st, sh, name] :
       {std::tuple{a.k, a.k_stride_token, a.k_stride_head, "k"}, std::tuple{a.v, a.v_stride_token, a.v_stride_head, "v"}}) {
    if (reinterpret_cast<uintptr_t>(ptr) % 16 != 0 || st % vec != 0 || sh % vec != 0) {
      throw std::invalid_argument(std::string("write_kv_cache: ") + name +
                                  " must be 16-byte aligned with strides that are multiples of 16 bytes");
    }
  }
  if (a.num_tokens == 0) return;
  if (a.cache_dtype == DType::kFloat8E4M3) {
    const int threads = std::min(256, std::max(32, a.num_kv_heads * a.head_dim / 8));
    auto launch = [&](auto type_tag) {
      using T = decltype(type_tag);
      write_fp8_kv_cache_kernel<T><<<a.num_tokens, threads, 0, stream>>>(
          static_cast<const T*>(a.k), static_cast<const T*>(a.v), static_cast<uint8_t*>(a.k_cache),
          static_cast<uint8_t*>(a.v_cache), a.slot_mapping, a.k_stride_token, a.k_stride_head, a.v_stride_token,
          a.v_stride_head, a.num_kv_heads, a.head_dim, a.block_size, a.k_scale, a.v_scale);
    };
    if (a.dtype == DType::kFloat16) launch(__half{});
    else launch(__nv_bfloat16{});
    PAGEDCORE_CUDA_CHECK_LAUNCH();
    return;
  }
  const int threads = std::min(256, std::max(32, a.num_kv_heads * a.head_dim * elem / 16));
  write_kv_cache_kernel<<<a.num_tokens, threads, 0, stream>>>(
      static_cast<const char*>(a.k), static_cast<const char*>(a.v), static_cast<char*>(a.k_cache),
      static_cast<char*>(a.v_cache), a.slot_mapping, a.k_stride_token, a.k_stride_head, a.v_stride_token,
      a.v_stride_head, a.num_kv_heads, a.head_dim, a.block_size, elem);
  PAGEDCORE_CUDA_CHECK_LAUNCH();
}

void copy_blocks_cuda(void* const* caches, int num_caches, int64_t block_bytes, const int32_t* pairs, int num_pairs,
                      cudaStream_t stream) {
  if (block_bytes <= 0 || block_bytes % 16 != 0) {
    throw std::invalid_argument("copy_blocks: block_bytes must be a positive multiple of 16, got " +
                                std::to_string(block_bytes));
  }
  if (num_pairs == 0 || num_caches == 0) return;
  if (num_caches > 65535) throw std::invalid_argument("copy_blocks: at most 65535 cache arrays per call");
  copy_blocks_kernel<<<dim3(num_pairs, num_caches), 256, 0, stream>>>(caches, pairs, block_bytes / 16);
  PAGEDCORE_CUDA_CHECK_LAUNCH();
}

void swap_blocks_cuda(void* const* src_caches, void* const* dst_caches, int num_caches, int64_t block_bytes,
                      const int32_t* pairs, int num_pairs, cudaStream_t stream) {
  for (int c = 0; c < num_caches; ++c) {
    for (int p = 0; p < num_pairs; ++p) {
      const char* src = static_cast<const char*>(src_caches[c]) + pairs[2 * p] * block_bytes;
      char* dst = static_cast<char*>(dst_caches[c]) + pairs[2 * p + 1] * block_bytes;
      PAGEDCORE_CUDA_CHECK(cudaMemcpyAsync(dst, src, block_bytes, cudaMemcpyDefault, stream));
    }
  }
}

}  // namespace pagedcore
