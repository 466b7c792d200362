"""
The JSON API over a real socket with real WebSocket clients: every request
and indication of protocol.md except the media itself, with their statuses.

Over 400 lines: it is the protocol's conformance suite, one test class per
part of docs/protocol.md, short tests each.
"""

from __future__ import annotations

import asyncio
import json

import websockets
from twisted.internet import task
from twisted.trial import unittest

from ahoyconference.config import Limits
from tests.helpers import Client, Server, asyncTest, createAndJoin, join, testConfig


class APITestCase(unittest.TestCase):
    """Base: one server per test, every client closed afterwards."""

    config = None
    clock = None

    async def server(self, **kwargs) -> Server:
        server = await Server(config=kwargs.pop("config", self.config),
                              clock=kwargs.pop("clock", self.clock), **kwargs).start()
        self.servers.append(server)
        return server

    def setUp(self):
        self.servers = []
        self.clients = []

    @asyncTest
    async def tearDown(self):
        for client in self.clients:
            await client.close()
        for server in self.servers:
            await server.stop()

    async def connect(self, url) -> Client:
        client = await Client.connect(url)
        self.clients.append(client)
        return client

    async def createJoin(self, url, **kwargs):
        client, joined = await createAndJoin(url, **kwargs)
        self.clients.append(client)
        return client, joined

    async def join(self, url, **kwargs):
        client, joined = await join(url, **kwargs)
        self.clients.append(client)
        return client, joined


class HandshakeTests(APITestCase):
    """The WebSocket handshake and the HTTP side of the port."""

    @asyncTest
    async def test_subprotocolSelected(self):
        """The server selects conference-protocol."""
        s = await self.server()
        c = await self.connect(s.url)
        self.assertEqual(c.ws.subprotocol, "conference-protocol")

    @asyncTest
    async def test_anyPathUpgrades(self):
        """A WebSocket on any path reaches the conference protocol."""
        s = await self.server()
        c = await self.connect(s.url + "some/deep/path")
        r = await c.request("CONFERENCE_CREATE_request", conferenceID="x")
        self.assertEqual(r["status"], 200)

    @asyncTest
    async def test_noSubprotocolRefused(self):
        """A handshake without the subprotocol is refused."""
        s = await self.server()
        with self.assertRaises(websockets.exceptions.InvalidStatus) as e:
            await websockets.connect(s.url, subprotocols=["other"])
        self.assertEqual(e.exception.response.status_code, 400)
        with self.assertRaises(websockets.exceptions.InvalidStatus):
            await websockets.connect(s.url)

    @asyncTest
    async def test_plainGetServesPage(self):
        """GET / on the same port serves the browser client."""
        s = await self.server()
        body = await _httpGet(s.http)
        self.assertIn(b"200", body.split(b"\r\n")[0])
        self.assertIn(b"<html", body.lower())

    @asyncTest
    async def test_originAllowList(self):
        """With an Origin allow-list, other Origins are refused with 403."""
        s = await self.server(config=testConfig(allowed_origins=("https://good.example",)))
        with self.assertRaises(websockets.exceptions.InvalidStatus) as e:
            await Client.connect(s.url, origin="https://evil.example")
        self.assertEqual(e.exception.response.status_code, 403)
        c = await Client.connect(s.url, origin="https://good.example")
        self.clients.append(c)
        r = await c.request("CONFERENCE_CREATE_request")
        self.assertEqual(r["status"], 200)


async def _httpGet(url: str, path: str = "/") -> bytes:
    host, port = url.split("//")[1].rstrip("/").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
    data = await reader.read()
    writer.close()
    return data


