"""POST /v1/completions and /v1/chat/completions: parse, build engine requests, then stream SSE
chunks or collect one response. The request's engine work is aborted as soon as its client goes
away (a failed send while streaming, or a disconnect seen while collecting)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Iterator, Sequence

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from pagedcore.engine.sampling_params import SamplingParams
from pagedcore.tokenizers.chat_template import render_chat
from pagedcore.server.tools import TOOL_PARSERS, ToolOutput, ToolParser
from pagedcore.server.async_engine import (AsyncEngine, EngineDeadError, EngineRequest, GenerationHandle, QueueFullError,
                                           RequestDelta)
from pagedcore.server.errors import APIError, bad_request
from pagedcore.server.protocol import (ChatCompletionRequest, CompletionRequest, DetokenizeRequest, NamedToolChoice,
                                      TokenizeRequest, conversation_of, parse_body)
from pagedcore.server.responses import (ChoiceAccumulator, TokenText, Usage, chat_logprobs, completion_logprobs,
                                        echoed, new_id, prompt_logprobs_body, response_base, sse, without_generated)
from pagedcore.tokenizers.tokenizer import Tokenizer

_DISCONNECT_POLL_S = 0.25  # how often a non-streaming request checks that its client is still there
_CLIENT_CLOSED_REQUEST = 499  # nginx's status for a client that went away (never reaches the client)


logger = logging.getLogger("pagedcore.server")


def log_user(request_id: str, user: str | None) -> None:
    """OpenAI's `user` identifies the end user for abuse monitoring: it goes to the server log."""
    if user is not None:
        logger.info("request %s: user %r", request_id, user)


