"""Origins that lie about their bodies, as rows of data, each beside a good control.

A body must be stored only when it is whole: exactly the bytes the origin's encoding says the
document is. What real servers do that this guards against: a gzip response cut short under
honest framing (a proxy or an origin that dies mid-compression; aiohttp 3.14 hands such a body
over as a shorter document without an error), trailing bytes after the gzip stream, a deflate
stream cut short, a body shorter than its Content-Length, several gzip members (RFC 1952 §2.2:
legal, one document), an encoding we never asked for, and a gzip bomb.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import web

from client.download import READ_CHUNK, Body, DocumentFailed, Fetcher
from client.guard import Policy
from storage.base import PutOptions
from storage.errors import TooLarge
from storage.local import LocalStorage

DATA = os.urandom(300_000)
GZ = gzip.compress(DATA)
DEFLATE = zlib.compress(DATA)
LIMIT = 4 << 20


@dataclass(frozen=True)
class Row:
    name: str
    body: bytes
    headers: dict[str, str]
    stored: bytes | None  # the document stored, or None: nothing may be stored
    permanent: bool = False  # for a refused one: is trying again pointless?


def _gzip_members(*parts: bytes) -> bytes:
    return b"".join(gzip.compress(p) for p in parts)


GZIP = {"Content-Encoding": "gzip"}
ROWS = [
    Row("control: identity", DATA, {}, DATA),
    Row("control: gzip whole", GZ, GZIP, DATA),
    Row("control: deflate whole", DEFLATE, {"Content-Encoding": "deflate"}, DATA),
    Row("control: x-gzip", GZ, {"Content-Encoding": "x-gzip"}, DATA),
    Row("gzip cut in half, honest Content-Length", GZ[: len(GZ) // 2], GZIP, None),
    Row("gzip missing only its 8-byte trailer", GZ[:-8], GZIP, None),
    Row("gzip missing one trailer byte", GZ[:-1], GZIP, None),
    Row("deflate cut in half", DEFLATE[: len(DEFLATE) // 2], {"Content-Encoding": "deflate"}, None),
    Row("gzip then garbage", GZ + b"<html>oops</html>", GZIP, None),
    Row("two gzip members are one document", _gzip_members(DATA[:1000], DATA[1000:]), GZIP, DATA),
    Row("gzip header only", GZ[:10], GZIP, None),
    Row("not gzip at all under gzip", DATA[:5000], GZIP, None),
    Row("an encoding we never asked for", DATA, {"Content-Encoding": "br"}, None, permanent=True),
]


@pytest.fixture
async def origin() -> AsyncIterator[str]:
    async def serve(request: web.Request) -> web.StreamResponse:
        row = ROWS[int(request.match_info["n"])]
        return web.Response(body=row.body, headers=row.headers | {"Content-Type": "application/octet-stream"})

    async def short(request: web.Request) -> web.StreamResponse:
        reply = web.StreamResponse(headers={"Content-Length": str(len(DATA))})
        await reply.prepare(request)
        await reply.write(DATA[:1000])
        request.transport.close()  # type: ignore[union-attr]
        return reply

    async def bomb(request: web.Request) -> web.StreamResponse:
        packer = zlib.compressobj(9, zlib.DEFLATED, 31)
        body = b"".join(packer.compress(b"\0" * (1 << 20)) for _ in range(64)) + packer.flush()
        return web.Response(body=body, headers=GZIP)  # 64 MiB of zeros in ~64 KiB

    app = web.Application()
    app.router.add_get("/row/{n}", serve)
    app.router.add_get("/short", short)
    app.router.add_get("/bomb", bomb)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
    await runner.cleanup()


@pytest.fixture
async def fetch_into(tmp_path: Path) -> AsyncIterator[Callable[[str, str], Awaitable[object]]]:
    store = LocalStorage(tmp_path / "store")
    fetcher = Fetcher(
        Policy(["127.0.0.0/8"]),
        concurrency=4,
        per_host_connections=4,
        per_host_rate=None,
        retries=1,
        timeout=20,
        max_size=LIMIT,
    )
    largest = [0]

    async def fetch(url: str, key: str) -> object:
        async def sink(body: Body) -> object:
            async def watched() -> AsyncIterator[bytes]:
                async for chunk in body.chunks:
                    largest[0] = max(largest[0], len(chunk))
                    yield chunk

            return await store.put(key, watched(), PutOptions(max_size=LIMIT))

        return await fetcher.fetch(url, sink)

    fetch.store = store  # type: ignore[attr-defined]
    fetch.largest = largest  # type: ignore[attr-defined]
    yield fetch
    await fetcher.close()
    await store.close()


@pytest.mark.parametrize("n", range(len(ROWS)), ids=[r.name for r in ROWS])
async def test_only_a_whole_body_is_stored(origin: str, fetch_into: object, n: int) -> None:
    row, key = ROWS[n], f"0/{n}.bin"
    fetch = fetch_into
    store: LocalStorage = fetch.store  # type: ignore[attr-defined]
    if row.stored is None:
        with pytest.raises(DocumentFailed) as failed:
            await fetch(f"{origin}/row/{n}", key)  # type: ignore[operator]
        assert failed.value.permanent is row.permanent, failed.value.reason
        assert await store.stat(key) is None
        return
    stored = await fetch(f"{origin}/row/{n}", key)  # type: ignore[operator]
    assert stored.sha256 == hashlib.sha256(row.stored).hexdigest()  # type: ignore[attr-defined]
    assert b"".join([c async for c in store.open(key)]) == row.stored


async def test_a_body_shorter_than_its_content_length_is_not_stored(origin: str, fetch_into: object) -> None:
    with pytest.raises(DocumentFailed) as failed:
        await fetch_into(f"{origin}/short", "0/short.bin")  # type: ignore[operator]
    assert not failed.value.permanent
    assert await fetch_into.store.stat("0/short.bin") is None  # type: ignore[attr-defined]


async def test_a_gzip_bomb_meets_the_size_limit_in_small_pieces(origin: str, fetch_into: object) -> None:
    with pytest.raises(TooLarge):
        await fetch_into(f"{origin}/bomb", "0/bomb.bin")  # type: ignore[operator]
    assert 0 < fetch_into.largest[0] <= READ_CHUNK  # type: ignore[attr-defined]
    assert await fetch_into.store.stat("0/bomb.bin") is None  # type: ignore[attr-defined]
