"""Real registries as sources, without code: a stored profile runs the seed's search against
`docgate origin --registry`, which behaves as the seed's registry does (its docstring cites the
captured pages): form POST with multi-valued fields and a required page size, session-bound
paging, hidden tokens (rotating too), detail pages with RTF originals, a hidden captcha element
on every page, windows-1251."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest

from cluster import Cluster, Origin
from conftest import Gate
from docgate.registry import RegistryConfig, expected, rtf_for
from processes import CLEAN_ENV, REPO, docgate

pytestmark = pytest.mark.timeout(300)
EXAMPLE = json.loads((REPO / "examples" / "reyestr.json").read_text(encoding="utf-8"))


def profile_for(registry: Origin, **changes: Any) -> dict[str, Any]:
    profile = json.loads(json.dumps(EXAMPLE)) | {"base_url": registry.url}
    profile.pop("politeness")
    for dotted, value in changes.items():
        target = profile
        *path, last = dotted.split("__")
        for part in path:
            target = target.setdefault(part, {})
        if value is None:
            target.pop(last, None)
        else:
            target[last] = value
    return profile


def put(cluster: Cluster, name: str, profile: dict[str, Any]) -> httpx.Response:
    return httpx.put(f"{cluster.url}/api/v1/sources/{name}", headers=cluster.admin, json=profile, timeout=30)


def seed_task(search_params: dict[str, Any], max_documents: int = 1000) -> dict[str, Any]:
    """The seed's task shape, as its operator created it with curl, naming the stored profile."""
    return {
        "source": "reyestr",
        "search_params": search_params,
        "start_page": 1,
        "max_documents": max_documents,
    }


