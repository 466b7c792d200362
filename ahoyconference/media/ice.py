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
"""

from __future__ import annotations

import ipaddress

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
