"""The catalogue of malformed and hostile requests, as data.

Each case: a name, the method and path ({task} and {token} are filled with a
real leased task), who sends it, the body (JSON-able, or raw bytes), the
expected status and wire code, and a fragment its message must contain (the
bound, the field or the reason), or None.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

NESTED_50: dict[str, Any] = {}
_level = NESTED_50
for _ in range(50):
    _level["a"] = {}
    _level = _level["a"]


@dataclass(frozen=True)
class Case:
    name: str
    method: str
    path: str
    who: str  # admin | client | nobody
    body: Any = None
    status: int = 422
    mentions: str | None = None
    code: str = "invalid_field"
    content_type: str = "application/json"
    raw: bool = False


CREATE = "/api/v1/tasks/create"
COMPLETE = "/api/v1/tasks/complete"
JOB = "/api/v1/jobs"
REGISTER = "/api/v1/clients/register"
JOB_PARAMS = {"url_template": "https://h/{id}", "start_id": 1, "count": 10}

CASES = [
    Case("truncated json", "POST", CREATE, "admin", b'{"search_params": ', raw=True, mentions="JSON"),
    Case(
        "not utf-8",
        "POST",
        CREATE,
        "admin",
        b'{"search_params": {"a": "\xff\xfe"}}',
        raw=True,
        status=400,
        mentions="UTF-8",
        code="invalid_body",
    ),
    Case("array instead of object", "POST", CREATE, "admin", [1, 2, 3]),
    Case(
        "wrong content type",
        "POST",
        CREATE,
        "admin",
        b'{"start_page": 1}',
        raw=True,
        content_type="text/plain",
    ),
    Case(
        "NUL in a search_params value",
        "POST",
        CREATE,
        "admin",
        {"search_params": {"q": "a\u0000b"}},
        mentions="NUL",
    ),
    Case(
        "NUL in a search_params key",
        "POST",
        CREATE,
        "admin",
        {"search_params": {"q\u0000": "b"}},
        mentions="NUL",
    ),
    Case("NUL in client_name", "POST", REGISTER, "admin", {"client_name": "x\u0000"}, mentions="NUL"),
    Case(
        "body over the limit",
        "POST",
        CREATE,
        "admin",
        b'{"search_params": {"x": "' + b"a" * 1_100_000 + b'"}}',
        raw=True,
        status=413,
        mentions="1048576",
        code="too_large",
    ),
    Case("JSON nested 50 deep", "POST", CREATE, "admin", {"search_params": NESTED_50}, mentions="16 levels"),
    Case(
        "JSON nested 100000 deep",
        "POST",
        CREATE,
        "admin",
        b'{"search_params": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        raw=True,
        status=400,
        code="invalid_body",
    ),
    Case("start_page 0", "POST", CREATE, "admin", {"start_page": 0}, mentions="1"),
    Case("start_page negative", "POST", CREATE, "admin", {"start_page": -5}),
    Case("max_documents too large", "POST", CREATE, "admin", {"max_documents": 10**12}, mentions="1000000"),
    Case("start_page as string", "POST", CREATE, "admin", {"start_page": "1"}),
    Case("start_page as boolean", "POST", CREATE, "admin", {"start_page": True}),
    Case("start_page as float", "POST", CREATE, "admin", {"start_page": 1.5}),
    Case("max_attempts false", "POST", CREATE, "admin", {"max_attempts": False}),
    Case("max_attempts 0", "POST", CREATE, "admin", {"max_attempts": 0}),
    Case("priority out of range", "POST", CREATE, "admin", {"priority": 10**9}),
    Case(
        "mass assignment: status", "POST", CREATE, "admin", {"status": "completed"}, mentions="Extra inputs"
    ),
    Case("mass assignment: attempts", "POST", CREATE, "admin", {"attempts": 99}),
    Case(
        "mass assignment: lease_token",
        "POST",
        CREATE,
        "admin",
        {"lease_token": "8b4f6d0e-4a8e-4a59-9a52-6f3a1d4c2b10"},
    ),
    Case("search_params as string", "POST", CREATE, "admin", {"search_params": "CourtRegion=11"}),
    Case("source with traversal", "POST", CREATE, "admin", {"source": "../../x"}),
    Case(
        "naive run_after", "POST", CREATE, "admin", {"run_after": "2030-01-01T00:00:00"}, mentions="timezone"
    ),
    Case("run_after not a date", "POST", CREATE, "admin", {"run_after": "tomorrow"}),
    Case("idempotency_key too long", "POST", CREATE, "admin", {"idempotency_key": "k" * 300}, mentions="200"),
    Case("batch of 1001", "POST", "/api/v1/tasks/batch", "admin", {"tasks": [{}] * 1001}, mentions="1000"),
    Case("empty batch", "POST", "/api/v1/tasks/batch", "admin", {"tasks": []}),
    Case("unknown status_filter", "GET", "/api/v1/tasks?status_filter=done", "admin", mentions="pending"),
    Case("limit 0", "GET", "/api/v1/tasks?limit=0", "admin"),
    Case("limit too large", "GET", "/api/v1/tasks?limit=100000", "admin", mentions="1000"),
    Case(
        "forged cursor",
        "GET",
        "/api/v1/tasks?cursor=abc",
        "admin",
        status=400,
        mentions="cursor",
        code="invalid_cursor",
    ),
    Case("wait over 30 s", "POST", "/api/v1/tasks/request?wait=31", "client", mentions="30"),
    Case("max_tasks 0", "POST", "/api/v1/tasks/request?max_tasks=0", "client"),
    Case("max_tasks over 100", "POST", "/api/v1/tasks/request?max_tasks=101", "client", mentions="100"),
    Case("task id not a uuid", "GET", "/api/v1/tasks/12345", "admin"),
    Case(
        "task id with traversal",
        "GET",
        "/api/v1/tasks/..%2F..%2Fetc%2Fpasswd",
        "admin",
        status=404,
        code="route_not_found",
    ),
    Case("task id with dots", "GET", "/api/v1/tasks/..", "admin", status=404, code="route_not_found"),
    Case(
        "method not allowed", "DELETE", "/api/v1/tasks/create", "admin", status=405, code="method_not_allowed"
    ),
    Case(
        "complete without task_id", "POST", COMPLETE, "client", {"lease_token": "{token}"}, mentions="task_id"
    ),
    Case(
        "complete with malformed token",
        "POST",
        COMPLETE,
        "client",
        {"task_id": "{task}", "lease_token": "not-a-token"},
    ),
    Case(
        "complete with negative count",
        "POST",
        COMPLETE,
        "client",
        {"task_id": "{task}", "lease_token": "{token}", "documents_downloaded": -1},
    ),
    Case(
        "complete an unknown task",
        "POST",
        COMPLETE,
        "client",
        {"task_id": "00000000-0000-4000-8000-000000000000", "lease_token": "{token}"},
        status=404,
        code="not_your_task",
    ),
    Case(
        "stored document without sha256",
        "POST",
        COMPLETE,
        "client",
        {
            "task_id": "{task}",
            "lease_token": "{token}",
            "documents": [{"doc_id": 1, "storage_key": "0/1.tzb", "size": 3}],
        },
        mentions="sha256",
    ),
    Case(
        "doc_id with traversal",
        "POST",
        "/api/v1/tasks/{task}/progress",
        "client",
        {"lease_token": "{token}", "documents": [{"doc_id": "../etc", "status": "failed"}]},
        mentions="doc_id",
    ),
    Case(
        "fail with empty error",
        "POST",
        "/api/v1/tasks/{task}/fail",
        "client",
        {"lease_token": "{token}", "error": ""},
    ),
    Case(
        "fail with huge error",
        "POST",
        "/api/v1/tasks/{task}/fail",
        "client",
        {"lease_token": "{token}", "error": "e" * 5000},
        mentions="4000",
    ),
    Case(
        "job count over ten million",
        "POST",
        JOB,
        "admin",
        {"source": "id_range", "params": JOB_PARAMS | {"count": 10_000_001}},
        mentions="10000000",
    ),
    Case(
        "run_after that leaves the calendar when made UTC (fuzz finding: was 500)",
        "POST",
        "/api/v1/tasks/batch",
        "admin",
        {"tasks": [{"search_params": {}, "run_after": "0001-01-01T00:00:01+01:00"}]},
        mentions="2000 and 9999",
    ),
    Case(
        "run_after in year 9999",
        "POST",
        CREATE,
        "admin",
        {"search_params": {}, "run_after": "9999-12-31T23:59:59-01:00"},
        mentions="2000 and 9999",
    ),
    Case(
        "job over the gate's MAX_JOB_TASKS (1,000,000 in tests)",
        "POST",
        JOB,
        "admin",
        {"source": "id_range", "chunk_size": 1, "params": JOB_PARAMS | {"count": 10_000_000}},
        mentions="MAX_JOB_TASKS",
        code="job_too_large",
    ),
    Case(
        "job chunk_size 0",
        "POST",
        JOB,
        "admin",
        {"source": "id_range", "params": JOB_PARAMS, "chunk_size": 0},
    ),
    Case(
        "job template without {id}",
        "POST",
        JOB,
        "admin",
        {"source": "id_range", "params": JOB_PARAMS | {"url_template": "https://h/x"}},
        mentions="{id}",
    ),
    Case(
        "job template with file://",
        "POST",
        JOB,
        "admin",
        {"source": "id_range", "params": JOB_PARAMS | {"url_template": "file:///etc/{id}"}},
        mentions="http",
    ),
    Case("job of unknown source", "POST", JOB, "admin", {"source": "ftp", "params": JOB_PARAMS}),
    Case(
        "job ext with traversal",
        "POST",
        JOB,
        "admin",
        {"source": "id_range", "params": JOB_PARAMS | {"ext": "/../x"}},
    ),
    Case("register with empty name", "POST", REGISTER, "admin", {"client_name": ""}),
    Case(
        "register with a short own key",
        "POST",
        REGISTER,
        "admin",
        {"client_name": "c", "api_key": "123"},
        mentions="32",
    ),
    Case("oversized API key header", "GET", "/api/v1/tasks", "huge-key", status=422),
    Case(
        "heartbeat with negative rate", "POST", "/api/v1/clients/heartbeat", "client", {"docs_per_minute": -1}
    ),
    # Python's json module reads NaN, Infinity and -Infinity, and 1e999 as infinity; PostgreSQL's
    # jsonb has no such numbers, so each one reached the database and came back as a 500.
    Case(
        "NaN in search_params",
        "POST",
        CREATE,
        "admin",
        b'{"search_params": {"x": NaN}}',
        raw=True,
        mentions="NaN",
    ),
    Case(
        "Infinity in params",
        "POST",
        CREATE,
        "admin",
        b'{"params": {"x": [Infinity]}}',
        raw=True,
        mentions="NaN",
    ),
    Case(
        "1e999 in result_summary",
        "POST",
        COMPLETE,
        "client",
        b'{"task_id": "{task}", "lease_token": "{token}", "result_summary": {"n": 1e999}}',
        raw=True,
        mentions="NaN",
    ),
    Case(
        "NaN heartbeat rate",
        "POST",
        "/api/v1/clients/heartbeat",
        "client",
        b'{"docs_per_minute": NaN}',
        raw=True,
    ),
    # A task of a built-in source made directly is checked as a job's tasks are.
    Case(
        "id_range task without {id}",
        "POST",
        CREATE,
        "admin",
        {"source": "id_range", "params": {"url_template": "https://h/x", "start_id": 1, "count": 3}},
        mentions="{id}",
    ),
    Case(
        "id_range task with file://",
        "POST",
        CREATE,
        "admin",
        {"source": "id_range", "params": {"url_template": "file:///etc/{id}", "start_id": 1, "count": 3}},
        mentions="http",
    ),
    Case(
        "id_range task with neither range nor ids",
        "POST",
        CREATE,
        "admin",
        {"source": "id_range", "params": {"url_template": "https://h/{id}"}},
        mentions="start_id",
    ),
    Case(
        "id_range task with a negative start",
        "POST",
        CREATE,
        "admin",
        {"source": "id_range", "params": {"url_template": "https://h/{id}", "start_id": -1, "count": 3}},
    ),
    Case(
        "id_range task with traversal in ext",
        "POST",
        "/api/v1/tasks/batch",
        "admin",
        {
            "tasks": [
                {
                    "source": "id_range",
                    "params": {"url_template": "https://h/{id}", "ids": [1], "ext": "/../x"},
                }
            ]
        },
    ),
    Case(
        "id_range task with a bad id",
        "POST",
        CREATE,
        "admin",
        {"source": "id_range", "params": {"url_template": "https://h/{id}", "ids": ["../etc"]}},
        mentions="doc_id",
    ),
    Case(
        "urls task with an ftp URL",
        "POST",
        CREATE,
        "admin",
        {"source": "urls", "params": {"urls": [{"doc_id": "a", "url": "ftp://h/a"}]}},
        mentions="http",
    ),
    Case(
        "search task whose listing has no {page}",
        "POST",
        CREATE,
        "admin",
        {"params": {"listing_url": "https://registry.example/search"}},
        mentions="{page}",
    ),
    Case(
        "search task with a link pattern that is no regex",
        "POST",
        CREATE,
        "admin",
        {"params": {"listing_url": "https://r.example/?p={page}", "link_pattern": "(?P<url>["}},
        mentions="regular expression",
    ),
    Case(
        "search task with a link pattern without its groups",
        "POST",
        CREATE,
        "admin",
        {"params": {"listing_url": "https://r.example/?p={page}", "link_pattern": "href=(.*)"}},
        mentions="named groups",
    ),
    Case(
        "search task with a URL where a host belongs",
        "POST",
        "/api/v1/tasks/batch",
        "admin",
        {
            "tasks": [
                {"params": {"listing_url": "https://r.example/?p={page}", "document_hosts": ["https://x/"]}}
            ]
        },
        mentions="document_hosts",
    ),
    Case(
        "search task with an unknown param",
        "POST",
        CREATE,
        "admin",
        {"params": {"listing_url": "https://r.example/?p={page}", "listing": "typo"}},
        mentions="listing",
    ),
    Case(
        "a job expecting a media type that is no media type",
        "POST",
        "/api/v1/jobs",
        "admin",
        {"source": "id_range", "params": JOB_PARAMS | {"expect_content_type": ["pdf"]}},
        mentions="expect_content_type",
    ),
]
