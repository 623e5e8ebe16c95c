"""Soft blocks: answers that are not the document, though they look like one.

The origins here misbehave the way registries and their front ends are documented to:
- a "too many requests" text served with status 200 and the document's own content type, short
  (the seed's registry, and issue reports of registries behind rate limiters, answer so);
- Cloudflare's challenge page: `cf-mitigated: challenge` on a 403 (Cloudflare's "Detect a
  Challenge Page response": the header is set on every challenge page, whatever its type);
- a plain 403 while the fleet is blocked, which `block_statuses` says is a block, not a 404;
- a search listing whose throttled pages come back empty, with status 200, mid-listing.
Each is checked with its negative control: without the rule, the same answer is stored as the
document, fails the document for good, or ends the listing early.
"""

from __future__ import annotations

import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from cluster import Cluster

pytestmark = pytest.mark.timeout(300)
BLOCK_TEXT = b"Too Many Requests. Please slow down and try again later."


def document(path: str) -> bytes:
    return b"%PDF-1.7\n" + (path.encode() + b"\n") * 100


Answer = tuple[int, dict[str, str], bytes]


class Origin(BaseHTTPRequestHandler):
    """Answers each GET with `answer(path, times this path was asked)`."""

    protocol_version = "HTTP/1.1"
    answer: Callable[[str, int], Answer]
    asked: Counter[str]
    lock: threading.Lock

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        with self.lock:
            self.asked[self.path] += 1
            n = self.asked[self.path]
        status, headers, body = type(self).answer(self.path, n)
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def serve() -> Iterator[Callable[[Callable[[str, int], Answer]], tuple[str, Counter[str]]]]:
    servers: list[ThreadingHTTPServer] = []

    def start(answer: Callable[[str, int], Answer]) -> tuple[str, Counter[str]]:
        asked: Counter[str] = Counter()
        handler = type(
            "O", (Origin,), {"answer": staticmethod(answer), "asked": asked, "lock": threading.Lock()}
        )
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}", asked

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


PDF = {"Content-Type": "application/pdf"}
# Half of every document's answers are blocks here: the dead-man switches would (rightly) pause.
NO_SWITCHES = {"HOST_PAUSE_MIN_ANSWERS": "100000", "JOB_PAUSE_MIN_ANSWERS": "100000"}


def run(cluster: Cluster, job: dict[str, Any], clients: int = 2) -> str:
    job_id = str(cluster.post("/api/v1/jobs", job)["job_id"])
    for i in range(clients):
        cluster.client(f"c{i}", "--exit-when-idle", "--concurrency", "8")
    assert cluster.wait_clients(200) == [0] * clients
    return job_id


def stored(cluster: Cluster) -> dict[str, bytes]:
    return {p.stem: p.read_bytes() for p in cluster.store.rglob("*.pdf")}


@pytest.mark.parametrize("rules", [True, False], ids=["with-rules", "control"])
def test_a_short_too_many_requests_text_is_a_block_not_the_document(
    tmp_path: Path, db_dsn: str, serve: Any, rules: bool
) -> None:
    """Every document is first answered with the block text (status 200, application/pdf), then
    with itself. With `block_patterns` and `min_size` on the job none of the texts is stored,
    every document ends whole, and the host counted the blocks; the control, without the rules,
    archives the block text as the document."""

    def answer(path: str, n: int) -> Answer:
        return (200, PDF, BLOCK_TEXT) if n == 1 else (200, PDF, document(path))

    url, asked = serve(answer)
    params: dict[str, Any] = {
        "url_template": url + "/doc/{id}.pdf",
        "start_id": 1,
        "count": 40,
        "ext": ".pdf",
    }
    if rules:
        params |= {"block_patterns": ["too many requests"], "min_size": 200}
    cluster = Cluster(tmp_path, db_dsn, HOST_RATE_LIMIT="0", **NO_SWITCHES)
    try:
        run(cluster, {"source": "id_range", "chunk_size": 10, "max_attempts": 5, "params": params})
        files = stored(cluster)
        assert len(files) == 40
        if rules:
            assert all(body == document(f"/doc/{doc}.pdf") for doc, body in files.items())
            assert all(asked[f"/doc/{i}.pdf"] == 2 for i in range(1, 41))
            (host,) = cluster.get("/api/v1/hosts")["hosts"]
            assert host["blocked"] == 40
        else:
            assert all(body == BLOCK_TEXT for body in files.values())  # what the rules prevent
    finally:
        cluster.stop()


