"""Prometheus metrics of one service (its own registry, so several services can live in one
process, e.g. in tests), served as text by GET /metrics."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class Metrics:
    """requests by route and status, latency, batch sizes, queue depth, model / index time,
    accepted / answered jobs (every accepted job is answered: ok, error or timeout), reloads."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.requests = Counter("crbr_http_requests", "HTTP requests by route and status", ["route", "status"],
                                registry=r)
        self.latency = Histogram("crbr_http_request_seconds", "HTTP request latency (first byte in to response "
                                 "start out) by route", ["route"], buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("crbr_batch_size", "requests per batched model call", buckets=BATCH_BUCKETS,
                                    registry=r)
        self.queue_depth = Gauge("crbr_queue_depth", "requests waiting for the model", registry=r)
        self.queue_wait = Histogram("crbr_queue_wait_seconds", "time from acceptance to the start of its model call",
                                    buckets=LATENCY_BUCKETS, registry=r)
        self.model_seconds = Histogram("crbr_model_seconds", "model time per batched call", buckets=LATENCY_BUCKETS,
                                       registry=r)
        self.index_seconds = Histogram("crbr_index_seconds", "index search and merge time per batched call",
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.accepted = Counter("crbr_jobs_accepted", "user queries accepted into the queue", registry=r)
        self.answered = Counter("crbr_jobs_answered", "accepted user queries answered, by outcome", ["outcome"],
                                registry=r)
        self.rejected = Counter("crbr_jobs_rejected", "user queries refused before the queue, by reason", ["reason"],
                                registry=r)
        self.unknown_items = Counter("crbr_unknown_history_items", "history items dropped as unknown", registry=r)
        self.reloads = Counter("crbr_reloads", "model reloads by result", ["result"], registry=r)
        self.model_version = Gauge("crbr_model_version", "load count of the served model", registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def value(self, name: str, **labels: str) -> float:
        """The current value of a sample (tests and benchmarks), 0 when absent."""
        v = self.registry.get_sample_value(name, labels or None)
        return 0.0 if v is None else float(v)
