"""Run the benchmark scenarios: `python -m benchmarks.run [--quick] [--only NAME ...]`.

Every scenario shares one embedded PostgreSQL (pgserver, in a temporary
folder) and stops every process it started. Results go to benchmarks/results/
as <scenario>.json, .md and .png; summary.md gathers the tables.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import shutil
import tempfile
import time
from pathlib import Path

import uvloop

from benchmarks.lib import RESULTS, postgres, processes

SCENARIOS = (
    "control_plane", "creation", "backlog", "dashboard", "busy", "data_plane", "many_clients", "grants",
    "export", "harvest", "fleet", "wacz", "verification",
)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, one run each (~2 minutes)")
    parser.add_argument("--only", nargs="+", choices=SCENARIOS, help="run just these scenarios")
    parser.add_argument("--repeat", type=int, help="runs per measurement (default 3; 1 with --quick)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (the processes' logs)")
    args = parser.parse_args()
    # Every driver (HTTP load, SQL floor, pgqueuer) runs on uvloop, as the gate does.
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    repeat = args.repeat or (1 if args.quick else 3)
    chosen = args.only or list(SCENARIOS)
    work = Path(tempfile.mkdtemp(prefix="docgate-bench-"))
    started = time.monotonic()
    state: dict[str, object] = {}  # what one scenario leaves for the next (the 10 M-task database)
    try:
        with postgres() as pg, processes() as procs:
            for name in SCENARIOS:
                if name not in chosen:
                    continue
                print(f"\n=== {name} ===", flush=True)
                module = importlib.import_module(f"benchmarks.{name}")
                began = time.monotonic()
                module.scenario(pg, procs, work, quick=args.quick, repeat=repeat, state=state)
                print(f"=== {name}: {time.monotonic() - began:.0f} s", flush=True)
    finally:
        if args.keep:
            print(f"the work folder, logs included, is kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    parts = [(RESULTS / f"{name}.md").read_text() for name in SCENARIOS if (RESULTS / f"{name}.md").exists()]
    (RESULTS / "summary.md").write_text("\n".join(parts))
    print(f"\nall done in {time.monotonic() - started:.0f} s; results in {RESULTS}")


if __name__ == "__main__":
    main()
