"""Request bodies of /v1/completions and /v1/chat/completions as strict pydantic models.

Strict means: no coercion ("1" is not 1, true is not 1), no NaN or infinity, bounded sizes. Types
and coarse bounds are checked here; the meaning of each sampling field is checked once, by
SamplingParams, whose ValueError names the field (mapped to a 400 with `param` set).

Structured outputs arrive as vLLM's server takes them: OpenAI's `response_format`, vLLM's
`structured_outputs` object, or vLLM's older `guided_*` fields; at most one constraint per request.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from pagedcore.engine.sampling_params import MAX_BAD_WORDS, MAX_LOGPROBS, SamplingParams
from pagedcore.engine.structured_outputs import StructuredOutputsParams
from pagedcore.server.errors import APIError, bad_request, from_validation_error
from pagedcore.server.tools import required_schema

MAX_PROMPTS = 64  # prompts in one /v1/completions request
MAX_N = 64  # completions per prompt (above max_num_seqs, the engine runs them in turns)
MAX_STOP = 16  # stop strings
MAX_STOP_CHARS = 256  # characters per stop string
MAX_STOP_TOKEN_IDS = 64
MAX_MESSAGES = 1024
MAX_TOKEN_ID = 2**31 - 1  # token ids travel as int32
INT64 = 2**63
MAX_INT32 = 2**31 - 1  # counts the native scheduler takes as int32
MAX_CHOICES = 1024  # strings of one choice constraint
MAX_TOOLS = 128  # tools of one request, tool calls of one message
MAX_TOOL_NAME = 64  # a function's name, as OpenAI limits it
MAX_SCHEMA_NAME = 64  # response_format.json_schema.name, as OpenAI limits it
STRUCTURED_OUTPUTS_BACKENDS = ("xgrammar", "auto")  # guided_decoding_backend values this server honours

TokenId = Annotated[int, Field(ge=0, le=MAX_TOKEN_ID)]
Stop = Annotated[str, Field(min_length=1, max_length=MAX_STOP_CHARS)]
NonEmpty = Annotated[str, Field(min_length=1)]
Choices = Annotated[list[NonEmpty], Field(min_length=1, max_length=MAX_CHOICES)]
JsonSchema = str | dict[str, Any]  # a JSON schema, as an object or as its text


class _Strict(BaseModel):
    # extra="forbid": a field this server does not implement is a 400 naming it, never dropped.
    model_config = ConfigDict(strict=True, allow_inf_nan=False, extra="forbid")


class StreamOptions(_Strict):
    include_usage: bool = False


class JsonSchemaFormat(_Strict):
    """OpenAI's response_format.json_schema."""

    name: str = Field(min_length=1, max_length=MAX_SCHEMA_NAME)
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None  # the schema is enforced either way, as in vLLM


class ResponseFormat(_Strict):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    def constraint(self) -> dict:
        """The StructuredOutputsParams fields this format sets ({} for text)."""
        if self.type != "json_schema":
            if self.json_schema is not None:
                raise bad_request(f"response_format.json_schema is only allowed with type 'json_schema', "
                                  f"got type {self.type!r}", param="response_format.json_schema")
            return {"json_object": True} if self.type == "json_object" else {}
        if self.json_schema is None:
            raise bad_request("response_format.json_schema is required with type 'json_schema': "
                              '{"name": ..., "schema": {...}}', param="response_format.json_schema")
        if self.json_schema.schema_ is None:
            raise bad_request("response_format.json_schema.schema is required: the JSON schema the output "
                              "must follow", param="response_format.json_schema.schema")
        return {"json": self.json_schema.schema_}


class StructuredOutputsRequest(_Strict):
    """vLLM's structured_outputs field: one constraint, and JSON's whitespace option."""

    json_: JsonSchema | None = Field(default=None, alias="json")
    regex: NonEmpty | None = None
    choice: Choices | None = None
    grammar: NonEmpty | None = None  # EBNF / GBNF with a `root` rule
    json_object: bool | None = None
    disable_any_whitespace: bool = False

    def constraint(self) -> dict:
        """The StructuredOutputsParams constraint fields given here (none: the options only)."""
        given = {"json": self.json_, "regex": self.regex, "choice": self.choice, "grammar": self.grammar,
                 "json_object": self.json_object or None}
        return {kind: value for kind, value in given.items() if value is not None}


