"""Starts a pagedcore server in-process on 127.0.0.1 (uvicorn.Server in a background thread, a free
port) and stops it again; used by the server tests. Every wait is bounded."""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import httpx
import uvicorn

from pagedcore.engine.llm import LLM
from pagedcore.server.app import ServerConfig, build_app

# A ChatML template (SmolLM2's shape) for tiny test models, which ship only tokenizer.json.
CHATML_TEMPLATE = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] "
                   "+ '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
                   "{% endif %}")


def write_chat_template(model_dir: Path) -> None:
    (model_dir / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "chat_template": CHATML_TEMPLATE}))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RunningServer:
    def __init__(self, llm: LLM, config: ServerConfig, startup_timeout_s: float = 60.0):
        self.llm = llm
        self.config = config
        self.app = build_app(llm.engine, llm.tokenizer, llm.max_model_len, config)
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        uv_config = uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning",
                                   timeout_graceful_shutdown=10)
        self.server = uvicorn.Server(uv_config)
        self.thread = threading.Thread(target=self.server.run, name="test-uvicorn", daemon=True)
        self.thread.start()
        deadline = time.monotonic() + startup_timeout_s
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.05)

    @property
    def async_engine(self):
        return self.app.state.async_engine

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.config.api_key}"} if self.config.api_key else {}

    def metric(self, name: str) -> float:
        """One unlabelled sample from /metrics."""
        text = httpx.get(f"{self.base_url}/metrics", headers=self.headers(), timeout=10).text
        for line in text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        raise KeyError(f"{name} not in /metrics")

    def wait_until(self, predicate, timeout_s: float = 10.0, what: str = "condition") -> None:
        deadline = time.monotonic() + timeout_s
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
            time.sleep(0.05)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)


def start_tiny_server(model_dir: Path, *, api_key: str | None = None, max_num_seqs: int = 64,
                      num_blocks: int = 512, max_model_len: int = 256, **config) -> RunningServer:
    """A server over a tiny random Llama (tests/tiny_models.py) with a ChatML template, on CPU."""
    from tiny_models import save_tiny_model

    if not (model_dir / "config.json").is_file():
        save_tiny_model(model_dir, "llama")
        write_chat_template(model_dir)
    bytes_per_block = 2 * 2 * 2 * 64 * 4 * 16  # K+V x layers x kv heads x head_dim x fp32 x block_size
    llm = LLM(str(model_dir), device="cpu", max_model_len=max_model_len, max_num_seqs=max_num_seqs,
              kv_cache_memory_bytes=num_blocks * bytes_per_block, verbose=False)
    return RunningServer(llm, ServerConfig(model_name="tiny", api_key=api_key, **config))
