"""What one gate process holds while it runs: the pool and the helpers built on it."""

from __future__ import annotations

from dataclasses import dataclass

from server.auth import Authenticator
from server.config import Settings
from server.db.pool import Pool
from server.db.tasks import Backoff
from server.metrics import Metrics
from server.wakeup import TaskWakeup


@dataclass
class GateState:
    settings: Settings
    pool: Pool
    auth: Authenticator
    wakeup: TaskWakeup
    metrics: Metrics

    @property
    def backoff(self) -> Backoff:
        s = self.settings
        return Backoff(s.retry_backoff_seconds, s.retry_backoff_max_seconds)
