"""Tensor-parallel model shards (model_executor/parallel.py) over torch.distributed with gloo on
CPU: N processes, each building its rank's shard of a tiny HF checkpoint and running the engine's
scheduler and step loop in lockstep (every rank plans the same steps; the logits are all-gathered,
so every rank samples the same greedy tokens), give exactly the greedy tokens of the unsharded
model in float32, on the Llama, Mistral, Qwen2 (qkv bias) and Qwen3 (qk-norm) test models,
including fewer KV heads than ranks.

This checks the sharded math; the executor that starts the ranks for LLM(tensor_parallel_size=N)
is not built yet (LLM still refuses tensor_parallel_size above 1)."""

from __future__ import annotations

import dataclasses
import os
import socket

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


def test_each_rank_reads_only_its_slices(tmp_path):
    """safetensors: each tensor's slice is read lazily (get_slice), and equals the whole tensor's slice;
    GGUF (the default model, 9 heads / 3 KV heads over 3 ranks): cut after dequantization. A rank's
    shard is built without a process group (loading needs no collective)."""
    from pagedcore.loaders.model_loader import default_model_path
    from pagedcore.model_executor.model import LlamaForCausalLM

    save_tiny_model(tmp_path, "qwen2", with_tokenizer=False, vocab_size=509)
    source = resolve_model(str(tmp_path))
    whole = dict(source.iter_weights())
    with torch.device("meta"):
        shard = LlamaForCausalLM(source.config, MAX_MODEL_LEN, TensorParallel(1, 2))
    sliced = dict(source.iter_weights(shard=shard.shard_spec))
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
