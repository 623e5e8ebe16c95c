"""WARC of the bytes as they came: a content-encoded answer is recorded as the origin sent it.

The origin is Debian's nginx with its gzip modules, the way registries' file servers compress
on the fly: with `gzip on` and a matching `gzip_types`, nginx answers a request that accepts
gzip with `Content-Encoding: gzip` and `Transfer-Encoding: chunked` (no Content-Length: the
length is not known before compressing) and makes a strong ETag weak (ngx_http_gzip_module;
"the ETag is made weak", nginx 1.7.3 changes); with `gzip_static on` it sends a precompressed
`<file>.gz` with its Content-Length (ngx_http_gzip_static_module). Each test's control is the
same file served without compression.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from cluster import Cluster
from processes import nginx_serving
from warc_checks import check_warcs

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


@pytest.fixture
def gzip_origin(tmp_path: Path) -> Iterator[str]:
    root = tmp_path / "www"
    for folder in ("onthefly", "static", "plain"):
        (root / folder).mkdir(parents=True)
    for i in range(1, 7):
        body = f"%PDF-1.4 decision {i}\n".encode() * (200 + i)
        for folder in ("onthefly", "static", "plain"):
            (root / folder / f"{i}.pdf").write_bytes(body)
        (root / "static" / f"{i}.pdf.gz").write_bytes(gzip.compress(body, 9, mtime=0))
    for path in (tmp_path, root, *root.rglob("*")):
        path.chmod(0o755 if path.is_dir() else 0o644)  # nginx's workers run as nobody
    http = f"""
    access_log off;
    server {{
        listen {{listen}};
        root {root};
        default_type application/pdf;
        location /onthefly/ {{ gzip on; gzip_types application/pdf; gzip_min_length 1; }}
        location /static/ {{ gzip_static on; }}
        location /plain/ {{ gzip off; }}
    }}
