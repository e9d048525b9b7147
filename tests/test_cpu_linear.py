"""float32 linear layers on the CPU through oneDNN (model_executor/cpu_linear.py): the same products
as torch's F.linear up to float32 rounding, packed weights replacing the plain ones, a tied LM head
left sharing the embedding's matrix."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from tiny_models import save_tiny_model

from pagedcore.loaders.model_loader import build_model, resolve_model
from pagedcore.model_executor.cpu_linear import OneDnnLinear, onednn_linear_available, use_onednn_linears

pytestmark = pytest.mark.skipif(not onednn_linear_available(), reason="this torch build has no oneDNN linear")


@pytest.mark.parametrize("pack", [True, False], ids=["packed", "plain"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("rows", [1, 7, 32, 300])
def test_matches_f_linear(pack, bias, rows):
    torch.manual_seed(rows)
    linear = nn.Linear(576, 960, bias=bias)
    x = torch.randn(rows, 576)
    expected = (x.double() @ linear.weight.double().t() + (linear.bias.double() if bias else 0)).float()
    layer = OneDnnLinear(linear, pack=pack)
    out = layer(x)
    assert out.shape == (rows, 960) and out.dtype == torch.float32
    # float32 sums of 576 products in another order: a few units of float32 rounding of |x||w|
    torch.testing.assert_close(out, expected, rtol=0, atol=2e-5)
    assert layer(x.reshape(1, rows, 576)).shape == (1, rows, 960)  # leading dims kept
    assert torch.equal(layer(x.clone()), out)  # deterministic: the same input gives the same bits


def test_non_contiguous_input_is_handled():
    linear = nn.Linear(64, 32)
    x = torch.randn(10, 128)[:, ::2]
    torch.testing.assert_close(OneDnnLinear(linear, pack=True)(x), nn.functional.linear(x, linear.weight, linear.bias),
                               rtol=0, atol=1e-5)


def test_model_swaps_every_float32_linear_and_keeps_the_tied_head_shared(tmp_path):
    save_tiny_model(tmp_path, "qwen2", with_tokenizer=False, tie_word_embeddings=True)  # qkv bias, tied head
    model = build_model(resolve_model(str(tmp_path)), dtype=torch.float32, device=torch.device("cpu"),
                        max_positions=128, load_format="auto", seed=0)
    # The loader's model keeps nn.Linear and its parameters; the runner swaps them.
    assert type(model.model.layers[0].mlp.down_proj) is nn.Linear
    assert use_onednn_linears(model) == 4 * model.config.num_hidden_layers + 1
    assert not any(type(m) is nn.Linear for m in model.modules())
    layers = [m for m in model.modules() if isinstance(m, OneDnnLinear)]
    assert not model.lm_head.packed  # the embedding's matrix itself, not a copy:
    assert model.lm_head.onednn_weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert all(m.packed for m in layers if m is not model.lm_head)
    # Packed weights replaced the plain ones: the projections hold no parameters but their biases.
    names = {name for name, _ in model.named_parameters()}
    assert not any(name.endswith("proj.weight") for name in names)
    assert any(name.endswith("qkv_proj.bias") for name in names)


def test_the_cpu_engine_runs_onednn_linears(tmp_path):
    from pagedcore.engine.llm import LLM

    save_tiny_model(tmp_path, "llama", with_tokenizer=False)
    llm = LLM(str(tmp_path), device="cpu", max_model_len=64, verbose=False)
    assert isinstance(llm.model.model.layers[0].self_attn.qkv_proj, OneDnnLinear)
    assert isinstance(llm.model.lm_head, OneDnnLinear)


def test_other_dtypes_and_an_untied_head(tmp_path):
    model = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8).to(torch.bfloat16))
    assert use_onednn_linears(model) == 1
    assert isinstance(model[0], OneDnnLinear) and model[0].packed
    assert type(model[1]) is nn.Linear  # bfloat16 stays as it is


def test_a_long_cpu_prefill_runs_the_mlp_in_row_slices(tmp_path, monkeypatch):
    from pagedcore.model_executor import model as model_module

    save_tiny_model(tmp_path, "llama", with_tokenizer=False)
    model = build_model(resolve_model(str(tmp_path)), dtype=torch.float32, device=torch.device("cpu"),
                        max_positions=128, load_format="auto", seed=0)
    use_onednn_linears(model)
    mlp = model.model.layers[0].mlp
    slice_rows = model_module.CPU_MLP_SLICE_BYTES // (2 * mlp.intermediate_size * 4)
    x = torch.randn(2 * slice_rows + 5, model.config.hidden_size)
    calls = []
    gate_up = mlp.gate_up_proj.forward
    monkeypatch.setattr(mlp.gate_up_proj, "forward", lambda rows: calls.append(rows.shape[0]) or gate_up(rows))
    sliced = mlp(x)
    assert calls == [slice_rows, slice_rows, 5]
    monkeypatch.setattr(model_module, "CPU_MLP_SLICE_BYTES", 1 << 40)
    whole = mlp(x)
    assert calls[-1] == x.shape[0]
    # Rows are independent: the slices give what the whole does (to float32 rounding, should a
    # library sum differently for another row count).
    torch.testing.assert_close(sliced, whole, rtol=0, atol=1e-5)
