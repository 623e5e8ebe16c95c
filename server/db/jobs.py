"""Jobs: one request split server-side into many tasks, in one INSERT … SELECT."""

from __future__ import annotations

import logging
from typing import Any
from uuid import UUID

from protocol import v1
from protocol.hosts import host_key
from server.db import harvests, revisits, stats
from server.db.pool import Connection, Pool, connection, transaction
from server.errors import IdempotencyConflict, JobNotFound

log = logging.getLogger("docgate.gate")

INSERT_JOB = """
INSERT INTO jobs (source, params, chunk_size, priority, tasks_total, idempotency_key, collection,
                  creating, max_attempts, only_missing, host)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
ON CONFLICT (idempotency_key) DO NOTHING
RETURNING job_id
"""

# The chunks are generated inside PostgreSQL: no rows cross the wire. A plain
# function scan yields g in order and identity values are drawn in that order,
# so a job is leased in id order (tests/test_leasing.py checks it). An ORDER BY
# here sorted 10 M rows on disk first: a fifth of the insert's time.
INSERT_CHUNKS = """
INSERT INTO tasks (job_id, source, params, max_documents, priority, max_attempts, collection)
SELECT $1, 'id_range',
       jsonb_build_object('url_template', $2::text, 'start_id', $3::bigint + g * $4::bigint,
                          'count', least($4::bigint, $5::bigint - g * $4::bigint),
                          'ext', $6::text) || $10::jsonb,
       least($4::bigint, $5::bigint - g * $4::bigint), $7, $8, $11
FROM generate_series($12::bigint, $9::bigint - 1) AS g
"""

# only_missing: the ids of the range not yet in documents, in chunks of $4.
INSERT_MISSING = """
WITH missing AS (
    SELECT g AS id, (row_number() OVER (ORDER BY g) - 1) / $4::bigint AS grp
    FROM generate_series($3::bigint, $3::bigint + $5::bigint - 1) AS g
    WHERE NOT EXISTS (SELECT 1 FROM documents d WHERE d.collection = $10 AND d.doc_id = g::text)
), chunks AS (
    SELECT grp, array_agg(id ORDER BY id) AS ids FROM missing GROUP BY grp
)
INSERT INTO tasks (job_id, source, params, max_documents, priority, max_attempts, collection)
SELECT $1, 'id_range',
       jsonb_build_object('url_template', $2::text, 'ids', to_jsonb(ids), 'ext', $6::text) || $9::jsonb,
       cardinality(ids), $7, $8, $10
FROM chunks ORDER BY grp
"""

# Documents of the job that failed and are still not recorded, as new tasks.
INSERT_REFETCH = """
WITH failed AS (
    SELECT DISTINCT f.doc_id FROM document_failures f
    WHERE f.job_id = $1 AND NOT EXISTS (
        SELECT 1 FROM documents d
        WHERE d.collection = (SELECT collection FROM jobs WHERE job_id = $1) AND d.doc_id = f.doc_id
    )
), numbered AS (
    SELECT doc_id, (row_number() OVER (ORDER BY length(doc_id), doc_id) - 1) / $2::bigint AS grp
    FROM failed
), chunks AS (
    SELECT grp, array_agg(doc_id ORDER BY length(doc_id), doc_id) AS ids FROM numbered GROUP BY grp
)
INSERT INTO tasks (job_id, source, params, max_documents, priority, max_attempts, collection)
SELECT j.job_id, j.source,
       jsonb_build_object('url_template', j.params->>'url_template', 'ids', to_jsonb(c.ids),
                          'ext', coalesce(j.params->>'ext', ''))
       || jsonb_strip_nulls(jsonb_build_object({extras})),
       cardinality(c.ids), j.priority, $3, j.collection
FROM chunks c CROSS JOIN jobs j
WHERE j.job_id = $1
ORDER BY c.grp
"""

# What every task of a job carries from the job's params besides its range: the content rules
# and the job's politeness (protocol.params.ContentRules).
TASK_EXTRAS = tuple(v1.ContentRules.model_fields)
INSERT_REFETCH = INSERT_REFETCH.format(extras=", ".join(f"'{k}', j.params->'{k}'" for k in TASK_EXTRAS))

ADD_TOTAL = """
UPDATE jobs SET tasks_total = tasks_total + $2, tasks_created = tasks_created + $2 WHERE job_id = $1
"""

GET_JOB = "SELECT * FROM jobs WHERE job_id = $1"
# Ten million tasks take minutes to insert; the pool's default statement timeout is for normal work.
BULK_TIMEOUT = 3600.0
BY_KEY = """
SELECT job_id, source, params, chunk_size, priority, creating, tasks_created
FROM jobs WHERE idempotency_key = $1
"""

