"""Scenario 13 — the cost of checking workers against each other: `verify_sample` 0, 1 % and 5 %.

One gate on a fresh database, `docgate origin` serving 10 KB documents, three honest `docgate
client`s (--concurrency 8): a job of 6,000 documents (--quick: 1,500) in tasks of 100, with no
`verify_sample` (the baseline of the same run), 0.01 and 0.05. Each run lasts until every task
of the job has ended and no check is pending or out. Reported: wall time, documents the origin
served (each check is one more fetch), checks settled, and the CPU of the gate and PostgreSQL
against the baseline's. Honest clients only: every check must agree (a run with a disputed or
lost check fails the scenario).
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from benchmarks.lib import (
    CpuMeter,
    Postgres,
    Processes,
    Table,
    connect,
    free_port,
    running_gate,
    write_results,
)

SAMPLES = (0.0, 0.01, 0.05)
CLIENTS = 3


def one(pg: Postgres, procs: Processes, work: Path, documents: int, sample: float) -> dict[str, Any]:
    dsn = pg.fresh(f"bench_verify_{int(sample * 1000)}")
    port = free_port()
    origin = procs.start(
        [sys.executable, "-m", "docgate.cli", "origin", "--port", str(port), "--size", "10240"],
        log=work / f"origin-{sample}.log",
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(base + "/_stats", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    with running_gate(procs, dsn, work, log=work / f"gate-{sample}.log") as gate:
        body: dict[str, Any] = {
            "source": "id_range", "chunk_size": 100,
            "params": {"url_template": base + "/doc/{id}.bin", "start_id": 1, "count": documents,
                       "ext": ".bin"},
        }  # fmt: skip
        if sample:
            body["verify_sample"] = sample
        meter = CpuMeter({"gate": gate.proc.pid, "postgres": pg.pid})
        meter.start()
        started = time.perf_counter()
        job = httpx.post(gate.url + "/api/v1/jobs", headers=gate.admin, json=body, timeout=60).json()[
            "job_id"
        ]
        store = work / f"store-{sample}"
        clients = []
        for n in range(CLIENTS):
            argv = [sys.executable, "-m", "docgate.cli", "client", "--api-url", gate.url,
                    "--api-key", gate.register(f"c{n}"), "--client-name", f"c{n}", "--output-dir", str(store),
                    "--allow-network", "127.0.0.0/8", "--concurrency", "8", "--progress", "log"]  # fmt: skip
            clients.append(procs.start(argv, env=os.environ | {"LOG_LEVEL": "WARNING"}))
        settled = asyncio.run(_settled(dsn, uuid.UUID(job)))
        seconds = time.perf_counter() - started
        cpu = meter.stop()
        for proc in clients:
            procs.stop(proc)
    served = httpx.get(base + "/_stats", timeout=10).json()["documents_served"]
    procs.stop(origin)
    pg.drop(f"bench_verify_{int(sample * 1000)}")
    subprocess_rm(store)
    return {"sample": sample, "seconds": seconds, "served": served, **settled, **cpu}


async def _settled(dsn: str, job: uuid.UUID) -> dict[str, int]:
    conn = await connect(dsn)
    try:
        while True:
            open_tasks = await conn.fetchval(
                "SELECT count(*) FROM tasks WHERE job_id = $1 AND status IN ('pending', 'assigned')", job
            )
            open_checks = await conn.fetchval(
                "SELECT count(*) FROM verifications WHERE state IN ('pending', 'queued')"
            )
            recorded = await conn.fetchval("SELECT count(*) FROM documents WHERE job_id = $1", job)
            if not open_tasks and not open_checks and recorded:
                break
            await asyncio.sleep(0.25)
        rows = await conn.fetch("SELECT state, count(*) AS n FROM verifications GROUP BY state")
        states = {r["state"]: r["n"] for r in rows}
        return {"recorded": recorded, "agreed": states.get("agreed", 0),
                "disputed": sum(v for k, v in states.items() if k != "agreed")}  # fmt: skip
    finally:
        await conn.close()


def subprocess_rm(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def scenario(
    pg: Postgres, procs: Processes, work: Path, *, quick: bool, repeat: int, state: dict[str, Any]
) -> None:
    documents = 1_500 if quick else 6_000
    runs = [one(pg, procs, work, documents, sample) for sample in SAMPLES]
    base = runs[0]
    table = Table(["verify_sample", "seconds", "documents served", "extra fetches", "checks agreed",
                   "gate CPU s", "gate CPU / baseline", "PostgreSQL CPU s",
                   "PostgreSQL / baseline"])  # fmt: skip
    for r in runs:
        if r["recorded"] != documents or r["disputed"]:
            raise AssertionError(f"verify_sample {r['sample']}: {r}")
        table.add(f"{r['sample']:.0%}" if r["sample"] else "none", r["seconds"], r["served"],
                  r["served"] - documents, r["agreed"], r["gate"], f"{r['gate'] / base['gate']:.2f}×",
                  r["postgres"], f"{r['postgres'] / base['postgres']:.2f}×")  # fmt: skip
        print(
            f"  verify_sample {r['sample']}: {r['seconds']:.1f} s, {r['served']} served, {r['agreed']} agreed"
        )
    write_results(
        "verification",
        "The cost of checking workers against each other",
        {"documents": documents, "runs": runs},
        {f"{documents:,} documents of 10 KB, three honest clients, one run each": table},
        None,
        notes=[
            "Extra fetches: documents the origin served beyond the job's (each check fetches once more).",
            "CPU of the gate and PostgreSQL from the job's creation until every task and check had ended.",
        ],
    )