class _SamplingRequest(_Strict):
    """Fields shared by completions and chat (OpenAI's, plus vLLM's extensions)."""

    model: str | None = Field(default=None, max_length=256)
    n: int = Field(default=1, ge=1, le=MAX_N)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: Stop | Annotated[list[Stop], Field(max_length=MAX_STOP)] | None = None
    stop_token_ids: Annotated[list[TokenId], Field(max_length=MAX_STOP_TOKEN_IDS)] | None = None
    max_tokens: int | None = Field(default=None, ge=0, le=MAX_INT32)  # 0: completions with echo only
    min_tokens: int = Field(default=0, ge=0, le=MAX_INT32)
    temperature: float = Field(default=1.0, ge=0.0, le=100.0)
    top_p: float = Field(default=1.0, ge=0.0, le=1.0)
    top_k: int = Field(default=0, ge=-1, le=MAX_INT32)
    min_p: float = Field(default=0.0, ge=0.0, le=1.0)
    seed: int | None = Field(default=None, ge=-INT64, le=INT64 - 1)
    presence_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    repetition_penalty: float = Field(default=1.0, gt=0.0, le=100.0)
    ignore_eos: bool = False
    skip_special_tokens: bool = True
    include_stop_str_in_output: bool = False
    logit_bias: Annotated[dict[str, float], Field(max_length=1024)] | None = None  # token id (as a string) -> bias
    bad_words: Annotated[list[Stop], Field(max_length=MAX_BAD_WORDS)] | None = None  # vLLM's: never generated
    prompt_logprobs: int | None = Field(default=None, ge=0, le=MAX_LOGPROBS)  # vLLM's; not with stream=true
    user: str | None = Field(default=None, max_length=256)
    response_format: ResponseFormat | None = None
    structured_outputs: StructuredOutputsRequest | None = None  # vLLM's
    # vLLM's older spellings of structured_outputs (removed in vLLM 0.12; many clients still send them)
    guided_json: JsonSchema | None = None
    guided_regex: NonEmpty | None = None
    guided_choice: Choices | None = None
    guided_grammar: NonEmpty | None = None
    guided_whitespace_pattern: str | None = None  # refused: xgrammar takes no whitespace pattern
    guided_decoding_backend: str | None = Field(default=None, max_length=64)  # vLLM V1: the server's backend only

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage

    def _logit_bias(self) -> dict[int, float] | None:
        """OpenAI sends token ids as JSON object keys, i.e. strings."""
        if not self.logit_bias:
            return None
        bias = {}
        for key, value in self.logit_bias.items():
            if not key.isdigit() or int(key) > MAX_TOKEN_ID:
                raise bad_request(f"logit_bias keys must be token ids (integers in [0, {MAX_TOKEN_ID}]), got {key!r}",
                                  param="logit_bias", code="invalid_value")
            bias[int(key)] = value
        return bias

    def _constraint_sources(self) -> dict[str, dict]:
        """Each field asking for a structured output -> the StructuredOutputsParams fields it sets."""
        sources = {}
        if self.response_format is not None and (constraint := self.response_format.constraint()):
            sources["response_format"] = constraint
        if self.structured_outputs is not None and (constraint := self.structured_outputs.constraint()):
            sources["structured_outputs"] = constraint
        for kind in ("json", "regex", "choice", "grammar"):
            if (value := getattr(self, f"guided_{kind}")) is not None:
                sources[f"guided_{kind}"] = {kind: value}
        return sources

    @property
    def structured_outputs_param(self) -> str | None:
        """The field holding the request's constraint (what a compile error names), or None; for a
        request that to_sampling_params accepted (one constraint at most)."""
        sources = self._constraint_sources()
        if not sources:
            return None
        field, constraint = next(iter(sources.items()))
        if field == "response_format":
            return "response_format.json_schema.schema" if "json" in constraint else field
        if field == "structured_outputs" and len(constraint) == 1:
            return f"structured_outputs.{next(iter(constraint))}"
        if field == "tool_choice":
            return "tools"  # the schema compiled is the tools' parameters
        return field

    def _structured_outputs(self) -> StructuredOutputsParams | None:
        """The request's constraint; APIError(400) for conflicting or refused fields, ValueError (naming
        structured_outputs) for a structured_outputs object without exactly one constraint. As in vLLM, a structured_outputs object carrying only disable_any_whitespace applies it to the
        response_format or guided_json constraint."""
        if self.guided_whitespace_pattern is not None:
            raise bad_request("guided_whitespace_pattern is not supported: xgrammar takes no whitespace pattern "
                              "(structured_outputs.disable_any_whitespace=true gives JSON without free whitespace)",
                              param="guided_whitespace_pattern", code="unsupported")
        if self.guided_decoding_backend not in (None, *STRUCTURED_OUTPUTS_BACKENDS):
            raise bad_request(f"guided_decoding_backend must be one of {', '.join(STRUCTURED_OUTPUTS_BACKENDS)} "
                              f"(this server's only backend is xgrammar) or left out, got "
                              f"{self.guided_decoding_backend!r}", param="guided_decoding_backend", code="unsupported")
        sources = self._constraint_sources()
        if len(sources) > 1:
            raise bad_request(f"a request takes one structured output constraint; this one has {len(sources)}: "
                              f"{', '.join(sources)}", param=list(sources)[1], code="invalid_value")
        if not sources and self.structured_outputs is None:
            return None
        options = self.structured_outputs
        constraint = next(iter(sources.values()), {})  # {}: structured_outputs without a constraint (refused)
        return StructuredOutputsParams(**constraint,
                                       disable_any_whitespace=options is not None and options.disable_any_whitespace)

    def _sampling_params(self, max_tokens: int | None, logprobs: int | None,
                         prompt_logprobs: int | None = None) -> SamplingParams:
        if self.stream_options is not None and not self.stream:
            raise bad_request("stream_options is only allowed with stream=true", param="stream_options")
        if self.prompt_logprobs is not None and self.stream:
            raise bad_request("prompt_logprobs are not available with stream=true (as in vLLM)",
                              param="prompt_logprobs")
        try:
            return SamplingParams(
                n=self.n, temperature=self.temperature, top_p=self.top_p, top_k=self.top_k, min_p=self.min_p,
                seed=self.seed, stop=self.stop, stop_token_ids=self.stop_token_ids, max_tokens=max_tokens,
                min_tokens=self.min_tokens, ignore_eos=self.ignore_eos, presence_penalty=self.presence_penalty,
                frequency_penalty=self.frequency_penalty, repetition_penalty=self.repetition_penalty,
                logprobs=logprobs, skip_special_tokens=self.skip_special_tokens,
                include_stop_str_in_output=self.include_stop_str_in_output, logit_bias=self._logit_bias(),
                bad_words=self.bad_words,
                prompt_logprobs=self.prompt_logprobs if prompt_logprobs is None else prompt_logprobs,
                structured_outputs=self._structured_outputs())
        except ValueError as error:  # SamplingParams names the field first: "top_p must be in (0, 1], got 0.0"
            field = str(error).split(" ", 1)[0]
            raise bad_request(str(error), param=field if field in type(self).model_fields else None,
                              code="invalid_value") from error


