"""A real worker in the test's own process, against an in-process gate: what the loop,
outage, odd-document and planted-object tests share."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from client.config import ClientConfig
from client.download import Fetcher
from client.gate import GateAPI
from client.guard import Policy
from client.progress import Stats
from client.sources import SourceContext, load_sources
from client.worker import Worker
from conftest import Gate
from storage import Storage


async def id_range_job(gate: Gate, url_template: str, count: int, **fields: Any) -> None:
    """A job of `count` ids from 1 under `url_template` (its ext is the template's)."""
    ext = "." + url_template.rsplit(".", 1)[1]
    params = {"url_template": url_template, "start_id": 1, "count": count, "ext": ext}
    r = await gate.http.post(
        "/api/v1/jobs", headers=gate.admin, json={"source": "id_range", "params": params} | fields
    )
    assert r.status_code == 201, r.text


@asynccontextmanager
async def in_process_worker(
    gate: Gate, key: str, store: Storage, *, retries: int = 2, timeout: float = 30, **settings: Any
) -> AsyncIterator[Worker]:
    """A worker (exits when idle, may fetch from 127.0.0.0/8) whose fetcher, gate client and store
    are closed when the block ends; `settings` are ClientConfig fields."""
    config = ClientConfig(  # type: ignore[call-arg]
        **{
            "api_url": "http://gate",
            "api_key": key,
            "exit_when_idle": True,
            "allow_network": ("127.0.0.0/8",),
            "poll_interval": 0.2,
            "heartbeat_interval": 1,
            "_env_file": None,
        }
        | settings
    )
    api = GateAPI("http://gate", key, config.session_id, transport=gate.transport)
    fetcher = Fetcher(
        Policy(config.allow_network),
        concurrency=config.concurrency,
        per_host_connections=config.concurrency,
        per_host_rate=None,
        retries=retries,
        timeout=timeout,
        max_size=1 << 20,
        grants=api.grants,
    )
    try:
        yield Worker(config, api, store, fetcher, load_sources(SourceContext(fetcher)), Stats())
    finally:
        await fetcher.close()
        await api.close()
        await store.close()


@asynccontextmanager
async def document_origin(body_of: Callable[[int], bytes]) -> AsyncIterator[tuple[str, Counter[int]]]:
    """An origin serving `body_of(id)` at /doc/<id>.<ext> (text/plain), one answer a connection:
    its URL, and how often each id was served."""
    served: Counter[int] = Counter()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await reader.readuntil(b"\r\n\r\n")
        doc_id = int(request.split(b" ")[1].rsplit(b"/", 1)[1].split(b".")[0])
        served[doc_id] += 1
        body = body_of(doc_id)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n" % len(body))
        writer.write(b"Connection: close\r\n\r\n" + body)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}", served
    finally:
        server.close()
        await server.wait_closed()
