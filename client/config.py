"""Client settings, the way the gate reads its own (pydantic-settings): a flag, else its
DOCGATE_* variable, else `.env`, else the default; parsed once at start, frozen, passed in.

A wrong value stops the client with one line naming the flag. The seed's `--db-host` and
`--db-port` are accepted and ignored with a warning: clients talk only HTTP to the gate.
"""

from __future__ import annotations

import argparse
import socket
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, PrivateAttr, SecretStr, StringConstraints, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from client.errors import ConfigError
from client.guard import parse_allowance
from common.settings import describe_validation_error
from protocol import v1

ENV_PREFIX = "DOCGATE_"
IGNORED_FLAGS = ("db_host", "db_port")  # the seed's; a client needs no database


class ClientConfig(BaseSettings):
    """Every client setting; `docgate client --help` lists them."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_file=".env", env_file_encoding="utf-8", extra="ignore", frozen=True
    )

    api_url: str
    api_key: SecretStr | None = None
    client_name: Annotated[str, Field(min_length=1, max_length=100)] = Field(
        default_factory=socket.gethostname
    )
    output_dir: Path = Path("downloaded_documents")
    storage: str | None = None
    poll_interval: Annotated[float, Field(ge=0.1, le=3600)] = 5.0
    heartbeat_interval: Annotated[float, Field(ge=0.5, le=86_400)] = 60.0
    concurrency: Annotated[int, Field(ge=1, le=4096)] = 32
    processes: Annotated[int, Field(ge=1, le=256)] = 1
    max_tasks: Annotated[int, Field(ge=1, le=v1.MAX_LEASE_TASKS)] = 2
    per_host_limit: Annotated[float, Field(ge=0.01)] | None = None
    per_host_connections: Annotated[int, Field(ge=1, le=4096)] | None = None
    compress: Literal["none", "gzip"] = "none"
    exit_when_idle: bool = False
    warc: bool = False
    allow_network: Annotated[tuple[str, ...], NoDecode] = ()
    max_document_size: Annotated[int, Field(ge=1)] = 20 << 20
    log_format: Literal["text", "json"] = "text"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    grace: Annotated[float, Field(ge=0, le=3600)] = 30.0
    retries: Annotated[int, Field(ge=0, le=20)] = 4
    download_timeout: Annotated[float, Field(ge=1, le=86_400)] = 300.0
    shard_size: Annotated[int, Field(ge=1)] = 50_000
    ca_cert: Path | None = None
    search_url: str | None = None
    link_pattern: str | None = None
    progress: Literal["auto", "bar", "log"] = "auto"
    verify_existing: Literal["hash", "fetch"] = "hash"
    user_agent: (
        Annotated[str, StringConstraints(min_length=1, max_length=300, pattern=r"^[\x20-\x7e]*$")] | None
    ) = None
    # Not a setting: who this process is to the gate, new at every start (X-Session-Id).
    _session_id: str = PrivateAttr(default_factory=lambda: uuid.uuid4().hex)

    @property
    def session_id(self) -> str:
        return self._session_id

    @property
    def api_key_value(self) -> str | None:
        return self.api_key.get_secret_value() if self.api_key else None

    @property
    def storage_url(self) -> str:
        return self.storage or f"file://{self.output_dir.resolve()}"

    @property
    def connections_per_host(self) -> int:
        if self.per_host_connections:
            return self.per_host_connections
        if self.per_host_limit:
            return max(1, int(self.per_host_limit))
        return self.concurrency

    @field_validator("api_url")
    @classmethod
    def _gate_url(cls, value: str) -> str:
        url = urlsplit(value)
        if url.scheme not in {"http", "https"} or not url.hostname:
            raise ValueError(f"must be an http:// or https:// URL, not {value!r}")
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator("allow_network", mode="before")
    @classmethod
    def _networks(cls, value: Any) -> Any:
        networks = [n.strip() for n in value.split(",") if n.strip()] if isinstance(value, str) else value
        for network in networks:
            parse_allowance(network)  # its ValueError names what is wrong
        return tuple(networks)

    @field_validator("ca_cert")
    @classmethod
    def _readable(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"{value} is not a readable file")
        return value


def flag_name(field: str) -> str:
    return f"--{field.replace('_', '-')} ({ENV_PREFIX}{field.upper()})"


FLAGS: dict[str, str] = {
    "api_url": "the gate, e.g. https://gate.example.org (required)",
    "api_key": "this client's API key",
    "client_name": "a name for logs (default: host name)",
    "output_dir": "store documents here (same as --storage file://DIR)",
    "storage": "store URL: file:///path, s3://bucket/prefix, b2://bucket/prefix, gate, mirror:A,B",
    "poll_interval": "seconds between lease attempts when the gate has no work (default 5)",
    "heartbeat_interval": "seconds between heartbeats, at most a third of the lease (default 60)",
    "concurrency": "downloads at once (default 32); as many more documents may be storing",
    "max_tasks": "tasks held at once (default 2)",
    "processes": "client processes, each with its own session, --concurrency and --max-tasks (default 1; "
    "one Python process uses one core)",
    "per_host_limit": "requests per second and connections per origin host (default: no limit)",
    "per_host_connections": "connections per origin host (default: --per-host-limit)",
    "compress": "none | gzip: store documents gzipped (sha256 stays that of the original)",
    "max_document_size": "bytes; a larger document is failed, not stored (default 20 MiB)",
    "log_format": "text | json",
    "log_level": "DEBUG | INFO | WARNING | ERROR",
    "grace": "seconds to finish in-flight work after SIGTERM/SIGINT (default 30)",
    "retries": "retries per document on connect errors, 429 and 5xx (default 4)",
    "download_timeout": "overall seconds per document attempt (default 300)",
    "shard_size": "must equal the gate's SHARD_SIZE (default 50000)",
    "ca_cert": "CA certificate (PEM) to verify the gate's TLS certificate",
    "search_url": "search listing URL for `search` tasks, with {page}",
    "link_pattern": "regex finding document links in a listing (groups: url, id, ext)",
    "progress": "auto | bar | log: live bar on a terminal, else a line every 10 s",
    "user_agent": "the User-Agent sent to origins (default: the gate's: docgate/<version> (+contact))",
    "verify_existing": "hash | fetch: an unrecorded object found in the store is read back and hashed "
    "(default), or also compared with what the origin serves (fetch: for stores others can write)",
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # one line, not a usage dump
        raise ConfigError(f"{message}; see docgate client --help")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="docgate client",
        description="Lease tasks from the gate, download their documents, store them.",
        epilog="Every flag can also be set with DOCGATE_<FLAG>, e.g. DOCGATE_API_URL, DOCGATE_CONCURRENCY, "
        "or in .env.",
        argument_default=argparse.SUPPRESS,
    )
    for name, text in FLAGS.items():
        p.add_argument("--" + name.replace("_", "-"), help=text)
    p.add_argument("--exit-when-idle", action="store_const", const=True, help="exit 0 once no task is left")
    p.add_argument(
        "--warc",
        action="store_const",
        const=True,
        help="also write the capture of every stored document as WARC (request and response records), "
        "stored under warc/<job>/ in the same store and recorded with the documents",
    )
    p.add_argument(
        "--allow-network",
        action="append",
        help="private range the client may fetch from (repeatable), e.g. 127.0.0.0/8, "
        "or with ports: 127.0.0.1/32:8000 or 10.0.0.0/8:8000-8100",
    )
    for name in IGNORED_FLAGS:
        p.add_argument("--" + name.replace("_", "-"), help="accepted for the seed's command lines; ignored")
    return p


def parse_config(argv: Sequence[str], *, env_file: str | None = ".env") -> tuple[ClientConfig, list[str]]:
    """The settings, and warnings to log; a wrong value raises ConfigError naming its flag."""
    values: dict[str, Any] = vars(build_parser().parse_args(list(argv)))
    warnings = [
        f"{flag_name(name).split(' ')[0]} is ignored: clients talk only HTTP to the gate"
        for name in IGNORED_FLAGS
        if values.pop(name, None) is not None
    ]
    try:
        config = ClientConfig(**(values | {"_env_file": env_file}))
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc, flag_name)) from None
    return config, warnings
