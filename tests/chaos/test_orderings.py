"""Scripted orderings of the races random chaos rarely hits, each made deterministic.

Where two writers must meet at the same moment, a third connection holds the
task's row lock while both requests queue behind it, then lets go: PostgreSQL
serialises them, and whichever wins, the outcome must be one of the allowed ones.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from postgres import Postgres

from client.errors import LeaseLost
from client.gate import GateAPI
from conftest import ADMIN_KEY, Gate, free_port, gate_settings, start_gate
from processes import GateProcess, docgate
from protocol import v1
from server.db.lifecycle import Backoff, reap_expired
from server.db.migrate import migrate_dsn
from server.db.pool import create_pool
from storage import PutOptions
from storage.errors import AlreadyStored
from storage.local import LocalStorage

pytestmark = pytest.mark.chaos


@pytest.fixture
async def quiet_gate(db_dsn: str, tmp_path: Path) -> AsyncIterator[Gate]:
    """A gate whose reaper never runs on its own: the test reaps when the ordering says so."""
    settings = gate_settings(storage_url=str(tmp_path / "store"), reap_interval_seconds=3600)
    async for g in start_gate(db_dsn, settings):
        yield g


def doc_report(doc_id: int, body: bytes) -> dict[str, Any]:
    return {
        "doc_id": doc_id,
        "status": "stored",
        "storage_key": f"0/{doc_id}.bin",
        "sha256": hashlib.sha256(body).hexdigest(),
        "size": len(body),
    }


async def lease(gate: Gate, who: dict[str, str]) -> dict[str, Any]:
    r = await gate.lease(who)
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


async def expire(gate: Gate, task_id: str) -> None:
    await gate.sql(
        "UPDATE tasks SET lease_expires_at = now() - interval '1 second' WHERE task_id = $1", task_id
    )


async def reap(gate: Gate) -> int:
    pool = await create_pool(gate.dsn, 1, 2)
    try:
        return await reap_expired(pool, Backoff(0, 0))
    finally:
        await pool.close()


async def behind_row_lock(
    gate: Gate, task_id: str, *calls: Awaitable[httpx.Response]
) -> list[httpx.Response]:
    """Start every call while another transaction holds the task's row; then release it."""
    conn = await asyncpg.connect(gate.dsn)
    try:
        async with conn.transaction():
            await conn.execute("SELECT 1 FROM tasks WHERE task_id = $1 FOR UPDATE", uuid.UUID(task_id))
            running = [asyncio.ensure_future(c) for c in calls]
            deadline = time.monotonic() + 10
            while await conn.fetchval(  # both requests are now waiting on the lock
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                "AND datname = current_database()"
            ) < len(calls):
                assert time.monotonic() < deadline, "the requests never reached the row lock"
                await asyncio.sleep(0.01)
        return list(await asyncio.gather(*running))
    finally:
        await conn.close()


async def test_zombie_completes_after_re_lease(quiet_gate: Gate) -> None:
    gate = quiet_gate
    zombie, holder = await gate.register("zombie"), await gate.register("holder")
    task_id = (await gate.create())["task_id"]
    old = await lease(gate, zombie)
    await expire(gate, task_id)
    assert await reap(gate) == 1
    new = await lease(gate, holder)
    r = await gate.http.post(
        "/api/v1/tasks/complete",
        headers=zombie,
        json={"task_id": task_id, "lease_token": old["lease_token"], "documents": [doc_report(1, b"zombie")]},
    )
    assert r.status_code == 409
    assert await gate.sql("SELECT * FROM documents") == []
    r = await gate.http.post(
        "/api/v1/tasks/complete",
        headers=holder,
        json={"task_id": task_id, "lease_token": new["lease_token"], "documents": [doc_report(1, b"holder")]},
    )
    assert r.status_code == 200
    (doc,) = await gate.sql("SELECT sha256 FROM documents")
    assert doc["sha256"] == hashlib.sha256(b"holder").hexdigest()


