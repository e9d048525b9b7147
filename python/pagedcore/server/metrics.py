"""Prometheus metrics of one server, in its own CollectorRegistry (so several apps can live in one
process, as in the tests). Scheduler state (KV usage, queue lengths, prefix-cache hits,
preemptions) is read from the engine thread's last stats snapshot at scrape time; latencies and
token counts are observed by the engine thread as it publishes deltas. Times are in seconds."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from pagedcore.engine.outputs import SCHEDULER_METRICS

_LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 60.0, 120.0)
_E2E_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 320.0)


class ServerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._stats: Callable[[], dict] = dict
        labels = {"registry": self.registry}
        self.time_to_first_token = Histogram(
            "pagedcore_time_to_first_token_seconds", "Arrival to first generated token", buckets=_LATENCY_BUCKETS,
            **labels)
        self.inter_token_latency = Histogram(
            "pagedcore_inter_token_latency_seconds", "Time between consecutive token deliveries of a request",
            buckets=_LATENCY_BUCKETS, **labels)
        self.e2e_latency = Histogram(
            "pagedcore_e2e_request_latency_seconds", "Arrival to last token", buckets=_E2E_BUCKETS, **labels)
        self.prompt_tokens = Counter("pagedcore_prompt_tokens", "Prompt tokens admitted", **labels)
        self.generation_tokens = Counter("pagedcore_generation_tokens", "Tokens generated", **labels)
        self.finished_requests = Counter("pagedcore_request_success", "Finished engine requests",
                                         ["finish_reason"], **labels)
        self.rejected_requests = Counter("pagedcore_request_rejected", "Requests refused by the server",
                                         ["reason"], **labels)
        self.registry.register(_SchedulerCollector(self))

    def bind_stats(self, stats: Callable[[], dict]) -> None:
        """stats: returns the engine's last scheduler snapshot (AsyncEngine.stats)."""
        self._stats = stats

    def on_admitted(self, num_prompt_tokens: int) -> None:
        self.prompt_tokens.inc(num_prompt_tokens)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _SchedulerCollector:
    def __init__(self, metrics: ServerMetrics):
        self.metrics = metrics

    def collect(self):
        stats = self.metrics._stats()
        for name, (kind, doc, key) in SCHEDULER_METRICS.items():
            family = GaugeMetricFamily if kind == "gauge" else CounterMetricFamily
            yield family(name, doc, value=float(stats.get(key, 0)))
