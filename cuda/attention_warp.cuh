// Warp-level building blocks of the paged attention kernels: cp.async tile loads, ldmatrix,
// mma.sync m16n8k16 (fp16 / bf16 in, fp32 accumulate) and one flash-attention step of a warp's
// 16 query rows over 16 keys with an online softmax in the log2 domain.
//
// K/V tiles in shared memory come in two layouts:
//  - padded: row-major [rows][head_dim + 8] elements, chunks in logical order; the 16-byte pad makes
//    the row pitch an odd number of 16-byte units, so the 8 row addresses of each ldmatrix phase
//    land in distinct banks for every supported head size (filled by 16-byte cp.async copies);
//  - cache order: [rows][head_dim], each row's chunks permuted as in the CUDA cache
//    (pagedcore/kv_layout.h), which is what one bulk copy of a block's rows produces; the
//    permutation keeps ldmatrix conflict-free (head sizes that are multiples of 64).
// Both run everywhere from sm_80 on; only the bulk copies that fill cache-order tiles need sm_90.
// FP8 caches stage byte tiles: decode converts their fragments in registers (attend_fp8_chunk16),
// prefill converts each tile once into a padded tile of the model's dtype (convert_fp8_tile).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include <cstdint>
#include <type_traits>

#include "pagedcore/kv_layout.h"

namespace pagedcore::cuda {

template <int D>
inline constexpr int kRowPitch = D + 8;  // elements per padded shared-memory tile row

// Element offset of logical 16-byte chunk `chunk` of tile row `row` (rows of a tile start at a
// multiple of 8 tokens of their block, so row % 8 is the row's key in the cache permutation).
template <int D, bool kCacheOrder>
__device__ __forceinline__ int kv_tile_offset(int row, int chunk) {
  if constexpr (kCacheOrder) return row * D + kv_chunk_position(row, chunk, D / 8) * 8;
  else return row * kRowPitch<D> + chunk * 8;
}

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16-byte global -> shared copy that bypasses L1; when !valid, writes 16 zero bytes and reads nothing.
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(smem)), "l"(gmem),
               "r"(valid ? 16 : 0));
}
// mbarrier and bulk-copy (TMA) helpers: one thread arms the barrier with the bytes to expect and
// issues the copies; the copies complete the transaction; waiting threads spin on the phase parity.
// These instructions exist from sm_90 on. Code compiled for an older target has none of them: the
// helpers trap there, the kernels that use them compile to a trap, and the launchers take the
// cp.async path wherever the loaded code's architecture is older (device_info.cuh).
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 900
#define PAGEDCORE_ARCH_HAS_BULK_COPY 0
#else
#define PAGEDCORE_ARCH_HAS_BULK_COPY 1
#endif
// The first architecture (major * 10 + minor) that has them, for the host-side choice.
inline constexpr int kBulkCopyMinArch = 90;

__device__ __forceinline__ void mbarrier_init(uint64_t* bar, int arrivals) {
#if PAGEDCORE_ARCH_HAS_BULK_COPY
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(smem_addr(bar)), "r"(arrivals));
#else
  __trap();
#endif
}
__device__ __forceinline__ void mbarrier_init_fence() {
#if PAGEDCORE_ARCH_HAS_BULK_COPY
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
#else
  __trap();
#endif
}
__device__ __forceinline__ void mbarrier_arrive_expect_tx(uint64_t* bar, uint32_t bytes) {
#if PAGEDCORE_ARCH_HAS_BULK_COPY
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(smem_addr(bar)), "r"(bytes)
               : "memory");
#else
  __trap();
