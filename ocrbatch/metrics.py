"""Prometheus metrics of one worker process (`/metrics` of `ocrbatch serve`).

Counters and the call-latency histogram are fed where things happen; gauges (each domain's cap
and calls in flight, queue depths, the webhook outbox) are read from the live state at scrape
time. Each worker has its own registry, so nothing is global.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

CALL_SECONDS_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0)


@dataclass
class LiveState:
    """What the gauges show, as the worker sees it at scrape time."""

    domains: dict[str, dict[str, float | int | str]] = field(default_factory=dict)  # limiter snapshots
    queue_depths: dict[str, int] = field(default_factory=dict)  # batch name -> items waiting
    outbox_chunks: int = 0
    storage_endpoints: list[dict[str, object]] = field(default_factory=list)  # `Endpoint.as_dict()`s
    coordination_backend: str | None = None


class _LiveCollector(Collector):
    def __init__(self, state: Callable[[], LiveState]) -> None:
        self._state = state

    def collect(self) -> Iterable[Metric]:
        state = self._state()
        for name, description, key in _DOMAIN_GAUGES:
            gauge = GaugeMetricFamily(name, description, labels=["domain"])
            for domain, snapshot in state.domains.items():
                gauge.add_metric([domain], float(snapshot[key]))
            yield gauge
        queue = GaugeMetricFamily(
            "ocrbatch_queue_depth", "Discovered items queued, per batch", labels=["batch"]
        )
        for batch, depth in state.queue_depths.items():
            queue.add_metric([batch], float(depth))
        yield queue
        outbox = GaugeMetricFamily("ocrbatch_webhook_outbox_chunks", "Webhook chunks waiting for delivery")
        outbox.add_metric([], float(state.outbox_chunks))
        yield outbox
        capability = GaugeMetricFamily(
            "ocrbatch_storage_capability",
            "What each storage endpoint was probed (or configured) to do: 1 yes, 0 no",
            labels=["endpoint", "capability"],
        )
        for endpoint in state.storage_endpoints:
            for name in _CAPABILITIES:
                if isinstance(value := endpoint.get(name), bool):
                    capability.add_metric([str(endpoint["endpoint"]), name], float(value))
            if endpoint.get("list_api") in ("v1", "v2"):
                capability.add_metric(
                    [str(endpoint["endpoint"]), "list_objects_v2"], float(endpoint["list_api"] == "v2")
                )
        yield capability
        if state.coordination_backend is not None:
            backend = GaugeMetricFamily(
                "ocrbatch_coordination_backend", "The coordination backend in use", labels=["backend"]
            )
            backend.add_metric([state.coordination_backend], 1.0)
            yield backend


_CAPABILITIES = ("create_only_writes", "if_match_writes", "if_match_deletes", "user_metadata")


# (metric, help, key of the limiter's snapshot)
_DOMAIN_GAUGES = (
    ("ocrbatch_domain_cap", "Calls the limiter lets in flight now", "cap"),
    ("ocrbatch_domain_max_cap", "Configured cap on calls in flight", "max_cap"),
    ("ocrbatch_domain_in_flight", "OCR calls in flight", "in_flight"),
    ("ocrbatch_domain_waiting", "Items waiting for a call slot", "waiting"),
)


class WorkerMetrics:
    """The metrics registry of a worker and the instruments it feeds."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.items = Counter(
            "ocrbatch_items",
            "Items finished, by batch and outcome",
            ["batch", "outcome"],
            registry=self.registry,
        )
        self.call_seconds = Histogram(
            "ocrbatch_ocr_call_seconds",
            "Duration of OCR calls, by domain",
            ["domain"],
            buckets=CALL_SECONDS_BUCKETS,
            registry=self.registry,
        )
        self.retries = Counter(
            "ocrbatch_retries",
            "Retryable OCR errors, by domain and code",
            ["domain", "code"],
            registry=self.registry,
        )
        self.sqs_messages = Counter(
            "ocrbatch_sqs_messages",
            "SQS messages by outcome (deleted, returned: made visible again, not_an_event, abandoned)",
            ["outcome"],
            registry=self.registry,
        )
        self.webhook_chunks = Counter(
            "ocrbatch_webhook_chunks",
            "Webhook chunks by outcome (made, sent, retried, dead_lettered)",
            ["outcome"],
            registry=self.registry,
        )

    def watch(self, state: Callable[[], LiveState]) -> None:
        """Read the gauges from `state` at every scrape."""
        self.registry.register(_LiveCollector(state))

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)
