// bench_paged pool: throughput and per-operation latency of the block pool and block tables.
// Latency is measured over batches of kBatch operations (a clock read costs more than one
// operation), so "ns/op" percentiles are over batch means.
#include <cstdint>
#include <random>
#include <vector>

#include "bench_common.h"
#include "pagedcore/block_pool.h"
#include "pagedcore/block_tables.h"

namespace pagedcore::bench {
namespace {

constexpr int kBatch = 256;

struct OpTiming {
  std::vector<double> ns_per_op;  // one sample per batch
  int64_t ops = 0;
  double seconds = 0;
};

void add_result(Table& table, const std::string& name, const OpTiming& t) {
  const Summary s = summarize(t.ns_per_op);
  table.add_row({name, std::to_string(t.ops), fmt(t.ops / t.seconds / 1e6, 2), fmt(s.median, 1), fmt(s.p99, 1)});
}

// allocate every block, then release them all, repeatedly.
OpTiming time_allocate_release(int num_blocks, int block_size, int rounds) {
  BlockPool pool(num_blocks, block_size);
  std::vector<BlockId> held(num_blocks);
  OpTiming t;
  const auto start = Clock::now();
  for (int r = 0; r < rounds; ++r) {
    for (int i = 0; i < num_blocks; i += kBatch) {
      const auto b0 = Clock::now();
      const int n = std::min(kBatch, num_blocks - i);
      for (int j = 0; j < n; ++j) held[i + j] = *pool.allocate();
      for (int j = 0; j < n; ++j) pool.release(held[i + j]);
      t.ns_per_op.push_back(seconds_since(b0) * 1e9 / (2 * n));
      t.ops += 2 * n;
    }
  }
  t.seconds = seconds_since(start);
  return t;
}

// Decode-like appends: num_seqs sequences each grow one token at a time.
OpTiming time_decode_append(int num_blocks, int block_size, int num_seqs, int tokens_per_seq) {
  BlockTables tables(num_blocks, block_size);
  for (int s = 0; s < num_seqs; ++s) tables.add_sequence(s);
  std::vector<BlockCopy> copies;
  OpTiming t;
  const int32_t token = 7;
  const auto start = Clock::now();
  for (int step = 0; step < tokens_per_seq; ++step) {
    for (int s0 = 0; s0 < num_seqs; s0 += kBatch) {
      const auto b0 = Clock::now();
      const int n = std::min(kBatch, num_seqs - s0);
      for (int s = s0; s < s0 + n; ++s) {
        if (!tables.append(s, {&token, 1}, copies)) throw std::runtime_error("pool too small for the append bench");
      }
      t.ns_per_op.push_back(seconds_since(b0) * 1e9 / n);
      t.ops += n;
    }
  }
  t.seconds = seconds_since(start);
  return t;
}

// Fork a 1024-token sequence and free the child.
OpTiming time_fork_free(int num_blocks, int block_size, int rounds) {
  BlockTables tables(num_blocks, block_size);
  std::vector<int32_t> prompt(1024);
  for (size_t i = 0; i < prompt.size(); ++i) prompt[i] = static_cast<int32_t>(i);
  std::vector<BlockCopy> copies;
  tables.add_sequence(0);
  tables.append(0, prompt, copies);
  OpTiming t;
  const auto start = Clock::now();
  for (int r = 0; r < rounds; r += kBatch) {
    const auto b0 = Clock::now();
    for (int j = 0; j < kBatch; ++j) {
      tables.fork(0, 1);
      tables.free(1);
    }
    t.ns_per_op.push_back(seconds_since(b0) * 1e9 / kBatch);
    t.ops += kBatch;
  }
  t.seconds = seconds_since(start);
  return t;
}

// Prompts = one of 16 cached system prompts (1024 tokens) + a unique 64-token suffix; each op is
// match_prefix + free of a new sequence. Also reports looked-up tokens per second.
OpTiming time_prefix_lookup(int num_blocks, int block_size, int rounds, double* tokens_per_op) {
  BlockTables tables(num_blocks, block_size);
  std::mt19937 rng(0);
  std::uniform_int_distribution<int32_t> tok(0, 50000);
  const int kSystemPrompts = 16, kSystemLen = 1024, kSuffixLen = 64;
  std::vector<std::vector<int32_t>> prompts;
  std::vector<BlockCopy> copies;
  for (int p = 0; p < kSystemPrompts; ++p) {
    std::vector<int32_t> prompt(kSystemLen + kSuffixLen);
    for (auto& x : prompt) x = tok(rng);
    tables.add_sequence(-1 - p);
    tables.append(-1 - p, prompt, copies);  // registers the full blocks in the prefix cache
    tables.free(-1 - p);
    prompts.push_back(std::move(prompt));
  }
  OpTiming t;
  SeqId next = 0;
  const auto start = Clock::now();
  for (int r = 0; r < rounds; r += kBatch) {
    const auto b0 = Clock::now();
    for (int j = 0; j < kBatch; ++j) {
      std::vector<int32_t>& prompt = prompts[(r + j) % kSystemPrompts];
      prompt.back() = static_cast<int32_t>(r + j);  // unique suffix
      tables.add_sequence(next);
      if (tables.match_prefix(next, prompt) < kSystemLen) throw std::runtime_error("prefix bench missed the cache");
      tables.free(next++);
    }
    t.ns_per_op.push_back(seconds_since(b0) * 1e9 / kBatch);
    t.ops += kBatch;
  }
  t.seconds = seconds_since(start);
  *tokens_per_op = kSystemLen + kSuffixLen;
  return t;
}

}  // namespace

int run_pool_bench(const Flags& flags) {
  const bool json = flags.has("json");
  const int block_size = static_cast<int>(flags.get_int("block-size", 16));
  const int num_blocks = static_cast<int>(flags.get_int("num-blocks", 65536));
  Table table({"operation", "ops", "Mops/s", "median_ns_per_op", "p99_ns_per_op"});
  add_result(table, "allocate+release (1 block)", time_allocate_release(num_blocks, block_size, 20));
  add_result(table, "append 1 token (256 seqs)", time_decode_append(num_blocks, block_size, 256, 2048));
  add_result(table, "fork+free (1024-token seq)", time_fork_free(num_blocks, block_size, 65536));
  double tokens_per_op = 0;
  const OpTiming lookup = time_prefix_lookup(num_blocks, block_size, 65536, &tokens_per_op);
  add_result(table, "prefix match+free (1088-token prompt)", lookup);
  table.print(json, "bench_paged pool (block_size=" + std::to_string(block_size) +
                        ", num_blocks=" + std::to_string(num_blocks) + ")");
  if (!json) {
    std::printf("prefix lookup: %.1f M prompt tokens/s\n", lookup.ops * tokens_per_op / lookup.seconds / 1e6);
  }
  return 0;
}

}  // namespace pagedcore::bench
