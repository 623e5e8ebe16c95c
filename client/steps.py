"""A leased task's run, step by step: expand its source, fetch and store each document
(client.document), report, finish. Each step hands back an outcome: a document's `Outcome` is
folded into the task's run (client.run), the task's `Ending` into the worker's state.

Stored documents are reported in batches through `progress` (which also extends the lease); a
409 (the lease was lost) stops the task at once and drops what it had not reported. Documents
that failed transiently (5xx, timeouts, storage trouble) send the task back with a retryable
failure so the gate retries it later; on the task's last attempt they are reported as failed.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from client.config import ClientConfig
from client.document import DocumentStep, Downloaded
from client.download import DocumentFailed
from client.errors import ClientError, GateUnavailable, TaskGone
from client.gate import GateAPI
from client.run import Failure, Kind, Outcome, TaskRun, fitting
from client.sources import DocRef, Listed, Source, SourceError
from protocol import v1
from protocol.failures import FailureCode
from storage import StorageError

log = logging.getLogger("docgate.client")
REPORT_BATCH = 100
KNOWN_BATCH = 200
HAND_BACK_SECONDS = 15.0


class Ending(StrEnum):
    """How a task's attempt ended, as far as the worker cares."""

    DONE = "done"  # completed, or failed back to the gate for the work's own reasons
    STORE_FAILED = "store_failed"  # handed back because the client's store failed: pause leasing
    GONE = "gone"  # no longer ours, or the gate was out of reach: nothing more to say


