"""The FP8 KV cache (float8_e4m3fn with a scale per layer for K and one for V), CPU and CUDA kernels:
write_kv_cache stores e4m3(x / scale) exactly as torch rounds it, paged attention over the cache
equals a float64 reference over the dequantized cache (stored value * scale) up to float32
rounding (and the q / out / probability rounding of 16-bit dtypes), and bad scales are refused by name."""

from __future__ import annotations

import math

import pytest
import torch
from kernel_reference import paged_attention_reference

import pagedcore
from pagedcore import ops

FP8 = torch.float8_e4m3fn
# Max abs error against float64 on the dequantized cache (outputs are O(1)): float32 arithmetic, and
# 16-bit q / out / probability rounding (the model-dtype caches' tolerances, tests/test_kernels_attention.py).
TOLERANCE = {torch.float32: 2e-4, torch.float16: 4e-3, torch.bfloat16: 3e-2}
HAS_CUDA = torch.cuda.is_available() and pagedcore.built_with_cuda()
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device and a CUDA build of pagedcore")
CUDA_DTYPES = [pytest.param(torch.float16, id="fp16"), pytest.param(torch.bfloat16, id="bf16")]


def torch_quantize(x: torch.Tensor, scale: float) -> torch.Tensor:
    return (x.float() / torch.tensor(scale, dtype=torch.float32)).clamp(-448.0, 448.0).to(FP8)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("k_scale,v_scale", [(1.0, 1.0), (0.013, 0.0021), (3.7, 250.0)])
