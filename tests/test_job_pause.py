"""Pausing a job: `POST /api/v1/jobs/{id}/pause|resume`, `docgate jobs pause|resume`, and what
leasing does meanwhile, against a real gate on PostgreSQL."""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

import pytest

from conftest import Gate

JOB = {
    "source": "id_range",
    "chunk_size": 10,
    "params": {"url_template": "http://registry.example/doc/{id}.pdf", "start_id": 1, "count": 50},
}


async def test_a_paused_job_leases_nothing_until_resumed(gate: Gate) -> None:
    client = await gate.register()
    job_id = (await gate.http.post("/api/v1/jobs", headers=gate.admin, json=JOB)).json()["job_id"]
    other = await gate.create(source="urls", params={"urls": [{"doc_id": "x1", "url": "http://o.example/1"}]})

    r = await gate.http.post(
        f"/api/v1/jobs/{job_id}/pause", headers=gate.admin, json={"reason": "registry upgrade"}
    )
    assert r.status_code == 200, r.text
    job = r.json()
    assert job["paused"] and job["paused_reason"] == "registry upgrade" and job["paused_at"]
    assert job["counts"]["pending"] == 5  # still pending to the outside
    held = await gate.sql(
        "SELECT count(*) AS n FROM tasks WHERE job_id = $1 AND run_after = 'infinity'", uuid.UUID(job_id)
    )
    assert held[0]["n"] == 5

    leased = await gate.lease(client, max_tasks=10)
    assert leased.status_code == 200 and [t["task_id"] for t in leased.json()["tasks"]] == [other["task_id"]]
    # A task that comes back pending while its job is paused (an expired lease, a retry) is
    # passed over by the lease itself, before housekeeping holds it too.
    await gate.sql(
        "UPDATE tasks SET run_after = now() "
        "WHERE task_seq = (SELECT min(task_seq) FROM tasks WHERE job_id = $1)",
        uuid.UUID(job_id),
    )
    assert (await gate.lease(client, max_tasks=10, wait=0)).status_code == 204

    r = await gate.http.post(f"/api/v1/jobs/{job_id}/resume", headers=gate.admin)
    assert r.status_code == 200 and not r.json()["paused"] and r.json()["paused_reason"] is None
    leased = await gate.lease(client, max_tasks=10)
    assert len(leased.json()["tasks"]) == 5


@pytest.mark.parametrize("verb", ["pause", "resume", "failures"])
async def test_job_verbs_on_no_job_answer_404_and_clients_are_refused(gate: Gate, verb: str) -> None:
    missing = uuid.uuid4()
    method = gate.http.get if verb == "failures" else gate.http.post
    r = await method(f"/api/v1/jobs/{missing}/{verb}", headers=gate.admin)
    assert (r.status_code, r.json()["code"]) == (404, "job_not_found")
    job_id = (await gate.http.post("/api/v1/jobs", headers=gate.admin, json=JOB)).json()["job_id"]
    client = await gate.register()
    r = await method(f"/api/v1/jobs/{job_id}/{verb}", headers=client)
    assert (r.status_code, r.json()["code"]) == (403, "forbidden")
    if verb == "pause":
        bad = await gate.http.post(f"/api/v1/jobs/{job_id}/pause", headers=gate.admin, json={"reason": ""})
        assert (bad.status_code, bad.json()["code"]) == (422, "invalid_field")
        job = (await gate.http.get(f"/api/v1/jobs/{job_id}", headers=gate.admin)).json()
        assert not job["paused"]  # a refused request changes nothing


def test_the_jobs_pause_and_resume_commands(tmp_path: Path, db_dsn: str) -> None:
    import asyncpg

    from conftest import run_aside
    from processes import CLEAN_ENV, REPO, docgate

    env = CLEAN_ENV | {"DATABASE_URL": db_dsn}

    async def make_job() -> uuid.UUID:
        conn = await asyncpg.connect(db_dsn)
        try:
            from server.db.migrate import migrate

            await migrate(conn)
            return await conn.fetchval(  # type: ignore[no-any-return]
                "INSERT INTO jobs (source, params, chunk_size, priority, tasks_total) "
                "VALUES ('id_range', '{}', 10, 0, 0) RETURNING job_id"
            )
        finally:
            await conn.close()

    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            docgate("jobs", *argv), env=env, cwd=REPO, capture_output=True, text=True, timeout=60
        )

    job_id = str(run_aside(make_job()))
    paused = run("pause", job_id, "--reason", "night window")
    assert paused.returncode == 0 and "paused" in paused.stdout, paused.stderr
    assert run("resume", job_id).returncode == 0
    for argv, message in (
        (("pause", "not-a-uuid"), "is not a uuid"),
        (("resume", str(uuid.uuid4())), "not found"),
    ):
        bad = run(*argv)
        assert bad.returncode != 0 and message in bad.stderr and "Traceback" not in bad.stderr, bad.stderr
        assert len(bad.stderr.strip().splitlines()) == 1
