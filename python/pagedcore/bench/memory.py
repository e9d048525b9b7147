"""`pagedcore bench memory`: workload W3, memory efficiency of paged KV blocks.

With one fixed KV budget, how many sequences run at once and how much of the allocated KV memory
holds live tokens, for paged blocks (block sizes 4 to 64) against contiguous per-sequence buffers
reserved at max_model_len.

No model runs: the W1 requests are driven through pagedcore's native scheduler with the block count
the memory plan gives for the budget, and every sampled token is a dummy (ignore_eos, so the
sequence lengths are exactly those of a real run). Contiguous buffers are the same scheduler with
max_num_seqs = budget / (max_model_len x bytes per token) and blocks to spare, which admits exactly
as a buffer-per-sequence engine would; its allocated memory is max_model_len slots per sequence.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from pagedcore import _core
from pagedcore.bench import common

NAME = "memory"
PRESETS = {
    "gpu": dict(shape="qwen3-0.6b", dtype_bytes=2, kv_gib=4.0),  # the W1 model in bf16
    "cpu": dict(shape="smollm2-135m", dtype_bytes=4, kv_gib=1.0),  # the default model in fp32
}


def model_shape(name: str) -> common.ModelShape:
    from pagedcore.loaders.config import ModelConfig
    from pagedcore.loaders.model_loader import resolve_model

    if name == "qwen3-0.6b":
        return common.ModelShape.from_config(ModelConfig.from_hf_dict(common.QWEN3_0_6B))
    return common.ModelShape.from_config(resolve_model(None).config)


def simulate(requests: list[common.Request], *, num_blocks: int, block_size: int, max_num_seqs: int,
             max_model_len: int, reserved_slots_per_seq: int | None, max_num_batched_tokens: int) -> dict:
    """Runs the requests to completion through the scheduler. Allocated slots are the paged blocks in
    use, or reserved_slots_per_seq per running sequence (contiguous buffers)."""
    scheduler = _core.Scheduler(_core.SchedulerConfig(
        num_blocks=num_blocks, block_size=block_size, max_num_seqs=max_num_seqs,
        max_num_batched_tokens=max_num_batched_tokens, max_model_len=max_model_len, enable_prefix_caching=False,
        preemption_mode=_core.PreemptionMode.RECOMPUTE))
    for request_id, request in enumerate(requests):
        scheduler.add_request(request_id, request.prompt_token_ids,
                              _core.RequestParams(max_tokens=request.max_tokens, ignore_eos=True))
    tables = scheduler.block_tables
    peak = {"num_running": 0}
    utilizations = []
    steps = 0
    while scheduler.has_unfinished():
        plan = scheduler.step()
        scheduler.commit(np.zeros(plan.num_samples, dtype=np.int32))
        steps += 1
        stats = scheduler.stats()
        if stats.num_running == 0:
            continue
        # With n = 1 the scheduler numbers sequences like requests, in order of arrival.
        live = sum(tables.num_tokens(seq_id) for seq_id in range(len(requests)) if tables.has_sequence(seq_id))
        allocated = (stats.num_running * reserved_slots_per_seq if reserved_slots_per_seq
                     else stats.num_used_blocks * block_size)
        utilizations.append(live / allocated)
        if stats.num_running > peak["num_running"]:
            peak = {"num_running": stats.num_running, "live_tokens": live, "allocated_slots": allocated,
                    "utilization": live / allocated, "step": steps}
    stats = scheduler.stats()
    return {"max_concurrent_seqs": peak["num_running"], "utilization_at_peak": peak.get("utilization"),
            "live_tokens_at_peak": peak.get("live_tokens"), "allocated_slots_at_peak": peak.get("allocated_slots"),
            "mean_utilization": float(np.mean(utilizations)), "num_steps": steps,
            "num_preemptions": stats.num_preemptions}


def run(args, argv) -> dict:
    shape = model_shape(args.shape)
    requests = common.w1_requests()
    budget = int(args.kv_gib * (1 << 30))
    bytes_per_token = shape.kv_bytes_per_token(args.dtype_bytes)
    rows = []
    contiguous_seqs = budget // (args.max_model_len * bytes_per_token)
    if contiguous_seqs:
        spare_blocks = contiguous_seqs * args.max_model_len // 16 + 1
        result = simulate(requests, num_blocks=spare_blocks, block_size=16, max_num_seqs=contiguous_seqs,
                          max_model_len=args.max_model_len, reserved_slots_per_seq=args.max_model_len,
                          max_num_batched_tokens=args.max_num_batched_tokens)
        rows.append({"layout": f"contiguous (max_model_len={args.max_model_len})", "block_size": None,
                     "capacity_tokens": contiguous_seqs * args.max_model_len, **result})
    for block_size in args.block_sizes:
        plan = _core.plan_kv_memory(_core.KVCacheShape(
            num_layers=shape.num_layers, num_kv_heads=shape.num_kv_heads, head_dim=shape.head_dim,
            dtype_bytes=args.dtype_bytes, block_size=block_size), budget)
        result = simulate(requests, num_blocks=plan.num_blocks, block_size=block_size, max_num_seqs=args.max_num_seqs,
                          max_model_len=args.max_model_len, reserved_slots_per_seq=None,
                          max_num_batched_tokens=args.max_num_batched_tokens)
        rows.append({"layout": "paged", "block_size": block_size, "capacity_tokens": plan.token_capacity, **result})
        print(f"[memory] block {block_size}: {result['max_concurrent_seqs']} concurrent, "
              f"utilization {result['utilization_at_peak']:.3f}", file=sys.stderr)
    device = common.resolve_device("cpu")
    return {"benchmark": NAME, **common.run_info(device, argv), "preset": args.preset,
            "device_note": "no model runs: the native scheduler and block tables only (device-independent)",
            "config": {"model_shape": args.shape, "dtype_bytes": args.dtype_bytes, "kv_budget_bytes": budget,
                       "kv_bytes_per_token": bytes_per_token, "max_model_len": args.max_model_len,
                       "max_num_seqs": args.max_num_seqs, "max_num_batched_tokens": args.max_num_batched_tokens,
                       "workload": "W1 requests (256, prompts 100-1024, outputs 100-1024)"},
            "rows": rows}


def print_report(payload: dict) -> None:
    config = payload["config"]
    print(f"W3 memory efficiency: {config['model_shape']} KV ({config['kv_bytes_per_token']:,} bytes/token), "
          f"budget {config['kv_budget_bytes'] / (1 << 30):.1f} GiB, W1 requests, {payload['date']}; "
          f"{payload['device_note']}")
    headers = ["layout", "block", "capacity (tokens)", "max concurrent seqs", "KV utilization at peak",
               "mean utilization", "preemptions", "steps"]
    rows = [[r["layout"], r["block_size"] or "-", f"{r['capacity_tokens']:,}", r["max_concurrent_seqs"],
             r["utilization_at_peak"], r["mean_utilization"], r["num_preemptions"], r["num_steps"]]
            for r in payload["rows"]]
    print(common.format_table(headers, rows))


def plot(payload: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = payload["rows"]
    labels = [f"block {r['block_size']}" if r["block_size"] else "contiguous" for r in rows]
    colors = ["tab:gray" if r["block_size"] is None else "tab:blue" for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    axes[0].bar(labels, [r["max_concurrent_seqs"] for r in rows], color=colors)
    axes[0].set_title("max concurrent sequences")
    axes[1].bar(labels, [r["utilization_at_peak"] for r in rows], color=colors, label="at peak concurrency")
    axes[1].plot(labels, [r["mean_utilization"] for r in rows], "ko", label="mean over the run")
    axes[1].set_ylim(0, 1.05)
    axes[1].set_title("KV slot utilization (live tokens / allocated slots)")
    axes[1].legend(loc="lower right")
    config = payload["config"]
    fig.suptitle(f"W3: {config['model_shape']}, {config['kv_budget_bytes'] / (1 << 30):.1f} GiB KV, W1 requests, "
                 f"max_model_len {config['max_model_len']} (scheduler simulation, {payload['date']})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pagedcore bench memory", description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", choices=sorted(PRESETS), default=None,
                   help="gpu: Qwen3-0.6B shape in bf16, 4 GiB (default with a GPU); cpu: SmolLM2-135M fp32, 1 GiB")
    p.add_argument("--device", default="auto", help="only picks the default preset; nothing runs on it")
    p.add_argument("--shape", choices=["qwen3-0.6b", "smollm2-135m"])
    p.add_argument("--dtype-bytes", type=int)
    p.add_argument("--kv-gib", type=float, help="the fixed KV budget")
    p.add_argument("--max-model-len", type=int, default=2048,
                   help="what a contiguous buffer reserves (W1's longest sequence is 2048)")
    p.add_argument("--block-sizes", type=int, nargs="+", default=[4, 8, 16, 32, 64])
    p.add_argument("--max-num-seqs", type=int, default=1024, help="paged: high, so KV blocks are the limit")
    p.add_argument("--max-num-batched-tokens", type=int, default=8192)
    p.add_argument("--out", default=None, help="results folder (default results/memory)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    common.apply_preset(args, PRESETS)
    payload = run(args, common.command_line(NAME, argv))
    common.report(payload, common.results_dir(NAME, args.out) / f"{NAME}_{args.shape.replace('.', '_')}",
                  print_report, plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
