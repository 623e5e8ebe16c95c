"""Per request: an id (X-Request-ID accepted or made, echoed back), one log line, HTTP metrics."""

from __future__ import annotations

import logging
import re
import time
import uuid
from contextvars import ContextVar

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from protocol import paths
from server.metrics import Metrics

log = logging.getLogger("docgate.http")
request_id: ContextVar[str | None] = ContextVar("request_id", default=None)
GOOD_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
# Long-polls last as long as the client asks; their latency says nothing about the gate.
API_PREFIX = paths.PREFIX
UNTIMED = {API_PREFIX + paths.TASK_LEASE}


def route_label(scope: Scope) -> str:
    """The route's template (/api/v1/tasks/{task_id}/fail), never the raw path: labels stay bounded."""
    path = getattr(scope.get("route"), "path", None)
    if path is None:
        return "unmatched"
    # Routes of included routers carry their path without the router's prefix.
    label = str(path)
    if scope["path"].startswith(API_PREFIX + "/") and not label.startswith(API_PREFIX):
        return API_PREFIX + label
    return label


class RequestIdFilter(logging.Filter):
    """Puts the current request's id on every record logged while handling it."""

    def filter(self, record: logging.LogRecord) -> bool:
        rid = request_id.get()
        if rid is not None:
            fields = dict(getattr(record, "fields", {}))
            fields.setdefault("request_id", rid)
            record.fields = fields
        return True


class Observe:
    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        sent = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        rid = sent if GOOD_ID.fullmatch(sent) else uuid.uuid4().hex
        token = request_id.set(rid)
        status = 500
        started = time.perf_counter()

        async def tagged(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", rid.encode())]
            await send(message)

        try:
            await self.app(scope, receive, tagged)
        finally:
            self._record(scope, status, time.perf_counter() - started)
            request_id.reset(token)

    def _record(self, scope: Scope, status: int, seconds: float) -> None:
        route = route_label(scope)
        method = scope["method"]
        self.metrics.requests.labels(route, method, str(status)).inc()
        if route not in UNTIMED:
            self.metrics.request_latency.labels(route, method).observe(seconds)
        if not log.isEnabledFor(logging.INFO):
            return
        client = scope.get("client") or ("-", 0)
        log.info(
            "%s %s %d %.1f ms from %s",
            method,
            scope["path"],
            status,
            seconds * 1000,
            client[0],
            extra={
                "fields": {
                    "method": method,
                    "path": scope["path"],
                    "route": route,
                    "status": status,
                    "duration_ms": round(seconds * 1000, 2),
                    "client_addr": client[0],
                    "request_id": request_id.get(),
                }
            },
        )
