# -*- test-case-name: tests.test_speaking -*-
"""
Tests for L{ahoyconference.media.speaking}: reading the RFC 6464 level from
raw packets, and the smoothed, hysteretic speaking state.
"""

from __future__ import annotations

import struct

from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from ahoyconference.media.speaking import SpeakingDetector, findExtensions


def rtpPacket(extensions: list[tuple[int, bytes]] | None = None, csrcs: int = 0,
              profile: int = 0xBEDE, padding: int = 0, payload: bytes = b"\x01\x02") -> bytes:
    """An RTP packet with one-byte header extensions (id, value)."""
    b0 = 0x80 | csrcs | (0x10 if extensions is not None else 0)
    packet = struct.pack("!BBHII", b0, 96, 1, 2, 3) + b"\0\0\0\x07" * csrcs
    if extensions is not None:
        block = b"".join(bytes([(eid << 4) | (len(value) - 1)]) + value
                         for eid, value in extensions) + b"\0" * padding
        block += b"\0" * (-len(block) % 4)
        packet += struct.pack("!HH", profile, len(block) // 4) + block
    return packet + payload


class FindExtensionsTests(TestCase):
    """L{findExtensions} scans the one-byte extension block."""

    def test_levelAndMid(self):
        """The level (without the voice bit) and the offset of a one-byte mid."""
        packet = rtpPacket([(1, b"0"), (2, bytes([0x80 | 42]))])
        midOffset, level = findExtensions(packet, 1, 2)
        self.assertEqual(level, 42)
        self.assertEqual(packet[midOffset:midOffset + 1], b"0")

    def test_paddingAndCsrcs(self):
        """Padding bytes between elements and CSRCs before the block are skipped."""
        packet = rtpPacket([(3, b"\1\2\3"), (2, b"\x05")], csrcs=2, padding=3)
        self.assertEqual(findExtensions(packet, 1, 2), (0, 5))

    def test_absent(self):
        """No extension, another profile, unknown ids, or truncation: nothing found."""
        self.assertEqual(findExtensions(rtpPacket(None), 1, 2), (0, -1))
        self.assertEqual(findExtensions(rtpPacket([(2, b"\x05")], profile=0x1000), 1, 2),
                         (0, -1))
        self.assertEqual(findExtensions(rtpPacket([(4, b"\x05")]), 1, 2), (0, -1))
        self.assertEqual(findExtensions(rtpPacket([(2, b"\x05")])[:14], 1, 2), (0, -1))

    def test_longMidNotRewritable(self):
        """A mid longer than one byte gives no offset (it cannot be rewritten in place)."""
        self.assertEqual(findExtensions(rtpPacket([(1, b"10")]), 1, 2), (0, -1))


class SpeakingDetectorTests(TestCase):
    """L{SpeakingDetector}: ~300 ms windows, hysteresis, idle timeout."""

    def setUp(self):
        self.clock = Clock()
        self.changes = []
        self.detector = SpeakingDetector(self.changes.append)

    def feed(self, level: int, seconds: float, interval: float = 0.02):
        """Packets of one level every C{interval} for C{seconds}."""
        for _ in range(round(seconds / interval)):
            self.detector.level(self.clock.seconds(), level)
            self.clock.advance(interval)

    def test_loudTurnsOn(self):
        """One loud window turns speaking on; no sooner."""
        self.feed(20, 0.28)
        self.assertEqual(self.changes, [])
        self.feed(20, 0.1)
        self.assertEqual(self.changes, [True])
        self.assertTrue(self.detector.speaking)

    def test_silenceTurnsOffAfterHangover(self):
        """Two quiet windows in a row turn it off; one is not enough."""
        self.feed(20, 0.6)
        self.feed(127, 0.25)
        self.assertEqual(self.changes, [True])
        self.feed(127, 0.5)
        self.assertEqual(self.changes, [True, False])

    def test_shortPauseKeepsSpeaking(self):
        """A pause of one window between words does not flap."""
        self.feed(20, 0.4)
        for _ in range(5):
            self.feed(127, 0.2)
            self.feed(25, 0.4)
        self.assertEqual(self.changes, [True])

    def test_hysteresis(self):
        """Levels between the thresholds neither start nor stop speaking."""
        self.feed(55, 2)
        self.assertEqual(self.changes, [])
        self.feed(30, 0.4)
        self.feed(55, 2)
        self.assertEqual(self.changes, [True])

    def test_idle(self):
        """No packets for the idle timeout means silence (DTX, a stalled stream)."""
        self.feed(20, 0.4)
        self.detector.idle(self.clock.seconds() + 0.5)
        self.assertEqual(self.changes, [True])
        self.detector.idle(self.clock.seconds() + 1.0)
        self.assertEqual(self.changes, [True, False])

    def test_resetSilences(self):
        """reset() turns speaking off once; when silent it tells nothing."""
        self.detector.reset()
        self.assertEqual(self.changes, [])
        self.feed(20, 0.4)
        self.detector.reset()
        self.detector.reset()
        self.assertEqual(self.changes, [True, False])

    def test_quietBackground(self):
        """Steady background noise below the start level never starts speaking."""
        self.feed(70, 3)
        self.assertEqual(self.changes, [])

    def test_thresholdsChecked(self):
        """A stop threshold below the start threshold is a mistake."""
        self.assertRaises(ValueError, SpeakingDetector, print, startLevel=50, stopLevel=40)
