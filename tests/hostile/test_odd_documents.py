"""One odd document never sinks a task, and a block page served with 200 is never the document.

A real worker (in-process, real gate and PostgreSQL) runs one id_range task of six documents
against an origin where one document comes with a Content-Type header that is not UTF-8, one
with an over-long header, one as a 200 HTML "too many requests" page (as registries answer a
throttled fleet), one as an HTML page behind a BOM without any Content-Type; the others are
plain. The task's single attempt must complete with every good document recorded; the odd
headers are cleaned away, and the HTML pages are failed, never stored.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from client.bodies import refusal
from conftest import Gate
from protocol.params import ContentRules
from storage.local import LocalStorage
from worker_harness import id_range_job, in_process_worker

BLOCK_PAGE = (
    b"<!DOCTYPE html><html><title>429</title><body>Too many requests. Solve the captcha.</body></html>"
)


def body_of(doc_id: int) -> bytes:
    return f"document {doc_id} ".encode() * 50


async def _serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Raw HTTP/1.1, so a header can carry bytes no HTTP library would write."""
    request = await reader.readuntil(b"\r\n\r\n")
    doc_id = int(request.split(b" ")[1].rsplit(b"/", 1)[1].split(b".")[0])
    body, content_type = body_of(doc_id), b"application/octet-stream"
    if doc_id == 2:
        content_type = b"application/\xff\xfeoctet"  # not UTF-8
    elif doc_id == 3:
        content_type = b"application/" + b"x" * 500  # past the protocol's 200 characters
    elif doc_id == 4:
        body, content_type = BLOCK_PAGE, b"text/html; charset=utf-8"
    elif doc_id == 5:
        body, content_type = b"\xef\xbb\xbf  \n" + BLOCK_PAGE, b""
    head = b"HTTP/1.1 200 OK\r\n" + (b"Content-Type: " + content_type + b"\r\n" if content_type else b"")
    writer.write(head + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)
    await writer.drain()
    writer.close()


@pytest.fixture
async def origin() -> AsyncIterator[str]:
    server = await asyncio.start_server(_serve, "127.0.0.1", 0)
    yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    server.close()
    await server.wait_closed()


async def test_odd_documents_fail_alone(gate: Gate, origin: str, tmp_path: Path) -> None:
    key = (await gate.register("odd"))["X-API-Key"]
    await id_range_job(gate, origin + "/doc/{id}.bin", 6, chunk_size=10, max_attempts=1)
    async with in_process_worker(
        gate, key, LocalStorage(tmp_path / "store"), retries=0, timeout=10
    ) as worker:
        await asyncio.wait_for(worker.run(), 60)

    (task,) = await gate.sql("SELECT status, documents_downloaded, documents_failed FROM tasks")
    assert (task["status"], task["documents_downloaded"], task["documents_failed"]) == ("completed", 4, 2)
    rows = await gate.sql("SELECT doc_id, sha256, content_type FROM documents ORDER BY doc_id")
    assert [r["doc_id"] for r in rows] == ["1", "2", "3", "6"]
    assert all(r["sha256"] == hashlib.sha256(body_of(int(r["doc_id"]))).hexdigest() for r in rows)
    assert {r["doc_id"]: r["content_type"] for r in rows}["2"] is None  # not UTF-8: dropped, not mangled
    assert {r["doc_id"]: r["content_type"] for r in rows}["3"] is None  # past the bound: dropped
    failures = await gate.sql("SELECT doc_id, error FROM document_failures ORDER BY doc_id")
    assert [f["doc_id"] for f in failures] == ["4", "5"] and all("HTML" in f["error"] for f in failures)
    assert (
        not (tmp_path / "store" / "0" / "4.bin").exists()
        and not (tmp_path / "store" / "0" / "5.bin").exists()
    )


@pytest.mark.parametrize(
    ("ext", "content_type", "first", "params", "refused"),
    [
        (".pdf", "text/html; charset=utf-8", b"<html>", {}, True),
        (".pdf", None, b"\n\n<!DOCTYPE HTML>", {}, True),
        (".pdf", "application/pdf", b"%PDF-1.7", {}, False),  # control
        (".html", "text/html", b"<html>", {}, False),  # control: an HTML document is HTML
        ("", "text/html", b"<html>", {}, False),  # nothing expected: nothing refused
        (".tzb", "application/octet-stream", b"\x1f\x8b", {}, False),  # control
        (".bin", "image/png", b"\x89PNG", {"expect_content_type": ["image/*"]}, False),
        (".bin", "text/plain", b"hello", {"expect_content_type": ["image/*"]}, True),
        (".bin", "text/html", b"<html>", {"expect_content_type": ["*/*"]}, False),
    ],
)
def test_the_body_rule(
    ext: str, content_type: str | None, first: bytes, params: dict[str, object], refused: bool
) -> None:
    got = refusal(ext, content_type, first, ContentRules.model_validate(params))
    assert (got is not None) is refused
    assert got is None or got.code in ("blocked", "wrong_type")