# Background creation: the oldest job still being created that no other gate is working on,
# locked while one slice of its tasks is inserted; the slice and the cursor commit together, so
# a gate killed midway leaves the job where its last slice ended, for any gate to go on.
NEXT_CREATING = """
SELECT * FROM jobs WHERE creating ORDER BY created_at LIMIT 1 FOR UPDATE SKIP LOCKED
"""
ADVANCE = """
UPDATE jobs SET cursor = $2, tasks_created = tasks_created + $3, creating = $4,
                tasks_total = CASE WHEN only_missing THEN tasks_created + $3 ELSE tasks_total END
WHERE job_id = $1
"""
SLICE_TASKS = 50_000  # tasks per transaction of background creation


async def create_job(
    pool: Pool, body: v1.JobCreate, max_attempts: int, background_over: int
) -> tuple[v1.JobCreated, bool]:
    """Create the job; an idempotent repeat returns the first job (and False). A job of at most
    `background_over` tasks is created whole in this transaction; a larger one is only recorded
    here (`creating`), and its tasks are inserted by `create_slice`, in the background."""
    p = body.params
    params = p.model_dump(exclude_none=True)
    chunks = -(-p.count // body.chunk_size)
    background = chunks > background_over
    attempts = body.max_attempts or max_attempts
    async with transaction(pool) as conn:
        job_id = await conn.fetchval(
            INSERT_JOB,
            body.source,
            params,
            body.chunk_size,
            body.priority,
            0 if body.only_missing else chunks,
            body.idempotency_key,
            body.collection,
            background,
            attempts,
            body.only_missing,
            host_key(p.url_template),
        )
        if job_id is None:
            existing = await conn.fetchrow(BY_KEY, body.idempotency_key)
            assert existing is not None  # ON CONFLICT waited for the first insert to commit
            asked = (body.source, params, body.chunk_size, body.priority)
            found = (existing["source"], existing["params"], existing["chunk_size"], existing["priority"])
            if found != asked:
                raise IdempotencyConflict(
                    f"idempotency_key {body.idempotency_key!r} was first used for a different job "
                    f"({existing['job_id']}); use a new key for new work"
                )
            repeat = v1.JobCreated(
                job_id=existing["job_id"],
                tasks_created=existing["tasks_created"],
                creating=existing["creating"],
            )
            return repeat, False
        await revisits.schedule(conn, job_id, body.revisit)
        if background:
            return v1.JobCreated(job_id=job_id, tasks_created=0, creating=True), True
        job = await conn.fetchrow(GET_JOB, job_id)
        assert job is not None  # inserted above, in this transaction
        created, cursor, _ = await _insert_slice(conn, job, everything=True)
        await conn.execute(ADVANCE, job_id, cursor, created, False)
    return v1.JobCreated(job_id=job_id, tasks_created=created), True


async def create_slice(pool: Pool) -> int | None:
    """Insert the next slice of a job being created in the background: how many tasks (None:
    no job is waiting for its tasks)."""
    async with transaction(pool) as conn:
        job = await conn.fetchrow(NEXT_CREATING)
        if job is None:
            return None
        created, cursor, done = await _insert_slice(conn, job, everything=False)
        await conn.execute(ADVANCE, job["job_id"], cursor, created, not done)
    if done:
        log.info("job %s: all %d tasks created", job["job_id"], job["tasks_created"] + created)
    return created


async def _insert_slice(conn: Connection, job: Any, *, everything: bool) -> tuple[int, int, bool]:
    """Insert the job's tasks from its cursor on (all of them, or one slice): (tasks inserted,
    the new cursor, whether that was the last of them)."""
    if job["harvest"] is not None:
        return await harvests.insert_slice(conn, job, everything)
    p = job["params"]
    extras = {k: p[k] for k in TASK_EXTRAS if k in p}
    size, count, start = job["chunk_size"], int(p["count"]), int(p["start_id"])
    template, ext = p["url_template"], p.get("ext", "")
    if job["only_missing"]:
        # Ids are looked at in slices of whole chunks; a chunk is cut only at a slice's end.
        ids = count - job["cursor"] if everything else min(SLICE_TASKS * size, count - job["cursor"])
        status = await conn.execute(
            INSERT_MISSING,
            job["job_id"],
            template,
            start + job["cursor"],
            size,
            ids,
            ext,
            job["priority"],
            job["max_attempts"],
            extras,
            job["collection"],
            timeout=BULK_TIMEOUT,
        )
        cursor = job["cursor"] + ids
        return _inserted(status), cursor, cursor >= count
    chunks = -(-count // size)
    end = chunks if everything else min(job["cursor"] + SLICE_TASKS, chunks)
    status = await conn.execute(
        INSERT_CHUNKS,
        job["job_id"],
        template,
        start,
        size,
        count,
        ext,
        job["priority"],
        job["max_attempts"],
        end,
        extras,
        job["collection"],
        job["cursor"],
        timeout=BULK_TIMEOUT,
    )
    return _inserted(status), end, end >= chunks


def _inserted(status: str) -> int:
    return int(status.rsplit(" ", 1)[1])  # "INSERT 0 <rows>"


async def refetch_failed(pool: Pool, job_id: UUID, chunk_size: int, max_attempts: int) -> v1.JobCreated:
    """New tasks for the job's documents that failed and were never stored since."""
    async with transaction(pool) as conn:
        if await conn.fetchval("SELECT 1 FROM jobs WHERE job_id = $1 FOR UPDATE", job_id) is None:
            raise JobNotFound(f"job {job_id} not found")
        created = _inserted(await conn.execute(INSERT_REFETCH, job_id, chunk_size, max_attempts))
        await conn.execute(ADD_TOTAL, job_id, created)
    return v1.JobCreated(job_id=job_id, tasks_created=created)


async def get_job(pool: Pool, job_id: UUID) -> v1.Job:
    async with connection(pool) as conn:
        job = await conn.fetchrow(GET_JOB, job_id)
        if job is None:
            raise JobNotFound(f"job {job_id} not found")
    # From the counters the triggers keep: a job of ten million tasks is read in a few rows.
    prefix = f"job:{job_id}:"
    sums = ("downloaded", "docs_failed", "docs_skipped")
    found = await stats.counters(pool, stats.job_counter_names(job_id) + [prefix + k for k in sums])
    counts = {status: found[prefix + status.value] for status in v1.TaskStatus}
    finished = sum(counts[s] for s in v1.TERMINAL_STATUSES)
    return v1.Job(
        **{
            k: job[k]
            for k in (
                "job_id",
                "source",
                "params",
                "chunk_size",
                "priority",
                "tasks_total",
                "created_at",
                "paused",
                "paused_reason",
                "paused_at",
                "collection",
                "creating",
                "tasks_created",
                "harvest",
                "runs",
                "next_run_at",
                "revisit",
                "next_revisit_at",
            )  # fmt: skip
        },
        counts=counts,
        documents_downloaded=found[prefix + "downloaded"],
        documents_failed=found[prefix + "docs_failed"],
        documents_skipped=found[prefix + "docs_skipped"],
        progress=finished / job["tasks_total"] if job["tasks_total"] else 1.0,
    )


# A job's failed documents (still not recorded) by code, the newest examples of each.
FAILURE_CODES = """
WITH f AS (
    SELECT doc_id, url, error, code, failed_at
    FROM document_failures df
    WHERE job_id = $1 AND NOT EXISTS (
        SELECT 1 FROM documents d
        WHERE d.collection = (SELECT collection FROM jobs WHERE job_id = $1) AND d.doc_id = df.doc_id
    )
), ranked AS (
    SELECT *, row_number() OVER (PARTITION BY code ORDER BY failed_at DESC, doc_id) AS n,
           count(*) OVER (PARTITION BY code) AS total
    FROM f
)
SELECT code, total, doc_id, url, error FROM ranked WHERE n <= $2 ORDER BY total DESC, code, n
"""


async def failure_summary(pool: Pool, job_id: UUID, examples: int = 3) -> v1.FailureSummary:
    """The job's failed documents grouped by code (not_found, too_large, blocked, …) with counts
    and the newest examples of each."""
    async with connection(pool) as conn:
        if await conn.fetchval("SELECT 1 FROM jobs WHERE job_id = $1", job_id) is None:
            raise JobNotFound(f"job {job_id} not found")
        rows = await conn.fetch(FAILURE_CODES, job_id, examples)
    groups: dict[str, v1.FailureReason] = {}
    for r in rows:
        group = groups.setdefault(r["code"], v1.FailureReason(code=r["code"], documents=r["total"]))
        group.examples.append(v1.FailedDocument(doc_id=r["doc_id"], url=r["url"], error=r["error"]))
    reasons = list(groups.values())
    return v1.FailureSummary(job_id=job_id, documents=sum(g.documents for g in reasons), reasons=reasons)
