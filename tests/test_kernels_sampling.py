"""The fused sampling pass (ops.sample_tokens) against float64 references: greedy rows give the first
argmax, drawn rows the argmax of scores * inv_temperature plus Gumbel noise from a numpy Philox4x32-10
written here from the paper's constants (so the noise itself is checked), the logprob is the raw
logits' log-softmax at the token; the draws follow softmax(scores * inv_temperature); a row's noise
depends on its (key, salt, offset) only. Hostile shapes: vocabularies not a multiple of 4, padded
strides, masked (-inf) entries, a separate raw tensor, one-entry vocabularies, no rows."""

import numpy as np
import pytest
import torch

import pagedcore
from pagedcore import ops

HAS_CUDA = torch.cuda.is_available() and pagedcore.built_with_cuda()
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device and a CUDA build of pagedcore")
DEVICES = [pytest.param("cpu", id="cpu"), pytest.param("cuda", id="cuda", marks=[needs_cuda, pytest.mark.gpu])]
M32 = np.uint64(0xFFFFFFFF)


def philox(counter: np.ndarray, key: tuple[int, int]) -> np.ndarray:
    """Philox4x32-10 of counters uint64 [n, 4] (32-bit values) under key (k0, k1) -> uint64 [n, 4]."""
    c = [counter[:, i].astype(np.uint64) for i in range(4)]
    k0, k1 = np.uint64(key[0]), np.uint64(key[1])
    for _ in range(10):
        p0 = np.uint64(0xD2511F53) * c[0]
        p1 = np.uint64(0xCD9E8D57) * c[2]
        c = [(p1 >> np.uint64(32)) ^ c[1] ^ k0, p1 & M32, (p0 >> np.uint64(32)) ^ c[3] ^ k1, p0 & M32]
        k0, k1 = (k0 + np.uint64(0x9E3779B9)) & M32, (k1 + np.uint64(0xBB67AE85)) & M32
    return np.stack(c, axis=1)


