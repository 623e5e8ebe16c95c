"""Scenario 7 — the cost of politeness: clients asking for their share of host budgets.

10, 100 and then 1,000 registered clients (async sessions, one connection each) each ask
`POST /api/v1/hosts/grants` as often as the gate asks (once a second; every 2 s on a host it
counts 100 clients or more on), as a working client does, for one host they all share
(reporting healthy answers), each starting at its own moment within the first second — for 20 s
(--quick: 5 s), against a gate of two processes (one per core; each keeps its own slice of the
host, as separate gates do). Measured: the gate's CPU (its processes and their PostgreSQL
backends) per 1,000 grants and as a share of a core, and the grant latency (p50, p99; a
client's first request, its key's first look-up at the gate, apart). Baseline, same run: the
gate's CPU with the clients idle for as long. Added latency per document: none on the fetch
path — a client asks in the background, beside its fetches, and waits for a grant only the
first time it meets a host; per document it waits on its token bucket.
"""

from __future__ import annotations

import asyncio
import gc
import random
import time
from pathlib import Path
from typing import Any

from benchmarks.http import Connection
from benchmarks.lib import Postgres, Processes, Table, cpu_seconds, median, pct, running_gate, write_results

HOST = "registry.example"
RATE = 10.0
CLIENTS = (10, 100, 1_000)  # --quick: the first two
# The fleet's first seconds hold its keys' first look-ups (a gate's start: every client at
# once), which the other requests queue behind; the steady state is timed from here on.
STEADY_AFTER = 3.0
WORKERS = 2  # gate processes on the one port, one per core: each holds its own slice, as gates do


async def asker(
    conn: Connection,
    until: float,
    latencies: list[float],
    first: list[float],
    steady: list[float],
    steady_from: float,
    phase: float,
) -> int:
    asked = 0
    body = {"hosts": [{"host": HOST, "ok": 1}]}
    await asyncio.sleep(phase)  # clients started at different moments: not all in the same instant
    while time.perf_counter() < until:
        started = time.perf_counter()
        status, reply = await conn.request("POST", "/api/v1/hosts/grants", body)
        assert status == 200, status
        # A client's first grant request is its key's first look-up at the gate: told apart.
        took = time.perf_counter() - started
        (latencies if asked else first).append(took)
        if asked and started >= steady_from:
            steady.append(took)
        asked += 1
        # As the client does: again after the interval the gate asked for (1 s; 2 s on a
        # host it counts 100 clients or more on).
        await asyncio.sleep(max(0.0, reply["refresh_seconds"] - (time.perf_counter() - started)))
    return asked


async def measure(
    url: str, keys: list[str], seconds: float
) -> tuple[int, list[float], list[float], list[float]]:
    """Grants asked, their latencies (first requests apart), and the latencies of the steady
    state: of the requests started after STEADY_AFTER seconds, once every key is looked up."""
    conns = [await Connection(url, {"X-API-Key": k}).open() for k in keys]
    latencies: list[float] = []
    first: list[float] = []
    steady: list[float] = []
    until = time.perf_counter() + seconds
    steady_from = until - seconds + STEADY_AFTER
    rng = random.Random(7)
    gc.collect()
    gc.disable()  # the askers' own collections would be timed as the gate's latency
    try:
        counts = await asyncio.gather(
            *(asker(c, until, latencies, first, steady, steady_from, rng.random()) for c in conns)
        )
    finally:
        gc.enable()
        for c in conns:
            await c.close()
    return sum(counts), latencies, first, steady


def scenario(
    pg: Postgres, procs: Processes, work: Path, *, quick: bool, repeat: int, state: dict[str, Any]
) -> None:
    seconds = 5.0 if quick else 20.0
    dsn = pg.fresh("bench_grants")
    rows: list[dict[str, Any]] = []
    try:
        env = {"HOST_RATE_LIMIT": str(RATE), "HOST_CONNECTIONS": "16"}
        with running_gate(procs, dsn, work, workers=WORKERS, env=env, log=work / "gate-grants.log") as gate:
            fleets = CLIENTS[:2] if quick else CLIENTS
            keys = [gate.register(f"asker-{i}") for i in range(max(fleets))]
            before = cpu_seconds(gate.proc.pid)
            time.sleep(seconds)
            idle = (cpu_seconds(gate.proc.pid) - before) / seconds
            for clients in fleets:
                before = cpu_seconds(gate.proc.pid)
                started, loader = time.perf_counter(), time.process_time()
                grants, latencies, first, steady = asyncio.run(measure(gate.url, keys[:clients], seconds))
                elapsed = time.perf_counter() - started
                loader = (time.process_time() - loader) / elapsed
                spent = cpu_seconds(gate.proc.pid) - before
                share = RATE / clients  # documents a second per client at the default budget
                rows.append(
                    {
                        "clients": clients,
                        "grants": grants,
                        "grants_per_client_per_s": grants / clients / elapsed,
                        "cpu_s_per_1000": spent / grants * 1000,
                        "cpu_share": spent / elapsed,
                        "idle_cpu_share": idle,
                        "loader_cpu_share": loader,
                        "p50_ms": median(latencies) * 1000,
                        "p99_ms": pct(latencies, 99) * 1000,
                        "first_p99_ms": pct(first, 99) * 1000,
                        "steady_p99_ms": pct(steady, 99) * 1000,
                        "documents_per_client_per_s": share,
                    }
                )
    finally:
        pg.drop("bench_grants")
    table = Table(
        [
            "clients",
            "grant requests per client per s",
            "gate CPU s per 1,000 grants",
            "gate CPU (share of a core)",
            "idle baseline",
            "askers' CPU (share of a core)",
            "grant p50 ms",
            "p99 ms",
            f"p99 ms after {STEADY_AFTER:.0f} s",
            "first grant p99 ms",
            "documents per client per s (budget 10/s)",
        ]
    )
    for r in rows:
        table.add(
            r["clients"],
            r["grants_per_client_per_s"],
            r["cpu_s_per_1000"],
            r["cpu_share"],
            r["idle_cpu_share"],
            r["loader_cpu_share"],
            r["p50_ms"],
            r["p99_ms"],
            r["steady_p99_ms"],
            r["first_p99_ms"],
            RATE / r["clients"],
        )
    write_results(
        "grants",
        "Politeness: the cost of host-budget grants",
        {"rows": rows, "seconds": seconds, "host_rate_limit": RATE},
        {"one host shared by every client, one grant a second each": table},
        notes=[
            "Grants are asked once a second per client whatever its download rate, so their cost per "
            "document falls as the share grows; a client fetching at its share waits no grant per "
            "document (the grant loop runs beside the fetches), so the added latency per document is "
            "only that of its token bucket.",
            "The askers are one asyncio process on the same two cores as the gate and PostgreSQL: at "
            "1,000 their own queueing for a core is part of the latency measured.",
        ],
    )
