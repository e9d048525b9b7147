"""The CPU kernels' instruction-set variants (cpp/src/cpu_isa.h): baseline x86-64, AVX2 and AVX-512
builds of the attention and layer kernels, picked at run time (PAGEDCORE_CPU_ISA overrides). They
compute the same lanes in the same order without fused multiply-adds, so their outputs must be
bit-identical; each variant's accuracy against the float64 reference is that of
tests/test_kernels_attention.py and tests/test_kernels_layers.py (run them with PAGEDCORE_CPU_ISA set
to check one)."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from pagedcore import _core

# Prefill rows (the tiled kernel: 40 rows, 19 with a cached prefix), decode rows with each KV head
# alone (few sequences) and with all of a row's heads in one item (many), over float32, bfloat16
# and FP8 caches, with scores of large and tiny magnitude; outputs saved to argv[1].
SCRIPT = textwrap.dedent("""
    import sys, torch
    from pagedcore import _core, ops
    out = {"isa": _core.cpu_isa()}
    for dtype in (torch.float32, torch.bfloat16):
        for cache_dtype in (None, "fp8"):
            for num_seqs in (2, 9):
                g = torch.Generator().manual_seed(num_seqs)
                num_heads, num_kv_heads, head_dim, block_size = 6, 2, 64, 16
                logical_k = torch.randn(60, num_kv_heads, block_size, head_dim, generator=g) * 3
                logical_v = torch.randn(60, num_kv_heads, block_size, head_dim, generator=g)
                logical_k[7] *= 40  # scores that move the running max a long way
                tables = torch.randperm(60, generator=g)[:num_seqs * 6].to(torch.int32).reshape(num_seqs, 6)
                context_lens = torch.randint(1, 96, (num_seqs,), generator=g, dtype=torch.int32)
                qlens = [min(40, int(context_lens[0]))] + [1] * (num_seqs - 2) + [min(19, int(context_lens[-1]))]
                query_start_loc = torch.tensor([0] + torch.tensor(qlens).cumsum(0).tolist(), dtype=torch.int32)
                q = (torch.randn(sum(qlens), num_heads, head_dim, generator=g) * 2).to(dtype)
                if cache_dtype == "fp8":
                    k = ops.kv_cache_from_logical(logical_k.to(torch.float8_e4m3fn))
                    v = ops.kv_cache_from_logical(logical_v.to(torch.float8_e4m3fn))
                    scales = dict(k_scale=0.5, v_scale=2.0)
                else:
                    k, v = ops.kv_cache_from_logical(logical_k.to(dtype)), ops.kv_cache_from_logical(logical_v.to(dtype))
                    scales = {}
                out[(str(dtype), cache_dtype, num_seqs)] = ops.paged_attention(
                    q, k, v, tables, context_lens, query_start_loc, scale=0.125, **scales)
    # The layer kernels: RMSNorm with and without the residual, SiLU-and-multiply with large and
    # small gates, RoPE with Qwen3's per-head norms; hidden sizes with and without a 16-lane tail.
    for dtype in (torch.float32, torch.bfloat16):
        for hidden in (576, 72):
            g = torch.Generator().manual_seed(hidden)
            x = (torch.randn(37, hidden, generator=g) * 4).to(dtype)
            residual = torch.randn(37, hidden, generator=g).to(dtype)
            weight = torch.randn(hidden, generator=g).to(dtype)
            out[("rms_norm", str(dtype), hidden)] = ops.add_rms_norm(x, weight, 1e-6)
            summed = residual.clone()
            normed = ops.add_rms_norm(x.clone(), weight, 1e-6, residual=summed)
            out[("add_rms_norm", str(dtype), hidden)] = torch.cat([normed, summed])
            gate_up = (torch.randn(37, 2 * hidden, generator=g) * 6).to(dtype)
            out[("silu_and_mul", str(dtype), hidden)] = ops.silu_and_mul(gate_up)
        q = torch.randn(23, 6, 64, generator=g).to(dtype)
        k = torch.randn(23, 2, 64, generator=g).to(dtype)
        angles = torch.arange(100).float()[:, None] * torch.rand(32, generator=g)[None, :]
        cos, sin = angles.cos(), angles.sin()
        positions = torch.randint(0, 100, (23,), generator=g, dtype=torch.int32)
        ops.qk_norm_rope(positions, q, k, cos, sin, torch.randn(64, generator=g).to(dtype),
                         torch.randn(64, generator=g).to(dtype), 1e-6)
        out[("qk_norm_rope", str(dtype))] = torch.cat([q.flatten(), k.flatten()])
    torch.save(out, sys.argv[1])
