"""The client's settings come the way the gate's do (pydantic-settings): a flag, else DOCGATE_*,
else `.env`, else the default; one line naming a bad one; secrets never in a repr."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from client.config import ClientConfig, parse_config
from client.errors import ConfigError

# The seed's client command line (004_…txt), every flag it lists, --db-* included.
SEED = [
    "--api-url", "https://gate-server.com", "--api-key", "YOUR_API_KEY", "--client-name", "my-client",
    "--output-dir", "downloaded_documents", "--poll-interval", "5", "--heartbeat-interval", "60",
    "--db-host", "127.0.0.1", "--db-port", "5433",
]  # fmt: skip


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in [n for n in os.environ if n.startswith("DOCGATE_")]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def test_every_seed_flag_parses_and_the_database_flags_are_ignored_with_a_warning() -> None:
    config, warnings = parse_config(SEED)
    assert (config.api_url, config.client_name, config.output_dir) == (
        "https://gate-server.com",
        "my-client",
        Path("downloaded_documents"),
    )
    assert (config.poll_interval, config.heartbeat_interval) == (5.0, 60.0)
    assert config.api_key_value == "YOUR_API_KEY"
    assert len(warnings) == 2 and all("ignored" in w for w in warnings)
    assert "--db-host" in warnings[0] and "--db-port" in warnings[1]


def test_flag_then_variable_then_env_file_then_default(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / ".env").write_text(
        "DOCGATE_API_URL=http://from-env-file\nDOCGATE_CONCURRENCY=3\nDOCGATE_RETRIES=7\n"
        "DOCGATE_ALLOW_NETWORK=127.0.0.0/8,10.1.0.0/16\n"
    )
    monkeypatch.setenv("DOCGATE_CONCURRENCY", "5")
    config, _ = parse_config(["--retries", "2"])
    assert config.api_url == "http://from-env-file"
    assert config.concurrency == 5  # the variable beats .env
    assert config.retries == 2  # the flag beats both
    assert config.allow_network == ("127.0.0.0/8", "10.1.0.0/16")
    assert config.max_tasks == 2  # the default
    flags, _ = parse_config(["--allow-network", "192.168.0.0/16", "--allow-network", "127.0.0.1/32"])
    assert flags.allow_network == ("192.168.0.0/16", "127.0.0.1/32")


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["--api-url", "http://x", "--concurrency", "lots"], "--concurrency (DOCGATE_CONCURRENCY)"),
        (["--api-url", "http://x", "--max-tasks", "101"], "--max-tasks"),
        (["--api-url", "http://x", "--log-level", "loud"], "--log-level"),
        (["--api-url", "http://x", "--ca-cert", "/nonexistent.pem"], "--ca-cert"),
        (["--api-url", "http://x", "--no-such-flag"], "--no-such-flag"),
        ([], "--api-url (DOCGATE_API_URL) is required"),
    ],
)
def test_a_bad_setting_is_one_line_naming_it(argv: list[str], named: str) -> None:
    with pytest.raises(ConfigError) as refused:
        parse_config(argv)
    assert named in refused.value.message and "\n" not in refused.value.message


def test_the_api_key_never_shows(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCGATE_API_KEY", "dg_very-secret-key")
    config, _ = parse_config(["--api-url", "http://x"])
    assert config.api_key_value == "dg_very-secret-key"
    assert "very-secret" not in repr(config) and "very-secret" not in str(config.model_dump())


def test_each_process_has_its_own_session_that_no_setting_can_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCGATE_SESSION_ID", "fixed")
    one, two = ClientConfig(api_url="http://x"), ClientConfig(api_url="http://x")
    assert one.session_id != two.session_id and "fixed" not in (one.session_id, two.session_id)