"""
    with nginx_serving(tmp_path, http, "/plain/1.pdf") as base:
        yield base


def as_sent(url: str) -> tuple[httpx.Headers, bytes]:
    """What the origin sends a client that accepts gzip: headers, and the body undecoded."""
    with httpx.stream("GET", url, headers={"Accept-Encoding": "gzip, deflate"}, timeout=10) as reply:
        assert reply.status_code == 200
        return reply.headers, b"".join(reply.iter_raw())


def responses(cluster: Cluster) -> dict[str, Any]:
    """Each document's response record, read back with warcio: its HTTP headers, the payload as
    recorded (raw) and as a replay shows it decoded (content_stream)."""
    from warcio.archiveiterator import ArchiveIterator

    by_url = {r["final_url"]: r["doc_id"] for r in cluster.sql("SELECT doc_id, final_url FROM documents")}
    found: dict[str, Any] = {}
    for (key,) in cluster.sql("SELECT storage_key FROM warc_files"):
        with (cluster.store / key).open("rb") as f:
            for record in ArchiveIterator(f):
                if record.rec_type == "response":
                    uri = record.rec_headers.get_header("WARC-Target-URI")
                    found[by_url[uri]] = {
                        "headers": record.http_headers,
                        "digest": record.rec_headers.get_header("WARC-Payload-Digest"),
                        "raw": record.raw_stream.read(),
                    }
        with (cluster.store / key).open("rb") as f:
            for record in ArchiveIterator(f):
                if record.rec_type == "response":
                    doc_id = by_url[record.rec_headers.get_header("WARC-Target-URI")]
                    found[doc_id]["replayed"] = record.content_stream().read()
    return found


def b32(hexdigest: str) -> str:
    return "sha256:" + base64.b32encode(bytes.fromhex(hexdigest)).decode()


def job(cluster: Cluster, url_template: str, count: int, **settings: Any) -> str:
    body = {
        "source": "id_range",
        "chunk_size": 3,
        "params": {"url_template": url_template, "start_id": 1, "count": count, "ext": ".pdf"},
    } | settings
    return str(cluster.post("/api/v1/jobs", body)["job_id"])


@pytest.mark.parametrize("storage", ["local", "gate"])
def test_a_gzip_answer_is_recorded_as_sent_and_stored_decoded(
    tmp_path: Path, db_dsn: str, gzip_origin: str, storage: str
) -> None:
    """A job with `"warc": true` (no client flag): the WARC holds nginx's gzip bytes under its
    own headers, a replay decodes them to the stored document, both digests are recorded; the
    same through `--storage gate`, whose WARCs the gate stores under the task's lease."""
    cluster = Cluster(tmp_path, db_dsn)
    try:
        job(cluster, gzip_origin + "/onthefly/{id}.pdf", 3, warc=True)
        job(cluster, gzip_origin + "/static/{id}.pdf", 3, params={
            "url_template": gzip_origin + "/static/{id}.pdf", "start_id": 4, "count": 3, "ext": ".pdf",
            "warc": True})  # fmt: skip
        own = tmp_path / "client-own"  # the client's own folder: nothing goes there through the gate
        flags = ["--storage", "gate", "--output-dir", str(own)] if storage == "gate" else []
        cluster.client("archivist", "--exit-when-idle", *flags)
        assert cluster.wait_clients() == [0]
        check_warcs(cluster)
        records = responses(cluster)
        docs = {d: cluster.get(f"/api/v1/documents/{d}") for d in records}
        warcs = cluster.sql("SELECT storage_key, storage_url FROM warc_files")
    finally:
        cluster.stop()
    assert sorted(records) == ["1", "2", "3", "4", "5", "6"]
    for doc_id, record in records.items():
        folder = "onthefly" if int(doc_id) <= 3 else "static"
        headers, sent = as_sent(f"{gzip_origin}/{folder}/{doc_id}.pdf")
        assert headers["content-encoding"] == "gzip" and sent[:2] == b"\x1f\x8b"
        doc = docs[doc_id]
        stored = (cluster.store / doc["storage_key"]).read_bytes()
        assert stored == gzip.decompress(sent)  # the document is the decoded body
        assert record["raw"] == sent  # the WARC's payload is the body the origin sent
        assert record["replayed"] == stored  # a replay shows it decoded, with its encoding kept
        assert record["headers"].get_header("Content-Encoding") == "gzip"
        assert doc["sha256"] == hashlib.sha256(stored).hexdigest()
        assert doc["transfer_sha256"] == hashlib.sha256(sent).hexdigest() != doc["sha256"]
        assert doc["transfer_size"] == len(sent) and doc["size"] == len(stored)
        assert record["digest"] == b32(doc["transfer_sha256"])
        if folder == "onthefly":  # nginx compressed it on the fly: chunked, weak ETag
            assert headers.get("transfer-encoding") == "chunked" and "content-length" not in headers
            assert record["headers"].get_header("Transfer-Encoding") is None  # the chunking is undone
            assert record["headers"].get_header("ETag", "").startswith('W/"')
        else:  # gzip_static: the .gz file as it is, with its length
            assert record["headers"].get_header("Content-Length") == str(len(sent))
    assert warcs and all((cluster.store / key).is_file() for key, _ in warcs)
    if storage == "gate":  # stored by the gate, in its store: the client's own folder holds none
        assert not list(own.rglob("*.warc.gz"))


def test_a_plain_answer_is_its_own_payload(tmp_path: Path, db_dsn: str, gzip_origin: str) -> None:
    """The control: the same files sent as they are. The payload digest is the document's sha256
    and nothing more is recorded."""
    cluster = Cluster(tmp_path, db_dsn)
    try:
        job(cluster, gzip_origin + "/plain/{id}.pdf", 3, warc=True)
        cluster.client("archivist", "--exit-when-idle")
        assert cluster.wait_clients() == [0]
        check_warcs(cluster)
        records = responses(cluster)
        docs = {d: cluster.get(f"/api/v1/documents/{d}") for d in records}
    finally:
        cluster.stop()
    assert sorted(records) == ["1", "2", "3"]
    for doc_id, record in records.items():
        doc = docs[doc_id]
        stored = (cluster.store / doc["storage_key"]).read_bytes()
        assert record["raw"] == stored == record["replayed"]
        assert record["headers"].get_header("Content-Encoding") is None
        assert doc["transfer_sha256"] is None and doc["transfer_size"] is None
        assert record["digest"] == b32(doc["sha256"])


