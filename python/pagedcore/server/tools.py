"""Tool calling on /v1/chat/completions: what `tool_choice` asks of the output, and the model's text
turned into OpenAI `tool_calls`.

- "none": tools reach the template, the output is text.
- a named function: the output is constrained (xgrammar) to that function's parameters schema;
  it becomes one call of that function.
- "required": the output is constrained to a JSON array of {"name", "parameters"} objects, one of the
  given tools each (vLLM's schema); it becomes those calls.
- "auto" (the default when tools are given): the output is free; the model's own tool-call syntax is
  parsed by the parser of its family (ToolParser): Hermes `<tool_call>{...}</tool_call>` (Qwen2,
  Qwen3), Llama 3's JSON, Mistral's `[TOOL_CALLS][...]`.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass


@dataclass
class ToolCall:
    name: str
    arguments: str  # JSON text, as OpenAI's API carries it

    def body(self, index: int | None = None) -> dict:
        call = {"id": f"chatcmpl-tool-{uuid.uuid4().hex[:24]}", "type": "function",
                "function": {"name": self.name, "arguments": self.arguments}}
        return call if index is None else {"index": index, **call}


def required_schema(tools: list[dict], max_calls: int | None) -> dict:
    """The JSON schema of tool_choice="required": an array of calls, each one of the tools."""
    calls = [{"type": "object",
              "properties": {"name": {"type": "string", "enum": [tool["name"]]},
                             "parameters": tool.get("parameters") or {"type": "object"}},
              "required": ["name", "parameters"]} for tool in tools]
    schema = {"type": "array", "minItems": 1, "items": {"anyOf": calls}}
    if max_calls is not None:
        schema["maxItems"] = max_calls
    return schema


def calls_of_required(text: str) -> list[ToolCall]:
    """The calls of a tool_choice="required" output (the grammar makes it a JSON array); [] when the
    output was cut short (max_tokens, a stop string) and does not parse."""
    try:
        calls = json.loads(text)
        return [ToolCall(call["name"], json.dumps(call["parameters"], ensure_ascii=False)) for call in calls]
    except (ValueError, TypeError, KeyError):
        return []


def is_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def _as_call(value) -> ToolCall | None:
    """{"name": ..., "arguments" | "parameters": {...} or JSON text} -> a call; None otherwise."""
    if not isinstance(value, dict) or not isinstance(value.get("name"), str):
        return None
    arguments = value.get("arguments", value.get("parameters", {}))
    if isinstance(arguments, str):
        try:
            json.loads(arguments)
        except ValueError:
            return None
        return ToolCall(value["name"], arguments)
    return ToolCall(value["name"], json.dumps(arguments, ensure_ascii=False))


class ToolParser:
    """Finds a model family's tool calls in its output. `start` is the text that opens a call (the
    stream holds back text from there on); parse() -> (content before the calls or None, calls)."""

    name = ""
    start = ""
    needs_special_tokens = False  # the call marker is a special token, kept in the text

    def parse(self, text: str) -> tuple[str | None, list[ToolCall]]:
        raise NotImplementedError

    def call_start(self, text: str) -> int | None:
        """Where a call opens in the text so far (content ends there), or None."""
        at = text.find(self.start)
        return at if at >= 0 else None

    def held_back(self, text: str) -> int:
        """Characters at the end of the text so far that may begin a call: not streamed yet."""
        for keep in range(min(len(self.start) - 1, len(text)), 0, -1):
            if self.start.startswith(text[-keep:]):
                return keep
        return 0


class HermesParser(ToolParser):
    name, start = "hermes", "<tool_call>"
    _call = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)

    def parse(self, text):
        at = text.find(self.start)
        if at < 0:
            return text, []
        calls = []
        for body in self._call.findall(text[at:]):
            try:
                call = _as_call(json.loads(body))
            except ValueError:
                call = None
            if call is None:
                return text, []  # not a well-formed call: the text stays text
            calls.append(call)
        return (text[:at].strip() or None), calls


class Llama3JsonParser(ToolParser):
    """Llama 3.x's JSON tool calls: the whole output is {"name": ..., "parameters": {...}} (optionally
    after <|python_tag|>), several separated by ';'."""

    name, start = "llama3_json", "{"
    _tag = "<|python_tag|>"

    def call_start(self, text):
        stripped = text.lstrip()
        return len(text) - len(stripped) if stripped.startswith(("{", self._tag)) else None

    def held_back(self, text):
        stripped = text.lstrip()
        return len(text) if not stripped or self._tag.startswith(stripped) else 0

    def parse(self, text):
        body = text.strip().removeprefix("<|python_tag|>").strip()
        if not body.startswith("{"):
            return text, []
        decoder, calls, at = json.JSONDecoder(), [], 0
        while at < len(body):
            try:
                value, end = decoder.raw_decode(body, at)
            except ValueError:
                return text, []
            call = _as_call(value)
            if call is None:
                return text, []
            calls.append(call)
            at = end
            while at < len(body) and body[at] in " \n\t;":
                at += 1
        return None, calls


class MistralParser(ToolParser):
    """Mistral's [TOOL_CALLS] special token followed by a JSON array of {"name", "arguments"}."""

    name, start, needs_special_tokens = "mistral", "[TOOL_CALLS]", True

    def parse(self, text):
        at = text.find(self.start)
        if at < 0:
            return text, []
        try:
            value, _ = json.JSONDecoder().raw_decode(text[at + len(self.start):].strip())
        except ValueError:
            return text, []
        calls = [_as_call(v) for v in (value if isinstance(value, list) else [value])]
        if not calls or None in calls:
            return text, []
        return (text[:at].strip() or None), calls


