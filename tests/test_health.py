"""/health follows the database; /docs and the OpenAPI schema are served."""

from __future__ import annotations

from urllib.parse import urlsplit

import asyncpg

from conftest import Gate


async def test_health_is_503_while_the_database_is_unreachable(gate: Gate, pg_base: str) -> None:
    assert (await gate.http.get("/health")).status_code == 200
    name = urlsplit(gate.dsn).path.lstrip("/")
    admin = await asyncpg.connect(pg_base)
    try:
        await admin.execute(f"ALTER DATABASE {name} ALLOW_CONNECTIONS false")
        await admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", name)
        r = await gate.http.get("/health")
        assert r.status_code == 503
        assert r.json()["database"] == "unavailable"
        r = await gate.http.get("/api/v1/tasks/status", headers=gate.admin)
        assert r.status_code == 503 and "database" in r.json()["detail"].lower()
    finally:
        await admin.execute(f"ALTER DATABASE {name} ALLOW_CONNECTIONS true")
        await admin.close()
    assert (await gate.http.get("/health")).status_code == 200


async def test_docs_and_openapi(gate: Gate) -> None:
    assert (await gate.http.get("/docs")).status_code == 200
    schema = (await gate.http.get("/openapi.json")).json()
    for path in [
        "/api/v1/tasks/create",
        "/api/v1/tasks/request",
        "/api/v1/tasks/complete",
        "/api/v1/jobs",
        "/api/v1/clients/register",
        "/health",
        "/metrics",
    ]:
        assert path in schema["paths"], path
