"""Which HTTP client should fetch documents? httpx against aiohttp at rising concurrency.

Fetches N small documents from a local `docgate origin` with each client at
concurrency 1, 8, 64 and 256 and prints documents/s; the figures decide the
client's document transport. Run: .venv/bin/python benchmarks/transport.py
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import httpx

N = 2000
LEVELS = [1, 8, 64, 256]


async def with_httpx(url: str, concurrency: int) -> float:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:
        return await run(lambda i: _httpx_get(client, f"{url}/doc/{i}.bin"), concurrency)


async def _httpx_get(client: httpx.AsyncClient, url: str) -> int:
    r = await client.get(url)
    return len(r.content)


async def with_aiohttp(url: str, concurrency: int) -> float:
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        return await run(lambda i: _aiohttp_get(session, f"{url}/doc/{i}.bin"), concurrency)


async def _aiohttp_get(session: aiohttp.ClientSession, url: str) -> int:
    async with session.get(url) as r:
        return len(await r.read())


async def run(fetch, concurrency: int) -> float:  # type: ignore[no-untyped-def]
    ids = iter(range(N))

    async def worker() -> None:
        for i in ids:
            await fetch(i)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return N / (time.perf_counter() - started)


def main() -> None:
    port = 18_000 + (int(time.time()) % 1000)
    origin = subprocess.Popen(
        [sys.executable, "-m", "docgate.cli", "origin", "--port", str(port)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert origin.stdout is not None
    url = json.loads(origin.stdout.readline())["origin"]
    results = {}
    try:
        for level in LEVELS:
            results[level] = {
                "httpx": asyncio.run(with_httpx(url, level)),
                "aiohttp": asyncio.run(with_aiohttp(url, level)),
            }
    finally:
        origin.terminate()
        origin.wait(10)
    print(f"{'concurrency':>12} {'httpx docs/s':>14} {'aiohttp docs/s':>15} {'ratio':>7}")
    for level, r in results.items():
        print(f"{level:>12} {r['httpx']:>14.0f} {r['aiohttp']:>15.0f} {r['aiohttp'] / r['httpx']:>7.2f}")
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "transport.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
