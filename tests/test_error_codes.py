"""Errors as data: every error the gate answers carries its documented code, and both of the
gate's clients (the worker's GateAPI and `--storage gate`) read the code, not the status.

Each row is a real request against a real gate (in-process ASGI, real PostgreSQL) with the
status and code it must get, and what each client must make of the reply. Errors no request
can provoke from outside (the database or storage failing, a bug) are rendered by the gate's
own exception handler from the exception the gate raises for them.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from fastapi import Request

from client import errors as client_errors
from client.gate import ERRORS as CLIENT_ERRORS
from client.gate import GateAPI, gate_error
from conftest import Gate
from protocol import paths, v1
from protocol.errors import ErrorBody, ErrorCode
from protocol.failures import FailureCode
from server import errors as gate_errors
from server.app import _error
from storage import errors as storage_errors
from storage.base import Fence, PutOptions, from_bytes
from storage.gate import ERRORS as STORAGE_ERRORS
from storage.gate import GateStorage
from storage.gate import _error as storage_error

C = ErrorCode
Send = Callable[[Gate, dict[str, Any]], Awaitable[httpx.Response]]


@dataclass(frozen=True)
class Row:
    code: ErrorCode
    status: int
    send: Send
    client: type[client_errors.ClientError]
    store: type[storage_errors.StorageError]


async def _setup(gate: Gate) -> dict[str, Any]:
    """A client holding a leased task, and the ids a row may need."""
    client = await gate.register()
    task = await gate.create()
    leased = (await gate.lease(client)).json()
    assert leased["task_id"] == task["task_id"]
    return {"client": client, "task": leased}


def _req(
    method: str,
    path: str,
    who: str = "admin",
    *,
    json_body: Any = None,
    content: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> Send:
    """A request as `who`; in a JSON body, {task} and {token} stand for the leased task's."""

    async def send(gate: Gate, ctx: dict[str, Any]) -> httpx.Response:
        sent = {"admin": gate.admin, "client": ctx["client"], "nobody": {}}[who] | (headers or {})
        body = content
        if json_body is not None:
            text = json.dumps(json_body).replace("{task}", ctx["task"]["task_id"])
            body = text.replace("{token}", ctx["task"]["lease_token"]).encode()
            sent |= {"Content-Type": "application/json"}
        return await gate.http.request(method, path, headers=sent, content=body)

    return send


async def _stored_twice(gate: Gate, ctx: dict[str, Any]) -> httpx.Response:
    url = paths.url(paths.DOCUMENT_RAW, doc_id=7) + "?ext=.txt"
    assert (await gate.http.put(url, headers=gate.admin, content=b"one")).status_code == 201
    return await gate.http.put(url, headers=gate.admin, content=b"two")


async def _cancel_completed(gate: Gate, ctx: dict[str, Any]) -> httpx.Response:
    task = ctx["task"]
    body = {"task_id": task["task_id"], "lease_token": task["lease_token"]}
    assert (await gate.http.post(paths.url(paths.TASK_COMPLETE), headers=ctx["client"], json=body)).is_success
    return await gate.http.post(f"/api/v1/tasks/{task['task_id']}/cancel", headers=gate.admin)


async def _key_twice(gate: Gate, ctx: dict[str, Any]) -> httpx.Response:
    body = {"client_name": "twin", "api_key": "k" * 40}
    url = paths.url(paths.CLIENT_REGISTER)
    assert (await gate.http.post(url, headers=gate.admin, json=body)).status_code == 201
    return await gate.http.post(url, headers=gate.admin, json=body)


async def _stale_token(gate: Gate, ctx: dict[str, Any]) -> httpx.Response:
    body = {"task_id": ctx["task"]["task_id"], "lease_token": str(uuid.uuid4())}
    return await gate.http.post(paths.url(paths.TASK_COMPLETE), headers=ctx["client"], json=body)


async def _key_reused(gate: Gate, ctx: dict[str, Any]) -> httpx.Response:
    url = paths.url(paths.TASK_CREATE)
    body = {"idempotency_key": "once", "search_params": {"a": 1}}
    assert (await gate.http.post(url, headers=gate.admin, json=body)).status_code == 201
    return await gate.http.post(url, headers=gate.admin, json=body | {"search_params": {"a": 2}})


async def _over_the_cap(gate: Gate, ctx: dict[str, Any]) -> httpx.Response:
    """A key whose own cap is 1, holding one lease, asks for another."""
    reply = await gate.http.post(
        paths.url(paths.CLIENT_REGISTER), headers=gate.admin, json={"client_name": "capped", "max_leases": 1}
    )
    capped = {"X-API-Key": reply.json()["api_key"]}
    for _ in range(2):
        await gate.create()
    assert (await gate.lease(capped)).status_code == 200
    return await gate.lease(capped)


