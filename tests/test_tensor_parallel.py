"""Tensor-parallel model shards (model_executor/parallel.py) over torch.distributed with gloo on
CPU: N processes, each building its rank's shard of a tiny HF checkpoint and running the engine's
scheduler and step loop in lockstep (every rank plans the same steps; the logits are all-gathered,
so every rank samples the same greedy tokens), give exactly the greedy tokens of the unsharded
model in float32, on the Llama, Mistral, Qwen2 (qkv bias) and Qwen3 (qk-norm) test models,
including fewer KV heads than ranks.

Then the executor: LLM(tensor_parallel_size=N) starts N - 1 worker processes and gives the tokens of
tensor_parallel_size=1 (greedy; prefix caching, preemption, n > 1, the overlapped loop); the server answers
the openai client with TP=2; a worker that fails or dies fails requests with an error naming it and
/health turns 503; no worker process outlives the driver (normal exit, worker exception, SIGTERM)."""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from tiny_models import save_tiny_model

from pagedcore import _core
from pagedcore.engine.engine import LLMEngine
from pagedcore.engine.llm import LLM
from pagedcore.engine.sampling_params import SamplingParams
from pagedcore.loaders.model_loader import build_model, resolve_model
from pagedcore.model_executor.kv_cache import allocate_kv_cache
from pagedcore.model_executor.model_runner import ModelRunner
from pagedcore.model_executor.parallel import TensorParallel
from pagedcore.model_executor.sampler import Sampler

MAX_MODEL_LEN, BLOCK_SIZE, NUM_BLOCKS = 128, 16, 14  # 14 blocks: the 4 prompts below preempt
PARAMS = SamplingParams(temperature=0, max_tokens=20, ignore_eos=True)


def _prompts(vocab_size: int) -> list[list[int]]:
    generator = torch.Generator().manual_seed(7)
    shared = torch.randint(3, vocab_size, (40,), generator=generator).tolist()
    return [shared + torch.randint(3, vocab_size, (n,), generator=generator).tolist() for n in (5, 23, 41, 60)]