#endif
}
__device__ __forceinline__ void mbarrier_wait_parity(uint64_t* bar, uint32_t parity) {
#if PAGEDCORE_ARCH_HAS_BULK_COPY
  asm volatile(
      "{\n"
      ".reg .pred done;\n"
      "WAIT_%=:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
      "@!done bra WAIT_%=;\n"
      "}\n" ::"r"(smem_addr(bar)),
      "r"(parity)
      : "memory");
#else
  __trap();
#endif
}
// Bulk global -> shared copy of `bytes` (multiple of 16, both addresses 16-byte aligned) that
// completes on `bar`; streamed data is marked evict-first in L2.
__device__ __forceinline__ void bulk_copy_g2s(void* smem, const void* gmem, uint32_t bytes, uint64_t* bar) {
#if PAGEDCORE_ARCH_HAS_BULK_COPY
  uint64_t policy;
  asm volatile("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;\n" : "=l"(policy));
  asm volatile(
      "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes.L2::cache_hint [%0], [%1], %2, [%3], %4;\n" ::"r"(
          smem_addr(smem)),
      "l"(gmem), "r"(bytes), "r"(smem_addr(bar)), "l"(policy)
      : "memory");
#else
  __trap();
#endif
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t r[4], const void* smem) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(smem)));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t r[4], const void* smem) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(smem)));
}

__device__ __forceinline__ void ldmatrix_x2(uint32_t r[2], const void* smem) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0, %1}, [%2];\n"
               : "=r"(r[0]), "=r"(r[1])
               : "r"(smem_addr(smem)));
}
__device__ __forceinline__ void ldmatrix_x2_trans(uint32_t r[2], const void* smem) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0, %1}, [%2];\n"
               : "=r"(r[0]), "=r"(r[1])
               : "r"(smem_addr(smem)));
}

template <typename T>
struct MmaTraits;

template <>
struct MmaTraits<__nv_bfloat16> {
  __device__ __forceinline__ static void mma(float c[4], const uint32_t a[4], uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
  __device__ __forceinline__ static uint32_t pack(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&v);
  }
};

template <>
struct MmaTraits<__half> {
  __device__ __forceinline__ static void mma(float c[4], const uint32_t a[4], uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
  __device__ __forceinline__ static uint32_t pack(float lo, float hi) {
    __half2 v = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&v);
  }
};

// Running state of one warp's 16 query rows. Thread (lane) holds rows g = lane / 4 and g + 8,
// columns 2 * (lane % 4) + {0, 1} of every 8-wide n-tile (the mma accumulator layout).
template <int D>
struct WarpAttentionState {
  float o[D / 8][4];  // unnormalized output: n-tile j = dims 8j..8j+7; [0..1] row g, [2..3] row g + 8
  float m[2];         // running max of the scaled scores (log2 domain), rows g and g + 8
  float l[2];         // running sum of exp2(score - m) over this thread's columns, rows g and g + 8

  __device__ __forceinline__ void init() {
#pragma unroll
    for (int j = 0; j < D / 8; ++j) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.f;
    m[0] = m[1] = -INFINITY;
    l[0] = l[1] = 0.f;
  }

  // Sums l over the 4 threads of a row (call once, after the last chunk).
  __device__ __forceinline__ void reduce_row_sums() {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
      l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
    }
  }
};

// A warp's 16 query rows as mma A fragments, one per 16-wide slice of head_dim. Decode keeps them
// in registers for the whole key loop (loaded once); prefill reloads them from shared memory.
template <int D>
struct QueryFragments {
  uint32_t a[D / 16][4];

  template <typename T>
  __device__ __forceinline__ void load(const T* sq, int lane) {
    const T* q_lane = sq + ((lane & 7) + ((lane >> 3) & 1) * 8) * kRowPitch<D> + (lane >> 4) * 8;
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) ldmatrix_x4(a[kk], q_lane + kk * 16);
  }

  // Straight from global memory: query row r at q + r * row_stride for r < rows; rows >= rows are
  // zero. (Lane holds rows g, g + 8 at columns 2t, 2t + 1 and 2t + 8, 2t + 9 of every 16-wide slice.)
  template <typename T>
  __device__ __forceinline__ void load_global(const T* q, int64_t row_stride, int rows, int lane) {
    const int g = lane / 4, col = 2 * (lane % 4);
    const uint32_t* lo = reinterpret_cast<const uint32_t*>(q + g * row_stride + col);
    const uint32_t* hi = reinterpret_cast<const uint32_t*>(q + (g + 8) * row_stride + col);
    const bool lo_used = g < rows, hi_used = g + 8 < rows;
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {  // 2 elements per uint32: slice kk starts at word 8 kk
      a[kk][0] = lo_used ? __ldg(lo + 8 * kk) : 0u;
      a[kk][1] = hi_used ? __ldg(hi + 8 * kk) : 0u;
      a[kk][2] = lo_used ? __ldg(lo + 8 * kk + 4) : 0u;
      a[kk][3] = hi_used ? __ldg(hi + 8 * kk + 4) : 0u;
    }
  }
};

