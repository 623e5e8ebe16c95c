"""Politeness per origin host, shared by all of a client's tasks: connections and requests per second."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from uuid import UUID

from yarl import URL

from client.errors import ClientError
from protocol import hosts
from protocol.errors import ErrorCode
from protocol.v1 import Politeness

log = logging.getLogger("docgate.client")


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


class Slots:
    """At most `limit` holders at once (None: any number); the limit can change while held."""

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.held = 0
        self._waiting = 0
        self._changed = asyncio.Condition()

    def _free(self) -> bool:
        return self.limit is None or self.held < self.limit

    async def set_limit(self, limit: int | None) -> None:
        async with self._changed:
            self.limit = limit
            self._changed.notify_all()

    @asynccontextmanager
    async def hold(self) -> AsyncIterator[None]:
        if self._waiting or not self._free():  # behind those already waiting
            self._waiting += 1
            try:
                async with self._changed:
                    await self._changed.wait_for(self._free)
                    self.held += 1
            finally:
                self._waiting -= 1
        else:  # room and no one waiting: taken without the lock (one loop, nothing awaited between)
            self.held += 1
        try:
            yield
        finally:
            self.held -= 1
            if self._waiting:
                async with self._changed:
                    self._changed.notify_all()


Ask = Callable[[list[hosts.HostReport], list[UUID]], Awaitable[hosts.GrantReply]]
IDLE_SECONDS = 10.0  # a host not fetched from for this long is no longer reported
WARN_SECONDS = 30.0  # how often a client waiting on the gate's grants says so
Cap = tuple[float | None, int | None]  # a job's politeness: requests per second, connections


@dataclass
class HostState:
    """One origin host as this client sees it: its grant, and what it saw since it last asked."""

    slots: Slots
    bucket: TokenBucket | None
    changed: asyncio.Event = field(default_factory=asyncio.Event)  # a grant arrived
    paused: bool = False
    held: bool = False  # granted no rate for now: the others still hold the budget
    expires_at: float | None = None  # the grant's limits hold until then (None: no grant needed)
    resume_at: float = 0.0
    caps: dict[Cap, float] = field(default_factory=dict)  # jobs' politeness, when last used
    used_at: float = field(default_factory=time.monotonic)
    ok: int = 0
    throttled: int = 0
    errors: int = 0
    blocked: int = 0
    retry_after: float | None = None
    asks: bool = True  # reported to the gate (a host name the gate takes)

    def closed(self, now: float) -> bool:
        """Whether nothing may start now: paused, held back, told to wait, or without a grant."""
        expired = self.expires_at is not None and now >= self.expires_at
        return self.paused or self.held or expired or now < self.resume_at

    def report(self, host: str, now: float) -> hosts.HostReport:
        for cap in [c for c, used in self.caps.items() if now - used > IDLE_SECONDS]:
            del self.caps[cap]
        rates = [r for r, _ in self.caps if r is not None]
        slots = [c for _, c in self.caps if c is not None]
        politeness = None
        if rates or slots:
            politeness = Politeness(
                requests_per_second=min(rates, default=None), max_connections=min(slots, default=None)
            )
        report = hosts.HostReport(
            host=host,
            ok=self.ok,
            throttled=self.throttled,
            errors=self.errors,
            blocked=self.blocked,
            retry_after=self.retry_after,
            politeness=politeness,
        )
        self.ok = self.throttled = self.errors = self.blocked = 0
        self.retry_after = None
        return report


class FleetLimits:
    """Per origin host: this client's own ceilings (`connections`, `rate`: --connections-per-host,
    --per-host-limit) and, with `ask` (the gate's grants), its share of the fleet's budget, asked
    for about once a second for the hosts it is fetching from, with the 429s, errors and healthy
    answers it saw. A host the gate pauses, or that sent Retry-After to anyone, starts nothing;
    nor does one whose grant ran out (`valid_seconds`) before the gate answered again, since the
    gate then gives this client's share to the others."""

    def __init__(self, connections: int, rate: float | None, ask: Ask | None = None) -> None:
        self.connections = connections
        self.rate = rate
        self.ask = ask
        # The worker's: the tasks it holds (asked about with every grant), and what to do with
        # those the gate says are paused (hand them back): a job's pause reaches the fleet as
        # fast as a host's, about a second.
        self.held: Callable[[], list[UUID]] = list
        self.on_paused: Callable[[list[UUID]], None] = lambda task_ids: None
        self.hosts: dict[str, HostState] = {}
        self._loop: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    def _state(self, host: str) -> HostState:
        state = self.hosts.get(host)
        if state is None:
            bucket = TokenBucket(self.rate) if self.rate else None
            state = self.hosts[host] = HostState(Slots(self.connections), bucket)
            if self.ask is None or not re.match(hosts.HOST_KEY_PATTERN, host):
                state.asks = False  # no budget to ask for (a URL without a proper host is refused later)
            else:
                state.expires_at = 0.0  # nothing starts before the first grant
                self._wake.set()
                if self._loop is None:
                    self._loop = asyncio.create_task(self._asking(), name="docgate-host-grants")
        return state

    @asynccontextmanager
    async def slot(self, host: str, cap: Cap | None = None) -> AsyncIterator[None]:
        """Hold one of the host's connections and one of its starts; `cap`: the job's politeness,
        reported to the gate, which holds the host's fleet to the strictest cap in use."""
        state = self._state(host)
        state.used_at = time.monotonic()
        if cap is not None and cap != (None, None):
            if cap not in state.caps:
                self._wake.set()
            state.caps[cap] = state.used_at
        while True:
            await _until_open(state)
            async with state.slots.hold():
                if state.bucket is not None:
                    await state.bucket.take()
                # Paused (or told to wait) while this one queued for a connection or a start: it
                # queues again, rather than go out up to a whole queue's worth after the pause.
                if state.closed(now := time.monotonic()):
                    continue
                state.used_at = now
                yield
                return

    async def until_open(self, host: str) -> None:
        """Wait while the host is paused (by the gate), told us to wait (Retry-After), or has
        no current grant."""
        await _until_open(self._state(host))

    def record(self, host: str, outcome: str, retry_after: float | None = None) -> None:
        """What one answer was: "ok", "throttled" (429/503), "error" (5xx, timeout, reset), or
        "blocked" (a 200 that was not the document: it was counted ok when its status came)."""
        state = self.hosts.get(host)
        if state is None:
            return
        if outcome == "ok":
            state.ok += 1
        elif outcome == "blocked":
            state.ok = max(0, state.ok - 1)
            state.blocked += 1
        elif outcome == "throttled":
            state.throttled += 1
            if retry_after:
                state.retry_after = max(retry_after, state.retry_after or 0.0)
                state.resume_at = max(state.resume_at, time.monotonic() + _spread(retry_after))
        else:
            state.errors += 1
        if outcome != "ok":
            self._wake.set()  # the fleet should hear of trouble at once

    async def _asking(self) -> None:
        refresh = 1.0
        warned = 0.0
        while self.ask is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), refresh)
            self._wake.clear()
            asked_at = time.monotonic()
            active = {h: s for h, s in self.hosts.items() if s.asks and asked_at - s.used_at < IDLE_SECONDS}
            if not active:
                continue
            reports = [state.report(host, asked_at) for host, state in active.items()]
            try:
                reply = await self.ask(
                    reports[: hosts.MAX_HOSTS_PER_GRANT], self.held()[: hosts.MAX_TASKS_PER_GRANT]
                )
            except (ClientError, ValueError) as exc:  # ValueError: a reply that is not a grant
                message = exc.message if isinstance(exc, ClientError) else str(exc)[:200]
                if isinstance(exc, ClientError) and exc.code == ErrorCode.ROUTE_NOT_FOUND:
                    log.warning("the gate hands out no host budgets (an older gate); local limits only")
                    self.ask = None
                    for state in self.hosts.values():
                        state.expires_at, state.held = None, False
                        state.changed.set()
                elif time.monotonic() - warned > WARN_SECONDS:
                    warned = time.monotonic()
                    log.warning("host grants: %s (hosts with a budget wait for the gate)", message)
                refresh = 1.0
                continue
            refresh = max(0.2, min(reply.refresh_seconds, 5.0))
            for grant in reply.grants:
                await self._apply(grant, asked_at + max(0.0, min(reply.valid_seconds, 60.0)))
            if reply.paused_task_ids:
                self.on_paused(reply.paused_task_ids)

    async def _apply(self, grant: hosts.HostGrant, valid_until: float) -> None:
        state = self.hosts.get(grant.host)
        if state is None:
            return
        rate = _lower(self.rate, grant.requests_per_second)
        state.held = (rate is not None and rate <= 0) or grant.max_connections == 0
        if rate is None:
            state.bucket = None
        elif state.held:
            pass  # the bucket keeps its rate for when a share comes
        elif state.bucket is None:
            state.bucket = TokenBucket(rate)
        else:
            state.bucket.rate = rate
        limit = _lower(self.connections, grant.max_connections)
        await state.slots.set_limit(None if limit is None else max(1, int(limit)))
        limited = grant.requests_per_second is not None or grant.max_connections is not None
        state.expires_at = valid_until if limited else None
        state.paused = grant.paused
        if grant.wait_seconds:
            state.resume_at = max(state.resume_at, time.monotonic() + _spread(grant.wait_seconds))
        state.changed.set()

    async def close(self) -> None:
        if self._loop is not None:
            self._loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop


async def _until_open(state: HostState) -> None:
    """Wait while the host is paused (by the gate), told us to wait (Retry-After), is held back,
    or has no current grant."""
    while state.closed(now := time.monotonic()):
        state.used_at = now  # still working on it: keep asking, to hear of a resume
        state.changed.clear()
        delay = state.resume_at - now
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(state.changed.wait(), min(1.0, max(0.05, delay)))


def _spread(seconds: float) -> float:
    """A pause's end, spread by up to a half: a fleet told to wait must not come back as one burst."""
    return seconds * random.uniform(1.0, 1.5)


def _lower(mine: float | None, granted: float | None) -> float | None:
    if mine is None or mine <= 0:
        return granted
    return mine if granted is None else min(mine, granted)


def host_key(url: URL) -> str:
    """The host a budget is for: lower case, IDNA ASCII, `:port` when not the scheme's default."""
    host = (url.raw_host or "").lower().rstrip(".")
    if ":" in host:
        host = f"[{host}]"
    return host if url.is_default_port() else f"{host}:{url.port}"
