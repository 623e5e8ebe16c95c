"""Deliberately broken gates and clients, for the checker's negative controls.

    python variants.py VARIANT docgate-arguments…

Each variant patches one guarantee away, then runs `docgate` as usual:

- no-fence: completion, progress and fail ignore the lease token (and the status)
- eager-reaper: the reaper expires every lease as soon as it sees it, heartbeats or not
- no-reaper: expired leases are never reaped
- blocking: the gate blocks its event loop for 200 ms on every heartbeat
- temp-key: the client records a staging key for every 25th document and the gate accepts it
  (give it to both the gate and the client)
- overwrite: the client overwrites every 20th document after recording it (no write-once fence)
- liar: the client also sends reports the gate must refuse (documents outside its task, reports
  on tasks it does not hold)
- wrong-bytes, phantom, cut-short: the client lies about the bytes of a third of its documents
  (their doc_id a multiple of 3), with reports the gate cannot tell from true ones: it stores
  other bytes and reports their sha256; it reports documents it never fetched nor stored; it
  stores the first half and reports the whole document's sha256 and size. Only other clients'
  checks (a job's verify_sample) find them out.
- honest: nothing is patched (the control of the controls)
"""

from __future__ import annotations

import sys
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def no_fence() -> None:
    from server.db import lifecycle

    # Every parameter still appears (asyncpg infers their types), none of them fences.
    loose = (
        "task_id = $1 AND ($2::uuid IS NULL OR $2::uuid IS NOT NULL)"
        " AND ($3::uuid IS NULL OR $3::uuid IS NOT NULL) AND ($4::text IS NULL OR $4::text IS NOT NULL)"
    )
    for name in ("COMPLETE", "PROGRESS", "FAIL"):
        setattr(lifecycle, name, getattr(lifecycle, name).replace(lifecycle.FENCE, loose))


def no_membership() -> None:
    """A gate that records whatever a client reports, in its task or not (the liar's control)."""
    from server.db import documents, lifecycle

    documents.check_in_task = lifecycle.check_in_task = lambda *_: None  # type: ignore[assignment]


def eager_reaper() -> None:
    from server.db import lifecycle

    soon = "lease_expires_at <= now() + interval '1 day'"
    lifecycle.REAP = lifecycle.REAP.replace("lease_expires_at <= now()", soon)


def no_reaper() -> None:
    from server.db import lifecycle

    lifecycle.REAP = lifecycle.REAP.replace("lease_expires_at <= now()", "false")


def blocking() -> None:
    from server.db import clients

    real = clients.heartbeat

    async def heartbeat(*args: Any, **kwargs: Any) -> Any:
        time.sleep(0.2)
        return await real(*args, **kwargs)

    clients.heartbeat = heartbeat  # type: ignore[assignment]


def temp_key() -> None:
    from client.gate import GateAPI
    from server.domain import reports as documents

    def recorded(doc: Any, shard_size: int, store_url: str) -> Any:
        key = doc.storage_key or ""
        return doc.model_copy(update={"storage_url": f"{store_url.rstrip('/')}/{key}"})

    documents._recorded = recorded  # type: ignore[attr-defined]

    def staged(docs: list[Any]) -> list[Any]:
        out = []
        for doc in docs:
            doc_id = str(doc.doc_id)
            if doc.status == "stored" and doc_id.isdigit() and int(doc_id) % 25 == 0:
                key = f".docgate-staging/{uuid.uuid4().hex}"
                doc = doc.model_copy(update={"storage_key": key, "storage_url": None})
            out.append(doc)
        return out

    progress, complete = GateAPI.progress, GateAPI.complete

    # Whatever else the client passes (a summary, a WARC, a listing) goes through as it came.
    async def progress_(self: GateAPI, task: Any, counts: Any, docs: Any, *rest: Any, **named: Any) -> Any:
        return await progress(self, task, counts, staged(docs), *rest, **named)

    async def complete_(self: GateAPI, task: Any, counts: Any, docs: Any, *rest: Any, **named: Any) -> Any:
        return await complete(self, task, counts, staged(docs), *rest, **named)

    GateAPI.progress, GateAPI.complete = progress_, complete_  # type: ignore[method-assign]


def overwrite() -> None:
    from storage.s3 import S3Storage

    real = S3Storage.put

    async def put(self: S3Storage, key: str, chunks: Any, options: Any = None) -> Any:
        stored = await real(self, key, chunks, options)
        name = key.rsplit("/", 1)[-1].split(".")[0]
        if name.isdigit() and int(name) % 20 == 0:  # a late writer with other bytes, unfenced
            await self._call("put_object", Key=self.prefix + key, Body=b"not what was published")
        return stored

    S3Storage.put = put  # type: ignore[method-assign]


