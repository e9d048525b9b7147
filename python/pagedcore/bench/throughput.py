"""`pagedcore bench throughput`: offline throughput against HF transformers on the same requests.

GPU preset: workload W1 (256 requests, Qwen3-0.6B shape, random bf16 weights, temperature 0.6,
ignore_eos). The peers run on a labelled subset (the first --peer-subset requests) because HF
generate runs at ~615 tok/s; pagedcore runs that subset and the full set. Preset gpu-llama3-8b: the
same on the Llama-3-8B shape (32 layers, hidden 4096, 32 / 8 heads, untied). CPU preset: workload W5
(32 requests, the default model in fp32, greedy, 64 tokens each); every engine runs all 32.

Engines, one process, the same requests:
  pagedcore  LLM.generate with every request queued at once
  hf         transformers' static `generate`, left-padded batches of --hf-batch-size, each batch
             generating its longest max_tokens; only each request's own max_tokens are counted
  hf-cb      transformers' continuous batching (generation manager, per-request max_new_tokens)
Each figure is also shown as a fraction of the workload's floor (common.workload_floor), computed
from the model shape and the matmul rate / read bandwidth measured at the start of the same run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

from pagedcore.bench import common
from pagedcore.bench.common import Request

NAME = "throughput"
ENGINES = ("pagedcore", "hf", "hf-cb")
PRESETS = {
    "gpu": dict(workload="w1", peer_subset=32, hf_batch_size=64, repeats=3, rounds=1, kv_gib=40.0),
    "gpu-llama3-8b": dict(workload="w1", peer_subset=32, hf_batch_size=64, repeats=3, rounds=1, kv_gib=40.0),
    "cpu": dict(workload="w5", peer_subset=32, hf_batch_size=32, repeats=1, rounds=2, kv_gib=1.0),
}


def workload(name: str) -> tuple[list[Request], float]:
    if name == "w1":
        return common.w1_requests(), common.W1_TEMPERATURE
    return common.w5_requests(), 0.0


# ----------------------------------------------------------------------------------------------
# Engines. Each returns {"wall_s": [...], "num_output_tokens": int, ...} for one request set.

def run_pagedcore(llm, requests: list[Request], temperature: float, repeats: int) -> dict:
    results = [common.run_pagedcore(llm, requests, temperature=temperature) for _ in range(repeats)]
    return {"wall_s": [r.wall_s for r in results], "num_output_tokens": results[0].num_output_tokens,
            "num_preemptions": [r.num_preemptions for r in results]}


def build_hf_model(preset: str, device):
    import torch
    import transformers

    if preset in common.GPU_SHAPES:
        shape = common.GPU_SHAPES[preset]
        config_class = transformers.Qwen3Config if shape["model_type"] == "qwen3" else transformers.LlamaConfig
        config = config_class(**{k: v for k, v in shape.items() if k not in ("architectures", "model_type", "dtype")})
        with torch.device(device):
            model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16,
                                                                  attn_implementation="sdpa")
    else:
        from pagedcore.loaders.model_loader import default_model_path

        path = default_model_path()
        model = transformers.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                                  dtype=torch.float32)
    model.generation_config.eos_token_id = None  # ignore_eos: every request runs its full length
    model.generation_config.pad_token_id = 0
    return model.eval()


def _sampling_kwargs(temperature: float) -> dict:
    if temperature == 0.0:
        return {"do_sample": False, "top_k": None, "top_p": None, "temperature": None}
    return {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0}


def run_hf_generate(model, requests: list[Request], temperature: float, batch_size: int, device) -> dict:
    import torch

    def one_pass(reqs: list[Request]) -> float:
        common.synchronize(device)
        start = time.perf_counter()
        for first in range(0, len(reqs), batch_size):
            batch = reqs[first:first + batch_size]
            width = max(len(r.prompt_token_ids) for r in batch)
            ids = torch.zeros(len(batch), width, dtype=torch.long)
            mask = torch.zeros(len(batch), width, dtype=torch.long)
            for row, r in enumerate(batch):  # left padding
                ids[row, width - len(r.prompt_token_ids):] = torch.tensor(r.prompt_token_ids)
                mask[row, width - len(r.prompt_token_ids):] = 1
            with torch.inference_mode():
                out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                                     max_new_tokens=max(r.max_tokens for r in batch), min_new_tokens=None,
                                     pad_token_id=0, **_sampling_kwargs(temperature))
            if out.shape[1] - width != max(r.max_tokens for r in batch):
                raise RuntimeError(f"HF generate stopped after {out.shape[1] - width} tokens")
        common.synchronize(device)
        return time.perf_counter() - start

    one_pass([Request(r.prompt_token_ids[:32], 4) for r in requests[:2]])  # warm-up
    return {"wall_s": [one_pass(requests)], "num_output_tokens": common.num_output_tokens(requests),
            "batch_size": batch_size, "note": "padded batches run to their longest max_tokens; "
            "only each request's own max_tokens are counted"}


def run_hf_continuous_batching(model, requests: list[Request], temperature: float, device) -> dict:
    import transformers

    config = transformers.GenerationConfig(max_new_tokens=max(r.max_tokens for r in requests), eos_token_id=-1,
                                           pad_token_id=0, **_sampling_kwargs(temperature))

    def one_pass(reqs: list[Request]) -> tuple[float, int]:
        manager = model.init_continuous_batching(generation_config=config)
        manager.start()
        try:
            common.synchronize(device)
            start = time.perf_counter()
            for index, r in enumerate(reqs):
                manager.add_request(input_ids=r.prompt_token_ids, request_id=f"req-{index}",
                                    max_new_tokens=r.max_tokens)
            produced, finished = 0, 0
            while finished < len(reqs):
                result = manager.get_result(timeout=1)
                if result is None:
                    if not manager.is_running():
                        raise RuntimeError("HF continuous batching stopped before every request finished")
                    continue
                if result.is_finished():
                    finished += 1
                    produced += len(result.generated_tokens)
            common.synchronize(device)
            return time.perf_counter() - start, produced
        finally:
            manager.stop(block=True)

    one_pass([Request(r.prompt_token_ids[:32], 4) for r in requests[:2]])  # warm-up
    wall, produced = one_pass(requests)
    return {"wall_s": [wall], "num_output_tokens": produced,
            "attn_implementation": getattr(model.config, "_attn_implementation", None)}


# ----------------------------------------------------------------------------------------------

def run(args, argv, save) -> dict:
    """save(payload) is called after every engine's run, so a run stopped by a time limit still
    leaves what it measured on disk (with the ceilings read at the start)."""
    device = common.resolve_device(args.device)
    requests, temperature = workload(args.workload)
    subset = requests[:args.peer_subset]
    sets = {"subset": subset} if len(subset) == len(requests) else {"subset": subset, "full": requests}
    first_ceilings = common.measure_ceilings(device)

    def payload(ceilings: common.Ceilings) -> dict:
        return {**_payload(args, argv, device, sets, temperature, shape, results, ceilings),
                **({"kv_plan": llm.kv_plan.summary()} if llm is not None else {})}
    results: dict[str, dict[str, dict]] = {}  # engine -> request set -> result (wall_s over every round)

    def record(engine: str, set_name: str, result: dict) -> None:
        previous = results.setdefault(engine, {}).get(set_name)
        if previous is not None and "error" not in previous and "error" not in result:
            result = {**result, "wall_s": previous["wall_s"] + result["wall_s"]}
        results[engine][set_name] = result

    llm = model = shape = None
    if "pagedcore" in args.engines:
        # Prefix caching off: every round (and the warm-up) runs the same prompts, which a warm cache
        # would serve from memory in every pass after the first; W1 / W5 measure computing them.
        llm = common.build_llm(args.preset, device=device, kv_cache_memory_bytes=int(args.kv_gib * (1 << 30)),
                               max_model_len=2048 if args.workload == "w1" else 1024, model=args.model,
                               enable_prefix_caching=False, tensor_parallel_size=args.tensor_parallel_size,
                               quantization=args.quantization, kv_cache_dtype=args.kv_cache_dtype,
                               **({} if args.async_scheduling is None else {"async_scheduling": args.async_scheduling}))
        shape = common.model_shape_of(llm)
        common.run_pagedcore(llm, [Request(r.prompt_token_ids, 16) for r in requests[-8:]], temperature=temperature)
    peers = [e for e in args.engines if e != "pagedcore"]
    if peers:
        model = build_hf_model(args.preset, device)
        if shape is None:
            from pagedcore.loaders.config import ModelConfig
            shape = common.ModelShape.from_config(ModelConfig.from_hf_dict(model.config.to_dict()))
    # Rounds run every engine in turn, so a shared machine's slow spells fall on all of them.
    for _ in range(args.rounds):
        if llm is not None:
            for name, reqs in sets.items():
                record("pagedcore", name, run_pagedcore(llm, reqs, temperature, args.repeats if name == "subset"
                                                        else max(1, args.repeats - 2)))
                save(payload(first_ceilings))
        for engine in peers:
            try:
                if engine == "hf":
                    result = run_hf_generate(model, subset, temperature, args.hf_batch_size, device)
                else:
                    result = run_hf_continuous_batching(model, subset, temperature, device)
            except Exception as error:  # a peer that fails is reported, not fatal
                print(f"[throughput] {engine} failed: {error!r}", file=sys.stderr)
                result = {"error": repr(error)}
            record(engine, "subset", result)
            save(payload(first_ceilings))
    # Measured before and after the engines; the faster reading bounds both (a shared machine can
    # be slower at one of the two moments, and a floor from a slow reading would flatter everyone).
    ceilings = common.best_ceilings(first_ceilings, common.measure_ceilings(device))
    print(f"[throughput] ceilings: {ceilings}", file=sys.stderr)
    return payload(ceilings)


def _payload(args, argv, device, sets, temperature, shape, results, ceilings) -> dict:
    dtype_bytes = 2 if device.type == "cuda" else 4
    floors = {name: common.workload_floor(shape, reqs, matmul_flops_per_s=ceilings.matmul_flops_per_s,
                                          bandwidth_bytes_per_s=ceilings.read_bytes_per_s, dtype_bytes=dtype_bytes)
              for name, reqs in sets.items()}
    rows = []
    for engine, per_set in results.items():
        for set_name, result in per_set.items():
            row = {"engine": engine, "set": set_name, "num_requests": len(sets[set_name]),
                   "num_prompt_tokens": common.num_prompt_tokens(sets[set_name])}
            if "error" in result:
                rows.append({**row, "error": result["error"]})
                continue
            wall = statistics.median(result["wall_s"])
            # Tensor parallelism divides pagedcore's floor over its ranks (the all-reduces not counted).
            floor = floors[set_name].seconds / (args.tensor_parallel_size if engine == "pagedcore" else 1)
            rows.append({**row, **result, "wall_s_median": wall, "output_tok_per_s": result["num_output_tokens"] / wall,
                         "floor_s": floor, "fraction_of_floor": floor / wall})
    by_key = {(r["engine"], r["set"]): r for r in rows if "error" not in r}
    ours = by_key.get(("pagedcore", "subset"))
    for row in rows:
        peer = by_key.get((row["engine"], "subset"))
        if ours and peer and row["engine"] != "pagedcore":
            row["pagedcore_over_peer"] = ours["output_tok_per_s"] / peer["output_tok_per_s"]
    return {"benchmark": NAME, **common.run_info(device, argv), "preset": args.preset,
            "config": {"workload": args.workload, "temperature": temperature, "peer_subset": args.peer_subset,
                       "hf_batch_size": args.hf_batch_size, "repeats": args.repeats, "rounds": args.rounds,
                       "kv_cache_bytes": int(args.kv_gib * (1 << 30)), "model": args.model or args.preset,
                       "tensor_parallel_size": args.tensor_parallel_size, "quantization": args.quantization,
                       "kv_cache_dtype": args.kv_cache_dtype,
                       "sets": {name: {"num_requests": len(reqs), "num_prompt_tokens": common.num_prompt_tokens(reqs),
                                       "num_output_tokens": common.num_output_tokens(reqs)}
                                for name, reqs in sets.items()}},
            "ceilings": ceilings, "floors": floors, "rows": rows}


def _set_label(payload: dict, row: dict) -> str:
    """'subset' is the set the peers run; when it is the whole workload, say so."""
    if len(payload["config"]["sets"]) == 1:
        return f"all {row['num_requests']}"
    return f"{row['set']} ({row['num_requests']})"


def print_report(payload: dict) -> None:
    config = payload["config"]
    sets = ", ".join(f"all {s['num_requests']} requests ({s['num_prompt_tokens']:,} prompt / "
                     f"{s['num_output_tokens']:,} output tokens)" if len(config["sets"]) == 1 else
                     f"{name} = first {s['num_requests']} requests ({s['num_prompt_tokens']:,} prompt / "
                     f"{s['num_output_tokens']:,} output tokens)" if name == "subset" else
                     f"{name} = all {s['num_requests']} ({s['num_prompt_tokens']:,} / {s['num_output_tokens']:,})"
                     for name, s in config["sets"].items())
    ceilings = payload["ceilings"]
    bandwidth = ceilings["read_bytes_per_s"] if isinstance(ceilings, dict) else ceilings.read_bytes_per_s
    matmul = ceilings["matmul_flops_per_s"] if isinstance(ceilings, dict) else ceilings.matmul_flops_per_s
    print(f"{config['workload'].upper()} throughput on {payload['device']}, {payload['date']}: {sets}. "
          f"Measured matmul {matmul / 1e12:.3g} TFLOP/s"
          + (f", read bandwidth {bandwidth / 1e12:.3g} TB/s" if bandwidth else ""))
    headers = ["engine", "request set", "wall s (median)", "output tok/s", "floor s", "fraction of floor",
               "pagedcore / engine (subset)"]
    rows = []
    for r in payload["rows"]:
        if "error" in r:
            rows.append([r["engine"], r["set"], "failed: " + r["error"][:80], "-", "-", "-", "-"])
            continue
        rows.append([r["engine"], _set_label(payload, r), r["wall_s_median"], r["output_tok_per_s"],
                     r["floor_s"], r["fraction_of_floor"], r.get("pagedcore_over_peer", "-")])
    print(common.format_table(headers, rows))
    if "kv_plan" in payload:
        print(f"pagedcore's KV cache ({config.get('kv_cache_dtype', 'auto')}): {payload['kv_plan']}")


def plot(payload: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in payload["rows"] if "error" not in r]
    labels = [f"{r['engine']}\n{_set_label(payload, r)}" for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    colors = ["tab:blue" if r["engine"] == "pagedcore" else "tab:gray" for r in rows]
    axes[0].bar(labels, [r["output_tok_per_s"] for r in rows], color=colors)
    for set_name, style in (("subset", "--"), ("full", ":")):
        floor = next((r for r in rows if r["set"] == set_name), None)
        if floor:
            axes[0].axhline(sum(s["num_output_tokens"] for n, s in payload["config"]["sets"].items() if n == set_name)
                            / floor["floor_s"], color="tab:red", linestyle=style, label=f"floor ({set_name})")
    axes[0].set_yscale("log")
    axes[0].set_title("output tokens / s")
    axes[0].legend()
    axes[1].bar(labels, [r["fraction_of_floor"] for r in rows], color=colors)
    axes[1].set_title("fraction of the floor (floor s / wall s)")
    fig.suptitle(f"{payload['config']['workload'].upper()} throughput: {payload['device']} ({payload['date']})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pagedcore bench throughput", description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", choices=sorted(PRESETS), default=None,
                   help="gpu: W1 on the Qwen3-0.6B shape (default with a GPU); cpu: W5 on the default model")
    p.add_argument("--engine", dest="engines", nargs="+", choices=ENGINES, default=list(ENGINES))
    p.add_argument("--device", default="auto")
    p.add_argument("--model", default=None, help="override pagedcore's model (the HF peers keep the preset's)")
    p.add_argument("--workload", choices=["w1", "w5"])
    p.add_argument("--peer-subset", type=int, help="the peers run the first N requests")
    p.add_argument("--hf-batch-size", type=int)
    p.add_argument("--repeats", type=int, help="pagedcore repeats on the subset (median); the full set runs fewer")
    p.add_argument("--rounds", type=int, help="run every engine in turn this many times (median over rounds)")
    p.add_argument("--kv-gib", type=float, help="pagedcore's KV cache budget")
    p.add_argument("--async-scheduling", action=argparse.BooleanOptionalAction, default=None,
                   help="pagedcore's overlapped step loop (default: the engine's default)")
    p.add_argument("--tensor-parallel-size", type=int, default=1,
                   help="pagedcore's ranks (its floor is divided over them; --kv-gib is per rank)")
    p.add_argument("--quantization", choices=["fp8"], default=None,
                   help="pagedcore's weights in FP8 (the floor stays the model dtype's: compare tok/s)")
    p.add_argument("--kv-cache-dtype", choices=["auto", "fp8"], default="auto",
                   help="pagedcore's KV cache: the model's dtype, or FP8 e4m3 (twice the blocks in --kv-gib; the "
                        "floor stays the model dtype's: compare tok/s)")
    p.add_argument("--out", default=None, help="results folder (default results/throughput)")
    return p


def main(argv: list[str] | None = None) -> int:
    return common.main_with_partial_saves(NAME, parser().parse_args(argv), PRESETS, run, print_report, plot, argv)


if __name__ == "__main__":
    sys.exit(main())
