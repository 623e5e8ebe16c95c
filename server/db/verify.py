"""Workers checked against each other: a job's `verify_sample`, fetched again by other clients.

When a client records documents of a job with `verify_sample`, that share of them (chosen by a
hash of the doc_id, so the same documents whoever records them; every one, for a client that
has lost a dispute before) is queued for a check. Housekeeping gathers a client's checks into
`urls` tasks of the job (`verify: true`) that the client itself can never lease
(`tasks.exclude_clients`). The checker fetches each document from the origin and reads back the
stored object, and reports both sha256s (`checked`); it stores nothing.

Judging (in the check's fenced report):

- the origin's sha256 and the stored object's are both the recorded one: `agreed`, a good
  check for the client that recorded it;
- otherwise a third fetch is queued, by a client that is neither; then the majority of the three
  says who was wrong: the recorder (`lied`), or the first checker (`mistaken`); all three apart
  (a document that varies per fetch) is `unsettled` and counts against no one.

A client that loses QUARANTINE_AFTER disputes is quarantined: its key suspended (it stops on
every gate within the key cache's bound, as a revoked key), its leases handed back, and every
document it recorded since its last good check queued again as a `restore` revisit: fetched
and stored anew, as a new version, by other clients. Its record stays for the operator
(`GET /api/v1/clients`, the dashboard): `quarantined`, with its checks passed and failed.
"""

from __future__ import annotations

import json
import logging
from typing import Any
from uuid import UUID

from protocol import v1
from server.db.pool import Connection, Pool, transaction
from server.db.revisits import EXT_OF
from server.domain.record import Recording

log = logging.getLogger("docgate.gate")
QUARANTINE_AFTER = 3  # disputes lost
PER_TASK = 100

# The documents of this write to check: the job's share of them ($4, its tasks' verify_sample; a
# hash of the doc_id under it), all of them for a client that lost a dispute before.
SAMPLE = """
INSERT INTO verifications (collection, doc_id, version, job_id, url, storage_key, size, claimed_sha256,
                           recorded_by)
SELECT d.collection, d.doc_id, d.version, d.job_id, d.url, d.storage_key, d.size, d.sha256, d.client_id
FROM documents d JOIN clients c ON c.client_id = d.client_id
WHERE d.collection = $1 AND d.doc_id = ANY($2::text[]) AND d.task_id = $3 AND d.url IS NOT NULL
  AND (c.checks_failed > 0 OR ('x' || substr(md5(d.doc_id), 1, 8))::bit(32)::bigint < $4::float8 * 4294967296)
"""

# Pending checks, a client's at a time, as tasks of the job that neither it nor any checker of
# a document in them may lease.
PENDING = """
SELECT v.*, j.priority, j.max_attempts FROM verifications v JOIN jobs j ON j.job_id = v.job_id
WHERE v.state = 'pending' ORDER BY v.verification_id LIMIT 1000 FOR UPDATE OF v SKIP LOCKED
"""
QUEUE = """
INSERT INTO tasks (job_id, source, params, max_documents, priority, max_attempts, collection, exclude_clients)
VALUES ($1, 'urls', $2, $3, $4, $5, $6, $7) RETURNING task_id
"""
QUEUED = "UPDATE verifications SET state = 'queued', task_id = $2 WHERE verification_id = ANY($1::bigint[])"
NOTIFY = "SELECT pg_notify('docgate_tasks', '')"
# A check task that ended without judging a document of it (its fetch failed: the origin gone,
# a block): that check cannot be had, and counts against no one.
UNJUDGED = """
UPDATE verifications v SET state = 'unsettled', settled_at = now()
FROM tasks t
WHERE v.state = 'queued' AND t.task_id = v.task_id AND t.status IN ('completed', 'failed', 'cancelled')
"""

OPEN = """
SELECT * FROM verifications WHERE task_id = $1 AND state = 'queued' AND doc_id = ANY($2::text[])
FOR UPDATE
"""
SETTLE = "UPDATE verifications SET state = $2, opinions = $3, settled_at = now() WHERE verification_id = $1"
AGAIN = "UPDATE verifications SET state = 'pending', opinions = $2, task_id = NULL WHERE verification_id = $1"
PASSED = """
UPDATE clients SET checks_passed = checks_passed + 1, last_good_check_at = now() WHERE client_id = $1
"""
FAILED = """
UPDATE clients SET checks_failed = checks_failed + 1 WHERE client_id = $1
RETURNING checks_failed, quarantined_at
"""
QUARANTINE = """
UPDATE clients SET quarantined_at = now(), revoked_at = coalesce(revoked_at, now())
WHERE client_id = $1 AND quarantined_at IS NULL RETURNING last_good_check_at
"""
# What it recorded since its last good check, fetched and stored anew by others.
RESTORE = f"""
WITH docs AS (
    SELECT d.job_id, d.collection, d.doc_id, d.url,
           jsonb_build_object('version', d.version, 'sha256', d.sha256, 'size', d.size,
                              'storage_key', d.storage_key) AS seen,
           {EXT_OF} AS ext,
           (row_number() OVER (PARTITION BY d.job_id, d.collection ORDER BY d.doc_id) - 1) / 100 AS grp
    FROM documents d
    WHERE d.client_id = $1 AND d.url IS NOT NULL AND d.stored_at > coalesce($2, '-infinity'::timestamptz)
)
INSERT INTO tasks (job_id, source, params, max_documents, priority, max_attempts, collection, exclude_clients)
SELECT d.job_id, 'urls',
       jsonb_build_object('revisit', true, 'restore', true, 'urls', jsonb_agg(jsonb_build_object(
           'doc_id', d.doc_id, 'url', d.url, 'ext', d.ext, 'seen', d.seen) ORDER BY d.doc_id)),
       count(*), 0, $3, d.collection, ARRAY[$1::uuid]
FROM docs d GROUP BY d.job_id, d.collection, d.grp
"""


