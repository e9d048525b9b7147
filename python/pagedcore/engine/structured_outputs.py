"""Structured outputs: constrained decoding with xgrammar (JSON schema, any JSON object, regex, a
choice among strings, EBNF / GBNF grammars), spelled as vLLM spells it:
``SamplingParams(structured_outputs=StructuredOutputsParams(json=..., regex=..., choice=[...],
grammar=..., json_object=True))``.

`GrammarCompiler` compiles a request's constraint once per distinct constraint (xgrammar's cache)
and each sequence gets its own matcher (RequestState.create); the sampler masks each constrained row to the tokens its
matcher allows (the mask is filled on the host while the GPU runs the forward pass), and the
engine advances the matcher with every committed token. EOS is allowed only where the grammar
accepts; a sequence whose grammar is complete ends with finish_reason "stop".
"""

from __future__ import annotations

import json as json_module
import threading
from dataclasses import dataclass

import torch

_KINDS = ("json", "regex", "choice", "grammar", "json_object")


@dataclass
class StructuredOutputsParams:
    json: str | dict | None = None  # a JSON schema (dict or its text)
    regex: str | None = None
    choice: list[str] | None = None  # the output is exactly one of these strings
    grammar: str | None = None  # EBNF / GBNF, with a `root` rule
    json_object: bool | None = None  # any JSON object
    disable_any_whitespace: bool = False  # JSON without free whitespace between tokens

    def __post_init__(self) -> None:
        given = [kind for kind in _KINDS if getattr(self, kind) not in (None, False)]
        if len(given) != 1:
            raise ValueError(f"structured_outputs needs exactly one of {', '.join(_KINDS)}; got "
                             f"{', '.join(given) or 'none'}")
        if self.json is not None and not isinstance(self.json, (str, dict)):
            raise ValueError(f"structured_outputs.json must be a JSON schema (a dict or its text), got {self.json!r}")
        for name in ("regex", "grammar"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value):
                raise ValueError(f"structured_outputs.{name} must be a non-empty string, got {value!r}")
        if self.choice is not None and (not isinstance(self.choice, (list, tuple)) or not self.choice or not all(
                isinstance(c, str) and c for c in self.choice)):
            raise ValueError(f"structured_outputs.choice must be a non-empty list of non-empty strings, "
                             f"got {self.choice!r}")
        if self.json_object not in (None, True, False):
            raise ValueError(f"structured_outputs.json_object must be True, got {self.json_object!r}")
        if not isinstance(self.disable_any_whitespace, bool):
            raise ValueError("structured_outputs.disable_any_whitespace must be True or False")
        if self.choice is not None:
            self.choice = list(self.choice)

    @property
    def key(self) -> tuple:
        """What identifies the compiled grammar (equal keys share one compilation)."""
        if self.json is not None:
            schema = self.json if isinstance(self.json, str) else json_module.dumps(self.json, sort_keys=True)
            return ("json", schema, self.disable_any_whitespace)
        if self.json_object:
            return ("json_object", self.disable_any_whitespace)
        if self.choice is not None:
            return ("choice", tuple(self.choice))
        return ("regex", self.regex) if self.regex is not None else ("grammar", self.grammar)


def _choice_grammar(choices: list[str]) -> str:
    return "root ::= " + " | ".join(json_module.dumps(c) for c in choices)  # EBNF string literals


