"""Politeness budgets per origin host: grants (clients), the list and overrides (operators)."""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Path, Request, Response

from protocol import hosts as wire
from protocol import paths
from server.db import hosts as db
from server.db import pausing
from server.deps import AdminDep, PrincipalDep, SessionHeader, StateDep
from server.state import GateState

router = APIRouter()
HostPath = Annotated[str, Path(pattern=wire.HOST_KEY_PATTERN, max_length=262)]
# With ENABLE_AUTH=false every caller is the admin: sessions tell its clients apart.
NO_CLIENT = UUID(int=0)


@router.post(paths.HOST_GRANTS, response_model=wire.GrantReply)
async def grants(
    body: wire.GrantRequest,
    request: Request,
    state: StateDep,
    principal: PrincipalDep,
    session_id: SessionHeader = None,
) -> wire.GrantReply:
    """This client's share of each host's budget, given what it saw since it last asked."""
    address = request.client.host if request.client else ""  # after a trusted proxy's forwarding
    return await answer_grants(state, principal.client_id, session_id, body, address)


async def answer_grants(
    state: GateState, client_id: UUID | None, session_id: str | None, body: wire.GrantRequest, address: str
) -> wire.GrantReply:
    """The grants route's answer (also given by server.app.GrantFastPath, which skips the
    framework's routing for a well-formed request)."""
    state.metrics.count_host_reports(body.hosts)
    with state.metrics.grant_latency.time():
        reply = await state.budgets.grants(client_id or NO_CLIENT, session_id or "", body, address[:64])
        if body.tasks and state.budgets.any_job_paused:  # none is, most of the time: no query
            reply.paused_task_ids = await pausing.paused_tasks(state.pool, body.tasks, client_id)
    return reply


@router.get(paths.HOSTS, response_model=wire.HostList)
async def list_hosts(state: StateDep, _: AdminDep) -> wire.HostList:
    return await db.list_hosts(state.pool, state.host_defaults)


@router.put(paths.HOST, status_code=204)
async def set_host(host: HostPath, body: wire.HostSettings, state: StateDep, _: AdminDep) -> Response:
    """Override a host's budget, or pause it (clients start nothing there until it is resumed)."""
    await db.set_host(state.pool, host, body)
    state.budgets.changed(host)
    return Response(status_code=204)
