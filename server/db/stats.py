"""Counts by status and throughput, cheap at any table size."""

from __future__ import annotations

from dataclasses import dataclass

from protocol import v1
from server.db.pool import Pool, connection

# Named counters: folded totals plus the deltas not folded yet.
COUNTERS = """
SELECT name, sum(n)::bigint AS n FROM (
    SELECT status AS name, n FROM task_counts WHERE status = ANY($1::text[])
    UNION ALL
    SELECT status, delta FROM task_count_deltas WHERE status = ANY($1::text[])
) parts
GROUP BY name
"""

# Fold the appended deltas into the totals. Concurrent folds are safe: a
# delta row is deleted (and so counted) by exactly one of them.
FOLD = """
WITH gone AS (DELETE FROM task_count_deltas RETURNING status, delta),
     summed AS (SELECT status, sum(delta) AS delta FROM gone GROUP BY status)
INSERT INTO task_counts (status, n) SELECT status, delta FROM summed
ON CONFLICT (status) DO UPDATE SET n = task_counts.n + excluded.n
"""


def activity_since(since: str, where: str = "true") -> str:
    """The activity rows (folded, and appended since the last fold) whose 10 seconds began after
    `since` (an SQL expression), as a FROM item named `a`."""
    return f"""(
    SELECT bucket, job_id, completed, failed, cancelled, documents FROM activity
    WHERE bucket > now() - {since} AND {where}
    UNION ALL
    SELECT bucket, job_id, completed, failed, cancelled, documents FROM activity_deltas
    WHERE bucket > now() - {since} AND {where}
) a"""


# Rows of activity are per 10 seconds: a window reads whole buckets that began inside it.
THROUGHPUT = f"""
SELECT w.minutes,
       coalesce(sum(a.completed), 0)::bigint AS tasks_completed,
       coalesce(sum(a.documents), 0)::bigint AS documents_downloaded
FROM unnest($1::int[]) AS w(minutes)
LEFT JOIN {activity_since("interval '60 minutes'")} ON a.bucket > now() - make_interval(mins => w.minutes)
GROUP BY w.minutes
ORDER BY w.minutes
"""

# Fold the appended activity into its rows, as FOLD does for the counters.
FOLD_ACTIVITY = """
WITH gone AS (DELETE FROM activity_deltas RETURNING *),
     summed AS (
         SELECT bucket, job_id, sum(completed) AS completed, sum(failed) AS failed,
                sum(cancelled) AS cancelled, sum(documents) AS documents
         FROM gone GROUP BY bucket, job_id
     )
INSERT INTO activity (bucket, job_id, completed, failed, cancelled, documents)
SELECT * FROM summed ORDER BY bucket, job_id
ON CONFLICT (bucket, job_id) DO UPDATE
SET completed = activity.completed + excluded.completed, failed = activity.failed + excluded.failed,
    cancelled = activity.cancelled + excluded.cancelled, documents = activity.documents + excluded.documents
"""

# Retention: task_events older than $1 seconds, a small batch at a time (nothing else locks
# events, so pruning never waits on the hot path nor holds it up); activity a week, or as long.
PRUNE_EVENTS = """
DELETE FROM task_events WHERE event_id IN (
    SELECT event_id FROM task_events WHERE at < now() - make_interval(secs => $1::float8)
    ORDER BY at LIMIT $2
)
"""
PRUNE_ACTIVITY = """
DELETE FROM activity WHERE bucket < now() - make_interval(secs => greatest($1::float8, 7 * 86400))
"""
PRUNE_BATCH = 5_000

WINDOWS = [1, 5, 15, 60]


async def counters(pool: Pool, names: list[str]) -> dict[str, int]:
    async with connection(pool) as conn:
        records = await conn.fetch(COUNTERS, names)
    found = {r["name"]: int(r["n"]) for r in records}
    return {name: found.get(name, 0) for name in names}


async def status_counts(pool: Pool) -> dict[v1.TaskStatus, int]:
    found = await counters(pool, [s.value for s in v1.TaskStatus])
    return {v1.TaskStatus(name): n for name, n in found.items()}


def job_counter_names(job_id: object) -> list[str]:
    return [f"job:{job_id}:{s.value}" for s in v1.TaskStatus] + [f"job:{job_id}:documents"]


async def fold_counts(pool: Pool) -> None:
    async with connection(pool) as conn:
        await conn.execute(FOLD)
        await conn.execute(FOLD_ACTIVITY)


async def prune_events(pool: Pool, retention_seconds: float, batches: int = 4) -> int:
    """Delete task_events past their retention (0: keep them), at most `batches` small batches
    a round; how many went."""
    if not retention_seconds:
        return 0
    pruned = 0
    for _ in range(batches):
        async with connection(pool) as conn:
            n = int((await conn.execute(PRUNE_EVENTS, retention_seconds, PRUNE_BATCH)).rsplit(" ", 1)[-1])
        pruned += n
        if n < PRUNE_BATCH:
            break
    async with connection(pool) as conn:
        await conn.execute(PRUNE_ACTIVITY, retention_seconds)
    return pruned


async def status_report(pool: Pool) -> v1.StatusReport:
    counts = await status_counts(pool)
    async with connection(pool) as conn:
        records = await conn.fetch(THROUGHPUT, WINDOWS)
    throughput = [
        v1.Throughput(
            window_minutes=r["minutes"],
            tasks_completed=r["tasks_completed"],
            tasks_per_minute=r["tasks_completed"] / r["minutes"],
            documents_downloaded=r["documents_downloaded"],
            documents_per_minute=r["documents_downloaded"] / r["minutes"],
        )
        for r in records
    ]
    return v1.StatusReport(counts=counts, total=sum(counts.values()), throughput=throughput)


# `status BETWEEN` (not `=`) so that only tasks_status_newest gives this order: with `=` the
# planner may walk tasks_newest from the oldest task and filter, and after a million
# completions at the head of the table that read them all (108 ms at 2 M tasks, 0.05 ms now).
OLDEST_PENDING = """
SELECT coalesce(extract(epoch FROM now() - min(created_at)), 0)::float8
FROM (SELECT created_at FROM tasks WHERE status BETWEEN 'pending' AND 'pending'
      ORDER BY status DESC, task_seq LIMIT 1) oldest
"""

CLIENT_STATES = """
SELECT CASE WHEN last_heartbeat_at > now() - make_interval(secs => $1::float8)
            THEN 'active' ELSE 'stale' END AS state, count(*) AS n
FROM clients GROUP BY 1
"""


@dataclass(frozen=True)
class Snapshot:
    """The database's side of a scrape, read in a few index-only queries."""

    counts: dict[v1.TaskStatus, int]
    oldest_pending_seconds: float
    documents: int
    document_bytes: int
    clients: dict[str, int]


async def snapshot(pool: Pool, stale_seconds: float) -> Snapshot:
    """What /metrics and the dashboard show, from counters and indexes only."""
    names = [s.value for s in v1.TaskStatus] + ["documents", "document_bytes"]
    found = await counters(pool, names)
    async with connection(pool) as conn:
        oldest = await conn.fetchval(OLDEST_PENDING)
        states = {r["state"]: r["n"] for r in await conn.fetch(CLIENT_STATES, stale_seconds)}
    return Snapshot(
        counts={s: found[s.value] for s in v1.TaskStatus},
        oldest_pending_seconds=float(oldest),
        documents=found["documents"],
        document_bytes=found["document_bytes"],
        clients=states,
    )
