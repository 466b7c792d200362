# -*- test-case-name: tests.test_capacity -*-
"""
The machine-capacity bench (C{bench/capacity.py}, issue 17): its load worker
(C{bench/capworker.py}) driven over its pipes against a real server with the
aiortc media engine, and the rules that decide whether a step was carried.
No bound on speed or loss (speed is bench/'s business).

The worker runs as a subprocess (it patches aiortc when imported, which must
not leak into this process); all media stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import sys

from twisted.trial import unittest

from tests.helpers import Server, asyncTest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "bench")

ENGINE_MISSING = None
if importlib.util.find_spec("ahoyconference.media.engine") is None:
    ENGINE_MISSING = "the media engine module ahoyconference.media.engine is missing"


def capacityModule():
    """bench/capacity.py, loaded by path (bench/ is not a package)."""
    sys.path.insert(0, BENCH)
    try:
        spec = importlib.util.spec_from_file_location("bench_capacity",
                                                      os.path.join(BENCH, "capacity.py"))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(BENCH)
    return module


class WorkerTests(unittest.TestCase):
    """bench/capworker.py: one room of 1 publisher x 2 subscribers, one window."""

    if ENGINE_MISSING:
        skip = ENGINE_MISSING

    timeout = 120

    @asyncTest
    async def test_oneRoom(self):
        """
        The worker says hello, sets the room up (no redirect on a lone
        server), measures between start and stop, and reports packets of
        both kinds for its one room; quit ends it with status 0.
        """
        work = os.path.abspath(self.mktemp())
        os.makedirs(work)
        server = await Server(engine="aiortc").start()
        errPath = os.path.join(work, "worker.err")
        err = open(errPath, "wb")
        self.addCleanup(err.close)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, os.path.join(BENCH, "capworker.py"), "--sfu", "ahoy",
            "--url", server.url, "-S", "2", "--server-pid", str(os.getpid()), "--no-mlock",
            "--clip-seconds", "2", "--media-cache", os.path.join(work, "media.pkl"),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=err, cwd=ROOT)

        async def event() -> dict:
            line = await asyncio.wait_for(proc.stdout.readline(), 60)
            if not line:
                with open(errPath, "rb") as f:
                    self.fail(f.read().decode(errors="replace")[-3000:])
            return json.loads(line)

        def send(**cmd) -> None:
            proc.stdin.write((json.dumps(cmd) + "\n").encode())

        try:
            self.assertEqual((await event())["event"], "hello")
            send(cmd="room", room="cap-test")
            room = await event()
            self.assertEqual((room["event"], room["ok"], room["room"]), ("room", True, "cap-test"))
            self.assertEqual((room["node"], room["redirects"]), (server.url, []))
            send(cmd="start")
            self.assertEqual(await event(), {"event": "started", "rooms": 1})
            await asyncio.sleep(2)
            send(cmd="stop")
            result = await event()
            send(cmd="quit")
            code = await asyncio.wait_for(proc.wait(), 30)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            await server.stop()
        self.assertEqual(code, 0)
        self.assertEqual((result["event"], result["rooms"], result["subscribers"]),
                         ("result", 1, 2))
        self.assertGreater(result["fwd_by_kind"]["audio"], 0)
        self.assertGreater(result["fwd_by_kind"]["video"], 0)
        self.assertGreater(result["media_recv"], 0)
        self.assertGreater(result["seq_expected"], 0)
        self.assertGreater(result["sent_fanout"], 0)
        self.assertGreater(result["pub_sent"], 0)


def record(**over) -> dict:
    """A measured step with nothing wrong; C{over} changes some fields."""
    rec = {"target": "1node", "rooms": 4, "attempt": 1, "carried": False, "limit": None,
           "notes": [], "loadgen_loop_lag_ms_max": 20.0, "publisher_late_resets": 0,
           "udp_drops": {"server": 0, "loadgen": 0}, "shortfall_pct": 0.01,
           "loss_pct_seq_gaps": 0.0, "server_cpu_pct_by_pid": {"1": 40.0},
           "machine_cpu_pct_of_all_cores": 60.0}
    rec.update(over)
    return rec


class VerdictTests(unittest.TestCase):
    """capacity.verdict: carried or not, and what limited the step."""

    def setUp(self):
        self.capacity = capacityModule()
        self.args = argparse.Namespace(loss_tolerance=0.1)

    def judged(self, **over) -> dict:
        rec = record(**over)
        self.capacity.verdict(rec, self.args)
        return rec

    def test_clean(self):
        """No loss, the load generator kept up, the node has room: carried, no limit."""
        rec = self.judged()
        self.assertEqual((rec["carried"], rec["limit"], rec["notes"]), (True, None, []))

    def test_tolerance(self):
        """Loss up to the tolerance is carried; above it the target lost packets."""
        self.assertTrue(self.judged(loss_pct_seq_gaps=0.1)["carried"])
        rec = self.judged(loss_pct_seq_gaps=0.4)
        self.assertEqual((rec["carried"], rec["limit"]), (False, "target loss"))

    def test_generator(self):
        """A load generator that fell behind makes the step not carried, and says
        it was the load generator, whatever the loss."""
        for over in ({"loadgen_loop_lag_ms_max": 400.0}, {"publisher_late_resets": 2},
                     {"udp_drops": {"server": 0, "loadgen": 5}}, {"shortfall_pct": 3.0},
                     {"loss_pct_seq_gaps": 2.0, "udp_drops": {"server": 0, "loadgen": 900}}):
            rec = self.judged(**over)
            self.assertEqual((rec["carried"], rec["limit"]), (False, "load generator"), over)

    def test_targetSocketsDropped(self):
        """Loss with kernel drops on the target's own sockets is the target's,
        even when the load generator also lagged; a shortfall that the
        sequence gaps explain is loss, not a backlog."""
        rec = self.judged(loss_pct_seq_gaps=30.0, shortfall_pct=31.0,
                          udp_drops={"server": 4000, "loadgen": 0},
                          loadgen_loop_lag_ms_max=300.0)
        self.assertEqual((rec["carried"], rec["limit"]), (False, "target loss"))
        self.assertIn("4000 kernel drops on the target's sockets", rec["notes"])

    def test_saturatedNode(self):
        """An AhoyConference process at 90 % of its core carried the step but is
        at its limit; Janus spreads over the cores and is not judged so."""
        rec = self.judged(server_cpu_pct_by_pid={"1": 50.0, "2": 93.0})
        self.assertEqual((rec["carried"], rec["limit"]), (True, "target CPU"))
        rec = self.judged(target="janus", server_cpu_pct_by_pid={"1": 130.0})
        self.assertEqual((rec["carried"], rec["limit"]), (True, None))


class LadderTests(unittest.TestCase):
    """capacity.best: the largest step carried, and the step that stopped it."""

    def setUp(self):
        self.capacity = capacityModule()

    def test_lastAttemptCounts(self):
        """A step run twice is judged by its second attempt; the ladder stops at
        the first step not carried."""
        records = [record(rooms=4, carried=True), record(rooms=8, carried=True),
                   record(rooms=12, carried=False), record(rooms=12, attempt=2, carried=True),
                   record(rooms=16, carried=False), record(rooms=4, target="janus", carried=True)]
        best, stop = self.capacity.best(records, "1node")
        self.assertEqual((best["rooms"], best["attempt"], stop["rooms"]), (12, 2, 16))

    def test_noneCarried(self):
        """A target that carried nothing has no best step."""
        best, stop = self.capacity.best([record(rooms=4, carried=False)], "1node")
        self.assertEqual((best, stop["rooms"]), (None, 4))
