"""The fetch-and-store step: one document of a task, from its reference to its `Outcome`.

The body streams from the origin through the content check (client.bodies) into the store,
which keeps it whole or not at all, under the document's key (storage.keys), fenced by the
task's lease. A document already in storage is read back and hashed before it is reported as
skipped. Every way this can go wrong ends as an outcome with a failure code; only a lost lease
stops the task.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from functools import partial
from typing import IO, TYPE_CHECKING, TypeVar

from client import bodies
from client.config import ClientConfig
from client.download import (
    NOT_MODIFIED,
    WARC_IDENTICAL,
    WARC_NOT_MODIFIED,
    Body,
    DocumentFailed,
    Fetcher,
    Revisit,
)
from client.errors import LeaseLost
from client.run import Failure, Kind, Outcome, TaskRun
from client.sources import DocRef
from protocol import v1
from protocol.failures import FailureCode
from protocol.params import Seen, UrlsTaskParams
from storage import PutOptions, Storage, StorageError
from storage.base import Fence, digest_of, from_bytes
from storage.errors import (
    AlreadyStored,
    KeyRefused,
    StaleLease,
    StorageTimeout,
    StorageUnavailable,
    TooLarge,
    WriteRefused,
)
from storage.keys import document_key, unversioned, version_key

if TYPE_CHECKING:  # warcio is imported only by clients that write WARC
    from client.warc import Spool


log = logging.getLogger("docgate.client")
STORAGE_RETRY_SECONDS = (0.5, 1.0, 2.0, 4.0, 8.0)  # then the document counts as failed transiently
# A document up to this size is read whole and stored after its download has let go of the
# host's connection slot: its storage (a group commit's two syncs, an S3 PUT) then never holds a
# download's place. Larger ones stream from the origin into the store.
READ_WHOLE = 256 << 10
T = TypeVar("T")


@dataclass(frozen=True)
class _Read:
    """A small document's body, read whole, to be stored once the download is over."""

    data: bytes
    options: PutOptions


@dataclass(frozen=True)
class Downloaded:
    """A small document read whole, its download over, to be stored (DocumentStep.keep). The
    origin has served it: the task steps store it even when the task is stopped meanwhile (a
    pause, a shutdown), so that stop never costs the origin a second request for it."""

    ref: DocRef
    key: str
    found: PutOptions  # the put's options for a look at what the store holds
    data: bytes
    options: PutOptions
    capture: v1.Capture | None