// The online-softmax update of a warp's state by the scores s of 16 keys (the mma accumulator
// layout of two 8-key n-tiles, keys token0 ..): masks keys past each row's limit, scales row g's
// scores by scale_lo and row g + 8's by scale_hi (log2 domain), rescales o where a row's max moved,
// and leaves in s the probabilities exp2(score - max) that multiply V.
template <int D>
__device__ __forceinline__ void online_softmax_step(float s[2][4], int token0, int limit_lo, int limit_hi,
                                                    float scale_lo, float scale_hi, WarpAttentionState<D>& st,
                                                    int lane) {
  const int col = token0 + 2 * (lane & 3);
  float row_max[2] = {-INFINITY, -INFINITY};
#pragma unroll
  for (int n = 0; n < 2; ++n) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int token = col + n * 8 + (e & 1);
      const int limit = e < 2 ? limit_lo : limit_hi;
      s[n][e] = token <= limit ? s[n][e] * (e < 2 ? scale_lo : scale_hi) : -INFINITY;
      row_max[e >> 1] = fmaxf(row_max[e >> 1], s[n][e]);
    }
  }
  float alpha[2], m_use[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    row_max[r] = fmaxf(row_max[r], __shfl_xor_sync(0xffffffffu, row_max[r], 1));
    row_max[r] = fmaxf(row_max[r], __shfl_xor_sync(0xffffffffu, row_max[r], 2));
    const float m_new = fmaxf(st.m[r], row_max[r]);
    m_use[r] = m_new == -INFINITY ? 0.f : m_new;  // a fully masked row keeps p = 0, never NaN
    alpha[r] = m_new == -INFINITY ? 1.f : exp2f(st.m[r] - m_use[r]);  // (a row with no keys yet has o = 0)
    st.m[r] = m_new;
  }
  float row_sum[2] = {0.f, 0.f};
#pragma unroll
  for (int n = 0; n < 2; ++n) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      s[n][e] = exp2f(s[n][e] - m_use[e >> 1]);
      row_sum[e >> 1] += s[n][e];
    }
  }
  st.l[0] = st.l[0] * alpha[0] + row_sum[0];
  st.l[1] = st.l[1] * alpha[1] + row_sum[1];
  // Rescale o only when some row's max moved (after the first keys it rarely does).
  if (__any_sync(0xffffffffu, alpha[0] != 1.f || alpha[1] != 1.f)) {
#pragma unroll
    for (int j = 0; j < D / 8; ++j) {
      st.o[j][0] *= alpha[0];
      st.o[j][1] *= alpha[0];
      st.o[j][2] *= alpha[1];
      st.o[j][3] *= alpha[1];
    }
  }
}

// P (16 rows x 16 keys) in the mma A-operand layout: the accumulator layout of the two n-tiles.
template <typename T>
__device__ __forceinline__ void pack_probabilities(const float s[2][4], uint32_t p[4]) {
  p[0] = MmaTraits<T>::pack(s[0][0], s[0][1]);
  p[1] = MmaTraits<T>::pack(s[0][2], s[0][3]);
  p[2] = MmaTraits<T>::pack(s[1][0], s[1][1]);
  p[3] = MmaTraits<T>::pack(s[1][2], s[1][3]);
}

