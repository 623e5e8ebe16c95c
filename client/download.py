"""Fetching documents: aiohttp (measured: it keeps its rate as concurrency grows; httpx's pool
does not, see benchmarks/transport.py), the SSRF guard, per-host politeness, timeouts and retries.

Retries, with exponential backoff and jitter, on connection errors, timeouts,
408, 429 and 5xx; `Retry-After` (seconds or an HTTP date) is honoured. Other
4xx (404, 410, …) are permanent: the document is failed with its code (protocol.failures).

Why one module of this size: one request's whole path — the guarded resolver, redirects,
politeness, limits, decoding, retries — each check wrapping the next; split, the order in which
they apply would no longer be readable in one place.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import hashlib
import ipaddress
import random
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import urlencode

import aiohttp
import pydantic
from yarl import URL

from client.guard import GuardedResolver, Policy, Refused
from client.limits import Ask, Cap, FleetLimits, host_key
from protocol import v1
from protocol.failures import FailureCode, of_status
from protocol.version import VERSION, user_agent

T = TypeVar("T")
REDIRECTS = {301, 302, 303, 307, 308}
RETRY_STATUS = {408, 425, 429, 500, 502, 503, 504}
# A 429 slows the whole fleet down for that host, and so does a 503 that says how long to wait;
# a 503 without (or with Retry-After: 0) is a transient error, counted towards the host's
# error rate (server/domain/budget.py: sporadic errors are not throttling).
THROTTLED = 429
MAX_REDIRECTS = 5
NOT_MODIFIED = 304
HOP_BODY = 64 << 10  # of a redirect's body, kept for its WARC record (they are a line of HTML)
BLOCKS = frozenset({FailureCode.BLOCKED, FailureCode.WRONG_TYPE, FailureCode.EMPTY_PAGE})
MAX_RETRY_AFTER = 300.0
READ_CHUNK = 1 << 20
READ_BUFFER = 1 << 20  # per connection; aiohttp's default 64 KiB cut large bodies into many small reads
INLINE_HASH = 256 << 10  # a transferred chunk larger than this is hashed in a thread, off the loop


class DocumentFailed(Exception):
    """The document could not be fetched: why, as a code (protocol.failures) and as text;
    `permanent` says whether trying again could help; `page` is the listing page a listing
    source stopped on."""

    def __init__(self, code: FailureCode, reason: str, *, permanent: bool, page: int | None = None) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.permanent = permanent
        self.page = page

    @property
    def blocked(self) -> bool:
        """The origin answered, but not with the document: the host's budget and the job's
        dead-man switch count it."""
        return self.code in BLOCKS


@dataclass(frozen=True)
class Asked:
    """What a task says about fetching its documents: statuses that mean a block (params
    `block_statuses`), and its job's politeness (requests per second, connections)."""

    block_statuses: frozenset[int] = frozenset()
    cap: Cap | None = None


