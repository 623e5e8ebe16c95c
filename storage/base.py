"""The storage interface every backend implements, and what they share.

A document is written once, whole, under its final key: each backend makes
the object appear atomically (rename, a single PUT, a completed multipart
upload) and, unless ``overwrite`` is asked for, only if the key is still
empty. That write-once publication is the storage fence: a client whose lease
went stale cannot replace what the current holder stored.

Every blocking call runs in the backend's own bounded thread pool under an
overall deadline of ``timeout + size / min_rate`` seconds (15 s plus one
second per MiB by default), never on the event loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import zlib
from abc import ABC, abstractmethod
from collections.abc import AsyncIterable, AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import ClassVar, TypeVar, overload

from protocol import v1
from storage.errors import ChecksumMismatch, CorruptGzip, StorageTimeout, TooLarge
from storage.keys import GZIP_EXT

T = TypeVar("T")
Chunks = AsyncIterable[bytes]
CHUNK = 1 << 20


# What a put reports (and the gate records) and what stat and list describe: the wire's own
# records, so a stored document has one type from the backend to the gate's reply.
StoredObject = v1.StoredDocument
ObjectInfo = v1.StorageObject


@dataclass(frozen=True)
class Fence:
    """The lease a write belongs to; the gate backend sends it so the gate can refuse stale writers."""

    task_id: str
    lease_token: str


@dataclass(frozen=True)
class PutOptions:
    content_type: str | None = None
    compress: bool = False  # store gzipped; sha256 and size stay those of the original bytes
    input_gzipped: bool = False  # the stream is already gzip: hash what it decompresses to
    overwrite: bool = False  # False = write-once (the fence); True only for migrate/repair
    max_size: int | None = None
    expected_sha256: str | None = None
    fence: Fence | None = None
    doc_id: str | None = None  # the gate backend addresses documents by id and extension
    ext: str | None = None


@dataclass(frozen=True)
class Deadline:
    """Overall time allowed for one storage call of `size` bytes."""

    timeout: float = 15.0
    min_rate: float = float(1 << 20)  # bytes per second

    def for_size(self, size: int = 0) -> float:
        return self.timeout + size / self.min_rate


@dataclass
class Digest:
    """sha256 and size of the original bytes, with the size limit enforced as they pass."""

    max_size: int | None = None
    size: int = 0
    _hash: hashlib._Hash = field(default_factory=hashlib.sha256)

    def update(self, chunk: bytes | bytearray) -> None:
        self.size += len(chunk)
        if self.max_size is not None and self.size > self.max_size:
            raise TooLarge(f"document is larger than the limit of {self.max_size} bytes")
        self._hash.update(chunk)

    def hexdigest(self) -> str:
        return self._hash.hexdigest()

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()

    def check(self, expected: str | None) -> None:
        if expected is not None and expected != self.hexdigest():
            raise ChecksumMismatch(f"sha256 is {self.hexdigest()}, expected {expected}")


TRAILING = "data after the end of the gzip stream: a gzip body is exactly one gzip member"


class Encoder:
    """Turns incoming chunks into stored chunks while digesting the original document.

    input plain, compress off:  store as is
    input plain, compress on:   gzip on the way
    input gzip,  compress on:   store as is (gate uploads, copies of compressed objects)
    input gzip,  compress off:  gunzip on the way
    The digest (sha256, size, size limit) is always of the original bytes, so
    a gzip bomb meets the size limit as it inflates.
    """

    def __init__(self, options: PutOptions) -> None:
        self.digest = Digest(options.max_size)
        self._gunzip = zlib.decompressobj(31) if options.input_gzipped else None
        self._gzip = (
            zlib.compressobj(6, zlib.DEFLATED, 31) if options.compress and not options.input_gzipped else None
        )
        self._keep_input = options.input_gzipped and options.compress

    @overload
    def feed(self, chunk: bytes) -> bytes: ...
    @overload
    def feed(self, chunk: bytearray) -> bytes | bytearray: ...

    def feed(self, chunk: bytes | bytearray) -> bytes | bytearray:
        """The bytes to store for `chunk` (it may be `chunk` itself)."""
        original = self._inflate(chunk) if self._gunzip else chunk
        self.digest.update(original)
        if self._keep_input:
            return chunk
        return self._gzip.compress(original) if self._gzip else original

    def _inflate(self, chunk: bytes | bytearray) -> bytes:
        assert self._gunzip is not None
        if self._gunzip.eof and chunk:
            raise CorruptGzip(TRAILING)
        limit = self.digest.max_size
        # Inflate at most one byte past the limit per call, so a bomb never balloons memory.
        cap = 0 if limit is None else max(limit - self.digest.size + 1, 1)
        try:
            out = self._gunzip.decompress(chunk, cap)
        except zlib.error as exc:
            raise CorruptGzip(f"gzip body is corrupt: {exc}") from None
        if self._gunzip.unconsumed_tail and limit is not None:
            raise TooLarge(f"document is larger than the limit of {limit} bytes")
        if self._gunzip.unused_data:
            # Bytes past the stream's end would be stored (kept as sent) without being hashed or
            # counted against the size limit: refuse them, a second gzip member included.
            raise CorruptGzip(TRAILING)
        return out

    def finish(self) -> bytes:
        if self._gunzip is not None:
            tail = self._gunzip.flush()
            self.digest.update(tail)
            if not self._gunzip.eof:
                raise CorruptGzip("gzip body is truncated")
            return (
                b""
                if self._keep_input
                else (self._gzip.compress(tail) + self._gzip.flush() if self._gzip else tail)
            )
        return self._gzip.flush() if self._gzip else b""


async def encoded(chunks: Chunks, encoder: Encoder) -> AsyncIterator[bytes]:
    async for chunk in chunks:
        out = encoder.feed(chunk)
        if out:
            yield out
    tail = encoder.finish()
    if tail:
        yield tail


async def from_bytes(data: bytes, size: int = CHUNK) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


class Storage(ABC):
    """A store of documents under relative keys."""

    #: the store's URL, e.g. file:///srv/btl/raw or s3://bucket/prefix
    url: str
    #: how the URLs of its objects (url_for) begin; listed in storage.URL_SCHEMES, which the
    #: gate asks whether a report's storage_url names a store at all
    url_schemes: ClassVar[tuple[str, ...]] = ()

    def __init__(self, deadline: Deadline | None = None, threads: int = 8) -> None:
        self.deadline = deadline or Deadline()
        self._threads = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="storage")

    async def _blocking(self, fn: Callable[[], T], size: int = 0, what: str = "storage call") -> T:
        """Run a blocking call in this store's threads, bounded by the deadline for `size`."""
        limit = self.deadline.for_size(size)
        future = asyncio.get_running_loop().run_in_executor(self._threads, fn)
        try:
            async with asyncio.timeout(limit):
                return await future
        except TimeoutError:
            raise StorageTimeout(f"{what} on {self.url} took longer than {limit:.0f} s") from None

    def url_for(self, key: str) -> str:
        return f"{self.url.rstrip('/')}/{key}"

    def stored(self, key: str, digest: Digest, options: PutOptions) -> StoredObject:
        """What a put of `key` reports, once its bytes are published."""
        return StoredObject(
            storage_key=key,
            storage_url=self.url_for(key),
            sha256=digest.hexdigest(),
            size=digest.size,
            content_type=options.content_type,
            compressed=options.compress,
        )

    @abstractmethod
    async def put(self, key: str, chunks: Chunks, options: PutOptions | None = None) -> StoredObject:
        """Store the stream under key, atomically; AlreadyStored if the key is taken (write-once)."""

    @abstractmethod
    def open(self, key: str, version_id: str | None = None) -> AsyncIterator[bytes]:
        """The stored bytes as they are (still gzipped for compressed documents); with
        `version_id`, that version of the object (stores that keep no versions ignore it)."""

    @abstractmethod
    async def stat(self, key: str, version_id: str | None = None) -> ObjectInfo | None:
        """Size (and sha256 when known, and the version on a versioned store) of the object,
        or of that version of it; None if there is none."""

    @abstractmethod
    async def delete(self, key: str) -> None:
        """Remove the object; removing a missing one is not an error."""

    @abstractmethod
    def list(self, prefix: str = "") -> AsyncIterator[ObjectInfo]:
        """Every stored document under prefix (no temporary or staging objects)."""

    async def absent(self, keys: Sequence[str]) -> set[str]:
        """Which of `keys` hold nothing, as far as one cheap look tells (a client asks it for a
        batch of documents before it fetches them, instead of a `verified` per document). A key
        left out may or may not hold something: `verified` says. By default none is known."""
        return set()

    async def verified(self, key: str, options: PutOptions | None = None) -> StoredObject | None:
        """The document at `key` as its bytes really are (read back and hashed: a store's metadata
        is no proof, whoever can write the store can set it), or None when there is none. What a
        client reports as `skipped` when it finds a document already stored. `options` say which
        document the key stands for (the gate's store answers only under the task's lease); their
        `max_size` bounds the read."""
        info = await self.stat(key)
        if info is None:
            return None
        digest = await digest_of(self, key, (options or PutOptions()).max_size, info.version_id)
        found = self.stored(key, digest, PutOptions(compress=key.endswith(GZIP_EXT)))
        return found.model_copy(update={"version_id": info.version_id}) if info.version_id else found

    async def probe(self) -> None:
        """Prove the store takes writes (a scratch object written and removed where no listing
        sees it); raise StorageError saying why not. A client calls it before it leases work,
        so a store it cannot write to stops it at start instead of failing every document.
        By default nothing to prove (memory; the gate, whose uploads need a lease)."""
        return None

    async def sweep(self, older_than: float = 3600) -> int:
        """Remove leftovers of interrupted writes older than `older_than` seconds; return how many."""
        return 0

    async def close(self) -> None:
        self._threads.shutdown(wait=False, cancel_futures=True)


async def digest_of(
    store: Storage,
    key: str,
    max_size: int | None = None,
    version_id: str | None = None,
    keep: bytearray | None = None,
) -> Digest:
    """sha256 and size of the original document at `key` (that version of it, on a versioned
    store; a .gz object is inflated first, and must be one whole gzip stream); past `max_size`
    original bytes, TooLarge. `keep` gathers the original bytes too."""
    digest = Digest(max_size)
    inflate = zlib.decompressobj(31) if key.endswith(GZIP_EXT) else None
    async for chunk in store.open(key, version_id):
        data = inflate.decompress(chunk) if inflate else chunk
        await asyncio.to_thread(digest.update, data)
        if keep is not None:
            keep += data
    if inflate is not None:
        rest = inflate.flush()
        digest.update(rest)
        if keep is not None:
            keep += rest
        if not inflate.eof or inflate.unused_data:
            raise CorruptGzip(f"{key} is not one whole gzip stream")
    return digest
