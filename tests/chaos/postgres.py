"""A PostgreSQL of its own for a chaos run (pgserver's binaries), that can be crashed and restarted."""

from __future__ import annotations

import contextlib
import os
import signal
import time
import warnings
from pathlib import Path

import psutil


class Postgres:
    def __init__(self, pgdata: Path) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import pgserver

        self.server = pgserver.get_server(pgdata, cleanup_mode=None)
        self.pgdata = pgdata
        self.dsn = self.server.get_uri("postgres")

    def crash(self) -> None:
        """kill -9 the postmaster and every backend: no shutdown checkpoint, WAL recovery on start."""
        pid = self.server.get_pid()
        assert pid is not None
        family = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
        for proc in family:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.send_signal(signal.SIGKILL)
        psutil.wait_procs(family, timeout=10)

    def start(self) -> None:
        deadline = time.monotonic() + 60
        while True:
            try:
                self.server.ensure_postgres_running()
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def stop(self) -> None:
        pid = self.server.get_pid()
        if pid is not None and psutil.pid_exists(pid):
            os.kill(pid, signal.SIGINT)  # fast shutdown
            with contextlib.suppress(psutil.NoSuchProcess):
                psutil.Process(pid).wait(30)
