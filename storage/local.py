"""Local disk: temp file in the destination folder, made durable, published, folder made durable.

Durability is a group commit (`GroupCommit`). Small documents are written in rounds: a temp
file written and closed, a ``syncfs(2)`` of the store's filesystem, the file published under
its name, another ``syncfs`` for the name, and only then does ``put`` return. So a document is
durable before it is reported, as with an fsync of each file and folder, at one filesystem sync
and one trip to a thread per round (each sync serves two rounds' documents) instead of two
fsyncs and a thread per document.
Large documents (and systems without syncfs, and LOCAL_SYNC=each) fsync their own file and
folder.

Publication is write-once with ``link(2)``: linking the finished temp file to
the final name fails if the name exists, so a stale writer can never replace
a stored document, and a reader never sees a partial one. The sha256 is kept
in the ``user.docgate.sha256`` extended attribute where the filesystem has them.

Leftovers: a write killed midway leaves a ``.docgate-tmp-*`` file next to its
destination, never a partial document under a final name. ``sweep()`` (run by
``docgate storage sweep`` and by clients at start) removes those older than an hour.

Why one module of this size: the group commit and the write path it orders are read together;
the durability argument above is about both.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import stat
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO

from storage.base import (
    CHUNK,
    Chunks,
    Deadline,
    Encoder,
    ObjectInfo,
    PutOptions,
    Storage,
    StoredObject,
)
from storage.errors import (
    AlreadyStored,
    KeyRefused,
    ObjectMissing,
    StorageError,
    StorageRefused,
    StorageUnavailable,
)
from storage.keys import check_key

TMP_PREFIX = ".docgate-tmp-"
SMALL = 256 << 10  # documents up to this size are written in one trip to a thread
SHA_XATTR = "user.docgate.sha256"


def _load_syncfs() -> Any:
    try:
        return ctypes.CDLL(None, use_errno=True).syncfs
    except (AttributeError, OSError):
        return None


_SYNCFS = _load_syncfs()


@dataclass(eq=False)
class _Small:
    """One small document of a batch: its bytes as they came, and the put waiting for it."""

    final: Path
    data: bytes
    encoder: Encoder
    options: PutOptions
    done: asyncio.Future[None]
    tmp: Path | None = None
    error: BaseException | None = None


class GroupCommit:
    """Small documents written, made durable and published in rounds, one trip to a thread and
    one ``syncfs(2)`` per round. A round links the documents the previous round's sync made
    durable to their final names, writes and closes the temp files of the documents that came
    since, then syncs once: that one sync makes the new names durable (their puts are told) and
    the new bytes durable (they are linked next round). So every document is linked only after
    a sync that began after its bytes were written, and told only after a sync that began after
    its name was linked; and one sync serves two batches. While a round runs, the next gathers.
    No thread waits for a sync on a writer's behalf: one wake-up of the event loop per round,
    where a thread per document waiting for a shared sync cost two thread switches a document."""

    def __init__(self, store: LocalStorage) -> None:
        self._store = store
        self._gathering: list[_Small] = []  # came since the last round began
        self._written: list[_Small] = []  # temp files written before the last finished sync
        self._running: asyncio.Task[None] | None = None

    async def put(self, final: Path, data: bytes, encoder: Encoder, options: PutOptions) -> None:
        small = _Small(final, data, encoder, options, asyncio.get_running_loop().create_future())
        self._gathering.append(small)
        if self._running is None:
            self._running = asyncio.create_task(self._drain())
        await asyncio.shield(small.done)  # a put given up on is still written with its round

    async def _drain(self) -> None:
        fresh: list[_Small] = []
        linking: list[_Small] = []
        try:
            while self._gathering or self._written:
                fresh, self._gathering = self._gathering, []
                linking, self._written = self._written, []
                try:
                    size = sum(len(s.data) for s in fresh)
                    await self._store._blocking(partial(self._round, linking, fresh), size, "write")
                except Exception as exc:  # the deadline passed (or the thread pool is gone)
                    # The thread may still finish the round: what it leaves, the sweep removes.
                    for small in (*linking, *fresh):
                        small.error = small.error or exc
                self._written = [s for s in fresh if s.error is None]
                _tell([s for s in fresh if s.error is not None])
                _tell(linking)
                fresh, linking = [], []
        finally:
            self._running = None
            for small in (*linking, *fresh, *self._written):  # the drain cancelled: the loop closing
                small.error = small.error or StorageUnavailable(
                    f"the write of {small.final.name} was cut off"
                )
            _tell([*linking, *fresh, *self._written])
            self._written = []

    def _round(self, linking: list[_Small], fresh: list[_Small]) -> None:
        """One round, in a worker thread: each document's trouble is its own, a failed sync that
        of every document it covered."""
        for small in linking:
            assert small.tmp is not None
            try:
                sha = small.encoder.digest.hexdigest()
                _publish(small.tmp, small.final, sha, small.options.overwrite, sync_folder=False)
            except Exception as exc:
                small.error = exc
                _discard_path(small.tmp)
        for small in fresh:
            try:
                body = small.encoder.feed(small.data) + small.encoder.finish()
                small.encoder.digest.check(small.options.expected_sha256)
                small.tmp = small.final.parent / f"{TMP_PREFIX}{uuid.uuid4().hex}"
                with self._store._create(small.tmp) as handle:
                    handle.write(body)
                small.data = b""  # written: its bytes need not wait in memory for the next round
            except Exception as exc:
                small.error = (
                    StorageUnavailable(f"cannot write {small.final.name}: {exc.strerror}")
                    if isinstance(exc, OSError)
                    else exc
                )
                _discard_path(small.tmp)
        covered = [s for s in (*linking, *fresh) if s.error is None]
        if not covered:
            return
        error = self._store._durable()
        if error is not None:
            for small in covered:
                small.error = StorageUnavailable(f"cannot make {small.final.name} durable: {error.strerror}")
                if small in fresh:
                    _discard_path(small.tmp)  # not linked: nothing under its name


def _tell(smalls: list[_Small]) -> None:
    """Tell each waiting put how its document ended."""
    for small in smalls:
        if small.done.done():
            continue
        if small.error is None:
            small.done.set_result(None)
        else:
            small.done.set_exception(small.error)
            small.done.exception()  # retrieved here: its put may have been given up on


def _syncfs(root: Path) -> OSError | None:
    try:
        fd = os.open(root, os.O_RDONLY)
    except OSError as exc:
        return exc
    try:
        if _SYNCFS(fd) != 0:
            code = ctypes.get_errno()
            return OSError(code, os.strerror(code))
        return None
    finally:
        os.close(fd)


class LocalStorage(Storage):
    url_schemes = ("file://",)

    def __init__(
        self, root: str | Path, deadline: Deadline | None = None, threads: int = 32, group_commit: bool = True
    ) -> None:
        super().__init__(deadline, threads)
        self.root = Path(root).expanduser().resolve()
        self.url = self.root.as_uri()
        self._safe: set[Path] = set()  # folders already checked to lie inside the root
        self.group_commit = GroupCommit(self) if group_commit and _SYNCFS is not None else None

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def _inside(self, path: Path) -> Path:
        """Refuse a path that a symlink in the store leads outside it (called in a worker thread)."""
        folder = path.parent
        if folder not in self._safe:
            real = os.path.realpath(folder)
            if real != str(self.root) and not real.startswith(str(self.root) + os.sep):
                raise KeyRefused(f"{path.relative_to(self.root)} leads outside the store")
            self._safe.add(folder)
        return path

    async def put(self, key: str, chunks: Chunks, options: PutOptions | None = None) -> StoredObject:
        options = options or PutOptions()
        final = self._path(key)
        encoder = Encoder(options)
        head = bytearray()
        stream = aiter(chunks)
        async for chunk in stream:  # small documents are written in one step, below
            head += chunk
            if len(head) >= SMALL:
                break
        else:
            if self.group_commit is not None:
                await self.group_commit.put(final, bytes(head), encoder, options)
            else:
                await self._blocking(
                    partial(self._write_whole, final, bytes(head), encoder, options), len(head), "write"
                )
            return self.stored(key, encoder.digest, options)
        tmp = final.parent / f"{TMP_PREFIX}{uuid.uuid4().hex}"
        handle = await self._blocking(partial(self._create, tmp), what="create")
        try:
            await self._blocking(partial(_write, handle, encoder, bytes(head)), len(head), "write")
            async for piece in coalesced(stream, CHUNK):  # one trip to a thread per MiB, not per read
                await self._blocking(partial(_write, handle, encoder, piece), len(piece), "write")
            await self._blocking(partial(_seal, handle, encoder.finish()), what="fsync")
            encoder.digest.check(options.expected_sha256)
            sha = encoder.digest.hexdigest()
            await self._blocking(partial(_publish, tmp, final, sha, options.overwrite), what="publish")
        except BaseException:
            # Clean up in the background: an unlink must not block the loop either.
            self._threads.submit(_discard, handle, tmp)
            raise
        return self.stored(key, encoder.digest, options)

    async def probe(self) -> None:
        await self._blocking(self._probe, what="probe write")

    def _probe(self) -> None:
        tmp = self.root / f"{TMP_PREFIX}probe-{uuid.uuid4().hex}"  # a leftover is swept like any temp file
        try:
            with _create(tmp) as handle:
                handle.write(b"docgate probe")
                os.fsync(handle.fileno())
            tmp.unlink(missing_ok=True)
        except (OSError, StorageUnavailable) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else exc.message
            raise StorageRefused(f"cannot write in {self.root}: {reason}") from None

    def _create(self, tmp: Path) -> BinaryIO:
        self._inside(tmp)
        return _create(tmp)

    def _write_whole(self, final: Path, data: bytes, encoder: Encoder, options: PutOptions) -> None:
        """Encode, write, fsync and publish a small document in one trip to a thread (LOCAL_SYNC=each,
        or no syncfs: the group commit's baseline)."""
        body = encoder.feed(data) + encoder.finish()
        encoder.digest.check(options.expected_sha256)
        tmp = final.parent / f"{TMP_PREFIX}{uuid.uuid4().hex}"
        handle = self._create(tmp)
        try:
            handle.write(body)
            _seal(handle, b"")
            _publish(tmp, final, encoder.digest.hexdigest(), options.overwrite)
        except BaseException:
            _discard(handle, tmp)
            raise

    def _durable(self) -> OSError | None:
        """A sync of the store's filesystem (in a worker thread), or what made it fail."""
        return _syncfs(self.root)

    async def open(self, key: str, version_id: str | None = None) -> AsyncIterator[bytes]:
        path = self._path(key)
        try:
            handle = await self._blocking(lambda: self._inside(path).open("rb"), what="open")
        except (FileNotFoundError, IsADirectoryError):  # a shard folder is not an object
            raise ObjectMissing(f"no object at {key}") from None
        except OSError as exc:
            raise StorageUnavailable(f"cannot open {key}: {exc.strerror}") from None
        try:
            while chunk := await self._blocking(lambda: handle.read(CHUNK), CHUNK, "read"):
                yield chunk
        finally:
            handle.close()  # a read-only close does no I/O worth a thread

    async def stat(self, key: str, version_id: str | None = None) -> ObjectInfo | None:
        path = self._path(key)
        return await self._blocking(lambda: _stat(key, self._inside(path)), what="stat")

    async def absent(self, keys: Sequence[str]) -> set[str]:
        """One trip to a thread for the batch: the keys whose path does not exist."""
        paths = {}
        for key in keys:
            with contextlib.suppress(KeyRefused):  # refused later, by the document's own put
                paths[key] = self._path(key)
        return await self._blocking(lambda: {k for k, p in paths.items() if _missing(p)}, what="stat")

    async def delete(self, key: str) -> None:
        path = self._path(key)
        await self._blocking(lambda: _unlink(self._inside(path), key), what="delete")

    async def list(self, prefix: str = "") -> AsyncIterator[ObjectInfo]:
        folders = await self._blocking(lambda: sorted(_folders(self.root)), what="list")
        for folder in folders:
            infos = await self._blocking(partial(_list_folder, self.root, folder), what="list")
            for info in infos:
                if info.key.startswith(prefix):
                    yield info

    async def sweep(self, older_than: float = 3600) -> int:
        return await self._blocking(lambda: _sweep(self.root, older_than), what="sweep")


async def coalesced(chunks: AsyncIterator[bytes], size: int) -> AsyncIterator[bytes | bytearray]:
    """The same bytes in pieces of at least `size` (the last may be shorter).

    A chunk already that big passes through as it is, and a filled buffer is
    handed over rather than copied (a new one is started), so a large download
    holds one extra piece in memory at most."""
    buffer = bytearray()
    async for chunk in chunks:
        if not buffer and len(chunk) >= size:
            yield chunk
            continue
        buffer += chunk
        if len(buffer) >= size:
            piece, buffer = buffer, bytearray()
            yield piece
    if buffer:
        yield buffer


def _create(tmp: Path) -> BinaryIO:
    try:
        try:
            return tmp.open("xb")
        except FileNotFoundError:  # the shard folder's first document: a mkdir per folder, not per write
            tmp.parent.mkdir(parents=True, exist_ok=True)
            return tmp.open("xb")
    except OSError as exc:
        raise StorageUnavailable(f"cannot write in {tmp.parent}: {exc.strerror}") from None


def _write(handle: BinaryIO, encoder: Encoder, chunk: bytes | bytearray) -> None:
    handle.write(encoder.feed(chunk))


def _seal(handle: BinaryIO, tail: bytes) -> None:
    if tail:
        handle.write(tail)
    handle.flush()
    # fsync before publishing: after a crash the final name must never point
    # at a file whose data had not reached the disk.
    os.fsync(handle.fileno())
    handle.close()


def _publish(tmp: Path, final: Path, sha256: str, overwrite: bool, sync_folder: bool = True) -> None:
    with contextlib.suppress(OSError):
        os.setxattr(tmp, SHA_XATTR, sha256.encode())
    try:
        if overwrite:
            os.replace(tmp, final)
        else:
            os.link(tmp, final)  # fails if final exists: the write-once fence
            os.unlink(tmp)
    except FileExistsError:
        raise AlreadyStored(f"{final.name} is already stored") from None
    except OSError as exc:
        raise StorageUnavailable(f"cannot publish {final.name}: {exc.strerror}") from None
    if sync_folder:
        _fsync_dir(final.parent)


def _fsync_dir(folder: Path) -> None:
    # The rename/link lives in the folder's entries; sync them so it survives a crash.
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _discard(handle: BinaryIO, tmp: Path) -> None:
    with contextlib.suppress(OSError):
        handle.close()
    _discard_path(tmp)


def _discard_path(tmp: Path | None) -> None:
    if tmp is not None:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


def _unlink(path: Path, key: str) -> None:
    try:
        path.unlink(missing_ok=True)
    except IsADirectoryError:
        return  # a shard folder, not an object: nothing to delete
    except OSError as exc:
        raise StorageUnavailable(f"cannot delete {key}: {exc.strerror}") from None


def _stat(key: str, path: Path) -> ObjectInfo | None:
    try:
        info = path.stat()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StorageUnavailable(f"cannot stat {key}: {exc.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        return None
    return ObjectInfo(key=key, size=info.st_size, sha256=_sha_of(path))


def _missing(path: Path) -> bool:
    """Nothing at `path` (anything else, an error included, is for `stat` to say)."""
    try:
        os.stat(path)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return False


def _sha_of(path: Path) -> str | None:
    try:
        return os.getxattr(path, SHA_XATTR).decode()
    except OSError:
        return None


def _folders(root: Path) -> list[str]:
    out = [""]
    for dirpath, dirnames, _ in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        out += [d if rel == "." else f"{rel}/{d}" for d in dirnames]
    return out


def _list_folder(root: Path, folder: str) -> list[ObjectInfo]:
    base = root / folder if folder else root
    infos = []
    try:
        entries = sorted(os.scandir(base), key=lambda e: e.name)
    except FileNotFoundError:
        return []  # an empty store has no root folder yet
    except OSError as exc:
        raise StorageError(f"cannot list {folder or '/'}: {exc.strerror}") from None
    for entry in entries:
        if entry.is_file(follow_symlinks=False) and not entry.name.startswith(TMP_PREFIX):
            key = f"{folder}/{entry.name}" if folder else entry.name
            infos.append(ObjectInfo(key=key, size=entry.stat().st_size, sha256=_sha_of(Path(entry.path))))
    return infos


def _sweep(root: Path, older_than: float) -> int:
    cutoff = time.time() - older_than
    removed = 0
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            path = Path(dirpath) / name
            with contextlib.suppress(OSError):
                if name.startswith(TMP_PREFIX) and path.stat().st_mtime <= cutoff:
                    path.unlink()
                    removed += 1
    return removed
