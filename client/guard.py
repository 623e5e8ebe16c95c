"""The SSRF guard: a task's URLs are fetched only from public addresses.

A client must never become a way into its own network. Every URL is checked
before it is requested (scheme, and the host when it is an IP literal, as the
connection layer normalises it), every
host name is resolved by `GuardedResolver`, which drops addresses that are not
public, and the connection goes to exactly the checked addresses (no second
lookup to race). Redirects are followed by hand, each target checked again.

Refused unless inside an operator's --allow-network range: loopback, private,
link-local (169.254.0.0/16, the cloud metadata address among them), CGNAT,
multicast, reserved and unspecified addresses; IPv6 forms of the same
(::1, fc00::/7, fe80::/10) and IPv4 addresses embedded in IPv6
(::ffff:a.b.c.d, 64:ff9b::/96 NAT64, 2002::/16 6to4). Odd IPv4 spellings
(127.1, 2130706433, 0x7f.1, 0177.0.0.1) are what the resolver turns them
into, and are checked as such.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
NAT64 = ipaddress.ip_network("64:ff9b::/96")
SIX_TO_FOUR = ipaddress.ip_network("2002::/16")


class Refused(Exception):
    """The URL leads somewhere this client must not fetch from."""


def embedded_v4(ip: Address) -> ipaddress.IPv4Address | None:
    if isinstance(ip, ipaddress.IPv4Address):
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip in NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip in SIX_TO_FOUR:
        return ip.sixtofour
    return None


@dataclass(frozen=True)
class Allowance:
    """One --allow-network value: a range, and optionally the ports open in it."""

    network: Network
    low: int = 0
    high: int = 65535

    def covers(self, ip: Address, port: int | None) -> bool:
        in_range = ip.version == self.network.version and ip in self.network
        return in_range and (port is None or self.low <= port <= self.high)


def parse_allowance(text: str) -> Allowance:
    """CIDR, CIDR:PORT or CIDR:LOW-HIGH (IPv6 in brackets when a port follows: [::1/128]:8000)."""
    text = text.strip()
    if text.startswith("["):
        network, _, rest = text[1:].partition("]")
        ports = rest.removeprefix(":") if rest.startswith(":") else None
        if rest and ports is None:
            raise ValueError(f"{text!r}: after ] comes :PORT or :LOW-HIGH")
    elif text.count(":") == 1:
        network, ports = text.split(":")
    else:
        network, ports = text, None
    try:
        net = ipaddress.ip_network(network, strict=False)
    except ValueError:
        raise ValueError(
            f"{text!r} is not a CIDR range like 127.0.0.0/8 (or 127.0.0.0/8:8000-8100)"
        ) from None
    if ports is None:
        return Allowance(net)
    low, _, high = ports.partition("-")
    if not (low.isdigit() and (high or low).isdigit()) or not 1 <= int(low) <= int(high or low) <= 65535:
        raise ValueError(f"{text!r}: ports are PORT or LOW-HIGH between 1 and 65535")
    return Allowance(net, int(low), int(high or low))


class Policy:
    """Which addresses may be fetched from: public ones, plus the allowed networks (and ports)."""

    def __init__(self, allowed: Iterable[str] = ()) -> None:
        self.allowed = [parse_allowance(a) for a in allowed]

    def permits(self, ip: Address, port: int | None = None) -> bool:
        """May `ip` be fetched from (on `port`, when known)?"""
        if any(a.covers(ip, port) for a in self.allowed):
            return True
        inner = embedded_v4(ip)
        if inner is not None:
            return self.permits(inner, port)
        return ip.is_global and not ip.is_multicast

    def check_url(self, url: URL) -> None:
        """Refuse a bad scheme, a missing host, or an IP-literal host that is not permitted.

        The host judged is the one the connection will use: yarl's, after the IDNA and
        Unicode normalisation aiohttp applies (fullwidth digits, ideographic full stops and
        circled digits all become ASCII: http://１２７。０。０。１/ is 127.0.0.1)."""
        if url.scheme not in {"http", "https"}:
            raise Refused(f"only http and https URLs are fetched, not {url.scheme or 'none'!r}")
        host = url.raw_host
        if not host:
            raise Refused("URL has no host")
        ip = literal_address(host)
        if ip is not None and not self.permits(ip, url.port):
            raise Refused(f"{host} is {ip}, not a public address (see --allow-network)")


def literal_address(host: str) -> Address | None:
    """The address a host names literally, in any spelling inet_aton accepts (127.1, 0x7f.1, 2130706433)."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except OSError:
        return None  # a name: checked after resolution


class GuardedResolver(AbstractResolver):
    """Resolves with getaddrinfo in a thread and returns only permitted addresses."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        import asyncio

        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                host, port, type=socket.SOCK_STREAM, family=family
            )
        except socket.gaierror as exc:
            raise OSError(f"cannot resolve {host}: {exc.strerror}") from None
        results: list[ResolveResult] = []
        refused = []
        for fam, _, proto, _, sockaddr in infos:
            ip = ipaddress.ip_address(sockaddr[0])
            if not self.policy.permits(ip, port or None):
                refused.append(str(ip))
                continue
            results.append(_result(host, str(ip), port, fam, proto))
        if not results:
            raise Refused(
                f"{host} resolves to {', '.join(refused)}: not a public address (see --allow-network)"
            )
        return results

    async def close(self) -> None:
        return None


def _result(host: str, ip: str, port: int, family: int, proto: int) -> Any:
    return {
        "hostname": host,
        "host": ip,
        "port": port,
        "family": family,
        "proto": proto,
        "flags": socket.AI_NUMERICHOST,
    }
