// Prefill / chunked-prefill paged attention on tensor cores (flash-attention style).
//
// A sequence's query rows are its (token, head-in-group) pairs for one KV head, token-major:
// row R = token_offset * group_size + head. CTA = 64 rows of one sequence and one KV head, 4 warps
// of 16 rows. The CTA streams the sequence's keys in kBlockN-token tiles through a two-stage
// cp.async pipeline shared by all warps (each K/V tile is read once per CTA), and each warp runs
// attend_chunk16 over the tile's 16-key chunks with its own causal limits, skipping chunks that
// lie wholly past its rows' positions.
//
// Grid x enumerates tiles without a host-side prefix sum: sequence i owns tile indices
// base_i .. base_i + ceil(rows_i / 64) - 1 with base_i = floor(query_start_loc[i] * G / 64) + i
// (bases grow by at least the tile count), so the grid is floor(num_tokens * G / 64) + num_seqs
// CTAs and each CTA finds its sequence by binary search; CTAs past a sequence's rows exit.
//
// FP8 caches (C = uint8_t): the pipeline stages byte tiles (rows in logical order), and the CTA
// converts each into one padded K and V tile of the model's dtype before its warps use it (once
// per CTA: its 4 warps all read every tile, which would convert it 4 times in registers, the way
// the decode kernel does with its one warp per tile); K's scale multiplies the scores and V's the
// output. prefill_attention.cu instantiates the kernel for
// caches of the model's dtype, prefill_attention_fp8.cu for FP8 caches.
#pragma once

#include <stdexcept>
#include <string>
#include <type_traits>

#include "attention_params.cuh"
#include "attention_warp.cuh"
#include "cuda_check.cuh"
#include "device_info.cuh"
#include "dispatch.cuh"

namespace pagedcore::cuda {
namespace {

constexpr int kPrefillWarps = kPrefillRowsPerCta / 16;
constexpr int kPrefillThreads = kPrefillWarps * 32;

// Keys per K/V tile: 32 above head size 128, so that the CTA's shared memory (query tile + two
// stages of K and V) fits the 99 KiB of 8.6 / 8.9 parts at every head size.
template <int D>
inline constexpr int kBlockN = D > 128 ? 32 : 64;

// q [64][pitch] + 2 stages x (K, V) [kBlockN][pitch]; FP8 caches: the stages hold [kBlockN][D] bytes,
// plus one converted (K, V) pair [kBlockN][pitch] of T.
template <typename T, typename C, int D>
constexpr size_t prefill_staged_bytes() {
  return kFp8Cache<C> ? static_cast<size_t>(2 * 2 * kBlockN<D>) * D
                                : static_cast<size_t>(2 * 2 * kBlockN<D>) * kRowPitch<D> * sizeof(T);
}
template <typename T, typename C, int D>
constexpr size_t prefill_smem_bytes() {
  const size_t converted = kFp8Cache<C> ? static_cast<size_t>(2 * kBlockN<D>) * kRowPitch<D> * sizeof(T) : 0;
  return static_cast<size_t>(kPrefillRowsPerCta) * kRowPitch<D> * sizeof(T) + prefill_staged_bytes<T, C, D>() + converted;
}

__device__ __forceinline__ int tile_base(const AttentionKernelParams& p, int seq) {
  return static_cast<int>(static_cast<int64_t>(p.query_start_loc[seq]) * p.group_size / kPrefillRowsPerCta) + seq;
}

template <typename T, typename C, int D>
__global__ void __launch_bounds__(kPrefillThreads) prefill_attention_kernel(const AttentionKernelParams p) {
  constexpr bool kFp8 = kFp8Cache<C>;
  constexpr int kPitch = kRowPitch<D>;
  constexpr int kN = kBlockN<D>;
  constexpr int kChunks = D / 8;
  const int kv_head = blockIdx.y;
  const int tile = blockIdx.x;

  // Largest seq with tile_base(seq) <= tile.
  int lo = 0, hi = p.num_seqs - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (tile_base(p, mid) <= tile) lo = mid;
    else hi = mid - 1;
  }
  const int seq = lo;
  const int q_start = p.query_start_loc[seq];
  const int q_len = p.query_start_loc[seq + 1] - q_start;
  if (q_len == 1 && !p.prefill_takes_decode_rows) return;
  const int G = p.group_size;
  const int num_rows = q_len * G;
  const int row0 = (tile - tile_base(p, seq)) * kPrefillRowsPerCta;
  if (row0 >= num_rows) return;
  const int context_len = p.context_lens[seq];
  const int past = context_len - q_len;  // keys before this step's first query token

  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* sq = reinterpret_cast<T*>(smem_raw);                               // [64][pitch]
  C* skv = reinterpret_cast<C*>(sq + kPrefillRowsPerCta * kPitch);       // [2 stages][K|V][kN][pitch or D]
  T* converted = reinterpret_cast<T*>(smem_raw + static_cast<size_t>(kPrefillRowsPerCta) * kPitch * sizeof(T) +
                                      prefill_staged_bytes<T, C, D>());  // FP8: [K|V][kN][pitch]
  constexpr int kStagedRow = kFp8 ? D : kPitch;                          // C elements per staged row

