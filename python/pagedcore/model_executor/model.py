"""The Llama-family model: Llama 2/3, Mistral, Qwen2 (qkv bias), Qwen3 (qk-norm), SmolLM2.

Dense math in torch over a flat token batch (no batch dimension); attention through
the paged KV cache (pagedcore.model_executor.attention). q/k/v and gate/up projections are fused into one
matmul each; load_weights() takes HF parameter names and fills the fused slices.

With a TensorParallel (model_executor/parallel.py) each rank holds its shard: its query and KV heads,
its slice of the MLP and of the vocabulary; load_weights() takes the full HF tensors and keeps the
rank's slice. Without one (tensor_parallel_size 1) nothing is sharded and no collective runs.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from pagedcore.model_executor.attention import AttentionMetadata, LayerKVCache, PagedAttention
from pagedcore.loaders.config import ModelConfig
from pagedcore.model_executor.layers import RMSNorm, RotaryEmbedding, silu_and_mul
from pagedcore.model_executor.parallel import TensorParallel


class Attention(nn.Module):
    def __init__(self, config: ModelConfig, rotary: RotaryEmbedding, tp: TensorParallel | None = None):
        super().__init__()
        self.tp = tp
        self.num_heads = config.num_attention_heads if tp is None else tp.num_local(config.num_attention_heads)
        self.first_kv_head, self.num_kv_heads = ((0, config.num_key_value_heads) if tp is None
                                                 else tp.kv_heads(config.num_key_value_heads))
        self.head_dim = config.head_dim
        self.q_size = self.num_heads * self.head_dim
        self.kv_size = self.num_kv_heads * self.head_dim
        self.qkv_proj = nn.Linear(config.hidden_size, self.q_size + 2 * self.kv_size, bias=config.qkv_bias)
        self.o_proj = nn.Linear(self.q_size, config.hidden_size, bias=config.o_bias)
        self.q_norm = RMSNorm(self.head_dim, config.rms_norm_eps) if config.qk_norm else None
        self.k_norm = RMSNorm(self.head_dim, config.rms_norm_eps) if config.qk_norm else None
        self.rotary = rotary
        self.attn = PagedAttention(self.num_heads, self.num_kv_heads, self.head_dim)

    def project(self, positions: torch.Tensor, hidden: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The part before attention: hidden -> q [num_tokens, num_heads, head_dim], k and v
        [num_tokens, num_kv_heads, head_dim], RoPE (and Qwen3's norms) applied."""
        num_tokens = hidden.shape[0]
        q, k, v = self.qkv_proj(hidden).split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q = q.view(num_tokens, self.num_heads, self.head_dim)
        k = k.view(num_tokens, self.num_kv_heads, self.head_dim)
        v = v.view(num_tokens, self.num_kv_heads, self.head_dim)
        q, k = self.rotary(positions, q, k, self.q_norm, self.k_norm)
        return q, k, v

    def output(self, attn_out: torch.Tensor) -> torch.Tensor:
        """The part after attention: [num_tokens, num_heads, head_dim] -> [num_tokens, hidden_size]."""
        out = self.o_proj(attn_out.reshape(attn_out.shape[0], self.q_size))
        return out if self.tp is None else self.tp.all_reduce(out)  # row-parallel: sum the partial outputs


# On the CPU the MLP takes a long prefill in row slices whose gate / up output stays within this many
# bytes: a whole prefill's product, larger than the CPU's last-level cache, ran markedly slower
# (bench/RESULTS.md, "W5 on the CPU": 24 MiB is 2,048 rows of the default model's float32 output).
CPU_MLP_SLICE_BYTES = 24 << 20


