# -*- test-case-name: tests.test_media_engine -*-
"""
The engine's peer connections (docs/architecture.md, "The media engine").

 - L{PublisherConnection}: one per publish offer; the server receives.  Once
   connected it takes the publisher's SRTP straight from its ICE sockets
   (L{PublisherConnection.takeSockets}) and hands each decrypted packet to the
   L{ahoyconference.media.forward.InStream} of its payload type.
 - L{Subscription}: one per subscriber and publisher; the server sends with
   a L{NeverTrack} so that aiortc's sender neither polls nor encodes.
 - L{Publisher}: a publishing member's current and pending connections.
 - L{PeerConnections}: makes, watches (state, ICE timeout) and closes them.
"""

from __future__ import annotations

import asyncio
import datetime
import math
from collections import Counter
from collections.abc import Callable

from aiortc import RTCSessionDescription
from aiortc.mediastreams import MediaStreamTrack
from aiortc.rtcrtpsender import RTCRtpSender
from pylibsrtp import Error as SrtpError
from twisted.python.failure import Failure

from ahoyconference.config import IceSettings
from ahoyconference.interfaces import ProtocolError
from ahoyconference.logs import logger
from ahoyconference.media import hooks
from ahoyconference.media import ice as _ice
from ahoyconference.media import sdp as _sdp
from ahoyconference.media.faults import Faults

_log = logger(__name__)

KINDS = ("audio", "video")


def short(memberID: str) -> str:
    """A member ID as logs show it."""
    return memberID[:12]


class NeverTrack(MediaStreamTrack):
    """
    A track for a subscription's sender: C{recv()} never returns, so the
    sender neither polls nor encodes; the engine sends the packets itself.
    """

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind

    async def recv(self):
        """Wait forever (until the sender is stopped and cancels us)."""
        await asyncio.get_running_loop().create_future()


def codecPreferences(kind: str, keys: set | None = None) -> list:
    """Codec capabilities to offer: opus; VP8 then H264 with RTX; or those of C{keys}."""
    caps = RTCRtpSender.getCapabilities(kind).codecs
    wanted = ("audio/opus",) if kind == "audio" else ("video/vp8", "video/h264")
    chosen = [c for c in caps if c.mimeType.lower() in wanted
              and (keys is None or _sdp.codecKey(c) in keys)]
    chosen.sort(key=lambda c: wanted.index(c.mimeType.lower()))
    if kind == "video":
        chosen += [c for c in caps if c.mimeType.lower() == "video/rtx"]
    return chosen


class Peer:
    """What the engine keeps of one of its peer connections."""

    role = "peer"

    def __init__(self, pc):
        self.pc = pc
        self.offerSdp = ""
        self.transceivers: dict = {}
        self.negotiated: dict[str, _sdp.NegotiatedMedia] = {}
        self.answered = False
        self.connected = False
        self.closed = False
        self.iceTimer = None

    @property
    def dtls(self):
        """The (max-bundled) DTLS transport."""
        return next(iter(self.transceivers.values())).receiver.transport

    def describe(self) -> str:
        """For logs."""
        return self.role


class PublisherConnection(Peer):
    """
    One peer connection on which a member publishes.

    @ivar byPT: payload type → the L{InStream} its packets go to.
    @ivar ssrcs: the SSRCs the answer announced (C{a=ssrc}), maybe none.
    @ivar hooked: C{True} while we take its SRTP from its ICE sockets.
    """

    role = "publisher"

    def __init__(self, pc, memberID: str, kinds: tuple[str, ...],
                 onDropped: Callable[[str], None], faults: Faults):
        super().__init__(pc)
        self.memberID = memberID
        self.kinds = kinds
        self.byPT: dict = {}
        self.rtcpSsrc = 0
        self.unprotect = None
        self.removeStream = None
        self.ssrcs: frozenset[int] = frozenset()
        self.hooked = False
        self._onDropped = onDropped
        self._faults = faults
        self._release: Callable[[], None] | None = None

    def describe(self) -> str:
        """For logs."""
        return f"publisher {short(self.memberID)}"

    def receiveSrtp(self, data: bytes) -> None:
        """An SRTP packet from the publisher's socket: decrypt it, then L{receiveRtp}."""
        try:
            packet = self.unprotect(data)
        except SrtpError:  # replay, authentication
            self._onDropped("srtp")
            return
        except Exception as e:
            self._onDropped("error")
            self._faults.error("receive", e)
            return
        self.receiveRtp(packet)

    def receiveRtp(self, packet: bytes) -> None:
        """A decrypted RTP packet from the publisher: to its stream, or dropped."""
        if len(packet) < 12:
            self._onDropped("short")
            return
        stream = self.byPT.get(packet[1] & 0x7F)
        if stream is None:
            self._onDropped("payload_type")
            ssrc = int.from_bytes(packet[8:12], "big")
            if ssrc not in self.ssrcs and not any(ssrc in s.sources for s in self.byPT.values()):
                self.forget(ssrc)
            return
        try:
            stream.packet(packet)
        except Exception as e:  # a bug: count and log it, never raise into aioice
            self._onDropped("error")
            self._faults.error("forward", e)

    def forget(self, ssrc: int) -> None:
        """
        Free the SRTP stream state libsrtp made for an SSRC the answer never
        announced (it keeps one per SSRC, ~270 bytes each, looked up in a list).
        """
        if self.removeStream is not None:
            try:
                self.removeStream(ssrc)
            except SrtpError:  # not there
                pass

    def takeSockets(self) -> None:
        """Take the publisher's SRTP straight from its ICE sockets (connected)."""
        dtls = self.dtls
        self.unprotect, self.removeStream = hooks.srtpReceive(dtls)
        self._release = hooks.takeDatagrams(dtls, self.receiveSrtp)
        self.hooked = True

    def releaseSockets(self) -> None:
        """Give the sockets back to aioice; forward nothing more."""
        if self._release is not None:
            self._release()
            self._release = None
        self.hooked = False
        self.byPT = {}