async def _after_goodbye(gate: Gate, ctx: dict[str, Any]) -> httpx.Response:
    """A process that said goodbye asks for work again."""
    process = ctx["client"] | {"X-Session-Id": "gone"}
    assert (await gate.http.delete("/api/v1/session", headers=process)).status_code == 200
    await gate.create()
    return await gate.lease(process, wait=20)


async def _stray_report(gate: Gate, ctx: dict[str, Any]) -> httpx.Response:
    params = {"url_template": "https://h/{id}", "start_id": 100, "count": 5}
    await gate.http.post(
        paths.url(paths.TASK_CREATE), headers=gate.admin, json={"source": "id_range", "params": params}
    )
    task = (await gate.lease(ctx["client"])).json()
    body = {"task_id": task["task_id"], "documents": [{"doc_id": "7", "status": "failed", "error": "x"}]}
    return await gate.http.post(paths.url(paths.TASK_COMPLETE), headers=ctx["client"], json=body)


def _raw(who: str, content: bytes, **headers: str) -> Send:
    return _req("PUT", "/api/v1/documents/9/raw?ext=.txt", who, content=content, headers=headers)


UNKNOWN = "00000000-0000-4000-8000-000000000000"
WRONG_KEY_REPORT = {
    "task_id": "{task}",
    "lease_token": "{token}",
    "documents": [{"doc_id": 5, "storage_key": "0/6.txt", "sha256": "0" * 64, "size": 1}],
}
CE, SE = client_errors, storage_errors
ROWS = [
    Row(C.UNAUTHORIZED, 401, _req("GET", "/api/v1/tasks", "nobody"), CE.KeyRejected, SE.WriteRefused),
    Row(C.FORBIDDEN, 403, _req("GET", "/api/v1/tasks", "client"), CE.KeyRejected, SE.WriteRefused),
    Row(C.NOT_YOUR_TASK, 404, _req("GET", f"/api/v1/tasks/{UNKNOWN}"), CE.NotYourTask, SE.StaleLease),
    Row(
        C.CLIENT_NOT_FOUND, 404, _req("DELETE", f"/api/v1/clients/{UNKNOWN}"), CE.GateRefused, SE.WriteRefused
    ),
    Row(C.JOB_NOT_FOUND, 404, _req("GET", f"/api/v1/jobs/{UNKNOWN}"), CE.GateRefused, SE.WriteRefused),
    Row(C.SOURCE_NOT_FOUND, 404, _req("GET", "/api/v1/sources/nothing"), CE.GateRefused, SE.WriteRefused),
    Row(C.DOCUMENT_NOT_FOUND, 404, _req("GET", "/api/v1/documents/404"), CE.GateRefused, SE.WriteRefused),
    Row(
        C.OBJECT_MISSING,
        404,
        _req("GET", "/api/v1/storage/objects/0/1.txt"),
        CE.GateRefused,
        SE.ObjectMissing,
    ),
    Row(C.ROUTE_NOT_FOUND, 404, _req("GET", "/api/v1/nothing-here"), CE.InvalidRequest, SE.WriteRefused),
    Row(
        C.METHOD_NOT_ALLOWED, 405, _req("DELETE", "/api/v1/tasks/create"), CE.InvalidRequest, SE.WriteRefused
    ),
    Row(C.LEASE_LOST, 409, _stale_token, CE.LeaseLost, SE.StaleLease),
    Row(C.ALREADY_STORED, 409, _stored_twice, CE.GateRefused, SE.AlreadyStored),
    Row(C.INVALID_STATE, 409, _cancel_completed, CE.GateRefused, SE.WriteRefused),
    Row(C.KEY_IN_USE, 409, _key_twice, CE.GateRefused, SE.WriteRefused),
    Row(C.IDEMPOTENCY_CONFLICT, 409, _key_reused, CE.GateRefused, SE.WriteRefused),
    Row(C.LEASE_CAP, 409, _over_the_cap, CE.GateRefused, SE.WriteRefused),
    Row(C.SESSION_ENDED, 409, _after_goodbye, CE.GateRefused, SE.WriteRefused),
    Row(
        C.TOO_LARGE,
        413,
        _req("POST", "/api/v1/tasks/create", content=b"x" * 1_100_000),
        CE.InvalidRequest,
        SE.TooLarge,
    ),
    Row(
        C.INVALID_FIELD,
        422,
        _req("POST", "/api/v1/tasks/create", json_body={"start_page": 0}),
        CE.InvalidRequest,
        SE.WriteRefused,
    ),
    Row(
        C.WRONG_STORAGE_KEY,
        422,
        _req("POST", "/api/v1/tasks/complete", "client", json_body=WRONG_KEY_REPORT),
        CE.InvalidRequest,
        SE.WriteRefused,
    ),
    Row(C.INVALID_KEY, 422, _req("GET", "/api/v1/storage/objects/a//b"), CE.InvalidRequest, SE.KeyRefused),
    Row(C.LEASE_REQUIRED, 422, _raw("client", b"x"), CE.InvalidRequest, SE.WriteRefused),
    Row(C.NOT_IN_TASK, 422, _stray_report, CE.InvalidRequest, SE.WriteRefused),
    Row(
        C.UNSUPPORTED_ENCODING,
        422,
        _raw("admin", b"x", **{"Content-Encoding": "br"}),
        CE.InvalidRequest,
        SE.WriteRefused,
    ),
    Row(
        C.INVALID_HARVEST,
        422,
        _req(
            "POST",
            "/api/v1/jobs",
            json_body={
                "source": "search",
                "partition": {"dates": {"from": "2024-01-01", "to": "2024-01-31"}},
            },
        ),
        CE.GateRefused,
        SE.WriteRefused,
    ),
    Row(
        C.JOB_TOO_LARGE,
        422,
        _req(
            "POST",
            "/api/v1/jobs",
            json_body={
                "source": "id_range",
                "chunk_size": 1,
                "params": {"url_template": "https://h/{id}", "start_id": 1, "count": 10_000_000},
            },
        ),
        CE.GateRefused,
        SE.WriteRefused,
    ),
    Row(
        C.INVALID_BODY,
        400,
        _req("POST", "/api/v1/tasks/create", content=b'{"a": "\xff"}'),
        CE.InvalidRequest,
        SE.WriteRefused,
    ),
    Row(C.INVALID_CURSOR, 400, _req("GET", "/api/v1/tasks?cursor=x"), CE.InvalidRequest, SE.WriteRefused),
    Row(
        C.CHECKSUM_MISMATCH,
        400,
        _raw("admin", b"abc", **{paths.SHA256_HEADER: hashlib.sha256(b"xyz").hexdigest()}),
        CE.GateRefused,
        SE.ChecksumMismatch,
    ),
    Row(
        C.CORRUPT_GZIP,
        400,
        _raw("admin", gzip.compress(b"a whole document")[:-12], **{"Content-Encoding": "gzip"}),
        CE.GateRefused,
        SE.CorruptGzip,
    ),
]

