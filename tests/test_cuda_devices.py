"""Which GPUs pagedcore runs on: compute capability 8.0 and newer, refused with one clear error
below that (checked on any machine through the same native check the engine calls), the default
build's architecture list, and the kernel path each launch takes on a real GPU."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import pagedcore
from pagedcore import _core, ops
from pagedcore.engine.engine_args import EngineArgs

HAS_CUDA = torch.cuda.is_available() and pagedcore.built_with_cuda()
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device and a CUDA build of pagedcore")
DEFAULT_ARCHITECTURES = "80-real,86-real,89-real,90"  # CMakeLists.txt: PAGEDCORE_DEFAULT_CUDA_ARCHS


@pytest.mark.parametrize("name,capability", [("Tesla T4", 75), ("Tesla V100-SXM2-16GB", 70), ("Tesla P100", 60)])
def test_gpus_below_ampere_are_refused_by_name(name, capability):
    message = _core.compute_capability_error(3, name, capability)
    assert f"GPU 3 ({name}, compute capability {capability // 10}.{capability % 10})" in message
    assert "8.0 or newer" in message and "device=\"cpu\"" in message


@pytest.mark.parametrize("capability", [80, 86, 89, 90, 100, 120])
def test_ampere_and_newer_are_accepted(capability):
    assert _core.compute_capability_error(0, "some GPU", capability) == ""
    assert _core.MIN_COMPUTE_CAPABILITY == 80


def test_llm_refuses_an_old_gpu_before_loading_anything(monkeypatch):
    # The engine's device check on a machine whose only GPU is a T4 (torch's view of it faked).
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None: (7, 5))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=None: "Tesla T4")
    monkeypatch.setattr(_core, "built_with_cuda", lambda: True)
    for device in ("auto", "cuda", "cuda:0"):
        with pytest.raises(RuntimeError, match=r"GPU 0 \(Tesla T4, compute capability 7\.5\) is not supported"):
            EngineArgs(device=device).resolve_device()
    with pytest.raises(ValueError, match="only 1 CUDA device"):
        EngineArgs(device="cuda:1").resolve_device()


@pytest.mark.skipif(not pagedcore.built_with_cuda(), reason="a CPU-only build (no nvcc) has no CUDA architectures")
@pytest.mark.skipif("PAGEDCORE_CUDA_ARCHS" in os.environ, reason="PAGEDCORE_CUDA_ARCHS overrides the default list")
def test_default_build_holds_every_supported_architecture():
    assert _core.cuda_build_architectures() == DEFAULT_ARCHITECTURES


@needs_cuda
@pytest.mark.gpu
@pytest.mark.parametrize("head_dim,block_size", [(128, 16), (64, 8), (256, 32), (192, 16), (80, 16), (128, 4)])
def test_decode_takes_the_path_the_device_and_build_allow(head_dim, block_size):
    major, minor = torch.cuda.get_device_capability()
    archs = [a.split("-")[0] for a in _core.cuda_build_architectures().split(",")]
    sm90_code = any(int(a) >= 90 for a in archs if int(a) <= major * 10 + minor)
    hopper = (major >= 9 and sm90_code and os.environ.get("PAGEDCORE_KERNEL_PATH", "auto") != "ampere"
              and head_dim % 64 == 0 and block_size >= 8)
    assert ops.decode_attention_path(torch.bfloat16, head_dim, block_size) == ("hopper" if hopper else "ampere")


@needs_cuda
@pytest.mark.gpu
def test_unknown_kernel_path_is_a_clear_error():
    code = ("import torch; from pagedcore import ops; "
            "ops.decode_attention_path(torch.bfloat16, 128, 16)")
    env = dict(os.environ, PAGEDCORE_KERNEL_PATH="fast")
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "PAGEDCORE_KERNEL_PATH=fast is not a kernel path; use auto (the default) or ampere" in result.stderr
