"""Client settings: flags, each with a DOCGATE_* environment variable, checked once at start."""

from __future__ import annotations

import argparse
import ipaddress
import os
import socket
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from client.errors import ConfigError

ENV_PREFIX = "DOCGATE_"


@dataclass(frozen=True)
class ClientConfig:
    api_url: str
    api_key: str | None = None
    client_name: str = field(default_factory=socket.gethostname)
    output_dir: Path = Path("downloaded_documents")
    storage: str | None = None
    poll_interval: float = 5.0
    heartbeat_interval: float = 60.0
    concurrency: int = 32
    max_tasks: int = 2
    per_host_limit: float | None = None
    per_host_connections: int | None = None
    compress: str = "none"
    exit_when_idle: bool = False
    allow_network: tuple[str, ...] = ()
    max_document_size: int = 20 << 20
    log_format: str = "text"
    log_level: str = "INFO"
    grace: float = 30.0
    retries: int = 4
    download_timeout: float = 300.0
    shard_size: int = 50_000
    ca_cert: str | None = None
    search_url: str | None = None
    link_pattern: str | None = None
    progress: str = "auto"
    session_id: str = field(default_factory=lambda: uuid.uuid4().hex)

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


def _env(name: str, env: Mapping[str, str]) -> str | None:
    return env.get(ENV_PREFIX + name.upper().replace("-", "_"))


def build_parser(env: Mapping[str, str] | None = None) -> argparse.ArgumentParser:
    env = os.environ if env is None else env
    p = argparse.ArgumentParser(
        prog="docgate client",
        description="Lease tasks from the gate, download their documents, store them.",
        epilog="Every flag can also be set with DOCGATE_<FLAG>, e.g. DOCGATE_API_URL, DOCGATE_CONCURRENCY.",
    )

    def flag(name: str, **kwargs: object) -> None:
        value = _env(name, env)
        if value is not None:
            kwargs["default"] = value
        p.add_argument(f"--{name}", **kwargs)  # type: ignore[arg-type]

    flag("api-url", help="the gate, e.g. https://gate.example.org (required)")
    flag("api-key", help="this client's API key")
    flag("client-name", help="a name for logs (default: host name)")
    flag("output-dir", help="store documents here (same as --storage file://DIR)")
    flag("storage", help="store URL: file:///path, s3://bucket/prefix, b2://bucket/prefix, gate, mirror:A,B")
    flag("poll-interval", help="seconds between lease attempts when the gate has no work (default 5)")
    flag("heartbeat-interval", help="seconds between heartbeats, at most a third of the lease (default 60)")
    flag("concurrency", help="documents in flight (default 32)")
    flag("max-tasks", help="tasks held at once (default 2)")
    flag("per-host-limit", help="requests per second and connections per origin host (default: no limit)")
    flag("per-host-connections", help="connections per origin host (default: --per-host-limit)")
    flag("compress", help="none | gzip: store documents gzipped (sha256 stays that of the original)")
    flag("exit-when-idle", action="store_true", help="exit 0 once the gate has no task left")
    p.add_argument(
        "--allow-network",
        action="append",
        default=None,
        help="private range the client may fetch from (repeatable), e.g. 127.0.0.0/8",
    )
    flag("max-document-size", help="bytes; a larger document is failed, not stored (default 20 MiB)")
    flag("log-format", help="text | json")
    flag("log-level", help="DEBUG | INFO | WARNING | ERROR")
    flag("grace", help="seconds to finish in-flight work after SIGTERM/SIGINT (default 30)")
    flag("retries", help="retries per document on connect errors, 429 and 5xx (default 4)")
    flag("download-timeout", help="overall seconds per document attempt (default 300)")
    flag("shard-size", help="must equal the gate's SHARD_SIZE (default 50000)")
    flag("ca-cert", help="CA certificate (PEM) to verify the gate's TLS certificate")
    flag("search-url", help="search listing URL for `search` tasks, with {page}")
    flag("link-pattern", help="regex finding document links in a listing (groups: url, id, ext)")
    flag("progress", help="auto | bar | log: live bar on a terminal, else a line every 10 s")
    return p


def parse_config(argv: Sequence[str], env: Mapping[str, str] | None = None) -> ClientConfig:
    """Parse flags and variables; any wrong value raises ConfigError naming it."""
    env = os.environ if env is None else env
    parser = build_parser(env)
    try:
        args = parser.parse_args(list(argv))
    except SystemExit as exc:
        if exc.code == 0:
            raise
        raise ConfigError("bad command line; see docgate client --help") from None
    allow = args.allow_network or [n for n in (_env("allow-network", env) or "").split(",") if n]
    values = {k: v for k, v in vars(args).items() if v is not None and k != "allow_network"}
    values["allow_network"] = tuple(allow)
    return _validated(values)


def _number(values: dict[str, object], name: str, kind: type, low: float, high: float | None = None) -> None:
    if name not in values:
        return
    raw = values[name]
    flag = "--" + name.replace("_", "-")
    try:
        number = kind(raw)
    except (TypeError, ValueError):
        raise ConfigError(f"{flag} must be a number, not {raw!r}") from None
    if number < low or (high is not None and number > high):
        bound = f"between {low:g} and {high:g}" if high is not None else f"at least {low:g}"
        raise ConfigError(f"{flag} must be {bound}, not {raw}")
    values[name] = number


def _validated(values: dict[str, object]) -> ClientConfig:
    if not values.get("api_url"):
        raise ConfigError("--api-url is required (or DOCGATE_API_URL)")
    url = urlsplit(str(values["api_url"]))
    if url.scheme not in {"http", "https"} or not url.hostname:
        raise ConfigError(f"--api-url must be an http:// or https:// URL, not {values['api_url']!r}")
    for name, kind, low, high in [
        ("poll_interval", float, 0.1, 3600),
        ("heartbeat_interval", float, 0.5, 86_400),
        ("concurrency", int, 1, 4096),
        ("max_tasks", int, 1, 100),
        ("per_host_limit", float, 0.01, None),
        ("per_host_connections", int, 1, 4096),
        ("max_document_size", int, 1, None),
        ("grace", float, 0, 3600),
        ("retries", int, 0, 20),
        ("download_timeout", float, 1, 86_400),
        ("shard_size", int, 1, None),
    ]:
        _number(values, name, kind, low, high)
    flag = values.get("exit_when_idle", False)
    values["exit_when_idle"] = flag is True or str(flag).lower() in {"1", "true", "yes"}
    _choice(values, "compress", {"none", "gzip"})
    _choice(values, "log_format", {"text", "json"})
    _choice(values, "progress", {"auto", "bar", "log"})
    values["log_level"] = str(values.get("log_level", "INFO")).upper()
    _choice(values, "log_level", {"DEBUG", "INFO", "WARNING", "ERROR"})
    for network in values["allow_network"]:  # type: ignore[attr-defined]
        try:
            ipaddress.ip_network(network, strict=False)
        except ValueError:
            raise ConfigError(f"--allow-network {network!r} is not a CIDR range like 127.0.0.0/8") from None
    if "output_dir" in values:
        values["output_dir"] = Path(str(values["output_dir"]))
    if values.get("ca_cert") and not Path(str(values["ca_cert"])).is_file():
        raise ConfigError(f"--ca-cert {values['ca_cert']} is not a readable file")
    return ClientConfig(**values)  # type: ignore[arg-type]


def _choice(values: dict[str, object], name: str, allowed: set[str]) -> None:
    if name in values and values[name] not in allowed:
        raise ConfigError(
            f"--{name.replace('_', '-')} must be one of {', '.join(sorted(allowed))}, not {values[name]!r}"
        )
