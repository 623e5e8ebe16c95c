"""Acceptance 9: the client never stalls its event loop while it fetches and stores documents."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from cluster import Origin

from client.config import ClientConfig
from client.download import Fetcher
from client.gate import GateAPI
from client.guard import Policy
from client.progress import Stats
from client.sources import SourceContext, load_sources
from client.worker import Worker
from conftest import Gate
from storage.local import LocalStorage

pytestmark = pytest.mark.timeout(180)


async def watchdog(lags: list[float], stop: asyncio.Event) -> None:
    while not stop.is_set():
        before = time.monotonic()
        await asyncio.sleep(0.005)
        lags.append(time.monotonic() - before - 0.005)


@pytest.mark.parametrize("compress", ["none", "gzip"])
async def test_storing_500_documents_never_stalls_the_loop(gate: Gate, tmp_path: Path, compress: str) -> None:
    origin = Origin(tmp_path, "--size", "65536")
    key = (await gate.register("inproc"))["X-API-Key"]
    await gate.http.post("/api/v1/jobs", headers=gate.admin, json={
        "source": "id_range", "chunk_size": 50,
        "params": {"url_template": origin.url + "/doc/{id}.bin", "start_id": 1, "count": 500, "ext": ".bin"}})
    config = ClientConfig(api_url="http://gate", api_key=key, concurrency=32, max_tasks=4,
                          exit_when_idle=True, compress=compress, allow_network=("127.0.0.0/8",),
                          poll_interval=0.2, heartbeat_interval=1)
    api = GateAPI("http://gate", key, config.session_id, transport=gate.transport)
    store = LocalStorage(tmp_path / "store")
    fetcher = Fetcher(Policy(config.allow_network), concurrency=32, per_host_connections=32,
                      per_host_rate=None, retries=2, timeout=30, max_size=1 << 20)
    stats = Stats()
    worker = Worker(config, api, store, fetcher, load_sources(SourceContext(fetcher)), stats)
    lags: list[float] = []
    stop = asyncio.Event()
    dog = asyncio.create_task(watchdog(lags, stop))
    try:
        await worker.run()
    finally:
        stop.set()
        await dog
        await fetcher.close()
        await api.close()
        await store.close()
        origin.stop()
    assert stats.stored == 500 and stats.failed == 0
    assert len(lags) > 100
    worst = max(lags)
    assert worst < 0.1, f"event loop stalled for {worst * 1000:.0f} ms"
