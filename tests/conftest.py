"""Real PostgreSQL for every test: embedded (pgserver) or TEST_DATABASE_URL.

A template database is migrated once per session; each test gets a fresh
copy (CREATE DATABASE … TEMPLATE), so tests never see each other's rows.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import pytest

from server.app import create_app
from server.config import Settings
from server.db.migrate import migrate_dsn

ADMIN_KEY = "admin-key-for-tests-0123456789abcdef"
TEMPLATE = "docgate_template"
REPO = Path(__file__).resolve().parent.parent
_counter = itertools.count()


def dsn_for(base: str, database: str) -> str:
    parts = urlsplit(base)
    return urlunsplit(parts._replace(path="/" + database))


def _system_user() -> None:
    """As root, pgserver runs PostgreSQL as the user `pgserver`, made with useradd when missing:
    the test processes starting at once on a fresh machine raced to make it (one initdb then
    ran as a uid another had just replaced). Made here once, under a lock."""
    import fcntl
    import pwd
    import subprocess

    if os.geteuid() != 0:
        return
    with open("/tmp/docgate-pgserver-user.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            pwd.getpwnam("pgserver")
        except KeyError:
            subprocess.run(["useradd", "-s", "/bin/bash", "pgserver"], check=True, capture_output=True)


@pytest.fixture(scope="session")
def pg_base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """DSN of a maintenance database on a real PostgreSQL server."""
    external = os.environ.get("TEST_DATABASE_URL")
    if external:
        yield external
        return
    _system_user()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pgserver

        server = pgserver.get_server(tmp_path_factory.mktemp("pg"), cleanup_mode="delete")
    yield server.get_uri("postgres")
    server.cleanup()


@pytest.fixture(scope="session")
def template_dsn(pg_base: str) -> str:
    async def build() -> None:
        conn = await asyncpg.connect(pg_base)
        try:
            await conn.execute(f"DROP DATABASE IF EXISTS {TEMPLATE}")
            await conn.execute(f"CREATE DATABASE {TEMPLATE}")
        finally:
            await conn.close()
        await migrate_dsn(dsn_for(pg_base, TEMPLATE))

    run_aside(build())
    return dsn_for(pg_base, TEMPLATE)


def copy_database(pg_base: str, name: str) -> tuple[str, Any]:
    """A fresh migrated database copied from the template: its DSN, and a function that drops it."""

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(pg_base)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    run_aside(admin(f"CREATE DATABASE {name} TEMPLATE {TEMPLATE}"))
    return dsn_for(pg_base, name), lambda: run_aside(admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


@pytest.fixture
def db_dsn(pg_base: str, template_dsn: str) -> Iterator[str]:
    """A fresh, migrated database for this test (made outside the test's event loop)."""
    dsn, drop = copy_database(pg_base, f"test_{os.getpid()}_{next(_counter)}")
    yield dsn
    drop()


def run_aside(coro: Any) -> Any:
    """Run a coroutine to completion on its own loop in a helper thread (safe inside a running loop)."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def gate_settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "admin_api_key": ADMIN_KEY,
        "lease_seconds": 30,
        "retry_backoff_seconds": 0.05,
        "retry_backoff_max_seconds": 0.2,
        "reap_interval_seconds": 0.1,
        "poll_fallback_seconds": 0.5,
        "db_pool_max": 20,
        "max_job_tasks": 1_000_000,
        # The tests' origins are their own: no fleet budget unless a test sets one.
        "host_rate_limit": 0,
        "host_connections": 0,
        "data_dir": "/nonexistent-data-dir-for-tests",
        "_env_file": None,
    }
    values.update(overrides)
    return Settings.load(**values)


class Gate:
    """A running gate app (in-process ASGI, real PostgreSQL) with helpers for tests."""

    def __init__(
        self, http: httpx.AsyncClient, dsn: str, settings: Settings, transport: httpx.ASGITransport
    ) -> None:
        self.http = http
        self.transport = transport
        self.dsn = dsn
        self.settings = settings
        self.admin = {"X-API-Key": ADMIN_KEY}

    async def register(self, name: str = "client-1") -> dict[str, str]:
        r = await self.http.post(
            "/api/v1/clients/register",
            headers=self.admin,
            json={"client_name": name, "client_host": "test-host"},
        )
        assert r.status_code == 201, r.text
        return {"X-API-Key": r.json()["api_key"]}

    async def create(self, **fields: Any) -> dict[str, Any]:
        body = {"search_params": {"q": "x"}, "start_page": 1, "max_documents": 10} | fields
        r = await self.http.post("/api/v1/tasks/create", headers=self.admin, json=body)
        assert r.status_code == 201, r.text
        return r.json()  # type: ignore[no-any-return]

    async def lease(self, headers: dict[str, str], **params: Any) -> httpx.Response:
        return await self.http.post("/api/v1/tasks/request", headers=headers, params=params)

    async def sql(self, query: str, *args: Any) -> list[asyncpg.Record]:
        conn = await asyncpg.connect(self.dsn)
        try:
            return await conn.fetch(query, *args)
        finally:
            await conn.close()


async def start_gate(dsn: str, settings: Settings) -> AsyncIterator[Gate]:
    app = create_app(settings, dsn)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gate", timeout=60) as http:
            yield Gate(http, dsn, settings, transport)


@pytest.fixture
async def gate(db_dsn: str, tmp_path: Path) -> AsyncIterator[Gate]:
    async for g in start_gate(db_dsn, gate_settings(storage_url=str(tmp_path / "gate-store"))):
        yield g


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real HTTP S3 endpoint: moto in server mode, in its own process."""
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "test-key-id")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "test-secret")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    port = free_port()
    log = (tmp_path_factory.mktemp("moto") / "moto.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            httpx.get(url + "/moto-api/", timeout=1)
            break
        except httpx.TransportError:
            time.sleep(0.1)
    yield url
    proc.terminate()
    proc.wait(10)
    log.close()


@pytest.fixture(scope="session")
def b2_url(s3_endpoint: str) -> Iterator[str]:
    """Backblaze B2's S3 dialect in front of moto (tests/b2_dialect.py)."""
    from b2_dialect import b2_endpoint

    with b2_endpoint(s3_endpoint) as (url, _):
        yield url


def make_b2_bucket(endpoint: str) -> str:
    from b2_dialect import b2_bucket

    return b2_bucket(endpoint, f"b2-{next(_counter)}-{os.getpid()}")


def make_bucket(endpoint: str) -> str:
    import boto3

    name = f"bucket-{next(_counter)}-{os.getpid()}"
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=name)
    return name


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