def liar() -> None:
    """A client that lies on purpose while it works honestly: before every other progress report it
    sends one lie as a report of its own — a document its task does not contain, with a made-up
    sha256, or a report on a task it does not hold — and logs what the gate made of it."""
    import hashlib
    import logging
    import random

    from client.errors import ClientError
    from client.gate import GateAPI
    from protocol import v1

    log = logging.getLogger("docgate.client.liar")
    real = GateAPI.progress
    told = [0]

    def stray(task: Any) -> v1.DocumentReport:
        doc_id = str(900_000_000 + random.randrange(1_000_000))  # no chaos job reaches these ids
        fake = v1.StoredDocument(
            storage_key=f"{int(doc_id) // 50_000}/{doc_id}.bin",
            storage_url=f"s3://planted/{int(doc_id) // 50_000}/{doc_id}.bin",
            sha256=hashlib.sha256(doc_id.encode()).hexdigest(),
            size=len(doc_id),
        )
        return v1.DocumentReport.of_stored(doc_id, fake, url=None, status=v1.DocumentStatus.STORED)

    real_complete = GateAPI.complete

    async def lie(self: GateAPI, task: Any, counts: Any) -> None:
        told[0] += 1
        if told[0] % 2:
            return
        if told[0] % 4 == 0:
            what, target = "outside its task", task
        else:
            what, target = "on a task it does not hold", task.model_copy(update={"task_id": uuid.uuid4()})
        try:
            await real(self, target, counts, [stray(task)])
        except ClientError as exc:
            log.warning("LIE refused (%s): %s", what, exc.message[:80])
        else:
            log.warning("LIE ACCEPTED (%s)", what)

    # Whatever else the client passes (a WARC, a listing) goes through as it came: a wrapper
    # that named fewer arguments failed every report with a TypeError before it could lie.
    async def progress(self: GateAPI, task: Any, counts: Any, *rest: Any, **named: Any) -> Any:
        await lie(self, task, counts)
        return await real(self, task, counts, *rest, **named)

    async def complete(self: GateAPI, task: Any, counts: Any, *rest: Any, **named: Any) -> Any:
        await lie(self, task, counts)
        return await real_complete(self, task, counts, *rest, **named)

    GateAPI.progress, GateAPI.complete = progress, complete  # type: ignore[method-assign]


def _lies_about(key: str) -> str | None:
    """The doc_id of a document key (a version's too) when it is one a byte liar lies about."""
    doc_id = key.rsplit("/", 1)[-1].split(".")[0]
    return doc_id if doc_id.isdigit() and int(doc_id) % 3 == 0 else None


def _byte_liar(kind: str, written: Any, whole: bool) -> None:
    """A store whose put, for the documents it lies about, writes `written(data)` instead, and
    reports the sha256 and size of what it wrote, or (`whole`) of the document it was given."""
    import hashlib
    import logging

    from storage.base import from_bytes
    from storage.s3 import S3Storage

    log = logging.getLogger("docgate.client.liar")
    real = S3Storage.put

    async def put(self: S3Storage, key: str, chunks: Any, options: Any = None) -> Any:
        doc_id = _lies_about(key)
        if doc_id is None:
            return await real(self, key, chunks, options)
        data = b"".join([bytes(chunk) async for chunk in chunks])
        stored = await real(self, key, from_bytes(written(data)), options)
        log.warning("BYTE LIE %s %s", kind, doc_id)
        if not whole:
            return stored
        return stored.model_copy(update={"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)})

    S3Storage.put = put  # type: ignore[method-assign]


def wrong_bytes() -> None:
    _byte_liar("wrong-bytes", lambda data: b"planted " + data[8:], whole=False)


def cut_short() -> None:
    _byte_liar("cut-short", lambda data: data[: len(data) // 2], whole=True)


def phantom() -> None:
    """Reports a third of its documents stored, with a made-up sha256, and never fetches them."""
    import hashlib
    import logging

    from client.document import DocumentStep
    from client.run import Kind, Outcome
    from protocol import v1

    log = logging.getLogger("docgate.client.liar")
    real = DocumentStep.run

    async def run(self: DocumentStep, task: Any, ref: Any, absent: bool = False) -> Any:
        if ref.seen is not None or _lies_about(f"{ref.doc_id}{ref.ext}") is None:
            return await real(self, task, ref, absent)
        key = self.key(task, ref)
        made_up = v1.StoredDocument(
            storage_key=key, storage_url=self.store.url_for(key),
            sha256=hashlib.sha256(b"never fetched " + ref.doc_id.encode()).hexdigest(), size=4096,
        )  # fmt: skip
        log.warning("BYTE LIE phantom %s", ref.doc_id)
        report = v1.DocumentReport.of_stored(
            ref.doc_id, made_up, url=ref.url, status=v1.DocumentStatus.STORED
        )
        return Outcome(Kind.STORED, ref, report, size=made_up.size)

    DocumentStep.run = run  # type: ignore[method-assign]


BYTE_LIARS = ("wrong-bytes", "phantom", "cut-short")
VARIANTS = {
    "liar": liar,
    "wrong-bytes": wrong_bytes,
    "phantom": phantom,
    "cut-short": cut_short,
    "no-membership": no_membership,
    "no-fence": no_fence,
    "eager-reaper": eager_reaper,
    "no-reaper": no_reaper,
    "blocking": blocking,
    "temp-key": temp_key,
    "overwrite": overwrite,
    "honest": lambda: None,
}

if __name__ == "__main__":
    VARIANTS[sys.argv[1]]()
    from docgate.cli import main

    sys.exit(main(sys.argv[2:]))
