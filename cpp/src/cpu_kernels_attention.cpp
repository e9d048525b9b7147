// CPU paged attention for mixed decode / prefill batches (float32, bfloat16 and FP8 e4m3 caches,
// float arithmetic). Work item = (sequence, KV head, chunk of query rows), or a decode row with all
// its KV heads: every K/V row a work item reads is converted once and used by all query heads of
// that KV head. The work-item kernels are built in three variants (baseline x86-64, AVX2, AVX-512;
// cpu_isa.h) over 16-lane vectors of the variant's register width, bit-identical to each other.
#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "cpu_dtype.h"
#include "cpu_isa.h"
#include "cpu_math.h"
#include "cpu_thread_pool.h"
#include "pagedcore/kernels.h"
#include "pagedcore/supported.h"

namespace pagedcore {
namespace {

constexpr int kRowsPerWorkItem = 16;

struct WorkItem {
  int seq;
  int kv_head;
  int first_row;  // query row within the sequence
  int num_rows;
  int kv_heads = 1;  // KV heads kv_head .. kv_head + kv_heads - 1 (attend_two_pass; 1 for attend_tiles)
};

constexpr int kTile = 16;  // keys at a time, and head-dimension columns at a time: one cpu::Lanes16
static_assert(kTile == 16, "the tile loops and cpu::dot are written for 16-lane vectors");
// Work items of up to this many queries per KV head (decode: one row's group of heads) take
// attend_two_pass.
constexpr int kMaxQueriesTwoPass = 8;
// The kernels walk the head dimension 16 floats at a time.
static_assert(std::all_of(kSupportedHeadSizes.begin(), kSupportedHeadSizes.end(), [](int d) { return d % kTile == 0; }),
              "every supported head size is a multiple of the tile width");

// out[0..D) = out * correction + sum over j < count of p[j] * rows[j][0..D): 16 columns at a time in
// a vector accumulator that stays in registers across the rows (accumulating into memory row by row
// waited on a store and a load per 4 floats and key).
template <typename V>
PAGEDCORE_VEC_INLINE void scale_and_accumulate(float* out, float correction, const float* p, const float* const* rows,
                                               int count, int D) {
  using L = cpu::Lanes16<V>;
  const L corr = L::broadcast(correction);
  for (int d0 = 0; d0 < D; d0 += kTile) {
    L o = L::load(out + d0) * corr;
    for (int j = 0; j < count; ++j) o += L::broadcast(p[j]) * L::load(rows[j] + d0);
    o.store(out + d0);
  }
}

// Work items of few queries (decode rows of up to kMaxQueriesTwoPass heads per KV head): two passes
// over the keys, K's rows read as they lie: all scores, the softmax, then V. Faster there than the
// tiles below when the cache is larger than the CPU's caches, and faster again with all of a row's
// KV heads in one item (bench/RESULTS.md, "W5 on the CPU").
// V: the variant's register width (cpu_math.h's Lanes16).
template <typename V, typename T, typename C>
PAGEDCORE_VEC_INLINE void attend_two_pass(const AttentionParams& a, const WorkItem& w, std::vector<float>& scratch) {
  const int D = a.head_dim;
  const int G = a.num_heads / a.num_kv_heads;
  const int Q = w.kv_heads * G;  // query heads of the item: (KV head of the item, group member)
  const int ctx = a.context_lens[w.seq];
  const int row0 = a.query_start_loc[w.seq];
  const int qlen = a.query_start_loc[w.seq + 1] - row0;
  const int32_t* table = a.block_tables + w.seq * a.block_tables_stride;
  const C* k_cache = static_cast<const C*>(a.k_cache);
  const C* v_cache = static_cast<const C*>(a.v_cache);
  const int64_t head_block = static_cast<int64_t>(a.block_size) * D;

  // scratch: q [Q, D] | scores [Q, ctx] | acc [Q, D] | kTile converted rows [kTile, D]
  scratch.resize(static_cast<size_t>(Q) * D * 2 + static_cast<size_t>(Q) * ctx + static_cast<size_t>(kTile) * D);
  float* q = scratch.data();
  float* scores = q + static_cast<size_t>(Q) * D;
  float* acc = scores + static_cast<size_t>(Q) * ctx;
  float* converted = acc + static_cast<size_t>(Q) * D;

  // Calls fn(h, first, count, rows) for the item's KV heads h (0-based) and keys in chunks of up to
  // kTile rows within a block, rows[j] = key first + j's [D] values as float: float caches read in
  // place, others converted into `converted` (an FP8 cache's values times `scale`). The block table
  // is walked block by block, and within a block the heads in order: an item of all KV heads reads
  // each block's bytes front to back.
  auto for_each_chunk = [&](const C* cache, float scale, int num_keys, auto&& fn) {
    const float* rows[kTile];
    for (int first = 0, b = 0; first < num_keys; first += a.block_size, ++b) {
      const int in_block = std::min(a.block_size, num_keys - first);
      for (int h = 0; h < w.kv_heads; ++h) {
        const C* block_rows = cache + (static_cast<int64_t>(table[b]) * a.num_kv_heads + w.kv_head + h) * head_block;
        for (int i0 = 0; i0 < in_block; i0 += kTile) {
          const int count = std::min(kTile, in_block - i0);
          for (int j = 0; j < count; ++j) {
            const C* src = block_rows + static_cast<int64_t>(i0 + j) * D;
            if constexpr (std::is_same_v<C, float>) {
              rows[j] = src;
            } else {
              float* dst = converted + static_cast<size_t>(j) * D;
              const float factor = std::is_same_v<C, cpu::Float8E4M3> ? scale : 1.f;
              for (int d = 0; d < D; ++d) dst[d] = cpu::to_float(src[d]) * factor;
              rows[j] = dst;
            }
          }
          fn(h, first + i0, count, static_cast<const float* const*>(rows));
        }
      }
    }
  };

  for (int r = w.first_row; r < w.first_row + w.num_rows; ++r) {
    const int token = row0 + r;
    const int num_keys = ctx - qlen + r + 1;  // causal: keys [0, position]
    for (int i = 0; i < Q; ++i) {
      const T* src = static_cast<const T*>(a.q) + token * a.q_stride_token + (w.kv_head * G + i) * a.q_stride_head;
      for (int d = 0; d < D; ++d) q[static_cast<size_t>(i) * D + d] = cpu::to_float(src[d]) * a.scale;
    }
    for_each_chunk(k_cache, a.k_scale, num_keys, [&](int h, int first, int count, const float* const* rows) {
      for (int j = 0; j < count; ++j) {
        for (int i = h * G; i < (h + 1) * G; ++i) {
          scores[static_cast<size_t>(i) * ctx + first + j] = cpu::dot<V>(q + static_cast<size_t>(i) * D, rows[j], D);
        }
      }
    });
    for (int i = 0; i < Q; ++i) {
      float* s = scores + static_cast<size_t>(i) * ctx;
      float max_score = -std::numeric_limits<float>::infinity();
#pragma omp simd reduction(max : max_score)
      for (int t = 0; t < num_keys; ++t) max_score = std::max(max_score, s[t]);
#pragma omp simd
      for (int t = 0; t < num_keys; ++t) s[t] = cpu::exp_shifted(s[t] - max_score);
      const float inv = 1.f / cpu::sum<V>(s, num_keys);  // a fixed order: the same in every variant
      for (int t = 0; t < num_keys; ++t) s[t] *= inv;
    }
    std::fill(acc, acc + static_cast<size_t>(Q) * D, 0.f);
    for_each_chunk(v_cache, a.v_scale, num_keys, [&](int h, int first, int count, const float* const* rows) {
      for (int i = h * G; i < (h + 1) * G; ++i) {
        scale_and_accumulate<V>(acc + static_cast<size_t>(i) * D, 1.f, scores + static_cast<size_t>(i) * ctx + first, rows,
                             count, D);
      }
    });
    for (int i = 0; i < Q; ++i) {
      T* dst = static_cast<T*>(a.out) + token * a.out_stride_token + (w.kv_head * G + i) * a.out_stride_head;
      for (int d = 0; d < D; ++d) dst[d] = cpu::from_float<T>(acc[static_cast<size_t>(i) * D + d]);
    }
  }
}

// Work items of more queries (prefill): keys are taken kTile at a time (a tile may span several
// blocks). K's tile is stored transposed, [D][kTile], so a query's kTile scores are kTile independent
// sums vectorized across the keys (no horizontal reduction per key), and each query keeps a running
// max, sum and output (online softmax: one pass over K and V).
// T: q / out elements; C: cache elements (T, or Float8E4M3 read times the layer's k / v scale).
template <typename V, typename T, typename C>
PAGEDCORE_VEC_INLINE void attend_tiles(const AttentionParams& a, const WorkItem& w, std::vector<float>& scratch) {
  const int D = a.head_dim;
  const int G = a.num_heads / a.num_kv_heads;
  const int NQ = w.num_rows * G;  // query vectors of this item: row-major (row, group member)
  const int ctx = a.context_lens[w.seq];
  const int row0 = a.query_start_loc[w.seq];
  const int qlen = a.query_start_loc[w.seq + 1] - row0;
  const int32_t* table = a.block_tables + w.seq * a.block_tables_stride;
  const int64_t head_block = static_cast<int64_t>(a.block_size) * D;

  // scratch: q [NQ, D] | acc [NQ, D] | max, sum [NQ] | K tile [D, kTile] | V tile [kTile, D]
  scratch.resize(static_cast<size_t>(NQ) * (2 * D + 2) + 2 * static_cast<size_t>(kTile) * D);
  float* q = scratch.data();
  float* acc = q + static_cast<size_t>(NQ) * D;
  float* run_max = acc + static_cast<size_t>(NQ) * D;
  float* run_sum = run_max + NQ;
  float* k_tile = run_sum + NQ;
  float* v_tile = k_tile + static_cast<size_t>(kTile) * D;

  // The softmax scale and K's scale (FP8; 1 otherwise) fold into q; V's scale into the final division.
  const float q_scale = a.scale * a.k_scale;
  for (int r = 0; r < w.num_rows; ++r) {
    const int token = row0 + w.first_row + r;
    for (int g = 0; g < G; ++g) {
      const T* src = static_cast<const T*>(a.q) + token * a.q_stride_token + (w.kv_head * G + g) * a.q_stride_head;
      float* dst = q + static_cast<size_t>(r * G + g) * D;
      for (int d = 0; d < D; ++d) dst[d] = cpu::to_float(src[d]) * q_scale;
    }
  }
  std::fill(acc, acc + static_cast<size_t>(NQ) * D, 0.f);
  std::fill(run_max, run_max + NQ, -std::numeric_limits<float>::infinity());
  std::fill(run_sum, run_sum + NQ, 0.f);

  // Causal: row r of the item sees keys [0, first_key_limit + r).
  const int first_key_limit = ctx - qlen + w.first_row + 1;
  const int num_keys = first_key_limit + w.num_rows - 1;
  const C* cache_k = static_cast<const C*>(a.k_cache);
  const C* cache_v = static_cast<const C*>(a.v_cache);
  auto row_of = [&](const C* cache, int t) {
    return cache + (static_cast<int64_t>(table[t / a.block_size]) * a.num_kv_heads + w.kv_head) * head_block +
           static_cast<int64_t>(t % a.block_size) * D;
  };
  // Blocks sit anywhere in the pool, so the hardware prefetcher stops at each one: the rows of the
  // tile after next are requested while this one is computed.
  auto prefetch_tile = [&](int t0) {
    for (int t = t0, end = std::min(num_keys, t0 + kTile); t < end; ++t) {
      const char* k = reinterpret_cast<const char*>(row_of(cache_k, t));
      const char* v = reinterpret_cast<const char*>(row_of(cache_v, t));
      for (size_t off = 0; off < D * sizeof(C); off += 64) {
        __builtin_prefetch(k + off);
        __builtin_prefetch(v + off);
      }
    }
  };
  prefetch_tile(0);
  prefetch_tile(kTile);
  const float* v_rows[kTile];
  for (int t0 = 0; t0 < num_keys; t0 += kTile) {
    const int width = std::min(kTile, num_keys - t0);
    prefetch_tile(t0 + 2 * kTile);
    // K tile transposed and V rows as float; lanes past `width` are zero (never read from the cache:
    // slots past the context may hold anything).
    for (int j = 0; j < kTile; ++j) {
      if (j >= width) {
        for (int d = 0; d < D; ++d) k_tile[d * kTile + j] = 0.f;
        continue;
      }
      const C* k = row_of(cache_k, t0 + j);
      const C* v = row_of(cache_v, t0 + j);
      for (int d = 0; d < D; ++d) k_tile[d * kTile + j] = cpu::to_float(k[d]);
      if constexpr (std::is_same_v<C, float>) {
        v_rows[j] = v;  // read in place
      } else {
        float* row = v_tile + static_cast<size_t>(j) * D;
        for (int d = 0; d < D; ++d) row[d] = cpu::to_float(v[d]);
        v_rows[j] = row;
      }
    }
    for (int r = 0; r < w.num_rows; ++r) {
      const int valid = std::min(width, first_key_limit + r - t0);  // this row's keys in the tile
      if (valid <= 0) continue;
      for (int g = 0; g < G; ++g) {
        const int i = r * G + g;
        const float* qi = q + static_cast<size_t>(i) * D;
        using L = cpu::Lanes16<V>;
        L scores = L::zero();  // the tile's 16 keys, one per lane
        for (int d = 0; d < D; ++d) scores += L::broadcast(qi[d]) * L::load(k_tile + d * kTile);
        float s[kTile];
        scores.store(s);
        // Keys past this row's last one (causal) or the tile's end weigh exp(-inf) = 0.
        for (int j = valid; j < kTile; ++j) s[j] = -std::numeric_limits<float>::infinity();
        float tile_max = -std::numeric_limits<float>::infinity();
#pragma omp simd reduction(max : tile_max)
        for (int j = 0; j < kTile; ++j) tile_max = std::max(tile_max, s[j]);
        const float new_max = std::max(run_max[i], tile_max);
        // exp(-inf - new_max) = 0 for the first tile; a NaN score makes the output NaN, as it should.
        const float correction = cpu::exp_shifted(run_max[i] - new_max);
#pragma omp simd
        for (int j = 0; j < kTile; ++j) s[j] = cpu::exp_shifted(s[j] - new_max);
        const float p_sum = cpu::reduce_add(L::load(s));
        run_max[i] = new_max;
        run_sum[i] = run_sum[i] * correction + p_sum;
        float* ai = acc + static_cast<size_t>(i) * D;
        scale_and_accumulate<V>(ai, correction, s, v_rows, valid, D);
      }
    }
  }
  for (int r = 0; r < w.num_rows; ++r) {
    const int token = row0 + w.first_row + r;
    for (int g = 0; g < G; ++g) {
      const int i = r * G + g;
      const float inv = a.v_scale / run_sum[i];
      T* dst = static_cast<T*>(a.out) + token * a.out_stride_token + (w.kv_head * G + g) * a.out_stride_head;
      for (int d = 0; d < D; ++d) dst[d] = cpu::from_float<T>(acc[static_cast<size_t>(i) * D + d] * inv);
    }
  }
}

// The work-item kernels as cpu::Variants kernels (one build per instruction set, cpu_isa.h).
template <typename V, typename T, typename C>
struct TwoPassItem {
  static PAGEDCORE_VEC_INLINE void run(const AttentionParams& a, const WorkItem& w, std::vector<float>* scratch) {
    attend_two_pass<V, T, C>(a, w, *scratch);
  }
};
template <typename V, typename T, typename C>
struct TilesItem {
  static PAGEDCORE_VEC_INLINE void run(const AttentionParams& a, const WorkItem& w, std::vector<float>* scratch) {
    attend_tiles<V, T, C>(a, w, *scratch);
  }
};

template <typename T, typename C>
void run(const AttentionParams& a) {
  const cpu::Isa isa = cpu::isa();
  const auto two_pass = cpu::Variants<TwoPassItem, T, C>::template pick<const AttentionParams&, const WorkItem&,
                                                                         std::vector<float>*>(isa);
  const auto tiles = cpu::Variants<TilesItem, T, C>::template pick<const AttentionParams&, const WorkItem&,
                                                                   std::vector<float>*>(isa);
  std::vector<WorkItem> items;
  // A decode row takes all its KV heads in one item (its blocks read front to back) when there are
  // enough sequences to keep every thread busy.
  const bool whole_decode_rows = a.num_heads / a.num_kv_heads <= kMaxQueriesTwoPass &&
                                 a.num_seqs >= 2 * cpu::num_threads();
  for (int s = 0; s < a.num_seqs; ++s) {
    const int qlen = a.query_start_loc[s + 1] - a.query_start_loc[s];
    if (qlen == 1 && whole_decode_rows) {
      items.push_back({s, 0, 0, 1, a.num_kv_heads});
      continue;
    }
    for (int h = 0; h < a.num_kv_heads; ++h) {
      for (int r = 0; r < qlen; r += kRowsPerWorkItem) items.push_back({s, h, r, std::min(kRowsPerWorkItem, qlen - r)});
    }
  }
  // Long rows first so the tail of the parallel loop is short.
  std::stable_sort(items.begin(), items.end(), [&](const WorkItem& x, const WorkItem& y) {
    auto work = [&](const WorkItem& w) {
      return static_cast<int64_t>(a.context_lens[w.seq]) * w.num_rows * w.kv_heads;
    };
    return work(x) > work(y);
  });
  cpu::parallel_for(static_cast<int64_t>(items.size()), [&](int64_t i) {
    thread_local std::vector<float> scratch;
    const WorkItem& w = items[i];
    if (w.kv_heads > 1 || w.num_rows * (a.num_heads / a.num_kv_heads) <= kMaxQueriesTwoPass) {
      two_pass(a, w, &scratch);
    } else {
      tiles(a, w, &scratch);
    }
  });
}

}  // namespace

// Checks the host-visible batch description; the CPU path can afford to look at every id.
void check_attention_batch_cpu(const AttentionParams& a) {
  if (a.query_start_loc[0] != 0) throw std::invalid_argument("query_start_loc[0] must be 0");
  if (a.query_start_loc[a.num_seqs] != a.num_tokens) {
    throw std::invalid_argument("query_start_loc[num_seqs] (" + std::to_string(a.query_start_loc[a.num_seqs]) +
                                ") must equal num_tokens (" + std::to_string(a.num_tokens) + ")");
  }
  for (int s = 0; s < a.num_seqs; ++s) {
    const int qlen = a.query_start_loc[s + 1] - a.query_start_loc[s];
    const int ctx = a.context_lens[s];
    if (qlen < 0) throw std::invalid_argument("query_start_loc must be non-decreasing");
    if (ctx < qlen) {
      throw std::invalid_argument("context_lens[" + std::to_string(s) + "] = " + std::to_string(ctx) +
                                  " is smaller than its query length " + std::to_string(qlen));
    }
    const int64_t blocks = (static_cast<int64_t>(ctx) + a.block_size - 1) / a.block_size;
    if (blocks > a.max_blocks_per_seq) {
      throw std::invalid_argument("context_lens[" + std::to_string(s) + "] = " + std::to_string(ctx) +
                                  " needs " + std::to_string(blocks) + " blocks; block_tables has " +
                                  std::to_string(a.max_blocks_per_seq) + " per sequence");
    }
    for (int64_t b = 0; b < blocks; ++b) {
      const int32_t id = a.block_tables[s * a.block_tables_stride + b];
      if (id < 0 || id >= a.num_blocks) {
        throw std::out_of_range("block_tables[" + std::to_string(s) + ", " + std::to_string(b) + "] = " +
                                std::to_string(id) + " outside [0, " + std::to_string(a.num_blocks) + ")");
      }
    }
  }
}

void paged_attention_cpu(const AttentionParams& a) {
  if (a.num_seqs == 0 || a.num_tokens == 0) return;
  const bool fp8 = a.cache_dtype == DType::kFloat8E4M3;
  if (a.dtype == DType::kFloat32) {
    if (fp8) run<float, cpu::Float8E4M3>(a);
    else run<float, float>(a);
  } else {
    if (fp8) run<cpu::BFloat16, cpu::Float8E4M3>(a);
    else run<cpu::BFloat16, cpu::BFloat16>(a);
  }
}

}  // namespace pagedcore
