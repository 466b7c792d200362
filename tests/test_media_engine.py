# -*- test-case-name: tests.test_media_engine -*-
"""
Tests for L{ahoyconference.media.engine.AiortcMediaEngine} with real aiortc
peers (L{tests.mediaclients}) on loopback: the engine's methods are called
directly and SDP is passed between the engine and the peers.

Run with C{trial --reactor=asyncio}.
"""

from __future__ import annotations

import asyncio
import functools
import re

import aioice.ice
from twisted.internet.defer import Deferred
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import TestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from ahoyconference.config import IceSettings
from ahoyconference.interfaces import IMediaEngine, IMediaListener, ProtocolError
from ahoyconference.media.engine import AiortcMediaEngine
from tests.mediaclients import Publisher, Subscriber, waitFor


def asyncioTest(f):
    """Run an C{async def} test method as an asyncio task (aiortc needs that)."""

    @functools.wraps(f)
    def test(self):
        return Deferred.fromFuture(asyncio.ensure_future(f(self)))

    return test


async def wait(d: Deferred):
    """Await a Deferred from asyncio code."""
    return await d.asFuture(asyncio.get_running_loop())


def loopbackOnly(testCase: TestCase) -> None:
    """Test peers gather host candidates on 127.0.0.1 only."""
    testCase.patch(aioice.ice, "get_host_addresses",
                   lambda use_ipv4=True, use_ipv6=True: ["127.0.0.1"])


@implementer(IMediaListener)
class RecordingListener:
    """Records what the engine tells."""

    def __init__(self):
        self.events: list[tuple] = []

    def mediaAvailable(self, memberID, kind, available):
        """Record it."""
        self.events.append(("available", memberID, kind, available))

    def speakingChanged(self, memberID, speaking):
        """Record it."""
        self.events.append(("speaking", memberID, speaking))


class EngineTestMixin:
    """An engine on loopback, and helpers to connect aiortc peers to it."""

    timeout = 120
    iceTimeout = 30.0

    def setUp(self):
        loopbackOnly(self)
        from twisted.internet import reactor

        self.listener = RecordingListener()
        self.engine = AiortcMediaEngine(self.listener, IceSettings(host_addresses=("127.0.0.1",)),
                                        reactor, iceTimeout=self.iceTimeout)
        self.clients = []
        self.addCleanup(self._closeAll)

    def _closeAll(self):
        async def close():
            for client in self.clients:
                await client.close()
            await wait(self.engine.close())

        return Deferred.fromFuture(asyncio.ensure_future(close()))

    async def publish(self, memberID, tag=1, audio=True, video=True, cap=500, **kw):
        """Publish a L{Publisher} as C{memberID}."""
        publisher = Publisher(tag, audio=audio, video=video, **kw)
        self.clients.append(publisher)
        offer = await wait(self.engine.publish(memberID, audio, video, cap))
        await wait(self.engine.acceptPublishAnswer(memberID, await publisher.answer(offer)))
        publisher.offer = offer
        return publisher

    async def subscribe(self, subscriberID, publisherID, audio=True, video=True):
        """Subscribe a L{Subscriber} as C{subscriberID} to C{publisherID}."""
        subscriber = Subscriber()
        self.clients.append(subscriber)
        offer = await wait(self.engine.subscribe(subscriberID, publisherID, audio, video))
        answer = await subscriber.answer(offer)
        await wait(self.engine.acceptSubscribeAnswer(subscriberID, publisherID, answer))
        return subscriber

    def available(self, memberID, kind, state=True):
        """Has the listener been told that C{kind} of C{memberID} is (not) available?"""
        return ("available", memberID, kind, state) in self.listener.events


def distinct(frames, tag):
    """Distinct picture numbers decoded from publisher C{tag}."""
    return {n for t, n, ok in frames if t == tag}


class InterfaceTests(TestCase):
    """The engine provides L{IMediaEngine}."""

    def test_interface(self):
        """verifyObject passes."""
        from twisted.internet import reactor

        engine = AiortcMediaEngine(RecordingListener(), IceSettings(), reactor)
        self.addCleanup(engine.close)
        self.assertTrue(verifyObject(IMediaEngine, engine))


class ForwardingTests(EngineTestMixin, TestCase):
    """Media goes from a publisher through the engine to subscribers."""

    @asyncioTest
    async def test_pictureAndTone(self):
        """
        Two subscribers decode the publisher's moving picture (changing,
        matching the pattern sent) and its tone; the publisher's own aiortc
        receivers never see a packet; REMB caps the publisher; subscribers
        get sender reports with real timestamps.
        """
        publisher = await self.publish("pub", tag=5, cap=200)
        self.assertIn("b=AS:200", publisher.offer)
        self.assertIn("b=TIAS:200000", publisher.offer)
        self.assertNotIn("a=simulcast", publisher.offer)  # not asked for
        first = await self.subscribe("sub1", "pub")
        second = await self.subscribe("sub2", "pub")
        for subscriber in (first, second):
            await waitFor(lambda s=subscriber: len(distinct(s.frames, 5)) >= 20,
                          what="20 distinct pictures")
            await waitFor(lambda s=subscriber: len(s.audio) >= 50, what="1 s of audio")
        await waitFor(lambda: first.senderReports and second.senderReports
                      and publisher.rembs and publisher.receiverReports,
                      what="RTCP both ways")
        sent = set(publisher.video.sent)
        for subscriber in (first, second):
            frames = subscriber.frames
            self.assertEqual({t for t, n, ok in frames}, {5})
            self.assertTrue({n for t, n, ok in frames} <= sent)
            self.assertTrue(all(ok for t, n, ok in frames), "bar not where the pattern has it")
            numbers = [n for t, n, ok in frames]
            self.assertEqual(numbers, sorted(numbers))
            frequency, rms = subscriber.tone()
            self.assertTrue(425 < frequency < 455, frequency)
            self.assertGreater(rms, 1000)
            self.assertTrue(set(subscriber.ssrcs) <= subscriber.offered)
            # sender reports: NTP is about now, RTP about the stream's latest timestamps
            for arrival, ntp, rtp, ssrc, last in subscriber.senderReports:
                self.assertIn(ssrc, subscriber.offered)
                self.assertTrue(abs(ntp / 2**32 - 2208988800 - arrival) < 5, (ntp, arrival))
                if last is not None:
                    self.assertLess(abs(((rtp - last + 2**31) & 0xFFFFFFFF) - 2**31), 90000,
                                    (rtp, last))
        self.assertTrue(self.available("pub", "audio") and self.available("pub", "video"))
        # the publisher's aiortc receivers got nothing: no stats, no decoder input
        peer = self.engine._publishers["pub"].current
        for transceiver in peer.pc.getTransceivers():
            self.assertEqual(transceiver.receiver._RTCRtpReceiver__remote_streams, {})
        self.assertLessEqual(max(publisher.rembs), 200000)
        # aiortc's VP8 encoder starts at 500 kbit/s and clamps at 250 kbit/s
        self.assertEqual(publisher.videoSender()._RTCRtpSender__encoder.target_bitrate, 250000)
        stats = self.engine.stats()
        self.assertEqual(stats["publishers"], 1)
        self.assertEqual(stats["subscriptions"], 2)
        self.assertGreater(stats["forwarded_packets"], 100)
        self.assertEqual(stats["peer_connections"], {"connected": 3})

    @asyncioTest
    async def test_moderatorMute(self):
        """
        C{setForwarding(False)} stops the forwarding of that kind to everyone;
        C{True} resumes it, the sequence numbers continuing where they stopped.
        """
        publisher = await self.publish("pub", tag=2)
        subscriber = await self.subscribe("sub", "pub")
        await waitFor(lambda: len(distinct(subscriber.frames, 2)) >= 10, what="pictures")
        videoSsrc = subscriber.offeredVideoSsrcs()[0]
        self.engine.setForwarding("pub", "video", False)
        await asyncio.sleep(0.3)
        before = subscriber.ssrcs[videoSsrc]
        audioBefore = sum(subscriber.ssrcs.values()) - before
        # audio goes on (half a second of it and at least a second), video does not
        started = asyncio.get_running_loop().time()
        await waitFor(lambda: sum(subscriber.ssrcs.values()) - subscriber.ssrcs[videoSsrc]
                      >= audioBefore + 25
                      and asyncio.get_running_loop().time() - started >= 1.0,
                      what="audio while video is muted")
        self.assertEqual(subscriber.ssrcs[videoSsrc], before)
        stopped = max(distinct(subscriber.frames, 2))
        self.engine.setForwarding("pub", "video", True)
        await waitFor(lambda: max(distinct(subscriber.frames, 2)) > stopped + 10,
                      what="pictures after unmuting")
        seqs = [seq for ssrc, seq, ts in subscriber.seqs if ssrc == videoSsrc]
        steps = {(b - a) & 0xFFFF for a, b in zip(seqs, seqs[1:], strict=False)}
        self.assertEqual(steps, {1})
        self.assertTrue(publisher.keyframeRequests >= 2)

    @asyncioTest
    async def test_keyframeRequestRelayed(self):
        """A subscriber's PLI reaches the publisher as a keyframe request."""
        publisher = await self.publish("pub", tag=3)
        subscriber = await self.subscribe("sub", "pub")
        await waitFor(lambda: len(distinct(subscriber.frames, 3)) >= 10, what="pictures")
        await asyncio.sleep(0.5)
        before = publisher.keyframeRequests
        received = self.engine.stats().get("keyframe_requests_received", 0)
        await subscriber.sendPli()
        await waitFor(lambda: publisher.keyframeRequests > before, what="a PLI at the publisher")
        self.assertGreater(self.engine.stats()["keyframe_requests_received"], received)

    @asyncioTest
    async def test_h264(self):
        """
        A publisher that answers with H264 only: subscribers are offered H264
        only, and decode it.
        """
        publisher = await self.publish("pub", tag=12, audio=False, videoCodec="video/H264")
        self.assertIn("H264", publisher.pc.localDescription.sdp)
        self.assertNotIn("VP8", publisher.pc.localDescription.sdp)
        subscriber = await self.subscribe("sub", "pub", audio=False)
        offer = subscriber.pc.remoteDescription.sdp
        self.assertIn("H264/90000", offer)
        self.assertNotIn("VP8", offer)
        await waitFor(lambda: len(distinct(subscriber.frames, 12)) >= 10, what="H264 pictures")
        self.assertTrue(all(ok for t, n, ok in subscriber.frames))

    @asyncioTest
    async def test_nackAnsweredWithRtx(self):
        """
        Video packets the subscriber missed (we drop some on the way out) are
        NACKed and sent again as RTX from the stream's ring.
        """
        await self.publish("pub", tag=4)
        subscriber = await self.subscribe("sub", "pub", audio=False)
        await waitFor(lambda: len(distinct(subscriber.frames, 4)) >= 5, what="pictures")
        out = self.engine._subscriptions[("sub", "pub")].outs["video"]
        realSendto = out.sendto
        dropped = []

        def lossy(data, addr):
            if len(dropped) < 3:  # three in a row, before any NACK can come back
                dropped.append(data)
                return
            realSendto(data, addr)

        out.sendto = lossy
        await waitFor(lambda: self.engine.stats().get("retransmitted_packets", 0) >= 3,
                      what="retransmissions")
        await waitFor(lambda: subscriber.ssrcs[out.rtxSsrc] >= 3, what="RTX at the subscriber")
        self.assertIn(out.rtxSsrc, subscriber.offered)