class CreateTests(APITestCase):
    """1.1 CONFERENCE_CREATE_request."""

    @asyncTest
    async def test_createDefaults(self):
        """The example of 1.1: name defaults to the ID, description to ""."""
        s = await self.server()
        c = await self.connect(s.url)
        await c.send({"messageType": "CONFERENCE_CREATE_request", "conferenceID": "my-unique-id-1",
                      "transactionID": "id-0.5881619271822274"})
        r = await c.expect("CONFERENCE_CREATE_response")
        self.assertEqual(r, {"messageType": "CONFERENCE_CREATE_response", "status": 200,
                             "reason": "OK", "conferenceID": "my-unique-id-1",
                             "conferenceName": "my-unique-id-1", "description": "",
                             "transactionID": "id-0.5881619271822274"})

    @asyncTest
    async def test_createGeneratesID(self):
        """Without conferenceID the server makes a unique one."""
        s = await self.server()
        c = await self.connect(s.url)
        a = await c.request("CONFERENCE_CREATE_request")
        b = await c.request("CONFERENCE_CREATE_request", conferenceName="Board")
        self.assertEqual(a["status"], 200)
        self.assertNotEqual(a["conferenceID"], b["conferenceID"])
        self.assertEqual(b["conferenceName"], "Board")

    @asyncTest
    async def test_createExisting486(self):
        """
        An existing ID is 486 "conference exists" (protocol.md 4.1: the
        original client reads it as "go on and join") and changes nothing.
        """
        s = await self.server()
        c = await self.connect(s.url)
        await c.request("CONFERENCE_CREATE_request", conferenceID="a", description="one")
        r = await c.request("CONFERENCE_CREATE_request", conferenceID="a", description="two")
        self.assertEqual((r["status"], r["reason"]), (486, "conference exists"))
        self.assertEqual(s.service.conferences["a"].description, "one")

    @asyncTest
    async def test_createBadParameters400(self):
        """Wrong types and out-of-range values are 400 and create nothing."""
        s = await self.server()
        c = await self.connect(s.url)
        for params in ({"conferenceID": 5}, {"conferenceID": ""}, {"maxMember": 0},
                       {"maxMember": "3"}, {"maxMember": True}, {"timeLimit": -1},
                       {"maxVideoBitrate": 10**9}, {"password": ["x"]},
                       {"description": "x" * 5000}, {"conferenceID": "x" * 200}):
            r = await c.request("CONFERENCE_CREATE_request", **params)
            self.assertEqual((r["status"], r["reason"]), (400, "bad request"), params)
        self.assertEqual(s.service.conferences, {})

    @asyncTest
    async def test_serverLimit503(self):
        """Past the server-wide number of conferences: 503."""
        s = await self.server(config=testConfig(limits=Limits(
            max_conferences=2, join_rate=0, chat_rate=0, max_conferences_per_client=0)))
        c = await self.connect(s.url)
        for _ in range(2):
            self.assertEqual((await c.request("CONFERENCE_CREATE_request"))["status"], 200)
        r = await c.request("CONFERENCE_CREATE_request")
        self.assertEqual((r["status"], r["reason"]), (503, "service unavailable"))

    @asyncTest
    async def test_perClientLimit503(self):
        """Past the number of conferences one client address may create: 503."""
        s = await self.server(config=testConfig(limits=Limits(
            max_conferences_per_client=1, join_rate=0, chat_rate=0)))
        c = await self.connect(s.url)
        self.assertEqual((await c.request("CONFERENCE_CREATE_request"))["status"], 200)
        self.assertEqual((await c.request("CONFERENCE_CREATE_request"))["status"], 503)


