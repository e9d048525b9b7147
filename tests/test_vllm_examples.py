"""vLLM's documented examples, run as a vLLM user writes them, with pagedcore in vLLM's place: the
offline quickstart (generate + print), the chat example, n / logprobs / prompt_logprobs, and the
OpenAI-server quickstart through the openai client. Only the model differs: a tiny random Llama
(tests/tiny_models.py) with the SmolLM2 vocabulary and a ChatML template, so the texts are random."""

from __future__ import annotations

from pathlib import Path

import openai
import pytest
from server_harness import start_tiny_server, write_chat_template
from tiny_models import save_tiny_model

from pagedcore import LLM, SamplingParams


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> str:
    directory = tmp_path_factory.mktemp("tiny-vllm-examples")
    save_tiny_model(directory, "llama")
    write_chat_template(directory)
    return str(directory)


@pytest.fixture(scope="module")
def llm(model) -> LLM:
    return LLM(model=model)  # the examples pass the model alone


def test_offline_quickstart(llm, capsys):
    # vLLM's examples/offline_inference/basic/basic.py
    prompts = [
        "Hello, my name is",
        "The president of the United States is",
        "The capital of France is",
        "The future of AI is",
    ]
    sampling_params = SamplingParams(temperature=0.8, top_p=0.95)
    outputs = llm.generate(prompts, sampling_params)
    for output in outputs:
        prompt = output.prompt
        generated_text = output.outputs[0].text
        print(f"Prompt: {prompt!r}, Generated text: {generated_text!r}")

    assert [output.prompt for output in outputs] == prompts
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4
    for line, output in zip(lines, outputs):
        assert line == f"Prompt: {output.prompt!r}, Generated text: {output.outputs[0].text!r}"
        completion = output.outputs[0]
        assert completion.text and 1 <= len(completion.token_ids) <= 16  # SamplingParams' default max_tokens


def test_offline_chat(llm, capsys):
    # vLLM's examples/offline_inference/basic/chat.py: one conversation, then a batch of them
    sampling_params = SamplingParams(max_tokens=12, temperature=0.8, top_p=0.95, top_k=50)
    conversation = [
        {"role": "system", "content": "You are a helpful assistant"},
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": "Hello! How can I assist you today?"},
        {"role": "user", "content": "Write an essay about the importance of higher education."},
    ]

    def print_outputs(outputs):
        for output in outputs:
            print(f"Prompt: {output.prompt!r}")
            print(f"Generated text: {output.outputs[0].text!r}")
        print("-" * 80)

    outputs = llm.chat(conversation, sampling_params, use_tqdm=False)
    print_outputs(outputs)
    conversations = [conversation for _ in range(10)]
    batch = llm.chat(conversations, sampling_params, use_tqdm=True)
    print_outputs(batch)

    assert len(outputs) == 1 and len(batch) == 10
    rendered = outputs[0].prompt
    assert rendered.startswith("<|im_start|>system\nYou are a helpful assistant<|im_end|>\n")
    assert rendered.endswith("higher education.<|im_end|>\n<|im_start|>assistant\n")  # add_generation_prompt
    assert all(output.prompt == rendered for output in batch)
    assert capsys.readouterr().out.count("Generated text: ") == 11


def test_offline_n_logprobs_and_prompt_logprobs(llm):
    # The SamplingParams fields vLLM's docs show for parallel sampling and log-probabilities.
    prompts = ["Hello, my name is", "The capital of France is"]
    sampling_params = SamplingParams(n=3, temperature=0.8, seed=0, max_tokens=8, logprobs=2, prompt_logprobs=1)
    outputs = llm.generate(prompts, sampling_params)

    for output, prompt in zip(outputs, prompts):
        prompt_ids = output.prompt_token_ids
        assert output.prompt == prompt and prompt_ids == llm.tokenizer.encode(prompt)
        assert len(output.prompt_logprobs) == len(prompt_ids) and output.prompt_logprobs[0] is None
        for token_id, entry in zip(prompt_ids[1:], output.prompt_logprobs[1:]):
            assert token_id in entry and 1 <= len(entry) <= 2  # the prompt token + the top 1
            assert entry[token_id].logprob <= 0 and entry[token_id].rank >= 1
        assert [completion.index for completion in output.outputs] == [0, 1, 2]
        for completion in output.outputs:
            assert len(completion.logprobs) == len(completion.token_ids)
            for token_id, entry in zip(completion.token_ids, completion.logprobs):
                assert token_id in entry and 2 <= len(entry) <= 3  # the sampled token + the top 2
                assert entry[token_id].decoded_token == llm.tokenizer.decode([token_id], skip_special_tokens=False)
            assert completion.cumulative_logprob == pytest.approx(
                sum(entry[t].logprob for t, entry in zip(completion.token_ids, completion.logprobs)), abs=1e-4)


@pytest.fixture(scope="module")
def server(model):
    running = start_tiny_server(Path(model))
    yield running
    running.stop()


def test_openai_server_quickstart(server, capsys):
    # vLLM's quickstart and examples/online_serving/openai_*_client.py: the model id read from the server
    openai_api_key = "EMPTY"
    openai_api_base = f"{server.base_url}/v1"
    client = openai.OpenAI(api_key=openai_api_key, base_url=openai_api_base)
    models = client.models.list()
    model = models.data[0].id

    completion = client.completions.create(model=model, prompt="San Francisco is a")
    print("Completion result:", completion)

    chat_response = client.chat.completions.create(
        model=model,
        messages=[
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "Tell me a joke."},
        ],
    )
    print("Chat response:", chat_response)

    assert model == "tiny"
    assert completion.object == "text_completion" and completion.model == model
    assert completion.choices[0].text and completion.choices[0].finish_reason in ("length", "stop")
    assert 1 <= completion.usage.completion_tokens <= 16  # the completions API's default max_tokens
    message = chat_response.choices[0].message
    assert message.role == "assistant" and isinstance(message.content, str)
    assert chat_response.usage.prompt_tokens > completion.usage.prompt_tokens  # the rendered conversation
    out = capsys.readouterr().out
    assert out.startswith("Completion result: Completion(") and "Chat response: ChatCompletion(" in out

    # Streaming, as the examples' stream=True variants read it.
    stream = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Tell me a joke."}],
                                            stream=True, max_tokens=8)
    chunks = [chunk.choices[0] for chunk in stream if chunk.choices]
    assert chunks[0].delta.role == "assistant" and chunks[-1].finish_reason in ("length", "stop")
    assert "".join(choice.delta.content or "" for choice in chunks)
