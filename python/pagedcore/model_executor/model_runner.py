"""ModelRunner: executes exactly what a step plan says, nothing more.

It moves the KV blocks the plan asks for (swap out, swap in, then copy-on-write), moves the plan's
int32 arrays to the device in one copy (step_inputs.PlanUploader), runs the model (on GPU replaying
a captured CUDA graph for decode-only steps, and piecewise graphs around the attentions for other
steps of up to 512 tokens) and returns the logits of the rows the plan samples (then of any extra
rows the caller asks for: prompt logprobs).
"""

from __future__ import annotations

import numpy as np
import torch

from pagedcore import _core, ops
from pagedcore.model_executor.attention import AttentionMetadata, LayerKVCache
from pagedcore.model_executor.cpu_linear import use_onednn_linears
from pagedcore.model_executor.cuda_graphs import DecodeGraphs, PiecewiseGraphs
from pagedcore.model_executor.model import LlamaForCausalLM
from pagedcore.model_executor.step_inputs import PlanUploader, StepInputs


# On the CPU each layer allocates and frees tensors of megabytes: glibc's malloc keeps blocks up to
# this size in its heap for reuse instead of mapping them afresh and faulting them in every step
# (_core.cpu_keep_freed_memory; bench/RESULTS.md, "W5 on the CPU: freed memory kept").
CPU_HEAP_KEEP_BYTES = 256 << 20


