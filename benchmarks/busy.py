"""Scenario 8 — fast when busy: leasing behind a backlog in back-off, the dashboard and /metrics
under a million completions an hour, and creating a 10 M-task job through nginx.

1. Leasing behind tasks not yet due. 10,000 due tasks; 8 clients lease and complete 2,000 of
   them one at a time (the HTTP round trip of `/tasks/request` is the latency). Then 150,000
   tasks in retry back-off are added ahead of them in the lease order (higher priority, older)
   and the same is measured again; the plan of one lease is kept for each (EXPLAIN ANALYZE,
   rolled back). Baseline: the same run with nothing in back-off.
2. The dashboard under load. 10 M tasks (the creation scenario's database when it ran; else
   made here), 1 M of them completed over the last hour (their task_events spread over the hour,
   and the activity rows the completions' trigger keeps), then `/ui/live`, `/metrics`,
   `/api/v1/tasks/status` and `GET /api/v1/jobs/{id}` timed 30 times each (--quick: 100 k
   tasks, 100 k completions, 10 times). The per-minute query as it was (over task_events) is
   timed on the same rows, for the ratio.
3. Job creation through the shipped nginx config (nginx.conf.example: TLS, two gates behind it):
   a 10 M-task job (--quick: 1 M) posted with an idempotency key, then posted again (the
   caller's retry); the answer times, the job count and the task count when creation ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import ssl
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from benchmarks.backlog import lease_plan
from benchmarks.control_plane import drain_http
from benchmarks.lib import (
    ADMIN,
    Postgres,
    Processes,
    Table,
    connect,
    free_port,
    median,
    pct,
    running_gate,
    write_results,
)

REPO = Path(__file__).resolve().parent.parent
CLIENTS = 8
NGINX = "/usr/sbin/nginx"

OLD_PER_MINUTE = """
SELECT floor(extract(epoch FROM now() - at) / 60)::int AS ago, count(*), coalesce(sum(documents), 0)
FROM task_events WHERE event = 'completed' AND at > now() - interval '60 minutes' GROUP BY 1
"""


async def sql(dsn: str, *statements: str) -> None:
    conn = await connect(dsn)
    try:
        for statement in statements:
            await conn.execute(statement, timeout=3600)
    finally:
        await conn.close()


async def timed_sql(dsn: str, query: str, repeat: int) -> list[float]:
    conn = await connect(dsn)
    try:
        await conn.fetch(query)
        samples = []
        for _ in range(repeat):
            started = time.perf_counter()
            await conn.fetch(query)
            samples.append((time.perf_counter() - started) * 1000)
        return samples
    finally:
        await conn.close()


def buffers(plan: list[str]) -> str:
    return next((line.strip() for line in plan if "Buffers" in line), "")


def leasing(pg: Postgres, procs: Processes, work: Path, quick: bool, repeat: int) -> dict[str, Any]:
    waiting = 15_000 if quick else 150_000
    out: dict[str, Any] = {}
    for label, ahead in (("none in back-off", 0), (f"{waiting:,} in back-off ahead", waiting)):
        dsn = pg.fresh("bench_busy_lease")
        with running_gate(procs, dsn, work, log=work / "gate.log") as gate:
            gate.create_job("http://127.0.0.1:9/doc/{id}", 10_000)
            if ahead:
                # Retries of an outage: pending, higher priority and older than the due work,
                # their back-off an hour away.
                asyncio.run(
                    sql(
                        dsn,
                        f"INSERT INTO tasks (priority, max_attempts, attempts, run_after, last_error) "
                        f"SELECT 5, 5, 1, now() + interval '1 hour', 'HTTP 503' "
                        f"FROM generate_series(1, {ahead})",
                        "ANALYZE tasks",
                    )
                )
            keys = [gate.register(f"busy-{i}") for i in range(CLIENTS)]
            asyncio.run(drain_http(gate, keys, 1, limit=200))  # warm-up
            runs = [asyncio.run(drain_http(gate, keys, 1, limit=2_000)) for _ in range(repeat)]
            plan = asyncio.run(lease_plan(dsn))
        pg.drop("bench_busy_lease")
        out[label] = {
            "rates": [r.done / r.seconds for r in runs],
            "p50": [pct(r.lease_ms, 50) for r in runs],
            "p99": [pct(r.lease_ms, 99) for r in runs],
            "plan": plan,
        }
        p50, p99 = median(out[label]["p50"]), median(out[label]["p99"])
        print(f"  lease, {label}: p50 {p50:.2f} ms, p99 {p99:.2f} ms, {buffers(plan)}", flush=True)
    return out


def loaded_database(
    pg: Postgres, procs: Processes, work: Path, quick: bool, state: dict[str, Any]
) -> tuple[str, int]:
    scale = state.get("scale")
    tasks = 100_000 if quick else 10_000_000
    if scale and scale["tasks"] >= tasks:
        dsn, tasks = scale["dsn"], scale["tasks"]
    else:
        dsn = pg.fresh("bench_busy_dash")
        with running_gate(
            procs, dsn, work, env={"MAX_JOB_TASKS": str(tasks), "JOB_BACKGROUND_TASKS": str(tasks)}
        ) as gate:
            gate.create_job("http://127.0.0.1:9/doc/{id}", tasks)
    done = tasks // 10
    # 1 M completions over the last hour: the tasks completed (the counters follow by trigger),
    # their events spread over the hour, and the activity rows their completions would have made.
    asyncio.run(
        sql(
            dsn,
            f"""WITH picked AS (
                SELECT task_id FROM tasks WHERE status = 'pending' ORDER BY task_seq LIMIT {done}
            )
            UPDATE tasks t SET status = 'completed', attempts = 1, documents_downloaded = 1,
                               completed_at = now() - random() * interval '1 hour'
            FROM picked p WHERE t.task_id = p.task_id""",
            f"""INSERT INTO task_events (task_id, event, documents, at)
            SELECT task_id, 'completed', 1, completed_at FROM tasks WHERE status = 'completed'
            ORDER BY task_seq LIMIT {done}""",
            "DELETE FROM activity_deltas",
            """INSERT INTO activity (bucket, job_id, completed, documents)
            SELECT date_bin('10 seconds', e.at, timestamptz '2000-01-01 00:00:00+00'), t.job_id,
                   count(*), sum(e.documents)
            FROM task_events e JOIN tasks t USING (task_id) WHERE e.event = 'completed'
            GROUP BY 1, 2
            ON CONFLICT (bucket, job_id) DO UPDATE
            SET completed = excluded.completed, documents = excluded.documents""",
            "VACUUM ANALYZE task_events",
            "VACUUM ANALYZE tasks",
        )
    )
    return dsn, tasks


def dashboard(
    pg: Postgres, procs: Processes, work: Path, quick: bool, state: dict[str, Any]
) -> dict[str, Any]:
    dsn, tasks = loaded_database(pg, procs, work, quick, state)
    repeat = 10 if quick else 30
    out: dict[str, Any] = {"tasks": tasks, "completions": tasks // 10}
    with (
        running_gate(procs, dsn, work, log=work / "gate.log") as gate,
        httpx.Client(base_url=gate.url, timeout=120) as ui,
    ):
        ui.post("/ui/login", data={"api_key": ADMIN})
        job_id = asyncio.run(_first_job(dsn))
        pages = {
            "/ui/live": ("/ui/live", {}),
            "/metrics": ("/metrics", {}),
            "/api/v1/tasks/status": ("/api/v1/tasks/status", gate.admin),
            "GET /api/v1/jobs/{id}": (f"/api/v1/jobs/{job_id}", gate.admin),
        }
        for name, (path, headers) in pages.items():
            ui.get(path, headers=headers).raise_for_status()
            samples = []
            for _ in range(repeat):
                started = time.perf_counter()
                ui.get(path, headers=headers).raise_for_status()
                samples.append((time.perf_counter() - started) * 1000)
            out[name] = samples
            print(f"  {name}: median {median(samples):.1f} ms, p95 {pct(samples, 95):.1f} ms", flush=True)
    from server.db.dashboard import PER_MINUTE

    out["per-minute, from activity (now)"] = asyncio.run(timed_sql(dsn, PER_MINUTE, repeat))
    out["per-minute, from task_events (before)"] = asyncio.run(timed_sql(dsn, OLD_PER_MINUTE, repeat))
    return out


async def _first_job(dsn: str) -> str:
    conn = await connect(dsn)
    try:
        return str(await conn.fetchval("SELECT job_id FROM jobs ORDER BY tasks_total DESC LIMIT 1"))
    finally:
        await conn.close()


@contextlib.contextmanager
def nginx_front(procs: Processes, work: Path, gates: list[int]) -> Iterator[tuple[str, Path]]:
    """Debian's nginx with nginx.conf.example, only its ports, certificate and upstreams changed."""
    cert, key = work / "cert.pem", work / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    http_port, https_port = free_port(), free_port()
    live, upstream = "/etc/letsencrypt/live/gate.example.org", "max_fails=3 fail_timeout=10s;"
    subs = {
        "listen 80;": f"listen 127.0.0.1:{http_port};",
        "listen 443 ssl http2;": f"listen 127.0.0.1:{https_port} ssl http2;",
        f"ssl_certificate {live}/fullchain.pem;": f"ssl_certificate {cert};",
        f"ssl_certificate_key {live}/privkey.pem;": f"ssl_certificate_key {key};",
        # the example's two upstream lines (in each upstream block) become one per gate
        f"server 127.0.0.1:8001 {upstream}": "\n        ".join(
            f"server 127.0.0.1:{g} {upstream}" for g in gates
        ),
        f"server 127.0.0.1:8002 {upstream}": "",
    }
    lines = [
        line.replace(line.strip(), subs[line.strip()]) if line.strip() in subs else line
        for line in (REPO / "nginx.conf.example").read_text().splitlines()
    ]
    config = work / "nginx.conf"
    config.write_text("\n".join(lines) + "\n")
    flags = [
        "-c",
        str(config),
        "-e",
        str(work / "nginx-error.log"),
        "-g",
        f"daemon off; pid {work / 'nginx.pid'};",
    ]
    proc = procs.start([NGINX, *flags], log=work / "nginx.log")
    url = f"https://127.0.0.1:{https_port}"
    deadline = time.monotonic() + 30
    while True:
        with contextlib.suppress(httpx.TransportError):
            if (
                httpx.get(url + "/health", verify=ssl.create_default_context(cafile=str(cert))).status_code
                == 200
            ):
                break
        if time.monotonic() > deadline:
            raise RuntimeError("nginx did not come up")
        time.sleep(0.2)
    try:
        yield url, cert
    finally:
        proc.send_signal(signal.SIGQUIT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(15)
        procs.stop(proc)


def creation(pg: Postgres, procs: Processes, work: Path, quick: bool) -> dict[str, Any]:
    tasks = 1_000_000 if quick else 10_000_000
    dsn = pg.fresh("bench_busy_create")
    env = {"MAX_JOB_TASKS": str(tasks)}
    body = {
        "source": "id_range",
        "chunk_size": 1,
        "params": {"url_template": "http://127.0.0.1:9/doc/{id}", "start_id": 1, "count": tasks},
        "idempotency_key": f"bench-{uuid.uuid4().hex}",
    }
    with (
        running_gate(procs, dsn, work, env=env, log=work / "gate-a.log") as a,
        running_gate(procs, dsn, work, env=env, log=work / "gate-b.log") as b,
        nginx_front(procs, work, [int(a.url.rsplit(":", 1)[1]), int(b.url.rsplit(":", 1)[1])]) as (url, cert),
        httpx.Client(base_url=url, verify=ssl.create_default_context(cafile=str(cert)), timeout=120) as http,
    ):
        answers = []
        for _ in range(2):  # the request, then the caller's retry of it
            started = time.perf_counter()
            reply = http.post("/api/v1/jobs", headers={"X-API-Key": ADMIN}, json=body)
            answers.append(
                {"status": reply.status_code, "ms": (time.perf_counter() - started) * 1000, **reply.json()}
            )
        job_id = answers[0]["job_id"]
        started = time.perf_counter()
        while True:
            job = http.get(f"/api/v1/jobs/{job_id}", headers={"X-API-Key": ADMIN}).json()
            if not job["creating"]:
                break
            time.sleep(1)
        created_s = time.perf_counter() - started
    counts = asyncio.run(_counts(dsn))
    pg.drop("bench_busy_create")
    print(
        f"  job creation through nginx: {json.dumps(answers)}; created in {created_s:.0f} s; {counts}",
        flush=True,
    )
    return {"tasks": tasks, "answers": answers, "created_seconds": created_s, **counts}


async def _counts(dsn: str) -> dict[str, int]:
    conn = await connect(dsn)
    try:
        return {
            "jobs": await conn.fetchval("SELECT count(*) FROM jobs"),
            "task_rows": await conn.fetchval("SELECT count(*) FROM tasks"),
            "distinct_start_ids": await conn.fetchval(
                "SELECT count(DISTINCT params->>'start_id') FROM tasks"
            ),
        }
    finally:
        await conn.close()


def scenario(
    pg: Postgres, procs: Processes, work: Path, *, quick: bool, repeat: int, state: dict[str, Any]
) -> None:
    lease = leasing(pg, procs, work, quick, repeat)
    dash = dashboard(pg, procs, work, quick, state)
    made = creation(pg, procs, work, quick)
    (none, ahead) = lease.values()
    lease_table = Table(
        ["backlog", "tasks/s", "lease p50 ms", "lease p99 ms", "p99 / none", "buffers (one lease)"]
    )
    for label, r in lease.items():
        lease_table.add(
            label, median(r["rates"]), median(r["p50"]), median(r["p99"]),
            f"{median(r['p99']) / median(none['p99']):.2f}×", buffers(r["plan"]),
        )  # fmt: skip
    dash_table = Table(["request", "median ms", "p95 ms", "target"])
    targets = {"/ui/live": 200, "/metrics": 100}
    for name in ("/ui/live", "/metrics", "/api/v1/tasks/status", "GET /api/v1/jobs/{id}",
                 "per-minute, from activity (now)", "per-minute, from task_events (before)"):  # fmt: skip
        target = targets.get(name)
        verdict = (
            "" if target is None else f"< {target} ms: {'met' if median(dash[name]) < target else 'MISSED'}"
        )
        dash_table.add(name, median(dash[name]), pct(dash[name], 95), verdict)
    first, retry = made["answers"]
    made_table = Table(
        [
            "tasks",
            "first answer",
            "ms",
            "retry answer",
            "ms",
            "jobs",
            "task rows",
            "distinct ids",
            "created in s",
        ]
    )
    made_table.add(
        made["tasks"], first["status"], first["ms"], retry["status"], retry["ms"], made["jobs"],
        made["task_rows"], made["distinct_start_ids"], made["created_seconds"],
    )  # fmt: skip
    write_results(
        "busy",
        "Fast when busy: leasing behind a back-off backlog, the dashboard under load, job creation",
        {"leasing": lease, "dashboard": dash, "creation": made},
        {
            f"{CLIENTS} clients leasing and completing 2,000 due tasks one at a time": lease_table,
            f"{dash['tasks']:,} tasks, {dash['completions']:,} completed in the last hour": dash_table,
            "a job posted through nginx (nginx.conf.example, two gates), then posted again": made_table,
        },
        None,
        notes=[
            f"{repeat} run(s) per lease measurement; medians. Plans are in busy.json.",
            "Completions of the last hour are made in bulk (SQL), with their task_events and activity rows.",
            "The job is created with chunk_size 1 (one task per id).",
        ],
    )
