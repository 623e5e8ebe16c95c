"""Upload through the gate (`--storage gate`): for clients that must not hold bucket credentials.

The client streams each document to ``PUT /api/v1/documents/{doc_id}/raw``
with its lease; the gate checks the lease, writes to its own store (write-once)
and answers with what it stored. Reads and listing go through the gate's
``/api/v1/storage/objects`` endpoints, which are the operator's (an admin key); what a
client finds already stored comes from ``GET /api/v1/documents/{doc_id}/stored``, under
its lease, read back and hashed by the gate.
"""

from __future__ import annotations

import zlib
from collections.abc import AsyncIterator
from typing import Any

import httpx

from protocol import paths, v1
from protocol.errors import ErrorCode, parse_error
from storage.base import Chunks, Deadline, Fence, ObjectInfo, PutOptions, Storage, StoredObject
from storage.errors import (
    AlreadyStored,
    ChecksumMismatch,
    CorruptGzip,
    KeyRefused,
    ObjectMissing,
    StaleLease,
    StorageError,
    StorageTimeout,
    StorageUnavailable,
    TooLarge,
    WriteRefused,
)
from storage.keys import check_key

C = ErrorCode
WARC_PREFIX = "warc/"  # a task's WARC files (client.warc): uploaded under its lease, not by doc_id
# What each of the gate's error codes means to a store; a code not listed is a refusal this
# store cannot fix (WriteRefused), and a reply without a code (a proxy's page) is judged by its
# status: 5xx and 429 StorageUnavailable, anything else WriteRefused.
ERRORS: dict[ErrorCode, type[StorageError]] = {
    C.ALREADY_STORED: AlreadyStored,
    C.CHECKSUM_MISMATCH: ChecksumMismatch,
    C.CORRUPT_GZIP: CorruptGzip,
    C.TOO_LARGE: TooLarge,
    C.INVALID_KEY: KeyRefused,
    C.OBJECT_MISSING: ObjectMissing,
    C.LEASE_LOST: StaleLease,
    C.NOT_YOUR_TASK: StaleLease,
    C.STORAGE_TIMEOUT: StorageTimeout,
    C.STORAGE_UNAVAILABLE: StorageUnavailable,
    C.DATABASE_UNAVAILABLE: StorageUnavailable,
    C.INTERNAL_ERROR: StorageUnavailable,
}


