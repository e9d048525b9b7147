"""Tiny random Llama-family checkpoints saved with HF transformers' save_pretrained, for tests.

Weights use a larger init range than HF's default so greedy choices are not near-ties, and the
SmolLM2 vocabulary (tokenizer.json from the default model's GGUF) so text prompts work.
"""

from __future__ import annotations

from pathlib import Path

import torch

from pagedcore.loaders.model_loader import default_model_path
from pagedcore.tokenizers.loader import load_tokenizer

SHAPE = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, head_dim=64, max_position_embeddings=1024, initializer_range=0.08)


def hf_config(model_type: str, vocab_size: int, **overrides):
    import transformers

    classes = {"llama": transformers.LlamaConfig, "mistral": transformers.MistralConfig,
               "qwen2": transformers.Qwen2Config, "qwen3": transformers.Qwen3Config}
    extra = {"sliding_window": None} if model_type in ("mistral",) else {}
    return classes[model_type](vocab_size=vocab_size, bos_token_id=1, eos_token_id=2,
                               **{**SHAPE, **extra, **overrides})


def save_tiny_model(directory: Path, model_type: str, *, seed: int = 0, with_tokenizer: bool = True,
                    vocab_size: int = 512, **overrides):
    """Writes config.json + model.safetensors (+ tokenizer.json) and returns the HF model (fp32, eval)."""
    import transformers

    if with_tokenizer:
        tokenizer = load_tokenizer(default_model_path())
        tokenizer.backend.save(str(directory / "tokenizer.json"))
        vocab_size = tokenizer.vocab_size
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(hf_config(model_type, vocab_size, **overrides))
    model = model.float().eval()
    model.save_pretrained(str(directory))
    return model


def save_byte_tokenizer(directory: Path) -> int:
    """Writes a byte-level tokenizer.json (ids 0-2: <unk>, <s>, </s>; then one token per byte, no merges)
    that needs no default model (the GPU machine has none); returns its vocabulary size (259). Grammars
    work with it token by token; pad the model's vocabulary above it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    specials = ["<unk>", "<s>", "</s>"]
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {token: i for i, token in enumerate(specials + sorted(alphabet))}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(specials)
    backend.save(str(directory / "tokenizer.json"))
    return len(vocab)


def hf_greedy(model, prompt_ids: list[int], max_new_tokens: int) -> tuple[list[int], torch.Tensor]:
    """HF greedy decoding of one prompt: (new token ids, raw logits [max_new_tokens, vocab])."""
    model.generation_config.eos_token_id = None  # run the full length, like ignore_eos
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt_ids]), max_new_tokens=max_new_tokens, do_sample=False,
                             output_logits=True, return_dict_in_generate=True, pad_token_id=0)
    return out.sequences[0, len(prompt_ids):].tolist(), torch.cat(out.logits)
