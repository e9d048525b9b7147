"""W4 decode attention: pagedcore vs torch SDPA (contiguous K/V) vs torch FlexAttention (paged
K/V through torch.nn.attention.experimental._paged_attention), same shapes, same data, one run.

    python bench/bench_attention_peers.py [--reps 50] [--json out.json] [--flex-page-size 16]
    python bench/bench_attention_peers.py --plot out.json      # draws out.png (no GPU needed)

Llama-3-8B heads (32 q heads, 8 kv heads, head_dim 128), bf16, block 16, random non-contiguous
block tables. Each implementation sweeps over rotated input sets that together exceed L2; the sweep is
captured in a CUDA graph (eager when capture fails; the row says which) and CUDA events time its
replays; the median over --reps sweeps is reported per call. Bytes = K and V read
+ Q read + O written + block table; the device's read bandwidth (sum of a 1 GiB bf16 tensor) is
measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import math

import torch
import torch.nn.functional as F
from pagedcore import ops
from pagedcore.bench.common import median_cuda_seconds

SHAPES = [(1, 1024), (64, 1024), (8, 4096), (64, 4096), (16, 16384)]
NUM_HEADS, NUM_KV_HEADS, HEAD_DIM, BLOCK_SIZE = 32, 8, 128, 16
DTYPE = torch.bfloat16


def median_ms(fn, reps: int) -> float:
    return median_cuda_seconds(fn, reps) * 1e3


def graphed(fn):
    """Replay of fn captured in a CUDA graph (times the GPU work, not Python launch overhead);
    fn itself when capture fails."""
    try:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            fn()
        torch.cuda.current_stream().wait_stream(side)
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn()
        return graph.replay, "graph"
    except Exception as e:  # noqa: BLE001 - fall back to eager timing and say so
        torch.cuda.synchronize()
        return fn, f"eager ({type(e).__name__})"


def read_bandwidth_gbps(reps: int) -> float:
    x = torch.randn(1 << 29, device="cuda", dtype=DTYPE)  # 1 GiB
    ms = median_ms(lambda: x.sum(), reps)
    return x.numel() * x.element_size() / (ms * 1e-3) / 1e9


class InputSet:
    """One batch: contiguous K/V for SDPA, the same values in a paged cache for pagedcore and for
    FlexAttention (both through one random permutation of blocks)."""

    def __init__(self, batch: int, context: int, flex_page: int | None):
        self.q = torch.randn(batch, NUM_HEADS, HEAD_DIM, device="cuda", dtype=DTYPE)
        self.k = torch.randn(batch, NUM_KV_HEADS, context, HEAD_DIM, device="cuda", dtype=DTYPE)
        self.v = torch.randn_like(self.k)
        blocks_per_seq = math.ceil(context / BLOCK_SIZE)
        num_blocks = batch * blocks_per_seq
        perm = torch.randperm(num_blocks, device="cuda")
        self.block_tables = perm.view(batch, blocks_per_seq).int()
        self.k_cache = torch.empty(num_blocks, NUM_KV_HEADS, BLOCK_SIZE, HEAD_DIM, device="cuda", dtype=DTYPE)
        self.v_cache = torch.empty_like(self.k_cache)
        # [B, Hkv, ctx, D] -> [B, blocks, Hkv, BLOCK, D] -> scatter to physical blocks.
        kb = self.k.view(batch, NUM_KV_HEADS, blocks_per_seq, BLOCK_SIZE, HEAD_DIM).transpose(1, 2)
        vb = self.v.view(batch, NUM_KV_HEADS, blocks_per_seq, BLOCK_SIZE, HEAD_DIM).transpose(1, 2)
        self.k_cache[perm] = kb.reshape(num_blocks, NUM_KV_HEADS, BLOCK_SIZE, HEAD_DIM)
        self.v_cache[perm] = vb.reshape(num_blocks, NUM_KV_HEADS, BLOCK_SIZE, HEAD_DIM)
        self.k_cache = ops.kv_cache_from_logical(self.k_cache)  # the CUDA kernels' chunk order
        self.v_cache = ops.kv_cache_from_logical(self.v_cache)
        self.context_lens = torch.full((batch,), context, dtype=torch.int32, device="cuda")
        self.query_start_loc = torch.arange(batch + 1, dtype=torch.int32, device="cuda")
        self.out = torch.empty_like(self.q)
        self.flex = None
        if flex_page is not None:
            self.flex = FlexPaged(self, batch, context, flex_page)


class FlexPaged:
    """FlexAttention over a paged cache [1, Hkv, n_pages * page, D] with a random page table."""

    def __init__(self, s: InputSet, batch: int, context: int, page: int):
        from torch.nn.attention.experimental._paged_attention import PagedAttention
        from torch.nn.attention.flex_attention import create_block_mask

        pages_per_seq = math.ceil(context / page)
        n_pages = batch * pages_per_seq
        pa = PagedAttention(n_pages, page, batch, device="cuda")
        perm = torch.randperm(n_pages, device="cuda")
        table = perm.view(batch, pages_per_seq)
        pa.page_table[:, :pages_per_seq] = table
        pa.physical_to_logical.scatter_(
            1, table, torch.arange(pages_per_seq, device="cuda").expand(batch, -1).contiguous())
        pa.capacity[:] = pages_per_seq * page
        pa.empty_pages = []
        self.k_cache = torch.empty(1, NUM_KV_HEADS, n_pages * page, HEAD_DIM, device="cuda", dtype=DTYPE)
        self.v_cache = torch.empty_like(self.k_cache)
        kp = s.k.view(batch, NUM_KV_HEADS, pages_per_seq, page, HEAD_DIM).permute(1, 0, 2, 3, 4)
        vp = s.v.view(batch, NUM_KV_HEADS, pages_per_seq, page, HEAD_DIM).permute(1, 0, 2, 3, 4)
        kc = self.k_cache.view(NUM_KV_HEADS, n_pages, page, HEAD_DIM)
        vc = self.v_cache.view(NUM_KV_HEADS, n_pages, page, HEAD_DIM)
        kc[:, table.reshape(-1)] = kp.reshape(NUM_KV_HEADS, n_pages, page, HEAD_DIM)
        vc[:, table.reshape(-1)] = vp.reshape(NUM_KV_HEADS, n_pages, page, HEAD_DIM)
        logical = create_block_mask(lambda b, h, q, kv: kv >= 0, batch, None, 1, context,
                                    BLOCK_SIZE=(128, page), device="cuda")
        self.block_mask = pa.convert_logical_block_mask(logical)
        self.score_mod = pa.get_score_mod(None)
        self.q = s.q.unsqueeze(2)  # [B, Hq, 1, D]


def plot(json_path: str) -> str:
    """Bar chart of a run's JSON (GB/s of K/V + Q + O + tables per shape and implementation), written
    next to it as .png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(json_path) as f:
        run = json.load(f)
    rows = run["rows"]
    shapes = [r["shape"] for r in rows]
    series = {
        "pagedcore (paged)": [r["ours_gbps"] for r in rows],
        "torch SDPA (contiguous K/V)": [r["ours_gbps"] * r["ours_us"] / r["sdpa_us"] for r in rows],
        "torch FlexAttention (paged)": [r["ours_gbps"] * r["ours_us"] / r["flex_us"] for r in rows],
    }
    fig, ax = plt.subplots(figsize=(9, 4.5))
    width = 0.27
    for i, (name, values) in enumerate(series.items()):
        xs = [j + (i - 1) * width for j in range(len(shapes))]
        bars = ax.bar(xs, values, width, label=name)
        if i == 0:
            for bar, r in zip(bars, rows):
                ax.annotate(f"SDPA/ours {r['sdpa_over_ours']:.2f}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                            ha="center", va="bottom", fontsize=7, xytext=(0, 2), textcoords="offset points")
    ax.set_xticks(range(len(shapes)), [f"{s}\n(batch x context)" for s in shapes], fontsize=8)
    ax.set_ylabel("GB/s (K, V, Q, O, block tables)")
    ax.set_title(f"W4 decode attention, {run['device']}: Llama-3-8B heads, bf16, block 16", fontsize=10)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=3)
    ax.margins(y=0.12)
    fig.tight_layout()
    png = json_path.rsplit(".", 1)[0] + ".png"
    fig.savefig(png, dpi=120)
    return png


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=50)
    parser.add_argument("--json", type=str, default=None, help="write the rows to this file too")
    parser.add_argument("--flex-page-size", type=int, default=BLOCK_SIZE)
    parser.add_argument("--plot", type=str, default=None, help="draw this run JSON as a PNG beside it and exit")
    args = parser.parse_args()
    if args.plot:
        print(f"wrote {plot(args.plot)}")
        return

    from torch.nn.attention.flex_attention import flex_attention

    flex = torch.compile(flex_attention, dynamic=False)
    props = torch.cuda.get_device_properties(0)
    read_gbps = read_bandwidth_gbps(args.reps)
    l2 = props.L2_cache_size
    print(f"device: {props.name}; torch {torch.__version__}; measured read bandwidth (1 GiB bf16 sum): "
          f"{read_gbps:.0f} GB/s", flush=True)

    rows = []
    for batch, context in SHAPES:
        kv_bytes = 2 * batch * context * NUM_KV_HEADS * HEAD_DIM * 2
        num_sets = max(1, min(32, math.ceil(4 * l2 / kv_bytes)))
        flex_note = ""
        try:
            sets = [InputSet(batch, context, args.flex_page_size) for _ in range(num_sets)]
        except Exception as e:  # noqa: BLE001 - report and run the others
            flex_note = f"flex setup failed: {type(e).__name__}: {e}"
            sets = [InputSet(batch, context, None) for _ in range(num_sets)]
        splits = ops.recommended_num_splits(batch, NUM_KV_HEADS, NUM_HEADS, HEAD_DIM, DTYPE, context)
        workspace = ops.paged_attention_workspace(batch, NUM_HEADS, HEAD_DIM, splits, "cuda")

        def ours():
            for s in sets:
                ops.paged_attention(s.q, s.k_cache, s.v_cache, s.block_tables, s.context_lens, s.query_start_loc,
                                    out=s.out, max_query_len=1, num_splits=splits, workspace=workspace)

        def sdpa():
            for s in sets:
                F.scaled_dot_product_attention(s.q.unsqueeze(2), s.k, s.v, enable_gqa=True)

        def flex_paged():
            for s in sets:
                flex(s.flex.q, s.flex.k_cache, s.flex.v_cache, block_mask=s.flex.block_mask,
                     score_mod=s.flex.score_mod, enable_gqa=True)

        s0 = sets[0]
        ref = F.scaled_dot_product_attention(s0.q.unsqueeze(2).float(), s0.k.float(), s0.v.float(),
                                             enable_gqa=True).squeeze(2)
        ours()
        err_ours = (s0.out.float() - ref).abs().max().item()
        run_ours, mode_ours = graphed(ours)
        run_sdpa, mode_sdpa = graphed(sdpa)
        t_ours = median_ms(run_ours, args.reps) / num_sets
        t_sdpa = median_ms(run_sdpa, args.reps) / num_sets
        mode_flex = ""
        t_flex, err_flex = float("nan"), float("nan")
        if s0.flex is not None:
            try:
                o = flex(s0.flex.q, s0.flex.k_cache, s0.flex.v_cache, block_mask=s0.flex.block_mask,
                         score_mod=s0.flex.score_mod, enable_gqa=True)
                err_flex = (o.squeeze(2).float() - ref).abs().max().item()
                run_flex, mode_flex = graphed(flex_paged)
                t_flex = median_ms(run_flex, args.reps) / num_sets
            except Exception as e:  # noqa: BLE001
                flex_note = f"flex failed: {type(e).__name__}: {str(e)[:200]}"
        nbytes = kv_bytes + 2 * batch * NUM_HEADS * HEAD_DIM * 2 + batch * math.ceil(context / BLOCK_SIZE) * 4
        gbps = nbytes / (t_ours * 1e-3) / 1e9
        row = dict(shape=f"{batch}x{context}", splits=splits, sets=num_sets, ours_us=t_ours * 1e3, ours_gbps=gbps,
                   of_read_bw=gbps / read_gbps, sdpa_us=t_sdpa * 1e3, flex_us=t_flex * 1e3,
                   sdpa_over_ours=t_sdpa / t_ours, flex_over_ours=t_flex / t_ours, max_err_ours=err_ours,
                   max_err_flex=err_flex, timing=f"ours {mode_ours}, sdpa {mode_sdpa}, flex {mode_flex}", note=flex_note)
        rows.append(row)
        print(json.dumps(row), flush=True)
        del sets

    print(f"\nW4 decode attention, {props.name}, read bandwidth {read_gbps:.0f} GB/s "
          f"(flex page size {args.flex_page_size})")
    print(f"{'shape':>9} {'ours us':>9} {'GB/s':>7} {'of BW':>6} {'SDPA us':>9} {'Flex us':>9} "
          f"{'SDPA/ours':>9} {'Flex/ours':>9}")
    for r in rows:
        print(f"{r['shape']:>9} {r['ours_us']:9.1f} {r['ours_gbps']:7.0f} {r['of_read_bw']:6.3f} {r['sdpa_us']:9.1f} "
              f"{r['flex_us']:9.1f} {r['sdpa_over_ours']:9.2f} {r['flex_over_ours']:9.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(device=props.name, read_gbps=read_gbps, rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
