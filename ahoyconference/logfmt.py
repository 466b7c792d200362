# -*- test-case-name: tests.test_logfmt -*-
"""
Log formats for machines: one JSON object per line.

C{twistd --logger=ahoyconference.logfmt.json ahoyconference ...} makes
twistd call L{json} with no argument and log every event to standard output
as one line of JSON (what journald, Loki, Elasticsearch and C{jq} read)::

    {"time": "2026-11-25T02:13:15.123Z", "level": "info",
     "namespace": "ahoyconference.service", "message": "configuration reloaded: 2 permanent room(s)",
     "rooms": 2}

Keys: C{time} (UTC, ISO 8601, milliseconds), C{level} (debug, info, warn,
error, critical), C{namespace} (the emitting module or class), C{system}
(Twisted's log system, when it has one), C{message} (the formatted text),
C{traceback} (when the event carries a failure), then the event's own fields
whose values are JSON scalars (strings, numbers, booleans, null), e.g.
C{ip}, C{status}; fields named like a key above are left out.
"""

from __future__ import annotations

import json as _json
import sys
from datetime import UTC, datetime
from typing import IO

from twisted.logger import ILogObserver, LogLevel, formatEvent
from zope.interface import implementer

#: Keys of a Twisted log event that are Twisted's own bookkeeping (the new
#: C{log_*} ones are skipped by prefix), or old-style fields folded into
#: C{message} and C{traceback}.
_LEGACY = frozenset({"message", "format", "isError", "time", "system", "why", "failure", "printed"})
_TOP = ("time", "level", "namespace", "system", "message", "traceback")


def _timestamp(seconds: float | None) -> str:
    when = datetime.fromtimestamp(seconds if seconds is not None else 0, tz=UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


def _level(event: dict) -> str:
    level = event.get("log_level")
    if isinstance(level, type(LogLevel.info)):
        return level.name
    if event.get("isError"):
        return LogLevel.error.name
    return LogLevel.info.name


def _traceback(event: dict) -> str | None:
    failure = event.get("log_failure") or event.get("failure")
    if failure is None:
        return None
    try:
        return failure.getTraceback()
    except Exception:
        return repr(failure)


def eventAsLine(event: dict) -> str:
    """
    One event as one line of JSON (no newline inside: newlines in the message
    or the traceback are escaped).
    """
    record: dict = {
        "time": _timestamp(event.get("log_time", event.get("time"))),
        "level": _level(event),
        "namespace": event.get("log_namespace", "log_legacy"),
    }
    system = event.get("log_system", event.get("system"))
    if isinstance(system, str) and system != "-":
        record["system"] = system
    try:
        message = formatEvent(event)
    except Exception as e:  # formatEvent already guards; belt and braces
        message = f"unformattable event: {e!r}"
    why = event.get("why")
    if not message and isinstance(why, str):
        message = why
    record["message"] = message
    traceback = _traceback(event)
    if traceback:
        record["traceback"] = traceback
    for key, value in event.items():
        if key.startswith("log_") or key in _LEGACY or key in _TOP:
            continue
        if value is None or isinstance(value, (str, int, float, bool)):
            record[key] = value
    return _json.dumps(record, ensure_ascii=False, separators=(",", ":"), default=str)


@implementer(ILogObserver)
class JSONLinesObserver:
    """Writes each event as one line of JSON to a text file, flushing each."""

    def __init__(self, outFile: IO[str]):
        self.outFile = outFile

    def __call__(self, event: dict) -> None:
        try:
            line = eventAsLine(event)
        except Exception as e:
            line = _json.dumps({"time": _timestamp(event.get("log_time")), "level": "error",
                                "namespace": __name__, "message": f"unloggable event: {e!r}"})
        self.outFile.write(line + "\n")
        self.outFile.flush()


def json(outFile: IO[str] | None = None) -> JSONLinesObserver:
    """
    The log observer factory for C{twistd --logger=ahoyconference.logfmt.json}:
    JSON lines to C{outFile}, by default the process's real standard output
    (C{sys.__stdout__}, which twistd's redirection of C{sys.stdout} into the
    log does not touch).  twistd's C{--logfile} does not apply to it.
    """
    return JSONLinesObserver(outFile if outFile is not None else sys.__stdout__)
