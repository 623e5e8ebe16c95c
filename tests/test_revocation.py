"""Keys can be revoked and rotated: a revoked key gets 401 (at once on the gate that revoked it,
within the 10 s look-up cache elsewhere), it leases nothing from the moment of the revocation on
any gate, and its leases go back to pending without spending an attempt."""

from __future__ import annotations

from typing import Any

import pytest

from conftest import Gate, start_gate


async def test_revoking_a_key_stops_it_and_hands_back_its_leases(gate: Gate) -> None:
    client = await gate.register("doomed")
    for _ in range(3):
        await gate.create()
    held = (await gate.lease(client, max_tasks=2)).json()["tasks"]
    assert (
        await gate.http.get("/api/v1/tasks/status", headers=client)
    ).status_code == 403  # a control: known
    client_id = next(
        c["client_id"] for c in (await gate.http.get("/api/v1/clients", headers=gate.admin)).json()["clients"]
    )

    r = await gate.http.delete(f"/api/v1/clients/{client_id}", headers=gate.admin)

    assert r.status_code == 200, r.text
    assert r.json()["tasks_handed_back"] == 2
    refused = await gate.http.post("/api/v1/clients/heartbeat", headers=client)
    assert (refused.status_code, refused.json()["code"]) == (401, "unauthorized")
    rows = await gate.sql(
        "SELECT status, attempts FROM tasks WHERE task_id = ANY($1::uuid[])", [t["task_id"] for t in held]
    )
    assert {(r["status"], r["attempts"]) for r in rows} == {("pending", 0)}
    late = {"task_id": held[0]["task_id"], "lease_token": held[0]["lease_token"]}
    assert (await gate.http.post("/api/v1/tasks/complete", headers=client, json=late)).status_code == 401
    listed = (await gate.http.get("/api/v1/clients", headers=gate.admin)).json()["clients"][0]
    assert listed["status"] == "revoked" and listed["revoked_at"]
    again = await gate.http.delete(f"/api/v1/clients/{client_id}", headers=gate.admin)
    assert again.status_code == 200 and again.json()["tasks_handed_back"] == 0  # idempotent
    other = await gate.register("other")
    assert len((await gate.lease(other, max_tasks=10)).json()["tasks"]) == 3  # the work went on


async def test_a_revoked_client_leases_nothing_on_a_gate_that_still_caches_its_key(gate: Gate) -> None:
    """Two gates on one database: the second has the key in its look-up cache, so the key still
    authenticates there for up to 10 s; the lease statement itself refuses a revoked client."""
    client = await gate.register("cached")
    await gate.create()
    async for second in start_gate(gate.dsn, gate.settings):
        assert (
            await second.http.post("/api/v1/clients/heartbeat", headers=client)
        ).status_code == 200  # cached
        client_id = (await gate.sql("SELECT client_id::text FROM clients WHERE client_name = 'cached'"))[0][0]
        assert (await gate.http.delete(f"/api/v1/clients/{client_id}", headers=gate.admin)).status_code == 200
        assert (await second.lease(client)).status_code == 204
        assert (await gate.sql("SELECT count(*) FROM tasks WHERE status = 'assigned'"))[0][0] == 0


async def test_rotating_a_key(gate: Gate) -> None:
    old = await gate.register("rotating")
    client_id = (await gate.sql("SELECT client_id::text FROM clients"))[0][0]
    r = await gate.http.post(f"/api/v1/clients/{client_id}/rotate-key", headers=gate.admin)
    assert r.status_code == 200 and r.json()["api_key"].startswith("dg_")
    new = {"X-API-Key": r.json()["api_key"]}
    assert (await gate.http.post("/api/v1/clients/heartbeat", headers=old)).status_code == 401
    assert (await gate.http.post("/api/v1/clients/heartbeat", headers=new)).status_code == 200
    unknown = await gate.http.delete(
        "/api/v1/clients/00000000-0000-4000-8000-000000000000", headers=gate.admin
    )
    assert (unknown.status_code, unknown.json()["code"]) == (404, "client_not_found")
    assert (await gate.http.delete(f"/api/v1/clients/{client_id}", headers=new)).status_code == 403
    await gate.http.delete(f"/api/v1/clients/{client_id}", headers=gate.admin)
    refused = await gate.http.post(f"/api/v1/clients/{client_id}/rotate-key", headers=gate.admin)
    assert (refused.status_code, refused.json()["code"]) == (409, "invalid_state")


async def test_the_command_line_lists_revokes_and_rotates(gate: Gate) -> None:
    import subprocess

    from processes import CLEAN_ENV, REPO, docgate

    client = await gate.register("by-cli")
    await gate.create()
    await gate.lease(client)
    client_id = (await gate.sql("SELECT client_id::text FROM clients"))[0][0]
    env = CLEAN_ENV | {"DATABASE_URL": gate.dsn}

    def cli(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            docgate("clients", *argv), env=env, cwd=REPO, capture_output=True, text=True, timeout=60
        )

    listed = cli("list")
    assert listed.returncode == 0 and client_id in listed.stdout and "stale" in listed.stdout, listed.stderr
    rotated = cli("rotate-key", client_id)
    assert rotated.returncode == 0 and "dg_" in rotated.stdout, rotated.stderr
    revoked = cli("revoke", client_id)
    assert revoked.returncode == 0 and "1 leases handed back" in revoked.stdout, revoked.stderr
    assert "revoked" in cli("list").stdout
    bad = cli("revoke", "not-an-id")
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and "uuid" in bad.stderr


async def test_the_key_cache_is_renewed_in_one_query_that_drops_revoked_keys(
    gate: Gate, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A gate renews its cached look-ups in one query before they run out: a working client's
    key is kept without a look-up in its requests' way, and a key revoked on another gate is
    refused there from that renewal on. Control: before the renewal, the revoked key is still
    taken from the cache."""
    import time

    from server import auth

    kept, doomed = await gate.register("kept"), await gate.register("doomed")
    async for second in start_gate(gate.dsn, gate.settings):
        for key in (kept, doomed):
            assert (await second.http.post("/api/v1/clients/heartbeat", headers=key)).status_code == 200
        client_id = (await gate.sql("SELECT client_id::text FROM clients WHERE client_name = 'doomed'"))[0][0]
        assert (await gate.http.delete(f"/api/v1/clients/{client_id}", headers=gate.admin)).status_code == 200
        assert (
            await second.http.post("/api/v1/clients/heartbeat", headers=doomed)
        ).status_code == 200  # control
        authenticator = second.transport.app.state.gate.auth  # type: ignore[attr-defined]
        soon = time.monotonic() + 1.0  # both look-ups near their end
        authenticator._cache = {d: (p, soon) for d, (p, _) in authenticator._cache.items()}
        queries: list[int] = []
        monkeypatch.setattr(auth.clients, "find_keys", counting(auth.clients.find_keys, queries))
        await authenticator.refresh()
        assert queries == [2], queries
        (left,) = authenticator._cache.values()
        assert left[0].client_name == "kept" and left[1] > time.monotonic() + auth.CACHE_SECONDS / 2
        refused = await second.http.post("/api/v1/clients/heartbeat", headers=doomed)
        assert (refused.status_code, refused.json()["code"]) == (401, "unauthorized")
        assert (await second.http.post("/api/v1/clients/heartbeat", headers=kept)).status_code == 200


def counting(real: Any, calls: list[int]) -> Any:
    """`real`, noting how many keys each call looks up."""

    async def counted(pool: object, digests: list[bytes]) -> object:
        calls.append(len(digests))
        return await real(pool, digests)

    return counted
