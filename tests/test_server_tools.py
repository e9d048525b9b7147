"""Tool calling on /v1/chat/completions (CPU, a tiny random Llama): the tool-call parsers of each
model family on model-shaped text, streamed and whole; tool_choice "required" and a named function
(the output constrained to the tools' schemas) through the openai client; "auto" parsing the
model's own syntax (forced here with a regex: a random model never writes a call by chance); tools,
assistant tool_calls and tool messages reaching the chat template; and the 400s."""

from __future__ import annotations

import json

import httpx
import jsonschema
import openai
import pytest
from server_harness import start_tiny_server

from pagedcore.server.tools import TOOL_PARSERS, ToolOutput, resolve_tool_parser
from pagedcore.tokenizers.chat_template import render_chat

KEY = "test-key-tools"
# Bounded arguments only: a random model never closes a free string (see test_server_structured.py).
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather of a city",
    "parameters": {"type": "object", "properties": {"city": {"enum": ["Paris", "Oslo"]},
                                                    "unit": {"enum": ["celsius", "fahrenheit"]}},
                   "required": ["city", "unit"], "additionalProperties": False}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "parameters": {"type": "object", "properties": {"utc_offset": {"type": "integer",
                                                                                       "minimum": -12, "maximum": 14}},
                                       "required": ["utc_offset"], "additionalProperties": False}}}
SCHEMAS = {tool["function"]["name"]: tool["function"]["parameters"] for tool in (WEATHER, TIME)}
MESSAGES = [{"role": "user", "content": "What is the weather in Paris?"}]
COMPACT = {"structured_outputs": {"disable_any_whitespace": True}}


# ---- parsers and the streamed shape, on model-shaped text ------------------------------------

def test_hermes_parser_reads_qwen_style_calls():
    parser = TOOL_PARSERS["hermes"]
    text = ('Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
            '<tool_call>\n{"name": "get_time", "arguments": {"utc_offset": 1}}\n</tool_call>')
    content, calls = parser.parse(text)
    assert content == "Let me check."
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [("get_weather", {"city": "Paris"}),
                                                                 ("get_time", {"utc_offset": 1})]
    assert parser.parse("no calls here") == ("no calls here", [])
    broken = "<tool_call>{not json}</tool_call>"
    assert parser.parse(broken) == (broken, [])  # a malformed call stays text


def test_llama3_and_mistral_parsers():
    llama = TOOL_PARSERS["llama3_json"]
    content, calls = llama.parse('<|python_tag|>{"name": "get_time", "parameters": {"utc_offset": 2}}; '
                                 '{"name": "get_weather", "parameters": {"city": "Oslo"}}')
    assert content is None and [c.name for c in calls] == ["get_time", "get_weather"]
    assert json.loads(calls[1].arguments) == {"city": "Oslo"}
    assert llama.parse("It is sunny.") == ("It is sunny.", [])
    mistral = TOOL_PARSERS["mistral"]
    content, calls = mistral.parse('[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}}]')
    assert content is None and calls[0].name == "get_weather" and mistral.needs_special_tokens
    assert resolve_tool_parser("auto", "qwen3").name == "hermes"
    assert resolve_tool_parser("auto", "llama").name == "llama3_json"
    assert resolve_tool_parser("none", "qwen3") is None
    with pytest.raises(ValueError, match="--tool-call-parser must be"):
        resolve_tool_parser("json", "qwen3")


