"""Sharded document keys, shared by the client, the gate and the CLI.

Integer ids (digits, no leading zero): ``<doc_id // SHARD_SIZE>/<doc_id><ext>``,
so 3697692 with ``.tzb`` is ``73/3697692.tzb``.

Other ids must match ``[A-Za-z0-9._-]{1,128}`` (and not be ``.`` or ``..``);
they are sharded by hash: ``h<first 3 hex digits of sha256(doc_id)>/<doc_id><ext>``
(4,096 shards), e.g. ``report-7.pdf`` with ``.pdf`` → ``h3a1/report-7.pdf.pdf``.
The ``h`` keeps hash shards apart from numeric ones.

A compressed document's key ends in ``<ext>.gz``. A revisit's later versions of a document
(version 2, 3, …) are stored beside its first, in a folder named for it:
``73/3697692.tzb.v2/3697692.tzb``; the first keeps its key for ever (keys are written once).
A key never starts with
``/``, never contains ``..`` or ``.``, and its parts use only ``[A-Za-z0-9._-]``,
so no key can leave the store's root.
"""

from __future__ import annotations

import hashlib
import re

from storage.errors import KeyRefused

DEFAULT_SHARD_SIZE = 50_000
DOC_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")
EXT = re.compile(r"(\.[A-Za-z0-9]{1,16}){0,2}")
INTEGER_ID = re.compile(r"0|[1-9][0-9]{0,18}")
PART = re.compile(r"[A-Za-z0-9._-]{1,255}")
GZIP_EXT = ".gz"


def check_doc_id(doc_id: str | int) -> str:
    text = str(doc_id)
    if not DOC_ID.fullmatch(text) or text in {".", ".."}:
        raise KeyRefused(f"doc_id {text[:140]!r} must be an integer or match [A-Za-z0-9._-]{{1,128}}")
    return text


def check_ext(ext: str) -> str:
    if not EXT.fullmatch(ext):
        raise KeyRefused(f"extension {ext[:40]!r} must look like .tzb or .html.gz")
    return ext


def shard_of(doc_id: str, shard_size: int = DEFAULT_SHARD_SIZE) -> str:
    if INTEGER_ID.fullmatch(doc_id):
        return str(int(doc_id) // shard_size)
    return "h" + hashlib.sha256(doc_id.encode()).hexdigest()[:3]


def document_key(
    doc_id: str | int,
    ext: str = "",
    *,
    shard_size: int = DEFAULT_SHARD_SIZE,
    compressed: bool = False,
    collection: str = "",
) -> str:
    """The one key a document may be stored and recorded under: `<shard>/<id><ext>`, under
    `<collection>/` for a collection other than the default one."""
    text = check_doc_id(doc_id)
    suffix = check_ext(ext) + (GZIP_EXT if compressed else "")
    prefix = f"{check_collection(collection)}/" if collection else ""
    return f"{prefix}{shard_of(text, shard_size)}/{text}{suffix}"


COLLECTION = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")


def version_key(key: str, version: int) -> str:
    """Where version `version` (2 or later) of the document first stored at `key` goes."""
    if version < 2:
        return key
    folder, _, name = key.rpartition("/")
    return f"{folder}/{name}.v{version}/{name}" if folder else f"{name}.v{version}/{name}"


def unversioned(key: str) -> tuple[str, int]:
    """The key of a document's first version and which version `key` is (1 for a plain key)."""
    parts = key.split("/")
    if len(parts) >= 3 and parts[-2].startswith(parts[-1] + ".v"):
        number = parts[-2][len(parts[-1]) + 2 :]
        if VERSION.fullmatch(number):
            return "/".join([*parts[:-2], parts[-1]]), int(number)
    return key, 1


VERSION = re.compile(r"[2-9]|[1-9][0-9]{1,6}")


def check_collection(collection: str) -> str:
    if not COLLECTION.fullmatch(collection):
        raise KeyRefused(f"collection {collection[:70]!r} must be lower case letters, digits, - and _")
    return collection


def collection_of(key: str) -> str:
    """The collection a document key is under ('' for `<shard>/<id><ext>`)."""
    key = unversioned(key)[0]
    return key.split("/", 1)[0] if key.count("/") == 2 else ""


def ext_of(key: str, doc_id: str | int) -> str | None:
    """The extension if `key` is a correct key for `doc_id` (any ext, any shard size, any
    collection); else None."""
    text = str(doc_id)
    if key.count("/") == 2:
        collection, _, key = key.partition("/")
        if not COLLECTION.fullmatch(collection):
            return None
    shard, _, name = key.partition("/")
    if not name.startswith(text):
        return None
    ext = name[len(text) :]
    ext_plain = ext.removesuffix(GZIP_EXT)
    if not EXT.fullmatch(ext_plain) or "/" in name:
        return None
    return ext if shard and PART.fullmatch(shard) else None


def check_key(key: str) -> str:
    """Refuse anything that is not a plain relative path of safe parts."""
    parts = key.split("/")
    if not key or len(key) > 1024 or any(not PART.fullmatch(p) or p in {".", ".."} for p in parts):
        raise KeyRefused(f"storage key {key[:100]!r} is not a safe relative key")
    return key
