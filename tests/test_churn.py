# -*- test-case-name: tests.test_churn -*-
"""
A small run of the churn soak (C{bench/churn.py}): 200 connect / create /
join / share / leave / disconnect cycles against a real C{twistd}
subprocess, every 10th with real aiortc media (ICE + DTLS up, packets
through the server), the others signalling only (offers made, canned
answers applied, leaves, vanishing sockets).  Afterwards the server process
must be back to its baseline: file descriptors, peer connections, members,
connections, asyncio tasks and live aiortc objects; resident memory may
grow, within a generous bound (allocator caches, not a leak per cycle).

The long run (10,000 cycles) and its figures: docs/reliability.md.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys

from twisted.trial.unittest import TestCase

from tests.helpers import asyncTest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CYCLES = 200
RSS_GROWTH_KIB = 64 * 1024


class ChurnTests(TestCase):
    timeout = 170

    @asyncTest
    async def test_churnBackToBaseline(self):
        out = os.path.abspath(self.mktemp())
        proc = await asyncio.create_subprocess_exec(
            sys.executable, os.path.join(ROOT, "bench", "churn.py"), "--cycles", str(CYCLES),
            "--media-every", "10", "--report-every", "0", "--quiet", "--json", out,
            "--workdir", os.path.abspath(self.mktemp()), cwd=ROOT,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        try:
            _, err = await asyncio.wait_for(proc.communicate(), 150)
        finally:
            if proc.returncode is None:  # by PID: SIGTERM lets it stop its twistd
                proc.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(proc.wait(), 30)
                except TimeoutError:
                    proc.kill()
                    await proc.wait()
        self.assertEqual(proc.returncode, 0, err.decode(errors="replace")[-3000:])
        with open(out) as f:
            result = json.load(f)
        base, after = result["baseline"], result["after"]
        self.assertEqual(result["failures"], [])
        self.assertEqual(result["done"]["media"] + result["done"]["signalling"], CYCLES + 10)
        self.assertGreaterEqual(result["done"]["media"], CYCLES // 10)
        self.assertGreater(result["sink_datagrams"], 0)  # the server ran ICE toward the sink
        self.assertEqual(result["exit_status"], 0)
        for name in ("peer_connections", "members", "connections"):
            self.assertEqual(after[name], 0, name)
        self.assertEqual(after["conferences"], 1)  # the permanent room; the others idled out
        self.assertLessEqual(after["fds"], base["fds"] + 2, (base["fds"], after["fds"]))
        self.assertLessEqual(after["tasks"], base["tasks"] + 2, (base["tasks"], after["tasks"]))
        for name in ("RTCPeerConnection", "RTCDtlsTransport", "InStream", "OutStream", "Member"):
            self.assertEqual(after["objects"][name], 0, (name, after["objects"]))
        self.assertLess(after["rss_kib"] - base["rss_kib"], RSS_GROWTH_KIB,
                        (base["rss_kib"], after["rss_kib"]))
        self.assertEqual(after["tracebacks"], 0, result["log"])
