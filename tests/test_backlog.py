"""
One connection's backlog (issue 14, docs/reliability.md): frames wait behind
a slow request (here a policy that asks a web service and has not answered
yet).  What waits is bounded by C{[limits] max_queued_requests} and
C{max_queued_bytes}: over half, the server stops reading the socket; over
the whole, it closes the connection with 1008.  Frames of a connection that
has gone never run.  The others in the room are served throughout.
"""

from __future__ import annotations

import asyncio
import json
import resource

from twisted.internet import defer
from twisted.trial import unittest

from ahoyconference.config import Limits
from ahoyconference.policy import PasswordPolicy
from tests.helpers import Client, Server, asyncTest, createAndJoin, join, testConfig


class SlowPolicy(PasswordPolicy):
    """
    Creating a conference whose ID starts with C{slow} waits until the test
    fires its gate, as a policy waiting for a web service would.
    """

    def __init__(self):
        self.gates: list[defer.Deferred] = []

    def mayCreate(self, client, settings):
        if settings.conferenceID.startswith("slow"):
            gate = defer.Deferred()
            self.gates.append(gate)
            return gate
        return None

    def release(self) -> None:
        """Answer every waiting create."""
        gates, self.gates = self.gates, []
        for gate in gates:
            gate.callback(None)


def rssBytes() -> int:
    """This process's resident memory now."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def chat(i: int, size: int) -> str:
    return json.dumps({"messageType": "CHAT_MESSAGE_request", "transactionID": f"c{i}",
                       "message": {"text": "x" * size}})


class BacklogTests(unittest.TestCase):
    """A client with one slow request and a stream of frames behind it."""

    limits = Limits(join_rate=0, chat_rate=0, max_connections_per_ip=0,
                    max_conferences_per_client=0, policy_timeout=60.0)

    async def room(self, **connect):
        policy = SlowPolicy()
        s = await Server(config=testConfig(limits=self.limits), policy=policy).start()
        self.addCleanup(lambda: defer.Deferred.fromFuture(asyncio.ensure_future(s.stop())))
        alice, _ = await createAndJoin(s.url, "room", "alice")
        bob, _ = await join(s.url, "room", "bob")
        self.addCleanup(lambda: defer.Deferred.fromFuture(asyncio.ensure_future(bob.close())))
        self.addCleanup(lambda: defer.Deferred.fromFuture(asyncio.ensure_future(alice.close())))
        attacker = await Client.connect(s.url, **connect)
        await attacker.send({"messageType": "CONFERENCE_CREATE_request", "conferenceID": "slow-1",
                             "transactionID": "slow"})
        for _ in range(100):
            if policy.gates:
                break
            await asyncio.sleep(0.01)
        self.assertEqual(len(policy.gates), 1)
        session = next(x for x in s.service.sessions if x.member is None)
        return s, policy, alice, bob, attacker, session

    async def stillServed(self, alice, bob, text):
        r = await alice.request("CHAT_MESSAGE_request", message={"text": text})
        self.assertEqual(r["status"], 200)
        got = await bob.expect("CHAT_MESSAGE_indication")
        self.assertEqual(got["message"]["text"], text)

    @asyncTest
    async def test_largeFramesPauseReading(self):
        """
        400 frames of 50 kB (20 MB) behind a pending create: the server stops
        reading at half the bound, so at most about C{max_queued_requests/2}
        frames and C{max_queued_bytes} bytes wait (without the bound: all 400,
        20 MB).  When the create is answered, everything is answered in order.
        """
        # Uncompressed, so that one read of the socket holds at most two
        # frames (compressed, hundreds fit: that is the hard bound's case).
        s, policy, alice, bob, attacker, session = await self.room(compression=None)
        count, size = 400, 50_000
        frames = [chat(i, size) for i in range(count)]
        before = rssBytes()
        sender = asyncio.ensure_future(self._sendAll(attacker, frames))
        peak = peakBytes = 0
        stable = 0
        while stable < 20 and not sender.done():
            waiting = len(session._lock.waiting)
            stable = stable + 1 if waiting == peak else 0
            peak = max(peak, waiting)
            peakBytes = max(peakBytes, getattr(session, "_queuedBytes", waiting * size))
            await asyncio.sleep(0.05)
        grown = rssBytes() - before
        print(f"\n  backlog: {peak} frames, {peakBytes} bytes queued; RSS +{grown / 2**20:.1f} MiB")
        await self.stillServed(alice, bob, "during")
        self.assertLessEqual(peak, self.limits.max_queued_requests // 2 + 1)
        self.assertLessEqual(peakBytes, self.limits.max_queued_bytes)
        self.assertEqual(s.service.counters["backlog"]["paused"], 1)
        policy.release()
        await asyncio.wait_for(sender, 60)
        created = await attacker.expect("CONFERENCE_CREATE_response", transactionID="slow",
                                        timeout=30)
        self.assertEqual(created["status"], 200)
        for i in range(count):  # not joined: 409 each, in order, none lost
            r = await attacker.expect("CHAT_MESSAGE_response", timeout=30)
            self.assertEqual((r["transactionID"], r["status"]), (f"c{i}", 409))
        self.assertEqual(len(session._lock.waiting), 0)
        await attacker.close()
        await self.stillServed(alice, bob, "after")

    async def _sendAll(self, client, frames):
        for frame in frames:
            await client.sendRaw(frame)

    @asyncTest
    async def test_floodOverHardBound(self):
        """
        5,000 small frames written at once reach the server faster than it
        can stop reading: past C{max_queued_requests} the connection is closed
        with 1008 and none of the queued frames runs; the room is served.
        """
        s, policy, alice, bob, attacker, session = await self.room()
        frames = [json.dumps({"messageType": "CONFERENCE_CREATE_request",
                              "transactionID": f"f{i}", "conferenceID": f"flood-{i}"})
                  for i in range(5000)]
        try:
            for frame in frames:
                await attacker.sendRaw(frame)
        except Exception:
            pass  # the server may close while we write
        code = await asyncio.wait_for(attacker.closed, 30)
        peak = len(session._lock.waiting)
        print(f"\n  flood: closed with {code}; {peak} frames left queued")
        self.assertEqual(code, 1008)
        self.assertLessEqual(peak, self.limits.max_queued_requests)
        await self.stillServed(alice, bob, "after the flood")
        policy.release()
        await asyncio.sleep(0.2)
        self.assertEqual([cid for cid in s.service.conferences if cid.startswith("flood")], [])
        self.assertEqual(s.service.counters["backlog"]["dropped_connections"], 1)
        self.assertGreater(s.service.counters["backlog"]["stale_frames"], 0)
        self.assertFalse(attacker.received)  # not even the queued creates were answered

    @asyncTest
    async def test_queuedFramesOfAGoneConnectionDoNotRun(self):
        """
        A CREATE queued behind a slow one, then the connection closes: when
        the slow one is answered, the queued CREATE does not create anything.
        """
        s, policy, alice, bob, attacker, session = await self.room()
        await attacker.send({"messageType": "CONFERENCE_CREATE_request",
                             "conferenceID": "queued-room"})
        await attacker.send({"messageType": "CHAT_MESSAGE_request", "message": {"text": "x"}})
        for _ in range(100):
            if len(session._lock.waiting) == 2:
                break
            await asyncio.sleep(0.01)
        self.assertEqual(len(session._lock.waiting), 2)
        await attacker.close()
        for _ in range(300):
            if session not in s.service.sessions:
                break
            await asyncio.sleep(0.01)
        self.assertNotIn(session, s.service.sessions)
        policy.release()
        await asyncio.sleep(0.2)
        self.assertNotIn("queued-room", s.service.conferences)
        self.assertEqual(s.service.counters["backlog"]["stale_frames"], 2)
        await self.stillServed(alice, bob, "after")
        self.assertEqual(sorted(m.name for m in s.service.conferences["room"].members.values()),
                         ["alice", "bob"])
