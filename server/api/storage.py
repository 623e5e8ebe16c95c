"""The gate's own store, by key: for operators and `docgate storage` (admin only; a `--storage gate`
client asks about its task's documents through GET /api/v1/documents/{doc_id}/stored)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response
from fastapi.responses import StreamingResponse

from protocol import paths, v1
from server.api.documents import started
from server.deps import AdminDep, StateDep
from storage.errors import ObjectMissing
from storage.keys import check_key

router = APIRouter()


@router.get(paths.STORAGE_OBJECTS, response_model=v1.StorageObjectList)
async def list_objects(
    state: StateDep,
    _: AdminDep,
    prefix: Annotated[str, Query(max_length=300)] = "",
    cursor: Annotated[str | None, Query(max_length=1024)] = None,
    limit: Annotated[int, Query(ge=1, le=v1.MAX_LIST_LIMIT)] = 1000,
) -> v1.StorageObjectList:
    objects: list[v1.StorageObject] = []
    async for info in state.store.list(prefix):
        if cursor is not None and info.key <= cursor:
            continue
        if len(objects) == limit:
            return v1.StorageObjectList(objects=objects, next_cursor=objects[-1].key)
        objects.append(info)
    return v1.StorageObjectList(objects=objects, next_cursor=None)


@router.head(paths.STORAGE_OBJECT)
async def stat_object(key: str, state: StateDep, _: AdminDep) -> Response:
    info = await state.store.stat(check_key(key))
    if info is None:
        raise ObjectMissing(f"no object at {key}")
    headers = {"Content-Length": str(info.size)}
    if info.sha256:
        headers[paths.SHA256_HEADER] = info.sha256
    return Response(headers=headers)


@router.get(paths.STORAGE_OBJECT, response_class=StreamingResponse)
async def read_object(key: str, state: StateDep, _: AdminDep) -> StreamingResponse:
    """The stored bytes exactly as stored (a compressed object stays gzip)."""
    info = await state.store.stat(check_key(key))
    if info is None:
        raise ObjectMissing(f"no object at {key}")
    return StreamingResponse(
        await started(state.store.open(key)),
        media_type="application/octet-stream",
        headers={"Content-Length": str(info.size)},
    )


@router.delete(paths.STORAGE_OBJECT, status_code=204)
async def delete_object(key: str, state: StateDep, _: AdminDep) -> Response:
    await state.store.delete(check_key(key))
    return Response(status_code=204)
