# -*- test-case-name: tests.test_simulcast -*-
"""
Simulcast (docs/architecture.md, "Simulcast"): a publisher's video in
several layers, each subscriber fed the one that suits it as one
continuous stream.

 - L{SimulcastVideo}: one publisher connection's layers.  It takes the
   packets of the video payload types in place of the stream
   (C{PublisherConnection.byPT}), learns each layer's SSRC from the RID
   header extension (and each RTX SSRC from the RRID one), and hands each
   packet to its layer, a L{LayerStream}.
 - L{LayerStream}: an L{InStream} whose outputs come and go at keyframes;
   its fan-out also rewrites the VP8 picture ID and TL0PICIDX so that they
   stay continuous across switches.
 - L{ahoyconference.media.selector.Selector}: one subscriber's choice of
   layer (what to switch to; this module does the switching).
 - L{ahoyconference.media.payload}: reading RIDs and VP8/H.264 headers.

A switch happens only at the first packet of a keyframe of the target
layer (a PLI for that layer's SSRC asks for one); until then the
subscriber keeps the layer it has.  Sequence numbers and timestamps go on
from the last packet sent (L{switchOutput}).

Publishers that send one stream never meet this module: their packets go
to the plain L{InStream} as before, at the same cost.

Over 400 lines: the layer's fan-out, the switch and the layers' owner
change the same state of an output (its offsets, its layer, its VP8
numbering) at packet time; read together they show that no packet goes
out with half of a switch applied.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from ahoyconference.logs import logger
from ahoyconference.media.faults import SrtpStatusError
from ahoyconference.media.forward import InStream, _rewrite
from ahoyconference.media.hooks import ZERO_COPY_MAX, srtpProtectInPlace
from ahoyconference.media.outstream import OutStream
from ahoyconference.media.payload import (
    h264Keyframe,
    payloadStart,
    readExtension,
    readPictureId,
    vp8Fields,
    writePictureId,
)
from ahoyconference.media.probe import paddingPacket
from ahoyconference.media.selector import (
    DOWN_QUEUE,
    PROBE_DELAY,
    PROBE_FAILED,
    PROBE_QUEUE,
    Selector,
)
from ahoyconference.messages import QUALITIES

__all__ = ["QUALITIES", "LayerStream", "Selector", "SimulcastVideo", "switchOutput"]

_log = logger(__name__)


LOSS_DOWN = 0.1
"""A receiver report with this fraction lost sends the subscriber down a layer."""
LIVE = 1.5
"""Seconds without a packet after which a layer is taken as stopped (the
publisher's encoder drops top layers when its own uplink is short)."""
LOWER_LAYERS_KBPS = 650
"""kbit/s a simulcast publisher may send beyond its cap, for its lower
layers (our browser client's ¼ and ½ resolution layers take at most 150 and
500): the cap (protocol.md 4.5) bounds each stream a subscriber receives,
so the top layer may have all of it.  In the publish offer's C{b=AS} and
in the publisher's REMB."""
WANTED_HEADROOM = 1.3
"""The publisher's REMB, when nobody wants its top layer, is this many
times what the wanted layers measure (L{SimulcastVideo.budget})…"""
WANTED_FLOOR = 200_000
"""… and at least this many bit/s (the lowest layer of our client takes
150 kbit/s at most)."""
RATE_SMOOTHING = 0.5
"""Weight of the newest second in a layer's measured bitrate."""



# -- a layer -------------------------------------------------------------------

def _takesPadding(out: OutStream) -> bool:
    """
    Whether an output takes padding on its RTX stream: it negotiated RTX
    for the codec it is fed, or (not fed yet: its first choice) for any.
    """
    if out.rtxSsrc is None:
        return False
    if out.pt >= 0:
        return out.rtxPt is not None
    return bool(out.rtxByPt)


class LayerStream(InStream):
    """
    One layer of a simulcast publisher's video: an L{InStream} (receive
    statistics, loss repair, NACK ring, sender reports) whose outputs join
    at its keyframes (L{pending}) and whose fan-out keeps each output's VP8
    numbering continuous.

    @ivar index: its rank, 0 the lowest.
    @ivar rid: its RTP stream id.
    @ivar pending: outputs waiting for a keyframe of this layer.
    @ivar rate: its measured bitrate in bit/s.
    @ivar lastPacket: when its last packet came (C{None}: never).
    @ivar padded: outputs of this layer whose link is being tried with
        padding (L{ahoyconference.media.probe}): they get some after each
        packet.
    """

    def __init__(self, owner: SimulcastVideo, index: int, rid: str, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.owner = owner
        self.index = index
        self.rid = rid
        self.pending: list[OutStream] = []
        self.rate = 0.0
        self.lastPacket: float | None = None
        self.padded: list[OutStream] = []
        self._octetsMark = 0

    def packet(self, data: bytes) -> None:
        """One decrypted RTP packet of this layer."""
        self.lastPacket = self._now()
        if self.pending and self.fwdSeq is not None and self.enabled:
            ssrc = int.from_bytes(data[8:12], "big")
            if ssrc == self.ssrc and (data[1] & 0x7F) == self.pt:
                start = payloadStart(data)
                if self.key is not None and self.key[0] == "video/vp8":
                    picOffset, picBits, tl0Offset, keyframe = vp8Fields(data, start)
                    if keyframe:
                        self.owner.switchIn(self, data, picOffset, picBits, tl0Offset)
                elif h264Keyframe(data, start):
                    self.owner.switchIn(self, data, 0, 0, 0)
        InStream.packet(self, data)

    def _fanout(self, data: bytes, b1: int, seq: int, ts: int, midOffset: int) -> None:
        """
        As L{InStream._fanout}, with each output's VP8 picture ID and
        TL0PICIDX rewritten (other codecs have none: as it is).
        """
        if self.key is None or self.key[0] != "video/vp8":
            InStream._fanout(self, data, b1, seq, ts, midOffset)
            return
        start = payloadStart(data)
        picOffset, picBits, tl0Offset, _ = vp8Fields(data, start)
        picMask = (1 << picBits) - 1 if picBits else 0
        pic = readPictureId(data, picOffset, picBits) if picOffset else 0
        tl0 = data[tl0Offset] if tl0Offset else 0
        size = len(data)
        small = size <= ZERO_COPY_MAX
        protect = srtpProtectInPlace
        marker = b1 & 0x80
        sent = 0
        for o in self.active:
            sel = o.sim
            z = o.zeroCopy
            try:
                if z is not None and small:
                    srtp, cdata, view, length, send = z
                    b = view
                else:
                    b = bytearray(data)
                    z = None
                if z is not None:
                    b[:size] = data
                _rewrite(b, 1, marker | o.pt, (seq + o.seqDelta) & 0xFFFF,
                         (ts + o.tsDelta) & 0xFFFFFFFF, o.ssrc)
                if midOffset:
                    b[midOffset] = o.mid
                if picOffset:
                    outPic = (pic + sel.picDelta) & picMask
                    writePictureId(b, picOffset, picBits, outPic)
                    sel.lastPic = outPic
                if tl0Offset:
                    outTl0 = (tl0 + sel.tl0Delta) & 0xFF
                    b[tl0Offset] = outTl0
                    sel.lastTl0 = outTl0
                if z is not None:
                    length[0] = size
                    status = protect(srtp, cdata, length)
                    if status:
                        raise SrtpStatusError(f"srtp_protect returned {status}")
                    send(view[:length[0]], o.addr)
                else:
                    o.sendto(o.protect(bytes(b)), o.addr)
                sent += 1
            except Exception as e:  # SRTP or socket trouble: never raise into aioice
                o.errors += 1
                self._faults.error("send", e)
        self.sentPackets += sent
        self.sentOctets += sent * size
        if self.padded:
            self._pad(data, ts)

    def _pad(self, data: bytes, ts: int) -> None:
        """The padding owed to the outputs being tried, after packet C{data}."""
        now = self._now()
        absId = self.owner.absId
        absSendTime = readExtension(data, absId) if absId else None
        sent = 0
        for o in self.padded:
            if o.rtxPt is None or o.rtxSsrc is None:
                continue
            outTs = (ts + o.tsDelta) & 0xFFFFFFFF
            for _ in range(o.sim.padding.take(now, o.sim.paddingRate(now))):
                packet = paddingPacket(o.rtxPt, o.rtxSeq, outTs, o.rtxSsrc, absId, absSendTime)
                o.rtxSeq = (o.rtxSeq + 1) & 0xFFFF
                try:
                    o.sendto(o.protect(packet), o.addr)
                except Exception as e:  # SRTP or socket trouble: never raise into aioice
                    o.errors += 1
                    self._faults.error("padding", e)
                    break
                sent += 1
        self.owner.counters["simulcast_padding_packets"] += sent

    def retransmit(self, out: OutStream, sequenceNumbers, mayResend=None) -> int:
        """As L{InStream.retransmit}, but never for numbers sent before the output joined."""
        floor = out.sim.floorSeq if out.sim is not None else None
        if floor is not None:
            sequenceNumbers = [s for s in sequenceNumbers if ((s - floor) & 0xFFFF) < 0x8000]
        return InStream.retransmit(self, out, sequenceNumbers, mayResend)

    def measure(self, interval: float) -> None:
        """Update L{rate} from the octets taken since the last call."""
        octets = self.acceptedOctets - self._octetsMark
        self._octetsMark = self.acceptedOctets
        if interval > 0:
            current = octets * 8 / interval
            self.rate = current if self.rate == 0 else (
                RATE_SMOOTHING * current + (1 - RATE_SMOOTHING) * self.rate)

    def isLive(self, now: float) -> bool:
        """Did a packet come within L{LIVE} seconds?"""
        return self.lastPacket is not None and now - self.lastPacket <= LIVE


# -- switching -------------------------------------------------------------------

def switchOutput(out: OutStream, old: InStream | None, new: InStream, seq: int, ts: int,
                 now: float, pic: int | None, tl0: int | None) -> None:
    """
    Continue C{out}'s numbering on C{new}, whose packet C{seq}/C{ts} (a
    keyframe's first, with picture ID C{pic} and TL0PICIDX C{tl0}) is the
    next it sends: sequence number one past the last sent, timestamp
    advanced by the time since then (from both layers' sender reports when
    both have one, else by arrival), picture ID one past, TL0PICIDX one past.
    """
    sel = out.sim
    if old is None or out.seqDelta is None or old.fwdSeq is None:
        if out.seqDelta is None:
            out.seqDelta = (out.startSeq - seq) & 0xFFFF
            out.tsDelta = (out.startTs - ts) & 0xFFFFFFFF
        else:  # it had been fed before, and lost its layer: go on from there
            out.seqDelta = (sel.nextSeq - seq) & 0xFFFF
            out.tsDelta = (sel.nextTs - ts) & 0xFFFFFFFF
    else:
        lastSeq = (old.fwdSeq + out.seqDelta) & 0xFFFF
        lastTs = (old.fwdTs + out.tsDelta) & 0xFFFFFFFF
        gap = None
        if old.lsrLocal is not None and new.lsrLocal is not None:
            # both clocks are the sender's: the media time between the two packets
            oldTime = old.refNtp + ((old.fwdTs - old.refRtp) & 0xFFFFFFFF) / old.clockRate
            delta = (ts - new.refRtp) & 0xFFFFFFFF
            if delta >= 0x80000000:
                delta -= 0x100000000
            newTime = new.refNtp + delta / new.clockRate
            if (oldTime - new.refNtp) < 3600:
                gap = int((newTime - oldTime) * new.clockRate)
        if gap is None or gap <= 0 or gap > 10 * new.clockRate:
            gap = max(1, int((now - old.fwdTime) * new.clockRate))
        out.seqDelta = (lastSeq + 1 - seq) & 0xFFFF
        out.tsDelta = (lastTs + gap - ts) & 0xFFFFFFFF
    sel.floorSeq = (seq + out.seqDelta) & 0xFFFF
    if pic is not None:
        sel.picDelta = 0 if sel.lastPic is None else (sel.lastPic + 1 - pic) & 0x7FFF
    if tl0 is not None:
        sel.tl0Delta = 0 if sel.lastTl0 is None else (sel.lastTl0 + 1 - tl0) & 0xFF
    out.basePackets = new.acceptedPackets - (old.acceptedPackets - out.basePackets
                                             if old is not None else 0)
    out.baseOctets = new.acceptedOctets - (old.acceptedOctets - out.baseOctets
                                           if old is not None else 0)


# -- one publisher connection's layers ---------------------------------------------

class SimulcastVideo:
    """
    The layers of one publisher connection's simulcast video, and the
    subscribers' outputs fed from them.

    @ivar main: the publisher's video L{InStream}: the subscriptions'
        anchor (they attach there), which gets no packet itself meanwhile.
    @ivar layers: the L{LayerStream}s, lowest first.
    @ivar bySsrc: SSRC → layer, learnt from the RID extension.
    @ivar rtxBySsrc: RTX SSRC → layer, learnt from the RRID extension.
    @ivar counters: the engine's counters (/metrics): C{simulcast_switches_up},
        C{simulcast_switches_down}, C{simulcast_unknown_rid} (packets
        whose RID, or RRID, names no layer: dropped), C{simulcast_probes_held},
        C{simulcast_probes_failed} (padding tries), C{simulcast_padding_packets}.
    @ivar absId: the publisher's C{abs-send-time} extension id (0: none),
        copied into padding (L{ahoyconference.media.probe}).
    """

    def __init__(self, main: InStream, rids: list[str], ridId: int, rridId: int,
                 makeLayer: Callable[[SimulcastVideo, int, str], LayerStream],
                 now: Callable[[], float], requestKeyframe: Callable[[LayerStream], None],
                 onDropped: Callable[[str], None], counters: Counter | None = None,
                 absId: int = 0):
        self.main = main
        self.ridId = ridId
        self.rridId = rridId
        self.absId = absId
        self._now = now
        self._requestKeyframe = requestKeyframe
        self._onDropped = onDropped
        self.layers = [makeLayer(self, i, rid) for i, rid in enumerate(rids)]
        self._byRid = {layer.rid.encode(): layer for layer in self.layers}
        self.bySsrc: dict[int, LayerStream] = {}
        self.rtxBySsrc: dict[int, LayerStream] = {}
        self.outputs: list[OutStream] = []
        self.counters: Counter = counters if counters is not None else Counter()
        self._lastTick: float | None = None
        self._warned = False

    # -- packets in --------------------------------------------------------

    def packet(self, data: bytes) -> None:
        """A video packet of the publisher: to its layer, by SSRC (or by RID, first)."""
        layer = self.bySsrc.get(int.from_bytes(data[8:12], "big"))
        if layer is None:
            layer = self._learn(data, self.ridId, self.bySsrc)
            if layer is None:
                return
        layer.packet(data)

    def retransmission(self, data: bytes, apt: int) -> None:
        """An RTX packet: to its layer, by SSRC (or by RRID, first)."""
        layer = self.rtxBySsrc.get(int.from_bytes(data[8:12], "big"))
        if layer is None:
            layer = self._learn(data, self.rridId, self.rtxBySsrc)
            if layer is None:
                return
        layer.retransmission(data, apt)

    def _learn(self, data: bytes, extId: int, table: dict) -> LayerStream | None:
        rid = readExtension(data, extId)
        layer = self._byRid.get(rid) if rid is not None else None
        if layer is None:
            self.counters["simulcast_unknown_rid"] += 1
            self._onDropped("unknown_rid")
            if not self._warned:  # once per publisher connection; the rest are counted
                self._warned = True
                _log.warn("simulcast publisher {member_id}: a packet of an unknown SSRC "
                          "without a known RID dropped (counted in "
                          "ahoy_simulcast_unknown_rid_total)",
                          member_id=self.main.publisherID[:12])
            return None
        ssrc = int.from_bytes(data[8:12], "big")
        for known, other in list(table.items()):
            if other is layer:  # the layer's source changed
                del table[known]
        if len(table) < 2 * len(self.layers):
            table[ssrc] = layer
        return layer

    # -- outputs -------------------------------------------------------------

    def attach(self, out: OutStream) -> None:
        """
        Feed a subscriber's output from the best live layer, from that
        layer's next keyframe (its L{Selector}, C{out.sim}, says how high
        it may go; without one, as high as there is).
        """
        if out.sim is None:
            out.sim = Selector(len(self.layers) - 1)
        sel = out.sim
        sel.layer = sel.target = sel.since = None
        sel.betterSince = None
        self.outputs.append(out)
        self.reconsider(out)

    def detach(self, out: OutStream) -> None:
        """Stop feeding an output."""
        if out in self.outputs:
            self.outputs.remove(out)
        for layer in self.layers:
            if out in layer.padded:
                layer.padded.remove(out)
            if out in layer.pending:
                layer.pending.remove(out)
            if out in layer.outputs:
                layer.outputs.remove(out)
                layer.detachedErrors += out.errors
                layer._remap()

    def release(self) -> list[OutStream]:
        """
        These layers go (a new publisher connection): give back the
        outputs, each remembering where its numbering stopped.
        """
        outs = list(self.outputs)
        for out in outs:
            sel = out.sim
            if sel is not None and sel.layer is not None and sel.layer.fwdSeq is not None \
                    and out.seqDelta is not None:
                sel.nextSeq = (sel.layer.fwdSeq + out.seqDelta + 1) & 0xFFFF
                sel.nextTs = (sel.layer.fwdTs + out.tsDelta + 3000) & 0xFFFFFFFF
            self.detach(out)
            if sel is not None:
                sel.layer = None
                sel.target = None
        return outs

    def setQuality(self, out: OutStream, quality: int) -> None:
        """
        The subscriber asked for another quality; a higher one is tried as
        soon as its layer is live (when nobody wanted it, the publisher
        stopped sending it: its REMB, L{budget}).
        """
        sel = out.sim
        if sel is not None:
            if quality > sel.quality:
                sel.tryNow = True
                sel.probeDelay = PROBE_DELAY
            sel.quality = quality
            sel.betterSince = None
            self.reconsider(out)

    def estimate(self, out: OutStream, bitrate: float) -> None:
        """A subscriber's new bandwidth estimate: down at once if it no longer fits."""
        if out.sim is None:
            return
        previous = out.sim.estimate
        out.sim.setEstimate(bitrate)
        if previous is None or bitrate < previous:
            self.reconsider(out)

    def roundTrip(self, out: OutStream, rtt: float) -> None:
        """
        A subscriber's round-trip time (from its receiver report): a queue
        growing ends a padding try, or a step up, at once.
        """
        sel = out.sim
        if sel is None:
            return
        sel.setRoundTrip(self._now(), rtt)
        if sel.probing is not None or sel.queueing > DOWN_QUEUE \
                or self._now() - sel.lastUp <= PROBE_FAILED:
            self.reconsider(out)

    def watching(self, out: OutStream) -> bool:
        """
        Is the output's link being tried or watched: padding, a step up
        within L{PROBE_FAILED}, its first seconds
        (L{ahoyconference.media.selector.START_WATCH}), or a
        queue seen?
        """
        sel = out.sim
        if sel is None:
            return False
        now = self._now()
        return (sel.probing is not None or sel.starting(now) or sel.queueing > PROBE_QUEUE
                or (sel.lastUp > sel.lastDown and now - sel.lastUp <= PROBE_FAILED))

    def received(self, out: OutStream, lost: int, highest: int) -> None:
        """
        A subscriber's receiver report (cumulative loss, highest sequence
        number): much loss while trying with padding ends the try; much loss
        over L{ahoyconference.media.selector.LOSS_WINDOW} sends it down
        (L{loss}).
        """
        sel = out.sim
        if sel is None:
            return
        now = self._now()
        fraction, lossy = sel.received(now, lost, highest)
        if lossy and sel.probing is not None:
            self._probeFailed(out, now)
        elif fraction is not None:
            self.loss(out, fraction)

    def loss(self, out: OutStream, fraction: float) -> None:
        """A subscriber's receiver report: much loss sends it one layer down."""
        sel = out.sim
        if sel is None or fraction < LOSS_DOWN:
            return
        now = self._now()
        if sel.probing is not None:  # the padding did it: stop that, keep the layer
            self._probeFailed(out, now)
            return
        index = sel.index
        live = [i for i, layer in enumerate(self.layers) if layer.isLive(now)]
        lower = [i for i in live if index is not None and i < index]
        if lower:
            self._switchTo(out, lower[-1], now)
            sel.betterSince = None

    def nacked(self, out: OutStream) -> None:
        """
        A subscriber's NACK: right after a step up, it lost packets of the
        new layer (the link cannot carry it): back down at once.
        """
        sel = out.sim
        if sel is None or sel.layer is None or self._now() - sel.lastUp > PROBE_FAILED:
            return
        if sel.lastUp <= sel.lastDown:
            return
        self.loss(out, 1.0)

    def tick(self) -> None:
        """Every report interval: measure the layers, reconsider every output."""
        now = self._now()
        interval = now - self._lastTick if self._lastTick is not None else 0.0
        self._lastTick = now
        for layer in self.layers:
            layer.measure(interval)
        for out in list(self.outputs):
            self.reconsider(out, now)

    def reconsider(self, out: OutStream, now: float | None = None) -> None:
        """Switch the output if its selector says so."""
        if now is None:
            now = self._now()
        sel = out.sim
        rates = [layer.rate for layer in self.layers]
        live = [layer.isLive(now) for layer in self.layers]
        probing = sel.probing
        wanted = sel.choose(now, rates, live, _takesPadding(out))
        if probing is not None and sel.probing is None:
            outcome = "failed" if wanted is None or wanted <= sel.index else "held"
            self.counters[f"simulcast_probes_{outcome}"] += 1
        self._padWhileTrying(out)
        if wanted is not None and wanted != sel.index:
            self._switchTo(out, wanted, now)
        elif sel.target is not None:
            self._requestKeyframe(self.layers[sel.target])  # still waiting (throttled)

    def _probeFailed(self, out: OutStream, now: float) -> None:
        held = out.sim.probeFailed(now)
        self.counters["simulcast_probes_failed"] += 1
        self._padWhileTrying(out)
        if held is not None and out.sim.index is not None and held > out.sim.index:
            self._switchTo(out, held, now)

    def _padWhileTrying(self, out: OutStream) -> None:
        """The output gets padding from its layer while its selector tries a layer up."""
        sel = out.sim
        feeding = sel.layer if sel.probing is not None and sel.target is None else None
        for layer in self.layers:
            if layer is feeding:
                if out not in layer.padded:
                    layer.padded.append(out)
            elif out in layer.padded:
                layer.padded.remove(out)

    def _switchTo(self, out: OutStream, index: int, now: float) -> None:
        sel = out.sim
        for layer in self.layers:
            if out in layer.pending:
                layer.pending.remove(out)
        if sel.layer is not None and sel.layer.index == index:
            sel.target = None
            return
        sel.target = index
        target = self.layers[index]
        target.pending.append(out)
        self._requestKeyframe(target)

    def switchIn(self, layer: LayerStream, data: bytes, picOffset: int, picBits: int,
                 tl0Offset: int) -> None:
        """
        A keyframe starts on C{layer}: the outputs waiting for it move over
        (from whatever layer fed them), numbering continued.
        """
        now = self._now()
        seq = (data[2] << 8) | data[3]
        ts = int.from_bytes(data[4:8], "big")
        pic = readPictureId(data, picOffset, picBits) if picOffset else None
        tl0 = data[tl0Offset] if tl0Offset else None
        for out in layer.pending:
            sel = out.sim
            old = sel.layer
            if old is not None:
                if out in old.outputs:
                    old.outputs.remove(out)
                    old._remap()
                if layer.index > old.index:
                    sel.wentUp(now)
                else:
                    sel.wentDown(now)
                direction = "up" if layer.index > old.index else "down"
                self.counters[f"simulcast_switches_{direction}"] += 1
                _log.debug("simulcast {member_id}: an output went {direction} to {rid}",
                           member_id=self.main.publisherID[:12], direction=direction,
                           rid=layer.rid)
            switchOutput(out, old, layer, seq, ts, now, pic, tl0)
            sel.layer = layer
            sel.target = None
            layer.outputs.append(out)
        layer.pending = []
        layer._remap()

    # -- the publisher's side ----------------------------------------------------

    @property
    def sources(self) -> list[int]:
        """Every SSRC the layers remember (as L{InStream.sources})."""
        return [ssrc for layer in self.layers for ssrc in layer.sources]

    def ssrcs(self) -> list[int]:
        """The layers' current SSRCs."""
        return [layer.ssrc for layer in self.layers if layer.ssrc is not None]

    def layerOf(self, out: OutStream) -> LayerStream | None:
        """The layer that feeds an output."""
        return out.sim.layer if out.sim is not None else None

    def wantedQuality(self) -> int:
        """The highest layer index any output asked for (its C{quality}; -1: no output)."""
        top = len(self.layers) - 1
        return max((min(out.sim.quality, top) for out in self.outputs if out.sim is not None),
                   default=-1)

    def budget(self, top: int) -> int | None:
        """
        What the layers up to C{top} need (bit/s): L{WANTED_HEADROOM} times
        their measured bitrates, at least L{WANTED_FLOOR}; C{None} until
        they were measured.  As the publisher's REMB, the browser stops the
        layers above (nobody wants them) and starts them again when it rises.
        """
        rates = [layer.rate for layer in self.layers[:top + 1]]
        if not rates or not all(rates):
            return None
        return max(WANTED_FLOOR, int(WANTED_HEADROOM * sum(rates)))

    def wanted(self) -> int:
        """The highest layer index any output gets or waits for (-1: none)."""
        return max((out.sim.index for out in self.outputs
                    if out.sim is not None and out.sim.index is not None), default=-1)
