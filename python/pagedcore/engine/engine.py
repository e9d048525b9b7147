"""LLMEngine: the step loop. scheduler.step() -> model runner (block copies, forward) -> sampler ->
scheduler.commit() -> detokenize -> stop strings.

The native scheduler finishes sequences on max_tokens, max_model_len, EOS and stop token ids;
this loop finishes them on stop strings (scheduler.finish) and turns events into outputs.
"""

from __future__ import annotations

import time

import numpy as np

from pagedcore import _core
from pagedcore.model_executor.model_runner import ModelRunner
from pagedcore.engine.request_state import RequestState, SequenceState
from pagedcore.model_executor.sampler import Sampler, SamplerOutput
from pagedcore.engine.sampling_params import SamplingParams
from pagedcore.tokenizers.tokenizer import Tokenizer

_FINISH_REASONS = {_core.FinishReason.STOP: "stop", _core.FinishReason.LENGTH: "length",
                   _core.FinishReason.ABORT: "abort"}


class LLMEngine:
    def __init__(self, scheduler: _core.Scheduler, runner: ModelRunner, sampler: Sampler,
                 tokenizer: Tokenizer | None, eos_token_ids: list[int], max_model_len: int):
        self.scheduler = scheduler
        self.runner = runner
        self.sampler = sampler
        self.tokenizer = tokenizer
        self.eos_token_ids = eos_token_ids
        self.max_model_len = max_model_len
        self.requests: dict[int, RequestState] = {}
        self._unscheduled: set[int] = set()  # requests no step has computed tokens of yet
        self._next_request_id = 0

    def add_request(self, prompt: str | None, prompt_token_ids: list[int], params: SamplingParams) -> int:
        """Queues a request; ValueError (naming the limit) when it can never run."""
        if not prompt_token_ids:
            raise ValueError("the prompt is empty: give at least one token")
        if params.truncate_prompt_tokens is not None and len(prompt_token_ids) > params.truncate_prompt_tokens:
            prompt_token_ids = prompt_token_ids[-params.truncate_prompt_tokens:]
            prompt = self.tokenizer.decode(prompt_token_ids) if self.tokenizer is not None else None
        vocab_size = self.sampler.vocab_size
        if min(prompt_token_ids) < 0 or max(prompt_token_ids) >= vocab_size:
            raise ValueError(f"prompt token ids must be in [0, {vocab_size - 1}] (the vocabulary)")
        for name, ids in (("logit_bias", params.logit_bias or ()), ("allowed_token_ids", params.allowed_token_ids or ())):
            outside = [t for t in ids if t >= vocab_size]
            if outside:
                raise ValueError(f"{name} token ids must be in [0, {vocab_size - 1}] (the vocabulary), got {outside[:5]}")
        room = self.max_model_len - len(prompt_token_ids)
        if room < 1:
            raise ValueError(f"the prompt has {len(prompt_token_ids)} tokens, leaving no room to generate "
                             f"within max_model_len={self.max_model_len}")
        # As vLLM does: max_tokens past the context is clamped to it, and the request then finishes
        # with "length" when it reaches max_model_len.
        max_tokens = room if params.max_tokens is None else min(params.max_tokens, room)
        request_id = self._next_request_id
        self._next_request_id += 1
        arrival = time.time()
        native_params = _core.RequestParams(
            max_tokens=max_tokens, min_tokens=min(params.min_tokens, max_tokens), eos_token_ids=self.eos_token_ids,
            stop_token_ids=params.stop_token_ids, ignore_eos=params.ignore_eos, n=params.n,
            arrival_time=arrival)
        self.scheduler.add_request(request_id, prompt_token_ids, native_params)
        self.requests[request_id] = RequestState.create(
            request_id, prompt, list(prompt_token_ids), params, self.tokenizer, self.runner.device, arrival,
            tuple(self.eos_token_ids))
        self._unscheduled.add(request_id)
        return request_id

    def has_unfinished(self) -> bool:
        return bool(self.requests)

    def abort(self, request_id: int) -> None:
        self.scheduler.abort(request_id)
        self.requests.pop(request_id, None)
        self._unscheduled.discard(request_id)

    def step(self) -> list[RequestState]:
        """Runs one scheduler step; returns the requests that finished in it."""
        plan = self.scheduler.step()
        if self._unscheduled and plan.num_seqs:
            self._record_first_scheduled(plan.seq_request_ids.tolist())
        if plan.num_tokens == 0:
            events = self.scheduler.commit(np.empty(0, dtype=np.int32))
            return self._apply_events(events, {}, None)
        logits = self.runner.execute(plan)
        rows = {(int(r), int(s)): i for i, (r, s) in enumerate(zip(plan.sample_request_ids, plan.sample_seq_indices))}
        states = [self.requests[r].sequences[s].sampling for (r, s) in rows]
        sampled = self.sampler(logits, states)
        events = self.scheduler.commit(np.asarray(sampled.token_ids, dtype=np.int32))
        return self._apply_events(events, rows, sampled)

    def _record_first_scheduled(self, request_ids: list[int]) -> None:
        now = time.time()
        for request_id in self._unscheduled.intersection(request_ids):
            self.requests[request_id].metrics.first_scheduled_time = now
        self._unscheduled.difference_update(request_ids)

    def _apply_events(self, events, rows: dict[tuple[int, int], int],
                      sampled: SamplerOutput | None) -> list[RequestState]:
        now = time.time()
        touched: dict[int, RequestState] = {}
        for event in events:
            request = self.requests.get(event.request_id)
            if request is None:
                continue  # aborted
            touched[request.request_id] = request
            sequence = request.sequences[event.seq_index]
            if event.kind == _core.EventKind.PREEMPTED:
                request.metrics.num_preemptions += 1
                continue
            if event.kind == _core.EventKind.RESUMED or sequence.finish_reason is not None:
                continue
            if request.metrics.first_token_time is None:
                request.metrics.first_token_time = now
            row = rows[(event.request_id, event.seq_index)]
            finishing = event.kind == _core.EventKind.FINISHED
            reason = _FINISH_REASONS.get(event.finish_reason) if finishing else None
            if event.token >= 0:
                # EOS / stop tokens end the sequence without adding their text (as vLLM does).
                stopped = self._append_token(request, sequence, event.token, row, sampled,
                                             add_text=reason != "stop")
                if stopped and not finishing:
                    self.scheduler.finish(request.request_id, sequence.index)
            # Every token event carries it, so requests that end on a stop string report it too.
            request.num_cached_tokens = max(request.num_cached_tokens, event.num_cached_tokens)
            if finishing and sequence.finish_reason is None:
                sequence.finish_reason = reason
                if reason == "stop" and event.token in request.params.stop_token_ids:
                    sequence.stop_reason = event.token
        finished = []
        for request in touched.values():
            if request.finished:
                request.metrics.finished_time = now
                finished.append(self.requests.pop(request.request_id))
        return finished

    def _append_token(self, request: RequestState, sequence: SequenceState, token: int, row: int,
                      sampled: SamplerOutput, add_text: bool) -> bool:
        """Records a sampled token and its text; True when a stop string ended the sequence."""
        sequence.token_ids.append(token)
        sequence.cumulative_logprob += sampled.logprobs[row]
        if sequence.logprobs is not None:
            sequence.logprobs.append(sampled.top_logprobs[row])
            sequence.logprob_ranks.append(sampled.ranks[row])
        if not add_text or sequence.detokenizer is None:
            return False
        new_text = sequence.detokenizer.append(token)
        sequence.text += new_text
        if not new_text or not request.max_stop_len or len(sequence.token_ids) < request.params.min_tokens:
            return False
        return self._check_stop_strings(request, sequence, len(new_text))

    @staticmethod
    def _check_stop_strings(request: RequestState, sequence: SequenceState, num_new_chars: int) -> bool:
        """Ends the sequence's text at the earliest stop string the new text completes; True if one did."""
        start = max(0, len(sequence.text) - num_new_chars - request.max_stop_len + 1)
        matches = [(sequence.text.find(stop, start), stop) for stop in request.params.stop_strings]
        matches = [(pos, stop) for pos, stop in matches if pos >= 0]
        if not matches:
            return False
        pos, stop = min(matches)
        end = pos + len(stop) if request.params.include_stop_str_in_output else pos
        sequence.text = sequence.text[:end]
        sequence.finish_reason = "stop"
        sequence.stop_reason = stop
        return True
