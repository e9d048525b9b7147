"""`pagedcore bench <name>`: the Python benchmarks of docs/benchmarks.md (also bench/bench_<name>.py).

  prefix      W2: prefix caching on vs off, cold and warm, the S sweep
  throughput  W1 (GPU) / W5 (CPU) against HF transformers generate and continuous batching
  memory      W3: paged vs contiguous KV, block sizes 4 to 64 (scheduler only, no model)
  latency     online TTFT / inter-token latency against `pagedcore serve`, Poisson arrivals

Each prints a Markdown table and writes JSON + a PNG plot under results/<name>/.
"""

from __future__ import annotations

import importlib

BENCHMARKS = {
    "prefix": "W2: prefix caching on vs off, cold and warm, the S sweep",
    "throughput": "W1 / W5 offline throughput against HF transformers (generate, continuous batching)",
    "memory": "W3: paged vs contiguous KV concurrency and utilization, block sizes 4 to 64",
    "latency": "online TTFT and inter-token latency against `pagedcore serve`, Poisson arrivals",
}


def main(name: str, argv: list[str]) -> int:
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; choose one of {', '.join(BENCHMARKS)}")
    return importlib.import_module(f"pagedcore.bench.{name}").main(argv)
