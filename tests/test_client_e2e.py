"""The worker client end to end: real gate, real PostgreSQL, `docgate origin`, clients as processes."""

from __future__ import annotations

import gzip
import hashlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cluster import Cluster, Origin
from docgate.origin import content_for, listing_ids
from processes import CLEAN_ENV, REPO, docgate

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
SIZE = 2048


@pytest.fixture
def cluster(tmp_path: Path, db_dsn: str) -> Iterator[Cluster]:
    c = Cluster(tmp_path, db_dsn)
    yield c
    c.stop()


def check_store_matches_records(cluster: Cluster, size: int = SIZE) -> int:
    """Every recorded document is whole at <id // 50000>/<id><ext> with the origin's bytes."""
    rows = cluster.sql("SELECT doc_id, storage_key, sha256, size FROM documents")
    for row in rows:
        doc_id = row["doc_id"]
        assert row["storage_key"] == f"{int(doc_id) // 50000}/{doc_id}.bin"
        data = (cluster.store / row["storage_key"]).read_bytes()
        assert data == content_for(doc_id, size), doc_id
        assert hashlib.sha256(data).hexdigest() == row["sha256"] and len(data) == row["size"]
    assert not list(cluster.store.rglob(".docgate-tmp-*"))
    return len(rows)


def test_faulty_origin_three_clients_across_a_shard_boundary(cluster: Cluster, tmp_path: Path) -> None:
    missing = [49_990 + i * 3 for i in range(10)]
    origin = Origin(
        tmp_path,
        "--size",
        str(SIZE),
        "--error-rate",
        "0.03",
        "--rate-429",
        "0.02",
        "--retry-after",
        "0.2",
        "--missing",
        ",".join(map(str, missing)),
    )
    try:
        cluster.job(origin, 49_000, 2000)
        for i in range(3):
            cluster.client(f"c{i}", "--exit-when-idle", "--concurrency", "16")
        assert cluster.wait_clients() == [0, 0, 0]
        served = origin.stats()
    finally:
        origin.stop()
    statuses = cluster.sql("SELECT status, count(*) FROM tasks GROUP BY status")
    assert {r["status"]: r["count"] for r in statuses} == {"completed": 20}
    assert check_store_matches_records(cluster) == 1990
    shards = {p.name for p in cluster.store.iterdir()}
    assert shards == {"0", "1"}
    failed = cluster.sql("SELECT doc_id, error FROM document_failures")
    assert sorted(int(r["doc_id"]) for r in failed) == missing
    assert all("404" in r["error"] for r in failed)
    (totals,) = cluster.sql(
        "SELECT sum(documents_downloaded) d, sum(documents_failed) f, sum(documents_skipped) s FROM tasks"
    )
    assert totals["d"] + totals["s"] == 1990 and totals["f"] == 10
    assert served["documents_served"] == 1990 == served["distinct_documents"]  # each fetched once
    job = cluster.get(f"/api/v1/jobs/{cluster.sql('SELECT job_id FROM jobs')[0][0]}")
    assert job["progress"] == 1.0 and job["documents_failed"] == 10


def test_seed_search_task_end_to_end(cluster: Cluster, tmp_path: Path) -> None:
    origin = Origin(tmp_path, "--size", str(SIZE), "--per-page", "20", "--results", "200")
    try:
        cluster.post(
            "/api/v1/tasks/create",
            {"search_params": {"CourtRegion": "11", "INSType": "1"}, "start_page": 2, "max_documents": 30},
        )
        cluster.client("searcher", "--exit-when-idle", "--search-url", origin.url + "/search?page={page}")
        assert cluster.wait_clients() == [0]
        pages = origin.stats()["by_kind"]["search"]
    finally:
        origin.stop()
    query = "CourtRegion=11&INSType=1"
    expected = (listing_ids(query, 2, 20, 200) + listing_ids(query, 3, 20, 200))[:30]
    recorded = sorted(r["doc_id"] for r in cluster.sql("SELECT doc_id FROM documents"))
    assert recorded == sorted(expected)
    assert pages == 2  # pages 2 and 3 only: start_page and max_documents honoured exactly
    (task,) = cluster.sql("SELECT status, documents_downloaded FROM tasks")
    assert (task["status"], task["documents_downloaded"]) == ("completed", 30)
    data = (cluster.store / f"{int(expected[0]) // 50000}/{expected[0]}.html").read_bytes()
    assert data == content_for(expected[0], SIZE)


