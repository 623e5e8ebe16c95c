"""FastAPI dependencies: the gate's state and the caller's role."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Request

from protocol import paths
from server.auth import Principal
from server.errors import Forbidden
from server.state import GateState


async def get_state(request: Request) -> GateState:
    # async: FastAPI runs a plain `def` dependency in its thread pool, a thread hop per request.
    state: GateState = request.app.state.gate
    return state


StateDep = Annotated[GateState, Depends(get_state)]


async def get_principal(
    state: StateDep,
    x_api_key: Annotated[str | None, Header(alias=paths.API_KEY_HEADER, max_length=256)] = None,
) -> Principal:
    return await state.auth.authenticate(x_api_key)


PrincipalDep = Annotated[Principal, Depends(get_principal)]


async def require_admin(principal: PrincipalDep) -> Principal:
    if not principal.is_admin:
        raise Forbidden()
    return principal


AdminDep = Annotated[Principal, Depends(require_admin)]
SessionHeader = Annotated[str | None, Header(alias=paths.SESSION_HEADER, max_length=100)]
