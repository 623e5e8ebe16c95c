"""Migrations: in order, once, under a lock; the files also apply with plain psql."""

from __future__ import annotations

import asyncio
import subprocess
import warnings
from pathlib import Path

import asyncpg

from conftest import dsn_for
from server.db.migrate import load_migrations, migrate_dsn

SCHEMA = """
SELECT 'column' AS kind, table_name || '.' || column_name || ' ' || data_type || ' ' ||
       is_nullable || ' ' || coalesce(column_default, '') AS what
FROM information_schema.columns WHERE table_schema = 'public'
UNION ALL SELECT 'index', indexdef FROM pg_indexes WHERE schemaname = 'public'
UNION ALL SELECT 'trigger', tgname || ' ' || tgrelid::regclass::text FROM pg_trigger
          WHERE NOT tgisinternal
UNION ALL SELECT 'constraint', conname || ' ' || pg_get_constraintdef(oid) FROM pg_constraint
          WHERE connamespace = 'public'::regnamespace
UNION ALL SELECT 'migration', version::text || ' ' || name FROM schema_migrations
ORDER BY 1, 2
"""


async def fresh_database(pg_base: str, name: str) -> str:
    conn = await asyncpg.connect(pg_base)
    try:
        await conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await conn.execute(f"CREATE DATABASE {name}")
    finally:
        await conn.close()
    return dsn_for(pg_base, name)


async def schema_of(dsn: str) -> list[tuple[str, str]]:
    conn = await asyncpg.connect(dsn)
    try:
        return [(r["kind"], r["what"]) for r in await conn.fetch(SCHEMA)]
    finally:
        await conn.close()


def test_migrations_are_numbered_without_gaps() -> None:
    versions = [m.version for m in load_migrations()]
    assert versions == list(range(1, len(versions) + 1))


async def test_applying_twice_changes_nothing(pg_base: str) -> None:
    dsn = await fresh_database(pg_base, "mig_twice")
    assert await migrate_dsn(dsn) == [m.name for m in load_migrations()]
    schema = await schema_of(dsn)
    assert await migrate_dsn(dsn) == []
    assert await schema_of(dsn) == schema


async def test_gates_starting_together_apply_each_migration_once(pg_base: str) -> None:
    dsn = await fresh_database(pg_base, "mig_race")
    results = await asyncio.gather(*(migrate_dsn(dsn) for _ in range(6)))
    applied = [name for result in results for name in result]
    assert sorted(applied) == sorted(m.name for m in load_migrations())


async def test_psql_f_gives_the_same_schema(pg_base: str) -> None:
    """The seed applies migrations with `psql -f`; that must match the runner exactly."""
    by_runner = await fresh_database(pg_base, "mig_runner")
    await migrate_dsn(by_runner)
    by_psql = await fresh_database(pg_base, "mig_psql")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from pgserver._commands import POSTGRES_BIN_PATH
    folder = Path(__file__).resolve().parent.parent / "database" / "migrations"
    for migration in load_migrations():
        subprocess.run(
            [
                str(POSTGRES_BIN_PATH / "psql"),
                by_psql,
                "-v",
                "ON_ERROR_STOP=1",
                "-q",
                "-1",
                "-f",
                str(folder / f"{migration.name}.sql"),
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
    assert await schema_of(by_psql) == await schema_of(by_runner)
    assert await migrate_dsn(by_psql) == []


async def test_failures_recorded_before_codes_are_sorted_once_by_their_old_texts(pg_base: str) -> None:
    """0014 gives the failures an older gate recorded (text only) their codes, from the texts the
    clients of that time wrote; what no rule recognises is `other`."""
    dsn = await fresh_database(pg_base, "migrate_failure_codes")
    old = [m for m in load_migrations() if m.version < 14]
    texts = {
        "HTTP 404": "not_found",
        "HTTP 410 Gone": "gone",
        "HTTP 403 Forbidden": "forbidden",
        "HTTP 503": "server_error",
        "HTTP 429": "server_error",
        "HTTP 400 Bad Request": "http_error",
        "HTTP 200: a block page: status 200 with 'captcha'": "blocked",
        "over --max-document-size (1048576)": "too_large",
        "an HTML page where the task expects .pdf": "wrong_type",
        "refused: 10.0.0.1 is a private address": "refused",
        "timed out after 30 s": "timeout",
        "http://elsewhere/1 is not on the task's hosts (h); not fetched": "off_hosts",
        "storage: connection reset": "storage",
        "more than 10 redirects": "too_many_redirects",
        "the body ends before its compressed stream does (cut short)": "bad_encoding",
        "something new": "other",
    }
    conn = await asyncpg.connect(dsn)
    try:
        for migration in old:
            await conn.execute(migration.sql)
        await conn.executemany(
            "INSERT INTO document_failures (doc_id, task_id, error) VALUES ($1, gen_random_uuid(), $2)",
            [(str(n), text) for n, text in enumerate(texts)],
        )
        await migrate_dsn(dsn)
        rows = await conn.fetch("SELECT error, code FROM document_failures")
    finally:
        await conn.close()
    assert {r["error"]: r["code"] for r in rows} == texts
