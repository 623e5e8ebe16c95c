"""Workers checked against each other (server/db/verify.py), with a liar among honest clients.

The liar holds a real key and a real lease and speaks the protocol, and lies three ways, a third
of its documents each: it stores other bytes and reports their sha256 (a report that looks
right), it reports documents it never stored, and it stores the document cut short and reports
the origin's sha256. Two honest clients (`docgate client`) do the rest of the job and, with
`verify_sample` 1.0, check each other's documents and the liar's. The liar must lose its
disputes, be quarantined, and have every document it recorded stored anew by the others; the
honest clients' checks of each other are the control: they agree, and no honest client loses.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from cluster import Cluster, Origin
from storage.keys import document_key

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
COUNT = 30


def lie(cluster: Cluster, key: str, origin: Origin) -> dict[str, Any]:
    """Lease one task and complete it with lies; what was claimed, by doc_id."""
    headers = {"X-API-Key": key, "X-Session-Id": "liar-1"}
    leased = httpx.post(f"{cluster.url}/api/v1/tasks/request", headers=headers, json={}, timeout=30)
    assert leased.status_code == 200, leased.text
    task = leased.json()
    ids = [str(task["params"]["start_id"] + i) for i in range(task["params"]["count"])]
    documents, claims = [], {}
    for n, doc_id in enumerate(ids):
        url = f"{origin.url}/doc/{doc_id}.bin"
        truth = httpx.get(url, timeout=30).content
        storage_key = document_key(doc_id, ".bin")
        path = cluster.store / storage_key
        path.parent.mkdir(parents=True, exist_ok=True)
        kind = ("other bytes", "never stored", "cut short")[n % 3]
        if kind == "other bytes":
            data = b"planted " + truth[8:]
            path.write_bytes(data)
            sha, size = hashlib.sha256(data).hexdigest(), len(data)
        elif kind == "never stored":
            sha, size = hashlib.sha256(b"nothing " + doc_id.encode()).hexdigest(), len(truth)
        else:
            path.write_bytes(truth[: len(truth) // 2])
            sha, size = hashlib.sha256(truth).hexdigest(), len(truth)
        claims[doc_id] = kind
        documents.append(
            {"doc_id": doc_id, "storage_key": storage_key, "sha256": sha, "size": size, "url": url}
        )
    done = httpx.post(f"{cluster.url}/api/v1/tasks/complete", headers=headers, timeout=30, json={
        "task_id": task["task_id"], "lease_token": task["lease_token"], "documents": documents,
        "documents_downloaded": len(documents)})  # fmt: skip
    assert done.status_code == 200, done.text  # the gate cannot tell, yet
    return claims


def test_a_liar_among_honest_clients_is_caught_quarantined_and_its_documents_stored_anew(
    tmp_path: Path, db_dsn: str
) -> None:
    origin = Origin(tmp_path, "--size", "3000")
    cluster = Cluster(tmp_path, db_dsn)
    try:
        job = cluster.post("/api/v1/jobs", {
            "source": "id_range", "chunk_size": 10, "verify_sample": 1.0,
            "params": {"url_template": f"{origin.url}/doc/{{id}}.bin", "start_id": 1, "count": COUNT,
                       "ext": ".bin"},
        })["job_id"]  # fmt: skip
        liar_key = cluster.register("liar")
        claims = lie(cluster, liar_key, origin)
        for name in ("honest-a", "honest-b"):
            cluster.client(name, "--concurrency", "4")
        deadline = time.monotonic() + 240
        while True:
            liar = next(c for c in cluster.get("/api/v1/clients")["clients"] if c["client_name"] == "liar")
            docs = cluster.sql(
                "SELECT doc_id, sha256, storage_key, client_id FROM documents WHERE job_id = $1",
                uuid.UUID(job),
            )
            open_checks = cluster.sql(
                "SELECT count(*) FROM verifications WHERE state IN ('pending', 'queued')"
            )
            settled = liar["quarantined_at"] and len(docs) == COUNT and open_checks[0][0] == 0
            if settled and all(r["client_id"] != uuid.UUID(liar["client_id"]) for r in docs):
                break
            assert time.monotonic() < deadline, (liar, len(docs), open_checks)
            time.sleep(0.5)
        clients = {c["client_name"]: c for c in cluster.get("/api/v1/clients")["clients"]}
        states = dict(cluster.sql("SELECT state, count(*) FROM verifications GROUP BY state"))
        while True:  # its key suspended on every gate within the key cache's bound
            refused = httpx.post(
                f"{cluster.url}/api/v1/tasks/request", headers={"X-API-Key": liar_key}, timeout=30
            )
            if refused.status_code == 401 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        with httpx.Client(base_url=cluster.url, timeout=30) as browser:  # the dashboard, logged in
            assert browser.post("/ui/login", data={"api_key": cluster.admin["X-API-Key"]}).status_code == 303
            page = browser.get("/ui/live")
        truths = {
            r["doc_id"]: httpx.get(f"{origin.url}/doc/{r['doc_id']}.bin", timeout=30).content for r in docs
        }
    finally:
        cluster.stop()
        origin.stop()

    assert len(claims) == 10
    liar = clients["liar"]
    assert liar["status"] == "quarantined" and liar["checks_failed"] >= 3
    assert refused.status_code == 401  # its key suspended
    assert states.get("lied", 0) >= 3 and states.get("mistaken", 0) == 0
    for name in ("honest-a", "honest-b"):  # the control: honest clients agree with each other
        assert clients[name]["checks_failed"] == 0 and clients[name]["quarantined_at"] is None
    # Each of the 20 documents they recorded first was checked by the other, and agreed.
    assert sum(clients[n]["checks_passed"] for n in ("honest-a", "honest-b")) >= COUNT - 10
    assert states.get("agreed", 0) >= COUNT - 10
    # No wrong document stays recorded as good: each one's record is the origin's bytes, whole at
    # its key, stored by an honest client.
    for row in docs:
        truth = hashlib.sha256(truths[row["doc_id"]]).hexdigest()
        stored = (cluster.store / row["storage_key"]).read_bytes()
        assert row["sha256"] == truth == hashlib.sha256(stored).hexdigest(), row["doc_id"]
    assert "quarantined" in page.text


def test_without_checks_the_liars_documents_stay_recorded(tmp_path: Path, db_dsn: str) -> None:
    """The control: the same liar in a job without verify_sample is never found out, and its
    documents stay recorded as good: the checks are what catches it."""
    origin = Origin(tmp_path, "--size", "3000")
    cluster = Cluster(tmp_path, db_dsn)
    try:
        job = cluster.post("/api/v1/jobs", {
            "source": "id_range", "chunk_size": 10,
            "params": {"url_template": f"{origin.url}/doc/{{id}}.bin", "start_id": 1, "count": COUNT,
                       "ext": ".bin"},
        })["job_id"]  # fmt: skip
        claims = lie(cluster, cluster.register("liar"), origin)
        cluster.client("honest-a", "--exit-when-idle")
        assert cluster.wait_clients() == [0]
        docs = cluster.sql("SELECT doc_id, sha256 FROM documents WHERE job_id = $1", uuid.UUID(job))
        truths = {
            r["doc_id"]: httpx.get(f"{origin.url}/doc/{r['doc_id']}.bin", timeout=30).content for r in docs
        }
        liar = next(c for c in cluster.get("/api/v1/clients")["clients"] if c["client_name"] == "liar")
        checks = cluster.sql("SELECT count(*) FROM verifications")[0][0]
    finally:
        cluster.stop()
        origin.stop()
    wrong = [r["doc_id"] for r in docs if r["sha256"] != hashlib.sha256(truths[r["doc_id"]]).hexdigest()]
    assert checks == 0 and liar["quarantined_at"] is None
    assert len(wrong) == sum(1 for kind in claims.values() if kind != "cut short") > 0