""")


def run_variant(tmp_path, isa: str | None) -> dict:
    path = tmp_path / f"{isa}.pt"
    env = {k: v for k, v in os.environ.items() if k != "PAGEDCORE_CPU_ISA"}
    env["PAGEDCORE_NUM_THREADS"] = "2"  # 9 sequences then take the whole-row decode items (>= 2 per thread)
    if isa is not None:
        env["PAGEDCORE_CPU_ISA"] = isa
    subprocess.run([sys.executable, "-c", SCRIPT, str(path)], check=True, timeout=300, env=env)
    return torch.load(path)


@pytest.mark.skipif(len(_core.cpu_supported_isas()) < 2, reason="this CPU runs the baseline variant only")
def test_every_variant_gives_the_same_bits(tmp_path):
    isas = _core.cpu_supported_isas()
    assert isas[0] == "baseline" and set(isas) <= {"baseline", "avx2", "avx512"}
    results = {isa: run_variant(tmp_path, isa) for isa in isas}
    assert all(results[isa]["isa"] == isa for isa in isas)
    base = results["baseline"]
    cases = [key for key in base if key != "isa"]
    assert len(cases) == 8 + 12 + 2
    for isa in isas[1:]:
        for key in cases:
            assert torch.isfinite(base[key].float()).all(), key
            assert torch.equal(results[isa][key], base[key]), (isa, key)


def test_the_widest_variant_runs_by_default(tmp_path):
    assert run_variant(tmp_path, None)["isa"] == _core.cpu_supported_isas()[-1]


@pytest.mark.skipif(os.environ.get("PAGEDCORE_CPU_ISA", "") != "", reason="PAGEDCORE_CPU_ISA set in the environment")
def test_cpu_isa_names_the_variant_in_use():
    assert _core.cpu_isa() == _core.cpu_supported_isas()[-1]


@pytest.mark.parametrize("name", ["sse9", "AVX2", "avx-512"])
def test_an_unknown_variant_is_refused_by_name(name):
    script = "from pagedcore import _core\n_core.cpu_isa()"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PAGEDCORE_CPU_ISA": name})
    assert result.returncode != 0
    assert f"PAGEDCORE_CPU_ISA={name} is not one of baseline, avx2, avx512" in result.stderr
    assert "this CPU runs baseline" in result.stderr


@pytest.mark.skipif(_core.cpu_supported_isas()[-1] == "avx512", reason="this CPU runs every variant")
def test_a_variant_this_cpu_lacks_is_refused_by_name():
    script = "from pagedcore import _core\n_core.cpu_isa()"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PAGEDCORE_CPU_ISA": "avx512"})
    assert result.returncode != 0 and "cannot run it" in result.stderr


def test_a_cpu_engine_refuses_a_bad_variant_when_it_is_built(tmp_path):
    # At construction, not at the first step (in the server: not at the first request).
    from tiny_models import save_tiny_model

    save_tiny_model(tmp_path, "llama", with_tokenizer=False)
    script = f"from pagedcore import LLM\nLLM({str(tmp_path)!r}, device='cpu', max_model_len=64, verbose=False)"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PAGEDCORE_CPU_ISA": "sse9"})
    assert result.returncode != 0
    assert "PAGEDCORE_CPU_ISA=sse9 is not one of baseline, avx2, avx512" in result.stderr
