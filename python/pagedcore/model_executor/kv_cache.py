"""The KV cache: how many blocks the memory budget buys (printed before allocation) and the
per-layer cache tensors themselves."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from pagedcore import _core
from pagedcore.model_executor.attention import LayerKVCache
from pagedcore.loaders.config import ModelConfig

CPU_DEFAULT_KV_BYTES = 2 << 30  # CPU budget when kv_cache_memory_bytes is not given


@dataclass
class KVCachePlan:
    plan: _core.MemoryPlan
    max_model_len: int

    @property
    def num_blocks(self) -> int:
        return self.plan.num_blocks

    @property
    def max_concurrent_seqs_at_max_len(self) -> float:
        return self.plan.token_capacity / self.max_model_len

    def summary(self) -> str:
        return (f"{self.plan.summary()}; {self.plan.bytes_per_block} bytes per block; "
                f"{self.max_concurrent_seqs_at_max_len:.1f} concurrent sequences at "
                f"max_model_len={self.max_model_len}")


def dtype_bytes(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def kv_budget_bytes(config: ModelConfig, device: torch.device, dtype: torch.dtype, *,
                    gpu_memory_utilization: float, kv_cache_memory_bytes: int | None,
                    max_num_batched_tokens: int, max_num_seqs: int) -> int:
    """Bytes for the KV cache: the explicit budget, else (CUDA) the share of device memory left by
    the weights and an activation reserve, else (CPU) CPU_DEFAULT_KV_BYTES."""
    if kv_cache_memory_bytes is not None:
        return kv_cache_memory_bytes
    if device.type != "cuda":
        return CPU_DEFAULT_KV_BYTES
    free, total = torch.cuda.mem_get_info(device)
    used_now = total - free  # weights, the CUDA context and other processes
    # Peak activations of one step: the widest per-token tensors of a layer at the token budget,
    # plus float32 logits and the sampler's copies of them for every running sequence.
    per_token = (config.hidden_size * 4 + config.intermediate_size * 3
                 + (config.num_attention_heads + 2 * config.num_key_value_heads) * config.head_dim)
    activations = max_num_batched_tokens * per_token * dtype_bytes(dtype)
    logits = max_num_seqs * config.vocab_size * 4 * 4
    return int(total * gpu_memory_utilization) - used_now - activations - logits


def plan_kv_cache(config: ModelConfig, *, block_size: int, dtype: torch.dtype, budget_bytes: int,
                  max_model_len: int) -> KVCachePlan:
    shape = _core.KVCacheShape(num_layers=config.num_hidden_layers, num_kv_heads=config.num_key_value_heads,
                               head_dim=config.head_dim, dtype_bytes=dtype_bytes(dtype), block_size=block_size)
    try:
        plan = KVCachePlan(_core.plan_kv_memory(shape, max(budget_bytes, 0)), max_model_len)
    except ValueError as error:
        raise ValueError(f"not enough memory for the KV cache: {error}; raise gpu_memory_utilization or "
                         "kv_cache_memory_bytes") from None
    capacity = plan.plan.token_capacity
    if capacity < max_model_len:
        raise ValueError(
            f"the KV cache holds {capacity} tokens ({plan.num_blocks} blocks of {block_size}), fewer than "
            f"max_model_len={max_model_len}; the largest max_model_len that fits is {capacity}: pass "
            f"max_model_len<={capacity}, or raise gpu_memory_utilization / kv_cache_memory_bytes")
    return plan


def allocate_kv_cache(config: ModelConfig, num_blocks: int, block_size: int, dtype: torch.dtype,
                      device: torch.device, pin_memory: bool = False) -> list[LayerKVCache]:
    """One LayerKVCache per layer: key and value [num_blocks, num_kv_heads, block_size, head_dim].
    Left uninitialized: the kernels read only slots that write_kv_cache filled. pin_memory: the
    host-side swap space of preemption by swapping (CPU tensors the GPU copies to and from)."""
    shape = (num_blocks, config.num_key_value_heads, block_size, config.head_dim)
    return [LayerKVCache(torch.empty(shape, dtype=dtype, device=device, pin_memory=pin_memory),
                         torch.empty(shape, dtype=dtype, device=device, pin_memory=pin_memory))
            for _ in range(config.num_hidden_layers)]


def blocks_per_seq(max_model_len: int, block_size: int) -> int:
    return math.ceil(max_model_len / block_size)
