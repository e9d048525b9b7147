"""One rank's share of the engine: its model shard, KV memory plan, KV cache and model runner. The
single-process engine builds rank 0 of 1 with these; with tensor parallelism the driver (rank 0,
in the LLM's process) and every worker process (ranks 1..N-1, worker_main) build theirs the same way.

A worker runs no scheduler and no sampler: it executes the plans the driver sends (tp_executor.py)
and takes part in the model's collectives, until the driver says stop or goes away."""

from __future__ import annotations

import dataclasses
import faulthandler
import os
import signal
import threading
import time
import traceback
from dataclasses import dataclass

import torch

from pagedcore.engine.engine_args import EngineArgs
from pagedcore.loaders.config import ModelConfig
from pagedcore.loaders.model_loader import build_model, resolve_model
from pagedcore.model_executor.kv_cache import (KVCachePlan, allocate_kv_cache, blocks_per_seq, kv_budget_bytes,
                                               plan_kv_cache)
from pagedcore.model_executor.model_runner import ModelRunner
from pagedcore.model_executor.parallel import TensorParallel


@dataclass
class Shard:
    model: torch.nn.Module
    config: ModelConfig  # this rank's view: its number of KV heads
    kv_plan: KVCachePlan  # what this rank's memory buys


def build_shard(args: EngineArgs, source, device: torch.device, dtype: torch.dtype, max_model_len: int,
                tp: TensorParallel | None) -> Shard:
    """Loads this rank's model shard and plans its KV memory (the block count is agreed over ranks later)."""
    config = source.config
    model = build_model(source, dtype=dtype, device=device, max_positions=max_model_len,
                        load_format=args.load_format, seed=args.seed, tp=tp,
                        quantization=args.quantization or config.quantization)
    local = config
    if tp is not None:
        local = dataclasses.replace(config, num_key_value_heads=model.model.layers[0].self_attn.num_kv_heads)
    budget = kv_budget_bytes(config, device, dtype, gpu_memory_utilization=args.gpu_memory_utilization,
                             kv_cache_memory_bytes=args.kv_cache_memory_bytes,
                             max_num_batched_tokens=args.max_num_batched_tokens, max_num_seqs=args.max_num_seqs)
    plan = plan_kv_cache(local, block_size=args.block_size, dtype=args.resolve_kv_cache_dtype(dtype),
                         budget_bytes=budget,
                         max_model_len=max_model_len)
    return Shard(model, local, plan)


def build_runner(args: EngineArgs, shard: Shard, num_blocks: int, num_host_blocks: int, device: torch.device,
                 dtype: torch.dtype, max_model_len: int) -> ModelRunner:
    """Allocates the KV cache (num_blocks, the same on every rank) and the runner (CUDA graphs captured,
    or once the first batch has set calculated FP8 scales)."""
    cache_dtype = args.resolve_kv_cache_dtype(dtype)
    kv_caches = allocate_kv_cache(shard.config, num_blocks, args.block_size, cache_dtype, device)
    host_kv_caches = (allocate_kv_cache(shard.config, num_host_blocks, args.block_size, cache_dtype,
                                        torch.device("cpu"), pin_memory=True) if num_host_blocks else None)
    if cache_dtype == torch.float8_e4m3fn:
        # Each layer's scales: the first batch's (calculate_kv_scales), else the checkpoint's, else 1.0.
        for layer, cache in enumerate(kv_caches):
            cache.k_scale, cache.v_scale = shard.model.kv_scales.get(layer, (1.0, 1.0))
            cache.calibrate = args.calculate_kv_scales
    return ModelRunner(shard.model, kv_caches, device, host_kv_caches=host_kv_caches, max_num_seqs=args.max_num_seqs,
                       max_blocks_per_seq=blocks_per_seq(max_model_len, args.block_size),
                       use_cuda_graphs=not args.enforce_eager, max_num_batched_tokens=args.max_num_batched_tokens)


def rank_device(device_type: str, rank: int) -> torch.device:
    """Rank r runs on cuda:r (or the CPU)."""
    if device_type == "cuda":
        torch.cuda.set_device(rank)
        return torch.device("cuda", rank)
    return torch.device("cpu")


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker process needs to build its rank (picklable: it crosses the spawn)."""
    args: EngineArgs
    source_path: str  # the resolved model (HF directory or .gguf file)
    device_type: str
    dtype: torch.dtype
    max_model_len: int
    size: int
    init_method: str  # the process group's rendezvous (tcp://127.0.0.1:PORT)
    backend: str  # nccl | gloo
    timeout_s: float
    cpu_threads: int


def _exit_with_parent(parent_pid: int) -> None:
    """A worker never outlives the driver (killed, or gone without saying stop)."""
    while True:
        if os.getppid() != parent_pid:
            os._exit(1)
        time.sleep(0.2)


def worker_main(rank: int, spec: WorkerSpec, conn, parent_pid: int, ring) -> None:
    """A worker process: joins the group, builds its rank, reports its block count, allocates what the
    driver decided, then executes the step messages of `ring` (tp_executor.StepRing) until told to
    stop. Failures go back over `conn`."""
    import datetime

    import torch.distributed as dist

    from pagedcore.model_executor import tp_executor

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the driver's to handle; it stops the workers
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # kill -USR1 PID: this worker's stacks on stderr
    threading.Thread(target=_exit_with_parent, args=(parent_pid,), daemon=True).start()
    conn.send(("started",))  # the spawned process got here: its start (importing the main module) worked
    stage = "joining the process group"
    try:
        torch.set_num_threads(spec.cpu_threads)
        device = rank_device(spec.device_type, rank)
        dist.init_process_group(spec.backend, init_method=spec.init_method, rank=rank, world_size=spec.size,
                                timeout=datetime.timedelta(seconds=spec.timeout_s))
        control = dist.new_group(backend="gloo") if spec.backend != "gloo" else None
        stage = "loading its model shard"
        source = resolve_model(spec.source_path)
        shard = build_shard(spec.args, source, device, spec.dtype, spec.max_model_len, TensorParallel(rank, spec.size))
        conn.send(("ready", shard.kv_plan.num_blocks, shard.kv_plan.plan.bytes_per_block))
        kind, num_blocks, num_host_blocks = conn.recv()
        if kind != "build":
            return
        stage = "allocating its KV cache"
        runner = build_runner(spec.args, shard, num_blocks, num_host_blocks, device, spec.dtype, spec.max_model_len)
        conn.send(("built",))
        stage = "running a step"
        tp_executor.serve_steps(runner, device, ring, rank, control)
    except Exception as error:  # reported to the driver, which fails its requests with it
        try:
            conn.send(("error", f"while {stage}: {type(error).__name__}: {error}", traceback.format_exc()))
        except (OSError, ValueError):
            pass
        raise SystemExit(1) from None
    finally:
        ring.close(unlink=False)
        if dist.is_initialized():
            dist.destroy_process_group()
