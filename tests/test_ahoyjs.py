# -*- test-case-name: tests.test_ahoyjs -*-
"""
The original client's wire habits (protocol.md 4.10): the protocol authors'
own JavaScript client, ahoy-js, must work against this server unmodified.

The project does not contain ahoy-js.  C{tests/legacy_client.js} is a client
of our own that talks the way ahoy-js talks (documented in protocol.md 4.10);
L{LegacyBrowserTests} runs two of them in headless Chromium with a fake camera
and a fake microphone that alternates a tone and silence, against the real
server with its aiortc engine.  L{LegacyWireTests} checks the same habits,
and the bad input next to them, at the protocol level (a WebSocket client and
aiortc peers).
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import struct
import tempfile
import wave
from pathlib import Path

from twisted.trial.unittest import SkipTest, TestCase

from ahoyconference import tokens
from ahoyconference.interfaces import Role
from ahoyconference.plugins.token_policy import TokenPolicy
from tests import test_browser
from tests.helpers import Client, Server, asyncTest
from tests.mediaclients import Publisher, Subscriber, waitFor
from tests.test_media_engine import loopbackOnly

LEGACY_JS = Path(__file__).resolve().parent / "legacy_client.js"
SECRET = "a-test-secret-of-at-least-thirty-two-bytes"


def jsEscape(text: str) -> str:
    """JavaScript's C{escape()}: what ahoy-js does to its SDP answers."""
    out = []
    for ch in text:
        code = ord(ch)
        if ch.isascii() and (ch.isalnum() or ch in "@*_+-./"):
            out.append(ch)
        elif code < 256:
            out.append(f"%{code:02X}")
        else:
            data = ch.encode("utf-16-be")
            out.extend(f"%u{data[i]:02X}{data[i + 1]:02X}" for i in range(0, len(data), 2))
    return "".join(out)


def withoutCandidates(sdp: str) -> str:
    """An answer as ahoy-js sends it: made before gathering, no candidates."""
    return "".join(line for line in sdp.splitlines(keepends=True)
                   if not line.startswith(("a=candidate:", "a=end-of-candidates")))


class EscapeTests(TestCase):
    """L{jsEscape} is JavaScript's escape(), so the tests send what ahoy-js sends."""

    def test_escape(self):
        self.assertEqual(jsEscape("v=0\r\na=x y\u00e9\u263a"),
                         "v%3D0%0D%0Aa%3Dx%20y%E9%u263A")


class _ServerTestCase(TestCase):
    """Real servers and WebSocket clients, stopped and closed after each test."""

    timeout = 60

    def setUp(self):
        self.servers: list[Server] = []
        self.clients: list[Client] = []

    @asyncTest
    async def tearDown(self):
        for client in self.clients:
            await client.close()
        for server in self.servers:
            await server.stop()

    async def server(self, **kwargs) -> Server:
        server = await Server(**kwargs).start()
        self.servers.append(server)
        return server

    async def connect(self, server: Server) -> Client:
        c = await Client.connect(server.url)
        self.clients.append(c)
        return c


