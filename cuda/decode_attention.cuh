// Decode paged attention (one query token per sequence), split-KV merge included.
//
// CTA = (sequence, KV head, split), 2, 4 or 8 warps (DecodeConfig below). The CTA's query rows are the
// group_size query heads of that KV head (padded to one 16-row mma tile), so every K/V byte is read
// once for all of them. The split's key range is cut into 16-token tiles dealt round-robin to the
// warps; each warp streams its tiles through a private kStages-deep pipeline and runs tensor-core
// flash attention on them. Two ways to load a tile:
//  - Hopper path (sm_90 code on a 9.0+ device): one bulk copy (TMA) per block piece for K and one
//    for V, completing on the stage's mbarrier; its rows keep the cache's chunk order, which keeps
//    the fragment loads free of bank conflicts (head sizes 64, 128, 192, 256, blocks of 8+ tokens);
//  - cp.async path (every supported GPU; Ampere and Ada always, Hopper for the other head sizes and
//    block sizes): 16-byte cp.async copies into padded tiles.
// The warps / stages of a launch are chosen at run time among the compiled configurations by the
// device's shared memory (99 KiB per CTA on 8.6 / 8.9 parts, 163 KiB on 8.0, 227 KiB on 9.0)
// and by whether the grid fits one wave. The warps' partial
// softmax states are merged through shared memory. With several splits each CTA writes its partial
// result to the workspace and the last split of a (sequence, KV head) to finish combines them (one
// launch, no separate merge kernel; a thread-block-cluster merge through distributed shared
// memory was slower, clusters having to be co-scheduled). A persistent grid (CTAs looping over
// items, loading the next item's tiles during the merge) was no faster (bench/RESULTS.md, W4).
//
// FP8 caches (C = uint8_t, e4m3 bytes): the tiles are staged as the cache holds them (half the
// bytes: bulk copies in the FP8 cache order, cp.async into padded byte tiles), and each warp's
// fragment loads read the bytes and convert them in registers into half-precision mma operands
// (exact: every e4m3 value is a half value); the query rows go to half once per CTA
// (stage_query_fp8, attention_warp.cuh). K's scale multiplies the scores and V's the output.
// decode_attention.cu instantiates the kernels for caches of the model's dtype,
// decode_attention_fp8.cu for FP8 caches (two files: they compile in parallel).
#pragma once

#include <cuda/atomic>

#include <stdexcept>
#include <string>
#include <type_traits>

#include "attention_params.cuh"
#include "attention_warp.cuh"
#include "cuda_check.cuh"
#include "device_info.cuh"
#include "dispatch.cuh"
#include "softmax_merge.cuh"