def _run_rank(rank: int, size: int, port: int, model_dir: str, results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=size)
    try:
        tp = TensorParallel(rank, size)
        source = resolve_model(model_dir)
        config = source.config
        model = build_model(source, dtype=torch.float32, device=torch.device("cpu"), max_positions=MAX_MODEL_LEN,
                            load_format="auto", seed=0, tp=tp)
        attn = model.model.layers[0].self_attn
        local = dataclasses.replace(config, num_key_value_heads=attn.num_kv_heads)
        caches = allocate_kv_cache(local, NUM_BLOCKS, BLOCK_SIZE, torch.float32, torch.device("cpu"))
        scheduler = _core.Scheduler(_core.SchedulerConfig(
            num_blocks=NUM_BLOCKS, block_size=BLOCK_SIZE, max_num_seqs=8, max_num_batched_tokens=64,
            max_model_len=MAX_MODEL_LEN, enable_prefix_caching=True, preemption_mode=_core.PreemptionMode.RECOMPUTE))
        runner = ModelRunner(model, caches, torch.device("cpu"), max_num_seqs=8,
                             max_blocks_per_seq=MAX_MODEL_LEN // BLOCK_SIZE, use_cuda_graphs=False)
        engine = LLMEngine(scheduler, runner, Sampler(config.vocab_size, torch.Generator().manual_seed(0)), None,
                           config.eos_token_ids, MAX_MODEL_LEN)
        ids = [engine.add_request(None, prompt, PARAMS) for prompt in _prompts(config.vocab_size)]
        done = {}
        while engine.has_unfinished():
            done.update({r.request_id: [list(s.token_ids) for s in r.sequences] for r in engine.step()})
        results[rank] = ([done[i] for i in ids], scheduler.stats().num_preemptions,
                         (attn.num_heads, attn.num_kv_heads, attn.first_kv_head))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("model_type,size,overrides", [
    ("llama", 2, {}),
    ("mistral", 2, {}),
    ("qwen2", 2, {}),
    ("qwen3", 2, {}),
    ("llama", 4, {}),  # 2 KV heads over 4 ranks: each KV head held by two ranks
    ("qwen2", 2, {"num_key_value_heads": 1}),  # one KV head, replicated
])
def test_sharded_ranks_give_the_unsharded_greedy_tokens(tmp_path, model_type, size, overrides):
    save_tiny_model(tmp_path, model_type, with_tokenizer=False, vocab_size=509, **overrides)  # 509: uneven slices
    whole = LLM(str(tmp_path), device="cpu", max_model_len=MAX_MODEL_LEN, block_size=BLOCK_SIZE, verbose=False,
                kv_cache_memory_bytes=NUM_BLOCKS * BLOCK_SIZE * 2 * 2 * 64 * 4 * 2)
    prompts = _prompts(whole.model.config.vocab_size)
    expected = [[c.token_ids for c in o.outputs] for o in whole.generate(prompts, PARAMS, use_tqdm=False)]
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_run_rank, args=(size, _free_port(), str(tmp_path), results), nprocs=size, join=True)
        results = dict(results)
    heads = {rank: result[2] for rank, result in results.items()}
    num_kv_heads = whole.model.config.num_key_value_heads
    assert all(h[0] == 4 // size and h[1] == max(1, num_kv_heads // size) for h in heads.values()), heads
    for rank in range(size):
        tokens, preemptions, _ = results[rank]
        assert tokens == expected, f"rank {rank}"
        assert preemptions > 0  # the tight pool preempted, as the unsharded run's did


def test_shapes_that_do_not_split_are_refused_by_name():
    with pytest.raises(ValueError, match="must divide the model's 4 attention heads"):
        TensorParallel.check(4, 2, 256, 3)
    with pytest.raises(ValueError, match="one must divide the other"):
        TensorParallel.check(12, 3, 256, 2)
    with pytest.raises(ValueError, match="intermediate size 250"):
        TensorParallel.check(4, 2, 250, 4)


def test_each_rank_reads_only_its_slices(tmp_path, monkeypatch):
    """safetensors: each tensor's slice is read lazily (get_slice: a sharded tensor is never read
    whole), and equals the whole tensor's slice; GGUF (the default model, 9 heads / 3 KV heads over 3
    ranks): cut after dequantization. A rank's shard is built without a process group (loading needs
    no collective)."""
    import safetensors.torch

    from pagedcore.loaders.model_loader import default_model_path
    from pagedcore.model_executor.model import LlamaForCausalLM

    save_tiny_model(tmp_path, "qwen2", with_tokenizer=False, vocab_size=509)
    source = resolve_model(str(tmp_path))
    whole = dict(source.iter_weights())
    with torch.device("meta"):
        shard = LlamaForCausalLM(source.config, MAX_MODEL_LEN, TensorParallel(1, 2))
    read_whole: list[str] = []
    real_open = safetensors.torch.safe_open

    class RecordingOpen:  # safe_open, recording which tensors are read whole
        def __init__(self, *args, **kwargs):
            self.handle = real_open(*args, **kwargs)

        def __enter__(self):
            self.file = self.handle.__enter__()
            return self

        def __exit__(self, *exc):
            return self.handle.__exit__(*exc)

        def keys(self):
            return self.file.keys()

        def get_slice(self, name):
            return self.file.get_slice(name)

        def get_tensor(self, name):
            read_whole.append(name)
            return self.file.get_tensor(name)

    monkeypatch.setattr(safetensors.torch, "safe_open", RecordingOpen)
    sliced = dict(source.iter_weights(shard=shard.shard_spec))
    monkeypatch.undo()
    assert read_whole and all(shard.shard_spec(n, tuple(whole[n].shape)) is None for n in read_whole)
    assert sliced.keys() == whole.keys()
    for name, tensor in sliced.items():
        spec = shard.shard_spec(name, tuple(whole[name].shape))
        assert torch.equal(tensor, whole[name] if spec is None else whole[name].narrow(*spec)), name
    assert sliced["model.embed_tokens.weight"].shape == (254, 128)  # 509 = 255 + 254 rows
    assert sliced["model.layers.0.self_attn.q_proj.bias"].shape == (128,)  # 2 of 4 heads x 64

    gguf = resolve_model(str(default_model_path()))
    full = build_model(gguf, dtype=torch.float32, device=torch.device("cpu"), max_positions=64, load_format="auto",
                       seed=0)
    rank2 = build_model(gguf, dtype=torch.float32, device=torch.device("cpu"), max_positions=64, load_format="auto",
                        seed=0, tp=TensorParallel(2, 3))
    down_full = full.model.layers[0].mlp.down_proj.weight  # [hidden, intermediate]
    down_rank2 = rank2.model.layers[0].mlp.down_proj.weight
    assert torch.equal(down_rank2, down_full[:, 2 * down_rank2.shape[1]:])
    assert rank2.model.layers[0].self_attn.num_kv_heads == 1


# ---- the executor: LLM(tensor_parallel_size=N) ------------------------------------------------

def _signal_masks(pid: int) -> str:
    """A process's ignored / caught signal masks (/proc), to tell a driver that ignores SIGINT."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError as error:
        return f"(unreadable: {error})"
    return ", ".join(line for line in lines if line.startswith(("SigIgn", "SigCgt")))


def _alive(pid: int) -> bool:
    """A process that exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _wait_gone(pids: list[int], timeout_s: float = 15.0) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.1)
    return [p for p in pids if _alive(p)]


