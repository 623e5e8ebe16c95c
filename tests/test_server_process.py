"""The gate as a real process: `make run`, restarts with embedded PostgreSQL, bad settings."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from conftest import free_port
from processes import CLEAN_ENV, REPO, GateProcess, docgate, postgres_running

pytestmark = pytest.mark.slow
ADMIN = {"X-API-Key": "process-test-admin-key-0123456789"}


def test_make_run_serves_health_and_prints_an_admin_key(tmp_path: Path) -> None:
    port = free_port()
    gate = GateProcess(
        ["make", "--no-print-directory", "run"],
        {"DATA_DIR": str(tmp_path / "data"), "API_PORT": str(port)},
        port,
        tmp_path,
    )
    try:
        gate.wait_healthy()
        assert postgres_running(tmp_path / "data" / "pg")
        assert gate.request("GET", "/health").json()["database"] == "ok"
        out = gate.output()
        key = next(w for w in out.split() if w.startswith("dg_"))
        assert "curl" in out
        r = gate.request("GET", "/api/v1/tasks/status", headers={"X-API-Key": key})
        assert r.status_code == 200
    finally:
        gate.stop()
    assert not postgres_running(tmp_path / "data" / "pg")


def test_restart_keeps_tasks_and_expired_leases_come_back(tmp_path: Path) -> None:
    port = free_port()
    env = {
        "DATA_DIR": str(tmp_path / "data"),
        "API_PORT": str(port),
        "LEASE_SECONDS": "2",
        "RETRY_BACKOFF_SECONDS": "0",
        "ADMIN_API_KEY": ADMIN["X-API-Key"],
    }
    gate = GateProcess(docgate("server"), env, port, tmp_path)
    try:
        gate.wait_healthy()
        client = {
            "X-API-Key": gate.request(
                "POST", "/api/v1/clients/register", headers=ADMIN, json={"client_name": "vanishing"}
            ).json()["api_key"]
        }
        ids = [
            gate.request(
                "POST", "/api/v1/tasks/create", headers=ADMIN, json={"search_params": {"n": i}}
            ).json()["task_id"]
            for i in range(3)
        ]
        held = gate.request("POST", "/api/v1/tasks/request", headers=client).json()["task_id"]
        assert held == ids[0]
    finally:
        assert gate.stop() == 0
    assert not postgres_running(tmp_path / "data" / "pg")

    gate = GateProcess(docgate("server"), env, port, tmp_path)
    try:
        gate.wait_healthy()
        listed = gate.request("GET", "/api/v1/tasks?limit=10", headers=ADMIN).json()["tasks"]
        assert sorted(t["task_id"] for t in listed) == sorted(ids)
        # The client never comes back; once its lease runs out the task is leasable again.
        deadline = time.monotonic() + 30
        seen: set[str] = set()
        while held not in seen and time.monotonic() < deadline:
            r = gate.request(
                "POST", "/api/v1/tasks/request", headers=client, params={"wait": 5, "max_tasks": 10}
            )
            if r.status_code == 200:
                seen |= {t["task_id"] for t in r.json()["tasks"]}
        assert held in seen
        task = gate.request("GET", f"/api/v1/tasks/{held}", headers=ADMIN).json()
        assert task["attempts"] == 2 and task["status"] == "assigned"
    finally:
        assert gate.stop() == 0


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"LEASE_SECONDS": "soon"}, "LEASE_SECONDS"),
        ({"API_PORT": "99999"}, "API_PORT"),
        ({"LOG_FORMAT": "xml"}, "LOG_FORMAT"),
        ({"DB_POOL_MIN": "50", "DB_POOL_MAX": "5"}, "DB_POOL_MIN"),
        ({"ADMIN_API_KEY": "short"}, "ADMIN_API_KEY"),
        ({"DATABASE_URL": "postgresql://u:secretpw@127.0.0.1:1/x"}, "DATABASE_URL"),
        ({"STORAGE_URL": "b2://bucket/raw"}, "B2_ENDPOINT, B2_APPLICATION_KEY_ID, B2_APPLICATION_KEY"),
        ({"STORAGE_URL": "ftp://host/raw"}, "STORAGE_URL"),
        ({"STORAGE_URL": "s3://b", "STORAGE_CONDITIONAL_WRITES": "maybe"}, "STORAGE_CONDITIONAL_WRITES"),
    ],
)
def test_a_bad_setting_stops_start_up_with_one_line(tmp_path: Path, env: dict[str, str], named: str) -> None:
    result = subprocess.run(
        docgate("server"),
        env=CLEAN_ENV | {"DATA_DIR": str(tmp_path)} | env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert named in lines[0] and "Traceback" not in result.stderr
    assert "secretpw" not in result.stderr + result.stdout


def test_a_database_that_does_not_exist_is_one_line(tmp_path: Path, db_dsn: str) -> None:
    missing = urlsplit(db_dsn)._replace(path="/no_such_database").geturl()
    result = subprocess.run(
        docgate("server"),
        env=CLEAN_ENV | {"DATA_DIR": str(tmp_path), "DATABASE_URL": missing},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert "DATABASE_URL" in lines[0] and "no_such_database" in lines[0]
