# -*- test-case-name: tests.test_sip_media -*-
"""
A call's RTP socket: plain RTP to and from the phone (RFC 3550), RFC 4733
telephone-events read as digits, and the tones the caller hears before
joining (a short "enter PIN" pattern, "wrong", "welcome"; no speech).
"""

from __future__ import annotations

import math
import random
import struct
from collections.abc import Callable

from twisted.internet.error import CannotListenError
from twisted.internet.protocol import DatagramProtocol

from ahoyconference.logs import logger

_log = logger(__name__)
_header = struct.Struct("!BBHII")

DIGITS = "0123456789*#ABCD"
"""RFC 4733 event codes 0-15 as keys."""

FRAME = 160
"""Samples per 20 ms at 8 kHz."""


def infoKey(contentType: str, body: str) -> str | None:
    """
    The key of a SIP INFO (the fallback of RFC 4733): C{application/dtmf-relay}
    (C{Signal=5}) or C{application/dtmf} (C{5}); C{None} for anything else.
    """
    key = None
    if contentType == "application/dtmf-relay":
        for line in body.splitlines():
            name, _, value = line.partition("=")
            if name.strip().lower() == "signal":
                key = value.strip().upper()
    elif contentType == "application/dtmf":
        key = body.strip().upper()
    if key in ("10", "11"):
        key = "*" if key == "10" else "#"
    return key if key is not None and len(key) == 1 and key in DIGITS else None


def _tone(parts) -> list[list[int]]:
    """C{[(frequency or 0, milliseconds), ...]} → 20 ms frames of samples."""
    samples: list[int] = []
    for frequency, ms in parts:
        n = ms * 8
        samples += [int(8000 * math.sin(2 * math.pi * frequency * i / 8000)) if frequency else 0
                    for i in range(n)]
    samples += [0] * (-len(samples) % FRAME)
    return [samples[i:i + FRAME] for i in range(0, len(samples), FRAME)]


#: The prompts: "enter PIN" two short high beeps, "wrong" a low long one,
#: "welcome" three rising notes.
TONES = {
    "pin": _tone([(880, 200), (0, 100), (880, 200), (0, 500)]),
    "wrong": _tone([(300, 600), (0, 300)]),
    "welcome": _tone([(523, 150), (659, 150), (784, 300), (0, 100)]),
}


class RtpSocket(DatagramProtocol):
    """
    One call's RTP port.

    @param onAudio: called with each audio RTP packet (bytes) of the negotiated codec.
    @param onDigit: called with each key pressed (RFC 4733).
    @param counters: a dict of L{collections.Counter}s (C{dropped}).
    """

    def __init__(self, onAudio: Callable[[bytes], None], onDigit: Callable[[str], None],
                 counters):
        self.onAudio = onAudio
        self.onDigit = onDigit
        self.counters = counters
        self.remote: tuple[str, int] | None = None
        self.pt = 0
        self.dtmfPT: int | None = None
        self.codec = None
        self.sending = True
        self._ssrc = random.getrandbits(32)
        self._seq = random.getrandbits(16)
        self._ts = random.getrandbits(32)
        self._lastEvent: tuple[int, int] | None = None
        self._logged: set[str] = set()
        self.received = 0
        self.sent = 0

    def configure(self, address: str, port: int, codec, pt: int, dtmfPT: int | None,
                  sending: bool) -> None:
        """
        The negotiated remote address, codec (a L{ahoyconference.sip.codecs}
        object) and direction.
        """
        self.remote = (address, port)
        self.codec, self.pt, self.dtmfPT = codec, pt, dtmfPT
        self.sending = sending

    def _drop(self, kind: str) -> None:
        self.counters["dropped"]["rtp-" + kind] += 1
        if kind not in self._logged:
            self._logged.add(kind)
            _log.info("SIP: dropped an RTP packet ({kind}); further ones are only counted",
                      kind=kind)

    def datagramReceived(self, data: bytes, addr) -> None:
        """One packet from the phone (or someone else)."""
        if self.remote is None or addr[0] != self.remote[0]:
            self._drop("foreign")
            return
        if len(data) < 12 or data[0] >> 6 != 2 or 72 <= (data[1] & 0x7F) <= 76:
            self._drop("not-rtp")  # RTCP (ours is not sent; theirs is not needed) or junk
            return
        pt = data[1] & 0x7F
        self.received += 1
        if pt == self.pt:
            self.onAudio(data)
        elif self.dtmfPT is not None and pt == self.dtmfPT:
            self._event(data)
        elif pt == 13:
            pass  # comfort noise (RFC 3389): silence, nothing to forward
        else:
            self._drop("payload-type")

    def _event(self, data: bytes) -> None:
        """RFC 4733 2.3: one key per event, however many packets carry it."""
        offset = 12 + 4 * (data[0] & 0x0F)
        if data[0] & 0x10:
            offset += 4 + 4 * int.from_bytes(data[offset + 2:offset + 4], "big")
        if len(data) < offset + 4:
            self._drop("short-event")
            return
        event = data[offset]
        ts = _header.unpack_from(data)[3]
        key = (ts, event)
        if key == self._lastEvent or event >= len(DIGITS):
            return
        self._lastEvent = key
        self.onDigit(DIGITS[event])

    def send(self, payload: bytes, samples: int = FRAME, marker: bool = False) -> None:
        """Send one frame of audio to the phone."""
        if self.remote is None or not self.sending or self.transport is None:
            self._ts = (self._ts + samples) & 0xFFFFFFFF
            return
        header = _header.pack(0x80, (0x80 if marker else 0) | self.pt, self._seq, self._ts,
                              self._ssrc)
        self._seq = (self._seq + 1) & 0xFFFF
        self._ts = (self._ts + samples) & 0xFFFFFFFF
        try:
            self.transport.write(header + payload, self.remote)
            self.sent += 1
        except OSError:
            self._drop("send-error")

    def skip(self, samples: int) -> None:
        """Frames not sent (the clock was late): the timestamps move on, as time did."""
        self._ts = (self._ts + samples) & 0xFFFFFFFF

    def sendSamples(self, samples) -> None:
        """Encode and send 20 ms (160 samples at 8 kHz)."""
        payload = self.codec.encode(samples)
        if payload:
            self.send(payload, self.codec.frameSamples)
        else:
            self.skip(self.codec.frameSamples)


class PortRange:
    """Hands out RTP ports (even numbers, RFC 3550 11) from a range."""

    def __init__(self, reactor, interface: str, first: int, last: int):
        self._reactor = reactor
        self._interface = interface
        self._first = first + (first & 1)
        self._last = last
        self._next = self._first

    def listen(self, protocol: DatagramProtocol):
        """
        Listen on the next free even port.

        @return: the listening port, or C{None} when every port is taken.
        """
        count = (self._last - self._first) // 2 + 1
        for _ in range(count):
            port = self._next
            self._next = port + 2 if port + 2 <= self._last else self._first
            try:
                return self._reactor.listenUDP(port, protocol, interface=self._interface)
            except CannotListenError:
                continue
        return None
