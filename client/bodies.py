"""Is this 200 the document? The check a body passes, while it is stored, before it is kept.

Registries answer a throttled or blocked fleet with a 200 and an HTML page — a captcha, "too many
requests", a login wall — where the document should be. Stored, such a page would be the archive's
copy for good (documents are written once). The rule applied by default: when the document's
extension says what it is and that is not HTML, a response that declares itself HTML
(Content-Type text/html or application/xhtml+xml) or starts like an HTML page is not the document.
A task (or its job) can say more in its params, each checked on every document:

- `expect_content_type`: media types a body must declare ("application/pdf", "image/*", "*/*");
- `min_size`, `max_size`: bytes, after any Content-Encoding is undone;
- `block_patterns`: texts that mark a block page (case-insensitive), looked for in the whole of an
  HTML page up to PAGE_SCAN (256 KiB; a captcha's prompt often comes after a long head of
  scripts and styles), and in the first KiB of any other body;
- `block_selectors`: CSS selectors that mark an HTML page as a block when they match (a captcha
  dialog shown: `#modalcaptcha[style*=block]`), on the same PAGE_SCAN of the page;
- `require_patterns`: texts of which one must be in the first KiB;
- `block_statuses`: statuses that mean a block rather than a missing document (`client.download`).

A body that fails them is a block or not the document (codes `blocked`, `wrong_type`): never
kept, counted against the host's budget, and the document tried again later — a block page may
be gone next time.
"""

from __future__ import annotations

import fnmatch
import functools
import hashlib
import re
from collections.abc import AsyncIterator

from selectolax.lexbor import LexborHTMLParser

from client.download import Asked, Body, DocumentFailed, charset_of
from protocol.failures import FailureCode
from protocol.params import ContentRules

HTML_TYPES = ("text/html", "application/xhtml+xml")
HTML_EXTS = {"", ".html", ".htm", ".xhtml", ".shtml", ".php", ".asp", ".aspx", ".jsp"}
HTML_STARTS = (b"<!doctype html", b"<html", b"<head", b"<body")
SNIFF = 512  # how far the HTML sniff looks
HEAD = 1024  # how far require_patterns (and block_patterns in a body that is not HTML) look
PAGE_SCAN = 256 << 10  # how much of an HTML page block_patterns and block_selectors look at


def media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def asked(rules: ContentRules) -> Asked:
    """What the fetcher needs from a task's rules: its block statuses and politeness."""
    polite = rules.politeness
    cap = None if polite is None else (polite.requests_per_second, polite.max_connections)
    return Asked(block_statuses=frozenset(rules.block_statuses or ()), cap=cap)


def found(patterns: list[str] | None, text: str) -> str | None:
    """The first of `patterns` in `text`, compared case-insensitively in any script (a Cyrillic
    captcha prompt as well as "Too Many Requests")."""
    folded = text.casefold()
    return next((p for p in patterns or () if p.casefold() in folded), None)


def head_text(head: bytes, content_type: str | None, limit: int = HEAD) -> str:
    """A body's start as text: in the charset its Content-Type names, else UTF-8."""
    charset = charset_of(content_type) or "utf-8"
    try:
        return head[:limit].decode(charset, errors="replace")
    except LookupError:
        return head[:limit].decode("utf-8", errors="replace")


def looks_html(content_type: str | None, head: bytes) -> bool:
    start = head[:SNIFF].removeprefix(b"\xef\xbb\xbf").lstrip().lower()
    return media_type(content_type) in HTML_TYPES or start.startswith(HTML_STARTS)


def blocked_page(text: str, rules: ContentRules, where: str = "the page") -> DocumentFailed | None:
    """A block named by the rules' patterns or selectors in an HTML page's text, or None."""
    if (pattern := found(rules.block_patterns, text)) is not None:
        return _block(f"a block page: {where} holds {pattern!r} (block_patterns)")
    if rules.block_selectors:
        tree = LexborHTMLParser(text)
        for selector in rules.block_selectors:
            if tree.css_first(selector) is not None:
                return _block(f"a block page: {where} matches {selector!r} (block_selectors)")
    return None


def refusal(ext: str, content_type: str | None, head: bytes, rules: ContentRules) -> DocumentFailed | None:
    """Why a body that starts with `head` (PAGE_SCAN of it at most) is not the document, or None
    when it may be."""
    declared = media_type(content_type)
    html = looks_html(content_type, head)
    if html:
        if rules.block_patterns or rules.block_selectors:
            page = head_text(head, content_type, PAGE_SCAN)
            if (block := blocked_page(page, rules)) is not None:
                return block
    elif (
        rules.block_patterns
        and (pattern := found(rules.block_patterns, head_text(head, content_type))) is not None
    ):
        return _block(f"a block page: its first KiB holds {pattern!r} (block_patterns)")
    if rules.require_patterns and found(rules.require_patterns, head_text(head, content_type)) is None:
        return _wrong("not the document: its first KiB holds none of the task's require_patterns")
    if rules.expect_content_type:
        patterns = [p.lower() for p in rules.expect_content_type]
        if any(fnmatch.fnmatchcase(declared or "application/octet-stream", p) for p in patterns):
            return None
        return _wrong(
            f"the origin sent {declared or 'no Content-Type'}, the task expects {', '.join(patterns)}"
        )
    if ext.lower().removesuffix(".gz") in HTML_EXTS:
        return None
    if html:
        return _wrong(
            f"an HTML page ({declared or 'by its first bytes'}) came where a {ext} document was expected"
        )
    return None


def _block(reason: str) -> DocumentFailed:
    return DocumentFailed(FailureCode.BLOCKED, reason, permanent=False)


def _wrong(reason: str) -> DocumentFailed:
    return DocumentFailed(FailureCode.WRONG_TYPE, reason, permanent=False)


async def checked(body: Body, ext: str, rules: ContentRules) -> AsyncIterator[bytes]:
    """The body's chunks once its start shows it may be the document (its first KiB; an HTML
    page's first PAGE_SCAN when the rules name blocks); a body outside the task's sizes fails
    while it streams (the store then keeps nothing)."""
    chunks = aiter(body.chunks)
    held: list[bytes] = []
    seen, want = 0, HEAD
    while seen < want:
        chunk = await anext(chunks, None)
        if chunk is None:
            break
        held.append(chunk)
        seen += len(chunk)
        named = rules.block_patterns or rules.block_selectors
        if want == HEAD and seen >= HEAD and named and looks_html(body.content_type, b"".join(held)):
            want = PAGE_SCAN  # a page: its prompt may come late
    refused = refusal(ext, body.content_type, b"".join(held)[:want], rules)
    if refused is not None:
        raise refused
    least, most = rules.min_size, rules.max_size

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
            raise _block(f"a block page: {size} bytes, under the task's min_size ({least})")

    return stream()


def _under(size: int, most: int | None) -> None:
    if most is not None and size > most:
        raise _block(f"a block: over the task's max_size ({most} bytes)")


@functools.cache
def _varying(pattern: str) -> re.Pattern[bytes]:
    return re.compile(pattern.encode())


def normalized(data: bytes | bytearray, varies: list[str]) -> str:
    """The sha256 of a document with the parts its job says vary (params.varies) blanked: what
    two fetches of it agree on (server/db/verify.py compares a check's two sides by it)."""
    text = bytes(data)
    for pattern in varies:
        text = _varying(pattern).sub(b"", text)
    return hashlib.sha256(text).hexdigest()
