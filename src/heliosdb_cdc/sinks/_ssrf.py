"""SSRF guard for webhook destinations.

A webhook URL is checked twice: when the stream is created (its host resolved
and every address checked) and again each time a connection is opened
(``_http.HttpPool`` resolves the name anew and connects only to allowed
addresses, so a name that resolved to a public address at registration cannot be
re-bound to the metadata service later). Redirects are never followed (the
webhook sink treats 3xx as a permanent failure).

Policy (``security`` section of the configuration):

* always refused: link-local and cloud metadata addresses -- ``169.254.0.0/16``,
  ``fe80::/10``, ``fd00:ec2::254`` (AWS IPv6 IMDS), ``100.100.100.200``
  (Alibaba), plus unspecified/multicast/reserved addresses;
* private (RFC 1918, ``fc00::/7``, CGNAT ``100.64.0.0/10``) and loopback ranges:
  allowed by default, refused with ``block_private_networks: true``;
* ``webhook_allowed_cidrs``: when set, every address must be inside one of them
  (the always-refused list still wins).

IPv6 addresses that carry an IPv4 address are judged by that IPv4 address too (the
stricter verdict wins): IPv4-mapped ``::ffff:0:0/96``, IPv4-translated
``::ffff:0:0:0/96``, IPv4-compatible ``::/96`` (but ``::`` and ``::1``), NAT64
``64:ff9b::/96`` and local-use ``64:ff9b:1::/48`` (every RFC 6052 layout), 6to4
``2002::/16`` and Teredo ``2001::/32`` (server and client). ``64:ff9b:1::/48`` is
not routable on the internet, so it is also private.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import socket
from collections.abc import Iterable, Sequence
from typing import Any
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

ALWAYS_BLOCKED: tuple[IPNetwork, ...] = tuple(
    ipaddress.ip_network(n)
    for n in (
        "169.254.0.0/16",  # IPv4 link-local, incl. 169.254.169.254 (AWS/GCP/Azure metadata)
        "fe80::/10",  # IPv6 link-local
        "fd00:ec2::254/128",  # AWS IMDS over IPv6
        "100.100.100.200/32",  # Alibaba Cloud metadata
        "0.0.0.0/8",  # "this network"
        "::/128",  # unspecified
        "224.0.0.0/4",  # multicast
        "ff00::/8",  # IPv6 multicast
        "240.0.0.0/4",  # reserved, incl. broadcast
    )
)

PRIVATE: tuple[IPNetwork, ...] = tuple(
    ipaddress.ip_network(n)
    for n in (
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "100.64.0.0/10",  # carrier-grade NAT
        "127.0.0.0/8",
        "::1/128",
        "fc00::/7",  # unique local
        "64:ff9b:1::/48",  # local-use NAT64 (RFC 8215)
    )
)

_V4_COMPATIBLE = ipaddress.ip_network("::/96")
_V4_TRANSLATED = ipaddress.ip_network("::ffff:0:0:0/96")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")


async def resolve_host(host: str, port: int) -> list[str]:
    """Addresses of ``host`` from the system resolver, in its order, each once."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


class SsrfRefused(OSError):
    """A destination address the SSRF policy does not allow."""

    def __init__(self, message: str) -> None:
        # errno + strerror so aiohttp's connection error repeats the reason
        super().__init__(errno.EACCES, message)

    def __str__(self) -> str:
        return str(self.strerror)


