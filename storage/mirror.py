"""Two stores as one (local disk plus B2, say): write both, read the authoritative one first."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence

from storage.base import Chunks, ObjectInfo, PutOptions, Storage, StoredObject
from storage.errors import AlreadyStored, ObjectMissing, StorageError


class MirrorStorage(Storage):
    """Writes go to `primary`, then are copied from it to `secondary`; reads fall back."""

    def __init__(self, primary: Storage, secondary: Storage) -> None:
        super().__init__(primary.deadline, threads=1)
        self.primary = primary
        self.secondary = secondary
        self.url = primary.url

    async def probe(self) -> None:
        await self.primary.probe()
        await self.secondary.probe()

    async def absent(self, keys: Sequence[str]) -> set[str]:
        return await self.primary.absent(keys)  # what verified reads: the primary

    async def verified(self, key: str, options: PutOptions | None = None) -> StoredObject | None:
        """What the primary holds; and the secondary catches up on it here, so a document whose
        copy failed once (the secondary was down) reaches it when its task runs again."""
        found = await self.primary.verified(key, options)
        if found is not None:
            await self._ensure_secondary(key, PutOptions(compress=found.compressed))
        return found

    async def put(self, key: str, chunks: Chunks, options: PutOptions | None = None) -> StoredObject:
        options = options or PutOptions()
        try:
            stored = await self.primary.put(key, chunks, options)
        except AlreadyStored:
            await self._ensure_secondary(key, options)  # an earlier attempt may have stopped halfway
            raise
        await self._ensure_secondary(key, options, overwrite=options.overwrite)
        return stored

    async def _ensure_secondary(self, key: str, options: PutOptions, overwrite: bool = False) -> None:
        if not overwrite and await self.secondary.stat(key) is not None:
            return
        # Copy the stored bytes; for a compressed document they are gzip, and
        # the secondary hashes what they inflate to, so both record one sha256.
        stored_gzip = options.compress
        copy = PutOptions(
            content_type=options.content_type,
            compress=stored_gzip,
            input_gzipped=stored_gzip,
            overwrite=overwrite,
        )
        with contextlib.suppress(AlreadyStored):  # another writer got there first
            await self.secondary.put(key, self.primary.open(key), copy)

    async def open(self, key: str, version_id: str | None = None) -> AsyncIterator[bytes]:
        # A version is the primary's (what a put reported); the secondary holds its own.
        try:
            stream = self.primary.open(key, version_id)
            first = await anext(stream, b"")
        except (ObjectMissing, StorageError):
            async for chunk in self.secondary.open(key):
                yield chunk
            return
        if first:
            yield first
        async for chunk in stream:
            yield chunk

    async def stat(self, key: str, version_id: str | None = None) -> ObjectInfo | None:
        try:
            info = await self.primary.stat(key, version_id)
        except StorageError:
            info = None
        return info if info is not None else await self.secondary.stat(key)

    async def delete(self, key: str) -> None:
        await self.primary.delete(key)
        await self.secondary.delete(key)

    def list(self, prefix: str = "") -> AsyncIterator[ObjectInfo]:
        return self.primary.list(prefix)

    async def sweep(self, older_than: float = 3600) -> int:
        return await self.primary.sweep(older_than) + await self.secondary.sweep(older_than)

    async def close(self) -> None:
        await self.primary.close()
        await self.secondary.close()
        await super().close()
