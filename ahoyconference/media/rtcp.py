# -*- test-case-name: tests.test_media_engine -*-
"""
RTCP policy of the media engine (docs/architecture.md, "RTCP").

 - Keyframes: a subscriber's PLI/FIR, a new subscriber and a new source
   become one PLI to the publisher, at most one per C{pliInterval}; the
   requests in between are merged into one sent when the interval is over.
 - Bitrate: the publisher gets a REMB of its subscribers' estimates, never
   above its cap (L{RtcpPolicy.bitrateFor}), with our receiver reports.
 - Sender reports to subscribers carry the publisher's clock mapped into
   each subscriber's timestamps (L{RtcpPolicy.fillSenderReports}).
 - NACKs from subscribers are answered from the stream's ring.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

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

from ahoyconference.media import hooks
from ahoyconference.media.peers import Publisher, PublisherConnection, Subscription

REMB_FRESH = 5.0
"""Seconds a subscriber's REMB counts for the publisher's bitrate."""
MAX_NACKED = 64
"""Sequence numbers answered per NACK packet (browsers NACK a handful)."""


class RtcpPolicy:
    """
    What the engine sends and answers in RTCP.

    It reads the engine's tables (it never changes them): C{publishers}
    (memberID → L{Publisher}), C{streams} ((memberID, kind) → L{InStream}) and
    C{subscriptionsOf(publisherID)}.
    """

    def __init__(self, clock, publishers: dict, streams: dict,
                 subscriptionsOf: Callable[[str], list], counters: Counter,
                 onDropped: Callable[[], None], pliInterval: float = 0.3):
        self._clock = clock
        self._now = clock.seconds
        self._publishers = publishers
        self._streams = streams
        self._subscriptionsOf = subscriptionsOf
        self._counters = counters
        self._onDropped = onDropped
        self._pliInterval = pliInterval

    # -- to publishers -----------------------------------------------------

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

    def _sendPli(self, pub: Publisher) -> None:
        conn = pub.current
        stream = self._streams.get((pub.memberID, "video"))
        if conn is None or not conn.hooked or stream is None or stream.ssrc is None:
            return
        packet = RtcpPsfbPacket(fmt=RTCP_PSFB_PLI, ssrc=conn.rtcpSsrc, media_ssrc=stream.ssrc)
        if hooks.sendRtcp(conn.dtls, bytes(packet)):
            pub.lastPli = self._now()
            self._counters["keyframe_requests"] += 1

    def bitrateFor(self, publisherID: str) -> int:
        """
        The REMB for a publisher in bit/s: the smallest fresh REMB of its
        subscribers, never above its cap.
        """
        pub = self._publishers.get(publisherID)
        cap = (pub.cap if pub is not None else 500) * 1000
        now = self._now()
        for sub in self._subscriptionsOf(publisherID):
            if (sub.remb is not None and "video" in sub.outs
                    and now - sub.rembTime <= REMB_FRESH):
                cap = min(cap, sub.remb)
        return cap

    def sendReports(self, pub: Publisher) -> None:
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
            self._counters["remb_sent"] += 1
        hooks.sendRtcp(conn.dtls, data)

    def reportSoon(self, pub: Publisher) -> None:
        """Send our reports (and the REMB) to the publisher on the next turn."""
        if pub.reportCall is not None:
            return

        def report():
            pub.reportCall = None
            self.sendReports(pub)

        pub.reportCall = self._clock.callLater(0, report)

    def cancel(self, pub: Publisher) -> None:
        """Cancel the publisher's pending PLI and report."""
        for call in (pub.pliTimer, pub.reportCall):
            if call is not None and call.active():
                call.cancel()
        pub.pliTimer = pub.reportCall = None

    def publisherRtcp(self, conn: PublisherConnection, data: bytes) -> None:
        """A publisher's decrypted compound RTCP: its sender reports set the clock mapping."""
        try:
            packets = RtcpPacket.parse(data)
        except ValueError:
            self._onDropped()
            return
        for packet in packets:
            if isinstance(packet, RtcpSrPacket):
                info = packet.sender_info
                for kind in conn.kinds:
                    stream = self._streams.get((conn.memberID, kind))
                    if stream is not None:
                        stream.senderReport(packet.ssrc, info.ntp_timestamp, info.rtp_timestamp)

    # -- to and from subscribers -------------------------------------------

    def fillSenderReports(self, sub: Subscription, kind: str, sender) -> None:
        """
        Fill the sender reports of a subscription's sender as they go out,
        with the publisher's clock carried into this subscriber's
        timestamps; no report before anything was sent.
        """

        def fill(packet: RtcpSrPacket) -> bool:
            out = sub.outs.get(kind)
            stream = self._streams.get((sub.publisherID, kind))
            info = stream.senderInfo(out) if out is not None and stream is not None else None
            if info is None:
                return False
            ntp, rtp, count, octets = info
            packet.sender_info = RtcpSenderInfo(
                ntp_timestamp=ntp, rtp_timestamp=rtp, packet_count=count & 0xFFFFFFFF,
                octet_count=octets & 0xFFFFFFFF)
            return True

        hooks.fillSenderReports(sender, fill)

    def subscriberRtcp(self, sub: Subscription, data: bytes) -> None:
        """A subscriber's decrypted compound RTCP: PLI/FIR, REMB, NACK."""
        try:
            packets = RtcpPacket.parse(data)
        except ValueError:
            self._onDropped()
            return
        for packet in packets:
            if isinstance(packet, RtcpPsfbPacket):
                if packet.fmt in (RTCP_PSFB_PLI, RTCP_PSFB_FIR):
                    if "video" in sub.outs:
                        self._counters["keyframe_requests_received"] += 1
                        self.requestKeyframe(sub.publisherID)
                elif packet.fmt == RTCP_PSFB_APP:
                    try:
                        bitrate, _ = unpack_remb_fci(packet.fci)
                    except ValueError:
                        continue
                    sub.remb = bitrate
                    sub.rembTime = self._now()
            elif isinstance(packet, RtcpRtpfbPacket) and packet.fmt == RTCP_RTPFB_NACK:
                self._nack(sub, packet)

    def _nack(self, sub: Subscription, packet: RtcpRtpfbPacket) -> None:
        out = sub.outs.get("video")
        stream = self._streams.get((sub.publisherID, "video"))
        if out is not None and stream is not None and packet.media_ssrc == out.ssrc:
            self._counters["nacks_received"] += 1
            lost = packet.lost[-MAX_NACKED:]  # one NACK must not cost a ring's worth
            sent = stream.retransmit(out, [s & 0xFFFF for s in lost])
            self._counters["retransmitted_packets"] += sent
