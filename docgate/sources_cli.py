"""`docgate sources list|put|show|try`: source profiles on the gate, and a dry run of one.

`try` runs a profile's search from this machine, the way a client would, and prints every
request it made, the documents it found and why it stopped; nothing is stored or leased.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from docgate.db import with_pool
from protocol import sources as wire
from server.errors import DocgateError


def add_commands(sub: Any) -> None:
    sources = sub.add_parser("sources", help="source profiles: a registry's search as data").add_subparsers(
        required=True
    )
    sources.add_parser("list", help="every stored profile").set_defaults(run=run_list)
    put = sources.add_parser("put", help="store a profile from a JSON file (checked first)")
    put.add_argument("name")
    put.add_argument("file", help="the profile, JSON")
    put.set_defaults(run=run_put)
    show = sources.add_parser("show", help="print a stored profile")
    show.add_argument("name")
    show.set_defaults(run=run_show)
    dry = sources.add_parser("try", help="run a profile's search here and print what it finds")
    dry.add_argument("name", help="a stored profile, or a JSON file with --file")
    dry.add_argument("--file", action="store_true", help="NAME is a JSON file, not a stored profile")
    dry.add_argument(
        "--search-params", default="{}", help='the task\'s search_params, JSON: {"CourtRegion": "11"}'
    )
    dry.add_argument(
        "--pages",
        type=int,
        default=2,
        help="stop after this many results pages (default 2: a try, not a harvest)",
    )
    dry.add_argument("--start-page", type=int, default=1)
    dry.add_argument("--max-documents", type=int, default=1000)
    dry.add_argument(
        "--rate", type=float, default=2.0, help="requests per second to the registry (default 2)"
    )
    dry.add_argument(
        "--allow-network", action="append", default=[], help="also fetch from this network (127.0.0.0/8:8080)"
    )
    dry.set_defaults(run=run_try)


def _name(text: str) -> str:
    if not re.match(wire.NAME_PATTERN, text) or text in wire.BUILT_IN:
        raise DocgateError(
            f"source name {text!r} must be lower case letters, digits, - and _, not a built-in"
        )
    return text


def load_profile(text: str, origin: str) -> wire.SourceProfile:
    """A profile from JSON text, checked as the gate checks it; one line naming the field if not."""
    from common.selectors import broken_selectors

    try:
        profile = wire.SourceProfile.model_validate_json(text)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "the profile"
        raise DocgateError(f"{origin}: {where}: {first['msg']}") from None
    broken = broken_selectors(profile)
    if broken:
        raise DocgateError(f"{origin}: {broken[0][0]}: {broken[0][1]}")
    return profile


def _read(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DocgateError(f"cannot read the profile {path}: {exc}") from None


def run_list(args: argparse.Namespace) -> int:
    from server.db.sources import list_sources

    for source in with_pool(list_sources).sources:
        print(
            f"{source.name:<24} {source.profile.get('base_url', '')}  {source.profile.get('description', '')}"
        )
    return 0


def run_put(args: argparse.Namespace) -> int:
    from server.db.sources import put_source

    name = _name(args.name)
    profile = load_profile(_read(args.file), args.file)
    _, created = with_pool(lambda pool: put_source(pool, name, profile))
    print(f'source {name}: {"stored" if created else "replaced"}; tasks name it in "source"')
    return 0


def run_show(args: argparse.Namespace) -> int:
    from server.db.sources import get_source

    name = _name(args.name)
    print(json.dumps(with_pool(lambda pool: get_source(pool, name)).profile, indent=2, ensure_ascii=False))
    return 0


def run_try(args: argparse.Namespace) -> int:
    if args.file:
        profile = load_profile(_read(args.name), args.name)
        name = Path(args.name).stem
    else:
        from server.db.sources import get_source

        name = _name(args.name)
        stored = with_pool(lambda pool: get_source(pool, name))
        profile = load_profile(json.dumps(stored.profile), name)
    try:
        search_params = json.loads(args.search_params)
    except ValueError as exc:
        raise DocgateError(f"--search-params is not JSON: {exc}") from None
    if not isinstance(search_params, dict):
        raise DocgateError('--search-params must be a JSON object, e.g. {"CourtRegion": "11"}')
    if args.pages < 1 or args.max_documents < 1 or args.start_page < 1:
        raise DocgateError("--pages, --start-page and --max-documents must be at least 1")
    if not 0 < args.rate <= 1000:
        raise DocgateError("--rate must be above 0 and at most 1000 requests per second")
    profile = profile.model_copy(
        update={"max_pages": min(profile.max_pages, args.pages + args.start_page - 1)}
    )
    return asyncio.run(_dry_run(name, profile, search_params, args))


async def _dry_run(
    name: str, profile: wire.SourceProfile, search_params: dict[str, Any], args: argparse.Namespace
) -> int:
    from client.download import DocumentFailed, Fetcher
    from client.guard import Policy
    from client.sources import SourceContext
    from client.sources.profile import ProfileSource
    from client.work import Work
    from protocol import v1

    try:
        policy = Policy(args.allow_network)
    except ValueError as exc:
        raise DocgateError(f"--allow-network: {exc}") from None
    fetcher = Fetcher(policy, concurrency=4, per_host_connections=2, per_host_rate=args.rate, retries=1,
                      timeout=30.0, max_size=16 << 20)  # fmt: skip
    now = datetime.now(UTC)
    task = v1.LeasedTask(
        task_id=uuid.uuid4(), source=name, search_params=search_params, start_page=args.start_page,
        max_documents=args.max_documents, params={}, status=v1.TaskStatus.ASSIGNED, attempts=1,
        max_attempts=1, lease_token=uuid.uuid4(), lease_expires_at=now,
        profile=profile,
    )  # fmt: skip
    source = ProfileSource(SourceContext(fetcher))
    found = []
    try:
        async for ref in source.documents(Work.of(task)):
            found.append(ref)
    except DocumentFailed as exc:
        source.stopped = f"{'a block' if exc.blocked else 'a failure'} ({exc.code}): {exc.reason}"
    finally:
        await fetcher.close()
    print(f"requests ({len(source.trace)}):")
    for line in source.trace:
        print(f"  {line}")
    print(f"documents ({len(found)}):")
    for ref in found:
        print(f"  {ref.doc_id}  {ref.url}  {ref.ext}")
    print(f"stopped: {source.stopped or 'the listing ended'}")
    listing = source.report
    if listing is not None and profile.results.total is not None:
        stated = "none found on the first page" if listing.stated_total is None else str(listing.stated_total)
        cap = profile.results.max_results
        over = " — over the cap: a harvest splits this search" if listing.capped else ""
        print(f"stated total: {stated}{f' (cap {cap})' if cap else ''}{over}")
    return 0
