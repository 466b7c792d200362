# -*- test-case-name: tests.test_browser -*-
"""
The browser client (C{ahoyconference/static/}) driven in headless Chromium.

How: the real server runs in-process on a loopback port (L{tests.helpers.Server}),
and Playwright's I{async} API runs on the same asyncio loop that trial's asyncio
reactor runs (C{trial --reactor=asyncio}).  One loop for everything means the
test can look at the server's state and use the protocol-level test client
(L{tests.helpers.Client}) and aiortc peers side by side with the pages, with no
second process to start, find a port for, or clean up; Chromium itself is a
child process of Playwright's driver, and Playwright owns its lifetime.

Chromium gets the flags of docs/architecture.md, Tests (fake camera and microphone, loopback
allowed in WebRTC, no mDNS host names) and every page is opened with
C{?loopbackOnly=1}, so the answers it sends carry 127.0.0.1 candidates only;
the server gathers on 127.0.0.1 only (L{tests.helpers.testConfig}).  The
tests check both, and that every browser peer connection sends to 127.0.0.1.
(Chromium may still pick its socket on another address of this host as the
local end of a pair: nothing a page can prevent; see the candidate pairs
logged in each page's artifacts/*.log.)

Async checks (C{getStats}) are polled with C{page.evaluate}, which awaits
promises; C{wait_for_function} does not, and would pass on the promise itself.

Artifacts (screenshots, each page's console log) go to C{artifacts/}.  With
C{AHOY_UPDATE_SCREENSHOT=1} the two-member room screenshot is also written to
C{docs/screenshot-room.png}.

Skipped only when C{/usr/bin/chromium} is missing.

Over 400 lines: the page helpers (L{BrowserPage}, L{BrowserTestCase}) stay
next to the only tests that use them.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path
from urllib.parse import urlencode

import aioice.ice
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.trial.unittest import SkipTest, TestCase

from ahoyconference.config import Limits
from ahoyconference.interfaces import ConferenceSettings
from ahoyconference.media.simulcast import LOWER_LAYERS_KBPS
from tests.helpers import Client, Server, asyncTest, join, testConfig

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
    "--allow-loopback-in-peer-connection",
    "--disable-features=WebRtcHideLocalIpsWithMdns",
]
ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "artifacts"
DOC_SCREENSHOT = ROOT / "docs" / "screenshot-room.png"
WAIT = 20.0          # seconds for a page to reach a state
MEDIA_WAIT = 45.0    # seconds for media to flow (two browsers and the SFU share 2 cores)


def _future(d):
    """A Twisted Deferred as an awaitable on the running loop."""
    return d.asFuture(asyncio.get_event_loop())


class BrowserPage:
    """
    One browser participant: a Playwright page in its own browser context
    (its own storage, its own fake devices), with its console collected.
    """

    def __init__(self, test: BrowserTestCase, label: str, context, page):
        self.test = test
        self.label = label
        self.context = context
        self.page = page
        self.console: list[str] = []
        self.errors: list[str] = []
        page.on("console", lambda m: self.console.append(f"{m.type}: {m.text}"))
        page.on("pageerror", lambda e: self.errors.append(str(e)))

    async def open(self, base: str, **query) -> BrowserPage:
        """Load the client with the test flags (and any other URL parameters)."""
        params = {"loopbackOnly": "1", "lowres": "1", "testhook": "1", **query}
        await self.page.goto(base + "?" + urlencode(params))
        await self.waitFor("window.ahoy && window.ahoy.state.connection === 'open'",
                           "connected to the server")
        return self

    async def state(self) -> dict:
        """A JSON copy of the client's state (without its peer connections)."""
        text = await self.page.evaluate("""() => JSON.stringify(window.ahoy.state,
            (k, v) => (k === 'sub' || k === 'answers') ? undefined : v)""")
        return json.loads(text)

    async def waitFor(self, expression: str, what: str, timeout: float = WAIT, arg=None):
        """Wait until a JavaScript expression (or function of C{arg}) is truthy."""
        try:
            return await self.page.wait_for_function(expression, arg=arg,
                                                     timeout=timeout * 1000, polling=100)
        except Exception as e:  # playwright's TimeoutError, or the page went away
            try:
                state = await self.state()
            except Exception:
                state = "(unreadable)"
            raise AssertionError(f"{self.label}: not {what} within {timeout}s ({e}); "
                                 f"state: {state}; console: {self.console[-15:]}")

    async def poll(self, function: str, what: str, timeout: float = WAIT, arg=None):
        """
        Evaluate a JavaScript function (which may return a promise: unlike
        C{wait_for_function}, C{evaluate} awaits it) every 100 ms until it
        returns something truthy; return that.
        """
        loop = asyncio.get_event_loop()
        deadline = loop.time() + timeout
        result = None
        while loop.time() < deadline:
            result = await self.page.evaluate(function, arg)
            if result:
                return result
            await asyncio.sleep(0.1)
        stats = await self.page.evaluate("window.ahoy.mediaStats()")
        raise AssertionError(f"{self.label}: not {what} within {timeout}s (last: {result!r}); "
                             f"media: {stats}; state: {await self.state()}; "
                             f"console: {self.console[-15:]}")

    async def joinRoom(self, room: str, name: str, password: str = "") -> None:
        """Fill in and submit the join form; wait until in the room."""
        await self.page.fill("#join-room", room)
        await self.page.fill("#join-name", name)
        await self.page.fill("#join-password", password)
        await self.page.click("#join-submit")
        await self.waitFor("window.ahoy.state.screen === 'room'", f"in room {room}")

    async def joinError(self, room: str, name: str, password: str = "") -> str:
        """Submit the join form expecting a refusal; return the message shown."""
        await self.page.fill("#join-room", room)
        await self.page.fill("#join-name", name)
        await self.page.fill("#join-password", password)
        await self.page.evaluate("document.getElementById('join-error').textContent = ''")
        await self.page.click("#join-submit")
        await self.waitFor("document.getElementById('join-error').textContent !== ''",
                           f"refused joining {room}")
        self.test.assertEqual(await self.stateValue("screen"), "join")
        return await self.page.text_content("#join-error")

    async def stateValue(self, path: str):
        """One value of the client's state, by a dotted path."""
        return await self.page.evaluate(
            "p => p.split('.').reduce((o, k) => o == null ? o : o[k], window.ahoy.state)", path)

    async def tile(self, name: str):
        """The tile of the member with this display name."""
        locator = self.page.locator(f"#tiles .tile[data-name={json.dumps(name)}]")
        await locator.wait_for(timeout=WAIT * 1000)
        return locator

    async def shareBoth(self) -> None:
        """Click share camera and share microphone, as a person would."""
        await self.page.click("#share-camera")
        await self.waitFor("window.ahoy.state.sharing.video", "sharing the camera")
        await self.page.click("#share-mic")
        await self.waitFor("window.ahoy.state.sharing.audio", "sharing the microphone")

    async def mediaOf(self, name: str) -> dict:
        """What this page receives of a member: video size, frames decoded, audio."""
        stats = await self.page.evaluate("window.ahoy.mediaStats()")
        for s in stats:
            if s["name"] == name:
                return s
        raise AssertionError(f"{self.label}: no member {name!r} in {stats}")

    async def waitSubscribed(self, name: str) -> None:
        """
        Wait until the member shares audio and video (MEDIA_indication) and
        this page's current subscription to it (the peer connection of the
        latest SDP_request) receives both.
        """
        await self.poll("""name => window.ahoy.mediaStats().then(all => all.some(s =>
                                s.name === name && s.kinds.includes('audio') &&
                                s.kinds.includes('video') && s.connectionState === 'connected'))""",
                           f"subscribed to {name}'s audio and video", timeout=MEDIA_WAIT,
                           arg=name)

    async def assertVideoPlaying(self, name: str) -> dict:
        """
        The member's video plays here: the element has a size and the
        decoder's frame count keeps rising (on one subscription).
        """
        await self.poll(
            """name => window.ahoy.mediaStats().then(all => all.some(s =>
                   s.name === name && s.videoWidth > 0 && s.framesDecoded > 0 && !s.paused))""",
            f"showing {name}'s video", timeout=MEDIA_WAIT, arg=name)
        first = await self.mediaOf(name)
        await self.poll(
            """([name, serial, n]) => window.ahoy.mediaStats().then(all => all.some(s =>
                   s.name === name && s.serial === serial && s.framesDecoded >= n + 10 &&
                   s.videoWidth > 0))""",
            f"decoding more of {name}'s video", timeout=WAIT,
            arg=[name, first["serial"], first["framesDecoded"]])
        return await self.mediaOf(name)

    async def assertAudioArriving(self, name: str) -> None:
        """The member's audio arrives here and its audio element plays it."""
        await self.poll(
            """name => window.ahoy.mediaStats().then(all => all.some(s =>
                   s.name === name && s.audioSamples > 48000 && !s.audioPaused))""",
            f"receiving {name}'s audio", timeout=MEDIA_WAIT, arg=name)

    async def assertLoopbackAnswers(self) -> None:
        """Every answer this page sent offers 127.0.0.1 candidates only."""
        answers = await self.page.evaluate("window.ahoy.state.answers")
        self.test.assertTrue(answers, f"{self.label} sent no SDP answer")
        for a in answers:
            candidates = [line for line in a["sdp"].split("\r\n") if line.startswith("a=candidate:")]
            self.test.assertTrue(candidates, f"{self.label}: an answer without candidates")
            for line in candidates:
                self.test.assertEqual(line.split(" ")[4], "127.0.0.1", line)

    async def assertLoopbackPairs(self, count: int) -> list[dict]:
        """
        Each of its peer connections (C{count} of them) sends to the server's
        127.0.0.1.  (The local end may be another address of this host:
        Chromium pairs every local interface with the server's candidate.)
        """
        pairs = await self.page.evaluate("window.ahoy.selectedPairs()")
        self.console.append(f"selected candidate pairs: {pairs}")
        self.test.assertEqual(len(pairs), count, pairs)
        for pair in pairs:
            self.test.assertEqual(pair["remote"], "127.0.0.1", pair)
        return pairs

    async def screenshot(self, name: str) -> Path:
        """Save a screenshot to artifacts/."""
        ARTIFACTS.mkdir(exist_ok=True)
        path = ARTIFACTS / name
        await self.page.screenshot(path=str(path))
        return path

    async def close(self, testName: str) -> None:
        """Save the console log (and a last screenshot), close the context."""
        ARTIFACTS.mkdir(exist_ok=True)
        (ARTIFACTS / f"{testName}-{self.label}.log").write_text(
            "\n".join(self.console + [f"PAGE ERROR: {e}" for e in self.errors]) + "\n")
        try:
            await self.page.screenshot(path=str(ARTIFACTS / f"{testName}-{self.label}-last.png"))
        except Exception:
            pass
        await self.context.close()


