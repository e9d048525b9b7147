// CPU paged attention for mixed decode / prefill batches (float32 and bfloat16 storage, float
// arithmetic). Work item = (sequence, KV head, chunk of query rows): every K/V row a work item
// reads is converted once and used by all query heads of that KV head.
#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "cpu_dtype.h"
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
};

// T: q / out elements; C: cache elements (T, or Float8E4M3 read times the layer's k / v scale).
template <typename T, typename C>
void attend_work_item(const AttentionParams& a, const WorkItem& w, std::vector<float>& scratch) {
  const int D = a.head_dim;
  const int G = a.num_heads / a.num_kv_heads;
  const int ctx = a.context_lens[w.seq];
  const int row0 = a.query_start_loc[w.seq];
  const int qlen = a.query_start_loc[w.seq + 1] - row0;
  const int32_t* table = a.block_tables + w.seq * a.block_tables_stride;
  const C* k_cache = static_cast<const C*>(a.k_cache);
  const C* v_cache = static_cast<const C*>(a.v_cache);
  const int64_t head_block = static_cast<int64_t>(a.block_size) * D;

  // scratch: q [G, D] | scores [G, ctx] | acc [G, D] | kv row [D]
  scratch.resize(static_cast<size_t>(G) * D * 2 + static_cast<size_t>(G) * ctx + D);
  float* q = scratch.data();
  float* scores = q + G * D;
  float* acc = scores + static_cast<size_t>(G) * ctx;
  float* row = acc + G * D;

  // Calls fn(t, row) for keys t = 0 .. num_keys - 1 with row = the key's [D] values as float: the
  // block table is walked block by block (no division per key) and float caches are read in place.
  auto for_each_row = [&](const C* cache, float cache_scale, int num_keys, auto&& fn) {
    for (int first = 0, b = 0; first < num_keys; first += a.block_size, ++b) {
      const C* block_rows = cache + (static_cast<int64_t>(table[b]) * a.num_kv_heads + w.kv_head) * head_block;
      const int rows = std::min(a.block_size, num_keys - first);
      for (int i = 0; i < rows; ++i) {
        const C* src = block_rows + static_cast<int64_t>(i) * D;
        if constexpr (std::is_same_v<C, float>) {
          fn(first + i, src);
        } else if constexpr (std::is_same_v<C, cpu::Float8E4M3>) {
          for (int d = 0; d < D; ++d) row[d] = cpu::to_float(src[d]) * cache_scale;
          fn(first + i, static_cast<const float*>(row));
        } else {
          for (int d = 0; d < D; ++d) row[d] = cpu::to_float(src[d]);
          fn(first + i, static_cast<const float*>(row));
        }
      }
    }
  };

  for (int r = w.first_row; r < w.first_row + w.num_rows; ++r) {
    const int token = row0 + r;
    const int num_keys = ctx - qlen + r + 1;  // causal: keys [0, position]
    for (int g = 0; g < G; ++g) {
      const T* src = static_cast<const T*>(a.q) + token * a.q_stride_token + (w.kv_head * G + g) * a.q_stride_head;
      for (int d = 0; d < D; ++d) q[g * D + d] = cpu::to_float(src[d]) * a.scale;
    }
    for_each_row(k_cache, a.k_scale, num_keys, [&](int t, const float* k) {
      for (int g = 0; g < G; ++g) {
        const float* qg = q + g * D;
        float dot = 0.f;
        // A reduction vectorizes only when the compiler may reorder the sum: allowed here (the
        // float64 reference tests bound the error), which makes the dot products SIMD.
#pragma omp simd reduction(+ : dot)
        for (int d = 0; d < D; ++d) dot += qg[d] * k[d];
        scores[static_cast<size_t>(g) * ctx + t] = dot;
      }
    });
    for (int g = 0; g < G; ++g) {
      float* s = scores + static_cast<size_t>(g) * ctx;
      float max_score = -std::numeric_limits<float>::infinity();
      for (int t = 0; t < num_keys; ++t) max_score = std::max(max_score, s[t]);
      float sum = 0.f;
      for (int t = 0; t < num_keys; ++t) {
        s[t] = std::exp(s[t] - max_score);
        sum += s[t];
      }
      const float inv = 1.f / sum;
      for (int t = 0; t < num_keys; ++t) s[t] *= inv;
    }
    std::fill(acc, acc + G * D, 0.f);
    for_each_row(v_cache, a.v_scale, num_keys, [&](int t, const float* v) {
      for (int g = 0; g < G; ++g) {
        const float p = scores[static_cast<size_t>(g) * ctx + t];
        float* ag = acc + g * D;
        for (int d = 0; d < D; ++d) ag[d] += p * v[d];
      }
    });
    for (int g = 0; g < G; ++g) {
      T* dst = static_cast<T*>(a.out) + token * a.out_stride_token + (w.kv_head * G + g) * a.out_stride_head;
      for (int d = 0; d < D; ++d) dst[d] = cpu::from_float<T>(acc[g * D + d]);
    }
  }
}

template <typename T, typename C>
void run(const AttentionParams& a) {
  std::vector<WorkItem> items;
  for (int s = 0; s < a.num_seqs; ++s) {
    const int qlen = a.query_start_loc[s + 1] - a.query_start_loc[s];
    for (int h = 0; h < a.num_kv_heads; ++h) {
      for (int r = 0; r < qlen; r += kRowsPerWorkItem) items.push_back({s, h, r, std::min(kRowsPerWorkItem, qlen - r)});
    }
  }
  // Long rows first so the tail of the parallel loop is short.
  std::stable_sort(items.begin(), items.end(), [&](const WorkItem& x, const WorkItem& y) {
    return static_cast<int64_t>(a.context_lens[x.seq]) * x.num_rows > static_cast<int64_t>(a.context_lens[y.seq]) * y.num_rows;
  });
  cpu::parallel_for(static_cast<int64_t>(items.size()), [&](int64_t i) {
    thread_local std::vector<float> scratch;
    attend_work_item<T, C>(a, items[i], scratch);
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
