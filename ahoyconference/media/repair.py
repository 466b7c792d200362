# -*- test-case-name: tests.test_repair -*-
"""
Loss repair towards a publisher (docs/architecture.md, "Loss on the
publisher's leg"): the sequence gaps of one incoming video stream, the
generic NACKs (RFC 4585 6.2.1) that ask for them again, and what became of
each missing packet.

L{LossRepair} is told of gaps and late arrivals by
L{ahoyconference.media.forward.InStream}, which already compares each
packet's sequence number with the highest so far: the cost on the packet
path is one comparison while nothing is lost, and one dictionary operation
per missing packet otherwise.  The NACKs go out from a timer on the injected
clock, never from the packet path:

 - a missing packet is first NACKed on the reactor's next turn after its
   gap was seen (L{FIRST_NACK_DELAY} is 0): the gaps found in one wake-up
   go out as one NACK, and a packet merely reordered within that wake-up is
   not asked for.  Any wait costs the subscribers: at 30 frames/s and one
   packet a frame the gap is seen one frame late already, and a
   retransmission one round trip later is then within a few milliseconds of
   WebRTC's freeze threshold (mean frame interval + 150 ms; bench/RESULTS.md,
   loss in the test bed);
 - then again every retry interval (the round-trip time measured from the
   first NACK to the retransmission, times L{RTT_MARGIN}, at least
   L{RTT_FLOOR}), at most
   L{MAX_TRIES} times;
 - one interval after its last NACK it is no longer asked for, and the
   publisher is asked for a keyframe (the decoder may need one to go on);
   a retransmission that still comes is forwarded until L{GIVE_UP} seconds
   after the gap was seen, when the packet is given up (counted).
"""

from __future__ import annotations

import struct
from collections import Counter
from collections.abc import Callable

FIRST_NACK_DELAY = 0.0
"""Seconds between seeing a gap and the first NACK for it: the next turn."""
RTT_FLOOR = 0.05
"""Seconds: the retry interval is the measured round-trip time, at least this."""
RTT_MARGIN = 1.25
"""The retry interval is this many round-trip times (jitter)."""
MAX_TRIES = 3
"""NACKs per missing packet."""
GIVE_UP = 1.0
"""Seconds after its gap was seen when a missing packet is given up."""
MAX_GAP = 256
"""A larger jump of the sequence number is not loss worth NACKing (a restart):
the publisher is asked for a keyframe instead."""
MAX_MISSING = 512
"""Missing packets tracked at once; beyond, the oldest are given up."""

_fci = struct.Struct("!HH").pack


def packNack(ssrc: int, mediaSsrc: int, seqs: list[int]) -> bytes:
    """
    One RTCP generic NACK (RFC 4585 6.2.1) for C{seqs}, in the order they
    were lost (ascending modulo 2^16, across a wrap-around).
    """
    payload = bytearray(struct.pack("!II", ssrc, mediaSsrc))
    pid = None
    blp = 0
    for seq in seqs:
        if pid is not None:
            d = (seq - pid - 1) & 0xFFFF
            if d < 16:
                blp |= 1 << d
                continue
            payload += _fci(pid, blp)
        pid, blp = seq, 0
    if pid is not None:
        payload += _fci(pid, blp)
    length = len(payload) // 4  # 32-bit words minus one, with the 4-byte header
    return struct.pack("!BBH", 0x80 | 1, 205, length) + bytes(payload)


class _Missing:
    """One missing packet: when its gap was seen, when it was first and last NACKed, how often."""

    __slots__ = ("seen", "first", "sent", "tries", "abandoned")

    def __init__(self, seen: float):
        self.seen = seen
        self.first = -1.0
        self.sent = -1.0
        self.tries = 0
        self.abandoned = False