class LegacyWireTests(_ServerTestCase):
    """ahoy-js's habits and the bad input next to them, over a real socket."""

    @asyncTest
    async def test_createTwiceThenJoin(self):
        """
        Create with a null listener password on one socket, close it, join
        on a new one; a second create of the same ID is 486 "conference
        exists" and changes nothing; the moderator password then joins.
        """
        s = await self.server()
        for attempt in range(2):
            c = await self.connect(s)
            r = await c.request("CONFERENCE_CREATE_request", conferenceID="my conference",
                                conferenceName="my conference", listenerPassword=None,
                                password="sp34k3r", moderatorPassword="m0d3r4t0r")
            expected = (200, "OK") if attempt == 0 else (486, "conference exists")
            self.assertEqual((r["status"], r["reason"]), expected)
            await c.close()
            c = await self.connect(s)
            r = await c.request("CONFERENCE_JOIN_request", conferenceID="my conference",
                                name=f"me {attempt}", password="m0d3r4t0r")
            self.assertEqual(r["status"], 200, r)
            self.assertTrue(r["moderator"])
        settings = s.service.conferences["my conference"].settings
        self.assertEqual(settings.listenerPassword, "")
        self.assertEqual(settings.password, "sp34k3r")
        # "" joins as a listener: the null listener password was "not set"
        c = await self.connect(s)
        r = await c.request("CONFERENCE_JOIN_request", conferenceID="my conference", name="l")
        self.assertEqual((r["status"], r["speaker"], r["moderator"]), (200, False, False))

    async def room(self, s: Server):
        owner = await self.connect(s)
        await owner.request("CONFERENCE_CREATE_request", conferenceID="r")
        joined = await owner.request("CONFERENCE_JOIN_request", conferenceID="r", name="owner")
        other = await self.connect(s)
        await other.request("CONFERENCE_JOIN_request", conferenceID="r", name="other")
        await owner.expect("CONFERENCE_JOIN_indication")
        return owner, joined["memberID"], other

    @asyncTest
    async def test_lock(self):
        """
        C{lock: true|false} (and 0/1) locks and unlocks like C{locked}; the
        indication says C{locked}.  A lock that is not a flag, or no flag at
        all, is 400 and changes nothing.
        """
        s = await self.server()
        owner, _, other = await self.room(s)
        conf = s.service.conferences["r"]
        for value in (True, 0, 1):
            r = await owner.request("CONFERENCE_LOCK_request", lock=value)
            self.assertEqual(r["status"], 200)
            ind = await other.expect("CONFERENCE_LOCK_indication")
            self.assertEqual(ind["locked"], bool(value))
            self.assertEqual(conf.locked, bool(value))
        for bad in ({"lock": 2}, {"lock": "yes"}, {"lock": 1.0}, {}, {"lock": None},
                    {"locked": True, "lock": "no"}):
            r = await owner.request("CONFERENCE_LOCK_request", **bad)
            self.assertEqual(r["status"], 400, bad)
            self.assertTrue(conf.locked)
        self.assertEqual([m for m in await other.quiet() if "LOCK" in m["messageType"]], [])
        joiner = await self.connect(s)
        r = await joiner.request("CONFERENCE_JOIN_request", conferenceID="r", name="late")
        self.assertEqual(r["status"], 470)

    @asyncTest
    async def test_numericFlags(self):
        """
        Flags are 0/1 too: in MEDIA_MUTE_request, MEDIA_request entries and
        MEDIA_SHARE_request; 2, "1", 1.0 are 400 and change nothing.
        """
        s = await self.server()
        owner, ownerID, other = await self.room(s)
        r = await other.request("MEDIA_MUTE_request", audio=0, video=1)
        self.assertEqual(r["status"], 200)
        ind = await owner.expect("MEDIA_indication")
        self.assertEqual((ind["audio"]["muted"], ind["video"]["muted"]), (False, True))
        events = {(await owner.expect("MEDIA_event"))["event"]}
        self.assertEqual(events, {"audio_unmute"})
        r = await other.request("MEDIA_request", members=[
            {"memberID": ownerID, "audio": 1, "video": 0}])
        self.assertEqual(r["status"], 200)
        for bad in (2, "1", 1.0, -1, [1]):
            for request, params in (
                    ("MEDIA_MUTE_request", {"audio": bad}),
                    ("MEDIA_request", {"members": [{"memberID": ownerID, "audio": bad}]}),
                    ("MEDIA_SHARE_request", {"audio": bad, "video": 0})):
                r = await other.request(request, **params)
                self.assertEqual(r["status"], 400, (request, bad))
        member = s.service.conferences["r"].members[ownerID]
        self.assertEqual(member.muted, {"audio": True, "video": True})
        self.assertEqual([m for m in await owner.quiet() if m["messageType"].startswith("MEDIA")],
                         [])

    @asyncTest
    async def test_invitation(self):
        """
        With the token policy, a join carrying only C{invitation} (and no
        name) joins the conference the token names, with its role and its
        name; a bad token is 403, a token for a missing conference 404.
        """
        from twisted.internet import reactor

        s = await self.server(policy=TokenPolicy(SECRET, reactor, create="anyone"))
        owner = await self.connect(s)
        await owner.request("CONFERENCE_CREATE_request", conferenceID="webinar")
        now = reactor.seconds()
        token = tokens.mint(SECRET, "webinar", Role.SPEAKER, now + 60, name="Invited")
        c = await self.connect(s)
        r = await c.request("CONFERENCE_JOIN_request", invitation=token)
        self.assertEqual((r["status"], r["conferenceID"]), (200, "webinar"), r)
        self.assertEqual((r["speaker"], r["moderator"]), (True, False))
        member = s.service.conferences["webinar"].members[r["memberID"]]
        self.assertEqual(member.name, "Invited")
        for bad, status in ((token[:-2] + "xx", 403),
                            (tokens.mint(SECRET, "gone", Role.SPEAKER, now + 60), 404),
                            (tokens.mint(SECRET, "webinar", Role.SPEAKER, now - 1), 403)):
            c = await self.connect(s)
            r = await c.request("CONFERENCE_JOIN_request", invitation=bad, name="x")
            self.assertEqual(r["status"], status)
        c = await self.connect(s)
        r = await c.request("CONFERENCE_JOIN_request", invitation=token, conferenceID="other")
        self.assertEqual(r["status"], 403)
        self.assertEqual(len(s.service.conferences["webinar"].members), 1)

    @asyncTest
    async def test_invitationWithoutTokenPolicy(self):
        """The password policy takes no invitations: 400; no conferenceID at all: 400."""
        s = await self.server()
        owner = await self.connect(s)
        await owner.request("CONFERENCE_CREATE_request", conferenceID="r")
        r = await owner.request("CONFERENCE_JOIN_request", invitation="whatever")
        self.assertEqual(r["status"], 400)
        r = await owner.request("CONFERENCE_JOIN_request", name="x")
        self.assertEqual(r["status"], 400)