class BrowserTestCase(TestCase):
    """
    Starts the server in-process and one headless Chromium; L{newPage} opens a
    participant.  Uncaught JavaScript errors in any page fail the test.
    """

    timeout = 120
    engine: str | None = "aiortc"

    def config(self):
        """The server's configuration for this test."""
        return testConfig()

    def setUp(self):
        if not os.path.exists(CHROMIUM):
            raise SkipTest(f"{CHROMIUM} is missing (apt-get install chromium)")
        return self._setUp()

    @asyncTest
    async def _setUp(self):
        from playwright.async_api import async_playwright

        self.pages: list[BrowserPage] = []
        self.clients: list[Client] = []
        self.servers: list[Server] = []
        self.addCleanup(self._tearDown)
        self.server = await self.startServer(self.config())
        self.playwright = await async_playwright().start()
        self.browser = await self.playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)

    async def startServer(self, config, port: int = 0) -> Server:
        """A server in-process on 127.0.0.1 (on a given port, or a free one)."""
        server = Server(config=config, engine=self.engine)
        if port:
            server.port = await _future(TCP4ServerEndpoint(
                server.reactor, port, interface="127.0.0.1").listen(server.site))
            server.service.startService()
        else:
            await server.start()
        self.servers.append(server)
        return server

    @asyncTest
    async def _tearDown(self):
        """
        Pages and clients first, then the servers once every connection is
        gone (the helpers' timer clean-up must not run under a live one).
        """
        problems = []

        async def step(coro):
            try:
                await coro
            except Exception as e:  # keep going: the servers must stop regardless
                problems.append(e)

        for p in self.pages:
            await step(p.close(self._testMethodName))
        for c in self.clients:
            await step(c.close())
        if getattr(self, "browser", None) is not None:
            await step(self.browser.close())
        if getattr(self, "playwright", None) is not None:
            await step(self.playwright.stop())
        for _ in range(500):
            if not any(s.service.sessions for s in self.servers):
                break
            await asyncio.sleep(0.01)
        for server in reversed(self.servers):
            await step(server.stop())
        if problems:
            raise problems[0]
        errors = [(p.label, e) for p in self.pages for e in p.errors]
        self.assertEqual(errors, [], "uncaught JavaScript errors")

    async def newPage(self, label: str, base: str | None = None, **query) -> BrowserPage:
        """A new participant (own browser context), with the client loaded."""
        context = await self.browser.new_context(viewport={"width": 1280, "height": 720})
        page = BrowserPage(self, label, context, await context.new_page())
        self.pages.append(page)
        return await page.open(base or self.server.http, **query)

    async def client(self, conferenceID: str, name: str, joinPassword: str = "",
                     **create) -> Client:
        """A protocol-level member (tests.helpers.Client) that creates and joins a room."""
        c = await Client.connect(self.server.url)
        self.clients.append(c)
        created = await c.request("CONFERENCE_CREATE_request", conferenceID=conferenceID, **create)
        self.assertEqual(created["status"], 200, created)
        joined = await c.request("CONFERENCE_JOIN_request", conferenceID=conferenceID,
                                 name=name, password=joinPassword)
        self.assertEqual(joined["status"], 200, joined)
        c.memberID = joined["memberID"]
        return c

    def member(self, conferenceID: str, name: str):
        """The server's Member of that name in that conference."""
        conference = self.server.service.conference(conferenceID)
        for m in conference.members.values():
            if m.name == name:
                return m
        raise AssertionError(f"no member {name!r} in {conferenceID}")


