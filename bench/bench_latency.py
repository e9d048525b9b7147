"""bench/bench_latency.py: the same program as `pagedcore bench latency` (pagedcore.bench.latency).
`python bench/bench_latency.py --help` lists its options."""

import sys

from pagedcore.bench.latency import main

if __name__ == "__main__":
    sys.exit(main())
