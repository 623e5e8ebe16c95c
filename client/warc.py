"""WARC output (a job's `warc`, or `--warc`): the capture of every document a report holds, as
archivists read it.

Each report a task attempt sends (a progress report, the completion) carries one gzipped WARC
file (ISO 28500, WARC/1.1, written with warcio): a `warcinfo` record naming docgate, its
version and the operator's contact, then for each stored document a `request` record (the
request line and the headers sent) and a `response` record holding the HTTP response as
received: its status line, its headers in their order and case, and the body as transferred —
with its Content-Encoding kept, so a replay tool shows what the origin sent. The transfer
coding (chunked) is undone and its header left out, the practice pywb's issue #584 describes
("decode the data and remove the Transfer-Encoding header"); the WARC-Payload-Digest is then of
the entity body, as WARC 1.1 §5.9 defines the payload (iipc/warc-specifications#22; warcio#74).
Each record has WARC-Date (when the answer came), WARC-Target-URI (the URL the bytes came from,
after redirects), WARC-IP-Address, and sha256 block and payload digests (WARC 1.1 allows any
algorithm; warcio's default is sha1).

The stored document is the decoded body: for an answer sent as is, the payload digest is the
document's recorded sha256; for a content-encoded one, it is the recorded `transfer_sha256`.

The file is written to a spool folder off the event loop, then stored write-once in the
client's store (through the gate with `--storage gate`) under
`warc/<job>/<task>-<attempt>-<n>.warc.gz`, fenced by the task's lease, and reported with the
documents it holds, in the same fenced write: a WARC is recorded whole or not at all. A report
sent again (its answer lost) carries the WARC it was sealed with.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import os
import tempfile
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

from warcio.statusandheaders import StatusAndHeaders
from warcio.timeutils import datetime_to_iso_date
from warcio.utils import Digester
from warcio.warcwriter import WARCWriter

from client.download import WARC_NOT_MODIFIED, Body, Hop, Revisit, Wire
from protocol import v1
from protocol.version import VERSION
from storage import PutOptions, Storage
from storage.base import CHUNK, Fence

SPOOL_PREFIX = "docgate-warc-"


class Sha256Writer(WARCWriter):  # type: ignore[misc]
    """warcio's writer with sha256 block and payload digests (its default is sha1)."""

    @staticmethod
    def _create_digester() -> Digester:
        return Digester("sha256")


@dataclass
class _Pending:
    """One document waiting to go into a WARC: its capture, the exchange, and the body as
    transferred (spooled), or what a revisit record says instead."""

    doc_id: str
    url: str
    capture: v1.Capture
    wire: Wire
    payload: Path | None
    revisit: Revisit | None = None
    hops: tuple[Hop, ...] = ()  # the redirects followed to it: a request and a response each

    @property
    def records(self) -> int:
        return 2 * (1 + len(self.hops))


@dataclass
class Spool:
    """A body's transferred bytes, written to a file (in a thread) as they stream."""

    path: Path
    handle: BinaryIO | None
    threads: ThreadPoolExecutor

    async def write(self, chunk: bytes) -> None:
        if self.handle is not None:
            await asyncio.get_running_loop().run_in_executor(self.threads, self.handle.write, chunk)

    async def close(self) -> None:
        handle, self.handle = self.handle, None
        if handle is not None:
            await asyncio.get_running_loop().run_in_executor(self.threads, handle.close)


@dataclass
class WarcRecorder:
    """The WARC files of one task attempt: documents are added as they are stored; `seal()`
    writes, stores and describes the file of the documents a report is about to record."""

    store: Storage
    task: v1.LeasedTask
    agent: str  # the User-Agent the requests were sent with (it names the operator)
    spool: Path
    threads: ThreadPoolExecutor
    fence: Fence | None = None  # the task's lease: the WARC is stored under it, as its documents
    pending: dict[str, _Pending] = field(default_factory=dict)
    sealed: int = 0
    unsent: v1.WarcReport | None = None  # the last WARC sealed, until its report is taken

    async def tee(self, body: Body) -> Spool:
        """Spool the body as it is transferred, for its WARC record (the document step reads
        the decoded chunks; these are the bytes under them)."""
        path = self.spool / f"{SPOOL_PREFIX}{uuid.uuid4().hex}"
        loop = asyncio.get_running_loop()
        handle: BinaryIO = await loop.run_in_executor(self.threads, path.open, "xb")
        spool = Spool(path, handle, self.threads)
        body.wire.copy, body.wire.done = spool.write, spool.close
        return spool

    def add(self, doc_id: str, url: str, body: Body, spool: Spool) -> None:
        """The document is stored: its exchange goes into the next WARC sealed."""
        capture = body.captured()
        if capture is None:  # nothing to say how it was fetched: no record (and no spool kept)
            self.drop(spool)
            return
        self.pending[doc_id] = _Pending(doc_id, url, capture, body.wire, spool.path, hops=body.hops)

    def add_revisit(self, doc_id: str, url: str, body: Body, revisit: Revisit, spool: Spool | None) -> None:
        """A revisit found the document as recorded: a revisit record, no payload."""
        if spool is not None:
            self.drop(spool)
        capture = body.captured()
        if capture is not None:
            self.pending[doc_id] = _Pending(doc_id, url, capture, body.wire, None, revisit, body.hops)

    def drop(self, spool: Spool) -> None:
        handle, spool.handle = spool.handle, None
        if handle is not None:
            self.threads.submit(handle.close)
        self.threads.submit(_unlink, spool.path)

    async def seal(self, doc_ids: list[str]) -> v1.WarcReport | None:
        """Write these documents' records into one WARC, store it, and say what it is (None when
        none of them has a record waiting). The same documents sealed again (their report is sent
        again) get the same WARC."""
        if self.unsent is not None and set(map(str, self.unsent.doc_ids)) <= set(doc_ids):
            return self.unsent
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
            stored = await self.store.put(key, _read(path, loop, self.threads), PutOptions(fence=self.fence))
        finally:
            self.threads.submit(_unlink, path)
            for item in batch:
                if item.payload is not None:
                    self.threads.submit(_unlink, item.payload)
        self.unsent = v1.WarcReport(
            storage_key=stored.storage_key,
            sha256=stored.sha256,
            size=stored.size,
            records=1 + sum(item.records for item in batch),
            doc_ids=[item.doc_id for item in batch],
        )
        return self.unsent

    def sent(self) -> None:
        """The report carrying the last WARC sealed was taken: the next seal writes a new one."""
        self.unsent = None

    def close(self) -> None:
        for item in self.pending.values():
            if item.payload is not None:
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
                _write_exchange(writer, item)
            out.flush()
            os.fsync(out.fileno())
        return path


