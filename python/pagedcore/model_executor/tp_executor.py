"""The tensor-parallel executor: the driver (rank 0, the LLM's process: scheduler, sampler, engine)
and N - 1 worker processes it starts, supervises and stops (torch.multiprocessing spawn).

Each step the driver sends the plan to the workers as one message through a shared-memory ring
(StepRing): a fixed header of sizes, then one int32 buffer holding the plan packed in the layout
every rank uploads (the same CUDA graph or eager layout: the runners are configured alike), its swap
/ copy pairs and the extra logits rows. A message too large for a slot goes as a gloo broadcast
instead (the header says so). bench/bench_tp_message.py measured the ring at about a tenth of the
broadcast's cost per step. When the plan has deferred inputs, the previous step's sampled tokens
follow as a broadcast on the model's group (on the device under NCCL: no host sync). Then every rank
runs its shard; the model's all-reduces and the logits' all-gather are the only other traffic. Only
the driver samples.

Failure: a worker that raises reports the error over its pipe and exits; one that dies is seen by
its exit code. The driver then fails the step (and every later one) with WorkerFailedError naming
the rank and the error. Workers exit when the driver stops them, when its messages stop (a closed
connection), and when the driver's process is gone (they poll their parent)."""

from __future__ import annotations

import ctypes
import datetime
import os
import socket
import sys
import threading
import time
from multiprocessing.connection import wait

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from pagedcore import _core
from pagedcore.model_executor.model_runner import ModelRunner

_STEP, _STOP = 1, 2
_HEADER = 16  # int64: command, num_seqs, num_tokens, num_samples, width, num_deferred, num_decode_seqs,
#               max_query_len, max_context_len, packed size, swap outs, swap ins, copies, extra rows,
#               previous tokens, payload sent as a broadcast (too large for a ring slot)
_STARTUP_TIMEOUT_S = 3600.0  # loading a large shard may take long; a dead worker is seen at once


class WorkerFailedError(RuntimeError):
    """A tensor-parallel worker failed or exited: the engine cannot run another step."""


class PlanView:
    """A step plan as a worker receives it: the attributes and methods ModelRunner.execute reads,
    backed by the driver's packed buffer (already in the layout the runner uploads)."""

    def __init__(self, header: np.ndarray, payload: np.ndarray):
        (_, self.num_seqs, self.num_tokens, self.num_samples, self.max_blocks_per_seq, self.num_deferred,
         self.num_decode_seqs, self.max_query_len, self.max_context_len, size, swap_outs, swap_ins, copies,
         extra, _, _) = (int(v) for v in header)
        at = 0

        def take(count: int) -> np.ndarray:
            nonlocal at
            at += count
            return payload[at - count:at]

        self.packed = take(size)
        self.swap_out_pairs = take(2 * swap_outs).reshape(-1, 2)
        self.swap_in_pairs = take(2 * swap_ins).reshape(-1, 2)
        self.copy_pairs = take(2 * copies).reshape(-1, 2)
        self.extra_rows = take(extra)

    def packed_layout(self):
        return _core.plan_layout(self.num_seqs, self.num_tokens, self.num_samples, self.max_blocks_per_seq,
                                 self.num_deferred)

    def padded_decode_layout(self, num_seqs: int, width: int):
        return _core.decode_layout(num_seqs, width)

    def pack(self, layout, address: int, capacity: int) -> None:
        if layout.size != self.packed.size or capacity < layout.size:
            raise RuntimeError(f"tensor-parallel plan message of {self.packed.size} int32 elements does not match "
                               f"this rank's layout of {layout.size} (capacity {capacity}): ranks disagree")
        ctypes.memmove(address, self.packed.ctypes.data, self.packed.nbytes)