# What no request from outside can provoke: the gate's handler renders the exception it raises.
RAISED = [
    (
        gate_errors.DatabaseUnavailable(),
        C.DATABASE_UNAVAILABLE,
        503,
        CE.GateUnavailable,
        SE.StorageUnavailable,
    ),
    (
        SE.StorageUnavailable("bucket down"),
        C.STORAGE_UNAVAILABLE,
        503,
        CE.GateUnavailable,
        SE.StorageUnavailable,
    ),
    (SE.StorageTimeout("slow"), C.STORAGE_TIMEOUT, 504, CE.GateUnavailable, SE.StorageTimeout),
    (gate_errors.DocgateError("a bug"), C.INTERNAL_ERROR, 500, CE.GateUnavailable, SE.StorageUnavailable),
    (gate_errors.UploadInterrupted(), C.UPLOAD_INTERRUPTED, 400, CE.GateRefused, SE.WriteRefused),
]


def test_every_code_has_a_row_and_both_clients_know_it() -> None:
    covered = {r.code for r in ROWS} | {code for _, code, *_ in RAISED}
    assert covered == set(ErrorCode)
    assert set(CLIENT_ERRORS) == set(ErrorCode)
    assert {status for status, _ in gate_errors.ERRORS.values()} <= {
        400,
        401,
        403,
        404,
        409,
        413,
        422,
        500,
        503,
        504,
    }


@pytest.mark.parametrize("row", ROWS, ids=[r.code.value for r in ROWS])
async def test_the_gate_answers_each_error_with_its_code(gate: Gate, row: Row) -> None:
    ctx = await _setup(gate)
    reply = await row.send(gate, ctx)

    assert reply.status_code == row.status, reply.text[:300]
    body = ErrorBody.model_validate_json(reply.content)
    assert body.code is row.code and body.detail
    assert type(gate_error(reply)) is row.client
    assert type(storage_error(reply)) is row.store


@pytest.mark.parametrize("raised", RAISED, ids=[r[1].value for r in RAISED])
async def test_errors_from_inside_are_rendered_with_their_code(raised: tuple[Any, ...]) -> None:
    exc, code, status, client_kind, store_kind = raised
    scope = {"type": "http", "method": "GET", "path": "/", "headers": [], "query_string": b""}
    rendered = await _error(Request(scope), exc)
    reply = httpx.Response(
        rendered.status_code, content=rendered.body, request=httpx.Request("GET", "http://g/")
    )
    assert (reply.status_code, reply.json()["code"]) == (status, code.value)
    assert type(gate_error(reply)) is client_kind
    assert type(storage_error(reply)) is store_kind


