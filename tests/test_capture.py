"""Capture records: how each document was fetched, recorded with it, in the API and the export.

The origin is Debian's nginx serving static files, the way registries' file servers answer:
nginx sets ETag as "<mtime hex>-<size hex>", Last-Modified from the file's mtime and Date on
every answer (ngx_http_core_module, `etag on` by default; ngx_http_static_module), and the
old paths answer `301` (`return 301`) to the new ones, as a registry that moved its files does.
"""

from __future__ import annotations

import csv
import email.utils
import io
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import markupsafe
import pytest

from cluster import Cluster, Origin
from processes import CLEAN_ENV, REPO, docgate, nginx_serving
from protocol.version import VERSION
from warc_checks import check_warcs

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
MTIME = 1_700_000_000  # 2023-11-14T22:13:20Z, set on every file


@pytest.fixture
def nginx_origin(tmp_path: Path) -> Iterator[tuple[str, int, Path]]:
    root = tmp_path / "www"
    (root / "files").mkdir(parents=True)
    for i in range(1, 6):
        path = root / "files" / f"{i}.pdf"
        path.write_bytes(f"%PDF-1.4 decision {i}\n".encode() * (100 + i))
        os.utime(path, (MTIME, MTIME))
    for path in (tmp_path, root, root / "files", *root.glob("files/*")):
        path.chmod(0o755 if path.is_dir() else 0o644)  # nginx's workers run as nobody
    http = f"""
    log_format agents '$http_user_agent';
    access_log {tmp_path / "access.log"} agents;
    server {{
        listen {{listen}};
        root {root};
        default_type application/pdf;
        location /old/ {{ return 301 /moved$uri; }}
        location /moved/ {{ rewrite ^/moved/old/(.*)$ /files/$1 redirect; }}
        location /files/ {{ }}
    }}
"""
    with nginx_serving(tmp_path, http, "/files/1.pdf") as base:
        yield base, int(base.rsplit(":", 1)[1]), root


@pytest.fixture
def cluster(tmp_path: Path, db_dsn: str) -> Iterator[Cluster]:
    c = Cluster(tmp_path, db_dsn, OPERATOR_CONTACT="mailto:archive@example.org")
    yield c
    c.stop()


