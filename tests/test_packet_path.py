# -*- test-case-name: tests.test_packet_path -*-
"""
Hostile media clients against a real server over real UDP, after ICE and
DTLS (issue 14, the packet path; docs/reliability.md has the figures):

 - a subscriber's compound RTCP full of NACKs gets a bounded number of
   retransmissions;
 - a publisher without C{a=ssrc} cycling SSRCs gets a bounded number of
   source changes, and libsrtp's state for the old ones is freed;
 - a subscriber lying with a tiny REMB does not throttle the publisher;
 - a failing send is counted and logged, not counted as forwarded;
 - every peer connection uses one DTLS certificate;
 - connectivity checks and candidates outside C{[ice] allowed_remote_networks}
   are ignored and counted.

Each measures what the attack costs the server, and checks that the others
in the room are still served.  Nothing leaves 127.0.0.1
(L{tests.reliability.guardDatagrams}).

Run with C{trial --reactor=asyncio}.
"""

from __future__ import annotations

import asyncio
import random
import re
import time

from aioice import stun
from aiortc.rtcdtlstransport import RTCCertificate
from aiortc.rtp import (
    RTCP_PSFB_APP,
    RTCP_RTPFB_NACK,
    RtcpPsfbPacket,
    RtcpRtpfbPacket,
    pack_remb_fci,
)
from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase

from ahoyconference.config import IceSettings
from ahoyconference.media.engine import AiortcMediaEngine
from ahoyconference.media.forward import MAX_SOURCES, SOURCE_SWITCH_INTERVAL
from ahoyconference.media.nackbudget import NACK_BURST, NACK_FLOOR, NACK_SHARE
from ahoyconference.media.rtcp import REMB_FLOOR
from tests.helpers import Server, asyncTest, createAndJoin, join
from tests.mediaclients import Publisher, Subscriber, waitFor
from tests.reliability import ErrorCapture, guardDatagrams
from tests.test_media_engine import RecordingListener, loopbackOnly
from tests.test_media_hooks import RecordingProtocol
from tests.test_rtp_input import CraftingPublisher


def figure(name: str, **values) -> None:
    """Print a measured figure (docs/reliability.md quotes them)."""
    print(f"\nFIGURE {name}: " + ", ".join(f"{k}={v}" for k, v in values.items()))


class Room:
    """A server with the aiortc engine and a room: Alice publishes a picture and a tone."""

    def __init__(self, testCase):
        self.testCase = testCase
        self.peers = []
        self.clients = []

    async def start(self) -> Room:
        self.server = await Server(engine="aiortc").start()
        self.engine = self.server.service.engine
        self.testCase.addCleanup(lambda: Deferred.fromFuture(asyncio.ensure_future(self.stop())))
        self.alice, joined = await createAndJoin(self.server.url, "room", "alice")
        self.clients.append(self.alice)
        self.aliceID = joined["memberID"]
        self.publisher = await self.publish(self.alice, Publisher(tag=3))
        return self

    async def stop(self) -> None:
        for peer in self.peers:
            await peer.close()
        for client in self.clients:
            await client.close()
        await self.server.stop()

    async def member(self, name: str):
        client, joined = await join(self.server.url, "room", name)
        self.clients.append(client)
        return client, joined["memberID"]

    async def publish(self, client, peer, strip=None):
        await client.request("MEDIA_SHARE_request", audio=True, video=True)
        offer = await client.expect("MEDIA_RECEIVE_request")
        self.peers.append(peer)
        answer = await peer.answer(offer["sdp"])
        if strip is not None:
            answer = strip(answer)
        await client.send({"messageType": "MEDIA_RECEIVE_response", "status": 200, "reason": "OK",
                           "transactionID": offer["transactionID"], "sdp": answer})
        return peer

    async def subscribe(self, client, publisherID, video=True) -> Subscriber:
        await client.request("MEDIA_request", members=[
            {"memberID": publisherID, "audio": True, "video": video}])
        request = await client.expect("SDP_request", transactionID=publisherID)
        subscriber = Subscriber()
        self.peers.append(subscriber)
        await client.send({"messageType": "SDP_response", "status": 200, "reason": "OK",
                           "transactionID": publisherID,
                           "sdp": await subscriber.answer(request["sdp"])})
        return subscriber


