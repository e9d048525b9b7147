"""`pagedcore serve`: builds the LLM from the engine flags, then runs the app under uvicorn.

SIGTERM / SIGINT: uvicorn stops accepting connections and waits (up to --drain-timeout) for the
requests in flight, streams included, to finish; then the engine thread stops and the process exits.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from pagedcore.loaders.model_loader import DEFAULT_MODEL


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help=f"HF model directory, .gguf file, or {DEFAULT_MODEL} (default)")
    parser.add_argument("--served-model-name", default=None,
                        help="the model id clients send (default: the --model value's last path part)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--api-key", default=os.environ.get("PAGEDCORE_API_KEY"),
                        help="require 'Authorization: Bearer KEY' on every route but /health "
                             "(default: $PAGEDCORE_API_KEY, else no key)")
    engine = parser.add_argument_group("engine")
    engine.add_argument("--device", default="auto", help="auto | cpu | cuda")
    engine.add_argument("--dtype", default="auto", help="auto | float32 | bfloat16 | float16")
    engine.add_argument("--max-model-len", type=int, default=None)
    engine.add_argument("--block-size", type=int, default=16)
    engine.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    engine.add_argument("--kv-cache-memory-bytes", type=int, default=None)
    engine.add_argument("--max-num-seqs", type=int, default=256)
    engine.add_argument("--max-num-batched-tokens", type=int, default=8192)
    engine.add_argument("--enable-prefix-caching", action=argparse.BooleanOptionalAction, default=True)
    engine.add_argument("--seed", type=int, default=0)
    engine.add_argument("--load-format", default="auto")
    engine.add_argument("--enforce-eager", action="store_true", help="never capture CUDA graphs")
    engine.add_argument("--preemption-mode", default="recompute", help="recompute | swap (CUDA only)")
    engine.add_argument("--swap-space", type=float, default=4.0, help="GiB of pinned host memory for swap")
    server = parser.add_argument_group("server limits")
    server.add_argument("--max-queued-requests", type=int, default=1024,
                        help="requests that may wait beyond --max-num-seqs running ones; more get 429")
    server.add_argument("--max-body-bytes", type=int, default=4 << 20, help="larger request bodies get 413")
    server.add_argument("--stall-timeout", type=float, default=60.0,
                        help="seconds without an engine-loop tick before /health reports 503")
    server.add_argument("--drain-timeout", type=float, default=60.0,
                        help="seconds to let in-flight requests finish after SIGTERM")
    server.add_argument("--log-level", default="info")


def serve(args: argparse.Namespace) -> int:
    import uvicorn

    from pagedcore.engine.llm import LLM
    from pagedcore.server.app import ServerConfig, build_app

    for name in ("max_queued_requests", "max_body_bytes"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if not 0 < args.port < 65536:
        raise ValueError(f"--port must be in [1, 65535], got {args.port}")
    llm = LLM(args.model, device=args.device, dtype=args.dtype, block_size=args.block_size,
              gpu_memory_utilization=args.gpu_memory_utilization, kv_cache_memory_bytes=args.kv_cache_memory_bytes,
              max_model_len=args.max_model_len, max_num_seqs=args.max_num_seqs,
              max_num_batched_tokens=args.max_num_batched_tokens, enable_prefix_caching=args.enable_prefix_caching,
              seed=args.seed, load_format=args.load_format, enforce_eager=args.enforce_eager,
              preemption_mode=args.preemption_mode, swap_space=args.swap_space)
    config = ServerConfig(model_name=args.served_model_name or Path(str(args.model)).name or str(args.model),
                          api_key=args.api_key or None, max_body_bytes=args.max_body_bytes,
                          max_queued_requests=args.max_queued_requests, stall_timeout_s=args.stall_timeout)
    app = build_app(llm.engine, llm.tokenizer, llm.max_model_len, config)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level,
                timeout_graceful_shutdown=args.drain_timeout)
    return 0