@pytest.mark.parametrize("rules", [True, False], ids=["with-rules", "control"])
def test_challenges_and_block_statuses_are_tried_again_not_failed(
    tmp_path: Path, db_dsn: str, serve: Any, rules: bool
) -> None:
    """Odd ids first get Cloudflare's challenge (403 with cf-mitigated: challenge), even ids a
    plain 403 three times; then the document. The challenge header is a block by default; the plain 403 is
    one only with `block_statuses: [403]`. Without it (control) the even documents fail for good
    as HTTP 403, and the job's failures say so, grouped by reason."""

    def answer(path: str, n: int) -> Answer:
        doc = int(re.findall(r"\d+", path)[0])
        if n == 1 and doc % 2:
            page = b"<!DOCTYPE html><title>Just a moment...</title>"
            return 403, {"Content-Type": "text/html", "cf-mitigated": "challenge"}, page
        if n <= 3 and not doc % 2:  # a block that lasts a while
            return 403, {"Content-Type": "text/plain"}, b"Forbidden"
        return 200, PDF, document(path)

    url, _ = serve(answer)
    params: dict[str, Any] = {
        "url_template": url + "/doc/{id}.pdf",
        "start_id": 1,
        "count": 20,
        "ext": ".pdf",
    }
    if rules:
        params["block_statuses"] = [403]
    cluster = Cluster(tmp_path, db_dsn, HOST_RATE_LIMIT="0", **NO_SWITCHES)
    try:
        job_id = run(cluster, {"source": "id_range", "chunk_size": 10, "max_attempts": 5, "params": params})
        files = stored(cluster)
        odd = {str(i) for i in range(1, 21, 2)}
        assert odd <= set(files)  # the challenge is a block either way
        assert all(files[d] == document(f"/doc/{d}.pdf") for d in files)
        summary = cluster.get(f"/api/v1/jobs/{job_id}/failures")
        if rules:
            assert len(files) == 20 and summary["documents"] == 0
        else:
            assert set(files) == odd
            (reason,) = summary["reasons"]
            assert reason["code"] == "forbidden" and reason["documents"] == 10
            assert reason["examples"][0]["error"].startswith("HTTP 403")
            assert len(reason["examples"]) == 3 and reason["examples"][0]["url"].startswith(url)
    finally:
        cluster.stop()


def listing_origin(pages: list[int], empty_once: int | None) -> Callable[[str, int], Answer]:
    """A registry's search: page p lists pages[p-1] links to /decision/<id>.pdf, pages past the
    end are empty; with `empty_once`, that page comes back empty the first time it is asked for
    (status 200), as a throttled registry's results do."""
    first = [sum(pages[:i]) for i in range(len(pages))]

    def answer(path: str, n: int) -> Answer:
        if path.startswith("/decision/"):
            return 200, PDF, document(path)
        page = int(re.findall(r"\d+", path)[0])
        links = b""
        if page <= len(pages) and not (page == empty_once and n == 1):
            ids = range(first[page - 1] + 1, first[page - 1] + pages[page - 1] + 1)
            links = b"".join(b'<a href="/decision/%d.pdf">decision %d</a>\n' % (i, i) for i in ids)
        html = b"<html><body><table>" + links + b"</table></body></html>"
        return 200, {"Content-Type": "text/html; charset=utf-8"}, html

    return answer