class JoinTests(APITestCase):
    """1.2 CONFERENCE_JOIN_request and 2.1 CONFERENCE_JOIN_indication."""

    @asyncTest
    async def test_joinResponse(self):
        """The fields of the example in 1.2; an open room makes a moderator."""
        s = await self.server()
        c, r = await self.createJoin(s.url, conferenceID="my-unique-id-1", name="K-P")
        self.assertEqual(r["status"], 200)
        self.assertEqual(set(r), {"messageType", "status", "reason", "remainingSeconds", "locked",
                                  "conferenceID", "conferenceName", "description", "speakerID",
                                  "memberID", "moderator", "speaker", "webrtc", "members",
                                  "transactionID"})
        self.assertEqual(r["remainingSeconds"], -1)
        self.assertIs(r["locked"], False)
        self.assertEqual(len(r["memberID"]), 64)
        self.assertEqual(r["speakerID"], r["memberID"])
        self.assertEqual((r["moderator"], r["speaker"], r["webrtc"]), (True, True, True))
        self.assertEqual(r["members"], [])

    @asyncTest
    async def test_joinIndicationAndMembers(self):
        """Others get the 2.1 indication; the joiner gets the others in members."""
        s = await self.server()
        a, ra = await self.createJoin(s.url, name="alice")
        b, rb = await self.join(s.url, name="bob")
        ind = await a.expect("CONFERENCE_JOIN_indication")
        self.assertEqual(ind["member"], {
            "name": "bob", "memberID": rb["memberID"], "moderator": True, "speaker": True,
            "webrtc": True, "audio": {"available": False, "muted": True, "speaking": False},
            "video": {"available": False, "muted": True}, "ip": "127.0.0.1"})
        self.assertEqual([m["memberID"] for m in rb["members"]], [ra["memberID"]])
        self.assertEqual(rb["members"][0]["name"], "alice")
        self.assertNotIn("transactionID", ind)

    @asyncTest
    async def test_ipOnlyToModerators(self):
        """4.9: ip reaches moderators only, unless configured."""
        s = await self.server()
        mod, _ = await self.createJoin(s.url, moderatorPassword="m", password="s")
        await mod.request("CONFERENCE_LEAVE_request")
        await mod.request("CONFERENCE_JOIN_request", conferenceID="room", name="mod", password="m")
        speaker, rs = await self.join(s.url, password="s")
        ind = await mod.expect("CONFERENCE_JOIN_indication")
        self.assertEqual(ind["member"]["ip"], "127.0.0.1")
        self.assertNotIn("ip", rs["members"][0])
        other, _ = await self.join(s.url, password="s", name="carol")
        ind = await speaker.expect("CONFERENCE_JOIN_indication")
        self.assertNotIn("ip", ind["member"])
        self.assertNotIn("127.0.0.1", json.dumps(speaker.raw))

    @asyncTest
    async def test_ipToEveryoneConfigured(self):
        """With ip_to_everyone, speakers see ip too."""
        s = await self.server(config=testConfig(ip_to_everyone=True))
        await self.createJoin(s.url, moderatorPassword="m")
        speaker, _ = await self.join(s.url)
        _, r = await self.join(s.url, name="carol")
        self.assertTrue(all("ip" in m for m in r["members"]))
        ind = await speaker.expect("CONFERENCE_JOIN_indication")
        self.assertEqual(ind["member"]["ip"], "127.0.0.1")

    @asyncTest
    async def test_joinUnknown404(self):
        """An unknown conference is 404."""
        s = await self.server()
        c, r = await self.join(s.url, conferenceID="nope")
        self.assertEqual((r["status"], r["reason"]), (404, "not found"))

    @asyncTest
    async def test_joinTwice409(self):
        """Joining while in a conference is 409 and changes nothing."""
        s = await self.server()
        c, r = await self.createJoin(s.url)
        await c.request("CONFERENCE_CREATE_request", conferenceID="other")
        r2 = await c.request("CONFERENCE_JOIN_request", conferenceID="other", name="x")
        self.assertEqual(r2["status"], 409)
        self.assertEqual(list(s.service.conferences["room"].members), [r["memberID"]])
        self.assertEqual(s.service.conferences["other"].members, {})

    @asyncTest
    async def test_full486(self):
        """maxMember reached: 486 conference full."""
        s = await self.server()
        await self.createJoin(s.url, maxMember=2)
        await self.join(s.url)
        c, r = await self.join(s.url)
        self.assertEqual((r["status"], r["reason"]), (486, "conference full"))
        self.assertEqual(len(s.service.conferences["room"].members), 2)

    @asyncTest
    async def test_serverMembers503(self):
        """The server-wide member limit: 503."""
        s = await self.server(config=testConfig(limits=Limits(
            max_members=1, join_rate=0, chat_rate=0, max_conferences_per_client=0)))
        await self.createJoin(s.url)
        c, r = await self.join(s.url)
        self.assertEqual(r["status"], 503)

    @asyncTest
    async def test_requestsBeforeJoin409(self):
        """Conference requests while not joined: 409."""
        s = await self.server()
        c = await self.connect(s.url)
        for mtype, params in [("CONFERENCE_LEAVE_request", {}),
                              ("CONFERENCE_KICK_request", {"memberID": "x"}),
                              ("CHAT_MESSAGE_request", {"message": {"text": "hi"}}),
                              ("CONFERENCE_DESCRIPTION_request", {"description": "d"}),
                              ("CONFERENCE_LOCK_request", {"locked": True}),
                              ("MEDIA_MUTE_request", {"audio": True}),
                              ("MEDIA_SHARE_request", {"audio": True}),
                              ("MEDIA_request", {"members": []})]:
            r = await c.request(mtype, **params)
            self.assertEqual((r["status"], r["reason"]), (409, "conflict"), mtype)


