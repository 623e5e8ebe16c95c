"""Connection pool and the wrapping of driver errors at the boundary."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import cast

import asyncpg
from asyncpg import Connection, Pool

from server.errors import DatabaseUnavailable

__all__ = ["Connection", "Pool", "connection", "create_pool", "transaction"]

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
    asyncpg.exceptions.InternalClientError,
)


async def _init_connection(conn: Connection) -> None:
    for kind in ("json", "jsonb"):
        await conn.set_type_codec(kind, encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def _keep_session(conn: Connection) -> None:
    """Reset nothing on release: the gate sets no session state on pooled connections (LISTEN
    has its own connection), so asyncpg's default RESET ALL/UNLISTEN would be a wasted round
    trip per request. An open transaction is still rolled back by asyncpg before this runs."""


async def create_pool(dsn: str, min_size: int, max_size: int) -> Pool:
    try:
        pool = await asyncpg.create_pool(
            dsn,
            min_size=min_size,
            max_size=max_size,
            init=_init_connection,
            reset=_keep_session,
            command_timeout=60,
            timeout=10,
        )
    except UNAVAILABLE as exc:
        raise DatabaseUnavailable(f"cannot connect to PostgreSQL: {exc}") from exc
    assert pool is not None
    return pool


@asynccontextmanager
async def connection(pool: Pool) -> AsyncIterator[Connection]:
    """A pooled connection; failures to reach the database become DatabaseUnavailable."""
    try:
        conn = await pool.acquire(timeout=10)
    except (*UNAVAILABLE, asyncpg.PostgresError) as exc:
        # Any refusal while connecting (shutting down, not accepting
        # connections, too many clients) means "not available", not bad input.
        raise DatabaseUnavailable() from exc
    try:
        # The pool hands out a proxy that forwards every Connection method.
        yield cast(Connection, conn)
    except UNAVAILABLE as exc:
        raise DatabaseUnavailable() from exc
    finally:
        await pool.release(conn, timeout=10)


@asynccontextmanager
async def transaction(pool: Pool) -> AsyncIterator[Connection]:
    async with connection(pool) as conn, conn.transaction():
        yield conn
