# -*- test-case-name: tests.test_logs -*-
"""
Our loggers, behind one level filter.

twistd logs every event it is given, debug included; our debug events (a
refused garbage frame, an SDP's size) would let one bad client flood an
operator's log.  Every module of ours logs through L{logger}, whose events
pass L{levels} (C{info} by default; C{[server] log_level} changes it)
before they reach twistd's observers.
"""

from __future__ import annotations

from twisted.logger import (
    FilteringLogObserver,
    Logger,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogPublisher,
)

#: The filter of our events; L{setLevel} changes it.
levels = LogLevelFilterPredicate(defaultLogLevel=LogLevel.info)
_observer = FilteringLogObserver(globalLogPublisher, [levels])

LEVEL_NAMES = ("debug", "info", "warn", "error", "critical")


def logger(namespace: str) -> Logger:
    """A L{Logger} for a module of ours, behind the level filter."""
    return Logger(namespace=namespace, observer=_observer)


def setLevel(name: str) -> None:
    """
    Let our events of this level and above through.

    @param name: one of L{LEVEL_NAMES}.
    """
    levels.setLogLevelForNamespace("", LogLevel.levelWithName(name))
