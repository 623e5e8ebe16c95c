"""What every WARC the gate has recorded must be: whole, valid by warcio's own checker, and
holding exactly the documents it names, with their digests."""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import sys
from typing import Any

from cluster import Cluster


def warcio(*args: str) -> subprocess.CompletedProcess[str]:
    """warcio's own command line (the Webrecorder library's checker and indexer)."""
    return subprocess.run(
        [sys.executable, "-m", "warcio.cli", *args], capture_output=True, text=True, timeout=120
    )


def check_warcs(cluster: Cluster) -> dict[str, dict[str, Any]]:
    """Every recorded WARC is whole in the store with its recorded sha256, passes `warcio check`
    and `warcio index`, and holds a request and a response for each document it names, whose
    payload sha256 is the document's recorded sha256 (its transfer_sha256 when it came
    content-encoded). Returns the response records by doc_id."""
    from warcio.archiveiterator import ArchiveIterator

    # WARCs first: a report the gate was still taking when its client died may commit between
    # the two reads, and a WARC is recorded in the same write as its documents.
    warcs = cluster.sql("SELECT * FROM warc_files ORDER BY storage_key")
    documents = {r["doc_id"]: r for r in cluster.sql("SELECT * FROM documents")}
    responses: dict[str, dict[str, Any]] = {}
    paths = [str(cluster.store / w["storage_key"]) for w in warcs]
    if paths:  # warcio's checker and indexer, once over every file
        checked = warcio("check", "-v", *paths)
        assert checked.returncode == 0, checked.stdout + checked.stderr
        assert "digest fail" not in checked.stdout
        # Each record's digests pass; warcio checks no revisit record's (it has no payload).
        unchecked = checked.stdout.count("digest present but not checked (revisit)")
        assert checked.stdout.count("digest pass") + unchecked == sum(w["records"] for w in warcs)
        index = [
            json.loads(line)
            for line in warcio("index", "-f", "warc-type,filename", *paths).stdout.splitlines()
        ]
    # Every capture a WARC may hold: each document's current version, and the ones revisits replaced.
    captures = {(r["doc_id"], r["warc_key"]): r for r in cluster.sql("SELECT * FROM document_versions")}
    captures |= {(d, r["warc_key"]): r for d, r in documents.items()}
    for warc in warcs:
        path = cluster.store / warc["storage_key"]
        data = path.read_bytes()
        assert hashlib.sha256(data).hexdigest() == warc["sha256"] and len(data) == warc["size"]
        mine = [i["warc-type"] for i in index if i["filename"] == path.name]
        # A warcinfo, then per document a request and a response (or a revisit), after the same
        # for each redirect followed to it.
        hops = {d: json.loads(documents[d]["redirects"] or "[]") for d in warc["doc_ids"]}
        assert mine[0] == "warcinfo" and len(mine) >= 1 + 2 * len(warc["doc_ids"]), mine
        assert mine[1::2] == ["request"] * ((len(mine) - 1) // 2) and len(mine) % 2 == 1, mine
        assert set(mine[2::2]) <= {"response", "revisit"}, mine
        assert warc["records"] == len(mine)
        with path.open("rb") as f:
            records = list(ArchiveIterator(f))
            info = records[0]
        revisits: dict[str, Any] = {}
        followed: set[str] = set()
        answered: set[str] = set()  # the documents whose response this WARC holds
        for record in records[1:]:
            if record.rec_type not in ("response", "revisit"):
                continue
            uri = record.rec_headers.get_header("WARC-Target-URI")
            status = record.http_headers.get_statuscode()
            redirected = [
                d for d, rs in hops.items() if any(r["url"] == uri and str(r["status"]) == status for r in rs)
            ]
            if redirected:  # a redirect followed to a document, as it was answered
                assert record.http_headers.get_header("Location"), uri
                followed.update(redirected)
                continue
            doc_id = next((d for d in warc["doc_ids"] if documents[d]["final_url"] == uri), None)
            assert doc_id is not None, (uri, warc["doc_ids"])
            if record.rec_type == "revisit":  # a revisit found it as recorded: no payload
                revisits[doc_id] = record.rec_headers.get_header("WARC-Refers-To-Target-URI")
                continue
            answered.add(doc_id)
            responses[doc_id] = {
                "ip": record.rec_headers.get_header("WARC-IP-Address"),
                "payload_digest": record.rec_headers.get_header("WARC-Payload-Digest"),
                "status": record.http_headers.get_statuscode(),
                "etag": record.http_headers.get_header("etag"),
            }
        # Every document that came through redirects has them recorded in this, its WARC.
        assert {d for d in answered if hops.get(d)} <= followed
        for doc_id in warc["doc_ids"]:
            if doc_id in revisits:
                assert revisits[doc_id] == documents[doc_id]["url"]
                continue
            capture = captures[(doc_id, warc["storage_key"])]  # the version this WARC captured
            # The payload is the body as transferred: the document's bytes unless it came encoded.
            payload = capture["transfer_sha256"] or capture["sha256"]
            digest = base64.b32encode(bytes.fromhex(payload)).decode()
            assert responses[doc_id]["payload_digest"] == f"sha256:{digest}"
        assert info.rec_type == "warcinfo"
    return responses
