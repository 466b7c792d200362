# -*- test-case-name: tests.test_simulcast -*-
"""
Tests for L{ahoyconference.media.simulcast}, L{ahoyconference.media.selector} and
L{ahoyconference.media.payload}: crafted RTP packets with VP8
payload descriptors through the layers of one publisher to subscribers'
outputs, on a L{task.Clock}; no sockets, no SRTP (the outputs' "protect" is
the identity and their "sendto" records).
"""

from __future__ import annotations

import struct
from collections import Counter

from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from ahoyconference.media import payload, probe, selector, simulcast
from ahoyconference.media.forward import InStream
from ahoyconference.media.outstream import OutStream
from ahoyconference.media.payload import readExtension, vp8Fields
from ahoyconference.media.selector import Selector
from ahoyconference.media.simulcast import LayerStream, SimulcastVideo

VP8 = ("video/vp8", 90000, "", "")
MID_ID, RID_ID, RRID_ID = 1, 4, 5
SSRCS = {"l": 1000, "m": 2000, "h": 3000}


def extensions(*elements: tuple[int, bytes]) -> bytes:
    """A one-byte header-extension block (RFC 8285) of these elements."""
    body = b"".join(bytes([(eid << 4) | (len(value) - 1)]) + value for eid, value in elements)
    body += b"\0" * (-len(body) % 4)
    return struct.pack("!HH", 0xBEDE, len(body) // 4) + body


def vp8Packet(ssrc: int, seq: int, ts: int, pic: int, tl0: int, *, keyframe=False,
              start=True, rid: str | None = None, marker=False, pt=96, size=100) -> bytes:
    """An RTP packet with a VP8 payload descriptor (X, I with 15 bits, L) and the mid extension."""
    elements = [(MID_ID, b"1")]
    if rid is not None:
        elements.append((RID_ID, rid.encode()))
    ext = extensions(*elements)
    header = struct.pack("!BBHII", 0x90, (0x80 if marker else 0) | pt, seq, ts, ssrc) + ext
    descriptor = bytes([0x90 if start else 0x80, 0xC0, 0x80 | (pic >> 8), pic & 0xFF, tl0])
    payload = bytes([0x00 if keyframe else 0x01]) + b"\xAA" * (size - 1)
    return header + descriptor + payload


def parse(packet: bytes) -> dict:
    """What a subscriber sees of a packet we sent."""
    b0, b1, seq, ts, ssrc = struct.unpack_from("!BBHII", packet)
    start = payload.payloadStart(packet)
    picOffset, bits, tl0Offset, keyframe = vp8Fields(packet, start)
    return {"seq": seq, "ts": ts, "ssrc": ssrc, "pt": b1 & 0x7F,
            "pic": payload.readPictureId(packet, picOffset, bits), "tl0": packet[tl0Offset],
            "keyframe": keyframe, "size": len(packet)}


class Publisher:
    """Three layers that each send 30 frames/s of one packet, their own numbering."""

    def __init__(self, clock: Clock, layers=("l", "m", "h")):
        self.clock = clock
        self.keyframes: list[str] = []
        self.respond = True  # a PLI gets a keyframe of that layer with its next frame
        self.drops: Counter = Counter()
        self.counters: Counter = Counter()
        self.main = InStream("pub", "video", clock.seconds)
        self.main.configure({96: VP8}, {96: 90000}, MID_ID, 0)

        def makeLayer(owner, index, rid):
            layer = LayerStream(owner, index, rid, "pub", "video", clock.seconds)
            layer.configure({96: VP8}, {96: 90000}, MID_ID, 0)
            return layer

        self.video = SimulcastVideo(self.main, list(layers), RID_ID, RRID_ID, makeLayer,
                                    clock.seconds, lambda layer: self.keyframes.append(layer.rid),
                                    lambda reason: self.drops.update([reason]), self.counters)
        self.main.useLayers(self.video)
        # each layer's own sequence numbers, timestamps, picture IDs, TL0PICIDX
        self.state = {rid: [100 * (i + 1), 50_000 * (i + 1), 7000 * (i + 1) % 0x8000, 17 * i]
                      for i, rid in enumerate(layers)}

    def send(self, rid: str, keyframe=False, withRid=True, size=None) -> None:
        seq, ts, pic, tl0 = self.state[rid]
        size = size or {"l": 100, "m": 300, "h": 900}[rid]
        self.video.packet(vp8Packet(SSRCS[rid], seq & 0xFFFF, ts & 0xFFFFFFFF, pic, tl0,
                                    keyframe=keyframe, rid=rid if withRid else None, size=size))
        self.state[rid] = [seq + 1, ts + 3000, (pic + 1) & 0x7FFF, (tl0 + 1) & 0xFF]

    def frame(self, keyframes=(), rids=("l", "m", "h")) -> None:
        """One frame of every layer, then 1/30 s passes."""
        for rid in rids:
            requested = self.respond and rid in self.keyframes
            if requested:
                self.keyframes = [r for r in self.keyframes if r != rid]
            self.send(rid, keyframe=rid in keyframes or requested)
        self.clock.advance(1 / 30)

    def run(self, seconds: float, rids=("l", "m", "h")) -> None:
        """Frames for C{seconds}, the engine's tick every second."""
        frames = int(round(seconds * 30))
        for i in range(frames):
            self.frame(rids=rids)
            if i % 30 == 29:
                self.video.tick()


def output(quality: int = 2) -> tuple[OutStream, list[dict]]:
    """A subscriber's output that records what it is sent."""
    sent: list[dict] = []
    out = OutStream("video", 0xABCDEF, {VP8: 120}, {}, None, ord("9"), lambda data: data,
                    lambda data, addr: sent.append(parse(data)), ("127.0.0.1", 1))
    out.sim = Selector(quality)
    return out, sent


def attached(quality: int = 2) -> tuple[Clock, Publisher, OutStream, list[dict]]:
    """A publisher that sent for a second, and an output just attached to it."""
    clock = Clock()
    pub = Publisher(clock)
    pub.run(1)
    out, sent = output(quality)
    pub.main.attach(out)
    return clock, pub, out, sent


class PacketTests(TestCase):
    """Reading the RID extension and the VP8 payload descriptor."""

    def test_readExtension(self):
        """One-byte and two-byte forms; absent ids and truncated blocks give None."""
        packet = vp8Packet(1, 1, 1, 5, 1, rid="h")
        self.assertEqual(readExtension(packet, RID_ID), b"h")
        self.assertEqual(readExtension(packet, MID_ID), b"1")
        self.assertIsNone(readExtension(packet, 9))
        self.assertIsNone(readExtension(packet, 0))
        two = struct.pack("!BBHII", 0x90, 96, 1, 1, 1) + struct.pack("!HH", 0x1000, 2) \
            + bytes([7, 3]) + b"mid" + b"\0\0\0" + b"\x90"
        self.assertEqual(readExtension(two, 7), b"mid")
        self.assertIsNone(readExtension(packet[:14], RID_ID))
        self.assertIsNone(readExtension(struct.pack("!BBHII", 0x80, 96, 1, 1, 1), RID_ID))

    def test_vp8Fields(self):
        """Picture ID (15 and 7 bits), TL0PICIDX and the keyframe bit."""
        key = vp8Packet(1, 1, 1, 0x1234, 9, keyframe=True)
        start = payload.payloadStart(key)
        picOffset, bits, tl0Offset, keyframe = vp8Fields(key, start)
        self.assertEqual((bits, keyframe, key[tl0Offset]), (15, True, 9))
        self.assertEqual(payload.readPictureId(key, picOffset, bits), 0x1234)
        self.assertFalse(vp8Fields(vp8Packet(1, 1, 1, 5, 9), start)[3])
        self.assertFalse(vp8Fields(vp8Packet(1, 1, 1, 5, 9, keyframe=True, start=False), start)[3])
        seven = bytes([0x90, 0x80, 0x05, 0x00])
        self.assertEqual(vp8Fields(seven, 0), (2, 7, 0, True))
        self.assertEqual(vp8Fields(b"\x90", 0), (0, 0, 0, False))
        self.assertEqual(vp8Fields(b"", 0), (0, 0, 0, False))
        buffer = bytearray(4)
        payload.writePictureId(buffer, 0, 15, 0x7FFF)
        self.assertEqual(payload.readPictureId(buffer, 0, 15), 0x7FFF)


class LayerTests(TestCase):
    """SSRCs learnt from the RID extension; unknown RIDs dropped and counted."""

    def test_learnSsrcs(self):
        clock = Clock()
        pub = Publisher(clock)
        pub.frame()
        self.assertEqual(pub.video.bySsrc, {SSRCS[r]: pub.video.layers[i]
                                            for i, r in enumerate("lmh")})
        # later packets need no RID
        pub.send("m", withRid=False)
        self.assertEqual(pub.video.layers[1].received, 2)
        self.assertEqual(sorted(pub.video.ssrcs()), sorted(SSRCS.values()))

    def test_unknownRid(self):
        """A packet of an unknown SSRC without (or with a foreign) RID is dropped, counted."""
        pub = Publisher(Clock())
        pub.video.packet(vp8Packet(5, 1, 1, 1, 1))
        pub.video.packet(vp8Packet(6, 1, 1, 1, 1, rid="x"))
        self.assertEqual(pub.drops["unknown_rid"], 2)
        self.assertEqual(pub.counters["simulcast_unknown_rid"], 2)
        self.assertEqual(pub.video.bySsrc, {})


class SwitchTests(TestCase):
    """One continuous stream per subscriber across layer switches."""

    def assertContinuous(self, sent: list[dict], maxGap: float = 0.2):
        """
        Sequence numbers +1, timestamps forward (by at most C{maxGap}
        seconds), picture IDs +1, TL0PICIDX +1, one SSRC and payload type.
        """
        for a, b in zip(sent, sent[1:], strict=False):
            self.assertEqual(b["seq"], (a["seq"] + 1) & 0xFFFF, (a, b))
            self.assertTrue(0 < (b["ts"] - a["ts"]) & 0xFFFFFFFF <= maxGap * 90000, (a, b))
            self.assertEqual(b["pic"], (a["pic"] + 1) & 0x7FFF, (a, b))
            self.assertEqual(b["tl0"], (a["tl0"] + 1) & 0xFF, (a, b))
            self.assertEqual(b["ssrc"], 0xABCDEF)
            self.assertEqual(b["pt"], 120)

    def test_startsOnKeyframe(self):
        """A new output gets nothing until a keyframe of its layer, and a PLI asks for one."""
        clock = Clock()
        pub = Publisher(clock)
        pub.run(1)
        pub.respond = False
        out, sent = output()
        pub.main.attach(out)
        self.assertEqual(pub.keyframes, ["h"])
        pub.run(0.5)
        self.assertEqual(sent, [])
        pub.frame(keyframes=("h",))
        pub.run(0.5)
        self.assertTrue(sent[0]["keyframe"])
        self.assertEqual({p["size"] for p in sent}, {len(vp8Packet(1, 1, 1, 1, 1, rid="h", size=900))})
        self.assertContinuous(sent)
        self.assertEqual(sent[0]["seq"], out.startSeq)
        self.assertEqual(sent[0]["ts"], out.startTs)

    def test_downAndUp(self):
        """
        A falling estimate sends the output down at the next keyframe of the
        lower layer; it goes up again only after the estimate fits for
        UP_DELAY; the stream stays continuous throughout.
        """
        clock, pub, out, sent = attached()
        pub.frame()
        pub.run(3)
        self.assertEqual(out.sim.layer.rid, "h")
        pub.respond = False
        rates = [layer.rate for layer in pub.video.layers]
        self.assertTrue(rates[0] < rates[1] < rates[2], rates)
        # the estimate falls below the high layer's rate: down to m
        pub.video.estimate(out, rates[2] * 2)
        self.assertIsNone(out.sim.target)
        pub.video.estimate(out, rates[1] * 1.2)
        self.assertEqual(out.sim.target, 1)
        pub.run(0.5)
        self.assertEqual(out.sim.layer.rid, "h")  # still: no keyframe of m yet
        before = len(sent)
        pub.frame(keyframes=("m",))
        self.assertEqual(out.sim.layer.rid, "m")
        self.assertTrue(sent[before]["keyframe"])
        self.assertEqual(pub.counters["simulcast_switches_down"], 1)
        # the estimate rises: up only after UP_DELAY
        pub.video.estimate(out, rates[2] * 2)
        pub.run(selector.UP_DELAY - 1.5)
        self.assertIsNone(out.sim.target)
        pub.run(3)  # the ticks are a second apart
        self.assertEqual(out.sim.target, 2)
        pub.frame(keyframes=("h",))
        pub.run(0.2)
        self.assertEqual(out.sim.layer.rid, "h")
        self.assertEqual(pub.counters["simulcast_switches_up"], 1)
        self.assertContinuous(sent)

    def test_quality(self):
        """An output that asked for "low" never gets more than the low layer."""
        clock, pub, out, sent = attached(quality=0)
        pub.video.estimate(out, 10_000_000)
        pub.frame(keyframes=("l", "m", "h"))
        pub.run(10)
        self.assertEqual(out.sim.layer.rid, "l")
        self.assertEqual({p["size"] for p in sent[1:]}, {sent[1]["size"]})
        self.assertLess(sent[1]["size"], 200)
        self.assertContinuous(sent)

    def test_stoppedLayer(self):
        """A layer the publisher stops sending is left for the best live one."""
        clock, pub, out, sent = attached()
        pub.frame()
        pub.run(2)
        pub.run(2, rids=("l", "m"))  # h stopped (the publisher's uplink is short)
        self.assertEqual(out.sim.target, 1)
        pub.frame(keyframes=("m",), rids=("l", "m"))
        self.assertEqual(out.sim.layer.rid, "m")
        self.assertContinuous(sent, maxGap=2.1)  # the time h was silent

    def test_lossGoesDown(self):
        """A receiver report with much loss sends the output one layer down."""
        clock, pub, out, sent = attached()
        pub.frame()
        pub.run(2)
        pub.video.loss(out, 0.02)
        self.assertIsNone(out.sim.target)
        pub.video.loss(out, 0.2)
        self.assertEqual(out.sim.target, 1)

    def test_nackAfterStepUp(self):
        """A NACK soon after a step up sends the output back down; later ones do not."""
        clock, pub, out, sent = attached(quality=1)
        pub.run(3)
        self.assertEqual(out.sim.layer.rid, "m")
        pub.video.nacked(out)  # not right after a step up: nothing
        self.assertIsNone(out.sim.target)
        out.sim.quality = 2
        out.sim.wentUp(clock.seconds())
        pub.video.nacked(out)
        self.assertEqual(out.sim.target, 0)

    def test_nackBeforeSwitch(self):
        """NACKs for numbers sent from the former layer are not answered from the new one."""
        clock, pub, out, sent = attached()
        pub.frame()
        pub.run(2.5)
        pub.respond = False
        pub.video.estimate(out, 10_000_000)
        pub.video.estimate(out, 1)
        pub.frame(keyframes=("l",))
        pub.run(0.2)
        self.assertEqual(out.sim.layer.rid, "l")
        first = out.sim.floorSeq
        before = len(sent)
        self.assertEqual(pub.main.retransmit(out, [(first - 3) & 0xFFFF, (first - 1) & 0xFFFF]), 0)
        self.assertEqual(pub.main.retransmit(out, [first, (first + 1) & 0xFFFF]), 2)
        self.assertEqual([p["seq"] for p in sent[before:]], [first, (first + 1) & 0xFFFF])

    def test_detach(self):
        """A detached output gets nothing more, pending or not."""
        clock, pub, out, sent = attached()
        pub.frame()
        pub.main.detach(out)
        count = len(sent)
        pub.frame(keyframes=("l", "m", "h"))
        self.assertEqual(len(sent), count)
        self.assertEqual([layer.outputs + layer.pending for layer in pub.video.layers], [[], [], []])

    def test_releaseKeepsNumbering(self):
        """Layers replaced (the publisher renegotiated): the output goes on where it stopped."""
        clock, pub, out, sent = attached()
        pub.frame()
        pub.run(1)
        second = Publisher(clock)
        second.video.main = pub.main
        second.run(1)
        pub.main.useLayers(second.video)
        second.run(1.5)
        self.assertEqual(out.sim.layer, second.video.layers[2])
        self.assertContinuous(sent)


class SelectorTests(TestCase):
    """L{Selector.choose}: down at once, up slowly, probing with back-off."""

    def test_upSlowly(self):
        sel = Selector(2)
        rates = [100_000, 400_000, 1_200_000]
        live = [True, True, True]
        sel.since = -10
        self.assertEqual(sel.choose(0, rates, live), 2)  # no estimate yet
        sel.layer = type("L", (), {"index": 2})()
        sel.setEstimate(1_500_000)
        sel.setEstimate(500_000)
        self.assertEqual(sel.choose(0.1, rates, live), 1)  # falling: down at once
        sel.layer.index = 1
        sel.wentDown(0.1)
        sel.setEstimate(2_000_000)
        self.assertEqual(sel.choose(1, rates, live), 1)
        self.assertEqual(sel.choose(1 + selector.UP_DELAY - 0.1, rates, live), 1)
        self.assertEqual(sel.choose(1 + selector.UP_DELAY, rates, live), 2)

    def test_probeBackOff(self):
        """An estimate held down by what is sent tries one layer up; a failed try waits twice as long."""
        sel = Selector(2)
        sel.since = -10
        rates = [100_000, 400_000, 1_200_000]
        live = [True] * 3
        sel.layer = type("L", (), {"index": 0})()
        sel.setEstimate(150_000)  # 1.5x what it gets: held down, but m does not fit
        self.assertEqual(sel.choose(0, rates, live), 0)
        self.assertEqual(sel.choose(selector.PROBE_DELAY, rates, live), 1)
        sel.wentUp(selector.PROBE_DELAY)
        sel.wentDown(selector.PROBE_DELAY + 2)
        self.assertEqual(sel.probeDelay, 2 * selector.PROBE_DELAY)
        sel.layer.index = 0
        t = selector.PROBE_DELAY + 3
        self.assertEqual(sel.choose(t, rates, live), 0)
        self.assertEqual(sel.choose(t + selector.PROBE_DELAY, rates, live), 0)
        self.assertEqual(sel.choose(t + 2 * selector.PROBE_DELAY, rates, live), 1)
        # this time it holds (the estimate rises): the next step up comes
        # once it held for PROBE_FAILED, and the back-off is forgotten
        up = t + 2 * selector.PROBE_DELAY
        sel.wentUp(up)
        sel.layer.index = 1
        sel.setEstimate(160_000)
        self.assertEqual(sel.choose(up + selector.PROBE_FAILED - 0.1, rates, live), 1)
        self.assertEqual(sel.choose(up + selector.PROBE_FAILED, rates, live), 2)
        self.assertEqual(sel.probeDelay, selector.PROBE_DELAY)

    def test_grace(self):
        """A new subscriber's first estimates do not pull it down, even falling ones."""
        sel = Selector(2)
        rates = [100_000, 400_000, 1_200_000]
        sel.setEstimate(1_000_000)
        sel.setEstimate(200_000)
        self.assertEqual(sel.choose(0, rates, [True] * 3), 2)
        sel.layer = type("L", (), {"index": 2})()
        self.assertEqual(sel.choose(selector.ESTIMATE_GRACE - 0.1, rates, [True] * 3), 2)
        self.assertEqual(sel.choose(selector.ESTIMATE_GRACE, rates, [True] * 3), 0)

    def test_risingEstimateKeepsLayer(self):
        """
        An estimate below the layer's rate but rising (a receiver's
        estimate climbs from a low start) is no reason to go down; once it
        falls, it is.
        """
        sel = Selector(2)
        rates = [100_000, 400_000, 1_200_000]
        sel.layer = type("L", (), {"index": 2})()
        sel.since = -10
        for estimate in (100_000, 300_000, 600_000, 900_000):
            sel.setEstimate(estimate)
            self.assertEqual(sel.choose(1, rates, [True] * 3), 2)
        sel.setEstimate(700_000)
        self.assertEqual(sel.choose(2, rates, [True] * 3), 1)

    def test_nothingLive(self):
        sel = Selector(1)
        self.assertIsNone(sel.choose(0, [0, 0, 0], [False] * 3))
        self.assertEqual(sel.choose(0, [0, 0, 0], [False, False, True]), 2)


class H264Tests(TestCase):
    """H.264 layers switch at IDR pictures and are forwarded as they are."""

    def test_h264Keyframe(self):
        self.assertTrue(payload.h264Keyframe(bytes([0x65, 1]), 0))          # IDR slice
        self.assertTrue(payload.h264Keyframe(bytes([0x67, 1]), 0))          # SPS
        self.assertTrue(payload.h264Keyframe(bytes([0x78, 0, 5, 0x67]), 0))  # STAP-A, SPS first
        self.assertTrue(payload.h264Keyframe(bytes([0x7C, 0x85]), 0))       # FU-A start of IDR
        self.assertFalse(payload.h264Keyframe(bytes([0x7C, 0x05]), 0))      # FU-A, not the start
        self.assertFalse(payload.h264Keyframe(bytes([0x41, 1]), 0))         # non-IDR slice
        self.assertFalse(payload.h264Keyframe(bytes([0x78, 0]), 0))
        self.assertFalse(payload.h264Keyframe(b"", 0))

    def test_switchAtIdr(self):
        """A VP8-looking payload of an H.264 layer is not rewritten; the switch waits for an IDR."""
        clock = Clock()
        h264 = ("video/h264", 90000, "1", "42e01f")
        main = InStream("pub", "video", clock.seconds)
        requested = []

        def makeLayer(owner, index, rid):
            layer = LayerStream(owner, index, rid, "pub", "video", clock.seconds)
            layer.configure({102: h264}, {102: 90000}, MID_ID, 0)
            return layer

        video = SimulcastVideo(main, ["l", "h"], RID_ID, RRID_ID, makeLayer, clock.seconds,
                               requested.append, lambda reason: None)
        main.useLayers(video)

        def packet(rid, seq, nal):
            header = struct.pack("!BBHII", 0x90, 102, seq, seq * 3000, SSRCS[rid])
            return header + extensions((MID_ID, b"1"), (RID_ID, rid.encode())) + bytes([nal]) + b"\x90" * 20

        for seq in range(1, 31):
            video.packet(packet("l", seq, 0x41))
            video.packet(packet("h", seq, 0x41))
            clock.advance(1 / 30)
        sent = []
        out = OutStream("video", 7, {h264: 126}, {}, None, ord("9"), lambda d: d,
                        lambda d, addr: sent.append(d), None)
        out.sim = Selector(1)
        main.attach(out)
        video.packet(packet("h", 31, 0x41))
        self.assertEqual(sent, [])
        video.packet(packet("h", 32, 0x65))
        video.packet(packet("h", 33, 0x41))
        self.assertEqual(len(sent), 2)
        self.assertEqual([d[-21:] for d in sent], [bytes([0x65]) + b"\x90" * 20,
                                                   bytes([0x41]) + b"\x90" * 20])


class ProbeTests(TestCase):
    """A step up that the estimate does not cover yet is kept unless the estimate decreases."""

    rates = [150_000, 450_000, 1_200_000]

    def steppedUp(self) -> Selector:
        """A selector just gone up to the middle layer on an estimate of 230 kbit/s."""
        sel = Selector(2)
        sel.since = -10
        sel.layer = type("L", (), {"index": 1})()
        sel.setEstimate(230_000)
        sel.wentUp(0)
        return sel

    def test_keptWhileRising(self):
        sel = self.steppedUp()
        rates = self.rates
        for t, estimate in ((0.5, 240_000), (1.5, 260_000), (2.5, 280_000)):
            sel.setEstimate(estimate)
            self.assertEqual(sel.choose(t, rates, [True] * 3), 1)

    def test_leftOnDecrease(self):
        sel = self.steppedUp()
        rates = self.rates
        sel.setEstimate(240_000)
        self.assertEqual(sel.choose(0.5, rates, [True] * 3), 1)
        sel.setEstimate(225_000)  # the receiver saw the delay grow
        self.assertEqual(sel.choose(0.8, rates, [True] * 3), 0)


class PaddingTests(TestCase):
    """L{ahoyconference.media.probe}: the padding packets and their budget."""

    def test_paddingPacket(self):
        """All payload is padding (P bit, the count in the last octet); the RTX numbering as given."""
        packet = probe.paddingPacket(97, 0x1FFFF, 0x1_0000_0005, 0xFEED)
        b0, b1, seq, ts, ssrc = struct.unpack_from("!BBHII", packet)
        self.assertEqual((b0 & 0xC0, b0 & 0x20, b0 & 0x10), (0x80, 0x20, 0))
        self.assertEqual((b1, seq, ts, ssrc), (97, 0xFFFF, 5, 0xFEED))
        self.assertEqual(len(packet) - 12, probe.PAD_OCTETS)
        self.assertEqual(packet[-1], probe.PAD_OCTETS)

    def test_absSendTime(self):
        """With an abs-send-time value, the packet carries it (the receiver's estimator reads it)."""
        packet = probe.paddingPacket(97, 1, 2, 3, absId=3, absSendTime=b"\x12\x34\x56")
        self.assertEqual(packet[0] & 0x30, 0x30)
        self.assertEqual(readExtension(packet, 3), b"\x12\x34\x56")
        self.assertEqual(payload.payloadStart(packet), len(packet) - probe.PAD_OCTETS)
        self.assertEqual(len(packet), probe.PACKET_OCTETS)
        # no id, or no value: no extension
        self.assertEqual(probe.paddingPacket(97, 1, 2, 3, absId=3)[0] & 0x10, 0)
        self.assertEqual(probe.paddingPacket(97, 1, 2, 3, absSendTime=b"abc")[0] & 0x10, 0)

    def test_budget(self):
        """Paid out at the rate as packets go by; a pause saves up at most BURST seconds' worth."""
        budget = probe.PaddingBudget()
        self.assertEqual(budget.take(0, 400_000), 0)
        count = sum(budget.take(i / 50, 400_000) for i in range(1, 101))  # 2 s
        self.assertLessEqual(abs(count * probe.PACKET_OCTETS * 8 / 2 - 400_000),
                             probe.PACKET_OCTETS * 8)
        after = budget.take(12, 400_000)  # 10 s without a packet
        self.assertLessEqual(after * probe.PACKET_OCTETS, 400_000 / 8 * probe.BURST)
        self.assertLessEqual(budget.take(100, 100_000_000), probe.PER_PACKET_MAX)
        self.assertEqual(budget.take(101, 0), 0)


class PaddedTryTests(TestCase):
    """
    A subscriber that takes RTX is tried with padding before it goes up
    (L{Selector.choose} with C{canPad}); the layer changes only when the
    try held.
    """

    rates = [150_000, 450_000, 1_200_000]

    def held(self, estimate=230_000) -> Selector:
        """A selector on the low layer whose estimate is held down by what it gets."""
        sel = Selector(2)
        sel.since = -10
        sel.layer = type("L", (), {"index": 0})()
        sel.setEstimate(estimate)
        return sel

    def test_holds(self):
        """
        The padding ramps up to what the next layer needs beyond this one;
        when that held for PROBE_HOLD, on to the layer above from there;
        when that held too, up to it (one switch).
        """
        sel = self.held()
        live = [True] * 3
        self.assertEqual(sel.choose(0, self.rates, live, canPad=True), 0)
        self.assertIsNone(sel.probing)
        self.assertEqual(sel.choose(selector.PROBE_DELAY, self.rates, live, canPad=True), 0)
        self.assertEqual(sel.probing, 1)
        start = selector.PROBE_DELAY
        extra = self.rates[1] * selector.HEADROOM - self.rates[0]
        self.assertEqual(sel.paddingRate(start), 0)
        self.assertAlmostEqual(sel.paddingRate(start + selector.PROBE_RAMP / 2), extra / 2)
        self.assertAlmostEqual(sel.paddingRate(start + selector.PROBE_RAMP + 0.1), extra)
        sel.setEstimate(250_000)  # rising: the link carries it
        self.assertEqual(sel.choose(start + selector.PROBE_HOLD - 0.1, self.rates, live,
                                    canPad=True), 0)
        second = start + selector.PROBE_HOLD
        self.assertEqual(sel.choose(second, self.rates, live, canPad=True), 0)
        self.assertEqual((sel.probing, sel.probeHeld), (2, 1))
        top = self.rates[2] * selector.HEADROOM - self.rates[0]
        self.assertAlmostEqual(sel.paddingRate(second), extra)
        self.assertAlmostEqual(sel.paddingRate(second + selector.PROBE_RAMP), top)
        self.assertEqual(sel.choose(second + selector.PROBE_HOLD, self.rates, live,
                                    canPad=True), 2)
        self.assertIsNone(sel.probing)
        self.assertEqual(sel.paddingRate(second + selector.PROBE_HOLD), 0)
        self.assertEqual(sel.probes, Counter(held=1))

    def test_holdsPartly(self):
        """The try of the top layer fails after the middle one held: up to the middle one."""
        sel = self.held()
        live = [True] * 3
        sel.choose(0, self.rates, live, canPad=True)
        start = selector.PROBE_DELAY
        sel.choose(start, self.rates, live, canPad=True)
        sel.choose(start + selector.PROBE_HOLD, self.rates, live, canPad=True)
        self.assertEqual(sel.probing, 2)
        sel.setEstimate(200_000)
        self.assertEqual(sel.choose(start + selector.PROBE_HOLD + 1, self.rates, live,
                                    canPad=True), 1)
        self.assertIsNone(sel.probing)
        self.assertIsNone(sel.probeHeld)
        # up (at the keyframe): no try of the top layer right after (as
        # without padding), the estimate's wait comes first
        up = start + selector.PROBE_HOLD + 1.2
        sel.layer.index = 1
        sel.wentUp(up)
        sel.setEstimate(1_000_000)
        self.assertEqual(sel.choose(up + selector.PROBE_FAILED + 0.5, self.rates, live,
                                    canPad=True), 1)
        self.assertIsNone(sel.probing)

    def test_fails(self):
        """
        A decrease of the estimate ends the try: the layer stays (the
        padding did it, not the picture), the next try waits twice as long.
        """
        sel = self.held()
        live = [True] * 3
        sel.choose(0, self.rates, live, canPad=True)
        start = selector.PROBE_DELAY
        sel.choose(start, self.rates, live, canPad=True)
        self.assertEqual(sel.probing, 1)
        sel.setEstimate(200_000)  # the queue grew
        self.assertEqual(sel.choose(start + 0.8, self.rates, live, canPad=True), 0)
        self.assertIsNone(sel.probing)
        self.assertEqual(sel.probes, Counter(failed=1))
        wait = min(2 * selector.PROBE_DELAY, selector.PADDED_PROBE_MAX)
        self.assertGreater(wait, selector.PROBE_DELAY)
        self.assertEqual(sel.probeDelay, wait)
        self.assertEqual(sel.switches, Counter())
        # the estimate is still held down: the next try comes after the longer wait
        t = start + 0.8
        self.assertEqual(sel.choose(t + 1, self.rates, live, canPad=True), 0)
        sel.choose(t + wait - 0.1, self.rates, live, canPad=True)
        self.assertIsNone(sel.probing)
        sel.choose(t + wait, self.rates, live, canPad=True)
        self.assertEqual(sel.probing, 1)
        # failing again: the wait stops growing at PADDED_PROBE_MAX
        sel.probeFailed(t + wait + 1)
        self.assertEqual(sel.probeDelay, selector.PADDED_PROBE_MAX)

    def test_queueEndsTry(self):
        """
        The round trip grows beyond the link's own by PROBE_QUEUE: the try
        ends (the estimate need not fall: it was below what the link carries).
        """
        sel = self.held()
        live = [True] * 3
        for t in (0, 1, 2, 3):
            sel.setRoundTrip(t, 0.040 + t / 1000)
        sel.choose(0, self.rates, live, canPad=True)
        start = selector.PROBE_DELAY
        sel.choose(start, self.rates, live, canPad=True)
        self.assertEqual(sel.probing, 1)
        sel.setRoundTrip(start + 0.3, 0.040 + selector.PROBE_QUEUE - 0.01)
        self.assertEqual(sel.choose(start + 0.3, self.rates, live, canPad=True), 0)
        self.assertEqual(sel.probing, 1)
        sel.setRoundTrip(start + 0.5, 0.040 + selector.PROBE_QUEUE + 0.01)
        self.assertAlmostEqual(sel.queueing, selector.PROBE_QUEUE + 0.01)
        self.assertEqual(sel.choose(start + 0.5, self.rates, live, canPad=True), 0)
        self.assertIsNone(sel.probing)
        self.assertEqual(sel.probes, Counter(failed=1))

    def test_queueAfterStepUp(self):
        """A queue of STEP_QUEUE within PROBE_FAILED of a step up: back down, whatever the estimate."""
        sel = self.held(estimate=600_000)
        sel.layer.index = 1
        sel.setRoundTrip(0, 0.030)
        sel.wentUp(1)
        sel.setRoundTrip(1.5, 0.030 + selector.STEP_QUEUE + 0.01)
        self.assertEqual(sel.choose(1.5, self.rates, [True] * 3, canPad=True), 0)
        # later, a queue is the estimate's business
        sel.wentUp(2)
        self.assertEqual(sel.choose(2 + selector.PROBE_FAILED + 0.1, self.rates, [True] * 3,
                                    canPad=True), 1)

    def test_queueDown(self):
        """
        A queue of DOWN_QUEUE sends a subscriber down a layer at once (the
        estimate has not fallen yet); not again until DOWN_QUEUE_HOLD.
        """
        sel = Selector(2)
        sel.since = -100
        sel.layer = type("L", (), {"index": 2})()
        sel.setEstimate(5_000_000)
        live = [True] * 3
        sel.setRoundTrip(0, 0.030)
        sel.setRoundTrip(1, 0.030 + selector.DOWN_QUEUE - 0.01)
        self.assertEqual(sel.choose(1, self.rates, live, canPad=True), 2)
        sel.setRoundTrip(1.2, 0.030 + selector.DOWN_QUEUE + 0.01)
        self.assertEqual(sel.choose(1.2, self.rates, live, canPad=True), 1)
        sel.layer.index = 1
        sel.wentDown(1.5)
        self.assertEqual(sel.choose(1.5 + selector.DOWN_QUEUE_HOLD - 0.1, self.rates, live,
                                    canPad=True), 1)
        self.assertEqual(sel.choose(1.5 + selector.DOWN_QUEUE_HOLD, self.rates, live,
                                    canPad=True), 0)

    def test_startsLow(self):
        """
        Its link unknown, a subscriber that takes padding starts on the
        lowest layer and is tried up at once (no estimate needed); the
        try that held takes it to the top.
        """
        sel = Selector(2)
        live = [True] * 3
        self.assertEqual(sel.choose(0, self.rates, live, canPad=True), 0)
        sel.layer = type("L", (), {"index": 0})()
        self.assertEqual(sel.choose(0.1, self.rates, live, canPad=True), 0)
        self.assertEqual(sel.probing, 1)
        self.assertEqual(sel.choose(0.1 + selector.PROBE_HOLD, self.rates, live, canPad=True), 0)
        self.assertEqual(sel.probing, 2)
        self.assertEqual(sel.choose(0.2 + 2 * selector.PROBE_HOLD, self.rates, live,
                                    canPad=True), 2)
        self.assertEqual(sel.probes, Counter(held=1))

    def test_startsLowUntilMeasured(self):
        """No layer's bitrate measured yet: it waits on the lowest (a try needs a rate)."""
        sel = Selector(2)
        live = [True] * 3
        self.assertEqual(sel.choose(0, [0, 0, 0], live, canPad=True), 0)
        sel.layer = type("L", (), {"index": 0})()
        self.assertEqual(sel.choose(0.5, [0, 0, 0], live, canPad=True), 0)
        self.assertIsNone(sel.probing)
        sel.choose(1, self.rates, live, canPad=True)
        self.assertEqual(sel.probing, 1)

    def test_queueAtStart(self):
        """
        Without padding a subscriber starts on the top layer; in its first
        START_WATCH seconds a queue sends it to the lowest.
        """
        sel = Selector(2)
        live = [True] * 3
        self.assertEqual(sel.choose(0, self.rates, live), 2)
        sel.layer = type("L", (), {"index": 2})()
        sel.setRoundTrip(0.5, 0.010)
        sel.setRoundTrip(1.5, 0.010 + selector.DOWN_QUEUE + 0.05)
        self.assertTrue(sel.starting(1.5))
        self.assertEqual(sel.choose(1.5, self.rates, live), 0)
        self.assertFalse(sel.starting(selector.START_WATCH + 0.1))

    def test_roundTripWindow(self):
        """The link's own round trip is the smallest of the last RTT_WINDOW seconds."""
        sel = Selector(2)
        self.assertEqual(sel.queueing, 0)
        sel.setRoundTrip(0, 0.020)
        sel.setRoundTrip(1, 0.050)
        self.assertAlmostEqual(sel.queueing, 0.030)
        sel.setRoundTrip(selector.RTT_WINDOW + 0.5, 0.060)
        self.assertAlmostEqual(sel.queueing, 0.010)  # 0.020 is too old now
        sel.setRoundTrip(selector.RTT_WINDOW + 1, -1)  # nonsense: ignored
        sel.setRoundTrip(selector.RTT_WINDOW + 1, 99)
        self.assertAlmostEqual(sel.rtt, 0.060)

    def test_lossWindow(self):
        """Loss is a fraction over LOSS_WINDOW, not over the few packets between two reports."""
        sel = Selector(2)
        self.assertEqual(sel.received(0, 0, 1000), (None, False))
        self.assertEqual(sel.received(0.05, 1, 1002), (None, False))  # one lost: no 50 %
        self.assertEqual(sel.received(0.5, 1, 1020), (None, False))
        fraction, _ = sel.received(1.0, 2, 1100)
        self.assertAlmostEqual(fraction, 0.02)
        fraction, _ = sel.received(2.0, 40, 1200)
        self.assertAlmostEqual(fraction, 0.38)

    def test_lossEndsTry(self):
        """
        While a padding try goes on, PROBE_LOSS of the packets since it
        began ends it; a packet lost now and then (Wi-Fi) does not.
        """
        sel = self.held()
        live = [True] * 3
        sel.received(0, 5, 1000)
        sel.choose(0, self.rates, live, canPad=True)
        start = selector.PROBE_DELAY
        sel.choose(start, self.rates, live, canPad=True)
        self.assertEqual(sel.probing, 1)
        self.assertEqual(sel.received(start + 0.2, 6, 1030)[1], False)  # 1 of 30
        self.assertEqual(sel.received(start + 0.4, 6, 1060)[1], False)
        self.assertEqual(sel.received(start + 0.6, 11, 1080)[1], True)  # 6 of 80

    def test_lowEstimate(self):
        """
        With padding, a try comes even when the estimate is below what the
        layer needs (after a congestion it climbs back slowly); without,
        only when it is held down by what is sent.
        """
        for canPad, tries in ((True, 1), (False, None)):
            sel = self.held(estimate=100_000)  # below the low layer's 150 kbit/s
            sel.choose(0, self.rates, [True] * 3, canPad=canPad)
            sel.choose(selector.PROBE_DELAY, self.rates, [True] * 3, canPad=canPad)
            self.assertEqual(sel.probing, tries)

    def test_tryNow(self):
        """A higher quality asked for is tried as soon as a layer above is live, without waiting."""
        sel = self.held()
        sel.tryNow = True
        self.assertEqual(sel.choose(0, self.rates, [True, False, False], canPad=True), 0)
        self.assertTrue(sel.tryNow)  # nothing above yet
        self.assertEqual(sel.choose(0.5, self.rates, [True] * 3, canPad=True), 0)
        self.assertEqual(sel.probing, 1)
        self.assertFalse(sel.tryNow)
        # with room in the estimate: up at once
        sel = self.held(estimate=5_000_000)
        sel.tryNow = True
        self.assertEqual(sel.choose(0, self.rates, [True] * 3, canPad=True), 2)

    def test_withoutRtx(self):
        """A subscriber without RTX is tried with the layer itself, as before."""
        sel = self.held()
        sel.choose(0, self.rates, [True] * 3)
        self.assertEqual(sel.choose(selector.PROBE_DELAY, self.rates, [True] * 3), 1)
        self.assertIsNone(sel.probing)


class PaddedLayerTests(TestCase):
    """Padding through the layers: sent on the subscriber's RTX stream, stopped by a NACK."""

    def setUp(self):
        self.clock = Clock()
        self.pub = Publisher(self.clock)
        self.pub.run(1)
        self.sent: list[bytes] = []
        self.out = OutStream("video", 0xABCDEF, {VP8: 120}, {120: 121}, 0xFACE, ord("9"),
                             lambda data: data,
                             lambda data, addr: self.sent.append(data), ("127.0.0.1", 1))
        self.out.sim = Selector(2)
        self.pub.main.attach(self.out)
        self.pub.run(1)
        # it starts on the low layer, tried up at once: the tries hold
        self.assertEqual(self.out.rtxPt, 121)
        self.assertEqual(self.out.sim.layer.rid, "l")
        self.assertEqual(self.out.sim.probing, 1)
        self.pub.run(2 * selector.PROBE_HOLD + 4)  # the ticks are a second apart
        self.assertEqual(self.out.sim.layer.rid, "h")
        self.assertEqual(self.pub.counters["simulcast_probes_held"], 1)
        self.pub.run(selector.PROBE_FAILED + 1)  # the step up held
        self.pub.counters.clear()
        rates = [layer.rate for layer in self.pub.video.layers]
        self.pub.video.estimate(self.out, rates[2] * 2)
        self.pub.video.estimate(self.out, rates[0] * 1.2)  # falls: down to l
        self.pub.run(1)
        self.assertEqual(self.out.sim.layer.rid, "l")
        self.pub.video.estimate(self.out, rates[0] * 1.5)  # held down by what it gets
        self.sent.clear()

    def padding(self) -> list[bytes]:
        return [p for p in self.sent if struct.unpack_from("!I", p, 8)[0] == 0xFACE]

    def test_tryAndGoUp(self):
        """
        Padding on the RTX SSRC, up to what the middle layer and then the
        top one need; both held: the top layer itself.
        """
        self.pub.run(selector.PROBE_DELAY + 1.5)  # the ticks are a second apart
        self.assertEqual(self.out.sim.probing, 1)
        self.assertEqual(self.out.sim.layer.rid, "l")
        self.pub.run(selector.PROBE_HOLD)
        self.assertEqual(self.out.sim.probing, 2)
        self.assertEqual(self.out.sim.layer.rid, "l")
        self.pub.run(selector.PROBE_HOLD + 1.5)
        padding = self.padding()
        self.assertTrue(padding)
        self.assertTrue(all(p[0] & 0x20 and p[1] & 0x7F == 121 for p in padding))
        seqs = [struct.unpack_from("!H", p, 2)[0] for p in padding]
        self.assertEqual(seqs, [(seqs[0] + i) & 0xFFFF for i in range(len(seqs))])
        self.assertEqual(self.out.sim.layer.rid, "h")
        self.assertEqual(self.pub.counters["simulcast_probes_held"], 1)
        self.assertEqual(self.pub.counters["simulcast_switches_up"], 1)
        self.assertEqual(self.pub.counters["simulcast_padding_packets"], len(padding))
        rates = [layer.rate for layer in self.pub.video.layers]
        # no more than the top layer's extra rate over the two tries
        self.assertLessEqual(len(padding) * probe.PACKET_OCTETS * 8,
                             (rates[2] * selector.HEADROOM - rates[0])
                             * 2 * (selector.PROBE_HOLD + 1))
        self.assertEqual(self.pub.video.layers[0].padded, [])

    def test_lossEndsTry(self):
        """
        Receiver reports that lose PROBE_LOSS of the packets while trying:
        the padding stops at once, the layer stays.  A NACK alone does not
        (a packet lost now and then).
        """
        self.pub.run(selector.PROBE_DELAY + 1.5)  # the ticks are a second apart
        self.assertEqual(self.out.sim.probing, 1)
        self.pub.video.nacked(self.out)
        self.pub.video.received(self.out, 0, 5000)
        self.assertEqual(self.out.sim.probing, 1)
        self.pub.video.received(self.out, 10, 5040)
        self.assertIsNone(self.out.sim.probing)
        self.assertEqual(self.pub.counters["simulcast_probes_failed"], 1)
        before = len(self.padding())
        self.pub.run(1)
        self.assertEqual(len(self.padding()), before)
        self.assertEqual(self.out.sim.layer.rid, "l")
        self.assertEqual(self.pub.counters["simulcast_switches_up"], 0)

    def test_detachStopsPadding(self):
        self.pub.run(selector.PROBE_DELAY + 1.5)  # the ticks are a second apart
        self.pub.main.detach(self.out)
        self.assertEqual([layer.padded for layer in self.pub.video.layers], [[], [], []])


class WantedTests(TestCase):
    """What the publisher is asked for: the layers someone asked for (L{SimulcastVideo.budget})."""

    def test_budget(self):
        clock = Clock()
        pub = Publisher(clock)
        self.assertEqual(pub.video.wantedQuality(), -1)
        self.assertIsNone(pub.video.budget(0))  # not measured yet
        low, _ = output(quality=0)
        pub.main.attach(low)
        pub.run(2)
        self.assertEqual(pub.video.wantedQuality(), 0)
        rates = [layer.rate for layer in pub.video.layers]
        self.assertEqual(pub.video.budget(0), max(simulcast.WANTED_FLOOR,
                                                  int(simulcast.WANTED_HEADROOM * rates[0])))
        self.assertEqual(pub.video.budget(1),
                         max(simulcast.WANTED_FLOOR,
                             int(simulcast.WANTED_HEADROOM * (rates[0] + rates[1]))))
        high, _ = output(quality=2)
        pub.main.attach(high)
        self.assertEqual(pub.video.wantedQuality(), 2)
        pub.main.detach(high)
        pub.video.setQuality(low, 1)
        self.assertEqual(pub.video.wantedQuality(), 1)
        self.assertEqual(low.sim.index, 1)  # no estimate: straight up (at the keyframe)