def test_kill_9_of_a_client_loses_nothing(tmp_path: Path, db_dsn: str) -> None:
    cluster = Cluster(tmp_path, db_dsn, LEASE_SECONDS="3")
    origin = Origin(tmp_path, "--size", str(SIZE), "--latency", "0.02")
    try:
        cluster.job(origin, 1_000, 1500, chunk_size=50)
        victim = cluster.client("victim", "--concurrency", "8", "--max-tasks", "3")
        for i in range(2):
            cluster.client(f"survivor{i}", "--exit-when-idle", "--concurrency", "8")
        deadline = time.monotonic() + 60
        while cluster.sql("SELECT count(*) FROM documents")[0][0] < 300 and time.monotonic() < deadline:
            time.sleep(0.2)
        victim_id = cluster.sql("SELECT client_id FROM clients WHERE client_name = 'victim'")[0][0]
        # Frozen first, so what it holds can't be completed between the look and the kill.
        os.killpg(victim.pid, signal.SIGSTOP)
        time.sleep(1)  # a report already on the wire lands before the look
        held = {
            r[0]
            for r in cluster.sql(
                "SELECT task_id FROM tasks WHERE status = 'assigned' AND assigned_to = $1", victim_id
            )
        }
        assert held, "the victim held no task when killed"
        os.killpg(victim.pid, signal.SIGKILL)
        victim.wait(10)
        assert [p.wait(240) for p in cluster.clients[1:]] == [0, 0]
        statuses = {r[0]: r[1] for r in cluster.sql("SELECT status, count(*) FROM tasks GROUP BY status")}
        assert statuses == {"completed": 30}
        leftovers = list(cluster.store.rglob(".docgate-tmp-*"))  # the victim's interrupted writes
        swept = subprocess.run(
            docgate("storage", "sweep", str(cluster.store), "--older-than", "0"),
            cwd=REPO,
            env=CLEAN_ENV,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert f"removed {len(leftovers)} " in swept.stdout
        assert check_store_matches_records(cluster) == 1500
        expired = {
            r[0]
            for r in cluster.sql(
                "SELECT task_id FROM task_events WHERE event = 'expired' AND client_id = $1", victim_id
            )
        }
        # What it held when killed came back only after its lease ran out (one it completed
        # between the look and the kill is not among them).
        finished = {
            r[0]
            for r in cluster.sql(
                "SELECT task_id FROM task_events WHERE event = 'completed' AND client_id = $1", victim_id
            )
        }
        assert held - finished and held - finished <= expired
        completions = cluster.sql(
            "SELECT task_id, count(*) FROM task_events WHERE event = 'completed' "
            "GROUP BY task_id HAVING count(*) > 1"
        )
        assert completions == []
    finally:
        origin.stop()
        cluster.stop()


def test_sigterm_finishes_or_hands_back_within_the_grace(cluster: Cluster, tmp_path: Path) -> None:
    origin = Origin(tmp_path, "--size", str(SIZE), "--latency", "0.05")
    try:
        cluster.job(origin, 5_000, 2000, chunk_size=200)
        proc = cluster.client("stopper", "--concurrency", "8", "--max-tasks", "2", "--grace", "3")
        deadline = time.monotonic() + 60
        while cluster.sql("SELECT count(*) FROM documents")[0][0] < 50 and time.monotonic() < deadline:
            time.sleep(0.2)
        client_id = cluster.sql("SELECT client_id FROM clients WHERE client_name = 'stopper'")[0][0]
        held_before = cluster.sql("SELECT count(*) FROM tasks WHERE status = 'assigned'")[0][0]
        assert held_before >= 1
        started = time.monotonic()
        os.killpg(proc.pid, signal.SIGTERM)
        assert proc.wait(20) == 0
        took = time.monotonic() - started
    finally:
        origin.stop()
    assert took < 3 + 10, f"exit took {took:.1f} s"
    still = cluster.sql(
        "SELECT count(*) FROM tasks WHERE status = 'assigned' AND assigned_to = $1", client_id
    )
    assert still[0][0] == 0
    handed = cluster.sql(
        "SELECT count(*) FROM task_events WHERE event IN ('retry_scheduled', 'completed') AND client_id = $1",
        client_id,
    )
    assert handed[0][0] >= held_before
    check_store_matches_records(cluster)


def test_per_host_limit_and_retry_after(cluster: Cluster, tmp_path: Path) -> None:
    origin = Origin(tmp_path, "--size", "256", "--rate-429", "0.2", "--retry-after", "2")
    try:
        cluster.job(origin, 7_000, 60, chunk_size=60)
        cluster.client("polite", "--exit-when-idle", "--per-host-limit", "5", "--concurrency", "32")
        assert cluster.wait_clients() == [0]
        stats = origin.stats()
    finally:
        origin.stop()
    per_second = list(stats["by_second"].values())
    assert max(per_second) <= 5 + 2, per_second
    assert stats["retries_after_429"], "no 429 was answered"
    assert min(stats["retries_after_429"]) >= 2.0, stats["retries_after_429"]


def test_a_second_run_fetches_nothing(cluster: Cluster, tmp_path: Path) -> None:
    origin = Origin(tmp_path, "--size", str(SIZE))
    try:
        cluster.job(origin, 200, 300)
        cluster.client("first", "--exit-when-idle")
        assert cluster.wait_clients() == [0]
        served = origin.stats()["documents_served"]
        assert served == 300
        cluster.job(origin, 200, 300)
        cluster.client("second", "--exit-when-idle")
        assert cluster.wait_clients() == [0, 0]
        assert origin.stats()["documents_served"] == served
    finally:
        origin.stop()
    second = cluster.sql(
        "SELECT sum(documents_skipped), sum(documents_downloaded) FROM tasks t "
        "JOIN jobs j USING (job_id) WHERE j.created_at = (SELECT max(created_at) FROM jobs)"
    )
    assert (second[0][0], second[0][1]) == (300, 0)


def test_documents_already_in_storage_are_recorded_not_fetched(cluster: Cluster, tmp_path: Path) -> None:
    origin = Origin(tmp_path, "--size", str(SIZE))
    try:
        for doc_id in range(10, 15):  # stored earlier, e.g. by the old downloader, never recorded
            path = cluster.store / "0" / f"{doc_id}.bin"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content_for(str(doc_id), SIZE))
        cluster.job(origin, 10, 10)
        cluster.client("c", "--exit-when-idle")
        assert cluster.wait_clients() == [0]
        assert origin.stats()["documents_served"] == 5
    finally:
        origin.stop()
    assert check_store_matches_records(cluster) == 10
    (task,) = cluster.sql("SELECT documents_downloaded, documents_skipped FROM tasks")
    assert (task[0], task[1]) == (5, 5)


