"""Scenario 5 — many clients: 200 sessions long-polling one gate.

200 registered clients (one process of async sessions, one connection each)
hold `POST /tasks/request?wait=30` open against one gate, re-polling when a
poll ends empty. Measured with them waiting: the gate's RSS and its CPU over
10 idle seconds; then the latency from creating a task (admin
`POST /tasks/create`) to one session receiving it, 30 times in a row (--quick:
3 seconds and 10 times). The baseline, same run: the gate with no session
(RSS, idle CPU) and with one session (latency).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

import psutil

from benchmarks.http import Connection
from benchmarks.lib import (
    ADMIN,
    Postgres,
    Processes,
    Table,
    cpu_seconds,
    figure,
    median,
    pct,
    running_gate,
    write_results,
)

SESSIONS = 200
IDLE_SECONDS = 10.0


async def poller(conn: Connection, got: asyncio.Queue[float], stop: asyncio.Event) -> None:
    while not stop.is_set():
        status, body = await conn.request("POST", "/api/v1/tasks/request?wait=30")
        if status == 200:
            await got.put(time.perf_counter())
            status, _ = await conn.request(
                "POST",
                "/api/v1/tasks/complete",
                {"task_id": body["task_id"], "lease_token": body["lease_token"]},
            )
            assert status == 200


async def measure(
    url: str, keys: list[str], gate_pid: int, rounds: int, idle: float = IDLE_SECONDS
) -> dict[str, Any]:
    proc = psutil.Process(gate_pid)
    admin = await Connection(url, {"X-API-Key": ADMIN}).open()
    conns = [await Connection(url, {"X-API-Key": k, "X-Session-Id": uuid.uuid4().hex}).open() for k in keys]
    got: asyncio.Queue[float] = asyncio.Queue()
    stop = asyncio.Event()
    pollers = [asyncio.create_task(poller(c, got, stop)) for c in conns]
    await asyncio.sleep(2.0)  # every session is waiting now
    cpu_before = cpu_seconds(gate_pid)
    await asyncio.sleep(idle)
    idle_cpu = (cpu_seconds(gate_pid) - cpu_before) / idle
    rss = proc.memory_info().rss / 2**20
    latencies = []
    for i in range(rounds):
        started = time.perf_counter()
        status, _ = await admin.request("POST", "/api/v1/tasks/create", {"search_params": {"round": i}})
        assert status == 201
        received = await asyncio.wait_for(got.get(), 30)
        latencies.append((received - started) * 1000)
        await asyncio.sleep(0.2)  # let the receiver complete and poll again
    stop.set()
    for p in pollers:
        p.cancel()
    await asyncio.gather(*pollers, return_exceptions=True)
    for c in [admin, *conns]:
        await c.close()
    return {"sessions": len(keys), "rss_mib": rss, "idle_cpu_share": idle_cpu, "latency_ms": latencies}


def scenario(
    pg: Postgres, procs: Processes, work: Path, *, quick: bool, repeat: int, state: dict[str, Any]
) -> None:
    rounds = 10 if quick else 30
    idle = 3.0 if quick else IDLE_SECONDS
    dsn = pg.fresh("bench_many")
    try:
        with running_gate(procs, dsn, work, log=work / "gate.log") as gate:
            keys = [gate.register(f"poller-{i}") for i in range(SESSIONS)]
            time.sleep(1.0)
            cpu_before = cpu_seconds(gate.proc.pid)
            time.sleep(idle)
            quiet = {
                "sessions": 0,
                "idle_cpu_share": (cpu_seconds(gate.proc.pid) - cpu_before) / idle,
                "rss_mib": psutil.Process(gate.proc.pid).memory_info().rss / 2**20,
                "latency_ms": [],
            }
            one = asyncio.run(measure(gate.url, keys[:1], gate.proc.pid, rounds, idle))
            many = asyncio.run(measure(gate.url, keys, gate.proc.pid, rounds, idle))
    finally:
        pg.drop("bench_many")
    table = Table(
        [
            "sessions waiting",
            "gate RSS MiB",
            "gate idle CPU (share of a core)",
            "create→lease p50 ms",
            "p99 ms",
            "max ms",
        ]
    )
    for r in (quiet, one, many):
        lat = r["latency_ms"]
        table.add(
            r["sessions"],
            r["rss_mib"],
            f"{100 * r['idle_cpu_share']:.1f} %",
            pct(lat, 50),
            pct(lat, 99),
            max(lat) if lat else float("nan"),
        )
    fig, axes = figure(2, width=5)
    axes[0][0].bar(["none", "1", str(SESSIONS)], [r["rss_mib"] for r in (quiet, one, many)])
    axes[0][0].set_ylabel("gate RSS MiB")
    axes[0][0].set_xlabel("sessions long-polling")
    axes[0][1].boxplot(
        [one["latency_ms"], many["latency_ms"]], tick_labels=["1 session", f"{SESSIONS} sessions"]
    )
    axes[0][1].set_ylabel("task created → leased, ms")
    write_results(
        "many_clients",
        f"Many clients: {SESSIONS} sessions long-polling one gate",
        {"results": [quiet, one, many]},
        {"one gate, sessions waiting in long-polls": table},
        fig,
        notes=[
            f"Idle CPU over {idle:.0f} s with every session waiting; {rounds} tasks created "
            "one after another for the latency.",
            f"ratio of p50 latency, {SESSIONS} sessions to 1: "
            f"{median(many['latency_ms']) / median(one['latency_ms']):.2f}×",
        ],
    )
