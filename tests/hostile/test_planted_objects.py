"""An object found in the store that no record vouches for is not trusted blindly.

The store holds, before the client runs: document 1 exactly as the origin serves it; document 2
planted (other bytes) under metadata that claims the origin's sha256 — what anyone who can write
the bucket could leave. Document 3 is not there. With the default `--verify-existing hash` the
client reads each object back and hashes it, so a record never carries a sha256 the bytes do not
have; with `fetch` it also compares with the origin: the planted object is never recorded, and
the document is stored beside it (the key is written once), as its version 2.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from conftest import Gate
from storage.local import LocalStorage
from worker_harness import document_origin, id_range_job, in_process_worker


def body_of(doc_id: int) -> bytes:
    return f"the registry's document {doc_id}\n".encode() * 20


PLANTED = b"not what the registry published"


class ForgingStore(LocalStorage):
    """A store whose metadata lies: it claims the origin's sha256 for the planted object."""

    async def stat(self, key: str) -> Any:
        info = await super().stat(key)
        if info is not None and key == "0/2.txt":
            return info.model_copy(update={"sha256": hashlib.sha256(body_of(2)).hexdigest()})
        return info


@pytest.fixture
async def origin() -> AsyncIterator[tuple[str, Counter[int]]]:
    async with document_origin(body_of) as served:
        yield served


@pytest.mark.parametrize("mode", ["hash", "fetch"])
async def test_an_unvouched_object_is_verified(gate: Gate, origin: Any, tmp_path: Path, mode: str) -> None:
    url, served = origin
    root = tmp_path / "store"
    (root / "0").mkdir(parents=True)
    (root / "0" / "1.txt").write_bytes(body_of(1))
    (root / "0" / "2.txt").write_bytes(PLANTED)
    key = (await gate.register("verifier"))["X-API-Key"]
    await id_range_job(gate, url + "/doc/{id}.txt", 3, max_attempts=1)
    store = ForgingStore(root)
    async with in_process_worker(gate, key, store, retries=0, timeout=10, verify_existing=mode) as worker:
        await asyncio.wait_for(worker.run(), 60)

    records = {
        r["doc_id"]: r for r in await gate.sql("SELECT doc_id, sha256, storage_key, version FROM documents")
    }
    rows = {doc_id: r["sha256"] for doc_id, r in records.items()}
    assert (
        rows["1"] == hashlib.sha256(body_of(1)).hexdigest()
        and rows["3"] == hashlib.sha256(body_of(3)).hexdigest()
    )
    if mode == "hash":
        # Recorded as what it is, never under the sha256 its metadata claims; the origin is spared.
        assert rows["2"] == hashlib.sha256(PLANTED).hexdigest()
        assert served == Counter({3: 1})
    else:  # fetched to compare, then again to be stored beside the planted bytes, left be
        beside = records["2"]
        assert (beside["version"], beside["storage_key"]) == (2, "0/2.txt.v2/2.txt")
        assert beside["sha256"] == hashlib.sha256(body_of(2)).hexdigest()
        assert (root / beside["storage_key"]).read_bytes() == body_of(2)
        assert (root / "0" / "2.txt").read_bytes() == PLANTED
        assert await gate.sql("SELECT doc_id FROM document_failures") == []
        assert served == Counter({1: 1, 2: 2, 3: 1})
