"""What `make run` prints as next steps, run as printed: a newcomer who copies the lines gets the
seed's search run against the simulated registry and its documents stored."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from cluster import ADMIN, Cluster
from conftest import free_port
from docgate.registry import RegistryConfig, expected
from processes import CLEAN_ENV, REPO

pytestmark = pytest.mark.timeout(240)


def next_steps(printed: str) -> list[str]:
    """The banner's command lines, continuation lines joined."""
    lines = printed.split("Next,", 1)[1].splitlines()[1:]
    commands: list[str] = []
    for line in lines:
        text = line.strip()
        if not text:
            continue
        if commands and commands[-1].endswith("\\"):
            commands[-1] = commands[-1][:-1] + " " + text
        elif commands and commands[-1].count("'") % 2:  # inside a quoted JSON body
            commands[-1] += "\n" + text
        else:
            commands.append(text)
    return commands


def test_the_printed_next_steps_store_documents(tmp_path: Path, db_dsn: str) -> None:
    from docgate.cli import banner
    from server.config import Settings

    cluster = Cluster(tmp_path, db_dsn)
    port = cluster.url.rsplit(":", 1)[1]
    printed = banner(Settings.load(api_host="127.0.0.1", api_port=int(port), _env_file=None))
    commands = next_steps(printed)
    assert commands[0].startswith(".venv/bin/docgate origin --registry") and commands[-1].startswith("curl")
    # The same lines, with a free port for the registry and this test's folders.
    registry = str(free_port())
    profile = tmp_path / "reyestr.json"
    profile.write_text(
        (REPO / "examples" / "reyestr.json").read_text(encoding="utf-8").replace("8090", registry)
    )
    store = tmp_path / "client-store"
    script = "\n".join(
        c.replace("8090", registry)
        .replace("@examples/reyestr.json", f"@{profile}")
        .replace("data/documents", str(store))
        for c in commands
    )
    try:
        run = subprocess.run(
            ["bash", "-c", "set -e\ntrap 'kill %1 2>/dev/null || true' EXIT\n" + script],
            cwd=REPO,
            env=CLEAN_ENV | {"ADMIN": ADMIN},
            capture_output=True,
            text=True,
            timeout=200,
        )
        assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
        want = expected(RegistryConfig(), frozenset({11}), frozenset({1}))
        rows = cluster.sql("SELECT doc_id FROM documents")
        assert sorted(int(r["doc_id"]) for r in rows) == sorted(want) and len(want) >= 30
        assert len(list(store.rglob("*.rtf"))) == len(want)
        assert re.search(r'"completed":\s*1', run.stdout), run.stdout[-500:]
    finally:
        cluster.stop()
