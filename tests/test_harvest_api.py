"""Harvest jobs at the gate: what a bad harvest is told (a 422 naming the field, never a 500 or
a half-made job), a split that a re-sent completion cannot make twice, one run per due time
whatever the number of gates asking, task totals across retried attempts, and the CLI."""

from __future__ import annotations

import asyncio
import json
import subprocess
import uuid
from typing import Any

import asyncpg
import pytest

from conftest import Gate
from processes import CLEAN_ENV, REPO, docgate
from server.db import harvests
from server.db.pool import create_pool

PROFILE: dict[str, Any] = {
    "base_url": "http://127.0.0.1:9",
    "search": {"url": "/", "dates": {"begin": "RegDateBegin", "end": "RegDateEnd", "format": "%d.%m.%Y"}},
    "results": {"links": "a.doc", "id_pattern": r"/Review/(?P<id>\d+)$", "max_results": 100},
}
DAYS = {"from": "2024-01-01", "to": "2024-03-31", "every": "month"}


async def put(gate: Gate, name: str, profile: dict[str, Any]) -> None:
    r = await gate.http.put(f"/api/v1/sources/{name}", headers=gate.admin, json=profile)
    assert r.status_code in (200, 201), r.text


async def create(gate: Gate, **body: Any) -> Any:
    return await gate.http.post("/api/v1/jobs", headers=gate.admin, json={"source": "reg"} | body)


@pytest.mark.parametrize(
    ("body", "status", "code", "says"),
    [
        ({"partition": {}}, 422, "invalid_field", "give dates, values, or both"),
        ({"partition": {"dates": DAYS | {"to": "2023-01-01"}}}, 422, "invalid_field", "to is before from"),
        ({"partition": {"dates": DAYS | {"every": "fortnight"}}}, 422, "invalid_field", "every"),
        ({"partition": {"dates": DAYS}, "repeat": {"every": "soon"}}, 422, "invalid_field", "every"),
        ({"partition": {"values": {"field": "R", "values": ["1", "1"]}}}, 422, "invalid_field",
         "values repeat"),
        ({"partition": {"values": {"field": "R", "values": ["1"]}}, "repeat": {"every": "6h"}},
         422, "invalid_field", "repeat needs partition.dates"),
        ({"source": "nodates", "partition": {"dates": DAYS}}, 422, "invalid_harvest", "search.dates"),
        ({"source": "nothere", "partition": {"dates": DAYS}}, 404, "source_not_found", "nothere"),
        ({"source": "search", "partition": {"dates": DAYS}}, 422, "invalid_harvest", "built-in"),
        ({"partition": {"dates": {"from": "1990-01-01", "to": "2024-12-31", "every": "day"},
                        "values": {"field": "R", "values": [str(i) for i in range(100)]}}},
         422, "job_too_large", "windows"),
    ],
    ids=["no-partition", "backwards", "bad-every", "bad-duration", "repeated-values", "repeat-no-dates",
         "profile-without-dates", "unknown-profile", "built-in", "too-many-windows"],
)  # fmt: skip
async def test_a_bad_harvest_is_refused_and_creates_nothing(
    gate: Gate, body: dict[str, Any], status: int, code: str, says: str
) -> None:
    await put(gate, "reg", PROFILE)
    await put(gate, "nodates", PROFILE | {"search": {"url": "/"}})
    r = await create(gate, **body)
    assert r.status_code == status and r.json()["code"] == code, r.text
    assert says in r.text
    assert await gate.sql("SELECT 1 FROM jobs") == [] and await gate.sql("SELECT 1 FROM tasks") == []


async def lease_window(gate: Gate, client: dict[str, str]) -> dict[str, Any]:
    r = await gate.lease(client)
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


async def complete(gate: Gate, client: dict[str, str], task: dict[str, Any], **listing: Any) -> Any:
    body = {"task_id": task["task_id"], "lease_token": task["lease_token"], "listing": listing}
    return await gate.http.post("/api/v1/tasks/complete", headers=client, json=body)


