"""Sampler: turns the logits of a step into one token per sampled row.

Order, as in vLLM: the structured output's grammar mask, the logit controls (allowed_token_ids, bad_words, logit_bias, logits processors),
EOS and stop tokens masked while a sequence is below min_tokens, penalties (repetition on prompt +
output, presence and frequency on output; on CUDA batched over a device-side token history that
grows by each step's new tokens, PenaltyHistory), then greedy argmax, or temperature, top-k, top-p, min-p
and a draw. Log-probabilities are those of the raw model distribution (before penalties and
temperature); logprobs_of() gives them for any rows (the prompt's too).

Choosing is one fused pass over the logits (ops.sample_tokens): the greedy argmax, or a Gumbel-max
draw at the row's temperature (after top-k / top-p / min-p have set what they exclude to -inf), and
the chosen token's raw log-probability. The draw's noise is counter-based: a seeded sequence's is a
function of its seed and its number of output tokens, so it gives the same tokens whatever else
shares its batch, and after preemption; unseeded rows take the engine seed's stream.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field

import torch

from pagedcore import ops
from pagedcore.engine.sampling_params import SamplingParams, _processor_arity
from pagedcore.engine.structured_outputs import token_bitmasks, unpack_token_bitmasks


def _takes_prompt(fn) -> bool:
    return _processor_arity(fn) == 3


@dataclass
class SequenceSamplingState:
    """What the sampler needs to know about one sequence; lives as long as the sequence."""

    params: SamplingParams
    prompt_token_ids: list[int]
    output_token_ids: list[int] = field(default_factory=list)
    seed: int | None = None  # the sequence's noise key, set when params.seed is not None
    min_tokens_blocked: tuple[int, ...] = ()  # never sampled before min_tokens: stop ids (+ EOS unless ignored)
    bad_words: tuple[tuple[int, ...], ...] = ()  # SamplingParams.bad_words as token sequences
    matcher: object | None = None  # xgrammar.GrammarMatcher of the structured output, advanced per token
    # Its row in the sampler's device-side PenaltyHistory (CUDA, penalties only), that history, and
    # the output tokens the row holds.
    penalty_slot: int | None = field(default=None, repr=False)
    penalty_owner: object | None = field(default=None, repr=False)
    penalty_len: int = field(default=0, repr=False)

    @classmethod
    def create(cls, params: SamplingParams, prompt_token_ids: list[int], seq_index: int,
               eos_token_ids: tuple[int, ...] = (),
               bad_words_token_ids: list[list[int]] = (), matcher=None) -> SequenceSamplingState:
        blocked = tuple(params.stop_token_ids) + (() if params.ignore_eos else tuple(eos_token_ids))
        # Sibling sequences of one seeded request draw from distinct, reproducible streams.
        seed = None if params.seed is None else (params.seed * 1_000_003 + seq_index) % (1 << 63)
        return cls(params, prompt_token_ids, [], seed, blocked if params.min_tokens > 0 else (),
                   tuple(tuple(word) for word in bad_words_token_ids), matcher)

    def bad_word_bans(self) -> list[int]:
        """Tokens the bad words forbid next (vLLM's rule): a one-token word's token always, a longer
        word's last token when the output so far ends with the word's other tokens."""
        output = self.output_token_ids
        bans = []
        for word in self.bad_words:
            prefix = word[:-1]
            if len(prefix) <= len(output) and tuple(output[len(output) - len(prefix):]) == prefix:
                bans.append(word[-1])
        return bans


@dataclass
class SamplerOutput:
    token_ids: list[int]  # [num_samples]
    logprobs: list[float]  # [num_samples] log-probability of each sampled token
    top_logprobs: list[dict[int, float] | None]  # [num_samples] sampled + top-k, where requested
    ranks: list[dict[int, int] | None]  # [num_samples] the same tokens' ranks (1 = most likely)


class SampledBatch:
    """A step's sampled tokens, on the device, with their copy to the host under way: the next step
    can take its input ids from token_ids before result() waits for the copy."""

    def __init__(self, token_ids: torch.Tensor, sampled_logprobs: torch.Tensor,
                 top_logprobs: list[dict[int, float] | None], ranks: list[dict[int, int] | None]):
        self.token_ids = token_ids  # [num_samples] int64, on the logits' device
        num = token_ids.shape[0]
        both = torch.cat([token_ids.double(), sampled_logprobs.double()])  # token ids are exact in float64
        if both.is_cuda:
            self._host = torch.empty(both.shape, dtype=both.dtype, pin_memory=True)
            self._host.copy_(both, non_blocking=True)
            self._copied = torch.cuda.Event()
            self._copied.record()
        else:
            self._host, self._copied = both, None
        self._num = num
        self._top_logprobs, self._ranks = top_logprobs, ranks

    def result(self) -> SamplerOutput:
        """Waits for the copy (the step's one host sync) and returns the tokens and logprobs."""
        if self._copied is not None:
            self._copied.synchronize()
        both = self._host.tolist()
        num = self._num
        return SamplerOutput([int(t) for t in both[:num]], both[num:], self._top_logprobs, self._ranks)


class PenaltyHistory:
    """The token history of the sequences that use penalties, on the device: one row per sequence
    (its prompt, then its output tokens; -1 past its length), written whole once and then extended
    by the step's new tokens, so that a step's penalties are a few batched kernels over all the
    penalized rows instead of per-row tensors rebuilt from Python lists. A row is freed with its
    sequence's sampling state."""

    def __init__(self, device: torch.device):
        self.device = device
        self.ids = torch.full((0, 0), -1, dtype=torch.long, device=device)  # [slots, capacity]
        self.free: list[int] = []

    def _grow(self, num_slots: int, capacity: int) -> None:
        """Room for num_slots rows of capacity tokens (sizes at least double, so growth is rare)."""
        slots, cap = self.ids.shape
        if num_slots <= slots and capacity <= cap:
            return
        new_slots = slots if num_slots <= slots else max(num_slots, 2 * slots, 8)
        new_cap = cap if capacity <= cap else max(capacity, 2 * cap, 64)
        grown = torch.full((new_slots, new_cap), -1, dtype=torch.long, device=self.device)
        grown[:slots, :cap] = self.ids
        self.free.extend(range(slots, grown.shape[0]))
        self.ids = grown

    def rows(self, states: list[SequenceSamplingState]) -> tuple[torch.Tensor, int]:
        """(the states' rows [R] on the device, the longest history among them), every row brought
        up to date with its state's output tokens (one copy for the new rows, one for the rest)."""
        new, appends = [], []
        for state in states:
            output = state.output_token_ids
            if state.penalty_owner is not self:  # a row of another history (a sampler moved device) is not ours
                state.penalty_slot, state.penalty_owner = None, self
            if state.penalty_slot is None or state.penalty_len > len(output):
                new.append(state)
            else:
                base = len(state.prompt_token_ids)
                appends.extend((state.penalty_slot, base + k, output[k]) for k in range(state.penalty_len, len(output)))
            state.penalty_len = len(output)
        longest = max(len(s.prompt_token_ids) + len(s.output_token_ids) for s in states)
        unplaced = sum(s.penalty_slot is None for s in new)
        self._grow(self.ids.shape[0] + max(unplaced - len(self.free), 0), longest)
        if new:
            for state in new:
                if state.penalty_slot is None:
                    state.penalty_slot = self.free.pop()
                    weakref.finalize(state, self.free.append, state.penalty_slot)
            host = torch.full((len(new), self.ids.shape[1]), -1, dtype=torch.long)  # whole rows: a reused slot's old ids go
            for i, state in enumerate(new):
                history = state.prompt_token_ids + state.output_token_ids
                host[i, :len(history)] = torch.tensor(history, dtype=torch.long)
            slots = _host_tensor([s.penalty_slot for s in new], torch.long, self.device)
            self.ids[slots] = host.pin_memory().to(self.device, non_blocking=True) if self.device.type == "cuda" else host
        if appends:
            slot, position, token = _host_tensor(appends, torch.long, self.device).unbind(1)
            self.ids[slot, position] = token
        return _host_tensor([s.penalty_slot for s in states], torch.long, self.device), longest


class Sampler:
    def __init__(self, vocab_size: int, generator: torch.Generator):
        self.vocab_size = vocab_size
        self.penalty_history: PenaltyHistory | None = None  # CUDA: the penalized rows' histories
        self.key = generator.initial_seed() % (1 << 63)  # the noise key of rows of requests without a seed
        self.num_draws = 0  # calls that drew unseeded rows: their noise offset

    def __call__(self, logits: torch.Tensor, states: list[SequenceSamplingState]) -> SamplerOutput:
        """logits: [num_samples, >= vocab_size] (padded vocab columns are dropped); one state per row."""
        return self.sample(logits, states).result()

    @torch.inference_mode()
    def sample(self, logits: torch.Tensor, states: list[SequenceSamplingState]) -> SampledBatch:
        """As __call__, but the tokens stay on the device, their read-back started, not waited for
        (requests with logprobs still read their top-k entries back here)."""
        logits = logits[:, : self.vocab_size].float()
        grammar_rows = [i for i, s in enumerate(states) if s.matcher is not None and not s.matcher.is_terminated()]
        masks = None
        if any(states[i].params.uses_logit_controls or (not states[i].params.is_greedy and self._filters(states[i].params))
               for i in grammar_rows):
            # Logits processors and top-k / top-p / min-p see the grammar's mask already applied
            # (vLLM's order: top-p's mass is that of the allowed tokens).
            logits_in = self._apply_grammars(logits, states, grammar_rows)
        else:  # the choice applies the masks in its pass
            logits_in, masks = logits, self._grammar_masks(states, grammar_rows, logits.device)
        controlled = self._apply_logit_controls(logits_in, states)
        processed = self._apply_penalties(self._mask_before_min_tokens(controlled, states), states)
        token_ids, sampled_logprobs = self._choose(processed, logits, states, masks)  # [num_samples] each
        rows = [row for row, s in enumerate(states) if s.params.logprobs is not None]
        top_logprobs: list[dict[int, float] | None] = [None] * len(states)
        ranks: list[dict[int, int] | None] = [None] * len(states)
        if rows:
            index = _host_tensor(rows, torch.long, logits.device)
            entries, entry_ranks = self.logprobs_of(logits[index], token_ids[index],
                                                    [states[row].params.logprobs for row in rows])
            for row, entry, rank in zip(rows, entries, entry_ranks):
                top_logprobs[row], ranks[row] = entry, rank
        return SampledBatch(token_ids, sampled_logprobs, top_logprobs, ranks)

    def _grammar_masks(self, states: list[SequenceSamplingState], rows: list[int], device: torch.device,
                       ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The grammars' allowed tokens for the fused choice: (packed masks int32 [len(rows), words],
        mask index per sampled row int32, -1 = none), filled on the host (while the forward pass
        runs) and copied packed, without a host sync. A finished grammar (its sequence ends at this
        step's commit) masks nothing: that token is dropped."""
        if not rows:
            return None
        packed = token_bitmasks([states[i].matcher for i in rows], self.vocab_size, pin=device.type == "cuda")
        index = [-1] * len(states)
        for mask, row in enumerate(rows):
            index[row] = mask
        return packed.to(device, non_blocking=True), _host_tensor(index, torch.int32, device)

    def _apply_grammars(self, logits: torch.Tensor, states: list[SequenceSamplingState], rows: list[int],
                        ) -> torch.Tensor:
        """-inf on every token a grammar does not allow next, in a copy of the logits (for requests
        whose logits processors must see the mask)."""
        if not rows:
            return logits
        packed = token_bitmasks([states[i].matcher for i in rows], self.vocab_size, pin=logits.is_cuda)
        allowed = unpack_token_bitmasks(packed.to(logits.device, non_blocking=True), self.vocab_size)
        index = _host_tensor(rows, torch.long, logits.device)
        logits = logits.clone()
        logits[index] = logits[index].masked_fill(~allowed, float("-inf"))
        return logits

    def _apply_logit_controls(self, logits: torch.Tensor, states: list[SequenceSamplingState]) -> torch.Tensor:
        """allowed_token_ids (everything else -inf), bad words (-inf), logit_bias, then the request's
        logits processors."""
        rows = [i for i, s in enumerate(states) if s.params.uses_logit_controls]
        if not rows:
            return logits
        logits = logits.clone()
        for row in rows:
            params, state = states[row].params, states[row]
            if params.allowed_token_ids is not None:
                keep = torch.full_like(logits[row], float("-inf"))
                allowed = torch.tensor(params.allowed_token_ids, dtype=torch.long, device=logits.device)
                keep[allowed] = 0.0
                logits[row] += keep
            bans = state.bad_word_bans()
            if bans:
                logits[row, bans] = float("-inf")
            if params.logit_bias:
                ids = torch.tensor(list(params.logit_bias), dtype=torch.long, device=logits.device)
                logits[row, ids] += torch.tensor(list(params.logit_bias.values()), device=logits.device)
            for fn in params.logits_processors or ():
                args = ((state.prompt_token_ids, state.output_token_ids) if _takes_prompt(fn)
                        else (state.output_token_ids,))
                result = fn(*(tuple(a) for a in args), logits[row].clone())
                if not isinstance(result, torch.Tensor) or result.shape != logits[row].shape:
                    raise ValueError(f"a logits processor must return a tensor of shape "
                                     f"{tuple(logits[row].shape)}, got {getattr(result, 'shape', type(result))}")
                logits[row] = result.to(logits.dtype)
        return logits

    def _mask_before_min_tokens(self, logits: torch.Tensor, states: list[SequenceSamplingState]) -> torch.Tensor:
        """logits [num_samples, vocab]: -inf on EOS / stop tokens of rows still below min_tokens."""
        rows = [i for i, s in enumerate(states)
                if s.min_tokens_blocked and len(s.output_token_ids) < s.params.min_tokens]
        if not rows:
            return logits
        logits = logits.clone()
        for row in rows:
            blocked = [t for t in states[row].min_tokens_blocked if t < self.vocab_size]
            logits[row, blocked] = float("-inf")
        return logits

    def _apply_penalties(self, logits: torch.Tensor, states: list[SequenceSamplingState]) -> torch.Tensor:
        rows = [i for i, s in enumerate(states) if s.params.uses_penalties]
        if not rows:
            return logits
        if logits.is_cuda:
            return self._apply_penalties_batched(logits, states, rows)
        # CPU: per row over its own tokens (the batched form's [rows, vocab] passes cost more there:
        # bench/RESULTS.md, "dense device-side penalty state").
        return self._apply_penalties_per_row(logits, states, rows)

    def _apply_penalties_per_row(self, logits: torch.Tensor, states: list[SequenceSamplingState],
                                 rows: list[int]) -> torch.Tensor:
        logits = logits.clone()
        device = logits.device
        for row in rows:
            params = states[row].params
            output_ids = torch.tensor(states[row].output_token_ids, dtype=torch.long, device=device)
            counts = torch.zeros(self.vocab_size, device=device)  # [vocab]
            counts.scatter_add_(0, output_ids, torch.ones_like(output_ids, dtype=counts.dtype))
            row_logits = logits[row]  # [vocab] view
            if params.repetition_penalty != 1.0:
                seen = torch.tensor(states[row].prompt_token_ids, dtype=torch.long, device=device)
                seen = torch.cat([seen, output_ids]).unique()
                values = row_logits[seen]
                row_logits[seen] = torch.where(values > 0, values / params.repetition_penalty,
                                               values * params.repetition_penalty)
            row_logits -= params.frequency_penalty * counts
            row_logits -= params.presence_penalty * (counts > 0).to(counts.dtype)
        return logits

    def _apply_penalties_batched(self, logits: torch.Tensor, states: list[SequenceSamplingState],
                                 rows: list[int]) -> torch.Tensor:
        """The penalties of `rows` in a few kernels over all of them, from the device-side token
        histories (PenaltyHistory): the same arithmetic as the per-row form, so the same values."""
        if self.penalty_history is None or self.penalty_history.device != logits.device:
            self.penalty_history = PenaltyHistory(logits.device)
        penalized = [states[i] for i in rows]
        slots, longest = self.penalty_history.rows(penalized)
        vocab, device = self.vocab_size, logits.device
        ids = self.penalty_history.ids[slots, :longest]  # [R, L], -1 past each row's history
        settings = _host_tensor([[s.params.repetition_penalty, s.params.frequency_penalty, s.params.presence_penalty,
                                  len(s.prompt_token_ids)] for s in penalized], torch.float32, device)
        repetition, frequency, presence, prompt_len = settings.unbind(1)
        in_vocab = (ids >= 0) & (ids < vocab)
        is_output = in_vocab & (torch.arange(longest, device=device)[None, :] >= prompt_len[:, None])
        pad = torch.full_like(ids, vocab)  # a column past the vocabulary takes the padding
        seen = torch.zeros(len(rows), vocab + 1, dtype=torch.bool, device=device)
        seen.scatter_(1, torch.where(in_vocab, ids, pad), True)
        counts = torch.zeros(len(rows), vocab + 1, device=device)
        counts.scatter_add_(1, torch.where(is_output, ids, pad), torch.ones_like(ids, dtype=counts.dtype))
        seen, counts = seen[:, :vocab], counts[:, :vocab]
        index = _host_tensor(rows, torch.long, device)
        sub = logits[index]  # [R, vocab] copy
        repetition = repetition[:, None]
        sub = torch.where(seen, torch.where(sub > 0, sub / repetition, sub * repetition), sub)
        sub -= frequency[:, None] * counts
        sub -= presence[:, None] * (counts > 0).to(counts.dtype)
        logits = logits.clone()
        logits[index] = sub
        return logits

    def _choose(self, scores: torch.Tensor, raw: torch.Tensor, states: list[SequenceSamplingState],
                masks: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """scores (processed logits), raw: [num_samples, vocab] -> (token ids int64, their raw
        log-probabilities float32), in one fused pass. Which rows draw, with which settings and noise,
        is known on the host: the only device data read back is the caller's token ids."""
        if not states:
            return (torch.empty(0, dtype=torch.int64, device=scores.device),
                    torch.empty(0, dtype=torch.float32, device=scores.device))
        inv_temperature = [0.0 if s.params.is_greedy else 1.0 / s.params.temperature for s in states]
        filtered = [i for i, s in enumerate(states) if not s.params.is_greedy and self._filters(s.params)]
        if filtered:
            index = _host_tensor(filtered, torch.long, scores.device)
            scores = scores.clone()
            scores[index] = self._filtered_logits(scores[index], [states[i].params for i in filtered])
            for i in filtered:
                inv_temperature[i] = 1.0  # _filtered_logits divided by the temperature
        noise = []
        drew_unseeded = False
        for row, state in enumerate(states):
            if state.seed is not None:
                noise.append((state.seed, 0, len(state.output_token_ids)))
            else:
                noise.append((self.key, row, self.num_draws))
                drew_unseeded |= not state.params.is_greedy
        self.num_draws += drew_unseeded
        device = scores.device
        allowed, allowed_rows = masks if masks is not None else (None, None)
        return ops.sample_tokens(scores, _host_tensor(inv_temperature, torch.float32, device),
                                 _host_tensor(noise, torch.int64, device), self.vocab_size, raw=raw,
                                 allowed=allowed, allowed_rows=allowed_rows)

    def _filters(self, params: SamplingParams) -> bool:
        return 0 < params.top_k < self.vocab_size or params.top_p < 1.0 or params.min_p > 0.0

    @staticmethod
    def _filtered_logits(logits: torch.Tensor, params: list[SamplingParams]) -> torch.Tensor:
        """logits: [rows, vocab] -> logits / temperature with what top-k, top-p and min-p exclude at
        -inf. The settings reach the device in one non-blocking copy; which filters run is decided
        on the host."""
        device, vocab = logits.device, logits.shape[1]
        top_k = [min(p.top_k, vocab) if p.top_k > 0 else vocab for p in params]
        settings = _host_tensor([[p.temperature, p.top_p, p.min_p, k - 1] for p, k in zip(params, top_k)],
                                torch.float32, device)  # [rows, 4]
        logits = logits / settings[:, 0:1]
        if any(k < vocab for k in top_k):
            top_values = logits.topk(max(top_k), dim=-1).values  # [rows, max_k], descending
            kth = top_values.gather(1, settings[:, 3:4].long())  # [rows, 1] each row's k-th largest
            logits = logits.masked_fill(logits < kth, float("-inf"))
        if any(p.top_p < 1.0 for p in params):
            sorted_logits, order = logits.sort(dim=-1, descending=True)
            sorted_probs = sorted_logits.softmax(dim=-1)
            mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs  # keeps at least the top token
            sorted_logits = sorted_logits.masked_fill(mass_before > settings[:, 1:2], float("-inf"))
            logits = torch.full_like(logits, float("-inf")).scatter(1, order, sorted_logits)
        if any(p.min_p > 0.0 for p in params):
            # p < min_p * p_max  <=>  logit < max logit + log(min_p) (min_p 0: log 0 = -inf keeps all)
            threshold = logits.max(dim=-1, keepdim=True).values + settings[:, 2:3].log()
            logits = logits.masked_fill(logits < threshold, float("-inf"))
        return logits

    @torch.inference_mode()
    def logprobs_of(self, logits: torch.Tensor, token_ids: torch.Tensor, num_top: list[int],
                    ) -> tuple[list[dict[int, float]], list[dict[int, int]]]:
        """logits [rows, >= vocab] (raw), token_ids [rows], num_top [rows] -> per row {token: logprob}
        and {token: rank} (1 = most likely) for the row's token and its top num_top tokens."""
        logits = logits[:, : self.vocab_size].float()
        log_probs = logits - torch.logsumexp(logits, dim=-1, keepdim=True)  # [rows, vocab]
        token_ids = token_ids.to(logits.device).long()
        chosen = log_probs.gather(1, token_ids[:, None])[:, 0]  # [rows]
        rank_of_chosen = (logits > logits.gather(1, token_ids[:, None])).sum(dim=-1) + 1  # [rows]
        top_values, top_ids = log_probs.topk(max(num_top, default=0), dim=-1)  # [rows, max_k]
        entries, ranks = [], []
        for token, value, rank, k, tops, top_values_row in zip(
                token_ids.tolist(), chosen.tolist(), rank_of_chosen.tolist(), num_top, top_ids.tolist(),
                top_values.tolist()):
            entry, entry_rank = {token: value}, {token: rank}
            for position, (top, top_value) in enumerate(zip(tops[:k], top_values_row[:k])):
                entry.setdefault(top, top_value)
                entry_rank.setdefault(top, position + 1)
            entries.append(entry)
            ranks.append(entry_rank)
        return entries, ranks


def _host_tensor(values: list, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A small tensor of host values on `device`, copied from pinned memory without a host sync."""
    if device.type != "cuda":
        return torch.tensor(values, dtype=dtype)
    return torch.tensor(values, dtype=dtype).pin_memory().to(device, non_blocking=True)