class OpenAIHandlers:
    def __init__(self, engine: AsyncEngine, tokenizer: Tokenizer | None, model_name: str, max_model_len: int,
                 on_rejected: Callable[[str], None], tool_parser: ToolParser | None = None):
        self.engine = engine
        self.tool_parser = tool_parser  # reads the model's tool calls under tool_choice "auto" (None: refused)
        self.tokenizer = tokenizer
        self.model_name = model_name
        self.max_model_len = max_model_len
        self.token_text = TokenText(tokenizer)
        self.on_rejected = on_rejected  # metrics hook: reason -> None

    # ---- routes ------------------------------------------------------------------------------

    async def completions(self, request: Request) -> Response:
        body = parse_body(CompletionRequest, await request.body())
        self._check_model(body.model)
        params = body.to_sampling_params()
        await self._compile_grammar(params, body.structured_outputs_param)
        prompts = []
        for prompt in body.prompts():
            ids = await self._encode(prompt, "prompt") if isinstance(prompt, str) else list(prompt)
            prompts.append(EngineRequest(prompt if isinstance(prompt, str) else None, ids, params))
        echo = [self._echo_text(p) for p in prompts] if body.echo else None
        handle = await self._submit(prompts, "prompt")
        request_id = new_id("cmpl")
        log_user(request_id, body.user)
        base = response_base(request_id, "text_completion", self.model_name)
        if body.stream:
            return self._stream(self._completion_chunks(handle, base, body, prompts, echo))
        return await self._collect(request, handle, lambda: self._completion_body(handle, base, body, prompts, echo))

    async def chat(self, request: Request) -> Response:
        body = parse_body(ChatCompletionRequest, await request.body())
        self._check_model(body.model)
        params = body.to_sampling_params()
        tools = self._tool_output_of(body)
        if tools.parser is not None and tools.parser.needs_special_tokens and params.skip_special_tokens:
            params = params.clone()
            params.skip_special_tokens = False  # the call marker is a special token
        await self._compile_grammar(params, body.structured_outputs_param)
        text = self._render(body.conversation(), body.add_generation_prompt, body.tool_definitions() or None)
        ids = await self._encode(text, "messages", add_special_tokens=False)
        handle = await self._submit([EngineRequest(None, ids, params)], "messages")
        request_id = new_id("chatcmpl")
        log_user(request_id, body.user)
        base = response_base(request_id, "chat.completion", self.model_name)
        if body.stream:
            return self._stream(self._chat_chunks(handle, {**base, "object": "chat.completion.chunk"}, body, tools))
        return await self._collect(request, handle, lambda: self._chat_body(handle, base, body, tools))

    async def tokenize(self, request: Request) -> Response:
        """vLLM's /tokenize: {"prompt"} or {"messages"} -> {"count", "max_model_len", "tokens"}."""
        body = parse_body(TokenizeRequest, await request.body())
        self._check_model(body.model)
        if (body.prompt is None) == (body.messages is None):
            raise bad_request("give exactly one of prompt and messages", param="prompt")
        if self.tokenizer is None:
            raise bad_request("this model has no tokenizer", param="prompt")
        if body.messages is not None:
            text = self._render(conversation_of(body.messages), body.add_generation_prompt)
            ids = await asyncio.to_thread(self.tokenizer.encode, text, False)
        else:
            ids = await asyncio.to_thread(self.tokenizer.encode, body.prompt, body.add_special_tokens)
        return JSONResponse({"count": len(ids), "max_model_len": self.max_model_len, "tokens": ids})

    async def detokenize(self, request: Request) -> Response:
        """vLLM's /detokenize: {"tokens"} -> {"prompt"}."""
        body = parse_body(DetokenizeRequest, await request.body())
        self._check_model(body.model)
        if self.tokenizer is None:
            raise bad_request("this model has no tokenizer", param="tokens")
        vocab_size = self.engine.engine.sampler.vocab_size
        outside = [t for t in body.tokens if t >= vocab_size]
        if outside:
            raise bad_request(f"tokens must be in [0, {vocab_size - 1}] (the vocabulary), got {outside[:5]}",
                              param="tokens", code="invalid_value")
        text = await asyncio.to_thread(self.tokenizer.decode, body.tokens, False)
        return JSONResponse({"prompt": text})

    # ---- shared steps ------------------------------------------------------------------------

    def _tool_output_of(self, body: ChatCompletionRequest) -> ToolOutput:
        choice = body.effective_tool_choice
        if isinstance(choice, NamedToolChoice):
            return ToolOutput("named", function=choice.function.name)
        if choice == "auto":
            if self.tool_parser is None:
                raise bad_request("tool_choice 'auto' needs a parser of this model's tool-call syntax, and this "
                                  "model family has none: start the server with --tool-call-parser "
                                  f"{'|'.join(TOOL_PARSERS)}, or use tool_choice 'required' or a named function",
                                  param="tool_choice", code="unsupported")
            return ToolOutput("auto", parser=self.tool_parser)
        return ToolOutput(choice if choice == "required" else "text")

    def _render(self, conversation: list[dict], add_generation_prompt: bool, tools: list[dict] | None = None) -> str:
        template = self.tokenizer.chat_template if self.tokenizer is not None else None
        if template is None:
            raise bad_request("this model has no chat template: use /v1/completions", param="messages")
        try:
            return render_chat(template, conversation, add_generation_prompt=add_generation_prompt,
                               bos_token=self.tokenizer.bos_token, eos_token=self.tokenizer.eos_token,
                               template_kwargs={"tools": tools} if tools else None)
        except Exception as error:  # the template refused the conversation (raise_exception, bad roles)
            raise bad_request(f"the chat template refused these messages: {error}", param="messages") from error

    def _echo_text(self, request: EngineRequest) -> str:
        """The prompt's text for echo: as given, or the token ids decoded."""
        if request.prompt is not None:
            return request.prompt
        if self.tokenizer is None:
            raise bad_request("echo of a token-id prompt needs the model's tokenizer, and this model has none",
                              param="echo")
        return self.tokenizer.decode(request.prompt_token_ids, skip_special_tokens=False)

    def _check_model(self, model: str | None) -> None:
        if model is not None and model != self.model_name:
            raise bad_request(f"model {model!r} is not served here; the served model is {self.model_name!r}",
                              param="model", code="model_not_found")

    async def _encode(self, text: str, param: str, add_special_tokens: bool = True) -> list[int]:
        if self.tokenizer is None:
            raise bad_request("this model has no tokenizer: give the prompt as token ids", param=param)
        # Off the event loop: a long prompt takes a while to tokenize.
        ids = await asyncio.to_thread(self.tokenizer.encode, text, add_special_tokens)
        if len(ids) >= self.max_model_len:
            raise bad_request(f"the prompt has {len(ids)} tokens; this server's max_model_len is "
                              f"{self.max_model_len} tokens (prompt + completion)", param=param,
                              code="context_length_exceeded")
        return ids

    async def _compile_grammar(self, params: SamplingParams, param: str | None) -> None:
        """Compiles the structured output off the engine thread; what xgrammar refuses is a 400 naming
        the field it came from (the engine's messages say structured_outputs.<kind>)."""
        try:
            await self.engine.compile_grammar(params)
        except ValueError as error:
            message = str(error)
            engine_name = f"structured_outputs.{params.structured_outputs.key[0]}"
            if param is not None and message.startswith(engine_name):
                message = param + message[len(engine_name):]
            raise bad_request(message, param=param, code="invalid_value") from None
        except RuntimeError as error:
            if isinstance(error.__cause__, ImportError):  # xgrammar is not installed
                raise bad_request(str(error), param=param, code="unsupported") from None
            raise

    async def _submit(self, requests: list[EngineRequest], param: str) -> GenerationHandle:
        try:
            return await self.engine.submit(requests)
        except QueueFullError as error:
            self.on_rejected("queue_full")
            raise APIError(429, str(error), type="server_overloaded", code="queue_full",
                           headers={"Retry-After": "1"}) from None
        except EngineDeadError as error:
            self.on_rejected("engine_unavailable")
            raise APIError(503, f"the engine is unavailable: {error}", type="server_error",
                           code="engine_unavailable") from None
        except ValueError as error:  # the engine's admission checks name the limit
            self.on_rejected("invalid")
            limit_param = "max_tokens" if "max_tokens" in str(error) and "prompt" not in str(error) else param
            raise bad_request(str(error), param=limit_param, code="invalid_value") from None

    @staticmethod
    def _stream(chunks: AsyncIterator[str]) -> StreamingResponse:
        return StreamingResponse(chunks, media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @staticmethod
    async def _collect(request: Request, handle: GenerationHandle, build) -> Response:
        """Runs build() (which drains the handle) unless the client disconnects first."""
        task = asyncio.ensure_future(build())
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=_DISCONNECT_POLL_S)
                if done:
                    return JSONResponse(task.result())
                if await request.is_disconnected():
                    return Response(status_code=_CLIENT_CLOSED_REQUEST)
        except EngineDeadError as error:
            raise APIError(503, f"the engine stopped: {error}", type="server_error", code="engine_unavailable")
        finally:
            if not task.done():
                task.cancel()
            handle.close()

    @staticmethod
    def _error_event(error: Exception) -> str:
        return sse(APIError(503, f"the engine stopped: {error}", type="server_error",
                            code="engine_unavailable").body())

    # ---- completions -------------------------------------------------------------------------

    async def _sse_chunks(self, handle: GenerationHandle, base: dict, include_usage: bool,
                          choices_of: Callable[[RequestDelta], Iterator[dict]], first: Sequence[dict] = (),
                          prompt_only: bool = False):
        """SSE chunks: `first`, then one per choice that choices_of makes of each delta, the usage chunk
        when asked, and [DONE]; an engine failure becomes an error event. prompt_only: echo with
        max_tokens=0 (generated tokens dropped)."""
        usage = Usage()
        try:
            for choice in first:
                yield sse({**base, "choices": [choice]})
            async for delta in handle:
                if prompt_only:
                    delta = without_generated(delta)
                usage.add(delta)
                for choice in choices_of(delta):
                    yield sse({**base, "choices": [choice]})
            if include_usage:
                yield sse({**base, "choices": [], "usage": usage.body()})
        except EngineDeadError as error:
            yield self._error_event(error)
        finally:
            handle.close()
        yield sse("[DONE]")

    def _completion_chunks(self, handle: GenerationHandle, base: dict, body: CompletionRequest,
                           prompts: list[EngineRequest], echo: list[str] | None):
        """echo: each prompt's text, put (with its tokens' logprobs) in front of its choices' first chunk."""
        offsets: dict[int, int] = {}  # choice index -> characters sent
        prompt_logprobs: dict[int, list] = {}  # prompt index -> its prompt logprobs
        echoed_choices: set[int] = set()

        def choices_of(delta: RequestDelta) -> Iterator[dict]:
            if delta.prompt_logprobs is not None:
                prompt_logprobs[delta.prompt_index] = delta.prompt_logprobs
            for seq in delta.sequences:
                index = delta.prompt_index * body.n + seq.index
                echo_now = echo is not None and index not in echoed_choices
                if not echo_now and not seq.text and seq.finish_reason is None and seq.logprobs is None:
                    continue
                if echo_now:
                    echoed_choices.add(index)
                    seq = echoed(echo[delta.prompt_index], prompts[delta.prompt_index].prompt_token_ids,
                                 prompt_logprobs.get(delta.prompt_index), seq, body.scores_prompt_only)
                logprobs = completion_logprobs(seq, self.token_text, offsets.get(index, 0))
                offsets[index] = offsets.get(index, 0) + len(seq.text)
                yield {"index": index, "text": seq.text, "logprobs": logprobs, "finish_reason": seq.finish_reason,
                       "stop_reason": seq.stop_reason}

        return self._sse_chunks(handle, base, body.include_usage, choices_of, prompt_only=body.scores_prompt_only)

    async def _completion_body(self, handle: GenerationHandle, base: dict, body: CompletionRequest,
                               prompts: list[EngineRequest], echo: list[str] | None) -> dict:
        usage = Usage()
        choices: dict[int, ChoiceAccumulator] = {}
        prompt_logprobs: dict[int, list] = {}  # prompt index -> its prompt logprobs
        async for delta in handle:
            if body.scores_prompt_only:
                delta = without_generated(delta)
            usage.add(delta)
            if delta.prompt_logprobs is not None:
                prompt_logprobs[delta.prompt_index] = delta.prompt_logprobs
            for seq in delta.sequences:
                choices.setdefault(delta.prompt_index * body.n + seq.index, ChoiceAccumulator()).add(seq)
        out = []
        for index in sorted(choices):
            merged = choices[index].merged()
            prompt_index = index // body.n
            if echo is not None:
                merged = echoed(echo[prompt_index], prompts[prompt_index].prompt_token_ids,
                                prompt_logprobs.get(prompt_index), merged, body.scores_prompt_only)
            choice = {"index": index, "text": merged.text, "logprobs": completion_logprobs(merged, self.token_text, 0),
                      "finish_reason": merged.finish_reason, "stop_reason": merged.stop_reason}
            if body.prompt_logprobs is not None:  # vLLM's extra field, per choice
                choice["prompt_logprobs"] = prompt_logprobs_body(prompt_logprobs.get(prompt_index))
            out.append(choice)
        return {**base, "choices": out, "usage": usage.body()}

    # ---- chat --------------------------------------------------------------------------------

    def _chat_chunks(self, handle: GenerationHandle, base: dict, body: ChatCompletionRequest, tools: ToolOutput):
        num_top = body.top_logprobs or 0
        roles = [{"index": index, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                  "finish_reason": None} for index in range(body.n)]
        shapers = [ToolOutput(tools.mode, tools.parser, tools.function) for _ in range(body.n)]

        def choices_of(delta: RequestDelta) -> Iterator[dict]:
            for seq in delta.sequences:
                message, finish_reason = shapers[seq.index].delta(seq.text, seq.finish_reason)
                if not message and finish_reason is None and seq.logprobs is None:
                    continue
                yield {"index": seq.index, "delta": message,
                       "logprobs": chat_logprobs(seq, self.token_text, num_top), "finish_reason": finish_reason,
                       "stop_reason": seq.stop_reason}

        return self._sse_chunks(handle, base, body.include_usage, choices_of, first=roles)

    async def _chat_body(self, handle: GenerationHandle, base: dict, body: ChatCompletionRequest,
                         tools: ToolOutput) -> dict:
        usage = Usage()
        choices = [ChoiceAccumulator() for _ in range(body.n)]
        prompt_logprobs = None
        async for delta in handle:
            usage.add(delta)
            prompt_logprobs = delta.prompt_logprobs or prompt_logprobs
            for seq in delta.sequences:
                choices[seq.index].add(seq)
        out = []
        for index, choice in enumerate(choices):
            merged = choice.merged()
            message, finish_reason = tools.message(merged.text, merged.finish_reason)
            out.append({"index": index, "message": message,
                        "logprobs": chat_logprobs(merged, self.token_text, body.top_logprobs or 0),
                        "finish_reason": finish_reason, "stop_reason": merged.stop_reason})
        extra = {"prompt_logprobs": prompt_logprobs_body(prompt_logprobs)} if body.prompt_logprobs is not None else {}
        return {**base, "choices": out, "usage": usage.body(), **extra}
