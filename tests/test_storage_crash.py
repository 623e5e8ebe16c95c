"""Acceptance 2-4: killed writers leave no partial document, memory stays flat, stalls time out."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

from conftest import make_bucket
from processes import REPO
from storage import Deadline, PutOptions
from storage.base import from_bytes
from storage.errors import StorageTimeout, StorageUnavailable
from storage.gate import GateStorage
from storage.local import TMP_PREFIX, LocalStorage
from storage.s3 import S3Storage

WRITER = str(REPO / "tests" / "storage_writer.py")
pytestmark = pytest.mark.slow


def start_writer(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, WRITER, *args],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env=os.environ | {"PYTHONPATH": str(REPO)},
    )


def kill_after_progress(proc: subprocess.Popen[str], lines: int) -> None:
    assert proc.stdout is not None
    for _ in range(lines):
        assert proc.stdout.readline().startswith("progress"), "writer never made progress"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    proc.stdout.close()


def temp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.startswith(TMP_PREFIX)]


async def test_local_writer_killed_midway_leaves_no_document(tmp_path: Path) -> None:
    root = tmp_path / "store"
    proc = start_writer(str(root), "73/3697692.tzb", str(64 << 20), "--slow", "0.05")
    kill_after_progress(proc, 5)
    store = LocalStorage(root)
    assert await store.stat("73/3697692.tzb") is None
    assert [i async for i in store.list()] == []
    assert len(temp_files(root)) == 1  # the interrupted write's leftover …
    assert await store.sweep(older_than=3600) == 0  # … is young, so kept (it may be a live write)
    assert await store.sweep(older_than=0) == 1
    assert temp_files(root) == []
    # A write that finished before the kill is whole.
    done = start_writer(str(root), "73/3697692.tzb", str(3 << 20))
    out, _ = done.communicate(timeout=60)
    data = b"".join([c async for c in store.open("73/3697692.tzb")])
    assert len(data) == 3 << 20 and out.split()[-2] == __import__("hashlib").sha256(data).hexdigest()
    await store.close()


async def test_s3_writer_killed_midway_leaves_no_document(s3_endpoint: str) -> None:
    bucket = make_bucket(s3_endpoint)
    proc = start_writer(
        f"s3://{bucket}/raw", "73/3697692.tzb", str(64 << 20), "--slow", "0.02", "--endpoint", s3_endpoint
    )
    kill_after_progress(proc, 20)  # past the first 8 MiB part: a multipart upload is open
    store = S3Storage(bucket, "raw", endpoint_url=s3_endpoint)
    assert await store.stat("73/3697692.tzb") is None
    assert [i async for i in store.list()] == []
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads")
    assert await store.sweep(older_than=0) >= 1
    assert not s3.list_multipart_uploads(Bucket=bucket).get("Uploads")
    await store.close()


@pytest.mark.timeout(300)
@pytest.mark.parametrize("backend", ["local", "s3"])
def test_storing_a_large_document_keeps_memory_flat(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    # 1 GiB to disk; 256 MiB to S3 (32 staged parts and their server-side copy: four times the
    # growth bound, at a quarter of the time through moto).
    if backend == "local":
        args = [str(tmp_path / "store"), "0/1.bin", str(1 << 30)]
    else:
        endpoint = request.getfixturevalue("s3_endpoint")
        args = [f"s3://{make_bucket(endpoint)}/raw", "0/1.bin", str(256 << 20), "--endpoint", endpoint]
    result = subprocess.run(
        [sys.executable, WRITER, *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=os.environ | {"PYTHONPATH": str(REPO)},
        timeout=280,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    _, sha, growth = result.stdout.strip().splitlines()[-1].split()
    assert int(growth) < 64 << 20, f"peak RSS grew by {int(growth) >> 20} MiB: {result.stderr}"


@pytest.fixture
def silent_endpoint() -> Iterator[str]:
    """Accepts connections and never answers a byte."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join(2)
    for conn in held:
        conn.close()
    server.close()


async def ticker(gaps: list[float], stop: asyncio.Event) -> None:
    last = time.monotonic()
    while not stop.is_set():
        await asyncio.sleep(0.01)
        now = time.monotonic()
        gaps.append(now - last)
        last = now


@pytest.mark.parametrize("backend", ["s3", "gate"])
async def test_a_silent_endpoint_fails_within_the_deadline(silent_endpoint: str, backend: str) -> None:
    # Without the deadline each call would wait out the 120 s socket read timeout
    # (three times, with botocore's retries). The loop must keep running meanwhile:
    # the ticker counts its turns during each call, so a call that ran on the loop's
    # thread would leave it at zero or one. Counting turns instead of timing gaps
    # keeps the test about behaviour on a busy machine.
    deadline = Deadline(timeout=1.0)
    store = (
        S3Storage(
            "bucket",
            "raw",
            endpoint_url=silent_endpoint,
            access_key="k",
            secret_key="s",
            region="us-east-1",
            deadline=deadline,
        )
        if backend == "s3"
        else GateStorage(silent_endpoint, "key", deadline)
    )
    gaps: list[float] = []
    stop = asyncio.Event()
    tick = asyncio.create_task(ticker(gaps, stop))
    for call in (
        lambda: store.stat("0/1.tzb"),
        lambda: store.put("0/1.tzb", from_bytes(b"x" * 1000), PutOptions(doc_id="1", ext=".tzb")),
    ):
        turns = len(gaps)
        started = time.monotonic()
        with pytest.raises((StorageTimeout, StorageUnavailable)) as caught:
            await call()
        elapsed = time.monotonic() - started
        assert elapsed < 60.0, f"took {elapsed:.1f} s against a 1 s deadline"
        assert "1 s" in caught.value.message or "in time" in caught.value.message
        assert len(gaps) - turns >= 5, f"the loop turned {len(gaps) - turns} times while the call waited"
    stop.set()
    await tick
    await store.close()
