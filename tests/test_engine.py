"""Engine behaviour on a tiny random Llama with the SmolLM2 vocabulary (CPU, fp32): prefix caching
and preemption leave greedy outputs unchanged, seeded sampling reproduces, n > 1 shares the
prompt's blocks, stop strings / stop tokens, request metrics, chat, and the errors of the API boundary."""

import pytest
import torch
from tiny_models import save_tiny_model

from pagedcore.engine.llm import LLM
from pagedcore.engine.sampling_params import SamplingParams

GREEDY = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)
PREFIX = "You are a helpful assistant. Answer briefly and precisely, in one sentence. " * 3
PROMPTS = [PREFIX + question for question in ("What is paging?", "Why blocks?", "Name a cache.", "Hello")]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tiny_llama")
    save_tiny_model(directory, "llama")
    return directory


def _llm(model_dir, **kwargs) -> LLM:
    settings = dict(device="cpu", max_model_len=256, kv_cache_memory_bytes=16 << 20, verbose=False)
    return LLM(str(model_dir), **{**settings, **kwargs})


def _token_ids(outputs) -> list[list[int]]:
    return [completion.token_ids for output in outputs for completion in output.outputs]


def test_prefix_caching_on_and_off_give_identical_greedy_outputs(model_dir):
    cached = _llm(model_dir, enable_prefix_caching=True)
    uncached = _llm(model_dir, enable_prefix_caching=False)
    first = cached.generate(PROMPTS, GREEDY, use_tqdm=False)
    second = cached.generate(PROMPTS, GREEDY, use_tqdm=False)  # the whole prompts are cached now
    reference = uncached.generate(PROMPTS, GREEDY, use_tqdm=False)
    assert _token_ids(first) == _token_ids(second) == _token_ids(reference)
    assert all(output.num_cached_tokens > 0 for output in second)
    assert all(output.num_cached_tokens == 0 for output in reference)
    assert [o.outputs[0].text for o in first] == [o.outputs[0].text for o in reference]


def test_preemption_gives_identical_greedy_outputs(model_dir):
    roomy = _llm(model_dir).generate(PROMPTS, GREEDY, use_tqdm=False)
    # 2 layers x 2 KV heads x 64 x 4 bytes x 2 = 2 KiB per token; each sequence ends near 5 blocks of 16,
    # so 12 blocks (no prefix sharing) cannot hold the 4 sequences at once.
    tight = _llm(model_dir, kv_cache_memory_bytes=12 * 16 * 2048, max_model_len=96, enable_prefix_caching=False)
    outputs = tight.generate(PROMPTS, GREEDY, use_tqdm=False)
    assert tight.scheduler.stats().num_preemptions > 0
    # Each request counts the PREEMPTED events of its sequences: together, every preemption.
    assert sum(o.metrics.num_preemptions for o in outputs) == tight.scheduler.stats().num_preemptions
    assert _token_ids(outputs) == _token_ids(roomy)


def test_swap_preemption_needs_a_cuda_device(model_dir):
    with pytest.raises(ValueError, match="preemption_mode='swap' .* needs a CUDA device"):
        _llm(model_dir, preemption_mode="swap")
    with pytest.raises(ValueError, match="preemption_mode must be one of recompute, swap"):
        _llm(model_dir, preemption_mode="offload")


def test_seeded_sampling_is_reproducible(model_dir):
    llm = _llm(model_dir)
    params = SamplingParams(temperature=0.9, top_p=0.95, top_k=50, seed=7, max_tokens=16, ignore_eos=True)
    alone = llm.generate(PROMPTS[0], params, use_tqdm=False)
    batched = llm.generate(PROMPTS, [params] + [SamplingParams(temperature=1.0, max_tokens=8)] * 3, use_tqdm=False)
    assert alone[0].outputs[0].token_ids == batched[0].outputs[0].token_ids
    other_seed = llm.generate(PROMPTS[0], SamplingParams(temperature=0.9, seed=8, max_tokens=16, ignore_eos=True),
                              use_tqdm=False)
    assert other_seed[0].outputs[0].token_ids != alone[0].outputs[0].token_ids


