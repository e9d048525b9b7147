"""Tokenizers (GGUF vocabulary, tokenizer.json, sentencepiece), incremental detokenization and
chat templates, against HF transformers where it has an equivalent."""

import json

import pytest

from pagedcore.tokenizers.chat_template import TemplateError, render_chat
from pagedcore.tokenizers.detokenizer import IncrementalDetokenizer
from pagedcore.loaders.model_loader import default_model_path
from pagedcore.tokenizers.loader import load_tokenizer
from pagedcore.tokenizers.tokenizer import HFTokenizer, SentencePieceTokenizer

TEXTS = ["Hello world", "The year 2024 has 12345 digits", "héllo 東京 🙂 naïve café", "  spaces\n\nnewlines\t tab",
         "<|im_start|>user\nhi<|im_end|>", "emoji 👩‍👩‍👧 and ✨ sparkles", "mixed: x=3.14159; y='ok'"]


@pytest.fixture(scope="module")
def smollm_tokenizer():
    return load_tokenizer(default_model_path())


@pytest.fixture(scope="module")
def hf_smollm_tokenizer():
    transformers = pytest.importorskip("transformers")
    path = default_model_path()
    return transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


def test_gguf_vocabulary_encodes_like_transformers(smollm_tokenizer, hf_smollm_tokenizer):
    for text in TEXTS:
        assert smollm_tokenizer.encode(text) == hf_smollm_tokenizer.encode(text), text
        ids = smollm_tokenizer.encode(text)
        assert smollm_tokenizer.decode(ids, skip_special_tokens=False) == hf_smollm_tokenizer.decode(ids)


def test_gguf_special_tokens_and_eos(smollm_tokenizer):
    assert smollm_tokenizer.eos_token_ids == [2] and smollm_tokenizer.eos_token == "<|im_end|>"
    ids = smollm_tokenizer.encode("<|im_start|>user\nhi<|im_end|>")
    assert ids[0] == 1 and ids[-1] == 2
    assert smollm_tokenizer.decode(ids, skip_special_tokens=True) == "user\nhi"
    assert "<|im_start|>" in smollm_tokenizer.decode(ids, skip_special_tokens=False)


@pytest.mark.parametrize("text", TEXTS)
def test_incremental_detokenization_matches_full_decode(smollm_tokenizer, text):
    prompt = smollm_tokenizer.encode("Answer:")
    output = smollm_tokenizer.encode(" " + text, add_special_tokens=False)
    detok = IncrementalDetokenizer(smollm_tokenizer, prompt, skip_special_tokens=True)
    pieces = [detok.append(token) for token in output]
    assert all("\ufffd" not in piece for piece in pieces)
    assert "".join(pieces) == detok.text == smollm_tokenizer.decode(output, skip_special_tokens=True)


def test_incremental_detokenizer_keeps_a_window_not_the_output(smollm_tokenizer):
    """The sequence's tokens are kept by its output: the detokenizer holds only the tokens it may still
    decode (a long output, with multi-byte characters split over byte tokens, stays a short window)."""
    text = " ".join(["paged attention 東京 héllo"] * 200)
    output = smollm_tokenizer.encode(" " + text, add_special_tokens=False)
    detok = IncrementalDetokenizer(smollm_tokenizer, smollm_tokenizer.encode("Answer:"), skip_special_tokens=True)
    longest = 0
    for token in output:
        detok.append(token)
        longest = max(longest, len(detok.token_ids))
    assert len(output) > 1000 and longest <= 8, longest
    assert detok.text == smollm_tokenizer.decode(output, skip_special_tokens=True)


def test_tokenizer_json_directory(tmp_path, smollm_tokenizer):
    smollm_tokenizer.backend.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": "<|im_start|>", "eos_token": {"content": "<|im_end|>"}, "chat_template": "{{ messages[0]['content'] }}"}))
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 0]}))
    tokenizer = load_tokenizer(tmp_path)
    assert isinstance(tokenizer, HFTokenizer)
    assert tokenizer.eos_token_ids == [2, 0]
    assert tokenizer.chat_template == "{{ messages[0]['content'] }}"
    for text in TEXTS:
        assert tokenizer.encode(text) == smollm_tokenizer.encode(text)


def test_sentencepiece_model_directory(tmp_path):
    sentencepiece = pytest.importorskip("sentencepiece")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(["the quick brown fox jumps over the lazy dog", "héllo wörld 東京",
                                 "paged attention keeps the kv cache in blocks"] * 50))
    sentencepiece.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(tmp_path / "tokenizer"),
                                             vocab_size=400, model_type="bpe", byte_fallback=True,
                                             character_coverage=1.0, minloglevel=2)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"add_bos_token": True, "bos_token": "<s>",
                                                                "eos_token": "</s>"}))
    tokenizer = load_tokenizer(tmp_path)
    assert isinstance(tokenizer, SentencePieceTokenizer)
    ids = tokenizer.encode("the lazy fox 東京")
    assert ids[0] == tokenizer.token_to_id("<s>") == 1
    assert tokenizer.decode(ids) == "the lazy fox 東京"
    assert tokenizer.decode(ids, skip_special_tokens=False) == "<s>the lazy fox 東京"
    assert tokenizer.eos_token_ids == [2]
    assert tokenizer.token_to_id("no-such-piece") is None
    prompt = tokenizer.encode("the")
    detok = IncrementalDetokenizer(tokenizer, prompt, skip_special_tokens=True)
    output = tokenizer.encode(" quick 東京 dog", add_special_tokens=False)
    # A continuation keeps its leading space (sentencepiece drops it when decoding output alone).
    assert "".join(detok.append(t) for t in output) == " quick 東京 dog"


def test_missing_tokenizer_is_reported(tmp_path):
    with pytest.raises(FileNotFoundError, match="no tokenizer found"):
        load_tokenizer(tmp_path)


def test_chat_template_renders_like_transformers(smollm_tokenizer, hf_smollm_tokenizer):
    conversation = [{"role": "user", "content": "What is PagedAttention?"}]
    for add_generation_prompt in (True, False):
        ours = render_chat(smollm_tokenizer.chat_template, conversation, add_generation_prompt=add_generation_prompt,
                           bos_token=smollm_tokenizer.bos_token, eos_token=smollm_tokenizer.eos_token)
        theirs = hf_smollm_tokenizer.apply_chat_template(conversation, tokenize=False,
                                                         add_generation_prompt=add_generation_prompt)
        assert ours == theirs
    assert "<|im_start|>system" in ours  # the template's default system prompt


def test_chat_template_errors():
    with pytest.raises(TemplateError, match="roles must alternate"):
        render_chat("{{ raise_exception('roles must alternate') }}", [{"role": "user", "content": "x"}])
    with pytest.raises(TemplateError, match="messages must be a list"):
        render_chat("{{ messages }}", [{"role": "user"}])
