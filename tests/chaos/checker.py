"""After a chaos run: what must always hold (SPEC §9), counted from the database, storage and logs.

Two independent witnesses are compared, as a Jepsen checker does: what the
gate recorded (tasks, task_events, documents) and what the clients were told
(each client logs every completion the gate acknowledged, with its lease
token). Storage is read back object by object and compared with the origin's
bytes.
"""

from __future__ import annotations

import hashlib
import re
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import asyncpg
from harness import BUCKET, HELD, Run
from variants import BYTE_LIARS

from conftest import run_aside
from docgate.origin import content_for, size_for
from storage.keys import document_key, unversioned
from storage.s3 import STAGING

ACK = re.compile(r"task ([0-9a-f-]{36}) completed \(lease ([0-9a-f-]{36})\)")
STALE_REFUSED = re.compile(r"POST /api/v1/tasks/\S+ 409 ")
LIE_REFUSED = re.compile(r"LIE refused")
LIE_ACCEPTED = re.compile(r"LIE ACCEPTED")
BYTE_LIE = re.compile(r"BYTE LIE (\S+) ")
# A task's kind: the job's own, a check of documents others recorded, or a restore of documents
# a check found wrong or a quarantined client recorded (server/db/verify.py).
KIND = """CASE WHEN (params->>'verify')::boolean THEN 'check'
                WHEN (params->>'restore')::boolean THEN 'restore' ELSE 'job' END"""
# Documents no task contains: what a lying client would have planted (chaos jobs are id ranges).
OUTSIDE_EVERY_TASK = """
SELECT count(*) FROM documents d WHERE NOT EXISTS (
    SELECT 1 FROM tasks t WHERE t.source = 'id_range' AND d.doc_id ~ '^[0-9]+$'
      AND d.doc_id::bigint >= (t.params->>'start_id')::bigint
      AND d.doc_id::bigint < (t.params->>'start_id')::bigint + (t.params->>'count')::bigint
)
"""
# Leases the reaper took back before they ran out: its event keeps when the lease ran out, and
# its `at` is the reaping transaction's now().
REAPED_EARLY = """
SELECT count(*) FROM task_events
WHERE event = 'expired' AND substring(detail from 'ran out ([^)]+)')::timestamptz > at
"""


@dataclass
class Figure:
    name: str
    value: float
    bound: str
    holds: bool


def _fetch(dsn: str) -> dict[str, list[asyncpg.Record]]:
    async def fetch() -> dict[str, list[asyncpg.Record]]:
        conn = await asyncpg.connect(dsn, timeout=30)
        try:
            return {
                "statuses": await conn.fetch(
                    f"SELECT status, count(*) FROM tasks WHERE {KIND} = 'job' GROUP BY status"
                ),
                "kinds": await conn.fetch(
                    f"SELECT {KIND} AS kind, status, count(*) FROM tasks GROUP BY 1, 2"
                ),
                "clients": await conn.fetch(
                    "SELECT client_name, quarantined_at, checks_passed, checks_failed FROM clients"
                ),
                "checks": await conn.fetch("SELECT state, count(*) FROM verifications GROUP BY state"),
                "completions": await conn.fetch(
                    "SELECT task_id::text, count(*) AS n, max(lease_token::text) AS token "
                    "FROM task_events WHERE event = 'completed' GROUP BY task_id"
                ),
                "completed": await conn.fetch(
                    "SELECT task_id::text, lease_token::text FROM tasks WHERE status = 'completed'"
                ),
                "leases": await conn.fetch("SELECT count(*) FROM task_events WHERE event = 'leased'"),
                "reaped_early": await conn.fetch(REAPED_EARLY),
                "documents": await conn.fetch(
                    "SELECT doc_id, storage_key, sha256, size, version_id FROM documents"
                ),
                "outside": await conn.fetch(OUTSIDE_EVERY_TASK),
                "beside": await conn.fetch(
                    "SELECT count(*) FROM documents d WHERE d.version > 1 AND NOT EXISTS (SELECT 1 FROM "
                    "document_versions v WHERE v.collection = d.collection AND v.doc_id = d.doc_id)"
                ),
                "unrecorded": await conn.fetch(
                    "SELECT f.code, count(DISTINCT f.doc_id) FROM document_failures f WHERE NOT EXISTS "
                    "(SELECT 1 FROM documents d WHERE d.doc_id = f.doc_id) GROUP BY f.code"
                ),
            }
        finally:
            await conn.close()

    return run_aside(fetch())  # type: ignore[no-any-return]


