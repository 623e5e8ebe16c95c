"""Client errors. One base; each docstring is its default message.

ClientError
├── ConfigError          a flag or variable is wrong (start-up stops, exit 2)
├── GateUnavailable      the gate cannot be reached or answered 5xx
├── LeaseLost            409: the task moved on; drop its results
└── GateRefused          another 4xx from the gate (bad key, bad request)
"""

from __future__ import annotations


class ClientError(Exception):
    """Client error."""

    def __init__(self, message: str | None = None) -> None:
        self.message = message or (self.__doc__ or "").strip()
        super().__init__(self.message)


class ConfigError(ClientError):
    """A setting is wrong."""


class GateUnavailable(ClientError):
    """The gate cannot be reached."""


class LeaseLost(ClientError):
    """The lease is no longer current; the task's unreported results are dropped."""


class GateRefused(ClientError):
    """The gate refused the request."""
