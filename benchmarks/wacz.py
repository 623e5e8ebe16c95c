"""Scenario 12 — packing a job's WARC files as one WACZ: `docgate warc pack JOB` of 1 M documents.

A job's WARC files are laid in a local store as clients write them (one gzipped file per
report of 100 documents: a warcinfo record, then a request and a response per document, each
record its own gzip member) and recorded in `warc_files`, with the job's documents in
`documents`: 10,000, 100,000 and 1,000,000 documents (--quick: 10,000 and 100,000). `docgate
warc pack JOB` then runs to completion under GNU time: wall time, records indexed per second,
the WACZ's size against the WARCs', and the process's peak RSS, which must not grow with the
job (the pack fetches one WARC at a time and sorts its index with cdxj-indexer's spilling sort).

To write 2 M records in seconds rather than minutes, each file is made from one exchange
written by warcio, its document number substituted at a fixed width (URL, request line,
record ids); the records' block digests are then those of the template. The pack does not read
record digests; it checks each file's sha256 and size against `warc_files`, which are those
of the file as laid.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import subprocess
import sys
import uuid
import zlib
from pathlib import Path
from typing import Any

from benchmarks.lib import Postgres, Processes, Table, connect, write_results

TIME = "/usr/bin/time"
JOB = "00000000-0000-0000-0000-0000000000e2"
PER_FILE = 100
MARK = b"9999999"  # the document number's place in the template: 7 digits, fixed width
PAYLOAD = b"%PDF-1.4 " + b"decision text " * 30

FILL = f"""
INSERT INTO jobs (job_id, source, params, chunk_size, priority, tasks_total)
VALUES ('{JOB}', 'id_range', '{{"url_template": "https://registry.example/doc/{{id}}.pdf", "start_id": 1,
        "count": 1}}', 100, 0, 0);
INSERT INTO documents (doc_id, source, storage_key, storage_url, sha256, size, job_id, url, final_url,
                       http_status, fetched_at, warc_key)
SELECT lpad(g::text, 7, '0'), 'id_range', (g / 50000) || '/' || g || '.pdf', 'file:///srv/' || g,
       encode(sha256(g::text::bytea), 'hex'), 430, '{JOB}',
       'https://registry.example/doc/' || lpad(g::text, 7, '0') || '.pdf',
       'https://registry.example/doc/' || lpad(g::text, 7, '0') || '.pdf', 200, now(),
       'warc/{JOB}/' || lpad(((g - 1) / {PER_FILE})::text, 8, '0') || '-1-1.warc.gz'
FROM generate_series(1, $1::int) AS g
"""
RECORD_WARC = """
INSERT INTO warc_files (storage_key, storage_url, sha256, size, records, doc_ids, job_id)
VALUES ($1, $2, $3, $4, $5, $6, $7)
"""


def template() -> tuple[bytes, bytes]:
    """The warcinfo record, and one exchange (request, response) with MARK for its number,
    each uncompressed, written by warcio."""
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    def written(*records: Any) -> bytes:
        out = io.BytesIO()
        writer = WARCWriter(out, gzip=False, warc_version="1.1")
        for record in records:
            writer.write_record(record)
        return out.getvalue()

    writer = WARCWriter(io.BytesIO(), gzip=False, warc_version="1.1")
    info = writer.create_warcinfo_record("bench.warc.gz", {"software": "docgate benchmark"})
    url = "https://registry.example/doc/" + MARK.decode() + ".pdf"
    request = writer.create_warc_record(
        url, "request", payload=io.BytesIO(b""), length=0,
        http_headers=StatusAndHeaders(f"GET /doc/{MARK.decode()}.pdf HTTP/1.1",
                                      [("Host", "registry.example")], is_http_request=True),
        warc_headers_dict={"WARC-Record-ID": f"<urn:uuid:00000000-0000-4000-8000-00001{MARK.decode()}>"},
    )  # fmt: skip
    response = writer.create_warc_record(
        url, "response", payload=io.BytesIO(PAYLOAD), length=len(PAYLOAD),
        http_headers=StatusAndHeaders("200 OK", [("Content-Type", "application/pdf"),
                                                 ("Content-Length", str(len(PAYLOAD)))], protocol="HTTP/1.1"),
        warc_headers_dict={"WARC-Record-ID": f"<urn:uuid:00000000-0000-4000-8000-00002{MARK.decode()}>"},
    )  # fmt: skip
    return written(info), written(request) + b"\0" + written(response)


def member(data: bytes) -> bytes:
    packer = zlib.compressobj(1, zlib.DEFLATED, 31)
    return packer.compress(data) + packer.flush()


def lay(store: Path, documents: int) -> list[tuple[Any, ...]]:
    """The job's WARC files in the store; their warc_files rows."""
    info, exchange = template()
    request, response = exchange.split(b"\0", 1)
    folder = store / "warc" / JOB
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    info_member = member(info)
    for first in range(1, documents + 1, PER_FILE):
        numbers = range(first, min(first + PER_FILE, documents + 1))
        parts = [info_member]
        for n in numbers:
            mark = f"{n:07d}".encode()
            parts += [member(request.replace(MARK, mark)), member(response.replace(MARK, mark))]
        data = b"".join(parts)
        key = f"warc/{JOB}/{(first - 1) // PER_FILE:08d}-1-1.warc.gz"
        (store / key).write_bytes(data)
        ids = [f"{n:07d}" for n in numbers]
        rows.append((key, f"file://{store}/{key}", hashlib.sha256(data).hexdigest(), len(data),
                     1 + 2 * len(ids), ids, JOB))  # fmt: skip
    return rows


