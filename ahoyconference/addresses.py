# -*- test-case-name: tests.test_deploy -*-
"""
Client addresses as deployments see them (docs/operations.md, "Behind a
reverse proxy" and "Shared addresses"):

 - L{clientAddress}: the client's address, read from C{X-Forwarded-For} or
   C{Forwarded} only when the TCP peer is a configured trusted proxy.
 - L{addressKey}: what per-address limits count by: an IPv4 address as it
   is, an IPv6 address by its /64 (one subscriber's network: a client
   holds a whole /64 and can pick any address in it).
"""

from __future__ import annotations

import ipaddress

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def _parse(text: str) -> _Address | None:
    """An address from a header entry (with or without port, brackets, quotes)."""
    text = text.strip().strip('"').strip()
    if text.startswith("["):  # [2001:db8::1]:4711
        text = text[1:].split("]", 1)[0]
    elif text.count(":") == 1:  # 192.0.2.1:4711
        text = text.split(":", 1)[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if address.version == 6 and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _trusted(address: _Address, proxies: tuple[_Network, ...]) -> bool:
    return any(address.version == net.version and address in net for net in proxies)


def forwardedChain(headers: dict[str, str], header: str) -> list[str]:
    """
    The addresses a proxy header names, client first: C{X-Forwarded-For:
    a, b} or C{Forwarded: for=a, for="[b]:1"}.  Several header lines arrive
    joined with commas.
    """
    value = headers.get(header)
    if not value:
        return []
    if header != "forwarded":
        return [part for part in value.split(",")]
    chain = []
    for element in value.split(","):
        found = ""
        for pair in element.split(";"):
            name, _, v = pair.partition("=")
            if name.strip().lower() == "for":
                found = v
        chain.append(found)
    return chain


def clientAddress(peer: str, headers: dict[str, str], proxies: tuple[_Network, ...],
                  header: str = "x-forwarded-for") -> str:
    """
    The client's address.

    Without trusted proxies, or when the TCP peer is not one, it is the peer:
    anyone can write a header.  Otherwise the proxy header is read from the
    right (the hop nearest to us) and every trusted proxy is skipped: the
    first address that is not a trusted proxy is the client's.  An entry
    that is no address (C{unknown}, an obfuscated name) stops the walk at
    the last trusted hop.

    @param peer: the TCP peer's address.
    @param headers: the handshake's headers, lower-case names.
    @param proxies: C{[server] trusted_proxies}.
    @param header: C{[server] proxy_header}: C{x-forwarded-for} or C{forwarded}.
    """
    current = _parse(peer)
    if current is None or not proxies or not _trusted(current, proxies):
        return peer
    for entry in reversed(forwardedChain(headers, header)):
        hop = _parse(entry)
        if hop is None:
            break
        current = hop
        if not _trusted(current, proxies):
            break
    return str(current)


def addressKey(ip: str) -> str:
    """
    What per-address limits count by: an IPv4 address (also when written
    as C{::ffff:a.b.c.d}), or the /64 of an IPv6 address; anything
    unreadable as it is.
    """
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return ip
    if address.version == 6:
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)
