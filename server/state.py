"""What one gate process holds while it runs: the pool and the helpers built on it."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from server.auth import Authenticator
from server.budgets import Budgets
from server.config import Settings
from server.db.hosts import Defaults
from server.db.lifecycle import Backoff, Spread
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
    # Set when this gate answered 202 for a job, so its background creator starts at once.
    creation: asyncio.Event = field(default_factory=asyncio.Event)
    # This gate's slices of the hosts' budgets, and the grants it answers from them.
    budgets: Budgets = field(init=False)

    def __post_init__(self) -> None:
        self.budgets = Budgets(self.pool, self.host_defaults)

    @property
    def host_defaults(self) -> Defaults:
        """Every host's budget and pause rule unless the host has its own (HOST_* settings)."""
        s = self.settings
        return Defaults(
            s.host_rate_limit,
            s.host_connections,
            s.host_pause_ratio,
            s.host_pause_min_answers,
            s.host_rate_limit_per_address,
            s.host_connections_per_address,
        )

    @property
    def spread(self) -> Spread:
        """How a lease spreads the fleet over hosts (HOST_CONNECTIONS, HOST_TASKS_PER_CONNECTION)."""
        return Spread(self.settings.host_connections, self.settings.host_tasks_per_connection)

    @property
    def backoff(self) -> Backoff:
        s = self.settings
        return Backoff(s.retry_backoff_seconds, s.retry_backoff_max_seconds)
