"""WARC output (`--warc`): the capture of every document a report holds, as archivists read it.

Each report a task attempt sends (a progress report, the completion) carries one gzipped WARC
file (ISO 28500, WARC/1.1, written with warcio): a `warcinfo` record naming docgate, its
version and the operator's contact, then for each stored document a `request` record (what
was asked: method, URL, the headers sent) and a `response` record (the status line, the
headers as the origin sent them and the document's bytes), each with WARC-Date (when the
answer came), WARC-Target-URI (the URL the bytes came from, after redirects), WARC-IP-Address,
and sha256 WARC-Block-Digest and WARC-Payload-Digest (WARC 1.1 allows any algorithm; warcio's
default is sha1). The payload is the document as stored, so the response record's payload
sha256 is the document's recorded sha256; when the origin sent it content-encoded (gzip), the
record holds the decoded bytes and the original header moves to X-Docgate-Content-Encoding.

The file is written to a spool folder off the event loop, then stored write-once in the
client's store under `warc/<job>/<task>-<attempt>-<n>.warc.gz` and reported with the
documents it holds, in the same fenced write: a WARC is recorded whole or not at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import tempfile
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import urlsplit

from warcio.statusandheaders import StatusAndHeaders
from warcio.timeutils import datetime_to_iso_date
from warcio.utils import Digester
from warcio.warcwriter import WARCWriter

from protocol import v1
from protocol.version import VERSION
from storage import PutOptions, Storage
from storage.base import CHUNK

SPOOL_PREFIX = "docgate-warc-"
HOP_BY_HOP = {"transfer-encoding", "connection", "keep-alive"}


class Sha256Writer(WARCWriter):  # type: ignore[misc]
    """warcio's writer with sha256 block and payload digests (its default is sha1)."""

    @staticmethod
    def _create_digester() -> Digester:
        return Digester("sha256")


@dataclass
class _Pending:
    """One document waiting to go into a WARC: its capture and its bytes (spooled)."""

    doc_id: str
    url: str
    capture: v1.Capture
    payload: Path


@dataclass
class WarcRecorder:
    """The WARC files of one task attempt: documents are added as they are stored; `seal()`
    writes, stores and describes the file of the documents a report is about to record."""

    store: Storage
    task: v1.LeasedTask
    agent: str  # the User-Agent the requests were sent with (it names the operator)
    spool: Path
    threads: ThreadPoolExecutor
    pending: dict[str, _Pending] = field(default_factory=dict)
    sealed: int = 0

    async def tee(self, chunks: AsyncIterator[bytes]) -> tuple[AsyncIterator[bytes], Path]:
        """The same chunks, also written to a spool file (in a thread) for the WARC record."""
        path = self.spool / f"{SPOOL_PREFIX}{uuid.uuid4().hex}"
        loop = asyncio.get_running_loop()
        handle: BinaryIO = await loop.run_in_executor(self.threads, path.open, "xb")

        async def copied() -> AsyncIterator[bytes]:
            try:
                async for chunk in chunks:
                    await loop.run_in_executor(self.threads, handle.write, chunk)
                    yield chunk
            finally:
                await loop.run_in_executor(self.threads, handle.close)

        return copied(), path

    def add(self, doc_id: str, url: str, capture: v1.Capture | None, payload: Path) -> None:
        if capture is None:  # nothing to say how it was fetched: no record (and no spool kept)
            self.threads.submit(_unlink, payload)
            return
        self.pending[doc_id] = _Pending(doc_id, url, capture, payload)

    def drop(self, payload: Path) -> None:
        self.threads.submit(_unlink, payload)

    async def seal(self, doc_ids: list[str]) -> v1.WarcReport | None:
        """Write these documents' records into one WARC, store it, and say what it is (None when
        none of them has a record waiting)."""
        batch = [self.pending.pop(d) for d in doc_ids if d in self.pending]
        if not batch:
            return None
        self.sealed += 1
        job = str(self.task.job_id) if self.task.job_id else "no-job"
        name = f"{self.task.task_id}-{self.task.attempts}-{self.sealed}.warc.gz"
        key = f"warc/{job}/{name}"
        loop = asyncio.get_running_loop()
        path = await loop.run_in_executor(self.threads, self._write, name, batch)
        try:
            stored = await self.store.put(key, _read(path, loop, self.threads), PutOptions())
        finally:
            self.threads.submit(_unlink, path)
            for item in batch:
                self.threads.submit(_unlink, item.payload)
        return v1.WarcReport(
            storage_key=stored.storage_key,
            sha256=stored.sha256,
            size=stored.size,
            records=1 + 2 * len(batch),
            doc_ids=[item.doc_id for item in batch],
        )

    def close(self) -> None:
        for item in self.pending.values():
            self.threads.submit(_unlink, item.payload)
        self.pending = {}

    def _write(self, name: str, batch: list[_Pending]) -> Path:
        fd, raw = tempfile.mkstemp(prefix=SPOOL_PREFIX, suffix=".warc.gz", dir=self.spool)
        path = Path(raw)
        with os.fdopen(fd, "wb") as out:
            writer = Sha256Writer(out, gzip=True, warc_version="1.1")
            info = {
                "software": f"docgate/{VERSION}",
                "format": "WARC File Format 1.1",
                "conformsTo": "http://iipc.github.io/warc-specifications/specifications/warc-format/warc-1.1/",
                "operator": _contact(self.agent),
                "http-header-user-agent": self.agent,
                "isPartOf": str(self.task.job_id or self.task.task_id),
                "description": f"task {self.task.task_id}, attempt {self.task.attempts}",
            }
            writer.write_record(writer.create_warcinfo_record(name, info))
            for item in batch:
                _write_exchange(writer, item, self.agent)
            out.flush()
            os.fsync(out.fileno())
        return path


