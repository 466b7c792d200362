# -*- test-case-name: tests.test_client -*-
"""
L{ahoyconference.client}: the package's protocol client against a real
server on loopback, media included (real aiortc peers on both sides).
"""

from __future__ import annotations

import asyncio
import importlib.util
import os

from twisted.internet.defer import Deferred
from twisted.trial import unittest

from ahoyconference.client import (
    ConnectionLost,
    NoMessage,
    ProtocolClient,
    RequestFailed,
)
from tests.helpers import Server, asyncTest
from tests.mediaclients import PatternVideoTrack, ToneAudioTrack, readPattern, waitFor

EXAMPLE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs",
                       "examples", "listener_bot.py")


class ClientTestCase(unittest.TestCase):
    """A server per test; clients closed at the end."""

    async def server(self, **kwargs) -> Server:
        server = await Server(**kwargs).start()
        self.addCleanup(lambda: Deferred.fromFuture(asyncio.ensure_future(server.stop())))
        return server

    async def connect(self, url: str, **kwargs) -> ProtocolClient:
        client = await ProtocolClient.connect(url, **kwargs)
        self.addCleanup(lambda: Deferred.fromFuture(asyncio.ensure_future(client.close())))
        return client


class SignallingTests(ClientTestCase):
    """The conference requests, the events, the errors."""

    @asyncTest
    async def test_conference(self):
        """create, join, chat, lock, describe, mute, kick, leave; the others see it."""
        s = await self.server()
        alice = await self.connect(s.url)
        bob = await self.connect(s.url)
        created = await alice.create("room", conferenceName="Room")
        self.assertEqual(created["conferenceName"], "Room")
        joined = await alice.join("room", "alice")
        self.assertEqual(alice.memberID, joined["memberID"])
        self.assertEqual(alice.iceServers, [])
        await bob.join("room", "bob")
        indication = await alice.expect("CONFERENCE_JOIN_indication")
        self.assertEqual(indication["member"]["name"], "bob")
        await bob.chat("hello")
        said = await alice.expect("CHAT_MESSAGE_indication")
        self.assertEqual((said["from"]["memberID"], said["message"]), (bob.memberID,
                                                                       {"text": "hello"}))
        await alice.lock(True)
        self.assertTrue((await bob.expect("CONFERENCE_LOCK_indication"))["locked"])
        await alice.lock(False)
        await alice.describe("now")
        self.assertEqual((await bob.expect("CONFERENCE_DESCRIPTION_indication"))["description"],
                         "now")
        await bob.mute(audio=False)
        unmuted = await alice.expect("MEDIA_indication", member={"name": "bob",
                                                                 "memberID": bob.memberID})
        self.assertFalse(unmuted["audio"]["muted"])
        await alice.kick(bob.memberID)
        await bob.expect("CONFERENCE_KICK_indication")
        self.assertIsNotNone(await asyncio.wait_for(bob.closed, 5))
        await alice.leave()
        self.assertIsNone(alice.memberID)

    @asyncTest
    async def test_refusal(self):
        """A status other than 200 raises RequestFailed with the response; request() returns it."""
        s = await self.server()
        c = await self.connect(s.url)
        with self.assertRaises(RequestFailed) as e:
            await c.join("nowhere", "x")
        self.assertEqual(e.exception.status, 404)
        self.assertEqual(e.exception.response["messageType"], "CONFERENCE_JOIN_response")
        response = await c.request("NO_SUCH_request")
        self.assertEqual(response["status"], 501)

    @asyncTest
    async def test_eventsAndCallbacks(self):
        """on() sees every message of its type; events() yields the kept ones in order."""
        s = await self.server()
        alice = await self.connect(s.url)
        await alice.create("room")
        await alice.join("room", "alice")
        seen = []
        alice.on("CHAT_MESSAGE_indication", seen.append)
        bob = await self.connect(s.url)
        await bob.join("room", "bob")
        for text in ("one", "two"):
            await bob.chat(text)
        kinds = []
        async for message in alice.events():
            kinds.append(message["messageType"])
            if len(kinds) == 3:
                break
        self.assertEqual(kinds, ["CONFERENCE_JOIN_indication", "CHAT_MESSAGE_indication",
                                 "CHAT_MESSAGE_indication"])
        self.assertEqual([m["message"]["text"] for m in seen], ["one", "two"])
        self.assertEqual(alice.counts["CHAT_MESSAGE_indication"], 2)

    @asyncTest
    async def test_keep(self):
        """keep() decides what stays in the inbox; the counts see everything."""
        s = await self.server()
        alice = await self.connect(s.url, keep=lambda m: m["messageType"] != "CHAT_MESSAGE_indication")
        await alice.create("room")
        await alice.join("room", "alice")
        bob = await self.connect(s.url)
        await bob.join("room", "bob")
        await bob.chat("x")
        await bob.describe("marker")
        await alice.expect("CONFERENCE_DESCRIPTION_indication")
        self.assertEqual([m["messageType"] for m in alice.inbox], ["CONFERENCE_JOIN_indication"])
        self.assertEqual(alice.counts["CHAT_MESSAGE_indication"], 1)

    @asyncTest
    async def test_timeoutAndClose(self):
        """expect() gives up after its timeout; after the server closes, waits end at once."""
        s = await self.server()
        c = await self.connect(s.url)
        with self.assertRaises(NoMessage):
            await c.expect("CHAT_MESSAGE_indication", timeout=0.2)
        await s.stop()
        await asyncio.wait_for(c.closed, 5)
        with self.assertRaises(ConnectionLost):
            await c.expect("CHAT_MESSAGE_indication")
        with self.assertRaises(ConnectionLost):
            await c.request("CONFERENCE_CREATE_request")

    def test_rtcConfiguration(self):
        """Peer connections use the join's iceServers, and none without them."""
        client = ProtocolClient.__new__(ProtocolClient)
        client.iceServers = []
        self.assertEqual(client.rtcConfiguration().iceServers, [])
        client.iceServers = [{"urls": ["turn:192.0.2.1"], "username": "u", "credential": "p"}]
        (server,) = client.rtcConfiguration().iceServers
        self.assertEqual((server.urls, server.username, server.credential),
                         (["turn:192.0.2.1"], "u", "p"))