@dataclass(frozen=True)
class DocumentStep:
    config: ClientConfig
    store: Storage
    fetcher: Fetcher
    stopping: asyncio.Event

    def key(self, run: TaskRun, ref: DocRef) -> str:
        return document_key(
            ref.doc_id,
            ref.ext,
            shard_size=self.config.shard_size,
            compressed=self.config.compress == "gzip",
            collection=run.task.collection,
        )

    def found(self, run: TaskRun, ref: DocRef) -> PutOptions:
        """The put's options for this document of the task, under its lease (for a look at what
        the store holds, and, with its content type, for the put)."""
        fence = Fence(str(run.task.task_id), str(run.task.lease_token))
        return PutOptions(max_size=self.config.max_document_size, doc_id=ref.doc_id, ext=ref.ext, fence=fence)

    async def absent(self, run: TaskRun, refs: list[DocRef]) -> set[str]:
        """The doc_ids of `refs` that the store holds nothing for, in one look for the batch
        (so each needs no look of its own before it is fetched). Trouble: none known absent."""
        keys = {}
        for ref in refs:
            with contextlib.suppress(KeyRefused):  # a key refused is the document's own failure
                keys[self.key(run, ref)] = ref.doc_id
        try:
            return {keys[k] for k in await self.store.absent(list(keys))}
        except StorageError:
            return set()

    async def run(self, run: TaskRun, ref: DocRef, absent: bool = False) -> Outcome | Downloaded:
        """`absent`: the store was just seen to hold nothing for it (DocumentStep.absent). A
        small document comes back `Downloaded`, for `keep` to store."""
        if ref.seen is not None and _task(run).verify:
            return await self._sorted(ref, partial(self._check, run, ref, ref.seen))
        if ref.seen is not None:
            return await self._sorted(ref, partial(self._revisit, run, ref, ref.seen))
        return await self._sorted(ref, partial(self._store, run, ref, absent))

    async def _check(self, run: TaskRun, ref: DocRef, seen: Seen) -> Outcome:
        """Another client's document, checked (server/db/verify.py): what the origin serves and
        what the store holds at its key, both hashed; nothing is stored. For a job whose
        documents vary in named parts (params.varies), where the origin's bytes are not the
        recorded ones, both sides are hashed again with those parts blanked."""
        varies = run.work.rules.varies
        served_bytes = bytearray() if isinstance(varies, list) else None
        served, body, _ = await self.fetcher.fetch(
            ref.url, partial(self._origin_copy, run, ref, keep=served_bytes), bodies.asked(run.work.rules)
        )
        options = self.found(run, ref)
        held = await self.store.verified(seen.storage_key, options)
        normalized = stored_normalized = None
        if (
            isinstance(varies, list)
            and served_bytes is not None
            and held is not None
            and served != seen.sha256
        ):
            stored_bytes = bytearray()
            try:
                await digest_of(self.store, seen.storage_key, options.max_size, held.version_id, stored_bytes)
            except StorageError as exc:  # (the gate's store reads back for operators only)
                log.info("document %s: the stored object cannot be read to compare: %s", ref.doc_id, exc)
            else:
                normalized = bodies.normalized(served_bytes, varies)
                stored_normalized = bodies.normalized(stored_bytes, varies)
        report = v1.DocumentReport(
            doc_id=ref.doc_id, storage_key=seen.storage_key, sha256=served, url=ref.url,
            status=v1.DocumentStatus.CHECKED, capture=body.captured(),
            stored_sha256=held.sha256 if held is not None else None,
            normalized_sha256=normalized, stored_normalized_sha256=stored_normalized,
        )  # fmt: skip
        return Outcome(Kind.SKIPPED, ref, report)

    async def _revisit(self, run: TaskRun, ref: DocRef, seen: Seen) -> Outcome:
        """A recorded document fetched again, asked conditionally (its ETag, its Last-Modified).
        A 304, or the same bytes, is `unchanged` (a WARC revisit record); other bytes are the
        next version, stored beside the first (storage.keys.version_key); a 404/410 fails it,
        and the gate marks it withdrawn."""
        # A restore (its recorder was quarantined): the object at its key may not be what its
        # record says, so it is fetched whole and stored anew whatever its sha256.
        restore = _task(run).restore
        conditional = {}
        if seen.etag and not restore:
            conditional["If-None-Match"] = seen.etag
        if seen.last_modified and not restore:
            conditional["If-Modified-Since"] = seen.last_modified
        first = unversioned(seen.storage_key)[0]
        found = self.found(run, ref)

        async def sink(body: Body) -> Outcome:
            spool = await run.warc.tee(body) if run.warc is not None else None
            try:
                held = _Held(self.config.max_document_size)
                if body.status != NOT_MODIFIED:
                    async for chunk in await bodies.checked(body, ref.ext, run.work.rules):
                        await held.add(chunk)
                if body.status == NOT_MODIFIED or held.sha256() == seen.sha256 and not restore:
                    return self._unchanged(run, ref, seen, body, spool)
                options = replace(
                    found, content_type=body.content_type, compress=self.config.compress == "gzip"
                )
                stored, version = await self._put_version(first, seen.version + 1, held, options)
            except BaseException:
                if run.warc is not None and spool is not None:
                    run.warc.drop(spool)
                raise
            finally:
                held.close()
            if run.warc is not None and spool is not None:
                run.warc.add(ref.doc_id, ref.url, body, spool)
            report = v1.DocumentReport.of_stored(
                ref.doc_id, stored, url=ref.url, status=v1.DocumentStatus.STORED, capture=body.captured()
            ).model_copy(update={"version": version})
            return Outcome(Kind.STORED, ref, report, size=stored.size)

        return await self.fetcher.fetch(ref.url, sink, bodies.asked(run.work.rules), conditional=conditional)

    async def _put_version(
        self, first: str, version: int, held: _Held, options: PutOptions
    ) -> tuple[v1.StoredDocument, int]:
        """The next version stored at its key (storage.keys.version_key), and its number. If
        another revisit or restore stored that version first, it is the one when it holds these
        bytes; a key holding other bytes (a writer that lost its lease before it reported them:
        no record vouches for them) is passed over for the next, VERSION_SKIPS times at most."""
        for number in range(version, version + VERSION_SKIPS + 1):
            key = version_key(first, number)
            try:
                return await self.store.put(key, held.chunks(), options), number
            except AlreadyStored:
                pass
            again = await self.store.verified(key, options)
            if again is not None and again.sha256 == held.sha256():
                return again, number
            log.warning("%s holds other bytes than the origin serves now; trying the next version", key)
        raise DocumentFailed(
            FailureCode.STORE_DIFFERS,
            f"versions {version} to {version + VERSION_SKIPS} of {first} hold other bytes than the "
            "origin serves now; a version is written once",
            permanent=True,
        )

    def _unchanged(self, run: TaskRun, ref: DocRef, seen: Seen, body: Body, spool: Spool | None) -> Outcome:
        if run.warc is not None:
            profile = WARC_NOT_MODIFIED if body.status == NOT_MODIFIED else WARC_IDENTICAL
            digest = (
                None
                if body.status == NOT_MODIFIED
                else (body.wire.transferred().get("transfer_sha256") or seen.sha256)
            )
            revisit = Revisit(profile, ref.url, seen.fetched_at, digest)
            run.warc.add_revisit(ref.doc_id, ref.url, body, revisit, spool)
        report = v1.DocumentReport(
            doc_id=ref.doc_id, storage_key=seen.storage_key, sha256=seen.sha256, size=seen.size, url=ref.url,
            status=v1.DocumentStatus.UNCHANGED, capture=body.captured(),
        )  # fmt: skip
        return Outcome(Kind.SKIPPED, ref, report)

    async def keep(self, run: TaskRun, got: Downloaded) -> Outcome:
        """Store a document read whole; storage trouble retries the put, not the download."""
        return await self._sorted(got.ref, partial(self._put, run, got))

    async def _sorted(self, ref: DocRef, step: Callable[[], Awaitable[T]]) -> T | Outcome:
        """The step's result, retried over a short storage outage; what fails, as an outcome."""

        def failed(code: FailureCode, reason: str, permanent: bool, storage: bool = False) -> Outcome:
            return Outcome.failed(Failure(ref, code, reason), permanent=permanent, storage=storage)

        try:
            return await self._retrying(ref, step)
        except DocumentFailed as exc:
            return failed(exc.code, exc.reason, exc.permanent)
        except TooLarge:
            return failed(
                FailureCode.TOO_LARGE, f"over --max-document-size ({self.config.max_document_size})", True
            )
        except StaleLease as exc:
            raise LeaseLost(exc.message) from None
        except (KeyRefused, WriteRefused) as exc:
            return failed(FailureCode.STORAGE, exc.message, True)
        except StorageError as exc:
            return failed(FailureCode.STORAGE, f"storage: {exc.message}", False, storage=True)

    async def _retrying(self, ref: DocRef, step: Callable[[], Awaitable[T]]) -> T:
        """Ride out a short storage outage (resets, stalls) instead of handing the task back at once:
        a hand-back spends one of the task's attempts, and a client that hands back every task it
        leases during an outage would spend the whole queue's."""
        for delay in (*STORAGE_RETRY_SECONDS, None):
            try:
                return await step()
            except (StorageUnavailable, StorageTimeout) as exc:
                if delay is None or self.stopping.is_set():
                    raise
                log.info(
                    "document %s: storage trouble (%s); retrying in %.1f s", ref.doc_id, exc.message, delay
                )
                await asyncio.sleep(delay * random.uniform(0.5, 1.0))
        raise AssertionError("unreachable")

    async def _store(self, run: TaskRun, ref: DocRef, absent: bool) -> Outcome | Downloaded:
        compress = self.config.compress == "gzip"
        key = self.key(run, ref)
        found = self.found(run, ref)
        existing = None if absent else await self.store.verified(key, found)
        if existing is not None:
            return await self._skipped(run, ref, existing)
        captured: list[v1.Capture | None] = [None]

        async def sink(body: Body) -> v1.StoredDocument | _Read:
            options = replace(found, content_type=body.content_type, compress=compress)
            if run.warc is None:
                chunks = await bodies.checked(body, ref.ext, run.work.rules)
                head, rest = await _head(chunks, READ_WHOLE)
                if rest is None:
                    captured[0] = body.captured()  # the answer these bytes came in
                    return _Read(head, options)
                stored = await self.store.put(key, _chained(head, rest), options)
                captured[0] = body.captured()
                return stored
            spool = await run.warc.tee(body)  # the bytes as transferred, under the decoded ones
            try:
                chunks = await bodies.checked(body, ref.ext, run.work.rules)
                stored = await self.store.put(key, chunks, options)
            except BaseException:
                run.warc.drop(spool)
                raise
            run.warc.add(ref.doc_id, ref.url, body, spool)
            captured[0] = body.captured()
            return stored

        try:
            got = await self.fetcher.fetch(ref.url, sink, bodies.asked(run.work.rules))
        except AlreadyStored as exc:
            return await self._already(run, ref, key, found, exc)
        if isinstance(got, _Read):
            return Downloaded(ref, key, found, got.data, got.options, captured[0])
        return _stored(ref, got, captured[0])

    async def _put(self, run: TaskRun, got: Downloaded) -> Outcome:
        try:
            stored = await self.store.put(got.key, from_bytes(got.data), got.options)
        except AlreadyStored as exc:
            return await self._already(run, got.ref, got.key, got.found, exc)
        return _stored(got.ref, stored, got.capture)

    async def _already(
        self, run: TaskRun, ref: DocRef, key: str, found: PutOptions, refused: AlreadyStored
    ) -> Outcome:
        """Another writer stored it first: what it stored, read back, or the refusal again."""
        again = await self.store.verified(key, found)
        if again is None:
            raise refused
        return await self._skipped(run, ref, again)

    async def _skipped(self, run: TaskRun, ref: DocRef, stored: v1.StoredDocument) -> Outcome:
        """In storage, but no record vouches for it: the store read it back and hashed it (a
        store's metadata is no proof: whoever can write the store can set it), and with
        --verify-existing fetch it is compared with what the origin serves, before it is reported
        as skipped. With --warc it is fetched and compared too: that fetch is its capture (and
        its WARC record), so no document is recorded without one; and in a job with
        verify_sample, whose store other, untrusted clients write to. Other bytes than the
        origin's are not the document: it is stored beside them, as its version 2."""
        capture = None
        # In a job whose clients are checked (verify_sample) the store is written by clients the
        # gate does not trust: an object no record vouches for may be a liar's.
        untrusted = run.work.rules.verify_sample is not None
        if self.config.verify_existing == "fetch" or run.warc is not None or untrusted:
            served, body, spool = await self.fetcher.fetch(
                ref.url, partial(self._origin_copy, run, ref), bodies.asked(run.work.rules)
            )
            capture = body.captured()
            if served != stored.sha256:
                if run.warc is not None and spool is not None:
                    run.warc.drop(spool)
                # Not the document (a liar's, an interrupted older tool's): never recorded. The
                # key is written once, so the origin's bytes go beside it, as version 2.
                log.warning(
                    "document %s: %s holds other bytes (sha256 %s…) than the origin serves (%s…), "
                    "and no record vouches for them; storing the document beside them as version 2",
                    ref.doc_id, stored.storage_key, stored.sha256[:12], served[:12],
                )  # fmt: skip
                beside = Seen(
                    version=1, sha256=stored.sha256, size=stored.size, storage_key=stored.storage_key
                )
                return await self._revisit(run, ref, beside)
            if run.warc is not None and spool is not None:
                run.warc.add(ref.doc_id, ref.url, body, spool)
        report = v1.DocumentReport.of_stored(
            ref.doc_id, stored, url=ref.url, status=v1.DocumentStatus.SKIPPED, capture=capture
        )
        return Outcome(Kind.SKIPPED, ref, report)

    async def _origin_copy(
        self, run: TaskRun, ref: DocRef, body: Body, keep: bytearray | None = None
    ) -> tuple[str, Body, Spool | None]:
        """What the origin serves: its sha256, the answer (its capture), and (with a WARC) its
        bytes as transferred, spooled for the WARC record. `keep` gathers the bytes too."""
        spool = await run.warc.tee(body) if run.warc is not None else None
        hasher, size = hashlib.sha256(), 0
        limit = self.config.max_document_size
        try:
            async for chunk in await bodies.checked(body, ref.ext, run.work.rules):
                size += len(chunk)
                if size > limit:
                    raise DocumentFailed(
                        FailureCode.TOO_LARGE, f"over --max-document-size ({limit})", permanent=True
                    )
                await asyncio.to_thread(hasher.update, chunk)
                if keep is not None:
                    keep += chunk
        except BaseException:
            if run.warc is not None and spool is not None:
                run.warc.drop(spool)
            raise
        return hasher.hexdigest(), body, spool


