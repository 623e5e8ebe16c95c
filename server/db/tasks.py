"""Tasks: create, lease, report, finish. One transaction per function; models out.

`owner` arguments are the calling client's id, or None for the admin (who may
touch any task). Every client write is fenced by `lease_token` in its WHERE:
zero rows updated means the lease is not current, and `classify_refusal` says
whether that is a 404 (not your task) or a 409 (lease lost).
"""

from __future__ import annotations

import json
import uuid
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from protocol import v1
from server.db import documents
from server.db.pool import Connection, Pool, connection, transaction
from server.documents import Failed, Recorded
from server.errors import Conflict, LeaseLost, NotFound

TASK_COLUMNS = """
    task_id, job_id, source, search_params, start_page, max_documents, params,
    priority, max_attempts, attempts, run_after, idempotency_key, status,
    assigned_to, lease_token, lease_expires_at, documents_downloaded,
    documents_failed, documents_skipped, result_summary, last_error,
    created_at, updated_at, assigned_at, completed_at, task_seq
"""

# Equal jitter: half the exponential delay fixed, half random, so retries of
# tasks that failed together spread out instead of returning in lock step.
BACKOFF = """
    now() + make_interval(secs =>
        least($BASE::float8 * power(2, greatest(attempts - 1, 0)), $CAP::float8)
        * (0.5 + random() * 0.5))
"""

INSERT_ONE = f"""
INSERT INTO tasks (source, search_params, start_page, max_documents, params,
                   priority, max_attempts, idempotency_key, run_after)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, coalesce($9, now()))
ON CONFLICT (idempotency_key) DO NOTHING
RETURNING {TASK_COLUMNS}
"""

INSERT_MANY = """
INSERT INTO tasks (task_id, source, search_params, start_page, max_documents, params,
                   priority, max_attempts, idempotency_key, run_after)
SELECT t.task_id, t.source, t.search_params::jsonb, t.start_page, t.max_documents,
       t.params::jsonb, t.priority, t.max_attempts, t.idempotency_key,
       coalesce(t.run_after, now())
FROM unnest($1::uuid[], $2::text[], $3::text[], $4::int[], $5::int[], $6::text[],
            $7::int[], $8::int[], $9::text[], $10::timestamptz[])
     AS t(task_id, source, search_params, start_page, max_documents, params,
          priority, max_attempts, idempotency_key, run_after)
ON CONFLICT (idempotency_key) DO NOTHING
RETURNING task_id
"""

SELECT_BY_KEYS = "SELECT task_id, idempotency_key FROM tasks WHERE idempotency_key = ANY($1::text[])"

LEASE = f"""
WITH candidates AS (
    -- Walk tasks_leasable (priority, then age) and stop after $1 rows.
    -- SKIP LOCKED lets concurrent leasers pass over rows another transaction
    -- is claiming instead of queueing behind it, so no task goes out twice.
    SELECT task_id FROM tasks
    WHERE status = 'pending' AND run_after <= now()
    ORDER BY priority DESC, task_seq
    LIMIT $1
    FOR UPDATE SKIP LOCKED
), leased AS (
    -- Attempts count leases, so an expired lease is already a spent attempt.
    UPDATE tasks t
    SET status = 'assigned', assigned_to = $2, session_id = $3,
        lease_token = gen_random_uuid(),
        lease_expires_at = now() + make_interval(secs => $4::float8),
        attempts = t.attempts + 1, assigned_at = now(), updated_at = now()
    FROM candidates c
    WHERE t.task_id = c.task_id
    RETURNING t.*
), logged AS (
    INSERT INTO task_events (task_id, event, client_id, lease_token)
    SELECT task_id, 'leased', assigned_to, lease_token FROM leased
)
SELECT {TASK_COLUMNS} FROM leased ORDER BY priority DESC, task_seq
"""

# The fence, shared by every client write: the token must be the current
# lease, still live, and (for a client) the task must be its own. Checking it
# in the WHERE makes check-and-write one atomic step.
FENCE = """
    task_id = $1 AND lease_token = $2 AND status = 'assigned'
    AND lease_expires_at > now() AND ($3::uuid IS NULL OR assigned_to = $3)
"""

