"""bench/bench_throughput.py: the same program as `pagedcore bench throughput` (pagedcore.bench.throughput).
`python bench/bench_throughput.py --help` lists its options."""

import sys

from pagedcore.bench.throughput import main

if __name__ == "__main__":
    sys.exit(main())
