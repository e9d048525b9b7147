"""The fused layer kernels (add_rms_norm, silu_and_mul, qk_norm_rope; CPU always, CUDA when present)
against float64 references computed from the same rounded inputs, over odd sizes, strided views
whose unused columns hold NaN, and zero-token calls."""

from __future__ import annotations

import pytest
import torch

import pagedcore
from pagedcore import ops

HAS_CUDA = torch.cuda.is_available() and pagedcore.built_with_cuda()
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device and a CUDA build of pagedcore")

DEVICE_DTYPES = [
    pytest.param("cpu", torch.float32, id="cpu-fp32"),
    pytest.param("cpu", torch.bfloat16, id="cpu-bf16"),
    pytest.param("cuda", torch.float16, id="cuda-fp16", marks=[needs_cuda, pytest.mark.gpu]),
    pytest.param("cuda", torch.bfloat16, id="cuda-bf16", marks=[needs_cuda, pytest.mark.gpu]),
]
# The kernels round where HF's modules round (a few roundings in the element type per output), so
# the distance to float64 is a few units in the last place of the element type.
TOLERANCE = {torch.float32: 1e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype) -> None:
    tol = TOLERANCE[dtype]
    torch.testing.assert_close(actual.cpu().double(), expected.cpu().double(), atol=tol, rtol=tol)


def strided_rows(num_tokens: int, width: int, dtype, device, pad: int = 24) -> tuple[torch.Tensor, torch.Tensor]:
    """A [num_tokens, width] view of a wider NaN-padded buffer (row stride width + pad), and the buffer."""
    buffer = torch.full((num_tokens, width + pad), float("nan"), dtype=dtype, device=device)
    view = buffer[:, :width]
    view.copy_(torch.randn(num_tokens, width) * 3)
    return view, buffer


def rms_norm_reference(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    x, weight = x.cpu().double(), weight.cpu().double()
    return weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)


@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("hidden", [1, 17, 97, 1024, 4104])
@pytest.mark.parametrize("num_tokens", [1, 37])
def test_rms_norm_without_residual(device, dtype, hidden, num_tokens):
    x, buffer = strided_rows(num_tokens, hidden, dtype, device)
    weight = (torch.rand(hidden) + 0.5).to(device, dtype)
    before = buffer.clone()
    out = ops.add_rms_norm(x, weight, 1e-6)
    assert out.shape == (num_tokens, hidden) and out.dtype == dtype
    assert_close(out, rms_norm_reference(x, weight, 1e-6), dtype)
    assert torch.equal(buffer.nan_to_num(5.0), before.nan_to_num(5.0))  # x untouched, padding unread


@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("hidden", [1, 17, 97, 1024, 4104])
@pytest.mark.parametrize("in_place", [False, True])
def test_rms_norm_with_residual_add(device, dtype, hidden, in_place):
    num_tokens = 23
    x, _ = strided_rows(num_tokens, hidden, dtype, device)
    if in_place:
        x = x.contiguous()  # out = x needs x's own contiguous storage
    residual = (torch.randn(num_tokens, hidden) * 2).to(device, dtype)
    weight = (torch.rand(hidden) + 0.5).to(device, dtype)
    expected_sum = (x.double() + residual.double()).to(dtype)  # the residual stream is rounded, as in HF
    expected = rms_norm_reference(expected_sum, weight, 1e-5)
    out = ops.add_rms_norm(x, weight, 1e-5, residual=residual, out=x if in_place else None)
    assert torch.equal(residual.cpu(), expected_sum.cpu())
    assert_close(out, expected, dtype)
    if in_place:
        assert out.data_ptr() == x.data_ptr()


@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES)
def test_rms_norm_of_zero_tokens_and_rejections(device, dtype):
    weight = torch.ones(64, dtype=dtype, device=device)
    assert ops.add_rms_norm(torch.empty(0, 64, dtype=dtype, device=device), weight, 1e-6).shape == (0, 64)
    x = torch.randn(4, 64).to(device, dtype)
    with pytest.raises(ValueError, match=r"weight must be a contiguous \[64\]"):
        ops.add_rms_norm(x, torch.ones(63, dtype=dtype, device=device), 1e-6)
    with pytest.raises(ValueError, match="residual must be its own tensor"):
        ops.add_rms_norm(x, weight, 1e-6, residual=x)
    with pytest.raises(TypeError, match="must have x's dtype"):
        ops.add_rms_norm(x, weight.float() if dtype != torch.float32 else weight.bfloat16(), 1e-6)


