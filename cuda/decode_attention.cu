// Decode paged attention (one query token per sequence) and the split-KV merge.
//
// CTA = (sequence, KV head, split), 4 warps. The CTA's query rows are the group_size query heads
// of that KV head (padded to one 16-row mma tile), so every K/V byte is read once for all of
// them. The split's key range is cut into 16-token tiles dealt round-robin to the warps; each warp
// streams its tiles through a private kStages-deep cp.async pipeline (16-byte copies, several
// tiles in flight) and runs tensor-core flash attention on them. The warps' partial softmax states
// are merged through shared memory; with several splits, the result goes to the workspace and
// split_merge_kernel combines the splits.
#include <algorithm>
#include <atomic>

#include "attention_params.cuh"
#include "attention_warp.cuh"
#include "cuda_check.cuh"
#include "dispatch.cuh"

namespace pagedcore::cuda {
namespace {

#ifndef PAGEDCORE_DECODE_WARPS
#define PAGEDCORE_DECODE_WARPS 4
#endif
#ifndef PAGEDCORE_DECODE_STAGES
#define PAGEDCORE_DECODE_STAGES 3
#endif
constexpr int kDecodeWarps = PAGEDCORE_DECODE_WARPS;
constexpr int kDecodeThreads = kDecodeWarps * 32;
constexpr int kTileTokens = 16;

// cp.async pipeline depth per warp (tiles in flight + the one being used).
template <int D>
inline constexpr int kDecodeStages = D >= 256 ? 2 : PAGEDCORE_DECODE_STAGES;
// Query fragments stay in registers for head sizes up to 128 (64 more registers at 256 would spill).
template <int D>
inline constexpr bool kDecodeQueryInRegisters = D <= 128;

template <typename T, int D>
constexpr size_t decode_smem_bytes() {
  // q tile [16][pitch] + per warp kStages x (K, V) tiles [16][pitch]
  return static_cast<size_t>(16 + kDecodeWarps * kDecodeStages<D> * 2 * kTileTokens) * kRowPitch<D> * sizeof(T);
}

template <typename T, int D>
__global__ void __launch_bounds__(kDecodeThreads) decode_attention_kernel(const AttentionKernelParams p) {
  constexpr int kPitch = kRowPitch<D>;
  constexpr int kStages = kDecodeStages<D>;
  constexpr int kChunks = D / 8;  // 16-byte chunks per row
  const int seq = blockIdx.x;
  const int kv_head = blockIdx.y;
  const int split = blockIdx.z;
  const int q_row = p.query_start_loc[seq];
  if (p.query_start_loc[seq + 1] - q_row != 1) return;  // prefill rows go to the prefill kernel

  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* sq = reinterpret_cast<T*>(smem_raw);  // [16][pitch]
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  T* warp_tiles = sq + 16 * kPitch + warp * kStages * 2 * kTileTokens * kPitch;  // [kStages][K|V][16][pitch]

  const int context_len = p.context_lens[seq];
  const int num_tiles = (context_len + kTileTokens - 1) / kTileTokens;
  const int tiles_per_split = (num_tiles + p.num_splits - 1) / p.num_splits;
  const int tile_begin = min(num_tiles, split * tiles_per_split);
  const int tile_end = min(num_tiles, tile_begin + tiles_per_split);
  const int G = p.group_size;

  // Query rows: heads kv_head * G .. + G - 1 of this token; rows >= G are zero.
  for (int c = threadIdx.x; c < 16 * kChunks; c += kDecodeThreads) {
    const int r = c / kChunks, chunk = c % kChunks;
    const T* src = static_cast<const T*>(p.q) + q_row * p.q_stride_token +
                   (kv_head * G + min(r, G - 1)) * p.q_stride_head + chunk * 8;
    cp_async16(tile_chunk<T, D>(sq, r, chunk), src, r < G);
  }
  cp_async_commit();

  const T* k_cache = static_cast<const T*>(p.k_cache);
  const T* v_cache = static_cast<const T*>(p.v_cache);
  const int32_t* block_table = p.block_tables + seq * p.block_tables_stride;
  auto load_tile = [&](int stage, int tile) {
    T* sk = warp_tiles + stage * 2 * kTileTokens * kPitch;
    T* sv = sk + kTileTokens * kPitch;
    load_kv_tile<T, D, kTileTokens, 32>(sk, sv, k_cache, v_cache, block_table, tile * kTileTokens, context_len,
                                        p.block_size_log2, p.num_kv_heads, kv_head, lane);
  };

  // This warp's tiles: tile_begin + warp, + kDecodeWarps, ...
  const int first = tile_begin + warp;
  const int num_local = first < tile_end ? (tile_end - first + kDecodeWarps - 1) / kDecodeWarps : 0;
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < num_local) load_tile(s, first + s * kDecodeWarps);
    cp_async_commit();
  }
  cp_async_wait<kStages - 1>();  // the query group (committed first) has landed
  __syncthreads();

