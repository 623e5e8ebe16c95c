"""Document storage: one interface, backends chosen by URL.

file:///srv/btl/raw or /srv/btl/raw     LocalStorage
s3://bucket/prefix                      S3Storage (endpoint and keys from the usual AWS_* variables)
b2://bucket/prefix                      S3Storage on Backblaze B2 (B2_* variables)
gate                                    GateStorage (upload through the gate)
mirror:<primary>,<secondary>            MirrorStorage (e.g. mirror:file:///srv/raw,b2://bucket/raw)
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from urllib.parse import unquote, urlsplit

from storage.base import Deadline, ObjectInfo, PutOptions, Storage, StoredObject
from storage.errors import StorageError

__all__ = [
    "URL_SCHEMES",
    "Deadline",
    "ObjectInfo",
    "PutOptions",
    "Storage",
    "StorageError",
    "StoredObject",
    "names_a_store",
    "open_storage",
]


# Every backend's url_schemes (storage/*.py): the gate records a document only at a URL one of
# them would give (a new backend adds its own here, and the gate accepts its reports).
URL_SCHEMES = ("file://", "s3://", "b2://", "gate:", "memory://")


def names_a_store(url: str) -> bool:
    """Whether `url` is an object's URL in some store docgate can open (or a test's memory)."""
    return url.startswith(URL_SCHEMES)


class StorageSettingError(StorageError):
    """A storage URL or variable is wrong."""


def open_storage(
    url: str,
    *,
    deadline: Deadline | None = None,
    api_url: str | None = None,
    api_key: str | None = None,
    env: Mapping[str, str] | None = None,
) -> Storage:
    """Build the store a URL names; a bad URL raises StorageSettingError naming what is wrong."""
    env = os.environ if env is None else env
    url = url.strip()
    if url.startswith("mirror:"):
        primary, sep, secondary = url[len("mirror:") :].partition(",")
        if not sep or not primary or not secondary:
            raise StorageSettingError("mirror storage is mirror:<primary URL>,<secondary URL>")
        from storage.mirror import MirrorStorage

        return MirrorStorage(
            open_storage(primary, deadline=deadline, api_url=api_url, api_key=api_key, env=env),
            open_storage(secondary, deadline=deadline, api_url=api_url, api_key=api_key, env=env),
        )
    if url == "gate":
        if not api_url:
            raise StorageSettingError("storage 'gate' needs the gate's URL (--api-url)")
        from storage.gate import GateStorage

        return GateStorage(api_url, api_key, deadline)
    parts = urlsplit(url)
    if parts.scheme in {"s3", "b2"}:
        return _s3(parts.scheme, parts.netloc, parts.path, deadline, env)
    if parts.scheme == "file":
        return _local(unquote(parts.path), deadline, env)
    if parts.scheme == "" and url:
        return _local(url, deadline, env)
    raise StorageSettingError(f"storage URL {url!r} is not file://, s3://, b2://, gate or mirror:")


def _local(path: str, deadline: Deadline | None, env: Mapping[str, str]) -> Storage:
    from storage.local import LocalStorage

    # LOCAL_SYNC: `batch` (the default) makes small documents durable together (one syncfs for
    # the writes in flight); `each` fsyncs every file and its folder, for a disk shared with
    # heavy writers, where a sync of the whole filesystem would wait for theirs too.
    sync = env.get("LOCAL_SYNC", "batch").strip().lower() or "batch"
    if sync not in {"batch", "each"}:
        raise StorageSettingError(f"LOCAL_SYNC is {sync!r}: use batch or each")
    return LocalStorage(path, deadline, group_commit=sync == "batch")


def _s3(scheme: str, bucket: str, prefix: str, deadline: Deadline | None, env: Mapping[str, str]) -> Storage:
    from storage.s3 import S3Storage

    conditional = _conditional_writes(env)
    if scheme == "s3":
        if not bucket:
            raise StorageSettingError("storage URL s3:// needs a bucket: s3://bucket/prefix")
        # Endpoint, region and keys: AWS_* from the settings' environment (.env included), else
        # boto3's usual chain (~/.aws, instance roles …).
        return S3Storage(
            bucket,
            prefix,
            endpoint_url=env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL"),
            region=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION"),
            access_key=env.get("AWS_ACCESS_KEY_ID"),
            secret_key=env.get("AWS_SECRET_ACCESS_KEY"),
            deadline=deadline,
            conditional_writes=conditional,
        )
    bucket = bucket or env.get("B2_BUCKET_NAME", "")
    missing = [
        name
        for name, value in (
            ("B2_BUCKET_NAME", bucket),
            ("B2_ENDPOINT", env.get("B2_ENDPOINT")),
            ("B2_APPLICATION_KEY_ID", env.get("B2_APPLICATION_KEY_ID")),
            ("B2_APPLICATION_KEY", env.get("B2_APPLICATION_KEY")),
        )
        if not value
    ]
    if missing:
        raise StorageSettingError(f"b2:// storage needs {', '.join(missing)}")
    endpoint = env["B2_ENDPOINT"]
    if not endpoint.startswith(("http://", "https://")):
        endpoint = "https://" + endpoint
    # Backblaze endpoints name their region: s3.us-west-004.backblazeb2.com.
    found = re.search(r"//s3\.([a-z0-9-]+)\.backblazeb2\.com", endpoint)
    region = found[1] if found else "us-east-1"
    return S3Storage(
        bucket,
        prefix,
        endpoint_url=endpoint,
        region=region,
        scheme="b2",
        access_key=env["B2_APPLICATION_KEY_ID"],
        secret_key=env["B2_APPLICATION_KEY"],
        deadline=deadline,
        conditional_writes=conditional,
    )


CONDITIONAL = {"auto": None, "on": True, "off": False}


def _conditional_writes(env: Mapping[str, str]) -> bool | None:
    """STORAGE_CONDITIONAL_WRITES: auto (find out: the probe, or the first 501), on, off."""
    value = env.get("STORAGE_CONDITIONAL_WRITES", "auto").strip().lower()
    if value not in CONDITIONAL:
        raise StorageSettingError("setting STORAGE_CONDITIONAL_WRITES must be auto, on or off")
    return CONDITIONAL[value]
