"""write_kv_cache, copy_blocks and swap_blocks (CPU always, CUDA when present) against plain
torch indexing, with non-contiguous K/V views, padding slots and NaN-filled caches."""

from __future__ import annotations

import pytest
import torch

import pagedcore
from pagedcore import _core, ops

HAS_CUDA = torch.cuda.is_available() and pagedcore.built_with_cuda()
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device and a CUDA build of pagedcore")

DEVICE_DTYPES = [
    pytest.param("cpu", torch.float32, id="cpu-fp32"),
    pytest.param("cpu", torch.bfloat16, id="cpu-bf16"),
    pytest.param("cuda", torch.float16, id="cuda-fp16", marks=[needs_cuda, pytest.mark.gpu]),
    pytest.param("cuda", torch.bfloat16, id="cuda-bf16", marks=[needs_cuda, pytest.mark.gpu]),
]


def nan_cache(num_blocks, num_kv_heads, block_size, head_dim, dtype, device):
    return torch.full((num_blocks, num_kv_heads, block_size, head_dim), float("nan"), dtype=dtype, device=device)


@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("block_size", [1, 16, 256])
@pytest.mark.parametrize("head_dim", [32, 64, 80, 112, 128, 192])
def test_write_kv_cache_from_fused_qkv_view(device, dtype, block_size, head_dim):
    num_heads, num_kv_heads, num_tokens = 6, 2, 37
    num_blocks = max(11, 2 * num_tokens // block_size)
    qkv = torch.randn(num_tokens, num_heads + 2 * num_kv_heads, head_dim).to(device, dtype)
    k = qkv[:, num_heads:num_heads + num_kv_heads]
    v = qkv[:, num_heads + num_kv_heads:]
    assert not k.is_contiguous() and not v.is_contiguous()
    slots = torch.randperm(num_blocks * block_size)[:num_tokens].int()
    slots[::5] = -1  # padding tokens are skipped
    k_cache = nan_cache(num_blocks, num_kv_heads, block_size, head_dim, dtype, device)
    v_cache = nan_cache(num_blocks, num_kv_heads, block_size, head_dim, dtype, device)
    ops.write_kv_cache(k, v, k_cache, v_cache, slots.to(device))

    expect_k = nan_cache(num_blocks, num_kv_heads, block_size, head_dim, dtype, "cpu")
    expect_v = nan_cache(num_blocks, num_kv_heads, block_size, head_dim, dtype, "cpu")
    for t, slot in enumerate(slots.tolist()):  # token by token
        if slot == -1:
            continue
        expect_k[slot // block_size, :, slot % block_size] = k[t].cpu()
        expect_v[slot // block_size, :, slot % block_size] = v[t].cpu()
    k_plain, v_plain = ops.kv_cache_to_logical(k_cache), ops.kv_cache_to_logical(v_cache)
    assert torch.equal(k_plain.cpu().nan_to_num(7.0), expect_k.nan_to_num(7.0))
    assert torch.equal(v_plain.cpu().nan_to_num(7.0), expect_v.nan_to_num(7.0))


@pytest.mark.parametrize("dtype,head_dim", [(torch.float32, 128), (torch.bfloat16, 128), (torch.bfloat16, 80),
                                           (torch.float16, 96), (torch.bfloat16, 256)])
def test_cuda_chunk_order_matches_the_documented_permutation(dtype, head_dim):
    # CUDA caches keep logical 16-byte chunk c of block row r at c ^ (r % 8) inside every complete
    # group of 8 chunks (pagedcore/kv_layout.h); the permutation undoes itself.
    block_size = 16
    values = torch.arange(2 * 3 * block_size * head_dim).reshape(2, 3, block_size, head_dim).to(dtype)
    permuted = ops._permute_kv_chunks(values)
    vec = 16 // values.element_size()
    chunks = head_dim // vec
    for r in range(block_size):
        for c in range(chunks):
            position = c ^ (r % 8) if c < chunks // 8 * 8 else c
            assert torch.equal(permuted[:, :, r, position * vec:(position + 1) * vec], values[:, :, r, c * vec:(c + 1) * vec])
    assert torch.equal(ops._permute_kv_chunks(permuted), values)


@pytest.mark.parametrize("head_dim", [32, 64, 80, 96, 112, 128, 192, 256])
def test_fp8_chunk_order_is_documented_involutive_and_conflict_free(head_dim):
    # FP8 caches (16 values per chunk) at head sizes that are multiples of 64 (the bulk-copied ones)
    # permute complete groups of 8 chunks by r % 8 and a trailing group of 4 by (r // 2) % 4
    # (pagedcore/kv_layout.h), so that in a block copied as it is, the rows of any 8 consecutive
    # rows' same logical chunk sit in 8 different 16-byte bank groups (one fragment load, no conflict).
    block_size = 16
    values = torch.randint(0, 256, (2, 3, block_size, head_dim), dtype=torch.uint8).view(torch.float8_e4m3fn)
    permuted = ops._permute_kv_chunks(values)
    chunks = head_dim // 16
    for r in range(block_size):
        for c in range(chunks):
            if chunks % 4:
                position = c
            else:
                position = c ^ (r % 8) if c < chunks // 8 * 8 else c ^ ((r // 2) % 4)
            assert torch.equal(permuted.view(torch.uint8)[:, :, r, position * 16:(position + 1) * 16],
                               values.view(torch.uint8)[:, :, r, c * 16:(c + 1) * 16])
    assert torch.equal(ops._permute_kv_chunks(permuted).view(torch.uint8), values.view(torch.uint8))
    if head_dim % 64 == 0:
        positions = ops._chunk_positions(block_size, chunks, fp8=True)
        for first in range(0, block_size, 8):
            for c in range(chunks):
                groups = {(r * chunks + int(positions[r, c])) % 8 for r in range(first, first + 8)}
                assert len(groups) == 8, (head_dim, c)


def test_write_kv_cache_refuses_slot_outside_cache():
    k = torch.randn(2, 1, 64)
    cache = torch.zeros(2, 1, 16, 64)
    with pytest.raises(IndexError, match="outside the cache"):
        ops.write_kv_cache(k, k, cache, cache.clone(), torch.tensor([0, 32], dtype=torch.int32))


def test_write_kv_cache_refuses_wrong_shapes():
    cache = torch.zeros(2, 2, 16, 64)
    with pytest.raises(ValueError, match=r"\[num_tokens, 2, 64\]"):
        ops.write_kv_cache(torch.randn(3, 1, 64), torch.randn(3, 1, 64), cache, cache.clone(),
                           torch.zeros(3, dtype=torch.int32))
    with pytest.raises(TypeError, match="int32"):
        ops.write_kv_cache(torch.randn(3, 2, 64), torch.randn(3, 2, 64), cache, cache.clone(),
                           torch.zeros(3, dtype=torch.int64))


CUDA_FLOAT32_REFUSAL = "CUDA write_kv_cache does not support float32; supported CUDA dtypes: float16, bfloat16"


@needs_cuda
@pytest.mark.gpu
def test_write_kv_cache_refuses_float32_on_cuda():
    # The CUDA attention kernels read float16 / bfloat16 only, so a float32 CUDA cache is refused
    # when it is written, naming the dtypes the CUDA kernels take.
    k = torch.randn(2, 1, 64, device="cuda")
    cache = torch.zeros(2, 1, 16, 64, device="cuda")
    with pytest.raises(ValueError, match=CUDA_FLOAT32_REFUSAL):
        ops.write_kv_cache(k, k, cache, cache.clone(), torch.tensor([0, 1], dtype=torch.int32, device="cuda"))


@pytest.mark.skipif(not pagedcore.built_with_cuda(), reason="needs a CUDA build of pagedcore (not a device)")
def test_cuda_write_kv_cache_checks_the_dtype_on_the_host():
    # The native CUDA entry refuses float32 before any CUDA call, so it runs without a GPU: CPU
    # pointers and the default stream never reach a kernel.
    k = torch.randn(2, 1, 64)
    cache = torch.zeros(2, 1, 16, 64)
    slots = torch.tensor([0, 1], dtype=torch.int32)
    with pytest.raises(ValueError, match=CUDA_FLOAT32_REFUSAL):
        _core.write_kv_cache(_core.DType.float32, k.data_ptr(), 64, 64, k.data_ptr(), 64, 64, cache.data_ptr(),
                             cache.data_ptr(), slots.data_ptr(), 2, 1, 64, 16, 2, 0)


@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES)
def test_copy_blocks_every_layer(device, dtype):
    num_layers, num_blocks = 3, 9
    big = torch.randn(num_layers, 2, num_blocks, 2, 16, 64).to(device, dtype)  # one tensor for all layers
    expect = big.clone()
    caches = [big[layer, side] for layer in range(num_layers) for side in range(2)]
    pairs = [(0, 5), (3, 1), (8, 2)]
    ops.copy_blocks(caches, pairs)
    for src, dst in pairs:
        expect[:, :, dst] = expect[:, :, src]
    assert torch.equal(big, expect)


def test_copy_blocks_refuses_out_of_range_ids():
    caches = [torch.zeros(4, 1, 16, 64)]
    with pytest.raises(IndexError, match=r"\[0, 4\)"):
        ops.copy_blocks(caches, [(0, 4)])


@needs_cuda
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_swap_out_and_in(dtype):
    num_blocks = 12
    gpu = [torch.randn(num_blocks, 2, 16, 128, device="cuda").to(dtype) for _ in range(4)]
    host = [torch.full((num_blocks, 2, 16, 128), float("nan"), dtype=dtype).pin_memory() for _ in range(4)]
    out_pairs = [(3, 0), (7, 1), (11, 5)]
    ops.swap_blocks(gpu, host, out_pairs)
    torch.cuda.synchronize()
    for g, h in zip(gpu, host):
        for src, dst in out_pairs:
            assert torch.equal(h[dst], g[src].cpu())
    restored = [torch.zeros_like(g) for g in gpu]
    in_pairs = [(dst, src) for src, dst in out_pairs]
    ops.swap_blocks(host, restored, in_pairs)
    torch.cuda.synchronize()
    for g, r in zip(gpu, restored):
        for src, _ in out_pairs:
            assert torch.equal(r[src], g[src])


@needs_cuda
@pytest.mark.gpu
def test_swap_refuses_pageable_host_memory():
    gpu = [torch.zeros(2, 1, 16, 64, device="cuda", dtype=torch.float16)]
    host = [torch.zeros(2, 1, 16, 64, dtype=torch.float16)]
    with pytest.raises(ValueError, match="pinned"):
        ops.swap_blocks(gpu, host, [(0, 1)])
