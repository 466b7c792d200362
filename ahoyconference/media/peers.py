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
 - L{SubscriptionTable}: the subscriptions, indexed by publisher and subscriber.

L{ahoyconference.media.connections.PeerConnections} makes, watches and
closes them.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable

from aiortc.mediastreams import MediaStreamTrack
from aiortc.rtcrtpsender import RTCRtpSender
from pylibsrtp import Error as SrtpError

from ahoyconference.logs import logger
from ahoyconference.media import hooks
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
    if kind == "audio" and keys is not None:
        wanted += ("audio/pcmu", "audio/pcma")  # a phone's codecs (docs/sip.md)
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
    @ivar rtxPT: RTX payload type → C{(InStream, apt)}: retransmissions
        (RFC 4588) for that stream's payload type C{apt}.
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
        self.rtxPT: dict = {}
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
            rtx = self.rtxPT.get(packet[1] & 0x7F)
            if rtx is not None:
                try:
                    rtx[0].retransmission(packet, rtx[1])
                except Exception as e:  # a bug: count and log it, never raise into aioice
                    self._onDropped("error")
                    self._faults.error("repair", e)
                return
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
        self.rtxPT = {}


class Subscription(Peer):
    """
    One subscriber's peer connection for one publisher's media.

    @ivar outs: kind → L{OutStream}, once connected.
    @ivar remb: the subscriber's latest REMB in bit/s, and C{rembTime} when.
    @ivar retransmitBudget: its L{ahoyconference.media.nackbudget.RetransmitBudget},
        made at its first NACK.
    @ivar pair: C{(sendto, addr)} of the nominated ICE pair its outputs send
        on (the engine follows it when it moves: NAT rebinding).
    @ivar reportsSent: our last video sender reports to it: the middle 32
        bits of their NTP timestamp (what its receiver reports quote as
        LSR) → when each went out; the round-trip time comes from them.
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
        #: the highest simulcast layer it asked for (0 low .. 2 high)
        self.quality = 2
        self.retransmitBudget = None
        self.pair = None
        self.reportsSent: dict[int, float] = {}
        #: the next extra sender report while its link is tried (rtcp._watchRoundTrips)
        self.probeReportCall = None

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
        #: the streams (or simulcast layers) the next PLI is for
        self.pliWanted: set = set()
        self.reportCall = None
        #: payload type → codec key of a non-WebRTC publisher (a phone), else empty.
        self.plainCodecs: dict = {}
