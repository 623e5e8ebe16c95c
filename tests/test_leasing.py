"""Leasing under concurrency, fencing by lease_token, retries and backoff, long-poll, jobs."""

from __future__ import annotations

import asyncio
import json
import random
import time
import uuid
from typing import Any

import asyncpg
import pytest

from conftest import Gate, gate_settings, start_gate


async def expire_lease(gate: Gate, task_id: str) -> None:
    """Move the lease's expiry into the past; the gate's reaper does the rest."""
    await gate.sql(
        "UPDATE tasks SET lease_expires_at = now() - interval '1 second' WHERE task_id = $1", task_id
    )


async def wait_for_status(gate: Gate, task_id: str, status: str, timeout: float = 10) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        task = (await gate.http.get(f"/api/v1/tasks/{task_id}", headers=gate.admin)).json()
        if task["status"] == status or time.monotonic() > deadline:
            assert task["status"] == status, task
            return task  # type: ignore[no-any-return]
        await asyncio.sleep(0.05)


async def lease_until(gate: Gate, headers: dict[str, str], timeout: float = 10) -> dict[str, Any]:
    r = await gate.lease(headers, wait=timeout)
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


@pytest.fixture
async def roomy_gate(db_dsn: str, tmp_path: Any) -> Any:
    """A gate whose clients may each hold the whole queue (MAX_LEASES_PER_CLIENT out of the way)."""
    settings = gate_settings(storage_url=str(tmp_path / "store"), max_leases_per_client=10_000)
    async for gate in start_gate(db_dsn, settings):
        yield gate


async def test_sixteen_clients_never_share_a_task(roomy_gate: Gate) -> None:
    gate = roomy_gate
    for _ in range(2):
        r = await gate.http.post(
            "/api/v1/tasks/batch",
            headers=gate.admin,
            json={"tasks": [{"search_params": {"n": i}} for i in range(1000)]},
        )
        assert r.status_code == 201 and r.json()["tasks_created"] == 1000
    keys = [await gate.register(f"c{i}") for i in range(16)]
    rng = random.Random(7)

    async def drain(headers: dict[str, str]) -> list[str]:
        got: list[str] = []
        while True:
            n = rng.randint(1, 5)
            r = await gate.lease(headers, max_tasks=n)
            if r.status_code == 204:
                return got
            assert r.status_code == 200, r.text
            got += [t["task_id"] for t in r.json()["tasks"]]

    leased = [tid for batch in await asyncio.gather(*(drain(k) for k in keys)) for tid in batch]
    assert len(leased) == 2000
    assert len(set(leased)) == 2000
    (row,) = await gate.sql(
        "SELECT count(*) AS assigned, max(attempts) AS most FROM tasks WHERE status = 'assigned'"
    )
    assert row["assigned"] == 2000 and row["most"] == 1
    (events,) = await gate.sql("SELECT count(*) FROM task_events WHERE event = 'leased'")
    assert events[0] == 2000


async def test_stale_token_is_refused_and_changes_nothing(gate: Gate) -> None:
    old_holder, new_holder = await gate.register("old"), await gate.register("new")
    task_id = (await gate.create())["task_id"]
    old = (await gate.lease(old_holder)).json()
    await expire_lease(gate, task_id)
    new = await lease_until(gate, new_holder)
    assert new["task_id"] == task_id and new["lease_token"] != old["lease_token"]

    before = await gate.sql("SELECT * FROM tasks")
    stale_writes = [
        (
            "/api/v1/tasks/complete",
            {"task_id": task_id, "lease_token": old["lease_token"], "documents_downloaded": 666},
        ),
        (
            f"/api/v1/tasks/{task_id}/progress",
            {"lease_token": old["lease_token"], "documents_downloaded": 666},
        ),
        (f"/api/v1/tasks/{task_id}/fail", {"lease_token": old["lease_token"], "error": "zombie"}),
    ]
    for path, body in stale_writes:
        r = await gate.http.post(path, headers=old_holder, json=body)
        assert r.status_code == 409, (path, r.text)
        assert "lease" in r.json()["detail"]
    assert await gate.sql("SELECT * FROM tasks") == before

    r = await gate.http.post(
        "/api/v1/tasks/complete",
        headers=new_holder,
        json={"task_id": task_id, "lease_token": new["lease_token"], "documents_downloaded": 10},
    )
    assert r.status_code == 200, r.text
    task = r.json()
    assert task["status"] == "completed" and task["documents_downloaded"] == 10
    assert task["attempts"] == 2

    # After completion the old token is still refused, and the result stands.
    r = await gate.http.post("/api/v1/tasks/complete", headers=old_holder, json=stale_writes[0][1])
    assert r.status_code == 409
    (row,) = await gate.sql("SELECT documents_downloaded FROM tasks WHERE task_id = $1", task_id)
    assert row[0] == 10


