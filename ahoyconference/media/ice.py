# -*- test-case-name: tests.test_ice -*-
"""
The C{[ice]} settings as aiortc and aioice take them (docs/architecture.md).

 - L{rtcConfiguration}: always an explicit C{RTCConfiguration} whose
   C{iceServers} come from the config (none by default: aiortc would
   otherwise ask a public STUN server), with max-bundle.
 - C{host_addresses} is applied by L{ahoyconference.media.hooks.installHostAddresses}
   (aioice skips loopback when it gathers, which is why tests need it to use
   127.0.0.1).
 - L{isLoopback}: which connectivity checks a loopback-only server answers.
 - L{RemoteNetworks}: C{allowed_remote_networks}, the remote addresses the
   server may send STUN and media to (remote candidates outside are dropped
   from answers, connectivity checks from outside are ignored).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

import aioice.ice
import ifaddr
from aiortc import RTCConfiguration, RTCIceServer
from aiortc.rtcconfiguration import RTCBundlePolicy

from ahoyconference.config import IceSettings


def iceServers(settings: IceSettings) -> list[RTCIceServer]:
    """The STUN/TURN servers of the config as aiortc's L{RTCIceServer}s."""
    return [
        RTCIceServer(
            urls=server["urls"],
            username=server.get("username"),
            credential=server.get("credential"),
        )
        for server in settings.servers
    ]


def rtcConfiguration(settings: IceSettings) -> RTCConfiguration:
    """The configuration every server-side peer connection is made with."""
    return RTCConfiguration(
        iceServers=iceServers(settings), bundlePolicy=RTCBundlePolicy.MAX_BUNDLE
    )


def hostAddresses(settings: IceSettings) -> tuple[str, ...]:
    """
    The addresses the one UDP port is bound on: C{host_addresses}, or
    aioice's choice (every non-loopback interface) when that is empty.
    """
    if settings.host_addresses:
        return tuple(settings.host_addresses)
    return tuple(aioice.ice.get_host_addresses(use_ipv4=True, use_ipv6=True))


def onlyLoopback(addresses: tuple[str, ...]) -> bool:
    """Are we gathering on loopback addresses only?"""
    return bool(addresses) and all(ipaddress.ip_address(a).is_loopback for a in addresses)


def isLoopback(address: str) -> bool:
    """
    Is C{address} a loopback address?  A server that gathers on loopback
    only (tests, benches, a server behind a local proxy) must not learn a
    peer-reflexive address elsewhere: Chromium happily pairs its socket on
    the machine's other address with our 127.0.0.1 candidate, and we would
    then send media to that address.
    """
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


PUBLIC = "public"
"""In C{allowed_remote_networks}: every globally routed unicast address."""

LOCAL = "local"
"""In C{allowed_remote_networks}: the networks of the addresses we gather on."""

DEFAULT_ALLOWED = (PUBLIC, LOCAL)
"""The default: the Internet, and the server's own subnets (a LAN works)."""


def parseNetworks(entries: Iterable[str]) -> list:
    """
    Check C{allowed_remote_networks} entries: C{"public"}, C{"local"} or a
    network in CIDR notation (C{"10.0.0.0/8"}, C{"fd00::/8"}).

    @return: the CIDR entries as C{ipaddress} networks.
    @raise ValueError: an entry is none of these.
    """
    networks = []
    for entry in entries:
        if entry in (PUBLIC, LOCAL):
            continue
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            raise ValueError(f"{entry!r} is not 'public', 'local' or a network like 10.0.0.0/8")
    return networks


def interfaceNetworks(hostAddresses: tuple[str, ...] = ()) -> list:
    """
    The networks (address and prefix) of this machine's interfaces that
    carry C{hostAddresses}, or of every non-loopback interface when there are
    none (aioice's default).
    """
    wanted = {ipaddress.ip_address(a) for a in hostAddresses}
    networks = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            address = ip.ip[0] if isinstance(ip.ip, tuple) else ip.ip
            try:
                parsed = ipaddress.ip_address(address)
            except ValueError:
                continue
            if wanted and parsed not in wanted:
                continue
            if not wanted and (parsed.is_loopback or parsed.is_link_local):
                continue
            networks.append(ipaddress.ip_network(f"{address}/{ip.network_prefix}", strict=False))
    for address in wanted:  # configured, but on no interface (tests, containers): itself
        if not any(address in n for n in networks):
            networks.append(ipaddress.ip_network(address))
    return networks


class RemoteNetworks:
    """
    Which remote addresses the server may send STUN and media to.

    @param settings: the C{[ice]} settings (C{allowed_remote_networks},
        C{host_addresses}).
    @param local: the networks C{"local"} stands for (default: those of our
        interfaces, L{interfaceNetworks}).
    """

    def __init__(self, settings: IceSettings, local: list | None = None):
        entries = tuple(settings.allowed_remote_networks)
        self._public = PUBLIC in entries
        self._networks = parseNetworks(entries)
        if LOCAL in entries:
            self._networks += (local if local is not None
                               else interfaceNetworks(tuple(settings.host_addresses)))

    def allowed(self, address: str) -> bool:
        """May we send to C{address}?  (Names and malformed addresses: no.)"""
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        if ip.version == 6 and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if self._public and ip.is_global:
            return True
        return any(ip in network for network in self._networks)
