"""Source profiles stored on the gate by name (protocol.sources)."""

from __future__ import annotations

from typing import Any

from protocol import sources as wire
from server.db.pool import Connection, Pool, connection
from server.errors import SourceNotFound

PUT = """
INSERT INTO sources (name, profile) VALUES ($1, $2)
ON CONFLICT (name) DO UPDATE SET profile = excluded.profile, updated_at = now()
RETURNING name, profile, updated_at, (xmax = 0) AS created
"""
GET = "SELECT name, profile, updated_at FROM sources WHERE name = $1"
LIST = "SELECT name, profile, updated_at FROM sources ORDER BY name"
PROFILE = "SELECT profile FROM sources WHERE name = $1"


async def profile_named(conn: Connection, name: str) -> dict[str, Any] | None:
    """The stored profile of that name, as stored (None: there is none)."""
    profile: dict[str, Any] | None = await conn.fetchval(PROFILE, name)
    return profile


async def put_source(pool: Pool, name: str, profile: wire.SourceProfile) -> tuple[wire.StoredSource, bool]:
    async with connection(pool) as conn:
        row = await conn.fetchrow(PUT, name, profile.model_dump(mode="json", exclude_none=True))
    assert row is not None
    return wire.StoredSource(name=row["name"], profile=row["profile"], updated_at=row["updated_at"]), row[
        "created"
    ]


async def get_source(pool: Pool, name: str) -> wire.StoredSource:
    async with connection(pool) as conn:
        row = await conn.fetchrow(GET, name)
    if row is None:
        raise SourceNotFound(f"no source profile named {name!r}; `docgate sources list` shows them")
    return wire.StoredSource(name=row["name"], profile=row["profile"], updated_at=row["updated_at"])


async def list_sources(pool: Pool) -> wire.SourceList:
    async with connection(pool) as conn:
        rows = await conn.fetch(LIST)
    return wire.SourceList(
        sources=[
            wire.StoredSource(name=r["name"], profile=r["profile"], updated_at=r["updated_at"]) for r in rows
        ]
    )
