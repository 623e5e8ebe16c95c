"""Acceptance 6: the client refuses disguised internal addresses without connecting to them."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import AsyncIterator, Iterator

import pytest
from aiohttp import web
from ssrf_cases import CASES

from client.download import Body, DocumentFailed, Fetcher
from client.guard import Policy


class Trap:
    """Listens on loopback (v4 and v6) and counts every connection it is offered."""

    def __init__(self) -> None:
        self.accepted = 0
        self.sockets = [socket.create_server(("127.0.0.1", 0))]
        self.port = self.sockets[0].getsockname()[1]
        with contextlib.suppress(OSError):  # no IPv6 loopback here
            self.sockets.append(socket.create_server(("::1", self.port), family=socket.AF_INET6))
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._accept, args=(s,), daemon=True) for s in self.sockets]
        for t in self.threads:
            t.start()

    def _accept(self, server: socket.socket) -> None:
        server.settimeout(0.1)
        while not self.stop.is_set():
            try:
                conn, _ = server.accept()
            except (TimeoutError, OSError):
                continue
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(2)
        for s in self.sockets:
            s.close()


@pytest.fixture
def trap() -> Iterator[Trap]:
    t = Trap()
    yield t
    t.close()


def fetcher(*allowed: str) -> Fetcher:
    return Fetcher(
        Policy(allowed),
        concurrency=4,
        per_host_connections=4,
        per_host_rate=None,
        retries=0,
        timeout=5,
        max_size=1 << 20,
    )


async def read(body: Body) -> bytes:
    return b"".join([c async for c in body.chunks])


def test_catalogue_is_large_enough() -> None:
    assert len(CASES) >= 15


@pytest.mark.parametrize(("name", "url"), CASES, ids=[c[0] for c in CASES])
async def test_refused_without_a_connection(trap: Trap, name: str, url: str) -> None:
    f = fetcher()
    try:
        with pytest.raises(DocumentFailed) as caught:
            await f.fetch(url.format(port=trap.port), read)
    finally:
        await f.close()
    assert caught.value.permanent
    assert "refused" in caught.value.reason or "only http" in caught.value.reason
    await asyncio.sleep(0.15)
    assert trap.accepted == 0


@pytest.fixture
async def redirector(trap: Trap) -> AsyncIterator[str]:
    """An allowed origin on 127.0.0.2 that redirects into the trap, and serves /ok."""

    async def bounce(request: web.Request) -> web.Response:
        raise web.HTTPFound(f"http://127.0.0.1:{trap.port}/internal")

    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="public document")

    app = web.Application()
    app.router.add_get("/bounce", bounce)
    app.router.add_get("/ok", ok)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.2", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.2:{port}"
    await runner.cleanup()


async def test_a_redirect_into_the_network_is_refused(trap: Trap, redirector: str) -> None:
    f = fetcher("127.0.0.2/32")
    try:
        assert await f.fetch(redirector + "/ok", read) == b"public document"
        with pytest.raises(DocumentFailed) as caught:
            await f.fetch(redirector + "/bounce", read)
    finally:
        await f.close()
    assert "refused" in caught.value.reason and caught.value.permanent
    assert trap.accepted == 0


async def test_allow_network_lets_the_local_origin_through(redirector: str) -> None:
    refused, allowed = fetcher(), fetcher("127.0.0.0/8")
    try:
        with pytest.raises(DocumentFailed):
            await refused.fetch(redirector + "/ok", read)
        assert await allowed.fetch(redirector + "/ok", read) == b"public document"
    finally:
        await refused.close()
        await allowed.close()


async def test_allow_network_with_a_port_opens_only_that_port(trap: Trap, redirector: str) -> None:
    """127.0.0.0/8:PORT opens the local origin without opening every loopback service."""
    port = int(redirector.rsplit(":", 1)[1])
    scoped = fetcher(f"127.0.0.0/8:{port}")
    ranged = fetcher(f"127.0.0.2/32:{port}-{port}")
    try:
        assert await scoped.fetch(redirector + "/ok", read) == b"public document"
        assert await ranged.fetch(redirector + "/ok", read) == b"public document"
        with pytest.raises(DocumentFailed) as caught:
            await scoped.fetch(f"http://127.0.0.1:{trap.port}/x", read)  # another port of the range
        with pytest.raises(DocumentFailed):
            await scoped.fetch(redirector + "/bounce", read)  # a redirect to another port
    finally:
        await scoped.close()
        await ranged.close()
    assert caught.value.permanent and "refused" in caught.value.reason
    await asyncio.sleep(0.15)
    assert trap.accepted == 0


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        ("127.0.0.0/8", True),
        ("127.0.0.1/32:8000", True),
        ("10.0.0.0/8:8000-8100", True),
        ("[::1/128]:8000", True),
        ("::1/128", True),
        ("127.0.0.0/8:0", False),
        ("127.0.0.0/8:9-1", False),
        ("127.0.0.0/8:x", False),
        ("127.0.0.0/33", False),
        ("[::1/128]8000", False),
    ],
)
def test_allowance_syntax(text: str, ok: bool) -> None:
    from client.guard import parse_allowance

    if ok:
        parse_allowance(text)
    else:
        with pytest.raises(ValueError):
            parse_allowance(text)
