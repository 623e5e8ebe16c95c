"""`docgate harvest create|status|extend`: a whole registry through a stored profile, window by
window, and its coverage ledger, from the gate's host (its database)."""

from __future__ import annotations

import argparse
import json
import uuid
from typing import Any

from pydantic import ValidationError

from docgate.db import uuid_of, with_pool
from protocol import harvests
from server.config import Settings
from server.errors import DocgateError

STATE_MARKS = {
    "complete": "■",
    "split": "◇",
    "pending": "·",
    "searching": "○",
    "short": "▲",
    "over_cap": "▲",
    "failed": "✕",
    "cancelled": "✕",
}


def add_commands(sub: Any) -> None:
    harvest = sub.add_parser(
        "harvest", help="harvest a whole registry through a stored profile, window by window"
    ).add_subparsers(required=True)
    create = harvest.add_parser(
        "create",
        help="a job of one search per window: days (--from/--to/--every) and/or values (--values)",
        description="One search task per window; a window over the profile's results.max_results "
        "is split in halves down to a day, then by --split-by's values, never truncated.",
    )
    create.add_argument("source", help="the stored profile (docgate sources list)")
    create.add_argument("--from", dest="date_from", help="first day, YYYY-MM-DD")
    create.add_argument("--to", dest="date_to", help="last day, YYYY-MM-DD (included)")
    create.add_argument("--every", default="month", choices=("day", "week", "month", "year"))
    create.add_argument("--values", help="FIELD=v1,v2,…: one window per value of a search field")
    create.add_argument("--split-by", help="FIELD=v1,v2,…: how a one-day window over the cap is split")
    create.add_argument("--param", action="append", default=[], help="KEY=VALUE: a fixed search field")
    create.add_argument("--no-split", action="store_true", help="search windows over the cap as shown")
    create.add_argument("--repeat-every", help="search the last --lookback again this often (6h, 30m)")
    create.add_argument("--lookback", default="3d", help="what a repeated run searches again (3d)")
    create.add_argument("--collection", help="where its documents go (default: the profile's)")
    create.add_argument("--idempotency-key")
    create.set_defaults(run=run_create)
    status = harvest.add_parser("status", help="a harvest's coverage: totals, gaps, windows")
    status.add_argument("job_id")
    status.add_argument("--run", dest="run_number", type=int, help="which run (default: the last)")
    status.add_argument("--windows", action="store_true", help="list every window, not only the gaps")
    status.add_argument("--json", action="store_true", help="the coverage as GET …/coverage returns it")
    status.set_defaults(run=run_status)
    extend = harvest.add_parser("extend", help="a new run from the day after the last searched to today")
    extend.add_argument("job_id")
    extend.set_defaults(run=run_extend)


def _values(text: str | None, flag: str) -> dict[str, Any] | None:
    if text is None:
        return None
    field, sep, values = text.partition("=")
    if not sep or not field or not values:
        raise DocgateError(f"{flag} {text!r}: give FIELD=v1,v2,…")
    return {"field": field, "values": values.split(",")}


def _body(args: argparse.Namespace) -> harvests.HarvestCreate:
    partition: dict[str, Any] = {}
    if args.date_from or args.date_to:
        if not (args.date_from and args.date_to):
            raise DocgateError("--from and --to go together")
        partition["dates"] = {"from": args.date_from, "to": args.date_to, "every": args.every}
    if args.values:
        partition["values"] = _values(args.values, "--values")
    params = {}
    for pair in args.param:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise DocgateError(f"--param {pair!r}: give KEY=VALUE")
        params[key] = value
    body: dict[str, Any] = {
        "source": args.source,
        "search_params": params,
        "partition": partition,
        "split": not args.no_split,
        "split_by": _values(args.split_by, "--split-by"),
        "collection": args.collection,
        "idempotency_key": args.idempotency_key,
    }
    if args.repeat_every:
        body["repeat"] = {"every": args.repeat_every, "lookback": args.lookback}
    try:
        return harvests.HarvestCreate.model_validate(
            {k: v for k, v in body.items() if v is not None}, strict=False
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise DocgateError(f"harvest: {where + ': ' if where else ''}{first['msg']}") from None


def run_create(args: argparse.Namespace) -> int:
    from server.db.harvests import create_harvest

    body = _body(args)
    attempts = Settings.load().max_attempts
    created, new = with_pool(
        lambda pool: create_harvest(pool, body, attempts, harvests.MAX_WINDOWS, harvests.MAX_WINDOWS)
    )
    word = "created" if new else "exists already (same idempotency key)"
    print(f"harvest {created.job_id} {word}: {created.tasks_created} windows")
    print(f"watch it: docgate harvest status {created.job_id}")
    return 0


def _job(text: str) -> uuid.UUID:
    return uuid_of(text, "job id", " (docgate harvest create prints it)")


def run_status(args: argparse.Namespace) -> int:
    from server.db.coverage import coverage

    job_id = _job(args.job_id)
    cov = with_pool(lambda pool: coverage(pool, job_id, args.run_number))
    if args.json:
        print(json.dumps(cov.model_dump(mode="json"), ensure_ascii=False, indent=2))
        return 0
    t = cov.totals
    span = f"{cov.date_from} to {cov.date_to}" if cov.date_from else "no dates"
    print(f"harvest {cov.job_id}, run {cov.run} of {cov.runs}: {span}")
    states = ", ".join(f"{n} {s}" for s, n in sorted(t.states.items()))
    print(f"windows: {t.windows} ({states})")
    print(
        f"registry states {t.stated_total}; found {t.found}, stored {t.stored}, "
        f"already held {t.skipped}, failed {t.failed}"
    )
    print("".join(STATE_MARKS.get(w.state, "?") for w in cov.windows if w.state != "split"))
    print(
        "complete: every window holds what the registry states" if cov.complete else f"gaps: {len(cov.gaps)}"
    )
    for g in cov.gaps:
        where = _where(g.date_from, g.date_to, g.value, g.split_value)
        missing = f", {g.missing} missing" if g.missing is not None else ""
        why = "; ".join(f"{f.documents} {f.code}" for f in g.failures) or (g.last_error or "")
        of = g.stated_total if g.stated_total is not None else "?"
        print(f"  {where}: {g.state}, {g.held} of {of}{missing}{' — ' + why if why else ''}")
    if args.windows:
        for w in cov.windows:
            where = _where(w.date_from, w.date_to, w.value, w.split_value)
            print(f"  #{w.window_id} {where}: {w.state}, stated {w.stated_total}, found {w.found}, "
                  f"stored {w.stored}, held {w.skipped}, failed {w.failed}")  # fmt: skip
    if cov.next_run_at is not None:
        print(f"next run: {cov.next_run_at.isoformat()}")
    return 0


def _where(date_from: Any, date_to: Any, value: str | None, split_value: str | None) -> str:
    parts = []
    if date_from is not None:
        parts.append(str(date_from) if date_from == date_to else f"{date_from}..{date_to}")
    parts.extend(v for v in (value, split_value) if v is not None)
    return " ".join(parts) or "everything"


def run_extend(args: argparse.Namespace) -> int:
    from server.db.harvests import extend

    job_id = _job(args.job_id)
    created = with_pool(lambda pool: extend(pool, job_id))
    print(f"harvest {job_id}: {created.tasks_created} new windows up to today")
    return 0
