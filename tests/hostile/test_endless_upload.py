"""An endless upload through the gate meets MAX_UPLOAD_BYTES, and the gate's memory stays flat.

A client streams a body that never ends (chunked, no Content-Length) — plain, gzip whose inflated
size never ends, and one gzip member followed by endless bytes. The gate (a real process) must
answer 413 (or 400 for the bytes after a gzip stream) once the limit is passed and store nothing;
its resident memory, sampled the whole time, must stay within a bound far below what was sent.
"""

from __future__ import annotations

import gzip
import os
import select
import socket
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from cluster import ADMIN, Cluster

LIMIT = 32 << 20  # MAX_UPLOAD_BYTES for this gate
SENT_AT_MOST = 1 << 30  # we stop after 1 GiB if the gate has not answered
CHUNK = 1 << 20


def plain() -> Iterator[bytes]:
    block = os.urandom(CHUNK)
    while True:
        yield block


def endless_gzip() -> Iterator[bytes]:
    packer = zlib.compressobj(1, zlib.DEFLATED, 31)
    block = os.urandom(CHUNK)
    while True:
        out = packer.compress(block)
        if out:
            yield out


def member_then_bytes() -> Iterator[bytes]:
    yield gzip.compress(b"a small document")
    yield from plain()


def upload(port: int, body: Iterator[bytes], gzipped: bool) -> tuple[int, int]:
    """Stream `body` chunked until the gate answers; (status, bytes sent)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    head = (
        f"PUT /api/v1/documents/1/raw?ext=.bin HTTP/1.1\r\nHost: gate\r\nX-API-Key: {ADMIN}\r\n"
        f"Transfer-Encoding: chunked\r\n{'Content-Encoding: gzip' + chr(13) + chr(10) if gzipped else ''}\r\n"
    )
    sock.sendall(head.encode())
    sent = 0
    try:
        for chunk in body:
            if select.select([sock], [], [], 0)[0] or sent > SENT_AT_MOST:
                break
            try:
                sock.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += len(chunk)
        reply = sock.recv(4096).decode("latin-1")
        return int(reply.split(" ", 2)[1]), sent
    finally:
        sock.close()


@pytest.mark.parametrize(
    ("name", "body", "gzipped", "status"),
    [
        ("plain", plain, False, 413),
        ("endless gzip", endless_gzip, True, 413),
        ("member then bytes", member_then_bytes, True, 400),
    ],
)
def test_an_endless_upload_is_cut_off_with_flat_memory(
    tmp_path: Path, db_dsn: str, name: str, body: object, gzipped: bool, status: int
) -> None:
    cluster = Cluster(tmp_path, db_dsn, MAX_UPLOAD_BYTES=str(LIMIT))
    try:
        gate = psutil.Process(cluster.gate.proc.pid)
        before = gate.memory_info().rss
        peak = [before]
        done = threading.Event()

        def sample() -> None:
            while not done.wait(0.05):
                peak[0] = max(peak[0], gate.memory_info().rss)

        sampler = threading.Thread(target=sample)
        sampler.start()
        try:
            got, sent = upload(cluster.gate.port, body(), gzipped)  # type: ignore[operator]
        finally:
            done.set()
            sampler.join()
        assert got == status, name
        assert sent < SENT_AT_MOST  # the gate answered: it did not read on forever
        growth = peak[0] - before
        rss = f"gate RSS {before >> 20} → peak {peak[0] >> 20} MiB (+{growth >> 20})"
        print(f"\n{name}: sent {sent >> 20} MiB, {rss}")
        assert growth < 64 << 20, f"gate grew {growth >> 20} MiB"
        assert not list((tmp_path / "store").rglob("1.bin*"))
    finally:
        cluster.stop()
