"""Counts by status and throughput, cheap at any table size."""

from __future__ import annotations

from protocol import v1
from server.db.pool import Pool, connection

COUNTS = """
SELECT c.status,
       c.n + coalesce((SELECT sum(d.delta) FROM task_count_deltas d WHERE d.status = c.status), 0)
       AS n
FROM task_counts c
"""

# Fold the appended deltas into the totals. Concurrent folds are safe: a
# delta row is deleted (and so counted) by exactly one of them.
FOLD = """
WITH gone AS (DELETE FROM task_count_deltas RETURNING status, delta),
     summed AS (SELECT status, sum(delta) AS delta FROM gone GROUP BY status)
UPDATE task_counts c SET n = c.n + s.delta FROM summed s WHERE c.status = s.status
"""

THROUGHPUT = """
SELECT w.minutes,
       count(e.event_id) AS tasks_completed,
       coalesce(sum(e.documents), 0) AS documents_downloaded
FROM unnest($1::int[]) AS w(minutes)
LEFT JOIN task_events e
  ON e.event = 'completed' AND e.at > now() - make_interval(mins => w.minutes)
GROUP BY w.minutes
ORDER BY w.minutes
"""

WINDOWS = [1, 5, 15, 60]


async def status_counts(pool: Pool) -> dict[v1.TaskStatus, int]:
    async with connection(pool) as conn:
        records = await conn.fetch(COUNTS)
    return {v1.TaskStatus(r["status"]): int(r["n"]) for r in records}


async def fold_counts(pool: Pool) -> None:
    async with connection(pool) as conn:
        await conn.execute(FOLD)


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
