"""
Request fan-out (issue 14, docs/reliability.md): C{MEDIA_request} entries
de-duplicated and capped at the room's size, per-connection rate limits on
the requests that make peer connections or broadcast to the room, caps on
peer connections per member and per server, and rate-limit refusals logged
once per episode.  Over a real socket; the others in the room still served.
"""

from __future__ import annotations

import asyncio
import re

from ahoyconference.config import Limits
from tests.helpers import LOGLINES, asyncTest, testConfig
from tests.test_api import APITestCase, _httpGet


def metric(text: str, name: str, **labels) -> float:
    """One sample of a Prometheus text exposition (0 when absent)."""
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = re.escape(name) + (r"\{" + re.escape(wanted) + r"\}" if labels else "") + r" (\S+)"
    found = re.search("^" + pattern + "$", text, re.M)
    return float(found.group(1)) if found else 0.0


async def metrics(server) -> str:
    return (await _httpGet(server.url, "/metrics")).decode().split("\r\n\r\n", 1)[1]


def openLimits(**changes) -> Limits:
    base = dict(join_rate=0, chat_rate=0, max_connections_per_ip=0, max_conferences_per_client=0)
    base.update(changes)
    return Limits(**base)


class MediaRequestShapeTests(APITestCase):
    """Entries: the last for a member wins; no more than the room has members."""

    @asyncTest
    async def test_moreEntriesThanMembers400(self):
        """1,000 entries (one member, repeated) in a room of 3: 400, nothing offered."""
        s = await self.server(engine="aiortc")
        alice, ra = await self.createJoin(s.url, name="alice")
        bob, _ = await self.join(s.url, name="bob")
        carol, _ = await self.join(s.url, name="carol")
        r = await alice.request("MEDIA_SHARE_request", audio=True, video=True)
        self.assertEqual(r["status"], 200)
        entry = {"memberID": ra["memberID"], "audio": True, "video": True}
        r = await bob.request("MEDIA_request", members=[entry] * 1000)
        self.assertEqual((r["status"], r["reason"]), (400, "bad request"))
        self.assertEqual([m for m in await bob.quiet(0.5) if m["messageType"] == "SDP_request"], [])
        self.assertEqual(s.service.engine.peerConnections(), 1)  # alice's publishing one
        # As many entries as members is fine, duplicates included: one offer.
        r = await bob.request("MEDIA_request", members=[entry, entry, {
            "memberID": ra["memberID"], "audio": True, "video": True}])
        self.assertEqual(r["status"], 200)
        offer = await bob.expect("SDP_request")
        self.assertEqual(offer["member"]["memberID"], ra["memberID"])
        await carol.request("CHAT_MESSAGE_request", message={"text": "still here"})
        self.assertEqual((await alice.expect("CHAT_MESSAGE_indication"))["message"]["text"],
                         "still here")

    @asyncTest
    async def test_lastEntryWins(self):
        """[audio only, video only] for the same member: one offer, video only."""
        s = await self.server(engine="aiortc")
        alice, ra = await self.createJoin(s.url, name="alice")
        bob, _ = await self.join(s.url, name="bob")
        r = await alice.request("MEDIA_SHARE_request", audio=True, video=True)
        self.assertEqual(r["status"], 200)
        r = await bob.request("MEDIA_request", members=[
            {"memberID": ra["memberID"], "audio": True, "video": False},
            {"memberID": ra["memberID"], "audio": False, "video": True}])
        self.assertEqual(r["status"], 200)
        offer = await bob.expect("SDP_request")
        self.assertIn("m=video", offer["sdp"])
        self.assertNotIn("m=audio", offer["sdp"])
        self.assertEqual([m for m in await bob.quiet(0.5) if m["messageType"] == "SDP_request"], [])
        bobID = next(m.memberID for m in s.service.members.values() if m.name == "bob")
        self.assertEqual(s.service.engine.peerConnections(bobID), 1)


class PeerConnectionCapTests(APITestCase):
    """[limits] max_peer_connections and max_peer_connections_per_member: 503 beyond."""

    @asyncTest
    async def test_caps(self):
        s = await self.server(engine="aiortc", config=testConfig(limits=openLimits(
            max_peer_connections=6, max_peer_connections_per_member=2)))
        alice, ra = await self.createJoin(s.url, name="alice")
        bob, rb = await self.join(s.url, name="bob")
        carol, rc = await self.join(s.url, name="carol")
        dave, rd = await self.join(s.url, name="dave")
        eve, _ = await self.join(s.url, name="eve")
        for c in (alice, carol, dave):
            self.assertEqual((await c.request("MEDIA_SHARE_request", audio=True))["status"], 200)
        engine = s.service.engine
        self.assertEqual(engine.peerConnections(), 3)

        def want(*replies):
            return [{"memberID": r["memberID"], "audio": True} for r in replies]

        r = await bob.request("MEDIA_request", members=want(ra, rc))
        self.assertEqual(r["status"], 200)
        await bob.expect("SDP_request")
        await bob.expect("SDP_request")
        self.assertEqual(engine.peerConnections(rb["memberID"]), 2)
        # A third would pass bob's cap of 2.
        r = await bob.request("MEDIA_request", members=want(rd))
        self.assertEqual((r["status"], r["reason"]), (503, "service unavailable"))
        # Asking again for one he has replaces it: no new peer connection.
        r = await bob.request("MEDIA_request", members=want(ra))
        self.assertEqual(r["status"], 200)
        self.assertEqual(engine.peerConnections(), 5)
        # Eve's subscription makes 6, the server's cap: then she can neither
        # subscribe to another member nor share.
        r = await eve.request("MEDIA_request", members=want(ra))
        self.assertEqual(r["status"], 200)
        await eve.expect("SDP_request")
        self.assertEqual(engine.peerConnections(), 6)
        r = await eve.request("MEDIA_request", members=want(rc))
        self.assertEqual(r["status"], 503)
        r = await eve.request("MEDIA_SHARE_request", audio=True)
        self.assertEqual(r["status"], 503)
        await asyncio.sleep(0.2)
        self.assertEqual(engine.peerConnections(), 6)
        text = await metrics(s)
        self.assertEqual(metric(text, "ahoy_peer_connection_caps_total", scope="member"), 1)
        self.assertEqual(metric(text, "ahoy_peer_connection_caps_total", scope="server"), 2)
        # The room is still served.
        await eve.request("CHAT_MESSAGE_request", message={"text": "hi"})
        self.assertEqual((await dave.expect("CHAT_MESSAGE_indication"))["message"]["text"], "hi")


