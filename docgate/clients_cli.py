"""`docgate clients list|revoke|rotate-key`: the admin's hold on client keys, from the gate's host."""

from __future__ import annotations

import argparse
import uuid
from typing import Any, TypeVar

from docgate.db import uuid_of, with_pool
from server.config import Settings

T = TypeVar("T")


def add_commands(sub: Any) -> None:
    clients = sub.add_parser("clients", help="list, revoke and re-key clients").add_subparsers(required=True)
    clients.add_parser("list", help="every client with its status").set_defaults(run=run_list)
    revoke = clients.add_parser("revoke", help="revoke a client's key and hand back its leases")
    revoke.add_argument("client_id")
    revoke.set_defaults(run=run_revoke)
    rotate = clients.add_parser("rotate-key", help="give a client a new key (printed once)")
    rotate.add_argument("client_id")
    rotate.set_defaults(run=run_rotate)


def _client_id(text: str) -> uuid.UUID:
    return uuid_of(text, "client id", " (see `docgate clients list`)")


def run_list(args: argparse.Namespace) -> int:
    from server.db.clients import list_clients

    listing = with_pool(lambda pool: list_clients(pool, Settings.load().client_stale_seconds, 10_000))
    for c in listing.clients:
        seen = c.last_heartbeat_at.isoformat(timespec="seconds") if c.last_heartbeat_at else "never"
        print(f"{c.client_id}  {c.status.value:<8} {c.tasks_held:>4} held  last seen {seen}  {c.client_name}")
    return 0


def run_revoke(args: argparse.Namespace) -> int:
    from server.db.clients import revoke_client

    client_id = _client_id(args.client_id)
    revoked = with_pool(lambda pool: revoke_client(pool, client_id))
    when = revoked.revoked_at.isoformat(timespec="seconds")
    handed = revoked.tasks_handed_back
    print(f"client {client_id} revoked at {when}; {handed} leases handed back; its key stops within 10 s")
    return 0


def run_rotate(args: argparse.Namespace) -> int:
    from server.auth import hash_key, new_key
    from server.db.clients import rotate_key

    client_id, key = _client_id(args.client_id), new_key()
    with_pool(lambda pool: rotate_key(pool, client_id, hash_key(key)))
    print(f"client {client_id}: new API key (shown once; the old one stops within 10 s):\n\n    {key}\n")
    return 0
