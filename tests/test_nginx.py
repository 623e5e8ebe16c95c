"""Real nginx (Debian's) in front of two gates, configured from nginx.conf.example itself.

Only ports, certificate paths and upstream addresses are substituted; the
test fails if the example and the running config differ in anything else.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import ssl
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import httpx
import pytest

from cluster import ADMIN, Origin
from conftest import free_port
from processes import CLEAN_ENV, REPO, GateProcess, docgate, stop_nginx

EXAMPLE = REPO / "nginx.conf.example"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
ACCESS_LOG = Path("/var/log/nginx/docgate.access.json")
pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


@dataclass
class Front:
    url: str
    cert: Path
    gates: list[GateProcess]
    store: Path
    tmp: Path
    plain_url: str

    def client(self, name: str, key: str, *flags: str) -> subprocess.Popen[bytes]:
        with (self.tmp / f"client-{name}.log").open("wb") as log:  # the child keeps its own copy
            return subprocess.Popen(
                docgate(
                    "client",
                    "--api-url",
                    self.url,
                    "--api-key",
                    key,
                    "--ca-cert",
                    str(self.cert),
                    "--client-name",
                    name,
                    "--output-dir",
                    str(self.store),
                    "--allow-network",
                    "127.0.0.0/8",
                    "--progress",
                    "log",
                    "--poll-interval",
                    "1",
                    "--heartbeat-interval",
                    "1",
                    *flags,
                ),
                cwd=REPO,
                env=CLEAN_ENV,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def http(self) -> httpx.Client:
        tls = ssl.create_default_context(cafile=str(self.cert))
        return httpx.Client(base_url=self.url, verify=tls, timeout=60)


def substitutions(http_port: int, https_port: int, cert: Path, key: Path, gates: list[int]) -> dict[str, str]:
    upstream = "max_fails=3 fail_timeout=10s;"
    live = "/etc/letsencrypt/live/gate.example.org"
    return {
        "listen 80;": f"listen 127.0.0.1:{http_port};",
        "listen 443 ssl http2;": f"listen 127.0.0.1:{https_port} ssl http2;",
        f"ssl_certificate {live}/fullchain.pem;": f"ssl_certificate {cert};",
        f"ssl_certificate_key {live}/privkey.pem;": f"ssl_certificate_key {key};",
        f"server 127.0.0.1:8001 {upstream}": f"server 127.0.0.1:{gates[0]} {upstream}",
        f"server 127.0.0.1:8002 {upstream}": f"server 127.0.0.1:{gates[1]} {upstream}",
    }


def render(subs: dict[str, str]) -> str:
    lines = EXAMPLE.read_text().splitlines()
    out = []
    for line in lines:
        key = line.strip()
        out.append(line.replace(key, subs[key]) if key in subs else line)
    return "\n".join(out) + "\n"


def assert_only_substituted(generated: str, subs: dict[str, str]) -> None:
    example = EXAMPLE.read_text().splitlines()
    lines = generated.splitlines()
    assert len(lines) == len(example)
    changed = [(a.strip(), b.strip()) for a, b in zip(example, lines, strict=True) if a != b]
    assert {original for original, _ in changed} == set(subs), changed  # an upstream line is in two blocks
    for original, now in changed:
        assert subs.get(original) == now, (original, now)


def make_cert(tmp: Path) -> tuple[Path, Path]:
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


@pytest.fixture
def front(tmp_path: Path, db_dsn: str) -> Iterator[Front]:
    if not Path(NGINX).exists():
        if os.environ.get("CI"):
            pytest.fail("nginx is not installed; `make test` installs it")
        pytest.skip("nginx is not installed (make test installs it when run as root)")
    cert, key = make_cert(tmp_path)
    store = tmp_path / "store"
    ports = [free_port(), free_port()]
    gates = [
        GateProcess(
            docgate("server"),
            {
                "DATABASE_URL": db_dsn,
                "API_PORT": str(p),
                "ADMIN_API_KEY": ADMIN,
                "STORAGE_URL": str(store),
                "LEASE_SECONDS": "10",
                "RETRY_BACKOFF_SECONDS": "0.2",
                "RETRY_BACKOFF_MAX_SECONDS": "1",
            },
            p,
            tmp_path,
        )
        for p in ports
    ]
    for gate in gates:
        gate.wait_healthy()
    http_port, https_port = free_port(), free_port()
    subs = substitutions(http_port, https_port, cert, key, ports)
    config = tmp_path / "nginx.conf"
    config.write_text(render(subs))
    assert_only_substituted(config.read_text(), subs)
    flags = ["-c", str(config), "-e", str(tmp_path / "nginx-error.log")]
    check = subprocess.run(
        [NGINX, "-t", *flags, "-g", f"pid {tmp_path / 'nginx.pid'};"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert check.returncode == 0, check.stderr
    nginx = subprocess.Popen(
        [NGINX, *flags, "-g", f"daemon off; pid {tmp_path / 'nginx.pid'};"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"https://127.0.0.1:{https_port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            tls = ssl.create_default_context(cafile=str(cert))
            if httpx.get(url + "/health", verify=tls, timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            assert time.monotonic() < deadline, "nginx did not come up"
            time.sleep(0.2)
    yield Front(url, cert, gates, store, tmp_path, f"http://127.0.0.1:{http_port}")
    stop_nginx(nginx)
    for gate in gates:
        gate.stop()


def register(front: Front, name: str) -> str:
    with front.http() as http:
        return str(
            http.post(
                "/api/v1/clients/register", headers={"X-API-Key": ADMIN}, json={"client_name": name}
            ).json()["api_key"]
        )


def leases_served(gate: GateProcess) -> float:
    text = httpx.get(gate.url + "/metrics", timeout=10).text
    lines = text.splitlines()
    return float(next(line.split()[1] for line in lines if line.startswith("docgate_leases_total")))


def run_job(front: Front, origin: Origin, start: int, kill_gate: bool) -> None:
    with front.http() as http:
        http.post(
            "/api/v1/jobs",
            headers={"X-API-Key": ADMIN},
            json={
                "source": "id_range",
                "chunk_size": 50,
                "params": {
                    "url_template": origin.url + "/doc/{id}.bin",
                    "start_id": start,
                    "count": 2000,
                    "ext": ".bin",
                },
            },
        ).raise_for_status()
    clients = [
        front.client(f"c{i}", register(front, f"c{i}"), "--exit-when-idle", "--concurrency", "8")
        for i in range(3)
    ]
    try:
        if kill_gate:
            deadline = time.monotonic() + 60
            while leases_served(front.gates[0]) < 5 and time.monotonic() < deadline:
                time.sleep(0.2)
            os.killpg(front.gates[0].proc.pid, signal.SIGKILL)
        deadline = time.monotonic() + 180
        while any(c.poll() is None for c in clients) and time.monotonic() < deadline:
            time.sleep(0.2)
        codes = [c.poll() for c in clients]
        logs = [(front.tmp / f"client-c{i}.log").read_text()[-3000:] for i in range(3)]
        assert codes == [0, 0, 0], logs
    finally:
        for c in clients:
            if c.poll() is None:
                os.killpg(c.pid, signal.SIGKILL)
            c.wait(10)


def check_done(db_dsn: str, store: Path, start: int) -> list[int]:
    from conftest import run_aside

    async def fetch() -> tuple[list, list]:  # type: ignore[type-arg]
        import asyncpg

        conn = await asyncpg.connect(db_dsn)
        try:
            return (
                await conn.fetch("SELECT status, count(*) FROM tasks GROUP BY status"),
                await conn.fetch("SELECT doc_id, sha256, size FROM documents"),
            )
        finally:
            await conn.close()

    statuses, docs = run_aside(fetch())
    assert {r["status"]: r["count"] for r in statuses} == {"completed": 40}
    assert len(docs) == 2000
    import hashlib

    from docgate.origin import content_for

    for doc in docs:
        data = (store / f"{int(doc['doc_id']) // 50000}/{doc['doc_id']}.bin").read_bytes()
        assert data == content_for(doc["doc_id"], 1024) and hashlib.sha256(data).hexdigest() == doc["sha256"]
    return [r["count"] for r in statuses]


def test_two_gates_three_clients_over_https(front: Front, db_dsn: str, tmp_path: Path) -> None:
    origin = Origin(tmp_path, "--size", "1024")
    try:
        run_job(front, origin, 1, kill_gate=False)
    finally:
        origin.stop()
    check_done(db_dsn, front.store, 1)
    assert all(leases_served(g) > 0 for g in front.gates), "both gates must have served leases"
    from conftest import run_aside

    async def twice() -> list:  # type: ignore[type-arg]
        import asyncpg

        conn = await asyncpg.connect(db_dsn)
        try:
            return await conn.fetch(
                "SELECT task_id FROM task_events WHERE event = 'leased' GROUP BY task_id HAVING count(*) > 1"
            )
        finally:
            await conn.close()

    assert run_aside(twice()) == []  # no task leased twice


def test_a_gate_killed_mid_run_loses_nothing(front: Front, db_dsn: str, tmp_path: Path) -> None:
    origin = Origin(tmp_path, "--size", "1024", "--latency", "0.01")
    try:
        run_job(front, origin, 1, kill_gate=True)
    finally:
        origin.stop()
    assert front.gates[0].proc.poll() is not None
    check_done(db_dsn, front.store, 1)


def test_rate_limits_per_key_and_per_address(front: Front) -> None:
    noisy, quiet = register(front, "noisy"), register(front, "quiet")

    async def burst(keys: list[str]) -> list[int]:
        # aiohttp, not httpx: the burst must outrun the limits even on a busy 2-core machine.
        tls = ssl.create_default_context(cafile=str(front.cert))
        connector = aiohttp.TCPConnector(limit=100, ssl=tls)
        async with aiohttp.ClientSession(connector=connector) as http:

            async def one(key: str) -> int:
                url = front.url + "/api/v1/clients/heartbeat"
                async with http.post(url, headers={"X-API-Key": key}) as r:
                    return r.status

            return list(await asyncio.gather(*(one(k) for k in keys)))

    time.sleep(2.5)  # let the buckets refill after registration
    statuses = asyncio.run(burst([noisy] * 120))
    assert statuses.count(429) >= 40, statuses
    assert set(statuses) <= {200, 429}
    assert asyncio.run(burst([quiet] * 5)) == [200] * 5  # another key is unaffected
    time.sleep(3)
    random_keys = [f"dg_fake_{uuid.uuid4().hex}" for _ in range(600)]
    statuses = asyncio.run(burst(random_keys))
    assert statuses.count(429) >= 100, "made-up keys must meet the per-address limit"
    assert set(statuses) <= {401, 429}


def test_long_poll_and_body_limit_through_nginx(front: Front) -> None:
    key = register(front, "poller")
    with front.http() as http:
        started = time.monotonic()
        r = http.post("/api/v1/tasks/request", params={"wait": 30}, headers={"X-API-Key": key})
        assert r.status_code == 204 and time.monotonic() - started >= 29
        big = b'{"search_params": {"x": "' + b"a" * (1_100_000) + b'"}}'
        r = http.post(
            "/api/v1/tasks/create",
            content=big,
            headers={"X-API-Key": ADMIN, "Content-Type": "application/json"},
        )
        assert r.status_code == 413 and "nginx" in r.text.lower()
    r = httpx.get(front.plain_url + "/health", timeout=5)
    assert r.status_code == 301 and r.headers["location"].startswith("https://")


def test_forged_forwarded_for_is_not_believed(front: Front) -> None:
    marker = str(uuid.uuid4())
    with front.http() as http:
        r = http.get(f"/api/v1/tasks/{marker}", headers={"X-API-Key": ADMIN, "X-Forwarded-For": "6.6.6.6"})
        assert r.status_code == 404
        assert "max-age=63072000" in r.headers["strict-transport-security"]
    time.sleep(0.5)
    gate_lines = [line for g in front.gates for line in g.output().splitlines() if marker in line]
    assert gate_lines and all("from 127.0.0.1" in line and "6.6.6.6" not in line for line in gate_lines)
    nginx_lines = [json.loads(line) for line in ACCESS_LOG.read_text().splitlines() if marker in line]
    assert nginx_lines and nginx_lines[-1]["remote_addr"] == "127.0.0.1"
