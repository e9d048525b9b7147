"""Shared pieces of the Python benchmarks: the workloads of docs/benchmarks.md, the model
shapes they run on, measured hardware ceilings, the floor model, timing helpers, the pagedcore pass
runner, and result files.

Each benchmark module (prefix, throughput, memory, latency) owns one measurement; everything two of
them need lives here so that every benchmark draws the same requests and counts the same way.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

RESULTS_ROOT = Path("results")  # git-ignored; JSON + PNG per benchmark under results/<name>/


# ----------------------------------------------------------------------------------------------
# Workloads (docs/benchmarks.md). A Request is a prompt and how many tokens to generate for it.

@dataclass
class Request:
    prompt_token_ids: list[int]
    max_tokens: int


def w1_requests(num_requests: int = 256, max_input_len: int = 1024, max_output_len: int = 1024) -> list[Request]:
    """W1, nano-vllm's draw: prompts first (length, then ids), then every request's max_tokens.
    The full draw totals 142,827 prompt and 133,966 output tokens."""
    rng = random.Random(0)
    prompts = [[rng.randint(0, 10000) for _ in range(rng.randint(100, max_input_len))] for _ in range(num_requests)]
    return [Request(prompt, rng.randint(100, max_output_len)) for prompt in prompts]


W1_PROMPT_TOKENS = 142_827
W1_OUTPUT_TOKENS = 133_966
W1_TEMPERATURE = 0.6


def w2_requests(prefix_len: int, num_requests: int, user_len: tuple[int, int], max_tokens: int, *,
                seed: int | str = 0, vocab_limit: int = 10000) -> list[Request]:
    """W2: one shared system prompt of prefix_len tokens + a unique user part of randint(*user_len)
    tokens. `seed` picks the draw: a benchmark gives each request set its own seed, so no set finds
    blocks that another set left in the prefix cache (each cold pass is really cold)."""
    prefix_rng = random.Random(f"w2-prefix/{seed}/{prefix_len}")
    prefix = [prefix_rng.randint(0, vocab_limit) for _ in range(prefix_len)]
    rng = random.Random(f"w2-user/{seed}")
    requests = []
    for _ in range(num_requests):
        user = [rng.randint(0, vocab_limit) for _ in range(rng.randint(*user_len))]
        requests.append(Request(prefix + user, max_tokens))
    return requests


def w5_requests(num_requests: int = 32, output_len: int = 64) -> list[Request]:
    """W5 (CPU): prompt randint(64, 256) of ids randint(100, 40000); 64 output tokens each."""
    rng = random.Random(0)
    prompts = [[rng.randint(100, 40000) for _ in range(rng.randint(64, 256))] for _ in range(num_requests)]
    return [Request(prompt, output_len) for prompt in prompts]


def num_prompt_tokens(requests: Sequence[Request]) -> int:
    return sum(len(r.prompt_token_ids) for r in requests)


def num_output_tokens(requests: Sequence[Request]) -> int:
    return sum(r.max_tokens for r in requests)


# ----------------------------------------------------------------------------------------------
# Model shapes. GPU runs use the Qwen3-0.6B shape with random bf16 weights (W1); CPU runs the
# default model (SmolLM2-135M-Instruct, fp32).

QWEN3_0_6B = {
    "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "vocab_size": 151936, "hidden_size": 1024,
    "intermediate_size": 3072, "num_hidden_layers": 28, "num_attention_heads": 16, "num_key_value_heads": 8,
    "head_dim": 128, "max_position_embeddings": 40960, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
    "tie_word_embeddings": True, "bos_token_id": 151643, "eos_token_id": 151645, "dtype": "bfloat16",
    "hidden_act": "silu", "attention_bias": False,
}


# W1 on a larger model (docs/benchmarks.md): the Llama-3-8B shape, untied, random bf16 weights.
LLAMA_3_8B = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 128256, "hidden_size": 4096,
    "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
    "head_dim": 128, "max_position_embeddings": 8192, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
    "tie_word_embeddings": False, "bos_token_id": 128000, "eos_token_id": 128001, "dtype": "bfloat16",
    "hidden_act": "silu", "attention_bias": False,
}
# GPU presets of the benchmarks -> the model shape they run (random bf16 weights).
GPU_SHAPES = {"gpu": QWEN3_0_6B, "gpu-llama3-8b": LLAMA_3_8B}


def write_model_dir(hf_config: dict, directory: str | Path | None = None) -> Path:
    """An HF model directory holding only config.json: pagedcore loads it with load_format='dummy'."""
    path = Path(directory or tempfile.mkdtemp(prefix="pagedcore-bench-model-"))
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(hf_config, indent=1))
    return path


@dataclass
class ModelShape:
    """What the floor model needs to know about a decoder."""

    num_layers: int
    hidden_size: int
    intermediate_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int

    @classmethod
    def from_config(cls, config) -> ModelShape:  # pagedcore.loaders.config.ModelConfig
        return cls(config.num_hidden_layers, config.hidden_size, config.intermediate_size,
                   config.num_attention_heads, config.num_key_value_heads, config.head_dim, config.vocab_size)

    @property
    def layer_params(self) -> int:
        """Matmul weights of all decoder layers (q, k, v, o, gate, up, down)."""
        q, kv = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        return self.num_layers * (self.hidden_size * (q + 2 * kv) + q * self.hidden_size
                                  + 3 * self.hidden_size * self.intermediate_size)

    @property
    def lm_head_params(self) -> int:
        return self.vocab_size * self.hidden_size

    def kv_bytes_per_token(self, dtype_bytes: int) -> int:
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * dtype_bytes

    def attention_flops(self, num_query_tokens: float, mean_context: float) -> float:
        """QK^T and PV: 2 matmuls x 2 FLOPs per multiply-add."""
        return 4.0 * num_query_tokens * mean_context * self.num_heads * self.head_dim * self.num_layers


# ----------------------------------------------------------------------------------------------
# Floors. A figure is shown against the fastest the hardware could possibly do the same work.

@dataclass
class Floor:
    seconds: float
    prefill_seconds: float
    decode_seconds: float
    total_flops: float
    total_bytes: float
    how: str


def workload_floor(shape: ModelShape, requests: Sequence[Request], *, matmul_flops_per_s: float,
                   bandwidth_bytes_per_s: float | None, dtype_bytes: int) -> Floor:
    """W1's floor (docs/benchmarks.md): every request runs in one batch from the start; prefill costs its
    FLOPs (causal attention included, lm_head only on the sampled row); decode step t (all sequences
    still generating) costs max((weights + KV read) / bandwidth, FLOPs / matmul rate).
    bandwidth_bytes_per_s=None gives W5's CPU floor: FLOPs alone at the measured matmul rate."""
    import numpy as np

    prompts = np.array([len(r.prompt_token_ids) for r in requests], dtype=np.float64)
    outputs = np.array([r.max_tokens for r in requests], dtype=np.int64)
    per_token_linear = 2.0 * shape.layer_params
    per_sample_head = 2.0 * shape.lm_head_params
    prefill_flops = float(prompts.sum() * per_token_linear + len(requests) * per_sample_head
                          + shape.attention_flops(1, 1) * (prompts * (prompts + 1) / 2).sum())
    # Decode step t = 1 .. max_out-1 produces token t+1 of every sequence with outputs > t; the
    # context of such a sequence is prompt + t.
    steps = np.arange(1, int(outputs.max()))
    order = np.sort(outputs)
    first_live = np.searchsorted(order, steps, side="right")  # sequences sorted by outputs: live from here
    live = len(outputs) - first_live
    prompt_by_out = prompts[np.argsort(outputs, kind="stable")]
    suffix_prompt = np.concatenate([np.cumsum(prompt_by_out[::-1])[::-1], [0.0]])
    context_sum = suffix_prompt[first_live] + live * steps
    step_flops = live * (per_token_linear + per_sample_head) + shape.attention_flops(1, 1) * context_sum
    weight_bytes = (shape.layer_params + shape.lm_head_params) * dtype_bytes
    step_bytes = weight_bytes + context_sum * shape.kv_bytes_per_token(dtype_bytes)
    compute_time = step_flops / matmul_flops_per_s
    if bandwidth_bytes_per_s is None:
        decode_time = compute_time
        how = "matmul FLOPs / measured matmul rate (W5's CPU floor)"
    else:
        decode_time = np.maximum(step_bytes / bandwidth_bytes_per_s, compute_time)
        how = ("prefill FLOPs / matmul rate + sum over decode steps of max((weights + KV read) / read "
               "bandwidth, FLOPs / matmul rate), all requests batched from the start (W1's floor)")
    prefill_time = prefill_flops / matmul_flops_per_s
    return Floor(seconds=float(prefill_time + decode_time.sum()), prefill_seconds=float(prefill_time),
                 decode_seconds=float(decode_time.sum()), total_flops=float(prefill_flops + step_flops.sum()),
                 total_bytes=float(step_bytes.sum()) if bandwidth_bytes_per_s else 0.0, how=how)


