"""Structured outputs through the OpenAI-compatible server (CPU, a tiny random Llama): OpenAI's
response_format, vLLM's structured_outputs object and its older guided_* fields, streamed and not,
on both routes; the 400s for constraints that are malformed, uncompilable or too many; and the
grammar compiled in a worker thread while the engine thread keeps serving.

A random model never closes a free string and wanders in JSON's optional whitespace, so the JSON
schemas here hold bounded values only (enums, booleans, bounded integers, no extra properties), and
object schemas are sent with structured_outputs.disable_any_whitespace."""

from __future__ import annotations

import json
import re
import threading
from enum import Enum
from pathlib import Path

import httpx
import jsonschema
import openai
import pydantic
import pytest
from server_harness import start_tiny_server

KEY = "test-key-structured"
NO_FREE_WHITESPACE = {"structured_outputs": {"disable_any_whitespace": True}}
REGEX = r"[a-c]{3}-\d{2}"
CHOICES = ["positive", "negative", "not sure"]
GRAMMAR = 'root ::= "(" digit+ ")" | "none"\ndigit ::= [0-9]'
# Token ids in the SmolLM2 vocabulary of the tiny model: "[" 75, "[[" 32803, "]" 77, "{}" 6150; 2 is EOS.
ARRAY_TOKENS, EMPTY_OBJECT_TOKEN, EOS_TOKEN = (75, 32803, 77), 6150, 2


# vLLM's structured outputs guide (its pydantic example), with bounded fields in place of free strings.
class CarType(str, Enum):
    sedan = "sedan"
    suv = "SUV"
    truck = "Truck"
    coupe = "Coupe"


class CarDescription(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")  # additionalProperties: false

    car_type: CarType
    year: int = pydantic.Field(ge=1990, le=2030)
    electric: bool


CAR_SCHEMA = CarDescription.model_json_schema()
CAR_FORMAT = {"type": "json_schema", "json_schema": {"name": "car-description", "schema": CAR_SCHEMA}}
PROMPT = [{"role": "user", "content": "Generate a JSON with the type, year and drive of a car"}]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("tiny-llama-structured")


@pytest.fixture(scope="module")
def server(tiny_dir):
    running = start_tiny_server(tiny_dir, api_key=KEY)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=KEY, max_retries=0, timeout=120)


def post(server, path: str, body: dict, timeout: float = 120) -> httpx.Response:
    return httpx.post(f"{server.base_url}{path}", json=body, headers=server.headers(), timeout=timeout)


def assert_car(text: str) -> None:
    jsonschema.validate(json.loads(text), CAR_SCHEMA)
    car = CarDescription.model_validate_json(text)
    assert 1990 <= car.year <= 2030 and car.car_type in CarType


def stream_texts(chunks, n: int, chat: bool) -> tuple[list[str], list[str | None]]:
    """Each choice's concatenated deltas and its finish_reason."""
    texts, reasons = [""] * n, [None] * n
    for chunk in chunks:
        for choice in chunk.choices:
            piece = (choice.delta.content if chat else choice.text) or ""
            texts[choice.index] += piece
            reasons[choice.index] = choice.finish_reason or reasons[choice.index]
    return texts, reasons


def assert_no_used_blocks(server) -> None:
    server.wait_until(lambda: server.metric("pagedcore_kv_cache_used_blocks") == 0, 10,
                      "every KV block to be released")


# ---- accepted forms --------------------------------------------------------------------------

def test_pydantic_json_schema_response_format_on_chat(client):
    out = client.chat.completions.create(model="tiny", messages=PROMPT, response_format=CAR_FORMAT, n=4, seed=3,
                                         max_tokens=120, extra_body=NO_FREE_WHITESPACE)
    assert len(out.choices) == 4
    for choice in out.choices:
        assert choice.finish_reason == "stop", choice.message.content
        assert_car(choice.message.content)


