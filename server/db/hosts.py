"""Budgets per origin host, shared by the fleet: the gates' slices, the back-off, the operator's overrides.

A host's budget is `requests_per_second` and `max_connections` (an override, else the gate's
HOST_RATE_LIMIT / HOST_CONNECTIONS; 0 = no limit), lowered by the strictest `politeness` of the
jobs its active clients work on. Its effective rate follows the back-off of
server/domain/budget.py. Each gate holds a slice of the budget (`host_slices`), renewed with
its clients' reports about twice a second in one transaction for all its hosts
(`renew_slices`), under the hosts' row locks; the gate divides its slice among its own clients
in memory (server/budgets.py).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from protocol import hosts as wire
from server.db.pool import Connection, Pool, connection, transaction
from server.domain import budget as rules
from server.domain.budget import Rate, Seen

log = logging.getLogger("docgate.gate")
ACTIVE_SECONDS = 3.0  # a client that asked within this long counts towards a host's share
REFRESH_SECONDS = 1.0  # how often a client asks
# A host shared by this many clients at one gate: its clients ask half as often. A share of a
# share changes little from one second to the next, and 1,000 clients asking once a second
# are 1,000 grants a second; within ACTIVE_SECONDS still, so they stay counted and their
# grants valid between two asks. Trouble is told at once whatever the interval.
CROWD = 100
CROWDED_REFRESH_SECONDS = 2.0
SLICE_SECONDS = 5.0  # how long a gate's slice counts after it was renewed

ENSURE = "INSERT INTO hosts (host) SELECT unnest($1::text[]) ON CONFLICT (host) DO NOTHING"
# In a fixed order: two gates renewing the same hosts never wait on each other's locks.
LOCK = "SELECT *, now() AS now FROM hosts WHERE host = ANY($1::text[]) ORDER BY host FOR UPDATE"
# The other gates' slices still counting, read after the locks (a statement of its own, so it
# sees the slices committed while we waited).
OTHERS = """
SELECT host, address, clients, rate, connections, cap_rate, cap_connections FROM host_slices
WHERE host = ANY($1::text[]) AND gate_id <> $2 AND expires_at > now()
"""
ADJUST = """
UPDATE hosts SET effective_rate = $2, ceiling = $3, troubled_at = $4, noisy_at = $5, adjusted_at = $6,
    answers = $7, errors = $8, counted_at = $9, pause_until = $10
WHERE host = $1
"""
SLICE = """
INSERT INTO host_slices (host, address, gate_id, clients, rate, connections, cap_rate, cap_connections,
                         expires_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, now() + make_interval(secs => $9::float8))
ON CONFLICT (host, address, gate_id) DO UPDATE SET clients = $4, rate = $5, connections = $6,
    cap_rate = $7, cap_connections = $8, expires_at = excluded.expires_at
"""
# This gate's slices it no longer needs: hosts it left, addresses none of its clients come from.
DROP = """
DELETE FROM host_slices WHERE gate_id = $1 AND host = ANY($2::text[])
  AND NOT (host || ' ' || address) = ANY($3::text[])
"""
STATS = """
INSERT INTO host_stats (host, minute, ok, throttled, errors, blocked)
VALUES ($1, date_trunc('minute', now()), $2, $3, $4, $5)
ON CONFLICT (host, minute) DO UPDATE SET ok = host_stats.ok + excluded.ok,
    throttled = host_stats.throttled + excluded.throttled, errors = host_stats.errors + excluded.errors,
    blocked = host_stats.blocked + excluded.blocked
"""
ANY_JOB_PAUSED = "SELECT EXISTS (SELECT 1 FROM jobs WHERE paused)"
RECENT = """
SELECT coalesce(sum(ok + throttled + errors + blocked), 0) AS answers,
       coalesce(sum(errors + blocked), 0) AS bad, coalesce(sum(blocked), 0) AS blocked
FROM host_stats WHERE host = $1 AND minute > now() - interval '5 minutes'
"""
AUTO_PAUSE = "UPDATE hosts SET paused = true, paused_reason = $2 WHERE host = $1 AND NOT paused"
LIST = """
SELECT h.*, now() AS now,
       (SELECT coalesce(sum(c.clients), 0) FROM host_slices c WHERE c.host = h.host
         AND c.address = '' AND c.expires_at > now()) AS clients_active,
       coalesce(s.ok, 0) AS ok, coalesce(s.throttled, 0) AS throttled, coalesce(s.errors, 0) AS errors,
       coalesce(s.blocked, 0) AS blocked,
       coalesce(s.ok_60, 0) AS ok_60, coalesce(s.throttled_60, 0) AS throttled_60,
       coalesce(s.errors_60, 0) AS errors_60, coalesce(s.blocked_60, 0) AS blocked_60,
       extract(epoch FROM now() - date_trunc('minute', now())) AS into_minute
