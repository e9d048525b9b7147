"""float32 linear layers on the CPU through oneDNN with pre-packed weights.

torch's `F.linear` on the CPU multiplies in float32 with MKL's sgemm, which on the AMD EPYC machines
this project's CPU work runs on is markedly slower than oneDNN (already inside torch) with the weight
reordered once into its blocked layout, above all at decode's few rows and for the LM head
(bench/RESULTS.md, "W5 on the CPU"). The results are float32 sums in another order: within float32
rounding of MKL's, not bit-equal to it.

The model runner swaps the layers (ModelRunner on a CPU device), after loading: the model a loader
builds keeps nn.Linear and its parameters. The packed weight replaces the plain one (no second copy),
except for an LM head tied to the embeddings: the embedding lookup needs the plain matrix, so that
layer runs oneDNN on it unpacked.
"""

from __future__ import annotations

import torch
from torch import nn

# The batch size oneDNN chooses its blocked layout for (bench/RESULTS.md: the same speed for 32 to
# 4,800 rows with any hint from 32 up).
PACK_BATCH_HINT = 64


def onednn_linear_available() -> bool:
    ops = torch.ops.mkldnn
    return (torch.backends.mkldnn.is_available() and hasattr(ops, "_linear_pointwise")
            and hasattr(ops, "_reorder_linear_weight"))


class OneDnnLinear(nn.Module):
    """y = x W^T (+ b) through oneDNN; W packed once (pack=True) or the plain [out, in] matrix."""

    def __init__(self, linear: nn.Linear, *, pack: bool):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight = linear.weight.detach()
        # A plain attribute, not a parameter: the packed tensor is opaque (no strides, no views),
        # and a tied plain weight stays registered once, under the embedding.
        self.packed = pack
        self.onednn_weight = torch.ops.mkldnn._reorder_linear_weight(weight, PACK_BATCH_HINT) if pack else weight
        self.bias = linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features).contiguous()
        out = torch.ops.mkldnn._linear_pointwise(rows, self.onednn_weight, self.bias, "none", [], "")
        return out.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, packed={self.packed}")


def use_onednn_linears(model: nn.Module) -> int:
    """Replaces every float32 CPU nn.Linear of `model` by a OneDnnLinear (packed unless its weight is
    shared with another module, as a tied LM head's is). Returns how many were replaced; 0 when
    oneDNN is not in this torch build (the layers stay as they are). The model is for inference from
    then on: the packed projections are no longer parameters (no state_dict, no load_weights)."""
    if not onednn_linear_available():
        return 0
    shared = _shared_weights(model)
    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is not nn.Linear or child.weight.device.type != "cpu" or child.weight.dtype != torch.float32:
                continue
            setattr(parent, name, OneDnnLinear(child, pack=id(child.weight) not in shared))
            replaced += 1
    return replaced


def _shared_weights(model: nn.Module) -> set[int]:
    """ids of the parameters held by more than one module (tied embeddings)."""
    seen: dict[int, int] = {}
    for module in model.modules():
        for param in module.parameters(recurse=False):
            seen[id(param)] = seen.get(id(param), 0) + 1
    return {key for key, count in seen.items() if count > 1}
