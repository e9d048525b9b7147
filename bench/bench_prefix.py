"""bench/bench_prefix.py: the same program as `pagedcore bench prefix` (pagedcore.bench.prefix).
`python bench/bench_prefix.py --help` lists its options."""

import sys

from pagedcore.bench.prefix import main

if __name__ == "__main__":
    sys.exit(main())
