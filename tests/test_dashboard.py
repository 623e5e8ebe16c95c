"""The dashboard in a real browser (Debian's chromium driven by Playwright), and its guards."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from cluster import ADMIN, Cluster, Origin

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


@pytest.fixture
def browser() -> Iterator[object]:
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed; `make test` installs it")
        pytest.skip("chromium is not installed (make test installs it when run as root)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        yield b
        b.close()


@pytest.fixture
def cluster(tmp_path: Path, db_dsn: str) -> Iterator[Cluster]:
    c = Cluster(tmp_path, db_dsn, REAP_INTERVAL_SECONDS="0.2")
    yield c
    c.stop()


def click_until(page, selector: str, done, attempts: int = 4) -> None:  # type: ignore[no-untyped-def]
    """Click, then wait for the API to show the effect. The live part of the page is
    re-rendered every 2 s; a click that lands on a button being replaced is tried again."""
    for _ in range(attempts):
        page.click(selector)
        deadline = time.monotonic() + 4
        while time.monotonic() < deadline:
            if done():
                return
            time.sleep(0.2)
    raise AssertionError(f"clicking {selector} did not reach the API")


def number(page, selector: str) -> int:  # type: ignore[no-untyped-def]
    return int(page.inner_text(selector).strip())


def test_dashboard_in_a_real_browser(browser, cluster: Cluster, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ARTIFACTS.mkdir(exist_ok=True)
    origin = Origin(tmp_path, "--size", "1024", "--latency", "0.03")
    page = browser.new_page(viewport={"width": 1300, "height": 1000})
    try:
        # A task that fails for good, to retry from the page.
        gone = {"urls": [{"doc_id": "gone", "url": "http://127.0.0.1:9/gone"}]}
        doomed = cluster.post("/api/v1/tasks/create", {"source": "urls", "params": gone, "max_attempts": 1})
        key = cluster.register("worker")
        leased = httpx.post(cluster.url + "/api/v1/tasks/request", headers={"X-API-Key": key}).json()
        httpx.post(
            f"{cluster.url}/api/v1/tasks/{leased['task_id']}/fail",
            headers={"X-API-Key": key},
            json={"lease_token": leased["lease_token"], "error": "HTTP 410 Gone", "retryable": False},
        )

        page.goto(cluster.url + "/ui")
        page.fill("#api_key", "not-the-key")
        page.click("#login")
        assert "not an admin API key" in page.inner_text("#login-error")
        page.fill("#api_key", ADMIN)
        page.click("#login")
        page.wait_for_selector("#count-pending")
        counts = cluster.get("/api/v1/tasks/status")["counts"]
        for status in ("pending", "assigned", "completed", "failed", "cancelled"):
            assert number(page, f"#count-{status}") == counts[status], status
        page.screenshot(path=str(ARTIFACTS / "dashboard-overview.png"), full_page=True)

        # A running job's progress advances on the page without a reload.
        job_id = cluster.job(origin, 1, 600, chunk_size=50)
        cluster.client("runner", "--concurrency", "4", "--exit-when-idle")
        page.wait_for_selector(f"tr[data-job='{job_id}']")
        seen = set()
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            seen.add(page.inner_text(f"tr[data-job='{job_id}'] .progress"))
            if "100.0%" in seen and len(seen) >= 3:
                break
            time.sleep(0.3)
        assert "100.0%" in seen and len(seen) >= 3, seen  # 0 % → … → 100 %, live
        page.wait_for_function("document.getElementById('count-documents').innerText === '600'")
        page.screenshot(path=str(ARTIFACTS / "dashboard-job-done.png"), full_page=True)

        # Retry the failed task through the page.
        click_until(
            page,
            f"tr[data-task='{doomed['task_id']}'] button[data-action='retry-task']",
            lambda: cluster.get(f"/api/v1/tasks/{doomed['task_id']}")["status"] != "failed",
        )

        # Cancel a job through the page: one no client is working on (the runner ran out of work
        # and left), so it cannot finish before the click lands.
        assert cluster.wait_clients(120) == [0]
        second = cluster.post(
            "/api/v1/jobs",
            {
                "source": "id_range",
                "chunk_size": 10,
                "params": {"url_template": origin.url + "/doc/{id}.bin", "start_id": 90_000, "count": 100},
            },
        )["job_id"]
        page.wait_for_selector(f"tr[data-job='{second}'] button[data-action='cancel-job']")
        page.on("dialog", lambda dialog: dialog.accept())
        click_until(
            page,
            f"tr[data-job='{second}'] button[data-action='cancel-job']",
            lambda: cluster.get(f"/api/v1/jobs/{second}")["counts"]["cancelled"] == 10,
        )

        # Pause a job and resume it through the page; its row says why it is paused.
        third = cluster.post(
            "/api/v1/jobs",
            {
                "source": "id_range",
                "chunk_size": 10,
                "params": {"url_template": origin.url + "/doc/{id}.bin", "start_id": 95_000, "count": 30},
            },
        )["job_id"]
        page.wait_for_selector(f"tr[data-job='{third}'] button[data-action='pause-job']")
        click_until(
            page,
            f"tr[data-job='{third}'] button[data-action='pause-job']",
            lambda: cluster.get(f"/api/v1/jobs/{third}")["paused"],
        )
        page.wait_for_selector(f"tr[data-job='{third}'] .paused")
        assert "paused by an operator" in page.inner_text(f"tr[data-job='{third}'] .paused")
        click_until(
            page,
            f"tr[data-job='{third}'] button[data-action='resume-job']",
            lambda: not cluster.get(f"/api/v1/jobs/{third}")["paused"],
        )

        # The origin the runner fetched from is in the hosts panel; pause and resume it there.
        host = origin.url.removeprefix("http://")
        page.wait_for_selector(f"#hosts tr[data-host='{host}']")
        click_until(
            page,
            f"#hosts tr[data-host='{host}'] button[data-action='pause-host']",
            lambda: cluster.get("/api/v1/hosts")["hosts"][0]["paused"],
        )
        click_until(
            page,
            f"#hosts tr[data-host='{host}'] button[data-action='resume-host']",
            lambda: not cluster.get("/api/v1/hosts")["hosts"][0]["paused"],
        )

        # A job's view: its state and its failed documents by reason.
        page.goto(f"{cluster.url}/ui?job={job_id}")
        page.wait_for_selector("#job-failures")
        assert page.inner_text("#job-state") == "running"
        assert "no failed documents" in page.inner_text("#job-failures")
        page.goto(cluster.url + "/ui")
        page.wait_for_selector("#count-pending")

        # Revoke a client's key through the page: the key stops, its row says so.
        worker_id = next(
            c["client_id"] for c in cluster.get("/api/v1/clients")["clients"] if c["client_name"] == "worker"
        )
        click_until(
            page,
            f"tr[data-client='{worker_id}'] button[data-action='revoke-client']",
            lambda: (
                httpx.post(cluster.url + "/api/v1/clients/heartbeat", headers={"X-API-Key": key}).status_code
                == 401
            ),
        )
        page.wait_for_selector(f"tr[data-client='{worker_id}'] td.revoked")

        # Find a task by id.
        page.fill("#task-search", doomed["task_id"])
        page.press("#task-search", "Enter")
        page.wait_for_selector("#task-status")
        assert page.inner_text("#task-status") in {"pending", "assigned", "failed", "completed"}
        page.screenshot(path=str(ARTIFACTS / "dashboard-task.png"), full_page=True)
    finally:
        page.close()
        origin.stop()


def test_actions_need_the_cookie_and_the_csrf_token(cluster: Cluster) -> None:
    job = cluster.post(
        "/api/v1/jobs",
        {
            "source": "id_range",
            "chunk_size": 10,
            "params": {"url_template": "http://h/{id}", "start_id": 1, "count": 10},
        },
    )["job_id"]
    with httpx.Client(base_url=cluster.url) as anonymous:
        assert anonymous.post("/ui/actions/cancel-job", json={"id": job}).status_code == 401
    with httpx.Client(base_url=cluster.url) as admin:
        r = admin.post("/ui/login", data={"api_key": ADMIN})
        assert r.status_code == 303
        cookie = r.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie and "path=/ui" in cookie
        forged = admin.post("/ui/actions/cancel-job", json={"id": job}, headers={"X-CSRF-Token": "0" * 64})
        assert forged.status_code == 403
        assert cluster.get(f"/api/v1/jobs/{job}")["counts"]["cancelled"] == 0
        page = admin.get("/ui").text
        token = page.split('name="csrf" content="')[1].split('"')[0]
        ok = admin.post("/ui/actions/cancel-job", json={"id": job}, headers={"X-CSRF-Token": token})
        assert ok.status_code == 200 and ok.json() == {"cancelled": 1}


def test_a_harvests_coverage_timeline(browser, cluster: Cluster) -> None:  # type: ignore[no-untyped-def]
    """A harvest's job view draws its windows on a timeline, placed by their days and coloured
    by state, and lists its gaps: a short month shows in its place, in its colour."""
    profile = {
        "base_url": "http://127.0.0.1:9",
        "search": {"url": "/", "dates": {"begin": "From", "end": "To", "format": "%d.%m.%Y"}},
        "results": {"links": "a", "id_pattern": r"/(?P<id>\d+)$"},
    }
    r = httpx.put(f"{cluster.url}/api/v1/sources/reg", headers=cluster.admin, json=profile, timeout=30)
    assert r.status_code == 201, r.text
    days = {"from": "2024-01-01", "to": "2024-12-31", "every": "month"}
    job = cluster.post("/api/v1/jobs", {"source": "reg", "partition": {"dates": days}})["job_id"]
    cluster.sql(
        "UPDATE harvest_windows SET state = 'complete', stated_total = 10, found = 10, stored = 10 "
        "WHERE date_from < '2024-06-01'"
    )
    cluster.sql(
        "UPDATE harvest_windows SET state = 'short', stated_total = 10, found = 10, stored = 7, failed = 3 "
        "WHERE date_from = '2024-06-01'"
    )
    page = browser.new_page(viewport={"width": 1300, "height": 1000})
    try:
        page.context.add_cookies([{"name": "docgate_admin", "value": ADMIN, "url": cluster.url}])
        page.goto(f"{cluster.url}/ui?job={job}")
        page.wait_for_selector("#coverage-timeline .tl-seg")
        states = page.eval_on_selector_all(
            "#coverage-timeline .tl-seg", "els => els.map(e => e.dataset.state)"
        )
        assert states == ["complete"] * 5 + ["short"] + ["pending"] * 6, states
        june = page.locator(".tl-seg[data-state=short]")
        box, bar = june.bounding_box(), page.locator("#coverage-timeline .tl").bounding_box()
        assert box is not None and bar is not None
        assert 0.40 < (box["x"] - bar["x"]) / bar["width"] < 0.43  # June starts 152 days into 366
        colour = june.evaluate("e => getComputedStyle(e).backgroundColor")
        assert colour == "rgb(240, 160, 32)", colour
        assert "2024-06-01..2024-06-30" in page.inner_text("#coverage-gaps")
        assert "7 of 10" in page.inner_text("#coverage-gaps")
        page.screenshot(path=str(ARTIFACTS / "dashboard-coverage.png"), full_page=True)
    finally:
        page.close()
