"""The gate's API as the client sees it: typed calls over httpx; 409 becomes LeaseLost."""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
from typing import Any
from uuid import UUID

import httpx

from client.errors import GateRefused, GateUnavailable, LeaseLost
from protocol import v1

log = logging.getLogger("docgate.client.gate")
RETRYABLE = {429, 500, 502, 503, 504}


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
        headers = {"X-Session-Id": session_id, "User-Agent": "docgate-client/0.1"}
        if api_key:
            headers["X-API-Key"] = api_key
        # Reads wait out a long-poll (≤ 30 s at the gate) with room to spare.
        timeout = httpx.Timeout(30, connect=10, read=60)
        verify = ssl.create_default_context(cafile=ca_cert) if ca_cert else True
        self.http = httpx.AsyncClient(
            base_url=api_url.rstrip("/"), headers=headers, timeout=timeout, verify=verify, transport=transport
        )
        self.session_id = session_id

    async def close(self) -> None:
        await self.http.aclose()

    async def _call(self, method: str, path: str, *, attempts: int = 6, **kwargs: Any) -> httpx.Response:
        """One API call, retried with backoff while the gate is unreachable or busy."""
        for attempt in range(attempts):
            try:
                reply = await self.http.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                problem = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            else:
                if reply.status_code not in RETRYABLE:
                    return _checked(reply)
                problem = f"HTTP {reply.status_code}"
            if attempt + 1 < attempts:
                delay = min(30.0, 0.5 * 2**attempt) * random.uniform(0.5, 1.0)
                log.warning("gate %s %s failed (%s); retrying in %.1f s", method, path, problem, delay)
                await asyncio.sleep(delay)
        raise GateUnavailable(f"gate {method} {path} failed: {problem}")

    async def check(self) -> None:
        """Reach the gate and prove the key works; raise with a clear reason otherwise."""
        await self._call("GET", "/health", attempts=1)
        await self._call(
            "POST", "/api/v1/clients/heartbeat", json={"session_id": self.session_id}, attempts=1
        )

    async def lease(self, max_tasks: int, wait: float) -> tuple[list[v1.LeasedTask], int | None]:
        """Leased tasks, and (when none) how many tasks are still pending or assigned anywhere."""
        reply = await self._call(
            "POST", "/api/v1/tasks/request", params={"max_tasks": max_tasks, "wait": wait}
        )
        if reply.status_code == 204:
            outstanding = reply.headers.get("X-Tasks-Outstanding")
            return [], int(outstanding) if outstanding and outstanding.isdigit() else None
        return v1.LeaseBatch.model_validate(reply.json()).tasks, None

    async def progress(
        self, task: v1.LeasedTask, counts: dict[str, int], documents: list[dict[str, Any]]
    ) -> None:
        body = {"lease_token": str(task.lease_token), "documents": documents, **counts}
        await self._call("POST", f"/api/v1/tasks/{task.task_id}/progress", json=body)

    async def complete(
        self,
        task: v1.LeasedTask,
        counts: dict[str, int],
        documents: list[dict[str, Any]],
        summary: dict[str, Any],
    ) -> None:
        body = {
            "task_id": str(task.task_id),
            "lease_token": str(task.lease_token),
            "documents": documents,
            "result_summary": summary,
            **counts,
        }
        await self._call("POST", "/api/v1/tasks/complete", json=body)

    async def fail(self, task: v1.LeasedTask, error: str, retryable: bool) -> None:
        body = {"lease_token": str(task.lease_token), "error": error[:4000], "retryable": retryable}
        await self._call("POST", f"/api/v1/tasks/{task.task_id}/fail", json=body, attempts=3)

    async def heartbeat(self, docs_per_minute: float, held: list[UUID]) -> list[UUID]:
        """Extend the leases of the tasks in `held` (only those); return tasks cancelled meanwhile."""
        reply = await self._call(
            "POST",
            "/api/v1/clients/heartbeat",
            attempts=2,
            json={
                "session_id": self.session_id,
                "docs_per_minute": round(docs_per_minute, 2),
                "task_ids": [str(t) for t in held],
            },
        )
        return v1.HeartbeatReply.model_validate(reply.json()).cancelled_task_ids

    async def known(self, doc_ids: list[str]) -> set[str]:
        known: set[str] = set()
        for start in range(0, len(doc_ids), v1.MAX_DOCUMENTS_PER_REPORT):
            reply = await self._call(
                "POST",
                "/api/v1/documents/known",
                json={"doc_ids": doc_ids[start : start + v1.MAX_DOCUMENTS_PER_REPORT]},
            )
            known.update(reply.json()["known"])
        return known


def _checked(reply: httpx.Response) -> httpx.Response:
    if reply.status_code < 400:
        return reply
    try:
        detail = reply.json().get("detail", reply.text)
    except ValueError:
        detail = reply.text[:200]
    if reply.status_code == 409:
        raise LeaseLost(str(detail))
    if reply.status_code == 401:
        raise GateRefused(f"the gate refused the API key (--api-key): {detail}")
    raise GateRefused(f"gate answered {reply.status_code}: {detail}")
