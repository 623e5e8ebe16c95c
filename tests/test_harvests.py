"""Whole-registry harvests against `docgate origin --registry`, which states each search's total
and, like the seed's registry, pages at most `--max-results` results of one search: a job over
the stored profile cut into windows, windows over the cap split (by days, then by a second
field), never truncated; the coverage ledger; repeated runs that fetch only what is new; and a
gate and a client killed while it runs."""

from __future__ import annotations

import os
import signal
import time
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from cluster import Cluster, Origin
from docgate.registry import RegistryConfig, decision

pytestmark = pytest.mark.timeout(600)
YEAR_DAYS = 365.25


def harvest_profile(registry: Origin, cap: int | None, **changes: Any) -> dict[str, Any]:
    """The seed's registry's profile, its detail page kept as the document (one request a
    decision), pages of 100; `cap` is its results.max_results."""
    from docgate.registry import profile

    p = profile(registry.url)
    p.pop("politeness")
    p.pop("expect_content_type")
    p["search"]["fields"]["PagingInfo.ItemsPerPage"] = "100"
    p["results"] |= {"page_size": 100, "ext": ".html"}
    p["detail"] = {"ext": ".html"}
    if cap is None:
        p["results"].pop("max_results")
    else:
        p["results"]["max_results"] = cap
    return p | changes


def originals_profile(registry: Origin) -> dict[str, Any]:
    """The seed's registry's profile as shipped, less its politeness, pages of 100: detail
    pages, then RTF originals (two requests a decision)."""
    from docgate.registry import profile

    p = profile(registry.url)
    p.pop("politeness")
    p["search"]["fields"]["PagingInfo.ItemsPerPage"] = "100"
    p["results"]["page_size"] = 100
    return p


def put_profile(cluster: Cluster, name: str, profile: dict[str, Any]) -> None:
    r = httpx.put(f"{cluster.url}/api/v1/sources/{name}", headers=cluster.admin, json=profile, timeout=30)
    assert r.status_code in (200, 201), r.text


def span(config: RegistryConfig) -> tuple[date, date]:
    return config.today - timedelta(days=int(config.years * YEAR_DAYS)), config.today


def harvest(cluster: Cluster, config: RegistryConfig, every: str = "month", **more: Any) -> str:
    first, last = span(config)
    body = {
        "source": "reg",
        "partition": {"dates": {"from": first.isoformat(), "to": last.isoformat(), "every": every}},
        "split_by": {"field": "INSType", "values": ["1", "2", "3"]},
    } | more
    return str(cluster.post("/api/v1/jobs", body)["job_id"])