async def test_progress_and_heartbeat_extend_the_lease(gate: Gate) -> None:
    client = await gate.register()
    task_id = (await gate.create())["task_id"]
    leased = (await gate.lease(client)).json()
    await gate.sql("UPDATE tasks SET lease_expires_at = now() + interval '5 seconds'")
    r = await gate.http.post(
        f"/api/v1/tasks/{task_id}/progress",
        headers=client,
        json={"lease_token": leased["lease_token"], "documents_downloaded": 3},
    )
    assert r.status_code == 200 and r.json()["documents_downloaded"] == 3
    (row,) = await gate.sql("SELECT lease_expires_at - now() AS left FROM tasks")
    assert row["left"].total_seconds() > 25
    await gate.sql("UPDATE tasks SET lease_expires_at = now() + interval '5 seconds'")
    r = await gate.http.post("/api/v1/clients/heartbeat", headers=client, json={})
    assert r.json()["leases_extended"] == 1
    (row,) = await gate.sql("SELECT lease_expires_at - now() AS left FROM tasks")
    assert row["left"].total_seconds() > 25


async def test_heartbeat_of_a_new_session_does_not_keep_old_leases(gate: Gate) -> None:
    client = await gate.register()
    await gate.create()
    r = await gate.lease(client | {"X-Session-Id": "process-1"})
    assert r.status_code == 200
    r = await gate.http.post("/api/v1/clients/heartbeat", headers=client, json={"session_id": "process-2"})
    assert r.json()["leases_extended"] == 0
    r = await gate.http.post("/api/v1/clients/heartbeat", headers=client, json={"session_id": "process-1"})
    assert r.json()["leases_extended"] == 1


async def test_heartbeat_naming_its_tasks_lets_a_lost_lease_run_out(gate: Gate) -> None:
    """A lease whose answer never arrived is not kept alive by the client's heartbeats."""
    client = await gate.register()
    held, lost = (await gate.create())["task_id"], (await gate.create())["task_id"]
    r = await gate.lease(client, max_tasks=2)
    assert r.status_code == 200 and len(r.json()["tasks"]) == 2
    await gate.sql("UPDATE tasks SET lease_expires_at = now() + interval '2 seconds'")
    for _ in range(3):  # heartbeats naming only `held`, past the other lease's expiry
        r = await gate.http.post("/api/v1/clients/heartbeat", headers=client, json={"task_ids": [held]})
        assert r.status_code == 200 and r.json()["leases_extended"] == 1, r.text
        await asyncio.sleep(1)
    await wait_for_status(gate, lost, "pending")
    (row,) = await gate.sql(
        "SELECT status, lease_expires_at - now() AS left FROM tasks WHERE task_id = $1", held
    )
    assert row["status"] == "assigned" and row["left"].total_seconds() > 25
    # Without task_ids (the seed's clients) every lease of the session is extended.
    await gate.sql(
        "UPDATE tasks SET lease_expires_at = now() + interval '5 seconds' WHERE task_id = $1", held
    )
    r = await gate.http.post("/api/v1/clients/heartbeat", headers=client, json={})
    assert r.json()["leases_extended"] == 1


async def test_retryable_failure_backs_off_then_fails_when_spent(gate: Gate) -> None:
    client = await gate.register()
    task_id = (await gate.create(max_attempts=2))["task_id"]
    first = (await gate.lease(client)).json()
    r = await gate.http.post(
        f"/api/v1/tasks/{task_id}/fail",
        headers=client,
        json={"lease_token": first["lease_token"], "error": "HTTP 503"},
    )
    assert r.status_code == 200
    task = r.json()
    assert task["status"] == "pending" and task["attempts"] == 1
    # Pushed out past the failure itself (not past now(): the back-off is short, and a busy
    # machine may already have reached it).
    (row,) = await gate.sql("SELECT run_after > updated_at FROM tasks")
    assert row[0], "run_after must be pushed out"
    second = await lease_until(gate, client)
    r = await gate.http.post(
        f"/api/v1/tasks/{task_id}/fail",
        headers=client,
        json={"lease_token": second["lease_token"], "error": "HTTP 503 again"},
    )
    task = r.json()
    assert task["status"] == "failed" and task["attempts"] == 2
    assert task["last_error"] == "HTTP 503 again"


async def test_non_retryable_failure_ends_at_once(gate: Gate) -> None:
    client = await gate.register()
    task_id = (await gate.create(max_attempts=5))["task_id"]
    leased = (await gate.lease(client)).json()
    r = await gate.http.post(
        f"/api/v1/tasks/{task_id}/fail",
        headers=client,
        json={"lease_token": leased["lease_token"], "error": "bad params", "retryable": False},
    )
    assert r.json()["status"] == "failed" and r.json()["attempts"] == 1


