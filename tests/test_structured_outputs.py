"""Structured outputs (xgrammar) offline: every constrained output of a tiny random model (which
never produces valid JSON by chance) and of the default model fits its constraint; n > 1,
preemption, prefix caching and async_scheduling keep greedy outputs; bad constraints are refused."""

import json
import re

import jsonschema
import pytest
import torch
from tiny_models import save_tiny_model

from pagedcore import LLM, SamplingParams, StructuredOutputsParams
from pagedcore.engine.structured_outputs import bounded_strings_as_patterns, token_bitmasks, unpack_token_bitmasks

# Bounded values only: a random model would wander in a free string until max_tokens.
SCHEMA = {"type": "object", "additionalProperties": False, "required": ["ok", "n", "color", "tags"],
          "properties": {"ok": {"type": "boolean"}, "n": {"type": "integer", "minimum": -5, "maximum": 999},
                         "color": {"enum": ["red", "green", "blue"]},
                         "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 3}}}
REGEX = r"[a-c]{3}-\d{2}"
CHOICES = ["yes", "no way", "maybe later"]
GRAMMAR = 'root ::= "(" digit+ ")" | "none"\ndigit ::= [0-9]'


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tiny_llama_so")
    save_tiny_model(directory, "llama")
    return LLM(str(directory), device="cpu", max_model_len=256, kv_cache_memory_bytes=32 << 20, verbose=False)


def _check(kind: str, text: str) -> None:
    if kind == "json":
        jsonschema.validate(json.loads(text), SCHEMA)
    elif kind == "json_object":
        assert isinstance(json.loads(text), dict)
    elif kind == "regex":
        assert re.fullmatch(REGEX, text), text
    elif kind == "choice":
        assert text in CHOICES, text
    else:
        assert re.fullmatch(r"\(\d+\)|none", text), text


CONSTRAINTS = {
    "json": StructuredOutputsParams(json=SCHEMA, disable_any_whitespace=True),
    "json_object": StructuredOutputsParams(json_object=True),
    "regex": StructuredOutputsParams(regex=REGEX),
    "choice": StructuredOutputsParams(choice=CHOICES),
    "grammar": StructuredOutputsParams(grammar=GRAMMAR),
}


def test_fifty_constrained_requests_of_a_random_model_all_fit(tiny):
    kinds = [kind for _ in range(10) for kind in ("json", "regex", "choice", "grammar", "json")]
    params = [SamplingParams(temperature=1.0, max_tokens=120, structured_outputs=CONSTRAINTS[k]) for k in kinds]
    outputs = tiny.generate([f"request {i}" for i in range(len(kinds))], params, use_tqdm=False)
    for kind, output in zip(kinds, outputs):
        completion = output.outputs[0]
        assert completion.finish_reason == "stop", (kind, completion.text)
        _check(kind, completion.text)
    # Unconstrained, the same model does not produce JSON.
    free = tiny.generate(["request 0"], SamplingParams(temperature=1.0, max_tokens=40, seed=0), use_tqdm=False)
    with pytest.raises(ValueError):
        json.loads(free[0].outputs[0].text)


def test_fifty_constrained_requests_of_the_default_model_all_fit():
    """The default model (SmolLM2-135M-Instruct) at temperature 0.7: every output under a schema, a
    regex, a choice or a grammar fits it; a schema's output is a complete object (finish "stop")."""
    llm = LLM(max_model_len=512, verbose=False)
    kinds = [kind for _ in range(10) for kind in ("json", "regex", "choice", "grammar", "json_object")]
    prompts = [{"json": "Describe a task as JSON.", "regex": "Write a code like abc-12.", "choice": "Yes or no?",
                "grammar": "Give a number in parentheses.", "json_object": "Reply with a JSON object."}[k] for k in kinds]
    params = [SamplingParams(temperature=0.7, seed=i, max_tokens=96, structured_outputs=CONSTRAINTS[k])
              for i, k in enumerate(kinds)]
    outputs = llm.chat([[{"role": "user", "content": p}] for p in prompts], params, use_tqdm=False)
    for kind, output in zip(kinds, outputs):
        completion = output.outputs[0]
        if kind in ("json", "regex", "choice"):  # bounded: always complete
            assert completion.finish_reason == "stop", (kind, completion.text)
        if completion.finish_reason == "stop":
            _check(kind, completion.text)


def test_ignore_eos_ends_where_the_grammar_is_complete(tiny):
    outputs = tiny.generate(["x"] * 3, SamplingParams(temperature=0.7, seed=5, max_tokens=200, ignore_eos=True,
                                                      structured_outputs=CONSTRAINTS["choice"]), use_tqdm=False)
    for output in outputs:
        assert output.outputs[0].finish_reason == "stop"  # ignore_eos does not run past the grammar
        _check("choice", output.outputs[0].text)


def test_n_preemption_prefix_caching_and_async_scheduling_keep_greedy_outputs(tmp_path):
    save_tiny_model(tmp_path, "llama")
    prompts = ["a shared system prompt that fills more than one block of sixteen tokens " * 2 + str(i)
               for i in range(4)]
    params = [SamplingParams(temperature=0, max_tokens=60, structured_outputs=CONSTRAINTS["json"]),
              SamplingParams(temperature=0.9, seed=3, n=2, max_tokens=40, structured_outputs=CONSTRAINTS["regex"]),
              SamplingParams(temperature=0, max_tokens=40, structured_outputs=CONSTRAINTS["grammar"]),
              SamplingParams(temperature=0, max_tokens=40)]
    results = []
    for settings in (dict(kv_cache_memory_bytes=32 << 20, async_scheduling=False),
                     dict(kv_cache_memory_bytes=10 * 16 * 2048, max_model_len=96, enable_prefix_caching=False),
                     dict(kv_cache_memory_bytes=32 << 20, enable_prefix_caching=True)):
        llm = LLM(str(tmp_path), device="cpu", verbose=False, **{"max_model_len": 256, **settings})
        outputs = llm.generate(prompts, params, use_tqdm=False)
        results.append([(c.token_ids, c.text, c.finish_reason) for o in outputs for c in o.outputs])
        if "enable_prefix_caching" in settings and not settings["enable_prefix_caching"]:
            assert llm.scheduler.stats().num_preemptions > 0
    assert results[0] == results[1] == results[2]
    _check("json", results[0][0][1])
    _check("regex", results[0][1][1])
    _check("regex", results[0][2][1])
    _check("grammar", results[0][3][1])


# Free strings bounded by length: xgrammar 0.2.x lets raw control characters into these (invalid JSON).
BOUNDED = {"type": "object", "additionalProperties": False, "required": ["name", "tags", "note"],
           "properties": {"name": {"type": "string", "maxLength": 40},
                          "tags": {"type": "array", "items": {"type": "string", "minLength": 1, "maxLength": 12},
                                   "maxItems": 4},
                          "note": {"type": ["string", "null"], "maxLength": 20}}}


def test_length_bounded_strings_hold_no_raw_control_characters(tiny):
    """Before bounded_strings_as_patterns, 4 of these 64 greedy outputs held a raw U+0002 or U+0019
    that strict json.loads rejects (mlc-ai/xgrammar#800)."""
    generator = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, 49000, (20,), generator=generator).tolist() for _ in range(64)]
    params = SamplingParams(temperature=0, max_tokens=300,
                            structured_outputs=StructuredOutputsParams(json=BOUNDED, disable_any_whitespace=True))
    for output in tiny.generate(prompts, params, use_tqdm=False):
        completion = output.outputs[0]
        if completion.finish_reason == "stop":
            jsonschema.validate(json.loads(completion.text), BOUNDED)  # strict: no raw control characters


