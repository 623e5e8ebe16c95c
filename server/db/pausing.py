"""Jobs that pause: an operator's `POST /api/v1/jobs/{id}/pause|resume`, and the job's own
dead-man switch, which pauses it when most of its recent answers were block pages.

A paused job's pending tasks are held out of the leasable index (run_after 'infinity') in
batches, so leasing never walks past them however large the job; tasks that come back pending
while it is paused (an expired lease, a retry) are passed over by the lease itself, and held by
`hold_returned` in housekeeping. Resuming makes the held tasks due at once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from uuid import UUID

from server.db.pool import Pool, connection, transaction
from server.errors import JobNotFound

log = logging.getLogger("docgate.gate")
BATCH = 10_000

PAUSE = """
UPDATE jobs SET paused = true, paused_reason = $2, paused_at = now()
WHERE job_id = $1 AND NOT paused RETURNING job_id
"""
RESUME = """
UPDATE jobs SET paused = false, paused_reason = NULL, paused_at = NULL, resumed_at = now() WHERE job_id = $1
"""
EXISTS = "SELECT paused FROM jobs WHERE job_id = $1"
# Each batch checks the job is still paused (or still running): a resume racing a pause wins.
HOLD = f"""
WITH batch AS (
    SELECT task_id FROM tasks
    WHERE job_id = $1 AND status = 'pending' AND run_after < 'infinity'
      AND EXISTS (SELECT 1 FROM jobs WHERE job_id = $1 AND paused)
    LIMIT {BATCH} FOR UPDATE SKIP LOCKED
)
UPDATE tasks t SET run_after = 'infinity', updated_at = now() FROM batch b WHERE t.task_id = b.task_id
"""
RELEASE = f"""
WITH batch AS (
    SELECT task_id FROM tasks
    WHERE job_id = $1 AND status = 'pending' AND run_after = 'infinity'
      AND EXISTS (SELECT 1 FROM jobs WHERE job_id = $1 AND NOT paused)
    LIMIT {BATCH} FOR UPDATE SKIP LOCKED
)
UPDATE tasks t SET run_after = now(), updated_at = now() FROM batch b WHERE t.task_id = b.task_id
"""
PAUSED = "SELECT job_id FROM jobs WHERE paused"
NOTIFY = "SELECT pg_notify('docgate_tasks', '')"
# A job's answers over the last five minutes (since it was last resumed: a resumed job is judged
# afresh): documents stored by its completed attempts, and block pages its handed-back ones saw.
RECENT = """
SELECT coalesce(sum(e.documents) FILTER (WHERE e.event = 'completed'), 0) AS ok,
       coalesce(sum(e.blocked), 0) AS blocked
FROM task_events e JOIN tasks t ON t.task_id = e.task_id
WHERE e.at > greatest(now() - interval '5 minutes',
                     coalesce((SELECT resumed_at FROM jobs WHERE job_id = $1), '-infinity'))
  AND e.event IN ('completed', 'retry_scheduled', 'failed') AND t.job_id = $1
"""


@dataclass(frozen=True)
class Switch:
    """JOB_PAUSE_RATIO and JOB_PAUSE_MIN_ANSWERS: blocks over answers that pause a job."""

    ratio: float = 0.5
    min_answers: int = 20


async def pause_job(pool: Pool, job_id: UUID, reason: str) -> bool:
    """Pause the job (False: it was paused already) and hold its pending tasks."""
    async with connection(pool) as conn:
        if await conn.fetchval(EXISTS, job_id) is None:
            raise JobNotFound(f"job {job_id} not found")
        paused = await conn.fetchval(PAUSE, job_id, reason) is not None
    await _batches(pool, HOLD, job_id)
    return paused


async def resume_job(pool: Pool, job_id: UUID) -> None:
    """Resume the job: its held tasks are due at once, and long-polling clients hear of them."""
    async with connection(pool) as conn:
        if await conn.fetchval(EXISTS, job_id) is None:
            raise JobNotFound(f"job {job_id} not found")
        await conn.execute(RESUME, job_id)
    await _batches(pool, RELEASE, job_id)
    async with connection(pool) as conn:
        await conn.execute(NOTIFY)


async def _batches(pool: Pool, sql: str, job_id: UUID) -> None:
    while True:
        async with transaction(pool) as conn:
            status = await conn.execute(sql, job_id)
        if int(status.rsplit(" ", 1)[-1]) < BATCH:
            return


async def count_paused(pool: Pool) -> int:
    async with connection(pool) as conn:
        return int(await conn.fetchval("SELECT count(*) FROM jobs WHERE paused"))


async def hold_returned(pool: Pool) -> None:
    """Housekeeping: hold the tasks of paused jobs that came back pending since they paused."""
    async with connection(pool) as conn:
        jobs = [r["job_id"] for r in await conn.fetch(PAUSED)]
    for job_id in jobs:
        await _batches(pool, HOLD, job_id)


async def judge(pool: Pool, job_id: UUID, switch: Switch) -> str | None:
    """The job's dead-man switch, after a handed-back attempt reported block pages: pause the job
    when most of its recent answers were blocks. The reason it paused, or None."""
    async with connection(pool) as conn:
        recent = await conn.fetchrow(RECENT, job_id)
    assert recent is not None
    ok, blocked = int(recent["ok"]), int(recent["blocked"])
    answers = ok + blocked
    if answers < switch.min_answers or blocked <= switch.ratio * answers:
        return None
    reason = (
        f"paused by itself: {blocked} of its last {answers} answers (5 minutes) were block pages; "
        f"resume with POST /api/v1/jobs/{job_id}/resume"
    )
    if await pause_job(pool, job_id, reason):
        log.warning("job %s %s", job_id, reason)
    return reason


PAUSED_OF = """
SELECT t.task_id FROM tasks t JOIN jobs j USING (job_id)
WHERE t.task_id = ANY($1::uuid[]) AND t.status = 'assigned' AND j.paused
  AND ($2::uuid IS NULL OR t.assigned_to = $2)
"""


async def paused_tasks(pool: Pool, task_ids: list[UUID], owner: UUID | None) -> list[UUID]:
    """Of these tasks out on lease to `owner` (None: the admin, any), those whose job is paused:
    the client hands them back at once, what it has not fetched unfetched (the grants' reply
    carries them)."""
    if not task_ids:
        return []
    async with connection(pool) as conn:
        return [r["task_id"] for r in await conn.fetch(PAUSED_OF, task_ids, owner)]