class LegacyMediaWireTests(_ServerTestCase):
    """
    Answers as ahoy-js sends them (no status, escape()d, no candidates) from
    aiortc peers; the repeated MEDIA_request; one MEDIA_indication per share.
    """

    timeout = 90

    def setUp(self):
        super().setUp()
        self.peers = []
        loopbackOnly(self)

    @asyncTest
    async def tearDown(self):
        for client in self.clients:
            await client.close()
        for peer in self.peers:
            await peer.close()
        for server in self.servers:
            await server.stop()

    @asyncTest
    async def test_escapedAnswersWithoutStatus(self):
        """
        Alice publishes and Bob subscribes with escape()d, candidate-less
        answers without status; a broken escape is 400 and changes nothing
        (the right answer still works after it).  Bob sees one
        MEDIA_indication for Alice's share, with audio and video together.
        Two MEDIA_requests in a row while an offer is out give one offer; a
        later one replaces the subscription: one peer connection per
        subscriber and publisher, never two.
        """
        server = await self.server(engine="aiortc")
        engine = server.service.engine
        alice, bob = await self.connect(server), await self.connect(server)
        peers = self.peers
        await alice.request("CONFERENCE_CREATE_request", conferenceID="r")
        aliceID = (await alice.request("CONFERENCE_JOIN_request", conferenceID="r",
                                       name="alice"))["memberID"]
        await bob.request("CONFERENCE_JOIN_request", conferenceID="r", name="bob")

        r = await alice.request("MEDIA_SHARE_request", audio=1, video=1, maxVideoBitrate=500)
        self.assertEqual(r["status"], 200)
        offer = await alice.expect("MEDIA_RECEIVE_request")
        publisher = Publisher()
        peers.append(publisher)
        answer = withoutCandidates(await publisher.answer(offer["sdp"]))
        self.assertNotIn("a=candidate", answer)
        for broken in (jsEscape(answer)[:-1] + "%Z", jsEscape(answer) + "%uD800", "%"):
            await alice.send({"messageType": "MEDIA_RECEIVE_response", "sdp": broken,
                              "transactionID": offer["transactionID"]})
            error = await alice.expect("ERROR_response")
            self.assertEqual(error["status"], 400)
        self.assertEqual(server.service.members[aliceID].available,
                         {"audio": False, "video": False})
        await alice.send({"messageType": "MEDIA_RECEIVE_response", "sdp": jsEscape(answer),
                          "transactionID": offer["transactionID"]})

        indication = await bob.expect("MEDIA_indication", timeout=30)
        self.assertEqual((indication["audio"]["available"], indication["video"]["available"]),
                         (True, True), indication)

        async def subscribeOnce() -> Subscriber:
            request = await bob.expect("SDP_request", transactionID=aliceID)
            subscriber = Subscriber()
            peers.append(subscriber)
            answer = withoutCandidates(await subscriber.answer(request["sdp"]))
            await bob.send({"messageType": "SDP_response", "sdp": jsEscape(answer),
                            "transactionID": aliceID})
            return subscriber

        entry = {"memberID": aliceID, "audio": 1, "video": 1}
        await bob.send({"messageType": "MEDIA_request", "members": [entry],
                        "transactionID": aliceID})
        first = await subscribeOnce()
        await waitFor(lambda: len(first.frames) >= 10 and len(first.audio) >= 20,
                      what="Alice's media at Bob", timeout=30)

        # two MEDIA_requests in a row: one offer (the second came while it was out)
        for _ in range(2):
            await bob.send({"messageType": "MEDIA_request", "members": [entry],
                            "transactionID": aliceID})
        second = await subscribeOnce()
        await waitFor(lambda: len(second.frames) >= 10, what="media on the new subscription",
                      timeout=30)
        late = [m for m in await bob.quiet(1.0) if m["messageType"] == "SDP_request"]
        self.assertEqual(late, [])
        stats = engine.stats()
        self.assertEqual((stats["publishers"], stats["subscriptions"]), (1, 1), stats)
        await waitFor(lambda: sum(engine.stats()["peer_connections"].values()) == 2,
                      what="the replaced subscription's connection closed")
        # nothing on the wire said MEDIA_indication again: the share came up once
        self.assertEqual([m for m in bob.received if m["messageType"] == "MEDIA_indication"], [])