def _contact(agent: str) -> str:
    """The operator's contact a User-Agent carries, as `(+contact)`."""
    start = agent.find("(+")
    return agent[start + 2 : agent.find(")", start)] if start >= 0 and ")" in agent[start:] else ""


def _write_exchange(writer: Sha256Writer, item: _Pending, agent: str) -> None:
    capture = item.capture
    target = capture.final_url or item.url
    date = datetime_to_iso_date(
        (capture.fetched_at or datetime.now(UTC)).replace(tzinfo=None), use_micros=True
    )
    common = {"WARC-Target-URI": target, "WARC-Date": date}
    if capture.server_ip:
        common["WARC-IP-Address"] = capture.server_ip
    host = _host(target)
    request_headers = StatusAndHeaders(
        f"GET {_path(target)} HTTP/1.1",
        [("Host", host), ("User-Agent", agent), ("Accept-Encoding", "gzip, deflate")],
        is_http_request=True,
    )
    request = writer.create_warc_record(
        target, "request", payload=_empty(), length=0, http_headers=request_headers, warc_headers_dict=common
    )
    headers = []
    for name, value in capture.response_headers.items():
        if name in HOP_BY_HOP:
            continue
        if name == "content-encoding":
            name = "x-docgate-content-encoding"  # the payload below is the decoded document
        if name == "content-length":
            continue  # set below to the payload's length
        headers.append((name, value))
    size = item.payload.stat().st_size
    headers.append(("Content-Length", str(size)))
    status = capture.http_status or 200
    response_headers = StatusAndHeaders(f"{status} {_reason(status)}", headers, protocol="HTTP/1.1")
    with item.payload.open("rb") as payload:
        response = writer.create_warc_record(
            target,
            "response",
            payload=payload,
            length=size,
            http_headers=response_headers,
            warc_headers_dict=common
            | {"WARC-Concurrent-To": request.rec_headers.get_header("WARC-Record-ID")},
        )
        writer.write_record(request)
        writer.write_record(response)


def _empty() -> Any:
    return io.BytesIO(b"")


def _host(url: str) -> str:
    return urlsplit(url).netloc


def _path(url: str) -> str:
    parts = urlsplit(url)
    return (parts.path or "/") + (f"?{parts.query}" if parts.query else "")


def _reason(status: int) -> str:
    with contextlib.suppress(ValueError):
        return HTTPStatus(status).phrase
    return ""


async def _read(
    path: Path, loop: asyncio.AbstractEventLoop, threads: ThreadPoolExecutor
) -> AsyncIterator[bytes]:
    handle = await loop.run_in_executor(threads, path.open, "rb")
    try:
        while chunk := await loop.run_in_executor(threads, handle.read, CHUNK):
            yield chunk
    finally:
        await loop.run_in_executor(threads, handle.close)


def _unlink(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()
