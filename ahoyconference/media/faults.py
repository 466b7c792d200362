# -*- test-case-name: tests.test_media_engine -*-
"""
L{Faults}: failures on the media path are counted by kind (exported in
/metrics) and the first of each kind is logged with its traceback, so that
an upgrade or a bug that breaks the packet path is seen at once, and a flood
of the same failure does not flood the log (docs/architecture.md, "Loud
failures").
"""

from __future__ import annotations

from collections import Counter

from twisted.logger import LogLevel
from twisted.python.failure import Failure

from ahoyconference.logs import logger

_log = logger(__name__)


class SrtpStatusError(Exception):
    """libsrtp returned an error status (the zero-copy path calls it directly)."""


class Faults:
    """
    Unexpected failures on the media path.

    @ivar counts: C{where} → failures counted there (C{send}, C{receive}, …).
    """

    def __init__(self):
        self.counts: Counter = Counter()
        self._seen: set[tuple[str, type]] = set()

    def error(self, where: str, exception: BaseException) -> None:
        """
        Count a failure at C{where}; log it with its traceback if it is the
        first of its kind (C{where} and exception type) in this process.
        Socket errors (a full buffer) are logged as warnings, others as
        errors.
        """
        self.counts[where] += 1
        kind = (where, type(exception))
        if kind in self._seen:
            return
        self._seen.add(kind)
        level = LogLevel.warn if isinstance(exception, OSError) else LogLevel.error
        _log.failure("media path: first {exception} at {where} (later ones are only counted: "
                     "ahoy_media_errors_total in /metrics)",
                     Failure(exception, type(exception), exception.__traceback__), level=level,
                     where=where, exception=type(exception).__name__)
