"""Model equivalence on a CUDA device in bfloat16 and float16: the engine (CUDA kernels, decode from
CUDA graphs or eager) against HF transformers in float32 on the same weights.

Half precision legitimately flips near-tied greedy choices, so exact token equality is not the
criterion. Instead every token the engine picks must be (near) the float32 reference's argmax at
that position, teacher-forcing the reference with the engine's own tokens, and its log-probability
must agree with the reference's within a tolerance set once per dtype."""

import pytest
import torch
from tiny_models import save_tiny_model

from pagedcore.engine.llm import LLM
from pagedcore.engine.sampling_params import SamplingParams

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

NUM_TOKENS = 32
# Max gap between the reference's best log-probability and that of the engine's token, and max
# |engine logprob - reference logprob| for the engine's token, per dtype.
TOLERANCE = {torch.bfloat16: 0.15, torch.float16: 0.05}
VARIANTS = ["llama", "mistral", "qwen2", "qwen3"]


def _reference_logprobs(hf_model, prompt: list[int], generated: list[int]) -> torch.Tensor:
    """float32 log-probabilities [len(generated), vocab] of each generated position, teacher-forced."""
    ids = torch.tensor([prompt + generated])
    with torch.no_grad():
        logits = hf_model(ids).logits[0, len(prompt) - 1:-1].float()
    return logits.log_softmax(-1)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("enforce_eager", [False, True], ids=["cuda-graphs", "eager"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_tiny_model_matches_float32_transformers_within_tolerance(tmp_path, variant, dtype, enforce_eager):
    hf_model = save_tiny_model(tmp_path, variant, with_tokenizer=False, vocab_size=512)
    llm = LLM(str(tmp_path), device="cuda", dtype=dtype, kv_cache_memory_bytes=64 << 20, max_model_len=1024,
              enforce_eager=enforce_eager, verbose=False)
    generator = torch.Generator().manual_seed(2)
    # Mixed lengths, one long enough for split-KV decode, batched together.
    prompts = [torch.randint(3, 512, (n,), generator=generator).tolist() for n in (1, 5, 17, 40, 97, 700)]
    params = SamplingParams(temperature=0, max_tokens=NUM_TOKENS, ignore_eos=True, logprobs=0)
    tol = TOLERANCE[dtype]
    for prompt, output in zip(prompts, llm.generate(prompts, params, use_tqdm=False)):
        completion = output.outputs[0]
        assert len(completion.token_ids) == NUM_TOKENS
        reference = _reference_logprobs(hf_model, prompt, completion.token_ids)
        chosen = reference.gather(1, torch.tensor(completion.token_ids)[:, None])[:, 0]
        gap = reference.max(-1).values - chosen
        assert gap.max() <= tol, f"engine token off the reference argmax by {gap.max():.3f} at {gap.argmax()}"
        ours = torch.tensor([entry[token].logprob
                             for entry, token in zip(completion.logprobs, completion.token_ids)])
        assert (ours - chosen).abs().max() <= tol, (ours - chosen).abs().max()


def test_prefix_caching_and_preemption_keep_outputs_close_on_gpu(tmp_path):
    """bf16 on GPU: prefix caching on/off and a pool small enough to preempt (by recompute or by swapping
    to host memory) give the same greedy text
    wherever the reference is not near-tied (checked through the same teacher-forced criterion)."""
    hf_model = save_tiny_model(tmp_path, "llama", with_tokenizer=False, vocab_size=512)
    generator = torch.Generator().manual_seed(3)
    system = torch.randint(3, 512, (64,), generator=generator).tolist()
    prompts = [system + torch.randint(3, 512, (n,), generator=generator).tolist() for n in (3, 9, 30, 31)]
    params = SamplingParams(temperature=0, max_tokens=NUM_TOKENS, ignore_eos=True)
    runs = {
        "cached": dict(enable_prefix_caching=True, kv_cache_memory_bytes=64 << 20),
        "uncached": dict(enable_prefix_caching=False, kv_cache_memory_bytes=64 << 20),
        # 2 layers x 2 KV heads x 64 dims x 2 (K, V) x 2 bytes x 16 tokens = 16 KiB/block; 12 blocks.
        "preempting": dict(enable_prefix_caching=True, kv_cache_memory_bytes=12 * 16 * 1024),
        "swapping": dict(enable_prefix_caching=True, kv_cache_memory_bytes=12 * 16 * 1024, preemption_mode="swap",
                         swap_space=0.01),
    }
    for name, kwargs in runs.items():
        llm = LLM(str(tmp_path), device="cuda", dtype=torch.bfloat16, max_model_len=128, verbose=False, **kwargs)
        outputs = llm.generate(prompts, params, use_tqdm=False)
        if name in ("preempting", "swapping"):
            assert sum(o.metrics.num_preemptions for o in outputs) > 0
        if name == "swapping":
            runner = llm.engine.runner
            assert runner.num_blocks_swapped_out > 0
            assert runner.num_blocks_swapped_in == runner.num_blocks_swapped_out
            assert llm.scheduler.num_free_host_blocks == llm.scheduler.config.num_host_blocks
        for prompt, output in zip(prompts, outputs):
            tokens = output.outputs[0].token_ids
            reference = _reference_logprobs(hf_model, prompt, tokens)
            chosen = reference.gather(1, torch.tensor(tokens)[:, None])[:, 0]
            assert (reference.max(-1).values - chosen).max() <= TOLERANCE[torch.bfloat16], name


@pytest.mark.parametrize("max_num_batched_tokens", [48, 512])
@pytest.mark.parametrize("variant", VARIANTS)
def test_mixed_steps_through_piecewise_graphs_match_transformers(tmp_path, variant, max_num_batched_tokens):
    """Prefill chunks beside decode rows, every step of up to 512 tokens that is not decode-only run
    by the piecewise CUDA graphs (attention eager between the captured pieces): every token within
    the bf16 tolerance of the float32 reference. 48 tokens a step: chunks of prompts beside decode
    rows (pieces of 48 and 16 rows); 512: whole prompts at once, in several padded sizes."""
    hf_model = save_tiny_model(tmp_path, variant, with_tokenizer=False, vocab_size=512)
    llm = LLM(str(tmp_path), device="cuda", dtype=torch.bfloat16, kv_cache_memory_bytes=64 << 20, max_model_len=512,
              max_num_batched_tokens=max_num_batched_tokens, max_num_seqs=4, verbose=False)
    runner = llm.engine.runner
    pieces = runner.piecewise
    assert pieces is not None and sorted(pieces.graphs) == pieces.sizes and pieces.max_tokens == max_num_batched_tokens
    mixed, piecewise = [], []
    execute, run = runner.execute, pieces.run

    def counting_execute(plan, *args, **kwargs):
        if plan.num_decode_seqs != plan.num_seqs:
            mixed.append(plan.num_tokens)
        return execute(plan, *args, **kwargs)

    runner.execute = counting_execute
    pieces.run = lambda inputs, meta: piecewise.append(inputs.input_ids.shape[0]) or run(inputs, meta)
    generator = torch.Generator().manual_seed(6)
    # max_num_seqs=4: later prompts wait and join as earlier ones finish, so prefills keep mixing in.
    prompts = [torch.randint(3, 512, (n,), generator=generator).tolist() for n in (1, 7, 16, 33, 90, 300, 70, 5)]
    params = [SamplingParams(temperature=0, max_tokens=NUM_TOKENS + 3 * i, ignore_eos=True, logprobs=0)
              for i in range(len(prompts))]
    tol = TOLERANCE[torch.bfloat16]
    for prompt, output in zip(prompts, llm.generate(prompts, params, use_tqdm=False)):
        completion = output.outputs[0]
        reference = _reference_logprobs(hf_model, prompt, completion.token_ids)
        chosen = reference.gather(1, torch.tensor(completion.token_ids)[:, None])[:, 0]
        gap = reference.max(-1).values - chosen
        assert gap.max() <= tol, f"engine token off the reference argmax by {gap.max():.3f} at {gap.argmax()}"
        ours = torch.tensor([entry[token].logprob for entry, token in zip(completion.logprobs, completion.token_ids)])
        assert (ours - chosen).abs().max() <= tol, (ours - chosen).abs().max()
    assert piecewise == mixed and len(mixed) >= 4, (mixed, piecewise)
    padded = {next(t for t in pieces.sizes if t >= n) for n in mixed}
    assert len(padded) >= 2, padded  # more than one captured size replayed


def test_eager_decode_keeps_one_split_kv_workspace(tmp_path):
    """Eager steps choose the split count once per step and share one zero-filled workspace across
    layers and steps (not a fresh zeroed buffer per layer call); its split counters stay at zero."""
    save_tiny_model(tmp_path, "llama", with_tokenizer=False, vocab_size=512)
    llm = LLM(str(tmp_path), device="cuda", dtype=torch.bfloat16, kv_cache_memory_bytes=64 << 20, max_model_len=1024,
              enforce_eager=True, verbose=False)
    generator = torch.Generator().manual_seed(4)
    params = SamplingParams(temperature=0, max_tokens=4, ignore_eos=True)
    llm.generate([torch.randint(3, 512, (900,), generator=generator).tolist()], params, use_tqdm=False)
    workspace = llm.engine.runner.workspace
    assert workspace is not None, "a 900-token decode of one sequence should run with split-KV"
    llm.generate([torch.randint(3, 512, (800,), generator=generator).tolist()], params, use_tqdm=False)
    assert llm.engine.runner.workspace is workspace
    torch.cuda.synchronize()
    assert not workspace[:workspace.numel() // 33 // 16 * 16].any()  # split_counter_region_bytes


@pytest.mark.parametrize("enforce_eager", [False, True], ids=["graphs", "eager"])
def test_overlapped_loop_gives_the_synchronous_loops_tokens_on_gpu(tmp_path, enforce_eager):
    """The overlapped loop (decode inputs taken on the device from the previous step's sampled tokens,
    into CUDA graphs' static inputs too) gives exactly the synchronous loop's tokens: with
    ignore_eos and one max_tokens both loops run the same batches, so even bf16 rounding agrees."""
    save_tiny_model(tmp_path, "llama", with_tokenizer=False, vocab_size=512)
    generator = torch.Generator().manual_seed(5)
    prompts = [torch.randint(3, 512, (n,), generator=generator).tolist() for n in (5, 17, 40, 63, 100)]
    params = [SamplingParams(temperature=0, max_tokens=NUM_TOKENS, ignore_eos=True),
              SamplingParams(temperature=0.8, seed=11, max_tokens=NUM_TOKENS, ignore_eos=True)]
    tokens, deferred = {}, {}
    for async_scheduling in (False, True):
        llm = LLM(str(tmp_path), device="cuda", dtype=torch.bfloat16, max_model_len=256, verbose=False,
                  kv_cache_memory_bytes=64 << 20, enforce_eager=enforce_eager, async_scheduling=async_scheduling)
        execute, counted = llm.engine.runner.execute, [0]

        def counting(plan, *args, **kwargs):
            counted[0] += plan.num_deferred
            return execute(plan, *args, **kwargs)

        llm.engine.runner.execute = counting
        outputs = llm.generate(prompts, [params[i % 2] for i in range(len(prompts))], use_tqdm=False)
        tokens[async_scheduling] = [c.token_ids for o in outputs for c in o.outputs]
        deferred[async_scheduling] = counted[0]
        assert llm.scheduler.num_uncommitted_steps == 0 and llm.scheduler.stats().num_used_blocks == 0
    assert deferred[False] == 0 and deferred[True] > 0
    assert tokens[True] == tokens[False]


def test_structured_outputs_of_a_random_model_fit_on_gpu(tmp_path):
    """The grammar bitmask applied to the device's logits (CUDA graphs, overlapped loop): every output of
    a random model (which never writes JSON by chance) under a schema, a regex and a choice fits it."""
    import json
    import re

    from pagedcore import StructuredOutputsParams
    from tiny_models import save_byte_tokenizer

    vocab = save_byte_tokenizer(tmp_path)
    save_tiny_model(tmp_path, "llama", with_tokenizer=False, vocab_size=vocab + 61)  # ids past the tokenizer's
    schema = {"type": "object", "additionalProperties": False, "required": ["ok", "n", "color"],
              "properties": {"ok": {"type": "boolean"}, "n": {"type": "integer", "minimum": 0, "maximum": 99},
                             "color": {"enum": ["red", "green", "blue"]}}}
    constraints = [StructuredOutputsParams(json=schema, disable_any_whitespace=True),
                   StructuredOutputsParams(regex=r"[a-c]{3}-\d{2}"), StructuredOutputsParams(choice=["yes", "no way"])]
    llm = LLM(str(tmp_path), device="cuda", dtype=torch.bfloat16, max_model_len=256, verbose=False,
              kv_cache_memory_bytes=64 << 20)
    params = [SamplingParams(temperature=1.0, seed=i, max_tokens=100, structured_outputs=constraints[i % 3], n=1 + i % 2)
              for i in range(24)]
    outputs = llm.generate([f"request {i}" for i in range(24)], params, use_tqdm=False)
    for i, output in enumerate(outputs):
        for completion in output.outputs:
            assert completion.finish_reason == "stop", completion.text
            if i % 3 == 0:
                value = json.loads(completion.text)
                assert set(value) == {"ok", "n", "color"} and isinstance(value["ok"], bool), value
                assert 0 <= value["n"] <= 99 and value["color"] in ("red", "green", "blue"), value
            elif i % 3 == 1:
                assert re.fullmatch(r"[a-c]{3}-\d{2}", completion.text), completion.text
            else:
                assert completion.text in ("yes", "no way"), completion.text
    assert llm.scheduler.stats().num_used_blocks == 0


def test_penalties_from_the_device_history_give_the_per_row_forms_tokens(tmp_path, monkeypatch):
    """Through the engine (overlapped loop, CUDA graphs, rows joining and finishing), the batched
    penalties over the device-side token histories pick exactly the tokens the per-row form picks."""
    from pagedcore.model_executor.sampler import Sampler

    save_tiny_model(tmp_path, "llama", with_tokenizer=False, vocab_size=512)
    generator = torch.Generator().manual_seed(9)
    prompts = [torch.randint(3, 40, (n,), generator=generator).tolist() for n in (5, 17, 40, 63, 100, 7)]
    params = [SamplingParams(temperature=0, max_tokens=n, ignore_eos=True, repetition_penalty=1.4,
                             frequency_penalty=0.3 * (i % 2), presence_penalty=0.2)
              for i, n in enumerate((40, 12, 33, 25, 40, 3))]
    params.append(SamplingParams(temperature=0, max_tokens=20, ignore_eos=True))  # no penalties
    prompts.append(prompts[0])
    tokens = {}
    for form in ("batched", "per row"):
        if form == "per row":
            monkeypatch.setattr(Sampler, "_apply_penalties_batched", Sampler._apply_penalties_per_row)
        llm = LLM(str(tmp_path), device="cuda", dtype=torch.bfloat16, max_model_len=256, verbose=False,
                  kv_cache_memory_bytes=64 << 20)
        outputs = llm.generate(prompts, params, use_tqdm=False)
        tokens[form] = [c.token_ids for o in outputs for c in o.outputs]
        history = llm.engine.sampler.penalty_history
        assert (history is not None) == (form == "batched")  # the batched form ran on the device history
    assert tokens["batched"] == tokens["per row"]
    assert [len(t) for t in tokens["batched"]] == [40, 12, 33, 25, 40, 3, 20]
