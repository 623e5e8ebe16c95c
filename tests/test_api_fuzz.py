"""schemathesis over every operation of the gate's OpenAPI, with the admin key and a client key.

No answer may be a 5xx, and every answer must match the schema the gate
publishes. The number of examples per operation is bounded for `make test`
(FUZZ_EXAMPLES, default 12); `make chaos` runs it longer. The seed is fixed
so a failure reproduces.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from cluster import ADMIN
from conftest import free_port
from processes import CLEAN_ENV, GateProcess, docgate

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "12"))
SEED = int(os.environ.get("FUZZ_SEED", "20261123"))
CHECKS = "not_a_server_error,response_schema_conformance,content_type_conformance"


def schemathesis(url: str, key: str, tmp: Path) -> subprocess.CompletedProcess[str]:
    cli = Path(sys.executable).with_name("schemathesis")
    report = tmp / "fuzz.ndjson"
    return subprocess.run(
        [
            str(cli),
            "run",
            url + "/openapi.json",
            "--header",
            f"X-API-Key: {key}",
            "--checks",
            CHECKS,
            "--max-examples",
            str(EXAMPLES),
            "--seed",
            str(SEED),
            "--generation-database",
            "none",
            "--phases",
            "examples,coverage,fuzzing",
            "--request-timeout",
            "45",
            "--workers",
            "1",
            "--report",
            "ndjson",
            "--report-ndjson-path",
            str(report),
            "--no-color",
        ],
        cwd=tmp,
        env=CLEAN_ENV,
        capture_output=True,
        text=True,
        timeout=840,
    )


@pytest.mark.parametrize("who", ["admin", "client"])
def test_no_operation_answers_5xx_or_breaks_its_schema(db_dsn: str, tmp_path: Path, who: str) -> None:
    port = free_port()
    gate = GateProcess(
        docgate("server"),
        {
            "DATABASE_URL": db_dsn,
            "API_PORT": str(port),
            "ADMIN_API_KEY": ADMIN,
            "STORAGE_URL": str(tmp_path / "store"),
            "MAX_JOB_TASKS": "100000",
            # A lease must always find work: past the hoarding cap a long poll waits out `wait`.
            "MAX_LEASES_PER_CLIENT": "1000000",
            # ... and past its host's room (every job here is on one host).
            "HOST_TASKS_PER_CONNECTION": "0",
            # ... and fuzzed reports of blocked answers don't pause its host or its job.
            "HOST_PAUSE_MIN_ANSWERS": "1000000",
            "JOB_PAUSE_MIN_ANSWERS": "1000000",
            "LOG_LEVEL": "WARNING",
        },
        port,
        tmp_path,
    )
    try:
        gate.wait_healthy()
        key = ADMIN
        # Real work to lease, so long-polls answer at once instead of waiting out `wait`.
        r = httpx.post(
            gate.url + "/api/v1/jobs",
            headers={"X-API-Key": ADMIN},
            timeout=30,
            json={
                "source": "id_range",
                "chunk_size": 1,
                "params": {"url_template": "http://127.0.0.1:9/{id}", "start_id": 1, "count": 100_000},
            },
        )
        assert r.status_code in (201, 202), r.text  # 202: created in the background (JOB_BACKGROUND_TASKS)
        if who == "client":
            r = httpx.post(
                gate.url + "/api/v1/clients/register",
                headers={"X-API-Key": ADMIN},
                json={"client_name": "fuzzer"},
                timeout=10,
            )
            key = r.json()["api_key"]
        operations = sum(
            len(methods)
            for methods in httpx.get(gate.url + "/openapi.json", timeout=10).json()["paths"].values()
        )
        run = schemathesis(gate.url, key, tmp_path)
        summary = run.stdout[-6000:]
        assert run.returncode == 0, summary + run.stderr[-2000:]
        events = [json.loads(line) for line in (tmp_path / "fuzz.ndjson").read_text().splitlines()]
        assert events, "schemathesis wrote no report"
        assert operations >= 30  # every operation was in the run, none silently dropped
        assert f"Selected: {operations}/{operations}" in summary, summary
        assert gate.proc.poll() is None, "the gate died under fuzzing"
        assert "Traceback" not in gate.output(), gate.output()[-3000:]
    finally:
        gate.stop()
