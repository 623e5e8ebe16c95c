"""Scenario 2 — backlog scale: lease latency and throughput with 10 k, 1 M and 10 M tasks pending.

For each backlog a gate serves a database holding that many pending tasks
(created in bulk as one job; the 10 M one is the creation scenario's), and 8
clients lease and complete LEASED tasks one at a time through the HTTP API.
Lease latency is the HTTP round trip of `/tasks/request`. The lease's plan is
recorded too (EXPLAIN ANALYZE inside a rolled-back transaction): it must walk
the tasks_leasable index and touch a handful of buffers whatever the backlog.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from benchmarks.control_plane import drain_http
from benchmarks.lib import (
    Postgres,
    Processes,
    Table,
    connect,
    figure,
    median,
    pct,
    running_gate,
    write_results,
)
from server.db import lifecycle as sql

CLIENTS = 8


async def lease_plan(dsn: str) -> list[str]:
    conn = await connect(dsn)
    try:
        owner = await conn.fetchval("SELECT client_id FROM clients LIMIT 1")
        tx = conn.transaction()
        await tx.start()
        rows = await conn.fetch(
            "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) " + sql.LEASE, 1, owner, "plan", 60.0, 1_000_000
        )
        await tx.rollback()
        return [r[0] for r in rows]
    finally:
        await conn.close()


def measure(pg: Postgres, procs: Processes, work: Path, dsn: str, leased: int, repeat: int) -> dict[str, Any]:
    with running_gate(procs, dsn, work, log=work / "gate.log") as gate:
        keys = [gate.register(f"backlog-{i}") for i in range(CLIENTS)]
        asyncio.run(drain_http(gate, keys, 1, limit=200))  # warm the gate's pool and caches
        runs = [asyncio.run(drain_http(gate, keys, 1, limit=leased)) for _ in range(repeat)]
        plan = asyncio.run(lease_plan(dsn))
    return {
        "rates": [r.done / r.seconds for r in runs],
        "p50": [pct(r.lease_ms, 50) for r in runs],
        "p99": [pct(r.lease_ms, 99) for r in runs],
        "plan": plan,
    }


def scenario(
    pg: Postgres, procs: Processes, work: Path, *, quick: bool, repeat: int, state: dict[str, Any]
) -> None:
    scale = state.get("scale")
    sizes = [10_000, 100_000] if quick else [10_000, 1_000_000, 10_000_000]
    leased = 1_000 if quick else 2_000
    results: dict[int, dict[str, Any]] = {}
    for n in sizes:
        if scale and scale["tasks"] == n:
            dsn = scale["dsn"]
        else:
            dsn = pg.fresh(f"bench_backlog_{n}")
            with running_gate(procs, dsn, work, env={"MAX_JOB_TASKS": str(n)}) as gate:
                gate.create_job("http://127.0.0.1:9/doc/{id}", n)
        results[n] = measure(pg, procs, work, dsn, leased, repeat)
        if n == sizes[0]:
            state["small"] = {"dsn": dsn, "tasks": n}
        print(
            f"  {n:>12,} pending: {median(results[n]['rates']):,.0f} tasks/s, lease p50 "
            f"{median(results[n]['p50']):.2f} ms, p99 {median(results[n]['p99']):.2f} ms",
            flush=True,
        )
    base = results[sizes[0]]
    table = Table(
        ["pending", "tasks/s", "lease p50 ms", "lease p99 ms", "p99 / p99 at 10 k", "index walked", "buffers"]
    )
    for n, r in results.items():
        plan = "\n".join(r["plan"])
        buffers = next((line.strip() for line in r["plan"] if "Buffers" in line), "")
        table.add(
            n,
            median(r["rates"]),
            median(r["p50"]),
            median(r["p99"]),
            f"{median(r['p99']) / median(base['p99']):.2f}×",
            "tasks_leasable" if "tasks_leasable" in plan else "NO (scan)",
            buffers,
        )
    fig, axes = figure(1)
    ax = axes[0][0]
    ax.plot(sizes, [median(results[n]["p50"]) for n in sizes], "o-", label="lease p50")
    ax.plot(sizes, [median(results[n]["p99"]) for n in sizes], "s-", label="lease p99")
    ax.set_xscale("log")
    ax.set_xlabel("pending tasks")
    ax.set_ylabel("ms (HTTP round trip)")
    ax.set_ylim(bottom=0)
    ax.legend()
    write_results(
        "backlog",
        "Backlog scale: leasing with 10 k … 10 M tasks pending",
        {"clients": CLIENTS, "leased_per_run": leased, "results": {str(n): r for n, r in results.items()}},
        {f"{CLIENTS} clients leasing and completing one task at a time": table},
        fig,
        notes=[
            f"{leased:,} tasks leased and completed per run, {repeat} run(s) per backlog; medians.",
            "The full plan of each lease is in backlog.json.",
        ],
    )
