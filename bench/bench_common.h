// Shared plumbing of bench_paged: timing statistics, command-line flags, table and JSON output.
#pragma once

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <initializer_list>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

#include "pagedcore/kernels.h"

namespace pagedcore::bench {

using Clock = std::chrono::steady_clock;

inline double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// Median / p99 / mean of samples (any unit).
struct Summary {
  double median = 0, p99 = 0, mean = 0;
  size_t count = 0;
};

inline Summary summarize(std::vector<double> samples) {
  Summary s;
  s.count = samples.size();
  if (samples.empty()) return s;
  std::sort(samples.begin(), samples.end());
  s.median = samples[samples.size() / 2];
  s.p99 = samples[std::min(samples.size() - 1, static_cast<size_t>(samples.size() * 0.99))];
  double sum = 0;
  for (double v : samples) sum += v;
  s.mean = sum / samples.size();
  return s;
}

// "--name value" and "--flag" options after the mode word.
class Flags {
 public:
  Flags(int argc, char** argv, int first) {
    for (int i = first; i < argc; ++i) {
      std::string a = argv[i];
      if (a.rfind("--", 0) != 0) throw std::invalid_argument("unexpected argument '" + a + "'");
      if (i + 1 < argc && std::string(argv[i + 1]).rfind("--", 0) != 0) values_[a.substr(2)] = argv[++i];
      else values_[a.substr(2)] = "";
    }
  }
  bool has(const std::string& name) const { return values_.count(name) != 0; }
  // Throws naming the first option not in `known` (a mistyped option is refused, never ignored).
  void allow_only(std::initializer_list<const char*> known, const std::string& mode) const {
    for (const auto& [name, value] : values_) {
      bool found = false;
      for (const char* k : known) found = found || name == k;
      if (!found) {
        std::string list;
        for (const char* k : known) list += std::string(list.empty() ? "" : ", ") + "--" + k;
        throw std::invalid_argument("unknown option --" + name + " for " + mode + "; known: " + list);
      }
    }
  }
  std::string get(const std::string& name, const std::string& fallback) const {
    auto it = values_.find(name);
    return it == values_.end() ? fallback : it->second;
  }
  long get_int(const std::string& name, long fallback) const {
    auto it = values_.find(name);
    if (it == values_.end()) return fallback;
    try {
      return std::stol(it->second);
    } catch (const std::exception&) {
      throw std::invalid_argument("--" + name + " needs an integer, got '" + it->second + "'");
    }
  }

 private:
  std::map<std::string, std::string> values_;
};

// A result table printed either aligned for people or as JSON (an array of row objects).
class Table {
 public:
  explicit Table(std::vector<std::string> columns) : columns_(std::move(columns)) {}
  void add_row(std::vector<std::string> cells) { rows_.push_back(std::move(cells)); }

  void print(bool json, const std::string& title) const {
    if (json) {
      std::printf("{\"benchmark\": \"%s\", \"rows\": [", title.c_str());
      for (size_t r = 0; r < rows_.size(); ++r) {
        std::printf("%s{", r ? ", " : "");
        for (size_t c = 0; c < columns_.size(); ++c) {
          const std::string& v = rows_[r][c];
          const bool numeric = !v.empty() && v.find_first_not_of("0123456789.-e+") == std::string::npos;
          std::printf("%s\"%s\": %s%s%s", c ? ", " : "", columns_[c].c_str(), numeric ? "" : "\"", v.c_str(),
                      numeric ? "" : "\"");
        }
        std::printf("}");
      }
      std::printf("]}\n");
      return;
    }
    std::vector<size_t> width(columns_.size());
    for (size_t c = 0; c < columns_.size(); ++c) {
      width[c] = columns_[c].size();
      for (const auto& row : rows_) width[c] = std::max(width[c], row[c].size());
    }
    std::printf("%s\n", title.c_str());
    auto line = [&](const std::vector<std::string>& cells) {
      for (size_t c = 0; c < cells.size(); ++c) std::printf(c ? "  %*s" : "%-*s", static_cast<int>(width[c]), cells[c].c_str());
      std::printf("\n");
    };
    line(columns_);
    for (const auto& row : rows_) line(row);
  }

 private:
  std::vector<std::string> columns_;
  std::vector<std::vector<std::string>> rows_;
};

inline std::string fmt(double v, int precision = 1) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", precision, v);
  return buf;
}

// The decode batch of workload W4 as paged-attention arguments: batch sequences of one query token
// each, all `context` tokens long; q and out [batch, num_heads, head_dim] contiguous; block tables
// [batch, blocks_per_seq]. Used by `bench_paged attention`.
struct DecodeBatch {
  DType dtype;
  DType cache_dtype;  // dtype, or kFloat8E4M3 (k_scale = v_scale = 1)
  int batch, context, num_heads, num_kv_heads, head_dim, block_size;
  int64_t num_blocks;
  const void* q;
  void* out;
  const void* k_cache;
  const void* v_cache;
  const int32_t* block_tables;
  const int32_t* context_lens;
  const int32_t* query_start_loc;
};

// The step of a decode batch (one query row per sequence) and its only layer.
inline AttentionStep decode_step(const DecodeBatch& b, int num_splits, void* workspace, size_t workspace_bytes) {
  const int blocks_per_seq = (b.context + b.block_size - 1) / b.block_size;
  AttentionStep a{};
  a.dtype = b.dtype;
  a.cache_dtype = b.cache_dtype;
  a.num_seqs = b.batch;
  a.num_tokens = b.batch;
  a.num_heads = b.num_heads;
  a.num_kv_heads = b.num_kv_heads;
  a.head_dim = b.head_dim;
  a.block_size = b.block_size;
  a.num_blocks = b.num_blocks;
  a.block_tables = b.block_tables;
  a.block_tables_stride = blocks_per_seq;
  a.max_blocks_per_seq = blocks_per_seq;
  a.context_lens = b.context_lens;
  a.query_start_loc = b.query_start_loc;
  a.scale = 1.f / std::sqrt(static_cast<float>(b.head_dim));
  a.max_query_len = 1;
  a.max_context_len = b.context;
  a.num_splits = num_splits;
  a.workspace = workspace;
  a.workspace_bytes = workspace_bytes;
  return a;
}

inline AttentionLayer decode_layer(const DecodeBatch& b) {
  const int64_t row = int64_t{b.num_heads} * b.head_dim;
  return AttentionLayer{b.q, row, b.head_dim, b.k_cache, b.v_cache, b.out, row, b.head_dim};
}

int run_pool_bench(const Flags& flags);
int run_scheduler_bench(const Flags& flags);
// Defined in bench_attention.cu, compiled only with CUDA.
int run_attention_bench(const Flags& flags);

}  // namespace pagedcore::bench
