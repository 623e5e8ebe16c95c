"""Harvests: a job over a stored profile cut into windows, one search task each; the windows'
rows are the coverage ledger (database/migrations/0015_harvests.sql; read by server/db/coverage.py).

A window and its task are inserted by one statement, so neither exists without the other, and a
window exists once (a unique key over job, run, days and values): creating a run again, or a
split a re-sent completion repeats, inserts nothing. A window follows its task's state by a
trigger; its completion is settled here, in the completing transaction, from what the client
said the listing held: complete, short (fewer held than stated), over the cap (a window that
cannot be split further, or a job that does not split), or split — its halves (then one per
`split_by` value, once it is one day) created in the same transaction. A repeating job's runs
are started by whichever gate finds one due, under the job's row lock: one run per due time,
whatever the gates, restarts and clocks.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any
from uuid import UUID

from protocol import harvests as wire
from protocol import v1
from protocol.base import seconds
from protocol.hosts import host_key
from protocol.sources import SourceProfile
from server.db import revisits, sources
from server.db.pool import Connection, Pool, transaction
from server.errors import IdempotencyConflict, InvalidHarvest, JobNotFound, JobTooLarge, SourceNotFound

log = logging.getLogger("docgate.gate")

INSERT_JOB = """
INSERT INTO jobs (source, params, chunk_size, priority, tasks_total, idempotency_key, collection,
                  creating, max_attempts, harvest, runs, next_run_at, covered_to, host)
VALUES ($1, $2, 1, $3, $10, $4, $5, $11, $6, $7, 1, $8, $9, $12)
ON CONFLICT (idempotency_key) DO NOTHING
RETURNING job_id
"""
SLICE_WINDOWS = 20_000  # windows per transaction of background creation

# Windows and their tasks in one statement: the task ids are drawn first, so each window row
# names its task and each task its window; a window already there (same job, run, days and
# values) is skipped with its task. Tasks are inserted in the windows' order: leased oldest first.
INSERT_WINDOWS = """
WITH input AS (
    SELECT gen_random_uuid() AS task_id, i.*
    FROM unnest($3::date[], $4::date[], $5::text[], $6::text[], $7::jsonb[], $8::bigint[], $9::text[])
         WITH ORDINALITY AS i(date_from, date_to, value, split_value, search_params, parent_id, over_cap, n)
), windows AS (
    INSERT INTO harvest_windows (job_id, run, parent_id, date_from, date_to, value, split_value, task_id)
    SELECT $1, $2, parent_id, date_from, date_to, value, split_value, task_id FROM input ORDER BY n
    ON CONFLICT DO NOTHING
    RETURNING window_id, task_id
)
INSERT INTO tasks (task_id, job_id, source, search_params, params, max_documents, priority,
                   max_attempts, collection, window_id)
SELECT i.task_id, $1, j.source, i.search_params,
       j.params || jsonb_build_object('over_cap', i.over_cap), $10, j.priority, j.max_attempts,
       j.collection, w.window_id
FROM windows w JOIN input i USING (task_id) CROSS JOIN jobs j
WHERE j.job_id = $1
ORDER BY i.n
"""
ADD_TOTAL = """
UPDATE jobs SET tasks_total = tasks_total + $2, tasks_created = tasks_created + $2 WHERE job_id = $1
"""

WINDOW_OF_TASK = """
SELECT w.*, j.harvest, j.collection, (SELECT profile FROM sources s WHERE s.name = j.source) AS profile
FROM harvest_windows w JOIN jobs j USING (job_id) WHERE w.window_id = $1
FOR UPDATE OF w
"""
SETTLE = """
UPDATE harvest_windows
SET state = $2, stated_total = $3, found = $4, stored = $5, failed = $6, skipped = $7, updated_at = now()
WHERE window_id = $1
"""

# A run is due once its time has come and the job's last run has settled: runs never overlap
# (two would search the same last days at once and fetch what neither holds yet, twice).
DUE_RUN = """
SELECT * FROM jobs j WHERE next_run_at <= now() AND NOT paused AND NOT creating
  AND NOT EXISTS (SELECT 1 FROM harvest_windows w
                  WHERE w.job_id = j.job_id AND w.state IN ('pending', 'searching'))
