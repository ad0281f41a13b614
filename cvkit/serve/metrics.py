"""Prometheus metrics of one server: requests, latency, queue time, batch sizes.

Every app owns a :class:`ServeMetrics` with its own registry (no process-global state). With
several uvicorn workers, :func:`cvkit.serve.server.serve` sets ``PROMETHEUS_MULTIPROC_DIR``
before the workers start; prometheus-client then writes each worker's values to files there
and ``/metrics`` reports the sum over all workers.

Metrics (``endpoint`` is the route template, ``model`` a served model's name or empty):

- ``cvkit_requests_total{endpoint, model, status}``: HTTP requests by status code;
- ``cvkit_request_duration_seconds{endpoint, model, status}``: request latency histogram;
- ``cvkit_queue_duration_seconds{model}``: time from arrival in the batcher's queue to the start
  of its ``session.run``;
- ``cvkit_batch_size{model}``: rows per ``session.run``;
- ``cvkit_inference_duration_seconds{model}``: time of each batch's run (pre-processing, the
  graph and post-processing);
- ``cvkit_last_inference_timestamp_seconds{model}``: when the model's last batch finished
  (Unix time; the latest over workers).

:meth:`ServeMetrics.model_usage` reads these back (summed over workers) for Triton's statistics
extension, so the statistics and ``/metrics`` are one set of numbers.
"""

from __future__ import annotations

import os
import time
from collections.abc import Collection, Container, Mapping, Sequence
from dataclasses import dataclass

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


@dataclass(frozen=True)
class Span:
    """How many times something happened and the seconds it took in all."""

    count: int
    seconds: float


@dataclass(frozen=True)
class ModelUsage:
    """What one model's metrics hold since the server started (all workers).

    Attributes:
        succeeded: inference requests answered 200, and their latency.
        failed: inference requests answered with an error status, and their latency.
        queued: requests whose batch ran, and their time in the batcher's queue.
        runs: batches run (``session.run`` calls with their pre/post-processing), and their time.
        rows: images (rows) in those batches.
        last_inference: Unix time the last batch finished (0: none yet).
    """

    succeeded: Span
    failed: Span
    queued: Span
    runs: Span
    rows: int
    last_inference: float


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
            "HTTP request latency by endpoint, model and status code.",
            ["endpoint", "model", "status"],
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
        self.last_inference = Gauge(
            "cvkit_last_inference_timestamp_seconds",
            "Unix time the model's last batch finished.",
            ["model"],
            multiprocess_mode="max",
            registry=self.registry,
        )

    def observe_request(self, endpoint: str, model: str, status: int, started: float) -> None:
        """Count one finished request (``started``: its ``time.perf_counter()`` at arrival)."""
        self.requests.labels(endpoint, model, str(status)).inc()
        self.latency.labels(endpoint, model, str(status)).observe(time.perf_counter() - started)

    def batch_observer(self, model: str):
        """The :class:`~cvkit.serve.batcher.DynamicBatcher` ``observe`` callback of ``model``."""
        queue, batch_size, inference, finished = (
            self.queue.labels(model),
            self.batch_size.labels(model),
            self.inference.labels(model),
            self.last_inference.labels(model),
        )

        def observe(rows: int, waits: Sequence[float], seconds: float) -> None:
            batch_size.observe(rows)
            inference.observe(seconds)
            for wait in waits:
                queue.observe(wait)
            finished.set(time.time())

        return observe

    def _readable(self) -> CollectorRegistry:
        """The registry to read: this one, or in multi-process mode one over every worker's
        files."""
        if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            return self.registry
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        return registry

    def exposition(self) -> bytes:
        """The Prometheus text format of every metric (summed over workers in multi-process
        mode)."""
        return generate_latest(self._readable())

    def model_usage(
        self, models: Collection[str], endpoints: Container[str]
    ) -> dict[str, ModelUsage]:
        """Each of ``models``' counts and times so far, summed over workers (the metrics are
        read once for all of them).

        Args:
            models: served models' names.
            endpoints: the route templates whose requests count as inference requests.
        """
        # (model, sample name, outcome) -> value; the outcome splits requests by status
        totals: dict[tuple[str, str, str], float] = {}
        wanted = set(models)
        for family in self._readable().collect():
            for sample in family.samples:
                labels = sample.labels
                model = labels.get("model")
                if model not in wanted:
                    continue
                outcome = ""
                if "endpoint" in labels:
                    if labels["endpoint"] not in endpoints:
                        continue
                    outcome = "ok" if labels["status"] == "200" else "failed"
                key = (model, sample.name, outcome)
                totals[key] = totals.get(key, 0.0) + sample.value

        return {model: _usage(totals, model) for model in models}


def _usage(totals: Mapping[tuple[str, str, str], float], model: str) -> ModelUsage:
    """``model``'s usage from the ``(model, sample name, outcome)`` totals of its metrics."""

    def span(family: str, outcome: str = "") -> Span:
        count = totals.get((model, f"{family}_count", outcome), 0)
        return Span(int(count), totals.get((model, f"{family}_sum", outcome), 0.0))

    return ModelUsage(
        succeeded=span("cvkit_request_duration_seconds", "ok"),
        failed=span("cvkit_request_duration_seconds", "failed"),
        queued=span("cvkit_queue_duration_seconds"),
        runs=span("cvkit_inference_duration_seconds"),
        rows=int(totals.get((model, "cvkit_batch_size_sum", ""), 0)),
        last_inference=totals.get((model, "cvkit_last_inference_timestamp_seconds", ""), 0.0),
    )