# ----------------------------------------------------------------------------------------------
# Hardware ceilings, measured in the same run as the figures they bound.

@dataclass
class Ceilings:
    matmul_flops_per_s: float
    matmul_how: str
    read_bytes_per_s: float | None
    read_how: str


def measure_ceilings(device) -> Ceilings:
    import torch

    if device.type == "cuda":
        n = 8192
        a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
        b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
        matmul_s = median_cuda_seconds(lambda: a @ b, reps=10)
        x = torch.randn(1 << 29, device=device, dtype=torch.bfloat16)  # 1 GiB
        read_s = median_cuda_seconds(lambda: x.sum(), reps=10)
        del a, b, x
        torch.cuda.empty_cache()
        return Ceilings(2 * n ** 3 / matmul_s, f"bf16 {n}^3 matmul, median of 10",
                        (1 << 30) / read_s, "sum of a 1 GiB bf16 tensor, median of 10")
    from pagedcore.model_executor.cpu_linear import PACK_BATCH_HINT, onednn_linear_available

    n = 1024
    a = torch.randn(n, n, dtype=torch.float32)
    b = torch.randn(n, n, dtype=torch.float32)
    # Both libraries the engine could multiply with (torch's MKL sgemm, oneDNN with a packed weight,
    # which the engine uses: model_executor/cpu_linear.py); the faster one sets the ceiling.
    candidates = {"MKL sgemm": lambda: a @ b}
    if onednn_linear_available():
        packed = torch.ops.mkldnn._reorder_linear_weight(b, PACK_BATCH_HINT)
        candidates["oneDNN packed"] = lambda: torch.ops.mkldnn._linear_pointwise(a, packed, None, "none", [], "")
    rates = {}
    for name, fn in candidates.items():
        for _ in range(3):
            fn()
        rates[name] = 2 * n ** 3 / median_seconds(fn, reps=15)
    best = max(rates, key=rates.get)
    others = ", ".join(f"{name} {rate / 1e9:.0f} GFLOP/s" for name, rate in rates.items() if name != best)
    return Ceilings(rates[best], f"fp32 {n}^3 matmul on {torch.get_num_threads()} threads, median of 15, "
                    f"{best} (the faster{'; ' + others if others else ''})",
                    None, "not used on CPU (W5's floor is FLOPs only)")


