"""Rules for documents reported by clients, checked before anything is written."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from protocol import v1
from protocol.scope import TaskScope
from server.errors import NotInTask, WrongStorageKey
from storage import names_a_store
from storage.errors import KeyRefused
from storage.keys import GZIP_EXT, collection_of, document_key, ext_of, unversioned


@dataclass(frozen=True)
class Reports:
    """A report's documents, checked: those to record (stored, or skipped with proof; their
    storage_url filled in) and those that failed."""

    recorded: list[v1.DocumentReport]
    failed: list[v1.DocumentReport]
    warc: v1.WarcReport | None = None
    warc_url: str = ""  # where the WARC is, in the gate's naming of the store
    checked: list[v1.DocumentReport] = field(default_factory=list)  # a check task's (server/db/verify.py)

    def __bool__(self) -> bool:
        return bool(self.recorded or self.failed or self.warc or self.checked)


NO_REPORTS = Reports([], [])


def split_reports(
    documents: list[v1.DocumentReport], shard_size: int, store_url: str, warc: v1.WarcReport | None = None
) -> Reports:
    """Documents to record (stored, or skipped with proof) and failures; refuse any wrong key,
    and a WARC that claims documents the report does not record."""
    warc_url = f"{store_url.rstrip('/')}/{warc.storage_key}" if warc is not None else ""
    reports = Reports([], [], warc, warc_url)
    for doc in documents:
        if doc.status is v1.DocumentStatus.FAILED:
            reports.failed.append(doc)
        elif doc.status is v1.DocumentStatus.CHECKED:
            reports.checked.append(doc)
        elif doc.storage_key is not None and doc.sha256 is not None and doc.size is not None:
            reports.recorded.append(_recorded(doc, shard_size, store_url))
    if warc is not None:
        stray = set(map(str, warc.doc_ids)) - {str(d.doc_id) for d in reports.recorded}
        if stray:
            shown = ", ".join(sorted(stray)[:5])
            raise WrongStorageKey(
                f"the WARC {warc.storage_key} names documents this report does not record: {shown}"
            )
    return reports


def _recorded(doc: v1.DocumentReport, shard_size: int, store_url: str) -> v1.DocumentReport:
    doc_id, full = str(doc.doc_id), doc.storage_key or ""
    # A new version goes beside the first (storage.keys.version_key); an unchanged one names
    # the key of whichever version is current.
    key, version = unversioned(full)
    if doc.status is not v1.DocumentStatus.UNCHANGED and version != (doc.version or 1):
        raise WrongStorageKey(
            f"storage_key {full!r} is not the key of version {doc.version or 1} of doc_id {doc_id!r}"
        )
    ext = ext_of(key, doc_id)
    try:
        expected = document_key(
            doc_id,
            (ext or "").removesuffix(GZIP_EXT),
            shard_size=shard_size,
            compressed=doc.compressed,
            collection=collection_of(key),  # checked against the task's collection when recorded
        )
    except KeyRefused as exc:
        raise WrongStorageKey(exc.message) from None
    if ext is None or key != expected:
        gz = ", ending in .gz when compressed" if doc.compressed else ""
        raise WrongStorageKey(
            f"storage_key {key!r} is not the key for doc_id {doc_id!r}: expected {expected!r} "
            f"(<doc_id // {shard_size}>/<doc_id><ext>{gz})"
        )
    url = doc.storage_url or f"{store_url.rstrip('/')}/{full}"
    if not names_a_store(url) or not url.endswith("/" + full) and url != f"gate:{full}":
        raise WrongStorageKey(f"storage_url must be a store URL ending in /{full}")
    return doc if doc.storage_url == url else doc.model_copy(update={"storage_url": url})


def check_in_task(
    task: Any,
    doc_ids: list[str],
    reports: Sequence[v1.DocumentReport] = (),
    profile: dict[str, Any] | None = None,
) -> None:
    """Refuse documents the task (anything with task_id, source and params, as a row has them;
    `profile`, the stored profile it names) does not contain, or whose URL is not on the task's
    hosts: a client stores and reports only documents of the task it holds."""
    scope = TaskScope.of_stored(task["source"], task["params"] or {}, profile)
    stray = [d for d in doc_ids if scope.contains(d) is False]
    if stray:
        more = f" and {len(stray) - 5} more" if len(stray) > 5 else ""
        shown = ", ".join(repr(d) for d in stray[:5]) + more
        raise NotInTask(
            f"task {task['task_id']} ({task['source']}) has no document {shown}; nothing was changed"
        )
    elsewhere = [d for d in reports if not scope.on_origin(d.url)]
    if elsewhere:
        first = elsewhere[0]
        hosts = ", ".join(sorted(scope.hosts or ()))
        raise NotInTask(
            f"document {first.doc_id!r} of task {task['task_id']} was reported from {first.url!r}, "
            f"which is not on the task's hosts ({hosts}); nothing was changed"
        )
