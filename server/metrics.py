"""Prometheus metrics of one gate process (its own registry, so tests can make many apps)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from protocol import v1
from protocol.hosts import HostInfo, HostReport
from server.db.stats import Snapshot
from server.errors import LeaseLost


class Metrics:
    """`host_labels` (METRICS_HOSTS): how many origin hosts get a label of their own; the rest
    are counted as host="other", so a fleet fetching from a million hosts keeps /metrics small."""

    def __init__(self, host_labels: int = 20) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.host_labels = host_labels
        self._labelled: set[str] = set()
        self.host_answers = Counter(
            "docgate_host_answers_total",
            "Origin answers clients reported, by host and outcome (ok, throttled, errors, blocked).",
            ["host", "outcome"],
            registry=r,
        )
        self.host_rate = Gauge(
            "docgate_host_rate",
            "A host's fleet budget after back-off, requests per second.",
            ["host"],
            registry=r,
        )
        self.host_paused = Gauge("docgate_host_paused", "1 when a host is paused.", ["host"], registry=r)
        self.jobs_paused = Gauge(
            "docgate_jobs_paused", "Jobs paused, by an operator or by themselves.", registry=r
        )
        self.tasks = Gauge("docgate_tasks", "Tasks by status.", ["status"], registry=r)
        self.leases = Counter("docgate_leases_total", "Tasks leased to clients.", registry=r)
        self.completions = Counter("docgate_completions_total", "Tasks completed.", registry=r)
        self.failures = Counter(
            "docgate_failures_total", "Failed attempts reported by clients.", ["final"], registry=r
        )
        self.expirations = Counter("docgate_lease_expirations_total", "Leases that expired.", registry=r)
        self.stale_refusals = Counter(
            "docgate_stale_token_refusals_total", "Writes refused for a stale lease.", registry=r
        )
        self.lease_latency = Histogram(
            "docgate_lease_latency_seconds",
            "Time to run one lease statement.",
            registry=r,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
        )
        self.grant_latency = Histogram(
            "docgate_grant_latency_seconds",
            "Time to answer one host grant request (waiting for a slice renewal included).",
            registry=r,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0),
        )
        self.requests = Counter(
            "docgate_http_requests_total",
            "HTTP requests.",
            ["route", "method", "status"],
            registry=r,
        )
        self.request_latency = Histogram(
            "docgate_http_request_duration_seconds",
            "HTTP request latency (long-poll excluded).",
            ["route", "method"],
            registry=r,
        )

        self.loop_lag = Histogram(
            "docgate_event_loop_lag_seconds",
            "How late the gate's event loop woke a 50 ms timer.",
            registry=r,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
        )

        self.oldest_pending = Gauge(
            "docgate_oldest_pending_task_age_seconds", "Age of the oldest pending task.", registry=r
        )
        self.documents = Gauge("docgate_documents", "Documents recorded (whole in storage).", registry=r)
        self.document_bytes = Gauge("docgate_document_bytes", "Total size of recorded documents.", registry=r)
        self.reported = Counter(
            "docgate_documents_reported_total",
            "Documents reported by clients to this gate.",
            ["outcome"],
            registry=r,
        )
        self.reported_bytes = Counter(
            "docgate_documents_reported_bytes_total", "Bytes of documents reported stored.", registry=r
        )
        self.clients = Gauge(
            "docgate_clients", "Registered clients by heartbeat state.", ["state"], registry=r
        )

    def host(self, host: str) -> str:
        """The label a host is counted under: its own for the first METRICS_HOSTS, else other."""
        if host in self._labelled:
            return host
        if len(self._labelled) < self.host_labels:
            self._labelled.add(host)
            return host
        return "other"

    def count_host_reports(self, reports: list[HostReport]) -> None:
        for report in reports:
            label = self.host(report.host)
            for outcome in ("ok", "throttled", "errors", "blocked"):
                if n := getattr(report, outcome):
                    self.host_answers.labels(label, outcome).inc(n)

    def render(self, snapshot: Snapshot, hosts: Sequence[HostInfo] = (), jobs_paused: int = 0) -> bytes:
        self.jobs_paused.set(jobs_paused)
        for info in hosts:
            if self.host(info.host) != "other":
                self.host_rate.labels(info.host).set(
                    info.effective_rate if info.effective_rate is not None else -1
                )
                self.host_paused.labels(info.host).set(1 if info.paused else 0)
        for status in v1.TaskStatus:
            self.tasks.labels(status.value).set(snapshot.counts.get(status, 0))
        self.oldest_pending.set(snapshot.oldest_pending_seconds)
        self.documents.set(snapshot.documents)
        self.document_bytes.set(snapshot.document_bytes)
        for state in ("active", "stale"):
            self.clients.labels(state).set(snapshot.clients.get(state, 0))
        return generate_latest(self.registry)

    @contextmanager
    def counting_refusals(self) -> Iterator[None]:
        """Count writes refused for a stale lease token as they pass by."""
        try:
            yield
        except LeaseLost:
            self.stale_refusals.inc()
            raise

    def count_reports(self, documents: list[v1.DocumentReport]) -> None:
        for doc in documents:
            self.reported.labels(doc.status.value).inc()
            if doc.status is v1.DocumentStatus.STORED and doc.size:
                self.reported_bytes.inc(doc.size)