def pictures(subscriber, tag=3) -> int:
    return len({n for t, n, ok in subscriber.frames if t == tag})


def rtcpSender(subscriber):
    """Send raw (plain) RTCP from a subscriber's peer connection, protected with its keys."""
    dtls = subscriber.pc.getTransceivers()[0].receiver.transport
    pair = dtls.transport._connection._nominated[1]

    def send(data: bytes) -> None:
        pair.protocol.transport.sendto(dtls._tx_srtp.protect_rtcp(data), pair.remote_addr)

    return send


class PacketPathTests(TestCase):
    """Hostile RTP/RTCP after DTLS."""

    timeout = 120

    def setUp(self):
        loopbackOnly(self)
        self.refused = guardDatagrams(self)
        self.errors = ErrorCapture(self)

    @asyncTest
    async def test_nackFlood(self):
        """
        Bob sends 20 compound RTCP datagrams of 30 NACKs × 64 sequence numbers
        each (38,400 retransmissions asked; before the budget, every one
        found in the ring was resent).  What is resent stays within his
        budget (NACK_BURST + NACK_FLOOR × T + NACK_SHARE × what he received),
        a twentieth of what the ring could have answered; repeats within the
        window are ignored; Carol's pictures go on.
        """
        room = await Room(self).start()
        bob, bobID = await room.member("bob")
        carol, carolID = await room.member("carol")
        toBob = await room.subscribe(bob, room.aliceID)
        toCarol = await room.subscribe(carol, room.aliceID)
        await waitFor(lambda: pictures(toBob) >= 5 and pictures(toCarol) >= 5,
                      what="Alice's pictures at Bob and Carol")
        engine = room.engine
        sub = engine._subscriptions[(bobID, room.aliceID)]
        video = sub.outs["video"]
        stream = engine._streams[(room.aliceID, "video")]
        send = rtcpSender(toBob)
        before = dict(engine.counters)
        carolBefore = pictures(toCarol)
        received0 = stream.acceptedOctets
        start = time.monotonic()
        cpu0 = time.process_time()
        asked = 0
        for _ in range(20):
            latest = next(seq for ssrc, seq, ts in reversed(toBob.seqs) if ssrc == video.ssrc)
            lost = [(latest - i) & 0xFFFF for i in reversed(range(64))]
            nack = bytes(RtcpRtpfbPacket(fmt=RTCP_RTPFB_NACK, ssrc=1, media_ssrc=video.ssrc,
                                         lost=lost))
            send(nack * 30)
            asked += 30 * 64
            await asyncio.sleep(0.1)
        await waitFor(lambda: engine.counters["nacks_received"] - before.get("nacks_received", 0)
                      >= 600, what="the NACKs at the server")
        elapsed = time.monotonic() - start
        cpu = time.process_time() - cpu0
        resent = engine.counters["retransmitted_packets"] - before.get("retransmitted_packets", 0)
        budget = sub.retransmitBudget
        received = stream.acceptedOctets - received0
        bound = NACK_BURST + NACK_FLOOR * elapsed + NACK_SHARE * (stream.acceptedOctets
                                                                  - video.baseOctets)
        answerable = resent + budget.refused["repeat"] + budget.refused["budget"]
        figure("nack flood", asked=asked, answerable_from_ring=answerable, resent=resent,
               resent_bytes=budget.spent, bound_bytes=int(bound), refused_repeat=budget.refused["repeat"],
               refused_budget=budget.refused["budget"], seconds=round(elapsed, 2),
               received_bytes=received, process_cpu_s=round(cpu, 2))
        self.assertGreater(resent, 0)
        self.assertLessEqual(budget.spent, bound)
        self.assertLessEqual(resent, answerable / 20)
        self.assertEqual(engine.counters["retransmissions_refused_repeat"]
                         + engine.counters["retransmissions_refused_budget"]
                         - before.get("retransmissions_refused_repeat", 0)
                         - before.get("retransmissions_refused_budget", 0),
                         budget.refused["repeat"] + budget.refused["budget"])
        await waitFor(lambda: pictures(toCarol) >= carolBefore + 10, what="Carol's pictures go on")
        self.assertEqual(engine.stats()["send_errors"], 0)
        self.assertEqual(self.errors.errors, [])
        self.assertEqual(self.refused, [])

    @asyncTest
    async def test_ssrcChurn(self):
        """
        Mallory's answer has no a=ssrc, and she sends 400 packets of 400 new
        SSRCs in 2 s (before: 400 source changes, each a rebase of every
        subscriber and a new ring, and 400 libsrtp streams kept for ever).
        Source changes stay within one per SOURCE_SWITCH_INTERVAL, at most
        MAX_SOURCES SSRCs keep their libsrtp state, Bob keeps getting
        Alice's pictures and, afterwards, Mallory's own audio.
        """
        room = await Room(self).start()
        bob, bobID = await room.member("bob")
        mal, malloryID = await room.member("mallory")

        def noSsrc(sdp: str) -> str:
            return re.sub(r"^a=ssrc(-group)?:.*\r?\n", "", sdp, flags=re.M)

        mallory = await room.publish(mal, CraftingPublisher(), strip=noSsrc)
        engine = room.engine
        await waitFor(lambda: engine._publishers[malloryID].current is not None
                      and engine._publishers[malloryID].current.hooked, what="Mallory hooked")
        conn = engine._publishers[malloryID].current
        self.assertEqual(conn.ssrcs, frozenset())
        removed = []
        removeStream = conn.removeStream

        def recordRemoval(ssrc):
            removed.append(ssrc)
            removeStream(ssrc)

        conn.removeStream = recordRemoval
        toAlice = await room.subscribe(bob, room.aliceID)
        toMallory = await room.subscribe(bob, malloryID, video=False)
        for _ in range(600):
            mallory.sendValid()
            await asyncio.sleep(0.05)
            if toMallory.ssrcs:
                break
        await waitFor(lambda: pictures(toAlice) >= 5, what="Alice's pictures at Bob")
        stream = engine._streams[(malloryID, "audio")]
        changes0 = stream.sourceChanges
        aliceBefore = pictures(toAlice)
        rng = random.Random(14)
        ssrcs = [rng.getrandbits(32) for _ in range(400)]
        start = time.monotonic()
        cpu0 = time.process_time()
        for i, ssrc in enumerate(ssrcs):
            mallory.raw(mallory.protect(mallory.rtp(ssrc=ssrc)))
            if i % 20 == 19:
                await asyncio.sleep(0.1)
        await waitFor(lambda: stream.drops["source_churn"] + stream.sourceChanges - changes0
                      >= len(ssrcs), what="the SSRCs at the server")
        elapsed = time.monotonic() - start
        cpu = time.process_time() - cpu0
        changes = stream.sourceChanges - changes0
        alive = set(ssrcs) - set(removed) - {mallory.audioSsrc}
        figure("ssrc churn", ssrcs=len(ssrcs), source_changes=changes,
               dropped=stream.drops["source_churn"], libsrtp_streams_kept=len(alive),
               seconds=round(elapsed, 2), process_cpu_s=round(cpu, 2))
        self.assertLessEqual(changes, elapsed / SOURCE_SWITCH_INTERVAL + 2)
        self.assertLessEqual(len(alive), MAX_SOURCES)
        self.assertLessEqual(len(stream.sources), MAX_SOURCES)
        # the others are served, and Mallory's own audio comes back
        await waitFor(lambda: pictures(toAlice) >= aliceBefore + 10, what="Alice's pictures go on")
        await asyncio.sleep(SOURCE_SWITCH_INTERVAL)
        have = sum(toMallory.ssrcs.values())
        for _ in range(20):
            mallory.sendValid()
            await asyncio.sleep(0.03)
        await waitFor(lambda: sum(toMallory.ssrcs.values()) >= have + 15,
                      what="Mallory's own audio at Bob again")
        self.assertEqual(stream.ssrc, mallory.audioSsrc)
        self.assertEqual(set(toMallory.ssrcs) - toMallory.offered, set())
        self.assertEqual(self.errors.errors, [])
        self.assertEqual(self.refused, [])

    @asyncTest
    async def test_rembLiar(self):
        """
        Bob claims 1 kbit/s ten times a second (between the estimates his
        aiortc receiver sends itself): the REMB Alice gets stays at or above
        REMB_FLOOR (before: the minimum, 1 kbit/s, her encoder throttled for
        everyone); Carol's pictures go on.
        """
        room = await Room(self).start()
        bob, bobID = await room.member("bob")
        carol, carolID = await room.member("carol")
        toBob = await room.subscribe(bob, room.aliceID)
        toCarol = await room.subscribe(carol, room.aliceID)
        await waitFor(lambda: pictures(toBob) >= 5 and pictures(toCarol) >= 5,
                      what="Alice's pictures at Bob and Carol")
        video = room.engine._subscriptions[(bobID, room.aliceID)].outs["video"]
        send = rtcpSender(toBob)
        seen = len(room.publisher.rembs)
        carolBefore = pictures(toCarol)
        for _ in range(30):
            send(bytes(RtcpPsfbPacket(fmt=RTCP_PSFB_APP, ssrc=1, media_ssrc=0,
                                      fci=pack_remb_fci(1000, [video.ssrc]))))
            await asyncio.sleep(0.1)
        await waitFor(lambda: len(room.publisher.rembs) >= seen + 2, what="REMBs at Alice")
        lowest = min(room.publisher.rembs[seen:])
        figure("remb liar", claimed=1000, lowest_remb_at_publisher=lowest)
        self.assertGreaterEqual(lowest, REMB_FLOOR)
        await waitFor(lambda: pictures(toCarol) >= carolBefore + 10, what="Carol's pictures go on")
        self.assertEqual(self.errors.errors, [])

    @asyncTest
    async def test_failedSendsLoud(self):
        """
        Bob's socket fails every send: counted in /metrics as send errors,
        not as forwarded; the first failure is logged with its traceback,
        once; Carol is served.
        """
        room = await Room(self).start()
        bob, bobID = await room.member("bob")
        carol, carolID = await room.member("carol")
        toBob = await room.subscribe(bob, room.aliceID)
        toCarol = await room.subscribe(carol, room.aliceID)
        await waitFor(lambda: pictures(toBob) >= 2 and pictures(toCarol) >= 2,
                      what="Alice's pictures at Bob and Carol")
        engine = room.engine
        outs = engine._subscriptions[(bobID, room.aliceID)].outs

        def broken(data, addr):
            raise OSError(105, "No buffer space available")

        for out in outs.values():
            out.sendto = broken
        streams = [engine._streams[(room.aliceID, kind)] for kind in ("audio", "video")]

        def accepted():
            return sum(stream.acceptedPackets for stream in streams)

        stats0, accepted0 = engine.stats(), accepted()
        carolBefore = pictures(toCarol)
        await waitFor(lambda: pictures(toCarol) >= carolBefore + 10, what="Carol's pictures go on")
        stats1, accepted1 = engine.stats(), accepted()
        errors = stats1["send_errors"] - stats0["send_errors"]
        forwarded = stats1["forwarded_packets"] - stats0["forwarded_packets"]
        figure("failed sends", packets_in=accepted1 - accepted0, send_errors=errors,
               forwarded=forwarded)
        self.assertGreater(errors, 10)
        # every packet went to Carol (sent) and to Bob (failed): one copy each counts
        self.assertEqual(forwarded, accepted1 - accepted0)
        self.assertEqual(errors, accepted1 - accepted0)
        mediaErrors = stats1["media_errors"]
        self.assertEqual(mediaErrors.get("send", 0) + mediaErrors.get("retransmit", 0),
                         stats1["send_errors"])
        from tests.test_api import _httpGet
        from tests.test_metrics import value

        body = (await _httpGet(room.server.http, "/metrics")).decode()
        self.assertGreaterEqual(value(body, "ahoy_send_errors_total"), stats1["send_errors"])
        self.assertGreaterEqual(value(body, "ahoy_media_errors_total", 'where="send"'),
                                stats1["media_errors"]["send"])
        logged = self.flushLoggedErrors(OSError)
        self.assertEqual(len(logged), 1)
        self.errors.errors = [e for e in self.errors.errors if "No buffer space" not in e]
        self.assertEqual(self.errors.errors, [])


