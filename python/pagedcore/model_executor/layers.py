"""Dense building blocks of the Llama family: RMSNorm and rotary position embeddings.

Both follow HF transformers' arithmetic step by step (float32 statistics, the same inv_freq
formula) so that float32 runs match it to the last bits where the kernels allow.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from pagedcore.loaders.config import RopeConfig


class RMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [..., hidden_size] -> same shape and dtype."""
        input_dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(input_dtype)


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
        """Fills cos_cache / sin_cache [max_positions, head_dim] (also after a meta-device build)."""
        if self.cos_cache.is_meta:
            return
        inv_freq = rope_inverse_frequencies(self.head_dim, self.rope)
        positions = torch.arange(self.max_positions, dtype=torch.float32)
        angles = positions[:, None] * inv_freq[None, :]  # [max_positions, head_dim / 2]
        angles = torch.cat([angles, angles], dim=-1)  # [max_positions, head_dim]
        self.cos_cache.copy_(angles.cos())
        self.sin_cache.copy_(angles.sin())

    def forward(self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """positions: [num_tokens]; q: [num_tokens, num_heads, head_dim]; k: [num_tokens, num_kv_heads, head_dim]."""
        cos = self.cos_cache[positions].to(q.dtype)[:, None, :]  # [num_tokens, 1, head_dim]
        sin = self.sin_cache[positions].to(q.dtype)[:, None, :]
        return q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)