COMPLETE = f"""
WITH done AS (
    UPDATE tasks
    SET status = 'completed', documents_downloaded = $4, documents_failed = $5,
        documents_skipped = $6, result_summary = $7, completed_at = now(),
        updated_at = now(), lease_expires_at = NULL
    WHERE {FENCE}
    RETURNING *
), logged AS (
    INSERT INTO task_events (task_id, event, client_id, lease_token, documents)
    SELECT task_id, 'completed', assigned_to, lease_token, documents_downloaded FROM done
)
SELECT {TASK_COLUMNS} FROM done
"""

# FENCE for row t of tasks against row i of a batch's input.
BATCH_FENCE = "t.lease_token = i.lease_token AND t.status = 'assigned' AND t.lease_expires_at > now()"

# Many completions in one statement. Rows are locked in task_id order first, so
# two batches that overlap (a zombie's and the new holder's) cannot deadlock.
COMPLETE_MANY = f"""
WITH input AS (
    SELECT * FROM unnest($1::uuid[], $2::uuid[], $4::int[], $5::int[], $6::int[], $7::jsonb[])
         AS i(task_id, lease_token, downloaded, failed, skipped, summary)
), locked AS (
    SELECT t.task_id FROM tasks t JOIN input i USING (task_id)
    WHERE {BATCH_FENCE} AND ($3::uuid IS NULL OR t.assigned_to = $3)
    ORDER BY t.task_id
    FOR UPDATE OF t
), done AS (
    UPDATE tasks t
    SET status = 'completed', documents_downloaded = i.downloaded, documents_failed = i.failed,
        documents_skipped = i.skipped, result_summary = i.summary, completed_at = now(),
        updated_at = now(), lease_expires_at = NULL
    FROM input i, locked l
    -- the fence again after the lock: the lease may have changed while we waited
    WHERE t.task_id = i.task_id AND t.task_id = l.task_id AND {BATCH_FENCE}
    RETURNING t.*
), logged AS (
    INSERT INTO task_events (task_id, event, client_id, lease_token, documents)
    SELECT task_id, 'completed', assigned_to, lease_token, documents_downloaded FROM done
)
SELECT {TASK_COLUMNS} FROM done
"""

PROGRESS = f"""
UPDATE tasks
SET documents_downloaded = coalesce($5, documents_downloaded),
    documents_failed = coalesce($6, documents_failed),
    documents_skipped = coalesce($7, documents_skipped),
    lease_expires_at = now() + make_interval(secs => $4::float8),
    updated_at = now()
WHERE {FENCE}
RETURNING {TASK_COLUMNS}
"""

FAIL = f"""
WITH failed AS (
    UPDATE tasks
    SET status = CASE WHEN $4 AND attempts < max_attempts THEN 'pending' ELSE 'failed' END,
        run_after = CASE WHEN $4 AND attempts < max_attempts
                         THEN {BACKOFF.replace("$BASE", "$6").replace("$CAP", "$7")}
                         ELSE run_after END,
        completed_at = CASE WHEN $4 AND attempts < max_attempts THEN NULL ELSE now() END,
        last_error = $5, lease_expires_at = NULL, session_id = NULL, updated_at = now()
    WHERE {FENCE}
    RETURNING *
), logged AS (
    INSERT INTO task_events (task_id, event, client_id, lease_token, detail)
    SELECT task_id, CASE WHEN status = 'failed' THEN 'failed' ELSE 'retry_scheduled' END,
           assigned_to, lease_token, last_error FROM failed
)
SELECT {TASK_COLUMNS} FROM failed
"""

REAP = f"""
WITH expired AS (
    SELECT task_id FROM tasks
    WHERE status = 'assigned' AND lease_expires_at <= now()
    ORDER BY lease_expires_at
    LIMIT 1000
    FOR UPDATE SKIP LOCKED
), reaped AS (
    -- An expired lease is a failed attempt: back off, or fail when spent.
    UPDATE tasks t
    SET status = CASE WHEN t.attempts < t.max_attempts THEN 'pending' ELSE 'failed' END,
        run_after = CASE WHEN t.attempts < t.max_attempts
                         THEN {BACKOFF.replace("$BASE", "$1").replace("$CAP", "$2")}
                         ELSE t.run_after END,
        completed_at = CASE WHEN t.attempts < t.max_attempts THEN NULL ELSE now() END,
        last_error = 'lease expired at ' || to_char(t.lease_expires_at AT TIME ZONE 'UTC',
                                                    'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
        lease_expires_at = NULL, session_id = NULL, updated_at = now()
    FROM expired e
    WHERE t.task_id = e.task_id
    RETURNING t.task_id, t.assigned_to, t.lease_token, t.status
), logged AS (
    INSERT INTO task_events (task_id, event, client_id, lease_token, detail)
    SELECT task_id, 'expired', assigned_to, lease_token, status FROM reaped
)
SELECT count(*) FROM reaped
"""