  for (int c = threadIdx.x; c < kPrefillRowsPerCta * kChunks; c += kPrefillThreads) {
    const int r = c / kChunks, chunk = c % kChunks;
    const int row = min(row0 + r, num_rows - 1);
    const T* src = static_cast<const T*>(p.q) + (q_start + row / G) * p.q_stride_token +
                   (kv_head * G + row % G) * p.q_stride_head + chunk * 8;
    cp_async16(tile_chunk<T, D>(sq, r, chunk), src, row0 + r < num_rows);
  }

  const int last_row = min(row0 + kPrefillRowsPerCta, num_rows) - 1;
  const int kv_len = past + last_row / G + 1;  // keys the CTA's last row attends to
  const int num_kv_tiles = (kv_len + kN - 1) / kN;
  const C* k_cache = static_cast<const C*>(p.k_cache);
  const C* v_cache = static_cast<const C*>(p.v_cache);
  const int32_t* block_table = p.block_tables + seq * p.block_tables_stride;
  auto load_tile = [&](int stage, int kv_tile) {
    C* sk = skv + stage * 2 * kN * kStagedRow;
    C* sv = sk + kN * kStagedRow;
    if constexpr (kFp8) {
      load_fp8_kv_tile<D, kN, kPrefillThreads, D>(sk, sv, k_cache, v_cache, block_table, kv_tile * kN, kv_len,
                                               p.block_size_log2, p.num_kv_heads, kv_head, threadIdx.x);
    } else {
      load_kv_tile<T, D, kN, kPrefillThreads>(sk, sv, k_cache, v_cache, block_table, kv_tile * kN, kv_len,
                                              p.block_size_log2, p.num_kv_heads, kv_head, threadIdx.x);
    }
  };

  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const int g = lane / 4;
  const int warp_row0 = row0 + warp * 16;
  auto row_limit = [&](int row) { return row < num_rows ? past + row / G : -1; };
  const int limit_lo = row_limit(warp_row0 + g);
  const int limit_hi = row_limit(warp_row0 + g + 8);
  const int warp_limit = row_limit(min(warp_row0 + 15, num_rows - 1));  // rows grow in position
  const T* warp_q = sq + warp * 16 * kPitch;

