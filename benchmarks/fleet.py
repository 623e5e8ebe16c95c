"""Scenario 11 — the fleet: many clients over several gates behind the shipped nginx config.

Four gates on one PostgreSQL behind Debian's nginx with nginx.conf.example (TLS; only ports,
certificate and upstream lines substituted; grants routed by X-Session-Id as shipped). A
backlog of id_range tasks (10 documents each) over 50 origin hosts: one origin process serving
10 KB documents on 50 ports (each port its own host, its own budget of HOST_RATE_LIMIT=20
requests a second), counting the requests each gets per second. Simulated clients, many per
process on asyncio, each with its own key, its own session (X-Session-Id) and its own loopback
source address (nginx limits per address), speak the real protocol: long-poll leases through
nginx, ask for their grants once a second with what they saw, fetch each document at no more
than their granted rate, and complete each task with its documents' sha256 and size (what
they store is the edge: nothing is written, the gate does not read it back).

Fleets of 10, 100 and 1,000 clients (--quick: 10 and 100), each for a steady window after a
warm-up. Reported: documents a second; each host's peak (busiest second) and mean rate against
its budget; grant and lease p50/p99 as the clients saw them; gate CPU (the four processes) per
1,000 documents; PostgreSQL's CPU and connections; each gate's memory; the loader's CPU (the
machine's two cores are shared by all of it: that is the first limit, named in the notes).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import random
import ssl
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import psutil

from benchmarks.busy import nginx_front
from benchmarks.http import Connection, HttpError
from benchmarks.lib import (
    RESULTS,
    Postgres,
    Processes,
    Table,
    cpu_seconds,
    figure,
    pct,
    running_gate,
    write_results,
)

HOSTS = 50
BUDGET = 20.0  # requests a second per host
GATES = 4
CHUNK = 10
SIZE = 10_000


# ---- the origin: 50 hosts in one process, counting requests per host per second


async def serve_origin(first_port: int, stats: Path) -> None:
    from aiohttp import web

    counts: dict[int, dict[int, int]] = {p: {} for p in range(first_port, first_port + HOSTS)}

    def handler(port: int) -> Any:
        async def document(request: web.Request) -> web.Response:
            second = int(time.time())
            counts[port][second] = counts[port].get(second, 0) + 1
            doc = request.match_info["doc"].encode()
            return web.Response(body=(doc * (SIZE // max(1, len(doc)) + 1))[:SIZE])

        return document

    runners = []
    for port in counts:
        app = web.Application()
        app.router.add_get("/doc/{doc}", handler(port))
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        runners.append(runner)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    import signal

    loop.add_signal_handler(signal.SIGTERM, stop.set)
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 1.0)
        stats.write_text(json.dumps({str(p): c for p, c in counts.items()}))
    for runner in runners:
        await runner.cleanup()


# ---- the simulated clients


class Sim:
    """One simulated client: a key, a session, a source address, its grants per host."""

    def __init__(self, url: str, key: str, tls: ssl.SSLContext, source: str, out: dict[str, Any]) -> None:
        self.session = uuid.uuid4().hex
        headers = {"X-API-Key": key, "X-Session-Id": self.session}
        self.gate = Connection(url, headers, tls, source)
        self.granting = Connection(url, headers, tls, source)
        self.source, self.out = source, out
        self.rates: dict[str, float] = {}  # host -> granted requests a second (0: held)
        # host -> until when its grant holds: a host left out of a reply keeps no stale rate
        # (client/limits.py: a grant's limits hold per host until its own expiry)
        self.valid_until: dict[str, float] = {}
        self.seen: dict[str, int] = {}
        self.origins: dict[int, Connection] = {}
        self.next_at: dict[str, float] = {}
        self.working: set[str] = set()  # the hosts of the task in hand

    async def run(self, until: float) -> None:
        await self.gate.open()
        await self.granting.open()
        grants = asyncio.create_task(self.grant_loop(until))
        try:
            while time.monotonic() < until:
                try:
                    await self.one_task(until)
                except (OSError, HttpError, TimeoutError, asyncio.IncompleteReadError, ValueError) as exc:
                    self.count(f"client {type(exc).__name__}")  # the connection is spent: a new one
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(self.gate.close(), 2)
                    await asyncio.sleep(1.0)
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(self.gate.open(), 10)
        finally:
            grants.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await grants
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.gate.request("DELETE", "/api/v1/session"), 10)
            for conn in (self.gate, self.granting, *self.origins.values()):
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(conn.close(), 2)

    def count(self, what: str) -> None:
        self.out["errors"][what] = self.out["errors"].get(what, 0) + 1

    async def one_task(self, until: float) -> None:
        started = time.perf_counter()
        status, body = await asyncio.wait_for(
            self.gate.request("POST", "/api/v1/tasks/request?max_tasks=1&wait=5"), 30
        )
        if status == 200:  # the time to a task (a 204 is a long-poll that ran out)
            self.out["lease_ms"].append((time.perf_counter() - started) * 1000)
            await self.work(body["tasks"][0], until)
        elif status == 204:
            self.out["empty_leases"] = self.out.get("empty_leases", 0) + 1
        else:
            self.count(f"lease {status}")
            await asyncio.sleep(1.0)

    async def grant_loop(self, until: float) -> None:
        while time.monotonic() < until:
            try:
                await self.ask_grants()
            except (OSError, HttpError, TimeoutError, asyncio.IncompleteReadError, ValueError) as exc:
                self.count(f"grant {type(exc).__name__}")
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self.granting.close(), 2)
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self.granting.open(), 10)
            await asyncio.sleep(1.0)

    async def ask_grants(self) -> None:
        """The hosts this client works on and those it has not told about yet, as the client does."""
        hosts = [{"host": h, "ok": self.seen.pop(h, 0)} for h in {*self.working, *self.seen}]
        if hosts:
            asked = time.monotonic()
            started = time.perf_counter()
            status, body = await asyncio.wait_for(
                self.granting.request("POST", "/api/v1/hosts/grants", {"hosts": hosts}), 30
            )
            self.out["grant_ms"].append((time.perf_counter() - started) * 1000)
            if status == 200:
                for grant in body["grants"]:
                    rate, connections = grant["requests_per_second"], grant["max_connections"]
                    held = grant["paused"] or rate == 0 or connections == 0
                    self.rates[grant["host"]] = 0.0 if held else (rate or float("inf"))
                    self.valid_until[grant["host"]] = asked + body["valid_seconds"]
            else:
                self.count(f"grant {status}")

    async def work(self, task: dict[str, Any], until: float) -> None:
        params = task["params"]
        template, ext = params["url_template"], params.get("ext", "")
        port = int(template.split(":")[2].split("/")[0])
        host = f"127.0.0.1:{port}"
        self.working.add(host)
        try:
            await self.fetch(task, host, port, ext, until)
        finally:
            self.working.discard(host)

    async def fetch(self, task: dict[str, Any], host: str, port: int, ext: str, until: float) -> None:
        params = task["params"]
        docs = []
        for doc_id in range(params["start_id"], params["start_id"] + params["count"]):
            if not await self.wait_turn(host, until):
                return  # the run is over: the goodbye hands the task back
            conn = self.origins.pop(port, None)
            if conn is None:
                conn = await Connection(f"http://{host}", {}, None, self.source).open()
            status, data = await asyncio.wait_for(conn.raw("GET", f"/doc/{doc_id}{ext}"), 30)
            self.origins[port] = conn  # kept only once it answered whole
            self.seen[host] = self.seen.get(host, 0) + 1
            if status == 200:
                key = f"{doc_id // 50000}/{doc_id}{ext}"
                docs.append(
                    {"doc_id": str(doc_id), "storage_key": key, "sha256": hashlib.sha256(data).hexdigest(),
                     "size": len(data)}
                )  # fmt: skip
        body = {"task_id": task["task_id"], "lease_token": task["lease_token"], "documents": docs}
        status, _ = await asyncio.wait_for(self.gate.request("POST", "/api/v1/tasks/complete", body), 30)
        if status == 200:
            self.out["documents"].append((time.monotonic(), len(docs)))
        else:
            self.count(f"complete {status}")

    async def wait_turn(self, host: str, until: float) -> bool:
        """One request at the granted rate: start nothing while held or without a valid grant.
        False when the run ends first."""
        while (now := time.monotonic()) < until:
            rate = self.rates.get(host, 0.0)
            if rate > 0 and now < self.valid_until.get(host, 0.0):
                at = max(now, self.next_at.get(host, 0.0))
                if at >= until:
                    return False
                self.next_at[host] = at + 1.0 / rate
                await asyncio.sleep(at - now)
                return True
            await asyncio.sleep(0.1)
        return False


async def run_clients(url: str, ca: str, keys: list[str], seconds: float, out_path: Path) -> None:
    tls = ssl.create_default_context(cafile=ca)
    out: dict[str, Any] = {"lease_ms": [], "grant_ms": [], "documents": [], "errors": {}}
    until = time.monotonic() + seconds
    sims = [Sim(url, k, tls, f"127.0.{1 + i // 250}.{1 + i % 250}", out) for i, k in enumerate(keys)]
    random.shuffle(sims)

    async def start(sim: Sim, delay: float) -> None:
        await asyncio.sleep(delay)  # a fleet comes up over a few seconds, not in one instant
        await sim.run(until)

    runs = [asyncio.ensure_future(start(s, random.uniform(0, 3))) for s in sims]
    done, late = await asyncio.wait(runs, timeout=seconds + 60)
    for run in late:  # a client still busy a minute past the end: counted, then stopped
        out["errors"]["client did not stop"] = out["errors"].get("client did not stop", 0) + 1
        run.cancel()
    ended = [r.exception() for r in done if not r.cancelled()]
    for failure in ended:
        if isinstance(failure, BaseException):
            name = f"client {type(failure).__name__}"
            out["errors"][name] = out["errors"].get(name, 0) + 1
    out["started"] = until - seconds
    out_path.write_text(json.dumps(out))


# ---- the scenario


def scenario(
    pg: Postgres, procs: Processes, work: Path, *, quick: bool, repeat: int, state: dict[str, Any]
) -> None:
    fleets = [10, 100] if quick else [10, 100, 1000]
    if os.environ.get("FLEET_CLIENTS"):  # e.g. FLEET_CLIENTS=100,500
        fleets = [int(n) for n in os.environ["FLEET_CLIENTS"].split(",")]
    warmup, steady = (10.0, 20.0) if quick else (15.0, 45.0)
    backlog = int(os.environ.get("FLEET_BACKLOG_TASKS", 100_000 if quick else 10_000_000))
    dsn = pg.fresh("bench_fleet")
    first_port = 21000 + random.randrange(0, 20000)
    stats = work / "fleet-origin.json"
    origin = procs.start(
        [sys.executable, "-m", "benchmarks.fleet", "origin", str(first_port), str(stats)],
        log=work / "origin.log",
    )
    rows: list[dict[str, Any]] = []
    env = {"HOST_RATE_LIMIT": str(BUDGET), "HOST_CONNECTIONS": "8", "MAX_JOB_TASKS": str(backlog),
           "DB_POOL_MAX": "10", "LEASE_SECONDS": "120"}  # fmt: skip
    gates = []
    try:
        with contextlib.ExitStack() as stack:
            for g in range(GATES):
                gates.append(
                    stack.enter_context(
                        running_gate(procs, dsn, work, env=env, log=work / f"gate-fleet-{g}.log")
                    )
                )
            url, cert = stack.enter_context(
                nginx_front(procs, work, [int(g.url.rsplit(":", 1)[1]) for g in gates])
            )
            per_host = backlog // HOSTS
            made = time.perf_counter()
            jobs = []
            for h in range(HOSTS):
                template = f"http://127.0.0.1:{first_port + h}/doc/{{id}}"
                reply = httpx.post(
                    gates[0].url + "/api/v1/jobs",
                    headers=gates[0].admin,
                    timeout=600,
                    json={"source": "id_range", "chunk_size": CHUNK,
                          "params": {"url_template": template, "start_id": 1, "count": per_host * CHUNK,
                                     "ext": ".bin"}},
                )  # fmt: skip
                reply.raise_for_status()
                jobs.append(reply.json()["job_id"])
            while _creating(gates[0], jobs):
                time.sleep(1)
            print(
                f"  backlog: {backlog:,} tasks over {HOSTS} hosts in {time.perf_counter() - made:.0f} s",
                flush=True,
            )
            keys = [gates[0].register(f"sim-{i}") for i in range(max(fleets))]
            for clients in fleets:
                rows.append(
                    _measure(
                        procs, pg, work, url, cert, gates, keys[:clients], warmup, steady, stats, origin.pid
                    )
                )
                print(f"  {clients} clients: {rows[-1]['documents_per_s']:.0f} documents/s", flush=True)
    finally:
        procs.stop(origin)
        pg.drop("bench_fleet")
    _report(rows, backlog, warmup, steady)


HISTOGRAMS = {  # what each gate measures itself, by the name the results give it
    "docgate_grant_latency_seconds": "grant",
    "docgate_lease_latency_seconds": "lease_statement",
    "docgate_event_loop_lag_seconds": "loop_lag",
}


def _buckets(gates: list[Any]) -> dict[str, dict[float, float]]:
    """The gates' histograms, summed over the gates: metric -> upper bound -> cumulative count."""
    summed: dict[str, dict[float, float]] = {name: {} for name in HISTOGRAMS}
    for gate in gates:
        text = httpx.get(gate.url + "/metrics", timeout=30).text
        for line in text.splitlines():
            for name in HISTOGRAMS:
                if line.startswith(name + "_bucket{"):
                    bound = line.split('le="', 1)[1].split('"', 1)[0]
                    le = float("inf") if bound == "+Inf" else float(bound)
                    summed[name][le] = summed[name].get(le, 0.0) + float(line.rsplit(" ", 1)[1])
    return summed


