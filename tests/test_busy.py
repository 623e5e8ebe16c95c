"""Fast when busy: leasing past a backlog in back-off, activity rollups and the retention of
task_events, job progress from counters, jobs created in the background and idempotently."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest

from conftest import Gate, gate_settings, start_gate

LEASE_WALK = """
EXPLAIN (ANALYZE, FORMAT JSON)
SELECT task_id FROM tasks WHERE status = 'pending' AND {where}
ORDER BY priority DESC, task_seq LIMIT 1
"""


def filtered(plan: Any) -> int:
    """Rows an index walk read and threw away, over the whole plan."""
    node = plan[0]["Plan"] if isinstance(plan, list) else plan
    return int(node.get("Rows Removed by Filter", 0)) + sum(filtered(p) for p in node.get("Plans", []))


async def explain(gate: Gate, where: str) -> Any:
    (row,) = await gate.sql(LEASE_WALK.format(where=where))
    return json.loads(row[0])


async def test_a_backlog_in_back_off_is_not_walked_by_the_lease(gate: Gate) -> None:
    # 3,000 high-priority tasks wait for their run_after, ahead of 5 due ones in the lease order.
    await gate.sql(
        "INSERT INTO tasks (priority, max_attempts, run_after) "
        "SELECT 10, 3, now() + interval '1 hour' FROM generate_series(1, 3000)"
    )
    r = await gate.http.post(
        "/api/v1/tasks/batch",
        headers=gate.admin,
        json={"tasks": [{"search_params": {"n": i}} for i in range(5)]},
    )
    assert r.status_code == 201
    await gate.sql("ANALYZE tasks")
    # The lease's walk reads only due tasks; the old predicate (run_after as a filter) walks
    # past all 3,000 first: the negative control on the same rows.
    assert filtered(await explain(gate, "due AND run_after <= now()")) == 0
    assert filtered(await explain(gate, "run_after <= now()")) >= 3000
    client = await gate.register()
    leased = (await gate.lease(client, max_tasks=10)).json()["tasks"]
    assert sorted(t["search_params"]["n"] for t in leased) == list(range(5))
    # They are pending to the outside, as before.
    counts = (await gate.http.get("/api/v1/tasks/status", headers=gate.admin)).json()["counts"]
    assert counts["pending"] == 3000


async def test_a_retry_comes_back_when_its_back_off_ends_and_wakes_a_long_poll(gate: Gate) -> None:
    task = await gate.create()
    client = await gate.register()
    leased = (await gate.lease(client, max_tasks=1)).json()["tasks"][0]
    r = await gate.http.post(
        f"/api/v1/tasks/{task['task_id']}/fail",
        headers=client,
        json={"lease_token": leased["lease_token"], "error": "503 from origin", "retryable": True},
    )
    assert r.status_code == 200 and r.json()["status"] == "pending"
    # Its back-off is short here, but it is out of the leasable index until promoted.
    rows = await gate.sql(
        "SELECT due, run_after > now() AS ahead FROM tasks WHERE task_id = $1", task["task_id"]
    )
    assert rows[0]["ahead"] is False or rows[0]["due"] is False
    # A long-poll waiting now gets it once housekeeping promotes it (a notification wakes it).
    again = await gate.lease(client, wait=10, max_tasks=1)
    assert again.status_code == 200, again.text
    assert again.json()["tasks"][0]["task_id"] == task["task_id"]
    (row,) = await gate.sql("SELECT attempts, due FROM tasks WHERE task_id = $1", task["task_id"])
    assert row["attempts"] == 2 and row["due"] is True


async def test_due_is_kept_right_by_any_writer(gate: Gate) -> None:
    # psql-style writes, outside the gate: the trigger keeps `due` in step with run_after.
    await gate.sql("INSERT INTO tasks (max_attempts, run_after) VALUES (3, now() + interval '1 hour')")
    assert (await gate.sql("SELECT due FROM tasks"))[0][0] is False
    await gate.sql("UPDATE tasks SET run_after = now() - interval '1 second'")
    assert (await gate.sql("SELECT due FROM tasks"))[0][0] is True
    client = await gate.register()
    assert (await gate.lease(client)).status_code == 200


async def complete_all(gate: Gate, client: dict[str, str], documents: int) -> int:
    done = 0
    while True:
        r = await gate.lease(client, max_tasks=50)
        if r.status_code == 204:
            return done
        for t in r.json()["tasks"]:
            body = {
                "task_id": t["task_id"],
                "lease_token": t["lease_token"],
                "documents_downloaded": documents,
            }
            assert (
                await gate.http.post("/api/v1/tasks/complete", headers=client, json=body)
            ).status_code == 200
            done += 1


async def test_throughput_dashboard_and_job_progress_come_from_rollups_and_counters(gate: Gate) -> None:
    r = await gate.http.post(
        "/api/v1/jobs",
        headers=gate.admin,
        json={
            "source": "id_range",
            "params": {"url_template": "https://host/{id}", "start_id": 1, "count": 120},
            "chunk_size": 10,
        },
    )
    job_id = r.json()["job_id"]
    client = await gate.register()
    assert await complete_all(gate, client, documents=7) == 12
    # task_events go (as retention would take them): what the operator sees stays.
    await gate.sql("DELETE FROM task_events")
    status = (await gate.http.get("/api/v1/tasks/status", headers=gate.admin)).json()
    one_minute = next(t for t in status["throughput"] if t["window_minutes"] == 1)
    assert one_minute["tasks_completed"] == 12 and one_minute["documents_downloaded"] == 84
    job = (await gate.http.get(f"/api/v1/jobs/{job_id}", headers=gate.admin)).json()
    assert job["counts"]["completed"] == 12 and job["documents_downloaded"] == 84 and job["progress"] == 1.0
    # The counters agree with the rows they stand for.
    (row,) = await gate.sql("SELECT sum(documents_downloaded) FROM tasks WHERE job_id = $1", job_id)
    assert row[0] == 84
    login = await gate.http.post("/ui/login", data={"api_key": gate.admin["X-API-Key"]})
    assert login.status_code == 303
    live = await gate.http.get("/ui/live")
    assert live.status_code == 200 and "12" in live.text
    # Folded or not, the rollup holds the same: fold and read again.
    (before,) = await gate.sql("SELECT coalesce(sum(completed), 0) FROM activity")
    await asyncio.sleep(0.5)  # housekeeping folds every 0.1 s here
    (after,) = await gate.sql("SELECT coalesce(sum(completed), 0) FROM activity")
    assert after[0] == 12 and (await gate.sql("SELECT count(*) FROM activity_deltas"))[0][0] == 0, before


async def test_task_events_are_pruned_after_their_retention(db_dsn: str, tmp_path: Any) -> None:
    settings = gate_settings(storage_url=str(tmp_path / "store"), task_events_retention_seconds=3600)
    async for gate in start_gate(db_dsn, settings):
        # 12,000 events of yesterday (more than one pruning batch) and one of now.
        await gate.sql(
            "INSERT INTO task_events (task_id, event, at) "
            "SELECT gen_random_uuid(), 'completed', now() - interval '1 day' FROM generate_series(1, 12000)"
        )
        await gate.sql(
            "INSERT INTO task_events (task_id, event, detail) VALUES (gen_random_uuid(), 'leased', 'now')"
        )
        deadline = time.monotonic() + 30
        while (await gate.sql("SELECT count(*) FROM task_events"))[0][0] > 1:
            assert time.monotonic() < deadline, "old events were not pruned"
            await asyncio.sleep(0.1)
        (row,) = await gate.sql("SELECT detail FROM task_events")
        assert row[0] == "now"


async def test_default_retention_keeps_recent_events(gate: Gate) -> None:
    # The negative control: with the default (3 days) the same day-old events stay.
    await gate.sql(
        "INSERT INTO task_events (task_id, event, at) "
        "SELECT gen_random_uuid(), 'completed', now() - interval '1 day' FROM generate_series(1, 100)"
    )
    await asyncio.sleep(0.5)
    assert (await gate.sql("SELECT count(*) FROM task_events"))[0][0] == 100


JOB = {
    "source": "id_range",
    "params": {"url_template": "https://host/{id}.pdf", "start_id": 1000, "count": 30_000, "ext": ".pdf"},
    "chunk_size": 10,
    "idempotency_key": "nightly-2026-12-02",
}


async def job_tasks(gate: Gate, job_id: str) -> list[int]:
    rows = await gate.sql("SELECT params FROM tasks WHERE job_id = $1 ORDER BY task_seq", job_id)
    return [json.loads(r["params"])["start_id"] for r in rows]


async def wait_created(gate: Gate, job_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while True:
        job = (await gate.http.get(f"/api/v1/jobs/{job_id}", headers=gate.admin)).json()
        if not job["creating"]:
            return job  # type: ignore[no-any-return]
        assert time.monotonic() < deadline, job
        await asyncio.sleep(0.1)


@pytest.fixture
def background_settings(tmp_path: Any) -> Any:
    return gate_settings(storage_url=str(tmp_path / "store"), job_background_tasks=100)


async def test_a_large_job_is_answered_at_once_and_a_retry_never_makes_a_second(
    db_dsn: str, background_settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from server.db import jobs

    monkeypatch.setattr(jobs, "SLICE_TASKS", 500)  # 3,000 tasks in six slices
    async for gate in start_gate(db_dsn, background_settings):
        first = await gate.http.post("/api/v1/jobs", headers=gate.admin, json=JOB)
        assert first.status_code == 202, first.text
        assert first.json()["creating"] is True
        job_id = first.json()["job_id"]
        # The caller's retry (its first answer lost, say): the same job, never a second one.
        again = await gate.http.post("/api/v1/jobs", headers=gate.admin, json=JOB)
        assert again.status_code == 200 and again.json()["job_id"] == job_id
        other = await gate.http.post("/api/v1/jobs", headers=gate.admin, json=JOB | {"chunk_size": 20})
        assert other.status_code == 409 and other.json()["code"] == "idempotency_conflict"
        # Work starts while the rest is still being created.
        client = await gate.register()
        assert (await gate.lease(client, wait=10)).status_code == 200
        job = await wait_created(gate, job_id)
        assert job["tasks_total"] == job["tasks_created"] == 3000
        starts = await job_tasks(gate, job_id)
        assert starts == list(range(1000, 31000, 10))  # each once, in id order
        assert len(await gate.sql("SELECT 1 FROM jobs")) == 1


async def test_creation_cut_short_by_a_gate_stop_is_finished_by_the_next_gate(
    db_dsn: str, background_settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from server.db import jobs

    monkeypatch.setattr(jobs, "SLICE_TASKS", 100)
    real = jobs.create_slice
    slices = 0

    async def slow_slice(pool: Any) -> int | None:
        nonlocal slices
        slices += 1
        await asyncio.sleep(0.05)
        return await real(pool)

    monkeypatch.setattr(jobs, "create_slice", slow_slice)
    async for gate in start_gate(db_dsn, background_settings):
        job_id = (await gate.http.post("/api/v1/jobs", headers=gate.admin, json=JOB)).json()["job_id"]
        while slices < 5:
            await asyncio.sleep(0.01)
    # The gate stopped midway (its creator cancelled between or inside a slice).
    (row,) = await gate.sql("SELECT creating, tasks_created FROM jobs")
    assert row["creating"] and 0 < row["tasks_created"] < 3000
    assert len(await job_tasks(gate, job_id)) == row["tasks_created"]
    async for gate in start_gate(db_dsn, background_settings):
        job = await wait_created(gate, job_id)
        assert job["tasks_total"] == 3000
        assert await job_tasks(gate, job_id) == list(range(1000, 31000, 10))


async def test_cancelling_a_job_being_created_stops_it_growing(
    db_dsn: str, background_settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from server.db import jobs

    monkeypatch.setattr(jobs, "SLICE_TASKS", 100)
    async for gate in start_gate(db_dsn, background_settings):
        job_id = (await gate.http.post("/api/v1/jobs", headers=gate.admin, json=JOB)).json()["job_id"]
        r = await gate.http.post(f"/api/v1/jobs/{job_id}/cancel", headers=gate.admin)
        assert r.status_code == 200
        await asyncio.sleep(0.5)
        job = (await gate.http.get(f"/api/v1/jobs/{job_id}", headers=gate.admin)).json()
        assert not job["creating"] and job["tasks_total"] == job["tasks_created"] < 3000
        assert job["counts"]["cancelled"] == job["tasks_created"] and job["counts"]["pending"] == 0


async def test_only_missing_in_the_background_leaves_out_what_is_stored(
    db_dsn: str, background_settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from server.db import jobs

    monkeypatch.setattr(jobs, "SLICE_TASKS", 50)  # slices of 500 ids
    async for gate in start_gate(db_dsn, background_settings):
        await gate.sql(
            "INSERT INTO documents (doc_id, source, storage_key, storage_url, sha256, size) "
            "SELECT g::text, 'id_range', g::text, 'file:///x', repeat('0', 64), 1 "
            "FROM generate_series(1000, 30999, 3) g"
        )
        body = JOB | {"only_missing": True, "idempotency_key": "missing"}
        r = await gate.http.post("/api/v1/jobs", headers=gate.admin, json=body)
        assert r.status_code == 202, r.text
        job = await wait_created(gate, r.json()["job_id"])
        rows = await gate.sql("SELECT params FROM tasks WHERE job_id = $1", job["job_id"])
        ids = sorted(i for r in rows for i in json.loads(r["params"])["ids"])
        assert ids == [i for i in range(1000, 31000) if (i - 1000) % 3]
        assert job["tasks_total"] == job["tasks_created"] == len(rows)
        assert all(len(json.loads(r["params"])["ids"]) <= 10 for r in rows)


async def test_oldest_pending_reads_the_status_index_past_a_head_of_completed_tasks(gate: Gate) -> None:
    from server.db.stats import OLDEST_PENDING

    await gate.sql("INSERT INTO tasks (max_attempts) SELECT 3 FROM generate_series(1, 20000)")
    await gate.sql(
        "WITH head AS (SELECT task_id FROM tasks ORDER BY task_seq LIMIT 15000) "
        "UPDATE tasks t SET status = 'completed' FROM head WHERE t.task_id = head.task_id"
    )
    await gate.sql("VACUUM ANALYZE tasks")
    plan = await gate.sql("EXPLAIN (ANALYZE, FORMAT JSON) " + OLDEST_PENDING)
    walked = json.loads(plan[0][0])
    assert filtered(walked) == 0 and "tasks_status_newest" in plan[0][0]
    metrics = (await gate.http.get("/metrics")).text
    (line,) = [x for x in metrics.splitlines() if x.startswith("docgate_oldest_pending_task_age_seconds ")]
    assert float(line.split()[-1]) >= 0
