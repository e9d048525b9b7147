"""Structured outputs' cost (issue 16): throughput of a workload with half its requests under a JSON
schema against the same workload with none, in the same process, and the time xgrammar takes to
compile a typical schema (cold: a schema not seen before; warm: the cache).

    python3 bench/bench_structured.py [--device cpu|cuda] [--model DIR] [--rounds 2] [--json out.json]
    python3 bench/bench_structured.py --export-tokenizer .bench_tokenizer   # here
    python3 bench/bench_structured.py --device cuda --shape gpu --tokenizer .bench_tokenizer

Default: the default model (SmolLM2-135M-Instruct, fp32) on the CPU with W5's requests (32 prompts,
64 output tokens, greedy). `--shape gpu`: W1's requests on the Qwen3-0.6B shape with random bf16
weights and the tokenizer given (a folder with tokenizer.json and tokenizer_config.json: a grammar
needs one; the GPU machine has no default model, so export it here and carry it; ids past its
vocabulary are never allowed under a grammar).
A constrained request ends when its grammar is complete (or at its max_tokens); in the run without
constraints each request decodes (ignore_eos) the number of tokens it had under its constraint, so
the two runs do the same decoding work and differ only by the grammars' (output tokens per second).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import shutil
import sys
from pathlib import Path

import torch

from pagedcore.bench import common
from pagedcore.engine.sampling_params import SamplingParams
from pagedcore.engine.structured_outputs import StructuredOutputsParams

# A typical response schema: an object with a bounded string, a number, an enum and a list.
SCHEMA = {"type": "object", "properties": {
    "name": {"type": "string", "maxLength": 40}, "age": {"type": "integer", "minimum": 0, "maximum": 150},
    "role": {"enum": ["admin", "user", "guest"]},
    "tags": {"type": "array", "items": {"type": "string", "maxLength": 12}, "maxItems": 6}},
    "required": ["name", "age", "role", "tags"], "additionalProperties": False}


def run(llm, requests, constrained_every: int, lengths: list[int] | None = None) -> tuple[float, list[int]]:
    """-> (wall s, output tokens of each request); every constrained_every-th request under SCHEMA
    (0: none). lengths: each request's max_tokens instead of its own (ignore_eos)."""
    params = []
    for i, request in enumerate(requests):
        constrained = constrained_every and i % constrained_every == 0
        params.append(SamplingParams(
            temperature=0, max_tokens=lengths[i] if lengths else request.max_tokens, ignore_eos=not constrained,
            structured_outputs=StructuredOutputsParams(json=SCHEMA, disable_any_whitespace=True) if constrained else None))
    common.synchronize(llm.device)
    start = time.perf_counter()
    outputs = llm.generate([r.prompt_token_ids for r in requests], params, use_tqdm=False)
    common.synchronize(llm.device)
    wall = time.perf_counter() - start
    for i, output in enumerate(outputs):
        if constrained_every and i % constrained_every == 0 and output.outputs[0].finish_reason == "stop":
            json.loads(output.outputs[0].text)  # a complete output parses
    return wall, [len(o.outputs[0].token_ids) for o in outputs]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--model", default=None, help="an HF directory or .gguf with a tokenizer (default: the default model)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--json", default=None)
    p.add_argument("--shape", choices=sorted(common.GPU_SHAPES), default=None,
                   help="random bf16 weights at this shape with W1's requests (needs --tokenizer)")
    p.add_argument("--tokenizer", default=None, help="for --shape: a folder with tokenizer.json and tokenizer_config.json")
    p.add_argument("--num-requests", type=int, default=None, help="the first N requests only")
    p.add_argument("--export-tokenizer", default=None, metavar="DIR",
                   help="write the default model's tokenizer.json and tokenizer_config.json to DIR and exit")
    args = p.parse_args()
    if args.export_tokenizer:
        from pagedcore.loaders.model_loader import default_model_path
        from pagedcore.tokenizers.loader import load_tokenizer

        tokenizer = load_tokenizer(default_model_path())
        folder = Path(args.export_tokenizer)
        folder.mkdir(parents=True, exist_ok=True)
        tokenizer.backend.save(str(folder / "tokenizer.json"))
        (folder / "tokenizer_config.json").write_text(json.dumps({"bos_token": tokenizer.bos_token,
                                                                   "eos_token": tokenizer.eos_token}))
        print(f"wrote {folder}/tokenizer.json and tokenizer_config.json", file=sys.stderr)
        return
    device = torch.device(args.device)
    if args.shape is not None:
        if args.tokenizer is None:
            p.error("--shape needs --tokenizer (a tokenizer.json: see --export-tokenizer)")
        from pagedcore.engine.llm import LLM

        directory = common.write_model_dir(common.GPU_SHAPES[args.shape])
        for name in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy(Path(args.tokenizer) / name, directory / name)
        llm = LLM(str(directory), device=args.device, dtype="bfloat16", load_format="dummy", max_model_len=2048,
                  kv_cache_memory_bytes=(40 << 30) if device.type == "cuda" else (1 << 30),
                  enable_prefix_caching=False, verbose=False)
        requests = common.w1_requests()
    else:
        llm = common.build_llm("cpu", device=device, model=args.model, enable_prefix_caching=False)
        requests = common.w5_requests()
    requests = requests[:args.num_requests] if args.num_requests else requests

    schemas = [{**SCHEMA, "title": f"schema-{k}"} for k in range(3)]  # distinct: each compile is cold
    cold = []
    for schema in schemas:
        start = time.perf_counter()
        llm.engine.compile_grammar(SamplingParams(structured_outputs=StructuredOutputsParams(json=schema)))
        cold.append(time.perf_counter() - start)
    start = time.perf_counter()
    llm.engine.compile_grammar(SamplingParams(structured_outputs=StructuredOutputsParams(json=schemas[0])))
    warm = time.perf_counter() - start

    run(llm, requests[:4], 2)  # warm-up
    # A constrained request ends where its JSON is complete, much sooner than W1's lengths; the
    # unconstrained run gives every request the length it had under the constraint, so both runs
    # decode the same tokens in the same batches and differ only in the grammar work.
    results = {"none": [], "half": []}
    for _ in range(args.rounds):  # alternate, so drift in the machine's speed hits both alike
        wall, lengths = run(llm, requests, 2)
        results["half"].append(sum(lengths) / wall)
        wall, same = run(llm, requests, 0, lengths)
        assert same == lengths
        results["none"].append(sum(same) / wall)
    none, half = statistics.median(results["none"]), statistics.median(results["half"])
    report = {"device": common.device_description(device), "requests": len(requests),
              "output_tok_s_none": none, "output_tok_s_half_constrained": half, "slowdown": 1 - half / none,
              "rounds": results, "compile_cold_s_first": cold[0], "compile_cold_s_later": cold[1:],
              "compile_warm_s": warm}
    print(f"{report['device']}: {len(requests)} requests, output tok/s median of {args.rounds}: none {none:.1f}, "
          f"half under a JSON schema {half:.1f} ({100 * (1 - half / none):+.1f}% slower); schema compile "
          f"{1e3 * cold[0]:.0f} ms first (tokenizer scan included), {1e3 * statistics.mean(cold[1:]):.1f} ms cold, "
          f"{1e3 * warm:.2f} ms cached")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