def toneAndSilenceWav(path: str, seconds: float = 12.0, period: float = 3.0) -> None:
    """
    A WAV for Chromium's fake microphone: a loud 440 Hz tone for half of
    every C{period} seconds and silence for the other half, so that the
    server's speaking detection toggles.
    """
    rate = 48000
    frames = bytearray()
    for i in range(int(seconds * rate)):
        t = i / rate
        on = (t % period) < period / 2
        sample = int(20000 * math.sin(2 * math.pi * 440 * t)) if on else 0
        frames += struct.pack("<h", sample)
    with wave.open(path, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(bytes(frames))


class LegacyBrowserTests(test_browser.BrowserTestCase):
    """
    Two Chromium pages with ahoy-js's habits (C{tests/legacy_client.js}) in
    one room, publishing and subscribing through the real server.
    """

    timeout = 240

    @asyncTest
    async def _setUp(self):
        from playwright.async_api import async_playwright

        self.pages = []
        self.clients = []
        self.servers = []
        self.addCleanup(self._tearDown)
        self.server = await self.startServer(self.config())
        wav = os.path.join(tempfile.mkdtemp(prefix="ahoy-legacy-"), "tone-and-silence.wav")
        toneAndSilenceWav(wav)
        self.playwright = await async_playwright().start()
        self.browser = await self.playwright.chromium.launch(
            executable_path=test_browser.CHROMIUM, headless=True,
            args=test_browser.CHROMIUM_ARGS + [f"--use-file-for-fake-audio-capture={wav}"])

    async def legacyPage(self, label: str, name: str):
        """A page on the server's origin running the legacy client as C{window.c}."""
        context = await self.browser.new_context()
        page = test_browser.BrowserPage(self, label, context, await context.new_page())
        self.pages.append(page)
        # A page of the server's own origin and address (Chromium's local
        # network access checks refuse a WebSocket to 127.0.0.1 from a page
        # that came from nowhere), with the legacy client and nothing else.
        await page.page.goto(self.server.http + "legacy-test-page")
        await page.page.set_content("<!doctype html><meta charset=utf-8><title>legacy</title>")
        await page.page.add_script_tag(content=LEGACY_JS.read_text())
        await page.page.evaluate("([url, name]) => { window.c = new LegacyClient(url, name); }",
                                 [self.server.url, name])
        return page

    async def evaluate(self, page, script: str, arg=None):
        return await page.page.evaluate(script, arg)

    async def received(self, page, messageType: str) -> list[dict]:
        text = await page.page.evaluate(
            "t => JSON.stringify(window.c.received.filter(m => m.messageType === t))",
            messageType)
        return json.loads(text)

    async def receiving(self, page, name: str, frames: int, packets: int, serial=None) -> dict:
        """Wait until the page decodes C{frames} and receives C{packets} of C{name}."""
        found = await page.poll(
            """([name, frames, packets, serial]) => window.c.mediaStats().then(all =>
                   all.find(s => s.name === name && s.framesDecoded >= frames &&
                            s.frameWidth > 0 && s.audioPackets >= packets &&
                            (serial === null || s.serial === serial)))""",
            f"receiving {name}'s media", timeout=test_browser.MEDIA_WAIT,
            arg=[name, frames, packets, serial])
        return found

    @asyncTest
    async def test_twoLegacyMembers(self):
        """
        Create-then-join on new sockets, twice (486 the second time); both
        publish and subscribe with ahoy-js's answers (no status, escape()d,
        no candidates) and numeric flags; video is decoded and audio arrives
        both ways.  Speaking toggles produce MEDIA_event and no
        MEDIA_indication; a repeated MEDIA_request replaces the subscription
        (one peer connection per subscriber and publisher); lock with
        C{lock}; chat.
        """
        alice = await self.legacyPage("alice", "alice")
        bob = await self.legacyPage("bob", "bob")
        created = await self.evaluate(
            alice, "() => c.create('my conference', null, 'sp34k3r', 'm0d3r4t0r')")
        self.assertEqual(created, 200)
        joined = await self.evaluate(alice, "() => c.join('my conference', 'm0d3r4t0r')")
        self.assertEqual((joined["status"], joined["moderator"]), (200, True))
        await self.evaluate(alice, "() => c.publish(true, true, 500)")
        # the second load of the page: the same create is 486, then join
        created = await self.evaluate(
            bob, "() => c.create('my conference', null, 'sp34k3r', 'm0d3r4t0r')")
        self.assertEqual(created, 486)
        joined = await self.evaluate(bob, "() => c.join('my conference', 'm0d3r4t0r')")
        self.assertEqual(joined["status"], 200)
        await self.evaluate(bob, "() => c.publish(true, true, 500)")

        await self.receiving(alice, "bob", 30, 100)
        await self.receiving(bob, "alice", 30, 100)
        for page in (alice, bob):
            self.assertEqual(await self.evaluate(page, "() => c.answersWithCandidates()"), 0)
            self.assertEqual(await self.received(page, "ERROR_response"), [])
        engine = self.server.service.engine
        stats = engine.stats()
        self.assertEqual((stats["publishers"], stats["subscriptions"]), (2, 2), stats)
        await waitFor(lambda: sum(engine.stats()["peer_connections"].values()) == 4,
                      what="one peer connection per publisher and subscription")

        # speaking: the fake microphone toggles every 1.5 s
        indicationsBefore = len(await self.received(alice, "MEDIA_indication"))
        await alice.poll(
            """() => {
                 const e = window.c.received.filter(m => m.messageType === 'MEDIA_event' &&
                                                         m.member.name === 'bob')
                                            .map(m => m.event);
                 return e.includes('start_speaking') && e.includes('stop_speaking') &&
                        e.filter(x => x === 'start_speaking').length >= 2;
               }""", "hearing bob start and stop speaking twice", timeout=40)
        events = await self.received(alice, "MEDIA_event")
        self.assertTrue(all(e["member"]["name"] in ("alice", "bob") for e in events))
        self.assertEqual(len(await self.received(alice, "MEDIA_indication")), indicationsBefore)
        # the media is still on the first subscription: no re-subscription happened
        first = await self.receiving(alice, "bob", 30, 100)

        # a repeated MEDIA_request (twice in a row) replaces the subscription once
        requestsBefore = len(await self.received(alice, "SDP_request"))
        await self.evaluate(alice, """() => { const b = Object.values(c.members)[0];
                                              c.requestMedia(b); c.requestMedia(b); }""")
        await self.receiving(alice, "bob", first["framesDecoded"] // 4 + 10, 50,
                             serial=first["serial"] + 1)
        await asyncio.sleep(1.0)
        self.assertEqual(len(await self.received(alice, "SDP_request")), requestsBefore + 1)
        stats = engine.stats()
        self.assertEqual((stats["publishers"], stats["subscriptions"]), (2, 2), stats)
        await waitFor(lambda: sum(engine.stats()["peer_connections"].values()) == 4,
                      what="the replaced subscription's connection closed")

        # lock with `lock`, then a third member is refused; unlock
        response = await self.evaluate(alice, "() => c.lock(true)")
        self.assertEqual(response["status"], 200)
        await bob.poll("""() => window.c.received.some(m =>
                              m.messageType === 'CONFERENCE_LOCK_indication' && m.locked)""",
                       "told of the lock")
        late = await Client.connect(self.server.url)
        self.clients.append(late)
        r = await late.request("CONFERENCE_JOIN_request", conferenceID="my conference",
                               name="late", password="sp34k3r")
        self.assertEqual(r["status"], 470)
        response = await self.evaluate(alice, "() => c.lock(false)")
        self.assertEqual(response["status"], 200)
        response = await self.evaluate(alice, "() => c.chat(JSON.stringify({chat: 'hi'}))")
        self.assertEqual(response["status"], 200)
        await bob.poll("""() => window.c.received.some(m =>
                              m.messageType === 'CHAT_MESSAGE_indication')""", "chat")


class LegacyInvitationBrowserTests(test_browser.BrowserTestCase):
    """ahoy-js's joinWithInvitation against the token policy, in Chromium."""

    engine = None

    async def startServer(self, config, port: int = 0) -> Server:
        from twisted.internet import reactor

        server = Server(config=config, policy=TokenPolicy(SECRET, reactor, create="anyone"))
        await server.start()
        self.servers.append(server)
        return server

    @asyncTest
    async def test_joinWithInvitation(self):
        """C{{invitation}} alone joins the conference the token names, with its role."""
        if not os.path.exists(test_browser.CHROMIUM):
            raise SkipTest("no chromium")
        from twisted.internet import reactor

        owner = await Client.connect(self.server.url)
        self.clients.append(owner)
        await owner.request("CONFERENCE_CREATE_request", conferenceID="webinar")
        token = tokens.mint(SECRET, "webinar", Role.LISTENER, reactor.seconds() + 60)
        page = await LegacyBrowserTests.legacyPage(self, "invited", "invited")
        joined = await page.page.evaluate("t => c.joinWithInvitation(t)", token)
        self.assertEqual((joined["status"], joined["conferenceID"], joined["speaker"]),
                         (200, "webinar", False), joined)
        self.assertEqual(len(self.server.service.conferences["webinar"].members), 1)

