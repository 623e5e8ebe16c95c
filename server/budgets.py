"""One gate's part of the fleet's host budgets: grants answered from memory.

Each gate holds, per host its clients work on, a slice of the host's budget recorded in
PostgreSQL (`host_slices`) and renewed about twice a second for all its hosts in one
transaction (server.db.hosts.renew_slices). A client's grant request is answered from the
gate's memory: an equal share of the gate's slice among the gate's clients working on the
host, but no more than the other clients' grants still valid leave. Clients ask about once a
second; those whose every host is shared by db.CROWD or more clients at this gate, every 2 s
(db.CROWDED_REFRESH_SECONDS: still within ACTIVE_SECONDS, so they stay counted). A request
waits for a renewal only when the gate has no current slice of the host yet, when it reports trouble (so
that its own answer, and the next one anyone gets, carry the back-off), or after an operator
changed the host here.

Why the grants held at any moment never sum past the budget, across any number of gates:

1. Within a gate, every grant is computed under no await (one event loop), against the sum
   of the others' grants still valid, so the grants a gate has out never exceed the slice it
   held when it made each of them; a grant ends (`valid_seconds`) before the slice it came
   from expires. The sum is a running tally (`Tally`), so a grant costs the same with 10 or
   1,000 clients on the host: each grant adds what it changed at once, and the tally is
   counted afresh from the clients every TALLY_SECONDS. Between two counts it can only
   over-count (a grant that ran out, a client gone quiet still counted), which makes a share
   smaller, never larger.
2. A gate records its slice as the larger of what it may grant from now on and what its
   clients still hold, so a slice that shrinks is given to the others only once the grants
   made under the larger one have run out (within ACTIVE_SECONDS).
3. Slices are renewed under the host's row lock, each within what the other gates' recorded
   slices leave; a gate that dies stops renewing, and its slice stops counting after
   SLICE_SECONDS, when every grant made under it has ended too.

The per-address budgets (HOST_RATE_LIMIT_PER_ADDRESS) are cut the same way, one slice per
host, address and gate. A client's grant is valid by its own clock from before it asked, so
the clocks of gate and client never lengthen it; PostgreSQL's clock times the slices.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from dataclasses import dataclass, field
from uuid import UUID

from protocol import hosts as wire
from protocol import v1
from server.db import hosts as db
from server.db.pool import Pool
from server.domain import budget as rules
from server.domain.budget import Seen
from server.errors import DatabaseUnavailable

log = logging.getLogger("docgate.gate")
RENEW_SECONDS = 0.5
TALLY_SECONDS = 0.25  # how often a host's running tally of clients and grants is counted afresh


@dataclass
class Held:
    """One client's last grant of a host at this gate."""

    address: str
    seen: float  # when it last asked (monotonic)
    rate: float | None = 0.0
    connections: int | None = 0
    until: float = 0.0
    cap: v1.Politeness | None = None
    # What the host's tallies count of this client (its address, whether it is one of the
    # clients sharing, the grant it holds), so that its next grant replaces, not adds.
    counted: str | None = None
    counted_rate: float = 0.0
    counted_connections: int = 0


@dataclass
class Tally:
    """Clients sharing a budget (asked within ACTIVE_SECONDS) and the sum of their grants still
    valid, at or above the truth (see the module's rule 1)."""

    clients: int = 0
    rate: float = 0.0
    connections: int = 0

    def add(self, held: Held, sign: int) -> None:
        self.clients += sign
        self.rate += sign * held.counted_rate
        self.connections += sign * held.counted_connections


@dataclass
class HostAtGate:
    """What this gate knows of one host: its slices, its clients, what they saw since the last
    renewal."""

    clients: dict[tuple[UUID, str], Held] = field(default_factory=dict)
    fleet: db.Slice | None = None
    by_address: dict[str, db.Slice] = field(default_factory=dict)
    until: float = 0.0  # the slices hold until then (monotonic)
    paused: bool = False
    pause_until: float = 0.0
    seen: Seen = field(default_factory=Seen)
    retry_after: float | None = None
    stale: bool = True  # an operator changed it here: renew before the next grant
    tally: Tally = field(default_factory=Tally)
    tally_by_address: dict[str, Tally] = field(default_factory=dict)
    counted_at: float = float("-inf")

    def active(self, now: float) -> list[tuple[tuple[UUID, str], Held]]:
        return [(k, c) for k, c in self.clients.items() if now - c.seen < db.ACTIVE_SECONDS]

    def count(self, now: float) -> None:
        """The tallies counted afresh from the clients, at most every TALLY_SECONDS."""
        if now - self.counted_at < TALLY_SECONDS:
            return
        self.counted_at = now
        self.tally, self.tally_by_address = Tally(), {}
        for c in self.clients.values():
            c.counted, c.counted_rate, c.counted_connections = None, 0.0, 0
            if now - c.seen >= db.ACTIVE_SECONDS:
                continue  # quiet: neither sharing nor, after ACTIVE_SECONDS, holding a grant
            self.count_in(c, now)

    def count_in(self, c: Held, now: float) -> None:
        valid = c.until > now
        c.counted = c.address
        c.counted_rate = (c.rate or 0.0) if valid else 0.0
        c.counted_connections = (c.connections or 0) if valid else 0
        self.tally.add(c, 1)
        self.tally_by_address.setdefault(c.address, Tally()).add(c, 1)

    def uncount(self, c: Held) -> None:
        """Take a client out of the tallies (before its new grant is counted in)."""
        if c.counted is None:
            return
        self.tally.add(c, -1)
        self.tally_by_address[c.counted].add(c, -1)
        c.counted, c.counted_rate, c.counted_connections = None, 0.0, 0


