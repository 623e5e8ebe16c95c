"""A minimal HTTP/1.1 keep-alive client for driving load: one connection, one request at a time.

The load generator shares the machine's cores with the gate and PostgreSQL;
a full client library spends several times the gate's own CPU per request
(measured with aiohttp: ~2.5 ms per request against the gate's ~1.5 ms),
which would measure the generator, not the gate. This one builds requests
from bytes and reads Content-Length bodies: no redirects, no chunked bodies,
no TLS — what the gate sends on a plain connection.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from typing import Any
from urllib.parse import urlsplit


class HttpError(Exception):
    pass


class Connection:
    """`tls`: a context for an https URL; `source`: the local address to connect from (a fleet
    simulated on one machine, each client from its own loopback address, as nginx's per-address
    limits expect)."""

    def __init__(
        self, url: str, headers: dict[str, str], tls: ssl.SSLContext | None = None, source: str | None = None
    ) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or (443 if tls else 80)
        self.tls, self.source = tls, source
        fixed = {"Host": f"{self.host}:{self.port}", "Connection": "keep-alive", **headers}
        self._fixed = "".join(f"{k}: {v}\r\n" for k, v in fixed.items()).encode()
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def open(self) -> Connection:
        local = (self.source, 0) if self.source else None
        self._reader, self._writer = await asyncio.open_connection(
            self.host, self.port, ssl=self.tls, local_addr=local
        )
        return self

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            await self._writer.wait_closed()

    async def request(self, method: str, target: str, body: Any = None) -> tuple[int, Any]:
        """Send one request; return the status and the decoded JSON body (None when empty, or
        when an error answer is not JSON: a proxy's own page)."""
        status, data = await self.raw(method, target, body)
        if not data:
            return status, None
        try:
            return status, json.loads(data)
        except ValueError:
            if status < 400:
                raise
            return status, None

    async def raw(self, method: str, target: str, body: Any = None) -> tuple[int, bytes]:
        """Send one request; return the status and the body's bytes."""
        assert self._reader is not None and self._writer is not None
        payload = b"" if body is None else json.dumps(body, separators=(",", ":")).encode()
        head = f"{method} {target} HTTP/1.1\r\n".encode() + self._fixed
        if body is not None:
            head += b"Content-Type: application/json\r\n"
        head += b"Content-Length: %d\r\n\r\n" % len(payload)
        self._writer.write(head + payload)
        status_line = await self._reader.readline()
        if not status_line:
            raise HttpError("connection closed")
        status = int(status_line.split(b" ", 2)[1])
        length = 0
        while (line := await self._reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            if name.lower() == b"content-length":
                length = int(value)
            elif name.lower() == b"transfer-encoding":
                raise HttpError("chunked replies are not supported here")
        return status, (await self._reader.readexactly(length) if length else b"")