def check(run: Run, s3: Any) -> list[Figure]:
    db = _fetch(run.dsn)
    statuses = {r["status"]: r["count"] for r in db["statuses"]}
    total = sum(statuses.values())
    figures: list[Figure] = []

    def figure(name: str, value: float, bound: str, holds: bool) -> None:
        figures.append(Figure(name, value, bound, holds))

    figure("tasks", total, f"= {run.tasks_created}", total == run.tasks_created)
    unfinished = sum(r["count"] for r in db["kinds"] if r["status"] in ("pending", "assigned"))
    figure("tasks unfinished (pending/assigned; checks and restores too)", unfinished, "= 0", unfinished == 0)
    figure("tasks failed for good", statuses.get("failed", 0), "(reported)", True)

    events = {r["task_id"]: r for r in db["completions"]}
    completed = {r["task_id"]: r["lease_token"] for r in db["completed"]}
    more_than_once = sum(1 for r in db["completions"] if r["n"] > 1)
    without_event = sum(1 for t in completed if t not in events)
    figure("tasks completed more than once (event log)", more_than_once, "= 0", more_than_once == 0)
    figure("completed tasks without their completion event", without_event, "= 0", without_event == 0)

    acks: dict[str, set[str]] = defaultdict(set)
    for log in run.client_logs:
        for task_id, token in ACK.findall(log.read_text(errors="replace")):
            acks[task_id].add(token)
    double_acked = sum(1 for tokens in acks.values() if len(tokens) > 1)
    stale_accepted = sum(
        1 for task_id, tokens in acks.items() for token in tokens if completed.get(task_id) != token
    )
    figure("completions acknowledged to clients", sum(len(t) for t in acks.values()), "(reported)", True)
    figure("tasks acknowledged to two lease holders", double_acked, "= 0", double_acked == 0)
    figure("stale-token writes accepted", stale_accepted, "= 0", stale_accepted == 0)
    refused = sum(len(STALE_REFUSED.findall(log.read_text(errors="replace"))) for log in run.gate_logs)
    zombies = run.fired.get("zombie", 0)
    figure(
        "stale-token writes refused (409)",
        refused,
        "≥ 1" if zombies else "(no zombie)",
        refused >= 1 or not zombies,
    )

    logs = [log.read_text(errors="replace") for log in run.client_logs]
    told = sum(len(LIE_REFUSED.findall(t)) + len(LIE_ACCEPTED.findall(t)) for t in logs)
    accepted = sum(len(LIE_ACCEPTED.findall(t)) for t in logs)
    outside = db["outside"][0][0]
    if "liar" in run.plan.liars:
        figure("lies told by the liar clients", told, "≥ 1", told >= 1)
    figure("lies accepted", accepted, "= 0", accepted == 0)
    figure("recorded documents that no task contains", outside, "= 0", outside == 0)

    figures += _check_figures(run, db, logs)

    early = db["reaped_early"][0][0]
    figure("leases taken back before they ran out", early, "= 0", early == 0)
    # A fault can cost at most the leases a client holds (a crash of PostgreSQL or of a gate, each
    # client's): claims past one a task are bounded by the faults fired, not by the run's length,
    # which the machine's load sets (the faults fire every few seconds however long it takes).
    leases = db["leases"][0][0]
    tasks = sum(r["count"] for r in db["kinds"])  # checks and restores are leased too
    claims = leases / tasks if tasks else 0.0
    fired = sum(run.fired.values())
    spare = HELD * fired / tasks if tasks else 0.0
    figure(
        f"claims per task ({fired} faults, {HELD} leases a client)",
        round(claims, 3),
        f"≤ 1 + {round(spare, 2)}",
        claims <= 1 + spare,
    )

    docs = db["documents"]
    low, high = run.plan.size
    temp_keys = sum(1 for d in docs if STAGING in d["storage_key"] or "tmp" in d["storage_key"].lower())
    # A document stored anew is a version beside the first (storage.keys.version_key).
    wrong_keys = sum(1 for d in docs if unversioned(d["storage_key"])[0] != document_key(d["doc_id"], ".bin"))

    def verify(doc: asyncpg.Record) -> str:
        try:
            # The recorded version: on the b2 dialect a late writer may have added a newer one.
            version = {"VersionId": doc["version_id"]} if doc["version_id"] else {}
            body = s3.get_object(Bucket=BUCKET, Key=doc["storage_key"], **version)["Body"].read()
        except s3.exceptions.NoSuchKey:
            return "missing"
        if len(body) != doc["size"] or hashlib.sha256(body).hexdigest() != doc["sha256"]:
            return "not whole"
        if body != content_for(doc["doc_id"], size_for(doc["doc_id"], low, high)):
            return "not the origin's bytes"
        return "ok"

    with ThreadPoolExecutor(8) as pool:
        verdicts = list(pool.map(verify, docs))
    figure("documents recorded", len(docs), "(reported)", True)
    figures += _unrecorded_figures(run, db)
    for verdict in ("missing", "not whole", "not the origin's bytes"):
        n = verdicts.count(verdict)
        figure(f"recorded documents {verdict} in storage", n, "= 0", n == 0)
    figures += _version_figures(s3, docs, run.versioned)
    figure("recorded keys naming a temporary file", temp_keys, "= 0", temp_keys == 0)
    figure("recorded keys not <id // 50000>/<id>.bin", wrong_keys, "= 0", wrong_keys == 0)

    staged = _staged(s3, run.versioned)
    uploads = len(s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads", []))
    figure(
        "orphan temp objects and open uploads after the sweep", staged + uploads, "= 0", staged + uploads == 0
    )
    figure("writers killed mid-upload", run.fired.get("kill_writer", 0), "(reported)", True)

    p99 = _p99(run.loop_lag)
    # The bucket's upper bound: 0.1 means 99 % of the 50 ms timers woke at most 100 ms late.
    figure("gate event-loop stall p99 (s)", p99, "≤ 0.1", p99 <= 0.1)
    return figures


def _unrecorded_figures(run: Run, db: dict[str, list[asyncpg.Record]]) -> list[Figure]:
    """Every document is recorded, or failed for a reason a client gave. A byte liar's bytes at a
    key no record vouches for are never recorded as they are: the document goes beside them."""
    failed = {r["code"]: r["count"] for r in db["unrecorded"]}
    missing = run.tasks_created * run.plan.chunk - len(db["documents"]) - sum(failed.values())
    beside = db["beside"][0][0]
    out = [
        Figure("documents neither recorded nor failed", missing, "= 0", missing == 0),
        Figure("documents stored beside bytes no record vouches for", beside, "(reported)", True),
    ]
    for code, n in sorted(failed.items()):
        out.append(Figure(f"documents failed, not recorded ({code})", n, "(reported)", True))
    return out


def _check_figures(run: Run, db: dict[str, list[asyncpg.Record]], logs: list[str]) -> list[Figure]:
    """The byte liars: each lied (its kind's lies logged), each was quarantined, no other client
    was, and no check is left open. That no wrong document stays recorded is the storage
    read-back's figures."""
    plan = run.plan
    first_liar = plan.clients - len(plan.liars)
    liars = {f"chaos-{first_liar + n}": kind for n, kind in enumerate(plan.liars) if kind in BYTE_LIARS}
    told: dict[str, int] = defaultdict(int)
    for text in logs:
        for kind in BYTE_LIE.findall(text):
            told[kind] += 1
    clients = {r["client_name"]: r for r in db["clients"]}
    checks = {r["state"]: r["count"] for r in db["checks"]}
    kinds: dict[str, int] = defaultdict(int)
    for r in db["kinds"]:
        kinds[r["kind"]] += r["count"]
    out = [Figure(f"byte lies told ({kind})", told[kind], "≥ 1", told[kind] >= 1) for kind in liars.values()]
    caught = sum(1 for name in liars if clients.get(name) and clients[name]["quarantined_at"])
    wrongly = sorted(n for n, r in clients.items() if r["quarantined_at"] and n not in liars)
    out += [
        Figure("byte liars quarantined", caught, f"= {len(liars)}", caught == len(liars)),
        Figure("other clients quarantined", len(wrongly), "= 0", not wrongly),
        Figure("checks left open", checks.get("pending", 0) + checks.get("queued", 0), "= 0",
               checks.get("pending", 0) + checks.get("queued", 0) == 0),
    ]  # fmt: skip
    for state in ("agreed", "lied", "mistaken", "unsettled", "superseded"):
        out.append(Figure(f"checks {state}", checks.get(state, 0), "(reported)", True))
    out.append(Figure("check tasks", kinds["check"], "(reported)", True))
    out.append(Figure("restore tasks", kinds["restore"], "(reported)", True))
    return out


def _version_figures(s3: Any, docs: list[Any], versioned: bool) -> list[Figure]:
    """Without conditional writes (the b2 dialect) the record's version is the fence: every record
    pins one; keys a later write (a zombie's) topped with a newer version are counted (the gate
    serves the recorded one, which the check above read back)."""
    if not versioned:
        return []
    latest: dict[str, str] = {}
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=BUCKET):
        for v in page.get("Versions", []):
            if v["IsLatest"]:
                latest[v["Key"]] = v["VersionId"]
    unpinned = sum(1 for d in docs if not d["version_id"])
    shadowed = sum(1 for d in docs if d["version_id"] and latest.get(d["storage_key"]) != d["version_id"])
    return [
        Figure("records without their object version (b2)", unpinned, "= 0", unpinned == 0),
        Figure("keys a later version tops (b2; the recorded one is served)", shadowed, "(reported)", True),
    ]