def test_n_sequences_share_the_prompt_blocks(model_dir):
    llm = _llm(model_dir, block_size=16)
    prompt = (llm.tokenizer.encode(PREFIX) * 2)[:64]  # exactly 4 full blocks
    assert len(prompt) == 64
    params = SamplingParams(n=4, temperature=1.0, seed=3, max_tokens=8, ignore_eos=True)
    llm.engine.add_request(None, prompt, params)
    llm.engine.step()  # prefill; the 4 sequences fork from it at its commit
    while llm.scheduler.stats().num_running < 4 or llm.scheduler.num_uncommitted_steps == 0:
        llm.engine.step()  # (the overlapped loop plans an empty step while the fork is uncommitted)
    # each sequence has written its own 65th token into a new block
    used = llm.scheduler.stats().num_used_blocks
    assert used == 4 + 4, used  # not 4 x 5 blocks: the prompt's 4 blocks are shared
    while llm.engine.has_unfinished():
        llm.engine.step()
    outputs = llm.generate([prompt], params, use_tqdm=False)[0].outputs
    assert [c.index for c in outputs] == [0, 1, 2, 3]
    assert all(len(c.token_ids) == 8 for c in outputs)
    assert len({tuple(c.token_ids) for c in outputs}) > 1


def test_stop_strings_and_stop_token_ids(model_dir):
    llm = _llm(model_dir)
    free = llm.generate(PROMPTS[0], GREEDY, use_tqdm=False)[0].outputs[0]
    stop = free.text[len(free.text) // 2:len(free.text) // 2 + 3]
    assert len(stop) == 3 and stop in free.text
    cut = free.text.index(stop)
    stopped = llm.generate(PROMPTS[0], SamplingParams(temperature=0, max_tokens=24, ignore_eos=True, stop=[stop]),
                           use_tqdm=False)[0].outputs[0]
    assert (stopped.text, stopped.finish_reason, stopped.stop_reason) == (free.text[:cut], "stop", stop)
    kept = llm.generate(PROMPTS[0], SamplingParams(temperature=0, max_tokens=24, ignore_eos=True, stop=stop,
                                                   include_stop_str_in_output=True), use_tqdm=False)[0].outputs[0]
    assert kept.text == free.text[:cut + len(stop)]
    stop_token = free.token_ids[5]
    first = free.token_ids.index(stop_token)
    by_token = llm.generate(PROMPTS[0], SamplingParams(temperature=0, max_tokens=24, ignore_eos=True,
                                                       stop_token_ids=[stop_token]), use_tqdm=False)[0].outputs[0]
    assert by_token.token_ids == free.token_ids[:first + 1]
    assert (by_token.finish_reason, by_token.stop_reason) == ("stop", stop_token)


def test_min_tokens_keeps_stop_tokens_from_being_sampled(model_dir):
    llm = _llm(model_dir)
    free = llm.generate(PROMPTS[1], GREEDY, use_tqdm=False)[0].outputs[0]
    first = free.token_ids[0]
    held = llm.generate(PROMPTS[1], SamplingParams(temperature=0, max_tokens=24, min_tokens=6, stop_token_ids=[first]),
                        use_tqdm=False)[0].outputs[0]
    assert len(held.token_ids) >= 6
    assert first not in held.token_ids[:6]


def test_a_request_ended_by_a_stop_string_reports_its_cached_prompt_tokens(model_dir):
    llm = _llm(model_dir)
    free = llm.generate(PROMPTS[0], GREEDY, use_tqdm=False)[0].outputs[0]  # caches the prompt
    stop = free.text[len(free.text) // 2:len(free.text) // 2 + 3]
    again = llm.generate(PROMPTS[0], SamplingParams(temperature=0, max_tokens=24, ignore_eos=True, stop=[stop]),
                         use_tqdm=False)[0]
    assert again.outputs[0].finish_reason == "stop"
    assert again.num_cached_tokens > 0


def test_outputs_keep_input_order_and_report_metrics(model_dir):
    llm = _llm(model_dir)
    params = [SamplingParams(temperature=0, max_tokens=n, ignore_eos=True) for n in (9, 3, 6)]
    outputs = llm.generate(PROMPTS[:3], params, use_tqdm=False)
    assert [len(o.outputs[0].token_ids) for o in outputs] == [9, 3, 6]
    assert [o.prompt for o in outputs] == PROMPTS[:3]
    assert all(o.finished and o.metrics.time_to_first_token is not None for o in outputs)
    assert all(o.outputs[0].cumulative_logprob < 0 for o in outputs)


def test_metrics_times_are_set_in_order_and_scheduling_waits_for_a_free_slot(model_dir):
    # One running sequence at a time and 16-token prefill chunks: the second request is scheduled only
    # after the first finished, and a prompt takes several steps between scheduling and its first token.
    llm = _llm(model_dir, max_num_seqs=1, max_num_batched_tokens=16)
    params = SamplingParams(temperature=0, max_tokens=3, ignore_eos=True)
    first, second = llm.generate(PROMPTS[:2], params, use_tqdm=False)
    for output in (first, second):
        m = output.metrics
        assert None not in (m.first_scheduled_time, m.first_token_time, m.finished_time)
        assert m.arrival_time <= m.first_scheduled_time < m.first_token_time <= m.finished_time
    assert second.metrics.first_scheduled_time > first.metrics.finished_time


def test_chat_applies_the_template(model_dir):
    llm = _llm(model_dir)
    template = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}" \
               "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    conversation = [{"role": "user", "content": "Hi"}]
    chat = llm.chat(conversation, GREEDY, use_tqdm=False, chat_template=template)[0]
    expected = llm.tokenizer.encode("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
                                    add_special_tokens=False)
    assert chat.prompt_token_ids == expected
    with pytest.raises(ValueError, match="no chat template"):
        llm.chat(conversation)


def test_api_boundary_errors(model_dir):
    llm = _llm(model_dir, max_model_len=64)
    with pytest.raises(ValueError, match="the prompt has 64 tokens, leaving no room to generate within "
                                         "max_model_len=64"):
        llm.generate(list(range(3, 67)), SamplingParams(max_tokens=1), use_tqdm=False)
    with pytest.raises(ValueError, match="prompt is empty"):
        llm.generate([[]], use_tqdm=False)
    with pytest.raises(ValueError, match="one per prompt"):
        llm.generate(["a", "b"], [SamplingParams()], use_tqdm=False)
    assert not llm.engine.has_unfinished()
    with pytest.raises(ValueError, match="block_size must be one of"):
        _llm(model_dir, block_size=3)
    with pytest.raises(ValueError, match="gpu_memory_utilization must be in"):
        _llm(model_dir, gpu_memory_utilization=1.5)
    with pytest.raises(ValueError, match="the largest max_model_len that fits is 32"):
        _llm(model_dir, kv_cache_memory_bytes=2 * 16 * 2048, max_model_len=256)
    with pytest.raises(ValueError, match="max_model_len must be <= 1024"):
        _llm(model_dir, max_model_len=4096)


def test_max_tokens_past_the_context_stops_with_length_at_max_model_len(model_dir):
    # vLLM's behaviour: max_tokens is clamped to max_model_len - prompt length (min_tokens with it).
    llm = _llm(model_dir, max_model_len=64)
    prompt = list(range(3, 60))  # 57 tokens: room for 7
    out = llm.generate(prompt, SamplingParams(max_tokens=16, min_tokens=10, ignore_eos=True), use_tqdm=False)[0]
    assert len(out.outputs[0].token_ids) == 7
    assert out.outputs[0].finish_reason == "length"
    assert not llm.engine.has_unfinished()


TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
            "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def test_vllm_prompt_dicts_match_the_plain_forms(model_dir):
    llm = _llm(model_dir)
    ids = llm.tokenizer.encode("Paging is")
    plain = llm.generate(["Paging is", ids], GREEDY, use_tqdm=False)
    dicts = llm.generate([{"prompt": "Paging is"}, {"prompt_token_ids": ids}], GREEDY, use_tqdm=False)
    assert _token_ids(dicts) == _token_ids(plain)
    assert dicts[0].prompt == "Paging is" and dicts[1].prompt is None and dicts[1].prompt_token_ids == ids
    single = llm.generate({"prompt_token_ids": ids}, GREEDY, use_tqdm=False)
    assert _token_ids(single) == _token_ids(plain[1:])
    with pytest.raises(ValueError, match=r"prompt dict keys \['multi_modal_data'\] are not supported"):
        llm.generate({"prompt": "x", "multi_modal_data": {}}, use_tqdm=False)
    with pytest.raises(ValueError, match="prompt_token_ids must be a list of integers"):
        llm.generate({"prompt_token_ids": "abc"}, use_tqdm=False)
    assert not llm.engine.has_unfinished()


def test_chat_forms_vllm_accepts(model_dir):
    llm = _llm(model_dir)
    text = [{"role": "user", "content": "Hi there"}]
    parts = [{"role": "user", "content": [{"type": "text", "text": "Hi"}, {"type": "text", "text": "there"}]}]
    as_text = llm.chat(text, GREEDY, use_tqdm=False, chat_template=TEMPLATE)[0]
    as_parts = llm.chat(parts, GREEDY, use_tqdm=False, chat_template=TEMPLATE)[0]
    assert as_parts.prompt == "<|im_start|>user\nHi\nthere<|im_end|>\n<|im_start|>assistant\n"  # parts joined
    assert as_text.prompt == "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n"  # prompt is filled
    with pytest.raises(ValueError, match="chat\\(\\) needs a conversation"):
        llm.chat([], chat_template=TEMPLATE)
    with pytest.raises(ValueError, match="images are not supported"):
        llm.chat([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}],
                 chat_template=TEMPLATE)
    # continue_final_message: the prompt stops inside the assistant's message, no end of turn.
    partial = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "The answer is"}]
    cont = llm.chat(partial, GREEDY, use_tqdm=False, chat_template=TEMPLATE, add_generation_prompt=False,
                    continue_final_message=True)[0]
    assert cont.prompt == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nThe answer is"
    with pytest.raises(ValueError, match="needs add_generation_prompt=False"):
        llm.chat(partial, chat_template=TEMPLATE, continue_final_message=True)
    # tools reach the template as vLLM's LLM.chat hands them over
    with_tools = "{% for t in tools or [] %}[{{ t.function.name }}]{% endfor %}" + TEMPLATE
    tool = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
    called = llm.chat(text, GREEDY, use_tqdm=False, chat_template=with_tools, tools=[tool])[0]
    assert called.prompt.startswith("[get_weather]<|im_start|>user")
    assert llm.chat(text, GREEDY, use_tqdm=False, chat_template=with_tools)[0].prompt == as_text.prompt
    # chat_template_kwargs reach the template.
    switch = "{% if enable_thinking %}<think>{% endif %}" + TEMPLATE
    thinking = llm.chat(text, GREEDY, use_tqdm=False, chat_template=switch,
                        chat_template_kwargs={"enable_thinking": True})[0]
    assert thinking.prompt.startswith("<think><|im_start|>user")
    assert not llm.engine.has_unfinished()


