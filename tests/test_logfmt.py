"""
Tests for L{ahoyconference.logfmt}: JSON lines, and C{twistd
--logger=ahoyconference.logfmt.json} for real.
"""

from __future__ import annotations

import io
import json
import os
import re
import sys
import time
import urllib.request
from datetime import UTC, datetime

from twisted.logger import Logger, LogLevel
from twisted.python import log as legacyLog
from twisted.python.failure import Failure
from twisted.trial import unittest

from ahoyconference import logfmt
from tests.serverprocess import ServerProcess

TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


class Unprintable:
    def __repr__(self):
        raise RuntimeError("no repr")


class ObserverTests(unittest.TestCase):
    """One event in, one line of JSON out."""

    def setUp(self):
        self.out = io.StringIO()
        self.observer = logfmt.json(self.out)
        self.log = Logger(namespace="ahoyconference.test", observer=self.observer)

    def records(self) -> list[dict]:
        text = self.out.getvalue()
        self.assertTrue(text.endswith("\n"), repr(text))
        return [json.loads(line) for line in text[:-1].split("\n")]

    def test_fields(self):
        before = time.time()
        self.log.info("{who} joined {conference}", who="alice", conference="room-1", ip="192.0.2.1",
                      status=200, ratio=0.5, ok=True, nothing=None)
        (record,) = self.records()
        self.assertEqual(record["level"], "info")
        self.assertEqual(record["namespace"], "ahoyconference.test")
        self.assertEqual(record["message"], "alice joined room-1")
        self.assertEqual((record["who"], record["conference"], record["ip"], record["status"],
                          record["ratio"], record["ok"], record["nothing"]),
                         ("alice", "room-1", "192.0.2.1", 200, 0.5, True, None))
        self.assertRegex(record["time"], TIME)
        logged = datetime.strptime(record["time"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
        self.assertLess(abs(logged.timestamp() - before), 5)
        self.assertNotIn("log_format", record)
        self.assertNotIn("traceback", record)

    def test_levels(self):
        for level in LogLevel.iterconstants():
            self.log.emit(level, "at {name}", name=level.name)
        self.assertEqual([r["level"] for r in self.records()],
                         ["debug", "info", "warn", "error", "critical"])

    def test_failure(self):
        """A failure: its traceback, on the same line (newlines escaped)."""
        try:
            raise ZeroDivisionError("division by zero")
        except ZeroDivisionError:
            self.log.failure("while dividing {n}", n=1)
        self.assertEqual(self.out.getvalue().count("\n"), 1)
        (record,) = self.records()
        self.assertEqual(record["level"], "critical")
        self.assertEqual(record["message"], "while dividing 1")
        self.assertIn("ZeroDivisionError", record["traceback"])
        self.assertIn("Traceback", record["traceback"])

    def test_newlinesAndUnicode(self):
        self.log.info("two\nlines, {name}", name="Zoë ☎")
        self.assertEqual(self.out.getvalue().count("\n"), 1)
        (record,) = self.records()
        self.assertEqual(record["message"], "two\nlines, Zoë ☎")

    def test_otherValuesLeftOut(self):
        """Fields that are not JSON scalars stay out; the message still formats them."""
        self.log.info("got {thing}", thing=[1, 2], obj=object(), mapping={"a": 1})
        (record,) = self.records()
        self.assertEqual(record["message"], "got [1, 2]")
        for key in ("thing", "obj", "mapping"):
            self.assertNotIn(key, record)

    def test_unformattable(self):
        """A broken format or repr is still one valid line."""
        self.log.info("bad {", x=1)
        self.log.info("{thing}", thing=Unprintable())
        records = self.records()
        self.assertEqual(len(records), 2)
        self.assertIn("Unable to format event", records[0]["message"])
        self.assertIn("Unable to format event", records[1]["message"])

    def test_topKeysNotOverwritten(self):
        """An event field named like one of ours does not replace ours."""
        self.log.info("{namespace} {traceback}", namespace="mine", traceback="none")
        (record,) = self.records()
        self.assertEqual(record["namespace"], "ahoyconference.test")
        self.assertNotIn("traceback", record)
        self.assertEqual(record["message"], "mine none")

    def test_legacyEvents(self):
        """Events from twisted.python.log (old-style): message, isError, failure, system."""
        publisher = legacyLog.LogPublisher()
        publisher.addObserver(self.observer)
        publisher.msg("old", "style", system="HTTPChannel,0,127.0.0.1")
        try:
            raise ValueError("boom")
        except ValueError:
            publisher.msg(failure=Failure(), isError=1, why="while testing")
        records = self.records()
        self.assertEqual(records[0]["message"], "old style")
        self.assertEqual(records[0]["system"], "HTTPChannel,0,127.0.0.1")
        self.assertEqual(records[0]["level"], "info")
        self.assertEqual(records[1]["level"], "critical")
        self.assertIn("while testing", records[1]["message"])
        self.assertIn("ValueError: boom", records[1]["traceback"])

    def test_defaultStdout(self):
        """Without a file: the real standard output, which twistd does not redirect."""
        self.assertIs(logfmt.json().outFile, sys.__stdout__)


class TwistdLoggerTests(unittest.TestCase):
    """C{twistd --logger=ahoyconference.logfmt.json ahoyconference}, a real process."""

    def test_twistd(self):
        server = ServerProcess.twistd(os.path.abspath(self.mktemp()),
                                      twistdArgs=["--logger=ahoyconference.logfmt.json"]).start()
        self.addCleanup(server.stop)
        output = server.output
        port = None
        deadline = time.monotonic() + 60
        while port is None and time.monotonic() < deadline and server.returncode is None:
            match = re.search(r"Site starting on (\d+)", output())
            port = match and int(match.group(1))
            time.sleep(0.1)
        self.assertEqual(port, server.port, output())
        # Once the reactor serves a request, its signal handlers are in place.
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as response:
            self.assertEqual(response.status, 200)
        self.assertEqual(server.stop(60), 0, output())
        records = [json.loads(line) for line in output().splitlines()]
        self.assertTrue(all(set(r) >= {"time", "level", "namespace", "message"} for r in records))
        messages = [r["message"] for r in records]
        self.assertTrue(any(m.startswith("twistd ") and "starting up" in m for m in messages), messages)
        self.assertTrue(any('"GET /metrics HTTP/1.1" 200' in m for m in messages), messages)
        self.assertIn("Received SIGTERM, shutting down.", messages)
        self.assertEqual(messages[-1], "Server Shut Down.")
