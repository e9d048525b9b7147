"""Python-side state of a request and its sequences: what the sampler and the detokenizer carry
across steps (and across preemptions, which the scheduler handles by recompute), the prompt's
log-probabilities as its rows are computed, and the output being built."""

from __future__ import annotations

from dataclasses import dataclass, field


from pagedcore.tokenizers.detokenizer import IncrementalDetokenizer
from pagedcore.engine.outputs import CompletionOutput, Logprob, RequestMetrics, RequestOutput, TokenLogprobs
from pagedcore.model_executor.sampler import SequenceSamplingState
from pagedcore.engine.sampling_params import SamplingParams
from pagedcore.tokenizers.tokenizer import Tokenizer


@dataclass
class SequenceState:
    index: int
    sampling: SequenceSamplingState
    detokenizer: IncrementalDetokenizer | None  # None when the engine has no tokenizer
    text: str = ""
    cumulative_logprob: float = 0.0
    logprobs: list[dict[int, float]] | None = None  # per generated token: sampled + top-k -> logprob
    logprob_ranks: list[dict[int, int]] | None = None  # the same tokens' ranks
    finish_reason: str | None = None
    stop_reason: int | str | None = None

    @property
    def token_ids(self) -> list[int]:
        return self.sampling.output_token_ids

    def to_output(self) -> CompletionOutput:
        logprobs = None
        if self.logprobs is not None:
            tokenizer = self.detokenizer.tokenizer if self.detokenizer is not None else None
            logprobs = as_logprobs(self.logprobs, self.logprob_ranks, tokenizer)
        return CompletionOutput(self.index, self.text, list(self.token_ids), self.cumulative_logprob,
                                logprobs, self.finish_reason, self.stop_reason)


def as_logprobs(entries: list[dict[int, float] | None], ranks: list[dict[int, int] | None],
                tokenizer: Tokenizer | None) -> list[TokenLogprobs | None]:
    """Per position {token: logprob} and {token: rank} -> {token: Logprob} (None stays None)."""
    decode = (lambda t: tokenizer.decode([t], skip_special_tokens=False)) if tokenizer else (lambda t: None)
    return [None if entry is None else
            {token: Logprob(value, rank.get(token), decode(token)) for token, value in entry.items()}
            for entry, rank in zip(entries, ranks)]


@dataclass
class RequestState:
    request_id: int
    prompt: str | None
    prompt_token_ids: list[int]
    params: SamplingParams
    sequences: list[SequenceState]
    metrics: RequestMetrics
    tokenizer: Tokenizer | None = None  # decodes the prompt logprobs' tokens (None with detokenize=False)
    num_cached_tokens: int = 0
    # The scheduler requests its n sequences run as (several when n > max_num_seqs), in sequence order.
    native_request_ids: list[int] = field(default_factory=list)
    # SamplingParams.prompt_logprobs: per prompt position {token: logprob} / {token: rank} of the prompt
    # token and the top-k, filled as the prompt's rows are computed; position 0 stays None.
    prompt_logprobs: list[dict[int, float] | None] | None = None
    prompt_logprob_ranks: list[dict[int, int] | None] | None = None
    num_missing_prompt_logprobs: int = 0
    max_stop_len: int = field(init=False)

    def __post_init__(self) -> None:
        self.max_stop_len = max((len(s) for s in self.params.stop_strings), default=0)
        if self.params.prompt_logprobs is not None and self.prompt_logprobs is None:
            self.prompt_logprobs = [None] * len(self.prompt_token_ids)
            self.prompt_logprob_ranks = [None] * len(self.prompt_token_ids)
            self.num_missing_prompt_logprobs = len(self.prompt_token_ids) - 1

    @classmethod
    def create(cls, request_id: int, prompt: str | None, prompt_token_ids: list[int], params: SamplingParams,
               tokenizer: Tokenizer | None, arrival_time: float,
               eos_token_ids: tuple[int, ...] = (), bad_words_token_ids: list[list[int]] = (),
               grammar=None) -> RequestState:
        """grammar: the compiled structured output (xgrammar.CompiledGrammar); each sequence gets a matcher."""
        sequences = []
        for index in range(params.n):
            matcher = None
            if grammar is not None:
                import xgrammar

                matcher = xgrammar.GrammarMatcher(grammar)
            sampling = SequenceSamplingState.create(params, prompt_token_ids, index, eos_token_ids,
                                                    bad_words_token_ids, matcher)
            detokenizer = None if tokenizer is None or not params.detokenize else IncrementalDetokenizer(
                tokenizer, prompt_token_ids, params.skip_special_tokens)
            wants = params.logprobs is not None
            sequences.append(SequenceState(index, sampling, detokenizer, logprobs=[] if wants else None,
                                           logprob_ranks=[] if wants else None))
        return cls(request_id, prompt, prompt_token_ids, params, sequences, RequestMetrics(arrival_time),
                   tokenizer if params.detokenize else None)

    @property
    def finished(self) -> bool:
        return all(s.finish_reason is not None for s in self.sequences)

    def needs_prompt_logprob(self, position: int) -> bool:
        """Whether the logits of prompt position `position` are still wanted (they score the next token)."""
        return (self.num_missing_prompt_logprobs > 0 and position + 1 < len(self.prompt_token_ids)
                and self.prompt_logprobs[position + 1] is None)

    def record_prompt_logprob(self, position: int, entry: dict[int, float], ranks: dict[int, int]) -> None:
        """The logprobs that the logits of prompt position `position` give prompt token position + 1."""
        assert self.needs_prompt_logprob(position), position
        self.prompt_logprobs[position + 1] = entry
        self.prompt_logprob_ranks[position + 1] = ranks
        self.num_missing_prompt_logprobs -= 1

    def prompt_logprobs_output(self) -> list[TokenLogprobs | None] | None:
        """vLLM's RequestOutput.prompt_logprobs: None for the first prompt token, then one dict per token."""
        if self.prompt_logprobs is None:
            return None
        return as_logprobs(self.prompt_logprobs, self.prompt_logprob_ranks, self.tokenizer)

    def to_output(self) -> RequestOutput:
        return RequestOutput(str(self.request_id), self.prompt, self.prompt_token_ids,
                             [s.to_output() for s in self.sequences], self.finished,
                             self.num_cached_tokens, self.metrics, prompt_logprobs=self.prompt_logprobs_output())
