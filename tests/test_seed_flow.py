"""Acceptance 2: the seed's flow, with the seed's field names, end to end."""

from __future__ import annotations

from conftest import Gate


async def test_seed_flow(gate: Gate) -> None:
    client = await gate.register("my-client")

    r = await gate.http.post(
        "/api/v1/tasks/create",
        headers=gate.admin,
        json={
            "search_params": {"CourtRegion": "11", "INSType": "1"},
            "start_page": 1,
            "max_documents": 100,
        },
    )
    assert r.status_code == 201, r.text
    task_id = r.json()["task_id"]
    assert r.json()["status"] == "pending"

    r = await gate.http.post("/api/v1/tasks/request", headers=client)
    assert r.status_code == 200, r.text
    leased = r.json()
    assert leased["task_id"] == task_id
    assert leased["status"] == "assigned"
    assert leased["search_params"] == {"CourtRegion": "11", "INSType": "1"}
    assert leased["start_page"] == 1 and leased["max_documents"] == 100
    assert leased["lease_token"] and leased["lease_expires_at"]
    assert leased["source"] == "search" and leased["params"] == {}

    r = await gate.http.get("/api/v1/tasks/request", headers=client)
    assert r.status_code == 204

    r = await gate.http.post("/api/v1/clients/heartbeat", headers=client)
    assert r.status_code == 200, r.text
    assert r.json()["leases_extended"] == 1

    r = await gate.http.post(
        "/api/v1/tasks/complete",
        headers=client,
        json={
            "task_id": task_id,
            "lease_token": leased["lease_token"],
            "documents_downloaded": 95,
            "documents_failed": 2,
            "documents_skipped": 3,
            "result_summary": {"pages": 4},
        },
    )
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "completed"

    r = await gate.http.get(f"/api/v1/tasks/{task_id}", headers=gate.admin)
    task = r.json()
    assert task["status"] == "completed"
    assert (task["documents_downloaded"], task["documents_failed"], task["documents_skipped"]) == (95, 2, 3)
    assert task["result_summary"] == {"pages": 4}
    assert task["attempts"] == 1

    r = await gate.http.get("/api/v1/tasks?status_filter=completed&limit=100", headers=gate.admin)
    assert [t["task_id"] for t in r.json()["tasks"]] == [task_id]
    r = await gate.http.get("/api/v1/tasks?status_filter=pending&limit=100", headers=gate.admin)
    assert r.json()["tasks"] == []

    r = await gate.http.get("/api/v1/clients", headers=gate.admin)
    (info,) = r.json()["clients"]
    assert info["client_name"] == "my-client"
    assert info["last_heartbeat_at"] is not None
    assert info["status"] == "active"
    assert info["tasks_held"] == 0

    await gate.sql("SELECT 1")  # fold happens in the background; counts include deltas anyway
    r = await gate.http.get("/api/v1/tasks/status", headers=gate.admin)
    assert r.status_code == 200
    report = r.json()
    assert report["counts"]["completed"] == 1 and report["counts"]["pending"] == 0
    assert report["total"] == 1
    one_minute = next(t for t in report["throughput"] if t["window_minutes"] == 1)
    assert one_minute["tasks_completed"] == 1 and one_minute["documents_downloaded"] == 95


async def test_repeat_completion_is_harmless(gate: Gate) -> None:
    client = await gate.register()
    await gate.create()
    leased = (await gate.lease(client)).json()
    body = {"task_id": leased["task_id"], "lease_token": leased["lease_token"], "documents_downloaded": 7}
    first = await gate.http.post("/api/v1/tasks/complete", headers=client, json=body)
    again = await gate.http.post(
        "/api/v1/tasks/complete", headers=client, json=body | {"documents_downloaded": 99}
    )
    assert first.status_code == again.status_code == 200
    assert again.json() == first.json()
    events = await gate.sql("SELECT count(*) FROM task_events WHERE event = 'completed'")
    assert events[0][0] == 1


async def test_health_and_metrics(gate: Gate) -> None:
    r = await gate.http.get("/health")
    assert r.json() == {"status": "ok", "database": "ok", "version": "0.1.0"}
    client = await gate.register()
    await gate.create()
    leased = (await gate.lease(client)).json()
    await gate.http.post(
        "/api/v1/tasks/complete",
        headers=client,
        json={"task_id": leased["task_id"], "lease_token": leased["lease_token"]},
    )
    text = (await gate.http.get("/metrics")).text
    assert 'docgate_tasks{status="completed"} 1.0' in text
    assert "docgate_leases_total 1.0" in text
    assert "docgate_completions_total 1.0" in text


async def test_stats_endpoint(gate: Gate) -> None:
    r = await gate.http.post(
        "/api/v1/jobs",
        headers=gate.admin,
        json={
            "source": "id_range",
            "chunk_size": 5,
            "params": {"url_template": "http://h/{id}", "start_id": 1, "count": 20},
        },
    )
    job_id = r.json()["job_id"]
    client = await gate.register()
    leased = (await gate.lease(client)).json()
    await gate.http.post(
        "/api/v1/tasks/complete",
        headers=client,
        json={"task_id": leased["task_id"], "lease_token": leased["lease_token"], "documents_downloaded": 5},
    )
    stats = (await gate.http.get("/api/v1/stats", headers=gate.admin)).json()
    assert stats["counts"]["completed"] == 1 and stats["counts"]["pending"] == 3
    assert len(stats["per_minute"]) == 60 and stats["per_minute"][-1]["documents_downloaded"] == 5
    (job,) = stats["jobs"]
    assert job["job_id"] == job_id and job["progress"] == 0.25 and job["eta_seconds"] > 0
    assert (await gate.http.get("/api/v1/stats", headers=client)).status_code == 403
