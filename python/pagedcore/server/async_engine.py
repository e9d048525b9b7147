"""AsyncEngine: an asyncio front for the (thread-unsafe, asyncio-free) LLMEngine.

One engine thread owns the LLMEngine: it takes submissions and aborts from a thread-safe queue,
runs step() while there is work, and after each step hands every live request's delta (new token
ids, new text, logprobs, finish reason) to the event loop with one call_soon_threadsafe. Each
HTTP request gets a GenerationHandle: one asyncio queue fed with the deltas of its engine requests
(one per prompt). No other thread ever steps or changes the engine; the one call made elsewhere is
compile_grammar (thread-safe), which the HTTP handlers run in worker threads before submitting.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import sys
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from pagedcore.engine.engine import LLMEngine
from pagedcore.engine.request_state import RequestState
from pagedcore.engine.sampling_params import SamplingParams
from pagedcore.server.metrics import ServerMetrics

logger = logging.getLogger("pagedcore.server")
_IDLE_WAIT_S = 0.5  # how long the idle engine thread sleeps between heartbeats
# The engine thread waits for each step's tokens with the GIL released, then must take it back from
# the event loop's thread; at Python's default switch interval (5 ms) that handoff cost the overlapped
# loop 0.2-0.5 ms of ITL per step at 4-16 req/s. 0.5 ms took ITL p50 below the synchronous loop's
# (bench/RESULTS.md, "The server's GIL handoff"). Set while the engine thread runs.
_SWITCH_INTERVAL_S = 0.0005
_DELIVERED = -1  # num_tokens_sent of a sequence whose final delta went out


class QueueFullError(Exception):
    """The server already holds as many requests as it may queue."""


class EngineDeadError(Exception):
    """The engine thread stopped (it failed, or the server is shutting down)."""


@dataclass
class EngineRequest:
    prompt: str | None
    prompt_token_ids: list[int]
    params: SamplingParams


@dataclass
class SequenceDelta:
    index: int  # which of the request's n sequences
    text: str  # new text since the previous delta
    token_ids: list[int]  # new token ids since the previous delta
    logprobs: list[dict[int, float]] | None  # one dict per new token, when requested
    finish_reason: str | None  # set on the sequence's last delta
    stop_reason: int | str | None = None


@dataclass
class RequestDelta:
    prompt_index: int  # which prompt of the HTTP request
    sequences: list[SequenceDelta]
    finished: bool
    num_prompt_tokens: int
    num_cached_tokens: int  # prompt tokens served from the prefix cache (known at the end)
    # SamplingParams.prompt_logprobs, on the request's first delta: None for the first prompt token,
    # then {token: Logprob} per prompt token (complete: the prompt is computed before any token).
    prompt_logprobs: list | None = None


@dataclass
class _Tracked:
    """Engine-thread bookkeeping of one engine request: how much of each sequence was delivered."""
    handle: GenerationHandle
    prompt_index: int
    state: RequestState
    num_tokens_sent: list[int] = field(default_factory=list)
    num_chars_sent: list[int] = field(default_factory=list)
    last_token_time: float | None = None
    prompt_logprobs_sent: bool = False


class GenerationHandle:
    """The async side of one HTTP request. Iterate it for RequestDeltas; abort() on disconnect."""

    def __init__(self, engine: AsyncEngine, num_requests: int):
        self._engine = engine
        self.num_requests = num_requests
        self.queue: asyncio.Queue = asyncio.Queue()
        self._num_unfinished = num_requests
        self._closed = False

    async def __aiter__(self) -> AsyncIterator[RequestDelta]:
        try:
            while self._num_unfinished:
                item = await self.queue.get()
                if isinstance(item, BaseException):
                    raise item
                if item.finished:
                    self._num_unfinished -= 1
                yield item
        finally:
            self.close()

    def close(self) -> None:
        """Aborts whatever is unfinished (a no-op once everything finished) and frees the slot."""
        if self._closed:
            return
        self._closed = True
        self._engine._release(self, abort=self._num_unfinished > 0)


class AsyncEngine:
    def __init__(self, engine: LLMEngine, *, max_in_flight: int, metrics: ServerMetrics | None = None,
                 stall_timeout_s: float = 60.0):
        self.engine = engine
        self.max_in_flight = max_in_flight  # engine requests admitted and unfinished, at most
        self.metrics = metrics
        self.stall_timeout_s = stall_timeout_s
        self.num_in_flight = 0  # event-loop side only
        self.stats: dict[str, float] = {}  # last scheduler stats snapshot, written by the engine thread
        self.heartbeat = time.monotonic()
        self.error: str | None = None  # why the engine thread died
        self._commands: queue.SimpleQueue = queue.SimpleQueue()
        self._wake = threading.Event()
        self._stopping = False
        self._tracked: dict[int, _Tracked] = {}  # engine request id -> bookkeeping (engine thread only)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._run, name="pagedcore-engine", daemon=True)
        self._switch_interval: float | None = None  # the process's, while start() has lowered it

    # ---- event-loop side ---------------------------------------------------------------------

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._snapshot_stats()
        self._switch_interval = sys.getswitchinterval()
        sys.setswitchinterval(min(self._switch_interval, _SWITCH_INTERVAL_S))
        self._thread.start()

    def shutdown(self, timeout_s: float = 30.0) -> None:
        self._stopping = True
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)
        if self._switch_interval is not None:
            sys.setswitchinterval(self._switch_interval)
            self._switch_interval = None

    def is_healthy(self) -> bool:
        """Alive, not failed, and the loop ticked recently (it ticks after every step and when idle)."""
        return (self._thread.is_alive() and self.error is None and not self._stopping
                and time.monotonic() - self.heartbeat < self.stall_timeout_s)

    async def compile_grammar(self, params: SamplingParams) -> None:
        """Compiles the request's structured output in a worker thread, so that a slow schema never stalls
        the engine thread (whose add_request then finds it in xgrammar's cache); ValueError naming what is
        wrong with a schema / regex / grammar."""
        if params.structured_outputs is not None:
            await asyncio.to_thread(self.engine.compile_grammar, params)

    async def submit(self, requests: list[EngineRequest]) -> GenerationHandle:
        """Queues the requests of one HTTP request. QueueFullError / EngineDeadError at once;
        ValueError (naming the limit, with .prompt_index) when the engine refuses one of them."""
        if not self._thread.is_alive() or self.error is not None or self._stopping:
            raise EngineDeadError(self.error or "the engine is not running")
        if self.num_in_flight + len(requests) > self.max_in_flight:
            raise QueueFullError(f"the server is at its limit of {self.max_in_flight} queued or running "
                                 "requests; retry later")
        handle = GenerationHandle(self, len(requests))
        self.num_in_flight += len(requests)
        self._send(("submit", handle, requests))
        try:
            accepted = await self._await_acceptance(handle)
        except BaseException:
            handle.close()
            raise
        if isinstance(accepted, BaseException):
            handle._num_unfinished = 0
            handle.close()
            raise accepted
        return handle

    async def _await_acceptance(self, handle: GenerationHandle):
        """The engine thread's answer to a submission; EngineDeadError if the thread died meanwhile."""
        while True:
            try:
                return await asyncio.wait_for(handle.queue.get(), 2 * _IDLE_WAIT_S)
            except asyncio.TimeoutError:
                if not self._thread.is_alive():
                    return EngineDeadError(self.error or "the engine stopped")

    def _release(self, handle: GenerationHandle, abort: bool) -> None:
        self.num_in_flight -= handle.num_requests
        if abort:
            self._send(("abort", handle, None))

    def _send(self, command: tuple) -> None:
        self._commands.put(command)
        self._wake.set()

    # ---- engine thread -----------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while not self._stopping:
                if self._take_commands():
                    self._snapshot_stats()  # aborts free blocks even when no step follows
                if self.engine.has_unfinished():
                    finished = self.engine.step()
                    self._publish(finished)
                    self._snapshot_stats()
                else:
                    self._wake.wait(_IDLE_WAIT_S)
                    self._wake.clear()
                self.heartbeat = time.monotonic()
        except Exception as error:  # an engine bug: fail every request, report unhealthy
            logger.exception("engine thread failed")
            self.error = f"engine failure: {type(error).__name__}: {error}"
        failure = EngineDeadError(self.error or "the server is shutting down")
        self._deliver([(t.handle, failure) for t in self._tracked.values()])
        for request_id in list(self._tracked):
            self.engine.abort(request_id)
        self._tracked.clear()

    def _take_commands(self) -> bool:
        """Applies queued submissions and aborts; True when there were any."""
        took = False
        while True:
            try:
                kind, handle, requests = self._commands.get_nowait()
            except queue.Empty:
                return took
            took = True
            if kind == "submit":
                self._add(handle, requests)
            else:
                for request_id in [r for r, t in self._tracked.items() if t.handle is handle]:
                    self.engine.abort(request_id)
                    del self._tracked[request_id]

    def _add(self, handle: GenerationHandle, requests: list[EngineRequest]) -> None:
        added: list[int] = []
        try:
            for index, request in enumerate(requests):
                try:
                    request_id = self.engine.add_request(request.prompt, request.prompt_token_ids, request.params)
                except (ValueError, TypeError, OverflowError) as error:  # TypeError: a value the native side refuses
                    raise ValueError(str(error).splitlines()[0]) from error
                added.append(request_id)
                state = self.engine.requests[request_id]
                self._tracked[request_id] = _Tracked(handle, index, state, [0] * request.params.n,
                                                     [0] * request.params.n)
        except ValueError as error:
            for request_id in added:
                self.engine.abort(request_id)
                del self._tracked[request_id]
            self._deliver([(handle, error)])
            return
        if self.metrics is not None:
            self.metrics.on_admitted(sum(len(r.prompt_token_ids) for r in requests))
        self._deliver([(handle, "accepted")])

    def _publish(self, finished: list[RequestState]) -> None:
        now = time.time()  # the same clock as RequestMetrics (wall clock, as vLLM)
        finished_ids = {state.request_id for state in finished}
        items = []
        for request_id, tracked in list(self._tracked.items()):
            delta = self._delta(tracked, request_id in finished_ids)
            if delta is None:
                continue
            items.append((tracked.handle, delta))
            if self.metrics is not None:
                self._observe(tracked, delta, now)
            if delta.finished:
                del self._tracked[request_id]
        self._deliver(items)

    @staticmethod
    def _delta(tracked: _Tracked, finished: bool) -> RequestDelta | None:
        state = tracked.state
        sequences = []
        for seq in state.sequences:
            done = seq.finish_reason is not None
            # While running, hold back the characters a stop string could still claim.
            hold = 0 if done else max(0, state.max_stop_len - 1)
            text_end = max(tracked.num_chars_sent[seq.index], len(seq.text) - hold)
            start_tok, start_chr = tracked.num_tokens_sent[seq.index], tracked.num_chars_sent[seq.index]
            if start_tok == _DELIVERED:
                continue
            new_tokens = seq.token_ids[start_tok:]
            if not new_tokens and text_end == start_chr and not done:
                continue
            sequences.append(SequenceDelta(
                seq.index, seq.text[start_chr:text_end], list(new_tokens),
                None if seq.logprobs is None else list(seq.logprobs[start_tok:]),
                seq.finish_reason, seq.stop_reason))
            tracked.num_tokens_sent[seq.index] = _DELIVERED if done else len(seq.token_ids)
            tracked.num_chars_sent[seq.index] = text_end
        if not sequences and not finished:
            return None
        prompt_logprobs = None
        if state.prompt_logprobs is not None and not tracked.prompt_logprobs_sent:
            prompt_logprobs = state.prompt_logprobs_output()
            tracked.prompt_logprobs_sent = True
        return RequestDelta(tracked.prompt_index, sequences, finished, len(state.prompt_token_ids),
                            state.num_cached_tokens, prompt_logprobs)

    def _observe(self, tracked: _Tracked, delta: RequestDelta, now: float) -> None:
        num_new = sum(len(s.token_ids) for s in delta.sequences)
        metrics = tracked.state.metrics
        if num_new:
            if tracked.last_token_time is None:
                self.metrics.time_to_first_token.observe(now - metrics.arrival_time)
            else:
                self.metrics.inter_token_latency.observe(now - tracked.last_token_time)
            tracked.last_token_time = now
            self.metrics.generation_tokens.inc(num_new)
        if delta.finished:
            self.metrics.e2e_latency.observe(now - metrics.arrival_time)
            reasons = {s.finish_reason for s in tracked.state.sequences}
            for reason in reasons:
                self.metrics.finished_requests.labels(finish_reason=reason or "unknown").inc()

    def _deliver(self, items: list[tuple[GenerationHandle, object]]) -> None:
        if not items or self._loop is None or self._loop.is_closed():
            return
        def put_all() -> None:
            for handle, item in items:
                handle.queue.put_nowait(item)
        try:
            self._loop.call_soon_threadsafe(put_all)
        except RuntimeError:  # the loop closed between the check and the call
            pass

    def _snapshot_stats(self) -> None:
        s = self.engine.scheduler.stats()
        self.stats = {name: getattr(s, name) for name in (
            "num_running", "num_waiting", "num_swapped", "num_used_blocks", "num_blocks", "kv_usage",
            "prefix_hit_rate", "num_preemptions", "num_prefix_hit_tokens", "num_prefix_query_tokens", "num_steps")}
