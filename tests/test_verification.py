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
import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from cluster import Cluster, Origin
from processes import nginx_serving
from server.db import verify
from storage.keys import document_key

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
COUNT = 30


KINDS = ("other bytes", "never stored", "cut short")


def lie(cluster: Cluster, key: str, kinds: tuple[str, ...] = KINDS) -> dict[str, Any]:
    """Lease one task (an id_range's) and complete it with lies, each document one of `kinds` in
    turn; what was claimed, by doc_id."""
    headers = {"X-API-Key": key, "X-Session-Id": "liar-1"}
    leased = httpx.post(f"{cluster.url}/api/v1/tasks/request", headers=headers, json={}, timeout=30)
    assert leased.status_code == 200, leased.text
    task = leased.json()
    ids = [str(task["params"]["start_id"] + i) for i in range(task["params"]["count"])]
    template, ext = task["params"]["url_template"], task["params"]["ext"]
    documents, claims = [], {}
    for n, doc_id in enumerate(ids):
        url = template.replace("{id}", doc_id)
        truth = httpx.get(url, timeout=30).content
        storage_key = document_key(doc_id, ext)
        path = cluster.store / storage_key
        path.parent.mkdir(parents=True, exist_ok=True)
        kind = kinds[n % len(kinds)]
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
        claims = lie(cluster, liar_key)
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
        one = cluster.get(f"/api/v1/clients/{liar['client_id']}")
        unknown = httpx.get(f"{cluster.url}/api/v1/clients/{uuid.uuid4()}", headers=cluster.admin, timeout=30)
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
    # The one client's view: what the checks made of its documents, none of which it still holds.
    assert one["status"] == "quarantined" and one["checks"].get("lied", 0) >= 3, one
    assert one["documents_recorded"] == 0 and one["documents_being_restored"] == 0, one
    assert (unknown.status_code, unknown.json()["code"]) == (404, "client_not_found")
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
        claims = lie(cluster, cluster.register("liar"))
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


def settled(cluster: Cluster, job: str, count: int, deadline: float = 240) -> None:
    """Wait until the job's `count` documents are recorded and no check or task of it is open."""
    stop = time.monotonic() + deadline
    while True:
        docs = cluster.sql("SELECT count(*) FROM documents WHERE job_id = $1", uuid.UUID(job))[0][0]
        open_checks = cluster.sql(
            "SELECT count(*) FROM verifications WHERE job_id = $1 AND state IN ('pending', 'queued')",
            uuid.UUID(job),
        )[0][0]
        open_tasks = cluster.sql(
            "SELECT count(*) FROM tasks WHERE job_id = $1 AND status IN ('pending', 'assigned')",
            uuid.UUID(job),
        )[0][0]
        if docs == count and open_checks == 0 and open_tasks == 0:
            return
        assert time.monotonic() < stop, (docs, open_checks, open_tasks)
        time.sleep(0.5)


def test_checks_are_kept_from_the_recorders_host_and_carry_the_jobs_rules(
    tmp_path: Path, db_dsn: str
) -> None:
    """A liar and an honest client on one host (`client_host` rack-1), two honest clients on
    others: no check of the liar's documents goes to its host mate, and (verify_disputes 1) it
    is quarantined at its first lost dispute. The mate registers after the liar's checks may
    have been queued: a host is kept out at lease time, whoever registers on it later."""
    origin = Origin(tmp_path, "--size", "2000")
    cluster = Cluster(tmp_path, db_dsn)
    try:
        job = cluster.post("/api/v1/jobs", {
            "source": "id_range", "chunk_size": 10, "verify_sample": 1.0, "verify_disputes": 1,
            "params": {"url_template": f"{origin.url}/doc/{{id}}.bin", "start_id": 1, "count": COUNT,
                       "ext": ".bin", "min_size": 100},
        })["job_id"]  # fmt: skip
        liar_key = cluster.register("liar", host="rack-1")
        claims = lie(cluster, liar_key, kinds=("other bytes",))
        for name, host in (("mate", "rack-1"), ("far-a", "rack-2"), ("far-b", "rack-3")):
            cluster.client(name, "--concurrency", "4", key=cluster.register(name, host=host))
        settled(cluster, job, COUNT)
        ids = {r["client_name"]: str(r["client_id"]) for r in cluster.sql("SELECT * FROM clients")}
        checks = cluster.sql(
            "SELECT doc_id, opinions FROM verifications WHERE recorded_by = $1", uuid.UUID(ids["liar"])
        )
        tasks = cluster.sql(
            "SELECT exclude_clients, exclude_hosts, params FROM tasks WHERE (params->>'verify')::boolean"
        )
        liar = next(c for c in cluster.get("/api/v1/clients")["clients"] if c["client_name"] == "liar")
        lost = cluster.sql(
            "SELECT count(*), min(settled_at) FROM verifications WHERE state = 'lied' AND recorded_by = $1",
            uuid.UUID(ids["liar"]),
        )[0]
    finally:
        cluster.stop()
        origin.stop()
    assert len(claims) == 10 and len(checks) == 10
    liars = {r["doc_id"] for r in checks}
    for check in checks:
        opinions = json.loads(check["opinions"])
        assert opinions and not {o["client_id"] for o in opinions} & {ids["liar"], ids["mate"]}, opinions

    def theirs(task: Any) -> set[str]:  # (a restored document is version 2, another's)
        return {u["doc_id"] for u in json.loads(task["params"])["urls"] if u["seen"]["version"] == 1}

    checking = [t for t in tasks if theirs(t) & liars]
    assert checking
    for task in checking:
        params = json.loads(task["params"])
        assert ids["liar"] in {str(c) for c in task["exclude_clients"]} and "rack-1" in task["exclude_hosts"]
        assert params["verify_disputes"] == 1 and params["min_size"] == 100  # the job's rules
    assert liar["status"] == "quarantined" and lost[0] >= 1
    # verify_disputes 1: quarantined in the very transaction that settled its first lost dispute.
    assert liar["quarantined_at"] == lost[1].isoformat().replace("+00:00", "Z")


