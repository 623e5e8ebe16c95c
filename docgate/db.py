"""The CLI's way to the database: the configured PostgreSQL (or an embedded one for the
command's duration), migrated, and a small pool to run one piece of work on. Every subcommand
that reads or writes the gate's tables comes through here."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, TypeVar

from server.config import Settings
from server.errors import DocgateError

if TYPE_CHECKING:
    from server.db.pool import Pool

T = TypeVar("T")


@contextlib.contextmanager
def database(settings: Settings) -> Iterator[str]:
    """Yield a DSN: the configured server, or embedded PostgreSQL for the duration."""
    external = settings.external_dsn()
    if external is not None:
        yield external
        return
    from server.embedded import start_embedded

    handle, dsn = start_embedded(settings.data_dir)
    try:
        yield dsn
    finally:
        handle.cleanup()


def migrate(dsn: str) -> list[str]:
    """Apply what is missing; an unreachable server, a database that does not exist or a refused
    login is one line naming the settings."""
    import asyncpg

    from server.db.migrate import migrate_dsn

    try:
        return asyncio.run(migrate_dsn(dsn))
    except (OSError, TimeoutError) as exc:
        raise DocgateError(f"cannot reach PostgreSQL (DATABASE_URL / DB_*): {exc}") from None
    except asyncpg.PostgresError as exc:
        raise DocgateError(f"PostgreSQL refused the connection (DATABASE_URL / DB_*): {exc}") from None


def with_pool(work: Callable[[Pool], Awaitable[T]]) -> T:
    """Run `work` on a one-connection pool of the migrated database."""
    from server.db.pool import create_pool

    async def run(dsn: str) -> T:
        pool = await create_pool(dsn, 1, 1)
        try:
            return await work(pool)
        finally:
            await pool.close()

    with database(Settings.load()) as dsn:
        migrate(dsn)
        return asyncio.run(run(dsn))


def uuid_of(text: str, what: str, hint: str = "") -> uuid.UUID:
    """A command's id argument as a UUID, or the one-line error that says which it was."""
    try:
        return uuid.UUID(text)
    except ValueError:
        raise DocgateError(f"{what} {text!r} is not a uuid{hint}") from None
