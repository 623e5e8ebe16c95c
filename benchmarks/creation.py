"""Scenario 3 — task creation: one job of N ids (10 M) in chunks of 1 and of 100, against
pgqueuer's batch enqueue of N jobs, in the same run.

docgate: `POST /api/v1/jobs` to a gate process, timed from request to reply
(the tasks are committed when it answers). pgqueuer: `Queries.enqueue` with
lists of 10,000 jobs per call (its fastest batch size here: 1,000 and 100,000
were slower) from one connection, until N are queued. The N-task database is
kept for the backlog and dashboard scenarios. Smaller sizes (1 M; 100 k with
--quick) are repeated and interleaved for medians; the full size runs once.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

from benchmarks.lib import (
    CpuMeter,
    Postgres,
    Processes,
    Table,
    connect,
    figure,
    median,
    running_gate,
    write_results,
)

URL = "http://127.0.0.1:9/doc/{id}"
ENQUEUE_BATCH = 10_000


def docgate_job(
    pg: Postgres, procs: Processes, work: Path, database: str, n: int, chunk: int
) -> tuple[float, int, dict[str, float]]:
    """Seconds to create one job of n ids in chunks of `chunk`, tasks made, CPU seconds."""
    dsn = pg.fresh(database)
    # The one-statement insert (JOB_BACKGROUND_TASKS past the job: not in the background).
    env = {"MAX_JOB_TASKS": str(max(n, 1)), "JOB_BACKGROUND_TASKS": str(max(n, 1))}
    with running_gate(procs, dsn, work, log=work / "gate.log", env=env) as gate:
        meter = CpuMeter({"gate": gate.proc.pid, "postgres": pg.pid})
        meter.start()
        seconds = gate.create_job(URL, n, chunk_size=chunk)
        cpu = meter.stop()
    tasks = asyncio.run(_count(dsn))
    if tasks != -(-n // chunk):
        raise AssertionError(f"job made {tasks} tasks, expected {-(-n // chunk)}")
    return seconds, tasks, cpu


async def _count(dsn: str) -> int:
    conn = await connect(dsn)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM tasks WHERE status = 'pending'"))
    finally:
        await conn.close()


def pgqueuer_enqueue(pg: Postgres, n: int) -> tuple[float, dict[str, float]]:
    from pgqueuer import AsyncpgDriver, Queries

    dsn = pg.fresh("bench_pgq_enqueue", template=None)

    async def go() -> tuple[float, dict[str, float]]:
        conn = await connect(dsn)
        queries = Queries(AsyncpgDriver(conn))
        await queries.install()
        meter = CpuMeter({"postgres": pg.pid, "driver": os.getpid()})
        meter.start()
        started = time.perf_counter()
        for first in range(0, n, ENQUEUE_BATCH):
            size = min(ENQUEUE_BATCH, n - first)
            await queries.enqueue(["noop"] * size, [None] * size, [0] * size)
        seconds = time.perf_counter() - started
        cpu = meter.stop()
        queued = await conn.fetchval("SELECT count(*) FROM pgqueuer")
        await conn.close()
        if queued != n:
            raise AssertionError(f"pgqueuer queued {queued}, expected {n}")
        return seconds, cpu

    try:
        return asyncio.run(go())
    finally:
        pg.drop("bench_pgq_enqueue")


def scenario(
    pg: Postgres, procs: Processes, work: Path, *, quick: bool, repeat: int, state: dict[str, Any]
) -> None:
    full = 100_000 if quick else 10_000_000
    small = 20_000 if quick else 1_000_000
    rates: dict[str, dict[int, list[float]]] = {"chunks of 1": {}, "chunks of 100": {}, "pgqueuer": {}}
    cpu: dict[str, dict[str, float]] = {}
    sizes = [small] * (repeat if repeat > 1 else 0) + [full]
    for i, n in enumerate(sizes):
        last = i == len(sizes) - 1
        seconds, tasks, spent = docgate_job(pg, procs, work, "bench_scale" if last else "bench_create", n, 1)
        rates["chunks of 1"].setdefault(n, []).append(tasks / seconds)
        cpu[f"docgate chunks of 1, {n:,}"] = spent
        if not last:
            pg.drop("bench_create")
        seconds, tasks, _ = docgate_job(pg, procs, work, "bench_chunks", n, 100)
        rates["chunks of 100"].setdefault(n, []).append(tasks / seconds)
        pg.drop("bench_chunks")
        seconds, spent = pgqueuer_enqueue(pg, n)
        rates["pgqueuer"].setdefault(n, []).append(n / seconds)
        cpu[f"pgqueuer, {n:,}"] = spent
        print(
            f"  {n:,}: docgate {rates['chunks of 1'][n][-1]:,.0f} tasks/s (chunks of 1), "
            f"{rates['chunks of 100'][n][-1]:,.0f} tasks/s (chunks of 100); "
            f"pgqueuer {rates['pgqueuer'][n][-1]:,.0f} jobs/s",
            flush=True,
        )
    state["scale"] = {"dsn": pg.dsn("bench_scale"), "tasks": full}
    table = Table(
        [
            "tasks",
            "runs",
            "docgate chunks of 1 tasks/s",
            "docgate chunks of 100 tasks/s",
            "(ids/s)",
            "pgqueuer jobs/s",
            "chunks of 1 / pgqueuer",
        ]
    )
    for n in sorted(set(sizes)):
        one, hundred, peer = (median(rates[k][n]) for k in ("chunks of 1", "chunks of 100", "pgqueuer"))
        table.add(n, len(rates["pgqueuer"][n]), one, hundred, hundred * 100, peer, f"{one / peer:.2f}×")
    spent = Table(["run", "CPU seconds"])
    for name, parts in cpu.items():
        spent.add(name, ", ".join(f"{k} {v:.1f}" for k, v in parts.items()))
    fig, axes = figure(1)
    ax = axes[0][0]
    labels = [f"{n:,}" for n in sorted(set(sizes))]
    for i, (name, by_n) in enumerate(rates.items()):
        ax.bar(
            [x + (i - 1) * 0.27 for x in range(len(labels))],
            [median(by_n[n]) for n in sorted(set(sizes))],
            0.27,
            label=name,
        )
    ax.set_xticks(range(len(labels)), [f"{label} ids" for label in labels])
    ax.set_yscale("log")
    ax.set_ylabel("tasks (jobs) created per second")
    ax.legend()
    write_results(
        "creation",
        "Task creation: one job of N ids vs pgqueuer's batch enqueue",
        {"rates": {k: {str(n): v for n, v in by_n.items()} for k, by_n in rates.items()}, "cpu": cpu},
        {"created per second (median of runs)": table, "CPU during each run": spent},
        fig,
        notes=[
            f"pgqueuer enqueues lists of {ENQUEUE_BATCH:,} jobs per call from one connection.",
            "chunks of 100 make N/100 tasks; its ids/s column is tasks/s × 100.",
        ],
    )
