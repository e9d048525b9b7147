"""Hugging Face Hub model ids ("Qwen/Qwen2.5-0.5B-Instruct"): resolved to a local snapshot through
huggingface_hub, which honours the standard cache, HF_HUB_OFFLINE, HF_TOKEN and friends. Only the
files loading needs are fetched: the config, the safetensors weights and the tokenizer."""

from __future__ import annotations

from pathlib import Path

# What loaders/model_loader.py and tokenizers/ read from a model directory.
NEEDED_FILES = (
    "config.json", "generation_config.json", "*.safetensors", "*.safetensors.index.json",
    "tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
)


def looks_like_hub_id(model: str) -> bool:
    """'org/name' (two parts, no path syntax) that is not a path on this machine."""
    parts = model.split("/")
    return (len(parts) == 2 and all(parts) and not model.startswith((".", "~")) and "\\" not in model
            and not Path(model).expanduser().exists())


def download_model(repo_id: str, *, revision: str | None, download_dir: str | None) -> Path:
    """The local snapshot of `repo_id` at `revision` (a branch, tag or commit; default main), fetched
    into `download_dir` (default: the standard Hugging Face cache) unless it is there already."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        path = Path(snapshot_download(repo_id, revision=revision, cache_dir=download_dir,
                                      allow_patterns=list(NEEDED_FILES)))
    except LocalEntryNotFoundError as error:
        raise FileNotFoundError(
            f"model {repo_id!r} (revision {revision or 'main'}) is not in the Hugging Face cache "
            f"({download_dir or 'the default cache'}) and the Hub cannot be reached (offline: HF_HUB_OFFLINE "
            f"or no network): {error}") from None
    except HfHubHTTPError as error:
        raise FileNotFoundError(f"model {repo_id!r} (revision {revision or 'main'}) could not be fetched from "
                                f"the Hugging Face Hub: {error}") from None
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"model {repo_id!r} (revision {revision or 'main'}) has no config.json at {path}: "
                                "pagedcore loads HF checkpoints (config.json + *.safetensors) from the Hub")
    return path
