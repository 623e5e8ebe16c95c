"""Scenario 10 — harvests: windows created per second for a 10-year daily job (and 10 years of
days × 25 values, created in the background past JOB_BACKGROUND_TASKS: timed until its last
window exists), against an id_range job of as many tasks in the same run; and the gate's cost
per window settled (lease, complete with the listing's report, the ledger line written), against
a plain task's lease and complete, through the API, 16 at a time.

The window's extra cost is its ledger row (inserted with its task, in one statement) and, at
completion, the row read and written in the completing transaction.
"""

from __future__ import annotations

import asyncio
import time
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import httpx

from benchmarks.lib import CpuMeter, Postgres, Processes, Table, median, running_gate, write_results

PROFILE = {
    "base_url": "http://127.0.0.1:9",
    "search": {"url": "/", "dates": {"begin": "RegDateBegin", "end": "RegDateEnd", "format": "%d.%m.%Y"}},
    "results": {"links": "a", "id_pattern": r"/(?P<id>\d+)$", "max_results": 1000},
}
TEN_YEARS = {"from": "2015-01-01", "to": "2024-12-31", "every": "day"}  # 3,653 days
CONCURRENCY = 16


def _harvest(url: str, admin: dict[str, str], values: int) -> tuple[float, int]:
    httpx.put(f"{url}/api/v1/sources/reg", headers=admin, json=PROFILE, timeout=30).raise_for_status()
    partition: dict[str, Any] = {"dates": TEN_YEARS}
    if values:
        partition["values"] = {"field": "CourtRegion", "values": [str(v) for v in range(values)]}
    started = time.perf_counter()
    reply = httpx.post(
        f"{url}/api/v1/jobs", headers=admin, timeout=3600, json={"source": "reg", "partition": partition}
    )
    reply.raise_for_status()
    job = reply.json()
    while job.get("creating"):  # past JOB_BACKGROUND_TASKS: answered 202, windows made in slices
        time.sleep(0.1)
        job = httpx.get(f"{url}/api/v1/jobs/{job['job_id']}", headers=admin, timeout=60).json()
    return time.perf_counter() - started, int(job["tasks_created"])


async def _settle_all(url: str, key: str, n: int, listing: bool) -> int:
    """Lease and complete n tasks, CONCURRENCY at a time; a window's completion says what its
    listing held."""
    done = 0
    async with httpx.AsyncClient(base_url=url, headers={"X-API-Key": key}, timeout=60) as http:

        async def worker() -> None:
            nonlocal done
            while done < n:
                r = await http.post("/api/v1/tasks/request")
                if r.status_code == 204:
                    return
                task = r.json()
                body: dict[str, Any] = {"task_id": task["task_id"], "lease_token": task["lease_token"]}
                if listing:
                    body["listing"] = {"stated_total": 0, "found": 0, "capped": False}
                (await http.post("/api/v1/tasks/complete", json=body)).raise_for_status()
                done += 1

        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return done


def _cost(pg: Postgres, procs: Processes, work: Path, n: int, windows: bool) -> dict[str, float]:
    dsn = pg.fresh("bench_harvest_cost")
    with running_gate(procs, dsn, work, log=work / "gate-harvest.log") as gate:
        if windows:
            httpx.put(f"{gate.url}/api/v1/sources/reg", headers=gate.admin, json=PROFILE, timeout=30)
            last = date(2015, 1, 1) + timedelta(days=n - 1)
            body = {"source": "reg", "partition": {"dates": TEN_YEARS | {"to": last.isoformat()}}}
        else:
            params = {"url_template": "http://127.0.0.1:9/{id}", "start_id": 1, "count": n}
            body = {"source": "id_range", "chunk_size": 1, "params": params}
        httpx.post(f"{gate.url}/api/v1/jobs", headers=gate.admin, json=body, timeout=600).raise_for_status()
        key = gate.register("bench")
        meter = CpuMeter({"gate": gate.proc.pid, "postgres": pg.pid})
        meter.start()
        started = time.perf_counter()
        settled = asyncio.run(_settle_all(gate.url, key, n, windows))
        seconds = time.perf_counter() - started
        cpu = meter.stop()
    pg.drop("bench_harvest_cost")
    if settled != n:
        raise AssertionError(f"settled {settled} of {n}")
    return {
        "per_second": n / seconds,
        "gate_ms": cpu["gate"] / n * 1000,
        "postgres_ms": cpu["postgres"] / n * 1000,
    }


def scenario(
    pg: Postgres, procs: Processes, work: Path, *, quick: bool, repeat: int, state: dict[str, Any]
) -> None:
    runs = max(1, repeat)
    create: dict[str, list[float]] = {"daily": [], "daily x 25": [], "id_range, as many": []}
    sizes: dict[str, int] = {}
    for _ in range(runs):
        for name, values in (("daily", 0), ("daily x 25", 0 if quick else 25)):
            dsn = pg.fresh("bench_harvest")
            with running_gate(procs, dsn, work, log=work / "gate-harvest.log") as gate:
                seconds, made = _harvest(gate.url, gate.admin, values)
            pg.drop("bench_harvest")
            create[name].append(made / seconds)
            sizes[name] = made
        dsn = pg.fresh("bench_harvest")
        with running_gate(procs, dsn, work, log=work / "gate-harvest.log") as gate:
            seconds = gate.create_job("http://127.0.0.1:9/{id}", sizes["daily"], chunk_size=1)
        pg.drop("bench_harvest")
        create["id_range, as many"].append(sizes["daily"] / seconds)
        print(f"  windows/s: {', '.join(f'{k} {v[-1]:,.0f}' for k, v in create.items())}", flush=True)
    n = 1_000 if quick else 3_000
    costs = {"window (lease, complete, ledger)": [], "plain task (lease, complete)": []}
    for _ in range(runs):
        costs["window (lease, complete, ledger)"].append(_cost(pg, procs, work, n, windows=True))
        costs["plain task (lease, complete)"].append(_cost(pg, procs, work, n, windows=False))
    created = Table(["job", "windows (tasks)", "created per second", "vs id_range"])
    base = median(create["id_range, as many"])
    for name, rates in create.items():
        size = sizes.get(name, sizes["daily"])
        created.add(name, size, median(rates), f"{median(rates) / base:.2f}×")
    cost = Table(["settled", "per second", "gate CPU ms each", "PostgreSQL CPU ms each", "gate CPU vs plain"])
    plain = median([c["gate_ms"] for c in costs["plain task (lease, complete)"]])
    for name, rows in costs.items():
        gate_ms = median([r["gate_ms"] for r in rows])
        cost.add(
            name,
            median([r["per_second"] for r in rows]),
            gate_ms,
            median([r["postgres_ms"] for r in rows]),
            f"{gate_ms / plain:.2f}×",
        )
    write_results(
        "harvest",
        "Harvests: windows created, and the gate's cost per window",
        {"create": create, "sizes": sizes, "costs": costs, "settled": n},
        {"windows created in one call (median of runs)": created, f"{n:,} settled, 16 at a time": cost},
        None,
        notes=[
            "A window is a ledger row and its search task, inserted by one statement.",
            "The id_range job of as many tasks (chunks of 1) is the baseline, measured in the same run.",
        ],
    )