def gumbel(key: int, salt: int, offset: int, vocab: int) -> np.ndarray:
    groups = np.arange((vocab + 3) // 4, dtype=np.uint64)
    counter = np.stack([groups, np.full_like(groups, salt & 0xFFFFFFFF), np.full_like(groups, offset & 0xFFFFFFFF),
                        np.full_like(groups, (offset >> 32) & 0xFFFFFFFF)], axis=1)
    bits = philox(counter, (key & 0xFFFFFFFF, (key >> 32) & 0xFFFFFFFF)).reshape(-1)[:vocab]
    u = ((bits >> np.uint64(9)).astype(np.float32) + np.float32(0.5)) * np.float32(1 / 8388608)  # as the kernel
    assert (u < 1).all() and (u > 0).all()
    return -np.log(-np.log(u.astype(np.float64)))


def reference(scores, raw, inv_temperature, noise, vocab):
    """float64 (tokens, logprobs, gap between the best two choices) per row."""
    tokens, logprobs, gaps = [], [], []
    for r in range(scores.shape[0]):
        s = scores[r, :vocab].double().numpy()
        if inv_temperature[r] != 0:
            key, salt, offset = (int(v) for v in noise[r])
            s = s * float(inv_temperature[r]) + gumbel(key, salt, offset, vocab)
        token = int(np.argmax(s))
        finite = np.sort(s[np.isfinite(s)])
        gaps.append(finite[-1] - finite[-2] if finite.size > 1 else np.inf)
        x = raw[r, :vocab].double()
        tokens.append(token)
        logprobs.append(float(x[token] - torch.logsumexp(x, 0)))
    return tokens, logprobs, gaps


def test_philox_matches_the_published_known_answers():
    """Random123's known-answer vectors for Philox4x32-10."""
    zero = philox(np.zeros((1, 4), dtype=np.uint64), (0, 0))[0]
    assert [int(v) for v in zero] == [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]
    ones = philox(np.full((1, 4), 0xFFFFFFFF, dtype=np.uint64), (0xFFFFFFFF, 0xFFFFFFFF))[0]
    assert [int(v) for v in ones] == [0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("vocab,stride", [(1, 1), (7, 7), (1000, 1003), (4099, 4104), (151936, 151936)])
def test_tokens_and_logprobs_match_the_float64_reference(device, vocab, stride):
    generator = torch.Generator().manual_seed(vocab)
    rows = 6
    raw = torch.randn(rows, stride, generator=generator) * 4
    scores = raw.clone()
    scores[1, ::3] = float("-inf")  # masked entries (a grammar, top-k) are never chosen
    if vocab > 1:
        scores[1, 1] = 0.0  # ...but a row always keeps one
    inv_temperature = torch.tensor([0.0, 1.0, 1 / 0.6, 0.0, 2.0, 1 / 0.3])
    noise = torch.tensor([[0, 0, 0], [12345, 3, 9], [(1 << 62) + 5, 0, 1 << 40], [7, 7, 7], [1, 2, 3], [99, 0, 0]])
    tokens, logprobs = ops.sample_tokens(scores.to(device), inv_temperature.to(device), noise.to(device), vocab,
                                         raw=raw.to(device))
    want_tokens, want_logprobs, gaps = reference(scores, raw, inv_temperature, noise, vocab)
    for r in range(rows):
        if gaps[r] > 1e-4:  # a float32 near-tie may go either way
            assert int(tokens[r]) == want_tokens[r], r
    torch.testing.assert_close(logprobs.cpu().double(), torch.tensor(want_logprobs, dtype=torch.float64),
                               atol=2e-5, rtol=1e-5)
    if vocab > 1:
        assert scores[1, int(tokens[1])] > float("-inf")
    # scores alone: the logprob is taken under the scores themselves
    alone, alone_logprobs = ops.sample_tokens(raw.to(device), inv_temperature.to(device), noise.to(device), vocab)
    want_tokens, want_logprobs, gaps = reference(raw, raw, inv_temperature, noise, vocab)
    assert [int(t) for t, g in zip(alone, gaps) if g > 1e-4] == [t for t, g in zip(want_tokens, gaps) if g > 1e-4]


@pytest.mark.parametrize("device", DEVICES)
def test_greedy_ties_go_to_the_first_id_as_torch_argmax(device):
    scores = torch.zeros(3, 37)
    scores[0, [5, 9, 30]] = 2.0
    scores[2] = float("-inf")
    tokens, _ = ops.sample_tokens(scores.to(device), torch.zeros(3, device=device),
                                  torch.zeros(3, 3, dtype=torch.int64, device=device), 37)
    assert tokens.tolist() == [5, 0, 0] == scores.argmax(dim=-1).tolist()


@pytest.mark.parametrize("device", DEVICES)
def test_greedy_ignores_nan_scores(device):
    # The CPU's greedy rows take a vectorized scan (max, then the first id holding it): NaN scores are
    # never chosen, an all-NaN row gives id 0, and a row under a token mask still chooses among its ids.
    nan = float("nan")
    scores = torch.tensor([[nan, 1.0, 3.0, nan, 3.0], [nan] * 5, [0.0, 5.0, 1.0, 2.0, nan]])
    tokens, _ = ops.sample_tokens(scores.to(device), torch.zeros(3, device=device),
                                  torch.zeros(3, 3, dtype=torch.int64, device=device), 5)
    assert tokens.tolist() == [2, 0, 1]
    allowed = torch.tensor([[0b01101]], dtype=torch.int32)  # ids 0, 2, 3
    masked, _ = ops.sample_tokens(scores[2:].to(device), torch.zeros(1, device=device),
                                  torch.zeros(1, 3, dtype=torch.int64, device=device), 5,
                                  allowed=allowed.to(device), allowed_rows=torch.zeros(1, dtype=torch.int32, device=device))
    assert masked.tolist() == [3]


@pytest.mark.parametrize("device", DEVICES)
def test_draws_follow_the_softmax_at_the_rows_temperature(device):
    logits = torch.tensor([1.0, 0.0, -1.0, 2.0, float("-inf"), 0.5])
    temperature = 0.7
    draws = 20000
    scores = logits.repeat(draws, 1)
    noise = torch.stack([torch.full((draws,), 42), torch.zeros(draws, dtype=torch.int64), torch.arange(draws)], dim=1)
    tokens, _ = ops.sample_tokens(scores.to(device), torch.full((draws,), 1 / temperature, device=device),
                                  noise.to(device), 6)
    counts = torch.bincount(tokens.cpu(), minlength=6).double()
    p = (logits / temperature).softmax(0).double()
    sigma = (draws * p * (1 - p)).sqrt()
    assert counts[4] == 0
    assert ((counts - draws * p).abs() <= 4 * sigma + 1).all(), (counts, draws * p)


@pytest.mark.parametrize("device", DEVICES)
def test_a_rows_draw_depends_on_its_noise_triple_only(device):
    """The same (key, salt, offset) and logits give the same token in any row of any batch; another
    offset gives an independent draw."""
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(1, 3000, generator=generator)
    triple = torch.tensor([[2024, 1, 17]])
    alone, _ = ops.sample_tokens(logits.to(device), torch.ones(1, device=device), triple.to(device), 3000)
    batch = torch.randn(9, 3000, generator=generator)
    batch[4] = logits[0]
    noise = torch.randint(0, 1 << 40, (9, 3), generator=generator)
    noise[4] = triple[0]
    together, _ = ops.sample_tokens(batch.to(device), torch.ones(9, device=device), noise.to(device), 3000)
    assert int(together[4]) == int(alone[0])
    offsets = torch.tensor([[2024, 1, k] for k in range(64)])
    spread, _ = ops.sample_tokens(logits.repeat(64, 1).to(device), torch.ones(64, device=device), offsets.to(device),
                                  3000)
    assert len(set(spread.tolist())) > 20  # a flat-ish distribution over 3000 ids: many distinct draws


@needs_cuda
@pytest.mark.gpu
def test_cuda_draws_the_cpus_tokens():
    generator = torch.Generator().manual_seed(3)
    scores = torch.randn(64, 151936, generator=generator) * 3
    inv_temperature = torch.rand(64, generator=generator) * 2
    inv_temperature[::5] = 0
    noise = torch.randint(0, 1 << 62, (64, 3), generator=generator)
    cpu_tokens, cpu_logprobs = ops.sample_tokens(scores, inv_temperature, noise, 151936)
    cuda_tokens, cuda_logprobs = ops.sample_tokens(scores.cuda(), inv_temperature.cuda(), noise.cuda(), 151936)
    assert (cuda_tokens.cpu() == cpu_tokens).float().mean() >= 62 / 64  # logf's last ulp may flip a near-tie
    torch.testing.assert_close(cuda_logprobs.cpu(), cpu_logprobs, atol=1e-4, rtol=1e-5)


def test_bad_arguments_are_refused_by_name():
    scores = torch.zeros(2, 10)
    with pytest.raises(ValueError, match="noise must be a contiguous int64"):
        ops.sample_tokens(scores, torch.zeros(2), torch.zeros(2, 2, dtype=torch.int64), 10)
    with pytest.raises(ValueError, match=r"scores must be float32 \[rows, >= 11\]"):
        ops.sample_tokens(scores, torch.zeros(2), torch.zeros(2, 3, dtype=torch.int64), 11)
    with pytest.raises(ValueError, match="inv_temperature must be a contiguous float32"):
        ops.sample_tokens(scores, torch.zeros(3), torch.zeros(2, 3, dtype=torch.int64), 10)
    tokens, logprobs = ops.sample_tokens(torch.zeros(0, 10), torch.zeros(0), torch.zeros(0, 3, dtype=torch.int64), 10)
    assert tokens.shape == (0,) and logprobs.shape == (0,)


@pytest.mark.parametrize("device", DEVICES)
def test_allowed_masks_restrict_the_choice_but_not_the_logprob(device):
    """Packed masks (a grammar's): a masked row chooses only allowed ids, greedy or drawn, with the
    logprob still under the raw logits; rows without a mask (-1) are untouched."""
    generator = torch.Generator().manual_seed(11)
    vocab = 1000
    raw = torch.randn(4, vocab, generator=generator) * 3
    allowed_ids = [torch.tensor([3, 500, 999]), torch.arange(40, 1000, 37)]
    masks = torch.zeros(2, (vocab + 31) // 32 + 2, dtype=torch.int32)  # wider than needed
    for m, ids in enumerate(allowed_ids):
        for v in ids.tolist():
            masks[m, v // 32] |= torch.tensor(1 << (v % 32), dtype=torch.int64).to(torch.int32)
    allowed_rows = torch.tensor([0, -1, 1, 0], dtype=torch.int32)
    inv_temperature = torch.tensor([0.0, 0.0, 1.0, 1.0])
    noise = torch.tensor([[1, 0, 0], [2, 1, 0], [3, 2, 0], [4, 3, 0]])
    tokens, logprobs = ops.sample_tokens(raw.to(device), inv_temperature.to(device), noise.to(device), vocab,
                                         allowed=masks.to(device), allowed_rows=allowed_rows.to(device))
    scores = raw.clone()
    for r, m in enumerate(allowed_rows.tolist()):
        if m >= 0:
            keep = torch.full((vocab,), float("-inf"))
            keep[allowed_ids[m]] = 0.0
            scores[r] += keep
    want_tokens, want_logprobs, _ = reference(scores, raw, inv_temperature, noise, vocab)
    assert tokens.tolist() == want_tokens
    assert int(tokens[0]) in allowed_ids[0].tolist() and int(tokens[2]) in allowed_ids[1].tolist()
    torch.testing.assert_close(logprobs.cpu().double(), torch.tensor(want_logprobs, dtype=torch.float64),
                               atol=2e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="allowed and allowed_rows go together"):
        ops.sample_tokens(raw, inv_temperature, noise, vocab, allowed=masks)
    with pytest.raises(ValueError, match=r"allowed must be int32 \[masks, >= 32\]"):
        ops.sample_tokens(raw, inv_temperature, noise, vocab, allowed=masks[:, :5], allowed_rows=allowed_rows)


@pytest.mark.parametrize("device", DEVICES)
def test_a_near_certain_token_is_always_drawn(device):
    """Noise never infinite: with one logit 40 above all others over a 151,936-token vocabulary, every
    draw is that token. (Uniforms that could round to 1 once gave infinite noise to ~1 in 110 draws,
    e.g. key 42 at offsets 69 and 152, which then chose a random token.)"""
    vocab, draws = 151936, 256
    logits = torch.full((1, vocab), -20.0)
    logits[0, 5] = 20.0
    noise = torch.stack([torch.full((draws,), 42), torch.zeros(draws, dtype=torch.int64), torch.arange(draws)], dim=1)
    tokens, logprobs = ops.sample_tokens(logits.repeat(draws, 1).to(device), torch.ones(draws, device=device),
                                         noise.to(device), vocab)
    assert (tokens == 5).all(), tokens[tokens != 5][:5]
    assert logprobs.abs().max() < 1e-4


@pytest.mark.parametrize("device", DEVICES)
def test_a_row_whose_allowed_tokens_are_all_minus_infinity_takes_the_first_allowed(device):
    """CPU and CUDA alike: among allowed ids whose scores are all -inf, the first (a grammar that
    allows only EOS while min_tokens masks it)."""
    scores = torch.full((1, 64), float("-inf"))
    mask = torch.zeros(1, 2, dtype=torch.int32)
    mask[0, 1] = 1 << 3  # only id 35
    for inv_temperature in (0.0, 1.0):
        tokens, _ = ops.sample_tokens(scores.to(device), torch.tensor([inv_temperature], device=device),
                                      torch.zeros(1, 3, dtype=torch.int64, device=device), 64, raw=torch.zeros(1, 64).to(device),
                                      allowed=mask.to(device), allowed_rows=torch.zeros(1, dtype=torch.int32, device=device))
        assert int(tokens[0]) == 35
