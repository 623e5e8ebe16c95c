"""Client errors. One base; each docstring is its default message.

    ClientError
    ├── ConfigError          a flag or variable is wrong (start-up stops, exit 2)
    ├── GateUnavailable      the gate cannot be reached, or answered 5xx / 429 (retried)
    ├── TaskGone             the task is no longer this client's: drop its results
    │   ├── LeaseLost        lease_lost: the lease expired or the task moved on
    │   └── NotYourTask      not_your_task: no such task for this key
    └── GateRefused          any other error code: the gate will not do it
        ├── KeyRejected      unauthorized / forbidden: the API key (--api-key)
        └── InvalidRequest   the request broke the wire contract (a bug on this side)

`client.gate.ERRORS` maps every wire code (`protocol.errors.ErrorCode`) to one of these.
"""

from __future__ import annotations


class ClientError(Exception):
    """Client error."""

    def __init__(self, message: str | None = None, code: str | None = None) -> None:
        self.message = message or (self.__doc__ or "").strip()
        self.code = code  # the gate's error code (protocol.errors.ErrorCode), when it sent one
        super().__init__(self.message)


class ConfigError(ClientError):
    """A setting is wrong."""


class GateUnavailable(ClientError):
    """The gate cannot be reached."""


class TaskGone(ClientError):
    """The task is no longer this client's; its unreported results are dropped."""


class LeaseLost(TaskGone):
    """The lease is no longer current; the task's unreported results are dropped."""


class NotYourTask(TaskGone):
    """The gate knows no such task for this API key."""


class GateRefused(ClientError):
    """The gate refused the request."""


class KeyRejected(GateRefused):
    """The gate refused the API key (--api-key)."""


class InvalidRequest(GateRefused):
    """The gate found the request invalid."""
