"""Acceptance 6 and 8: migrate (interrupted, resumed), verify, and B2's no-checksum-headers rule."""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import asyncpg
import boto3
import httpx
import pytest

from conftest import make_bucket
from processes import CLEAN_ENV, REPO, docgate
from storage import PutOptions, open_storage
from storage.base import from_bytes
from storage.keys import document_key
from storage.local import LocalStorage

pytestmark = pytest.mark.slow
DOCS = 1200  # more than one S3 listing page (1,000 keys)


def body_of(i: int) -> bytes:
    return f"document {i}\n".encode() * (1 + i % 7)


async def fill_local(root: Path, n: int) -> dict[str, str]:
    store = LocalStorage(root)
    shas: dict[str, str] = {}

    async def put(i: int) -> None:
        stored = await store.put(document_key(3_690_000 + i, ".tzb"), from_bytes(body_of(i)), PutOptions())
        shas[stored.storage_key] = stored.sha256

    for start in range(0, n, 100):
        await asyncio.gather(*(put(i) for i in range(start, min(start + 100, n))))
    await store.close()
    return shas


def s3_env(endpoint: str) -> dict[str, str]:
    return CLEAN_ENV | {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "test-key-id",
        "AWS_SECRET_ACCESS_KEY": "test-secret",
        "AWS_DEFAULT_REGION": "us-east-1",
    }


def objects_in(endpoint: str, bucket: str, limit: int) -> dict[str, str]:
    """key → sha256 metadata of the first `limit` objects, read directly from S3."""
    s3 = boto3.client("s3", endpoint_url=endpoint)
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, MaxKeys=limit).get("Contents", [])]
    return {
        k.removeprefix("raw/"): s3.head_object(Bucket=bucket, Key=k)["Metadata"].get("sha256", "")
        for k in keys
    }


def count_in(endpoint: str, bucket: str) -> int:
    s3 = boto3.client("s3", endpoint_url=endpoint)
    return sum(p.get("KeyCount", 0) for p in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket))


def summary_of(output: str) -> tuple[int, int, int]:
    m = re.search(r"(?:copied|would copy) (\d+) .*skipped (\d+) .*failed (\d+)", output)
    assert m, output
    return int(m[1]), int(m[2]), int(m[3])


