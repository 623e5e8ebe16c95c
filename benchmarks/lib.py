"""What every scenario shares: one PostgreSQL, gate processes, timing, and result files.

Every process a scenario starts is registered with `Processes` and stopped (by
its pid, group included) when the scenario ends, however it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import asyncpg
import httpx

RESULTS = Path(__file__).parent / "results"
ADMIN = "bench-admin-key-0123456789abcdef"
TEMPLATE = "docgate_template"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pct(samples: Sequence[float], q: float) -> float:
    """The q-th percentile (0–100) by nearest rank; nan for no samples."""
    if not samples:
        return float("nan")
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


# ---- processes


@dataclass
class Processes:
    """Processes started by a scenario; `stop_all` ends each of them (and its children) by pid."""

    running: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(
        self,
        argv: list[str],
        *,
        env: dict[str, str] | None = None,
        log: Path | None = None,
        cwd: Path | None = None,
    ) -> subprocess.Popen[bytes]:
        out = log.open("ab") if log else subprocess.DEVNULL
        proc = subprocess.Popen(
            argv,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT if log else out,
            cwd=cwd,
            start_new_session=True,
        )
        self.running.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        if proc in self.running:
            self.running.remove(proc)

    def stop_all(self) -> None:
        for proc in reversed(list(self.running)):
            self.stop(proc)


@contextlib.contextmanager
def processes() -> Iterator[Processes]:
    procs = Processes()
    try:
        yield procs
    finally:
        procs.stop_all()


# ---- PostgreSQL


class Postgres:
    """pgserver's PostgreSQL in a temporary folder, removed with everything in it at the end."""

    def __init__(self, root: Path) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import pgserver

        self.server = pgserver.get_server(root / "pg", cleanup_mode="delete")
        self.version = self.server.psql("SHOW server_version;").splitlines()[2].strip()
        self.pid = int(self.server.get_pid())

    def dsn(self, database: str) -> str:
        return str(self.server.get_uri(database))

    def psql(self, sql: str) -> str:
        return str(self.server.psql(sql))

    def fresh(self, name: str, template: str | None = TEMPLATE) -> str:
        """A new database (a copy of the migrated template by default); returns its DSN."""
        self.psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE);")
        self.psql(f"CREATE DATABASE {name}" + (f" TEMPLATE {template};" if template else ";"))
        return self.dsn(name)

    def prepare_template(self) -> None:
        """The docgate schema, migrated once, copied by `fresh` into each run's database."""
        from server.db.migrate import migrate_dsn

        dsn = self.fresh(TEMPLATE, template=None)
        asyncio.run(migrate_dsn(dsn))

    def drop(self, name: str) -> None:
        self.psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE);")

    def stop(self) -> None:
        self.server.cleanup()


@contextlib.contextmanager
def postgres() -> Iterator[Postgres]:
    root = Path(tempfile.mkdtemp(prefix="docgate-bench-pg-"))
    pg = Postgres(root)
    try:
        pg.prepare_template()
        yield pg
    finally:
        pg.stop()
        subprocess.run(["rm", "-rf", str(root)], check=False)


# ---- the gate


@dataclass
class Gate:
    url: str
    proc: subprocess.Popen[bytes]
    admin: dict[str, str]

    def register(self, name: str) -> str:
        reply = httpx.post(
            self.url + "/api/v1/clients/register", headers=self.admin, json={"client_name": name}, timeout=30
        )
        reply.raise_for_status()
        return str(reply.json()["api_key"])

    def create_job(
        self, url_template: str, count: int, chunk_size: int = 1, start_id: int = 1, ext: str = ""
    ) -> float:
        """Create a job through the API; return the seconds until all its tasks exist (a job
        larger than JOB_BACKGROUND_TASKS is answered 202 and created in the background)."""
        started = time.perf_counter()
        reply = httpx.post(
            self.url + "/api/v1/jobs",
            headers=self.admin,
            timeout=7200,
            json={
                "source": "id_range",
                "chunk_size": chunk_size,
                "params": {"url_template": url_template, "start_id": start_id, "count": count, "ext": ext},
            },
        )
        reply.raise_for_status()
        job = reply.json()
        while job.get("creating"):
            time.sleep(0.2)
            job = httpx.get(f"{self.url}/api/v1/jobs/{job['job_id']}", headers=self.admin, timeout=60).json()
        return time.perf_counter() - started