namespace pagedcore::cuda {
namespace {

// Warps per CTA: 4 (two CTAs per SM) for batches that fill the device in waves; 8 (one CTA per SM,
// its tiles spread over twice the warps) when the whole grid fits in one wave of such CTAs, which
// is when the launch is short and latency-bound (bench/RESULTS.md, W4). Devices whose shared memory
// does not hold 4 warps' pipelines (99 KiB parts at large head sizes) take 2 stages, then 2 warps.
constexpr int kDecodeWarps = 4;
constexpr int kWideDecodeWarps = 8;
constexpr int kSmallDecodeWarps = 2;
constexpr int kTileTokens = 16;

// Pipeline depth per warp (tiles in flight + the one being used): 3, 2 at head size 256.
template <int D>
inline constexpr int kDecodeStages = D >= 256 ? 2 : 3;
constexpr int kShallowDecodeStages = 2;
// Shared memory per CTA of the largest part (sm_90): variants past it are not compiled.
constexpr size_t kMaxSmemPerCta = 227 * 1024;
// Query fragments stay in registers for head sizes up to 128 (64 more registers at 256 would spill);
// over FP8 caches up to 96, where the kernel's 128 registers (kDecodeMinCtasPerSm) hold them
// without spilling.
template <typename C, int D>
inline constexpr bool kDecodeQueryInRegisters = kFp8Cache<C> ? D <= 96 : D <= 128;

// Bulk loads (one copy per block piece, tiles in cache order) need sm_90, head sizes whose rows are
// whole groups of 8 chunks and blocks of at least 8 tokens; the rest load 16-byte chunks by cp.async.
template <int D>
inline constexpr bool kDecodeBulkCapable = D % 64 == 0;
constexpr int kDecodeBulkMinBlockLog2 = 3;

template <typename T, typename C, int D, bool kBulk>
constexpr int decode_tile_elems() {  // one K or V tile of a stage, in C elements
  if constexpr (kFp8Cache<C>) return kTileTokens * (kBulk ? D : kFp8RowPitch<D>);
  else return kTileTokens * (kBulk ? D : kRowPitch<D>);
}
// Shared memory: the warps' tiles first (at the 1024-byte aligned base: bulk copies into
// 16-byte-aligned destinations are slower than into 128-byte-aligned ones, bench/RESULTS.md), a
// space the warps' merge reuses at the end (FP8 tiles can be smaller than the merge: the space
// is the larger of the two), then the query tile (head sizes over 128 and FP8 caches only: the
// others load their query fragments from global memory straight into registers), then the
// mbarriers and the split-merge flag.
template <typename T, typename C, int D, bool kBulk, int W, int S>
constexpr size_t decode_staged_bytes() {
  return static_cast<size_t>(W) * S * 2 * decode_tile_elems<T, C, D, kBulk>() * sizeof(C);
}
template <int D, int W>
constexpr size_t decode_merge_bytes() {  // float o [W][16][D], m [W][16], l [W][16]
  return (static_cast<size_t>(W) * 16 * (D + 2) * sizeof(float) + 127) / 128 * 128;
}
template <typename T, typename C, int D, bool kBulk, int W, int S>
constexpr size_t decode_tiles_bytes() {
  const size_t staged = decode_staged_bytes<T, C, D, kBulk, W, S>();
  return staged > decode_merge_bytes<D, W>() ? staged : decode_merge_bytes<D, W>();
}
// mbarriers of all warps' stages (bulk loads) and the split-merge flag, in 128-byte units.
template <int W, int S>
constexpr size_t decode_barrier_bytes() {
  return (W * S * sizeof(uint64_t) + sizeof(int) + 127) / 128 * 128;
}
// The query tile: [16][pitch] of T, or for FP8 caches of half (stage_query_fp8) with the rows'
// scales [16] after it.
template <typename T, typename C, int D>
constexpr size_t decode_query_tile_bytes() {
  if constexpr (kFp8Cache<C>) return static_cast<size_t>(16) * kRowPitch<D> * sizeof(__half) + 16 * sizeof(float);
  else return kDecodeQueryInRegisters<C, D> ? 0 : static_cast<size_t>(16) * kRowPitch<D> * sizeof(T);
}

template <typename T, typename C, int D, bool kBulk, int W, int S>
constexpr size_t decode_smem_bytes() {
  return decode_tiles_bytes<T, C, D, kBulk, W, S>() + decode_query_tile_bytes<T, C, D>() + decode_barrier_bytes<W, S>();
}

template <typename T, typename C, int D, bool kBulk, int kWarps, int kStages>
__device__ __forceinline__ void decode_attention_body(const AttentionKernelParams& p) {
  constexpr bool kFp8 = kFp8Cache<C>;
  constexpr int kThreads = kWarps * 32;
  constexpr int kPitch = kRowPitch<D>;
  constexpr int kChunks = D / 8;  // 16-byte chunks per row
  constexpr int kTile = decode_tile_elems<T, C, D, kBulk>();
  constexpr size_t kTilesBytes = decode_tiles_bytes<T, C, D, kBulk, kWarps, kStages>();
  static_assert(!kBulk || kDecodeBulkCapable<D>, "bulk loads need head_dim % 64 == 0");
  static_assert(decode_merge_bytes<D, kWarps>() <= kTilesBytes, "the warp merge reuses the tile space");
  static_assert(kWarps * kStages * sizeof(uint64_t) + sizeof(int) <= decode_barrier_bytes<kWarps, kStages>(),
                "mbarrier space");
  static_assert(decode_staged_bytes<T, C, D, kBulk, kWarps, kStages>() % 128 == 0 && kTilesBytes % 128 == 0 &&
                    16 * kPitch * sizeof(T) % 16 == 0 && decode_query_tile_bytes<T, C, D>() % 16 == 0,
                "alignment");
  const int seq = blockIdx.x;
  const int kv_head = blockIdx.y;
  const int split = blockIdx.z;
  const int q_row = p.query_start_loc[seq];
  if (p.query_start_loc[seq + 1] - q_row != 1) return;  // prefill rows go to the prefill kernel

  extern __shared__ __align__(1024) unsigned char smem_raw[];
  C* all_tiles = reinterpret_cast<C*>(smem_raw);
  T* sq = reinterpret_cast<T*>(smem_raw + kTilesBytes);  // [16][pitch] (D > 128)
  __half* sq_half = reinterpret_cast<__half*>(smem_raw + kTilesBytes);  // FP8: [16][pitch] half
  float* q_row_scale = reinterpret_cast<float*>(sq_half + 16 * kPitch);  // FP8: [16]
  uint64_t* barriers =
      reinterpret_cast<uint64_t*>(smem_raw + kTilesBytes + decode_query_tile_bytes<T, C, D>());  // [warps][stages] (bulk)
  int* last_split = reinterpret_cast<int*>(barriers + kWarps * kStages);
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  C* warp_tiles = all_tiles + warp * kStages * 2 * kTile;  // [kStages][K|V][kTile]
  uint64_t* warp_barriers = barriers + warp * kStages;

  const int context_len = p.context_lens[seq];
  const int num_tiles = (context_len + kTileTokens - 1) / kTileTokens;
  const int tiles_per_split = (num_tiles + p.num_splits - 1) / p.num_splits;
  const int tile_begin = min(num_tiles, split * tiles_per_split);
  const int tile_end = min(num_tiles, tile_begin + tiles_per_split);
  const int G = p.group_size;

  // Query rows: heads kv_head * G .. + G - 1 of this token; rows >= G are zero. Head sizes over 128
  // stage them in shared memory here; the others read them into registers below (FP8 caches:
  // staged in half after the first tile loads are issued).
  for (int c = threadIdx.x; c < (kDecodeQueryInRegisters<C, D> || kFp8 ? 0 : 16 * kChunks); c += kThreads) {
    const int r = c / kChunks, chunk = c % kChunks;
    const T* src = static_cast<const T*>(p.q) + q_row * p.q_stride_token +
                   (kv_head * G + min(r, G - 1)) * p.q_stride_head + chunk * 8;
    cp_async16(tile_chunk<T, D>(sq, r, chunk), src, r < G);
  }
  cp_async_commit();

  const C* k_cache = static_cast<const C*>(p.k_cache);
  const C* v_cache = static_cast<const C*>(p.v_cache);
  const int32_t* block_table = p.block_tables + seq * p.block_tables_stride;
  if constexpr (kBulk) {
    if (lane == 0) {
      for (int s = 0; s < kStages; ++s) mbarrier_init(&warp_barriers[s], 1);
      mbarrier_init_fence();
    }
    __syncwarp();
  }
  // This warp's tiles: tile_begin + warp, + kWarps, ... ("local" tile i is the i-th of them).
  const int first = tile_begin + warp;
  const int num_local = first < tile_end ? (tile_end - first + kWarps - 1) / kWarps : 0;
  // Bulk copies go by block pieces: one per tile for blocks >= 16 tokens, two for 8-token blocks.
  const int piece_log2 = min(p.block_size_log2, 4);
  const int piece_rows = 1 << piece_log2;
  // Block ids of the warp's tiles, read 32 tiles at a time (lane l: local tile 32 * batch + l) and
  // handed to lane 0 by shuffles: one coalesced table read per 32 tiles instead of a dependent
  // global load in front of every copy, which ncu showed as the kernel's main stall.
  int32_t piece_ids[2] = {0, 0};
  int ids_batch = -1;
  auto block_ids = [&](int local, int32_t ids[2]) {  // warp-uniform
    if (local / 32 != ids_batch) {
      ids_batch = local / 32;
      const int mine = ids_batch * 32 + lane;
      const int token = (first + mine * kWarps) * kTileTokens;
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        const int piece_token = token + i * piece_rows;
        const bool used = mine < num_local && piece_token < context_len && (i == 0 || piece_rows < kTileTokens);
        piece_ids[i] = used ? block_table[piece_token >> p.block_size_log2] : 0;
      }
    }
    ids[0] = __shfl_sync(0xffffffffu, piece_ids[0], local % 32);
    ids[1] = __shfl_sync(0xffffffffu, piece_ids[1], local % 32);
  };
  // Starts loading local tile `local` into stage `stage` of this warp (warp-uniform call).
  auto load_tile = [&](int stage, int local) {
    C* sk = warp_tiles + stage * 2 * kTile;
    C* sv = sk + kTile;
    const int first_token = (first + local * kWarps) * kTileTokens;
    if constexpr (kBulk) {
      int32_t ids[2];
      block_ids(local, ids);
      // Lane 0 copies the tile's pieces; pieces past the context are not read.
      if (lane == 0) {
        const uint32_t piece_bytes = piece_rows * D * sizeof(C);
        const int pieces = min(kTileTokens >> piece_log2, (context_len - first_token + piece_rows - 1) >> piece_log2);
        mbarrier_arrive_expect_tx(&warp_barriers[stage], 2 * pieces * piece_bytes);
#pragma unroll
        for (int i = 0; i < 2; ++i) {
          if (i == pieces) break;
          const int token = first_token + i * piece_rows;
          const int offset = token & ((1 << p.block_size_log2) - 1);
          const int64_t src = (((static_cast<int64_t>(ids[i]) * p.num_kv_heads + kv_head) << p.block_size_log2) + offset) * D;
          bulk_copy_g2s(sk + i * piece_rows * D, k_cache + src, piece_bytes, &warp_barriers[stage]);
          bulk_copy_g2s(sv + i * piece_rows * D, v_cache + src, piece_bytes, &warp_barriers[stage]);
        }
      }
    } else if constexpr (kFp8) {
      load_fp8_kv_tile<D, kTileTokens, 32, kFp8RowPitch<D>>(sk, sv, k_cache, v_cache, block_table, first_token,
                                                            context_len, p.block_size_log2, p.num_kv_heads, kv_head,
                                                            lane);
    } else {
      load_kv_tile<T, D, kTileTokens, 32>(sk, sv, k_cache, v_cache, block_table, first_token, context_len,
                                          p.block_size_log2, p.num_kv_heads, kv_head, lane);
    }
  };

#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < num_local) load_tile(s, s);
    if constexpr (!kBulk) cp_async_commit();
  }
  if constexpr (kFp8) {
    stage_query_fp8<T, D, kThreads>(sq_half, q_row_scale,
                                    static_cast<const T*>(p.q) + q_row * p.q_stride_token + kv_head * G * p.q_stride_head,
                                    p.q_stride_head, G, threadIdx.x);
  }
  if constexpr (kBulk) cp_async_wait<0>();  // the query group
  else cp_async_wait<kStages - 1>();        // the query group (committed first) has landed
  __syncthreads();

