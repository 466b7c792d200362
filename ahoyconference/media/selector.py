# -*- test-case-name: tests.test_simulcast -*-
"""
L{Selector}: one subscriber's choice of simulcast layer (docs/architecture.md,
"Simulcast"): the highest that fits its bandwidth estimate and what it asked
for; down at once when the estimate falls, up slowly, and now and then a
try at the next layer up (a receiver's REMB cannot show that a link got
better).  Pure logic: time is passed in.
"""

from __future__ import annotations

from collections import Counter

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

    @property
    def index(self) -> int | None:
        """The layer it gets or is about to get."""
        if self.target is not None:
            return self.target
        return self.layer.index if self.layer is not None else None

    def choose(self, now: float, rates: list[float], live: list[bool]) -> int | None:
        """
        The layer it should have now, given each layer's measured bitrate
        and liveness: the highest live one up to L{quality} that fits the
        estimate (with L{HEADROOM}), else the lowest live one.  Going down
        is at once once the estimate falls (L{FALLING}; or the layer
        stopped, or loss: L{SimulcastVideo.loss}); going up only after the better layer kept fitting for
        L{UP_DELAY} seconds, or (when the estimate is held down by what it
        gets, L{UNCONSTRAINED}) one layer up after L{probeDelay}.

        @return: the index, or C{None} when no layer is live.
        """
        if self.since is None:
            self.since = now
        if self.decreased:
            self.lastDecrease = now
            self.decreased = False
        if self.lastUp > self.lastDown and now - self.lastUp >= PROBE_FAILED:
            self.probeDelay = PROBE_DELAY  # the last step up held
        top = min(self.quality, len(rates) - 1)
        candidates = [i for i in range(top + 1) if live[i]]
        if not candidates:
            candidates = [i for i in range(len(rates)) if live[i]]
            if not candidates:
                return None
            return candidates[0]
        current = self.index
        if self.estimate is None or now - self.since < ESTIMATE_GRACE:
            best = candidates[-1]
        else:
            fits = [i for i in candidates if rates[i] * HEADROOM <= self.estimate]
            best = fits[-1] if fits else candidates[0]
        falling = self.estimate is not None and (
            self.estimate < FALLING * self.peak
            or (self.lastDecrease >= self.lastUp and now - self.lastUp <= PROBE_FAILED))
        if current is None or current not in candidates or (best < current and falling):
            self.betterSince = None
            return best
        above = [i for i in candidates if i > current]
        climbing = self.lastUp > max(self.lastDown, self.lastDecrease)
        if best <= current and above and climbing and now - self.lastUp >= PROBE_FAILED:
            # the last step up held (no decrease since): the next one
            self.betterSince = None
            return above[0]
        if best < current:
            return current
        if best == current:
            if (above and self.estimate is not None and rates[current] > 0
                    and self.estimate >= UNCONSTRAINED * rates[current]):
                # the estimate is held down by what we send: try one up, now and then
                if self.betterSince is None:
                    self.betterSince = now
                elif now - self.betterSince >= self.probeDelay:
                    self.betterSince = None
                    return above[0]
            else:
                self.betterSince = None
            return current
        if self.betterSince is None:
            self.betterSince = now
        if now - self.betterSince >= UP_DELAY:
            self.betterSince = None
            return best
        return current

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
