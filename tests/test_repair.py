# -*- test-case-name: tests.test_repair -*-
"""
Loss repair towards publishers without sockets: gap detection, NACK
scheduling on a L{task.Clock} (L{ahoyconference.media.repair}), and the RTX
packets (RFC 4588) an L{InStream} turns back into the missing packets.
"""

from __future__ import annotations

import struct
from collections import Counter

from aiortc.rtp import RTCP_RTPFB_NACK, RtcpPacket, RtcpRtpfbPacket
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from ahoyconference.media import repair as _repair
from ahoyconference.media.forward import InStream
from ahoyconference.media.outstream import OutStream
from ahoyconference.media.repair import LossRepair, packNack
from tests.test_media_engine import fields, rtp


def nacked(data: bytes) -> list[int]:
    """The sequence numbers of one RTCP generic NACK, as aiortc reads them."""
    (packet,) = RtcpPacket.parse(data)
    assert isinstance(packet, RtcpRtpfbPacket) and packet.fmt == RTCP_RTPFB_NACK
    return [s & 0xFFFF for s in packet.lost]


class PackNackTests(TestCase):
    """L{packNack}: RFC 4585 PID/BLP pairs, across a wrap-around."""

    def test_runs(self):
        """Nearby losses share a pair; far ones start a new one."""
        data = packNack(1, 2, [10, 11, 26, 27, 100])
        self.assertEqual(nacked(data), [10, 11, 26, 27, 100])
        self.assertEqual(len(data), 12 + 3 * 4)
        (packet,) = RtcpPacket.parse(data)
        self.assertEqual((packet.ssrc, packet.media_ssrc), (1, 2))

    def test_wrap(self):
        """65534, 65535, 0, 1 fit in one pair."""
        data = packNack(1, 2, [65534, 65535, 0, 1])
        self.assertEqual(nacked(data), [65534, 65535, 0, 1])
        self.assertEqual(len(data), 16)


