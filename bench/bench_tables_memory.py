"""Memory the native block tables hold for many long sequences: `python bench/bench_tables_memory.py`.

4,096 sequences, each added with the scheduler's reservation (room for 2,048 tokens), a 512-token
prompt chunk appended, then 512 decode tokens one at a time; prints the resident memory the tables
grew by and how many tokens they keep. Since the tables keep only the tokens of blocks not yet
registered in the prefix cache (the caller keeps a sequence's tokens), an older build, whose tables
kept every token, prints "every token" there."""

from __future__ import annotations

import pagedcore

NUM_SEQS, BLOCK_SIZE, PROMPT, DECODE, RESERVE = 4096, 16, 512, 512, 2048


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


def main() -> None:
    tables = pagedcore.BlockTables(NUM_SEQS * (PROMPT + DECODE) // BLOCK_SIZE + 16, BLOCK_SIZE)
    base = rss_mib()
    for seq in range(NUM_SEQS):
        tables.add_sequence(seq, "", RESERVE)
        tables.append(seq, [(seq * 31 + i) % 32000 for i in range(PROMPT)])
    for i in range(DECODE):
        for seq in range(NUM_SEQS):
            tables.append(seq, [(seq + i) % 32000])
    tables.check_invariants()
    kept = (sum(len(tables.unregistered_tokens(seq)) for seq in range(NUM_SEQS))
            if hasattr(tables, "unregistered_tokens") else "every token")
    print(f"{pagedcore.__file__}: the tables grew resident memory by {rss_mib() - base:.1f} MiB for {NUM_SEQS} "
          f"sequences of {tables.num_tokens(0)} tokens; tokens kept by the tables: {kept}")


if __name__ == "__main__":
    main()