class SpeakingTests(EngineTestMixin, TestCase):
    """Speaker detection from the publisher's audio levels."""

    @asyncioTest
    async def test_loudThenSilent(self):
        """A loud tone turns speaking on; silence turns it off again."""
        publisher = await self.publish("pub", video=False)
        await waitFor(lambda: ("speaking", "pub", True) in self.listener.events,
                      what="speaking")
        self.assertFalse(("speaking", "pub", False) in self.listener.events)
        publisher.audio.amplitude = 0
        await waitFor(lambda: ("speaking", "pub", False) in self.listener.events,
                      what="not speaking")
        self.assertTrue(self.available("pub", "audio"))
        self.assertFalse(self.engine.isPublishing("pub", "video"))


class LifecycleTests(EngineTestMixin, TestCase):
    """Publishers going away, renegotiating; subscriptions kept apart."""

    @asyncioTest
    async def test_publisherGoesAway(self):
        """
        A publisher hanging up mid-stream makes its media unavailable and the
        engine frees its peer connection; the subscription stays, idle.
        """
        publisher = await self.publish("pub")
        subscriber = await self.subscribe("sub", "pub")
        await waitFor(lambda: len(subscriber.frames) >= 5 and len(subscriber.audio) >= 10,
                      what="media")
        self.assertEqual(self.engine.stats()["peer_connections"], {"connected": 2})
        await publisher.close()
        await waitFor(lambda: self.available("pub", "video", False)
                      and self.available("pub", "audio", False), what="media down")
        await waitFor(lambda: sum(self.engine.stats()["peer_connections"].values()) == 1,
                      what="the publisher's peer connection freed")
        stats = self.engine.stats()
        self.assertEqual(stats["publishers"], 0)
        self.assertEqual(stats["subscriptions"], 1)
        self.assertFalse(self.engine.isPublishing("pub", "video"))
        self.engine.removeMember("sub")
        await waitFor(lambda: not self.engine.stats()["peer_connections"], what="all freed")

    @asyncioTest
    async def test_removeMember(self):
        """
        removeMember closes the member's publishing and every subscription to
        it, and tells the listener nothing more of that member (the service
        announces the departure itself).
        """
        await self.publish("pub")
        await self.subscribe("sub", "pub")
        await self.subscribe("other", "pub", audio=False)
        await waitFor(lambda: self.engine.stats()["peer_connections"] == {"connected": 3},
                      what="connected")
        await waitFor(lambda: self.available("pub", "video", True), what="video arriving")
        before = list(self.listener.events)
        self.engine.removeMember("pub")
        self.assertEqual(self.listener.events, before)
        stats = self.engine.stats()
        self.assertEqual((stats["publishers"], stats["subscriptions"]), (0, 0))
        await waitFor(lambda: not self.engine.stats()["peer_connections"], what="all freed")

    @asyncioTest
    async def test_publishersKeptApart(self):
        """
        With two publishers, each subscriber gets only the packets (SSRCs) and
        the pictures of the publisher it subscribed to.
        """
        await self.publish("a", tag=6)
        await self.publish("b", tag=9)
        first = await self.subscribe("s1", "a")
        second = await self.subscribe("s2", "b")
        both = await self.subscribe("s3", "b", audio=False)
        for subscriber, tag in ((first, 6), (second, 9), (both, 9)):
            await waitFor(lambda s=subscriber, t=tag: len(distinct(s.frames, t)) >= 10,
                          what="pictures")
        for subscriber, tag in ((first, 6), (second, 9), (both, 9)):
            self.assertEqual({t for t, n, ok in subscriber.frames}, {tag})
            self.assertTrue(set(subscriber.ssrcs) <= subscriber.offered,
                            (set(subscriber.ssrcs), subscriber.offered))
        self.assertEqual(len(both.ssrcs), 1)
        self.assertFalse(set(first.ssrcs) & set(second.ssrcs))

    @asyncioTest
    async def test_publisherRenegotiates(self):
        """
        A subscription survives the publisher sharing again on a new peer
        connection: the same subscriber connection carries the new pictures,
        sequence numbers and timestamps continuing.
        """
        old = await self.publish("pub", tag=1, audio=False)
        subscriber = await self.subscribe("sub", "pub", audio=False)
        await waitFor(lambda: len(distinct(subscriber.frames, 1)) >= 10, what="pictures")
        events = len(self.listener.events)
        new = await self.publish("pub", tag=2, audio=False, first=1000)
        await waitFor(lambda: len(distinct(subscriber.frames, 2)) >= 10,
                      what="pictures of the new connection")
        await old.close()
        self.assertTrue(all(n >= 1000 for t, n, ok in subscriber.frames if t == 2))
        self.assertTrue(set(distinct(subscriber.frames, 2)) <= set(new.video.sent))
        ssrc = subscriber.offeredVideoSsrcs()[0]
        packets = [(seq, ts) for s, seq, ts in subscriber.seqs if s == ssrc]
        self.assertEqual({(b[0] - a[0]) & 0xFFFF for a, b in zip(packets, packets[1:], strict=False)}, {1})
        self.assertTrue(all(0 <= (b[1] - a[1]) & 0xFFFFFFFF < 90000 * 2
                            for a, b in zip(packets, packets[1:], strict=False)))
        # no media-down flapping for a renegotiation
        self.assertNotIn(("available", "pub", "video", False), self.listener.events[events:])
        self.assertEqual(self.engine.stats()["publishers"], 1)


