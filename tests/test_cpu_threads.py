"""The CPU kernels' threads: on the OpenMP runtime torch already runs (its worker threads spin
between parallel regions, and a pool of our own would share the cores with them), following
torch.set_num_threads; the fallback pool gives the same results."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from pagedcore import _core

# Seeded CPU attention (a prefill and a decode sequence) whose output is saved to argv[1].
ATTENTION_SCRIPT = textwrap.dedent("""
    import sys, torch
    from pagedcore import _core, ops
    torch.manual_seed(0)
    num_heads, num_kv_heads, head_dim, block_size = 6, 2, 64, 16
    k = torch.randn(12, num_kv_heads, block_size, head_dim)
    v = torch.randn_like(k)
    tables = torch.tensor([[3, 7, 1, 0, 9], [2, 11, 4, 5, 8]], dtype=torch.int32)
    context_lens = torch.tensor([70, 53], dtype=torch.int32)
    query_start_loc = torch.tensor([0, 40, 41], dtype=torch.int32)
    q = torch.randn(41, num_heads, head_dim)
    out = ops.paged_attention(q, ops.kv_cache_from_logical(k), ops.kv_cache_from_logical(v), tables,
                              context_lens, query_start_loc, scale=0.125)
    torch.save({"out": out, "backend": _core.cpu_parallel_backend(), "threads": _core.cpu_num_threads()}, sys.argv[1])
""")


OPENMP_TORCH = "OpenMP" in torch.__config__.parallel_info().split("ATen parallel backend:")[-1]
THREAD_SETTINGS = [name for name in ("PAGEDCORE_NUM_THREADS", "PAGEDCORE_OWN_THREADS") if name in os.environ]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the OpenMP runtime is found among Linux's loaded libraries")
@pytest.mark.skipif(not OPENMP_TORCH, reason="this torch's parallel backend is not OpenMP")
@pytest.mark.skipif(bool(THREAD_SETTINGS), reason=f"{THREAD_SETTINGS} set in the environment")
def test_cpu_kernels_run_on_torchs_openmp_threads():
    backend = _core.cpu_parallel_backend()
    assert backend.startswith("openmp ") and "omp" in backend.rsplit("/", 1)[-1], backend
    threads = torch.get_num_threads()
    try:
        assert _core.cpu_num_threads() == threads
        torch.set_num_threads(1)
        assert _core.cpu_num_threads() == 1
    finally:
        torch.set_num_threads(threads)


def test_own_pool_and_openmp_threads_give_the_same_attention(tmp_path):
    results = {}
    for name, env in (("openmp", {}), ("own", {"PAGEDCORE_OWN_THREADS": "1"})):
        path = tmp_path / f"{name}.pt"
        subprocess.run([sys.executable, "-c", ATTENTION_SCRIPT, str(path)], check=True, timeout=120,
                       env={**{k: v for k, v in os.environ.items() if k != "PAGEDCORE_OWN_THREADS"},
                            "PAGEDCORE_NUM_THREADS": "2", **env})
        results[name] = torch.load(path)
    assert results["own"]["backend"] == "own pool"
    assert results["own"]["threads"] == results["openmp"]["threads"] == 2
    if sys.platform.startswith("linux") and OPENMP_TORCH:
        assert results["openmp"]["backend"].startswith("openmp ")
    assert torch.isfinite(results["own"]["out"]).all()
    assert torch.equal(results["openmp"]["out"], results["own"]["out"])


@pytest.mark.skipif(not sys.platform.startswith("linux") or not OPENMP_TORCH,
                    reason="needs Linux and torch's OpenMP backend")
def test_the_runtime_is_found_when_torch_is_imported_after_a_first_call():
    script = textwrap.dedent("""
        import sys
        from pagedcore import _core
        assert "torch" not in sys.modules
        print(_core.cpu_parallel_backend())
        import torch
        print(_core.cpu_parallel_backend())
    """)
    env = {k: v for k, v in os.environ.items() if k not in ("PAGEDCORE_OWN_THREADS", "PAGEDCORE_NUM_THREADS")}
    lines = subprocess.run([sys.executable, "-c", script], check=True, timeout=120, env=env,
                           capture_output=True, text=True).stdout.splitlines()
    assert lines[0] == "own pool" and lines[1].startswith("openmp "), lines
