"""Acceptance 9: the client never blocks its event loop on file I/O while it fetches and stores.

An audit hook (PEP 578) sees every open, link, rename, remove and mkdir the
process makes; the test records those under the storage root together with
the thread that made them. Not one may run on the event loop's thread. The
check is behavioural, not timed: a probe written on the loop proves the hook
catches what it should.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from cluster import Origin
from conftest import Gate
from storage.errors import StorageUnavailable
from storage.local import LocalStorage
from worker_harness import id_range_job, in_process_worker

pytestmark = pytest.mark.timeout(180)


WATCHED = {
    "open",
    "os.link",
    "os.rename",
    "os.replace",
    "os.remove",
    "os.mkdir",
    "os.listdir",
    "os.scandir",
    "os.truncate",
}


class FileCalls:
    """File-system calls under `root`, each with whether it ran on the loop's thread."""

    active: FileCalls | None = None

    def __init__(self, root: Path) -> None:
        self.root = str(root)
        self.loop_thread = threading.get_ident()
        self.calls: list[tuple[str, str, bool]] = []

    def __enter__(self) -> FileCalls:
        FileCalls.active = self
        return self

    def __exit__(self, *_: object) -> None:
        FileCalls.active = None

    def on_loop(self) -> list[tuple[str, str]]:
        return [(event, path) for event, path, on_loop in self.calls if on_loop]


def _audit(event: str, args: tuple[Any, ...]) -> None:
    watcher = FileCalls.active
    if watcher is None or event not in WATCHED:
        return
    paths = [str(a) for a in args if isinstance(a, str | bytes | Path)]
    hit = next((p for p in paths if watcher.root in p), None)
    if hit is not None:
        watcher.calls.append((event, hit, threading.get_ident() == watcher.loop_thread))


sys.addaudithook(_audit)


@pytest.mark.parametrize("compress", ["none", "gzip"])
async def test_storing_500_documents_never_stalls_the_loop(gate: Gate, tmp_path: Path, compress: str) -> None:
    origin = Origin(tmp_path, "--size", "65536")
    key = (await gate.register("inproc"))["X-API-Key"]
    await id_range_job(gate, origin.url + "/doc/{id}.bin", 500, chunk_size=50)
    root = tmp_path / "store"
    try:
        async with in_process_worker(
            gate, key, LocalStorage(root), concurrency=32, max_tasks=4, compress=compress
        ) as worker:
            with FileCalls(tmp_path) as probe:  # the negative control: a write on the loop is seen
                (tmp_path / "probe").write_bytes(b"x")
            assert probe.on_loop() == [("open", str(tmp_path / "probe"))]
            with FileCalls(root) as calls:
                await worker.run()
    finally:
        origin.stop()
    stats = worker.stats
    assert stats.stored == 500 and stats.failed == 0
    assert sum(1 for event, _, _ in calls.calls if event == "open") >= 500  # every document was seen
    assert sum(1 for event, _, _ in calls.calls if event == "os.link") == 500
    assert calls.on_loop() == []


async def test_the_process_counts_agree_with_the_gates(gate: Gate, tmp_path: Path) -> None:
    """Every document is counted once by the client's progress line, failed ones included (they
    were once left out), and the counts add up to what the gate recorded."""
    missing = {3, 17, 18, 40}
    origin = Origin(tmp_path, "--size", "1024", "--missing", ",".join(map(str, missing)))
    key = (await gate.register("counts"))["X-API-Key"]
    await id_range_job(gate, origin.url + "/doc/{id}.bin", 50, chunk_size=10)
    try:
        async with in_process_worker(gate, key, LocalStorage(tmp_path / "store"), max_tasks=2) as worker:
            await worker.run()
    finally:
        origin.stop()
    stats = worker.stats
    (row,) = await gate.sql("SELECT sum(documents_downloaded), sum(documents_failed) FROM tasks")
    assert (stats.stored, stats.failed) == (46, 4) == (row[0], row[1])
    assert "stored 46, skipped 0, failed 4" in stats.line()
    codes = await gate.sql("SELECT doc_id, code FROM document_failures ORDER BY doc_id::int")
    assert [(r[0], r[1]) for r in codes] == [(str(d), "not_found") for d in sorted(missing)]


