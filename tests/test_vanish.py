# -*- test-case-name: tests.test_vanish -*-
"""
Clients that vanish mid-call: a publisher and a subscriber run as separate
processes (L{tests.peer_process}, real aiortc peers speaking the protocol
over WebSocket) and are killed with SIGKILL while media flows.  The kernel
closes a dead process's TCP connection, so the server sees the WebSocket
close at once (a connection that lingers without its process would take
the WebSocket ping timeout of ahoyconference.protocol; not waited for here).

The member is removed, the others are told (C{CONFERENCE_LEAVE_indication},
and C{MEDIA_indication} with C{available: false} for a publisher,
protocol.md 4.5), and everything the server held for it is freed: peer
connections (C{engine.stats()}), UDP sockets and file descriptors of the
server process (counted in C{/proc/self}), asyncio tasks.

Run with C{trial --reactor=asyncio}.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys

from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase

from tests.helpers import Server, asyncTest, createAndJoin
from tests.mediaclients import waitFor
from tests.reliability import ErrorCapture, openFds, udpSockets
from tests.test_media_engine import loopbackOnly

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class PeerProcess:
    """A L{tests.peer_process} subprocess and what it reported."""

    def __init__(self, proc):
        self.proc = proc
        self.events: list[dict] = []
        self.reader = asyncio.ensure_future(self._read())

    @classmethod
    async def start(cls, *args) -> PeerProcess:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.peer_process", *args, cwd=ROOT,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
        return cls(proc)

    async def _read(self) -> None:
        while True:
            line = await self.proc.stdout.readline()
            if not line:
                return
            self.events.append(json.loads(line))

    def last(self, event: str) -> dict | None:
        return next((e for e in reversed(self.events) if e["event"] == event), None)

    async def waitFor(self, event: str, timeout: float = 60, **match) -> dict:
        def found():
            e = self.last(event)
            return e is not None and all(e.get(k, 0) >= v for k, v in match.items())

        await waitFor(lambda: found() or self.proc.returncode is not None, timeout=timeout,
                      what=f"{event} {match} from {self.proc.pid}")
        if not found():
            raise AssertionError(f"peer process exited {self.proc.returncode}: {self.events}")
        return self.last(event)

    async def kill(self) -> None:
        """SIGKILL, by PID; reap it."""
        if self.proc.returncode is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        await self.proc.wait()
        await self.reader


class VanishTests(TestCase):
    """kill -9 of a publisher's and a subscriber's process mid-call."""

    timeout = 110

    def setUp(self):
        loopbackOnly(self)
        self.errors = ErrorCapture(self)

    async def start(self):
        """The server, and Carol, joined, watching."""
        server = await Server(engine="aiortc").start()
        self.server = server
        self.engine = server.service.engine
        self.processes: list[PeerProcess] = []
        carol, joined = await createAndJoin(server.url, "room", "carol")
        self.carolID = joined["memberID"]

        async def cleanup():
            for p in self.processes:
                await p.kill()
            await carol.close()
            await server.stop()

        self.addCleanup(lambda: Deferred.fromFuture(asyncio.ensure_future(cleanup())))
        await asyncio.sleep(0.2)
        return carol

    async def peer(self, *args) -> PeerProcess:
        p = await PeerProcess.start(self.server.url, "room", *args)
        self.processes.append(p)
        return p

    def baseline(self) -> dict:
        return {"udp": udpSockets(), "fds": openFds(), "tasks": len(asyncio.all_tasks())}

    @asyncTest
    async def test_killSubscriberThenPublisher(self):
        """
        SIGKILL the subscriber's process mid-call: it is removed, Carol is
        told, its subscription's peer connection is closed and its UDP
        sockets freed while the publisher goes on.  Then SIGKILL the
        publisher's process: the same; the server process is back to what it
        had before either came.
        """
        carol = await self.start()
        before = self.baseline()
        self.assertEqual(self.engine.stats()["peer_connections"], {})

        publisher = await self.peer("pete", "--publish", "--tag", "7")
        peteID = (await publisher.waitFor("joined"))["memberID"]
        await publisher.waitFor("connected")
        subscriber = await self.peer("sam", "--subscribe-to", "pete")
        samID = (await subscriber.waitFor("joined"))["memberID"]
        await subscriber.waitFor("frames", count=15)
        stats = self.engine.stats()
        self.assertEqual((stats["publishers"], stats["subscriptions"]), (1, 1))
        self.assertEqual(stats["peer_connections"], {"connected": 2})
        during = self.baseline()
        if self.engine.onePort is None:
            self.assertGreater(during["udp"], before["udp"])
        else:  # [ice] udp_port (AHOY_TEST_ONE_PORT=1): no socket per peer connection
            self.assertEqual(during["udp"], before["udp"])
        await carol.quiet(0.1)

        await subscriber.kill()
        leave = await carol.expect("CONFERENCE_LEAVE_indication", timeout=20)
        self.assertEqual(leave["member"]["memberID"], samID)
        await waitFor(lambda: self.engine.stats()["peer_connections"] == {"connected": 1},
                      timeout=20, what="Sam's subscription closed")
        self.assertEqual(self.engine.stats()["subscriptions"], 0)
        self.assertNotIn(samID, self.server.service.members)
        if self.engine.onePort is None:
            await waitFor(lambda: udpSockets() < during["udp"], timeout=20,
                          what=f"Sam's UDP sockets freed (have {udpSockets()})")
        else:  # one UDP port: Sam's ufrag and addresses are forgotten instead
            await waitFor(lambda: self.engine.onePort.sizes()["ufrags"] == 1, timeout=20,
                          what=f"Sam forgotten by the port ({self.engine.onePort.sizes()})")
        forwarded = self.engine.stats()["forwarded_packets"]
        stream = self.engine._streams[(peteID, "video")]
        received = stream.acceptedPackets
        await waitFor(lambda: stream.acceptedPackets > received + 20, timeout=20,
                      what="Pete's media still arriving")
        self.assertEqual(self.engine.stats()["forwarded_packets"], forwarded)  # to nobody
        self.assertIsNone(publisher.proc.returncode)  # Pete is still there

        await publisher.kill()
        leave = await carol.expect("CONFERENCE_LEAVE_indication", timeout=20)
        self.assertEqual(leave["member"]["memberID"], peteID)
        await waitFor(lambda: self.engine.stats()["peer_connections"] == {}, timeout=20,
                      what="Pete's connection closed")
        stats = self.engine.stats()
        self.assertEqual((stats["publishers"], stats["subscriptions"]), (0, 0))
        self.assertEqual(list(self.server.service.members), [self.carolID])
        await waitFor(lambda: udpSockets() == before["udp"], timeout=20,
                      what=f"UDP sockets back to {before['udp']} (have {udpSockets()})")
        await waitFor(lambda: openFds() == before["fds"], timeout=20,
                      what=f"file descriptors back to {before['fds']} (have {openFds()})")
        await waitFor(lambda: len(asyncio.all_tasks()) <= before["tasks"], timeout=20,
                      what=f"asyncio tasks back to {before['tasks']} "
                           f"(have {len(asyncio.all_tasks())})")
        self.assertEqual(self.engine._peers, set())
        self.assertEqual(self.engine._streams, {})
        self.assertEqual(self.errors.errors, [])
        # the server still serves
        chat = await carol.request("CHAT_MESSAGE_request", message={"text": "alone"})
        self.assertEqual(chat["status"], 200)

    @asyncTest
    async def test_othersToldMediaGone(self):
        """
        When a publisher's process dies, the others get a C{MEDIA_indication}
        with C{available: false} for its audio and video (protocol.md 4.5:
        "when sharing stops or the publisher leaves") and its
        C{CONFERENCE_LEAVE_indication}.
        """
        carol = await self.start()
        publisher = await self.peer("pete", "--publish", "--tag", "8")
        peteID = (await publisher.waitFor("joined"))["memberID"]
        await publisher.waitFor("connected")
        while True:
            m = await carol.expect("MEDIA_indication", timeout=30)
            if m["member"]["memberID"] == peteID and m["video"]["available"] \
                    and m["audio"]["available"]:
                break
        await publisher.kill()
        await carol.expect("CONFERENCE_LEAVE_indication", timeout=20)
        told = [m for m in await carol.quiet(0.5) + carol.received
                if m["messageType"] == "MEDIA_indication" and m["member"]["memberID"] == peteID
                and not m["audio"]["available"] and not m["video"]["available"]]
        self.assertTrue(told, "no MEDIA_indication with available false for the dead publisher")
