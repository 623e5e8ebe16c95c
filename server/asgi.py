"""Entry for uvicorn worker processes (`docgate server --workers N`): each parses the settings
once, from the environment and `.env` as the CLI left them (DATABASE_URL set to the database it
prepared and migrated), and checks the schema instead of migrating again."""

from __future__ import annotations

from fastapi import FastAPI

from common.logs import setup_logging
from server.app import create_app
from server.config import Settings
from server.errors import SettingError
from server.observe import RequestIdFilter


def app_from_env() -> FastAPI:
    settings = Settings.load()
    setup_logging(settings.log_level, settings.log_format, filters=(RequestIdFilter(),))
    dsn = settings.external_dsn()
    if not dsn:
        raise SettingError("no database: run through `docgate server`, or set DATABASE_URL")
    return create_app(settings, dsn, apply_migrations=False)
