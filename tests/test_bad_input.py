"""Acceptance 9: every hostile request gets a clear 4xx, never a 5xx, and changes nothing."""

from __future__ import annotations

import json
from typing import Any

import pytest

from bad_input import CASES, Case
from conftest import Gate

SNAPSHOT = """
SELECT (SELECT md5(coalesce(string_agg(t::text, '|' ORDER BY task_id), '')) FROM tasks t),
       (SELECT md5(coalesce(string_agg(c::text, '|' ORDER BY client_id), '')) FROM clients c),
       (SELECT count(*) FROM jobs), (SELECT count(*) FROM task_events),
       (SELECT count(*) FROM admin_keys)
"""


def fill(value: Any, task: dict[str, Any]) -> Any:
    text = json.dumps(value).replace("{task}", task["task_id"]).replace("{token}", task["lease_token"])
    return json.loads(text)


def test_catalogue_is_large_enough() -> None:
    assert len(CASES) >= 30
    assert len({c.name for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
async def test_bad_input(gate: Gate, case: Case) -> None:
    client = await gate.register()
    await gate.create()
    task = (await gate.lease(client)).json()
    headers = {"admin": gate.admin, "client": client, "nobody": {}, "huge-key": {"X-API-Key": "k" * 1000}}[
        case.who
    ]
    path = case.path.replace("{task}", task["task_id"])
    if case.raw:
        content = case.body.replace(b"{task}", task["task_id"].encode()).replace(
            b"{token}", task["lease_token"].encode()
        )
    elif case.body is not None:
        content = json.dumps(fill(case.body, task)).encode()
    else:
        content = None
    before = await gate.sql(SNAPSHOT)

    r = await gate.http.request(
        case.method, path, content=content, headers=headers | {"Content-Type": case.content_type}
    )

    assert r.status_code == case.status, r.text[:500]
    assert r.json()["code"] == case.code, r.text[:500]
    detail = r.json()["detail"]
    assert detail
    if case.mentions:
        assert case.mentions in json.dumps(detail, ensure_ascii=False), detail
    assert await gate.sql(SNAPSHOT) == before


async def test_chunked_body_over_the_limit_is_refused(gate: Gate) -> None:
    async def chunks() -> Any:
        for _ in range(40):
            yield b"x" * 50_000

    before = await gate.sql(SNAPSHOT)
    r = await gate.http.post(
        "/api/v1/tasks/create", headers=gate.admin | {"Content-Type": "application/json"}, content=chunks()
    )
    assert r.status_code == 413
    assert await gate.sql(SNAPSHOT) == before
