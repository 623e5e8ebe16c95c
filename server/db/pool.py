"""Connection pool and the wrapping of driver errors at the boundary."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg

from server.errors import DatabaseUnavailable

Pool = asyncpg.Pool
Connection = asyncpg.Connection

# Errors that mean "the database is not there right now", not "your input is bad".
UNAVAILABLE = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    asyncpg.InterfaceError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
)


async def _init_connection(conn: Connection) -> None:
    for kind in ("json", "jsonb"):
        await conn.set_type_codec(kind, encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def create_pool(dsn: str, min_size: int, max_size: int) -> Pool:
    try:
        pool = await asyncpg.create_pool(
            dsn, min_size=min_size, max_size=max_size, init=_init_connection,
            command_timeout=60, timeout=10,
        )
    except UNAVAILABLE as exc:
        raise DatabaseUnavailable(f"cannot connect to PostgreSQL: {exc}") from exc
    assert pool is not None
    return pool


@asynccontextmanager
async def connection(pool: Pool) -> AsyncIterator[Connection]:
    """A pooled connection; connection-level failures become DatabaseUnavailable."""
    try:
        async with pool.acquire(timeout=10) as conn:
            yield conn
    except UNAVAILABLE as exc:
        raise DatabaseUnavailable() from exc


@asynccontextmanager
async def transaction(pool: Pool) -> AsyncIterator[Connection]:
    async with connection(pool) as conn, conn.transaction():
        yield conn


def row(record: Any) -> dict[str, Any]:
    return dict(record)
