"""Prometheus metrics: request counts and latencies, and what the batchers do.

Each app owns its registry, so several apps (tests) never collide on metric names.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from retrieval.batcher import BatchStats

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
TOKEN_BUCKETS = (16, 64, 256, 1024, 2048, 4096, 8192, 16384, 32768)
RATIO_BUCKETS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


class Metrics:
    """The service's metrics, and a :class:`~retrieval.batcher.BatchObserver` feeding them."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        reg = self.registry
        self.requests = Counter(
            "candor_requests", "HTTP requests by route, method and status", ["route", "method", "status"], registry=reg
        )
        self.request_latency = Histogram(
            "candor_request_latency_seconds",
            "HTTP request latency by route",
            ["route", "method"],
            buckets=LATENCY_BUCKETS,
            registry=reg,
        )
        self.queue_depth = Gauge("candor_queue_depth", "Items waiting in a batcher queue", ["model"], registry=reg)
        self.queue_wait = Histogram(
            "candor_queue_wait_seconds",
            "Time items waited before their batch ran",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=reg,
        )
        self.batch_size = Histogram(
            "candor_batch_size", "Items per executed batch", ["model"], buckets=BATCH_SIZE_BUCKETS, registry=reg
        )
        self.batch_tokens = Histogram(
            "candor_batch_tokens", "Padded tokens per executed batch", ["model"], buckets=TOKEN_BUCKETS, registry=reg
        )
        self.padding_ratio = Histogram(
            "candor_batch_padding_ratio",
            "Share of padded token slots per batch",
            ["model"],
            buckets=RATIO_BUCKETS,
            registry=reg,
        )
        self.batch_latency = Histogram(
            "candor_batch_compute_seconds", "Compute time per batch", ["model"], buckets=LATENCY_BUCKETS, registry=reg
        )
        self.batch_failures = Counter("candor_batch_failures", "Batches whose handler raised", ["model"], registry=reg)
        self.rejections = Counter(
            "candor_rejections",
            "Work refused (queue_full) or dropped (queue_timeout)",
            ["model", "reason"],
            registry=reg,
        )
        self.index_size = Gauge("candor_index_items", "Items in the catalog index", registry=reg)
        self.ready = Gauge("candor_ready", "1 when models are warm and the index is open", registry=reg)

    # BatchObserver --------------------------------------------------------------------------------------------

    def on_batch(self, stats: BatchStats) -> None:
        """Record one executed batch."""
        model = stats.model
        self.batch_size.labels(model).observe(stats.size)
        self.batch_tokens.labels(model).observe(stats.padded_tokens)
        self.padding_ratio.labels(model).observe(stats.padding_ratio)
        self.batch_latency.labels(model).observe(stats.compute_s)
        waits = self.queue_wait.labels(model)
        for wait in stats.queue_waits_s:
            waits.observe(wait)
        if stats.failed:
            self.batch_failures.labels(model).inc()

    def on_reject(self, model: str, reason: str) -> None:
        """Count a refused or dropped item."""
        self.rejections.labels(model, reason).inc()

    def on_queue_depth(self, model: str, depth: int) -> None:
        """Track the queue depth."""
        self.queue_depth.labels(model).set(depth)

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)