def _normalize(addr: IPAddress) -> IPAddress:
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def _rfc6052(value: int, prefix_len: int) -> ipaddress.IPv4Address | None:
    """The IPv4 address of an RFC 6052 address with a ``prefix_len`` prefix, or None when
    the address cannot have that layout (bits 64-71 or the suffix not zero)."""
    octets = value.to_bytes(16, "big")
    if prefix_len == 96:
        return ipaddress.IPv4Address(octets[12:])
    at = [i for i in range(prefix_len // 8, 16) if i != 8]
    v4, suffix = at[:4], at[4:]
    if octets[8] or any(octets[i] for i in suffix):
        return None
    return ipaddress.IPv4Address(bytes(octets[i] for i in v4))


def embedded_ipv4(addr: IPAddress) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address carries (mapped, translated, compatible,
    NAT64, 6to4, Teredo), each of which it may reach; empty for other addresses."""
    if not isinstance(addr, ipaddress.IPv6Address):
        return []
    value = int(addr)
    out: list[ipaddress.IPv4Address] = []
    if addr.ipv4_mapped is not None:
        out.append(addr.ipv4_mapped)
    if addr in _V4_TRANSLATED or addr in _NAT64 or (addr in _V4_COMPATIBLE and value > 1):
        out.append(ipaddress.IPv4Address(value & 0xFFFFFFFF))
    if addr in _NAT64_LOCAL:
        # the operator picks the prefix length, so every layout the address can have
        # counts; 0.0.0.0 only shows that a layout is not the one in use
        guesses = (_rfc6052(value, n) for n in (48, 56, 64, 96))
        out.extend(g for g in guesses if g is not None and int(g) != 0)
    if addr.sixtofour is not None:
        out.append(addr.sixtofour)
    if addr.teredo is not None:
        out.extend(addr.teredo)
    return list(dict.fromkeys(out))


def parse_networks(values: Iterable[str]) -> tuple[IPNetwork, ...]:
    return tuple(ipaddress.ip_network(v.strip(), strict=False) for v in values)


def _inside(addr: IPAddress, nets: Iterable[IPNetwork]) -> IPNetwork | None:
    return next((n for n in nets if addr.version == n.version and addr in n), None)


def _show(addr: IPAddress, reached: IPAddress) -> str:
    return str(addr) if addr == reached else f"{addr} (which embeds {reached})"


class SsrfGuard:
    """The policy; ``check_address`` raises :class:`SsrfRefused` with the reason."""

    def __init__(self, block_private: bool = False, allowed_cidrs: Sequence[str] = ()) -> None:
        self.block_private = block_private
        self.allowed = parse_networks(allowed_cidrs)

    @classmethod
    def from_security(cls, security: Any) -> SsrfGuard:
        return cls(
            block_private=bool(getattr(security, "block_private_networks", False)),
            allowed_cidrs=list(getattr(security, "webhook_allowed_cidrs", []) or []),
        )

    def reason(self, address: str) -> str | None:
        """Why ``address`` is refused, or None when it is allowed."""
        try:
            addr = _normalize(ipaddress.ip_address(address.split("%", 1)[0]))
        except ValueError:
            return f"{address!r} is not an IP address"
        inner = embedded_ipv4(addr)
        for a in (addr, *inner):
            net = _inside(a, ALWAYS_BLOCKED)
            if net is not None:
                what = "a link-local, metadata or reserved address"
                return f"{_show(addr, a)} is {what} ({net}), always refused"
        if self.allowed:
            if not any(_inside(a, self.allowed) for a in (addr, *inner)):
                return f"{addr} is outside security.webhook_allowed_cidrs"
            return None
        if self.block_private:
            for a in (addr, *inner):
                if _inside(a, PRIVATE) is not None:
                    return (
                        f"{_show(addr, a)} is a private or loopback address and "
                        "security.block_private_networks is on"
                    )
        return None

    def check_address(self, address: str, host: str | None = None) -> None:
        why = self.reason(address)
        if why is not None:
            name = f"{host} -> " if host and host != address else ""
            raise SsrfRefused(f"webhook destination refused by the SSRF guard: {name}{why}")

    async def check_url(self, url: str) -> list[str]:
        """Resolve ``url``'s host now and check every address; returns the addresses."""
        parts = urlsplit(url)
        host = parts.hostname
        if not host:
            raise SsrfRefused(f"webhook destination refused: {url!r} has no host")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            literal = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            literal = None
        if literal is not None:
            self.check_address(host)
            return [host]
        try:
            addrs = sorted(await resolve_host(host, port))
        except socket.gaierror as exc:
            raise SsrfRefused(f"webhook destination {host!r} does not resolve: {exc}") from None
        for a in addrs:
            self.check_address(a, host)
        return addrs

    def check_literal_url(self, url: str) -> None:
        """Connect-time check for URLs whose host is an IP literal (no DNS, so no resolver)."""
        host = urlsplit(url).hostname or ""
        try:
            ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return
        self.check_address(host)
