"""Documents: look-ups, the stored bytes, and uploads through the gate."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Header, Path, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.requests import ClientDisconnect

from protocol import paths, v1
from server.auth import Principal
from server.config import UploadGzip
from server.db import documents as db
from server.db import lifecycle, revisits
from server.db.lifecycle import Caller
from server.deps import AdminDep, PrincipalDep, StateDep
from server.errors import (
    LeaseRequired,
    PayloadTooLarge,
    UnsupportedEncoding,
    UploadInterrupted,
    WrongStorageKey,
)
from server.state import GateState
from storage import PutOptions
from storage.base import Fence
from storage.errors import ObjectMissing
from storage.keys import check_key, document_key

router = APIRouter()
DocIdPath = Annotated[str, Path(pattern=v1.DOC_ID_PATTERN)]
Sha256Header = Annotated[str | None, Header(alias=paths.SHA256_HEADER, pattern=v1.SHA256_PATTERN)]


CollectionQuery = Annotated[str, Query(pattern=v1.COLLECTION_PATTERN, max_length=63)]


@router.get(paths.DOCUMENT, response_model=v1.Document)
async def get_document(
    doc_id: DocIdPath, state: StateDep, _: AdminDep, collection: CollectionQuery = ""
) -> v1.Document:
    return await db.get_document(state.pool, doc_id, collection)


@router.get(
    paths.DOCUMENT_RAW,
    response_class=StreamingResponse,
    responses={200: {"content": {"application/octet-stream": {}}}},
)
async def read_document(
    doc_id: DocIdPath,
    state: StateDep,
    _: AdminDep,
    collection: CollectionQuery = "",
    version: Annotated[int | None, Query(ge=1, le=1_000_000)] = None,
) -> StreamingResponse:
    """The stored bytes (of `version`, else the current one); a compressed document is sent
    with Content-Encoding: gzip."""
    doc = await db.get_document(state.pool, doc_id, collection)
    stored: v1.Document | v1.DocumentVersion = doc
    if version is not None and version != doc.version:
        stored = await revisits.version_of(state.pool, doc_id, version, collection)
    # The recorded version, on a versioned store: never what a late writer put at the key after it.
    info = await state.store.stat(stored.storage_key, stored.version_id)
    if info is None:
        raise ObjectMissing(f"document {doc_id} is recorded at {stored.storage_key} but missing from storage")
    headers = {"Content-Length": str(info.size), paths.SHA256_HEADER: stored.sha256}
    if stored.compressed:
        headers["Content-Encoding"] = "gzip"
    return StreamingResponse(
        await started(state.store.open(stored.storage_key, stored.version_id)),
        headers=headers,
        media_type=stored.content_type or "application/octet-stream",
    )


@router.get(paths.DOCUMENT_VERSIONS, response_model=v1.DocumentVersions)
async def document_versions(
    doc_id: DocIdPath, state: StateDep, _: AdminDep, collection: CollectionQuery = ""
) -> v1.DocumentVersions:
    """Every version of the document, oldest first (each readable: …/raw?version=N)."""
    return await revisits.versions(state.pool, doc_id, collection)


async def started(stream: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Pull the first chunk now, so a missing object is an error status, not a cut-off body."""
    first = await anext(stream, b"")

    async def rest() -> AsyncIterator[bytes]:
        if first:
            yield first
        async for chunk in stream:
            yield chunk

    return rest()


async def _leased_collection(
    state: GateState, principal: Principal, doc_id: str, task_id: UUID | None, token: UUID | None
) -> str:
    """The collection of the document a client may touch: one of the task it holds the lease of
    (the admin key may touch any, in the default collection)."""
    if principal.is_admin:
        return ""
    if task_id is None or token is None:
        raise LeaseRequired()
    return await lifecycle.check_upload(state.pool, task_id, token, Caller(principal.owner), doc_id)


