"""paged_attention (CPU always, CUDA when present) against a float64 reference that walks the
block table, on hostile inputs: odd context lengths, random non-contiguous block tables, NaN in
every unused cache slot, GQA ratios 1-8 (and 32 on CUDA), mixed decode + prefill batches, strided
views. Fresh random data every run; the seed is in each failure message."""

from __future__ import annotations

import math
import os

import pytest
import torch

import pagedcore
from pagedcore import _core, ops
from kernel_reference import paged_attention_reference

HAS_CUDA = torch.cuda.is_available() and pagedcore.built_with_cuda()
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device and a CUDA build of pagedcore")

# Tolerance set once per dtype (max abs error vs the float64 reference; outputs are O(1)).
TOLERANCE = {torch.float32: 2e-4, torch.float16: 4e-3, torch.bfloat16: 3e-2}

DEVICE_DTYPES = [
    pytest.param("cpu", torch.float32, id="cpu-fp32"),
    pytest.param("cpu", torch.bfloat16, id="cpu-bf16"),
    pytest.param("cuda", torch.float16, id="cuda-fp16", marks=[needs_cuda, pytest.mark.gpu]),
    pytest.param("cuda", torch.bfloat16, id="cuda-bf16", marks=[needs_cuda, pytest.mark.gpu]),
]
CUDA_DTYPES = [
    pytest.param(torch.float16, id="fp16", marks=[needs_cuda, pytest.mark.gpu]),
    pytest.param(torch.bfloat16, id="bf16", marks=[needs_cuda, pytest.mark.gpu]),
]


@pytest.fixture
def seed() -> int:
    s = int.from_bytes(os.urandom(4), "little")
    torch.manual_seed(s)
    return s


