# -*- test-case-name: tests.test_media_e2e -*-
"""
Media end to end through the real server: WebSocket clients (L{tests.helpers})
signal, real aiortc peers (L{tests.mediaclients}) send and receive on
loopback, the server runs L{ahoyconference.media.engine.AiortcMediaEngine}.

Run with C{trial --reactor=asyncio}.
"""

from __future__ import annotations

import asyncio

from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase

from tests.helpers import Server, asyncTest, createAndJoin, join
from tests.mediaclients import Publisher, Subscriber, waitFor
from tests.test_media_engine import loopbackOnly


async def mediaServer(testCase) -> tuple[Server, list]:
    """
    A server with the aiortc engine, and a list for the test's peers: the
    peers, then the server, are closed when the test ends.
    """
    server = await Server(engine="aiortc").start()
    peers: list = []

    async def cleanup():
        for peer in peers:
            await peer.close()
        await server.stop()

    testCase.addCleanup(lambda: Deferred.fromFuture(asyncio.ensure_future(cleanup())))
    return server, peers


class MediaThroughServerTests(TestCase):
    """Share, subscribe, see and hear, moderator mute, speaking, leave."""

    timeout = 120

    def setUp(self):
        loopbackOnly(self)

    @asyncTest
    async def test_shareSubscribeMuteLeave(self):
        """
        Alice shares; Bob, told by C{MEDIA_indication}, asks for her media,
        decodes her moving picture and her tone, sees her speaking; a
        moderator's mute stops her video for him; when she leaves, the engine
        frees her peer connection.
        """
        server, peers = await mediaServer(self)
        engine = server.service.engine
        alice, joinedAlice = await createAndJoin(server.url, "room", "alice")
        bob, _ = await join(server.url, "room", "bob")
        aliceID = joinedAlice["memberID"]

        response = await alice.request("MEDIA_SHARE_request", audio=True, video=True,
                                       maxVideoBitrate=300)
        self.assertEqual(response["status"], 200)
        offer = await alice.expect("MEDIA_RECEIVE_request")
        self.assertIn("b=AS:300", offer["sdp"])
        publisher = Publisher(tag=11)
        peers.append(publisher)
        await alice.send({"messageType": "MEDIA_RECEIVE_response", "status": 200,
                          "reason": "OK", "sdp": await publisher.answer(offer["sdp"]),
                          "transactionID": offer["transactionID"]})

        # Bob learns that her media arrived, then subscribes
        while True:
            indication = await bob.expect("MEDIA_indication")
            if indication["member"]["memberID"] == aliceID and \
                    indication["video"]["available"] and indication["audio"]["available"]:
                break
        response = await bob.request("MEDIA_request", members=[
            {"memberID": aliceID, "audio": True, "video": True}])
        self.assertEqual(response["status"], 200)
        request = await bob.expect("SDP_request", transactionID=aliceID)
        self.assertEqual(request["member"]["memberID"], aliceID)
        subscriber = Subscriber()
        peers.append(subscriber)
        await bob.send({"messageType": "SDP_response", "status": 200, "reason": "OK",
                        "sdp": await subscriber.answer(request["sdp"]),
                        "transactionID": aliceID})

        await waitFor(lambda: len({n for t, n, ok in subscriber.frames if t == 11}) >= 15,
                      what="Alice's pictures at Bob")
        await waitFor(lambda: len(subscriber.audio) >= 50, what="Alice's tone at Bob")
        self.assertEqual({t for t, n, ok in subscriber.frames}, {11})
        self.assertTrue(all(ok for t, n, ok in subscriber.frames))
        self.assertTrue({n for t, n, ok in subscriber.frames} <= set(publisher.video.sent))
        frequency, rms = subscriber.tone()
        self.assertTrue(425 < frequency < 455 and rms > 1000, (frequency, rms))
        # speaking is a MEDIA_event, never a MEDIA_indication (protocol.md 4.10)
        while True:
            event = await bob.expect("MEDIA_event")
            if event["member"]["memberID"] == aliceID and event["event"] == "start_speaking":
                break

        # a moderator (everyone is, in a room without passwords) mutes her video
        response = await bob.request("MEDIA_MUTE_request", memberID=aliceID, video=True)
        self.assertEqual(response["status"], 200)
        videoSsrc = subscriber.offeredVideoSsrcs()[0]
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

        # she leaves: Bob is told, the engine frees her connection and his subscription
        await alice.close()
        await bob.expect("CONFERENCE_LEAVE_indication")
        await waitFor(lambda: not engine.stats()["peer_connections"], what="connections freed")
        self.assertEqual(engine.stats()["publishers"], 0)
        self.assertEqual(engine.stats()["subscriptions"], 0)
        await bob.close()


