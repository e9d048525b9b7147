"""`pagedcore generate "prompt" [--model ...] [sampling flags]`: prints the completion.
`pagedcore serve [--model ...] [--host ...] [--port ...] [--api-key ...] [engine flags]`: the OpenAI-compatible
HTTP server (pagedcore.server).
`pagedcore bench prefix|throughput|memory|latency [flags]`: the benchmarks (pagedcore.bench)."""

from __future__ import annotations

import argparse
import sys

from pagedcore.engine.engine_args import EngineArgs


# `pagedcore generate --seed` is the requests' sampling seed, not the engine's.
GENERATE_SKIPS = ("seed",)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pagedcore", description="pagedcore: LLM inference on PagedAttention")
    commands = parser.add_subparsers(dest="command", required=True)
    gen = commands.add_parser("generate", help="complete one or more prompts and print the completions")
    gen.add_argument("prompts", nargs="+", help="prompt text (several prompts run as one batch)")
    gen.add_argument("--chat", action=argparse.BooleanOptionalAction, default=None,
                     help="wrap each prompt as a user message in the chat template (default: on when the model "
                          "has one)")
    EngineArgs.add_cli_arguments(gen.add_argument_group("engine"), skip=GENERATE_SKIPS)
    gen.add_argument("--max-tokens", type=int, default=128)
    gen.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    gen.add_argument("--top-p", type=float, default=1.0)
    gen.add_argument("--top-k", type=int, default=0)
    gen.add_argument("--min-p", type=float, default=0.0)
    gen.add_argument("--seed", type=int, default=None, help="per-request sampling seed")
    gen.add_argument("--n", type=int, default=1, help="completions per prompt")
    gen.add_argument("--stop", action="append", default=None, help="stop string (repeatable)")
    gen.add_argument("--repetition-penalty", type=float, default=1.0)
    gen.add_argument("--presence-penalty", type=float, default=0.0)
    gen.add_argument("--frequency-penalty", type=float, default=0.0)
    gen.add_argument("--ignore-eos", action="store_true")
    from pagedcore.server.launcher import add_serve_arguments

    add_serve_arguments(commands.add_parser("serve", help="run the OpenAI-compatible HTTP server"))
    from pagedcore.bench import BENCHMARKS

    bench = commands.add_parser("bench", help="run a benchmark of bench/RESULTS.md (table, JSON, plot)",
                                description="; ".join(f"{name}: {what}" for name, what in BENCHMARKS.items()))
    bench.add_argument("benchmark", choices=list(BENCHMARKS))
    bench.add_argument("bench_args", nargs=argparse.REMAINDER, help="the benchmark's own flags (see --help after it)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "bench":
        from pagedcore.bench import main as bench_main

        return bench_main(args.benchmark, args.bench_args)
    if args.command == "serve":
        from pagedcore.server.launcher import serve

        try:
            return serve(args)
        except (ValueError, FileNotFoundError) as error:
            print(f"pagedcore: error: {error}", file=sys.stderr)
            return 2
    from pagedcore.engine.llm import LLM
    from pagedcore.engine.sampling_params import SamplingParams

    try:
        params = SamplingParams(n=args.n, temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                                min_p=args.min_p, seed=args.seed, stop=args.stop, max_tokens=args.max_tokens,
                                ignore_eos=args.ignore_eos, repetition_penalty=args.repetition_penalty,
                                presence_penalty=args.presence_penalty, frequency_penalty=args.frequency_penalty)
        llm = LLM(**EngineArgs.from_cli(args, skip=GENERATE_SKIPS).to_kwargs())
        use_chat = args.chat if args.chat is not None else bool(llm.tokenizer and llm.tokenizer.chat_template)
        if use_chat:
            conversations = [[{"role": "user", "content": p}] for p in args.prompts]
            outputs = llm.chat(conversations, params)
        else:
            outputs = llm.generate(args.prompts, params)
    except (ValueError, FileNotFoundError) as error:
        print(f"pagedcore: error: {error}", file=sys.stderr)
        return 2
    for output in outputs:
        for completion in output.outputs:
            print(completion.text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