class GateStorage(Storage):
    url_schemes = ("gate:",)

    def __init__(
        self,
        api_url: str,
        api_key: str | None,
        deadline: Deadline | None = None,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        super().__init__(deadline, threads=1)
        self.url = "gate"
        self.api = api_url.rstrip("/")
        headers = {paths.API_KEY_HEADER: api_key} if api_key else {}
        timeout = httpx.Timeout(self.deadline.timeout, connect=5)
        self.http = http or httpx.AsyncClient(base_url=self.api, headers=headers, timeout=timeout)
        self._headers = headers

    def url_for(self, key: str) -> str:
        return f"gate:{key}"

    async def put(self, key: str, chunks: Chunks, options: PutOptions | None = None) -> StoredObject:
        options = options or PutOptions()
        if options.doc_id is None and key.startswith(WARC_PREFIX) and options.fence is not None:
            return await self._put_warc(key, chunks, options, options.fence)
        if options.doc_id is None:
            raise KeyRefused("the gate stores documents by doc_id: PutOptions.doc_id is required")
        # The gate derives the key from doc_id and ext (and its own shard size); `key` is checked
        # here only so a malformed one fails before the upload, as on every other store.
        check_key(key)
        params: dict[str, str] = {"ext": options.ext or ""}
        headers: dict[str, str] = {}
        if options.fence:
            params["task_id"] = options.fence.task_id
            headers[paths.LEASE_HEADER] = options.fence.lease_token
        if options.content_type:
            headers["Content-Type"] = options.content_type
        if options.expected_sha256:
            headers[paths.SHA256_HEADER] = options.expected_sha256
        body = _limited(chunks, options.max_size) if options.max_size is not None else chunks
        if options.compress and not options.input_gzipped:
            body = _gzip(body)  # the limit counts the document's bytes, before they are compressed
        if options.compress or options.input_gzipped:
            headers["Content-Encoding"] = "gzip"
        try:
            reply = await self._send(
                "PUT",
                paths.url(paths.DOCUMENT_RAW, doc_id=options.doc_id),
                params=params,
                headers=headers,
                content=body,
            )
        except StorageUnavailable as exc:
            # Our own size limit aborts the upload from inside the body stream.
            if isinstance(exc.__context__, TooLarge):
                raise exc.__context__ from None
            raise
        return StoredObject.model_validate_json(reply.content)

    async def _put_warc(self, key: str, chunks: Chunks, options: PutOptions, fence: Fence) -> StoredObject:
        """A task's WARC file (client.warc), under the task's lease: the gate names its key from
        the task's job and the file's name, as the report will."""
        name = check_key(key).rsplit("/", 1)[-1]
        headers = {paths.LEASE_HEADER: fence.lease_token}
        if options.expected_sha256:
            headers[paths.SHA256_HEADER] = options.expected_sha256
        body = _limited(chunks, options.max_size) if options.max_size is not None else chunks
        path = paths.url(paths.TASK_WARC, task_id=fence.task_id, name=name)
        reply = await self._send("PUT", path, headers=headers, content=body)
        return StoredObject.model_validate_json(reply.content)

    async def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        kwargs["headers"] = self._headers | kwargs.get("headers", {})
        try:
            reply = await self.http.request(method, self.api + path, **kwargs)
        except httpx.TimeoutException as exc:
            raise StorageUnavailable(f"gate did not answer in time: {type(exc).__name__}") from None
        except httpx.HTTPError as exc:
            raise StorageUnavailable(f"gate unreachable: {exc}") from None
        if reply.status_code >= 400:
            raise _error(reply)
        return reply

    async def open(self, key: str, version_id: str | None = None) -> AsyncIterator[bytes]:
        url = self.api + paths.object_url(check_key(key))
        try:
            async with self.http.stream("GET", url, headers=self._headers) as reply:
                if reply.status_code >= 400:
                    await reply.aread()
                    raise _error(reply)
                async for chunk in reply.aiter_raw():
                    yield chunk
        except httpx.HTTPError as exc:
            raise StorageUnavailable(f"gate read failed: {exc}") from None

    async def verified(self, key: str, options: PutOptions | None = None) -> StoredObject | None:
        """The gate reads its own store back: what it holds for this document of the leased task."""
        options = options or PutOptions()
        if options.doc_id is None:
            raise KeyRefused("the gate stores documents by doc_id: PutOptions.doc_id is required")
        params: dict[str, str] = {"ext": options.ext or ""}
        headers: dict[str, str] = {}
        if options.fence:
            params["task_id"] = options.fence.task_id
            headers[paths.LEASE_HEADER] = options.fence.lease_token
        try:
            reply = await self._send(
                "GET", paths.url(paths.DOCUMENT_STORED, doc_id=options.doc_id), params=params, headers=headers
            )
        except ObjectMissing:
            return None
        return StoredObject.model_validate_json(reply.content)

    async def stat(self, key: str, version_id: str | None = None) -> ObjectInfo | None:
        try:
            reply = await self._send("HEAD", paths.object_url(check_key(key)))
        except ObjectMissing:
            return None
        size = int(reply.headers["Content-Length"])
        return ObjectInfo(key=key, size=size, sha256=reply.headers.get(paths.SHA256_HEADER))

    async def delete(self, key: str) -> None:
        await self._send("DELETE", paths.object_url(check_key(key)))

    async def list(self, prefix: str = "") -> AsyncIterator[ObjectInfo]:
        cursor: str | None = None
        while True:
            params = {"prefix": prefix} | ({"cursor": cursor} if cursor else {})
            reply = await self._send("GET", paths.url(paths.STORAGE_OBJECTS), params=params)
            page = v1.StorageObjectList.model_validate_json(reply.content)
            for item in page.objects:
                yield item
            cursor = page.next_cursor
            if not cursor:
                return

    async def close(self) -> None:
        await self.http.aclose()
        await super().close()


def _error(reply: httpx.Response) -> StorageError:
    """The storage error a gate's error reply stands for: by its code, never by its status."""
    body = parse_error(reply.content, reply.headers.get(paths.ERROR_CODE_HEADER))
    if body is None:
        unavailable = reply.status_code >= 500 or reply.status_code == 429
        kind: type[StorageError] = StorageUnavailable if unavailable else WriteRefused
        return kind(f"gate answered {reply.status_code}: {reply.text[:200] or reply.reason_phrase}")
    kind = ERRORS.get(body.code, WriteRefused)
    return kind(f"gate answered {reply.status_code} {body.code}: {body.message()}")


async def _limited(chunks: Chunks, max_size: int) -> AsyncIterator[bytes]:
    size = 0
    async for chunk in chunks:
        size += len(chunk)
        if size > max_size:
            raise TooLarge(f"document is larger than the limit of {max_size} bytes")
        yield chunk


async def _gzip(chunks: Chunks) -> AsyncIterator[bytes]:
    packer = zlib.compressobj(6, zlib.DEFLATED, 31)
    async for chunk in chunks:
        out = packer.compress(chunk)
        if out:
            yield out
    yield packer.flush()
