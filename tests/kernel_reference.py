"""Slow, obviously right references for the kernel tests (float64, walking the block table)."""

from __future__ import annotations

import torch


def gather_context(cache: torch.Tensor, block_table: torch.Tensor, context_len: int) -> torch.Tensor:
    """K or V rows of tokens 0..context_len-1 of one sequence: [context_len, num_kv_heads, head_dim].

    Token t lives in block block_table[t // block_size], offset t % block_size (vectorized walk).
    """
    block_size = cache.shape[2]
    t = torch.arange(context_len, device=cache.device)
    blocks = block_table.to(cache.device).long()[t // block_size]
    return cache[blocks, :, t % block_size]


def paged_attention_reference(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: list[int],
    query_start_loc: list[int],
    scale: float,
) -> torch.Tensor:
    """float64 attention of every query row over its sequence's keys [0, position]."""
    num_heads = q.shape[1]
    num_kv_heads = k_cache.shape[1]
    group = num_heads // num_kv_heads
    out = torch.zeros(q.shape, dtype=torch.float64, device=q.device)
    for i, ctx in enumerate(context_lens):
        start, end = query_start_loc[i], query_start_loc[i + 1]
        qlen = end - start
        if qlen == 0:
            continue
        k = gather_context(k_cache, block_tables[i], ctx).double().repeat_interleave(group, dim=1)  # [ctx, H, D]
        v = gather_context(v_cache, block_tables[i], ctx).double().repeat_interleave(group, dim=1)
        qi = q[start:end].double()  # [qlen, H, D]
        scores = torch.einsum("qhd,khd->hqk", qi, k) * scale
        positions = torch.arange(ctx - qlen, ctx, device=q.device)
        keys = torch.arange(ctx, device=q.device)
        scores = scores.masked_fill(keys[None, None, :] > positions[None, :, None], float("-inf"))
        out[start:end] = torch.einsum("hqk,khd->qhd", torch.softmax(scores, dim=-1), v)
    return out
