# -*- test-case-name: tests.test_media_hooks -*-
"""
The C{[ice]} settings applied to aiortc and aioice (design.md 6).

 - L{rtcConfiguration}: always an explicit C{RTCConfiguration} whose
   C{iceServers} come from the config (none by default: aiortc would
   otherwise ask a public STUN server), with max-bundle.
 - L{installHostAddresses}: C{host_addresses} applied by wrapping
   C{aioice.ice.get_host_addresses} (a private API; tests.test_media_hooks
   fails loudly if it moves).  aioice skips loopback when it gathers, which
   is why tests need this to use 127.0.0.1.
 - L{installConsentTiming}: ICE consent (RFC 7675) expires within 30 s.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable

import aioice.ice
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


_stack: list[tuple[str, ...]] = []
_original: Callable | None = None


def _hostAddresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
    if not _stack:
        return _original(use_ipv4=use_ipv4, use_ipv6=use_ipv6)
    result = []
    for address in _stack[-1]:
        version = ipaddress.ip_address(address).version
        if (version == 4 and use_ipv4) or (version == 6 and use_ipv6):
            result.append(address)
    return result


#: ICE consent freshness (RFC 7675, docs/operations.md "A member whose network
#: goes away"): a check every CONSENT_INTERVAL x (0.8 to 1.2) seconds, each
#: waiting 0.5 s for its answer; CONSENT_FAILURES unanswered in a row end the
#: peer connection.  At most 5 x (4.8 + 0.5) = 26.5 s after the last answer,
#: within RFC 7675's 30 s; aioice's own 5 s x 6 took 32 s in tests.test_netbed.
CONSENT_INTERVAL = 4.0
CONSENT_FAILURES = 5


def installConsentTiming() -> None:
    """
    Set aioice's consent timing (module globals that
    C{aioice.ice.Connection.query_consent} reads on every round;
    tests.test_media_hooks fails loudly if they move).  For the whole
    process, idempotent.
    """
    aioice.ice.CONSENT_INTERVAL = CONSENT_INTERVAL
    aioice.ice.CONSENT_FAILURES = CONSENT_FAILURES


def installHostAddresses(addresses: tuple[str, ...]) -> Callable[[], None]:
    """
    Make aioice gather host candidates on exactly these addresses.

    The wrapper stays installed while any caller needs it; the newest
    caller's addresses apply.  An empty tuple changes nothing.

    @return: a function that undoes this call.
    """
    global _original
    if not addresses:
        return lambda: None
    for address in addresses:
        ipaddress.ip_address(address)  # ValueError for a typo, at start-up
    if aioice.ice.get_host_addresses is not _hostAddresses:
        _original = aioice.ice.get_host_addresses
        aioice.ice.get_host_addresses = _hostAddresses
    entry = tuple(addresses)
    _stack.append(entry)
    done = []

    def uninstall() -> None:
        if done:
            return
        done.append(True)
        _stack.remove(entry)
        if not _stack and aioice.ice.get_host_addresses is _hostAddresses:
            aioice.ice.get_host_addresses = _original

    return uninstall


def onlyLoopback(addresses: tuple[str, ...]) -> bool:
    """Are we gathering on loopback addresses only?"""
    return bool(addresses) and all(ipaddress.ip_address(a).is_loopback for a in addresses)


def ignoreNonLoopbackPeers(pc) -> int:
    """
    Make the ICE agent of C{pc} ignore connectivity checks from addresses
    that are not loopback.

    A server that gathers on loopback only (tests, benches, a server behind a
    local proxy) must not learn a peer-reflexive address elsewhere: Chromium
    happily pairs its socket on the machine's other address with our
    127.0.0.1 candidate, and we would then send media to that address.  Call
    after C{setLocalDescription} (the agents exist then).

    @return: the number of ICE agents guarded (1 with max-bundle).
    """
    guarded = 0
    for transceiver in pc.getTransceivers():
        connection = transceiver.receiver.transport.transport._connection
        if getattr(connection, "_ahoyGuarded", False):
            continue
        original = connection.request_received

        def requestReceived(message, addr, *args, _original=original, **kwargs):
            try:
                if not ipaddress.ip_address(addr[0]).is_loopback:
                    return None
            except ValueError:
                return None
            return _original(message, addr, *args, **kwargs)

        connection.request_received = requestReceived
        connection._ahoyGuarded = True
        guarded += 1
    return guarded