def test_a_job_without_warc_writes_none(tmp_path: Path, db_dsn: str, gzip_origin: str) -> None:
    """The job setting is what turns WARC on: without it (and without --warc) no WARC is written,
    while the transferred digest of an encoded body is still recorded."""
    cluster = Cluster(tmp_path, db_dsn)
    try:
        job(cluster, gzip_origin + "/onthefly/{id}.pdf", 3)
        cluster.client("archivist", "--exit-when-idle")
        assert cluster.wait_clients() == [0]
        assert cluster.sql("SELECT count(*) FROM warc_files")[0][0] == 0
        rows = cluster.sql("SELECT count(*) FROM documents WHERE transfer_sha256 IS NOT NULL")
    finally:
        cluster.stop()
    assert rows[0][0] == 3
    assert not (cluster.store / "warc").exists()


def test_the_gate_stores_a_warc_only_under_the_tasks_lease(tmp_path: Path, db_dsn: str) -> None:
    """PUT /api/v1/tasks/{id}/warc/{name}: the current lease, a name of the task's own, or a
    clear refusal; nothing is stored by a refused upload."""
    cluster = Cluster(tmp_path, db_dsn)
    try:
        key = cluster.register("uploader")
        cluster.post("/api/v1/tasks/create", {"source": "id_range", "params": {
            "url_template": "http://127.0.0.1:9/{id}", "start_id": 1, "count": 1}})  # fmt: skip
        headers = {"X-API-Key": key}
        leased = httpx.post(cluster.url + "/api/v1/tasks/request", headers=headers, json={}, timeout=30)
        task = leased.json()["tasks"][0] if "tasks" in leased.json() else leased.json()
        task_id, token = task["task_id"], task["lease_token"]
        url = f"{cluster.url}/api/v1/tasks/{task_id}/warc"
        body = gzip.compress(b"WARC/1.1\r\n")

        def put(name: str, lease: str | None) -> httpx.Response:
            sent = headers | ({"X-Lease-Token": lease} if lease else {})
            return httpx.put(f"{url}/{name}", headers=sent, content=body, timeout=30)

        other = "00000000-0000-4000-8000-000000000000"
        refusals = [
            (put(f"{task_id}-1-1.warc.gz", None), 422, "lease_required"),
            (put(f"{task_id}-1-1.warc.gz", other), 409, "lease_lost"),
            (put(f"{other}-1-1.warc.gz", token), 422, "wrong_storage_key"),
            (put("..%2F..%2Fetc-1-1.warc.gz", token), 400, None),  # not the upload route at all
            (put(f"{task_id}-1-1.warc", token), 422, "invalid_field"),
        ]
        for reply, status, code in refusals:
            assert reply.status_code == status, (reply.status_code, reply.text)
            if code is not None:
                assert reply.json()["code"] == code, reply.text
        assert not (cluster.store / "warc").exists()
        stored = put(f"{task_id}-1-1.warc.gz", token)
        assert stored.status_code == 201, stored.text
        again = put(f"{task_id}-1-1.warc.gz", token)
    finally:
        cluster.stop()
    assert stored.json()["storage_key"] == f"warc/no-job/{task_id}-1-1.warc.gz"
    assert (cluster.store / stored.json()["storage_key"]).read_bytes() == body
    assert again.status_code == 409 and again.json()["code"] == "already_stored"  # write-once


