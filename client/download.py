"""Fetching documents: aiohttp (measured: it keeps its rate as concurrency grows; httpx's pool
does not, see benchmarks/transport.py), the SSRF guard, per-host politeness, timeouts and retries.

Retries, with exponential backoff and jitter, on connection errors, timeouts,
408, 429 and 5xx; `Retry-After` (seconds or an HTTP date) is honoured. Other
4xx (404, 410, …) are permanent: the document is failed with the reason.
"""

from __future__ import annotations

import asyncio
import email.utils
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import aiohttp
from yarl import URL

from client.guard import GuardedResolver, Policy, Refused
from client.limits import HostLimiter

T = TypeVar("T")
REDIRECTS = {301, 302, 303, 307, 308}
RETRY_STATUS = {408, 425, 429, 500, 502, 503, 504}
MAX_REDIRECTS = 5
MAX_RETRY_AFTER = 300.0
READ_CHUNK = 1 << 20
READ_BUFFER = 1 << 20  # per connection; aiohttp's default 64 KiB cut large bodies into many small reads


class DocumentFailed(Exception):
    """The document could not be fetched; `permanent` says whether trying again could help."""

    def __init__(self, reason: str, permanent: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.permanent = permanent


@dataclass(frozen=True)
class Body:
    chunks: AsyncIterator[bytes]
    content_type: str | None
    length: int | None


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
    ) -> None:
        self.policy = policy
        self.retries = retries
        self.timeout = timeout
        self.max_size = max_size
        self.limiter = HostLimiter(per_host_connections, per_host_rate)
        self._concurrency = concurrency
        self._session: aiohttp.ClientSession | None = None

    def _open_session(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(
            limit=self._concurrency,
            limit_per_host=self.limiter.connections,
            resolver=GuardedResolver(self.policy),
            ttl_dns_cache=60,
        )
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=30)
        return aiohttp.ClientSession(
            connector=connector,
            timeout=timeout,
            read_bufsize=READ_BUFFER,
            headers={"User-Agent": "docgate/0.1 (+archival downloader)"},
        )

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = self._open_session()
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def fetch(self, url: str, sink: Callable[[Body], Awaitable[T]]) -> T:
        """Fetch url (retrying) and hand its body to sink; sink's result is returned."""
        for attempt in range(self.retries + 1):
            try:
                async with asyncio.timeout(self.timeout):
                    return await self._attempt(url, sink)
            except _Retry as retry:
                if attempt == self.retries:
                    raise DocumentFailed(f"{retry.reason} (after {attempt + 1} attempts)", False) from None
                await asyncio.sleep(retry.delay if retry.delay is not None else _backoff(attempt))
            except TimeoutError:
                if attempt == self.retries:
                    raise DocumentFailed(f"timed out after {self.timeout:g} s", False) from None
                await asyncio.sleep(_backoff(attempt))
        raise AssertionError("unreachable")

    async def _attempt(self, url: str, sink: Callable[[Body], Awaitable[T]]) -> T:
        target = _parsed(url)
        for _ in range(MAX_REDIRECTS + 1):
            # The URL object judged is the one requested: no second parse to disagree with the guard.
            try:
                self.policy.check_url(target)
            except Refused as exc:
                raise DocumentFailed(f"refused: {exc}", True) from None
            async with self.limiter.slot(target.raw_host or ""):
                try:
                    async with self.session.get(target, allow_redirects=False) as reply:
                        if reply.status in REDIRECTS and "Location" in reply.headers:
                            target = target.join(_parsed(reply.headers["Location"]))
                            continue
                        self._check_status(reply)
                        return await sink(self._body(reply))
                except Refused as exc:
                    raise DocumentFailed(f"refused: {exc}", True) from None
                except aiohttp.InvalidURL as exc:
                    raise DocumentFailed(f"invalid URL: {exc}", True) from None
                except aiohttp.ClientResponseError as exc:
                    raise _Retry(f"HTTP {exc.status}") from None
                except (aiohttp.ClientError, ConnectionError) as exc:
                    if isinstance(exc.__cause__, Refused) or isinstance(exc.__context__, Refused):
                        raise DocumentFailed(f"refused: {exc.__cause__ or exc.__context__}", True) from None
                    raise _Retry(f"{type(exc).__name__}: {exc}") from None
        raise DocumentFailed(f"more than {MAX_REDIRECTS} redirects", True)

    def _check_status(self, reply: aiohttp.ClientResponse) -> None:
        if reply.status == 200:
            length = reply.content_length
            if length is not None and length > self.max_size:
                raise DocumentFailed(
                    f"document is {length} bytes, over --max-document-size ({self.max_size})", True
                )
            return
        if reply.status in RETRY_STATUS:
            raise _Retry(f"HTTP {reply.status}", retry_after(reply.headers.get("Retry-After")))
        raise DocumentFailed(f"HTTP {reply.status} {reply.reason or ''}".strip(), True)

    def _body(self, reply: aiohttp.ClientResponse) -> Body:
        return Body(
            reply.content.iter_chunked(READ_CHUNK), reply.headers.get("Content-Type"), reply.content_length
        )

    async def text(self, url: str) -> tuple[str, str]:
        """A listing page as text, and the URL it came from after redirects."""
        final = url

        async def read(body: Body) -> str:
            data = bytearray()
            async for chunk in body.chunks:
                data += chunk
                if len(data) > self.max_size:
                    raise DocumentFailed("listing page over --max-document-size", True)
            return data.decode("utf-8", errors="replace")

        return await self.fetch(final, read), final


class _Retry(Exception):
    def __init__(self, reason: str, delay: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.delay = delay


def _backoff(attempt: int) -> float:
    return float(min(30.0, 0.5 * 2**attempt) * random.uniform(0.5, 1.0))


def _parsed(url: str) -> URL:
    try:
        return URL(url)
    except (ValueError, TypeError) as exc:
        raise DocumentFailed(f"invalid URL: {exc}", True) from None


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
