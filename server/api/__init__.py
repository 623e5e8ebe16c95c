"""All routers of API v1."""

from fastapi import APIRouter

from server.api import clients, documents, health, hosts, jobs, sources, storage, tasks

api_router = APIRouter()
api_router.include_router(tasks.router, prefix="/api/v1", tags=["tasks"])
api_router.include_router(jobs.router, prefix="/api/v1", tags=["jobs"])
api_router.include_router(clients.router, prefix="/api/v1", tags=["clients"])
api_router.include_router(documents.router, prefix="/api/v1", tags=["documents"])
api_router.include_router(storage.router, prefix="/api/v1", tags=["storage"])
api_router.include_router(hosts.router, prefix="/api/v1", tags=["hosts"])
api_router.include_router(sources.router, prefix="/api/v1", tags=["sources"])
api_router.include_router(health.router, tags=["health"])