@pytest.mark.parametrize(
    ("pages", "empty_once", "params", "documents", "attempts"),
    [
        # The empty page after two full ones is a block: tried again. The listing's true end
        # (page 5) is empty after full pages too: believed when the next attempt meets it again.
        ([5, 5, 5, 5], 3, {}, 20, 3),
        ([5, 5, 5, 5], 3, {"empty_page": "end"}, 10, 1),  # control: taken for the end
        ([5, 5, 3], None, {}, 13, 1),  # a short last page, then empty: the clean end
        ([5], 2, {}, 5, 1),  # one page tells nothing about page size: the end
        ([5, 5, 3], 2, {"page_size": 5}, 13, 2),  # with page_size, one full page is enough
        ([5, 5, 3], None, {"page_size": 5}, 13, 1),  # and a short page is the last one asked for
    ],
)
def test_an_empty_listing_page_mid_listing_is_a_block(
    tmp_path: Path,
    db_dsn: str,
    serve: Any,
    pages: list[int],
    empty_once: int | None,
    params: dict[str, Any],
    documents: int,
    attempts: int,
) -> None:
    url, asked = serve(listing_origin(pages, empty_once))
    cluster = Cluster(tmp_path, db_dsn, HOST_RATE_LIMIT="0")
    try:
        task = {
            "source": "search",
            "max_documents": 100,
            "max_attempts": 3,
            "params": {
                "listing_url": url + "/search/Page/{page}",
                "link_pattern": r'href="(?P<url>/decision/(?P<id>\d+)(?P<ext>\.pdf))"',
            }
            | params,
        }
        task_id = cluster.post("/api/v1/tasks/create", task)["task_id"]
        cluster.client("searcher", "--exit-when-idle", "--concurrency", "4")
        assert cluster.wait_clients(120) == [0]
        done = cluster.get(f"/api/v1/tasks/{task_id}")
        assert done["status"] == "completed", done
        assert done["attempts"] == attempts, done
        recorded = cluster.sql("SELECT count(*) AS n FROM documents")[0]["n"]
        assert recorded == documents == len(list(cluster.store.rglob("*.pdf")))
        after = f"/search/Page/{len(pages) + 1}"
        if params.get("page_size", 0) > pages[-1]:  # the last page is short: nothing past it asked
            assert asked[after] == 0, asked
        elif not params:
            assert asked[after] >= 1, asked  # the control: without page_size, the empty page tells the end
    finally:
        cluster.stop()


def test_a_jobs_politeness_holds_its_hosts_across_the_fleet(tmp_path: Path, db_dsn: str, serve: Any) -> None:
    """No host budget at all (HOST_RATE_LIMIT=0), three clients of 8 connections each: the job's
    `politeness` of 5 requests per second holds the fleet to it (a burst of a token per client at
    most); the control job, without politeness, runs several times faster on the same fleet."""
    times: list[float] = []
    lock = threading.Lock()

    def answer(path: str, n: int) -> Answer:
        with lock:
            times.append(time.monotonic())
        time.sleep(0.02)
        return 200, PDF, document(path)

    url, _ = serve(answer)
    cluster = Cluster(tmp_path, db_dsn, HOST_RATE_LIMIT="0")
    try:
        for polite in (True, False):
            time.sleep(4)  # the clients before hold their grants (and caps) for valid_seconds
            times.clear()
            params = {
                "url_template": url + "/doc/{id}.pdf",
                "start_id": 1 if polite else 1001,
                "count": 60,
                "ext": ".pdf",
            }
            job: dict[str, Any] = {"source": "id_range", "chunk_size": 20, "params": params}
            if polite:
                job["politeness"] = {"requests_per_second": 5}
            cluster.clients.clear()
            run(cluster, job, clients=3)
            start, end = times[0] + 2.0, times[-1]
            busiest = max(sum(1 for t in times if s <= t < s + 2.0) for s in _steps(start, end - 2.0))
            if polite:
                assert busiest <= 2 * 5 + 4, f"{busiest} requests in 2 s under a 5/s politeness"
                assert len(times) / (times[-1] - times[0]) >= 3.0
            else:
                assert len(times) / max(times[-1] - times[0], 0.1) > 15  # the control is not held
        job_params = cluster.sql("SELECT params FROM tasks WHERE (params->>'start_id')::int < 1000 LIMIT 1")
        assert '"politeness"' in job_params[0]["params"]
    finally:
        cluster.stop()


