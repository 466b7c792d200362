# -*- test-case-name: tests.test_media_engine -*-
"""
The per-packet fast path: one publisher's stream of one kind in, every
subscriber's copy out (docs/architecture.md).

An L{InStream} gets each decrypted RTP packet of its publisher as C{bytes}.
Per packet it reads the fixed header once, keeps the statistics for receiver
reports, reads the audio level and the mid offset from the header extension,
keeps video packets in a ring for NACKs, and then for each L{OutStream}
rewrites marker/payload type, sequence number, timestamp and SSRC (and the
one-byte mid value) in a C{bytearray} with C{struct.pack_into}, protects it
with the subscriber's SRTP session and C{sendto}s it on the nominated ICE pair.
No parse, no task, no coroutine per packet.

An L{InStream} outlives the publisher's peer connections: when the source
changes (a new peer connection, a new SSRC) or forwarding resumes after a
moderator mute, every output continues its sequence numbers and timestamps
where it stopped (L{InStream._rebase}), so subscriptions survive the
publisher renegotiating.

Over 400 lines: the packet path, the receive statistics it keeps for our
reports, the ring it fills and the retransmissions answered from it share
the state of one object, read per packet without indirection.
"""

from __future__ import annotations

import struct
from collections import Counter
from collections.abc import Callable

from aiortc.rtp import RtcpReceiverInfo, clamp_packets_lost

from ahoyconference.media.faults import Faults, SrtpStatusError
from ahoyconference.media.hooks import ZERO_COPY_MAX, srtpProtectInPlace
from ahoyconference.media.outstream import OutStream
from ahoyconference.media.repair import LossRepair
from ahoyconference.media.speaking import findExtensions

RING_SIZE = 1024
"""Video packets kept per stream for retransmission on NACK."""

MAX_SOURCES = 4
"""SSRCs remembered per stream: older ones' libsrtp state is freed."""

SOURCE_SWITCH_INTERVAL = 0.5
"""Seconds: a stream changes its source (SSRC or codec) at most this often."""

_RING_MASK = RING_SIZE - 1
_header = struct.Struct("!BBHII").unpack_from
_rewrite = struct.Struct("!BHII").pack_into
_u16 = struct.Struct("!H").pack
_u16into = struct.Struct("!H").pack_into
_u32into = struct.Struct("!I").pack_into
_NTP_EPOCH = 2208988800


def ntpTime(seconds: float) -> int:
    """A Unix time as a 64-bit NTP timestamp."""
    return int((seconds + _NTP_EPOCH) * (1 << 32)) & 0xFFFFFFFFFFFFFFFF


def headerLength(data) -> int:
    """The length of an RTP packet's header: fixed part, CSRCs, extension."""
    b0 = data[0]
    length = 12 + 4 * (b0 & 0x0F)
    if b0 & 0x10:
        length += 4 + 4 * ((data[length + 2] << 8) | data[length + 3])
    return length


