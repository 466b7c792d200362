# -*- test-case-name: tests.test_sip_media -*-
"""
The room's audio for one phone (docs/sip.md): each other member's audio
packets come in (from the engine's tap), only the loudest few are decoded
(by the RFC 6464 level their packets carry, or for phones the level of their
G.711), and every 20 ms one frame of their sum at 8 kHz goes out.

Opus is decoded with PyAV (libopus) and resampled to 8 kHz mono; G.711 from
other phones is decoded with our tables.
"""

from __future__ import annotations

from array import array
from collections import Counter

import av

from ahoyconference.logs import logger
from ahoyconference.media.speaking import findExtensions
from ahoyconference.sip import g711
from ahoyconference.sip.rtp import FRAME

_log = logger(__name__)

MAX_BUFFER = FRAME * 8
"""Samples (160 ms) kept per speaker; older ones are dropped (counted)."""

UNKNOWN_LEVEL = 60
"""The level assumed for a member whose packets carry none (a phone's Opus)."""

STALE = 0.5
"""Seconds without a packet after which a speaker does not count."""


class _Source:
    """One member heard by the mixer."""

    __slots__ = ("level", "last", "decoder", "resampler", "buffer", "decoding")

    def __init__(self):
        self.level = 127
        self.last = -1.0
        self.decoder = None
        self.resampler = None
        self.buffer = array("h")
        self.decoding = False


class Mixer:
    """
    Mixes at most C{maxSpeakers} members for one listener.

    @ivar counters: C{decoded} packets, C{skipped} (not among the loudest),
        C{overflow} samples dropped, C{errors} (undecodable packets).
    """

    def __init__(self, now, maxSpeakers: int = 3, counters: Counter | None = None):
        """
        @param counters: where to count (shared by every phone's mixer for
            /metrics), else a new L{Counter}.
        """
        self._now = now
        self.maxSpeakers = maxSpeakers
        self._sources: dict[str, _Source] = {}
        self._chosen: set[str] = set()
        self.counters: Counter = Counter() if counters is None else counters
        self._logged = False

    def packet(self, publisherID: str, data: bytes, levelId: int = 0) -> None:
        """One RTP packet of a member's audio (as for a subscriber: unencrypted)."""
        source = self._sources.get(publisherID)
        if source is None:
            source = self._sources[publisherID] = _Source()
        source.last = self._now()
        pt = data[1] & 0x7F
        if pt in (0, 8):  # another phone: G.711 is cheap, decode and measure
            codec = "PCMU" if pt == 0 else "PCMA"
            offset = _payloadOffset(data)
            samples = g711.decode(codec, data[offset:])
            source.level = g711.levelOf(samples)
            if publisherID in self._chosen:
                self._append(source, samples)
            return
        if levelId and data[0] & 0x10:
            _, level = findExtensions(data, 0, levelId)
            if level >= 0:
                source.level = level
        else:
            source.level = UNKNOWN_LEVEL  # a phone's Opus carries no level: a candidate
        if publisherID not in self._chosen:
            self.counters["skipped"] += 1
            source.decoding = False
            return
        self._decodeOpus(source, data)

    def _decodeOpus(self, source: _Source, data: bytes) -> None:
        if not source.decoding or source.decoder is None:
            source.decoder = av.CodecContext.create("libopus", "r")
            source.resampler = av.AudioResampler(format="s16", layout="mono", rate=8000)
            source.decoding = True
        try:
            frames = source.decoder.decode(av.Packet(data[_payloadOffset(data):]))
            for frame in frames:
                for out in source.resampler.resample(frame):
                    pcm = array("h")
                    pcm.frombytes(bytes(out.planes[0])[:out.samples * 2])
                    self._append(source, pcm)
            self.counters["decoded"] += 1
        except (av.error.FFmpegError, ValueError) as e:
            self.counters["errors"] += 1
            source.decoding = False
            if not self._logged:
                self._logged = True
                _log.info("SIP mixer: an undecodable audio packet ({error}); further ones are "
                          "only counted", error=str(e))

    def _append(self, source: _Source, samples) -> None:
        source.buffer.extend(samples)
        extra = len(source.buffer) - MAX_BUFFER
        if extra > 0:
            del source.buffer[:extra]
            self.counters["overflow"] += extra

    def remove(self, publisherID: str) -> None:
        """A member left."""
        self._sources.pop(publisherID, None)
        self._chosen.discard(publisherID)

    def choose(self) -> set[str]:
        """The loudest fresh members, at most C{maxSpeakers} (decoded from now on)."""
        now = self._now()
        fresh = [(s.level, pid) for pid, s in self._sources.items()
                 if now - s.last < STALE and s.level < 127]
        fresh.sort()
        chosen = {pid for _, pid in fresh[:self.maxSpeakers]}
        for pid in self._chosen - chosen:
            source = self._sources.get(pid)
            if source is not None:
                del source.buffer[:]
        self._chosen = chosen
        return chosen

    def frame(self) -> list[int]:
        """The next 20 ms: the sum of the chosen members' audio, clipped."""
        self.choose()
        parts = []
        for pid in self._chosen:
            buffer = self._sources[pid].buffer
            if len(buffer) >= FRAME:
                parts.append(buffer[:FRAME])
                del buffer[:FRAME]
        if not parts:
            return [0] * FRAME
        if len(parts) == 1:
            return list(parts[0])
        return [max(-32768, min(32767, sum(v))) for v in zip(*parts, strict=True)]


def _payloadOffset(data: bytes) -> int:
    offset = 12 + 4 * (data[0] & 0x0F)
    if data[0] & 0x10:
        offset += 4 + 4 * int.from_bytes(data[offset + 2:offset + 4], "big")
    return offset
