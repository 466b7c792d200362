# -*- test-case-name: tests.test_rtcp -*-
"""
L{RetransmitBudget}: how much one subscriber may have retransmitted
(docs/architecture.md, "RTCP"), so that no subscriber's NACKs can make the
server resend without bound.
"""

from __future__ import annotations

from collections import Counter

NACK_SHARE = 0.25
"""Retransmitted bytes per subscriber: at most this share of what it receives…"""
NACK_FLOOR = 16_000
"""… plus this many bytes per second (about 13 packets of 1,200 bytes)…"""
NACK_BURST = 64 * 1024
"""… of which at most this many bytes may be saved up while nothing is lost."""
NACK_REPEAT_WINDOW = 0.1
"""Seconds within which a repeated NACK of the same packet is ignored (about an RTT)."""


class RetransmitBudget:
    """
    What one subscriber may have retransmitted: a token bucket filled with
    L{NACK_FLOOR} bytes per second plus L{NACK_SHARE} of the payload bytes
    forwarded to it, holding at most L{NACK_BURST}; and the time each
    sequence number was last resent, so that a repeat within
    L{NACK_REPEAT_WINDOW} is ignored.

    Over any T seconds a subscriber so gets at most
    C{NACK_BURST + NACK_FLOOR * T + NACK_SHARE * received} bytes resent,
    however many NACKs it sends.
    """

    def __init__(self, now: float, received: int):
        self.tokens = float(NACK_BURST)
        self.time = now
        self.received = received
        self.spent = 0
        self.refused: Counter = Counter()
        self._resent = [-1.0] * 1024
        self._resentSeq = [-1] * 1024

    def refill(self, now: float, received: int) -> None:
        """Add what C{now} and the bytes C{received} so far earn."""
        gained = NACK_FLOOR * max(0.0, now - self.time) + NACK_SHARE * max(0, received - self.received)
        self.tokens = min(float(NACK_BURST), self.tokens + gained)
        self.time = now
        self.received = max(self.received, received)

    def mayResend(self, now: float, seq: int, size: int) -> bool:
        """Take C{size} bytes for C{seq}, unless it was resent just now or the budget is spent."""
        slot = seq & 1023
        if self._resentSeq[slot] == seq and now - self._resent[slot] < NACK_REPEAT_WINDOW:
            self.refused["repeat"] += 1
            return False
        if self.tokens < size:
            self.refused["budget"] += 1
            return False
        self.tokens -= size
        self.spent += size
        self._resent[slot] = now
        self._resentSeq[slot] = seq
        return True
