# -*- test-case-name: tests.test_media_engine -*-
"""
L{AiortcMediaEngine}: the publish/subscribe lifecycle, forwarding with
aiortc and never decoding (docs/architecture.md, "The media engine").

One C{RTCPeerConnection} per publisher (the server receives, and offers) and
one per subscription (the server sends, and offers); aiortc does ICE, DTLS,
SRTP keys, SDP and the RTCP timers.  The rest is split by job:

 - L{ahoyconference.media.peers}: the peer connections and the subscription table;
 - L{ahoyconference.media.connections}: making, watching and closing them;
 - L{ahoyconference.media.forward}: the per-packet path, publisher in,
   every subscriber out (L{ahoyconference.media.outstream});
 - L{ahoyconference.media.rtcp}: PLI, REMB, receiver and sender reports, NACK;
 - L{ahoyconference.media.hooks}: every private aiortc/aioice/pylibsrtp/asyncio
   access, checked when the engine is made;
 - L{ahoyconference.media.streams}: the publishers' streams and what the
   listener hears of them.

Over 400 lines: publishing and subscribing are the two halves of one state
machine over the same tables (publishers, subscriptions, streams), and the
order of their steps (supersede, close, detach, rebase) is easier to check
read side by side than across modules.
"""

from __future__ import annotations

import asyncio
from collections import Counter

from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall
from twisted.python.failure import Failure
from zope.interface import implementer

from ahoyconference.config import IceSettings
from ahoyconference.interfaces import (
    IMediaEngine,
    IMediaListener,
    IPlainMediaEngine,
    ProtocolError,
)
from ahoyconference.logs import logger
from ahoyconference.media import hooks
from ahoyconference.media import ice as _ice
from ahoyconference.media import sdp as _sdp
from ahoyconference.media.connections import PeerConnections
from ahoyconference.media.faults import Faults
from ahoyconference.media.forward import InStream
from ahoyconference.media.outstream import OutStream
from ahoyconference.media.peers import (
    KINDS,
    NeverTrack,
    Peer,
    Publisher,
    PublisherConnection,
    Subscription,
    SubscriptionTable,
    codecPreferences,
    short,
)
from ahoyconference.media.repair import LossRepair
from ahoyconference.media.rtcp import RtcpPolicy
from ahoyconference.media.selector import Selector
from ahoyconference.media.simulcast import LOWER_LAYERS_KBPS, QUALITIES
from ahoyconference.media.streams import MediaStreams
from ahoyconference.media.udpmux import OnePort

_log = logger(__name__)

__all__ = ["AiortcMediaEngine", "NeverTrack", "installAsyncioExceptionHandler"]


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