def make_batch(device, dtype, *, query_lens, context_lens, num_heads, num_kv_heads, head_dim, block_size,
               spare_blocks=3, q_view=False):
    """Caches full of NaN except the sequences' tokens, placed through random block tables. The
    reference reads k_logical / v_logical (plain order); the kernels read k_cache / v_cache (the
    device's order)."""
    num_seqs = len(context_lens)
    blocks_needed = [math.ceil(c / block_size) for c in context_lens]
    num_blocks = sum(blocks_needed) + spare_blocks
    k_cache = torch.full((num_blocks, num_kv_heads, block_size, head_dim), float("nan"), dtype=dtype, device=device)
    v_cache = torch.full_like(k_cache, float("nan"))
    max_blocks = max(blocks_needed) + 2
    # Padding entries point far outside the pool: a kernel that reads them faults or fails.
    block_tables = torch.full((num_seqs, max_blocks), num_blocks + 12345, dtype=torch.int32)
    perm = torch.randperm(num_blocks)
    used = 0
    for i, (ctx, nb) in enumerate(zip(context_lens, blocks_needed)):
        block_tables[i, :nb] = perm[used:used + nb].int()
        used += nb
        t = torch.arange(ctx)
        blocks = block_tables[i, t // block_size].long()
        k_cache[blocks, :, t % block_size] = torch.randn(ctx, num_kv_heads, head_dim).to(device, dtype)
        v_cache[blocks, :, t % block_size] = torch.randn(ctx, num_kv_heads, head_dim).to(device, dtype)
    query_start_loc = [0]
    for n in query_lens:
        query_start_loc.append(query_start_loc[-1] + n)
    num_tokens = query_start_loc[-1]
    if q_view:  # q as a slice of a fused qkv tensor: strided tokens
        qkv = torch.randn(num_tokens, num_heads + 2 * num_kv_heads, head_dim).to(device, dtype)
        q = qkv[:, :num_heads]
    else:
        q = torch.randn(num_tokens, num_heads, head_dim).to(device, dtype)
    return dict(
        q=q, k_cache=ops.kv_cache_from_logical(k_cache), v_cache=ops.kv_cache_from_logical(v_cache),
        k_logical=k_cache, v_logical=v_cache, block_tables=block_tables.to(device),
        context_lens=torch.tensor(context_lens, dtype=torch.int32, device=device),
        query_start_loc=torch.tensor(query_start_loc, dtype=torch.int32, device=device),
        context_list=list(context_lens), qsl_list=query_start_loc,
    )


def check(batch, *, seed, dtype, **kwargs):
    scale = 1.0 / math.sqrt(batch["q"].shape[-1])
    out = ops.paged_attention(batch["q"], batch["k_cache"], batch["v_cache"], batch["block_tables"],
                              batch["context_lens"], batch["query_start_loc"], scale=scale, **kwargs)
    ref = paged_attention_reference(batch["q"], batch["k_logical"], batch["v_logical"], batch["block_tables"],
                                    batch["context_list"], batch["qsl_list"], scale)
    assert out.shape == batch["q"].shape and out.dtype == dtype
    assert torch.isfinite(out).all(), f"non-finite output (seed {seed})"
    err = (out.double() - ref).abs().max().item()
    assert err <= TOLERANCE[dtype], f"max abs error {err:.3g} > {TOLERANCE[dtype]} (seed {seed})"
    return out


def hostile_lengths(block_size):
    return sorted({1, max(1, block_size - 1), block_size, block_size + 1, 17, 97})


@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("group", [1, 2, 4, 8])
@pytest.mark.parametrize("block_size", [1, 16, 32])
@pytest.mark.parametrize("head_dim", [64, 128])
def test_decode_hostile_lengths(device, dtype, group, block_size, head_dim, seed):
    lengths = hostile_lengths(block_size)
    batch = make_batch(device, dtype, query_lens=[1] * len(lengths), context_lens=lengths, num_heads=2 * group,
                       num_kv_heads=2, head_dim=head_dim, block_size=block_size)
    check(batch, seed=seed, dtype=dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("group", [9, 16, 32])
def test_cpu_decode_of_large_groups(dtype, group, seed):
    """More than 8 query heads per KV head: the CPU's decode rows take the tiled kernel, not the
    two-pass one."""
    lengths = hostile_lengths(16)
    batch = make_batch("cpu", dtype, query_lens=[1] * len(lengths), context_lens=lengths, num_heads=2 * group,
                       num_kv_heads=2, head_dim=64, block_size=16)
    check(batch, seed=seed, dtype=dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("group", [1, 3, 8])
@pytest.mark.parametrize("threads", ["1", "16"])
def test_cpu_decode_items_of_all_kv_heads_or_one(dtype, group, threads, seed, monkeypatch):
    """With at least two sequences per thread a CPU decode row is one work item for all its KV heads,
    else one per KV head (PAGEDCORE_NUM_THREADS sets which here: 1 and 16 threads, 5 sequences)."""
    monkeypatch.setenv("PAGEDCORE_NUM_THREADS", threads)
    lengths = [1, 15, 16, 17, 97]
    batch = make_batch("cpu", dtype, query_lens=[1] * len(lengths), context_lens=lengths, num_heads=3 * group,
                       num_kv_heads=3, head_dim=64, block_size=16)
    check(batch, seed=seed, dtype=dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("block_size", [2, 4, 128, 256])
def test_cpu_block_sizes_around_the_16_key_chunks(dtype, block_size, seed):
    """The CPU kernels read keys in chunks of up to 16 within a block (two-pass decode) or 16 across
    blocks (tiles): blocks smaller and much larger than a chunk, decode and prefill rows."""
    rows = [(1, 1), (1, 3), (1, 37), (1, 300), (20, 20), (33, 290)]
    batch = make_batch("cpu", dtype, query_lens=[r[0] for r in rows], context_lens=[r[1] for r in rows],
                       num_heads=8, num_kv_heads=2, head_dim=64, block_size=block_size)
    check(batch, seed=seed, dtype=dtype, max_query_len=33)


@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("trend", ["rising", "falling"])
def test_scores_that_move_the_running_max(device, dtype, trend, seed):
    """Positive q and K rows whose scale grows (or shrinks) along the sequence: every tile of an
    online softmax raises the running max ("rising": earlier tiles' weights rescaled, by exactly 0
    once the gap passes float's exp range) or none does ("falling"). Decode rows, a prefill and a
    chunk over a cached past."""
    rows = [(1, 200), (1, 37), (40, 40), (24, 150)]
    batch = make_batch(device, dtype, query_lens=[r[0] for r in rows], context_lens=[r[1] for r in rows],
                       num_heads=6, num_kv_heads=2, head_dim=64, block_size=16)
    for i, (_, ctx) in enumerate(rows):
        t = torch.arange(ctx)
        blocks = batch["block_tables"][i, t // 16].long().to(batch["k_logical"].device)
        growth = (t if trend == "rising" else ctx - 1 - t).double() / 4 + 0.25  # up to 50x
        keys = batch["k_logical"][blocks, :, t % 16].double().abs() * growth[:, None, None].to(blocks.device)
        batch["k_logical"][blocks, :, t % 16] = keys.to(dtype)
    batch["q"] = batch["q"].abs()
    batch["k_cache"] = ops.kv_cache_from_logical(batch["k_logical"])
    check(batch, seed=seed, dtype=dtype, max_query_len=40)


@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("group", [1, 4, 8])
@pytest.mark.parametrize("block_size", [8, 16])
def test_mixed_decode_and_prefill(device, dtype, group, block_size, seed):
    # (query_len, context_len): decode rows, a fresh prompt, chunked prefill over a cached past.
    rows = [(1, 1), (17, 17), (1, 97), (5, 5 + 40), (1, block_size + 1), (97, 97), (16, 16 + block_size - 1), (2, 130)]
    batch = make_batch(device, dtype, query_lens=[r[0] for r in rows], context_lens=[r[1] for r in rows],
                       num_heads=3 * group, num_kv_heads=3, head_dim=64, block_size=block_size, q_view=True)
    check(batch, seed=seed, dtype=dtype, max_query_len=97)


@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES)
def test_long_context_8192(device, dtype, seed):
    rows = [(1, 8192), (1, 3), (64, 8192)]
    batch = make_batch(device, dtype, query_lens=[r[0] for r in rows], context_lens=[r[1] for r in rows],
                       num_heads=8, num_kv_heads=2, head_dim=128, block_size=16)
    check(batch, seed=seed, dtype=dtype)


@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES)
def test_strided_out_and_explicit_scale(device, dtype, seed):
    batch = make_batch(device, dtype, query_lens=[1, 3], context_lens=[40, 20], num_heads=4, num_kv_heads=2,
                       head_dim=64, block_size=16)
    big = torch.full((4, 6, 64), float("nan"), dtype=dtype, device=device)
    out = big[:, 1:5]
    scale = 0.3
    ops.paged_attention(batch["q"], batch["k_cache"], batch["v_cache"], batch["block_tables"], batch["context_lens"],
                        batch["query_start_loc"], scale=scale, out=out)
    ref = paged_attention_reference(batch["q"], batch["k_logical"], batch["v_logical"], batch["block_tables"],
                                    batch["context_list"], batch["qsl_list"], scale)
    assert (out.double() - ref).abs().max().item() <= TOLERANCE[dtype], f"seed {seed}"
    assert torch.isnan(big[:, 0]).all() and torch.isnan(big[:, 5]).all(), "wrote outside the out view"


@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("head_dim", pagedcore.SUPPORTED_HEAD_SIZES)
@pytest.mark.parametrize("block_size", [2, 16, 64, 256])
def test_every_head_size(device, dtype, head_dim, block_size, seed):
    lengths = hostile_lengths(block_size) + [300]
    qlens = [1] * len(lengths)
    qlens[-1] = 33
    batch = make_batch(device, dtype, query_lens=qlens, context_lens=lengths, num_heads=8, num_kv_heads=2,
                       head_dim=head_dim, block_size=block_size)
    check(batch, seed=seed, dtype=dtype)


def test_supported_head_sizes_are_vllms_but_120():
    assert pagedcore.SUPPORTED_HEAD_SIZES == (32, 64, 80, 96, 112, 128, 192, 256)


@pytest.mark.parametrize("dtype", CUDA_DTYPES)
@pytest.mark.parametrize("num_splits", [1, 2, 7, 64])
def test_cuda_split_kv(dtype, num_splits, seed):
    lengths = [1, 15, 16, 17, 97, 1000, 4099]
    batch = make_batch("cuda", dtype, query_lens=[1] * len(lengths), context_lens=lengths, num_heads=32,
                       num_kv_heads=8, head_dim=128, block_size=16)
    check(batch, seed=seed, dtype=dtype, num_splits=num_splits)


@pytest.mark.parametrize("dtype", CUDA_DTYPES)
@pytest.mark.parametrize("head_dim", [32, 64, 96, 128, 192, 256])
@pytest.mark.parametrize("num_splits", [1, 3])
def test_cuda_many_sequences(dtype, head_dim, num_splits, seed):
    # Decode CTAs have 8 warps when the grid fits in one wave of those, else 4: the small batches of
    # the other tests take the 8-warp kernel, these 160 sequences x 4 KV heads (more CTAs than any
    # GPU keeps resident) the 4-warp one. Prefill rows sit between the decode rows; the lengths
    # include warps with no tile (1 token) and last tiles with rows past the context.
    lengths = [1, 15, 16, 17, 97] + torch.randint(1, 400, (155,)).tolist()
    query_lens = [1] * len(lengths)
    for i in range(7, len(lengths), 23):
        query_lens[i] = min(lengths[i], 5)
    batch = make_batch("cuda", dtype, query_lens=query_lens, context_lens=lengths, num_heads=16, num_kv_heads=4,
                       head_dim=head_dim, block_size=16)
    check(batch, seed=seed, dtype=dtype, num_splits=num_splits, max_query_len=5)


@pytest.mark.parametrize("dtype", CUDA_DTYPES)
def test_cuda_split_counters_rearm_between_calls(dtype, seed):
    # The split-merge counters live in the workspace: each call must leave them at zero for the
    # next one, and no call's partials may land on them, whatever its split count, batch size or
    # lengths (one workspace serves every layer of every step).
    num_heads, head_dim = 16, 128
    ws = ops.paged_attention_workspace(5, num_heads, head_dim, 64, "cuda")
    counter_bytes = ws.numel() // 33 // 16 * 16  # split_counter_region_bytes (pagedcore/kernels.h)
    for num_seqs, splits in ((5, 7), (5, 64), (5, 2), (2, 64), (5, 7), (3, 3)):
        lengths = torch.randint(1, 3000, (num_seqs,)).tolist()
        batch = make_batch("cuda", dtype, query_lens=[1] * num_seqs, context_lens=lengths, num_heads=num_heads,
                           num_kv_heads=4, head_dim=head_dim, block_size=16)
        check(batch, seed=seed, dtype=dtype, num_splits=splits, workspace=ws)
        torch.cuda.synchronize()
        assert not ws[:counter_bytes].any(), f"split counters left non-zero after {num_seqs} seqs x {splits} splits"


@needs_cuda
@pytest.mark.gpu
def test_workspace_too_small_is_refused():
    batch = make_batch("cuda", torch.float16, query_lens=[1, 1], context_lens=[300, 40], num_heads=8, num_kv_heads=2,
                       head_dim=64, block_size=16)
    small = ops.paged_attention_workspace(1, 8, 64, 4, "cuda")  # made for one sequence
    with pytest.raises(ValueError, match="workspace"):
        ops.paged_attention(batch["q"], batch["k_cache"], batch["v_cache"], batch["block_tables"],
                            batch["context_lens"], batch["query_start_loc"], num_splits=4, workspace=small)


@pytest.mark.parametrize("dtype", CUDA_DTYPES)
@pytest.mark.parametrize("group", [16, 32])
def test_cuda_large_groups(dtype, group, seed):
    # MQA with many query heads per KV head: groups past 16 run through the prefill kernel.
    batch = make_batch("cuda", dtype, query_lens=[1, 1, 9], context_lens=[1, 300, 40], num_heads=group,
                       num_kv_heads=1, head_dim=128, block_size=16)
    check(batch, seed=seed, dtype=dtype)


@pytest.mark.parametrize("dtype", CUDA_DTYPES)
def test_cuda_context_131072(dtype, seed):
    batch = make_batch("cuda", dtype, query_lens=[1, 1, 16], context_lens=[131072, 5, 131072], num_heads=8,
                       num_kv_heads=1, head_dim=128, block_size=16)
    check(batch, seed=seed, dtype=dtype)


@pytest.mark.parametrize("dtype", CUDA_DTYPES)
def test_cuda_matches_cpu_path_semantics_with_graph_capture(dtype, seed):
    # Host hints given (no sync): the call is capturable in a CUDA graph and replays correctly.
    batch = make_batch("cuda", dtype, query_lens=[1] * 4, context_lens=[5, 300, 1000, 17], num_heads=8,
                       num_kv_heads=2, head_dim=128, block_size=16)
    splits = 4
    ws = ops.paged_attention_workspace(4, 8, 128, splits, "cuda")
    out = torch.empty_like(batch["q"])
    args = (batch["q"], batch["k_cache"], batch["v_cache"], batch["block_tables"], batch["context_lens"],
            batch["query_start_loc"])
    kwargs = dict(out=out, max_query_len=1, num_splits=splits, workspace=ws)
    ops.paged_attention(*args, **kwargs)  # warm-up (sets kernel attributes outside capture)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        ops.paged_attention(*args, **kwargs)
    out.fill_(float("nan"))
    graph.replay()
    torch.cuda.synchronize()
    ref = paged_attention_reference(batch["q"], batch["k_logical"], batch["v_logical"], batch["block_tables"],
                                    batch["context_list"], batch["qsl_list"], 1 / math.sqrt(128))
    assert (out.double() - ref).abs().max().item() <= TOLERANCE[dtype], f"seed {seed}"


# ---- the step plan: validated once, run by every layer ---------------------------------------------------

@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES)
def test_one_plan_runs_every_layer(device, dtype, seed):
    # Three "layers": three caches of one shape behind one step's block tables, one plan for all.
    step = make_batch(device, dtype, query_lens=[1, 7, 1], context_lens=[33, 40, 700], num_heads=8, num_kv_heads=2,
                      head_dim=64, block_size=16)
    layers = [step] + [make_layer_like(step) for _ in range(2)]
    plan = ops.attention_plan(step["k_cache"], step["block_tables"], step["context_lens"], step["query_start_loc"],
                              num_tokens=9, num_heads=8, max_query_len=7, max_context_len=700)
    for i, layer in enumerate(layers):
        out = plan.run(layer["q"], layer["k_cache"], layer["v_cache"])
        ref = paged_attention_reference(layer["q"], layer["k_logical"], layer["v_logical"], step["block_tables"],
                                        step["context_list"], step["qsl_list"], 1 / math.sqrt(64))
        assert (out.double() - ref).abs().max().item() <= TOLERANCE[dtype], f"layer {i}, seed {seed}"


def make_layer_like(step):
    """Another layer of step's batch: fresh q and cache values in the slots step's block tables name
    (the rest NaN)."""
    k_logical = torch.full_like(step["k_logical"], float("nan"))
    v_logical = torch.full_like(step["v_logical"], float("nan"))
    block_size = k_logical.shape[2]
    for i, ctx in enumerate(step["context_list"]):
        t = torch.arange(ctx, device=k_logical.device)
        blocks = step["block_tables"][i, t // block_size].long()
        k_logical[blocks, :, t % block_size] = torch.randn_like(k_logical[blocks, :, t % block_size])
        v_logical[blocks, :, t % block_size] = torch.randn_like(v_logical[blocks, :, t % block_size])
    return dict(q=torch.randn_like(step["q"]), k_logical=k_logical, v_logical=v_logical,
                k_cache=ops.kv_cache_from_logical(k_logical), v_cache=ops.kv_cache_from_logical(v_logical))


def test_cpu_plan_checks_block_ids_once_when_made():
    batch = small_batch()
    batch["block_tables"][0, 0] = 10_000
    with pytest.raises(IndexError, match="outside"):
        ops.attention_plan(batch["k_cache"], batch["block_tables"], batch["context_lens"], batch["query_start_loc"],
                           num_tokens=1, num_heads=4)


def test_a_cpu_plan_rechecks_refilled_arrays_on_every_run():
    # A plan runs over buffers whose contents may change between runs (found in review: a CPU plan
    # checked them only when made, and a bad id written afterwards was read out of bounds).
    batch = small_batch(context_lens=[20])
    plan = ops.attention_plan(batch["k_cache"], batch["block_tables"], batch["context_lens"], batch["query_start_loc"],
                              num_tokens=1, num_heads=4)
    plan.run(batch["q"], batch["k_cache"], batch["v_cache"])
    batch["block_tables"][0, 1] = 10_000_000
    with pytest.raises(IndexError, match="outside"):
        plan.run(batch["q"], batch["k_cache"], batch["v_cache"])
    batch["block_tables"][0, 1] = 0
    batch["context_lens"][0] = 1_000_000
    with pytest.raises(ValueError, match="blocks; block_tables has"):
        plan.run(batch["q"], batch["k_cache"], batch["v_cache"])


def test_plan_refuses_a_layer_of_another_shape():
    batch = small_batch()
    plan = ops.attention_plan(batch["k_cache"], batch["block_tables"], batch["context_lens"], batch["query_start_loc"],
                              num_tokens=1, num_heads=4)
    with pytest.raises(ValueError, match=r"q must be torch.float32 \[1, 4, 64\]"):
        plan.run(batch["q"][:, :2], batch["k_cache"], batch["v_cache"])
    with pytest.raises(ValueError, match="the plan's"):
        plan.run(batch["q"], batch["k_cache"][:-1], batch["v_cache"][:-1])
    with pytest.raises(ValueError, match="out must be"):
        plan.run(batch["q"], batch["k_cache"], batch["v_cache"], out=torch.empty(1, 4, 64, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match="CPU attention plan runs without a stream"):
        plan.native.run(batch["q"].data_ptr(), 256, 64, batch["k_cache"].data_ptr(), batch["v_cache"].data_ptr(),
                        batch["q"].data_ptr(), 256, 64, 0)


# ---- refusals ----------------------------------------------------------------------------------------------

def small_batch(**overrides):
    params = dict(query_lens=[1], context_lens=[5], num_heads=4, num_kv_heads=2, head_dim=64, block_size=16)
    params.update(overrides)
    return make_batch("cpu", torch.float32, **params)


def call(batch):
    return ops.paged_attention(batch["q"], batch["k_cache"], batch["v_cache"], batch["block_tables"],
                               batch["context_lens"], batch["query_start_loc"])


def test_refuses_unsupported_head_size():
    with pytest.raises(ValueError, match="supported head sizes: 32, 64, 80, 96, 112, 128, 192, 256"):
        call(small_batch(head_dim=72))


def test_refuses_unsupported_block_size():
    with pytest.raises(ValueError, match="supported block sizes: 1, 2, 4, 8, 16, 32, 64, 128, 256"):
        call(small_batch(block_size=24))


def test_refuses_heads_not_multiple_of_kv_heads():
    with pytest.raises(ValueError, match="multiple of num_kv_heads"):
        call(small_batch(num_heads=3, num_kv_heads=2))


def test_refuses_cpu_float16():
    batch = small_batch()
    batch = {k: (v.half() if isinstance(v, torch.Tensor) and v.is_floating_point() else v) for k, v in batch.items()}
    with pytest.raises(TypeError, match="supported on cpu: float32, bfloat16"):
        call(batch)


def test_dtype_checks_come_from_the_native_table():
    assert _core.SUPPORTED_CUDA_DTYPES == (_core.DType.float16, _core.DType.bfloat16)
    assert _core.SUPPORTED_CPU_DTYPES == (_core.DType.float32, _core.DType.bfloat16)
    assert ops.CUDA_DTYPES == (torch.float16, torch.bfloat16)
    assert ops.CPU_DTYPES == (torch.float32, torch.bfloat16)


def test_refuses_block_id_out_of_range_on_cpu():
    batch = small_batch()
    batch["block_tables"][0, 0] = 10_000
    with pytest.raises(IndexError, match="outside"):
        call(batch)


def test_refuses_context_shorter_than_query():
    batch = small_batch(query_lens=[4], context_lens=[5])
    batch["context_lens"][0] = 2
    with pytest.raises(ValueError, match="smaller than its query length"):
        call(batch)


def test_refuses_mismatched_sequence_counts():
    batch = small_batch()
    with pytest.raises(ValueError, match="disagree on the number of sequences"):
        ops.paged_attention(batch["q"], batch["k_cache"], batch["v_cache"], batch["block_tables"],
                            batch["context_lens"], torch.tensor([0], dtype=torch.int32))
