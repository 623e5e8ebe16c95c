"""The client's work loop: lease, fetch and store each task's documents, report, complete.

One `Worker` per process. Tasks run side by side (up to --max-tasks); their
documents share one pool of --concurrency slots. Stored documents are
reported in batches through `progress` (which also extends the lease); a 409
(the lease was lost) stops that task at once and drops what it had not
reported. Documents that failed transiently (5xx, timeouts, storage trouble)
send the task back with a retryable failure so the gate retries it later; on
the task's last attempt they are reported as failed instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any
from uuid import UUID

from client import bodies
from client.config import ClientConfig
from client.download import Body, DocumentFailed, Fetcher
from client.errors import ClientError, GateUnavailable, KeyRejected, LeaseLost, TaskGone
from client.gate import GateAPI
from client.progress import Stats
from client.sources import DocRef, Source, SourceContext, SourceError
from client.sources.profile import ProfileSource, profile_rules
from protocol import v1
from protocol.scope import TaskScope
from storage import PutOptions, Storage, StorageError
from storage.base import Fence
from storage.errors import (
    AlreadyStored,
    KeyRefused,
    StaleLease,
    StorageTimeout,
    StorageUnavailable,
    TooLarge,
    WriteRefused,
)
from storage.keys import document_key

if TYPE_CHECKING:  # warcio is imported only by clients that write WARC (--warc)
    from client.warc import WarcRecorder

log = logging.getLogger("docgate.client")
REPORT_BATCH = 100
KNOWN_BATCH = 200
HAND_BACK_SECONDS = 15.0
STORAGE_RETRY_SECONDS = (0.5, 1.0, 2.0, 4.0, 8.0)  # then the document counts as failed transiently
STORAGE_PAUSE_SECONDS, STORAGE_PAUSE_MAX = 10.0, 300.0  # no leasing while the store keeps failing


@dataclass(frozen=True)
class TransientFailure:
    """A document that failed in a way a later attempt may not (5xx, timeout, storage trouble)."""

    ref: DocRef
    reason: str
    blocked: bool = False  # a block page (client.bodies): the job's dead-man switch counts it


@dataclass
class TaskRun:
    task: v1.LeasedTask
    pending: list[v1.DocumentReport] = field(default_factory=list)
    stored: int = 0
    skipped: int = 0
    failed: int = 0
    transient: list[TransientFailure] = field(default_factory=list)
    # doc_ids from the source that the gate would refuse: counted as failed, never reported
    unreportable: list[str] = field(default_factory=list)
    cancelled_by_gate: bool = False
    discovered: int = 0  # found and handed to the fleet (a search that spreads its results)
    queued: int = 0  # of them, new to the gate
    storage_failed: bool = False  # a document failed because the store did, not the origin
    warc: WarcRecorder | None = None  # --warc: the WARC records of what this attempt stored
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    scope: TaskScope = field(init=False)

    def __post_init__(self) -> None:
        self.scope = TaskScope.of(self.task.source, self.task.params)

    def counts(self) -> v1.Counts:
        return v1.Counts(
            documents_downloaded=self.stored, documents_failed=self.failed, documents_skipped=self.skipped
        )


REPORT_BYTES = 512 << 10  # a report's body stays well inside the gate's MAX_BODY_BYTES (1 MiB)


def _fitting(reports: list[v1.DocumentReport], most: int, *, last: bool = False) -> int:
    """How many of the first (or `last`) `most` reports go in one call: captures make reports
    large."""
    size = 0
    for n, report in enumerate(reversed(reports[-most:]) if last else reports[:most]):
        size += 600 + len(report.url or "") + (report.capture.weight if report.capture else 0)
        if size > REPORT_BYTES:
            return max(n, 1)
    return min(most, len(reports))


class Worker:
    def __init__(
        self,
        config: ClientConfig,
        gate: GateAPI,
        store: Storage,
        fetcher: Fetcher,
        sources: dict[str, Source],
        stats: Stats,
    ) -> None:
        self.config = config
        self.gate = gate
        self.store = store
        self.fetcher = fetcher
        self.sources = sources
        self.stats = stats
        self.slots = asyncio.Semaphore(config.concurrency)
        self.runs: dict[UUID, asyncio.Task[None]] = {}
        self.task_runs: dict[UUID, TaskRun] = {}
        self.stopping = asyncio.Event()
        self.key_rejected: KeyRejected | None = None  # the key was revoked or rotated: stop
        self.storage_pauses = 0  # tasks handed back in a row because the store failed
        self.leasing_resumes_at = 0.0  # monotonic time; no lease before it
        self.heartbeat_every = config.heartbeat_interval
        # --warc: WARC files are written here (a spool folder of this process) before they are stored.
        self.warc_spool = Path(tempfile.mkdtemp(prefix="docgate-warc-")) if config.warc else None
        self.warc_threads = ThreadPoolExecutor(2, thread_name_prefix="warc") if config.warc else None

    # ---- the lease loop

    async def run(self) -> None:
        heartbeats = asyncio.create_task(self._heartbeats(), name="heartbeats")
        try:
            await self._lease_loop()
            await self._drain()
        finally:
            heartbeats.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeats
            if self.warc_threads is not None and self.warc_spool is not None:
                self.warc_threads.shutdown(wait=True)
                shutil.rmtree(self.warc_spool, ignore_errors=True)

    async def _lease_loop(self) -> None:
        while not self.stopping.is_set():
            free = self.config.max_tasks - len(self.runs)
            if free <= 0:
                await self._wait_any(list(self.runs.values()))
                continue
            paused = self.leasing_resumes_at - time.monotonic()
            if paused > 0:
                await self._wait_any(list(self.runs.values()), seconds=paused)
                continue
            # Long-poll only when idle; while busy, just top up.
            wait = 0.0 if self.runs else min(self.config.poll_interval, v1.MAX_WAIT_SECONDS)
            answer = await self._lease(free, wait)
            if answer is None:
                continue
            leased, outstanding = answer
            for task in leased:
                self._start(task)
            if not leased and not self.runs and self.config.exit_when_idle and outstanding == 0:
                log.info("no task left; exiting (--exit-when-idle)")
                return
            if not leased and self.runs:
                await self._wait_any(list(self.runs.values()), seconds=self.config.poll_interval)

    async def _lease(self, free: int, wait: float) -> tuple[list[v1.LeasedTask], int | None] | None:
        request = asyncio.create_task(self.gate.lease(free, wait))
        stop = asyncio.create_task(self.stopping.wait())
        done, _ = await asyncio.wait({request, stop}, return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        if request not in done:
            request.cancel()
            with contextlib.suppress(asyncio.CancelledError, ClientError):
                await request
            return None
        try:
            return request.result()
        except KeyRejected as exc:
            self._stop_for(exc)
            return None
        except ClientError as exc:
            log.warning("cannot lease: %s", exc.message)
            await self._wait_any([], seconds=self.config.poll_interval)
            return None

    def _stop_for(self, exc: KeyRejected) -> None:
        """A key the gate no longer takes (revoked, rotated) will not come back: stop, hand back."""
        if self.key_rejected is None:
            log.error("the gate refuses this client's key; stopping: %s", exc.message)
            self.key_rejected = exc
        self.stopping.set()

    async def _wait_any(self, tasks: list[asyncio.Task[None]], seconds: float | None = None) -> None:
        """Until one of tasks ends, a stop is asked for, or `seconds` pass."""
        stop = asyncio.create_task(self.stopping.wait())
        await asyncio.wait([*tasks, stop], timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()

    def _start(self, task: v1.LeasedTask) -> None:
        self._fit_heartbeat(task)
        run = TaskRun(task)
        if task.user_agent and not self.fetcher.user_agent_fixed:  # the gate's, unless --user-agent
            self.fetcher.user_agent = task.user_agent
        if self.warc_spool is not None and self.warc_threads is not None:
            from client.warc import WarcRecorder

            run.warc = WarcRecorder(
                self.store, task, self.fetcher.user_agent, self.warc_spool, self.warc_threads
            )
        self.task_runs[task.task_id] = run
        self.runs[task.task_id] = asyncio.create_task(self._run_task(run), name=f"task-{task.task_id}")
        self.stats.tasks_held = len(self.runs)
        log.info(
            "leased task %s (%s, attempt %d/%d)", task.task_id, task.source, task.attempts, task.max_attempts
        )

    async def _drain(self) -> None:
        """After a stop: give running tasks the grace period, then hand back the rest."""
        if not self.runs:
            return
        running = list(self.runs.values())
        log.info("stopping: %d tasks in flight, %.0f s grace", len(running), self.config.grace)
        _, late = await asyncio.wait(running, timeout=self.config.grace)
        for task in late:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)

    # ---- heartbeats

    def _fit_heartbeat(self, task: v1.LeasedTask) -> None:
        """Heartbeat at least three times per lease, whatever --heartbeat-interval says."""
        lease = (task.lease_expires_at - datetime.now(UTC)).total_seconds()
        if lease > 0 and self.heartbeat_every > lease / 3:
            self.heartbeat_every = max(lease / 3, 0.5)
            log.info("heartbeat every %.1f s: a third of the %.0f s lease", self.heartbeat_every, lease)

    async def _heartbeats(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_every)
            try:
                cancelled = await self.gate.heartbeat(self.stats.per_minute(), list(self.runs))
            except KeyRejected as exc:
                self._stop_for(exc)
                continue
            except ClientError as exc:
                log.warning("heartbeat failed: %s", exc.message)
                continue
            for task_id in cancelled:
                if task_id in self.runs:
                    log.info("task %s was cancelled at the gate; stopping it", task_id)
                    self.task_runs[task_id].cancelled_by_gate = True
                    self.runs[task_id].cancel()

    # ---- one task

    async def _run_task(self, run: TaskRun) -> None:
        try:
            await self._attempt(run)
        except asyncio.CancelledError:
            if not run.cancelled_by_gate:  # shutdown: report what is stored, give the rest back
                await asyncio.shield(self._hand_back(run))
            raise
        finally:
            if run.warc is not None:
                run.warc.close()  # what was never reported leaves no spool behind
            self.runs.pop(run.task.task_id, None)
            self.task_runs.pop(run.task.task_id, None)
            self.stats.tasks_held = len(self.runs)

    async def _attempt(self, run: TaskRun) -> None:
        task = run.task
        try:
            source: Source | None
            if task.profile is not None:  # a stored profile: its rules hold for its documents too
                source = ProfileSource(SourceContext(self.fetcher))
                run.task = task.model_copy(update={"params": profile_rules(task.profile) | task.params})
            else:
                source = self.sources.get(task.source)
            if source is None:
                raise SourceError(f"this client has no source {task.source!r}")
            await self._fetch_all(run, source)
            await self._finish(run)
        except Exception as exc:  # noqa: BLE001 - sorted out below; nothing may kill the loop
            problem = _leaf(exc)
            if isinstance(problem, TaskGone):
                log.warning(
                    "task %s: no longer ours (%s); its unreported results are dropped", task.task_id, problem
                )
            elif isinstance(problem, SourceError):
                await self._give_up(run, str(problem), retryable=False)
            elif isinstance(problem, DocumentFailed):  # a listing page could not be had, or was a block
                blocked = int(problem.blocked) + sum(f.blocked for f in run.transient)
                await self._report(run)  # what it stored before the listing stopped is recorded
                await self._give_up(run, problem.reason, retryable=not problem.permanent, blocked=blocked)
            elif isinstance(problem, GateUnavailable):
                log.error(
                    "task %s: gate unreachable (%s); the task returns after its lease", task.task_id, problem
                )
            else:
                log.error("task %s failed unexpectedly", task.task_id, exc_info=problem)
                await self._give_up(run, f"client error: {type(problem).__name__}: {problem}", True)

    async def _fetch_all(self, run: TaskRun, source: Source) -> None:
        """Every document the source gives; a listing that stops short (a page that could not
        be had, or was a block) still has the documents it gave fetched, then the task ends."""
        if run.task.profile is not None and run.task.profile.get("spread_chunk_size"):
            await self._spread(run, source)
            return
        stopped: DocumentFailed | None = None
        async with asyncio.TaskGroup() as group:
            batch: list[DocRef] = []
            try:
                async for ref in source.documents(run.task):
                    batch.append(ref)
                    if len(batch) >= KNOWN_BATCH:
                        await self._dispatch(run, batch, group)
                        batch = []
            except DocumentFailed as exc:
                stopped = exc
            await self._dispatch(run, batch, group)
        if stopped is not None:
            raise stopped

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

        async for ref in source.documents(run.task):
            batch.append(ref)
            if len(batch) >= v1.MAX_DOCUMENTS_PER_REPORT:
                await hand_over()
        await hand_over()

    async def _dispatch(self, run: TaskRun, refs: list[DocRef], group: asyncio.TaskGroup) -> None:
        refs = [ref for ref in refs if self._reportable(run, ref)]
        if not refs:
            return
        known = await self.gate.known([r.doc_id for r in refs], run.task.collection)
        for ref in refs:
            if ref.doc_id in known:  # already recorded at the gate: not fetched again
                run.skipped += 1
                self.stats.skipped += 1
                continue
            await self.slots.acquire()
            child = group.create_task(self._document(run, ref))
            child.add_done_callback(lambda _: self.slots.release())

    def _reportable(self, run: TaskRun, ref: DocRef) -> bool:
        """A doc_id the gate would refuse can be neither stored nor reported: count it as failed.
        A link off the task's hosts is not fetched: failed with the reason, its URL left out of
        the report (the gate would refuse it), so the operator sees it and can name the host in
        params.document_hosts."""
        if not v1.is_doc_id(ref.doc_id):
            run.failed += 1
            self.stats.failed += 1
            run.unreportable.append(ref.doc_id[:200])
            log.warning(
                "task %s: the source gave a doc_id the gate refuses: %r", run.task.task_id, ref.doc_id[:200]
            )
            return False
        if not run.scope.on_origin(ref.url):
            hosts = ", ".join(sorted(run.scope.hosts or ()))
            report = self._failure(
                run, ref, f"{ref.url} is not on the task's hosts ({hosts}); not fetched", True
            )
            assert report is not None
            run.pending.append(report.model_copy(update={"url": None}))
            return False
        return True

    async def _document(self, run: TaskRun, ref: DocRef) -> None:
        report: v1.DocumentReport | None
        try:
            report = await self._store_retrying(run, ref)
        except DocumentFailed as exc:
            report = self._failure(run, ref, exc.reason, exc.permanent, exc.blocked)
        except TooLarge:
            limit = self.config.max_document_size
            report = self._failure(run, ref, f"over --max-document-size ({limit})", True)
        except StaleLease as exc:
            raise LeaseLost(exc.message) from None
        except (KeyRefused, WriteRefused) as exc:
            report = self._failure(run, ref, exc.message, True)
        except StorageError as exc:
            run.storage_failed = True
            report = self._failure(run, ref, f"storage: {exc.message}", False)
        if report is not None:
            run.pending.append(report)
        self.stats.document_done()
        if len(run.pending) >= REPORT_BATCH:
            await self._report(run)

    async def _store_retrying(self, run: TaskRun, ref: DocRef) -> v1.DocumentReport:
        """Ride out a short storage outage (resets, stalls) instead of handing the task back at once:
        a hand-back spends one of the task's attempts, and a client that hands back every task it
        leases during an outage would spend the whole queue's."""
        for delay in (*STORAGE_RETRY_SECONDS, None):
            try:
                return await self._store(run, ref)
            except (StorageUnavailable, StorageTimeout) as exc:
                if delay is None or self.stopping.is_set():
                    raise
                log.info(
                    "document %s: storage trouble (%s); retrying in %.1f s", ref.doc_id, exc.message, delay
                )
                await asyncio.sleep(delay * random.uniform(0.5, 1.0))
        raise AssertionError("unreachable")

    async def _store(self, run: TaskRun, ref: DocRef) -> v1.DocumentReport:
        compress = self.config.compress == "gzip"
        key = document_key(
            ref.doc_id,
            ref.ext,
            shard_size=self.config.shard_size,
            compressed=compress,
            collection=run.task.collection,
        )
        fence = Fence(str(run.task.task_id), str(run.task.lease_token))
        limit = self.config.max_document_size
        found = PutOptions(max_size=limit, doc_id=ref.doc_id, ext=ref.ext, fence=fence)
        existing = await self.store.verified(key, found)
        if existing is not None:
            return await self._skipped(run, ref, existing)

        captured: list[v1.Capture | None] = [None]

        async def sink(body: Body) -> v1.StoredDocument:
            options = replace(found, content_type=body.content_type, compress=compress)
            captured[0] = body.capture  # the answer these bytes came in
            chunks = await bodies.checked(body, ref.ext, run.task.params)
            if run.warc is None:
                return await self.store.put(key, chunks, options)
            chunks, spooled = await run.warc.tee(chunks)
            try:
                stored = await self.store.put(key, chunks, options)
            except BaseException:
                run.warc.drop(spooled)
                raise
            run.warc.add(ref.doc_id, ref.url, body.capture, spooled)
            return stored

        try:
            stored = await self.fetcher.fetch(ref.url, sink, bodies.asked(run.task.params))
        except AlreadyStored:
            again = await self.store.verified(key, found)
            if again is None:
                raise
            return await self._skipped(run, ref, again)
        run.stored += 1
        self.stats.stored += 1
        self.stats.bytes += stored.size
        return v1.DocumentReport.of_stored(
            ref.doc_id, stored, url=ref.url, status=v1.DocumentStatus.STORED, capture=captured[0]
        )

    async def _skipped(self, run: TaskRun, ref: DocRef, stored: v1.StoredDocument) -> v1.DocumentReport:
        """In storage, but no record vouches for it: the store read it back and hashed it (a
        store's metadata is no proof: whoever can write the store can set it), and with
        --verify-existing fetch it is compared with what the origin serves, before it is reported
        as skipped. With --warc it is fetched and compared too: that fetch is its capture (and
        its WARC record), so no document is recorded without one."""
        capture = None
        if self.config.verify_existing == "fetch" or run.warc is not None:
            params = run.task.params
            served, capture, spooled = await self.fetcher.fetch(
                ref.url, partial(self._origin_copy, run, ref, params), bodies.asked(params)
            )
            if served != stored.sha256:
                if run.warc is not None and spooled is not None:
                    run.warc.drop(spooled)
                raise DocumentFailed(
                    f"the store holds other bytes at {stored.storage_key} (sha256 {stored.sha256[:12]}…) "
                    f"than the origin serves ({served[:12]}…); not recorded: remove the object to "
                    "fetch it again",
                    permanent=True,
                )
            if run.warc is not None and spooled is not None:
                run.warc.add(ref.doc_id, ref.url, capture, spooled)
        run.skipped += 1
        self.stats.skipped += 1
        return v1.DocumentReport.of_stored(
            ref.doc_id, stored, url=ref.url, status=v1.DocumentStatus.SKIPPED, capture=capture
        )

    async def _origin_copy(
        self, run: TaskRun, ref: DocRef, params: dict[str, Any], body: Body
    ) -> tuple[str, v1.Capture | None, Path | None]:
        """What the origin serves: its sha256, the capture of the answer, and (--warc) its bytes
        spooled for the WARC record."""
        chunks = await bodies.checked(body, ref.ext, params)
        spooled = None
        if run.warc is not None:
            chunks, spooled = await run.warc.tee(chunks)
        hasher, size = hashlib.sha256(), 0
        try:
            async for chunk in chunks:
                size += len(chunk)
                if size > self.config.max_document_size:
                    raise DocumentFailed(f"over --max-document-size ({self.config.max_document_size})", True)
                await asyncio.to_thread(hasher.update, chunk)
        except BaseException:
            if run.warc is not None and spooled is not None:
                run.warc.drop(spooled)
            raise
        return hasher.hexdigest(), body.capture, spooled

    def _failure(
        self, run: TaskRun, ref: DocRef, reason: str, permanent: bool, blocked: bool = False
    ) -> v1.DocumentReport | None:
        if not permanent:
            run.transient.append(TransientFailure(ref, reason, blocked))
            return None
        run.failed += 1
        self.stats.failed += 1
        log.info("document %s failed: %s", ref.doc_id, reason)
        return v1.DocumentReport.of_failure(ref.doc_id, url=ref.url, error=reason)

    async def _report(self, run: TaskRun, keep_last: int = 0) -> None:
        """Send pending reports through progress, leaving at most `keep_last` for the completion."""
        async with run.lock:
            while len(run.pending) > keep_last:
                size = _fitting(run.pending, min(v1.MAX_DOCUMENTS_PER_REPORT, len(run.pending) - keep_last))
                batch = run.pending[:size]
                await self.gate.progress(run.task, run.counts(), batch, await self._warc(run, batch))
                del run.pending[:size]

    async def _warc(self, run: TaskRun, batch: list[v1.DocumentReport]) -> v1.WarcReport | None:
        """--warc: the WARC of the batch's stored documents, stored before the report that
        records them (a store that fails it costs the WARC, not the documents: said in the log)."""
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

    async def _finish(self, run: TaskRun) -> None:
        task = run.task
        if run.transient and run.storage_failed:
            # Our store failed, not the work: give the task back without spending its attempt
            # (never complete it with its documents failed), and pause before leasing more.
            await self._report(run)
            first = run.transient[0]
            reason = f"the client's store failed ({first.ref.doc_id}: {first.reason})"
            await self._give_up(run, reason, retryable=True, attempt_spent=False)
            self._pause_for_storage()
            return
        self.storage_pauses = 0
        if run.transient and task.attempts < task.max_attempts:
            await self._report(run)
            await self._give_up(
                run,
                f"{len(run.transient)} documents failed transiently, e.g. "
                f"{run.transient[0].ref.doc_id}: {run.transient[0].reason}",
                retryable=True,
            )
            return
        for failure in run.transient:  # last attempt: record them, the task completes
            report = v1.DocumentReport.of_failure(
                failure.ref.doc_id, url=failure.ref.url, error=failure.reason
            )
            run.pending.append(report)
            run.failed += 1
        await self._report(run, keep_last=_fitting(run.pending, v1.MAX_DOCUMENTS_PER_REPORT, last=True))
        async with run.lock:
            warc = await self._warc(run, run.pending)
            await self.gate.complete(task, run.counts(), run.pending, self._summary(run), warc)
            run.pending.clear()
        self.stats.tasks_done += 1
        log.info(
            "task %s completed (lease %s): %s stored, %s skipped, %s failed",
            task.task_id,
            task.lease_token,
            run.stored,
            run.skipped,
            run.failed,
        )

    def _summary(self, run: TaskRun) -> dict[str, Any]:
        summary: dict[str, Any] = {"client": self.config.client_name, "session_id": self.config.session_id}
        if run.unreportable:
            summary["unreportable_doc_ids"] = run.unreportable[:20]
        if run.discovered:
            summary |= {"discovered": run.discovered, "queued": run.queued}
        return summary

    def _pause_for_storage(self) -> None:
        """Lease nothing for a while (10 s, doubling to 5 min) while the store keeps failing, so a
        broken store does not churn through the queue."""
        delay = min(STORAGE_PAUSE_MAX, STORAGE_PAUSE_SECONDS * 2**self.storage_pauses)
        self.storage_pauses += 1
        self.leasing_resumes_at = max(self.leasing_resumes_at, time.monotonic() + delay)
        log.warning("storage is failing; leasing nothing for %.0f s", delay)

    async def _give_up(
        self,
        run: TaskRun,
        error: str,
        retryable: bool,
        attempt_spent: bool = True,
        blocked: int | None = None,
    ) -> None:
        if blocked is None:
            blocked = sum(f.blocked for f in run.transient)
        try:
            await self.gate.fail(run.task, error, retryable, attempt_spent=attempt_spent, blocked=blocked)
        except ClientError as exc:
            log.warning(
                "task %s: could not report failure (%s); it returns after its lease",
                run.task.task_id,
                exc.message,
            )
        else:
            log.info(
                "task %s handed back (%s): %s", run.task.task_id, "retryable" if retryable else "final", error
            )

    async def _hand_back(self, run: TaskRun) -> None:
        """On shutdown: report what was stored, then give the task back (retryable)."""
        try:
            async with asyncio.timeout(HAND_BACK_SECONDS):
                await self._report(run)
                await self._give_up(run, "client stopped before finishing the task", retryable=True)
        except (ClientError, TimeoutError) as exc:
            log.warning(
                "task %s: hand-back incomplete (%s); it returns after its lease", run.task.task_id, exc
            )


def _leaf(exc: BaseException) -> BaseException:
    """The first real error inside (nested) exception groups from a TaskGroup."""
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc
