"""EngineArgs: every engine setting of pagedcore.LLM, checked once with messages naming the field."""

from __future__ import annotations

import argparse
import difflib
from dataclasses import dataclass, field, fields

import torch

from pagedcore import _core, ops
from pagedcore.loaders.model_loader import DEFAULT_MODEL, LOAD_FORMATS

_DTYPES = {"float32": torch.float32, "float": torch.float32, "bfloat16": torch.bfloat16,
           "float16": torch.float16, "half": torch.float16}
PREEMPTION_MODES = ("recompute", "swap")
# Flag types of the fields whose default (None) does not say it.
_CLI_TYPES = {"kv_cache_memory_bytes": int, "max_model_len": int, "quantization": str, "revision": str,
              "download_dir": str}
# vLLM engine arguments that pagedcore has no setting for yet: LLM(...) names them in its error.
VLLM_ENGINE_ARGUMENTS = frozenset({
    "tokenizer_mode", "skip_tokenizer_init",
    "distributed_executor_backend",
    "data_parallel_size", "enable_expert_parallel", "max_parallel_loading_workers", "prefix_caching_hash_algo",
    "disable_sliding_window", "cpu_offload_gb", "num_gpu_blocks_override", "max_num_partial_prefills",
    "max_logprobs", "code_revision", "tokenizer_revision", "rope_scaling",
    "rope_theta", "hf_token", "hf_overrides", "max_seq_len_to_capture",
    "disable_custom_all_reduce", "limit_mm_per_prompt", "enable_lora", "max_loras", "max_lora_rank",
    "max_cpu_loras", "speculative_config", "served_model_name", "scheduling_policy",
    "compilation_config", "structured_outputs_config", "guided_decoding_backend",
    "logits_processors", "generation_config", "override_generation_config", "enable_sleep_mode", "model_impl",
    "worker_cls", "kv_transfer_config", "mm_processor_kwargs", "task", "runner", "convert", "pooler_config",
    "allowed_local_media_path", "max_seq_len", "num_scheduler_steps", "long_prefill_token_threshold",
})


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


def _setting(default, help: str, **extra):
    """A field of EngineArgs: its default, its --help text, and extras: cli=False (no flag),
    only=(values...) with why="..." (the values pagedcore accepts and the reason for the others)."""
    return field(default=default, metadata={"help": help, **extra})


