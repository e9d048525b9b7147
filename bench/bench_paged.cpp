// bench_paged: native benchmarks of pagedcore, linking the static library (no Python).
//   bench_paged pool [--json] [--block-size 16] [--num-blocks 65536]
//   bench_paged scheduler [--json] [--block-size 16] [--steps 2000]
//   bench_paged attention [--json] [--block-size 16] [--reps 50] [--warmup 5] [--num-splits N] [--contiguous-tables]
//                         [--kv-cache-dtype bf16|fp8]  (CUDA builds)
#include <cstdio>
#include <cstring>
#include <exception>
#include <string>

#include "bench_common.h"

namespace {

void usage() {
  std::printf(
      "usage: bench_paged MODE [--json] [options]\n"
      "modes:\n"
      "  pool    block pool: allocate/free, append, fork, prefix lookup (ops/s, ns/op)\n"
      "  scheduler  step() + commit() latency with 64, 256, 1024 decoding sequences, synchronous and overlapped\n"
      "  attention  W4 decode paged attention (GB/s, fraction of measured read bandwidth; CUDA)\n"
      "options:\n"
      "  --json            print the results as JSON instead of a table\n"
      "  --block-size N    tokens per KV block (pool; default 16)\n"
      "  --num-blocks N    blocks in the pool (pool; default 65536)\n"
      "  --reps N          timed sweeps per shape, median reported (attention; default 50)\n"
      "  --warmup N        untimed sweeps first (attention; default 5)\n"
      "  --num-splits N    force the split-KV count (attention; default: recommended)\n"
      "  --contiguous-tables  blocks in order instead of shuffled (attention; a control)\n"
      "  --kv-cache-dtype D   bf16 (default) or fp8: e4m3 K and V, half the bytes (attention)\n");
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || std::strcmp(argv[1], "--help") == 0 || std::strcmp(argv[1], "-h") == 0) {
    usage();
    return argc < 2 ? 2 : 0;
  }
  const std::string mode = argv[1];
  try {
    pagedcore::bench::Flags flags(argc, argv, 2);
    if (mode == "pool") {
      flags.allow_only({"json", "block-size", "num-blocks"}, "pool");
      return pagedcore::bench::run_pool_bench(flags);
    }
    if (mode == "scheduler") {
      flags.allow_only({"json", "block-size", "steps"}, "scheduler");
      return pagedcore::bench::run_scheduler_bench(flags);
    }
    if (mode == "attention") {
      flags.allow_only({"json", "block-size", "reps", "warmup", "num-splits", "contiguous-tables", "kv-cache-dtype"},
                       "attention");
#ifdef PAGEDCORE_WITH_CUDA
      return pagedcore::bench::run_attention_bench(flags);
#else
      std::fprintf(stderr, "bench_paged: the attention mode needs a CUDA build (pagedcore was built without CUDA)\n");
      return 2;
#endif
    }
    std::fprintf(stderr, "bench_paged: unknown mode '%s'\n", mode.c_str());
    usage();
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_paged: %s\n", e.what());
    return 2;
  }
}