def test_vllm_sampling_controls(model_dir):
    llm = _llm(model_dir)
    prompt = llm.tokenizer.encode("Paging is")
    allowed = [1000, 2000, 3000]
    for params in (SamplingParams(temperature=0, max_tokens=12, ignore_eos=True, allowed_token_ids=allowed),
                   SamplingParams(temperature=1.0, seed=3, max_tokens=12, ignore_eos=True, allowed_token_ids=allowed)):
        out = llm.generate(prompt, params, use_tqdm=False)[0].outputs[0]
        assert set(out.token_ids) <= set(allowed) and len(out.token_ids) == 12
    biased = llm.generate(prompt, SamplingParams(temperature=0, max_tokens=6, ignore_eos=True,
                                                 logit_bias={4242: 100.0}), use_tqdm=False)[0].outputs[0]
    assert biased.token_ids == [4242] * 6

    seen_prompts = []

    def count_up(output_ids, logits):  # vLLM's older callable form: (output ids, logits) -> logits
        forced = torch.full_like(logits, float("-inf"))
        forced[100 + len(output_ids)] = 0.0
        return forced

    def record_prompt(prompt_ids, output_ids, logits):  # the 3-argument form also sees the prompt
        seen_prompts.append(list(prompt_ids))
        return logits

    out = llm.generate(prompt, SamplingParams(temperature=0, max_tokens=5, ignore_eos=True,
                                              logits_processors=[record_prompt, count_up]), use_tqdm=False)[0]
    assert out.outputs[0].token_ids == [100, 101, 102, 103, 104]
    assert seen_prompts and all(p == prompt for p in seen_prompts)

    truncated = llm.generate(list(range(10, 40)), SamplingParams(temperature=0, max_tokens=2, truncate_prompt_tokens=4),
                             use_tqdm=False)[0]
    assert truncated.prompt_token_ids == [36, 37, 38, 39]
    with pytest.raises(ValueError, match=r"logit_bias token ids must be in \[0, 49151\]"):
        llm.generate(prompt, SamplingParams(logit_bias={10**6: 1.0}), use_tqdm=False)
    with pytest.raises(ValueError, match="logits_processors must be a list of callables"):
        SamplingParams(logits_processors=[lambda logits: logits])
    assert not llm.engine.has_unfinished()