  const int g = lane / 4;
  const int limit_lo = g < G ? context_len - 1 : -1;
  const int limit_hi = g + 8 < G ? context_len - 1 : -1;
  WarpAttentionState<D> st;
  st.init();
  QueryFragments<D> q_frags;
  if constexpr (kDecodeQueryInRegisters<D>) q_frags.load(sq, lane);
  const QueryFragments<D>* q_regs = kDecodeQueryInRegisters<D> ? &q_frags : nullptr;
  for (int i = 0; i < num_local; ++i) {
    const int next = i + kStages - 1;
    if (next < num_local) load_tile(next % kStages, first + next * kDecodeWarps);
    cp_async_commit();
    cp_async_wait<kStages - 1>();
    __syncwarp();
    const T* sk = warp_tiles + (i % kStages) * 2 * kTileTokens * kPitch;
    attend_chunk16<T, D>(sq, q_regs, sk, sk + kTileTokens * kPitch, (first + i * kDecodeWarps) * kTileTokens, limit_lo,
                         limit_hi, p.scale_log2, st, lane);
    __syncwarp();
  }
  cp_async_wait<0>();
  st.reduce_row_sums();
  __syncthreads();  // every warp is done with its tiles: reuse their space for the merge

  // Merge the warps: float o [warps][16][D], m [warps][16], l [warps][16].
  float* merge_o = reinterpret_cast<float*>(sq + 16 * kPitch);
  float* merge_m = merge_o + kDecodeWarps * 16 * D;
  float* merge_l = merge_m + kDecodeWarps * 16;
  {
    const int t = lane % 4;
    float* o_warp = merge_o + warp * 16 * D;
#pragma unroll
    for (int j = 0; j < D / 8; ++j) {
      *reinterpret_cast<float2*>(o_warp + g * D + 8 * j + 2 * t) = make_float2(st.o[j][0], st.o[j][1]);
      *reinterpret_cast<float2*>(o_warp + (g + 8) * D + 8 * j + 2 * t) = make_float2(st.o[j][2], st.o[j][3]);
    }
    if (t == 0) {
      merge_m[warp * 16 + g] = st.m[0];
      merge_m[warp * 16 + g + 8] = st.m[1];
      merge_l[warp * 16 + g] = st.l[0];
      merge_l[warp * 16 + g + 8] = st.l[1];
    }
  }
  __syncthreads();

  const int rows = min(G, 16);
  for (int idx = threadIdx.x; idx < rows * (D / 2); idx += kDecodeThreads) {
    const int r = idx / (D / 2);
    const int d = (idx % (D / 2)) * 2;
    float m_max = -INFINITY;
#pragma unroll
    for (int w = 0; w < kDecodeWarps; ++w) m_max = fmaxf(m_max, merge_m[w * 16 + r]);
    float l_sum = 0.f, o0 = 0.f, o1 = 0.f;
    if (m_max != -INFINITY) {
#pragma unroll
      for (int w = 0; w < kDecodeWarps; ++w) {
        const float scale = exp2f(merge_m[w * 16 + r] - m_max);
        l_sum += merge_l[w * 16 + r] * scale;
        const float2 o = *reinterpret_cast<const float2*>(merge_o + (w * 16 + r) * D + d);
        o0 += o.x * scale;
        o1 += o.y * scale;
      }
    }
    const float inv = l_sum > 0.f ? 1.f / l_sum : 0.f;
    const int head = kv_head * G + r;
    if (p.num_splits == 1) {
      T* dst = static_cast<T*>(p.out) + q_row * p.out_stride_token + head * p.out_stride_head + d;
      *reinterpret_cast<uint32_t*>(dst) = MmaTraits<T>::pack(o0 * inv, o1 * inv);
    } else {
      const int64_t row = (static_cast<int64_t>(split) * p.num_seqs + seq) * p.num_heads + head;
      *reinterpret_cast<float2*>(p.partial_out + row * D + d) = make_float2(o0 * inv, o1 * inv);
      if (d == 0) p.partial_lse[row] = l_sum > 0.f ? m_max + log2f(l_sum) : -INFINITY;
    }
  }
}

