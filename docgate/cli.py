"""The `docgate` command: server, db migrate, admin-key reset."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import json
import os
import signal
import sys
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

from common.logs import setup_logging, stop_logging
from docgate.db import database, migrate, uuid_of, with_pool
from server.config import Settings
from server.errors import DocgateError
from storage import StorageError


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["client"]:  # the client parses its own flags (and their DOCGATE_* variables)
        from client.main import main as client_main

        return client_main(argv[1:])
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.run(args)
    except (DocgateError, StorageError) as exc:
        print(f"docgate: {exc.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    finally:
        stop_logging()
    return code


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="docgate", description=__doc__)
    sub = parser.add_subparsers(required=True, metavar="COMMAND")

    sub.add_parser("client", help="run a worker client (see docgate client --help)", add_help=False)
    server = sub.add_parser("server", help="run the gate server")
    server.add_argument("--host", help="bind address (API_HOST)")
    server.add_argument("--port", type=int, help="port (API_PORT)")
    server.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    server.add_argument(
        "--forwarded-allow-ips", help="proxies trusted for X-Forwarded-* (FORWARDED_ALLOW_IPS)"
    )
    server.set_defaults(run=run_server)

    db = sub.add_parser("db", help="database maintenance").add_subparsers(required=True)
    migrate = db.add_parser("migrate", help="apply pending migrations and exit")
    migrate.set_defaults(run=run_migrate)

    from docgate import clients_cli, demo, harvest_cli, hosts_cli, origin, sources_cli
    from docgate.storage_cli import add_commands

    add_commands(sub)
    clients_cli.add_commands(sub)
    harvest_cli.add_commands(sub)
    hosts_cli.add_commands(sub)
    sources_cli.add_commands(sub)
    origin.add_command(sub)
    demo.add_command(sub)

    jobs = sub.add_parser("jobs", help="job maintenance").add_subparsers(required=True)
    refetch = jobs.add_parser("refetch-failed", help="new tasks for a job's failed documents")
    refetch.add_argument("job_id", help="the job's id")
    refetch.add_argument("--chunk-size", type=int, default=100)
    refetch.set_defaults(run=run_refetch_failed)
    for verb, paused in (("pause", True), ("resume", False)):
        command = jobs.add_parser(verb, help=f"{verb} leasing a job's tasks")
        command.add_argument("job_id", help="the job's id")
        if paused:
            command.add_argument("--reason", default="paused by an operator", help="shown with the job")
        command.set_defaults(run=run_pause_job, paused=paused)

    export = sub.add_parser("export", help="a job's documents and their capture records, one line each")
    export.add_argument("job_id", help="the job's id")
    export.add_argument("--format", choices=("jsonl", "csv"), default="jsonl")
    export.add_argument("--output", help="write here instead of standard output")
    export.set_defaults(run=run_export)

    revisit = sub.add_parser("revisit", help="fetch a job's recorded documents again (versions, withdrawals)")
    revisit.add_argument("job_id", help="the job's id")
    revisit.set_defaults(run=run_revisit)

    warc = sub.add_parser("warc", help="the WARC files clients wrote (--warc)").add_subparsers(required=True)
    index = warc.add_parser("index", help="a job's WARC files as one sorted CDXJ index (cdxj-indexer)")
    index.add_argument("job_id", help="the job's id")
    index.add_argument("--output", help="write here instead of standard output")
    index.set_defaults(run=run_warc_index)
    pack = warc.add_parser("pack", help="a job's WARC files as one WACZ (index, pages, datapackage)")
    pack.add_argument("job_id", help="the job's id")
    pack.add_argument("--output", help="the WACZ file to write (default: <job>.wacz here)")
    pack.set_defaults(run=run_warc_pack)

    key = sub.add_parser("admin-key", help="admin key maintenance").add_subparsers(required=True)
    reset = key.add_parser("reset", help="replace every stored admin key with a new one")
    reset.set_defaults(run=run_admin_key_reset)
    return parser


def run_server(args: argparse.Namespace) -> int:
    overrides = {
        k: v
        for k, v in (
            ("api_host", args.host),
            ("api_port", args.port),
            ("forwarded_allow_ips", args.forwarded_allow_ips),
        )
        if v
    }
    settings = Settings.load(**overrides)
    if args.workers < 1:
        raise DocgateError("--workers must be at least 1")
    from server.observe import RequestIdFilter

    setup_logging(settings.log_level, settings.log_format, filters=(RequestIdFilter(),))
    asyncio.run(settings.open_store().close())  # a bad STORAGE_URL stops here, in one line
    import uvicorn

    # uvicorn re-raises the signal that stopped it once it has shut down; make
    # SIGTERM an exception then, so the embedded PostgreSQL below is stopped too.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    with database(settings) as dsn:
        migrate(dsn)  # migrations: once per start, here, before any worker serves
        print(banner(settings), flush=True)
        uvicorn.run(
            _app_for(settings, dsn, args.workers),
            factory=args.workers > 1,
            host=settings.api_host,
            port=settings.api_port,
            workers=args.workers,
            log_config=None,
            access_log=False,
            # Keep-alive above nginx's upstream keepalive_timeout (60 s): nginx closes first.
            proxy_headers=True,
            forwarded_allow_ips=settings.forwarded_allow_ips,
            timeout_keep_alive=75,
            timeout_graceful_shutdown=10,
        )
    return 0


def _app_for(settings: Settings, dsn: str, workers: int) -> Any:
    """One process: the app itself, built from the settings parsed here. Several: uvicorn starts
    each worker from an import string, so the worker parses the settings itself, with
    DATABASE_URL (the documented setting) naming the database prepared here."""
    from server.app import create_app

    if workers == 1:
        return create_app(settings, dsn, apply_migrations=False)
    os.environ["DATABASE_URL"] = dsn
    return "server.asgi:app_from_env"


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(0)


def run_migrate(args: argparse.Namespace) -> int:
    settings = Settings.load()
    setup_logging(settings.log_level, settings.log_format)
    with database(settings) as dsn:
        applied = migrate(dsn)
    print("applied: " + ", ".join(applied) if applied else "database is up to date")
    return 0


def run_admin_key_reset(args: argparse.Namespace) -> int:
    settings = Settings.load()
    from server.auth import hash_key, new_key
    from server.bootstrap import announce_admin_key
    from server.db.clients import replace_admin_keys
    from server.db.pool import create_pool

    async def reset(dsn: str) -> str:
        pool = await create_pool(dsn, 1, 1)
        try:
            key = new_key()
            await replace_admin_keys(pool, hash_key(key))
            return key
        finally:
            await pool.close()

    with database(settings) as dsn:
        migrate(dsn)
        print(announce_admin_key(asyncio.run(reset(dsn))))
    return 0


def run_refetch_failed(args: argparse.Namespace) -> int:
    from server.db.jobs import refetch_failed
    from server.db.pool import create_pool

    job_id = _job_id(args.job_id)
    if not 1 <= args.chunk_size <= 100_000:
        raise DocgateError("--chunk-size must be between 1 and 100000")
    settings = Settings.load()

    async def refetch(dsn: str) -> int:
        pool = await create_pool(dsn, 1, 1)
        try:
            created = await refetch_failed(pool, job_id, args.chunk_size, settings.max_attempts)
        finally:
            await pool.close()
        return created.tasks_created

    with database(settings) as dsn:
        migrate(dsn)
        print(f"job {job_id}: {asyncio.run(refetch(dsn))} new tasks for failed documents")
    return 0


def run_export(args: argparse.Namespace) -> int:
    """Stream the job's documents, a keyset page in memory at a time, so ten million export in
    the memory of one page."""
    from server.db.documents import EXPORT_COLUMNS, iter_job
    from server.db.pool import create_pool

    job_id = _job_id(args.job_id)
    settings = Settings.load()

    async def export(dsn: str, out: TextIO) -> int:
        pool = await create_pool(dsn, 1, 1)
        lines = 0
        try:
            writer = csv.writer(out) if args.format == "csv" else None
            if writer is not None:
                writer.writerow(EXPORT_COLUMNS)
            async for row in iter_job(pool, job_id):
                values = [_plain(row[c]) for c in EXPORT_COLUMNS]
                if writer is not None:
                    writer.writerow(values)
                else:
                    out.write(
                        json.dumps(dict(zip(EXPORT_COLUMNS, values, strict=True)), ensure_ascii=False) + "\n"
                    )
                lines += 1
        finally:
            await pool.close()
        return lines

    with database(settings) as dsn:
        migrate(dsn)
        try:
            with _output(args.output) as out:
                lines = asyncio.run(export(dsn, out))
        except OSError as exc:
            raise DocgateError(f"--output {args.output}: {exc.strerror}") from None
    print(f"job {job_id}: {lines} documents exported", file=sys.stderr)
    return 0


def run_warc_index(args: argparse.Namespace) -> int:
    """Fetch the job's recorded WARC files from the store (one at a time, into a temporary
    folder that mirrors their keys) and index them with cdxj-indexer, sorted: the CDXJ that
    pywb and other replay tools read, each line naming its file by its storage key."""
    from cdxj_indexer.main import write_cdx_index

    from server.db.documents import warc_keys
    from server.db.pool import create_pool

    job_id = _job_id(args.job_id)
    settings = Settings.load()
    store = settings.open_store()

    async def copy(dsn: str, folder: Path) -> int:
        pool = await create_pool(dsn, 1, 1)
        try:
            keys = await warc_keys(pool, job_id)
            for key in keys:
                path = folder / key
                path.parent.mkdir(parents=True, exist_ok=True)
                with path.open("wb") as out:
                    async for chunk in store.open(key):
                        out.write(chunk)
        finally:
            await pool.close()
            await store.close()
        return len(keys)

    with database(settings) as dsn, tempfile.TemporaryDirectory(prefix="docgate-cdxj-") as tmp:
        migrate(dsn)
        files = asyncio.run(copy(dsn, Path(tmp)))
        if not files:
            raise DocgateError(f"job {job_id} has no WARC files recorded (clients write them with --warc)")
        inputs = sorted(str(p) for p in Path(tmp).rglob("*.warc.gz"))
        try:
            write_cdx_index(args.output, inputs, {"sort": True, "dir_root": tmp})
        except OSError as exc:
            raise DocgateError(f"--output {args.output}: {exc.strerror}") from None
    print(f"job {job_id}: {files} WARC files indexed", file=sys.stderr)
    return 0


def run_revisit(args: argparse.Namespace) -> int:
    """Queue the job's recorded documents to be fetched again (server/db/revisits.py)."""
    from server.db import revisits
    from server.db.pool import Pool

    job_id = _job_id(args.job_id)
    max_attempts = Settings.load().max_attempts

    async def work(pool: Pool) -> Any:
        return await revisits.start(pool, job_id, max_attempts)

    started = with_pool(work)
    print(f"job {job_id}: {started.documents} documents to revisit, in {started.tasks_created} tasks")
    return 0


