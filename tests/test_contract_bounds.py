"""Bounds shared: the client clips or refuses, per field, exactly what the gate would refuse.

Hypothesis draws raw report fields — valid, over the bound, with NULs, odd ids — and each is judged
twice, by the real gate (a progress report of it, real PostgreSQL) and by the client's pre-send
path (`DocumentReport.of_stored` / `of_failure`, `is_doc_id`, `clip`: what the worker and GateAPI
call). The property: whatever the gate accepts, the client sends unchanged; whatever the client
refuses, the gate refuses; whatever the client sends after clipping, the gate accepts. So no value
the gate would reject ever leaves the client inside a batch (and sinks the whole batch with it).
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from conftest import Gate
from protocol import v1
from protocol.failures import FailureCode
from storage.keys import document_key

SETTINGS = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
    database=None,
)
texts = st.one_of(
    st.text(max_size=40), st.text(min_size=1990, max_size=2010), st.just("a\x00b"), st.just("a\udcffb")
)
doc_ids = st.one_of(
    st.from_regex(r"[A-Za-z0-9._-]{1,128}", fullmatch=True),
    st.integers(-(10**6), 10**15).map(str),
    st.text(max_size=140),
    st.sampled_from([".", "..", "", "a/b", "x" * 129, "é", "a\x00"]),
)
shas = st.one_of(st.from_regex(r"[0-9a-f]{64}", fullmatch=True), st.text(max_size=70))
sizes = st.one_of(st.integers(0, 10**9), st.integers(-5, -1), st.just(2**62), st.just(2**62 + 1))
content_types = st.one_of(
    st.none(), st.text(max_size=30), st.text(min_size=195, max_size=205), st.just("t\x00")
)
errors = st.one_of(
    st.text(max_size=30), st.text(min_size=3990, max_size=4010), st.sampled_from(["e\x00", "", "e\udcff"])
)


async def _leased(gate: Gate) -> tuple[dict[str, str], dict[str, Any]]:
    client = await gate.register()
    await gate.create()
    return client, (await gate.lease(client)).json()


async def _gate_accepts(
    gate: Gate, client: dict[str, str], task: dict[str, Any], doc: dict[str, Any]
) -> bool:
    body = {"lease_token": task["lease_token"], "documents": [doc]}
    # json.dumps escapes a lone surrogate (\udcff) as JSON allows; the gate sees what it decodes to.
    r = await gate.http.post(
        f"/api/v1/tasks/{task['task_id']}/progress",
        headers=client | {"Content-Type": "application/json"},
        content=json.dumps(body),
    )
    assert r.status_code in (200, 422), r.text[:300]
    if r.status_code == 422:
        assert r.json()["code"] in ("invalid_field", "wrong_storage_key"), r.text[:300]
    return r.status_code == 200


def _key(doc_id: str) -> str:
    try:
        return document_key(doc_id, ".txt", shard_size=50_000)
    except Exception:  # noqa: BLE001 - an id no key can be made for: any key will do, it is refused anyway
        return "0/x.txt"


@pytest.fixture
async def leased(gate: Gate) -> tuple[Gate, dict[str, str], dict[str, Any]]:
    client, task = await _leased(gate)
    return gate, client, task


@SETTINGS
@given(doc_id=doc_ids, url=texts, error=errors)
async def test_failure_reports(leased: Any, doc_id: str, url: str, error: str) -> None:
    gate, client, task = leased
    raw = {"doc_id": doc_id, "status": "failed", "url": url, "error": error}
    gate_ok = await _gate_accepts(gate, client, task, raw)
    try:
        sent = (
            v1.DocumentReport.of_failure(doc_id, url=url, code=FailureCode.OTHER, error=error)
            if v1.is_doc_id(doc_id)
            else None
        )
    except ValidationError:
        sent = None
    _judged_alike(gate_ok, raw, sent)
    # A failure always goes out (its free text clipped) unless the gate would refuse its very doc_id.
    assert (sent is not None) == v1.is_doc_id(doc_id)
    assert sent is None or await _gate_accepts(gate, client, task, sent.model_dump(mode="json"))


@SETTINGS
@given(doc_id=doc_ids, url=texts, sha256=shas, size=sizes, content_type=content_types)
async def test_stored_reports(
    leased: Any, doc_id: str, url: str, sha256: str, size: int, content_type: str | None
) -> None:
    gate, client, task = leased
    key = _key(doc_id)
    stored = v1.StoredDocument(
        storage_key=key,
        storage_url=f"file:///srv/store/{key}",
        sha256=sha256,
        size=size,
        content_type=content_type,
    )
    raw = stored.model_dump() | {"doc_id": doc_id, "url": url, "status": "stored"}
    gate_ok = await _gate_accepts(gate, client, task, raw)
    try:
        status = v1.DocumentStatus.STORED
        sent = (
            v1.DocumentReport.of_stored(doc_id, stored, url=url, status=status)
            if v1.is_doc_id(doc_id)
            else None
        )
    except ValidationError:
        sent = None
    _judged_alike(gate_ok, raw, sent)
    # Stored with good proof (id, sha256, size): it always goes out, whatever its URL or type say.
    proof = v1.is_doc_id(doc_id) and re.fullmatch(v1.SHA256_PATTERN, sha256) and 0 <= size <= v1.MAX_SIZE
    assert (sent is not None) == bool(proof), raw
    assert sent is None or await _gate_accepts(gate, client, task, sent.model_dump(mode="json"))


def _judged_alike(gate_ok: bool, raw: dict[str, Any], sent: v1.DocumentReport | None) -> None:
    if gate_ok:  # what the gate takes, the client sends as it is
        assert sent is not None, raw
        assert {k: v for k, v in sent.model_dump(mode="json").items() if k in raw} == raw
    elif sent is None:  # the client refused it: so does the gate (checked above: gate_ok is False)
        return
    else:  # the client changed it (clipped free text) to something the gate takes (checked by the caller)
        assert sent.model_dump(mode="json") != raw


@SETTINGS
@given(error=errors)
async def test_fail_reasons(leased: Any, error: str) -> None:
    gate, client, task = leased
    path = f"/api/v1/tasks/{task['task_id']}/fail"
    # Judged as the request body only: a 422 changes nothing; a 200 would end the lease, so the
    # gate's verdict comes from the model the route validates with.
    try:
        v1.TaskFail(lease_token=task["lease_token"], error=error)
        gate_ok = True
    except ValidationError:
        gate_ok = False
    sent = v1.clip(error, v1.MAX_TEXT) or "no reason given"  # what GateAPI.fail sends
    if gate_ok:
        assert sent == error
    probe = await gate.http.post(path, headers=client, json={"lease_token": "not-a-token", "error": sent})
    assert probe.status_code == 422 and all(e["loc"][-1] == "lease_token" for e in probe.json()["detail"])