// Combines the splits of each decode row: out = sum_s w_s o_s / sum_s w_s, w_s = exp2(lse_s - max).
// Grid (num_seqs, num_heads), D / 2 threads.
template <typename T, int D>
__global__ void split_merge_kernel(const AttentionKernelParams p) {
  const int seq = blockIdx.x;
  const int head = blockIdx.y;
  const int q_row = p.query_start_loc[seq];
  if (p.query_start_loc[seq + 1] - q_row != 1) return;
  const int d = threadIdx.x * 2;
  const int64_t split_stride = static_cast<int64_t>(p.num_seqs) * p.num_heads;
  const int64_t row0 = static_cast<int64_t>(seq) * p.num_heads + head;
  float lse_max = -INFINITY;
  for (int s = 0; s < p.num_splits; ++s) lse_max = fmaxf(lse_max, p.partial_lse[row0 + s * split_stride]);
  float w_sum = 0.f, o0 = 0.f, o1 = 0.f;
  if (lse_max != -INFINITY) {
    for (int s = 0; s < p.num_splits; ++s) {
      const int64_t row = row0 + s * split_stride;
      const float w = exp2f(p.partial_lse[row] - lse_max);
      if (w == 0.f) continue;  // empty split: its outputs are zeros, never read garbage
      const float2 o = *reinterpret_cast<const float2*>(p.partial_out + row * D + d);
      w_sum += w;
      o0 += w * o.x;
      o1 += w * o.y;
    }
  }
  const float inv = w_sum > 0.f ? 1.f / w_sum : 0.f;
  T* dst = static_cast<T*>(p.out) + q_row * p.out_stride_token + head * p.out_stride_head + d;
  *reinterpret_cast<uint32_t*>(dst) = MmaTraits<T>::pack(o0 * inv, o1 * inv);
}

// cudaFuncSetAttribute once per kernel per device (bit i: device i done).
template <typename Kernel>
void raise_smem_limit(Kernel kernel, size_t bytes, std::atomic<uint64_t>& done_devices) {
  int device = 0;
  PAGEDCORE_CUDA_CHECK(cudaGetDevice(&device));
  const uint64_t bit = device < 64 ? (uint64_t{1} << device) : 0;
  if (bit && (done_devices.load() & bit)) return;
  PAGEDCORE_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
  done_devices.fetch_or(bit);
}

template <typename T, int D>
auto prepared_decode_kernel() {
  static std::atomic<uint64_t> done{0};
  auto kernel = decode_attention_kernel<T, D>;
  raise_smem_limit(kernel, decode_smem_bytes<T, D>(), done);
  return kernel;
}

}  // namespace

void launch_decode_attention(const AttentionKernelParams& p, DType dtype, int head_dim, cudaStream_t stream) {
  dispatch_dtype_head_dim(dtype, head_dim, [&](auto type_tag, auto head) {
    using T = decltype(type_tag);
    constexpr int D = decltype(head)::value;
    const dim3 grid(p.num_seqs, p.num_kv_heads, p.num_splits);
    prepared_decode_kernel<T, D>()<<<grid, kDecodeThreads, decode_smem_bytes<T, D>(), stream>>>(p);
    PAGEDCORE_CUDA_CHECK_LAUNCH();
    return 0;
  });
}

void launch_split_merge(const AttentionKernelParams& p, DType dtype, int head_dim, cudaStream_t stream) {
  dispatch_dtype_head_dim(dtype, head_dim, [&](auto type_tag, auto head) {
    using T = decltype(type_tag);
    constexpr int D = decltype(head)::value;
    split_merge_kernel<T, D><<<dim3(p.num_seqs, p.num_heads), D / 2, 0, stream>>>(p);
    PAGEDCORE_CUDA_CHECK_LAUNCH();
    return 0;
  });
}

int decode_attention_ctas_per_sm(DType dtype, int head_dim) {
  return dispatch_dtype_head_dim(dtype, head_dim, [&](auto type_tag, auto head) {
    using T = decltype(type_tag);
    constexpr int D = decltype(head)::value;
    int ctas = 0;
    PAGEDCORE_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&ctas, prepared_decode_kernel<T, D>(),
                                                                       kDecodeThreads, decode_smem_bytes<T, D>()));
    return std::max(ctas, 1);
  });
}

}  // namespace pagedcore::cuda