@pytest.mark.timeout(600)
async def test_migrate_interrupted_then_resumed_copies_each_object_once(
    tmp_path: Path, s3_endpoint: str
) -> None:
    shas = await fill_local(tmp_path / "src", DOCS)
    bucket = make_bucket(s3_endpoint)
    argv = docgate("storage", "migrate", f"file://{tmp_path / 'src'}", f"s3://{bucket}/raw", "--workers", "8")
    env = s3_env(s3_endpoint)

    first = subprocess.Popen(argv, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while count_in(s3_endpoint, bucket) < DOCS // 2 and time.monotonic() < deadline:
        assert first.poll() is None, "migrate finished before it could be interrupted"
        time.sleep(0.5)  # each look lists the bucket: not too often
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    assert first.stdout is not None
    first.stdout.close()
    present = count_in(s3_endpoint, bucket)
    assert DOCS // 2 <= present < DOCS

    second = subprocess.run(argv, env=env, cwd=REPO, capture_output=True, text=True, timeout=400)
    assert second.returncode == 0, second.stderr[-2000:]
    copied, skipped, failed = summary_of(second.stdout)
    assert (copied, skipped, failed) == (DOCS - present, present, 0)

    # A third run finds every object at DST with the source's sha256 (from
    # its metadata), so it copies nothing: all of them are there and verified.
    third = subprocess.run(argv, env=env, cwd=REPO, capture_output=True, text=True, timeout=400)
    assert summary_of(third.stdout) == (0, DOCS, 0)
    sample = objects_in(s3_endpoint, bucket, limit=200)
    assert sample and all(shas[key] == sha for key, sha in sample.items())


async def test_migrate_dry_run_copies_nothing(tmp_path: Path) -> None:
    await fill_local(tmp_path / "src", 30)
    argv = docgate("storage", "migrate", str(tmp_path / "src"), str(tmp_path / "dst"))
    dry = subprocess.run(
        [*argv, "--dry-run"], env=CLEAN_ENV, cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert summary_of(dry.stdout) == (30, 0, 0)
    assert not (tmp_path / "dst").exists() or not any((tmp_path / "dst").rglob("*.tzb"))
    real = subprocess.run(argv, env=CLEAN_ENV, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert summary_of(real.stdout) == (30, 0, 0)
    again = subprocess.run(argv, env=CLEAN_ENV, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert summary_of(again.stdout) == (0, 30, 0)


async def test_verify_catches_a_deleted_and_a_corrupted_document(tmp_path: Path, db_dsn: str) -> None:
    root = tmp_path / "store"
    shas = await fill_local(root, 20)
    conn = await asyncpg.connect(db_dsn)
    try:
        for key, sha in shas.items():
            doc_id = key.split("/")[1].removesuffix(".tzb")
            size = len(body_of(int(doc_id) - 3_690_000))
            await conn.execute(
                "INSERT INTO documents (doc_id, source, storage_key, storage_url, sha256, size) "
                "VALUES ($1, 'id_range', $2, $3, $4, $5)",
                doc_id,
                key,
                f"file://{root}/{key}",
                sha,
                size,
            )
    finally:
        await conn.close()
    argv = docgate("storage", "verify", "--store", str(root))
    env = CLEAN_ENV | {"DATABASE_URL": db_dsn}
    ok = subprocess.run(argv, env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "verified 20 recorded documents" in ok.stdout

    deleted, corrupted = sorted(shas)[3], sorted(shas)[7]
    (root / deleted).unlink()
    data = (root / corrupted).read_bytes()
    (root / corrupted).write_bytes(bytes([data[0] ^ 1]) + data[1:])  # same size, one bit off
    bad = subprocess.run(argv, env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1
    assert f"missing {deleted}" in bad.stdout
    assert f"wrong {corrupted}" in bad.stdout
    assert "2 missing or wrong" in bad.stdout


class Recorder(BaseHTTPRequestHandler):
    """A forwarding proxy to moto that records every request's headers."""

    protocol_version = "HTTP/1.1"
    upstream = ""
    seen: list[tuple[str, str, dict[str, str]]] = []

    def _forward(self) -> None:
        length = int(self.headers.get("Content-Length", 0) or 0)
        body = self.rfile.read(length) if length else b""
        headers = {
            k: v
            for k, v in self.headers.items()
            if k.lower() not in {"host", "expect", "connection", "content-length"}
        }
        self.seen.append((self.command, self.path, {k.lower(): v for k, v in self.headers.items()}))
        reply = httpx.request(
            self.command, self.upstream + self.path, headers=headers, content=body, timeout=30
        )
        self.send_response(reply.status_code)
        for k, v in reply.headers.items():
            if k.lower() not in {"content-length", "transfer-encoding", "connection", "content-encoding"}:
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(reply.content)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(reply.content)

    do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _forward

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def recording_proxy(s3_endpoint: str) -> Iterator[type[Recorder]]:
    Recorder.upstream = s3_endpoint
    Recorder.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    Recorder.upstream_port = server.server_address[1]  # type: ignore[attr-defined]
    yield Recorder
    server.shutdown()
    server.server_close()


async def test_b2_uploads_send_no_checksum_headers(recording_proxy: type[Recorder], s3_endpoint: str) -> None:
    bucket = make_bucket(s3_endpoint)
    port = recording_proxy.upstream_port  # type: ignore[attr-defined]
    store = open_storage(
        "b2://" + bucket + "/raw",
        env={
            "B2_ENDPOINT": f"http://127.0.0.1:{port}",
            "B2_APPLICATION_KEY_ID": "test-key-id",
            "B2_APPLICATION_KEY": "test-secret",
        },
    )
    small, large = b"battle log" * 100, os.urandom(9 << 20)  # one PUT; a staged multipart upload
    for doc_id, data in ((3697692, small), (3697693, large)):
        stored = await store.put(document_key(doc_id, ".tzb"), from_bytes(data), PutOptions())
        assert stored.sha256 == hashlib.sha256(data).hexdigest()
    await store.close()

    writes = [(m, p, h) for m, p, h in recording_proxy.seen if m in {"PUT", "POST"}]
    assert len(writes) >= 6  # put, create/parts/complete for staging, create/copy/complete for final
    for method, path, headers in writes:
        sent = {k for k in headers if k.startswith("x-amz-checksum-") or k == "x-amz-sdk-checksum-algorithm"}
        assert not sent, (method, path, sent)
    puts = [h for m, p, h in writes if m == "PUT" and "uploadId" not in p]
    assert puts and all(h.get("if-none-match") == "*" and "x-amz-meta-sha256" in h for h in puts)