def _contact(agent: str) -> str:
    """The operator's contact a User-Agent carries, as `(+contact)`."""
    start = agent.find("(+")
    return agent[start + 2 : agent.find(")", start)] if start >= 0 and ")" in agent[start:] else ""


def _write_hop(writer: Sha256Writer, hop: Hop) -> None:
    """A redirect followed: its request, and its response as received (status, headers, body)."""
    date = datetime_to_iso_date(hop.fetched_at.replace(tzinfo=None), use_micros=True)
    common = {"WARC-Target-URI": hop.url, "WARC-Date": date}
    if hop.server_ip:
        common["WARC-IP-Address"] = hop.server_ip
    line, sent = hop.wire.request
    request = writer.create_warc_record(
        hop.url, "request", payload=_empty(), length=0,
        http_headers=StatusAndHeaders(line, sent, is_http_request=True), warc_headers_dict=common,
    )  # fmt: skip
    headers = [(n, v) for n, v in hop.wire.headers if n.lower() != "transfer-encoding"]
    protocol, _, status = hop.wire.status.partition(" ")
    response = writer.create_warc_record(
        hop.url, "response", payload=io.BytesIO(hop.body), length=len(hop.body),
        http_headers=StatusAndHeaders(status, headers, protocol=protocol),
        warc_headers_dict=common | {"WARC-Concurrent-To": request.rec_headers.get_header("WARC-Record-ID")},
    )  # fmt: skip
    writer.write_record(request)
    writer.write_record(response)


def _write_exchange(writer: Sha256Writer, item: _Pending) -> None:
    for hop in item.hops:
        _write_hop(writer, hop)
    capture, wire = item.capture, item.wire
    target = capture.final_url or item.url
    date = datetime_to_iso_date(
        (capture.fetched_at or datetime.now(UTC)).replace(tzinfo=None), use_micros=True
    )
    common = {"WARC-Target-URI": target, "WARC-Date": date}
    if capture.server_ip:
        common["WARC-IP-Address"] = capture.server_ip
    line, sent = wire.request
    request_headers = StatusAndHeaders(line, sent, is_http_request=True)
    request = writer.create_warc_record(
        target, "request", payload=_empty(), length=0, http_headers=request_headers, warc_headers_dict=common
    )
    # As received, but for the transfer coding, which is undone in the payload below.
    headers = [(name, value) for name, value in wire.headers if name.lower() != "transfer-encoding"]
    protocol, _, status = wire.status.partition(" ")
    response_headers = StatusAndHeaders(status, headers, protocol=protocol)
    concurrent = {"WARC-Concurrent-To": request.rec_headers.get_header("WARC-Record-ID")}
    if item.revisit is not None or item.payload is None:
        writer.write_record(request)
        writer.write_record(_revisit(writer, target, item.revisit, response_headers, common | concurrent))
        return
    size = item.payload.stat().st_size
    with item.payload.open("rb") as payload:
        response = writer.create_warc_record(
            target,
            "response",
            payload=payload,
            length=size,
            http_headers=response_headers,
            warc_headers_dict=common | concurrent,
        )
        writer.write_record(request)
        writer.write_record(response)


def _revisit(
    writer: Sha256Writer,
    target: str,
    revisit: Revisit | None,
    headers: StatusAndHeaders,
    warc: dict[str, str],
) -> Any:
    """The revisit record: the answer's status line and headers, no payload, and what it refers to."""
    said = revisit or Revisit(WARC_NOT_MODIFIED, target, None, None)
    fields = warc | {"WARC-Profile": said.profile, "WARC-Refers-To-Target-URI": said.refers_to_uri}
    if said.refers_to_date:
        fields["WARC-Refers-To-Date"] = said.refers_to_date
    if said.digest:
        fields["WARC-Payload-Digest"] = "sha256:" + base64.b32encode(bytes.fromhex(said.digest)).decode()
    return writer.create_warc_record(
        target, "revisit", payload=_empty(), length=0, http_headers=headers, warc_headers_dict=fields
    )


def _empty() -> Any:
    return io.BytesIO(b"")


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
