"""The task state machine: every transition of a task, each one statement, with its SQL.

    pending ──lease──▶ assigned ──complete / complete-many──▶ completed
       ▲                 │ │ ╰──progress / extend (heartbeat): lease pushed out
       │                 │ ╰──fail (retryable, attempts left) / reap (lease ran out)──╮
       ╰──retry / retry-failed── failed ◀──fail (final) / reap (no attempts left)     │
       ╰─────────────────────────────────────────── back-off ◀────────────────────────╯
    pending | assigned ──cancel / cancel-job──▶ cancelled ──retry──▶ pending

`owner` arguments are the calling client's id, or None for the admin (who may
touch any task). Every client write is fenced in its WHERE (`lease_fence`):
zero rows means the lease is not the caller's, and `classify_refusal` says
whether that is NotYourTask or LeaseLost. Functions return models, or for a
batch one result per item (the task, or the error it would have raised alone).

Why one module of this size: the fence is a clause of every statement here, and reading the
transitions side by side is how one checks that a task ends once.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from protocol import v1
from server.db import documents, harvests
from server.db.pool import Connection, Pool, connection, transaction
from server.db.tasks import GET, TASK_COLUMNS, to_leased, to_task
from server.domain.reports import NO_REPORTS, Reports, check_in_task
from server.errors import Conflict, JobNotFound, LeaseCapReached, LeaseLost, NotYourTask, SessionEnded

NO_CLIENT = "00000000-0000-0000-0000-000000000000"  # the admin's processes (ENABLE_AUTH=false)


@dataclass(frozen=True)
class Backoff:
    base_seconds: float
    cap_seconds: float


def backoff(*, base: str, cap: str, attempts: str = "attempts") -> str:
    """When a failed attempt may run again. Equal jitter: half the exponential delay fixed, half
    random, so retries of tasks that failed together spread out instead of returning in lock
    step. `base` and `cap` are the SQL parameters (e.g. "$6") holding the seconds."""
    return f"""
    now() + make_interval(secs =>
        least({base}::float8 * power(2, greatest({attempts} - 1, 0)), {cap}::float8)
        * (0.5 + random() * 0.5))"""


def lease_fence(*, lease: str, owner: str, session: str, row: str = "") -> str:
    """The fence every client write about a task carries in its WHERE, so check and write are one
    atomic step: the lease is live and the caller's. With a token, the token must be the current
    lease (the strong form: it also fences a restarted process of the same client). Without one
    (the seed's completion body), the task must be assigned to the caller and, when the caller
    sent X-Session-Id, to that process. `lease` (the token), `owner` and `session` are SQL expressions (the
    parameters, or a batch's columns); `row` qualifies the tasks columns ("t.")."""
    return f"""
    {row}status = 'assigned' AND {row}lease_expires_at > now()
    AND ({owner}::uuid IS NULL OR {row}assigned_to = {owner})
    AND ({row}lease_token = {lease}
         OR {lease}::uuid IS NULL AND {row}assigned_to IS NOT DISTINCT FROM {owner}
            AND ({session}::text IS NULL OR {row}session_id = {session}))"""


# The most the caller ($1) may hold: its key's max_leases, else MAX_LEASES_PER_CLIENT ($2).
CAP = "coalesce((SELECT max_leases FROM clients WHERE client_id = {owner}), {default})"
# A process that said goodbye (DELETE /api/v1/session) is leased nothing more.
ENDED = f"""EXISTS (SELECT 1 FROM ended_sessions
               WHERE client_id = coalesce({{owner}}, '{NO_CLIENT}'::uuid) AND session_id = {{session}})"""


def host_load(host: str) -> str:
    """`host`'s tasks in flight over every job on it (an SQL expression; 0 for NULL)."""
    return f"""CASE WHEN {host} IS NULL THEN 0 ELSE (
    SELECT coalesce(sum((SELECT count(*) FROM tasks a
                         WHERE a.job_id = jj.job_id AND a.status = 'assigned')), 0)
    FROM jobs jj WHERE jj.host = {host}) END"""


def host_connections(host: str, default: str) -> str:
    """`host`'s connection budget: hosts.max_connections, else `default` (HOST_CONNECTIONS)."""
    return f"coalesce((SELECT max_connections FROM hosts WHERE host = {host}), {default})"


def room_left(*, host: str, load: str, connections: str, per_connection: str) -> str:
    """How many more of `host`'s tasks may go out: its tasks in flight (`load`) stay under
    `per_connection` per connection of its budget (`connections`; 0: no limit). No known host
    (NULL), or `per_connection` 0: no limit (a large number)."""
    return f"""CASE WHEN {host} IS NULL OR {connections} = 0 OR {per_connection} = 0
                THEN {NO_ROOM_LIMIT}
                ELSE greatest(0, {per_connection} * {connections} - {load}) END"""


NO_ROOM_LIMIT = 1_000_000

# The jobs with a due task, found by skipping through tasks_leasable_by_job one job at a time
# (a loose index scan): its cost grows with the jobs that have work, not with every job there
# ever was, nor with their tasks. A recursive CTE, to be named `open_jobs` in a WITH RECURSIVE.
OPEN_JOBS = """open_jobs(job_id) AS (
    (SELECT job_id FROM tasks WHERE job_id IS NOT NULL AND status = 'pending' AND due
     ORDER BY job_id LIMIT 1)
    UNION ALL
    SELECT (SELECT t.job_id FROM tasks t WHERE t.job_id > o.job_id AND t.status = 'pending' AND t.due
            ORDER BY t.job_id LIMIT 1)
    FROM open_jobs o WHERE o.job_id IS NOT NULL
)"""

# A task some clients may not lease: a check of their own documents, nor a client on their hosts
# (server/db/verify.py; the caller's host looked up once, an InitPlan).
NOT_EXCLUDED = """(exclude_clients IS NULL OR $2::uuid IS NULL OR NOT (
    $2::uuid = ANY(exclude_clients) OR coalesce(
        exclude_hosts && (SELECT array_agg(client_host) FROM clients WHERE client_id = $2::uuid), false)))"""

LEASE = f"""
WITH RECURSIVE {OPEN_JOBS}, cap AS (SELECT {CAP.format(owner="$2", default="$5")} AS n
), held AS (
    -- The cap: what the caller holds already counts against it, so one client cannot lease
    -- the whole queue (tasks_assigned_to; the admin, NULL, holds none). A revoked client, or a
    -- process that said goodbye, may hold nothing, from that moment, on every gate.
    SELECT CASE WHEN EXISTS (SELECT 1 FROM clients WHERE client_id = $2 AND revoked_at IS NOT NULL)
                  OR {ENDED.format(owner="$2", session="$3")}
                THEN (SELECT n FROM cap) ELSE count(*) END AS n
    FROM tasks WHERE assigned_to = $2 AND status = 'assigned'
), room AS (
    SELECT greatest(0, least($1, (SELECT n FROM cap) - (SELECT n FROM held))) AS n
), direct AS (
    -- Tasks of no job, in priority then age order (tasks_leasable_by_job, job_id NULL).
    -- SKIP LOCKED lets concurrent leasers pass over rows another transaction is claiming
    -- instead of queueing behind it, so no task goes out twice. Only due tasks are in the
    -- index: one not yet due (a retry in back-off, a paused job's held task) waits in
    -- tasks_waiting until housekeeping promotes it (PROMOTE), so a backlog in back-off costs
    -- the lease nothing.
    SELECT task_id, priority, task_seq FROM tasks
    WHERE job_id IS NULL AND status = 'pending' AND due AND run_after <= now() AND {NOT_EXCLUDED}
    ORDER BY priority DESC, task_seq
    LIMIT (SELECT n FROM room)
    FOR UPDATE SKIP LOCKED
), working AS (
    -- The jobs with due work, not paused (a paused job's task that came back pending since
    -- the pause is passed over until housekeeping holds it).
    SELECT job_id, host, priority, created_at FROM jobs
    WHERE NOT paused AND job_id IN (SELECT job_id FROM open_jobs)
), from_jobs AS (
    -- Host by host (jobs.host; a job of no known host is a host of its own): the hosts whose
    -- best job has the highest priority first, among them the least busy (tasks in flight
    -- per connection), then the one with the oldest job; of each host no more tasks than
    -- leave its tasks in flight, over all its jobs, at most $7 per connection of its budget
    -- (hosts.max_connections, else HOST_CONNECTIONS, $6; 0: no limit); within a host its jobs
    -- in priority then age order, each job's tasks in theirs. So a fleet bigger than one
    -- host's budget goes on to the next host's work instead of queueing on the first job's.
    SELECT c.task_id, c.priority, c.task_seq
    FROM (SELECT g.host, g.job_id,
                 {room_left(host="g.host", load="l.n", connections="b.n", per_connection="$7")} AS room
          FROM (SELECT host, CASE WHEN host IS NULL THEN job_id END AS job_id,
                       max(priority) AS best, min(created_at) AS first
                FROM working
                GROUP BY host, CASE WHEN host IS NULL THEN job_id END) g
          CROSS JOIN LATERAL (SELECT CASE WHEN $7 = 0 THEN 0 ELSE {host_load("g.host")} END AS n
                              OFFSET 0) l
          CROSS JOIN LATERAL (SELECT {host_connections("g.host", "$6")} AS n OFFSET 0) b
          -- the least busy host first (tasks in flight per connection), unless $7 is 0
          ORDER BY g.best DESC, CASE WHEN $7 = 0 THEN 0 ELSE l.n::float8 / greatest(b.n, 1) END,
                   g.first) h
    CROSS JOIN LATERAL (
        SELECT t.task_id, t.priority, t.task_seq
        FROM (SELECT job_id FROM working
              WHERE host = h.host OR h.host IS NULL AND job_id = h.job_id
              ORDER BY priority DESC, created_at, job_id) j
        CROSS JOIN LATERAL (
            SELECT task_id, priority, task_seq FROM tasks
            WHERE job_id = j.job_id AND status = 'pending' AND due AND run_after <= now() AND {NOT_EXCLUDED}
            ORDER BY priority DESC, task_seq
            LIMIT (SELECT n FROM room)
            FOR UPDATE SKIP LOCKED
        ) t
        LIMIT least((SELECT n FROM room), h.room)
    ) c
    LIMIT (SELECT n FROM room)
), candidates AS (
    SELECT task_id FROM (SELECT * FROM direct UNION ALL SELECT * FROM from_jobs) c
    ORDER BY priority DESC, task_seq
    LIMIT (SELECT n FROM room)
), leased AS (
    -- Attempts count leases, so an expired lease is already a spent attempt.
    UPDATE tasks t
    SET status = 'assigned', assigned_to = $2, session_id = $3,
        lease_token = gen_random_uuid(),
        lease_expires_at = now() + make_interval(secs => $4::float8),
        attempts = t.attempts + 1, assigned_at = now(), updated_at = now(),
        -- what earlier attempts recorded: this attempt's counts are added to it (totals, below)
        earlier_downloaded = t.documents_downloaded
    -- By primary key, whatever the planner guesses of the LIMIT (a join on a mis-estimated
    -- CTE turned into a hash of the whole table on a small one).
    WHERE t.task_id = ANY (ARRAY(SELECT task_id FROM candidates))
    RETURNING t.*
), logged AS (
    INSERT INTO task_events (task_id, event, client_id, lease_token)
    SELECT task_id, 'leased', assigned_to, lease_token FROM leased
)
SELECT {TASK_COLUMNS}, (SELECT s.profile FROM sources s WHERE s.name = leased.source) AS profile
FROM leased ORDER BY priority DESC, task_seq
"""

# Parameters of the one-task client writes: $1 task_id, $2 lease_token (or NULL),
# $3 owner (NULL for the admin), $4 session id (or NULL), then the write's own.
FENCE = "task_id = $1 AND " + lease_fence(lease="$2", owner="$3", session="$4")


# A task's counters are its totals over its attempts: an attempt reports its own, and what an
# earlier attempt stored, it finds held (skipped); it is counted as downloaded once, not skipped.
def totals(downloaded: str, skipped: str, row: str = "") -> str:
    return (
        f"documents_downloaded = {row}earlier_downloaded + {downloaded}, "
        f"documents_skipped = greatest(0, {skipped} - {row}earlier_downloaded)"
    )


COMPLETE = f"""
WITH done AS (
    UPDATE tasks
    SET status = 'completed', {totals("$5", "$7")}, documents_failed = $6,
        result_summary = $8, completed_at = now(),
        updated_at = now(), lease_expires_at = NULL
    WHERE {FENCE}
    RETURNING *
), logged AS (
    INSERT INTO task_events (task_id, event, client_id, lease_token, documents)
    SELECT task_id, 'completed', assigned_to, lease_token, documents_downloaded FROM done
)
SELECT {TASK_COLUMNS} FROM done
"""

# FENCE for row t of tasks against row i of a batch's input ($3 owner, $4 session).
BATCH_FENCE = lease_fence(lease="i.lease_token", owner="$3", session="$4", row="t.")

# Many completions in one statement. Rows are locked in task_id order first, so
# two batches that overlap (a zombie's and the new holder's) cannot deadlock.
COMPLETE_MANY = f"""
WITH input AS (
    SELECT * FROM unnest($1::uuid[], $2::uuid[], $5::int[], $6::int[], $7::int[], $8::jsonb[])
         AS i(task_id, lease_token, downloaded, failed, skipped, summary)
), locked AS (
    SELECT t.task_id FROM tasks t JOIN input i USING (task_id)
    WHERE {BATCH_FENCE}
    ORDER BY t.task_id
    FOR UPDATE OF t
), done AS (
    UPDATE tasks t
    SET status = 'completed', {totals("i.downloaded", "i.skipped", "t.")}, documents_failed = i.failed,
        result_summary = i.summary, completed_at = now(),
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
SET documents_downloaded = coalesce(earlier_downloaded + $6, documents_downloaded),
    documents_failed = coalesce($7, documents_failed),
    documents_skipped = coalesce(greatest(0, $8 - earlier_downloaded), documents_skipped),
    lease_expires_at = now() + make_interval(secs => $5::float8),
    updated_at = now()
WHERE {FENCE}
RETURNING {TASK_COLUMNS}
"""

# $9 false: the attempt is given back (the client's store failed, not the work). SET sees the
# old row, so every condition uses the attempts the task ends up with.
FAIL = f"""
WITH failed AS (
    UPDATE tasks
    SET attempts = attempts - (NOT $9)::int,
        status = CASE WHEN $5 AND attempts - (NOT $9)::int < max_attempts THEN 'pending' ELSE 'failed' END,
        run_after = CASE WHEN $5 AND attempts - (NOT $9)::int < max_attempts
                         THEN {backoff(base="$7", cap="$8")}
                         ELSE run_after END,
        completed_at = CASE WHEN $5 AND attempts - (NOT $9)::int < max_attempts THEN NULL ELSE now() END,
        last_error = $6, last_error_code = $11, last_error_page = $12,
        lease_expires_at = NULL, session_id = NULL, updated_at = now()
    WHERE {FENCE}
    RETURNING *
), logged AS (
    INSERT INTO task_events (task_id, event, client_id, lease_token, detail, blocked)
    SELECT task_id, CASE WHEN status = 'failed' THEN 'failed' ELSE 'retry_scheduled' END,
           assigned_to, lease_token, last_error, nullif($10, 0) FROM failed
)
SELECT {TASK_COLUMNS} FROM failed
"""

# The task an upload through the gate belongs to, if its lease is current: the same fence, read-only.
CURRENT_LEASE = f"SELECT task_id, source, params, collection FROM tasks WHERE {FENCE}"
CURRENT_TASK = f"SELECT task_id, job_id, attempts, collection FROM tasks WHERE {FENCE}"

# A heartbeat extends only the leases of the calling process (session), so a
# client restarted under the same key never keeps its dead predecessor's
# leases alive; and, when it names them, only the tasks it is working on.
# ...and never more of them than the key may hold ($5, MAX_LEASES_PER_CLIENT): a cap lowered
# below what a client holds lets its latest leases run out, oldest kept.
EXTEND = f"""
UPDATE tasks
SET lease_expires_at = now() + make_interval(secs => $3::float8), updated_at = now()
WHERE task_id = ANY (ARRAY(
    SELECT task_id FROM tasks
    WHERE assigned_to = $1 AND status = 'assigned' AND lease_expires_at > now()
      AND session_id IS NOT DISTINCT FROM $2 AND ($4::uuid[] IS NULL OR task_id = ANY($4::uuid[]))
    ORDER BY assigned_at, task_id
    LIMIT {CAP.format(owner="$1", default="$5")}))
RETURNING lease_expires_at
"""
# Why a lease found nothing, in one round trip: what the caller ($1) holds against its cap,
# and whether its process ($3) said goodbye.
HELD_AND_CAP = f"""
SELECT (SELECT count(*) FROM tasks WHERE assigned_to = $1 AND status = 'assigned') AS held,
       {CAP.format(owner="$1", default="$2")} AS cap,
       $3::text IS NOT NULL AND {ENDED.format(owner="$1", session="$3")} AS ended
"""

# A process's goodbye (or a lease answered to a connection already gone): its leases back to
# pending at once, the attempt given back. $1 owner (NULL: the admin), $2 session, $3 the tasks
# (NULL: all of the session's).
HAND_BACK_SESSION = f"""
WITH ended AS (
    INSERT INTO ended_sessions (client_id, session_id)
    SELECT coalesce($1, '{NO_CLIENT}'::uuid), $2 WHERE $3::uuid[] IS NULL
    ON CONFLICT DO NOTHING
), handed AS (
    UPDATE tasks
    SET status = 'pending', attempts = greatest(attempts - 1, 0), run_after = now(),
        lease_expires_at = NULL, session_id = NULL, updated_at = now()
    WHERE assigned_to IS NOT DISTINCT FROM $1 AND session_id = $2 AND status = 'assigned'
      AND ($3::uuid[] IS NULL OR task_id = ANY($3::uuid[]))
    RETURNING task_id, assigned_to, lease_token
), logged AS (
    INSERT INTO task_events (task_id, event, client_id, lease_token, detail)
    SELECT task_id, 'handed_back', assigned_to, lease_token, $4 FROM handed
)
SELECT count(*) FROM handed
"""
# Housekeeping: what a lease racing a goodbye gave to the process that said it.
HAND_BACK_ENDED = f"""
WITH handed AS (
    UPDATE tasks t
    SET status = 'pending', attempts = greatest(t.attempts - 1, 0), run_after = now(),
        lease_expires_at = NULL, session_id = NULL, updated_at = now()
    FROM ended_sessions e
    WHERE t.status = 'assigned' AND t.session_id = e.session_id
      AND coalesce(t.assigned_to, '{NO_CLIENT}'::uuid) = e.client_id
    RETURNING t.task_id, t.assigned_to, t.lease_token
), logged AS (
    INSERT INTO task_events (task_id, event, client_id, lease_token, detail)
    SELECT task_id, 'handed_back', assigned_to, lease_token, 'session ended' FROM handed
)
SELECT count(*) FROM handed
"""
FORGET_ENDED = "DELETE FROM ended_sessions WHERE ended_at < now() - interval '1 day'"

REAP = f"""
WITH expired AS (
    SELECT task_id, lease_expires_at FROM tasks
    WHERE status = 'assigned' AND lease_expires_at <= now()
    ORDER BY lease_expires_at
    LIMIT 1000
    FOR UPDATE SKIP LOCKED
), reaped AS (
    -- An expired lease is a failed attempt: back off, or fail when spent.
    UPDATE tasks t
    SET status = CASE WHEN t.attempts < t.max_attempts THEN 'pending' ELSE 'failed' END,
        run_after = CASE WHEN t.attempts < t.max_attempts
                         THEN {backoff(base="$1", cap="$2", attempts="t.attempts")}
                         ELSE t.run_after END,
        completed_at = CASE WHEN t.attempts < t.max_attempts THEN NULL ELSE now() END,
        last_error = 'lease expired at ' || to_char(t.lease_expires_at AT TIME ZONE 'UTC',
                                                    'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
        last_error_code = 'lease_expired', last_error_page = NULL,
        lease_expires_at = NULL, session_id = NULL, updated_at = now()
    FROM expired e
    WHERE t.task_id = e.task_id
    RETURNING t.task_id, t.assigned_to, t.lease_token, t.status, e.lease_expires_at AS ran_out
), logged AS (
    -- The event keeps when the lease ran out: an audit can tell a lease reaped early.
    INSERT INTO task_events (task_id, event, client_id, lease_token, detail)
    SELECT task_id, 'expired', assigned_to, lease_token,
           status || ' (lease ran out ' ||
           to_char(ran_out AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') || ')'
    FROM reaped
)
SELECT count(*) FROM reaped
"""

# Did this caller ever hold the task (under this token, when one is given)?
WAS_LEASED_BY = """
SELECT EXISTS (
    SELECT 1 FROM task_events
    WHERE task_id = $1 AND event = 'leased'
      AND ($2::uuid IS NULL OR lease_token = $2) AND ($3::uuid IS NULL OR client_id = $3)
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

CANCEL_JOB = """
WITH cancelled AS (
    UPDATE tasks SET status = 'cancelled', lease_expires_at = NULL, completed_at = now(),
                     updated_at = now()
    WHERE job_id = $1 AND status IN ('pending', 'assigned')
    RETURNING task_id, assigned_to, lease_token
), logged AS (
    INSERT INTO task_events (task_id, event, client_id, lease_token)
    SELECT task_id, 'cancelled', assigned_to, lease_token FROM cancelled
)
SELECT count(*) FROM cancelled
"""

# A job still being created stops growing when cancelled: what was created is the whole of it.
STOP_CREATING = "UPDATE jobs SET creating = false, tasks_total = tasks_created WHERE job_id = $1 AND creating"

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

RETRY_FAILED = """
WITH picked AS (
    SELECT task_id FROM tasks WHERE status = 'failed' ORDER BY task_seq DESC LIMIT $1
    FOR UPDATE SKIP LOCKED
), retried AS (
    UPDATE tasks t SET status = 'pending', attempts = 0, run_after = now(), completed_at = NULL,
                       updated_at = now()
    FROM picked p WHERE t.task_id = p.task_id
    RETURNING t.task_id
), logged AS (
    INSERT INTO task_events (task_id, event) SELECT task_id, 'retried' FROM retried
)
SELECT count(*) FROM retried
"""

# A revoked client's leases go back to pending at once, the attempt they spent given back (the
# client did not fail the work; the operator took it away).
HAND_BACK_CLIENT = """
WITH handed AS (
    UPDATE tasks
    SET status = 'pending', attempts = greatest(attempts - 1, 0), run_after = now(),
        lease_expires_at = NULL, session_id = NULL, updated_at = now()
    WHERE assigned_to = $1 AND status = 'assigned'
    RETURNING task_id, assigned_to, lease_token
), logged AS (
    INSERT INTO task_events (task_id, event, client_id, lease_token, detail)
    SELECT task_id, 'handed_back', assigned_to, lease_token, 'client revoked' FROM handed
)
SELECT count(*) FROM handed
"""

# Is anything leasable now? The long-poll's fallback probe: the same rows LEASE would walk.
_ROOM_OF_J = room_left(
    host="j.host", load=host_load("j.host"), connections=host_connections("j.host", "$1"), per_connection="$2"
)
# How many tasks could be leased now, counted no further than $3: the due tasks of no job, and
# each open job's room on its host (jobs sharing a host count its room each: an over-count wakes
# a waiter too many, never one too few).
LEASABLE = f"""
WITH RECURSIVE {OPEN_JOBS}
SELECT least($3::int, (
    SELECT count(*) FROM (
        SELECT 1 FROM tasks WHERE job_id IS NULL AND status = 'pending' AND due AND run_after <= now()
        LIMIT $3::int
    ) direct
) + (
    SELECT coalesce(sum(least(room, $3::int)), 0) FROM (
        SELECT {_ROOM_OF_J} AS room FROM jobs j
        WHERE NOT paused AND job_id IN (SELECT job_id FROM open_jobs)
    ) rooms
))::int
"""

# Tasks whose run_after has come, into the leasable index, oldest due first, in batches of $1.
# The tasks_due trigger clears `due` whenever a task goes pending with run_after ahead.
PROMOTE = """
WITH ready AS (
    SELECT task_id FROM tasks WHERE status = 'pending' AND NOT due AND run_after <= now()
    ORDER BY run_after LIMIT $1
    FOR UPDATE SKIP LOCKED
)
UPDATE tasks SET due = true WHERE task_id = ANY (ARRAY(SELECT task_id FROM ready))
"""
PROMOTE_BATCH = 10_000
NOTIFY = "SELECT pg_notify('docgate_tasks', '')"


@dataclass(frozen=True)
class Caller:
    """Who writes about a task: the client (None for the admin) and, when sent, its session."""

    owner: UUID | None
    session_id: str | None = None


# One result per completion of a batch: the task, or the error it would have raised alone.
Completion = v1.Task | LeaseLost | NotYourTask


@dataclass(frozen=True)
class Spread:
    """How a lease spreads the fleet over hosts: HOST_CONNECTIONS (a host's connection budget
    unless it has its own) and HOST_TASKS_PER_CONNECTION (0: no limit)."""

    connections: int
    tasks_per_connection: int


async def leasable(pool: Pool, spread: Spread, most: int) -> int:
    """How many tasks could be leased now, counted no further than `most`."""
    async with connection(pool) as conn:
        return int(await conn.fetchval(LEASABLE, spread.connections, spread.tasks_per_connection, most))


async def lease_tasks(
    pool: Pool,
    *,
    owner: UUID | None,
    session_id: str | None,
    max_tasks: int,
    lease_seconds: float,
    max_held: int,
    spread: Spread,
) -> list[v1.LeasedTask]:
    """Lease up to `max_tasks`, and never so many that the caller holds more than its cap
    (`max_held`, or its key's); LeaseCapReached when it holds that many already, SessionEnded
    when its process (`session_id`) said goodbye."""
    async with connection(pool) as conn:
        records = await conn.fetch(
            LEASE, max_tasks, owner, session_id, lease_seconds, max_held,
            spread.connections, spread.tasks_per_connection,
        )  # fmt: skip
        if not records and (owner is not None or session_id is not None):
            row = await conn.fetchrow(HELD_AND_CAP, owner, max_held, session_id)
            assert row is not None  # a SELECT of expressions returns its one row
            if row["ended"]:
                raise SessionEnded(
                    f"the process {session_id!r} said goodbye: a new process sends a new X-Session-Id"
                )
            if owner is not None and row["held"] >= row["cap"]:
                raise LeaseCapReached(
                    f"this client holds {row['held']} leases and may hold {row['cap']} "
                    "(MAX_LEASES_PER_CLIENT, or its key's max_leases): finish some first"
                )
    return [to_leased(r) for r in records]


async def hand_back_session(
    pool: Pool,
    owner: UUID | None,
    session_id: str,
    task_ids: list[UUID] | None = None,
    why: str = "session ended",
) -> int:
    """A process's leases (`task_ids`, or all of them, and then it is leased nothing more) back
    to pending at once, their attempts given back."""
    async with connection(pool) as conn:
        handed: int = await conn.fetchval(HAND_BACK_SESSION, owner, session_id, task_ids, why)
        if handed:
            await conn.execute(NOTIFY)
    return handed


async def hand_back_ended(pool: Pool) -> int:
    """Housekeeping: leases a lease racing a goodbye gave to the process that said it."""
    async with connection(pool) as conn:
        handed: int = await conn.fetchval(HAND_BACK_ENDED)
        await conn.execute(FORGET_ENDED)
        if handed:
            await conn.execute(NOTIFY)
    return handed


async def classify_refusal(
    conn: Connection, task_id: UUID, lease_token: UUID | None, caller: Caller
) -> v1.Task:
    """Explain why a fenced write touched no row; return the task only for an idempotent repeat."""
    record = await conn.fetchrow(GET, task_id)
    if record is None:
        raise NotYourTask(f"task {task_id} not found")
    task = to_task(record)
    if task.status is v1.TaskStatus.COMPLETED and _same_lease(record, lease_token, caller):
        return task
    was_holder = await conn.fetchval(WAS_LEASED_BY, task_id, lease_token, caller.owner)
    if caller.owner is not None and task.assigned_to != caller.owner and not was_holder:
        raise NotYourTask(f"task {task_id} not found")
    if not was_holder:
        raise LeaseLost(f"lease_token does not match the current lease of task {task_id}")
    raise LeaseLost(
        f"lease on task {task_id} is no longer current (task is {task.status.value}); "
        "drop this task's results"
    )


def _same_lease(record: Any, lease_token: UUID | None, caller: Caller) -> bool:
    """Did the lease that completed the task belong to this caller (a repeat of its completion)?"""
    if lease_token is not None:
        return bool(record["lease_token"] == lease_token)
    same_session = caller.session_id is None or record["session_id"] == caller.session_id
    return bool(record["assigned_to"] == caller.owner and same_session)


def _atomic(pool: Pool, several_statements: bool) -> AbstractAsyncContextManager[Connection]:
    """A transaction when several statements must commit together; else a bare connection
    (saving BEGIN and COMMIT, two round trips)."""
    return transaction(pool) if several_statements else connection(pool)


async def complete_task(
    pool: Pool, body: v1.TaskComplete, caller: Caller, reports: Reports = NO_REPORTS
) -> v1.Task:
    """Complete a leased task and record its documents, in one fenced transaction."""
    args = (
        body.task_id,
        body.lease_token,
        caller.owner,
        caller.session_id,
        body.documents_downloaded,
        body.documents_failed,
        body.documents_skipped,
        body.result_summary,
    )
    # One statement is atomic on its own; documents need it and their inserts in one transaction,
    # a harvest window its ledger line (a search's completion carries its listing).
    async with _atomic(pool, bool(reports) or body.listing is not None) as conn:
        record = await conn.fetchrow(COMPLETE, *args)
        if record is not None:
            await documents.record(conn, record, reports)
            if record["window_id"] is not None:
                await harvests.settle(conn, record, body.listing)
            return to_task(record)
        repeat = await classify_refusal(conn, body.task_id, body.lease_token, caller)
    return repeat


async def complete_tasks(
    pool: Pool, bodies: list[v1.TaskComplete], caller: Caller, reports: list[Reports]
) -> list[Completion]:
    """Complete many leased tasks in one transaction; each is fenced and answered on its own."""
    args = (
        [b.task_id for b in bodies],
        [b.lease_token for b in bodies],
        caller.owner,
        caller.session_id,
        [b.documents_downloaded for b in bodies],
        [b.documents_failed for b in bodies],
        [b.documents_skipped for b in bodies],
        [b.result_summary for b in bodies],
    )
    results: list[Completion] = []
    listed = any(b.listing is not None for b in bodies)
    async with _atomic(pool, any(reports) or listed) as conn:
        done = {r["task_id"]: r for r in await conn.fetch(COMPLETE_MANY, *args)}
        for body, report in zip(bodies, reports, strict=True):
            record = done.get(body.task_id)
            if record is not None:
                await documents.record(conn, record, report)
                if record["window_id"] is not None:
                    await harvests.settle(conn, record, body.listing)
                results.append(to_task(record))
                continue
            try:  # a repeat of a completion that already went through answers with the task
                results.append(await classify_refusal(conn, body.task_id, body.lease_token, caller))
            except (NotYourTask, LeaseLost) as exc:
                results.append(exc)
    return results


async def report_progress(
    pool: Pool,
    task_id: UUID,
    body: v1.TaskProgress,
    caller: Caller,
    lease_seconds: float,
    reports: Reports = NO_REPORTS,
) -> v1.Task:
    """Extend the lease and record documents stored so far, in one fenced transaction."""
    counts = (body.documents_downloaded, body.documents_failed, body.documents_skipped)
    args = (task_id, body.lease_token, caller.owner, caller.session_id, lease_seconds, *counts)
    return await _fenced_write(pool, PROGRESS, args, caller, reports, "progress is no longer accepted")


async def fail_task(
    pool: Pool, task_id: UUID, body: v1.TaskFail, caller: Caller, backoff: Backoff
) -> v1.Task:
    delay = (backoff.base_seconds, backoff.cap_seconds)
    args = (
        task_id, body.lease_token, caller.owner, caller.session_id, body.retryable, body.error, *delay,
        body.attempt_spent, body.blocked, body.code, body.page,
    )  # fmt: skip
    return await _fenced_write(pool, FAIL, args, caller, NO_REPORTS, "it can no longer fail")


async def _fenced_write(
    pool: Pool, sql: str, args: tuple[Any, ...], caller: Caller, reports: Reports, too_late: str
) -> v1.Task:
    """One fenced write (args start with task_id and lease_token) and its documents, in one
    transaction; a refusal explained, a completed task answered as `too_late`."""
    task_id, lease_token = args[0], args[1]
    async with transaction(pool) as conn:
        record = await conn.fetchrow(sql, *args)
        if record is not None:
            await documents.record(conn, record, reports)
            return to_task(record)
        await classify_refusal(conn, task_id, lease_token, caller)
    raise LeaseLost(f"task {task_id} is completed; {too_late}")


async def check_upload(pool: Pool, task_id: UUID, lease_token: UUID, caller: Caller, doc_id: str) -> str:
    """An upload needs the current lease of a task that contains the document: its collection."""
    async with connection(pool) as conn:
        task = await conn.fetchrow(CURRENT_LEASE, task_id, lease_token, caller.owner, caller.session_id)
    if task is None:
        raise LeaseLost(f"lease on task {task_id} is not current; the upload was refused")
    check_in_task(task, [doc_id])
    return str(task["collection"])


async def check_lease(pool: Pool, task_id: UUID, lease_token: UUID, caller: Caller) -> Any:
    """The task whose current lease this is (LeaseLost when it is not): its job and collection."""
    async with connection(pool) as conn:
        task = await conn.fetchrow(CURRENT_TASK, task_id, lease_token, caller.owner, caller.session_id)
    if task is None:
        raise LeaseLost(f"lease on task {task_id} is not current; the upload was refused")
    return task


async def extend_leases(
    conn: Connection,
    client_id: UUID,
    session_id: str | None,
    lease_seconds: float,
    task_ids: list[UUID] | None,
    max_held: int,
) -> list[datetime]:
    """A heartbeat's extension (inside the heartbeat's transaction); the new expiries."""
    rows = await conn.fetch(EXTEND, client_id, session_id, lease_seconds, task_ids, max_held)
    return [r["lease_expires_at"] for r in rows]


async def hand_back_client(conn: Connection, client_id: UUID) -> int:
    """Every lease of a revoked client back to pending (inside the revocation's transaction)."""
    handed: int = await conn.fetchval(HAND_BACK_CLIENT, client_id)
    if handed:
        await conn.execute(NOTIFY)
    return handed


async def promote_due(pool: Pool, rounds: int = 10) -> int:
    """Make the tasks whose back-off (or run_after) has ended leasable; how many. Long-polling
    clients hear of them. At most `rounds` batches, so a wall of retries coming due at once is
    spread over the next calls instead of holding one transaction."""
    promoted = 0
    for _ in range(rounds):
        async with transaction(pool) as conn:
            n = int((await conn.execute(PROMOTE, PROMOTE_BATCH)).rsplit(" ", 1)[-1])
            if n:
                await conn.execute(NOTIFY)
        promoted += n
        if n < PROMOTE_BATCH:
            break
    return promoted


async def reap_expired(pool: Pool, backoff: Backoff) -> int:
    """Turn expired leases into failed attempts; return how many."""
    async with transaction(pool) as conn:
        count: int = await conn.fetchval(REAP, backoff.base_seconds, backoff.cap_seconds)
        if count:
            await conn.execute(NOTIFY)
    return count


async def _admin_transition(
    pool: Pool, sql: str, task_id: UUID, verb: str, already: v1.TaskStatus
) -> v1.Task:
    """Run an admin transition; a task already in the target state is an idempotent repeat."""
    async with transaction(pool) as conn:
        record = await conn.fetchrow(sql, task_id)
        if record is not None:
            if already is v1.TaskStatus.PENDING:  # work is back: wake the long-polls
                await conn.execute(NOTIFY)
            return to_task(record)
        current = await conn.fetchrow(GET, task_id)
    if current is None:
        raise NotYourTask(f"task {task_id} not found")
    task = to_task(current)
    if task.status is already:
        return task
    raise Conflict(f"cannot {verb} task {task_id}: it is {task.status.value}")


async def cancel_task(pool: Pool, task_id: UUID) -> v1.Task:
    return await _admin_transition(pool, CANCEL, task_id, "cancel", v1.TaskStatus.CANCELLED)


async def retry_task(pool: Pool, task_id: UUID) -> v1.Task:
    return await _admin_transition(pool, RETRY, task_id, "retry", v1.TaskStatus.PENDING)


async def cancel_job(pool: Pool, job_id: UUID) -> int:
    """Cancel the job's unfinished tasks; how many."""
    async with transaction(pool) as conn:
        if await conn.fetchval("SELECT 1 FROM jobs WHERE job_id = $1", job_id) is None:
            raise JobNotFound(f"job {job_id} not found")
        await conn.execute(STOP_CREATING, job_id)  # waits for a slice being inserted
        cancelled: int = await conn.fetchval(CANCEL_JOB, job_id)
    return cancelled


async def retry_failed(pool: Pool, limit: int) -> int:
    async with transaction(pool) as conn:
        retried: int = await conn.fetchval(RETRY_FAILED, limit)
        if retried:
            await conn.execute(NOTIFY)
    return retried
