"""Source profiles: a registry's search as data, stored by name (admin)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path
from fastapi.responses import JSONResponse

from common.selectors import broken_selectors
from protocol import paths
from protocol import sources as wire
from server.db import sources as db
from server.deps import AdminDep, StateDep
from server.errors import InvalidProfile

router = APIRouter()
NamePath = Annotated[str, Path(pattern=wire.NAME_PATTERN, max_length=63)]


@router.put(
    paths.SOURCE,
    response_model=wire.StoredSource,
    responses={201: {"model": wire.StoredSource, "description": "a new profile"}},
)
async def put_source(name: NamePath, body: wire.SourceProfile, state: StateDep, _: AdminDep) -> JSONResponse:
    """Store a profile under `name` (replacing one); tasks name it in `source`. Every selector is
    compiled first: a profile that would fail on every attempt is refused with 422."""
    if name in wire.BUILT_IN:
        raise InvalidProfile(f"{name!r} is a built-in source; give the profile another name")
    broken = broken_selectors(body)
    if broken:
        field, why = broken[0]
        raise InvalidProfile(f"{field}: {why}")
    stored, created = await db.put_source(state.pool, name, body)
    return JSONResponse(stored.model_dump(mode="json"), status_code=201 if created else 200)


@router.get(paths.SOURCE, response_model=wire.StoredSource)
async def get_source(name: NamePath, state: StateDep, _: AdminDep) -> wire.StoredSource:
    return await db.get_source(state.pool, name)


@router.get(paths.SOURCES, response_model=wire.SourceList)
async def list_sources(state: StateDep, _: AdminDep) -> wire.SourceList:
    return await db.list_sources(state.pool)