def _quantile(before: dict[float, float], after: dict[float, float], q: float) -> float | None:
    """The bucket bound (ms) below which q of the observations between two scrapes fall."""
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]
    if not counts or counts[-1] <= 0:
        return None
    for bound, count in zip(bounds, counts, strict=True):
        if count >= q * counts[-1]:
            return bound * 1000
    return None


def _edge_cpu(work: Path, origin_pid: int) -> float:
    """CPU seconds of the origin and of nginx: the master started with this run's config, and
    its workers."""
    total = cpu_seconds(origin_pid)
    for proc in psutil.process_iter(["cmdline"]):
        with contextlib.suppress(psutil.Error):
            # nginx rewrites its title: the master's whole command line may be one string
            if any(str(work / "nginx.conf") in arg for arg in proc.info["cmdline"] or []):
                total += cpu_seconds(proc.pid)
    return total


def _creating(gate: Any, jobs: list[str]) -> bool:
    return any(
        httpx.get(f"{gate.url}/api/v1/jobs/{j}", headers=gate.admin, timeout=60).json().get("creating")
        for j in jobs
    )


def _measure(
    procs: Processes, pg: Postgres, work: Path, url: str, cert: Path, gates: list[Any], keys: list[str],
    warmup: float, steady: float, stats: Path, origin_pid: int,
) -> dict[str, Any]:  # fmt: skip
    keys_file, out = work / "fleet-keys.json", work / f"fleet-{len(keys)}.json"
    keys_file.write_text(json.dumps(keys))
    loader = procs.start(
        [sys.executable, "-m", "benchmarks.fleet", "clients", url, str(cert), str(keys_file),
         str(warmup + steady), str(out)],
        log=work / f"loader-{len(keys)}.log",
    )  # fmt: skip
    time.sleep(warmup)
    histograms = _buckets(gates)
    gate_cpu = sum(cpu_seconds(g.proc.pid) for g in gates)
    pg_cpu, loader_cpu = cpu_seconds(pg.pid), cpu_seconds(loader.pid)
    edge_cpu = _edge_cpu(work, origin_pid)
    began = time.time()
    connections = []
    while time.time() - began < steady and loader.poll() is None:
        connections.append(
            int(
                pg.psql(
                    "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend';"
                ).splitlines()[2]
            )
        )
        time.sleep(2.0)
    elapsed = time.time() - began
    gate_cpu = sum(cpu_seconds(g.proc.pid) for g in gates) - gate_cpu
    pg_cpu, loader_cpu = cpu_seconds(pg.pid) - pg_cpu, cpu_seconds(loader.pid) - loader_cpu
    edge_cpu = _edge_cpu(work, origin_pid) - edge_cpu
    memory = [psutil.Process(g.proc.pid).memory_info().rss / 2**20 for g in gates]
    later = _buckets(gates)
    at_gate = {
        f"{short}_{label}_ms": _quantile(histograms[name], later[name], q)
        for name, short in HISTOGRAMS.items()
        for label, q in (("p50", 0.5), ("p99", 0.99))
    }
    try:
        loader.wait(120)
    except subprocess.TimeoutExpired:
        log = (work / f"loader-{len(keys)}.log").read_text()[-3000:]
        raise RuntimeError(f"the loader of {len(keys)} clients did not end; its log ends:\n{log}") from None
    result = json.loads(out.read_text())
    start = result["started"] + warmup
    done = sum(n for at, n in result["documents"] if at >= start)
    counts = json.loads(stats.read_text())
    window = range(int(began) + 1, int(began + elapsed))
    peaks, means = [], []
    for per_second in counts.values():
        seconds = [per_second.get(str(s), 0) for s in window]
        if any(seconds):
            peaks.append(max(seconds))
            means.append(sum(seconds) / len(seconds))
    return {
        "clients": len(keys),
        "documents_per_s": done / elapsed,
        "origin_requests_per_s": sum(means),
        "hosts_fetched": len(peaks),
        "host_peak_max": max(peaks, default=0),
        "host_mean_of_means": sum(means) / len(means) if means else 0.0,
        "budget": BUDGET,
        "grant_p50_ms": pct(result["grant_ms"], 50),
        "grant_p99_ms": pct(result["grant_ms"], 99),
        "lease_p50_ms": pct(result["lease_ms"], 50),
        "lease_p99_ms": pct(result["lease_ms"], 99),
        "gate_cpu_s_per_1000_docs": gate_cpu / max(1, done) * 1000,
        "gate_cpu_share": gate_cpu / elapsed,
        "pg_cpu_share": pg_cpu / elapsed,
        "loader_cpu_share": loader_cpu / elapsed,
        "nginx_and_origin_cpu_share": edge_cpu / elapsed,
        "pg_connections_max": max(connections, default=0),
        "gate_rss_mb": memory,
        "errors": result["errors"],
        "empty_leases": result.get("empty_leases", 0),
        "at_gate": at_gate,
        "seconds": elapsed,
    }