GET = f"SELECT {TASK_COLUMNS} FROM tasks WHERE task_id = $1"

WAS_LEASED_BY = """
SELECT EXISTS (
    SELECT 1 FROM task_events
    WHERE task_id = $1 AND lease_token = $2 AND event = 'leased'
      AND ($3::uuid IS NULL OR client_id = $3)
)
"""

CANCEL = f"""
WITH cancelled AS (
    UPDATE tasks
    SET status = 'cancelled', lease_expires_at = NULL, completed_at = now(), updated_at = now()
    WHERE task_id = $1 AND status IN ('pending', 'assigned')
    RETURNING *
), logged AS (
    INSERT INTO task_events (task_id, event, client_id, lease_token)
    SELECT task_id, 'cancelled', assigned_to, lease_token FROM cancelled
)
SELECT {TASK_COLUMNS} FROM cancelled
"""

RETRY = f"""
WITH retried AS (
    UPDATE tasks
    SET status = 'pending', attempts = 0, run_after = now(), lease_expires_at = NULL,
        session_id = NULL, completed_at = NULL, updated_at = now()
    WHERE task_id = $1 AND status IN ('failed', 'cancelled')
    RETURNING *
), logged AS (
    INSERT INTO task_events (task_id, event) SELECT task_id, 'retried' FROM retried
)
SELECT {TASK_COLUMNS} FROM retried
"""

LIST_ALL = f"""
SELECT {TASK_COLUMNS} FROM tasks WHERE task_seq < $1 ORDER BY task_seq DESC LIMIT $2
"""

LIST_BY_STATUS = f"""
SELECT {TASK_COLUMNS} FROM tasks
WHERE status = $3 AND task_seq < $1 ORDER BY task_seq DESC LIMIT $2
"""

NOTIFY = "SELECT pg_notify('docgate_tasks', '')"

END_OF_LIST = 2**63 - 1
Reports = tuple[list[Recorded], list[Failed]]
NO_REPORTS: Reports = ([], [])


@dataclass(frozen=True)
class Backoff:
    base_seconds: float
    cap_seconds: float


def to_task(record: Any) -> v1.Task:
    return v1.Task.model_validate(dict(record))


def to_leased(record: Any) -> v1.LeasedTask:
    return v1.LeasedTask.model_validate(dict(record))


async def create_task(pool: Pool, body: v1.TaskCreate, max_attempts: int) -> v1.TaskCreated:
    """Insert one task; with a known idempotency_key return the existing one instead."""
    args = (
        body.source,
        body.search_params,
        body.start_page,
        body.max_documents,
        body.params,
        body.priority,
        body.max_attempts or max_attempts,
        body.idempotency_key,
        body.run_after,
    )
    async with transaction(pool) as conn:
        record = await conn.fetchrow(INSERT_ONE, *args)
        if record is not None:
            return v1.TaskCreated(**dict(record), created=True)
        existing = await conn.fetchrow(
            f"SELECT {TASK_COLUMNS} FROM tasks WHERE idempotency_key = $1", body.idempotency_key
        )
    # ON CONFLICT waited for the other insert to commit, so the row is visible now.
    assert existing is not None
    return v1.TaskCreated(**dict(existing), created=False)


async def create_tasks(pool: Pool, tasks: list[v1.TaskCreate], max_attempts: int) -> v1.TaskBatchCreated:
    """Insert many tasks in one statement; ids come back in the order given."""
    ids = [uuid.uuid4() for _ in tasks]
    columns: list[list[Any]] = [
        ids,
        [t.source for t in tasks],
        [json.dumps(t.search_params) for t in tasks],
        [t.start_page for t in tasks],
        [t.max_documents for t in tasks],
        [json.dumps(t.params) for t in tasks],
        [t.priority for t in tasks],
        [t.max_attempts or max_attempts for t in tasks],
        [t.idempotency_key for t in tasks],
        [t.run_after for t in tasks],
    ]
    async with transaction(pool) as conn:
        inserted = {r["task_id"] for r in await conn.fetch(INSERT_MANY, *columns)}
        keys = [t.idempotency_key for t, i in zip(tasks, ids, strict=True) if i not in inserted]
        existing = {r["idempotency_key"]: r["task_id"] for r in await conn.fetch(SELECT_BY_KEYS, keys)}
    task_ids = [i if i in inserted else existing[t.idempotency_key] for t, i in zip(tasks, ids, strict=True)]
    return v1.TaskBatchCreated(
        task_ids=task_ids, tasks_created=len(inserted), tasks_existing=len(tasks) - len(inserted)
    )