async def test_lease_expiry_counts_as_an_attempt(gate: Gate) -> None:
    client = await gate.register()
    task_id = (await gate.create(max_attempts=2))["task_id"]
    await gate.lease(client)
    await expire_lease(gate, task_id)
    task = await wait_for_status(gate, task_id, "pending")
    assert task["attempts"] == 1 and task["last_error"].startswith("lease expired")
    await lease_until(gate, client)
    await expire_lease(gate, task_id)
    task = await wait_for_status(gate, task_id, "failed")
    assert task["attempts"] == 2
    events = await gate.sql("SELECT event FROM task_events WHERE task_id = $1 ORDER BY event_id", task_id)
    assert [e[0] for e in events] == ["leased", "expired", "leased", "expired"]


async def test_backoff_grows_exponentially_within_its_cap(db_dsn: str) -> None:
    settings = gate_settings(retry_backoff_seconds=100, retry_backoff_max_seconds=1000)
    async for gate in start_gate(db_dsn, settings):
        client = await gate.register()
        task_id = (await gate.create(max_attempts=10))["task_id"]
        delays = []
        for attempt in range(1, 6):
            await gate.sql("UPDATE tasks SET run_after = now()")
            leased = await lease_until(gate, client)
            await gate.http.post(
                f"/api/v1/tasks/{task_id}/fail",
                headers=client,
                json={"lease_token": leased["lease_token"], "error": "x"},
            )
            (row,) = await gate.sql(
                "SELECT extract(epoch FROM run_after - now()) FROM tasks WHERE task_id = $1", task_id
            )
            delays.append((attempt, float(row[0])))
        for attempt, delay in delays:
            full = min(100 * 2 ** (attempt - 1), 1000)
            assert full / 2 - 1 <= delay <= full, (attempt, delay)


async def test_long_poll_wakes_on_a_task_created_elsewhere(db_dsn: str) -> None:
    # A fallback poll of 30 s proves the wake-up comes from NOTIFY, not polling.
    async for gate in start_gate(db_dsn, gate_settings(poll_fallback_seconds=30)):
        client = await gate.register()
        waiting = asyncio.create_task(gate.lease(client, wait=20))
        await asyncio.sleep(0.5)
        assert not waiting.done()
        conn = await asyncpg.connect(db_dsn)
        try:
            await conn.execute("INSERT INTO tasks (max_attempts) VALUES (3)")
        finally:
            await conn.close()
        created = time.monotonic()
        r = await waiting
        assert r.status_code == 200, r.text
        assert time.monotonic() - created < 1.0


async def lease_attempts(gate: Gate) -> float:
    text = (await gate.http.get("/metrics")).text
    (line,) = [x for x in text.splitlines() if x.startswith("docgate_lease_latency_seconds_count")]
    return float(line.split()[-1])


async def test_waiting_long_polls_share_one_fallback_probe(gate: Gate) -> None:
    # 20 sessions wait through several fallback intervals (0.5 s here) with nothing to lease:
    # the gate probes once per interval for all of them, so each tries to lease once, not
    # once per interval. Then a task becomes leasable without a notification (its run_after
    # passes): the probe wakes the waiters and exactly one of them gets it.
    clients = [await gate.register(f"waiter-{i}") for i in range(20)]
    before = await lease_attempts(gate)
    waiting = [asyncio.create_task(gate.lease(c, wait=8)) for c in clients]
    await asyncio.sleep(2.5)
    assert not any(w.done() for w in waiting)
    assert await lease_attempts(gate) - before <= len(clients) + 1
    # Its insert notifies, but it is not leasable yet: only the probe can wake them after.
    await gate.sql("INSERT INTO tasks (max_attempts, run_after) VALUES (3, now() + interval '1 second')")
    replies = await asyncio.gather(*waiting)
    assert sorted(r.status_code for r in replies) == [200] + [204] * (len(clients) - 1)


async def test_long_poll_answers_204_when_nothing_comes(gate: Gate) -> None:
    client = await gate.register()
    r = await gate.lease(client, wait=0.3)
    assert r.status_code == 204


async def test_job_of_a_million_ids_makes_ten_thousand_tasks(gate: Gate) -> None:
    r = await gate.http.post(
        "/api/v1/jobs",
        headers=gate.admin,
        json={
            "source": "id_range",
            "params": {
                "url_template": "https://host/battle/{id}.tzb",
                "start_id": 3770000,
                "count": 1_000_000,
                "ext": ".tzb",
            },
            "chunk_size": 100,
            "priority": 0,
        },
    )
    assert r.status_code == 201, r.text
    job = r.json()
    assert job["tasks_created"] == 10_000
    rows = await gate.sql(
        "SELECT params, max_documents FROM tasks WHERE job_id = $1 ORDER BY task_seq", job["job_id"]
    )
    assert len(rows) == 10_000
    first, last = rows[0]["params"], rows[-1]["params"]
    assert '"start_id": 3770000' in first and '"count": 100' in first
    assert '"start_id": 4769900' in last
    starts = [json.loads(r["params"])["start_id"] for r in rows]  # leased in id order
    assert starts == list(range(3770000, 4770000, 100))
    client = await gate.register()
    leased = (await gate.lease(client)).json()
    assert leased["source"] == "id_range"
    assert leased["params"] == {
        "url_template": "https://host/battle/{id}.tzb",
        "start_id": 3770000,
        "count": 100,
        "ext": ".tzb",
    }
    r = await gate.http.get(f"/api/v1/jobs/{job['job_id']}", headers=gate.admin)
    progress = r.json()
    assert progress["tasks_total"] == 10_000
    assert progress["counts"]["pending"] == 9_999 and progress["counts"]["assigned"] == 1


