"""`docgate warc pack JOB`: a job's WARC files as one WACZ, written streaming in bounded memory.

WACZ 1.1.1 (specs.webrecorder.net/wacz/1.1.1) is a ZIP of:

- `archive/<file>.warc.gz`: the job's WARC files, as recorded, stored (not deflated: a replay
  tool reads a record at its offset);
- `indexes/index.cdx.gz` and `indexes/index.idx`: the CDXJ index of every record, sorted, in
  gzip blocks of 300 lines (cdxj-indexer's CompressedWriter, the "ZipNum" form), and the
  secondary index of each block's first key, offset and length, which replay tools
  (ReplayWeb.page, pywb) search to find a block;
- `pages/pages.jsonl`: every document of the job with its capture (URL, time), the archive's
  entry points;
- `datapackage.json` (Frictionless Data): every file with its sha256 and size;
  `datapackage-digest.json`: the sha256 of datapackage.json.

Memory stays bounded whatever the job's size: WARC files are fetched from the store one at a
time into a temporary file, checked against their recorded sha256 and size (a file that does not
match stops the pack: its bytes are not the ones recorded), copied into the ZIP and indexed;
the index lines are sorted by cdxj-indexer's SortingWriter, which spills runs of 32 MB to
temporary files and merges them; documents and files are read from the database in keyset
pages. What grows with the job is the ZIP's central directory (one entry per WARC file) and
the secondary index (one line per 300 records).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import tempfile
import zipfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any
from uuid import UUID

from server.db.pool import Pool, connection
from server.errors import DocgateError
from storage import Storage

WACZ_VERSION = "1.1.1"
BLOCK_LINES = 300  # CDXJ lines per gzip block of index.cdx.gz (cdxj-indexer's default)
PAGE = 1_000  # rows read from the database at a time
COPY = 1 << 20

WARCS = """
SELECT storage_key, sha256, size FROM warc_files
WHERE job_id = $1 AND storage_key > $2 ORDER BY storage_key LIMIT $3
"""
PAGES = """
SELECT doc_id, coalesce(final_url, url) AS url, fetched_at FROM documents
WHERE job_id = $1 AND warc_key IS NOT NULL AND doc_id > $2 ORDER BY doc_id LIMIT $3
"""


@dataclass
class Packed:
    warcs: int = 0
    records: int = 0
    pages: int = 0
    resources: list[dict[str, Any]] = field(default_factory=list)


class _Hashed(io.RawIOBase):
    """A writable stream that counts and hashes what goes through it to `out`."""

    def __init__(self, out: IO[bytes]) -> None:
        self.out = out
        self.digest = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = bytes(data)
        self.digest.update(view)
        self.size += len(view)
        self.out.write(view)
        return len(view)

    def resource(self, path: str) -> dict[str, Any]:
        name = path.rsplit("/", 1)[-1].lower()
        return {"name": name, "path": path, "hash": f"sha256:{self.digest.hexdigest()}", "bytes": self.size}


async def pack(pool: Pool, store: Storage, job_id: UUID, output: Path) -> Packed:
    """Write the job's WACZ to `output` (replaced only once it is whole; nothing is left of a
    pack that fails)."""
    partial = output.with_name(output.name + ".partial")
    try:
        packed = await _pack(pool, store, job_id, partial)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    partial.replace(output)
    return packed


async def _pack(pool: Pool, store: Storage, job_id: UUID, partial: Path) -> Packed:
    from cdxj_indexer.main import CDXJIndexer, CompressedWriter, SortingWriter

    packed = Packed()
    indexer = CDXJIndexer(None, [], post_append=True, fields="referrer")
    lines = SortingWriter(None)
    lines.write = _counting(lines.write, packed)
    with (
        tempfile.TemporaryDirectory(prefix="docgate-wacz-") as tmp,
        zipfile.ZipFile(partial, "w", zipfile.ZIP_STORED, allowZip64=True) as wacz,
    ):
        async for key, sha256, size in _warcs(pool, job_id):
            local = Path(tmp) / key.rsplit("/", 1)[-1]
            await _fetch(store, key, sha256, size, local)
            path = f"archive/{local.name}"
            with local.open("rb") as source, _entry(wacz, path, packed, size) as out:
                while block := source.read(COPY):
                    out.write(block)
            with local.open("rb") as source:
                indexer.process_one(source, lines, local.name)
            local.unlink()
            packed.warcs += 1
        if not packed.warcs:
            raise DocgateError(f"job {job_id} has no WARC files recorded (a job's warc, or --warc)")
        secondary = io.StringIO()
        with _entry(wacz, "indexes/index.cdx.gz", packed) as out:
            blocks = CompressedWriter(secondary, out, num_lines=BLOCK_LINES, data_out_name="index.cdx.gz")
            lines.out = blocks
            lines.flush()  # the sorted lines, merged from their runs, in gzip blocks
            if blocks.block:
                blocks.flush()
        with _entry(wacz, "indexes/index.idx", packed, compress=True) as out:
            out.write(secondary.getvalue().encode())
        with _entry(wacz, "pages/pages.jsonl", packed, compress=True) as out:
            header = {"format": "json-pages-1.0", "id": "pages", "title": f"job {job_id}"}
            out.write(json.dumps(header).encode() + b"\n")
            async for page in _pages(pool, job_id):
                out.write(json.dumps(page).encode() + b"\n")
                packed.pages += 1
        described = json.dumps(_datapackage(job_id, packed), indent=2).encode()
        wacz.writestr(_info("datapackage.json", compress=True), described)
        digest = {"path": "datapackage.json", "hash": f"sha256:{hashlib.sha256(described).hexdigest()}"}
        wacz.writestr(_info("datapackage-digest.json", compress=True), json.dumps(digest, indent=2))
    return packed


def _counting(write: Any, packed: Packed) -> Any:
    def counted(line: str) -> None:
        packed.records += 1
        write(line)

    return counted


async def _warcs(pool: Pool, job_id: UUID) -> AsyncIterator[tuple[str, str, int]]:
    after = ""
    while True:
        async with connection(pool) as conn:
            rows = await conn.fetch(WARCS, job_id, after, PAGE)
        for row in rows:
            yield row["storage_key"], row["sha256"], row["size"]
        if len(rows) < PAGE:
            return
        after = rows[-1]["storage_key"]


async def _pages(pool: Pool, job_id: UUID) -> AsyncIterator[dict[str, Any]]:
    after = ""
    while True:
        async with connection(pool) as conn:
            rows = await conn.fetch(PAGES, job_id, after, PAGE)
        for row in rows:
            page: dict[str, Any] = {"id": row["doc_id"], "url": row["url"], "title": row["doc_id"]}
            if row["fetched_at"] is not None:
                page["ts"] = row["fetched_at"].astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            yield page
        if len(rows) < PAGE:
            return
        after = rows[-1]["doc_id"]


async def _fetch(store: Storage, key: str, sha256: str, size: int, local: Path) -> None:
    """The WARC file from the store, whole, with the bytes its record vouches for."""
    digest, got = hashlib.sha256(), 0
    with local.open("wb") as out:
        async for chunk in store.open(key):
            digest.update(chunk)
            got += len(chunk)
            out.write(chunk)
    if got != size or digest.hexdigest() != sha256:
        raise DocgateError(
            f"{key} in the store is not the WARC recorded (sha256 {digest.hexdigest()[:12]}…, "
            f"{got} bytes; recorded {sha256[:12]}…, {size} bytes): not packed"
        )


@contextlib.contextmanager
def _entry(
    wacz: zipfile.ZipFile, path: str, packed: Packed, size: int | None = None, compress: bool = False
) -> Iterator[_Hashed]:
    """A file of the ZIP, written as a stream, its sha256 and size kept for datapackage.json."""
    info = _info(path, compress)
    if size is not None:
        info.file_size = size
    with wacz.open(info, "w", force_zip64=size is None) as raw:
        out = _Hashed(raw)
        yield out
    packed.resources.append(out.resource(path))


def _info(path: str, compress: bool = False) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(path, datetime.now(UTC).timetuple()[:6])
    info.compress_type = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    return info


def _datapackage(job_id: UUID, packed: Packed) -> dict[str, Any]:
    from protocol.version import VERSION

    return {
        "profile": "data-package",
        "resources": packed.resources,
        "title": f"docgate job {job_id}",
        "description": f"{packed.pages} documents in {packed.warcs} WARC files, {packed.records} records",
        "created": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "wacz_version": WACZ_VERSION,
        "software": f"docgate/{VERSION}",
    }