def test_bounded_strings_become_patterns_and_nothing_else_changes():
    rewritten = bounded_strings_as_patterns(BOUNDED)
    assert rewritten["properties"]["name"] == {"type": "string", "pattern": "^.{0,40}$"}
    assert rewritten["properties"]["tags"]["items"] == {"type": "string", "pattern": "^.{1,12}$"}
    assert rewritten["properties"]["note"] == {"type": ["string", "null"], "pattern": "^.{0,20}$"}
    assert BOUNDED["properties"]["name"] == {"type": "string", "maxLength": 40}  # a copy
    kept = {"type": "object", "properties": {
        "a": {"type": "string", "maxLength": 3, "pattern": "^x+$"}, "b": {"type": "string", "enum": ["u", "v"]},
        "c": {"type": "string", "format": "email", "maxLength": 30}, "d": {"type": "string"},
        "maxLength": {"type": "integer", "maxLength": 2},
        "e": {"const": {"type": "string", "maxLength": 3}}, "f": {"enum": [{"type": "string", "minLength": 1}]},
        "g": {"type": "object", "default": {"type": "string", "maxLength": 1}}}}
    assert bounded_strings_as_patterns(kept) == kept  # constants, enums and defaults are data


def test_the_default_model_fills_a_pydantic_schema():
    pydantic = pytest.importorskip("pydantic")

    class City(pydantic.BaseModel):
        name: str
        country: str
        is_capital: bool

    llm = LLM(max_model_len=512, verbose=False)
    so = StructuredOutputsParams(json=City.model_json_schema())
    prompt = [{"role": "user", "content": "Describe Paris as JSON with name, country and is_capital."}]
    output = llm.chat(prompt, SamplingParams(temperature=0, max_tokens=80, structured_outputs=so), use_tqdm=False)
    city = City.model_validate_json(output[0].outputs[0].text)
    assert output[0].outputs[0].finish_reason == "stop"
    assert city.name and city.country  # (what a 135M model believes about Paris is not checked)