async def test_a_split_is_made_once_and_its_halves_search_the_days(gate: Gate) -> None:
    """A month over the cap is split into two halves whose tasks fill the profile's date fields in
    its format; the same completion sent again (a lost answer) splits nothing more; a day over
    the cap without split_by is searched as shown and reported over_cap, with its total."""
    await put(gate, "reg", PROFILE)
    r = await create(gate, partition={"dates": DAYS | {"to": "2024-01-31"}}, search_params={"Kind": "1"})
    assert r.status_code == 201 and r.json()["tasks_created"] == 1, r.text
    job = r.json()["job_id"]
    client = await gate.register()
    month = await lease_window(gate, client)
    assert month["search_params"] == {"Kind": "1", "RegDateBegin": "01.01.2024", "RegDateEnd": "31.01.2024"}
    assert month["params"]["over_cap"] == "split" and month["max_documents"] == 100
    for _ in range(2):  # the completion, then the same again
        r = await complete(gate, client, month, stated_total=500, found=0, capped=True)
        assert r.status_code == 200, r.text
    windows = await gate.sql("SELECT * FROM harvest_windows ORDER BY window_id")
    assert [(w["state"], w["stated_total"]) for w in windows[:1]] == [("split", 500)]
    halves = [(str(w["date_from"]), str(w["date_to"])) for w in windows[1:]]
    assert halves == [("2024-01-01", "2024-01-16"), ("2024-01-17", "2024-01-31")]
    tasks = await gate.sql("SELECT search_params FROM tasks WHERE window_id = $1", windows[1]["window_id"])
    assert json.loads(tasks[0]["search_params"])["RegDateEnd"] == "16.01.2024"
    job_row = (await gate.sql("SELECT tasks_total FROM jobs WHERE job_id = $1", uuid.UUID(job)))[0]
    assert job_row["tasks_total"] == 3
    # Split down to one day; a day over the cap, with no split_by, is searched as shown.
    await gate.sql(
        "UPDATE harvest_windows SET date_to = date_from WHERE window_id = $1", windows[1]["window_id"]
    )
    await gate.sql("DELETE FROM tasks WHERE window_id = $1", windows[2]["window_id"])
    await gate.sql(
        "UPDATE harvest_windows SET state = 'cancelled' WHERE window_id = $1", windows[2]["window_id"]
    )
    await gate.sql('UPDATE tasks SET params = params || \'{"over_cap": "truncate"}\'')
    day = await lease_window(gate, client)
    r = await complete(gate, client, day, stated_total=150, found=100, capped=True)
    assert r.status_code == 200, r.text
    cov = (await gate.http.get(f"/api/v1/jobs/{job}/coverage", headers=gate.admin)).json()
    over = [g for g in cov["gaps"] if g["state"] == "over_cap"]
    assert len(over) == 1 and over[0]["stated_total"] == 150 and not cov["complete"], cov["gaps"]


async def test_one_run_per_due_time_whatever_the_gates(gate: Gate) -> None:
    """Eight gates' housekeeping finding the same run due at once start it once: the job's row
    lock is held while its next time moves on and the run's windows are inserted; and none
    starts while the last run is still searching."""
    await put(gate, "reg", PROFILE)
    r = await create(gate, partition={"dates": DAYS}, repeat={"every": "1h", "lookback": "3d"})
    job = uuid.UUID(r.json()["job_id"])
    await gate.sql("UPDATE jobs SET next_run_at = now() - interval '1 second' WHERE job_id = $1", job)
    pools = [await create_pool(gate.dsn, 1, 1) for _ in range(8)]
    # Not while its last run is still searching: runs never overlap.
    assert await harvests.start_due_run(pools[0]) is None
    assert (await gate.sql("SELECT runs FROM jobs WHERE job_id = $1", job))[0]["runs"] == 1
    await gate.sql("UPDATE harvest_windows SET state = 'complete'")
    try:
        started = await asyncio.gather(*(harvests.start_due_run(p) for p in pools))
    finally:
        for p in pools:
            await p.close()
    # If the gate's own housekeeping found it first, the eight skipped its locked row and its
    # transaction may still be inserting the run's windows: wait for that commit, not for time.
    deadline = asyncio.get_running_loop().time() + 60
    while True:
        row = (await gate.sql("SELECT runs, next_run_at > now() AS later FROM jobs WHERE job_id = $1", job))[
            0
        ]
        if row["runs"] == 2 or asyncio.get_running_loop().time() > deadline:
            break
        await asyncio.sleep(0.1)
    assert row["runs"] == 2 and row["later"], row
    assert sum(s is not None for s in started) <= 1  # the gate's own housekeeping may have been first
    windows = await gate.sql("SELECT run, count(*) AS n FROM harvest_windows GROUP BY run ORDER BY run")
    assert [w["run"] for w in windows] == [1, 2] and windows[1]["n"] >= 1


