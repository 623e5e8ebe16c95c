"""Documents: recorded inside the fenced task write that reports them; looked up by id."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any
from uuid import UUID

from protocol import v1
from protocol.failures import FailureCode
from protocol.params import SOURCE_PARAMS
from server.db import sources, verify
from server.db.pool import Connection, Pool, connection
from server.domain.record import DOCUMENT, EXPORTED, RECORD, VERSION, Recording, record_args, version_args
from server.domain.record import EXPORT_COLUMNS as EXPORT_COLUMNS  # the export's, for docgate export
from server.domain.reports import Reports, check_in_task
from server.errors import DocumentNotFound, JobNotFound, Unprocessable, WrongStorageKey
from storage.keys import collection_of, document_key

RECORD_FAILURES = """
INSERT INTO document_failures (doc_id, job_id, task_id, url, error, code)
SELECT d.doc_id, $1, $2, d.url, d.error, d.code
FROM unnest($3::text[], $4::text[], $5::text[], $6::text[]) AS d(doc_id, url, error, code)
ON CONFLICT (doc_id, task_id) DO UPDATE SET url = excluded.url, error = excluded.error,
                                            code = excluded.code, failed_at = now()
"""

GET = f"""
SELECT {DOCUMENT} FROM documents d
LEFT JOIN clients c ON c.client_id = d.client_id
WHERE d.collection = $2 AND d.doc_id = $1
"""

KNOWN = "SELECT doc_id FROM documents WHERE collection = $2 AND doc_id = ANY($1::text[])"


async def profile_of(conn: Connection, task: Any) -> dict[str, Any] | None:
    """The stored profile a task names (None for a built-in source's task)."""
    if task["source"] in SOURCE_PARAMS:
        return None
    return await sources.profile_named(conn, task["source"])


async def record(conn: Connection, task: Any, reports: Reports) -> None:
    """Record what a fenced write reported; `task` is the row that write returned. A document
    the task does not contain refuses the whole write (the caller's transaction rolls back)."""
    recorded, failed = reports.recorded, reports.failed
    if recorded or failed:
        reported = (*recorded, *failed)
        check_in_task(task, [str(d.doc_id) for d in reported], reported, await profile_of(conn, task))
    collection = task.get("collection") or ""
    for d in recorded:  # a document of the task's collection is stored under its prefix
        if collection_of(d.storage_key or "") != collection:
            raise WrongStorageKey(
                f"storage_key {d.storage_key!r} is not in the task's collection {collection!r}: expected "
                + document_key(str(d.doc_id), "", collection=collection).rsplit("/", 1)[0]
                + "/<doc_id><ext>"
            )
    by = Recording(
        source=task["source"],
        task_id=task["task_id"],
        job_id=task["job_id"],
        client_id=task["assigned_to"],
        found_by=_found_by(task),
        collection=collection,
        attempt=task["attempts"],
    )
    revisit = bool((task["params"] or {}).get("revisit"))
    beside = [] if revisit else _beside(recorded)
    first = [
        d
        for d in recorded
        if d.status is not v1.DocumentStatus.UNCHANGED and (d.version is None or not revisit)
    ]
    if first:
        await conn.execute(RECORD, *record_args(by, first))
    if beside:
        await conn.execute(
            BESIDE, collection, [str(d.doc_id) for d in beside], [d.version for d in beside],
            [d.storage_key for d in beside], task["task_id"],
        )  # fmt: skip
    await _revisited(conn, task, by, recorded, failed)
    # What this write records (found in the store, too: a liar could report its lies so).
    stored = [
        str(d.doc_id) for d in recorded if d.status in (v1.DocumentStatus.STORED, v1.DocumentStatus.SKIPPED)
    ]
    await verify.sample(conn, task, by, stored)  # a job's verify_sample: checked by other clients
    if reports.checked:
        check_in_task(task, [str(d.doc_id) for d in reports.checked], (), await profile_of(conn, task))
        await verify.judge(conn, task, reports.checked, task["max_attempts"])
    if reports.warc is not None:
        await _record_warc(conn, task, reports.warc, reports.warc_url, collection)
    if failed:
        await conn.execute(
            RECORD_FAILURES,
            task["job_id"],
            task["task_id"],
            [str(d.doc_id) for d in failed],
            [d.url for d in failed],
            [d.error for d in failed],
            [d.code or FailureCode.OTHER for d in failed],
        )


# First records beside a key that holds bytes no record vouches for and that are not the
# document (client.document: DocumentStep._skipped): recorded at their version key, as that version.
BESIDE = """
UPDATE documents d SET version = u.version
FROM unnest($2::text[], $3::int[], $4::text[]) AS u(doc_id, version, storage_key)
WHERE d.collection = $1 AND d.doc_id = u.doc_id AND d.task_id = $5 AND d.storage_key = u.storage_key
  AND d.version = 1
"""


def _beside(recorded: list[v1.DocumentReport]) -> list[v1.DocumentReport]:
    """A first record's version (not a revisit's), at that version's own key (check_in_task
    refuses a version at any other)."""
    return [d for d in recorded if d.version is not None]


# A revisit found these as recorded (the same sha256 at the same key): seen again, now, with the
# validators the origin gave this time (a file touched has a new ETag for the same bytes: the
# next revisit's If-None-Match names it, and is answered 304).
UNCHANGED = """
UPDATE documents d SET revisited_at = now(), withdrawn_at = NULL, etag = coalesce(u.etag, d.etag),
                       last_modified = coalesce(u.last_modified, d.last_modified)
FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::text[])
     AS u(doc_id, sha256, storage_key, etag, last_modified)
WHERE d.collection = $1 AND d.doc_id = u.doc_id AND d.sha256 = u.sha256 AND d.storage_key = u.storage_key
"""
# A revisit's 404 or 410: the document is withdrawn (since the first time it was seen gone); its
# bytes and record stay.
WITHDRAWN = """
UPDATE documents SET withdrawn_at = coalesce(withdrawn_at, now()), revisited_at = now()
WHERE collection = $1 AND doc_id = ANY($2::text[])
"""
GONE = (FailureCode.NOT_FOUND, FailureCode.GONE)


async def _revisited(
    conn: Connection,
    task: Any,
    by: Recording,
    recorded: list[v1.DocumentReport],
    failed: list[v1.DocumentReport],
) -> None:
    """What a revisit found: new versions, documents as they were, documents gone. Only a
    revisit task's reports touch documents already recorded."""
    if not (task["params"] or {}).get("revisit"):
        if any(d.status is v1.DocumentStatus.UNCHANGED for d in recorded):
            raise Unprocessable(f"task {task['task_id']} is not a revisit: nothing of it is unchanged")
        return
    unchanged = [d for d in recorded if d.status is v1.DocumentStatus.UNCHANGED]
    if unchanged:
        ids = [str(d.doc_id) for d in unchanged]
        headers = [d.capture.response_headers if d.capture else {} for d in unchanged]
        await conn.execute(
            UNCHANGED, by.collection, ids, [d.sha256 for d in unchanged], [d.storage_key for d in unchanged],
            [h.get("etag") for h in headers], [h.get("last-modified") for h in headers],
        )  # fmt: skip
    for doc in recorded:
        if doc.version is not None:
            await conn.execute(VERSION, *version_args(by.collection, by, doc))
    gone = [str(d.doc_id) for d in failed if d.code in GONE]
    if gone:
        await conn.execute(WITHDRAWN, by.collection, gone)


RECORD_WARC = """
INSERT INTO warc_files (storage_key, storage_url, sha256, size, records, doc_ids, collection, task_id,
                        job_id, client_id, attempt)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
ON CONFLICT (storage_key) DO NOTHING
"""
# Each document points at the first WARC that holds it.
LINK_WARC = """
UPDATE documents SET warc_key = $1
WHERE collection = $2 AND doc_id = ANY($3::text[]) AND warc_key IS NULL AND task_id = $4
"""


async def _record_warc(conn: Connection, task: Any, warc: v1.WarcReport, url: str, collection: str) -> None:
    """A WARC of the task's own: under warc/<its job>/<its task id>-…, nowhere else."""
    job = str(task["job_id"]) if task["job_id"] else "no-job"
    prefix = f"warc/{job}/{task['task_id']}-"
    if not warc.storage_key.startswith(prefix):
        raise WrongStorageKey(
            f"a WARC of task {task['task_id']} is stored under {prefix}…, not {warc.storage_key!r}"
        )
    doc_ids = [str(d) for d in warc.doc_ids]
    await conn.execute(
        RECORD_WARC, warc.storage_key, url, warc.sha256, warc.size, warc.records, doc_ids, collection,
        task["task_id"], task["job_id"], task["assigned_to"], task["attempts"],
    )  # fmt: skip
    await conn.execute(LINK_WARC, warc.storage_key, collection, doc_ids, task["task_id"])


async def warc_keys(pool: Pool, job_id: UUID) -> list[str]:
    """The storage keys of a job's recorded WARC files, in key order."""
    async with connection(pool) as conn:
        rows = await conn.fetch("SELECT storage_key FROM warc_files WHERE job_id = $1 ORDER BY 1", job_id)
    return [row["storage_key"] for row in rows]


def _found_by(task: Any) -> UUID:
    """The search that found the task's documents: the one that spread them, else the task."""
    params = task["params"] or {}
    try:
        return UUID(str(params["found_by"]))
    except (KeyError, ValueError, TypeError):
        return UUID(str(task["task_id"]))


async def get_document(pool: Pool, doc_id: str, collection: str = "") -> v1.Document:
    async with connection(pool) as conn:
        row = await conn.fetchrow(GET, doc_id, collection)
    if row is None:
        raise DocumentNotFound(f"document {doc_id} not found")
    return v1.Document.model_validate(dict(row))


RECORDED_AT = """
SELECT storage_key, storage_url, sha256, size, content_type, compressed, version_id FROM documents
WHERE doc_id = $1 AND storage_key = $2
"""


async def recorded_at(pool: Pool, doc_id: str, storage_key: str) -> v1.StoredDocument | None:
    """The record of `doc_id` if it vouches for the object at `storage_key`."""
    async with connection(pool) as conn:
        row = await conn.fetchrow(RECORDED_AT, doc_id, storage_key)
    return None if row is None else v1.StoredDocument.model_validate(dict(row))


async def known_documents(pool: Pool, doc_ids: list[str], collection: str = "") -> list[str]:
    async with connection(pool) as conn:
        return [r["doc_id"] for r in await conn.fetch(KNOWN, doc_ids, collection)]


PAGE = """
SELECT collection, doc_id, storage_key, sha256, size, compressed, version_id FROM documents
WHERE (collection, doc_id) > ($1, $2) ORDER BY collection, doc_id LIMIT $3
"""


async def iter_documents(pool: Pool, page: int = 1000) -> AsyncIterator[Any]:
    """Every recorded document, in (collection, doc_id) order, a page at a time."""
    after = ("", "")
    while True:
        async with connection(pool) as conn:
            rows = await conn.fetch(PAGE, *after, page)
        for row in rows:
            yield row
        if len(rows) < page:
            return
        after = (rows[-1]["collection"], rows[-1]["doc_id"])


# What an export holds per document (EXPORT_COLUMNS): its record and its capture (docgate
# export, the API).
JOB_PAGE = f"""
SELECT {EXPORTED}
FROM documents d LEFT JOIN clients c ON c.client_id = d.client_id
WHERE d.job_id = $1 AND d.doc_id > $2 ORDER BY d.doc_id LIMIT $3
"""


async def job_page(pool: Pool, job_id: UUID, after: str, limit: int) -> list[Any]:
    """One page of the job's documents after doc_id `after`, in doc_id order (a keyset page: a
    page costs the same at the start of ten million documents and at the end)."""
    async with connection(pool) as conn:
        if await conn.fetchval("SELECT 1 FROM jobs WHERE job_id = $1", job_id) is None:
            raise JobNotFound(f"job {job_id} not found")
        return list(await conn.fetch(JOB_PAGE, job_id, after, limit))


async def iter_job(pool: Pool, job_id: UUID, page: int = 2000) -> AsyncIterator[Any]:
    """Every document of the job, a page in memory at a time."""
    after = ""
    while True:
        rows = await job_page(pool, job_id, after, page)
        for row in rows:
            yield row
        if len(rows) < page:
            return
        after = rows[-1]["doc_id"]
