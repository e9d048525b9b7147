"""Tokenizers (HF tokenizers, sentencepiece, GGUF vocabularies), the incremental detokenizer and chat templates."""