FROM hosts h
LEFT JOIN (SELECT host,
                  sum(ok) FILTER (WHERE recent) AS ok, sum(throttled) FILTER (WHERE recent) AS throttled,
                  sum(errors) FILTER (WHERE recent) AS errors, sum(blocked) FILTER (WHERE recent) AS blocked,
                  sum(ok) AS ok_60, sum(throttled) AS throttled_60, sum(errors) AS errors_60,
                  sum(blocked) AS blocked_60
           FROM (SELECT *, minute > now() - interval '5 minutes' AS recent FROM host_stats
                 WHERE minute > now() - interval '60 minutes') m
           GROUP BY host) s ON s.host = h.host
ORDER BY h.host
"""
SET = """
INSERT INTO hosts (host, requests_per_second, max_connections, paused, paused_reason)
VALUES ($1, $2, $3, $4, CASE WHEN $4 THEN 'paused by an operator' END)
ON CONFLICT (host) DO UPDATE SET requests_per_second = $2, max_connections = $3, paused = $4,
    paused_reason = CASE WHEN $4 THEN 'paused by an operator' END,
    effective_rate = NULL, ceiling = NULL, adjusted_at = now(), answers = 0, errors = 0
"""
PAUSE = """
INSERT INTO hosts (host, paused, paused_reason) VALUES ($1, $2, CASE WHEN $2 THEN $3 END)
ON CONFLICT (host) DO UPDATE SET paused = $2, paused_reason = CASE WHEN $2 THEN $3 END
"""
BUDGET = """
INSERT INTO hosts (host, requests_per_second, max_connections) VALUES ($1, $2, $3)
ON CONFLICT (host) DO UPDATE SET requests_per_second = $2, max_connections = $3,
    effective_rate = NULL, ceiling = NULL, adjusted_at = now(), answers = 0, errors = 0
"""
CLEAR_STATS = "DELETE FROM host_stats WHERE host = $1"
FORGET = "DELETE FROM host_slices WHERE expires_at < now() - interval '1 minute'"
FORGET_STATS = "DELETE FROM host_stats WHERE minute < now() - interval '2 hours'"


@dataclass(frozen=True)
class Defaults:
    """The gate's settings: HOST_RATE_LIMIT and HOST_CONNECTIONS (0 = no limit)."""

    requests_per_second: float
    max_connections: int
    pause_ratio: float = 0.5  # HOST_PAUSE_RATIO: blocks and errors over answers that pause a host
    pause_min_answers: int = 20  # HOST_PAUSE_MIN_ANSWERS: answers counted before it can
    # HOST_RATE_LIMIT_PER_ADDRESS, HOST_CONNECTIONS_PER_ADDRESS: the same budget for the clients
    # behind one egress address (registries limit by IP); 0 = none
    address_rate: float = 0.0
    address_connections: int = 0


@dataclass
class Want:
    """What one gate asks of one host's budget: how many of its clients work on it (and behind
    which addresses), what their grants still valid add up to, and what they saw."""

    host: str
    clients: int = 0
    addresses: dict[str, int] = field(default_factory=dict)
    held_rate: float = 0.0
    held_connections: int = 0
    held_by_address: dict[str, tuple[float, int]] = field(default_factory=dict)
    cap_rate: float | None = None
    cap_connections: int | None = None
    seen: Seen = field(default_factory=Seen)
    retry_after: float | None = None


@dataclass(frozen=True)
class Slice:
    """A gate's part of one budget: what it may grant its clients in all (None: no limit)."""

    rate: float | None
    connections: int | None
    one_each: bool = False  # more clients than connections in the fleet: one connection each


@dataclass(frozen=True)
class Renewed:
    """One host, as the gate renewed it: its slices (the host's, and per address) for
    SLICE_SECONDS, whether it is paused, and how long everyone must wait (Retry-After)."""

    host: str
    fleet: Slice
    by_address: dict[str, Slice]
    paused: bool
    wait_seconds: float


