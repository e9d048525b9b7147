"""CUDA graphs.

DecodeGraphs, for decode-only steps: one graph of the whole model per padded batch size. Each graph
reads its inputs from its own static packed-plan buffer (step_inputs), into which a step's plan is
copied, padded to the graph's batch and block-table width, by the one host-to-device copy of the
step. Padding rows write nothing (slot -1) and attend to one slot of block 0; their outputs are
dropped.

PiecewiseGraphs, for the other steps up to a token count (prefill chunks, and decode rows mixed with
them): the model between attentions, captured per padded token count as one piece per layer
boundary; each layer's paged attention, whose launch depends on the step's lengths, runs eagerly
between the pieces over their static buffers (the piecewise capture vLLM and SGLang use)."""

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


# Padded token counts of the piecewise graphs (capped at the engine's max_num_batched_tokens); a step
# of more tokens runs eagerly. Padding costs matmul work (129 tokens run as 192); at these sizes a
# step's launches outweigh it (bench/RESULTS.md, "Piecewise CUDA graphs for mixed steps").
_PIECEWISE_TOKENS = (16, 32, 64, 96, 128, 192, 256, 320, 384, 448, 512)


class PiecewiseGraphs:
    """Steps of up to max_tokens tokens that no decode graph runs. Piece 0 is the embedding and layer
    0 up to its attention; piece i (1 <= i < L) is layer i - 1 after its attention and layer i up to
    its; piece L is the last layer after its attention and the final norm. Every piece reads and
    writes static buffers of the largest size (views of their first `tokens` rows): input ids,
    positions, q / k / v, the attention output and the residual stream. Rows past the step's tokens
    are padding: every operation in a piece works on rows independently, and the attention between
    pieces sees only the step's rows, so padding never reaches a real row, the KV cache or the logits.

    A step's output (run's result) is valid until the next replay: the graphs share one memory pool.
    capture=False runs the same pieces as plain calls (any device): the padding and the static
    buffers, tested on the CPU against the model's forward."""

    def __init__(self, model: LlamaForCausalLM, kv_caches: list[LayerKVCache], device: torch.device, *,
                 max_tokens: int = _PIECEWISE_TOKENS[-1], capture: bool = True):
        self.model = model
        self.kv_caches = kv_caches
        self.layers = list(model.model.layers)
        self.sizes = [t for t in _PIECEWISE_TOKENS if t < max_tokens] + [min(max_tokens, _PIECEWISE_TOKENS[-1])]
        self.max_tokens = self.sizes[-1]
        attention = self.layers[0].self_attn
        rows, dtype = self.max_tokens, model.model.embed_tokens.weight.dtype
        self.input_ids = torch.zeros(rows, dtype=torch.int32, device=device)
        self.positions = torch.zeros(rows, dtype=torch.int32, device=device)
        self.q = torch.zeros(rows, attention.num_heads, attention.head_dim, dtype=dtype, device=device)
        self.k = torch.zeros(rows, attention.num_kv_heads, attention.head_dim, dtype=dtype, device=device)
        self.v = torch.zeros_like(self.k)
        self.attn_out = torch.zeros_like(self.q)
        self.residual = torch.zeros(rows, model.config.hidden_size, dtype=dtype, device=device)
        self.graphs: dict[int, list[torch.cuda.CUDAGraph]] = {}  # padded tokens -> its L + 1 pieces
        self.outputs: dict[int, torch.Tensor] = {}  # padded tokens -> the last piece's hidden states
        if capture:
            self._capture(device)

    def _capture(self, device: torch.device) -> None:
        pool = None
        for tokens in reversed(self.sizes):  # largest first, so smaller graphs reuse its memory pool
            for index in range(len(self.layers) + 1):  # warm-up (lazy initializations), uncaptured
                self._piece(index, tokens)
            pieces = []
            for index in range(len(self.layers) + 1):
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=pool):
                    output = self._piece(index, tokens)
                pool = graph.pool()
                pieces.append(graph)
            self.graphs[tokens], self.outputs[tokens] = pieces, output
        torch.cuda.synchronize(device)

    def _piece(self, index: int, tokens: int) -> torch.Tensor | None:
        """Piece `index` over the first `tokens` rows; the last piece returns the final hidden states."""
        positions, residual = self.positions[:tokens], self.residual[:tokens]
        if index == 0:
            embedded = self.model.model.embed(self.input_ids[:tokens])
            q, k, v, _ = self.layers[0].before_attention(positions, embedded, None)
            residual.copy_(embedded)
        else:
            hidden, _ = self.layers[index - 1].after_attention(self.attn_out[:tokens], residual)
            if index == len(self.layers):
                return self.model.model.norm(hidden, residual)[0]
            q, k, v, _ = self.layers[index].before_attention(positions, hidden, residual)
        self.q[:tokens].copy_(q)
        self.k[:tokens].copy_(k)
        self.v[:tokens].copy_(v)
        return None

    def run(self, inputs: StepInputs, meta: AttentionMetadata) -> torch.Tensor:
        """One step's forward (inputs: its uploaded arrays, deferred inputs taken; meta: its attention
        metadata) -> hidden states [padded tokens, hidden_size]; rows past the step's tokens are padding."""
        num_tokens = inputs.input_ids.shape[0]
        if num_tokens > self.max_tokens:
            raise ValueError(f"a step of {num_tokens} tokens is beyond the piecewise graphs' {self.max_tokens}")
        tokens = next(t for t in self.sizes if t >= num_tokens)
        self.input_ids[:num_tokens].copy_(inputs.input_ids)
        self.positions[:num_tokens].copy_(inputs.positions)
        graphs, output = self.graphs.get(tokens), None
        for index in range(len(self.layers) + 1):
            if index:
                self.layers[index - 1].self_attn.attn(self.q[:num_tokens], self.k[:num_tokens], self.v[:num_tokens],
                                                      self.kv_caches[index - 1], meta, out=self.attn_out[:num_tokens])
            if graphs is None:  # capture=False
                output = self._piece(index, tokens)
            else:
                graphs[index].replay()
        return output if graphs is None else self.outputs[tokens]