async def test_a_tasks_counts_are_its_totals_over_attempts(gate: Gate) -> None:
    """An attempt that stored 41 of 47 and failed, then one that stored the last 6 and found the
    41 held: the task shows 47 downloaded, not 6 downloaded and 41 skipped (and a document held
    before the task is still counted as skipped)."""
    urls = [{"doc_id": str(i), "url": f"http://127.0.0.1:9/{i}"} for i in range(48)]
    task = await gate.create(source="urls", params={"urls": urls}, max_documents=48)
    client = await gate.register()
    leased = await lease_window(gate, client)
    first = [doc(i, task["task_id"]) for i in range(41)]
    r = await gate.http.post(
        f"/api/v1/tasks/{leased['task_id']}/progress",
        headers=client,
        json={"lease_token": leased["lease_token"], "documents": first, "documents_downloaded": 41},
    )
    assert r.status_code == 200, r.text
    r = await gate.http.post(
        f"/api/v1/tasks/{leased['task_id']}/fail",
        headers=client,
        json={"lease_token": leased["lease_token"], "error": "6 failed transiently", "retryable": True},
    )
    assert r.status_code == 200, r.text
    await gate.sql("UPDATE tasks SET run_after = now(), due = true")
    again = await lease_window(gate, client)
    body = {
        "task_id": again["task_id"],
        "lease_token": again["lease_token"],
        "documents": [doc(i, task["task_id"]) for i in range(41, 47)],
        "documents_downloaded": 6,
        "documents_skipped": 42,  # the 41 of the first attempt, and one held before the task
    }
    r = await gate.http.post("/api/v1/tasks/complete", headers=client, json=body)
    assert r.status_code == 200, r.text
    done = r.json()
    assert (done["documents_downloaded"], done["documents_skipped"]) == (47, 1), done


def doc(i: int, task_id: str) -> dict[str, Any]:
    return {"doc_id": str(i), "storage_key": f"0/{i}", "sha256": "ab" * 32, "size": 1}