async def renew_slices(
    pool: Pool, gate_id: str, wants: list[Want], gone: list[str], defaults: Defaults
) -> tuple[list[Renewed], bool]:
    """One gate's slices of every host its clients work on, renewed in one transaction under the
    hosts' row locks, with its clients' reports folded into each host's back-off; the slices of
    hosts it has left dropped. Also whether any job is paused (the grants' paused-task check)."""
    names = sorted(w.host for w in wants)
    wanted = {w.host: w for w in wants}
    renewed: list[Renewed] = []
    async with transaction(pool) as conn:
        if names:
            await conn.execute(ENSURE, names)
            rows = {r["host"]: r for r in await conn.fetch(LOCK, names)}
            others: dict[str, list[Any]] = defaultdict(list)
            for other in await conn.fetch(OTHERS, names, gate_id):
                others[other["host"]].append(other)
            adjusted, slices, stats = [], [], []
            for name in names:
                want, row = wanted[name], rows[name]
                renewal, state, pause_until = _renew(want, row, others[name], defaults)
                adjusted.append((name, *state, pause_until))
                slices += _slice_rows(want, renewal, gate_id)
                if want.seen.answers:
                    seen = want.seen
                    stats.append((name, seen.ok, seen.throttled, seen.errors, seen.blocked))
                renewed.append(renewal)
            await conn.executemany(ADJUST, adjusted)
            await conn.executemany(SLICE, slices)
            if stats:
                await conn.executemany(STATS, stats)
            for i, renewal in enumerate(renewed):
                seen = wanted[renewal.host].seen
                troubled = (seen.errors or seen.blocked) and not renewal.paused
                if troubled and await _dead_man(conn, renewal.host, defaults) is not None:
                    renewed[i] = Renewed(renewal.host, renewal.fleet, renewal.by_address, True, 0.0)
        kept = [f"{s[0]} {s[1]}" for s in _kept(wants)]
        if names or gone:
            await conn.execute(DROP, gate_id, names + gone, kept)
        any_paused = bool(await conn.fetchval(ANY_JOB_PAUSED))
    return renewed, any_paused


async def _dead_man(conn: Connection, host: str, defaults: Defaults) -> str | None:
    """Pause a host by itself when most of its recent answers are blocks or errors: a registry
    serving captchas or failing must not be hammered until an operator notices. The reason."""
    recent = await conn.fetchrow(RECENT, host)
    assert recent is not None
    answers, bad = int(recent["answers"]), int(recent["bad"])
    if answers < defaults.pause_min_answers or bad <= defaults.pause_ratio * answers:
        return None
    reason = (
        f"paused by itself: {bad} of the last {answers} answers (5 minutes) were blocks or errors "
        f"({recent['blocked']} blocks); resume with `docgate hosts resume {host}`"
    )
    await conn.execute(AUTO_PAUSE, host, reason)
    log.warning("host %s %s", host, reason)
    return reason


def _kept(wants: list[Want]) -> list[tuple[str, str]]:
    return [(w.host, "") for w in wants] + [(w.host, a) for w in wants for a in w.addresses]


def _renew(
    want: Want, row: Any, others: list[Any], defaults: Defaults
) -> tuple[Renewed, tuple[Any, ...], datetime | None]:
    """The gate's slices of one host (under its row lock), the host's new back-off state and
    when its Retry-After pause ends."""
    now: datetime = row["now"]
    rate = rules.budget(row["requests_per_second"], defaults.requests_per_second)
    before = Rate(
        row["effective_rate"],
        row["ceiling"],
        row["troubled_at"],
        row["noisy_at"],
        row["adjusted_at"],
        row["answers"],
        row["errors"],
        row["counted_at"],
    )
    after, _ = rules.adjust(rate, before, now, want.seen)
    pause_until: datetime | None = row["pause_until"]
    if want.retry_after:
        until = now + timedelta(seconds=want.retry_after)
        pause_until = until if pause_until is None or until > pause_until else pause_until
    fleet = [o for o in others if o["address"] == ""]
    cap_rate = _least([want.cap_rate] + [o["cap_rate"] for o in fleet])
    cap_connections = _least([want.cap_connections] + [o["cap_connections"] for o in fleet])
    effective = rules.lowest(after.effective, cap_rate)
    connections = rules.lowest(
        rules.budget(row["max_connections"], defaults.max_connections), cap_connections
    )
    clients = want.clients + sum(int(o["clients"]) for o in fleet)
    host_slice = Slice(
        rules.portion(effective, want.clients, clients, sum(o["rate"] or 0.0 for o in fleet)),
        _int(
            rules.slot_portion(connections, want.clients, clients, sum(o["connections"] or 0 for o in fleet))
        ),
    )
    by_address = {}
    for address, mine in want.addresses.items():
        near = [o for o in others if o["address"] == address]
        count = mine + sum(int(o["clients"]) for o in near)
        by_address[address] = Slice(
            rules.portion(
                rules.budget(None, defaults.address_rate), mine, count, sum(o["rate"] or 0.0 for o in near)
            ),
            _int(
                rules.slot_portion(
                    rules.budget(None, defaults.address_connections),
                    mine,
                    count,
                    sum(o["connections"] or 0 for o in near),
                )
            ),
        )
    wait = (pause_until - now).total_seconds() if pause_until is not None else 0.0
    state = (
        after.effective,
        after.ceiling,
        after.troubled_at,
        after.noisy_at,
        after.adjusted_at,
        after.answers,
        after.errors,
        after.counted_at,
    )
    return Renewed(want.host, host_slice, by_address, bool(row["paused"]), max(0.0, wait)), state, pause_until


