"""A `tokenizers.Tokenizer` rebuilt from the vocabulary stored in a GGUF file.

Two vocabulary kinds (tokenizer.ggml.model):
- "gpt2": byte-level BPE (SmolLM2, Llama 3, Qwen): tokens + merges, with the pre-tokenizer split
  named by tokenizer.ggml.pre.
- "llama": sentencepiece BPE (Llama 2, Mistral): tokens + scores; merges are recovered from the
  scores (a merge's rank is its result's score), with byte fallback.
"""

from __future__ import annotations

from pathlib import Path

from pagedcore.loaders.gguf_file import GGUFFile
from pagedcore.tokenizers.tokenizer import HFTokenizer

_CONTROL, _USER_DEFINED = 3, 4  # gguf.TokenType values

# tokenizer.ggml.pre -> the split regex of the original tokenizer (None: GPT-2's own regex)
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_PRE_SPLITS = {"llama-bpe": _LLAMA3_SPLIT, "llama3": _LLAMA3_SPLIT, "qwen2": _QWEN2_SPLIT}


def tokenizer_from_gguf(path: str | Path, gguf_file: GGUFFile | None = None) -> HFTokenizer:
    meta = (gguf_file or GGUFFile(path)).metadata
    kind = meta.get("tokenizer.ggml.model")
    tokens: list[str] = list(meta["tokenizer.ggml.tokens"])
    token_types: list[int] = list(meta.get("tokenizer.ggml.token_type", [1] * len(tokens)))
    if kind == "gpt2":
        backend = _byte_level_bpe(tokens, list(meta["tokenizer.ggml.merges"]), meta.get("tokenizer.ggml.pre"))
        default_add_bos = False
    elif kind == "llama":
        backend = _sentencepiece_bpe(tokens, list(meta["tokenizer.ggml.scores"]), token_types,
                                     bool(meta.get("tokenizer.ggml.add_space_prefix", True)))
        default_add_bos = True
    else:
        raise ValueError(f"GGUF tokenizer model {kind!r} is not supported; supported: gpt2, llama")
    _add_special_tokens(backend, tokens, token_types)

    bos_id = meta.get("tokenizer.ggml.bos_token_id")
    eos_ids = [int(meta[key]) for key in ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id")
               if meta.get(key) is not None]
    eos_ids = list(dict.fromkeys(eos_ids))
    return HFTokenizer(
        backend,
        add_bos=bool(meta.get("tokenizer.ggml.add_bos_token", default_add_bos)),
        bos_token=tokens[bos_id] if bos_id is not None else None,
        eos_token=tokens[eos_ids[0]] if eos_ids else None,
        eos_token_ids=eos_ids,
        chat_template=meta.get("tokenizer.chat_template"),
    )


def _byte_level_bpe(tokens: list[str], merges: list[str], pre: str | None):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    vocab = {token: i for i, token in enumerate(tokens)}
    merge_pairs = [tuple(m.split(" ", 1)) for m in merges]
    backend = Tokenizer(models.BPE(vocab, merge_pairs, ignore_merges=pre in ("llama-bpe", "llama3")))
    split = _PRE_SPLITS.get(pre or "")
    if split is None:
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    else:
        backend.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(split), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
    backend.decoder = decoders.ByteLevel()
    return backend


def _sentencepiece_bpe(tokens: list[str], scores: list[float], token_types: list[int], add_space_prefix: bool):
    from tokenizers import Tokenizer, decoders, models, normalizers

    vocab = {token: i for i, token in enumerate(tokens)}
    ranked_merges = []
    for piece, piece_id in vocab.items():
        if token_types[piece_id] != 1:  # only normal pieces come from merges
            continue
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in vocab and right in vocab:
                ranked_merges.append((-scores[piece_id], vocab[left], vocab[right], left, right))
    ranked_merges.sort()
    merges = [(left, right) for *_, left, right in ranked_merges]
    unk = next((t for t, kind in zip(tokens, token_types) if kind == 2), None)
    backend = Tokenizer(models.BPE(vocab, merges, unk_token=unk, fuse_unk=True, byte_fallback=True))
    steps = [normalizers.Prepend("▁")] if add_space_prefix else []
    backend.normalizer = normalizers.Sequence([*steps, normalizers.Replace(" ", "▁")])
    decode_steps = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    if add_space_prefix:
        decode_steps.append(decoders.Strip(" ", 1, 0))
    backend.decoder = decoders.Sequence(decode_steps)
    return backend


def _add_special_tokens(backend, tokens: list[str], token_types: list[int]) -> None:
    from tokenizers import AddedToken

    special = [AddedToken(t, special=True, normalized=False)
               for t, kind in zip(tokens, token_types) if kind == _CONTROL]
    user_defined = [AddedToken(t, special=False, normalized=False)
                    for t, kind in zip(tokens, token_types) if kind == _USER_DEFINED]
    backend.add_special_tokens(special)
    backend.add_tokens(user_defined)
