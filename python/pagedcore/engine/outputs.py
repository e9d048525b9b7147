"""What LLM.generate() returns: one RequestOutput per prompt, holding n CompletionOutputs."""

from __future__ import annotations

from dataclasses import dataclass, field

@dataclass
class Logprob:
    """vLLM's Logprob: a token's log-probability under the raw model distribution, its rank there
    (1 = the most likely token) and its text."""

    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


# One generated position: token id -> Logprob, for the sampled token and the top-k.
TokenLogprobs = dict[int, Logprob]


@dataclass
class CompletionOutput:
    index: int  # which of the request's n sequences
    text: str
    token_ids: list[int]
    cumulative_logprob: float  # sum of the sampled tokens' log-probabilities (raw model distribution)
    logprobs: list[TokenLogprobs] | None  # one dict per generated token when SamplingParams.logprobs is set
    finish_reason: str | None = None  # "stop" | "length" | "abort"; None while running
    stop_reason: int | str | None = None  # the stop string or stop token id that ended it, None for EOS/length

    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass
class RequestMetrics:
    arrival_time: float  # wall-clock seconds (time.time()), as vLLM's
    first_scheduled_time: float | None = None  # after the scheduler step that first computed its tokens
    first_token_time: float | None = None
    finished_time: float | None = None
    num_preemptions: int = 0

    @property
    def time_to_first_token(self) -> float | None:
        return None if self.first_token_time is None else self.first_token_time - self.arrival_time

    @property
    def latency(self) -> float | None:
        return None if self.finished_time is None else self.finished_time - self.arrival_time


@dataclass
class RequestOutput:
    request_id: str  # vLLM's request ids are strings
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool
    num_cached_tokens: int = 0  # prompt tokens taken from the prefix cache
    metrics: RequestMetrics | None = field(default=None, repr=False)
    # SamplingParams.prompt_logprobs: None for the first prompt token, then per prompt token its
    # Logprob and the top-k's (the raw distribution the model gave it from the tokens before).
    prompt_logprobs: list[TokenLogprobs | None] | None = None


@dataclass
class Metric:
    """One engine metric, as vLLM's LLM.get_metrics() returns them (vllm.v1.metrics.reader): a
    counter (monotonic) or a gauge (current value), named like the server's Prometheus metrics."""

    name: str
    kind: str  # "counter" | "gauge"
    value: float
    labels: dict[str, str] = field(default_factory=dict)


# The scheduler's metrics: name -> (kind, help, SchedulerStats field). The server's Prometheus
# /metrics and LLM.get_metrics() both read this table.
SCHEDULER_METRICS = {
    "pagedcore_kv_cache_usage_ratio": ("gauge", "Fraction of KV cache blocks in use", "kv_usage"),
    "pagedcore_kv_cache_used_blocks": ("gauge", "KV cache blocks in use", "num_used_blocks"),
    "pagedcore_kv_cache_blocks": ("gauge", "KV cache blocks in the pool", "num_blocks"),
    "pagedcore_prefix_cache_hit_rate": ("gauge", "Prompt tokens found in the prefix cache / looked up",
                                        "prefix_hit_rate"),
    "pagedcore_num_requests_running": ("gauge", "Sequences running", "num_running"),
    "pagedcore_num_requests_waiting": ("gauge", "Sequences waiting", "num_waiting"),
    "pagedcore_num_requests_swapped": ("gauge", "Sequences swapped to host memory", "num_swapped"),
    "pagedcore_num_preemptions": ("counter", "Sequences preempted", "num_preemptions"),
    "pagedcore_prefix_cache_hit_tokens": ("counter", "Prompt tokens served from the prefix cache",
                                          "num_prefix_hit_tokens"),
    "pagedcore_prefix_cache_query_tokens": ("counter", "Prompt tokens looked up in the prefix cache",
                                            "num_prefix_query_tokens"),
    "pagedcore_engine_steps": ("counter", "Engine steps run", "num_steps"),
}