@implementer(IMediaEngine, IPlainMediaEngine)
class AiortcMediaEngine:
    """
    The default L{IMediaEngine}: aiortc for ICE/DTLS/SRTP/SDP, our own
    forwarding path for the packets.

    @ivar counters: the packet path's counters (keyframe requests, REMBs,
        NACKs, retransmissions and refusals, candidates and checks refused).
    @ivar drops: dropped packets and datagrams by reason (outside the streams).
    @ivar faults: unexpected failures on the packet path (L{Faults}).
    """

    def __init__(self, listener: IMediaListener, ice: IceSettings, clock, iceTimeout: float = 30.0,
                 *, pliInterval: float = 0.3, reportInterval: float = 1.0,
                 nackPublishers: bool = True, simulcast: bool = True,
                 batching: bool = False):
        """
        @param listener: told of media availability and speaking changes.
        @param ice: the C{[ice]} settings.
        @param clock: an C{IReactorTime} for timers and time stamps.
        @param iceTimeout: seconds a peer connection may take to connect.
        @param pliInterval: at most one keyframe request per publisher per
            this many seconds (the rest are merged).
        @param reportInterval: seconds between our RTCP reports (receiver
            reports and REMB to publishers, speaking timeouts).
        @param nackPublishers: repair loss on publishers' video with NACK and
            RTX (L{ahoyconference.media.repair}); C{False} (read when a
            publisher's stream is made) forwards the gaps as they are.
        @param simulcast: publish offers ask for simulcast video when the
            client asks for it (C{[media] simulcast},
            L{ahoyconference.media.simulcast}).
        @param batching: on the one UDP port, C{recvmmsg}/C{sendmmsg} where
            the system has them (L{ahoyconference.media.mmsg}); off by
            default: measured no cheaper than C{recvfrom}/C{sendto} from
            Python (bench/RESULTS.md).
        @raise hooks.HookMismatch: the installed aiortc, aioice or pylibsrtp
            no longer fit the private hooks.
        @raise ahoyconference.media.udpmux.PortUnavailable: C{[ice] udp_port}
            cannot be bound.
        """
        hooks.checkHooks()
        self._iceSettings = ice
        self._clock = clock
        self._now = clock.seconds
        self.nackPublishers = nackPublishers
        self.simulcast = simulcast
        self._publishers: dict[str, Publisher] = {}
        self.faults = Faults()
        self.drops = Counter()
        self._media = MediaStreams(listener, self._now, self._keyframeNeeded, self._newSource,
                                   self._staleSsrc, self.faults, self._makeRepair)
        self._streams = self._media.streams
        self._subscriptions = SubscriptionTable()
        self._taps: dict[tuple[str, str], OutStream] = {}
        self._closed = False
        self.counters = Counter()
        self._uninstallHosts = hooks.installHostAddresses(tuple(ice.host_addresses))
        self.onePort = None
        if ice.udp_port:
            self.onePort = OnePort(_ice.hostAddresses(ice), ice.udp_port, self._countDrop,
                                   self.faults.error, batching)
            try:
                self.onePort.start()
            except Exception:
                self._uninstallHosts()
                raise
        self._connections = PeerConnections(ice, clock, iceTimeout, self._peerConnected,
                                            self._peerEnded, self._countDrop, self.counters,
                                            self.onePort)
        self._peers = self._connections.live
        self._rtcp = RtcpPolicy(clock, self._publishers, self._streams, self._subscriptionsOf,
                                self.counters, self._countDrop, pliInterval)
        hooks.installConsentTiming()
        self._ticker = LoopingCall(self._tick)
        self._ticker.clock = clock
        self._reportInterval = reportInterval

    # -- helpers --------------------------------------------------------------

    def _checkOpen(self) -> None:
        if self._closed:
            raise ProtocolError(503, detail="media engine closed")

    def _countDrop(self, reason: str) -> None:
        self.drops[reason] += 1

    def _watch(self, peer: Peer) -> None:
        if not self._ticker.running:
            self._ticker.start(self._reportInterval, now=False)
        self._connections.watch(peer)

    def _makeRepair(self, stream: InStream) -> LossRepair | None:
        """The loss repair of a publisher's new video stream, unless switched off."""
        if not self.nackPublishers:
            return None
        return LossRepair(self._clock, lambda seqs: self._rtcp.sendNack(stream, seqs),
                          lambda: self._keyframeNeeded(stream), self.counters)

    def _subscriptionsOf(self, publisherID: str) -> list[Subscription]:
        return self._subscriptions.of(publisherID)

    def _peerConnected(self, peer: Peer) -> None:
        if isinstance(peer, PublisherConnection):
            self._publisherConnected(peer)
        else:
            self._subscriptionConnected(peer)

    def _peerEnded(self, peer: Peer) -> None:
        """A peer connection failed, closed or timed out: forget it."""
        if isinstance(peer, PublisherConnection):
            pub = self._publishers.get(peer.memberID)
            if pub is not None:
                if pub.pending is peer:
                    pub.pending = None
                    if pub.current is not None:
                        pub.kinds = pub.current.kinds
                if pub.current is peer:
                    pub.current = None
                    self._media.sourceGone(pub.memberID, peer.kinds)
                if pub.current is None and pub.pending is None:
                    self._forgetPublisher(pub)
        else:
            key = (peer.subscriberID, peer.publisherID)
            if self._subscriptions.get(key) is peer:
                del self._subscriptions[key]
            self._detachOutputs(peer)
        self._connections.close(peer)

    def _forgetPublisher(self, pub: Publisher) -> None:
        if self._publishers.get(pub.memberID) is pub:
            del self._publishers[pub.memberID]
        self._rtcp.cancel(pub)

    def _detachOutputs(self, sub: Subscription) -> None:
        for kind, out in sub.outs.items():
            stream = self._streams.get((sub.publisherID, kind))
            if stream is not None:
                stream.detach(out)
        sub.outs = {}

    # -- publishing -----------------------------------------------------------

    def publish(self, memberID, audio, video, maxVideoBitrate, simulcast=False):
        """
        Offer to receive this member's media (a new peer connection; the
        current one, if any, stays until the answer is accepted).  With
        C{simulcast} (the client asked, protocol.md 4.11) and C{[media]
        simulcast} on, the video section asks for three layers.

        @return: a Deferred firing with the SDP offer.
        """
        return _deferred(self._publish(memberID, bool(audio), bool(video), int(maxVideoBitrate),
                                       bool(simulcast)))

    async def _publish(self, memberID, audio, video, cap, simulcast=False):
        self._checkOpen()
        kinds = tuple(k for k, wanted in zip(KINDS, (audio, video), strict=True) if wanted)
        if not kinds:
            raise ProtocolError(400, detail="nothing to publish")
        pub = self._publishers.get(memberID)
        if pub is None:
            pub = self._publishers[memberID] = Publisher(memberID)
        pc = self._connections.new()
        conn = PublisherConnection(pc, memberID, kinds, self._countDrop, self.faults)
        for kind in kinds:
            transceiver = pc.addTransceiver(kind, direction="recvonly")
            transceiver.setCodecPreferences(codecPreferences(kind))
            conn.transceivers[kind] = transceiver
        conn.rtcpSsrc = hooks.senderSsrcs(conn.transceivers[kinds[0]].sender)[0]
        if pub.pending is not None:
            self._connections.close(pub.pending)
        pub.pending = conn
        pub.kinds = kinds
        pub.cap = max(1, cap)
        self._watch(conn)
        offer = await self._connections.makeOffer(conn)
        if conn.closed or self._publishers.get(memberID) is not pub or pub.pending is not conn:
            self._connections.close(conn)
            raise ProtocolError(409, detail="publish superseded")
        if "video" in kinds:
            if self.simulcast and simulcast:
                offer = _sdp.addBandwidth(_sdp.addSimulcast(offer), "video",
                                          pub.cap + LOWER_LAYERS_KBPS)
            else:
                offer = _sdp.addBandwidth(offer, "video", pub.cap)
        offer = _sdp.advertiseAddress(offer, self._iceSettings.public_address)
        conn.offerSdp = offer
        _log.debug("publish offer for {member_id} ({size} bytes of SDP)",
                   member_id=short(memberID), size=len(offer))
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
                   member_id=short(memberID), size=len(sdp) if isinstance(sdp, str) else "no")
        negotiated = _sdp.checkAnswer(conn.offerSdp, sdp, "publisher")

        async def handleRtp(data, arrival_time_ms=0):
            conn.receiveRtp(data)

        async def handleRtcp(data):
            self._rtcp.publisherRtcp(conn, data)

        await self._connections.applyAnswer(conn, sdp, handleRtp, handleRtcp,
                                            f"publish answer of {short(memberID)}")
        if conn.closed or pub.pending is not conn or self._publishers.get(memberID) is not pub:
            raise ProtocolError(409, detail="publish superseded")
        conn.answered = True
        conn.negotiated = {m.kind: m for m in negotiated}
        conn.ssrcs = frozenset(ssrc for m in negotiated for ssrc in m.ssrcs)
        old = pub.current
        pub.pending = None
        pub.current = conn
        if old is not None:
            old.releaseSockets()
            self._media.sourceGone(memberID, [k for k in old.kinds if k not in conn.kinds])
            for kind in old.kinds:
                stream = self._streams.get((memberID, kind))
                if stream is not None and kind in conn.kinds:
                    stream.sourceGone()
            self._connections.close(old)
        for kind in conn.kinds:
            media = conn.negotiated[kind]
            stream = self._media.streamFor(memberID, kind)
            stream.configure(media.codecs, media.clockRates,
                             media.extensions.get(_sdp.MID_URI, 0),
                             media.extensions.get(_sdp.AUDIO_LEVEL_URI, 0) if kind == "audio" else 0,
                             media.ssrcs)
            target = stream
            if kind == "video" and media.rids:
                target = self._media.simulcast(memberID, media.rids,
                                               media.extensions.get(_sdp.RID_URI, 0),
                                               media.extensions.get(_sdp.RRID_URI, 0),
                                               self._countDrop, self.counters,
                                               media.extensions.get(_sdp.ABS_SEND_TIME_URI, 0))
                for layer in target.layers:
                    layer.configure(media.codecs, media.clockRates,
                                    media.extensions.get(_sdp.MID_URI, 0), 0)
                stream.useLayers(target)
            elif kind == "video" and stream.layers is not None:
                stream.useLayers(None)
            for pt in media.codecs:
                conn.byPT[pt] = target
            if stream.repair is not None or stream.layers is not None:
                for apt, rtx in media.rtx.items():
                    conn.rtxPT[rtx] = (target, apt)
        video = conn.negotiated.get("video")
        _log.info("member {member_id} publishes {kinds} (video cap {cap} kbit/s{layers})",
                  member_id=short(memberID), kinds="+".join(conn.kinds), cap=pub.cap,
                  layers=f", simulcast {';'.join(video.rids)}" if video and video.rids else "")
        if conn.pc.connectionState == "connected" and not conn.connected:
            self._connections.stateChanged(conn, "connected")

    def _publisherConnected(self, conn: PublisherConnection) -> None:
        pub = self._publishers.get(conn.memberID)
        if pub is None or pub.current is not conn or conn.hooked:
            return
        conn.takeSockets()
        _log.info("publisher {member_id} connected", member_id=short(conn.memberID))
        self._rtcp.sendReports(pub)

    def _newSource(self, stream: InStream) -> None:
        """A publisher's stream has a new source: send it our REMB soon."""
        if stream.kind != "video":
            return
        pub = self._publishers.get(stream.publisherID)
        if pub is not None:
            self._rtcp.reportSoon(pub)

    def _staleSsrc(self, stream: InStream, ssrc: int) -> None:
        """
        A publisher's SSRC we will not forward (its answer did not announce
        it, or it is one source too many): free libsrtp's state for it.
        """
        pub = self._publishers.get(stream.publisherID)
        if pub is not None and pub.current is not None:
            pub.current.forget(ssrc)

    def _keyframeNeeded(self, stream: InStream) -> None:
        self._rtcp.requestKeyframe(stream.publisherID, stream)

    def unpublish(self, memberID):
        """Stop receiving this member's media; subscriptions to it stay, idle."""
        pub = self._publishers.get(memberID)
        if pub is None:
            return
        if pub.current is not None:
            self._media.sourceGone(memberID, pub.current.kinds)
        for conn in (pub.current, pub.pending):
            if conn is not None:
                self._connections.close(conn)
        pub.current = pub.pending = None
        self._forgetPublisher(pub)
        _log.info("member {member_id} stopped publishing", member_id=short(memberID))

    def isPublishing(self, publisherID, kind):
        """Did the member's latest publish include C{kind}?"""
        pub = self._publishers.get(publisherID)
        return pub is not None and kind in pub.kinds

    def setForwarding(self, publisherID, kind, enabled):
        """Stop (or resume) forwarding this publisher's C{kind} to everyone."""
        self._media.streamFor(publisherID, kind).setEnabled(bool(enabled))

    # -- subscribing -----------------------------------------------------------

    def subscribe(self, subscriberID, publisherID, audio, video, quality="high"):
        """
        Offer this publisher's media to this subscriber (replacing an earlier
        subscription).  Only kinds the publisher shares are offered.
        C{quality} (protocol.md 4.11) is the highest simulcast layer to send
        it (C{"low"}, C{"medium"}, C{"high"}).

        @return: a Deferred firing with the SDP offer (with C{None} when
            neither kind is asked for: that ends the subscription); failing
            with L{ProtocolError} 409 when the publisher shares none of them.
        """
        return _deferred(self._subscribe(subscriberID, publisherID, bool(audio), bool(video),
                                         quality))

    async def _subscribe(self, subscriberID, publisherID, audio, video, quality="high"):
        self._checkOpen()
        if quality not in QUALITIES:
            raise ProtocolError(400, detail="quality must be low, medium or high")
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
            self._connections.close(old)
        pc = self._connections.new()
        sub = Subscription(pc, subscriberID, publisherID, kinds)
        sub.quality = QUALITIES.index(quality)
        pub = self._publishers.get(publisherID)
        for kind in kinds:
            keys = None
            conn = pub.current if pub is not None else None
            if conn is not None and kind in conn.negotiated:
                keys = set(conn.negotiated[kind].codecs.values())
            elif pub is not None and pub.plainCodecs and kind == "audio":
                keys = set(pub.plainCodecs.values())  # a phone: offer its codec (G.711)
            preferences = codecPreferences(kind, keys)
            if not any(c.mimeType.lower() != "video/rtx" for c in preferences):
                preferences = codecPreferences(kind)
            transceiver = pc.addTransceiver(NeverTrack(kind), direction="sendonly")
            transceiver.setCodecPreferences(preferences)
            sub.transceivers[kind] = transceiver
            self._rtcp.fillSenderReports(sub, kind, transceiver.sender)
        self._subscriptions[key] = sub
        self._watch(sub)
        offer = await self._connections.makeOffer(sub)
        if sub.closed or self._subscriptions.get(key) is not sub:
            self._connections.close(sub)
            raise ProtocolError(409, detail="subscription superseded")
        offer = _sdp.advertiseAddress(offer, self._iceSettings.public_address)
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
            self._countDrop("subscriber_rtp")

        async def handleRtcp(data):
            self._rtcp.subscriberRtcp(sub, data)

        await self._connections.applyAnswer(sub, sdp, handleRtp, handleRtcp,
                                            f"answer for the {sub.describe()}")
        sub.answered = True
        sub.negotiated = {m.kind: m for m in negotiated}
        if sub.pc.connectionState == "connected" and not sub.connected:
            self._connections.stateChanged(sub, "connected")

    def _subscriptionConnected(self, sub: Subscription) -> None:
        key = (sub.subscriberID, sub.publisherID)
        if self._subscriptions.get(key) is not sub or not sub.answered or sub.outs:
            return
        dtls = sub.dtls
        pair = hooks.nominatedPair(dtls)
        if pair is None:
            _log.warn("no nominated ICE pair for the {what}", what=sub.describe())
            return
        sub.pair = pair
        sendto, addr = pair
        protect = hooks.srtpProtect(dtls)
        for kind, transceiver in sub.transceivers.items():
            media = sub.negotiated.get(kind)
            if media is None:
                continue
            ssrc, rtxSsrc = hooks.senderSsrcs(transceiver.sender)
            mid = transceiver.mid or "0"
            out = OutStream(kind, ssrc, {k: pt for pt, k in media.codecs.items()},
                            dict(media.rtx), rtxSsrc, ord(mid[0]), protect, sendto, addr)
            if kind == "video":
                out.sim = Selector(sub.quality)
            sub.outs[kind] = out
            self._media.streamFor(sub.publisherID, kind).attach(out)
        _log.info("{what} connected ({kinds})", what=sub.describe(), kinds="+".join(sub.outs))

    def setQuality(self, subscriberID, publisherID, quality):
        """
        The subscription's highest simulcast layer, changed in place
        (protocol.md 4.11): its selector moves at the next keyframe.

        @return: C{False} when the subscription has no video flowing.
        """
        if quality not in QUALITIES:
            raise ProtocolError(400, detail="quality must be low, medium or high")
        sub = self._subscriptions.get((subscriberID, publisherID))
        out = sub.outs.get("video") if sub is not None else None
        if out is None or out.sim is None:
            return False
        sub.quality = QUALITIES.index(quality)
        stream = self._streams.get((publisherID, "video"))
        if stream is not None and stream.layers is not None:
            stream.layers.setQuality(out, sub.quality)
        else:
            out.sim.quality = sub.quality
        _log.debug("{what}: quality {quality}", what=sub.describe(), quality=quality)
        pub = self._publishers.get(publisherID)
        if pub is not None:  # its REMB follows the highest quality wanted
            self._rtcp.reportSoon(pub)
        return True

    def unsubscribe(self, subscriberID, publisherID):
        """End one subscription (nothing happens if there is none)."""
        sub = self._subscriptions.pop((subscriberID, publisherID), None)
        if sub is None:
            return
        self._detachOutputs(sub)
        self._connections.close(sub)
        _log.info("{what} ended", what=sub.describe())

    # -- non-WebRTC members (phones, docs/sip.md) -----------------------------

    def publishPlain(self, memberID, codecs, clockRates):
        """
        A publisher without WebRTC (a phone): its plain, decrypted RTP audio
        is handed in packet by packet; subscriptions to it are offered its
        codecs (G.711), so browsers get it as it came.

        @param codecs: payload type → codec key (L{_sdp.codecKey}).
        @param clockRates: payload type → clock rate.
        @return: C{(packet, level)}: call C{packet(data)} with each RTP
            packet, C{level(now, dBov)} with the audio level of each
            (0 loudest .. 127 silence), for speaking detection.
        """
        self._checkOpen()
        pub = self._publishers.get(memberID)
        if pub is None:
            pub = self._publishers[memberID] = Publisher(memberID)
        pub.kinds = ("audio",)
        pub.plainCodecs = dict(codecs)
        stream = self._media.streamFor(memberID, "audio")
        stream.configure(codecs, clockRates, 0, 0)
        if not self._ticker.running:
            self._ticker.start(self._reportInterval, now=False)
        _log.info("member {member_id} publishes plain RTP audio", member_id=short(memberID))
        return stream.packet, stream.onLevel  # onLevel: the member's speaking detector

    def tapAudio(self, listenerID, publisherID, deliver):
        """
        Hand a publisher's audio packets, unencrypted and renumbered as for
        a subscriber, to C{deliver(publisherID, packet, levelId)} (the RFC
        6464 extension id, 0 for none): how a phone's mixer
        hears the room.  The tap goes with either member (L{removeMember})
        or with L{untapAudio}.
        """
        self._checkOpen()
        self.untapAudio(listenerID, publisherID)
        ptByKey = {("audio/opus", 48000, "", ""): 111, ("audio/pcmu", 8000, "", ""): 0,
                   ("audio/pcma", 8000, "", ""): 8}

        stream = self._media.streamFor(publisherID, "audio")

        def sendto(data, addr):
            deliver(publisherID, data, stream.levelId)

        out = OutStream("audio", 0, ptByKey, {}, None, 0, bytes, sendto, None)
        self._taps[(listenerID, publisherID)] = out
        stream.attach(out)

    def untapAudio(self, listenerID, publisherID):
        """End one tap (nothing happens if there is none)."""
        out = self._taps.pop((listenerID, publisherID), None)
        stream = self._streams.get((publisherID, "audio"))
        if out is not None and stream is not None:
            stream.detach(out)

    # -- members, stats, timers -------------------------------------------------

    def removeMember(self, memberID):
        """
        The member left: its publishing, its subscriptions and those to it go.
        The listener hears nothing more of this member (not even that its
        media stopped: the caller knows).
        """
        self._media.quiet(memberID)
        try:
            self.unpublish(memberID)
            for key in self._subscriptions.keysOf(memberID):
                self.unsubscribe(*key)
            for key in [k for k in self._taps if memberID in k]:
                self.untapAudio(*key)
        finally:
            self._media.remove(memberID)

    def _tick(self) -> None:
        """Every C{reportInterval}: RTCP reports to publishers, speaking timeouts."""
        now = self._now()
        for pub in list(self._publishers.values()):
            self._rtcp.sendReports(pub)
        self._media.idle(now)
        self._followPairs()

    def _followPairs(self) -> None:
        """
        Send each subscription's media where its nominated ICE pair is now:
        a subscriber whose address changed (NAT rebinding) is checked at
        the new one by aioice, which nominates that pair (docs/architecture.md,
        "One UDP port").
        """
        for sub in self._subscriptions.values():
            if not sub.outs or sub.closed:
                continue
            pair = hooks.nominatedPair(sub.dtls)
            if pair is None or pair == sub.pair:
                continue
            sub.pair = pair
            sendto, addr = pair
            for out in sub.outs.values():
                out.addr = addr
                if out.sendto != sendto:
                    out.sendto = sendto
            _log.info("{what}: media now goes to the subscriber's new address",
                      what=sub.describe())

    def peerConnections(self, memberID=None):
        """Open peer connections, of the server or of one member (L{IMediaEngine})."""
        return sum(1 for p in self._peers if memberID in (
            None, getattr(p, "memberID", None), getattr(p, "subscriberID", None)))

    def stats(self):
        """Counters for /metrics (see L{IMediaEngine.stats}), plus a few more."""
        totals = self._media.totals()
        if self.onePort is not None:  # batched copies the kernel refused after all
            refused, refusedBytes = self.onePort.refused()
            totals["forwarded_packets"] -= refused
            totals["forwarded_bytes"] -= refusedBytes
            totals["send_errors"] += refused
        drops = totals.pop("drops") + self.drops
        result = {
            "publishers": sum(1 for p in self._publishers.values() if p.current or p.pending),
            "subscriptions": len(self._subscriptions),
            "forwarded_packets": totals["forwarded_packets"],
            "forwarded_bytes": totals["forwarded_bytes"],
            "dropped_packets": totals["dropped_packets"] + sum(self.drops.values()),
            "drops": dict(drops),
            "send_errors": totals["send_errors"],
            "media_errors": dict(self.faults.counts),
            "peer_connections": dict(self._connections.states()),
        }
        result.update(self.counters)
        result["simulcast_publishers"] = sum(1 for s in self._streams.values()
                                             if s.layers is not None)
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
            self._media.clear()
            if self._ticker.running:
                self._ticker.stop()
            self._uninstallHosts()
        await self._connections.closeAll()
        if self.onePort is not None:
            self.onePort.stop()
