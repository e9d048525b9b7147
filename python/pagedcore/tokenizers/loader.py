"""load_tokenizer: the tokenizer of a model directory or a .gguf file. It sits above both tokenizer
kinds (tokenizer.py and gguf_tokenizer.py), so neither imports the other's loader."""

from __future__ import annotations

from pathlib import Path

from pagedcore.loaders.gguf_file import GGUFFile
from pagedcore.tokenizers.gguf_tokenizer import tokenizer_from_gguf
from pagedcore.tokenizers.tokenizer import HFTokenizer, SentencePieceTokenizer, Tokenizer


def load_tokenizer(path: str | Path, gguf_file: GGUFFile | None = None) -> Tokenizer:
    """A model directory (tokenizer.json preferred over tokenizer.model) or a .gguf file; gguf_file: that
    file already opened (the model loader's), so it is not parsed again."""
    path = Path(path)
    if path.is_file() and path.suffix == ".gguf":
        return tokenizer_from_gguf(path, gguf_file)
    if (path / "tokenizer.json").is_file():
        return HFTokenizer.from_dir(path)
    if (path / "tokenizer.model").is_file():
        return SentencePieceTokenizer.from_dir(path)
    raise FileNotFoundError(
        f"no tokenizer found for {path}: expected tokenizer.json or tokenizer.model in the directory, "
        "or a .gguf file; pass tokenizer=... or give token ids instead of text")
