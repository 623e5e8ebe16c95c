"""`docgate storage migrate|verify|sweep`: move a store, check it against the records, clean leftovers."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from common.settings import environment
from server.config import Settings
from storage import Deadline, Storage, StorageError, open_storage
from storage.base import digest_of
from storage.copy import copy_store, count

console = Console(stderr=True)


def add_commands(sub: Any) -> None:
    storage = sub.add_parser("storage", help="copy, check and clean stores").add_subparsers(required=True)
    migrate = storage.add_parser("migrate", help="copy every document of SRC to DST (resumable)")
    migrate.add_argument("src", help="source store URL (file://…, s3://…, b2://…)")
    migrate.add_argument("dst", help="destination store URL")
    migrate.add_argument("--workers", type=int, default=8, help="objects copied in parallel")
    migrate.add_argument("--dry-run", action="store_true", help="only count what would be copied")
    migrate.set_defaults(run=run_migrate)

    verify = storage.add_parser("verify", help="check every recorded document against the store")
    verify.add_argument("--store", help="store URL (default: STORAGE_URL)")
    verify.add_argument("--workers", type=int, default=8)
    verify.set_defaults(run=run_verify)

    sweep = storage.add_parser("sweep", help="remove leftovers of interrupted writes")
    sweep.add_argument("store", help="store URL")
    sweep.add_argument("--older-than", type=float, default=3600, help="seconds (default 3600)")
    sweep.set_defaults(run=run_sweep)


def _open(url: str) -> Storage:
    settings = Settings.load()
    deadline = Deadline(settings.storage_timeout_seconds, settings.storage_min_rate)
    return open_storage(url, deadline=deadline, env=environment())


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


def run_migrate(args: argparse.Namespace) -> int:
    src, dst = _open(args.src), _open(args.dst)
    return asyncio.run(_closing([src, dst], lambda: _migrate(src, dst, args.workers, args.dry_run)))


async def _closing(stores: list[Storage], body: Callable[[], Awaitable[int]]) -> int:
    try:
        return await body()
    finally:
        for store in stores:
            await store.close()


async def _migrate(src: Storage, dst: Storage, workers: int, dry_run: bool) -> int:
    total, size = await count(src.list())
    started = time.monotonic()
    with _progress() as bar:
        task = bar.add_task("migrate" + (" (dry run)" if dry_run else ""), total=size)
        summary = await copy_store(
            src, dst, workers=workers, dry_run=dry_run, on_object=lambda info, _: bar.advance(task, info.size)
        )
    elapsed = max(time.monotonic() - started, 1e-9)
    verb = "would copy" if dry_run else "copied"
    print(
        f"{total} objects in {src.url}: {verb} {summary.copied} "
        f"({summary.bytes_copied / 1e6:.1f} MB, {summary.copied / elapsed:.0f} objects/s), "
        f"skipped {summary.skipped} already at {dst.url}, failed {summary.failed}"
    )
    for error in summary.errors[:50]:
        print(f"failed: {error}", file=sys.stderr)
    return 1 if summary.failed else 0


def run_verify(args: argparse.Namespace) -> int:
    settings = Settings.load()
    store = _open(args.store or settings.store_url)
    from docgate.db import database

    # Records pin versions of the gate's own store; another store (a migrated copy) has its own.
    pinned = args.store in (None, settings.store_url)
    with database(settings) as dsn:
        return asyncio.run(_closing([store], lambda: _verify(store, dsn, args.workers, pinned)))


async def _verify(store: Storage, dsn: str, workers: int, pinned: bool) -> int:
    from server.db.documents import iter_documents
    from server.db.pool import create_pool

    pool = await create_pool(dsn, 1, 2)
    problems: list[str] = []
    checked = 0
    limit = asyncio.Semaphore(workers)

    async def check(row: Any) -> None:
        nonlocal checked
        async with limit:
            problem = await _check_document(store, row, pinned)
        checked += 1
        if problem:
            problems.append(problem)
            print(problem, flush=True)

    try:
        pending: set[asyncio.Task[None]] = set()
        async for row in iter_documents(pool):
            pending.add(asyncio.create_task(check(row)))
            if len(pending) >= workers * 4:
                _, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        await asyncio.gather(*pending)
    finally:
        await pool.close()
    print(f"verified {checked} recorded documents in {store.url}: {len(problems)} missing or wrong")
    return 1 if problems else 0


async def _check_document(store: Storage, row: Any, pinned: bool = True) -> str | None:
    """The recorded version whole, with its size and sha256; and, on a versioned store, no later
    version at the key holding other bytes (what a reader by key alone would get)."""
    key, version = row["storage_key"], row["version_id"] if pinned else None
    try:
        if await store.stat(key, version) is None:
            return f"missing {key} (doc_id {row['doc_id']})"
        found = await digest_of(store, key, version_id=version)
        if found.sha256 != row["sha256"] or found.size != row["size"]:
            return (
                f"wrong {key} (doc_id {row['doc_id']}): sha256 {found.sha256} size {found.size}, "
                f"recorded {row['sha256']} size {row['size']}"
            )
        latest = await store.stat(key) if version else None
        if latest is not None and latest.version_id not in (None, version):
            later = await digest_of(store, key, version_id=latest.version_id)
            if later.sha256 != row["sha256"]:
                return (
                    f"shadowed {key} (doc_id {row['doc_id']}): a later write (version "
                    f"{latest.version_id}) holds other bytes (sha256 {later.sha256}); the gate "
                    f"serves the recorded version {version}, readers by key alone get the later one"
                )
    except StorageError as exc:
        return f"unreadable {key} (doc_id {row['doc_id']}): {exc.message}"
    return None


def run_sweep(args: argparse.Namespace) -> int:
    store = _open(args.store)

    async def sweep() -> int:
        removed = await store.sweep(args.older_than)
        print(f"removed {removed} leftovers older than {args.older_than:.0f} s from {store.url}")
        return 0

    return asyncio.run(_closing([store], sweep))
