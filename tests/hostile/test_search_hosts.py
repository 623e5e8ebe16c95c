"""A search listing that links off the task's hosts: the link is not fetched, and the task's other
documents are recorded.

A registry's search page links to its own documents, but also to whatever it embeds — adverts,
mirrors, a hostile listing's planted links. The gate refuses a report of a search document from
outside the task's hosts (tests/hostile/test_lying_clients.py); the client leaves such a link out
before fetching it, failing it with the reason, so an honest client's report is never refused
whole. The same server answers as 127.0.0.1 and as localhost: two hosts to the rule.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from conftest import Gate
from storage.local import LocalStorage
from worker_harness import in_process_worker


def body_of(doc_id: str) -> bytes:
    return f"registry document {doc_id}\n".encode() * 10


@pytest.fixture
async def registry() -> AsyncIterator[tuple[int, Counter[str]]]:
    served: Counter[str] = Counter()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await reader.readuntil(b"\r\n\r\n")
        path = request.split(b" ")[1].decode()
        port = writer.get_extra_info("sockname")[1]
        if path.startswith("/search"):
            links = (
                '<a href="/doc/d1.txt">one</a> <a href="/doc/d2.txt">two</a> '
                f'<a href="http://localhost:{port}/doc/d3.txt">elsewhere</a>'
            )
            body = (links if "page=1" in path else "no more results").encode()
            kind = b"text/html"
        else:
            doc_id = path.rsplit("/", 1)[1].removesuffix(".txt")
            served[doc_id] += 1
            body, kind = body_of(doc_id), b"text/plain"
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: %s\r\nContent-Length: %d\r\n" % (kind, len(body)))
        writer.write(b"Connection: close\r\n\r\n" + body)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1], served
    server.close()
    await server.wait_closed()


@pytest.mark.parametrize("hosts", [None, ["localhost"]], ids=["listing host only", "control: host named"])
async def test_a_link_off_the_tasks_hosts_is_left_out(
    gate: Gate, registry: Any, tmp_path: Path, hosts: list[str] | None
) -> None:
    port, served = registry
    params: dict[str, Any] = {"listing_url": f"http://127.0.0.1:{port}/search?page={{page}}"}
    if hosts:
        params["document_hosts"] = hosts
    r = await gate.http.post(
        "/api/v1/tasks/create",
        headers=gate.admin,
        json={"params": params, "max_documents": 10, "max_attempts": 1},
    )
    assert r.status_code == 201, r.text
    key = (await gate.register("searcher"))["X-API-Key"]
    async with in_process_worker(
        gate, key, LocalStorage(tmp_path / "store"), retries=0, timeout=10
    ) as worker:
        await asyncio.wait_for(worker.run(), 60)

    (task,) = await gate.sql("SELECT status, documents_downloaded, documents_failed FROM tasks")
    rows = {r["doc_id"]: r["sha256"] for r in await gate.sql("SELECT doc_id, sha256 FROM documents")}
    for doc_id in ("d1", "d2"):
        assert rows[doc_id] == hashlib.sha256(body_of(doc_id)).hexdigest()
    assert task["status"] == "completed"
    if hosts is None:
        assert "d3" not in rows and served == Counter({"d1": 1, "d2": 1})
        (failure,) = await gate.sql("SELECT doc_id, url, error FROM document_failures")
        assert failure["doc_id"] == "d3" and failure["url"] is None
        assert "not on the task's hosts" in failure["error"]
        assert (task["documents_downloaded"], task["documents_failed"]) == (2, 1)
    else:
        assert rows["d3"] == hashlib.sha256(body_of("d3")).hexdigest()
        assert (task["documents_downloaded"], task["documents_failed"]) == (3, 0)
