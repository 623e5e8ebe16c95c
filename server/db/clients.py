"""Clients and their API keys (stored as sha256 hashes), admin keys, heartbeats."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

import asyncpg

from protocol import v1
from server.db import lifecycle
from server.db.pool import Pool, connection, transaction
from server.errors import ClientNotFound, Conflict, KeyInUse

REGISTER = """
INSERT INTO clients (client_name, client_host, api_key_hash, max_leases)
VALUES ($1, $2, $3, $4)
RETURNING client_id, client_name, client_host
"""

# Who owns each of the keys (by hash) still valid: one key at a request, or a gate's whole
# cache of look-ups renewed at once. An admin key comes first, should a hash be both.
FIND_BY_KEYS = """
SELECT key_hash, 'admin' AS role, NULL::uuid AS client_id, NULL AS client_name
FROM admin_keys WHERE key_hash = ANY($1::bytea[])
UNION ALL
SELECT api_key_hash, 'client', client_id, client_name FROM clients
WHERE api_key_hash = ANY($1::bytea[]) AND revoked_at IS NULL
ORDER BY role  -- 'admin' before 'client'
"""

TOUCH = """
UPDATE clients c
SET last_heartbeat_at = now(), docs_per_minute = coalesce($2, c.docs_per_minute)
FROM (SELECT client_id, last_heartbeat_at FROM clients WHERE client_id = $1 FOR UPDATE) previous
WHERE c.client_id = previous.client_id
RETURNING previous.last_heartbeat_at AS previous_heartbeat_at
"""

CANCELLED_SINCE = """
SELECT DISTINCT task_id FROM task_events
WHERE event = 'cancelled' AND client_id = $1 AND at >= $2
"""

_CLIENTS = """
SELECT c.client_id, c.client_name, c.client_host, c.created_at, c.last_heartbeat_at,
       c.docs_per_minute,
       CASE WHEN c.quarantined_at IS NOT NULL THEN 'quarantined'
            WHEN c.revoked_at IS NOT NULL THEN 'revoked'
            WHEN c.last_heartbeat_at > now() - make_interval(secs => $1::float8)
            THEN 'active' ELSE 'stale' END AS status,
       (SELECT count(*) FROM tasks t
        WHERE t.assigned_to = c.client_id AND t.status = 'assigned') AS tasks_held,
       c.revoked_at, c.max_leases, c.checks_passed, c.checks_failed, c.last_good_check_at, c.quarantined_at
FROM clients c
"""
LIST = _CLIENTS + "ORDER BY c.created_at LIMIT $2"
ONE = _CLIENTS + "WHERE c.client_id = $2"
# What other clients' checks made of its documents, and what of them is being stored anew
# (server/db/verify.py).
CHECKS = "SELECT state, count(*) FROM verifications WHERE recorded_by = $1 GROUP BY state"
RECORDED = "SELECT count(*) FROM documents WHERE client_id = $1"
RESTORING = """
SELECT coalesce(sum(max_documents), 0) FROM tasks
WHERE status IN ('pending', 'assigned') AND (params->>'restore')::boolean AND $1 = ANY(exclude_clients)
"""

ADMIN_KEY_LOCK = 0x61646D696E  # "admin"


@dataclass(frozen=True)
class KeyOwner:
    role: str
    client_id: UUID | None
    client_name: str | None


async def register_client(
    pool: Pool, name: str, host: str | None, key_hash: bytes, max_leases: int | None = None
) -> tuple[UUID, str, str | None]:
    try:
        async with connection(pool) as conn:
            record = await conn.fetchrow(REGISTER, name, host, key_hash, max_leases)
    except asyncpg.UniqueViolationError:
        raise KeyInUse() from None
    assert record is not None  # INSERT … RETURNING always returns the row
    return record["client_id"], record["client_name"], record["client_host"]


REVOKE = """
UPDATE clients SET revoked_at = coalesce(revoked_at, now()) WHERE client_id = $1
RETURNING client_id, revoked_at
"""

ROTATE = """
UPDATE clients SET api_key_hash = $2 WHERE client_id = $1 AND revoked_at IS NULL
RETURNING client_id, client_name, client_host
"""


async def revoke_client(pool: Pool, client_id: UUID) -> v1.ClientRevoked:
    """Revoke the key and hand back the client's leases, in one transaction."""
    async with transaction(pool) as conn:
        record = await conn.fetchrow(REVOKE, client_id)
        if record is None:
            raise ClientNotFound(f"client {client_id} not found")
        handed = await lifecycle.hand_back_client(conn, client_id)
    return v1.ClientRevoked(client_id=client_id, revoked_at=record["revoked_at"], tasks_handed_back=handed)


