"""FP8 weights (`quantization="fp8"`): the decoder layers' linear layers in float8 e4m3 with one
scale per output channel, multiplied with dynamically quantized activations (one scale per token)
by `torch._scaled_mm` on GPUs of compute capability 8.9 and 9.0 (Ada, Hopper).

Weights come either from an FP8 checkpoint in the Hugging Face layout (`weight` in float8_e4m3fn with
a `weight_scale` beside it, per tensor or per output channel; `quantization_config.quant_method` =
"fp8" with dynamic activations) or from a bf16 / fp16 / fp32 checkpoint quantized at load time.
Embeddings, the LM head and the norms stay in the model's dtype (as vLLM keeps them).
"""

from __future__ import annotations

import torch
from torch import nn

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(FP8_DTYPE).max)  # 448
MIN_COMPUTE_CAPABILITY = (8, 9)
# The projections that become Fp8Linear (HF names; fused ones as the model holds them).
QUANTIZED_PROJECTIONS = ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")


def check_fp8_supported(device: torch.device, dtype: torch.dtype) -> None:
    """Raises ValueError naming what FP8 weights need when `device` / `dtype` cannot run them."""
    need = ("quantization='fp8' multiplies with torch._scaled_mm, which needs a CUDA GPU of compute capability "
            f"{MIN_COMPUTE_CAPABILITY[0]}.{MIN_COMPUTE_CAPABILITY[1]} or newer (Ada, Hopper)")
    if device.type != "cuda":
        raise ValueError(f"{need}; the engine's device is {device.type}")
    capability = torch.cuda.get_device_capability(device)
    if capability < MIN_COMPUTE_CAPABILITY:
        raise ValueError(f"{need}; {torch.cuda.get_device_name(device)} is {capability[0]}.{capability[1]}")
    if dtype != torch.bfloat16:
        raise ValueError(f"quantization='fp8' computes in bfloat16 (torch._scaled_mm's row-wise scales give "
                         f"bfloat16 results), got dtype {dtype}")


def quantize_per_channel(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """weight [out, in] -> (float8 e4m3 [out, in], float32 scales [out]) with weight ~ q * scale[:, None]:
    each output channel's largest magnitude maps to FP8's largest value."""
    w = weight.float()
    scale = (w.abs().amax(dim=1) / FP8_MAX).clamp(min=1e-12)
    q = (w / scale[:, None]).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
    return q, scale


def quantize_per_token(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [tokens, in] -> (float8 e4m3 [tokens, in], float32 scales [tokens, 1]), one scale per token."""
    scale = (x.abs().amax(dim=1, keepdim=True).float() / FP8_MAX).clamp(min=1e-12)
    q = (x.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
    return q, scale


class Fp8Linear(nn.Module):
    """y = x W^T (+ b) with W in float8 e4m3 and per-output-channel scales; x is quantized per token
    on each call. Parameters are named as nn.Linear's (`weight`, `bias`) plus `weight_scale`, so
    checkpoints in the Hugging Face FP8 layout load into it by name."""

    def __init__(self, in_features: int, out_features: int, bias: bool, dtype: torch.dtype,
                 device: torch.device | str | None = None):
        super().__init__()
        if in_features % 16 or out_features % 16:
            raise ValueError(f"FP8 matmuls need both dimensions multiples of 16, got {out_features} x {in_features}")
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features, dtype=FP8_DTYPE, device=device),
                                   requires_grad=False)
        self.weight_scale = nn.Parameter(torch.ones(out_features, dtype=torch.float32, device=device),
                                         requires_grad=False)
        self.bias = (nn.Parameter(torch.zeros(out_features, dtype=dtype, device=device), requires_grad=False)
                     if bias else None)
        self.dtype = dtype

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> Fp8Linear:
        """The FP8 form of a loaded linear layer (its weight quantized per output channel)."""
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None, linear.weight.dtype,
                    linear.weight.device)
        q, scale = quantize_per_channel(linear.weight.detach())
        layer.weight.copy_(q)
        layer.weight_scale.copy_(scale)
        if linear.bias is not None:
            layer.bias.copy_(linear.bias.detach())
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, self.in_features)
        q, scale = quantize_per_token(x2)
        out = torch._scaled_mm(q, self.weight.t(), scale_a=scale, scale_b=self.weight_scale[None, :],
                               bias=self.bias, out_dtype=self.dtype)
        return out.reshape(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, fp8 e4m3, per-channel scales"


def fp8_linear_reference(x: torch.Tensor, layer: Fp8Linear) -> torch.Tensor:
    """Float32 reference of Fp8Linear's product: the same quantized activations and weights,
    dequantized, multiplied in float32 (tests)."""
    q, scale = quantize_per_token(x.reshape(-1, layer.in_features))
    xd = q.float() * scale
    wd = layer.weight.float() * layer.weight_scale[:, None]
    out = xd @ wd.t()
    if layer.bias is not None:
        out = out + layer.bias.float()
    return out.reshape(*x.shape[:-1], layer.out_features)


def fp8_projections(model: nn.Module) -> list[tuple[nn.Module, str]]:
    """(parent module, attribute) of every projection that takes FP8 weights."""
    found = []
    for module in model.modules():
        for name in QUANTIZED_PROJECTIONS:
            if isinstance(getattr(module, name, None), (nn.Linear, Fp8Linear)):
                found.append((module, name))
    return found


def use_fp8_projections(model: nn.Module, *, quantize: bool) -> None:
    """Replaces the projections by Fp8Linear: quantize=True quantizes the loaded weights; False makes
    empty ones for an FP8 checkpoint to load into."""
    for module, name in fp8_projections(model):
        linear = getattr(module, name)
        if isinstance(linear, Fp8Linear):
            continue
        if quantize:
            setattr(module, name, Fp8Linear.from_linear(linear))
        else:
            setattr(module, name, Fp8Linear(linear.in_features, linear.out_features, linear.bias is not None,
                                            linear.weight.dtype, linear.weight.device))
