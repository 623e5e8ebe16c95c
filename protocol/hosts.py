"""Politeness across the fleet, on the wire: what a client reports about each origin host it
fetches from, the share of that host's budget the gate grants it, and the operator's view.

The gate holds one budget per origin host (requests per second and requests in flight, summed
over every client); a client asks for its grant about once a second for the hosts it is
working on, with what it saw since it last asked, and never exceeds what it was granted.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated
from urllib.parse import urlsplit
from uuid import UUID

from pydantic import Field, StringConstraints

from protocol.base import MAX_LEASE_TASKS, Reply, Request, WireUUID
from protocol.params import Politeness

# An origin host as budgets name it: lower case, IDNA's ASCII form, `:port` when not the
# scheme's default (two origins on one address are two hosts), IPv6 in brackets.
HOST_KEY_PATTERN = r"^(\[[0-9a-f:.]{2,45}\]|[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?)(:[0-9]{1,5})?$"
HostKey = Annotated[str, StringConstraints(max_length=262, pattern=HOST_KEY_PATTERN)]
DEFAULT_PORTS = {"http": 80, "https": 443}


def host_key(url: str) -> str | None:
    """The budget a URL's requests count against, as the client names it in its grant requests:
    lower case, IDNA's ASCII form, no final dot, `:port` when not the scheme's default, IPv6 in
    brackets. None when the URL has no host, or a placeholder (`{id}`) in it."""
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port
    except ValueError:
        return None
    if not host or "{" in host or "}" in host:
        return None
    host = host.rstrip(".")
    try:
        host = host.encode("idna").decode("ascii")
    except UnicodeError:
        return None
    if ":" in host:
        host = f"[{host}]"
    if port is not None and port != DEFAULT_PORTS.get(parts.scheme.lower()):
        host = f"{host}:{port}"
    return host


MAX_HOSTS_PER_GRANT = 100
MAX_TASKS_PER_GRANT = 10 * MAX_LEASE_TASKS
MAX_COUNT = 1_000_000
Count = Annotated[int, Field(ge=0, le=MAX_COUNT)]


class HostReport(Request):
    """What a client saw from one host since its last grant request."""

    host: HostKey
    ok: Count = 0  # answers that were what was asked for
    throttled: Count = 0  # 429, 503
    errors: Count = 0  # other 5xx, timeouts, resets
    blocked: Count = 0  # a 200 that was not the document (a captcha, a "too many requests" page)
    retry_after: Annotated[float, Field(ge=0, le=3_600)] | None = None  # the longest one seen
    politeness: Politeness | None = None  # the strictest of the client's jobs working on the host


class GrantRequest(Request):
    hosts: Annotated[list[HostReport], Field(max_length=MAX_HOSTS_PER_GRANT)]
    tasks: Annotated[list[WireUUID], Field(max_length=MAX_TASKS_PER_GRANT)] | None = Field(
        default=None,
        description="the tasks the client is working on: the reply names those whose job was paused",
    )


class HostGrant(Reply):
    host: str
    requests_per_second: float | None = Field(
        description="this client's share; 0: start nothing until the next grant (the others "
        "still hold the budget); null: no limit"
    )
    max_connections: int | None = Field(
        description="this client's share of requests in flight; 0: start nothing until the next "
        "grant; null: no limit"
    )
    paused: bool = False
    wait_seconds: float = Field(0.0, description="start nothing on this host before this many seconds")


class GrantReply(Reply):
    grants: list[HostGrant]
    paused_task_ids: list[UUID] = Field(
        default_factory=list,
        description="of the tasks asked about, those whose job is paused: hand them back now, "
        "what is not fetched unfetched",
    )
    refresh_seconds: float = Field(description="ask again within this many seconds")
    valid_seconds: float = Field(
        3.0,
        description="a grant with a limit holds this long after it was asked for; past it the "
        "client starts nothing on the host until it hears again (the gate gives a silent "
        "client's share to the others)",
    )


class HostSettings(Request):
    """An operator's override for one host; a null field takes the gate's default again."""

    requests_per_second: Annotated[float, Field(ge=0, le=100_000)] | None = None
    max_connections: Annotated[int, Field(ge=0, le=100_000)] | None = None
    paused: bool = False


class Answers(Reply):
    ok: int = 0
    throttled: int = 0
    errors: int = 0
    blocked: int = 0


class HostInfo(Reply):
    host: str
    requests_per_second: float | None = Field(
        description="the budget (override or HOST_RATE_LIMIT); null: none"
    )
    max_connections: int | None
    effective_rate: float | None = Field(description="the budget after the fleet's back-off")
    paused: bool
    paused_reason: str | None
    pause_until: datetime | None
    clients_active: int
    ok: int = Field(description="answers reported over the last 5 minutes")
    throttled: int
    errors: int
    blocked: int = 0
    last_hour: Answers = Field(default_factory=Answers, description="the same, over the last 60 minutes")
    observed_rate: float = Field(
        0.0, description="answers per second the fleet reported over the last 5 minutes"
    )


class HostList(Reply):
    hosts: list[HostInfo]
