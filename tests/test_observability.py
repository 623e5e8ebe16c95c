"""Acceptance 1 and 4: /metrics agrees with the database; JSON logs carry request ids and no secrets."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from cluster import ADMIN, Cluster, Origin
from conftest import free_port, make_bucket
from processes import CLEAN_ENV, REPO, GateProcess, docgate

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def scrape(url: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    text = httpx.get(url + "/metrics", timeout=10).text
    found: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return found


def test_metrics_agree_with_the_database(tmp_path: Path, db_dsn: str) -> None:
    cluster = Cluster(tmp_path, db_dsn)
    origin = Origin(tmp_path, "--size", "1000", "--latency", "0.02", "--missing", "5,6")
    try:
        cluster.job(origin, 1, 400, chunk_size=20)
        cluster.client("m", "--concurrency", "4", "--exit-when-idle")
        during = []
        while cluster.clients[0].poll() is None:
            during.append(scrape(cluster.url))
            time.sleep(0.3)
        assert cluster.wait_clients() == [0]
        time.sleep(1.5)  # one housekeeping round folds the last deltas (readers add them anyway)
        after = scrape(cluster.url)
    finally:
        origin.stop()
        cluster.stop()
    assert len(during) >= 2
    for metrics in during:  # mid-run: every task is in exactly one status
        assert sum(metrics["docgate_tasks"].values()) == 20
    db = {r["status"]: r["count"] for r in cluster.sql("SELECT status, count(*) FROM tasks GROUP BY status")}
    for status in ("pending", "assigned", "completed", "failed", "cancelled"):
        assert after["docgate_tasks"][(("status", status),)] == db.get(status, 0)
    (docs,) = cluster.sql("SELECT count(*), sum(size) FROM documents")
    assert after["docgate_documents"][()] == docs[0] == 398
    assert after["docgate_document_bytes"][()] == docs[1]
    assert after["docgate_leases_total"][()] >= 20
    assert after["docgate_completions_total"][()] == 20
    assert after["docgate_documents_reported_total"][(("outcome", "failed"),)] == 2
    assert after["docgate_oldest_pending_task_age_seconds"][()] == 0
    assert after["docgate_clients"][(("state", "active"),)] == 1
    routes = {dict(k)["route"] for k in after["docgate_http_requests_total"]}
    assert {"/api/v1/tasks/request", "/api/v1/tasks/complete", "/metrics"} <= routes
    timed = {dict(k)["route"] for k in after["docgate_http_request_duration_seconds_count"]}
    assert "/api/v1/tasks/request" not in timed  # long-polls are not latency
    assert all(
        "task_id" not in k and "url" not in k for name in after for labels in after[name] for k, _ in labels
    )


def test_json_logs_carry_request_ids_and_no_secrets(tmp_path: Path, db_dsn: str, s3_endpoint: str) -> None:
    secret = "S3CRET-aws-secret-do-not-log-0123456789"
    bucket = make_bucket(s3_endpoint)
    port = free_port()
    gate_log = tmp_path / "gate.jsonl"
    env = CLEAN_ENV | {
        "DATABASE_URL": db_dsn,
        "API_PORT": str(port),
        "ADMIN_API_KEY": ADMIN,
        "LOG_FORMAT": "json",
        "LOG_LEVEL": "DEBUG",
        "STORAGE_URL": f"s3://{bucket}/raw",
        "AWS_ENDPOINT_URL": s3_endpoint,
        "AWS_ACCESS_KEY_ID": "test-key-id",
        "AWS_SECRET_ACCESS_KEY": secret,
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    with gate_log.open("w") as errors:
        gate = subprocess.Popen(
            docgate("server"), env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=errors
        )
        origin = Origin(tmp_path, "--size", "500")
        try:
            url = f"http://127.0.0.1:{port}"
            GateProcess.wait_url(url)
            r = httpx.get(url + "/health", headers={"X-Request-ID": "trace-me-42"})
            assert r.headers["x-request-id"] == "trace-me-42"
            assert len(httpx.get(url + "/health").headers["x-request-id"]) == 32
            key = httpx.post(
                url + "/api/v1/clients/register", headers={"X-API-Key": ADMIN}, json={"client_name": "logged"}
            ).json()["api_key"]
            httpx.post(
                url + "/api/v1/jobs",
                headers={"X-API-Key": ADMIN},
                json={
                    "source": "id_range",
                    "chunk_size": 10,
                    "params": {"url_template": origin.url + "/doc/{id}.bin", "start_id": 1, "count": 30},
                },
            )
            client = subprocess.run(
                docgate(
                    "client",
                    "--api-url",
                    url,
                    "--api-key",
                    key,
                    "--storage",
                    "gate",
                    "--exit-when-idle",
                    "--allow-network",
                    "127.0.0.0/8",
                    "--log-format",
                    "json",
                    "--log-level",
                    "DEBUG",
                    "--progress",
                    "log",
                ),
                env=CLEAN_ENV,
                cwd=REPO,
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert client.returncode == 0, client.stderr[-2000:]
            wrong = {"X-API-Key": "dg_wrong-key-should-not-be-logged"}
            httpx.get(url + "/api/v1/tasks/status", headers=wrong)
        finally:
            origin.stop()
            gate.terminate()
            gate.wait(30)
    lines = [line for line in gate_log.read_text().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    requests = [r for r in records if r["logger"] == "docgate.http"]
    assert any(r.get("request_id") == "trace-me-42" and r["path"] == "/health" for r in requests)
    assert all(r.get("request_id") for r in requests) and len(requests) > 10
    client_lines = [line for line in client.stderr.splitlines() if line.startswith("{")]
    assert client_lines and all(json.loads(line) for line in client_lines)
    everything = gate_log.read_text() + client.stdout + client.stderr
    for leaked in (ADMIN, key, secret, "dg_wrong-key-should-not-be-logged"):
        assert leaked not in everything
