"""Where a W1 step's time goes (issue 14's profile): GPU busy fraction, host time per step, kernel
counts and the host-device synchronizations, from a torch.profiler trace of one pass.

    python3 bench/bench_step_profile.py [--preset gpu|gpu-llama3-8b] [--requests 128] [--json out.json]
        [--label name] [--cprofile 25]

Runs the W1 requests (docs/benchmarks.md) on the preset's shape (Qwen3-0.6B, or Llama-3-8B) with random bf16 weights, prefix
caching off, once untraced (throughput, fraction of the floor) and once under torch.profiler (the
first --requests of them). GPU busy = the union of the kernel and memcpy intervals over the traced
wall time; host time per step = traced wall time / engine steps.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter

import torch
from torch.profiler import ProfilerActivity, profile

from pagedcore.bench import common
from pagedcore.bench.common import Request


def union_us(intervals: list[tuple[float, float]]) -> float:
    total, end = 0.0, float("-inf")
    for start, stop in sorted(intervals):
        if stop <= end:
            continue
        total += stop - max(start, end)
        end = stop
    return total


def kind_of(kernel: str) -> str:
    """A device op's kind by its name: GEMM (cuBLAS / CUTLASS), attention (pagedcore's), copy, other."""
    name = kernel.lower()
    if any(k in name for k in ("gemm", "nvjet", "cutlass", "xmma", "cublas")):
        return "gemm"
    if "attention" in name:
        return "attention"
    if "memcpy" in name or "memset" in name:
        return "copy"
    return "other"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", choices=sorted(common.GPU_SHAPES), default="gpu",
                   help="the model shape: gpu (Qwen3-0.6B) or gpu-llama3-8b")
    p.add_argument("--requests", type=int, default=128, help="W1 requests in the traced pass")
    p.add_argument("--kv-gib", type=float, default=40.0)
    p.add_argument("--json", default=None)
    p.add_argument("--label", default="")
    p.add_argument("--async-scheduling", action=argparse.BooleanOptionalAction, default=True,
                   help="the overlapped loop (default) or the synchronous one")
    p.add_argument("--cprofile", type=int, default=0, metavar="N",
                   help="also run the traced requests under cProfile and report the N functions of most host time")
    args = p.parse_args()
    device = torch.device("cuda")
    requests = common.w1_requests()
    llm = common.build_llm(args.preset, device=device, kv_cache_memory_bytes=int(args.kv_gib * (1 << 30)),
                           max_model_len=2048, enable_prefix_caching=False, async_scheduling=args.async_scheduling)
    shape = common.model_shape_of(llm)
    common.run_pagedcore(llm, [Request(r.prompt_token_ids, 16) for r in requests[-8:]], temperature=0.6)

    untraced = common.run_pagedcore(llm, requests, temperature=common.W1_TEMPERATURE)
    ceilings = common.measure_ceilings(device)
    floor = common.workload_floor(shape, requests, matmul_flops_per_s=ceilings.matmul_flops_per_s,
                                  bandwidth_bytes_per_s=ceilings.read_bytes_per_s, dtype_bytes=2)

    counter = common.StepCounter(llm)
    traced_requests = requests[:args.requests]
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        start = time.perf_counter()
        common.run_pagedcore(llm, traced_requests, temperature=common.W1_TEMPERATURE)
        wall_us = (time.perf_counter() - start) * 1e6
    counter.remove()
    steps = counter.count

    events = prof.events()
    device_intervals, kernel_durations, kernel_names = [], [], Counter()
    syncs = Counter()
    sync_us = 0.0
    for e in events:
        if e.device_type == torch.autograd.DeviceType.CUDA:
            device_intervals.append((e.time_range.start, e.time_range.end))
            kernel_durations.append(e.time_range.end - e.time_range.start)
            kernel_names[e.name] += e.time_range.end - e.time_range.start
        elif e.name in ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize",
                        "cudaMemcpyAsync", "cudaMemcpy"):
            syncs[e.name] += 1
            if "Synchronize" in e.name:
                sync_us += e.time_range.end - e.time_range.start
    trace_span = (max(e for _, e in device_intervals) - min(s for s, _ in device_intervals)) if device_intervals else 0
    busy_us = union_us(device_intervals)
    result = {
        "label": args.label, "preset": args.preset, "device": common.device_description(device),
        "w1_output_tok_s": untraced.num_output_tokens / untraced.wall_s, "w1_wall_s": untraced.wall_s,
        "w1_floor_s": floor.seconds, "w1_fraction_of_floor": floor.seconds / untraced.wall_s,
        "traced_requests": len(traced_requests), "traced_wall_ms": wall_us / 1e3, "engine_steps": steps,
        "host_ms_per_step": wall_us / 1e3 / max(steps, 1), "gpu_busy_ms": busy_us / 1e3,
        "gpu_busy_fraction": busy_us / wall_us, "gpu_busy_fraction_of_device_span": busy_us / max(trace_span, 1),
        "device_ops": len(kernel_durations), "device_ops_per_step": len(kernel_durations) / max(steps, 1),
        "device_ops_under_4us": sum(d < 4 for d in kernel_durations),
        "sync_calls": dict(syncs), "sync_ms": sync_us / 1e3,
        "device_ms_by_kind": {kind: round(sum(us for name, us in kernel_names.items() if kind_of(name) == kind) / 1e3, 2)
                              for kind in ("gemm", "attention", "copy", "other")},
        "top_device_ops_ms": {name: us / 1e3 for name, us in kernel_names.most_common(12)},
    }
    if args.cprofile:
        import cProfile
        import io
        import pstats

        profiler = cProfile.Profile()
        profiler.enable()
        common.run_pagedcore(llm, traced_requests, temperature=common.W1_TEMPERATURE)
        profiler.disable()
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(args.cprofile)
        result["host_functions_by_tottime"] = [line for line in text.getvalue().splitlines() if line.strip()][-args.cprofile - 1:]
    print(json.dumps(result, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