@contextlib.contextmanager
def running_gate(
    procs: Processes,
    dsn: str,
    work: Path,
    *,
    workers: int = 1,
    env: dict[str, str] | None = None,
    log: Path | None = None,
) -> Iterator[Gate]:
    """A gate process on `dsn`, healthy on entry, stopped (by pid) on exit."""
    gate = _start_gate(procs, dsn, work, workers, env, log)
    try:
        yield gate
    finally:
        procs.stop(gate.proc)


def _start_gate(
    procs: Processes, dsn: str, work: Path, workers: int, env: dict[str, str] | None, log: Path | None
) -> Gate:
    port = free_port()
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "DB_"))}
    environment |= {
        "DATABASE_URL": dsn,
        "DATA_DIR": str(work),
        "API_PORT": str(port),
        "ADMIN_API_KEY": ADMIN,
        "LOG_LEVEL": "WARNING",
        "DB_POOL_MAX": "20",
        # Benchmarks measure docgate, not a registry's budget: their origins are local.
        "HOST_RATE_LIMIT": "0",
        "HOST_CONNECTIONS": "0",
        **(env or {}),
    }
    proc = procs.start(
        [sys.executable, "-m", "docgate.cli", "server", "--workers", str(workers)], env=environment, log=log
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"gate exited with {proc.returncode}" + (f"; see {log}" if log else ""))
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return Gate(url, proc, {"X-API-Key": ADMIN})
        time.sleep(0.2)
    raise RuntimeError("gate did not become healthy in 120 s")


async def connect(dsn: str) -> asyncpg.Connection:
    from server.db.pool import _init_connection

    conn = await asyncpg.connect(dsn)
    await _init_connection(conn)
    return conn


# ---- what the machine and the software are


def versions(pg: Postgres | None = None) -> dict[str, str]:
    found = {"python": platform.python_version()}
    for package in ("docgate", "fastapi", "uvicorn", "asyncpg", "aiohttp", "pgqueuer", "pgserver"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            found[package] = metadata.version(package)
    if pg is not None:
        found["postgresql"] = pg.version
    for tool, flag in (
        ("nginx", "-v"),
        ("aria2c", "--version"),
        ("wget2", "--version"),
        ("curl", "--version"),
    ):
        with contextlib.suppress(OSError):
            out = subprocess.run([tool, flag], capture_output=True, text=True, timeout=10)
            text = (out.stdout or out.stderr).splitlines()
            if text:
                found[tool] = text[0].strip()
    return found


def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        mem = int(Path("/proc/meminfo").read_text().split()[1]) // 1024
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "memory_mib": mem,
        "kernel": platform.release(),
        "system": platform.system(),
    }


# ---- results


@dataclass
class Table:
    columns: list[str]
    rows: list[list[Any]] = field(default_factory=list)

    def add(self, *cells: Any) -> None:
        self.rows.append(list(cells))

    def markdown(self) -> str:
        lines = ["| " + " | ".join(self.columns) + " |", "|" + "---|" * len(self.columns)]
        lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in self.rows]
        return "\n".join(lines)

    def text(self) -> str:
        cells = [self.columns, *[[_cell(c) for c in row] for row in self.rows]]
        widths = [max(len(str(row[i])) for row in cells) for i in range(len(self.columns))]
        return "\n".join(
            "  ".join(str(c).rjust(w) for c, w in zip(row, widths, strict=True)) for row in cells
        )


def _cell(value: Any) -> str:
    if isinstance(value, float):
        if value != value:  # nan
            return "–"
        return f"{value:,.2f}" if abs(value) < 10 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def write_results(
    name: str,
    title: str,
    data: dict[str, Any],
    tables: dict[str, Table],
    chart: Any | None = None,
    notes: Sequence[str] = (),
) -> None:
    """benchmarks/results/<name>.json, .md and (with `chart`, a matplotlib figure) .png."""
    RESULTS.mkdir(exist_ok=True)
    data = {
        "scenario": name,
        "title": title,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "machine": machine(),
        "versions": versions(),
        **data,
        "tables": {k: {"columns": t.columns, "rows": t.rows} for k, t in tables.items()},
    }
    (RESULTS / f"{name}.json").write_text(json.dumps(data, indent=2, default=str) + "\n")
    parts = [f"## {title}", ""]
    for caption, table in tables.items():
        parts += [f"**{caption}**", "", table.markdown(), ""]
        print(f"\n{title}: {caption}\n{table.text()}", flush=True)
    parts += [f"- {n}" for n in notes]
    if chart is not None:
        chart.savefig(RESULTS / f"{name}.png", dpi=110, bbox_inches="tight")
        parts += ["", f"![{title}]({name}.png)"]
    (RESULTS / f"{name}.md").write_text("\n".join(parts).rstrip() + "\n")