def _chart(rows: list[dict[str, Any]]) -> Any:
    """Three panels over the fleet's size: documents/s, grant p99 (clients' and the gates'
    own), gate CPU per 1,000 documents."""
    fig, axes = figure(3, width=4.2)
    sizes = [r["clients"] for r in rows]
    ticks = [str(n) for n in sizes]
    axes[0][0].bar(ticks, [r["documents_per_s"] for r in rows])
    axes[0][0].set_ylabel("documents/s")
    axes[0][1].plot(ticks, [r["grant_p99_ms"] for r in rows], marker="o", label="as clients saw it")
    # past the histogram's last bucket (inf): not drawn
    in_gate = [r["at_gate"]["grant_p99_ms"] for r in rows]
    axes[0][1].plot(
        ticks, [v if v != float("inf") else None for v in in_gate], marker="s", label="in the gate"
    )
    axes[0][1].axhline(20, color="grey", linestyle="--", label="target 20 ms")
    axes[0][1].set_yscale("log")
    axes[0][1].set_ylabel("grant p99, ms")
    axes[0][1].legend(fontsize=8)
    axes[0][2].bar(ticks, [r["gate_cpu_s_per_1000_docs"] for r in rows])
    axes[0][2].set_ylabel("gate CPU s per 1,000 documents")
    for ax in axes[0]:
        ax.set_xlabel("clients")
    return fig