@pytest.mark.parametrize(
    ("status", "client_kind", "store_kind"),
    [(502, CE.GateUnavailable, SE.StorageUnavailable), (429, CE.GateUnavailable, SE.StorageUnavailable),
     (409, CE.GateRefused, SE.WriteRefused), (422, CE.GateRefused, SE.WriteRefused)],
)  # fmt: skip
def test_a_reply_without_a_code_is_judged_only_as_reachable_or_not(
    status: int, client_kind: type[Exception], store_kind: type[Exception]
) -> None:
    """A proxy's page (nginx's 502, its 429 from limit_req) carries no code: never a lease_lost."""
    reply = httpx.Response(status, text="<html>nginx</html>", request=httpx.Request("GET", "http://g/"))
    assert type(gate_error(reply)) is client_kind
    assert type(storage_error(reply)) is store_kind


async def test_a_stale_upload_through_the_gate_is_lease_lost_not_already_stored(gate: Gate) -> None:
    """The 409 collision: a refused lease and a taken key were both 409, and `--storage gate` took every
    409 for AlreadyStored (the worker then stat()ed the key and counted a transient failure); every 422
    for KeyRefused (a permanent document failure). Now each is what its code says."""
    client = await gate.register()
    await gate.create()
    task = (await gate.lease(client)).json()
    http = httpx.AsyncClient(transport=gate.transport, base_url="http://gate")
    store = GateStorage("http://gate", client[paths.API_KEY_HEADER], http=http)
    try:
        stale = PutOptions(doc_id="11", ext=".txt", fence=Fence(task["task_id"], str(uuid.uuid4())))
        with pytest.raises(SE.StaleLease):
            await store.put("0/11.txt", from_bytes(b"late"), stale)
        unfenced = PutOptions(doc_id="11", ext=".txt")
        with pytest.raises(SE.WriteRefused) as refused:
            await store.put("0/11.txt", from_bytes(b"no lease"), unfenced)
        assert "lease_required" in refused.value.message
        fenced = PutOptions(doc_id="11", ext=".txt", fence=Fence(task["task_id"], task["lease_token"]))
        assert (await store.put("0/11.txt", from_bytes(b"mine"), fenced)).size == 4
        with pytest.raises(SE.AlreadyStored):
            await store.put("0/11.txt", from_bytes(b"again"), fenced)
    finally:
        await store.close()


async def test_the_worker_api_reads_codes(gate: Gate) -> None:
    client = await gate.register()
    await gate.create()
    api = GateAPI("http://gate", client[paths.API_KEY_HEADER], "s1", transport=gate.transport)
    try:
        leased, _ = await api.lease(1, 0)
        task = leased[0]
        stale = task.model_copy(update={"lease_token": uuid.uuid4()})
        with pytest.raises(CE.LeaseLost):
            await api.complete(stale, v1.Counts(), [], {})
        other = task.model_copy(update={"task_id": uuid.UUID(UNKNOWN)})
        with pytest.raises(CE.NotYourTask):
            await api.fail(other, FailureCode.OTHER, "x", True)
        done = await api.complete(task, v1.Counts(documents_downloaded=1), [], {"ok": True})
        assert done.status is v1.TaskStatus.COMPLETED
    finally:
        await api.close()
    bad = GateAPI("http://gate", "dg_not-a-key", "s2", transport=gate.transport)
    try:
        with pytest.raises(CE.KeyRejected):
            await bad.check()
    finally:
        await bad.close()


def test_the_schema_documents_the_error_shape(gate_app_schema: dict[str, Any]) -> None:
    schemas = gate_app_schema["components"]["schemas"]
    assert set(schemas["ErrorCode"]["enum"]) == {c.value for c in ErrorCode}
    for path, operations in gate_app_schema["paths"].items():
        for method, operation in operations.items():
            default = operation["responses"]["default"]["content"]["application/json"]["schema"]
            assert default == {"$ref": "#/components/schemas/ErrorBody"}, (method, path)


@pytest.fixture
def gate_app_schema(gate: Gate) -> dict[str, Any]:
    app = gate.transport.app
    return app.openapi()  # type: ignore[attr-defined, no-any-return]


def test_store_table_names_only_codes_that_exist() -> None:
    assert set(STORAGE_ERRORS) <= set(ErrorCode)


async def test_a_head_reply_carries_its_code_in_a_header(gate: Gate) -> None:
    """HEAD has no body, so the code also travels in X-Error-Code: a stat of a missing object is
    ObjectMissing (stat answers None), not an unexplained 404."""
    reply = await gate.http.head("/api/v1/storage/objects/0/1.txt", headers=gate.admin)
    assert (reply.status_code, reply.content) == (404, b"")
    assert reply.headers[paths.ERROR_CODE_HEADER] == "object_missing"
    assert type(storage_error(reply)) is SE.ObjectMissing