@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("intermediate", [1, 17, 97, 3072])
@pytest.mark.parametrize("num_tokens", [1, 29])
def test_silu_and_mul(device, dtype, intermediate, num_tokens):
    x, buffer = strided_rows(num_tokens, 2 * intermediate, dtype, device)
    x[0, :2] = torch.tensor([-100.0, 90.0], dtype=dtype)  # exp overflow on either side stays finite
    before = buffer.clone()
    out = ops.silu_and_mul(x)
    gate, up = x.cpu().double().split(intermediate, dim=-1)
    expected = gate * torch.sigmoid(gate) * up
    assert out.shape == (num_tokens, intermediate)
    assert torch.isfinite(out.float()).all()
    assert_close(out, expected, dtype)
    assert torch.equal(buffer.nan_to_num(5.0), before.nan_to_num(5.0))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_cpu_silu_and_mul_special_values(dtype):
    """The CPU kernel takes sigmoid from exp(-|g|): infinities, NaN, -0 and the ends of exp's range
    give what float64 silu gives (NaN for -inf, as torch's silu)."""
    specials = [float("nan"), float("inf"), float("-inf"), -0.0, 0.0, -87.5, -86.9, -88.8, -200.0, 88.9, 200.0,
                1e-30, -1e-30, 3.0e38, -3.0e38]
    gate = torch.tensor(specials, dtype=dtype)
    up = torch.full_like(gate, 1.5)
    out = ops.silu_and_mul(torch.cat([gate, up])[None, :])[0]
    g = gate.double()
    expected = (g * torch.sigmoid(g) * 1.5).to(dtype)
    # Below g = -87 the kernel's exp flushes to 0, so silu there is 0 where it is |g| e^g < 2e-36.
    torch.testing.assert_close(out, expected, equal_nan=True, rtol=2e-6 if dtype == torch.float32 else 8e-3,
                               atol=2e-36)


def test_silu_and_mul_refuses_an_odd_width():
    with pytest.raises(ValueError, match="2 \\* intermediate_size"):
        ops.silu_and_mul(torch.randn(3, 7))
    assert ops.silu_and_mul(torch.empty(0, 8)).shape == (0, 4)


def rope_tables(max_position: int, head_dim: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin [max_position, head_dim] with both halves equal, as layers.RotaryEmbedding builds them."""
    inv_freq = 1.0 / (10000.0 ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    angles = torch.arange(max_position, dtype=torch.float64)[:, None] * inv_freq[None, :]
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos().float().to(device), angles.sin().float().to(device)


def qk_norm_rope_reference(x: torch.Tensor, positions: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                           weight: torch.Tensor | None, eps: float, dtype: torch.dtype) -> torch.Tensor:
    """x: [num_tokens, heads, head_dim] -> float64, the norm's output rounded to dtype as HF rounds it."""
    x = x.cpu().double()
    if weight is not None:
        normalized = (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)).to(dtype).double()
        x = (weight.cpu().double() * normalized).to(dtype).double()
    half = x.shape[-1] // 2
    c = cos.cpu().double()[positions.cpu()][:, None, :half]
    s = sin.cpu().double()[positions.cpu()][:, None, :half]
    a, b = x[..., :half], x[..., half:]
    return torch.cat([a * c - b * s, b * c + a * s], dim=-1)


@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("head_dim", [18, 64, 80, 128, 256])
@pytest.mark.parametrize("qk_norm", [False, True])
def test_qk_norm_rope_on_fused_qkv_views(device, dtype, head_dim, qk_norm):
    num_tokens, num_heads, num_kv_heads, max_position = 31, 6, 2, 4099
    qkv = torch.full((num_tokens, num_heads + 2 * num_kv_heads, head_dim), float("nan"), dtype=dtype, device=device)
    qkv[:, :num_heads + num_kv_heads] = (torch.randn(num_tokens, num_heads + num_kv_heads, head_dim) * 2).to(dtype)
    q, k = qkv[:, :num_heads], qkv[:, num_heads:num_heads + num_kv_heads]
    assert not q.is_contiguous() and not k.is_contiguous()
    positions = torch.randint(0, max_position, (num_tokens,), dtype=torch.int32)
    positions[:2] = torch.tensor([0, max_position - 1], dtype=torch.int32)
    positions = positions.to(device)
    cos, sin = rope_tables(max_position, head_dim, device)
    q_weight = (torch.rand(head_dim) + 0.5).to(device, dtype) if qk_norm else None
    k_weight = (torch.rand(head_dim) + 0.5).to(device, dtype) if qk_norm else None
    expect_q = qk_norm_rope_reference(q, positions, cos, sin, q_weight, 1e-6, dtype)
    expect_k = qk_norm_rope_reference(k, positions, cos, sin, k_weight, 1e-6, dtype)
    ops.qk_norm_rope(positions, q, k, cos, sin, q_weight, k_weight, eps=1e-6)
    assert_close(q, expect_q, dtype)
    assert_close(k, expect_k, dtype)
    assert torch.isnan(qkv[:, num_heads + num_kv_heads:].float()).all()  # the V part untouched


def test_qk_norm_rope_rejections():
    cos, sin = rope_tables(16, 64, "cpu")
    q, k = torch.randn(3, 4, 64), torch.randn(3, 2, 64)
    with pytest.raises(IndexError, match=r"positions\[1\] = 16 is outside the rotary table \(16 positions\)"):
        ops.qk_norm_rope(torch.tensor([0, 16, 1], dtype=torch.int32), q, k, cos, sin)
    with pytest.raises(ValueError, match="both q_norm_weight and k_norm_weight"):
        ops.qk_norm_rope(torch.tensor([0, 1, 2], dtype=torch.int32), q, k, cos, sin, q_norm_weight=torch.ones(64))
    with pytest.raises(TypeError, match="positions must be a contiguous int32"):
        ops.qk_norm_rope(torch.tensor([0, 1, 2]), q, k, cos, sin)
    odd = torch.randn(3, 4, 7)
    with pytest.raises(ValueError, match="even head_dim"):
        ops.qk_norm_rope(torch.tensor([0, 1, 2], dtype=torch.int32), odd, odd[:, :2], *rope_tables(16, 8, "cpu"))
