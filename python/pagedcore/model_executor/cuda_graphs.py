"""CUDA graphs for decode-only steps: one graph per padded batch size, replayed with the step's
inputs copied into static buffers. Padding rows write nothing (slot -1) and attend to one slot
of block 0; their outputs are dropped."""

from __future__ import annotations

import numpy as np
import torch

from pagedcore import ops
from pagedcore.model_executor.attention import AttentionMetadata, LayerKVCache
from pagedcore.model_executor.model import LlamaForCausalLM


_MAX_GRAPH_BATCH = 512  # larger decode batches run eagerly


def _graph_batch_sizes(max_num_seqs: int) -> list[int]:
    largest = min(max_num_seqs, _MAX_GRAPH_BATCH)
    return sorted({b for b in [1, 2, 4, 8, *range(16, _MAX_GRAPH_BATCH + 1, 16)] if b < largest} | {largest})


class DecodeGraphs:
    def __init__(self, model: LlamaForCausalLM, kv_caches: list[LayerKVCache], device: torch.device, *,
                 max_num_seqs: int, max_blocks_per_seq: int):
        self.model = model
        self.kv_caches = kv_caches
        self.device = device
        self.batch_sizes = _graph_batch_sizes(max_num_seqs)
        self.max_batch = self.batch_sizes[-1]
        self.max_blocks_per_seq = max_blocks_per_seq
        max_context_len = max_blocks_per_seq * kv_caches[0].key.shape[2]
        config = model.config
        n = self.max_batch
        self.input_ids = torch.zeros(n, dtype=torch.long, device=device)  # [max_batch]
        self.positions = torch.zeros(n, dtype=torch.long, device=device)  # [max_batch]
        self.slot_mapping = torch.full((n,), -1, dtype=torch.int32, device=device)  # [max_batch]
        self.block_tables = torch.zeros(n, max_blocks_per_seq, dtype=torch.int32, device=device)
        self.context_lens = torch.ones(n, dtype=torch.int32, device=device)  # [max_batch]
        self.query_start_loc = torch.arange(n + 1, dtype=torch.int32, device=device)  # one row per sequence
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.outputs: dict[int, torch.Tensor] = {}  # batch size -> hidden [batch, hidden_size]
        self.workspaces: dict[int, torch.Tensor] = {}
        pool = None
        for batch in reversed(self.batch_sizes):  # largest first, so smaller graphs reuse its memory pool
            num_splits = ops.recommended_num_splits(batch, config.num_key_value_heads, config.num_attention_heads,
                                                    config.head_dim, kv_caches[0].key.dtype, max_context_len)
            self.workspaces[batch] = ops.paged_attention_workspace(batch, config.num_attention_heads,
                                                                   config.head_dim, num_splits, device)
            meta = AttentionMetadata(self.slot_mapping[:batch], self.block_tables[:batch], self.context_lens[:batch],
                                     self.query_start_loc[:batch + 1], max_query_len=1,
                                     max_context_len=max_context_len, num_splits=num_splits,
                                     workspace=self.workspaces[batch])
            self._forward(batch, meta)  # warm-up outside the graph (lazy initializations)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                self.outputs[batch] = self._forward(batch, meta)
            pool = graph.pool()
            self.graphs[batch] = graph
        torch.cuda.synchronize(device)

    def _forward(self, batch: int, meta: AttentionMetadata) -> torch.Tensor:
        return self.model(self.input_ids[:batch], self.positions[:batch], self.kv_caches, meta)

    def can_run(self, plan) -> bool:
        return (plan.num_decode_seqs == plan.num_seqs and plan.num_seqs <= self.max_batch
                and plan.max_blocks_per_seq <= self.max_blocks_per_seq)

    def run(self, plan) -> torch.Tensor:
        """plan: a decode-only StepPlan -> hidden states [num_seqs, hidden_size]."""
        n = plan.num_seqs
        batch = next(b for b in self.batch_sizes if b >= n)
        width = plan.max_blocks_per_seq
        to_device = lambda a: torch.from_numpy(np.array(a)).to(self.device, non_blocking=True)  # noqa: E731
        self.input_ids[:n].copy_(to_device(plan.input_ids))
        self.positions[:n].copy_(to_device(plan.positions))
        self.slot_mapping[:n].copy_(to_device(plan.slot_mapping))
        self.slot_mapping[n:batch].fill_(-1)
        self.block_tables[:n, :width].copy_(to_device(np.asarray(plan.block_tables).reshape(n, width)))
        self.block_tables[n:batch].zero_()
        self.context_lens[:n].copy_(to_device(plan.context_lens))
        self.context_lens[n:batch].fill_(1)
        self.graphs[batch].replay()
        return self.outputs[batch][:n]
