"""What the gate's and the client's settings share: one line naming the first bad setting."""

from __future__ import annotations

from collections.abc import Callable

from pydantic import ValidationError


def describe_validation_error(exc: ValidationError, name_of: Callable[[str], str] = str.upper) -> str:
    """One line naming the first bad setting (as `name_of` spells it), never its value."""
    error = exc.errors()[0]
    field = "_".join(str(part) for part in error["loc"][:1])
    message = str(error["msg"]).removeprefix("Value error, ")
    if field and error["type"] == "missing":
        return f"setting {name_of(field)} is required"
    return f"setting {name_of(field)} is invalid: {message}" if field else message
