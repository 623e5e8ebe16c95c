"""`docgate demo`: the whole pipeline on one machine, in one command.

Starts the gate (embedded PostgreSQL), a simulated registry (`docgate origin`,
answering 1 % of requests with 503 to show retries), creates a job of 10,000
documents, runs two clients, shows their progress and prints a summary. Every
process it starts is stopped on exit or Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

console = Console(stderr=True)


def add_command(sub: Any) -> None:
    p = sub.add_parser("demo", help="run gate, registry, a 10,000-document job and two clients")
    p.add_argument("--documents", type=int, default=10_000)
    p.add_argument("--clients", type=int, default=2)
    p.add_argument("--size", type=int, default=10_240, help="document size in bytes")
    p.add_argument("--data-dir", default="data/demo", help="replaced on every run (default data/demo)")
    p.add_argument("--timeout", type=float, default=900)
    p.add_argument(
        "--registry",
        action="store_true",
        help="search the simulated court-decision registry through a stored source profile instead",
    )
    p.set_defaults(run=run_demo)


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Processes:
    """Children in their own process groups, all stopped together."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.children: list[tuple[subprocess.Popen[bytes], Any]] = []

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        log = (self.logs / f"{name}.log").open("wb")
        # argv is built here from sys.executable and our own flags, never from input.
        proc = subprocess.Popen(  # noqa: S603
            argv,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.children.append((proc, log))
        return proc

    def stop(self) -> None:
        for proc, _ in reversed(self.children):
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        for proc, log in reversed(self.children):
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
            log.close()


def run_demo(args: argparse.Namespace) -> int:
    if args.documents < 1 or args.clients < 1:
        raise SystemExit("docgate demo: --documents and --clients must be at least 1")
    data = Path(args.data_dir).resolve()
    shutil.rmtree(data, ignore_errors=True)
    data.mkdir(parents=True)
    processes = Processes(data)
    try:
        return (_registry_demo if args.registry else _demo)(args, data, processes)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted; stopping everything[/]")
        return 130
    finally:
        processes.stop()


def _demo(args: argparse.Namespace, data: Path, processes: Processes) -> int:
    python = [sys.executable, "-m", "docgate.cli"]
    admin = "demo-" + secrets.token_urlsafe(24)
    gate_port, origin_port = _port(), _port()
    gate_url, origin_url = f"http://127.0.0.1:{gate_port}", f"http://127.0.0.1:{origin_port}"
    store = data / "documents"
    base = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "DB_", "DOCGATE_"))}
    console.print(f"[bold]docgate demo[/] in {data}")
    processes.start(
        "gate",
        [*python, "server"],
        base
        | {
            "DATA_DIR": str(data),
            "API_PORT": str(gate_port),
            # The demo's origin is its own, on this machine: no per-host budget.
            "HOST_RATE_LIMIT": "0",
            "HOST_CONNECTIONS": "0",
            "ADMIN_API_KEY": admin,
            "STORAGE_URL": str(store),
            "LOG_LEVEL": "WARNING",
        },
    )
    processes.start(
        "origin",
        [*python, "origin", "--port", str(origin_port), "--size", str(args.size), "--error-rate", "0.01"],
        base,
    )
    http = httpx.Client(base_url=gate_url, headers={"X-API-Key": admin}, timeout=30)
    _wait_for(gate_url + "/health", "gate")
    _wait_for(origin_url + "/search", "origin")
    console.print(f"  gate    {gate_url}  (embedded PostgreSQL in {data / 'pg'})")
    console.print(f"  origin  {origin_url}  (simulated registry, 1 % of answers are 503)")
    job = http.post(
        "/api/v1/jobs",
        json={
            "source": "id_range",
            "chunk_size": 100,
            "params": {
                "url_template": origin_url + "/doc/{id}.bin",
                "start_id": 1,
                "count": args.documents,
                "ext": ".bin",
            },
        },
    ).json()
    console.print(f"  job     {job['job_id']}: {args.documents} documents in {job['tasks_created']} tasks")
    for i in range(args.clients):
        key = http.post("/api/v1/clients/register", json={"client_name": f"demo-client-{i + 1}"}).json()
        processes.start(
            f"client-{i + 1}",
            [
                *python,
                "client",
                "--api-url",
                gate_url,
                "--api-key",
                key["api_key"],
                "--client-name",
                f"demo-client-{i + 1}",
                "--output-dir",
                str(store),
                "--allow-network",
                "127.0.0.0/8",
                "--exit-when-idle",
                "--progress",
                "log",
                "--concurrency",
                "32",
                "--max-tasks",
                "3",
                "--poll-interval",
                "1",
            ],
            base,
        )
    started = time.monotonic()
    final = _follow(http, job["job_id"], args)
    elapsed = time.monotonic() - started
    return _summary(final, elapsed, store, data, args)


