"""The OpenAI-compatible server (pagedcore.server) on CPU, over HTTP on 127.0.0.1: the real openai
client, raw HTTP for error shapes / auth / limits, disconnects, a bounded load test, health and
metrics, the waiting-queue limit, and SIGTERM draining. Random-weight tiny Llama except where noted."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import openai
import pytest
from server_harness import start_tiny_server

KEY = "test-key-0123456789"


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("tiny-llama")


@pytest.fixture(scope="module")
def server(tiny_dir):
    running = start_tiny_server(tiny_dir, api_key=KEY, max_body_bytes=1 << 20)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=KEY, max_retries=0, timeout=60)


def post(server, path: str, body, headers: dict | None = None, timeout: float = 60) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(f"{server.base_url}{path}", content=content, timeout=timeout,
                      headers=server.headers() if headers is None else headers)


def assert_error(response: httpx.Response, status: int, param: str | None = None, contains: str = "") -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and contains in error["message"]
    if param is not None:
        assert error["param"] == param
    return error


def assert_no_used_blocks(server, timeout_s: float = 10.0) -> None:
    server.wait_until(lambda: server.metric("pagedcore_kv_cache_used_blocks") == 0, timeout_s,
                      "every KV block to be released")


# ---- the real openai client ------------------------------------------------------------------

def test_models_lists_the_served_model(client):
    assert [m.id for m in client.models.list().data] == ["tiny"]


def test_completion_n_logprobs_and_usage(client):
    out = client.completions.create(model="tiny", prompt="Hello there", max_tokens=6, n=3, logprobs=2, seed=7,
                                    temperature=0.8, top_p=0.9, presence_penalty=0.5, frequency_penalty=0.5,
                                    extra_body={"top_k": 50, "min_p": 0.01, "repetition_penalty": 1.1})
    assert [c.index for c in out.choices] == [0, 1, 2]
    for choice in out.choices:
        assert choice.finish_reason in ("length", "stop")
        assert len(choice.logprobs.tokens) == len(choice.logprobs.token_logprobs) <= 6
        assert all(len(top) >= 2 for top in choice.logprobs.top_logprobs)
    assert out.usage.prompt_tokens > 0
    assert out.usage.completion_tokens == sum(len(c.logprobs.tokens) for c in out.choices)
    assert out.usage.total_tokens == out.usage.prompt_tokens + out.usage.completion_tokens
    again = client.completions.create(model="tiny", prompt="Hello there", max_tokens=6, n=3, seed=7,
                                      temperature=0.8, top_p=0.9, presence_penalty=0.5, frequency_penalty=0.5,
                                      extra_body={"top_k": 50, "min_p": 0.01, "repetition_penalty": 1.1})
    assert [c.text for c in again.choices] == [c.text for c in out.choices]  # seeded: reproducible


def test_max_tokens_past_the_context_is_clamped_as_vllm_does(client):
    # 250 prompt tokens on a server of max_model_len 256: room for 6, whatever max_tokens asks.
    out = client.completions.create(model="tiny", prompt=list(range(100, 350)), max_tokens=5000, temperature=0,
                                    extra_body={"ignore_eos": True})
    assert out.choices[0].finish_reason == "length"
    assert out.usage.prompt_tokens == 250 and out.usage.completion_tokens == 6


def test_logit_bias_steers_the_completion(client):
    def tokens(token_id):
        out = client.completions.create(model="tiny", prompt="Hello", max_tokens=4, temperature=0, logprobs=0,
                                        logit_bias={str(token_id): 100}, extra_body={"ignore_eos": True})
        return out.choices[0].logprobs.tokens

    first, second = tokens(4242), tokens(4243)
    assert len(first) == 4 and len(set(first)) == 1  # every token is the biased one
    assert len(second) == 4 and len(set(second)) == 1 and second[0] != first[0]


def test_completion_token_id_prompts_and_cached_tokens(client):
    prompt = list(range(100, 140))  # 40 tokens: two full 16-token blocks are cacheable
    first = client.completions.create(model="tiny", prompt=[prompt, prompt[:20]], max_tokens=3, temperature=0)
    assert [c.index for c in first.choices] == [0, 1]
    assert first.usage.prompt_tokens == 60
    second = client.completions.create(model="tiny", prompt=prompt, max_tokens=3, temperature=0)
    assert second.usage.prompt_tokens_details.cached_tokens == 32
    assert second.choices[0].text == first.choices[0].text  # greedy, same prompt


def test_completion_stream_matches_non_stream_and_reports_usage(client):
    kwargs = dict(model="tiny", prompt="Once upon a time", max_tokens=12, temperature=0)
    whole = client.completions.create(**kwargs)
    chunks = list(client.completions.create(**kwargs, stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == whole.choices[0].text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_chat_and_chat_stream_with_n(client):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"}]
    out = client.chat.completions.create(model="tiny", messages=messages, max_tokens=5, temperature=0,
                                         logprobs=True, top_logprobs=3)
    message = out.choices[0].message
    assert message.role == "assistant" and isinstance(message.content, str)
    assert len(out.choices[0].logprobs.content) == out.usage.completion_tokens
    assert all(len(t.top_logprobs) == 3 for t in out.choices[0].logprobs.content)
    stream = client.chat.completions.create(model="tiny", messages=messages, max_tokens=5, n=2, temperature=1.0,
                                            seed=3, stream=True, stream_options={"include_usage": True})
    texts, finishes, usage = {0: "", 1: ""}, {}, None
    for chunk in stream:
        usage = chunk.usage or usage
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
            if choice.finish_reason:
                finishes[choice.index] = choice.finish_reason
    assert set(finishes) == {0, 1} and usage.completion_tokens <= 10
    assert out.usage.prompt_tokens == usage.prompt_tokens


def test_stop_string_is_never_streamed(client):
    whole = client.completions.create(model="tiny", prompt="The", max_tokens=16, temperature=0,
                                      extra_body={"ignore_eos": True})
    text = whole.choices[0].text
    assert len(text) > 6
    stop = text[3:6]  # a stop string inside the greedy text, likely spanning tokens
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model="tiny", prompt="The", max_tokens=16, temperature=0, stop=[stop], stream=True,
        extra_body={"ignore_eos": True}) if c.choices)
    assert streamed == text[:text.index(stop)]


def test_openai_client_raises_on_errors(client):
    with pytest.raises(openai.BadRequestError, match="top_p"):
        client.completions.create(model="tiny", prompt="x", top_p=0)
    with pytest.raises(openai.BadRequestError, match="not served"):
        client.completions.create(model="gpt-4", prompt="x")
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=client.base_url, api_key="wrong", max_retries=0).models.list()


# ---- raw HTTP: error shapes, auth, limits ----------------------------------------------------

def test_auth_on_every_route_but_health(server):
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": f"Basic {KEY}"},
                    {"Authorization": f"Bearer {KEY}x"}):
        assert_error(httpx.get(f"{server.base_url}/v1/models", headers=headers), 401)
        assert_error(httpx.get(f"{server.base_url}/metrics", headers=headers), 401)
        assert_error(post(server, "/v1/completions", {"prompt": "x"}, headers=headers), 401)
    assert httpx.get(f"{server.base_url}/health").status_code == 200


@pytest.mark.parametrize("body, param, contains", [
    ({"prompt": "x", "temperature": -1}, "temperature", "greater than or equal to 0"),
    ({"prompt": "x", "top_k": -5}, "top_k", "-1"),
    ({"prompt": "x", "n": "2"}, "n", "integer"),
    ({"prompt": "x", "max_tokens": True}, "max_tokens", "integer"),
    ({"prompt": "x", "min_tokens": 9, "max_tokens": 4}, "min_tokens", "max_tokens (4)"),
    ({"prompt": "x", "logprobs": 21}, "logprobs", "20"),
    ({"prompt": "word " * 400}, "prompt", "max_model_len is 256"),
    ({"prompt": [10**6]}, "prompt", "vocabulary"),
    ({"prompt": [], "max_tokens": 1}, "prompt", ""),
    ({"prompt": "x", "n": 65}, "n", "64"),
    ({"prompt": "x", "model": "other"}, "model", "'tiny'"),
    ({"prompt": "x", "max_tokens": 0}, "max_tokens", "0 only with echo=true"),
    ({"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}, "max_tokens", ">= 1"),
    ({"prompt": "x", "prompt_logprobs": 1, "stream": True}, "prompt_logprobs", "stream=true"),
    ({"prompt": "x", "prompt_logprobs": 21}, "prompt_logprobs", "20"),
    ({"prompt": "x", "bad_words": [""]}, "bad_words.0", "at least 1 character"),
    ({"prompt": "x", "bad_words": ["  "]}, "bad_words", "non-blank"),
    ({"prompt": "x", "logit_bias": {"five": 1.0}}, "logit_bias", "token ids"),
    ({"prompt": "x", "logit_bias": {"5": 101.0}}, "logit_bias", "[-100, 100]"),
    ({"prompt": "x", "stop": ""}, "stop", "at least 1 character"),
    ({"prompt": "x", "stop": "y" * 300}, "stop", "at most 256 characters"),
    ({"prompt": "x", "stream_options": {"include_usage": True}}, "stream_options", "stream=true"),
    ({"max_tokens": 1}, "prompt", "required"),
])
def test_invalid_completion_parameters_are_400_with_param(server, body, param, contains):
    path = "/v1/chat/completions" if "messages" in body else "/v1/completions"
    assert_error(post(server, path, body), 400, param, contains)


def test_invalid_chat_parameters_are_400(server):
    assert_error(post(server, "/v1/chat/completions", {"messages": []}), 400, "messages")
    assert_error(post(server, "/v1/chat/completions", {"messages": [{"role": "robot", "content": "x"}]}), 400,
                 "messages.0.role")
    image = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]
    assert_error(post(server, "/v1/chat/completions", {"messages": image}), 400, "messages.0.content",
                 "images are not supported")
    tools = {"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]}
    assert_error(post(server, "/v1/chat/completions", tools), 400, "tools.0.function", "required")
    assert_error(post(server, "/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}],
                                                       "top_logprobs": 2}), 400, "top_logprobs")


def test_malformed_bodies_routes_and_sizes(server):
    assert_error(post(server, "/v1/completions", b"{not json"), 400, contains="not valid JSON")
    assert_error(post(server, "/v1/completions", b'{"prompt": "\xff\xfe"}'), 400, contains="not valid JSON")
    assert_error(post(server, "/v1/completions", b"[" * 100_000), 400)
    assert_error(post(server, "/v1/completions", b"[1, 2]"), 400)
    assert_error(post(server, "/v1/completions", {"prompt": "x" * (2 << 20)}), 413, contains=str(1 << 20))
    chunked = httpx.post(f"{server.base_url}/v1/completions", headers=server.headers(),
                         content=iter([b'{"prompt": "', b"x" * (1 << 20), b'"}']))
    assert_error(chunked, 413, contains="limit")
    assert_error(httpx.get(f"{server.base_url}/v1/nothing", headers=server.headers()), 404)
    assert_error(httpx.get(f"{server.base_url}/v1/completions", headers=server.headers()), 405)
    assert httpx.get(f"{server.base_url}/health").json() == {"status": "ok"}


# ---- disconnects, load, metrics --------------------------------------------------------------

def test_disconnect_mid_stream_frees_the_blocks(server):
    body = {"prompt": list(range(5, 105)), "max_tokens": 150, "ignore_eos": True, "stream": True, "n": 2}
    with httpx.Client(timeout=30) as http:
        with http.stream("POST", f"{server.base_url}/v1/completions", json=body, headers=server.headers()) as r:
            assert r.status_code == 200
            lines = r.iter_lines()
            received = [next(lines) for _ in range(6)]
            assert any(line.startswith("data: {") for line in received)
            assert server.metric("pagedcore_kv_cache_used_blocks") > 0
    assert_no_used_blocks(server)
    assert server.async_engine.num_in_flight == 0


def test_non_streaming_client_timeout_aborts_its_request(server):
    body = {"prompt": list(range(5, 105)), "max_tokens": 150, "ignore_eos": True, "n": 4}
    with pytest.raises(httpx.ReadTimeout):
        post(server, "/v1/completions", body, timeout=0.5)
    assert_no_used_blocks(server)


def test_64_concurrent_streaming_clients_all_complete(server):
    async def one(http: httpx.AsyncClient, i: int) -> tuple[int, list[str]]:
        body = {"prompt": f"Client {i} says", "max_tokens": 8 + i % 8, "stream": True, "temperature": 0.7,
                "seed": i, "stream_options": {"include_usage": True}}
        async with http.stream("POST", "/v1/completions", json=body) as r:
            return r.status_code, [line async for line in r.aiter_lines() if line]

    async def run_all():
        async with httpx.AsyncClient(base_url=server.base_url, headers=server.headers(), timeout=120,
                                     limits=httpx.Limits(max_connections=64)) as http:
            return await asyncio.wait_for(asyncio.gather(*(one(http, i) for i in range(64))), 120)

    results = asyncio.run(run_all())
    assert [status for status, _ in results] == [200] * 64
    for i, (_, lines) in enumerate(results):
        assert lines[-1] == "data: [DONE]"
        usage = json.loads(lines[-2][len("data: "):])["usage"]
        assert 1 <= usage["completion_tokens"] <= 8 + i % 8
        finishes = [json.loads(l[6:])["choices"][0]["finish_reason"] for l in lines[:-2]]
        assert finishes[-1] in ("length", "stop")
    assert_no_used_blocks(server)
    assert httpx.get(f"{server.base_url}/health").status_code == 200


def test_metrics_report_engine_state_and_latencies(server):
    post(server, "/v1/completions", {"prompt": "metrics please", "max_tokens": 4})
    text = httpx.get(f"{server.base_url}/metrics", headers=server.headers()).text
    for name in ("pagedcore_kv_cache_usage_ratio", "pagedcore_prefix_cache_hit_rate", "pagedcore_num_requests_running",
                 "pagedcore_num_requests_waiting", "pagedcore_num_preemptions_total",
                 "pagedcore_time_to_first_token_seconds_count", "pagedcore_inter_token_latency_seconds_count",
                 "pagedcore_e2e_request_latency_seconds_count", "pagedcore_prompt_tokens_total",
                 "pagedcore_generation_tokens_total"):
        assert f"\n{name}" in text, name
    assert server.metric("pagedcore_generation_tokens_total") >= 4
    assert server.metric("pagedcore_e2e_request_latency_seconds_count") >= 1
    assert server.metric("pagedcore_kv_cache_blocks") == 512


def test_vllm_utility_routes(server):
    ids = post(server, "/tokenize", {"prompt": "Hello there"}).json()
    assert ids["count"] == len(ids["tokens"]) > 0 and ids["max_model_len"] == 256
    assert post(server, "/detokenize", {"tokens": ids["tokens"]}).json()["prompt"] == "Hello there"
    chat = post(server, "/tokenize", {"messages": [{"role": "user", "content": "Hi"}]})
    assert chat.status_code == 200 and chat.json()["count"] > 1
    assert_error(post(server, "/tokenize", {"prompt": "x", "messages": [{"role": "user", "content": "x"}]}), 400,
                 "prompt", "exactly one")
    assert_error(post(server, "/detokenize", {"tokens": [10**7]}), 400, "tokens", "vocabulary")
    assert httpx.get(f"{server.base_url}/ping").status_code == 200  # no key needed, like /health
    assert httpx.get(f"{server.base_url}/version", headers=server.headers()).json()["version"]
    card = httpx.get(f"{server.base_url}/v1/models/tiny", headers=server.headers()).json()
    assert card["id"] == "tiny" and card["object"] == "model"
    assert_error(httpx.get(f"{server.base_url}/v1/models/other", headers=server.headers()), 404, "model", "'tiny'")


def test_choices_carry_vllms_stop_reason(server):
    def complete(**extra):
        body = {"model": "tiny", "prompt": "Hello", "temperature": 0, "ignore_eos": True, **extra}
        return post(server, "/v1/completions", body).json()["choices"][0]

    first = complete(max_tokens=6)
    assert first["finish_reason"] == "length" and first["stop_reason"] is None
    stopped = complete(max_tokens=10, stop=[first["text"]])
    assert stopped["finish_reason"] == "stop" and stopped["stop_reason"] == first["text"]
    chat = post(server, "/v1/chat/completions", {"model": "tiny", "max_tokens": 3, "temperature": 0,
                                                 "messages": [{"role": "user", "content": "Hi"}]}).json()
    assert "stop_reason" in chat["choices"][0]


def test_message_name_reaches_the_template_and_user_the_log(server, caplog):
    from pagedcore.server.protocol import ChatCompletionRequest, parse_body

    body = parse_body(ChatCompletionRequest, json.dumps(
        {"messages": [{"role": "user", "content": "Hi", "name": "ada"}, {"role": "user", "content": "Yo"}]}).encode())
    assert body.conversation() == [{"role": "user", "content": "Hi", "name": "ada"}, {"role": "user", "content": "Yo"}]
    with caplog.at_level("INFO", logger="pagedcore.server"):
        response = post(server, "/v1/completions", {"prompt": "x", "max_tokens": 1, "user": "user-42"})
    assert response.status_code == 200
    assert any("user 'user-42'" in r.getMessage() for r in caplog.records)


# ---- vLLM's extras: bad_words, echo, prompt scoring, prompt_logprobs ------------------------------

def test_bad_words_are_never_generated(server, client):
    token = server.llm.tokenizer.encode("hello", add_special_tokens=False)
    assert len(token) == 1
    biased = dict(model="tiny", prompt="Hi", max_tokens=4, temperature=0, logprobs=0,
                  logit_bias={str(token[0]): 100}, extra_body={"ignore_eos": True})
    assert client.completions.create(**biased).choices[0].logprobs.tokens == ["hello"] * 4
    held = client.completions.create(**{**biased, "extra_body": {"ignore_eos": True, "bad_words": ["hello"]}})
    assert len(held.choices[0].logprobs.tokens) == 4 and "hello" not in held.choices[0].logprobs.tokens
    chat = post(server, "/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4,
                                                 "temperature": 0, "logit_bias": {str(token[0]): 100},
                                                 "ignore_eos": True, "bad_words": ["hello"]})
    assert chat.status_code == 200 and "hello" not in chat.json()["choices"][0]["message"]["content"]


def test_echo_puts_the_prompt_and_its_logprobs_first(server, client):
    prompt = "Hello there, friend"
    num_prompt = len(server.llm.tokenizer.encode(prompt))
    plain = client.completions.create(model="tiny", prompt=prompt, max_tokens=3, temperature=0, logprobs=1,
                                      extra_body={"ignore_eos": True})
    echo = client.completions.create(model="tiny", prompt=prompt, max_tokens=3, temperature=0, logprobs=1, echo=True,
                                     extra_body={"ignore_eos": True})
    choice = echo.choices[0]
    assert choice.text == prompt + plain.choices[0].text
    lp = choice.logprobs
    assert len(lp.tokens) == num_prompt + 3 and lp.tokens[num_prompt:] == plain.choices[0].logprobs.tokens
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None  # nothing scores the first token
    assert all(v < 0 for v in lp.token_logprobs[1:num_prompt])
    assert lp.token_logprobs[num_prompt:] == pytest.approx(plain.choices[0].logprobs.token_logprobs)
    assert lp.text_offset[0] == 0 and lp.text_offset[num_prompt] == len(prompt)
    assert echo.usage.completion_tokens == 3
    # Streamed: the first chunk of the choice carries the prompt.
    chunks = [c for c in client.completions.create(model="tiny", prompt=prompt, max_tokens=3, temperature=0,
                                                   echo=True, stream=True, extra_body={"ignore_eos": True})
              if c.choices]
    assert chunks[0].choices[0].text.startswith(prompt)
    assert "".join(c.choices[0].text for c in chunks) == choice.text

    # Prompt scoring (lm-eval-harness loglikelihood): echo, logprobs and max_tokens=0.
    scored = client.completions.create(model="tiny", prompt=prompt, max_tokens=0, temperature=0, logprobs=1,
                                       echo=True)
    assert scored.choices[0].text == prompt and scored.usage.completion_tokens == 0
    assert scored.choices[0].logprobs.tokens == lp.tokens[:num_prompt]
    assert scored.choices[0].logprobs.token_logprobs == pytest.approx(lp.token_logprobs[:num_prompt])
    assert scored.choices[0].finish_reason == "length"
    token_ids = server.llm.tokenizer.encode(prompt)
    by_ids = post(server, "/v1/completions", {"prompt": token_ids, "max_tokens": 0, "echo": True, "logprobs": 0})
    assert by_ids.json()["choices"][0]["logprobs"]["token_logprobs"][1:] == pytest.approx(
        lp.token_logprobs[1:num_prompt])
    assert_no_used_blocks(server)


def test_prompt_logprobs_is_vllms_extra_field(server):
    prompt = "The cache holds"
    token_ids = server.llm.tokenizer.encode(prompt)
    body = post(server, "/v1/completions", {"prompt": prompt, "max_tokens": 2, "temperature": 0,
                                            "prompt_logprobs": 2}).json()
    field = body["choices"][0]["prompt_logprobs"]
    assert len(field) == len(token_ids) and field[0] is None
    for token, entry in zip(token_ids[1:], field[1:]):
        assert str(token) in entry and len(entry) in (2, 3)
        assert set(entry[str(token)]) == {"logprob", "rank", "decoded_token"} and entry[str(token)]["logprob"] < 0
    assert "prompt_logprobs" not in post(server, "/v1/completions", {"prompt": prompt, "max_tokens": 1}).json()[
        "choices"][0]
    chat = post(server, "/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2,
                                                 "prompt_logprobs": 0}).json()
    assert chat["prompt_logprobs"][0] is None and all(len(e) == 1 for e in chat["prompt_logprobs"][1:])