class CompletionRequest(_SamplingRequest):
    prompt: (Annotated[str, Field(min_length=1)]
             | Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1, max_length=MAX_PROMPTS)]
             | Annotated[list[TokenId], Field(min_length=1)]
             | Annotated[list[Annotated[list[TokenId], Field(min_length=1)]],
                         Field(min_length=1, max_length=MAX_PROMPTS)])
    logprobs: int | None = Field(default=None, ge=0, le=MAX_LOGPROBS)
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = Field(default=None, ge=1, le=MAX_N)

    def prompts(self) -> list[str | list[int]]:
        """The prompt field as a list of prompts (text or token ids)."""
        if isinstance(self.prompt, str) or (self.prompt and isinstance(self.prompt[0], int)):
            return [self.prompt]
        return list(self.prompt)

    @property
    def scores_prompt_only(self) -> bool:
        """echo with max_tokens=0: the prompt (and its logprobs) back, nothing generated, as vLLM does
        for prompt scoring (lm-eval-harness loglikelihood)."""
        return self.echo and self.max_tokens == 0

    def to_sampling_params(self) -> SamplingParams:
        if self.suffix:
            raise bad_request("suffix is not supported", param="suffix", code="unsupported")
        if self.best_of is not None and self.best_of != self.n:
            raise bad_request(f"best_of must equal n ({self.n}) when given", param="best_of")
        if self.max_tokens == 0 and not self.echo:
            raise bad_request("max_tokens must be >= 1 (0 only with echo=true, which scores the prompt)",
                              param="max_tokens", code="invalid_value")
        max_tokens = 16 if self.max_tokens is None else self.max_tokens
        # As vLLM does: echo returns the prompt's logprobs with the completion's; max_tokens=0 still
        # runs one step (its token is dropped) so the prompt's rows are computed.
        prompt_logprobs = self.logprobs if self.echo and self.prompt_logprobs is None else None
        return self._sampling_params(max(max_tokens, 1), self.logprobs, prompt_logprobs)