async def test_zombie_writes_storage_after_the_new_holder_completed(quiet_gate: Gate, tmp_path: Path) -> None:
    gate = quiet_gate
    zombie, holder = await gate.register("zombie"), await gate.register("holder")
    task_id = (await gate.create())["task_id"]
    old = await lease(gate, zombie)
    await expire(gate, task_id)
    await reap(gate)
    new = await lease(gate, holder)
    store = LocalStorage(tmp_path / "client-store")

    async def body(data: bytes) -> AsyncIterator[bytes]:
        yield data

    stored = await store.put("0/7.bin", body(b"published bytes"), PutOptions())
    r = await gate.http.post(
        "/api/v1/tasks/complete",
        headers=holder,
        json={
            "task_id": task_id,
            "lease_token": new["lease_token"],
            "documents": [doc_report(7, b"published bytes") | {"storage_url": stored.storage_url}],
        },
    )
    assert r.status_code == 200
    # The zombie wakes and writes: straight to storage, and through the gate's upload.
    with pytest.raises(AlreadyStored):
        await store.put("0/7.bin", body(b"late zombie bytes"), PutOptions())
    assert (tmp_path / "client-store/0/7.bin").read_bytes() == b"published bytes"
    r = await gate.http.put(
        "/api/v1/documents/8/raw",
        params={"task_id": task_id, "ext": ".bin"},
        headers=zombie | {"X-Lease-Token": old["lease_token"]},
        content=b"late",
    )
    assert r.status_code == 409
    assert not (tmp_path / "store/0/8.bin").exists()
    await store.close()


async def test_heartbeat_racing_expiry(quiet_gate: Gate) -> None:
    gate = quiet_gate
    client = await gate.register()
    task_id = (await gate.create())["task_id"]
    held = await lease(gate, client)
    # Heartbeat lands after the expiry but before the reaper: it must not bring the lease back.
    await expire(gate, task_id)
    r = await gate.http.post("/api/v1/clients/heartbeat", headers=client, json={})
    assert r.json()["leases_extended"] == 0
    r = await gate.http.post(
        f"/api/v1/tasks/{task_id}/progress",
        headers=client,
        json={"lease_token": held["lease_token"], "documents_downloaded": 1},
    )
    assert r.status_code == 409
    assert await reap(gate) == 1
    (row,) = await gate.sql("SELECT status, attempts FROM tasks")
    assert (row["status"], row["attempts"]) == ("pending", 1)
    # The other order: a heartbeat just before expiry extends, and the reaper then finds nothing.
    again = await lease(gate, client)
    # (a second to spare: beside the rest of the suite, a heartbeat once took more than 50 ms)
    await gate.sql("UPDATE tasks SET lease_expires_at = now() + interval '1 second'")
    r = await gate.http.post("/api/v1/clients/heartbeat", headers=client, json={})
    assert r.json()["leases_extended"] == 1
    await asyncio.sleep(1.1)
    assert await reap(gate) == 0
    r = await gate.http.post(
        "/api/v1/tasks/complete",
        headers=client,
        json={"task_id": task_id, "lease_token": again["lease_token"]},
    )
    assert r.status_code == 200


@pytest.mark.parametrize("first", ["cancel", "complete", "together"])
async def test_cancel_racing_completion(quiet_gate: Gate, first: str) -> None:
    gate = quiet_gate
    client = await gate.register()
    task_id = (await gate.create())["task_id"]
    held = await lease(gate, client)

    def cancel() -> Awaitable[httpx.Response]:
        return gate.http.post(f"/api/v1/tasks/{task_id}/cancel", headers=gate.admin)

    def complete() -> Awaitable[httpx.Response]:
        return gate.http.post(
            "/api/v1/tasks/complete",
            headers=client,
            json={"task_id": task_id, "lease_token": held["lease_token"], "documents": [doc_report(3, b"x")]},
        )

    if first == "cancel":
        cancelled, completed = await cancel(), await complete()
    elif first == "complete":
        completed = await complete()
        cancelled = await cancel()
    else:
        cancelled, completed = await behind_row_lock(gate, task_id, cancel(), complete())
    (row,) = await gate.sql("SELECT status FROM tasks")
    docs = await gate.sql("SELECT doc_id FROM documents")
    if row["status"] == "cancelled":  # the cancel won: the completion changed nothing
        assert (cancelled.status_code, completed.status_code) == (200, 409) and docs == []
    else:
        assert row["status"] == "completed" and (cancelled.status_code, completed.status_code) == (409, 200)
        assert [d["doc_id"] for d in docs] == ["3"]
    events = await gate.sql("SELECT event FROM task_events WHERE event IN ('cancelled', 'completed')")
    assert len(events) == 1
    if first != "together":
        assert row["status"] == ("cancelled" if first == "cancel" else "completed")