class LossRepair:
    """
    The missing packets of one publisher's video stream, and the NACKs for them.

    @ivar missing: sequence number → its state, in the order lost.
    @ivar rtt: the smoothed round-trip time from NACK to retransmission, or
        C{None} before the first measurement.
    @ivar counters: shared with the engine: C{publisher_nacks_sent} (NACK
        packets), C{publisher_nacked_packets} (sequence numbers asked for),
        C{publisher_packets_recovered} (retransmitted after a NACK),
        C{publisher_packets_reordered} (arrived late without one),
        C{publisher_packets_given_up}.
    """

    def __init__(self, clock, sendNack: Callable[[list[int]], bool],
                 onGiveUp: Callable[[], None], counters: Counter | None = None):
        """
        @param clock: an C{IReactorTime}.
        @param sendNack: sends one NACK for the sequence numbers; C{False}
            when it could not (no connection): they are asked for again later.
        @param onGiveUp: called once per round in which packets stopped
            being asked for (their tries are spent).
        """
        self._clock = clock
        self._now = clock.seconds
        self._sendNack = sendNack
        self._onGiveUp = onGiveUp
        self.counters = counters if counters is not None else Counter()
        self.missing: dict[int, _Missing] = {}
        self.rtt: float | None = None
        self._timer = None

    @property
    def interval(self) -> float:
        """Seconds between two NACKs of one packet."""
        return max(RTT_FLOOR, RTT_MARGIN * (self.rtt or 0.0))

    # -- told by the packet path ------------------------------------------

    def gap(self, last: int, seq: int) -> None:
        """
        C{seq} arrived after C{last}, the highest so far: the packets in
        between are missing (sequence numbers modulo 2^16).
        """
        count = ((seq - last) & 0xFFFF) - 1
        if count <= 0:
            return
        if count > MAX_GAP:
            self._giveUp(list(self.missing))
            self._onGiveUp()
            return
        now = self._now()
        missing = self.missing
        for i in range(1, count + 1):
            missing[(last + i) & 0xFFFF] = _Missing(now)
        if len(missing) > MAX_MISSING:
            self._giveUp(list(missing)[:len(missing) - MAX_MISSING])
        self._schedule(FIRST_NACK_DELAY)

    def arrived(self, seq: int, retransmitted: bool) -> bool:
        """
        A packet older than the highest arrived (late, or retransmitted):
        C{True} when it was missing.
        """
        entry = self.missing.pop(seq, None)
        if entry is None:
            return False
        if retransmitted and entry.tries:
            self.counters["publisher_packets_recovered"] += 1
            # From the first NACK: before the RTT is known the floor makes us
            # ask again before the answer can come back, so counting from the
            # last NACK (Karn) would never measure a path slower than the
            # floor.  An answer to a later NACK (the first was lost) only
            # overestimates, at the rate of loss.
            if not entry.abandoned:  # (a late answer says little of the path)
                sample = self._now() - entry.first
                self.rtt = sample if self.rtt is None else self.rtt + (sample - self.rtt) / 8
        else:
            self.counters["publisher_packets_reordered"] += 1
        if not self.missing:
            self._cancel()
        return True

    def reset(self) -> None:
        """A new source, or forwarding resumed: forget what was missing (uncounted)."""
        self.missing.clear()
        self._cancel()

    # -- the timer ----------------------------------------------------------

    def _schedule(self, delay: float) -> None:
        when = self._now() + delay
        if self._timer is not None:
            if self._timer.getTime() <= when:
                return
            self._timer.cancel()
        self._timer = self._clock.callLater(delay, self._flush)

    def _cancel(self) -> None:
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None

    def _giveUp(self, seqs: list[int]) -> None:
        for seq in seqs:
            del self.missing[seq]
        self.counters["publisher_packets_given_up"] += len(seqs)

    def _flush(self) -> None:
        """NACK what is due, give up what is over; run again while anything is missing."""
        self._timer = None
        now = self._now()
        interval = self.interval
        due = []
        over = []
        abandoned = 0
        for seq, entry in self.missing.items():
            if now - entry.seen >= GIVE_UP:
                over.append(seq)
            elif entry.abandoned:
                continue
            elif now - entry.sent >= interval - 1e-6:
                if entry.tries >= MAX_TRIES:
                    entry.abandoned = True
                    abandoned += 1
                else:
                    due.append(seq)
        if over:
            self._giveUp(over)
        if due and self._sendNack(due):
            self.counters["publisher_nacks_sent"] += 1
            self.counters["publisher_nacked_packets"] += len(due)
            for seq in due:
                entry = self.missing[seq]
                if not entry.tries:
                    entry.first = now
                entry.sent = now
                entry.tries += 1
        if abandoned:
            self._onGiveUp()
        if self.missing:
            self._schedule(interval)
