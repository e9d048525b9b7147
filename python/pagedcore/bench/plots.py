"""`python -m pagedcore.bench.plots RESULT.json [...]`: draws the PNG of a benchmark's JSON (next to
it). The GPU machine has no matplotlib: the GPU run writes JSON, and the plots are made here.

`python -m pagedcore.bench.plots --compare OUT.png LABEL=RESULT.json [...]`: latency runs of several
builds in one figure (a label may repeat: one line per run)."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path


def plot_file(path: Path) -> Path:
    payload = json.loads(path.read_text())
    module = importlib.import_module(f"pagedcore.bench.{payload['benchmark']}")
    png = path.with_suffix(".png")
    module.plot(payload, png)
    return png


def main(argv: list[str] | None = None) -> int:
    argv = list(argv if argv is not None else sys.argv[1:])
    if argv[:1] == ["--compare"]:
        return compare(argv[1:])
    paths = [Path(p) for p in argv]
    if not paths:
        print("usage: python -m pagedcore.bench.plots RESULT.json [...] | --compare OUT.png LABEL=RESULT.json [...]",
              file=sys.stderr)
        return 2
    for path in paths:
        print(f"[bench] wrote {plot_file(path)}")
    return 0


def compare(argv: list[str]) -> int:
    if len(argv) < 2 or not all("=" in a for a in argv[1:]):
        print("usage: python -m pagedcore.bench.plots --compare OUT.png LABEL=RESULT.json [...]", file=sys.stderr)
        return 2
    payloads: dict[str, list[dict]] = {}
    for arg in argv[1:]:
        label, path = arg.split("=", 1)
        payload = json.loads(Path(path).read_text())
        if payload["benchmark"] != "latency":
            print(f"--compare draws latency results; {path} is a {payload['benchmark']} result", file=sys.stderr)
            return 2
        payloads.setdefault(label, []).append(payload)
    from pagedcore.bench.latency import plot_compare

    plot_compare(payloads, Path(argv[0]))
    print(f"[bench] wrote {argv[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
