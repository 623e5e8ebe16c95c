"""Task endpoints: create (admin), lease and report (clients), inspect and steer (admin)."""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Query, Request, Response, status
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from common.selectors import broken_rules
from protocol import paths, v1
from server.auth import Principal
from server.db import dashboard, discovery, lifecycle, pausing, stats
from server.db import tasks as db
from server.db.lifecycle import Caller
from server.deps import AdminDep, PrincipalDep, SessionHeader, StateDep
from server.domain.reports import split_reports
from server.errors import InvalidCursor, LeaseLost, Unprocessable, status_and_code
from server.state import GateState

router = APIRouter()

LEASED: dict[int | str, dict[str, Any]] = {
    200: {"description": "One task (or {tasks: […]} with max_tasks)"},
    204: {
        "description": "No task available within `wait` seconds; the "
        "X-Tasks-Outstanding header counts pending and assigned tasks"
    },
}


@router.post(
    paths.TASK_CREATE,
    response_model=v1.TaskCreated,
    status_code=201,
    responses={200: {"model": v1.TaskCreated, "description": "idempotent repeat"}},
)
async def create_task(body: v1.TaskCreate, state: StateDep, _: AdminDep) -> JSONResponse:
    check_selectors(body.params)
    task = await db.create_task(state.pool, body, state.settings.max_attempts)
    return JSONResponse(task.model_dump(mode="json"), status_code=201 if task.created else 200)


@router.post(paths.TASK_BATCH, response_model=v1.TaskBatchCreated, status_code=201)
async def create_tasks(body: v1.TaskBatchCreate, state: StateDep, _: AdminDep) -> v1.TaskBatchCreated:
    for i, task in enumerate(body.tasks):
        check_selectors(task.params, f"tasks[{i}].params")
    return await db.create_tasks(state.pool, body.tasks, state.settings.max_attempts)


def check_selectors(params: dict[str, Any], where: str = "params") -> None:
    """A block selector that does not compile would fail every document on every attempt: 422."""
    broken = broken_rules(params, where)
    if broken:
        field, why = broken[0]
        raise Unprocessable(f"{field}: {why}")


async def _lease(
    state: GateState,
    request: Request,
    principal: PrincipalDep,
    session_id: str | None,
    max_tasks: int,
    wait: float,
) -> list[v1.LeasedTask]:
    """Lease now, or wait (woken by NOTIFY or by the gate's fallback probe) until `wait` runs out."""
    deadline = time.monotonic() + wait
    while True:
        wake = state.wakeup.current()
        started = time.perf_counter()
        leased = await lifecycle.lease_tasks(
            state.pool,
            owner=principal.client_id,
            session_id=session_id,
            max_tasks=max_tasks,
            lease_seconds=state.settings.lease_seconds,
            max_held=state.settings.max_leases_per_client,
            spread=state.spread,
        )
        state.metrics.lease_latency.observe(time.perf_counter() - started)
        if leased and session_id and await request.is_disconnected():
            # Answered to a connection already gone (a client stopped mid-poll): back at once,
            # not `assigned` to no one for a whole lease.
            ids = [t.task_id for t in leased]
            await lifecycle.hand_back_session(state.pool, principal.client_id, session_id, ids, "client gone")
            return []
        if leased or not await _woken(state, request, wake, deadline):
            state.metrics.leases.inc(len(leased))
            return leased


async def _woken(state: GateState, request: Request, wake: asyncio.Event, deadline: float) -> bool:
    """Wait for a wake-up (True), or until the deadline or the client's going away (False).

    The client is checked every POLL_FALLBACK_SECONDS without touching the
    database, so a long-poll whose client left ends then instead of leasing
    work nobody will receive."""
    place = state.wakeup.join()
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or await request.is_disconnected():
                return False
            if await state.wakeup.wait(wake, place, min(remaining, state.settings.poll_fallback_seconds)):
                return True
    finally:
        state.wakeup.leave(place)


