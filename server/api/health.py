"""Liveness with database status, and the Prometheus scrape."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from protocol import v1
from server.db import hosts, pausing, stats
from server.db.pool import connection
from server.deps import StateDep
from server.errors import DatabaseUnavailable
from server.version import VERSION

router = APIRouter()


@router.get("/health", response_model=v1.Health, responses={503: {"model": v1.Health}})
async def health(state: StateDep) -> JSONResponse:
    try:
        async with connection(state.pool) as conn:
            await conn.fetchval("SELECT 1", timeout=2)
    except (DatabaseUnavailable, TimeoutError):
        body = v1.Health(status="unavailable", database="unavailable", version=VERSION)
        return JSONResponse(body.model_dump(), status_code=503)
    return JSONResponse(v1.Health(status="ok", database="ok", version=VERSION).model_dump())


@router.get("/metrics", response_class=Response)
async def metrics(state: StateDep) -> Response:
    snap = await stats.snapshot(state.pool, state.settings.client_stale_seconds)
    listed = await hosts.list_hosts(state.pool, state.host_defaults)
    paused = await pausing.count_paused(state.pool)
    return Response(state.metrics.render(snap, listed.hosts, paused), media_type=CONTENT_TYPE_LATEST)
