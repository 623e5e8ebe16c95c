"""Is this 200 the document? The hook a body passes before it is stored.

Registries answer a throttled or blocked fleet with a 200 and an HTML page — a captcha, "too many
requests", a login wall — where the document should be. Stored, such a page would be the archive's
copy for good (documents are written once). The rule applied by default: when the document's
extension says what it is and that is not HTML, a response that declares itself HTML
(Content-Type text/html or application/xhtml+xml) or starts like an HTML page is not the document.
A task can say what it expects instead, in `params.expect_content_type`: a list of media types
("application/pdf", "image/*", or "*/*" to accept anything).
"""

from __future__ import annotations

import fnmatch
from typing import Any

HTML_TYPES = ("text/html", "application/xhtml+xml")
HTML_EXTS = {"", ".html", ".htm", ".xhtml", ".shtml", ".php", ".asp", ".aspx", ".jsp"}
HTML_STARTS = (b"<!doctype html", b"<html", b"<head", b"<body")
SNIFF = 512


def media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def refusal(ext: str, content_type: str | None, first: bytes, params: dict[str, Any]) -> str | None:
    """Why this body is not the document, or None when it may be stored."""
    declared = media_type(content_type)
    expected = params.get("expect_content_type")
    if isinstance(expected, list) and expected:
        patterns = [str(p).lower() for p in expected]
        if any(fnmatch.fnmatchcase(declared or "application/octet-stream", p) for p in patterns):
            return None
        return f"the origin sent {declared or 'no Content-Type'}, the task expects {', '.join(patterns)}"
    if ext.lower().removesuffix(".gz") in HTML_EXTS:
        return None
    start = first[:SNIFF].removeprefix(b"\xef\xbb\xbf").lstrip().lower()
    if declared in HTML_TYPES or start.startswith(HTML_STARTS):
        return f"an HTML page ({declared or 'by its first bytes'}) came where a {ext} document was expected"
    return None
