"""Budgets per origin host, shared by the fleet: grants, the back-off, the operator's overrides.

A host's budget is `requests_per_second` and `max_connections` (an override, else the gate's
HOST_RATE_LIMIT / HOST_CONNECTIONS; 0 = no limit). Its effective rate starts at the budget, is
halved (at most once a second, never below 2 % of the budget) when a client reports 429/503
answers, timeouts, resets or block pages, and grows back on healthy answers: by 5 % of the budget per second
up to 80 % of the rate the trouble came at; it stays there for HOLD_SECONDS, then creeps on by
0.5 % of the budget per second (a registry's limit is most likely where it was).
Each client working on the host (seen in the last ACTIVE_SECONDS) gets an equal share, but
never more than the others' last grants leave: a newcomer gets what is left until the others
ask again (within REFRESH_SECONDS) and shrink to their shares, so the grants held at any moment
sum to at most the budget. A client's grant holds for ACTIVE_SECONDS; one that stops asking
stops using it (`GrantReply.valid_seconds`), and its share goes to the others. The strictest
`politeness` of the jobs the host's active clients work on lowers its budget. The rows live in
PostgreSQL, so every gate hands out the same shares.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from protocol import hosts as wire
from protocol import v1
from server.db.pool import Connection, Pool, connection, transaction

log = logging.getLogger("docgate.gate")
ACTIVE_SECONDS = 3.0  # a client that asked within this long counts towards a host's share
REFRESH_SECONDS = 1.0  # how often a client asks
DECREASE = 0.5
INCREASE = 0.05  # of the budget, per second of healthy answers, well below the last trouble
NEAR = 0.005  # the same, near or above the rate the last trouble came at (after HOLD_SECONDS)
BELOW = 0.8  # of the rate the last trouble came at: where the fast increase stops
HOLD_SECONDS = 30.0
FLOOR = 0.02  # of the budget

# One round trip before the host's row lock, and three while it is held (LOCK; SHARES, which
# must be its own statement so that it sees the grants committed while we waited; WRITE).
SEEN = """
WITH known AS (INSERT INTO hosts (host) VALUES ($1) ON CONFLICT (host) DO NOTHING)
INSERT INTO host_clients (host, client_id, session_id, seen_at, cap_rate, cap_connections, address)
VALUES ($1, $2, $3, now(), $4, $5, $6)
ON CONFLICT (host, client_id, session_id) DO UPDATE
SET seen_at = now(), cap_rate = $4, cap_connections = $5, address = $6
"""
LOCK = "SELECT *, now() AS now FROM hosts WHERE host = $1 FOR UPDATE"
# The clients working on the host, what the others were granted, the same for the clients
# behind this one's egress address ($5), and the strictest job politeness.
SHARES = """
SELECT count(*) AS active,
       coalesce(sum(rate) FILTER (WHERE NOT mine), 0) AS others_rate,
       coalesce(sum(connections) FILTER (WHERE NOT mine), 0) AS others_connections,
       count(*) FILTER (WHERE address = $5) AS near,
       coalesce(sum(rate) FILTER (WHERE NOT mine AND address = $5), 0) AS near_rate,
       coalesce(sum(connections) FILTER (WHERE NOT mine AND address = $5), 0) AS near_connections,
       min(cap_rate) AS cap_rate, min(cap_connections) AS cap_connections
FROM (SELECT *, (client_id = $2 AND session_id = $3) AS mine FROM host_clients
      WHERE host = $1 AND seen_at > now() - make_interval(secs => $4)) c
