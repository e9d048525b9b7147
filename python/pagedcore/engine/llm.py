"""LLM: the offline API, shaped like vLLM's. Builds the model, KV cache, scheduler and engine once;
generate() and chat() run batches of prompts to completion and return outputs in input order."""

from __future__ import annotations

import sys
import weakref
from collections.abc import Sequence
from pathlib import Path

import torch

from pagedcore import _core
from pagedcore.tokenizers.chat_template import Message, render_chat
from pagedcore.engine.engine import LLMEngine
from pagedcore.engine.engine_args import EngineArgs
from pagedcore.model_executor.kv_cache import plan_kv_cache
from pagedcore.loaders.model_loader import DEFAULT_MODEL, resolve_model
from pagedcore.model_executor.parallel import TensorParallel, check_tensor_parallel
from pagedcore.model_executor.tp_executor import TensorParallelRunner, WorkerGroup
from pagedcore.model_executor.worker import build_runner, build_shard
from pagedcore.engine.outputs import SCHEDULER_METRICS, Metric, RequestOutput
from pagedcore.model_executor.sampler import Sampler
from pagedcore.engine.sampling_params import SamplingParams
from pagedcore.tokenizers.loader import load_tokenizer
from pagedcore.tokenizers.tokenizer import Tokenizer

Prompt = str | list[int]
PromptInput = Prompt | dict
_TP_TIMEOUT_S = 600.0  # the process group's: a collective waits this long for a peer  # vLLM's TextPrompt {"prompt": str} and TokensPrompt {"prompt_token_ids": [...]}