def test_llm_methods_vllm_programs_call(model_dir):
    llm = _llm(model_dir)
    prompt = list(range(10, 60))  # 50 tokens: three full 16-token blocks cacheable
    llm.generate(prompt, GREEDY, use_tqdm=False)
    again = llm.generate(prompt, GREEDY, use_tqdm=False)[0]
    assert again.num_cached_tokens == 48
    metrics = {m.name: m for m in llm.get_metrics()}
    assert metrics["pagedcore_prefix_cache_hit_tokens"].kind == "counter"
    assert metrics["pagedcore_prefix_cache_hit_tokens"].value == 48
    assert metrics["pagedcore_num_requests_running"].value == 0
    assert metrics["pagedcore_kv_cache_blocks"].value == llm.kv_plan.num_blocks
    assert llm.reset_prefix_cache() is True
    assert llm.generate(prompt, GREEDY, use_tqdm=False)[0].num_cached_tokens == 0  # the cache was emptied
    llm.engine.add_request(None, prompt, GREEDY)  # in flight: the cache stays
    assert llm.reset_prefix_cache() is False
    while llm.engine.has_unfinished():
        llm.engine.step()
    hf_tokenizer = llm.get_tokenizer()  # transformers is installed here: its tokenizer of the same files
    assert hf_tokenizer.encode("Paging is", add_special_tokens=False) == llm.tokenizer.encode(
        "Paging is", add_special_tokens=False)


