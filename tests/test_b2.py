"""docgate on Backblaze B2's S3 dialect (tests/b2_dialect.py): no conditional writes, every
bucket versioned. The fence there is the record's version_id: a late writer's version is never
what the gate serves, and `docgate storage verify` fails the key it shadows.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import subprocess
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import asyncpg
import boto3
import pytest

from b2_dialect import b2_endpoint, b2_env
from conftest import Gate, gate_settings, make_b2_bucket, make_bucket, start_gate
from processes import CLEAN_ENV, REPO, docgate
from storage import open_storage
from storage.base import PutOptions, from_bytes
from storage.copy import copy_store
from storage.errors import AlreadyStored, StorageUnavailable
from storage.keys import document_key
from storage.local import LocalStorage
from storage.memory import MemoryStorage
from storage.mirror import MirrorStorage
from storage.s3 import STAGING, S3Storage
from worker_harness import id_range_job, in_process_worker


def body_of(doc_id: int) -> bytes:
    return f"battle log {doc_id}\n".encode() * 300


@pytest.fixture
def bucket(s3_endpoint: str) -> str:
    return make_b2_bucket(s3_endpoint)


@pytest.fixture
async def b2_gate(
    db_dsn: str, b2_url: str, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Gate]:
    """A gate whose STORAGE_URL is b2://, its B2_* variables as `.env.example` names them."""
    for name, value in b2_env(b2_url, bucket).items():
        monkeypatch.setenv(name, value)
    async for gate in start_gate(db_dsn, gate_settings(storage_url=f"b2://{bucket}/raw")):
        yield gate