async def test_uneven_job_last_chunk_is_short(gate: Gate) -> None:
    r = await gate.http.post(
        "/api/v1/jobs",
        headers=gate.admin,
        json={
            "source": "id_range",
            "chunk_size": 100,
            "params": {"url_template": "http://h/{id}", "start_id": 0, "count": 250},
        },
    )
    assert r.json()["tasks_created"] == 3
    rows = await gate.sql("SELECT max_documents FROM tasks ORDER BY task_seq")
    assert [r[0] for r in rows] == [100, 100, 50]


async def test_idempotency_key_returns_the_first_task(gate: Gate) -> None:
    body = {"search_params": {}, "idempotency_key": "region-11-page-1"}
    first = await gate.http.post("/api/v1/tasks/create", headers=gate.admin, json=body)
    again = await gate.http.post("/api/v1/tasks/create", headers=gate.admin, json=body)
    assert first.status_code == 201 and again.status_code == 200
    assert first.json()["task_id"] == again.json()["task_id"]
    r = await gate.http.post(
        "/api/v1/tasks/batch", headers=gate.admin, json={"tasks": [body, {"idempotency_key": "new-one"}]}
    )
    assert r.json()["tasks_created"] == 1 and r.json()["tasks_existing"] == 1
    assert r.json()["task_ids"][0] == first.json()["task_id"]
    assert len(await gate.sql("SELECT 1 FROM tasks")) == 2


async def test_an_idempotency_key_reused_for_other_work_is_a_conflict(gate: Gate) -> None:
    """The same key with the same body stays 200; with another body it is 409 idempotency_conflict
    naming the key, and nothing is created (a batch holding such a task is refused whole)."""
    body = {"search_params": {"q": "a"}, "idempotency_key": "k-1"}
    assert (await gate.http.post("/api/v1/tasks/create", headers=gate.admin, json=body)).status_code == 201
    other = await gate.http.post(
        "/api/v1/tasks/create", headers=gate.admin, json=body | {"search_params": {"q": "b"}}
    )
    assert (other.status_code, other.json()["code"]) == (409, "idempotency_conflict")
    assert "k-1" in other.json()["detail"]
    batch = {"tasks": [{"idempotency_key": "fresh"}, body | {"priority": 3}]}
    refused = await gate.http.post("/api/v1/tasks/batch", headers=gate.admin, json=batch)
    assert (refused.status_code, refused.json()["code"]) == (409, "idempotency_conflict")
    assert len(await gate.sql("SELECT 1 FROM tasks")) == 1  # "fresh" rolled back with the rest
    job = {"source": "id_range", "params": {"url_template": "https://h/{id}", "start_id": 1, "count": 10},
           "idempotency_key": "job-1"}  # fmt: skip
    assert (await gate.http.post("/api/v1/jobs", headers=gate.admin, json=job)).status_code == 201
    assert (await gate.http.post("/api/v1/jobs", headers=gate.admin, json=job)).status_code == 200
    job["chunk_size"] = 5
    again = await gate.http.post("/api/v1/jobs", headers=gate.admin, json=job)
    assert (again.status_code, again.json()["code"]) == (409, "idempotency_conflict")


async def test_priority_then_age(gate: Gate) -> None:
    low = (await gate.create(priority=0))["task_id"]
    high = (await gate.create(priority=5))["task_id"]
    low2 = (await gate.create(priority=0))["task_id"]
    client = await gate.register()
    r = await gate.lease(client, max_tasks=3)
    assert [t["task_id"] for t in r.json()["tasks"]] == [high, low, low2]