def best_ceilings(first: Ceilings, second: Ceilings) -> Ceilings:
    """The higher of two readings of each ceiling (taken at the start and the end of a run)."""
    matmul = max(first, second, key=lambda c: c.matmul_flops_per_s)
    read = max(first, second, key=lambda c: c.read_bytes_per_s or 0.0)
    return Ceilings(matmul.matmul_flops_per_s, matmul.matmul_how + ", best of start and end of the run",
                    read.read_bytes_per_s, read.read_how + (", best of start and end of the run"
                                                            if read.read_bytes_per_s else ""))


def median_seconds(fn: Callable[[], object], reps: int) -> float:
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def median_cuda_seconds(fn: Callable[[], object], reps: int, warmup: int = 3) -> float:
    import torch

    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


def synchronize(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (q in [0, 100]); nan for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    k = (len(ordered) - 1) * q / 100.0
    lo, hi = math.floor(k), math.ceil(k)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


# ----------------------------------------------------------------------------------------------
# Running pagedcore on a list of requests (offline: every request queued at once).

@dataclass
class PassResult:
    wall_s: float
    num_prompt_tokens: int
    num_output_tokens: int
    num_cached_tokens: int  # prompt tokens taken from the prefix cache
    ttft_s: list[float]  # per request, from its submission (offline: all submitted at t=0)
    prefix_query_tokens: int  # scheduler counters over this pass
    prefix_hit_tokens: int
    num_preemptions: int

    @property
    def output_tok_per_s(self) -> float:
        return self.num_output_tokens / self.wall_s

    @property
    def total_tok_per_s(self) -> float:
        return (self.num_prompt_tokens + self.num_output_tokens) / self.wall_s

    @property
    def num_computed_prompt_tokens(self) -> int:
        return self.num_prompt_tokens - self.num_cached_tokens

    @property
    def hit_rate(self) -> float:
        return self.num_cached_tokens / self.num_prompt_tokens if self.num_prompt_tokens else 0.0

    def summary(self) -> dict:
        return {**asdict(self), "output_tok_per_s": self.output_tok_per_s, "total_tok_per_s": self.total_tok_per_s,
                "num_computed_prompt_tokens": self.num_computed_prompt_tokens, "hit_rate": self.hit_rate,
                "ttft_p50_s": percentile(self.ttft_s, 50), "ttft_p99_s": percentile(self.ttft_s, 99),
                "ttft_mean_s": statistics.fmean(self.ttft_s) if self.ttft_s else math.nan}


def run_pagedcore(llm, requests: Sequence[Request], *, temperature: float, seed: int | None = None) -> PassResult:
    """One pass of `requests` through llm.generate (ignore_eos, each request's max_tokens)."""
    from pagedcore.engine.sampling_params import SamplingParams

    params = [SamplingParams(temperature=temperature, max_tokens=r.max_tokens, ignore_eos=True, seed=seed)
              for r in requests]
    before = llm.scheduler.stats()
    synchronize(llm.device)
    start = time.perf_counter()
    outputs = llm.generate([r.prompt_token_ids for r in requests], params, use_tqdm=False)
    synchronize(llm.device)
    wall = time.perf_counter() - start
    after = llm.scheduler.stats()
    produced = sum(len(o.outputs[0].token_ids) for o in outputs)
    expected = num_output_tokens(requests)
    if produced != expected:
        raise RuntimeError(f"pagedcore produced {produced} output tokens, expected {expected} (ignore_eos)")
    return PassResult(
        wall_s=wall, num_prompt_tokens=num_prompt_tokens(requests), num_output_tokens=produced,
        num_cached_tokens=sum(o.num_cached_tokens for o in outputs),
        ttft_s=[o.metrics.time_to_first_token for o in outputs
                if o.metrics is not None and o.metrics.time_to_first_token is not None],
        prefix_query_tokens=after.num_prefix_query_tokens - before.num_prefix_query_tokens,
        prefix_hit_tokens=after.num_prefix_hit_tokens - before.num_prefix_hit_tokens,
        num_preemptions=after.num_preemptions - before.num_preemptions)


def build_llm(preset: str, *, device, model: str | None = None, **engine_args):
    """preset 'gpu': the Qwen3-0.6B shape, 'gpu-llama3-8b': the Llama-3-8B shape (random bf16 weights);
    'cpu': the default model, fp32.
    `model` overrides the preset's model (an HF directory, a .gguf, or the default model's name);
    engine_args: any other EngineArgs field (their defaults apply otherwise)."""
    from pagedcore.engine.llm import LLM

    if model is None and preset in GPU_SHAPES:
        model, load_format, dtype = str(write_model_dir(GPU_SHAPES[preset])), "dummy", "bfloat16"
    else:
        load_format, dtype = "auto", "auto"
    llm = LLM(model, device=str(device), dtype=dtype, load_format=load_format, verbose=True, **engine_args)
    # The cache is allocated uninitialized: touch every page now, so that the first timed pass does
    # not pay the page faults (on CPU they cost seconds per GiB) that later passes do not.
    for cache in llm.engine.runner.kv_caches:
        cache.key.zero_()
        cache.value.zero_()
    return llm


def model_shape_of(llm) -> ModelShape:
    return ModelShape.from_config(llm.model.config)


# ----------------------------------------------------------------------------------------------
# Options, device description and result files.

def resolve_device(name: str):
    import torch

    from pagedcore import _core

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() and _core.built_with_cuda() else "cpu"
    return torch.device(name)


def apply_preset(args: argparse.Namespace, presets: dict[str, dict]) -> None:
    """Fills every option the user left unset from the preset (default: gpu with a GPU, else cpu)."""
    if args.preset is None:
        args.preset = "gpu" if resolve_device(getattr(args, "device", "auto")).type == "cuda" else "cpu"
    for key, value in presets[args.preset].items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)


