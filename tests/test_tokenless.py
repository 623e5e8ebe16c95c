"""The seed's own completion body: no lease_token. It completes the task its caller holds, fenced
in the same statement by owner and (when the caller sends X-Session-Id) session; the token,
when sent, is the strong form and fences even a restarted process of the same client."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from conftest import Gate

COMPLETE = "/api/v1/tasks/complete"
# The seed's curl line, word for word but for the id (004_…txt, "Завершить задачу").
SEED_BODY = {"documents_downloaded": 95, "documents_failed": 2, "documents_skipped": 3, "result_summary": {}}


async def _lease(gate: Gate, client: dict[str, str], session: str | None = None) -> dict[str, Any]:
    headers = client | ({"X-Session-Id": session} if session else {})
    r = await gate.lease(headers)
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


async def _expire(gate: Gate, task_id: str) -> None:
    """Let the lease run out now, and wait until the reaper has handed the task back."""
    await gate.sql(
        "UPDATE tasks SET lease_expires_at = now() - interval '1 second' WHERE task_id = $1", task_id
    )
    deadline = time.monotonic() + 20
    while (await gate.sql("SELECT status FROM tasks WHERE task_id = $1", task_id))[0][0] != "pending":
        assert time.monotonic() < deadline, "the reaper did not hand the task back"
        await asyncio.sleep(0.05)
    await gate.sql("UPDATE tasks SET run_after = now() WHERE task_id = $1", task_id)


async def test_the_seed_body_completes_the_task_its_client_holds(gate: Gate) -> None:
    client = await gate.register()
    task_id = (await gate.create())["task_id"]
    await _lease(gate, client)

    r = await gate.http.post(COMPLETE, headers=client, json={"task_id": task_id} | SEED_BODY)

    assert r.status_code == 200, r.text
    done = r.json()
    assert done["status"] == "completed"
    assert (done["documents_downloaded"], done["documents_failed"], done["documents_skipped"]) == (95, 2, 3)
    again = await gate.http.post(COMPLETE, headers=client, json={"task_id": task_id} | SEED_BODY)
    assert again.status_code == 200 and again.json() == done  # a repeat is harmless
    events = await gate.sql("SELECT count(*) FROM task_events WHERE event = 'completed'")
    assert events[0][0] == 1


async def test_refused_once_the_lease_went_to_another_client(gate: Gate) -> None:
    first, second = await gate.register("first"), await gate.register("second")
    task_id = (await gate.create())["task_id"]
    await _lease(gate, first)
    await _expire(gate, task_id)
    await _lease(gate, second)

    late = await gate.http.post(COMPLETE, headers=first, json={"task_id": task_id} | SEED_BODY)

    assert (late.status_code, late.json()["code"]) == (409, "lease_lost"), late.text
    row = (await gate.sql("SELECT status, documents_downloaded FROM tasks WHERE task_id = $1", task_id))[0]
    assert (row["status"], row["documents_downloaded"]) == ("assigned", 0)
    ok = await gate.http.post(COMPLETE, headers=second, json={"task_id": task_id} | SEED_BODY)
    assert ok.status_code == 200, ok.text


async def test_a_client_that_never_held_it_gets_not_your_task(gate: Gate) -> None:
    holder, stranger = await gate.register("holder"), await gate.register("stranger")
    task_id = (await gate.create())["task_id"]
    await _lease(gate, holder)
    r = await gate.http.post(COMPLETE, headers=stranger, json={"task_id": task_id})
    assert (r.status_code, r.json()["code"]) == (404, "not_your_task")


async def test_the_session_fences_a_restarted_process_of_the_same_client(gate: Gate) -> None:
    """Same key, new process (new X-Session-Id): without a token it is refused like a stranger's write;
    the process that leased the task may complete it, with or without sending its session."""
    client = await gate.register()
    task_id = (await gate.create())["task_id"]
    await _lease(gate, client, session="process-1")

    restarted = await gate.http.post(
        COMPLETE, headers=client | {"X-Session-Id": "process-2"}, json={"task_id": task_id}
    )
    assert (restarted.status_code, restarted.json()["code"]) == (409, "lease_lost"), restarted.text

    progress = await gate.http.post(
        f"/api/v1/tasks/{task_id}/progress", headers=client | {"X-Session-Id": "process-1"}, json={}
    )
    assert progress.status_code == 200, progress.text
    ok = await gate.http.post(
        COMPLETE, headers=client | {"X-Session-Id": "process-1"}, json={"task_id": task_id}
    )
    assert ok.status_code == 200, ok.text


async def test_tokenless_fail_and_progress_are_fenced_too(gate: Gate) -> None:
    first, second = await gate.register("first"), await gate.register("second")
    task_id = (await gate.create())["task_id"]
    await _lease(gate, first)
    r = await gate.http.post(
        f"/api/v1/tasks/{task_id}/progress", headers=first, json={"documents_downloaded": 4}
    )
    assert r.status_code == 200 and r.json()["documents_downloaded"] == 4
    await _expire(gate, task_id)
    await _lease(gate, second)
    for path, body in (
        (f"/api/v1/tasks/{task_id}/progress", {}),
        (f"/api/v1/tasks/{task_id}/fail", {"error": "x"}),
    ):
        late = await gate.http.post(path, headers=first, json=body)
        assert (late.status_code, late.json()["code"]) == (409, "lease_lost"), (path, late.text)
    failed = await gate.http.post(
        f"/api/v1/tasks/{task_id}/fail", headers=second, json={"error": "origin 503"}
    )
    assert failed.status_code == 200 and failed.json()["status"] == "pending"


async def test_with_a_token_the_token_decides(gate: Gate) -> None:
    """The strong form is unchanged: a stale token is refused even from the client that holds the task."""
    client = await gate.register()
    task_id = (await gate.create())["task_id"]
    leased = await _lease(gate, client)
    await _expire(gate, task_id)
    again = await _lease(gate, client)
    assert again["lease_token"] != leased["lease_token"]
    stale = await gate.http.post(
        COMPLETE, headers=client, json={"task_id": task_id, "lease_token": leased["lease_token"]}
    )
    assert (stale.status_code, stale.json()["code"]) == (409, "lease_lost")
    tokenless = await gate.http.post(COMPLETE, headers=client, json={"task_id": task_id})
    assert tokenless.status_code == 200, tokenless.text


async def test_a_batch_mixes_tokenless_and_token_completions(gate: Gate) -> None:
    client, other = await gate.register("a"), await gate.register("b")
    ids = [(await gate.create())["task_id"] for _ in range(3)]
    mine = [await _lease(gate, client), await _lease(gate, client)]
    theirs = await _lease(gate, other)
    body = {
        "completions": [
            {"task_id": mine[0]["task_id"]},
            {"task_id": mine[1]["task_id"], "lease_token": mine[1]["lease_token"]},
            {"task_id": theirs["task_id"]},
        ]
    }
    r = await gate.http.post("/api/v1/tasks/complete/batch", headers=client, json=body)
    assert r.status_code == 200, r.text
    results = {x["task_id"]: (x["status_code"], x["code"]) for x in r.json()["results"]}
    assert results == {
        mine[0]["task_id"]: (200, None),
        mine[1]["task_id"]: (200, None),
        theirs["task_id"]: (404, "not_your_task"),
    }
    assert sorted(ids) == sorted(results)