@router.get(
    paths.TASK_LEASE,
    responses=LEASED,
    response_model=v1.LeasedTask | v1.LeaseBatch,
    operation_id="request_task_get",
    summary="Request Task (GET, as in the seed)",
)
@router.post(
    paths.TASK_LEASE,
    responses=LEASED,
    response_model=v1.LeasedTask | v1.LeaseBatch,
    operation_id="request_task",
)
async def request_task(
    request: Request,
    state: StateDep,
    principal: PrincipalDep,
    session_id: SessionHeader = None,
    max_tasks: Annotated[int | None, Query(ge=1, le=v1.MAX_LEASE_TASKS)] = None,
    wait: Annotated[float, Query(ge=0, le=v1.MAX_WAIT_SECONDS)] = 0,
) -> Response:
    leased = await _lease(state, request, principal, session_id, max_tasks or 1, wait)
    for task in leased:  # what the client sends origins, unless it was told otherwise
        task.user_agent = state.settings.agent
    if not leased:
        # Tells clients running with --exit-when-idle whether work may still come
        # back (pending in backoff, or assigned to someone whose lease may lapse).
        counts = await stats.status_counts(state.pool)
        outstanding = counts[v1.TaskStatus.PENDING] + counts[v1.TaskStatus.ASSIGNED]
        return Response(
            status_code=status.HTTP_204_NO_CONTENT, headers={paths.OUTSTANDING_HEADER: str(outstanding)}
        )
    if max_tasks is None:
        return json_reply(leased[0])
    return json_reply(v1.LeaseBatch(tasks=leased))


def json_reply(model: BaseModel, status_code: int = 200) -> Response:
    """The model serialised once, in pydantic's compiled serialiser. A returned model would be
    validated again against response_model and then encoded by json.dumps, twice the work on
    the hot paths (lease, complete)."""
    return Response(model.model_dump_json(), status_code=status_code, media_type="application/json")


def _caller(principal: Principal, session_id: str | None) -> Caller:
    return Caller(principal.owner, session_id)


@router.post(paths.TASK_COMPLETE, response_model=v1.Task)
async def complete_task(
    body: v1.TaskComplete, state: StateDep, principal: PrincipalDep, session_id: SessionHeader = None
) -> Response:
    """Complete a leased task. Without lease_token (the seed's body) the completion is fenced by
    the caller's live lease on the task (and X-Session-Id when sent); with it, by the token."""
    reports = split_reports(body.documents, state.settings.shard_size, state.store.url, body.warc)
    with state.metrics.counting_refusals():
        task = await lifecycle.complete_task(state.pool, body, _caller(principal, session_id), reports)
    state.metrics.completions.inc()
    state.metrics.count_reports(body.documents)
    return json_reply(task)


@router.post(paths.TASK_COMPLETE_BATCH, response_model=v1.TaskCompleteBatchResult)
async def complete_tasks(
    body: v1.TaskCompleteBatch, state: StateDep, principal: PrincipalDep, session_id: SessionHeader = None
) -> Response:
    """Complete up to 100 leased tasks in one call and one transaction. Each completion is
    fenced on its own and answered on its own (`status_code` 200, or 404 / 409 with its `code`),
    so one lost lease does not refuse the others. A wrong document in any of them refuses the
    whole call (422) before anything is written."""
    reports = [
        split_reports(c.documents, state.settings.shard_size, state.store.url, c.warc)
        for c in body.completions
    ]
    caller = _caller(principal, session_id)
    outcomes = await lifecycle.complete_tasks(state.pool, body.completions, caller, reports)
    results = [_result(c.task_id, outcome) for c, outcome in zip(body.completions, outcomes, strict=True)]
    completed = sum(r.status_code == 200 for r in results)
    state.metrics.completions.inc(completed)
    state.metrics.stale_refusals.inc(sum(isinstance(o, LeaseLost) for o in outcomes))
    for c in body.completions:
        state.metrics.count_reports(c.documents)
    return json_reply(v1.TaskCompleteBatchResult(results=results, completed=completed))


def _result(task_id: UUID, outcome: lifecycle.Completion) -> v1.CompletionResult:
    if isinstance(outcome, v1.Task):
        return v1.CompletionResult(task_id=task_id, status_code=200)
    status_code, code = status_and_code(outcome)
    return v1.CompletionResult(task_id=task_id, status_code=status_code, code=code, error=outcome.message)


@router.post(paths.TASK_PROGRESS, response_model=v1.Task)
async def report_progress(
    task_id: UUID,
    body: v1.TaskProgress,
    state: StateDep,
    principal: PrincipalDep,
    session_id: SessionHeader = None,
) -> v1.Task:
    reports = split_reports(body.documents, state.settings.shard_size, state.store.url, body.warc)
    caller = _caller(principal, session_id)
    with state.metrics.counting_refusals():
        task = await lifecycle.report_progress(
            state.pool, task_id, body, caller, state.settings.lease_seconds, reports
        )
    state.metrics.count_reports(body.documents)
    return task