def test_openai_parse_helper_gets_a_pydantic_object(client):
    # The client's own structured-outputs helper: strict json_schema built from the model, parsed back.
    out = client.chat.completions.parse(model="tiny", messages=PROMPT, response_format=CarDescription, seed=5,
                                        max_tokens=120, extra_body=NO_FREE_WHITESPACE)
    car = out.choices[0].message.parsed
    assert isinstance(car, CarDescription) and 1990 <= car.year <= 2030
    assert CarDescription.model_validate_json(out.choices[0].message.content) == car


def test_json_schema_response_format_on_completions_with_free_whitespace(client):
    # A schema without whitespace positions inside: free whitespace (the default) cannot run away.
    for schema, check in (({"enum": ["red", "green", "blue"]}, lambda v: v in ("red", "green", "blue")),
                          ({"type": "integer", "minimum": -20, "maximum": 999}, lambda v: -20 <= v <= 999)):
        fmt = {"type": "json_schema", "json_schema": {"name": "value", "schema": schema, "strict": True}}
        out = client.completions.create(model="tiny", prompt="The value is", n=5, seed=1, max_tokens=40,
                                        extra_body={"response_format": fmt})  # vLLM's extension on completions
        for choice in out.choices:
            assert choice.finish_reason == "stop", choice.text
            value = json.loads(choice.text)
            jsonschema.validate(value, schema)
            assert check(value) and not isinstance(value, bool)


def test_json_object_is_an_object_even_where_the_model_wants_an_array(client):
    # The biases make an array the model's first wish and "{}" its second; EOS as soon as the grammar
    # allows it. JSON mode is an object (OpenAI's and vLLM's), so the array tokens must be masked.
    bias = {**{str(t): 100 for t in ARRAY_TOKENS}, str(EMPTY_OBJECT_TOKEN): 90, str(EOS_TOKEN): 100}
    for route in ("chat", "completions"):
        if route == "chat":
            out = client.chat.completions.create(model="tiny", messages=PROMPT, response_format={"type": "json_object"},
                                                 n=3, seed=2, max_tokens=60, logit_bias=bias)
            texts = [c.message.content for c in out.choices]
        else:
            out = client.completions.create(model="tiny", prompt="JSON:", n=3, seed=2, max_tokens=60,
                                            logit_bias=bias, extra_body={"response_format": {"type": "json_object"}})
            texts = [c.text for c in out.choices]
        assert [c.finish_reason for c in out.choices] == ["stop"] * 3
        for text in texts:
            assert isinstance(json.loads(text), dict), text


def test_response_format_text_is_unconstrained(client):
    constrained = client.completions.create(model="tiny", prompt="Hello", max_tokens=12, seed=4,
                                            extra_body={"ignore_eos": True, "response_format": {"type": "text"}})
    free = client.completions.create(model="tiny", prompt="Hello", max_tokens=12, seed=4,
                                     extra_body={"ignore_eos": True})
    assert constrained.choices[0].text == free.choices[0].text
    assert constrained.choices[0].finish_reason == "length"


def test_guided_choice_regex_and_grammar(client):
    chat = client.chat.completions.create(model="tiny", messages=PROMPT, n=6, seed=0, max_tokens=30,
                                          extra_body={"guided_choice": CHOICES})
    assert all(c.message.content in CHOICES and c.finish_reason == "stop" for c in chat.choices), chat.choices
    regex = client.completions.create(model="tiny", prompt="An id:", n=4, seed=0, max_tokens=30,
                                      extra_body={"guided_regex": REGEX, "guided_decoding_backend": "xgrammar"})
    for choice in regex.choices:
        assert re.fullmatch(REGEX, choice.text) and choice.finish_reason == "stop", choice.text
    grammar = client.completions.create(model="tiny", prompt="Digits:", n=4, seed=0, max_tokens=40,
                                        extra_body={"guided_grammar": GRAMMAR})
    for choice in grammar.choices:
        assert re.fullmatch(r"\(\d+\)|none", choice.text) and choice.finish_reason == "stop", choice.text
    guided_json = client.chat.completions.create(model="tiny", messages=PROMPT, seed=1, max_tokens=120,
                                                 extra_body={"guided_json": json.dumps(CAR_SCHEMA),
                                                             **NO_FREE_WHITESPACE})
    assert_car(guided_json.choices[0].message.content)