def _task(run: TaskRun) -> UrlsTaskParams:
    """A urls task's params (a revisit's, a restore's, a check's); other sources' as none of them."""
    params = run.work.params
    return params if isinstance(params, UrlsTaskParams) else _PLAIN


_PLAIN = UrlsTaskParams.model_construct(urls=[], revisit=False, restore=False, verify=False)


VERSION_SKIPS = 3  # version keys holding bytes no record vouches for, passed over (_put_version)


class _Held:
    """A revisit's body, held until its sha256 says whether it is a new version: in memory up to
    READ_WHOLE, in a temporary file (written in a thread) beyond; at most `limit` bytes."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.digest = hashlib.sha256()
        self.head = bytearray()
        self.spill: IO[bytes] | None = None
        self.size = 0

    async def add(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self.limit:
            raise DocumentFailed(
                FailureCode.TOO_LARGE, f"over --max-document-size ({self.limit})", permanent=True
            )
        self.digest.update(chunk)
        if self.spill is None and len(self.head) + len(chunk) <= READ_WHOLE:
            self.head += chunk
            return
        if self.spill is None:
            self.spill = await asyncio.to_thread(tempfile.TemporaryFile)
            await asyncio.to_thread(self.spill.write, bytes(self.head))
            self.head = bytearray()
        await asyncio.to_thread(self.spill.write, chunk)

    def sha256(self) -> str:
        return self.digest.hexdigest()

    async def chunks(self) -> AsyncIterator[bytes]:
        if self.spill is None:
            yield bytes(self.head)
            return
        await asyncio.to_thread(self.spill.seek, 0)
        while block := await asyncio.to_thread(self.spill.read, 1 << 20):
            yield block

    def close(self) -> None:
        if self.spill is not None:
            self.spill.close()


def _stored(ref: DocRef, stored: v1.StoredDocument, capture: v1.Capture | None) -> Outcome:
    report = v1.DocumentReport.of_stored(
        ref.doc_id, stored, url=ref.url, status=v1.DocumentStatus.STORED, capture=capture
    )
    return Outcome(Kind.STORED, ref, report, size=stored.size)


async def _head(chunks: AsyncIterator[bytes], size: int) -> tuple[bytes, AsyncIterator[bytes] | None]:
    """The body's first `size` bytes or more, and what follows (None: the body ended there)."""
    head = bytearray()
    stream = aiter(chunks)
    async for chunk in stream:
        head += chunk
        if len(head) > size:
            return bytes(head), stream
    return bytes(head), None


async def _chained(head: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    yield head
    async for chunk in rest:
        yield chunk
