"""The document record is declared once (server/domain/record.py): the table, the statement that
writes a row, the API's and the export's models and the capture record are checked against that
declaration here, so a field added in one place and forgotten in another fails this file."""

from __future__ import annotations

import re
from typing import Any

from test_documents import complete, lease_job, report

from conftest import Gate
from protocol import v1
from server.domain import record
from storage import URL_SCHEMES
from storage.gate import GateStorage
from storage.local import LocalStorage
from storage.memory import MemoryStorage
from storage.s3 import S3Storage


async def test_the_table_holds_exactly_the_declared_columns(gate: Gate) -> None:
    rows = await gate.sql("SELECT column_name FROM information_schema.columns WHERE table_name = 'documents'")
    assert sorted(r[0] for r in rows) == sorted(record.COLUMNS)


def test_every_capture_field_has_a_column_or_is_kept_whole() -> None:
    # response_headers is kept whole (and its few headers that matter also as columns); every
    # other field of the capture record is one column of the same name.
    assert set(v1.Capture.model_fields) <= set(record.CAPTURED)


def test_the_models_read_only_declared_columns() -> None:
    stored = set(record.COLUMNS)
    for model in (v1.Document, v1.ExportedDocument):
        for name in model.model_fields:
            column = record.RENAMED.get(name, f"d.{name}")
            assert column.startswith("c.") or column.removeprefix("d.") in stored, (model.__name__, name)
    assert tuple(v1.ExportedDocument.model_fields) == record.EXPORT_COLUMNS


def test_the_statement_writes_every_declared_column_once() -> None:
    inserted = re.search(r"INSERT INTO documents \(([^)]*)\)", record.RECORD)
    assert inserted is not None
    names = [n.strip() for n in inserted[1].split(",")]
    assert len(names) == len(set(names))
    assert set(names) == set(record.COLUMNS) - set(record.BY_GATE)
    params = {int(n) for n in re.findall(r"\$(\d+)", record.RECORD)}
    assert params == set(range(1, len(record.FROM_TASK) + len(record.REPORTED) + 2))


async def test_a_recorded_document_reads_back_as_reported(gate: Gate) -> None:
    """The declared statement and SELECTs, end to end: every reported and captured value comes
    back under the API's names and in the export."""
    client = await gate.register()
    task = await lease_job(gate, client, 7, 1)
    data = b"seven"
    capture: dict[str, Any] = {
        "final_url": "https://origin.example/7.tzb",
        "redirects": [{"url": "http://origin/7", "status": 301}],
        "http_status": 200,
        "response_headers": {"etag": '"e7"', "last-modified": "Mon, 01 Jan 2024 00:00:00 GMT", "date": "x"},
        "fetched_at": "2026-01-02T03:04:05+00:00",
        "server_ip": "192.0.2.7",
        "server_port": 443,
        "client_version": "9.9",
    }
    stored = report(7, data, "0/7.tzb", status="stored", url="http://origin/7", capture=capture)
    r = await complete(gate, client, task, [stored])
    assert r.status_code == 200, r.text
    doc = (await gate.http.get("/api/v1/documents/7", headers=gate.admin)).json()
    assert (doc["storage_key"], doc["size"], doc["url"]) == ("0/7.tzb", 5, "http://origin/7")
    assert doc["final_url"] == capture["final_url"] and doc["http_status"] == 200
    assert (doc["etag"], doc["last_modified"], doc["date"]) == ('"e7"', "Mon, 01 Jan 2024 00:00:00 GMT", "x")
    assert (doc["server_ip"], doc["server_port"], doc["client_version"]) == ("192.0.2.7", 443, "9.9")
    assert doc["redirects"] == [{"url": "http://origin/7", "status": 301}]
    assert doc["client"] == "client-1" and doc["attempt"] == 1 and doc["recorded_at"] == doc["stored_at"]
    page = (await gate.http.get(f"/api/v1/jobs/{task['job_id']}/documents", headers=gate.admin)).json()
    (exported,) = page["documents"]
    assert list(exported) == list(record.EXPORT_COLUMNS)
    assert exported["etag"] == '"e7"' and exported["client"] == "client-1"


def test_every_backend_declares_the_schemes_its_urls_begin_with() -> None:
    backends = (LocalStorage, S3Storage, MemoryStorage, GateStorage)
    declared = {scheme for backend in backends for scheme in backend.url_schemes}
    assert declared == set(URL_SCHEMES)  # the gate's list is exactly the backends' own
    assert MemoryStorage().url_for("0/1.pdf").startswith(MemoryStorage.url_schemes)
    assert GateStorage("http://gate", None, None).url_for("0/1.pdf").startswith(GateStorage.url_schemes)
