"""Scenario 6 — the dashboard's overview and a /metrics scrape with 10 M tasks in the table.

A gate serves the creation scenario's 10 M-task database (thousands of tasks
already leased and completed by the backlog scenario, so every panel has
data), and the same requests are timed against the 10 k-task database as the
baseline. Each request is repeated 30 times (--quick: 10) after one warm-up.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx

from benchmarks.lib import ADMIN, Postgres, Processes, Table, figure, median, pct, running_gate, write_results

PAGES = {"dashboard overview (/ui/live)": "/ui/live", "/metrics scrape": "/metrics"}


def timings(pg: Postgres, procs: Processes, work: Path, dsn: str, repeat: int) -> dict[str, list[float]]:
    with (
        running_gate(procs, dsn, work, log=work / "gate.log") as gate,
        httpx.Client(base_url=gate.url, timeout=60) as ui,
    ):
        login = ui.post("/ui/login", data={"api_key": ADMIN})
        if login.status_code != 303 or "docgate_admin" not in str(login.headers.get("set-cookie")):
            raise RuntimeError(f"dashboard login failed: {login.status_code} {login.text[:200]}")
        out: dict[str, list[float]] = {}
        for name, path in PAGES.items():
            ui.get(path).raise_for_status()  # warm-up
            samples = []
            for _ in range(repeat):
                started = time.perf_counter()
                reply = ui.get(path)
                samples.append((time.perf_counter() - started) * 1000)
                reply.raise_for_status()
            out[name] = samples
        return out


def scenario(
    pg: Postgres, procs: Processes, work: Path, *, quick: bool, repeat: int, state: dict[str, Any]
) -> None:
    scale, small = state.get("scale"), state.get("small")
    if not scale or not small:
        raise SystemExit("dashboard needs the creation and backlog scenarios first (their databases)")
    count = 10 if quick else 30
    big = timings(pg, procs, work, scale["dsn"], count)
    base = timings(pg, procs, work, small["dsn"], count)
    table = Table(
        [
            "request",
            f"median ms at {scale['tasks']:,}",
            "p95 ms",
            f"median ms at {small['tasks']:,}",
            "ratio",
            "target",
        ]
    )
    for name in PAGES:
        table.add(
            name,
            median(big[name]),
            pct(big[name], 95),
            median(base[name]),
            f"{median(big[name]) / median(base[name]):.2f}×",
            "< 200 ms: met" if median(big[name]) < 200 else "< 200 ms: MISSED",
        )
    fig, axes = figure(1)
    ax = axes[0][0]
    runs = ((f"{small['tasks']:,} tasks", base), (f"{scale['tasks']:,} tasks", big))
    for i, (label, data) in enumerate(runs):
        ax.bar(
            [x + (i - 0.5) * 0.4 for x in range(len(PAGES))],
            [median(data[p]) for p in PAGES],
            0.4,
            label=label,
        )
    ax.set_xticks(range(len(PAGES)), list(PAGES))
    ax.axhline(200, color="red", linestyle=":", label="target 200 ms")
    ax.set_ylabel("ms (median)")
    ax.legend()
    write_results(
        "dashboard",
        "Dashboard overview and /metrics with 10 M tasks",
        {"tasks": scale["tasks"], "baseline_tasks": small["tasks"], "samples_ms": {"big": big, "base": base}},
        {"response times": table},
        fig,
        notes=[f"{count} requests each after a warm-up; one client."],
    )
