"""Paged attention as a layer: store this step's K/V in the paged cache, then attend over it.

Every layer calls the pagedcore kernels (pagedcore.ops): write_kv_cache, then the step's attention
plan (made by the first layer, validated once, run by every layer), for a mixed batch of decode
rows and (chunked) prefill rows described by AttentionMetadata.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import torch

from pagedcore import ops
from pagedcore.model_executor.fp8 import FP8_MAX


@dataclass
class AttentionMetadata:
    """Per-step tensors shared by every layer, built by the model runner from the step plan."""

    slot_mapping: torch.Tensor  # [num_tokens] int32 cache slot of each token (-1 = padding, not written)
    block_tables: torch.Tensor  # [num_seqs, max_blocks_per_seq] int32
    context_lens: torch.Tensor  # [num_seqs] int32, tokens in the cache after this step
    query_start_loc: torch.Tensor  # [num_seqs + 1] int32, first query row of each sequence
    max_query_len: int  # host-side max query length (1 = decode only)
    max_context_len: int  # host-side max of context_lens (CUDA picks its split-KV count from it)
    num_splits: int | None = None  # CUDA split-KV partitions; fixed when a CUDA graph is captured
    workspace: torch.Tensor | None = None  # CUDA split-KV scratch for num_splits > 1 (graph capture)
    plan: ops.AttentionPlan | None = field(default=None, repr=False)  # made by the step's first layer

    def attention_plan(self, cache: torch.Tensor, num_tokens: int, num_heads: int, scale: float,
                       dtype: torch.dtype) -> ops.AttentionPlan:
        """The step's attention plan for layers of this geometry (q / out of `dtype`): made once, by
        the first layer."""
        plan = self.plan
        if (plan is None or plan.q_shape[0] != num_tokens or plan.num_heads != num_heads or plan.scale != scale
                or plan.cache_shape != cache.shape or plan.cache_dtype != cache.dtype or plan.dtype != dtype):
            plan = self.plan = ops.attention_plan(
                cache, self.block_tables, self.context_lens, self.query_start_loc, num_tokens=num_tokens,
                num_heads=num_heads, scale=scale, max_query_len=self.max_query_len,
                max_context_len=self.max_context_len, num_splits=self.num_splits, workspace=self.workspace,
                dtype=dtype)
        return plan


CALIBRATION_BATCHES = 64
logger = logging.getLogger("pagedcore")


@dataclass
class LayerKVCache:
    key: torch.Tensor  # [num_blocks, num_kv_heads, block_size, head_dim]
    value: torch.Tensor  # [num_blocks, num_kv_heads, block_size, head_dim]
    # An FP8 cache's scales (a stored value times its scale is the K / V value; 1 for other caches),
    # and whether the next batch sets them (calculate_kv_scales: its largest |K| and |V| map to 448).
    k_scale: float = 1.0
    v_scale: float = 1.0
    calibrate: bool = False
    # Batches a calibrating cache waits for finite, nonzero K and V before it stops and keeps its
    # scales (a layer whose K stayed zero would otherwise hold back the CUDA graphs for good).
    calibration_batches_left: int = CALIBRATION_BATCHES


class PagedAttention(torch.nn.Module):
    def __init__(self, num_heads: int, num_kv_heads: int, head_dim: int):
        super().__init__()
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.scale = head_dim ** -0.5

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cache: LayerKVCache,
                meta: AttentionMetadata, out: torch.Tensor | None = None) -> torch.Tensor:
        """q: [num_tokens, num_heads, head_dim]; k, v: [num_tokens, num_kv_heads, head_dim]
        -> [num_tokens, num_heads, head_dim] (into `out` when given)."""
        if cache.calibrate and k.numel():
            # The first batch with finite, nonzero K and V sets the scales (a batch of zeros or one
            # that overflowed keeps the current ones and leaves it to the next batch).
            k_max, v_max = k.abs().amax().item(), v.abs().amax().item()
            if all(math.isfinite(m) and m > 0 for m in (k_max, v_max)):
                cache.k_scale, cache.v_scale, cache.calibrate = k_max / FP8_MAX, v_max / FP8_MAX, False
            else:
                cache.calibration_batches_left -= 1
                if cache.calibration_batches_left <= 0:
                    cache.calibrate = False
                    logger.warning("calculate_kv_scales: %d batches gave a layer no finite, nonzero K and V "
                                   "(largest |K| %g, |V| %g); it keeps k_scale %g, v_scale %g",
                                   CALIBRATION_BATCHES, k_max, v_max, cache.k_scale, cache.v_scale)
        ops.write_kv_cache(k, v, cache.key, cache.value, meta.slot_mapping, cache.k_scale, cache.v_scale)
        plan = meta.attention_plan(cache.key, q.shape[0], self.num_heads, self.scale, q.dtype)
        return plan.run(q, cache.key, cache.value, out=out, k_scale=cache.k_scale, v_scale=cache.v_scale)