class SignallingTests(BrowserTestCase):
    """
    The client's signalling and UI against the real server with media off
    (L{ahoyconference.nomedia.NoMediaEngine}): joining, refusals, moderator
    controls, chat, the time limit, reconnecting.
    """

    engine = None

    @asyncTest
    async def test_refusals(self):
        """
        Each refusal gets its own clear message: 404, 403, 470, 486, 409 on
        create, and 503 from a server at its member limit; the right password
        then gets in, with the role it gives.
        """
        owner = await self.client("locked-room", "owner")
        await owner.request("CONFERENCE_LOCK_request", locked=True)
        await self.client("full-room", "first", maxMember=1)
        await self.client("secret-room", "host", "captain", password="sesame",
                          moderatorPassword="captain")

        page = await self.newPage("visitor")
        text = await page.joinError("no-such-room", "Vic")
        self.assertIn("There is no conference \u201cno-such-room\u201d", text)
        self.assertIn("404", text)
        text = await page.joinError("secret-room", "Vic", "wrong")
        self.assertIn("Wrong password", text)
        self.assertIn("403", text)
        text = await page.joinError("locked-room", "Vic")
        self.assertIn("locked by a moderator", text)
        self.assertIn("470", text)
        text = await page.joinError("full-room", "Vic")
        self.assertIn("The conference is full", text)
        self.assertIn("486", text)

        await page.page.fill("#join-name", "Vic")
        await page.page.fill("#create-id", "secret-room")
        await page.page.click("#create-submit")
        await page.waitFor("document.getElementById('create-error').textContent !== ''",
                           "refused creating an existing room")
        self.assertIn("already exists", await page.page.text_content("#create-error"))

        await page.joinRoom("secret-room", "Vic", "sesame")
        self.assertEqual(await page.stateValue("me.speaker"), True)
        self.assertEqual(await page.stateValue("me.moderator"), False)
        self.assertIn("speaker", await page.page.text_content("#my-role"))
        self.assertEqual(await (await page.tile("host")).get_attribute("data-role"), "moderator")
        self.assertTrue(await page.page.is_visible("#share-camera"))
        self.assertFalse(await page.page.is_visible("#lock-toggle"))

        # A second server at its member limit: 503.
        busy = await self.startServer(testConfig(limits=Limits(
            max_members=1, join_rate=0, chat_rate=0, max_connections_per_ip=0,
            max_conferences_per_client=0)))
        c = await Client.connect(busy.url)
        self.clients.append(c)
        await c.request("CONFERENCE_CREATE_request", conferenceID="r")
        await c.request("CONFERENCE_JOIN_request", conferenceID="r", name="only")
        other = await self.newPage("late", base=busy.http)
        text = await other.joinError("r", "Late")
        self.assertIn("The server is busy", text)
        self.assertIn("503", text)

    @asyncTest
    async def test_createForm(self):
        """
        The create form sends protocol 1.1's options and joins the new room
        as moderator; a listener (listener password) gets no share buttons.
        """
        page = await self.newPage("creator")
        await page.page.fill("#join-name", "Mo")
        await page.page.fill("#create-id", "made-here")
        await page.page.fill("#create-name", "Made Here")
        await page.page.fill("#create-description", "Agenda: <b>one</b> thing")
        await page.page.fill("#create-password", "spk")
        await page.page.fill("#create-listener-password", "lst")
        await page.page.fill("#create-moderator-password", "mod")
        await page.page.fill("#create-max-member", "7")
        await page.page.fill("#create-max-video-bitrate", "300")
        await page.page.fill("#create-time-limit", "30")
        await page.page.click("#create-submit")
        await page.waitFor("window.ahoy.state.screen === 'room'", "in the room it created")

        settings = self.server.service.conference("made-here").settings
        self.assertEqual(
            (settings.conferenceName, settings.password, settings.listenerPassword,
             settings.moderatorPassword, settings.maxMember, settings.maxVideoBitrate,
             settings.timeLimit),
            ("Made Here", "spk", "lst", "mod", 7, 300, 1800))
        self.assertEqual(await page.stateValue("me.moderator"), True)
        self.assertEqual(await page.page.text_content("#room-title"), "Made Here")
        # Shown as text, not markup.
        self.assertEqual(await page.page.text_content("#room-description"),
                         "Agenda: <b>one</b> thing")
        self.assertTrue(await page.page.is_visible("#countdown-pill"))
        seconds = int(await page.page.get_attribute("#countdown", "data-seconds"))
        self.assertTrue(1700 < seconds <= 1800, seconds)
        self.assertIn("room=made-here", page.page.url)

        listener = await self.newPage("listener", room="made-here")
        self.assertEqual(await listener.page.input_value("#join-room"), "made-here")
        await listener.joinRoom("made-here", "Lis", "lst")
        self.assertEqual(await listener.stateValue("me.speaker"), False)
        self.assertIn("listener", await listener.page.text_content("#my-role"))
        self.assertFalse(await listener.page.is_visible("#share-camera"))
        self.assertFalse(await listener.page.is_visible("#share-mic"))
        tile = await page.tile("Lis")
        self.assertEqual(await tile.get_attribute("data-role"), "listener")

    @asyncTest
    async def test_moderatorControls(self):
        """
        A moderator's page: lock and unlock, edit the description, mute
        another member, see who speaks, chat both ways, kick.
        """
        carol = await self.client("mod-room", "Carol", "spk", password="spk",
                                  moderatorPassword="mod")
        page = await self.newPage("moderator")
        await page.joinRoom("mod-room", "Mia", "mod")
        tile = await page.tile("Carol")
        self.assertEqual(await tile.get_attribute("data-role"), "speaker")
        await carol.expect("CONFERENCE_JOIN_indication")

        await page.page.click("#lock-toggle")
        self.assertEqual((await carol.expect("CONFERENCE_LOCK_indication"))["locked"], True)
        await page.waitFor("!document.getElementById('lock-state').hidden", "showing the lock")
        self.assertIn("Unlock", await page.page.text_content("#lock-toggle"))
        await page.page.click("#lock-toggle")
        self.assertEqual((await carol.expect("CONFERENCE_LOCK_indication"))["locked"], False)
        await page.waitFor("document.getElementById('lock-state').hidden", "showing unlocked")

        await page.page.click("#edit-description")
        await page.page.fill("#description-input", "New topic")
        await page.page.click("#description-save")
        got = await carol.expect("CONFERENCE_DESCRIPTION_indication")
        self.assertEqual(got["description"], "New topic")
        await page.waitFor("document.getElementById('room-description').textContent === 'New topic'",
                           "showing the new description")

        # Carol's microphone comes up (as the media engine would report it),
        # and she speaks: the tile says so.
        carolMember = self.member("mod-room", "Carol")
        carolMember.muted["audio"] = False
        self.server.service.mediaAvailable(carolMember.memberID, "audio", True)
        await page.waitFor("""document.querySelector('.tile[data-name="Carol"]')
                              .dataset.audioMuted === 'false'""", "showing Carol's microphone on")
        self.server.service.speakingChanged(carolMember.memberID, True)
        await page.waitFor("""document.querySelector('.tile[data-name="Carol"]')
                              .dataset.speaking === 'true'""", "highlighting Carol speaking")
        self.server.service.speakingChanged(carolMember.memberID, False)
        await page.waitFor("""document.querySelector('.tile[data-name="Carol"]')
                              .dataset.speaking === 'false'""", "un-highlighting Carol")

        await tile.hover()
        await tile.locator("[data-action=mute-audio]").click()
        while True:
            got = await carol.expect("MEDIA_indication")
            if got["audio"]["muted"]:
                break
        self.assertEqual(got["member"]["memberID"], carolMember.memberID)
        self.assertTrue(carolMember.forced["audio"])
        await page.waitFor("""document.querySelector('.tile[data-name="Carol"]')
                              .dataset.audioMuted === 'true'""", "showing Carol muted")

        # Chat: plain text from another client shows as it is; ours is sent
        # JSON-encoded ({"chat": ...}) and shows on the 200 response.
        await carol.request("CHAT_MESSAGE_request", message={"text": "hi <i>all</i>"})
        await page.waitFor("""[...document.querySelectorAll('#chat-log .chat-other .chat-text')]
                              .some(e => e.textContent === 'hi <i>all</i>')""", "showing Carol's chat")
        await page.page.fill("#chat-input", "hello Carol")
        await page.page.press("#chat-input", "Enter")
        got = await carol.expect("CHAT_MESSAGE_indication")
        self.assertEqual(json.loads(got["message"]["text"]), {"chat": "hello Carol"})
        self.assertEqual(got["from"]["name"], "Mia")
        await page.waitFor("""[...document.querySelectorAll('#chat-log .chat-self .chat-text')]
                              .some(e => e.textContent === 'hello Carol')""", "showing our chat")

        await tile.hover()
        await tile.locator("[data-action=kick]").click()
        got = await carol.expect("CONFERENCE_KICK_indication")
        self.assertEqual(got["timeout"], 0)
        await page.waitFor("!document.querySelector('.tile[data-name=\"Carol\"]')",
                           "removing Carol's tile")

    @asyncTest
    async def test_timeLimit(self):
        """
        A room with a time limit shows a countdown; when it runs out the page
        says the conference time is over.
        """
        await self.client("short-room", "Tim", timeLimit=4)
        page = await self.newPage("member")
        await page.joinRoom("short-room", "Tess")
        self.assertTrue(await page.page.is_visible("#countdown-pill"))
        seconds = int(await page.page.get_attribute("#countdown", "data-seconds"))
        self.assertTrue(0 <= seconds <= 4, seconds)
        await page.waitFor("window.ahoy.state.screen === 'ended'", "told the time is over")
        self.assertEqual(await page.stateValue("endReason"), "timeout")
        self.assertEqual(await page.page.text_content("#end-message"), "The conference time is over.")
        # No reconnect attempts after the end.
        await asyncio.sleep(1.5)
        self.assertNotEqual(await page.stateValue("connection"), "connecting")
        self.assertIsNone(await page.stateValue("reconnectAt"))


    @asyncTest
    async def test_mediaEvents(self):
        """
        MEDIA_event (protocol.md 4.10: ahoy-js's speaking and mute changes)
        updates the member's tile; an unknown event changes nothing.  The page handles the
        messages through its own dispatch (window.ahoy.receive).
        """
        sam = await self.client("event-room", "Sam")
        page = await self.newPage("member")
        await page.joinRoom("event-room", "Pia")
        tile = await page.tile("Sam")
        member = {"name": "Sam", "memberID": sam.memberID}

        async def event(name):
            await page.page.evaluate("m => window.ahoy.receive(m)", {
                "messageType": "MEDIA_event", "member": member, "event": name})

        self.assertEqual(await tile.get_attribute("data-speaking"), "false")
        await event("start_speaking")
        self.assertEqual(await tile.get_attribute("data-speaking"), "true")
        await event("no_such_event")
        self.assertEqual(await tile.get_attribute("data-speaking"), "true")
        await event("stop_speaking")
        self.assertEqual(await tile.get_attribute("data-speaking"), "false")
        await event("start_speaking")
        await event("audio_mute")
        self.assertTrue(await page.stateValue(f"members.{sam.memberID}.audio.muted"))
        self.assertEqual(await tile.get_attribute("data-speaking"), "false")  # muted: silent
        await event("audio_unmute")
        self.assertFalse(await page.stateValue(f"members.{sam.memberID}.audio.muted"))
        self.assertEqual(await page.stateValue("iceServers"), [])


