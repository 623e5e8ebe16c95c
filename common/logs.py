"""Logging that never blocks the event loop: records go through a queue to a listener thread."""

from __future__ import annotations

import json
import logging
import queue
import sys
from datetime import UTC, datetime
from logging.handlers import QueueHandler, QueueListener

_listener: QueueListener | None = None


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(getattr(record, "fields", {}))
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    """The plain format, with the request id appended when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        rid = getattr(record, "fields", {}).get("request_id")
        return f"{line} [{rid}]" if rid else line


class OneLine(logging.Filter):
    """Fold a record's traceback into one line: for libraries that log expected outages (the
    database is down) with a full traceback every second."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            record.msg = f"{record.getMessage()} ({type(exc).__name__}: {exc})"
            record.args = None
            record.exc_info = None
            record.exc_text = None
        return True


QUIET_TRACEBACKS = ("asyncpg.pool",)


def setup_logging(level: str = "INFO", fmt: str = "text", filters: tuple[logging.Filter, ...] = ()) -> None:
    """Route every logger (uvicorn's too) through one queue; idempotent."""
    global _listener
    if _listener is not None:
        _listener.stop()
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    log_queue: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    root = logging.getLogger()
    handler_in = QueueHandler(log_queue)
    for extra in filters:  # run in the logging thread's caller, where context vars are set
        handler_in.addFilter(extra)
    root.handlers[:] = [handler_in]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    for name in QUIET_TRACEBACKS:
        quiet = logging.getLogger(name)
        if not any(isinstance(f, OneLine) for f in quiet.filters):
            quiet.addFilter(OneLine())
    _listener = QueueListener(log_queue, handler, respect_handler_level=True)
    _listener.start()


def stop_logging() -> None:
    """Flush queued records; call once at exit."""
    global _listener
    if _listener is not None:
        _listener.stop()
        _listener = None