@pytest.fixture
async def origin() -> AsyncIterator[str]:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await reader.readuntil(b"\r\n\r\n")
        doc_id = int(request.split(b" ")[1].rsplit(b"/", 1)[1].split(b".")[0])
        body = body_of(doc_id)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n")
        writer.write(b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    server.close()
    await server.wait_closed()


def b2_store(b2_url: str, bucket: str) -> S3Storage:
    store = open_storage(f"b2://{bucket}/raw", env=b2_env(b2_url, bucket))
    assert isinstance(store, S3Storage)
    return store


async def test_todays_fence_header_is_refused_by_b2(b2_url: str, bucket: str) -> None:
    """Why B2 needs its own fence: the header the S3 fence relies on is a 501 there (main sent
    it on every write, so every b2:// write failed)."""
    client = boto3.client("s3", endpoint_url=b2_url)
    with pytest.raises(client.exceptions.ClientError) as refused:
        client.put_object(Bucket=bucket, Key="raw/0/1.tzb", Body=b"x", IfNoneMatch="*")
    assert refused.value.response["Error"]["Code"] == "NotImplemented"
    assert client.put_object(Bucket=bucket, Key="raw/0/1.tzb", Body=b"x")["VersionId"]  # control


async def test_the_probe_finds_no_conditional_writes(b2_url: str, bucket: str, s3_endpoint: str) -> None:
    b2 = b2_store(b2_url, bucket)
    await b2.probe()
    assert b2.conditional is False
    # Control: moto itself honours If-None-Match.
    s3 = S3Storage(bucket, "raw", endpoint_url=s3_endpoint)
    await s3.probe()
    assert s3.conditional is True
    # The probe leaves nothing behind, not even a hidden version.
    versions = boto3.client("s3", endpoint_url=s3_endpoint).list_object_versions(Bucket=bucket)
    assert not versions.get("Versions") and not versions.get("DeleteMarkers")
    await b2.close()
    await s3.close()


@pytest.mark.parametrize("size", [3_000, 12 << 20], ids=["single PUT", "multipart"])
async def test_a_taken_key_is_refused_and_the_version_is_pinned(b2_url: str, bucket: str, size: int) -> None:
    store = b2_store(b2_url, bucket)
    store.part_size = 5 << 20
    key = document_key(7, ".tzb")
    first = await store.put(key, from_bytes(b"a" * size), PutOptions())
    assert first.version_id
    with pytest.raises(AlreadyStored):
        await store.put(key, from_bytes(b"b" * size), PutOptions())
    info = await store.stat(key)
    assert info is not None and info.version_id == first.version_id
    await store.close()


async def test_a_worker_stores_to_b2_and_the_gate_serves_the_recorded_version(
    b2_gate: Gate, b2_url: str, bucket: str, origin: str, tmp_path: Path
) -> None:
    key = (await b2_gate.register("b2-worker"))["X-API-Key"]
    await id_range_job(b2_gate, origin + "/doc/{id}.tzb", 6, chunk_size=3)
    async with in_process_worker(b2_gate, key, b2_store(b2_url, bucket), retries=0) as worker:
        await asyncio.wait_for(worker.run(), 120)
    rows = await b2_gate.sql("SELECT doc_id, storage_key, sha256, version_id FROM documents ORDER BY doc_id")
    assert [r["doc_id"] for r in rows] == ["1", "2", "3", "4", "5", "6"]
    for row in rows:
        assert row["sha256"] == hashlib.sha256(body_of(int(row["doc_id"]))).hexdigest() and row["version_id"]

    # A late writer whose check ran before the holder's write (the check is not atomic on B2)
    # lands a newer version at the key of document 2.
    s3 = boto3.client("s3", endpoint_url=b2_url)
    s3.put_object(Bucket=bucket, Key="raw/" + rows[1]["storage_key"], Body=b"a stale writer's bytes")
    raw = await b2_gate.http.get("/api/v1/documents/2/raw", headers=b2_gate.admin)
    assert raw.status_code == 200 and raw.content == body_of(2)

    env = (
        CLEAN_ENV
        | b2_env(b2_url, bucket)
        | {"DATABASE_URL": b2_gate.dsn, "STORAGE_URL": f"b2://{bucket}/raw"}
    )
    verify = subprocess.run(docgate("storage", "verify"), env=env, cwd=REPO, capture_output=True, text=True)
    assert verify.returncode == 1, verify.stdout + verify.stderr
    assert "shadowed " + rows[1]["storage_key"] in verify.stdout and "1 missing or wrong" in verify.stdout

    # Negative control: a record without its version serves whatever was written last.
    await b2_gate.sql("UPDATE documents SET version_id = NULL WHERE doc_id = '2'")
    unpinned = await b2_gate.http.get("/api/v1/documents/2/raw", headers=b2_gate.admin)
    assert unpinned.content == b"a stale writer's bytes"


async def test_an_upload_through_a_b2_gate_is_pinned(b2_gate: Gate, origin: str) -> None:
    await id_range_job(b2_gate, origin + "/doc/{id}.tzb", 1)
    client = await b2_gate.register()
    task = (await b2_gate.lease(client)).json()
    put: Any = await b2_gate.http.put(
        f"/api/v1/documents/1/raw?ext=.tzb&task_id={task['task_id']}",
        headers=client | {"X-Lease-Token": task["lease_token"]},
        content=body_of(1),
    )
    assert put.status_code == 201, put.text
    assert put.json()["version_id"]
    again = await b2_gate.http.put(
        f"/api/v1/documents/1/raw?ext=.tzb&task_id={task['task_id']}",
        headers=client | {"X-Lease-Token": task["lease_token"]},
        content=b"other bytes",
    )
    assert (again.status_code, again.json()["code"]) == (409, "already_stored")


async def test_a_second_migration_downloads_nothing(s3_endpoint: str) -> None:
    """migrate B2 → B2 twice: the second run reads no object, only listings and metadata (the
    sha256 each put keeps in x-amz-meta-sha256)."""
    with b2_endpoint(s3_endpoint) as (url, seen):
        src_bucket, dst_bucket = make_b2_bucket(s3_endpoint), make_b2_bucket(s3_endpoint)
        src, dst = b2_store(url, src_bucket), b2_store(url, dst_bucket)
        for i in range(1, 41):
            await src.put(document_key(i, ".tzb"), from_bytes(body_of(i)), PutOptions())
        first = await copy_store(src, dst)
        assert (first.copied, first.skipped, first.failed) == (40, 0, 0)
        seen.seen.clear()
        second = await copy_store(src, dst)
        assert (second.copied, second.skipped, second.failed) == (0, 40, 0)
        reads = [(m, p) for m, p, _ in seen.seen if m == "GET" and "/raw/" in p]
        assert reads == [], reads[:3]
        assert all(m in {"GET", "HEAD"} for m, _, _ in seen.seen)  # listings and HEADs only
        await src.close()
        await dst.close()


@pytest.mark.parametrize(("kind", "count"), [("s3", 1_005), ("b2", 5)], ids=["s3, past one page", "b2"])
async def test_sweep_removes_every_leftover(s3_endpoint: str, b2_url: str, kind: str, count: int) -> None:
    """Past one listing page (1,000) on S3; on B2 every version of each leftover, hidden ones
    and delete markers included (a delete by name would only hide it)."""
    bucket = make_b2_bucket(s3_endpoint) if kind == "b2" else make_bucket(s3_endpoint)
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)

    def leave(i: int) -> None:
        s3.put_object(Bucket=bucket, Key=f"raw/{STAGING}{i:05d}", Body=b"x")
        if kind == "b2":
            s3.delete_object(Bucket=bucket, Key=f"raw/{STAGING}{i:05d}")  # hidden, still billed

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(leave, range(count)))
    s3.put_object(Bucket=bucket, Key="raw/0/1.tzb", Body=b"a document")
    store = b2_store(b2_url, bucket) if kind == "b2" else S3Storage(bucket, "raw", endpoint_url=s3_endpoint)
    assert await store.sweep(older_than=0) == count * (2 if kind == "b2" else 1)
    left = s3.list_object_versions(Bucket=bucket, Prefix="raw/" + STAGING)
    assert not left.get("Versions") and not left.get("DeleteMarkers")
    assert await store.stat("0/1.tzb") is not None  # control: documents stay
    await store.close()