async def set_max_leases(pool: Pool, client_id: UUID, max_leases: int | None) -> None:
    """The key's own lease cap: leases past it are refused (lease_cap) and not kept by heartbeats."""
    async with connection(pool) as conn:
        found = await conn.fetchval(
            "UPDATE clients SET max_leases = $2 WHERE client_id = $1 RETURNING client_id",
            client_id,
            max_leases,
        )
    if found is None:
        raise ClientNotFound(f"client {client_id} not found")


async def rotate_key(pool: Pool, client_id: UUID, key_hash: bytes) -> tuple[UUID, str, str | None]:
    """Give the client a new key; the old one stops working (within the look-up cache's bound)."""
    async with connection(pool) as conn:
        record = await conn.fetchrow(ROTATE, client_id, key_hash)
        if record is None:
            exists = await conn.fetchval(
                "SELECT revoked_at IS NOT NULL FROM clients WHERE client_id = $1", client_id
            )
            if exists is None:
                raise ClientNotFound(f"client {client_id} not found")
            raise Conflict(f"client {client_id} is revoked; register a new client instead")
    return record["client_id"], record["client_name"], record["client_host"]


async def find_key(pool: Pool, key_hash: bytes) -> KeyOwner | None:
    return (await find_keys(pool, [key_hash])).get(key_hash)


async def find_keys(pool: Pool, key_hashes: list[bytes]) -> dict[bytes, KeyOwner]:
    """The owners of those of the keys that are still valid (a key left out was revoked)."""
    async with connection(pool) as conn:
        records = await conn.fetch(FIND_BY_KEYS, key_hashes)
    owners: dict[bytes, KeyOwner] = {}
    for r in records:
        owners.setdefault(bytes(r["key_hash"]), KeyOwner(r["role"], r["client_id"], r["client_name"]))
    return owners


async def heartbeat(
    pool: Pool, client_id: UUID, body: v1.Heartbeat, lease_seconds: float, max_held: int
) -> v1.HeartbeatReply:
    async with transaction(pool) as conn:
        previous = await conn.fetchval(TOUCH, client_id, body.docs_per_minute)
        expiries = await lifecycle.extend_leases(
            conn, client_id, body.session_id, lease_seconds, body.task_ids, max_held
        )
        since = previous or datetime.fromtimestamp(0).astimezone()
        cancelled = [r["task_id"] for r in await conn.fetch(CANCELLED_SINCE, client_id, since)]
    return v1.HeartbeatReply(
        leases_extended=len(expiries),
        lease_expires_at=min(expiries) if expiries else None,
        cancelled_task_ids=cancelled,
    )


async def get_client(pool: Pool, client_id: UUID, stale_seconds: float) -> v1.ClientDetail:
    async with connection(pool) as conn:
        record = await conn.fetchrow(ONE, stale_seconds, client_id)
        if record is None:
            raise ClientNotFound(f"client {client_id} not found")
        checks = {r["state"]: r["count"] for r in await conn.fetch(CHECKS, client_id)}
        recorded = await conn.fetchval(RECORDED, client_id)
        restoring = await conn.fetchval(RESTORING, client_id)
    return v1.ClientDetail.model_validate(
        dict(record)
        | {"checks": checks, "documents_recorded": recorded, "documents_being_restored": restoring}
    )


async def list_clients(pool: Pool, stale_seconds: float, limit: int) -> v1.ClientList:
    async with connection(pool) as conn:
        records = await conn.fetch(LIST, stale_seconds, limit)
    return v1.ClientList(clients=[v1.ClientInfo.model_validate(dict(r)) for r in records])


async def add_admin_key(pool: Pool, key_hash: bytes, *, only_if_none: bool) -> bool:
    """Store an admin key hash; with only_if_none, only when no admin key exists yet."""
    async with transaction(pool) as conn:
        # Several gates may start together: one of them generates the key.
        await conn.execute("SELECT pg_advisory_xact_lock($1)", ADMIN_KEY_LOCK)
        if only_if_none and await conn.fetchval("SELECT EXISTS (SELECT 1 FROM admin_keys)"):
            return False
        await conn.execute("INSERT INTO admin_keys (key_hash) VALUES ($1) ON CONFLICT DO NOTHING", key_hash)
    return True


async def replace_admin_keys(pool: Pool, key_hash: bytes) -> None:
    async with transaction(pool) as conn:
        await conn.execute("DELETE FROM admin_keys")
        await conn.execute("INSERT INTO admin_keys (key_hash) VALUES ($1)", key_hash)