TOOL_PARSERS = {parser.name: parser for parser in (HermesParser(), Llama3JsonParser(), MistralParser())}
# The parser of each supported model family (`pagedcore serve --tool-call-parser auto`).
PARSER_OF_MODEL_TYPE = {"qwen2": "hermes", "qwen3": "hermes", "llama": "llama3_json", "mistral": "mistral"}


def resolve_tool_parser(name: str, model_type: str | None) -> ToolParser | None:
    """--tool-call-parser: a parser's name, "auto" (the model family's, if it has one) or "none"."""
    if name == "none":
        return None
    if name == "auto":
        name = PARSER_OF_MODEL_TYPE.get(model_type or "", "")
        return TOOL_PARSERS.get(name)
    if name not in TOOL_PARSERS:
        raise ValueError(f"--tool-call-parser must be auto, none or one of {', '.join(TOOL_PARSERS)}, got {name!r}")
    return TOOL_PARSERS[name]


class ToolOutput:
    """Shapes one choice's text by the request's tool_choice: the message of a whole response
    (message()), or, streamed, the delta each new piece of text gives (delta())."""

    def __init__(self, mode: str, parser: ToolParser | None = None, function: str | None = None):
        self.mode = mode  # "text" (no tools or "none"), "named", "required" or "auto"
        self.parser = parser  # "auto" only
        self.function = function  # "named" only
        self.text = ""
        self.streamed = 0  # characters of text sent as content

    def calls(self, text: str, finish_reason: str | None) -> tuple[str | None, list[ToolCall]]:
        """(content, calls) of a finished output. A constrained output cut short (max_tokens, a stop
        string) is no call: it stays text."""
        if self.mode == "named":
            return (None, [ToolCall(self.function, text)]) if is_json(text) else (text, [])
        if self.mode == "required":
            calls = calls_of_required(text)
            return (None, calls) if calls else (text, [])
        if self.mode == "auto":
            return self.parser.parse(text)
        return text, []

    def message(self, text: str, finish_reason: str | None) -> tuple[dict, str | None]:
        """-> (the assistant message, its finish_reason): "tool_calls" when the model called tools
        (OpenAI's "stop" for a named tool_choice)."""
        content, calls = self.calls(text, finish_reason)
        message = {"role": "assistant", "content": content}
        if calls:
            message["tool_calls"] = [call.body() for call in calls]
            if self.mode != "named":
                finish_reason = "tool_calls"
        return message, finish_reason

    def delta(self, new_text: str, finish_reason: str | None) -> tuple[dict, str | None]:
        """The streamed delta for a piece of text: content as long as no call can be starting, the
        calls once the output is finished."""
        self.text += new_text
        if self.mode == "text":
            return ({"content": new_text} if new_text else {}), finish_reason
        if finish_reason is None:
            if self.mode != "auto":
                return {}, None  # a constrained call: sent whole when finished
            opens = self.parser.call_start(self.text)
            end = opens if opens is not None else len(self.text) - self.parser.held_back(self.text)
            return self._content_until(max(end, self.streamed)), None
        content, calls = self.calls(self.text, finish_reason)
        if not calls:
            return self._content_until(len(self.text)), finish_reason
        delta = self._content_until(self.streamed if content is None else max(self.streamed, len(content)))
        delta["tool_calls"] = [call.body(index) for index, call in enumerate(calls)]
        return delta, finish_reason if self.mode == "named" else "tool_calls"

    def _content_until(self, end: int) -> dict:
        piece, self.streamed = self.text[self.streamed:end], max(self.streamed, end)
        return {"content": piece} if piece else {}
