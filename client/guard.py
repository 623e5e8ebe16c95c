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


class Policy:
    """Which addresses may be fetched from: public ones, plus the allowed networks."""

    def __init__(self, allowed: Iterable[str] = ()) -> None:
        self.allowed: list[Network] = [ipaddress.ip_network(n, strict=False) for n in allowed]

    def permits(self, ip: Address) -> bool:
        if any(ip in net for net in self.allowed if net.version == ip.version):
            return True
        inner = embedded_v4(ip)
        if inner is not None:
            return self.permits(inner)
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
        if ip is not None and not self.permits(ip):
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
            if not self.policy.permits(ip):
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