class ReconnectTests(BrowserTestCase):
    """The server goes away and comes back: the page says so and rejoins."""

    def config(self):
        return testConfig(rooms=(ConferenceSettings(
            conferenceID="lobby", conferenceName="Lobby", permanent=True),))

    @asyncTest
    async def test_reconnect(self):
        """
        The page shows that it lost the server and retries with back-off;
        when the server is back it rejoins the room and shares its camera
        again.
        """
        page = await self.newPage("member")
        await page.joinRoom("lobby", "Rey")
        await page.page.click("#share-camera")
        await page.waitFor("window.ahoy.state.me.video.available", "publishing its camera",
                           timeout=MEDIA_WAIT)

        # The server goes away: it stops listening and drops every connection.
        old = self.server
        port = old.port.getHost().port
        await _future(defer.maybeDeferred(old.port.stopListening))
        old.port = None
        for session in list(old.service.sessions):
            session.shutdown()
        await page.waitFor("!document.getElementById('notice').hidden && "
                           "/Reconnecting/.test(document.getElementById('notice').textContent)",
                           "saying it reconnects")
        await page.waitFor("window.ahoy.state.reconnectAttempt >= 2", "retrying with back-off")
        notice = await page.page.text_content("#notice")
        self.assertRegex(notice, r"lost\. Reconnecting in \d+ s")
        self.assertEqual(await page.stateValue("screen"), "room")
        self.assertEqual(await page.page.text_content("#conn-status"), "offline")

        # The server comes back on the same port (a new process, in effect).
        server = self.server = await self.startServer(self.config(), port)
        await page.waitFor("window.ahoy.state.connection === 'open' && "
                           "window.ahoy.state.screen === 'room' && "
                           "/Reconnected/.test(document.getElementById('notice').textContent)",
                           "rejoined", timeout=40)
        rey = self.member("lobby", "Rey")
        await page.waitFor("window.ahoy.state.me.video.available", "publishing again",
                           timeout=MEDIA_WAIT)
        self.assertTrue(rey.available["video"])
        # The others see it again, and it sees them.
        other, joined = await join(server.url, "lobby", "Finn")
        self.clients.append(other)
        self.assertEqual([m["name"] for m in joined["members"]], ["Rey"])
        self.assertTrue(joined["members"][0]["video"]["available"])
        await page.tile("Finn")


