# -*- test-case-name: tests.test_media_engine -*-
"""
L{AiortcMediaEngine}: publishing, subscribing and forwarding with aiortc,
never decoding (design.md 5 and 9).

One C{RTCPeerConnection} per publisher (the server receives, and offers) and
one per subscription (the server sends with a track whose C{recv()} never
returns, and offers).  aiortc does ICE, DTLS, SRTP keys, SDP and the RTCP
timers; the media itself goes through L{ahoyconference.media.forward}:

 - in: the publisher's ICE sockets hand every SRTP packet straight to
   L{_PublisherConnection.rtp} (the aioice C{StunProtocol.datagram_received}
   of the connection's sockets is wrapped per instance, and
   C{RTCDtlsTransport._handle_rtp_data} is replaced on the instance for
   packets that went through aiortc's queue), so aiortc's receiver, jitter
   buffer and decoder never see a packet;
 - out: per subscriber, header rewrite, C{protect}, C{sendto} on the
   nominated pair, synchronously;
 - RTCP: subscribers' PLI/FIR become a throttled PLI to the publisher, their
   NACKs are answered from the stream's ring, their REMBs (capped by the
   publisher's C{maxVideoBitrate}) go to the publisher with our receiver
   reports; subscribers get sender reports carrying the publisher's clock.

The private aiortc/aioice attributes used are checked by
C{tests.test_media_hooks}.
"""

from __future__ import annotations

import asyncio
import math
from collections import Counter

from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamTrack
from aiortc.rtcrtpsender import RTCRtpSender
from aiortc.rtp import (
    RTCP_PSFB_APP,
    RTCP_PSFB_FIR,
    RTCP_PSFB_PLI,
    RTCP_RTPFB_NACK,
    RtcpPacket,
    RtcpPsfbPacket,
    RtcpRrPacket,
    RtcpRtpfbPacket,
    RtcpSenderInfo,
    RtcpSrPacket,
    pack_remb_fci,
    unpack_remb_fci,
)
from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall
from twisted.python.failure import Failure
from zope.interface import implementer

from ahoyconference.config import IceSettings
from ahoyconference.interfaces import IMediaEngine, IMediaListener, ProtocolError
from ahoyconference.logs import logger
from ahoyconference.media import ice as _ice
from ahoyconference.media import sdp as _sdp
from ahoyconference.media.forward import InStream, OutStream
from ahoyconference.media.speaking import SpeakingDetector

_log = logger(__name__)

KINDS = ("audio", "video")
REMB_FRESH = 5.0
"""Seconds a subscriber's REMB counts for the publisher's bitrate."""
MAX_NACKED = 64
"""Sequence numbers answered per NACK packet (browsers NACK a handful)."""


def installAsyncioExceptionHandler(loop: asyncio.AbstractEventLoop | None = None) -> None:
    """
    Log errors of asyncio callbacks and tasks (aiortc's background tasks
    report only there) through C{twisted.logger}.

    Call it once the asyncio reactor is installed (C{tap.py}).
    """
    if loop is None:
        loop = asyncio.get_event_loop()

    def handler(loop, context):
        message = context.get("message", "unhandled error")
        exception = context.get("exception")
        # not "message": the legacy log system owns that key
        if exception is not None:
            _log.failure("asyncio: {asyncio_message}",
                         Failure(exception, type(exception), exception.__traceback__),
                         asyncio_message=message)
        else:
            _log.error("asyncio: {asyncio_message}", asyncio_message=message)

    loop.set_exception_handler(handler)


def _deferred(coro) -> Deferred:
    return Deferred.fromFuture(asyncio.ensure_future(coro))


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


def _preferences(kind: str, keys: set | None = None) -> list:
    """Codec capabilities to offer: opus; VP8 then H264 with RTX; or those of C{keys}."""
    caps = RTCRtpSender.getCapabilities(kind).codecs
    wanted = ("audio/opus",) if kind == "audio" else ("video/vp8", "video/h264")
    chosen = [c for c in caps if c.mimeType.lower() in wanted
              and (keys is None or _sdp.codecKey(c) in keys)]
    chosen.sort(key=lambda c: wanted.index(c.mimeType.lower()))
    if kind == "video":
        chosen += [c for c in caps if c.mimeType.lower() == "video/rtx"]
    return chosen


def _short(memberID: str) -> str:
    return memberID[:12]


def _sendRtcp(dtls, data: bytes) -> bool:
    """Protect and send RTCP on a DTLS transport's nominated pair, synchronously."""
    if dtls.state != "connected":
        return False
    pair = dtls.transport._connection._nominated.get(1)
    if pair is None:
        return False
    pair.protocol.transport.sendto(dtls._tx_srtp.protect_rtcp(data), pair.remote_addr)
    return True


class _Peer:
    """What the engine keeps of one of its peer connections."""

    role = "peer"

    def __init__(self, engine: AiortcMediaEngine, pc: RTCPeerConnection):
        self.engine = engine
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