class DownOnce(MemoryStorage):
    """A secondary that is down for its first write."""

    failed = False

    async def put(self, key: str, chunks: Any, options: PutOptions | None = None) -> Any:
        if not self.failed:
            self.failed = True
            raise StorageUnavailable("secondary down")
        return await super().put(key, chunks, options)


async def test_a_mirror_secondary_catches_up_when_the_document_runs_again(tmp_path: Path) -> None:
    secondary = DownOnce()
    mirror = MirrorStorage(LocalStorage(tmp_path / "primary"), secondary)
    key = document_key(5, ".tzb")
    with pytest.raises(StorageUnavailable):
        await mirror.put(key, from_bytes(body_of(5)), PutOptions())
    assert await mirror.primary.stat(key) is not None and await secondary.stat(key) is None
    # The task runs again: the worker finds the document in storage, and the mirror copies it on.
    found = await mirror.verified(key)
    assert found is not None and found.sha256 == hashlib.sha256(body_of(5)).hexdigest()
    assert b"".join([c async for c in secondary.open(key)]) == body_of(5)
    await mirror.close()


@pytest.mark.timeout(600)
async def test_the_seed_flow_local_disk_then_b2(
    db_dsn: str, s3_endpoint: str, b2_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Seed 003: documents on local disk (development), migrated to B2 (production) by
    `docgate storage migrate`, killed halfway and run again, verified, then served by a gate
    whose STORAGE_URL is the bucket."""
    root, n = tmp_path / "raw", 150
    local = LocalStorage(root)
    conn = await asyncpg.connect(db_dsn)
    try:
        for i in range(1, n + 1):
            stored = await local.put(document_key(i, ".tzb"), from_bytes(body_of(i)), PutOptions())
            await conn.execute(
                "INSERT INTO documents (doc_id, source, storage_key, storage_url, sha256, size) "
                "VALUES ($1, 'id_range', $2, $3, $4, $5)",
                str(i), stored.storage_key, stored.storage_url, stored.sha256, stored.size,
            )  # fmt: skip
    finally:
        await conn.close()
    await local.close()
    bucket = make_b2_bucket(s3_endpoint)
    env = CLEAN_ENV | b2_env(b2_url, bucket) | {"DATABASE_URL": db_dsn}
    argv = docgate("storage", "migrate", f"file://{root}", f"b2://{bucket}/raw", "--workers", "4")
    first = subprocess.Popen(argv, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    while (s3.list_objects_v2(Bucket=bucket, Prefix="raw/0/").get("KeyCount", 0)) < n // 3:
        assert first.poll() is None, "migrate finished before it could be interrupted"
        await asyncio.sleep(0.1)
    first.kill()
    first.wait(10)
    again = subprocess.run(argv, env=env, cwd=REPO, capture_output=True, text=True, timeout=400)
    assert again.returncode == 0, again.stdout + again.stderr
    copied, skipped, failed = (
        int(x) for x in re.findall(r"copied (\d+) .*skipped (\d+) .*failed (\d+)", again.stdout)[0]
    )
    assert copied + skipped == n and failed == 0 and skipped >= n // 3

    verify = subprocess.run(
        docgate("storage", "verify"), env=env | {"STORAGE_URL": f"b2://{bucket}/raw"}, cwd=REPO,
        capture_output=True, text=True, timeout=400,
    )  # fmt: skip
    assert verify.returncode == 0 and f"verified {n} recorded documents" in verify.stdout, verify.stdout

    for name, value in b2_env(b2_url, bucket).items():
        monkeypatch.setenv(name, value)
    async for gate in start_gate(db_dsn, gate_settings(storage_url=f"b2://{bucket}/raw")):
        for doc_id in (1, n // 2, n):
            raw = await gate.http.get(f"/api/v1/documents/{doc_id}/raw", headers=gate.admin)
            assert raw.status_code == 200 and raw.content == body_of(doc_id)


def test_b2_variables_in_dotenv_reach_the_store(
    tmp_path: Path, db_dsn: str, b2_url: str, bucket: str
) -> None:
    """`.env.example` invites B2_* in `.env`: the CLI (and the gate and client, which open their
    store the same way) read them from there, not only from the environment."""
    lines = [f"{k}={v}" for k, v in b2_env(b2_url, bucket).items()]
    (tmp_path / ".env").write_text(
        "\n".join([*lines, f"STORAGE_URL=b2://{bucket}/raw", f"DATABASE_URL={db_dsn}"])
    )
    s3 = boto3.client("s3", endpoint_url=b2_url)
    s3.put_object(Bucket=bucket, Key=f"raw/{STAGING}left-over", Body=b"x")
    sweep = subprocess.run(
        [*docgate("storage", "sweep", f"b2://{bucket}/raw", "--older-than", "0")],
        env=CLEAN_ENV | {"PYTHONPATH": str(REPO)}, cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert sweep.returncode == 0, sweep.stdout + sweep.stderr
    verify = subprocess.run(
        docgate("storage", "verify"), env=CLEAN_ENV | {"PYTHONPATH": str(REPO)}, cwd=tmp_path,
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert verify.returncode == 0 and f"in b2://{bucket}/raw" in verify.stdout, verify.stdout + verify.stderr
    # Control: without the file the same command names what is missing, in one line.
    (tmp_path / ".env").unlink()
    bare = subprocess.run(
        [*docgate("storage", "sweep", f"b2://{bucket}/raw")], env=CLEAN_ENV | {"PYTHONPATH": str(REPO)},
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert bare.returncode == 2 and "B2_ENDPOINT" in bare.stderr and "Traceback" not in bare.stderr
