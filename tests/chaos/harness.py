"""A chaos run: one job on real gates, PostgreSQL, origin, S3 and client processes, with faults.

Everything is a real process: PostgreSQL (pgserver's binaries, its own data
directory), moto's S3 server behind `faultproxy.py`, `docgate origin` with
errors, latency and 429s, two `docgate server` gates and N `docgate client`
processes storing to S3. A seeded schedule injects, one after another:

- kill_client: kill -9 a client and start it again (same key, new session)
- zombie: SIGSTOP a client past its lease, SIGCONT it later (it wakes holding stale leases)
- kill_gate: kill -9 a gate, start it again 1.5 s later
- crash_postgres: kill -9 the postmaster and every backend, start it again (WAL recovery)
- stall_storage / reset_storage: the S3 endpoint stalls for 4 s / resets connections for 3 s
- kill_writer: kill -9 a process midway through a multipart upload to the same bucket

Every fault fires at least once (the first round is a shuffled pass over all
of them), then they are drawn at random until the job is done. `checker.py`
then judges the result.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from postgres import Postgres

from conftest import free_port, run_aside
from processes import CLEAN_ENV, REPO, GateProcess

HERE = Path(__file__).resolve().parent
ADMIN = "chaos-admin-key-0123456789abcdef"
BUCKET = "chaos"
FAULTS = (
    "kill_client",
    "zombie",
    "kill_gate",
    "crash_postgres",
    "stall_storage",
    "reset_storage",
    "kill_writer",
)
HELD = 4  # the leases a chaos client holds at most (--max-tasks)
RESTART_SECONDS = 5  # deploy/docgate-client.service: RestartSec=5
S3_ENV = {"AWS_ACCESS_KEY_ID": "chaos", "AWS_SECRET_ACCESS_KEY": "chaos", "AWS_DEFAULT_REGION": "us-east-1"}


@dataclass
class Plan:
    seed: int
    tasks: int = 2000
    chunk: int = 3
    clients: int = 8
    gates: int = 2
    lease_seconds: float = 6
    fault_gap: tuple[float, float] = (2.0, 4.0)
    faults: tuple[str, ...] = FAULTS
    deadline: float = 270
    size: tuple[int, int] = (1024, 32768)
    gate_variant: str | None = None
    client_variant: str | None = None
    sweep: bool = True
    spare_first: bool = False  # never kill gate 0 or client 0 (the soak watches their memory)
    # The last len(liars) clients run these variants (variants.py: `liar` sends reports the gate
    # must refuse; the byte liars lie about documents' bytes, which only checks find out).
    liars: tuple[str, ...] = ()
    verify_sample: float | None = None  # the job's: other clients check this share of each one's
    dialect: str = "s3"  # "b2": Backblaze B2's (tests/b2_dialect.py) between the stores and the faults


@dataclass
class Run:
    plan: Plan
    tmp: Path
    dsn: str = ""
    fired: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    finished: bool = False
    gate_logs: list[Path] = field(default_factory=list)
    client_logs: list[Path] = field(default_factory=list)
    loop_lag: list[dict[str, float]] = field(default_factory=list)
    origin: str = ""
    s3_url: str = ""
    versioned: bool = False  # records pin object versions (the b2 dialect)
    memory: list[dict[str, Any]] = field(default_factory=list)
    tasks_created: int = 0


def _command(variant: str | None, *args: str) -> list[str]:
    if variant:
        return [sys.executable, str(HERE / "variants.py"), variant, *args]
    return [sys.executable, "-m", "docgate.cli", *args]


class Cluster:
    def __init__(self, plan: Plan, tmp: Path) -> None:
        self.plan, self.tmp = plan, tmp
        self.rng = random.Random(plan.seed)
        self.run = Run(plan, tmp)
        self.procs: list[subprocess.Popen[Any]] = []
        self.files: list[Any] = []
        self.proxy: subprocess.Popen[str] | None = None
        self.gate_ports = [free_port() for _ in range(plan.gates)]
        self.gates: list[GateProcess | None] = [None] * plan.gates
        self.clients: list[subprocess.Popen[Any] | None] = [None] * plan.clients
        self.stopped: dict[int, float] = {}  # client -> when to SIGCONT
        self.exited: dict[int, float] = {}  # client that exited by itself -> when to start it again
        self.gates_down: dict[int, float] = {}  # gate -> when to restart
        self.pg = Postgres(tmp / "pg")
        self.dsn = self.run.dsn = self.pg.dsn
        try:
            self._start_s3()
            self._start_origin()
            for i in range(plan.gates):
                self._start_gate(i)
            self.keys = [self._register(f"chaos-{i}") for i in range(plan.clients)]
        except BaseException:
            self.close()
            raise

    # ---- processes

    def _spawn(self, argv: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[Any]:
        out = log.open("wb")
        self.files.append(out)
        proc = subprocess.Popen(
            argv,
            cwd=REPO,
            env=CLEAN_ENV | S3_ENV | (env or {}),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.procs.append(proc)
        return proc

    def _start_s3(self) -> None:
        moto_port, proxy_port = free_port(), free_port()
        self._spawn(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(moto_port)],
            self.tmp / "moto.log",
        )
        self.moto = f"http://127.0.0.1:{moto_port}"
        _wait(lambda: httpx.get(self.moto + "/moto-api/", timeout=1))
        self.proxy = subprocess.Popen(
            [sys.executable, str(HERE / "faultproxy.py"), str(proxy_port), str(moto_port)],
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self.procs.append(self.proxy)
        assert self.proxy.stdout is not None and self.proxy.stdout.readline().strip() == "ready"
        self.run.s3_url = self.moto
        self.s3_env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{proxy_port}"}
        self.s3().create_bucket(Bucket=BUCKET)
        self.store_url = f"s3://{BUCKET}"
        if self.plan.dialect == "b2":
            # No conditional writes, a versioned bucket: the fence is the recorded version_id.
            self.s3().put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
            b2_port = free_port()
            b2 = subprocess.Popen(
                [
                    sys.executable,
                    str(REPO / "tests" / "b2_dialect.py"),
                    str(b2_port),
                    f"http://127.0.0.1:{proxy_port}",
                ],
                stdout=subprocess.PIPE,
                text=True,
                start_new_session=True,
            )
            self.procs.append(b2)
            assert b2.stdout is not None and b2.stdout.readline().strip() == "ready"
            b2.stdout.close()
            self.s3_env |= {
                "B2_ENDPOINT": f"http://127.0.0.1:{b2_port}",
                "B2_APPLICATION_KEY_ID": "chaos",
                "B2_APPLICATION_KEY": "chaos",
            }
            self.store_url = f"b2://{BUCKET}"
            self.run.versioned = True

    def s3(self) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.moto,
            **{"aws_access_key_id": "chaos", "aws_secret_access_key": "chaos", "region_name": "us-east-1"},
        )

    def _start_origin(self) -> None:
        port = free_port()
        low, high = self.plan.size
        self._spawn(
            [
                sys.executable,
                "-m",
                "docgate.cli",
                "origin",
                "--port",
                str(port),
                "--size",
                str(low),
                "--size-max",
                str(high),
                "--error-rate",
                "0.02",
                "--rate-429",
                "0.02",
                "--retry-after",
                "0.5",
                "--latency",
                "0.005",
                "--seed",
                str(self.plan.seed),
            ],
            self.tmp / "origin.log",
        )
        self.origin = self.run.origin = f"http://127.0.0.1:{port}"
        _wait(lambda: httpx.get(self.origin + "/_stats", timeout=1))

    def _start_gate(self, i: int) -> None:
        port = self.gate_ports[i]
        env = (
            {
                "DATABASE_URL": self.dsn,
                "API_PORT": str(port),
                "ADMIN_API_KEY": ADMIN,
                "STORAGE_URL": self.store_url,
                "LEASE_SECONDS": str(self.plan.lease_seconds),
                "RETRY_BACKOFF_SECONDS": "0.2",
                "RETRY_BACKOFF_MAX_SECONDS": "1",
                "REAP_INTERVAL_SECONDS": "0.5",
                "DB_POOL_MAX": "8",
            }
            | S3_ENV
            | self.s3_env
        )
        gate = GateProcess(_command(self.plan.gate_variant, "server"), env, port, self.tmp)
        self.procs.append(gate.proc)
        self.run.gate_logs.append(gate.log)
        gate.wait_healthy()
        self.gates[i] = gate

    def _register(self, name: str) -> str:
        r = httpx.post(
            self._gate_url(0) + "/api/v1/clients/register",
            headers={"X-API-Key": ADMIN},
            json={"client_name": name},
            timeout=30,
        )
        r.raise_for_status()
        return str(r.json()["api_key"])

    def _gate_url(self, i: int) -> str:
        return f"http://127.0.0.1:{self.gate_ports[i % self.plan.gates]}"

    def start_client(self, i: int) -> None:
        log = self.tmp / f"client-{i}-{time.monotonic_ns()}.log"
        self.run.client_logs.append(log)
        self.clients[i] = self._spawn(
            _command(
                self.variant_of(i),
                "client",
                "--api-url",
                self._gate_url(i),
                "--api-key",
                self.keys[i],
                "--client-name",
                f"chaos-{i}",
                "--storage",
                self.store_url,
                "--allow-network",
                "127.0.0.0/8",
                "--progress",
                "log",
                "--poll-interval",
                "0.5",
                "--heartbeat-interval",
                "1",
                "--concurrency",
                "8",
                "--max-tasks",
                str(HELD),
            ),
            log,
            self.s3_env,
        )

    def variant_of(self, i: int) -> str | None:
        liars = self.plan.liars
        first_liar = self.plan.clients - len(liars)
        return liars[i - first_liar] if i >= first_liar else self.plan.client_variant

    # ---- the job and its end

    def create_job(self, start_id: int = 1) -> None:
        body = {
            "source": "id_range",
            "chunk_size": self.plan.chunk,
            "max_attempts": 20,
            "params": {
                "url_template": self.origin + "/doc/{id}.bin",
                "start_id": start_id,
                "count": self.plan.tasks * self.plan.chunk,
                "ext": ".bin",
            },
        }
        if self.plan.verify_sample:
            body["verify_sample"] = self.plan.verify_sample
        r = httpx.post(
            self._gate_url(0) + "/api/v1/jobs", headers={"X-API-Key": ADMIN}, json=body, timeout=60
        )
        assert r.status_code == 201, r.text
        self.run.tasks_created += int(r.json()["tasks_created"])

    def unfinished(self) -> int | None:
        async def count() -> int:
            conn = await asyncpg.connect(self.dsn, timeout=5)
            try:  # checks not yet gathered into tasks are work to do too (server/db/verify.py)
                return int(
                    await conn.fetchval(
                        "SELECT (SELECT count(*) FROM tasks WHERE status IN ('pending', 'assigned'))"
                        " + (SELECT count(*) FROM verifications WHERE state IN ('pending', 'queued'))"
                    )
                )
            finally:
                await conn.close()

        try:
            return int(run_aside(count()))
        except (OSError, asyncpg.PostgresError, TimeoutError):
            return None  # PostgreSQL is down for the moment

    # ---- faults

    def fault(self, name: str) -> bool:
        """Fire one fault; one with no possible victim just now (all stopped, one gate up) is skipped."""
        if getattr(self, "_" + name)() is False:
            return False
        self.run.fired[name] = self.run.fired.get(name, 0) + 1
        return True

    def _victims(self, count: int) -> list[int]:
        return list(range(1 if self.plan.spare_first else 0, count))

    def _running_client(self) -> tuple[int, subprocess.Popen[Any]] | None:
        """A client that may be hit and is not stopped already, or None."""
        candidates = [i for i in self._victims(self.plan.clients) if i not in self.stopped]
        if not candidates:
            return None
        i = self.rng.choice(candidates)
        proc = self.clients[i]
        assert proc is not None
        return i, proc

    def _kill_client(self) -> bool:
        victim = self._running_client()
        if victim is None:
            return False
        i, proc = victim
        with contextlib.suppress(ProcessLookupError):  # (a quarantined liar has stopped)
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
        self.start_client(i)
        return True

    def _zombie(self) -> bool:
        victim = self._running_client()
        if victim is None:
            return False
        i, proc = victim
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGSTOP)
        self.stopped[i] = time.monotonic() + self.plan.lease_seconds + 3
        return True

    def _kill_gate(self) -> bool:
        up = [i for i, g in enumerate(self.gates) if g is not None]
        if len(up) < 2 and self.plan.gates > 1:
            return False
        up = [i for i in up if i in self._victims(self.plan.gates)]
        if not up:
            return False
        i = self.rng.choice(up)
        gate = self.gates[i]
        assert gate is not None
        gate.stop(signal.SIGKILL)
        self.gates[i] = None
        self.gates_down[i] = time.monotonic() + 1.5
        return True

    def _crash_postgres(self) -> None:
        self.pg.crash()
        time.sleep(1)
        self.pg.start()

    def _stall_storage(self) -> None:
        assert self.proxy is not None
        self.proxy.send_signal(signal.SIGUSR1)

    def _reset_storage(self) -> None:
        assert self.proxy is not None
        self.proxy.send_signal(signal.SIGUSR2)

    def _kill_writer(self) -> None:
        """A writer killed midway through a multipart upload leaves a staging upload for the sweep."""
        writer = subprocess.Popen(
            [
                sys.executable,
                str(REPO / "tests" / "storage_writer.py"),
                f"s3://{BUCKET}",
                f"writer/{self.rng.randrange(1 << 30)}.bin",
                str(64 << 20),
                "--slow",
                "0.05",
                "--endpoint",
                self.moto,
            ],
            cwd=REPO,
            env=CLEAN_ENV | S3_ENV,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            start_new_session=True,
        )
        assert writer.stdout is not None
        for line in writer.stdout:
            if line.startswith("progress") and int(line.split()[1]) >= 12 << 20:
                break
        os.killpg(writer.pid, signal.SIGKILL)
        writer.wait(10)
        writer.stdout.close()

    def tick(self) -> None:
        """Wake zombies and restart gates whose time has come; a client that exited by itself (it
        found its gate down at start, its key was suspended) is started again RESTART_SECONDS
        later, as deploy/docgate-client.service does (Restart=always)."""
        now = time.monotonic()
        for i, proc in enumerate(self.clients):
            if proc is not None and proc.poll() is not None and i not in self.stopped:
                when = self.exited.setdefault(i, now + RESTART_SECONDS)
                if now >= when:
                    del self.exited[i]
                    self.start_client(i)
        for i, when in list(self.stopped.items()):
            if now >= when:
                proc = self.clients[i]
                assert proc is not None
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGCONT)
                del self.stopped[i]
        for i, when in list(self.gates_down.items()):
            if now >= when:
                del self.gates_down[i]
                self._start_gate(i)

    def sample_memory(self) -> None:
        import psutil

        row: dict[str, Any] = {"t": time.monotonic()}
        first_gate, first_client = self.gates[0], self.clients[0]
        for name, procs in (
            ("gates", [g.proc for g in self.gates if g]),
            ("clients", [c for c in self.clients if c]),
            ("gate 0", [first_gate.proc] if first_gate else []),
            ("client 0", [first_client] if first_client else []),
        ):
            rss = []
            for p in procs:
                with contextlib.suppress(psutil.NoSuchProcess):
                    rss.append(psutil.Process(p.pid).memory_info().rss)
            row[name] = max(rss) if rss else 0
        self.run.memory.append(row)

    # ---- the whole run

    def execute(self) -> Run:
        """One job of plan.tasks tasks, faults until it is done (or the deadline), then wind down."""
        self.create_job()
        for i in range(self.plan.clients):
            self.start_client(i)
        started = time.monotonic()
        self.run.finished = self._drive(started + self.plan.deadline)
        self.run.seconds = time.monotonic() - started
        self._wind_down()
        return self.run

    def execute_soak(self, seconds: float) -> Run:
        """Job after job under the fault mix for `seconds`, sampling memory every 10 s."""
        for i in range(self.plan.clients):
            self.start_client(i)
        started = time.monotonic()
        rounds = 0
        while time.monotonic() - started < seconds:
            self.create_job(start_id=1 + rounds * self.plan.tasks * self.plan.chunk)
            rounds += 1
            if not self._drive(time.monotonic() + self.plan.deadline, sample_every=10):
                break
        self.run.finished = True
        self.run.seconds = time.monotonic() - started
        self._wind_down()
        return self.run

    def _drive(self, deadline: float, sample_every: float | None = None) -> bool:
        """Inject faults until no task is pending or assigned; False if the deadline came first."""
        plan = self.plan
        pending = list(plan.faults)
        random.Random(plan.seed + len(self.run.fired)).shuffle(pending)
        next_fault = time.monotonic() + self.rng.uniform(*plan.fault_gap)
        next_sample = time.monotonic()
        while time.monotonic() < deadline:
            self.tick()
            if sample_every and time.monotonic() >= next_sample:
                self.sample_memory()
                next_sample = time.monotonic() + sample_every
            if time.monotonic() >= next_fault and plan.faults:
                first_round = bool(pending)
                name = pending.pop(0) if first_round else self.rng.choice(plan.faults)
                if not self.fault(name) and first_round:
                    pending.append(name)  # skipped for want of a victim: it still fires once
                next_fault = time.monotonic() + self.rng.uniform(*plan.fault_gap)
            if self.unfinished() == 0 and not pending and not self.stopped and not self.gates_down:
                return True
            time.sleep(0.25)
        return False

    def _wind_down(self) -> None:
        for i in list(self.stopped):
            self.stopped[i] = 0
        self.tick()
        time.sleep(2)  # let woken zombies try their stale writes
        for i in list(self.gates_down):
            self.gates_down[i] = 0
        self.tick()
        self.stop_clients()
        self.run.loop_lag = [_loop_lag(g.url) for g in self.gates if g is not None]
        if self.plan.sweep:
            env = CLEAN_ENV | S3_ENV | {"AWS_ENDPOINT_URL": self.moto}
            sweep = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "docgate.cli",
                    "storage",
                    "sweep",
                    f"s3://{BUCKET}",
                    "--older-than",
                    "0",
                ],
                cwd=REPO,
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert sweep.returncode == 0, sweep.stderr

    def stop_clients(self) -> None:
        for proc in self.clients:
            if proc is not None and proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGCONT)
                    os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.clients:
            if proc is not None:
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(10)

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGCONT)
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(10)
        for gate in self.gates:
            if gate is not None:
                gate.stop(signal.SIGKILL)
        if self.proxy is not None and self.proxy.stdout:
            self.proxy.stdout.close()
        for f in self.files:
            f.close()
        self.pg.stop()


def _loop_lag(url: str) -> dict[str, float]:
    """The gate's event-loop lag histogram: cumulative counts per bucket bound."""
    text = httpx.get(url + "/metrics", timeout=10).text
    buckets: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("docgate_event_loop_lag_seconds_bucket"):
            bound = line.split('le="')[1].split('"')[0]
            buckets[bound] = float(line.rsplit(" ", 1)[1])
    return buckets


def _wait(probe: Any, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            probe()
            return
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def dump(run: Run, path: Path) -> None:
    path.write_text(
        json.dumps(
            {"seed": run.plan.seed, "seconds": run.seconds, "fired": run.fired, "memory": run.memory},
            indent=2,
        )
    )
