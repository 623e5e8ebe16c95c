"""Apply database/migrations/NNNN_name.sql in order, each once, under an advisory lock."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from importlib import resources

import asyncpg

log = logging.getLogger(__name__)

# Several gates may start at once: the lock makes them apply migrations one
# after another, so the second finds the work done.
MIGRATION_LOCK = 0x646F6367617465  # "docgate"


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def load_migrations() -> list[Migration]:
    folder = resources.files("database") / "migrations"
    found = []
    for entry in folder.iterdir():
        match = re.fullmatch(r"(\d{4})_(\w+)\.sql", entry.name)
        if match:
            found.append(Migration(int(match[1]), entry.name[:-4], entry.read_text("utf-8")))
    return sorted(found, key=lambda m: m.version)


async def applied_versions(conn: asyncpg.Connection) -> set[int]:
    exists = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
    if not exists:
        return set()
    return {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}


async def migrate(conn: asyncpg.Connection) -> list[str]:
    """Apply what is missing; return the names applied (empty when up to date)."""
    applied: list[str] = []
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK)
    try:
        done = await applied_versions(conn)
        for migration in load_migrations():
            if migration.version in done:
                continue
            async with conn.transaction():
                # Each file records itself in schema_migrations, so `psql -f`
                # and this runner agree on what has been applied.
                await conn.execute(migration.sql)
            log.info("applied migration %s", migration.name)
            applied.append(migration.name)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK)
    return applied


async def pending(conn: asyncpg.Connection) -> list[str]:
    """The migrations this database still lacks."""
    done = await applied_versions(conn)
    return [m.name for m in load_migrations() if m.version not in done]


async def migrate_dsn(dsn: str) -> list[str]:
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        return await migrate(conn)
    finally:
        await conn.close()
