"""Acceptance 5: a client whose lease went stale cannot replace what the current holder stored.

The exact bad ordering, replayed: the old holder downloads and pauses; its
lease expires; the new holder stores the document and completes; the old
holder wakes up and writes. The storage fence is write-once publication
(link(2) on disk, If-None-Match: * on S3). The `unfenced` case removes the
fence (the stale writer overwrites) and shows the invariant check then fails,
so this test would catch a missing fence.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import Gate, make_bucket
from storage import PutOptions, Storage
from storage.base import from_bytes
from storage.errors import AlreadyStored
from storage.keys import document_key
from storage.local import LocalStorage
from storage.s3 import S3Storage


async def recorded_matches_stored(gate: Gate, store: Storage) -> bool:
    """The invariant: every recorded document is in storage with the recorded sha256."""
    for row in await gate.sql("SELECT storage_key, sha256, size FROM documents"):
        data = b"".join([c async for c in store.open(row["storage_key"])])
        if hashlib.sha256(data).hexdigest() != row["sha256"] or len(data) != row["size"]:
            return False
    return True


@pytest.mark.parametrize("fenced", [True, False], ids=["fenced", "unfenced"])
@pytest.mark.parametrize("backend", ["local", "s3"])
async def test_stale_holder_cannot_replace_the_current_holders_document(
    gate: Gate, tmp_path: Path, request: pytest.FixtureRequest, backend: str, fenced: bool
) -> None:
    makers: dict[str, Callable[[], Storage]] = {
        "local": lambda: LocalStorage(tmp_path / "store"),
        "s3": lambda: S3Storage(
            make_bucket(request.getfixturevalue("s3_endpoint")),
            "raw",
            endpoint_url=request.getfixturevalue("s3_endpoint"),
        ),
    }
    store = makers[backend]()
    old, new = await gate.register("old"), await gate.register("new")
    await gate.http.post(
        "/api/v1/jobs",
        headers=gate.admin,
        json={
            "source": "id_range",
            "chunk_size": 1,
            "params": {"url_template": "http://origin/{id}", "start_id": 3697692, "count": 1, "ext": ".tzb"},
        },
    )
    key = document_key(3697692, ".tzb")
    stale_bytes, fresh_bytes = b"version fetched by the old holder", b"version fetched by the new holder"

    # 1. The old holder leases and downloads, then stalls (GC pause, SIGSTOP, network partition).
    first = (await gate.lease(old)).json()
    # 2. Its lease runs out; the new holder leases, stores and completes.
    await gate.sql("UPDATE tasks SET lease_expires_at = now() - interval '1 second'")
    second = (await gate.lease(new, wait=10)).json()
    assert second["task_id"] == first["task_id"]
    stored = await store.put(key, from_bytes(fresh_bytes), PutOptions())
    r = await gate.http.post(
        "/api/v1/tasks/complete",
        headers=new,
        json={
            "task_id": second["task_id"],
            "lease_token": second["lease_token"],
            "documents_downloaded": 1,
            "documents": [
                {
                    "doc_id": 3697692,
                    "storage_key": stored.storage_key,
                    "sha256": stored.sha256,
                    "size": stored.size,
                    "storage_url": stored.storage_url,
                }
            ],
        },
    )
    assert r.status_code == 200, r.text
    # 3. The old holder wakes up and writes what it fetched.
    if fenced:
        with pytest.raises(AlreadyStored):
            await store.put(key, from_bytes(stale_bytes), PutOptions())
    else:
        await store.put(key, from_bytes(stale_bytes), PutOptions(overwrite=True))
    r = await gate.http.post(
        "/api/v1/tasks/complete",
        headers=old,
        json={"task_id": first["task_id"], "lease_token": first["lease_token"], "documents_downloaded": 1},
    )
    assert r.status_code == 409

    (row,) = await gate.sql("SELECT sha256, client_id FROM documents")
    assert row["sha256"] == hashlib.sha256(fresh_bytes).hexdigest()
    assert await recorded_matches_stored(gate, store) is fenced
    await store.close()


async def test_a_stale_lease_cannot_upload_through_the_gate(gate: Gate) -> None:
    old, new = await gate.register("old"), await gate.register("new")
    urls = [{"doc_id": "55", "url": "https://registry.example/55.txt"}]
    await gate.create(source="urls", params={"urls": urls})
    first = (await gate.lease(old)).json()
    await gate.sql("UPDATE tasks SET lease_expires_at = now() - interval '1 second'")
    second = (await gate.lease(new, wait=10)).json()

    def upload(headers: dict[str, str], lease: dict[str, str], body: bytes):  # type: ignore[no-untyped-def]
        return gate.http.put(
            "/api/v1/documents/55/raw",
            params={"ext": ".txt", "task_id": lease["task_id"]},
            headers=headers | {"X-Lease-Token": lease["lease_token"]},
            content=body,
        )

    r = await upload(old, first, b"stale")
    assert (r.status_code, r.json()["code"]) == (409, "lease_lost") and "lease" in r.json()["detail"]
    r = await upload(new, second, b"fresh")
    assert r.status_code == 201, r.text
    assert r.json()["storage_key"] == "0/55.txt"
    r = await upload(new, second, b"again")
    assert (r.status_code, r.json()["code"]) == (409, "already_stored")
    r = await gate.http.get("/api/v1/storage/objects/0/55.txt", headers=gate.admin)
    assert r.content == b"fresh"
    r = await gate.http.put("/api/v1/documents/56/raw", headers=new, content=b"no lease")
    assert r.status_code == 422
