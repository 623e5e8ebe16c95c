"""Failures travel as codes (protocol/failures.py) with their text beside them: the gate groups a
job's failed documents by code, keeps a task's last failure code and page, and never reads the
text. A report without a code (an older client) is filed under `other`, whatever its text says."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError
from test_documents import complete, lease_job

from conftest import Gate
from protocol import v1
from protocol.failures import FailureCode, of_status


def failed(doc_id: int, error: str, code: str | None = None) -> dict[str, Any]:
    row: dict[str, Any] = {
        "doc_id": doc_id,
        "status": "failed",
        "error": error,
        "url": f"http://origin/{doc_id}",
    }
    if code is not None:
        row["code"] = code
    return row


async def test_the_failure_summary_groups_by_code_not_text(gate: Gate) -> None:
    client = await gate.register()
    task = await lease_job(gate, client, 1, 9)
    documents = [
        failed(1, "HTTP 404", "not_found"),
        failed(2, "the origin said: not here", "not_found"),  # other text, same code
        failed(3, "HTTP 404", "not_found"),
        failed(4, "timed out after 30 s", "timeout"),
        failed(5, "a block page: its first KiB holds 'captcha'", "blocked"),
        failed(6, "a block page: status 429", "blocked"),
        failed(7, "HTTP 404"),  # no code: filed as other, though its text looks like a 404
        failed(8, "over --max-document-size", "too_large"),
    ]
    r = await complete(gate, client, task, documents)
    assert r.status_code == 200, r.text
    r = await gate.http.get(f"/api/v1/jobs/{task['job_id']}/failures", headers=gate.admin)
    assert r.status_code == 200, r.text
    summary = r.json()
    assert summary["documents"] == 8
    by_code = {row["code"]: row for row in summary["reasons"]}
    assert {code: row["documents"] for code, row in by_code.items()} == {
        "not_found": 3,
        "blocked": 2,
        "timeout": 1,
        "other": 1,
        "too_large": 1,
    }
    assert [row["code"] for row in summary["reasons"]][:2] == ["not_found", "blocked"]  # most first
    texts = {e["error"] for e in by_code["not_found"]["examples"]}
    assert "the origin said: not here" in texts  # the text travels beside the code, unread
    assert by_code["other"]["examples"][0]["doc_id"] == "7"


async def test_an_unknown_code_is_refused_and_changes_nothing(gate: Gate) -> None:
    client = await gate.register()
    task = await lease_job(gate, client, 1, 2)
    r = await complete(gate, client, task, [failed(1, "HTTP 404", "gone_fishing")])
    assert r.status_code == 422 and r.json()["code"] == "invalid_field", r.text
    assert r.json()["detail"][0]["loc"][-1] == "code"
    assert await gate.sql("SELECT 1 FROM document_failures") == []
    (row,) = await gate.sql("SELECT status FROM tasks WHERE task_id = $1", task["task_id"])
    assert row[0] == "assigned"


async def test_a_task_keeps_its_last_failure_code_and_page(gate: Gate) -> None:
    client = await gate.register()
    task = await lease_job(gate, client, 1, 2, max_attempts=3)
    r = await gate.http.post(
        f"/api/v1/tasks/{task['task_id']}/fail",
        headers=client,
        json={
            "lease_token": task["lease_token"],
            "error": "page 4 of the listing had no links",
            "code": "empty_page",
            "page": 4,
        },
    )
    assert r.status_code == 200, r.text
    assert r.json()["last_error_code"] == "empty_page"
    (row,) = await gate.sql("SELECT last_error_code, last_error_page FROM tasks")
    assert tuple(row) == ("empty_page", 4)
    await gate.sql("UPDATE tasks SET run_after = now()")
    again = (await gate.lease(client)).json()
    # The next attempt is told what the last one met, as a code and page: a source decides
    # from these whether the listing really ended there (client/sources/search.py).
    assert (again["last_error_code"], again["last_error_page"]) == ("empty_page", 4)
    r = await gate.http.post(
        f"/api/v1/tasks/{task['task_id']}/fail",
        headers=client,
        json={"lease_token": again["lease_token"], "error": "HTTP 503"},
    )
    assert r.json()["last_error_code"] == "other"  # no code sent: other, never guessed from text
    (row,) = await gate.sql("SELECT last_error_code, last_error_page FROM tasks")
    assert tuple(row) == ("other", None)


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (404, "not_found"),
        (410, "gone"),
        (401, "forbidden"),
        (403, "forbidden"),
        (500, "server_error"),
        (503, "server_error"),
        (429, "server_error"),
        (408, "server_error"),
        (400, "http_error"),
        (451, "http_error"),
    ],
)
def test_a_final_status_has_one_code(status: int, code: str) -> None:
    assert of_status(status) == code


def test_a_report_carries_only_codes_of_the_table() -> None:
    assert v1.DocumentReport.of_failure("1", url=None, code=FailureCode.TIMEOUT, error="t").code == "timeout"
    with pytest.raises(ValidationError):
        v1.DocumentReport.model_validate({"doc_id": "1", "status": "failed", "code": "nope"})
