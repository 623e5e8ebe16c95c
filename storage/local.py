"""Local disk: temp file in the destination folder, made durable, published, folder made durable.

Durability is a group commit. A small document's temp file is written and closed; the writer
then waits for a barrier, one ``syncfs(2)`` of the store's filesystem begun after its write, and
shared by every write in flight (`Barrier`); only then is it published, and a second barrier
makes the new name durable before ``put`` returns. So a document is durable before it is
reported, as with an fsync of each file and folder, at two filesystem syncs per batch of
writes instead of two per document. Large documents (and systems without syncfs) fsync their
own file and folder.

Publication is write-once with ``link(2)``: linking the finished temp file to
the final name fails if the name exists, so a stale writer can never replace
a stored document, and a reader never sees a partial one. The sha256 is kept
in the ``user.docgate.sha256`` extended attribute where the filesystem has them.

Leftovers: a write killed midway leaves a ``.docgate-tmp-*`` file next to its
destination, never a partial document under a final name. ``sweep()`` (run by
``docgate storage sweep`` and by clients at start) removes those older than an hour.

Why one module of this size: the barrier and the write path it orders are read together; the
durability argument above is about both.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import stat
import threading
import time
import uuid
from collections.abc import AsyncIterator, Sequence
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


class Barrier:
    """Group commit for one filesystem: `wait()` returns once a ``syncfs(2)`` that began after
    the call has finished, so everything the caller wrote before is on disk. One sync runs at a
    time; the writers that arrive meanwhile share the next one, so under load each sync covers
    a batch of documents."""

    def __init__(self, root: Path) -> None:
        self._root = root
        self._cond = threading.Condition()
        self._next = 1  # the round that starts next; rounds below it have started
        self._finished = 0  # the last round finished (rounds finish in order)
        self._running = False
        self._failed: dict[int, OSError] = {}

    @staticmethod
    def available() -> bool:
        return _SYNCFS is not None

    def wait(self) -> None:
        with self._cond:
            target = self._next  # a round running now may have begun before our write
            while self._finished < target and self._running:
                self._cond.wait()
            if self._finished >= target:  # another writer's round, begun after ours was written
                self._raise_if_failed(target)
                return
            assert self._next == target  # no round runs, and rounds start in order
            self._running = True  # ours to run
            self._next += 1
        error = self._sync()
        with self._cond:
            self._running = False
            self._finished = target
            if error is not None:
                self._failed[target] = error
            for old in [r for r in self._failed if r < target - 10_000]:
                del self._failed[old]
            self._cond.notify_all()
        if error is not None:
            raise error

    def _raise_if_failed(self, round_: int) -> None:
        error = self._failed.get(round_)
        if error is not None:
            raise error

    def _sync(self) -> OSError | None:
        try:
            fd = os.open(self._root, os.O_RDONLY)
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
        # Many threads: a small write mostly waits for its barrier, and the more writes wait
        # together, the fewer syncs per document.
        self.barrier = Barrier(self.root) if group_commit and Barrier.available() else None

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
        """Encode, write, fsync and publish a small document in one trip to a thread."""
        body = encoder.feed(data) + encoder.finish()
        encoder.digest.check(options.expected_sha256)
        tmp = final.parent / f"{TMP_PREFIX}{uuid.uuid4().hex}"
        handle = self._create(tmp)
        try:
            handle.write(body)
            if self.barrier is None:
                _seal(handle, b"")
                _publish(tmp, final, encoder.digest.hexdigest(), options.overwrite)
                return
            handle.close()
            # Its bytes on disk before its name exists: a crash never leaves the final name on a
            # file whose data had not reached the disk. Then the name made durable, before the
            # document can be reported.
            self._durable(f"cannot make {final.name} durable")
            _publish(tmp, final, encoder.digest.hexdigest(), options.overwrite, sync_folder=False)
        except BaseException:
            _discard(handle, tmp)
            raise
        self._durable(f"cannot make {final.name} durable")

    def _durable(self, what: str) -> None:
        assert self.barrier is not None
        try:
            self.barrier.wait()
        except OSError as exc:
            raise StorageUnavailable(f"{what}: {exc.strerror}") from None

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
