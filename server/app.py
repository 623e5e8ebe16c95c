"""The gate's FastAPI application: create_app(settings) and the lifespan that owns the pool."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from functools import partial
from types import SimpleNamespace
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from protocol import paths
from protocol.errors import ErrorBody, ErrorCode, error_body
from protocol.hosts import GrantRequest
from server import api, bootstrap
from server.auth import CACHE_SECONDS, Authenticator
from server.config import Settings
from server.db import harvests, hosts, jobs, lifecycle, pausing, revisits, stats, verify
from server.db.pool import create_pool
from server.errors import DatabaseUnavailable, DocgateError, status_and_code
from server.metrics import Metrics
from server.observe import Observe
from server.state import GateState
from server.ui import router as ui_router
from server.version import VERSION
from server.wakeup import TaskWakeup
from storage import Storage, StorageError

log = logging.getLogger("docgate.gate")
UPLOAD = paths.PREFIX + paths.DOCUMENT_RAW  # the route of document uploads (server/api/documents.py)
WARC_UPLOAD = paths.PREFIX + paths.TASK_WARC  # a task's WARC files, uploaded under its lease
PROMOTE_EVERY = 0.25  # seconds between promotions of tasks come due
CREATION_POLL = 2.0  # seconds between looks for jobs another gate left half created


def create_app(settings: Settings, dsn: str, *, apply_migrations: bool = True) -> FastAPI:
    """Build the app for one PostgreSQL; the lifespan migrates (or, when the caller already did,
    checks the schema), then serves."""
    metrics = Metrics(settings.metrics_hosts)
    lifespan = _lifespan(settings, dsn, metrics, apply_migrations)
    app = FastAPI(title="docgate", version=VERSION, lifespan=lifespan)
    api.include(app)
    app.include_router(ui_router)
    app.add_middleware(GrantFastPath, gate=app)  # innermost: inside the body limit
    # Document uploads stream to storage under their own limit (MAX_UPLOAD_BYTES).
    app.add_middleware(
        BodyLimit, max_bytes=settings.max_body_bytes, streamed=[("PUT", UPLOAD), ("PUT", WARC_UPLOAD)]
    )
    app.add_middleware(Observe, metrics=metrics)
    app.add_exception_handler(DocgateError, _error)
    app.add_exception_handler(StorageError, _error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
    app.openapi = _documented_errors(app.openapi)  # type: ignore[method-assign]
    return app


def _documented_errors(build: Callable[[], dict[str, Any]]) -> Callable[[], dict[str, Any]]:
    """Every operation documents its errors as ErrorBody ({detail, code}): the 422 FastAPI lists,
    and a default response for the rest (401, 403, 404, 409, 413, …)."""

    def openapi() -> dict[str, Any]:
        schema = build()
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        body = ErrorBody.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(body.pop("$defs", {}))
        components["ErrorBody"] = body
        for unused in ("HTTPValidationError", "ValidationError"):
            components.pop(unused, None)
        error = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}}
        for operations in schema.get("paths", {}).values():
            for operation in operations.values():
                responses = operation.setdefault("responses", {})
                if "422" in responses:
                    responses["422"] = {"description": "Invalid field (code invalid_field)", **error}
                responses.setdefault("default", {"description": "An error, with its code", **error})
        return schema

    return openapi


def _lifespan(
    settings: Settings, dsn: str, metrics: Metrics, apply_migrations: bool
) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        pool = await create_pool(dsn, settings.db_pool_min, settings.db_pool_max)
        try:
            await bootstrap.prepare_database(pool, settings, apply_migrations=apply_migrations)
            if not settings.operator_contact and not settings.user_agent:
                log.warning(
                    "OPERATOR_CONTACT is unset: clients will send origins the User-Agent %r, with no way "
                    "for a registry's operator to reach you; set it to a URL or an e-mail address",
                    settings.agent,
                )
            admin_key = settings.admin_api_key.get_secret_value() if settings.admin_api_key else None
            store = settings.open_store()
            state = GateState(
                settings=settings,
                pool=pool,
                wakeup=TaskWakeup(dsn),
                metrics=metrics,
                auth=Authenticator(pool, admin_key, settings.enable_auth),
                store=store,
            )
            app.state.gate = state
            state.wakeup.start(
                partial(lifecycle.leasable, pool, state.spread), settings.poll_fallback_seconds
            )
            state.budgets.start()
            background = [
                asyncio.create_task(_probe(store), name="docgate-store-probe"),
                asyncio.create_task(_housekeeping(state), name="docgate-housekeeping"),
                asyncio.create_task(_promote(state), name="docgate-promote"),
                asyncio.create_task(_create_jobs(state), name="docgate-job-creation"),
                asyncio.create_task(_watch_loop(metrics), name="docgate-loop-lag"),
                asyncio.create_task(_refresh_keys(state), name="docgate-key-cache"),
            ]
            # What was built to start (the app, its routes and models, the settings) lives as long
            # as the process: out of the collector's sight, a full collection under load walks
            # only what requests made, not every object of the app again.
            gc.freeze()
            try:
                yield
            finally:
                for task in background:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
                await state.budgets.stop()
                await state.wakeup.stop()
                await store.close()
        finally:
            await pool.close()

    return lifespan


async def _probe(store: Storage) -> None:
    """Find out at start whether the store takes writes and honours conditional writes (an S3
    endpoint that does not gets the version fence); a failure is logged, not fatal: the gate
    still leases work, and uploads through it say what is wrong."""
    try:
        await store.probe()
    except StorageError as exc:
        log.error("the store %s refused a probe write: %s", store.url, exc.message)


async def _housekeeping(state: GateState) -> None:
    """Expire dead leases and fold status counts, on every gate (SKIP LOCKED keeps them apart)."""
    rounds = 0
    while True:
        try:
            expired = await lifecycle.reap_expired(state.pool, state.backoff)
            state.metrics.expirations.inc(expired)
            if expired:
                log.info("expired %d leases", expired)
            await stats.fold_counts(state.pool)
            await stats.prune_events(state.pool, state.settings.task_events_retention_seconds)
            await pausing.hold_returned(state.pool)
            await lifecycle.hand_back_ended(state.pool)  # a lease that raced a goodbye
            while await harvests.start_due_run(state.pool) is not None:
                pass  # a repeating harvest's run: one gate starts each (the job's row lock)
            while await revisits.start_due(state.pool, state.settings.max_attempts) is not None:
                pass  # a job's revisit, as its schedule says (server/db/revisits.py)
            await verify.queue_due(state.pool)  # other clients' checks of a job's sample
            rounds += 1
            if rounds % 60 == 0:
                await hosts.forget(state.pool)
        except DatabaseUnavailable:
            log.warning("database unavailable; housekeeping will retry")
        except Exception:  # keep the loop alive whatever one round hits
            log.exception("housekeeping round failed")
        await asyncio.sleep(state.settings.reap_interval_seconds)


async def _promote(state: GateState) -> None:
    """Make tasks leasable as their back-off ends, on every gate (SKIP LOCKED keeps them apart):
    a quarter of a second at most after their run_after (one index probe when none is due)."""
    every = min(PROMOTE_EVERY, state.settings.reap_interval_seconds)
    while True:
        try:
            await lifecycle.promote_due(state.pool)
        except DatabaseUnavailable:
            pass  # housekeeping says so
        except Exception:
            log.exception("promoting due tasks failed")
        await asyncio.sleep(every)


async def _create_jobs(state: GateState) -> None:
    """Insert the tasks of jobs answered 202, a slice per transaction, on every gate (SKIP
    LOCKED: one gate per job at a time; a gate killed midway leaves the rest to the others)."""
    while True:
        state.creation.clear()
        try:
            while await jobs.create_slice(state.pool) is not None:
                pass
        except DatabaseUnavailable:
            pass  # housekeeping says so
        except Exception:
            log.exception("creating a job's tasks failed")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(state.creation.wait(), CREATION_POLL)


async def _refresh_keys(state: GateState) -> None:
    """Keep the keys of working clients looked up, all in one query a round (server.auth)."""
    while True:
        await asyncio.sleep(CACHE_SECONDS / 4)
        try:
            await state.auth.refresh()
        except DatabaseUnavailable:
            pass  # housekeeping says so; the keys run out and are looked up one by one
        except Exception:
            log.exception("refreshing the key cache failed")


async def _watch_loop(metrics: Metrics, every: float = 0.05) -> None:
    """Measure how late the loop runs a timer: anything blocking the loop shows up here."""
    loop = asyncio.get_running_loop()
    while True:
        due = loop.time() + every
        await asyncio.sleep(every)
        metrics.loop_lag.observe(max(0.0, loop.time() - due))


async def _error(request: Request, exc: Exception) -> JSONResponse:
    """Every error of ours, and any storage error met while serving, as {detail, code}."""
    status, code = status_and_code(exc)
    message = getattr(exc, "message", None) or str(exc)
    if status >= 500:
        log.warning("%s %s: %s", request.method, request.url.path, message)
    return error_reply(status, code, message)


def error_reply(
    status: int, code: ErrorCode, detail: str | list[dict[str, Any]], headers: Mapping[str, str] | None = None
) -> JSONResponse:
    """An error reply: {detail, code} in the body, the code again in X-Error-Code."""
    sent = {**(headers or {}), paths.ERROR_CODE_HEADER: code.value}
    return JSONResponse(error_body(code, detail), status_code=status, headers=sent)


HTTP_CODES = {404: ErrorCode.ROUTE_NOT_FOUND, 405: ErrorCode.METHOD_NOT_ALLOWED}


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own answers (no such route, method not allowed) in our shape."""
    assert isinstance(exc, StarletteHTTPException)
    code = HTTP_CODES.get(exc.status_code, ErrorCode.INVALID_BODY)
    return error_reply(exc.status_code, code, str(exc.detail), exc.headers)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    """A bug: logged with its traceback, answered without one."""
    log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
    return error_reply(500, ErrorCode.INTERNAL_ERROR, "internal error")


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    """422 listing what was wrong; never echo the input (it may hold a key)."""
    assert isinstance(exc, RequestValidationError)
    errors = [
        {"loc": list(e.get("loc", ())), "msg": e.get("msg", "invalid"), "type": e.get("type")}
        for e in exc.errors()
    ]
    return error_reply(422, ErrorCode.INVALID_FIELD, errors)