def test_capture_records_through_redirects_in_the_api_and_the_export(
    cluster: Cluster, nginx_origin: tuple[str, int, Path], tmp_path: Path
) -> None:
    base, port, root = nginx_origin
    job = cluster.post(
        "/api/v1/jobs",
        {
            "source": "id_range",
            "chunk_size": 5,
            "params": {"url_template": base + "/old/{id}.pdf", "start_id": 1, "count": 5, "ext": ".pdf"},
        },
    )["job_id"]
    started = datetime.now(UTC)
    cluster.client("capture-client", "--exit-when-idle")
    assert cluster.wait_clients() == [0]
    for i in range(1, 6):
        doc = cluster.get(f"/api/v1/documents/{i}")
        body = (root / "files" / f"{i}.pdf").read_bytes()
        assert (cluster.store / doc["storage_key"]).read_bytes() == body
        assert doc["url"] == f"{base}/old/{i}.pdf"
        assert doc["final_url"] == f"{base}/files/{i}.pdf"
        assert doc["redirects"] == [
            {"url": f"{base}/old/{i}.pdf", "status": 301},
            {"url": f"{base}/moved/old/{i}.pdf", "status": 302},
        ]
        assert doc["http_status"] == 200
        # nginx's own formats: ETag "<mtime hex>-<size hex>", Last-Modified the file's mtime.
        assert doc["etag"] == f'"{MTIME:x}-{len(body):x}"'
        assert doc["last_modified"] == email.utils.formatdate(MTIME, usegmt=True)
        assert doc["response_headers"]["etag"] == doc["etag"]
        assert doc["response_headers"]["server"].startswith("nginx")
        assert doc["content_length"] == str(len(body))
        served = email.utils.parsedate_to_datetime(doc["date"])
        assert started - timedelta(seconds=2) <= served <= datetime.now(UTC) + timedelta(seconds=2)
        fetched = datetime.fromisoformat(doc["fetched_at"])
        recorded = datetime.fromisoformat(doc["recorded_at"])
        assert started - timedelta(seconds=2) <= fetched <= recorded + timedelta(seconds=1)
        assert (doc["server_ip"], doc["server_port"]) == ("127.0.0.1", port)
        assert doc["client"] == "capture-client" and doc["client_id"]
        assert doc["client_version"] == VERSION
        assert doc["attempt"] == 1 and doc["task_id"]
    # The export, both formats, from the command line: the same fields for every document.
    lines = export(cluster, job, "jsonl").splitlines()
    rows = [json.loads(line) for line in lines]
    table = list(csv.DictReader(io.StringIO(export(cluster, job, "csv"))))
    assert [r["doc_id"] for r in rows] == [r["doc_id"] for r in table] == ["1", "2", "3", "4", "5"]
    for row, line in zip(rows, table, strict=True):
        doc = cluster.get(f"/api/v1/documents/{row['doc_id']}")
        for field in ("storage_key", "sha256", "url", "final_url", "etag", "last_modified", "server_ip",
                      "client", "client_version"):  # fmt: skip
            assert row[field] == doc[field] == line[field], field
        assert row["size"] == doc["size"] and line["size"] == str(doc["size"])
        assert row["http_status"] == 200 and line["http_status"] == "200"
        for field in ("fetched_at", "recorded_at"):
            assert datetime.fromisoformat(row[field]) == datetime.fromisoformat(doc[field])
    # The dashboard's document view shows the same capture.
    with httpx.Client(base_url=cluster.url) as ui:
        assert ui.post("/ui/login", data={"api_key": cluster.admin["X-API-Key"]}).status_code == 303
        page = ui.get("/ui?document=3").text
        doc = cluster.get("/api/v1/documents/3")
        for shown in (doc["final_url"], doc["etag"], doc["last_modified"], f"127.0.0.1:{port}", "301 "):
            assert str(markupsafe.escape(shown)) in page, shown
        assert "not a document id" in ui.get("/ui?document=../x").text
    # The API's pages agree with the export.
    page = cluster.get(f"/api/v1/jobs/{job}/documents?limit=2")
    assert [d["doc_id"] for d in page["documents"]] == ["1", "2"] and page["next_cursor"] == "2"
    rest = cluster.get(f"/api/v1/jobs/{job}/documents?limit=5&cursor=2")
    assert [d["doc_id"] for d in rest["documents"]] == ["3", "4", "5"] and rest["next_cursor"] is None


def test_the_user_agent_names_the_operator_and_a_client_may_set_its_own(
    cluster: Cluster, nginx_origin: tuple[str, int, Path], tmp_path: Path
) -> None:
    base, _, _ = nginx_origin
    log = tmp_path / "access.log"
    assert agents_of_a_run(cluster, base, log, "a", []) == {
        f"docgate/{VERSION} (+mailto:archive@example.org)"
    }
    own = "registry-archive/2 (+https://example.org/contact)"
    assert agents_of_a_run(cluster, base, log, "b", ["--user-agent", own]) == {own}


def agents_of_a_run(cluster: Cluster, base: str, log: Path, collection: str, flags: list[str]) -> set[str]:
    """The User-Agent of every request one client run sent the origin (nginx's access log)."""
    seen = len(log.read_text().splitlines())
    cluster.post(
        "/api/v1/jobs",
        {
            "source": "id_range",
            "chunk_size": 5,
            "params": {"url_template": base + "/files/{id}.pdf", "start_id": 1, "count": 5, "ext": ".pdf"},
            "collection": collection,
        },
    )
    cluster.client(f"agent-{collection}", "--exit-when-idle", *flags)
    assert all(code == 0 for code in cluster.wait_clients())
    assert cluster.sql(f"SELECT count(*) FROM documents WHERE collection = '{collection}'")[0][0] == 5
    lines = log.read_text().splitlines()[seen:]
    assert len(lines) == 5
    return set(lines)


