"""Revisits: a job's recorded documents fetched again, on a schedule or on demand.

A revisit queues `urls` tasks of the job (params `revisit: true`) whose items carry what the
last capture recorded (`seen`: version, sha256, size, key, ETag, Last-Modified). The client
asks conditionally (If-None-Match, If-Modified-Since) and reports each document `unchanged`
(a 304, or the same bytes), as a new version stored beside the first (a new sha256), or failed;
the gate records them (server/db/documents.py: a new version moves the old row to
document_versions; a 404/410 marks the document withdrawn and keeps it).

A job's `revisit.every` is kept in jobs.revisit; the gate's housekeeping starts a job's revisit
when `next_revisit_at` has come and the job's last revisit has settled (revisits never
overlap), on one gate (the job's row lock), and sets the next one `every` later.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from protocol import v1
from protocol.base import seconds
from server.db.pool import Connection, Pool, connection, transaction
from server.errors import DocumentNotFound, JobNotFound

SCHEDULE = "UPDATE jobs SET revisit = $2, next_revisit_at = $3 WHERE job_id = $1"

# A recorded document's ext, from its key (`<shard>/<id><ext>[.gz]`, the last part of a version's).
_NAME_EXT = "substr(regexp_replace(d.storage_key, '^.*/', ''), length(d.doc_id) + 1)"
EXT_OF = rf"CASE WHEN d.compressed THEN regexp_replace({_NAME_EXT}, '\.gz$', '') ELSE {_NAME_EXT} END"

# The job's recorded documents with a URL, in tasks of its chunk size (each item says what was
# seen last), carrying the job's content rules and its warc as every task of the job does.
QUEUE = """
WITH docs AS (
    SELECT d.doc_id, d.url,
           jsonb_strip_nulls(jsonb_build_object(
               'version', d.version, 'sha256', d.sha256, 'size', d.size, 'storage_key', d.storage_key,
               'etag', d.etag, 'last_modified', d.last_modified,
               'fetched_at', to_char(d.fetched_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'))) AS seen,
           {ext} AS ext,
           (row_number() OVER (ORDER BY d.doc_id) - 1) / $2::bigint AS grp
    FROM documents d
    WHERE d.job_id = $1 AND d.url IS NOT NULL
)
INSERT INTO tasks (job_id, source, params, max_documents, priority, max_attempts, collection)
SELECT j.job_id, 'urls',
       jsonb_build_object('revisit', true, 'urls', jsonb_agg(jsonb_build_object(
           'doc_id', d.doc_id, 'url', d.url, 'ext', d.ext, 'seen', d.seen) ORDER BY d.doc_id))
       || jsonb_strip_nulls(jsonb_build_object({extras})),
       count(*), j.priority, coalesce(j.max_attempts, $3), j.collection
FROM docs d CROSS JOIN jobs j
WHERE j.job_id = $1
GROUP BY d.grp, j.job_id, j.priority, j.max_attempts, j.collection, j.params
"""
# What every task of a job carries from its params (as server.db.jobs.TASK_EXTRAS).
QUEUE = QUEUE.format(
    ext=EXT_OF, extras=", ".join(f"'{k}', j.params->'{k}'" for k in v1.ContentRules.model_fields)
)
ADD_TOTAL = (
    "UPDATE jobs SET tasks_total = tasks_total + $2, tasks_created = tasks_created + $2 WHERE job_id = $1"
)
NOTIFY = "SELECT pg_notify('docgate_tasks', '')"

# Due, and the job's last revisit settled: no revisit task of it pending or out.
DUE = """
SELECT * FROM jobs j WHERE next_revisit_at <= now() AND NOT paused AND NOT creating
  AND NOT EXISTS (SELECT 1 FROM tasks t WHERE t.job_id = j.job_id AND t.source = 'urls'
                  AND t.status IN ('pending', 'assigned') AND (t.params->>'revisit')::boolean)
ORDER BY next_revisit_at LIMIT 1 FOR UPDATE SKIP LOCKED
"""
NEXT = "UPDATE jobs SET next_revisit_at = $2 WHERE job_id = $1"


async def schedule(conn: Connection, job_id: UUID, revisit: v1.Revisit | None) -> None:
    """Keep a new job's revisit: its first one `every` from now."""
    if revisit is None:
        return
    every = seconds(revisit.every)
    spec = {"every": revisit.every, "every_seconds": every}
    await conn.execute(SCHEDULE, job_id, spec, datetime.now(UTC) + timedelta(seconds=every))


async def start(pool: Pool, job_id: UUID, max_attempts: int) -> v1.RevisitStarted:
    """Revisit the job's documents now (POST /api/v1/jobs/{id}/revisit, `docgate revisit`)."""
    async with transaction(pool) as conn:
        job = await conn.fetchrow("SELECT * FROM jobs WHERE job_id = $1 FOR UPDATE", job_id)
        if job is None:
            raise JobNotFound(f"job {job_id} not found")
        return await _queue(conn, job, max_attempts)


async def start_due(pool: Pool, max_attempts: int) -> v1.RevisitStarted | None:
    """The revisit of one job whose time has come (None when none is due), on whichever gate
    finds it first. The next counts from the one due, not from now: a late revisit does not
    shift the schedule; revisits missed while every gate was down are one, not a burst."""
    async with transaction(pool) as conn:
        job = await conn.fetchrow(DUE)
        if job is None:
            return None
        every = timedelta(seconds=job["revisit"]["every_seconds"])
        now = datetime.now(UTC)
        due = job["next_revisit_at"] + every
        await conn.execute(NEXT, job["job_id"], due if due > now else now + every)
        return await _queue(conn, job, max_attempts)


async def _queue(conn: Connection, job: Any, max_attempts: int) -> v1.RevisitStarted:
    status = await conn.execute(QUEUE, job["job_id"], job["chunk_size"] or 100, max_attempts)
    created = int(status.split()[-1])
    documents = 0
    if created:
        await conn.execute(ADD_TOTAL, job["job_id"], created)
        await conn.execute(NOTIFY)
        documents = await conn.fetchval(
            "SELECT count(*) FROM documents WHERE job_id = $1 AND url IS NOT NULL", job["job_id"]
        )
    return v1.RevisitStarted(job_id=job["job_id"], documents=documents, tasks_created=created)


VERSIONS = """
SELECT version, false AS current, storage_key, sha256, size, content_type, compressed, version_id,
       fetched_at, recorded_at, superseded_at, etag, last_modified, transfer_sha256, warc_key
FROM document_versions WHERE collection = $2 AND doc_id = $1
UNION ALL
SELECT version, true, storage_key, sha256, size, content_type, compressed, version_id, fetched_at,
       stored_at, NULL, etag, last_modified, transfer_sha256, warc_key
FROM documents WHERE collection = $2 AND doc_id = $1
ORDER BY version
"""


async def versions(pool: Pool, doc_id: str, collection: str = "") -> v1.DocumentVersions:
    async with connection(pool) as conn:
        rows = await conn.fetch(VERSIONS, doc_id, collection)
        withdrawn = await conn.fetchval(
            "SELECT withdrawn_at FROM documents WHERE collection = $2 AND doc_id = $1", doc_id, collection
        )
    if not rows:
        raise DocumentNotFound(f"document {doc_id} not found")
    return v1.DocumentVersions(
        doc_id=doc_id,
        collection=collection,
        withdrawn_at=withdrawn,
        versions=[v1.DocumentVersion.model_validate(dict(r)) for r in rows],
    )


async def version_of(pool: Pool, doc_id: str, version: int, collection: str = "") -> v1.DocumentVersion:
    found = [v for v in (await versions(pool, doc_id, collection)).versions if v.version == version]
    if not found:
        raise DocumentNotFound(f"document {doc_id} has no version {version}")
    return found[0]
