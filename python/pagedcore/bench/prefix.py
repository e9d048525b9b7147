"""`pagedcore bench prefix`: workload W2, prefix caching on vs off.

256 requests share one system prompt of S tokens, each followed by its own user part. Two engines
with the same KV budget, one with prefix caching off and one with it on, run the same requests
twice: the cold pass (the prefix is not cached yet) and the warm pass (the same requests again).
Reported for each S and output length: throughput, hit rate, prompt tokens actually computed,
TTFT, the speedup of caching on over off, and at S = 0 the overhead of caching (goal: < 1%).

Every (S, output length, repeat) draws its own prompts, so its cold pass is really cold; figures are
the median over repeats. The S = 0 control is the cold pass (nothing to reuse); its warm pass
repeats whole prompts and so measures full-prompt hits, not overhead. Offline run: every request
of a pass is submitted at t = 0, so TTFT includes queueing behind the other requests of the pass.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

from pagedcore.bench import common

NAME = "prefix"
PRESETS = {
    # CPU: the default model (SmolLM2-135M, fp32), sizes scaled down so the run takes minutes.
    "cpu": dict(num_requests=16, prefix_lens=[0, 128, 512], user_len=(32, 128), output_lens=[16], repeats=1,
                kv_gib=1.0, max_model_len=1024),
    # GPU: the real W2 sizes on the Qwen3-0.6B shape (random bf16 weights).
    "gpu": dict(num_requests=256, prefix_lens=[0, 128, 512, 1024, 2048], user_len=(32, 256), output_lens=[32, 256],
                repeats=3, kv_gib=24.0, max_model_len=4096),
}


def run(args, argv, save) -> dict:
    """save(payload) is called after every (S, output length, repeat) group, so a run stopped by a
    time limit still leaves its finished groups on disk."""
    device = common.resolve_device(args.device)
    started = time.perf_counter()
    kv_bytes = int(args.kv_gib * (1 << 30))
    engines = {}
    for caching in (False, True):
        engines[caching] = common.build_llm(args.preset, device=device, enable_prefix_caching=caching,
                                            kv_cache_memory_bytes=kv_bytes, max_model_len=args.max_model_len,
                                            model=args.model, kv_cache_dtype=args.kv_cache_dtype)
        warmup = common.w2_requests(0, 8, tuple(args.user_len), 4, seed="warm-up")
        common.run_pagedcore(engines[caching], warmup, temperature=0.0)

    runs, skipped = [], []

    def payload() -> dict:
        return {"benchmark": NAME, **common.run_info(device, argv), "preset": args.preset,
                "config": {"num_requests": args.num_requests, "prefix_lens": args.prefix_lens,
                           "user_len": list(args.user_len), "output_lens": args.output_lens, "repeats": args.repeats,
                           "kv_cache_bytes": kv_bytes, "max_model_len": args.max_model_len, "greedy": True,
                           "ignore_eos": True, "model": args.model or args.preset, "time_budget_s": args.time_budget,
                           "kv_cache_dtype": args.kv_cache_dtype},
                "engine": {"kv_plan": engines[True].kv_plan.summary()},
                "skipped_over_time_budget": skipped, "runs": runs, "summary": summarize(runs)}

    for output_len in args.output_lens:
        for prefix_len in args.prefix_lens:
            for repeat in range(args.repeats):
                if args.time_budget is not None and time.perf_counter() - started > args.time_budget:
                    skipped.append({"prefix_len": prefix_len, "output_len": output_len, "repeat": repeat})
                    continue
                requests = common.w2_requests(prefix_len, args.num_requests, tuple(args.user_len), output_len,
                                              seed=f"{output_len}/{repeat}")
                for caching in (False, True):  # interleaved, so drift of the machine hits both alike
                    for pass_name in ("cold", "warm"):
                        result = common.run_pagedcore(engines[caching], requests, temperature=0.0)
                        runs.append({"prefix_len": prefix_len, "output_len": output_len, "caching": caching,
                                     "pass": pass_name, "repeat": repeat, **result.summary()})
                        print(f"[prefix] S={prefix_len} out={output_len} caching={'on' if caching else 'off'} "
                              f"{pass_name} repeat={repeat}: {result.wall_s:.2f} s, "
                              f"{result.output_tok_per_s:.1f} out tok/s, hit rate {result.hit_rate:.3f}",
                              file=sys.stderr)
                save(payload())
    return payload()


def summarize(runs: list[dict]) -> list[dict]:
    """Median over repeats of each (S, output_len, caching, pass), with the speedup over caching off."""
    keys = sorted({(r["output_len"], r["prefix_len"], r["caching"], r["pass"]) for r in runs})
    rows = {}
    for key in keys:
        group = [r for r in runs if (r["output_len"], r["prefix_len"], r["caching"], r["pass"]) == key]
        rows[key] = {"output_len": key[0], "prefix_len": key[1], "caching": key[2], "pass": key[3],
                     "repeats": len(group),
                     **{m: statistics.median(r[m] for r in group) for m in (
                         "wall_s", "output_tok_per_s", "total_tok_per_s", "hit_rate", "num_prompt_tokens",
                         "num_computed_prompt_tokens", "ttft_p50_s", "ttft_p99_s", "num_preemptions")}}
    for (output_len, prefix_len, caching, pass_name), row in rows.items():
        off = rows[(output_len, prefix_len, False, pass_name)]
        row["speedup_vs_off"] = off["wall_s"] / row["wall_s"]
    return list(rows.values())


def print_report(payload: dict) -> None:
    headers = ["S", "out", "caching", "pass", "wall s", "out tok/s", "hit rate", "prompt tok computed / total",
               "TTFT p50 s", "TTFT p99 s", "preempt", "speedup vs off"]
    rows = [[r["prefix_len"], r["output_len"], "on" if r["caching"] else "off", r["pass"], r["wall_s"],
             r["output_tok_per_s"], r["hit_rate"],
             f"{r['num_computed_prompt_tokens']:,.0f} / {r['num_prompt_tokens']:,.0f}",
             r["ttft_p50_s"], r["ttft_p99_s"], r["num_preemptions"], r["speedup_vs_off"]] for r in payload["summary"]]
    print(f"W2 prefix caching ({payload['preset']} preset) on {payload['device']}, {payload['date']}: "
          f"{payload['config']['num_requests']} requests, user part randint{tuple(payload['config']['user_len'])}, "
          f"median of {payload['config']['repeats']} repeat(s), KV cache {payload['config'].get('kv_cache_dtype', 'auto')}")
    print(common.format_table(headers, rows))
    for line in overhead_lines(payload):
        print(line)
    if payload.get("skipped_over_time_budget"):
        print(f"skipped (time budget): {payload['skipped_over_time_budget']}")


def overhead_lines(payload: dict) -> list[str]:
    lines = []
    for row in payload["summary"]:
        if row["prefix_len"] == 0 and row["caching"] and row["pass"] == "cold":
            slower = 1.0 / row["speedup_vs_off"] - 1.0
            verdict = ("no overhead visible" if slower <= 0 else "meets the < 1% goal" if slower < 0.01
                       else "misses the < 1% goal")
            lines.append(f"S=0 overhead control (cold pass, out={row['output_len']}): caching on is "
                         f"{100 * slower:+.2f}% in wall time vs off ({verdict}; median of "
                         f"{row['repeats']} repeat(s))")
    return lines


def plot(payload: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = payload["summary"]
    output_lens = sorted({r["output_len"] for r in summary})
    fig, axes = plt.subplots(len(output_lens), 3, figsize=(15, 4 * len(output_lens)), squeeze=False)
    styles = {(False, "cold"): ("tab:gray", "--"), (False, "warm"): ("tab:gray", "-"),
              (True, "cold"): ("tab:blue", "--"), (True, "warm"): ("tab:blue", "-")}
    for row_axes, output_len in zip(axes, output_lens):
        for (caching, pass_name), (color, style) in styles.items():
            rows = sorted((r for r in summary if r["output_len"] == output_len and r["caching"] == caching
                           and r["pass"] == pass_name), key=lambda r: r["prefix_len"])
            xs = [r["prefix_len"] for r in rows]
            label = f"caching {'on' if caching else 'off'}, {pass_name}"
            row_axes[0].plot(xs, [r["output_tok_per_s"] for r in rows], style, color=color, marker="o", label=label)
            row_axes[1].plot(xs, [r["num_computed_prompt_tokens"] for r in rows], style, color=color, marker="o",
                             label=label)
            row_axes[2].plot(xs, [r["ttft_p50_s"] for r in rows], style, color=color, marker="o", label=label)
        for ax, title in zip(row_axes, ("output tokens / s", "prompt tokens computed", "TTFT p50 (s)")):
            ax.set_title(f"{title}, {output_len} output tokens")
            ax.set_xlabel("shared prefix S (tokens)")
            ax.grid(alpha=0.3)
        row_axes[0].legend()
    fig.suptitle(f"W2 prefix caching, {payload['preset']} preset: {payload['device']} ({payload['date']})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pagedcore bench prefix", description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", choices=sorted(PRESETS), default=None,
                   help="sizes: cpu (default without a GPU) or gpu (the real W2 sizes)")
    p.add_argument("--device", default="auto")
    p.add_argument("--model", default=None, help="override the preset's model (HF dir or .gguf)")
    p.add_argument("--num-requests", type=int)
    p.add_argument("--prefix-lens", type=int, nargs="+")
    p.add_argument("--user-len", type=int, nargs=2, metavar=("LOW", "HIGH"))
    p.add_argument("--output-lens", type=int, nargs="+")
    p.add_argument("--repeats", type=int)
    p.add_argument("--kv-gib", type=float, help="KV cache budget of each engine (the same for on and off)")
    p.add_argument("--max-model-len", type=int)
    p.add_argument("--kv-cache-dtype", choices=["auto", "fp8"], default="auto",
                   help="the KV cache of both engines: the model's dtype, or FP8 e4m3 (twice the blocks in --kv-gib)")
    p.add_argument("--time-budget", type=float, default=None,
                   help="seconds: groups not started by then are skipped (and listed in the JSON)")
    p.add_argument("--out", default=None, help="results folder (default results/prefix)")
    return p


def main(argv: list[str] | None = None) -> int:
    return common.main_with_partial_saves(NAME, parser().parse_args(argv), PRESETS, run, print_report, plot, argv)


if __name__ == "__main__":
    sys.exit(main())