def device_description(device) -> str:
    import torch

    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return f"{props.name} ({props.multi_processor_count} SMs), torch {torch.__version__}"
    cpu = platform.processor() or "CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads)"


def run_info(device, argv: Sequence[str] | None) -> dict:
    return {"device": device_description(device), "device_type": device.type,
            "date": datetime.date.today().isoformat(), "command": " ".join(argv) if argv else None}


def results_dir(name: str, out: str | Path | None) -> Path:
    path = Path(out) if out else RESULTS_ROOT / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_json(payload: dict, path: Path, quiet: bool = False) -> Path:
    def default(value):
        if hasattr(value, "__dataclass_fields__"):
            return asdict(value)
        raise TypeError(f"cannot write {type(value).__name__} as JSON")

    path.write_text(json.dumps(payload, indent=1, default=default) + "\n")
    if not quiet:
        print(f"[bench] wrote {path}")
    return path


def command_line(name: str, argv: list[str] | None) -> list[str]:
    """The command a result's JSON records: `pagedcore bench NAME <flags>`."""
    return ["pagedcore", "bench", name, *(argv if argv is not None else sys.argv[1:])]


def report(payload: dict, stem: Path, print_report: Callable[[dict], None],
           plot: Callable[[dict, Path], None]) -> None:
    """Prints a benchmark's table, then writes STEM.json and its plot STEM.png."""
    print_report(payload)
    write_json(payload, stem.with_suffix(".json"))
    try_plot(plot, payload, stem.with_suffix(".png"))