class PasswordTableTests(APITestCase):
    """Every row of protocol.md 4.2, over the socket."""

    async def roleOf(self, s, cid, password):
        c, r = await self.join(s.url, conferenceID=cid, password=password)
        if r["status"] != 200:
            return r["status"]
        return "moderator" if r["moderator"] else "speaker" if r["speaker"] else "listener"

    @asyncTest
    async def test_table(self):
        s = await self.server()
        c = await self.connect(s.url)
        rows = [
            ({}, {"": "moderator", "whatever": "moderator"}),  # "(none is wrong)"
            ({"moderatorPassword": "M"}, {"": "speaker", "wrong": 403, "M": "moderator"}),
            ({"moderatorPassword": "M", "password": "S"},
             {"": "listener", "wrong": 403, "S": "speaker", "M": "moderator"}),
            ({"password": "S"}, {"": "listener", "wrong": 403, "S": "speaker"}),
            ({"listenerPassword": "L"}, {"": 403, "wrong": 403, "L": "listener"}),
            ({"listenerPassword": "L", "password": "S", "moderatorPassword": "M"},
             {"": 403, "wrong": 403, "L": "listener", "S": "speaker", "M": "moderator"}),
            ({"listenerPassword": "L", "moderatorPassword": "M"},
             {"": 403, "L": "listener", "M": "moderator", "x": 403}),
        ]
        for i, (passwords, expected) in enumerate(rows):
            cid = f"room{i}"
            r = await c.request("CONFERENCE_CREATE_request", conferenceID=cid, **passwords)
            self.assertEqual(r["status"], 200)
            self.assertNotIn("password", json.dumps(r).lower().replace("password\"", ""))
            for password, role in expected.items():
                self.assertEqual(await self.roleOf(s, cid, password), role, (passwords, password))

    @asyncTest
    async def test_wrongPasswordBackoff(self):
        """After repeated wrong passwords the address backs off (403 even when right)."""
        clock = task.Clock()
        s = await self.server(clock=clock, config=testConfig(limits=Limits(
            password_failures=3, password_backoff=30, join_rate=0, chat_rate=0,
            max_conferences_per_client=0, max_connections_per_ip=0)))
        c = await self.connect(s.url)
        await c.request("CONFERENCE_CREATE_request", conferenceID="r", password="S")
        for _ in range(3):
            r = await c.request("CONFERENCE_JOIN_request", conferenceID="r", password="bad")
            self.assertEqual(r["status"], 403)
        r = await c.request("CONFERENCE_JOIN_request", conferenceID="r", password="S")
        self.assertEqual(r["status"], 403)
        clock.advance(31)
        r = await c.request("CONFERENCE_JOIN_request", conferenceID="r", password="S")
        self.assertEqual(r["status"], 200)


