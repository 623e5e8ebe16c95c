"""Real processes for end-to-end tests: a gate on the test's PostgreSQL, `docgate origin`, clients."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from conftest import free_port
from processes import CLEAN_ENV, REPO, GateProcess, docgate

ADMIN = "cluster-admin-key-0123456789abcdef"


class Origin:
    def __init__(self, tmp: Path, *options: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = (tmp / f"origin-{self.port}.log").open("w")
        self.proc = subprocess.Popen(
            docgate("origin", "--port", str(self.port), *options),
            cwd=REPO,
            env=CLEAN_ENV,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
        )
        assert self.proc.stdout is not None
        assert json.loads(self.proc.stdout.readline())["origin"] == self.url

    def stats(self) -> dict[str, Any]:
        return httpx.get(self.url + "/_stats", timeout=10).json()  # type: ignore[no-any-return]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        assert self.proc.stdout is not None
        self.proc.stdout.close()
        self.log.close()


class Cluster:
    """A gate process on the test database, with helpers to drive it as the admin."""

    def __init__(self, tmp: Path, dsn: str, **settings: str) -> None:
        self.tmp = tmp
        self.dsn = dsn
        self.store = tmp / "store"
        port = free_port()
        env = {
            "DATABASE_URL": dsn,
            "API_PORT": str(port),
            "ADMIN_API_KEY": ADMIN,
            "STORAGE_URL": str(self.store),
            "LEASE_SECONDS": "10",
            "RETRY_BACKOFF_SECONDS": "0.2",
            "RETRY_BACKOFF_MAX_SECONDS": "1",
            "DB_POOL_MAX": "20",
        } | settings
        self.env, self.port = env, port
        self.gate = GateProcess(docgate("server"), env, port, tmp)
        self.gate.wait_healthy()
        self.url = self.gate.url
        self.admin = {"X-API-Key": ADMIN}
        self.clients: list[subprocess.Popen[str]] = []
        self.logs: list[Any] = []

    def post(self, path: str, body: Any = None) -> Any:
        r = httpx.post(self.url + path, headers=self.admin, json=body, timeout=30)
        assert r.status_code < 300, r.text
        return r.json()

    def get(self, path: str) -> Any:
        r = httpx.get(self.url + path, headers=self.admin, timeout=30)
        assert r.status_code == 200, r.text
        return r.json()

    def register(self, name: str, host: str | None = None) -> str:
        body = {"client_name": name} | ({"client_host": host} if host else {})
        return str(self.post("/api/v1/clients/register", body)["api_key"])

    def job(self, origin: Origin, start_id: int, count: int, chunk_size: int = 100, ext: str = ".bin") -> str:
        body = {
            "source": "id_range",
            "chunk_size": chunk_size,
            "params": {
                "url_template": origin.url + "/doc/{id}" + ext,
                "start_id": start_id,
                "count": count,
                "ext": ext,
            },
        }
        return str(self.post("/api/v1/jobs", body)["job_id"])

    def client(self, name: str, *flags: str, key: str | None = None) -> subprocess.Popen[str]:
        key = key or self.register(name)
        log = (self.tmp / f"client-{name}-{len(self.clients)}.log").open("w")
        self.logs.append(log)
        proc = subprocess.Popen(
            docgate(
                "client",
                "--api-url",
                self.url,
                "--api-key",
                key,
                "--client-name",
                name,
                "--output-dir",
                str(self.store),
                "--allow-network",
                "127.0.0.0/8",
                "--progress",
                "log",
                "--heartbeat-interval",
                "1",
                "--poll-interval",
                "1",
                *flags,
            ),
            cwd=REPO,
            env=CLEAN_ENV,
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.clients.append(proc)
        return proc

    def wait_clients(self, timeout: float = 180) -> list[int]:
        deadline = time.monotonic() + timeout
        codes = []
        for proc in self.clients:
            codes.append(proc.wait(max(1.0, deadline - time.monotonic())))
        return codes

    def sql(self, query: str, *args: Any) -> list[asyncpg.Record]:
        from conftest import run_aside

        async def fetch() -> list[asyncpg.Record]:
            conn = await asyncpg.connect(self.dsn)
            try:
                return await conn.fetch(query, *args)
            finally:
                await conn.close()

        return run_aside(fetch())  # type: ignore[no-any-return]

    def stop(self) -> None:
        for proc in self.clients:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        for log in self.logs:
            log.close()
        self.gate.stop()

    def restart_gate(self, sig: int = signal.SIGKILL) -> None:
        """Stop the gate (killed by default) and start a new one on the same port and database."""
        self.gate.stop(sig)
        self.gate = GateProcess(docgate("server"), self.env, self.port, self.tmp)
        self.gate.wait_healthy()

    def log_of(self, index: int) -> str:
        logs = sorted(self.tmp.glob(f"client-*-{index}.log"))
        return logs[0].read_text() if logs else ""