async def fill(dsn: str, documents: int, rows: list[tuple[Any, ...]]) -> None:
    conn = await connect(dsn)
    try:
        first, second = FILL.split(";\n", 1)
        await conn.execute(first)
        await conn.execute(second, documents, timeout=3600)
        await conn.executemany(RECORD_WARC, [(*r[:6], uuid.UUID(r[6])) for r in rows])
        await conn.execute("VACUUM ANALYZE documents", timeout=3600)
    finally:
        await conn.close()


def pack(dsn: str, store: Path, work: Path) -> dict[str, float]:
    out, usage = work / "job.wacz", work / "pack.time"
    env = os.environ | {"DATABASE_URL": dsn, "STORAGE_URL": str(store), "LOG_LEVEL": "WARNING"}
    argv = [sys.executable, "-m", "docgate.cli", "warc", "pack", JOB, "--output", str(out)]
    done = subprocess.run(
        [TIME, "-f", "%e %U %S %M", "-o", str(usage), *argv], env=env, capture_output=True, text=True
    )
    if done.returncode != 0:
        raise AssertionError(f"docgate warc pack failed: {done.stderr[-2000:]}")
    wall, user, system, rss_kb = usage.read_text().split()[-4:]
    said = done.stderr.strip().splitlines()[-1]  # "job …: N WARC files, R records indexed, P pages, in …"
    records = int(said.split(" records indexed")[0].rsplit(" ", 1)[1])
    pages = int(said.split(" pages")[0].rsplit(" ", 1)[1])
    size = out.stat().st_size
    out.unlink()
    return {"seconds": float(wall), "cpu": float(user) + float(system), "rss_mb": int(rss_kb) / 1024,
            "records": records, "pages": pages, "wacz_mb": size / 1e6}  # fmt: skip


def scenario(
    pg: Postgres, procs: Processes, work: Path, *, quick: bool, repeat: int, state: dict[str, Any]
) -> None:
    sizes = [10_000, 100_000] if quick else [10_000, 100_000, 1_000_000]
    results: dict[int, dict[str, float]] = {}
    for n in sizes:
        dsn = pg.fresh(f"bench_wacz_{n}")
        subprocess.run(
            [sys.executable, "-m", "docgate.cli", "db", "migrate"],
            env=os.environ | {"DATABASE_URL": dsn}, check=True, capture_output=True,
        )  # fmt: skip
        store = work / f"wacz-store-{n}"
        rows = lay(store, n)
        asyncio.run(fill(dsn, n, rows))
        r = pack(dsn, store, work)
        r["warc_mb"] = sum(row[3] for row in rows) / 1e6
        r["files"] = len(rows)
        if r["pages"] != n:
            raise AssertionError(f"the WACZ of {n:,} documents lists {r['pages']:,} pages")
        results[n] = r
        print(f"  {n:>10,} documents: {r['seconds']:.1f} s, peak RSS {r['rss_mb']:.0f} MB", flush=True)
        subprocess.run(["rm", "-rf", str(store)], check=True)
        pg.drop(f"bench_wacz_{n}")
    small = sizes[0]
    table = Table(["documents", "WARC files", "records indexed", "seconds", "records/s", "WARC MB",
                   "WACZ MB", "CPU s", "peak RSS MB", "RSS / at 10 k"])  # fmt: skip
    for n, r in results.items():
        grown = f"{r['rss_mb'] / results[small]['rss_mb']:.2f}×"
        table.add(n, r["files"], r["records"], r["seconds"], r["records"] / r["seconds"], r["warc_mb"],
                  r["wacz_mb"], r["cpu"], r["rss_mb"], grown)  # fmt: skip
    write_results(
        "wacz",
        "Packing a job's WARC files as one WACZ",
        {"results": {str(n): r for n, r in results.items()}},
        {"docgate warc pack JOB, local store, to a file (one run each)": table},
        None,
        notes=[
            f"{PER_FILE} documents per WARC file, as clients write them; each document a request and "
            f"a response record of a {len(PAYLOAD)}-byte body.",
            "The records are made from one warcio-written exchange, its number substituted (see the "
            "scenario's description); the pack checks each file against its recorded sha256.",
        ],
    )
