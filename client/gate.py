"""The gate's API as the client sees it: requests built from protocol models, replies parsed
into them, errors mapped from their wire code (never from a bare status) to client errors."""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
from typing import Any, TypeVar
from uuid import UUID

import httpx
from pydantic import BaseModel

from client.errors import (
    ClientError,
    GateRefused,
    GateUnavailable,
    InvalidRequest,
    KeyRejected,
    LeaseLost,
    NotYourTask,
)
from protocol import hosts, paths, v1
from protocol.errors import ErrorCode, parse_error
from protocol.failures import FailureCode

log = logging.getLogger("docgate.client.gate")
M = TypeVar("M", bound=BaseModel)
C = ErrorCode

# Every code the gate can answer with, and what it means here. Unavailable ones are retried.
ERRORS: dict[ErrorCode, type[ClientError]] = {
    C.LEASE_LOST: LeaseLost,
    C.NOT_YOUR_TASK: NotYourTask,
    C.UNAUTHORIZED: KeyRejected,
    C.FORBIDDEN: KeyRejected,
    C.INTERNAL_ERROR: GateUnavailable,
    C.DATABASE_UNAVAILABLE: GateUnavailable,
    C.STORAGE_UNAVAILABLE: GateUnavailable,
    C.STORAGE_TIMEOUT: GateUnavailable,
    C.INVALID_BODY: InvalidRequest,
    C.INVALID_FIELD: InvalidRequest,
    C.INVALID_CURSOR: InvalidRequest,
    C.WRONG_STORAGE_KEY: InvalidRequest,
    C.INVALID_KEY: InvalidRequest,
    C.TOO_LARGE: InvalidRequest,
    C.UNSUPPORTED_ENCODING: InvalidRequest,
    C.LEASE_REQUIRED: InvalidRequest,
    C.NOT_IN_TASK: InvalidRequest,
    C.ROUTE_NOT_FOUND: InvalidRequest,
    C.METHOD_NOT_ALLOWED: InvalidRequest,
    C.CHECKSUM_MISMATCH: GateRefused,
    C.CORRUPT_GZIP: GateRefused,
    C.UPLOAD_INTERRUPTED: GateRefused,
    C.JOB_NOT_FOUND: GateRefused,
    C.SOURCE_NOT_FOUND: GateRefused,
    C.CLIENT_NOT_FOUND: GateRefused,
    C.DOCUMENT_NOT_FOUND: GateRefused,
    C.OBJECT_MISSING: GateRefused,
    C.ALREADY_STORED: GateRefused,
    C.INVALID_STATE: GateRefused,
    C.KEY_IN_USE: GateRefused,
    C.IDEMPOTENCY_CONFLICT: GateRefused,
    C.JOB_TOO_LARGE: GateRefused,
    C.INVALID_HARVEST: GateRefused,
    C.LEASE_CAP: GateRefused,
    C.SESSION_ENDED: GateRefused,
}


