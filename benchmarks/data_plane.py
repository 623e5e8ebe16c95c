"""Scenario 4 — data plane: one docgate client against aria2c, wget2 and curl, same files, same run.

An nginx origin (Debian's nginx, started here on 127.0.0.1) serves 10,000
documents of 10 KB and 20 of 50 MB (random bytes; --quick: 1,000 and 4). Each
tool fetches the same URLs to local disk with 16 transfers in parallel:

- docgate: `docgate client --exit-when-idle --concurrency 16` against a gate
  holding one job (chunks of 100 small documents, or one large document per
  task): it fetches, hashes (sha256), writes each document atomically
  (temp file, durable, link, folder durable: for small documents by a barrier
  shared with the writes in flight, LOCAL_SYNC=batch; `docgate-each` is the same
  client with an fsync of every file and folder, LOCAL_SYNC=each) and reports
  it to the gate;
- `aria2c -j 16`, `wget2 --max-threads 16`, `curl --parallel --parallel-max 16`:
  fetch and write, nothing more.

Wall time is from start to exit of the tool's process (start-up included for
all); CPU seconds and peak RSS are the process's own (wait4 rusage). Every run
is checked: every file present with the origin's size; for docgate every
document recorded at the gate with the sha256 of the origin's bytes.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.lib import (
    RESULTS,
    CpuMeter,
    Postgres,
    Processes,
    Table,
    connect,
    figure,
    free_port,
    median,
    py_spy_argv,
    running_gate,
    summarise_profile,
    write_results,
)

PARALLEL = 16
TIME = "/usr/bin/time"  # GNU time (Debian's `time` package)
TOOLS = ("docgate", "docgate-each", "docgate-2p", "aria2c", "wget2", "curl", "fsync-copy")
COLOURS = ["tab:blue", "tab:cyan", "tab:purple", "tab:gray", "tab:gray", "tab:gray", "tab:olive", "tab:red"]
# DATA_PLANE_BASELINE=<git ref>: one more tool, `docgate-base`, the client as it was at that ref
# (a git worktree; the gate stays this one), run interleaved with the others: before and after
# in the same run. DATA_PLANE_KINDS=small (or large) runs one size only.
BASELINE = "DATA_PLANE_BASELINE"
REPO = Path(__file__).resolve().parent.parent
# docgate-each: the same client with LOCAL_SYNC=each (an fsync of every file and folder, as
# before the shared barrier): the baseline its batched durability is measured against.
SYNC_EACH = {"LOCAL_SYNC": "each"}
# docgate-2p: the same client as two processes (--processes 2, each --concurrency 8 and half
# the tasks, so 16 transfers in all, as every tool): a Python process uses one core.
# The durable-write ceiling: the same files copied from the origin's folder (no network, no
# hashing) with an fsync of every file and of its folder, PARALLEL at a time, as docgate stores.
FSYNC_COPY = """
import os, sys
from concurrent.futures import ThreadPoolExecutor
src, dst, parallel = sys.argv[1], sys.argv[2], int(sys.argv[3])
folder = os.open(dst, os.O_RDONLY)
def copy(name):
    with open(os.path.join(src, name), "rb") as f, open(os.path.join(dst, name), "wb") as g:
        while block := f.read(1 << 20):
            g.write(block)
        g.flush()
        os.fsync(g.fileno())
    os.fsync(folder)
with ThreadPoolExecutor(parallel) as pool:
    list(pool.map(copy, os.listdir(src)))
"""
NGINX_CONF = """
daemon off;
worker_processes 2;
pid {root}/nginx.pid;
error_log {root}/nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    client_body_temp_path {root}/tmp;
    proxy_temp_path {root}/tmp;
    fastcgi_temp_path {root}/tmp;
    uwsgi_temp_path {root}/tmp;
    scgi_temp_path {root}/tmp;
    default_type application/octet-stream;
    server {{
        listen 127.0.0.1:{port};
        root {root}/files;
    }}
}}
"""


@dataclass
class Measured:
    seconds: float
    cpu: float
    max_rss_mb: float


def run_measured(
    argv: list[str], log: Path, env: dict[str, str] | None = None, cwd: Path | None = None
) -> Measured:
    """Run to exit under GNU time: wall seconds, CPU seconds (user + system), peak RSS.

    GNU time forks the tool from its own small process; a child forked (or
    vforked) from this Python process would report this process's peak RSS."""
    usage = log.with_suffix(".time")
    with log.open("ab") as out:
        code = subprocess.run(
            [TIME, "-f", "%e %U %S %M", "-o", str(usage), *argv],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=os.environ | (env or {}),
            cwd=cwd,
        ).returncode
    if code != 0:
        raise RuntimeError(f"{argv[0]} exited with {code}; see {log}")
    wall, user, system, rss_kb = usage.read_text().split()[-4:]
    return Measured(float(wall), float(user) + float(system), int(rss_kb) / 1024)