  const int g = lane / 4;
  const int limit_lo = g < G ? context_len - 1 : -1;
  const int limit_hi = g + 8 < G ? context_len - 1 : -1;
  WarpAttentionState<D> st;
  st.init();
  QueryFragments<D> q_frags;
  if constexpr (kDecodeQueryInRegisters<C, D>) {
    if constexpr (kFp8) {
      q_frags.load(sq_half, lane);
    } else {
      q_frags.load_global(static_cast<const T*>(p.q) + q_row * p.q_stride_token + kv_head * G * p.q_stride_head,
                          p.q_stride_head, G, lane);
    }
  }
  const QueryFragments<D>* q_regs = kDecodeQueryInRegisters<C, D> ? &q_frags : nullptr;
  const float score_scale_log2 = kFp8 ? p.scale_log2 * p.k_scale : p.scale_log2;  // K's scale (FP8)
  // FP8: rows g and g + 8 were scaled by powers of two in half (stage_query_fp8): undone on the scores.
  const float scale_lo = kFp8 ? score_scale_log2 * q_row_scale[g] : score_scale_log2;
  const float scale_hi = kFp8 ? score_scale_log2 * q_row_scale[g + 8] : score_scale_log2;
  for (int i = 0; i < num_local; ++i) {
    const int next = i + kStages - 1;
    if (next < num_local) load_tile(next % kStages, next);
    const int stage = i % kStages;
    C* sk = warp_tiles + stage * 2 * kTile;
    C* sv = sk + kTile;
    const int token0 = (first + i * kWarps) * kTileTokens;
    if constexpr (kBulk) {
      mbarrier_wait_parity(&warp_barriers[stage], (i / kStages) & 1);
      const int valid = context_len - token0;
      if (valid < kTileTokens) {  // the sequence's last tile: zero the V rows past the context
        constexpr int kRowChunks = D * sizeof(C) / 16;
        for (int c = lane; c < (kTileTokens - valid) * kRowChunks; c += 32) {
          *reinterpret_cast<uint4*>(sv + (valid + c / kRowChunks) * D + (c % kRowChunks) * (16 / sizeof(C))) =
              make_uint4(0, 0, 0, 0);
        }
      }
    } else {
      cp_async_commit();
      cp_async_wait<kStages - 1>();
    }
    __syncwarp();
    if constexpr (kFp8) {
      attend_fp8_chunk16<D, kBulk>(sq_half, q_regs, sk, sv, token0, limit_lo, limit_hi, scale_lo, scale_hi, st, lane);
    } else {
      attend_chunk16<T, D, kBulk>(sq, q_regs, sk, sv, token0, limit_lo, limit_hi, score_scale_log2, st, lane);
    }
    __syncwarp();
  }
  if constexpr (!kBulk) cp_async_wait<0>();
  st.reduce_row_sums();
  __syncthreads();  // every warp is done with its tiles: reuse their space for the merge