class MLP(nn.Module):
    def __init__(self, config: ModelConfig, tp: TensorParallel | None = None):
        super().__init__()
        self.tp = tp
        self.intermediate_size = config.intermediate_size if tp is None else tp.num_local(config.intermediate_size)
        self.gate_up_proj = nn.Linear(config.hidden_size, 2 * self.intermediate_size, bias=False)
        self.down_proj = nn.Linear(self.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [num_tokens, hidden_size] -> [num_tokens, hidden_size]."""
        if x.is_cuda:
            slice_rows = x.shape[0]
        else:
            slice_rows = max(1, CPU_MLP_SLICE_BYTES // (2 * self.intermediate_size * x.element_size()))
        if x.shape[0] <= slice_rows:
            out = self.down_proj(silu_and_mul(self.gate_up_proj(x)))
        else:  # a long prefill on the CPU, a slice of rows at a time (see CPU_MLP_SLICE_BYTES)
            out = torch.cat([self.down_proj(silu_and_mul(self.gate_up_proj(rows))) for rows in x.split(slice_rows)])
        return out if self.tp is None else self.tp.all_reduce(out)


class DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, rotary: RotaryEmbedding, tp: TensorParallel | None = None):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config, rotary, tp)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MLP(config, tp)

    def forward(self, positions: torch.Tensor, hidden: torch.Tensor, residual: torch.Tensor | None,
                cache: LayerKVCache, meta: AttentionMetadata) -> tuple[torch.Tensor, torch.Tensor]:
        """hidden: the previous layer's output [num_tokens, hidden_size] (the embeddings for the first
        layer, whose residual is None); residual: the residual stream before it is added.
        Returns (this layer's MLP output, the residual stream before it is added): the next norm adds them."""
        q, k, v, residual = self.before_attention(positions, hidden, residual)
        return self.after_attention(self.self_attn.attn(q, k, v, cache, meta), residual)

    def before_attention(self, positions: torch.Tensor, hidden: torch.Tensor, residual: torch.Tensor | None,
                         ) -> tuple[torch.Tensor, ...]:
        """forward's part before the paged attention -> (q, k, v, the residual stream). The residual
        stream given is updated in place (the first layer's, None, becomes the embeddings)."""
        if residual is None:
            residual, hidden = hidden, self.input_layernorm(hidden)
        else:
            hidden, residual = self.input_layernorm(hidden, residual)
        return (*self.self_attn.project(positions, hidden), residual)

    def after_attention(self, attn_out: torch.Tensor, residual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """forward's part after it: the attention's output [num_tokens, num_heads, head_dim] -> as forward
        (residual updated in place)."""
        hidden, residual = self.post_attention_layernorm(self.self_attn.output(attn_out), residual)
        return self.mlp(hidden), residual


class LlamaModel(nn.Module):
    def __init__(self, config: ModelConfig, max_positions: int, tp: TensorParallel | None = None):
        super().__init__()
        self.tp = tp
        self.vocab_start, self.vocab_end = (0, config.vocab_size) if tp is None else tp.vocab_range(config.vocab_size)
        self.embed_tokens = nn.Embedding(self.vocab_end - self.vocab_start, config.hidden_size)
        self.rotary = RotaryEmbedding(config.head_dim, max_positions, config.rope)  # shared by every layer
        self.layers = nn.ModuleList(DecoderLayer(config, self.rotary, tp) for _ in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """input_ids: [num_tokens] -> [num_tokens, hidden_size]; vocabulary-parallel: each rank looks up
        the ids of its slice (zeros elsewhere) and the ranks' rows are summed."""
        if self.tp is None:
            return self.embed_tokens(input_ids)
        mine = (input_ids >= self.vocab_start) & (input_ids < self.vocab_end)
        rows = self.embed_tokens((input_ids - self.vocab_start) * mine) * mine[:, None].to(self.embed_tokens.weight.dtype)
        return self.tp.all_reduce(rows)


class LlamaForCausalLM(nn.Module):
    # HF projection name -> (fused parameter, slice index)
    _FUSED = {"q_proj": ("qkv_proj", 0), "k_proj": ("qkv_proj", 1), "v_proj": ("qkv_proj", 2),
              "gate_proj": ("gate_up_proj", 0), "up_proj": ("gate_up_proj", 1)}

    def __init__(self, config: ModelConfig, max_positions: int, tp: TensorParallel | None = None):
        """max_positions: size of the RoPE table (the engine's max_model_len); tp: this rank's shard
        (None: the whole model)."""
        super().__init__()
        if tp is not None:
            TensorParallel.check(config.num_attention_heads, config.num_key_value_heads, config.intermediate_size,
                                 tp.size)
        self.config = config
        self.tp = tp
        self.model = LlamaModel(config, max_positions, tp)
        self.kv_scales: dict[int, tuple[float, float]] = {}  # layer -> the checkpoint's (k_scale, v_scale)
        self.lm_head = nn.Linear(config.hidden_size, self.model.vocab_end - self.model.vocab_start, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, kv_caches: list[LayerKVCache],
                meta: AttentionMetadata) -> torch.Tensor:
        """input_ids, positions: [num_tokens] -> final hidden states [num_tokens, hidden_size]."""
        hidden, residual = self.model.embed(input_ids), None
        for layer, cache in zip(self.model.layers, kv_caches):
            hidden, residual = layer(positions, hidden, residual, cache, meta)
        return self.model.norm(hidden, residual)[0]

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden: [num_samples, hidden_size] -> logits [num_samples, vocab_size] (every rank's)."""
        logits = self.lm_head(hidden)
        return logits if self.tp is None else self.tp.gather_vocab(logits, self.config.vocab_size)

    @torch.no_grad()
    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]], sharded: bool = False) -> None:
        """weights: (HF parameter name, tensor) pairs, whole (a tensor-parallel rank keeps its slice) or,
        with sharded=True, already this rank's slices (shard_spec). Every parameter must be filled
        exactly once."""
        params = dict(self.named_parameters())
        filled: set[str] = set()
        for name, tensor in weights:
            if "rotary_emb.inv_freq" in name:
                continue  # older checkpoints store the RoPE table; it is recomputed here
            if name.endswith((".self_attn.k_scale", ".self_attn.v_scale")):  # an FP8 KV cache's scales
                layer = int(name.split(".")[2])
                k_scale, v_scale = self.kv_scales.get(layer, (1.0, 1.0))
                value = float(tensor.float().reshape(-1)[0])
                self.kv_scales[layer] = (value, v_scale) if name.endswith("k_scale") else (k_scale, value)
                continue
            if name == "lm_head.weight" and self.config.tie_word_embeddings:
                continue  # some tied checkpoints store the shared matrix twice
            target, part = self._fused_target(name)
            if target not in params:
                raise ValueError(f"checkpoint tensor {name!r} has no place in a {self.config.model_type} model")
            param = params[target]
            if self.tp is not None:
                tensor = self._shard(name, tensor, sliced=sharded)
            dest = param if part is None else self._fused_slice(param, target, part)
            if name.endswith(".weight_scale"):  # FP8: per tensor (one value) or per output channel
                tensor = tensor.reshape(-1)
                if tensor.numel() == 1:
                    tensor = tensor.expand(dest.shape)
            if (tensor.dtype == torch.float8_e4m3fn) != (dest.dtype == torch.float8_e4m3fn):
                raise ValueError(f"checkpoint tensor {name!r} is {tensor.dtype} where the model holds {dest.dtype}: "
                                 "FP8 weights load only into FP8 layers, with their weight_scale")
            if dest.shape != tensor.shape:
                raise ValueError(f"checkpoint tensor {name!r} has shape {tuple(tensor.shape)}, "
                                 f"the model expects {tuple(dest.shape)}")
            dest.copy_(tensor)
            filled.add(name)
        expected = self._expected_checkpoint_names()
        missing = sorted(expected - filled)
        if missing:
            raise ValueError(f"checkpoint is missing {len(missing)} tensors, e.g. {missing[:3]}")

    @torch.no_grad()
    def init_dummy_weights(self, seed: int) -> None:
        """Random weights at the config's shape (benchmarks): normal(0, 0.02), norms at 1."""
        generator = torch.Generator().manual_seed(seed)
        for name, param in self.named_parameters():
            if "norm" in name:
                param.fill_(1.0)
            else:
                values = torch.randn(param.shape, generator=generator) * 0.02
                param.copy_(values.to(param.dtype))

    def _fused_target(self, name: str) -> tuple[str, int | None]:
        parts = name.split(".")
        for index, piece in enumerate(parts):
            if piece in self._FUSED:
                fused, slice_index = self._FUSED[piece]
                return ".".join([*parts[:index], fused, *parts[index + 1:]]), slice_index
        return name, None

    def shard_spec(self, name: str, shape: tuple[int, ...]) -> tuple[int, int, int] | None:
        """(dim, start, length) of this rank's slice of the HF tensor `name` of full `shape`, or None
        when every rank holds all of it (norms, o_proj's bias; parallel.py says which)."""
        attn, mlp = self.model.layers[0].self_attn, self.model.layers[0].mlp
        leaf = name.split(".")[-2] if name.endswith((".weight", ".bias", ".weight_scale")) else ""
        if name.endswith(".weight_scale") and (len(shape) == 0 or shape[0] == 1 or leaf in ("o_proj", "down_proj")):
            return None  # one scale per tensor, or per output channel of a row-parallel layer: every rank's
        if leaf == "q_proj":
            return 0, self.tp.rank * attn.q_size, attn.q_size
        if leaf in ("k_proj", "v_proj"):
            return 0, attn.first_kv_head * attn.head_dim, attn.kv_size
        if leaf == "o_proj":
            return None if name.endswith(".bias") else (1, self.tp.rank * attn.q_size, attn.q_size)
        if leaf in ("gate_proj", "up_proj"):
            return 0, self.tp.rank * mlp.intermediate_size, mlp.intermediate_size
        if leaf == "down_proj":
            return 1, self.tp.rank * mlp.intermediate_size, mlp.intermediate_size
        if leaf in ("embed_tokens", "lm_head"):
            return 0, self.model.vocab_start, self.model.vocab_end - self.model.vocab_start
        return None

    def _shard(self, name: str, tensor: torch.Tensor, sliced: bool) -> torch.Tensor:
        """This rank's slice of an HF tensor (sliced: it is already), o_proj's bias kept on rank 0 only
        (the all-reduce sums every rank's output, so it is added once)."""
        if name.endswith("o_proj.bias") and self.tp.rank != 0:
            return torch.zeros_like(tensor)
        spec = None if sliced else self.shard_spec(name, tuple(tensor.shape))
        return tensor if spec is None else tensor.narrow(*spec)

    def _fused_slice(self, param: torch.Tensor, target: str, part: int) -> torch.Tensor:
        if ".qkv_proj." in target:
            attn = self.model.layers[0].self_attn
            sizes = [attn.q_size, attn.kv_size, attn.kv_size]
        else:
            sizes = [self.model.layers[0].mlp.intermediate_size] * 2
        start = sum(sizes[:part])
        return param.narrow(0, start, sizes[part])

    def _expected_checkpoint_names(self) -> set[str]:
        names = set()
        for name, _ in self.named_parameters():
            if name == "lm_head.weight" and self.config.tie_word_embeddings:
                continue
            if ".qkv_proj." in name:
                names.update(name.replace("qkv_proj", p) for p in ("q_proj", "k_proj", "v_proj"))
            elif ".gate_up_proj." in name:
                names.update(name.replace("gate_up_proj", p) for p in ("gate_proj", "up_proj"))
            else:
                names.add(name)
        return names