def ssi_pages(tmp_path: Path, count: int, first: int) -> Path:
    """HTML pages whose every answer differs: nginx's SSI writes the request's id and time in them
    (`<!--# echo var="request_id" -->`, https://nginx.org/en/docs/http/ngx_http_ssi_module.html)."""
    root = tmp_path / "www"
    (root / "pages").mkdir(parents=True, exist_ok=True)
    for i in range(first, first + count):
        (root / "pages" / f"{i}.html").write_text(
            f"<html><body><h1>Decision {i}</h1><p>{'The court rules. ' * 40}</p>"
            '<footer>Served <!--# echo var="request_id" --> at <!--# echo var="msec" --></footer>'
            "</body></html>\n"
        )
    for path in (tmp_path, root, root / "pages", *root.glob("pages/*")):
        path.chmod(0o755 if path.is_dir() else 0o644)
    return root


def test_documents_that_vary_per_fetch_are_compared_by_the_jobs_rule(tmp_path: Path, db_dsn: str) -> None:
    """Pages that differ on every fetch (a request id and a time in their footer). With `varies`
    naming that part, honest clients' checks agree and a liar's other bytes are still caught;
    the control: the same pages without `varies` are all `unsettled` (never agreed, and nobody
    blamed)."""
    root = ssi_pages(tmp_path, 20, 1)
    ssi_pages(tmp_path, 10, 101)
    http = f"""
    access_log off;
    server {{ listen {{listen}}; root {root}; location /pages/ {{ ssi on; }} }}
"""
    with nginx_serving(tmp_path, http, "/pages/1.html") as base:
        two = [httpx.get(f"{base}/pages/1.html", timeout=10).content for _ in range(2)]
        assert two[0] != two[1] and b"<!--#" not in two[0]  # the peer: every answer its own
        cluster = Cluster(tmp_path, db_dsn)
        try:

            def job(start: int, count: int, **rules: Any) -> str:
                return str(cluster.post("/api/v1/jobs", {
                    "source": "id_range", "chunk_size": 10, "verify_sample": 1.0,
                    "params": {"url_template": f"{base}/pages/{{id}}.html", "start_id": start,
                               "count": count, "ext": ".html", **rules},
                })["job_id"])  # fmt: skip

            varying = job(1, 20, varies=["Served [0-9a-f]{32} at [0-9.]+"])
            claims = lie(cluster, cluster.register("liar"), kinds=("other bytes",))
            for name in ("honest-a", "honest-b", "honest-c"):
                cluster.client(name, "--concurrency", "4")
            settled(cluster, varying, 20)
            plain = job(101, 10)
            settled(cluster, plain, 10)

            def states(job_id: str) -> dict[str, int]:
                rows = cluster.sql(
                    "SELECT state, count(*) FROM verifications WHERE job_id = $1 GROUP BY state",
                    uuid.UUID(job_id),
                )
                return dict(rows)  # type: ignore[arg-type]

            by_rule, byte_for_byte = states(varying), states(plain)
            normalized = cluster.sql(
                "SELECT opinions FROM verifications WHERE job_id = $1 AND state = 'lied'", uuid.UUID(varying)
            )
            clients = {c["client_name"]: c for c in cluster.get("/api/v1/clients")["clients"]}
        finally:
            cluster.stop()
    assert len(claims) == 10
    # The honest clients' 10 documents (and the 10 restored) agree by the rule; the liar's 10
    # lost, or (after the third, its quarantine) were superseded by their restores.
    assert by_rule.get("lied", 0) >= 3 and by_rule.get("agreed", 0) >= 20, by_rule
    assert by_rule.get("lied", 0) + by_rule.get("superseded", 0) == 10, by_rule
    assert set(by_rule) <= {"lied", "agreed", "superseded"}, by_rule
    assert all(o["normalized_sha256"] for row in normalized for o in json.loads(row["opinions"]))
    assert clients["liar"]["status"] == "quarantined"
    assert byte_for_byte == {"unsettled": 10}, byte_for_byte  # the control
    assert all(clients[n]["checks_failed"] == 0 for n in ("honest-a", "honest-b", "honest-c"))