class OutageStorage(LocalStorage):
    """Local storage whose every call fails as unreachable until `until` (a storage outage)."""

    def __init__(self, root: Path, seconds: float) -> None:
        super().__init__(root)
        self.until = time.monotonic() + seconds
        self.refused = 0

    def _check(self) -> None:
        if time.monotonic() < self.until:
            self.refused += 1
            raise StorageUnavailable("connection reset by the storage endpoint")

    async def put(self, key: str, chunks: Any, options: Any = None) -> Any:
        self._check()
        return await super().put(key, chunks, options)

    async def stat(self, key: str) -> Any:
        self._check()
        return await super().stat(key)


async def test_a_short_storage_outage_spends_no_attempt(gate: Gate, tmp_path: Path) -> None:
    """Regression (chaos run): during a storage outage clients handed back every task they leased."""
    origin = Origin(tmp_path, "--size", "2048")
    key = (await gate.register("outage"))["X-API-Key"]
    await id_range_job(gate, origin.url + "/doc/{id}.bin", 100, chunk_size=10)
    store = OutageStorage(tmp_path / "store", seconds=3)
    try:
        async with in_process_worker(gate, key, store, concurrency=8, max_tasks=4) as worker:
            await worker.run()
    finally:
        origin.stop()
    stats = worker.stats
    assert store.refused > 0, "the outage happened"
    assert stats.stored == 100 and stats.failed == 0
    rows = await gate.sql("SELECT status, attempts FROM tasks")
    assert [(r["status"], r["attempts"]) for r in rows] == [("completed", 1)] * 10


async def test_a_long_storage_outage_hands_tasks_back_without_spending_attempts(
    gate: Gate, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store that fails past the client's retry window: the client hands its tasks back with the
    attempt given back (attempt_spent=false), leases nothing for a while, and finishes every task
    on what the gate counts as its first attempt once the store is back — never completing a task
    with its documents failed."""
    origin = Origin(tmp_path, "--size", "2048")
    key = (await gate.register("long-outage"))["X-API-Key"]
    await id_range_job(gate, origin.url + "/doc/{id}.bin", 40, chunk_size=10, max_attempts=2)
    # The client's storage retries (15.5 s) and leasing pause (10 s, doubling), shortened: the
    # outage outlasts the retries as it would the real ones.
    monkeypatch.setattr("client.document.STORAGE_RETRY_SECONDS", (0.2, 0.4, 0.8))
    monkeypatch.setattr("client.worker.STORAGE_PAUSE_SECONDS", 2.0)
    store = OutageStorage(tmp_path / "store", seconds=5)
    try:
        async with in_process_worker(gate, key, store, concurrency=8, max_tasks=2) as worker:
            await worker.run()
    finally:
        origin.stop()
    stats = worker.stats
    handed = await gate.sql("SELECT min(at) AS first FROM task_events WHERE event = 'retry_scheduled'")
    assert handed[0]["first"] is not None, "the outage outlasted the retries: tasks were handed back"
    rows = await gate.sql("SELECT status, attempts, documents_failed FROM tasks")
    assert [(r["status"], r["attempts"], r["documents_failed"]) for r in rows] == [("completed", 1, 0)] * 4
    assert stats.stored == 40
    # After handing back, it leased nothing for its pause (2 s; half of it is a generous floor).
    (next_lease,) = await gate.sql(
        "SELECT min(at) AS at FROM task_events WHERE event = 'leased' AND at > $1", handed[0]["first"]
    )
    assert (next_lease["at"] - handed[0]["first"]).total_seconds() >= 1


class HeldStorage(LocalStorage):
    """Local storage that holds the first document's put until a second put has begun."""

    def __init__(self, root: Path, patience: float) -> None:
        super().__init__(root)
        self.patience = patience
        self.second: Any = None
        self.puts = 0
        self.overlapped = False

    async def put(self, key: str, chunks: Any, options: Any = None) -> Any:
        import asyncio

        if self.second is None:
            self.second = asyncio.Event()
        self.puts += 1
        if self.puts == 1:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.patience):
                    await self.second.wait()
                    self.overlapped = True
        else:
            self.second.set()
        return await super().put(key, chunks, options)