class Budgets:
    """This gate's slices of every host budget, and the grants it answers from them."""

    def __init__(self, pool: Pool, defaults: db.Defaults) -> None:
        self.pool = pool
        self.defaults = defaults
        self.gate_id = uuid.uuid4().hex
        self._per_address = defaults.address_rate > 0 or defaults.address_connections > 0
        self.hosts: dict[str, HostAtGate] = {}
        self.any_job_paused = True  # until the first renewal says otherwise
        self._wake = asyncio.Event()
        self._next: asyncio.Future[None] | None = None
        self._loop: asyncio.Task[None] | None = None
        self._renewing_lock = asyncio.Lock()

    def start(self) -> None:
        self._loop = asyncio.create_task(self._renewing(), name="docgate-host-slices")

    async def stop(self) -> None:
        if self._loop is not None:
            self._loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop
            self._loop = None

    def changed(self, host: str) -> None:
        """An operator changed a host on this gate: renew before the next grant of it."""
        if host in self.hosts:
            self.hosts[host].stale = True

    def job_paused(self) -> None:
        """A job was paused on this gate: grants check the tasks clients hold from now on."""
        self.any_job_paused = True

    async def grants(
        self, client_id: UUID, session_id: str, body: wire.GrantRequest, address: str
    ) -> wire.GrantReply:
        """Record what the client saw and answer with its share of each host it reports."""
        now = time.monotonic()
        key = (client_id, session_id)
        renew = False
        for report in body.hosts:
            state = self._asking(key, report, address, now)
            state.seen += Seen(report.ok, report.throttled, report.errors, report.blocked)
            if report.retry_after:
                state.retry_after = max(report.retry_after, state.retry_after or 0.0)
            trouble = bool(report.throttled or report.errors or report.blocked or report.retry_after)
            newcomer = self._per_address and address not in state.by_address
            renew = renew or trouble or newcomer or state.stale or state.until - now < db.ACTIVE_SECONDS
        if renew:
            await self.renewed()
        now = time.monotonic()
        answers = [self._grant(key, report, address, now) for report in body.hosts]
        valid = min((until for _, until in answers), default=now + db.ACTIVE_SECONDS) - now
        crowded = bool(body.hosts) and all(self.hosts[r.host].tally.clients >= db.CROWD for r in body.hosts)
        return wire.GrantReply(
            grants=[grant for grant, _ in answers],
            refresh_seconds=db.CROWDED_REFRESH_SECONDS if crowded else db.REFRESH_SECONDS,
            valid_seconds=max(0.0, valid),
        )

    def _asking(self, key: tuple[UUID, str], report: wire.HostReport, address: str, now: float) -> HostAtGate:
        """The host's state here, with this client recorded as asking now."""
        state = self.hosts.setdefault(report.host, HostAtGate())
        held = state.clients.get(key)
        if held is None:
            held = state.clients[key] = Held(address, now)
        held.seen, held.address, held.cap = now, address, report.politeness
        return state

    def _grant(
        self, key: tuple[UUID, str], report: wire.HostReport, address: str, now: float
    ) -> tuple[wire.HostGrant, float]:
        """The client's share of the gate's slice; no await from reading the others to recording it."""
        # Recorded again: a request that waited long for a renewal (a saturated gate) may find
        # its host left meanwhile, with its clients; a host new again has no slice to grant from.
        state = self._asking(key, report, address, now)
        host = report.host
        me = state.clients[key]
        until = min(now + db.ACTIVE_SECONDS, state.until)
        state.count(now)
        state.uncount(me)  # what is left in the tallies is the others'
        others = state.tally
        sharing = others.clients + 1
        fleet = state.fleet or db.Slice(0.0, 0)
        rate = rules.share(fleet.rate, sharing, others.rate)
        slots = rules.slots(fleet.connections, sharing, others.connections)
        if fleet.one_each:
            slots = 1  # more clients than the host's connections: one each, whatever the slice
        if me.address in state.by_address:
            part = state.by_address[me.address]
            near = state.tally_by_address.get(me.address) or Tally()
            rate = rules.lowest(rate, rules.share(part.rate, near.clients + 1, near.rate))
            mine = rules.slots(part.connections, near.clients + 1, near.connections)
            slots = mine if slots is None else slots if mine is None else min(slots, mine)
        if until <= now:
            rate, slots = 0.0, 0  # no current slice: nothing to grant from
        me.rate, me.connections, me.until = rate, slots, until
        state.count_in(me, now)
        grant = wire.HostGrant(
            host=host,
            requests_per_second=rate,
            max_connections=slots,
            paused=state.paused,
            wait_seconds=max(0.0, state.pause_until - now),
        )
        return grant, until

    async def renewed(self) -> None:
        """Wait for a renewal that starts after this call (and so carries what was seen)."""
        if self._next is None or self._next.done():
            self._next = asyncio.get_running_loop().create_future()
        waiting = self._next
        self._wake.set()
        if self._loop is None:  # not started (tests driving one gate's object): renew here
            await self._renew_once()
            return
        await asyncio.shield(waiting)

    async def _renewing(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), RENEW_SECONDS)
            try:
                await self._renew_once()
            except Exception:  # logged; the next round tries again, grants run out meanwhile
                log.exception("renewing this gate's host slices failed")

    async def _renew_once(self) -> None:
        async with self._renewing_lock:
            await self._renew()

    async def _renew(self) -> None:
        self._wake.clear()
        waiting, self._next = self._next, None
        started = time.monotonic()
        wants, gone = self._wants(started)
        if not wants and not gone and waiting is None:
            self.any_job_paused = True  # not asked: the grants check for themselves
            return
        try:
            renewed, any_paused = await db.renew_slices(self.pool, self.gate_id, wants, gone, self.defaults)
        except BaseException as exc:
            for want in wants:  # what was seen is told with the next renewal
                state = self.hosts.get(want.host)
                if state is not None:
                    state.seen += want.seen
            if waiting is not None and not waiting.done():
                failure = exc if isinstance(exc, Exception) else DatabaseUnavailable("the gate is stopping")
                waiting.set_exception(failure)
                waiting.exception()  # retrieved: callers that gave up leave no warning behind
            raise
        for name in gone:
            self.hosts.pop(name, None)
        for renewal in renewed:
            state = self.hosts.get(renewal.host)
            if state is None:
                continue
            state.fleet, state.by_address = renewal.fleet, renewal.by_address
            state.until = started + db.SLICE_SECONDS - 0.25  # PostgreSQL's clock started later
            state.paused = renewal.paused
            state.pause_until = started + renewal.wait_seconds if renewal.wait_seconds else 0.0
        self.any_job_paused = any_paused
        if waiting is not None and not waiting.done():
            waiting.set_result(None)

    def _wants(self, now: float) -> tuple[list[db.Want], list[str]]:
        """Per host: this gate's clients on it and their grants still valid; hosts none of its
        clients works on or holds a grant of any longer are left."""
        wants, gone = [], []
        for name, state in self.hosts.items():
            for key in [k for k, c in state.clients.items() if now - c.seen > 60 and c.until <= now]:
                del state.clients[key]
            active = state.active(now)
            valid = [c for c in state.clients.values() if c.until > now]
            if not active and not valid:
                gone.append(name)
                continue
            want = db.Want(name, clients=len(active), seen=state.seen, retry_after=state.retry_after)
            state.seen, state.retry_after, state.stale = Seen(), None, False
            # What the gate's clients hold, and what it may still grant until this renewal is
            # answered: both stay counted until the next renewal.
            force = state.fleet if state.fleet is not None and state.until > now else db.Slice(0.0, 0)
            want.held_rate = max(sum(c.rate or 0.0 for c in valid), force.rate or 0.0)
            want.held_connections = max(sum(c.connections or 0 for c in valid), force.connections or 0)
            caps = [c.cap for _, c in active if c.cap is not None]
            want.cap_rate = min((c.requests_per_second for c in caps if c.requests_per_second), default=None)
            want.cap_connections = min((c.max_connections for c in caps if c.max_connections), default=None)
            if self._per_address:
                _by_address(want, state, active, valid, now)
            wants.append(want)
        return wants, gone


def _by_address(
    want: db.Want,
    state: HostAtGate,
    active: list[tuple[tuple[UUID, str], Held]],
    valid: list[Held],
    now: float,
) -> None:
    """The same per egress address, for the budgets of the clients behind one."""
    for _, c in active:
        want.addresses[c.address] = want.addresses.get(c.address, 0) + 1
    for c in valid:
        rate, slots = want.held_by_address.get(c.address, (0.0, 0))
        want.held_by_address[c.address] = (rate + (c.rate or 0.0), slots + (c.connections or 0))
    if state.until > now:
        for address, part in state.by_address.items():
            if not (part.rate or part.connections):
                continue
            rate, slots = want.held_by_address.get(address, (0.0, 0))
            want.held_by_address[address] = (max(rate, part.rate or 0.0), max(slots, part.connections or 0))
    for address in want.held_by_address:
        want.addresses.setdefault(address, 0)
