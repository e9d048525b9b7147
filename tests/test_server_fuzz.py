"""Fuzzing the server's two POST routes with a few thousand malformed or extreme bodies (wrong types,
NaN / Infinity, huge and negative numbers, huge lists and strings, invalid UTF-8, deep nesting,
truncated JSON, random bytes). Each must get 200 or a 4xx in OpenAI's error shape; afterwards the
server is healthy and holds no KV blocks. Fixed seed, bounded count and time."""

from __future__ import annotations

import asyncio
import json
import random

import httpx
import pytest
from server_harness import start_tiny_server

NUM_BODIES = 2500
CONCURRENCY = 16

# Raw JSON fragments: values json.dumps cannot write (NaN, Infinity, 400-digit numbers) included.
HOSTILE_VALUES = [
    "null", "true", "false", "0", "-1", "1", "2", "-0.0", "1e308", "-1e308", "1e400", "NaN", "Infinity", "-Infinity",
    "9" * 400, "-" + "9" * 400, "4294967296", "9223372036854775808", "-9223372036854775809", "0.5", "1.0000001",
    '""', '"x"', '"1"', '"\\u0000"', '"\\ud800"', '"' + "a" * 100_000 + '"', "[]", "{}", "[1]", '["a"]', "[[1]]",
    "[" + ",".join(["7"] * 5000) + "]", "[" + ",".join(['"s"'] * 2000) + "]", "[" * 300 + "]" * 300,
    '{"a": ' * 200 + "1" + "}" * 200, '[{"role": "user", "content": 5}]', '[{"role": "user"}]',
    '[{"role": "user", "content": [{"type": "text", "text": 1}]}]', '{"include_usage": "yes"}',
    '{"include_usage": true}', "[-1]", "[2147483648]", "[49152]", "[0, -5]", "65",
    "100000", "2147483647",
]
FIELDS = ["prompt", "messages", "model", "n", "stream", "stream_options", "stop", "stop_token_ids", "max_tokens",
          "max_completion_tokens", "min_tokens", "temperature", "top_p", "top_k", "min_p", "seed",
          "presence_penalty", "frequency_penalty", "repetition_penalty", "logprobs", "top_logprobs", "echo",
          "logit_bias", "ignore_eos", "best_of", "suffix", "user"]


def fuzz_bodies(rng: random.Random) -> list[tuple[str, bytes]]:
    bodies = []
    for _ in range(NUM_BODIES):
        chat = rng.random() < 0.5
        path = "/v1/chat/completions" if chat else "/v1/completions"
        fields = {"messages": '[{"role": "user", "content": "hi"}]'} if chat else {"prompt": '"hello"'}
        fields["max_tokens"] = "1"
        for _ in range(rng.choice([1, 1, 2, 3])):
            fields[rng.choice(FIELDS)] = rng.choice(HOSTILE_VALUES)
        body = ("{" + ", ".join(f'"{k}": {v}' for k, v in fields.items()) + "}").encode()
        kind = rng.random()
        if kind < 0.05:
            body = body[:rng.randrange(len(body))]  # truncated
        elif kind < 0.08:
            body = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64)))  # random bytes
        elif kind < 0.11:
            cut = rng.randrange(len(body))
            body = body[:cut] + b"\xff\xc3\x28" + body[cut:]  # invalid UTF-8
        elif kind < 0.12:
            body = b"[" * 200_000
        bodies.append((path, body))
    return bodies


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    running = start_tiny_server(tmp_path_factory.mktemp("tiny-fuzz"), max_num_seqs=64, max_queued_requests=4096,
                                max_body_bytes=1 << 20)
    yield running
    running.stop()


def test_fuzzed_bodies_get_200_or_4xx_and_the_server_stays_healthy(server):
    bodies = fuzz_bodies(random.Random(1234))

    async def send_all():
        results: list[tuple[bytes, int, bytes]] = []
        semaphore = asyncio.Semaphore(CONCURRENCY)
        async with httpx.AsyncClient(base_url=server.base_url, timeout=60) as http:
            async def one(path: str, body: bytes) -> None:
                async with semaphore:
                    response = await http.post(path, content=body, headers={"Content-Type": "application/json"})
                    results.append((body, response.status_code, response.content))
            await asyncio.wait_for(asyncio.gather(*(one(p, b) for p, b in bodies)), 240)
        return results

    results = asyncio.run(send_all())
    assert len(results) == NUM_BODIES
    statuses = {}
    for body, status, content in results:
        statuses[status] = statuses.get(status, 0) + 1
        assert status == 200 or 400 <= status < 500, (status, body[:200], content[:300])
        if status != 200:
            error = json.loads(content)["error"]
            assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert statuses.get(200, 0) > 50 and statuses.get(400, 0) > 1000, statuses  # both paths were exercised
    assert httpx.get(f"{server.base_url}/health").status_code == 200
    server.wait_until(lambda: server.metric("pagedcore_kv_cache_used_blocks") == 0, 10, "blocks to be released")
    ok = httpx.post(f"{server.base_url}/v1/completions", json={"prompt": "still alive", "max_tokens": 2})
    assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] == 2