def test_outputs_in_vllms_shape(model_dir):
    import time

    llm = _llm(model_dir)
    before = time.time()
    out = llm.generate("Paging is", SamplingParams(temperature=0, max_tokens=5, ignore_eos=True, logprobs=3),
                       use_tqdm=False)[0]
    assert isinstance(out.request_id, str)
    completion = out.outputs[0]
    for entry, token in zip(completion.logprobs, completion.token_ids):
        assert entry[token].rank == 1  # greedy: the sampled token is the most likely one
        assert sorted(lp.rank for lp in entry.values()) == [1, 2, 3]
        assert entry[token].decoded_token == llm.tokenizer.decode([token], skip_special_tokens=False)
        assert all(lp.logprob <= 0 for lp in entry.values())
    sampled = llm.generate("Paging is", SamplingParams(temperature=1.0, seed=5, max_tokens=8, logprobs=0),
                           use_tqdm=False)[0].outputs[0]
    for entry, token in zip(sampled.logprobs, sampled.token_ids):
        assert list(entry) == [token] and entry[token].rank >= 1  # logprobs=0: the sampled token alone
    m = out.metrics
    assert before <= m.arrival_time <= m.first_scheduled_time <= m.first_token_time <= m.finished_time <= time.time()


def test_detokenize_false_gives_token_ids_only(model_dir):
    llm = _llm(model_dir)
    with_text = llm.generate("Paging is", SamplingParams(temperature=0, max_tokens=6, ignore_eos=True, logprobs=1),
                             use_tqdm=False)[0].outputs[0]
    ids_only = llm.generate("Paging is", SamplingParams(temperature=0, max_tokens=6, ignore_eos=True, logprobs=1,
                                                        detokenize=False), use_tqdm=False)[0].outputs[0]
    assert ids_only.token_ids == with_text.token_ids and with_text.text and ids_only.text == ""
    assert all(lp.decoded_token is None for entry in ids_only.logprobs for lp in entry.values())
    with pytest.raises(ValueError, match="stop strings are matched on the text: they need detokenize=True"):
        SamplingParams(stop=["x"], detokenize=False)


