"""Rules for documents reported by clients, checked before anything is written."""

from __future__ import annotations

from dataclasses import dataclass

from protocol import v1
from server.errors import Unprocessable
from storage.errors import KeyRefused
from storage.keys import GZIP_EXT, document_key, ext_of

URL_SCHEMES = ("file://", "s3://", "b2://", "gate:", "memory://")


@dataclass(frozen=True)
class Recorded:
    doc_id: str
    storage_key: str
    storage_url: str
    sha256: str
    size: int
    content_type: str | None
    compressed: bool


@dataclass(frozen=True)
class Failed:
    doc_id: str
    url: str | None
    error: str | None


def split_reports(
    documents: list[v1.DocumentReport], shard_size: int, store_url: str
) -> tuple[list[Recorded], list[Failed]]:
    """Documents to record (stored, or skipped with proof) and failures; refuse any wrong key."""
    recorded, failed = [], []
    for doc in documents:
        if doc.status is v1.DocumentStatus.FAILED:
            failed.append(Failed(str(doc.doc_id), doc.url, doc.error))
        elif doc.storage_key is not None and doc.sha256 is not None and doc.size is not None:
            recorded.append(_recorded(doc, shard_size, store_url))
    return recorded, failed


def _recorded(doc: v1.DocumentReport, shard_size: int, store_url: str) -> Recorded:
    doc_id, key = str(doc.doc_id), doc.storage_key or ""
    ext = ext_of(key, doc_id)
    try:
        expected = document_key(
            doc_id, (ext or "").removesuffix(GZIP_EXT), shard_size=shard_size, compressed=doc.compressed
        )
    except KeyRefused as exc:
        raise Unprocessable(exc.message) from None
    if ext is None or key != expected:
        gz = ", ending in .gz when compressed" if doc.compressed else ""
        raise Unprocessable(
            f"storage_key {key!r} is not the key for doc_id {doc_id!r}: expected {expected!r} "
            f"(<doc_id // {shard_size}>/<doc_id><ext>{gz})"
        )
    url = doc.storage_url or f"{store_url.rstrip('/')}/{key}"
    if not url.startswith(URL_SCHEMES) or not url.endswith("/" + key) and url != f"gate:{key}":
        raise Unprocessable(f"storage_url must be a store URL ending in /{key}")
    assert doc.sha256 is not None and doc.size is not None
    return Recorded(doc_id, key, url, doc.sha256, doc.size, doc.content_type, doc.compressed)
