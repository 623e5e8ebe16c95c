"""The dashboard at /ui: server-rendered HTML, a little vanilla JavaScript, nothing fetched from elsewhere.

Login takes the admin API key and keeps it in an HttpOnly, SameSite=Strict
cookie scoped to /ui: page scripts (and anything injected into them) cannot
read it, and other sites cannot send it. Actions also need an X-CSRF-Token
header, an HMAC of the key that only a page served to the admin carries.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qs
from uuid import UUID

from fastapi import APIRouter, Cookie, Header, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape

from protocol import v1
from protocol.harvests import Coverage
from protocol.hosts import HOST_KEY_PATTERN
from server.db import clients, hosts, lifecycle, pausing
from server.db import coverage as db_coverage
from server.db import dashboard as data
from server.db import documents as db_documents
from server.db import jobs as db_jobs
from server.db import tasks as db_tasks
from server.deps import StateDep
from server.errors import DocgateError, Forbidden, NotFound, Unauthorized, Unprocessable
from server.state import GateState

router = APIRouter(include_in_schema=False)
COOKIE = "docgate_admin"
templates = Environment(
    loader=FileSystemLoader(Path(__file__).parent / "templates"), autoescape=select_autoescape(["html"])
)
AdminCookie = Annotated[str | None, Cookie(alias=COOKIE)]


def csrf_token(key: str) -> str:
    return hmac.new(key.encode(), b"docgate-ui-csrf", hashlib.sha256).hexdigest()


async def _is_admin(state: GateState, key: str | None) -> bool:
    if not key:
        return False
    try:
        return (await state.auth.authenticate(key)).is_admin
    except Unauthorized:
        return False


def _page(name: str, status: int = 200, **context: Any) -> HTMLResponse:
    return HTMLResponse(templates.get_template(name).render(**context), status_code=status)


@router.get("/ui", response_class=HTMLResponse)
async def ui(
    state: StateDep,
    docgate_admin: AdminCookie = None,
    task: str | None = None,
    job: str | None = None,
    document: str | None = None,
    collection: str = "",
) -> Response:
    if not await _is_admin(state, docgate_admin):
        return _page("login.html", error=None)
    assert docgate_admin is not None
    found, problem = await _find_task(state, task)
    the_job, failures, coverage, job_problem = await _find_job(state, job)
    the_document, document_problem = await _find_document(state, document, collection)
    board = await data.dashboard(state.pool, state.settings.client_stale_seconds, state.host_defaults)
    return _page(
        "dashboard.html",
        board=board,
        csrf=csrf_token(docgate_admin),
        task=found,
        task_query=task or "",
        task_problem=problem,
        job=the_job,
        job_query=job or "",
        job_failures=failures,
        timeline=coverage,
        job_problem=job_problem,
        document=the_document,
        document_query=document or "",
        document_problem=document_problem,
    )


@router.get("/ui/live", response_class=HTMLResponse)
async def live(state: StateDep, docgate_admin: AdminCookie = None) -> Response:
    if not await _is_admin(state, docgate_admin):
        return HTMLResponse("", status_code=401)
    board = await data.dashboard(state.pool, state.settings.client_stale_seconds, state.host_defaults)
    return _page("live.html", board=board)


async def _find_task(state: GateState, task: str | None) -> tuple[Any, str | None]:
    if not task:
        return None, None
    try:
        return await db_tasks.get_task(state.pool, UUID(task.strip()), None), None
    except ValueError:
        return None, "not a task id (a UUID like 3f2b…)"
    except DocgateError as exc:
        return None, exc.message


async def _find_document(state: GateState, doc_id: str | None, collection: str) -> tuple[Any, str | None]:
    """A document's record and capture, for the document view."""
    if not doc_id:
        return None, None
    if not v1.is_doc_id(doc_id.strip()):
        return None, "not a document id (digits, or letters, digits and . _ -)"
    if not re.fullmatch(v1.COLLECTION_PATTERN, collection):
        return None, "not a collection name (lower-case letters, digits, _ and -)"
    try:
        return await db_documents.get_document(state.pool, doc_id.strip(), collection), None
    except DocgateError as exc:
        return None, exc.message


async def _find_job(state: GateState, job: str | None) -> tuple[Any, Any, Any, str | None]:
    """A job, its failed documents by reason and (a harvest) its coverage, for the job view."""
    if not job:
        return None, None, None, None
    try:
        job_id = UUID(job.strip())
        found = await db_jobs.get_job(state.pool, job_id)
        failures = await db_jobs.failure_summary(state.pool, job_id)
        coverage = None if found.harvest is None else await db_coverage.coverage(state.pool, job_id, None)
        return found, failures, None if coverage is None else timeline(coverage), None
    except ValueError:
        return None, None, None, "not a job id (a UUID like 3f2b…)"
    except DocgateError as exc:
        return None, None, None, exc.message


# Which state a segment shows when several windows share its days (a day split by a field).
WORST = ("failed", "over_cap", "short", "cancelled", "searching", "pending", "complete")