def test_bad_words_are_never_generated(model_dir):
    llm = _llm(model_dir)
    prompt = llm.tokenizer.encode("Paging is")
    # A one-token word the free greedy run generates: with bad_words, no form of it is generated.
    free = llm.generate(prompt, GREEDY, use_tqdm=False)[0].outputs[0]
    words = {}
    for token in free.token_ids:
        word = llm.tokenizer.decode([token]).strip()
        if word.isalpha() and [token] in SamplingParams(bad_words=[word]).bad_words_token_ids(llm.tokenizer):
            words[word] = token
    assert words, "the free run should generate some one-token word"
    word = next(iter(words))
    banned = {ids[0] for ids in SamplingParams(bad_words=[word]).bad_words_token_ids(llm.tokenizer)
              if len(ids) == 1}
    assert words[word] in banned and words[word] in free.token_ids
    held = llm.generate(prompt, SamplingParams(temperature=0, max_tokens=24, ignore_eos=True, bad_words=[word]),
                        use_tqdm=False)[0].outputs[0]
    assert len(held.token_ids) == 24 and not banned & set(held.token_ids)

    # A multi-token word: a logits processor pushes its tokens over and over; with bad_words the
    # word's first tokens still come, its last one never follows them.
    word_ids = llm.tokenizer.encode("pagedcore", add_special_tokens=False)
    assert len(word_ids) >= 2

    def spell(output_ids, logits):
        logits[word_ids[len(output_ids) % len(word_ids)]] += 50.0
        return logits

    def generate(**extra):
        params = SamplingParams(temperature=0, max_tokens=3 * len(word_ids), ignore_eos=True,
                                logits_processors=[spell], **extra)
        return llm.generate(prompt, params, use_tqdm=False)[0].outputs[0].token_ids

    def contains(tokens, part):
        return any(tokens[i:i + len(part)] == part for i in range(len(tokens) - len(part) + 1))

    assert generate() == word_ids * 3
    spelled = generate(bad_words=["pagedcore"])
    assert spelled[:len(word_ids) - 1] == word_ids[:-1] and spelled[len(word_ids) - 1] != word_ids[-1]
    for ids in SamplingParams(bad_words=["pagedcore"]).bad_words_token_ids(llm.tokenizer):
        assert not contains(spelled, ids)
    with pytest.raises(ValueError, match="bad_words must be a list of words"):
        SamplingParams(bad_words=[""])
    assert not llm.engine.has_unfinished()


def test_n_above_max_num_seqs_runs_in_turns_and_keeps_per_index_seeds(model_dir):
    params = SamplingParams(n=5, temperature=1.0, seed=11, max_tokens=6, ignore_eos=True)
    small = _llm(model_dir, max_num_seqs=2)
    outputs = small.generate(PROMPTS[1], params, use_tqdm=False)[0].outputs
    assert [c.index for c in outputs] == [0, 1, 2, 3, 4]
    assert all(len(c.token_ids) == 6 and c.finish_reason == "length" and c.text for c in outputs)
    assert len({tuple(c.token_ids) for c in outputs}) == 5
    # Sequence i draws from the stream of (seed, i), whichever native request ran it.
    roomy = _llm(model_dir, max_num_seqs=8).generate(PROMPTS[1], params, use_tqdm=False)[0].outputs
    assert [c.token_ids for c in roomy] == [c.token_ids for c in outputs]
    # Beside other requests, and aborted half-way: every native request goes.
    mixed = small.generate([PROMPTS[1], PROMPTS[2]], [params, GREEDY], use_tqdm=False)
    assert [c.token_ids for c in mixed[0].outputs] == [c.token_ids for c in outputs]
    assert len(mixed[1].outputs) == 1
    request_id = small.engine.add_request(None, small.tokenizer.encode(PROMPTS[1]), params)
    small.engine.step()
    small.engine.abort(request_id)
    assert not small.engine.has_unfinished() and not small.scheduler.has_unfinished()
    assert small.scheduler.stats().num_used_blocks == 0


