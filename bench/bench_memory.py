"""bench/bench_memory.py: the same program as `pagedcore bench memory` (pagedcore.bench.memory).
`python bench/bench_memory.py --help` lists its options."""

import sys

from pagedcore.bench.memory import main

if __name__ == "__main__":
    sys.exit(main())
