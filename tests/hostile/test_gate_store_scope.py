"""A client key reaches the gate's own store only for the documents of the task it leases.

The storage-objects API (list, HEAD, GET, DELETE by key) is the operator's: a registered client
that could read it would read the whole archive, and one that could stat it would learn which
documents exist under any key. What a `--storage gate` client needs — is this document of my
task already stored, and as which bytes — comes from `GET /api/v1/documents/{doc_id}/stored`,
which takes the lease like an upload does and answers with what the gate itself read back and
hashed (or what a record vouches for), never with an object's metadata.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import Gate
from protocol import paths, v1
from storage.base import Fence, PutOptions, from_bytes
from storage.errors import StaleLease, WriteRefused
from storage.gate import GateStorage
from worker_harness import document_origin, id_range_job, in_process_worker

OBJECT = "/api/v1/storage/objects/0/1.txt"


@pytest.mark.parametrize(
    "method, path",
    [("GET", "/api/v1/storage/objects"), ("HEAD", OBJECT), ("GET", OBJECT), ("DELETE", OBJECT)],
)
async def test_a_client_key_gets_nothing_from_the_storage_objects_api(
    gate: Gate, tmp_path: Path, method: str, path: str
) -> None:
    (tmp_path / "gate-store" / "0").mkdir(parents=True)
    (tmp_path / "gate-store" / "0" / "1.txt").write_bytes(b"the archive's copy")
    client = await gate.register()
    refused = await gate.http.request(method, path, headers=client)
    assert refused.status_code == 403
    assert refused.headers[paths.ERROR_CODE_HEADER] == "forbidden"
    assert (tmp_path / "gate-store" / "0" / "1.txt").read_bytes() == b"the archive's copy"
    # Control: the operator's key does what the call says.
    assert (await gate.http.request(method, path, headers=gate.admin)).status_code in (200, 204)


def stored_path(doc_id: int) -> str:
    return paths.url(paths.DOCUMENT_STORED, doc_id=doc_id)


async def leased_job(gate: Gate, count: int = 3) -> tuple[dict[str, str], dict[str, Any]]:
    await id_range_job(gate, "http://127.0.0.1:9/doc/{id}.txt", count, chunk_size=count)
    client = await gate.register()
    task = (await gate.lease(client)).json()
    return client, task


async def test_what_is_stored_is_asked_under_the_lease(gate: Gate, tmp_path: Path) -> None:
    client, task = await leased_job(gate)
    lease = {**client, paths.LEASE_HEADER: task["lease_token"]}
    mine = {"task_id": task["task_id"], "ext": ".txt"}
    (tmp_path / "gate-store" / "0").mkdir(parents=True)
    planted = b"planted, not the registry's bytes"
    (tmp_path / "gate-store" / "0" / "2.txt").write_bytes(planted)
    (tmp_path / "gate-store" / "0" / "9.txt").write_bytes(b"another task's document")

    cases = [
        ({}, client, 2, 422, "lease_required"),
        (mine, {**client, paths.LEASE_HEADER: str(uuid.uuid4())}, 2, 409, "lease_lost"),
        (mine, lease, 9, 422, "not_in_task"),
        (mine, lease, 1, 404, "object_missing"),
    ]
    for params, headers, doc_id, status, code in cases:
        reply = await gate.http.get(stored_path(doc_id), params=params, headers=headers)
        assert (reply.status_code, reply.json()["code"]) == (status, code), (doc_id, reply.text)

    # Control: the lease holder asks about its own document, and hears the bytes' own sha256.
    reply = await gate.http.get(stored_path(2), params=mine, headers=lease)
    assert reply.status_code == 200, reply.text
    found = v1.StoredDocument.model_validate_json(reply.content)
    assert (found.storage_key, found.size) == ("0/2.txt", len(planted))
    assert found.sha256 == hashlib.sha256(planted).hexdigest()


async def test_a_recorded_document_is_answered_from_its_record(gate: Gate, tmp_path: Path) -> None:
    client, task = await leased_job(gate)
    store = GateStorage("http://gate", client[paths.API_KEY_HEADER], http=_http(gate))
    fence = Fence(task["task_id"], task["lease_token"])
    options = PutOptions(doc_id="1", ext=".txt", fence=fence)
    try:
        stored = await store.put("0/1.txt", from_bytes(b"the registry's document 1"), options)
        assert await store.verified("0/1.txt", options) == stored
        assert await store.verified("0/3.txt", PutOptions(doc_id="3", ext=".txt", fence=fence)) is None
        with pytest.raises(StaleLease):
            await store.verified(
                "0/1.txt", PutOptions(doc_id="1", ext=".txt", fence=Fence(fence.task_id, str(uuid.uuid4())))
            )
        with pytest.raises(WriteRefused):
            await store.verified("0/1.txt", PutOptions(doc_id="1", ext=".txt"))
        # A client key can no longer stat by key (the way --storage gate used to ask).
        with pytest.raises(WriteRefused):
            await store.stat("0/1.txt")
    finally:
        await store.close()


def body_of(doc_id: int) -> bytes:
    return f"the registry's document {doc_id}\n".encode() * 20


@pytest.mark.parametrize("mode", ["hash", "fetch"])
async def test_a_gate_client_finds_planted_objects_verified(gate: Gate, tmp_path: Path, mode: str) -> None:
    """The planted-object case through `--storage gate`: the gate holds the origin's document 1
    and planted bytes for document 2; it hashes both itself, so the record of 2 carries the
    planted bytes' sha256 (hash) or 2 is failed (fetch) — never recorded as the origin's copy."""
    root = tmp_path / "gate-store" / "0"
    root.mkdir(parents=True)
    (root / "1.txt").write_bytes(body_of(1))
    (root / "2.txt").write_bytes(b"planted")
    key = (await gate.register("gate-client"))["X-API-Key"]
    store = GateStorage("http://gate", key, http=_http(gate))
    async with document_origin(body_of) as (url, served):
        await id_range_job(gate, url + "/doc/{id}.txt", 3, max_attempts=1)
        async with in_process_worker(gate, key, store, retries=0, timeout=10, verify_existing=mode) as worker:
            await asyncio.wait_for(worker.run(), 60)

    rows = {r["doc_id"]: r["sha256"] for r in await gate.sql("SELECT doc_id, sha256 FROM documents")}
    assert rows["1"] == hashlib.sha256(body_of(1)).hexdigest()
    assert rows["3"] == hashlib.sha256(body_of(3)).hexdigest()
    if mode == "hash":
        assert rows["2"] == hashlib.sha256(b"planted").hexdigest()
        assert sorted(served) == [3]
    else:
        assert "2" not in rows
        (failure,) = await gate.sql("SELECT doc_id, error FROM document_failures")
        assert failure["doc_id"] == "2" and "other bytes" in failure["error"]
        assert sorted(served) == [1, 2, 3]


def _http(gate: Gate) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=gate.transport, base_url="http://gate")
