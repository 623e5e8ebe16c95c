"""One contract, every backend: memory, local disk, S3 over HTTP (moto), through the gate, a mirror."""

from __future__ import annotations

import gzip
import hashlib
import random
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from conftest import ADMIN_KEY, gate_settings, make_b2_bucket, make_bucket, start_gate
from storage import PutOptions, Storage
from storage.base import from_bytes
from storage.errors import AlreadyStored, ChecksumMismatch, KeyRefused, ObjectMissing, StorageError, TooLarge
from storage.gate import GateStorage
from storage.keys import document_key
from storage.local import TMP_PREFIX, LocalStorage
from storage.memory import MemoryStorage
from storage.mirror import MirrorStorage
from storage.s3 import S3Storage

BACKENDS = ["memory", "local", "s3", "b2", "gate", "mirror"]


def payload(size: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(size)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def read_all(store: Storage, key: str) -> bytes:
    return b"".join([chunk async for chunk in store.open(key)])


def opts(doc_id: int | str, ext: str = ".tzb", **kwargs: object) -> PutOptions:
    return PutOptions(doc_id=str(doc_id), ext=ext, **kwargs)  # type: ignore[arg-type]


async def open_backend(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Storage]:
    factories: dict[str, Callable[[], Storage]] = {
        "memory": MemoryStorage,
        "local": lambda: LocalStorage(tmp_path / "local"),
        "s3": lambda: S3Storage(
            make_bucket(request.getfixturevalue("s3_endpoint")),
            "raw",
            endpoint_url=request.getfixturevalue("s3_endpoint"),
            part_size=5 << 20,
        ),
        # Backblaze B2's dialect (tests/b2_dialect.py): no conditional writes, every bucket versioned.
        "b2": lambda: S3Storage(
            make_b2_bucket(request.getfixturevalue("s3_endpoint")),
            "raw",
            endpoint_url=request.getfixturevalue("b2_url"),
            scheme="b2",
            part_size=5 << 20,
        ),
        "mirror": lambda: MirrorStorage(
            LocalStorage(tmp_path / "primary"),
            S3Storage(
                make_bucket(request.getfixturevalue("s3_endpoint")),
                "copy",
                endpoint_url=request.getfixturevalue("s3_endpoint"),
                part_size=5 << 20,
            ),
        ),
    }
    if kind != "gate":
        backend = factories[kind]()
        yield backend
        await backend.close()
        return
    settings = gate_settings(storage_url=str(tmp_path / "gate-store"))
    async for gate in start_gate(request.getfixturevalue("db_dsn"), settings):
        yield GateStorage("http://gate", ADMIN_KEY, http=gate.http)


@pytest.fixture(params=BACKENDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Storage]:
    async for backend in open_backend(request.param, request, tmp_path):
        yield backend


@pytest.fixture(params=[b for b in BACKENDS if b != "gate"])
async def keyed_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Storage]:
    """Backends addressed by key (the gate derives keys from doc_id; its endpoints have their own tests)."""
    async for backend in open_backend(request.param, request, tmp_path):
        yield backend


async def test_put_get_stat_list_delete(store: Storage) -> None:
    data = payload(300_000)
    key = document_key(3697692, ".tzb")
    assert key == "73/3697692.tzb"
    stored = await store.put(key, from_bytes(data, 65_536), opts(3697692, content_type="text/plain"))
    assert (stored.storage_key, stored.sha256, stored.size) == (key, sha(data), len(data))
    assert stored.storage_url.endswith(key) and TMP_PREFIX not in stored.storage_url
    assert await read_all(store, key) == data
    info = await store.stat(key)
    assert info is not None and info.size == len(data) and info.sha256 in {sha(data), None}
    other = document_key(3697693, ".tzb")
    await store.put(other, from_bytes(b"second"), opts(3697693))
    listed = {i.key: i.size async for i in store.list()}
    assert listed == {key: len(data), other: 6}
    assert {i.key async for i in store.list("73/3697692")} == {key}
    await store.delete(key)
    assert await store.stat(key) is None
    with pytest.raises(ObjectMissing):
        await read_all(store, key)
    await store.delete(key)  # deleting twice is fine