@dataclass(kw_only=True)
class EngineArgs:
    """Every engine setting, its default and its check, in one place. `LLM(model, **kwargs)`,
    `pagedcore generate`, `pagedcore serve` and the benchmarks build from it; the command-line flags
    are generated from these fields (add_cli_arguments), so a new setting is one edit here. Names
    follow vLLM's engine arguments."""

    model: str | None = _setting(DEFAULT_MODEL, f"HF model directory, .gguf file, or {DEFAULT_MODEL} (default)")
    tokenizer: str | None = _setting(None, "tokenizer directory or .gguf file (default: the model's)")
    revision: str | None = _setting(None, "Hub model ids: the branch, tag or commit (default: main)")
    download_dir: str | None = _setting(None, "Hub model ids: the cache folder (default: the Hugging Face cache)")
    dtype: str | torch.dtype = _setting("auto", "auto | float32 | bfloat16 | float16")
    device: str = _setting("auto", "auto | cpu | cuda | cuda:N")
    block_size: int = _setting(16, "token slots per KV block")
    gpu_memory_utilization: float = _setting(0.9, "share of the GPU for weights, activations and the KV cache")
    kv_cache_memory_bytes: int | None = _setting(None, "absolute KV cache budget in bytes (overrides the share)")
    max_model_len: int | None = _setting(None, "longest prompt + output (default: the model's limit)")
    max_num_seqs: int = _setting(256, "sequences running at once")
    max_num_batched_tokens: int = _setting(8192, "tokens per step (decode tokens + prefill chunks)")
    enable_prefix_caching: bool = _setting(True, "reuse the KV blocks of cached prompt prefixes")
    seed: int = _setting(0, "seed of the engine's sampling generator and of dummy weights")
    load_format: str = _setting("auto", "auto | dummy (random weights at the config's shape)")
    enforce_eager: bool = _setting(False, "never capture CUDA graphs")
    async_scheduling: bool = _setting(True, "plan and launch the next step before this step's tokens are read "
                                      "back, and process outputs while the GPU runs (False: the synchronous loop)")
    preemption_mode: str = _setting("recompute", "recompute | swap (KV blocks to pinned host memory; CUDA)")
    swap_space: float = _setting(4.0, "GiB of pinned host memory for preemption_mode=swap")
    verbose: bool = _setting(True, "print the KV memory plan", cli=False)
    # vLLM's engine arguments whose other values pagedcore does not implement (yet): the values
    # listed in `only` are accepted (each is what pagedcore does anyway), the rest refused by name.
    tensor_parallel_size: int = _setting(1, "ranks to shard the model over (Megatron-style; one process and one "
                                         "GPU each, NCCL; gloo on CPU)")
    pipeline_parallel_size: int = _setting(1, "pipeline stages", only=(1,),
                                           why="pipeline parallelism is not implemented")
    enable_chunked_prefill: bool | None = _setting(
        None, "pagedcore always splits long prompts into chunks that run beside decodes", only=(None, True),
        why="pagedcore always chunks prefills (max_num_batched_tokens bounds a step)")
    kv_cache_dtype: str = _setting(
        "auto", "KV cache element type: auto (the model's dtype), fp8 / fp8_e4m3 (float8 e4m3 with a K and a V "
        "scale per layer: one byte per element)", only=("auto", "fp8", "fp8_e4m3"),
        why="the other KV cache types are not implemented")
    calculate_kv_scales: bool = _setting(
        False, "fp8 KV cache: each layer's K and V scales from the first batch's largest values (else the "
        "checkpoint's k_scale / v_scale, else 1.0)", only=(False, True), why="")
    quantization: str | None = _setting(
        None, "weight quantization: fp8 (float8 e4m3 linear layers with per-channel scales, on compute "
        "capability 8.9+ GPUs); default: the checkpoint's (an FP8 checkpoint's is fp8)", only=(None, "fp8"),
        why="the other weight formats are not implemented (GGUF files load dequantized)")
    trust_remote_code: bool = _setting(
        False, "accepted for vLLM programs: pagedcore runs only its built-in architectures, never model code "
        "from a repository", only=(False, True), why="")
    disable_log_stats: bool = _setting(True, "pagedcore logs no periodic stats (the server's /metrics has them)",
                                       only=(True,), why="periodic stats logging is not implemented; "
                                       "read the server's /metrics")

    def __post_init__(self) -> None:
        if self.model is None:
            self.model = DEFAULT_MODEL
        if self.block_size not in _core.SUPPORTED_BLOCK_SIZES:
            raise ValueError(f"block_size must be one of {', '.join(map(str, _core.SUPPORTED_BLOCK_SIZES))}, "
                             f"got {self.block_size!r}")
        if not isinstance(self.gpu_memory_utilization, (int, float)) or not 0 < self.gpu_memory_utilization <= 1:
            raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization!r}")
        if self.kv_cache_memory_bytes is not None and (
                not isinstance(self.kv_cache_memory_bytes, int) or self.kv_cache_memory_bytes <= 0):
            raise ValueError(f"kv_cache_memory_bytes must be None or a positive integer, got "
                             f"{self.kv_cache_memory_bytes!r}")
        for name in ("max_num_seqs", "max_num_batched_tokens", "tensor_parallel_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
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
        for name in ("enable_prefix_caching", "enforce_eager", "async_scheduling", "verbose", "trust_remote_code",
                     "disable_log_stats"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        for f in fields(self):
            only = f.metadata.get("only")
            value = getattr(self, f.name)
            # `is` for None / bools, so that 1 == True does not pass for a bool setting.
            if only is not None and not any(value is v or (type(value) is type(v) and value == v) for v in only):
                raise ValueError(f"{f.name}={value!r} is not supported: {f.metadata['why']}; supported: "
                                 f"{', '.join(map(repr, only))}")

    @classmethod
    def from_kwargs(cls, **kwargs) -> EngineArgs:
        """EngineArgs from keyword arguments, refusing names it does not know: a vLLM engine argument
        pagedcore does not support yet says so; any other name gets the nearest valid one."""
        names = [f.name for f in fields(cls)]
        for key in kwargs:
            if key in names:
                continue
            if key in VLLM_ENGINE_ARGUMENTS:
                raise ValueError(f"{key} is a vLLM engine argument that pagedcore does not support yet; supported "
                                 f"engine arguments: {', '.join(names)}")
            close = difflib.get_close_matches(key, names, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; engine arguments: {', '.join(names)}"
            raise TypeError(f"unknown engine argument {key!r}{hint}")
        return cls(**kwargs)

    @classmethod
    def add_cli_arguments(cls, parser: argparse.ArgumentParser | argparse._ArgumentGroup,
                          skip: tuple[str, ...] = ()) -> None:
        """One --flag per field (--max-num-seqs, --enable-prefix-caching / --no-enable-prefix-caching)."""
        for f in fields(cls):
            if f.name in skip or not f.metadata.get("cli", True):
                continue
            flag = "--" + f.name.replace("_", "-")
            default, help_text = f.default, f.metadata["help"]
            if isinstance(default, bool) or f.metadata.get("only") == (None, True):
                parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=help_text)
            else:
                kind = _CLI_TYPES.get(f.name, type(default) if default is not None else str)
                parser.add_argument(flag, type=kind, default=default, help=f"{help_text} (default: {default})")

    def to_kwargs(self) -> dict:
        """The fields as keyword arguments of LLM(...)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_cli(cls, namespace: argparse.Namespace, skip: tuple[str, ...] = ()) -> EngineArgs:
        """EngineArgs from parsed add_cli_arguments(parser, skip) flags (the others keep their defaults)."""
        return cls(**{f.name: getattr(namespace, f.name) for f in fields(cls)
                      if f.name not in skip and hasattr(namespace, f.name)})

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
        if device.type == "cpu" and dtype not in ops.CPU_DTYPES:
            raise ValueError(f"dtype {dtype} is not supported on CPU; supported: "
                             f"{', '.join(str(d).removeprefix('torch.') for d in ops.CPU_DTYPES)}")
        return dtype

    def resolve_quantization(self, checkpoint_quantization: str | None, device: torch.device,
                             dtype: torch.dtype) -> str | None:
        """The weights' format: `quantization`, else the checkpoint's; FP8 checked against the device."""
        quantization = self.quantization or checkpoint_quantization
        if quantization == "fp8":
            from pagedcore.model_executor.fp8 import check_fp8_supported

            check_fp8_supported(device, dtype)
        return quantization

    def resolve_kv_cache_dtype(self, dtype: torch.dtype) -> torch.dtype:
        """The KV cache's element type: the model's, or float8_e4m3fn for kv_cache_dtype fp8."""
        if self.kv_cache_dtype == "auto":
            if self.calculate_kv_scales:
                raise ValueError("calculate_kv_scales=True applies to an FP8 KV cache (kv_cache_dtype='fp8')")
            return dtype
        return torch.float8_e4m3fn

    def resolve_max_model_len(self, model_max_len: int) -> int:
        if self.max_model_len is None:
            return model_max_len
        if self.max_model_len > model_max_len:
            raise ValueError(f"max_model_len must be <= {model_max_len} (the model's limit), got {self.max_model_len}")
        return self.max_model_len
