"""Client endpoints: registration, lease caps (admin), heartbeat and goodbye (client), listing (admin)."""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Body, Query, Response

from protocol import paths, v1
from server.auth import hash_key, new_key
from server.db import clients as db
from server.db import lifecycle
from server.deps import AdminDep, PrincipalDep, SessionHeader, StateDep
from server.errors import Unprocessable

router = APIRouter()


@router.post(paths.CLIENT_REGISTER, response_model=v1.ClientRegistered, status_code=201)
async def register_client(body: v1.ClientRegister, state: StateDep, _: AdminDep) -> v1.ClientRegistered:
    key = body.api_key or new_key()
    client_id, name, host = await db.register_client(
        state.pool, body.client_name, body.client_host, hash_key(key), body.max_leases
    )
    return v1.ClientRegistered(client_id=client_id, client_name=name, client_host=host, api_key=key)


@router.post(paths.CLIENT_HEARTBEAT, response_model=v1.HeartbeatReply)
async def heartbeat(
    state: StateDep,
    principal: PrincipalDep,
    session_id: SessionHeader = None,
    body: Annotated[v1.Heartbeat | None, Body()] = None,
) -> v1.HeartbeatReply:
    body = body or v1.Heartbeat()
    if body.session_id is None and session_id is not None:
        body = body.model_copy(update={"session_id": session_id})
    if principal.client_id is None:  # the admin holds no leases
        return v1.HeartbeatReply(leases_extended=0, lease_expires_at=None, cancelled_task_ids=[])
    settings = state.settings
    return await db.heartbeat(
        state.pool, principal.client_id, body, settings.lease_seconds, settings.max_leases_per_client
    )


@router.delete(paths.SESSION, response_model=v1.Goodbye)
async def goodbye(state: StateDep, principal: PrincipalDep, session_id: SessionHeader = None) -> v1.Goodbye:
    """A client process stopping says goodbye (its X-Session-Id): its leases go back to pending
    at once, their attempts given back, and nothing more is leased to that process, on any gate
    (a lease racing the goodbye is handed back by housekeeping within REAP_INTERVAL_SECONDS)."""
    if not session_id:
        raise Unprocessable(f"{paths.SESSION_HEADER} is required: it names the process saying goodbye")
    handed = await lifecycle.hand_back_session(state.pool, principal.client_id, session_id)
    return v1.Goodbye(tasks_handed_back=handed)


@router.delete(paths.CLIENT, response_model=v1.ClientRevoked)
async def revoke_client(client_id: UUID, state: StateDep, _: AdminDep) -> v1.ClientRevoked:
    """Revoke the client's key: 401 on this gate at once and on every other within 10 s (their
    look-up caches), no lease from now on anywhere, and its leases back to pending."""
    revoked = await db.revoke_client(state.pool, client_id)
    state.auth.forget(client_id)
    return revoked


@router.patch(paths.CLIENT, status_code=204)
async def update_client(client_id: UUID, body: v1.ClientUpdate, state: StateDep, _: AdminDep) -> Response:
    """Set the key's own lease cap (`max_leases`; null: MAX_LEASES_PER_CLIENT), on every gate at
    once: the next lease is refused past it (lease_cap), and heartbeats keep no more alive."""
    await db.set_max_leases(state.pool, client_id, body.max_leases)
    return Response(status_code=204)


@router.post(paths.CLIENT_ROTATE_KEY, response_model=v1.ClientRegistered)
async def rotate_key(client_id: UUID, state: StateDep, _: AdminDep) -> v1.ClientRegistered:
    """A new key for the client, shown once; the old one stops as a revoked one does. Its leases
    stay: the client restarted with the new key hands them back or lets them run out."""
    key = new_key()
    client_id, name, host = await db.rotate_key(state.pool, client_id, hash_key(key))
    state.auth.forget(client_id)
    return v1.ClientRegistered(client_id=client_id, client_name=name, client_host=host, api_key=key)


@router.get(paths.CLIENT, response_model=v1.ClientDetail)
async def get_client(client_id: UUID, state: StateDep, _: AdminDep) -> v1.ClientDetail:
    """One client: its status (`quarantined` among them), and its checks by state."""
    return await db.get_client(state.pool, client_id, state.settings.client_stale_seconds)


@router.get("/clients", response_model=v1.ClientList)
async def list_clients(
    state: StateDep,
    _: AdminDep,
    limit: Annotated[int, Query(ge=1, le=v1.MAX_LIST_LIMIT)] = 1000,
) -> v1.ClientList:
    return await db.list_clients(state.pool, state.settings.client_stale_seconds, limit)