def _ring_slot_bytes(args: EngineArgs, max_model_len: int) -> int:
    """A step ring slot: the header and the largest packed plan (every row a token, max_num_seqs
    sequences at the widest block table, every sequence deferred), with room for a few block-pair
    lists and prompt-logprob rows, at most 4 MiB (8 slots: 32 MiB of /dev/shm); larger messages go as
    broadcasts."""
    tokens, seqs = args.max_num_batched_tokens, args.max_num_seqs
    layout = _core.plan_layout(min(seqs, tokens), tokens, tokens, -(-max_model_len // args.block_size), tokens)
    return min(8 * 16 + 4 * (layout.size + 2 * tokens + 4096), 4 << 20)


def _size_text(num_bytes: int) -> str:
    return f"{num_bytes / (1 << 30):.2f} GiB" if num_bytes >= 1 << 30 else f"{num_bytes / (1 << 20):.1f} MiB"


def check_unicode(text: str) -> None:
    """Refuses text that is not valid Unicode (a lone surrogate), which no tokenizer can encode."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise ValueError(f"the prompt is not valid Unicode: a lone surrogate {text[error.start]!r} at "
                         f"character {error.start}") from None


class LLM:
    def __init__(self, model: str | Path | None = DEFAULT_MODEL, **kwargs):
        """kwargs: the engine arguments of EngineArgs (vLLM's names); an unknown one is refused with the
        nearest valid name."""
        args = EngineArgs.from_kwargs(model=None if model is None else str(model), **kwargs)
        self.args = args
        self._stop_workers = None  # weakref.finalize stopping the tensor-parallel workers, if any
        source = resolve_model(args.model, revision=args.revision, download_dir=args.download_dir)
        self.source_path = source.path  # HF directory or .gguf file
        config = source.config
        self.device = args.resolve_device()
        self.dtype = args.resolve_dtype(config.dtype, self.device)
        self.quantization = args.resolve_quantization(config.quantization, self.device, self.dtype)
        self.kv_cache_dtype = args.resolve_kv_cache_dtype(self.dtype)  # refused here, before any work
        self.max_model_len = args.resolve_max_model_len(config.max_model_len)
        if config.head_dim not in _core.SUPPORTED_HEAD_SIZES:
            raise ValueError(f"head_dim {config.head_dim} is not supported by the kernels; supported: "
                             f"{', '.join(map(str, _core.SUPPORTED_HEAD_SIZES))}")
        self.tokenizer = self._load_tokenizer(args.tokenizer, source)

        # Tensor parallelism: everything is checked before a worker starts; the workers load their
        # shards while this process loads rank 0's.
        size = args.tensor_parallel_size
        workers = None
        if size > 1:
            backend = check_tensor_parallel(args, config, self.device)
            workers = WorkerGroup(dict(args=args, source_path=str(source.path), device_type=self.device.type,
                                       dtype=self.dtype, max_model_len=self.max_model_len, size=size, backend=backend,
                                       timeout_s=_TP_TIMEOUT_S, cpu_threads=max(1, torch.get_num_threads() // size)),
                                  ring_slot_bytes=_ring_slot_bytes(args, self.max_model_len))
            self._stop_workers = weakref.finalize(self, workers.shutdown)  # also at interpreter exit
        try:
            shard = build_shard(args, source, self.device, self.dtype, self.max_model_len,
                                TensorParallel(0, size) if workers else None)
            self.model, self.kv_plan = shard.model, shard.kv_plan
            num_blocks = shard.kv_plan.num_blocks
            if workers:  # every rank gets the block count of the rank with the least memory
                num_blocks = min([num_blocks] + [blocks for _, blocks, _ in workers.gather("ready")])
                if num_blocks < shard.kv_plan.num_blocks:
                    shard.kv_plan = self.kv_plan = plan_kv_cache(
                        shard.config, block_size=args.block_size, max_model_len=self.max_model_len,
                        dtype=args.resolve_kv_cache_dtype(self.dtype),
                        budget_bytes=num_blocks * shard.kv_plan.plan.bytes_per_block)
            if args.verbose:
                print(f"[pagedcore] {self.kv_plan_summary(size)}", file=sys.stderr)
            mode, num_host_blocks = args.resolve_preemption(self.device, self.kv_plan.plan.bytes_per_block)
            if workers:
                workers.build(num_blocks, num_host_blocks)
            runner = build_runner(args, shard, num_blocks, num_host_blocks, self.device, self.dtype,
                                  self.max_model_len)
            if workers:
                workers.gather("built")
                runner = TensorParallelRunner(runner, workers)
        except BaseException:
            if workers:
                workers.shutdown()
            raise

        scheduler = _core.Scheduler(_core.SchedulerConfig(
            num_blocks=num_blocks, block_size=args.block_size, max_num_seqs=args.max_num_seqs,
            max_num_batched_tokens=args.max_num_batched_tokens, max_model_len=self.max_model_len,
            enable_prefix_caching=args.enable_prefix_caching, preemption_mode=mode, num_host_blocks=num_host_blocks))
        generator = torch.Generator(device=self.device).manual_seed(args.seed)
        eos_ids = self.tokenizer.eos_token_ids if self.tokenizer is not None else config.eos_token_ids
        self.engine = LLMEngine(scheduler, runner, Sampler(config.vocab_size, generator), self.tokenizer,
                                list(eos_ids), self.max_model_len, async_scheduling=args.async_scheduling)

    def kv_plan_summary(self, size: int = 1) -> str:
        """The KV memory plan as printed: per GPU (per rank on CPU), and in all over the tensor-parallel ranks."""
        if size == 1:
            return self.kv_plan.summary()
        plan, unit = self.kv_plan.plan, "GPU" if self.device.type == "cuda" else "rank"
        total = size * plan.num_blocks * plan.bytes_per_block
        return (f"per {unit} (each of {size} tensor-parallel ranks holds the same blocks, as many as the rank with "
                f"the least memory can): {self.kv_plan.summary()}; in all: {_size_text(total)} of KV cache over "
                f"{size} {unit}s, {plan.token_capacity} tokens")

    def shutdown(self) -> None:
        """Stops the tensor-parallel worker processes (also done when the LLM is garbage collected and
        at interpreter exit); the LLM cannot generate afterwards. Nothing to do without workers."""
        if self._stop_workers is not None:
            self._stop_workers()

    @property
    def scheduler(self) -> _core.Scheduler:
        return self.engine.scheduler

    def get_tokenizer(self):
        """The Hugging Face tokenizer of the model (transformers' AutoTokenizer, as vLLM returns) where
        transformers is installed and the model has tokenizer files; else pagedcore's own tokenizer
        (encode / decode / chat_template), or None for a model without one."""
        if self.tokenizer is None:
            return None
        try:
            import transformers
        except ImportError:
            return self.tokenizer
        path = Path(self.source_path)
        if path.suffix == ".gguf":
            return transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        return transformers.AutoTokenizer.from_pretrained(str(path))

    def reset_prefix_cache(self) -> bool:
        """Empties the prefix cache (vLLM's LLM.reset_prefix_cache); False, changing nothing, while
        requests are in flight."""
        return self.engine.scheduler.reset_prefix_cache()

    def get_metrics(self) -> list[Metric]:
        """The engine's counters and gauges now (vLLM's LLM.get_metrics)."""
        stats = self.engine.scheduler.stats()
        return [Metric(name, kind, float(getattr(stats, key))) for name, (kind, _, key) in SCHEDULER_METRICS.items()]

    def generate(self, prompts: PromptInput | Sequence[PromptInput], sampling_params: SamplingParams
                 | Sequence[SamplingParams] | None = None, use_tqdm: bool = True) -> list[RequestOutput]:
        """prompts: a string, a list of token ids, a {"prompt": str} / {"prompt_token_ids": [...]} dict
        (vLLM's TextPrompt / TokensPrompt), or a list of those. One RequestOutput per prompt, in order."""
        prompt_list = [self._as_text_and_ids(p) for p in self._as_prompt_list(prompts)]
        return self._generate(prompt_list, self._as_params_list(sampling_params, len(prompt_list)), use_tqdm)

    def _generate(self, prompts: list[tuple[str | None, list[int]]], params_list: list[SamplingParams],
                  use_tqdm: bool) -> list[RequestOutput]:
        request_ids = []
        try:
            for (text, token_ids), params in zip(prompts, params_list):
                request_ids.append(self.engine.add_request(text, list(token_ids), params))
            return self._run_to_completion(request_ids, use_tqdm)
        except BaseException:
            for request_id in request_ids:
                self.engine.abort(request_id)
            raise

    def chat(self, messages: list[Message] | list[list[Message]], sampling_params: SamplingParams
             | Sequence[SamplingParams] | None = None, use_tqdm: bool = True, add_generation_prompt: bool = True,
             chat_template: str | None = None, continue_final_message: bool = False,
             chat_template_kwargs: dict | None = None, tools: list[dict] | None = None) -> list[RequestOutput]:
        """messages: one conversation ([{"role", "content"}, ...]; content a string or OpenAI text
        parts) or a list of them. The rendered text is each output's `prompt`. tools: OpenAI tool
        definitions handed to the template as `tools`, as vLLM's LLM.chat does (the output is text:
        reading calls from it is the caller's, or use the server's tool_choice)."""
        if not isinstance(messages, list) or not messages:
            raise ValueError("chat() needs a conversation (a non-empty list of messages) or a list of them")
        template = chat_template or (self.tokenizer.chat_template if self.tokenizer else None)
        if template is None:
            raise ValueError("this model has no chat template: pass chat_template=... (jinja2 source)")
        conversations = [messages] if isinstance(messages[0], dict) else messages
        prompts = []
        for conversation in conversations:
            text = render_chat(template, conversation, add_generation_prompt=add_generation_prompt,
                               continue_final_message=continue_final_message, bos_token=self.tokenizer.bos_token,
                               eos_token=self.tokenizer.eos_token,
                               template_kwargs={**(chat_template_kwargs or {}), **({"tools": tools} if tools else {})})
            check_unicode(text)
            prompts.append((text, self.tokenizer.encode(text, add_special_tokens=False)))
        return self._generate(prompts, self._as_params_list(sampling_params, len(prompts)), use_tqdm)

    def _run_to_completion(self, request_ids: list[int], use_tqdm: bool) -> list[RequestOutput]:
        pending = set(request_ids)
        results = {}
        progress = None
        if use_tqdm and len(request_ids) > 1:
            from tqdm import tqdm

            progress = tqdm(total=len(request_ids), desc="Processed prompts", unit="req", file=sys.stderr)
        while pending:
            for request in self.engine.step():
                if request.request_id in pending:
                    pending.discard(request.request_id)
                    results[request.request_id] = request.to_output()
                    if progress is not None:
                        progress.update(1)
        if progress is not None:
            progress.close()
        return [results[request_id] for request_id in request_ids]

    def _encode(self, prompt: str) -> list[int]:
        if self.tokenizer is None:
            raise ValueError("this model has no tokenizer: give prompts as lists of token ids")
        check_unicode(prompt)
        return self.tokenizer.encode(prompt)

    @staticmethod
    def _load_tokenizer(tokenizer: str | Path | None, source) -> Tokenizer | None:
        if tokenizer is not None:
            return load_tokenizer(tokenizer)
        try:
            return load_tokenizer(source.path, source.gguf)
        except FileNotFoundError:
            return None  # token-id prompts still work (tiny test models, dummy benchmarks)

    @staticmethod
    def _as_prompt_list(prompts) -> list:
        if isinstance(prompts, (str, dict)):
            return [prompts]
        if isinstance(prompts, Sequence) and prompts and all(isinstance(t, int) for t in prompts):
            return [list(prompts)]
        if not isinstance(prompts, Sequence) or isinstance(prompts, bytes):
            raise ValueError("prompts must be a string, a list of token ids, a prompt dict, or a list of those")
        return list(prompts)

    def _as_text_and_ids(self, prompt) -> tuple[str | None, list[int]]:
        """One prompt as (text or None, token ids)."""
        if isinstance(prompt, dict):
            unknown = set(prompt) - {"prompt", "prompt_token_ids"}
            if unknown:
                raise ValueError(f"prompt dict keys {sorted(unknown)} are not supported; a prompt dict holds "
                                 "'prompt' (text) or 'prompt_token_ids'")
            if "prompt_token_ids" in prompt:
                ids = prompt["prompt_token_ids"]
                if not isinstance(ids, Sequence) or isinstance(ids, str) or not all(
                        isinstance(t, int) and not isinstance(t, bool) for t in ids):
                    raise ValueError("prompt_token_ids must be a list of integers")
                return prompt.get("prompt"), list(ids)
            if not isinstance(prompt.get("prompt"), str):
                raise ValueError("a prompt dict needs 'prompt' (a string) or 'prompt_token_ids'")
            prompt = prompt["prompt"]
        if isinstance(prompt, str):
            return prompt, self._encode(prompt)
        if isinstance(prompt, Sequence) and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            return None, list(prompt)
        raise ValueError("each prompt must be a string, a list of token ids, or a {'prompt': ...} / "
                         "{'prompt_token_ids': ...} dict")

    @staticmethod
    def _as_params_list(params, count: int) -> list[SamplingParams]:
        if params is None:
            return [SamplingParams()] * count
        if isinstance(params, SamplingParams):
            return [params] * count
        params = list(params)
        if len(params) != count or not all(isinstance(p, SamplingParams) for p in params):
            raise ValueError(f"sampling_params must be one SamplingParams or a list of {count} (one per prompt)")
        return params