@pytest.mark.parametrize("disputes", [1, 2, 5])
async def test_verify_disputes_is_how_many_lost_disputes_quarantine(db_dsn: str, disputes: int) -> None:
    """A client is quarantined at its `verify_disputes`-th lost dispute, not one sooner."""
    conn = await asyncpg.connect(db_dsn)
    try:
        client = await conn.fetchval(
            "INSERT INTO clients (client_name, api_key_hash) VALUES ('c', $1) RETURNING client_id",
            os.urandom(32),
        )
        rule = verify.Rule(varies=None, disputes=disputes, max_attempts=5)
        quarantined_after = []
        for lost in range(1, 7):
            async with conn.transaction():
                await verify._lost(conn, client, rule)
            if await conn.fetchval(
                "SELECT quarantined_at IS NOT NULL FROM clients WHERE client_id = $1", client
            ):
                quarantined_after.append(lost)
        revoked = await conn.fetchval(
            "SELECT revoked_at IS NOT NULL FROM clients WHERE client_id = $1", client
        )
    finally:
        await conn.close()
    assert quarantined_after[0] == disputes and revoked


@pytest.mark.parametrize("untrusted", [True, False])
def test_bytes_no_record_vouches_for_are_never_recorded_as_the_document(
    tmp_path: Path, db_dsn: str, untrusted: bool
) -> None:
    """A key holding bytes that are not the origin's and that no record vouches for (a liar's
    write that never got recorded): in a job with verify_sample the client compares them with
    the origin and stores the document beside them, leaving them be: as version 2, or, that key
    holding such bytes too, version 3. The control:
    in a job without checks (and the default --verify-existing hash), they are recorded as found."""
    origin = Origin(tmp_path, "--size", "2000")
    cluster = Cluster(tmp_path, db_dsn)
    planted = cluster.store / document_key("5", ".bin")
    planted.parent.mkdir(parents=True, exist_ok=True)
    planted.write_bytes(b"planted by a liar that never reported it")
    # and its version 2 too (a liar that lost its lease on a restore before reporting it)
    (cluster.store / "0" / "5.bin.v2").mkdir()
    (cluster.store / "0" / "5.bin.v2" / "5.bin").write_bytes(b"planted again")
    try:

        def params(start: int, count: int) -> dict[str, Any]:
            return {
                "url_template": f"{origin.url}/doc/{{id}}.bin",
                "start_id": start,
                "count": count,
                "ext": ".bin",
            }

        body: dict[str, Any] = {"source": "id_range", "chunk_size": 10, "params": params(1, 10)}
        if untrusted:
            body["verify_sample"] = 0.01
        job = cluster.post("/api/v1/jobs", body)["job_id"]
        cluster.client("honest-a", "--exit-when-idle")
        assert cluster.wait_clients() == [0]
        doc = cluster.sql("SELECT * FROM documents WHERE job_id = $1 AND doc_id = '5'", uuid.UUID(job))[0]
        truth = httpx.get(f"{origin.url}/doc/5.bin", timeout=30).content
        cluster.post("/api/v1/jobs", {"source": "id_range", "params": params(50, 1)})
        headers = {"X-API-Key": cluster.register("liar")}
        leased = httpx.post(
            f"{cluster.url}/api/v1/tasks/request", headers=headers, json={}, timeout=30
        ).json()
        wrong = httpx.post(f"{cluster.url}/api/v1/tasks/complete", headers=headers, timeout=30, json={
            "task_id": leased["task_id"], "lease_token": leased["lease_token"], "documents": [{
                "doc_id": "50", "storage_key": "0/50.bin.v2/50.bin", "sha256": "0" * 64, "size": 1,
                "version": 3}]})  # fmt: skip
        fifty = cluster.sql("SELECT * FROM documents WHERE doc_id = '50'")
    finally:
        cluster.stop()
        origin.stop()
    assert planted.read_bytes() == b"planted by a liar that never reported it"  # left be
    if untrusted:
        assert doc["version"] == 3 and doc["storage_key"] == "0/5.bin.v3/5.bin"  # (2 passed over)
        assert (cluster.store / doc["storage_key"]).read_bytes() == truth
        assert doc["sha256"] == hashlib.sha256(truth).hexdigest()
    else:  # the control: what the default trusts
        assert doc["version"] == 1 and doc["sha256"] == hashlib.sha256(planted.read_bytes()).hexdigest()
    # A version that is not its key's: refused, with its code, and nothing recorded.
    assert wrong.status_code == 422 and wrong.json()["code"], wrong.text
    assert "is not the key of version 3" in wrong.json()["detail"] and not fifty