class CertificateTests(TestCase):
    """One DTLS certificate per process, as browsers use one per origin."""

    timeout = 60

    @asyncTest
    async def test_oneCertificate(self):
        """
        Twenty publish offers: one certificate made (before: twenty, a key
        pair and a signature each), one fingerprint in every offer.
        """
        from twisted.internet import reactor

        loopbackOnly(self)
        made = []
        original = RTCCertificate.generateCertificate.__func__

        def counting(cls):
            made.append(1)
            return original(cls)

        self.patch(RTCCertificate, "generateCertificate", classmethod(counting))
        engine = AiortcMediaEngine(RecordingListener(), IceSettings(host_addresses=("127.0.0.1",)),
                                   reactor)
        try:
            cpu0 = time.process_time()
            offers = [await engine.publish(f"m{i}", True, True, 500).asFuture(
                asyncio.get_event_loop()) for i in range(20)]
            cpu = time.process_time() - cpu0
            fingerprints = {re.search(r"a=fingerprint:\S+ (\S+)", o).group(1) for o in offers}
            figure("certificates", offers=len(offers), certificates_made=len(made),
                   cpu_ms_per_offer=round(cpu * 1000 / len(offers), 2))
            self.assertEqual(len(made), 1)
            self.assertEqual(len(fingerprints), 1)
        finally:
            await engine.close().asFuture(asyncio.get_event_loop())