async def test_cancel_and_retry(gate: Gate) -> None:
    client = await gate.register()
    task_id = (await gate.create())["task_id"]
    leased = (await gate.lease(client)).json()
    r = await gate.http.post(f"/api/v1/tasks/{task_id}/cancel", headers=gate.admin)
    assert r.json()["status"] == "cancelled"
    r = await gate.http.post("/api/v1/clients/heartbeat", headers=client, json={})
    assert r.json()["cancelled_task_ids"] == [task_id]
    r = await gate.http.post(
        "/api/v1/tasks/complete",
        headers=client,
        json={"task_id": task_id, "lease_token": leased["lease_token"]},
    )
    assert r.status_code == 409
    r = await gate.http.post(f"/api/v1/tasks/{task_id}/retry", headers=gate.admin)
    assert r.json()["status"] == "pending" and r.json()["attempts"] == 0
    again = (await gate.lease(client)).json()
    await gate.http.post(
        "/api/v1/tasks/complete",
        headers=client,
        json={"task_id": task_id, "lease_token": again["lease_token"]},
    )
    r = await gate.http.post(f"/api/v1/tasks/{task_id}/cancel", headers=gate.admin)
    assert r.status_code == 409 and "completed" in r.json()["detail"]
    r = await gate.http.post(f"/api/v1/tasks/{task_id}/retry", headers=gate.admin)
    assert r.status_code == 409