def test_a_report_sent_again_carries_the_warc_it_was_sealed_with(tmp_path: Path) -> None:
    """A report whose answer was lost goes again with the same WARC (stored once), not without
    one. The control: once the report is taken, the same documents have no records left."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor
    from datetime import UTC, datetime
    from uuid import uuid4

    from client.download import Wire
    from client.warc import WarcRecorder, _Pending
    from protocol import v1
    from storage.local import LocalStorage

    async def scenario() -> tuple[Any, Any, Any, list[str]]:
        store = LocalStorage(str(tmp_path / "store"))
        now = datetime.now(UTC)
        task = v1.LeasedTask(
            task_id=uuid4(), job_id=uuid4(), source="id_range", search_params={}, start_page=1,
            max_documents=2, params={}, status=v1.TaskStatus.ASSIGNED, attempts=1, max_attempts=3,
            lease_token=uuid4(), lease_expires_at=now,
        )  # fmt: skip
        spool = tmp_path / "spool"
        spool.mkdir()
        with ThreadPoolExecutor(2) as threads:
            recorder = WarcRecorder(store, task, "agent (+mailto:a@example.org)", spool, threads)
            for doc_id in ("1", "2"):  # two documents stored, their exchanges spooled
                path = spool / f"body-{doc_id}"
                path.write_bytes(b"body " + doc_id.encode())
                wire = Wire(
                    ("GET /x HTTP/1.1", [("Host", "o")]), "HTTP/1.1 200 OK", [("Content-Length", "6")]
                )
                capture = v1.Capture(final_url=f"http://o/{doc_id}", http_status=200, fetched_at=now)
                recorder.pending[doc_id] = _Pending(doc_id, f"http://o/{doc_id}", capture, wire, path)
            first = await recorder.seal(["1", "2"])
            again = await recorder.seal(["1", "2"])  # the answer was lost: the report goes again
            recorder.sent()
            after = await recorder.seal(["1", "2"])
            files = sorted(p.name for p in (tmp_path / "store").rglob("*.warc.gz"))
        await store.close()
        return first, again, after, files

    first, again, after, files = asyncio.run(scenario())
    assert first is not None and again == first
    assert len(files) == 1 and first.storage_key.endswith(files[0])
    assert after is None  # control: sealed and taken, nothing left to send again


def test_warc_is_a_job_setting_its_tasks_carry() -> None:
    """`warc` beside a job's params goes into them (every task carries its params), for id_range
    jobs and harvests alike; given twice it must agree. A search's own setting reaches the tasks
    its results are spread to, over its profile's rules."""
    from protocol import harvests, v1
    from protocol.sources import SourceProfile
    from server.db.discovery import _rules

    params = {"url_template": "https://r.example/{id}", "start_id": 1, "count": 2}
    assert v1.JobCreate.model_validate({"source": "id_range", "params": params, "warc": True}).params.warc
    assert v1.JobCreate.model_validate({"source": "id_range", "params": params}).params.warc is None
    with pytest.raises(ValueError, match="warc and params.warc disagree"):
        v1.JobCreate.model_validate({"source": "id_range", "params": params | {"warc": False}, "warc": True})
    harvest = harvests.HarvestCreate.model_validate(
        {"source": "court", "partition": {"dates": {"from": "2020-01-01", "to": "2020-01-31"}}, "warc": True}
    )
    assert harvest.params.warc is True
    from protocol.params import merged

    profile = SourceProfile.model_validate({
        "base_url": "https://r.example", "search": {"url": "https://r.example/s?p={page}"},
        "results": {"links": "a.doc", "id_pattern": "/(?P<id>\\d+)"}, "min_size": 10,
    })  # fmt: skip
    own = _rules({"warc": True, "over_cap": "split"})
    assert own is not None
    spread = merged(profile, own)
    assert spread.warc is True and spread.min_size == 10
    assert profile.rules.warc is None  # the control: the profile alone keeps no WARC


