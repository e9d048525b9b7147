"""`python -m pagedcore.bench.plots RESULT.json [...]`: draws the PNG of a benchmark's JSON (next to
it). The GPU machine has no matplotlib: the GPU run writes JSON, and the plots are made here."""

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
    paths = [Path(p) for p in (argv if argv is not None else sys.argv[1:])]
    if not paths:
        print("usage: python -m pagedcore.bench.plots RESULT.json [...]", file=sys.stderr)
        return 2
    for path in paths:
        print(f"[bench] wrote {plot_file(path)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