// One online-softmax step of a warp: 16 query rows x 16 keys.
//   sq: [16][kRowPitch<D>] query rows of this warp (shared memory)
//   sk, sv: keys / values of tokens token0 .. token0 + 15 in shared memory, padded or in cache
//           order (kCacheOrder); V rows past the context are zero so that masked columns never
//           meet NaN (K rows there may hold anything: their scores are replaced, not scaled)
//   limit_lo / limit_hi: last key position rows g / g + 8 may attend to (-1: none)
//   q_regs: when non-null, the rows' fragments already in registers (sq is then unused)
template <typename T, int D, bool kCacheOrder = false>
__device__ __forceinline__ void attend_chunk16(const T* sq, const QueryFragments<D>* q_regs, const T* sk,
                                               const T* sv, int token0, int limit_lo, int limit_hi,
                                               float scale_log2, WarpAttentionState<D>& st, int lane) {
  constexpr int P = kRowPitch<D>;
  float s[2][4];
#pragma unroll
  for (int n = 0; n < 2; ++n) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.f;

  const T* q_lane = sq + ((lane & 7) + ((lane >> 3) & 1) * 8) * P + (lane >> 4) * 8;
  const int k_row = (lane & 7) + (lane >> 4) * 8, k_half = (lane >> 3) & 1;
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) {
    uint32_t q_frag[4], b[4];
    const uint32_t* a = q_frag;
    if (q_regs) a = q_regs->a[kk];
    else ldmatrix_x4(q_frag, q_lane + kk * 16);
    ldmatrix_x4(b, sk + kv_tile_offset<D, kCacheOrder>(k_row, 2 * kk + k_half));
    MmaTraits<T>::mma(s[0], a, b[0], b[1]);
    MmaTraits<T>::mma(s[1], a, b[2], b[3]);
  }

  online_softmax_step<D>(s, token0, limit_lo, limit_hi, scale_log2, scale_log2, st, lane);
  uint32_t p[4];
  pack_probabilities<T>(s, p);
  const int v_row = (lane & 7) + ((lane >> 3) & 1) * 8, v_half = lane >> 4;
#pragma unroll
  for (int j2 = 0; j2 < D / 16; ++j2) {
    uint32_t b[4];
    ldmatrix_x4_trans(b, sv + kv_tile_offset<D, kCacheOrder>(v_row, 2 * j2 + v_half));
    MmaTraits<T>::mma(st.o[2 * j2], p, b[0], b[1]);
    MmaTraits<T>::mma(st.o[2 * j2 + 1], p, b[2], b[3]);
  }
}

// Shared-memory address of row `row` of a tile, the 16-byte chunk `chunk`.
template <typename T, int D>
__device__ __forceinline__ T* tile_chunk(T* tile, int row, int chunk) {
  return tile + row * kRowPitch<D> + chunk * 8;
}

// Global address of logical 16-byte chunk `chunk` of (token, KV head) in a CUDA cache (HND blocks,
// chunks in cache order).
template <typename T, int D>
__device__ __forceinline__ const T* cache_chunk(const T* cache, const int32_t* block_table, int token,
                                                int block_size_log2, int num_kv_heads, int kv_head, int chunk) {
  const int64_t block = block_table[token >> block_size_log2];
  const int offset = token & ((1 << block_size_log2) - 1);
  return cache + (((block * num_kv_heads + kv_head) << block_size_log2) + offset) * D +
         kv_chunk_position(offset, chunk, D / 8) * 8;
}

