"""LLMEngine: the step loop. scheduler.step() -> model runner (block copies, forward) -> sampler ->
scheduler.commit() -> detokenize -> stop strings.

With async_scheduling (the default) the loop is overlapped: step t + 1 is planned, uploaded and
launched before step t's tokens reach the host, so the device never waits for the host between
steps. A decoding sequence's row in step t + 1 takes its input token on the device from step t's
sampled tokens (the plan's deferred inputs); step t is committed (tokens, events, detokenization,
stop strings) while step t + 1's forward pass runs, and before step t + 1 samples, so what sampling
reads on the host (a grammar's state, the output tokens of penalties, logit controls and min_tokens)
already holds step t's token. A sequence that step t's token ends (EOS, a stop token or a stop
string) has computed one extra token in step t + 1, which is dropped, never emitted. Outputs are
those of the synchronous loop.

The native scheduler finishes sequences on max_tokens, max_model_len, EOS and stop token ids;
this loop finishes them on stop strings (scheduler.finish) and turns events into outputs.

A request's n sequences run as one native request, or, when n is above max_num_seqs (which caps
one native request), as several of at most max_num_seqs sequences each (each forks its prompt as
usual) that take the sequences in order and run one after the other; outputs keep indices 0..n-1.
Requests with prompt_logprobs also get the logits of their prompt rows, step by step as chunked
prefill computes them.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from pagedcore import _core
from pagedcore.model_executor.model_runner import ModelRunner
from pagedcore.engine.request_state import RequestState, SequenceState
from pagedcore.model_executor.sampler import SampledBatch, Sampler, SamplerOutput
from pagedcore.engine.sampling_params import SamplingParams
from pagedcore.engine.structured_outputs import GrammarCompiler
from pagedcore.tokenizers.tokenizer import Tokenizer

_FINISH_REASONS = {_core.FinishReason.STOP: "stop", _core.FinishReason.LENGTH: "length",
                   _core.FinishReason.ABORT: "abort"}


class LLMEngine:
    def __init__(self, scheduler: _core.Scheduler, runner: ModelRunner, sampler: Sampler,
                 tokenizer: Tokenizer | None, eos_token_ids: list[int], max_model_len: int,
                 async_scheduling: bool = True):
        """async_scheduling: the overlapped loop (above); False: the synchronous loop, each step committed
        before the next is planned."""
        self.async_scheduling = async_scheduling
        # The planned step whose tokens are still being sampled on the device: its sample rows
        # ((native request id, seq index) -> row) and its sampler output; committed during the next
        # step's forward pass (at once in the synchronous loop).
        self._in_flight: tuple[dict[tuple[int, int], int], SampledBatch] | None = None
        self.scheduler = scheduler
        self.runner = runner
        self.sampler = sampler
        self.tokenizer = tokenizer
        # Structured outputs' grammars, compiled once per distinct constraint (the server compiles in
        # worker threads before add_request, which then finds them cached).
        self.grammars = (GrammarCompiler(tokenizer, sampler.vocab_size, eos_token_ids)
                         if tokenizer is not None else None)
        self.eos_token_ids = eos_token_ids
        self.max_model_len = max_model_len
        self.requests: dict[int, RequestState] = {}
        # native (scheduler) request id -> (its request, the request's index of its sequence 0)
        self._native: dict[int, tuple[RequestState, int]] = {}
        self._unscheduled: set[int] = set()  # requests no step has computed tokens of yet
        self._awaiting_prompt_logprobs: set[int] = set()  # requests with prompt rows still to score
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
        bad_words = self._bad_words_token_ids(params)
        room = self.max_model_len - len(prompt_token_ids)
        if room < 1:
            raise ValueError(f"the prompt has {len(prompt_token_ids)} tokens, leaving no room to generate "
                             f"within max_model_len={self.max_model_len}")
        # As vLLM does: max_tokens past the context is clamped to it, and the request then finishes
        # with "length" when it reaches max_model_len.
        max_tokens = room if params.max_tokens is None else min(params.max_tokens, room)
        request_id = self._next_request_id
        arrival = time.time()
        request = RequestState.create(
            request_id, prompt, list(prompt_token_ids), params, self.tokenizer, arrival,
            tuple(self.eos_token_ids), bad_words, self.compile_grammar(params))
        # vLLM skips reading the prefix cache for requests with prompt_logprobs: a cached token has no
        # logits. A cache salt of the request's own makes its lookups miss (its sibling native requests
        # still share its blocks).
        salt = f"prompt-logprobs-{request_id}" if params.prompt_logprobs is not None else ""
        max_per_native = self.scheduler.config.max_num_seqs
        try:
            for first in range(0, params.n, max_per_native):
                native_id = self._next_request_id
                self._next_request_id += 1
                native_params = _core.RequestParams(
                    max_tokens=max_tokens, min_tokens=min(params.min_tokens, max_tokens),
                    eos_token_ids=self.eos_token_ids, stop_token_ids=params.stop_token_ids,
                    ignore_eos=params.ignore_eos, n=min(max_per_native, params.n - first), arrival_time=arrival,
                    cache_salt=salt)
                self.scheduler.add_request(native_id, prompt_token_ids, native_params)
                request.native_request_ids.append(native_id)
                self._native[native_id] = (request, first)
        except BaseException:
            self._forget(request)
            raise
        self.requests[request_id] = request
        self._unscheduled.add(request_id)
        if request.num_missing_prompt_logprobs:
            self._awaiting_prompt_logprobs.add(request_id)
        return request_id

    def compile_grammar(self, params: SamplingParams):
        """The request's compiled structured output (cached per constraint), or None; ValueError naming
        what is wrong with a schema / regex / grammar."""
        if params.structured_outputs is None:
            return None
        if self.grammars is None:
            raise ValueError("structured_outputs are compiled against the model's tokenizer, and this model has none")
        return self.grammars.compile(params.structured_outputs)

    def _bad_words_token_ids(self, params: SamplingParams) -> list[list[int]]:
        if not params.bad_words:
            return []
        if self.tokenizer is None:
            raise ValueError("bad_words are tokenized with the model's tokenizer, and this model has none")
        sequences = params.bad_words_token_ids(self.tokenizer)
        vocab_size = self.sampler.vocab_size
        outside = [t for word in sequences for t in word if t >= vocab_size]
        if outside:
            raise ValueError(f"bad_words tokenize to ids outside the vocabulary [0, {vocab_size - 1}]: {outside[:5]}")
        return sequences

    def has_unfinished(self) -> bool:
        return bool(self.requests)

    def abort(self, request_id: int) -> None:
        request = self.requests.pop(request_id, None)
        if request is not None:
            self._forget(request)
        if not self.requests:
            self._commit_in_flight()  # only rows of finished or aborted sequences: leave nothing uncommitted
        self._unscheduled.discard(request_id)
        self._awaiting_prompt_logprobs.discard(request_id)

    def _forget(self, request: RequestState) -> None:
        """Aborts the request's native requests (a no-op for finished ones) and drops their ids."""
        for native_id in request.native_request_ids:
            self.scheduler.abort(native_id)
            self._native.pop(native_id, None)

    def step(self) -> list[RequestState]:
        """Runs one scheduler step; returns the requests that finished in it (in the overlapped loop,
        those the previous step's tokens finished)."""
        plan = self.scheduler.step()
        finished = []
        if self._unscheduled and plan.num_seqs:
            self._record_first_scheduled(plan.seq_request_ids.tolist())
        if plan.num_tokens == 0:
            finished += self._commit_in_flight()
            return finished + self._apply_events(self.scheduler.commit(np.empty(0, dtype=np.int32)), {}, None)
        prompt_rows, prompt_positions = (self._prompt_logprob_rows(plan) if self._awaiting_prompt_logprobs
                                         else ([], []))
        previous_tokens = self._in_flight[1].token_ids if plan.num_deferred else None
        logits = self.runner.execute(plan, np.asarray([row for row, _ in prompt_rows], dtype=np.int32)
                                     if prompt_rows else None, previous_tokens)
        # Sampling states are taken before the previous step's tokens can finish (and forget) a request.
        rows = {(int(r), int(s)): i for i, (r, s) in enumerate(zip(plan.sample_request_ids, plan.sample_seq_indices))}
        states = [self._sequence(r, s).sampling for (r, s) in rows]
        # The previous step's tokens, while the device runs this forward pass: committed before this
        # step samples, so grammars and output tokens hold them.
        finished += self._commit_in_flight()
        num_samples = plan.num_samples
        sampled = self.sampler.sample(logits[:num_samples], states)  # on the device, not read back yet
        if prompt_rows:
            self._record_prompt_logprobs(logits[num_samples:], prompt_positions)
        self._in_flight = (rows, sampled)
        if not self.async_scheduling or not self.requests:
            finished += self._commit_in_flight()  # synchronous, or nothing left to overlap with
        return finished

    def _commit_in_flight(self) -> list[RequestState]:
        """Commits the in-flight step: reads its tokens back (the step's one host sync), hands them to
        the scheduler and turns its events into outputs."""
        if self._in_flight is None:
            return []
        rows, sampled = self._in_flight
        self._in_flight = None
        output = sampled.result()
        events = self.scheduler.commit(np.asarray(output.token_ids, dtype=np.int32))
        return self._apply_events(events, rows, output)

    def _sequence(self, native_id: int, seq_index: int) -> SequenceState:
        request, first = self._native[native_id]
        return request.sequences[first + seq_index]

    def _prompt_logprob_rows(self, plan) -> tuple[list[tuple[int, int]], list[tuple[RequestState, int]]]:
        """The plan's token rows whose logits score a prompt token of a request with prompt_logprobs
        that has no logprob yet: ([(row, position)], [(request, position)])."""
        rows: list[tuple[int, int]] = []
        positions: list[tuple[RequestState, int]] = []
        claimed: set[tuple[int, int]] = set()  # (request id, position): one row each, also when two
        starts = plan.query_start_loc          # native requests of one request prefill together
        for i, native_id in enumerate(plan.seq_request_ids.tolist()):
            request = self._native[native_id][0]
            if request.num_missing_prompt_logprobs == 0:
                continue
            start, end = int(starts[i]), int(starts[i + 1])
            first_position = int(plan.positions[start])  # a sequence's rows hold consecutive positions
            for row in range(start, min(end, start + len(request.prompt_token_ids) - first_position)):
                position = first_position + row - start
                if request.needs_prompt_logprob(position) and (request.request_id, position) not in claimed:
                    claimed.add((request.request_id, position))
                    rows.append((row, position))
                    positions.append((request, position))
        return rows, positions

    def _record_prompt_logprobs(self, logits, positions: list[tuple[RequestState, int]]) -> None:
        """logits [len(positions), vocab]: row i scores the prompt token after positions[i]."""
        targets = [request.prompt_token_ids[position + 1] for request, position in positions]
        entries, ranks = self.sampler.logprobs_of(logits, torch.tensor(targets),
                                                  [request.params.prompt_logprobs for request, _ in positions])
        for (request, position), entry, rank in zip(positions, entries, ranks):
            request.record_prompt_logprob(position, entry, rank)
            if request.num_missing_prompt_logprobs == 0:
                self._awaiting_prompt_logprobs.discard(request.request_id)

    def _record_first_scheduled(self, native_ids: list[int]) -> None:
        now = time.time()
        request_ids = {self._native[native_id][0].request_id for native_id in native_ids}
        for request_id in self._unscheduled.intersection(request_ids):
            self.requests[request_id].metrics.first_scheduled_time = now
        self._unscheduled.difference_update(request_ids)

    def _apply_events(self, events, rows: dict[tuple[int, int], int], sampled: SamplerOutput | None,
                      ) -> list[RequestState]:
        now = time.time()
        touched: dict[int, RequestState] = {}
        for event in events:
            if event.request_id not in self._native:
                continue  # aborted
            request = self._native[event.request_id][0]
            touched[request.request_id] = request
            sequence = self._sequence(event.request_id, event.seq_index)
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
                    self.scheduler.finish(event.request_id, event.seq_index)
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
                self._awaiting_prompt_logprobs.discard(request.request_id)
                for native_id in request.native_request_ids:
                    self._native.pop(native_id, None)
        return finished

    def _append_token(self, request: RequestState, sequence: SequenceState, token: int, row: int,
                      sampled: SamplerOutput, add_text: bool) -> bool:
        """Records a sampled token and its text; True when a stop string or a completed structured
        output ended the sequence."""
        sequence.token_ids.append(token)
        grammar_done = self._advance_grammar(sequence, token)
        sequence.cumulative_logprob += sampled.logprobs[row]
        if sequence.logprobs is not None:
            sequence.logprobs.append(sampled.top_logprobs[row])
            sequence.logprob_ranks.append(sampled.ranks[row])
        if add_text and sequence.detokenizer is not None:
            new_text = sequence.detokenizer.append(token)
            sequence.text += new_text
            if (new_text and request.max_stop_len and len(sequence.token_ids) >= request.params.min_tokens
                    and self._check_stop_strings(request, sequence, len(new_text))):
                return True
        if grammar_done:
            sequence.finish_reason = "stop"  # the grammar accepted EOS (also under ignore_eos)
        return grammar_done

    @staticmethod
    def _advance_grammar(sequence: SequenceState, token: int) -> bool:
        """Feeds the token to the sequence's grammar matcher; True when the grammar is complete."""
        matcher = sequence.sampling.matcher
        if matcher is None or matcher.is_terminated():
            return False
        if not matcher.accept_token(token):
            raise RuntimeError(f"token {token} was sampled outside its structured output's grammar")
        return matcher.is_terminated()

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
