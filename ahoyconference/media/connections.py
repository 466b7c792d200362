# -*- test-case-name: tests.test_media_engine -*-
"""
L{PeerConnections}: makes the engine's peer connections (one DTLS
certificate for all), watches their state and ICE timeout, guards their
sockets, applies answers, and closes them (docs/architecture.md, "The media
engine").
"""

from __future__ import annotations

import asyncio
import datetime
from collections import Counter
from collections.abc import Callable

from aiortc import RTCSessionDescription
from twisted.python.failure import Failure

from ahoyconference.config import IceSettings
from ahoyconference.interfaces import ProtocolError
from ahoyconference.logs import logger
from ahoyconference.media import hooks
from ahoyconference.media import ice as _ice
from ahoyconference.media import sdp as _sdp
from ahoyconference.media.peers import Peer, PublisherConnection

_log = logger(__name__)


class PeerConnections:
    """
    Makes, watches and closes the engine's peer connections.

    Every one uses the same DTLS certificate (as a browser does per origin),
    answers connectivity checks only from C{[ice] allowed_remote_networks}
    (only from loopback when we gather on loopback only), drops junk
    datagrams before aiortc sees them, and is closed when ICE does not
    complete within C{iceTimeout}.  With C{onePort} (an
    L{ahoyconference.media.udpmux.OnePort}) they gather on its sockets.

    @ivar live: every peer connection not yet closed down.
    """

    def __init__(self, ice: IceSettings, clock, iceTimeout: float,
                 onConnected: Callable[[Peer], None], onEnded: Callable[[Peer], None],
                 onDropped: Callable[[str], None], counters: Counter, onePort=None):
        self._ice = ice
        self._clock = clock
        self._iceTimeout = iceTimeout
        self._onConnected = onConnected
        self._onEnded = onEnded
        self._onDropped = onDropped
        self._counters = counters
        self._onePort = onePort
        self._loopbackOnly = _ice.onlyLoopback(tuple(ice.host_addresses))
        self._remote = _ice.RemoteNetworks(ice)
        self._refusedLogged = False
        self._certificate = None
        self.live: set[Peer] = set()
        self._closing: set[asyncio.Future] = set()

    def new(self):
        """A new C{RTCPeerConnection} with the process's DTLS certificate."""
        self._certificate = hooks.freshCertificate(
            self._certificate, datetime.datetime.now(datetime.UTC))
        return hooks.newPeerConnection(_ice.rtcConfiguration(self._ice), self._certificate)

    def watch(self, peer: Peer) -> None:
        """Watch a new peer connection's state and start its ICE timer."""
        self.live.add(peer)
        peer.iceTimer = self._clock.callLater(self._iceTimeout, self._iceTimedOut, peer)

        def changed():
            try:
                self.stateChanged(peer, peer.pc.connectionState)
            except Exception:
                _log.failure("error handling a peer connection state change")

        peer.pc.on("connectionstatechange", changed)
        hooks.guardDatagrams(peer.dtls, lambda: self._onDropped("junk_datagram"))

    async def makeOffer(self, peer: Peer) -> str:
        """
        Create and set the local description (gathering on the one UDP port
        when there is one); guard the ICE agents it made.
        """
        pc = peer.pc
        if self._onePort is not None:
            hooks.gatherOnShared(pc, self._onePort.newUfrag, self._onePort.muxes)
        await pc.setLocalDescription(await pc.createOffer())
        allowed = _ice.isLoopback if self._loopbackOnly else self._remote.allowed
        hooks.guardChecks(pc, allowed, self._refusedCheck)
        return pc.localDescription.sdp

    def _refusedCheck(self, address: str) -> None:
        """A connectivity check came from an address we may not send to: ignored."""
        self._counters["refused_ice_checks"] += 1
        if not self._refusedLogged:
            self._refusedLogged = True
            _log.info("ignored an ICE connectivity check from {address}: outside [ice] "
                      "allowed_remote_networks (later ones are only counted: "
                      "ahoy_refused_ice_checks_total)", address=address)

    def stateChanged(self, peer: Peer, state: str) -> None:
        """The peer connection's state is C{state} now."""
        _log.debug("{what}: peer connection {state}", what=peer.describe(), state=state)
        if peer.closed:
            return
        if state == "connected" and not peer.connected:
            peer.connected = True
            self._cancelIceTimer(peer)
            self._onConnected(peer)
        elif state == "failed":
            _log.warn("ICE/DTLS failed for the {what}", what=peer.describe())
            self._onEnded(peer)
        elif state == "closed":
            _log.info("peer connection of the {what} closed", what=peer.describe())
            self._onEnded(peer)

    def _iceTimedOut(self, peer: Peer) -> None:
        peer.iceTimer = None
        if peer.connected or peer.closed:
            return
        _log.warn("ICE did not complete within {timeout} s for the {what}; closing it",
                  timeout=self._iceTimeout, what=peer.describe())
        self._onEnded(peer)

    def _cancelIceTimer(self, peer: Peer) -> None:
        if peer.iceTimer is not None and peer.iceTimer.active():
            peer.iceTimer.cancel()
        peer.iceTimer = None

    def close(self, peer: Peer) -> None:
        """Close a peer connection (once); it leaves L{live} when aiortc is done."""
        if peer.closed:
            return
        peer.closed = True
        self._cancelIceTimer(peer)
        call = getattr(peer, "probeReportCall", None)
        if call is not None and call.active():
            call.cancel()
        if isinstance(peer, PublisherConnection):
            peer.releaseSockets()
        future = asyncio.ensure_future(peer.pc.close())
        self._closing.add(future)

        def done(f):
            self._closing.discard(f)
            self.live.discard(peer)
            if not f.cancelled() and f.exception() is not None:
                e = f.exception()
                _log.failure("error closing the {what}", Failure(e, type(e), e.__traceback__),
                             what=peer.describe())

        future.add_done_callback(done)

    async def applyAnswer(self, peer: Peer, sdp: str, handleRtp, handleRtcp, what: str):
        """
        Route the peer's decrypted packets to our handlers (aiortc's receivers
        never see them) and apply its (checked) answer; 488 if aiortc refuses it.
        """
        hooks.routeDecrypted(peer.dtls, handleRtp, handleRtcp)
        try:
            await peer.pc.setRemoteDescription(
                RTCSessionDescription(sdp=self._remoteAnswer(sdp, peer), type="answer"))
        except Exception as e:
            _log.info("{what} refused: {error}", what=what, error=e)
            raise ProtocolError(488, detail=str(e))

    def _remoteAnswer(self, sdp: str, peer: Peer) -> str:
        """
        The answer as aiortc gets it: without mDNS candidates and without
        candidates we cannot or must not send to (L{_sdp.usableCandidates}:
        unreachable from our host addresses, outside C{[ice]
        allowed_remote_networks}, over the limit).
        """
        sdp, dropped = _sdp.usableCandidates(_sdp.dropMdnsCandidates(sdp),
                                             tuple(self._ice.host_addresses),
                                             allowed=self._remote.allowed)
        if dropped:
            self._counters["dropped_candidates"] += dropped
            _log.info("dropped {count} remote candidate(s) of the {what}: unreachable from our "
                      "host addresses, or over the limit", count=dropped, what=peer.describe())
        return sdp

    def states(self) -> Counter:
        """Peer connections by aiortc's connection state."""
        return Counter(peer.pc.connectionState for peer in self.live)

    async def closeAll(self) -> None:
        """Close every live peer connection and wait until aiortc is done."""
        for peer in list(self.live):
            self.close(peer)
        while self._closing:
            await asyncio.gather(*list(self._closing), return_exceptions=True)