class MediaTests(BrowserTestCase):
    """Real media: browsers publish their fake camera and microphone through the SFU."""

    timeout = 150

    @asyncTest
    async def test_twoBrowsers(self):
        """
        Two browsers in one room, both sharing: each shows the other's video
        playing and receives its audio; a chat typed in one appears in the
        other; the moderator kicks the other, whose page says so.
        """
        alice = await self.newPage("alice")
        await alice.page.fill("#join-name", "Alice")
        await alice.page.fill("#create-id", "media-room")
        await alice.page.fill("#create-name", "Team sync")
        await alice.page.fill("#create-description", "Weekly sync: demos, then questions.")
        await alice.page.fill("#create-password", "crew")
        await alice.page.fill("#create-moderator-password", "captain")
        await alice.page.fill("#create-time-limit", "60")
        await alice.page.click("#create-submit")
        await alice.waitFor("window.ahoy.state.screen === 'room'", "in the room")
        bob = await self.newPage("bob", room="media-room")
        await bob.joinRoom("media-room", "Bob", "crew")

        await alice.shareBoth()
        await bob.shareBoth()
        # Each page learns that the other shares both (MEDIA_indication) and
        # subscribes to both; then the media must flow.
        await alice.waitSubscribed("Bob")
        await bob.waitSubscribed("Alice")
        await alice.assertVideoPlaying("Bob")
        await bob.assertVideoPlaying("Alice")
        await alice.assertAudioArriving("Bob")
        await bob.assertAudioArriving("Alice")
        for p, other in ((alice, "Bob"), (bob, "Alice")):
            await p.assertLoopbackAnswers()
            await p.assertLoopbackPairs(2)
            await p.waitFor(f"""document.querySelector('.tile[data-name="{other}"]')
                                .dataset.video === 'true'""", f"showing {other}'s video tile")
            await p.waitFor("""document.querySelector('.tile[data-self="true"]')
                               .dataset.video === 'true'""", "showing its own camera")
            self.assertFalse(await p.page.is_visible("#enable-sound"), "sound was blocked")

        # The server hears Bob's (fake) microphone beep: Alice's page
        # highlights him.  Bob mutes himself: Alice's page shows it.
        await alice.waitFor("""document.querySelector('.tile[data-name="Bob"]')
                               .dataset.speaking === 'true'""", "highlighting Bob speaking",
                            timeout=MEDIA_WAIT)
        await bob.page.click("#mute-mic")
        await alice.waitFor("""document.querySelector('.tile[data-name="Bob"]')
                               .dataset.audioMuted === 'true'""", "showing Bob muted")
        await bob.waitFor("window.ahoy.state.selfMuted && "
                          "document.querySelector('.tile[data-self=\"true\"]')"
                          ".dataset.audioMuted === 'true'", "showing itself muted")
        await bob.page.click("#mute-mic")
        await alice.waitFor("""document.querySelector('.tile[data-name="Bob"]')
                               .dataset.audioMuted === 'false'""", "showing Bob unmuted")

        await bob.page.fill("#chat-input", "Can you see me?")
        await bob.page.press("#chat-input", "Enter")
        await alice.waitFor("""[...document.querySelectorAll('#chat-log .chat-other')]
                               .some(e => e.textContent.includes('Can you see me?'))""",
                            "showing Bob's chat")
        await alice.page.fill("#chat-input", "Yes, loud and clear.")
        await alice.page.press("#chat-input", "Enter")
        await bob.waitFor("""[...document.querySelectorAll('#chat-log .chat-other')]
                             .some(e => e.textContent.includes('Yes, loud and clear.'))""",
                          "showing Alice's chat")

        shot = await alice.screenshot("room-two-members-alice.png")
        await bob.screenshot("room-two-members-bob.png")
        if os.environ.get("AHOY_UPDATE_SCREENSHOT"):
            shutil.copyfile(shot, DOC_SCREENSHOT)

        tile = await alice.tile("Bob")
        await tile.hover()
        await tile.locator("[data-action=kick]").click()
        await bob.waitFor("window.ahoy.state.screen === 'ended'", "told it was kicked")
        self.assertEqual(await bob.page.text_content("#end-message"),
                         "You were removed by a moderator.")
        self.assertTrue(await bob.page.is_visible("#end-message"))
        await alice.waitFor("!document.querySelector('.tile[data-name=\"Bob\"]')",
                            "removing Bob's tile")
        await bob.screenshot("kicked-bob.png")

    @asyncTest
    async def test_sendBitrateRamps(self):
        """
        A browser publishing 640x480 through the server, watched by another
        browser, raises its video send rate above the 300 kbit/s it starts
        at: the server relays the subscriber's REMB (capped by the default
        500 kbit/s) and its receiver reports.  The page publishes simulcast
        (docs/architecture.md): the cap bounds its top layer, and the lower
        layers may add L{LOWER_LAYERS_KBPS} to what it sends in all.
        """
        alice = await self.newPage("alice", lowres="0")
        await alice.page.fill("#join-name", "Alice")
        await alice.page.fill("#create-id", "ramp-room")
        await alice.page.click("#create-submit")
        await alice.waitFor("window.ahoy.state.screen === 'room'", "in the room")
        bob = await self.newPage("bob", room="ramp-room")
        await bob.joinRoom("ramp-room", "Bob")
        await alice.page.click("#share-camera")
        await alice.waitFor("window.ahoy.state.sharing.video", "sharing the camera")
        await bob.assertVideoPlaying("Alice")

        loop = asyncio.get_event_loop()
        deadline = loop.time() + MEDIA_WAIT
        rates = []
        previous = await alice.page.evaluate("window.ahoy.publishStats()")
        while loop.time() < deadline:
            await asyncio.sleep(2)
            now = await alice.page.evaluate("window.ahoy.publishStats()")
            seconds = (now["timestamp"] - previous["timestamp"]) / 1000
            if seconds > 0:
                rates.append(8 * (now["videoBytes"] - previous["videoBytes"]) / seconds / 1000)
            previous = now
            if rates and rates[-1] > 300:
                break
        self.assertTrue(rates and rates[-1] > 300,
                        f"video send rate never went above 300 kbit/s: {rates} kbit/s")
        # the cap holds (with some slack)
        self.assertLess(max(rates), (500 + LOWER_LAYERS_KBPS) * 1.5, rates)
        self.assertGreaterEqual(previous["frameWidth"], 320)

    @asyncTest
    async def test_browserAndAiortc(self):
        """
        A browser and an aiortc member (tests.mediaclients) see each other:
        the page plays the aiortc member's 320x240 picture and tone, and the
        aiortc member decodes the browser's camera and microphone.
        """
        from tests.mediaclients import Publisher, waitFor

        self.patch(aioice.ice, "get_host_addresses",
                   lambda use_ipv4=True, use_ipv6=True: ["127.0.0.1"])
        page = await self.newPage("bea")
        await page.page.fill("#join-name", "Bea")
        await page.page.fill("#create-id", "mixed-room")
        await page.page.click("#create-submit")
        await page.waitFor("window.ahoy.state.screen === 'room'", "in the room")
        await page.shareBoth()
        await page.waitFor("window.ahoy.state.me.video.available && "
                           "window.ahoy.state.me.audio.available", "publishing", timeout=MEDIA_WAIT)

        robo, joined = await join(self.server.url, "mixed-room", "Robo")
        self.clients.append(robo)
        self.assertEqual(joined["status"], 200, joined)
        [bea] = joined["members"]
        self.assertTrue(bea["video"]["available"] and bea["audio"]["available"], bea)

        publisher = Publisher(tag=5)
        subscriber = _BrowserPictureSubscriber()
        self.addCleanup(lambda: Deferred.fromFuture(asyncio.ensure_future(publisher.close())))
        self.addCleanup(lambda: Deferred.fromFuture(asyncio.ensure_future(subscriber.close())))

        shared = await robo.request("MEDIA_SHARE_request", audio=True, video=True)
        self.assertEqual(shared["status"], 200, shared)
        offer = await robo.expect("MEDIA_RECEIVE_request")
        await robo.send({"messageType": "MEDIA_RECEIVE_response", "status": 200, "reason": "OK",
                         "sdp": await publisher.answer(offer["sdp"]),
                         "transactionID": offer["transactionID"]})

        asked = await robo.request("MEDIA_request", members=[
            {"memberID": bea["memberID"], "audio": True, "video": True}])
        self.assertEqual(asked["status"], 200, asked)
        offer = await robo.expect("SDP_request", transactionID=bea["memberID"])
        await robo.send({"messageType": "SDP_response", "status": 200, "reason": "OK",
                         "sdp": await subscriber.answer(offer["sdp"]),
                         "transactionID": bea["memberID"]})

        # The page: Robo's picture (320x240, moving) and tone.
        await page.waitSubscribed("Robo")
        stats = await page.assertVideoPlaying("Robo")
        self.assertEqual((stats["videoWidth"], stats["videoHeight"]), (320, 240))
        await page.assertAudioArriving("Robo")
        await page.assertLoopbackAnswers()
        await page.assertLoopbackPairs(2)

        # The aiortc member: the browser's camera (a moving picture) and
        # microphone, decoded.
        await waitFor(lambda: len(subscriber.pictures) >= 30, timeout=MEDIA_WAIT,
                      what="30 decoded pictures from the browser")
        self.assertEqual({size for size, _ in subscriber.pictures}, {(320, 180)})
        self.assertGreater(len({digest for _, digest in subscriber.pictures}), 10,
                           "the browser's picture does not move")
        await waitFor(lambda: sum(len(chunk) for chunk in subscriber.audio) >= 48000,
                      timeout=MEDIA_WAIT, what="a second of decoded audio from the browser")
        loudest = max(max(abs(x) for x in chunk) for chunk in subscriber.audio if chunk)
        self.assertGreater(loudest, 1000, "the browser's audio is silent")
        await page.screenshot("room-browser-and-aiortc.png")


def _BrowserPictureSubscriber():
    """
    A L{tests.mediaclients.Subscriber} for a browser's camera: it keeps each
    decoded picture's size and a digest of its pixels (the fake camera's
    picture is not the test pattern that L{Subscriber} reads).
    """
    from av import VideoFrame

    from tests.mediaclients import Subscriber

    class BrowserPictureSubscriber(Subscriber):
        def __init__(self):
            super().__init__()
            self.pictures: list[tuple[tuple[int, int], int]] = []

        async def _consume(self, track):
            if track.kind != "video":
                return await super()._consume(track)
            while True:
                try:
                    frame: VideoFrame = await track.recv()
                except Exception:  # MediaStreamError, CancelledError: the end
                    return
                luma = bytes(frame.planes[0])
                self.pictures.append(((frame.width, frame.height), hash(luma[::31])))

    return BrowserPictureSubscriber()

