# -*- test-case-name: tests.test_speaking -*-
"""
Speaker detection from the RFC 6464 audio level that publishers put in every
audio packet (C{urn:ietf:params:rtp-hdrext:ssrc-audio-level}), with no audio
decoding.

The level is read from the raw one-byte header-extension block
(L{findExtensions}); L{SpeakingDetector} smooths it over windows of about
300 ms and switches with hysteresis: on as soon as one window is mostly loud,
off only after C{hangover} quiet windows in a row (or when packets stop).
Pure logic: time is passed in, so tests use plain numbers or C{task.Clock}.
"""

from __future__ import annotations

from collections.abc import Callable

SILENT = 127
"""The RFC 6464 level of digital silence: -127 dBov."""


def findExtensions(data, midId: int, levelId: int) -> tuple[int, int]:
    """
    Scan the one-byte header-extension block (RFC 8285, profile 0xBEDE) of
    a plain RTP packet.

    @param data: the packet (C{bytes} or C{bytearray}).
    @param midId: the negotiated id of C{sdes:mid}, or 0.
    @param levelId: the negotiated id of C{ssrc-audio-level}, or 0.
    @return: C{(midOffset, level)}: the offset of a one-byte mid value (0 if
        absent or longer than one byte) and the level in -dBov (0 loudest,
        127 silence; -1 if absent).
    """
    b0 = data[0]
    if not b0 & 0x10:
        return 0, -1
    pos = 12 + 4 * (b0 & 0x0F)
    if len(data) < pos + 4 or data[pos] != 0xBE or data[pos + 1] != 0xDE:
        return 0, -1
    end = pos + 4 + 4 * ((data[pos + 2] << 8) | data[pos + 3])
    pos += 4
    if end > len(data):
        return 0, -1
    midOffset = 0
    level = -1
    while pos < end:
        h = data[pos]
        if h == 0:
            pos += 1
            continue
        eid = h >> 4
        if eid == 15:
            break
        length = (h & 0x0F) + 1
        if eid == midId and length == 1 and pos + 1 < end:
            midOffset = pos + 1
        elif eid == levelId and pos + 1 < end:
            level = data[pos + 1] & 0x7F
        pos += 1 + length
    return midOffset, level


class SpeakingDetector:
    """
    Smoothed, hysteretic speaking state from a stream of audio levels.

    Each window of about 300 ms counts its packets louder than the thresholds.
    Not speaking, a window where at least C{startRatio} of the packets are at
    or above C{startLevel} (in -dBov: at most the number) turns speaking on.
    Speaking, a window where fewer than C{stopRatio} of the packets reach the
    lower C{stopLevel} is quiet; C{hangover} quiet windows in a row turn it
    off.  Counting packets rather than averaging dB values keeps a short gap
    between words (a run of level 127) from weighing like a long silence.

    @ivar speaking: the current state.
    """

    def __init__(
        self,
        onChange: Callable[[bool], None],
        window: float = 0.3,
        startLevel: int = 50,
        stopLevel: int = 60,
        startRatio: float = 0.5,
        stopRatio: float = 0.2,
        hangover: int = 2,
        idleTimeout: float = 1.0,
    ):
        """
        @param onChange: called with the new state whenever it changes.
        @param window: seconds per window.
        @param startLevel: a packet this loud (-dBov, 0 loudest) counts to start.
        @param stopLevel: a packet this loud counts as voice while speaking.
        @param startRatio: share of start-loud packets in a window to start.
        @param stopRatio: below this share of voice packets a window is quiet.
        @param hangover: quiet windows in a row that turn speaking off.
        @param idleTimeout: with no level for this long, L{idle} turns it off.
        """
        if stopLevel < startLevel:
            raise ValueError("stopLevel must not be below startLevel")
        self._onChange = onChange
        self._window = window
        self._startLevel = startLevel
        self._stopLevel = stopLevel
        self._startRatio = startRatio
        self._stopRatio = stopRatio
        self._hangover = hangover
        self._idleTimeout = idleTimeout
        self.speaking = False
        self._windowEnd: float | None = None
        self._count = 0
        self._loud = 0
        self._voice = 0
        self._quiet = 0
        self._last: float | None = None

    def level(self, now: float, level: int) -> None:
        """One packet's level (0 loudest .. 127 silence) at time C{now}."""
        end = self._windowEnd
        if end is None:
            self._windowEnd = now + self._window
        elif now >= end:
            self._evaluate()
            self._windowEnd = end + self._window if now < end + self._window \
                else now + self._window
        self._count += 1
        if level <= self._stopLevel:
            self._voice += 1
            if level <= self._startLevel:
                self._loud += 1
        self._last = now

    def _evaluate(self) -> None:
        count = self._count
        if not count:
            return
        loud, voice = self._loud, self._voice
        self._count = self._loud = self._voice = 0
        if not self.speaking:
            if loud >= self._startRatio * count:
                self._quiet = 0
                self._set(True)
        elif voice < self._stopRatio * count:
            self._quiet += 1
            if self._quiet >= self._hangover:
                self._set(False)
        else:
            self._quiet = 0

    def idle(self, now: float) -> None:
        """Called now and then: no level for C{idleTimeout} means silence."""
        if self._last is not None and now - self._last >= self._idleTimeout:
            self.reset()

    def reset(self) -> None:
        """The stream ended: forget everything, and stop speaking."""
        self._windowEnd = None
        self._count = self._loud = self._voice = 0
        self._quiet = 0
        self._last = None
        self._set(False)

    def _set(self, speaking: bool) -> None:
        if speaking != self.speaking:
            self.speaking = speaking
            self._onChange(speaking)
