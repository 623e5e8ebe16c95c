"""Client throughput against --concurrency: 2,000 documents of 10 KB from a local origin, per level.

Starts a gate (embedded PostgreSQL in a temporary DATA_DIR), `docgate origin`
and, for each concurrency level, one `docgate client --exit-when-idle` on a
fresh job (new ids, so nothing is skipped); documents/s is the job's size over
the client's wall time. Each level runs --repeat times; the median is shown.
Run: .venv/bin/python benchmarks/client_concurrency.py [--docs 2000] [--repeat 3]
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
LEVELS = [1, 8, 64, 256]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def docgate(*args: str) -> list[str]:
    return [sys.executable, "-m", "docgate.cli", *args]


def wait_healthy(url: str) -> None:
    for _ in range(300):
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise SystemExit("gate did not start")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--docs", type=int, default=2000)
    parser.add_argument("--size", type=int, default=10_240)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="docgate-bench-"))
    gate_port, origin_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "DB_"))}
    env |= {
        "DATA_DIR": str(work / "data"),
        "API_PORT": str(gate_port),
        "ADMIN_API_KEY": ADMIN,
        "LOG_LEVEL": "WARNING",
        "HOST_RATE_LIMIT": "0",  # a local origin: no per-host budget
        "HOST_CONNECTIONS": "0",
    }
    gate = subprocess.Popen(docgate("server"), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    origin = subprocess.Popen(
        docgate("origin", "--port", str(origin_port), "--size", str(args.size)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url, origin_url = f"http://127.0.0.1:{gate_port}", f"http://127.0.0.1:{origin_port}"
    admin = {"X-API-Key": ADMIN}
    results: dict[int, list[float]] = {}
    try:
        wait_healthy(url)
        key = httpx.post(
            url + "/api/v1/clients/register", headers=admin, json={"client_name": "bench"}
        ).json()["api_key"]
        next_id = 1
        for level in LEVELS:
            for _ in range(args.repeat):
                httpx.post(
                    url + "/api/v1/jobs",
                    headers=admin,
                    json={
                        "source": "id_range",
                        "chunk_size": 100,
                        "params": {
                            "url_template": origin_url + "/doc/{id}.bin",
                            "start_id": next_id,
                            "count": args.docs,
                            "ext": ".bin",
                        },
                    },
                ).raise_for_status()
                next_id += args.docs
                started = time.perf_counter()
                flags = [
                    "--api-url",
                    url,
                    "--api-key",
                    key,
                    "--exit-when-idle",
                    "--concurrency",
                    str(level),
                    "--max-tasks",
                    str(max(2, level // 50)),
                    "--output-dir",
                    str(work / "store"),
                    "--allow-network",
                    "127.0.0.0/8",
                    "--progress",
                    "log",
                    "--log-level",
                    "WARNING",
                    "--poll-interval",
                    "0.5",
                ]
                subprocess.run(
                    docgate("client", *flags),
                    check=True,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                results.setdefault(level, []).append(args.docs / (time.perf_counter() - started))
    finally:
        for proc in (origin, gate):
            proc.terminate()
            proc.wait(30)
    print(f"{'concurrency':>12} {'docs/s (median)':>16} {'runs':>24}")
    for level, rates in results.items():
        runs = ", ".join(f"{r:.0f}" for r in rates)
        print(f"{level:>12} {statistics.median(rates):>16.0f} {runs:>24}")
    base = statistics.median(results[LEVELS[0]])
    print(
        "ratio to concurrency 1: "
        + ", ".join(f"{lvl}: {statistics.median(r) / base:.1f}x" for lvl, r in results.items())
    )
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "client_concurrency.json").write_text(
        json.dumps({"docs": args.docs, "size": args.size, "docs_per_second": results}, indent=2)
    )


if __name__ == "__main__":
    main()
