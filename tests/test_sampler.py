"""Sampler: greedy, filters, penalties, seeded reproducibility and log-probabilities."""

import gc

import pytest
import torch

from pagedcore.model_executor.sampler import Sampler, SequenceSamplingState
from pagedcore.engine.sampling_params import SamplingParams

VOCAB = 50


def _state(params: SamplingParams, seq_index: int = 0, output=()):
    state = SequenceSamplingState.create(params, [1, 2, 3], seq_index)
    state.output_token_ids.extend(output)
    return state


def _sampler(seed: int = 0) -> Sampler:
    return Sampler(VOCAB, torch.Generator().manual_seed(seed))


def test_greedy_takes_argmax_and_reports_raw_logprobs():
    logits = torch.randn(3, VOCAB)
    out = _sampler()(logits, [_state(SamplingParams(temperature=0))] * 3)
    assert out.token_ids == logits.argmax(-1).tolist()
    expected = logits.log_softmax(-1).max(-1).values
    assert torch.allclose(torch.tensor(out.logprobs), expected, atol=1e-6)
    assert out.top_logprobs == [None] * 3


def test_padded_vocab_columns_are_never_sampled():
    logits = torch.zeros(1, VOCAB + 14)
    logits[0, VOCAB:] = 100.0
    out = _sampler()(logits, [_state(SamplingParams(temperature=0))])
    assert out.token_ids[0] < VOCAB


def test_top_k_1_and_tiny_top_p_and_min_p_1_are_greedy():
    logits = torch.randn(3, VOCAB)
    states = [_state(SamplingParams(temperature=1.0, top_k=1)), _state(SamplingParams(temperature=1.0, top_p=1e-6)),
              _state(SamplingParams(temperature=1.0, min_p=1.0))]
    for trial in range(5):
        assert _sampler(trial)(logits, states).token_ids == logits.argmax(-1).tolist()


def test_top_k_keeps_only_the_k_best():
    logits = torch.randn(1, VOCAB)
    allowed = set(logits[0].topk(5).indices.tolist())
    sampler = _sampler()
    seen = {sampler(logits, [_state(SamplingParams(temperature=5.0, top_k=5))]).token_ids[0] for _ in range(200)}
    assert seen <= allowed and len(seen) > 1


def test_seeded_sequences_reproduce_whatever_shares_the_batch():
    logits = torch.randn(4, VOCAB)
    params = SamplingParams(temperature=1.0, seed=1234)

    def run(other_rows: int, sampler_seed: int) -> list[int]:
        state = _state(params)
        tokens = []
        for _ in range(10):
            others = [_state(SamplingParams(temperature=1.0)) for _ in range(other_rows)]
            rows = torch.cat([logits[:1], logits[1:1 + other_rows]])
            tokens.append(_sampler(sampler_seed)(rows, [state, *others]).token_ids[0])
        return tokens

    assert run(0, 0) == run(3, 99)
    siblings = [_state(params, seq_index=i) for i in range(2)]
    draws = [[_sampler()(logits[:1], [s]).token_ids[0] for _ in range(10)] for s in siblings]
    assert draws[0] != draws[1]  # n > 1 siblings draw from distinct streams


def test_penalties_follow_hf_and_vllm_formulas():
    logits = torch.tensor([[2.0, -1.0, 0.5, 0.1] + [-10.0] * (VOCAB - 4)])
    params = SamplingParams(temperature=0, repetition_penalty=2.0, frequency_penalty=0.5, presence_penalty=0.25)
    state = _state(params, output=[0, 0, 1])
    processed = _sampler()._apply_penalties(logits, [state])
    # token 0: 2.0 / 2 (repetition) - 2 * 0.5 (frequency) - 0.25 (presence)
    assert torch.isclose(processed[0, 0], torch.tensor(2.0 / 2 - 1.0 - 0.25))
    # token 1: -1.0 * 2 - 0.5 - 0.25
    assert torch.isclose(processed[0, 1], torch.tensor(-2.0 - 0.5 - 0.25))
    # token 2 is in the prompt only ([1, 2, 3]): repetition penalty alone
    assert torch.isclose(processed[0, 2], torch.tensor(0.25))
    assert torch.equal(processed[0, 4:], logits[0, 4:])
    assert torch.equal(logits[0, 0], torch.tensor(2.0))  # the input is not modified