@pytest.mark.parametrize("constraint, check", [
    ({"regex": REGEX}, lambda text: re.fullmatch(REGEX, text)),
    ({"choice": CHOICES}, lambda text: text in CHOICES),
    ({"grammar": GRAMMAR}, lambda text: re.fullmatch(r"\(\d+\)|none", text)),
    ({"json": CAR_SCHEMA, "disable_any_whitespace": True}, lambda text: assert_car(text) is None),
    ({"json": json.dumps(CAR_SCHEMA), "disable_any_whitespace": True}, lambda text: assert_car(text) is None),
])
def test_structured_outputs_field(client, constraint, check):
    out = client.chat.completions.create(model="tiny", messages=PROMPT, n=3, seed=7, max_tokens=120,
                                         extra_body={"structured_outputs": constraint})
    for choice in out.choices:
        assert choice.finish_reason == "stop" and check(choice.message.content), choice.message.content


def test_streamed_constrained_outputs_match_the_collected_ones(client):
    body = dict(model="tiny", messages=PROMPT, response_format=CAR_FORMAT, n=2, seed=11, max_tokens=120,
                extra_body=NO_FREE_WHITESPACE)
    texts, reasons = stream_texts(client.chat.completions.create(stream=True, **body), 2, chat=True)
    assert reasons == ["stop", "stop"]
    for text in texts:
        assert_car(text)
    collected = client.chat.completions.create(**body)
    assert texts == [c.message.content for c in collected.choices]  # seeded: the same outputs

    stream = client.completions.create(model="tiny", prompt="An id:", n=3, seed=9, max_tokens=30, stream=True,
                                       stream_options={"include_usage": True}, extra_body={"guided_regex": REGEX})
    chunks = list(stream)
    texts, reasons = stream_texts([c for c in chunks if c.choices], 3, chat=False)
    assert reasons == ["stop"] * 3
    assert all(re.fullmatch(REGEX, text) for text in texts), texts
    assert chunks[-1].usage.completion_tokens >= 3  # the usage chunk came after the constrained choices


# ---- refused forms ---------------------------------------------------------------------------

BAD_CONSTRAINTS = [
    ({"guided_json": '{"type": "object",'}, "guided_json", "guided_json is not valid JSON"),
    ({"structured_outputs": {"json": '{"type": '}}, "structured_outputs.json", "structured_outputs.json is not valid JSON"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "objectx"}}}},
     "response_format.json_schema.schema", "response_format.json_schema.schema cannot be compiled"),
    ({"guided_regex": "[a-"}, "guided_regex", "guided_regex cannot be compiled"),
    ({"structured_outputs": {"regex": "(unclosed"}}, "structured_outputs.regex", "cannot be compiled"),
    ({"guided_grammar": "root ::= undefined_rule"}, "guided_grammar", "guided_grammar cannot be compiled"),
    ({"guided_regex": "a+", "guided_choice": ["a"]}, "guided_choice", "one structured output constraint; "
                                                                    "this one has 2: guided_regex, guided_choice"),
    ({"response_format": {"type": "json_object"}, "structured_outputs": {"regex": "a"}}, "structured_outputs",
     "has 2: response_format, structured_outputs"),
    ({"structured_outputs": {"regex": "a", "choice": ["b"]}}, "structured_outputs", "got regex, choice"),
    ({"structured_outputs": {"disable_any_whitespace": True}}, "structured_outputs", "got none"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "car"}}}, "response_format.json_schema.schema",
     "response_format.json_schema.schema is required"),
    ({"response_format": {"type": "json_schema"}}, "response_format.json_schema", "required with type 'json_schema'"),
    ({"response_format": {"type": "json_schema", "json_schema": {"schema": {}}}}, "response_format.json_schema.name",
     "Field required"),
    ({"response_format": {"type": "xml"}}, "response_format.type", "'text', 'json_object' or 'json_schema'"),
    ({"response_format": {"type": "text", "json_schema": {"name": "x", "schema": {}}}}, "response_format.json_schema",
     "only allowed with type 'json_schema'"),
    ({"guided_choice": []}, "guided_choice", "at least 1 item"),
    ({"guided_regex": ""}, "guided_regex", "at least 1 character"),
    ({"guided_whitespace_pattern": r"[ ]?", "guided_json": {}}, "guided_whitespace_pattern",
     "xgrammar takes no whitespace pattern"),
    ({"guided_decoding_backend": "outlines", "guided_regex": "a"}, "guided_decoding_backend", "got 'outlines'"),
    ({"structured_outputs": {"whitespace_pattern": " "}}, "structured_outputs.whitespace_pattern",
     "not supported by this server"),
    ({"guided_regex": "a+", "min_tokens": 3}, "min_tokens", "min_tokens cannot be combined with structured_outputs"),
]


