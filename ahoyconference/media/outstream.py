# -*- test-case-name: tests.test_media_engine -*-
"""
L{OutStream}: one subscriber's copy of one publisher's stream of one kind,
what L{ahoyconference.media.forward.InStream} sends to
(docs/architecture.md, "The path of a forwarded packet").
"""

from __future__ import annotations

import random
from collections.abc import Callable

from ahoyconference.media.hooks import zeroCopySender


class OutStream:
    """
    One subscriber's copy of one publisher's stream of one kind.

    @ivar ssrc: our sender's SSRC, advertised in the subscriber's offer.
    @ivar pt: the payload type for the publisher's current codec, -1 when
        the subscriber did not accept that codec (then nothing is sent).
    @ivar mid: the subscriber's one-byte mid value, written over the
        publisher's in the mid header extension.
    @ivar protect: the subscriber's SRTP C{protect}.
    @ivar sendto: the C{sendto} of the nominated pair's socket transport.
    @ivar addr: the nominated pair's remote address.
    @ivar seqDelta: added to the source's sequence numbers (C{None} until
        the output has a source).
    @ivar tsDelta: added to the source's timestamps.
    @ivar basePackets: the source's accepted packets when the output was
        attached (sender reports count from there).
    @ivar errors: packets that could not be protected or sent.
    @ivar zeroCopy: L{zeroCopySender}'s parts, or C{None} for the generic path.
    @ivar sim: the L{ahoyconference.media.simulcast.Selector} of a video
        output (its layer when the publisher sends simulcast), or C{None}.
    """

    __slots__ = (
        "kind", "ssrc", "rtxSsrc", "ptByKey", "rtxByPt", "pt", "rtxPt", "mid",
        "_protect", "_sendto", "addr", "seqDelta", "tsDelta", "startSeq", "startTs",
        "rtxSeq", "basePackets", "baseOctets", "errors", "zeroCopy", "sim",
    )

    def __init__(self, kind: str, ssrc: int, ptByKey: dict, rtxByPt: dict, rtxSsrc: int | None,
                 mid: int, protect: Callable, sendto: Callable, addr):
        self.kind = kind
        self.ssrc = ssrc
        self.rtxSsrc = rtxSsrc
        self.ptByKey = ptByKey
        self.rtxByPt = rtxByPt
        self.pt = -1
        self.rtxPt = None
        self.mid = mid
        self._protect = protect
        self._sendto = sendto
        self.addr = addr
        self.seqDelta: int | None = None
        self.tsDelta = 0
        self.startSeq = random.randrange(0, 0x8000)
        self.startTs = random.randrange(0, 0x100000000)
        self.rtxSeq = random.randrange(0, 0x8000)
        self.basePackets = 0
        self.baseOctets = 0
        self.errors = 0
        self.zeroCopy = zeroCopySender(protect, sendto)
        self.sim = None

    def __repr__(self) -> str:
        return (f"<OutStream {self.kind} ssrc={self.ssrc} pt={self.pt} to {self.addr} "
                f"errors={self.errors}>")

    # Replacing protect or sendto (tests drop packets that way) turns the
    # zero-copy path off unless the new pair qualifies again.

    @property
    def protect(self) -> Callable:
        """The subscriber's SRTP C{protect}."""
        return self._protect

    @protect.setter
    def protect(self, value: Callable) -> None:
        self._protect = value
        self.zeroCopy = zeroCopySender(value, self._sendto)

    @property
    def sendto(self) -> Callable:
        """The C{sendto} of the nominated pair's socket transport."""
        return self._sendto

    @sendto.setter
    def sendto(self, value: Callable) -> None:
        self._sendto = value
        self.zeroCopy = zeroCopySender(self._protect, value)
