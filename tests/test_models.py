"""Model equivalence with HF transformers on CPU in float32: tiny random Llama, Llama 3 RoPE
scaling with tied embeddings, Mistral, Qwen2 (qkv bias), Qwen3 (qk-norm), and SmolLM2 from its GGUF.
Greedy tokens must be identical and per-token log-probabilities within tolerance. A GGUF file is
parsed once for the model and its tokenizer."""

import pytest
import torch
from tiny_models import hf_greedy, save_tiny_model

from pagedcore.tokenizers.chat_template import render_chat
from pagedcore.engine.llm import LLM
from pagedcore.loaders.gguf_file import GGUFFile
from pagedcore.loaders.model_loader import default_model_path
from pagedcore.engine.sampling_params import SamplingParams

NUM_TOKENS = 32
LOGPROB_ATOL = 2e-3

VARIANTS = {
    "llama": ("llama", {}),
    "llama3-rope-tied": ("llama", {"tie_word_embeddings": True, "rope_parameters": {
        "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 64}}),
    "mistral": ("mistral", {}),
    "qwen2": ("qwen2", {}),
    "qwen3": ("qwen3", {}),
}


def _check_against_hf(llm: LLM, hf_model, prompts: list[list[int]], num_tokens: int) -> None:
    params = SamplingParams(temperature=0, max_tokens=num_tokens, ignore_eos=True, logprobs=0)
    outputs = llm.generate(prompts, params, use_tqdm=False)
    for prompt, output in zip(prompts, outputs):
        expected_ids, expected_logits = hf_greedy(hf_model, prompt, num_tokens)
        completion = output.outputs[0]
        assert completion.token_ids == expected_ids
        expected = expected_logits.float().log_softmax(-1).gather(1, torch.tensor(expected_ids)[:, None])[:, 0]
        ours = torch.tensor([entry[token].logprob
                             for entry, token in zip(completion.logprobs, completion.token_ids)])
        assert torch.allclose(ours, expected, atol=LOGPROB_ATOL), (ours - expected).abs().max()
        assert completion.finish_reason == "length"


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_tiny_model_matches_transformers(tmp_path, variant):
    model_type, overrides = VARIANTS[variant]
    hf_model = save_tiny_model(tmp_path, model_type, with_tokenizer=False, vocab_size=512, **overrides)
    llm = LLM(str(tmp_path), device="cpu", kv_cache_memory_bytes=8 << 20, max_model_len=256, verbose=False)
    generator = torch.Generator().manual_seed(1)
    prompts = [torch.randint(3, 512, (length,), generator=generator).tolist() for length in (5, 17, 40)]
    _check_against_hf(llm, hf_model, prompts, NUM_TOKENS)


@pytest.mark.parametrize("variant", ["llama3-rope-tied", "qwen3"])
def test_bfloat16_on_cpu_stays_within_tolerance_of_float32_transformers(tmp_path, variant):
    """bfloat16 on the CPU (the fused norm / RoPE kernels, oneDNN not used: float32 only), judged as
    the GPU's half-precision runs are (tests/test_models_gpu.py): every token the engine picks is
    within 0.15 of the float32 reference's best log-probability, teacher-forced with the engine's own
    tokens, and its log-probability within 0.15 of the reference's."""
    tolerance = 0.15
    model_type, overrides = VARIANTS[variant]
    hf_model = save_tiny_model(tmp_path, model_type, with_tokenizer=False, vocab_size=512, **overrides)
    llm = LLM(str(tmp_path), device="cpu", dtype="bfloat16", kv_cache_memory_bytes=8 << 20, max_model_len=256,
              verbose=False)
    generator = torch.Generator().manual_seed(3)
    prompts = [torch.randint(3, 512, (length,), generator=generator).tolist() for length in (5, 17, 40)]
    params = SamplingParams(temperature=0, max_tokens=NUM_TOKENS, ignore_eos=True, logprobs=0)
    for prompt, output in zip(prompts, llm.generate(prompts, params, use_tqdm=False)):
        completion = output.outputs[0]
        with torch.no_grad():
            logits = hf_model(torch.tensor([prompt + completion.token_ids])).logits[0, len(prompt) - 1:-1]
        reference = logits.float().log_softmax(-1)
        chosen = reference.gather(1, torch.tensor(completion.token_ids)[:, None])[:, 0]
        gap = reference.max(-1).values - chosen
        assert gap.max() <= tolerance, f"token off the reference argmax by {gap.max():.3f} at {gap.argmax()}"
        ours = torch.tensor([entry[token].logprob for entry, token in zip(completion.logprobs, completion.token_ids)])
        assert (ours - chosen).abs().max() <= tolerance, (ours - chosen).abs().max()


def test_smollm2_gguf_matches_transformers_loading_the_same_gguf():
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    path = default_model_path()
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                                 dtype=torch.float32).eval()
    llm = LLM(device="cpu", max_model_len=512, kv_cache_memory_bytes=64 << 20, verbose=False)
    conversation = [{"role": "user", "content": "What is the capital of France?"}]
    chat_text = render_chat(llm.tokenizer.chat_template, conversation, bos_token=llm.tokenizer.bos_token,
                            eos_token=llm.tokenizer.eos_token)
    chat_prompt = llm.tokenizer.encode(chat_text, add_special_tokens=False)
    prompts = [chat_prompt, llm.tokenizer.encode("The three laws of robotics are")]
    _check_against_hf(llm, hf_model, prompts, NUM_TOKENS)


def test_a_gguf_file_is_parsed_once_for_the_model_and_its_tokenizer(monkeypatch):
    opened = []
    parse = GGUFFile.__init__

    def counting_parse(self, path):
        opened.append(str(path))
        parse(self, path)

    monkeypatch.setattr(GGUFFile, "__init__", counting_parse)
    llm = LLM(device="cpu", max_model_len=64, kv_cache_memory_bytes=8 << 20, load_format="dummy", verbose=False)
    assert llm.tokenizer is not None
    assert opened == [str(default_model_path())]


def test_one_attention_plan_per_step_serves_every_layer(tmp_path, monkeypatch):
    # The plan/run boundary: the step's attention is validated once (the first layer makes the plan),
    # and every layer of the step runs that plan.
    from pagedcore import ops
    from pagedcore.model_executor import attention

    save_tiny_model(tmp_path, "llama", with_tokenizer=False, vocab_size=512, num_hidden_layers=3)
    llm = LLM(str(tmp_path), device="cpu", kv_cache_memory_bytes=8 << 20, max_model_len=256, verbose=False)
    plans, runs = [], []
    make_plan, run_plan = ops.attention_plan, ops.AttentionPlan.run
    monkeypatch.setattr(attention.ops, "attention_plan", lambda *a, **k: plans.append(make_plan(*a, **k)) or plans[-1])
    monkeypatch.setattr(ops.AttentionPlan, "run", lambda self, *a, **k: runs.append(self) or run_plan(self, *a, **k))
    llm.generate([[5, 6, 7], list(range(3, 40))], SamplingParams(temperature=0, max_tokens=6, ignore_eos=True),
                 use_tqdm=False)
    assert len(plans) >= 6  # one per engine step: prefill, then decode steps
    assert len(runs) == 3 * len(plans)
    assert [id(p) for p in runs] == [id(p) for p in plans for _ in range(3)]
