"""Wake long-polling lease requests when PostgreSQL announces new tasks (LISTEN/NOTIFY).

Some work becomes leasable without a notification (a retry's backoff runs
out, the reaper frees an expired lease, a task ends and its host has room
for one more) and a notification can be lost with the listener's connection.
So while anyone waits, one probe per gate asks every `interval` seconds how
many tasks could be leased now, counting no further than the waiters, and
wakes that many of them, longest waiting first: the fallback costs one query
per interval, and a lease attempt per task there is room for, not one per
waiting client. (A fleet bigger than its hosts' room keeps hundreds of idle
clients waiting while tasks end one by one; waking them all for each would
cost hundreds of lease attempts a second that find nothing.) A notification
wakes everyone: it says new work came, in any amount.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg

log = logging.getLogger(__name__)
CHANNEL = "docgate_tasks"


class TaskWakeup:
    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._event = asyncio.Event()
        self._queue: deque[asyncio.Future[None]] = deque()  # the waiters, longest waiting first
        self._runners: list[asyncio.Task[None]] = []

    def current(self) -> asyncio.Event:
        """Take this before trying to lease, so a notification in between is not missed."""
        return self._event

    def join(self) -> asyncio.Future[None]:
        """A place in the queue of waiters, kept over several waits (leave it when done)."""
        place: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append(place)
        return place

    def leave(self, place: asyncio.Future[None]) -> None:
        if not place.done():
            place.cancel()
            self._queue.remove(place)

    async def wait(self, event: asyncio.Event, place: asyncio.Future[None], seconds: float) -> bool:
        """Wait up to `seconds` for `event` (taken with current()) or a wake of this waiter's
        `place` alone (wake); True if either came."""
        everyone = asyncio.ensure_future(event.wait())
        try:
            await asyncio.wait((place, everyone), timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            everyone.cancel()
        return event.is_set() or place.done()

    def fire(self) -> None:
        """Wake every waiter."""
        event, self._event = self._event, asyncio.Event()
        event.set()

    def wake(self, count: int) -> None:
        """Wake the `count` longest waiting."""
        for _ in range(min(count, len(self._queue))):
            self._queue.popleft().set_result(None)

    def _on_notify(self, *_: Any) -> None:
        self.fire()

    def start(self, leasable: Callable[[int], Awaitable[int]], interval: float) -> None:
        """Listen for notifications, and probe every `interval` while anyone waits: `leasable(n)`
        says how many tasks could be leased now, counting no further than `n`."""
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

    async def _probe_forever(self, leasable: Callable[[int], Awaitable[int]], interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            waiting = len(self._queue)
            if not waiting:
                continue
            try:
                room = await leasable(waiting)
            except Exception as exc:  # the waiters' own lease attempt will report the outage
                log.debug("leasable probe failed: %s", exc)
                room = waiting
            self.wake(room)

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