async def test_two_gates_leasing_the_last_task(db_dsn: str, tmp_path: Path) -> None:
    settings = gate_settings(storage_url=str(tmp_path / "store"))
    async for one in start_gate(db_dsn, settings):
        async for two in start_gate(db_dsn, settings):
            a, b = await one.register("a"), await one.register("b")
            waiting = [asyncio.create_task(one.lease(a, wait=3)), asyncio.create_task(two.lease(b, wait=3))]
            await asyncio.sleep(0.5)  # both are long-polling, one on each gate
            await one.create()
            answers = sorted(r.status_code for r in await asyncio.gather(*waiting))
            assert answers == [200, 204]
            (row,) = await one.sql("SELECT count(*) FROM task_events WHERE event = 'leased'")
            assert row[0] == 1


async def test_duplicate_completion_with_the_same_token(quiet_gate: Gate) -> None:
    gate = quiet_gate
    client = await gate.register()
    task_id = (await gate.create())["task_id"]
    held = await lease(gate, client)
    body = {
        "task_id": task_id,
        "lease_token": held["lease_token"],
        "documents_downloaded": 1,
        "documents": [doc_report(5, b"five")],
    }
    first, second = await asyncio.gather(
        *(gate.http.post("/api/v1/tasks/complete", headers=client, json=body) for _ in range(2))
    )
    third = await gate.http.post("/api/v1/tasks/complete", headers=client, json=body)
    assert first.status_code == second.status_code == third.status_code == 200
    assert first.json() == second.json() == third.json()
    assert len(await gate.sql("SELECT 1 FROM task_events WHERE event = 'completed'")) == 1
    assert len(await gate.sql("SELECT 1 FROM documents")) == 1


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_postgres_restart_between_lease_and_complete(tmp_path: Path) -> None:
    pg = Postgres(tmp_path / "pg")
    port = free_port()
    gate: GateProcess | None = None
    try:
        asyncio.run(migrate_dsn(pg.dsn))
        gate = GateProcess(
            docgate("server"),
            {
                "DATABASE_URL": pg.dsn,
                "API_PORT": str(port),
                "ADMIN_API_KEY": ADMIN_KEY,
                "STORAGE_URL": str(tmp_path / "store"),
                "LEASE_SECONDS": "120",
            },
            port,
            tmp_path,
        )
        gate.wait_healthy()
        admin = {"X-API-Key": ADMIN_KEY}
        key = gate.request(
            "POST", "/api/v1/clients/register", headers=admin, json={"client_name": "c"}
        ).json()["api_key"]
        gate.request("POST", "/api/v1/tasks/create", headers=admin, json={"search_params": {}})
        leased = v1.LeasedTask.model_validate(
            gate.request("POST", "/api/v1/tasks/request", headers={"X-API-Key": key}).json()
        )

        pg.crash()
        down = gate.request(
            "POST",
            "/api/v1/tasks/complete",
            headers={"X-API-Key": key},
            json={"task_id": str(leased.task_id), "lease_token": str(leased.lease_token)},
        )
        assert down.status_code == 503 and "database" in down.json()["detail"].lower()
        threading.Timer(2.0, pg.start).start()  # back while the client is still retrying

        async def complete() -> None:
            api = GateAPI(gate.url if gate else "", key, "s")
            try:
                await api.complete(leased, {"documents_downloaded": 1}, [doc_report(9, b"nine")], {})
                with pytest.raises(LeaseLost):  # an old token stays refused after the restart
                    await api.progress(leased.model_copy(update={"lease_token": uuid.uuid4()}), {}, [])
            finally:
                await api.close()

        asyncio.run(complete())

        async def state() -> tuple[str, int, int]:
            conn = await asyncpg.connect(pg.dsn)
            try:
                status = await conn.fetchval("SELECT status FROM tasks")
                events = await conn.fetchval("SELECT count(*) FROM task_events WHERE event = 'completed'")
                docs = await conn.fetchval("SELECT count(*) FROM documents")
                return status, events, docs
            finally:
                await conn.close()

        assert asyncio.run(state()) == ("completed", 1, 1)
        assert "Traceback" not in gate.output()
    finally:
        if gate is not None:
            gate.stop()
        pg.stop()
