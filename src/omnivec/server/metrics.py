"""Prometheus metrics of one server instance (own registry: several apps can live in one process)."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class Metrics:
    """Requests, errors by code, batch sizes, queue depth, tokens (rate() gives tokens/s), latency."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("omnivec_requests", "HTTP embedding requests by dialect and status",
                                ["dialect", "status"], registry=r)
        self.errors = Counter("omnivec_errors", "Error responses by HTTP status and error code",
                              ["status", "code"], registry=r)
        self.latency = Histogram("omnivec_request_latency_seconds", "Embedding request latency",
                                 ["dialect"], buckets=_LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("omnivec_batch_size", "Rows per forward pass",
                                    buckets=_BATCH_BUCKETS, registry=r)
        self.queue_depth = Gauge("omnivec_queue_depth", "Prepared items waiting for the forward worker",
                                 registry=r)
        self.tokens = Counter("omnivec_tokens", "Tokens processed by the model (image tokens included)",
                              registry=r)
        self.items = Counter("omnivec_items", "Items embedded (a PDF page is one item)", registry=r)
        self.dropped = Counter("omnivec_dropped_items", "Queued items dropped because the client left",
                               registry=r)
        self.rejected = Counter("omnivec_rejected_requests", "Requests refused by back-pressure",
                                registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