@pytest.mark.parametrize("read_whole", [256 << 10, 0], ids=["small-read-whole", "control-streamed"])
async def test_a_small_document_storing_holds_no_download_place(
    gate: Gate, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, read_whole: int
) -> None:
    """One download at a time (--concurrency 1): while the first document is still being stored,
    the second is downloaded and stored beside it, since a small document is stored after its
    download has let go of the connection. The control streams every body into the store inside
    its download (READ_WHOLE 0): the second download then waits for the first store, which gives
    up waiting for it."""
    monkeypatch.setattr("client.document.READ_WHOLE", read_whole)
    origin = Origin(tmp_path, "--size", "2048")
    key = (await gate.register("held"))["X-API-Key"]
    await id_range_job(gate, origin.url + "/doc/{id}.bin", 2, chunk_size=2)
    store = HeldStorage(tmp_path / "store", patience=5 if read_whole == 0 else 60)
    try:
        async with in_process_worker(gate, key, store, concurrency=1, max_tasks=1) as worker:
            await worker.run()
    finally:
        origin.stop()
    assert worker.stats.stored == 2
    assert store.overlapped == (read_whole > 0)


class GatedStorage(LocalStorage):
    """Local storage whose puts wait until `opened` is set; `waiting` counts the puts held."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.opened: Any = None
        self.waiting = 0

    async def put(self, key: str, chunks: Any, options: Any = None) -> Any:
        import asyncio

        if self.opened is None:
            self.opened = asyncio.Event()
        self.waiting += 1
        await self.opened.wait()
        return await super().put(key, chunks, options)


@pytest.mark.parametrize("settled", [True, False], ids=["settled", "control-cancelled"])
async def test_a_stop_stores_what_was_downloaded_whole(
    gate: Gate, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, settled: bool
) -> None:
    """Stopped with no grace while four small documents, their downloads over, wait for their
    store: each is still stored and reported before the task goes back, so the origin is never
    asked for it twice. The control lets the stop cancel them with the task: none is recorded."""
    import asyncio

    from client.run import TaskRun

    if not settled:

        async def cancelled_with_the_task(self: TaskRun, step: Any) -> None:
            await step

        monkeypatch.setattr(TaskRun, "settle", cancelled_with_the_task)
    origin = Origin(tmp_path, "--size", "2048")
    key = (await gate.register("stopped"))["X-API-Key"]
    await id_range_job(gate, origin.url + "/doc/{id}.bin", 8, chunk_size=8)
    store = GatedStorage(tmp_path / "store")
    try:
        async with in_process_worker(gate, key, store, concurrency=2, grace=0) as worker:
            running = asyncio.create_task(worker.run())
            deadline = time.monotonic() + 60
            while store.waiting < 4:  # two downloads at a time, twice that many documents in hand
                assert time.monotonic() < deadline and not running.done()
                await asyncio.sleep(0.05)
            worker.stopping.set()
            await asyncio.sleep(0.5)  # the stop has cancelled the task by now
            store.opened.set()
            await asyncio.wait_for(running, 60)
        served = origin.stats()["documents_served"]
    finally:
        origin.stop()
    assert served == 4  # no fifth download began: the four held every place
    (row,) = await gate.sql("SELECT count(*) AS n FROM documents")
    assert row["n"] == (4 if settled else 0)
    (task,) = await gate.sql("SELECT status, last_error_code FROM tasks")
    assert (task["status"], task["last_error_code"]) == ("pending", "client_stopped")