  const float score_scale_log2 = kFp8 ? p.scale_log2 * p.k_scale : p.scale_log2;  // K's scale (FP8)
  const float out_scale = kFp8 ? p.v_scale : 1.f;                                 // V's scale (FP8)
  WarpAttentionState<D> st;
  st.init();
  load_tile(0, 0);
  cp_async_commit();  // query rows + first KV tile
  for (int j = 0; j < num_kv_tiles; ++j) {
    if (j + 1 < num_kv_tiles) {
      load_tile((j + 1) & 1, j + 1);
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    const T* sk;
    const T* sv;
    if constexpr (kFp8) {  // the stage's bytes -> the converted tiles (rows past kv_len are zero bytes)
      const uint8_t* staged = skv + (j & 1) * 2 * kN * kStagedRow;
      convert_fp8_tile<T, D, kN, kPrefillThreads>(staged, converted, kN, threadIdx.x);
      convert_fp8_tile<T, D, kN, kPrefillThreads>(staged + kN * kStagedRow, converted + kN * kPitch, kN, threadIdx.x);
      __syncthreads();
      sk = converted;
      sv = converted + kN * kPitch;
    } else {
      sk = skv + (j & 1) * 2 * kN * kPitch;
      sv = sk + kN * kPitch;
    }
#pragma unroll
    for (int c = 0; c < kN / 16; ++c) {
      const int token0 = j * kN + c * 16;
      if (warp_row0 < num_rows && token0 <= warp_limit) {
        attend_chunk16<T, D>(warp_q, nullptr, sk + c * 16 * kPitch, sv + c * 16 * kPitch, token0, limit_lo, limit_hi,
                             score_scale_log2, st, lane);
      }
    }
    __syncthreads();  // the stage is refilled next iteration
  }
  st.reduce_row_sums();

  const int t = lane % 4;
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int row = warp_row0 + g + half * 8;
    if (row >= num_rows) continue;
    const float inv = st.l[half] > 0.f ? out_scale / st.l[half] : 0.f;
    T* dst = static_cast<T*>(p.out) + (q_start + row / G) * p.out_stride_token +
             (kv_head * G + row % G) * p.out_stride_head + 2 * t;
#pragma unroll
    for (int j = 0; j < D / 8; ++j) {
      *reinterpret_cast<uint32_t*>(dst + 8 * j) =
          MmaTraits<T>::pack(st.o[j][2 * half] * inv, st.o[j][2 * half + 1] * inv);
    }
  }
}

// The kernel with its shared-memory limit raised on the current device; a device whose CTAs
// cannot hold its shared memory gets a clear error instead of a failed launch.
template <typename T, typename C, int D>
auto prepared_prefill_kernel() {
  static KernelFitCache cache;
  auto kernel = prefill_attention_kernel<T, C, D>;
  if (!cache.get(reinterpret_cast<const void*>(kernel), prefill_smem_bytes<T, C, D>(), kPrefillThreads).fits) {
    const DeviceInfo& info = device_info(current_device());
    throw std::runtime_error("prefill attention at head size " + std::to_string(D) + " needs " +
                             std::to_string(prefill_smem_bytes<T, C, D>()) + " bytes of shared memory per CTA; " +
                             info.name + " offers " + std::to_string(info.max_smem_per_block));
  }
  return kernel;
}

// Launches the prefill kernel over a cache of the model's dtype, or of FP8 bytes (kFp8).
template <bool kFp8>
void launch_prefill(const AttentionKernelParams& p, DType dtype, int head_dim, cudaStream_t stream) {
  const int64_t num_tiles =
      static_cast<int64_t>(p.num_tokens) * p.group_size / kPrefillRowsPerCta + p.num_seqs;
  if (num_tiles > 0x7fffffff) throw std::invalid_argument("paged_attention: too many query rows for one launch");
  dispatch_dtype_head_dim(dtype, head_dim, [&](auto type_tag, auto head) {
    using T = decltype(type_tag);
    using Cache = std::conditional_t<kFp8, uint8_t, T>;
    constexpr int D = decltype(head)::value;
    const dim3 grid(static_cast<unsigned>(num_tiles), p.num_kv_heads);
    prepared_prefill_kernel<T, Cache, D>()<<<grid, kPrefillThreads, prefill_smem_bytes<T, Cache, D>(), stream>>>(p);
    PAGEDCORE_CUDA_CHECK_LAUNCH();
    return 0;
  });
}

}  // namespace
}  // namespace pagedcore::cuda