class MemberRequestTests(APITestCase):
    """Leave, kick, chat, description, lock, mute."""

    @asyncTest
    async def test_leave(self):
        """1.5: 200, the others get 2.2; the connection stays usable."""
        s = await self.server()
        a, ra = await self.createJoin(s.url)
        b, rb = await self.join(s.url)
        r = await b.request("CONFERENCE_LEAVE_request")
        self.assertEqual(r["status"], 200)
        ind = await a.expect("CONFERENCE_LEAVE_indication")
        self.assertEqual(ind["member"], {"name": "bob", "memberID": rb["memberID"],
                                         "moderator": True})
        r = await b.request("CONFERENCE_JOIN_request", conferenceID="room", name="bob")
        self.assertEqual(r["status"], 200)

    @asyncTest
    async def test_disconnectIsLeave(self):
        """Closing the socket is a leave."""
        s = await self.server()
        a, _ = await self.createJoin(s.url)
        b, rb = await self.join(s.url)
        await b.close()
        ind = await a.expect("CONFERENCE_LEAVE_indication")
        self.assertEqual(ind["member"]["memberID"], rb["memberID"])
        self.assertNotIn(rb["memberID"], s.service.members)

    @asyncTest
    async def test_kick(self):
        """1.6: the kicked gets 2.3 and is disconnected, the others 2.2."""
        s = await self.server()
        mod, _ = await self.createJoin(s.url, moderatorPassword="m")
        await mod.request("CONFERENCE_LEAVE_request")
        await mod.request("CONFERENCE_JOIN_request", conferenceID="room", name="m", password="m")
        victim, rv = await self.join(s.url, name="victim")
        third, _ = await self.join(s.url, name="third")
        r = await mod.request("CONFERENCE_KICK_request", memberID=rv["memberID"])
        self.assertEqual(r["status"], 200)
        k = await victim.expect("CONFERENCE_KICK_indication")
        self.assertEqual(k, {"messageType": "CONFERENCE_KICK_indication", "timeout": 0})
        await asyncio.wait_for(victim.closed, 5)
        for c in (mod, third):
            ind = await c.expect("CONFERENCE_LEAVE_indication")
            self.assertEqual(ind["member"]["memberID"], rv["memberID"])
        self.assertNotIn(rv["memberID"], s.service.conferences["room"].members)

    @asyncTest
    async def test_kickForbiddenAndUnknown(self):
        """Non-moderators get 403; an unknown member 404."""
        s = await self.server()
        mod, _ = await self.createJoin(s.url, moderatorPassword="m", joinPassword="m")
        speaker, rs = await self.join(s.url)
        r = await speaker.request("CONFERENCE_KICK_request", memberID=rs["memberID"])
        self.assertEqual((r["status"], r["reason"]), (403, "forbidden"))
        r = await mod.request("CONFERENCE_KICK_request", memberID="0" * 64)
        self.assertEqual((r["status"], r["reason"]), (404, "not found"))
        r = await mod.request("CONFERENCE_KICK_request", memberID=7)
        self.assertEqual(r["status"], 400)
        self.assertEqual(len(s.service.conferences["room"].members), 2)

    @asyncTest
    async def test_chat(self):
        """1.7/4.7: to every other member, the text untouched; every role may chat."""
        s = await self.server()
        a, ra = await self.createJoin(s.url, listenerPassword="l", password="s", joinPassword="s")
        b, rb = await self.join(s.url, password="l", name="listener")
        text = json.dumps({"chat": "test ü 🎉"})
        r = await b.request("CHAT_MESSAGE_request", message={"text": text})
        self.assertEqual(r["status"], 200)
        ind = await a.expect("CHAT_MESSAGE_indication")
        self.assertEqual(ind, {"messageType": "CHAT_MESSAGE_indication",
                               "from": {"name": "listener", "memberID": rb["memberID"]},
                               "message": {"text": text}})
        self.assertEqual([m for m in await b.quiet() if m["messageType"].startswith("CHAT")], [])

    @asyncTest
    async def test_chatLimits(self):
        """Text must be a string within the configured size: else 400."""
        s = await self.server(config=testConfig(limits=Limits(
            max_chat_bytes=100, join_rate=0, chat_rate=0, max_conferences_per_client=0)))
        a, _ = await self.createJoin(s.url)
        b, _ = await self.join(s.url)
        for message in ({"text": "x" * 101}, {"text": 5}, "text", {"nottext": "x"}, None):
            r = await b.request("CHAT_MESSAGE_request", message=message)
            self.assertEqual(r["status"], 400, message)
        r = await b.request("CHAT_MESSAGE_request", message={"text": "é" * 50})
        self.assertEqual(r["status"], 200)
        ind = await a.expect("CHAT_MESSAGE_indication")
        self.assertEqual(ind["message"]["text"], "é" * 50)
        self.assertEqual([m for m in await a.quiet() if m["messageType"] == "CHAT_MESSAGE_indication"], [])

    @asyncTest
    async def test_chatRateLimit(self):
        """Past the chat rate: 503 and nothing forwarded."""
        clock = task.Clock()
        s = await self.server(clock=clock, config=testConfig(limits=Limits(
            chat_rate=1, join_rate=0, max_conferences_per_client=0)))
        a, _ = await self.createJoin(s.url)
        b, _ = await self.join(s.url)
        statuses = [(await b.request("CHAT_MESSAGE_request", message={"text": "x"}))["status"]
                    for _ in range(4)]
        self.assertEqual(statuses, [200, 200, 503, 503])
        clock.advance(1)
        self.assertEqual((await b.request("CHAT_MESSAGE_request",
                                          message={"text": "x"}))["status"], 200)

    @asyncTest
    async def test_description(self):
        """1.8: moderators only; everyone (requester too) gets the indication."""
        s = await self.server()
        mod, _ = await self.createJoin(s.url, moderatorPassword="m")
        speaker, _ = await self.join(s.url)
        r = await speaker.request("CONFERENCE_DESCRIPTION_request", description="no")
        self.assertEqual(r["status"], 403)
        await mod.request("CONFERENCE_LEAVE_request")
        await mod.request("CONFERENCE_JOIN_request", conferenceID="room", password="m")
        r = await mod.request("CONFERENCE_DESCRIPTION_request", description="Agenda: 1. beer")
        self.assertEqual(r["status"], 200)
        for c in (mod, speaker):
            ind = await c.expect("CONFERENCE_DESCRIPTION_indication")
            self.assertEqual(ind["description"], "Agenda: 1. beer")
        _, rj = await self.join(s.url)
        self.assertEqual(rj["description"], "Agenda: 1. beer")

    @asyncTest
    async def test_lock(self):
        """4.3: lock → joins get 470, members stay; unlock → joins work."""
        s = await self.server()
        mod, _ = await self.createJoin(s.url, moderatorPassword="m", password="")
        speaker, _ = await self.join(s.url)
        r = await speaker.request("CONFERENCE_LOCK_request", locked=True)
        self.assertEqual(r["status"], 403)
        await mod.request("CONFERENCE_LEAVE_request")
        await mod.request("CONFERENCE_JOIN_request", conferenceID="room", password="m")
        r = await mod.request("CONFERENCE_LOCK_request", locked=True)
        self.assertEqual(r["status"], 200)
        for c in (mod, speaker):
            self.assertIs((await c.expect("CONFERENCE_LOCK_indication"))["locked"], True)
        _, r = await self.join(s.url)
        self.assertEqual((r["status"], r["reason"]), (470, "locked"))
        self.assertEqual(len(s.service.conferences["room"].members), 2)
        r = await mod.request("CONFERENCE_LOCK_request", locked="yes")
        self.assertEqual(r["status"], 400)
        await mod.request("CONFERENCE_LOCK_request", locked=False)
        self.assertIs((await speaker.expect("CONFERENCE_LOCK_indication"))["locked"], False)
        _, r = await self.join(s.url)
        self.assertEqual(r["status"], 200)
        self.assertIs(r["locked"], False)

    @asyncTest
    async def test_muteSelf(self):
        """4.4: one's own state; everyone gets MEDIA_indication."""
        s = await self.server()
        a, ra = await self.createJoin(s.url)
        b, rb = await self.join(s.url)
        r = await b.request("MEDIA_MUTE_request", audio=False)
        self.assertEqual(r["status"], 200)
        for c in (a, b):
            ind = await c.expect("MEDIA_indication")
            self.assertEqual(ind["member"], {"name": "bob", "memberID": rb["memberID"]})
            self.assertEqual(ind["audio"], {"available": False, "muted": False, "speaking": False})
            self.assertEqual(ind["video"], {"available": False, "muted": True})

    @asyncTest
    async def test_moderatorMute(self):
        """A moderator mutes another; the member cannot lift it, the moderator can."""
        s = await self.server()
        mod, _ = await self.createJoin(s.url, moderatorPassword="m")
        await mod.request("CONFERENCE_LEAVE_request")
        await mod.request("CONFERENCE_JOIN_request", conferenceID="room", password="m")
        sp, rs = await self.join(s.url)
        other, ro = await self.join(s.url)
        await sp.request("MEDIA_MUTE_request", audio=False)
        r = await sp.request("MEDIA_MUTE_request", audio=True, memberID=ro["memberID"])
        self.assertEqual(r["status"], 403)
        r = await mod.request("MEDIA_MUTE_request", audio=True, memberID="f" * 64)
        self.assertEqual(r["status"], 404)
        await sp.quiet()
        await other.quiet()
        r = await mod.request("MEDIA_MUTE_request", audio=True, memberID=rs["memberID"])
        self.assertEqual(r["status"], 200)
        ind = await other.expect("MEDIA_indication", member={"name": "bob",
                                                            "memberID": rs["memberID"]})
        self.assertIs(ind["audio"]["muted"], True)
        self.assertIs(s.service.members[rs["memberID"]].forced["audio"], True)
        r = await sp.request("MEDIA_MUTE_request", audio=False)
        self.assertEqual(r["status"], 403)
        self.assertIs(s.service.members[rs["memberID"]].muted["audio"], True)
        r = await mod.request("MEDIA_MUTE_request", audio=False, memberID=rs["memberID"])
        self.assertEqual(r["status"], 200)
        self.assertIs(s.service.members[rs["memberID"]].forced["audio"], False)