@dataclass
class Wire:
    """The exchange as it went over the wire, for a WARC record of it: the request line and the
    headers sent, the status line and the headers received (in their order and case), and the
    body as transferred (transfer coding undone, Content-Encoding kept). An encoded body's sha256
    and size are counted as it streams (the document's are of the decoded bytes); `copy` (a
    WARC's spool) is given every transferred chunk, `done` is awaited once the body has ended."""

    request: tuple[str, list[tuple[str, str]]]
    status: str
    headers: list[tuple[str, str]]
    encoding: str = ""  # the Content-Encoding undone ("" when the body is the document as is)
    size: int = 0
    digest: Any = None  # hashlib's sha256 of the transferred bytes, for an encoded body
    copy: Callable[[bytes], Awaitable[None]] | None = None
    done: Callable[[], Awaitable[None]] | None = None

    async def counted(self, raw: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        try:
            async for chunk in raw:
                self.size += len(chunk)
                if self.digest is not None:
                    if len(chunk) > INLINE_HASH:
                        await asyncio.to_thread(self.digest.update, chunk)
                    else:
                        self.digest.update(chunk)
                if self.copy is not None:
                    await self.copy(chunk)
                yield chunk
        finally:
            if self.done is not None:
                await self.done()

    def transferred(self) -> dict[str, Any]:
        """The capture's fields for the body as transferred, when it is not the document's bytes."""
        if not self.encoding or self.digest is None:
            return {}
        return {"transfer_sha256": self.digest.hexdigest(), "transfer_size": self.size}


# A revisit record's profiles (WARC 1.1 §6.7.2, §6.7.3).
WARC_IDENTICAL = "http://netpreserve.org/warc/1.1/revisit/identical-payload-digest"
WARC_NOT_MODIFIED = "http://netpreserve.org/warc/1.1/revisit/server-not-modified"


@dataclass(frozen=True)
class Revisit:
    """What a WARC revisit record says (client.warc writes it): the same payload as the capture
    it refers to (identical-payload-digest, with that payload's sha256), or a 304
    (server-not-modified)."""

    profile: str
    refers_to_uri: str
    refers_to_date: str | None
    digest: str | None


@dataclass(frozen=True)
class Hop:
    """A redirect followed on the way to the document: the exchange and its (small) body as
    received, for the WARC (a replay of the URL asked for finds the redirect)."""

    url: str
    wire: Wire
    body: bytes
    fetched_at: datetime
    server_ip: str | None = None


@dataclass(frozen=True)
class Body:
    chunks: AsyncIterator[bytes]  # the document: the body with its Content-Encoding undone
    content_type: str | None
    length: int | None
    wire: Wire  # what went over the wire (client.warc records it)
    url: str = ""  # where it came from, after redirects
    capture: v1.Capture | None = None  # how: redirects, status, headers, server, when
    status: int = 200  # 304: not modified since the conditional request's version (no body)
    hops: tuple[Hop, ...] = ()  # the redirects followed, in order

    def captured(self) -> v1.Capture | None:
        """The capture once the body has been read: with the transferred bytes' sha256 and size
        when they differ from the document's."""
        extra = self.wire.transferred()
        if self.capture is None or not extra:
            return self.capture
        return self.capture.model_copy(update=extra)


class Fetcher:
    def __init__(
        self,
        policy: Policy,
        *,
        concurrency: int,
        per_host_connections: int,
        per_host_rate: float | None,
        retries: int,
        timeout: float,
        max_size: int,
        grants: Ask | None = None,
    ) -> None:
        self.policy = policy
        self.retries = retries
        self.timeout = timeout
        self.max_size = max_size
        # With `grants` (the gate's), each host's fleet-wide budget limits this client too.
        self.limiter = FleetLimits(per_host_connections, per_host_rate, grants)
        self._concurrency = concurrency
        self._session: aiohttp.ClientSession | None = None
        # --user-agent, else the gate's (USER_AGENT / OPERATOR_CONTACT, sent with each lease).
        self.user_agent = user_agent(None)
        self.user_agent_fixed = False

    def _open_session(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(
            limit=self._concurrency,
            limit_per_host=self.limiter.connections,
            resolver=GuardedResolver(self.policy),
            ttl_dns_cache=60,
        )
        return aiohttp.ClientSession(connector=connector, **_options())

    @asynccontextmanager
    async def browser(
        self, asked: Asked, charset: str, trace: list[str] | None = None
    ) -> AsyncIterator[Browser]:
        """A browsing session of its own (its own cookies) over the fleet's connections, budgets
        and guard: a search that a registry binds to its session."""
        session = aiohttp.ClientSession(
            connector=self.session.connector,
            connector_owner=False,
            cookie_jar=aiohttp.CookieJar(unsafe=True),  # unsafe: cookies of hosts given by address too
            **_options(),
        )
        try:
            yield Browser(self, session, asked, charset, trace if trace is not None else [])
        finally:
            await session.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = self._open_session()
        return self._session

    async def close(self) -> None:
        await self.limiter.close()
        if self._session is not None:
            await self._session.close()

    async def fetch(
        self,
        url: str,
        sink: Callable[[Body], Awaitable[T]],
        asked: Asked = Asked(),
        *,
        method: str = "GET",
        form: bytes | None = None,
        session: aiohttp.ClientSession | None = None,
        conditional: dict[str, str] | None = None,
    ) -> T:
        """Fetch url (retrying) and hand its body to sink; sink's result is returned. `form`: a
        form-encoded body to POST (a 301/302/303 turns it into a GET, as browsers do).
        `conditional`: If-None-Match / If-Modified-Since to send; a 304 then reaches the sink
        as a Body of status 304 and no bytes."""
        request = _Request(method, form, session or self.session, self.user_agent, conditional or {})
        for attempt in range(self.retries + 1):
            # A paused host (the gate's, or a Retry-After) is waited out before the attempt's clock.
            with contextlib.suppress(ValueError):
                await self.limiter.until_open(host_key(_parsed(url)))
            try:
                async with asyncio.timeout(self.timeout):
                    return await self._attempt(url, sink, asked, request)
            except _Retry as retry:
                if attempt == self.retries:
                    raise DocumentFailed(
                        retry.code, f"{retry.reason} (after {attempt + 1} attempts)", permanent=False
                    ) from None
                # Retry-After spread by up to a half: every client told to wait must not return at once.
                await asyncio.sleep(
                    retry.delay * random.uniform(1.0, 1.5) if retry.delay is not None else _backoff(attempt)
                )
            except TimeoutError:
                if attempt == self.retries:
                    raise DocumentFailed(
                        FailureCode.TIMEOUT, f"timed out after {self.timeout:g} s", permanent=False
                    ) from None
                await asyncio.sleep(_backoff(attempt))
        raise AssertionError("unreachable")

    async def _attempt(
        self, url: str, sink: Callable[[Body], Awaitable[T]], asked: Asked, request: _Request
    ) -> T:
        target = _parsed(url)
        redirects: list[v1.Redirect] = []
        hops: list[Hop] = []
        for _ in range(MAX_REDIRECTS + 1):
            # The URL object judged is the one requested: no second parse to disagree with the guard.
            try:
                self.policy.check_url(target)
            except Refused as exc:
                raise DocumentFailed(FailureCode.REFUSED, f"refused: {exc}", permanent=True) from None
            host = host_key(target)
            async with self.limiter.slot(host, asked.cap):
                try:
                    async with request.send(target) as reply:
                        self._record(host, reply)
                        if reply.status in REDIRECTS and "Location" in reply.headers:
                            redirects.append(_redirect(target, reply.status))
                            hops.append(await _hop(reply, target))
                            target = target.join(_parsed(reply.headers["Location"]))
                            request = request.redirected(reply.status)
                            continue
                        return await self._deliver(
                            host, reply, sink, asked, redirects, bool(request.conditional), hops
                        )
                except Refused as exc:
                    raise DocumentFailed(FailureCode.REFUSED, f"refused: {exc}", permanent=True) from None
                except aiohttp.InvalidURL as exc:
                    raise DocumentFailed(
                        FailureCode.INVALID_URL, f"invalid URL: {exc}", permanent=True
                    ) from None
                except aiohttp.ClientResponseError as exc:
                    raise _Retry(of_status(exc.status), f"HTTP {exc.status}") from None
                except (aiohttp.ClientError, ConnectionError) as exc:
                    if isinstance(exc.__cause__, Refused) or isinstance(exc.__context__, Refused):
                        raise DocumentFailed(
                            FailureCode.REFUSED,
                            f"refused: {exc.__cause__ or exc.__context__}",
                            permanent=True,
                        ) from None
                    self.limiter.record(host, "error")
                    raise _Retry(FailureCode.NETWORK, f"{type(exc).__name__}: {exc}") from None
                except TimeoutError:
                    self.limiter.record(host, "error")
                    raise
        raise DocumentFailed(
            FailureCode.TOO_MANY_REDIRECTS, f"more than {MAX_REDIRECTS} redirects", permanent=True
        )

    async def _deliver(
        self,
        host: str,
        reply: aiohttp.ClientResponse,
        sink: Callable[[Body], Awaitable[T]],
        asked: Asked,
        redirects: list[v1.Redirect],
        conditional: bool = False,
        hops: list[Hop] | None = None,
    ) -> T:
        try:
            if conditional and reply.status == NOT_MODIFIED:  # the version the request named
                return await sink(replace(self._body(reply, redirects, hops), status=NOT_MODIFIED))
            if reply.status in asked.block_statuses:
                raise DocumentFailed(
                    FailureCode.BLOCKED,
                    f"HTTP {reply.status}: a block (the task's block_statuses)",
                    permanent=False,
                )
            if (challenge := _challenge(reply)) is not None:
                raise DocumentFailed(
                    FailureCode.BLOCKED,
                    f"HTTP {reply.status}: a block ({challenge}: challenge)",
                    permanent=False,
                )
            self._check_status(reply)
            return await sink(self._body(reply, redirects, hops))
        except DocumentFailed as exc:
            if exc.blocked:  # the host's budget hears of block pages too
                self.limiter.record(host, "blocked")
            raise

    def _record(self, host: str, reply: aiohttp.ClientResponse) -> None:
        """Tell the fleet's budget for this host what it answered."""
        wait = retry_after(reply.headers.get("Retry-After")) if reply.status in (429, 503) else None
        if reply.status == THROTTLED or (reply.status == 503 and wait):
            self.limiter.record(host, "throttled", wait)
        elif reply.status in RETRY_STATUS:
            self.limiter.record(host, "error")
        else:
            self.limiter.record(host, "ok")

    def _check_status(self, reply: aiohttp.ClientResponse) -> None:
        if reply.status == 200:
            length = reply.content_length
            if length is not None and length > self.max_size:
                raise DocumentFailed(
                    FailureCode.TOO_LARGE,
                    f"document is {length} bytes, over --max-document-size ({self.max_size})",
                    permanent=True,
                )
            return
        if reply.status in RETRY_STATUS:
            raise _Retry(
                of_status(reply.status), f"HTTP {reply.status}", retry_after(reply.headers.get("Retry-After"))
            )
        raise DocumentFailed(
            of_status(reply.status), f"HTTP {reply.status} {reply.reason or ''}".strip(), permanent=True
        )

    def _body(
        self, reply: aiohttp.ClientResponse, redirects: list[v1.Redirect], hops: list[Hop] | None = None
    ) -> Body:
        encoding = reply.headers.get("Content-Encoding", "identity").strip().lower()
        wire = _wire(reply, encoding if encoding in WBITS else "")
        chunks: AsyncIterator[bytes] = wire.counted(reply.content.iter_chunked(READ_CHUNK))
        if encoding in WBITS:
            chunks = inflated(chunks, WBITS[encoding])
        elif encoding not in ("", "identity"):
            raise DocumentFailed(
                FailureCode.BAD_ENCODING,
                f"unsupported Content-Encoding {encoding[:40]!r} (we ask for gzip or deflate)",
                permanent=True,
            )
        length = reply.content_length if encoding in ("", "identity") else None
        url = str(reply.url)
        capture = _capture(reply, url, redirects)
        return Body(
            chunks, reply.headers.get("Content-Type"), length, wire, url, capture, hops=tuple(hops or ())
        )

    async def text(self, url: str, asked: Asked = Asked()) -> tuple[str, str]:
        """A listing page as text, and the URL it came from after redirects (relative links
        are resolved against that)."""
        page = await self.page(url, asked, "utf-8")
        return page.text, page.url

    async def page(
        self,
        url: str,
        asked: Asked,
        charset: str,
        *,
        method: str = "GET",
        form: bytes | None = None,
        session: aiohttp.ClientSession | None = None,
    ) -> Page:
        """A page, read whole (at most --max-document-size) and decoded in the charset its
        Content-Type names, else `charset`."""

        async def read(body: Body) -> Page:
            data = bytearray()
            async for chunk in body.chunks:
                data += chunk
                if len(data) > self.max_size:
                    raise DocumentFailed(
                        FailureCode.TOO_LARGE, "page over --max-document-size", permanent=True
                    )
            declared = charset_of(body.content_type) or charset
            try:
                text = data.decode(declared, errors="replace")
            except LookupError:
                text = data.decode(charset, errors="replace")
            return Page(body.url or url, text, body.content_type, len(data))

        return await self.fetch(url, read, asked, method=method, form=form, session=session)


@dataclass(frozen=True)
class _Request:
    method: str
    form: bytes | None
    session: aiohttp.ClientSession
    agent: str
    conditional: dict[str, str] = field(default_factory=dict)

    def send(self, target: URL) -> Any:
        headers = {"User-Agent": self.agent} | self.conditional
        if self.form is not None:
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        return self.session.request(
            self.method, target, data=self.form, headers=headers, allow_redirects=False
        )

    def redirected(self, status: int) -> _Request:
        """After a redirect: a 301/302/303 turns a POST into a GET without the form, as browsers do."""
        if status in (301, 302, 303) and self.method != "GET":
            return _Request("GET", None, self.session, self.agent, self.conditional)
        return self


@dataclass(frozen=True)
class Page:
    url: str  # after redirects
    text: str
    content_type: str | None
    size: int


class Browser:
    """One search's session: its cookies, its charset, the fetcher's budgets and guard; every
    request it makes is written to `trace` (the dry run prints it)."""

    def __init__(
        self, fetcher: Fetcher, session: aiohttp.ClientSession, asked: Asked, charset: str, trace: list[str]
    ) -> None:
        self.fetcher = fetcher
        self.session = session
        self.asked = asked
        self.charset = charset
        self.trace = trace

    async def open(self, method: str, url: str, fields: list[tuple[str, str]] | None = None) -> Page:
        form = None
        if fields is not None:
            encoded = urlencode(fields, encoding=self.charset, errors="xmlcharrefreplace")
            if method == "GET":
                url = url + ("&" if "?" in url else "?") + encoded if encoded else url
            else:
                form = encoded.encode("ascii")
        page = await self.fetcher.page(
            url, self.asked, self.charset, method=method, form=form, session=self.session
        )
        sent = f" ({len(form)} bytes of form)" if form else ""
        moved = f" -> {page.url}" if page.url != url else ""
        self.trace.append(f"{method} {url}{sent}{moved}: {page.size} bytes")
        return page

    def blocked(self, url: str) -> None:
        """Tell the host's budget this page was a block."""
        with contextlib.suppress(ValueError):
            self.fetcher.limiter.record(host_key(_parsed(url)), "blocked")


async def _hop(reply: aiohttp.ClientResponse, target: URL) -> Hop:
    """A redirect as received: its exchange and up to HOP_BODY bytes of its body."""
    ip = _peer(reply)[0]
    body = await reply.content.read(HOP_BODY)
    return Hop(str(target), _wire(reply, ""), body, datetime.now(UTC), ip)


def _redirect(target: URL, status: int) -> v1.Redirect:
    return v1.Redirect(url=v1.clip(str(target), v1.MAX_URL) or "", status=status)


def _capture(reply: aiohttp.ClientResponse, url: str, redirects: list[v1.Redirect]) -> v1.Capture:
    """The capture record of an answer: status, headers, the server's address, when it came."""
    ip, port = _peer(reply)
    fields: dict[str, Any] = {
        "final_url": v1.clip(url, v1.MAX_URL),
        "redirects": redirects[: v1.MAX_REDIRECTS],
        "http_status": reply.status,
        "fetched_at": datetime.now(UTC),
        "server_ip": ip,
        "server_port": port,
        "client_version": VERSION,
    }
    try:
        return v1.Capture.of_headers(reply.headers, **fields)
    except pydantic.ValidationError:  # odd headers are not worth the document: keep the rest
        return v1.Capture.model_validate(fields)


def _peer(reply: aiohttp.ClientResponse) -> tuple[str | None, int | None]:
    """The socket's peer: the address actually connected to (the guard may have had several).
    A small answer read whole with its headers has already released its connection, so the
    response's protocol (aiohttp keeps it) is asked when the connection is gone."""
    carrier = reply.connection or getattr(reply, "_protocol", None)
    with contextlib.suppress(AttributeError, TypeError, ValueError, IndexError):
        peer = carrier.transport.get_extra_info("peername")  # type: ignore[union-attr]
        return str(ipaddress.ip_address(peer[0])), int(peer[1])
    return None, None


def _wire(reply: aiohttp.ClientResponse, encoding: str) -> Wire:
    """The exchange as sent and received (the body's bytes are counted as they stream)."""
    sent = reply.request_info
    line = f"{sent.method} {sent.url.raw_path_qs or '/'} HTTP/1.1"
    version = f"HTTP/{reply.version.major}.{reply.version.minor}" if reply.version else "HTTP/1.1"
    received = [(name.decode("latin-1"), value.decode("latin-1")) for name, value in reply.raw_headers]
    return Wire(
        request=(line, list(sent.headers.items())),
        status=f"{version} {reply.status} {reply.reason or ''}".rstrip(),
        headers=received,
        encoding=encoding,
        digest=hashlib.sha256() if encoding else None,
    )


def _options() -> dict[str, Any]:
    return {
        "timeout": aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=30),
        "read_bufsize": READ_BUFFER,
        "headers": {"Accept-Encoding": "gzip, deflate"},
        "auto_decompress": False,  # decoded by `inflated`, which notices a stream cut short
    }


def charset_of(content_type: str | None) -> str | None:
    """The charset a Content-Type names, if it names one."""
    for part in (content_type or "").split(";")[1:]:
        name, _, value = part.strip().partition("=")
        if name.strip().lower() == "charset" and value.strip():
            return value.strip().strip('"')
    return None


class _Retry(Exception):
    def __init__(self, code: FailureCode, reason: str, delay: float | None = None) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.delay = delay


def _backoff(attempt: int) -> float:
    return float(min(30.0, 0.5 * 2**attempt) * random.uniform(0.5, 1.0))


# Content-Encoding → zlib window bits: gzip (RFC 1952), deflate as HTTP means it (zlib, RFC 1950;
# 32 also takes a gzip header, which some servers send under "deflate").
WBITS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": 32 + zlib.MAX_WBITS}


async def inflated(chunks: AsyncIterator[bytes], wbits: int) -> AsyncIterator[bytes]:
    """Decode a Content-Encoding ourselves, because aiohttp ends a gzip body cut short without an
    error (seen with aiohttp 3.14: half a gzip stream under honest framing came out as a shorter
    "document"). The stream must end where the encoding says it ends; several gzip members
    (RFC 1952 §2.2) are one document; output comes in pieces of at most READ_CHUNK, so a bomb
    inflates no faster than storage takes it (and meets --max-document-size there)."""
    inflater = zlib.decompressobj(wbits)
    try:
        async for chunk in chunks:
            data = chunk
            while data:
                if inflater.eof:  # a member ended; what follows must be the next one
                    inflater = zlib.decompressobj(wbits)
                out = inflater.decompress(data, READ_CHUNK)
                data = inflater.unused_data if inflater.eof else inflater.unconsumed_tail
                if out:
                    yield out
    except zlib.error as exc:
        raise _Retry(
            FailureCode.BAD_ENCODING, f"the body does not decode as its Content-Encoding says: {exc}"
        ) from None
    if not inflater.eof:
        raise _Retry(FailureCode.BAD_ENCODING, "the body ends before its compressed stream does (cut short)")


# Headers that mark a bot challenge in place of the response, whatever its status: Cloudflare
# sets `cf-mitigated: challenge` on every challenge page (developers.cloudflare.com, "Detect a
# Challenge Page response"; it comes with 403 or 503), Vercel `x-vercel-mitigated: challenge`
# (with 429). A challenge may pass later: it is a block, tried again, never a missing document.
CHALLENGE_HEADERS = ("cf-mitigated", "x-vercel-mitigated")


def _challenge(reply: aiohttp.ClientResponse) -> str | None:
    for name in CHALLENGE_HEADERS:
        if reply.headers.get(name, "").strip().lower() == "challenge":
            return name
    return None


def _parsed(url: str) -> URL:
    try:
        return URL(url)
    except (ValueError, TypeError) as exc:
        raise DocumentFailed(FailureCode.INVALID_URL, f"invalid URL: {exc}", permanent=True) from None


def retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date), capped."""
    if not value:
        return None
    try:
        return min(max(float(value), 0.0), MAX_RETRY_AFTER)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return min(max(when.timestamp() - time.time(), 0.0), MAX_RETRY_AFTER)