class TextPart(_Strict):
    type: Literal["text"]
    text: str


# Content parts OpenAI defines that a text-only model cannot take: refused with this reason.
_UNSUPPORTED_PARTS = {"image_url": "images are not supported", "input_image": "images are not supported",
                      "input_audio": "audio is not supported", "file": "file inputs are not supported"}


class FunctionCall(_Strict):
    name: str = Field(min_length=1, max_length=MAX_TOOL_NAME)
    arguments: str  # JSON text


class MessageToolCall(_Strict):
    """A tool call of an earlier assistant turn, sent back in the conversation."""

    id: str = Field(max_length=256)
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | Annotated[list[TextPart], Field(max_length=MAX_MESSAGES)] | None = None
    name: str | None = Field(default=None, max_length=256)
    tool_calls: Annotated[list[MessageToolCall], Field(max_length=MAX_TOOLS)] | None = None  # assistant turns
    tool_call_id: str | None = Field(default=None, max_length=256)  # role "tool": the call it answers

    @field_validator("content", mode="before")
    @classmethod
    def _refuse_other_parts(cls, content):
        if isinstance(content, list):
            for part in content:
                kind = part.get("type") if isinstance(part, dict) else None
                if kind in _UNSUPPORTED_PARTS:
                    raise ValueError(f"{_UNSUPPORTED_PARTS[kind]}: this server runs a text-only model")
        return content

    def text(self) -> str:
        """The message as the template takes it: text parts joined with newlines, as vLLM does."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "\n".join(part.text for part in self.content)


def conversation_of(messages: list[ChatMessage]) -> list[dict]:
    """Messages as the chat template expects them; 'developer' is OpenAI's new name for 'system'.
    A participant's `name`, an assistant turn's tool_calls (arguments as objects, as HF templates
    take them) and a tool message's tool_call_id reach the template as HF transformers passes them."""
    conversation = []
    for index, m in enumerate(messages):
        if m.tool_calls is not None and m.role != "assistant":
            raise bad_request("tool_calls are only allowed on assistant messages", param=f"messages.{index}.tool_calls")
        if m.tool_call_id is not None and m.role != "tool":
            raise bad_request("tool_call_id is only allowed on tool messages", param=f"messages.{index}.tool_call_id")
        message = {"role": "system" if m.role == "developer" else m.role, "content": m.text()}
        if m.name is not None:
            message["name"] = m.name
        if m.tool_call_id is not None:
            message["tool_call_id"] = m.tool_call_id
        if m.tool_calls is not None:
            calls = []
            for k, call in enumerate(m.tool_calls):
                try:
                    arguments = json.loads(call.function.arguments)
                except ValueError:
                    raise bad_request("a tool call's arguments must be JSON text",
                                      param=f"messages.{index}.tool_calls.{k}.function.arguments") from None
                calls.append({"id": call.id, "type": "function",
                              "function": {"name": call.function.name, "arguments": arguments}})
            message["tool_calls"] = calls
        conversation.append(message)
    return conversation


class FunctionDefinition(_Strict):
    name: str = Field(min_length=1, max_length=MAX_TOOL_NAME, pattern=r"^[a-zA-Z0-9_.-]+$")
    description: str | None = None
    parameters: dict[str, Any] | None = None  # a JSON schema of the arguments object
    strict: bool | None = None  # the schema is enforced either way where the output is constrained