RATED = {
    "MEDIA_SHARE_request": {"audio": True},
    "MEDIA_request": {"members": []},
    "MEDIA_MUTE_request": {"audio": True},
    "CONFERENCE_DESCRIPTION_request": {"description": "d"},
    "CONFERENCE_LOCK_request": {"locked": False},
}


class RateLimitTests(APITestCase):
    """The five requests, each limited per connection; 503 beyond, as join and chat."""

    config = testConfig(limits=openLimits(
        share_rate=0.5, media_rate=0.5, mute_rate=0.5, description_rate=0.5, lock_rate=0.5,
        max_members_per_conference=3))

    @asyncTest
    async def test_eachRequestLimited(self):
        """
        20 of each in a burst from a moderator: at most a burst's worth
        through (1, or 3 for MEDIA_request: the room's size), the rest 503;
        the others see at most that many broadcasts, and are served.
        """
        s = await self.server()
        alice, _ = await self.createJoin(s.url, name="alice")
        bob, _ = await self.join(s.url, name="bob")
        through = {}
        for mtype, params in RATED.items():
            statuses = [(await alice.request(mtype, **params))["status"] for _ in range(20)]
            through[mtype] = sum(1 for st in statuses if st != 503)
        print(f"\n  answered (not 503) of 20: {through}")
        for mtype, count in through.items():
            self.assertLessEqual(count, 4 if mtype == "MEDIA_request" else 2, mtype)
            self.assertGreaterEqual(count, 1, mtype)
        seen = await bob.quiet(0.3)
        self.assertLessEqual(
            sum(1 for m in seen if m["messageType"] == "CONFERENCE_DESCRIPTION_indication"), 2)
        text = await metrics(s)
        for mtype, count in through.items():
            self.assertEqual(metric(text, "ahoy_rate_limited_total", request=mtype), 20 - count)
        r = await bob.request("CHAT_MESSAGE_request", message={"text": "served"})
        self.assertEqual(r["status"], 200)

    @asyncTest
    async def test_browserRoutineNotLimited(self):
        """
        What a browser does on joining a full room with the default limits:
        share, a MEDIA_request per member at once, a few mute toggles.  No 503.
        """
        s = await self.server(config=testConfig(limits=openLimits(max_members_per_conference=40)))
        alice, _ = await self.createJoin(s.url, name="alice")
        others = [(await self.join(s.url, name=f"m{i}"))[1]["memberID"] for i in range(39)]
        statuses = [(await alice.request("MEDIA_SHARE_request", audio=True, video=True))["status"]]
        tids = [await alice.send({"messageType": "MEDIA_request", "members": [
            {"memberID": mid, "audio": 1, "video": 1}]}) for mid in others]
        for tid in tids:
            statuses.append((await alice.expect("MEDIA_response", transactionID=tid))["status"])
        for muted in (True, False, True, False):
            statuses.append((await alice.request("MEDIA_MUTE_request", audio=muted))["status"])
        self.assertNotIn(503, statuses)


class RefusalLogTests(APITestCase):
    """A client's own rate limit: one log line per episode, the rest counted."""

    config = testConfig(limits=openLimits(chat_rate=1.0, lock_rate=1.0))

    def lines(self, start: int, what: str) -> list[str]:
        return [line for line in LOGLINES[start:] if what in line]

    @asyncTest
    async def test_oneLinePerEpisode(self):
        s = await self.server()
        alice, _ = await self.createJoin(s.url, name="alice")
        bob, _ = await self.join(s.url, name="bob")
        for what, mtype, params in (
                ("chat", "CHAT_MESSAGE_request", {"message": {"text": "x"}}),
                ("CONFERENCE_LOCK_request", "CONFERENCE_LOCK_request", {"locked": False})):
            start = len(LOGLINES)
            statuses = [(await alice.request(mtype, **params))["status"] for _ in range(40)]
            refused = statuses.count(503)
            self.assertGreaterEqual(refused, 35)
            logged = self.lines(start, "refused " + mtype) + self.lines(start, f"over the {what}")
            print(f"\n  {mtype}: {refused} refusals, {len(logged)} log line(s)")
            self.assertEqual(len(logged), 1, logged)
            # Under the rate again (a token back), then over again: a new episode, one line.
            await asyncio.sleep(1.2)
            self.assertEqual((await alice.request(mtype, **params))["status"], 200)
            start = len(LOGLINES)
            statuses = [(await alice.request(mtype, **params))["status"] for _ in range(10)]
            self.assertGreaterEqual(statuses.count(503), 8)
            self.assertEqual(len(self.lines(start, f"over the {what}")), 1)
            self.assertEqual(self.lines(start, "refused " + mtype), [])
        text = await metrics(s)
        self.assertGreaterEqual(metric(text, "ahoy_rate_limited_total",
                                       request="CHAT_MESSAGE_request"), 43)
        r = await bob.request("CHAT_MESSAGE_request", message={"text": "bob is fine"})
        self.assertEqual(r["status"], 200)
