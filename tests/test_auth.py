"""Acceptance 8: keys, roles, and a client's view limited to its own tasks."""

from __future__ import annotations

import hashlib
import uuid

import pytest

from conftest import Gate, gate_settings, start_gate

ADMIN_ONLY = [
    ("POST", "/api/v1/tasks/create", {"search_params": {}}),
    ("POST", "/api/v1/tasks/batch", {"tasks": [{}]}),
    (
        "POST",
        "/api/v1/jobs",
        {"source": "id_range", "params": {"url_template": "http://h/{id}", "start_id": 1, "count": 1}},
    ),
    ("GET", "/api/v1/tasks", None),
    ("GET", "/api/v1/tasks/status", None),
    ("GET", "/api/v1/clients", None),
    ("GET", "/api/v1/clients/00000000-0000-4000-8000-000000000004", None),
    ("POST", "/api/v1/clients/register", {"client_name": "sneaky"}),
    ("POST", "/api/v1/tasks/00000000-0000-4000-8000-000000000001/cancel", None),
    ("POST", "/api/v1/tasks/00000000-0000-4000-8000-000000000002/retry", None),
    ("GET", "/api/v1/jobs/00000000-0000-4000-8000-000000000003", None),
]


@pytest.mark.parametrize(("method", "path", "body"), ADMIN_ONLY)
async def test_no_key_401_and_client_key_403(gate: Gate, method: str, path: str, body: object) -> None:
    client = await gate.register()
    before = await gate.sql("SELECT count(*) FROM tasks UNION ALL SELECT count(*) FROM clients")
    r = await gate.http.request(method, path, json=body)
    assert r.status_code == 401 and "X-API-Key" in r.json()["detail"]
    r = await gate.http.request(method, path, json=body, headers={"X-API-Key": "dg_wrong"})
    assert r.status_code == 401
    r = await gate.http.request(method, path, json=body, headers=client)
    assert r.status_code == 403 and "admin" in r.json()["detail"]
    after = await gate.sql("SELECT count(*) FROM tasks UNION ALL SELECT count(*) FROM clients")
    assert before == after


async def test_client_endpoints_need_a_key(gate: Gate) -> None:
    for method, path in [
        ("POST", "/api/v1/tasks/request"),
        ("GET", "/api/v1/tasks/request"),
        ("POST", "/api/v1/clients/heartbeat"),
    ]:
        r = await gate.http.request(method, path)
        assert r.status_code == 401, path


async def test_a_client_cannot_see_or_touch_another_clients_task(gate: Gate) -> None:
    alice, bob = await gate.register("alice"), await gate.register("bob")
    task_id = (await gate.create())["task_id"]
    leased = (await gate.lease(alice)).json()
    token = leased["lease_token"]
    r = await gate.http.get(f"/api/v1/tasks/{task_id}", headers=bob)
    assert r.status_code == 404
    for path, body in [
        ("/api/v1/tasks/complete", {"task_id": task_id, "lease_token": token}),
        (f"/api/v1/tasks/{task_id}/progress", {"lease_token": token}),
        (f"/api/v1/tasks/{task_id}/fail", {"lease_token": token, "error": "x"}),
    ]:
        r = await gate.http.post(path, headers=bob, json=body)
        assert r.status_code == 404, (path, r.text)
    r = await gate.http.get(f"/api/v1/tasks/{task_id}", headers=alice)
    assert r.status_code == 200 and r.json()["status"] == "assigned"
    r = await gate.http.get(f"/api/v1/tasks/{uuid.uuid4()}", headers=alice)
    assert r.status_code == 404


async def test_keys_are_stored_only_as_hashes(gate: Gate) -> None:
    r = await gate.http.post(
        "/api/v1/clients/register", headers=gate.admin, json={"client_name": "c", "client_host": "h"}
    )
    key = r.json()["api_key"]
    assert len(key) >= 40
    rows = await gate.sql("SELECT api_key_hash, clients::text AS everything FROM clients")
    assert bytes(rows[0]["api_key_hash"]) == hashlib.sha256(key.encode()).digest()
    assert key not in rows[0]["everything"]
    r = await gate.http.get("/api/v1/clients", headers=gate.admin)
    assert key not in r.text and "api_key" not in r.text


async def test_seed_register_with_own_key(gate: Gate) -> None:
    own = "my-own-long-random-key-0123456789abcdef"
    r = await gate.http.post(
        "/api/v1/clients/register",
        headers=gate.admin,
        json={"client_name": "c", "client_host": "h", "api_key": own},
    )
    assert r.status_code == 201 and r.json()["api_key"] == own
    r = await gate.http.post("/api/v1/clients/heartbeat", headers={"X-API-Key": own})
    assert r.status_code == 200
    r = await gate.http.post(
        "/api/v1/clients/register", headers=gate.admin, json={"client_name": "d", "api_key": own}
    )
    assert r.status_code == 409


async def test_generated_admin_key_is_printed_once_and_stored_hashed(
    db_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = gate_settings(admin_api_key=None)
    async for gate in start_gate(db_dsn, settings):
        out = capsys.readouterr().out
        key = next(w for w in out.split() if w.startswith("dg_"))
        r = await gate.http.get("/api/v1/tasks/status", headers={"X-API-Key": key})
        assert r.status_code == 200
        (row,) = await gate.sql("SELECT key_hash FROM admin_keys")
        assert bytes(row[0]) == hashlib.sha256(key.encode()).digest()
    async for _gate in start_gate(db_dsn, settings):
        assert "dg_" not in capsys.readouterr().out


async def test_auth_disabled_makes_every_call_admin(db_dsn: str, caplog: pytest.LogCaptureFixture) -> None:
    async for gate in start_gate(db_dsn, gate_settings(enable_auth=False)):
        assert any("ENABLE_AUTH=false" in r.message for r in caplog.records)
        r = await gate.http.post("/api/v1/tasks/create", json={"search_params": {}})
        assert r.status_code == 201
        r = await gate.http.post("/api/v1/tasks/request")
        assert r.status_code == 200
        body = {"task_id": r.json()["task_id"], "lease_token": r.json()["lease_token"]}
        r = await gate.http.post("/api/v1/tasks/complete", json=body)
        assert r.status_code == 200