def wait_settled(
    cluster: Cluster, job_id: str, run: int | None = None, timeout: float = 400
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    query = f"?run={run}" if run else ""
    while True:
        r = httpx.get(
            f"{cluster.url}/api/v1/jobs/{job_id}/coverage{query}", headers=cluster.admin, timeout=30
        )
        if r.status_code == 404 and run is not None:  # that run has not begun yet
            assert time.monotonic() < deadline, r.text
            time.sleep(0.5)
            continue
        assert r.status_code == 200, r.text
        cov = r.json()
        if all(w["state"] not in ("pending", "searching") for w in cov["windows"]) and cov["windows"]:
            return cov  # type: ignore[no-any-return]
        assert time.monotonic() < deadline, cov["totals"]
        time.sleep(1)


def stored_ids(cluster: Cluster) -> list[int]:
    return sorted(int(r["doc_id"]) for r in cluster.sql("SELECT doc_id FROM documents"))


def check_bytes(cluster: Cluster, ids: list[int], sample: int = 200) -> None:
    """Every recorded document is the registry's page for it, byte for byte (a sample read back)."""
    rows = cluster.sql("SELECT doc_id, sha256, size, storage_key FROM documents")
    import hashlib

    for r in rows[:: max(1, len(rows) // sample)]:
        body = (cluster.store / r["storage_key"]).read_bytes()
        assert hashlib.sha256(body).hexdigest() == r["sha256"] and len(body) == r["size"]
        assert f"Рішення № {r['doc_id']}.".encode() in body, r["doc_id"]


def test_a_whole_registry_over_its_cap(tmp_path: Path, db_dsn: str) -> None:
    """20,000 decisions over 3 years, 1,000 results at most per search, a day of 1,200 (at
    HARVEST_DECISIONS=20000; half of each by default): one harvest with monthly windows stores
    every decision, byte-exact; the months over the cap are split in halves down to days, the
    busy day by instance; every window ends complete and the ledger's leaves sum to the
    registry's total."""
    # `make test` runs 10,000 (cap 500, a day of 600) for the suite's time; HARVEST_DECISIONS=20000
    # is the issue's own figure (cap 1,000, a day of 1,200), run as `make harvest-full`.
    n = int(os.environ.get("HARVEST_DECISIONS", "10000"))
    cap, burst = n // 20, n // 20 * 6 // 5
    config = RegistryConfig(documents=n, max_results=cap, burst=burst)
    registry = Origin(
        tmp_path, "--registry", "--decisions", str(n), "--max-results", str(cap), "--burst", str(burst)
    )
    cluster = Cluster(tmp_path, db_dsn)
    try:
        put_profile(cluster, "reg", harvest_profile(registry, cap))
        job = harvest(cluster, config)
        for i in range(2):
            cluster.client(f"h{i}", "--exit-when-idle", "--concurrency", "16")
        assert cluster.wait_clients(500) == [0, 0]
        cov = wait_settled(cluster, job)
        states = cov["totals"]["states"]
        assert set(states) <= {"complete", "split"} and states["split"] > 0, states
        assert cov["complete"] and cov["gaps"] == []
        assert cov["totals"]["stated_total"] == n and cov["totals"]["stored"] == n, cov["totals"]
        by_instance = [w for w in cov["windows"] if w["split_value"] is not None]
        assert len(by_instance) == 3 and all(w["date_from"] == w["date_to"] for w in by_instance)
        for w in cov["windows"]:  # a split window's halves hold its total; a leaf held its own
            if w["state"] == "split":
                children = [c for c in cov["windows"] if c["parent_id"] == w["window_id"]]
                assert (
                    sum(c["stated_total"] or 0 for c in children if c["state"] != "split")
                    <= w["stated_total"]
                )
                assert w["stated_total"] > cap and w["stored"] == 0
            else:
                assert w["stated_total"] <= cap and w["stored"] + w["skipped"] == w["stated_total"]
        want = sorted(decision(i)["id"] for i in range(n))
        assert stored_ids(cluster) == want
        check_bytes(cluster, want)
        assert registry.stats()["review"] == n  # each decision fetched once
    finally:
        cluster.stop()
        registry.stop()


@pytest.mark.parametrize(
    ("registry_cap", "profile_cap", "split", "count", "ends"),
    [
        (60, 60, True, True, "complete"),  # the harvest as it should run: split past the cap
        (60, 60, True, False, "complete"),  # no count read: split at the last page the cap allows
        (60, 60, False, True, "over_cap"),  # split turned off: truncated windows, never complete
        (60, None, True, True, "short"),  # the cap not declared: the stated totals show what is missing
        (0, None, True, True, "complete"),  # the control: a registry without a cap
    ],
    ids=["split", "split-without-count", "split-off", "cap-undeclared", "no-cap"],
)
def test_truncation_is_never_complete(
    tmp_path: Path,
    db_dsn: str,
    registry_cap: int,
    profile_cap: int | None,
    split: bool,
    count: bool,
    ends: str,
) -> None:
    """The same 1,200 decisions five ways. Split past the cap — by the stated total, or, when the
    profile reads no count, at the last page the cap allows — or with no cap at all, every
    window is complete and the ledger sums to 1,200, a split window storing nothing itself; a
    window truncated by the cap — split turned off, or a cap the profile does not declare — is
    never complete: over_cap or short, named as a gap with what it misses, and the ledger sums
    to what was really stored."""
    n = 1_200
    config = RegistryConfig(documents=n, max_results=registry_cap)
    registry = Origin(tmp_path, "--registry", "--decisions", str(n), "--max-results", str(registry_cap))
    cluster = Cluster(tmp_path, db_dsn)
    try:
        profile = harvest_profile(registry, profile_cap)
        if not count:
            profile["results"].pop("total")
        put_profile(cluster, "reg", profile)
        job = harvest(cluster, config, split=split)
        cluster.client("h0", "--exit-when-idle", "--concurrency", "16")
        assert cluster.wait_clients(300) == [0]
        cov = wait_settled(cluster, job)
        totals, stored = cov["totals"], stored_ids(cluster)
        if count:  # the registry states every window's whole total
            assert totals["stated_total"] == n
        assert totals["stored"] == len(stored)  # the ledger adds up to what is recorded
        if ends == "complete":
            assert cov["complete"] and stored == sorted(decision(i)["id"] for i in range(n))
            assert ("split" in totals["states"]) == (registry_cap > 0), totals["states"]
            assert all(w["stored"] == 0 for w in cov["windows"] if w["state"] == "split")
            assert totals["stored"] == n and registry.stats()["review"] == n  # nothing fetched twice
            return
        assert not cov["complete"] and totals["states"].get(ends, 0) > 0, totals["states"]
        assert "complete" not in {w["state"] for w in cov["windows"] if (w["stated_total"] or 0) > 60}
        assert len(stored) < n
        missing = sum(g["missing"] for g in cov["gaps"])
        assert missing == n - len(stored) and all(g["state"] == ends for g in cov["gaps"]), cov["gaps"][:3]
    finally:
        cluster.stop()
        registry.stop()


def test_a_repeating_harvest_fetches_only_what_is_new(tmp_path: Path, db_dsn: str) -> None:
    """A harvest that repeats every few seconds over the last 3 days: after its first run,
    300 decisions are registered today; the next run stores exactly those 300 and fetches
    nothing else of the registry's documents (detail pages and RTF originals counted at the
    registry), and its own ledger line says so."""
    n = 500
    config = RegistryConfig(documents=n, years=1)
    registry = Origin(tmp_path, "--registry", "--decisions", str(n), "--years", "1")
    cluster = Cluster(tmp_path, db_dsn)
    try:
        put_profile(cluster, "reg", originals_profile(registry))
        job = harvest(cluster, config, repeat={"every": "2s", "lookback": "3d"})
        cluster.client("r0", "--concurrency", "16")
        first = wait_settled(cluster, job, run=1)
        assert first["complete"] and first["totals"]["stored"] == n, first["totals"]
        before = registry.stats()
        runs_then = cluster.get(f"/api/v1/jobs/{job}/coverage")["runs"]
        added = httpx.post(registry.url + "/_add", params={"n": 300}, timeout=10).json()["added"]
        # Run runs_then + 1 may have begun before the 300 came; runs_then + 2 began after.
        runs = [wait_settled(cluster, job, run=runs_then + k) for k in (1, 2)]
        assert sum(r["totals"]["stored"] for r in runs) == 300, [r["totals"] for r in runs]
        for run in runs:  # each run's own ledger: what was new stored, the rest held already
            assert run["complete"] and run["totals"]["stored"] in (0, 300), run["totals"]
            assert run["totals"]["skipped"] == run["totals"]["found"] - run["totals"]["stored"]
        held = {int(r["doc_id"]) for r in cluster.sql("SELECT doc_id FROM documents")}
        assert held == {decision(i)["id"] for i in range(n)} | set(added)
        time.sleep(1)  # let a run begun meanwhile touch the registry, if it would
        after = registry.stats()
        assert after["review"] - before["review"] == 300 and after["rtf"] - before["rtf"] == 300
        windows = cluster.sql("SELECT DISTINCT date_from FROM harvest_windows WHERE run > 1")
        assert all(w["date_from"] >= config.today - timedelta(days=6) for w in windows)
    finally:
        cluster.stop()
        registry.stop()


def test_killing_a_gate_and_a_client_loses_nothing(tmp_path: Path, db_dsn: str) -> None:
    """A gate and a client killed while the harvest runs, a gate and a client started again:
    every decision stored once and whole, no window settled twice, the ledger still adds up."""
    n, cap = 2_400, 120
    config = RegistryConfig(documents=n, max_results=cap, burst=160)
    registry = Origin(
        tmp_path, "--registry", "--decisions", str(n), "--max-results", str(cap), "--burst", "160"
    )
    cluster = Cluster(tmp_path, db_dsn)
    try:
        put_profile(cluster, "reg", harvest_profile(registry, cap))
        job = harvest(cluster, config)
        doomed = cluster.client("k0", "--concurrency", "8")
        cluster.client("k1", "--concurrency", "8")
        deadline = time.monotonic() + 120
        while len(cluster.sql("SELECT 1 FROM documents")) < n // 4:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        os.killpg(doomed.pid, signal.SIGKILL)
        cluster.restart_gate(signal.SIGKILL)
        cluster.client("k2", "--concurrency", "8")
        cov = wait_settled(cluster, job)
        assert cov["complete"], (cov["totals"], cov["gaps"][:3])
        assert cov["totals"]["stated_total"] == n and cov["totals"]["stored"] + cov["totals"]["skipped"] == n
        assert stored_ids(cluster) == sorted(decision(i)["id"] for i in range(n))
        check_bytes(cluster, stored_ids(cluster))
        settled = cluster.sql(
            "SELECT t.task_id, count(e.*) AS n FROM tasks t JOIN task_events e USING (task_id) "
            "WHERE t.window_id IS NOT NULL AND e.event = 'completed' GROUP BY t.task_id"
        )
        assert settled and all(r["n"] == 1 for r in settled)
        windows = cluster.sql("SELECT window_id, task_id FROM harvest_windows")
        assert len({w["task_id"] for w in windows}) == len(windows)  # one task a window, once
    finally:
        cluster.stop()
        registry.stop()


def test_a_harvest_through_a_captcha_wall(tmp_path: Path, db_dsn: str) -> None:
    """The registry as it misbehaves: past 20 requests a second it answers everything, for 2 s,
    with its captcha page under status 200 (results pages too). Listing pages that are block
    pages fail their window's attempt (retried later), never end it as complete nor split it on
    a count they do not state; no captcha page is stored; the harvest still ends complete."""
    from docgate.registry import CAPTCHA_PROMPT

    n, cap = 150, 20
    config = RegistryConfig(documents=n, max_results=cap, years=1)
    registry = Origin(
        tmp_path, "--registry", "--decisions", str(n), "--max-results", str(cap), "--years", "1",
        "--max-rate", "20",
    )  # fmt: skip
    cluster = Cluster(
        tmp_path,
        db_dsn,
        HOST_RATE_LIMIT="60",
        HOST_PAUSE_MIN_ANSWERS="100000",
        JOB_PAUSE_MIN_ANSWERS="100000",
    )
    try:
        p = harvest_profile(registry, cap)
        p["search"]["fields"]["PagingInfo.ItemsPerPage"] = "10"
        p["results"]["page_size"] = 10
        put_profile(cluster, "reg", p)
        job = harvest(cluster, config, max_attempts=30)
        for i in range(2):
            cluster.client(f"w{i}", "--concurrency", "8")
        cov = wait_settled(cluster, job)
        assert registry.stats().get("blocked", 0) > 0  # the fleet met the wall
        assert cov["complete"] and cov["totals"]["stored"] == n, (cov["totals"], cov["gaps"][:3])
        assert stored_ids(cluster) == sorted(decision(i)["id"] for i in range(n))
        for r in cluster.sql("SELECT storage_key FROM documents"):
            assert CAPTCHA_PROMPT.encode() not in (cluster.store / r["storage_key"]).read_bytes()
        blocked = cluster.sql("SELECT count(*) AS n FROM tasks WHERE window_id IS NOT NULL AND attempts > 1")
        assert blocked[0]["n"] > 0  # some windows were tried again after a block page
    finally:
        cluster.stop()
        registry.stop()


def test_a_harvest_archived_checked_and_revisited(tmp_path: Path, db_dsn: str) -> None:
    """A whole registry (detail pages, RTF originals) harvested with the archive's settings on the
    job: `warc` (every WARC passes warcio's check and holds each document's exchange),
    `verify_sample: 1.0` (every document fetched again by the other client: all agree), then a
    revisit of the unchanged registry (every document `unchanged`, no new version)."""
    from warc_checks import check_warcs

    n = 200
    config = RegistryConfig(documents=n, years=1)
    registry = Origin(tmp_path, "--registry", "--decisions", str(n), "--years", "1")
    cluster = Cluster(tmp_path, db_dsn)
    try:  # the profile's own rules reach the checks of what its tasks recorded
        put_profile(cluster, "reg", originals_profile(registry) | {"verify_disputes": 7})
        job = harvest(cluster, config, warc=True, verify_sample=1.0)
        for name in ("r0", "r1"):
            cluster.client(name, "--concurrency", "8")
        cov = wait_settled(cluster, job)
        assert cov["complete"] and cov["totals"]["stored"] == n, cov["totals"]

        def quiet() -> None:  # no check, restore or revisit of the job left to do
            deadline = time.monotonic() + 240
            while True:
                open_ = cluster.sql(
                    "SELECT (SELECT count(*) FROM verifications WHERE state IN ('pending', 'queued'))"
                    " + (SELECT count(*) FROM tasks WHERE status IN ('pending', 'assigned'))"
                )[0][0]
                if open_ == 0:
                    return
                assert time.monotonic() < deadline, open_
                time.sleep(0.5)

        quiet()
        checks = dict(cluster.sql("SELECT state, count(*) FROM verifications GROUP BY state"))
        disputes = cluster.sql(
            "SELECT DISTINCT params->>'verify_disputes' FROM tasks WHERE (params->>'verify')::boolean"
        )
        responses = check_warcs(cluster)
        rtf_before = registry.stats()["rtf"]
        cluster.post(f"/api/v1/jobs/{job}/revisit")
        deadline = time.monotonic() + 240
        while cluster.sql("SELECT count(*) FROM documents WHERE revisited_at IS NOT NULL")[0][0] < n:
            assert time.monotonic() < deadline
            time.sleep(0.5)
        quiet()
        versions = cluster.sql("SELECT max(version), count(*) FROM documents")[0]
        rtf_fetched = registry.stats()["rtf"] - rtf_before
    finally:
        cluster.stop()
        registry.stop()
    assert checks == {"agreed": n}, checks  # each document checked by the other client, and right
    assert [r[0] for r in disputes] == ["7"]  # the profile's rule, carried by every check
    assert len(responses) == n  # a WARC response record for every document
    assert tuple(versions) == (1, n)  # nothing changed: no new version
    assert rtf_fetched == n  # the revisit asked for each original once
