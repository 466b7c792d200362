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
 - L{Selector}: one subscriber's choice of layer: the highest that fits
   its bandwidth estimate and what it asked for; down at once, up slowly.

A switch happens only at the first packet of a keyframe of the target
layer (a PLI for that layer's SSRC asks for one); until then the
subscriber keeps the layer it has.  Sequence numbers and timestamps go on
from the last packet sent (L{switchOutput}).

Publishers that send one stream never meet this module: their packets go
to the plain L{InStream} as before, at the same cost.
"""

from __future__ import annotations

import struct
from collections import Counter
from collections.abc import Callable

from ahoyconference.media.faults import SrtpStatusError
from ahoyconference.media.forward import InStream, _rewrite
from ahoyconference.media.hooks import ZERO_COPY_MAX, srtpProtectInPlace
from ahoyconference.media.outstream import OutStream
from ahoyconference.messages import QUALITIES

__all__ = ["QUALITIES", "LayerStream", "Selector", "SimulcastVideo", "switchOutput"]


UP_DELAY = 4.0
"""Seconds a higher layer must keep fitting before a subscriber goes up."""
PROBE_DELAY = 4.0
"""Seconds of an estimate held down by what we send (not by the link)
before a subscriber tries the next layer up anyway; doubled after each
try that had to come back down within L{PROBE_FAILED}, up to L{PROBE_MAX}
(which bounds how long a subscriber whose link got better waits)."""
PROBE_FAILED = 3.0
"""Seconds after going up within which any decrease of the estimate (the
receiver saw the delay grow: the link cannot carry the layer) sends the
subscriber back down at once: the try failed.  A receiver's estimate grows
only a few per cent a second, so it says nothing else that soon."""
DECREASE = 0.97
"""An estimate below this share of the one before is a decrease (receivers
send a new REMB at once when theirs falls by 3 % or more)."""
PROBE_MAX = 10.0
HEADROOM = 1.15
"""A layer fits an estimate this many times its measured bitrate."""
UNCONSTRAINED = 1.3
"""An estimate this many times the current layer's bitrate is not held
down by the link: receivers' estimates grow only so far above what they get."""
FALLING = 0.85
"""An estimate below this share of its peak since the last switch is
falling (the link is congested): only then does a lower estimate send a
subscriber down.  A receiver's estimate starts low and climbs (to at most
about 1.5 times what it receives): a low but rising one is no reason to
leave a layer."""
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
ESTIMATE_GRACE = 2.0
"""Seconds after a subscriber joins during which its estimate (still
ramping up from the receiver's start value) does not lower its layer."""
RATE_SMOOTHING = 0.5
"""Weight of the newest second in a layer's measured bitrate."""

_u16 = struct.Struct("!H")


# -- reading packets ---------------------------------------------------------

def readExtension(data, extId: int) -> bytes | None:
    """
    The value of header extension C{extId} (RFC 8285, one-byte or two-byte
    form) of a plain RTP packet, or C{None}.
    """
    if not extId or not data[0] & 0x10:
        return None
    pos = 12 + 4 * (data[0] & 0x0F)
    if len(data) < pos + 4:
        return None
    profile = (data[pos] << 8) | data[pos + 1]
    end = pos + 4 + 4 * ((data[pos + 2] << 8) | data[pos + 3])
    pos += 4
    if end > len(data):
        return None
    if profile == 0xBEDE:
        while pos < end:
            h = data[pos]
            if h == 0:
                pos += 1
                continue
            eid, length = h >> 4, (h & 0x0F) + 1
            if eid == 15:
                return None
            if eid == extId:
                return bytes(data[pos + 1:min(end, pos + 1 + length)])
            pos += 1 + length
    elif profile & 0xFFF0 == 0x1000:
        while pos + 1 < end:
            eid = data[pos]
            if eid == 0:
                pos += 1
                continue
            length = data[pos + 1]
            if eid == extId:
                return bytes(data[pos + 2:min(end, pos + 2 + length)])
            pos += 2 + length
    return None


def vp8Fields(data, start: int) -> tuple[int, int, int, bool]:
    """
    The VP8 payload descriptor (RFC 7741 4.2) of a packet whose payload
    starts at C{start}.

    @return: C{(pictureIdOffset, pictureIdBits, tl0Offset, keyframeStart)}:
        the offset of the picture ID (0 when absent) and its width (7 or
        15), the offset of TL0PICIDX (0 when absent), and whether the
        packet starts a keyframe (S set, partition 0, P bit clear).
    """
    size = len(data)
    if start >= size:
        return 0, 0, 0, False
    b = data[start]
    pos = start + 1
    picOffset = picBits = tl0Offset = 0
    if b & 0x80:  # X
        if pos >= size:
            return 0, 0, 0, False
        x = data[pos]
        pos += 1
        if x & 0x80:  # I
            if pos >= size:
                return 0, 0, 0, False
            picOffset = pos
            if data[pos] & 0x80:  # M: 15 bits
                picBits = 15
                pos += 2
            else:
                picBits = 7
                pos += 1
        if x & 0x40:  # L
            tl0Offset = pos
            pos += 1
        if x & 0x30:  # T or K
            pos += 1
    if pos >= size:
        return picOffset, picBits, tl0Offset if tl0Offset < size else 0, False
    keyframe = bool(b & 0x10) and (b & 0x07) == 0 and not data[pos] & 0x01
    return picOffset, picBits, tl0Offset if tl0Offset < size else 0, keyframe


def h264Keyframe(data, start: int) -> bool:
    """
    Does this H.264 packet (RFC 6184) start a keyframe: an IDR slice or an
    SPS, alone, first in a STAP-A, or the start of a fragmented IDR?
    """
    if start >= len(data):
        return False
    nal = data[start] & 0x1F
    if nal in (5, 7):
        return True
    if nal == 24:  # STAP-A: size (2 bytes), then the first NAL unit
        return start + 3 < len(data) and (data[start + 3] & 0x1F) in (5, 7)
    if nal == 28:  # FU-A: the start of a fragmented NAL unit
        return start + 1 < len(data) and bool(data[start + 1] & 0x80) \
            and (data[start + 1] & 0x1F) == 5
    return False


def payloadStart(data) -> int:
    """Where an RTP packet's payload starts (after CSRCs and the extension)."""
    b0 = data[0]
    length = 12 + 4 * (b0 & 0x0F)
    if b0 & 0x10:
        if len(data) < length + 4:
            return len(data)
        length += 4 + 4 * ((data[length + 2] << 8) | data[length + 3])
    return length


def readPictureId(data, offset: int, bits: int) -> int:
    """The picture ID at C{offset} (L{vp8Fields})."""
    if bits == 15:
        return ((data[offset] & 0x7F) << 8) | data[offset + 1]
    return data[offset] & 0x7F


def writePictureId(buffer, offset: int, bits: int, value: int) -> None:
    """Write a picture ID of the width it had (the M bit stays as it was)."""
    if bits == 15:
        buffer[offset] = 0x80 | ((value >> 8) & 0x7F)
        buffer[offset + 1] = value & 0xFF
    else:
        buffer[offset] = value & 0x7F


# -- one subscriber's choice ---------------------------------------------------

class Selector:
    """
    One subscriber's layer: what it gets, what it should get, and how its
    VP8 numbering continues across switches.

    @ivar layer: the L{LayerStream} it is fed from, or C{None} yet.
    @ivar target: the layer index it waits to switch to (a keyframe), or
        C{None}.
    @ivar quality: the highest layer index it asked for.
    @ivar estimate: its latest bandwidth estimate in bit/s (REMB), or C{None}.
    @ivar picDelta: added to the layer's picture IDs (mod 2^15).
    @ivar tl0Delta: added to the layer's TL0PICIDX (mod 2^8).
    @ivar lastPic: the last picture ID sent (C{None} before any).
    @ivar lastTl0: the last TL0PICIDX sent.
    @ivar switches: switches done, by direction (C{"up"}, C{"down"}).
    """

    def __init__(self, quality: int):
        self.layer: LayerStream | None = None
        self.target: int | None = None
        self.quality = quality
        self.estimate: float | None = None
        self.peak = 0.0
        self.decreased = False
        self.picDelta = 0
        self.tl0Delta = 0
        self.lastPic: int | None = None
        self.lastTl0: int | None = None
        self.betterSince: float | None = None
        self.probeDelay = PROBE_DELAY
        self.lastUp = -1e9
        self.lastDown = -1e9
        self.lastDecrease = -1e9
        self.since: float | None = None
        self.floorSeq: int | None = None
        self.nextSeq = 0
        self.nextTs = 0
        self.switches: Counter = Counter()

    @property
    def index(self) -> int | None:
        """The layer it gets or is about to get."""
        if self.target is not None:
            return self.target
        return self.layer.index if self.layer is not None else None

    def choose(self, now: float, rates: list[float], live: list[bool]) -> int | None:
        """
        The layer it should have now, given each layer's measured bitrate
        and liveness: the highest live one up to L{quality} that fits the
        estimate (with L{HEADROOM}), else the lowest live one.  Going down
        is at once once the estimate falls (L{FALLING}; or the layer
        stopped, or loss: L{SimulcastVideo.loss}); going up only after the better layer kept fitting for
        L{UP_DELAY} seconds, or (when the estimate is held down by what it
        gets, L{UNCONSTRAINED}) one layer up after L{probeDelay}.

        @return: the index, or C{None} when no layer is live.
        """
        if self.since is None:
            self.since = now
        if self.decreased:
            self.lastDecrease = now
            self.decreased = False
        if self.lastUp > self.lastDown and now - self.lastUp >= PROBE_FAILED:
            self.probeDelay = PROBE_DELAY  # the last step up held
        top = min(self.quality, len(rates) - 1)
        candidates = [i for i in range(top + 1) if live[i]]
        if not candidates:
            candidates = [i for i in range(len(rates)) if live[i]]
            if not candidates:
                return None
            return candidates[0]
        current = self.index
        if self.estimate is None or now - self.since < ESTIMATE_GRACE:
            best = candidates[-1]
        else:
            fits = [i for i in candidates if rates[i] * HEADROOM <= self.estimate]
            best = fits[-1] if fits else candidates[0]
        falling = self.estimate is not None and (
            self.estimate < FALLING * self.peak
            or (self.lastDecrease >= self.lastUp and now - self.lastUp <= PROBE_FAILED))
        if current is None or current not in candidates or (best < current and falling):
            self.betterSince = None
            return best
        above = [i for i in candidates if i > current]
        climbing = self.lastUp > max(self.lastDown, self.lastDecrease)
        if best <= current and above and climbing and now - self.lastUp >= PROBE_FAILED:
            # the last step up held (no decrease since): the next one
            self.betterSince = None
            return above[0]
        if best < current:
            return current
        if best == current:
            if (above and self.estimate is not None and rates[current] > 0
                    and self.estimate >= UNCONSTRAINED * rates[current]):
                # the estimate is held down by what we send: try one up, now and then
                if self.betterSince is None:
                    self.betterSince = now
                elif now - self.betterSince >= self.probeDelay:
                    self.betterSince = None
                    return above[0]
            else:
                self.betterSince = None
            return current
        if self.betterSince is None:
            self.betterSince = now
        if now - self.betterSince >= UP_DELAY:
            self.betterSince = None
            return best
        return current

    def setEstimate(self, bitrate: float) -> None:
        """A new bandwidth estimate (bit/s)."""
        self.decreased = self.estimate is not None and bitrate < DECREASE * self.estimate
        self.estimate = float(bitrate)
        self.peak = max(self.peak, self.estimate)

    def wentUp(self, now: float) -> None:
        """It switched up: remember when, to tell a failed try."""
        self.peak = self.estimate or 0.0
        self.lastUp = now
        self.switches["up"] += 1

    def wentDown(self, now: float) -> None:
        """It switched down: a try up that failed soon makes the next one wait longer."""
        self.switches["down"] += 1
        self.lastDown = now
        self.peak = self.estimate or 0.0
        if now - self.lastUp <= PROBE_FAILED:
            self.probeDelay = min(PROBE_MAX, self.probeDelay * 2)
        self.betterSince = None


# -- a layer -------------------------------------------------------------------

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
    """

    def __init__(self, owner: SimulcastVideo, index: int, rid: str, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.owner = owner
        self.index = index
        self.rid = rid
        self.pending: list[OutStream] = []
        self.rate = 0.0
        self.lastPacket: float | None = None
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
        whose RID, or RRID, names no layer: dropped).
    """

    def __init__(self, main: InStream, rids: list[str], ridId: int, rridId: int,
                 makeLayer: Callable[[SimulcastVideo, int, str], LayerStream],
                 now: Callable[[], float], requestKeyframe: Callable[[LayerStream], None],
                 onDropped: Callable[[str], None], counters: Counter | None = None):
        self.main = main
        self.ridId = ridId
        self.rridId = rridId
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
        """The subscriber asked for another quality."""
        if out.sim is not None:
            out.sim.quality = quality
            out.sim.betterSince = None
            self.reconsider(out)

    def estimate(self, out: OutStream, bitrate: float) -> None:
        """A subscriber's new bandwidth estimate: down at once if it no longer fits."""
        if out.sim is None:
            return
        previous = out.sim.estimate
        out.sim.setEstimate(bitrate)
        if previous is None or bitrate < previous:
            self.reconsider(out)

    def loss(self, out: OutStream, fraction: float) -> None:
        """A subscriber's receiver report: much loss sends it one layer down."""
        sel = out.sim
        if sel is None or fraction < LOSS_DOWN:
            return
        index = sel.index
        now = self._now()
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
        wanted = sel.choose(now, rates, live)
        if wanted is not None and wanted != sel.index:
            self._switchTo(out, wanted, now)
        elif sel.target is not None:
            self._requestKeyframe(self.layers[sel.target])  # still waiting (throttled)

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

    def wanted(self) -> int:
        """The highest layer index any output gets or waits for (-1: none)."""
        return max((out.sim.index for out in self.outputs
                    if out.sim is not None and out.sim.index is not None), default=-1)