class MediaRequestValidationTests(APITestCase):
    """MEDIA_SHARE/MEDIA_request checks that happen before the media engine."""

    @asyncTest
    async def test_listenerMayNotShare(self):
        """A listener sharing: 403."""
        s = await self.server()
        await self.createJoin(s.url, password="s")
        listener, _ = await self.join(s.url)
        r = await listener.request("MEDIA_SHARE_request", audio=True, video=True)
        self.assertEqual((r["status"], r["reason"]), (403, "forbidden"))

    @asyncTest
    async def test_mediaRequestUnknownMember404(self):
        """A MEDIA_request naming an unknown member: 404, nothing sent."""
        s = await self.server()
        a, ra = await self.createJoin(s.url)
        r = await a.request("MEDIA_request", members=[
            {"memberID": ra["memberID"], "audio": True, "video": True},
            {"memberID": "0" * 64, "audio": True, "video": True}])
        self.assertEqual(r["status"], 404)
        self.assertEqual([m for m in await a.quiet() if m["messageType"] == "SDP_request"], [])

    @asyncTest
    async def test_mediaRequestBadShape400(self):
        """members must be a list of objects with a memberID string and booleans."""
        s = await self.server()
        a, ra = await self.createJoin(s.url)
        for members in (None, "x", [1], [{"memberID": 5}],
                        [{"memberID": ra["memberID"], "audio": "yes"}]):
            r = await a.request("MEDIA_request", members=members)
            self.assertEqual(r["status"], 400, members)

    @asyncTest
    async def test_mediaRequestQuality(self):
        """
        quality (protocol.md 4.11) is "low", "medium", "high" or absent/null;
        anything else is 400 for the whole request, and nothing is sent.
        """
        s = await self.server()
        a, _ = await self.createJoin(s.url)
        b, rb = await self.join(s.url)
        for quality in ("ultra", 2, "", "LOW", ["low"], True):
            r = await a.request("MEDIA_request", members=[
                {"memberID": rb["memberID"], "audio": True, "video": True, "quality": quality}])
            self.assertEqual(r["status"], 400, quality)
        for quality in ("low", "medium", "high", None):
            r = await a.request("MEDIA_request", members=[
                {"memberID": rb["memberID"], "audio": True, "video": True, "quality": quality}])
            self.assertEqual(r["status"], 200, quality)
        self.assertEqual([m for m in await a.quiet() if m["messageType"] == "SDP_request"], [])

    @asyncTest
    async def test_mediaShareBadSimulcast400(self):
        """simulcast (protocol.md 4.11) is a flag: anything else is 400."""
        s = await self.server()
        a, _ = await self.createJoin(s.url)
        for value in ("yes", 2, [], {}):
            r = await a.request("MEDIA_SHARE_request", audio=True, video=True, simulcast=value)
            self.assertEqual(r["status"], 400, value)

    @asyncTest
    async def test_mediaShareBadBitrate400(self):
        """maxVideoBitrate out of range: 400."""
        s = await self.server()
        a, _ = await self.createJoin(s.url)
        for value in (0, -5, "500", 10**12):
            r = await a.request("MEDIA_SHARE_request", audio=True, maxVideoBitrate=value)
            self.assertEqual(r["status"], 400)


