"""SamplingParams: defaults, normalization, and one error per invalid value naming the field."""

import pytest

from pagedcore.engine.sampling_params import MAX_LOGPROBS, SamplingParams


def test_defaults_match_vllm():
    params = SamplingParams()
    assert (params.n, params.temperature, params.top_p, params.top_k, params.max_tokens) == (1, 1.0, 1.0, 0, 16)
    assert params.stop_strings == [] and params.stop_token_ids == []
    assert not params.is_greedy and not params.uses_penalties


def test_stop_is_normalized_to_a_list():
    assert SamplingParams(stop="###").stop_strings == ["###"]
    assert SamplingParams(stop=["a", "bc"]).stop_strings == ["a", "bc"]
    assert SamplingParams(temperature=0).is_greedy
    assert SamplingParams(repetition_penalty=1.1).uses_penalties


@pytest.mark.parametrize("field, value, allowed", [
    ("n", 0, "n must be an integer >= 1"),
    ("n", 1.5, "n must be an integer >= 1"),
    ("temperature", -0.1, "temperature must be 0 (greedy) or more"),
    ("temperature", float("nan"), "temperature must be 0 (greedy) or more"),
    ("top_p", 0.0, "top_p must be in (0, 1]"),
    ("top_p", 1.01, "top_p must be in (0, 1]"),
    ("top_k", -2, "top_k must be 0 or -1 (all tokens) or an integer >= 1"),
    ("top_k", 2.0, "top_k must be 0 or -1 (all tokens) or an integer >= 1"),
    ("min_p", -0.01, "min_p must be in [0, 1]"),
    ("min_p", 1.5, "min_p must be in [0, 1]"),
    ("seed", "7", "seed must be None or an integer"),
    ("stop", "", "stop must be None, a non-empty string or a list of non-empty strings"),
    ("stop", ["ok", 3], "stop must be None, a non-empty string or a list of non-empty strings"),
    ("stop_token_ids", [-1], "stop_token_ids must be a list of integers >= 0"),
    ("stop_token_ids", 5, "stop_token_ids must be a list of integers >= 0"),
    ("max_tokens", 0, "max_tokens must be None or an integer >= 1"),
    ("min_tokens", -1, "min_tokens must be an integer >= 0"),
    ("presence_penalty", 2.5, "presence_penalty must be in [-2, 2]"),
    ("frequency_penalty", -2.5, "frequency_penalty must be in [-2, 2]"),
    ("repetition_penalty", 0.0, "repetition_penalty must be > 0 (1 = off)"),
    ("logprobs", -1, f"logprobs must be None or an integer in [0, {MAX_LOGPROBS}]"),
    ("logprobs", MAX_LOGPROBS + 1, f"logprobs must be None or an integer in [0, {MAX_LOGPROBS}]"),
    ("ignore_eos", 1, "ignore_eos must be True or False"),
    ("skip_special_tokens", None, "skip_special_tokens must be True or False"),
    ("include_stop_str_in_output", "yes", "include_stop_str_in_output must be True or False"),
    ("prompt_logprobs", -1, f"prompt_logprobs must be None or an integer in [0, {MAX_LOGPROBS}]"),
    ("prompt_logprobs", MAX_LOGPROBS + 1, f"prompt_logprobs must be None or an integer in [0, {MAX_LOGPROBS}]"),
    ("bad_words", "word", "bad_words must be a list of words (non-blank strings)"),
    ("bad_words", ["ok", "  "], "bad_words must be a list of words (non-blank strings)"),
])
def test_invalid_value_names_field_and_range(field, value, allowed):
    with pytest.raises(ValueError) as info:
        SamplingParams(**{field: value})
    assert str(info.value).startswith(allowed)
    assert repr(value) in str(info.value)


def test_min_tokens_above_max_tokens_is_refused():
    with pytest.raises(ValueError, match=r"min_tokens must be <= max_tokens \(4\), got 5"):
        SamplingParams(max_tokens=4, min_tokens=5)


def test_max_tokens_none_means_up_to_max_model_len():
    assert SamplingParams(max_tokens=None, min_tokens=3).max_tokens is None


def test_native_int32_bounds_are_named():
    with pytest.raises(ValueError, match=r"max_tokens must be None or an integer >= 1 and <= 2147483647 \(int32\)"):
        SamplingParams(max_tokens=2**31)
    with pytest.raises(ValueError, match=r"stop_token_ids must be a list of integers >= 0 and <= 2147483647"):
        SamplingParams(stop_token_ids=[2**31])
    with pytest.raises(ValueError, match=r"min_tokens must be an integer >= 0 and <= 2147483647"):
        SamplingParams(min_tokens=2**40)
    with pytest.raises(ValueError, match="logit_bias must map token ids"):
        SamplingParams(logit_bias={5: 101.0})
    with pytest.raises(ValueError, match="allowed_token_ids must be a non-empty list"):
        SamplingParams(allowed_token_ids=[])


def test_clone_is_independent():
    params = SamplingParams(stop=["a"], stop_token_ids=[3], logit_bias={1: 2.0}, allowed_token_ids=[1, 2])
    twin = params.clone()
    assert twin == params and twin is not params
    twin.stop_token_ids.append(9)
    twin.logit_bias[7] = 1.0
    twin.allowed_token_ids.append(5)
    assert params.stop_token_ids == [3] and params.logit_bias == {1: 2.0} and params.allowed_token_ids == [1, 2]


class _WordTokenizer:
    """Whole-word ids, where a word's spaced form is its own token (as BPE vocabularies have)."""
    IDS = {"cat": [5], " cat": [6], "dog house": [7, 8], " dog house": [9, 8], "ox": [3], " ox": [3],
           "emu": [4], " emu": [1, 4], "\u200b": []}

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        assert not add_special_tokens
        return self.IDS[text]


def test_bad_words_tokenize_as_vllm_does_with_and_without_a_leading_space():
    words = SamplingParams(bad_words=["cat", " dog house", "ox", "emu"]).bad_words_token_ids(_WordTokenizer())
    # "cat" and "dog house" also get their spaced forms; "ox" spaced is the same first token and
    # "emu" spaced has another length, so those keep only their plain form.
    assert words == [[5], [6], [7, 8], [9, 8], [3], [4]]
    with pytest.raises(ValueError, match="bad_words entries must tokenize to at least one token"):
        SamplingParams(bad_words=["\u200b"]).bad_words_token_ids(_WordTokenizer())
    params = SamplingParams(bad_words=["cat"])
    assert params.uses_logit_controls
    twin = params.clone()
    twin.bad_words.append("ox")
    assert params.bad_words == ["cat"]
