# -*- test-case-name: tests.test_simulcast_browser -*-
"""
Simulcast with real browsers on loopback (docs/architecture.md,
"Simulcast"): a headless Chromium publishes its fake camera in three layers
(the server's offer asks for them, our client sizes them), two other pages
watch, one asking for C{"low"} and one for C{"high"} (protocol.md 4.11): each
gets one stream of its layer's size; an aiortc publisher, which answers
without simulcast, is still forwarded to everyone.

Skipped only when C{/usr/bin/chromium} is missing.
"""

from __future__ import annotations

import asyncio

import aioice.ice
from twisted.internet.defer import Deferred

from tests.helpers import asyncTest, join
from tests.mediaclients import Publisher
from tests.test_browser import MEDIA_WAIT, BrowserTestCase
from tests.test_metrics import _httpGet


class SimulcastBrowserTests(BrowserTestCase):
    """One Chromium publisher in three layers, two Chromium subscribers, one aiortc publisher."""

    timeout = 240

    async def layersSent(self, page, count: int) -> dict:
        """Wait until the publisher sends C{count} layers with frames; their stats."""
        return await page.poll(
            """n => window.ahoy.publishStats().then(s => {
                   var sending = Object.keys(s.layers).filter(r => s.layers[r].framesEncoded > 0);
                   return sending.length >= n ? s.layers : null; })""",
            f"sending {count} simulcast layers", timeout=MEDIA_WAIT, arg=count)

    async def frameWidth(self, page, name: str, check: str, what: str) -> dict:
        """Poll until the member's received video satisfies C{check} (a JS test of its stats)."""
        return await page.poll(
            f"""name => window.ahoy.mediaStats().then(all => all.find(s =>
                   s.name === name && s.framesDecoded > 0 && ({check})) || null)""",
            what, timeout=MEDIA_WAIT, arg=name)

    async def creator(self, room: str):
        """Alice's page (full-size camera) creates the room."""
        alice = await self.newPage("alice", lowres="0")
        await alice.page.fill("#join-name", "Alice")
        await alice.page.fill("#create-id", room)
        await alice.page.click("#create-submit")
        await alice.waitFor("window.ahoy.state.screen === 'room'", "in the room")
        return alice

    async def startsSpeaking(self, alice, page) -> None:
        """The server's MEDIA_event that Alice started speaking, handed to C{page}."""
        aliceID = await alice.page.evaluate("window.ahoy.state.me.memberID")
        await page.page.evaluate(
            """id => window.ahoy.receive({messageType: "MEDIA_event", event: "start_speaking",
                                          member: {memberID: id, name: "Alice"}})""", aliceID)

    @asyncTest
    async def test_lowAndHigh(self):
        """
        The publisher sends three layers (¼, ½ and full width); the page
        that asked for "low" decodes frames of the low layer's width, the
        one that asked for "high" those of the full width, each on one
        stream whose decoding goes on; /metrics counts the simulcast
        publisher; an aiortc publisher (one stream) reaches both pages.
        """
        alice = await self.creator("simulcast-room")
        low = await self.newPage("low", room="simulcast-room", quality="low")
        await low.joinRoom("simulcast-room", "Low")
        high = await self.newPage("high", room="simulcast-room", quality="high")
        await high.joinRoom("simulcast-room", "High")
        # a bigger cap than the default, so that the top layer has room
        await alice.page.evaluate("window.ahoy.setSharing(false, true, 1500)")
        layers = await self.layersSent(alice, 3)
        self.assertEqual(await alice.stateValue("simulcastLayers"), ["l", "m", "h"])
        widths = sorted(layer["frameWidth"] for layer in layers.values())
        self.assertEqual(len(widths), 3, layers)

        lowSeen = await self.frameWidth(
            low, "Alice", f"s.frameWidth > 0 && s.frameWidth <= {widths[0]}",
            f"decoding Alice's low layer ({widths[0]} wide)")
        highSeen = await self.frameWidth(
            high, "Alice", f"s.frameWidth >= {widths[2]}",
            f"decoding Alice's high layer ({widths[2]} wide)")
        self.assertLess(lowSeen["frameWidth"], highSeen["frameWidth"])
        # decoding goes on, on the same subscription
        for page, seen in ((low, lowSeen), (high, highSeen)):
            await page.poll(
                """([serial, n]) => window.ahoy.mediaStats().then(all => all.some(s =>
                       s.name === 'Alice' && s.serial === serial && s.framesDecoded >= n + 30))""",
                "decoding 30 more frames", timeout=MEDIA_WAIT,
                arg=[seen["serial"], seen["framesDecoded"]])
        # a page whose tiles are small asks for "low", and for "high" once
        # Alice speaks: changed in place (protocol.md 4.11), on the same
        # subscription (the server's MEDIA_event is handed to the page)
        auto = await self.newPage("auto", room="simulcast-room", smallTiles="1")
        await auto.joinRoom("simulcast-room", "Auto")
        autoLow = await self.frameWidth(
            auto, "Alice", f"s.frameWidth > 0 && s.frameWidth <= {widths[0]}",
            "a small tile: Alice's low layer")
        await self.startsSpeaking(alice, auto)
        autoHigh = await self.frameWidth(
            auto, "Alice", f"s.frameWidth >= {widths[2]} && s.serial === {autoLow['serial']}",
            "the speaker: Alice's high layer, on the same subscription")
        self.assertEqual(autoHigh["serial"], autoLow["serial"])
        stats = self.server.service.engine.stats()
        self.assertEqual(stats["simulcast_publishers"], 1)
        self.assertEqual(stats["drops"].get("unknown_rid", 0), 0)
        metrics = (await _httpGet(self.server.http, "/metrics")).decode()
        self.assertIn("ahoy_simulcast_publishers 1.0", metrics)

        # an aiortc publisher answers without simulcast: forwarded as before
        self.patch(aioice.ice, "get_host_addresses",
                   lambda use_ipv4=True, use_ipv6=True: ["127.0.0.1"])
        robo, joined = await join(self.server.url, "simulcast-room", "Robo")
        self.clients.append(robo)
        publisher = Publisher(tag=5)
        self.addCleanup(lambda: Deferred.fromFuture(asyncio.ensure_future(publisher.close())))
        # it asks for simulcast, and answers with one stream all the same
        shared = await robo.request("MEDIA_SHARE_request", audio=True, video=True, simulcast=True)
        self.assertEqual(shared["status"], 200, shared)
        offer = await robo.expect("MEDIA_RECEIVE_request")
        self.assertIn("a=simulcast:recv l;m;h", offer["sdp"])
        answer = await publisher.answer(offer["sdp"])
        self.assertNotIn("a=simulcast", answer)
        await robo.send({"messageType": "MEDIA_RECEIVE_response", "status": 200, "reason": "OK",
                         "sdp": answer, "transactionID": offer["transactionID"]})
        for page in (low, high):
            stats = await page.assertVideoPlaying("Robo")
            self.assertEqual((stats["videoWidth"], stats["videoHeight"]), (320, 240))
        self.assertEqual(self.server.service.engine.stats()["simulcast_publishers"], 1)

    @asyncTest
    async def test_unwantedLayerPaused(self):
        """
        Nobody asks for Alice's top layer (one page, small tiles: "low"): the
        REMB the server sends her is what the low layer needs, and her
        browser stops encoding the top layer.  The page asks for "high"
        (Alice speaks): the REMB goes back up, the top layer starts again,
        and the page decodes it on the same subscription.
        """
        alice = await self.creator("paused-room")
        await alice.page.evaluate("window.ahoy.setSharing(false, true, 1500)")
        layers = await self.layersSent(alice, 3)
        top = max(layers, key=lambda rid: layers[rid]["frameWidth"])
        topWidth = layers[top]["frameWidth"]
        auto = await self.newPage("auto", room="paused-room", smallTiles="1")
        await auto.joinRoom("paused-room", "Auto")
        seen = await self.frameWidth(auto, "Alice", f"s.frameWidth > 0 && s.frameWidth < {topWidth}",
                                     "a small tile: a lower layer of Alice")
        # the top layer stops: no frame encoded for 3 s
        await alice.poll(
            """([rid, wait]) => window.ahoy.publishStats().then(s => {
                   var now = s.layers[rid] ? s.layers[rid].framesEncoded : 0;
                   var seen = window.__topSeen;
                   if (!seen || seen.frames !== now) {
                       window.__topSeen = {frames: now, at: Date.now()}; return false; }
                   return Date.now() - seen.at >= wait; })""",
            "the top layer paused", timeout=MEDIA_WAIT, arg=[top, 3000])
        await self.startsSpeaking(alice, auto)
        high = await self.frameWidth(
            auto, "Alice", f"s.frameWidth >= {topWidth} && s.serial === {seen['serial']}",
            "the speaker: Alice's top layer again, on the same subscription")
        self.assertEqual(high["serial"], seen["serial"])
