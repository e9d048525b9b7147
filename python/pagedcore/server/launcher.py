"""`pagedcore serve`: builds the LLM from the engine flags, then runs the app under uvicorn.

SIGTERM / SIGINT: uvicorn stops accepting connections and waits (up to --drain-timeout) for the
requests in flight, streams included, to finish; then the engine thread stops and the process exits.
"""

from __future__ import annotations

import argparse
import os
import signal
from pathlib import Path

from pagedcore.engine.engine_args import EngineArgs
from pagedcore.server.tools import TOOL_PARSERS


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model_tag", nargs="?", default=None, metavar="MODEL",
                        help="the model, as `vllm serve MODEL` takes it (same as --model)")
    parser.add_argument("--served-model-name", default=None,
                        help="the model id clients send (default: the --model value's last path part)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--api-key", default=os.environ.get("PAGEDCORE_API_KEY"),
                        help="require 'Authorization: Bearer KEY' on every route but /health "
                             "(default: $PAGEDCORE_API_KEY, else no key)")
    EngineArgs.add_cli_arguments(parser.add_argument_group("engine"))
    server = parser.add_argument_group("server limits")
    server.add_argument("--max-queued-requests", type=int, default=1024,
                        help="requests that may wait beyond --max-num-seqs running ones; more get 429")
    server.add_argument("--max-body-bytes", type=int, default=4 << 20, help="larger request bodies get 413")
    server.add_argument("--tool-call-parser", default="auto", choices=["auto", "none", *TOOL_PARSERS],
                        help="how tool_choice 'auto' reads the model's tool calls: auto (the model family's: "
                             "hermes for Qwen2/Qwen3, llama3_json for Llama, mistral for Mistral), hermes, "
                             "llama3_json, mistral, or none (tool_choice 'auto' refused)")
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
    if args.model_tag is not None:
        if args.model not in (args.model_tag, EngineArgs.model):  # --model given too, and different
            raise ValueError(f"the model is given twice: {args.model_tag!r} and --model {args.model!r}")
        args.model = args.model_tag
    llm = LLM(**EngineArgs.from_cli(args).to_kwargs())
    config = ServerConfig(model_name=args.served_model_name or Path(str(args.model)).name or str(args.model),
                          api_key=args.api_key or None, max_body_bytes=args.max_body_bytes,
                          max_queued_requests=args.max_queued_requests, stall_timeout_s=args.stall_timeout,
                          tool_call_parser=args.tool_call_parser)
    app = build_app(llm.engine, llm.tokenizer, llm.max_model_len, config)
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level,
                            timeout_graceful_shutdown=args.drain_timeout)
    _uvicorn_server()(config).run()
    return 0


def _uvicorn_server():
    import uvicorn

    class DrainingServer(uvicorn.Server):
        """uvicorn re-raises a captured signal once it has shut down gracefully, so a clean SIGTERM
        drain would end with status 143. SIGTERM is how `pagedcore serve` is asked to stop: after the
        drain it exits 0 (SIGINT keeps uvicorn's behaviour)."""

        def handle_exit(self, sig: int, frame) -> None:
            super().handle_exit(sig, frame)
            captured = getattr(self, "_captured_signals", None)
            if sig == signal.SIGTERM and isinstance(captured, list) and sig in captured:
                captured.remove(sig)

    return DrainingServer