class RemoteNetworkTests(TestCase):
    """C{[ice] allowed_remote_networks} through the engine."""

    timeout = 60

    @asyncTest
    async def test_outsideIgnored(self):
        """
        A server gathering on its interfaces: an answer's candidates in
        private networks it was not given are dropped (counted); connectivity
        checks from them get no answer (counted); a check from a configured
        network is answered.  Nothing is sent anywhere (the checks go to a
        recording stand-in for aioice's socket).
        """
        from twisted.internet import reactor

        loopbackOnly(self)
        refused = guardDatagrams(self)
        settings = IceSettings(allowed_remote_networks=("public", "local", "198.51.100.0/24"))
        engine = AiortcMediaEngine(RecordingListener(), settings, reactor)
        peer = CraftingPublisher()
        try:
            offer = await engine.publish("m1", True, True, 500).asFuture(asyncio.get_event_loop())
            answer = await peer.answer(offer)
            hostile = "".join(
                f"a=candidate:{i} 1 udp 2122260223 {address} {40000 + i} typ host\r\n"
                for i, address in enumerate(["10.77.1.2", "172.31.9.9", "192.168.250.3",
                                             "fd12:3456::1", "100.64.1.1"]))
            answer = re.sub(r"^a=candidate:.*\r?\n", "", answer, flags=re.M)
            # (no end-of-candidates: ICE waits for checks instead of failing at once)
            answer = answer.replace("a=end-of-candidates\r\n", hostile, 1)
            answer = answer.replace("a=end-of-candidates\r\n", "")
            conn = engine._publishers["m1"].pending
            await engine.acceptPublishAnswer("m1", answer).asFuture(asyncio.get_event_loop())
            self.assertEqual(engine.stats()["dropped_candidates"], 5)
            self.assertIs(engine._publishers["m1"].current, conn)
            connection = conn.pc.getTransceivers()[0].receiver.transport.transport._connection
            protocol = RecordingProtocol()
            request = stun.Message(message_method=stun.Method.ALLOCATE,
                                   message_class=stun.Class.REQUEST)
            before = engine.stats()["refused_ice_checks"]  # the peer's own, from 127.0.0.1
            for address in ("10.77.1.2", "172.31.9.9", "fd12:3456::1"):
                connection.request_received(request, (address, 40000), protocol)
            self.assertEqual(protocol.sent, [])
            self.assertGreaterEqual(engine.stats()["refused_ice_checks"] - before, 3)
            connection.request_received(request, ("198.51.100.7", 40000), protocol)
            self.assertEqual([addr for _, addr in protocol.sent], [("198.51.100.7", 40000)])
            self.assertEqual(refused, [])
        finally:
            await peer.close()
            await engine.close().asFuture(asyncio.get_event_loop())