class EnvelopeTests(APITestCase):
    """4.1: the envelope's errors."""

    @asyncTest
    async def test_errors(self):
        s = await self.server()
        c = await self.connect(s.url)
        cases = [
            ("not json", {"messageType": "ERROR_response", "status": 400, "transactionID": ""}),
            ("[1,2]", {"messageType": "ERROR_response", "status": 400, "transactionID": ""}),
            ('"str"', {"messageType": "ERROR_response", "status": 400, "transactionID": ""}),
            ('{"transactionID": "a"}',
             {"messageType": "ERROR_response", "status": 400, "transactionID": "a"}),
            ('{"messageType": 5, "transactionID": "b"}',
             {"messageType": "ERROR_response", "status": 400, "transactionID": "b"}),
            ('{"messageType": "CONFERENCE_CREATE_request"}',
             {"messageType": "CONFERENCE_CREATE_response", "status": 400, "transactionID": ""}),
            ('{"messageType": "CONFERENCE_CREATE_request", "transactionID": 7}',
             {"messageType": "CONFERENCE_CREATE_response", "status": 400, "transactionID": ""}),
            ('{"messageType": "FOO_request", "transactionID": "c"}',
             {"messageType": "FOO_response", "status": 501, "transactionID": "c"}),
            ('{"messageType": "HELLO", "transactionID": "d"}',
             {"messageType": "ERROR_response", "status": 501, "transactionID": "d"}),
            ('{"messageType": "SDP_response", "transactionID": "e", "status": 200, "sdp": "v=0"}',
             {"messageType": "ERROR_response", "status": 400, "transactionID": "e"}),
        ]
        for frame, expected in cases:
            await c.sendRaw(frame)
            got = await c.expect()
            self.assertEqual({k: got[k] for k in expected}, expected, frame)
            self.assertIn("reason", got)
        await c.sendRaw(b"\x00binary")
        got = await c.expect()
        self.assertEqual((got["messageType"], got["status"]), ("ERROR_response", 400))
        r = await c.request("CONFERENCE_CREATE_request")
        self.assertEqual(r["status"], 200)

    @asyncTest
    async def test_hugeFrameClosesOnlyThatConnection(self):
        """A frame over max_message_bytes closes that connection (1009); others go on."""
        s = await self.server(config=testConfig(limits=Limits(
            max_message_bytes=65536, join_rate=0, chat_rate=0, max_conferences_per_client=0)))
        a, _ = await self.createJoin(s.url)
        b, rb = await self.join(s.url)
        await b.sendRaw(json.dumps({"messageType": "CHAT_MESSAGE_request", "transactionID": "x",
                                    "message": {"text": "x" * 200000}}))
        code = await asyncio.wait_for(b.closed, 5)
        self.assertIn(code, (1006, 1009))  # 1009 is sent; the client may still be writing
        ind = await a.expect("CONFERENCE_LEAVE_indication")
        self.assertEqual(ind["member"]["memberID"], rb["memberID"])
        self.assertEqual([m for m in await a.quiet() if m["messageType"].startswith("CHAT")], [])
        r = await a.request("CHAT_MESSAGE_request", message={"text": "still here"})
        self.assertEqual(r["status"], 200)