class Subscription(Peer):
    """
    One subscriber's peer connection for one publisher's media.

    @ivar outs: kind → L{OutStream}, once connected.
    @ivar remb: the subscriber's latest REMB in bit/s, and C{rembTime} when.
    @ivar retransmitBudget: its L{ahoyconference.media.rtcp.RetransmitBudget},
        made at its first NACK.
    """

    role = "subscription"

    def __init__(self, pc, subscriberID: str, publisherID: str, kinds):
        super().__init__(pc)
        self.subscriberID = subscriberID
        self.publisherID = publisherID
        self.kinds = kinds
        self.outs: dict = {}
        self.remb: int | None = None
        self.rembTime = 0.0
        self.retransmitBudget = None

    def describe(self) -> str:
        """For logs."""
        return (f"subscription of {short(self.subscriberID)} "
                f"to {short(self.publisherID)}")


class SubscriptionTable(dict):
    """
    C{(subscriberID, publisherID)} → L{Subscription}, indexed both ways, so
    that what concerns one member costs what that member has, not what the
    server has: the REMB of a publisher every second (L{of}), a member's
    departure (L{keysOf}).

    Only C{[key] = sub}, C{del}, C{pop} and C{clear} change it.
    """

    def __init__(self):
        super().__init__()
        self._byPublisher: dict[str, dict[str, Subscription]] = {}
        self._bySubscriber: dict[str, set[str]] = {}

    def __setitem__(self, key: tuple[str, str], sub: Subscription) -> None:
        if key in self:
            del self[key]
        super().__setitem__(key, sub)
        subscriberID, publisherID = key
        self._byPublisher.setdefault(publisherID, {})[subscriberID] = sub
        self._bySubscriber.setdefault(subscriberID, set()).add(publisherID)

    def __delitem__(self, key: tuple[str, str]) -> None:
        super().__delitem__(key)
        subscriberID, publisherID = key
        subs = self._byPublisher[publisherID]
        del subs[subscriberID]
        if not subs:
            del self._byPublisher[publisherID]
        pubs = self._bySubscriber[subscriberID]
        pubs.discard(publisherID)
        if not pubs:
            del self._bySubscriber[subscriberID]

    _missing = object()

    def pop(self, key, default=_missing):
        """Remove and return the subscription of C{key} (or C{default})."""
        if key not in self:
            if default is self._missing:
                raise KeyError(key)
            return default
        sub = self[key]
        del self[key]
        return sub

    def clear(self) -> None:
        """Forget every subscription."""
        super().clear()
        self._byPublisher.clear()
        self._bySubscriber.clear()

    def of(self, publisherID: str) -> list[Subscription]:
        """The subscriptions to this publisher."""
        return list(self._byPublisher.get(publisherID, {}).values())

    def keysOf(self, memberID: str) -> list[tuple[str, str]]:
        """The keys of every subscription this member has or is the publisher of."""
        keys = [(memberID, publisherID) for publisherID in self._bySubscriber.get(memberID, ())]
        keys += [(subscriberID, memberID) for subscriberID in self._byPublisher.get(memberID, ())]
        return keys


class Publisher:
    """A member that publishes: its latest request and connections."""

    def __init__(self, memberID: str):
        self.memberID = memberID
        self.kinds: tuple[str, ...] = ()
        self.cap = 500
        self.current: PublisherConnection | None = None
        self.pending: PublisherConnection | None = None
        self.lastPli = -math.inf
        self.pliTimer = None
        self.reportCall = None


class PeerConnections:
    """
    Makes, watches and closes the engine's peer connections.

    Every one uses the same DTLS certificate (as a browser does per origin),
    answers connectivity checks only from C{[ice] allowed_remote_networks}
    (only from loopback when we gather on loopback only), drops junk
    datagrams before aiortc sees them, and is closed when ICE does not
    complete within C{iceTimeout}.

    @ivar live: every peer connection not yet closed down.
    """

    def __init__(self, ice: IceSettings, clock, iceTimeout: float,
                 onConnected: Callable[[Peer], None], onEnded: Callable[[Peer], None],
                 onDropped: Callable[[str], None], counters: Counter):
        self._ice = ice
        self._clock = clock
        self._iceTimeout = iceTimeout
        self._onConnected = onConnected
        self._onEnded = onEnded
        self._onDropped = onDropped
        self._counters = counters
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
        """Create and set the local description; guard the ICE agents it made."""
        pc = peer.pc
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
