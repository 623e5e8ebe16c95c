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
  says who was wrong: the recorder (`lied`), or the first checker (`mistaken`); both checkers
  told the same Last-Modified, later than the record, saw a new edition (`changed`: no one's
  fault); the checkers apart (a document that varies per fetch) is `unsettled` and counts
  against no one.

A check task carries the rules its documents were recorded under (their task's, job's and source
profile's: what a block page looks like, politeness, `varies`) and is kept from the recorder's
host too (`tasks.exclude_hosts`: any client whose `client_host` is
one of them, checked at lease time).
A document the job says `varies` from fetch to fetch is compared by that rule: its varying parts
blanked on both sides (`normalized_sha256`), or (`varies: true`) only that the store holds the
bytes recorded.

A document the majority finds wrong (or `changed`) is stored anew at once (a `restore` revisit by another
client, itself checked), whoever recorded it. A client that loses the job's `verify_disputes`
(3 by default) is quarantined: its key suspended (it stops on every gate within the key cache's
bound, as a revoked key), its leases handed back, every document it recorded since its last good
check stored anew by others (their open checks `superseded`), and every one it recorded before
that checked (a liar that lies on some documents passes some checks). Its record stays for the
operator (`GET /api/v1/clients`, the dashboard): `quarantined`, with its checks passed and failed.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Any
from uuid import UUID

from protocol import v1
from server.db.pool import Connection, Pool, transaction
from server.db.revisits import EXT_OF
from server.domain.record import Recording

log = logging.getLogger("docgate.gate")
QUARANTINE_AFTER = 3  # disputes lost, unless the job's verify_disputes says otherwise
PER_TASK = 100
# What a check or a restore carries of its job's params: its content rules, not its sampling
# (a check stores nothing; a restore is checked whole, RESTORED_SAMPLE).
RULES = tuple(k for k in v1.ContentRules.model_fields if k != "verify_sample")
RESTORED_SAMPLE = 1.0


# The rules the document was recorded under: its task's, over its job's, over its source
# profile's (a harvest's search task reads them from its profile: `varies` among them).
def _rules_in(params: str) -> str:
    pairs = ", ".join(f"'{k}', {params}->'{k}'" for k in RULES)
    return f"jsonb_strip_nulls(jsonb_build_object({pairs}))"


RULES_OF_DOCUMENT = f"{_rules_in('s.profile')} || {_rules_in('j.params')} || {_rules_in('t.params')}"
RECORDED_UNDER = "LEFT JOIN tasks t ON t.task_id = d.task_id LEFT JOIN sources s ON s.name = t.source"

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
PENDING = f"""
SELECT v.*, j.priority, j.max_attempts, {RULES_OF_DOCUMENT} AS rules
FROM verifications v JOIN jobs j ON j.job_id = v.job_id
LEFT JOIN documents d ON d.collection = v.collection AND d.doc_id = v.doc_id AND d.version = v.version
{RECORDED_UNDER}
WHERE v.state = 'pending' ORDER BY v.verification_id LIMIT 1000 FOR UPDATE OF v SKIP LOCKED
"""
# The hosts a check of these clients' documents is kept from (tasks.exclude_hosts): theirs, as
# registered (client_host); the lease statement keeps the task from every client on them,
# registered before or after.
HOSTS = """
SELECT coalesce(array_agg(DISTINCT client_host) FILTER (WHERE client_host IS NOT NULL), '{}')
FROM clients WHERE client_id = ANY($1::uuid[])
"""
QUEUE = """
INSERT INTO tasks (job_id, source, params, max_documents, priority, max_attempts, collection, exclude_clients,
                   exclude_hosts)
VALUES ($1, 'urls', $2, $3, $4, $5, $6, $7, $8) RETURNING task_id
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
STATE = "SELECT state FROM verifications WHERE verification_id = $1"
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
# Documents a client recorded, fetched and stored anew by others (each as a new version; a
# restore's documents are all checked in turn): `{which}` says which of them.
RESTORE = f"""
WITH docs AS (
    SELECT d.job_id, d.collection, d.doc_id, d.url,
           jsonb_build_object('version', d.version, 'sha256', d.sha256, 'size', d.size,
                              'storage_key', d.storage_key) AS seen,
           {EXT_OF} AS ext, {RULES_OF_DOCUMENT} AS rules,
           (row_number() OVER (PARTITION BY d.job_id, d.collection ORDER BY d.doc_id) - 1) / 100 AS grp
    FROM documents d LEFT JOIN jobs j ON j.job_id = d.job_id {RECORDED_UNDER}
    WHERE d.client_id = $1 AND d.url IS NOT NULL AND {{which}}
)
INSERT INTO tasks (job_id, source, params, max_documents, priority, max_attempts, collection, exclude_clients,
                   exclude_hosts)
SELECT d.job_id, 'urls',
       jsonb_build_object('revisit', true, 'restore', true, 'urls', jsonb_agg(jsonb_build_object(
           'doc_id', d.doc_id, 'url', d.url, 'ext', d.ext, 'seen', d.seen) ORDER BY d.doc_id))
       || d.rules || jsonb_build_object('verify_sample', {RESTORED_SAMPLE}::float8),
       count(*), 0, $3, d.collection, ARRAY[$1::uuid], $2::text[]
FROM docs d
GROUP BY d.job_id, d.collection, d.grp, d.rules
"""
_LIED = """EXISTS (SELECT 1 FROM verifications v WHERE v.collection = d.collection AND v.doc_id = d.doc_id
                   AND v.version = d.version AND v.state = 'lied')"""
# Since its last good check ($4), less what a lost dispute restores already.
RESTORE_SINCE = RESTORE.format(which=f"d.stored_at > coalesce($4, '-infinity'::timestamptz) AND NOT {_LIED}")
# The documents lost disputes found wrong, where the record is still that version of them.
RESTORE_FOUND = RESTORE.format(
    which="(d.collection, d.doc_id, d.version) IN (SELECT * FROM unnest($4::text[], $5::text[], $6::int[]))"
)
# The open checks of what a quarantine restores: their verdict would change nothing.
SUPERSEDE = """
UPDATE verifications v SET state = 'superseded', settled_at = now()
FROM documents d
WHERE v.recorded_by = $1 AND v.state IN ('pending', 'queued') AND d.collection = v.collection
  AND d.doc_id = v.doc_id AND d.version = v.version AND d.client_id = $1
  AND d.stored_at > coalesce($2, '-infinity'::timestamptz)
"""
# Everything a quarantined client recorded up to its last good check ($2), checked (what was
# checked already stays judged).
CHECK_EARLIER = """
INSERT INTO verifications (collection, doc_id, version, job_id, url, storage_key, size, claimed_sha256,
                           recorded_by)
SELECT d.collection, d.doc_id, d.version, d.job_id, d.url, d.storage_key, d.size, d.sha256, d.client_id
FROM documents d
WHERE d.client_id = $1 AND d.url IS NOT NULL AND d.job_id IS NOT NULL AND d.stored_at <= $2
  AND NOT EXISTS (SELECT 1 FROM verifications v WHERE v.collection = d.collection
                  AND v.doc_id = d.doc_id AND v.version = d.version)
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
            rules = json.dumps(_json(row["rules"]), sort_keys=True)  # (its recording task's)
            groups.setdefault((row["job_id"], row["collection"], excluded, rules), []).append(row)
        created = 0
        for (job_id, collection, excluded, _), group in groups.items():
            clients = [UUID(c) for c in excluded]
            hosts = await conn.fetchval(HOSTS, clients)
            for start in range(0, len(group), PER_TASK):
                part = group[start : start + PER_TASK]
                params = {**_json(part[0]["rules"]), "verify": True, "urls": [_item(r) for r in part]}
                task_id = await conn.fetchval(
                    QUEUE, job_id, params, len(part), part[0]["priority"], part[0]["max_attempts"] or 5,
                    collection, clients, hosts,
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


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def _opinions(value: Any) -> list[dict[str, Any]]:
    return list(_json(value) or [])


async def judge(conn: Connection, task: Any, checked: list[v1.DocumentReport], max_attempts: int) -> None:
    """Weigh a check task's reports (inside its fenced write)."""
    params = task["params"] or {}
    if not params.get("verify") or task["assigned_to"] is None:
        return
    rule = Rule(params.get("varies"), params.get("verify_disputes") or QUARANTINE_AFTER, max_attempts)
    said = {str(d.doc_id): d for d in checked}
    wrong: dict[UUID, list[Any]] = {}  # the documents found wrong, by who recorded them
    for row in await conn.fetch(OPEN, task["task_id"], list(said)):
        if await conn.fetchval(STATE, row["verification_id"]) != "queued":
            continue  # superseded since, by a quarantine judged earlier in this report
        report = said[row["doc_id"]]
        opinion = {"client_id": str(task["assigned_to"]), "sha256": report.sha256,
                   "stored_sha256": report.stored_sha256, "normalized_sha256": report.normalized_sha256,
                   "stored_normalized_sha256": report.stored_normalized_sha256,
                   "last_modified": _last_modified(report)}  # fmt: skip
        opinions = [*_opinions(row["opinions"]), opinion]
        claimed = row["claimed_sha256"]
        if await _settle(conn, row, opinions, rule.agrees(opinion, claimed), rule):
            wrong.setdefault(row["recorded_by"], []).append(row)
    for recorder, rows in wrong.items():  # stored anew, by others
        hosts = await conn.fetchval(HOSTS, [recorder])
        await conn.execute(
            RESTORE_FOUND, recorder, hosts, max_attempts, [r["collection"] for r in rows],
            [r["doc_id"] for r in rows], [r["version"] for r in rows],
        )  # fmt: skip
    if wrong:
        await conn.execute(NOTIFY)


async def _settle(
    conn: Connection, row: Any, opinions: list[dict[str, Any]], verdict: bool | None, rule: Rule
) -> bool:
    """One check's outcome, with the latest opinion's verdict; True when it finds the document
    wrong. A second opinion comes only after a first that disagreed, so the two together are a
    majority either way."""
    check = row["verification_id"]
    if verdict is None:  # the checker could not compare by the rule
        await conn.execute(SETTLE, check, "unsettled", opinions)
    elif len(opinions) == 1 and verdict:
        await conn.execute(SETTLE, check, "agreed", opinions)
        await conn.execute(PASSED, row["recorded_by"])
    elif len(opinions) == 1:  # a dispute: a third fetch, by a client that is neither
        await conn.execute(AGAIN, check, opinions)
    elif verdict:  # the first checker was wrong
        await conn.execute(SETTLE, check, "mistaken", opinions)
        await conn.execute(PASSED, row["recorded_by"])
        await _lost(conn, UUID(opinions[0]["client_id"]), rule)
    elif rule.view(opinions[0]) == rule.view(opinions[1]) and _modified_since(opinions, row["created_at"]):
        await conn.execute(SETTLE, check, "changed", opinions)  # the origin's doing: no one lost
        return True
    elif rule.view(opinions[0]) == rule.view(opinions[1]):  # the recorder was
        await conn.execute(SETTLE, check, "lied", opinions)
        await _lost(conn, row["recorded_by"], rule)
        return True
    else:  # the checkers saw different things: a document that varies in ways no rule names
        await conn.execute(SETTLE, check, "unsettled", opinions)
    return False


def _last_modified(report: v1.DocumentReport) -> str | None:
    return report.capture.response_headers.get("last-modified") if report.capture else None


def _modified_since(opinions: list[dict[str, Any]], recorded: datetime) -> bool:
    """Both checkers were told by the origin the same Last-Modified, after the document was
    recorded (the check's creation, the gate's clock): what they saw is a new edition, not the
    recorder's lie. Neither the recorder nor one checker can make this so; an origin that sends
    the time of each answer as its Last-Modified tells two checkers apart, and is not believed."""
    if len({o.get("last_modified") for o in opinions}) != 1:
        return False
    for opinion in opinions:
        try:
            modified = parsedate_to_datetime(opinion.get("last_modified") or "")
        except (TypeError, ValueError):
            return False
        if modified.tzinfo is None or modified <= recorded:
            return False
    return True


@dataclass(frozen=True)
class Rule:
    """How a job's checks are weighed: its `varies` (None: byte for byte; a list: those parts
    blanked, `normalized_sha256`; True: only what the store holds), and its disputes before
    quarantine."""

    varies: bool | list[str] | None
    disputes: int
    max_attempts: int

    def agrees(self, opinion: dict[str, Any], claimed: str) -> bool | None:
        """The store holds the recorded bytes, and the origin serves them (by the rule); None:
        the checker could not tell (the parts that vary could not be blanked on both sides)."""
        if opinion.get("stored_sha256") != claimed:
            return False
        if self.varies is True or opinion["sha256"] == claimed:
            return True
        if not self.varies:
            return False
        normalized, stored = opinion.get("normalized_sha256"), opinion.get("stored_normalized_sha256")
        if normalized is None or stored is None:
            return None
        return bool(normalized == stored)

    def view(self, opinion: dict[str, Any]) -> tuple[Any, ...]:
        """What a checker saw, as two checkers who saw the same would both say it."""
        if self.varies is True:
            return (opinion.get("stored_sha256"),)
        origin = opinion.get("normalized_sha256") if self.varies else None
        return opinion.get("stored_sha256"), origin or opinion["sha256"]


async def _lost(conn: Connection, client_id: UUID, rule: Rule) -> None:
    row = await conn.fetchrow(FAILED, client_id)
    if row is None or row["quarantined_at"] is not None or row["checks_failed"] < rule.disputes:
        return
    quarantined = await conn.fetchrow(QUARANTINE, client_id)
    if quarantined is None:
        return
    from server.db import lifecycle  # (lifecycle records reports through documents, which come here)

    good = quarantined["last_good_check_at"]
    handed = await lifecycle.hand_back_client(conn, client_id)
    hosts = await conn.fetchval(HOSTS, [client_id])
    superseded = await conn.execute(SUPERSEDE, client_id, good)
    restores = await conn.execute(RESTORE_SINCE, client_id, hosts, rule.max_attempts, good)
    checks = await conn.execute(CHECK_EARLIER, client_id, good) if good is not None else "INSERT 0 0"
    await conn.execute(NOTIFY)
    log.warning(
        "client %s quarantined: %d disputes lost; %d leases handed back, %s tasks to store its "
        "documents since its last good check anew (%s open checks of them superseded), %s "
        "documents before it to check",
        client_id, row["checks_failed"], handed, restores.split()[-1], superseded.split()[-1],
        checks.split()[-1],
    )  # fmt: skip
