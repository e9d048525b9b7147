"""Host time per decode step at small batches (where online latency is host-bound): the Qwen3-0.6B
shape (random bf16 weights), N sequences of a 64-token prompt decoding --tokens greedy tokens each,
ms per engine step = wall / steps, median of --repeats; with --cprofile N also the N host functions
of most own time in one more run.

    python3 bench/bench_step_overhead.py [--seqs 1 4 16] [--tokens 256] [--no-async-scheduling]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from pagedcore.bench import common
from pagedcore.engine.sampling_params import SamplingParams


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seqs", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--tokens", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--async-scheduling", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--cprofile", type=int, default=0, metavar="N")
    args = p.parse_args()
    llm = common.build_llm("gpu", device=torch.device("cuda"), kv_cache_memory_bytes=4 << 30, max_model_len=1024,
                           enable_prefix_caching=False, async_scheduling=args.async_scheduling)
    params = SamplingParams(temperature=0, max_tokens=args.tokens, ignore_eos=True)
    counter = common.StepCounter(llm)
    for num_seqs in args.seqs:
        prompts = [[100 + i] * 64 for i in range(num_seqs)]
        llm.generate(prompts, params, use_tqdm=False)  # warm-up (graphs of this batch)
        per_step = []
        for _ in range(args.repeats):
            counter.count = 0
            start = time.perf_counter()
            llm.generate(prompts, params, use_tqdm=False)
            per_step.append((time.perf_counter() - start) * 1e3 / counter.count)
        print(f"seqs={num_seqs:3d} async_scheduling={args.async_scheduling}: "
              f"{statistics.median(per_step):.3f} ms per step (median of {args.repeats}, {counter.count} steps)")
        if args.cprofile:
            import cProfile
            import pstats

            profiler = cProfile.Profile()
            profiler.enable()
            llm.generate(prompts, params, use_tqdm=False)
            profiler.disable()
            pstats.Stats(profiler).sort_stats("tottime").print_stats(args.cprofile)


if __name__ == "__main__":
    main()
