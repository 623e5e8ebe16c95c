"""`docgate hosts list|set|pause|resume`: the fleet's budgets per origin host, from the gate's host."""

from __future__ import annotations

import argparse
import re
from typing import Any

from docgate.db import with_pool
from protocol.hosts import HOST_KEY_PATTERN
from server.config import Settings
from server.errors import DocgateError


def add_commands(sub: Any) -> None:
    hosts = sub.add_parser("hosts", help="budgets per origin host, shared by the fleet").add_subparsers(
        required=True
    )
    hosts.add_parser("list", help="every host with its budget, rate and answers").set_defaults(run=run_list)
    budget = hosts.add_parser("set", help="override a host's budget (omitted: the gate's default)")
    budget.add_argument("host", help="as clients fetch it: registry.example.org, or host:port")
    budget.add_argument("--rate", type=float, help="requests per second, summed over the fleet (0 = none)")
    budget.add_argument("--connections", type=int, help="requests in flight over the fleet (0 = none)")
    budget.set_defaults(run=run_set)
    for verb, paused in (("pause", True), ("resume", False)):
        command = hosts.add_parser(verb, help=f"{verb} every client's fetches from a host")
        command.add_argument("host")
        command.set_defaults(run=run_pause, paused=paused)


def _host(text: str) -> str:
    host = text.strip().lower()
    if not re.match(HOST_KEY_PATTERN, host):
        raise DocgateError(f"host {text!r} is not a host name (registry.example.org, or host:port)")
    return host


def run_list(args: argparse.Namespace) -> int:
    from server.db.hosts import Defaults, list_hosts

    settings = Settings.load()
    listing = with_pool(
        lambda pool: list_hosts(pool, Defaults(settings.host_rate_limit, settings.host_connections))
    )
    for h in listing.hosts:
        budget = f"{h.requests_per_second:g}/s" if h.requests_per_second else "no limit"
        rate = f"{h.effective_rate:.1f}/s" if h.effective_rate is not None else "-"
        state = f"paused ({h.paused_reason})" if h.paused else "running"
        print(
            f"{h.host:<40} budget {budget:<10} now {rate:<8} {h.clients_active:>3} clients  "
            f"5 min: {h.ok} ok, {h.throttled} throttled, {h.errors} errors, {h.blocked} blocked  {state}"
        )
    return 0


def run_set(args: argparse.Namespace) -> int:
    from server.db.hosts import set_budget

    if args.rate is not None and args.rate < 0 or args.connections is not None and args.connections < 0:
        raise DocgateError("--rate and --connections must not be negative (0 = no limit)")
    host = _host(args.host)
    with_pool(lambda pool: set_budget(pool, host, args.rate, args.connections))
    rate = "default" if args.rate is None else f"{args.rate:g}"
    connections = "default" if args.connections is None else str(args.connections)
    print(f"{host}: budget {rate} requests/s, {connections} in flight; clients follow within 2 s")
    return 0


def run_pause(args: argparse.Namespace) -> int:
    from server.db.hosts import pause

    host = _host(args.host)
    with_pool(lambda pool: pause(pool, host, args.paused))
    print(f"{host}: {'paused' if args.paused else 'resumed'}; clients follow within 2 s")
    return 0