class IceTimeoutTests(EngineTestMixin, TestCase):
    """A peer connection that does not connect in time is closed and logged."""

    iceTimeout = 1.0

    @asyncioTest
    async def test_unansweredOffer(self):
        """An offer never answered: the connection goes after iceTimeout."""
        logged = []
        globalLogPublisher.addObserver(logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, logged.append)
        await wait(self.engine.publish("pub", True, True, 500))
        self.assertEqual(sum(self.engine.stats()["peer_connections"].values()), 1)
        await waitFor(lambda: not self.engine.stats()["peer_connections"], what="closed")
        self.assertFalse(self.engine.isPublishing("pub", "audio"))
        self.assertTrue(any("ICE did not complete" in e.get("log_format", "") for e in logged))


class AnswerTests(EngineTestMixin, TestCase):
    """Unusable answers are refused with 488 and change nothing."""

    async def assertRefused(self, d, status=488):
        try:
            await wait(d)
        except ProtocolError as e:
            self.assertEqual(e.status, status)
            return e
        self.fail("not refused")

    @asyncioTest
    async def test_badPublishAnswers(self):
        """Garbage, no common codec, other sections: 488; the good answer still works."""
        publisher = Publisher(7)
        self.clients.append(publisher)
        offer = await wait(self.engine.publish("pub", True, True, 500))
        answer = await publisher.answer(offer)
        noCodec = re.sub(r"opus/48000", "nosuch/48000", answer)
        noCodec = re.sub(r"VP8/90000", "VP9/90000", noCodec)
        noCodec = re.sub(r"H264/90000", "AV1/90000", noCodec)
        onlyAudio = answer[:answer.index("m=video")]
        noIce = re.sub(r"a=ice-pwd:.*\r\n", "", answer)
        rejected = re.sub(r"m=video \d+ ", "m=video 0 ", answer)
        for bad in ("", "hello", "v=0\r\nm=audio x\r\n", 42, noCodec, onlyAudio, noIce,
                    rejected):
            self.assertNotEqual(bad, answer)
            await self.assertRefused(self.engine.acceptPublishAnswer("pub", bad))
        self.assertFalse(self.listener.events)
        await wait(self.engine.acceptPublishAnswer("pub", answer))
        await waitFor(lambda: self.available("pub", "video"), what="video")

    @asyncioTest
    async def test_badSubscribeAnswer(self):
        """The same for a subscription; and an answer with no offer is 409."""
        await self.publish("pub", tag=8, audio=False)
        await self.assertRefused(self.engine.acceptSubscribeAnswer("sub", "pub", "v=0"), 409)
        subscriber = Subscriber()
        self.clients.append(subscriber)
        offer = await wait(self.engine.subscribe("sub", "pub", True, True))
        self.assertNotIn("m=audio", offer)
        answer = await subscriber.answer(offer)
        await self.assertRefused(self.engine.acceptSubscribeAnswer(
            "sub", "pub", answer.replace("VP8/90000", "VP9/90000").replace("H264", "AV1")))
        await self.assertRefused(self.engine.acceptSubscribeAnswer(
            "sub", "pub", answer.replace("a=recvonly", "a=sendonly")))
        await wait(self.engine.acceptSubscribeAnswer("sub", "pub", answer))
        await waitFor(lambda: len(distinct(subscriber.frames, 8)) >= 5, what="pictures")

    @asyncioTest
    async def test_notSharing(self):
        """Subscribing to kinds nobody shares is refused (409); nothing to unpublish is fine."""
        await self.assertRefused(self.engine.subscribe("sub", "nobody", True, True), 409)
        self.engine.unpublish("nobody")
        self.engine.unsubscribe("sub", "nobody")
        self.engine.removeMember("nobody")
        self.assertIsNone(await wait(self.engine.subscribe("sub", "nobody", False, False)))
        await self.assertRefused(self.engine.publish("pub", False, False, 500), 400)


