"""Wake long-polling lease requests when PostgreSQL announces new tasks (LISTEN/NOTIFY).

Waiters also poll on a short fallback interval, so a lost notification or a
dropped listener connection only delays them, never strands them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import asyncpg

log = logging.getLogger(__name__)
CHANNEL = "docgate_tasks"


class TaskWakeup:
    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._event = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None

    def current(self) -> asyncio.Event:
        """Take this before trying to lease, so a notification in between is not missed."""
        return self._event

    async def wait(self, event: asyncio.Event, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), seconds)

    def fire(self) -> None:
        event, self._event = self._event, asyncio.Event()
        event.set()

    def _on_notify(self, *_: Any) -> None:
        self.fire()

    def start(self) -> None:
        self._runner = asyncio.create_task(self._listen_forever(), name="docgate-listen")

    async def stop(self) -> None:
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner

    async def _listen_forever(self) -> None:
        while True:
            try:
                await self._listen_once()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
                log.warning("task listener disconnected (%s); retrying", type(exc).__name__)
            await asyncio.sleep(1.0)

    async def _listen_once(self) -> None:
        conn = await asyncpg.connect(self._dsn, timeout=10)
        closed = asyncio.Event()
        conn.add_termination_listener(lambda _conn: closed.set())
        try:
            await conn.add_listener(CHANNEL, self._on_notify)
            self.fire()  # anything created while we were away is picked up now
            while not closed.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(closed.wait(), 15)
                if not closed.is_set():
                    await conn.execute("SELECT 1", timeout=5)  # notice a dead socket
        finally:
            with contextlib.suppress(Exception):
                await conn.close(timeout=2)