class GrammarCompiler:
    """xgrammar's compiler for one tokenizer, built on first use (its vocabulary scan takes ~0.5 s).
    Thread-safe: the server compiles in worker threads, off the engine loop."""

    def __init__(self, tokenizer, vocab_size: int, eos_token_ids: list[int]):
        self.tokenizer = tokenizer  # pagedcore Tokenizer (an HF `tokenizers` backend is needed)
        self.vocab_size = vocab_size  # the model's (padded) vocabulary: ids past the tokenizer's are masked
        self.eos_token_ids = list(eos_token_ids)
        self._compiler = None
        self._lock = threading.Lock()

    def _xgrammar_compiler(self):
        with self._lock:
            if self._compiler is None:
                try:
                    import xgrammar
                except ImportError as error:
                    raise RuntimeError("structured outputs need the xgrammar package (pip install xgrammar)") from error
                backend = getattr(self.tokenizer, "backend", None)
                if backend is None:
                    raise ValueError("structured outputs need a tokenizer.json or GGUF vocabulary; this model's "
                                     "tokenizer is a sentencepiece model")
                from transformers import PreTrainedTokenizerFast

                info = xgrammar.TokenizerInfo.from_huggingface(PreTrainedTokenizerFast(tokenizer_object=backend),
                                                               vocab_size=self.vocab_size,
                                                               stop_token_ids=self.eos_token_ids)
                self._compiler = xgrammar.GrammarCompiler(info)
            return self._compiler

    def compile(self, params: StructuredOutputsParams):
        """-> xgrammar.CompiledGrammar (cached per distinct constraint); ValueError naming what is
        wrong for a schema, regex or grammar xgrammar cannot compile."""
        compiler = self._xgrammar_compiler()
        any_whitespace = not params.disable_any_whitespace
        try:
            if params.json is not None:
                schema = json_module.loads(params.json) if isinstance(params.json, str) else params.json
                schema = json_module.dumps(bounded_strings_as_patterns(schema))
                return compiler.compile_json_schema(schema, any_whitespace=any_whitespace)
            if params.json_object:
                # An object, not any JSON value (xgrammar's builtin grammar also allows arrays and
                # scalars, and free whitespace whatever disable_any_whitespace says), as vLLM compiles it.
                return compiler.compile_json_schema('{"type": "object"}', any_whitespace=any_whitespace)
            if params.regex is not None:
                return compiler.compile_regex(params.regex)
            if params.choice is not None:
                return compiler.compile_grammar(_choice_grammar(params.choice))
            return compiler.compile_grammar(params.grammar)
        except json_module.JSONDecodeError as error:
            raise ValueError(f"structured_outputs.json is not valid JSON: {error}") from None
        except RuntimeError as error:
            kind = params.key[0]
            detail = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
            raise ValueError(f"structured_outputs.{kind} cannot be compiled: {_strip_location(detail)}") from None


_DATA_KEYWORDS = frozenset({"const", "enum", "default", "examples", "example"})


def bounded_strings_as_patterns(schema):
    """The schema with every string bounded by minLength / maxLength (and no pattern, format, enum or
    const of its own) given the same bound as a pattern instead, `^.{min,max}$`; a copy.

    xgrammar (0.2.x) compiles such a string to a repetition of any character but the quote, the
    backslash, CR and LF, which admits the other raw control characters (U+0000-U+001F): the output is
    not JSON (json.loads and pydantic reject it; mlc-ai/xgrammar#800). A pattern goes through its
    JSON-string-aware regex, which excludes them; neither form emits escapes, so nothing else changes.
    Other schemas are returned as they are."""
    if isinstance(schema, list):
        return [bounded_strings_as_patterns(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    # Values of these keywords are data, not schemas: left as they are.
    result = {key: value if key in _DATA_KEYWORDS else bounded_strings_as_patterns(value)
              for key, value in schema.items()}
    types = schema.get("type")
    if ("string" in types if isinstance(types, list) else types == "string") \
            and not any(key in schema for key in ("pattern", "format", "enum", "const")):
        low, high = schema.get("minLength", 0), schema.get("maxLength")
        if ("minLength" in schema or "maxLength" in schema) and all(
                isinstance(bound, int) and not isinstance(bound, bool) and bound >= 0 for bound in (low, high or 0)):
            result["pattern"] = f"^.{{{low},{'' if high is None else high}}}$"
            result.pop("minLength", None), result.pop("maxLength", None)  # the pattern holds them
    return result


def _strip_location(message: str) -> str:
    """xgrammar's messages start with '[time] /path/file.cc:line: '; keep what follows."""
    if message.startswith("[") and ": " in message:
        return message.split(": ", 1)[1].strip()
    return message


_batch_matcher = None  # xgrammar.BatchGrammarMatcher: fills many rows' masks on its own threads


def token_bitmasks(matchers: list, vocab_size: int, pin: bool = False) -> torch.Tensor:
    """The tokens each matcher allows next, packed: int32 [len(matchers), ceil(vocab_size / 32)] on
    the CPU (bit j of word w: token 32 w + j), in pinned memory when `pin` (for a non-blocking copy),
    filled by xgrammar's batch filler (one call, several threads)."""
    import xgrammar

    global _batch_matcher
    if _batch_matcher is None:
        _batch_matcher = xgrammar.BatchGrammarMatcher()
    shape = (len(matchers), (vocab_size + 31) // 32)
    bitmask = torch.empty(shape, dtype=torch.int32, pin_memory=pin)
    _batch_matcher.batch_fill_next_token_bitmask(matchers, bitmask)
    return bitmask


def unpack_token_bitmasks(bitmask: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """bool [rows, vocab_size] of a token_bitmasks result, on the bitmask's device."""
    shifts = torch.arange(32, dtype=torch.int32, device=bitmask.device)
    bits = (bitmask[:, :, None] >> shifts) & 1  # [rows, words, 32]
    return bits.reshape(bitmask.shape[0], -1)[:, :vocab_size].bool()