// Starts the asynchronous copy of KV tokens [first_token, first_token + kRows) of one KV head into the
// K and V tiles sk, sv ([kRows, kRowPitch<D>] each); rows at or past context_len are zero-filled.
// kThreads threads share the copy; `thread` is this thread's index among them.
template <typename T, int D, int kRows, int kThreads>
__device__ __forceinline__ void load_kv_tile(T* sk, T* sv, const T* k_cache, const T* v_cache,
                                             const int32_t* block_table, int first_token, int context_len,
                                             int block_size_log2, int num_kv_heads, int kv_head, int thread) {
  constexpr int kChunks = D / 8;  // 16-byte chunks per row
  static_assert(kRows * kChunks % kThreads == 0, "every thread copies the same number of chunks");
#pragma unroll
  for (int i = 0; i < kRows * kChunks / kThreads; ++i) {
    const int c = thread + i * kThreads;
    const int r = c / kChunks, chunk = c % kChunks;
    const int token = first_token + r;
    const bool valid = token < context_len;
    const int safe_token = valid ? token : 0;  // keeps the block-table read in bounds
    cp_async16(tile_chunk<T, D>(sk, r, chunk),
               cache_chunk<T, D>(k_cache, block_table, safe_token, block_size_log2, num_kv_heads, kv_head, chunk),
               valid);
    cp_async16(tile_chunk<T, D>(sv, r, chunk),
               cache_chunk<T, D>(v_cache, block_table, safe_token, block_size_log2, num_kv_heads, kv_head, chunk),
               valid);
  }
}

// A cache element type C: the model's dtype, or uint8_t for an FP8 (e4m3) cache's bytes.
template <typename C>
inline constexpr bool kFp8Cache = std::is_same_v<C, uint8_t>;

// Bytes per row of a padded FP8 tile (the cp.async paths): the row's 16-byte chunks in logical
// order, an odd number of them per row, so that the 8 row addresses of a fragment load (one chunk
// of 8 consecutive rows) land in 8 different banks at every head size.
template <int D>
inline constexpr int kFp8RowPitch = (D / 16) % 2 == 1 ? D : D + 16;

// Byte offset of logical 16-byte chunk `chunk` of row `row` in an FP8 tile: padded, or rows of D
// bytes in the FP8 cache order (kCacheOrder: what bulk copies of block pieces produce; rows of a
// tile start at a multiple of 8 tokens of their block).
template <int D, bool kCacheOrder>
__device__ __forceinline__ int fp8_tile_offset(int row, int chunk) {
  if constexpr (kCacheOrder) return row * D + kv_fp8_chunk_position(row, chunk, D / 16) * 16;
  else return row * kFp8RowPitch<D> + chunk * 16;
}

// Starts the asynchronous copy of FP8 KV tokens [first_token, first_token + kRows) of one KV head
// into the byte tiles sk, sv ([kRows] rows of kPitch bytes, each row's chunks in logical order);
// rows at or past context_len are zero-filled (zero bytes are e4m3 zeros). kThreads threads share
// the copy.
template <int D, int kRows, int kThreads, int kPitch>
__device__ __forceinline__ void load_fp8_kv_tile(uint8_t* sk, uint8_t* sv, const uint8_t* k_cache,
                                                 const uint8_t* v_cache, const int32_t* block_table,
                                                 int first_token, int context_len, int block_size_log2,
                                                 int num_kv_heads, int kv_head, int thread) {
  constexpr int kChunks = D / 16;  // 16-byte chunks per row
  for (int c = thread; c < kRows * kChunks; c += kThreads) {
    const int r = c / kChunks, chunk = c % kChunks;
    const int token = first_token + r;
    const bool valid = token < context_len;
    const int safe_token = valid ? token : 0;  // keeps the block-table read in bounds
    const int64_t block = block_table[safe_token >> block_size_log2];
    const int offset = safe_token & ((1 << block_size_log2) - 1);
    const int64_t src = (((block * num_kv_heads + kv_head) << block_size_log2) + offset) * D +
                        kv_fp8_chunk_position(offset, chunk, kChunks) * 16;
    cp_async16(sk + r * kPitch + chunk * 16, k_cache + src, valid);
    cp_async16(sv + r * kPitch + chunk * 16, v_cache + src, valid);
  }
}

// Four e4m3 values (bytes 0..3 of `bytes`) as two half2 words: bytes 0, 1 -> lo, bytes 2, 3 -> hi
// (exact: every e4m3 value, NaN included, is a half value). One instruction per pair from sm_89 on.
__device__ __forceinline__ void e4m3x4_to_half2x2(uint32_t bytes, uint32_t& lo, uint32_t& hi) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
  asm("{\n"
      ".reg .b16 a, b;\n"
      "mov.b32 {a, b}, %2;\n"
      "cvt.rn.f16x2.e4m3x2 %0, a;\n"
      "cvt.rn.f16x2.e4m3x2 %1, b;\n"
      "}\n"
      : "=r"(lo), "=r"(hi)
      : "r"(bytes));