def test_bad_flags_and_an_unreachable_gate_exit_2(tmp_path: Path) -> None:
    cases = [
        (["--api-url", "http://127.0.0.1:1", "--api-key", "k"], "--api-url"),
        (["--api-url", "ftp://x"], "--api-url"),
        (["--api-url", "http://x", "--concurrency", "0"], "--concurrency"),
        (["--api-url", "http://x", "--allow-network", "10.0.0.0/33"], "--allow-network"),
        (["--api-url", "http://x", "--compress", "zstd"], "--compress"),
        (["--api-url", "http://x", "--storage", "ftp://bucket"], "--storage"),
        ([], "--api-url"),
    ]
    for flags, named in cases:
        r = subprocess.run(
            docgate("client", *flags),
            cwd=REPO,
            env=CLEAN_ENV | {"DOCGATE_PROGRESS": "log"},
            capture_output=True,
            text=True,
            timeout=60,
        )
        lines = [line for line in r.stderr.splitlines() if line.strip()]
        assert r.returncode == 2, (flags, r.stderr)
        assert len(lines) == 1 and named in lines[0] and "Traceback" not in r.stderr, (flags, r.stderr)
    r = subprocess.run(
        docgate("client", "--api-url", "http://x"),
        cwd=REPO,
        env=CLEAN_ENV | {"DOCGATE_CONCURRENCY": "many"},
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and "--concurrency" in r.stderr


def test_upload_through_the_gate_without_storage_credentials(cluster: Cluster, tmp_path: Path) -> None:
    origin = Origin(tmp_path, "--size", str(SIZE))
    try:
        cluster.job(origin, 49_998, 4)
        cluster.client("no-creds", "--exit-when-idle", "--storage", "gate", "--compress", "gzip")
        assert cluster.wait_clients() == [0]
    finally:
        origin.stop()
    rows = cluster.sql("SELECT doc_id, storage_key, sha256, size, compressed FROM documents ORDER BY doc_id")
    assert [r["storage_key"] for r in rows] == [
        "0/49998.bin.gz",
        "0/49999.bin.gz",
        "1/50000.bin.gz",
        "1/50001.bin.gz",
    ]
    for row in rows:
        data = gzip.decompress((cluster.store / row["storage_key"]).read_bytes())
        assert data == content_for(row["doc_id"], SIZE) and row["compressed"]
        assert hashlib.sha256(data).hexdigest() == row["sha256"] and row["size"] == SIZE


def test_a_second_signal_exits_at_once(cluster: Cluster, tmp_path: Path) -> None:
    origin = Origin(tmp_path, "--size", str(SIZE), "--latency", "0.2")
    try:
        cluster.job(origin, 9_000, 400, chunk_size=100)
        proc = cluster.client("impatient", "--concurrency", "4", "--grace", "60")
        # Working, not just leased: a task answered while its lease request was still in flight
        # is handed back by the goodbye, and the stop would then be over at once.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not cluster.sql(
            "SELECT 1 FROM tasks WHERE status = 'assigned'"
        ):
            time.sleep(0.1)
        time.sleep(3)  # its 400 documents take a minute and more at the host's budget
        os.killpg(proc.pid, signal.SIGTERM)
        time.sleep(0.5)
        started = time.monotonic()
        os.killpg(proc.pid, signal.SIGTERM)
        assert proc.wait(10) == 128 + signal.SIGTERM
        assert time.monotonic() - started < 5
    finally:
        origin.stop()


