"""Copying a whole store to another (resumable, parallel, checked) and checking documents in a store."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from storage.base import ObjectInfo, PutOptions, Storage, digest_of
from storage.errors import StorageError
from storage.keys import GZIP_EXT


@dataclass
class CopySummary:
    copied: int = 0
    skipped: int = 0
    failed: int = 0
    bytes_copied: int = 0
    errors: list[str] = field(default_factory=list)


async def known_sha(store: Storage, info: ObjectInfo) -> str:
    """The object's sha256 as the store keeps it (a listing, else its metadata: an S3 HEAD, a
    local file's attribute), read and hashed only when the store kept none. A copy whose bytes
    do not match it is refused at the destination (expected_sha256), so a wrong one costs a
    failed copy, never a wrong object."""
    if info.sha256:
        return info.sha256
    there = await store.stat(info.key)
    if there is not None and there.sha256:
        return there.sha256
    return (await digest_of(store, info.key)).sha256


async def copy_one(src: Storage, dst: Storage, info: ObjectInfo, dry_run: bool) -> bool:
    """Copy one object unless DST already holds it with the same sha256; True if copied."""
    there = await dst.stat(info.key)
    # The same stored size (gzip stays gzip) and sha256: a copy cut short is never taken as done.
    if (
        there is not None
        and there.size == info.size
        and await known_sha(dst, there) == await known_sha(src, info)
    ):
        return False
    if dry_run:
        return True
    gz = info.key.endswith(GZIP_EXT)
    # The put hashes what it writes and refuses to publish unless that matches
    # the source's sha256: the copy is verified without reading it back.
    options = PutOptions(
        overwrite=there is not None, compress=gz, input_gzipped=gz, expected_sha256=await known_sha(src, info)
    )
    await dst.put(info.key, src.open(info.key), options)
    return True


async def copy_store(
    src: Storage,
    dst: Storage,
    *,
    workers: int = 8,
    dry_run: bool = False,
    on_object: Callable[[ObjectInfo, str], None] = lambda info, outcome: None,
) -> CopySummary:
    """Copy every object of SRC to DST. Safe to interrupt and run again: done objects are skipped."""
    summary = CopySummary()
    queue: asyncio.Queue[ObjectInfo | None] = asyncio.Queue(maxsize=workers * 4)

    async def worker() -> None:
        while (info := await queue.get()) is not None:
            try:
                copied = await copy_one(src, dst, info, dry_run)
            except StorageError as exc:
                summary.failed += 1
                summary.errors.append(f"{info.key}: {exc.message}")
                on_object(info, "failed")
                continue
            if copied:
                summary.copied += 1
                summary.bytes_copied += info.size
            else:
                summary.skipped += 1
            on_object(info, "copied" if copied else "skipped")

    tasks = [asyncio.create_task(worker()) for _ in range(workers)]
    try:
        async for info in src.list():
            await queue.put(info)
    finally:
        for _ in tasks:
            await queue.put(None)
        await asyncio.gather(*tasks)
    return summary


async def count(objects: AsyncIterator[ObjectInfo]) -> tuple[int, int]:
    n = size = 0
    async for info in objects:
        n += 1
        size += info.size
    return n, size