def _tp_llm(model_dir, size: int, **kwargs) -> LLM:
    return LLM(str(model_dir), device="cpu", max_model_len=MAX_MODEL_LEN, block_size=BLOCK_SIZE, verbose=False,
               tensor_parallel_size=size, **{"kv_cache_memory_bytes": 1 << 22, **kwargs})


@pytest.mark.parametrize("model_type,size,overrides", [
    ("llama", 2, {}),
    ("mistral", 2, {}),
    ("qwen2", 2, {}),
    ("qwen3", 2, {}),
    ("llama", 4, {}),
    ("qwen2", 2, {"num_key_value_heads": 1}),
])
def test_llm_with_tensor_parallel_workers_gives_the_single_process_tokens(tmp_path, model_type, size, overrides):
    save_tiny_model(tmp_path, model_type, with_tokenizer=False, vocab_size=509, **overrides)
    prompts = _prompts(509)
    # Greedy only: a seeded draw reads the logits' last bits, which the all-reduce's summation order
    # (and the ranks' thread counts) may change.
    params = [PARAMS, SamplingParams(temperature=0, max_tokens=12, n=2, ignore_eos=True), PARAMS,
              SamplingParams(temperature=0, max_tokens=16, ignore_eos=True)]
    # A pool of 10 blocks on every rank: the four prompts preempt; the shared 40-token prefix is cached.
    kv_heads = overrides.get("num_key_value_heads", 2)
    block_bytes = BLOCK_SIZE * 2 * 2 * 64 * 4  # per KV head: K+V x 2 layers x head_dim 64 x float32
    tight = {"kv_cache_memory_bytes": 10 * block_bytes * max(1, kv_heads // size)}
    whole = LLM(str(tmp_path), device="cpu", max_model_len=MAX_MODEL_LEN, block_size=BLOCK_SIZE, verbose=False,
                kv_cache_memory_bytes=10 * block_bytes * kv_heads)
    expected = [[c.token_ids for c in o.outputs] for o in whole.generate(prompts, params, use_tqdm=False)]
    llm = _tp_llm(tmp_path, size, **tight)
    try:
        workers = llm.engine.runner.workers
        assert len(workers.processes) == size - 1 and llm.scheduler.config.num_blocks == 10
        got = [[c.token_ids for c in o.outputs] for o in llm.generate(prompts, params, use_tqdm=False)]
        assert got == expected
        assert llm.scheduler.stats().num_preemptions > 0 and llm.scheduler.stats().num_used_blocks == 0
        again = llm.generate(prompts[:1], PARAMS, use_tqdm=False)[0]  # the cached prefix, again
        assert again.outputs[0].token_ids == expected[0][0] and again.num_cached_tokens >= 32
        pids = [p.pid for p in workers.processes]
    finally:
        llm.shutdown()
    assert not _wait_gone(pids)
    assert not dist.is_initialized()


def test_what_cannot_run_is_refused_before_any_process_starts(tmp_path, monkeypatch):
    save_tiny_model(tmp_path, "llama", with_tokenizer=False, vocab_size=509)
    with pytest.raises(ValueError, match="tensor_parallel_size=3 must divide the model's 4 attention heads"):
        _tp_llm(tmp_path, 3)
    assert not mp.active_children()

    from pagedcore.engine.engine_args import EngineArgs
    from pagedcore.model_executor.parallel import check_tensor_parallel

    config = resolve_model(str(tmp_path)).config
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ValueError, match="tensor_parallel_size=2 needs 2 GPUs, one per rank; 1 visible"):
        check_tensor_parallel(EngineArgs(tensor_parallel_size=2), config, torch.device("cuda"))
    with pytest.raises(ValueError, match="runs rank r on cuda:r; pass device='cuda'"):
        check_tensor_parallel(EngineArgs(tensor_parallel_size=2, device="cuda:1"), config, torch.device("cuda", 1))
    monkeypatch.setattr(dist, "is_gloo_available", lambda: False)
    with pytest.raises(ValueError, match="needs torch.distributed's gloo backend"):
        check_tensor_parallel(EngineArgs(tensor_parallel_size=2), config, torch.device("cpu"))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(dist, "is_nccl_available", lambda: False)
    with pytest.raises(ValueError, match="on CUDA needs torch.distributed's NCCL backend"):
        check_tensor_parallel(EngineArgs(tensor_parallel_size=2), config, torch.device("cuda"))


def test_a_worker_that_raises_or_dies_fails_requests_by_name_and_leaves_nothing(tmp_path):
    save_tiny_model(tmp_path, "llama", with_tokenizer=False, vocab_size=509)
    from pagedcore.model_executor.tp_executor import WorkerFailedError

    # An exception in a worker: a step message it cannot read (command 99).
    llm = _tp_llm(tmp_path, 2)
    workers = llm.engine.runner.workers
    pids = [p.pid for p in workers.processes]
    bad = torch.zeros(16, dtype=torch.int64)
    bad[0] = 99
    workers.ring.write(bad, None, workers.check)
    with pytest.raises(WorkerFailedError, match="rank 1 failed while running a step: RuntimeError: unknown "
                                                 "tensor-parallel command 99"):
        llm.generate(_prompts(509)[:2], PARAMS, use_tqdm=False)
    assert llm.scheduler.stats().num_used_blocks == 0  # the failed request's blocks went back
    with pytest.raises(WorkerFailedError):  # and every later call fails the same way, at once
        llm.generate(_prompts(509)[:1], PARAMS, use_tqdm=False)
    llm.shutdown()
    assert not _wait_gone(pids) and not dist.is_initialized()

    # A worker killed mid-run.
    llm = _tp_llm(tmp_path, 2)
    worker = llm.engine.runner.workers.processes[0]
    os.kill(worker.pid, signal.SIGKILL)
    with pytest.raises(WorkerFailedError, match="worker rank 1 exited with code -9"):
        llm.generate(_prompts(509), PARAMS, use_tqdm=False)
    llm.shutdown()
    assert not _wait_gone([worker.pid]) and not dist.is_initialized()


_DRIVER = """
import faulthandler, signal, sys, time
faulthandler.register(signal.SIGUSR1, all_threads=True)  # the test asks for the stacks of a driver that hangs
# Ctrl-C at a terminal reaches a Python started with its KeyboardInterrupt handler. One started in the
# background by a non-interactive shell (as the test starts this one) inherits SIGINT ignored, and
# Python then installs no handler: SIGINT does nothing (the "hang" issue 17 chased in CI runs started
# so). The driver installs the handler a terminal's Python has.
signal.signal(signal.SIGINT, signal.default_int_handler)
from pagedcore import LLM, SamplingParams
llm = LLM(sys.argv[1], device="cpu", max_model_len=128, kv_cache_memory_bytes=1 << 22, verbose=False,
          tensor_parallel_size=2)
print(" ".join(str(p.pid) for p in llm.engine.runner.workers.processes), flush=True)
llm.generate([[5, 6, 7]], SamplingParams(max_tokens=4), use_tqdm=False)
print("generated", flush=True)
if sys.argv[2] == "wait":
    time.sleep(600)
while sys.argv[2] == "busy":  # interrupted mid-step, most likely
    llm.generate([[5, 6, 7]] * 8, SamplingParams(max_tokens=100, ignore_eos=True), use_tqdm=False)
"""


@pytest.mark.parametrize("ending", ["exit", "sigterm", "sigkill", "ctrl-c"])
def test_no_worker_outlives_its_driver(tmp_path, ending):
    """The driver exits normally (interpreter exit stops the workers), is interrupted with Ctrl-C
    while generating (a worker waiting in the step's collectives is terminated, not sent a stop it
    could never read), or is killed with SIGTERM or SIGKILL (the workers see their parent gone)."""
    import subprocess
    import sys

    save_tiny_model(tmp_path, "llama", with_tokenizer=False, vocab_size=509)
    mode = {"exit": "exit", "ctrl-c": "busy"}.get(ending, "wait")
    stderr_path = tmp_path / "driver_stderr.txt"
    with open(stderr_path, "w") as stderr:
        # Started with SIGINT ignored (by a shell that then execs it, keeping the pid), whatever this
        # test's own disposition: the same run in every harness.
        driver = subprocess.Popen(["sh", "-c", 'trap "" INT; exec "$0" "$@"', sys.executable, "-c", _DRIVER,
                                   str(tmp_path), mode], stdout=subprocess.PIPE, stderr=stderr, text=True)
    try:
        pids = [int(p) for p in driver.stdout.readline().split()]
        assert len(pids) == 1 and _alive(pids[0])
        assert driver.stdout.readline().strip() == "generated"
        if ending != "exit":
            time.sleep(0.5)
            driver.send_signal({"sigterm": signal.SIGTERM, "sigkill": signal.SIGKILL, "ctrl-c": signal.SIGINT}[ending])
        try:
            driver.wait(30)
        except subprocess.TimeoutExpired:
            driver.send_signal(signal.SIGUSR1)  # its threads' stacks, into its stderr (the worker's too:
            time.sleep(1)                       # it shares the driver's stderr)
            if _alive(pids[0]):
                os.kill(pids[0], signal.SIGUSR1)
            time.sleep(2)
            pytest.fail(f"the driver did not exit within 30 s ({ending}); its signal masks "
                        f"{_signal_masks(driver.pid)}; its stderr:\n{stderr_path.read_text()[-6000:]}")
    finally:
        driver.kill()
    if ending == "exit":
        assert driver.returncode == 0
    if ending == "ctrl-c":  # an uncaught KeyboardInterrupt: Python's traceback, then it ends itself by SIGINT
        assert driver.returncode == -signal.SIGINT and "KeyboardInterrupt" in stderr_path.read_text()
    assert not _wait_gone(pids), f"worker outlived the driver ({ending})"


def test_a_script_without_the_main_guard_is_told_about_it(tmp_path):
    """Found in review: a script creating LLM(tensor_parallel_size=2) at import time failed with only
    "worker rank 1 exited with code 1" (each spawned worker imports the script first, which tries to
    start workers of its own and fails)."""
    import subprocess
    import sys

    save_tiny_model(tmp_path, "llama", with_tokenizer=False, vocab_size=509)
    script = tmp_path / "unguarded.py"
    script.write_text("import sys\nfrom pagedcore import LLM\n"
                      "LLM(sys.argv[1], device='cpu', max_model_len=128, kv_cache_memory_bytes=1 << 22, verbose=False,\n"
                      "    tensor_parallel_size=2)\n")
    run = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, timeout=240)
    assert run.returncode != 0
    assert "exited with code 1 before it started" in run.stderr
    assert 'if __name__ == "__main__":' in run.stderr


