# -*- test-case-name: tests.test_bench -*-
"""
A smoke test of the benchmark harness (C{bench/load.py}): one publisher, two
subscribers, for a few seconds, against an in-process server with the aiortc
media engine (never against Janus).  It checks that packets arrive and that
the JSON result has every field C{bench/report.py} reads; there is no speed
bound (speed is bench/'s business, docs/architecture.md, Tests).

The load generator runs as a subprocess (it patches aiortc and aioice when
imported, which must not leak into this process); all media stays on
127.0.0.1.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import sys

from twisted.internet import defer
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial import unittest

from tests.helpers import Server, asyncTest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "bench")

# Skipped only when the module does not exist; if it exists but fails to
# import, the test fails (Server(engine="aiortc") imports it).
ENGINE_MISSING = None
if importlib.util.find_spec("ahoyconference.media.engine") is None:
    ENGINE_MISSING = "the media engine module ahoyconference.media.engine is missing"


def forwardingFields() -> tuple[str, ...]:
    """bench/fields.py's list, loaded by path (bench/ is not a package)."""
    spec = importlib.util.spec_from_file_location("bench_fields", os.path.join(BENCH, "fields.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.FORWARDING_FIELDS


class LoadGeneratorSmokeTests(unittest.TestCase):
    """bench/load.py against AhoyConference, 1 publisher x 2 subscribers."""

    if ENGINE_MISSING:
        skip = ENGINE_MISSING

    timeout = 120

    @asyncTest
    async def test_forwarding_1x2(self):
        """
        Packets of both kinds reach both subscribers and the result line has
        every field (no bound on speed or loss: the machine may be busy).
        """
        work = os.path.abspath(self.mktemp())
        os.makedirs(work)
        out = os.path.join(work, "result.jsonl")
        server = await Server(engine="aiortc").start()
        try:
            args = [
                os.path.join(BENCH, "load.py"), "--sfu", "ahoy", "--url", server.url,
                "--room", "bench-smoke", "-P", "1", "-S", "2", "-T", "3", "--warmup", "1",
                "--clip-seconds", "2", "--media-cache", os.path.join(work, "media.pkl"),
                "--server-pid", str(os.getpid()), "--no-mlock", "--step-timeout", "30",
                "--max-run", "90", "--per-sub", "--out", out,
            ]
            stdout, stderr, code = await defer.Deferred.asFuture(
                getProcessOutputAndValue(sys.executable, args, env=dict(os.environ), path=ROOT),
                asyncio.get_event_loop())
        finally:
            await server.stop()
        self.assertEqual(code, 0, stderr.decode(errors="replace")[-3000:])
        with open(out) as f:
            result = json.loads(f.read().strip().splitlines()[-1])
        missing = [k for k in forwardingFields() if k not in result]
        self.assertEqual(missing, [])
        self.assertEqual((result["sfu"], result["publishers"], result["subscribers"]), ("ahoy", 1, 2))
        self.assertGreater(result["pub_packets_sent"]["audio"], 0)
        self.assertGreater(result["pub_packets_sent"]["video"], 0)
        self.assertGreater(result["fwd_by_kind"]["audio"], 0)
        self.assertGreater(result["fwd_by_kind"]["video"], 0)
        self.assertGreater(result["fwd_pps"], 0)
        self.assertIsNotNone(result["server_us_per_fwd_pkt"])
        for sub in result["per_sub"]:
            self.assertGreater(sub["got"]["audio"], 0)
            self.assertGreater(sub["got"]["video"], 0)