def timeline(coverage: Coverage) -> dict[str, Any]:
    """The coverage as rows of segments placed by their days (one row per partition value), each
    coloured by its state: the gaps show at a glance."""
    first, last = coverage.date_from, coverage.date_to
    span = (last - first).days + 1 if first is not None and last is not None else 1
    cells: dict[tuple[str, Any, Any], list[str]] = {}
    for w in coverage.windows:
        if w.state != "split":
            cells.setdefault((w.value or "", w.date_from, w.date_to), []).append(w.state)
    rows: dict[str, list[dict[str, Any]]] = {}
    for (value, f, t), states in sorted(cells.items(), key=lambda c: (c[0][0], str(c[0][1]))):
        state = min(states, key=WORST.index)
        left = 0.0 if f is None or first is None else (f - first).days / span * 100
        width = 100.0 if f is None or t is None else ((t - f).days + 1) / span * 100
        title = f"{f or ''}..{t or ''} {value}: {state}".strip()
        rows.setdefault(value, []).append(
            {"state": state, "left": round(left, 3), "width": round(width, 3), "title": title}
        )
    return {
        "run": coverage.run, "runs": coverage.runs, "date_from": first, "date_to": last,
        "totals": coverage.totals, "complete": coverage.complete, "gaps": coverage.gaps,
        "rows": [{"label": value or "all", "segments": segs} for value, segs in rows.items()],
    }  # fmt: skip


@router.post("/ui/login")
async def login(request: Request, state: StateDep) -> Response:
    form = parse_qs((await request.body()).decode("utf-8", "replace"))
    key = (form.get("api_key") or [""])[0].strip()
    if not await _is_admin(state, key):
        return _page("login.html", status=401, error="That is not an admin API key.")
    response = RedirectResponse("/ui", status_code=303)
    secure = request.url.scheme == "https" or request.headers.get("x-forwarded-proto") == "https"
    response.set_cookie(
        COOKIE, key, httponly=True, samesite="strict", secure=secure, path="/ui", max_age=12 * 3600
    )
    return response


@router.post("/ui/logout")
async def logout() -> Response:
    response = RedirectResponse("/ui", status_code=303)
    response.delete_cookie(COOKIE, path="/ui")
    return response


@router.post("/ui/actions/{action}")
async def act(
    action: str,
    request: Request,
    state: StateDep,
    docgate_admin: AdminCookie = None,
    x_csrf_token: Annotated[str | None, Header()] = None,
) -> JSONResponse:
    if not await _is_admin(state, docgate_admin):
        raise Unauthorized("log in at /ui first")
    assert docgate_admin is not None
    if not x_csrf_token or not hmac.compare_digest(x_csrf_token, csrf_token(docgate_admin)):
        raise Forbidden("missing or wrong X-CSRF-Token")
    try:
        target = json.loads(await request.body() or b"{}").get("id")
    except (ValueError, AttributeError):
        target = None
    return JSONResponse(await _run_action(state, action, target))


async def _run_action(state: GateState, action: str, target: Any) -> dict[str, Any]:
    if action == "retry-failed":
        return {"retried": await lifecycle.retry_failed(state.pool, 1000)}
    if action in ("pause-host", "resume-host"):
        host = str(target or "")
        if not re.match(HOST_KEY_PATTERN, host):
            raise Unprocessable("id must be a host name")
        await hosts.pause(state.pool, host, action == "pause-host")
        state.budgets.changed(host)
        return {"host": host, "paused": action == "pause-host"}
    handler = ACTIONS.get(action)
    if handler is None:
        raise NotFound(f"unknown action {action!r}")
    try:
        ident = UUID(str(target))
    except ValueError:
        raise Unprocessable("id must be a task, job or client id") from None
    return await handler(state, ident)


async def _retry_task(state: GateState, ident: UUID) -> dict[str, Any]:
    return {"status": (await lifecycle.retry_task(state.pool, ident)).status.value}


async def _cancel_task(state: GateState, ident: UUID) -> dict[str, Any]:
    return {"status": (await lifecycle.cancel_task(state.pool, ident)).status.value}


async def _cancel_job(state: GateState, ident: UUID) -> dict[str, Any]:
    return {"cancelled": await lifecycle.cancel_job(state.pool, ident)}


async def _pause_job(state: GateState, ident: UUID) -> dict[str, Any]:
    await pausing.pause_job(state.pool, ident, "paused by an operator (dashboard)")
    state.budgets.job_paused()
    return {"paused": True}


async def _resume_job(state: GateState, ident: UUID) -> dict[str, Any]:
    await pausing.resume_job(state.pool, ident)
    return {"paused": False}


async def _revoke_client(state: GateState, ident: UUID) -> dict[str, Any]:
    revoked = await clients.revoke_client(state.pool, ident)
    state.auth.forget(ident)
    return {"tasks_handed_back": revoked.tasks_handed_back}


ACTIONS: dict[str, Callable[[GateState, UUID], Awaitable[dict[str, Any]]]] = {
    "retry-task": _retry_task,
    "cancel-task": _cancel_task,
    "cancel-job": _cancel_job,
    "pause-job": _pause_job,
    "resume-job": _resume_job,
    "revoke-client": _revoke_client,
}