@router.put(paths.DOCUMENT_RAW, response_model=v1.StoredDocument, status_code=201)
async def upload_document(
    doc_id: DocIdPath,
    request: Request,
    state: StateDep,
    principal: PrincipalDep,
    ext: Annotated[str, Query(pattern=v1.EXT_PATTERN)] = "",
    task_id: UUID | None = None,
    x_lease_token: Annotated[UUID | None, Header(alias=paths.LEASE_HEADER)] = None,
    content_type: Annotated[str | None, Header(max_length=200)] = None,
    content_encoding: Annotated[str | None, Header(max_length=20)] = None,
    x_content_sha256: Sha256Header = None,
) -> JSONResponse:
    """Store a document in the gate's store, write-once; a client must hold the task's lease."""
    settings = state.settings
    collection = await _leased_collection(state, principal, doc_id, task_id, x_lease_token)
    gzipped = (content_encoding or "identity").lower() == "gzip"
    if not gzipped and (content_encoding or "identity").lower() != "identity":
        raise UnsupportedEncoding()
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and not gzipped and int(declared) > settings.max_upload_bytes:
        raise PayloadTooLarge(f"document larger than MAX_UPLOAD_BYTES ({settings.max_upload_bytes} bytes)")
    keep = gzipped and settings.upload_gzip is UploadGzip.KEEP
    storage_key = document_key(
        doc_id, ext, shard_size=settings.shard_size, compressed=keep, collection=collection
    )
    options = PutOptions(
        content_type=content_type,
        compress=keep,
        input_gzipped=gzipped,
        max_size=settings.max_upload_bytes,
        expected_sha256=x_content_sha256,
        fence=Fence(str(task_id), str(x_lease_token)) if task_id and x_lease_token else None,
    )
    try:
        stored = await state.store.put(storage_key, request.stream(), options)
    except ClientDisconnect:
        # The uploader went away mid-body: nothing was published, and no one is
        # left to read an answer; say so without logging a server error.
        raise UploadInterrupted() from None
    return JSONResponse(stored.model_dump(), status_code=201)


# A task's WARC file: <task>-<attempt>-<n>.warc.gz (client.warc names them so).
WarcName = Annotated[str, Path(pattern=r"^[0-9a-f-]{36}-[0-9]{1,6}-[0-9]{1,9}\.warc\.gz$")]


@router.put(paths.TASK_WARC, response_model=v1.StoredDocument, status_code=201)
async def upload_warc(
    task_id: UUID,
    name: WarcName,
    request: Request,
    state: StateDep,
    principal: PrincipalDep,
    x_lease_token: Annotated[UUID | None, Header(alias=paths.LEASE_HEADER)] = None,
    x_content_sha256: Sha256Header = None,
) -> JSONResponse:
    """A WARC file of the task a client holds the lease of (`--storage gate`), stored write-once
    under warc/<its job>/<name>, as its report will name it; fenced like the task's documents."""
    if x_lease_token is None:
        raise LeaseRequired()
    task = await lifecycle.check_lease(state.pool, task_id, x_lease_token, Caller(principal.owner))
    if not name.startswith(f"{task_id}-"):
        raise WrongStorageKey(f"a WARC of task {task_id} is named {task_id}-…, not {name!r}")
    key = f"warc/{task['job_id'] or 'no-job'}/{name}"
    settings = state.settings
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > settings.max_upload_bytes:
        raise PayloadTooLarge(f"WARC larger than MAX_UPLOAD_BYTES ({settings.max_upload_bytes} bytes)")
    options = PutOptions(
        content_type="application/warc",
        max_size=settings.max_upload_bytes,
        expected_sha256=x_content_sha256,
        fence=Fence(str(task_id), str(x_lease_token)),
    )
    try:
        stored = await state.store.put(check_key(key), request.stream(), options)
    except ClientDisconnect:
        raise UploadInterrupted() from None
    return JSONResponse(stored.model_dump(), status_code=201)


@router.get(paths.DOCUMENT_STORED, response_model=v1.StoredDocument)
async def stored_document(
    doc_id: DocIdPath,
    state: StateDep,
    principal: PrincipalDep,
    ext: Annotated[str, Query(pattern=v1.EXT_PATTERN)] = "",
    task_id: UUID | None = None,
    x_lease_token: Annotated[UUID | None, Header(alias=paths.LEASE_HEADER)] = None,
) -> v1.StoredDocument:
    """What the gate's store already holds for a document of the task a client leases, read back
    and hashed unless a record vouches for it (404 object_missing when nothing is there): what a
    `--storage gate` client reports as skipped. A client may ask only under the task's lease, and
    only for the task's documents; the storage-objects API stays the operator's."""
    settings = state.settings
    collection = await _leased_collection(state, principal, doc_id, task_id, x_lease_token)
    keys = [document_key(doc_id, ext, shard_size=settings.shard_size, collection=collection)]
    if settings.upload_gzip is UploadGzip.KEEP:
        keys.append(
            document_key(doc_id, ext, shard_size=settings.shard_size, compressed=True, collection=collection)
        )
    for key in keys:
        recorded = await db.recorded_at(state.pool, doc_id, key)
        if recorded is not None:
            return recorded
        found = await state.store.verified(key, PutOptions(max_size=settings.max_upload_bytes))
        if found is not None:
            return found
    raise ObjectMissing(f"the gate's store holds no document {doc_id} with ext {ext!r}")


@router.post(paths.DOCUMENTS_KNOWN, response_model=v1.KnownDocumentsReply)
async def known_documents(
    body: v1.KnownDocuments, state: StateDep, _: PrincipalDep
) -> v1.KnownDocumentsReply:
    """Which of these doc_ids are already recorded (clients skip them)."""
    known = await db.known_documents(state.pool, [str(d) for d in body.doc_ids], body.collection)
    return v1.KnownDocumentsReply(known=known)
