"""Backblaze B2's S3 dialect, in front of moto: what the tests store to when they say `b2`.

Each difference from AWS S3 below is one Backblaze documents or users reported against a real
bucket; the rest of the protocol is moto's.

- Conditional writes are not implemented: a PutObject (or a multipart completion) carrying
  If-None-Match or If-Match is refused with 501 NotImplemented, "A header you provided implies
  functionality that is not implemented" (sathinduga/obsidian-s3-sync-and-backup issue #78 and
  PR #84, tested against a real bucket in 2026; Backblaze's S3 Put Object reference lists no
  conditional headers: https://www.backblaze.com/apidocs/s3-put-object).
- Every bucket is versioned, always ("S3-Compatible API Bucket Versions",
  https://www.backblaze.com/docs/cloud-storage-s3-compatible-api-bucket-versions): a PUT answers
  with x-amz-version-id, an overwrite adds a version, a delete by name only hides the latest.
  `b2_bucket` turns versioning on when it creates the moto bucket.
- x-amz-tagging is explicitly rejected on Put Object and Copy Object
  (https://www.backblaze.com/apidocs/s3-copy-object).

It also records every request (method, path, headers) for the tests to inspect.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import boto3
import httpx

NOT_IMPLEMENTED = (
    b'<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n<Error><Code>NotImplemented</Code>'
    b"<Message>A header you provided implies functionality that is not implemented</Message></Error>"
)
TAGGING_REFUSED = (
    b'<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n<Error><Code>InvalidArgument</Code>'
    b"<Message>x-amz-tagging is not supported</Message></Error>"
)
HOP = {"host", "expect", "connection", "content-length", "transfer-encoding"}


class B2Dialect(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    upstream = ""
    seen: list[tuple[str, str, dict[str, str]]] = []

    def _refusal(self, headers: dict[str, str]) -> tuple[int, bytes] | None:
        conditional = "if-none-match" in headers or "if-match" in headers
        writes = self.command == "PUT" and "partNumber=" not in self.path
        completes = self.command == "POST" and "uploadId=" in self.path
        if conditional and (writes or completes):
            return 501, NOT_IMPLEMENTED
        if "x-amz-tagging" in headers and self.command == "PUT":
            return 400, TAGGING_REFUSED
        return None

    def _forward(self) -> None:
        length = int(self.headers.get("Content-Length", 0) or 0)
        body = self.rfile.read(length) if length else b""
        if len(body) < length:  # the sender died mid-body: an endpoint stores nothing of it
            self.close_connection = True
            return
        headers = {k.lower(): v for k, v in self.headers.items()}
        self.seen.append((self.command, self.path, headers))
        refusal = self._refusal(headers)
        if refusal is not None:
            status, content = refusal
            self.send_response(status)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(content)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(content)
            return
        forwarded = {k: v for k, v in self.headers.items() if k.lower() not in HOP}
        with httpx.stream(
            self.command, self.upstream + self.path, headers=forwarded, content=body, timeout=60
        ) as reply:
            content = b"".join(reply.iter_raw())  # as stored: a gzip object stays gzip
        self.send_response(reply.status_code)
        for k, v in reply.headers.items():
            if k.lower() not in HOP:
                self.send_header(k, v)
        # A HEAD answer says the object's length, with no body.
        size = reply.headers.get("content-length", "0") if self.command == "HEAD" else str(len(content))
        self.send_header("Content-Length", size)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(content)

    do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _forward

    def log_message(self, *args: object) -> None:
        pass


class _Forgetful(list[tuple[str, str, dict[str, str]]]):
    """A long run's record of requests: kept by no one."""

    def append(self, item: tuple[str, str, dict[str, str]]) -> None:
        pass


@contextmanager
def b2_endpoint(moto_url: str) -> Iterator[tuple[str, type[B2Dialect]]]:
    """A B2-dialect endpoint in front of moto: its URL and the handler class (with `seen`)."""
    handler = type("B2DialectFor", (B2Dialect,), {"upstream": moto_url, "seen": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler
    finally:
        server.shutdown()
        server.server_close()


def b2_bucket(moto_url: str, name: str) -> str:
    """A bucket as B2 makes them: versioned."""
    client = boto3.client("s3", endpoint_url=moto_url)
    client.create_bucket(Bucket=name)
    client.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
    return name


def b2_env(endpoint: str, bucket: str) -> dict[str, str]:
    """The variables `.env.example` names for a b2:// store."""
    return {
        "B2_ENDPOINT": endpoint,
        "B2_BUCKET_NAME": bucket,
        "B2_APPLICATION_KEY_ID": "test-key-id",
        "B2_APPLICATION_KEY": "test-secret",
    }


if __name__ == "__main__":  # python tests/b2_dialect.py LISTEN_PORT UPSTREAM_URL (the chaos run's)
    import sys

    handler = type("B2DialectFor", (B2Dialect,), {"upstream": sys.argv[2], "seen": []})
    handler.seen = _Forgetful()
    server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), handler)
    print("ready", flush=True)
    server.serve_forever()
