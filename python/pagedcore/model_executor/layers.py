"""Dense building blocks of the Llama family: RMSNorm, rotary position embeddings, the gated MLP's
activation.

RMSNorm (with the residual add) and RoPE (with Qwen3's per-head norms) run one fused pagedcore kernel
(pagedcore.ops: add_rms_norm, qk_norm_rope) on CUDA and on the CPU, in place. The norms round where
HF's modules round; RoPE rotates in float32 with float32 tables and rounds once (HF rounds cos / sin
and each product to a half type first), so half-precision runs match HF within a tolerance
(tests/test_models*.py), float32 ones to float32 rounding. The MLP's activation is the fused
silu_and_mul kernel on CUDA; on the CPU torch's silu and multiply (AVX-512 where the CPU has it)
measured faster than the CPU kernel (bench/RESULTS.md, "W5 on the CPU").
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from pagedcore import ops
from pagedcore.loaders.config import RopeConfig


class RMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None):
        """x: [num_tokens, hidden_size] -> normalized, same shape and dtype. With residual (the
        residual stream, [num_tokens, hidden_size]): returns (norm(x + residual), x + residual), in
        place: x then holds the normalized sum and residual the sum."""
        if residual is None:
            return ops.add_rms_norm(x, self.weight, self.eps)
        return ops.add_rms_norm(x, self.weight, self.eps, residual=residual, out=x), residual


def rope_inverse_frequencies(head_dim: int, rope: RopeConfig) -> torch.Tensor:
    """[head_dim / 2] float32 angular frequencies, with llama3 or linear scaling applied."""
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim
    inv_freq = 1.0 / (rope.theta ** exponents)
    if rope.rope_type == "linear":
        return inv_freq / rope.factor
    if rope.rope_type != "llama3":
        return inv_freq
    # Llama 3.1: low frequencies slowed by `factor`, high ones kept, a smooth ramp in between.
    old_len = rope.original_max_position_embeddings
    low_freq_wavelen = old_len / rope.low_freq_factor
    high_freq_wavelen = old_len / rope.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / rope.factor, inv_freq)
    smooth = (old_len / wavelen - rope.low_freq_factor) / (rope.high_freq_factor - rope.low_freq_factor)
    smoothed = (1 - smooth) * scaled / rope.factor + smooth * scaled
    is_medium = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
    return torch.where(is_medium, smoothed, scaled)


class RotaryEmbedding(nn.Module):
    """Rotates the two halves of each head (HF / GPT-NeoX layout) by position-dependent angles."""

    def __init__(self, head_dim: int, max_positions: int, rope: RopeConfig):
        super().__init__()
        self.head_dim = head_dim
        self.max_positions = max_positions
        self.rope = rope
        self.register_buffer("cos_cache", torch.empty(max_positions, head_dim), persistent=False)
        self.register_buffer("sin_cache", torch.empty(max_positions, head_dim), persistent=False)
        self.build_tables()

    @torch.no_grad()
    def build_tables(self) -> None:
        """Fills cos_cache / sin_cache [max_positions, head_dim] in float32 on the buffers' device
        (call it after a meta-device build and after model.to(dtype), which casts buffers too)."""
        if self.cos_cache.is_meta:
            return
        device = self.cos_cache.device
        inv_freq = rope_inverse_frequencies(self.head_dim, self.rope)
        positions = torch.arange(self.max_positions, dtype=torch.float32)
        angles = positions[:, None] * inv_freq[None, :]  # [max_positions, head_dim / 2]
        angles = torch.cat([angles, angles], dim=-1)  # [max_positions, head_dim]
        self.cos_cache = angles.cos().to(device)
        self.sin_cache = angles.sin().to(device)

    def forward(self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor,
                q_norm: RMSNorm | None = None, k_norm: RMSNorm | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """positions: int32 [num_tokens]; q: [num_tokens, num_heads, head_dim]; k: [num_tokens,
        num_kv_heads, head_dim]; q_norm / k_norm: per-head RMSNorms applied first (Qwen3), or None.
        Returns q and k themselves, rotated in place."""
        ops.qk_norm_rope(positions, q, k, self.cos_cache, self.sin_cache,
                         q_norm.weight if q_norm is not None else None,
                         k_norm.weight if k_norm is not None else None, q_norm.eps if q_norm is not None else 0.0)
        return q, k


def silu_and_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """gate_up: [num_tokens, 2 * intermediate] = [gate, up] -> silu(gate) * up [num_tokens, intermediate]."""
    if gate_up.is_cuda:
        return ops.silu_and_mul(gate_up)
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up
