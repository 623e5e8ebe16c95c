"""Wake long-polling lease requests when PostgreSQL announces new tasks (LISTEN/NOTIFY).

Some work becomes leasable without a notification (a retry's backoff runs
out, the reaper frees an expired lease) and a notification can be lost with
the listener's connection. So while anyone waits, one probe per gate asks
every `interval` seconds whether anything is leasable and wakes the waiters
if so: the fallback costs one indexed query per interval, not one lease
attempt per waiting client.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg

log = logging.getLogger(__name__)
CHANNEL = "docgate_tasks"


class TaskWakeup:
    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._event = asyncio.Event()
        self._waiting = 0
        self._runners: list[asyncio.Task[None]] = []

    def current(self) -> asyncio.Event:
        """Take this before trying to lease, so a notification in between is not missed."""
        return self._event

    async def wait(self, event: asyncio.Event, seconds: float) -> bool:
        """Wait up to `seconds` for `event` (taken with current()); True if it fired."""
        self._waiting += 1
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), seconds)
        finally:
            self._waiting -= 1
        return event.is_set()

    def fire(self) -> None:
        event, self._event = self._event, asyncio.Event()
        event.set()

    def _on_notify(self, *_: Any) -> None:
        self.fire()

    def start(self, leasable: Callable[[], Awaitable[bool]], interval: float) -> None:
        """Listen for notifications, and probe with `leasable` every `interval` while anyone waits."""
        self._runners = [
            asyncio.create_task(self._listen_forever(), name="docgate-listen"),
            asyncio.create_task(self._probe_forever(leasable, interval), name="docgate-probe"),
        ]

    async def stop(self) -> None:
        for runner in self._runners:
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await runner
        self._runners = []

    async def _probe_forever(self, leasable: Callable[[], Awaitable[bool]], interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            if not self._waiting:
                continue
            try:
                found = await leasable()
            except Exception as exc:  # the waiters' own lease attempt will report the outage
                log.debug("leasable probe failed: %s", exc)
                found = True
            if found:
                self.fire()

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