# Is anything leasable now? The long-poll's fallback probe: the same rows LEASE would walk.
ANY_LEASABLE = "SELECT EXISTS (SELECT 1 FROM tasks WHERE status = 'pending' AND run_after <= now())"


async def any_leasable(pool: Pool) -> bool:
    async with connection(pool) as conn:
        return bool(await conn.fetchval(ANY_LEASABLE))


async def lease_tasks(
    pool: Pool, *, owner: UUID | None, session_id: str | None, max_tasks: int, lease_seconds: float
) -> list[v1.LeasedTask]:
    async with connection(pool) as conn:
        records = await conn.fetch(LEASE, max_tasks, owner, session_id, lease_seconds)
    return [to_leased(r) for r in records]


async def classify_refusal(conn: Connection, task_id: UUID, lease_token: UUID, owner: UUID | None) -> v1.Task:
    """Explain why a fenced write touched no row; return the task only for an idempotent repeat."""
    record = await conn.fetchrow(GET, task_id)
    if record is None:
        raise NotFound(f"task {task_id} not found")
    task = to_task(record)
    if task.status is v1.TaskStatus.COMPLETED and record["lease_token"] == lease_token:
        return task
    was_holder = await conn.fetchval(WAS_LEASED_BY, task_id, lease_token, owner)
    if owner is not None and task.assigned_to != owner and not was_holder:
        raise NotFound(f"task {task_id} not found")
    if not was_holder:
        raise LeaseLost(f"lease_token does not match the current lease of task {task_id}")
    raise LeaseLost(
        f"lease on task {task_id} is no longer current (task is {task.status.value}); "
        "drop this task's results"
    )


async def complete_task(
    pool: Pool, body: v1.TaskComplete, owner: UUID | None, reports: Reports = NO_REPORTS
) -> v1.Task:
    """Complete a leased task and record its documents, in one fenced transaction."""
    args = (
        body.task_id,
        body.lease_token,
        owner,
        body.documents_downloaded,
        body.documents_failed,
        body.documents_skipped,
        body.result_summary,
    )
    # One statement is atomic on its own; documents need it and their inserts in one transaction.
    async with _atomic(pool, any(reports)) as conn:
        record = await conn.fetchrow(COMPLETE, *args)
        if record is not None:
            await documents.record(conn, record, *reports)
            return to_task(record)
        repeat = await classify_refusal(conn, body.task_id, body.lease_token, owner)
    return repeat


def _atomic(pool: Pool, several_statements: bool) -> AbstractAsyncContextManager[Connection]:
    """A transaction when several statements must commit together; else a bare connection
    (saving BEGIN and COMMIT, two round trips)."""
    return transaction(pool) if several_statements else connection(pool)


async def complete_tasks(
    pool: Pool, bodies: list[v1.TaskComplete], owner: UUID | None, reports: list[Reports]
) -> list[v1.CompletionResult]:
    """Complete many leased tasks in one transaction; each is fenced and answered on its own."""
    args = (
        [b.task_id for b in bodies],
        [b.lease_token for b in bodies],
        owner,
        [b.documents_downloaded for b in bodies],
        [b.documents_failed for b in bodies],
        [b.documents_skipped for b in bodies],
        [b.result_summary for b in bodies],
    )
    results: list[v1.CompletionResult] = []
    async with _atomic(pool, any(r for pair in reports for r in pair)) as conn:
        done = {r["task_id"]: r for r in await conn.fetch(COMPLETE_MANY, *args)}
        for body, (recorded, failed) in zip(bodies, reports, strict=True):
            record = done.get(body.task_id)
            if record is not None:
                await documents.record(conn, record, recorded, failed)
                results.append(v1.CompletionResult(task_id=body.task_id, status_code=200))
                continue
            try:
                await classify_refusal(conn, body.task_id, body.lease_token, owner)
            except (NotFound, LeaseLost) as exc:
                results.append(
                    v1.CompletionResult(task_id=body.task_id, status_code=exc.status_code, error=exc.message)
                )
            else:  # a repeat of a completion that already went through
                results.append(v1.CompletionResult(task_id=body.task_id, status_code=200))
    return results