class ModelRunner:
    def __init__(self, model: LlamaForCausalLM, kv_caches: list[LayerKVCache], device: torch.device, *,
                 max_num_seqs: int, max_blocks_per_seq: int, use_cuda_graphs: bool,
                 host_kv_caches: list[LayerKVCache] | None = None, max_num_batched_tokens: int = 8192):
        if device.type == "cpu":
            use_onednn_linears(model)  # float32 projections through oneDNN (model_executor/cpu_linear.py)
            _core.cpu_isa()  # a PAGEDCORE_CPU_ISA this CPU cannot run is refused here, not at the first step
        # The malloc threshold set for this process (0: left as it was; _core.cpu_keep_freed_memory).
        self.kept_heap_bytes = _core.cpu_keep_freed_memory(CPU_HEAP_KEEP_BYTES) if device.type == "cpu" else 0
        self.model = model
        self.kv_caches = kv_caches
        self.host_kv_caches = host_kv_caches  # pinned CPU swap space (preemption by swapping), or None
        self.device = device
        self.num_blocks_swapped_out = 0
        self.num_blocks_swapped_in = 0
        self.workspace: torch.Tensor | None = None  # CUDA split-KV scratch of eager steps, grown on demand
        self.uploader = PlanUploader(device)
        self.graphs = None
        self.piecewise = None  # PiecewiseGraphs (other steps of up to 512 tokens), captured with them
        # Decode graphs bake each layer's FP8 scales into their kernel arguments: with scales still to
        # come from the first batch (calculate_kv_scales), both kinds are captured after the step that
        # set every layer's (a one-time pause of the captures' length then).
        self._graph_shape = None
        if use_cuda_graphs and device.type == "cuda":
            self._graph_shape = dict(max_num_seqs=max_num_seqs, max_blocks_per_seq=max_blocks_per_seq,
                                     max_tokens=max_num_batched_tokens)
            self._capture_graphs_when_ready()

    def _capture_graphs_when_ready(self) -> None:
        """Captures the decode and the piecewise graphs once no layer waits for its scales. Called at
        construction and after each step, where every rank of a tensor-parallel group calls it (the
        captures' warm-ups run all-reduces); the ranks agree on the moment through an all-reduce of
        their readiness, since each calibrates from its own shard. (A capture that fails on one rank
        only leaves the others waiting in a warm-up's all-reduce until the group's timeout.)"""
        if self._graph_shape is None:
            return
        ready = not any(c.calibrate for c in self.kv_caches)
        tp = getattr(self.model, "tp", None)
        if tp is not None and tp.size > 1:
            flag = torch.tensor([1 if ready else 0], dtype=torch.int32, device=self.device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN, group=tp.group)
            ready = bool(flag.item())
        if not ready:
            return
        shape, self._graph_shape = self._graph_shape, None  # one attempt: after a failure, steps run eagerly
        torch.cuda.empty_cache()  # blocks cached by the eager steps so far go back for the graphs' pool
        max_tokens = shape.pop("max_tokens")
        try:
            self.graphs = DecodeGraphs(self.model, self.kv_caches, self.device, **shape)
        except Exception as error:
            raise _capture_failed("decode", error) from error
        try:  # a failure here keeps the decode graphs
            self.piecewise = PiecewiseGraphs(self.model, self.kv_caches, self.device, max_tokens=max_tokens)
        except Exception as error:
            raise _capture_failed("piecewise", error) from error

    @torch.inference_mode()
    def execute(self, plan, extra_rows: np.ndarray | None = None,
                previous_tokens: torch.Tensor | None = None) -> torch.Tensor:
        """plan: a pagedcore._core.StepPlan with num_tokens > 0; extra_rows: [num_extra] int32 token rows
        of the plan whose logits are wanted too (prompt logprobs); previous_tokens: [num_samples of the
        previous step] int64 on the device, the tokens the plan's deferred inputs take -> logits
        [num_samples + num_extra, vocab] float32: the sampled rows, then the extra rows."""
        if len(plan.swap_out_pairs) or len(plan.swap_in_pairs):
            self._swap(plan.swap_out_pairs, plan.swap_in_pairs)
        if len(plan.copy_pairs):
            pairs = torch.from_numpy(np.array(plan.copy_pairs, dtype=np.int32).reshape(-1, 2)).to(self.device)
            ops.copy_blocks([c.key for c in self.kv_caches] + [c.value for c in self.kv_caches], pairs)
        layout, graph_batch = self.input_layout(plan)
        if graph_batch is not None:
            hidden, inputs = self.graphs.run(plan, graph_batch, layout, self.uploader, previous_tokens)  # [batch, hidden]
        else:
            inputs = self.uploader.upload(plan, layout)
            inputs.take_deferred_inputs(plan.num_deferred, previous_tokens)
            hidden = self._run_eager(plan, inputs)  # [num_tokens (padded by piecewise graphs), hidden_size]
        rows = inputs.logits_indices[:plan.num_samples]  # a graph's padded rows are not sampled
        if extra_rows is not None and len(extra_rows):
            rows = torch.cat([rows, self._to_device(np.asarray(extra_rows, dtype=np.int32))])
        logits = self.model.compute_logits(hidden[rows]).float()
        if self._graph_shape is not None:  # scales pending: this step may have set them
            self._capture_graphs_when_ready()
        return logits

    def input_layout(self, plan) -> tuple[object, int | None]:
        """(the packed layout the plan's arrays take on the device, the CUDA graph's batch size or None:
        eager)."""
        batch = self.graphs.batch_for(plan) if self.graphs is not None else None
        if batch is None:
            return plan.packed_layout(), None
        return plan.padded_decode_layout(batch, self.graphs.max_blocks_per_seq), batch

    def _swap(self, swap_out_pairs: np.ndarray, swap_in_pairs: np.ndarray) -> None:
        """swap_out_pairs [n, 2] (device block, host block) run before swap_in_pairs [m, 2] (host, device):
        a block freed by swapping out may be the target of a swap in of the same step."""
        if self.host_kv_caches is None:
            raise RuntimeError("the plan asked for swaps but the engine has no swap space")
        device_caches = [c.key for c in self.kv_caches] + [c.value for c in self.kv_caches]
        host_caches = [c.key for c in self.host_kv_caches] + [c.value for c in self.host_kv_caches]
        if len(swap_out_pairs):
            ops.swap_blocks(device_caches, host_caches, np.asarray(swap_out_pairs).tolist())
            self.num_blocks_swapped_out += len(swap_out_pairs)
        if len(swap_in_pairs):
            ops.swap_blocks(host_caches, device_caches, np.asarray(swap_in_pairs).tolist())
            self.num_blocks_swapped_in += len(swap_in_pairs)

    def _run_eager(self, plan, inputs: StepInputs) -> torch.Tensor:
        max_context_len = plan.max_context_len
        num_splits, workspace = self._split_kv(plan.num_seqs, max_context_len)
        meta = AttentionMetadata(
            slot_mapping=inputs.slot_mapping,
            block_tables=inputs.block_tables,
            context_lens=inputs.context_lens,
            query_start_loc=inputs.query_start_loc,
            max_query_len=plan.max_query_len,
            max_context_len=max_context_len,
            num_splits=num_splits,
            workspace=workspace,
        )
        if self.piecewise is not None and plan.num_tokens <= self.piecewise.max_tokens:
            return self.piecewise.run(inputs, meta)  # [padded tokens, hidden_size]
        return self.model(inputs.input_ids, inputs.positions, self.kv_caches, meta)

    def _split_kv(self, num_seqs: int, max_context_len: int) -> tuple[int | None, torch.Tensor | None]:
        """The step's CUDA split-KV count and workspace, chosen once for every layer (None on CPU).
        One zero-filled workspace serves every step; it grows when a step needs more."""
        if self.device.type != "cuda":
            return None, None
        config, cache = self.model.config, self.kv_caches[0].key
        num_splits = ops.recommended_num_splits(num_seqs, config.num_key_value_heads, config.num_attention_heads,
                                                config.head_dim, cache.dtype, max_context_len)
        if num_splits == 1:
            return 1, None
        need = ops.paged_attention_workspace_bytes(num_seqs, config.num_attention_heads, config.head_dim, num_splits)
        if self.workspace is None or self.workspace.numel() < need:
            self.workspace = ops.paged_attention_workspace(num_seqs, config.num_attention_heads, config.head_dim,
                                                           num_splits, self.device)
        return num_splits, self.workspace

    def _to_device(self, array: np.ndarray) -> torch.Tensor:
        # The plan's arrays are read-only views of a buffer the scheduler reuses: copy them.
        return torch.from_numpy(np.array(array)).to(self.device, non_blocking=True)


def _capture_failed(kind: str, error: Exception) -> RuntimeError:
    return RuntimeError(f"capturing the {kind} CUDA graphs failed ({type(error).__name__}: {error}); the steps they "
                        "would run run eagerly, and enforce_eager=True never captures them")
