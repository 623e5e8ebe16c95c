"""What the gate's and the client's settings share: one line naming the first bad setting."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from dotenv import dotenv_values
from pydantic import ValidationError


def describe_validation_error(exc: ValidationError, name_of: Callable[[str], str] = str.upper) -> str:
    """One line naming the first bad setting (as `name_of` spells it), never its value."""
    error = exc.errors()[0]
    field = "_".join(str(part) for part in error["loc"][:1])
    message = str(error["msg"]).removeprefix("Value error, ")
    if field and error["type"] == "missing":
        return f"setting {name_of(field)} is required"
    return f"setting {name_of(field)} is invalid: {message}" if field else message


def environment(env_file: str | os.PathLike[str] = ".env") -> dict[str, str]:
    """The process environment over the variables of `env_file` (when there is one): what the
    storage URL's variables (B2_*, AWS_*, STORAGE_CONDITIONAL_WRITES) are read from, so a `.env`
    written after `.env.example` reaches the store as it reaches the settings."""
    found = (
        {k: v for k, v in dotenv_values(env_file).items() if v is not None}
        if Path(env_file).is_file()
        else {}
    )
    return found | dict(os.environ)
