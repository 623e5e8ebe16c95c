"""A real worker in the test's own process, against an in-process gate: what the loop,
outage, odd-document and planted-object tests share."""

from __future__ import annotations

from collections.abc import AsyncIterator
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
