"""The soak: the chaos mix, job after job, for SOAK_MINUTES (30 by `make soak`; not in `make test`).

Gate 0 and client 0 are spared the kill faults (the other gate and clients
are killed, stopped and restarted as in any chaos run), so they live through
the whole soak and their memory shows any growth; it is sampled every 10 s.
After a warm-up (the first 20 % of the run), the largest RSS in the last 20 %
may exceed the largest in the 20 % after the warm-up by at most 64 MiB, for
the surviving gate and the surviving client. Every chaos invariant must hold
at the end, too.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from checker import check, table, violations
from harness import Cluster, Plan

MiB = 1 << 20
GROWTH_BOUND = 64 * MiB
MINUTES = float(os.environ.get("SOAK_MINUTES", "30"))
pytestmark = [pytest.mark.soak, pytest.mark.slow, pytest.mark.timeout(int(MINUTES * 60) + 900)]


def windows(samples: list[dict[str, float]], what: str) -> tuple[float, float]:
    start, end = samples[0]["t"], samples[-1]["t"]
    span = end - start

    def peak(lo: float, hi: float) -> float:
        return max((s[what] for s in samples if lo <= (s["t"] - start) / span <= hi), default=0.0)

    return peak(0.2, 0.4), peak(0.8, 1.0)


def test_soak_memory_stays_flat(tmp_path: Path) -> None:
    plan = Plan(seed=int(os.environ.get("SOAK_SEED", "99")), tasks=500, deadline=600, spare_first=True)
    cluster = Cluster(plan, tmp_path)
    try:
        run = cluster.execute_soak(MINUTES * 60)
        figures = check(run, cluster.s3())
    finally:
        cluster.close()
    report = [
        table(run, figures),
        "",
        "memory (RSS, MiB) every minute:",
        "  min  gate 0  client 0  max gate  max client",
    ]
    first = run.memory[0]["t"]
    for sample in run.memory[::6]:
        report.append(
            f"  {(sample['t'] - first) / 60:3.0f}  {sample['gate 0'] / MiB:6.0f}  "
            f"{sample['client 0'] / MiB:8.0f}  {sample['gates'] / MiB:8.0f}  "
            f"{sample['clients'] / MiB:10.0f}"
        )
    growth = {}
    for what in ("gate 0", "client 0"):
        early, late = windows(run.memory, what)
        growth[what] = late - early
        report.append(
            f"{what}: {early / MiB:.0f} MiB after warm-up, {late / MiB:.0f} MiB at the end "
            f"(growth {growth[what] / MiB:+.0f} MiB, bound +{GROWTH_BOUND // MiB} MiB)"
        )
    text = "\n".join(report)
    print(text)
    results = Path(os.environ.get("CHAOS_RESULTS", "/tmp/docgate-chaos"))
    results.mkdir(parents=True, exist_ok=True)
    (results / "soak.txt").write_text(text + "\n")
    (results / "soak.json").write_text(json.dumps({"fired": run.fired, "memory": run.memory}, indent=1))
    assert violations(figures) == []
    assert len(run.memory) >= 10
    assert all(g <= GROWTH_BOUND for g in growth.values()), growth