class MediaTests(ClientTestCase):
    """publish() and subscribe() with real aiortc tracks through the real engine."""

    def setUp(self):
        import aioice.ice

        self.patch(aioice.ice, "get_host_addresses",
                   lambda use_ipv4=True, use_ipv6=True: ["127.0.0.1"])

    @asyncTest
    async def test_publishSubscribe(self):
        """Alice publishes a picture and a tone; Bob's subscription yields her picture."""
        s = await self.server(engine="aiortc")
        alice = await self.connect(s.url)
        bob = await self.connect(s.url)
        await alice.create("room")
        await alice.join("room", "alice")
        await bob.join("room", "bob")
        publication = await alice.publish([ToneAudioTrack(), PatternVideoTrack(tag=5)],
                                          maxVideoBitrate=300)
        self.addCleanup(lambda: Deferred.fromFuture(asyncio.ensure_future(publication.close())))
        self.assertIn("b=AS:300", publication.offer)
        while True:
            m = await bob.expect("MEDIA_indication", timeout=30)
            if m["member"]["memberID"] == alice.memberID and m["video"]["available"]:
                break
        subscription = await bob.subscribe(alice.memberID)
        self.addCleanup(lambda: Deferred.fromFuture(asyncio.ensure_future(subscription.close())))
        video = await subscription.track("video", timeout=30)
        self.assertIn("audio", subscription.tracks)
        tags = set()
        for _ in range(60):
            frame = await asyncio.wait_for(video.recv(), 30)
            tag, n, ok = readPattern(frame)
            if ok:
                tags.add(tag)
            if tags:
                break
        self.assertEqual(tags, {5})

    @asyncTest
    async def test_exampleBot(self):
        """docs/examples/listener_bot.py answers !who and decodes a sharing member's video."""
        spec = importlib.util.spec_from_file_location("listener_bot", EXAMPLE)
        example = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(example)
        s = await self.server(engine="aiortc")
        alice = await self.connect(s.url)
        await alice.create("team")
        await alice.join("team", "alice")
        bot = example.ListenerBot(await ProtocolClient.connect(s.url))
        running = asyncio.ensure_future(bot.run("team", "bot"))
        self.addCleanup(lambda: Deferred.fromFuture(asyncio.ensure_future(bot.close())))
        await alice.expect("CONFERENCE_JOIN_indication")
        publication = await alice.publish([PatternVideoTrack(tag=3)])
        self.addCleanup(lambda: Deferred.fromFuture(asyncio.ensure_future(publication.close())))
        await alice.chat("!who")
        answer = await alice.expect("CHAT_MESSAGE_indication", timeout=30)
        self.assertEqual(answer["message"]["text"], "alice")  # the others
        await waitFor(lambda: bot.frames.get(alice.memberID, 0) >= 5, what="frames at the bot")
        self.assertFalse(running.done())
