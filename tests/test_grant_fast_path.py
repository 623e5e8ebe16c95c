"""The grants route's fast path (server.app.GrantFastPath) answers as the route does.

Each request goes to two gates on one database: the shipped app, and the same app without the
fast path (the control: the framework's route alone). Their answers must agree, status and
error code, for well-formed requests and for every kind of bad one; and the well-formed ones
must really be answered by the fast path (the framework's dependencies never run for them),
or the comparison would prove nothing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from fastapi import Request

from conftest import ADMIN_KEY, gate_settings
from protocol.hosts import GrantReply
from server.app import GrantFastPath, create_app
from server.deps import get_state
from server.errors import DatabaseUnavailable

GRANTS = "/api/v1/hosts/grants"
HOSTS = {"hosts": [{"host": "registry.example", "ok": 3}]}


@asynccontextmanager
async def gate_app(dsn: str, fast: bool) -> AsyncIterator[tuple[httpx.AsyncClient, Any, list[int]]]:
    """A gate (its HTTP client, its app, and how often its framework dependencies ran)."""
    app = create_app(gate_settings(), dsn)
    if not fast:
        app.user_middleware = [m for m in app.user_middleware if m.cls is not GrantFastPath]
    solved = [0]

    async def counted(request: Request) -> Any:
        solved[0] += 1
        return request.app.state.gate

    app.dependency_overrides[get_state] = counted
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gate", timeout=30) as http:
            yield http, app, solved


async def register(http: httpx.AsyncClient) -> str:
    r = await http.post(
        "/api/v1/clients/register",
        headers={"X-API-Key": ADMIN_KEY},
        json={"client_name": "asker", "client_host": "test-host"},
    )
    assert r.status_code == 201, r.text
    return str(r.json()["api_key"])


def cases(key: str) -> dict[str, dict[str, Any]]:
    """Each kind of request: its headers (a list: names may repeat) and its body bytes."""
    json_type = ("Content-Type", "application/json")
    body = b'{"hosts": [{"host": "registry.example", "ok": 3}]}'
    return {
        "well-formed": {"headers": [("X-API-Key", key), ("X-Session-Id", "s1"), json_type], "body": body},
        "no content type": {"headers": [("X-API-Key", key)], "body": body},
        "problem+json": {
            "headers": [("X-API-Key", key), ("Content-Type", "application/x+json")],
            "body": body,
        },
        "no key": {"headers": [json_type], "body": body},
        "unknown key": {"headers": [("X-API-Key", "dg_" + "x" * 40), json_type], "body": body},
        "key too long": {"headers": [("X-API-Key", "k" * 300), json_type], "body": body},
        "two keys": {"headers": [("X-API-Key", key), ("X-API-Key", key), json_type], "body": body},
        "session too long": {
            "headers": [("X-API-Key", key), ("X-Session-Id", "s" * 101), json_type],
            "body": body,
        },
        "text body type": {"headers": [("X-API-Key", key), ("Content-Type", "text/plain")], "body": body},
        "not json": {"headers": [("X-API-Key", key), json_type], "body": b"{hosts"},
        "empty": {"headers": [("X-API-Key", key), json_type], "body": b""},
        "hosts not a list": {"headers": [("X-API-Key", key), json_type], "body": b'{"hosts": 3}'},
        "bad host": {
            "headers": [("X-API-Key", key), json_type],
            "body": b'{"hosts": [{"host": "a b", "ok": 1}]}',
        },
        "negative count": {
            "headers": [("X-API-Key", key), json_type],
            "body": b'{"hosts": [{"host": "registry.example", "ok": -1}]}',
        },
        "admin": {"headers": [("X-API-Key", ADMIN_KEY), json_type], "body": body},
    }


def outcome(r: httpx.Response) -> tuple[int, str | None]:
    code = r.json().get("code") if r.headers.get("content-type", "").startswith("application/json") else None
    return r.status_code, code


FAST = {"well-formed", "problem+json", "admin"}


async def test_the_fast_path_answers_as_the_route_does(db_dsn: str) -> None:
    answers: dict[bool, dict[str, tuple[int, str | None]]] = {}
    through_framework: dict[bool, set[str]] = {}
    for fast in (True, False):
        async with gate_app(db_dsn, fast) as (http, _, solved):
            key = await register(http)
            answers[fast], through_framework[fast] = {}, set()
            for name, case in cases(key).items():
                before = solved[0]
                r = await http.post(GRANTS, headers=case["headers"], content=case["body"])
                answers[fast][name] = outcome(r)
                if solved[0] > before:
                    through_framework[fast].add(name)
                if r.status_code == 200:
                    reply = GrantReply.model_validate_json(r.content)
                    assert [g.host for g in reply.grants] == ["registry.example"], name
                    assert r.headers["x-request-id"], name
            metrics = (await http.get("/metrics")).text
            assert f'route="{GRANTS}"' in metrics  # labelled as the route, never "unmatched"
    assert answers[True] == answers[False]
    # A key sent twice is taken by the route (as the same key); the fast path leaves it to it.
    assert {n for n, (status, _) in answers[True].items() if status == 200} == FAST | {"two keys"}
    # The route's dependencies ran for the well-formed requests without the fast path (the
    # control), and for none of them with it; the others went on to the route either way.
    assert through_framework[False] >= FAST
    assert not FAST & through_framework[True]
    assert through_framework[True] == through_framework[False] - FAST


@pytest.mark.parametrize("fast", [True, False], ids=["fast-path", "control-route"])
async def test_an_outage_while_granting_is_answered_as_the_route_answers_it(db_dsn: str, fast: bool) -> None:
    """The database gone while a grant is worked out: 503 database_unavailable, either way."""
    async with gate_app(db_dsn, fast) as (http, app, _):
        key = await register(http)

        async def down(*_: Any) -> Any:
            raise DatabaseUnavailable("database unavailable: connection refused")

        app.state.gate.budgets.grants = down
        r = await http.post(GRANTS, headers={"X-API-Key": key}, json=HOSTS)
        assert outcome(r) == (503, "database_unavailable"), r.text
