// bench_paged: native benchmarks of pagedcore, linking the static library (no Python).
//   bench_paged pool [--json] [--block-size 16] [--num-blocks 65536]
//   bench_paged scheduler [--json] [--block-size 16] [--steps 2000]
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
      "  scheduler  step() + commit() latency with 64, 256, 1024 decoding sequences\n"
      "options:\n"
      "  --json            print the results as JSON instead of a table\n"
      "  --block-size N    tokens per KV block (pool; default 16)\n"
      "  --num-blocks N    blocks in the pool (pool; default 65536)\n");
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
    if (mode == "pool") return pagedcore::bench::run_pool_bench(flags);
    if (mode == "scheduler") return pagedcore::bench::run_scheduler_bench(flags);
    std::fprintf(stderr, "bench_paged: unknown mode '%s'\n", mode.c_str());
    usage();
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_paged: %s\n", e.what());
    return 2;
  }
}