ORDER BY next_run_at LIMIT 1 FOR UPDATE SKIP LOCKED
"""
START_RUN = """
UPDATE jobs SET runs = runs + 1, covered_to = greatest(covered_to, $2), next_run_at = $3
WHERE job_id = $1 RETURNING runs
"""


@dataclass(frozen=True)
class Cut:
    """One window to create: its days and values, and the window it was split from."""

    date_from: date | None
    date_to: date | None
    value: str | None = None
    split_value: str | None = None
    parent_id: int | None = None


def _spec(body: wire.HarvestCreate) -> dict[str, Any]:
    """What the job keeps of the harvest (jobs.harvest): all a later run or split needs."""
    spec = body.model_dump(
        mode="json", by_alias=True, include={"search_params", "partition", "split", "split_by", "repeat"}
    )
    if body.repeat is not None:
        spec["repeat"] |= {
            "every_seconds": seconds(body.repeat.every),
            "lookback_seconds": seconds(body.repeat.lookback),
        }
    return spec


def _splittable(spec: dict[str, Any], cut: Cut) -> bool:
    """Whether a window's search over the cap can be split instead of truncated."""
    if not spec.get("split", True):
        return False
    if cut.date_from is not None and cut.date_to is not None and cut.date_to > cut.date_from:
        return True
    return bool(spec.get("split_by")) and cut.split_value is None


def _cuts(spec: dict[str, Any], date_from: date | None, date_to: date | None) -> list[Cut]:
    """The windows of a run: its days cut by the partition's `every`, times its values."""
    partition = spec["partition"]
    days: list[tuple[date | None, date | None]] = [(None, None)]
    if partition.get("dates") is not None and date_from is not None and date_to is not None:
        every = partition["dates"]["every"]
        rng = wire.DateRange.model_validate({"from": date_from, "to": date_to, "every": every}, strict=False)
        days = list(wire.window_days(rng))
    values: list[str | None] = list(partition["values"]["values"]) if partition.get("values") else [None]
    return [Cut(f, t, v) for f, t in days for v in values]


async def _insert(
    conn: Connection,
    job_id: UUID,
    run: int,
    spec: dict[str, Any],
    profile: SourceProfile,
    cuts: list[Cut],
    counted: bool = False,
) -> int:
    """Insert the windows and their tasks; how many were new. `counted`: the job's tasks_total
    holds them already (a harvest created in the background)."""
    if not cuts:
        return 0
    dates = profile.search.dates
    cap = profile.results.max_results or v1.MAX_DOCUMENTS_PER_TASK
    status = await conn.execute(
        INSERT_WINDOWS,
        job_id,
        run,
        [c.date_from for c in cuts],
        [c.date_to for c in cuts],
        [c.value for c in cuts],
        [c.split_value for c in cuts],
        [wire.window_params(spec, dates, vars(c)) for c in cuts],
        [c.parent_id for c in cuts],
        ["split" if _splittable(spec, c) else "truncate" for c in cuts],
        min(cap, v1.MAX_DOCUMENTS_PER_TASK),
    )
    created = int(status.rsplit(" ", 1)[1])
    if not counted:
        await conn.execute(ADD_TOTAL, job_id, created)
    return created


def _profile(row: Any, name: str) -> SourceProfile:
    if row is None:
        raise SourceNotFound(f"no source profile named {name!r}; `docgate sources list` shows them")
    return SourceProfile.model_validate(row, strict=False)


async def _stored_profile(conn: Connection, name: str) -> SourceProfile:
    return _profile(await sources.profile_named(conn, name), name)


def _check(body: wire.HarvestCreate, profile: SourceProfile) -> None:
    """A harvest its profile can run, or the 422 that says what is missing."""
    if body.partition.dates is not None and profile.search.dates is None:
        raise InvalidHarvest(
            f"partition.dates needs the profile's search.dates (the form's date fields and their "
            f"format); source {body.source!r} has none"
        )