async def test_absent_never_names_a_key_that_holds_something(store: Storage) -> None:
    """What a client skips its look before a fetch for: a key `absent` names holds nothing; one
    it leaves out may hold something or not (a store that cannot tell cheaply names none)."""
    held, empty = document_key(11, ".tzb"), document_key(12, ".tzb")
    await store.put(held, from_bytes(b"held"), opts(11))
    named = await store.absent([held, empty, "../outside"])
    assert held not in named and named <= {empty}
    if isinstance(store, (LocalStorage, MirrorStorage)):  # one look for the batch, on disk
        assert named == {empty}
    if isinstance(store, LocalStorage):  # something that is no document is not called absent
        odd = document_key(13, ".tzb")
        (store.root / odd).mkdir(parents=True)
        assert await store.absent([odd]) == set()


async def test_large_document_round_trips(store: Storage) -> None:
    data = payload(12 << 20, seed=2)  # over the S3 part size: staged multipart + copy
    key = document_key(150_001, ".bin")
    stored = await store.put(key, from_bytes(data), opts(150_001, ".bin"))
    assert stored.storage_key == "3/150001.bin"
    assert stored.sha256 == sha(data) and stored.size == len(data)
    assert await read_all(store, key) == data
    assert [i.key async for i in store.list()] == [key]  # no staging or temp objects


async def test_written_once(store: Storage) -> None:
    key = document_key(7, ".tzb")
    await store.put(key, from_bytes(b"first holder"), opts(7))
    with pytest.raises(AlreadyStored):
        await store.put(key, from_bytes(b"stale writer"), opts(7))
    assert await read_all(store, key) == b"first holder"
    if not isinstance(store, GateStorage):  # the gate never overwrites
        await store.put(key, from_bytes(b"repaired"), opts(7, overwrite=True))
        assert await read_all(store, key) == b"repaired"


async def test_compressed_keeps_the_original_sha256(store: Storage) -> None:
    data = b"<html>" + b"registry document " * 5000 + b"</html>"
    key = document_key("case-11-2024", ".html", compressed=True)
    assert key.endswith("/case-11-2024.html.gz") and key.startswith("h")
    stored = await store.put(key, from_bytes(data), opts("case-11-2024", ".html", compress=True))
    assert stored.compressed and stored.sha256 == sha(data) and stored.size == len(data)
    raw = await read_all(store, key)
    assert len(raw) < len(data) // 10
    assert gzip.decompress(raw) == data


async def test_bad_checksum_or_size_stores_nothing(store: Storage) -> None:
    key = document_key(8, ".tzb")
    with pytest.raises(ChecksumMismatch):
        await store.put(key, from_bytes(b"abc"), opts(8, expected_sha256="0" * 64))
    with pytest.raises(TooLarge):
        await store.put(key, from_bytes(payload(200_000)), opts(8, max_size=100_000))
    assert await store.stat(key) is None
    squeezed = document_key(8, ".tzb", compressed=True)
    with pytest.raises(TooLarge):  # the limit counts the document's bytes, not the compressed ones
        await store.put(
            squeezed, from_bytes(b"a" * 200_000), opts(8, ".tzb", compress=True, max_size=100_000)
        )
    assert await store.stat(squeezed) is None
    assert [i async for i in store.list()] == []


@pytest.mark.parametrize("key", ["../etc/passwd", "/abs/1.tzb", "73/../../x", "a//b", "", "73/.", "a b"])
async def test_unsafe_keys_are_refused(keyed_store: Storage, key: str) -> None:
    with pytest.raises(KeyRefused):
        await keyed_store.put(key, from_bytes(b"x"), opts(1))
    with pytest.raises(KeyRefused):
        await keyed_store.stat(key)


async def test_a_store_that_takes_writes_passes_its_probe_and_keeps_no_trace(store: Storage) -> None:
    await store.probe()
    assert [o async for o in store.list()] == []


@pytest.mark.parametrize("where", ["/proc/docgate-store", "/dev/null/store"])
async def test_a_store_that_cannot_be_written_fails_its_probe(where: str) -> None:
    """As root every folder is writable, so the unwritable places are ones no one can write: a
    folder under /proc, a folder under a device file."""
    store = LocalStorage(where)
    try:
        with pytest.raises(StorageError) as refused:
            await store.probe()
    finally:
        await store.close()
    assert where in refused.value.message or "cannot" in refused.value.message


async def test_a_missing_bucket_fails_its_probe(s3_endpoint: str) -> None:
    store = S3Storage("no-such-bucket-anywhere", "raw", endpoint_url=s3_endpoint)
    try:
        with pytest.raises(StorageError):
            await store.probe()
    finally:
        await store.close()
