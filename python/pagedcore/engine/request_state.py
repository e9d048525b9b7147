"""Python-side state of a request and its sequences: what the sampler and the detokenizer carry
across steps (and across preemptions, which the scheduler handles by recompute), and the output
being built."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from pagedcore.tokenizers.detokenizer import IncrementalDetokenizer
from pagedcore.engine.outputs import CompletionOutput, RequestMetrics, RequestOutput
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
    logprobs: list[dict[int, float]] | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None

    @property
    def token_ids(self) -> list[int]:
        return self.sampling.output_token_ids

    def to_output(self) -> CompletionOutput:
        return CompletionOutput(self.index, self.text, list(self.token_ids), self.cumulative_logprob,
                                self.logprobs, self.finish_reason, self.stop_reason)


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
            detokenizer = None if tokenizer is None else IncrementalDetokenizer(
                tokenizer, prompt_token_ids, params.skip_special_tokens)
            sequences.append(SequenceState(index, sampling, detokenizer,
                                           logprobs=[] if params.logprobs is not None else None))
        return cls(request_id, prompt, prompt_token_ids, params, sequences, RequestMetrics(arrival_time))

    @property
    def finished(self) -> bool:
        return all(s.finish_reason is not None for s in self.sequences)

    def to_output(self) -> RequestOutput:
        return RequestOutput(self.request_id, self.prompt, self.prompt_token_ids,
                             [s.to_output() for s in self.sequences], self.finished,
                             self.num_cached_tokens, self.metrics)
