"""Why a document (or a task's attempt) failed, as a code: one table for clients, gate and operator.

A failure travels as ``code`` with its text beside it (``error``). The code is for programs —
the gate's failure summary groups by it, a source decides from it whether its listing ended
— and never changes; the text is for people and may. No code path reads the text.
"""

from __future__ import annotations

from enum import StrEnum


class FailureCode(StrEnum):
    # the origin answered with a final status
    NOT_FOUND = "not_found"  # 404
    GONE = "gone"  # 410
    FORBIDDEN = "forbidden"  # 401, 403
    HTTP_ERROR = "http_error"  # any other final status (400, 451, …)
    SERVER_ERROR = "server_error"  # 5xx, 408, 425, 429: still there after the retries
    # the origin answered, but not with the document
    BLOCKED = "blocked"  # a block page: block_statuses, a challenge, block_patterns, sizes
    WRONG_TYPE = "wrong_type"  # not what the task's ext names (an HTML page for a PDF)
    TOO_LARGE = "too_large"  # over --max-document-size
    BAD_ENCODING = "bad_encoding"  # a Content-Encoding we do not speak, or a body that does not inflate
    NO_DOCUMENT = "no_document"  # a detail page without the document's link
    STORE_DIFFERS = "store_differs"  # the store holds other bytes than the origin serves
    # the request did not get an answer
    TIMEOUT = "timeout"
    NETWORK = "network"  # refused or reset connections, DNS failures
    TOO_MANY_REDIRECTS = "too_many_redirects"
    # the client would not fetch it
    REFUSED = "refused"  # the network policy (a private address, a port not allowed)
    INVALID_URL = "invalid_url"
    OFF_HOSTS = "off_hosts"  # not on the task's hosts (params.document_hosts)
    # our side
    STORAGE = "storage"  # the client's store failed or refused the object
    # a task's attempt (TaskFail), besides the codes above
    EMPTY_PAGE = "empty_page"  # a listing page without links after full pages: a block, or the end
    TRANSIENT = "transient"  # some of its documents failed in a way a later attempt may not
    SOURCE = "source"  # the task's source cannot run it (bad params, no such source here)
    CLIENT_STOPPED = "client_stopped"  # handed back on shutdown
    JOB_PAUSED = "job_paused"  # handed back, unfetched, because its job was paused
    LEASE_EXPIRED = "lease_expired"  # set by the gate
    CLIENT_ERROR = "client_error"  # a bug in the client
    OTHER = "other"  # a report that gave no code (older clients)


def of_status(status: int) -> FailureCode:
    """The code of a final HTTP status."""
    if status == 404:
        return FailureCode.NOT_FOUND
    if status == 410:
        return FailureCode.GONE
    if status in (401, 403):
        return FailureCode.FORBIDDEN
    if status >= 500 or status in (408, 425, 429):  # what the client retries (client.download)
        return FailureCode.SERVER_ERROR
    return FailureCode.HTTP_ERROR
