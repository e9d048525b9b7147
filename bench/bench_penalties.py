"""Per-step cost of the sampler's repetition / frequency / presence penalties (issue 14: "the penalty
state is updated incrementally on the device instead of rebuilt from Python lists every step").

    python3 bench/bench_penalties.py [--device cuda] [--rows 64] [--prompt 800] [--steps 30] [--vocab 151936]

Two forms over the same logits: per row (each penalized row's prompt and output tokens turned into
tensors from their Python lists, then a scatter, a unique and three updates per row: the CPU path),
and batched (the device-side PenaltyHistory: rows written once, then one copy of the step's new
tokens, and a few kernels over all the rows: the CUDA path). R rows of a P-token prompt (ids drawn
from 2,000, so repeats are common) decode S steps, one new token each per step; per step the
penalties are applied and the device synchronized. Median ms per step over the steps after the
first (which writes the batched form's rows), and a check of the last step's logits against the
per-row form on the CPU.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from pagedcore.engine.sampling_params import SamplingParams
from pagedcore.model_executor.sampler import Sampler, SequenceSamplingState


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--rows", type=int, default=64)
    p.add_argument("--prompt", type=int, default=800)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--vocab", type=int, default=151_936)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    device = torch.device(args.device)
    generator = torch.Generator().manual_seed(0)
    params = SamplingParams(temperature=1.0, repetition_penalty=1.1, frequency_penalty=0.2, presence_penalty=0.3)

    def make_states() -> list[SequenceSamplingState]:
        g = torch.Generator().manual_seed(1)
        return [SequenceSamplingState.create(params, torch.randint(0, 2000, (args.prompt,), generator=g).tolist(), 0)
                for _ in range(args.rows)]

    forms = {"per row": (Sampler(args.vocab, generator), make_states(), "_apply_penalties_per_row"),
             "batched": (Sampler(args.vocab, generator), make_states(), "_apply_penalties_batched")}
    logits = torch.randn(args.rows, args.vocab, generator=generator).to(device)
    rows = list(range(args.rows))
    times: dict[str, list[float]] = {name: [] for name in forms}
    last: dict[str, torch.Tensor] = {}
    for step in range(args.steps):
        new_tokens = torch.randint(0, 2000, (args.rows,), generator=generator).tolist()
        for name, (sampler, states, method) in forms.items():
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            last[name] = getattr(sampler, method)(logits, states, rows)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times[name].append((time.perf_counter() - start) * 1e3)
            for state, token in zip(states, new_tokens):
                state.output_token_ids.append(token)
    # The batched form must equal the per-row form computed on the CPU bit for bit. The per-row form
    # on CUDA is a few ulps off it at times (its division by a Python number), printed, not judged.
    per_row_states = forms["per row"][1]
    for state in per_row_states:
        state.output_token_ids.pop()  # back to the last step's tokens
    cpu_reference = forms["per row"][0]._apply_penalties_per_row(logits.cpu(), per_row_states, rows)
    equal = torch.equal(last["batched"].cpu(), cpu_reference)
    per_row_gap = (last["per row"].cpu() - cpu_reference).abs().max().item()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"penalties, {args.rows} rows x vocab {args.vocab}, {args.prompt}-token prompts + up to {args.steps} "
          f"outputs, {name}, torch {torch.__version__}")
    result = {}
    for form, values in times.items():
        median = statistics.median(values[1:])
        result[form] = median
        print(f"  {form:8s} {median:9.3f} ms per step (median of {len(values) - 1}; first step {values[0]:.3f} ms)")
    print(f"  per row / batched: {result['per row'] / result['batched']:.1f}x; batched equals the CPU per-row form: "
          f"{equal}; max |per row on {device.type} - it|: {per_row_gap:.2e}")
    if not equal:
        raise SystemExit("the batched form differs from the CPU per-row form")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": name, **vars(args), "ms_per_step": result}, f, indent=1)


if __name__ == "__main__":
    main()
