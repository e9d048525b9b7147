"""CUDA graphs for decode-only steps: one graph per padded batch size. Each graph reads its inputs
from its own static packed-plan buffer (step_inputs), into which a step's plan is copied, padded
to the graph's batch and block-table width, by the one host-to-device copy of the step. Padding
rows write nothing (slot -1) and attend to one slot of block 0; their outputs are dropped."""

from __future__ import annotations

import torch

from pagedcore import _core, ops
from pagedcore.model_executor.attention import AttentionMetadata, LayerKVCache
from pagedcore.model_executor.model import LlamaForCausalLM
from pagedcore.model_executor.step_inputs import PlanUploader, StepInputs


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
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.outputs: dict[int, torch.Tensor] = {}  # batch size -> hidden [batch, hidden_size]
        self.buffers: dict[int, torch.Tensor] = {}  # batch size -> static packed plan, int32
        self.layouts: dict[int, object] = {}  # batch size -> its _core.PackedPlanLayout
        self.workspaces: dict[int, torch.Tensor] = {}
        pool = None
        for batch in reversed(self.batch_sizes):  # largest first, so smaller graphs reuse its memory pool
            layout = _core.decode_layout(batch, max_blocks_per_seq)  # what padded_decode_layout gives
            buffer = torch.zeros(layout.size, dtype=torch.int32, device=device)
            inputs = StepInputs.view(buffer, layout)
            inputs.slot_mapping.fill_(-1)
            inputs.context_lens.fill_(1)
            inputs.query_start_loc.copy_(torch.arange(batch + 1, dtype=torch.int32))
            num_splits = ops.recommended_num_splits(batch, config.num_key_value_heads, config.num_attention_heads,
                                                    config.head_dim, kv_caches[0].key.dtype, max_context_len)
            self.workspaces[batch] = ops.paged_attention_workspace(batch, config.num_attention_heads,
                                                                   config.head_dim, num_splits, device)
            meta = AttentionMetadata(inputs.slot_mapping, inputs.block_tables, inputs.context_lens,
                                     inputs.query_start_loc, max_query_len=1, max_context_len=max_context_len,
                                     num_splits=num_splits, workspace=self.workspaces[batch])
            self.model(inputs.input_ids, inputs.positions, kv_caches, meta)  # warm-up (lazy initializations)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                self.outputs[batch] = self.model(inputs.input_ids, inputs.positions, kv_caches, meta)
            pool = graph.pool()
            self.graphs[batch], self.buffers[batch], self.layouts[batch] = graph, buffer, layout
        torch.cuda.synchronize(device)

    def batch_for(self, plan) -> int | None:
        """The batch size of the graph that runs the plan (its padded batch), None when none can."""
        if (plan.num_decode_seqs != plan.num_seqs or plan.num_seqs > self.max_batch
                or plan.max_blocks_per_seq > self.max_blocks_per_seq):
            return None
        return next(b for b in self.batch_sizes if b >= plan.num_seqs)

    def run(self, plan, batch: int, layout, uploader: PlanUploader, previous_tokens: torch.Tensor | None = None,
            ) -> tuple[torch.Tensor, StepInputs]:
        """plan: a decode-only StepPlan; batch, layout: batch_for(plan) and the plan's decode layout
        padded to it; previous_tokens: the previous step's sampled tokens, which its deferred inputs
        take -> (hidden states [batch, hidden_size] of the padded batch, the step's inputs as the graph
        read them)."""
        inputs = uploader.upload(plan, layout, dst=self.buffers[batch])
        inputs.take_deferred_inputs(plan.num_deferred, previous_tokens)
        self.graphs[batch].replay()
        return self.outputs[batch], inputs