def wacz_validate(path: Path) -> subprocess.CompletedProcess[str]:
    """py-wacz's own validator (Webrecorder's WACZ library): the datapackage (Frictionless), every
    file listed, every file's sha256, the datapackage digest."""
    return subprocess.run(
        [sys.executable, "-m", "wacz", "validate", "-f", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def replay(wacz: Path, url: str) -> Any:
    """What a replay tool does to find a URL in a WACZ: its SURT key looked up in index.idx, that
    gzip block of index.cdx.gz read, the line's WARC record read at its offset in archive/."""
    import gzip as gz
    import io
    import json
    import zipfile

    from surt import surt
    from warcio.archiveiterator import ArchiveIterator

    key = surt(url)
    with zipfile.ZipFile(wacz) as z:
        blocks = [line.split(" ", 2) for line in z.read("indexes/index.idx").decode().splitlines()]
        blocks = [b for b in blocks if not b[0].startswith("!")]
        chosen = [b for b in blocks if b[0] <= key][-1]  # the last block starting at or before it
        where = json.loads(chosen[2])
        data = z.read("indexes/index.cdx.gz")[where["offset"] : where["offset"] + where["length"]]
        lines = [line.split(" ", 2) for line in gz.decompress(data).decode().splitlines()]
        entry = next(json.loads(f) for k, _, f in lines if k == key and '"status"' in f)
        archive = z.read("archive/" + entry["filename"])
    start, length = int(entry["offset"]), int(entry["length"])
    record = next(iter(ArchiveIterator(io.BytesIO(archive[start : start + length]))))
    assert record.rec_type == "response"
    return record


def test_a_jobs_wacz_passes_the_validator_and_replays_what_the_origin_sent(
    tmp_path: Path, db_dsn: str, gzip_origin: str
) -> None:
    """`docgate warc pack JOB`: py-wacz's validator passes it, and a document found through its
    index is nginx's gzip answer, decoding to the stored document. Controls: a WARC in the store
    that is not the one recorded stops the pack (no WACZ written); a WACZ with one byte of a WARC
    changed fails the validator."""
    import zipfile

    from processes import CLEAN_ENV, REPO, docgate

    cluster = Cluster(tmp_path, db_dsn)
    env = CLEAN_ENV | {"DATABASE_URL": cluster.dsn, "STORAGE_URL": str(cluster.store)}
    try:
        job_id = job(cluster, gzip_origin + "/onthefly/{id}.pdf", 6, warc=True)
        cluster.client("archivist", "--exit-when-idle")
        assert cluster.wait_clients() == [0]
        docs = {str(i): cluster.get(f"/api/v1/documents/{i}") for i in range(1, 7)}
        output = tmp_path / "job.wacz"
        packed = subprocess.run(docgate("warc", "pack", job_id, "--output", str(output)), cwd=REPO,
                                env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
        assert packed.returncode == 0, packed.stderr
        assert "6 pages" in packed.stderr, packed.stderr
        checked = wacz_validate(output)
        assert "Validation succeeded" in checked.stdout and "failed" not in checked.stdout, checked.stdout
        for doc_id, doc in docs.items():
            record = replay(output, doc["final_url"])
            stored = (cluster.store / doc["storage_key"]).read_bytes()
            assert record.http_headers.get_header("Content-Encoding") == "gzip"
            _, sent = as_sent(f"{gzip_origin}/onthefly/{doc_id}.pdf")
            replayed = record.raw_stream.read()
            assert replayed == sent and gzip.decompress(replayed) == stored  # the origin's bytes
        with zipfile.ZipFile(output) as z:
            names = z.namelist()
            pages = z.read("pages/pages.jsonl").decode().splitlines()
            stored_whole = all(
                i.compress_type == zipfile.ZIP_STORED
                for i in z.infolist()
                if i.filename.startswith("archive/")
            )
        assert stored_whole and {"datapackage.json", "datapackage-digest.json", "indexes/index.idx"} <= set(
            names
        )
        assert len(pages) == 7 and '"format": "json-pages-1.0"' in pages[0]

        # The control for the validator: one byte of a WARC changed, the datapackage as it was.
        bad = tmp_path / "bad.wacz"
        with zipfile.ZipFile(output) as src, zipfile.ZipFile(bad, "w") as dst:
            changed = False
            for info in src.infolist():
                data = src.read(info)
                if info.filename.startswith("archive/") and not changed:
                    data, changed = data[:-1] + bytes([data[-1] ^ 1]), True
                dst.writestr(info, data)
        failed = wacz_validate(bad)  # (py-wacz exits 0 either way: its verdict is in its output)
        assert "Validation failed" in failed.stdout and "Validation succeeded" not in failed.stdout

        # The control for the pack: a WARC in the store that is not the one recorded.
        (key,) = cluster.sql("SELECT storage_key FROM warc_files ORDER BY storage_key LIMIT 1")[0]
        tampered = cluster.store / key
        tampered.chmod(0o644)
        tampered.write_bytes(tampered.read_bytes() + b"\0")
        again = tmp_path / "again.wacz"
        refused = subprocess.run(docgate("warc", "pack", job_id, "--output", str(again)), cwd=REPO,
                                 env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    finally:
        cluster.stop()
    assert refused.returncode == 2 and "is not the WARC recorded" in refused.stderr, refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1  # one line, no traceback
    assert not again.exists() and not list(tmp_path.glob("again.wacz*"))
