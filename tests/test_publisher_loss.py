# -*- test-case-name: tests.test_publisher_loss -*-
"""
Loss on the publisher's leg, repaired with NACK and RTX, over real UDP on
loopback (docs/architecture.md, "Loss on the publisher's leg").

An aiortc publisher's video packets are dropped with a known pattern (every
tenth original, never a retransmission) before they reach its socket; the
server NACKs them, aiortc answers with RTX (RFC 4588), the server forwards
the repaired packets.  A subscriber counts the sequence numbers it never got:
about none with repair, about a tenth without.

Run with C{trial --reactor=asyncio}.
"""

from __future__ import annotations

import asyncio

from aiortc.rtp import is_rtcp
from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase

from tests.helpers import Server, asyncTest, createAndJoin
from tests.mediaclients import Publisher, waitFor
from tests.reliability import ErrorCapture, guardDatagrams
from tests.test_media_engine import loopbackOnly
from tests.test_packet_path import Room, figure, pictures

DROP_EVERY = 10
"""Every this many original video packets of the publisher, one is lost."""
PACKETS = 400
"""Video packets the subscriber counts."""


def dropVideo(publisher: Publisher) -> list[int]:
    """
    Lose every L{DROP_EVERY}th original video packet the publisher sends
    (its primary SSRC only: retransmissions go through).

    @return: the sequence numbers lost, as they are lost.
    """
    sender = publisher.videoSender()
    dtls = sender.transport
    original = dtls._send_rtp
    lost: list[int] = []
    count = [0]

    async def send(data: bytes) -> None:
        if not is_rtcp(data) and len(data) >= 12:
            if int.from_bytes(data[8:12], "big") == sender._ssrc:
                count[0] += 1
                if count[0] % DROP_EVERY == 0:
                    lost.append(int.from_bytes(data[2:4], "big"))
                    return
        await original(data)

    dtls._send_rtp = send
    return lost


def missingAt(seqs: list[int]) -> int:
    """Sequence numbers never received between the first and last (modulo 2^16)."""
    if not seqs:
        return 0
    first = seqs[0]
    offsets = {(s - first + 0x8000) & 0xFFFF for s in seqs}
    return max(offsets) - min(offsets) + 1 - len(offsets)


class PublisherLossTests(TestCase):
    """NACK and RTX towards an aiortc publisher."""

    timeout = 120

    def setUp(self):
        loopbackOnly(self)
        self.refused = guardDatagrams(self)
        self.errors = ErrorCapture(self)

    async def room(self, nack: bool) -> Room:
        room = Room(self)
        room.server = await Server(engine="aiortc").start()
        room.engine = room.server.service.engine
        room.engine.nackPublishers = nack
        self.addCleanup(lambda: Deferred.fromFuture(asyncio.ensure_future(room.stop())))
        room.alice, joined = await createAndJoin(room.server.url, "room", "alice")
        room.clients.append(room.alice)
        room.aliceID = joined["memberID"]
        room.publisher = await room.publish(room.alice, Publisher(tag=3, audio=False, fps=30))
        return room

    async def lossAtSubscriber(self, nack: bool) -> tuple[Room, int, list[int], list[int]]:
        """
        A room, a lossy publisher, a subscriber: C{(room, missing at the
        subscriber, lost at the publisher, the subscriber's sequence numbers)}.
        """
        room = await self.room(nack)
        lost = dropVideo(room.publisher)
        bob, _ = await room.member("bob")
        toBob = await room.subscribe(bob, room.aliceID)
        await waitFor(lambda: pictures(toBob) >= 3, what="Alice's pictures at Bob")
        ssrc = toBob.offeredVideoSsrcs()[0]
        start = len(toBob.seqs)
        await waitFor(lambda: sum(1 for s, q, t in toBob.seqs[start:] if s == ssrc) >= PACKETS,
                      timeout=60, what=f"{PACKETS} video packets at Bob")
        await asyncio.sleep(0.5)  # the last repairs arrive
        seqs = [q for s, q, t in toBob.seqs[start:] if s == ssrc]
        # the tail may still be under repair: count up to the last PACKETS seen
        seqs = seqs[:PACKETS]
        return room, missingAt(seqs), lost, seqs

    @asyncTest
    async def test_repaired(self):
        """
        A tenth of Alice's video is lost on her leg: the server NACKs it, she
        resends it as RTX, Bob gets (almost) every packet and goes on decoding.
        """
        room, missing, lost, seqs = await self.lossAtSubscriber(nack=True)
        counters = room.engine.counters
        before = pictures(room.peers[-1])
        await waitFor(lambda: pictures(room.peers[-1]) >= before + 10, what="pictures go on")
        figure("publisher loss repaired", lost_at_publisher=len(lost), missing_at_subscriber=missing,
               nacks_sent=counters["publisher_nacks_sent"],
               nacked=counters["publisher_nacked_packets"],
               recovered=counters["publisher_packets_recovered"],
               given_up=counters["publisher_packets_given_up"],
               keyframe_requests=counters["keyframe_requests"])
        self.assertGreater(len(lost), PACKETS // DROP_EVERY // 2)
        self.assertGreater(counters["publisher_nacks_sent"], 0)
        self.assertGreaterEqual(counters["publisher_packets_recovered"], PACKETS // DROP_EVERY // 2)
        self.assertLessEqual(missing, 2)
        self.assertEqual(room.engine.stats()["send_errors"], 0)
        self.assertEqual(self.errors.errors, [])
        self.assertEqual(self.refused, [])

    @asyncTest
    async def test_notRepairedWhenOff(self):
        """The same loss without repair: Bob misses about every tenth packet."""
        room, missing, lost, seqs = await self.lossAtSubscriber(nack=False)
        counters = room.engine.counters
        figure("publisher loss unrepaired", lost_at_publisher=len(lost),
               missing_at_subscriber=missing, nacks_sent=counters["publisher_nacks_sent"])
        self.assertGreater(missing, PACKETS // DROP_EVERY // 2)
        self.assertEqual(counters["publisher_nacks_sent"], 0)
        self.assertEqual(counters["publisher_packets_recovered"], 0)