#else
  const __half2_raw l = __nv_cvt_fp8x2_to_halfraw2(static_cast<__nv_fp8x2_storage_t>(bytes & 0xffffu), __NV_E4M3);
  const __half2_raw h = __nv_cvt_fp8x2_to_halfraw2(static_cast<__nv_fp8x2_storage_t>(bytes >> 16), __NV_E4M3);
  lo = static_cast<uint32_t>(l.x) | static_cast<uint32_t>(l.y) << 16;
  hi = static_cast<uint32_t>(h.x) | static_cast<uint32_t>(h.y) << 16;
#endif
}

// The FP8 decode path computes in half precision: its mmas take K and V converted in registers
// (attend_fp8_chunk16), so the query rows go to half first, and to the dimension order of the K
// fragments: within each 16-dimension slice, dimensions 4t .. 4t + 3 take the mma's k indices
// 2t, 2t + 1, 2t + 8, 2t + 9 (a thread's 4 consecutive bytes of a key row). A row of a bf16 model
// is multiplied by the power of two 2^e that brings its largest |value| into [2^14, 2^15):
// exact for every value of the row down to 2^-29 of its largest (smaller ones round as half
// subnormals, changing a score by under 2^-29 relative); row_scale[r] = 2^-e undoes it on the
// scores. fp16 rows are copied as they are (e = 0).
//
// Stages the 16 query rows q + r * row_stride (rows >= rows zero) into sq ([16][kRowPitch<D>] half,
// columns placed so that QueryFragments::load gives that order) and row_scale[16]; kThreads threads.
template <typename T, int D, int kThreads>
__device__ __forceinline__ void stage_query_fp8(__half* sq, float* row_scale, const T* q, int64_t row_stride,
                                                int rows, int thread) {
  constexpr int kPerRow = kThreads / 16;  // threads per row: consecutive lanes of one warp
  constexpr int kGroups = D / 4;          // 4-value groups per row
  constexpr int kMine = (kGroups + kPerRow - 1) / kPerRow;
  static_assert(kThreads % 16 == 0 && kPerRow <= 32, "rows are spread over whole lanes");
  const int r = thread / kPerRow, j = thread % kPerRow;
  const bool used = r < rows;
  uint2 words[kMine];
  float largest = 0.f;
#pragma unroll
  for (int i = 0; i < kMine; ++i) {
    const int group = j + i * kPerRow;
    words[i] = used && group < kGroups ? __ldg(reinterpret_cast<const uint2*>(q + r * row_stride + 4 * group))
                                       : make_uint2(0, 0);
    if constexpr (std::is_same_v<T, __nv_bfloat16>) {
      const float2 a = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&words[i].x));
      const float2 b = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&words[i].y));
      largest = fmaxf(largest, fmaxf(fmaxf(fabsf(a.x), fabsf(a.y)), fmaxf(fabsf(b.x), fabsf(b.y))));
    }
  }
  int e = 0;
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
#pragma unroll
    for (int offset = 1; offset < kPerRow; offset *= 2) {
      largest = fmaxf(largest, __shfl_xor_sync(0xffffffffu, largest, offset));
    }
    if (largest > 0.f && largest <= 3.4e38f) {  // else (zero, infinite, NaN) the row stays as it is
      int exponent;
      frexpf(largest, &exponent);  // largest < 2^exponent
      e = min(15 - exponent, 126);
    }
  }
  const float scale = __int_as_float((127 + e) << 23);  // 2^e (e >= 15 - 128)
  if (j == 0) row_scale[r] = __int_as_float((127 - e) << 23);