"""
# The host's new rate, this client's grant and what it saw, in one statement.
WRITE = """
WITH adjust AS (
    UPDATE hosts SET effective_rate = $2, ceiling = $3, pause_until = $4, adjusted_at = $5,
        troubled_at = CASE WHEN $6 THEN $5 ELSE troubled_at END
    WHERE host = $1
), granted AS (
    UPDATE host_clients SET rate = $7, connections = $8
    WHERE host = $1 AND client_id = $9 AND session_id = $10
)
INSERT INTO host_stats (host, minute, ok, throttled, errors, blocked)
SELECT $1, date_trunc('minute', now()), $11::bigint, $12::bigint, $13::bigint, $14::bigint
WHERE $11::bigint + $12::bigint + $13::bigint + $14::bigint > 0
ON CONFLICT (host, minute) DO UPDATE SET ok = host_stats.ok + excluded.ok,
    throttled = host_stats.throttled + excluded.throttled, errors = host_stats.errors + excluded.errors,
    blocked = host_stats.blocked + excluded.blocked
"""
RECENT = """
SELECT coalesce(sum(ok + throttled + errors + blocked), 0) AS answers,
       coalesce(sum(errors + blocked), 0) AS bad, coalesce(sum(blocked), 0) AS blocked
FROM host_stats WHERE host = $1 AND minute > now() - interval '5 minutes'
"""
AUTO_PAUSE = "UPDATE hosts SET paused = true, paused_reason = $2 WHERE host = $1 AND NOT paused"
LIST = """
SELECT h.*, now() AS now,
       (SELECT count(*) FROM host_clients c WHERE c.host = h.host
         AND c.seen_at > now() - make_interval(secs => $1)) AS clients_active,
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
    effective_rate = NULL, ceiling = NULL, adjusted_at = now()
"""
PAUSE = """
INSERT INTO hosts (host, paused, paused_reason) VALUES ($1, $2, CASE WHEN $2 THEN $3 END)
ON CONFLICT (host) DO UPDATE SET paused = $2, paused_reason = CASE WHEN $2 THEN $3 END
"""
BUDGET = """
INSERT INTO hosts (host, requests_per_second, max_connections) VALUES ($1, $2, $3)
ON CONFLICT (host) DO UPDATE SET requests_per_second = $2, max_connections = $3,
    effective_rate = NULL, ceiling = NULL, adjusted_at = now()
"""
CLEAR_STATS = "DELETE FROM host_stats WHERE host = $1"
FORGET = "DELETE FROM host_clients WHERE seen_at < now() - interval '1 minute'"
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


def budget(value: float | None, default: float) -> float | None:
    chosen = default if value is None else value
    return chosen if chosen > 0 else None


async def grants(
    pool: Pool,
    client_id: UUID,
    session_id: str | None,
    body: wire.GrantRequest,
    defaults: Defaults,
    address: str = "",
) -> wire.GrantReply:
    """Record what the client saw, adjust each host's rate, and answer with its shares."""
    answers = []
    async with transaction(pool) as conn:
        # A fixed order: two clients reporting the same hosts never wait on each other's locks.
        for report in sorted(body.hosts, key=lambda r: r.host):
            answers.append(await _grant(conn, client_id, session_id or "", report, defaults, address))
    return wire.GrantReply(grants=answers, refresh_seconds=REFRESH_SECONDS, valid_seconds=ACTIVE_SECONDS)


