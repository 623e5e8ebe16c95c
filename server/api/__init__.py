"""All routers of API v1, the ones every working client calls each second first.

Routes are matched in the order they were included, one router after the other, so the hot
paths (grants, then the task calls: lease, heartbeat, complete) come before the operators'.
"""

from fastapi import APIRouter, FastAPI

from server.api import clients, documents, health, hosts, jobs, sources, storage, tasks

ROUTERS: list[tuple[APIRouter, str, str]] = [
    (hosts.router, "/api/v1", "hosts"),
    (tasks.router, "/api/v1", "tasks"),
    (jobs.router, "/api/v1", "jobs"),
    (clients.router, "/api/v1", "clients"),
    (documents.router, "/api/v1", "documents"),
    (storage.router, "/api/v1", "storage"),
    (sources.router, "/api/v1", "sources"),
    (health.router, "", "health"),
]


def include(app: FastAPI) -> None:
    """Every API router, straight on the app (one level of matching, not two)."""
    for router, prefix, tag in ROUTERS:
        app.include_router(router, prefix=prefix, tags=[tag])
