"""Broken model files and prompts get one error naming the file and what is wrong in it, from the
API and from the CLI (exit status 2, no traceback)."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from pagedcore import LLM
from pagedcore.loaders.model_loader import default_model_path
from tiny_models import save_tiny_model


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tiny")
    save_tiny_model(directory, "llama", with_tokenizer=False, vocab_size=512)
    return directory


@pytest.mark.parametrize("content, expected", [
    (b"", "is not a GGUF file (it is empty)"),
    (b"hello, I am text\n", "is not a GGUF file (it starts with b'hell', not GGUF)"),
    ("truncated", "is not a readable GGUF file"),
])
def test_broken_gguf_files_name_the_file(tmp_path, content, expected):
    path = tmp_path / "model.gguf"
    if content == "truncated":
        with open(default_model_path(), "rb") as f:
            path.write_bytes(f.read(64 << 10))  # the header and part of the metadata
    else:
        path.write_bytes(content)
    with pytest.raises(ValueError, match=re.escape(expected)) as info:
        LLM(str(path), device="cpu", verbose=False)
    assert str(path) in str(info.value)


def copy_with_config(src, dst, edit):
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    (dst / "config.json").write_text(edit((src / "config.json").read_text()))
    return dst


def test_config_cut_mid_object(tiny_dir, tmp_path):
    broken = copy_with_config(tiny_dir, tmp_path / "cut", lambda text: text[: len(text) // 2])
    with pytest.raises(ValueError, match=r"config\.json is not valid JSON .*is the file complete\?"):
        LLM(str(broken), device="cpu", verbose=False)


def test_config_missing_a_required_key(tiny_dir, tmp_path):
    def drop_hidden_size(text):
        config = json.loads(text)
        del config["hidden_size"]
        return json.dumps(config)

    broken = copy_with_config(tiny_dir, tmp_path / "nohidden", drop_hidden_size)
    with pytest.raises(ValueError, match=r"config\.json has no 'hidden_size', which the model needs"):
        LLM(str(broken), device="cpu", verbose=False)


def test_cli_reports_a_broken_model_without_a_traceback(tiny_dir, tmp_path):
    broken = copy_with_config(tiny_dir, tmp_path / "cli", lambda text: "{")
    result = subprocess.run([sys.executable, "-m", "pagedcore.cli", "generate", "hi", "--model", str(broken),
                             "--device", "cpu"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "pagedcore: error:" in result.stderr and "is not valid JSON" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_prompt_with_a_lone_surrogate_is_a_clear_error():
    llm = LLM(device="cpu", max_model_len=64, kv_cache_memory_bytes=8 << 20, load_format="dummy", verbose=False)
    with pytest.raises(ValueError, match=r"not valid Unicode: a lone surrogate '\\ud800' at character 3"):
        llm.generate("abc\ud800def", use_tqdm=False)
    assert not llm.engine.has_unfinished()