  // Merge the warps: float o [warps][16][D], m [warps][16], l [warps][16].
  float* merge_o = reinterpret_cast<float*>(all_tiles);
  float* merge_m = merge_o + kWarps * 16 * D;
  float* merge_l = merge_m + kWarps * 16;
  {
    const int t = lane % 4;
    float* o_warp = merge_o + warp * 16 * D;
    if constexpr (kFp8) {  // dimensions 16c + 4t .. + 3 (attend_fp8_chunk16)
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const int r = g + 8 * half;
        if (r >= G) continue;  // only the group's rows are read below
#pragma unroll
        for (int c = 0; c < D / 16; ++c) {
          *reinterpret_cast<float4*>(o_warp + r * D + 16 * c + 4 * t) =
              make_float4(st.o[2 * c][2 * half], st.o[2 * c + 1][2 * half], st.o[2 * c][2 * half + 1],
                          st.o[2 * c + 1][2 * half + 1]);
        }
      }
    } else {
      if (g < G) {  // only the group's rows are read below
#pragma unroll
        for (int j = 0; j < D / 8; ++j) {
          *reinterpret_cast<float2*>(o_warp + g * D + 8 * j + 2 * t) = make_float2(st.o[j][0], st.o[j][1]);
        }
      }
      if (g + 8 < G) {
#pragma unroll
        for (int j = 0; j < D / 8; ++j) {
          *reinterpret_cast<float2*>(o_warp + (g + 8) * D + 8 * j + 2 * t) = make_float2(st.o[j][2], st.o[j][3]);
        }
      }
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
  const float out_scale = kFp8 ? p.v_scale : 1.f;  // V's scale (FP8): applied to the final output only
  for (int idx = threadIdx.x; idx < rows * (D / 2); idx += kThreads) {
    const int r = idx / (D / 2);
    const int d = (idx % (D / 2)) * 2;
    SoftmaxMerge merge;
    merge.add_parts<kWarps>(merge_m + r, merge_l + r, merge_o + r * D + d, 16, 16 * D);
    const float inv = merge.inv_sum();
    const int head = kv_head * G + r;
    if (p.num_splits == 1) {
      T* dst = static_cast<T*>(p.out) + q_row * p.out_stride_token + head * p.out_stride_head + d;
      *reinterpret_cast<uint32_t*>(dst) = MmaTraits<T>::pack(merge.o0 * inv * out_scale, merge.o1 * inv * out_scale);
    } else {
      const int64_t row = (static_cast<int64_t>(split) * p.num_seqs + seq) * p.num_heads + head;
      *reinterpret_cast<float2*>(p.partial_out + row * D + d) = make_float2(merge.o0 * inv, merge.o1 * inv);
      if (d == 0) p.partial_lse[row] = merge.lse();
    }
  }
  if (p.num_splits == 1) return;

  // Split-KV: the last split of (sequence, KV head) to finish combines all splits' partials,
  // out = sum_s w_s o_s / sum_s w_s with w_s = exp2(lse_s - max lse), and re-arms the counter.
  // Thread 0 takes the ticket with acquire-release semantics at device scope: its release covers
  // the partials the CTA wrote before the barrier, and the last CTA's acquire (then its barrier)
  // makes every split's partials visible to all its threads (one release instead of a full fence
  // in every thread: shorter launches at split shapes, bench/RESULTS.md, W4).
  __syncthreads();
  if (threadIdx.x == 0) {
    ::cuda::atomic_ref<int, ::cuda::thread_scope_device> counter(p.split_counters[seq * p.num_kv_heads + kv_head]);
    *last_split = counter.fetch_add(1, ::cuda::memory_order_acq_rel) == p.num_splits - 1;
    if (*last_split) counter.store(0, ::cuda::memory_order_relaxed);  // re-armed for the next launch
  }
  __syncthreads();
  if (!*last_split) return;
  // Online over the splits: each split's lse and o come in the same round of loads (reading all
  // lse first cost one more L2 round trip on the launch's critical path).
  const int64_t split_stride = static_cast<int64_t>(p.num_seqs) * p.num_heads;
  const int64_t head0_row = static_cast<int64_t>(seq) * p.num_heads + kv_head * G;
  for (int idx = threadIdx.x; idx < rows * (D / 2); idx += kThreads) {
    const int r = idx / (D / 2);
    const int d = (idx % (D / 2)) * 2;
    SoftmaxMerge merge;
#pragma unroll 8
    for (int s = 0; s < p.num_splits; ++s) {
      const int64_t row = head0_row + r + s * split_stride;
      const float lse = __ldcg(p.partial_lse + row);  // -INFINITY: an empty split, skipped
      const float2 o = __ldcg(reinterpret_cast<const float2*>(p.partial_out + row * D + d));
      merge.add(lse, 1.f, o);  // partials are normalized: weight exp2(lse - max)
    }
    const float inv = merge.inv_sum() * out_scale;
    T* dst = static_cast<T*>(p.out) + q_row * p.out_stride_token + (kv_head * G + r) * p.out_stride_head + d;
    *reinterpret_cast<uint32_t*>(dst) = MmaTraits<T>::pack(merge.o0 * inv, merge.o1 * inv);
  }
}

// Registers: FP8 caches take half the shared memory per stage, so at head sizes up to 128 their
// CTAs are held to 128 registers per thread: 16 warps per SM (four 4-warp or two 8-warp CTAs)
// instead of the 12 that their unbounded 150 allow.
template <typename C, int D, int kWarps>
inline constexpr int kDecodeMinCtasPerSm = kFp8Cache<C> && D <= 128 ? 16 / kWarps : 1;

template <typename T, typename C, int D, bool kBulk, int kWarps, int kStages>
__global__ void __launch_bounds__(kWarps * 32, (kDecodeMinCtasPerSm<C, D, kWarps>))
    decode_attention_kernel(const AttentionKernelParams p) {
#if PAGEDCORE_ARCH_HAS_BULK_COPY
  decode_attention_body<T, C, D, kBulk, kWarps, kStages>(p);
#else
  if constexpr (kBulk) __trap();  // never launched: the host checks the loaded code's architecture
  else decode_attention_body<T, C, D, false, kWarps, kStages>(p);
#endif
}

// One compiled configuration of the decode kernel, with its per-device fit.
template <typename T, typename C, int D, bool kBulk, int W, int S>
struct DecodeConfig {
  static constexpr size_t kSmem = decode_smem_bytes<T, C, D, kBulk, W, S>();
  static constexpr bool kCompiled = kSmem <= kMaxSmemPerCta;

