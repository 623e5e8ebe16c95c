"""Collections: two registries whose doc_ids overlap both complete, neither skips the other's
documents, and their keys do not collide; the default collection keeps the keys documents
always had (so existing data needs no change)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from cluster import Cluster, Origin
from docgate.origin import content_for

pytestmark = pytest.mark.timeout(240)


def job(origin: Origin, collection: str | None) -> dict[str, object]:
    body: dict[str, object] = {
        "source": "id_range",
        "chunk_size": 10,
        "params": {"url_template": origin.url + "/doc/{id}.bin", "start_id": 1, "count": 30, "ext": ".bin"},
    }
    if collection is not None:
        body["collection"] = collection
    return body


@pytest.mark.parametrize("collections", [("alpha", "beta"), (None, None)], ids=["two-collections", "control"])
def test_overlapping_ids_in_two_collections(
    tmp_path: Path, db_dsn: str, collections: tuple[str | None, str | None]
) -> None:
    small, large = Origin(tmp_path, "--size", "100"), Origin(tmp_path, "--size", "300")
    cluster = Cluster(tmp_path, db_dsn)
    try:
        first = cluster.post("/api/v1/jobs", job(small, collections[0]))["job_id"]
        cluster.client("one", "--exit-when-idle")
        assert cluster.wait_clients(120) == [0]
        second = cluster.post("/api/v1/jobs", job(large, collections[1]))["job_id"]
        cluster.clients.clear()
        cluster.client("two", "--exit-when-idle")
        assert cluster.wait_clients(120) == [0]
        rows = cluster.sql("SELECT collection, doc_id, storage_key, size FROM documents ORDER BY 1, 2")
        if collections[0] is None:  # one namespace: the second registry's documents are skipped
            assert len(rows) == 30 and {r["size"] for r in rows} == {100}
            assert cluster.get(f"/api/v1/jobs/{second}")["documents_skipped"] == 30
            assert rows[0]["storage_key"] == "0/1.bin"  # the keys documents always had
            return
        assert len(rows) == 60
        for name, origin_size, job_id in (("alpha", 100, first), ("beta", 300, second)):
            mine = [r for r in rows if r["collection"] == name]
            assert len(mine) == 30 and all(r["storage_key"] == f"{name}/0/{r['doc_id']}.bin" for r in mine)
            assert all(r["size"] == origin_size for r in mine)
            assert cluster.get(f"/api/v1/jobs/{job_id}")["collection"] == name
            body = (cluster.store / name / "0" / "7.bin").read_bytes()
            assert body == content_for("7", origin_size)
            doc = cluster.get(f"/api/v1/documents/7?collection={name}")
            assert doc["collection"] == name and doc["size"] == origin_size
            raw = httpx.get(f"{cluster.url}/api/v1/documents/7/raw?collection={name}", headers=cluster.admin)
            assert raw.content == content_for("7", origin_size)
        missing = httpx.get(f"{cluster.url}/api/v1/documents/7", headers=cluster.admin, timeout=10)
        assert missing.status_code == 404  # not in the default collection
    finally:
        cluster.stop()
        small.stop()
        large.stop()


def test_a_report_outside_the_tasks_collection_is_refused(tmp_path: Path, db_dsn: str) -> None:
    """A client holding a task of collection alpha cannot record a document under beta/ (nor
    under the default collection's keys): 422 wrong_storage_key, and nothing is recorded."""
    cluster = Cluster(tmp_path, db_dsn)
    try:
        params = {"urls": [{"doc_id": "5", "url": "http://registry.example/5"}]}
        cluster.post("/api/v1/tasks/create", {"source": "urls", "params": params, "collection": "alpha"})
        key = cluster.register("liar")
        leased = httpx.post(
            cluster.url + "/api/v1/tasks/request", headers={"X-API-Key": key}, timeout=10
        ).json()
        assert leased["collection"] == "alpha"
        for wrong in ("beta/0/5", "0/5"):
            doc = {"doc_id": "5", "status": "stored", "storage_key": wrong, "sha256": "0" * 64, "size": 1}
            r = httpx.post(
                f"{cluster.url}/api/v1/tasks/{leased['task_id']}/progress",
                headers={"X-API-Key": key},
                json={"lease_token": leased["lease_token"], "documents": [doc]},
                timeout=10,
            )
            assert (r.status_code, r.json()["code"]) == (422, "wrong_storage_key"), r.text
        assert cluster.sql("SELECT count(*) AS n FROM documents")[0]["n"] == 0
        bad = httpx.post(
            cluster.url + "/api/v1/tasks/create",
            headers=cluster.admin,
            json={"source": "urls", "params": params, "collection": "Not Valid"},
            timeout=10,
        )
        assert (bad.status_code, bad.json()["code"]) == (422, "invalid_field")
    finally:
        cluster.stop()