@pytest.mark.parametrize("make, message", [
    (lambda: StructuredOutputsParams(), "exactly one of json, regex, choice, grammar, json_object; got none"),
    (lambda: StructuredOutputsParams(regex="a", choice=["b"]), "got regex, choice"),
    (lambda: StructuredOutputsParams(choice=[]), "choice must be a non-empty list"),
    (lambda: SamplingParams(min_tokens=2, structured_outputs=StructuredOutputsParams(regex="a+")),
     "min_tokens cannot be combined with structured_outputs"),
    (lambda: SamplingParams(structured_outputs={"json": {}}), "must be a StructuredOutputsParams"),
])
def test_bad_constraints_are_refused_at_construction(make, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        make()


@pytest.mark.parametrize("constraint, message", [
    (StructuredOutputsParams(json='{"type": "object",'), "structured_outputs.json is not valid JSON"),
    (StructuredOutputsParams(json={"type": "objectx"}), "structured_outputs.json cannot be compiled: Unsupported type"),
    (StructuredOutputsParams(regex="[a-"), "structured_outputs.regex cannot be compiled"),
    (StructuredOutputsParams(grammar="root ::= undefined_rule"), "structured_outputs.grammar cannot be compiled"),
])
def test_uncompilable_constraints_name_the_problem(tiny, constraint, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        tiny.generate(["x"], SamplingParams(max_tokens=4, structured_outputs=constraint), use_tqdm=False)
    assert tiny.engine.has_unfinished() is False


def test_packed_masks_unpack_to_xgrammars_own_masking(tiny):
    """token_bitmasks (batch-filled, packed 32 a word) unpacked give exactly the tokens xgrammar's
    apply_token_bitmask_inplace leaves finite, for matchers at different states, over a vocabulary
    that is not a multiple of 32."""
    import xgrammar

    engine = tiny.engine
    matchers = []
    for constraint, prefix in [(CONSTRAINTS["json"], '{"ok": true'), (CONSTRAINTS["regex"], "ab"),
                               (CONSTRAINTS["choice"], ""), (CONSTRAINTS["grammar"], "(1")]:
        matcher = xgrammar.GrammarMatcher(engine.grammars.compile(constraint))
        assert matcher.accept_string(prefix) if prefix else True
        matchers.append(matcher)
    vocab = engine.sampler.vocab_size - 5
    allowed = unpack_token_bitmasks(token_bitmasks(matchers, vocab), vocab)
    for row, matcher in enumerate(matchers):
        single = xgrammar.allocate_token_bitmask(1, vocab)
        matcher.fill_next_token_bitmask(single)
        logits = torch.zeros(1, vocab)
        xgrammar.apply_token_bitmask_inplace(logits, single)
        assert torch.equal(allowed[row], logits[0].isfinite()) and 0 < int(allowed[row].sum()) < vocab


def test_top_p_and_top_k_are_taken_over_the_tokens_the_grammar_allows(tiny):
    """top-p's mass is that of the allowed tokens (the mask comes first, as in vLLM): with the mask
    applied after top-p, a random model's top tokens (never allowed JSON) would leave nothing."""
    kinds = ["json", "regex", "choice"] * 4  # bounded: the digit grammar may run to max_tokens
    params = [SamplingParams(temperature=1.0, top_p=0.3, top_k=20, seed=i, max_tokens=120,
                             structured_outputs=CONSTRAINTS[k]) for i, k in enumerate(kinds)]
    for kind, output in zip(kinds, tiny.generate([f"r{i}" for i in range(len(kinds))], params, use_tqdm=False)):
        assert output.outputs[0].finish_reason == "stop", (kind, output.outputs[0].text)
        _check(kind, output.outputs[0].text)