def test_prompt_logprobs_match_hf_through_chunked_prefill_and_skip_the_prefix_cache(model_dir):
    import transformers

    # 16-token steps: the 50-token prompt's rows come in four steps.
    llm = _llm(model_dir, max_num_batched_tokens=16)
    prompt = (llm.tokenizer.encode(PREFIX) * 2)[:50]
    assert llm.generate(prompt, GREEDY, use_tqdm=False)[0].prompt_logprobs is None  # not asked: None
    out = llm.generate(prompt, SamplingParams(temperature=0, max_tokens=2, prompt_logprobs=3), use_tqdm=False)[0]
    assert out.num_cached_tokens == 0  # the prompt was cached, but its cached tokens would have no logits
    assert len(out.prompt_logprobs) == 50 and out.prompt_logprobs[0] is None
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(model_dir)).float().eval()
    with torch.no_grad():
        reference = hf(torch.tensor([prompt])).logits[0].double().log_softmax(-1)  # [50, vocab]
    for position in range(1, 50):
        entry, token, expected = out.prompt_logprobs[position], prompt[position], reference[position - 1]
        assert abs(entry[token].logprob - expected[token].item()) < 1e-4
        higher = lambda margin: int((expected > expected[token] + margin).sum()) + 1  # noqa: E731
        assert higher(1e-5) <= entry[token].rank <= higher(-1e-5)
        assert set(expected.topk(3).indices.tolist()) <= set(entry) and len(entry) in (3, 4)
        assert entry[token].decoded_token == llm.tokenizer.decode([token], skip_special_tokens=False)
    alone = llm.generate(prompt, SamplingParams(temperature=0, max_tokens=2, prompt_logprobs=0), use_tqdm=False)[0]
    assert [list(e) for e in alone.prompt_logprobs[1:]] == [[t] for t in prompt[1:]]  # the prompt token alone
    assert [e[t].logprob for e, t in zip(alone.prompt_logprobs[1:], prompt[1:])] == pytest.approx(
        [e[t].logprob for e, t in zip(out.prompt_logprobs[1:], prompt[1:])], abs=1e-5)
    assert not llm.engine.has_unfinished()


def test_async_scheduling_gives_the_synchronous_loops_outputs(model_dir):
    # Outputs of step t are processed while step t + 1 runs, so a sequence ended by a stop string
    # at t computes one more token in t + 1, which must be dropped. Greedy, seeded n > 1 with a
    # penalty (reads the output tokens), stop strings and preemption (a tight KV budget) at once.
    free = _llm(model_dir).generate(PROMPTS, GREEDY, use_tqdm=False)
    stops = [o.outputs[0].text[6:9] for o in free]
    params = [SamplingParams(temperature=0, max_tokens=24, ignore_eos=True, stop=[stops[0]]),
              SamplingParams(temperature=0.8, seed=7, n=2, max_tokens=20, ignore_eos=True, repetition_penalty=1.3),
              SamplingParams(temperature=0, max_tokens=24, ignore_eos=True, stop=[stops[2]], logprobs=2),
              SamplingParams(temperature=0.9, seed=3, max_tokens=16, ignore_eos=True, stop=[stops[3]])]
    results = {}
    for async_scheduling in (False, True):
        llm = _llm(model_dir, kv_cache_memory_bytes=12 * 16 * 2048, max_model_len=96, enable_prefix_caching=False,
                   async_scheduling=async_scheduling)
        outputs = llm.generate(PROMPTS, params, use_tqdm=False)
        results[async_scheduling] = [
            (c.token_ids, c.text, c.finish_reason, c.stop_reason, round(c.cumulative_logprob, 4),
             None if c.logprobs is None else [sorted(entry) for entry in c.logprobs])
            for o in outputs for c in o.outputs]
        assert llm.scheduler.stats().num_preemptions > 0
        assert llm.scheduler.stats().num_used_blocks == 0  # nothing left behind by the dropped tokens
    assert results[True] == results[False]
    assert results[False][0][2] == "stop" and results[False][0][1] == free[0].outputs[0].text[:6]


def _count_deferred_rows(llm: LLM) -> list[int]:
    """Wraps the runner so the returned list's one entry counts the rows that took their input token
    on the device from the previous, uncommitted step."""
    counted = [0]
    execute = llm.engine.runner.execute

    def counting(plan, *args, **kwargs):
        counted[0] += plan.num_deferred
        return execute(plan, *args, **kwargs)

    llm.engine.runner.execute = counting
    return counted


def _follow_the_last_token(output_ids, logits):
    """A logits processor whose choice is a function of the last output token: stale output ids
    (a step sampled before the previous one's token is committed) change every token after."""
    if output_ids:
        chosen = 100 + (output_ids[-1] * 7 + 3) % 1000
        logits[:] = float("-inf")
        logits[chosen] = 0.0
    return logits


