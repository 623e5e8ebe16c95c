"""A leased task, parsed once where it arrives: its params as its source's model, the content
rules its documents are checked by, its profile and its scope. Every step after the lease reads
these, never the task's raw params."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import ValidationError

from client.sources import SourceError
from protocol import v1
from protocol.params import ContentRules, merged, parse
from protocol.scope import TaskScope
from protocol.sources import SourceProfile


@dataclass(frozen=True)
class Work:
    task: v1.LeasedTask
    params: ContentRules  # the source's model (IdRangeTaskParams, …); a plugin's: only its rules
    rules: ContentRules  # what its documents must look like: its profile's rules under its own
    profile: SourceProfile | None
    scope: TaskScope

    @classmethod
    def of(cls, task: v1.LeasedTask) -> Work:
        """The task parsed; SourceError (the task fails, not retried) names what does not hold."""
        try:
            params = parse(task.source, task.params, profiled=task.profile is not None)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "params"
            raise SourceError(f"{task.source} task params.{where}: {first['msg']}") from None
        rules = params.rules if task.profile is None else merged(task.profile, params)
        return cls(task, params, rules, task.profile, TaskScope.of(params, task.profile))