def make_files(root: Path, name: str, count: int, size: int) -> Path:
    folder = root / "files" / name
    folder.mkdir(parents=True)
    block = os.urandom(1 << 20)
    for i in range(1, count + 1):
        with (folder / f"{i}.bin").open("wb") as f:
            left = size
            while left:  # distinct bytes per file: a per-file prefix, then the shared block
                piece = (i.to_bytes(8, "big") + block)[: min(left, 1 << 20)]
                f.write(piece)
                left -= len(piece)
    return folder


def start_nginx(procs: Processes, root: Path) -> str:
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    port = free_port()
    (root / "tmp").mkdir(exist_ok=True)
    conf = root / "nginx.conf"
    conf.write_text(NGINX_CONF.format(root=root, port=port))
    procs.start([nginx, "-c", str(conf), "-p", str(root)], log=root / "nginx.out")
    deadline = time.monotonic() + 20
    import httpx

    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/small/1.bin", timeout=1).status_code in (200, 404):
                return f"http://127.0.0.1:{port}"
        except httpx.TransportError:
            time.sleep(0.1)
    raise RuntimeError(f"nginx did not start; see {root}/nginx-error.log")


def tool_argv(tool: str, urls: Path, out: Path, origin: Path) -> list[str]:
    if tool == "fsync-copy":
        return [sys.executable, "-c", FSYNC_COPY, str(origin), str(out), str(PARALLEL)]
    if tool == "aria2c":
        return [
            "aria2c",
            "-i",
            str(urls),
            "-d",
            str(out),
            "-j",
            str(PARALLEL),
            "-x",
            "1",
            "--file-allocation=none",
            "--console-log-level=error",
            "--summary-interval=0",
            "--download-result=hide",
            "--auto-file-renaming=false",
            "--allow-overwrite=true",
        ]
    if tool == "wget2":
        return [
            "wget2",
            "-q",
            "-i",
            str(urls),
            "-P",
            str(out),
            "-nd",
            f"--max-threads={PARALLEL}",
            "--no-robots",
            "--no-hsts",
        ]
    return [
        "curl",
        "-s",
        "--fail",
        "--parallel",
        "--parallel-max",
        str(PARALLEL),
        "--remote-name-all",
        "--output-dir",
        str(out),
        "-K",
        str(urls.with_suffix(".curl")),
    ]


def check_files(out: Path, origin: Path) -> None:
    found = {p.name: p.stat().st_size for p in out.rglob("*.bin")}
    expected = {p.name: p.stat().st_size for p in origin.glob("*.bin")}
    if found != expected:
        missing = len(set(expected) - set(found))
        raise AssertionError(f"{out}: {missing} files missing or sizes differ")


async def check_recorded(dsn: str, origin: Path) -> None:
    conn = await connect(dsn)
    try:
        rows = await conn.fetch("SELECT doc_id, sha256, size FROM documents")
    finally:
        await conn.close()
    if len(rows) != len(list(origin.glob("*.bin"))):
        raise AssertionError(f"gate recorded {len(rows)} documents")
    for row in rows:
        data = (origin / f"{row['doc_id']}.bin").read_bytes()
        if hashlib.sha256(data).hexdigest() != row["sha256"] or len(data) != row["size"]:
            raise AssertionError(f"document {row['doc_id']} recorded with a wrong sha256 or size")