def _steps(start: float, end: float) -> list[float]:
    out, t = [], start
    while t <= end:
        out.append(t)
        t += 0.25
    return out or [start]


def test_a_captcha_wall_pauses_the_job_by_itself(tmp_path: Path, db_dsn: str, serve: Any) -> None:
    """Acceptance 3, the job's switch: halfway, every answer is a captcha page with status 200.
    None is stored; the job pauses by itself (the host's own switch set out of reach here) within
    a bounded number of answers and says why, in the API, /metrics and the dashboard's data; no
    more of its tasks are leased; once the origin recovers and an operator resumes the job, it
    completes with every document whole."""
    wall = threading.Event()
    served = Counter[str]()

    def answer(path: str, n: int) -> Answer:
        served["all"] += 1
        if served["all"] == 60:
            wall.set()
        if wall.is_set():
            page = b"<!DOCTYPE html><html><body>Please prove you are human: captcha</body></html>"
            return 200, {"Content-Type": "text/html; charset=utf-8"}, page
        return 200, PDF, document(path)

    url, _ = serve(answer)
    cluster = Cluster(
        # No host budget: the wall's blocks would halve it down to its floor, and the climb back
        # after the resume is slow on purpose (test_politeness covers the host's side).
        tmp_path,
        db_dsn,
        HOST_RATE_LIMIT="0",
        HOST_PAUSE_MIN_ANSWERS="100000",
        JOB_PAUSE_MIN_ANSWERS="20",
    )
    try:
        params = {"url_template": url + "/doc/{id}.pdf", "start_id": 1, "count": 200, "ext": ".pdf"}
        job_id = cluster.post(
            "/api/v1/jobs", {"source": "id_range", "chunk_size": 10, "max_attempts": 20, "params": params}
        )["job_id"]
        for i in range(2):
            cluster.client(f"walled-{i}", "--exit-when-idle", "--concurrency", "8")
        deadline = time.monotonic() + 120
        job = cluster.get(f"/api/v1/jobs/{job_id}")
        while not job["paused"] and time.monotonic() < deadline:
            time.sleep(0.2)
            job = cluster.get(f"/api/v1/jobs/{job_id}")
        assert job["paused"] and "paused by itself" in job["paused_reason"], job
        walled = served["all"] - 60
        print(f"{walled} captcha pages before the job paused")
        assert walled < 200, f"{walled} captcha pages served before the job paused"
        time.sleep(4)  # the tasks out on lease finish; nothing more is leased
        settled = served["all"]
        time.sleep(3)
        assert served["all"] - settled <= 10, "the fleet kept fetching for a paused job"
        metrics = httpx.get(cluster.url + "/metrics", timeout=10).text
        assert "docgate_jobs_paused 1.0" in metrics
        assert re.search(
            r'docgate_host_answers_total\{host="127\.0\.0\.1:\d+",outcome="blocked"\} [1-9]', metrics
        )
        stats = cluster.get("/api/v1/stats")
        assert any(j["job_id"] == job_id and j["paused"] for j in stats["jobs"])

        wall.clear()  # the registry lets the fleet in again; the operator resumes the job
        resumed = cluster.post(f"/api/v1/jobs/{job_id}/resume")
        assert not resumed["paused"]
        assert cluster.wait_clients(200) == [0, 0]
        rows = cluster.sql("SELECT doc_id FROM documents")
        assert len(rows) == 200
        files = stored(cluster)
        assert len(files) == 200 and all(body == document(f"/doc/{d}.pdf") for d, body in files.items())
    finally:
        cluster.stop()
