# -*- test-case-name: tests.test_simulcast -*-
"""
L{Selector}: one subscriber's choice of simulcast layer (docs/architecture.md,
"Simulcast"): the highest that fits its bandwidth estimate and what it asked
for; down at once when the estimate falls, up slowly, and now and then a
try at the next layer up (a receiver's REMB cannot show that a link got
better).  A subscriber that takes retransmissions is tried with padding at
the next layer's bitrate first (L{ahoyconference.media.probe}), and moved
up only when its link carried it; one that does not is tried with the
layer itself.  Pure logic: time is passed in.

Over 400 lines on purpose: one job (one subscriber's choice), and each
of its rules is a constant whose docstring gives the reason; split, the
rules would be read apart from the choice they shape.
"""

from __future__ import annotations

from collections import Counter, deque

from ahoyconference.media.probe import PaddingBudget

UP_DELAY = 4.0
"""Seconds a higher layer must keep fitting before a subscriber goes up."""
PROBE_DELAY = 4.0
"""Seconds of an estimate held down by what we send (not by the link)
before a subscriber tries the next layer up anyway; doubled after each
try that had to come back down within L{PROBE_FAILED}, up to L{PROBE_MAX}
(which bounds how long a subscriber whose link got better waits)."""
PROBE_FAILED = 3.0
"""Seconds after going up within which any decrease of the estimate (the
receiver saw the delay grow: the link cannot carry the layer) sends the
subscriber back down at once: the try failed.  A receiver's estimate grows
only a few per cent a second, so it says nothing else that soon."""
DECREASE = 0.97
"""An estimate below this share of the one before is a decrease (receivers
send a new REMB at once when theirs falls by 3 % or more)."""
PROBE_MAX = 10.0
PADDED_PROBE_MAX = 6.0
"""L{PROBE_MAX} for tries with padding: a failed one costs the picture
nothing, so they may come more often."""
PROBE_RAMP = 1.5
"""Seconds over which a padding try grows to the next layer's bitrate (a
slow link's queue grows slowly, and the receiver says so before it is long)."""
PROBE_HOLD = 2.0
"""Seconds a padding try must go on without a decrease of the estimate,
loss (L{PROBE_LOSS}) or a queue (L{PROBE_QUEUE}) before the subscriber goes up.  A
try that held goes on to the layer above, if there is one it may have,
from there; the subscriber moves when the highest held (one switch, one
keyframe)."""
RTT_WINDOW = 10.0
"""Seconds over which the smallest round-trip time is the link's own (no queue)."""
PROBE_QUEUE = 0.06
"""Seconds of round trip above the link's own that end a padding try: a
queue is growing.  The receiver's estimate often cannot say so (it does
not fall below what it was, and it was below what the link carries), its
receiver reports can: browsers send one with every NACK and REMB."""
STEP_QUEUE = 0.15
"""Seconds of queue that send a subscriber back down within L{PROBE_FAILED}
of a step up."""
DOWN_QUEUE = 0.2
"""Seconds of queue (round trip above the link's own) that send a subscriber
down a layer at once, whatever its estimate says (the estimate falls only
after the receiver saw the delay grow for a while); in its first
L{START_WATCH} seconds, to the lowest layer."""
DOWN_QUEUE_HOLD = 2.0
"""Seconds after going down before a queue sends it down again (the queue
the higher layer left takes a while to drain)."""
START_WATCH = 5.0
"""Seconds after a subscriber gets its first layer during which its link is
watched closely.  Its estimate is not known yet: one that takes padding
starts on the lowest layer and is tried up at once; one that does not
starts on the highest it may have."""
PROBE_LOSS = 0.05
"""Share of packets lost since a padding try began (and at least
L{PROBE_LOSS_PACKETS}) that ends it: the queue overflowed.  A packet lost
now and then (Wi-Fi) does not."""
PROBE_LOSS_PACKETS = 2
LOSS_WINDOW = 1.0
"""Seconds of receiver reports a loss fraction is taken over (browsers
report every few packets; one loss among them is no 50 % loss)."""
HEADROOM = 1.15
"""A layer fits an estimate this many times its measured bitrate."""
UNCONSTRAINED = 1.3
"""An estimate this many times the current layer's bitrate is not held
down by the link: receivers' estimates grow only so far above what they get."""
FALLING = 0.85
"""An estimate below this share of its peak since the last switch is
falling (the link is congested): only then does a lower estimate send a
subscriber down.  A receiver's estimate starts low and climbs (to at most
about 1.5 times what it receives): a low but rising one is no reason to
leave a layer."""
ESTIMATE_GRACE = 2.0
"""Seconds after a subscriber joins during which its estimate (still
ramping up from the receiver's start value) does not lower its layer."""


