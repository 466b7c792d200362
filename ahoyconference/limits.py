# -*- test-case-name: tests.test_api -*-
"""
Abuse limits with an injected clock: a token-bucket L{RateLimiter} (joins,
chat and the broadcasting or media requests, per connection) and
L{FailureBackoff} (wrong passwords per conference and client address).
"""

from __future__ import annotations

from ahoyconference.interfaces import ProtocolError


class RateLimited(ProtocolError):
    """
    503 because the client is over its own rate.  Only the first refusal of
    an episode is logged (L{first}); the others are counted.

    @ivar first: is this the first refusal since the client was last allowed?
    """

    def __init__(self, first: bool):
        super().__init__(503, detail="rate limited")
        self.first = first


class RateLimiter:
    """
    A token bucket: C{rate} events per second on average, bursts of C{burst}.
    A rate of 0 means no limit.

    @ivar limited: is the client in a refusal episode now?
    @ivar refusals: refusals in the current (or the last) episode.
    """

    def __init__(self, clock, rate: float, burst: float | None = None):
        self.clock = clock
        self.rate = rate
        self.burst = burst if burst is not None else max(1.0, rate * 2)
        self._tokens = self.burst
        self._last = clock.seconds()
        self.limited = False
        self.refusals = 0

    def allow(self) -> bool:
        """Take one token; C{False} when none is left."""
        if not self.rate:
            return True
        now = self.clock.seconds()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        if self._tokens < 1:
            self.limited = True
            return False
        self._tokens -= 1
        self.limited = False
        return True

    def check(self, onFirstRefusal=None, onEpisodeEnd=None) -> None:
        """
        @param onFirstRefusal: called once when the rate is first exceeded
            (again only after an event was allowed): for one log line per episode.
        @param onEpisodeEnd: called with the number of refusals when an
            event is allowed again after an episode.
        @raise RateLimited: 503 ("rate limited") when over the rate.
        """
        wasLimited = self.limited
        if not self.allow():
            first = not wasLimited
            if first:
                self.refusals = 0
                if onFirstRefusal is not None:
                    onFirstRefusal()
            self.refusals += 1
            raise RateLimited(first)
        if wasLimited and onEpisodeEnd is not None:
            onEpisodeEnd(self.refusals)


class FailureBackoff:
    """
    After C{failures} wrong passwords for the same key within C{window}
    seconds, refuse further attempts with 403 until C{window} seconds after
    the oldest of those C{failures} (refused attempts are not counted as
    failures, so the wait does not grow while the client keeps trying).  A
    limit of 0 disables it.
    """

    def __init__(self, clock, failures: int, window: float):
        self.clock = clock
        self.failures = failures
        self.window = window
        self._seen: dict[object, list[float]] = {}

    def _recent(self, key) -> list[float]:
        now = self.clock.seconds()
        times = [t for t in self._seen.get(key, ()) if now - t < self.window]
        if times:
            self._seen[key] = times
        else:
            self._seen.pop(key, None)
        return times

    def check(self, key) -> None:
        """@raise ProtocolError: 403 while the key is backing off."""
        if self.failures and len(self._recent(key)) >= self.failures:
            raise ProtocolError(403, detail="too many wrong passwords; wait")

    def failed(self, key) -> None:
        """Record one wrong password."""
        if self.failures:
            self._recent(key)
            self._seen.setdefault(key, []).append(self.clock.seconds())
            if len(self._seen) > 100_000:  # bound the memory an attacker can make us use
                self._seen.pop(next(iter(self._seen)))