def main_with_partial_saves(name: str, args: argparse.Namespace, presets: dict[str, dict],
                            run: Callable[..., dict], print_report: Callable[[dict], None],
                            plot: Callable[[dict, Path], None], argv: list[str] | None) -> int:
    """main() of a long benchmark: run(args, command, save=...) writes its partial results to
    results/NAME/NAME_<device>.json as it goes, then the table, JSON and plot are reported."""
    apply_preset(args, presets)
    stem = results_dir(name, args.out) / f"{name}_{resolve_device(args.device).type}"
    payload = run(args, command_line(name, argv),
                  save=lambda partial: write_json(partial, stem.with_suffix(".json"), quiet=True))
    report(payload, stem, print_report, plot)
    return 0


def try_plot(plot: Callable[[dict, Path], None], payload: dict, path: Path) -> None:
    """Plots need matplotlib; where it is missing (the GPU machine) the JSON is plotted later with
    `python -m pagedcore.bench.plots <json>`."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print(f"[bench] matplotlib is not installed: plot later with "
              f"`python -m pagedcore.bench.plots {path.with_suffix('.json')}`")
        return
    plot(payload, path)
    print(f"[bench] wrote {path}")


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table (prints readably and pastes into RESULTS.md)."""
    def cell(value: object) -> str:
        if isinstance(value, float):
            if math.isnan(value):
                return "-"
            return f"{value:.3g}" if abs(value) < 100 else f"{value:,.0f}"
        return str(value)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


class StepCounter:
    """Counts llm.engine.step() calls while installed, for per-step figures; remove() uninstalls it."""

    def __init__(self, llm):
        self.count = 0
        self._engine = llm.engine
        self._step = llm.engine.step
        self._engine.step = self._counted_step

    def _counted_step(self):
        self.count += 1
        return self._step()

    def remove(self) -> None:
        self._engine.step = self._step