#pragma unroll
  for (int i = 0; i < kMine; ++i) {
    const int group = j + i * kPerRow;
    if (group >= kGroups) break;
    uint32_t h[2];
    if constexpr (std::is_same_v<T, __nv_bfloat16>) {
      const uint32_t pair[2] = {words[i].x, words[i].y};
#pragma unroll
      for (int k = 0; k < 2; ++k) {
        const float2 x = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&pair[k]));
        const __half2 y = __floats2half2_rn(x.x * scale, x.y * scale);
        h[k] = *reinterpret_cast<const uint32_t*>(&y);
      }
    } else {
      h[0] = words[i].x;
      h[1] = words[i].y;
    }
    // Dimensions 16c + 4t, + 1 at columns 16c + 2t, + 1; 16c + 4t + 2, + 3 at columns 16c + 8 + 2t, + 1.
    __half* row = sq + r * kRowPitch<D> + 16 * (group / 4) + 2 * (group % 4);
    *reinterpret_cast<uint32_t*>(row) = h[0];
    *reinterpret_cast<uint32_t*>(row + 8) = h[1];
  }
}

// One online-softmax step of a warp over 16 keys of an FP8 cache (attend_chunk16's contract), with
// the fragments converted in registers. sk, sv: byte tiles (fp8_tile_offset); the query fragments
// (q_regs, else sq) and row_scale come from stage_query_fp8; scale_lo / scale_hi: the score scales
// of rows g and g + 8 (log2 domain, their row_scale included). ldmatrix on the byte tiles, each
// 8 x 8 fragment of 16-bit units being 8 key rows x 16 bytes:
//  - K: thread (g, t) gets bytes 4t .. 4t + 3 of key g's chunk c, i.e. the B operand of slice c in
//    the dimension order of stage_query_fp8, two conversions and no moves;
//  - V, transposed: thread (g, t) gets bytes 2g, 2g + 1 of keys 2t and 2t + 1; one byte permute
//    gives (2g of both keys) and (2g + 1 of both keys), the B operands of two n-tiles that take the
//    even and the odd dimensions of the chunk. So st.o[2c][0..1] hold dimensions 16c + 4t and
//    16c + 4t + 2, st.o[2c + 1][0..1] dimensions 16c + 4t + 1 and + 3 (rows g; [2..3]: rows g + 8).
// Half-precision mmas throughout (probabilities in half: finer than bfloat16's).
template <int D, bool kCacheOrder>
__device__ __forceinline__ void attend_fp8_chunk16(const __half* sq, const QueryFragments<D>* q_regs,
                                                   const uint8_t* sk, const uint8_t* sv, int token0, int limit_lo,
                                                   int limit_hi, float scale_lo, float scale_hi,
                                                   WarpAttentionState<D>& st, int lane) {
  using Mma = MmaTraits<__half>;
  constexpr int kChunks = D / 16;
  float s[2][4];
#pragma unroll
  for (int n = 0; n < 2; ++n) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.f;
  // Lane l addresses row (l % 8) + 8 ((l / 8) % 2) of chunk c + l / 16: fragments (keys 0-7, c),
  // (keys 8-15, c), (keys 0-7, c + 1), (keys 8-15, c + 1).
  const int row = (lane & 7) + ((lane >> 3) & 1) * 8, next = lane >> 4;
  const __half* q_lane = sq + ((lane & 7) + ((lane >> 3) & 1) * 8) * kRowPitch<D> + (lane >> 4) * 8;
  auto query = [&](int c, uint32_t frag[4]) -> const uint32_t* {
    if (q_regs) return q_regs->a[c];
    ldmatrix_x4(frag, q_lane + c * 16);
    return frag;
  };
  auto key_step = [&](uint32_t bytes, float acc[4], const uint32_t* a) {
    uint32_t b0, b1;
    e4m3x4_to_half2x2(bytes, b0, b1);
    Mma::mma(acc, a, b0, b1);
  };
#pragma unroll
  for (int c = 0; c < kChunks; c += 2) {
    uint32_t b[4], qa[4], qb[4];
    if (c + 1 < kChunks) {
      ldmatrix_x4(b, sk + fp8_tile_offset<D, kCacheOrder>(row, c + next));
    } else {
      ldmatrix_x2(b, sk + fp8_tile_offset<D, kCacheOrder>(row, c));
    }
    const uint32_t* a = query(c, qa);
    key_step(b[0], s[0], a);
    key_step(b[1], s[1], a);
    if (c + 1 < kChunks) {
      const uint32_t* a1 = query(c + 1, qb);
      key_step(b[2], s[0], a1);
      key_step(b[3], s[1], a1);
    }
  }

  online_softmax_step<D>(s, token0, limit_lo, limit_hi, scale_lo, scale_hi, st, lane);
  uint32_t p[4];
  pack_probabilities<__half>(s, p);
  auto value_step = [&](uint32_t keys_lo, uint32_t keys_hi, int c) {
    uint32_t even_lo, odd_lo, even_hi, odd_hi;  // (keys 2t, 2t + 1) and (keys 2t + 8, 2t + 9)
    e4m3x4_to_half2x2(__byte_perm(keys_lo, 0, 0x3120), even_lo, odd_lo);
    e4m3x4_to_half2x2(__byte_perm(keys_hi, 0, 0x3120), even_hi, odd_hi);
    Mma::mma(st.o[2 * c], p, even_lo, even_hi);
    Mma::mma(st.o[2 * c + 1], p, odd_lo, odd_hi);
  };
#pragma unroll
  for (int c = 0; c < kChunks; c += 2) {
    uint32_t b[4];
    if (c + 1 < kChunks) {
      ldmatrix_x4_trans(b, sv + fp8_tile_offset<D, kCacheOrder>(row, c + next));
      value_step(b[0], b[1], c);
      value_step(b[2], b[3], c + 1);
    } else {
      ldmatrix_x2_trans(b, sv + fp8_tile_offset<D, kCacheOrder>(row, c));
      value_step(b[0], b[1], c);
    }
  }
}

