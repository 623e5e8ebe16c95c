"""Documents at the gate: recorded only through fenced writes, with the right key; served raw; refetched."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import Gate, gate_settings, make_bucket, start_gate
from storage import PutOptions, Storage, open_storage
from storage.base import from_bytes
from storage.keys import document_key


async def lease_job(
    gate: Gate, client: dict[str, str], start_id: int, count: int, **extra: Any
) -> dict[str, Any]:
    r = await gate.http.post(
        "/api/v1/jobs",
        headers=gate.admin,
        json={
            "source": "id_range",
            "chunk_size": count,
            **extra,
            "params": {
                "url_template": "http://origin/{id}",
                "start_id": start_id,
                "count": count,
                "ext": ".tzb",
            },
        },
    )
    assert r.status_code == 201, r.text
    return (await gate.lease(client)).json()  # type: ignore[no-any-return]


def report(doc_id: int, data: bytes, key: str | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "doc_id": doc_id,
        "storage_key": key or document_key(doc_id, ".tzb"),
        "sha256": hashlib.sha256(data).hexdigest(),
        "size": len(data),
        **extra,
    }


async def complete(
    gate: Gate, client: dict[str, str], task: dict[str, Any], documents: list[dict[str, Any]]
) -> httpx.Response:
    """Complete a leased task with these document reports."""
    return await gate.http.post(
        "/api/v1/tasks/complete",
        headers=client,
        json={"task_id": task["task_id"], "lease_token": task["lease_token"], "documents": documents},
    )


async def test_completion_records_documents_and_failures(gate: Gate) -> None:
    client = await gate.register()
    task = await lease_job(gate, client, 49_999, 3)
    r = await gate.http.post(
        f"/api/v1/tasks/{task['task_id']}/progress",
        headers=client,
        json={
            "lease_token": task["lease_token"],
            "documents_downloaded": 1,
            "documents": [report(49_999, b"a", content_type="application/octet-stream")],
        },
    )
    assert r.status_code == 200, r.text
    r = await gate.http.post(
        "/api/v1/tasks/complete",
        headers=client,
        json={
            "task_id": task["task_id"],
            "lease_token": task["lease_token"],
            "documents_downloaded": 2,
            "documents_failed": 1,
            "documents": [
                report(50_000, b"bb"),
                {"doc_id": 50_001, "status": "failed", "error": "HTTP 404", "url": "http://origin/50001"},
            ],
        },
    )
    assert r.status_code == 200, r.text
    r = await gate.http.get("/api/v1/documents/50000", headers=gate.admin)
    doc = r.json()
    assert doc["storage_key"] == "1/50000.tzb" and doc["size"] == 2
    assert doc["storage_url"].endswith("/1/50000.tzb") and doc["task_id"] == task["task_id"]
    assert doc["client"] == "client-1"
    r = await gate.http.get("/api/v1/documents/49999", headers=gate.admin)
    assert r.json()["storage_key"] == "0/49999.tzb"
    (failure,) = await gate.sql("SELECT doc_id, error FROM document_failures")
    assert (failure["doc_id"], failure["error"]) == ("50001", "HTTP 404")
    r = await gate.http.post(
        "/api/v1/documents/known", headers=client, json={"doc_ids": [49_999, 50_000, 50_001, "x"]}
    )
    assert sorted(r.json()["known"]) == ["49999", "50000"]


@pytest.mark.parametrize(
    ("key", "compressed"),
    [
        ("/tmp/tmpd582cooc.tzb", False),  # the seed's bug: a temp path recorded as the key
        ("73/3697692.tzb", False),  # another document's key
        ("0/7.tzb", False),  # wrong shard for 3697692
        ("73/3697692.tzb.gz", False),  # .gz without compressed
        ("73/3697692.tzb", True),  # compressed without .gz
        ("73/../3697692.tzb", False),
        ("73/3697692.tzb/../../x", False),
    ],
)
async def test_wrong_keys_are_refused_and_nothing_is_recorded(gate: Gate, key: str, compressed: bool) -> None:
    client = await gate.register()
    task = await lease_job(gate, client, 3_697_692, 1)
    doc_id = 3_697_692 if key != "73/3697692.tzb" else 3_697_693
    r = await gate.http.post(
        "/api/v1/tasks/complete",
        headers=client,
        json={
            "task_id": task["task_id"],
            "lease_token": task["lease_token"],
            "documents": [report(doc_id, b"x", key=key, compressed=compressed)],
        },
    )
    assert r.status_code == 422, r.text
    assert "storage_key" in r.text
    assert await gate.sql("SELECT * FROM documents") == []
    (row,) = await gate.sql("SELECT status FROM tasks")
    assert row["status"] == "assigned"


async def test_a_stale_completion_records_no_document(gate: Gate) -> None:
    old, new = await gate.register("old"), await gate.register("new")
    first = await lease_job(gate, old, 10, 1)
    await gate.sql("UPDATE tasks SET lease_expires_at = now() - interval '1 second'")
    await gate.lease(new, wait=10)
    r = await gate.http.post(
        "/api/v1/tasks/complete",
        headers=old,
        json={
            "task_id": first["task_id"],
            "lease_token": first["lease_token"],
            "documents": [report(10, b"z")],
        },
    )
    assert r.status_code == 409
    assert await gate.sql("SELECT * FROM documents") == []


async def put_and_record(gate: Gate, store: Storage, doc_id: int, data: bytes, **options: Any) -> None:
    client = await gate.register(f"c{doc_id}")
    task = await lease_job(gate, client, doc_id, 1)
    compressed = bool(options.get("compress"))
    key = document_key(doc_id, ".tzb", compressed=compressed)
    stored = await store.put(key, from_bytes(data), PutOptions(content_type="application/x-tzb", **options))
    r = await gate.http.post(
        "/api/v1/tasks/complete",
        headers=client,
        json={
            "task_id": task["task_id"],
            "lease_token": task["lease_token"],
            "documents": [
                {
                    "doc_id": doc_id,
                    "storage_key": stored.storage_key,
                    "sha256": stored.sha256,
                    "size": stored.size,
                    "content_type": "application/x-tzb",
                    "compressed": compressed,
                }
            ],
        },
    )
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("backend", ["local", "s3"])
async def test_raw_streams_the_exact_bytes(
    db_dsn: str,
    tmp_path: Path,
    backend: str,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if backend == "s3":
        endpoint = request.getfixturevalue("s3_endpoint")
        monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
        url = f"s3://{make_bucket(endpoint)}/raw"
    else:
        url = str(tmp_path / "store")
    big = bytes(range(256)) * 20_000
    async for gate in start_gate(db_dsn, gate_settings(storage_url=url)):
        store = open_storage(url)
        await put_and_record(gate, store, 3_697_692, big)
        await put_and_record(gate, store, 3_697_693, b"text " * 1000, compress=True)
        r = await gate.http.get("/api/v1/documents/3697692/raw", headers=gate.admin)
        assert r.status_code == 200 and r.content == big
        assert r.headers["content-type"] == "application/x-tzb"
        assert r.headers["content-length"] == str(len(big))
        r = await gate.http.get("/api/v1/documents/3697693/raw", headers=gate.admin)
        assert r.content == b"text " * 1000 and r.headers["content-encoding"] == "gzip"
        doc = (await gate.http.get("/api/v1/documents/3697692", headers=gate.admin)).json()
        assert doc["storage_url"] == f"{store.url}/73/3697692.tzb"
        await store.delete("73/3697692.tzb")
        r = await gate.http.get("/api/v1/documents/3697692/raw", headers=gate.admin)
        assert r.status_code == 404 and "missing from storage" in r.json()["detail"]
        await store.close()


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/api/v1/documents/..%2F..%2Fetc%2Fpasswd/raw", 404),
        ("/api/v1/documents/a%00b/raw", 422),
        ("/api/v1/documents/" + "9" * 200 + "/raw", 422),
        ("/api/v1/documents/has space", 422),
        ("/api/v1/documents/424242", 404),
        ("/api/v1/storage/objects/..%2F..%2Fetc%2Fpasswd", 422),
        ("/api/v1/storage/objects/73/../../x", 404),
    ],
)
async def test_malformed_document_ids_get_4xx(gate: Gate, path: str, status: int) -> None:
    r = await gate.http.get(path, headers=gate.admin)
    assert r.status_code == status, r.text


async def test_only_missing_and_refetch_failed(gate: Gate) -> None:
    client = await gate.register()
    task = await lease_job(gate, client, 100, 10)
    r = await gate.http.post(
        "/api/v1/tasks/complete",
        headers=client,
        json={
            "task_id": task["task_id"],
            "lease_token": task["lease_token"],
            "documents": [report(i, b"d") for i in range(100, 107)]
            + [{"doc_id": i, "status": "failed", "error": "HTTP 503"} for i in (107, 108, 109)],
        },
    )
    assert r.status_code == 200, r.text

    r = await gate.http.post(
        "/api/v1/jobs",
        headers=gate.admin,
        json={
            "source": "id_range",
            "chunk_size": 2,
            "only_missing": True,
            "params": {"url_template": "http://origin/{id}", "start_id": 95, "count": 15, "ext": ".tzb"},
        },
    )
    assert r.json()["tasks_created"] == 4  # 95..99 and 107..109: 8 ids in chunks of 2
    rows = await gate.sql("SELECT params FROM tasks WHERE job_id = $1 ORDER BY task_seq", r.json()["job_id"])
    assert [json.loads(p[0])["ids"] for p in rows] == [[95, 96], [97, 98], [99, 107], [108, 109]]

    r = await gate.http.post(
        f"/api/v1/jobs/{task['job_id']}/refetch-failed", headers=gate.admin, json={"chunk_size": 2}
    )
    assert r.json()["tasks_created"] == 2
    rows = await gate.sql(
        "SELECT params FROM tasks WHERE job_id = $1 AND status = 'pending' ORDER BY task_seq", task["job_id"]
    )
    assert [json.loads(p[0])["ids"] for p in rows] == [["107", "108"], ["109"]]
    job = (await gate.http.get(f"/api/v1/jobs/{task['job_id']}", headers=gate.admin)).json()
    assert job["tasks_total"] == 3


async def test_refetch_failed_from_the_command_line(gate: Gate) -> None:
    import subprocess

    from processes import CLEAN_ENV, REPO, docgate

    client = await gate.register()
    task = await lease_job(gate, client, 500, 2)
    await gate.http.post(
        "/api/v1/tasks/complete",
        headers=client,
        json={
            "task_id": task["task_id"],
            "lease_token": task["lease_token"],
            "documents": [{"doc_id": 501, "status": "failed", "error": "HTTP 500"}],
        },
    )
    env = CLEAN_ENV | {"DATABASE_URL": gate.dsn}
    ok = subprocess.run(
        docgate("jobs", "refetch-failed", task["job_id"]),
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ok.returncode == 0 and "1 new tasks" in ok.stdout, ok.stderr
    bad = subprocess.run(
        docgate("jobs", "refetch-failed", "not-a-job"),
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and "uuid" in bad.stderr


async def test_a_shard_folder_is_not_an_object(gate: Gate) -> None:
    """Regression (found by schemathesis): keys naming a folder gave 500 and 503."""
    await gate.http.put("/api/v1/documents/7/raw", headers=gate.admin, content=b"seven")
    for method in ("GET", "HEAD"):
        r = await gate.http.request(method, "/api/v1/storage/objects/0", headers=gate.admin)
        assert r.status_code == 404, (method, r.text)
    r = await gate.http.delete("/api/v1/storage/objects/0", headers=gate.admin)
    assert r.status_code == 204
    r = await gate.http.get("/api/v1/storage/objects/0/7", headers=gate.admin)
    assert r.content == b"seven"


async def test_an_upload_cut_short_stores_nothing(gate: Gate) -> None:
    """Regression (found by schemathesis): a client that stops mid-body caused a logged 500."""

    async def half() -> Any:
        yield b"first half"
        raise ConnectionError("uploader went away")

    with pytest.raises(ConnectionError):
        await gate.http.put("/api/v1/documents/8/raw", headers=gate.admin, content=half())
    r = await gate.http.get("/api/v1/storage/objects", headers=gate.admin)
    assert r.json()["objects"] == []


async def test_a_jobs_expected_content_type_reaches_every_task(gate: Gate) -> None:
    """`params.expect_content_type` of a job is what each of its tasks carries, chunked, only_missing
    or refetched (the client's 200-is-not-the-document check reads it from the task)."""
    expect = ["application/pdf", "image/*"]
    params = {"url_template": "http://origin/{id}", "start_id": 1, "count": 5, "ext": ".pdf"}
    created = []
    for only_missing in (False, True):
        body = {"source": "id_range", "chunk_size": 2, "only_missing": only_missing}
        r = await gate.http.post(
            "/api/v1/jobs",
            headers=gate.admin,
            json=body | {"params": params | {"expect_content_type": expect}},
        )
        assert r.status_code == 201, r.text
        created.append(r.json()["job_id"])
    plain = await gate.http.post(
        "/api/v1/jobs", headers=gate.admin, json={"source": "id_range", "params": params}
    )
    rows = await gate.sql("SELECT job_id, params FROM tasks")
    carried = [json.loads(p)["expect_content_type"] for j, p in rows if str(j) in created]
    assert carried == [expect] * 6
    assert all(
        "expect_content_type" not in json.loads(p) for j, p in rows if str(j) == plain.json()["job_id"]
    )

    client = await gate.register()
    task = (await gate.lease(client)).json()
    failed = [{"doc_id": i, "status": "failed", "error": "HTTP 503"} for i in (1, 2)]
    done = {"task_id": task["task_id"], "lease_token": task["lease_token"], "documents": failed}
    assert (await gate.http.post("/api/v1/tasks/complete", headers=client, json=done)).status_code == 200
    r = await gate.http.post(f"/api/v1/jobs/{task['job_id']}/refetch-failed", headers=gate.admin, json={})
    assert r.json()["tasks_created"] == 1
    (again,) = await gate.sql("SELECT params FROM tasks ORDER BY task_seq DESC LIMIT 1")
    assert json.loads(again[0])["expect_content_type"] == expect


async def test_a_search_task_with_every_param_is_accepted(gate: Gate) -> None:
    params = {
        "listing_url": "https://registry.example/search?page={page}",
        "link_pattern": r'href="(?P<url>/doc/(?P<id>\d+)(?P<ext>\.pdf))"',
        "document_hosts": ["files.example.net", "*.cdn.example"],
        "expect_content_type": ["application/pdf"],
    }
    r = await gate.http.post("/api/v1/tasks/create", headers=gate.admin, json={"params": params})
    assert r.status_code == 201, r.text
    assert r.json()["params"] == params
