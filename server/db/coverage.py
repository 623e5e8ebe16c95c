"""A harvest's coverage ledger, read: a run's windows, the totals over its leaves (a split
window's count is its halves'), and its gaps — windows holding less than the registry said —
with their failed documents by code (the windows are written by server/db/harvests.py)."""

from __future__ import annotations

from collections import defaultdict
from typing import Any
from uuid import UUID

from protocol import harvests as wire
from server.db.pool import Pool, connection
from server.errors import JobNotFound

WINDOWS = """
SELECT w.*, t.last_error FROM harvest_windows w LEFT JOIN tasks t USING (task_id)
WHERE w.job_id = $1 AND w.run = $2
ORDER BY w.date_from NULLS FIRST, w.value NULLS FIRST, w.split_value NULLS FIRST, w.window_id
"""
GAP_FAILURES = """
SELECT f.task_id, f.code, count(DISTINCT f.doc_id) AS n
FROM document_failures f
WHERE f.job_id = $1 AND f.task_id = ANY($2::uuid[]) AND NOT EXISTS (
    SELECT 1 FROM documents d WHERE d.collection = $3 AND d.doc_id = f.doc_id
)
GROUP BY f.task_id, f.code ORDER BY n DESC
"""


async def coverage(pool: Pool, job_id: UUID, run: int | None) -> wire.Coverage:
    async with connection(pool) as conn:
        job = await conn.fetchrow(
            "SELECT job_id, runs, harvest, collection, next_run_at, creating FROM jobs WHERE job_id = $1",
            job_id,
        )
        if job is None or job["harvest"] is None:
            raise JobNotFound(f"harvest job {job_id} not found")
        which = run if run is not None else job["runs"]
        if not 1 <= which <= max(job["runs"], 1):
            raise JobNotFound(f"job {job_id} has runs 1 to {job['runs']}, not {which}")
        rows = await conn.fetch(WINDOWS, job_id, which)
        leaves = [r for r in rows if r["state"] != "split"]
        gap_rows = [r for r in leaves if _is_gap(r)]
        failures: dict[UUID, list[wire.GapFailure]] = defaultdict(list)
        if gap_rows:
            for f in await conn.fetch(
                GAP_FAILURES, job_id, [r["task_id"] for r in gap_rows], job["collection"]
            ):
                failures[f["task_id"]].append(wire.GapFailure(code=f["code"], documents=f["n"]))
    creating = bool(job["creating"]) and which == 1
    states: dict[str, int] = defaultdict(int)
    for r in rows:
        states[r["state"]] += 1
    totals = wire.CoverageTotals(
        windows=len(leaves),
        stated_total=sum(r["stated_total"] or 0 for r in leaves),
        found=sum(r["found"] for r in leaves),
        stored=sum(r["stored"] for r in leaves),
        failed=sum(r["failed"] for r in leaves),
        skipped=sum(r["skipped"] for r in leaves),
        states=dict(states),
    )
    gaps = [
        wire.Gap(
            window_id=r["window_id"],
            date_from=r["date_from"],
            date_to=r["date_to"],
            value=r["value"],
            split_value=r["split_value"],
            state=r["state"],
            stated_total=r["stated_total"],
            held=r["stored"] + r["skipped"],
            missing=None
            if r["stated_total"] is None
            else max(0, r["stated_total"] - r["stored"] - r["skipped"]),
            failures=failures.get(r["task_id"], []),
            last_error=r["last_error"],
        )
        for r in gap_rows
    ]
    days = [r["date_from"] for r in rows if r["date_from"] is not None]
    ends = [r["date_to"] for r in rows if r["date_to"] is not None]
    return wire.Coverage(
        job_id=job_id,
        run=which,
        runs=job["runs"],
        complete=bool(rows) and not creating and all(r["state"] in wire.SETTLED for r in rows) and not gaps,
        creating=creating,
        date_from=min(days, default=None),
        date_to=max(ends, default=None),
        next_run_at=job["next_run_at"],
        totals=totals,
        gaps=gaps,
        windows=[wire.Window.model_validate(dict(r)) for r in rows],
    )


def _is_gap(row: Any) -> bool:
    if row["state"] in wire.GAPS:
        return True
    held = row["stored"] + row["skipped"]
    return row["state"] == "complete" and row["stated_total"] is not None and held < row["stated_total"]