async def sample(conn: Connection, task: Any, by: Recording, doc_ids: list[str]) -> None:
    """Queue the checks of what this write recorded (inside it), for a job with verify_sample."""
    rate = (task["params"] or {}).get("verify_sample")
    if rate and doc_ids and by.job_id is not None and by.client_id is not None:
        await conn.execute(SAMPLE, by.collection, doc_ids, by.task_id, float(rate))


async def queue_due(pool: Pool) -> int:
    """Pending checks into tasks (housekeeping, on any gate: SKIP LOCKED keeps them apart)."""
    async with transaction(pool) as conn:
        await conn.execute(UNJUDGED)
        rows = await conn.fetch(PENDING)
        groups: dict[tuple[Any, ...], list[Any]] = {}
        for row in rows:
            opinions = _opinions(row["opinions"])
            excluded = tuple(sorted({str(row["recorded_by"]), *(o["client_id"] for o in opinions)}))
            groups.setdefault((row["job_id"], row["collection"], excluded), []).append(row)
        created = 0
        for (job_id, collection, excluded), group in groups.items():
            for start in range(0, len(group), PER_TASK):
                part = group[start : start + PER_TASK]
                params = {"verify": True, "urls": [_item(r) for r in part]}
                task_id = await conn.fetchval(
                    QUEUE, job_id, params, len(part), part[0]["priority"], part[0]["max_attempts"] or 5,
                    collection, [UUID(c) for c in excluded],
                )  # fmt: skip
                await conn.execute(QUEUED, [r["verification_id"] for r in part], task_id)
                created += 1
        if created:
            await conn.execute(NOTIFY)
    return created


def _item(row: Any) -> dict[str, Any]:
    key = row["storage_key"]
    name = key.rsplit("/", 1)[-1]
    ext = name[len(row["doc_id"]) :].removesuffix(".gz")
    seen = {
        "version": row["version"],
        "sha256": row["claimed_sha256"],
        "size": row["size"],
        "storage_key": key,
    }
    return {"doc_id": row["doc_id"], "url": row["url"], "ext": ext, "seen": seen}


def _opinions(value: Any) -> list[dict[str, Any]]:
    return list(json.loads(value) if isinstance(value, str) else value or [])


async def judge(conn: Connection, task: Any, checked: list[v1.DocumentReport], max_attempts: int) -> None:
    """Weigh a check task's reports (inside its fenced write)."""
    if not (task["params"] or {}).get("verify") or task["assigned_to"] is None:
        return
    said = {str(d.doc_id): d for d in checked}
    for row in await conn.fetch(OPEN, task["task_id"], list(said)):
        report = said[row["doc_id"]]
        opinion = {"client_id": str(task["assigned_to"]), "sha256": report.sha256,
                   "stored_sha256": report.stored_sha256}  # fmt: skip
        opinions = [*_opinions(row["opinions"]), opinion]
        claimed = row["claimed_sha256"]
        if len(opinions) == 1:
            if _agrees(opinion, claimed):
                await conn.execute(SETTLE, row["verification_id"], "agreed", opinions)
                await conn.execute(PASSED, row["recorded_by"])
            else:  # a dispute: a third fetch, by a client that is neither
                await conn.execute(AGAIN, row["verification_id"], opinions)
            continue
        first, second = opinions[0], opinions[1]
        if _agrees(second, claimed) and not _agrees(first, claimed):
            await conn.execute(SETTLE, row["verification_id"], "mistaken", opinions)
            await conn.execute(PASSED, row["recorded_by"])
            await _lost(conn, UUID(first["client_id"]), max_attempts)
        elif not _agrees(second, claimed) and second["sha256"] == first["sha256"]:
            await conn.execute(SETTLE, row["verification_id"], "lied", opinions)
            await _lost(conn, row["recorded_by"], max_attempts)
        else:
            await conn.execute(SETTLE, row["verification_id"], "unsettled", opinions)


def _agrees(opinion: dict[str, Any], claimed: str) -> bool:
    """The origin serves the recorded bytes and the store holds them."""
    return bool(opinion["sha256"] == claimed and opinion.get("stored_sha256") == claimed)


async def _lost(conn: Connection, client_id: UUID, max_attempts: int) -> None:
    row = await conn.fetchrow(FAILED, client_id)
    if row is None or row["quarantined_at"] is not None or row["checks_failed"] < QUARANTINE_AFTER:
        return
    quarantined = await conn.fetchrow(QUARANTINE, client_id)
    if quarantined is None:
        return
    from server.db import lifecycle  # (lifecycle records reports through documents, which come here)

    handed = await lifecycle.hand_back_client(conn, client_id)
    status = await conn.execute(RESTORE, client_id, quarantined["last_good_check_at"], max_attempts)
    await conn.execute(NOTIFY)
    log.warning(
        "client %s quarantined: %d disputes lost; %d leases handed back, %s tasks to store its "
        "documents since its last good check anew",
        client_id, QUARANTINE_AFTER, handed, status.split()[-1],
    )  # fmt: skip