def test_the_cli_creates_and_shows_a_harvest(db_dsn: str) -> None:
    env = CLEAN_ENV | {"DATABASE_URL": db_dsn}

    async def seed() -> None:
        conn = await asyncpg.connect(db_dsn)
        try:
            await conn.execute(
                "INSERT INTO sources (name, profile) VALUES ('reg', $1::jsonb)",
                json.dumps(PROFILE),
            )
        finally:
            await conn.close()

    run = subprocess.run(
        docgate("db", "migrate"), env=env, cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr
    asyncio.run(seed())
    argv = docgate(
        "harvest", "create", "reg", "--from", "2024-01-01", "--to", "2024-12-31", "--every", "week"
    )
    made = subprocess.run(argv, env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert made.returncode == 0, made.stderr
    assert " 53 windows" in made.stdout, made.stdout
    job = made.stdout.split()[1]
    shown = subprocess.run(
        docgate("harvest", "status", job), env=env, cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert shown.returncode == 0 and "windows: 53 (53 pending)" in shown.stdout, shown.stdout + shown.stderr
    bad = subprocess.run(
        docgate("harvest", "create", "reg", "--values", "Region"),
        env=env, cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert bad.returncode != 0 and "Traceback" not in bad.stderr
    assert "--values 'Region': give FIELD=v1,v2" in bad.stderr, bad.stderr


@pytest.mark.parametrize(
    ("url", "hosts", "status"),
    [
        ("http://127.0.0.1:9/Review/5", None, 200),  # on the profile's base_url host
        ("http://elsewhere.test/Review/5", None, 422),  # the negative control: any other host
        ("http://files.cdn.test/5.rtf", ["*.cdn.test"], 200),  # on the profile's document_hosts
    ],
    ids=["profile-host", "elsewhere", "document-hosts"],
)
async def test_a_profile_tasks_documents_are_on_its_hosts(
    gate: Gate, url: str, hosts: list[str] | None, status: int
) -> None:
    """A stored profile's task is checked like a search with a listing_url: a document reported
    from a host that is neither the profile's nor one of its document_hosts is refused, and
    nothing of the report is recorded."""
    await put(gate, "reg", PROFILE | ({"document_hosts": hosts} if hosts else {}))
    r = await gate.http.post("/api/v1/tasks/create", headers=gate.admin, json={"source": "reg"})
    assert r.status_code == 201, r.text
    client = await gate.register()
    task = await lease_window(gate, client)
    report = doc(5, task["task_id"]) | {"url": url}
    body = {"task_id": task["task_id"], "lease_token": task["lease_token"], "documents": [report]}
    r = await gate.http.post("/api/v1/tasks/complete", headers=client, json=body)
    assert r.status_code == status, r.text
    recorded = await gate.sql("SELECT doc_id FROM documents")
    assert len(recorded) == (1 if status == 200 else 0)
    if status == 422:
        assert r.json()["code"] == "not_in_task" and "elsewhere.test" in r.text


async def test_a_large_harvest_is_created_in_the_background(
    db_dsn: str, tmp_path: Any, monkeypatch: Any
) -> None:
    """Past JOB_BACKGROUND_TASKS windows a harvest is answered 202 at once and its windows are
    inserted a slice per transaction, each once; its coverage is not complete while it is."""
    from conftest import gate_settings, start_gate

    monkeypatch.setattr(harvests, "SLICE_WINDOWS", 100)
    settings = gate_settings(storage_url=str(tmp_path / "store"), job_background_tasks=50)
    async for gate in start_gate(db_dsn, settings):
        await put(gate, "reg", PROFILE)
        days = {"from": "2023-01-01", "to": "2024-12-31", "every": "day"}  # 731 windows
        r = await create(gate, partition={"dates": days})
        assert r.status_code == 202 and r.json()["creating"], r.text
        job = r.json()["job_id"]
        cov = (await gate.http.get(f"/api/v1/jobs/{job}/coverage", headers=gate.admin)).json()
        assert not cov["complete"]
        for _ in range(300):
            state = (await gate.http.get(f"/api/v1/jobs/{job}", headers=gate.admin)).json()
            if not state["creating"]:
                break
            await asyncio.sleep(0.1)
        assert not state["creating"] and state["tasks_total"] == 731 and state["tasks_created"] == 731, state
        rows = await gate.sql("SELECT count(*) AS n, count(DISTINCT date_from) AS d FROM harvest_windows")
        assert (rows[0]["n"], rows[0]["d"]) == (731, 731)
        assert len(await gate.sql("SELECT 1 FROM tasks WHERE window_id IS NOT NULL")) == 731


async def test_extend_runs_from_the_last_searched_day_to_today(gate: Gate) -> None:
    from datetime import UTC, datetime, timedelta

    await put(gate, "reg", PROFILE)
    today = datetime.now(UTC).date()
    days = {"from": (today - timedelta(days=20)).isoformat(), "to": (today - timedelta(days=5)).isoformat(),
            "every": "day"}  # fmt: skip
    job = (await create(gate, partition={"dates": days})).json()["job_id"]
    r = await gate.http.post(f"/api/v1/jobs/{job}/extend", headers=gate.admin)
    assert r.status_code == 200 and r.json()["tasks_created"] == 5, r.text  # today-4 … today
    again = await gate.http.post(f"/api/v1/jobs/{job}/extend", headers=gate.admin)
    assert again.json()["tasks_created"] == 0  # up to today already
    cov = (await gate.http.get(f"/api/v1/jobs/{job}/coverage?run=2", headers=gate.admin)).json()
    assert [w["date_from"] for w in cov["windows"]] == [
        (today - timedelta(days=k)).isoformat() for k in range(4, -1, -1)
    ]


async def test_a_window_follows_its_task_to_a_gap(gate: Gate) -> None:
    """A window's task leased, failed for good, or cancelled: its window searching, then a gap
    named with the task's last error; a cancelled job's windows are gaps too, never complete."""
    await put(gate, "reg", PROFILE)
    r = await create(gate, partition={"dates": DAYS | {"every": "month"}}, max_attempts=1)
    job = r.json()["job_id"]
    client = await gate.register()
    task = await lease_window(gate, client)
    states = {
        w["task_id"]: w["state"] for w in await gate.sql("SELECT task_id::text, state FROM harvest_windows")
    }
    assert states[task["task_id"]] == "searching"
    r = await gate.http.post(
        f"/api/v1/tasks/{task['task_id']}/fail",
        headers=client,
        json={"lease_token": task["lease_token"], "error": "results page 3: a block page", "code": "blocked",
              "retryable": False},
    )  # fmt: skip
    assert r.status_code == 200, r.text
    assert (await gate.http.post(f"/api/v1/jobs/{job}/cancel", headers=gate.admin)).status_code == 200
    cov = (await gate.http.get(f"/api/v1/jobs/{job}/coverage", headers=gate.admin)).json()
    assert [g["state"] for g in cov["gaps"]] == ["failed", "cancelled", "cancelled"], cov["gaps"]
    assert cov["gaps"][0]["last_error"] == "results page 3: a block page" and not cov["complete"]