def run_docgate(
    pg: Postgres,
    procs: Processes,
    work: Path,
    base: str,
    kind: str,
    count: int,
    origin: Path,
    out: Path,
    profile: Path | None = None,
    env: dict[str, str] | None = None,
    processes: int = 1,
    cwd: Path | None = None,
) -> tuple[Measured, dict[str, float]]:
    """One docgate client run against a fresh gate; with `profile`, under py-spy (not timed);
    with `cwd`, the client of the source tree there (`python -m` imports from its folder)."""
    dsn = pg.fresh("bench_data")
    try:
        with running_gate(procs, dsn, work, log=work / "gate.log") as gate:
            key = gate.register("data-plane")
            chunk = 100 if kind == "small" else 1
            gate.create_job(base + f"/{kind}/{{id}}.bin", count, chunk_size=chunk, ext=".bin")
            argv = [
                sys.executable,
                "-m",
                "docgate.cli",
                "client",
                "--api-url",
                gate.url,
                "--api-key",
                key,
                "--exit-when-idle",
                "--concurrency",
                str(PARALLEL // processes),
                "--max-tasks",
                str((4 if kind == "small" else PARALLEL) // processes),
                "--processes",
                str(processes),
                "--output-dir",
                str(out),
                "--allow-network",
                "127.0.0.0/8",
                "--progress",
                "log",
                "--log-level",
                "WARNING",
                "--poll-interval",
                "0.5",
                "--max-document-size",
                str(200 << 20),
            ]
            meter = CpuMeter({"gate": gate.proc.pid, "postgres": pg.pid})
            meter.start()
            if profile is not None:
                with (work / "py-spy.log").open("ab") as log:
                    subprocess.run(
                        py_spy_argv(profile, argv=argv),
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        stdin=subprocess.DEVNULL,
                        check=True,
                    )
            measured = (
                run_measured(argv, work / "client.log", env, cwd) if profile is None else Measured(0, 0, 0)
            )
            others = meter.stop()
        asyncio.run(check_recorded(dsn, origin))
    finally:
        pg.drop("bench_data")
    return measured, others


def scenario(
    pg: Postgres, procs: Processes, work: Path, *, quick: bool, repeat: int, state: dict[str, Any]
) -> None:
    root = work / "origin"
    root.mkdir(parents=True)
    kinds = {"small": (1_000 if quick else 10_000, 10 << 10), "large": (4 if quick else 20, 50 << 20)}
    only = os.environ.get("DATA_PLANE_KINDS", "").strip()
    kinds = {k: v for k, v in kinds.items() if k == only} if only else kinds
    baseline = os.environ.get(BASELINE, "").strip()
    tools = (*TOOLS, "docgate-base") if baseline else TOOLS
    tree = work / "baseline"
    if baseline:
        subprocess.run(
            ["git", "worktree", "add", "--detach", str(tree), baseline],
            cwd=REPO,
            check=True,
            stdout=subprocess.DEVNULL,
        )
    try:
        _measure(pg, procs, work, root, kinds, tools, tree, repeat)
    finally:
        if baseline:
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=REPO, check=False)


def _measure(
    pg: Postgres,
    procs: Processes,
    work: Path,
    root: Path,
    kinds: dict[str, tuple[int, int]],
    tools: tuple[str, ...],
    tree: Path,
    repeat: int,
) -> None:
    origins = {kind: make_files(root, kind, n, size) for kind, (n, size) in kinds.items()}
    for path in (work, root, *root.rglob("*")):
        if path.is_dir():
            path.chmod(0o755)  # nginx's workers run as nobody
    base = start_nginx(procs, root)
    runs: dict[str, dict[str, list[Measured]]] = {kind: {t: [] for t in tools} for kind in kinds}
    side: dict[str, list[dict[str, float]]] = {kind: [] for kind in kinds}
    profiles: dict[str, str] = {}
    for kind, (count, _) in kinds.items():
        urls = work / f"{kind}.txt"
        urls.write_text("".join(f"{base}/{kind}/{i}.bin\n" for i in range(1, count + 1)))
        urls.with_suffix(".curl").write_text(
            "".join(f'url = "{base}/{kind}/{i}.bin"\n' for i in range(1, count + 1))
        )
        for _ in range(repeat):
            for tool in tools:
                out = work / "out"
                shutil.rmtree(out, ignore_errors=True)
                out.mkdir()
                if tool.startswith("docgate"):
                    env = SYNC_EACH if tool == "docgate-each" else None
                    processes = 2 if tool == "docgate-2p" else 1
                    measured, others = run_docgate(
                        pg,
                        procs,
                        work,
                        base,
                        kind,
                        count,
                        origins[kind],
                        out,
                        env=env,
                        processes=processes,
                        cwd=tree if tool == "docgate-base" else None,
                    )
                    if tool == "docgate":
                        side[kind].append(others)
                else:
                    argv = tool_argv(tool, urls, out, origins[kind])
                    measured = run_measured(argv, log=work / f"{tool}.log")
                check_files(out, origins[kind])
                runs[kind][tool].append(measured)
                print(
                    f"  {kind:<5} {tool:<12} {measured.seconds:7.2f} s  CPU {measured.cpu:6.2f} s  "
                    f"RSS {measured.max_rss_mb:6.1f} MB",
                    flush=True,
                )
        # One more run under py-spy, apart from the timed ones: where the client's time goes.
        raw = work / f"profile-{kind}.txt"
        shutil.rmtree(work / "out", ignore_errors=True)
        run_docgate(pg, procs, work, base, kind, count, origins[kind], work / "out", profile=raw)
        profiles[kind] = summarise_profile(raw)
        shutil.rmtree(work / "out", ignore_errors=True)
    (RESULTS / "data_plane.profile.txt").write_text(
        "".join(
            f"== docgate client, {kinds[k][0]:,} documents of {kinds[k][1] >> 10:,} KB"
            f" (py-spy, 250 Hz)\n\n{text}\n"
            for k, text in profiles.items()
        )
    )
    report(kinds, runs, side, repeat, tools)


def report(
    kinds: dict[str, tuple[int, int]],
    runs: dict[str, dict[str, list[Measured]]],
    side: dict[str, list[dict[str, float]]],
    repeat: int,
    tools: tuple[str, ...] = TOOLS,
) -> None:
    table = Table(["documents", "tool", "docs/s", "MB/s", "CPU s", "peak RSS MB", "docgate / tool"])
    rates: dict[str, dict[str, float]] = {}
    for kind, (count, size) in kinds.items():
        rates[kind] = {t: median([count / m.seconds for m in runs[kind][t]]) for t in tools}
        for tool in tools:
            ms = runs[kind][tool]
            table.add(
                f"{count:,} × {size >> 10:,} KB",
                tool,
                rates[kind][tool],
                rates[kind][tool] * size / 1e6,
                median([m.cpu for m in ms]),
                max(m.max_rss_mb for m in ms),
                "" if tool == "docgate" else f"{rates[kind]['docgate'] / rates[kind][tool]:.2f}×",
            )
    gate = Table(["documents", "gate CPU s", "PostgreSQL CPU s"])
    for kind, (count, size) in kinds.items():
        gate.add(
            f"{count:,} × {size >> 10:,} KB",
            median([s["gate"] for s in side[kind]]),
            median([s["postgres"] for s in side[kind]]),
        )
    fig, axes = figure(len(kinds))
    for ax, (kind, (count, size)) in zip(axes[0], kinds.items(), strict=True):
        values = [rates[kind][t] * (1 if kind == "small" else size / 1e6) for t in tools]
        ax.bar(tools, values, color=COLOURS[: len(tools)])
        ax.set_title(f"{count:,} documents of {size >> 10:,} KB")
        ax.set_ylabel("documents/s" if kind == "small" else "MB/s")
    write_results(
        "data_plane",
        "Data plane: one docgate client vs aria2c, wget2, curl",
        {
            "parallel": PARALLEL,
            "kinds": kinds,
            "rates": rates,
            "runs": {k: {t: [m.__dict__ for m in ms] for t, ms in by.items()} for k, by in runs.items()},
            "gate_side": side,
        },
        {
            "medians of runs (wall time includes start-up)": table,
            "the gate and PostgreSQL while the docgate client ran": gate,
        },
        fig,
        notes=[
            f"{PARALLEL} transfers in parallel for every tool; {repeat} run(s) each, interleaved.",
            "docgate hashes, fsyncs and reports every document; aria2c, wget2 and curl only write files.",
            "fsync-copy is the durable-write ceiling: the origin's files copied on local disk with an "
            "fsync of each file and its folder, no network and no hashing.",
            "docgate-each is the same client with LOCAL_SYNC=each (an fsync of every file and folder, "
            "as before the shared barrier): the baseline for the batched durability.",
            "Where the client's time goes: data_plane.profile.txt (py-spy).",
            *(
                [f"docgate-base is the client at {os.environ.get(BASELINE)} (the gate is this one)."]
                if "docgate-base" in tools
                else []
            ),
        ],
    )