  static const KernelFit& fit() {
    static KernelFitCache cache;
    return cache.get(reinterpret_cast<const void*>(decode_attention_kernel<T, C, D, kBulk, W, S>), kSmem, W * 32);
  }
  static void launch(const AttentionKernelParams& p, cudaStream_t stream) {
    const dim3 grid(p.num_seqs, p.num_kv_heads, p.num_splits);
    decode_attention_kernel<T, C, D, kBulk, W, S><<<grid, W * 32, kSmem, stream>>>(p);
    PAGEDCORE_CUDA_CHECK_LAUNCH();
  }
};

using DecodeLaunch = void (*)(const AttentionKernelParams&, cudaStream_t);
struct DecodeChoice {
  DecodeLaunch launch = nullptr;
  int64_t resident_ctas = 0;
};

template <typename Config>
bool take_if_fits(DecodeChoice& choice) {
  if constexpr (Config::kCompiled) {
    const KernelFit& fit = Config::fit();
    if (fit.fits) {
      choice = {&Config::launch, fit.resident_ctas};
      return true;
    }
  }
  return false;
}

// The configurations of one (dtype, cache element, head size, load path) on the current device:
// the deepest 4-warp pipeline whose shared memory fits (else 2 warps), and the 8-warp one where it fits.
template <typename T, typename C, int D, bool kBulk>
struct DecodeChoices {
  DecodeChoice narrow;
  DecodeChoice wide;  // launch == nullptr: none fits

