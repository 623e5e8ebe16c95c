"""Jobs: one request that the gate splits into tasks."""

from __future__ import annotations

from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Body, Query
from fastapi.responses import JSONResponse, Response
from pydantic import Discriminator, Tag

from protocol import harvests, paths, v1
from protocol.sources import BUILT_IN
from server.api.tasks import check_selectors, json_reply
from server.db import coverage, documents, lifecycle, pausing, revisits
from server.db import harvests as harvest_db
from server.db import jobs as db
from server.deps import AdminDep, StateDep
from server.errors import InvalidHarvest, JobTooLarge

router = APIRouter()


def _kind(body: Any) -> str:
    source = body.get("source") if isinstance(body, dict) else getattr(body, "source", None)
    return "id_range" if source == "id_range" else "harvest"


AnyJob = Annotated[
    Annotated[v1.JobCreate, Tag("id_range")] | Annotated[harvests.HarvestCreate, Tag("harvest")],
    Discriminator(_kind),
]


@router.post(
    "/jobs",
    response_model=v1.JobCreated,
    status_code=201,
    responses={
        200: {"model": v1.JobCreated, "description": "idempotent repeat"},
        202: {"model": v1.JobCreated, "description": "a large job: its tasks are being created"},
    },
)
async def create_job(body: Annotated[AnyJob, Body()], state: StateDep, _: AdminDep) -> JSONResponse:
    """An id_range job (`source: "id_range"`, `params`), or a harvest over a stored profile
    (`source`: its name, `search_params`, `partition`, optional `split_by` and `repeat`): one
    search task per window, each window a line of GET /jobs/{id}/coverage."""
    if isinstance(body, harvests.HarvestCreate):
        check_selectors(body.params.model_dump(exclude_none=True))
        return await _create_harvest(body, state)
    check_selectors(body.params.model_dump(exclude_none=True))
    tasks = -(-body.params.count // body.chunk_size)
    if tasks > state.settings.max_job_tasks:
        raise JobTooLarge(
            f"the job would create {tasks} tasks; this gate allows at most "
            f"{state.settings.max_job_tasks} per job (MAX_JOB_TASKS): raise chunk_size "
            "or split the range"
        )
    created, is_new = await db.create_job(
        state.pool, body, state.settings.max_attempts, state.settings.job_background_tasks
    )
    if is_new and created.creating:
        state.creation.set()  # this gate's creator starts at once
    status = (202 if created.creating else 201) if is_new else 200
    return JSONResponse(created.model_dump(mode="json"), status_code=status)


async def _create_harvest(body: harvests.HarvestCreate, state: StateDep) -> JSONResponse:
    if body.source in BUILT_IN:
        raise InvalidHarvest(
            f"a harvest runs a stored source profile, not the built-in {body.source!r} "
            "(an id_range job has source id_range and params)"
        )
    created, is_new = await harvest_db.create_harvest(
        state.pool,
        body,
        state.settings.max_attempts,
        harvests.MAX_WINDOWS,
        state.settings.job_background_tasks,
    )
    if is_new and created.creating:
        state.creation.set()  # this gate's creator starts at once
    status = (202 if created.creating else 201) if is_new else 200
    return JSONResponse(created.model_dump(mode="json"), status_code=status)


@router.get(paths.JOB_COVERAGE, response_model=harvests.Coverage)
async def job_coverage(
    job_id: UUID,
    state: StateDep,
    _: AdminDep,
    run: Annotated[int | None, Query(ge=1, le=10_000_000)] = None,
) -> Response:
    """A harvest's ledger, window by window (the last run's by default): the registry's stated
    total, documents found, stored, failed and skipped as already held, each window's state, and
    the gaps — windows holding less than the registry said — with their failures."""
    return json_reply(await coverage.coverage(state.pool, job_id, run))


@router.post(paths.JOB_EXTEND, response_model=v1.JobCreated)
async def extend_job(job_id: UUID, state: StateDep, _: AdminDep) -> v1.JobCreated:
    """A new run of a harvest from the day after its last searched day to today."""
    created = await harvest_db.extend(state.pool, job_id)
    return created


@router.post(paths.JOB_REVISIT, response_model=v1.RevisitStarted)
async def revisit_job(job_id: UUID, state: StateDep, _: AdminDep) -> v1.RevisitStarted:
    """Fetch the job's recorded documents again now: conditional requests, a new version where
    the bytes changed, `withdrawn` where the origin answers 404/410 (server/db/revisits.py)."""
    return await revisits.start(state.pool, job_id, state.settings.max_attempts)


@router.get("/jobs/{job_id}", response_model=v1.Job)
async def get_job(job_id: UUID, state: StateDep, _: AdminDep) -> v1.Job:
    return await db.get_job(state.pool, job_id)


@router.post("/jobs/{job_id}/refetch-failed", response_model=v1.JobCreated)
async def refetch_failed(
    job_id: UUID, state: StateDep, _: AdminDep, body: v1.Refetch | None = None
) -> v1.JobCreated:
    """Turn the job's failed, still-missing documents into new tasks."""
    chunk_size = (body or v1.Refetch()).chunk_size
    return await db.refetch_failed(state.pool, job_id, chunk_size, state.settings.max_attempts)


@router.get(paths.JOB_FAILURES, response_model=v1.FailureSummary)
async def job_failures(job_id: UUID, state: StateDep, _: AdminDep) -> v1.FailureSummary:
    """The job's failed documents by reason (404, too large, blocked, …), with examples."""
    return await db.failure_summary(state.pool, job_id)


@router.get(paths.JOB_DOCUMENTS, response_model=v1.DocumentPage)
async def job_documents(
    job_id: UUID,
    state: StateDep,
    _: AdminDep,
    cursor: Annotated[str, Query(max_length=200, pattern=r"^[A-Za-z0-9._-]*$")] = "",
    limit: Annotated[int, Query(ge=1, le=5_000)] = 1_000,
) -> Response:
    """The job's documents with their capture records, in doc_id order, `limit` a page; pass
    `next_cursor` back as `cursor` (`docgate export` streams the same)."""
    rows = await documents.job_page(state.pool, job_id, cursor, limit)
    page = v1.DocumentPage(
        documents=[v1.ExportedDocument.model_validate(dict(r)) for r in rows],
        next_cursor=rows[-1]["doc_id"] if len(rows) == limit else None,
    )
    return json_reply(page)


@router.post(paths.JOB_PAUSE, response_model=v1.Job)
async def pause_job(job_id: UUID, state: StateDep, _: AdminDep, body: v1.JobPause | None = None) -> v1.Job:
    """Lease none of the job's tasks until it is resumed (tasks out on lease finish as they do)."""
    await pausing.pause_job(state.pool, job_id, (body or v1.JobPause()).reason)
    state.budgets.job_paused()
    return await db.get_job(state.pool, job_id)


@router.post(paths.JOB_RESUME, response_model=v1.Job)
async def resume_job(job_id: UUID, state: StateDep, _: AdminDep) -> v1.Job:
    """Lease the job's tasks again, at once; a job paused by itself is judged afresh."""
    await pausing.resume_job(state.pool, job_id)
    return await db.get_job(state.pool, job_id)


@router.post("/jobs/{job_id}/cancel", response_model=v1.Cancelled)
async def cancel_job(job_id: UUID, state: StateDep, _: AdminDep) -> v1.Cancelled:
    """Cancel every pending or assigned task of the job (clients holding one are told by heartbeat)."""
    return v1.Cancelled(tasks=await lifecycle.cancel_job(state.pool, job_id))
