"""What one gate process holds while it runs: the pool and the helpers built on it."""

from __future__ import annotations

from dataclasses import dataclass

from server.auth import Authenticator
from server.config import Settings
from server.db.lifecycle import Backoff
from server.db.pool import Pool
from server.metrics import Metrics
from server.wakeup import TaskWakeup
from storage import Storage


@dataclass
class GateState:
    settings: Settings
    pool: Pool
    auth: Authenticator
    wakeup: TaskWakeup
    metrics: Metrics
    store: Storage

    @property
    def backoff(self) -> Backoff:
        s = self.settings
        return Backoff(s.retry_backoff_seconds, s.retry_backoff_max_seconds)
