"""Politeness per origin host, shared by all of a client's tasks: connections and requests per second."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class TokenBucket:
    """`rate` requests per second with a burst of `burst`; waiters are served in order."""

    def __init__(self, rate: float, burst: float = 1.0) -> None:
        self.rate = rate
        self.burst = max(burst, 1.0)
        self.tokens = self.burst
        self.updated = time.monotonic()
        self._lock = asyncio.Lock()

    async def take(self) -> None:
        async with self._lock:
            while True:
                now = time.monotonic()
                self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
                self.updated = now
                if self.tokens >= 1:
                    self.tokens -= 1
                    return
                await asyncio.sleep((1 - self.tokens) / self.rate)


class HostLimiter:
    """At most `connections` requests in flight and `rate` starts per second, per host."""

    def __init__(self, connections: int, rate: float | None) -> None:
        self.connections = connections
        self.rate = rate
        self._slots: dict[str, asyncio.Semaphore] = {}
        self._buckets: dict[str, TokenBucket] = {}

    @asynccontextmanager
    async def slot(self, host: str) -> AsyncIterator[None]:
        semaphore = self._slots.setdefault(host, asyncio.Semaphore(self.connections))
        async with semaphore:
            if self.rate:
                await self._buckets.setdefault(host, TokenBucket(self.rate)).take()
            yield
