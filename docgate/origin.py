"""`docgate origin`: a simulated public registry for the demo, the tests and the benchmarks.

    GET /doc/{id}{ext}          a document: deterministic bytes for the id (see content_for)
    GET /search?page=N&…        a listing page of document links (HTML; ?format=json for JSON)
    GET /_stats                 requests seen so far (per path kind, and per second)

Faults, all optional and seeded so runs repeat: --latency, --error-rate (503),
--rate-429 (429 with Retry-After), --missing (ids answered 404).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import random
import re
import signal
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web

if TYPE_CHECKING:
    from docgate.registry import Registry

DOC = re.compile(r"^/doc/(?P<id>[A-Za-z0-9_-]+)(?P<ext>(\.[A-Za-z0-9]{1,16}){0,2})$")


def content_for(doc_id: str, size: int) -> bytes:
    """The bytes the origin serves for doc_id: same id and size, same bytes, everywhere."""
    seed = int.from_bytes(hashlib.sha256(doc_id.encode()).digest()[:8], "big")
    return random.Random(seed).randbytes(size)


def size_for(doc_id: str, low: int, high: int) -> int:
    if low >= high:
        return low
    seed = int.from_bytes(hashlib.sha256(b"size" + doc_id.encode()).digest()[:8], "big")
    return low + seed % (high - low + 1)


def listing_ids(query: str, page: int, per_page: int, total: int) -> list[str]:
    """Document ids on one page of a search: `total` results in all, `per_page` a page."""
    base = int.from_bytes(hashlib.sha256(query.encode()).digest()[:3], "big") * 1000
    first = (page - 1) * per_page
    return [str(base + i) for i in range(first, min(first + per_page, total))]


@dataclass
class OriginConfig:
    size_min: int = 10_240
    size_max: int = 10_240
    latency: float = 0.0
    error_rate: float = 0.0
    rate_429: float = 0.0
    retry_after: float = 1.0
    missing: frozenset[str] = frozenset()
    per_page: int = 20
    results: int = 200
    seed: int = 0


@dataclass
class Stats:
    by_kind: Counter[str] = field(default_factory=Counter)
    by_second: Counter[int] = field(default_factory=Counter)
    by_doc: Counter[str] = field(default_factory=Counter)
    answered_429: dict[str, float] = field(default_factory=dict)
    retries_after_429: list[float] = field(default_factory=list)


class Origin:
    def __init__(self, config: OriginConfig) -> None:
        self.config = config
        self.stats = Stats()
        self.rng = random.Random(config.seed)
        self.cache: dict[str, bytes] = {}

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/search", self.search)
        app.router.add_get("/_stats", self.report)
        app.router.add_get("/{tail:.*}", self.document)
        return app

    async def _fault(self, kind: str, key: str) -> web.Response | None:
        self.stats.by_kind[kind] += 1
        self.stats.by_second[int(time.time())] += 1
        if self.config.latency:
            await asyncio.sleep(self.config.latency)
        if key in self.stats.answered_429:
            self.stats.retries_after_429.append(time.monotonic() - self.stats.answered_429.pop(key))
        roll = self.rng.random()
        if roll < self.config.rate_429:
            self.stats.answered_429[key] = time.monotonic()
            return web.Response(
                status=429, text="slow down", headers={"Retry-After": f"{self.config.retry_after:g}"}
            )
        if roll < self.config.rate_429 + self.config.error_rate:
            return web.Response(status=503, text="try again")
        return None

    async def document(self, request: web.Request) -> web.StreamResponse:
        match = DOC.match(request.path)
        if not match:
            return web.Response(status=404, text="no such page")
        doc_id = match["id"]
        fault = await self._fault("doc", request.path)
        if fault is not None:
            return fault
        if doc_id in self.config.missing:
            return web.Response(status=404, text="no such document")
        self.stats.by_doc[doc_id] += 1
        body = self.cache.get(doc_id)
        if body is None:
            body = content_for(doc_id, size_for(doc_id, self.config.size_min, self.config.size_max))
            if len(self.cache) < 100_000 and len(body) <= 1 << 20:
                self.cache[doc_id] = body
        return web.Response(body=body, content_type="application/octet-stream")

    async def search(self, request: web.Request) -> web.Response:
        fault = await self._fault("search", request.path_qs)
        if fault is not None:
            return fault
        try:
            page = int(request.query.get("page", "1"))
        except ValueError:
            return web.Response(status=400, text="page must be a number")
        query = "&".join(f"{k}={v}" for k, v in sorted(request.query.items()) if k not in {"page", "format"})
        ids = listing_ids(query, page, self.config.per_page, self.config.results)
        if request.query.get("format") == "json":
            return web.json_response(
                {"page": page, "documents": [{"doc_id": i, "url": f"/doc/{i}.html"} for i in ids]}
            )
        links = "\n".join(f'<li><a href="/doc/{i}.html">Document {i}</a></li>' for i in ids)
        return web.Response(text=f"<html><body><ul>\n{links}\n</ul></body></html>", content_type="text/html")

    async def report(self, request: web.Request) -> web.Response:
        s = self.stats
        return web.json_response(
            {
                "by_kind": dict(s.by_kind),
                "by_second": {str(k): v for k, v in sorted(s.by_second.items())},
                "documents_served": sum(s.by_doc.values()),
                "distinct_documents": len(s.by_doc),
                "retries_after_429": s.retries_after_429,
            }
        )


def add_command(sub: Any) -> None:
    p = sub.add_parser("origin", help="serve a simulated registry (demo, tests, benchmarks)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--size", type=int, default=10_240, help="document size in bytes")
    p.add_argument("--size-max", type=int, help="sizes vary per id between --size and this")
    p.add_argument("--latency", type=float, default=0.0, help="seconds added to every answer")
    p.add_argument("--error-rate", type=float, default=0.0, help="share of requests answered 503")
    p.add_argument("--rate-429", type=float, default=0.0, help="share answered 429 with Retry-After")
    p.add_argument("--retry-after", type=float, default=1.0, help="Retry-After seconds on 429")
    p.add_argument("--missing", default="", help="comma-separated ids answered 404")
    p.add_argument("--per-page", type=int, default=20)
    p.add_argument("--results", type=int, default=200, help="results of every search")
    p.add_argument("--seed", type=int, default=0)
    r = p.add_argument_group("--registry: a court-decision registry as the seed's behaves (docgate.registry)")
    r.add_argument("--registry", action="store_true", help="serve the registry instead")
    r.add_argument("--decisions", type=int, default=3000, help="decisions in the registry")
    r.add_argument("--charset", default="utf-8", help="pages and forms in this charset (windows-1251)")
    r.add_argument("--form-token", choices=("none", "static", "rotating"), default="static")
    r.add_argument("--paging", choices=("links", "form"), default="links")
    r.add_argument("--max-rate", type=float, default=0.0, help="requests/s past which a captcha page comes")
    r.add_argument("--max-results", type=int, default=0, help="the most results one search shows (0: no cap)")
    r.add_argument("--years", type=float, default=3.0, help="decisions are registered over these years")
    r.add_argument("--burst", type=int, default=0, help="decisions registered on one day mid-span")
    p.set_defaults(run=run_origin)


def run_origin(args: argparse.Namespace) -> int:
    if args.registry:
        from docgate.registry import Registry, RegistryConfig

        registry = Registry(
            RegistryConfig(
                documents=args.decisions,
                charset=args.charset,
                form_field=args.form_token,
                paging=args.paging,
                max_rate=args.max_rate,
                max_results=args.max_results,
                years=args.years,
                burst=args.burst,
            )
        )
        asyncio.run(serve(registry, args.host, args.port))
        return 0
    config = OriginConfig(
        size_min=args.size,
        size_max=args.size_max or args.size,
        latency=args.latency,
        error_rate=args.error_rate,
        rate_429=args.rate_429,
        retry_after=args.retry_after,
        missing=frozenset(filter(None, args.missing.split(","))),
        per_page=args.per_page,
        results=args.results,
        seed=args.seed,
    )
    asyncio.run(serve(Origin(config), args.host, args.port))
    return 0


async def serve(origin: Origin | Registry, host: str, port: int) -> None:
    runner = web.AppRunner(origin.app(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port, backlog=1024).start()
    print(json.dumps({"origin": f"http://{host}:{port}"}), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()