def test_a_store_it_cannot_write_stops_the_client_at_start(cluster: Cluster, tmp_path: Path) -> None:
    """The store is probed before any lease: a client that cannot store burns no task's attempts."""
    origin = Origin(tmp_path)
    try:
        cluster.job(origin, 1, 3)
        cluster.client("broken-store", "--exit-when-idle", "--storage", "file:///proc/docgate-store")
        assert cluster.wait_clients(60) == [2]
    finally:
        origin.stop()
    log = cluster.log_of(0)
    assert "cannot write to the store (--storage" in log and "Traceback" not in log
    attempts = cluster.sql("SELECT sum(attempts) AS n FROM tasks")[0]["n"]
    assert attempts == 0  # nothing was leased


def test_processes_share_the_work_each_with_its_own_session(cluster: Cluster, tmp_path: Path) -> None:
    origin = Origin(tmp_path, "--size", str(SIZE), "--latency", "0.01")
    try:
        cluster.job(origin, 1000, 600, chunk_size=20)
        cluster.client("multi", "--exit-when-idle", "--processes", "3", "--max-tasks", "1")
        assert cluster.wait_clients() == [0]
    finally:
        origin.stop()
    assert check_store_matches_records(cluster) == 600
    sessions = cluster.sql("SELECT count(DISTINCT session_id) FROM tasks WHERE status = 'completed'")
    assert sessions[0][0] >= 2  # three processes leased (one may have found the queue empty)
    assert cluster.sql("SELECT count(*) FROM clients")[0][0] == 1  # one client, one key