class _PublisherConnection(_Peer):
    """One peer connection on which a member publishes."""

    role = "publisher"

    def __init__(self, engine, pc, memberID: str, kinds: tuple[str, ...]):
        super().__init__(engine, pc)
        self.memberID = memberID
        self.kinds = kinds
        self.byPT: dict[int, InStream] = {}
        self.rtcpSsrc = 0
        self.unprotect = None
        self.removeStream = None
        self.ssrcs: frozenset[int] = frozenset()
        self.hooked: list = []

    def describe(self) -> str:
        """For logs."""
        return f"publisher {_short(self.memberID)}"

    def rtp(self, data: bytes) -> None:
        """An SRTP packet from the publisher's socket."""
        try:
            plain = self.unprotect(data)
        except Exception:  # pylibsrtp.Error: replay, authentication
            self.engine._dropped += 1
            return
        self.plain(plain)

    def plain(self, plain: bytes) -> None:
        """A decrypted RTP packet from the publisher."""
        if len(plain) < 12:
            self.engine._dropped += 1
            return
        stream = self.byPT.get(plain[1] & 0x7F)
        if stream is None:
            self.engine._dropped += 1
            if self.ssrcs:
                ssrc = int.from_bytes(plain[8:12], "big")
                if ssrc not in self.ssrcs:
                    self.forget(ssrc)
            return
        stream.packet(plain)

    def forget(self, ssrc: int) -> None:
        """
        Free the SRTP stream state libsrtp made for an SSRC the answer never
        announced (it keeps one per SSRC, ~270 bytes each, looked up in a list).
        """
        if self.removeStream is not None:
            try:
                self.removeStream(ssrc)
            except Exception:  # pylibsrtp.Error: not there
                pass

    def hook(self) -> None:
        """Take the publisher's SRTP straight from its ICE sockets."""
        dtls = self.dtls
        self.unprotect = dtls._rx_srtp.unprotect
        self.removeStream = dtls._rx_srtp.remove_stream
        rtp = self.rtp
        for protocol in list(dtls.transport._connection._protocols):
            original = protocol.datagram_received

            def datagram_received(data, addr, _original=original, _rtp=rtp):
                if len(data) > 12 and 127 < data[0] < 192 and not 191 < data[1] < 224:
                    _rtp(data)
                else:
                    _original(data, addr)

            protocol.datagram_received = datagram_received
            self.hooked.append((protocol, datagram_received))

    def unhook(self) -> None:
        """Give the sockets back to aioice."""
        for protocol, ours in self.hooked:
            if protocol.__dict__.get("datagram_received") is ours:
                del protocol.datagram_received
        self.hooked = []
        self.byPT = {}


class _Subscription(_Peer):
    """One subscriber's peer connection for one publisher's media."""

    role = "subscription"

    def __init__(self, engine, pc, subscriberID: str, publisherID: str, kinds):
        super().__init__(engine, pc)
        self.subscriberID = subscriberID
        self.publisherID = publisherID
        self.kinds = kinds
        self.outs: dict[str, OutStream] = {}
        self.remb: int | None = None
        self.rembTime = 0.0

    def describe(self) -> str:
        """For logs."""
        return (f"subscription of {_short(self.subscriberID)} "
                f"to {_short(self.publisherID)}")


class _Publisher:
    """A member that publishes: its latest request and connections."""

    def __init__(self, memberID: str):
        self.memberID = memberID
        self.kinds: tuple[str, ...] = ()
        self.cap = 500
        self.current: _PublisherConnection | None = None
        self.pending: _PublisherConnection | None = None
        self.lastPli = -math.inf
        self.pliTimer = None
        self.reportCall = None