class BodyLimit:
    """Refuse bodies over the limit (413, with or without Content-Length) and non-UTF-8 bodies (400).

    The gate's bodies are JSON, which is UTF-8 by definition; the routes in `streamed` (method
    and route template, as the router declares them: binary uploads) are matched as the router
    matches its templates, and pass through with their own limit.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, streamed: Sequence[tuple[str, str]] = ()) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.streamed = [(method, compile_path(template)[0]) for method, template in streamed]

    def _streams(self, scope: Scope) -> bool:
        return any(m == scope["method"] and p.fullmatch(scope["path"]) for m, p in self.streamed)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self._streams(scope):
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await self._refuse(send)
            return
        body = bytearray()
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                break
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_bytes:
                await self._refuse(send)
                return
        if body and not _is_utf8(body):
            await _answer(send, 400, ErrorCode.INVALID_BODY, "request body is not valid UTF-8")
            return
        await self.app(scope, _replay(bytes(body), receive), send)

    async def _refuse(self, send: Send) -> None:
        await _answer(send, 413, ErrorCode.TOO_LARGE, f"request body larger than {self.max_bytes} bytes")


_GRANTS_ROUTE = SimpleNamespace(path=paths.PREFIX + paths.HOST_GRANTS)  # what Observe reads of a route


class GrantFastPath:
    """`POST /api/v1/hosts/grants` answered without the framework's routing and dependency
    solving, which were two thirds of a grant's CPU (a fleet's clients ask every second or
    two). Only a well-formed request — one API key and at most one session header, within
    their lengths; one JSON content type; a known key; a body that validates — is answered
    here, by the route's own code (server.api.hosts.answer_grants). Any other goes on to the
    app, body and all, which answers it, and its errors, as every route. An error met while
    answering is answered by the app's own handlers."""

    PATH = _GRANTS_ROUTE.path

    def __init__(self, app: ASGIApp, gate: FastAPI) -> None:
        self.app = app
        self.gate = gate

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != self.PATH or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        body = bytearray()
        while True:  # whole already (BodyLimit): one message
            message = await receive()
            body += message.get("body", b"")
            if message["type"] != "http.request" or not message.get("more_body", False):
                break
        known = await self._known(scope, bytes(body))
        if known is None:
            await self.app(scope, _replay(bytes(body), receive), send)
            return
        state, principal, session_id, request = known
        scope["route"] = _GRANTS_ROUTE  # labelled in the metrics and the log as the route
        client = scope.get("client")
        try:
            reply = await api.hosts.answer_grants(
                state, principal.client_id, session_id, request, client[0] if client else ""
            )
        except Exception as exc:  # noqa: BLE001 - answered as the app answers it
            handler = _error if isinstance(exc, (DocgateError, StorageError)) else _unexpected
            await (await handler(Request(scope), exc))(scope, receive, send)
            return
        await Response(reply.model_dump_json(), media_type="application/json")(scope, receive, send)

    async def _known(self, scope: Scope, body: bytes) -> tuple[GateState, Any, str | None, Any] | None:
        """The request's parts, if it is one this path answers."""
        keys = [v for k, v in scope["headers"] if k == b"x-api-key"]
        sessions = [v for k, v in scope["headers"] if k == b"x-session-id"]
        if len(keys) != 1 or len(keys[0]) > 256 or len(sessions) > 1 or sessions and len(sessions[0]) > 100:
            return None
        types = [v for k, v in scope["headers"] if k == b"content-type"]
        if len(types) != 1 or not _json_type(types[0]):  # the app may not read it as JSON: its answer
            return None
        state: GateState | None = getattr(self.gate.state, "gate", None)
        if state is None:
            return None
        try:
            principal = await state.auth.authenticate(keys[0].decode("latin-1"))
            request = GrantRequest.model_validate_json(body)
        except (DocgateError, ValidationError):
            return None
        return state, principal, sessions[0].decode("latin-1") if sessions else None, request


def _json_type(content_type: bytes) -> bool:
    kind = content_type.split(b";", 1)[0].strip().lower()
    return kind == b"application/json" or kind.startswith(b"application/") and kind.endswith(b"+json")


def _is_utf8(body: bytearray) -> bool:
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


async def _answer(send: Send, status: int, code: ErrorCode, detail: str) -> None:
    await error_reply(status, code, detail)({"type": "http"}, _no_body, send)


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _no_body() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}
