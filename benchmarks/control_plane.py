"""Scenario 1 — control plane: lease→complete cycles of no-op tasks, three ways, in one run.

- docgate: the real HTTP API of a gate process (auth, fencing, PostgreSQL), with
  1, 8 and 64 simulated clients (each registered, each its own connection),
  single (`/tasks/request` then `/tasks/complete`) and batched (`max_tasks`
  then `/tasks/complete/batch`);
- the SQL floor: the gate's own LEASE and COMPLETE statements driven directly
  with asyncpg from one process at the same concurrency and batch;
- pgqueuer: as many QueueManagers as clients (each its own connection) draining
  the same number of no-op jobs with batch_size 1 or the same batch.

Each (system, clients, batch) drains a fresh copy of the database with N tasks
queued beforehand; tasks/s is N over the drain time. Every run checks that
exactly N tasks ended completed. Lease latency is what the leaser waited: the
HTTP round trip for docgate, the statement for the floor, pgqueuer's dequeue.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from benchmarks.http import Connection
from benchmarks.lib import (
    RESULTS,
    CpuMeter,
    Gate,
    Postgres,
    Processes,
    Table,
    connect,
    figure,
    median,
    pct,
    py_spy_argv,
    running_gate,
    summarise_profile,
    write_results,
)
from server.db import lifecycle as sql

SYSTEMS = ("docgate", "sql floor", "pgqueuer")
LEVELS = (1, 8, 64)
BATCHES = (1, 10, 100)


@dataclass
class Run:
    seconds: float
    lease_ms: list[float] = field(default_factory=list)
    cpu: dict[str, float] = field(default_factory=dict)  # CPU seconds by process during the drain
    done: int = 0

    def rate(self, n: int) -> float:
        return n / self.seconds


# ---- docgate over HTTP


async def _http_worker(conn: Connection, batch: int, lease_ms: list[float], budget: list[int]) -> int:
    """Lease and complete until the gate has nothing left (204) or the shared budget is spent."""
    done = 0
    target = f"/api/v1/tasks/request?max_tasks={batch}" if batch > 1 else "/api/v1/tasks/request"
    while budget[0] > 0:
        budget[0] -= batch
        started = time.perf_counter()
        status, body = await conn.request("POST", target)
        if status == 204:
            return done
        assert status == 200, body
        lease_ms.append((time.perf_counter() - started) * 1000)
        tasks = body["tasks"] if batch > 1 else [body]
        if batch > 1:
            completions = [{"task_id": t["task_id"], "lease_token": t["lease_token"]} for t in tasks]
            status, reply = await conn.request(
                "POST", "/api/v1/tasks/complete/batch", {"completions": completions}
            )
            assert status == 200 and reply["completed"] == len(tasks), reply
        else:
            task = tasks[0]
            status, reply = await conn.request(
                "POST",
                "/api/v1/tasks/complete",
                {"task_id": task["task_id"], "lease_token": task["lease_token"]},
            )
            assert status == 200, reply
        done += len(tasks)
    return done


async def drain_http(gate: Gate, keys: list[str], batch: int, limit: int | None = None) -> Run:
    """One connection per key, leasing and completing until nothing is left (or `limit` tasks)."""
    lease_ms: list[float] = []
    conns = [
        await Connection(gate.url, {"X-API-Key": k, "X-Session-Id": uuid.uuid4().hex}).open() for k in keys
    ]
    budget = [limit if limit is not None else 1 << 62]
    try:
        started = time.perf_counter()
        done = await asyncio.gather(*(_http_worker(c, batch, lease_ms, budget) for c in conns))
        return Run(time.perf_counter() - started, lease_ms, done=sum(done))
    finally:
        for c in conns:
            await c.close()


def run_docgate(
    pg: Postgres, procs: Processes, work: Path, clients: int, batch: int, n: int, profile: Path | None = None
) -> Run:
    """One drain through a fresh gate; with `profile`, py-spy samples the gate meanwhile."""
    dsn = pg.fresh("bench_http")
    spy = None
    with running_gate(procs, dsn, work, log=work / "gate.log") as gate:
        keys = [gate.register(f"bench-{i}") for i in range(clients)]
        gate.create_job("http://127.0.0.1:9/{id}", n)
        if profile is not None:
            spy = procs.start(py_spy_argv(profile, pid=gate.proc.pid), log=work / "py-spy.log")
            time.sleep(1)  # attached before the load begins
        meter = CpuMeter({"gate": gate.proc.pid, "postgres": pg.pid, "driver": os.getpid()})
        meter.start()
        run = asyncio.run(drain_http(gate, keys, batch))
        run.cpu = meter.stop()
        if spy is not None:
            os.kill(spy.pid, signal.SIGINT)  # py-spy writes its samples on SIGINT
            spy.wait(60)
            procs.stop(spy)
    asyncio.run(_check_completed(dsn, n))
    return run


async def _check_completed(dsn: str, n: int) -> None:
    conn = await connect(dsn)
    try:
        done = await conn.fetchval("SELECT count(*) FROM tasks WHERE status = 'completed'")
        total = await conn.fetchval("SELECT count(*) FROM tasks")
    finally:
        await conn.close()
    if done != n or total != n:
        raise AssertionError(f"{done} of {total} tasks completed, expected {n}")


# ---- the SQL floor


async def drain_sql(dsn: str, clients: int, batch: int) -> Run:
    import asyncpg

    from server.db.pool import _init_connection

    pool = await asyncpg.create_pool(dsn, min_size=clients, max_size=clients, init=_init_connection)
    owner = await pool.fetchval(
        "INSERT INTO clients (client_name, api_key_hash) "
        "VALUES ('floor', gen_random_uuid()::text::bytea) RETURNING client_id"
    )
    lease_ms: list[float] = []

    async def worker() -> None:
        session = uuid.uuid4().hex
        while True:
            async with pool.acquire() as conn:
                started = time.perf_counter()
                rows = await conn.fetch(sql.LEASE, batch, owner, session, 300.0, 1_000_000)
                lease_ms.append((time.perf_counter() - started) * 1000)
            if not rows:
                return
            async with pool.acquire() as conn, conn.transaction():
                if batch > 1:
                    ids, tokens = [r["task_id"] for r in rows], [r["lease_token"] for r in rows]
                    zeros = [0] * len(rows)
                    done = await conn.fetch(
                        sql.COMPLETE_MANY,
                        ids,
                        tokens,
                        owner,
                        session,
                        zeros,
                        zeros,
                        zeros,
                        [None] * len(rows),
                    )
                    assert len(done) == len(rows)
                else:
                    r = rows[0]
                    assert (
                        await conn.fetchrow(
                            sql.COMPLETE, r["task_id"], r["lease_token"], owner, session, 0, 0, 0, None
                        )
                        is not None
                    )

    try:
        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        return Run(time.perf_counter() - started, lease_ms)
    finally:
        await pool.close()


def run_floor(pg: Postgres, clients: int, batch: int, n: int) -> Run:
    from protocol import v1
    from server.db.jobs import create_job

    dsn = pg.fresh("bench_floor")

    async def go() -> Run:
        import asyncpg

        from server.db.pool import _init_connection

        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2, init=_init_connection)
        try:
            await create_job(
                pool,
                v1.JobCreate.model_validate(
                    {
                        "source": "id_range",
                        "chunk_size": 1,
                        "params": {"url_template": "http://127.0.0.1:9/{id}", "start_id": 1, "count": n},
                    }
                ),
                5,
                n,  # created in this one statement, as jobs up to JOB_BACKGROUND_TASKS are
            )
        finally:
            await pool.close()
        meter = CpuMeter({"postgres": pg.pid, "driver": os.getpid()})
        meter.start()
        run = await drain_sql(dsn, clients, batch)
        run.cpu = meter.stop()
        await _check_completed(dsn, n)
        return run

    return asyncio.run(go())


# ---- pgqueuer


async def drain_pgqueuer(dsn: str, clients: int, batch: int, n: int, meter: CpuMeter) -> Run:
    from pgqueuer import AsyncpgDriver, Queries, QueueManager
    from pgqueuer.types import QueueExecutionMode

    setup = await connect(dsn)
    queries = Queries(AsyncpgDriver(setup))
    await queries.install()
    for start in range(0, n, 10_000):
        size = min(10_000, n - start)
        await queries.enqueue(["noop"] * size, [None] * size, [0] * size)
    lease_ms: list[float] = []
    managers, conns = [], []
    for _ in range(clients):
        conn = await connect(dsn)
        conns.append(conn)
        qm = QueueManager(Queries(AsyncpgDriver(conn)))

        @qm.entrypoint("noop")
        async def noop(job: Any) -> None:
            return None

        dequeue = qm.queries.dequeue

        async def timed(*args: Any, _dequeue: Any = dequeue, **kwargs: Any) -> Any:
            started = time.perf_counter()
            jobs = await _dequeue(*args, **kwargs)
            lease_ms.append((time.perf_counter() - started) * 1000)
            return jobs

        qm.queries.dequeue = timed  # type: ignore[method-assign]
        managers.append(qm)
    meter.start()
    started = time.perf_counter()
    await asyncio.gather(
        *(
            qm.run(
                dequeue_timeout=timedelta(seconds=0.2),
                batch_size=batch,
                mode=QueueExecutionMode.drain,
                log_aggregation_interval=timedelta(0),
            )
            for qm in managers
        )
    )
    seconds = time.perf_counter() - started
    cpu = meter.stop()
    left = await setup.fetchval("SELECT count(*) FROM pgqueuer")
    logged = await setup.fetchval("SELECT count(*) FROM pgqueuer_log WHERE status = 'successful'")
    for conn in [setup, *conns]:
        with contextlib.suppress(Exception):
            await conn.close()
    if left or logged != n:
        raise AssertionError(f"pgqueuer left {left} jobs and logged {logged} successes, expected {n}")
    return Run(seconds, lease_ms, cpu)


def run_pgqueuer(pg: Postgres, clients: int, batch: int, n: int) -> Run:
    dsn = pg.fresh("bench_pgq", template=None)
    meter = CpuMeter({"postgres": pg.pid, "driver": os.getpid()})
    return asyncio.run(drain_pgqueuer(dsn, clients, batch, n, meter))


# ---- the scenario


def run_once(
    system: str, pg: Postgres, procs: Processes, work: Path, clients: int, batch: int, n: int
) -> Run:
    if system == "docgate":
        return run_docgate(pg, procs, work, clients, batch, n)
    if system == "sql floor":
        return run_floor(pg, clients, batch, n)
    return run_pgqueuer(pg, clients, batch, n)


def scenario(
    pg: Postgres, procs: Processes, work: Path, *, quick: bool, repeat: int, state: dict[str, Any]
) -> dict[str, Any]:
    sizes = {1: 500 if quick else 4000, 10: 2000 if quick else 20_000, 100: 2000 if quick else 20_000}
    rows: dict[str, Any] = {}
    for batch in BATCHES:
        for clients in LEVELS:
            n = sizes[batch]
            for _ in range(repeat):  # interleaved, so drift hits all three alike
                for system in SYSTEMS:
                    run = run_once(system, pg, procs, work, clients, batch, n)
                    entry = rows.setdefault(
                        f"{system}|{clients}|{batch}",
                        {"rates": [], "p50": [], "p99": [], "cpu_ms_per_task": []},
                    )
                    entry["rates"].append(run.rate(n))
                    entry["p50"].append(pct(run.lease_ms, 50))
                    entry["p99"].append(pct(run.lease_ms, 99))
                    entry["cpu_ms_per_task"].append({k: round(v * 1000 / n, 3) for k, v in run.cpu.items()})
                    cpu = ", ".join(f"{k} {v * 1000 / n:.2f}" for k, v in run.cpu.items())
                    print(
                        f"  {system:<10} clients={clients:<3} batch={batch:<3} {run.rate(n):8.0f} tasks/s "
                        f"lease p50 {pct(run.lease_ms, 50):.2f} ms p99 {pct(run.lease_ms, 99):.2f} ms; "
                        f"CPU ms/task {cpu}",
                        flush=True,
                    )
    # One more drain per batch size at 8 clients with py-spy on the gate, apart from the timed runs.
    profiles = []
    for batch in (10,) if quick else BATCHES:
        raw = work / f"gate-profile-{batch}.txt"
        run = run_docgate(pg, procs, work, 8, batch, sizes[batch], profile=raw)
        profiles.append(
            f"== gate, 8 clients, batch {batch}: {sizes[batch]:,} tasks in {run.seconds:.1f} s "
            f"(py-spy, 250 Hz)\n\n{summarise_profile(raw)}\n"
        )
    (RESULTS / "control_plane.profile.txt").write_text("".join(profiles))
    return report(rows, sizes, repeat)


def report(rows: dict[str, Any], sizes: dict[int, int], repeat: int) -> dict[str, Any]:
    table = Table(
        [
            "batch",
            "clients",
            "docgate tasks/s",
            "floor tasks/s",
            "pgqueuer tasks/s",
            "docgate/floor",
            "docgate/pgqueuer",
            "docgate lease p50 ms",
            "p99 ms",
            "floor lease p50 ms",
            "p99 ms",
            "pgqueuer dequeue p50 ms",
            "p99 ms",
        ]
    )
    cpu = Table(["batch", "clients", "system", "CPU ms per task (median run)"])
    summary = {}
    for batch in BATCHES:
        for clients in LEVELS:
            m = {s: rows[f"{s}|{clients}|{batch}"] for s in SYSTEMS}
            rate = {s: median(m[s]["rates"]) for s in SYSTEMS}
            floor, peer = rate["docgate"] / rate["sql floor"], rate["docgate"] / rate["pgqueuer"]
            summary[f"{clients}|{batch}"] = {"rates": rate, "ratio_floor": floor, "ratio_pgqueuer": peer}
            table.add(
                batch,
                clients,
                rate["docgate"],
                rate["sql floor"],
                rate["pgqueuer"],
                f"{floor:.2f}×",
                f"{peer:.2f}×",
                median(m["docgate"]["p50"]),
                median(m["docgate"]["p99"]),
                median(m["sql floor"]["p50"]),
                median(m["sql floor"]["p99"]),
                median(m["pgqueuer"]["p50"]),
                median(m["pgqueuer"]["p99"]),
            )
            for system in SYSTEMS:
                runs = m[system]["cpu_ms_per_task"]
                middle = runs[len(runs) // 2]
                cpu.add(batch, clients, system, ", ".join(f"{k} {v:.2f}" for k, v in middle.items()))
    fig, axes = figure(len(BATCHES), width=5.5)
    for ax, batch in zip(axes[0], BATCHES, strict=True):
        width = 0.27
        for i, system in enumerate(SYSTEMS):
            values = [median(rows[f"{system}|{c}|{batch}"]["rates"]) for c in LEVELS]
            ax.bar([x + (i - 1) * width for x in range(len(LEVELS))], values, width, label=system)
        ax.set_xticks(range(len(LEVELS)), [f"{c} clients" for c in LEVELS])
        ax.set_ylabel("tasks/s (median)")
        ax.set_title("single lease + complete" if batch == 1 else f"batched ({batch} per call)")
        ax.legend()
    write_results(
        "control_plane",
        "Control plane: lease→complete of no-op tasks",
        {"repeat": repeat, "sizes": sizes, "runs": rows, "summary": summary},
        {"tasks/s (median of runs) and lease latency": table, "where the CPU went": cpu},
        fig,
        notes=[
            f"N = {sizes[1]:,} tasks (single) and {sizes[10]:,} (batched) per run, "
            f"{repeat} run(s) each, systems interleaved; medians shown.",
            "Where the gate's time goes: control_plane.profile.txt (py-spy on the gate, 8 clients).",
            "CPU: gate = the gate process, postgres = the server and its backends, driver = the "
            "process driving the load (HTTP clients, the floor's asyncpg, or pgqueuer's managers).",
        ],
    )
    return summary