def test_streamed_auto_output_never_leaks_a_call_marker():
    # The text arrives in pieces that split the marker: content before it streams, the marker and
    # what follows are held back, the call arrives whole in the finishing delta.
    shaper = ToolOutput("auto", parser=TOOL_PARSERS["hermes"])
    pieces = ["Sure", ", checking. <to", "ol_", 'call>{"name": "get_weather", ', '"arguments": {"city": "Oslo"}}',
              "</tool_call>"]
    deltas = [shaper.delta(piece, None) for piece in pieces] + [shaper.delta("", "stop")]
    content = "".join(delta.get("content", "") for delta, _ in deltas)
    assert content == "Sure, checking. "
    final, reason = deltas[-1]
    assert reason == "tool_calls"
    assert final["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": '{"city": "Oslo"}'}
    # Text that only looked like the start of a marker is sent once it is clear it is not one.
    plain = ToolOutput("auto", parser=TOOL_PARSERS["hermes"])
    sent = [plain.delta(piece, None)[0].get("content", "") for piece in ["a <to", "ast"]]
    sent.append(plain.delta("", "length")[0].get("content", ""))
    assert "".join(sent) == "a <toast" and sent[0] == "a "


def test_a_constrained_call_cut_short_stays_text():
    # max_tokens or a stop string can end a constrained output before its JSON closes.
    for mode, extra in (("named", {"function": "get_weather"}), ("required", {})):
        shaper = ToolOutput(mode, **extra)
        message, reason = shaper.message('{"city": "Os', "length")
        assert message == {"role": "assistant", "content": '{"city": "Os'} and reason == "length"
        assert shaper.delta('[{"name": "get_w', "stop") == ({"content": '[{"name": "get_w'}, "stop")


def test_tools_and_tool_turns_reach_the_template():
    template = ("{% if tools %}{% for t in tools %}[tool {{ t.function.name }}]{% endfor %}{% endif %}"
                "{% for m in messages %}<{{ m.role }}>{{ m.content }}"
                "{% for c in m.tool_calls or [] %}(call {{ c.function.name }} {{ c.function.arguments | tojson }})"
                "{% endfor %}{% if m.tool_call_id %}(for {{ m.tool_call_id }}){% endif %}{% endfor %}")
    from pagedcore.server.protocol import ChatCompletionRequest

    body = ChatCompletionRequest.model_validate({"messages": [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "4 C"}], "tools": [WEATHER]})
    text = render_chat(template, body.conversation(), add_generation_prompt=False,
                       template_kwargs={"tools": body.tool_definitions()})
    assert text == ('[tool get_weather]<user>Weather?<assistant>(call get_weather {"city": "Oslo"})'
                    '<tool>4 C(for call_1)')


# ---- through the server ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def server(tmp_path_factory):
    running = start_tiny_server(tmp_path_factory.mktemp("tiny-llama-tools"), api_key=KEY)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=KEY, max_retries=0, timeout=120)


def post(server, body: dict) -> httpx.Response:
    return httpx.post(f"{server.base_url}/v1/chat/completions", json={"messages": MESSAGES, **body},
                      headers=server.headers(), timeout=120)


def assert_call(call, names=("get_weather", "get_time")) -> None:
    assert call.type == "function" and call.id and call.function.name in names
    jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])


def test_named_tool_choice_calls_that_function(client):
    out = client.chat.completions.create(
        model="tiny", messages=MESSAGES, tools=[WEATHER, TIME], n=3, seed=1, max_tokens=60,
        tool_choice={"type": "function", "function": {"name": "get_weather"}}, extra_body=COMPACT)
    for choice in out.choices:
        assert choice.finish_reason == "stop" and choice.message.content is None  # OpenAI's shape
        [call] = choice.message.tool_calls
        assert_call(call, names=("get_weather",))


def test_required_tool_choice_calls_one_of_the_tools_streamed_and_not(client):
    out = client.chat.completions.create(model="tiny", messages=MESSAGES, tools=[WEATHER, TIME], n=4, seed=2,
                                         max_tokens=120, tool_choice="required", extra_body=COMPACT)
    for choice in out.choices:
        assert choice.finish_reason == "tool_calls" and choice.message.tool_calls
        for call in choice.message.tool_calls:
            assert_call(call)
    calls, reasons = {}, []
    for chunk in client.chat.completions.create(model="tiny", messages=MESSAGES, tools=[WEATHER, TIME], seed=3,
                                                max_tokens=120, tool_choice="required", stream=True,
                                                parallel_tool_calls=False, extra_body=COMPACT):
        for choice in chunk.choices:
            for call in choice.delta.tool_calls or ():
                calls[call.index] = call
            reasons.append(choice.finish_reason)
    assert reasons[-1] == "tool_calls" and len(calls) == 1  # parallel_tool_calls=false: one call
    assert_call(calls[0])