async def create_harvest(
    pool: Pool, body: wire.HarvestCreate, max_attempts: int, max_windows: int, background_over: int
) -> tuple[v1.JobCreated, bool]:
    """Create the job and its first run's windows, in one transaction; an idempotent repeat
    returns the first job (and False). A harvest of more than `background_over` windows is only
    recorded here (`creating`); its windows are inserted by `insert_slice`, in the background,
    as an id_range job's tasks are."""
    spec = _spec(body)
    dates = body.partition.dates
    cuts = _cuts(spec, dates.from_ if dates else None, dates.to if dates else None)
    if len(cuts) > max_windows:
        raise JobTooLarge(
            f"the harvest would create {len(cuts)} windows; this gate allows at most {max_windows} "
            "per call: use longer windows (partition.dates.every) or fewer values"
        )
    async with transaction(pool) as conn:
        profile = await _stored_profile(conn, body.source)
        _check(body, profile)
        collection = body.collection if body.collection is not None else (profile.collection or "")
        params = body.params.model_dump(mode="json", exclude_none=True, exclude_defaults=True)
        next_run = _next_run(spec, datetime.now(UTC))
        job_id = await conn.fetchval(
            INSERT_JOB,
            body.source,
            params,
            body.priority,
            body.idempotency_key,
            collection,
            body.max_attempts or max_attempts,
            spec,
            next_run,
            dates.to if dates else None,
            len(cuts),
            len(cuts) > background_over,
            host_key(profile.base_url),
        )
        if job_id is None:
            existing = await conn.fetchrow(
                "SELECT job_id, source, harvest, tasks_created FROM jobs WHERE idempotency_key = $1",
                body.idempotency_key,
            )
            assert existing is not None  # ON CONFLICT waited for the first insert to commit
            if (existing["source"], existing["harvest"]) != (body.source, spec):
                raise IdempotencyConflict(
                    f"idempotency_key {body.idempotency_key!r} was first used for a different job "
                    f"({existing['job_id']}); use a new key for new work"
                )
            return v1.JobCreated(job_id=existing["job_id"], tasks_created=existing["tasks_created"]), False
        await revisits.schedule(conn, job_id, body.revisit)
        if len(cuts) > background_over:
            return v1.JobCreated(job_id=job_id, tasks_created=0, creating=True), True
        created = await _insert(conn, job_id, 1, spec, profile, cuts, counted=True)
        await conn.execute("UPDATE jobs SET tasks_created = $2 WHERE job_id = $1", job_id, created)
    log.info("harvest %s: %d windows of %s", job_id, created, body.source)
    return v1.JobCreated(job_id=job_id, tasks_created=created), True


async def insert_slice(conn: Connection, job: Any, everything: bool) -> tuple[int, int, bool]:
    """The next windows of a harvest being created in the background, from its cursor (the
    first run's cuts are the same every time: they follow from the job's spec): (windows
    inserted, the new cursor, whether that was the last of them)."""
    spec = job["harvest"]
    dates = spec["partition"].get("dates")
    first = (date.fromisoformat(dates["from"]), date.fromisoformat(dates["to"])) if dates else (None, None)
    cuts = _cuts(spec, *first)
    end = len(cuts) if everything else min(job["cursor"] + SLICE_WINDOWS, len(cuts))
    profile = await _stored_profile(conn, job["source"])
    created = await _insert(conn, job["job_id"], 1, spec, profile, cuts[job["cursor"] : end], counted=True)
    return created, end, end >= len(cuts)


def _next_run(spec: dict[str, Any], after: datetime) -> datetime | None:
    repeat = spec.get("repeat")
    return None if repeat is None else after + timedelta(seconds=repeat["every_seconds"])


# ---- settling a window's search


