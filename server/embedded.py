"""Embedded PostgreSQL (the pgserver package) in DATA_DIR/pg, for set-ups without a server."""

from __future__ import annotations

import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any

from server.errors import SettingError

log = logging.getLogger("docgate.embedded")
DATABASE = "docgate"


def start_embedded(data_dir: Path) -> tuple[Any, str]:
    """Start (or join) PostgreSQL in data_dir/pg; return the handle and a DSN for `docgate`."""
    pgdata = (data_dir / "pg").resolve()
    try:
        pgdata.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SettingError(f"setting DATA_DIR is unusable: cannot create {pgdata}: {exc}") from None
    _forget_dead_handles(pgdata)
    logging.getLogger("pgserver").setLevel(logging.WARNING)  # it narrates every command
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pgserver warns about XDG_RUNTIME_DIR; harmless
        import pgserver

        server = pgserver.get_server(pgdata, cleanup_mode="stop")  # type: ignore[attr-defined]
    exists = server.psql(f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE}';")
    if "(1 row)" not in exists:
        server.psql(f"CREATE DATABASE {DATABASE};")
    log.info("embedded PostgreSQL running in %s", pgdata)
    return server, server.get_uri(DATABASE)


def _forget_dead_handles(pgdata: Path) -> None:
    """Drop pids of processes that died without cleaning up (kill -9) from pgserver's list.

    pgserver stops PostgreSQL only when the last process on its list exits; a
    dead pid left there would keep the server running forever after.
    """
    handles = pgdata / ".handle_pids.json"
    try:
        pids = json.loads(handles.read_text())
    except (OSError, ValueError):
        return
    alive = [pid for pid in pids if isinstance(pid, int) and _alive(pid)]
    if alive != pids:
        handles.write_text(json.dumps(alive))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
