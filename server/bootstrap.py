"""What a gate does to a database before serving: migrate, and make sure an admin key exists."""

from __future__ import annotations

import logging
import sys

from server.auth import hash_key, new_key
from server.config import Settings
from server.db import clients
from server.db.migrate import migrate, pending
from server.db.pool import Pool, connection
from server.errors import SettingError

log = logging.getLogger("docgate.gate")


async def prepare_database(pool: Pool, settings: Settings, *, apply_migrations: bool) -> None:
    """Migrate (or, where `docgate server` already did before starting, only check the schema),
    and make sure an admin key exists."""
    async with connection(pool) as conn:
        if apply_migrations:
            applied = await migrate(conn)
            if applied:
                log.info("database migrated: %s", ", ".join(applied))
        elif missing := await pending(conn):
            raise SettingError(
                f"the database lacks migrations {', '.join(missing)}: run `docgate db migrate`"
            )
    if not settings.enable_auth:
        log.warning(
            "ENABLE_AUTH=false: EVERY REQUEST IS TREATED AS ADMIN. "
            "Use this for local development only, never on a reachable address."
        )
    if settings.admin_api_key is None:
        await _ensure_generated_admin_key(pool)


async def _ensure_generated_admin_key(pool: Pool) -> None:
    key = new_key()
    if await clients.add_admin_key(pool, hash_key(key), only_if_none=True):
        # Straight to the terminal, not the log: secrets never enter log files.
        print(announce_admin_key(key), file=sys.stdout, flush=True)


def announce_admin_key(key: str) -> str:
    return (
        "\n"
        "  docgate: a new admin API key was generated. It is shown only this once\n"
        "  and stored only as a hash; keep it (e.g. ADMIN_API_KEY in .env):\n\n"
        f"      {key}\n\n"
        "  Lost it? `docgate admin-key reset` prints a new one.\n"
    )
