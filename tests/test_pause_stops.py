"""A pause reaches the fleet within about a second. A paused job's tasks out on lease are handed
back at once — what they stored reported, the rest unfetched, their attempts not spent — and
held until the job resumes; a paused host starts nothing, not even the requests already queued
for its connections or its budget's tokens."""

from __future__ import annotations

import time
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from cluster import Cluster, Origin

pytestmark = pytest.mark.timeout(300)
QUIET = 1.5  # what "about a second" is allowed: a grant's refresh (1 s) and the requests in flight


def served(origin: Origin) -> int:
    return int(origin.stats()["documents_served"])


def wait_for(condition, timeout: float = 60) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline
        time.sleep(0.1)


def test_a_paused_jobs_tasks_come_back_unfetched_at_once(tmp_path: Path, db_dsn: str) -> None:
    origin = Origin(tmp_path, "--size", "512", "--latency", "0.05")
    cluster = Cluster(tmp_path, db_dsn)
    try:
        job = cluster.job(origin, 1, 300, chunk_size=300)  # one task of 300 documents
        cluster.client("p0", "--concurrency", "4")
        wait_for(lambda: served(origin) >= 60)
        cluster.post(f"/api/v1/jobs/{job}/pause", {"reason": "operator"})
        paused_at = served(origin)
        time.sleep(QUIET)
        settled = served(origin)
        time.sleep(2)
        assert served(origin) == settled, "documents kept being fetched for a paused job"
        task = cluster.get("/api/v1/tasks?limit=1")["tasks"][0]
        assert task["status"] == "pending" and task["attempts"] == 0, task  # back, attempt not spent
        assert task["last_error_code"] == "job_paused", task
        stored = len(cluster.sql("SELECT 1 FROM documents"))
        assert stored >= paused_at - 4  # what was fetched was reported before the hand-back
        cluster.post(f"/api/v1/jobs/{job}/resume")
        wait_for(lambda: cluster.get(f"/api/v1/jobs/{job}")["counts"]["completed"] == 1, 120)
        assert len(cluster.sql("SELECT 1 FROM documents")) == 300
        stats = origin.stats()
        assert stats["distinct_documents"] == 300 and stats["documents_served"] <= 300 + 8, stats
    finally:
        cluster.stop()
        origin.stop()


def test_a_paused_host_starts_nothing_within_a_second(tmp_path: Path, db_dsn: str) -> None:
    """With a budget (20/s, so requests queue for its tokens) and 16 documents at a time, a host
    paused by the operator sees its last request within about a second; resumed, the job ends
    with every document once."""
    origin = Origin(tmp_path, "--size", "512")
    cluster = Cluster(tmp_path, db_dsn, HOST_RATE_LIMIT="20")
    host = f"127.0.0.1:{origin.port}"
    try:
        job = cluster.job(origin, 1, 160, chunk_size=160)
        cluster.client("h0", "--concurrency", "16")
        wait_for(lambda: served(origin) >= 40)
        r = httpx.put(
            f"{cluster.url}/api/v1/hosts/{quote(host)}", headers=cluster.admin, json={"paused": True}
        )
        assert r.status_code == 204, r.text
        paused_at = time.time()
        time.sleep(QUIET)
        settled = served(origin)
        time.sleep(2)
        assert served(origin) == settled, (
            "a paused host was still fetched from",
            paused_at,
            str(origin.stats()["by_second"]),
        )
        r = httpx.put(
            f"{cluster.url}/api/v1/hosts/{quote(host)}", headers=cluster.admin, json={"paused": False}
        )
        assert r.status_code == 204, r.text
        wait_for(lambda: cluster.get(f"/api/v1/jobs/{job}")["counts"]["completed"] == 1, 120)
        assert origin.stats()["distinct_documents"] == 160
    finally:
        cluster.stop()
        origin.stop()
