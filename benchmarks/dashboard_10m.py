"""Dashboard overview and /metrics with 10,000,000 tasks in the table.

Starts a gate on embedded PostgreSQL in a temporary DATA_DIR, creates one job
of 10,000,000 ids in chunks of 1 (10 M tasks, one request), completes a few
thousand through the API so every panel has data, then times the dashboard's
live overview (/ui/live) and a /metrics scrape. Prints medians and p95 of
--repeat requests each, writes benchmarks/results/dashboard_10m.json.
Run: .venv/bin/python benchmarks/dashboard_10m.py [--tasks 10000000]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ADMIN = "bench-admin-key-0123456789abcdef"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def timed(client: httpx.Client, path: str, repeat: int) -> list[float]:
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        r = client.get(path)
        samples.append((time.perf_counter() - started) * 1000)
        r.raise_for_status()
    return samples


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=10_000_000)
    parser.add_argument("--repeat", type=int, default=30)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="docgate-10m-"))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "DB_"))}
    env |= {"DATA_DIR": str(work / "data"), "API_PORT": str(port), "ADMIN_API_KEY": ADMIN,
            "LOG_LEVEL": "WARNING"}
    gate = subprocess.Popen([sys.executable, "-m", "docgate.cli", "server"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    admin = {"X-API-Key": ADMIN}
    try:
        for _ in range(300):
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        started = time.perf_counter()
        job = httpx.post(url + "/api/v1/jobs", headers=admin, timeout=3600, json={
            "source": "id_range", "chunk_size": 1, "params": {
                "url_template": "https://registry.example/doc/{id}", "start_id": 1, "count": args.tasks}})
        job.raise_for_status()
        created_s = time.perf_counter() - started
        key = httpx.post(url + "/api/v1/clients/register", headers=admin,
                         json={"client_name": "bench"}).json()["api_key"]
        worker = httpx.Client(base_url=url, headers={"X-API-Key": key}, timeout=60)
        for _ in range(30):  # 3,000 completions so the panels have something to show
            tasks = worker.post("/api/v1/tasks/request", params={"max_tasks": 100}).json()["tasks"]
            for t in tasks:
                worker.post("/api/v1/tasks/complete", json={"task_id": t["task_id"],
                                                           "lease_token": t["lease_token"],
                                                           "documents_downloaded": 1})
        ui = httpx.Client(base_url=url, timeout=60)
        ui.post("/ui/login", data={"api_key": ADMIN})
        results = {"tasks": args.tasks, "job_creation_seconds": round(created_s, 1),
                   "ui_live_ms": timed(ui, "/ui/live", args.repeat),
                   "metrics_ms": timed(httpx.Client(base_url=url, timeout=60), "/metrics", args.repeat),
                   "lease_ms": timed(worker, "/api/v1/tasks/request", args.repeat)}
    finally:
        gate.terminate()
        gate.wait(120)
    print(f"{args.tasks:,} tasks created in one request in {results['job_creation_seconds']} s "
          f"({args.tasks / results['job_creation_seconds']:,.0f} tasks/s)")
    print(f"{'request':<28} {'median ms':>10} {'p95 ms':>8}")
    for name in ("ui_live_ms", "metrics_ms", "lease_ms"):
        samples = sorted(results[name])
        p95 = samples[int(len(samples) * 0.95) - 1]
        print(f"{name:<28} {statistics.median(samples):>10.1f} {p95:>8.1f}")
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "dashboard_10m.json").write_text(json.dumps(results, indent=2))
    subprocess.run(["rm", "-rf", str(work)], check=False)


if __name__ == "__main__":
    main()