def test_overlapped_loop_gives_the_synchronous_loops_outputs(model_dir):
    # The overlapped loop plans step t + 1 before step t's tokens are known: decode rows take their
    # inputs from step t's sampled tokens on the device, and a sequence that step t's token ends
    # (EOS, a stop token, a stop string, its grammar) has an extra row whose token is dropped.
    # Greedy and seeded tokens, stop strings, EOS, logprobs, prefix caching and preemption at once;
    # a penalty request (it reads its output tokens on the host) joins midway.
    free = _llm(model_dir).generate(PROMPTS, GREEDY, use_tqdm=False)
    stops = [o.outputs[0].text[6:9] for o in free]
    eos = free[1].outputs[0].token_ids[4]  # request 1 ends at its fifth token
    params = [SamplingParams(temperature=0, max_tokens=24, ignore_eos=True, stop=[stops[0]]),
              SamplingParams(temperature=0, max_tokens=24, stop_token_ids=[eos]),
              SamplingParams(temperature=0, max_tokens=24, ignore_eos=True, stop=[stops[2]], logprobs=2),
              SamplingParams(temperature=0.9, seed=3, n=2, max_tokens=16, ignore_eos=True),
              # reads its previous tokens on the host: each step's must be committed before the next samples
              SamplingParams(temperature=0, max_tokens=16, min_tokens=6, frequency_penalty=0.4,
                             logits_processors=[_follow_the_last_token])]
    late = SamplingParams(temperature=0.8, seed=5, max_tokens=12, ignore_eos=True, presence_penalty=0.5)
    results, logprobs, deferred = {}, {}, {}
    for async_scheduling in (False, True):
        for settings in (dict(enable_prefix_caching=True),
                         dict(kv_cache_memory_bytes=12 * 16 * 2048, max_model_len=96, enable_prefix_caching=False)):
            llm = _llm(model_dir, async_scheduling=async_scheduling, **settings)
            counted = _count_deferred_rows(llm)
            outputs = llm.generate(PROMPTS + PROMPTS[:1], params, use_tqdm=False)
            outputs += llm.generate(PROMPTS, GREEDY, use_tqdm=False)  # preempts in the tight budget
            ids = [llm.engine.add_request(None, llm.tokenizer.encode(p), params[k]) for k, p in enumerate(PROMPTS + PROMPTS[:1])]
            mid_run = {}
            for _ in range(3):
                mid_run.update({r.request_id: r.to_output() for r in llm.engine.step()})
            ids.append(llm.engine.add_request(None, llm.tokenizer.encode(PROMPTS[2]), late))
            while llm.engine.has_unfinished():
                mid_run.update({r.request_id: r.to_output() for r in llm.engine.step()})
            outputs += [mid_run[i] for i in ids]
            key = (async_scheduling, settings["enable_prefix_caching"])
            results[key] = [(c.token_ids, c.text, c.finish_reason, c.stop_reason,
                             None if c.logprobs is None else [sorted(entry) for entry in c.logprobs])
                            for o in outputs for c in o.outputs]
            logprobs[key] = [c.cumulative_logprob for o in outputs for c in o.outputs]
            deferred[key] = counted[0]
            if not settings["enable_prefix_caching"]:
                assert llm.scheduler.stats().num_preemptions > 0
            assert llm.scheduler.num_uncommitted_steps == 0  # nothing left in flight once idle
            assert llm.scheduler.stats().num_used_blocks == 0  # nor blocks held by the dropped rows
            llm.scheduler.check_invariants()
    for caching in (True, False):
        assert results[(True, caching)] == results[(False, caching)]
        # Other batch compositions round float32 differently: the same tokens, logprobs within 1e-3.
        assert logprobs[(True, caching)] == pytest.approx(logprobs[(False, caching)], abs=1e-3)
        assert deferred[(False, caching)] == 0 and deferred[(True, caching)] > 100
    synchronous = results[(False, True)]
    assert synchronous[0][2] == "stop" and synchronous[0][1] == free[0].outputs[0].text[:6]
    assert synchronous[1][2] == "stop" and synchronous[1][3] == eos and len(synchronous[1][0]) == 5


def test_aborting_the_last_request_leaves_no_step_in_flight(model_dir):
    llm = _llm(model_dir)
    request_id = llm.engine.add_request(None, llm.tokenizer.encode(PROMPTS[0]), GREEDY)
    for _ in range(3):
        llm.engine.step()
    assert llm.scheduler.num_uncommitted_steps == 1  # the overlapped loop keeps one step in flight
    llm.engine.abort(request_id)
    assert llm.scheduler.num_uncommitted_steps == 0 and llm.scheduler.stats().num_used_blocks == 0
    assert llm.reset_prefix_cache()
