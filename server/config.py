"""Gate settings: read once at start from the environment, then `.env`, then defaults."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

from pydantic import Field, SecretStr, StringConstraints, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from common.settings import describe_validation_error, environment
from protocol import v1
from protocol.version import user_agent
from server.errors import SettingError
from storage import Deadline, Storage, StorageError, open_storage


class LogFormat(StrEnum):
    TEXT = "text"
    JSON = "json"


class UploadGzip(StrEnum):
    KEEP = "keep"  # store gzip uploads as sent (key ends in .gz, compressed=true)
    DECOMPRESS = "decompress"  # inflate them and store the plain document


HEADER_TEXT = r"^[\x20-\x7e]*$"  # what an HTTP header may carry as it is: printable ASCII


class Settings(BaseSettings):
    """Every gate setting; `.env.example` lists them with their defaults."""

    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        frozen=True,
        case_sensitive=False,
    )

    database_url: SecretStr | None = None
    db_host: str | None = None
    db_port: Annotated[int, Field(ge=1, le=65535)] = 5432
    db_name: str | None = None
    db_user: str | None = None
    db_password: SecretStr | None = None
    db_pool_min: Annotated[int, Field(ge=1, le=1000)] = 2
    db_pool_max: Annotated[int, Field(ge=1, le=1000)] = 10
    data_dir: Path = Path("./data")

    api_host: str = "127.0.0.1"
    # Proxies whose X-Forwarded-For / -Proto are believed (nginx on the same host by default).
    forwarded_allow_ips: str = "127.0.0.1"
    api_port: Annotated[int, Field(ge=1, le=65535)] = 8000
    enable_auth: bool = True
    admin_api_key: Annotated[SecretStr, Field(min_length=16)] | None = None
    max_body_bytes: Annotated[int, Field(ge=1024, le=1 << 30)] = v1.MAX_BODY_BYTES

    lease_seconds: Annotated[float, Field(ge=1, le=86_400)] = 300
    max_attempts: Annotated[int, Field(ge=1, le=v1.MAX_ATTEMPTS_BOUND)] = 5
    max_job_tasks: Annotated[int, Field(ge=1, le=v1.MAX_JOB_COUNT)] = v1.MAX_JOB_COUNT
    # Leases one client may hold at once (a client asks for at most MAX_LEASE_TASKS per call).
    max_leases_per_client: Annotated[int, Field(ge=1, le=1_000_000)] = 100
    retry_backoff_seconds: Annotated[float, Field(ge=0, le=86_400)] = 30
    retry_backoff_max_seconds: Annotated[float, Field(ge=0, le=7 * 86_400)] = 3_600
    reap_interval_seconds: Annotated[float, Field(gt=0, le=3_600)] = 1.0
    # Who runs this archive, for the origins' operators: a URL or an e-mail address; it goes in
    # the User-Agent every client sends (docgate/<version> (+<contact>)), unless USER_AGENT is set.
    operator_contact: Annotated[str, StringConstraints(max_length=200, pattern=HEADER_TEXT)] | None = None
    user_agent: (
        Annotated[str, StringConstraints(min_length=1, max_length=300, pattern=HEADER_TEXT)] | None
    ) = None
    # task_events older than this are pruned (0 = kept for ever); the activity rollups that feed
    # the dashboard, throughput and ETAs are kept a week.
    task_events_retention_seconds: Annotated[float, Field(ge=0, le=10 * 365 * 86_400)] = 3 * 86_400
    # Jobs of more tasks than this are answered 202 at once and created in the background.
    job_background_tasks: Annotated[int, Field(ge=1, le=v1.MAX_JOB_COUNT)] = 20_000
    poll_fallback_seconds: Annotated[float, Field(gt=0, le=60)] = 1.0
    client_stale_seconds: Annotated[float, Field(gt=0)] = 180

    # Politeness across the fleet: per origin host, summed over every client (0 = no limit).
    host_rate_limit: Annotated[float, Field(ge=0, le=100_000)] = 10
    host_connections: Annotated[int, Field(ge=0, le=100_000)] = 16
    # A lease hands out no more of one host's tasks than this many per connection of its budget
    # (over every job on the host), and the next job's instead; 0: no limit.
    host_tasks_per_connection: Annotated[int, Field(ge=0, le=10_000)] = 2
    # The same per egress address: the clients the gate sees coming from one address share it
    # (registries limit by IP). 0 = none.
    host_rate_limit_per_address: Annotated[float, Field(ge=0, le=100_000)] = 0
    host_connections_per_address: Annotated[int, Field(ge=0, le=100_000)] = 0
    # The dead-man switch: a host pauses by itself when more than this share of its answers over
    # the last 5 minutes (at least HOST_PAUSE_MIN_ANSWERS of them) were blocks or errors.
    host_pause_ratio: Annotated[float, Field(gt=0, le=1)] = 0.5
    host_pause_min_answers: Annotated[int, Field(ge=1)] = 20
    # The same for a job: it pauses by itself when more than JOB_PAUSE_RATIO of its answers over
    # the last 5 minutes (at least JOB_PAUSE_MIN_ANSWERS) were block pages.
    job_pause_ratio: Annotated[float, Field(gt=0, le=1)] = 0.5
    job_pause_min_answers: Annotated[int, Field(ge=1)] = 20
    # Origin hosts with labels of their own in /metrics (the rest are host="other").
    metrics_hosts: Annotated[int, Field(ge=0, le=1_000)] = 20

    storage_url: str | None = None  # default: DATA_DIR/documents
    shard_size: Annotated[int, Field(ge=1, le=1 << 40)] = 50_000
    storage_timeout_seconds: Annotated[float, Field(gt=0, le=3_600)] = 15
    storage_min_rate: Annotated[float, Field(gt=0)] = float(1 << 20)
    max_upload_bytes: Annotated[int, Field(ge=1)] = 1 << 30
    upload_gzip: UploadGzip = UploadGzip.KEEP

    log_level: str = "INFO"
    log_format: LogFormat = LogFormat.TEXT

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if self.db_pool_min > self.db_pool_max:
            raise ValueError("DB_POOL_MIN must not exceed DB_POOL_MAX")
        if self.log_level.upper() not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise ValueError("LOG_LEVEL must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
        return self

    @property
    def embedded(self) -> bool:
        """True when no external PostgreSQL is configured."""
        return self.database_url is None and self.db_host is None and self.db_name is None

    @property
    def store_url(self) -> str:
        return self.storage_url or str((self.data_dir / "documents").resolve())

    @property
    def agent(self) -> str:
        """The User-Agent clients send origins: USER_AGENT, else docgate/<version> (+OPERATOR_CONTACT)."""
        return self.user_agent or user_agent(self.operator_contact)

    def open_store(self) -> Storage:
        """The gate's store; a bad STORAGE_URL or a missing variable it needs (B2_*, read from
        the environment and `.env`) raises SettingError naming it."""
        try:
            return open_storage(
                self.store_url,
                deadline=Deadline(self.storage_timeout_seconds, self.storage_min_rate),
                env=environment(),
            )
        except StorageError as exc:
            raise SettingError(f"setting STORAGE_URL: {exc.message}") from None

    def external_dsn(self) -> str | None:
        if self.database_url is not None:
            return self.database_url.get_secret_value()
        if self.embedded:
            return None
        user = quote(self.db_user or "postgres")
        password = quote(self.db_password.get_secret_value()) if self.db_password else ""
        auth = f"{user}:{password}@" if password else f"{user}@"
        return f"postgresql://{auth}{self.db_host or '127.0.0.1'}:{self.db_port}/{self.db_name or 'docgate'}"

    @classmethod
    def load(cls, **overrides: Any) -> Settings:
        """Parse settings once; a bad value raises SettingError naming the variable."""
        try:
            return cls(**overrides)
        except ValidationError as exc:
            raise SettingError(describe_validation_error(exc)) from None