  static const DecodeChoices& current() {
    static PerDevice<DecodeChoices> cache;
    return cache.get(current_device(), &DecodeChoices::make);
  }

 private:
  static DecodeChoices make() {
    DecodeChoices c;
    if (!take_if_fits<DecodeConfig<T, C, D, kBulk, kDecodeWarps, kDecodeStages<D>>>(c.narrow) &&
        !take_if_fits<DecodeConfig<T, C, D, kBulk, kDecodeWarps, kShallowDecodeStages>>(c.narrow) &&
        !take_if_fits<DecodeConfig<T, C, D, kBulk, kSmallDecodeWarps, kShallowDecodeStages>>(c.narrow)) {
      const DeviceInfo& info = device_info(current_device());
      throw std::runtime_error(
          "decode attention at head size " + std::to_string(D) + " needs " +
          std::to_string(decode_smem_bytes<T, C, D, kBulk, kSmallDecodeWarps, kShallowDecodeStages>()) +
          " bytes of shared memory per CTA; " + info.name + " offers " + std::to_string(info.max_smem_per_block));
    }
    take_if_fits<DecodeConfig<T, C, D, kBulk, kWideDecodeWarps, kDecodeStages<D>>>(c.wide);
    return c;
  }
};

// Whether launches of this head size take the Hopper path on the current device: sm_90 code loaded
// (not an older target's PTX compiled at load time) and not PAGEDCORE_KERNEL_PATH=ampere.
template <typename T, typename C, int D>
bool use_bulk_path(int block_size_log2) {
  if constexpr (kDecodeBulkCapable<D>) {
    if (block_size_log2 < kDecodeBulkMinBlockLog2 || requested_kernel_path() == KernelPath::kAmpere) return false;
    using Probe = DecodeConfig<T, C, D, true, kDecodeWarps, kShallowDecodeStages>;
    return Probe::fit().compiled_arch >= kBulkCopyMinArch;
  }
  return false;
}

template <typename T, typename C, int D, bool kBulk>
void launch_decode(const AttentionKernelParams& p, cudaStream_t stream) {
  const DecodeChoices<T, C, D, kBulk>& choices = DecodeChoices<T, C, D, kBulk>::current();
  const int64_t ctas = static_cast<int64_t>(p.num_seqs) * p.num_kv_heads * p.num_splits;
  if (choices.wide.launch && ctas <= choices.wide.resident_ctas) choices.wide.launch(p, stream);
  else choices.narrow.launch(p, stream);
}

// Decode attention over a cache of C, on the path the device and block size take.
template <typename T, typename C, int D>
void launch_decode_path(const AttentionKernelParams& p, cudaStream_t stream) {
  if constexpr (kDecodeBulkCapable<D>) {
    if (use_bulk_path<T, C, D>(p.block_size_log2)) return launch_decode<T, C, D, true>(p, stream);
  }
  launch_decode<T, C, D, false>(p, stream);
}

// Resident CTAs of the launches over blocks of 8+ tokens (what the split count is chosen by).
template <typename T, typename C, int D>
DecodeSlots decode_slots() {
  auto slots = [](const auto& choices) {
    return DecodeSlots{choices.narrow.resident_ctas, choices.wide.launch ? choices.wide.resident_ctas : 0};
  };
  if constexpr (kDecodeBulkCapable<D>) {
    if (use_bulk_path<T, C, D>(kDecodeBulkMinBlockLog2)) return slots(DecodeChoices<T, C, D, true>::current());
  }
  return slots(DecodeChoices<T, C, D, false>::current());
}

}  // namespace
}  // namespace pagedcore::cuda