class ToolDefinition(_Strict):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(_Strict):
    name: str = Field(min_length=1, max_length=MAX_TOOL_NAME)


class NamedToolChoice(_Strict):
    type: Literal["function"]
    function: NamedFunction


class ChatCompletionRequest(_SamplingRequest):
    messages: Annotated[list[ChatMessage], Field(min_length=1, max_length=MAX_MESSAGES)]
    max_completion_tokens: int | None = Field(default=None, ge=1, le=MAX_INT32)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_LOGPROBS)
    add_generation_prompt: bool = True
    tools: Annotated[list[ToolDefinition], Field(max_length=MAX_TOOLS)] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None  # false: at most one call

    def conversation(self) -> list[dict]:
        return conversation_of(self.messages)

    def tool_definitions(self) -> list[dict]:
        """The tools as the chat template takes them (OpenAI's {"type": "function", "function": ...})."""
        return [tool.model_dump(exclude_none=True) for tool in self.tools or ()]

    @property
    def effective_tool_choice(self) -> str | NamedToolChoice:
        """tool_choice with OpenAI's defaults: "auto" when tools are given, else "none"; checked
        against the tools (a named function must be one of them; auto / required need tools)."""
        names = [tool.function.name for tool in self.tools or ()]
        if len(set(names)) != len(names):
            raise bad_request("tools must have distinct function names", param="tools")
        choice = self.tool_choice if self.tool_choice is not None else ("auto" if names else "none")
        if isinstance(choice, NamedToolChoice):
            if choice.function.name not in names:
                raise bad_request(f"tool_choice names function {choice.function.name!r}, which is not among the "
                                  f"tools ({', '.join(names) or 'none given'})", param="tool_choice.function.name")
        elif choice in ("auto", "required") and not names:
            raise bad_request(f"tool_choice {choice!r} needs tools", param="tool_choice")
        if self.parallel_tool_calls is False and choice == "auto":
            raise bad_request("parallel_tool_calls=false is supported with tool_choice 'required' or a named "
                              "function (whose output is constrained), not with 'auto'", param="parallel_tool_calls",
                              code="unsupported")
        return choice

    def _constraint_sources(self) -> dict[str, dict]:
        sources = super()._constraint_sources()
        choice = self.effective_tool_choice
        if isinstance(choice, NamedToolChoice):
            tool = next(t.function for t in self.tools if t.function.name == choice.function.name)
            sources["tool_choice"] = {"json": tool.parameters or {"type": "object"}}
        elif choice == "required":
            functions = [t.function.model_dump(exclude_none=True) for t in self.tools]
            sources["tool_choice"] = {"json": required_schema(functions, 1 if self.parallel_tool_calls is False else None)}
        return sources

    def to_sampling_params(self) -> SamplingParams:
        if self.top_logprobs is not None and not self.logprobs:
            raise bad_request("top_logprobs needs logprobs=true", param="top_logprobs")
        if self.max_tokens == 0:
            raise bad_request("max_tokens must be >= 1", param="max_tokens", code="invalid_value")
        max_tokens = self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens
        return self._sampling_params(max_tokens, (self.top_logprobs or 0) if self.logprobs else None)


def parse_body(model: type[_Strict], body: bytes) -> _Strict:
    """Parses and validates a JSON body; APIError(400) naming the offending field otherwise."""
    try:
        return model.model_validate_json(body)
    except ValidationError as error:
        raise from_validation_error(error) from None
    except (ValueError, RecursionError) as error:  # defensive: pydantic reports these as ValidationError
        raise APIError(400, f"the body is not valid JSON: {error}", code="invalid_json") from None


class TokenizeRequest(_Strict):
    """vLLM's /tokenize: a prompt, or chat messages rendered with the model's template."""

    model: str | None = Field(default=None, max_length=256)
    prompt: str | None = None
    messages: Annotated[list[ChatMessage], Field(min_length=1, max_length=MAX_MESSAGES)] | None = None
    add_special_tokens: bool = True
    add_generation_prompt: bool = True


class DetokenizeRequest(_Strict):
    model: str | None = Field(default=None, max_length=256)
    tokens: Annotated[list[TokenId], Field(max_length=1 << 20)]
