"""Clients that lie about what their task contains, as rows of data, each beside its control.

A client holding any lease used to be able to record, fail or upload any doc_id — another job's,
another task's — and the archive served what it planted as genuine. Now every report and upload
is checked against the task it is fenced by: an id_range task's range or ids, a urls task's list,
and the URL each document came from against the task's hosts (a search task's listing host and
`document_hosts`). A lie is refused whole (422 not_in_task) and changes nothing.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import pytest

from conftest import Gate
from storage.keys import document_key

BODY = b"planted bytes"
SHA = hashlib.sha256(BODY).hexdigest()


def stored(doc_id: str, ext: str = ".txt", url: str | None = None) -> dict[str, Any]:
    return {"doc_id": doc_id, "storage_key": document_key(doc_id, ext, shard_size=50_000), "sha256": SHA,
            "size": len(BODY)} | ({"url": url} if url else {})  # fmt: skip


def failed(doc_id: str) -> dict[str, Any]:
    return {"doc_id": doc_id, "status": "failed", "error": "HTTP 404"}


@dataclass(frozen=True)
class Lie:
    name: str
    source: str  # the leased task's source
    reports: list[dict[str, Any]]  # documents of a progress report
    accepted: bool  # the control rows are the truth


RANGE = {"url_template": "https://registry.example/{id}", "start_id": 100, "count": 10, "ext": ".txt"}
IDS = {"url_template": "https://registry.example/{id}", "ids": ["7", "x-9"], "ext": ".txt"}
URLS = {"urls": [{"doc_id": "a-1", "url": "https://registry.example/a-1.txt"}], "ext": ".txt"}
SEARCH = {"listing_url": "https://registry.example/search?page={page}"}
SEARCH_CDN = SEARCH | {"document_hosts": ["files.example.net", "*.cdn.example"]}
PARAMS = {
    "range": ("id_range", RANGE),
    "ids": ("id_range", IDS),
    "urls": ("urls", URLS),
    "search": ("search", SEARCH),
    "search+hosts": ("search", SEARCH_CDN),
    "search, client's listing": ("search", {}),
}
R = "https://registry.example/"
LIES = [
    Lie("control: a document of the range", "range", [stored("105")], True),
    Lie("control: a failure in the range", "range", [failed("109")], True),
    Lie("another job's id", "range", [stored("205")], False),
    Lie("one past the range", "range", [stored("110")], False),
    Lie("one before the range", "range", [stored("99")], False),
    Lie("a non-canonical spelling of an id in range", "range", [stored("0105")], False),
    Lie("a lie hidden among true reports", "range", [stored("101"), stored("500"), stored("102")], False),
    Lie("a failure outside the range (refetch-failed would chase it)", "range",
        [failed("300")], False),
    Lie("control: an id of the list", "ids", [stored("x-9")], True),
    Lie("an id not in the list", "ids", [stored("8")], False),
    Lie("control: a url of the task", "urls", [stored("a-1")], True),
    Lie("a doc_id not among the urls", "urls", [stored("a-2")], False),
    # The URL a document was fetched from must be on the task's hosts (what a search task's
    # listing is on, or names in document_hosts): the gate knows no search task's doc_ids.
    Lie("control: a range document from the template's host", "range", [stored("105", url=R + "105")],
        True),
    Lie("a range document reported from another host", "range",
        [stored("105", url="https://evil.example/105")], False),
    Lie("control: a search document on the listing's host", "search", [stored("d1", url=R + "d/d1.txt")],
        True),
    Lie("control: on a subdomain of the listing's host", "search",
        [stored("d1", url="https://www.registry.example/d1.txt")], True),
    Lie("control: the host in another case, with a final dot", "search",
        [stored("d1", url="HTTPS://Registry.Example./d1.txt")], True),
    Lie("a search document from another host", "search",
        [stored("d1", url="https://evil.example/d1.txt")], False),
    Lie("a host that only ends like the listing's", "search",
        [stored("d1", url="https://evilregistry.example/d1.txt")], False),
    Lie("the listing's host as userinfo", "search",
        [stored("d1", url="https://registry.example@evil.example/d1.txt")], False),
    Lie("a search document without a host", "search", [stored("d1", url="file:///etc/passwd")], False),
    Lie("a failure reported from another host", "search",
        [failed("d2") | {"url": "https://evil.example/d2"}], False),
    Lie("control: on a host the task names", "search+hosts",
        [stored("d1", url="https://files.example.net/d1.txt"), stored("d2", url="https://a.cdn.example/d2")],
        True),
    Lie("a wildcard does not cover the bare domain", "search+hosts",
        [stored("d1", url="https://cdn.example/d1.txt")], False),
    Lie("control: a search whose listing the gate does not know takes any host", "search, client's listing",
        [stored("d1", url="https://anywhere.example/d1.txt")], True),
]  # fmt: skip

SNAPSHOT = "SELECT (SELECT count(*) FROM documents), (SELECT count(*) FROM document_failures)"


async def _leased(gate: Gate, kind: str) -> tuple[dict[str, str], dict[str, Any]]:
    source, params = PARAMS[kind]
    client = await gate.register()
    r = await gate.http.post(
        "/api/v1/tasks/create", headers=gate.admin, json={"source": source, "params": params}
    )
    assert r.status_code == 201, r.text
    return client, (await gate.lease(client)).json()


@pytest.mark.parametrize("lie", LIES, ids=[lie.name for lie in LIES])
async def test_a_report_outside_the_task_is_refused_whole(gate: Gate, lie: Lie) -> None:
    client, task = await _leased(gate, lie.source)
    before = await gate.sql(SNAPSHOT)
    body = {"lease_token": task["lease_token"], "documents": lie.reports}
    r = await gate.http.post(f"/api/v1/tasks/{task['task_id']}/progress", headers=client, json=body)
    if lie.accepted:
        assert r.status_code == 200, r.text
        assert await gate.sql(SNAPSHOT) != before
        return
    assert (r.status_code, r.json()["code"]) == (422, "not_in_task"), r.text
    assert await gate.sql(SNAPSHOT) == before
    complete = {"task_id": task["task_id"], "lease_token": task["lease_token"], "documents": lie.reports}
    c = await gate.http.post("/api/v1/tasks/complete", headers=client, json=complete)
    assert (c.status_code, c.json()["code"]) == (422, "not_in_task"), c.text
    batch = await gate.http.post(
        "/api/v1/tasks/complete/batch", headers=client, json={"completions": [complete]}
    )
    assert (batch.status_code, batch.json()["code"]) == (422, "not_in_task"), batch.text
    status = await gate.sql("SELECT status FROM tasks WHERE task_id = $1", task["task_id"])
    assert status[0][0] == "assigned" and await gate.sql(SNAPSHOT) == before


@pytest.mark.parametrize(("doc_id", "accepted"), [("105", True), ("205", False), ("0105", False)])
async def test_an_upload_outside_the_task_is_refused(gate: Gate, doc_id: str, accepted: bool) -> None:
    client, task = await _leased(gate, "range")
    r = await gate.http.put(
        f"/api/v1/documents/{doc_id}/raw?ext=.txt&task_id={task['task_id']}",
        headers=client | {"X-Lease-Token": task["lease_token"]},
        content=BODY,
    )
    key = document_key(doc_id, ".txt", shard_size=50_000)
    head = await gate.http.head(f"/api/v1/storage/objects/{key}", headers=gate.admin)
    if accepted:
        assert r.status_code == 201 and head.status_code == 200
    else:
        assert (r.status_code, r.json()["code"]) == (422, "not_in_task"), r.text
        assert head.status_code == 404


async def test_a_recorded_document_is_never_re_attributed(gate: Gate) -> None:
    """Two tasks that both contain a document (overlapping jobs): the first record wins and keeps
    naming the task and client that vouched for it."""
    first_client, first = await _leased(gate, "range")
    body = {"lease_token": first["lease_token"], "documents": [stored("105")]}
    assert (
        await gate.http.post(f"/api/v1/tasks/{first['task_id']}/progress", headers=first_client, json=body)
    ).is_success
    second_client, second = await _leased(gate, "range")
    other = dict(stored("105"), sha256="0" * 64, size=1, status="skipped")
    body = {"lease_token": second["lease_token"], "documents": [other]}
    assert (
        await gate.http.post(f"/api/v1/tasks/{second['task_id']}/progress", headers=second_client, json=body)
    ).is_success
    (row,) = await gate.sql("SELECT task_id::text, sha256 FROM documents WHERE doc_id = '105'")
    assert (row["task_id"], row["sha256"]) == (first["task_id"], SHA)