def run_warc_pack(args: argparse.Namespace) -> int:
    """The job's WARC files, read from the gate's store (STORAGE_URL), as one WACZ
    (docgate.wacz): streaming, in bounded memory, each file checked against its record."""
    from docgate.wacz import pack
    from server.db.pool import Pool

    job_id = _job_id(args.job_id)
    output = Path(args.output or f"{job_id}.wacz")
    if not output.parent.is_dir():
        raise DocgateError(f"--output {output}: no folder {output.parent}")
    store = Settings.load().open_store()

    async def work(pool: Pool) -> Any:
        try:
            return await pack(pool, store, job_id, output)
        finally:
            await store.close()

    try:
        packed = with_pool(work)
    except OSError as exc:
        raise DocgateError(f"--output {output}: {exc.strerror}") from None
    print(
        f"job {job_id}: {packed.warcs} WARC files, {packed.records} records indexed, "
        f"{packed.pages} pages, in {output}",
        file=sys.stderr,
    )
    return 0


@contextlib.contextmanager
def _output(path: str | None) -> Iterator[TextIO]:
    if path is None:
        yield sys.stdout
        return
    with open(path, "w", encoding="utf-8", newline="") as out:
        yield out


def _plain(value: Any) -> Any:
    """A value as JSON and CSV write it: times in ISO 8601, ids as text."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    return value


def _job_id(text: str) -> uuid.UUID:
    return uuid_of(text, "job id")


def run_pause_job(args: argparse.Namespace) -> int:
    from server.db import pausing

    job_id = _job_id(args.job_id)
    reason = " ".join(str(getattr(args, "reason", "")).split())[:500] or "paused by an operator"
    if args.paused:
        with_pool(lambda pool: pausing.pause_job(pool, job_id, reason))
        print(f"job {job_id}: paused; no more of its tasks are leased (those out on lease finish)")
    else:
        with_pool(lambda pool: pausing.resume_job(pool, job_id))
        print(f"job {job_id}: resumed; its tasks are leased again")
    return 0


def banner(settings: Settings) -> str:
    url = f"http://{settings.api_host}:{settings.api_port}"
    store = (
        "embedded PostgreSQL in " + str(settings.data_dir / "pg")
        if settings.embedded
        else ("external PostgreSQL")
    )
    return f"""
  docgate gate starting on {url}  ({store})
  API docs: {url}/docs    health: {url}/health    metrics: {url}/metrics

  Next, in another terminal in this folder, with ADMIN set to the admin key:
    .venv/bin/docgate origin --registry --port 8090 &
    curl -s -X PUT {url}/api/v1/sources/reyestr -H "X-API-Key: $ADMIN" \\
         -H 'Content-Type: application/json' -d @examples/reyestr.json
    curl -s -X POST {url}/api/v1/tasks/create -H "X-API-Key: $ADMIN" \\
         -H 'Content-Type: application/json' -d '{{"source": "reyestr", "start_page": 1,
           "search_params": {{"CourtRegion": "11", "INSType": "1"}}, "max_documents": 100}}'
    KEY=$(curl -s -X POST {url}/api/v1/clients/register -H "X-API-Key: $ADMIN" \\
         -H 'Content-Type: application/json' -d '{{"client_name": "client-1"}}' \\
         | python3 -c 'import json, sys; print(json.load(sys.stdin)["api_key"])')
    .venv/bin/docgate client --api-url {url} --api-key "$KEY" --output-dir data/documents \\
         --allow-network 127.0.0.1/32:8090 --exit-when-idle
    curl -s {url}/api/v1/tasks/status -H "X-API-Key: $ADMIN"
"""


if __name__ == "__main__":
    sys.exit(main())
