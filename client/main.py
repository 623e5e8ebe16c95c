"""`docgate client` / `python downloader_client.py`: start-up checks, signals, the summary."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Sequence

from client.config import ClientConfig, parse_config
from client.download import Fetcher
from client.errors import ClientError, ConfigError
from client.gate import GateAPI
from client.guard import Policy
from client.progress import ProgressView, Stats
from client.sources import SourceContext, load_sources
from client.worker import Worker
from common.logs import setup_logging, stop_logging
from common.settings import environment
from storage import Deadline, Storage, StorageError, open_storage
from storage.errors import StorageRefused

try:
    import uvloop
except ImportError:  # pragma: no cover - a platform without uvloop's wheels
    uvloop = None  # type: ignore[assignment]

log = logging.getLogger("docgate.client")


def main(argv: Sequence[str] | None = None) -> int:
    try:
        config, warnings = parse_config(sys.argv[1:] if argv is None else argv)
    except ConfigError as exc:
        print(f"docgate client: {exc.message}", file=sys.stderr)
        return 2
    if config.processes > 1:
        return run_processes(config, list(sys.argv[1:] if argv is None else argv))
    setup_logging(config.log_level, config.log_format)
    for warning in warnings:
        log.warning(warning)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per gate call is noise
    try:
        # uvloop (installed with uvicorn[standard]) when present: sockets and callbacks in C.
        return uvloop.run(run(config)) if uvloop is not None else asyncio.run(run(config))
    except ClientError as exc:
        print(f"docgate client: {exc.message}", file=sys.stderr)
        return 2
    finally:
        stop_logging()


def run_processes(config: ClientConfig, argv: list[str]) -> int:
    """--processes N: N clients of this key on this host, each its own process (a session, an
    event loop, a core), the same flags but one process and log-style progress each. Signals are
    passed on (each finishes its in-flight work, as one client does); the worst exit code is ours."""
    one = [*argv, "--processes", "1"] + (["--progress", "log"] if config.progress != "log" else [])
    command = [sys.executable, "-m", "docgate.cli", "client", *one]
    children = [subprocess.Popen(command) for _ in range(config.processes)]  # noqa: S603 - our own argv

    def forward(signum: int, _frame: object) -> None:
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(signum)

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, forward)
    codes = [child.wait() for child in children]
    return max(codes, key=lambda code: (code != 0, abs(code)))


def open_store(config: ClientConfig) -> Storage:
    try:
        return open_storage(
            config.storage_url,
            deadline=Deadline(),
            api_url=config.api_url,
            api_key=config.api_key_value,
            env=environment(),
        )
    except StorageError as exc:
        raise ConfigError(f"--storage: {exc.message}") from None


async def run(config: ClientConfig) -> int:
    store = open_store(config)
    ca_cert = str(config.ca_cert) if config.ca_cert else None
    gate = GateAPI(config.api_url, config.api_key_value, config.session_id, ca_cert=ca_cert)
    fetcher = Fetcher(
        Policy(config.allow_network),
        concurrency=config.concurrency,
        per_host_connections=config.connections_per_host,
        per_host_rate=config.per_host_limit,
        retries=config.retries,
        timeout=config.download_timeout,
        max_size=config.max_document_size,
        grants=gate.grants,  # the fleet's budget per origin host, held by the gate
    )
    if config.user_agent:
        fetcher.user_agent, fetcher.user_agent_fixed = config.user_agent, True
    stats = Stats()
    try:
        try:
            await gate.check()
        except ClientError as exc:
            raise ConfigError(f"cannot use the gate at {config.api_url} (--api-url): {exc.message}") from None
        await _probe(store)
        with contextlib.suppress(StorageError):
            swept = await store.sweep(3600)
            if swept:
                log.info("removed %d leftovers of interrupted writes from %s", swept, store.url)
        sources = load_sources(SourceContext(fetcher, config.search_url, config.link_pattern))
        worker = Worker(config, gate, store, fetcher, sources, stats)
        _install_signals(worker)
        view = asyncio.create_task(ProgressView(stats, config.progress).run())
        log.info(
            "client %s (session %s) working for %s, storing to %s",
            config.client_name,
            config.session_id[:8],
            config.api_url,
            store.url,
        )
        try:
            await worker.run()
        finally:
            view.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await view
    finally:
        await fetcher.close()
        await gate.close()
        await store.close()
    print(f"docgate client: {stats.line()}", file=sys.stderr, flush=True)
    if worker.key_rejected is not None:
        raise ConfigError(f"the gate no longer takes this key (--api-key): {worker.key_rejected.message}")
    return 0


PROBE_RETRY_SECONDS = (1.0, 2.0, 4.0, 8.0, 15.0, 30.0)


async def _probe(store: Storage) -> None:
    """Prove the store takes writes before leasing anything. A refusal (credentials, permissions, a
    missing bucket, a read-only path) stops the client at once; an outage is waited out a minute."""
    for delay in (*PROBE_RETRY_SECONDS, None):
        try:
            await store.probe()
            return
        except StorageRefused as exc:
            raise ConfigError(f"cannot write to the store (--storage {store.url}): {exc.message}") from None
        except StorageError as exc:
            if delay is None:
                raise ConfigError(
                    f"the store is unreachable (--storage {store.url}): {exc.message}"
                ) from None
            log.warning("store unreachable (%s); trying again in %.0f s", exc.message, delay)
            await asyncio.sleep(delay)


def _install_signals(worker: Worker) -> None:
    loop = asyncio.get_running_loop()

    def stop(signum: int) -> None:
        if worker.stopping.is_set():
            # A second signal: leave now, the gate re-leases what we held.
            print("docgate client: second signal, exiting at once", file=sys.stderr, flush=True)
            os._exit(128 + signum)
        log.info(
            "signal %s: finishing in-flight work (up to %.0f s), then exiting",
            signal.Signals(signum).name,
            worker.config.grace,
        )
        worker.stopping.set()

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop, signum)


if __name__ == "__main__":
    sys.exit(main())
