"""Revisits and versions, against Debian's nginx serving a registry's files.

nginx answers a static file with its own validators — `ETag: "<mtime hex>-<size hex>"` and
`Last-Modified` from the file's mtime (ngx_http_core_module `etag on`; ngx_http_static_module) —
and a conditional GET whose If-None-Match names the current ETag with `304 Not Modified` and
no body (ngx_http_not_modified_filter_module); a file replaced (new bytes, new mtime) answers
200 with a new ETag; a file removed answers 404. A file touched (same bytes, new mtime) answers
200 with a new ETag and the same bytes: the revisit must see that nothing changed.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from cluster import Cluster
from processes import CLEAN_ENV, REPO, docgate, nginx_serving
from warc_checks import check_warcs

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
MTIME = 1_700_000_000
COUNT = 40  # 2 of them change: 5 %


def body(i: int, edition: int = 1) -> bytes:
    return f"%PDF-1.4 decision {i}, edition {edition}\n".encode() * (50 + i)


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[tuple[str, Path, Path]]:
    root = tmp_path / "www"
    (root / "files").mkdir(parents=True)
    for i in range(1, COUNT + 1):
        path = root / "files" / f"{i}.pdf"
        path.write_bytes(body(i))
        os.utime(path, (MTIME, MTIME))
    for path in (tmp_path, root, root / "files", *root.glob("files/*")):
        path.chmod(0o755 if path.is_dir() else 0o644)  # nginx's workers run as nobody
    log = tmp_path / "access.log"
    http = f"""
    log_format conditional escape=none '$status $uri $http_if_none_match';
    access_log {log} conditional;
    server {{
        listen {{listen}};
        root {root};
        default_type application/pdf;
        location /files/ {{ }}
    }}
"""
    with nginx_serving(tmp_path, http, "/files/1.pdf") as base:
        yield base, root / "files", log


def params(base: str) -> dict[str, object]:
    return {"url_template": base + "/files/{id}.pdf", "start_id": 1, "count": COUNT, "ext": ".pdf"}


def run_client(cluster: Cluster) -> None:
    cluster.client("archivist", "--exit-when-idle")
    assert cluster.wait_clients()[-1] == 0


def statuses(log: Path) -> list[tuple[str, str, str]]:
    return [tuple((line.split(" ", 2) + ["", ""])[:3]) for line in log.read_text().splitlines()]  # type: ignore[misc]


def test_a_revisit_stores_exactly_what_changed_as_new_versions(
    tmp_path: Path, db_dsn: str, registry: tuple[str, Path, Path]
) -> None:
    base, files, log = registry
    cluster = Cluster(tmp_path, db_dsn)
    env = CLEAN_ENV | {"DATABASE_URL": cluster.dsn, "STORAGE_URL": str(cluster.store)}
    try:
        job = cluster.post("/api/v1/jobs", {
            "source": "id_range", "chunk_size": 10, "warc": True,
            "params": params(base),
        })["job_id"]  # fmt: skip
        run_client(cluster)
        first = {str(i): cluster.get(f"/api/v1/documents/{i}") for i in range(1, COUNT + 1)}
        assert all(d["version"] == 1 and d["etag"] for d in first.values())

        # The registry: two decisions corrected, one touched (same bytes), one withdrawn.
        for i in (7, 23):
            (files / f"{i}.pdf").write_bytes(body(i, edition=2))
            os.utime(files / f"{i}.pdf", (MTIME + 3600, MTIME + 3600))
        os.utime(files / "3.pdf", (MTIME + 7200, MTIME + 7200))
        (files / f"{COUNT}.pdf").unlink()
        log.write_text("")

        queued = subprocess.run(docgate("revisit", job), cwd=REPO, env=env, capture_output=True, text=True,
                                timeout=120)  # fmt: skip
        assert queued.returncode == 0, queued.stderr
        assert f"{COUNT} documents to revisit, in 4 tasks" in queued.stdout, queued.stdout
        run_client(cluster)
        after = {str(i): cluster.get(f"/api/v1/documents/{i}") for i in range(1, COUNT + 1)}
        versions = {i: cluster.get(f"/api/v1/documents/{i}/versions") for i in ("7", "23", "3")}
        raw = {i: httpx.get(f"{cluster.url}/api/v1/documents/{i}/raw", headers=cluster.admin, timeout=30)
               for i in ("7", "23", str(COUNT))}  # fmt: skip
        old = httpx.get(f"{cluster.url}/api/v1/documents/7/raw?version=1", headers=cluster.admin, timeout=30)
        missing = httpx.get(
            f"{cluster.url}/api/v1/documents/7/raw?version=3", headers=cluster.admin, timeout=30
        )
        served = statuses(log)
        check_warcs(cluster)
        revisit_records = warc_types(cluster)

        # The control: a second revisit with nothing changed makes no version.
        log.write_text("")
        cluster.post(f"/api/v1/jobs/{job}/revisit")
        run_client(cluster)
        again = {str(i): cluster.get(f"/api/v1/documents/{i}") for i in range(1, COUNT + 1)}
        served_again = statuses(log)
    finally:
        cluster.stop()

    changed = {i for i, d in after.items() if d["version"] > 1}
    assert changed == {"7", "23"}  # exactly those, each once
    for i in ("7", "23"):
        new, was = after[i], first[i]
        assert new["version"] == 2 and new["sha256"] == hashlib.sha256(body(int(i), 2)).hexdigest()
        assert new["storage_key"] == f"0/{i}.pdf.v2/{i}.pdf" and was["storage_key"] == f"0/{i}.pdf"
        assert (cluster.store / was["storage_key"]).read_bytes() == body(int(i))  # the first kept, whole
        assert (cluster.store / new["storage_key"]).read_bytes() == body(int(i), 2)
        assert raw[i].content == body(int(i), 2)
        listed = versions[i]["versions"]
        assert [(v["version"], v["current"], v["sha256"]) for v in listed] == [
            (1, False, was["sha256"]), (2, True, new["sha256"])]  # fmt: skip
        assert listed[0]["etag"] == was["etag"] and listed[1]["etag"] != was["etag"]
    assert old.status_code == 200 and old.content == body(7)
    assert missing.status_code == 404 and missing.json()["code"] == "document_not_found"
    assert [v["version"] for v in versions["3"]["versions"]] == [1]  # touched, same bytes: unchanged
    assert after["3"]["revisited_at"] and after["3"]["sha256"] == first["3"]["sha256"]
    gone = after[str(COUNT)]
    assert gone["withdrawn_at"] and gone["version"] == 1 and raw[str(COUNT)].content == body(COUNT)
    assert all(after[i]["revisited_at"] for i in after)
    assert all(after[i]["withdrawn_at"] is None for i in after if i != str(COUNT))

    # Every request was conditional, with the recorded ETag; nginx answered 304 to the unchanged.
    assert len(served) == COUNT and all(etag.startswith('"') for _, _, etag in served)
    by_status: dict[str, int] = {}
    for status, _, _ in served:
        by_status[status] = by_status.get(status, 0) + 1
    assert by_status == {"304": COUNT - 4, "200": 3, "404": 1}
    assert revisit_records == {"server-not-modified": COUNT - 4, "identical-payload-digest": 1}

    assert all(again[i]["version"] == after[i]["version"] for i in again)  # control: no version
    assert sum(1 for s, _, _ in served_again if s == "304") == COUNT - 1


def warc_types(cluster: Cluster) -> dict[str, int]:
    """The revisit records the job's WARCs hold, by profile (its last path part)."""
    from warcio.archiveiterator import ArchiveIterator

    found: dict[str, int] = {}
    for (key,) in cluster.sql("SELECT storage_key FROM warc_files"):
        with (cluster.store / key).open("rb") as f:
            for record in ArchiveIterator(f):
                if record.rec_type == "revisit":
                    profile = record.rec_headers.get_header("WARC-Profile").rsplit("/", 1)[-1]
                    found[profile] = found.get(profile, 0) + 1
    return found