class LossRepairTests(TestCase):
    """L{LossRepair} on a L{Clock}: what it NACKs, when, and when it gives up."""

    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1000)
        self.sent: list[list[int]] = []
        self.giveUps = 0
        self.up = True
        self.counters = Counter()

        def send(seqs):
            if self.up:
                self.sent.append(list(seqs))
            return self.up

        def giveUp():
            self.giveUps += 1

        self.repair = LossRepair(self.clock, send, giveUp, self.counters)

    def test_firstNackNextTurn(self):
        """
        A gap is NACKed on the clock's next turn (L{FIRST_NACK_DELAY} is 0),
        never from the packet path itself; the gaps seen before go out
        together.
        """
        self.assertEqual(_repair.FIRST_NACK_DELAY, 0)
        self.repair.gap(100, 103)
        self.repair.gap(103, 105)
        self.assertEqual(list(self.repair.missing), [101, 102, 104])
        self.assertEqual(self.sent, [])
        self.clock.advance(0)
        self.assertEqual(self.sent, [[101, 102, 104]])
        self.assertEqual(self.counters["publisher_nacks_sent"], 1)
        self.assertEqual(self.counters["publisher_nacked_packets"], 3)

    def test_reorderedIsNotNacked(self):
        """A packet that arrives late on its own within the delay is never asked for."""
        self.repair.gap(100, 102)
        self.assertTrue(self.repair.arrived(101, False))
        self.clock.advance(1)
        self.assertEqual(self.sent, [])
        self.assertEqual(self.counters["publisher_packets_reordered"], 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_retriesThenGivesUp(self):
        """
        L{MAX_TRIES} NACKs one floor RTT apart; one interval later a keyframe
        is asked for; the packet is given up at L{GIVE_UP}.
        """
        self.repair.gap(7, 9)
        self.clock.pump([_repair.FIRST_NACK_DELAY] + [_repair.RTT_FLOOR] * 3)
        self.assertEqual(self.sent, [[8]] * _repair.MAX_TRIES)
        self.assertEqual(self.giveUps, 1)
        self.assertEqual(self.counters["publisher_packets_given_up"], 0)
        self.clock.pump([_repair.RTT_FLOOR] * 20)
        self.assertEqual(self.sent, [[8]] * _repair.MAX_TRIES)
        self.assertEqual(self.giveUps, 1)
        self.assertEqual(self.counters["publisher_packets_given_up"], 1)
        self.assertEqual(self.repair.missing, {})
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_lateAnswerAfterTries(self):
        """A retransmission after the last try, before L{GIVE_UP}, still counts as recovered."""
        self.repair.gap(7, 9)
        self.clock.pump([_repair.FIRST_NACK_DELAY] + [_repair.RTT_FLOOR] * 5)
        self.assertEqual(self.giveUps, 1)
        self.assertTrue(self.repair.arrived(8, True))
        self.assertEqual(self.counters["publisher_packets_recovered"], 1)
        self.assertEqual(self.counters["publisher_packets_given_up"], 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_recoveredMeasuresRtt(self):
        """A retransmission after one NACK counts as recovered and measures the RTT."""
        self.repair.gap(7, 9)
        self.clock.advance(_repair.FIRST_NACK_DELAY)
        self.clock.advance(0.04)
        self.assertTrue(self.repair.arrived(8, True))
        self.assertAlmostEqual(self.repair.rtt, 0.04)
        self.assertAlmostEqual(self.repair.interval, _repair.RTT_FLOOR)
        self.assertEqual(self.counters["publisher_packets_recovered"], 1)
        self.assertFalse(self.repair.arrived(8, True))  # a duplicate: not missing any more
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_slowPathMeasured(self):
        """
        A path slower than the floor: the answer comes after the second NACK,
        and the RTT is measured from the first (the retries then slow down).
        """
        self.repair.gap(7, 9)
        self.clock.advance(_repair.FIRST_NACK_DELAY)
        self.clock.advance(_repair.RTT_FLOOR)
        self.assertEqual(len(self.sent), 2)
        self.clock.advance(0.03)
        self.assertTrue(self.repair.arrived(8, True))
        self.assertAlmostEqual(self.repair.rtt, _repair.RTT_FLOOR + 0.03)
        self.assertAlmostEqual(self.repair.interval, (_repair.RTT_FLOOR + 0.03) * _repair.RTT_MARGIN)

    def test_retryPacedByRtt(self):
        """With a measured RTT of 200 ms, the second NACK waits 250 ms (L{RTT_MARGIN})."""
        self.repair.rtt = 0.2
        self.repair.gap(7, 9)
        self.clock.advance(_repair.FIRST_NACK_DELAY)
        self.clock.advance(0.24)
        self.assertEqual(len(self.sent), 1)
        self.clock.advance(0.02)
        self.assertEqual(len(self.sent), 2)

    def test_giveUpAfterDeadline(self):
        """Without a way to send, a missing packet is still given up after L{GIVE_UP}."""
        self.up = False
        self.repair.gap(7, 9)
        self.clock.pump([0.05] * 19)
        self.assertEqual(list(self.repair.missing), [8])
        self.clock.pump([0.05] * 2)
        self.assertEqual(self.repair.missing, {})
        self.assertEqual(self.counters["publisher_packets_given_up"], 1)
        self.assertEqual(self.counters["publisher_nacks_sent"], 0)

    def test_wrapAround(self):
        """A gap across 65535 → 0."""
        self.repair.gap(65533, 2)
        self.assertEqual(list(self.repair.missing), [65534, 65535, 0, 1])
        self.clock.advance(_repair.FIRST_NACK_DELAY)
        self.assertEqual(nacked(packNack(0, 0, self.sent[0])), [65534, 65535, 0, 1])

    def test_hugeJumpIsNotLoss(self):
        """A jump beyond L{MAX_GAP} asks for a keyframe instead of NACKing."""
        self.repair.gap(10, 12)
        self.repair.gap(12, 12 + _repair.MAX_GAP + 2)
        self.assertEqual(self.repair.missing, {})
        self.assertEqual(self.giveUps, 1)
        self.assertEqual(self.counters["publisher_packets_given_up"], 1)

    def test_boundedMissing(self):
        """At most L{MAX_MISSING} tracked: the oldest are given up first."""
        seq = 0
        for _ in range(_repair.MAX_MISSING // 100 + 2):
            self.repair.gap(seq, seq + 101)
            seq += 101
        self.assertEqual(len(self.repair.missing), _repair.MAX_MISSING)
        self.assertEqual(self.counters["publisher_packets_given_up"],
                         (_repair.MAX_MISSING // 100 + 2) * 100 - _repair.MAX_MISSING)
        self.assertNotIn(1, self.repair.missing)

    def test_reset(self):
        """A new source forgets what was missing and stops the timer."""
        self.repair.gap(1, 5)
        self.repair.reset()
        self.assertEqual(self.repair.missing, {})
        self.assertEqual(self.clock.getDelayedCalls(), [])


def rtx(osn, seq, ts, ssrc=0x5555, pt=98, padding=0, payload=b"\xAA" * 20):
    """An RTX packet (RFC 4588) carrying packet C{osn}, with the same extensions as L{rtp}."""
    original = rtp(osn, ts, payload=payload)
    header = bytearray(original[:len(original) - len(payload)])
    struct.pack_into("!BHII", header, 1, pt, seq, ts, ssrc)
    data = bytes(header) + struct.pack("!H", osn) + payload
    if padding:
        data = bytes([data[0] | 0x20]) + data[1:] + b"\0" * (padding - 1) + bytes([padding])
    return data


class RetransmissionTests(TestCase):
    """An L{InStream} with a L{LossRepair}: gaps seen, RTX turned back into the packet."""

    VP8 = ("video/vp8", 90000, "", "")

    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1000)
        self.nacks: list[list[int]] = []
        self.keyframes = 0

        def keyframe(stream):
            self.keyframes += 1

        self.stream = InStream("pub", "video", self.clock.seconds, onKeyframeNeeded=keyframe)
        self.stream.repair = LossRepair(self.clock, lambda seqs: self.nacks.append(seqs) or True,
                                        lambda: keyframe(self.stream))
        self.stream.configure({97: self.VP8}, {97: 90000}, midId=1, levelId=0)
        self.sent = []
        self.out = OutStream("video", 0x2222, {self.VP8: 100}, {}, None, ord("0"),
                             protect=bytes, sendto=lambda data, addr: self.sent.append(data),
                             addr=("127.0.0.1", 9))
        self.stream.attach(self.out)

    def test_gapNackedAndRepaired(self):
        """A lost packet is NACKed; its RTX goes out as the packet, in the ring too."""
        self.stream.packet(rtp(500, 9000))
        self.stream.packet(rtp(502, 9000, payload=b"\xBB" * 20))
        self.clock.advance(_repair.FIRST_NACK_DELAY)
        self.assertEqual(self.nacks, [[501]])
        self.stream.retransmission(rtx(501, 7, 9000, payload=b"\xCC" * 20), 97)
        self.assertEqual(len(self.sent), 3)
        first, second, repaired = (fields(p) for p in self.sent)
        self.assertEqual(repaired[1], 100)
        self.assertEqual(repaired[4], 0x2222)
        self.assertEqual((repaired[2] - first[2]) & 0xFFFF, 1)
        self.assertEqual((second[2] - repaired[2]) & 0xFFFF, 1)
        self.assertTrue(self.sent[2].endswith(b"\xCC" * 20))
        self.assertIn(b"\x100", self.sent[2])  # the subscriber's mid
        kept = self.stream.ring[501 & 1023]
        self.assertEqual(fields(kept)[1:], (97, 501, 9000, 0x1111))
        self.assertTrue(kept.endswith(b"\xCC" * 20))
        self.assertEqual(self.stream.repair.counters["publisher_packets_recovered"], 1)
        # a subscriber's NACK for it is answered from the ring
        self.assertEqual(self.stream.retransmit(self.out, [fields(self.sent[2])[2]]), 1)
        self.assertTrue(self.sent[3].endswith(b"\xCC" * 20))

    def test_paddingAndUnrequestedDropped(self):
        """Padding-only RTX (probes), RTX nobody missed and of another codec: dropped, counted."""
        self.stream.packet(rtp(500, 9000))
        self.stream.packet(rtp(501, 9000))
        probe = rtx(0, 8, 9000, payload=b"")[:-2] + b"\0" * 199 + b"\xC8"
        probe = bytes([probe[0] | 0x20]) + probe[1:]
        self.stream.retransmission(probe, 97)
        self.stream.retransmission(rtx(500, 9, 9000, padding=4), 97)
        self.stream.retransmission(rtx(500, 9, 9000), 96)
        self.assertEqual(self.stream.drops, Counter(rtx_padding=1, rtx_unrequested=1,
                                                    rtx_stale=1))
        self.assertEqual(len(self.sent), 2)

    def test_paddedRtxStripped(self):
        """Padding after an RTX payload is not forwarded."""
        self.stream.packet(rtp(500, 9000))
        self.stream.packet(rtp(502, 9000))
        self.stream.retransmission(rtx(501, 7, 9000, padding=8, payload=b"\xCC" * 20), 97)
        self.assertTrue(self.sent[2].endswith(b"\xCC" * 20))
        self.assertFalse(self.sent[2][0] & 0x20)

    def test_lateOriginalFillsGap(self):
        """A reordered original fills the gap: nothing is NACKed."""
        self.stream.packet(rtp(500, 9000))
        self.stream.packet(rtp(502, 9000))
        self.stream.packet(rtp(501, 9000))
        self.clock.advance(1)
        self.assertEqual(self.nacks, [])
        self.assertEqual(len(self.sent), 3)

    def test_newSourceForgets(self):
        """A new SSRC: the old source's gaps are no longer asked for."""
        self.stream.packet(rtp(500, 9000))
        self.stream.packet(rtp(505, 9000))
        self.clock.advance(1)
        self.stream.packet(rtp(9000, 1, ssrc=0x7777))
        self.assertEqual(self.stream.repair.missing, {})
