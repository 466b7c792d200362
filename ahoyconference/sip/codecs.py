# -*- test-case-name: tests.test_sip_media -*-
"""
A phone's codec as the call uses it: 20 ms frames in and out, decoded to
8 kHz mono for its level and encoded from the 8 kHz mix.  G.711 with our
tables; Opus (when the phone offers it first) with PyAV's libopus.
"""

from __future__ import annotations

import fractions
from array import array

import av

from ahoyconference.sip import g711
from ahoyconference.sip.rtp import FRAME


class G711Codec:
    """PCMU or PCMA: 8000 samples a second, 160 per frame."""

    rate = 8000

    def __init__(self, name: str):
        self.name = name
        self.frameSamples = FRAME
        self.key = (f"audio/{name.lower()}", 8000, "", "")

    def decode(self, payload: bytes) -> array:
        """The frame as 8 kHz samples."""
        return g711.decode(self.name, payload)

    def encode(self, samples) -> bytes:
        """8 kHz samples as one frame."""
        return g711.encode(self.name, samples)


class OpusCodec:
    """Opus at 48 kHz (RTP clock 48000, 960 per 20 ms), mono to and from the phone."""

    rate = 48000
    name = "OPUS"

    def __init__(self):
        self.frameSamples = 960
        self.key = ("audio/opus", 48000, "", "")
        self._decoder = av.CodecContext.create("libopus", "r")
        self._down = av.AudioResampler(format="s16", layout="mono", rate=8000)
        self._encoder = av.CodecContext.create("libopus", "w")
        self._encoder.sample_rate = 48000
        self._encoder.layout = "mono"
        self._encoder.format = "s16"
        self._encoder.bit_rate = 32000
        self._encoder.time_base = fractions.Fraction(1, 48000)
        self._up = av.AudioResampler(format="s16", layout="mono", rate=48000)
        self._pts = 0
        self._packets: list[bytes] = []

    def decode(self, payload: bytes) -> array:
        """The frame as 8 kHz samples (empty when it does not decode)."""
        out = array("h")
        try:
            for frame in self._decoder.decode(av.Packet(payload)):
                for small in self._down.resample(frame):
                    out.frombytes(bytes(small.planes[0])[:small.samples * 2])
        except (av.error.FFmpegError, ValueError):
            return array("h")
        return out

    def encode(self, samples) -> bytes:
        """
        8 kHz samples (160) as one Opus packet (empty while the resampler
        and encoder fill; they never give two for one call for long: any
        extra one waits for the next call).
        """
        frame = av.AudioFrame(format="s16", layout="mono", samples=len(samples))
        frame.planes[0].update(array("h", samples).tobytes())
        frame.sample_rate = 8000
        frame.pts = None
        for big in self._up.resample(frame):
            big.pts = self._pts
            big.time_base = fractions.Fraction(1, 48000)
            self._pts += big.samples
            self._packets.extend(bytes(p) for p in self._encoder.encode(big))
        if len(self._packets) > 5:  # never let a backlog grow into delay
            del self._packets[:-1]
        return self._packets.pop(0) if self._packets else b""


def codecFor(name: str):
    """The codec object for an SDP codec name we take."""
    return OpusCodec() if name == "OPUS" else G711Codec(name)