def _staged(s3: Any, versioned: bool) -> int:
    """Staging objects left; on a versioned bucket every version and delete marker (bytes too)."""
    if not versioned:
        return int(s3.list_objects_v2(Bucket=BUCKET, Prefix=STAGING).get("KeyCount", 0))
    left = s3.list_object_versions(Bucket=BUCKET, Prefix=STAGING)
    return len(left.get("Versions", [])) + len(left.get("DeleteMarkers", []))


def _p99(histograms: list[dict[str, float]]) -> float:
    """The upper bound of the bucket holding the 99th percentile, over all gates' samples."""
    merged: dict[float, float] = defaultdict(float)
    for buckets in histograms:
        for bound, count in buckets.items():
            merged[float(bound)] += count
    if not merged:
        return float("inf")
    total = merged[float("inf")]
    for bound in sorted(merged):
        if merged[bound] >= 0.99 * total:
            return bound
    return float("inf")


def table(run: Run, figures: list[Figure]) -> str:
    width = max(len(f.name) for f in figures)
    fired = ", ".join(f"{k} ×{v}" for k, v in sorted(run.fired.items())) or "none"
    lines = [
        f"seed {run.plan.seed}: {run.tasks_created} tasks, {run.plan.clients} clients, "
        f"{run.seconds:.0f} s; faults: {fired}"
    ]
    for f in figures:
        value = f"{f.value:g}"
        lines.append(f"  {'ok ' if f.holds else 'BAD'} {f.name:<{width}}  {value:>10}  {f.bound}")
    return "\n".join(lines)


def violations(figures: list[Figure]) -> list[str]:
    return [f"{f.name} = {f.value:g} (must be {f.bound})" for f in figures if not f.holds]