PENALTY_DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", PENALTY_DEVICES)
def test_batched_penalties_from_the_device_history_equal_the_per_row_form(device):
    # The device-side history (PenaltyHistory: rows written once, then extended by each step's new
    # tokens, slots reused after a sequence goes) gives exactly the per-row form's values, step
    # after step, with rows joining, leaving and skipping steps.
    generator = torch.Generator().manual_seed(5)
    sampler, reference = _sampler(), _sampler()
    settings = [dict(repetition_penalty=1.3), dict(frequency_penalty=0.7, presence_penalty=-0.4),
                dict(repetition_penalty=0.8, frequency_penalty=-0.3, presence_penalty=0.9), dict(repetition_penalty=1.0,
                presence_penalty=0.5)]
    states = []
    for step in range(12):
        if step % 3 == 0:  # a sequence joins, an old one leaves (its slot is freed and reused)
            if len(states) >= 3:
                states.pop(0)
                gc.collect()
            prompt = torch.randint(0, VOCAB, (int(torch.randint(1, 30, (1,), generator=generator)),),
                                   generator=generator).tolist()
            states.append(SequenceSamplingState.create(
                SamplingParams(temperature=1.0, **settings[step // 3 % len(settings)]), prompt, 0))
        batch = [s for i, s in enumerate(states) if (step + i) % 4 != 3]  # some rows skip a step
        logits = torch.randn(len(batch) + 1, VOCAB, generator=generator) * 3
        plain = _state(SamplingParams(temperature=1.0))  # a row without penalties keeps its logits
        rows = [*batch, plain]
        ours = sampler._apply_penalties_batched(logits.to(device), rows, list(range(len(batch)))).cpu()
        expected = reference._apply_penalties(logits, rows)
        assert torch.equal(ours, expected), f"step {step}: {(ours - expected).abs().max()}"
        for s in states:  # every sequence decodes: few distinct tokens, so repeats are common
            s.output_token_ids.extend(torch.randint(0, 6, (1 + step % 2,), generator=generator).tolist())
    assert len(sampler.penalty_history.free) + len(states) == sampler.penalty_history.ids.shape[0]


def test_a_new_penalty_history_never_reads_rows_of_an_old_one():
    # A state that had a row in one history (say, of another device) gets its own row in a new one.
    from pagedcore.model_executor.sampler import PenaltyHistory

    state = SequenceSamplingState.create(SamplingParams(repetition_penalty=1.5), [1, 2, 3], 0)
    state.output_token_ids.extend([4, 5])
    first, second = PenaltyHistory(torch.device("cpu")), PenaltyHistory(torch.device("cpu"))
    other = SequenceSamplingState.create(SamplingParams(repetition_penalty=1.5), [9, 9], 0)
    second.rows([other])  # the second history's first row is taken by another sequence
    first.rows([state])
    slots, longest = second.rows([state])
    assert longest == 5 and second.ids[slots[0], :5].tolist() == [1, 2, 3, 4, 5]
    assert slots[0].item() != other.penalty_slot
    assert second.ids[other.penalty_slot, :3].tolist() == [9, 9, -1]  # the other sequence's row is untouched


def test_logprobs_hold_sampled_plus_top_k():
    logits = torch.randn(1, VOCAB)
    out = _sampler()(logits, [_state(SamplingParams(temperature=0, logprobs=3))])
    entry = out.top_logprobs[0]
    reference = logits[0].log_softmax(-1)
    assert set(reference.topk(3).indices.tolist()) <= set(entry) and len(entry) == 3
    for token, value in entry.items():
        assert abs(value - reference[token].item()) < 1e-5


def test_eos_and_stop_tokens_are_never_sampled_before_min_tokens():
    logits = torch.zeros(2, VOCAB)
    logits[:, 7] = 10.0  # EOS would win
    logits[:, 9] = 5.0  # then a stop token
    params = SamplingParams(temperature=0, min_tokens=2, stop_token_ids=[9])
    early = SequenceSamplingState.create(params, [1], 0, eos_token_ids=(7,))
    late = SequenceSamplingState.create(params, [1], 0, eos_token_ids=(7,))
    late.output_token_ids.extend([3, 4])
    out = _sampler()(logits, [early, late])
    assert out.token_ids[0] not in (7, 9)
    assert out.token_ids[1] == 7
    ignoring = SequenceSamplingState.create(SamplingParams(temperature=0, min_tokens=2, ignore_eos=True), [1], 0,
                                            eos_token_ids=(7,))
    assert _sampler()(logits[:1], [ignoring]).token_ids == [7]  # ignore_eos: EOS is an ordinary token


def test_bad_words_ban_a_one_token_word_always_and_a_longer_words_last_token_after_its_prefix():
    logits = torch.zeros(1, VOCAB)
    logits[0, 7] = 10.0  # the greedy choice
    logits[0, 9] = 5.0  # the runner-up
    params = SamplingParams(temperature=0, bad_words=["w"])  # the engine tokenizes; here the ids are given

    def choice(words, output) -> int:
        state = SequenceSamplingState.create(params, [1], 0, bad_words_token_ids=words)
        state.output_token_ids.extend(output)
        return _sampler()(logits, [state]).token_ids[0]

    assert choice([[7]], []) == 9  # one token: banned from the first step on
    assert choice([[4, 7]], [3, 4]) == 9  # the output ends with the word's first token: its last is banned
    assert choice([[4, 7]], [4, 3]) == 7  # it does not: 7 stays allowed
    assert choice([[2, 4, 7]], [4]) == 7  # the output is shorter than the word's prefix
    assert choice([[2, 4, 7]], [1, 2, 4]) == 9
    assert choice([[4, 9], [4, 7]], [4]) == 0  # both words end here: 7 and 9 banned (the rest tie at 0)