@pytest.mark.parametrize("fields, param, contains", BAD_CONSTRAINTS)
@pytest.mark.parametrize("route", ["/v1/completions", "/v1/chat/completions"])
def test_bad_constraints_are_400_naming_the_field(server, route, fields, param, contains):
    body = {"prompt": "x"} if route == "/v1/completions" else {"messages": PROMPT}
    response = post(server, route, {**body, "max_tokens": 4, **fields})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and contains in error["message"], error
    assert error["type"] == "invalid_request_error"


def test_the_openai_client_raises_and_the_server_keeps_serving(server, client):
    with pytest.raises(openai.BadRequestError, match="guided_regex cannot be compiled"):
        client.completions.create(model="tiny", prompt="x", max_tokens=4, extra_body={"guided_regex": "[a-"})
    with pytest.raises(openai.BadRequestError, match="response_format.json_schema.schema is required"):
        client.chat.completions.create(model="tiny", messages=PROMPT, max_tokens=4,
                                       response_format={"type": "json_schema", "json_schema": {"name": "car"}})
    out = client.completions.create(model="tiny", prompt="x", max_tokens=20, seed=0, extra_body={"guided_regex": REGEX})
    assert re.fullmatch(REGEX, out.choices[0].text)
    assert server.async_engine.is_healthy()
    assert_no_used_blocks(server)


# ---- the grammar is compiled off the engine thread -------------------------------------------

def test_a_slow_compile_never_stalls_the_engine_thread(server, monkeypatch):
    engine = server.llm.engine
    original = engine.compile_grammar
    threads: list[str] = []
    entered, release = threading.Event(), threading.Event()

    def slow_compile(params):
        if params.structured_outputs is None:  # add_request asks for every request
            return original(params)
        threads.append(threading.current_thread().name)
        if threading.current_thread().name != "pagedcore-engine":
            entered.set()
            assert release.wait(60), "the test never released the compile"
        return original(params)

    monkeypatch.setattr(engine, "compile_grammar", slow_compile)
    schema = {"type": "object", "additionalProperties": False, "required": ["n"],
              "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 77}}}  # not compiled before
    body = {"prompt": "x", "max_tokens": 40, "seed": 0, "guided_json": schema, **NO_FREE_WHITESPACE}
    result: dict = {}
    worker = threading.Thread(target=lambda: result.update(response=post(server, "/v1/completions", body)))
    worker.start()
    try:
        assert entered.wait(60), "the handler never compiled the grammar"
        # The constrained request is held in its compile: the engine thread still serves others.
        free = post(server, "/v1/completions", {"prompt": "y", "max_tokens": 5, "seed": 0, "ignore_eos": True})
        assert free.status_code == 200 and free.json()["choices"][0]["finish_reason"] == "length"
        assert "response" not in result
    finally:
        release.set()
        worker.join(120)
    response = result["response"]
    assert response.status_code == 200, response.text
    jsonschema.validate(json.loads(response.json()["choices"][0]["text"]), schema)
    # Compiled first by the handler's worker thread, then looked up (cached) by add_request.
    assert threads[0] != "pagedcore-engine" and threads[1:] == ["pagedcore-engine"]
