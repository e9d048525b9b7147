"""Incremental detokenization: the text of each new token as it is generated.

Decoding one token alone is wrong in two ways: a multi-byte character split over several byte
tokens decodes to U+FFFD until its last byte arrives, and sentencepiece drops the leading space
of the first token it decodes. So, as in vLLM, each step decodes a short window of tokens twice,
with and without the unread ones (both starting at the window's start, so both lose the same
leading space), and emits the difference once it no longer ends in an incomplete character.
"""

from __future__ import annotations

from pagedcore.tokenizers.tokenizer import Tokenizer

_INCOMPLETE = "\ufffd"
_PROMPT_CONTEXT_TOKENS = 5  # prompt tokens decoded before the first output token, for its leading space


class IncrementalDetokenizer:
    def __init__(self, tokenizer: Tokenizer, prompt_token_ids: list[int], skip_special_tokens: bool):
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        # The decode window: context tokens (already turned into text) and the unread ones after them.
        # The sequence's tokens are kept by its output; only this window lives here.
        self.token_ids = list(prompt_token_ids[-_PROMPT_CONTEXT_TOKENS:])
        self.read_offset = len(self.token_ids)  # the window's context tokens
        self.text = ""  # all output text so far

    def append(self, token_id: int) -> str:
        """Adds one generated token; returns the new text it completes (maybe "")."""
        self.token_ids.append(token_id)
        decode = lambda ids: self.tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens)  # noqa: E731
        prefix_text = decode(self.token_ids[:self.read_offset])
        full_text = decode(self.token_ids)
        if len(full_text) <= len(prefix_text) or full_text.endswith(_INCOMPLETE):
            return ""  # nothing new yet, or a character still waits for its last bytes
        new_text = full_text[len(prefix_text):]
        # The tokens read so far become the next window's context; those before them are never
        # decoded again, so they go.
        del self.token_ids[:self.read_offset]
        self.read_offset = len(self.token_ids)
        self.text += new_text
        return new_text
