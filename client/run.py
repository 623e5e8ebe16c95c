"""One leased task's state while it runs, and what each step gives back to it.

Every document comes to one `Outcome` (stored, skipped, failed, or failed in a way a later
attempt may not); `TaskRun.fold` takes it in — the task's counts, its pending reports and the
process's counters (client.progress.Stats) change there and nowhere else.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from client.download import BLOCKS
from client.progress import Stats
from client.sources import DocRef
from client.work import Work
from protocol import v1
from protocol.failures import FailureCode

if TYPE_CHECKING:  # warcio is imported only by clients that write WARC (--warc)
    from client.warc import WarcRecorder

REPORT_BYTES = 512 << 10  # a report's body stays well inside the gate's MAX_BODY_BYTES (1 MiB)


class Kind(StrEnum):
    STORED = "stored"
    SKIPPED = "skipped"  # in storage already (verified), or recorded at the gate already
    FAILED = "failed"  # for good: reported as failed
    TRANSIENT = "transient"  # a later attempt may do better: the task is handed back for it


@dataclass(frozen=True)
class Failure:
    ref: DocRef
    code: FailureCode
    reason: str

    @property
    def blocked(self) -> bool:
        return self.code in BLOCKS

    def report(self) -> v1.DocumentReport:
        return v1.DocumentReport.of_failure(
            self.ref.doc_id, url=self.ref.url, code=self.code, error=self.reason
        )


@dataclass(frozen=True)
class Outcome:
    """What one document came to. `report` is what the gate hears of it (None: nothing, as for a
    doc_id the gate would refuse, or a document the gate already has)."""

    kind: Kind
    ref: DocRef
    report: v1.DocumentReport | None = None
    failure: Failure | None = None
    size: int = 0
    storage: bool = False  # it failed because the client's store did, not the origin

    @classmethod
    def failed(cls, failure: Failure, *, permanent: bool, storage: bool = False) -> Outcome:
        if permanent:
            return cls(Kind.FAILED, failure.ref, failure.report(), failure)
        return cls(Kind.TRANSIENT, failure.ref, None, failure, storage=storage)


@dataclass
class TaskRun:
    work: Work
    stats: Stats
    pending: list[v1.DocumentReport] = field(default_factory=list)
    stored: int = 0
    skipped: int = 0
    failed: int = 0
    transient: list[Failure] = field(default_factory=list)
    # doc_ids from the source that the gate would refuse: counted as failed, never reported
    unreportable: list[str] = field(default_factory=list)
    storage_failed: bool = False  # a document failed because the store did, not the origin
    cancelled_by_gate: bool = False
    paused_by_gate: bool = False  # its job was paused: handed back, what is unfetched unfetched
    discovered: int = 0  # found and handed to the fleet (a search that spreads its results)
    queued: int = 0  # of them, new to the gate
    warc: WarcRecorder | None = None  # --warc: the WARC records of what this attempt stored
    listing: v1.ListingReport | None = None  # a search's: what its results said (total, cap)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    settling: set[asyncio.Task[None]] = field(default_factory=set)  # see settle

    async def settle(self, step: Coroutine[Any, Any, None]) -> None:
        """Run `step` to its end even if the caller is cancelled meanwhile (a pause, a stop):
        the hand-back waits for it (settled) before it reports."""
        task = asyncio.ensure_future(step)
        self.settling.add(task)
        task.add_done_callback(_settled_one)
        task.add_done_callback(self.settling.discard)
        await asyncio.shield(task)

    async def settled(self) -> None:
        if self.settling:
            await asyncio.wait(set(self.settling))

    @property
    def task(self) -> v1.LeasedTask:
        return self.work.task

    def fold(self, outcome: Outcome) -> None:
        if outcome.kind is Kind.TRANSIENT:
            assert outcome.failure is not None
            self.transient.append(outcome.failure)
            self.storage_failed |= outcome.storage
            self.stats.fold(outcome.kind, outcome.size)
            return
        if outcome.kind is Kind.STORED:
            self.stored += 1
        elif outcome.kind is Kind.SKIPPED:
            self.skipped += 1
        else:
            self.failed += 1
            if outcome.report is None:
                self.unreportable.append(outcome.ref.doc_id[:200])
        if outcome.report is not None:
            self.pending.append(outcome.report)
        self.stats.fold(outcome.kind, outcome.size)

    def give_up_transient(self) -> None:
        """The task's last attempt: what failed transiently is failed for good."""
        failures, self.transient = self.transient, []
        for failure in failures:
            self.fold(Outcome.failed(failure, permanent=True))

    @property
    def blocked(self) -> int:
        return sum(f.blocked for f in self.transient)

    def counts(self) -> v1.Counts:
        return v1.Counts(
            documents_downloaded=self.stored, documents_failed=self.failed, documents_skipped=self.skipped
        )


def _settled_one(task: asyncio.Task[None]) -> None:
    """A step settled after its caller was cancelled: its error is the task's (a lost lease,
    found again by the hand-back's report), not one to log as never retrieved."""
    if not task.cancelled():
        task.exception()


def fitting(reports: list[v1.DocumentReport], most: int, *, last: bool = False) -> int:
    """How many of the first (or `last`) `most` reports go in one call: captures make reports
    large."""
    size = 0
    for n, report in enumerate(reversed(reports[-most:]) if last else reports[:most]):
        size += 600 + len(report.url or "") + (report.capture.weight if report.capture else 0)
        if size > REPORT_BYTES:
            return max(n, 1)
    return min(most, len(reports))