class TimerTests(APITestCase):
    """Time limit and idle timeout, with task.Clock."""

    def setUp(self):
        super().setUp()
        self.clock = task.Clock()

    @asyncTest
    async def test_timeLimit(self):
        """Counted from the first join; all kicked with timeout 1; room removed."""
        s = await self.server()
        c = await self.connect(s.url)
        await c.request("CONFERENCE_CREATE_request", conferenceID="t", timeLimit=60)
        self.clock.advance(100)  # not counted before the first join
        r = await c.request("CONFERENCE_JOIN_request", conferenceID="t", name="a")
        self.assertEqual(r["remainingSeconds"], 60)
        self.clock.advance(20.5)
        b, rb = await self.join(s.url, conferenceID="t")
        self.assertEqual(rb["remainingSeconds"], 40)
        self.clock.advance(40)
        for client in (c, b):
            k = await client.expect("CONFERENCE_KICK_indication")
            self.assertEqual(k["timeout"], 1)
            await asyncio.wait_for(client.closed, 5)
        self.assertNotIn("t", s.service.conferences)
        self.assertEqual(s.service.members, {})

    @asyncTest
    async def test_idleTimeout(self):
        """Unjoined rooms, and rooms whose last member left, go after 300 s."""
        s = await self.server()
        c = await self.connect(s.url)
        await c.request("CONFERENCE_CREATE_request", conferenceID="never")
        await c.request("CONFERENCE_CREATE_request", conferenceID="used")
        self.clock.advance(299)
        r = await c.request("CONFERENCE_JOIN_request", conferenceID="used", name="a")
        self.assertEqual(r["status"], 200)
        self.clock.advance(2)
        self.assertNotIn("never", s.service.conferences)
        self.assertIn("used", s.service.conferences)
        self.clock.advance(1000)
        self.assertIn("used", s.service.conferences)
        await c.request("CONFERENCE_LEAVE_request")
        self.clock.advance(299)
        self.assertIn("used", s.service.conferences)
        self.clock.advance(2)
        self.assertNotIn("used", s.service.conferences)

    @asyncTest
    async def test_permanentRooms(self):
        """Rooms of the config exist at start and never go idle."""
        from ahoyconference.config import parseConfig

        config = parseConfig({"rooms": [{"id": "lobby", "name": "The Lobby", "password": "s"}],
                              "limits": {"join_rate": 0, "chat_rate": 0}})
        s = await self.server(config=config.replace(ice=testConfig().ice))
        self.clock.advance(10000)
        c, r = await self.join(s.url, conferenceID="lobby", password="s")
        self.assertEqual((r["status"], r["conferenceName"], r["speaker"]), (200, "The Lobby", True))
        await c.request("CONFERENCE_LEAVE_request")
        self.clock.advance(10000)
        self.assertIn("lobby", s.service.conferences)


class FanOutTests(APITestCase):
    """Many clients."""

    @asyncTest
    async def test_200ClientsOneChat(self):
        """200 clients in one room all receive one chat message."""
        s = await self.server()
        sender, _ = await self.createJoin(s.url)
        clients = await asyncio.gather(*[self.join(s.url, name=f"m{i}") for i in range(199)])
        self.assertEqual({r["status"] for _, r in clients}, {200})
        await sender.request("CHAT_MESSAGE_request", message={"text": "hello all"})
        got = await asyncio.gather(*[c.expect("CHAT_MESSAGE_indication") for c, _ in clients])
        self.assertEqual({g["message"]["text"] for g in got}, {"hello all"})
        self.assertEqual(len(got), 199)


class AbuseLimitTests(APITestCase):
    """Per-address connections and the join rate (the chat rate and wrong-password
    back-off are tested above)."""

    @asyncTest
    async def test_connectionsPerAddress(self):
        """Past max_connections_per_ip the handshake is refused with 503; closing frees a slot."""
        s = await self.server(config=testConfig(limits=Limits(
            max_connections_per_ip=2, join_rate=0, chat_rate=0, max_conferences_per_client=0)))
        a = await self.connect(s.url)
        await self.connect(s.url)
        with self.assertRaises(websockets.exceptions.InvalidStatus) as e:
            await Client.connect(s.url)
        self.assertEqual(e.exception.response.status_code, 503)
        await a.close()
        self.clients.remove(a)
        for _ in range(100):
            if sum(s.site.conferenceFactory.connections.values()) < 2:
                break
            await asyncio.sleep(0.01)
        c = await self.connect(s.url)
        self.assertEqual((await c.request("CONFERENCE_CREATE_request"))["status"], 200)

    @asyncTest
    async def test_joinRate(self):
        """Joins past the rate (burst 2 × rate) get 503 until tokens refill."""
        clock = task.Clock()
        s = await self.server(clock=clock, config=testConfig(limits=Limits(
            join_rate=1, chat_rate=0, max_conferences_per_client=0, password_failures=0)))
        c = await self.connect(s.url)
        await c.request("CONFERENCE_CREATE_request", conferenceID="r", password="pw")
        statuses = [(await c.request("CONFERENCE_JOIN_request", conferenceID="r",
                                     password="bad"))["status"] for _ in range(4)]
        self.assertEqual(statuses, [403, 403, 503, 503])
        clock.advance(1)
        r = await c.request("CONFERENCE_JOIN_request", conferenceID="r", password="pw")
        self.assertEqual(r["status"], 200)
