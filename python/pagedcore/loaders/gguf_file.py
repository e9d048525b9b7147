"""GGUF files: model config from the metadata and weights dequantized to float32, under HF names.

llama.cpp's converter permutes the q/k projection rows of Llama-architecture models (its RoPE
pairs adjacent dimensions, HF pairs the two halves); the permutation is undone here so the
model code is the same for every source.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from pagedcore.loaders.config import ModelConfig, RopeConfig

# general.architecture -> HF model_type
_ARCHITECTURES = {"llama": "llama", "mistral": "mistral", "qwen2": "qwen2", "qwen3": "qwen3"}
# Architectures whose q/k rows llama.cpp's converter permuted.
_PERMUTED_QK = ("llama", "mistral")

_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_LAYER_PATTERN = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|bias)")


class GGUFFile:
    def __init__(self, path: str | Path):
        import gguf

        self.path = Path(path)
        with open(self.path, "rb") as f:
            magic = f.read(4)
        if magic != b"GGUF":
            raise ValueError(f"{self.path} is not a GGUF file ({'it is empty' if not magic else f'it starts with {magic!r}, not GGUF'})")
        try:
            self.reader = gguf.GGUFReader(str(self.path))
            self.metadata = {name: field.contents() for name, field in self.reader.fields.items()
                             if not name.startswith("GGUF.")}
        except Exception as error:  # the reader fails in many ways on a cut or corrupt file
            raise ValueError(f"{self.path} is not a readable GGUF file ({type(error).__name__}: {error}); "
                             "is the file complete?") from None

    def model_config(self) -> ModelConfig:
        try:
            return self._model_config()
        except KeyError as error:
            raise ValueError(f"{self.path} has no metadata {error.args[0]!r}, which the model needs") from None
        except (TypeError, ValueError) as error:
            raise ValueError(f"{self.path}: {error}") from None

    def _model_config(self) -> ModelConfig:
        arch = self.metadata["general.architecture"]
        if arch not in _ARCHITECTURES:
            raise ValueError(f"GGUF architecture {arch!r} is not supported; supported: {', '.join(_ARCHITECTURES)}")
        meta = lambda key, default=None: self.metadata.get(f"{arch}.{key}", default)  # noqa: E731
        meta_required = lambda key: self.metadata[f"{arch}.{key}"]  # noqa: E731  (KeyError names the key)
        num_heads = int(meta_required("attention.head_count"))
        hidden = int(meta_required("embedding_length"))
        tensor_names = {t.name for t in self.reader.tensors}
        eos = self.metadata.get("tokenizer.ggml.eos_token_id")
        rope_type = meta("rope.scaling.type", "none")
        rope = RopeConfig(theta=float(meta("rope.freq_base", 10000.0)))
        if rope_type == "linear":
            rope = RopeConfig(theta=rope.theta, rope_type="linear", factor=float(meta("rope.scaling.factor")))
        return ModelConfig(
            model_type=_ARCHITECTURES[arch],
            vocab_size=int(meta("vocab_size", len(self.metadata["tokenizer.ggml.tokens"]))),
            hidden_size=hidden,
            intermediate_size=int(meta_required("feed_forward_length")),
            num_hidden_layers=int(meta_required("block_count")),
            num_attention_heads=num_heads,
            num_key_value_heads=int(meta("attention.head_count_kv", num_heads)),
            head_dim=int(meta("attention.key_length", hidden // num_heads)),
            rms_norm_eps=float(meta_required("attention.layer_norm_rms_epsilon")),
            max_position_embeddings=int(meta_required("context_length")),
            tie_word_embeddings="output.weight" not in tensor_names,
            rope=rope,
            qkv_bias="blk.0.attn_q.bias" in tensor_names,
            o_bias="blk.0.attn_output.bias" in tensor_names,
            qk_norm="blk.0.attn_q_norm.weight" in tensor_names,
            bos_token_id=self.metadata.get("tokenizer.ggml.bos_token_id"),
            eos_token_ids=[] if eos is None else [int(eos)],
            dtype="float32",
        )

    def iter_weights(self, config: ModelConfig) -> Iterator[tuple[str, torch.Tensor]]:
        """(HF parameter name, float32 tensor) for every tensor of the file."""
        from gguf.quants import dequantize

        permuted = self.metadata["general.architecture"] in _PERMUTED_QK
        for tensor in self.reader.tensors:
            name = _hf_name(tensor.name)
            shape = [int(d) for d in reversed(tensor.shape)]  # GGUF lists dims innermost first
            array = np.asarray(dequantize(tensor.data, tensor.tensor_type), dtype=np.float32).reshape(shape)
            if permuted and name.endswith(("q_proj.weight", "q_proj.bias")):
                array = _unpermute_rows(array, config.num_attention_heads)
            elif permuted and name.endswith(("k_proj.weight", "k_proj.bias")):
                array = _unpermute_rows(array, config.num_key_value_heads)
            yield name, torch.from_numpy(np.array(array, order="C", copy=True))  # the file is mapped read-only


def _hf_name(gguf_name: str) -> str:
    if gguf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[gguf_name]
    match = _LAYER_PATTERN.fullmatch(gguf_name)
    if match is None or match.group(2) not in _LAYER_NAMES:
        raise ValueError(f"unexpected GGUF tensor {gguf_name!r}")
    layer, part, kind = match.groups()
    return f"model.layers.{layer}.{_LAYER_NAMES[part]}.{kind}"


def _unpermute_rows(array: np.ndarray, num_heads: int) -> np.ndarray:
    """array: [num_heads * head_dim, ...] with each head's rows interleaved (llama.cpp) -> halves (HF)."""
    half = array.shape[0] // num_heads // 2
    per_head = array.reshape(num_heads, half, 2, *array.shape[1:])
    return per_head.swapaxes(1, 2).reshape(array.shape)
