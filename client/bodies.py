"""Is this 200 the document? The check a body passes, while it is stored, before it is kept.

Registries answer a throttled or blocked fleet with a 200 and an HTML page — a captcha, "too many
requests", a login wall — where the document should be. Stored, such a page would be the archive's
copy for good (documents are written once). The rule applied by default: when the document's
extension says what it is and that is not HTML, a response that declares itself HTML
(Content-Type text/html or application/xhtml+xml) or starts like an HTML page is not the document.
A task (or its job) can say more in its params, each checked on every document:

- `expect_content_type`: media types a body must declare ("application/pdf", "image/*", "*/*");
- `min_size`, `max_size`: bytes, after any Content-Encoding is undone;
- `block_patterns`: texts that mark a block page when found in the first KiB (case-insensitive);
- `require_patterns`: texts of which one must be in the first KiB;
- `block_statuses`: statuses that mean a block rather than a missing document (`client.download`).

A body that fails them is a block (`DocumentFailed.blocked`): never kept, counted against the
host's budget, and the document tried again later — a block page may be gone next time.
"""

from __future__ import annotations

import fnmatch
from collections.abc import AsyncIterator
from typing import Any

from client.download import Asked, Body, DocumentFailed, charset_of

HTML_TYPES = ("text/html", "application/xhtml+xml")
HTML_EXTS = {"", ".html", ".htm", ".xhtml", ".shtml", ".php", ".asp", ".aspx", ".jsp"}
HTML_STARTS = (b"<!doctype html", b"<html", b"<head", b"<body")
SNIFF = 512  # how far the HTML sniff looks
HEAD = 1024  # how far the patterns look


def media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def asked(params: dict[str, Any]) -> Asked:
    """What the fetcher needs from a task's params: its block statuses and politeness."""
    statuses = params.get("block_statuses")
    polite = params.get("politeness")
    cap = None
    if isinstance(polite, dict):
        rate, slots = polite.get("requests_per_second"), polite.get("max_connections")
        cap = (
            float(rate) if isinstance(rate, int | float) and rate > 0 else None,
            slots if isinstance(slots, int) and slots > 0 else None,
        )
    blocks = (
        frozenset(s for s in statuses if isinstance(s, int)) if isinstance(statuses, list) else frozenset()
    )
    return Asked(block_statuses=blocks, cap=cap)


def texts(params: dict[str, Any], name: str) -> list[str]:
    values = params.get(name)
    if not isinstance(values, list):
        return []
    return [str(v).casefold() for v in values if str(v)]


def found(params: dict[str, Any], name: str, text: str) -> str | None:
    """The first of the task's `name` patterns in `text`, compared case-insensitively in any
    script (a Cyrillic captcha prompt as well as "Too Many Requests")."""
    folded = text.casefold()
    return next((p for p in texts(params, name) if p in folded), None)


def head_text(head: bytes, content_type: str | None) -> str:
    """A body's first KiB as text: in the charset its Content-Type names, else UTF-8."""
    charset = charset_of(content_type) or "utf-8"
    try:
        return head[:HEAD].decode(charset, errors="replace")
    except LookupError:
        return head[:HEAD].decode("utf-8", errors="replace")


def refusal(ext: str, content_type: str | None, head: bytes, params: dict[str, Any]) -> str | None:
    """Why a body that starts with `head` is not the document, or None when it may be."""
    declared = media_type(content_type)
    text = head_text(head, content_type)
    if (pattern := found(params, "block_patterns", text)) is not None:
        return f"a block page: its first KiB holds {pattern!r} (the task's block_patterns)"
    if texts(params, "require_patterns") and found(params, "require_patterns", text) is None:
        return "not the document: its first KiB holds none of the task's require_patterns"
    expected = params.get("expect_content_type")
    if isinstance(expected, list) and expected:
        patterns = [str(p).lower() for p in expected]
        if any(fnmatch.fnmatchcase(declared or "application/octet-stream", p) for p in patterns):
            return None
        return f"the origin sent {declared or 'no Content-Type'}, the task expects {', '.join(patterns)}"
    if ext.lower().removesuffix(".gz") in HTML_EXTS:
        return None
    start = head[:SNIFF].removeprefix(b"\xef\xbb\xbf").lstrip().lower()
    if declared in HTML_TYPES or start.startswith(HTML_STARTS):
        return f"an HTML page ({declared or 'by its first bytes'}) came where a {ext} document was expected"
    return None


def _size(params: dict[str, Any], name: str) -> int | None:
    value = params.get(name)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


async def checked(body: Body, ext: str, params: dict[str, Any]) -> AsyncIterator[bytes]:
    """The body's chunks once its first KiB shows it may be the document; a body outside the
    task's sizes fails while it streams (the store then keeps nothing)."""
    chunks = aiter(body.chunks)
    held: list[bytes] = []
    seen = 0
    while seen < HEAD:
        chunk = await anext(chunks, None)
        if chunk is None:
            break
        held.append(chunk)
        seen += len(chunk)
    reason = refusal(ext, body.content_type, b"".join(held)[:HEAD], params)
    if reason is not None:
        raise DocumentFailed(reason, permanent=False, blocked=True)
    least, most = _size(params, "min_size"), _size(params, "max_size")

    async def stream() -> AsyncIterator[bytes]:
        size = 0
        for chunk in held:
            size += len(chunk)
            _under(size, most)
            yield chunk
        async for chunk in chunks:
            size += len(chunk)
            _under(size, most)
            yield chunk
        if least is not None and size < least:
            raise DocumentFailed(
                f"a block page: {size} bytes, under the task's min_size ({least})",
                permanent=False,
                blocked=True,
            )

    return stream()


def _under(size: int, most: int | None) -> None:
    if most is not None and size > most:
        raise DocumentFailed(
            f"a block: over the task's max_size ({most} bytes)", permanent=False, blocked=True
        )
