"""Prometheus metrics of one server, in a registry of its own (never the process-global one, so
two servers in one process, or a test, count apart).

``kiln_requests_total{endpoint,status}``, ``kiln_request_failures_total{endpoint,reason}``,
``kiln_request_duration_seconds{endpoint}`` (receipt to response), ``kiln_queue_duration_seconds``
(admission to the start of its batch), ``kiln_inference_duration_seconds`` (one ``infer`` of a
batch), ``kiln_batch_size`` (requests per ``infer``), ``kiln_batch_rows`` (rows per ``infer``),
``kiln_queue_depth`` and ``kiln_model_info{model,target,precision}``.

A causal LM's server (:class:`GenerationMetrics`) counts the same requests, and per model:
``kiln_time_to_first_token_seconds`` (receipt to the first token), ``kiln_inter_token_seconds``
(between a stream's tokens), ``kiln_prompt_tokens_total``, ``kiln_generation_tokens_total``,
``kiln_generations_total{model,reason}`` (stop, length, cancelled, error), ``kiln_queue_depth``
(requests waiting) and ``kiln_active_sequences`` (sequences decoding).
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
    429: "queue_full",
    499: "client_gone",
    500: "runtime",
    503: "unavailable",
}


class HttpMetrics:
    """Every response by endpoint and status, and how long it took."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram

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

    def request(self, endpoint: str, status: int, seconds: float) -> None:
        self.requests.labels(endpoint, str(status)).inc()
        self.latency.labels(endpoint).observe(seconds)
        if status >= 400:
            self.failures.labels(endpoint, REASONS.get(status, str(status))).inc()

    def render(self) -> tuple[bytes, str]:
        """The text exposition and its content type."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class ServerMetrics(HttpMetrics):
    def __init__(self, model: ServedModel) -> None:
        from prometheus_client import Gauge, Histogram

        super().__init__()
        reg = self.registry
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
        super().request(endpoint, status, seconds)

    # BatchObserver
    def queued(self, depth: int) -> None:
        self.depth.set(depth)

    def batch(self, requests: int, rows: int, queue_seconds: list[float], run_seconds: float) -> None:
        self.batch_size.observe(requests)
        self.batch_rows.observe(rows)
        self.infer_time.observe(run_seconds)
        for seconds in queue_seconds:
            self.queue_time.observe(seconds)


# Seconds between tokens and to the first one: a tiny LM's step is under a millisecond.
TOKEN_BUCKETS = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)


class GenerationMetrics(HttpMetrics):
    """A causal LM server's metrics (see the module); each engine reports through :meth:`observer`."""

    def __init__(self, models: list[tuple[str, str, str]]) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        super().__init__()
        reg = self.registry
        self.ttft = Histogram(
            "kiln_time_to_first_token_seconds",
            "Receipt of a generation request to its first token",
            ["model"],
            buckets=TOKEN_BUCKETS,
            registry=reg,
        )
        self.itl = Histogram(
            "kiln_inter_token_seconds",
            "Time between a request's tokens",
            ["model"],
            buckets=TOKEN_BUCKETS,
            registry=reg,
        )
        self.prompt_tokens = Counter("kiln_prompt_tokens", "Prompt tokens taken", ["model"], registry=reg)
        self.generation_tokens = Counter("kiln_generation_tokens", "Tokens generated", ["model"], registry=reg)
        self.generations = Counter(
            "kiln_generations",
            "Generations ended, by why (stop, length, cancelled, error)",
            ["model", "reason"],
            registry=reg,
        )
        self.depth = Gauge("kiln_queue_depth", "Requests waiting for a sequence slot", ["model"], registry=reg)
        self.active_sequences = Gauge("kiln_active_sequences", "Sequences decoding", ["model"], registry=reg)
        self.answered = self.failed = 0  # generation requests, for the closing line
        info = Gauge("kiln_model_info", "The served artifacts", ["model", "target", "precision"], registry=reg)
        for name, target, precision in models:
            info.labels(name, target, precision).set(1)

    def request(self, endpoint: str, status: int, seconds: float) -> None:
        if endpoint in ("completions", "chat_completions"):
            self.answered += 1
            self.failed += status >= 400
        super().request(endpoint, status, seconds)

    def observer(self, model: str) -> EngineObserver:
        return EngineObserver(self, model)


class EngineObserver:
    """One model's engine reporting into :class:`GenerationMetrics`."""

    def __init__(self, metrics: GenerationMetrics, model: str) -> None:
        self.metrics, self.model = metrics, model

    def queued(self, depth: int) -> None:
        self.metrics.depth.labels(self.model).set(depth)

    def active(self, count: int) -> None:
        self.metrics.active_sequences.labels(self.model).set(count)

    def finished(self, reason: str, prompt_tokens: int, tokens: int) -> None:
        m = self.metrics
        m.generations.labels(self.model, reason).inc()
        m.prompt_tokens.labels(self.model).inc(prompt_tokens)
        m.generation_tokens.labels(self.model).inc(tokens)
