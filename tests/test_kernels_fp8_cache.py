"""The FP8 KV cache (float8_e4m3fn with a scale per layer for K and one for V), CPU kernels:
write_kv_cache stores e4m3(x / scale) exactly as torch rounds it, paged attention over the cache
equals a float64 reference over the dequantized cache (stored value * scale) up to float32
rounding, and what is not supported yet is refused by name (CUDA; scales on other caches)."""

from __future__ import annotations

import math

import pytest
import torch
from kernel_reference import paged_attention_reference

from pagedcore import _core, ops

FP8 = torch.float8_e4m3fn
# Max abs error against float64 on the dequantized cache (outputs are O(1)): float32 arithmetic,
# and bf16 q / out rounding.
TOLERANCE = {torch.float32: 2e-4, torch.bfloat16: 3e-2}


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


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("block_size", [1, 16, 64])
@pytest.mark.parametrize("threads", ["1", "16"])  # decode rows in one item for all KV heads / one per KV head
def test_attention_over_an_fp8_cache_equals_float64_over_the_dequantized_cache(dtype, block_size, threads,
                                                                              monkeypatch):
    monkeypatch.setenv("PAGEDCORE_NUM_THREADS", threads)
    generator = torch.Generator().manual_seed(block_size)
    num_heads, num_kv_heads, head_dim = 8, 2, 64
    query_lens, context_lens = [1, 7, 1, 20], [1, 300, 45, 20]
    blocks_needed = [math.ceil(c / block_size) for c in context_lens]
    num_blocks = sum(blocks_needed) + 3
    k_scale, v_scale = 0.0173, 0.0091
    # The cache: random e4m3 bytes (every finite value), NaN bytes in the unused slots.
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
    k_cache, v_cache = k_bytes.view(FP8), v_bytes.view(FP8)
    k_dequantized = torch.where(k_cache.float().isnan(), float("nan"), k_cache.float() * k_scale)
    v_dequantized = torch.where(v_cache.float().isnan(), float("nan"), v_cache.float() * v_scale)
    qsl = [0]
    for n in query_lens:
        qsl.append(qsl[-1] + n)
    q = (torch.randn(qsl[-1], num_heads, head_dim, generator=generator) / 4).to(dtype)
    out = ops.paged_attention(q, k_cache, v_cache, block_tables, torch.tensor(context_lens, dtype=torch.int32),
                              torch.tensor(qsl, dtype=torch.int32), k_scale=k_scale, v_scale=v_scale)
    assert out.dtype == dtype
    ref = paged_attention_reference(q, k_dequantized, v_dequantized, block_tables, context_lens, qsl,
                                    1 / math.sqrt(head_dim))
    assert (out.double() - ref).abs().max().item() <= TOLERANCE[dtype]


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
    # CUDA: refused by name before anything runs (checked on the host).
    with pytest.raises(ValueError, match="FP8 .* KV cache runs on CPU only so far"):
        _core.AttentionPlan(_core.DType.bfloat16, 1, 1, 4, 2, 64, 16, 4, bt.data_ptr(), 1, 1, cl.data_ptr(),
                            qsl.data_ptr(), 0.125, 1, 1, 1, 0, 0, True, _core.DType.float8_e4m3fn)


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
