"""Python-side state of a request and its sequences: what the sampler and the detokenizer carry
across steps (and across preemptions, which the scheduler handles by recompute), and the output
being built."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from pagedcore.tokenizers.detokenizer import IncrementalDetokenizer
from pagedcore.engine.outputs import CompletionOutput, Logprob, RequestMetrics, RequestOutput
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
            decode = (lambda t: tokenizer.decode([t], skip_special_tokens=False)) if tokenizer else (lambda t: None)
            logprobs = [{token: Logprob(value, ranks.get(token), decode(token)) for token, value in entry.items()}
                        for entry, ranks in zip(self.logprobs, self.logprob_ranks)]
        return CompletionOutput(self.index, self.text, list(self.token_ids), self.cumulative_logprob,
                                logprobs, self.finish_reason, self.stop_reason)


@dataclass
class RequestState:
    request_id: int
    prompt: str | None
    prompt_token_ids: list[int]
    params: SamplingParams
    sequences: list[SequenceState]
    metrics: RequestMetrics
    num_cached_tokens: int = 0
    max_stop_len: int = field(init=False)

    def __post_init__(self) -> None:
        self.max_stop_len = max((len(s) for s in self.params.stop_strings), default=0)

    @classmethod
    def create(cls, request_id: int, prompt: str | None, prompt_token_ids: list[int], params: SamplingParams,
               tokenizer: Tokenizer | None, device: torch.device, arrival_time: float,
               eos_token_ids: tuple[int, ...] = ()) -> RequestState:
        sequences = []
        for index in range(params.n):
            sampling = SequenceSamplingState.create(params, prompt_token_ids, index, device, eos_token_ids)
            detokenizer = None if tokenizer is None or not params.detokenize else IncrementalDetokenizer(
                tokenizer, prompt_token_ids, params.skip_special_tokens)
            wants = params.logprobs is not None
            sequences.append(SequenceState(index, sampling, detokenizer, logprobs=[] if wants else None,
                                           logprob_ranks=[] if wants else None))
        return cls(request_id, prompt, prompt_token_ids, params, sequences, RequestMetrics(arrival_time))

    @property
    def finished(self) -> bool:
        return all(s.finish_reason is not None for s in self.sequences)

    def to_output(self) -> RequestOutput:
        return RequestOutput(str(self.request_id), self.prompt, self.prompt_token_ids,
                             [s.to_output() for s in self.sequences], self.finished,
                             self.num_cached_tokens, self.metrics)