@implementer(IMediaEngine)
class AiortcMediaEngine:
    """
    The default L{IMediaEngine}: aiortc for ICE/DTLS/SRTP/SDP, our own
    forwarding path for the packets.

    @ivar counters: extra counters (keyframe requests sent, NACKs answered).
    """

    def __init__(self, listener: IMediaListener, ice: IceSettings, clock, iceTimeout: float = 30.0,
                 *, pliInterval: float = 0.3, reportInterval: float = 1.0):
        """
        @param listener: told of media availability and speaking changes.
        @param ice: the C{[ice]} settings.
        @param clock: an C{IReactorTime} for timers and time stamps.
        @param iceTimeout: seconds a peer connection may take to connect.
        @param pliInterval: at most one keyframe request per publisher per
            this many seconds (the rest are merged).
        @param reportInterval: seconds between our RTCP reports (receiver
            reports and REMB to publishers, speaking timeouts).
        """
        self._listener = listener
        self._iceSettings = ice
        self._clock = clock
        self._now = clock.seconds
        self._iceTimeout = iceTimeout
        self._pliInterval = pliInterval
        self._publishers: dict[str, _Publisher] = {}
        self._streams: dict[tuple[str, str], InStream] = {}
        self._detectors: dict[str, SpeakingDetector] = {}
        self._subscriptions: dict[tuple[str, str], _Subscription] = {}
        self._peers: set[_Peer] = set()
        self._closing: set[asyncio.Future] = set()
        self._closed = False
        self._dropped = 0
        self._retired = Counter()
        self.counters = Counter()
        self._uninstallHosts = _ice.installHostAddresses(tuple(ice.host_addresses))
        self._loopbackOnly = _ice.onlyLoopback(tuple(ice.host_addresses))
        self._ticker = LoopingCall(self._tick)
        self._ticker.clock = clock
        self._reportInterval = reportInterval

    # -- helpers --------------------------------------------------------------

    def _checkOpen(self) -> None:
        if self._closed:
            raise ProtocolError(503, detail="media engine closed")

    def _newPeerConnection(self) -> RTCPeerConnection:
        return RTCPeerConnection(_ice.rtcConfiguration(self._iceSettings))

    def _track(self, peer: _Peer) -> None:
        """Watch a new peer connection's state and start its ICE timer."""
        self._peers.add(peer)
        if not self._ticker.running:
            self._ticker.start(self._reportInterval, now=False)
        peer.iceTimer = self._clock.callLater(self._iceTimeout, self._iceTimedOut, peer)

        def changed():
            try:
                self._stateChanged(peer, peer.pc.connectionState)
            except Exception:
                _log.failure("error handling a peer connection state change")

        peer.pc.on("connectionstatechange", changed)
        self._guardDatagrams(peer)

    def _guardDatagrams(self, peer: _Peer) -> None:
        """
        Drop (and count) datagrams that are neither DTLS nor SRTP/SRTCP before
        aioice queues them for aiortc: an empty one would end aiortc's DTLS
        receive loop (C{data[0]}), and with it the peer connection; anyone
        can send one to our port.
        """
        connection = peer.dtls.transport._connection
        original = connection.data_received

        def data_received(data, component, _original=original):
            if data and (19 < data[0] < 64 or 127 < data[0] < 192):
                _original(data, component)
            else:
                self._dropped += 1

        connection.data_received = data_received

    def _stateChanged(self, peer: _Peer, state: str) -> None:
        _log.debug("{what}: peer connection {state}", what=peer.describe(), state=state)
        if peer.closed:
            return
        if state == "connected" and not peer.connected:
            peer.connected = True
            self._cancelIceTimer(peer)
            if isinstance(peer, _PublisherConnection):
                self._publisherConnected(peer)
            else:
                self._subscriptionConnected(peer)
        elif state == "failed":
            _log.warn("ICE/DTLS failed for the {what}", what=peer.describe())
            self._peerEnded(peer)
        elif state == "closed":
            _log.info("peer connection of the {what} closed", what=peer.describe())
            self._peerEnded(peer)

    def _iceTimedOut(self, peer: _Peer) -> None:
        peer.iceTimer = None
        if peer.connected or peer.closed:
            return
        _log.warn("ICE did not complete within {timeout} s for the {what}; closing it",
                  timeout=self._iceTimeout, what=peer.describe())
        self._peerEnded(peer)

    def _cancelIceTimer(self, peer: _Peer) -> None:
        if peer.iceTimer is not None and peer.iceTimer.active():
            peer.iceTimer.cancel()
        peer.iceTimer = None

    def _peerEnded(self, peer: _Peer) -> None:
        """A peer connection failed, closed or timed out: forget it."""
        if isinstance(peer, _PublisherConnection):
            pub = self._publishers.get(peer.memberID)
            if pub is not None:
                if pub.pending is peer:
                    pub.pending = None
                    if pub.current is not None:
                        pub.kinds = pub.current.kinds
                if pub.current is peer:
                    pub.current = None
                    self._sourceGone(pub, peer.kinds)
                if pub.current is None and pub.pending is None:
                    self._forgetPublisher(pub)
        else:
            key = (peer.subscriberID, peer.publisherID)
            if self._subscriptions.get(key) is peer:
                del self._subscriptions[key]
            self._detachOutputs(peer)
        self._closePeer(peer)

    def _closePeer(self, peer: _Peer) -> None:
        if peer.closed:
            return
        peer.closed = True
        self._cancelIceTimer(peer)
        if isinstance(peer, _PublisherConnection):
            peer.unhook()
        future = asyncio.ensure_future(peer.pc.close())
        self._closing.add(future)

        def done(f):
            self._closing.discard(f)
            self._peers.discard(peer)
            if not f.cancelled() and f.exception() is not None:
                e = f.exception()
                _log.failure("error closing the {what}", Failure(e, type(e), e.__traceback__),
                             what=peer.describe())

        future.add_done_callback(done)

    async def _applyAnswer(self, peer: _Peer, sdp: str, handleRtp, handleRtcp, what: str):
        """
        Route the peer's decrypted packets to our handlers (aiortc's receivers
        never see them) and apply its (checked) answer; 488 if aiortc refuses it.
        """
        dtls = peer.dtls
        dtls._handle_rtp_data = handleRtp
        dtls._handle_rtcp_data = handleRtcp
        try:
            await peer.pc.setRemoteDescription(
                RTCSessionDescription(sdp=self._remoteAnswer(sdp, peer), type="answer"))
        except Exception as e:
            _log.info("{what} refused: {error}", what=what, error=e)
            raise ProtocolError(488, detail=str(e))

    def _remoteAnswer(self, sdp: str, peer: _Peer) -> str:
        """
        The answer as aiortc gets it: without mDNS candidates and without
        candidates we cannot or must not send to (L{_sdp.usableCandidates}).
        """
        sdp, dropped = _sdp.usableCandidates(_sdp.dropMdnsCandidates(sdp),
                                             tuple(self._iceSettings.host_addresses))
        if dropped:
            self.counters["dropped_candidates"] += dropped
            _log.info("dropped {count} remote candidate(s) of the {what}: unreachable from our "
                      "host addresses, or over the limit", count=dropped, what=peer.describe())
        return sdp

    def _stream(self, publisherID: str, kind: str) -> InStream:
        stream = self._streams.get((publisherID, kind))
        if stream is None:
            onLevel = None
            if kind == "audio":
                onLevel = self._detector(publisherID).level
            stream = InStream(publisherID, kind, self._now, onAvailable=self._available,
                              onKeyframeNeeded=self._keyframeNeeded, onLevel=onLevel,
                              onSource=self._newSource, onForeign=self._foreignSsrc)
            self._streams[(publisherID, kind)] = stream
        return stream

    def _detector(self, publisherID: str) -> SpeakingDetector:
        detector = self._detectors.get(publisherID)
        if detector is None:
            def changed(speaking):
                _log.debug("member {member_id} speaking: {speaking}",
                           member_id=_short(publisherID), speaking=speaking)
                self._tell("speakingChanged", publisherID, speaking)
            detector = self._detectors[publisherID] = SpeakingDetector(changed)
        return detector

    def _tell(self, method: str, *args) -> None:
        try:
            getattr(self._listener, method)(*args)
        except Exception:
            _log.failure("the media listener's {method} raised", method=method)

    def _available(self, stream: InStream, available: bool) -> None:
        _log.debug("media {kind} {state} from member {member_id}", kind=stream.kind,
                  state="up" if available else "down", member_id=_short(stream.publisherID))
        self._tell("mediaAvailable", stream.publisherID, stream.kind, available)

    def _sourceGone(self, pub: _Publisher, kinds) -> None:
        """A publisher connection's media stopped: tell, and reset the streams."""
        for kind in kinds:
            stream = self._streams.get((pub.memberID, kind))
            if stream is None:
                continue
            stream.sourceGone()
            if stream.available:
                stream.available = False
                self._available(stream, False)
            if kind == "audio":
                detector = self._detectors.get(pub.memberID)
                if detector is not None:
                    detector.reset()

    def _forgetPublisher(self, pub: _Publisher) -> None:
        if self._publishers.get(pub.memberID) is pub:
            del self._publishers[pub.memberID]
        for call in (pub.pliTimer, pub.reportCall):
            if call is not None and call.active():
                call.cancel()
        pub.pliTimer = pub.reportCall = None

    def _detachOutputs(self, sub: _Subscription) -> None:
        for kind, out in sub.outs.items():
            stream = self._streams.get((sub.publisherID, kind))
            if stream is not None:
                stream.detach(out)
        sub.outs = {}

    # -- publishing -----------------------------------------------------------

    def publish(self, memberID, audio, video, maxVideoBitrate):
        """
        Offer to receive this member's media (a new peer connection; the
        current one, if any, stays until the answer is accepted).

        @return: a Deferred firing with the SDP offer.
        """
        return _deferred(self._publish(memberID, bool(audio), bool(video), int(maxVideoBitrate)))

    async def _publish(self, memberID, audio, video, cap):
        self._checkOpen()
        kinds = tuple(k for k, wanted in zip(KINDS, (audio, video), strict=True) if wanted)
        if not kinds:
            raise ProtocolError(400, detail="nothing to publish")
        pub = self._publishers.get(memberID)
        if pub is None:
            pub = self._publishers[memberID] = _Publisher(memberID)
        pc = self._newPeerConnection()
        conn = _PublisherConnection(self, pc, memberID, kinds)
        for kind in kinds:
            transceiver = pc.addTransceiver(kind, direction="recvonly")
            transceiver.setCodecPreferences(_preferences(kind))
            conn.transceivers[kind] = transceiver
        conn.rtcpSsrc = conn.transceivers[kinds[0]].sender._ssrc
        if pub.pending is not None:
            self._closePeer(pub.pending)
        pub.pending = conn
        pub.kinds = kinds
        pub.cap = max(1, cap)
        self._track(conn)
        await pc.setLocalDescription(await pc.createOffer())
        if self._loopbackOnly:
            _ice.ignoreNonLoopbackPeers(pc)
        if conn.closed or self._publishers.get(memberID) is not pub or pub.pending is not conn:
            self._closePeer(conn)
            raise ProtocolError(409, detail="publish superseded")
        offer = pc.localDescription.sdp
        if "video" in kinds:
            offer = _sdp.addBandwidth(offer, "video", pub.cap)
        offer = _sdp.advertiseAddress(offer, self._iceSettings.public_address)
        conn.offerSdp = offer
        _log.debug("publish offer for {member_id} ({size} bytes of SDP)",
                   member_id=_short(memberID), size=len(offer))
        return offer

    def acceptPublishAnswer(self, memberID, sdp):
        """
        Apply the answer to the latest publish offer.

        @return: a Deferred; fails with L{ProtocolError} 488 (unusable SDP,
            nothing changed) or 409 (no offer outstanding).
        """
        return _deferred(self._acceptPublishAnswer(memberID, sdp))

    async def _acceptPublishAnswer(self, memberID, sdp):
        self._checkOpen()
        pub = self._publishers.get(memberID)
        conn = pub.pending if pub is not None else None
        if conn is None or conn.closed:
            raise ProtocolError(409, detail="no publish offer outstanding")
        _log.debug("publish answer from {member_id} ({size} characters of SDP)",
                   member_id=_short(memberID), size=len(sdp) if isinstance(sdp, str) else "no")
        negotiated = _sdp.checkAnswer(conn.offerSdp, sdp, "publisher")

        async def handleRtp(data, arrival_time_ms=0):
            conn.plain(data)

        async def handleRtcp(data):
            self._publisherRtcp(conn, data)

        await self._applyAnswer(conn, sdp, handleRtp, handleRtcp,
                                f"publish answer of {_short(memberID)}")
        if conn.closed or pub.pending is not conn or self._publishers.get(memberID) is not pub:
            raise ProtocolError(409, detail="publish superseded")
        conn.answered = True
        conn.negotiated = {m.kind: m for m in negotiated}
        conn.ssrcs = frozenset(ssrc for m in negotiated for ssrc in m.ssrcs)
        old = pub.current
        pub.pending = None
        pub.current = conn
        if old is not None:
            old.unhook()
            self._sourceGone(pub, [k for k in old.kinds if k not in conn.kinds])
            for kind in old.kinds:
                stream = self._streams.get((memberID, kind))
                if stream is not None and kind in conn.kinds:
                    stream.sourceGone()
            self._closePeer(old)
        for kind in conn.kinds:
            media = conn.negotiated[kind]
            stream = self._stream(memberID, kind)
            stream.configure(media.codecs, media.clockRates,
                             media.extensions.get(_sdp.MID_URI, 0),
                             media.extensions.get(_sdp.AUDIO_LEVEL_URI, 0) if kind == "audio" else 0,
                             media.ssrcs)
            for pt in media.codecs:
                conn.byPT[pt] = stream
        _log.info("member {member_id} publishes {kinds} (video cap {cap} kbit/s)",
                  member_id=_short(memberID), kinds="+".join(conn.kinds), cap=pub.cap)
        if conn.pc.connectionState == "connected" and not conn.connected:
            self._stateChanged(conn, "connected")

    def _publisherConnected(self, conn: _PublisherConnection) -> None:
        pub = self._publishers.get(conn.memberID)
        if pub is None or pub.current is not conn or conn.hooked:
            return
        conn.hook()
        _log.info("publisher {member_id} connected", member_id=_short(conn.memberID))
        self._sendReports(pub)

    def _publisherRtcp(self, conn: _PublisherConnection, data: bytes) -> None:
        try:
            packets = RtcpPacket.parse(data)
        except ValueError:
            self._dropped += 1
            return
        for packet in packets:
            if isinstance(packet, RtcpSrPacket):
                info = packet.sender_info
                for kind in conn.kinds:
                    stream = self._streams.get((conn.memberID, kind))
                    if stream is not None:
                        stream.senderReport(packet.ssrc, info.ntp_timestamp, info.rtp_timestamp)

    def _newSource(self, stream: InStream) -> None:
        """A publisher's stream has a new source: send it our REMB soon."""
        if stream.kind != "video":
            return
        pub = self._publishers.get(stream.publisherID)
        if pub is not None and pub.reportCall is None:
            def report():
                pub.reportCall = None
                self._sendReports(pub)

            pub.reportCall = self._clock.callLater(0, report)

    def _foreignSsrc(self, stream: InStream, ssrc: int) -> None:
        """A publisher sent an SSRC its answer did not announce (dropped)."""
        pub = self._publishers.get(stream.publisherID)
        if pub is not None and pub.current is not None:
            pub.current.forget(ssrc)

    def _keyframeNeeded(self, stream: InStream) -> None:
        self.requestKeyframe(stream.publisherID)

    def requestKeyframe(self, publisherID: str) -> None:
        """
        Ask the publisher for a keyframe (PLI), at most once per
        C{pliInterval}: requests in between are merged into one sent when
        the interval is over.
        """
        pub = self._publishers.get(publisherID)
        if pub is None or pub.pliTimer is not None:
            return
        wait = pub.lastPli + self._pliInterval - self._now()
        if wait <= 0:
            self._sendPli(pub)
        else:
            def fire():
                pub.pliTimer = None
                self._sendPli(pub)

            pub.pliTimer = self._clock.callLater(wait, fire)

    def _sendPli(self, pub: _Publisher) -> None:
        conn = pub.current
        stream = self._streams.get((pub.memberID, "video"))
        if conn is None or not conn.hooked or stream is None or stream.ssrc is None:
            return
        packet = RtcpPsfbPacket(fmt=RTCP_PSFB_PLI, ssrc=conn.rtcpSsrc, media_ssrc=stream.ssrc)
        if _sendRtcp(conn.dtls, bytes(packet)):
            pub.lastPli = self._now()
            self.counters["keyframe_requests"] += 1

    def bitrateFor(self, publisherID: str) -> int:
        """
        The REMB for a publisher in bit/s: the smallest fresh REMB of its
        subscribers, never above its cap.
        """
        pub = self._publishers.get(publisherID)
        cap = (pub.cap if pub is not None else 500) * 1000
        now = self._now()
        for sub in self._subscriptions.values():
            if (sub.publisherID == publisherID and sub.remb is not None
                    and "video" in sub.outs and now - sub.rembTime <= REMB_FRESH):
                cap = min(cap, sub.remb)
        return cap

    def _sendReports(self, pub: _Publisher) -> None:
        """Our receiver reports, and the REMB, to a publisher."""
        conn = pub.current
        if conn is None or not conn.hooked:
            return
        reports = []
        for kind in conn.kinds:
            stream = self._streams.get((pub.memberID, kind))
            info = stream.receiverInfo() if stream is not None else None
            if info is not None:
                reports.append(info)
        data = bytes(RtcpRrPacket(ssrc=conn.rtcpSsrc, reports=reports))
        video = self._streams.get((pub.memberID, "video"))
        if "video" in conn.kinds and video is not None and video.ssrc is not None:
            remb = RtcpPsfbPacket(fmt=RTCP_PSFB_APP, ssrc=conn.rtcpSsrc, media_ssrc=0,
                                  fci=pack_remb_fci(self.bitrateFor(pub.memberID), [video.ssrc]))
            data += bytes(remb)
            self.counters["remb_sent"] += 1
        _sendRtcp(conn.dtls, data)

    def unpublish(self, memberID):
        """Stop receiving this member's media; subscriptions to it stay, idle."""
        pub = self._publishers.get(memberID)
        if pub is None:
            return
        if pub.current is not None:
            self._sourceGone(pub, pub.current.kinds)
        for conn in (pub.current, pub.pending):
            if conn is not None:
                self._closePeer(conn)
        pub.current = pub.pending = None
        self._forgetPublisher(pub)
        _log.info("member {member_id} stopped publishing", member_id=_short(memberID))

    def isPublishing(self, publisherID, kind):
        """Did the member's latest publish include C{kind}?"""
        pub = self._publishers.get(publisherID)
        return pub is not None and kind in pub.kinds

    def setForwarding(self, publisherID, kind, enabled):
        """Stop (or resume) forwarding this publisher's C{kind} to everyone."""
        self._stream(publisherID, kind).setEnabled(bool(enabled))

    # -- subscribing -----------------------------------------------------------

    def subscribe(self, subscriberID, publisherID, audio, video):
        """
        Offer this publisher's media to this subscriber (replacing an earlier
        subscription).  Only kinds the publisher shares are offered.

        @return: a Deferred firing with the SDP offer (with C{None} when
            neither kind is asked for: that ends the subscription); failing
            with L{ProtocolError} 409 when the publisher shares none of them.
        """
        return _deferred(self._subscribe(subscriberID, publisherID, bool(audio), bool(video)))

    async def _subscribe(self, subscriberID, publisherID, audio, video):
        self._checkOpen()
        if not (audio or video):
            self.unsubscribe(subscriberID, publisherID)
            return None
        kinds = tuple(k for k, wanted in zip(KINDS, (audio, video), strict=True)
                      if wanted and self.isPublishing(publisherID, k))
        if not kinds:
            raise ProtocolError(409, detail="the member shares none of the media asked for")
        key = (subscriberID, publisherID)
        old = self._subscriptions.pop(key, None)
        if old is not None:
            self._detachOutputs(old)
            self._closePeer(old)
        pc = self._newPeerConnection()
        sub = _Subscription(self, pc, subscriberID, publisherID, kinds)
        pub = self._publishers.get(publisherID)
        for kind in kinds:
            keys = None
            conn = pub.current if pub is not None else None
            if conn is not None and kind in conn.negotiated:
                keys = set(conn.negotiated[kind].codecs.values())
            preferences = _preferences(kind, keys)
            if not any(c.mimeType.lower() != "video/rtx" for c in preferences):
                preferences = _preferences(kind)
            transceiver = pc.addTransceiver(NeverTrack(kind), direction="sendonly")
            transceiver.setCodecPreferences(preferences)
            sub.transceivers[kind] = transceiver
            self._fillSenderReports(sub, kind, transceiver.sender)
        self._subscriptions[key] = sub
        self._track(sub)
        await pc.setLocalDescription(await pc.createOffer())
        if self._loopbackOnly:
            _ice.ignoreNonLoopbackPeers(pc)
        if sub.closed or self._subscriptions.get(key) is not sub:
            self._closePeer(sub)
            raise ProtocolError(409, detail="subscription superseded")
        offer = _sdp.advertiseAddress(pc.localDescription.sdp, self._iceSettings.public_address)
        sub.offerSdp = offer
        _log.debug("subscribe offer for {what} ({size} bytes of SDP)", what=sub.describe(),
                   size=len(offer))
        return offer

    def acceptSubscribeAnswer(self, subscriberID, publisherID, sdp):
        """
        Apply the subscriber's answer.

        @return: a Deferred; fails with L{ProtocolError} 488 (unusable SDP,
            nothing changed) or 409 (no offer outstanding).
        """
        return _deferred(self._acceptSubscribeAnswer(subscriberID, publisherID, sdp))

    async def _acceptSubscribeAnswer(self, subscriberID, publisherID, sdp):
        self._checkOpen()
        sub = self._subscriptions.get((subscriberID, publisherID))
        if sub is None or sub.answered or not sub.offerSdp or sub.closed:
            raise ProtocolError(409, detail="no subscribe offer outstanding")
        _log.debug("subscribe answer for {what} ({size} characters of SDP)", what=sub.describe(),
                   size=len(sdp) if isinstance(sdp, str) else "no")
        negotiated = _sdp.checkAnswer(sub.offerSdp, sdp, "subscriber")

        async def handleRtp(data, arrival_time_ms=0):
            self._dropped += 1

        async def handleRtcp(data):
            self._subscriberRtcp(sub, data)

        await self._applyAnswer(sub, sdp, handleRtp, handleRtcp,
                                f"answer for the {sub.describe()}")
        sub.answered = True
        sub.negotiated = {m.kind: m for m in negotiated}
        if sub.pc.connectionState == "connected" and not sub.connected:
            self._stateChanged(sub, "connected")

    def _subscriptionConnected(self, sub: _Subscription) -> None:
        key = (sub.subscriberID, sub.publisherID)
        if self._subscriptions.get(key) is not sub or not sub.answered or sub.outs:
            return
        dtls = sub.dtls
        pair = dtls.transport._connection._nominated.get(1)
        if pair is None:
            _log.warn("no nominated ICE pair for the {what}", what=sub.describe())
            return
        sendto = pair.protocol.transport.sendto
        protect = dtls._tx_srtp.protect
        for kind, transceiver in sub.transceivers.items():
            media = sub.negotiated.get(kind)
            if media is None:
                continue
            sender = transceiver.sender
            mid = transceiver.mid or "0"
            out = OutStream(kind, sender._ssrc, {k: pt for pt, k in media.codecs.items()},
                            dict(media.rtx), sender._rtx_ssrc, ord(mid[0]), protect, sendto,
                            pair.remote_addr, owner=sub)
            sub.outs[kind] = out
            self._stream(sub.publisherID, kind).attach(out)
        _log.info("{what} connected ({kinds})", what=sub.describe(), kinds="+".join(sub.outs))

    def _fillSenderReports(self, sub: _Subscription, kind: str, sender) -> None:
        """
        aiortc's sender makes its sender reports from its own (empty) counters:
        fill them in as they go out, with the publisher's clock carried into
        this subscriber's timestamps; no report before anything was sent.
        """
        original = sender._send_rtcp

        async def sendRtcp(packets):
            if packets and isinstance(packets[0], RtcpSrPacket):
                out = sub.outs.get(kind)
                stream = self._streams.get((sub.publisherID, kind))
                info = stream.senderInfo(out) if out is not None and stream is not None else None
                if info is None:
                    return
                ntp, rtp, count, octets = info
                packets[0].sender_info = RtcpSenderInfo(
                    ntp_timestamp=ntp, rtp_timestamp=rtp, packet_count=count & 0xFFFFFFFF,
                    octet_count=octets & 0xFFFFFFFF)
            await original(packets)

        sender._send_rtcp = sendRtcp

    def _subscriberRtcp(self, sub: _Subscription, data: bytes) -> None:
        try:
            packets = RtcpPacket.parse(data)
        except ValueError:
            self._dropped += 1
            return
        for packet in packets:
            if isinstance(packet, RtcpPsfbPacket):
                if packet.fmt in (RTCP_PSFB_PLI, RTCP_PSFB_FIR):
                    if "video" in sub.outs:
                        self.counters["keyframe_requests_received"] += 1
                        self.requestKeyframe(sub.publisherID)
                elif packet.fmt == RTCP_PSFB_APP:
                    try:
                        bitrate, _ = unpack_remb_fci(packet.fci)
                    except ValueError:
                        continue
                    sub.remb = bitrate
                    sub.rembTime = self._now()
            elif isinstance(packet, RtcpRtpfbPacket) and packet.fmt == RTCP_RTPFB_NACK:
                out = sub.outs.get("video")
                stream = self._streams.get((sub.publisherID, "video"))
                if out is not None and stream is not None and packet.media_ssrc == out.ssrc:
                    self.counters["nacks_received"] += 1
                    lost = packet.lost[-MAX_NACKED:]  # one NACK must not cost a ring's worth
                    sent = stream.retransmit(out, [s & 0xFFFF for s in lost])
                    self.counters["retransmitted_packets"] += sent

    def unsubscribe(self, subscriberID, publisherID):
        """End one subscription (nothing happens if there is none)."""
        sub = self._subscriptions.pop((subscriberID, publisherID), None)
        if sub is None:
            return
        self._detachOutputs(sub)
        self._closePeer(sub)
        _log.info("{what} ended", what=sub.describe())

    # -- members, stats, timers -------------------------------------------------

    def removeMember(self, memberID):
        """The member left: its publishing, its subscriptions and those to it go."""
        self.unpublish(memberID)
        for key in [k for k in self._subscriptions if memberID in k]:
            self.unsubscribe(*key)
        for kind in KINDS:
            stream = self._streams.pop((memberID, kind), None)
            if stream is not None:
                self._retire(stream)
        detector = self._detectors.pop(memberID, None)
        if detector is not None:
            detector.reset()

    def _retire(self, stream: InStream) -> None:
        self._retired["forwarded_packets"] += stream.fwdPackets
        self._retired["forwarded_bytes"] += stream.fwdOctets
        self._retired["dropped_packets"] += stream.dropped
        self._retired["errors"] += sum(o.errors for o in stream.outputs)

    def _tick(self) -> None:
        """Every C{reportInterval}: RTCP reports to publishers, speaking timeouts."""
        now = self._now()
        for pub in list(self._publishers.values()):
            self._sendReports(pub)
        for detector in list(self._detectors.values()):
            detector.idle(now)

    def peerConnections(self, memberID=None):
        """Open peer connections, of the server or of one member (L{IMediaEngine})."""
        return sum(1 for p in self._peers if memberID in (
            None, getattr(p, "memberID", None), getattr(p, "subscriberID", None)))

    def stats(self):
        """Counters for /metrics (see L{IMediaEngine.stats}), plus a few more."""
        forwarded = self._retired["forwarded_packets"]
        octets = self._retired["forwarded_bytes"]
        dropped = self._retired["dropped_packets"] + self._dropped
        errors = self._retired["errors"]
        for stream in self._streams.values():
            forwarded += stream.fwdPackets
            octets += stream.fwdOctets
            dropped += stream.dropped
            errors += sum(o.errors for o in stream.outputs)
        states = Counter(peer.pc.connectionState for peer in self._peers)
        result = {
            "publishers": sum(1 for p in self._publishers.values() if p.current or p.pending),
            "subscriptions": len(self._subscriptions),
            "forwarded_packets": forwarded,
            "forwarded_bytes": octets,
            "dropped_packets": dropped,
            "send_errors": errors,
            "peer_connections": dict(states),
        }
        result.update(self.counters)
        return result

    def close(self):
        """Close every peer connection.  @return: a Deferred firing when done."""
        return _deferred(self._close())

    async def _close(self):
        if not self._closed:
            self._closed = True
            for memberID in list(self._publishers):
                self.unpublish(memberID)
            for key in list(self._subscriptions):
                self.unsubscribe(*key)
            for peer in list(self._peers):
                self._closePeer(peer)
            for memberID in list(self._streams):
                self._retire(self._streams[memberID])
            self._streams.clear()
            for detector in self._detectors.values():
                detector.reset()
            self._detectors.clear()
            if self._ticker.running:
                self._ticker.stop()
            self._uninstallHosts()
        while self._closing:
            await asyncio.gather(*list(self._closing), return_exceptions=True)