def rtp(seq, ts, ssrc=0x1111, pt=97, marker=False, mid=b"1", level=None, payload=b"\xAA" * 20):
    """A plain RTP packet with a one-byte extension block: mid (id 1), level (id 2)."""
    import struct

    elements = bytes([(1 << 4) | (len(mid) - 1)]) + mid
    if level is not None:
        elements += bytes([0x20, level])
    elements += b"\0" * (-len(elements) % 4)
    header = struct.pack("!BBHII", 0x90, (0x80 if marker else 0) | pt, seq, ts, ssrc)
    return header + struct.pack("!HH", 0xBEDE, len(elements) // 4) + elements + payload


def fields(packet):
    """(marker, pt, seq, ts, ssrc) of a packet."""
    import struct

    b0, b1, seq, ts, ssrc = struct.unpack_from("!BBHII", packet)
    return b1 >> 7, b1 & 0x7F, seq, ts, ssrc


class ForwardPathTests(TestCase):
    """L{InStream} and L{OutStream} without sockets: rewrite, continuity, RTCP data."""

    VP8 = ("video/vp8", 90000, "", "")

    def setUp(self):
        from ahoyconference.media.forward import InStream

        self.time = 1000.0
        self.events = []
        self.stream = InStream("pub", "video", lambda: self.time,
                               onAvailable=lambda s, a: self.events.append(("available", a)),
                               onKeyframeNeeded=lambda s: self.events.append("pli"))
        self.stream.configure({97: self.VP8}, {97: 90000}, midId=1, levelId=0)

    def output(self, ssrc=0x2222, mid=b"0", pts=None, rtx=None):
        from ahoyconference.media.forward import OutStream

        class RecordingOut(OutStream):
            """An output with a C{sent} list."""

        sent = []
        out = RecordingOut("video", ssrc, pts or {self.VP8: 100}, rtx or {}, 0x3333, mid[0],
                        protect=bytes, sendto=lambda data, addr: sent.append(data),
                        addr=("127.0.0.1", 9))
        out.sent = sent
        return out

    def test_rewrite(self):
        """PT, sequence number, timestamp, SSRC and mid change; marker and payload stay."""
        out = self.output()
        self.stream.attach(out)
        self.stream.packet(rtp(500, 9000, marker=True))
        self.stream.packet(rtp(501, 12000))
        first, second = out.sent
        self.assertEqual(fields(first)[:2], (1, 100))
        self.assertEqual(fields(first)[4], 0x2222)
        self.assertLess(fields(first)[2], 0x8000)
        self.assertEqual((fields(second)[2] - fields(first)[2]) & 0xFFFF, 1)
        self.assertEqual((fields(second)[3] - fields(first)[3]) & 0xFFFFFFFF, 3000)
        self.assertIn(b"\x100", first)  # mid element (id 1, one byte) now "0"
        self.assertEqual(first[-20:], b"\xAA" * 20)
        self.assertEqual(self.events, ["pli", "pli", ("available", True)])
        self.assertEqual(self.stream.sentPackets, 2)

    def test_newSourceContinues(self):
        """A new SSRC (the publisher renegotiated) continues every output's numbering."""
        out = self.output()
        self.stream.attach(out)
        self.stream.packet(rtp(500, 9000))
        self.stream.packet(rtp(501, 12000))
        self.time += 0.5
        self.stream.packet(rtp(40000, 777, ssrc=0x9999))
        a, b, c = (fields(p) for p in out.sent)
        self.assertEqual((c[2] - b[2]) & 0xFFFF, 1)
        self.assertEqual((c[3] - b[3]) & 0xFFFFFFFF, 45000)
        self.assertEqual(c[4], 0x2222)

    def test_muteAndResume(self):
        """Disabled: nothing sent; resumed: numbering continues with no gap."""
        out = self.output()
        self.stream.attach(out)
        self.stream.packet(rtp(10, 0))
        self.stream.setEnabled(False)
        for seq in range(11, 30):
            self.stream.packet(rtp(seq, seq * 3000))
        self.assertEqual(len(out.sent), 1)
        self.stream.setEnabled(True)
        self.stream.packet(rtp(30, 90000))
        self.assertEqual((fields(out.sent[1])[2] - fields(out.sent[0])[2]) & 0xFFFF, 1)
        self.assertEqual(self.events.count("pli"), 3)  # attach, first packet, resume

    def test_lateJoinerAndCodecs(self):
        """
        An output attached mid-stream starts below 32768; an output without the
        publisher's codec gets nothing; a payload type not negotiated is dropped.
        """
        self.stream.packet(rtp(65000, 0))
        late = self.output()
        other = self.output(ssrc=0x4444, pts={("video/h264", 90000, "1", "42e01f"): 101})
        self.stream.attach(late)
        self.stream.attach(other)
        self.stream.packet(rtp(65001, 3000))
        self.stream.packet(rtp(65002, 3000, pt=99))
        self.assertEqual(len(late.sent), 1)
        self.assertLess(fields(late.sent[0])[2], 0x8000)
        self.assertEqual(other.sent, [])
        self.assertEqual(self.stream.dropped, 1)

    def test_retransmit(self):
        """NACKed packets come from the ring: as RTX when negotiated, else as they were."""
        rtxOut = self.output(rtx={100: 101})
        plainOut = self.output(ssrc=0x5555)
        self.stream.attach(rtxOut)
        self.stream.attach(plainOut)
        for seq in range(100, 110):
            self.stream.packet(rtp(seq, seq * 10))
        lost = fields(rtxOut.sent[3])[2]
        self.assertEqual(self.stream.retransmit(rtxOut, [lost, (lost + 500) & 0xFFFF]), 1)
        packet = rtxOut.sent[-1]
        marker, pt, seq, ts, ssrc = fields(packet)
        self.assertEqual((pt, ssrc, ts), (101, 0x3333, fields(rtxOut.sent[3])[3]))
        original = rtxOut.sent[3]
        self.assertEqual(packet[20:22], lost.to_bytes(2, "big"))  # OSN after the 8-byte block
        self.assertEqual(packet[22:], original[20:])
        plainLost = fields(plainOut.sent[5])[2]
        self.assertEqual(self.stream.retransmit(plainOut, [plainLost]), 1)
        self.assertEqual(plainOut.sent[-1], plainOut.sent[5])
        self.time += 1.0
        self.stream.packet(rtp(1, 0, ssrc=0x7777))  # a new source: the old ring is gone
        self.assertEqual(self.stream.retransmit(plainOut, [plainLost]), 0)

    def test_sourceChurnBounded(self):
        """
        A stream changes its source at most once per SOURCE_SWITCH_INTERVAL
        (each change rebases every output); it remembers MAX_SOURCES SSRCs
        and frees the libsrtp state of the others (onStale).
        """
        from ahoyconference.media.forward import MAX_SOURCES, SOURCE_SWITCH_INTERVAL, InStream

        stale = []
        stream = InStream("pub", "video", lambda: self.time,
                          onStale=lambda s, ssrc: stale.append(ssrc))
        stream.configure({97: self.VP8}, {97: 90000}, midId=1, levelId=0)
        out = self.output()
        stream.attach(out)
        stream.packet(rtp(1, 0, ssrc=1))
        for ssrc in range(2, 102):  # a hundred new SSRCs in no time: all dropped and freed
            stream.packet(rtp(ssrc, 0, ssrc=ssrc))
        self.assertEqual((stream.ssrc, stream.sourceChanges), (1, 1))
        self.assertEqual(stream.drops["source_churn"], 100)
        self.assertEqual(stale, list(range(2, 102)))
        del stale[:]
        for ssrc in range(200, 210):  # one per interval: taken, the oldest forgotten
            self.time += SOURCE_SWITCH_INTERVAL
            stream.packet(rtp(ssrc, 0, ssrc=ssrc))
        self.assertEqual(stream.ssrc, 209)
        self.assertEqual(stream.sources, list(range(206, 210)))
        self.assertEqual(len(stream.sources), MAX_SOURCES)
        self.assertEqual(stale, [1] + list(range(200, 206)))
        self.assertEqual(stream.sourceChanges, 11)
        seqs = [fields(p)[2] for p in out.sent]
        self.assertEqual([(b - a) & 0xFFFF for a, b in zip(seqs[:-1], seqs[1:], strict=True)],
                         [1] * 10)

    def test_sendErrorsCounted(self):
        """
        A send that fails is counted as an error, not as forwarded; the first
        failure of its kind is logged with its traceback, the others only counted.
        """
        from ahoyconference.media.faults import Faults
        from ahoyconference.media.forward import InStream

        faults = Faults()
        stream = InStream("pub", "video", lambda: self.time, faults=faults)
        stream.configure({97: self.VP8}, {97: 90000}, midId=1, levelId=0)
        good, bad = self.output(), self.output(ssrc=0x4444)

        def broken(data, addr):
            raise OSError("no buffer space")

        bad.sendto = broken
        stream.attach(good)
        stream.attach(bad)
        for seq in range(10):
            stream.packet(rtp(seq, seq * 3000))
        self.assertEqual((stream.sentPackets, len(good.sent), bad.errors), (10, 10, 10))
        self.assertEqual(stream.sendErrors, 10)
        self.assertEqual(faults.counts["send"], 10)
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)
        stream.detach(bad)
        self.assertEqual(stream.sendErrors, 10)

    def test_receiverReport(self):
        """Losses, highest sequence number (with wrap) and LSR/DLSR of the report block."""
        for seq in (65534, 65535, 2, 3):
            self.stream.packet(rtp(seq, 0))
        self.stream.senderReport(0x1111, (5 << 32) | (7 << 16), 1234)
        self.time += 0.5
        info = self.stream.receiverInfo()
        self.assertEqual((info.ssrc, info.highest_sequence, info.packets_lost),
                         (0x1111, 0x10003, 2))
        self.assertEqual(info.fraction_lost, 2 * 256 // 6)
        self.assertEqual((info.lsr, info.dlsr), ((5 << 16) | 7, 32768))
        self.assertEqual(self.stream.receiverInfo().fraction_lost, 0)

    def test_senderInfo(self):
        """The publisher's SR mapping, carried forward, in the output's timestamps."""
        out = self.output()
        self.stream.attach(out)
        self.assertIsNone(self.stream.senderInfo(out))
        self.stream.packet(rtp(1, 90000))
        ntp = int((self.time + 2208988800) * 2**32)
        self.stream.senderReport(0x1111, ntp, 90000)
        self.time += 2.0
        sent = fields(out.sent[0])[3]
        ntpOut, rtpOut, packets, octets = self.stream.senderInfo(out)
        self.assertAlmostEqual(ntpOut / 2**32 - 2208988800, self.time, places=3)
        self.assertEqual((rtpOut - sent) & 0xFFFFFFFF, 180000)
        self.assertEqual(packets, 1)

    def test_audioLevel(self):
        """Audio levels reach the speaking detector with the packet's time."""
        from ahoyconference.media.forward import InStream

        levels = []
        audio = InStream("pub", "audio", lambda: self.time,
                         onLevel=lambda now, level: levels.append((now, level)))
        audio.configure({96: ("audio/opus", 48000, "", "")}, {96: 48000}, midId=1, levelId=2)
        audio.packet(rtp(1, 0, pt=96, level=0x80 | 33))
        self.assertEqual(levels, [(1000.0, 33)])


class ExceptionHandlerTests(TestCase):
    """L{installAsyncioExceptionHandler} logs asyncio errors through twisted.logger."""

    def test_logged(self):
        """An exception in a context is logged with its traceback; a message alone too."""
        from ahoyconference.media.engine import installAsyncioExceptionHandler

        loop = asyncio.new_event_loop()
        self.addCleanup(loop.close)
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        installAsyncioExceptionHandler(loop)
        try:
            raise RuntimeError("boom")
        except RuntimeError as e:
            error = e
        loop.call_exception_handler({"message": "Task exception", "exception": error})
        loop.call_exception_handler({"message": "just a message"})
        failures = [e for e in events if "log_failure" in e]
        self.assertEqual(len(failures), 1)
        self.assertIs(failures[0]["log_failure"].value, error)
        self.assertTrue(any(e.get("asyncio_message") == "just a message" for e in events), events)
        self.flushLoggedErrors(RuntimeError)


class TestPeerHookTests(TestCase):
    """
    The private aiortc attributes the test peers (L{tests.mediaclients}) and
    the benches use; the server's own are in L{tests.test_media_hooks}.
    """

    def test_receiverHelpers(self):
        """The test peers use the receiver's PLI helper and its stream table."""
        import inspect

        from aiortc.rtcrtpreceiver import RTCRtpReceiver

        self.assertIn("_send_rtcp_pli", dir(RTCRtpReceiver))
        self.assertIn("self.__remote_streams", inspect.getsource(RTCRtpReceiver._handle_rtp_packet))