def test_the_server_with_two_ranks_answers_the_openai_client_and_reports_a_dead_worker(tmp_path):
    import httpx
    import openai
    from server_harness import RunningServer, write_chat_template

    from pagedcore.server.app import ServerConfig

    save_tiny_model(tmp_path, "llama")
    write_chat_template(tmp_path)
    llm = _tp_llm(tmp_path, 2)
    server = RunningServer(llm, ServerConfig(model_name="tiny"))
    try:
        client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="none")
        reply = client.completions.create(model="tiny", prompt="hello there", max_tokens=8, temperature=0)
        single = LLM(str(tmp_path), device="cpu", max_model_len=128, verbose=False, kv_cache_memory_bytes=1 << 22)
        assert reply.choices[0].text == single.generate("hello there", SamplingParams(temperature=0, max_tokens=8),
                                                       use_tqdm=False)[0].outputs[0].text
        chat = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}],
                                              max_tokens=6, stream=True)
        assert sum(1 for chunk in chat if chunk.choices and chunk.choices[0].delta.content) > 0
        assert httpx.get(f"{server.base_url}/health").status_code == 200

        os.kill(llm.engine.runner.workers.processes[0].pid, signal.SIGKILL)
        with pytest.raises(openai.APIError):
            client.completions.create(model="tiny", prompt="hello", max_tokens=8, timeout=30)
        server.wait_until(lambda: httpx.get(f"{server.base_url}/health").status_code == 503, what="/health 503")
    finally:
        server.stop()
        llm.shutdown()
    assert not dist.is_initialized()


