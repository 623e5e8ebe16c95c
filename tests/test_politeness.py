"""Polite as one fleet: a gate, five client processes and an origin written here that counts
every request it gets, by the second.

Each client alone would run 16 requests at once (`--concurrency 16`, no per-client limit); the
gate holds the host's budget (HOST_RATE_LIMIT) and grants each client working on the host an
equal share, about once a second; 429 answers from any client halve the fleet's rate for that
host, and Retry-After pauses it for everyone.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from cluster import Cluster

pytestmark = pytest.mark.timeout(300)


@dataclass
class Counts:
    """When each request came, and which were answered 429."""

    at: list[float] = field(default_factory=list)
    throttled: list[float] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


class CountingOrigin(BaseHTTPRequestHandler):
    """Documents at /doc/<id>.bin; with `limit`, a 429 (Retry-After: 1) to any request past
    `limit` in the last second, as registries throttle."""

    protocol_version = "HTTP/1.1"
    counts = Counts()
    limit: int | None = None

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        now = time.monotonic()
        with self.counts.lock:
            recent = sum(1 for t in self.counts.at[-200:] if now - t < 1.0)
            self.counts.at.append(now)
            throttle = self.limit is not None and recent >= self.limit
            if throttle:
                self.counts.throttled.append(now)
        if throttle:
            self.send_response(429)
            self.send_header("Retry-After", "1")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        time.sleep(0.02)  # a registry takes a moment to answer
        self.document()

    def document(self) -> None:
        """The document at this path: its path, fifty times over."""
        body = (self.path.encode() + b"\n") * 50
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def origin() -> Iterator[tuple[str, type[CountingOrigin]]]:
    handler = type("Counting", (CountingOrigin,), {"counts": Counts(), "limit": None})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", handler
    server.shutdown()
    server.server_close()


def run_job(tmp_path: Path, db_dsn: str, url: str, count: int, **settings: str) -> Cluster:
    cluster = Cluster(tmp_path, db_dsn, **settings)
    params = {"url_template": url + "/doc/{id}.bin", "start_id": 1, "count": count, "ext": ".bin"}
    cluster.post("/api/v1/jobs", {"source": "id_range", "chunk_size": 10, "params": params})
    for i in range(5):
        cluster.client(f"polite-{i}", "--exit-when-idle", "--concurrency", "16", "--max-tasks", "4")
    assert cluster.wait_clients(240) == [0] * 5
    return cluster


def windows(times: list[float], start: float, end: float, width: float = 2.0) -> list[int]:
    """Requests in each `width`-second window from start to end, sliding by a quarter second."""
    out = []
    t = start
    while t + width <= end:
        out.append(sum(1 for x in times if t <= x < t + width))
        t += 0.25
    return out


def test_five_clients_share_one_hosts_budget(tmp_path: Path, db_dsn: str, origin: tuple[str, type]) -> None:
    url, handler = origin
    cluster = run_job(tmp_path, db_dsn, url, 360, HOST_RATE_LIMIT="20")
    try:
        times = handler.counts.at
        assert len(times) >= 360
        first, last = times[0], times[-1]
        busiest = max(windows(times, first + 3.0, last))
        print(f"busiest 2-second window: {busiest} requests")
        assert busiest <= 2 * 26, f"{busiest} requests in one 2-second window (budget 20/s)"
        rate = len(times) / (last - first)
        assert rate >= 12, f"only {rate:.1f} requests per second on average (budget 20/s)"
        assert cluster.sql("SELECT count(*) AS n FROM documents")[0]["n"] == 360
        host = cluster.get("/api/v1/hosts")["hosts"]
        # A client reports what it saw with its next grant request; what it saw after its last one
        # before it exits goes unreported, so "most" is what the gate can know.
        assert [h["requests_per_second"] for h in host] == [20.0] and host[0]["ok"] >= 300
    finally:
        cluster.stop()


def test_a_throttling_origin_slows_the_fleet_and_loses_nothing(
    tmp_path: Path, db_dsn: str, origin: tuple[str, type]
) -> None:
    """429 whenever it got more than 15 requests in the last second, under a budget of 60/s:
    the fleet backs off together, and nothing fails because of a 429."""
    url, handler = origin
    handler.limit = 15
    cluster = run_job(tmp_path, db_dsn, url, 400, HOST_RATE_LIMIT="60")
    try:
        times, throttled = handler.counts.at, handler.counts.throttled
        middle = times[0] + (times[-1] - times[0]) / 2
        late = [t for t in times if t >= middle]
        late_429 = [t for t in throttled if t >= middle]
        start = times[0]
        seconds = [
            (
                sum(1 for t in times if s <= t - start < s + 1),
                sum(1 for t in throttled if s <= t - start < s + 1),
            )
            for s in range(int(times[-1] - start) + 1)
        ]
        assert len(late_429) < 0.10 * len(late), (
            f"{len(late_429)} of {len(late)} answers were 429s late in the run; "
            f"(requests, 429s) second by second: {seconds}"
        )
        rows = cluster.sql("SELECT count(*) AS n FROM documents")
        assert rows[0]["n"] == 400
        failed = cluster.sql("SELECT count(*) AS n FROM document_failures")
        assert failed[0]["n"] == 0
    finally:
        cluster.stop()


async def test_grants_share_the_budget_and_carry_the_fleets_back_off(db_dsn: str, tmp_path: Path) -> None:
    """The grant exchange against an in-process gate: equal shares for the clients working on a
    host, a throttle report halves the fleet's rate, Retry-After makes everyone wait, an operator
    pauses and overrides; clients cannot touch the overrides."""
    from conftest import gate_settings, start_gate

    settings = gate_settings(storage_url=str(tmp_path / "store"), host_rate_limit=10, host_connections=8)
    async for gate in start_gate(db_dsn, settings):
        a, b = await gate.register("a"), await gate.register("b")
        ask = "/api/v1/hosts/grants"
        one = {"hosts": [{"host": "registry.example", "ok": 5}]}
        first = (await gate.http.post(ask, headers=a, json=one)).json()["grants"][0]
        assert (first["requests_per_second"], first["max_connections"]) == (10.0, 8)
        # b joins: a still holds the whole budget until it asks again, so b gets what is left.
        joined = (await gate.http.post(ask, headers=b, json=one)).json()["grants"][0]
        assert (joined["requests_per_second"], joined["max_connections"]) == (0.0, 0)
        shrunk = (await gate.http.post(ask, headers=a, json=one)).json()["grants"][0]
        assert (shrunk["requests_per_second"], shrunk["max_connections"]) == (5.0, 4)
        shared = (await gate.http.post(ask, headers=b, json=one)).json()["grants"][0]
        assert (shared["requests_per_second"], shared["max_connections"]) == (5.0, 4)

        hit = {"hosts": [{"host": "registry.example", "throttled": 3, "retry_after": 20}]}
        await gate.http.post(ask, headers=a, json=hit)
        after = (await gate.http.post(ask, headers=b, json=one)).json()["grants"][0]
        assert after["requests_per_second"] < 3 and after["wait_seconds"] > 10  # b heard of a's 429s

        refused = await gate.http.put("/api/v1/hosts/registry.example", headers=a, json={"paused": True})
        assert (refused.status_code, refused.json()["code"]) == (403, "forbidden")
        bad = await gate.http.put("/api/v1/hosts/not a host", headers=gate.admin, json={})
        assert bad.status_code == 422
        put = await gate.http.put(
            "/api/v1/hosts/registry.example",
            headers=gate.admin,
            json={"requests_per_second": 40, "paused": True},
        )
        assert put.status_code == 204
        paused = (await gate.http.post(ask, headers=a, json=one)).json()["grants"][0]
        assert paused["paused"] and paused["requests_per_second"] == 20.0  # 40 between a and b
        (listed,) = (await gate.http.get("/api/v1/hosts", headers=gate.admin)).json()["hosts"]
        assert listed["paused"] and listed["requests_per_second"] == 40 and listed["throttled"] == 3
        assert listed["clients_active"] == 2 and listed["ok"] >= 15


def test_the_hosts_command(tmp_path: Path, db_dsn: str) -> None:
    import subprocess

    from processes import CLEAN_ENV, REPO, docgate

    env = CLEAN_ENV | {"DATABASE_URL": db_dsn}

    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            docgate("hosts", *argv), env=env, cwd=REPO, capture_output=True, text=True, timeout=60
        )

    assert run("set", "Registry.Example:8443", "--rate", "3").returncode == 0
    assert run("pause", "registry.example:8443").returncode == 0
    listed = run("list")
    assert listed.returncode == 0 and "registry.example:8443" in listed.stdout
    assert "budget 3/s" in listed.stdout and "paused" in listed.stdout
    assert run("resume", "registry.example:8443").returncode == 0
    assert "running" in run("list").stdout
    bad = run("pause", "no such host!")
    assert bad.returncode == 2 and "is not a host name" in bad.stderr and "Traceback" not in bad.stderr


class CaptchaOrigin(CountingOrigin):
    """Serves documents until `captcha` is set, then a captcha page with status 200, as a
    registry does to a fleet it has decided is a bot."""

    captcha = threading.Event()
    served: dict[str, int] = {}
    wall_after = 30  # requests served before the wall

    def do_GET(self) -> None:  # noqa: N802
        with self.counts.lock:
            self.counts.at.append(time.monotonic())
            self.served[self.path] = self.served.get(self.path, 0) + 1
            if len(self.counts.at) == self.wall_after:
                self.captcha.set()
        if self.captcha.is_set():
            page = b"<!DOCTYPE html><html><body>Please prove you are human: captcha</body></html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)
            return
        self.document()


def test_a_captcha_wall_pauses_the_host_by_itself(tmp_path: Path, db_dsn: str) -> None:
    """Halfway, the origin answers every request with a captcha page under status 200: none is
    stored, the host pauses by itself within a bounded number of answers, and once the origin
    recovers and an operator resumes it, the job completes with every document whole."""
    import httpx

    handler = type(
        "Captcha", (CaptchaOrigin,), {"counts": Counts(), "captcha": threading.Event(), "served": {}}
    )
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    # The job's own switch set out of reach: this is the host's (test_soft_blocks has the job's).
    cluster = Cluster(
        tmp_path, db_dsn, HOST_RATE_LIMIT="30", HOST_PAUSE_MIN_ANSWERS="20", JOB_PAUSE_MIN_ANSWERS="100000"
    )
    try:
        params = {"url_template": url + "/doc/{id}.bin", "start_id": 1, "count": 120, "ext": ".bin"}
        cluster.post(
            "/api/v1/jobs", {"source": "id_range", "chunk_size": 10, "max_attempts": 20, "params": params}
        )
        for i in range(2):
            cluster.client(f"walled-{i}", "--exit-when-idle", "--concurrency", "8")
        host = url.removeprefix("http://")
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            (info,) = cluster.get("/api/v1/hosts")["hosts"] or [{"paused": False}]
            if info["paused"]:
                break
            time.sleep(0.2)
        assert info["paused"] and "paused by itself" in info["paused_reason"], info
        walled = len(handler.counts.at) - CaptchaOrigin.wall_after
        time.sleep(3)  # paused: the fleet sends (almost) nothing more
        after = len(handler.counts.at) - CaptchaOrigin.wall_after - walled
        assert after <= 20, "the fleet kept fetching from a paused host"
        assert walled < 150, f"{walled} captcha pages served before the host paused"

        handler.captcha.clear()  # the registry lets the fleet in again; the operator resumes
        r = httpx.put(f"{cluster.url}/api/v1/hosts/{host}", headers=cluster.admin, json={}, timeout=10)
        assert r.status_code == 204
        assert cluster.wait_clients(180) == [0, 0]
        rows = cluster.sql("SELECT doc_id, size FROM documents")
        assert len(rows) == 120 and all(r["size"] == len(f"/doc/{r['doc_id']}.bin\n") * 50 for r in rows)
        stored = b"".join(p.read_bytes() for p in cluster.store.rglob("*.bin"))
        assert b"captcha" not in stored
    finally:
        cluster.stop()
        server.shutdown()
        server.server_close()


def test_shares_follow_clients_joining_and_dying(
    tmp_path: Path, db_dsn: str, origin: tuple[str, type]
) -> None:
    """Two clients, then three more joining, then one killed with -9: the budget is never
    exceeded past a small burst, and not left unused (the dead client's share goes to the
    others within seconds: it stops asking, and shares count only clients that asked lately)."""
    import signal

    url, handler = origin
    cluster = Cluster(tmp_path, db_dsn, HOST_RATE_LIMIT="20")
    try:
        params = {"url_template": url + "/doc/{id}.bin", "start_id": 1, "count": 500, "ext": ".bin"}
        cluster.post("/api/v1/jobs", {"source": "id_range", "chunk_size": 10, "params": params})
        flags = ("--exit-when-idle", "--concurrency", "16", "--max-tasks", "2")
        for i in range(2):
            cluster.client(f"early-{i}", *flags)
        time.sleep(5)
        joined = [cluster.client(f"late-{i}", *flags) for i in range(3)]
        time.sleep(5)
        victim = joined[0]
        os.killpg(victim.pid, signal.SIGKILL)
        victim.wait(10)
        killed_at = time.monotonic()
        codes = cluster.wait_clients(240)
        assert [c for c in codes if c != -signal.SIGKILL] == [0, 0, 0, 0]
        times = handler.counts.at
        busiest = max(windows(times, times[0] + 3.0, times[-1]))
        print(f"busiest 2-second window: {busiest} requests")
        assert busiest <= 2 * 26, f"{busiest} requests in one 2-second window (budget 20/s)"
        # From 4 s after the kill to the end of the job's bulk, the four survivors use the budget.
        after = [t for t in times if killed_at + 4 <= t < times[-1] - 2]
        if len(after) > 40:
            rate = len(after) / (after[-1] - after[0])
            assert rate >= 12, f"only {rate:.1f} requests per second after a client died (budget 20/s)"
        assert cluster.sql("SELECT count(*) AS n FROM documents")[0]["n"] == 500
    finally:
        cluster.stop()


async def test_grants_held_at_once_never_sum_past_the_budget(db_dsn: str, tmp_path: Path) -> None:
    """Clients joining, asking in any order: the grants each holds at any moment (its last
    answer) sum to at most the budget, and within two rounds every client has its equal share.
    Negative control: the shares alone (budget / clients, what a newcomer would get if the
    others' grants were not counted) overshoot when three join two."""
    import asyncio
    import random

    from conftest import gate_settings, start_gate

    settings = gate_settings(storage_url=str(tmp_path / "store"), host_rate_limit=20, host_connections=16)
    async for gate in start_gate(db_dsn, settings):
        keys = [await gate.register(f"c{i}") for i in range(5)]
        held: dict[int, tuple[float, int]] = {}
        rng = random.Random(7)

        for _ in range(3):  # two clients settle
            for i in (0, 1):
                await _ask_and_check(gate, keys[i], i, held)
        naive = 20 / 2 * 2 + 3 * (20 / 5)  # the two keep 10 each while three newcomers take 4
        assert naive > 20
        for _ in range(4):  # three more join; everyone asks in a shuffled order each round
            order = list(range(5))
            rng.shuffle(order)
            for i in order:
                await _ask_and_check(gate, keys[i], i, held)
        assert all(abs(rate - 4.0) < 1e-9 for rate, _ in held.values()), held
        assert all(slots == 3 for _, slots in held.values()), held
        # Fifteen more join, all asking at once, round after round: what the gate has granted
        # to the clients working on the host (each one's last answer) never sums past the budget.
        keys += [await gate.register(f"d{i}") for i in range(15)]
        one = {"hosts": [{"host": "registry.example", "ok": 1}]}
        last: dict[int, tuple[float, int]] = {}
        for _ in range(5):
            replies = await asyncio.gather(
                *(gate.http.post("/api/v1/hosts/grants", headers=k, json=one) for k in keys)
            )
            for i, reply in enumerate(replies):
                grant = reply.json()["grants"][0]
                last[i] = (grant["requests_per_second"], grant["max_connections"])
            assert sum(r for r, _ in last.values()) <= 20 + 1e-9, last
            assert sum(c for _, c in last.values()) <= 20, last  # 20 clients, 16 + one each


async def _ask_and_check(gate: Any, key: dict[str, str], i: int, held: dict[int, tuple[float, int]]) -> None:
    """Client i asks for its grant; then every client's last grant together fits the budget."""
    one = {"hosts": [{"host": "registry.example", "ok": 1}]}
    reply = await gate.http.post("/api/v1/hosts/grants", headers=key, json=one)
    grant = reply.json()["grants"][0]
    held[i] = (grant["requests_per_second"], grant["max_connections"])
    assert sum(r for r, _ in held.values()) <= 20 + 1e-9, held
    assert sum(c for _, c in held.values()) <= 16, held


async def test_a_client_waits_for_its_grant_and_goes_on_without_an_older_gate() -> None:
    """A gate that fails to answer: a host with a budget starts nothing until a grant comes
    (the gate gives a silent client's share to the others). No grant endpoint at all (an older
    gate) or a host the gate would not take: the client goes on by its own limits."""
    import asyncio

    import httpx

    from client.errors import GateUnavailable
    from client.gate import gate_error
    from client.limits import FleetLimits
    from protocol import hosts

    asked: list[list[str]] = []

    async def older_gate(reports: list, tasks: list) -> None:  # type: ignore[type-arg]
        asked.append([r.host for r in reports])
        # What the client makes of an older gate's answer: its 404 with code route_not_found.
        raise gate_error(
            httpx.Response(
                404, json={"detail": "no route POST /api/v1/hosts/grants", "code": "route_not_found"}
            )
        )

    limits = FleetLimits(4, None, older_gate)  # type: ignore[arg-type]
    for host in ("registry.example", ""):
        async with asyncio.timeout(3):
            async with limits.slot(host):
                pass
    await limits.close()
    assert asked == [["registry.example"]]  # "" is never reported

    down = True

    async def flaky(reports: list[hosts.HostReport], tasks: list[Any]) -> hosts.GrantReply:
        if down:
            raise GateUnavailable("HTTP 503")
        grant = hosts.HostGrant(host="registry.example", requests_per_second=5.0, max_connections=2)
        return hosts.GrantReply(grants=[grant], refresh_seconds=0.2, valid_seconds=1.0)

    limits = FleetLimits(4, None, flaky)

    async def fetch_one() -> None:
        async with limits.slot("registry.example"):
            pass

    waiting = asyncio.create_task(fetch_one())
    await asyncio.sleep(2.5)
    assert not waiting.done(), "a host with a budget was fetched from without a grant"
    down = False
    async with asyncio.timeout(10):
        await waiting  # the grant came: the request goes
    down = True  # the gate stops answering: the grant runs out after valid_seconds
    await asyncio.sleep(2.0)
    late = asyncio.create_task(fetch_one())
    await asyncio.sleep(1.0)
    assert not late.done(), "a grant was used past its valid_seconds"
    late.cancel()
    await limits.close()


async def test_clients_behind_one_address_share_its_budget(db_dsn: str, tmp_path: Path) -> None:
    """HOST_RATE_LIMIT_PER_ADDRESS: two clients the gate sees coming from one egress address
    share 6 requests per second to a host; a third, elsewhere, gets its own 6 (under the host's
    30 for the fleet). Control: without the setting, each gets a third of the 30."""
    import httpx

    from conftest import gate_settings, start_gate

    for per_address in (6, 0):
        settings = gate_settings(
            storage_url=str(tmp_path / "store"),
            host_rate_limit=30,
            host_rate_limit_per_address=per_address,
            host_connections=12,
            host_connections_per_address=4 if per_address else 0,
        )
        async for gate in start_gate(db_dsn, settings):
            await gate.sql("DELETE FROM host_slices")
            keys = [await gate.register(f"n{i}") for i in range(3)]
            where = ["10.0.0.1", "10.0.0.1", "10.0.0.2"]
            held: dict[int, tuple[float, int]] = {}
            one = {"hosts": [{"host": "registry.example", "ok": 1}]}
            for _ in range(4):
                for i in range(3):
                    transport = httpx.ASGITransport(app=gate.transport.app, client=(where[i], 40000 + i))
                    async with httpx.AsyncClient(transport=transport, base_url="http://gate") as http:
                        reply = await http.post("/api/v1/hosts/grants", headers=keys[i], json=one)
                    grant = reply.json()["grants"][0]
                    held[i] = (grant["requests_per_second"], grant["max_connections"])
                    assert held.get(0, (0, 0))[0] + held.get(1, (0, 0))[0] <= (per_address or 30) + 1e-9
            if per_address:
                assert held == {0: (3.0, 2), 1: (3.0, 2), 2: (6.0, 4)}, held
            else:
                assert held == {0: (10.0, 4), 1: (10.0, 4), 2: (10.0, 4)}, held


async def test_a_new_client_speaks_to_an_older_gate() -> None:
    """An older gate forbids fields it does not know: a grant request naming the tasks held, and
    a completion with its listing's report, are sent again without them (and the grants do not
    name the tasks again); a None field is never sent at all."""
    import json
    import uuid
    from datetime import UTC, datetime

    import httpx

    from client.gate import GateAPI
    from protocol import hosts, v1

    seen: list[dict[str, Any]] = []

    def older_gate(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        seen.append(body)
        for name in ("tasks", "listing"):
            if name in body:
                detail = [{"loc": ["body", name], "msg": "Extra inputs are not permitted", "type": "extra"}]
                return httpx.Response(422, json={"detail": detail, "code": "invalid_field"})
        if request.url.path.endswith("/grants"):
            return httpx.Response(200, json={"grants": [], "refresh_seconds": 1.0})
        task = {
            "task_id": body["task_id"], "source": "reg", "search_params": {}, "start_page": 1,
            "max_documents": 10, "params": {}, "status": "completed", "attempts": 1, "max_attempts": 3,
            "priority": 0, "run_after": "2026-01-01T00:00:00Z", "idempotency_key": None,
            "lease_expires_at": None, "documents_downloaded": 0, "documents_failed": 0,
            "documents_skipped": 0, "result_summary": None, "last_error": None,
            "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z",
            "assigned_at": None, "completed_at": "2026-01-01T00:00:00Z",
        }  # fmt: skip
        return httpx.Response(200, json=task)

    gate = GateAPI("http://gate", "key", "session", transport=httpx.MockTransport(older_gate))
    held = [uuid.uuid4()]
    assert (await gate.grants([hosts.HostReport(host="h.example")], held)).grants == []
    await gate.grants([hosts.HostReport(host="h.example")], held)
    assert ["tasks" in b for b in seen] == [True, False, False]  # asked once, then never again
    assert all("retry_after" not in h for b in seen for h in b["hosts"])  # None fields left out
    task = v1.LeasedTask(
        task_id=uuid.uuid4(), source="reg", search_params={}, start_page=1, max_documents=10, params={},
        status=v1.TaskStatus.ASSIGNED, attempts=1, max_attempts=3, lease_token=uuid.uuid4(),
        lease_expires_at=datetime.now(UTC),
    )  # fmt: skip
    seen.clear()
    listing = v1.ListingReport(stated_total=5, found=5)
    done = await gate.complete(task, v1.Counts(), [], {}, None, listing)
    assert done.status == v1.TaskStatus.COMPLETED
    assert ["listing" in b for b in seen] == [True, False]
    await gate.close()
