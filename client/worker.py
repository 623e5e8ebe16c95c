"""The client's work loop: lease tasks, run each (client.steps) side by side, heartbeat.

One `Worker` per process. Tasks run side by side (up to --max-tasks); their documents share
one pool of slots (twice --concurrency: downloads, and small documents storing after theirs).
A task's run is its own (client.run.TaskRun, folded from each step's outcome); the worker
keeps only what spans tasks: the leases held, the heartbeat, and a pause in leasing while the
store keeps failing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING
from uuid import UUID

from client.config import ClientConfig
from client.document import DocumentStep
from client.download import Fetcher
from client.errors import ClientError, KeyRejected
from client.gate import GateAPI
from client.progress import Stats
from client.run import TaskRun
from client.sources import Source, SourceContext, SourceError
from client.sources.profile import ProfileSource
from client.steps import Ending, TaskSteps
from client.work import Work
from protocol import v1
from protocol.errors import ErrorCode
from protocol.failures import FailureCode
from storage import Storage
from storage.base import Fence

if TYPE_CHECKING:
    from client.warc import WarcRecorder

log = logging.getLogger("docgate.client")
STORAGE_PAUSE_SECONDS, STORAGE_PAUSE_MAX = 10.0, 300.0  # no leasing while the store keeps failing


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
        # Twice --concurrency documents in flight: the downloads themselves are held to
        # --concurrency by the fetcher's connections, and as many more may be storing (a small
        # document is stored after its download is over: client.document.READ_WHOLE).
        self.slots = asyncio.Semaphore(2 * config.concurrency)
        self.runs: dict[UUID, asyncio.Task[None]] = {}
        self.task_runs: dict[UUID, TaskRun] = {}
        self.stopping = asyncio.Event()
        self.key_rejected: KeyRejected | None = None  # the key was revoked or rotated: stop
        self.storage_pauses = 0  # tasks handed back in a row because the store failed
        self.leasing_resumes_at = 0.0  # monotonic time; no lease before it
        self.heartbeat_every = config.heartbeat_interval
        # WARC files (a job's `warc`, or --warc) are written here (a spool folder of this process,
        # made when the first task asks for one) before they are stored.
        self.warc_spool: Path | None = None
        self.warc_threads: ThreadPoolExecutor | None = None
        document = DocumentStep(config, store, fetcher, self.stopping)
        self.steps = TaskSteps(config, gate, document, self.slots)
        fetcher.limiter.held = lambda: list(self.runs)  # asked about with every grant
        fetcher.limiter.on_paused = self._paused_at_gate

    # ---- the lease loop

    async def run(self) -> None:
        heartbeats = asyncio.create_task(self._heartbeats(), name="heartbeats")
        try:
            await self._lease_loop()
            await self._drain()
            await self._goodbye()
        finally:
            heartbeats.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeats
            if self.warc_threads is not None and self.warc_spool is not None:
                self.warc_threads.shutdown(wait=True)
                shutil.rmtree(self.warc_spool, ignore_errors=True)

    def _warc_recorder(self, task: v1.LeasedTask) -> WarcRecorder:
        from client.warc import WarcRecorder  # warcio is imported by clients that write WARC only

        if self.warc_spool is None or self.warc_threads is None:
            self.warc_spool = Path(tempfile.mkdtemp(prefix="docgate-warc-"))
            self.warc_threads = ThreadPoolExecutor(2, thread_name_prefix="warc")
        fence = Fence(str(task.task_id), str(task.lease_token))
        return WarcRecorder(
            self.store, task, self.fetcher.user_agent, self.warc_spool, self.warc_threads, fence
        )

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
            if exc.code == ErrorCode.LEASE_CAP:  # this key's cap (the operator's): wait for a task
                log.info("lease cap reached: %s", exc.message)
                await self._wait_any(list(self.runs.values()), seconds=self.config.poll_interval)
                return None
            if exc.code == ErrorCode.SESSION_ENDED:  # this process said goodbye: nothing more comes
                self.stopping.set()
                return None
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
        try:
            work = Work.of(task)
        except SourceError as exc:  # its params do not hold: failed at once, never fetched
            self.runs[task.task_id] = asyncio.create_task(
                self._refuse(task, str(exc)), name=f"task-{task.task_id}"
            )
            return
        run = TaskRun(work, self.stats)
        if task.user_agent and not self.fetcher.user_agent_fixed:  # the gate's, unless --user-agent
            self.fetcher.user_agent = task.user_agent
        checks = getattr(work.params, "verify", False)  # a check stores nothing: no capture of it
        if (self.config.warc or work.rules.warc) and not checks:
            run.warc = self._warc_recorder(task)
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

    async def _goodbye(self) -> None:
        """Tell the gate this process is gone: what a lease request still waiting there would
        hand it goes back at once (an older gate, or one not answering, lets it run out)."""
        try:
            handed = await self.gate.goodbye()
        except ClientError as exc:
            log.info("goodbye not heard (%s): leases still held run out by themselves", exc.message)
            return
        if handed:
            log.info("goodbye: the gate took back %d leases this process still held", handed)

    # ---- heartbeats

    def _fit_heartbeat(self, task: v1.LeasedTask) -> None:
        """Heartbeat at least three times per lease, whatever --heartbeat-interval says."""
        lease = (task.lease_expires_at - datetime.now(UTC)).total_seconds()
        if lease > 0 and self.heartbeat_every > lease / 3:
            self.heartbeat_every = max(lease / 3, 0.5)
            log.info("heartbeat every %.1f s: a third of the %.0f s lease", self.heartbeat_every, lease)

    def _paused_at_gate(self, task_ids: list[UUID]) -> None:
        """The gate paused these tasks' jobs: stop each at once and hand it back (what it stored
        reported, the rest unfetched, its attempt not spent)."""
        for task_id in task_ids:
            run, running = self.task_runs.get(task_id), self.runs.get(task_id)
            if run is None or running is None or run.paused_by_gate or run.cancelled_by_gate:
                continue
            log.info("task %s: its job was paused at the gate; handing it back", task_id)
            run.paused_by_gate = True
            running.cancel()

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
                    if (run := self.task_runs.get(task_id)) is not None:
                        run.cancelled_by_gate = True
                    self.runs[task_id].cancel()

    # ---- one task

    async def _run_task(self, run: TaskRun) -> None:
        try:
            ending = await self.steps.attempt(run, self._source(run.work))
            if ending is Ending.STORE_FAILED:
                self._pause_for_storage()
            elif ending is Ending.DONE:
                self.storage_pauses = 0
                self.stats.tasks_done += 1
        except asyncio.CancelledError:
            if not run.cancelled_by_gate:  # shutdown: report what is stored, give the rest back
                await asyncio.shield(self.steps.hand_back(run))
            raise
        finally:
            if run.warc is not None:
                run.warc.close()  # what was never reported leaves no spool behind
            self.runs.pop(run.task.task_id, None)
            self.task_runs.pop(run.task.task_id, None)
            self.stats.tasks_held = len(self.runs)

    async def _refuse(self, task: v1.LeasedTask, reason: str) -> None:
        try:
            await self.gate.fail(task, FailureCode.SOURCE, reason, False)
            log.info("task %s failed: %s", task.task_id, reason)
        except ClientError as exc:
            log.warning(
                "task %s: could not report failure (%s); it returns after its lease",
                task.task_id,
                exc.message,
            )
        finally:
            self.runs.pop(task.task_id, None)

    def _source(self, work: Work) -> Source | None:
        if work.profile is not None:  # a stored profile: the client runs it as data
            return ProfileSource(SourceContext(self.fetcher, known=self.gate.known))
        return self.sources.get(work.task.source)

    def _pause_for_storage(self) -> None:
        """Lease nothing for a while (10 s, doubling to 5 min) while the store keeps failing, so a
        broken store does not churn through the queue."""
        delay = min(STORAGE_PAUSE_MAX, STORAGE_PAUSE_SECONDS * 2**self.storage_pauses)
        self.storage_pauses += 1
        self.leasing_resumes_at = max(self.leasing_resumes_at, time.monotonic() + delay)
        log.warning("storage is failing; leasing nothing for %.0f s", delay)