class InStream:
    """
    One publisher's stream of one kind, and the outputs it feeds.

    @ivar enabled: C{False} while a moderator stops forwarding (4.4).
    @ivar available: media arrived from the current source.
    @ivar ssrc: the current source's SSRC, C{None} without a source.
    @ivar sources: the last L{MAX_SOURCES} SSRCs that were the source, oldest
        first; the libsrtp state of older ones is freed (C{onStale}).
    @ivar sourceChanges: how often the source (SSRC or codec) changed.
    @ivar drops: dropped packets by reason; C{dropped} is their sum.
    @ivar repair: the L{LossRepair} that NACKs the publisher for this
        stream's gaps (video), or C{None}.
    @ivar layers: while the publisher sends simulcast, its
        L{ahoyconference.media.simulcast.SimulcastVideo}: the packets go
        to its layers, and this stream's outputs are fed from them.
    """

    def __init__(self, publisherID: str, kind: str, now: Callable[[], float],
                 onAvailable: Callable[[InStream, bool], None] = lambda s, a: None,
                 onKeyframeNeeded: Callable[[InStream], None] = lambda s: None,
                 onLevel: Callable[[float, int], None] | None = None,
                 onSource: Callable[[InStream], None] = lambda s: None,
                 onStale: Callable[[InStream, int], None] = lambda s, ssrc: None,
                 faults: Faults | None = None, repair: LossRepair | None = None):
        self.publisherID = publisherID
        self.kind = kind
        self._now = now
        self._onAvailable = onAvailable
        self._onKeyframeNeeded = onKeyframeNeeded
        self._onSource = onSource
        self._onStale = onStale
        self._faults = faults if faults is not None else Faults()
        self.onLevel = onLevel
        self.repair = repair
        self.layers = None
        self.outputs: list[OutStream] = []
        self.active: list[OutStream] = []
        self.enabled = True
        self.available = False
        self.resync = False
        # what the current publisher connection negotiated
        self.codecs: dict[int, tuple] = {}
        self.clockRates: dict[int, int] = {}
        self.midId = 0
        self.levelId = 0
        self.ssrcs: frozenset[int] = frozenset()
        # the current source, and the last few
        self.ssrc: int | None = None
        self.sources: list[int] = []
        self.switchTime = -SOURCE_SWITCH_INTERVAL
        self.sourceChanges = 0
        self.pt = -1
        self.key: tuple | None = None
        self.clockRate = 90000 if kind == "video" else 48000
        self.ring: list | None = [None] * RING_SIZE if kind == "video" else None
        # receive statistics (RFC 3550 A.1, A.3, A.8)
        self.baseSeq = 0
        self.maxSeq = 0
        self.cycles = 0
        self.received = 0
        self.expectedPrior = 0
        self.receivedPrior = 0
        self.transit = 0.0
        self.jitter = 0.0
        # the last sender report of the source, or the first packet as a stand-in
        self.refNtp = 0.0
        self.refRtp = 0
        self.refLocal = 0.0
        self.lsr = 0
        self.lsrLocal: float | None = None
        # what was last forwarded (for continuity)
        self.fwdSeq: int | None = None
        self.fwdTs = 0
        self.fwdTime = 0.0
        # counters: packets (and payload octets) taken from the source while
        # forwarding is enabled, for sender reports; copies sent to outputs
        self.acceptedPackets = 0
        self.acceptedOctets = 0
        self.sentPackets = 0
        self.sentOctets = 0
        self.dropped = 0
        self.drops: Counter = Counter()
        self.detachedErrors = 0

    # -- configuration ------------------------------------------------------

    def configure(self, codecs: dict[int, tuple], clockRates: dict[int, int],
                  midId: int, levelId: int, ssrcs=()) -> None:
        """
        A publisher connection's negotiated codecs and extension ids, and
        the SSRCs its answer announced (C{a=ssrc}): when there are any, a
        packet with another SSRC is dropped rather than taken for a new source.
        """
        self.codecs = dict(codecs)
        self.clockRates = dict(clockRates)
        self.midId = midId
        self.levelId = levelId
        self.ssrcs = frozenset(ssrcs)
        self.pt = -1  # next packet takes the slow path

    def attach(self, out: OutStream) -> None:
        """Start feeding an output (its subscriber's DTLS is connected)."""
        if self.layers is not None:
            self.outputs.append(out)
            self.layers.attach(out)
            return
        if self.ssrc is not None:
            out.seqDelta = (out.startSeq - self.maxSeq - 1) & 0xFFFF
            ref = self.fwdTs if self.fwdSeq is not None else self.refRtp
            out.tsDelta = (out.startTs - ref) & 0xFFFFFFFF
        out.basePackets = self.acceptedPackets
        out.baseOctets = self.acceptedOctets
        self.outputs.append(out)
        self._remap()
        if self.kind == "video":
            self._onKeyframeNeeded(self)

    def detach(self, out: OutStream) -> None:
        """Stop feeding an output."""
        if out in self.outputs:
            self.outputs.remove(out)
            self.detachedErrors += out.errors
            self._remap()
        if self.layers is not None:
            self.layers.detach(out)

    @property
    def sendErrors(self) -> int:
        """Packets that could not be protected or sent, to any output so far."""
        return self.detachedErrors + sum(o.errors for o in self.outputs)

    def setEnabled(self, enabled: bool) -> None:
        """Stop or resume forwarding; resuming continues every output's numbering."""
        if enabled and not self.enabled:
            self.resync = True
            self.pt = -1
        self.enabled = enabled
        if self.layers is not None:
            for layer in self.layers.layers:
                layer.setEnabled(enabled)

    def sourceGone(self) -> None:
        """The publisher's connection closed: the next packet is a new source."""
        self.ssrc = None
        self.pt = -1
        self.resync = True
        if self.layers is not None:
            for layer in self.layers.layers:
                layer.sourceGone()
                layer.available = False

    def useLayers(self, layers) -> None:
        """
        The publisher's connection sends simulcast (a
        L{ahoyconference.media.simulcast.SimulcastVideo}), or no longer
        (C{None}): the outputs move to its layers, or back here.
        """
        old = self.layers
        self.layers = None
        if old is not None:
            old.release()
            for layer in old.layers:  # their counters stay in /metrics
                self.sentPackets += layer.sentPackets
                self.sentOctets += layer.sentOctets
                self.dropped += layer.dropped
                self.drops.update(layer.drops)
                self.detachedErrors += layer.sendErrors
                if layer.repair is not None:
                    layer.repair.reset()
        self.layers = layers
        self._remap()
        if layers is not None:
            for out in self.outputs:
                layers.attach(out)
        else:
            self.resync = True
            self.pt = -1

    def _remap(self) -> None:
        if self.layers is not None:
            self.active = []  # the layers feed the outputs
            return
        key = self.key
        active = []
        for o in self.outputs:
            pt = o.ptByKey.get(key, -1) if key is not None else -1
            o.pt = pt
            o.rtxPt = o.rtxByPt.get(pt) if pt >= 0 else None
            if pt >= 0:
                active.append(o)
        self.active = active

    # -- the packet path ----------------------------------------------------

    def packet(self, data: bytes) -> None:
        """One decrypted RTP packet from the publisher."""
        b0, b1, seq, ts, ssrc = _header(data)
        if ssrc != self.ssrc or (b1 & 0x7F) != self.pt:
            if not self._newSource(ssrc, b1 & 0x7F, seq, ts):
                return
        now = self._now()
        # receive statistics
        delta = (seq - self.maxSeq) & 0xFFFF
        if 0 < delta < 0x8000:
            if seq < self.maxSeq:
                self.cycles += 0x10000
            if delta != 1 and self.repair is not None:
                self.repair.gap(self.maxSeq, seq)
            self.maxSeq = seq
        elif self.repair is not None and self.repair.missing:
            self.repair.arrived(seq, False)
        self.received += 1
        transit = now * self.clockRate - ts
        d = transit - self.transit
        self.transit = transit
        if d < 0:
            d = -d
        if d < self.clockRate:
            self.jitter += (d - self.jitter) * 0.0625
        # header extensions: the mid to rewrite, the audio level
        midOffset = 0
        if b0 & 0x10:
            midOffset, level = findExtensions(data, self.midId, self.levelId)
            if level >= 0 and self.onLevel is not None:
                self.onLevel(now, level)
        if self.ring is not None:
            self.ring[seq & _RING_MASK] = data
        if not self.enabled:
            return
        self.fwdSeq = seq
        self.fwdTs = ts
        self.fwdTime = now
        self.acceptedPackets += 1
        self.acceptedOctets += len(data) - 12
        if self.active:
            self._fanout(data, b1, seq, ts, midOffset)

    def _fanout(self, data: bytes, b1: int, seq: int, ts: int, midOffset: int) -> None:
        """Rewrite, protect and send one packet of the source to every active output."""
        outs = self.active
        size = len(data)
        small = size <= ZERO_COPY_MAX
        protect = srtpProtectInPlace
        b = None
        marker = b1 & 0x80
        sent = 0
        for o in outs:
            z = o.zeroCopy
            try:
                if z is not None and small:
                    srtp, cdata, view, length, send = z
                    view[:size] = data
                    _rewrite(view, 1, marker | o.pt, (seq + o.seqDelta) & 0xFFFF,
                             (ts + o.tsDelta) & 0xFFFFFFFF, o.ssrc)
                    if midOffset:
                        view[midOffset] = o.mid
                    length[0] = size
                    status = protect(srtp, cdata, length)
                    if status:
                        raise SrtpStatusError(f"srtp_protect returned {status}")
                    send(view[:length[0]], o.addr)
                else:
                    if b is None:
                        b = bytearray(data)
                    _rewrite(b, 1, marker | o.pt, (seq + o.seqDelta) & 0xFFFF,
                             (ts + o.tsDelta) & 0xFFFFFFFF, o.ssrc)
                    if midOffset:
                        b[midOffset] = o.mid
                    o.sendto(o.protect(bytes(b)), o.addr)
                sent += 1
            except Exception as e:  # SRTP or socket trouble: never raise into aioice
                o.errors += 1
                self._faults.error("send", e)
        self.sentPackets += sent
        self.sentOctets += sent * size

    def retransmission(self, data: bytes, apt: int) -> None:
        """
        A decrypted RTX packet (RFC 4588) from the publisher for payload
        type C{apt}: when it carries a packet L{repair} is missing, that
        packet is rebuilt (original sequence number, SSRC and payload type),
        kept in the ring and forwarded like any other, late: subscribers'
        jitter buffers put it in its place.  Padding-only RTX (bandwidth
        probes), packets nobody missed and stale ones are dropped, counted.
        """
        repair = self.repair
        if repair is None or self.ssrc is None or apt != self.pt:
            self._drop("rtx_stale")
            return
        b0 = data[0]
        try:
            length = headerLength(data)
            end = len(data) - data[-1] if b0 & 0x20 else len(data)
        except IndexError:
            self._drop("short")
            return
        if end - length < 2:
            self._drop("rtx_padding")
            return
        seq = (data[length] << 8) | data[length + 1]
        if not repair.arrived(seq, True):
            self._drop("rtx_unrequested")
            return
        b = bytearray(data[:length])
        b += data[length + 2:end]
        b[0] = b0 & 0xDF
        b1 = (data[1] & 0x80) | apt
        b[1] = b1
        _u16into(b, 2, seq)
        _u32into(b, 8, self.ssrc)
        packet = bytes(b)
        if self.ring is not None:
            self.ring[seq & _RING_MASK] = packet
        if not self.enabled:
            return
        self.acceptedPackets += 1
        self.acceptedOctets += len(packet) - 12
        if self.active:
            ts = int.from_bytes(packet[4:8], "big")
            midOffset, _ = findExtensions(packet, self.midId, 0)
            self._fanout(packet, b1, seq, ts, midOffset)

    def _drop(self, reason: str) -> bool:
        self.dropped += 1
        self.drops[reason] += 1
        return False

    def _newSource(self, ssrc: int, pt: int, seq: int, ts: int) -> bool:
        key = self.codecs.get(pt)
        if key is None:
            return self._drop("payload_type")
        if self.ssrcs and ssrc not in self.ssrcs:
            self._onStale(self, ssrc)
            return self._drop("foreign_ssrc")
        now = self._now()
        newSource = ssrc != self.ssrc
        if ((newSource or key != self.key) and self.ssrc is not None
                and now - self.switchTime < SOURCE_SWITCH_INTERVAL):
            # Each change rebases or remaps every output: at most one per
            # interval (a publisher cycling SSRCs or codecs, docs/reliability.md).
            if ssrc not in self.sources:
                self._onStale(self, ssrc)
            return self._drop("source_churn")
        if newSource or key != self.key:
            self.switchTime = now
            self.sourceChanges += 1
        if newSource:
            self._remember(ssrc)
            self.ssrc = ssrc
            self.baseSeq = seq
            self.maxSeq = seq
            self.cycles = 0
            self.received = 0
            self.expectedPrior = 0
            self.receivedPrior = 0
            self.jitter = 0.0
            self.transit = now * self.clockRates.get(pt, self.clockRate) - ts
            self.refNtp = now
            self.refRtp = ts
            self.refLocal = now
            self.lsr = 0
            self.lsrLocal = None
            if self.ring is not None:
                self.ring = [None] * RING_SIZE
            if self.repair is not None:
                self.repair.reset()
        if pt != self.pt:
            self.pt = pt
            self.clockRate = self.clockRates.get(pt, self.clockRate)
            if key != self.key:
                self.key = key
                self._remap()
        if newSource or self.resync:
            self._rebase(seq, ts, now)
            self.resync = False
            if self.kind == "video":
                self._onKeyframeNeeded(self)
        if newSource:
            self._onSource(self)
        if not self.available:
            self.available = True
            self._onAvailable(self, True)
        return True

    def _remember(self, ssrc: int) -> None:
        """Keep the last L{MAX_SOURCES} sources; free the libsrtp state of older ones."""
        if ssrc in self.sources:
            self.sources.remove(ssrc)
        self.sources.append(ssrc)
        while len(self.sources) > MAX_SOURCES:
            self._onStale(self, self.sources.pop(0))

    def _rebase(self, seq: int, ts: int, now: float) -> None:
        """Continue every output's numbering from what it last sent."""
        for o in self.outputs:
            if o.seqDelta is None or self.fwdSeq is None:
                o.seqDelta = (o.startSeq - seq) & 0xFFFF
                o.tsDelta = (o.startTs - ts) & 0xFFFFFFFF
            else:
                lastSeq = (self.fwdSeq + o.seqDelta) & 0xFFFF
                lastTs = (self.fwdTs + o.tsDelta) & 0xFFFFFFFF
                gap = max(1, int((now - self.fwdTime) * self.clockRate))
                o.seqDelta = (lastSeq + 1 - seq) & 0xFFFF
                o.tsDelta = (lastTs + gap - ts) & 0xFFFFFFFF
        if self.fwdSeq is not None:
            self.fwdSeq = (seq - 1) & 0xFFFF
            self.fwdTs = ts
            self.fwdTime = now

    # -- RTCP ---------------------------------------------------------------

    def senderReport(self, ssrc: int, ntp: int, rtp: int) -> None:
        """The publisher's sender report for this stream."""
        if self.layers is not None:
            for layer in self.layers.layers:
                layer.senderReport(ssrc, ntp, rtp)
            return
        if ssrc != self.ssrc:
            return
        now = self._now()
        self.refNtp = ntp / (1 << 32) - _NTP_EPOCH
        self.refRtp = rtp
        self.refLocal = now
        self.lsr = (ntp >> 16) & 0xFFFFFFFF
        self.lsrLocal = now

    def receiverInfo(self) -> RtcpReceiverInfo | None:
        """The report block about the current source, for our RR to the publisher."""
        if self.ssrc is None or not self.received:
            return None
        extMax = self.cycles + self.maxSeq
        expected = extMax - self.baseSeq + 1
        lost = expected - self.received
        expectedInterval = expected - self.expectedPrior
        receivedInterval = self.received - self.receivedPrior
        self.expectedPrior = expected
        self.receivedPrior = self.received
        lostInterval = expectedInterval - receivedInterval
        fraction = 0
        if expectedInterval > 0 and lostInterval > 0:
            fraction = min(255, (lostInterval << 8) // expectedInterval)
        dlsr = 0
        if self.lsrLocal is not None:
            dlsr = min(0xFFFFFFFF, int((self._now() - self.lsrLocal) * 65536))
        return RtcpReceiverInfo(
            ssrc=self.ssrc, fraction_lost=fraction, packets_lost=clamp_packets_lost(lost),
            highest_sequence=extMax & 0xFFFFFFFF, jitter=int(self.jitter) & 0xFFFFFFFF,
            lsr=self.lsr, dlsr=dlsr)

    def senderInfo(self, out: OutStream) -> tuple[int, int, int, int] | None:
        """
        C{(ntp, rtp, packets, octets)} for a sender report on C{out}: the
        source's clock mapping (from its sender report, or its first packet)
        carried forward to now and into the output's timestamp space.
        """
        if self.layers is not None:
            layer = self.layers.layerOf(out)
            return layer.senderInfo(out) if layer is not None else None
        if self.ssrc is None or out.seqDelta is None:
            return None
        now = self._now()
        elapsed = now - self.refLocal
        rtp = (self.refRtp + int(elapsed * self.clockRate) + out.tsDelta) & 0xFFFFFFFF
        return (ntpTime(self.refNtp + elapsed), rtp, self.acceptedPackets - out.basePackets,
                self.acceptedOctets - out.baseOctets)

    def retransmit(self, out: OutStream, sequenceNumbers,
                   mayResend: Callable[[int, int], bool] | None = None) -> int:
        """
        Answer a subscriber's NACK from the ring: as RTX when the subscriber
        negotiated it, else the packet again.

        @param mayResend: asked C{(sequenceNumber, size)} before each packet
            goes out (the NACK budget, L{ahoyconference.media.rtcp}); C{False}
            skips it.
        @return: how many packets were sent.
        """
        if self.layers is not None:
            layer = self.layers.layerOf(out)
            return layer.retransmit(out, sequenceNumbers, mayResend) if layer is not None else 0
        if self.ring is None or out.seqDelta is None or not self.enabled or out.pt < 0:
            return 0
        sent = 0
        for outSeq in sequenceNumbers:
            inSeq = (outSeq - out.seqDelta) & 0xFFFF
            data = self.ring[inSeq & _RING_MASK]
            if data is None:
                continue
            b0, b1, seq, ts, ssrc = _header(data)
            if seq != inSeq or ssrc != self.ssrc:
                continue
            rtx = out.rtxPt is not None and out.rtxSsrc is not None
            if mayResend is not None and not mayResend(outSeq & 0xFFFF, len(data) + 2 * rtx):
                continue
            b = bytearray(data)
            outTs = (ts + out.tsDelta) & 0xFFFFFFFF
            midOffset, _ = findExtensions(data, self.midId, 0)
            if midOffset:
                b[midOffset] = out.mid
            if rtx:
                _rewrite(b, 1, (b1 & 0x80) | out.rtxPt, out.rtxSeq, outTs, out.rtxSsrc)
                out.rtxSeq = (out.rtxSeq + 1) & 0xFFFF
                length = headerLength(data)
                packet = bytes(b[:length]) + _u16(outSeq & 0xFFFF) + bytes(b[length:])
            else:
                _rewrite(b, 1, (b1 & 0x80) | out.pt, outSeq & 0xFFFF, outTs, out.ssrc)
                packet = bytes(b)
            try:
                out.sendto(out.protect(packet), out.addr)
            except Exception as e:
                out.errors += 1
                self._faults.error("retransmit", e)
                continue
            sent += 1
        return sent