def test_messages_read_while_checking_for_errors_are_not_lost(monkeypatch):
    """check() reads the workers' pipes for errors; a "built" it reads there must still reach gather()
    (it was dropped once, and LLM(tensor_parallel_size=4) waited forever in CI)."""
    import multiprocessing

    from pagedcore.model_executor import tp_executor

    class Idle:  # a live worker process, as far as check() and wait() can tell
        exitcode = None

        def __init__(self):
            self.sentinel, self._write_end = os.pipe()

    monkeypatch.setattr(tp_executor, "_STARTUP_TIMEOUT_S", 2.0)
    group = tp_executor.WorkerGroup.__new__(tp_executor.WorkerGroup)
    pipes = [multiprocessing.Pipe() for _ in range(2)]
    group.conns, group.processes = [driver for driver, _ in pipes], [Idle(), Idle()]
    group._inbox, group._stopped, group.error, group.built = {}, False, None, False
    pipes[0][1].send(("built",))
    time.sleep(0.1)
    group.check()  # reads rank 1's "built" while looking for errors
    pipes[1][1].send(("built",))
    assert group.gather("built") == [("built",), ("built",)]
    pipes[0][1].send(("error", "while running a step: boom", "traceback"))
    time.sleep(0.1)
    with pytest.raises(tp_executor.WorkerFailedError, match="rank 1 failed while running a step: boom"):
        group.check()