@pytest.mark.parametrize("modified", ["after the record", "before the record"])
def test_a_document_the_origin_changed_after_its_record_is_no_ones_fault(
    tmp_path: Path, db_dsn: str, modified: str
) -> None:
    """A registry corrects 3 of 10 documents after an honest client recorded them; two other
    clients check them and both see the new edition, which nginx says (Last-Modified) is newer
    than the record: `changed`, stored anew as version 2, and the recorder loses nothing. The
    control: the same new bytes under a Last-Modified older than the record are a lie."""
    root = tmp_path / "www"
    (root / "files").mkdir(parents=True)
    for i in range(1, 11):
        (root / "files" / f"{i}.pdf").write_bytes(f"%PDF-1.4 decision {i}, edition 1\n".encode() * 60)
    for path in (tmp_path, root, root / "files", *root.glob("files/*")):
        path.chmod(0o755 if path.is_dir() else 0o644)
    http = f"server {{ listen {{listen}}; root {root}; default_type application/pdf; access_log off; }}"
    with nginx_serving(tmp_path, http, "/files/1.pdf") as base:
        cluster = Cluster(tmp_path, db_dsn)
        try:
            job = cluster.post("/api/v1/jobs", {
                "source": "id_range", "chunk_size": 10, "verify_sample": 1.0,
                "params": {"url_template": f"{base}/files/{{id}}.pdf", "start_id": 1, "count": 10,
                           "ext": ".pdf"},
            })["job_id"]  # fmt: skip
            recorder = cluster.client("recorder", "--concurrency", "4")
            deadline = time.monotonic() + 120
            while cluster.sql("SELECT count(*) FROM documents")[0][0] < 10:
                assert time.monotonic() < deadline
                time.sleep(0.3)
            recorder.terminate()
            recorder.wait(30)
            time.sleep(1.1)  # Last-Modified counts whole seconds
            for i in (2, 5, 8):  # corrected at the registry
                path = root / "files" / f"{i}.pdf"
                path.write_bytes(f"%PDF-1.4 decision {i}, edition 2 (corrected)\n".encode() * 60)
                if modified == "before the record":
                    os.utime(path, (1_700_000_000, 1_700_000_000))
            for name in ("checker-a", "checker-b"):
                cluster.client(name, "--concurrency", "4")
            settled(cluster, job, 10)
            states = dict(cluster.sql("SELECT state, count(*) FROM verifications GROUP BY state"))
            docs = {r["doc_id"]: r for r in cluster.sql("SELECT * FROM documents")}
            first = next(
                c for c in cluster.get("/api/v1/clients")["clients"] if c["client_name"] == "recorder"
            )
        finally:
            cluster.stop()
    corrected = {d: (root / "files" / f"{d}.pdf").read_bytes() for d in ("2", "5", "8")}
    for doc_id, truth in corrected.items():  # every correction stored, as version 2, either way
        assert docs[doc_id]["version"] == 2 and docs[doc_id]["sha256"] == hashlib.sha256(truth).hexdigest()
    if modified == "after the record":
        assert states == {"agreed": 10, "changed": 3}, states  # (7, and the 3 stored anew)
        assert first["checks_failed"] == 0 and first["status"] != "quarantined"
    else:  # the control: nothing vouches for the new bytes being newer than the record
        assert states == {"agreed": 10, "lied": 3}, states
        assert first["checks_failed"] == 3 and first["status"] == "quarantined"