async def report_progress(
    pool: Pool,
    task_id: UUID,
    body: v1.TaskProgress,
    owner: UUID | None,
    lease_seconds: float,
    reports: Reports = NO_REPORTS,
) -> v1.Task:
    """Extend the lease and record documents stored so far, in one fenced transaction."""
    args = (
        task_id,
        body.lease_token,
        owner,
        lease_seconds,
        body.documents_downloaded,
        body.documents_failed,
        body.documents_skipped,
    )
    async with transaction(pool) as conn:
        record = await conn.fetchrow(PROGRESS, *args)
        if record is not None:
            await documents.record(conn, record, *reports)
            return to_task(record)
        await classify_refusal(conn, task_id, body.lease_token, owner)
    raise LeaseLost(f"task {task_id} is completed; progress is no longer accepted")


async def fail_task(
    pool: Pool, task_id: UUID, body: v1.TaskFail, owner: UUID | None, backoff: Backoff
) -> v1.Task:
    args = (
        task_id,
        body.lease_token,
        owner,
        body.retryable,
        body.error,
        backoff.base_seconds,
        backoff.cap_seconds,
    )
    async with transaction(pool) as conn:
        record = await conn.fetchrow(FAIL, *args)
        if record is not None:
            return to_task(record)
        await classify_refusal(conn, task_id, body.lease_token, owner)
    raise LeaseLost(f"task {task_id} is completed; it can no longer fail")


async def reap_expired(pool: Pool, backoff: Backoff) -> int:
    """Turn expired leases into failed attempts; return how many."""
    async with transaction(pool) as conn:
        count: int = await conn.fetchval(REAP, backoff.base_seconds, backoff.cap_seconds)
        if count:
            await conn.execute(NOTIFY)
    return count


async def get_task(pool: Pool, task_id: UUID, owner: UUID | None) -> v1.Task:
    async with connection(pool) as conn:
        record = await conn.fetchrow(GET, task_id)
    if record is None or (owner is not None and record["assigned_to"] != owner):
        raise NotFound(f"task {task_id} not found")
    return to_task(record)


async def _admin_transition(pool: Pool, sql: str, task_id: UUID, verb: str) -> v1.Task:
    async with transaction(pool) as conn:
        record = await conn.fetchrow(sql, task_id)
        if record is not None:
            if verb == "retry":
                await conn.execute(NOTIFY)
            return to_task(record)
        current = await conn.fetchrow(GET, task_id)
    if current is None:
        raise NotFound(f"task {task_id} not found")
    task = to_task(current)
    idempotent = {"cancel": v1.TaskStatus.CANCELLED, "retry": v1.TaskStatus.PENDING}
    if task.status is idempotent[verb]:
        return task
    raise Conflict(f"cannot {verb} task {task_id}: it is {task.status.value}")


async def cancel_task(pool: Pool, task_id: UUID) -> v1.Task:
    return await _admin_transition(pool, CANCEL, task_id, "cancel")


async def retry_task(pool: Pool, task_id: UUID) -> v1.Task:
    return await _admin_transition(pool, RETRY, task_id, "retry")


def encode_cursor(seq: int) -> str:
    return str(seq)


def decode_cursor(cursor: str | None) -> int:
    if cursor is None:
        return END_OF_LIST
    if not cursor.isdigit() or len(cursor) > 19:
        raise ValueError("cursor must be a value returned as next_cursor")
    return int(cursor)


async def list_tasks(pool: Pool, status: v1.TaskStatus | None, limit: int, before: int) -> v1.TaskList:
    async with connection(pool) as conn:
        if status is None:
            records = await conn.fetch(LIST_ALL, before, limit)
        else:
            records = await conn.fetch(LIST_BY_STATUS, before, limit, status.value)
    more = len(records) == limit
    cursor = encode_cursor(records[-1]["task_seq"]) if more and records else None
    return v1.TaskList(tasks=[to_task(r) for r in records], next_cursor=cursor)