async def settle(conn: Connection, task: Any, listing: v1.ListingReport | None) -> None:
    """A window's task completed: its ledger line from what the listing said, and its halves
    when it was over the cap and may be split. In the completing transaction."""
    window = await conn.fetchrow(WINDOW_OF_TASK, task["window_id"])
    if window is None or window["task_id"] != task["task_id"]:
        return
    counts = (task["documents_downloaded"], task["documents_failed"], task["documents_skipped"])
    said = listing or v1.ListingReport(found=sum(counts))
    held = counts[0] + counts[2]
    if said.capped and task["params"].get("over_cap") == "split":
        state = "split"
    elif said.capped:
        state = "over_cap"
    elif held >= max(said.found, said.stated_total or 0):
        state = "complete"
    else:
        state = "short"
    await conn.execute(SETTLE, window["window_id"], state, said.stated_total, said.found, *counts)
    if state == "split":
        await _split(conn, window)


async def _split(conn: Connection, window: Any) -> None:
    spec, profile = window["harvest"], _profile(window["profile"], "?")
    f, t = window["date_from"], window["date_to"]
    if f is not None and t is not None and t > f:
        cuts = [
            Cut(a, b, window["value"], window["split_value"], window["window_id"])
            for a, b in wire.halves(f, t)
        ]
    else:
        values = spec["split_by"]["values"]
        cuts = [Cut(f, t, window["value"], v, window["window_id"]) for v in values]
    created = await _insert(conn, window["job_id"], window["run"], spec, profile, cuts)
    log.info(
        "harvest %s: window %s over the cap, split into %d", window["job_id"], window["window_id"], created
    )


# ---- runs


async def start_due_run(pool: Pool) -> v1.JobCreated | None:
    """Start the next run of a repeating job that is due (None: none is). The job's row is
    locked while its next time moves on and the run's windows are inserted: one run per due
    time, whichever gate finds it."""
    async with transaction(pool) as conn:
        job = await conn.fetchrow(DUE_RUN)
        if job is None:
            return None
        spec = job["harvest"]
        now = datetime.now(UTC)
        today = now.date()
        # From the last day searched, less the lookback: a run after a long outage covers it.
        lookback_days = max(1, -(-spec["repeat"]["lookback_seconds"] // 86_400))
        start = min(job["covered_to"] or today, today) - timedelta(days=lookback_days)
        # The next time counts from the one due, not from now: a late run does not shift the
        # schedule; runs missed while every gate was down are one run, not a burst.
        due = job["next_run_at"] + timedelta(seconds=spec["repeat"]["every_seconds"])
        next_run = due if due > now else now + timedelta(seconds=spec["repeat"]["every_seconds"])
        created = await _run(conn, job, start, today, next_run)
    return created


async def extend(pool: Pool, job_id: UUID) -> v1.JobCreated:
    """A new run of the job from the day after its last searched day to today."""
    async with transaction(pool) as conn:
        job = await conn.fetchrow("SELECT * FROM jobs WHERE job_id = $1 FOR UPDATE", job_id)
        if job is None or job["harvest"] is None:
            raise JobNotFound(f"harvest job {job_id} not found")
        if job["harvest"]["partition"].get("dates") is None:
            raise InvalidHarvest("the job's partition has no dates: there is nothing to extend")
        today = datetime.now(UTC).date()
        start = (job["covered_to"] or today) + timedelta(days=1)
        if start > today:
            return v1.JobCreated(job_id=job_id, tasks_created=0)
        return await _run(conn, job, start, today, job["next_run_at"])


async def _run(
    conn: Connection, job: Any, start: date, end: date, next_run: datetime | None
) -> v1.JobCreated:
    run = await conn.fetchval(START_RUN, job["job_id"], end, next_run)
    profile = await _stored_profile(conn, job["source"])
    created = await _insert(
        conn, job["job_id"], run, job["harvest"], profile, _cuts(job["harvest"], start, end)
    )
    log.info("harvest %s: run %d, %s to %s, %d windows", job["job_id"], run, start, end, created)
    return v1.JobCreated(job_id=job["job_id"], tasks_created=created)
