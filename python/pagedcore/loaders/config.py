"""ModelConfig: the shape of a Llama-family model, read from an HF config.json or GGUF metadata."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

# HF architecture / model_type names this engine runs (one Llama-family implementation).
SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")
SUPPORTED_ROPE_TYPES = ("default", "llama3", "linear")


@dataclass
class RopeConfig:
    theta: float = 10000.0
    rope_type: str = "default"  # "default" | "llama3" | "linear"
    factor: float = 1.0
    low_freq_factor: float = 1.0  # llama3 only
    high_freq_factor: float = 4.0  # llama3 only
    original_max_position_embeddings: int = 8192  # llama3 only

    @classmethod
    def from_hf_dict(cls, hf: dict) -> RopeConfig:
        # transformers >= 5 writes `rope_parameters`; older configs `rope_theta` + `rope_scaling`.
        params = dict(hf.get("rope_parameters") or {})
        scaling = hf.get("rope_scaling") or {}
        params = {**scaling, **params}
        theta = params.get("rope_theta", hf.get("rope_theta", 10000.0))
        rope_type = params.get("rope_type", params.get("type", "default"))
        if rope_type not in SUPPORTED_ROPE_TYPES:
            raise ValueError(f"rope type {rope_type!r} is not supported; supported: {', '.join(SUPPORTED_ROPE_TYPES)}")
        return cls(
            theta=float(theta),
            rope_type=rope_type,
            factor=float(params.get("factor", 1.0)),
            low_freq_factor=float(params.get("low_freq_factor", 1.0)),
            high_freq_factor=float(params.get("high_freq_factor", 4.0)),
            original_max_position_embeddings=int(params.get("original_max_position_embeddings", 8192)),
        )


@dataclass
class ModelConfig:
    model_type: str  # one of SUPPORTED_MODEL_TYPES
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float
    max_position_embeddings: int
    tie_word_embeddings: bool
    rope: RopeConfig = field(default_factory=RopeConfig)
    qkv_bias: bool = False  # Qwen2 (and Llama with attention_bias) add biases to q, k, v
    o_bias: bool = False  # Llama with attention_bias adds one to o_proj too
    qk_norm: bool = False  # Qwen3 RMS-normalizes q and k per head before RoPE
    sliding_window: int | None = None  # Mistral v0.1: attention window; caps max_model_len
    bos_token_id: int | None = None
    eos_token_ids: list[int] = field(default_factory=list)
    dtype: str = "float32"  # the checkpoint's dtype name ("bfloat16", "float16", "float32")
    quantization: str | None = None  # the checkpoint's weight format: None, or "fp8" (HF FP8 layout)

    def __post_init__(self) -> None:
        if self.model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(f"model_type {self.model_type!r} is not supported; supported: "
                             f"{', '.join(SUPPORTED_MODEL_TYPES)}")
        if self.num_attention_heads % self.num_key_value_heads != 0:
            raise ValueError(f"num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                             f"num_key_value_heads ({self.num_key_value_heads})")

    @property
    def max_model_len(self) -> int:
        """Longest sequence the model is meant for (sliding-window models: the window)."""
        if self.sliding_window is not None:
            return min(self.max_position_embeddings, self.sliding_window)
        return self.max_position_embeddings

    @classmethod
    def from_hf_dict(cls, hf: dict) -> ModelConfig:
        model_type = hf.get("model_type", "")
        hidden_size = int(hf["hidden_size"])
        num_heads = int(hf["num_attention_heads"])
        head_dim = hf.get("head_dim") or hidden_size // num_heads
        eos = hf.get("eos_token_id")
        eos_ids = [] if eos is None else ([eos] if isinstance(eos, int) else list(eos))
        attention_bias = bool(hf.get("attention_bias", False))
        if bool(hf.get("mlp_bias", False)):
            raise ValueError("mlp_bias=True is not supported")
        use_window = model_type == "mistral" or bool(hf.get("use_sliding_window", False))
        return cls(
            model_type=model_type,
            vocab_size=int(hf["vocab_size"]),
            hidden_size=hidden_size,
            intermediate_size=int(hf["intermediate_size"]),
            num_hidden_layers=int(hf["num_hidden_layers"]),
            num_attention_heads=num_heads,
            num_key_value_heads=int(hf.get("num_key_value_heads") or num_heads),
            head_dim=int(head_dim),
            rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
            max_position_embeddings=int(hf.get("max_position_embeddings", 2048)),
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
            rope=RopeConfig.from_hf_dict(hf),
            qkv_bias=attention_bias or model_type == "qwen2",
            o_bias=attention_bias and model_type == "llama",
            qk_norm=model_type == "qwen3",
            sliding_window=hf.get("sliding_window") if use_window else None,
            bos_token_id=hf.get("bos_token_id"),
            eos_token_ids=eos_ids,
            dtype=str(hf.get("dtype") or hf.get("torch_dtype") or "float32"),
            quantization=_checkpoint_quantization(hf.get("quantization_config")),
        )

    @classmethod
    def from_hf_dir(cls, model_dir: str | Path) -> ModelConfig:
        path = Path(model_dir) / "config.json"
        if not path.is_file():
            raise FileNotFoundError(f"{model_dir} has no config.json (expected an HF model directory)")
        try:
            hf = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ValueError(f"{path} is not valid JSON ({error}); is the file complete?") from None
        if not isinstance(hf, dict):
            raise ValueError(f"{path} must hold a JSON object, got {type(hf).__name__}")
        try:
            return cls.from_hf_dict(hf)
        except KeyError as error:
            raise ValueError(f"{path} has no {error.args[0]!r}, which the model needs") from None
        except (TypeError, ValueError) as error:
            raise ValueError(f"{path}: {error}") from None


def _checkpoint_quantization(config: dict | None) -> str | None:
    """The weight format a checkpoint's quantization_config names: None, or "fp8" (Hugging Face's FP8
    layout: float8_e4m3fn weights with a weight_scale each, per tensor or per output channel, and
    activations scaled dynamically). Anything else is refused by name."""
    if not config:
        return None
    if not isinstance(config, dict):
        raise ValueError(f"quantization_config must be an object, got {type(config).__name__}")
    method = config.get("quant_method")
    if method != "fp8":
        raise ValueError(f"checkpoints quantized with quant_method {method!r} are not supported; supported: 'fp8'")
    if config.get("activation_scheme", "dynamic") != "dynamic":
        raise ValueError(f"FP8 checkpoints with activation_scheme {config.get('activation_scheme')!r} are not "
                         "supported; supported: 'dynamic' (activation scales computed per token)")
    if config.get("weight_block_size"):
        raise ValueError(f"FP8 checkpoints with block-wise weight scales (weight_block_size "
                         f"{config.get('weight_block_size')}) are not supported; supported: one scale per tensor "
                         "or per output channel")
    return "fp8"
