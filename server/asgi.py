"""Entry for uvicorn workers: build the app from the environment the CLI prepared."""

from __future__ import annotations

import os

from fastapi import FastAPI

from common.logs import setup_logging
from server.app import create_app
from server.config import Settings
from server.observe import RequestIdFilter


def app_from_env() -> FastAPI:
    settings = Settings.load()
    setup_logging(settings.log_level, settings.log_format, filters=(RequestIdFilter(),))
    dsn = os.environ.get("DOCGATE_RESOLVED_DSN") or settings.external_dsn()
    if not dsn:
        raise RuntimeError("no database: run through `docgate server`")
    return create_app(settings, dsn)