def test_write_kv_cache_stores_torchs_e4m3_rounding_of_x_over_scale(dtype, k_scale, v_scale):
    generator = torch.Generator().manual_seed(int(k_scale * 1000))
    num_tokens, num_kv_heads, head_dim, block_size, num_blocks = 37, 3, 64, 16, 9
    # Values from far below to far above the representable range at these scales (saturation, subnormals).
    k = (torch.randn(num_tokens, num_kv_heads, head_dim, generator=generator)
         * torch.exp2(torch.randint(-14, 12, (num_tokens, num_kv_heads, 1), generator=generator).float())).to(dtype)
    v = (torch.randn(num_tokens, num_kv_heads, head_dim, generator=generator) * 40).to(dtype)
    k_cache = torch.zeros(num_blocks, num_kv_heads, block_size, head_dim, dtype=FP8)
    v_cache = torch.zeros_like(k_cache)
    slots = torch.randperm(num_blocks * block_size, generator=generator)[:num_tokens].int()
    slots[5] = -1  # padding: not written
    ops.write_kv_cache(k, v, k_cache, v_cache, slots, k_scale=k_scale, v_scale=v_scale)
    for t in range(num_tokens):
        slot = int(slots[t])
        if slot < 0:
            continue
        stored_k = k_cache[slot // block_size, :, slot % block_size]
        stored_v = v_cache[slot // block_size, :, slot % block_size]
        assert torch.equal(stored_k.view(torch.uint8), torch_quantize(k[t], k_scale).view(torch.uint8)), t
        assert torch.equal(stored_v.view(torch.uint8), torch_quantize(v[t], v_scale).view(torch.uint8)), t
    written = {int(s) for s in slots if s >= 0}
    untouched = [s for s in range(num_blocks * block_size) if s not in written]
    assert all((k_cache[s // block_size, :, s % block_size].view(torch.uint8) == 0).all() for s in untouched)


def fp8_batch(device, dtype, *, query_lens, context_lens, num_heads, num_kv_heads, head_dim, block_size, generator,
              k_scale=0.0173, v_scale=0.0091, spare_blocks=3):
    """An FP8 cache of random e4m3 bytes (every finite value) placed through random block tables,
    NaN bytes in every unused slot, padding block-table entries far outside the pool; the
    dequantized cache (stored value * scale) for the reference, and q."""
    blocks_needed = [math.ceil(c / block_size) for c in context_lens]
    num_blocks = sum(blocks_needed) + spare_blocks
    nan = torch.tensor(float("nan")).to(FP8).view(torch.uint8)
    k_bytes = torch.full((num_blocks, num_kv_heads, block_size, head_dim), int(nan), dtype=torch.uint8)
    v_bytes = k_bytes.clone()
    block_tables = torch.full((len(context_lens), max(blocks_needed) + 1), num_blocks + 99, dtype=torch.int32)
    perm, used = torch.randperm(num_blocks, generator=generator), 0
    for i, (ctx, nb) in enumerate(zip(context_lens, blocks_needed)):
        block_tables[i, :nb] = perm[used:used + nb].int()
        used += nb
        t = torch.arange(ctx)
        blocks = block_tables[i, t // block_size].long()
        for target in (k_bytes, v_bytes):
            values = torch.randint(0, 256, (ctx, num_kv_heads, head_dim), generator=generator, dtype=torch.uint8)
            values[values.view(FP8).float().isnan()] = 0  # finite values only in used slots
            target[blocks, :, t % block_size] = values
    k_logical, v_logical = k_bytes.view(FP8).to(device), v_bytes.view(FP8).to(device)
    k_dequantized = torch.where(k_logical.float().isnan(), float("nan"), k_logical.float() * k_scale)
    v_dequantized = torch.where(v_logical.float().isnan(), float("nan"), v_logical.float() * v_scale)
    k_cache, v_cache = ops.kv_cache_from_logical(k_logical), ops.kv_cache_from_logical(v_logical)
    qsl = [0]
    for n in query_lens:
        qsl.append(qsl[-1] + n)
    q = (torch.randn(qsl[-1], num_heads, head_dim, generator=generator) / 4).to(device, dtype)
    return dict(q=q, k_cache=k_cache, v_cache=v_cache, k_dequantized=k_dequantized, v_dequantized=v_dequantized,
                block_tables=block_tables.to(device), context_lens=list(context_lens), qsl=qsl,
                k_scale=k_scale, v_scale=v_scale)


def check_fp8_attention(batch, dtype, **kwargs):
    """ops.paged_attention over the FP8 cache against float64 over the dequantized cache; the
    tolerance is for outputs of O(1) and scales with the largest |output| (v_scale sets it)."""
    q, device = batch["q"], batch["q"].device
    head_dim = q.shape[-1]
    out = ops.paged_attention(q, batch["k_cache"], batch["v_cache"], batch["block_tables"],
                              torch.tensor(batch["context_lens"], dtype=torch.int32, device=device),
                              torch.tensor(batch["qsl"], dtype=torch.int32, device=device),
                              k_scale=batch["k_scale"], v_scale=batch["v_scale"], **kwargs)
    assert out.dtype == dtype
    ref = paged_attention_reference(q, batch["k_dequantized"], batch["v_dequantized"], batch["block_tables"],
                                    batch["context_lens"], batch["qsl"], 1 / math.sqrt(head_dim))
    assert torch.isfinite(out).all()
    err = (out.double() - ref).abs().max().item()
    assert err <= TOLERANCE[dtype] * max(1.0, ref.abs().max().item()), err


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("block_size", [1, 16, 64])
@pytest.mark.parametrize("threads", ["1", "16"])  # decode rows in one item for all KV heads / one per KV head
def test_attention_over_an_fp8_cache_equals_float64_over_the_dequantized_cache(dtype, block_size, threads,
                                                                              monkeypatch):
    monkeypatch.setenv("PAGEDCORE_NUM_THREADS", threads)
    batch = fp8_batch("cpu", dtype, query_lens=[1, 7, 1, 20], context_lens=[1, 300, 45, 20], num_heads=8,
                      num_kv_heads=2, head_dim=64, block_size=block_size,
                      generator=torch.Generator().manual_seed(block_size))
    check_fp8_attention(batch, dtype)


# ---- CUDA --------------------------------------------------------------------------------------------
# (PAGEDCORE_KERNEL_PATH=ampere runs the same tests on the cp.async path: bench/lab/gpu_fp8_kv.sh.)

@needs_cuda
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", CUDA_DTYPES)
@pytest.mark.parametrize("head_dim", [64, 80, 128, 192, 256])
@pytest.mark.parametrize("k_scale,v_scale", [(1.0, 1.0), (0.013, 0.0021), (3.7, 250.0)])
def test_cuda_write_kv_cache_stores_torchs_e4m3_rounding_of_x_over_scale(dtype, head_dim, k_scale, v_scale):
    generator = torch.Generator().manual_seed(int(k_scale * 1000) + head_dim)
    num_tokens, num_kv_heads, block_size, num_blocks = 37, 3, 16, 9
    # K as a strided slice of a fused qkv tensor; values from far below to far above the representable
    # range at these scales (saturation, subnormals), and NaN / infinities in one token.
    qkv = torch.randn(num_tokens, 4 + 2 * num_kv_heads, head_dim, generator=generator)
    qkv *= torch.exp2(torch.randint(-14, 12, (num_tokens, 4 + 2 * num_kv_heads, 1), generator=generator).float())
    qkv[3, 4, :4] = torch.tensor([float("nan"), float("inf"), -float("inf"), -0.0])
    qkv = qkv.to("cuda", dtype)
    k, v = qkv[:, 4:4 + num_kv_heads], qkv[:, 4 + num_kv_heads:]
    k_cache = torch.zeros(num_blocks, num_kv_heads, block_size, head_dim, dtype=FP8, device="cuda")
    v_cache = torch.zeros_like(k_cache)
    slots = torch.randperm(num_blocks * block_size, generator=generator)[:num_tokens].int()
    slots[5] = -1  # padding: not written
    ops.write_kv_cache(k, v, k_cache, v_cache, slots.cuda(), k_scale=k_scale, v_scale=v_scale)
    stored = {"k": ops.kv_cache_to_logical(k_cache).cpu(), "v": ops.kv_cache_to_logical(v_cache).cpu()}
    for name, x, scale in (("k", k.cpu(), k_scale), ("v", v.cpu(), v_scale)):
        expected = torch.zeros_like(stored[name])
        for t in range(num_tokens):
            slot = int(slots[t])
            if slot >= 0:
                expected[slot // block_size, :, slot % block_size] = torch_quantize(x[t], scale)
        got, want = stored[name].float(), expected.float()
        assert torch.equal(got.isnan(), want.isnan()), name
        nan = want.isnan()
        assert torch.equal(stored[name].view(torch.uint8)[~nan], expected.view(torch.uint8)[~nan]), name


@needs_cuda
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", CUDA_DTYPES)
@pytest.mark.parametrize("head_dim", pagedcore.SUPPORTED_HEAD_SIZES)
@pytest.mark.parametrize("block_size", [1, 8, 16, 64])
def test_cuda_attention_over_an_fp8_cache_every_head_size(dtype, head_dim, block_size):
    # Mixed decode and prefill rows, contexts ending inside, at and just past a 16-key tile.
    batch = fp8_batch("cuda", dtype, query_lens=[1, 7, 1, 20, 1, 3], context_lens=[1, 300, 45, 20, 16, 17],
                      num_heads=8, num_kv_heads=2, head_dim=head_dim, block_size=block_size,
                      generator=torch.Generator().manual_seed(head_dim * 1000 + block_size))
    check_fp8_attention(batch, dtype)


@needs_cuda
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", CUDA_DTYPES)
@pytest.mark.parametrize("block_size", [1, 16])  # the cp.async and the bulk-copy decode paths
@pytest.mark.parametrize("query_len", [1, 16])  # decode and prefill kernels
def test_cuda_reads_every_finite_e4m3_value_exactly(dtype, block_size, query_len):
    # K all zero: every key weighs the same, so each output dimension is its V column's value, and V's
    # column d holds byte d at every token: the outputs are the 254 finite e4m3 values themselves
    # (subnormals included: a conversion that flushed them would give 0), times v_scale = 1.
    context, head_dim = 32, 256
    num_blocks = context // block_size + 1
    k_cache = torch.zeros(num_blocks, 1, block_size, head_dim, dtype=torch.uint8)
    codes = torch.arange(256, dtype=torch.uint8)
    finite = ~codes.view(FP8).float().isnan()
    v_cache = torch.where(finite, codes, torch.zeros_like(codes)).expand(num_blocks, 1, block_size, head_dim).clone()
    block_tables = torch.arange(num_blocks, dtype=torch.int32).flip(0)[None, :].cuda()  # non-contiguous order
    q = torch.randn(query_len, 1, head_dim).to("cuda", dtype)
    out = ops.paged_attention(q, ops.kv_cache_from_logical(k_cache.view(FP8).cuda()),
                              ops.kv_cache_from_logical(v_cache.view(FP8).cuda()), block_tables,
                              torch.tensor([context], dtype=torch.int32, device="cuda"),
                              torch.tensor([0, query_len], dtype=torch.int32, device="cuda"))
    expected = torch.where(finite, codes.view(FP8).float(), torch.zeros(256))
    assert torch.equal(out.float().cpu(), expected.expand(query_len, 1, head_dim))


@needs_cuda
@pytest.mark.gpu
@pytest.mark.parametrize("head_dim", [64, 128, 256])  # query fragments in registers / from shared memory (FP8: 112 and up)
@pytest.mark.parametrize("q_exponent,k_scale", [(-30, 2.0 ** 28), (18, 2.0 ** -20), (0, 0.0173)])
def test_cuda_fp8_decode_takes_bf16_queries_of_any_magnitude(head_dim, q_exponent, k_scale):
    # The FP8 decode kernel multiplies in half precision: bf16 query rows are scaled by a power of
    # two into half's range first. Rows of 2^-32 would be 0 in half, rows of 2^16 and up infinite;
    # k_scale keeps the scores O(1) so that either would show.
    batch = fp8_batch("cuda", torch.bfloat16, query_lens=[1, 1, 1], context_lens=[1, 40, 300], num_heads=8,
                      num_kv_heads=2, head_dim=head_dim, block_size=16, k_scale=k_scale,
                      generator=torch.Generator().manual_seed(head_dim + q_exponent))
    batch["q"] = (batch["q"].float() * 2.0 ** q_exponent).bfloat16()
    check_fp8_attention(batch, torch.bfloat16)


@needs_cuda
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", CUDA_DTYPES)
@pytest.mark.parametrize("group", [1, 4, 8, 16, 32])  # 32: the prefill kernel takes the decode rows
@pytest.mark.parametrize("num_splits", [1, 3, 64])
def test_cuda_fp8_decode_groups_and_splits(dtype, group, num_splits):
    generator = torch.Generator().manual_seed(group * 100 + num_splits)
    context_lens = [1, 15, 16, 17, 1000, 2049, 33]
    batch = fp8_batch("cuda", dtype, query_lens=[1] * len(context_lens), context_lens=context_lens,
                      num_heads=2 * group, num_kv_heads=2, head_dim=128, block_size=16, generator=generator,
                      k_scale=0.05, v_scale=3.0)
    check_fp8_attention(batch, dtype, num_splits=num_splits)


@needs_cuda
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", CUDA_DTYPES)
def test_cuda_fp8_many_sequences_take_the_narrow_kernel(dtype):
    # Enough CTAs that the 4-warp kernel runs (the wide one takes grids of one wave).
    generator = torch.Generator().manual_seed(7)
    context_lens = torch.randint(1, 600, (300,), generator=generator).tolist()
    batch = fp8_batch("cuda", dtype, query_lens=[1] * 300, context_lens=context_lens, num_heads=32,
                      num_kv_heads=8, head_dim=128, block_size=16, generator=generator)
    check_fp8_attention(batch, dtype)


@needs_cuda
@pytest.mark.gpu
def test_cuda_fp8_copy_and_swap_move_the_bytes():
    generator = torch.Generator().manual_seed(3)
    cache = torch.randint(0, 256, (6, 2, 16, 64), generator=generator, dtype=torch.uint8).view(FP8).cuda()
    before = cache.view(torch.uint8).clone()
    ops.copy_blocks([cache], torch.tensor([[1, 4]], dtype=torch.int32))
    assert torch.equal(cache.view(torch.uint8)[4], before[1]) and torch.equal(cache.view(torch.uint8)[1], before[1])
    host = torch.zeros(6, 2, 16, 64, dtype=FP8).pin_memory()
    ops.swap_blocks([cache], [host], [(2, 0)])
    torch.cuda.synchronize()
    assert torch.equal(host.view(torch.uint8)[0], before[2].cpu())


def test_fp8_cache_refusals_name_the_limit():
    k_cache = torch.zeros(4, 2, 16, 64, dtype=FP8)
    bt, cl, qsl = torch.zeros(1, 1, dtype=torch.int32), torch.tensor([1], dtype=torch.int32), torch.tensor(
        [0, 1], dtype=torch.int32)
    plan = ops.attention_plan(k_cache, bt, cl, qsl, num_tokens=1, num_heads=4, dtype=torch.float32)
    q = torch.randn(1, 4, 64)
    with pytest.raises(ValueError, match="scales must be positive and finite"):
        plan.run(q, k_cache, k_cache, k_scale=0.0)
    bf16_cache = torch.zeros(4, 2, 16, 64, dtype=torch.bfloat16)
    bf16_plan = ops.attention_plan(bf16_cache, bt, cl, qsl, num_tokens=1, num_heads=4)
    with pytest.raises(ValueError, match="apply to FP8 KV caches only"):
        bf16_plan.run(q.bfloat16(), bf16_cache, bf16_cache, k_scale=2.0)
    with pytest.raises(TypeError, match="must hold q's dtype"):
        ops.attention_plan(bf16_cache, bt, cl, qsl, num_tokens=1, num_heads=4, dtype=torch.float32)


def test_nan_is_stored_as_nan_and_infinities_saturate():
    # Found in review: NaN was stored as +-0.5 (a NaN converted to an integer).
    k = torch.tensor([float("nan"), -float("nan"), float("inf"), -float("inf"), 1.0, -0.0] + [0.0] * 58)
    k = k.reshape(1, 1, 64)
    k_cache = torch.zeros(1, 1, 16, 64, dtype=FP8)
    v_cache = torch.zeros_like(k_cache)
    ops.write_kv_cache(k, k, k_cache, v_cache, torch.tensor([3], dtype=torch.int32), k_scale=0.5, v_scale=0.5)
    stored = k_cache[0, 0, 3].view(torch.uint8)[:6].tolist()
    expected = torch_quantize(k[0, 0, :6], 0.5).view(torch.uint8).tolist()
    assert stored == expected and stored[:2] == [0x7F, 0xFF]
