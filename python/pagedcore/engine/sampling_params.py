"""SamplingParams: how the tokens of one request are chosen and when its sequences stop.

Field names and defaults follow vLLM. Every field is checked once, at construction, and a bad
value raises ValueError naming the field and its allowed range.
"""

from __future__ import annotations

import copy
import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass, field

from pagedcore.engine.structured_outputs import StructuredOutputsParams

MAX_LOGPROBS = 20  # top log-probabilities returned per token, at most
MAX_INT32 = 2**31 - 1  # the native scheduler's token counts and ids are int32
MAX_LOGIT_BIAS = 100.0  # |bias| at most, as OpenAI's and vLLM's APIs allow
MAX_BAD_WORDS = 128  # token sequences after tokenization, at most (vLLM's VLLM_MAX_NUM_BAD_WORDS)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass
class SamplingParams:
    n: int = 1
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 or -1 = all tokens
    min_p: float = 0.0
    seed: int | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    max_tokens: int | None = 16  # None = up to the model's max_model_len
    min_tokens: int = 0
    ignore_eos: bool = False
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logprobs: int | None = None  # top log-probabilities per generated token (the sampled one is always added)
    skip_special_tokens: bool = True
    include_stop_str_in_output: bool = False
    logit_bias: dict[int, float] | None = None  # token id -> value added to its logit before sampling
    allowed_token_ids: list[int] | None = None  # sample only among these
    # vLLM's callable form: fn(output_token_ids, logits) or fn(prompt_token_ids, output_token_ids, logits)
    # -> logits ([vocab] float32), applied to each sequence's row before penalties.
    logits_processors: list[Callable] | None = None
    truncate_prompt_tokens: int | None = None  # keep only the prompt's last k tokens
    detokenize: bool = True  # False: token ids only (no text, no decoded logprob tokens)
    bad_words: list[str] | None = None  # words never generated (tokenized by the engine: bad_words_token_ids)
    prompt_logprobs: int | None = None  # per prompt token: its log-probability plus the top-k
    structured_outputs: StructuredOutputsParams | None = None  # constrained decoding (xgrammar)
    stop_strings: list[str] = field(init=False, repr=False)  # `stop` as a list

    def __post_init__(self) -> None:
        self._check_int("n", self.n, low=1)
        self._check_float("temperature", self.temperature, low=0.0, allowed="0 (greedy) or more")
        self._check_float("top_p", self.top_p, low=0.0, high=1.0, low_open=True, allowed="in (0, 1]")
        if not _is_int(self.top_k) or (self.top_k < 1 and self.top_k not in (0, -1)):
            raise ValueError(f"top_k must be 0 or -1 (all tokens) or an integer >= 1, got {self.top_k!r}")
        self._check_float("min_p", self.min_p, low=0.0, high=1.0, allowed="in [0, 1]")
        if self.seed is not None and not _is_int(self.seed):
            raise ValueError(f"seed must be None or an integer, got {self.seed!r}")
        if self.max_tokens is not None:
            self._check_int("max_tokens", self.max_tokens, low=1, high=MAX_INT32,
                            allowed=f"None or an integer >= 1 and <= {MAX_INT32} (int32)")
        self._check_int("min_tokens", self.min_tokens, low=0, high=MAX_INT32,
                        allowed=f"an integer >= 0 and <= {MAX_INT32} (int32)")
        if self.max_tokens is not None and self.min_tokens > self.max_tokens:
            raise ValueError(
                f"min_tokens must be <= max_tokens ({self.max_tokens}), got {self.min_tokens}")
        self._check_float("presence_penalty", self.presence_penalty, low=-2.0, high=2.0, allowed="in [-2, 2]")
        self._check_float("frequency_penalty", self.frequency_penalty, low=-2.0, high=2.0, allowed="in [-2, 2]")
        self._check_float("repetition_penalty", self.repetition_penalty, low=0.0, low_open=True,
                          allowed="> 0 (1 = off)")
        for name in ("logprobs", "prompt_logprobs"):
            if getattr(self, name) is not None:
                self._check_int(name, getattr(self, name), low=0, high=MAX_LOGPROBS,
                                allowed=f"None or an integer in [0, {MAX_LOGPROBS}]")
        for name in ("ignore_eos", "skip_special_tokens", "include_stop_str_in_output", "detokenize"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        self.stop_strings = self._normalize_stop(self.stop)
        if self.stop_strings and not self.detokenize:
            raise ValueError("stop strings are matched on the text: they need detokenize=True "
                             "(stop_token_ids work without it)")
        if self.stop_token_ids is None:
            self.stop_token_ids = []
        if not isinstance(self.stop_token_ids, (list, tuple)) or not all(
                _is_int(t) and 0 <= t <= MAX_INT32 for t in self.stop_token_ids):
            raise ValueError(
                f"stop_token_ids must be a list of integers >= 0 and <= {MAX_INT32} (int32), "
                f"got {self.stop_token_ids!r}")
        self.stop_token_ids = list(self.stop_token_ids)
        if self.logit_bias is not None:
            if not isinstance(self.logit_bias, dict) or not all(
                    _is_int(t) and 0 <= t <= MAX_INT32 and _is_number(b) and abs(b) <= MAX_LOGIT_BIAS
                    for t, b in self.logit_bias.items()):
                raise ValueError(f"logit_bias must map token ids (integers >= 0) to numbers in "
                                 f"[-{MAX_LOGIT_BIAS:g}, {MAX_LOGIT_BIAS:g}], got {self.logit_bias!r}")
            self.logit_bias = {int(t): float(b) for t, b in self.logit_bias.items()}
        if self.allowed_token_ids is not None:
            if not isinstance(self.allowed_token_ids, (list, tuple)) or not self.allowed_token_ids or not all(
                    _is_int(t) and 0 <= t <= MAX_INT32 for t in self.allowed_token_ids):
                raise ValueError(f"allowed_token_ids must be a non-empty list of token ids (integers >= 0), "
                                 f"got {self.allowed_token_ids!r}")
            self.allowed_token_ids = list(self.allowed_token_ids)
        if self.logits_processors is not None:
            if not isinstance(self.logits_processors, (list, tuple)) or not all(
                    callable(fn) and _processor_arity(fn) in (2, 3) for fn in self.logits_processors):
                raise ValueError("logits_processors must be a list of callables taking (output_token_ids, logits) "
                                 "or (prompt_token_ids, output_token_ids, logits)")
            self.logits_processors = list(self.logits_processors)
        if self.truncate_prompt_tokens is not None:
            self._check_int("truncate_prompt_tokens", self.truncate_prompt_tokens, low=1, high=MAX_INT32,
                            allowed=f"None or an integer in [1, {MAX_INT32}]")
        if self.bad_words is not None:
            if not isinstance(self.bad_words, (list, tuple)) or not all(
                    isinstance(w, str) and w.strip() for w in self.bad_words):
                raise ValueError(f"bad_words must be a list of words (non-blank strings), got {self.bad_words!r}")
            self.bad_words = list(self.bad_words)
        self._check_structured_outputs()

    def _check_structured_outputs(self) -> None:
        if self.structured_outputs is None:
            return
        if not isinstance(self.structured_outputs, StructuredOutputsParams):
            raise ValueError("structured_outputs must be a StructuredOutputsParams(json=..., regex=..., choice=..., "
                             f"grammar=..., json_object=True), got {self.structured_outputs!r}")
        if self.min_tokens > 0:
            raise ValueError("min_tokens cannot be combined with structured_outputs: the grammar decides where "
                             "the output may end")

    def clone(self) -> SamplingParams:
        """A deep copy (logits processors are shared, as vLLM does)."""
        processors = self.logits_processors
        twin = copy.copy(self)
        for name in ("stop", "stop_token_ids", "logit_bias", "allowed_token_ids", "bad_words", "stop_strings",
                     "structured_outputs"):
            setattr(twin, name, copy.deepcopy(getattr(self, name)))
        twin.logits_processors = None if processors is None else list(processors)
        return twin

    def bad_words_token_ids(self, tokenizer) -> list[list[int]]:
        """bad_words as token sequences, as vLLM tokenizes them: each word without and with a leading
        space (a word inside the text is usually one token with its space), the spaced form kept when
        it is a different sequence of the same length."""
        sequences: list[list[int]] = []
        for word in self.bad_words or ():
            plain = tokenizer.encode(word.lstrip(), add_special_tokens=False)
            if not plain:
                raise ValueError(f"bad_words entries must tokenize to at least one token, got {word!r}")
            sequences.append(plain)
            spaced = tokenizer.encode(" " + word.lstrip(), add_special_tokens=False)
            if spaced and spaced[0] != plain[0] and len(spaced) == len(plain):
                sequences.append(spaced)
        if len(sequences) > MAX_BAD_WORDS:
            raise ValueError(f"bad_words tokenize to {len(sequences)} token sequences; at most {MAX_BAD_WORDS}")
        return sequences

    @property
    def uses_logit_controls(self) -> bool:
        return (bool(self.logit_bias) or self.allowed_token_ids is not None or bool(self.logits_processors)
                or bool(self.bad_words))

    @property
    def is_greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def uses_penalties(self) -> bool:
        return (self.presence_penalty != 0.0 or self.frequency_penalty != 0.0
                or self.repetition_penalty != 1.0)

    @staticmethod
    def _normalize_stop(stop: str | list[str] | None) -> list[str]:
        if stop is None:
            return []
        stops = [stop] if isinstance(stop, str) else stop
        if not isinstance(stops, (list, tuple)) or not all(isinstance(s, str) and s for s in stops):
            raise ValueError(f"stop must be None, a non-empty string or a list of non-empty strings, got {stop!r}")
        return list(stops)

    @staticmethod
    def _check_int(name: str, value: object, *, low: int, high: int | None = None,
                   allowed: str | None = None) -> None:
        if not _is_int(value) or value < low or (high is not None and value > high):
            allowed = allowed or (f"an integer >= {low}" if high is None else f"an integer in [{low}, {high}]")
            raise ValueError(f"{name} must be {allowed}, got {value!r}")

    @staticmethod
    def _check_float(name: str, value: object, *, low: float, high: float | None = None,
                     low_open: bool = False, allowed: str) -> None:
        ok = _is_number(value) and (value > low if low_open else value >= low) and (
            high is None or value <= high)
        if not ok:
            raise ValueError(f"{name} must be {allowed}, got {value!r}")


def _processor_arity(fn: Callable) -> int:
    """Positional parameters of a logits processor (2: output ids + logits, 3: prompt ids too)."""
    try:
        parameters = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return -1
    return sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in parameters)
