"""The phone's media pieces: the mixer (loudest few decoded), RFC 4733 digits, tones."""

from __future__ import annotations

import fractions
import math
import struct
from array import array
from collections import Counter

import av
from twisted.trial.unittest import TestCase

from ahoyconference.sip import g711
from ahoyconference.sip.mixer import Mixer
from ahoyconference.sip.rtp import FRAME, TONES, RtpSocket
from tests.mediaclients import toneFrequency


def opusPackets(frequency: float, count: int, level: int) -> list[bytes]:
    """20 ms RTP packets of a tone in Opus, with an audio-level extension (id 1)."""
    encoder = av.CodecContext.create("libopus", "w")
    encoder.sample_rate = 48000
    encoder.layout = "mono"
    encoder.format = "s16"
    encoder.time_base = fractions.Fraction(1, 48000)
    packets, pts = [], 0
    while len(packets) < count:
        frame = av.AudioFrame(format="s16", layout="mono", samples=960)
        frame.planes[0].update(array("h", (
            int(8000 * math.sin(2 * math.pi * frequency * (pts + i) / 48000))
            for i in range(960))).tobytes())
        frame.sample_rate = 48000
        frame.pts = pts
        frame.time_base = fractions.Fraction(1, 48000)
        pts += 960
        for packet in encoder.encode(frame):
            header = struct.pack("!BBHII", 0x90, 111, len(packets), pts, 99)
            extension = struct.pack("!HHBBH", 0xBEDE, 1, 0x10, 0x80 | level, 0)
            packets.append(header + extension + bytes(packet))
    return packets


class MixerTests(TestCase):
    """L{Mixer}."""

    def _mix(self, mixer, streams, frames):
        clock = [0.0]
        mixer._now = lambda: clock[0]
        out = array("h")
        for n in range(frames):
            clock[0] = n * 0.02
            for pid, packets in streams.items():
                mixer.packet(pid, packets[n], 1)
            out.extend(mixer.frame())
        return out

    def test_oneSpeakerHeard(self):
        """One member's 440 Hz comes out at 8 kHz as 440 Hz."""
        mixer = Mixer(lambda: 0.0, 3)
        out = self._mix(mixer, {"a": opusPackets(440, 60, 20)}, 60)
        frequency, rms = toneFrequency(out[-4000:], 8000)
        self.assertTrue(abs(frequency - 440) < 15 and rms > 1000, (frequency, rms))

    def test_loudestOnly(self):
        """Five speak, the three loudest are decoded; the quiet two only counted."""
        mixer = Mixer(lambda: 0.0, 3)
        streams = {f"m{i}": opusPackets(300 + 100 * i, 30, 10 + 10 * i) for i in range(5)}
        self._mix(mixer, streams, 30)
        self.assertEqual(mixer.choose(), {"m0", "m1", "m2"})
        self.assertGreater(mixer.counters["skipped"], 2 * 28)
        self.assertLessEqual(mixer.counters["decoded"], 3 * 30)

    def test_silenceAndStale(self):
        """Nobody speaking (level 127) or nobody sending: silence, nothing decoded."""
        mixer = Mixer(lambda: 0.0, 3)
        out = self._mix(mixer, {"a": opusPackets(440, 20, 127)}, 20)
        self.assertEqual(set(out), {0})
        self.assertEqual(mixer.counters["decoded"], 0)

    def test_phonesDecodedAsG711(self):
        """Another phone's PCMU is measured and mixed without Opus."""
        mixer = Mixer(lambda: 0.0, 3)
        tone = [int(8000 * math.sin(2 * math.pi * 500 * i / 8000)) for i in range(FRAME * 50)]
        packets = [struct.pack("!BBHII", 0x80, 0, n, n * FRAME, 7)
                   + g711.encode("PCMU", tone[n * FRAME:(n + 1) * FRAME]) for n in range(50)]
        out = self._mix(mixer, {"phone": packets}, 50)
        frequency, rms = toneFrequency(out[-4000:], 8000)
        self.assertTrue(abs(frequency - 500) < 15 and rms > 1000, (frequency, rms))


class RtpSocketTests(TestCase):
    """L{RtpSocket}: digits once per event, packets from elsewhere dropped."""

    def _event(self, key: int, ts: int, end: bool, seq: int) -> bytes:
        return struct.pack("!BBHII", 0x80, 101, seq, ts, 5) + bytes([key, 0x80 if end else 0,
                                                                     0, 160])

    def test_digits(self):
        keys, audio = [], []
        c = {"dropped": Counter()}
        sock = RtpSocket(audio.append, keys.append, c)
        sock.configure("127.0.0.1", 4000, "PCMU", 0, 101, True)
        seq = 0
        for key, ts in ((1, 1000), (11, 2000), (10, 3000)):
            for end in (False, False, True, True, True):  # one event, five packets
                seq += 1
                sock.datagramReceived(self._event(key, ts, end, seq), ("127.0.0.1", 4000))
        self.assertEqual(keys, ["1", "#", "*"])
        sock.datagramReceived(struct.pack("!BBHII", 0x80, 0, 1, 1, 5) + b"\xff" * 160,
                              ("127.0.0.1", 4000))
        self.assertEqual(len(audio), 1)
        sock.datagramReceived(struct.pack("!BBHII", 0x80, 0, 1, 1, 5), ("10.9.9.9", 4000))
        sock.datagramReceived(struct.pack("!BBHII", 0x80, 96, 1, 1, 5), ("127.0.0.1", 4000))
        sock.datagramReceived(b"\x00junk", ("127.0.0.1", 4000))
        self.assertEqual(c["dropped"], Counter({"rtp-foreign": 1, "rtp-payload-type": 1,
                                                "rtp-not-rtp": 1}))

    def test_tones(self):
        """The prompts are whole 20 ms frames with their tone in them."""
        for name, frames in TONES.items():
            self.assertTrue(frames and all(len(f) == FRAME for f in frames), name)
        samples = array("h", [s for f in TONES["wrong"] for s in f][:4000])
        frequency, _ = toneFrequency(samples, 8000)
        self.assertTrue(abs(frequency - 300) < 10, frequency)
