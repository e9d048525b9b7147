"""EngineArgs is the one place of every engine setting: LLM(model, **kwargs), the CLI flags of
`pagedcore generate` / `pagedcore serve` and the benchmarks all come from it."""

from __future__ import annotations

import argparse
from dataclasses import fields

import pytest

from pagedcore import LLM
from pagedcore.cli import GENERATE_SKIPS, _parser
from pagedcore.engine.engine_args import VLLM_ENGINE_ARGUMENTS, EngineArgs


def test_unknown_keyword_suggests_the_nearest_setting():
    with pytest.raises(TypeError, match="unknown engine argument 'max_num_seq'; did you mean 'max_num_seqs'"):
        LLM(device="cpu", max_num_seq=4)
    with pytest.raises(TypeError, match="unknown engine argument 'zzz'; engine arguments: model, tokenizer"):
        LLM(device="cpu", zzz=1)


@pytest.mark.parametrize("name", ["tokenizer_revision", "code_revision", "max_logprobs", "hf_token"])
def test_vllm_arguments_not_supported_yet_say_so(name):
    with pytest.raises(ValueError, match=f"{name} is a vLLM engine argument that pagedcore does not support yet"):
        LLM(device="cpu", **{name: 1})


def test_no_field_is_also_listed_as_unsupported():
    assert not VLLM_ENGINE_ARGUMENTS & {f.name for f in fields(EngineArgs)}


def test_checks_run_on_the_values_llm_uses():
    with pytest.raises(ValueError, match="max_num_seqs must be an integer >= 1, got 0"):
        LLM(device="cpu", max_num_seqs=0)
    with pytest.raises(ValueError, match="block_size must be one of 1, 2, 4"):
        EngineArgs(block_size=24)
    with pytest.raises(ValueError, match="enforce_eager must be True or False"):
        EngineArgs(enforce_eager="yes")


def subcommand_parser(name: str) -> argparse.ArgumentParser:
    actions = [a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return actions[0].choices[name]


@pytest.mark.parametrize("command", ["serve", "generate"])
def test_cli_flags_are_generated_from_the_fields_with_their_defaults(command):
    parser = subcommand_parser(command)
    extra = ["a prompt"] if command == "generate" else []
    namespace = parser.parse_args(extra)
    skips = GENERATE_SKIPS if command == "generate" else ()
    for f in fields(EngineArgs):
        if not f.metadata.get("cli", True) or f.name in skips:
            continue
        assert hasattr(namespace, f.name), f"--{f.name.replace('_', '-')} missing from pagedcore {command}"
        assert getattr(namespace, f.name) == f.default, f.name
    assert EngineArgs.from_cli(namespace, skip=skips) == EngineArgs()


def test_cli_values_reach_engine_args():
    namespace = subcommand_parser("serve").parse_args(
        ["--max-num-seqs", "7", "--no-enable-prefix-caching", "--block-size", "32", "--kv-cache-memory-bytes", "4096"])
    args = EngineArgs.from_cli(namespace)
    assert (args.max_num_seqs, args.enable_prefix_caching, args.block_size, args.kv_cache_memory_bytes) == (
        7, False, 32, 4096)


@pytest.mark.parametrize("name,value,reason", [
    ("pipeline_parallel_size", 2, "pipeline parallelism is not implemented"),
    ("enable_chunked_prefill", False, "pagedcore always chunks prefills"),
    ("kv_cache_dtype", "fp8_e5m2", "the other KV cache types are not implemented"),
    ("quantization", "awq", "the other weight formats are not implemented"),
    ("disable_log_stats", False, "periodic stats logging is not implemented"),
])
def test_vllm_values_pagedcore_does_not_implement_are_refused_by_name(name, value, reason):
    with pytest.raises(ValueError, match=f"{name}={value!r} is not supported: {reason}"):
        LLM(device="cpu", **{name: value})


def test_vllm_values_that_pagedcore_honours_anyway_are_accepted():
    args = EngineArgs(tensor_parallel_size=1, pipeline_parallel_size=1, enable_chunked_prefill=True,
                      trust_remote_code=True, kv_cache_dtype="auto", quantization=None, disable_log_stats=True)
    assert args.tensor_parallel_size == 1 and args.enable_chunked_prefill is True
    with pytest.raises(ValueError, match="tensor_parallel_size must be an integer >= 1, got True"):
        EngineArgs(tensor_parallel_size=True)  # a bool is not the integer 1


def test_serve_takes_the_model_as_vllm_serve_does():
    parser = subcommand_parser("serve")
    assert parser.parse_args(["some/model"]).model_tag == "some/model"
    namespace = parser.parse_args(["--tensor-parallel-size", "1", "--enable-chunked-prefill", "--trust-remote-code"])
    args = EngineArgs.from_cli(namespace)
    assert (args.tensor_parallel_size, args.enable_chunked_prefill, args.trust_remote_code) == (1, True, True)
