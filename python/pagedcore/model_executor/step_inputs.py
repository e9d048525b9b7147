"""A step plan's arrays on the device: packed natively into one pinned int32 buffer and moved with
a single host-to-device copy per step (on CPU the packed buffer itself is used)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class StepInputs:
    """Views of one packed plan buffer (int32), at the offsets of a _core.PackedPlanLayout."""

    input_ids: torch.Tensor  # [num_tokens]
    positions: torch.Tensor  # [num_tokens]
    slot_mapping: torch.Tensor  # [num_tokens], -1 = padding (nothing written)
    context_lens: torch.Tensor  # [num_seqs]
    query_start_loc: torch.Tensor  # [num_seqs + 1]
    logits_indices: torch.Tensor  # [num_samples] token rows whose logits are sampled
    block_tables: torch.Tensor  # [num_seqs, width]
    deferred_input_rows: torch.Tensor  # [room] rows whose input the previous step sampled (plan.num_deferred used)
    deferred_input_samples: torch.Tensor  # [room] that token's sample row in the previous step

    def take_deferred_inputs(self, num_deferred: int, previous_tokens: torch.Tensor | None) -> None:
        """Writes the previous step's sampled tokens (previous_tokens [num_samples] int64, on the device)
        into the rows that take them, on the device: the host never waits for them."""
        if num_deferred == 0:
            return
        if previous_tokens is None:
            raise RuntimeError("the plan takes inputs from a previous step, but no sampled tokens were given")
        rows = self.deferred_input_rows[:num_deferred].long()
        samples = self.deferred_input_samples[:num_deferred].long()
        self.input_ids.index_copy_(0, rows, previous_tokens.index_select(0, samples).to(self.input_ids.dtype))

    @classmethod
    def view(cls, buffer: torch.Tensor, layout) -> StepInputs:
        def part(offset: int, count: int) -> torch.Tensor:
            return buffer[offset:offset + count]

        tokens, seqs = layout.num_tokens, layout.num_seqs
        return cls(part(layout.input_ids, tokens), part(layout.positions, tokens), part(layout.slot_mapping, tokens),
                   part(layout.context_lens, seqs), part(layout.query_start_loc, seqs + 1),
                   part(layout.logits_indices, layout.num_samples),
                   part(layout.block_tables, seqs * layout.width).view(seqs, layout.width),
                   part(layout.deferred_input_rows, layout.num_deferred),
                   part(layout.deferred_input_samples, layout.num_deferred))


class PlanUploader:
    """Packs plans into a reused pinned host buffer and copies them to the device without blocking.
    Before the host buffer is rewritten, it waits for the previous copy to have read it (an event;
    free when that copy is long done, as it is when every step ends in a token-id sync)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.pinned = device.type == "cuda"
        self.host = torch.empty(0, dtype=torch.int32, pin_memory=self.pinned)
        self.device_buffer = torch.empty(0, dtype=torch.int32, device=device)
        self.copied = torch.cuda.Event() if self.pinned else None
        self.num_uploads = 0

    def upload(self, plan, layout, dst: torch.Tensor | None = None) -> StepInputs:
        """Packs `plan` at `layout` and returns its arrays on the device: in `dst` (an int32 buffer
        of layout.size elements, e.g. a CUDA graph's static inputs) or in the uploader's own buffer."""
        if self.copied is not None:
            self.copied.synchronize()
        if self.host.numel() < layout.size:
            self.host = torch.empty(max(layout.size, 2 * self.host.numel()), dtype=torch.int32, pin_memory=self.pinned)
        plan.pack(layout, self.host.data_ptr(), self.host.numel())
        self.num_uploads += 1
        if not self.pinned:
            return StepInputs.view(self.host, layout)
        if dst is None:
            if self.device_buffer.numel() < layout.size:
                self.device_buffer = torch.empty(self.host.numel(), dtype=torch.int32, device=self.device)
            dst = self.device_buffer
        dst[:layout.size].copy_(self.host[:layout.size], non_blocking=True)
        self.copied.record()
        return StepInputs.view(dst, layout)