def encode(plan, layout, extra_rows: np.ndarray | None, previous_tokens: torch.Tensor | None,
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """(header int64 [_HEADER], payload int32) of a plan packed at `layout`."""
    extra = np.asarray(extra_rows if extra_rows is not None else [], dtype=np.int32)
    pairs = [np.asarray(p, dtype=np.int32).reshape(-1) for p in (plan.swap_out_pairs, plan.swap_in_pairs,
                                                                  plan.copy_pairs)]
    payload = torch.empty(layout.size + sum(p.size for p in pairs) + extra.size, dtype=torch.int32)
    plan.pack(layout, payload.data_ptr(), layout.size)
    at, view = layout.size, payload.numpy()
    for part in (*pairs, extra):
        view[at:at + part.size] = part
        at += part.size
    num_previous = previous_tokens.numel() if previous_tokens is not None and plan.num_deferred else 0
    header = torch.tensor([_STEP, plan.num_seqs, plan.num_tokens, plan.num_samples, plan.max_blocks_per_seq,
                           plan.num_deferred, plan.num_decode_seqs, plan.max_query_len, plan.max_context_len,
                           layout.size, pairs[0].size // 2, pairs[1].size // 2, pairs[2].size // 2, extra.size,
                           num_previous, 0], dtype=torch.int64)
    return header, payload


class StepRing:
    """A shared-memory ring of step messages from the driver to every worker: `slots` slots of
    `slot_bytes` each. Per worker two semaphores order it (their release / acquire are the memory
    barriers): `ready` counts messages written and not yet read, `credits` the slots it has freed.
    The driver takes one credit per worker before writing a slot (waiting only when a worker is a
    whole ring behind) and releases each worker's `ready`; a worker waits on its `ready` (asleep, not
    spinning), copies the message out and gives the credit back."""

    SLOTS = 8

    def __init__(self, slot_bytes: int, num_workers: int, context, name: str | None = None):
        from multiprocessing import shared_memory

        self.slot_bytes = slot_bytes
        self.memory = shared_memory.SharedMemory(name=name, create=name is None, size=self.SLOTS * slot_bytes)
        self.name = self.memory.name
        if name is None:
            self.ready = [context.Semaphore(0) for _ in range(num_workers)]
            self.credits = [context.Semaphore(self.SLOTS) for _ in range(num_workers)]
        self.sent = 0  # messages written (driver) / read (worker)

    def __getstate__(self):  # crosses the spawn: the name and the semaphores, not the mapping
        return {"slot_bytes": self.slot_bytes, "name": self.name, "ready": self.ready, "credits": self.credits}

    def __setstate__(self, state):
        from multiprocessing import shared_memory

        self.__dict__.update(state)
        self.memory = shared_memory.SharedMemory(name=state["name"])
        self.sent = 0

    def capacity(self) -> int:
        """int32 payload elements a slot holds beside the header."""
        return (self.slot_bytes - 8 * _HEADER) // 4

    def write(self, header: torch.Tensor, payload: torch.Tensor | None, alive) -> None:
        """Writes a message (payload None: the header alone); alive() raises when a worker is gone,
        checked while waiting for a slot."""
        for credits in self.credits:
            while not credits.acquire(timeout=0.1):
                alive()
        base = (self.sent % self.SLOTS) * self.slot_bytes
        np.ndarray((_HEADER,), dtype=np.int64, buffer=self.memory.buf, offset=base)[:] = header.numpy()
        if payload is not None:
            np.ndarray((payload.numel(),), dtype=np.int32, buffer=self.memory.buf,
                       offset=base + 8 * _HEADER)[:] = payload.numpy()
        self.sent += 1
        for ready in self.ready:
            ready.release()

    def read(self, rank: int) -> tuple[np.ndarray, np.ndarray]:
        """A worker's next message: (header, the payload the header announces, empty when it is not in
        the slot), both copies."""
        self.ready[rank - 1].acquire()
        base = (self.sent % self.SLOTS) * self.slot_bytes
        header = np.ndarray((_HEADER,), dtype=np.int64, buffer=self.memory.buf, offset=base).copy()
        size = _payload_size(header) if header[0] == _STEP and header[15] == 0 else 0
        payload = np.ndarray((size,), dtype=np.int32, buffer=self.memory.buf, offset=base + 8 * _HEADER).copy()
        self.sent += 1
        self.credits[rank - 1].release()
        return header, payload

    def close(self, unlink: bool) -> None:
        self.memory.close()
        if unlink:
            self.memory.unlink()


def _payload_size(header: np.ndarray) -> int:
    return int(header[9] + 2 * header[10:13].sum() + header[13])


def serve_steps(runner: ModelRunner, device: torch.device, ring: StepRing, rank: int, control) -> None:
    """A worker's loop: receive a step, run this rank's shard of it; until the driver says stop."""
    while True:
        header, payload = ring.read(rank)
        if header[0] == _STOP:
            return
        if header[0] != _STEP:
            raise RuntimeError(f"unknown tensor-parallel command {int(header[0])}")
        if header[15]:  # too large for a slot: it follows as a broadcast
            received = torch.empty(_payload_size(header), dtype=torch.int32)
            dist.broadcast(received, src=0, group=control)
            payload = received.numpy()
        plan = PlanView(header, payload)
        previous = None
        if header[14]:
            previous = torch.empty(int(header[14]), dtype=torch.int64, device=device)
            dist.broadcast(previous, src=0)
        runner.execute(plan, plan.extra_rows, previous)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class WorkerGroup:
    """The driver's handle on ranks 1..N-1: starts them, joins the process group as rank 0, agrees on
    the block count, sends step messages and stops them (also at interpreter exit)."""

    def __init__(self, spec_fields: dict, ring_slot_bytes: int):
        """spec_fields: the WorkerSpec's fields but init_method (chosen here); ring_slot_bytes: a step
        ring slot's size (larger messages go as broadcasts)."""
        from pagedcore.model_executor.worker import WorkerSpec, worker_main

        self.size, self.backend = spec_fields["size"], spec_fields["backend"]
        self.error: str | None = None
        self.spec = WorkerSpec(**spec_fields, init_method=f"tcp://127.0.0.1:{_free_port()}")
        context = mp.get_context("spawn")
        self.ring = StepRing(ring_slot_bytes, self.size - 1, context)
        self.processes, self.conns = [], []
        self._inbox: dict[int, list[tuple]] = {}  # worker index -> messages read but not yet gathered
        self._started: set[int] = set()  # workers whose process reached worker_main
        self._stopped = False
        self.built = False  # every worker built its runner and waits for steps in the ring
        self.in_step = False  # a step was sent and not finished: the ranks may sit in its collectives
        self._lock = threading.Lock()  # one writer of the ring (the engine's thread, or shutdown at exit)
        self.control = None  # the gloo group of the step messages (None: the default group is gloo)
        try:
            for rank in range(1, self.size):
                parent, child = context.Pipe()
                process = context.Process(target=worker_main, args=(rank, self.spec, child, os.getpid(), self.ring),
                                          name=f"pagedcore-tp-worker-{rank}", daemon=True)
                process.start()
                child.close()
                self.processes.append(process)
                self.conns.append(parent)
            self._join_group()
        except BaseException:
            self.shutdown()
            raise

    # ---- startup ---------------------------------------------------------------------------------

    def _join_group(self) -> None:
        """init_process_group as rank 0 in a thread, so that a worker dying meanwhile fails at once."""
        failure: list[BaseException] = []

        def init() -> None:
            try:
                dist.init_process_group(self.backend, init_method=self.spec.init_method, rank=0,
                                        world_size=self.size, timeout=datetime.timedelta(seconds=self.spec.timeout_s))
            except BaseException as error:  # noqa: BLE001 - re-raised in the caller
                failure.append(error)

        thread = threading.Thread(target=init, daemon=True)
        thread.start()
        while thread.is_alive():
            self.check()
            thread.join(0.05)
        if failure:
            raise failure[0]
        if self.backend != "gloo":
            self.control = dist.new_group(backend="gloo")

    def gather(self, kind: str) -> list[tuple]:
        """Waits for every worker's next message of `kind` (WorkerFailedError if one fails or exits)."""
        replies: dict[int, tuple] = {}
        while True:
            self.check()  # reads what arrived into the inbox; fails on an error or an exit
            for i in range(len(self.conns)):
                if i not in replies and self._inbox.get(i):
                    message = self._inbox[i].pop(0)
                    if message[0] != kind:
                        self._fail(f"tensor-parallel worker rank {i + 1} sent {message[0]!r}, expected {kind!r}")
                    replies[i] = message
            if len(replies) == len(self.conns):
                self.built |= kind == "built"
                return [replies[i] for i in range(len(self.conns))]
            pending = [c for i, c in enumerate(self.conns) if i not in replies]
            if not wait(pending + [p.sentinel for p in self.processes], timeout=_STARTUP_TIMEOUT_S):
                self._fail(f"no answer from the tensor-parallel workers in {_STARTUP_TIMEOUT_S:.0f} s")

    def build(self, num_blocks: int, num_host_blocks: int) -> None:
        for conn in self.conns:
            conn.send(("build", num_blocks, num_host_blocks))

    # ---- steps -----------------------------------------------------------------------------------

    def send_step(self, plan, layout, extra_rows, previous_tokens) -> None:
        with self._lock:
            self._send_step(plan, layout, extra_rows, previous_tokens)

    def _send_step(self, plan, layout, extra_rows, previous_tokens) -> None:
        if self._stopped:
            raise WorkerFailedError("the tensor-parallel workers were stopped (LLM.shutdown()); create a new LLM")
        self.check()
        if self.in_step:  # the driver's part of the last step raised (or was interrupted) after sending it
            self._fail("a step was sent to the tensor-parallel workers but not finished on the driver (an error or "
                       "an interrupt): the ranks are out of step; create a new LLM")
        header, payload = encode(plan, layout, extra_rows, previous_tokens)
        self.in_step = True  # until the driver's own shard has run it (TensorParallelRunner.execute)
        oversized = payload.numel() > self.ring.capacity()
        header[15] = int(oversized)
        try:
            self.ring.write(header, None if oversized else payload, self.check)
            if oversized:
                dist.broadcast(payload, src=0, group=self.control)
            if int(header[14]):
                dist.broadcast(previous_tokens[:int(header[14])].contiguous(), src=0)
        except RuntimeError as error:
            self.explain(error)

    def check(self) -> None:
        """WorkerFailedError if a worker failed or exited (the group is unusable from then on)."""
        if self.error is not None:
            raise WorkerFailedError(self.error)
        self._collect_errors()
        for rank, process in enumerate(self.processes, start=1):
            if process.exitcode is not None and not self._stopped:
                self._collect_errors()  # a "started" sent just before the exit
                if rank - 1 not in self._started and process.exitcode == 1:  # an exception while starting
                    self._fail(f"tensor-parallel worker rank {rank} exited with code {process.exitcode} before it "
                               f"started: a spawned worker first imports the main module, so a script that "
                               f"creates the LLM at import time needs it under `if __name__ == \"__main__\":` "
                               f"(the worker's own error is printed above)")
                self._fail(f"tensor-parallel worker rank {rank} exited with code {process.exitcode}")

    def explain(self, error: BaseException, wait_s: float = 5.0) -> None:
        """A collective failed: the group is unusable. Raises WorkerFailedError naming the worker that
        failed or exited (waiting up to wait_s for it to say so), else the collective's error."""
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            self.check()
            time.sleep(0.05)
        self._fail(f"a tensor-parallel collective failed: {error}")

    def _collect_errors(self) -> None:
        """Reads every message waiting on the pipes: an error fails the group, the others are kept
        for gather()."""
        for i, conn in enumerate(self.conns):
            try:
                while conn.poll():
                    message = conn.recv()
                    if message[0] == "error":
                        self._fail(f"tensor-parallel worker rank {i + 1} failed {message[1]}", message[2])
                    if message[0] == "started":
                        self._started.add(i)
                        continue
                    self._inbox.setdefault(i, []).append(message)
            except (EOFError, OSError):
                pass  # it exited: check() says how

    def _fail(self, message: str, detail: str | None = None) -> None:
        if self.error is None:
            self.error = message
            if detail:
                print(f"[pagedcore] {message}\n{detail}", file=sys.stderr)
        raise WorkerFailedError(self.error)

    # ---- shutdown --------------------------------------------------------------------------------

    def shutdown(self) -> None:
        """Stops the workers (a stop message when they can take one, else terminate) and leaves the group.
        Interrupted mid-step (Ctrl-C), the workers may wait in that step's collectives, where a stop
        message would never match: they are terminated instead."""
        with self._lock:
            if self._stopped:
                return
            # Clean: every worker waits for a message in the ring (not yet built: they wait on their pipe).
            clean = self.error is None and self.built and not self.in_step
            if clean:
                header = torch.zeros(_HEADER, dtype=torch.int64)
                header[0] = _STOP
                try:
                    self.ring.write(header, None, self.check)
                except WorkerFailedError:
                    clean = False
            self._stopped = True
        WorkerGroup._stop_processes(self.processes, self.conns, wait_s=10.0 if clean else 0.0)
        self.ring.close(unlink=True)
        if dist.is_initialized():
            dist.destroy_process_group()

    @staticmethod
    def _stop_processes(processes, conns, wait_s: float = 10.0) -> None:
        for process in processes:
            process.join(wait_s)
            if process.is_alive():
                process.terminate()
                process.join(5)
            if process.is_alive():
                process.kill()
                process.join()
        for conn in conns:
            conn.close()


class TensorParallelRunner:
    """The driver's runner: each execute() first sends the plan to the workers, then runs rank 0's
    shard; everything else is the wrapped ModelRunner's."""

    def __init__(self, runner: ModelRunner, workers: WorkerGroup):
        self.runner = runner
        self.workers = workers

    def __getattr__(self, name):
        return getattr(self.runner, name)

    @torch.inference_mode()
    def execute(self, plan, extra_rows: np.ndarray | None = None,
                previous_tokens: torch.Tensor | None = None) -> torch.Tensor:
        layout, _ = self.runner.input_layout(plan)
        self.workers.send_step(plan, layout, extra_rows, previous_tokens)
        try:
            logits = self.runner.execute(plan, extra_rows, previous_tokens)
            self.workers.in_step = False
            return logits
        except WorkerFailedError:
            raise
        except RuntimeError as error:
            if self.workers.size > 1 and _is_collective_error(error):
                self.workers.explain(error)  # a worker that failed mid-step is the cause: name it
            raise


def _is_collective_error(error: RuntimeError) -> bool:
    text = str(error).lower()
    return any(word in text for word in ("gloo", "nccl", "connection", "peer", "timed out", "timeout"))
