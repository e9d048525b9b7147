"""Tensor parallelism (Megatron style) over a torch.distributed process group: which slice of each
weight a rank holds, and the collectives of the sharded layers.

- Column-parallel (the fused qkv and gate/up projections): each rank holds the output rows of its
  heads / its slice of the intermediate size; no communication.
- Row-parallel (o_proj, down_proj): each rank holds the input columns matching them; the partial
  outputs are summed with one all-reduce (a bias is added once, after the sum).
- Vocabulary-parallel (embed_tokens, lm_head): each rank holds a contiguous slice of the vocabulary;
  the embedding sums masked lookups with an all-reduce, the logits are all-gathered.
- KV heads: num_kv_heads / size each, or, with fewer KV heads than ranks, the one KV head that the
  rank's query heads read (replicated over num_kv_heads-sized groups of ranks).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist


def check_tensor_parallel(args, config, device: torch.device) -> str:
    """Everything that would stop a tensor-parallel engine, checked before any process starts (one
    ValueError naming the limit) -> the torch.distributed backend: nccl on CUDA, gloo on CPU."""
    size = args.tensor_parallel_size
    TensorParallel.check(config.num_attention_heads, config.num_key_value_heads, config.intermediate_size, size)
    if not dist.is_available():
        raise ValueError(f"tensor_parallel_size={size} needs torch.distributed, which this torch build lacks")
    if dist.is_initialized():
        raise ValueError(f"tensor_parallel_size={size}: torch.distributed is already initialized in this process "
                         "(another tensor-parallel LLM still running? call its shutdown() first)")
    if device.type == "cuda":
        if str(args.device).startswith("cuda:"):
            raise ValueError(f"tensor_parallel_size={size} runs rank r on cuda:r; pass device='cuda' or 'auto', "
                             f"not {args.device!r} (choose GPUs with CUDA_VISIBLE_DEVICES)")
        count = torch.cuda.device_count()
        if count < size:
            raise ValueError(f"tensor_parallel_size={size} needs {size} GPUs, one per rank; {count} visible")
        if not dist.is_nccl_available():
            raise ValueError(f"tensor_parallel_size={size} on CUDA needs torch.distributed's NCCL backend, which "
                             "this torch build lacks")
        return "nccl"
    if not dist.is_gloo_available():
        raise ValueError(f"tensor_parallel_size={size} on CPU needs torch.distributed's gloo backend, which this "
                         "torch build lacks")
    return "gloo"


@dataclass(frozen=True)
class TensorParallel:
    rank: int
    size: int
    group: object | None = None  # a torch.distributed group (None: the default one)

    @staticmethod
    def check(num_heads: int, num_kv_heads: int, intermediate_size: int, size: int) -> None:
        """ValueError naming the limit when a model cannot be split over `size` ranks."""
        if size < 1:
            raise ValueError(f"tensor_parallel_size must be >= 1, got {size}")
        if num_heads % size:
            raise ValueError(f"tensor_parallel_size={size} must divide the model's {num_heads} attention heads")
        if (num_kv_heads % size) if num_kv_heads >= size else (size % num_kv_heads):
            raise ValueError(f"tensor_parallel_size={size} and the model's {num_kv_heads} KV heads: one must "
                             f"divide the other")
        if intermediate_size % size:
            raise ValueError(f"tensor_parallel_size={size} must divide the model's intermediate size "
                             f"{intermediate_size}")

    def num_local(self, total: int) -> int:
        return total // self.size

    def kv_heads(self, num_kv_heads: int) -> tuple[int, int]:
        """(first KV head, count) this rank holds."""
        if num_kv_heads >= self.size:
            count = num_kv_heads // self.size
            return self.rank * count, count
        return self.rank * num_kv_heads // self.size, 1

    def vocab_per_rank(self, vocab_size: int) -> int:
        return -(-vocab_size // self.size)

    def vocab_range(self, vocab_size: int) -> tuple[int, int]:
        """[start, end) of this rank's vocabulary slice (the last slices may be shorter)."""
        per_rank = self.vocab_per_rank(vocab_size)
        start = min(self.rank * per_rank, vocab_size)
        return start, min(start + per_rank, vocab_size)

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        dist.all_reduce(x, group=self.group)
        return x

    def gather_vocab(self, logits: torch.Tensor, vocab_size: int) -> torch.Tensor:
        """logits: [rows, this rank's vocabulary slice] -> [rows, vocab_size] on every rank."""
        padded = logits.new_zeros(logits.shape[0], self.vocab_per_rank(vocab_size))
        padded[:, :logits.shape[1]] = logits
        parts = [torch.empty_like(padded) for _ in range(self.size)]
        dist.all_gather(parts, padded.contiguous(), group=self.group)
        return torch.cat(parts, dim=1)[:, :vocab_size]