def export(cluster: Cluster, job: str, fmt: str) -> str:
    out = subprocess.run(
        docgate("export", job, "--format", fmt),
        cwd=REPO,
        env=CLEAN_ENV | {"DATABASE_URL": cluster.dsn},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "5 documents exported" in out.stderr
    return out.stdout


def test_warc_files_pass_warcio_and_hold_every_document(
    cluster: Cluster, nginx_origin: tuple[str, int, Path]
) -> None:
    base, _, _ = nginx_origin
    job = cluster.post(
        "/api/v1/jobs",
        {
            "source": "id_range",
            "chunk_size": 5,
            "params": {"url_template": base + "/old/{id}.pdf", "start_id": 1, "count": 5, "ext": ".pdf"},
        },
    )["job_id"]
    cluster.client("warc-client", "--exit-when-idle", "--warc")
    assert cluster.wait_clients() == [0]
    responses = check_warcs(cluster)
    assert sorted(responses) == ["1", "2", "3", "4", "5"]
    for doc_id, response in responses.items():
        doc = cluster.get(f"/api/v1/documents/{doc_id}")
        assert response == {"ip": "127.0.0.1", "payload_digest": response["payload_digest"], "status": "200",
                            "etag": doc["etag"]}  # fmt: skip
    (warc,) = cluster.sql("SELECT storage_key FROM warc_files")
    from warcio.archiveiterator import ArchiveIterator

    with (cluster.store / warc[0]).open("rb") as f:
        info = next(iter(ArchiveIterator(f)))
        fields = info.content_stream().read().decode()
    assert f"software: docgate/{VERSION}" in fields and "operator: mailto:archive@example.org" in fields
    # The job's CDXJ index (cdxj-indexer, sorted): a line per response, naming its WARC by key.
    out = subprocess.run(
        docgate("warc", "index", job), cwd=REPO, env=CLEAN_ENV | {"DATABASE_URL": cluster.dsn,
        "STORAGE_URL": str(cluster.store)}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    lines = [line.split(" ", 2) for line in out.stdout.splitlines()]
    assert [key for key, _, _ in lines] == sorted(key for key, _, _ in lines)
    entries = {
        json.loads(fields)["url"]: json.loads(fields) for _, _, fields in lines if '"status"' in fields
    }
    for doc_id in responses:
        doc = cluster.get(f"/api/v1/documents/{doc_id}")
        entry = entries[doc["final_url"]]
        assert entry["status"] == "200" and entry["filename"] == warc[0], entry
        assert entry["digest"] == responses[doc_id]["payload_digest"], entry
        # The redirects followed are in the index too, as nginx answered them: a replay of the
        # URL asked for finds its 301, then the 302, then the document.
        assert [entries[r["url"]]["status"] for r in doc["redirects"]] == ["301", "302"]
        assert doc["redirects"][0]["url"] == doc["url"]


def test_a_client_killed_mid_task_leaves_no_incomplete_warc_recorded(tmp_path: Path, db_dsn: str) -> None:
    cluster = Cluster(tmp_path, db_dsn, LEASE_SECONDS="3")  # the killed client's leases run out soon
    origin = Origin(tmp_path, "--size", "3000", "--latency", "0.03")
    try:
        cluster.job(origin, 1, 240, chunk_size=120)
        proc = cluster.client("doomed", "--warc", "--concurrency", "4", "--max-tasks", "2")
        deadline = time.monotonic() + 60
        while cluster.sql("SELECT count(*) FROM warc_files")[0][0] == 0:  # mid-task, a WARC recorded
            assert time.monotonic() < deadline, "no WARC was recorded"
            time.sleep(0.1)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
        check_warcs(cluster)  # what was recorded before the kill is whole
        assert cluster.sql("SELECT count(*) FROM documents WHERE http_status IS NULL")[0][0] == 0
        cluster.client("finisher", "--warc", "--exit-when-idle")
        assert cluster.wait_clients(timeout=240)[-1] == 0
    finally:
        origin.stop()
        cluster.stop()
    check_warcs(cluster)
    rows = cluster.sql("SELECT count(*), count(*) FILTER (WHERE http_status IS NULL) FROM documents")
    assert rows[0][0] == 240 and rows[0][1] == 0  # every document recorded with its capture
