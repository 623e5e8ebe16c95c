"""Long-polls against a real gate process: a client that goes away mid-wait takes no work with it."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from cluster import Cluster


def test_a_long_poll_whose_client_left_leases_nothing(db_dsn: str, tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, db_dsn, POLL_FALLBACK_SECONDS="0.5")
    try:
        gone, stays = cluster.register("gone"), cluster.register("stays")
        url = urlsplit(cluster.url)
        sock = socket.create_connection((url.hostname, url.port))
        sock.sendall(
            f"POST /api/v1/tasks/request?wait=30 HTTP/1.1\r\nHost: {url.netloc}\r\n"
            f"X-API-Key: {gone}\r\nContent-Length: 0\r\n\r\n".encode()
        )
        time.sleep(1.0)  # it waits: nothing to lease
        sock.close()
        time.sleep(1.5)  # the gate checks a waiting client every POLL_FALLBACK_SECONDS
        task = cluster.post("/api/v1/tasks/create", {"search_params": {"q": "x"}})
        r = httpx.post(cluster.url + "/api/v1/tasks/request?wait=5", headers={"X-API-Key": stays}, timeout=30)
        assert r.status_code == 200, r.text
        assert r.json()["task_id"] == task["task_id"]
        (row,) = cluster.sql("SELECT count(*) AS n FROM task_events WHERE event = 'leased'")
        assert row["n"] == 1
    finally:
        cluster.stop()
