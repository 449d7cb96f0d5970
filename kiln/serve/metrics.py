"""Prometheus metrics of one server, in a registry of its own (never the process-global one, so
two servers in one process, or a test, count apart).

``kiln_requests_total{endpoint,status}``, ``kiln_request_failures_total{endpoint,reason}``,
``kiln_request_duration_seconds{endpoint}`` (receipt to response), ``kiln_queue_duration_seconds``
(admission to the start of its batch), ``kiln_inference_duration_seconds`` (one ``infer`` of a
batch), ``kiln_batch_size`` (requests per ``infer``), ``kiln_batch_rows`` (rows per ``infer``),
``kiln_queue_depth`` and ``kiln_model_info{model,target,precision}``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kiln.serve.model import ServedModel

# Seconds: a digits request is well under a millisecond of compute; a large model's batch seconds.
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)

# Why a request failed, by HTTP status.
REASONS = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
    414: "url_too_long",
    415: "bad_encoding",
    422: "not_json_encodable",
    431: "headers_too_large",
    499: "client_gone",
    500: "runtime",
    503: "unavailable",
}


class ServerMetrics:
    def __init__(self, model: ServedModel) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry(auto_describe=True)
        reg = self.registry
        self.requests = Counter(
            "kiln_requests", "Requests by endpoint and status", ["endpoint", "status"], registry=reg
        )
        self.failures = Counter(
            "kiln_request_failures",
            "Requests that failed, by endpoint and reason",
            ["endpoint", "reason"],
            registry=reg,
        )
        self.latency = Histogram(
            "kiln_request_duration_seconds",
            "Request latency, receipt to response",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=reg,
        )
        self.queue_time = Histogram(
            "kiln_queue_duration_seconds",
            "Time a request waited from admission to the start of its batch",
            buckets=LATENCY_BUCKETS,
            registry=reg,
        )
        self.infer_time = Histogram(
            "kiln_inference_duration_seconds", "One runtime infer of a batch", buckets=LATENCY_BUCKETS, registry=reg
        )
        self.batch_size = Histogram("kiln_batch_size", "Requests per infer", buckets=SIZE_BUCKETS, registry=reg)
        self.batch_rows = Histogram("kiln_batch_rows", "Rows per infer", buckets=SIZE_BUCKETS, registry=reg)
        self.answered = self.failed = 0  # infer requests, for the closing line
        self.depth = Gauge("kiln_queue_depth", "Requests admitted and not yet running", registry=reg)
        info = Gauge("kiln_model_info", "The served artifact", ["model", "target", "precision"], registry=reg)
        info.labels(model.name, model.manifest.target, model.manifest.precision).set(1)

    def request(self, endpoint: str, status: int, seconds: float) -> None:
        if endpoint == "infer":
            self.answered += 1
            self.failed += status >= 400
        self.requests.labels(endpoint, str(status)).inc()
        self.latency.labels(endpoint).observe(seconds)
        if status >= 400:
            self.failures.labels(endpoint, REASONS.get(status, str(status))).inc()

    # BatchObserver
    def queued(self, depth: int) -> None:
        self.depth.set(depth)

    def batch(self, requests: int, rows: int, queue_seconds: list[float], run_seconds: float) -> None:
        self.batch_size.observe(requests)
        self.batch_rows.observe(rows)
        self.infer_time.observe(run_seconds)
        for seconds in queue_seconds:
            self.queue_time.observe(seconds)

    def render(self) -> tuple[bytes, str]:
        """The text exposition and its content type."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST
