"""In-memory store for tests: the same contract (write-once, atomic), no I/O."""

from __future__ import annotations

from collections.abc import AsyncIterator

from storage.base import CHUNK, Chunks, Deadline, Encoder, ObjectInfo, PutOptions, Storage, StoredObject
from storage.errors import AlreadyStored, ObjectMissing
from storage.keys import check_key


class MemoryStorage(Storage):
    url_schemes = ("memory://",)

    def __init__(self, name: str = "test", deadline: Deadline | None = None) -> None:
        super().__init__(deadline, threads=1)
        self.url = f"memory://{name}"
        self.objects: dict[str, tuple[bytes, str]] = {}

    async def put(self, key: str, chunks: Chunks, options: PutOptions | None = None) -> StoredObject:
        options = options or PutOptions()
        check_key(key)
        encoder = Encoder(options)
        body = bytearray()
        async for chunk in chunks:
            body += encoder.feed(chunk)
        body += encoder.finish()
        encoder.digest.check(options.expected_sha256)
        if key in self.objects and not options.overwrite:
            raise AlreadyStored(f"{key} is already stored")
        self.objects[key] = (bytes(body), encoder.digest.hexdigest())
        return self.stored(key, encoder.digest, options)

    async def open(self, key: str, version_id: str | None = None) -> AsyncIterator[bytes]:
        check_key(key)
        if key not in self.objects:
            raise ObjectMissing(f"no object at {key}")
        data = self.objects[key][0]
        for start in range(0, len(data), CHUNK):
            yield data[start : start + CHUNK]

    async def stat(self, key: str, version_id: str | None = None) -> ObjectInfo | None:
        check_key(key)
        if key not in self.objects:
            return None
        data, sha = self.objects[key]
        return ObjectInfo(key=key, size=len(data), sha256=sha)

    async def delete(self, key: str) -> None:
        check_key(key)
        self.objects.pop(key, None)

    async def list(self, prefix: str = "") -> AsyncIterator[ObjectInfo]:
        for key in sorted(self.objects):
            if key.startswith(prefix):
                data, sha = self.objects[key]
                yield ObjectInfo(key=key, size=len(data), sha256=sha)
