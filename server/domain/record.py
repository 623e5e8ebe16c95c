"""The document record, declared once: every column of `documents` and where its value comes from.

A recorded document's row is written by one statement (`RECORD`) built from `COLUMNS`; the API
reads it into `v1.Document` and an export into `v1.ExportedDocument`, whose SELECT (`EXPORTED`)
is built from that model's fields. tests/test_document_record.py checks the table, the models
and these declarations against each other, so none can drift from the others.

To add a capture field: declare it on `v1.Capture`, add its column here (`CAPTURED`), add the
column in a migration, and name it on `v1.Document` (and `v1.ExportedDocument` if an export
should carry it). Nothing else changes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any
from uuid import UUID

from protocol import v1


@dataclass(frozen=True)
class Reported:
    """A column sent per document in the client's report: one array parameter."""

    name: str
    sql_type: str
    value: Callable[[v1.DocumentReport], Any]


@dataclass(frozen=True)
class Recording:
    """What the write that records documents knows of them all: the task's row and the gate's
    view of it (one parameter each, the same for every document of the write)."""

    source: str
    task_id: UUID
    job_id: UUID | None
    client_id: UUID | None
    found_by: UUID  # the search that found them: the one that spread them, else the task
    collection: str
    attempt: int


FROM_TASK = tuple(f.name for f in fields(Recording))

REPORTED = (
    Reported("doc_id", "text", lambda d: str(d.doc_id)),
    Reported("storage_key", "text", lambda d: d.storage_key),
    Reported("storage_url", "text", lambda d: d.storage_url),
    Reported("sha256", "text", lambda d: d.sha256),
    Reported("size", "bigint", lambda d: d.size),
    Reported("content_type", "text", lambda d: d.content_type),
    Reported("compressed", "bool", lambda d: d.compressed),
    Reported("version_id", "text", lambda d: d.version_id),
    Reported("url", "text", lambda d: d.url),
)

# From the document's capture record (`v1.Capture`, as JSON `c`): column → SQL expression.
CAPTURED = {
    "final_url": "j.c->>'final_url'",
    "redirects": "j.c->'redirects'",
    "http_status": "(j.c->>'http_status')::int",
    "response_headers": "j.c->'response_headers'",
    "etag": "j.c->'response_headers'->>'etag'",
    "last_modified": "j.c->'response_headers'->>'last-modified'",
    "http_date": "j.c->'response_headers'->>'date'",
    "content_length": "j.c->'response_headers'->>'content-length'",
    "content_encoding": "j.c->'response_headers'->>'content-encoding'",
    "fetched_at": "(j.c->>'fetched_at')::timestamptz",
    "server_ip": "j.c->>'server_ip'",
    "server_port": "(j.c->>'server_port')::int",
    "client_version": "j.c->>'client_version'",
    "transfer_sha256": "j.c->>'transfer_sha256'",
    "transfer_size": "(j.c->>'transfer_size')::bigint",
}

# Set later by the gate, not by the write that records the document (a revisit sets the last three).
BY_GATE = ("stored_at", "warc_key", "version", "revisited_at", "withdrawn_at")

COLUMNS = (*FROM_TASK, *(r.name for r in REPORTED), *CAPTURED, *BY_GATE)


def _record() -> str:
    params = iter(range(1, 100))
    task = {name: f"${next(params)}" for name in FROM_TASK}
    arrays = [f"${next(params)}::{r.sql_type}[]" for r in REPORTED]
    capture = f"${next(params)}::text[]"
    names = [*FROM_TASK, *(r.name for r in REPORTED), *CAPTURED]
    values = [*task.values(), *(f"d.{r.name}" for r in REPORTED), *(f"{e}" for e in CAPTURED.values())]
    return (
        f"INSERT INTO documents ({', '.join(names)})\n"
        f"SELECT {', '.join(values)}\n"
        f"FROM unnest({', '.join(arrays)}, {capture})\n"
        f"     AS d({', '.join(r.name for r in REPORTED)}, capture),\n"
        "     LATERAL (SELECT d.capture::jsonb AS c) j\n"
        # First record wins: documents are written once, so a later report of the same doc_id
        # describes the same stored object.
        "ON CONFLICT (collection, doc_id) DO NOTHING"
    )


RECORD = _record()


def record_args(by: Recording, recorded: list[v1.DocumentReport]) -> list[Any]:
    """RECORD's parameters."""
    return [
        *(getattr(by, name) for name in FROM_TASK),
        *([r.value(d) for d in recorded] for r in REPORTED),
        [d.capture.model_dump_json() if d.capture else None for d in recorded],
    ]


def _version() -> str:
    """A revisit's new version of a recorded document ($1 collection, $2 doc_id, $3 its version,
    then the task's recording, the REPORTED values and the capture as JSON): the current row,
    if it is an earlier version, moves whole to document_versions, and the row takes the new
    one. Two revisits racing to record the same version record one. A version may pass over a
    number whose key holds bytes no record vouches for (client.document: _put_version)."""
    n = iter(range(4, 100))
    task = {name: f"${next(n)}" for name in ("task_id", "client_id", "attempt")}
    reported = {r.name: f"${next(n)}::{r.sql_type}" for r in REPORTED if r.name != "doc_id"}
    capture = f"${next(n)}::text::jsonb"
    kept = ", ".join(VERSION_COLUMNS)
    sets = [f"{k} = {v}" for k, v in {**task, **reported, **CAPTURED}.items()]
    sets += ["version = $3", "stored_at = now()", "revisited_at = now()", "withdrawn_at = NULL"]
    sets += ["warc_key = NULL"]
    return (
        "WITH old AS (SELECT * FROM documents WHERE collection = $1 AND doc_id = $2 AND version < $3\n"
        "             FOR UPDATE),\n"
        f"kept AS (INSERT INTO document_versions ({kept}, recorded_at)\n"
        f"         SELECT {kept}, stored_at FROM old ON CONFLICT DO NOTHING RETURNING 1)\n"
        f"UPDATE documents d SET {', '.join(sets)}\n"
        f"FROM (SELECT {capture} AS c) j\n"
        "WHERE d.collection = $1 AND d.doc_id = $2 AND d.version < $3 AND EXISTS (SELECT 1 FROM kept)"
    )


# What a superseded version keeps (document_versions), under the same names as in documents.
VERSION_COLUMNS = (
    "collection", "doc_id", "version", "storage_key", "storage_url", "sha256", "size", "content_type",
    "compressed", "version_id", "fetched_at", "task_id", "client_id", "http_status", "etag",
    "last_modified", "transfer_sha256", "warc_key",
)  # fmt: skip
VERSION = _version()


def version_args(collection: str, by: Recording, doc: v1.DocumentReport) -> list[Any]:
    """VERSION's parameters."""
    return [
        collection, str(doc.doc_id), doc.version, by.task_id, by.client_id, by.attempt,
        *(r.value(doc) for r in REPORTED if r.name != "doc_id"),
        doc.capture.model_dump_json() if doc.capture else None,
    ]  # fmt: skip


# The API's and the export's names for columns stored under another (or in another table).
RENAMED = {"recorded_at": "d.stored_at", "date": "d.http_date", "client": "c.client_name"}

EXPORT_COLUMNS = tuple(v1.ExportedDocument.model_fields)


def select(fields: tuple[str, ...]) -> str:
    """A SELECT list of `fields` from documents d (and clients c), under the models' names."""
    return ", ".join(f"{RENAMED[f]} AS {f}" if f in RENAMED else f"d.{f}" for f in fields)


EXPORTED = select(EXPORT_COLUMNS)
DOCUMENT = select(tuple(v1.Document.model_fields))