def _report(rows: list[dict[str, Any]], backlog: int, warmup: float, steady: float) -> None:
    table = Table(
        ["clients", "documents/s", "origin requests/s", "hosts busy", "busiest host-second (budget 20)",
         "mean per host", "grant p50 ms", "p99", "at the gate p99", "lease p50 ms", "p99",
         "lease statement p99", "loop lag p99 ms"]
    )  # fmt: skip
    cost = Table(
        ["clients", "gate CPU s per 1,000 docs", "gates (cores)", "PostgreSQL (cores)", "PG connections",
         "loader (cores)", "nginx + origin (cores)", "RSS per gate MB", "client errors"]
    )  # fmt: skip
    for r in rows:
        g = r["at_gate"]
        table.add(
            r["clients"], r["documents_per_s"], r["origin_requests_per_s"], r["hosts_fetched"],
            r["host_peak_max"], r["host_mean_of_means"], r["grant_p50_ms"], r["grant_p99_ms"],
            g["grant_p99_ms"], r["lease_p50_ms"], r["lease_p99_ms"], g["lease_statement_p99_ms"],
            g["loop_lag_p99_ms"],
        )  # fmt: skip
        cost.add(
            r["clients"], r["gate_cpu_s_per_1000_docs"], r["gate_cpu_share"], r["pg_cpu_share"],
            r["pg_connections_max"], r["loader_cpu_share"], r["nginx_and_origin_cpu_share"],
            max(r["gate_rss_mb"]), sum(r["errors"].values()),
        )  # fmt: skip
    write_results(
        "fleet",
        "The fleet: clients over four gates behind nginx",
        {
            "rows": rows,
            "backlog_tasks": backlog,
            "hosts": HOSTS,
            "budget": BUDGET,
            "gates": GATES,
            "warmup_s": warmup,
            "steady_s": steady,
        },  # fmt: skip
        {
            f"{GATES} gates, {HOSTS} hosts at {BUDGET:.0f}/s each, {backlog:,} tasks of {CHUNK}": table,
            "what it cost": cost,
        },
        _chart(rows),
        notes=[
            "Everything shares the machine's two cores: nginx, four gates, PostgreSQL, the origin and the "
            "simulated clients' loader. Where the cores run out, latencies are queueing for a core.",
        ],
    )


if __name__ == "__main__":
    import uvloop

    if sys.argv[1] == "chart":  # the chart again from the last run's results
        _chart(json.loads((RESULTS / "fleet.json").read_text())["rows"]).savefig(
            RESULTS / "fleet.png", dpi=110, bbox_inches="tight"
        )
    elif sys.argv[1] == "origin":
        uvloop.run(serve_origin(int(sys.argv[2]), Path(sys.argv[3])))
    else:
        url, ca, keys_file, seconds, out = sys.argv[2:7]
        uvloop.run(run_clients(url, ca, json.loads(Path(keys_file).read_text()), float(seconds), Path(out)))
