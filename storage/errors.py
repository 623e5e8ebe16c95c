"""Storage errors. One base; each docstring is its default message.

StorageError
├── KeyRefused           the key or doc_id is malformed or would leave the root
├── ObjectMissing        no object under that key
├── AlreadyStored        write-once: the key already holds a document
├── ChecksumMismatch     the bytes do not hash to the expected sha256
├── TooLarge             the document is over the size limit
├── StorageTimeout       the call did not finish within its deadline
└── StorageUnavailable   the backend failed (I/O error, HTTP error, refused)
"""

from __future__ import annotations


class StorageError(Exception):
    """Storage failed."""

    def __init__(self, message: str | None = None) -> None:
        self.message = message or (self.__doc__ or "").strip()
        super().__init__(self.message)


class KeyRefused(StorageError):
    """The storage key is not acceptable."""


class ObjectMissing(StorageError):
    """No object under that key."""


class AlreadyStored(StorageError):
    """The key already holds a document; documents are written once."""


class ChecksumMismatch(StorageError):
    """The stored bytes do not match the expected sha256."""


class CorruptGzip(ChecksumMismatch):
    """The gzip stream is corrupt or truncated."""


class WriteRefused(StorageError):
    """The store refused the write."""


class StaleLease(WriteRefused):
    """The gate refused the write: the lease it was made under is no longer current."""


class TooLarge(StorageError):
    """The document is larger than allowed."""


class StorageTimeout(StorageError):
    """The storage call did not finish within its deadline."""


class StorageUnavailable(StorageError):
    """The storage backend failed."""


class StorageRefused(StorageUnavailable):
    """The store refuses this client (credentials, permissions, a missing bucket, a read-only path)."""


class Unsupported(StorageRefused):
    """The endpoint does not implement what the request asked for (S3's 501 NotImplemented)."""
