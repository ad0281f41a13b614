"""Prometheus metrics of one server: requests, latency, queue time, batch sizes.

Every app owns a :class:`ServeMetrics` with its own registry (no process-global state). With
several uvicorn workers, :func:`cvkit.serve.server.serve` sets ``PROMETHEUS_MULTIPROC_DIR``
before the workers start; prometheus-client then writes each worker's values to files there
and ``/metrics`` reports the sum over all workers.

Metrics (``endpoint`` is the route template, ``model`` a served model's name or empty):

- ``cvkit_requests_total{endpoint, model, status}``: HTTP requests by status code;
- ``cvkit_request_duration_seconds{endpoint, model}``: request latency histogram;
- ``cvkit_queue_duration_seconds{model}``: time from arrival in the batcher's queue to the start
  of its ``session.run``;
- ``cvkit_batch_size{model}``: rows per ``session.run``;
- ``cvkit_inference_duration_seconds{model}``: time of each batch's run (pre-processing, the
  graph and post-processing).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class ServeMetrics:
    """The server's metric families, in a registry of their own."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "cvkit_requests",
            "HTTP requests by endpoint, model and status code.",
            ["endpoint", "model", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "cvkit_request_duration_seconds",
            "HTTP request latency.",
            ["endpoint", "model"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.queue = Histogram(
            "cvkit_queue_duration_seconds",
            "Time a request waited in the batcher's queue before its session.run started.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "cvkit_batch_size",
            "Rows (images) per session.run.",
            ["model"],
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.inference = Histogram(
            "cvkit_inference_duration_seconds",
            "Time of one batch: pre-processing, session.run and post-processing.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )

    def observe_request(self, endpoint: str, model: str, status: int, started: float) -> None:
        """Count one finished request (``started``: its ``time.perf_counter()`` at arrival)."""
        self.requests.labels(endpoint, model, str(status)).inc()
        self.latency.labels(endpoint, model).observe(time.perf_counter() - started)

    def batch_observer(self, model: str):
        """The :class:`~cvkit.serve.batcher.DynamicBatcher` ``observe`` callback of ``model``."""
        queue, batch_size, inference = (
            self.queue.labels(model),
            self.batch_size.labels(model),
            self.inference.labels(model),
        )

        def observe(rows: int, waits: Sequence[float], seconds: float) -> None:
            batch_size.observe(rows)
            inference.observe(seconds)
            for wait in waits:
                queue.observe(wait)

        return observe

    def exposition(self) -> bytes:
        """The Prometheus text format of every metric (summed over workers in multi-process
        mode)."""
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            registry = CollectorRegistry()
            MultiProcessCollector(registry)
            return generate_latest(registry)
        return generate_latest(self.registry)
