# -*- test-case-name: tests.test_media_engine -*-
"""
RTCP policy of the media engine (docs/architecture.md, "RTCP").

 - Keyframes: a subscriber's PLI/FIR, a new subscriber and a new source
   become one PLI to the publisher, at most one per C{pliInterval}; the
   requests in between are merged into one sent when the interval is over.
 - Bitrate: the publisher gets a REMB of its subscribers' estimates, never
   above its cap, never below L{REMB_FLOOR}, the lowest tenth ignored from
   five subscribers on (L{RtcpPolicy.bitrateFor}), with our receiver reports.
 - Sender reports to subscribers carry the publisher's clock mapped into
   each subscriber's timestamps (L{RtcpPolicy.fillSenderReports}); their
   send times give the round trip from its receiver reports, and while its
   simulcast layers try its link it gets one every
   L{PROBE_REPORT_INTERVAL} (L{RtcpPolicy._watchRoundTrips}).
 - NACKs from subscribers are answered from the stream's ring, within a
   budget per subscriber (L{ahoyconference.media.nackbudget.RetransmitBudget}):
   a share of what it receives plus a floor, and never the same packet twice
   within a round trip.
 - NACKs to publishers: for the gaps of their video
   (L{ahoyconference.media.repair.LossRepair} decides what and when;
   L{RtcpPolicy.sendNack} sends).
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
from ahoyconference.media.nackbudget import RetransmitBudget
from ahoyconference.media.peers import Publisher, PublisherConnection, Subscription
from ahoyconference.media.repair import packNack
from ahoyconference.media.simulcast import LOWER_LAYERS_KBPS

REMB_FRESH = 5.0
"""Seconds a subscriber's REMB counts for the publisher's bitrate."""
REMB_FLOOR = 150_000
"""bit/s: a subscriber's estimate below this does not lower the publisher's REMB."""
REMB_OUTLIER_SUBSCRIBERS = 5
"""From this many fresh estimates on, the lowest tenth (at least one) is ignored."""
PROBE_REPORT_INTERVAL = 0.1
"""Seconds between our extra sender reports to a subscriber whose link is
being tried (simulcast padding, or a fresh step up): a round trip from a
receiver report measures the queue when our last sender report went
through it, and ours otherwise go out about once a second."""
REPORTS_REMEMBERED = 64
"""Our video sender reports per subscription whose send time is kept (for
the round-trip time from receiver reports): 6.4 s of them at
L{PROBE_REPORT_INTERVAL}, for the round trip through a long queue."""

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
                 onDropped: Callable[[str], None], pliInterval: float = 0.3):
        self._clock = clock
        self._now = clock.seconds
        self._publishers = publishers
        self._streams = streams
        self._subscriptionsOf = subscriptionsOf
        self._counters = counters
        self._onDropped = onDropped
        self._pliInterval = pliInterval

    # -- to publishers -----------------------------------------------------

    def requestKeyframe(self, publisherID: str, stream=None) -> None:
        """
        Ask the publisher for a keyframe (PLI), at most once per
        C{pliInterval}: requests in between are merged into one sent when
        the interval is over.

        @param stream: the L{InStream} (or simulcast layer) that needs it;
            C{None}: the publisher's video (every layer of a simulcast one).
        """
        pub = self._publishers.get(publisherID)
        if pub is None:
            return
        pub.pliWanted.add(stream)
        if pub.pliTimer is not None:
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
        wanted, pub.pliWanted = pub.pliWanted, set()
        conn = pub.current
        main = self._streams.get((pub.memberID, "video"))
        if conn is None or not conn.hooked or main is None:
            return
        ssrcs = set()
        for stream in wanted:
            if stream is None or stream is main:
                if main.layers is not None:
                    ssrcs.update(main.layers.ssrcs())
                elif main.ssrc is not None:
                    ssrcs.add(main.ssrc)
            elif stream.ssrc is not None:
                ssrcs.add(stream.ssrc)
        if not ssrcs:
            return
        data = b"".join(bytes(RtcpPsfbPacket(fmt=RTCP_PSFB_PLI, ssrc=conn.rtcpSsrc,
                                             media_ssrc=ssrc)) for ssrc in sorted(ssrcs))
        if hooks.sendRtcp(conn.dtls, data):
            pub.lastPli = self._now()
            self._counters["keyframe_requests"] += len(ssrcs)

    def sendNack(self, stream, seqs: list[int]) -> bool:
        """
        A generic NACK (RFC 4585) for C{seqs} of the publisher's current
        source of C{stream}, on its current connection: C{False} when there
        is none to send it on.
        """
        pub = self._publishers.get(stream.publisherID)
        conn = pub.current if pub is not None else None
        if conn is None or not conn.hooked or stream.ssrc is None:
            return False
        return hooks.sendRtcp(conn.dtls, packNack(conn.rtcpSsrc, stream.ssrc, seqs))

    def bitrateFor(self, publisherID: str) -> int:
        """
        The REMB for a publisher in bit/s (docs/architecture.md, "RTCP"):
        the smallest fresh estimate of its video subscribers, ignoring the
        lowest tenth (at least one) once there are L{REMB_OUTLIER_SUBSCRIBERS},
        never below L{REMB_FLOOR} and never above the publisher's cap.  One
        subscriber on a bad link (or lying) cannot throttle a room; below the
        floor it sees loss instead.
        """
        pub = self._publishers.get(publisherID)
        cap = (pub.cap if pub is not None else 500) * 1000
        video = self._streams.get((publisherID, "video"))
        if video is not None and video.layers is not None:
            # simulcast: each subscriber gets the layer it can take; the
            # cap bounds the top layer, the lower ones may add their share;
            # when nobody asked for the top layer (quality), what the
            # highest one asked for needs
            full = cap + LOWER_LAYERS_KBPS * 1000
            layers = video.layers
            top = layers.wantedQuality()
            if 0 <= top < len(layers.layers) - 1:
                budget = layers.budget(top)
                if budget is not None:
                    return min(full, budget)
            return full
        now = self._now()
        estimates = sorted(sub.remb for sub in self._subscriptionsOf(publisherID)
                           if sub.remb is not None and "video" in sub.outs
                           and now - sub.rembTime <= REMB_FRESH)
        if len(estimates) >= REMB_OUTLIER_SUBSCRIBERS:
            estimates = estimates[max(1, len(estimates) // 10):]
        if not estimates:
            return cap
        return min(cap, max(REMB_FLOOR, estimates[0]))

    def sendReports(self, pub: Publisher) -> None:
        """Our receiver reports, and the REMB, to a publisher."""
        conn = pub.current
        if conn is None or not conn.hooked:
            return
        reports = []
        for kind in conn.kinds:
            stream = self._streams.get((pub.memberID, kind))
            if stream is None:
                continue
            for source in (stream.layers.layers if stream.layers is not None else (stream,)):
                info = source.receiverInfo()
                if info is not None:
                    reports.append(info)
        data = bytes(RtcpRrPacket(ssrc=conn.rtcpSsrc, reports=reports[:31]))
        video = self._streams.get((pub.memberID, "video"))
        ssrcs = []
        if video is not None:
            ssrcs = video.layers.ssrcs() if video.layers is not None else (
                [video.ssrc] if video.ssrc is not None else [])
        if "video" in conn.kinds and ssrcs:
            remb = RtcpPsfbPacket(fmt=RTCP_PSFB_APP, ssrc=conn.rtcpSsrc, media_ssrc=0,
                                  fci=pack_remb_fci(self.bitrateFor(pub.memberID), ssrcs))
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

    def _parse(self, data: bytes) -> list:
        """A decrypted compound RTCP packet's parts; none (counted) if it does not parse."""
        try:
            return RtcpPacket.parse(data)
        except ValueError:
            self._onDropped("rtcp")
            return []

    def publisherRtcp(self, conn: PublisherConnection, data: bytes) -> None:
        """A publisher's decrypted compound RTCP: its sender reports set the clock mapping."""
        for packet in self._parse(data):
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
            packet.sender_info = self._senderInfo(sub, kind, info)
            return True

        hooks.fillSenderReports(sender, fill)

    def _senderInfo(self, sub: Subscription, kind: str, info: tuple) -> RtcpSenderInfo:
        """A sender report's sender info; a video one's time is remembered (L{Subscription.reportsSent})."""
        ntp, rtp, count, octets = info
        if kind == "video":
            sent = sub.reportsSent
            sent[(ntp >> 16) & 0xFFFFFFFF] = self._now()
            if len(sent) > REPORTS_REMEMBERED:
                del sent[next(iter(sent))]
        return RtcpSenderInfo(ntp_timestamp=ntp, rtp_timestamp=rtp,
                              packet_count=count & 0xFFFFFFFF, octet_count=octets & 0xFFFFFFFF)

    def _watchRoundTrips(self, sub: Subscription) -> None:
        """
        While its simulcast layers try the subscriber's link, send it a
        sender report every L{PROBE_REPORT_INTERVAL} (its receiver reports
        then show a growing queue within a fraction of a second).
        """
        if sub.probeReportCall is not None:
            return

        def send():
            sub.probeReportCall = None
            out = sub.outs.get("video")
            layers = self._layersFor(sub)
            stream = self._streams.get((sub.publisherID, "video"))
            if sub.closed or out is None or layers is None or not layers.watching(out):
                return
            info = stream.senderInfo(out)
            if info is not None:
                report = RtcpSrPacket(ssrc=out.ssrc,
                                      sender_info=self._senderInfo(sub, "video", info))
                if hooks.sendRtcp(sub.dtls, bytes(report)):
                    self._counters["probe_sender_reports"] += 1
            sub.probeReportCall = self._clock.callLater(PROBE_REPORT_INTERVAL, send)

        send()

    def subscriberRtcp(self, sub: Subscription, data: bytes) -> None:
        """A subscriber's decrypted compound RTCP: PLI/FIR, REMB, NACK."""
        for packet in self._parse(data):
            if isinstance(packet, RtcpPsfbPacket):
                if packet.fmt in (RTCP_PSFB_PLI, RTCP_PSFB_FIR):
                    out = sub.outs.get("video")
                    if out is not None:
                        self._counters["keyframe_requests_received"] += 1
                        layer = out.sim.layer if out.sim is not None else None
                        self.requestKeyframe(sub.publisherID, layer)
                elif packet.fmt == RTCP_PSFB_APP:
                    try:
                        bitrate, _ = unpack_remb_fci(packet.fci)
                    except ValueError:
                        continue
                    sub.remb = bitrate
                    sub.rembTime = self._now()
                    layers = self._layersFor(sub)
                    if layers is not None:
                        layers.estimate(sub.outs["video"], bitrate)
            elif isinstance(packet, RtcpRtpfbPacket) and packet.fmt == RTCP_RTPFB_NACK:
                self._nack(sub, packet)
            elif isinstance(packet, RtcpRrPacket):
                layers = self._layersFor(sub)
                if layers is not None:
                    out = sub.outs["video"]
                    for report in packet.reports:
                        if report.ssrc != out.ssrc:
                            continue
                        sent = sub.reportsSent.get(report.lsr) if report.lsr else None
                        if sent is not None:
                            layers.roundTrip(out, self._now() - sent - report.dlsr / 65536)
                        layers.received(out, report.packets_lost, report.highest_sequence)
                    if layers.watching(out):
                        self._watchRoundTrips(sub)

    def _layersFor(self, sub: Subscription):
        """The simulcast layers feeding the subscription's video, if any."""
        if "video" not in sub.outs:
            return None
        stream = self._streams.get((sub.publisherID, "video"))
        return stream.layers if stream is not None else None

    def _nack(self, sub: Subscription, packet: RtcpRtpfbPacket) -> None:
        out = sub.outs.get("video")
        stream = self._streams.get((sub.publisherID, "video"))
        if out is None or stream is None or packet.media_ssrc != out.ssrc:
            return
        self._counters["nacks_received"] += 1
        now = self._now()
        if stream.layers is not None:
            stream.layers.nacked(out)
        source = stream.layers.layerOf(out) if stream.layers is not None else stream
        if source is None:
            return
        received = source.acceptedOctets - out.baseOctets
        budget = sub.retransmitBudget
        if budget is None:
            budget = sub.retransmitBudget = RetransmitBudget(now, received)
        budget.refill(now, received)
        before = Counter(budget.refused)
        lost = packet.lost[-MAX_NACKED:]  # one NACK must not cost a ring's worth
        sent = stream.retransmit(out, [s & 0xFFFF for s in lost],
                                 lambda seq, size: budget.mayResend(now, seq, size))
        self._counters["retransmitted_packets"] += sent
        for reason, count in (budget.refused - before).items():
            self._counters[f"retransmissions_refused_{reason}"] += count
