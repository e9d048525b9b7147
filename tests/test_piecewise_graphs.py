"""Piecewise CUDA graphs (model_executor/cuda_graphs.PiecewiseGraphs): the model between attentions,
per padded token count, with each layer's paged attention run eagerly between the pieces. On the
CPU the same pieces run as plain calls (capture=False): padded rows, static buffers and the split of
each layer at its attention must give exactly the eager forward's greedy tokens, for prefill chunks
mixed with decode rows, on every test model. The captured version runs on a CUDA device
(tests/test_models_gpu.py)."""

import pytest
import torch
from tiny_models import save_tiny_model

from pagedcore.engine.llm import LLM
from pagedcore.engine.sampling_params import SamplingParams
from pagedcore.model_executor import model_runner
from pagedcore.model_executor.attention import AttentionMetadata
from pagedcore.model_executor.cuda_graphs import PiecewiseGraphs
from pagedcore.model_executor.step_inputs import StepInputs

GREEDY = SamplingParams(temperature=0, max_tokens=20, ignore_eos=True)


def _prompts(vocab_size: int) -> list[list[int]]:
    generator = torch.Generator().manual_seed(5)
    return [torch.randint(3, vocab_size, (n,), generator=generator).tolist() for n in (1, 7, 16, 33, 90, 130)]


@pytest.mark.parametrize("variant", ["llama", "qwen2", "qwen3"])
def test_pieces_give_the_eager_forwards_greedy_tokens_with_mixed_steps(tmp_path, variant, monkeypatch):
    save_tiny_model(tmp_path, variant, with_tokenizer=False, vocab_size=509)
    # 48 tokens a step: the long prompts run in chunks beside the short ones' decode rows.
    settings = dict(device="cpu", max_model_len=256, kv_cache_memory_bytes=16 << 20, verbose=False,
                    max_num_batched_tokens=48)
    expected = [o.outputs[0].token_ids for o in LLM(str(tmp_path), **settings).generate(_prompts(509), GREEDY,
                                                                                        use_tqdm=False)]
    llm = LLM(str(tmp_path), **settings)
    runner = llm.engine.runner
    runner.piecewise = PiecewiseGraphs(runner.model, runner.kv_caches, runner.device, max_tokens=48, capture=False)
    assert runner.piecewise.sizes == [16, 32, 48]
    steps = []
    run = runner.piecewise.run
    monkeypatch.setattr(runner.piecewise, "run", lambda inputs, meta: steps.append(inputs.input_ids.shape[0])
                        or run(inputs, meta))
    got = [o.outputs[0].token_ids for o in llm.generate(_prompts(509), GREEDY, use_tqdm=False)]
    assert got == expected
    assert max(steps) == 48 and len(set(steps)) > 2  # full chunks, and smaller steps padded to their size


def test_padding_rows_do_not_reach_the_step_rows(tmp_path):
    """Rows past a step's tokens hold whatever the buffers held: garbage there must not change the
    step's rows (every piece works on rows independently)."""
    save_tiny_model(tmp_path, "qwen3", with_tokenizer=False, vocab_size=509)
    llm = LLM(str(tmp_path), device="cpu", max_model_len=128, kv_cache_memory_bytes=8 << 20, verbose=False)
    runner = llm.engine.runner
    pieces = PiecewiseGraphs(runner.model, runner.kv_caches, runner.device, capture=False)
    assert pieces.sizes[-1] == pieces.max_tokens == 512
    num_tokens = 5  # one sequence's 5-token prompt in block 1: padded to 16 rows
    block_size = runner.kv_caches[0].key.shape[2]
    inputs = StepInputs(
        input_ids=torch.tensor([3, 40, 7, 99, 250], dtype=torch.int32),
        positions=torch.arange(num_tokens, dtype=torch.int32),
        slot_mapping=torch.arange(block_size, block_size + num_tokens, dtype=torch.int32),
        context_lens=torch.tensor([num_tokens], dtype=torch.int32),
        query_start_loc=torch.tensor([0, num_tokens], dtype=torch.int32),
        logits_indices=torch.tensor([num_tokens - 1], dtype=torch.int32),
        block_tables=torch.tensor([[1]], dtype=torch.int32),
        deferred_input_rows=torch.empty(0, dtype=torch.int32), deferred_input_samples=torch.empty(0, dtype=torch.int32))

    def meta() -> AttentionMetadata:
        return AttentionMetadata(inputs.slot_mapping, inputs.block_tables, inputs.context_lens, inputs.query_start_loc,
                                 max_query_len=num_tokens, max_context_len=num_tokens)

    def hidden(fill: float, id_fill: int) -> torch.Tensor:
        for buffer in (pieces.q, pieces.k, pieces.v, pieces.attn_out, pieces.residual):
            buffer.fill_(fill)
        pieces.input_ids.fill_(id_fill)
        pieces.positions.fill_(100)
        output = pieces.run(inputs, meta())
        assert output.shape[0] == 16
        return output[:num_tokens].clone()

    with torch.inference_mode():
        reference = runner.model(inputs.input_ids, inputs.positions, runner.kv_caches, meta())
        first, second = hidden(0.0, 0), hidden(1e4, 508)
        with pytest.raises(ValueError, match="a step of 513 tokens is beyond the piecewise graphs' 512"):
            pieces.run(StepInputs(*(torch.zeros(513, dtype=torch.int32) if i < 3 else t
                                    for i, t in enumerate(vars(inputs).values()))), meta())
    torch.testing.assert_close(first, reference, rtol=0, atol=0)
    torch.testing.assert_close(second, reference, rtol=0, atol=0)


def test_a_failed_piecewise_capture_keeps_the_decode_graphs(monkeypatch):
    def failing_capture(*args, **kwargs):
        raise MemoryError("no room for the pieces")

    decode_graphs = object()
    monkeypatch.setattr(model_runner, "DecodeGraphs", lambda *args, **kwargs: decode_graphs)
    monkeypatch.setattr(model_runner, "PiecewiseGraphs", failing_capture)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    runner = model_runner.ModelRunner.__new__(model_runner.ModelRunner)
    runner.model, runner.kv_caches, runner.device = torch.nn.Module(), [], torch.device("cpu")
    runner.graphs = runner.piecewise = None
    runner._graph_shape = dict(max_num_seqs=4, max_blocks_per_seq=8, max_tokens=64)
    with pytest.raises(RuntimeError, match="capturing the piecewise CUDA graphs failed .*MemoryError.*run eagerly"):
        runner._capture_graphs_when_ready()
    assert runner.graphs is decode_graphs and runner.piecewise is None and runner._graph_shape is None


def test_no_parameter_records_autograd(tmp_path):
    """Found in review: the captures run outside inference_mode, and the model's parameters required
    grad, so the pieces' copies into their static buffers recorded autograd graphs holding the saved
    activations of every capture alive."""
    save_tiny_model(tmp_path, "llama", with_tokenizer=False, vocab_size=509)
    llm = LLM(str(tmp_path), device="cpu", max_model_len=128, kv_cache_memory_bytes=8 << 20, verbose=False)
    runner = llm.engine.runner
    assert not any(parameter.requires_grad for parameter in runner.model.parameters())
    pieces = PiecewiseGraphs(runner.model, runner.kv_caches, runner.device, capture=False)
    for index in range(len(pieces.layers) + 1):  # as a capture runs them: grad mode on
        output = pieces._piece(index, 16)
    assert torch.is_grad_enabled() and not output.requires_grad
    assert all(b.grad_fn is None and not b.requires_grad for b in (pieces.q, pieces.k, pieces.v, pieces.residual))
