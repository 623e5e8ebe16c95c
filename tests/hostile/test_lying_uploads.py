"""Uploads through the gate that lie about their gzip body, each beside a good control.

A gzip upload is one gzip member. Bytes after its end were stored as sent (UPLOAD_GZIP=keep)
without being hashed or counted against MAX_UPLOAD_BYTES, so a few bytes of gzip could carry any
amount of data into the store under a small recorded size; under decompress they were dropped,
and the record named part of what was sent. Both are refused now (400 corrupt_gzip), storing
nothing, under either setting.
"""

from __future__ import annotations

import gzip
import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from conftest import Gate, gate_settings, start_gate

DATA = os.urandom(50_000)
ONE = gzip.compress(DATA)
CASES = [
    ("control: one member", ONE, 201),
    ("trailing garbage", ONE + b"GARBAGE" * 10, 400),
    ("a second member", ONE + gzip.compress(b"more"), 400),
    ("a large tail past MAX_UPLOAD_BYTES", ONE + os.urandom(300_000), 400),
    ("cut short", ONE[:-4], 400),
]


@pytest.fixture(params=["keep", "decompress"])
async def upload_gate(request: pytest.FixtureRequest, db_dsn: str, tmp_path: Path) -> AsyncIterator[Gate]:
    settings = gate_settings(
        storage_url=str(tmp_path / "store"), upload_gzip=request.param, max_upload_bytes=200_000
    )
    async for gate in start_gate(db_dsn, settings):
        yield gate


@pytest.mark.parametrize(("name", "body", "status"), CASES, ids=[c[0] for c in CASES])
async def test_a_gzip_upload_is_one_whole_member(
    upload_gate: Gate, name: str, body: bytes, status: int
) -> None:
    gate = upload_gate
    r = await gate.http.put(
        "/api/v1/documents/77/raw?ext=.bin",
        headers=gate.admin | {"Content-Encoding": "gzip"},
        content=body,
    )
    assert r.status_code == status, r.text
    key = "0/77.bin.gz" if gate.settings.upload_gzip == "keep" else "0/77.bin"
    stat = await gate.http.head(f"/api/v1/storage/objects/{key}", headers=gate.admin)
    if status == 201:
        assert r.json()["sha256"] == hashlib.sha256(DATA).hexdigest() and r.json()["size"] == len(DATA)
        assert stat.status_code == 200
    else:
        assert r.json()["code"] == "corrupt_gzip", r.text
        assert stat.status_code == 404