def figure(ncols: int = 1, width: float = 6.5, height: float = 3.8) -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(1, ncols, figsize=(width * ncols, height), squeeze=False)


# ---- where the CPU went


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its live children (PostgreSQL's backends, say)."""
    import psutil

    total = 0.0
    try:
        root = psutil.Process(pid)
        family = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    for proc in family:
        with contextlib.suppress(psutil.NoSuchProcess):
            t = proc.cpu_times()
            total += t.user + t.system + (t.children_user + t.children_system if proc is root else 0)
    return total


@dataclass
class CpuMeter:
    """CPU seconds spent by named processes between start() and stop()."""

    pids: dict[str, int]
    spent: dict[str, float] = field(default_factory=dict)

    def start(self) -> None:
        self._before = {name: cpu_seconds(pid) for name, pid in self.pids.items()}

    def stop(self) -> dict[str, float]:
        self.spent = {name: cpu_seconds(pid) - self._before[name] for name, pid in self.pids.items()}
        return self.spent


# ---- profiles (py-spy)


RATE = 250  # py-spy samples per second


def py_spy_argv(out: Path, *, pid: int | None = None, argv: Sequence[str] = ()) -> list[str]:
    """`py-spy record` of a running pid or of a command it starts, collapsed stacks into `out`.

    Only busy samples are kept (a thread waiting on a socket, a lock or an
    empty queue is not sampled), so a function's share is of CPU-bound time."""
    spy = Path(sys.executable).with_name("py-spy")
    base = [
        str(spy),
        "record",
        "--format",
        "raw",
        "--rate",
        str(RATE),
        "--threads",
        "--nonblocking",
        "-o",
        str(out),
    ]
    return [*base, "--pid", str(pid)] if pid is not None else [*base, "--", *argv]


ROLES = (
    ("thread pool (storage, DNS)", "concurrent/futures/thread.py"),
    ("log writer thread", "logging/handlers.py"),
)


def summarise_profile(raw: Path, top: int = 12) -> str:
    """Where the busy samples went, per kind of thread: busy seconds, then the functions
    with the most samples of their own ("self") and docgate's functions by inclusive share.

    py-spy's raw format is one collapsed stack per line, `thread (tid);frame;... count`,
    frames `function (file:line)`. Threads are grouped by role: the thread pool that
    runs storage writes and DNS lookups, the log writer, and the event loop (the rest)."""
    roles: dict[str, dict[str, Counter[str]]] = {}
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = [_frame(f) for f in stack.split(";") if not f.startswith(("thread (", "process "))]
        if not frames:
            continue
        role = next((name for name, marker in ROLES if marker in stack), "event loop (main thread)")
        stats = roles.setdefault(role, {"self": Counter(), "total": Counter(), "n": Counter()})
        n = int(count)
        stats["n"]["samples"] += n
        stats["self"][frames[-1]] += n
        for f in set(frames):
            stats["total"][f] += n
    lines: list[str] = []
    for role, stats in sorted(roles.items(), key=lambda kv: -kv[1]["n"]["samples"]):
        samples = stats["n"]["samples"]
        lines.append(f"{role}: {samples / RATE:.1f} s busy ({samples:,} samples)")
        lines.append(f"  {'self %':>7}  function")
        for name, n in stats["self"].most_common(top):
            lines.append(f"  {100 * n / samples:6.1f}%  {name}")
        own = [(k, v) for k, v in stats["total"].most_common() if _ours(k)]
        if own:
            lines.append(f"  {'total %':>7}  docgate's own functions, inclusive")
            for name, n in own[:top]:
                lines.append(f"  {100 * n / samples:6.1f}%  {name}")
        lines.append("")
    return "\n".join(lines)


def _frame(frame: str) -> str:
    """`fetch (client/download.py:120)` → `fetch (client/download.py)`, paths cut to the package."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    for marker in ("site-packages/", "/lib/python3."):
        if marker in path:
            path = path.split(marker, 1)[1]
            if marker.startswith("/lib"):
                path = path.split("/", 1)[-1]
            break
    else:
        root = str(Path(__file__).resolve().parent.parent) + "/"
        path = path.removeprefix(root)
    return f"{name} ({path})"


def _ours(frame: str) -> bool:
    return any(f"({p}/" in frame for p in ("client", "server", "storage", "protocol", "common"))
