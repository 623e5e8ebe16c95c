"""API keys: random, stored as sha256 hashes, looked up by hash, compared in constant time."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from enum import StrEnum
from uuid import UUID

from server.db import clients
from server.db.pool import Pool
from server.errors import Unauthorized

KEY_PREFIX = "dg_"
CACHE_SECONDS = 10.0
CACHE_MAX = 10_000


class Role(StrEnum):
    ADMIN = "admin"
    CLIENT = "client"


@dataclass(frozen=True)
class Principal:
    role: Role
    client_id: UUID | None = None
    client_name: str | None = None

    @property
    def is_admin(self) -> bool:
        return self.role is Role.ADMIN

    @property
    def owner(self) -> UUID | None:
        """The id that scopes task access: None for the admin, who sees every task."""
        return None if self.is_admin else self.client_id


ANONYMOUS_ADMIN = Principal(Role.ADMIN)


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> bytes:
    # Keys are 256-bit random strings, so a plain sha256 cannot be brute-forced
    # and costs microseconds; a password KDF here would only slow every request.
    return hashlib.sha256(key.encode()).digest()


class Authenticator:
    """Resolve X-API-Key to a principal; positive answers are cached briefly."""

    def __init__(self, pool: Pool, admin_key: str | None, enable_auth: bool) -> None:
        self._pool = pool
        self._admin_hash = hash_key(admin_key) if admin_key else None
        self._enable_auth = enable_auth
        self._cache: dict[bytes, tuple[Principal, float]] = {}

    async def authenticate(self, key: str | None) -> Principal:
        if not key:
            if self._enable_auth:
                raise Unauthorized()
            return ANONYMOUS_ADMIN
        digest = hash_key(key)
        if self._admin_hash is not None and hmac.compare_digest(digest, self._admin_hash):
            return ANONYMOUS_ADMIN
        principal = self._cached(digest) or await self._lookup(digest)
        if principal is None:
            if self._enable_auth:
                raise Unauthorized("unknown API key")
            return ANONYMOUS_ADMIN
        return principal

    def forget(self, client_id: UUID) -> None:
        """Drop a client's cached look-ups here (a revoked or rotated key); other gates drop
        theirs within CACHE_SECONDS."""
        for digest, (principal, _) in list(self._cache.items()):
            if principal.client_id == client_id:
                del self._cache[digest]

    async def refresh(self) -> None:
        """Look up again, in one query, every cached key past half its time, so that a fleet's
        keys are not looked up one request at a time as they run out (1,000 clients: 1,000
        queries every CACHE_SECONDS, each in a request's way). A key found no longer valid is
        dropped at once; one not refreshed (the database away) runs out as before, so a revoked
        key still works at most CACHE_SECONDS on a gate that did not revoke it."""
        now = time.monotonic()
        due = [d for d, (_, until) in self._cache.items() if until - now < CACHE_SECONDS / 2]
        if not due:
            return
        found = await clients.find_keys(self._pool, due)
        until = now + CACHE_SECONDS  # from before the query: what it found held then
        for digest in due:
            owner = found.get(digest)
            if owner is None:
                self._cache.pop(digest, None)
            elif digest in self._cache:  # not forgotten meanwhile
                self._cache[digest] = (_principal(owner), until)

    def _cached(self, digest: bytes) -> Principal | None:
        hit = self._cache.get(digest)
        if hit is None or hit[1] < time.monotonic():
            return None
        return hit[0]

    async def _lookup(self, digest: bytes) -> Principal | None:
        owner = await clients.find_key(self._pool, digest)
        if owner is None:
            return None
        principal = _principal(owner)
        if len(self._cache) >= CACHE_MAX:
            self._cache.clear()
        self._cache[digest] = (principal, time.monotonic() + CACHE_SECONDS)
        return principal


def _principal(owner: clients.KeyOwner) -> Principal:
    return Principal(Role(owner.role), owner.client_id, owner.client_name)
