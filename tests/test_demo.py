"""Acceptance 10: `docgate demo` runs the whole pipeline and completes 10,000 documents."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from processes import CLEAN_ENV, REPO, docgate, postgres_running

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def test_demo_completes_ten_thousand_documents(tmp_path: Path) -> None:
    data = tmp_path / "demo"
    r = subprocess.run(
        docgate("demo", "--data-dir", str(data)),
        cwd=REPO,
        env=CLEAN_ENV,
        capture_output=True,
        text=True,
        timeout=580,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "10000 documents stored" in r.stderr and "0 failed of 10000" in r.stderr
    assert "documents/s" in r.stderr
    assert len(list((data / "documents").rglob("*.bin"))) == 10_000
    assert not postgres_running(data / "pg")  # everything it started is stopped
