"""Small documents are made durable a batch at a time (one syncfs(2) for many writes), and
never reported before it: a model of a power cut checks every put against what was on disk.

The model: only what a finished sync saw survives a power cut. `syncfs` is replaced by a
snapshot of the store (every file's name and bytes) taken when a sync runs. Then:
- when a temp file is published (linked to its final name), the last finished snapshot must
  hold it whole: the final name never points at bytes that had not reached the disk;
- when `put` returns (the document may be reported to the gate from then on), the last
  finished snapshot must hold the final name with the document's bytes.
The negative controls skip every other sync, beginning with the first or the second: a
document is then linked, or its put returns, after a sync that did not run; the model must
catch each.
"""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path
from typing import Any

import pytest

from storage import local
from storage.base import from_bytes
from storage.local import LocalStorage


class PowerCutModel:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.lock = threading.Lock()
        self.durable: dict[str, bytes] = {}  # path relative to the root -> bytes, as last synced
        self.violations: list[str] = []
        self.syncs = 0

    def syncfs(self, fd: int) -> int:
        seen: dict[str, bytes] = {}
        for dirpath, _, names in os.walk(self.root):
            for name in names:
                path = Path(dirpath) / name
                try:
                    seen[str(path.relative_to(self.root))] = path.read_bytes()
                except FileNotFoundError:
                    continue  # unlinked while we looked: not durable under that name
        with self.lock:
            self.durable = seen
            self.syncs += 1
        return 0

    def published(self, tmp: Path, final: Path) -> None:
        with self.lock:
            durable = self.durable.get(str(tmp.relative_to(self.root)))
        if durable != tmp.read_bytes():
            self.violations.append(f"{final.name} linked before its bytes were durable")

    def returned(self, key: str, data: bytes) -> None:
        with self.lock:
            if self.durable.get(key) != data:
                self.violations.append(f"{key} returned (reportable) before it was durable")


async def put_many(root: Path, monkeypatch: pytest.MonkeyPatch, skip: str | None) -> PowerCutModel:
    model = PowerCutModel(root)
    monkeypatch.setattr(local, "_SYNCFS", model.syncfs)
    real_publish = local._publish

    def publish(tmp: Path, final: Path, *args: Any, **kwargs: Any) -> None:
        model.published(tmp, final)
        real_publish(tmp, final, *args, **kwargs)

    monkeypatch.setattr(local, "_publish", publish)
    store = LocalStorage(root)
    assert store.group_commit is not None
    if skip is not None:  # a negative control: every other sync left out, the first or the second
        real = store._durable
        calls = [0]  # rounds run one at a time, each in some thread of the pool

        def durable() -> OSError | None:
            calls[0] += 1
            return None if (calls[0] % 2 == 1) == (skip == "data") else real()

        monkeypatch.setattr(store, "_durable", durable)

    async def one(i: int) -> None:
        data = os.urandom(100 + i)
        key = f"{i // 50}/{i}.bin"
        await store.put(key, from_bytes(data))
        model.returned(key, data)

    try:
        await asyncio.gather(*(one(i) for i in range(200)))
    finally:
        await store.close()
    return model


async def test_small_documents_are_durable_before_they_are_linked_and_before_put_returns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = await put_many(tmp_path / "store", monkeypatch, skip=None)
    assert model.violations == []
    # Syncs are shared: far fewer than the two per document an fsync each would cost.
    assert model.syncs < 200, model.syncs


@pytest.mark.parametrize("skip", ["data", "name"])
async def test_a_skipped_sync_is_caught(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, skip: str) -> None:
    model = await put_many(tmp_path / "store", monkeypatch, skip=skip)
    expected = "linked before its bytes" if skip == "data" else "returned (reportable) before"
    assert any(expected in v for v in model.violations), model.violations[:3]


async def test_a_failed_sync_fails_the_writes_it_covered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from storage.errors import StorageUnavailable

    def eio(fd: int) -> int:
        import ctypes

        ctypes.set_errno(5)
        return -1

    monkeypatch.setattr(local, "_SYNCFS", eio)
    store = LocalStorage(tmp_path / "store")
    try:
        with pytest.raises(StorageUnavailable, match="durable"):
            await store.put("0/1.bin", from_bytes(b"x" * 100))
    finally:
        await store.close()
    # Nothing under the final name: the write failed before publication.
    assert not (tmp_path / "store" / "0" / "1.bin").exists()


async def test_a_batch_fails_only_its_own_documents(tmp_path: Path) -> None:
    """Documents committed together: one already stored, one over its size limit, one put given
    up on mid-batch. Each of the first two fails alone; the one given up on is still written
    whole; the rest are stored; no temp file is left."""
    from storage import PutOptions
    from storage.errors import AlreadyStored, TooLarge

    root = tmp_path / "store"
    store = LocalStorage(root)
    try:
        await store.put("0/5.bin", from_bytes(b"first"))
        datas = {i: os.urandom(200 + i) for i in range(40)}

        async def one(i: int) -> object:
            limit = PutOptions(max_size=10) if i == 7 else None
            return await store.put(f"0/{i}.bin", from_bytes(datas[i]), limit)

        tasks = [asyncio.create_task(one(i)) for i in range(40)]
        await asyncio.sleep(0)
        tasks[9].cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        await store.close()
    assert isinstance(results[5], AlreadyStored)
    assert isinstance(results[7], TooLarge)
    assert isinstance(results[9], asyncio.CancelledError)
    failed = {i for i, r in enumerate(results) if isinstance(r, BaseException)}
    assert failed == {5, 7, 9}
    assert (root / "0" / "5.bin").read_bytes() == b"first"
    assert not (root / "0" / "7.bin").exists()
    for i in set(range(40)) - {5, 7}:
        assert (root / "0" / f"{i}.bin").read_bytes() == datas[i], i
    assert [p.name for p in (root / "0").iterdir() if p.name.startswith(local.TMP_PREFIX)] == []
