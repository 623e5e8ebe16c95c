"""What the client has done, shown as a live bar on a terminal or a log line every 10 s."""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections import deque
from dataclasses import dataclass, field

from rich.console import Console
from rich.live import Live
from rich.text import Text

log = logging.getLogger("docgate.client")


@dataclass
class Stats:
    stored: int = 0
    skipped: int = 0
    failed: int = 0
    bytes: int = 0
    tasks_done: int = 0
    tasks_held: int = 0
    started: float = field(default_factory=time.monotonic)
    _recent: deque[float] = field(default_factory=deque)

    def fold(self, kind: str, size: int = 0) -> None:
        """A document's outcome (client.run.Kind); one that failed transiently is counted when
        its task gives up on it, as failed."""
        if kind == "stored":
            self.stored += 1
            self.bytes += size
        elif kind == "skipped":
            self.skipped += 1
        elif kind == "failed":
            self.failed += 1
        else:
            return  # a transient failure: the document is not finished (a later try finishes it)
        self._finished()

    def _finished(self) -> None:
        now = time.monotonic()
        self._recent.append(now)
        while self._recent and self._recent[0] < now - 60:
            self._recent.popleft()

    def per_minute(self) -> float:
        """Documents finished in the last minute (or per minute since start, if younger)."""
        window = min(60.0, max(time.monotonic() - self.started, 1.0))
        cutoff = time.monotonic() - 60
        return sum(1 for t in self._recent if t >= cutoff) * 60.0 / window

    def line(self) -> str:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        done = self.stored + self.skipped
        return (
            f"stored {self.stored}, skipped {self.skipped}, failed {self.failed}, "
            f"{self.bytes / 1e6:.1f} MB, {done / elapsed:.1f} docs/s, "
            f"{self.bytes / elapsed / 1e6:.2f} MB/s, tasks held {self.tasks_held}, "
            f"done {self.tasks_done}"
        )


class ProgressView:
    """A live line on a terminal (mode bar), else a log line every `every` seconds (mode log)."""

    def __init__(self, stats: Stats, mode: str = "auto", every: float = 10.0) -> None:
        self.stats = stats
        self.bar = mode == "bar" or (mode == "auto" and sys.stderr.isatty())
        self.every = every

    async def run(self) -> None:
        if self.bar:
            console = Console(stderr=True)
            with Live(Text(self.stats.line()), console=console, refresh_per_second=4) as live:
                while True:
                    await asyncio.sleep(0.25)
                    live.update(Text("docgate client  " + self.stats.line()))
        while True:
            await asyncio.sleep(self.every)
            log.info("progress: %s", self.stats.line())