class GateAPI:
    def __init__(
        self,
        api_url: str,
        api_key: str | None,
        session_id: str,
        *,
        ca_cert: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        headers = {paths.SESSION_HEADER: session_id, "User-Agent": "docgate-client/0.1"}
        if api_key:
            headers[paths.API_KEY_HEADER] = api_key
        # Reads wait out a long-poll (≤ 30 s at the gate) with room to spare.
        timeout = httpx.Timeout(30, connect=10, read=60)
        verify = ssl.create_default_context(cafile=ca_cert) if ca_cert else True
        self.http = httpx.AsyncClient(
            base_url=api_url.rstrip("/"), headers=headers, timeout=timeout, verify=verify, transport=transport
        )
        self.session_id = session_id
        self.grants_take_tasks = True  # until an older gate says it does not know the field

    async def close(self) -> None:
        await self.http.aclose()

    async def _call(
        self, method: str, path: str, body: BaseModel | None = None, *, attempts: int = 6, **kwargs: Any
    ) -> httpx.Response:
        """One API call, retried with backoff while the gate is unreachable or busy."""
        if body is not None:
            # A field left None is left out (every client field's None means "not said"), so an
            # older gate, whose schema forbids fields it does not know, hears only what it knows.
            kwargs["content"] = body.model_dump_json(exclude_none=True)
            kwargs["headers"] = {"Content-Type": "application/json"}
        for attempt in range(attempts):
            try:
                reply = await self.http.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                problem: ClientError = GateUnavailable(
                    f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                )
            else:
                if reply.status_code < 400:
                    return reply
                problem = gate_error(reply)
                if not isinstance(problem, GateUnavailable):
                    raise problem
            if attempt + 1 < attempts:
                delay = min(30.0, 0.5 * 2**attempt) * random.uniform(0.5, 1.0)
                log.warning("gate %s %s failed (%s); retrying in %.1f s", method, path, problem, delay)
                await asyncio.sleep(delay)
        raise GateUnavailable(f"gate {method} {path} failed: {problem}")

    async def _model(self, model: type[M], method: str, path: str, body: BaseModel | None = None,
                     **kwargs: Any) -> M:  # fmt: skip
        reply = await self._call(method, path, body, **kwargs)
        try:
            return model.model_validate_json(reply.content)
        except ValueError as exc:
            raise GateUnavailable(
                f"gate {method} {path}: the reply is not a {model.__name__}: {exc}"
            ) from None

    def _heartbeat_body(
        self, docs_per_minute: float | None = None, held: list[UUID] | None = None
    ) -> v1.Heartbeat:
        rate = None if docs_per_minute is None else min(round(docs_per_minute, 2), v1.MAX_DOCS_PER_MINUTE)
        return v1.Heartbeat(session_id=self.session_id, docs_per_minute=rate, task_ids=held)

    async def check(self) -> None:
        """Reach the gate and prove the key works; raise with a clear reason otherwise."""
        await self._call("GET", paths.HEALTH, attempts=1)
        await self._call("POST", paths.url(paths.CLIENT_HEARTBEAT), self._heartbeat_body(), attempts=1)

    async def lease(self, max_tasks: int, wait: float) -> tuple[list[v1.LeasedTask], int | None]:
        """Leased tasks, and (when none) how many tasks are still pending or assigned anywhere."""
        params = {"max_tasks": max_tasks, "wait": min(wait, v1.MAX_WAIT_SECONDS)}
        reply = await self._call("POST", paths.url(paths.TASK_LEASE), params=params)
        if reply.status_code == 204:
            outstanding = reply.headers.get(paths.OUTSTANDING_HEADER)
            return [], int(outstanding) if outstanding and outstanding.isdigit() else None
        return v1.LeaseBatch.model_validate_json(reply.content).tasks, None

    async def goodbye(self) -> int:
        """This process stops: its leases back, nothing more leased to it. How many went back."""
        reply = await self._call("DELETE", paths.url(paths.SESSION), attempts=2)
        return v1.Goodbye.model_validate_json(reply.content).tasks_handed_back

    async def progress(
        self,
        task: v1.LeasedTask,
        counts: v1.Counts,
        documents: list[v1.DocumentReport],
        warc: v1.WarcReport | None = None,
    ) -> v1.Task:
        body = v1.TaskProgress(lease_token=task.lease_token, documents=documents, warc=warc, **dict(counts))
        return await self._model(v1.Task, "POST", paths.url(paths.TASK_PROGRESS, task_id=task.task_id), body)

    async def discovered(self, task: v1.LeasedTask, refs: list[tuple[str, str, str]]) -> v1.DiscoveredReply:
        """Hand what a search found to the fleet: (doc_id, url, ext) each, queued once at the gate."""
        items = [v1.UrlItem(doc_id=d, url=u, ext=e or None) for d, u, e in refs]
        body = v1.TaskDiscovered(lease_token=task.lease_token, documents=items)
        path = paths.url(paths.TASK_DISCOVERED, task_id=task.task_id)
        return await self._model(v1.DiscoveredReply, "POST", path, body)

    async def complete(
        self,
        task: v1.LeasedTask,
        counts: v1.Counts,
        documents: list[v1.DocumentReport],
        summary: dict[str, Any],
        warc: v1.WarcReport | None = None,
        listing: v1.ListingReport | None = None,
    ) -> v1.Task:
        body = v1.TaskComplete(
            task_id=task.task_id, lease_token=task.lease_token, documents=documents,
            result_summary=summary, warc=warc, listing=listing, **dict(counts),
        )  # fmt: skip
        try:
            return await self._model(v1.Task, "POST", paths.url(paths.TASK_COMPLETE), body)
        except InvalidRequest as exc:
            if listing is None or not _unknown_field(exc, "listing"):
                raise
            # An older gate takes no listing report (the summary carries it): complete without.
            body.listing = None
            return await self._model(v1.Task, "POST", paths.url(paths.TASK_COMPLETE), body)

    async def fail(
        self,
        task: v1.LeasedTask,
        code: FailureCode,
        error: str,
        retryable: bool,
        *,
        attempt_spent: bool = True,
        blocked: int = 0,
        page: int | None = None,
    ) -> v1.Task:
        reason = v1.clip(error, v1.MAX_TEXT) or "no reason given"
        body = v1.TaskFail(
            lease_token=task.lease_token,
            error=reason,
            code=code,
            page=page,
            retryable=retryable,
            attempt_spent=attempt_spent,
            blocked=min(blocked, v1.MAX_DOCUMENTS_PER_TASK),
        )
        path = paths.url(paths.TASK_FAIL, task_id=task.task_id)
        return await self._model(v1.Task, "POST", path, body, attempts=3)

    async def heartbeat(self, docs_per_minute: float, held: list[UUID]) -> list[UUID]:
        """Extend the leases of the tasks in `held` (only those); return tasks cancelled meanwhile."""
        body = self._heartbeat_body(docs_per_minute, held)
        path = paths.url(paths.CLIENT_HEARTBEAT)
        reply = await self._model(v1.HeartbeatReply, "POST", path, body, attempts=2)
        return reply.cancelled_task_ids

    async def grants(self, reports: list[hosts.HostReport], tasks: list[UUID]) -> hosts.GrantReply:
        """This client's shares of the hosts' budgets, with what it saw since it last asked; and
        which of the tasks it holds the gate has paused (their job)."""
        body = hosts.GrantRequest(hosts=reports, tasks=tasks if tasks and self.grants_take_tasks else None)
        try:
            return await self._model(hosts.GrantReply, "POST", paths.url(paths.HOST_GRANTS), body, attempts=1)
        except InvalidRequest as exc:
            if not body.tasks or not _unknown_field(exc, "tasks"):
                raise
            self.grants_take_tasks = False  # an older gate: it tells no job's pause this way
            body.tasks = None
            return await self._model(hosts.GrantReply, "POST", paths.url(paths.HOST_GRANTS), body, attempts=1)

    async def known(self, doc_ids: list[str], collection: str = "") -> set[str]:
        """Which of these doc_ids of `collection` the gate has recorded."""
        known: set[str] = set()
        for start in range(0, len(doc_ids), v1.MAX_DOCUMENTS_PER_REPORT):
            chunk: list[int | str] = list(doc_ids[start : start + v1.MAX_DOCUMENTS_PER_REPORT])
            body = v1.KnownDocuments(doc_ids=chunk, collection=collection)
            reply = await self._model(v1.KnownDocumentsReply, "POST", paths.url(paths.DOCUMENTS_KNOWN), body)
            known.update(reply.known)
        return known


def gate_error(reply: httpx.Response) -> ClientError:
    """The client error an error reply stands for, by its code. A reply without one did not come
    from a gate (a proxy's page): 5xx and 429 are unavailability, anything else a refusal."""
    body = parse_error(reply.content, reply.headers.get(paths.ERROR_CODE_HEADER))
    if body is None:
        text = reply.text[:200] or reply.reason_phrase
        if reply.status_code >= 500 or reply.status_code == 429:
            return GateUnavailable(f"HTTP {reply.status_code}: {text}")
        return GateRefused(f"gate answered {reply.status_code}: {text}")
    detail = body.message()
    if body.code in (C.UNAUTHORIZED, C.FORBIDDEN):
        detail = f"the gate refused the API key (--api-key): {detail}"
    return ERRORS[body.code](f"{body.code}: {detail}", body.code)


def _unknown_field(exc: ClientError, name: str) -> bool:
    """An older gate's 422 for a field it does not know (its schema forbids extra fields)."""
    return exc.code == ErrorCode.INVALID_FIELD and name in (exc.message or "")
