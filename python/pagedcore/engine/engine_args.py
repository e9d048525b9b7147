"""EngineArgs: every engine setting of pagedcore.LLM, checked once with messages naming the field."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pagedcore import _core
from pagedcore.loaders.model_loader import LOAD_FORMATS

_DTYPES = {"float32": torch.float32, "float": torch.float32, "bfloat16": torch.bfloat16,
           "float16": torch.float16, "half": torch.float16}
_CPU_DTYPES = (torch.float32, torch.bfloat16)  # what the CPU kernels support
PREEMPTION_MODES = ("recompute", "swap")


def check_cuda_device(device: torch.device) -> None:
    """Refuses, with one clear error, a GPU the kernels cannot run on: compute capability below
    8.0, or one this build holds no code for."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index >= torch.cuda.device_count():
        raise ValueError(f"device={str(device)!r}: only {torch.cuda.device_count()} CUDA device(s) visible")
    major, minor = torch.cuda.get_device_capability(index)
    error = _core.compute_capability_error(index, torch.cuda.get_device_name(index), major * 10 + minor)
    if error:
        raise RuntimeError(error)
    _core.check_cuda_device(index)


@dataclass
class EngineArgs:
    dtype: str | torch.dtype = "auto"
    device: str = "auto"
    block_size: int = 16
    gpu_memory_utilization: float = 0.9
    kv_cache_memory_bytes: int | None = None
    max_model_len: int | None = None
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192
    enable_prefix_caching: bool = True
    seed: int = 0
    load_format: str = "auto"
    enforce_eager: bool = False  # True: never capture CUDA graphs
    preemption_mode: str = "recompute"  # "recompute" or "swap" (KV blocks to pinned host memory; CUDA only)
    swap_space: float = 4.0  # GiB of pinned host memory for preemption_mode="swap"

    def __post_init__(self) -> None:
        if self.block_size not in _core.SUPPORTED_BLOCK_SIZES:
            raise ValueError(f"block_size must be one of {', '.join(map(str, _core.SUPPORTED_BLOCK_SIZES))}, "
                             f"got {self.block_size!r}")
        if not isinstance(self.gpu_memory_utilization, (int, float)) or not 0 < self.gpu_memory_utilization <= 1:
            raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization!r}")
        if self.kv_cache_memory_bytes is not None and (
                not isinstance(self.kv_cache_memory_bytes, int) or self.kv_cache_memory_bytes <= 0):
            raise ValueError(f"kv_cache_memory_bytes must be None or a positive integer, got "
                             f"{self.kv_cache_memory_bytes!r}")
        for name in ("max_num_seqs", "max_num_batched_tokens"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if self.max_model_len is not None and (not isinstance(self.max_model_len, int) or self.max_model_len < 2):
            raise ValueError(f"max_model_len must be None or an integer >= 2, got {self.max_model_len!r}")
        if not isinstance(self.seed, int):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")
        if self.load_format not in LOAD_FORMATS:
            raise ValueError(f"load_format must be one of {', '.join(LOAD_FORMATS)}, got {self.load_format!r}")
        if self.preemption_mode not in PREEMPTION_MODES:
            raise ValueError(f"preemption_mode must be one of {', '.join(PREEMPTION_MODES)}, "
                             f"got {self.preemption_mode!r}")
        if not isinstance(self.swap_space, (int, float)) or not 0 <= self.swap_space <= 1024:
            raise ValueError(f"swap_space must be a number of GiB in [0, 1024], got {self.swap_space!r}")
        if self.device not in ("auto", "cpu", "cuda") and not str(self.device).startswith("cuda:"):
            raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {self.device!r}")

    def resolve_device(self) -> torch.device:
        if self.device == "auto":
            use_cuda = torch.cuda.is_available() and _core.built_with_cuda()
            device = torch.device("cuda" if use_cuda else "cpu")
        else:
            device = torch.device(self.device)
            if device.type == "cuda" and not (torch.cuda.is_available() and _core.built_with_cuda()):
                raise ValueError("device='cuda' needs a CUDA device and a pagedcore build with the CUDA kernels; "
                                 "use device='cpu'")
        if device.type == "cuda":
            check_cuda_device(device)
        return device

    def resolve_preemption(self, device: torch.device, bytes_per_block: int) -> tuple[_core.PreemptionMode, int]:
        """(scheduler preemption mode, host blocks for swapping)."""
        if self.preemption_mode == "recompute":
            return _core.PreemptionMode.RECOMPUTE, 0
        if device.type != "cuda":
            raise ValueError("preemption_mode='swap' moves KV blocks to pinned host memory and needs a CUDA device; "
                             "use preemption_mode='recompute' on CPU")
        num_host_blocks = int(self.swap_space * (1 << 30)) // bytes_per_block
        if num_host_blocks == 0:
            raise ValueError(f"swap_space={self.swap_space} GiB holds no KV block ({bytes_per_block} bytes each); "
                             "raise swap_space")
        return _core.PreemptionMode.SWAP, num_host_blocks

    def resolve_dtype(self, checkpoint_dtype: str, device: torch.device) -> torch.dtype:
        """'auto': float32 on CPU; on CUDA the checkpoint's half type, else bfloat16."""
        if self.dtype == "auto":
            if device.type == "cpu":
                return torch.float32
            return torch.float16 if checkpoint_dtype == "float16" else torch.bfloat16
        dtype = self.dtype if isinstance(self.dtype, torch.dtype) else _DTYPES.get(str(self.dtype))
        if dtype not in _DTYPES.values():
            raise ValueError(f"dtype must be 'auto' or one of {', '.join(_DTYPES)}, got {self.dtype!r}")
        if device.type == "cpu" and dtype not in _CPU_DTYPES:
            raise ValueError(f"dtype {dtype} is not supported on CPU; supported: float32, bfloat16")
        return dtype

    def resolve_max_model_len(self, model_max_len: int) -> int:
        if self.max_model_len is None:
            return model_max_len
        if self.max_model_len > model_max_len:
            raise ValueError(f"max_model_len must be <= {model_max_len} (the model's limit), got {self.max_model_len}")
        return self.max_model_len
