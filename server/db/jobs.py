"""Jobs: one request split server-side into many tasks, in one INSERT … SELECT."""

from __future__ import annotations

from uuid import UUID

from protocol import v1
from server.db.pool import Pool, connection, transaction
from server.errors import NotFound

INSERT_JOB = """
INSERT INTO jobs (source, params, chunk_size, priority, tasks_total, idempotency_key)
VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (idempotency_key) DO NOTHING
RETURNING job_id
"""

# The chunks are generated inside PostgreSQL: no rows cross the wire, and the
# ORDER BY gives tasks ascending task_seq, so a job is leased in id order.
INSERT_CHUNKS = """
INSERT INTO tasks (job_id, source, params, max_documents, priority, max_attempts)
SELECT $1, 'id_range',
       jsonb_build_object('url_template', $2::text, 'start_id', $3::bigint + g * $4::bigint,
                          'count', least($4::bigint, $5::bigint - g * $4::bigint),
                          'ext', $6::text),
       least($4::bigint, $5::bigint - g * $4::bigint), $7, $8
FROM generate_series(0::bigint, $9::bigint - 1) AS g
ORDER BY g
"""

GET_JOB = "SELECT * FROM jobs WHERE job_id = $1"
BY_KEY = "SELECT job_id FROM jobs WHERE idempotency_key = $1"

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
    chunks = -(-p.count // body.chunk_size)
    async with transaction(pool) as conn:
        job_id = await conn.fetchval(
            INSERT_JOB, body.source, p.model_dump(), body.chunk_size, body.priority, chunks,
            body.idempotency_key,
        )
        if job_id is None:
            existing = await conn.fetchval(BY_KEY, body.idempotency_key)
            return v1.JobCreated(job_id=existing, tasks_created=0), False
        await conn.execute(
            INSERT_CHUNKS, job_id, p.url_template, p.start_id, body.chunk_size, p.count, p.ext,
            body.priority, body.max_attempts or max_attempts, chunks,
        )
    return v1.JobCreated(job_id=job_id, tasks_created=chunks), True


async def get_job(pool: Pool, job_id: UUID) -> v1.Job:
    async with connection(pool) as conn:
        job = await conn.fetchrow(GET_JOB, job_id)
        if job is None:
            raise NotFound(f"job {job_id} not found")
        rows = await conn.fetch(PROGRESS, job_id)
    counts = {status: 0 for status in v1.TaskStatus}
    counts.update({v1.TaskStatus(r["status"]): r["n"] for r in rows})
    finished = sum(counts[s] for s in v1.TERMINAL_STATUSES)
    return v1.Job(
        **{k: job[k] for k in ("job_id", "source", "params", "chunk_size", "priority",
                               "tasks_total", "created_at")},
        counts=counts,
        documents_downloaded=sum(r["downloaded"] for r in rows),
        documents_failed=sum(r["failed"] for r in rows),
        documents_skipped=sum(r["skipped"] for r in rows),
        progress=finished / job["tasks_total"] if job["tasks_total"] else 1.0,
    )