@dataclass(frozen=True)
class TaskSteps:
    config: ClientConfig
    gate: GateAPI
    document: DocumentStep
    slots: asyncio.Semaphore

    async def attempt(self, run: TaskRun, source: Source | None) -> Ending:
        """Every step of one attempt; whatever goes wrong is sorted into an ending here (nothing
        may kill the worker's loop)."""
        task = run.task
        try:
            if source is None:
                raise SourceError(f"this client has no source {task.source!r}")
            await self.expand(run, source)
            return await self.finish(run)
        except Exception as exc:  # noqa: BLE001 - sorted out below
            problem = _leaf(exc)
            if isinstance(problem, TaskGone):
                log.warning(
                    "task %s: no longer ours (%s); its unreported results are dropped", task.task_id, problem
                )
            elif isinstance(problem, SourceError):
                await self.give_up(run, FailureCode.SOURCE, str(problem), retryable=False)
            elif isinstance(problem, DocumentFailed):  # a listing page could not be had, or was a block
                await self.report(run)  # what it stored before the listing stopped is recorded
                blocked = int(problem.blocked) + run.blocked
                await self.give_up(
                    run,
                    problem.code,
                    problem.reason,
                    not problem.permanent,
                    blocked=blocked,
                    page=problem.page,
                )
            elif isinstance(problem, GateUnavailable):
                log.error(
                    "task %s: gate unreachable (%s); the task returns after its lease", task.task_id, problem
                )
            else:
                log.error("task %s failed unexpectedly", task.task_id, exc_info=problem)
                reason = f"client error: {type(problem).__name__}: {problem}"
                await self.give_up(run, FailureCode.CLIENT_ERROR, reason, True)
            return Ending.GONE

    # ---- expand the source, fetch and store

    async def expand(self, run: TaskRun, source: Source) -> None:
        """Every document the source gives; a listing that stops short (a page that could not
        be had, or was a block) still has the documents it gave fetched, then the task ends."""
        if run.work.profile is not None and run.work.profile.spread_chunk_size:
            await self._spread(run, source)
            return
        stopped: DocumentFailed | None = None
        async with asyncio.TaskGroup() as group:
            batch: list[DocRef] = []
            try:
                async for ref in source.documents(run.work):
                    batch.append(ref)
                    if len(batch) >= KNOWN_BATCH:
                        await self._dispatch(run, batch, group)
                        batch = []
            except DocumentFailed as exc:
                stopped = exc
            await self._dispatch(run, batch, group)
        if stopped is not None:
            raise stopped
        if isinstance(source, Listed):
            run.listing = source.report

    async def _spread(self, run: TaskRun, source: Source) -> None:
        """A search whose profile spreads its results: what it finds goes to the gate, which
        queues each new doc_id once in `urls` tasks for the fleet; nothing is downloaded here."""
        batch: list[DocRef] = []

        async def hand_over() -> None:
            refs = [r for r in batch if self._reportable(run, r)]
            if refs:
                reply = await self.gate.discovered(run.task, [(r.doc_id, r.url, r.ext) for r in refs])
                run.discovered += reply.documents
                run.queued += reply.queued
            batch.clear()

        async for ref in source.documents(run.work):
            batch.append(ref)
            if len(batch) >= v1.MAX_DOCUMENTS_PER_REPORT:
                await hand_over()
        await hand_over()

    async def _dispatch(self, run: TaskRun, refs: list[DocRef], group: asyncio.TaskGroup) -> None:
        refs = [ref for ref in refs if self._reportable(run, ref)]
        if not refs:
            return
        fresh = [r for r in refs if r.seen is None]  # a revisit's are recorded: fetched again
        known = await self.gate.known([r.doc_id for r in fresh], run.task.collection) if fresh else set()
        absent = await self.document.absent(run, [r for r in fresh if r.doc_id not in known])
        for ref in refs:
            if ref.seen is None and ref.doc_id in known:  # already recorded at the gate: not fetched again
                run.fold(Outcome(Kind.SKIPPED, ref))
                continue
            await self.slots.acquire()
            child = group.create_task(self._fetch(run, ref, ref.doc_id in absent))
            child.add_done_callback(lambda _: self.slots.release())

    async def _fetch(self, run: TaskRun, ref: DocRef, absent: bool) -> None:
        got = await self.document.run(run, ref, absent)
        if isinstance(got, Downloaded):  # stored and counted even if the task is stopped meanwhile
            await run.settle(self._keep(run, got))
        else:
            run.fold(got)
        if len(run.pending) >= REPORT_BATCH:
            await self.report(run)

    async def _keep(self, run: TaskRun, got: Downloaded) -> None:
        run.fold(await self.document.keep(run, got))

    def _reportable(self, run: TaskRun, ref: DocRef) -> bool:
        """A doc_id the gate would refuse can be neither stored nor reported: failed, unreported.
        A link off the task's hosts is not fetched: failed with the reason, its URL left out of
        the report (the gate would refuse it), so the operator sees it and can name the host in
        params.document_hosts."""
        if not v1.is_doc_id(ref.doc_id):
            log.warning(
                "task %s: the source gave a doc_id the gate refuses: %r", run.task.task_id, ref.doc_id[:200]
            )
            run.fold(Outcome(Kind.FAILED, ref))
            return False
        if not run.work.scope.on_origin(ref.url):
            hosts = ", ".join(sorted(run.work.scope.hosts or ()))
            failure = Failure(
                ref, FailureCode.OFF_HOSTS, f"{ref.url} is not on the task's hosts ({hosts}); not fetched"
            )
            report = failure.report().model_copy(update={"url": None})
            run.fold(Outcome(Kind.FAILED, ref, report, failure))
            return False
        return True

    # ---- report and finish

    async def report(self, run: TaskRun, keep_last: int = 0) -> None:
        """Send pending reports through progress, leaving at most `keep_last` for the completion."""
        async with run.lock:
            while len(run.pending) > keep_last:
                size = fitting(run.pending, min(v1.MAX_DOCUMENTS_PER_REPORT, len(run.pending) - keep_last))
                batch = run.pending[:size]
                await self.gate.progress(run.task, run.counts(), batch, await self._warc(run, batch))
                del run.pending[:size]
                if run.warc is not None:
                    run.warc.sent()

    async def _warc(self, run: TaskRun, batch: list[v1.DocumentReport]) -> v1.WarcReport | None:
        """With a WARC: the WARC of the batch's stored documents, stored before the report that
        records them (a store that fails it costs the WARC, not the documents: said in the log);
        the batch's report sent again (its answer lost) gets the same WARC."""
        if run.warc is None:
            return None
        stored = [str(d.doc_id) for d in batch if d.status is not v1.DocumentStatus.FAILED]
        try:
            return await run.warc.seal(stored)
        except StorageError as exc:
            log.warning(
                "task %s: its WARC was not stored (%s); the documents are", run.task.task_id, exc.message
            )
            return None

    async def finish(self, run: TaskRun) -> Ending:
        task = run.task
        if run.transient and run.storage_failed:
            # Our store failed, not the work: give the task back without spending its attempt
            # (never complete it with its documents failed), and pause before leasing more.
            await self.report(run)
            first = run.transient[0]
            reason = f"the client's store failed ({first.ref.doc_id}: {first.reason})"
            await self.give_up(run, FailureCode.STORAGE, reason, retryable=True, attempt_spent=False)
            return Ending.STORE_FAILED
        if run.transient and task.attempts < task.max_attempts:
            await self.report(run)
            first = run.transient[0]
            reason = (
                f"{len(run.transient)} documents failed transiently, e.g. {first.ref.doc_id}: {first.reason}"
            )
            await self.give_up(run, FailureCode.TRANSIENT, reason, retryable=True)
            return Ending.DONE
        run.give_up_transient()  # last attempt: record them, the task completes
        await self.report(run, keep_last=fitting(run.pending, v1.MAX_DOCUMENTS_PER_REPORT, last=True))
        async with run.lock:
            warc = await self._warc(run, run.pending)
            await self.gate.complete(task, run.counts(), run.pending, self._summary(run), warc, run.listing)
            run.pending.clear()
            if run.warc is not None:
                run.warc.sent()
        log.info(
            "task %s completed (lease %s): %s stored, %s skipped, %s failed",
            task.task_id, task.lease_token, run.stored, run.skipped, run.failed,
        )  # fmt: skip
        return Ending.DONE

    def _summary(self, run: TaskRun) -> dict[str, Any]:
        summary: dict[str, Any] = {"client": self.config.client_name, "session_id": self.config.session_id}
        if run.unreportable:
            summary["unreportable_doc_ids"] = run.unreportable[:20]
        if run.discovered:
            summary |= {"discovered": run.discovered, "queued": run.queued}
        if run.listing is not None:
            summary["listing"] = run.listing.model_dump(exclude_none=True)
        return summary

    async def give_up(
        self,
        run: TaskRun,
        code: FailureCode,
        error: str,
        retryable: bool,
        *,
        attempt_spent: bool = True,
        blocked: int | None = None,
        page: int | None = None,
    ) -> None:
        blocked = run.blocked if blocked is None else blocked
        try:
            await self.gate.fail(
                run.task, code, error, retryable, attempt_spent=attempt_spent, blocked=blocked, page=page
            )
        except ClientError as exc:
            log.warning(
                "task %s: could not report failure (%s); it returns after its lease",
                run.task.task_id,
                exc.message,
            )
        else:
            kind = "retryable" if retryable else "final"
            log.info("task %s handed back (%s, %s): %s", run.task.task_id, kind, code, error)

    async def hand_back(self, run: TaskRun) -> None:
        """On shutdown, or when the gate paused the task's job: report what was stored, then give
        the task back (retryable; a pause's without spending the attempt)."""
        try:
            async with asyncio.timeout(HAND_BACK_SECONDS):
                await run.settled()  # what was downloaded whole is stored, then reported
                await self.report(run)
                if run.paused_by_gate:
                    reason = "its job was paused at the gate; what was not fetched is given back unfetched"
                    await self.give_up(run, FailureCode.JOB_PAUSED, reason, True, attempt_spent=False)
                    return
                reason = "client stopped before finishing the task"
                await self.give_up(run, FailureCode.CLIENT_STOPPED, reason, retryable=True)
        except (ClientError, TimeoutError) as exc:
            log.warning(
                "task %s: hand-back incomplete (%s); it returns after its lease", run.task.task_id, exc
            )


def _leaf(exc: BaseException) -> BaseException:
    """The first real error inside (nested) exception groups from a TaskGroup."""
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc
