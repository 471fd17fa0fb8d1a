"""Prometheus metrics of one hub instance (its own registry, so tests and apps never share counters)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

if TYPE_CHECKING:
    from serving.engine import Engine

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 24, 32, 48, 64)


class ReplicaCollector:
    """Each replica of a ReplicaSet (serving/replicas.py), read when /metrics is scraped."""

    def __init__(self, status: Callable[[], list[dict]]) -> None:
        self.status = status

    def collect(self):
        label = ["replica"]
        healthy = GaugeMetricFamily(
            "tunehub_replica_healthy", "1 while a replica is in rotation", labels=label
        )
        outstanding = GaugeMetricFamily(
            "tunehub_replica_outstanding_requests", "Requests in flight on a replica", labels=label
        )
        sent = CounterMetricFamily("tunehub_replica_requests", "Requests sent to a replica", labels=label)
        adapters = GaugeMetricFamily(
            "tunehub_replica_adapter_loaded",
            "1 for each adapter a replica has loaded",
            labels=[*label, "adapter"],
        )
        for replica in self.status():
            url = replica["url"]
            healthy.add_metric([url], 1.0 if replica["healthy"] else 0.0)
            outstanding.add_metric([url], replica["outstanding"])
            sent.add_metric([url], replica["requests"])
            for name in replica["adapters"]:
                adapters.add_metric([url, name], 1.0)
        yield from (healthy, outstanding, sent, adapters)


class Metrics:
    def __init__(
        self,
        adapter_count: Callable[[], int] | None = None,
        replicas: Callable[[], list[dict]] | None = None,
    ) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "tunehub_requests", "HTTP requests by route and status", ["route", "status"], registry=r
        )
        self.prompt_tokens = Counter(
            "tunehub_prompt_tokens", "Prompt tokens processed", ["model"], registry=r
        )
        self.completion_tokens = Counter(
            "tunehub_completion_tokens", "Tokens generated", ["model"], registry=r
        )
        self.latency = Histogram(
            "tunehub_generation_seconds",
            "Time from request to last token",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "tunehub_time_to_first_token_seconds",
            "Time from request to first token",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "tunehub_batch_size", "Rows in each decode step", buckets=BATCH_BUCKETS, registry=r
        )
        self.adapters = Gauge("tunehub_loaded_adapters", "Adapters loaded in the engine", registry=r)
        if adapter_count is not None:
            self.adapters.set_function(adapter_count)
        if replicas is not None:
            r.register(ReplicaCollector(replicas))

    def render(self) -> bytes:
        return generate_latest(self.registry)


def engine_metrics(engine: Engine) -> Metrics:
    """The metrics of a server around `engine`: its adapter count, its replicas (when it has any), and the
    batch size of every decode step it reports."""
    metrics = Metrics(
        adapter_count=lambda: len(engine.adapters()),
        replicas=engine.replica_status if engine.replica_status() else None,
    )
    engine.observe_steps(metrics.batch_size.observe)
    return metrics
