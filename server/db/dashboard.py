"""What the dashboard shows, each part from counters or an index, so 10 million tasks cost nothing."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from protocol import v1
from server.db import hosts, stats
from server.db.pool import Pool, connection

PER_MINUTE = f"""
SELECT floor(extract(epoch FROM now() - bucket) / 60)::int AS ago,
       sum(completed)::bigint AS tasks, sum(documents)::bigint AS documents
FROM {stats.activity_since("interval '60 minutes'")}
GROUP BY 1
"""

RECENT_JOBS = """
SELECT job_id, source, params, chunk_size, priority, tasks_total, created_at, paused, paused_reason
FROM jobs ORDER BY created_at DESC LIMIT $1
"""

# Tasks finished per job in the last ten minutes: the rate behind each ETA.
JOB_RATES = f"""
SELECT job_id, sum(completed + failed + cancelled)::bigint AS finished
FROM {stats.activity_since("interval '10 minutes'", "job_id = ANY($1::uuid[])")}
GROUP BY job_id
"""

# BETWEEN: by tasks_status_newest, never a walk of tasks_newest past other statuses (stats.py).
FAILURES = """
SELECT task_id, job_id, source, attempts, max_attempts, last_error, updated_at
FROM tasks WHERE status BETWEEN 'failed' AND 'failed' ORDER BY status, task_seq DESC LIMIT $1
"""


@dataclass(frozen=True)
class Dashboard:
    snapshot: Any
    per_minute: list[tuple[int, int]]  # (tasks, documents) for each of the last 60 minutes, oldest first
    jobs: list[v1.JobProgress]
    clients: v1.ClientList
    failures: list[dict[str, Any]]
    hosts: list[Any]  # protocol.hosts.HostInfo


async def dashboard(pool: Pool, stale_seconds: float, host_defaults: hosts.Defaults) -> Dashboard:
    from server.db.clients import list_clients

    snap = await stats.snapshot(pool, stale_seconds)
    async with connection(pool) as conn:
        minutes = {r["ago"]: (r["tasks"], r["documents"]) for r in await conn.fetch(PER_MINUTE)}
        failures = [dict(r) for r in await conn.fetch(FAILURES, 20)]
    per_minute = [minutes.get(ago, (0, 0)) for ago in range(59, -1, -1)]
    jobs = await recent_jobs(pool, 20)
    listed = await list_clients(pool, stale_seconds, 100)
    by_host = (await hosts.list_hosts(pool, host_defaults)).hosts
    return Dashboard(snap, per_minute, jobs, listed, failures, by_host)


async def recent_jobs(pool: Pool, limit: int) -> list[v1.JobProgress]:
    async with connection(pool) as conn:
        jobs = await conn.fetch(RECENT_JOBS, limit)
        rates = {r["job_id"]: r["finished"] for r in await conn.fetch(JOB_RATES, [j["job_id"] for j in jobs])}
    names = [n for j in jobs for n in stats.job_counter_names(j["job_id"])]
    found = await stats.counters(pool, names) if names else {}
    return [_job_row(j, found, rates.get(j["job_id"], 0)) for j in jobs]


def _job_row(job: Any, found: dict[str, int], finished_10min: int) -> v1.JobProgress:
    prefix = f"job:{job['job_id']}:"
    counts = {s.value: found.get(prefix + s.value, 0) for s in v1.TaskStatus}
    done = sum(counts[s.value] for s in v1.TERMINAL_STATUSES)
    total = job["tasks_total"] or 1
    left = max(total - done, 0)
    eta = left / (finished_10min / 600) if finished_10min and left else (0.0 if not left else None)
    params = job["params"] or {}
    return v1.JobProgress(
        job_id=job["job_id"],
        source=job["source"],
        url_template=str(params.get("url_template", "")),
        tasks_total=job["tasks_total"],
        paused=job["paused"],
        paused_reason=job["paused_reason"],
        counts=counts,
        documents=found.get(prefix + "documents", 0),
        progress=min(done / total, 1.0),
        eta_seconds=eta,
        created_at=job["created_at"],
    )