@router.post(paths.TASK_FAIL, response_model=v1.Task)
async def fail_task(
    task_id: UUID,
    body: v1.TaskFail,
    state: StateDep,
    principal: PrincipalDep,
    session_id: SessionHeader = None,
) -> v1.Task:
    caller = _caller(principal, session_id)
    with state.metrics.counting_refusals():
        task = await lifecycle.fail_task(state.pool, task_id, body, caller, state.backoff)
    state.metrics.failures.labels(str(task.status is v1.TaskStatus.FAILED).lower()).inc()
    if body.blocked and task.job_id is not None:  # the job's dead-man switch
        s = state.settings
        await pausing.judge(
            state.pool, task.job_id, pausing.Switch(s.job_pause_ratio, s.job_pause_min_answers)
        )
    return task


@router.post(paths.TASK_DISCOVERED, response_model=v1.DiscoveredReply)
async def discovered(
    task_id: UUID,
    body: v1.TaskDiscovered,
    state: StateDep,
    principal: PrincipalDep,
    session_id: SessionHeader = None,
) -> v1.DiscoveredReply:
    """A search task's findings, queued once each as `urls` tasks for the whole fleet (its source
    profile says `spread_chunk_size`); fenced by the lease like progress."""
    caller = _caller(principal, session_id)
    with state.metrics.counting_refusals():
        return await discovery.discovered(state.pool, task_id, body, caller, state.settings.max_attempts)


@router.post("/tasks/retry-failed", response_model=v1.Retried)
async def retry_failed(
    state: StateDep, _: AdminDep, limit: Annotated[int, Query(ge=1, le=v1.MAX_LIST_LIMIT)] = 1000
) -> v1.Retried:
    """Send up to `limit` failed tasks (newest first) back to pending with fresh attempts."""
    return v1.Retried(tasks=await lifecycle.retry_failed(state.pool, limit))


@router.post("/tasks/{task_id}/cancel", response_model=v1.Task)
async def cancel_task(task_id: UUID, state: StateDep, _: AdminDep) -> v1.Task:
    return await lifecycle.cancel_task(state.pool, task_id)


@router.post("/tasks/{task_id}/retry", response_model=v1.Task)
async def retry_task(task_id: UUID, state: StateDep, _: AdminDep) -> v1.Task:
    return await lifecycle.retry_task(state.pool, task_id)


@router.get("/tasks/status", response_model=v1.StatusReport)
async def task_status(state: StateDep, _: AdminDep) -> v1.StatusReport:
    return await stats.status_report(state.pool)


@router.get("/stats", response_model=v1.Stats)
async def get_stats(state: StateDep, _: AdminDep) -> v1.Stats:
    """The dashboard's numbers: counts, the last hour minute by minute, recent jobs with ETA."""
    board = await dashboard.dashboard(state.pool, state.settings.client_stale_seconds, state.host_defaults)
    snap = board.snapshot
    minutes = [
        v1.Minute(minutes_ago=59 - i, tasks_completed=t, documents_downloaded=d)
        for i, (t, d) in enumerate(board.per_minute)
    ]
    return v1.Stats(
        counts=snap.counts,
        documents=snap.documents,
        document_bytes=snap.document_bytes,
        oldest_pending_seconds=snap.oldest_pending_seconds,
        clients=snap.clients,
        per_minute=minutes,
        jobs=board.jobs,
    )


@router.get("/tasks", response_model=v1.TaskList)
async def list_tasks(
    state: StateDep,
    _: AdminDep,
    status_filter: v1.TaskStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=v1.MAX_LIST_LIMIT)] = 100,
    cursor: Annotated[str | None, Query(max_length=20)] = None,
) -> v1.TaskList:
    try:
        before = db.decode_cursor(cursor)
    except ValueError as exc:
        raise InvalidCursor(str(exc)) from None
    return await db.list_tasks(state.pool, status_filter, limit, before)


@router.get(paths.TASK, response_model=v1.Task)
async def get_task(task_id: UUID, state: StateDep, principal: PrincipalDep) -> v1.Task:
    return await db.get_task(state.pool, task_id, principal.owner)