async def _grant(
    conn: Connection,
    client_id: UUID,
    session_id: str,
    report: wire.HostReport,
    defaults: Defaults,
    address: str,
) -> wire.HostGrant:
    cap = report.politeness or v1.Politeness()
    polite = (cap.requests_per_second, cap.max_connections)
    await conn.execute(SEEN, report.host, client_id, session_id, *polite, address)
    row = await conn.fetchrow(LOCK, report.host)
    assert row is not None
    now: datetime = row["now"]
    shares = await conn.fetchrow(SHARES, report.host, client_id, session_id, ACTIVE_SECONDS, address)
    assert shares is not None
    rate = budget(row["requests_per_second"], defaults.requests_per_second)
    effective, ceiling, adjusted = _adjusted(rate, row, now, report)
    troubled = adjusted == now and bool(report.throttled or report.errors or report.blocked)
    pause_until = row["pause_until"]
    if report.retry_after:
        until = now + timedelta(seconds=report.retry_after)
        pause_until = until if pause_until is None or until > pause_until else pause_until
    stored = (effective, ceiling, pause_until, adjusted, troubled)
    effective = _lowest(effective, shares["cap_rate"])  # the back-off runs on the host's own budget
    active = max(1, int(shares["active"]))
    connections = _lowest(budget(row["max_connections"], defaults.max_connections), shares["cap_connections"])
    share = _share(effective, active, shares["others_rate"])
    slots = _slots(connections, active, shares["others_connections"])
    near = max(1, int(shares["near"]))
    if defaults.address_rate > 0:
        share = _lowest(share, _share(defaults.address_rate, near, shares["near_rate"]))
    if defaults.address_connections > 0:
        mine = _slots(defaults.address_connections, near, shares["near_connections"])
        slots = mine if slots is None or mine is None else min(slots, mine)
    seen = (report.ok, report.throttled, report.errors, report.blocked)
    await conn.execute(WRITE, report.host, *stored, share, slots, client_id, session_id, *seen)
    paused = row["paused"]
    if (report.errors or report.blocked) and not paused:
        paused = await _dead_man(conn, report.host, defaults) is not None
    wait = (pause_until - now).total_seconds() if pause_until is not None else 0.0
    return wire.HostGrant(
        host=report.host,
        requests_per_second=share,
        max_connections=slots,
        paused=paused,
        wait_seconds=max(0.0, wait),
    )


def _share(total: float | None, clients: int, others: float) -> float | None:
    """An equal share of `total`, but no more than the others' grants leave."""
    return None if total is None else max(0.0, min(total / clients, total - others))


def _slots(total: float | None, clients: int, others: int) -> int | None:
    """The same for connections; with more clients than connections, one each."""
    if total is None:
        return None
    if clients > total:
        return 1
    return max(0, min(int(total) // clients, int(total) - int(others)))


def _lowest(value: float | None, cap: float | None) -> float | None:
    if cap is None:
        return value
    return cap if value is None else min(value, cap)


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


def _adjusted(
    rate: float | None, row: Any, now: datetime, report: wire.HostReport
) -> tuple[float | None, float | None, datetime]:
    """Multiplicative decrease on trouble, additive increase on health, within [floor, budget]:
    the new effective rate, the rate trouble last came at, when it was adjusted."""
    adjusted_at: datetime = row["adjusted_at"]
    ceiling: float | None = row["ceiling"]
    if rate is None:
        return None, None, now
    current = min(rate, row["effective_rate"] if row["effective_rate"] is not None else rate)
    elapsed = (now - adjusted_at).total_seconds()
    if report.throttled or report.errors or report.blocked:  # soft blocks slow the fleet too
        troubled_at = row["troubled_at"]
        if troubled_at is not None and (now - troubled_at).total_seconds() < 1.0:
            return current, ceiling, adjusted_at  # one halving a second, however many report it
        return max(rate * FLOOR, current * DECREASE), current, now
    if report.ok and current < rate:
        grown = current + rate * INCREASE * min(elapsed, 10.0)
        if ceiling is not None:
            held = (
                row["troubled_at"] is not None and (now - row["troubled_at"]).total_seconds() < HOLD_SECONDS
            )
            if held:
                grown = max(current, min(grown, BELOW * ceiling))
            elif current >= BELOW * ceiling:
                grown = current + rate * NEAR * min(elapsed, 10.0)
        return min(rate, grown), ceiling, now
    return current, ceiling, now if report.ok else adjusted_at


async def list_hosts(pool: Pool, defaults: Defaults) -> wire.HostList:
    async with connection(pool) as conn:
        rows = await conn.fetch(LIST, ACTIVE_SECONDS)
    hosts = []
    for row in rows:
        rate = budget(row["requests_per_second"], defaults.requests_per_second)
        connections = budget(row["max_connections"], defaults.max_connections)
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
