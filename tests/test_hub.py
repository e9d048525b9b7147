"""Hugging Face Hub ids resolve through huggingface_hub against a cache laid out as the hub client
lays it out (models--org--name/{refs,snapshots,blobs}), offline: nothing is fetched."""

from __future__ import annotations

import shutil
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch

from pagedcore import LLM, SamplingParams
from pagedcore.loaders.hub import looks_like_hub_id
from pagedcore.loaders.model_loader import default_model_path
from pagedcore.tokenizers.loader import load_tokenizer
from tiny_models import hf_greedy, save_tiny_model

COMMIT = "0123456789abcdef0123456789abcdef01234567"
OLDER = "fedcba9876543210fedcba9876543210fedcba98"


def lay_out_cache(cache: Path, repo_id: str, files: Path, commit: str, ref: str | None) -> None:
    """The hub client's layout: blobs/<file>, snapshots/<commit>/<file> -> blob, refs/<ref> = commit."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for i, f in enumerate(sorted(files.iterdir())):
        blob = repo / "blobs" / f"{commit[:8]}{i:04d}"
        shutil.copyfile(f, blob)
        (snapshot / f.name).symlink_to(Path("../../blobs") / blob.name)
    if ref is not None:
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / ref).write_text(commit)


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture
def hub_cache(tmp_path):
    """tiny-org/tiny-llama: main at COMMIT (one model), OLDER (another seed) reachable by hash."""
    main_files, older_files = tmp_path / "main", tmp_path / "older"
    main_files.mkdir()
    older_files.mkdir()
    # vocab 512, as in tests/test_models.py (greedy ties are rare at that size); main also carries
    # the default model's tokenizer.json, to show the tokenizer comes from the same snapshot.
    hf_main = save_tiny_model(main_files, "llama", seed=1, with_tokenizer=False, vocab_size=512)
    hf_older = save_tiny_model(older_files, "llama", seed=2, with_tokenizer=False, vocab_size=512)
    load_tokenizer(default_model_path()).backend.save(str(main_files / "tokenizer.json"))
    cache = tmp_path / "hub"
    lay_out_cache(cache, "tiny-org/tiny-llama", main_files, COMMIT, "main")
    lay_out_cache(cache, "tiny-org/tiny-llama", older_files, OLDER, None)
    return cache, hf_main, hf_older


def greedy(llm, prompt):
    params = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)
    return llm.generate([prompt], params, use_tqdm=False)[0].outputs[0].token_ids


def test_hub_id_loads_the_cached_snapshot_offline_at_main_and_at_a_commit(hub_cache, offline):
    cache, hf_main, hf_older = hub_cache
    prompt = [5, 17, 99, 3]
    main = LLM("tiny-org/tiny-llama", download_dir=str(cache), device="cpu", max_model_len=128, verbose=False)
    assert main.tokenizer is not None  # the tokenizer comes from the same snapshot
    assert greedy(main, prompt) == hf_greedy(hf_main, prompt, 8)[0]
    older = LLM("tiny-org/tiny-llama", revision=OLDER, download_dir=str(cache), device="cpu", max_model_len=128,
                verbose=False)
    assert greedy(older, prompt) == hf_greedy(hf_older, prompt, 8)[0]
    assert older.tokenizer is None  # that snapshot has no tokenizer files


def test_default_cache_location_comes_from_the_hub_client(hub_cache, offline, monkeypatch):
    cache, _, _ = hub_cache
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    llm = LLM("tiny-org/tiny-llama", device="cpu", max_model_len=64, verbose=False)
    assert str(llm.args.model) == "tiny-org/tiny-llama"


def test_missing_model_or_revision_offline_is_a_clear_error(hub_cache, offline):
    cache, _, _ = hub_cache
    with pytest.raises(FileNotFoundError, match="'tiny-org/absent' .*not in the Hugging Face cache"):
        LLM("tiny-org/absent", download_dir=str(cache), device="cpu", verbose=False)
    with pytest.raises(FileNotFoundError, match="revision v9"):
        LLM("tiny-org/tiny-llama", revision="v9", download_dir=str(cache), device="cpu", verbose=False)


def test_hub_ids_are_told_apart_from_paths(tmp_path):
    assert looks_like_hub_id("Qwen/Qwen2.5-0.5B-Instruct")
    assert not looks_like_hub_id("./Qwen/Qwen2.5")
    assert not looks_like_hub_id("/abs/path")
    assert not looks_like_hub_id("a/b/c")
    existing = tmp_path / "org" / "name"
    existing.mkdir(parents=True)
    assert not looks_like_hub_id(str(existing))