@pytest.mark.parametrize(
    ("options", "changes", "searches"),
    [
        # The seed's search: two regions' decisions of first instance, pages of 25.
        ((), {}, [{"CourtRegion": "11", "INSType": "1"}, {"CourtRegion": "14", "INSType": "1"}]),
        # Another page size, and a multi-valued field: several regions in one search.
        ((), {"search__fields__PagingInfo.ItemsPerPage": "10", "results__page_size": 10},
         [{"CourtRegion": ["2", "3", "4"], "INSType": ["1", "2"]}, {"CourtRegion": ["5", "6"]}]),
        # windows-1251 pages and forms: the search text must go in the registry's charset.
        (("--charset", "windows-1251"), {"charset": "windows-1251"},
         [{"SearchExpression": "Львівський", "CourtRegion": "11"},
          {"SearchExpression": "Одеський", "CourtRegion": "14"}]),
        # A rotating hidden token, and paging by re-posting the form with the page number.
        (("--form-token", "rotating", "--paging", "form"), {"next_page": {"field": "page"}},
         [{"CourtRegion": "11"}, {"CourtRegion": "12", "INSType": "3"}]),
    ],
    ids=["seed", "page-size-and-multi-valued", "windows-1251", "rotating-token-form-paging"],
)  # fmt: skip
def test_the_seeds_search_through_a_stored_profile(
    tmp_path: Path,
    db_dsn: str,
    options: tuple[str, ...],
    changes: dict[str, Any],
    searches: list[dict[str, Any]],
) -> None:
    """Each search, created as the seed's curl did, runs on one of two clients; every decision
    the registry finds is stored whole (the RTF original behind its detail page), recorded with
    the task that found it, and no other."""
    registry = Origin(tmp_path, "--registry", "--decisions", "3000", *options)
    cluster = Cluster(tmp_path, db_dsn)
    try:
        assert put(cluster, "reyestr", profile_for(registry, **changes)).status_code == 201
        tasks = [cluster.post("/api/v1/tasks/create", seed_task(s))["task_id"] for s in searches]
        for i in range(2):
            cluster.client(f"c{i}", "--exit-when-idle", "--concurrency", "4")
        assert cluster.wait_clients(200) == [0, 0]
        config = RegistryConfig(documents=3000)
        for task_id, search in zip(tasks, searches, strict=True):
            task = cluster.get(f"/api/v1/tasks/{task_id}")
            assert task["status"] == "completed", task
            want = expected(
                config,
                frozenset(int(r) for r in _list(search.get("CourtRegion"))),
                frozenset(int(t) for t in _list(search.get("INSType"))),
                str(search.get("SearchExpression", "")),
            )
            assert len(want) > 25  # more than one page
            rows = cluster.sql(
                "SELECT doc_id, sha256, size FROM documents WHERE task_id = $1", _uuid(task_id)
            )
            assert sorted(int(r["doc_id"]) for r in rows) == sorted(want)
            for r in rows:  # stored under <id // 50000>/<id>.rtf: the RTF original, whole
                body = (cluster.store / str(int(r["doc_id"]) // 50_000) / f"{r['doc_id']}.rtf").read_bytes()
                assert body == rtf_for(int(r["doc_id"])) and r["size"] == len(body), r["doc_id"]
        stats = registry.stats()
        assert stats.get("page_without_session", 0) == 0 and stats.get("bad_token", 0) == 0
    finally:
        cluster.stop()
        registry.stop()


def _list(value: Any) -> list[Any]:
    return [] if value is None else value if isinstance(value, list) else [value]


def _uuid(text: str) -> Any:
    import uuid

    return uuid.UUID(text)


def test_paging_outside_the_session_finds_nothing(tmp_path: Path) -> None:
    """The simulator's session-bound paging, checked against itself: a /Page/2 without the
    search's cookie is the empty form (status 200), with it the second page of results."""
    registry = Origin(tmp_path, "--registry", "--decisions", "200", "--form-token", "none")
    try:
        with httpx.Client(base_url=registry.url, timeout=10) as browser:
            browser.get("/")
            first = browser.post("/", data={"PagingInfo.ItemsPerPage": "10", "INSType[]": ["1", "2"]})
            assert first.text.count('class="doc_text2"') == 10
            assert browser.get("/Page/2").text.count('class="doc_text2"') == 10
            missing = browser.post("/", data={"INSType[]": "1"})
            assert "ItemsPerPage field is required" in missing.text and missing.status_code == 200
        stranger = httpx.get(registry.url + "/Page/2", timeout=10)
        assert stranger.status_code == 200 and 'class="doc_text2"' not in stranger.text
        assert 'id="modalcaptcha" style="display: none;"' in stranger.text  # on every normal page
    finally:
        registry.stop()


BROKEN = [
    ({"results__links": "a.doc_text2["}, "results.links"),
    ({"detail__document": "a#btnRtf >> b"}, "detail.document"),
    ({"results__id_pattern": "/Review/(\\d+)$"}, "results.id_pattern"),
    ({"results__id_pattern": "/Review/(?P<id>\\d+"}, "results.id_pattern"),
    ({"search__url": "file:///etc/passwd"}, "search.url"),
    ({"base_url": "file:///srv"}, "base_url"),
    ({"charset": "klingon-8"}, "charset"),
    ({"next_page": {"url": "/Page/2"}}, "next_page"),
    ({"results__colour": "blue"}, "results.colour"),
]


async def test_a_broken_profile_is_refused_when_stored(gate: Gate) -> None:
    """Each broken profile is a 422 naming its field, and nothing is stored; a good one is 201,
    then 200 when replaced; a built-in's name is refused; clients may not store profiles."""
    fake = type("R", (), {"url": "http://registry.example"})()
    for changes, field in BROKEN:
        r = await gate.http.put(
            "/api/v1/sources/broken", headers=gate.admin, json=profile_for(fake, **changes)
        )
        assert r.status_code == 422, (changes, r.text)
        detail = r.json()["detail"]  # a message, or the field errors as FastAPI lists them
        if isinstance(detail, list):
            detail = " ".join(".".join(str(p) for p in e["loc"][1:]) + ": " + e["msg"] for e in detail)
        assert r.json()["code"] == "invalid_field" and field in detail, (changes, r.json())
    missing = await gate.http.get("/api/v1/sources/broken", headers=gate.admin)
    assert (missing.status_code, missing.json()["code"]) == (404, "source_not_found")
    good = profile_for(fake)
    assert (await gate.http.put("/api/v1/sources/search", headers=gate.admin, json=good)).status_code == 422
    assert (await gate.http.put("/api/v1/sources/reyestr", headers=gate.admin, json=good)).status_code == 201
    assert (await gate.http.put("/api/v1/sources/reyestr", headers=gate.admin, json=good)).status_code == 200
    listed = (await gate.http.get("/api/v1/sources", headers=gate.admin)).json()["sources"]
    assert [s["name"] for s in listed] == ["reyestr"] and listed[0]["profile"]["base_url"] == fake.url
    client = await gate.register()
    refused = await gate.http.put("/api/v1/sources/mine", headers=client, json=good)
    assert (refused.status_code, refused.json()["code"]) == (403, "forbidden")


def test_the_dry_run_prints_requests_documents_and_why_it_stopped(tmp_path: Path) -> None:
    registry = Origin(tmp_path, "--registry", "--decisions", "3000")
    profile = tmp_path / "reyestr.json"
    profile.write_text(json.dumps(profile_for(registry)), encoding="utf-8")
    try:
        run = subprocess.run(
            docgate("sources", "try", str(profile), "--file", "--search-params", '{"CourtRegion": "11"}',
                    "--pages", "2", "--allow-network", "127.0.0.0/8", "--rate", "100"),
            cwd=REPO, env=CLEAN_ENV, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert run.returncode == 0, run.stderr
        out = run.stdout
        assert "POST " + registry.url + "/" in out and "/Page/2" in out
        assert "documents (" in out and "stopped: max_pages (2) reached" in out
        found = [
            line.split()[0] for line in out.split("documents (")[1].splitlines()[1:] if line.startswith("  ")
        ]
        want = expected(RegistryConfig(documents=3000), frozenset({11}))
        assert found == [str(i) for i in want[:50]]
        assert f"stated total: {len(want)} (cap 100000)\n" in out  # what the registry said it holds
        bad = subprocess.run(
            docgate("sources", "try", str(profile), "--file", "--search-params", "[1]"),
            cwd=REPO, env=CLEAN_ENV, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert bad.returncode != 0 and "--search-params" in bad.stderr and "Traceback" not in bad.stderr
    finally:
        registry.stop()


@pytest.mark.parametrize(("charset", "found"), [("windows-1251", 25), ("utf-8", 0)])
def test_the_search_text_goes_in_the_registrys_charset(tmp_path: Path, charset: str, found: int) -> None:
    """A windows-1251 registry: the search text sent in windows-1251 finds the court's decisions;
    sent in UTF-8 (the control: what a search that ignores the charset does) it finds none."""
    registry = Origin(tmp_path, "--registry", "--charset", "windows-1251")
    profile = tmp_path / "cp1251.json"
    profile.write_text(json.dumps(profile_for(registry, charset=charset)), encoding="utf-8")
    try:
        search = json.dumps({"SearchExpression": "Львівський", "CourtRegion": "11"})
        argv = [
            "try",
            str(profile),
            "--file",
            "--pages",
            "1",
            "--allow-network",
            "127.0.0.0/8",
            "--rate",
            "100",
        ]
        run = subprocess.run(
            docgate("sources", *argv, "--search-params", search),
            cwd=REPO, env=CLEAN_ENV, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert run.returncode == 0, run.stderr
        assert f"documents ({found}):" in run.stdout, run.stdout[-800:]
    finally:
        registry.stop()


def test_a_search_spreads_its_results_over_the_fleet(tmp_path: Path, db_dsn: str) -> None:
    """With `spread_chunk_size`, a search downloads nothing itself: each decision it finds is
    queued once, in `urls` tasks of 10, which three clients share; every document is stored
    whole and records the search that found it. The same search again queues nothing (all are
    recorded by then); a client cannot report findings for a task it does not hold."""
    registry = Origin(tmp_path, "--registry")
    cluster = Cluster(tmp_path, db_dsn)
    try:
        assert put(cluster, "reyestr", profile_for(registry, spread_chunk_size=10)).status_code == 201
        search = cluster.post("/api/v1/tasks/create", seed_task({"CourtRegion": "11"}))["task_id"]
        for i in range(3):
            cluster.client(f"c{i}", "--exit-when-idle", "--concurrency", "4")
        assert cluster.wait_clients(200) == [0, 0, 0]
        want = expected(RegistryConfig(), frozenset({11}))
        done = cluster.get(f"/api/v1/tasks/{search}")
        assert done["status"] == "completed" and done["documents_downloaded"] == 0, done
        assert done["result_summary"]["discovered"] == done["result_summary"]["queued"] == len(want)
        rows = cluster.sql("SELECT doc_id, task_id, found_by, client_id FROM documents")
        assert sorted(int(r["doc_id"]) for r in rows) == sorted(want)
        assert {str(r["found_by"]) for r in rows} == {search}
        downloads = cluster.sql(
            "SELECT count(*) AS n FROM tasks WHERE source = 'urls' AND status = 'completed'"
        )
        assert downloads[0]["n"] == -(-len(want) // 10)
        assert len({r["client_id"] for r in rows}) >= 2  # spread over the fleet
        doc = cluster.get(f"/api/v1/documents/{want[0]}")
        assert doc["found_by"] == search and doc["task_id"] != search

        again = cluster.post("/api/v1/tasks/create", seed_task({"CourtRegion": "11"}))["task_id"]
        cluster.clients.clear()
        cluster.client("again", "--exit-when-idle")
        assert cluster.wait_clients(120) == [0]
        assert cluster.get(f"/api/v1/tasks/{again}")["result_summary"]["queued"] == 0

        key = cluster.register("outsider")
        body = {"lease_token": None, "documents": [{"doc_id": "1", "url": registry.url + "/Rtf/1"}]}
        r = httpx.post(
            f"{cluster.url}/api/v1/tasks/{search}/discovered", headers={"X-API-Key": key}, json=body
        )
        assert (r.status_code, r.json()["code"]) == (404, "not_your_task")
    finally:
        cluster.stop()
        registry.stop()


def test_the_registry_blocks_a_fleet_that_comes_too_fast_and_loses_nothing(
    tmp_path: Path, db_dsn: str
) -> None:
    """Past 15 requests a second the registry answers everything, for 2 s, with its captcha page
    under status 200 (its hidden captcha element is on every normal page too, so the profile's
    block_patterns names the prompt only the block page has). The blocks halve the host's rate
    for the fleet; no captcha page is stored, and every decision ends whole."""
    registry = Origin(tmp_path, "--registry", "--max-rate", "15")
    cluster = Cluster(
        tmp_path,
        db_dsn,
        HOST_RATE_LIMIT="60",
        HOST_PAUSE_MIN_ANSWERS="100000",
        JOB_PAUSE_MIN_ANSWERS="100000",
    )
    try:
        assert put(cluster, "reyestr", profile_for(registry)).status_code == 201
        searches = [{"CourtRegion": "11", "INSType": "1"}]
        tasks = [
            cluster.post("/api/v1/tasks/create", seed_task(s) | {"max_attempts": 30})["task_id"]
            for s in searches
        ]
        for i in range(2):
            cluster.client(f"c{i}", "--exit-when-idle", "--concurrency", "8")
        assert cluster.wait_clients(200) == [0, 0]
        assert registry.stats().get("blocked", 0) > 0  # the fleet met the wall
        for task_id in tasks:
            assert cluster.get(f"/api/v1/tasks/{task_id}")["status"] == "completed"
        rows = cluster.sql("SELECT doc_id, size FROM documents")
        want = expected(RegistryConfig(), frozenset({11}), frozenset({1}))
        assert sorted(int(r["doc_id"]) for r in rows) == sorted(want)
        assert all(r["size"] == len(rtf_for(int(r["doc_id"]))) for r in rows)
        (host,) = cluster.get("/api/v1/hosts")["hosts"]
        assert host["blocked"] > 0 and host["effective_rate"] < 60
    finally:
        cluster.stop()
        registry.stop()


def test_the_example_profile_is_the_simulators() -> None:
    """examples/reyestr.json (make run's next steps, the README) is the profile the demo uses."""
    from docgate.registry import profile

    assert profile("http://127.0.0.1:8090") == EXAMPLE


@pytest.mark.parametrize(
    ("name", "stored"),
    [
        ("my-reg", True),
        ("court_reg2", True),
        ("My-Reg", False),
        ("-reg", False),
        ("reg.x", False),
        ("r" * 64, False),
    ],
)
async def test_one_naming_rule_for_profiles_and_tasks(gate: Gate, name: str, stored: bool) -> None:
    """A name the gate stores a profile under is a name a task can use, and one it refuses is
    refused for both, with the same rule."""
    fake = type("R", (), {"url": "http://registry.example"})()
    put = await gate.http.put(f"/api/v1/sources/{name}", headers=gate.admin, json=profile_for(fake))
    task = await gate.http.post(
        "/api/v1/tasks/create", headers=gate.admin, json={"source": name, "params": {}}
    )
    if stored:
        assert put.status_code == 201, put.text
        assert task.status_code == 201, task.text
        assert task.json()["source"] == name
    else:
        assert put.status_code in (404, 422) and task.status_code == 422, (put.text, task.text)
        assert "[a-z][a-z0-9_-]" in task.text  # the 422 states the rule