def _slice_rows(want: Want, renewal: Renewed, gate_id: str) -> list[tuple[Any, ...]]:
    """The slices as recorded: never less than what the gate's clients still hold, so that a
    slice that shrinks is not given to the other gates before its grants have run out."""
    caps = (want.cap_rate, want.cap_connections)
    rows = [
        (
            want.host,
            "",
            gate_id,
            want.clients,
            *_committed(renewal.fleet, want.held_rate, want.held_connections),
            *caps,
            SLICE_SECONDS,
        )
    ]
    for address, part in renewal.by_address.items():
        held_rate, held_connections = want.held_by_address.get(address, (0.0, 0))
        rows.append(
            (
                want.host,
                address,
                gate_id,
                want.addresses[address],
                *_committed(part, held_rate, held_connections),
                None,
                None,
                SLICE_SECONDS,
            )
        )
    return rows


def _committed(part: Slice, held_rate: float, held_connections: int) -> tuple[float | None, int | None]:
    rate = None if part.rate is None else max(part.rate, held_rate)
    connections = None if part.connections is None else max(part.connections, held_connections)
    return rate, connections


def _least(values: list[Any]) -> Any:
    present = [v for v in values if v is not None]
    return min(present) if present else None


def _int(value: int | None) -> int | None:
    return None if value is None else int(value)


async def list_hosts(pool: Pool, defaults: Defaults) -> wire.HostList:
    async with connection(pool) as conn:
        rows = await conn.fetch(LIST)
    hosts = []
    for row in rows:
        rate = rules.budget(row["requests_per_second"], defaults.requests_per_second)
        connections = rules.budget(row["max_connections"], defaults.max_connections)
        effective = None if rate is None else min(rate, row["effective_rate"] or rate)
        until = row["pause_until"]
        hosts.append(
            wire.HostInfo(
                host=row["host"],
                requests_per_second=rate,
                max_connections=None if connections is None else int(connections),
                effective_rate=effective,
                paused=row["paused"],
                paused_reason=row["paused_reason"],
                pause_until=until if until is not None and until > row["now"] else None,
                clients_active=row["clients_active"],
                ok=row["ok"],
                throttled=row["throttled"],
                errors=row["errors"],
                blocked=row["blocked"],
                last_hour=wire.Answers(
                    ok=row["ok_60"],
                    throttled=row["throttled_60"],
                    errors=row["errors_60"],
                    blocked=row["blocked_60"],
                ),
                # the five minutes counted: four whole ones and the current one so far
                observed_rate=float(row["ok"] + row["throttled"] + row["errors"] + row["blocked"])
                / (240.0 + max(1.0, float(row["into_minute"]))),
            )
        )
    return wire.HostList(hosts=hosts)


async def set_host(pool: Pool, host: str, body: wire.HostSettings) -> None:
    async with transaction(pool) as conn:
        await conn.execute(SET, host, body.requests_per_second, body.max_connections, body.paused)
        if not body.paused:
            await conn.execute(CLEAR_STATS, host)


async def pause(pool: Pool, host: str, paused: bool, reason: str = "paused by an operator") -> None:
    """Pause a host (clients start nothing there) or resume it, keeping its budget. A resumed
    host starts a new count of answers (the dead-man switch judges it afresh)."""
    async with transaction(pool) as conn:
        await conn.execute(PAUSE, host, paused, reason)
        if not paused:
            await conn.execute(CLEAR_STATS, host)


async def set_budget(
    pool: Pool, host: str, requests_per_second: float | None, max_connections: int | None
) -> None:
    """Override a host's budget (None: the gate's default), keeping whether it is paused."""
    async with connection(pool) as conn:
        await conn.execute(BUDGET, host, requests_per_second, max_connections)


async def forget(pool: Pool) -> None:
    """Housekeeping: clients long gone from a host, stats past two hours."""
    async with connection(pool) as conn:
        await conn.execute(FORGET)
        await conn.execute(FORGET_STATS)
