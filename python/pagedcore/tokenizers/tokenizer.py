"""Tokenizers behind one small interface: HF `tokenizer.json`, sentencepiece `tokenizer.model`, and
the vocabulary inside a GGUF file (pagedcore.tokenizers.gguf_tokenizer builds that one).

`load_tokenizer(path)` picks the right one for a model directory or a .gguf file.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from pathlib import Path


class Tokenizer(ABC):
    """Text <-> token ids, plus what generation and chat templates need to know."""

    def __init__(self, *, bos_token: str | None, eos_token: str | None, eos_token_ids: list[int],
                 chat_template: str | None):
        self.bos_token = bos_token
        self.eos_token = eos_token
        self.eos_token_ids = eos_token_ids  # ids that end generation (unless ignore_eos)
        self.chat_template = chat_template  # jinja2 source, or None

    @property
    @abstractmethod
    def vocab_size(self) -> int: ...

    @abstractmethod
    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]: ...

    @abstractmethod
    def decode(self, token_ids: list[int], skip_special_tokens: bool = True) -> str: ...

    @abstractmethod
    def token_to_id(self, token: str) -> int | None: ...


class HFTokenizer(Tokenizer):
    """A `tokenizers.Tokenizer` (tokenizer.json, or one built from a GGUF vocabulary)."""

    def __init__(self, backend, *, add_bos: bool, **kwargs):
        super().__init__(**kwargs)
        self.backend = backend  # tokenizers.Tokenizer
        self.add_bos = add_bos  # prepend BOS on encode (when the post-processor does not already)

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        ids = self.backend.encode(text, add_special_tokens=add_special_tokens).ids
        bos_id = self.token_to_id(self.bos_token) if self.bos_token else None
        if add_special_tokens and self.add_bos and bos_id is not None and ids[:1] != [bos_id]:
            ids = [bos_id, *ids]
        return ids

    def decode(self, token_ids: list[int], skip_special_tokens: bool = True) -> str:
        return self.backend.decode(token_ids, skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        return self.backend.token_to_id(token)

    @classmethod
    def from_dir(cls, model_dir: Path) -> HFTokenizer:
        from tokenizers import Tokenizer as Backend

        backend = Backend.from_file(str(model_dir / "tokenizer.json"))
        settings = _read_tokenizer_config(model_dir)
        bos, eos = settings["bos_token"], settings["eos_token"]
        eos_ids = _eos_ids(model_dir, [backend.token_to_id(eos)] if eos else [])
        return cls(backend, add_bos=settings["add_bos_token"], bos_token=bos, eos_token=eos,
                   eos_token_ids=eos_ids, chat_template=settings["chat_template"])


class SentencePieceTokenizer(Tokenizer):
    """A sentencepiece `tokenizer.model` (Llama 2, Mistral)."""

    def __init__(self, processor, *, add_bos: bool, **kwargs):
        super().__init__(**kwargs)
        self.processor = processor  # sentencepiece.SentencePieceProcessor
        self.add_bos = add_bos

    @property
    def vocab_size(self) -> int:
        return self.processor.get_piece_size()

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        ids = self.processor.encode(text)
        if add_special_tokens and self.add_bos and self.processor.bos_id() >= 0:
            ids = [self.processor.bos_id(), *ids]
        return ids

    def decode(self, token_ids: list[int], skip_special_tokens: bool = True) -> str:
        if skip_special_tokens:
            return self.processor.decode([t for t in token_ids if not self._is_special(t)])
        # Control tokens decode to "" in sentencepiece; spell them out between decoded runs.
        pieces: list[str] = []
        run: list[int] = []
        for token in token_ids:
            if self._is_special(token):
                pieces.append(self.processor.decode(run))
                pieces.append(self.processor.id_to_piece(token))
                run = []
            else:
                run.append(token)
        pieces.append(self.processor.decode(run))
        return "".join(pieces)

    def token_to_id(self, token: str) -> int | None:
        token_id = self.processor.piece_to_id(token)
        if token_id == self.processor.unk_id() and token != self.processor.id_to_piece(token_id):
            return None  # sentencepiece maps unknown pieces to <unk>
        return token_id

    def _is_special(self, token_id: int) -> bool:
        return self.processor.is_control(token_id)

    @classmethod
    def from_dir(cls, model_dir: Path) -> SentencePieceTokenizer:
        import sentencepiece

        processor = sentencepiece.SentencePieceProcessor(model_file=str(model_dir / "tokenizer.model"))
        settings = _read_tokenizer_config(model_dir)
        bos = settings["bos_token"] or processor.id_to_piece(processor.bos_id())
        eos = settings["eos_token"] or processor.id_to_piece(processor.eos_id())
        eos_ids = _eos_ids(model_dir, [processor.eos_id()] if processor.eos_id() >= 0 else [])
        return cls(processor, add_bos=settings["add_bos_token"], bos_token=bos, eos_token=eos,
                   eos_token_ids=eos_ids, chat_template=settings["chat_template"])


def _token_text(value) -> str | None:
    """tokenizer_config.json spells special tokens as strings or as {"content": ...} objects."""
    if isinstance(value, dict):
        return value.get("content")
    return value


def _read_tokenizer_config(model_dir: Path) -> dict:
    path = model_dir / "tokenizer_config.json"
    config = json.loads(path.read_text()) if path.is_file() else {}
    template = config.get("chat_template")
    template_file = model_dir / "chat_template.jinja"
    if template is None and template_file.is_file():
        template = template_file.read_text()
    if isinstance(template, list):  # [{"name": "default", "template": ...}, ...]
        template = next((t["template"] for t in template if t.get("name") == "default"), None)
    return {
        "bos_token": _token_text(config.get("bos_token")),
        "eos_token": _token_text(config.get("eos_token")),
        "add_bos_token": bool(config.get("add_bos_token", False)),
        "chat_template": template,
    }


def _eos_ids(model_dir: Path, tokenizer_eos_ids: list[int | None]) -> list[int]:
    """EOS ids of the tokenizer plus those of generation_config.json (Llama 3 lists several)."""
    ids = [i for i in tokenizer_eos_ids if i is not None]
    path = model_dir / "generation_config.json"
    if path.is_file():
        eos = json.loads(path.read_text()).get("eos_token_id")
        for token_id in [eos] if isinstance(eos, int) else (eos or []):
            if token_id not in ids:
                ids.append(token_id)
    return ids
