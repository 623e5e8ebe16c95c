"""Paths and header names of API v1, named once for the gate's routes and the client's calls.

Route paths are relative to ``PREFIX``, as the gate's routers declare them;
``url()`` gives the full path a client calls.
"""

from __future__ import annotations

from urllib.parse import quote

PREFIX = "/api/v1"

# tasks
TASK_CREATE = "/tasks/create"
TASK_BATCH = "/tasks/batch"
TASK_LEASE = "/tasks/request"
TASK_COMPLETE = "/tasks/complete"
TASK_COMPLETE_BATCH = "/tasks/complete/batch"
TASK_PROGRESS = "/tasks/{task_id}/progress"
TASK_FAIL = "/tasks/{task_id}/fail"
TASK_DISCOVERED = "/tasks/{task_id}/discovered"
TASK_WARC = "/tasks/{task_id}/warc/{name}"  # PUT under the lease: a WARC file of the task's
TASK = "/tasks/{task_id}"
# jobs
JOB_PAUSE = "/jobs/{job_id}/pause"
JOB_RESUME = "/jobs/{job_id}/resume"
JOB_FAILURES = "/jobs/{job_id}/failures"
JOB_DOCUMENTS = "/jobs/{job_id}/documents"
JOB_COVERAGE = "/jobs/{job_id}/coverage"
JOB_EXTEND = "/jobs/{job_id}/extend"
JOB_REVISIT = "/jobs/{job_id}/revisit"
# source profiles
SOURCES = "/sources"
SOURCE = "/sources/{name}"
# clients
CLIENT_REGISTER = "/clients/register"
CLIENT_HEARTBEAT = "/clients/heartbeat"
CLIENT = "/clients/{client_id}"
CLIENT_ROTATE_KEY = "/clients/{client_id}/rotate-key"
# documents and storage
DOCUMENTS_KNOWN = "/documents/known"
DOCUMENT = "/documents/{doc_id}"
DOCUMENT_RAW = "/documents/{doc_id}/raw"
DOCUMENT_VERSIONS = "/documents/{doc_id}/versions"
DOCUMENT_STORED = "/documents/{doc_id}/stored"  # under a lease: what the gate's store holds
STORAGE_OBJECTS = "/storage/objects"
STORAGE_OBJECT = "/storage/objects/{key:path}"
# politeness: budgets per origin host
HOSTS = "/hosts"
HOST_GRANTS = "/hosts/grants"
HOST = "/hosts/{host}"
# outside the prefix
HEALTH = "/health"

# headers
API_KEY_HEADER = "X-API-Key"
SESSION_HEADER = "X-Session-Id"
SESSION = "/session"  # DELETE: the calling process (its X-Session-Id) says goodbye
LEASE_HEADER = "X-Lease-Token"  # an upload's lease_token
SHA256_HEADER = "X-Content-SHA256"
OUTSTANDING_HEADER = "X-Tasks-Outstanding"  # on a 204 lease reply: pending + assigned tasks
ERROR_CODE_HEADER = "X-Error-Code"  # on every error reply, beside the body's code


def url(path: str, **values: object) -> str:
    """The full path of a route, its {placeholders} filled in and quoted."""
    return PREFIX + path.format(**{k: quote(str(v), safe="") for k, v in values.items()})


def object_url(key: str) -> str:
    """The full path of one stored object (its key keeps its slashes)."""
    return f"{PREFIX}{STORAGE_OBJECTS}/{quote(key, safe='/')}"