def _registry_demo(args: argparse.Namespace, data: Path, processes: Processes) -> int:
    """The seed's searches of a court-decision registry: a source profile stored on the gate,
    search tasks created as the seed's curl did, spread over the clients (spread_chunk_size)."""
    from docgate.registry import RegistryConfig, expected, profile

    python = [sys.executable, "-m", "docgate.cli"]
    admin = "demo-" + secrets.token_urlsafe(24)
    gate_port, registry_port = _port(), _port()
    gate_url, registry_url = f"http://127.0.0.1:{gate_port}", f"http://127.0.0.1:{registry_port}"
    store = data / "documents"
    base = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "DB_", "DOCGATE_"))}
    console.print(f"[bold]docgate demo --registry[/] in {data}")
    env = {
        "DATA_DIR": str(data),
        "API_PORT": str(gate_port),
        "ADMIN_API_KEY": admin,
        "STORAGE_URL": str(store),
    }
    processes.start("gate", [*python, "server"], base | env | {"LOG_LEVEL": "WARNING"})
    processes.start("registry", [*python, "origin", "--registry", "--port", str(registry_port)], base)
    http = httpx.Client(base_url=gate_url, headers={"X-API-Key": admin}, timeout=30)
    _wait_for(gate_url + "/health", "gate")
    _wait_for(registry_url + "/_stats", "registry")
    polite = profile(registry_url) | {"spread_chunk_size": 10, "politeness": {"requests_per_second": 20}}
    http.put("/api/v1/sources/reyestr", json=polite).raise_for_status()
    regions = ["11", "12", "13", "14"]
    for region in regions:
        task = {"source": "reyestr", "search_params": {"CourtRegion": region, "INSType": "1"},
                "start_page": 1, "max_documents": 1000}  # fmt: skip
        http.post("/api/v1/tasks/create", json=task).raise_for_status()
    want = sum(len(expected(RegistryConfig(), frozenset({int(r)}), frozenset({1}))) for r in regions)
    console.print(f"  gate      {gate_url}  (embedded PostgreSQL in {data / 'pg'})")
    console.print(f"  registry  {registry_url}  (form POST search, session paging, RTF originals)")
    console.print(
        f"  searches  {len(regions)} (CourtRegion {', '.join(regions)}, INSType 1): {want} decisions"
    )
    for i in range(args.clients):
        key = http.post("/api/v1/clients/register", json={"client_name": f"demo-client-{i + 1}"}).json()
        argv = ["client", "--api-url", gate_url, "--api-key", key["api_key"], "--client-name",
                f"demo-client-{i + 1}", "--output-dir", str(store), "--allow-network", "127.0.0.0/8",
                "--exit-when-idle", "--progress", "log", "--poll-interval", "1"]  # fmt: skip
        processes.start(f"client-{i + 1}", [*python, *argv], base)
    started = time.monotonic()
    deadline = started + args.timeout
    with Progress(
        TextColumn("{task.description:<16}"), BarColumn(), MofNCompleteColumn(), console=console
    ) as bar:
        row = bar.add_task("decisions", total=want)
        while time.monotonic() < deadline:
            status = http.get("/api/v1/tasks/status").json()["counts"]
            stored = http.get("/api/v1/stats").json()["documents"]
            bar.update(row, completed=stored)
            if status["pending"] + status["assigned"] == 0 and status["completed"] > len(regions):
                break
            time.sleep(0.5)
    elapsed = time.monotonic() - started
    files = sorted(store.rglob("*.rtf"))
    console.print(
        f"\n[bold]{stored} of {want} decisions stored[/] in {elapsed:.1f} s, {len(files)} RTF files"
    )
    console.print(f"  tasks   {status} (the searches spread their results into download tasks)")
    console.print(f"  logs    {data}/gate.log, registry.log, client-*.log")
    return 0 if stored == want else 1


def _wait_for(url: str, what: str, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(url, timeout=2).status_code < 500:
                return
        time.sleep(0.2)
    raise SystemExit(f"docgate demo: the {what} did not start; see its log in the data folder")


def _follow(http: httpx.Client, job_id: str, args: argparse.Namespace) -> dict[str, Any]:
    columns = (
        TextColumn("{task.description:<16}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeRemainingColumn(),
    )
    deadline = time.monotonic() + args.timeout
    with Progress(*columns, console=console) as bar:
        total = bar.add_task("all documents", total=args.documents, rate="")
        rows = {}
        while True:
            job = http.get(f"/api/v1/jobs/{job_id}").json()
            done = job["documents_downloaded"] + job["documents_failed"] + job["documents_skipped"]
            bar.update(total, completed=done)
            for client in http.get("/api/v1/clients").json()["clients"]:
                name = client["client_name"]
                if name not in rows:
                    rows[name] = bar.add_task(name, total=None, rate="")
                rate = client["docs_per_minute"] or 0
                bar.update(rows[name], rate=f"{rate / 60:6.0f} docs/s", completed=0)
            if job["progress"] >= 1.0 or time.monotonic() > deadline:
                return job  # type: ignore[no-any-return]
            time.sleep(0.5)


def _summary(job: dict[str, Any], elapsed: float, store: Path, data: Path, args: argparse.Namespace) -> int:
    stored, failed = job["documents_downloaded"], job["documents_failed"]
    finished = job["progress"] >= 1.0
    files = sorted(p for p in store.rglob("*.bin"))
    size = sum(p.stat().st_size for p in files)
    console.print()
    console.print(
        f"[bold]{'done' if finished else 'timed out'}[/] in {elapsed:.1f} s: "
        f"{stored} documents stored, {job['documents_skipped']} skipped, {failed} failed "
        f"of {args.documents}"
    )
    console.print(
        f"  throughput  {stored / elapsed:.0f} documents/s, {size / elapsed / 1e6:.1f} MB/s "
        f"with {args.clients} clients"
    )
    console.print(f"  tasks       {job['counts']}")
    example = files[0].relative_to(store) if files else "-"
    console.print(f"  files       {len(files)} in {store} (sharded: <id // 50000>/<id>.bin, e.g. {example})")
    console.print(f"  logs        {data}/gate.log, origin.log, client-*.log")
    return 0 if finished and stored + job["documents_skipped"] + failed == args.documents else 1
