"""Property tests (hypothesis): document keys, retry backoff, and the lease state machine.

Keys are pure functions. Backoff is evaluated by PostgreSQL itself (the
expression the gate runs). The state machine drives a real gate process over
HTTP with random sequences of create / lease / complete / progress / fail /
expire / cancel / retry, including stale and repeated writes, and after every
step compares each task in the database with a model of what SPEC §4 says.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from cluster import ADMIN
from conftest import copy_database, free_port, run_aside
from processes import GateProcess, docgate
from server.db.lifecycle import backoff
from storage.errors import KeyRefused
from storage.keys import EXT, check_key, document_key, ext_of

# ---- keys

exts = st.from_regex(EXT, fullmatch=True)
safe_ids = st.from_regex(r"[A-Za-z0-9._-]{1,128}", fullmatch=True).filter(lambda s: s not in {".", ".."})


@given(doc_id=st.integers(0, 10**18), ext=exts, shard=st.integers(1, 10**9), gz=st.booleans())
def test_integer_ids_shard_by_division_and_round_trip(doc_id: int, ext: str, shard: int, gz: bool) -> None:
    key = document_key(doc_id, ext, shard_size=shard, compressed=gz)
    assert key == f"{doc_id // shard}/{doc_id}{ext}{'.gz' if gz else ''}"
    assert check_key(key) == key
    assert ext_of(key, doc_id) == ext + (".gz" if gz else "")
    assert document_key(str(doc_id), ext, shard_size=shard, compressed=gz) == key


@given(doc_id=safe_ids, ext=exts)
def test_text_ids_give_safe_keys_that_round_trip(doc_id: str, ext: str) -> None:
    key = document_key(doc_id, ext)
    assert check_key(key) == key and not key.startswith("/") and ".." not in key.split("/")
    assert key.count("/") == 1 and key.endswith(doc_id + ext)
    assert ext_of(key, doc_id) == ext


@given(doc_id=st.text(max_size=200), ext=st.text(max_size=40))
def test_any_text_is_a_safe_key_or_refused(doc_id: str, ext: str) -> None:
    try:
        key = document_key(doc_id, ext)
    except KeyRefused as exc:
        assert str(exc)
        return
    assert check_key(key) == key
    root = Path("/store")
    assert (root / key).resolve().is_relative_to(root)


@given(key=st.text(max_size=300))
def test_check_key_never_lets_a_path_leave_the_root(key: str) -> None:
    try:
        check_key(key)
    except KeyRefused:
        return
    assert not key.startswith("/") and all(part not in {"", ".", ".."} for part in key.split("/"))
    assert (Path("/store") / key).resolve().is_relative_to(Path("/store"))


# ---- backoff, as PostgreSQL computes it


@pytest.fixture(scope="module")
def pg(pg_base: str) -> str:
    return pg_base


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(attempts=st.integers(0, 60), base=st.floats(0, 86_400), cap=st.floats(0, 7 * 86_400))
def test_backoff_is_equal_jitter_of_the_capped_exponential(
    pg: str, attempts: int, base: float, cap: float
) -> None:
    query = (
        "SELECT extract(epoch FROM ("
        + backoff(base="$1", cap="$2")
        + " - now())) FROM (SELECT $3::int AS attempts) t"
    )

    async def delays() -> list[float]:
        conn = await asyncpg.connect(pg)
        try:
            return [float(await conn.fetchval(query, base, cap, attempts)) for _ in range(5)]
        finally:
            await conn.close()

    ceiling = min(base * 2 ** max(attempts - 1, 0), cap)
    for delay in run_aside(delays()):
        assert ceiling * 0.5 - 1e-3 <= delay <= ceiling + 1e-3, (delay, ceiling)


# ---- the lease state machine, against a real gate process


@dataclass
class Model:
    task_id: str
    seq: int
    priority: int
    max_attempts: int
    status: str = "pending"
    attempts: int = 0
    token: str | None = None
    holder: str | None = None
    old_tokens: list[str] = field(default_factory=list)
    completed_with: str | None = None


GATE: dict[str, Any] = {}


@pytest.fixture(scope="module")
def machine_gate(tmp_path_factory: pytest.TempPathFactory, pg_base: str, template_dsn: str) -> Any:
    dsn, drop = copy_database(pg_base, f"props_{uuid.uuid4().hex[:8]}")
    port = free_port()
    gate = GateProcess(
        docgate("server"),
        {
            "DATABASE_URL": dsn,
            "API_PORT": str(port),
            "ADMIN_API_KEY": ADMIN,
            "LEASE_SECONDS": "60",
            "RETRY_BACKOFF_SECONDS": "0",
            "REAP_INTERVAL_SECONDS": "0.05",
            "LOG_LEVEL": "WARNING",
            "STORAGE_URL": str(tmp_path_factory.mktemp("props-store")),
        },
        port,
        tmp_path_factory.mktemp("gate"),
    )
    gate.wait_healthy()
    http = httpx.Client(base_url=gate.url, timeout=30)
    keys = {}
    for client in ("a", "b"):
        r = http.post("/api/v1/clients/register", headers={"X-API-Key": ADMIN}, json={"client_name": client})
        keys[client] = {"X-API-Key": r.json()["api_key"]}
    GATE.update(http=http, dsn=dsn, keys=keys)
    yield GATE
    http.close()
    gate.stop()
    drop()


def sql(query: str, *args: Any) -> list[asyncpg.Record]:
    async def run() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(GATE["dsn"])
        try:
            return await conn.fetch(query, *args)
        finally:
            await conn.close()

    return run_aside(run())  # type: ignore[no-any-return]


class LeaseMachine(RuleBasedStateMachine):
    """SPEC §4 as a model; the gate must agree with it after every step."""

    def __init__(self) -> None:
        super().__init__()
        self.http: httpx.Client = GATE["http"]
        self.admin = {"X-API-Key": ADMIN}
        self.tasks: dict[str, Model] = {}
        self.seq = 0

    @initialize()
    def empty_queue(self) -> None:
        sql(
            "UPDATE tasks SET status = 'cancelled', lease_expires_at = NULL "
            "WHERE status IN ('pending', 'assigned')"
        )

    def _in(self, *statuses: str) -> list[Model]:
        return [m for m in self.tasks.values() if m.status in statuses]

    @rule(priority=st.integers(0, 2), max_attempts=st.integers(1, 3))
    def create(self, priority: int, max_attempts: int) -> None:
        r = self.http.post(
            "/api/v1/tasks/create",
            headers=self.admin,
            json={"search_params": {"n": self.seq}, "priority": priority, "max_attempts": max_attempts},
        )
        assert r.status_code == 201, r.text
        self.seq += 1
        task_id = r.json()["task_id"]
        self.tasks[task_id] = Model(task_id, self.seq, priority, max_attempts)

    @rule(client=st.sampled_from(["a", "b"]))
    def lease(self, client: str) -> None:
        r = self.http.post("/api/v1/tasks/request", headers=GATE["keys"][client], params={"wait": 0})
        waiting = self._in("pending")
        if not waiting:
            assert r.status_code == 204, r.text
            return
        assert r.status_code == 200, r.text
        expected = min(waiting, key=lambda m: (-m.priority, m.seq))
        got = r.json()
        assert got["task_id"] == expected.task_id, "lease order is priority, then age"
        assert got["lease_token"] not in expected.old_tokens and got["lease_token"] != expected.token
        if expected.token:
            expected.old_tokens.append(expected.token)
        expected.status, expected.token, expected.holder = "assigned", got["lease_token"], client
        expected.attempts += 1

    @precondition(lambda self: self._in("assigned"))
    @rule(data=st.data())
    def complete(self, data: st.DataObject) -> None:
        task = data.draw(st.sampled_from(self._in("assigned")))
        r = self.http.post(
            "/api/v1/tasks/complete",
            headers=GATE["keys"][task.holder or "a"],
            json={"task_id": task.task_id, "lease_token": task.token, "documents_downloaded": 1},
        )
        assert r.status_code == 200 and r.json()["status"] == "completed", r.text
        task.status, task.completed_with = "completed", task.token

    @precondition(lambda self: self._in("completed"))
    @rule(data=st.data())
    def repeat_completion(self, data: st.DataObject) -> None:
        task = data.draw(st.sampled_from(self._in("completed")))
        if task.completed_with is None:
            return
        r = self.http.post(
            "/api/v1/tasks/complete",
            headers=GATE["keys"][task.holder or "a"],
            json={"task_id": task.task_id, "lease_token": task.completed_with, "documents_downloaded": 1},
        )
        assert r.status_code == 200 and r.json()["status"] == "completed", r.text

    @precondition(lambda self: any(m.old_tokens for m in self.tasks.values()))
    @rule(data=st.data(), verb=st.sampled_from(["complete", "progress", "fail"]))
    def stale_write(self, data: st.DataObject, verb: str) -> None:
        task = data.draw(st.sampled_from([m for m in self.tasks.values() if m.old_tokens]))
        token = data.draw(st.sampled_from(task.old_tokens))
        if verb == "complete":
            r = self.http.post(
                "/api/v1/tasks/complete",
                headers=self.admin,
                json={"task_id": task.task_id, "lease_token": token},
            )
        else:
            r = self.http.post(
                f"/api/v1/tasks/{task.task_id}/{verb}",
                headers=self.admin,
                json={"lease_token": token, "error": "zombie"}
                if verb == "fail"
                else {"lease_token": token, "documents_downloaded": 99},
            )
        assert r.status_code == 409, (verb, r.text)

    @precondition(lambda self: self._in("assigned"))
    @rule(data=st.data())
    def progress(self, data: st.DataObject) -> None:
        task = data.draw(st.sampled_from(self._in("assigned")))
        r = self.http.post(
            f"/api/v1/tasks/{task.task_id}/progress",
            headers=GATE["keys"][task.holder or "a"],
            json={"lease_token": task.token, "documents_downloaded": 1},
        )
        assert r.status_code == 200, r.text

    @precondition(lambda self: self._in("assigned"))
    @rule(data=st.data(), retryable=st.booleans())
    def fail(self, data: st.DataObject, retryable: bool) -> None:
        task = data.draw(st.sampled_from(self._in("assigned")))
        r = self.http.post(
            f"/api/v1/tasks/{task.task_id}/fail",
            headers=GATE["keys"][task.holder or "a"],
            json={"lease_token": task.token, "error": "boom", "retryable": retryable},
        )
        assert r.status_code == 200, r.text
        task.status = "pending" if retryable and task.attempts < task.max_attempts else "failed"

    @precondition(lambda self: self._in("assigned"))
    @rule(data=st.data())
    def expire(self, data: st.DataObject) -> None:
        task = data.draw(st.sampled_from(self._in("assigned")))
        sql(
            "UPDATE tasks SET lease_expires_at = now() - interval '1 second' WHERE task_id = $1",
            uuid.UUID(task.task_id),
        )
        deadline = time.monotonic() + 10
        while sql("SELECT status FROM tasks WHERE task_id = $1", uuid.UUID(task.task_id))[0][0] == "assigned":
            assert time.monotonic() < deadline, "the reaper did not expire the lease"
            time.sleep(0.02)
        task.status = "pending" if task.attempts < task.max_attempts else "failed"

    @precondition(lambda self: self.tasks)
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        task = data.draw(st.sampled_from(list(self.tasks.values())))
        r = self.http.post(f"/api/v1/tasks/{task.task_id}/cancel", headers=self.admin)
        if task.status in ("pending", "assigned", "cancelled"):
            assert r.status_code == 200 and r.json()["status"] == "cancelled", r.text
            if task.token:
                task.old_tokens.append(task.token)
            task.status, task.token = "cancelled", None
        else:
            assert r.status_code == 409 and task.status in r.json()["detail"], r.text

    @precondition(lambda self: self.tasks)
    @rule(data=st.data())
    def retry(self, data: st.DataObject) -> None:
        task = data.draw(st.sampled_from(list(self.tasks.values())))
        r = self.http.post(f"/api/v1/tasks/{task.task_id}/retry", headers=self.admin)
        if task.status in ("failed", "cancelled", "pending"):
            assert r.status_code == 200 and r.json()["status"] == "pending", r.text
            if task.status != "pending":
                task.status, task.attempts = "pending", 0
        else:
            assert r.status_code == 409, r.text

    @invariant()
    def gate_agrees_with_the_model(self) -> None:
        if not self.tasks:
            return
        rows = sql(
            "SELECT task_id::text, status, attempts, lease_token::text FROM tasks "
            "WHERE task_id = ANY($1::uuid[])",
            [uuid.UUID(t) for t in self.tasks],
        )
        for row in rows:
            model = self.tasks[row["task_id"]]
            assert (row["status"], row["attempts"]) == (model.status, model.attempts), (row, model)
            if model.status == "assigned":
                assert row["lease_token"] == model.token
            assert model.attempts <= model.max_attempts or model.status != "assigned"


LeaseMachine.TestCase.settings = settings(
    max_examples=25, stateful_step_count=25, deadline=None, suppress_health_check=list(HealthCheck)
)


def test_lease_state_machine(machine_gate: Any) -> None:
    LeaseMachine.TestCase("runTest").runTest()