class Selector:
    """
    One subscriber's layer: what it gets, what it should get, and how its
    VP8 numbering continues across switches.

    @ivar layer: the L{ahoyconference.media.simulcast.LayerStream} it is
        fed from, or C{None} yet.
    @ivar target: the layer index it waits to switch to (a keyframe), or
        C{None}.
    @ivar quality: the highest layer index it asked for.
    @ivar estimate: its latest bandwidth estimate in bit/s (REMB), or C{None}.
    @ivar picDelta: added to the layer's picture IDs (mod 2^15).
    @ivar tl0Delta: added to the layer's TL0PICIDX (mod 2^8).
    @ivar lastPic: the last picture ID sent (C{None} before any).
    @ivar lastTl0: the last TL0PICIDX sent.
    @ivar switches: switches done, by direction (C{"up"}, C{"down"}).
    @ivar tryNow: try the next layer up as soon as there is one (it asked
        for a higher quality), without waiting for L{probeDelay}.
    @ivar probing: the layer index tried with padding now, or C{None}.
    @ivar probeHeld: the highest layer index the try held for so far, or C{None}.
    @ivar probeRate: the padding's bitrate once ramped up (bit/s).
    @ivar padding: the L{PaddingBudget} of the try.
    @ivar probes: tries with padding, by outcome (C{"held"}, C{"failed"}).
    """

    def __init__(self, quality: int):
        self.layer = None  # a simulcast.LayerStream
        self.target: int | None = None
        self.quality = quality
        self.estimate: float | None = None
        self.peak = 0.0
        self.decreased = False
        self.picDelta = 0
        self.tl0Delta = 0
        self.lastPic: int | None = None
        self.lastTl0: int | None = None
        self.betterSince: float | None = None
        self.probeDelay = PROBE_DELAY
        self.lastUp = -1e9
        self.lastDown = -1e9
        self.lastDecrease = -1e9
        self.since: float | None = None
        self.floorSeq: int | None = None
        self.nextSeq = 0
        self.nextTs = 0
        self.switches: Counter = Counter()
        self.probing: int | None = None
        self.probeStart = 0.0
        self.probeRate = 0.0
        self.probeFrom = 0.0
        self.probeHeld: int | None = None
        self.padding = PaddingBudget()
        self.probes: Counter = Counter()
        self.probeFailedAt = -1e9
        self.tryNow = False
        self.rtt: float | None = None
        self._rtts: deque = deque()  # (when, rtt), rising: the window's minimum first
        self._lossMark: tuple | None = None
        self._lastLost = 0
        self._lastHighest: int | None = None
        self._probeMark: tuple | None = None

    @property
    def index(self) -> int | None:
        """The layer it gets or is about to get."""
        if self.target is not None:
            return self.target
        return self.layer.index if self.layer is not None else None

    def choose(self, now: float, rates: list[float], live: list[bool],
               canPad: bool = False) -> int | None:
        """
        The layer it should have now, given each layer's measured bitrate
        and liveness: the highest live one up to L{quality} that fits the
        estimate (with L{HEADROOM}), else the lowest live one.  Going down
        is at once once the estimate falls (L{FALLING}; or the layer
        stopped, or loss: L{SimulcastVideo.loss}); going up only after the better layer kept fitting for
        L{UP_DELAY} seconds, or (when the estimate is held down by what it
        gets, L{UNCONSTRAINED}) one layer up after L{probeDelay}.

        @param canPad: the subscriber takes padding (it negotiated RTX): a
            try up is a padding try (L{probing}) first, and the layer
            changes only when that held for L{PROBE_HOLD} seconds.
        @return: the index, or C{None} when no layer is live.
        """
        if self.since is None:
            self.since = now
        if self.decreased:
            self.lastDecrease = now
            self.decreased = False
        if (self.lastUp > max(self.lastDown, self.probeFailedAt)
                and now - self.lastUp >= PROBE_FAILED):
            self.probeDelay = PROBE_DELAY  # the last step up held
        top = min(self.quality, len(rates) - 1)
        candidates = [i for i in range(top + 1) if live[i]]
        if not candidates:
            candidates = [i for i in range(len(rates)) if live[i]]
            if not candidates:
                return None
            return candidates[0]
        current = self.index
        if self.probing is not None:
            if (self.lastDecrease >= self.probeStart or self.queueing > PROBE_QUEUE
                    or current is None
                    or self.probing not in candidates or self.probing <= current):
                held = self.probeFailed(now)
                if held is not None and held in candidates and current is not None \
                        and held > current:
                    return held  # the link carried that one
            elif now - self.probeStart >= PROBE_HOLD:
                higher = [i for i in candidates if i > self.probing]
                if higher:  # on to the next, from this one's rate
                    self.probeHeld = self.probing
                    self._try(now, higher[0], current, rates, True)
                    return current
                target, self.probing = self.probing, None
                self.probeHeld = None
                self.probes["held"] += 1
                self.betterSince = None
                return target
            else:
                return current
        unknown = self.estimate is None or now - self.since < ESTIMATE_GRACE
        if unknown:
            best = candidates[-1]
        else:
            fits = [i for i in candidates if rates[i] * HEADROOM <= self.estimate]
            best = fits[-1] if fits else candidates[0]
        if current is None and canPad:
            # its link is not known yet: it starts on the lowest layer and is
            # tried up with padding at once (a freeze behind a slow link
            # otherwise, while the top layer's queue drains)
            self.tryNow = True
            self.betterSince = None
            return candidates[0]
        falling = self.estimate is not None and (
            self.estimate < FALLING * self.peak
            or (self.lastDecrease >= self.lastUp and self.lastDecrease > self.probeFailedAt
                and now - self.lastUp <= PROBE_FAILED))
        if current is None or current not in candidates or (best < current and falling):
            self.betterSince = None
            return best
        lower = [i for i in candidates if i < current]
        if (lower and self.queueing > DOWN_QUEUE and self.target is None
                and now - self.lastDown >= DOWN_QUEUE_HOLD):
            # a queue is growing: the link does not carry this layer
            self.betterSince = None
            return lower[0] if self.starting(now) else lower[-1]
        if (lower and self.queueing > STEP_QUEUE and self.lastUp > self.lastDown
                and now - self.lastUp <= PROBE_FAILED):
            # the step up filled a queue: back
            self.betterSince = None
            return lower[-1]
        above = [i for i in candidates if i > current]
        climbing = self.lastUp > max(self.lastDown, self.lastDecrease, self.probeFailedAt)
        if not canPad and best <= current and above and climbing \
                and now - self.lastUp >= PROBE_FAILED:
            # the last step up held (no decrease since): the next one (a
            # padding try goes on to the next layer by itself)
            self.betterSince = None
            return above[0]
        if best < current and not canPad:
            return current
        if unknown and canPad:
            best = min(best, current)  # the padding tries find out
        if best <= current:
            # the estimate is held down by what we send: try one up, now and
            # then (with padding whatever the estimate: after a congestion it
            # climbs back a few per cent a second, and the try is safe)
            if canPad:  # a try with padding needs the layer it pads on
                mayTry = self.target is None
            else:
                mayTry = (self.estimate is not None
                          and self.estimate >= UNCONSTRAINED * rates[current])
            if above and rates[current] > 0 and mayTry:
                if self.tryNow or (self.betterSince is not None
                                   and now - self.betterSince >= self.probeDelay):
                    self.betterSince = None
                    self.tryNow = False
                    return self._try(now, above[0], current, rates, canPad)
                if self.betterSince is None:
                    self.betterSince = now
            else:
                self.betterSince = None
            return current
        if self.betterSince is None:
            self.betterSince = now
        if self.tryNow or now - self.betterSince >= UP_DELAY:
            self.betterSince = None
            self.tryNow = False
            return best
        return current

    def starting(self, now: float) -> bool:
        """Is it within L{START_WATCH} seconds of its start?"""
        return self.since is not None and now - self.since <= START_WATCH

    def _try(self, now: float, index: int, current: int, rates: list[float],
             canPad: bool) -> int:
        """Try layer C{index}: with padding when the subscriber takes it, else itself."""
        if not canPad:
            return index
        if self.probing is None:
            self.padding = PaddingBudget()
            self.probeFrom = 0.0
            self._probeMark = ((self._lastLost, self._lastHighest)
                               if self._lastHighest is not None else None)
        else:
            self.probeFrom = self.probeRate
        self.probing = index
        self.probeStart = now
        self.probeRate = max(0.0, rates[index] * HEADROOM - rates[current])
        return current

    def paddingRate(self, now: float) -> float:
        """
        The padding's bitrate now (bit/s): 0 unless trying, ramped up over
        L{PROBE_RAMP} to what the next layer needs beyond the current one
        (with L{HEADROOM}, as for a layer that fits an estimate).
        """
        if self.probing is None:
            return 0.0
        share = min(1.0, max(0.0, now - self.probeStart) / PROBE_RAMP)
        return self.probeFrom + (self.probeRate - self.probeFrom) * share

    def probeFailed(self, now: float) -> int | None:
        """
        The padding try failed (the estimate fell, loss, a queue): stop it;
        the next waits longer (up to L{PADDED_PROBE_MAX}).

        @return: the layer an earlier step of the try held for (it may go
            there), or C{None}.
        """
        if self.probing is None:
            return None
        held, self.probeHeld = self.probeHeld, None
        self.probing = None
        self.probeFailedAt = now
        self.probes["failed"] += 1
        self.probeDelay = min(PADDED_PROBE_MAX, self.probeDelay * 2)
        self.betterSince = None
        return held

    def setRoundTrip(self, now: float, rtt: float) -> None:
        """A round-trip time (seconds) from a receiver report."""
        if not 0 <= rtt < 10:
            return
        rtts = self._rtts
        while rtts and rtts[-1][1] >= rtt:
            rtts.pop()
        rtts.append((now, rtt))
        while rtts[0][0] < now - RTT_WINDOW:
            rtts.popleft()
        self.rtt = rtt

    @property
    def queueing(self) -> float:
        """Seconds the latest round trip took beyond the smallest of L{RTT_WINDOW}."""
        if self.rtt is None or not self._rtts:
            return 0.0
        return self.rtt - self._rtts[0][1]

    def received(self, now: float, lost: int, highest: int) -> tuple[float | None, bool]:
        """
        A receiver report's cumulative packets lost and extended highest
        sequence number.

        @return: the fraction lost over the last L{LOSS_WINDOW} seconds
            (C{None} until that passed), and whether the padding try (if
            any) lost too much (L{PROBE_LOSS}).
        """
        self._lastLost, self._lastHighest = lost, highest
        lossy = False
        if self.probing is not None:
            if self._probeMark is None:
                self._probeMark = (lost, highest)
            lostBefore, highestBefore = self._probeMark
            expected = highest - highestBefore
            lossy = (lost - lostBefore >= PROBE_LOSS_PACKETS and expected > 0
                     and (lost - lostBefore) / expected > PROBE_LOSS)
        if self._lossMark is None:
            self._lossMark = (now, lost, highest)
            return None, lossy
        start, lostBefore, highestBefore = self._lossMark
        if now - start < LOSS_WINDOW:
            return None, lossy
        self._lossMark = (now, lost, highest)
        expected = highest - highestBefore
        if expected <= 0:
            return None, lossy
        return max(0.0, min(1.0, (lost - lostBefore) / expected)), lossy

    def setEstimate(self, bitrate: float) -> None:
        """A new bandwidth estimate (bit/s)."""
        self.decreased = self.estimate is not None and bitrate < DECREASE * self.estimate
        self.estimate = float(bitrate)
        self.peak = max(self.peak, self.estimate)

    def wentUp(self, now: float) -> None:
        """It switched up: remember when, to tell a failed try."""
        self.peak = self.estimate or 0.0
        self.lastUp = now
        self.switches["up"] += 1

    def wentDown(self, now: float) -> None:
        """It switched down: a try up that failed soon makes the next one wait longer."""
        self.switches["down"] += 1
        self.lastDown = now
        self.peak = self.estimate or 0.0
        if now - self.lastUp <= PROBE_FAILED:
            self.probeDelay = min(PROBE_MAX, self.probeDelay * 2)
        self.betterSince = None