def test_a_jobs_revisit_comes_on_its_schedule(
    tmp_path: Path, db_dsn: str, registry: tuple[str, Path, Path]
) -> None:
    """`revisit: {"every": "2s"}`: once the job's documents are recorded, its revisits come on
    their own, one at a time (never two overlapping)."""
    base, _, _ = registry
    cluster = Cluster(tmp_path, db_dsn, REAP_INTERVAL_SECONDS="0.5")
    try:
        job = cluster.post("/api/v1/jobs", {
            "source": "id_range", "chunk_size": 20, "revisit": {"every": "2s"},
            "params": params(base),
        })["job_id"]  # fmt: skip
        described = cluster.get(f"/api/v1/jobs/{job}")
        assert described["revisit"]["every"] == "2s" and described["next_revisit_at"]
        cluster.client("archivist", "--max-tasks", "2")
        deadline = time.monotonic() + 120
        while cluster.sql("SELECT count(*) FROM documents WHERE revisited_at IS NOT NULL")[0][0] < COUNT:
            assert time.monotonic() < deadline, "the scheduled revisit did not come"
            time.sleep(0.5)
        tasks = cluster.sql(
            "SELECT count(*) FILTER (WHERE (params->>'revisit')::boolean), count(*) FROM tasks"
            " WHERE job_id = $1",
            uuid.UUID(job),
        )[0]
    finally:
        cluster.stop()
    assert tasks[0] >= 2 and tasks[1] >= 4  # its first tasks, and at least one revisit's


def test_revisit_refusals(tmp_path: Path, db_dsn: str) -> None:
    """An unknown job is a clear 404, a bad schedule a 422, an unknown document's versions a 404."""
    cluster = Cluster(tmp_path, db_dsn)
    try:
        unknown = httpx.post(f"{cluster.url}/api/v1/jobs/00000000-0000-4000-8000-000000000000/revisit",
                             headers=cluster.admin, timeout=30)  # fmt: skip
        bad = httpx.post(f"{cluster.url}/api/v1/jobs", headers=cluster.admin, timeout=30, json={
            "source": "id_range", "revisit": {"every": "soon"},
            "params": {"url_template": "http://127.0.0.1:9/{id}", "start_id": 1, "count": 1}})  # fmt: skip
        no_doc = httpx.get(f"{cluster.url}/api/v1/documents/nope/versions", headers=cluster.admin, timeout=30)
    finally:
        cluster.stop()
    assert unknown.status_code == 404 and unknown.json()["code"] == "job_not_found"
    assert bad.status_code == 422 and "revisit" in bad.text
    assert no_doc.status_code == 404 and no_doc.json()["code"] == "document_not_found"