// Eight e4m3 values (bytes in memory order) as eight T values, exactly (every e4m3 value, NaN
// included, is a half and a bfloat16 value; sm_89+ converts two per instruction). (Integer bit
// moves and a bf16x2 multiply instead of the conversions through half and float made W4 slower,
// 262 -> 282 us at 64 x 4096: bench/RESULTS.md.)
template <typename T>
__device__ __forceinline__ uint4 fp8x8_to(uint2 bytes) {
  uint32_t out[4];
  const uint32_t words[2] = {bytes.x, bytes.y};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const auto pair = static_cast<__nv_fp8x2_storage_t>(words[i / 2] >> (16 * (i % 2)));
    const __half2 h(__nv_cvt_fp8x2_to_halfraw2(pair, __NV_E4M3));
    if constexpr (std::is_same_v<T, __half>) {
      out[i] = *reinterpret_cast<const uint32_t*>(&h);
    } else {
      const __nv_bfloat162 b = __float22bfloat162_rn(__half22float2(h));
      out[i] = *reinterpret_cast<const uint32_t*>(&b);
    }
  }
  return make_uint4(out[0], out[1], out[2], out[3]);
}

// Converts a staged FP8 tile ([kRows][D] bytes) into a padded tile of T ([kRows][kRowPitch<D>]);
// rows at or past valid_rows become zero. kThreads threads share it, 8 values each per step
// (consecutive threads take consecutive 8-byte pieces of a row: conflict-free reads and writes).
template <typename T, int D, int kRows, int kThreads>
__device__ __forceinline__ void convert_fp8_tile(const uint8_t* staged, T* tile, int valid_rows, int thread) {
  constexpr int kPieces = D / 8;  // 8-value pieces per row
#pragma unroll 4
  for (int c = thread; c < kRows * kPieces; c += kThreads) {
    const int r = c / kPieces, piece = c % kPieces;
    uint4 value = make_uint4(0, 0, 0, 0);
    if (r < valid_rows) value = fp8x8_to<T>(*reinterpret_cast<const uint2*>(staged + r * D + piece * 8));
    *reinterpret_cast<uint4*>(tile + r * kRowPitch<D> + piece * 8) = value;
  }
}

}  // namespace pagedcore::cuda
