"""Scenario 9 — exporting a job's documents: `docgate export JOB` of 1 M documents in bounded memory.

A job's documents with full capture records (URL, final URL, redirect, status, headers,
ETag, Last-Modified, server address, client version) are inserted in bulk: 10,000 and
1,000,000 of them (--quick: 10,000 and 100,000). `docgate export JOB --format jsonl` and
`--format csv` then run to completion under GNU time, writing to a file: wall time, lines
per second and the process's peak RSS. The export reads keyset pages of 2,000 documents
(the (job_id, doc_id) index), so its memory must not grow with the job.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from benchmarks.lib import Postgres, Processes, Table, connect, write_results

TIME = "/usr/bin/time"
JOB = "00000000-0000-0000-0000-0000000000e1"

FILL = f"""
INSERT INTO jobs (job_id, source, params, chunk_size, priority, tasks_total)
VALUES ('{JOB}', 'id_range', '{{"url_template": "https://registry.example/doc/{{id}}.pdf", "start_id": 1,
        "count": 1}}', 100, 0, 0);
INSERT INTO documents (doc_id, source, storage_key, storage_url, sha256, size, content_type, job_id,
                       url, final_url, redirects, http_status, response_headers, etag, last_modified,
                       http_date, content_length, fetched_at, server_ip, server_port, client_version,
                       attempt)
SELECT g::text, 'id_range', (g / 50000) || '/' || g || '.pdf',
       'file:///srv/raw/' || (g / 50000) || '/' || g || '.pdf',
       encode(sha256(g::text::bytea), 'hex'), 10240 + g % 1000, 'application/pdf', '{JOB}',
       'https://registry.example/doc/' || g || '.pdf', 'https://files.registry.example/' || g || '.pdf',
       jsonb_build_array(
           jsonb_build_object('url', 'https://registry.example/doc/' || g || '.pdf', 'status', 301)),
       200, jsonb_build_object('content-type', 'application/pdf', 'etag', '"' || g || '-2800"',
                               'last-modified', 'Tue, 14 Nov 2023 22:13:20 GMT', 'server', 'nginx'),
       '"' || g || '-2800"', 'Tue, 14 Nov 2023 22:13:20 GMT', 'Wed, 02 Dec 2026 06:00:00 GMT', '10240',
       now(), '192.0.2.10', 443, '0.1.0', 1
FROM generate_series(1, $1::int) AS g
"""


async def fill(dsn: str, documents: int) -> None:
    conn = await connect(dsn)
    try:
        first, second = FILL.split(";\n", 1)
        await conn.execute(first)
        await conn.execute(second, documents, timeout=3600)
        await conn.execute("VACUUM ANALYZE documents", timeout=3600)
    finally:
        await conn.close()


def export(dsn: str, work: Path, fmt: str) -> dict[str, float]:
    out, usage = work / f"export.{fmt}", work / "export.time"
    env = os.environ | {"DATABASE_URL": dsn, "LOG_LEVEL": "WARNING"}
    argv = [sys.executable, "-m", "docgate.cli", "export", JOB, "--format", fmt, "--output", str(out)]
    subprocess.run(
        [TIME, "-f", "%e %U %S %M", "-o", str(usage), *argv], env=env, check=True, capture_output=True
    )
    wall, user, system, rss_kb = usage.read_text().split()[-4:]
    lines = sum(1 for _ in out.open("rb")) - (1 if fmt == "csv" else 0)
    size = out.stat().st_size
    out.unlink()
    return {"seconds": float(wall), "cpu": float(user) + float(system), "rss_mb": int(rss_kb) / 1024,
            "lines": lines, "mb": size / 1e6}  # fmt: skip


def scenario(
    pg: Postgres, procs: Processes, work: Path, *, quick: bool, repeat: int, state: dict[str, Any]
) -> None:
    sizes = [10_000, 100_000] if quick else [10_000, 1_000_000]
    results: dict[int, dict[str, dict[str, float]]] = {}
    for n in sizes:
        dsn = pg.fresh(f"bench_export_{n}")
        subprocess.run(
            [sys.executable, "-m", "docgate.cli", "db", "migrate"],
            env=os.environ | {"DATABASE_URL": dsn}, check=True, capture_output=True,
        )  # fmt: skip
        asyncio.run(fill(dsn, n))
        results[n] = {fmt: export(dsn, work, fmt) for fmt in ("jsonl", "csv")}
        for fmt, r in results[n].items():
            if r["lines"] != n:
                raise AssertionError(f"{fmt} export of {n:,} documents wrote {r['lines']:,} lines")
            print(
                f"  {n:>10,} documents, {fmt}: {r['seconds']:.1f} s, peak RSS {r['rss_mb']:.0f} MB",
                flush=True,
            )
        pg.drop(f"bench_export_{n}")
    small = sizes[0]
    table = Table(
        ["documents", "format", "seconds", "lines/s", "MB written", "CPU s", "peak RSS MB", "RSS / at 10 k"]
    )
    for n, by_format in results.items():
        for fmt, r in by_format.items():
            table.add(n, fmt, r["seconds"], r["lines"] / r["seconds"], r["mb"], r["cpu"], r["rss_mb"],
                      f"{r['rss_mb'] / results[small][fmt]['rss_mb']:.2f}×")  # fmt: skip
    write_results(
        "export",
        "Exporting a job's documents with their capture records",
        {"results": {str(n): r for n, r in results.items()}},
        {"docgate export JOB, to a file (one run each)": table},
        None,
        notes=[
            "Documents inserted in bulk with full capture records; the export reads keyset pages of 2,000."
        ],
    )