async def test_task_list_is_keyset_paginated_newest_first(gate: Gate) -> None:
    ids = [(await gate.create(start_page=i))["task_id"] for i in range(1, 8)]
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": 3} | ({"cursor": cursor} if cursor else {})
        page = (await gate.http.get("/api/v1/tasks", headers=gate.admin, params=params)).json()
        seen += [t["task_id"] for t in page["tasks"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ids[::-1]


async def test_batch_completion_fences_each_task_on_its_own(gate: Gate) -> None:
    for i in range(4):
        await gate.create(search_params={"n": i})
    mine, other = await gate.register("mine"), await gate.register("other")
    tasks = (await gate.lease(mine, max_tasks=3)).json()["tasks"]
    theirs = (await gate.lease(other)).json()
    stale = tasks[2]
    await expire_lease(gate, stale["task_id"])
    await wait_for_status(gate, stale["task_id"], "pending")
    doc = {"doc_id": "5", "storage_key": "0/5.html", "sha256": "a" * 64, "size": 3, "status": "stored"}
    body = {
        "completions": [
            {
                "task_id": tasks[0]["task_id"],
                "lease_token": tasks[0]["lease_token"],
                "documents_downloaded": 1,
                "documents": [doc],
            },
            {"task_id": tasks[1]["task_id"], "lease_token": tasks[1]["lease_token"]},
            {"task_id": stale["task_id"], "lease_token": stale["lease_token"]},
            {"task_id": theirs["task_id"], "lease_token": theirs["lease_token"]},
        ]
    }
    r = await gate.http.post("/api/v1/tasks/complete/batch", headers=mine, json=body)
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [x["status_code"] for x in results] == [200, 200, 409, 404]
    assert r.json()["completed"] == 2
    assert "no longer current" in results[2]["error"]
    rows = {str(r["task_id"]): r["status"] for r in await gate.sql("SELECT task_id, status FROM tasks")}
    (first,) = await gate.sql(
        "SELECT documents_downloaded FROM tasks WHERE task_id = $1", tasks[0]["task_id"]
    )
    assert first["documents_downloaded"] == 1
    assert rows[tasks[0]["task_id"]] == rows[tasks[1]["task_id"]] == "completed"
    assert rows[stale["task_id"]] == "pending" and rows[theirs["task_id"]] == "assigned"
    (recorded,) = await gate.sql("SELECT task_id FROM documents WHERE doc_id = '5'")
    assert str(recorded["task_id"]) == tasks[0]["task_id"]
    # The same batch again: the two completed answer as repeats, nothing changes.
    again = await gate.http.post("/api/v1/tasks/complete/batch", headers=mine, json=body)
    assert [x["status_code"] for x in again.json()["results"]] == [200, 200, 409, 404]
    (events,) = await gate.sql("SELECT count(*) AS n FROM task_events WHERE event = 'completed'")
    assert events["n"] == 2


async def test_batch_completion_refuses_bad_input_and_writes_nothing(gate: Gate) -> None:
    await gate.create()
    await gate.create()
    key = await gate.register()
    a, b = (await gate.lease(key, max_tasks=2)).json()["tasks"]
    good = {"task_id": a["task_id"], "lease_token": a["lease_token"]}
    wrong_key = {
        "task_id": b["task_id"],
        "lease_token": b["lease_token"],
        "documents": [
            {"doc_id": "7", "storage_key": "tmp/7.html", "sha256": "b" * 64, "size": 1, "status": "stored"}
        ],
    }
    cases = {
        "duplicate": ({"completions": [good, good]}, "more than once"),
        "empty": ({"completions": []}, "at least 1"),
        "wrong key": ({"completions": [good, wrong_key]}, "is not the key for doc_id"),
        "too many": ({"completions": [good] * 101}, "at most 100"),
    }
    for name, (body, message) in cases.items():
        r = await gate.http.post("/api/v1/tasks/complete/batch", headers=key, json=body)
        assert r.status_code == 422, (name, r.text)
        assert message in r.text, (name, r.text)
    rows = await gate.sql("SELECT status FROM tasks")
    assert sorted(r["status"] for r in rows) == ["assigned", "assigned"]
    assert not await gate.sql("SELECT 1 FROM documents")


async def test_overlapping_batch_completions_do_not_deadlock(gate: Gate) -> None:
    await gate.http.post(
        "/api/v1/tasks/batch",
        headers=gate.admin,
        json={"tasks": [{"search_params": {"n": i}} for i in range(60)]},
    )
    key = await gate.register()
    tasks = (await gate.lease(key, max_tasks=60)).json()["tasks"]
    items = [{"task_id": t["task_id"], "lease_token": t["lease_token"]} for t in tasks]
    # Forward and reversed orders of the same 60 tasks, many times at once.
    bodies = [{"completions": items if i % 2 else items[::-1]} for i in range(8)]
    replies = await asyncio.gather(
        *(gate.http.post("/api/v1/tasks/complete/batch", headers=key, json=b) for b in bodies)
    )
    assert all(r.status_code == 200 for r in replies), [r.text for r in replies]
    (row,) = await gate.sql("SELECT count(*) AS n FROM task_events WHERE event = 'completed'")
    assert row["n"] == 60


async def test_one_client_cannot_hoard_the_queue(db_dsn: str, tmp_path: Any) -> None:
    """MAX_LEASES_PER_CLIENT: what a client holds counts against it; other clients still get work."""
    settings = gate_settings(storage_url=str(tmp_path / "store"), max_leases_per_client=3)
    async for gate in start_gate(db_dsn, settings):
        for _ in range(8):
            await gate.create()
        hoarder, other = await gate.register("hoarder"), await gate.register("other")
        first = await gate.lease(hoarder, max_tasks=10)
        assert len(first.json()["tasks"]) == 3
        refused = await gate.lease(hoarder, max_tasks=10, wait=5)  # refused at once, not waited on
        assert (refused.status_code, refused.json()["code"]) == (409, "lease_cap"), refused.text
        assert "holds 3 leases and may hold 3" in refused.json()["detail"]
        assert len((await gate.lease(other, max_tasks=2)).json()["tasks"]) == 2
        done = first.json()["tasks"][0]
        body = {"task_id": done["task_id"], "lease_token": done["lease_token"]}
        assert (await gate.http.post("/api/v1/tasks/complete", headers=hoarder, json=body)).status_code == 200
        assert len((await gate.lease(hoarder, max_tasks=10)).json()["tasks"]) == 1


async def test_a_keys_own_lease_cap_and_heartbeats_that_keep_no_more(db_dsn: str, tmp_path: Any) -> None:
    """A key's max_leases (at registration, or PATCH /api/v1/clients/{id}) overrides
    MAX_LEASES_PER_CLIENT for that key alone; lowered below what it holds, its heartbeats keep
    only that many leases alive (the oldest); bad values are 422, an unknown client 404."""
    settings = gate_settings(storage_url=str(tmp_path / "store"), max_leases_per_client=5)
    async for gate in start_gate(db_dsn, settings):
        for _ in range(12):
            await gate.create()
        r = await gate.http.post(
            "/api/v1/clients/register", headers=gate.admin, json={"client_name": "small", "max_leases": 2}
        )
        small = {"X-API-Key": r.json()["api_key"]}
        big = await gate.register("big")
        assert len((await gate.lease(small, max_tasks=10)).json()["tasks"]) == 2
        assert (await gate.lease(small)).json()["code"] == "lease_cap"
        held = (await gate.lease(big, max_tasks=10)).json()["tasks"]
        assert len(held) == 5  # the gate's setting for a key without its own
        (big_id,) = [
            c["client_id"]
            for c in (await gate.http.get("/api/v1/clients", headers=gate.admin)).json()["clients"]
            if c["client_name"] == "big"
        ]
        r = await gate.http.patch(f"/api/v1/clients/{big_id}", headers=gate.admin, json={"max_leases": 1})
        assert r.status_code == 204, r.text
        beat = (await gate.http.post("/api/v1/clients/heartbeat", headers=big, json={})).json()
        assert beat["leases_extended"] == 1, beat
        assert (await gate.lease(big)).json()["code"] == "lease_cap"
        for bad in ({"max_leases": -1}, {"max_leases": "many"}, {}):
            r = await gate.http.patch(f"/api/v1/clients/{big_id}", headers=gate.admin, json=bad)
            assert (r.status_code, r.json()["code"]) == (422, "invalid_field"), (bad, r.text)
        r = await gate.http.patch(
            f"/api/v1/clients/{uuid.uuid4()}", headers=gate.admin, json={"max_leases": 1}
        )
        assert (r.status_code, r.json()["code"]) == (404, "client_not_found")
        r = await gate.http.patch(f"/api/v1/clients/{big_id}", headers=big, json={"max_leases": 100})
        assert r.status_code == 403  # not the client's to raise
        listed = (await gate.http.get("/api/v1/clients", headers=gate.admin)).json()["clients"]
        assert {c["client_name"]: c["max_leases"] for c in listed} == {"small": 2, "big": 1}


async def test_a_goodbye_hands_back_and_a_left_behind_long_poll_gets_nothing(gate: Gate) -> None:
    """DELETE /api/v1/session: the process's leases go back at once (attempt given back), and a
    long-poll it left waiting at the gate is leased nothing when work comes (409 session_ended).
    Control: the same long-poll of a process that said no goodbye takes the task."""
    import asyncio

    client = await gate.register()
    for _ in range(2):
        await gate.create()
    one = client | {"X-Session-Id": "proc-1"}
    assert len((await gate.lease(one, max_tasks=5)).json()["tasks"]) == 2
    bye = await gate.http.delete("/api/v1/session", headers=one)
    assert bye.status_code == 200 and bye.json() == {"tasks_handed_back": 2}, bye.text
    rows = await gate.sql("SELECT status, attempts FROM tasks")
    assert [(r["status"], r["attempts"]) for r in rows] == [("pending", 0)] * 2
    assert (await gate.http.delete("/api/v1/session", headers=client)).json()["code"] == "invalid_field"
    await gate.sql("UPDATE tasks SET status = 'cancelled'")

    for session, says_goodbye in (("proc-2", True), ("proc-3", False)):
        left = client | {"X-Session-Id": session}
        waiting = asyncio.create_task(gate.lease(left, wait=4))
        await asyncio.sleep(0.5)
        if says_goodbye:
            assert (await gate.http.delete("/api/v1/session", headers=left)).status_code == 200
        task_id = (await gate.create())["task_id"]
        answer = await waiting
        if says_goodbye:
            assert (answer.status_code, answer.json()["code"]) == (409, "session_ended"), answer.text
            (row,) = await gate.sql("SELECT status FROM tasks WHERE task_id = $1", uuid.UUID(task_id))
            assert row["status"] == "pending"
            # ... and a new long-poll of that process is refused at once, not after its wait
            again = await asyncio.wait_for(gate.lease(left, wait=30), timeout=10)
            assert (again.status_code, again.json()["code"]) == (409, "session_ended"), again.text
            await gate.sql("UPDATE tasks SET status = 'cancelled'")
        else:
            assert answer.status_code == 200 and answer.json()["task_id"] == task_id  # control


async def test_a_hand_back_may_give_the_attempt_back(gate: Gate) -> None:
    client = await gate.register()
    task_id = (await gate.create(max_attempts=1))["task_id"]
    leased = (await gate.lease(client)).json()
    body = {"lease_token": leased["lease_token"], "error": "store down", "attempt_spent": False}
    r = await gate.http.post(f"/api/v1/tasks/{task_id}/fail", headers=client, json=body)
    assert r.status_code == 200 and (r.json()["status"], r.json()["attempts"]) == ("pending", 0)
    leased = (await gate.lease(client, wait=5)).json()
    body = {"lease_token": leased["lease_token"], "error": "origin 503"}  # spent: the last attempt
    r = await gate.http.post(f"/api/v1/tasks/{task_id}/fail", headers=client, json=body)
    assert (r.json()["status"], r.json()["attempts"]) == ("failed", 1)


async def _job_on(gate: Gate, origin: str, count: int, priority: int = 0) -> str:
    r = await gate.http.post(
        "/api/v1/jobs",
        headers=gate.admin,
        json={"source": "id_range", "chunk_size": 1, "priority": priority,
              "params": {"url_template": origin + "/doc/{id}", "start_id": 1, "count": count}},
    )  # fmt: skip
    assert r.status_code == 201, r.text
    return str(r.json()["job_id"])


async def _leased_per_job(gate: Gate) -> dict[str, int]:
    rows = await gate.sql(
        "SELECT job_id::text AS job, count(*) AS n FROM tasks WHERE status = 'assigned' GROUP BY job_id"
    )
    return {r["job"]: r["n"] for r in rows}


@pytest.mark.parametrize("per_connection", [2, 0])
async def test_a_fleet_spreads_over_hosts_not_one_jobs_queue(
    db_dsn: str, tmp_path: Any, per_connection: int
) -> None:
    """Jobs on three hosts, HOST_CONNECTIONS=2: a lease hands out at most 2 x 2 tasks of each host
    in flight (over all its jobs; a host's own max_connections counts instead), then the next
    job's, not the first job's whole queue; a finished task makes room again; when every host
    is at its limit the long-poll waits (204) rather than handing out more. Control:
    HOST_TASKS_PER_CONNECTION=0 leases in plain priority-then-age order."""
    settings = gate_settings(
        storage_url=str(tmp_path / "store"), max_leases_per_client=10_000, host_connections=2,
        host_tasks_per_connection=per_connection,
    )  # fmt: skip
    async for gate in start_gate(db_dsn, settings):
        first = await _job_on(gate, "http://a.example", 50)
        again = await _job_on(gate, "http://A.example:80", 50)  # the same host: shares its room
        second = await _job_on(gate, "https://b.example:8443", 50)
        own = await _job_on(gate, "http://c.example", 50)
        r = await gate.http.put("/api/v1/hosts/c.example", headers=gate.admin, json={"max_connections": 1})
        assert r.status_code == 204, r.text
        client = await gate.register()
        r = await gate.lease(client, max_tasks=100)
        assert r.status_code == 200, r.text
        if per_connection == 0:  # control: the first jobs' queue, in age order
            assert await _leased_per_job(gate) == {first: 50, again: 50}
            continue
        assert await _leased_per_job(gate) == {first: 4, second: 4, own: 2}
        params = [t["params"] for t in r.json()["tasks"]]
        assert [p["start_id"] for p in params if "a.example" in p["url_template"]] == [1, 2, 3, 4]
        assert (await gate.lease(client, max_tasks=10, wait=0.5)).status_code == 204  # all at room
        done = next(t for t in r.json()["tasks"] if "b.example" in t["params"]["url_template"])
        body = {"task_id": done["task_id"], "lease_token": done["lease_token"], "documents": []}
        assert (await gate.http.post("/api/v1/tasks/complete", headers=client, json=body)).status_code == 200
        r = await gate.lease(client, max_tasks=10, wait=5)
        assert r.status_code == 200 and [t["params"]["url_template"] for t in r.json()["tasks"]] == [
            "https://b.example:8443/doc/{id}"
        ]


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:21000/doc/1", "https://Example.ORG./x", "http://example.org:80/",
     "https://[::1]:8443/a", "http://bücher.de/x", "https://example.org:443/x", "http://example.org:8080/x"],
)  # fmt: skip
def test_a_jobs_host_is_named_as_the_client_names_its_budget(url: str) -> None:
    """The host a lease counts a job's tasks under (protocol.hosts.host_key) is the one the
    client asks grants for (client.limits.host_key): two spellings of one rule must agree."""
    from yarl import URL

    from client.limits import host_key as client_host_key
    from protocol.hosts import host_key

    assert host_key(url) == client_host_key(URL(url))


