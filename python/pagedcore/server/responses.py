"""OpenAI response and stream-chunk bodies for completions and chat, built from RequestDeltas.

Choices are numbered prompt_index * n + sequence index, as OpenAI does for a list of prompts.
Log-probabilities are finite JSON numbers: -inf (a token the model gives zero probability) is
sent as -9999.0, as vLLM does.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
import uuid

from pagedcore.server.async_engine import RequestDelta, SequenceDelta
from pagedcore.tokenizers.tokenizer import Tokenizer

_MIN_LOGPROB = -9999.0


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def sse(body: dict | str) -> str:
    """One server-sent event; `body` is a JSON object or the literal [DONE]."""
    data = body if isinstance(body, str) else json.dumps(body, ensure_ascii=False, allow_nan=False)
    return f"data: {data}\n\n"


def _finite(value: float) -> float:
    return value if math.isfinite(value) else _MIN_LOGPROB


class TokenText:
    """Token id -> the string OpenAI's logprobs show; `token_id:N` when the model has no tokenizer."""

    def __init__(self, tokenizer: Tokenizer | None):
        self.tokenizer = tokenizer

    def __call__(self, token_id: int) -> str:
        if self.tokenizer is None:
            return f"token_id:{token_id}"
        return self.tokenizer.decode([token_id], skip_special_tokens=False)


class Usage:
    """Token counts of one HTTP request, summed over its prompts and choices."""

    def __init__(self) -> None:
        self.prompt_tokens: dict[int, int] = {}  # prompt index -> tokens
        self.cached_tokens: dict[int, int] = {}
        self.completion_tokens = 0

    def add(self, delta: RequestDelta) -> None:
        self.prompt_tokens[delta.prompt_index] = delta.num_prompt_tokens
        self.cached_tokens[delta.prompt_index] = delta.num_cached_tokens
        self.completion_tokens += sum(len(s.token_ids) for s in delta.sequences)

    def body(self) -> dict:
        prompt = sum(self.prompt_tokens.values())
        return {"prompt_tokens": prompt, "completion_tokens": self.completion_tokens,
                "total_tokens": prompt + self.completion_tokens,
                "prompt_tokens_details": {"cached_tokens": sum(self.cached_tokens.values())}}


def completion_logprobs(seq: SequenceDelta, token_text: TokenText, text_offset: int) -> dict | None:
    """Legacy completions shape: tokens, token_logprobs, top_logprobs, text_offset (per new token).
    An entry of None (the first token of an echoed prompt, which nothing scores) gives null."""
    if seq.logprobs is None:
        return None
    tokens, token_logprobs, tops, offsets = [], [], [], []
    offset = text_offset
    for token, entry in zip(seq.token_ids, seq.logprobs):
        text = token_text(token)
        tokens.append(text)
        if entry is None:
            token_logprobs.append(None)
            tops.append(None)
        else:
            token_logprobs.append(_finite(entry.get(token, _MIN_LOGPROB)))
            top = sorted(entry.items(), key=lambda kv: -kv[1])
            tops.append({token_text(t): _finite(lp) for t, lp in top})
        offsets.append(offset)
        offset += len(text)
    return {"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": tops, "text_offset": offsets}


def echoed(prompt_text: str, prompt_token_ids: list[int], prompt_logprobs: list | None, seq: SequenceDelta,
           prompt_only: bool) -> SequenceDelta:
    """A completion choice with its prompt in front (echo), as vLLM builds it: the prompt's text,
    tokens and logprobs ({token: Logprob} per token, None first), then the generated ones unless
    prompt_only (max_tokens=0)."""
    logprobs = None
    if seq.logprobs is not None:
        prompt_entries = [None if entry is None else {t: lp.logprob for t, lp in entry.items()}
                          for entry in prompt_logprobs or [None] * len(prompt_token_ids)]
        logprobs = prompt_entries + ([] if prompt_only else list(seq.logprobs))
    return SequenceDelta(seq.index, prompt_text + ("" if prompt_only else seq.text),
                         list(prompt_token_ids) + ([] if prompt_only else list(seq.token_ids)), logprobs,
                         seq.finish_reason, seq.stop_reason)


def without_generated(delta: RequestDelta) -> RequestDelta:
    """echo with max_tokens=0: the one token the engine ran (to compute the prompt's rows) is dropped,
    and a finished choice finished by its length (0)."""
    return dataclasses.replace(delta, sequences=[
        SequenceDelta(s.index, "", [], None if s.logprobs is None else [],
                      None if s.finish_reason is None else "length") for s in delta.sequences])


def prompt_logprobs_body(prompt_logprobs: list | None) -> list | None:
    """vLLM's prompt_logprobs field: null first, then {token id: {logprob, rank, decoded_token}}."""
    if prompt_logprobs is None:
        return None
    return [None if entry is None else
            {str(token): {"logprob": _finite(lp.logprob), "rank": lp.rank, "decoded_token": lp.decoded_token}
             for token, lp in entry.items()} for entry in prompt_logprobs]


def chat_logprobs(seq: SequenceDelta, token_text: TokenText, num_top: int) -> dict | None:
    """Chat shape: {"content": [{"token", "logprob", "bytes", "top_logprobs": [...]}]}."""
    if seq.logprobs is None:
        return None
    content = []
    for token, entry in zip(seq.token_ids, seq.logprobs):
        text = token_text(token)
        top = sorted(entry.items(), key=lambda kv: -kv[1])[:num_top]
        content.append({"token": text, "logprob": _finite(entry.get(token, _MIN_LOGPROB)),
                        "bytes": list(text.encode("utf-8")),
                        "top_logprobs": [{"token": token_text(t), "logprob": _finite(lp),
                                          "bytes": list(token_text(t).encode("utf-8"))} for t, lp in top]})
    return {"content": content}


class ChoiceAccumulator:
    """Collects the deltas of one choice for a non-streaming response."""

    def __init__(self) -> None:
        self.text = ""
        self.token_ids: list[int] = []
        self.logprob_deltas: list[SequenceDelta] = []
        self.finish_reason: str | None = None
        self.stop_reason: int | str | None = None

    def add(self, seq: SequenceDelta) -> None:
        self.text += seq.text
        self.token_ids += seq.token_ids
        if seq.logprobs is not None:
            self.logprob_deltas.append(seq)
        if seq.finish_reason is not None:
            self.finish_reason = seq.finish_reason
            self.stop_reason = seq.stop_reason

    def merged(self) -> SequenceDelta:
        logprobs = None
        if self.logprob_deltas:
            logprobs = [entry for d in self.logprob_deltas for entry in d.logprobs]
        return SequenceDelta(0, self.text, self.token_ids, logprobs, self.finish_reason, self.stop_reason)


def response_base(request_id: str, object_name: str, model: str) -> dict:
    return {"id": request_id, "object": object_name, "created": int(time.time()), "model": model}