def test_auto_reads_the_models_own_call_syntax(client):
    # The tiny model is a Llama: its parser is llama3_json. A regex makes the model write a call.
    call = '{"name": "get_weather", "parameters": {"city": "Oslo", "unit": "celsius"}}'
    forced = {"structured_outputs": {"regex": call.replace("{", r"\{").replace("}", r"\}")}}
    out = client.chat.completions.create(model="tiny", messages=MESSAGES, tools=[WEATHER], max_tokens=80,
                                         extra_body=forced)  # tool_choice defaults to "auto" with tools
    choice = out.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    assert choice.message.tool_calls[0].function.name == "get_weather"
    assert json.loads(choice.message.tool_calls[0].function.arguments) == {"city": "Oslo", "unit": "celsius"}
    chunks = list(client.chat.completions.create(model="tiny", messages=MESSAGES, tools=[WEATHER], max_tokens=80,
                                                 stream=True, extra_body=forced))
    streamed = [c.choices[0].delta for c in chunks if c.choices]
    assert not any(d.content for d in streamed)  # the call's JSON never went out as content
    assert [d.tool_calls[0].function.name for d in streamed if d.tool_calls] == ["get_weather"]
    # Free text under "auto" stays text; "none" never reads calls.
    text = client.chat.completions.create(model="tiny", messages=MESSAGES, tools=[WEATHER], max_tokens=8, seed=4,
                                          tool_choice="none")
    assert text.choices[0].message.tool_calls is None and text.choices[0].message.content


def test_tool_turns_are_accepted(client):
    messages = MESSAGES + [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather",
                                                              "arguments": '{"city": "Paris", "unit": "celsius"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18 C, sunny"}]
    out = client.chat.completions.create(model="tiny", messages=messages, tools=[WEATHER], tool_choice="none",
                                         max_tokens=4)
    assert out.choices[0].finish_reason == "length"


@pytest.mark.parametrize("body,param,contains", [
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
     "tool_choice.function.name", "not among the tools"),
    ({"tool_choice": "required"}, "tool_choice", "needs tools"),
    ({"tools": [WEATHER, WEATHER]}, "tools", "distinct"),
    ({"tools": [WEATHER], "parallel_tool_calls": False}, "parallel_tool_calls", "not with 'auto'"),
    ({"tools": [WEATHER], "tool_choice": "required", "response_format": {"type": "json_object"}}, "tool_choice",
     "one structured output constraint"),
    ({"tools": [{"type": "function", "function": {"name": "bad name!"}}]}, "tools.0.function.name", "pattern"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "nonsense"}}}],
      "tool_choice": "required"}, "tools", "cannot be compiled"),
    ({"messages": [{"role": "user", "content": "x", "tool_calls": []}]}, "messages.0.tool_calls", "assistant"),
    ({"messages": [{"role": "assistant", "content": None, "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{oops"}}]}]},
     "messages.0.tool_calls.0.function.arguments", "JSON"),
])
def test_bad_tool_requests_are_400_naming_the_field(server, body, param, contains):
    response = post(server, body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and contains in error["message"], error


def test_auto_without_a_parser_is_refused_by_name(tmp_path):
    running = start_tiny_server(tmp_path, api_key=KEY, tool_call_parser="none")
    try:
        response = post(running, {"tools": [WEATHER]})
        assert response.status_code == 400
        assert "--tool-call-parser" in response.json()["error"]["message"]
        assert post(running, {"tools": [WEATHER], "tool_choice": "required", **COMPACT}).status_code == 200
    finally:
        running.stop()