@pytest.mark.parametrize("wake", ["as-many-as-room", "control-everyone"])
async def test_tasks_ending_on_a_full_host_wake_as_many_waiters_as_there_is_room(
    db_dsn: str, tmp_path: Any, monkeypatch: pytest.MonkeyPatch, wake: str
) -> None:
    """A fleet bigger than its hosts' room: one host with room for 3 tasks in flight, all 3 out,
    20 clients long-polling. Two of the tasks end (an ending sends no notification): the
    gate's probe finds room for 2 and wakes 2 waiters, who lease them; the other 18 go on
    waiting without a lease attempt each. The control wakes every waiter on room, as a plain
    broadcast would: about 20 attempts to hand out 2 tasks."""
    if wake == "control-everyone":
        from server.wakeup import TaskWakeup

        monkeypatch.setattr(TaskWakeup, "wake", lambda self, count: self.fire() if count else None)
    settings = gate_settings(
        storage_url=str(tmp_path / "store"), host_connections=3, host_tasks_per_connection=1,
        poll_fallback_seconds=0.3,
    )  # fmt: skip
    async for gate in start_gate(db_dsn, settings):
        await _job_on(gate, "http://full.example", 30)
        holder = await gate.register("holder")
        r = await gate.lease(holder, max_tasks=3)
        assert r.status_code == 200 and len(r.json()["tasks"]) == 3, r.text
        clients = [await gate.register(f"waiter-{i}") for i in range(20)]
        waiting = [asyncio.create_task(gate.lease(c, wait=10)) for c in clients]
        await asyncio.sleep(1.5)  # each has tried once, and waits: the host is full
        assert not any(w.done() for w in waiting)
        before = await lease_attempts(gate)
        for done in r.json()["tasks"][:2]:
            body = {"task_id": done["task_id"], "lease_token": done["lease_token"], "documents": []}
            answer = await gate.http.post("/api/v1/tasks/complete", headers=holder, json=body)
            assert answer.status_code == 200, answer.text
        deadline = time.monotonic() + 8
        while sum(w.done() for w in waiting) < 2:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)  # three more probes: the host is full again
        attempts = await lease_attempts(gate) - before
        codes = [w.result().status_code for w in waiting if w.done()]
        if wake == "control-everyone":
            # Twenty lease statements at once also overshoot the host's room (each counts the
            # tasks in flight as its snapshot saw them), so more than 2 may be leased here.
            assert attempts >= len(clients) and len(codes) >= 2, (attempts, codes)
        else:
            assert codes == [200, 200]
            assert attempts <= 4, attempts  # the two woken, and a spare for a probe's race
        for w in waiting:
            w.cancel()
        await asyncio.gather(*waiting, return_exceptions=True)
