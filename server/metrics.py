"""Prometheus metrics of one gate process (its own registry, so tests can make many apps)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from protocol import v1


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.tasks = Gauge("docgate_tasks", "Tasks by status.", ["status"], registry=r)
        self.leases = Counter("docgate_leases_total", "Tasks leased to clients.", registry=r)
        self.completions = Counter("docgate_completions_total", "Tasks completed.", registry=r)
        self.failures = Counter(
            "docgate_failures_total", "Failed attempts reported by clients.", ["final"], registry=r
        )
        self.expirations = Counter(
            "docgate_lease_expirations_total", "Leases that expired.", registry=r
        )
        self.stale_refusals = Counter(
            "docgate_stale_token_refusals_total", "Writes refused for a stale lease.", registry=r
        )
        self.lease_latency = Histogram(
            "docgate_lease_latency_seconds", "Time to run one lease statement.", registry=r,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
        )
        self.requests = Counter(
            "docgate_http_requests_total", "HTTP requests.", ["route", "method", "status"],
            registry=r,
        )
        self.request_latency = Histogram(
            "docgate_http_request_duration_seconds", "HTTP request latency (long-poll excluded).",
            ["route", "method"], registry=r,
        )

    def render(self, counts: dict[v1.TaskStatus, int]) -> bytes:
        for status in v1.TaskStatus:
            self.tasks.labels(status.value).set(counts.get(status, 0))
        return generate_latest(self.registry)
