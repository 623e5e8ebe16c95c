"""S3 and any S3-compatible endpoint (Backblaze B2 included) through boto3.

Writes are write-once (``If-None-Match: *``) and atomic:

- up to ``part_size`` (8 MiB) stored bytes: one PUT with the sha256 in the
  object's metadata;
- larger: the stream is uploaded as a multipart upload to a staging key under
  ``<prefix>.docgate-staging/``, whose sha256 is known only at the end; it is
  then published with a server-side multipart copy to the final key, created
  with the sha256 in its metadata and completed with ``If-None-Match: *``.
  Memory never holds more than one part.

botocore's default CRC32 checksum headers are turned off
(``request_checksum_calculation="when_required"``): Backblaze B2 rejects them.
Interrupted uploads leave staging objects or open multipart uploads, which
``sweep()`` removes (a bucket lifecycle rule on the staging prefix works too).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import uuid
from collections.abc import AsyncIterator
from functools import partial
from typing import Any

import boto3
import botocore.config
import botocore.exceptions

from storage.base import CHUNK, Chunks, Deadline, Encoder, ObjectInfo, PutOptions, Storage, StoredObject
from storage.errors import (
    AlreadyStored,
    ObjectMissing,
    StorageError,
    StorageRefused,
    StorageUnavailable,
    Unsupported,
)
from storage.keys import check_key

STAGING = ".docgate-staging/"
PART_SIZE = 8 << 20
COPY_PART = 512 << 20
SWEEP_CONCURRENCY = 16
SHA_META = "sha256"
READ_TIMEOUT = 120.0
log = logging.getLogger("docgate.storage")


class S3Storage(Storage):
    url_schemes = ("s3://", "b2://")

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        access_key: str | None = None,
        secret_key: str | None = None,
        scheme: str = "s3",
        deadline: Deadline | None = None,
        threads: int = 16,
        part_size: int = PART_SIZE,
        conditional_writes: bool | None = None,
    ) -> None:
        super().__init__(deadline, threads)
        # Does the endpoint honour If-None-Match: * (the write-once fence)? None: find out, by
        # the probe or by the first write it refuses with 501 NotImplemented (Backblaze B2).
        self.conditional = conditional_writes
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.url = f"{scheme}://{bucket}/{self.prefix}".rstrip("/")
        self.part_size = max(part_size, 5 << 20)
        config = botocore.config.Config(
            # The overall deadline (Deadline) bounds every call; the socket read
            # timeout only has to outlast the slowest single answer, such as the
            # completion of a large multipart upload, which S3 may take minutes to send.
            connect_timeout=5,
            read_timeout=READ_TIMEOUT,
            retries={"max_attempts": 3, "mode": "standard"},
            # B2 refuses the CRC32 checksum headers botocore sends by default.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            max_pool_connections=threads,
            s3={"addressing_style": "path"} if endpoint_url else {},
        )
        session = boto3.session.Session(
            aws_access_key_id=access_key, aws_secret_access_key=secret_key, region_name=region
        )
        self.client: Any = session.client("s3", endpoint_url=endpoint_url, config=config)

    def _key(self, key: str) -> str:
        return self.prefix + check_key(key)

    async def _call(self, what: str, *, size: int = 0, **kwargs: Any) -> Any:
        method = getattr(self.client, what)
        try:
            return await self._blocking(lambda: method(Bucket=self.bucket, **kwargs), size, what)
        except botocore.exceptions.ClientError as exc:
            raise _wrap(exc, kwargs.get("Key", "")) from None
        except botocore.exceptions.BotoCoreError as exc:
            raise StorageUnavailable(f"{what} on {self.url} failed: {exc}") from None

    async def probe(self) -> None:
        """Prove the store takes writes, and learn whether it honours conditional writes: a
        second If-None-Match: * write over the scratch object must be refused. An endpoint that
        answers 501 (B2), or that takes it (one that ignores the header), gets the version fence."""
        # Under the staging prefix: never listed as a document, swept if the delete is refused.
        scratch = f"{self.prefix}{STAGING}probe-{uuid.uuid4().hex}"
        versions = [(await self._call("put_object", Key=scratch, Body=b"docgate probe")).get("VersionId")]
        try:
            if self.conditional is None:
                try:
                    again = await self._call("put_object", Key=scratch, Body=b"again", IfNoneMatch="*")
                except AlreadyStored:
                    self.conditional = True
                except Unsupported:
                    self._without_conditional_writes("it answers 501 NotImplemented to If-None-Match")
                else:
                    versions.append(again.get("VersionId"))
                    self._without_conditional_writes("it let If-None-Match: * replace an existing object")
        finally:
            with contextlib.suppress(StorageError):
                for version in versions:  # on a versioned bucket a plain delete only hides the object
                    await self._call("delete_object", Key=scratch, **_version(version))

    def _without_conditional_writes(self, why: str) -> None:
        self.conditional = False
        log.warning(
            "%s has no conditional writes (%s): each document's record pins the object version "
            "written, and a key found taken is refused before the write (see README, Storage)",
            self.url,
            why,
        )

    async def _publish(self, method: str, final: str, options: PutOptions, **kwargs: Any) -> dict[str, Any]:
        """The call that makes the object appear at its final key, behind the write-once fence
        this endpoint has: If-None-Match: * where it is honoured; elsewhere a check that the key
        is free just before the write (not atomic: what a racing late writer leaves is a newer
        version, which the record's version_id keeps from being served)."""
        if options.overwrite:
            reply: dict[str, Any] = await self._call(method, Key=final, **kwargs)
            return reply
        if self.conditional is not False:
            try:
                reply = await self._call(method, Key=final, IfNoneMatch="*", **kwargs)
                return reply
            except Unsupported:
                self._without_conditional_writes("it answered 501 NotImplemented to If-None-Match")
        if await self._head(final) is not None:
            raise AlreadyStored(f"{final[len(self.prefix) :]} is already stored")
        reply = await self._call(method, Key=final, **kwargs)
        return reply

    async def _head(self, final: str, version_id: str | None = None) -> dict[str, Any] | None:
        try:
            head: dict[str, Any] = await self._call("head_object", Key=final, **_version(version_id))
        except ObjectMissing:
            return None
        return head

    async def put(self, key: str, chunks: Chunks, options: PutOptions | None = None) -> StoredObject:
        options = options or PutOptions()
        final = self._key(key)
        encoder = Encoder(options)
        buffer = bytearray()
        stream = aiter(chunks)
        async for chunk in stream:
            buffer += await self._blocking(partial(encoder.feed, chunk), len(chunk), "hash")
            if len(buffer) >= self.part_size:
                break
        else:
            buffer += encoder.finish()
            encoder.digest.check(options.expected_sha256)
            reply = await self._publish(
                "put_object",
                final,
                options,
                size=len(buffer),
                Body=bytes(buffer),
                **self._meta(encoder, options),
            )
            return self._stored(key, encoder, options, reply)
        reply = await self._put_large(final, buffer, stream, encoder, options)
        return self._stored(key, encoder, options, reply)

    def _stored(self, key: str, encoder: Encoder, options: PutOptions, reply: dict[str, Any]) -> StoredObject:
        stored = self.stored(key, encoder.digest, options)
        version = reply.get("VersionId")
        return stored.model_copy(update={"version_id": version}) if version else stored

    def _meta(self, encoder: Encoder, options: PutOptions) -> dict[str, Any]:
        meta: dict[str, Any] = {
            "Metadata": {SHA_META: encoder.digest.hexdigest(), "size": str(encoder.digest.size)}
        }
        if options.content_type:
            meta["ContentType"] = options.content_type
        if options.compress:
            meta["ContentEncoding"] = "gzip"
        return meta

    async def _put_large(
        self,
        final: str,
        buffer: bytearray,
        rest: AsyncIterator[bytes],
        encoder: Encoder,
        options: PutOptions,
    ) -> dict[str, Any]:
        staging = f"{self.prefix}{STAGING}{uuid.uuid4().hex}"
        total, version = await self._upload_staging(staging, buffer, rest, encoder)  # aborted if it fails
        try:
            encoder.digest.check(options.expected_sha256)
            return await self._copy_to_final(staging, final, total, encoder, options)
        finally:
            # By version where the bucket keeps versions: a delete by name would only hide it.
            await self._call("delete_object", Key=staging, **_version(version))

    async def _upload_staging(
        self, staging: str, buffer: bytearray, rest: AsyncIterator[bytes], encoder: Encoder
    ) -> tuple[int, str | None]:
        upload = (await self._call("create_multipart_upload", Key=staging))["UploadId"]
        parts: list[dict[str, Any]] = []
        total = 0
        try:
            async for chunk in rest:
                buffer += await self._blocking(partial(encoder.feed, chunk), len(chunk), "hash")
                while len(buffer) >= self.part_size:
                    piece, buffer[:] = bytes(buffer[: self.part_size]), buffer[self.part_size :]
                    parts.append(await self._part(staging, upload, len(parts) + 1, piece))
                    total += len(piece)
            buffer += encoder.finish()
            if buffer:
                parts.append(await self._part(staging, upload, len(parts) + 1, bytes(buffer)))
                total += len(buffer)
            # Completion assembles the parts server-side: its time grows with the size.
            done = await self._call(
                "complete_multipart_upload",
                size=total,
                Key=staging,
                UploadId=upload,
                MultipartUpload={"Parts": parts},
            )
        except BaseException:
            await self._abort(staging, upload)
            raise
        return total, done.get("VersionId")

    async def _part(self, key: str, upload: str, number: int, body: bytes) -> dict[str, Any]:
        reply = await self._call(
            "upload_part", size=len(body), Key=key, UploadId=upload, PartNumber=number, Body=body
        )
        return {"PartNumber": number, "ETag": reply["ETag"]}

    async def _copy_to_final(
        self, staging: str, final: str, total: int, encoder: Encoder, options: PutOptions
    ) -> dict[str, Any]:
        upload = (await self._call("create_multipart_upload", Key=final, **self._meta(encoder, options)))[
            "UploadId"
        ]
        parts = []
        try:
            for number, start in enumerate(range(0, total, COPY_PART), 1):
                end = min(start + COPY_PART, total) - 1
                reply = await self._call(
                    "upload_part_copy",
                    size=end - start,
                    Key=final,
                    UploadId=upload,
                    PartNumber=number,
                    CopySource={"Bucket": self.bucket, "Key": staging},
                    CopySourceRange=f"bytes={start}-{end}",
                )
                parts.append({"PartNumber": number, "ETag": reply["CopyPartResult"]["ETag"]})
            return await self._publish(
                "complete_multipart_upload",
                final,
                options,
                size=total,
                UploadId=upload,
                MultipartUpload={"Parts": parts},
            )
        except BaseException:
            await self._abort(final, upload)
            raise

    async def _abort(self, key: str, upload: str) -> None:
        with contextlib.suppress(StorageError):  # else sweep() aborts it later
            await self._call("abort_multipart_upload", Key=key, UploadId=upload)

    async def open(self, key: str, version_id: str | None = None) -> AsyncIterator[bytes]:
        body = (await self._call("get_object", Key=self._key(key), **_version(version_id)))["Body"]
        try:
            while chunk := await self._blocking(lambda: body.read(CHUNK), CHUNK, "read"):
                yield chunk
        finally:
            body.close()  # releases the connection; no I/O to wait on

    async def stat(self, key: str, version_id: str | None = None) -> ObjectInfo | None:
        head = await self._head(self._key(key), version_id)
        if head is None:
            return None
        sha256 = head.get("Metadata", {}).get(SHA_META)
        version = head.get("VersionId")
        if version == "null":  # an unversioned bucket's answer
            version = None
        return ObjectInfo(key=key, size=int(head["ContentLength"]), sha256=sha256, version_id=version)

    async def delete(self, key: str) -> None:
        await self._call("delete_object", Key=self._key(key))

    async def list(self, prefix: str = "") -> AsyncIterator[ObjectInfo]:
        token: dict[str, Any] = {}
        while True:
            page = await self._call("list_objects_v2", Prefix=self.prefix + prefix, MaxKeys=1000, **token)
            for item in page.get("Contents", []):
                key = item["Key"][len(self.prefix) :]
                if not key.startswith(STAGING):
                    yield ObjectInfo(key=key, size=int(item["Size"]))
            if not page.get("IsTruncated"):
                return
            token = {"ContinuationToken": page["NextContinuationToken"]}

    async def sweep(self, older_than: float = 3600) -> int:
        cutoff = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=older_than)
        # Every page first (a listing holds at most 1,000), then the removals: removing while
        # paging moves the markers the next page starts from.
        uploads = [
            (u["Key"], u["UploadId"])
            async for u in self._pages("list_multipart_uploads", "Uploads", ("KeyMarker", "UploadIdMarker"))
            if u["Initiated"] <= cutoff
        ]
        # Staging leftovers by version: on a versioned bucket (B2 keeps every version) a delete by
        # name only hides an object, and the hidden bytes would stay, billed, for good.
        leftovers = [
            (v["Key"], v["VersionId"])
            async for v in self._pages(
                "list_object_versions", "Versions", ("KeyMarker", "VersionIdMarker"), STAGING, "DeleteMarkers"
            )
            if v["LastModified"] <= cutoff
        ]
        calls = [partial(self._abort, k, u) for k, u in uploads]
        calls += [partial(self._call, "delete_object", Key=k, VersionId=v) for k, v in leftovers]
        for start in range(0, len(calls), SWEEP_CONCURRENCY):
            await asyncio.gather(*(call() for call in calls[start : start + SWEEP_CONCURRENCY]))
        return len(calls)

    async def _pages(
        self, method: str, field: str, markers: tuple[str, str], under: str = "", also: str = ""
    ) -> AsyncIterator[dict[str, Any]]:
        """Every item of a paged S3 listing under the prefix (`field`, and `also` if given)."""
        marker: dict[str, Any] = {}
        while True:
            page = await self._call(method, Prefix=self.prefix + under, **marker)
            for item in (*page.get(field, []), *(page.get(also, []) if also else [])):
                yield item
            if not page.get("IsTruncated"):
                return
            marker = {m: page["Next" + m] for m in markers}


def _version(version_id: str | None) -> dict[str, Any]:
    return {"VersionId": version_id} if version_id else {}


# Answers that waiting will not change (a missing bucket is a 404, so it is named before that).
REFUSALS = {
    "AccessDenied", "AllAccessDisabled", "InvalidAccessKeyId", "SignatureDoesNotMatch", "NoSuchBucket",
    "InvalidBucketName", "AccountProblem", "Unauthorized",
}  # fmt: skip


def _wrap(exc: botocore.exceptions.ClientError, key: str) -> StorageError:
    error = exc.response.get("Error", {})
    code = str(error.get("Code", ""))
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    if code in {"PreconditionFailed", "ConditionalRequestConflict"} or status == 412:
        return AlreadyStored(f"{key} is already stored")
    if code == "NotImplemented" or status == 501:
        return Unsupported(f"S3 {code or status}: {error.get('Message', '')}".strip())
    if code in REFUSALS or status == 403:
        return StorageRefused(f"S3 {code or status}: {error.get('Message', '')}".strip())
    if code in {"NoSuchKey", "404", "NotFound"} or status == 404:
        return ObjectMissing(f"no object at {key}")
    return StorageUnavailable(f"S3 {code or status}: {error.get('Message', '')}".strip())
