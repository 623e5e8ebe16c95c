"""Jobs: one request split server-side into many tasks, in one INSERT … SELECT."""

from __future__ import annotations

from uuid import UUID

from protocol import v1
from server.db.pool import Pool, connection, transaction
from server.errors import IdempotencyConflict, JobNotFound

INSERT_JOB = """
INSERT INTO jobs (source, params, chunk_size, priority, tasks_total, idempotency_key, collection)
VALUES ($1, $2, $3, $4, $5, $6, $7)
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
FROM generate_series(0::bigint, $9::bigint - 1) AS g
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
# and the job's politeness (protocol.v1.TaskParams).
TASK_EXTRAS = tuple(v1.TaskParams.model_fields)
INSERT_REFETCH = INSERT_REFETCH.format(extras=", ".join(f"'{k}', j.params->'{k}'" for k in TASK_EXTRAS))

ADD_TOTAL = "UPDATE jobs SET tasks_total = tasks_total + $2 WHERE job_id = $1"

GET_JOB = "SELECT * FROM jobs WHERE job_id = $1"
# Ten million tasks take minutes to insert; the pool's default statement timeout is for normal work.
BULK_TIMEOUT = 3600.0
BY_KEY = "SELECT job_id, source, params, chunk_size, priority FROM jobs WHERE idempotency_key = $1"

PROGRESS = """
SELECT status, count(*) AS n,
       coalesce(sum(documents_downloaded), 0) AS downloaded,
       coalesce(sum(documents_failed), 0) AS failed,
       coalesce(sum(documents_skipped), 0) AS skipped
FROM tasks WHERE job_id = $1 GROUP BY status
"""


async def create_job(pool: Pool, body: v1.JobCreate, max_attempts: int) -> tuple[v1.JobCreated, bool]:
    """Create the job and its tasks atomically; an idempotent repeat returns the first job."""
    p = body.params
    params = p.model_dump(exclude_none=True)
    # What every task of the job carries besides its range.
    extras = {k: params[k] for k in TASK_EXTRAS if k in params}
    chunks = -(-p.count // body.chunk_size)
    async with transaction(pool) as conn:
        job_id = await conn.fetchval(
            INSERT_JOB,
            body.source,
            params,
            body.chunk_size,
            body.priority,
            chunks,
            body.idempotency_key,
            body.collection,
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
            return v1.JobCreated(job_id=existing["job_id"], tasks_created=0), False
        attempts = body.max_attempts or max_attempts
        if body.only_missing:
            status = await conn.execute(
                INSERT_MISSING,
                job_id,
                p.url_template,
                p.start_id,
                body.chunk_size,
                p.count,
                p.ext,
                body.priority,
                attempts,
                extras,
                body.collection,
                timeout=BULK_TIMEOUT,
            )
            chunks = _inserted(status)
            await conn.execute("UPDATE jobs SET tasks_total = $2 WHERE job_id = $1", job_id, chunks)
        else:
            await conn.execute(
                INSERT_CHUNKS,
                job_id,
                p.url_template,
                p.start_id,
                body.chunk_size,
                p.count,
                p.ext,
                body.priority,
                attempts,
                chunks,
                extras,
                body.collection,
                timeout=BULK_TIMEOUT,
            )
    return v1.JobCreated(job_id=job_id, tasks_created=chunks), True


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
        rows = await conn.fetch(PROGRESS, job_id)
    counts = {status: 0 for status in v1.TaskStatus}
    counts.update({v1.TaskStatus(r["status"]): r["n"] for r in rows})
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
            )  # fmt: skip
        },
        counts=counts,
        documents_downloaded=sum(r["downloaded"] for r in rows),
        documents_failed=sum(r["failed"] for r in rows),
        documents_skipped=sum(r["skipped"] for r in rows),
        progress=finished / job["tasks_total"] if job["tasks_total"] else 1.0,
    )


# A job's failed documents (still not recorded) by kind of reason, the newest examples of each.
FAILURE_REASONS = r"""
WITH f AS (
    SELECT doc_id, url, error, failed_at,
           CASE
               WHEN error ~ '^HTTP [0-9]{3}: a block' THEN 'blocked'
               WHEN error ~ '^HTTP [0-9]{3}' THEN substring(error FROM '^HTTP [0-9]{3}')
               WHEN error ILIKE '%max-document-size%' OR error ILIKE '%too large%' THEN 'too large'
               WHEN error ILIKE 'a block%' OR error ILIKE '%block page%' OR error ILIKE 'an HTML page%'
                    OR error ILIKE 'the origin sent %' OR error ILIKE 'not the document%' THEN 'blocked'
               WHEN error ILIKE 'refused%' THEN 'refused by the network policy'
               WHEN error ILIKE '%timed out%' THEN 'timed out'
               WHEN error ILIKE '%not on the task''s hosts%' THEN 'off the task''s hosts'
               WHEN error ILIKE 'storage:%' THEN 'storage'
               WHEN error ILIKE '%redirects%' THEN 'too many redirects'
               WHEN error ILIKE '%Content-Encoding%' OR error ILIKE '%cut short%' THEN 'broken encoding'
               WHEN error ~* '^[a-z]*(Error|Exception)' THEN substring(error FROM '^[A-Za-z]*')
               ELSE left(regexp_replace(coalesce(error, 'no reason given'), '[0-9]+', 'N', 'g'), 60)
           END AS reason
    FROM document_failures df
    WHERE job_id = $1 AND NOT EXISTS (
        SELECT 1 FROM documents d
        WHERE d.collection = (SELECT collection FROM jobs WHERE job_id = $1) AND d.doc_id = df.doc_id
    )
), ranked AS (
    SELECT *, row_number() OVER (PARTITION BY reason ORDER BY failed_at DESC, doc_id) AS n,
           count(*) OVER (PARTITION BY reason) AS total
    FROM f
)
SELECT reason, total, doc_id, url, error FROM ranked WHERE n <= $2 ORDER BY total DESC, reason, n
"""


async def failure_summary(pool: Pool, job_id: UUID, examples: int = 3) -> v1.FailureSummary:
    """The job's failed documents grouped by reason (404, too large, blocked, …) with counts and
    the newest examples of each."""
    async with connection(pool) as conn:
        if await conn.fetchval("SELECT 1 FROM jobs WHERE job_id = $1", job_id) is None:
            raise JobNotFound(f"job {job_id} not found")
        rows = await conn.fetch(FAILURE_REASONS, job_id, examples)
    groups: dict[str, v1.FailureReason] = {}
    for r in rows:
        group = groups.setdefault(r["reason"], v1.FailureReason(reason=r["reason"], documents=r["total"]))
        group.examples.append(v1.FailedDocument(doc_id=r["doc_id"], url=r["url"], error=r["error"]))
    reasons = list(groups.values())
    return v1.FailureSummary(job_id=job_id, documents=sum(g.documents for g in reasons), reasons=reasons)
