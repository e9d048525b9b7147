"""`pagedcore bench latency`: online serving latency against `pagedcore serve`.

Starts `pagedcore serve` on 127.0.0.1 (or uses --url), then for each request rate sends requests
with Poisson arrivals (exponential gaps, fixed seed) to /v1/completions with stream=true, token-id
prompts and ignore_eos, and records per request: TTFT (send -> first streamed token) and the gaps
between streamed chunks (inter-token latency, ITL). Reports p50 / p99 of both against the rate,
and the achieved throughput. One client thread per in-flight request (stdlib http.client).

Presets: cpu = the default model, W5-shaped prompts, 16 output tokens, low rates; gpu = the
Qwen3-0.6B shape with random bf16 weights, W1 prompts, 128 output tokens.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from urllib.parse import urlparse

from pagedcore.bench import common

NAME = "latency"
PRESETS = {
    "cpu": dict(workload="w5", rates=[0.25, 0.5, 1.0, 2.0], num_requests=12, output_len=16,
                server_args=["--device", "cpu", "--max-model-len", "1024", "--kv-cache-memory-bytes", str(1 << 30)]),
    "gpu": dict(workload="w1", rates=[4.0, 8.0, 16.0, 32.0], num_requests=96, output_len=128,
                server_args=["--device", "cuda", "--max-model-len", "2048",
                             "--kv-cache-memory-bytes", str(32 << 30), "--load-format", "dummy"]),
}


def prompts_of(workload: str, count: int) -> list[list[int]]:
    requests = common.w1_requests() if workload == "w1" else common.w5_requests()
    return [requests[i % len(requests)].prompt_token_ids for i in range(count)]


# ----------------------------------------------------------------------------------------------
# The server process.

class Server:
    """`pagedcore serve` in a child process of its own; stopped with SIGTERM (its pid only)."""

    def __init__(self, preset: str, port: int, extra_args: list[str], model: str | None, log_path: str):
        if model is None:
            model = str(common.write_model_dir(common.QWEN3_0_6B)) if preset == "gpu" else None
        command = [sys.executable, "-m", "pagedcore.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
                   "--log-level", "warning", *extra_args]
        if model is not None:
            command += ["--model", model]
        self.command = command
        self.log = open(log_path, "w")
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT)
        self.url = f"http://127.0.0.1:{port}"

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"pagedcore serve exited with {self.process.returncode}; log: {self.log.name}")
            try:
                status, _ = _get(self.url, "/health", timeout=2)
                if status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"pagedcore serve not ready after {timeout_s} s; log: {self.log.name}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


def _get(url: str, path: str, timeout: float) -> tuple[int, bytes]:
    parsed = urlparse(url)
    conn = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


# ----------------------------------------------------------------------------------------------
# The client.

def stream_one(url: str, prompt: list[int], max_tokens: int, record: dict) -> None:
    """POSTs one streaming completion; fills record with send time, chunk times and token count."""
    parsed = urlparse(url)
    # logprobs=0 (the sampled token's own log-probability, which the sampler computes anyway) makes the
    # server send a chunk for every token even when its text is empty, as it is for dummy-weight models
    # without a tokenizer; chunk times are then token times.
    body = json.dumps({"prompt": prompt, "max_tokens": max_tokens, "ignore_eos": True, "temperature": 0.0,
                       "logprobs": 0, "stream": True, "stream_options": {"include_usage": True}})
    conn = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=600)
    record["sent"] = time.perf_counter()
    try:
        conn.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
        response = conn.getresponse()
        if response.status != 200:
            record["error"] = f"HTTP {response.status}: {response.read()[:200]!r}"
            return
        chunk_times = []
        while True:
            line = response.readline()
            if not line:
                break
            line = line.strip()
            if not line.startswith(b"data:"):
                continue
            data = line[5:].strip()
            if data == b"[DONE]":
                break
            event = json.loads(data)
            if event.get("usage"):
                record["completion_tokens"] = event["usage"].get("completion_tokens")
            if event.get("choices"):
                chunk_times.append(time.perf_counter())
        record["chunk_times"] = chunk_times
    except OSError as error:
        record["error"] = repr(error)
    finally:
        conn.close()


def run_rate(url: str, prompts: list[list[int]], rate: float, max_tokens: int, seed: int) -> dict:
    rng = random.Random(seed)
    records = [{} for _ in prompts]
    threads = []
    start = time.perf_counter()
    arrival = 0.0
    for prompt, record in zip(prompts, records):
        delay = start + arrival - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        thread = threading.Thread(target=stream_one, args=(url, prompt, max_tokens, record), daemon=True)
        thread.start()
        threads.append(thread)
        arrival += rng.expovariate(rate)
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    ok = [r for r in records if "error" not in r and r.get("chunk_times")]
    ttft = [r["chunk_times"][0] - r["sent"] for r in ok]
    itl = [b - a for r in ok for a, b in zip(r["chunk_times"], r["chunk_times"][1:])]
    tpot = [(r["chunk_times"][-1] - r["chunk_times"][0]) / (len(r["chunk_times"]) - 1)
            for r in ok if len(r["chunk_times"]) > 1]
    tokens = sum(r.get("completion_tokens") or len(r["chunk_times"]) for r in ok)
    return {"rate": rate, "num_requests": len(prompts), "num_ok": len(ok),
            "errors": [r["error"] for r in records if "error" in r][:5], "wall_s": wall,
            "output_tok_per_s": tokens / wall, "num_output_tokens": tokens,
            "ttft_p50_s": common.percentile(ttft, 50), "ttft_p99_s": common.percentile(ttft, 99),
            "itl_p50_s": common.percentile(itl, 50), "itl_p99_s": common.percentile(itl, 99),
            "tpot_p50_s": common.percentile(tpot, 50), "num_chunks_per_request": len(itl) / max(1, len(ok)) + 1}


def run(args, argv) -> dict:
    device = common.resolve_device(args.device)
    server = None
    url = args.url
    if url is None:
        log_path = os.path.join(tempfile.gettempdir(), f"pagedcore-bench-serve-{args.port}.log")
        server = Server(args.preset, args.port, args.server_args, args.model, log_path)
        print(f"[latency] started: {' '.join(server.command)} (log {log_path})", file=sys.stderr)
    try:
        if server is not None:
            server.wait_ready(args.ready_timeout)
            url = server.url
        prompts = prompts_of(args.workload, args.num_requests)
        # Warm-up: a small burst at full length (first-step shapes, the server's first KV pages).
        run_rate(url, prompts[:4], rate=100.0, max_tokens=args.output_len, seed=1)
        rows = []
        for rate in args.rates:
            row = run_rate(url, prompts, rate, args.output_len, seed=0)
            rows.append(row)
            print(f"[latency] rate {rate}: TTFT p50 {row['ttft_p50_s']:.3f} s, ITL p50 {row['itl_p50_s']:.4f} s, "
                  f"{row['num_ok']}/{row['num_requests']} ok", file=sys.stderr)
    finally:
        if server is not None:
            server.stop()
    return {"benchmark": NAME, **common.run_info(device, argv), "preset": args.preset,
            "config": {"workload": args.workload, "num_requests_per_rate": args.num_requests,
                       "output_len": args.output_len, "rates": args.rates, "url": args.url or "started here",
                       "server_command": " ".join(server.command) if server else None,
                       "client": "one thread per request, stdlib http.client, stream=true, ignore_eos, greedy"},
            "rows": rows}


def print_report(payload: dict) -> None:
    config = payload["config"]
    print(f"Online latency ({payload['preset']} preset) on {payload['device']}, {payload['date']}: "
          f"{config['num_requests_per_rate']} requests per rate, {config['workload'].upper()} prompts, "
          f"{config['output_len']} output tokens, Poisson arrivals")
    headers = ["rate (req/s)", "ok", "wall s", "output tok/s", "TTFT p50 s", "TTFT p99 s", "ITL p50 ms",
               "ITL p99 ms", "TPOT p50 ms"]
    rows = [[r["rate"], f"{r['num_ok']}/{r['num_requests']}", r["wall_s"], r["output_tok_per_s"], r["ttft_p50_s"],
             r["ttft_p99_s"], 1e3 * r["itl_p50_s"], 1e3 * r["itl_p99_s"], 1e3 * r["tpot_p50_s"]]
            for r in payload["rows"]]
    print(common.format_table(headers, rows))


def plot(payload: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = payload["rows"]
    rates = [r["rate"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    panels = (("ttft", "TTFT (s)", axes[0], 1.0), ("itl", "inter-token latency (ms)", axes[1], 1e3))
    for key, label, ax, scale in panels:
        ax.plot(rates, [scale * r[f"{key}_p50_s"] for r in rows], "o-", label="p50")
        ax.plot(rates, [scale * r[f"{key}_p99_s"] for r in rows], "s--", label="p99")
        ax.set_xlabel("request rate (req/s, Poisson)")
        ax.set_title(label)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"pagedcore serve latency, {payload['preset']} preset: {payload['device']} ({payload['date']})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_compare(payloads: dict[str, list[dict]], path) -> None:
    """Several builds' runs side by side: p50 and p99 TTFT and inter-token latency against the rate, one
    colour per label (a build), one line per run of it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    panels = (("ttft", "TTFT (ms)", axes[0]), ("itl", "inter-token latency (ms)", axes[1]))
    for (label, runs), color in zip(payloads.items(), colors):
        for i, payload in enumerate(runs):
            rates = [r["rate"] for r in payload["rows"]]
            for key, title, ax in panels:
                for pct, style in (("p50", "o-"), ("p99", "s--")):
                    ax.plot(rates, [1e3 * r[f"{key}_{pct}_s"] for r in payload["rows"]], style, color=color,
                            alpha=0.85, label=f"{label} {pct}" if i == 0 else None)
                ax.set_title(title)
    for _, _, ax in panels:
        ax.set_xlabel("request rate (req/s, Poisson)")
        ax.set_yscale("log")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    first = next(iter(payloads.values()))[0]
    fig.suptitle(f"pagedcore serve latency, {first['preset']} preset: {first['device']} ({first['date']})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pagedcore bench latency", description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", choices=sorted(PRESETS), default=None)
    p.add_argument("--device", default="auto", help="picks the default preset")
    p.add_argument("--url", default=None, help="use a running server instead of starting one")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--model", default=None, help="the server's --model (default: the preset's)")
    p.add_argument("--workload", choices=["w1", "w5"])
    p.add_argument("--rates", type=float, nargs="+", help="request rates (req/s)")
    p.add_argument("--num-requests", type=int, help="requests per rate")
    p.add_argument("--output-len", type=int)
    p.add_argument("--server-args", nargs=argparse.REMAINDER, help="extra `pagedcore serve` flags (last)")
    p.add_argument("--ready-timeout", type=float, default=600.0)
    p.add_argument("--out", default=None, help="results folder (default results/latency)")
    return p


def resolve_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line with the preset's settings filled in; --server-args come after the preset's
    own server flags (so they add to them, and win where they repeat one)."""
    args = parser().parse_args(argv)
    extra, args.server_args = args.server_args or [], None
    common.apply_preset(args, PRESETS)
    args.server_args = [*args.server_args, *extra]
    return args


def main(argv: list[str] | None = None) -> int:
    args = resolve_args(argv)
    # A time limit's SIGTERM unwinds through run()'s `finally`, which stops the server it started.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    payload = run(args, common.command_line(NAME, argv))
    common.report(payload, common.results_dir(NAME, args.out) / f"{NAME}_{payload['device_type']}", print_report, plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