def test_messages_too_large_for_a_ring_slot_go_as_broadcasts(tmp_path, monkeypatch):
    """A step message larger than a ring slot travels as a gloo broadcast (the header, in the ring,
    says so); the tokens are the same either way."""
    import pagedcore.engine.llm as llm_module

    save_tiny_model(tmp_path, "llama", with_tokenizer=False, vocab_size=509)
    expected = None
    for slot_bytes in (None, 8 * 16 + 4 * 120):  # the default, then room for decode steps of a few rows only
        if slot_bytes is not None:
            monkeypatch.setattr(llm_module, "_ring_slot_bytes", lambda args, max_model_len: slot_bytes)
        llm = _tp_llm(tmp_path, 2)
        try:
            sent, capacity = [], llm.engine.runner.workers.ring.capacity()
            encode = llm.engine.runner.workers.send_step.__globals__["encode"]

            def recording(*args):
                header, payload = encode(*args)
                sent.append(payload.numel() > capacity)
                return header, payload

            monkeypatch.setitem(llm.engine.runner.workers.send_step.__globals__, "encode", recording)
            tokens = [o.outputs[0].token_ids for o in llm.generate(_prompts(509), PARAMS, use_tqdm=False)]
        finally:
            llm.shutdown()
            monkeypatch.undo()
        if expected is None:
            expected = tokens
            assert not any(sent)
        else:
            assert tokens == expected and any(sent) and not all(sent)


def test_dummy_weights_run_with_two_ranks(tmp_path):
    """load_format="dummy" (the benchmarks' random weights at a real shape) builds each rank's shard."""
    save_tiny_model(tmp_path, "qwen3", with_tokenizer=False, vocab_size=509)
    llm = _tp_llm(tmp_path, 2, load_format="dummy")
    try:
        output = llm.generate([[5, 6, 7]], PARAMS, use_tqdm=False)[0].outputs[0]
        assert len(output.token_ids) == PARAMS.max_tokens
        assert llm.engine.runner.runner.model.model.layers[0].self_attn.num_heads == 2  # 4 heads over 2 ranks
    finally:
        llm.shutdown()


def test_a_driver_error_mid_step_is_not_followed_by_a_mismatched_step(tmp_path, monkeypatch):
    """When the driver's own part of a step raises after the workers got the step, they wait in its
    collectives: the next step would pair with them (a hang or wrong sums), so it is refused by name;
    after shutdown() a step is refused too, and nothing is left running."""
    from pagedcore.model_executor.tp_executor import WorkerFailedError

    save_tiny_model(tmp_path, "llama", with_tokenizer=False, vocab_size=509)
    llm = _tp_llm(tmp_path, 2)
    pids = [p.pid for p in llm.engine.runner.workers.processes]
    inner = llm.engine.runner.runner

    def failing(*args, **kwargs):
        raise RuntimeError("out of memory on the driver")

    monkeypatch.setattr(inner, "execute", failing)
    with pytest.raises(RuntimeError, match="out of memory on the driver"):
        llm.generate(_prompts(509)[:1], PARAMS, use_tqdm=False)
    monkeypatch.undo()
    with pytest.raises(WorkerFailedError, match="the ranks are out of step; create a new LLM"):
        llm.generate(_prompts(509)[:1], PARAMS, use_tqdm=False)
    llm.shutdown()
    assert not _wait_gone(pids, timeout_s=5) and not dist.is_initialized()

    llm = _tp_llm(tmp_path, 2)
    llm.shutdown()
    with pytest.raises(WorkerFailedError, match="stopped"):
        llm.generate(_prompts(509)[:1], PARAMS, use_tqdm=False)