class QualityInPlaceTests(TestCase):
    """protocol.md 4.11: a change of C{quality} alone needs no new offer."""

    timeout = 120

    def setUp(self):
        loopbackOnly(self)

    @asyncTest
    async def test_qualityOnlyChange(self):
        """
        Bob subscribed to Alice; asking again with another C{quality} and
        nothing else changes his subscription's top layer in place (no
        C{SDP_request}, his picture goes on: her one stream is all there
        is); the same request again, or one for other kinds, is a
        replacement with a new offer, as before.
        """
        server, peers = await mediaServer(self)
        engine = server.service.engine
        alice, joinedAlice = await createAndJoin(server.url, "room", "alice")
        bob, joinedBob = await join(server.url, "room", "bob")
        aliceID, bobID = joinedAlice["memberID"], joinedBob["memberID"]
        await alice.request("MEDIA_SHARE_request", audio=True, video=True)
        offer = await alice.expect("MEDIA_RECEIVE_request")
        publisher = Publisher(tag=5)
        peers.append(publisher)
        await alice.send({"messageType": "MEDIA_RECEIVE_response", "status": 200,
                          "sdp": await publisher.answer(offer["sdp"]),
                          "transactionID": offer["transactionID"]})
        while True:   # Bob is told of her media (after this, no new media: 4.11)
            indication = await bob.expect("MEDIA_indication")
            if indication["member"]["memberID"] == aliceID and \
                    indication["video"]["available"] and indication["audio"]["available"]:
                break

        async def subscribe(quality, video=True, offered=True):
            entry = {"memberID": aliceID, "audio": True, "video": video}
            if quality is not None:
                entry["quality"] = quality
            response = await bob.request("MEDIA_request", members=[entry])
            self.assertEqual(response["status"], 200)
            if not offered:
                return None
            request = await bob.expect("SDP_request", transactionID=aliceID)
            subscriber = Subscriber()
            peers.append(subscriber)
            await bob.send({"messageType": "SDP_response", "status": 200,
                            "sdp": await subscriber.answer(request["sdp"]),
                            "transactionID": aliceID})
            return subscriber

        def quality():
            sub = engine._subscriptions[(bobID, aliceID)]
            return sub.outs["video"].sim.quality if "video" in sub.outs else None

        subscriber = await subscribe(None)
        await waitFor(lambda: len(subscriber.frames) >= 10, what="Alice's pictures at Bob")
        await waitFor(lambda: quality() == 2, what="the subscription's video output")

        await subscribe("low", offered=False)
        self.assertEqual(quality(), 0)
        frames = len(subscriber.frames)
        await waitFor(lambda: len(subscriber.frames) >= frames + 10, what="pictures after")
        self.assertEqual([m for m in bob.inbox if m.get("messageType") == "SDP_request"], [])

        # the same request again: a replacement, with a new offer
        subscriber = await subscribe("low")
        await waitFor(lambda: len(subscriber.frames) >= 5, what="pictures, new connection")
        await waitFor(lambda: quality() == 0, what="the new subscription's output")
        # other kinds: a replacement too
        await subscribe("high", video=False)
        await waitFor(lambda: "video" not in engine._subscriptions[(bobID, aliceID)].kinds,
                      what="an audio-only subscription")
        await bob.close()
        await alice.close()


class MdnsCandidateTests(TestCase):
    """
    Browsers hide their host address behind an mDNS name (C{….local}); the
    server drops such candidates and learns the address from the client's
    connectivity checks (peer-reflexive), docs/architecture.md, Tests.
    """

    timeout = 120

    def setUp(self):
        loopbackOnly(self)

    @asyncTest
    async def test_publishWithOnlyMdnsCandidates(self):
        import re

        server, peers = await mediaServer(self)
        publisher = Publisher(tag=5)
        peers.append(publisher)
        alice, joined = await createAndJoin(server.url, "room", "alice")
        bob, _ = await join(server.url, "room", "bob")
        await alice.request("MEDIA_SHARE_request", audio=True, video=True)
        offer = await alice.expect("MEDIA_RECEIVE_request")
        answer = await publisher.answer(offer["sdp"])
        hidden, count = re.subn(r"(a=candidate:\S+ \d+ \S+ \d+ )127\.0\.0\.1( )",
                                r"\g<1>6f2b1c7e-0d4a-4a49-9c1e-5b3f0e6d2a11.local\g<2>", answer)
        self.assertGreater(count, 0)
        self.assertNotIn("127.0.0.1 ", "\n".join(
            line for line in hidden.splitlines() if line.startswith("a=candidate")))
        await alice.send({"messageType": "MEDIA_RECEIVE_response", "status": 200, "reason": "OK",
                          "sdp": hidden, "transactionID": offer["transactionID"]})
        while True:
            indication = await bob.expect("MEDIA_indication", timeout=30)
            if indication["member"]["memberID"] == joined["memberID"] and \
                    indication["video"]["available"]:
                break
        await alice.close()
        await bob.close()
