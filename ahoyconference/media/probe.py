# -*- test-case-name: tests.test_simulcast -*-
"""
Padding probes (docs/architecture.md, "Simulcast"): a subscriber held on a
lower layer learns whether its link carries the next one up from padding
sent on top of the layer it has, not from the next layer's picture.

A receiver's REMB grows only to about 1.5 times what it receives, so it
never shows that a link got better; something has to be tried.  Trying the
next layer itself fills a slow link's queue with video that has to be
thrown away, and the way back down waits for a keyframe of the lower
layer behind it: the picture freezes.  Padding costs the picture nothing:
if the link cannot carry it, a queue grows (the round trip from its
receiver reports), packets get lost or its estimate falls, and the padding
stops; the picture it was watching goes on.

What goes out is what browsers send to probe their own links: RTP packets
on the subscriber's retransmission (RTX) stream whose payload is all
padding (RFC 3550 5.1, the P bit).  The receiver counts them in its
bandwidth estimate and drops them.  They carry the C{abs-send-time}
header extension of the media packet they follow (when it has one), so
that the receiver's estimator puts them in the same group of packets.

Pure functions and a budget; the selector (L{ahoyconference.media.selector})
says when and how much, the layer (L{ahoyconference.media.simulcast}) sends.
"""

from __future__ import annotations

import struct

PAD_OCTETS = 255
"""Padding octets per packet: the most one padding count octet can say."""
PACKET_OCTETS = 12 + 8 + PAD_OCTETS
"""A padding packet's size before SRTP (header, extension, padding)."""
BURST = 0.1
"""Seconds of padding owed that may go out at once (after a pause in the media)."""
PER_PACKET_MAX = 16
"""Padding packets sent after one media packet at most."""

_header = struct.Struct("!BBHII").pack
_PADDING = bytes(PAD_OCTETS - 1) + bytes([PAD_OCTETS])


def paddingPacket(pt: int, seq: int, ts: int, ssrc: int, absId: int = 0,
                  absSendTime: bytes | None = None) -> bytes:
    """
    A plain (not yet protected) RTP packet whose payload is all padding.

    @param absId: the C{abs-send-time} extension id, 0 for none.
    @param absSendTime: its 3-octet value (C{None}: no extension).
    """
    if absId and absSendTime is not None and len(absSendTime) == 3:
        ext = b"\xbe\xde\x00\x01" + bytes([(absId << 4) | 2]) + absSendTime
        return _header(0xB0, pt & 0x7F, seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc) + ext + _PADDING
    return _header(0xA0, pt & 0x7F, seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc) + _PADDING


class PaddingBudget:
    """
    How many padding packets are owed at a bitrate, paid out as media
    packets go by (no timer: a layer that stops sending stops the padding).

    @ivar credit: octets owed and not yet sent.
    @ivar last: when it was last asked (C{None}: never).
    """

    def __init__(self):
        self.credit = 0.0
        self.last: float | None = None

    def take(self, now: float, rate: float) -> int:
        """
        The padding packets to send now at C{rate} bit/s (at most
        L{PER_PACKET_MAX}; no more than L{BURST} seconds' worth is saved up).
        """
        if self.last is None or rate <= 0:
            self.last = now
            return 0
        self.credit = min(self.credit + rate / 8 * max(0.0, now - self.last), rate / 8 * BURST)
        self.last = now
        count = min(PER_PACKET_MAX, int(self.credit // PACKET_OCTETS))
        self.credit -= count * PACKET_OCTETS
        return count
